"""The compiled engine's canonical JSON and hash chain (crates/backstop-engine/src/canonical.rs) against orjson and
hashlib, on every output file the reference writes for the examples: the records written again byte for byte,
each record's chain hash recomputed, and the indented documents (summary, accounts, snapshots) alike."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from backstop import _engine
from backstop.core.hashing import GENESIS_HASH
from backstop.entrypoints.replay import ReplayOptions, replay

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.jsonl"))


@pytest.mark.parametrize("journal", EXAMPLES, ids=lambda path: path.stem)
def test_outputs_of_the_examples_are_written_alike(journal: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    replay(ReplayOptions(journal=journal, out=out, snapshot_every=3))
    for name in ("fund-ledger.jsonl", "adl-events.jsonl", "findings.jsonl", "dead-letter.jsonl"):
        for line in (out / name).read_bytes().splitlines():
            assert _engine.canonical_reencode(line, False) == line
    for name in ("fund-ledger.jsonl", "adl-events.jsonl"):
        previous = GENESIS_HASH
        for line in (out / name).read_bytes().splitlines():
            record = orjson.loads(line)
            assert record["prev_hash"] == previous
            assert _engine.canonical_chain_hash(line) == record["hash"]
            previous = record["hash"]
    documents = [out / "summary.json", out / "accounts.json", *sorted((out / "snapshots").glob("*.json"))]
    assert len(documents) > 2
    for path in documents:
        written = path.read_bytes()
        assert _engine.canonical_reencode(written, True) + b"\n" == written
