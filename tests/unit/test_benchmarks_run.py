"""The benchmarks still run: each one that needs no servers, on an input a thousand times smaller than the
published one, exits 0 and reports the figures the results tables and goals read (an engine API change once broke
the ADL benchmark unnoticed). Figures are not judged here: performance is measured in benchmarks/, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def figures(result: dict[str, Any]) -> set[str]:
    return {figure["figure"] for figure in result["figures"]}


@pytest.mark.parametrize(("script", "args", "expected"), [
    ("replay.py", ("--events", "3000", "--seed", "5"),
     {"backstop replay (compiled engine)", "backstop replay (reference engine)",
      "compiled engine speedup over the reference"}),
    ("adl_selection.py", ("--positions", "2000", "--alike", "200", "--seed", "5"),
     {"choose counterparties (median, compiled engine)", "choose counterparties (median, reference engine)",
      "memory per open position (state + index, compiled engine)"}),
    ("incident.py", ("--accounts", "2000", "--events", "20000", "--block", "50", "--seed", "5"),
     {"backstop replay wall time", "backstop replay rate"}),
    ("scenarios.py", ("--accounts", "30", "--seed", "5"),
     {"backstop demo (5 runs) wall time (compiled engine)", "backstop whatif (2 runs) wall time (reference engine)"}),
])
def test_benchmark_runs_and_reports_its_figures(script: str, args: tuple[str, ...], expected: set[str]) -> None:
    result = run(script, *args)
    assert expected <= figures(result), sorted(figures(result))
