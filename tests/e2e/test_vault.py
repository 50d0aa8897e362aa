"""Token separation (issue 12) with real parts: an upstream authorization
server standing in for GitHub (helpers/upstream_as.mjs, oidc-provider, 12 s
access tokens, rotating refresh tokens), a real MCP server that takes only
its tokens and says whose they are (helpers/upstream_mcp.py, tool `whoami`),
the Python SDK's OAuth client against portcullis, Chromium through
portcullis's login and consent and the upstream's login and consent.

The agent holds only portcullis tokens; the upstream sees only upstream
tokens, each user's own; refreshes happen ahead, in the background; the
upstream refusing a refresh disconnects the user with a clear JSON-RPC error
naming where to reconnect; disconnecting on the connections page works; the
store holds no upstream token in plaintext."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import jwt
import pytest

from conftest import Portcullis, Procs, _failed, free_port
from test_oauth_server import ARTIFACTS, INIT, sdk_session
from upstream import CLIENT_ID, CLIENT_SECRET, start_upstream_as, start_upstream_mcp

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM}")

ACCEPT = "application/json, text/event-stream"
KEY = "ab" * 32


@pytest.fixture(scope="module")
def vault_procs(tmp_path_factory):
    ps = Procs(tmp_path_factory.mktemp("vault-logs"))
    yield ps
    ps.stop_all()


@pytest.fixture(autouse=True)
def _tails(request, vault_procs):
    yield
    if _failed(request):
        sys.stderr.write("\n" + vault_procs.tails() + "\n")


class Gw:
    def __init__(self, port, store, upstream_as, upstream_mcp, audit):
        self.port, self.store, self.upstream_as, self.upstream_mcp, self.audit = port, store, upstream_as, upstream_mcp, audit
        self.issuer = f"http://127.0.0.1:{port}"
        self.url = f"{self.issuer}/github"


@pytest.fixture(scope="module")
def gw(vault_procs, tmp_path_factory) -> Gw:
    port = free_port()
    d = tmp_path_factory.mktemp("vault")
    up_as = start_upstream_as(vault_procs, [f"http://127.0.0.1:{port}/.portcullis/upstream/callback"], access_ttl=12)
    up_mcp = start_upstream_mcp(vault_procs, up_as, json_mode=True)
    m = up_as.meta
    cfg = f"""
workers: 2
listen: [{{address: 127.0.0.1:{port}}}]
audit: {{path: {d}/audit.jsonl}}
authorization_server:
  issuer: http://127.0.0.1:{port}
  login: {{dev_users: [{{sub: alice, groups: [engineering]}}, {{sub: bob, groups: [engineering]}}]}}
  clients: {{dynamic_registration: true}}
store: {{path: {d}/state.db}}
vault:
  keys: [{{id: k1, key: "{KEY}"}}]
  refresh_ahead: 6s
routes:
  - name: github
    from: http://127.0.0.1:{port}/github
    to: {up_mcp.url}
    mcp: {{}}
    auth: {{issuers: [portcullis]}}
    upstream_auth:
      oauth2:
        client_id: {CLIENT_ID}
        client_secret: {CLIENT_SECRET}
        authorization_url: {m["authorization_endpoint"]}
        token_url: {m["token_endpoint"]}
        revocation_url: {m["revocation_endpoint"]}
        issuer: {up_as.issuer}
        scopes: [read:user, repo]
