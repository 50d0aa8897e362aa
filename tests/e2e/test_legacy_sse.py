"""The legacy (2024-11-05) HTTP+SSE transport through portcullis: a real
mcp<2 FastMCP SSE server, real mcp<2 and mcp 2.x clients, and the `endpoint`
event rewritten when the public prefix (/legacy) differs from the upstream's
(/)."""

from __future__ import annotations

import json
import re
import socket

import subprocess

import anyio
import pytest

from conftest import HELPERS, NODE, free_port, run_mcp1_client
from mcpclient import exercise

STEPS = [[1.0, 3.0, "step 1"], [2.0, 3.0, "step 2"], [3.0, 3.0, "step 3"]]
TICKS = ["tick 1", "tick 2", "tick 3"]


def first_event(port: int, path: str, timeout: float = 10) -> tuple[bytes, bytes]:
    """GET an SSE stream over a raw socket; return (response head, first event)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            assert chunk, f"closed before the head: {buf!r}"
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        # De-chunk until one complete event (blank line) has arrived.
        body = b""
        while True:
            m = re.match(rb"([0-9a-fA-F]+)\r\n", rest)
            if m:
                size = int(m.group(1), 16)
                start = m.end()
                if len(rest) >= start + size + 2:
                    body += rest[start : start + size]
                    rest = rest[start + size + 2 :]
                    norm = body.replace(b"\r\n", b"\n")
                    if b"\n\n" in norm:
                        return head, norm.split(b"\n\n", 1)[0]
                    continue
            chunk = s.recv(4096)
            assert chunk, f"closed before the first event: {body!r}"
            rest += chunk


def test_endpoint_event_rewritten(gateway, mcp1_sse):
    """Public /legacy → upstream /: the endpoint path gains the public prefix."""
    head, event = first_event(gateway.port, "/legacy/sse")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"text/event-stream" in head.lower()
    lines = event.decode().splitlines()
    assert "event: endpoint" in lines
    data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert len(data) == 1 and re.fullmatch(r"/legacy/messages/\?session_id=[0-9a-f]{32}", data[0]), data
    # Direct from the upstream, the same event names the upstream path.
    _, direct = first_event(mcp1_sse.port, "/sse")
    assert re.search(rb"data: /messages/\?session_id=[0-9a-f]{32}", direct), direct


def test_endpoint_event_rewritten_mcp2_server(gateway, mcp2_legacy_sse):
    head, event = first_event(gateway.port, "/legacy2/sse")
    assert head.startswith(b"HTTP/1.1 200"), head
    _, direct = first_event(mcp2_legacy_sse.port, "/sse")
    m = re.search(rb"data: (/messages/\?session_id=[0-9a-f]+)", direct)
    assert m, direct
    assert re.search(rb"data: /legacy2/messages/\?session_id=[0-9a-f]+", event), event


def test_endpoint_event_untouched_when_prefixes_match(gateway):
    head, event = first_event(gateway.root_port, "/sse")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert re.search(rb"data: /messages/\?session_id=[0-9a-f]{32}", event), event


LEGACY = [
    pytest.param("/legacy/sse", "mcp1_sse", "e2e-mcp1", id="mcp1-server-public-/legacy-upstream-/"),
    pytest.param("root:/sse", "mcp1_sse", "e2e-mcp1", id="mcp1-server-same-prefix"),
    pytest.param("/legacy2/sse", "mcp2_legacy_sse", "e2e-mcp2", id="mcp2-server-public-/legacy2-upstream-/"),
]


def _url(gateway, where: str) -> str:
    if where.startswith("root:"):
        return f"http://127.0.0.1:{gateway.root_port}{where[5:]}"
    return gateway.url(where)


@pytest.mark.parametrize("where,upstream,server", LEGACY)
def test_mcp1_client_legacy_sse(request, gateway, where, upstream, server):
    """mcp<2 ClientSession over sse_client: the POSTs go to the (rewritten)
    endpoint through portcullis, the answers, notifications and the server's
    elicitation request arrive on the GET stream."""
    out = run_mcp1_client(_url(gateway, where), "sse", elicit=True)
    assert out["server_name"] == server
    assert out["add"] == ["42"] and out["echo"] == ["héllo through portcullis"]
    assert out["progress"] == STEPS and out["logs"] == TICKS
    assert out["resource"] == [f"hello from {server[4:]}"] and out["prompt"] == ["Please greet Ada."]
    assert out["ask_name"] == ["hello Ada"]
    assert out.pop("session_id")
    direct = run_mcp1_client(request.getfixturevalue(upstream).url, "sse", elicit=True)
    direct.pop("session_id")
    assert out == direct


@pytest.mark.parametrize("where,upstream,server", LEGACY)
def test_mcp2_client_legacy_sse(request, gateway, where, upstream, server):
    """mcp 2.x Client on the legacy SSE transport through portcullis."""
    url = _url(gateway, where)
    out, rec = anyio.run(lambda: exercise(url, "legacy", legacy_sse=True, elicit=True))
    assert out["server_name"] == server
    assert out["add"] == ["42"] and out["progress"] == STEPS and out["logs"] == TICKS
    assert out["ask_name"] == ["hello Ada"]
    gets = rec.by_method("GET")
    posts = rec.by_method("POST")
    sse_path = url.split(str(gateway.root_port) if where.startswith("root:") else str(gateway.port), 1)[1]
    prefix = sse_path.removesuffix("/sse")
    assert [g.path for g in gets] == [sse_path] and gets[0].status == 200
    assert posts and all(p.path.startswith(f"{prefix}/messages/?session_id=") for p in posts), [p.path for p in posts]
    # Every message POST is accepted with 202; the answer comes on the stream.
    assert {p.status for p in posts} == {202}
    direct, _ = anyio.run(lambda: exercise(request.getfixturevalue(upstream).url, "legacy", legacy_sse=True, elicit=True))
    assert out == direct


def test_message_post_relayed_202_no_body(gateway):
    """A POST to the rewritten message endpoint: 202 relayed, and the JSON-RPC
    answer arrives on the GET stream through portcullis."""
    port = gateway.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /legacy/sse HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        buf = b""
        while b"session_id=" not in buf or b"\n\n" not in buf.split(b"session_id=", 1)[1].replace(b"\r\n", b"\n"):
            chunk = s.recv(4096)
            assert chunk
            buf += chunk
        m = re.search(rb"data: (/legacy/messages/\?session_id=[0-9a-f]{32})", buf)
        assert m, buf
        endpoint = m.group(1).decode()
        init = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "initialize",
                "params": {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
            }
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as p:
            p.sendall(
                f"POST {endpoint} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(init)}\r\nConnection: close\r\n\r\n".encode()
                + init
            )
            resp = b""
            while True:
                chunk = p.recv(4096)
                if not chunk:
                    break
                resp += chunk
        head, _, body = resp.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202"), resp
        assert body in (b"", b"Accepted"), body  # FastMCP answers "Accepted"
        # The initialize result arrives on the SSE stream.
        while b'"id":7' not in buf:
            chunk = s.recv(4096)
            assert chunk
            buf += chunk
        assert b'"protocolVersion":"2024-11-05"' in buf


# A policy for the TypeScript client test: `echo` denied by a named rule,
# `countdown` rate-limited to one call a day, everything it needs allowed.
TS_POLICY = """
    policy:
      - allow: {mcp_method: {in: [initialize, notifications/initialized, ping, tools/list, tools/call]}}
      - name: no-echo
        deny: {mcp_tool: {equals: echo}}
        message: echo is switched off here
      - name: one-countdown
        deny: {and: [{mcp_tool: {equals: countdown}}, {rate_limit: {requests: 1, per: 24h, key: principal_and_tool}}]}
