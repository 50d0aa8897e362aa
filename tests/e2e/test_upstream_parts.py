"""The upstream service of the token-vault tests (issue 12), without
portcullis: its authorization server (helpers/upstream_as.mjs, oidc-provider
standing in for GitHub) and an MCP server that accepts only that server's
tokens (helpers/upstream_mcp.py, mcp 2.x with the SDK's own bearer auth),
driven the way portcullis will drive them: chromium through the login and
consent pages (helpers/browser.mjs) to an intercepted loopback callback, the
code redeemed by a confidential client (client_secret_basic + PKCE
verifier), the real mcp 2.x Client calling `whoami` with the bearer token,
refresh-token rotation, its reuse, a user's grants deleted at the service,
RFC 7009 revocation, RFC 9728 -> RFC 8414 discovery, injected token
endpoint faults. What portcullis's own tests of issue 12 stand on.
"""

from __future__ import annotations

import os
import re
import time

import httpx
import jwt
import pytest

from conftest import free_port
from upstream import (
    CLIENT_ID,
    DEFAULT_RESOURCE,
    SCOPE,
    authorize_url,
    browser_callback,
    connect,
    sha16,
    start_upstream_as,
    start_upstream_mcp,
    whoami,
)

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM}")

ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}


def callback_uri() -> str:
    return f"http://127.0.0.1:{free_port()}/upstream/callback"


def challenge(resp: httpx.Response) -> dict[str, str]:
    h = resp.headers.get("www-authenticate", "")
    assert h.startswith("Bearer "), h
    return dict(re.findall(r'(\w+)="([^"]*)"', h))


def post_rpc(url: str, body: dict, token: str | None = None, session: str | None = None) -> httpx.Response:
    headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if session:
        headers["Mcp-Session-Id"] = session
    return httpx.post(url, json=body, headers=headers, timeout=10)


def assert_invalid_grant(as_, r: httpx.Response, why: str | None = None) -> None:
    """400 invalid_grant; `why` in the AS's reason (its log's error_detail:
    the answer's error_description is always "grant request is invalid")."""
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "invalid_grant", body
    if why:
        detail = as_.log()[-1]["error_detail"]
        assert why in (detail or ""), (why, detail)


@pytest.fixture
def upstream(procs):
    """The AS (30 s access tokens, refresh rotation) and the MCP server."""
    as_ = start_upstream_as(procs, [callback_uri()], access_ttl=30, rotate=True)
    return as_, start_upstream_mcp(procs, as_)


