"""Authorization on MCP routes with real parts: bearer tokens minted by an
independent issuer (oauth2-mock-server, npm) whose JWKS portcullis fetches
over HTTP (`jwks_uri`), the mcp 2.x client through portcullis to real mcp 2.x
servers under a policy (tools hidden and calls denied by rule), the RFC 9728
401 discovery flow (and the SDK's own OAuth client driven through it against
the mock server), no token passthrough (the upstream gets portcullis' signed
assertion, verified here with pyjwt), and the 401/403 challenges."""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass

import anyio
import httpx
import httpx2
import jwt
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp.shared.exceptions import MCPError

from conftest import HELPERS, NODE, Portcullis, Procs, Upstream, _failed, free_port, start_mcp2
from mcpclient import Recorder, text_of
from rawupstream import RawRequest, RawUpstream, json_answer

REFUSED = -32003  # JSON-RPC code of a policy denial
ALLOWED_TOOLS = ["add", "ask_name", "countdown", "echo", "request_headers", "slow"]
ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}

POLICY = """
    policy:
      - name: engineers
        allow: {and: [{groups: {has: engineering}}, {mcp_method: {in: [initialize, notifications/initialized, ping, tools/list, tools/call]}}]}
      - name: no-deletes
        deny: {mcp_tool: {starts_with: delete_}}
        message: deleting is not allowed
"""


# ---------------------------------------------------------------- parts


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory):
    ps = Procs(tmp_path_factory.mktemp("auth-logs"))
    yield ps
    ps.stop_all()


@pytest.fixture(autouse=True)
def _module_tails_on_failure(request, module_procs):
    """The log tails of the module's processes when a test fails."""
    yield
    if _failed(request):
        sys.stderr.write("\n" + module_procs.tails() + "\n")


@dataclass
class IdP:
    """oauth2-mock-server as an independent issuer (helpers/idp.mjs)."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token_response(self, aud: str | None, scope: str = "mcp", **claims) -> httpx.Response:
        data = {"grant_type": "client_credentials", "scope": scope, "claims": json.dumps(claims)}
        if aud is not None:
            data["aud"] = aud
        return httpx.post(f"{self.url}/token", data=data, timeout=10)

    def mint(self, aud: str | None, scope: str = "mcp", **claims) -> str:
        """A token from the issuer's own token endpoint (client_credentials),
        with the given audience, scope and extra claims (sub, groups, exp...)."""
        r = self.token_response(aud, scope, **claims)
        assert r.status_code == 200, r.text
        return r.json()["access_token"]


CODE_USER = {"sub": "oauth-user", "groups": ["engineering"], "scope": "mcp"}


def start_idp(procs: Procs, name: str, alg: str = "RS256") -> IdP:
    port = free_port()
    p = procs.start(
        name,
        [NODE, str(HELPERS / "idp.mjs"), "--port", str(port), "--alg", alg, "--code-claims", json.dumps(CODE_USER)],
    )
    p.wait_ports([port])
    return IdP(port)


@pytest.fixture(scope="module")
def idp(module_procs) -> IdP:
    """oauth2-mock-server signing RS256; portcullis fetches its /jwks."""
    return start_idp(module_procs, "oauth2-mock-server")


@pytest.fixture(scope="module")
def upstreams(module_procs) -> dict[str, Upstream]:
    """mcp 2.x MCPServers with a `delete_note` tool, SSE and JSON responses."""
    return {
        "sse": start_mcp2(module_procs, "mcp2-auth-sse", json_mode=False, extra=["--delete-tool"]),
        "json": start_mcp2(module_procs, "mcp2-auth-json", json_mode=True, extra=["--delete-tool"]),
    }


@dataclass
class AuthGateway:
    port: int
    prefix: dict  # kind -> public path

    def url(self, kind: str = "sse") -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix[kind]}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def issuer_yaml(idp: IdP) -> str:
    return f"""
identity:
  issuers:
    - name: idp
      issuer: {idp.url}
      jwks_uri: {idp.url}/jwks
"""


@pytest.fixture(scope="module")
def authgw(module_procs, tmp_path_factory, idp, upstreams) -> AuthGateway:
    """portcullis with two authenticated, policed routes: `t` (/mcp, SSE
    upstream) and `tj` (/json/mcp, JSON upstream); default upstream_auth
    (an ES256 assertion in X-Portcullis-Identity)."""
    port = free_port()
    pub = f"http://127.0.0.1:{port}"
    cfg = f"""
