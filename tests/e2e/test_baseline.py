"""Behaviour baselines (issue 14 §3) with real parts: the mcp 2.x client
through portcullis (two workers) to an mcp 2.x server offering the
resources e2e://docs/{n}, with tokens from an independent issuer
(oauth2-mock-server). A scripted agent works normally for a while, then
enumerates 200 resources within seconds: the `enumeration` signal rises, the
deny rule on it stops the agent, the audit records say why and the metric
counts it. A burst from one user is flagged for that user only. A `step_up`
rule answers 401 `insufficient_user_authentication` until the user brings a
token issued after it, on every core."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import free_port, start_mcp2
from test_auth import INIT, REFUSED, challenge, issuer_yaml, post_rpc, start_idp

BEHAVIOUR = """
behaviour:
  warmup_requests: 20
  warmup: 1s
  burst: {window: 20s, factor: 3, min_requests: 40}
  enumeration: {window: 10s, distinct: %d}
"""


@pytest.fixture
def idp(procs):
    return start_idp(procs, "oauth2-mock-server-baseline")


@pytest.fixture
def upstream(procs):
    return start_mcp2(procs, "mcp2-docs", json_mode=True, extra=["--docs"])


@pytest.fixture
def gate(procs, portcullis, tmp_path, idp, upstream):
    """Start portcullis with `rules` on route `b`; returns its URL, audit
    log and admin port."""

    def start(rules: str, distinct: int = 100):
        port, admin = free_port(), free_port()
        audit = tmp_path / "audit.jsonl"
        pub = f"http://127.0.0.1:{port}"
        cfg = f"""
workers: 2
shutdown_timeout: 3s
{issuer_yaml(idp)}
listen: [{{address: 127.0.0.1:{port}}}]
admin: {{address: 127.0.0.1:{admin}}}
audit: {{path: {audit}}}
{BEHAVIOUR % distinct}
routes:
  - name: b
    from: {pub}/mcp
    to: {upstream.url}
    mcp: {{}}
    auth: {{issuers: [idp], scopes: [mcp]}}
    policy:
{rules}
      - allow: {{and: []}}
