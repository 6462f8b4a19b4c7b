"""docs/architecture.md names files and functions along one liquidation's path: each must exist, so the page
follows the code."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).parents[2]
PAGE = REPO / "docs" / "architecture.md"
ROW = re.compile(r"^\| \d+ \| `(?P<file>[^`]+)` \| `(?P<name>[^`]+)` \|", re.MULTILINE)


def _defines(source: str, name: str) -> bool:
    *owner, function = name.split(".")
    if owner and not re.search(rf"^class {re.escape(owner[0])}\b", source, re.MULTILINE):
        return False
    pattern = rf"^\s*(async def|def|class) {re.escape(function)}\b"
    return re.search(pattern, source, re.MULTILINE) is not None


def test_every_step_names_a_file_and_a_function_that_exist() -> None:
    rows = ROW.findall(PAGE.read_text())
    assert len(rows) >= 20, "the trace lost its steps"
    missing = [f"{file}: {name}" for file, name in rows
               if not (REPO / file).is_file() or not _defines((REPO / file).read_text(), name)]
    assert missing == []


def test_a_step_naming_what_does_not_exist_is_caught() -> None:
    source = (REPO / "services/backstop/pipeline/merge.py").read_text()
    assert _defines(source, "Merger.release")
    assert not _defines(source, "Merger.release_everything")
    assert not _defines(source, "Unmerger.release")
