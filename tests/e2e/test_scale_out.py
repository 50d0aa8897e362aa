"""Scale-out (issue 13): three portcullis instances sharing one PostgreSQL
(a private cluster from tests/pg-cluster), behind haproxy sending each
request to the next instance in turn. Any instance serves any step of any
flow: the Python SDK's OAuth client and Chromium go through the balancer;
a hand-driven flow registers at A, authorizes at B, redeems at C; a
revocation at A is refused at C within 2 s; PostgreSQL restarted in the
middle of a run of calls on cached tokens fails none of them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from conftest import Portcullis, Procs, _failed, free_port, start_mcp2
from test_oauth_server import ARTIFACTS, INIT, sdk_session

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = [
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM}"),
    pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason="no haproxy"),
]
ACCEPT = "application/json, text/event-stream"
SECRET = "5e" * 32  # 32 bytes in hex, shared by the three instances


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    ps = Procs(tmp_path_factory.mktemp("scale-logs"))
    yield ps
    ps.stop_all()


@pytest.fixture(autouse=True)
def _tails(request, procs):
    yield
    if _failed(request):
        sys.stderr.write("\n" + procs.tails() + "\n")


@pytest.fixture(scope="module")
def pg():
    # Not under pytest's tmp dirs: those are root's alone, and the cluster
    # runs as the postgres user.
    d = Path(tempfile.mkdtemp(prefix="portcullis-pg-e2e."))
    out = subprocess.run([str(REPO / "tests/pg-cluster"), "start", str(d)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    url = re.search(r"PORTCULLIS_TEST_POSTGRES=(\S+)", out.stdout).group(1)
    yield {"dir": d, "url": url}
    subprocess.run([str(REPO / "tests/pg-cluster"), "stop", str(d)], capture_output=True, timeout=120)
    shutil.rmtree(d, ignore_errors=True)


class Cluster:
    pass


@pytest.fixture(scope="module")
def cluster(procs, pg, tmp_path_factory) -> Cluster:
    c = Cluster()
    c.lb = free_port()
    c.issuer = f"http://127.0.0.1:{c.lb}"
    c.url = f"{c.issuer}/mcp"
    c.ports = [free_port() for _ in range(3)]
    c.admins = [free_port() for _ in range(3)]
    c.dir = tmp_path_factory.mktemp("scale")
    upstream = start_mcp2(procs, "scale-mcp2", json_mode=True)
    c.audits = []
    c.procs = []
    for i, port in enumerate(c.ports):
        audit = c.dir / f"audit-{i}.jsonl"
        c.audits.append(audit)
        cfg = f"""
workers: 1
listen: [{{address: 127.0.0.1:{port}}}]
admin: {{address: 127.0.0.1:{c.admins[i]}}}
audit: {{path: {audit}}}
authorization_server:
  issuer: {c.issuer}
  secret: {SECRET}
  login: {{dev_users: [{{sub: alice}}, {{sub: bob}}]}}
  clients: {{dynamic_registration: true}}
  tokens: {{refresh_grace: 2s}}
store: {{postgres: {{url: "{pg['url']}"}}}}
routes:
  - name: mcp
    from: {c.url}
    to: {upstream.url}
    mcp: {{}}
    auth: {{issuers: [portcullis]}}
"""
        # One at a time: the first one makes the shared signing key.
        c.procs.append(Portcullis(procs, c.dir / f"config-{i}").start(cfg, [port], name=f"portcullis-{'abc'[i]}"))
    hap = c.dir / "haproxy.cfg"
    servers = "\n".join(f"    server {'abc'[i]} 127.0.0.1:{p}" for i, p in enumerate(c.ports))
    hap.write_text(
        f"""global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-server-close
frontend fe
    bind 127.0.0.1:{c.lb}
    default_backend portcullis
