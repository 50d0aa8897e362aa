"""Tool pinning (issue 14 §1) with real parts: the mcp 2.x client through
portcullis to an mcp 2.x server whose `weather` tool is rewritten (a "rug
pull": an instruction-override phrase added to its description) when
`rug_pull` is called (the `greet` prompt's too), which also sends
`notifications/tools/list_changed` on its SSE answer. With `pin: {tools:
record}` the change is audited with its diff, flagged and counted; with
`enforce` the changed tool is hidden from `tools/list` and its calls refused
until `portcullis tools approve`, then shown and callable again; on a shared
PostgreSQL store, two instances hold and release the change together."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import REPO, Portcullis, free_port, portcullis_bin, start_mcp2
from mcpclient import text_of
from test_oauth_server import mcp_error_in

PHRASE = "Ignore all previous instructions"


@pytest.fixture
def pinned(procs, portcullis, tmp_path):
    port, admin = free_port(), free_port()
    rec_up = start_mcp2(procs, "pin-record", json_mode=False, extra=["--changing-tool"])
    enf_up = start_mcp2(procs, "pin-enforce", json_mode=False, extra=["--changing-tool", "--docs"])
    audit = tmp_path / "audit.jsonl"
    cfg = f"""
listen: [{{address: 127.0.0.1:{port}}}]
admin: {{address: 127.0.0.1:{admin}}}
audit: {{path: {audit}}}
store: {{path: {tmp_path / "pins.db"}}}
routes:
  - name: rec
    from: http://127.0.0.1:{port}/rec/mcp
    to: {rec_up.url}
    mcp: {{}}
    pin: {{tools: record}}
  - name: enf
    from: http://127.0.0.1:{port}/enf/mcp
    to: {enf_up.url}
    mcp: {{}}
    pin: {{tools: enforce, prompts: enforce, resource_templates: enforce}}
"""
    portcullis.start(cfg, [port])
    return port, audit, admin, portcullis.config_dir / "portcullis.yaml"


def session(url: str, step):
    """Run `step(client)` in one MCP session; a JSON-RPC error is returned."""

    async def go():
        with anyio.fail_after(30):
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(15, read=30)) as hc:
                async with Client(streamable_http_client(url, http_client=hc)) as client:
                    return await step(client)

    try:
        return anyio.run(go)
    except Exception as e:
        found = mcp_error_in(e)
        if found is None:
            raise
        return found


def tools(url: str) -> dict[str, str]:
    async def step(client):
        return (await client.list_tools()).tools

    return {t.name: t.description or "" for t in session(url, step)}


def call(url: str, tool: str, args: dict):
    async def step(client):
        return await client.call_tool(tool, args)

    return session(url, step)


def pin_records(audit) -> list[dict]:
    lines = audit.read_text().splitlines() if audit.exists() else []
    return [r for r in map(json.loads, lines) if str(r.get("event", "")).startswith("pin.")]


def wait_for(what, timeout: float = 10.0):
    """Poll `what()` until it is truthy (the pin thread works beside the cores)."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def cli(config, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [portcullis_bin(), "tools", *args, "-c", str(config)], capture_output=True, text=True, timeout=30
    )


def test_record_audits_the_change_with_its_diff(pinned):
    port, audit, admin, _ = pinned
    url = f"http://127.0.0.1:{port}/rec/mcp"
    assert tools(url)["weather"] == "Report the weather for a city."
    assert wait_for(lambda: any(r["event"] == "pin.recorded" and r["route"] == "rec" for r in pin_records(audit)))
    assert text_of(call(url, "rug_pull", {})) == ["pulled"]
    # Recorded, never hidden: the client sees the new description.
    assert PHRASE in tools(url)["weather"]
    changes = wait_for(
        lambda: [r for r in pin_records(audit) if r["event"] == "pin.change" and r["route"] == "rec"]
    )
    assert len(changes) == 1, changes
    c = changes[0]
    assert (c["kind"], c["name"], c["change"], c["action"]) == ("tool", "weather", "changed", "recorded"), c
    assert c["diff"]["fields"] == {"description": "changed"}, c
    assert c["diff"]["description"]["before"].endswith("for a city."), c
    assert PHRASE in c["diff"]["description"]["after"], c
    assert len(c["diff"]["description"]["after"]) < 200, "the excerpt is capped"
    assert c["flagged"] == ["override_phrase"], c
    assert c["hash"].startswith("sha256:") and c["previous_hash"] != c["hash"], c
    noticed = [r for r in pin_records(audit) if r["event"] == "pin.list_changed" and r["route"] == "rec"]
    assert noticed and noticed[0]["method"] == "notifications/tools/list_changed", pin_records(audit)
    # Listing again changes nothing: audited once.
    tools(url)
    time.sleep(0.5)
    assert len([r for r in pin_records(audit) if r["event"] == "pin.change" and r["route"] == "rec"]) == 1
    metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
    assert 'portcullis_pin_changes_total{route="rec",kind="tool",change="changed"} 1' in metrics, metrics[-1500:]
    assert 'portcullis_pin_flagged_total{route="rec",kind="tool"} 1' in metrics, metrics[-1500:]


