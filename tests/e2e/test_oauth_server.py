"""portcullis as the OAuth 2.1 authorization server of MCP clients, with real
parts only: the company IdP is oidc-provider (helpers/oidc_idp.mjs), the user
is a headless Chromium (helpers/browser.mjs) logging in at the IdP and
approving the client on portcullis's consent page, the client is the mcp 2.x
Python SDK's `OAuthClientProvider` (discovery from the 401, dynamic
registration, PKCE S256, `resource`, the `iss` check), and the MCP server is a
real mcp 2.x server. Then what must hold: a token is for one route only, the
IdP's groups drive the existing policy, a revoked grant is refused on every
core within a second (`portcullis grants revoke` from another process), a
refresh token rotates and its reuse after the grace window revokes the grant.
Screenshots of the login and consent pages are kept under
tests/e2e/artifacts/ (or $E2E_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx
import trustme
import httpx2
import jwt
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from mcp.shared.exceptions import MCPError

from conftest import E2E, HELPERS, NODE, Portcullis, Procs, _failed, free_port, portcullis_bin, start_mcp2
from mcpclient import text_of

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM}")

ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", E2E / "artifacts"))
IDP_SECRET = "e2e-idp-secret"
REFUSED = -32003
ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory):
    ps = Procs(tmp_path_factory.mktemp("oauth-server-logs"))
    yield ps
    ps.stop_all()


@pytest.fixture(autouse=True)
def _tails_on_failure(request, module_procs):
    yield
    if _failed(request):
        sys.stderr.write("\n" + module_procs.tails() + "\n")


@dataclass
class Gateway:
    port: int
    config: Path
    idp: str
    ca: "trustme.CA"

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, route: str) -> str:
        return f"{self.issuer}/{route}"


@pytest.fixture(scope="module")
def gw(module_procs, tmp_path_factory) -> Gateway:
    """portcullis (2 workers) as the authorization server, logging users in at
    oidc-provider; routes `github` (engineering only) and `notion` to one real
    mcp 2.x server."""
    upstream = start_mcp2(module_procs, "mcp2-oauth", json_mode=True)
    port, idp_port = free_port(), free_port()
    idp = module_procs.start(
        "oidc-idp",
        [NODE, str(HELPERS / "oidc_idp.mjs"), "--port", str(idp_port), "--client-id", "portcullis",
         "--client-secret", IDP_SECRET, "--redirect-uri", f"http://127.0.0.1:{port}/.portcullis/callback"],
    )
    idp.wait_ports([idp_port])
    issuer = f"http://127.0.0.1:{idp_port}"
    d = tmp_path_factory.mktemp("oauth-server")
    ca = trustme.CA(organization_name="portcullis e2e metadata-document CA")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cfg = f"""
workers: 2
listen: [{{address: 127.0.0.1:{port}}}]
authorization_server:
  issuer: http://127.0.0.1:{port}
  login:
    oidc:
      issuer: {issuer}
      client_id: portcullis
      client_secret: ${{IDP_SECRET}}
      scopes: [openid, email, profile, groups]
  clients:
    dynamic_registration: true
    metadata_documents: {{open: true, loopback_ca_file: {d}/ca.pem}}
  tokens: {{access_ttl: 10m, refresh_ttl: 1d, refresh_grace: 2s}}
store: {{path: {d}/state.db}}
routes:
  - name: github
    from: http://127.0.0.1:{port}/github
    to: {upstream.url}
    mcp: {{}}
    auth: {{issuers: [portcullis], scopes: [mcp]}}
    policy:
      - name: engineers
        allow: {{groups: {{has: engineering}}}}
  - name: notion
    from: http://127.0.0.1:{port}/notion
    to: {upstream.url}
    mcp: {{}}
    auth: {{issuers: [portcullis], scopes: [mcp]}}
