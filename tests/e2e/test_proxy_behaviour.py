"""Proxy behaviour that needs exact control of the upstream: SSE events
relayed before the upstream ends its stream (chunked and close-delimited),
X-Forwarded-* / X-Request-Id / hop-by-hop handling, 502/504 on MCP routes,
graceful shutdown, and stale pooled upstream connections."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import threading
import time

import anyio
import httpx
import pytest

from conftest import can_connect, free_port
from mcpclient import exercise
from rawupstream import RawRequest, RawUpstream, chunk, json_answer

# MCP routes decode POST bodies: fixtures send a valid JSON-RPC message.
PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


@pytest.fixture
def raw_upstreams():
    made: list[RawUpstream] = []

    def make(handler, **kw) -> RawUpstream:
        u = RawUpstream(handler, **kw)
        made.append(u)
        return u

    yield make
    for u in made:
        u.close()
    for u in made:
        assert not u.errors, u.errors


def one_route(port: int, upstream_port: int, frm: str = "/mcp", to: str = "/mcp", mcp: bool = True, extra: str = "") -> str:
    return f"""
workers: 1
{extra}
listen:
  - address: 127.0.0.1:{port}
routes:
  - name: r
    from: http://127.0.0.1:{port}{frm}
    to: http://127.0.0.1:{upstream_port}{to}
{"    mcp: {}" if mcp else ""}
"""


class ChunkedReader:
    """Reads an HTTP/1.1 response from a raw socket, de-chunking as bytes
    arrive, so a test can see exactly when each piece reached the client."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.raw = b""
        self.head = b""
        self.body = b""
        self.done = False
        self._rest = b""

    def _recv(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self._rest += data
        return True

    def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self._rest:
            assert self._recv(), f"closed before the head: {self._rest!r}"
        self.head, _, self._rest = self._rest.partition(b"\r\n\r\n")
        return self.head

    def _drain(self) -> None:
        while not self.done:
            m = re.match(rb"([0-9a-fA-F]+)\r\n", self._rest)
            if not m:
                return
            size = int(m.group(1), 16)
            start = m.end()
            if size == 0:
                if self._rest[start : start + 2] == b"\r\n":
                    self.done = True
                    self._rest = self._rest[start + 2 :]
                return
            if len(self._rest) < start + size + 2:
                return
            assert self._rest[start + size : start + size + 2] == b"\r\n"
            self.body += self._rest[start : start + size]
            self._rest = self._rest[start + size + 2 :]

    def read_until(self, needle: bytes) -> bytes:
        self._drain()
        while needle not in self.body:
            assert not self.done, f"stream ended without {needle!r}: {self.body!r}"
            assert self._recv(), f"connection closed without {needle!r}: {self.body!r}"
            self._drain()
        return self.body

    def read_to_end(self) -> bytes:
        self._drain()
        while not self.done:
            assert self._recv(), f"connection closed before the last chunk: {self.body!r}"
            self._drain()
        return self.body


# ------------------------------------------------------------ SSE timing


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
def test_sse_event_arrives_while_upstream_stream_open(portcullis, raw_upstreams, framing):
    """The upstream sends one SSE event and holds its stream open until the
    test says so (or 10 s): the event must reach the client through portcullis
    while the upstream stream is still open, then the rest follows byte-exact."""
    release = threading.Event()
    upstream_finished = threading.Event()
    first = b"id: 1\nretry: 1500\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"
    second = b": comment line\n\ndata: \n\nid: 2\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"

    def handler(conn: socket.socket, req: RawRequest) -> bool:
        if framing == "chunked":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunk(first)
            )
            release.wait(10)
            conn.sendall(chunk(second) + b"0\r\n\r\n")
            upstream_finished.set()
            return True
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Connection: close\r\n\r\n" + first
        )
        release.wait(10)
        conn.sendall(second)
        upstream_finished.set()
        return False  # close: that ends the body

    up = raw_upstreams(handler)
    port = free_port()
    portcullis.start(one_route(port, up.port), [port])
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json, text/event-stream\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        r = ChunkedReader(s)
        t0 = time.monotonic()
        head = r.read_head().decode("latin-1").lower()
        assert head.startswith("http/1.1 200")
        assert "content-type: text/event-stream" in head
        assert "transfer-encoding: chunked" in head  # close-delimited re-framed for an HTTP/1.1 client
        got = r.read_until(b"notifications/progress")
        elapsed = time.monotonic() - t0
        assert not upstream_finished.is_set() and not release.is_set(), "event only arrived after the upstream ended"
        assert elapsed < 5, f"first event took {elapsed:.1f}s"
        assert got == first, got
        release.set()
        rest = r.read_to_end()
        # The handler thread marks the upstream finished just after its last send, which the
        # client may read first: wait for the mark rather than race it.
        assert upstream_finished.wait(5)
        assert rest == first + second  # byte-exact: id, retry, comments, empty events kept


