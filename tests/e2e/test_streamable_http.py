"""Real MCP clients (mcp 2.x Client, mcp<2 ClientSession) through portcullis to
real MCP servers (mcp 2.x MCPServer, mcp<2 FastMCP) over Streamable HTTP, with
JSON and SSE responses, sessions, the GET listen stream, DELETE and 202s."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from conftest import run_mcp1_client
from mcpclient import exercise

ACCEPT = "application/json, text/event-stream"

# (route prefix on the gateway, server name, response kind, upstream fixture)
ROUTES = [
    pytest.param("/mcp", "e2e-mcp2", "sse", "mcp2_sse", id="mcp2-sse-same-prefix"),
    pytest.param("/v2sse", "e2e-mcp2", "sse", "mcp2_sse", id="mcp2-sse-prefix-rewritten"),
    pytest.param("/v2json/mcp", "e2e-mcp2", "json", "mcp2_json", id="mcp2-json"),
    pytest.param("/v1/mcp", "e2e-mcp1", "sse", "mcp1_http", id="mcp1-sse"),
    pytest.param("/v1json", "e2e-mcp1", "json", "mcp1_http_json", id="mcp1-json"),
]

STEPS = [[1.0, 3.0, "step 1"], [2.0, 3.0, "step 2"], [3.0, 3.0, "step 3"]]
TICKS = ["tick 1", "tick 2", "tick 3"]


def check_common(out: dict, server: str) -> None:
    assert out["server_name"] == server
    assert {"add", "echo", "countdown", "ask_name"} <= set(out["tools"])
    assert out["add"] == ["42"]
    assert out["echo"] == ["héllo through portcullis"]
    assert out["countdown"] == ["counted 3"]
    assert out["resource"] == [f"hello from {server.removeprefix('e2e-')}"]
    assert out["prompt"] == ["Please greet Ada."]


@pytest.mark.parametrize("prefix,server,kind,upstream", ROUTES)
def test_mcp2_client_legacy_session(request, gateway, prefix, server, kind, upstream):
    """mcp 2.x Client in handshake (legacy) mode: initialize, session id both
    ways, GET listen stream, JSON or SSE responses as the server chose, DELETE.
    What the client sees through portcullis equals what it sees direct."""
    sse = kind == "sse"
    out, rec = anyio.run(lambda: exercise(gateway.url(prefix), "legacy", elicit=sse))
    check_common(out, server)
    assert out["ping"] is True
    if sse:
        # Progress and log notifications travel on the tools/call SSE stream,
        # and so does the server's elicitation request, answered by a POST.
        assert out["progress"] == STEPS
        assert out["logs"] == TICKS
        assert out["ask_name"] == ["hello Ada"] and out["elicited"] == "What is your name?"
    else:
        # A JSON-mode server has no stream to put them on (same direct).
        assert out["progress"] == [] and out["logs"] == []
    direct, _ = anyio.run(lambda: exercise(request.getfixturevalue(upstream).url, "legacy", elicit=sse))
    assert out == direct

    init = rec.by_rpc("initialize")
    assert len(init) == 1 and init[0].status == 200
    sid = init[0].resp_session
    assert sid, "Mcp-Session-Id missing on the initialize response"
    # Every later request carries the session id the server minted.
    later = [e for e in rec.exchanges if e.rpc_method != "initialize"]
    assert later and all(e.req_session == sid for e in later), [(e.method, e.rpc_method, e.req_session) for e in later]
    # All requests went to the public URL and got the proxy's request id.
    assert all(e.path == prefix for e in rec.exchanges)
    assert all(e.request_id for e in rec.exchanges if e.status is not None)

    notif = rec.by_rpc("notifications/initialized")
    assert [e.status for e in notif] == [202]

    calls = rec.by_rpc("tools/call")
    want = "text/event-stream" if kind == "sse" else "application/json"
    # The first two calls send no notifications: their content type is the server's mode.
    assert all(e.content_type.startswith(want) for e in calls[:2]), [e.content_type for e in calls]

    gets = rec.by_method("GET")
    assert gets and gets[0].status == 200 and gets[0].content_type.startswith("text/event-stream")
    deletes = rec.by_method("DELETE")
    assert [e.status for e in deletes] == [200]


@pytest.mark.parametrize(
    "prefix,server,era,kind,upstream",
    [
        pytest.param("/v2sse", "e2e-mcp2", "2026-07-28", "sse", "mcp2_sse", id="mcp2-server-modern"),
        pytest.param("/v2json/mcp", "e2e-mcp2", "2026-07-28", "json", "mcp2_json", id="mcp2-json-server-modern"),
        pytest.param("/v1/mcp", "e2e-mcp1", "2025-11-25", "sse", "mcp1_http", id="mcp1-server-fallback"),
    ],
)
def test_mcp2_client_auto_mode(request, gateway, prefix, server, era, kind, upstream):
    """mcp 2.x Client in auto mode: server/discover probe; a 2.x server answers
    in the 2026-07-28 era (no sessions, per-request MCP-Protocol-Version), a
    1.x server makes it fall back to initialize. Same results as direct."""
    out, rec = anyio.run(exercise, gateway.url(prefix), "auto")
    check_common(out, server)
    assert out["protocol_version"] == era
    assert rec.exchanges[0].rpc_method == "server/discover"
    if era.startswith("2026"):
        assert not rec.by_rpc("initialize")
        assert all(e.resp_session is None for e in rec.exchanges)
        assert all(e.req_protocol_version == era for e in rec.exchanges)
    else:
        assert rec.by_rpc("initialize")
    if kind == "sse":
        assert out["progress"] == STEPS and out["logs"] == TICKS
    direct, _ = anyio.run(exercise, request.getfixturevalue(upstream).url, "auto")
    assert out == direct


@pytest.mark.parametrize("prefix,server,kind,upstream", ROUTES)
def test_mcp1_client_session(request, gateway, prefix, server, kind, upstream):
    """mcp<2 ClientSession over Streamable HTTP through portcullis; same
    results as direct."""
    sse = kind == "sse"
    out = run_mcp1_client(gateway.url(prefix), "streamable-http", elicit=sse)
    check_common(out, server)
    assert out["ping"] is True
    assert out.pop("session_id")
    if sse:
        assert out["progress"] == STEPS
        assert out["logs"] == TICKS
        assert out["ask_name"] == ["hello Ada"]
    direct = run_mcp1_client(request.getfixturevalue(upstream).url, "streamable-http", elicit=sse)
    direct.pop("session_id")
    assert out == direct


def _sse_json(body: str) -> list[dict]:
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:") and line[5:].strip()]


@pytest.mark.parametrize("prefix", ["/v2sse", "/v2json/mcp", "/v1/mcp"])
def test_raw_session_lifecycle(gateway, prefix):
    """The session lifecycle at the HTTP level: initialize → session id;
    notification → 202 with no body; GET listen stream → 200 SSE; DELETE →
    forwarded and the session is gone upstream (the server's 404 comes back)."""
    url = gateway.url(prefix)
    base = {"Accept": ACCEPT, "Content-Type": "application/json"}
    with httpx.Client(timeout=15) as c:
        r = c.post(
            url,
            headers=base,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"},
                },
            },
        )
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        if r.headers["content-type"].startswith("text/event-stream"):
            msgs = _sse_json(r.text)
        else:
            msgs = [r.json()]
        assert msgs[-1]["id"] == 1 and msgs[-1]["result"]["protocolVersion"] == "2025-06-18"

        h = dict(base, **{"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"})
        r = c.post(url, headers=h, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert r.status_code == 202
        assert r.content == b""
        assert r.headers.get("mcp-session-id", sid) == sid

        # GET: the listen stream opens (200, text/event-stream) and stays open.
        gh = {"Accept": "text/event-stream", "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
        with c.stream("GET", url, headers=gh, timeout=httpx.Timeout(15, read=2)) as g:
            assert g.status_code == 200
            assert g.headers["content-type"].startswith("text/event-stream")
            assert g.headers.get("transfer-encoding") == "chunked"

        r = c.post(url, headers=h, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert r.status_code == 200
        body = _sse_json(r.text) if r.headers["content-type"].startswith("text/event-stream") else [r.json()]
        assert {t["name"] for t in body[-1]["result"]["tools"]} >= {"add", "echo"}

        r = c.delete(url, headers={"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"})
        assert r.status_code in (200, 204), r.text

        r = c.post(url, headers=h, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
        assert r.status_code == 404, (r.status_code, r.text)


def test_request_id_echoed_and_kept(gateway):
    """A valid client X-Request-Id is kept and echoed; an invalid one is replaced."""
    url = gateway.url("/v2json/mcp")
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    h = {"Accept": ACCEPT, "Content-Type": "application/json"}
    with httpx.Client(timeout=15) as c:
        r = c.post(url, headers=dict(h, **{"X-Request-Id": "client-id_1.2"}), json=body)
        # (the server answers 400 to a ping outside a session; any answer will do)
        assert r.status_code == 400, r.text
        assert r.headers["x-request-id"] == "client-id_1.2"
        r = c.post(url, headers=dict(h, **{"X-Request-Id": "bad id with spaces"}), json=body)
        assert r.headers["x-request-id"] != "bad id with spaces"
        assert r.headers["x-request-id"]
        r2 = c.post(url, headers=h, json=body)
        assert r2.headers["x-request-id"] and r2.headers["x-request-id"] != r.headers["x-request-id"]


def test_unknown_host_and_path_404(gateway):
    with httpx.Client(timeout=15) as c:
        r = c.post(gateway.url("/nope"), json={})
        assert r.status_code == 404
        r = c.post(gateway.url("/v2sse"), headers={"Host": "other.example"}, json={})
        assert r.status_code == 404
        # Host must match exactly, port included.
        r = c.post(gateway.url("/v2sse"), headers={"Host": "127.0.0.1"}, json={})
        assert r.status_code == 404
