"""An upstream MCP server that needs the user's own token at the upstream
service (helpers/upstream_as.mjs): a real `mcp` 2.x `MCPServer` over
Streamable HTTP (uvicorn), protected by the SDK's own resource-server auth
(`AuthSettings` + a `TokenVerifier`), the way an MCP server such as GitHub's
is: a request is served only with `Authorization: Bearer <JWT>` from that
authorization server.

Usage: upstream_mcp.py --port P --issuer ISS --jwks-url URL
                       [--audience https://upstream.example/api ...]
                       [--path /mcp] [--json] [--required-scope S ...]
                       [--resource URL]

The token check (pyjwt, keys from --jwks-url, fetched again for an unknown
kid): RS256 signature, header typ "at+jwt" (RFC 9068: an ID token is not an
access token), `iss` == --issuer, `aud` one of --audience (default
https://upstream.example/api; repeatable), `exp` in the future (no leeway),
`sub`, `jti`, `client_id` present; and `sub` not denied by /test/deny.
Anything else: 401 from the SDK's `RequireAuthMiddleware`, with
`WWW-Authenticate: Bearer error="invalid_token", error_description="Authentication
required", resource_metadata="http://127.0.0.1:P/.well-known/oauth-protected-resource/mcp"`
(also when there is no token at all); the reason is recorded (see /seen). A
valid token without a --required-scope: 403 `error="insufficient_scope"`.
The SDK binds an MCP session to the (client_id, iss, sub) of the token that
created it: another user's token on that session gets 404 "Session not found".

RFC 9728 metadata at /.well-known/oauth-protected-resource/mcp (unauthenticated):
`resource` = --resource (default http://127.0.0.1:P/mcp, this server's URL),
`authorization_servers` = [--issuer], `scopes_supported` = the
--required-scope values, `bearer_methods_supported` = ["header"].

Tools: `whoami` -> {"sub", "client_id", "jti", "scope", "aud", "exp", "iss"} of
the token on the request that carried the call; `echo`.

Test endpoints (no authentication):
  GET  /seen        JSON: {"subs": [...distinct subs, first seen first],
                           "jtis": [...distinct jtis, first seen first],
                           "tokens": [{"jti", "sub", "client_id", "aud", "scope",
                                       "iat", "exp", "first_seen", "last_seen",
                                       "requests", "min_remaining_s", "token"}],
                           "rejected": [{"t", "reason", "iss", "sub", "token_sha256"}]}
                    every HTTP request to the MCP endpoint that carried a valid
                    token counts in `requests` of its token; `min_remaining_s` is
                    the least exp - now at which it was used; `token` is the
                    raw access token (so a test can look for it elsewhere);
                    `iss`/`sub` of a rejected token are read without verifying
                    it (null when unreadable), token_sha256 is its first 16 hex.
  POST /seen/reset  forget all of it.
  POST /test/deny?sub=NAME[&on=0]   refuse (401 invalid_token, reason "denied")
                    every token of that user from now on, valid or not, as a
                    service does with a token the user revoked; on=0 lifts it.
Prints nothing special; the tests wait for the port.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from typing import Any

import anyio.to_thread
import jwt
import uvicorn
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse

DEFAULT_AUDIENCE = "https://upstream.example/api"


class Seen:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {}
        self.subs: list[str] = []
        self.rejected: list[dict[str, Any]] = []

    def accepted(self, token: str, claims: dict[str, Any]) -> None:
        now = time.time()
        jti = claims["jti"]
        t = self.tokens.get(jti)
        if t is None:
            t = self.tokens[jti] = {
                "jti": jti,
                "sub": claims["sub"],
                "client_id": claims.get("client_id"),
                "aud": claims.get("aud"),
                "scope": claims.get("scope"),
                "iat": claims.get("iat"),
                "exp": claims["exp"],
                "first_seen": now,
                "last_seen": now,
                "requests": 0,
                "min_remaining_s": claims["exp"] - now,
                "token": token,
            }
        t["requests"] += 1
        t["last_seen"] = now
        t["min_remaining_s"] = min(t["min_remaining_s"], claims["exp"] - now)
        if claims["sub"] not in self.subs:
            self.subs.append(claims["sub"])

    def reject(self, token: str, reason: str) -> None:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except Exception:
            unverified = {}
        if not isinstance(unverified, dict):
            unverified = {}
        self.rejected.append(
            {
                "t": time.time(),
                "reason": reason,
                "iss": unverified.get("iss"),
                "sub": unverified.get("sub"),
                "token_sha256": hashlib.sha256(token.encode()).hexdigest()[:16],
            }
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "subs": list(self.subs),
            "jtis": list(self.tokens),
            "tokens": list(self.tokens.values()),
            "rejected": list(self.rejected),
        }


class UpstreamTokenVerifier:
    """The SDK's TokenVerifier protocol: the token's AccessToken, or None."""

    def __init__(self, issuer: str, jwks_url: str, audiences: list[str], seen: Seen, denied: set[str]):
        self.issuer = issuer
        self.audiences = audiences
        self.jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=10)
        self.seen = seen
        self.denied = denied

    def _decode(self, token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        if header.get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
            raise jwt.InvalidTokenError(f"typ {header.get('typ')!r} is not at+jwt")
        key = self.jwks.get_signing_key_from_jwt(token)  # fetches the JWKS again for an unknown kid
        return jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            issuer=self.issuer,
            audience=self.audiences,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti", "client_id"]},
            leeway=0,
        )

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = await anyio.to_thread.run_sync(self._decode, token)
        except jwt.ExpiredSignatureError:
            self.seen.reject(token, "expired")
            return None
        except jwt.InvalidAudienceError:
            self.seen.reject(token, "audience")
            return None
        except jwt.InvalidIssuerError:
            self.seen.reject(token, "issuer")
            return None
        except jwt.InvalidSignatureError:
            self.seen.reject(token, "signature")
            return None
        except (jwt.PyJWTError, ValueError) as e:
            self.seen.reject(token, f"invalid: {type(e).__name__}: {e}")
            return None
        if claims["sub"] in self.denied:
            self.seen.reject(token, "denied")
            return None
        self.seen.accepted(token, claims)
        aud = claims["aud"]
        resource = next((a for a in ([aud] if isinstance(aud, str) else aud) if a in self.audiences), None)
        return AccessToken(
            token=token,
            client_id=claims["client_id"],
            scopes=str(claims.get("scope") or "").split(),
            expires_at=int(claims["exp"]),
            resource=resource,
            subject=claims["sub"],
            claims=claims,
        )


def build(args: argparse.Namespace) -> MCPServer:
    seen = Seen()
    denied: set[str] = set()
    resource = args.resource or f"http://127.0.0.1:{args.port}{args.path}"
    verifier = UpstreamTokenVerifier(args.issuer, args.jwks_url, args.audience or [DEFAULT_AUDIENCE], seen, denied)
    mcp = MCPServer(
        "e2e-upstream-mcp",
        version="1.0.0",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=args.issuer,
            resource_server_url=resource,
            required_scopes=args.required_scope or None,
            validate_token_resource=False,  # the verifier checks `aud` against --audience itself
        ),
    )

    @mcp.tool()
    def whoami(ctx: Context) -> dict[str, Any]:
        """The upstream user whose token came with this request."""
        request = ctx.request_context.request
        user = request.scope.get("user") if request is not None else None
        claims = user.access_token.claims or {}
        return {k: claims.get(k) for k in ("sub", "client_id", "jti", "scope", "aud", "exp", "iss")}

    @mcp.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.custom_route("/seen", methods=["GET"])
    async def seen_get(_request: Request) -> JSONResponse:
        return JSONResponse(seen.as_json())

    @mcp.custom_route("/seen/reset", methods=["POST"])
    async def seen_reset(_request: Request) -> JSONResponse:
        seen.reset()
        return JSONResponse({"ok": True})

    @mcp.custom_route("/test/deny", methods=["POST"])
    async def deny(request: Request) -> JSONResponse:
        sub = request.query_params.get("sub", "")
        if request.query_params.get("on", "1") == "0":
            denied.discard(sub)
        else:
            denied.add(sub)
        return JSONResponse({"denied": sorted(denied)})

    return mcp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--jwks-url", required=True)
    ap.add_argument("--audience", action="append", help=f"accepted aud (repeatable; default {DEFAULT_AUDIENCE})")
    ap.add_argument("--path", default="/mcp")
    ap.add_argument("--json", action="store_true", help="JSON responses instead of SSE")
    ap.add_argument("--required-scope", action="append", help="a scope every token must have (repeatable)")
    ap.add_argument("--resource", help="RFC 9728 `resource` (default http://127.0.0.1:PORT/PATH)")
    args = ap.parse_args()
    app = build(args).streamable_http_app(streamable_http_path=args.path, json_response=args.json, host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