def test_code_flow_whoami_and_rotation(upstream, tmp_path):
    """alice connects in chromium; the code gives a 30 s RS256 `at+jwt` access
    token for https://upstream.example/api and a refresh token; the real MCP
    client's `whoami` through the upstream MCP server answers alice; without
    a token, with garbage or a tampered one: 401 invalid_token with the
    RFC 9728 metadata URL. A refresh rotates: a new refresh token and a new
    access token (both work, the server has seen both jtis); the old refresh
    token is then refused with invalid_grant, and that reuse revokes the
    whole grant (the newest refresh token dies with it)."""
    as_, mcp = upstream
    shots = tmp_path / "shots"
    tokens = connect(as_, "alice", shots=shots)
    assert (shots / "login.png").stat().st_size > 0
    assert tokens["token_type"].lower() == "bearer"
    assert tokens["expires_in"] == 30
    assert tokens["scope"] == SCOPE
    assert tokens.get("refresh_token"), tokens
    assert "id_token" not in tokens  # plain OAuth, no openid scope

    at = tokens["access_token"]
    header = jwt.get_unverified_header(at)
    assert header["alg"] == "RS256" and header["typ"] == "at+jwt" and header["kid"] == "upstream-rs256"
    claims = as_.verify(at)
    assert claims["iss"] == as_.issuer
    assert claims["aud"] == DEFAULT_RESOURCE
    assert claims["sub"] == "alice"
    assert claims["client_id"] == CLIENT_ID
    assert claims["scope"] == SCOPE
    assert claims["exp"] - claims["iat"] == 30
    assert claims["jti"]

    me = whoami(mcp.url, at)
    assert me["sub"] == "alice" and me["jti"] == claims["jti"] and me["client_id"] == CLIENT_ID
    assert me["iss"] == as_.issuer and me["aud"] == DEFAULT_RESOURCE
    # The auto mode (2026-07-28 era with a 2.x server) as well.
    assert whoami(mcp.url, at, mode="auto")["sub"] == "alice"

    # No token, garbage, a tampered token (payload says bob): 401 invalid_token.
    meta_url = f"{mcp.base}/.well-known/oauth-protected-resource/mcp"
    h, p, s = at.split(".")
    tampered = ".".join([h, jwt.utils.base64url_encode(jwt.utils.base64url_decode(p).replace(b'"alice"', b'"bob"')).decode(), s])
    for bad in (None, "garbage", tampered):
        r = post_rpc(mcp.url, INIT, bad)
        assert r.status_code == 401, (bad, r.text)
        ch = challenge(r)
        assert ch["error"] == "invalid_token" and ch["resource_metadata"] == meta_url, ch
    reasons = [x["reason"] for x in mcp.seen()["rejected"]]
    assert reasons[-1] == "signature" and reasons[-2].startswith("invalid: DecodeError"), reasons

    # Refresh with rotation.
    rt0 = tokens["refresh_token"]
    r1 = as_.refresh(rt0)
    assert r1.status_code == 200, r1.text
    t1 = r1.json()
    assert t1["refresh_token"] != rt0
    assert t1["access_token"] != at
    c1 = as_.verify(t1["access_token"])
    assert c1["sub"] == "alice" and c1["jti"] != claims["jti"] and c1["scope"] == SCOPE
    assert whoami(mcp.url, t1["access_token"])["jti"] == c1["jti"]
    # The chain goes on with the newest refresh token.
    r2 = as_.refresh(t1["refresh_token"])
    assert r2.status_code == 200, r2.text
    t2 = r2.json()
    assert t2["refresh_token"] not in (rt0, t1["refresh_token"])

    seen = mcp.seen()
    assert seen["subs"] == ["alice"]
    assert {claims["jti"], c1["jti"]} <= set(seen["jtis"])
    assert all(t["min_remaining_s"] > 0 for t in seen["tokens"])

    # The first refresh token is spent: invalid_grant, and the reuse revokes
    # the grant, so the newest one is dead too.
    assert_invalid_grant(as_, as_.refresh(rt0), "already used")
    assert_invalid_grant(as_, as_.refresh(t2["refresh_token"]), "not found")
    # Access tokens are self-contained JWTs: the newest still works until it expires.
    assert whoami(mcp.url, t2["access_token"])["sub"] == "alice"

    # The AS's log of /token: code exchange, 2 rotations, 2 refusals; refresh
    # tokens only as hashes.
    log = as_.log()
    assert [(e["grant_type"], e["status"], e["rotated"]) for e in log] == [
        ("authorization_code", 200, False),
        ("refresh_token", 200, True),
        ("refresh_token", 200, True),
        ("refresh_token", 400, False),
        ("refresh_token", 400, False),
    ], log
    assert all(e["sub"] == "alice" for e in log[:3])
    assert log[1]["refresh_token_in"] == sha16(rt0) and log[1]["refresh_token_out"] == sha16(t1["refresh_token"])
    assert log[3]["error"] == "invalid_grant"
    assert rt0 not in as_.proc.log.read_text() and at not in as_.proc.log.read_text()


def test_two_users_revoke_all_and_session_binding(upstream):
    """alice and bob each get their own token; each is whoami'd as
    themselves. An MCP session opened with alice's token refuses bob's
    (404, the SDK binds a session to the token's client, iss and sub).
    /test/revoke-all?sub=alice: alice's refresh token answers invalid_grant,
    bob's still refreshes; /test/deny?sub=alice makes the MCP server refuse
    alice's still unexpired access token (401), bob's is still served."""
    as_, mcp = upstream
    alice = connect(as_, "alice")
    bob = connect(as_, "bob")
    assert whoami(mcp.url, alice["access_token"])["sub"] == "alice"
    assert whoami(mcp.url, bob["access_token"])["sub"] == "bob"
    assert mcp.seen()["subs"] == ["alice", "bob"]

    r = post_rpc(mcp.url, INIT, alice["access_token"])
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    assert post_rpc(mcp.url, ping, alice["access_token"], sid).status_code == 200
    assert post_rpc(mcp.url, ping, bob["access_token"], sid).status_code == 404

    assert as_.revoke_all("alice") == {"sub": "alice", "grants": 1}
    assert_invalid_grant(as_, as_.refresh(alice["refresh_token"]), "not found")
    rb = as_.refresh(bob["refresh_token"])
    assert rb.status_code == 200, rb.text
    assert as_.revoke_all("alice")["grants"] == 0  # nothing left

    mcp.deny("alice")
    r = post_rpc(mcp.url, INIT, alice["access_token"])
    assert r.status_code == 401 and challenge(r)["error"] == "invalid_token"
    assert mcp.seen()["rejected"][-1]["reason"] == "denied"
    assert whoami(mcp.url, rb.json()["access_token"])["sub"] == "bob"
    mcp.deny("alice", on=False)
    assert post_rpc(mcp.url, INIT, alice["access_token"]).status_code == 200