"""


def run_ts_sse_client(url: str, calls: list[dict], call_timeout_ms: int = 10_000) -> dict:
    """Run helpers/sse_client.mjs (the TypeScript SDK's `Client` over
    `SSEClientTransport`); return its JSON report."""
    r = subprocess.run(
        [NODE, str(HELPERS / "sse_client.mjs"), "--url", url, "--calls", json.dumps(calls), "--timeout", str(call_timeout_ms)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, f"sse_client.mjs failed ({r.returncode}):\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("upstream", ["mcp1_sse", "mcp2_legacy_sse"])
def test_policy_denial_reaches_typescript_sse_client_at_once(request, portcullis, upstream):
    """The TypeScript SDK's SSEClientTransport ignores the body of a message
    POST that succeeded (the answer is expected on the GET stream), so a
    denial answered 200 left its call waiting for its own timeout. A refused
    legacy message POST is answered 4xx with the JSON-RPC error: the SDK
    raises it at once, and the session goes on."""
    up = request.getfixturevalue(upstream)
    port = free_port()
    cfg = f"""
workers: 1
shutdown_timeout: 3s
listen:
  - address: 127.0.0.1:{port}
routes:
  - name: legacy
    from: http://127.0.0.1:{port}/legacy
    to: http://127.0.0.1:{up.port}/
    mcp: {{}}
{TS_POLICY}
"""
    portcullis.start(cfg, [port], name="portcullis-ts-sse")
    add = {"tool": "add", "arguments": {"a": 2, "b": 40}}
    countdown = {"tool": "countdown", "arguments": {"n": 1}}
    out = run_ts_sse_client(
        f"http://127.0.0.1:{port}/legacy/sse",
        [add, {"tool": "echo", "arguments": {"text": "hi"}}, add, countdown, countdown],
    )
    before, denied, after, first_countdown, limited = out["calls"]
    assert before["ok"] and before["text"] == "42", before
    # Denied: raised by the SDK within a couple of seconds (not its timeout),
    # naming the rule and its message; the status says why.
    assert not denied["ok"] and not denied.get("timedOut"), denied
    assert denied["ms"] < 2000, denied
    assert "HTTP 403" in denied["error"], denied
    assert 'denied by policy rule \\"no-echo\\": echo is switched off here' in denied["error"], denied
    # The same connection (GET stream and session) still works.
    assert after["ok"] and after["text"] == "42", after
    assert first_countdown["ok"] and first_countdown["text"] == "counted 1", first_countdown
    # Rate-limited: 429, raised at once too.
    assert not limited["ok"] and not limited.get("timedOut") and limited["ms"] < 2000, limited
    assert "HTTP 429" in limited["error"] and "one-countdown" in limited["error"], limited
