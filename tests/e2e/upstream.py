"""The upstream service of the token-vault tests ("GitHub"), as real parts:
its OAuth authorization server (helpers/upstream_as.mjs, oidc-provider) and
an MCP server that needs the user's token there (helpers/upstream_mcp.py,
mcp 2.x). Starting them, walking a user through the authorization in
chromium (helpers/browser.mjs), and the token endpoint calls a confidential
client makes. Used by test_upstream_parts.py (the parts alone) and meant for
the portcullis tests of issue 12."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import httpx2
import jwt
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import HELPERS, NODE, PY2, Proc, Procs, free_port
from mcpclient import text_of

DEFAULT_RESOURCE = "https://upstream.example/api"
CLIENT_ID = "portcullis-gh"
CLIENT_SECRET = "e2e-upstream-secret"
SCOPE = "read:user repo"


def sha16(value: str) -> str:
    """How upstream_as.mjs names a refresh token in /test/log."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass
class UpstreamAS:
    issuer: str
    port: int
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    access_ttl: int
    proc: Proc
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def token(self, form: dict, auth: tuple[str, str] | None = None) -> httpx.Response:
        """POST to the token endpoint with client_secret_basic (the client's by default)."""
        return httpx.post(
            self.meta["token_endpoint"], data=form, auth=auth or (self.client_id, self.client_secret), timeout=10
        )

    def exchange(self, code: str, verifier: str, redirect_uri: str | None = None) -> httpx.Response:
        return self.token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri or self.redirect_uri,
                "code_verifier": verifier,
            }
        )

    def refresh(self, refresh_token: str) -> httpx.Response:
        return self.token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def revoke(self, token: str, hint: str | None = None, auth: tuple[str, str] | None = None) -> httpx.Response:
        """RFC 7009 revocation."""
        form = {"token": token, **({"token_type_hint": hint} if hint else {})}
        return httpx.post(
            self.meta["revocation_endpoint"], data=form, auth=auth or (self.client_id, self.client_secret), timeout=10
        )

    def revoke_all(self, sub: str) -> dict:
        """Every grant of `sub` deleted at the service: their refresh tokens answer invalid_grant."""
        r = httpx.post(f"{self.issuer}/test/revoke-all", params={"sub": sub}, timeout=10)
        r.raise_for_status()
        return r.json()

    def token_faults(self, count: int, status: int = 503, delay_ms: int = 0) -> None:
        """The next `count` token requests answer `status` after `delay_ms`, unprocessed."""
        r = httpx.post(
            f"{self.issuer}/test/token-faults",
            params={"count": count, "status": status, "delay_ms": delay_ms},
            timeout=10,
        )
        r.raise_for_status()

    def log(self) -> list[dict]:
        """Every token endpoint request so far (see upstream_as.mjs)."""
        return httpx.get(f"{self.issuer}/test/log", timeout=10).json()

    def verify(self, access_token: str, audience: str = DEFAULT_RESOURCE) -> dict:
        """The access token's claims, checked with pyjwt against the AS's JWKS."""
        header = jwt.get_unverified_header(access_token)
        jwks = jwt.PyJWKSet.from_dict(httpx.get(self.meta["jwks_uri"], timeout=10).json())
        key = next(k for k in jwks.keys if k.key_id == header["kid"])
        return jwt.decode(access_token, key, algorithms=["RS256"], audience=audience, issuer=self.issuer)


def start_upstream_as(
    procs: Procs,
    redirect_uris: list[str],
    access_ttl: int = 30,
    rotate: bool = True,
    resources: list[str] | None = None,
    auth_method: str = "client_secret_basic",
    extra: list[str] | None = None,
    name: str = "upstream-as",
) -> UpstreamAS:
    port = free_port()
    argv = [
        NODE, str(HELPERS / "upstream_as.mjs"),
        "--port", str(port),
        "--client-id", CLIENT_ID,
        "--client-secret", CLIENT_SECRET,
        "--access-ttl", str(access_ttl),
        "--auth-method", auth_method,
    ]
    for uri in redirect_uris:
        argv += ["--redirect-uri", uri]
    for res in resources or []:
        argv += ["--resource", res]
    if rotate:
        argv.append("--rotate-refresh")
    argv += extra or []
    p = procs.start(name, argv)
    p.wait_ports([port])
    issuer = f"http://127.0.0.1:{port}"
    p.wait_log(f"listening {issuer}")
    meta = httpx.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=10).json()
    assert meta["issuer"] == issuer
    return UpstreamAS(issuer, port, CLIENT_ID, CLIENT_SECRET, list(redirect_uris), access_ttl, p, meta)