"""
        portcullis.start(cfg, [port])
        return f"{pub}/mcp", audit, admin

    return start


def client(url: str, token: str):
    hc = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(15, read=30))
    return hc, Client(streamable_http_client(url, http_client=hc), mode="legacy")


def records(audit) -> list[dict]:
    lines = audit.read_text().splitlines() if audit.exists() else []
    return [json.loads(line) for line in lines]


def signals(record: dict) -> dict[str, float]:
    return {a["signal"]: a["score"] for a in record.get("anomalies", [])}


async def normal_work(c: Client, rounds: int, pause: float) -> None:
    """What the agent usually does: a tool call and the one resource it reads."""
    for i in range(rounds):
        await c.call_tool("echo", {"text": f"note {i}"})
        await c.read_resource("e2e://greeting")
        await anyio.sleep(pause)


def test_an_enumeration_is_flagged_and_stopped(gate, idp):
    url, audit, admin = gate(
        """      - name: no-enumeration
        deny: {anomaly: {signals: [enumeration], above: 0.9}}
        message: too many distinct resources"""
    )
    token = idp.mint(url, sub="alice")

    async def go():
        read, denied = [], []
        with anyio.fail_after(90):
            hc, c = client(url, token)
            async with hc, c:
                await normal_work(c, 15, 0.1)
                start = time.monotonic()
                for n in range(200):
                    try:
                        await c.read_resource(f"e2e://docs/{n}")
                        read.append(n)
                    except MCPError as e:
                        denied.append((n, e.code, e.message))
                took = time.monotonic() - start
        return read, denied, took

    read, denied, took = anyio.run(go)
    assert took < 10, f"the enumeration took {took:.1f}s"
    assert denied, "never stopped"
    first = denied[0][0]
    # Stopped once about 90 distinct resources were read (the sketch
    # estimates), and from then on every read.
    assert 60 <= first <= 130, denied[:3]
    assert read == list(range(first)), (read[-3:], denied[:3])
    code, message = denied[0][1:]
    assert code == REFUSED and "no-enumeration" in message and "too many distinct resources" in message, message
    anyio.run(anyio.sleep, 0.5)  # the audit writer
    reads = [r for r in records(audit) if r["method"] == "resources/read" and r["target"].startswith("e2e://docs/")]
    refused = [r for r in reads if r["decision"] == "denied"]
    assert len(refused) == len(denied), (len(refused), len(denied))
    assert all(r["rule"] == "no-enumeration" for r in refused)
    assert all(signals(r).get("enumeration", 0) > 0.9 for r in refused), refused[0]
    assert refused[0]["principal"]["sub"] == "alice"
    # The normal work raised nothing.
    normal = [r for r in records(audit) if r["method"] in ("tools/call",) or r["target"] == "e2e://greeting"]
    assert normal and not any(r.get("anomalies") for r in normal), [r for r in normal if r.get("anomalies")][:2]
    metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
    line = [m for m in metrics.splitlines() if m.startswith('portcullis_anomalies_total{route="b",signal="enumeration"} ')]
    assert line and int(line[0].split()[-1]) >= len(denied), metrics[-1500:]


def test_one_users_burst_does_not_flag_another(gate, idp):
    url, audit, _ = gate(
        """      - name: no-burst
        deny: {anomaly: {signals: [burst], above: 0.9}}
        message: far above your usual rate"""
    )
    alice = idp.mint(url, sub="alice")
    bob = idp.mint(url, sub="bob")

    async def go():
        out = {"alice_ok": 0, "alice_denied": [], "bob_after": []}
        with anyio.fail_after(120):
            ha, a = client(url, alice)
            hb, b = client(url, bob)
            async with ha, a, hb, b:
                # Both work at the same steady pace (a call a second) for a while.
                for i in range(22):
                    await a.call_tool("echo", {"text": f"a{i}"})
                    await b.call_tool("echo", {"text": f"b{i}"})
                    await anyio.sleep(0.9)
                # Alice's agent runs wild.
                for i in range(250):
                    try:
                        await a.call_tool("echo", {"text": f"burst {i}"})
                        out["alice_ok"] += 1
                    except MCPError as e:
                        out["alice_denied"].append((i, e.code, e.message))
                # Bob goes on as usual.
                for i in range(5):
                    r = await b.call_tool("echo", {"text": f"after {i}"})
                    out["bob_after"].append(r.content[0].text)
        return out

    out = anyio.run(go)
    assert out["alice_denied"], f"alice made {out['alice_ok']} calls unflagged"
    i, code, message = out["alice_denied"][0]
    assert code == REFUSED and "no-burst" in message, message
    assert out["bob_after"] == [f"after {i}" for i in range(5)]
    anyio.run(anyio.sleep, 0.5)
    calls = [r for r in records(audit) if r["method"] == "tools/call"]
    of = lambda sub: [r for r in calls if r["principal"]["sub"] == sub]  # noqa: E731
    assert any(signals(r).get("burst", 0) > 0.9 and r["decision"] == "denied" for r in of("alice"))
    assert not any("burst" in signals(r) for r in of("bob")), [r for r in of("bob") if r.get("anomalies")][:2]
    assert all(r["decision"] == "allowed" for r in of("bob"))


def test_step_up_until_the_user_authorizes_again(gate, idp):
    url, audit, _ = gate(
        """      - name: reauth
        step_up: {anomaly: {signals: [enumeration], above: 0.9}}
        message: unusual activity""",
        distinct=20,
    )
    token = idp.mint(url, sub="carol")

    async def go():
        with anyio.fail_after(60):
            hc, c = client(url, token)
            try:
                async with hc, c:
                    await normal_work(c, 12, 0.05)
                    for n in range(60):
                        await c.read_resource(f"e2e://docs/{n}")
            except Exception as e:  # the client gives up on the 401
                return repr(e)
        return None

    failed = anyio.run(go)
    assert failed is not None, "the enumeration went through"
    # Every core holds the step-up once the cores have merged: a core
    # publishes its summary once a second and folds the others' once a
    # second, so up to 2 s (and the ticks' drift). Fresh connections land on
    # either worker.
    time.sleep(2.5)
    for _ in range(6):
        r = post_rpc(url, INIT, token)
        assert r.status_code == 401, (r.status_code, r.text)
        c = challenge(r)
        assert c["error"] == "insufficient_user_authentication", c
        assert c["resource_metadata"].endswith("/.well-known/oauth-protected-resource/mcp"), c
    assert "reauth" in r.json()["error"]["message"], r.text
    # A token issued after the refusal (iat in whole seconds) goes on.
    time.sleep(1.1)
    fresh = idp.mint(url, sub="carol")
    for _ in range(6):
        r = post_rpc(url, INIT, fresh)
        assert r.status_code == 200, (r.status_code, r.text)
    anyio.run(anyio.sleep, 0.5)
    refused = [r for r in records(audit) if r["status"] == 401 and r["rule"] == "reauth"]
    assert refused and refused[0]["decision"] == "denied", refused[:1]
    assert "enumeration" in signals(refused[0]), refused[0]


def test_upstream_errors_count_into_the_denial_streak(gate, idp):
    url, audit, _ = gate(
        """      - name: failing
        deny: {anomaly: {signals: [denial_streak], above: 0.9}}
        message: too many failures in a row"""
    )
    token = idp.mint(url, sub="dave")

    async def go():
        errors = []
        with anyio.fail_after(60):
            hc, c = client(url, token)
            async with hc, c:
                await normal_work(c, 3, 0.05)
                # Resources the server does not have: JSON-RPC errors.
                for n in range(7):
                    try:
                        await c.read_resource(f"e2e://missing/{n}")
                    except MCPError as e:
                        errors.append((e.code, e.message))
        return errors

    errors = anyio.run(go)
    # Five errors from the upstream (denial_streak: 5 by default), then the
    # deny rule refuses the caller.
    assert len(errors) == 7, errors
    assert all(code != REFUSED for code, _ in errors[:5]), errors
    assert errors[5][0] == REFUSED and "failing" in errors[5][1], errors
    anyio.run(anyio.sleep, 0.5)
    denied = [r for r in records(audit) if r["decision"] == "denied" and r["rule"] == "failing"]
    assert denied and signals(denied[0]).get("denial_streak") == 1.0, denied[:1]