def test_revocation_endpoint(upstream):
    """RFC 7009 at the metadata's revocation_endpoint: revoking the refresh
    token (client_secret_basic) answers 200 and the refresh token then gets
    invalid_grant; an unknown token also 200; a JWT access token cannot be
    revoked there (400 unsupported_token_type); a wrong client secret 401
    invalid_client."""
    as_, _ = upstream
    tokens = connect(as_, "bob")
    assert as_.meta["revocation_endpoint"] == f"{as_.issuer}/token/revocation"
    bad = as_.revoke(tokens["refresh_token"], "refresh_token", auth=(CLIENT_ID, "wrong"))
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client", bad.text
    jwt_at = as_.revoke(tokens["access_token"], "access_token")
    assert jwt_at.status_code == 400 and jwt_at.json()["error"] == "unsupported_token_type", jwt_at.text
    assert as_.revoke("no-such-token").status_code == 200

    r = as_.revoke(tokens["refresh_token"], "refresh_token")
    assert r.status_code == 200 and r.text == "", r.text
    assert_invalid_grant(as_, as_.refresh(tokens["refresh_token"]), "not found")


def test_discovery_mode(procs):
    """RFC 9728 then RFC 8414, as a client in discovery mode goes: the MCP
    server's 401 names its protected resource metadata; that names the
    resource (the server's own URL) and the AS; the AS's
    /.well-known/oauth-authorization-server has the same issuer, S256, the
    endpoints and iss-in-response. An authorization with resource = the
    server's URL gives a token whose aud is that URL, which the server
    accepts; a resource the AS does not serve is invalid_target."""
    mcp_port = free_port()
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    as_ = start_upstream_as(procs, [callback_uri()], resources=[mcp_url])
    mcp = start_upstream_mcp(procs, as_, audiences=[DEFAULT_RESOURCE, mcp_url], port=mcp_port)

    r = post_rpc(mcp.url, INIT)
    assert r.status_code == 401
    prm = httpx.get(challenge(r)["resource_metadata"], timeout=10).json()
    assert prm["resource"] == mcp_url
    assert prm["authorization_servers"] == [as_.issuer]
    assert prm["bearer_methods_supported"] == ["header"]
    meta = httpx.get(f"{prm['authorization_servers'][0]}/.well-known/oauth-authorization-server", timeout=10).json()
    assert meta["issuer"] == as_.issuer
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert {"authorization_code", "refresh_token"} <= set(meta["grant_types_supported"])
    assert "client_secret_basic" in meta["token_endpoint_auth_methods_supported"]
    for k in ("authorization_endpoint", "token_endpoint", "revocation_endpoint", "jwks_uri"):
        assert meta[k].startswith(as_.issuer + "/"), (k, meta[k])

    tokens = connect(as_, "alice", resource=mcp_url)
    claims = as_.verify(tokens["access_token"], audience=mcp_url)
    assert claims["aud"] == mcp_url and claims["sub"] == "alice"
    assert whoami(mcp.url, tokens["access_token"])["aud"] == mcp_url
    # The refreshed token stays for the granted resource.
    r = as_.refresh(tokens["refresh_token"])
    assert r.status_code == 200, r.text
    assert as_.verify(r.json()["access_token"], audience=mcp_url)["aud"] == mcp_url

    # Not a resource of this AS: refused back to the redirect URI.
    url, flow = authorize_url(as_, resource="https://elsewhere.example/api")
    r = httpx.get(url, timeout=10)
    assert r.status_code in (302, 303), r.text
    err = dict(httpx.URL(r.headers["location"]).params)
    assert r.headers["location"].startswith(as_.redirect_uri)
    assert err["error"] == "invalid_target" and err["state"] == flow["state"], err