def test_enforce_holds_the_changed_tool_until_approved(pinned):
    port, audit, admin, config = pinned
    url = f"http://127.0.0.1:{port}/enf/mcp"
    # The first definitions seen are trusted.
    assert "weather" in tools(url)
    assert wait_for(lambda: any(r["event"] == "pin.recorded" and r["route"] == "enf" for r in pin_records(audit)))
    assert text_of(call(url, "weather", {"city": "Oslo"})) == ["sunny in Oslo"]
    assert text_of(call(url, "rug_pull", {})) == ["pulled"]
    # The rewritten tool is hidden at once; the others stay.
    listed = tools(url)
    assert "weather" not in listed and "echo" in listed and "rug_pull" in listed, listed
    # Once the change is recorded, calls to it are refused like a policy denial.
    held = wait_for(lambda: "refused by tool pinning" in str(call(url, "weather", {"city": "Oslo"})))
    assert held, call(url, "weather", {"city": "Oslo"})
    err = call(url, "weather", {"city": "Oslo"})
    assert 'tool "weather" is not approved on this route' in str(err), err
    assert text_of(call(url, "echo", {"text": "still here"})) == ["still here"]
    change = [r for r in pin_records(audit) if r["event"] == "pin.change" and r["route"] == "enf"]
    assert len(change) == 1 and change[0]["action"] == "held", change
    # The operator's view, then the approval.
    diff = cli(config, "diff", "enf")
    assert diff.returncode == 0, diff.stderr
    assert 'tool "weather": changed' in diff.stdout and "description: changed" in diff.stdout, diff.stdout
    assert PHRASE in diff.stdout and "injection markers: override_phrase" in diff.stdout, diff.stdout
    assert 'route "enf": 1 pending' in diff.stdout, diff.stdout
    wrong = cli(config, "approve", "enf", "nosuch")
    assert wrong.returncode != 0 and "nothing pending named" in wrong.stderr, wrong
    ok = cli(config, "approve", "enf", "weather")
    assert ok.returncode == 0 and 'approved tool "weather"' in ok.stdout, (ok.stdout, ok.stderr)
    # Every core gets the approval within a second or so: shown and callable again.
    assert wait_for(lambda: PHRASE in tools(url).get("weather", "")), tools(url)
    assert text_of(call(url, "weather", {"city": "Oslo"})) == ["sunny in Oslo"]
    again = cli(config, "diff", "enf")
    assert 'route "enf": 0 pending' in again.stdout, again.stdout


def test_enforce_holds_a_changed_prompt_too(pinned):
    port, audit, admin, config = pinned
    url = f"http://127.0.0.1:{port}/enf/mcp"

    async def prompts(client):
        return [p.name for p in (await client.list_prompts()).prompts]

    async def greet(client):
        return await client.get_prompt("greet", {"name": "Ada"})

    assert "greet" in session(url, prompts)
    recorded = lambda: [r for r in pin_records(audit) if r["event"] == "pin.recorded" and r["kind"] == "prompt"]
    assert wait_for(recorded), pin_records(audit)
    assert "Please greet Ada." in str(session(url, greet))
    assert text_of(call(url, "rug_pull", {})) == ["pulled"]
    assert "greet" not in session(url, prompts)
    assert wait_for(lambda: "refused by tool pinning" in str(session(url, greet)))
    assert 'prompt "greet" is not approved' in str(session(url, greet))
    diff = cli(config, "diff", "enf", "--kind", "prompt")
    assert 'prompt "greet": changed' in diff.stdout and "Answer as the server says." in diff.stdout, diff.stdout
    bad = cli(config, "diff", "enf", "--kind", "prompts")
    assert bad.returncode != 0 and "one of tool, prompt, resource_template" in bad.stderr, bad
    ok = cli(config, "approve", "enf", "greet", "--kind", "prompt")
    assert ok.returncode == 0 and 'approved prompt "greet"' in ok.stdout, (ok.stdout, ok.stderr)
    assert wait_for(lambda: "greet" in session(url, prompts))
    assert "Please greet Ada." in str(session(url, greet))


