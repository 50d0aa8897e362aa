"""`portcullis schema`: the configuration's JSON Schema, as an editor would use
it, and the option reference made from it. Every example configuration in
config/ is valid under the schema, the committed copies
(config/portcullis.schema.json, config/REFERENCE.md) are current, and the
mistakes that `portcullis check` rejects are rejected by the schema too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import jsonschema
import pytest
import yaml

from conftest import REPO, portcullis_bin

CONFIG = REPO / "config"
EXAMPLES = sorted(CONFIG.glob("*.yaml")) + sorted((REPO / "deploy").glob("**/portcullis.yaml"))


@pytest.fixture(scope="module")
def schema() -> dict:
    out = subprocess.run([portcullis_bin(), "schema"], capture_output=True, text=True, timeout=30, check=True)
    s = json.loads(out.stdout)
    jsonschema.Draft202012Validator.check_schema(s)
    return s


def test_committed_schema_is_current(schema):
    committed = json.loads((CONFIG / "portcullis.schema.json").read_text())
    assert committed == schema, "regenerate: portcullis schema > config/portcullis.schema.json"


def test_committed_reference_is_current():
    out = subprocess.run(
        [portcullis_bin(), "schema", "--markdown"], capture_output=True, text=True, timeout=30, check=True
    )
    assert (CONFIG / "REFERENCE.md").read_text() == out.stdout, (
        "regenerate: portcullis schema --markdown > config/REFERENCE.md"
    )
    # Every section a type links to exists.
    anchors = set(re.findall(r'<a id="([a-z0-9_]+)"></a>', out.stdout))
    anchors |= {h.lower() for h in re.findall(r"^## (\S+)$", out.stdout, re.M)}
    links = set(re.findall(r"\]\(#([a-z0-9_]+)\)", out.stdout))
    assert links <= anchors, links - anchors


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_configs_are_valid(schema, path):
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(path.read_text())))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def route_policy(doc: dict) -> list:
    return doc["routes"][0].setdefault("policy", [])


MISTAKES = {
    "unknown top-level key": lambda d: d.update(wrokers=2),
    "workers out of range": lambda d: d.update(workers=0),
    "duration without a unit we know": lambda d: d.update(shutdown_timeout="10 parsecs"),
    "unknown route key": lambda d: d["routes"][0].update(upstream="http://x"),
    "unknown policy criterion": lambda d: route_policy(d).append({"allow": {"mcp_methd": {"equals": "ping"}}}),
    "audit overflow mode": lambda d: d.update(audit={"path": "-", "on_overflow": "explode"}),
    "audit arguments mode": lambda d: d["routes"][0].update(audit_arguments="everything"),
}


@pytest.mark.parametrize("mistake", MISTAKES, ids=list(MISTAKES))
def test_schema_and_check_reject_the_same_mistakes(schema, mistake, tmp_path):
    doc = yaml.safe_load((CONFIG / "policy-library.yaml").read_text())
    MISTAKES[mistake](doc)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    assert errors, f"the schema accepted: {mistake}"
    # The same document in a copy of config/ (its relative paths resolve).
    shutil.copytree(CONFIG, tmp_path / "config")
    bad = tmp_path / "config" / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    check = subprocess.run([portcullis_bin(), "check", "-c", str(bad)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 2, f"portcullis check accepted: {mistake}\n{check.stdout}{check.stderr}"