def test_expiry_no_rotation_and_token_faults(procs):
    """(MCP server in JSON-response mode.) Access tokens of 2 s, no rotation: after 3 s the server refuses the
    token (401, reason "expired"), a refresh answers the same refresh token
    and a fresh access token that works. An injected fault (503 after 500
    ms, twice) is not processed: the same refresh token works afterwards.
    Authorization requests: PKCE required, a wrong verifier invalid_grant."""
    as_ = start_upstream_as(procs, [callback_uri()], access_ttl=2, rotate=False)
    mcp = start_upstream_mcp(procs, as_, json_mode=True)

    # A code with a wrong verifier is refused (and oidc-provider keeps the code).
    url, flow = authorize_url(as_)
    params = browser_callback(url, flow["redirect_uri"], "alice")
    assert_invalid_grant(as_, as_.exchange(params["code"], "x" * 50), "code_verifier does not match")
    r = as_.exchange(params["code"], flow["verifier"])
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert tokens["expires_in"] == 2
    assert whoami(mcp.url, tokens["access_token"])["sub"] == "alice"
    time.sleep(3.2)
    r = post_rpc(mcp.url, INIT, tokens["access_token"])
    assert r.status_code == 401 and challenge(r)["error"] == "invalid_token"
    assert mcp.seen()["rejected"][-1]["reason"] == "expired"

    as_.token_faults(2, status=503, delay_ms=500)
    for _ in range(2):
        t0 = time.monotonic()
        f = as_.refresh(tokens["refresh_token"])
        assert f.status_code == 503 and f.json()["error"] == "temporarily_unavailable", f.text
        assert time.monotonic() - t0 >= 0.45
        assert as_.log()[-1]["t"] - as_.log()[-1]["t_start"] >= 450
    r = as_.refresh(tokens["refresh_token"])
    assert r.status_code == 200, r.text
    fresh = r.json()
    assert fresh["refresh_token"] == tokens["refresh_token"]  # no rotation
    assert whoami(mcp.url, fresh["access_token"])["sub"] == "alice"
    log = as_.log()
    assert [(e["grant_type"], e["status"], e["fault"]) for e in log][-3:] == [
        (None, 503, True), (None, 503, True), ("refresh_token", 200, False)
    ], log
    assert log[-1]["rotated"] is False

    # PKCE is required: an authorization request without code_challenge is refused.
    url, flow = authorize_url(as_)
    q = dict(httpx.URL(url).params)
    del q["code_challenge"], q["code_challenge_method"]
    r = httpx.get(as_.meta["authorization_endpoint"], params=q, timeout=10)
    err = dict(httpx.URL(r.headers["location"]).params)
    assert err["error"] == "invalid_request" and "PKCE" in err.get("error_description", ""), err


def test_client_secret_post_or_basic(procs):
    """Client authentication by the secret in the form (client_secret_post,
    GitHub's documented way) or by HTTP Basic: oidc-provider accepts either
    secret method for a client registered with one of them (here
    client_secret_post); a wrong secret either way is 401 invalid_client."""
    as_ = start_upstream_as(procs, [callback_uri()], auth_method="client_secret_post")
    url, flow = authorize_url(as_)
    params = browser_callback(url, flow["redirect_uri"], "bob")
    form = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "redirect_uri": flow["redirect_uri"],
        "code_verifier": flow["verifier"],
    }
    wrong = httpx.post(as_.meta["token_endpoint"], data={**form, "client_id": CLIENT_ID, "client_secret": "wrong"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client", wrong.text
    r = httpx.post(as_.meta["token_endpoint"], data={**form, "client_id": CLIENT_ID, "client_secret": as_.client_secret}, timeout=10)
    assert r.status_code == 200, r.text
    assert as_.verify(r.json()["access_token"])["sub"] == "bob"
    basic = as_.refresh(r.json()["refresh_token"])  # HTTP Basic
    assert basic.status_code == 200, basic.text
    wrong = as_.token({"grant_type": "refresh_token", "refresh_token": basic.json()["refresh_token"]}, auth=(CLIENT_ID, "wrong"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client", wrong.text