"""
    pc = Portcullis(module_procs, d)
    pc.start(cfg, [port], name="portcullis-as", env={"IDP_SECRET": IDP_SECRET})
    return Gateway(port, d / "portcullis-as.yaml", issuer, ca)


def browser(url: str, stop_at: str, user: str, shots: Path, deny: bool = False) -> str:
    """Chromium walks login and consent; the URL it was sent back to."""
    shots.mkdir(parents=True, exist_ok=True)
    argv = [NODE, str(HELPERS / "browser.mjs"), "--url", url, "--stop-at", stop_at, "--user", user,
            "--screenshots", str(shots), "--timeout-ms", "45000"]
    if deny:
        argv.append("--deny")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"browser failed:\n{r.stderr[-3000:]}"
    line = [l for l in r.stdout.splitlines() if l.startswith("callback ")]
    assert line, r.stdout
    return line[0].split(" ", 1)[1]


class Storage:
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info):
        self.client = info


def sdk_session(url: str, user: str, shots: Path, calls, metadata_url=None, callback=None):
    """The Python SDK's OAuth client through the whole flow, then `calls`
    on the MCP session; (results, storage, what the browser saw)."""
    callback = callback or f"http://127.0.0.1:{free_port()}/callback"
    seen: dict = {}
    storage = Storage()

    async def redirect_handler(authorization_url: str) -> None:
        seen["authorize"] = authorization_url
        seen["redirect"] = await anyio.to_thread.run_sync(lambda: browser(authorization_url, callback, user, shots))

    async def callback_handler() -> AuthorizationCodeResult:
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(seen["redirect"]).query))
        seen["callback"] = q
        return AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))

    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            redirect_uris=[callback], token_endpoint_auth_method="none", client_name="e2e python sdk",
            grant_types=["authorization_code", "refresh_token"],
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=metadata_url,
    )

    async def go():
        with anyio.fail_after(120):
            async with httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(15, read=30)) as hc:
                try:
                    async with Client(streamable_http_client(url, http_client=hc)) as client:
                        return await calls(client)
                except Exception as e:  # refused by portcullis (a policy): the caller looks
                    refused = mcp_error_in(e)
                    if refused is None:
                        raise
                    return refused

    return anyio.run(go), storage, seen


def mcp_error_in(e: BaseException) -> MCPError | None:
    """The MCPError in `e`, also inside (nested) exception groups."""
    if isinstance(e, MCPError):
        return e
    for inner in getattr(e, "exceptions", ()):
        found = mcp_error_in(inner)
        if found is not None:
            return found
    return None


def mcp_status(url: str, token: str) -> tuple[int, dict]:
    r = httpx.post(url, json=INIT, headers={"authorization": f"Bearer {token}", "accept": ACCEPT}, timeout=10)
    try:
        body = r.json()
    except ValueError:
        body = {}
    return r.status_code, body


def test_python_sdk_registers_logs_in_at_the_idp_consents_and_calls_a_tool(gw):
    """Discovery from the 401, dynamic registration, login at the company IdP
    and consent in Chromium, code + PKCE, token; then tools/call works, and
    the token carries the IdP's claims and is bound to this route."""
    shots = ARTIFACTS / "oauth-python-sdk"

    async def calls(client):
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        return tools, text_of(await client.call_tool("add", {"a": 2, "b": 3}))

    (tools, added), storage, seen = sdk_session(gw.url("github"), "alice", shots, calls)
    assert "add" in tools and added == ["5"]
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(seen["authorize"]).query))
    assert seen["authorize"].startswith(f"{gw.issuer}/authorize?")
    assert q["code_challenge_method"] == "S256" and q["resource"] == gw.url("github")
    assert seen["callback"]["iss"] == gw.issuer
    assert storage.client.client_id.startswith("dyn-")
    claims = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})
    assert claims["iss"] == gw.issuer and claims["aud"] == gw.url("github")
    assert claims["sub"] == "alice" and claims["email"] == "alice@example.com"
    assert "engineering" in claims["groups"] and claims["client_id"] == storage.client.client_id
    assert (shots / "login.png").stat().st_size > 0 and (shots / "consent.png").stat().st_size > 0
    # Bound to one route: the same token on the other route is refused.
    status, body = mcp_status(gw.url("notion"), storage.tokens.access_token)
    assert status == 401 and "not for this resource" in json.dumps(body)
    assert mcp_status(gw.url("github"), storage.tokens.access_token)[0] == 200


def test_idp_groups_drive_the_policy(gw):
    """bob (sales at the IdP) gets a token too, but the github route's policy
    admits engineering only: his session is refused by rule."""
    async def calls(client):
        return "allowed"

    result, storage, _ = sdk_session(gw.url("github"), "bob", ARTIFACTS / "oauth-bob", calls)
    claims = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})
    assert claims["sub"] == "bob" and claims["groups"] == ["sales"]
    assert isinstance(result, MCPError) and result.error.code == REFUSED, result
    assert "no rule allowed it" in result.error.message


def test_denied_consent_returns_access_denied_with_iss(gw):
    """The user presses Deny: the client gets error=access_denied, its state,
    and iss (RFC 9207); nothing is issued."""
    r = httpx.post(f"{gw.issuer}/register", json={"redirect_uris": ["http://127.0.0.1:9/cb"], "client_name": "deny"}, timeout=10)
    cid = r.json()["client_id"]
    url = f"{gw.issuer}/authorize?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": cid, "redirect_uri": "http://127.0.0.1:9/cb", "state": "s1",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t3URxcmhGkjRoRmM", "code_challenge_method": "S256",
        "resource": gw.url("notion"),
    })
    back = browser(url, "http://127.0.0.1:9/cb", "alice", ARTIFACTS / "oauth-deny", deny=True)
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back).query))
    assert q == {"error": "access_denied", "error_description": "the user denied the request", "state": "s1", "iss": gw.issuer}