workers: 1
shutdown_timeout: 3s
{issuer_yaml(idp)}
listen:
  - address: 127.0.0.1:{port}
routes:
  - name: t
    from: {pub}/mcp
    to: {upstreams["sse"].url}
    mcp: {{}}
    auth: {{issuers: [idp], scopes: [mcp]}}
{POLICY}
  - name: tj
    from: {pub}/json/mcp
    to: {upstreams["json"].url}
    mcp: {{}}
    auth: {{issuers: [idp], scopes: [mcp]}}
{POLICY}
"""
    Portcullis(module_procs, tmp_path_factory.mktemp("auth-gw")).start(cfg, [port], name="portcullis-auth")
    return AuthGateway(port, {"sse": "/mcp", "json": "/json/mcp"})


def bearer_client(token: str | None, rec: Recorder | None = None) -> httpx2.AsyncClient:
    rec = rec or Recorder()
    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"} if token else None,
        timeout=httpx2.Timeout(15, read=30),
        event_hooks={"request": [rec.on_request], "response": [rec.on_response]},
    )


def mcp_error(exc: BaseException) -> MCPError:
    """The MCPError inside what the client raised (the SDK's task groups wrap
    it in ExceptionGroups)."""
    todo = [exc]
    while todo:
        e = todo.pop()
        if isinstance(e, MCPError):
            return e
        todo += list(getattr(e, "exceptions", ()))
        if e.__cause__ is not None:
            todo.append(e.__cause__)
    raise AssertionError(f"no MCPError in {exc!r}")


def challenge(resp: httpx.Response) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer ...` challenge."""
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


