"""Real OAuth clients through portcullis's own authorization server, each
ending with an MCP `tools/call` that works (issue 11, "Proof"):

- the TypeScript SDK (@modelcontextprotocol/sdk, `StreamableHTTPClientTransport`
  with an `authProvider`: helpers/ts_oauth_client.mjs): 401, protected
  resource metadata, discovery, dynamic registration, PKCE S256, `resource`;
- the MCP Inspector CLI 2.12.0 with a pre-registered client (`--client-id`),
  its own loopback callback listener and its token store reused afterwards;
- the MCP conformance suite 0.2.0-alpha's authorization-server scenarios
  (`authorization-server-metadata-endpoint`, `authorization-code-grant`).

The user is headless Chromium (helpers/browser.mjs) on portcullis's
development login page (alice) and its consent page; browser.mjs stops the
redirect to the client's callback in the browser and prints it, and where a
client listens for the callback (the Inspector, the conformance suite) the
test delivers it with a GET of its own. One portcullis with exactly one route
(the conformance suite sends no `resource`: the only route is the default) in
front of one real mcp 2.x server. Screenshots of the login and consent pages
are kept under tests/e2e/artifacts/oauth-clients/ (or $E2E_ARTIFACTS)."""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import E2E, HELPERS, NODE, NODE_DIR, Portcullis, Proc, Procs, Upstream, _failed, free_port, start_mcp2

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no chromium at {CHROMIUM}")

ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", E2E / "artifacts")) / "oauth-clients"
INSPECTOR = str(NODE_DIR / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build" / "index.js")
CONFORMANCE_ALPHA = str(NODE_DIR / "conformance-alpha" / "dist" / "index.js")

INSPECTOR_CLIENT = "inspector-cli"
CONFORMANCE_CLIENT = "conformance-suite"


# ---------------------------------------------------------------- parts


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory):
    ps = Procs(tmp_path_factory.mktemp("oauth-clients-logs"))
    yield ps
    ps.stop_all()


@pytest.fixture(autouse=True)
def _tails_on_failure(request, module_procs):
    yield
    if _failed(request):
        sys.stderr.write("\n" + module_procs.tails() + "\n")


@pytest.fixture(scope="module")
def upstream(module_procs) -> Upstream:
    """One real mcp 2.x MCPServer (Streamable HTTP, SSE responses)."""
    return start_mcp2(module_procs, "mcp2-oauth-clients", json_mode=False)


@dataclass
class Gateway:
    port: int
    conformance_port: int  # the conformance suite's callback listener

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def route(self) -> str:
        """The one route: its URL is the tokens' `aud` and the default resource."""
        return f"{self.issuer}/mcp"


@pytest.fixture(scope="module")
def gw(module_procs, tmp_path_factory, upstream) -> Gateway:
    """portcullis as the authorization server (development login: alice,
    bob), dynamic registration on, two pre-registered public clients (the
    Inspector: `http://127.0.0.1/oauth/callback`, any loopback port as RFC
    8252 allows; the conformance suite: its exact callback), and exactly one
    route accepting its tokens."""
    port, conformance_port = free_port(), free_port()
    d = tmp_path_factory.mktemp("oauth-clients")
    cfg = f"""
workers: 1
shutdown_timeout: 3s
listen: [{{address: 127.0.0.1:{port}}}]
authorization_server:
  issuer: http://127.0.0.1:{port}
  login:
    dev_users:
      - {{sub: alice, email: alice@example.com, groups: [engineering]}}
      - {{sub: bob, email: bob@example.com, groups: [sales]}}
  clients:
    dynamic_registration: true
    registered:
      - {{client_id: {INSPECTOR_CLIENT}, name: MCP Inspector CLI, redirect_uris: ["http://127.0.0.1/oauth/callback"]}}
      - {{client_id: {CONFORMANCE_CLIENT}, name: MCP conformance suite, redirect_uris: ["http://127.0.0.1:{conformance_port}/callback"]}}
store: {{path: {d}/state.db}}
routes:
  - name: mcp
    from: http://127.0.0.1:{port}/mcp
    to: {upstream.url}
    mcp: {{}}
    auth: {{issuers: [portcullis], scopes: [mcp]}}
"""
    Portcullis(module_procs, d).start(cfg, [port], name="portcullis-oauth-clients")
    return Gateway(port, conformance_port)