@dataclass
class UpstreamMCP:
    port: int
    path: str
    proc: Proc

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}{self.path}"

    def seen(self) -> dict:
        return httpx.get(f"{self.base}/seen", timeout=10).json()

    def reset_seen(self) -> None:
        httpx.post(f"{self.base}/seen/reset", timeout=10).raise_for_status()

    def deny(self, sub: str, on: bool = True) -> None:
        httpx.post(f"{self.base}/test/deny", params={"sub": sub, "on": "1" if on else "0"}, timeout=10).raise_for_status()


def start_upstream_mcp(
    procs: Procs,
    upstream_as: UpstreamAS,
    audiences: list[str] | None = None,
    port: int | None = None,
    json_mode: bool = False,
    extra: list[str] | None = None,
    name: str = "upstream-mcp",
) -> UpstreamMCP:
    port = port or free_port()
    argv = [
        PY2, str(HELPERS / "upstream_mcp.py"),
        "--port", str(port),
        "--issuer", upstream_as.issuer,
        "--jwks-url", upstream_as.meta["jwks_uri"],
    ]
    for aud in audiences or [DEFAULT_RESOURCE]:
        argv += ["--audience", aud]
    if json_mode:
        argv.append("--json")
    argv += extra or []
    p = procs.start(name, argv)
    p.wait_ports([port])
    return UpstreamMCP(port, "/mcp", p)


# ---------------------------------------------------------------- the user's authorization


def authorize_url(
    upstream_as: UpstreamAS, scope: str = SCOPE, resource: str | None = None, redirect_uri: str | None = None
) -> tuple[str, dict]:
    """A hand-built authorization request (code, PKCE S256, state[, resource])."""
    verifier = secrets.token_urlsafe(48)
    flow = {"state": secrets.token_urlsafe(16), "verifier": verifier, "redirect_uri": redirect_uri or upstream_as.redirect_uri}
    q = {
        "response_type": "code",
        "client_id": upstream_as.client_id,
        "redirect_uri": flow["redirect_uri"],
        "scope": scope,
        "state": flow["state"],
        "code_challenge": base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    if resource:
        q["resource"] = resource
    return upstream_as.meta["authorization_endpoint"] + "?" + urllib.parse.urlencode(q), flow


def run_browser(url: str, stop_at: str, user: str, shots=None, timeout_ms: int = 60000) -> subprocess.CompletedProcess:
    argv = [NODE, str(HELPERS / "browser.mjs"), "--url", url, "--stop-at", stop_at, "--user", user,
            "--timeout-ms", str(timeout_ms)]
    if shots is not None:
        argv += ["--screenshots", str(shots)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_ms / 1000 + 30)


def browser_callback(url: str, stop_at: str, user: str, shots=None) -> dict:
    """chromium walks `url` through the AS's login and consent as `user`; the
    query parameters of the intercepted redirect to `stop_at`."""
    r = run_browser(url, stop_at, user, shots)
    assert r.returncode == 0, f"browser failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"callback {stop_at}"), r.stdout
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(lines[0].split(" ", 1)[1]).query))


def connect(upstream_as: UpstreamAS, user: str, scope: str = SCOPE, resource: str | None = None, shots=None) -> dict:
    """The whole authorization as the client would do it, without portcullis:
    browser login + consent, `state` and `iss` checked, the code redeemed
    (client_secret_basic + code_verifier). The token response."""
    url, flow = authorize_url(upstream_as, scope, resource)
    params = browser_callback(url, flow["redirect_uri"], user, shots)
    assert params.get("code"), params
    assert params["state"] == flow["state"]
    assert params["iss"] == upstream_as.issuer  # RFC 9207
    r = upstream_as.exchange(params["code"], flow["verifier"], flow["redirect_uri"])
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- the MCP side


def bearer_client(token: str | None) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"} if token else None,
        timeout=httpx2.Timeout(15, read=30),
    )


def whoami(url: str, token: str | None, mode: str = "legacy") -> dict:
    """The real mcp 2.x Client over Streamable HTTP with the bearer token:
    `whoami`'s answer (the claims of the token the server saw)."""

    async def go():
        with anyio.fail_after(60):
            async with bearer_client(token) as hc:
                async with Client(streamable_http_client(url, http_client=hc), mode=mode) as client:
                    result = await client.call_tool("whoami", {})
                    assert not result.is_error, result
                    return json.loads(text_of(result)[0])

    return anyio.run(go)
