"""The docs site builds with mkdocs in strict mode: a broken link, a link to a missing heading or a page left out of
the nav fails the build (mkdocs.yml's `validation`). It builds offline: nothing in mkdocs.yml fetches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from snippets import REPO


def _build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    return subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(site)], cwd=root,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    done = _build(REPO, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "operations" / "index.html").is_file()
    performance = (tmp_path / "site" / "performance" / "index.html").read_text(encoding="utf-8")
    # the results table, included from benchmarks/README.md
    assert "choose counterparties (median, compiled engine)" in performance


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    (root / "benchmarks").mkdir()
    shutil.copy(REPO / "benchmarks" / "README.md", root / "benchmarks" / "README.md")
    return root


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    with (root / "docs" / "index.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [nothing](no-such-page.md) and [a heading](design.md#no-such-heading).\n")
    done = _build(root, tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr and "no-such-heading" in done.stderr


def test_a_page_left_out_of_the_nav_fails_the_build(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8")
    done = _build(root, tmp_path / "site")
    assert done.returncode != 0 and "orphan.md" in done.stderr
