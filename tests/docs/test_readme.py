"""The README stays a front page: short, and every link in it leads to a file of the repository (the docs site's
strict build checks the links of docs/, not the README's)."""

from __future__ import annotations

import re

from snippets import REPO

README = REPO / "README.md"


def test_readme_is_at_most_10000_characters() -> None:
    assert len(README.read_text(encoding="utf-8")) <= 10_000


def test_readme_links_lead_to_files() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link]
    assert local, "the README links to the docs"
    missing = [link for link in local if not (REPO / link).exists()]
    assert missing == []


def test_ci_runs_exactly_scripts_test() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^exec scripts/test \"\$@\"$", ci, flags=re.MULTILINE)