# ---------------------------------------------------------------- helpers


def shots_dir(name: str) -> Path:
    d = ARTIFACTS / name
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.png"):
        old.unlink()
    return d


def browser(url: str, stop_at: str, shots: Path, user: str = "alice") -> str:
    """Chromium walks login and consent; the callback URL it was sent to
    (stopped in the browser: nothing reached the client's listener)."""
    argv = [NODE, str(HELPERS / "browser.mjs"), "--url", url, "--stop-at", stop_at, "--user", user,
            "--screenshots", str(shots), "--timeout-ms", "45000"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=75)
    assert r.returncode == 0, f"browser failed:\n{r.stderr[-3000:]}"
    lines = [l for l in r.stdout.splitlines() if l.startswith("callback ")]
    assert len(lines) == 1, r.stdout
    return lines[0].split(" ", 1)[1]


def deliver(callback: str) -> httpx.Response:
    """The browser's last step, done by the test: GET the client's callback."""
    return httpx.get(callback, timeout=10)


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def jwt_claims(token: str) -> dict:
    """A JWT's payload, undecoded by any library (portcullis verifies it)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 45) -> re.Match:
    """The first match of `pattern` in the file `path`, while `proc` runs."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        m = re.search(pattern, text)
        if m:
            return m
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before printing {pattern!r}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} after {timeout}s:\n{text[-3000:]}")
        time.sleep(0.1)


def start_on_tty(request, procs: Procs, name: str, argv: list[str], env: dict) -> tuple[Proc, Path]:
    """Start a process whose stdin is a pseudo-terminal (its stdout and
    stderr to two files); stopped by pid with the others at teardown, the
    terminal closed then too. Returns the process (its log is stderr) and
    the stdout file."""
    out = procs.logdir / f"{name}-{len(procs.procs)}.stdout"
    err = procs.logdir / f"{name}-{len(procs.procs)}.log"
    master, slave = pty.openpty()
    try:
        with open(out, "wb") as fo, open(err, "wb") as fe:
            popen = subprocess.Popen(argv, stdin=slave, stdout=fo, stderr=fe, env={**os.environ, **env})
    finally:
        os.close(slave)
    request.addfinalizer(lambda: os.close(master))  # not its controlling terminal: no hang-up
    p = Proc(name, popen, err)
    procs.procs.append(p)
    return p, out


# ---------------------------------------------------------------- TypeScript SDK


