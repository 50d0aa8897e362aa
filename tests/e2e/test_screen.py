"""Content screening (issue 14) with real parts: the mcp 2.x client through
portcullis to an mcp 2.x server (JSON answers and SSE answers) whose
`leaky_report` tool answers an AWS key, an email address and an instruction
hidden in Unicode tag characters. The key and the email reach the client
redacted (in JSON and in SSE); the hidden instruction is flagged in the
audit record; a private key in a tool's arguments is refused before it
reaches the server; no audit record holds a matched value."""

from __future__ import annotations

import json

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import free_port, start_mcp2
from mcpclient import text_of
from test_oauth_server import mcp_error_in

KEY = "AKIAIOSFODNN7EXAMPLE"
PRIVATE = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq1\n-----END RSA PRIVATE KEY-----"


@pytest.fixture
def screened(procs, portcullis, tmp_path):
    port, admin = free_port(), free_port()
    json_up = start_mcp2(procs, "screen-json", json_mode=True, extra=["--leaky-tool"])
    sse_up = start_mcp2(procs, "screen-sse", json_mode=False, extra=["--leaky-tool"])
    audit = tmp_path / "audit.jsonl"
    screen = "{ actions: { aws_key: redact, email: redact } }"
    cfg = f"""
listen: [{{address: 127.0.0.1:{port}}}]
admin: {{address: 127.0.0.1:{admin}}}
audit: {{path: {audit}}}
routes:
  - name: json
    from: http://127.0.0.1:{port}/json/mcp
    to: {json_up.url}
    mcp: {{}}
    screen: {screen}
  - name: sse
    from: http://127.0.0.1:{port}/sse/mcp
    to: {sse_up.url}
    mcp: {{}}
    screen: {screen}
"""
    portcullis.start(cfg, [port])
    return port, audit, admin


def call(url: str, tool: str, args: dict):
    async def go():
        with anyio.fail_after(30):
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(15, read=30)) as hc:
                async with Client(streamable_http_client(url, http_client=hc)) as client:
                    return await client.call_tool(tool, args)

    try:
        return anyio.run(go)
    except Exception as e:  # a JSON-RPC error: the MCPError inside
        found = mcp_error_in(e)
        if found is None:
            raise
        return found


def records(audit, route: str) -> list[dict]:
    lines = audit.read_text().splitlines() if audit.exists() else []
    return [r for r in map(json.loads, lines) if r.get("route") == route]


@pytest.mark.parametrize("route", ["json", "sse"])
def test_results_are_redacted_and_hidden_text_flagged(screened, route):
    port, audit, admin = screened
    result = call(f"http://127.0.0.1:{port}/{route}/mcp", "leaky_report", {})
    text = " ".join(text_of(result))
    assert KEY not in text and "ops@example.com" not in text, text
    assert "[REDACTED:aws_key]" in text and "[REDACTED:email]" in text, text
    assert "deploy report" in text and text.endswith("done"), text
    anyio.run(anyio.sleep, 0.5)  # the audit writer
    raw = audit.read_text()
    assert KEY not in raw and "ops@example.com" not in raw, "a matched value in the audit log"
    found = [f for r in records(audit, route) for f in r.get("screen", [])]
    detectors = {(f["detector"], f["direction"], f["action"]) for f in found}
    assert ("aws_key", "response", "redact") in detectors, found
    assert ("email", "response", "redact") in detectors, found
    assert any(f["detector"] == "unicode_tags" and f["direction"] == "response" for f in found), found
    assert all(f["pointer"].startswith("/result") for f in found if f["direction"] == "response"), found
    metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
    line = f'portcullis_screen_findings_total{{route="{route}",direction="response",detector="aws_key",action="redact"}} '
    assert line in metrics, metrics[-2000:]


@pytest.mark.parametrize("route", ["json", "sse"])
def test_a_private_key_in_arguments_is_refused(screened, route):
    port, audit, admin = screened
    err = call(f"http://127.0.0.1:{port}/{route}/mcp", "echo", {"text": f"please store {PRIVATE}"})
    assert "refused by content screening: private_key found in the request" in str(err), err
    assert "PRIVATE KEY" not in str(err)
    anyio.run(anyio.sleep, 0.5)
    refused = [r for r in records(audit, route) if r.get("method") == "tools/call" and r.get("target") == "echo"]
    assert refused and refused[-1]["decision"] != "allow", refused
    found = refused[-1].get("screen", [])
    assert {"detector": "private_key", "direction": "request", "action": "block"}.items() <= found[0].items(), found
    assert found[0]["pointer"] == "/params/arguments/text", found
    assert "PRIVATE KEY" not in audit.read_text()


