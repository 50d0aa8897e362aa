"""Token separation in discovery mode (issue 12): the route says only
`upstream_auth: { oauth2: { discover: true } }`. portcullis reads the
upstream MCP server's RFC 9728 metadata (helpers/upstream_mcp.py, mcp 2.x),
then its authorization server's RFC 8414 metadata (helpers/upstream_as.mjs,
oidc-provider with dynamic registration on), registers itself there as a
public client, keeps the registration in its store, and connects each user
with the `resource` the metadata names. Real parts throughout: the Python
SDK's OAuth client against portcullis, Chromium through both logins."""

from __future__ import annotations

import json
import os
import sqlite3
import sys

import httpx
import jwt
import pytest

from conftest import Portcullis, Procs, _failed, free_port
from test_oauth_server import ARTIFACTS, sdk_session
from upstream import CLIENT_ID, start_upstream_as, start_upstream_mcp

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM}")

KEY = "cd" * 32


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    ps = Procs(tmp_path_factory.mktemp("discovery-logs"))
    yield ps
    ps.stop_all()


@pytest.fixture(autouse=True)
def _tails(request, procs):
    yield
    if _failed(request):
        sys.stderr.write("\n" + procs.tails() + "\n")


class Gw:
    pass


@pytest.fixture(scope="module")
def gw(procs, tmp_path_factory) -> Gw:
    g = Gw()
    g.port = free_port()
    g.dir = tmp_path_factory.mktemp("discovery")
    mcp_port = free_port()
    g.mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    callback = f"http://127.0.0.1:{g.port}/.portcullis/upstream/callback"
    g.upstream_as = start_upstream_as(
        procs, [callback], access_ttl=60, resources=[g.mcp_url], extra=["--registration"], name="discovery-as"
    )
    assert g.upstream_as.meta.get("registration_endpoint"), g.upstream_as.meta
    g.upstream_mcp = start_upstream_mcp(
        procs, g.upstream_as, audiences=[g.mcp_url], port=mcp_port, json_mode=True, name="discovery-mcp"
    )
    g.issuer = f"http://127.0.0.1:{g.port}"
    g.url = f"{g.issuer}/github"
    g.audit = g.dir / "audit.jsonl"
    g.store = g.dir / "state.db"
    g.config = f"""
workers: 2
listen: [{{address: 127.0.0.1:{g.port}}}]
audit: {{path: {g.audit}}}
authorization_server:
  issuer: {g.issuer}
  login: {{dev_users: [{{sub: alice}}, {{sub: bob}}]}}
  clients: {{dynamic_registration: true}}
store: {{path: {g.store}}}
vault: {{keys: [{{id: k1, key: "{KEY}"}}]}}
routes:
  - name: github
    from: {g.url}
    to: {g.mcp_url}
    mcp: {{}}
    auth: {{issuers: [portcullis]}}
    upstream_auth:
      oauth2: {{discover: true, scopes: [read:user, repo]}}
"""
    g.portcullis = Portcullis(procs, g.dir / "config")
    g.proc = g.portcullis.start(g.config, [g.port], name="portcullis-discovery")
    return g


def whoami(gw: Gw, user: str) -> dict:
    async def calls(client):
        from mcpclient import text_of

        return json.loads(text_of(await client.call_tool("whoami", {}))[0])

    who, _, _ = sdk_session(gw.url, user, ARTIFACTS / f"discovery-{user}", calls)
    return who


def audit_events(gw: Gw, name: str) -> list[dict]:
    lines = gw.audit.read_text().splitlines() if gw.audit.exists() else []
    return [json.loads(l) for l in lines if f'"event":"{name}"' in l]


def test_discovered_upstream_registers_once_and_connects_with_its_resource(gw):
    """alice's first call makes portcullis discover the upstream, register
    itself (one dynamic registration, public client, portcullis's callback),
    and connect her account: the MCP server sees her token, issued to the
    registered client for the resource its metadata names."""
    who = whoami(gw, "alice")
    regs = httpx.get(f"{gw.upstream_as.issuer}/test/registrations", timeout=10).json()
    assert len(regs) == 1 and regs[0]["status"] == 201, regs
    reg = regs[0]
    assert reg["token_endpoint_auth_method"] == "none"
    assert reg["redirect_uris"] == [f"{gw.issuer}/.portcullis/upstream/callback"]
    assert who["sub"] == "alice"
    assert who["client_id"] == reg["client_id"] != CLIENT_ID
    assert who["aud"] == gw.mcp_url, who
    # The code exchange named the resource too, and PKCE was used (the AS requires it).
    log = [e for e in gw.upstream_as.log() if e["grant_type"] == "authorization_code"]
    assert log and all(e["status"] == 200 and e["client_id"] == reg["client_id"] for e in log), log
    # The registration is kept in the store, bound to (route, issuer); no secret for a public client.
    with sqlite3.connect(gw.store) as db:
        rows = db.execute("SELECT route, issuer, client_id, sealed FROM upstream_clients").fetchall()
    assert rows == [("github", gw.upstream_as.issuer, reg["client_id"], None)], rows
    events = audit_events(gw, "upstream.registered")
    assert len(events) == 1 and events[0]["client_id"] == reg["client_id"], events


def test_the_registration_survives_a_restart(gw):
    """portcullis restarted on the same store: bob connects through the same
    registration (no second one at the upstream), and alice's connection,
    sealed for that client, still works without a new login upstream."""
    gw.proc.stop()
    gw.proc = gw.portcullis.start(gw.config, [gw.port], name="portcullis-discovery-2")
    before = len(gw.upstream_as.log())
    who = whoami(gw, "bob")
    regs = httpx.get(f"{gw.upstream_as.issuer}/test/registrations", timeout=10).json()
    assert len(regs) == 1, regs
    assert who["sub"] == "bob" and who["client_id"] == regs[0]["client_id"]
    who = whoami(gw, "alice")
    assert who["sub"] == "alice" and who["client_id"] == regs[0]["client_id"]
    codes = [e for e in gw.upstream_as.log()[before:] if e["grant_type"] == "authorization_code"]
    assert [e["sub"] for e in codes] == ["bob"], codes
    seen = gw.upstream_mcp.seen()
    assert set(seen["subs"]) == {"alice", "bob"}, seen["subs"]
    for t in seen["tokens"]:
        claims = jwt.decode(t["token"], options={"verify_signature": False})
        assert claims["aud"] == gw.mcp_url and claims["client_id"] == regs[0]["client_id"]


def test_an_idle_instance_burns_no_cpu(gw):
    """The control plane's tick (250 ms poll; no change notifications with a
    file store) sleeps between polls: an idle instance uses a sliver of a
    core (a loop that spun once went unnoticed by every other test)."""
    import time

    def ticks() -> int:
        fields = open(f"/proc/{gw.proc.popen.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    time.sleep(1)
    before, t0 = ticks(), time.monotonic()
    time.sleep(3)
    used = (ticks() - before) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)
    assert used < 0.1, f"an idle instance used {used:.0%} of a core"
