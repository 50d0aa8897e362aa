"""The company IdP (helpers/oidc_idp.mjs, oidc-provider) and the headless
browser (helpers/browser.mjs, playwright-core + chromium) together, without
portcullis: what the authorization server's e2e tests stand on.

An authorization URL built by hand (code, PKCE S256, state, nonce) is walked
through the IdP's login and consent pages by chromium up to the redirect URI,
which nobody listens on (the browser intercepts it); the code is then redeemed
at the IdP's token endpoint the way a confidential client does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import urllib.parse
from dataclasses import dataclass

import httpx
import jwt
import pytest

from conftest import HELPERS, NODE, Procs, free_port

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM}")

CLIENT_ID = "portcullis"
CLIENT_SECRET = "e2e-client-secret"


@dataclass
class Idp:
    issuer: str
    redirect_uri: str
    auth_method: str


def start_idp(procs: Procs, auth_method: str = "client_secret_basic") -> Idp:
    port, cb_port = free_port(), free_port()
    redirect_uri = f"http://127.0.0.1:{cb_port}/cb"
    p = procs.start(
        "oidc-idp",
        [
            NODE,
            str(HELPERS / "oidc_idp.mjs"),
            "--port", str(port),
            "--client-id", CLIENT_ID,
            "--client-secret", CLIENT_SECRET,
            "--redirect-uri", redirect_uri,
            "--auth-method", auth_method,
        ],
    )
    p.wait_ports([port])
    issuer = f"http://127.0.0.1:{port}"
    p.wait_log(f"listening {issuer}")
    return Idp(issuer, redirect_uri, auth_method)


def authorize_url(idp: Idp, scope: str, extra: dict | None = None) -> tuple[str, dict]:
    meta = httpx.get(f"{idp.issuer}/.well-known/openid-configuration", timeout=10).json()
    assert meta["issuer"] == idp.issuer
    verifier = secrets.token_urlsafe(48)
    flow = {
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        "verifier": verifier,
        "meta": meta,
    }
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    q = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": idp.redirect_uri,
        "scope": scope,
        "state": flow["state"],
        "nonce": flow["nonce"],
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **(extra or {}),
    }
    return meta["authorization_endpoint"] + "?" + urllib.parse.urlencode(q), flow


def run_browser(url: str, stop_at: str, user: str, shots=None, timeout_ms: int = 60000) -> subprocess.CompletedProcess:
    argv = [NODE, str(HELPERS / "browser.mjs"), "--url", url, "--stop-at", stop_at, "--user", user,
            "--timeout-ms", str(timeout_ms)]
    if shots is not None:
        argv += ["--screenshots", str(shots)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_ms / 1000 + 30)


def callback_params(r: subprocess.CompletedProcess, stop_at: str) -> dict:
    assert r.returncode == 0, f"browser failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"callback {stop_at}"), r.stdout
    cb = urllib.parse.urlsplit(lines[0].split(" ", 1)[1])
    return dict(urllib.parse.parse_qsl(cb.query))


def token_request(idp: Idp, flow: dict, form: dict) -> dict:
    if idp.auth_method == "client_secret_basic":
        auth, body = (CLIENT_ID, CLIENT_SECRET), form
    else:
        auth, body = None, {**form, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    r = httpx.post(flow["meta"]["token_endpoint"], data=body, auth=auth, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def verified_id_token(idp: Idp, flow: dict, id_token: str) -> dict:
    assert jwt.get_unverified_header(id_token)["alg"] == "RS256"
    jwks = jwt.PyJWKSet.from_dict(httpx.get(flow["meta"]["jwks_uri"], timeout=10).json())
    kid = jwt.get_unverified_header(id_token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return jwt.decode(id_token, key, algorithms=["RS256"], audience=CLIENT_ID, issuer=idp.issuer)


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_idp_browser_code_flow(procs, tmp_path, auth_method):
    idp = start_idp(procs, auth_method)
    offline = auth_method == "client_secret_post"  # the refresh token, checked once
    scope = "openid email groups" + (" offline_access" if offline else "")
    url, flow = authorize_url(idp, scope, {"prompt": "consent"} if offline else None)
    shots = tmp_path / "shots"

    params = callback_params(run_browser(url, idp.redirect_uri, "alice", shots), idp.redirect_uri)
    assert params.get("code"), params
    assert params["state"] == flow["state"]
    assert params["iss"] == idp.issuer  # RFC 9207
    assert (shots / "login.png").stat().st_size > 0

    tokens = token_request(
        idp,
        flow,
        {
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": idp.redirect_uri,
            "code_verifier": flow["verifier"],
        },
    )
    claims = verified_id_token(idp, flow, tokens["id_token"])
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert claims["groups"] == ["engineering", "admins"]
    assert claims["nonce"] == flow["nonce"]
    # The same, undecoded: the payload itself carries the claims.
    payload = json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[1] + "=="))
    assert {"sub", "email", "groups", "nonce"} <= payload.keys()

    if offline:
        assert tokens.get("refresh_token"), tokens
        again = token_request(idp, flow, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
        assert verified_id_token(idp, flow, again["id_token"])["groups"] == ["engineering", "admins"]
    else:
        assert "refresh_token" not in tokens


def test_idp_browser_pkce_required_and_code_single_use(procs):
    idp = start_idp(procs)
    url, flow = authorize_url(idp, "openid email groups")
    params = callback_params(run_browser(url, idp.redirect_uri, "bob"), idp.redirect_uri)
    form = {"grant_type": "authorization_code", "code": params["code"], "redirect_uri": idp.redirect_uri}
    endpoint = flow["meta"]["token_endpoint"]
    auth = (CLIENT_ID, CLIENT_SECRET)

    wrong = httpx.post(endpoint, data={**form, "code_verifier": secrets.token_urlsafe(48)}, auth=auth, timeout=10)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant", wrong.text
    missing = httpx.post(endpoint, data=form, auth=auth, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_grant", missing.text
    # (oidc-provider checks the verifier before it consumes the code)
    ok = httpx.post(endpoint, data={**form, "code_verifier": flow["verifier"]}, auth=auth, timeout=10)
    assert ok.status_code == 200, ok.text
    assert verified_id_token(idp, flow, ok.json()["id_token"])["groups"] == ["sales"]
    replay = httpx.post(endpoint, data={**form, "code_verifier": flow["verifier"]}, auth=auth, timeout=10)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant", replay.text

    # An authorization request without a code_challenge is refused (to the redirect URI).
    url, flow = authorize_url(idp, "openid email groups")
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    del q["code_challenge"], q["code_challenge_method"]
    r = httpx.get(flow["meta"]["authorization_endpoint"], params=q, timeout=10)
    assert r.status_code in (302, 303), r.text
    err = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["location"]).query))
    assert r.headers["location"].startswith(idp.redirect_uri)
    assert err["error"] == "invalid_request" and err["state"] == flow["state"], err


def test_idp_browser_unknown_user_refused(procs, tmp_path):
    idp = start_idp(procs)
    url, _ = authorize_url(idp, "openid email groups")
    r = run_browser(url, idp.redirect_uri, "mallory", tmp_path / "shots", timeout_ms=30000)
    assert r.returncode == 1, r
    assert r.stdout == ""
    assert "Unknown user" in r.stderr, r.stderr
    assert (tmp_path / "shots" / "error.png").exists()