def test_sse_long_stream_many_events_in_order(portcullis, raw_upstreams):
    """Many events, each written separately with pauses, all arrive in order
    and each before the next is sent."""
    n = 20
    acks = [threading.Event() for _ in range(n)]

    def handler(conn: socket.socket, req: RawRequest) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(n):
            conn.sendall(chunk(b"id: %d\ndata: {\"n\":%d}\n\n" % (i, i)))
            acks[i].wait(10)
        conn.sendall(b"0\r\n\r\n")
        return True

    up = raw_upstreams(handler)
    port = free_port()
    portcullis.start(one_route(port, up.port), [port])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        r = ChunkedReader(s)
        r.read_head()
        for i in range(n):
            r.read_until(b'{"n":%d}' % i)
            acks[i].set()
        r.read_to_end()
        assert r.body == b"".join(b"id: %d\ndata: {\"n\":%d}\n\n" % (i, i) for i in range(n))


# ------------------------------------------------------------ headers


def test_forwarded_headers_and_hop_by_hop(portcullis, raw_upstreams):
    """What the upstream receives: Host rewritten to the upstream authority;
    client X-Forwarded-* replaced (not appended); Forwarded dropped;
    hop-by-hop headers and those named in Connection removed; end-to-end MCP
    headers passed unchanged; the path prefix rewritten, the query kept.
    What the client receives: upstream hop-by-hop headers removed, one
    X-Request-Id (the proxy's, not the upstream's)."""

    def handler(conn: socket.socket, req: RawRequest) -> bool:
        conn.sendall(
            json_answer(
                b'{"jsonrpc":"2.0","id":1,"result":{}}',
                extra="Connection: X-Resp-Hop\r\nX-Resp-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
                "X-Request-Id: upstream-made-this\r\nMcp-Session-Id: sess-123\r\n",
            )
        )
        return True

    up = raw_upstreams(handler)
    port = free_port()
    portcullis.start(one_route(port, up.port, frm="/public/mcp", to="/private/v1"), [port])
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(
            (
                f"POST /public/mcp/sub?x=1&y=%20 HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Accept: application/json, text/event-stream\r\n"
                "Content-Type: application/json\r\n"
                "X-Forwarded-For: 203.0.113.7, 198.51.100.1\r\n"
                "X-Forwarded-Proto: https\r\n"
                "X-Forwarded-Host: evil.example\r\n"
                "Forwarded: for=203.0.113.7;proto=https\r\n"
                "Connection: keep-alive, X-Hop-One, x-hop-two\r\n"
                "X-Hop-One: 1\r\n"
                "X-Hop-Two: 2\r\n"
                "Keep-Alive: timeout=100\r\n"
                "TE: trailers\r\n"
                "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
                "Upgrade: h2c\r\n"
                "X-Request-Id: trace-abc.123\r\n"
                "Mcp-Session-Id: sess-123\r\n"
                "MCP-Protocol-Version: 2025-06-18\r\n"
                "Last-Event-ID: 41\r\n"
                "X-End-To-End: kept\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        s.settimeout(10)
        resp = b""
        while b"\r\n\r\n" not in resp or not resp.endswith(b"}"):
            data = s.recv(65536)
            assert data, resp
            resp += data
    assert len(up.requests) == 1
    req = up.requests[0]
    assert req.method == "POST"
    assert req.target == "/private/v1/sub?x=1&y=%20"
    assert req.one("host") == f"127.0.0.1:{up.port}"
    assert req.all("x-forwarded-for") == ["127.0.0.1"]
    assert req.all("x-forwarded-proto") == ["http"]
    assert req.all("x-forwarded-host") == [f"127.0.0.1:{port}"]
    assert req.all("forwarded") == []
    for hop in ("x-hop-one", "x-hop-two", "keep-alive", "te", "proxy-authorization", "upgrade", "transfer-encoding"):
        assert req.all(hop) == [], f"hop-by-hop {hop} forwarded: {req.headers}"
    # Connection itself: absent, or naming nothing but keep-alive.
    for v in req.all("connection"):
        assert set(t.strip().lower() for t in v.split(",")) <= {"keep-alive"}, v
    assert req.all("x-request-id") == ["trace-abc.123"]
    assert req.one("mcp-session-id") == "sess-123"
    assert req.one("mcp-protocol-version") == "2025-06-18"
    assert req.one("last-event-id") == "41"
    assert req.one("accept") == "application/json, text/event-stream"
    assert req.one("x-end-to-end") == "kept"
    assert req.one("content-length") == str(len(body)) and req.body == body

    head = resp.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    names = [line.split(":", 1)[0].strip().lower() for line in head.split("\r\n")[1:]]
    values = {line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]}
    assert head.startswith("HTTP/1.1 200")
    assert "x-resp-hop" not in names and "keep-alive" not in names
    assert names.count("x-request-id") == 1 and values["x-request-id"] == "trace-abc.123"
    assert values["mcp-session-id"] == "sess-123"


def test_generated_request_id_reaches_upstream_and_client(portcullis, raw_upstreams):
    up = raw_upstreams(lambda conn, req: conn.sendall(json_answer()) or True)
    port = free_port()
    portcullis.start(one_route(port, up.port), [port])
    with httpx.Client(timeout=10) as c:
        ids = []
        for bad in (None, "has space", "x" * 65, "semi;colon"):
            h = {"X-Request-Id": bad} if bad else {}
            r = c.post(f"http://127.0.0.1:{port}/mcp", content=PING, headers=h)
            assert r.status_code == 200
            rid = r.headers["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{24}", rid), rid
            ids.append(rid)
    assert len(set(ids)) == len(ids)
    assert [q.one("x-request-id") for q in up.requests] == ids


def test_real_mcp_server_sees_forwarded_headers(gateway, mcp2_sse):
    """The mcp 2.x server's own view of the request (its `request_headers`
    tool returns the HTTP headers it got) through portcullis."""

    async def go():
        from mcp import Client

        async with Client(gateway.url("/v2sse"), mode="legacy") as client:
            r = await client.call_tool("request_headers", {})
            return json.loads(r.content[0].text)

    h = anyio.run(go)
    assert h["host"] == f"127.0.0.1:{mcp2_sse.port}"
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == f"127.0.0.1:{gateway.port}"
    assert re.fullmatch(r"[0-9a-f]{24}", h["x-request-id"])
    assert h["mcp-protocol-version"]
    assert h["mcp-session-id"]
    assert "text/event-stream" in h["accept"]


# ------------------------------------------------------------ errors


def test_upstream_down_502_jsonrpc_body(gateway):
    with httpx.Client(timeout=10) as c:
        r = c.post(
            gateway.url("/down/mcp"),
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert r.status_code == 502
        assert r.headers["content-type"].startswith("application/json")
        assert r.headers["x-request-id"]
        body = r.json()
        assert body["jsonrpc"] == "2.0" and body["id"] is None
        assert isinstance(body["error"]["code"], int) and body["error"]["message"]
        # A non-MCP route answers 502 too, but not as JSON-RPC.
        r = c.get(gateway.url("/down-plain/x"))
        assert r.status_code == 502
        assert "jsonrpc" not in r.json()


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [x for sub in e.exceptions for x in _leaves(sub)]
    return [e]


def test_upstream_down_real_client_gets_error(gateway):
    """The mcp 2.x Client connecting to a route whose upstream is down fails
    promptly, with the JSON-RPC error portcullis put in its 502 body."""
    from mcp.shared.exceptions import MCPError

    async def go():
        from mcp import Client

        with anyio.fail_after(20):
            async with Client(gateway.url("/down/mcp"), mode="legacy"):
                pass

    t0 = time.monotonic()
    with pytest.raises(BaseException) as ei:
        anyio.run(go)
    assert time.monotonic() - t0 < 20
    errors = [e for e in _leaves(ei.value) if isinstance(e, MCPError)]
    assert errors, repr(ei.value)
    assert errors[0].error.code == -32000, errors[0].error


def test_upstream_silent_504(portcullis, raw_upstreams):
    """An upstream that accepts and never answers: 504 with a JSON-RPC error
    after upstream.response_header_timeout."""
    hold = threading.Event()

    def handler(conn, req):
        hold.wait(15)
        return False

    up = raw_upstreams(handler)
    port = free_port()
    portcullis.start(one_route(port, up.port, extra="upstream:\n  response_header_timeout: 1s"), [port])
    try:
        with httpx.Client(timeout=10) as c:
            t0 = time.monotonic()
            r = c.post(f"http://127.0.0.1:{port}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            took = time.monotonic() - t0
        assert r.status_code == 504
        assert 0.8 < took < 8, took
        body = r.json()
        assert body["jsonrpc"] == "2.0" and body["id"] is None and body["error"]["code"] == -32001
    finally:
        hold.set()


# ------------------------------------------------------------ shutdown


def test_graceful_shutdown_real_mcp_call(portcullis, mcp2_json):
    """SIGTERM while a real tools/call (3 s) is in flight: the call completes,
    new connections are refused, portcullis exits 0."""
    port = free_port()
    proc = portcullis.start(
        one_route(port, mcp2_json.port, extra="shutdown_timeout: 15s"), [port], name="portcullis-shutdown"
    )
    url = f"http://127.0.0.1:{port}/mcp"
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with httpx.Client(timeout=20) as c:
        r = c.post(
            url,
            headers=base,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
            },
        )
        assert r.status_code == 200
        h = dict(base, **{"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"})
        assert c.post(url, headers=h, json={"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202

    result: dict = {}

    def slow_call():
        try:
            with httpx.Client(timeout=20) as c2:
                result["resp"] = c2.post(
                    url,
                    headers=h,
                    json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "slow", "arguments": {"seconds": 3}}},
                )
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=slow_call)
    t.start()
    time.sleep(1.0)  # the call is in flight upstream (it takes 3 s)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.5)  # the workers notice within 100 ms
    refused = not can_connect(port)
    t.join(timeout=20)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    resp = result["resp"]
    assert resp.status_code == 200
    assert resp.json()["result"]["content"][0]["text"] == "slept 3.0"
    assert resp.headers.get("connection", "").lower() == "close"
    assert refused, "portcullis still accepted a new connection after SIGTERM"
    rc = proc.popen.wait(timeout=20)
    assert rc == 0, proc.tail()
    log = proc.log.read_text()
    assert "shutting down" in log


def test_graceful_shutdown_idle_exits_fast(portcullis, raw_upstreams):
    up = raw_upstreams(lambda conn, req: conn.sendall(json_answer()) or True)
    port = free_port()
    proc = portcullis.start(one_route(port, up.port), [port])
    with httpx.Client(timeout=10) as c:
        assert c.post(f"http://127.0.0.1:{port}/mcp", content=PING).status_code == 200
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.popen.wait(timeout=15) == 0
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------ pooled connections


def _prime(port: int) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/mcp", PING, {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def _post_status(port: int, split: bool) -> bytes:
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if split:
            s.sendall(head)
            time.sleep(0.05)
            s.sendall(body)
        else:
            s.sendall(head + body)
        data = b""
        while b"\r\n" not in data:
            more = s.recv(4096)
            if not more:
                break
            data += more
        return data.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("mcp", [True, False], ids=["mcp-route", "plain-route"])
@pytest.mark.parametrize("split", [False, True], ids=["body-with-head", "body-after-head"])
def test_stale_pooled_connection(portcullis, raw_upstreams, split, mcp):
    """An upstream that closes idle keep-alive connections after 1 s (as
    uvicorn does after 5 s): the next request must not fail because portcullis
    picked the dead pooled connection, whether or not the body came in the
    same read as the head (httpx, used by the Python MCP clients, writes them
    separately). Regression test: this gave 502 before 786525e."""
    up = raw_upstreams(lambda conn, req: conn.sendall(json_answer()) or True, idle_timeout=1.0)
    port = free_port()
    portcullis.start(one_route(port, up.port, mcp=mcp), [port])
    assert _prime(port) == 200  # leaves one pooled upstream connection
    time.sleep(1.6)  # the upstream closes it
    assert _post_status(port, split) == b"HTTP/1.1 200 OK"


def test_real_client_after_upstream_idle_close(portcullis, mcp2_sse):
    """Two mcp 2.x client sessions 6 s apart through a default-config portcullis
    in front of a uvicorn-served MCP server (uvicorn closes idle keep-alive
    connections after 5 s; portcullis keeps them up to 30 s). Regression test:
    the second session's first POST got 502 before 786525e."""
    port = free_port()
    portcullis.start(one_route(port, mcp2_sse.port), [port])
    url = f"http://127.0.0.1:{port}/mcp"
    anyio.run(lambda: exercise(url, "legacy", full=False))
    time.sleep(6)  # > uvicorn's 5 s keep-alive timeout
    anyio.run(lambda: exercise(url, "legacy", full=False))


def test_graceful_shutdown_bounded_with_open_sse_stream(portcullis, mcp2_sse):
    """An open GET listen stream counts as in flight: after SIGTERM portcullis
    waits at most shutdown_timeout (2 s here), then exits 0."""
    port = free_port()
    proc = portcullis.start(one_route(port, mcp2_sse.port, extra="shutdown_timeout: 2s"), [port], name="portcullis-sse-shutdown")
    url = f"http://127.0.0.1:{port}/mcp"
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with httpx.Client(timeout=httpx.Timeout(15, read=10)) as c:
        r = c.post(
            url,
            headers=base,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
            },
        )
        sid = r.headers["mcp-session-id"]
        h = {"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
        assert c.post(url, headers=dict(base, **h), json={"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        with c.stream("GET", url, headers=dict(h, Accept="text/event-stream")) as g:
            assert g.status_code == 200
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            rc = proc.popen.wait(timeout=20)
            took = time.monotonic() - t0
    assert rc == 0, proc.tail()
    assert 1.5 < took < 6, took
    assert "shutdown deadline reached" in proc.log.read_text()


def test_two_workers(portcullis, mcp2_sse, mcp1_sse):
    """workers: 2 — real clients' requests spread over both workers (each with
    its own upstream pool) still make up one working session, for Streamable
    HTTP and for the legacy SSE transport (GET stream on one connection,
    POSTs on others)."""
    from conftest import run_mcp1_client

    port = free_port()
    cfg = f"""
workers: 2
shutdown_timeout: 2s   # the legacy client's GET stream lingers: see test_client_disconnect_closes_upstream_stream
listen:
  - address: 127.0.0.1:{port}
routes:
  - name: s
    from: http://127.0.0.1:{port}/mcp
    to: {mcp2_sse.url}
    mcp: {{}}
  - name: l
    from: http://127.0.0.1:{port}/legacy
    to: http://127.0.0.1:{mcp1_sse.port}/
    mcp: {{}}
"""
    portcullis.start(cfg, [port], name="portcullis-2-workers")
    for _ in range(3):
        out, _ = anyio.run(lambda: exercise(f"http://127.0.0.1:{port}/mcp", "legacy", elicit=True))
        assert out["add"] == ["42"] and out["ask_name"] == ["hello Ada"] and len(out["progress"]) == 3
        out = run_mcp1_client(f"http://127.0.0.1:{port}/legacy/sse", "sse", elicit=True)
        assert out["add"] == ["42"] and out["ask_name"] == ["hello Ada"] and len(out["progress"]) == 3


def test_large_tool_argument_and_body_limit(gateway):
    """A 1 MiB tool argument through portcullis with a real client (under the
    4 MiB default body limit); a 5 MiB body gets 413 with a JSON-RPC error."""
    big = "x" * (1 << 20)

    async def go():
        from mcp import Client

        async with Client(gateway.url("/v2json/mcp"), mode="legacy") as client:
            r = await client.call_tool("echo", {"text": big})
            return r.content[0].text

    assert anyio.run(go) == big
    with httpx.Client(timeout=30) as c:
        r = c.post(
            gateway.url("/v2json/mcp"),
            content=b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"'
            + b"y" * (5 << 20)
            + b'"}}}',
            headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        )
    assert r.status_code == 413
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None and "error" in body


def test_client_disconnect_closes_upstream_stream(portcullis, raw_upstreams):
    """The client reads one SSE event and closes its connection: the upstream
    must see its stream closed within a few seconds."""
    upstream_saw_close = threading.Event()

    def handler(conn: socket.socket, req: RawRequest) -> bool:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk(b"data: hello\n\n")
        )
        conn.settimeout(8)
        try:
            if conn.recv(1) == b"":
                upstream_saw_close.set()
        except socket.timeout:
            pass
        except OSError:
            upstream_saw_close.set()  # a reset counts too
        return False

    up = raw_upstreams(handler)
    port = free_port()
    portcullis.start(one_route(port, up.port, extra="shutdown_timeout: 2s"), [port])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        r = ChunkedReader(s)
        r.read_head()
        r.read_until(b"data: hello")
    assert upstream_saw_close.wait(5), "upstream stream still open 5 s after the client went away"
