"""The topic contract as other tools read it: the AsyncAPI project's parser accepts schemas/json/asyncapi.json as it
is, from any folder, and ajv (a second JSON Schema implementation) validates every output record of the demo.

The node tools (tools/contract: pinned in package-lock.json) are installed by scripts/test. Without node the
node checks are skipped with the reason; with node but without the packages they fail, saying how to install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from snippets import REPO

from backstop.entrypoints.cli import main
from backstop.wire import schemas

TOOLS = REPO / "tools" / "contract"
SCHEMAS = REPO / "schemas" / "json"
ASYNCAPI = SCHEMAS / "asyncapi.json"


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [value for key, value in node.items() if key == "$ref"] + [
            ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _references(item)]
    return []


def test_the_asyncapi_document_refers_only_to_itself() -> None:
    document = json.loads(ASYNCAPI.read_text(encoding="utf-8"))
    assert document["asyncapi"].startswith("3.")
    references = _references(document)
    assert references and all(ref.startswith("#/") for ref in references)
    for ref in references:  # every reference resolves inside the document
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part]


def test_every_record_schema_is_a_message_of_the_document() -> None:
    document = schemas.asyncapi()
    payloads = {message["payload"]["$ref"].rsplit("/", 1)[1] for message in document["components"]["messages"].values()}
    assert payloads == {name for name in schemas.json_schemas() if name != "output-finding"}  # findings: no topic


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the AsyncAPI parser and ajv checks need node >= 20 "
                    "(Debian: apt-get install nodejs npm)")
    if not (TOOLS / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail("tools/contract/node_modules is missing: scripts/test installs it "
                    "(or: npm ci --prefix tools/contract)", pytrace=False)
    return node


def _check(cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_node(), str(TOOLS / "check.mjs"), *arguments], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("contract") / "demo"
    assert main(["demo", "--out", str(out), "--no-report", "--no-policies"]) == 0
    # the demo runs without quantile points (as replay by default): its journal replayed with them gives the records
    points = out.parent / "points"
    assert main(["replay", str(out / "input.jsonl"), "--adl-quantiles", "--out", str(points)]) == 0
    (out / "adl-quantiles.jsonl").write_bytes((points / "adl-quantiles.jsonl").read_bytes())
    return out


def test_parser_and_ajv_accept_the_contract_and_every_demo_record(demo: Path, tmp_path: Path) -> None:
    done = _check(tmp_path, "--asyncapi", str(ASYNCAPI), "--schemas", str(SCHEMAS), "--records", str(demo))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "asyncapi: ok" in done.stdout
    for stream in ("fund-ledger", "adl-events", "findings", "postings", "adl-quantiles"):
        count = len((demo / f"{stream}.jsonl").read_text().splitlines())
        assert count > 0 and f"{stream}.jsonl: {count} of {count} valid" in done.stdout, done.stdout


def test_ajv_refuses_a_record_off_the_schema(demo: Path, tmp_path: Path) -> None:
    lines = (demo / "adl-events.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["qty"] = 10  # a number where the contract says a decimal string
    (tmp_path / "adl-events.jsonl").write_text(json.dumps(record) + "\n")
    done = _check(tmp_path, "--asyncapi", str(ASYNCAPI), "--schemas", str(SCHEMAS), "--records", str(tmp_path))
    assert done.returncode == 1 and "not a valid output-adl-event" in done.stdout, done.stdout


def test_the_parser_refuses_a_broken_document(tmp_path: Path) -> None:
    document = json.loads(ASYNCAPI.read_text(encoding="utf-8"))
    del document["operations"]["receiveFill"]["action"]
    broken = tmp_path / "asyncapi.json"
    broken.write_text(json.dumps(document))
    done = _check(tmp_path, "--asyncapi", str(broken), "--schemas", str(SCHEMAS))
    assert done.returncode == 1 and "asyncapi: FAIL" in done.stdout, done.stdout