def test_revocation_from_the_cli_reaches_every_core_within_a_second(gw):
    """`portcullis grants revoke --user alice` in another process: the running
    proxy refuses alice's tokens on both workers within 1 s (many new
    connections, so both workers serve some)."""
    async def calls(client):
        return len((await client.list_tools()).tools)

    _, storage, _ = sdk_session(gw.url("notion"), "alice", ARTIFACTS / "oauth-revoke", calls)
    token = storage.tokens.access_token
    assert all(mcp_status(gw.url("notion"), token)[0] == 200 for _ in range(8))
    env = {**os.environ, "IDP_SECRET": IDP_SECRET}
    listed = subprocess.run([portcullis_bin(), "grants", "list", "-c", str(gw.config), "--user", "alice"],
                            capture_output=True, text=True, timeout=30, env=env)
    assert listed.returncode == 0 and "live" in listed.stdout, listed
    out = subprocess.run([portcullis_bin(), "grants", "revoke", "-c", str(gw.config), "--user", "alice"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0 and "revoked" in out.stdout, out
    revoked_at = time.monotonic()
    while True:
        statuses = [mcp_status(gw.url("notion"), token)[0] for _ in range(8)]
        if set(statuses) == {401}:
            break
        assert time.monotonic() - revoked_at < 1.0, statuses
        time.sleep(0.05)
    assert mcp_status(gw.url("notion"), token)[1]["error"]["message"] == "token revoked"


def test_refresh_rotates_and_reuse_after_grace_revokes_the_grant(gw):
    """A refresh gives a new refresh token; the old one again within the
    grace window gets an access token only; after it, the whole grant is
    revoked (its newest refresh token and its access tokens too)."""
    async def calls(client):
        return len((await client.list_tools()).tools)

    _, storage, _ = sdk_session(gw.url("notion"), "alice", ARTIFACTS / "oauth-refresh", calls)
    cid, rt0 = storage.client.client_id, storage.tokens.refresh_token
    assert rt0

    def refresh(rt):
        return httpx.post(f"{gw.issuer}/token", data={"grant_type": "refresh_token", "refresh_token": rt, "client_id": cid}, timeout=10)

    r1 = refresh(rt0)
    assert r1.status_code == 200 and r1.headers["cache-control"] == "no-store", r1.text
    rt1, at1 = r1.json()["refresh_token"], r1.json()["access_token"]
    assert rt1 != rt0
    g = refresh(rt0)  # a parallel session racing the same refresh
    assert g.status_code == 200 and "refresh_token" not in g.json()
    time.sleep(2.2)
    reused = refresh(rt0)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert refresh(rt1).json()["error"] == "invalid_grant"
    deadline = time.monotonic() + 1.0
    while mcp_status(gw.url("notion"), at1)[0] != 401:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_consent_post_without_the_csrf_token_is_refused(gw):
    """A consent form forged elsewhere (no CSRF cookie/token, or a foreign
    Origin) is refused with 403 and issues nothing."""
    r = httpx.post(f"{gw.issuer}/.portcullis/consent", data={"tx": "x", "decision": "allow"},
                   headers={"origin": "https://evil.example"}, timeout=10)
    assert r.status_code == 403 and "location" not in r.headers
    r = httpx.post(f"{gw.issuer}/.portcullis/consent", data={"tx": "x", "decision": "allow"}, timeout=10)
    assert r.status_code in (400, 403) and "location" not in r.headers


class MetadataDocument:
    """A client's metadata document served over HTTPS on loopback (a test CA
    that portcullis trusts through `loopback_ca_file`)."""

    def __init__(self, ca: "trustme.CA", path: str, doc_for):
        port = free_port()
        self.url = f"https://localhost:{port}{path}"
        self.fetches = 0
        body = json.dumps(doc_for(self.url)).encode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                if self.path != path:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", "max-age=300")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_python_sdk_with_a_client_metadata_document(gw):
    """The SDK's metadata-document path: its client id is the HTTPS URL of
    its document, which portcullis fetches (pinned, no redirects, size cap),
    checks and keeps as a cached client; login, consent, tools/call."""
    callback = f"http://127.0.0.1:{free_port()}/callback"
    doc = MetadataDocument(gw.ca, "/oauth/client.json", lambda url: {
        "client_id": url, "client_name": "e2e metadata-document client", "redirect_uris": [callback],
        "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
    })
    try:
        async def calls(client):
            return text_of(await client.call_tool("add", {"a": 20, "b": 22}))

        added, storage, seen = sdk_session(gw.url("notion"), "alice", ARTIFACTS / "oauth-cimd", calls,
                                           metadata_url=doc.url, callback=callback)
        assert added == ["42"]
        assert storage.client.client_id == doc.url and doc.fetches >= 1
        claims = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})
        assert claims["client_id"] == doc.url and claims["aud"] == gw.url("notion")
    finally:
        doc.close()


