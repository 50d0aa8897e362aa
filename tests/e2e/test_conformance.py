"""The official MCP server conformance suite (@modelcontextprotocol/conformance
0.1.16, run with Node 22) against the reference TypeScript server
(@modelcontextprotocol/server-everything, Streamable HTTP) directly and
through portcullis: every scenario and every check must come out the same.

The one expected difference is `dns-rebinding-protection`: it sends a request
with `Host: evil.example.com`, which the everything server accepts (so it
fails that check direct) and portcullis answers 404 (no route for that host),
so through portcullis the scenario passes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import CONFORMANCE, EVERYTHING, NODE, Portcullis, Procs, free_port

RUN_TIMEOUT = 240
PROXY_ONLY_PASSES = {"dns-rebinding-protection"}
# Scenarios the everything server passes direct: a floor, so the comparison
# never degenerates into "everything fails both ways".
MUST_PASS_DIRECT = {"server-initialize", "ping", "tools-list", "logging-set-level", "resources-list", "prompts-list"}


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    procs = Procs(tmp_path_factory.mktemp("everything-logs"))
    port = free_port()
    p = procs.start("server-everything", [NODE, EVERYTHING, "streamableHttp"], env={"PORT": str(port)})
    try:
        p.wait_ports([port])
        yield port
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def conformance_proxy(everything, tmp_path_factory):
    procs = Procs(tmp_path_factory.mktemp("conformance-proxy-logs"))
    port = free_port()
    cfg = f"""
workers: 1
listen:
  - address: 127.0.0.1:{port}
routes:
  - name: everything
    from: http://127.0.0.1:{port}/mcp
    to: http://127.0.0.1:{everything}/mcp
    mcp: {{}}
  - name: everything-rewritten
    from: http://127.0.0.1:{port}/public/everything
    to: http://127.0.0.1:{everything}/mcp
    mcp: {{}}
"""
    try:
        Portcullis(procs, tmp_path_factory.mktemp("conformance-proxy")).start(cfg, [port], name="portcullis-conformance")
        yield port
    finally:
        procs.stop_all()


def _scenario_name(dirname: str) -> str:
    # "server-tools-call-image-2026-11-22T00-09-00-591Z" -> "tools-call-image"
    base = dirname.removeprefix("server-")
    parts = base.split("-")
    for i in range(len(parts)):
        if len(parts[i]) == 4 and parts[i].isdigit() and i + 2 < len(parts) and "T" in parts[i + 2]:
            return "-".join(parts[:i])
    return base


def summarize(results: dict[str, list[tuple[str, str]]]) -> dict[str, bool]:
    return {s: all(st != "FAILURE" for _, st in checks) for s, checks in results.items()}


@pytest.fixture(scope="module")
def direct_results(everything, tmp_path_factory):
    out = tmp_path_factory.mktemp("conformance-direct")
    return _collect(f"http://127.0.0.1:{everything}/mcp", out)


def _collect(url: str, out: Path) -> dict[str, list[tuple[str, str]]]:
    r = subprocess.run(
        [NODE, CONFORMANCE, "server", "--url", url, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert r.returncode in (0, 1), f"conformance crashed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "=== SUMMARY ===" in r.stdout, r.stdout[-3000:]
    results: dict[str, list[tuple[str, str]]] = {}
    for d in sorted(out.iterdir()):
        f = d / "checks.json"
        if f.exists():
            results[_scenario_name(d.name)] = sorted((c["id"], c["status"]) for c in json.loads(f.read_text()))
    # The summary lines agree with the files.
    summary = {
        line[2:].split(":")[0]: line.startswith("✓")
        for line in r.stdout.splitlines()
        if line[:2] in ("✓ ", "✗ ")
    }
    assert summary.keys() == results.keys(), (sorted(summary), sorted(results))
    return results


def test_conformance_direct_baseline(direct_results):
    passed = {s for s, ok in summarize(direct_results).items() if ok}
    assert len(direct_results) >= 25, sorted(direct_results)
    assert MUST_PASS_DIRECT <= passed, sorted(passed)


@pytest.mark.parametrize("path", ["/mcp", "/public/everything"])
def test_conformance_through_portcullis_matches_direct(direct_results, conformance_proxy, tmp_path, path):
    proxied = _collect(f"http://127.0.0.1:{conformance_proxy}{path}", tmp_path / "out")
    assert proxied.keys() == direct_results.keys()
    diffs = {}
    for scenario, checks in direct_results.items():
        if scenario in PROXY_ONLY_PASSES:
            continue
        if proxied[scenario] != checks:
            diffs[scenario] = {"direct": checks, "through portcullis": proxied[scenario]}
    assert not diffs, json.dumps(diffs, indent=1)
    for scenario in PROXY_ONLY_PASSES:
        assert summarize(proxied)[scenario], proxied[scenario]
    # Per-scenario pass/fail, for the report.
    s_direct, s_proxy = summarize(direct_results), summarize(proxied)
    print(
        f"\nconformance via portcullis{path}: {sum(s_proxy.values())}/{len(s_proxy)} scenarios pass "
        f"(direct: {sum(s_direct.values())}/{len(s_direct)})"
    )


@pytest.mark.parametrize(
    "upstream,prefix",
    [
        pytest.param("mcp2_sse", "/v2sse", id="mcp2-MCPServer"),
        pytest.param("mcp1_http", "/v1/mcp", id="mcp1-FastMCP"),
    ],
)
def test_conformance_python_servers_same_through_portcullis(request, gateway, tmp_path, upstream, prefix):
    """The same comparison for the Python SDK servers of this suite (they
    lack the conformance tools, so fewer scenarios pass, but every check must
    still come out the same through portcullis)."""
    direct = _collect(request.getfixturevalue(upstream).url, tmp_path / "direct")
    proxied = _collect(gateway.url(prefix), tmp_path / "proxied")
    assert proxied.keys() == direct.keys()
    diffs = {
        s: {"direct": c, "through portcullis": proxied[s]}
        for s, c in direct.items()
        if s not in PROXY_ONLY_PASSES and proxied[s] != c
    }
    assert not diffs, json.dumps(diffs, indent=1)
    assert summarize(direct)["server-initialize"] and summarize(direct)["tools-list"]