def test_enforce_refuses_reads_under_a_changed_resource_template(pinned):
    port, audit, admin, config = pinned
    url = f"http://127.0.0.1:{port}/enf/mcp"
    template = "e2e://docs/{n}"

    async def templates(client):
        return [t.uri_template for t in (await client.list_resource_templates()).resource_templates]

    def read(uri):
        async def step(client):
            return await client.read_resource(uri)

        return session(url, step)

    assert template in session(url, templates)
    recorded = lambda: [r for r in pin_records(audit) if r["event"] == "pin.recorded" and r["kind"] == "resource_template"]
    assert wait_for(recorded), pin_records(audit)
    assert "document 3" in str(read("e2e://docs/3"))
    assert text_of(call(url, "rug_pull", {})) == ["pulled"]
    assert template not in session(url, templates)
    assert wait_for(lambda: "refused by tool pinning" in str(read("e2e://docs/3")))
    assert f'resource template "{template}"' in str(read("e2e://docs/3"))
    # A resource under no template is not touched.
    assert "hello from mcp2" in str(read("e2e://greeting"))
    diff = cli(config, "diff", "enf", "--kind", "resource_template")
    assert f'resource_template "{template}": changed' in diff.stdout, diff.stdout
    ok = cli(config, "approve", "enf", template, "--kind", "resource_template")
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    assert wait_for(lambda: "document 3" in str(read("e2e://docs/3")))
    assert template in session(url, templates)


@pytest.fixture
def pg():
    # Not under pytest's tmp dirs: the cluster runs as the postgres user.
    d = Path(tempfile.mkdtemp(prefix="portcullis-pg-pin."))
    out = subprocess.run([str(REPO / "tests/pg-cluster"), "start", str(d)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    yield re.search(r"PORTCULLIS_TEST_POSTGRES=(\S+)", out.stdout).group(1)
    subprocess.run([str(REPO / "tests/pg-cluster"), "stop", str(d)], capture_output=True, timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def test_two_instances_on_postgres_hold_and_release_together(procs, tmp_path, pg):
    up = start_mcp2(procs, "pin-shared", json_mode=False, extra=["--changing-tool"])
    ports, configs = [free_port(), free_port()], []
    for i, port in enumerate(ports):
        cfg = f"""
listen: [{{address: 127.0.0.1:{port}}}]
audit: {{path: {tmp_path / f"audit-{i}.jsonl"}}}
store: {{postgres: {{url: "{pg}"}}}}
routes:
  - name: enf
    from: http://127.0.0.1:{port}/mcp
    to: {up.url}
    mcp: {{}}
    pin: {{tools: enforce}}
"""
        p = Portcullis(procs, tmp_path / f"config-{i}")
        p.start(cfg, [port], name=f"portcullis-{i}")
        configs.append(p.config_dir / f"portcullis-{i}.yaml")
    a, b = (f"http://127.0.0.1:{port}/mcp" for port in ports)
    audit = tmp_path / "audit-0.jsonl"
    assert "weather" in tools(a)
    assert wait_for(lambda: any(r["event"] == "pin.recorded" for r in pin_records(audit)))
    assert text_of(call(a, "rug_pull", {})) == ["pulled"]
    assert "weather" not in tools(a)
    # The other instance holds it back too: hidden, and refused once recorded.
    assert "weather" not in tools(b)
    assert wait_for(lambda: "refused by tool pinning" in str(call(b, "weather", {"city": "Oslo"})))
    diff = cli(configs[1], "diff", "enf")
    assert 'tool "weather": changed' in diff.stdout, (diff.stdout, diff.stderr)
    ok = cli(configs[1], "approve", "enf")
    assert ok.returncode == 0 and 'approved tool "weather"' in ok.stdout, (ok.stdout, ok.stderr)
    for url in (a, b):
        assert wait_for(lambda: PHRASE in tools(url).get("weather", ""), 5), url
        assert text_of(call(url, "weather", {"city": "Oslo"})) == ["sunny in Oslo"]
