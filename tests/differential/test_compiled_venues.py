"""The journals of contract version 2's rules (tests/venue_journals.py) through both engines: every output file
byte-identical, and a snapshot taken halfway through resumes alike (docs/engines.md)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from test_compiled_replay import assert_same, run

from property.test_numeric_extremes import extreme_journals
from venue_journals import JOURNALS


@pytest.mark.parametrize("name", sorted(JOURNALS))
def test_venue_journals_replay_alike(name: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in JOURNALS[name]()))
    reference = run(journal, tmp_path / "reference", "reference", snapshot_every=3)
    compiled = run(journal, tmp_path / "compiled", "compiled", snapshot_every=3)
    assert_same(reference, compiled)
    snapshot = sorted((tmp_path / "reference" / "snapshots").glob("*.json"))[0]
    for reader in ("reference", "compiled"):
        tail = run(journal, tmp_path / f"tail-{reader}", reader, from_snapshot=snapshot)  # type: ignore[arg-type]
        assert tail["accounts.json"] == reference["accounts.json"]
        assert orjson.loads(tail["summary.json"])["head_hash"] == orjson.loads(reference["summary.json"])["head_hash"]


@settings(max_examples=40, deadline=None)
@given(journal=extreme_journals())
def test_journals_at_the_bounds_replay_alike(journal: list[dict[str, object]],
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """docs/design.md §9 at its edges (tests/extremes.py): the largest and smallest steps, brackets whose mmr comes
    close to 1, balances near the bounds. Both engines give the same bytes, or stop alike."""
    directory = tmp_path_factory.mktemp("bounds")
    path = directory / "journal.jsonl"
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in journal))
    reference = run(path, directory / "reference", "reference")
    compiled = run(path, directory / "compiled", "compiled")
    assert_same(reference, compiled)