def rpc_body(resp: httpx.Response) -> dict:
    """The JSON-RPC message of a JSON or single-event SSE answer."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        datas = [line[5:].strip() for line in resp.text.splitlines() if line.startswith("data:")]
        msgs = [json.loads(d) for d in datas if d]
        return [m for m in msgs if "id" in m][-1]
    return resp.json()


# ---------------------------------------------------------------- the MCP client under a policy


@pytest.mark.parametrize("kind", ["sse", "json"])
def test_policy_with_real_client(authgw, idp, upstreams, kind):
    """A token from the independent issuer (JWKS fetched by portcullis) for a
    user in `engineering`: the mcp 2.x client initializes, sees every tool but
    `delete_note` (which the server does offer), calls `add`; `delete_note`
    fails with an MCP error naming the rule; the same session goes on."""
    token = idp.mint(authgw.url(kind), sub="alice", groups=["engineering", "staff"])

    async def go():
        rec = Recorder()
        out = {}
        with anyio.fail_after(60):
            async with bearer_client(token, rec) as hc:
                async with Client(streamable_http_client(authgw.url(kind), http_client=hc), mode="legacy") as client:
                    out["server"] = client.server_info.name
                    out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
                    out["add"] = text_of(await client.call_tool("add", {"a": 2, "b": 40}))
                    with pytest.raises(MCPError) as denied:
                        await client.call_tool("delete_note", {"name": "x"})
                    out["denied"] = (denied.value.code, denied.value.message)
                    out["echo"] = text_of(await client.call_tool("echo", {"text": "still here"}))
        return out, rec

    out, rec = anyio.run(go)
    assert out["server"] == "e2e-mcp2"
    assert out["tools"] == ALLOWED_TOOLS
    assert out["add"] == ["42"]
    code, message = out["denied"]
    assert code == REFUSED
    assert "no-deletes" in message and "deleting is not allowed" in message, message
    assert out["echo"] == ["still here"]
    # One session throughout: every call after initialize carried the same id.
    sessions = {e.req_session for e in rec.exchanges if e.rpc_method == "tools/call"}
    assert len(sessions) == 1 and None not in sessions, rec.exchanges
    calls = rec.by_rpc("tools/call")
    assert [e.status for e in calls] == [200, 200, 200]

    # The upstream itself offers delete_note: the hiding is portcullis' doing.
    async def direct():
        async with Client(upstreams[kind].url, mode="legacy") as client:
            return sorted(t.name for t in (await client.list_tools()).tools)

    assert anyio.run(direct) == sorted(ALLOWED_TOOLS + ["delete_note"])


def test_denied_call_raw_keeps_request_id(authgw, idp):
    """The denial is an HTTP 200 JSON-RPC error with the request's id and code
    -32003 (the same answer the client above turned into MCPError)."""
    url = authgw.url("json")
    token = idp.mint(url, sub="alice", groups=["engineering"])
    r = post_rpc(url, INIT, token)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    post_rpc(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, token, sid)
    call = {"jsonrpc": "2.0", "id": "del-77", "method": "tools/call", "params": {"name": "delete_note", "arguments": {"name": "x"}}}
    r = post_rpc(url, call, token, sid)
    assert r.status_code == 200
    body = rpc_body(r)
    assert body["id"] == "del-77"
    assert body["error"]["code"] == REFUSED
    assert "no-deletes" in body["error"]["message"]


def test_user_without_group_denied(authgw, idp):
    """A valid token whose user is not in `engineering`: nothing is allowed,
    so already `initialize` fails with the route's default rule `t#default`."""
    token = idp.mint(authgw.url(), sub="bob", groups=["sales"])

    async def go():
        with anyio.fail_after(30):
            async with bearer_client(token) as hc:
                async with Client(streamable_http_client(authgw.url(), http_client=hc), mode="legacy"):
                    pass

    with pytest.raises(BaseException) as raised:
        anyio.run(go)
    denied = mcp_error(raised.value)
    assert denied.code == REFUSED
    assert 'policy rule "t#default"' in denied.message, denied.message

    # Raw: tools/list (no session needed to be judged) is refused the same way.
    r = post_rpc(authgw.url(), {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, token)
    assert r.status_code == 200
    body = rpc_body(r)
    assert body["id"] == 9 and body["error"]["code"] == REFUSED
    assert "t#default" in body["error"]["message"]


# ---------------------------------------------------------------- discovery


@pytest.mark.parametrize("kind", ["sse", "json"])
def test_401_discovery_to_metadata(authgw, idp, kind):
    """No token: 401 whose `resource_metadata` URL serves RFC 9728 metadata
    naming the URL the client used as `resource` and the issuer as its
    authorization server; that server's own discovery document names the
    same issuer and the JWKS portcullis uses."""
    url = authgw.url(kind)
    r = post_rpc(url, INIT)
    assert r.status_code == 401
    ch = challenge(r)
    meta_url = f"{authgw.base}/.well-known/oauth-protected-resource{authgw.prefix[kind]}"
    assert ch["resource_metadata"] == meta_url
    assert "error" not in ch  # no token given, so no token error (RFC 6750 3.1)

    m = httpx.get(meta_url, timeout=10)
    assert m.status_code == 200
    assert m.headers["content-type"].startswith("application/json")
    doc = m.json()
    assert doc["resource"] == url
    assert doc["authorization_servers"] == [idp.url]
    assert doc["scopes_supported"] == ["mcp"]
    assert doc["bearer_methods_supported"] == ["header"]

    asm = httpx.get(f"{doc['authorization_servers'][0]}/.well-known/openid-configuration", timeout=10).json()
    assert asm["issuer"] == idp.url
    assert asm["jwks_uri"] == f"{idp.url}/jwks"


def test_sdk_oauth_client_full_flow(authgw, idp):
    """The mcp 2.x SDK's own OAuth client against portcullis and the mock
    server: 401 → protected resource metadata (resource checked against the
    URL) → authorization server metadata (issuer checked) → authorization
    code + PKCE S256 with `resource` (a pre-registered public client; the mock
    server has no dynamic registration) → token → the MCP session goes on
    with that token, under the policy."""
    url = authgw.url()
    seen: dict = {}

    class Storage:
        def __init__(self):
            self.tokens: OAuthToken | None = None
            self.client = OAuthClientInformationFull(
                client_id="e2e-client",
                redirect_uris=["http://127.0.0.1:1/callback"],
                token_endpoint_auth_method="none",
                grant_types=["authorization_code"],
                response_types=["code"],
            )

        async def get_tokens(self):
            return self.tokens

        async def set_tokens(self, tokens):
            self.tokens = tokens

        async def get_client_info(self):
            return self.client

        async def set_client_info(self, info):
            self.client = info

    async def redirect_handler(authorization_url: str) -> None:
        # The "browser": the mock server authorizes at once and redirects.
        seen["authorize"] = authorization_url
        async with httpx2.AsyncClient(timeout=10) as b:
            r = await b.get(authorization_url, follow_redirects=False)
        assert r.status_code == 302, r.text
        seen["redirect"] = r.headers["location"]

    async def callback_handler() -> AuthorizationCodeResult:
        q = httpx2.URL(seen["redirect"]).params
        return AuthorizationCodeResult(code=q["code"], state=q.get("state"))

    storage = Storage()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            redirect_uris=["http://127.0.0.1:1/callback"], token_endpoint_auth_method="none", client_name="e2e"
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )

    async def go():
        rec = Recorder()
        with anyio.fail_after(60):
            async with httpx2.AsyncClient(
                auth=provider,
                timeout=httpx2.Timeout(15, read=30),
                event_hooks={"request": [rec.on_request], "response": [rec.on_response]},
            ) as hc:
                async with Client(streamable_http_client(url, http_client=hc), mode="legacy") as client:
                    tools = sorted(t.name for t in (await client.list_tools()).tools)
                    add = text_of(await client.call_tool("add", {"a": 1, "b": 2}))
        return tools, add, rec

    tools, add, rec = anyio.run(go)
    assert tools == ALLOWED_TOOLS and add == ["3"]
    paths = [(e.method, e.path, e.status) for e in rec.exchanges]
    assert paths[0] == ("POST", "/mcp", 401), paths
    assert ("GET", "/.well-known/oauth-protected-resource/mcp", 200) in paths
    assert ("GET", "/.well-known/openid-configuration", 200) in paths
    assert ("POST", "/token", 200) in paths
    auth_q = httpx2.URL(seen["authorize"]).params
    assert auth_q["code_challenge_method"] == "S256"
    assert auth_q["resource"] == url
    assert seen["authorize"].startswith(f"{idp.url}/authorize?")
    claims = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})
    assert claims["aud"] == url and claims["iss"] == idp.url and claims["sub"] == "oauth-user"