def test_policy_denies_on_what_screening_found(procs, portcullis, tmp_path):
    """`content: { detector: email }` in a deny rule: a tool call whose
    arguments carry an email address is refused by that rule (the screen
    itself only audits it) and the audit record says which rule and what was
    found; the same call without one goes through."""
    port = free_port()
    up = start_mcp2(procs, "screen-policy", json_mode=True)
    audit = tmp_path / "audit.jsonl"
    cfg = f"""
listen: [{{address: 127.0.0.1:{port}}}]
audit: {{path: {audit}}}
routes:
  - name: guarded
    from: http://127.0.0.1:{port}/mcp
    to: {up.url}
    mcp: {{}}
    screen: {{ actions: {{ email: audit }} }}
    policy:
      - name: no-addresses-out
        deny: {{ and: [{{ mcp_tool: {{ equals: echo }} }}, {{ content: {{ detector: email }} }}] }}
        message: tools may not be sent email addresses
      - allow: {{ and: [] }}
"""
    portcullis.start(cfg, [port])
    url = f"http://127.0.0.1:{port}/mcp"
    err = call(url, "echo", {"text": "write to carol@example.org"})
    assert 'denied by policy rule "no-addresses-out"' in str(err), err
    assert "carol@" not in str(err)
    ok = call(url, "echo", {"text": "nothing personal"})
    assert "nothing personal" in " ".join(text_of(ok)), ok
    anyio.run(anyio.sleep, 0.5)
    calls = [r for r in records(audit, "guarded") if r.get("method") == "tools/call"]
    denied = [r for r in calls if r.get("rule") == "no-addresses-out"]
    assert len(denied) == 1 and denied[0]["decision"] != "allow", calls
    found = denied[0].get("screen", [])
    assert found and found[0]["detector"] == "email" and found[0]["pointer"] == "/params/arguments/text", found
    assert "carol@" not in audit.read_text()


def test_a_secret_split_across_two_sse_reads_is_redacted(portcullis):
    """The upstream writes one SSE event in two parts, cut inside the AWS
    key and the email address, 300 ms apart: portcullis holds the event until
    its end and relays it redacted; the events around it pass as they were."""
    import socket
    import threading
    import time

    from rawupstream import RawUpstream, chunk

    event = (
        'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text",'
        f'"text":"id {KEY} for ops@example.com"}}]}}}}\n\n'
    ).encode()
    cut = event.index(b"FODNN7") + 2
    first_write = threading.Event()

    def handler(conn: socket.socket, req) -> bool:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk(b": hello\n\n" + event[:cut])
        )
        first_write.set()
        time.sleep(0.3)
        conn.sendall(chunk(event[cut:]) + chunk(b"data: {}\n\n") + b"0\r\n\r\n")
        return True

    up = RawUpstream(handler)
    try:
        port = free_port()
        portcullis.start(
            f"""
listen: [{{address: 127.0.0.1:{port}}}]
routes:
  - name: r
    from: http://127.0.0.1:{port}/mcp
    to: http://127.0.0.1:{up.port}/mcp
    mcp: {{}}
    screen: {{ actions: {{ aws_key: redact, email: redact }} }}
""",
            [port],
        )
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}})
        r = httpx.post(
            f"http://127.0.0.1:{port}/mcp",
            content=body,
            headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
            timeout=10,
        )
        assert first_write.is_set()
        assert r.status_code == 200, r.text
        text = r.text
        assert KEY not in text and "ops@example.com" not in text, text
        assert "[REDACTED:aws_key]" in text and "[REDACTED:email]" in text, text
        assert text.startswith(": hello\n\nevent: message\ndata: {"), text
        assert text.endswith("\n\ndata: {}\n\n"), text
        data = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])
        assert data["id"] == 1 and data["result"]["content"][0]["text"].startswith("id [REDACTED:aws_key]")
    finally:
        up.close()