def test_typescript_sdk_dynamic_registration(gw):
    """@modelcontextprotocol/sdk's StreamableHTTPClientTransport with an
    OAuthClientProvider: it discovers portcullis from the route's 401,
    registers itself (public client), authorizes with PKCE and `resource`,
    and calls tools with the token; the token is for the route only."""
    shots = shots_dir("typescript-sdk")
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    calls = [{"tool": "add", "arguments": {"a": 2, "b": 3}}, {"tool": "echo", "arguments": {"text": "through portcullis"}}]
    r = subprocess.run(
        [NODE, str(HELPERS / "ts_oauth_client.mjs"), "--url", gw.route, "--redirect-uri", redirect, "--user", "alice",
         "--screenshots", str(shots), "--calls", json.dumps(calls), "--timeout-ms", "100000"],
        capture_output=True, text=True, timeout=130,
    )
    assert r.returncode == 0, f"ts_oauth_client failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}"
    rep = json.loads(r.stdout.strip().splitlines()[-1])

    assert rep["sdk"] == "1.32.2"
    assert rep["unauthorizedFirst"] is True  # the 401 started it all
    reg = rep["registration"]
    assert reg["client_id"].startswith("dyn-"), reg  # dynamic registration, not a pre-registered id
    assert reg["token_endpoint_auth_method"] == "none" and "client_secret" not in reg, reg
    assert reg["redirect_uris"] == [redirect]
    az = rep["authorization"]
    assert az["endpoint"] == f"{gw.issuer}/authorize"
    assert az["client_id"] == reg["client_id"]
    assert az["code_challenge_method"] == "S256"
    assert az["resource"] == gw.route
    assert az["redirect_uri"] == redirect
    assert rep["callback"] == {"code": True, "error": None, "state_ok": True, "iss": gw.issuer}

    tokens = rep["tokens"]
    assert tokens["token_type"].lower() == "bearer"
    assert tokens.get("refresh_token")
    claims = jwt_claims(tokens["access_token"])
    assert claims["aud"] == gw.route
    assert claims["iss"] == gw.issuer
    assert claims["sub"] == "alice"
    assert claims["client_id"] == reg["client_id"]
    assert claims["scope"] == "mcp"

    assert {"add", "echo"} <= set(rep["tools"]), rep["tools"]
    assert rep["calls"] == [
        {"tool": "add", "ok": True, "text": "5"},
        {"tool": "echo", "ok": True, "text": "through portcullis"},
    ]
    assert (shots / "dev-login.png").stat().st_size > 0
    assert (shots / "consent.png").stat().st_size > 0

    # The token works for this route and nothing else is needed: a raw call with it.
    ok = httpx.post(
        gw.route,
        headers={"Authorization": f"Bearer {tokens['access_token']}", "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        timeout=10,
    )
    assert ok.status_code == 200, ok.text


# ---------------------------------------------------------------- MCP Inspector CLI


def inspector_env(home: Path) -> dict:
    return {
        "HOME": str(home),  # its catalog, client config and OAuth state: this test's own
        "MCP_INSPECTOR_SECRET_STORE": "file",  # no OS keychain here; kept in HOME for the second run
        "MCP_AUTO_OPEN_ENABLED": "false",  # print the URL, never start a browser itself
        "NO_COLOR": "1",
    }


def test_inspector_cli_preregistered_client(request, gw, procs, tmp_path):
    """The MCP Inspector 2.12.0 CLI with the pre-registered `inspector-cli`:
    it prints the authorization URL and waits on its loopback callback
    listener; Chromium logs alice in and consents, the test delivers the
    callback, and the Inspector's `tools/call` answers. A second run reuses
    the stored token without any login (`--stored-auth-only`, tools/list)."""
    shots = shots_dir("inspector-cli")
    home = tmp_path / "home"
    home.mkdir()
    callback = f"http://127.0.0.1:{free_port()}/oauth/callback"
    common = [NODE, INSPECTOR, "--cli", gw.route, "--transport", "http", "--client-id", INSPECTOR_CLIENT,
              "--callback-url", callback, "--format", "json"]
    # Interactive OAuth wants a human: a TTY on stdin (or MCP_AUTO_OPEN_ENABLED=true,
    # which would also make it launch a browser of its own).
    proc, stdout = start_on_tty(
        request, procs, "inspector-cli",
        common + ["--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=2", "b=3"],
        inspector_env(home),
    )
    url = wait_for(proc.log, r"Please navigate to: (\S+)", proc.popen).group(1)
    q = query(url)
    assert url.startswith(f"{gw.issuer}/authorize?"), url
    assert q["client_id"] == INSPECTOR_CLIENT
    assert q["redirect_uri"] == callback
    assert q["code_challenge_method"] == "S256" and q["code_challenge"]
    assert q["resource"] == gw.route

    cb = browser(url, callback, shots)
    params = query(cb)
    assert params["iss"] == gw.issuer and params["state"] == q["state"] and params["code"], params
    answer = deliver(cb)
    assert answer.status_code == 200 and "OAuth complete" in answer.text, answer.text

    rc = proc.popen.wait(timeout=60)
    assert rc == 0, f"inspector exited {rc}:\n{stdout.read_text()}\n{proc.tail()}"
    result = json.loads(stdout.read_text())["result"]
    assert result["isError"] is False
    assert result["content"] == [{"type": "text", "text": "5"}]
    assert result["structuredContent"] == {"result": 5}
    assert (shots / "dev-login.png").stat().st_size > 0
    assert (shots / "consent.png").stat().st_size > 0

    # Again, from its store: no browser, no callback (it would fail instead).
    r = subprocess.run(
        common + ["--method", "tools/list", "--stored-auth-only"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, env={**os.environ, **inspector_env(home)},
    )
    assert r.returncode == 0, f"inspector (stored auth) exited {r.returncode}:\n{r.stdout}\n{r.stderr[-3000:]}"
    names = {t["name"] for t in json.loads(r.stdout)["result"]["tools"]}
    assert {"add", "echo"} <= names, names


# ---------------------------------------------------------------- conformance suite


def conformance_checks(out: Path, scenario: str) -> list[dict]:
    """The checks.json the suite wrote for `scenario` (-o DIR)."""
    found = sorted(out.glob(f"authorization-server-{scenario}-*/checks.json"))
    assert len(found) == 1, (scenario, sorted(str(p) for p in out.rglob("*")))
    return json.loads(found[0].read_text())


def test_conformance_authorization_server_metadata(gw, tmp_path):
    """conformance 0.2.0-alpha `authorization --scenario authorization-server-metadata-endpoint`."""
    out = tmp_path / "results"
    r = subprocess.run(
        [NODE, CONFORMANCE_ALPHA, "authorization", "--url", gw.issuer,
         "--scenario", "authorization-server-metadata-endpoint", "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, f"conformance failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert "Passed: 2/2, 0 failed, 0 warnings" in r.stdout, r.stdout
    checks = {c["id"]: c for c in conformance_checks(out, "authorization-server-metadata-endpoint")}
    assert checks["authorization-server-metadata"]["status"] == "SUCCESS", checks
    assert checks["authorization-server-metadata-cimd"]["status"] == "SUCCESS", checks
    assert checks["authorization-server-metadata"]["details"]["body"]["issuer"] == gw.issuer


def test_conformance_authorization_code_grant(gw, procs, tmp_path):
    """conformance 0.2.0-alpha's `authorization-code-grant` with the
    pre-registered public client: it prints the authorization URL (no
    `resource`: the only route is the default) and waits on its callback;
    Chromium logs in and consents, the test delivers the callback, the suite
    redeems the code and checks the token response (JSON, no-store).

    Run as the whole `authorization` suite (both scenarios in order), not with
    `--scenario authorization-code-grant`: in 0.2.0-alpha.12 that scenario reads
    the metadata from the metadata scenario's result, which a lone `--scenario`
    run never has, so it always fails with "Invalid authorization server metadata"."""
    shots = shots_dir("conformance")
    out = tmp_path / "results"
    callback = f"http://127.0.0.1:{gw.conformance_port}/callback"
    proc = procs.start(
        "conformance-authorization",
        [NODE, CONFORMANCE_ALPHA, "authorization", "--url", gw.issuer, "--client-id", CONFORMANCE_CLIENT,
         "-p", str(gw.conformance_port), "-o", str(out)],
    )
    wait_for(proc.log, r"Callback server started", proc.popen)
    url = wait_for(proc.log, rf"(?m)^({re.escape(gw.issuer)}/authorize\?\S+)$", proc.popen).group(1)
    q = query(url)
    assert q["client_id"] == CONFORMANCE_CLIENT and q["redirect_uri"] == callback
    assert "resource" not in q

    cb = browser(url, callback, shots)
    assert query(cb)["iss"] == gw.issuer
    answer = deliver(cb)
    assert answer.status_code == 200, answer.text

    rc = proc.popen.wait(timeout=60)
    log = proc.log.read_text(errors="replace")
    assert rc == 0, f"conformance failed ({rc}):\n{log[-4000:]}"
    assert "✓ authorization-server-metadata-endpoint: 2 passed, 0 failed" in log, log
    assert "✓ authorization-code-grant: 1 passed, 0 failed" in log, log
    assert "Total: 3 passed, 0 failed" in log, log
    [grant] = conformance_checks(out, "authorization-code-grant")
    assert grant["status"] == "SUCCESS", grant
    details = grant["details"]
    assert query(details["authorizationResponseUrl"])["iss"] == gw.issuer
    assert details["body"]["token_type"] == "Bearer" and details["body"]["scope"] == "mcp"
    assert (shots / "consent.png").stat().st_size > 0