# ---------------------------------------------------------------- no token passthrough


def test_upstream_sees_assertion_not_token(authgw, idp, upstreams):
    """The real MCP server's view of a call (its `request_headers` tool): no
    Authorization, the client's token nowhere, and an X-Portcullis-Identity
    JWT that verifies against the proxy's JWKS with aud = the upstream URL,
    sub = the caller, groups/email from the token, idp = the issuer."""
    token = idp.mint(authgw.url(), sub="alice", groups=["engineering"], email="alice@example.com")

    async def go():
        with anyio.fail_after(60):
            async with bearer_client(token) as hc:
                async with Client(streamable_http_client(authgw.url(), http_client=hc), mode="legacy") as client:
                    r = await client.call_tool("request_headers", {})
                    return json.loads(r.content[0].text)

    h = anyio.run(go)
    assert "authorization" not in h
    assert not any(token in v for v in h.values())
    assertion = h["x-portcullis-identity"]
    jwks = jwt.PyJWKClient(f"{authgw.base}/.well-known/portcullis/jwks.json", timeout=10)
    key = jwks.get_signing_key_from_jwt(assertion)
    claims = jwt.decode(assertion, key, algorithms=["ES256"], audience=upstreams["sse"].url)
    assert claims["sub"] == "alice"
    assert claims["groups"] == ["engineering"]
    assert claims["email"] == "alice@example.com"
    assert claims["idp"] == idp.url
    # jti: the id of the request the assertion was first signed for (a cached
    # assertion is reused, jti and all, until 30 s before its exp).
    assert re.fullmatch(r"[0-9a-f]{24}", claims["jti"])
    assert claims["exp"] - claims["iat"] == 60
    assert claims["exp"] > time.time()
    assert jwt.get_unverified_header(assertion)["alg"] == "ES256"
    # A forged assertion (the same claims, another key) does not verify.
    other = jwt.PyJWK.from_dict(
        {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
    )
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(assertion, other, algorithms=["ES256"], audience=upstreams["sse"].url)


def answer_mcp(conn, req: RawRequest) -> bool:
    """A minimal MCP server answer: initialize gets a result and a session
    id, notifications 202, anything else an empty result."""
    msg = json.loads(req.body or b"{}")
    if msg.get("method") == "initialize":
        body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
            "protocolVersion": msg["params"]["protocolVersion"], "capabilities": {},
            "serverInfo": {"name": "raw", "version": "0"}}}).encode()
        conn.sendall(json_answer(body, "Mcp-Session-Id: s1\r\n"))
    elif "id" not in msg:
        conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
    else:
        conn.sendall(json_answer(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": []}}).encode()))
    return True


@pytest.mark.parametrize(
    "upstream_auth,header",
    [
        pytest.param("", "x-portcullis-identity", id="default-assertion"),
        # serde_yaml enums: the variant is a YAML tag (`{assertion: ...}` is refused).
        pytest.param("upstream_auth: {assertion: {header: Authorization}}", "authorization", id="assertion-in-authorization"),
        pytest.param('upstream_auth: {static: {header: X-Api-Key, value: "k-123"}}', "x-api-key", id="static"),
    ],
)
def test_token_never_forwarded_exact_bytes(portcullis, idp, upstream_auth, header):
    """Exact bytes of every request the upstream received (initialize,
    notification, tools/list, DELETE) for each upstream_auth kind: the
    client's token appears nowhere; the configured credential is there."""
    up = RawUpstream(answer_mcp)
    try:
        port = free_port()
        pub = f"http://127.0.0.1:{port}"
        cfg = f"""
workers: 1
{issuer_yaml(idp)}
listen:
  - address: 127.0.0.1:{port}
routes:
  - name: r
    from: {pub}/mcp
    to: http://127.0.0.1:{up.port}/mcp
    mcp: {{}}
    auth: {{issuers: [idp], scopes: [mcp]}}
    {upstream_auth}
"""
        portcullis.start(cfg, [port])
        token = idp.mint(f"{pub}/mcp", sub="carol")
        r = post_rpc(f"{pub}/mcp", INIT, token)
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        assert post_rpc(f"{pub}/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, token, sid).status_code == 202
        assert post_rpc(f"{pub}/mcp", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, token, sid).status_code == 200
        d = httpx.delete(f"{pub}/mcp", headers={"Authorization": f"Bearer {token}", "Mcp-Session-Id": sid}, timeout=10)
        assert d.status_code in (200, 202)
    finally:
        up.close()
    assert not up.errors, up.errors
    assert [q.method for q in up.requests] == ["POST", "POST", "POST", "DELETE"]
    sig = token.rsplit(".", 1)[1]  # the token's signature alone, too
    for q in up.requests:
        raw = repr(q.headers).encode() + q.body
        assert token.encode() not in raw and sig.encode() not in raw, q
        value = q.one(header)
        assert value, q.headers
        if header == "x-api-key":
            assert value == "k-123"
            assert q.one("authorization") is None
        else:
            assertion = value.removeprefix("Bearer ") if header == "authorization" else value
            assert assertion != token
            claims = jwt.decode(assertion, options={"verify_signature": False})
            assert claims["sub"] == "carol"
            assert claims["aud"] == f"http://127.0.0.1:{up.port}/mcp"
            if header == "x-portcullis-identity":
                assert q.one("authorization") is None


def test_second_issuer_es256_jwks_file(portcullis, procs, idp, upstreams, tmp_path):
    """A route accepting two independent issuers: the RS256 one by `jwks_uri`
    and a second oauth2-mock-server signing ES256 whose JWKS is given as a
    file. Tokens of both work; a token of the ES256 issuer claiming to be
    the RS256 one (its `iss`) is refused."""
    idp2 = start_idp(procs, "oauth2-mock-server-es256", alg="ES256")
    jwks_file = tmp_path / "idp2-jwks.json"
    jwks_file.write_text(httpx.get(f"{idp2.url}/jwks", timeout=10).text)
    assert json.loads(jwks_file.read_text())["keys"][0]["alg"] == "ES256"
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    cfg = f"""
workers: 1
{issuer_yaml(idp)}
    - name: idp2
      issuer: {idp2.url}
      jwks_file: {jwks_file}
listen:
  - address: 127.0.0.1:{port}
routes:
  - name: two
    from: {url}
    to: {upstreams["json"].url}
    mcp: {{}}
    auth: {{issuers: [idp, idp2], scopes: [mcp]}}
{POLICY}
"""
    portcullis.start(cfg, [port])
    for who in (idp, idp2):
        token = who.mint(url, sub="dave", groups=["engineering"])
        assert jwt.get_unverified_header(token)["alg"] == ("ES256" if who is idp2 else "RS256")

        async def go():
            with anyio.fail_after(30):
                async with bearer_client(token) as hc:
                    async with Client(streamable_http_client(url, http_client=hc), mode="legacy") as client:
                        return sorted(t.name for t in (await client.list_tools()).tools)

        assert anyio.run(go) == ALLOWED_TOOLS
    forged = idp2.mint(url, sub="dave", groups=["engineering"], iss=idp.url)
    r = post_rpc(url, INIT, forged)
    assert r.status_code == 401
    ch = challenge(r)
    assert ch["error"] == "invalid_token" and ch["error_description"] == "unknown signing key", ch


# ---------------------------------------------------------------- 401 / 403


def _now() -> int:
    return int(time.time())


BAD_TOKENS = {
    "garbage": lambda idp, aud: "not-a-jwt",
    "expired": lambda idp, aud: idp.mint(aud, sub="alice", groups=["engineering"], iat=_now() - 7200, nbf=_now() - 7200, exp=_now() - 3600),
    "wrong-audience": lambda idp, aud: idp.mint(aud + "-other", sub="alice", groups=["engineering"]),
    "other-route-audience": lambda idp, aud: idp.mint(aud.replace("/mcp", "/json/mcp"), sub="alice", groups=["engineering"]),
    "no-audience": lambda idp, aud: idp.mint(None, sub="alice", groups=["engineering"]),
    "unknown-issuer": lambda idp, aud: idp.mint(aud, sub="alice", iss="http://127.0.0.1:1"),
    "tampered": lambda idp, aud: _tamper(idp.mint(aud, sub="alice", groups=["sales"])),
    "not-yet-valid": lambda idp, aud: idp.mint(aud, sub="alice", nbf=_now() + 3600),
}


# portcullis' error_description for each (each token fails for its own reason).
REASONS = {
    "garbage": "malformed token",
    "expired": "token expired",
    "wrong-audience": "token not for this resource",
    "other-route-audience": "token not for this resource",
    "no-audience": "token not for this resource",
    "unknown-issuer": "untrusted issuer",
    "tampered": "invalid signature",
    "not-yet-valid": "token not yet valid",
}


def _tamper(token: str) -> str:
    """Same signature, payload changed (groups sales → engineering)."""
    import base64

    h, p, s = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims["groups"] = ["engineering"]
    p2 = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{h}.{p2}.{s}"


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token_401_invalid_token(authgw, idp, case):
    url = authgw.url()
    token = BAD_TOKENS[case](idp, url)
    r = post_rpc(url, INIT, token)
    assert r.status_code == 401, (r.status_code, r.text)
    ch = challenge(r)
    assert ch.get("error") == "invalid_token", r.headers["www-authenticate"]
    assert ch["error_description"] == REASONS[case]
    assert ch["resource_metadata"] == f"{authgw.base}/.well-known/oauth-protected-resource/mcp"


def test_bad_token_real_client_fails(authgw, idp):
    """The mcp client with an expired token gets no session: its transport
    turns the 401's JSON-RPC body into an MCP error saying why."""
    token = BAD_TOKENS["expired"](idp, authgw.url())

    async def go():
        with anyio.fail_after(30):
            async with bearer_client(token) as hc:
                async with Client(streamable_http_client(authgw.url(), http_client=hc), mode="legacy"):
                    pass

    with pytest.raises(BaseException) as raised:
        anyio.run(go)
    err = mcp_error(raised.value)
    assert "expired" in err.message, err.message


def test_missing_scope_403(authgw, idp):
    url = authgw.url()
    token = idp.mint(url, scope="read other", sub="alice", groups=["engineering"])
    r = post_rpc(url, INIT, token)
    assert r.status_code == 403, r.text
    ch = challenge(r)
    assert ch["error"] == "insufficient_scope"
    assert ch["scope"] == "mcp"
    assert ch["resource_metadata"] == f"{authgw.base}/.well-known/oauth-protected-resource/mcp"