"""
    Portcullis(vault_procs, d / "config").start(cfg, [port], name="portcullis-vault")
    return Gw(port, d / "state.db", up_as, up_mcp, d / "audit.jsonl")


def session_tokens(gw: Gw, user: str):
    """The SDK's whole flow for `user` (portcullis login + consent, then the
    upstream's login + consent): whoami's answer, the client's storage, and
    every byte the client received."""
    received: list[bytes] = []

    async def calls(client):
        from mcpclient import text_of
        return json.loads(text_of(await client.call_tool("whoami", {}))[0])

    who, storage, _ = sdk_session(gw.url, user, ARTIFACTS / f"vault-{user}", calls)
    return who, storage, received


def raw_tokens(gw: Gw) -> list[str]:
    return [t["token"] for t in gw.upstream_mcp.seen().get("tokens", []) if t.get("token")]


def mcp_call(c: httpx.Client, gw: Gw, token: str, session: str | None, body: dict) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", "accept": ACCEPT}
    if session:
        headers["mcp-session-id"] = session
    return c.post(gw.url, json=body, headers=headers)


def whoami_call(i: int) -> dict:
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}


def test_each_user_gets_their_own_upstream_token_and_the_agent_none(gw):
    """alice and bob connect through the SDK's flow; the upstream sees each
    one's own token; the client's tokens are portcullis's (aud = the route);
    interleaved on one keep-alive connection, each request carries its
    caller's upstream token; no upstream token is in the store in the clear."""
    who_a, st_a, _ = session_tokens(gw, "alice")
    who_b, st_b, _ = session_tokens(gw, "bob")
    assert who_a["sub"] == "alice" and who_b["sub"] == "bob"
    assert who_a["client_id"] == CLIENT_ID
    for st in (st_a, st_b):
        claims = jwt.decode(st.tokens.access_token, options={"verify_signature": False})
        assert claims["iss"] == gw.issuer and claims["aud"] == gw.url
    upstream = raw_tokens(gw)
    assert upstream, gw.upstream_mcp.seen()
    held = json.dumps([st_a.tokens.model_dump(), st_b.tokens.model_dump()])
    assert not any(t in held for t in upstream), "an upstream token reached the client"
    # Interleaved on one connection, every request its caller's.
    with httpx.Client(timeout=15, limits=httpx.Limits(max_connections=1)) as c:
        sessions = {}
        for name, st in (("alice", st_a), ("bob", st_b)):
            r = mcp_call(c, gw, st.tokens.access_token, None, INIT)
            assert r.status_code == 200, r.text
            sessions[name] = (st.tokens.access_token, r.headers.get("mcp-session-id"))
        for i in range(12):
            name = "alice" if i % 2 == 0 else "bob"
            token, session = sessions[name]
            r = mcp_call(c, gw, token, session, whoami_call(i + 10))
            assert r.status_code == 200, r.text
            body = r.json()
            assert json.loads(body["result"]["content"][0]["text"])["sub"] == name
            assert not any(t in r.text for t in raw_tokens(gw))
    files = b"".join(p.read_bytes() for p in gw.store.parent.glob("state.db*"))
    for t in raw_tokens(gw):
        assert t.encode() not in files, "an upstream token is in the store in plaintext"
    assert "eyJ" not in gw.audit.read_text() or not any(t in gw.audit.read_text() for t in raw_tokens(gw))


def test_tokens_are_refreshed_ahead_and_never_in_the_request_path(gw):
    """With 12 s upstream tokens, calls keep working for 40 s: the upstream
    sees several of alice's tokens, none used in its last seconds, and the
    audit log shows the background refreshes."""
    who, st, _ = session_tokens(gw, "alice")
    token = st.tokens.access_token
    gw.upstream_mcp.reset_seen()
    with httpx.Client(timeout=15) as c:
        r = mcp_call(c, gw, token, None, INIT)
        session = r.headers.get("mcp-session-id")
        deadline = time.monotonic() + 40
        i = 0
        while time.monotonic() < deadline:
            i += 1
            r = mcp_call(c, gw, token, session, whoami_call(100 + i))
            assert r.status_code == 200 and "result" in r.json(), r.text
            time.sleep(0.5)
    seen = gw.upstream_mcp.seen()
    alice = [t for t in seen["tokens"] if t.get("sub") == "alice"]
    assert len(alice) >= 3, seen
    assert all(t["min_remaining_s"] > 0 for t in alice), alice
    assert not seen.get("rejections"), seen["rejections"]
    audit = gw.audit.read_text()
    assert audit.count('"event":"upstream.refreshed"') >= 2, audit[-2000:]


def test_an_unreachable_upstream_keeps_the_token_and_retries(gw):
    """The upstream's token endpoint answers 503 to the next three requests:
    the refreshes fail, the token is kept (calls keep working), the refresher
    retries sooner as expiry nears, and a later refresh succeeds."""
    _, st, _ = session_tokens(gw, "alice")
    gw.upstream_as.token_faults(3, status=503)
    with httpx.Client(timeout=15) as c:
        r = mcp_call(c, gw, st.tokens.access_token, None, INIT)
        session = r.headers.get("mcp-session-id")
        deadline = time.monotonic() + 30
        i = 0
        while time.monotonic() < deadline:
            i += 1
            r = mcp_call(c, gw, st.tokens.access_token, session, whoami_call(500 + i))
            assert r.status_code == 200 and "result" in r.json(), r.text
            time.sleep(0.5)
    events = [json.loads(l) for l in gw.audit.read_text().splitlines() if '"event":"upstream.' in l]
    kept = [e for e in events if e["event"] == "upstream.refresh_failed" and e["outcome"].startswith("kept")]
    assert len(kept) >= 3, events[-10:]
    last_kept = max(i for i, e in enumerate(events) if e in kept)
    assert any(e["event"] == "upstream.refreshed" for e in events[last_kept:]), events[-10:]


