"""The compiled engine's COPY text of stored output records (backstop.pipeline.copy_text.table_copy) holds exactly
what the Python path stored of them before: the position, each named field as text (None for null or missing),
and the canonical JSON line itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from backstop.adapters.postgres.store import POSTING_COLUMNS
from backstop.engines import compiled_available
from backstop.entrypoints.cli import main
from backstop.pipeline.copy_text import copy_rows, table_copy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.skipif(compiled_available() is not None, reason="the compiled engine is not built")


def python_rows(lines: bytes, columns: tuple[str, ...], first: int) -> list[tuple[str | None, ...]]:
    """As the store wrote an output line's row before: its fields as the JSON has them, made text."""
    rows = []
    for position, line in enumerate(lines.splitlines(), start=first):
        fields: dict[str, Any] = orjson.loads(line)
        rows.append((str(position), *(None if fields.get(c) is None else str(fields[c]) for c in columns),
                     line.decode()))
    return rows


def test_postings_of_a_replay_as_copy_text(tmp_path: Path) -> None:
    assert main(["replay", str(EXAMPLES / "07-adl-lab.jsonl"), "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "postings.jsonl").read_bytes()
    assert lines.count(b"\n") > 10
    assert copy_rows(table_copy(lines, POSTING_COLUMNS, 41)) == python_rows(lines, POSTING_COLUMNS, 41)


def test_escapes_nulls_and_missing_fields() -> None:
    lines = (orjson.dumps({"amount": "1.5", "fill_id": None, "id": "p\t1\\x\n", "seq": 7}, option=orjson.OPT_SORT_KEYS)
             + b"\n" + orjson.dumps({"id": "p-2", "seq": 8}) + b"\n")
    columns = ("id", "seq", "amount", "fill_id")
    text = table_copy(lines, columns, 1)
    assert text.count(b"\n") == 2  # the escaped line ends are not row ends
    assert copy_rows(text) == python_rows(lines, columns, 1)
    assert table_copy(b"", columns, 1) == b""
