"""benchmarks/README.md shows benchmarks/results/latest.json: its tables are rendered from it, never typed."""

from __future__ import annotations

import json
import subprocess
import sys

from snippets import REPO

SCRIPT = REPO / "benchmarks" / "render_results.py"


def test_committed_tables_match_latest_json() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_check_fails_when_the_json_moves() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import render_results
    finally:
        sys.path.remove(str(SCRIPT.parent))
    report = json.loads(render_results.LATEST.read_text(encoding="utf-8"))
    readme = render_results.README.read_text(encoding="utf-8")
    assert render_results.rendered(readme, report) == readme
    report["benchmarks"][0]["figures"][0]["value"] += 1
    moved = render_results.rendered(readme, report)
    assert moved != readme and f"{report['benchmarks'][0]['figures'][0]['value']:,}" in moved