def test_upstream_refusing_the_refresh_asks_the_user_to_reconnect(gw):
    """The upstream forgets bob's grant (as when he revokes the app there):
    the next background refresh gets invalid_grant, the connection is marked
    disconnected, and bob's next call gets a JSON-RPC error naming the
    connections page; alice is unaffected."""
    _, st_b, _ = session_tokens(gw, "bob")
    gw.upstream_as.revoke_all("bob")
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=15) as c:
        while True:
            r = mcp_call(c, gw, st_b.tokens.access_token, None, INIT)
            if r.status_code == 200 and "error" in r.json():
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
    err = r.json()["error"]
    assert err["code"] == -32003 and f"{gw.issuer}/.portcullis/connections" in err["message"], err
    assert "disconnected" in err["message"]
    who, _, _ = session_tokens(gw, "alice")
    assert who["sub"] == "alice"


def test_an_upstream_401_is_answered_by_portcullis_not_relayed(gw):
    """The MCP server refuses alice's upstream token (as GitHub does with a
    token revoked there): the agent never sees the upstream's challenge; it
    gets portcullis's reconnect error, and the connection is marked
    disconnected until she connects again."""
    _, st, _ = session_tokens(gw, "alice")
    gw.upstream_mcp.deny("alice")
    try:
        r = httpx.post(gw.url, json=INIT, headers={"authorization": f"Bearer {st.tokens.access_token}", "accept": ACCEPT}, timeout=10)
        assert r.status_code == 200, r.text
        assert "www-authenticate" not in r.headers and "resource_metadata" not in r.text
        err = r.json()["error"]
        assert "refused your account's token (HTTP 401)" in err["message"] and "/.portcullis/connections" in err["message"], err
        r = httpx.post(gw.url, json=INIT, headers={"authorization": f"Bearer {st.tokens.access_token}", "accept": ACCEPT}, timeout=10)
        assert "disconnected" in r.json()["error"]["message"], r.text
    finally:
        gw.upstream_mcp.deny("alice", on=False)
    assert '"event":"upstream.token_refused"' in gw.audit.read_text()


def test_disconnect_on_the_connections_page(gw):
    """alice opens the connections page (development login by hand), sees
    github connected, disconnects it: her next call is refused with the
    reconnect error and the record is gone."""
    _, st, _ = session_tokens(gw, "alice")
    jar: dict[str, str] = {}

    def go(method, url, form=None):
        headers = {"cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}
        if form is not None:
            headers["origin"] = gw.issuer
        r = httpx.request(method, url, data=form, headers=headers, timeout=10)
        for line in r.headers.get_list("set-cookie"):
            name, value = line.split(";")[0].split("=", 1)
            jar.pop(name, None) if "Max-Age=0" in line else jar.__setitem__(name, value)
        return r

    hidden = lambda html, name: re.search(rf'name="{name}" value="([^"]+)"', html).group(1)
    r = go("GET", f"{gw.issuer}/.portcullis/connections")
    while r.status_code == 302:
        r = go("GET", r.headers["location"])
    assert 'name="user"' in r.text, r.text
    r = go("POST", f"{gw.issuer}/.portcullis/login", {"tx": hidden(r.text, "tx"), "csrf": hidden(r.text, "csrf"), "user": "alice"})
    assert r.status_code == 302 and r.headers["location"].endswith("/.portcullis/connections")
    page = go("GET", r.headers["location"]).text
    assert "connected" in page and 'value="disconnect"' in page, page
    r = go("POST", f"{gw.issuer}/.portcullis/connections", {"route": "github", "csrf": hidden(page, "csrf"), "action": "disconnect"})
    assert r.status_code == 302, r.text
    assert "not connected" in go("GET", f"{gw.issuer}/.portcullis/connections").text
    r = httpx.post(gw.url, json=INIT, headers={"authorization": f"Bearer {st.tokens.access_token}", "accept": ACCEPT}, timeout=10)
    assert r.status_code == 200 and "/.portcullis/connections" in r.json()["error"]["message"], r.text