def test_metadata_documents_that_must_be_refused(gw):
    """A document whose client_id is not its URL, one with a secret, and a URL
    with a fragment: the authorization request gets an error page (never a
    redirect) naming why, and nothing is registered."""
    def authorize(client_id: str) -> httpx.Response:
        return httpx.get(f"{gw.issuer}/authorize", params={
            "response_type": "code", "client_id": client_id, "redirect_uri": "http://127.0.0.1:9/cb",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256",
            "state": "s", "resource": gw.url("notion"),
        }, timeout=20)

    cases = [
        (lambda url: {"client_id": url + "x", "client_name": "x", "redirect_uris": ["http://127.0.0.1:9/cb"]}, "client_id"),
        (lambda url: {"client_id": url, "client_name": "x", "redirect_uris": ["http://127.0.0.1:9/cb"],
                      "client_secret": "s"}, "secret"),
        (lambda url: {"client_id": url, "client_name": "x", "redirect_uris": ["http://127.0.0.1:9/cb"],
                      "token_endpoint_auth_method": "private_key_jwt"}, "public clients"),
    ]
    for i, (doc_for, why) in enumerate(cases):
        doc = MetadataDocument(gw.ca, f"/bad{i}.json", doc_for)
        try:
            r = authorize(doc.url)
            assert r.status_code == 400 and "location" not in r.headers, r.text
            assert why in r.text, r.text
        finally:
            doc.close()
    r = authorize("https://localhost:1/client.json#frag")
    assert r.status_code == 400 and "location" not in r.headers


def test_a_user_refused_by_the_idp_loses_the_grant_at_the_next_refresh(module_procs, tmp_path):
    """With `offline_access`, the IdP's refresh token is kept (sealed) with
    the grant and each client refresh asks the IdP again (`recheck: 1s`):
    while the IdP is down the refresh goes on; once the IdP no longer knows
    the login (here: restarted, its in-memory grants gone, as for a user
    disabled there), the next refresh revokes the grant."""
    upstream = start_mcp2(module_procs, "mcp2-recheck", json_mode=True)
    port, idp_port = free_port(), free_port()
    idp_argv = [NODE, str(HELPERS / "oidc_idp.mjs"), "--port", str(idp_port), "--client-id", "portcullis",
                "--client-secret", IDP_SECRET, "--redirect-uri", f"http://127.0.0.1:{port}/.portcullis/callback"]
    idp = module_procs.start("oidc-idp-recheck", idp_argv)
    idp.wait_ports([idp_port])
    cfg = f"""
listen: [{{address: 127.0.0.1:{port}}}]
authorization_server:
  issuer: http://127.0.0.1:{port}
  login:
    oidc:
      issuer: http://127.0.0.1:{idp_port}
      client_id: portcullis
      client_secret: {IDP_SECRET}
      scopes: [openid, email, profile, groups, offline_access]
      recheck: 1s
  clients: {{dynamic_registration: true}}
store: {{path: {tmp_path}/state.db}}
routes:
  - {{name: mcp, from: http://127.0.0.1:{port}/mcp, to: {upstream.url}, mcp: {{}}, auth: {{issuers: [portcullis]}}}}
"""
    Portcullis(module_procs, tmp_path / "config").start(cfg, [port], name="portcullis-recheck")
    url = f"http://127.0.0.1:{port}/mcp"

    async def calls(client):
        return len((await client.list_tools()).tools)

    _, storage, _ = sdk_session(url, "alice", ARTIFACTS / "oauth-recheck", calls)
    cid, rt = storage.client.client_id, storage.tokens.refresh_token

    def refresh(rt):
        return httpx.post(f"http://127.0.0.1:{port}/token", timeout=20,
                          data={"grant_type": "refresh_token", "refresh_token": rt, "client_id": cid})

    time.sleep(1.1)
    r = refresh(rt)
    assert r.status_code == 200, r.text  # the IdP still knows alice
    rt = r.json()["refresh_token"]
    idp.stop()
    time.sleep(1.1)
    r = refresh(rt)
    assert r.status_code == 200, r.text  # the IdP is down: nothing is concluded
    rt, at = r.json()["refresh_token"], r.json()["access_token"]
    idp = module_procs.start("oidc-idp-recheck-again", idp_argv)
    idp.wait_ports([idp_port])
    r = refresh(rt)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert "identity provider no longer accepts" in r.json()["error_description"]
    assert mcp_status(url, at)[0] == 401
