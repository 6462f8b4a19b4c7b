"""The examples table of docs/examples.md against a replay of every example."""

from __future__ import annotations

import json
from pathlib import Path

from snippets import REPO

from backstop.entrypoints.cli import main

EXAMPLES = REPO / "examples"
PAGE = REPO / "docs" / "examples.md"


def test_examples_table_matches_a_replay(tmp_path: Path) -> None:
    text = PAGE.read_text(encoding="utf-8")
    table = text.split("<!-- examples-table:start -->")[1].split("<!-- examples-table:end -->")[0]
    rows = [line.split("|")[1:-1] for line in table.strip().splitlines()[2:]]
    assert sorted(cell.strip().strip("`") for cell, *_ in rows) == sorted(p.name for p in EXAMPLES.glob("*.jsonl"))
    for name_cell, _, balances_cell, adl_cell in rows:
        name = name_cell.strip().strip("`")
        out = tmp_path / name
        assert main(["replay", str(EXAMPLES / name), "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        for pair in balances_cell.split(","):
            fund_id, balance = pair.split()
            assert summary["funds"][fund_id]["balance"] == balance, (name, fund_id)
        adl_events = (out / "adl-events.jsonl").read_text().splitlines()
        assert len(adl_events) == int(adl_cell), name
