"""The journals of contract version 2's rules (tests/venue_journals.py) through both engines: every output file
byte-identical, and a snapshot taken halfway through resumes alike (docs/engines.md)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from test_compiled_replay import assert_same, run

from venue_journals import JOURNALS


@pytest.mark.parametrize("name", sorted(JOURNALS))
@pytest.mark.parametrize("points", [False, True], ids=["points-off", "points-on"])
def test_venue_journals_replay_alike(name: str, points: bool, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in JOURNALS[name]()))
    reference = run(journal, tmp_path / "reference", "reference", snapshot_every=3, adl_quantiles=points)
    compiled = run(journal, tmp_path / "compiled", "compiled", snapshot_every=3, adl_quantiles=points)
    assert_same(reference, compiled)
    snapshot = sorted((tmp_path / "reference" / "snapshots").glob("*.json"))[0]
    for reader in ("reference", "compiled"):
        tail = run(journal, tmp_path / f"tail-{reader}", reader,  # type: ignore[arg-type]
                   from_snapshot=snapshot, adl_quantiles=points)
        assert tail["accounts.json"] == reference["accounts.json"]
        assert orjson.loads(tail["summary.json"])["head_hash"] == orjson.loads(reference["summary.json"])["head_hash"]