backend portcullis
    balance roundrobin
{servers}
"""
    )
    p = procs.start("haproxy", [HAPROXY, "-db", "-f", str(hap)])
    p.wait_ports([c.lb])
    return c


def metrics(cluster: Cluster, i: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{cluster.admins[i]}/metrics", timeout=10).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(portcullis_store_\w+) (\S+)$", text, re.M)}


def at(cluster: Cluster, i: int) -> str:
    """Instance i's own address (A=0, B=1, C=2)."""
    return f"http://127.0.0.1:{cluster.ports[i]}"


def host(cluster: Cluster) -> dict:
    """The public Host the route answers on, whichever instance is asked."""
    return {"host": f"127.0.0.1:{cluster.lb}"}


def events(cluster: Cluster, i: int, name: str) -> list[dict]:
    path = cluster.audits[i]
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(l) for l in lines if f'"event":"{name}"' in l]


def mcp_requests(cluster: Cluster, i: int) -> int:
    path = cluster.audits[i]
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for l in lines if '"route":"mcp"' in l)


class Walker:
    """A browser by hand: one cookie jar, any instance (cookies are sealed
    with the shared secret, so each instance opens the others')."""

    def __init__(self):
        self.jar: dict[str, str] = {}

    def go(self, method: str, url: str, form: dict | None = None, origin: str | None = None) -> httpx.Response:
        headers = {"cookie": "; ".join(f"{k}={v}" for k, v in self.jar.items())} if self.jar else {}
        if form is not None and origin:
            headers["origin"] = origin
        r = httpx.request(method, url, data=form, headers=headers, timeout=15)
        for line in r.headers.get_list("set-cookie"):
            name, value = line.split(";")[0].split("=", 1)
            if "Max-Age=0" in line:
                self.jar.pop(name, None)
            else:
                self.jar[name] = value
        return r


def hidden(html: str, name: str) -> str:
    return re.search(rf'name="{name}" value="([^"]+)"', html).group(1)


def on(cluster: Cluster, url: str, i: int) -> str:
    """`url` (naming the public issuer) sent to instance i instead."""
    return url.replace(cluster.issuer, at(cluster, i))


