"""docs/vectors.md names, for every public vector, the test that checks it: each named test exists."""

from __future__ import annotations

import re

from snippets import REPO

PAGE = REPO / "docs" / "vectors.md"
TESTS = REPO / "tests" / "unit" / "test_vectors.py"


def test_every_vector_names_a_test_that_exists() -> None:
    defined = set(re.findall(r"^def (test_\w+)", TESTS.read_text(encoding="utf-8"), flags=re.MULTILINE))
    rows = [line for line in PAGE.read_text(encoding="utf-8").splitlines() if re.match(r"^\| [A-Z]\d+ \|", line)]
    assert len(rows) >= 20
    for row in rows:
        named = re.findall(r"`(test_\w+)`", row)
        vector = row.split("|")[1].strip()
        if vector == "E1":  # conservation: the property tests, not a single vector test
            assert "test_invariants.py" in row
            continue
        assert named, f"vector {vector} names no test"
        assert set(named) <= defined, f"vector {vector} names {set(named) - defined}, not in {TESTS.name}"