def authorize(cluster: Cluster, client_id: str, redirect: str, user: str, i: int, asked: list | None = None) -> tuple[str, str]:
    """The authorization request, login and consent, all at instance i:
    (code, verifier). `asked` gets True when a consent page was shown."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    q = {
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": "st",
        "code_challenge": challenge, "code_challenge_method": "S256", "resource": cluster.url,
    }
    w = Walker()
    r = w.go("GET", f"{at(cluster, i)}/authorize?{urllib.parse.urlencode(q)}")
    while r.status_code == 302 and not r.headers["location"].startswith(redirect):
        r = w.go("GET", on(cluster, r.headers["location"], i))
        if 'name="user"' in r.text:
            r = w.go("POST", f"{at(cluster, i)}/.portcullis/login",
                     {"tx": hidden(r.text, "tx"), "csrf": hidden(r.text, "csrf"), "user": user}, cluster.issuer)
        elif 'value="allow"' in r.text:
            if asked is not None:
                asked.append(True)
            r = w.go("POST", f"{at(cluster, i)}/.portcullis/consent",
                     {"tx": hidden(r.text, "tx"), "csrf": hidden(r.text, "csrf"), "decision": "allow"}, cluster.issuer)
    assert r.status_code == 302, r.text[:500]
    back = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["location"]).query))
    assert back.get("code") and back["state"] == "st" and back["iss"] == cluster.issuer, back
    return back["code"], verifier


def token(cluster: Cluster, i: int, form: dict) -> httpx.Response:
    return httpx.post(f"{at(cluster, i)}/token", data=form, timeout=15)


def call(cluster: Cluster, i: int, access: str) -> httpx.Response:
    return httpx.post(
        f"{at(cluster, i)}/mcp", json=INIT,
        headers={"authorization": f"Bearer {access}", "accept": ACCEPT, **host(cluster)}, timeout=15,
    )


def test_a_real_client_through_the_balancer_uses_every_instance(cluster):
    """The Python SDK's OAuth client (registration, authorization in
    Chromium, token, tool calls) through haproxy's round robin: the steps
    land on different instances and the flow works."""

    async def calls(client):
        tools = await client.list_tools()
        results = []
        for i in range(6):
            results.append(await client.call_tool("echo", {"text": f"hi {i}"}))
        return tools, results

    (tools, results), storage, _ = sdk_session(cluster.url, "alice", ARTIFACTS / "scale-alice", calls)
    assert any(t.name == "echo" for t in tools.tools)
    assert all(not r.is_error for r in results)
    # Audit records reach their files a moment later (a writer thread each).
    deadline = time.monotonic() + 10
    while True:
        served = [mcp_requests(cluster, i) for i in range(3)]
        if (all(served) and sum(served) >= 8) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(served) >= 8 and all(served), served
    authz = [len(events(cluster, i, "client.registered")) + len(events(cluster, i, "consent.given"))
             + len(events(cluster, i, "user.login")) for i in range(3)]
    assert sum(authz) >= 3 and sum(1 for n in authz if n > 0) >= 2, authz


def test_one_identity_assertion_key_for_every_instance(cluster):
    """The identity assertion key is kept (sealed) in the shared store: the
    three instances publish one JWKS, so an upstream verifies assertions from
    any of them."""
    jwks = [httpx.get(f"{at(cluster, i)}/.well-known/portcullis/jwks.json", headers=host(cluster), timeout=10).json()
            for i in range(3)]
    assert jwks[0]["keys"] and jwks[0] == jwks[1] == jwks[2], jwks


def test_register_at_a_authorize_at_b_redeem_at_c_refresh_and_revoke_anywhere(cluster):
    """Dynamic registration at A; authorization (login, consent) at B; the
    code redeemed at C exactly once (again at A: invalid_grant); the token
    works at every instance; a refresh at C rotates, the spent refresh token
    presented at B after the grace window revokes the grant; the consent
    given at B holds at A; a new grant revoked at A is refused at C within
    2 s."""
    redirect = f"http://127.0.0.1:{free_port()}/cb"
    r = httpx.post(f"{at(cluster, 0)}/register", json={
        "redirect_uris": [redirect], "token_endpoint_auth_method": "none", "client_name": "scale e2e",
        "grant_types": ["authorization_code", "refresh_token"],
    }, timeout=15)
    assert r.status_code == 201, r.text
    client_id = r.json()["client_id"]
    code, verifier = authorize(cluster, client_id, redirect, "bob", 1)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
            "code_verifier": verifier, "client_id": client_id, "resource": cluster.url}
    r = token(cluster, 2, form)
    assert r.status_code == 200, r.text
    first = r.json()
    again = token(cluster, 0, form)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text
    # The replayed code revoked its grant everywhere: a fresh grant for the rest.
    code, verifier = authorize(cluster, client_id, redirect, "bob", 1)
    form.update(code=code, code_verifier=verifier)
    tokens = token(cluster, 2, form).json()
    for i in range(3):
        assert call(cluster, i, tokens["access_token"]).status_code == 200, i
    deadline = time.monotonic() + 2.5
    while call(cluster, 1, first["access_token"]).status_code == 200:
        assert time.monotonic() < deadline, "the replayed code's grant still works at B"
        time.sleep(0.1)

    rotated = token(cluster, 2, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id})
    assert rotated.status_code == 200, rotated.text
    time.sleep(2.5)  # past refresh_grace
    reused = token(cluster, 1, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id})
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant", reused.text
    newest = token(cluster, 0, {"grant_type": "refresh_token", "refresh_token": rotated.json()["refresh_token"], "client_id": client_id})
    assert newest.status_code == 400, "the whole family is revoked, at every instance"

    # Revocation at A, refused at C within 2 s (no store read per request:
    # each instance publishes revocations from the store's change sequence).
    # The consent bob gave at B holds at A: no consent page this time.
    asked: list = []
    code, verifier = authorize(cluster, client_id, redirect, "bob", 0, asked)
    assert not asked, "consent asked again at another instance"
    form.update(code=code, code_verifier=verifier)
    fresh = token(cluster, 1, form).json()
    assert call(cluster, 2, fresh["access_token"]).status_code == 200
    r = httpx.post(f"{at(cluster, 0)}/revoke", data={"token": fresh["refresh_token"], "client_id": client_id}, timeout=15)
    assert r.status_code == 200, r.text
    revoked_at = time.monotonic()
    while call(cluster, 2, fresh["access_token"]).status_code == 200:
        assert time.monotonic() - revoked_at < 2.0, "still accepted at C 2 s after the revocation at A"
        time.sleep(0.05)


def test_postgres_restarted_while_requests_flow(cluster, pg):
    """PostgreSQL restarted in the middle of a run of calls on a cached
    token at every instance: no call fails; afterwards the authorization
    endpoints work again by themselves (reconnect)."""
    redirect = f"http://127.0.0.1:{free_port()}/cb"
    client_id = httpx.post(f"{at(cluster, 1)}/register", json={
        "redirect_uris": [redirect], "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
    }, timeout=15).json()["client_id"]
    code, verifier = authorize(cluster, client_id, redirect, "alice", 2)
    tokens = token(cluster, 0, {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                                "code_verifier": verifier, "client_id": client_id, "resource": cluster.url}).json()
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def flow():
        i = 0
        while not done.is_set():
            r = call(cluster, i % 3, tokens["access_token"])
            count[0] += 1
            if r.status_code != 200:
                failures.append(f"{i % 3}: {r.status_code} {r.text[:200]}")
            i += 1

    t = threading.Thread(target=flow)
    t.start()
    time.sleep(1)
    out = subprocess.run([str(REPO / "tests/pg-cluster"), "restart", str(pg["dir"])], capture_output=True, text=True, timeout=120)
    time.sleep(1)
    done.set()
    t.join(30)
    assert out.returncode == 0, out.stderr
    assert count[0] > 20 and not failures, (count[0], failures[:5])
    deadline = time.monotonic() + 15
    while True:
        r = token(cluster, 1, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id})
        if r.status_code == 200:
            break
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        time.sleep(0.5)
    # Every instance's watcher is back and says so; notifications were received.
    deadline = time.monotonic() + 15
    while not all(metrics(cluster, i).get("portcullis_store_watch_up") == 1 for i in range(3)):
        assert time.monotonic() < deadline, [metrics(cluster, i) for i in range(3)]
        time.sleep(0.2)
    for i in range(3):
        m = metrics(cluster, i)
        assert m["portcullis_store_up"] == 1 and m["portcullis_store_notifications_total"] > 0, m


def test_an_instance_killed_mid_flow_loses_nothing_acknowledged(cluster):
    """B answers the authorization with a code and is killed (SIGKILL) at
    once: the code it acknowledged is redeemed at C, and the refresh token
    works at A. (Last in this module: B stays down.)"""
    redirect = f"http://127.0.0.1:{free_port()}/cb"
    client_id = httpx.post(f"{at(cluster, 0)}/register", json={
        "redirect_uris": [redirect], "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
    }, timeout=15).json()["client_id"]
    code, verifier = authorize(cluster, client_id, redirect, "alice", 1)
    cluster.procs[1].popen.kill()
    cluster.procs[1].popen.wait(10)
    r = token(cluster, 2, {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                           "code_verifier": verifier, "client_id": client_id, "resource": cluster.url})
    assert r.status_code == 200, r.text
    r = token(cluster, 0, {"grant_type": "refresh_token", "refresh_token": r.json()["refresh_token"], "client_id": client_id})
    assert r.status_code == 200, r.text
    assert call(cluster, 2, r.json()["access_token"]).status_code == 200
