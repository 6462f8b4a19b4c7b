"""Scenario runs benchmark: wall time of `backstop demo` and `backstop whatif` on each engine, in the same run.

    python benchmarks/scenarios.py [--accounts 3000] [--seed 2025]

`backstop demo` (no report): the seeded 10 Oct 2025 cascade, simulation mode deciding every liquidation, run once
per ADL policy of its default comparison. `backstop whatif`: the demo's input under
examples/whatif-demo-small-fund.toml (both runs simulated, the alternative with a smaller fund that deleverages pro
rata). Each command runs in a child process, as a user runs it; the reference engine's time is the baseline, and
the engines must agree on every head hash.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ENGINES = ("compiled", "reference")
PARAMS = HERE.parent / "examples" / "whatif-demo-small-fund.toml"


def backstop(*args: str) -> float:
    """Wall time of one backstop command in a child process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "backstop.entrypoints.cli", *args], check=True, capture_output=True)
    return time.perf_counter() - started


def heads(out: Path) -> list[str]:
    """Every run's head hash under `out` (each summary.json), in path order."""
    return [json.loads(path.read_text())["head_hash"] for path in sorted(out.rglob("summary.json"))]


def run(accounts: int, seed: int) -> dict[str, Any]:
    times: dict[str, dict[str, float]] = {"demo": {}, "whatif": {}}
    hashes: dict[str, dict[str, list[str]]] = {"demo": {}, "whatif": {}}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for engine in ENGINES:
            out = root / f"demo-{engine}"
            times["demo"][engine] = backstop("demo", "--out", str(out), "--accounts", str(accounts), "--seed",
                                             str(seed), "--no-report", "--engine", engine)
            hashes["demo"][engine] = heads(out)
        journal = root / "demo-compiled" / "input.jsonl"
        records = sum(1 for line in journal.open("rb") if line.strip())
        for engine in ENGINES:
            out = root / f"whatif-{engine}"
            times["whatif"][engine] = backstop("whatif", str(journal), "--params", str(PARAMS), "--out", str(out),
                                               "--engine", engine)
            hashes["whatif"][engine] = heads(out)
    for command, by_engine in hashes.items():
        if by_engine["compiled"] != by_engine["reference"]:
            raise SystemExit(f"the engines disagree on the head hashes of {command}: {by_engine}")
    figures: list[dict[str, Any]] = []
    for command, what in (("demo", f"backstop demo ({len(hashes['demo']['compiled'])} runs)"),
                          ("whatif", "backstop whatif (2 runs)")):
        compiled, reference = times[command]["compiled"], times[command]["reference"]
        figures += [
            {"figure": f"{what} wall time (compiled engine)", "value": round(compiled, 2), "unit": "s",
             "baseline": "reference engine", "baseline_value": round(reference, 2),
             "ratio": round(compiled / reference, 3)},
            {"figure": f"{what} wall time (reference engine)", "value": round(reference, 2), "unit": "s"},
        ]
    return {"name": "scenarios", "input": {"accounts": accounts, "seed": seed, "records": records},
            "figures": figures, "head_hashes": hashes["demo"]["compiled"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=3000, help="the demo's accounts (its default)")
    parser.add_argument("--seed", type=int, default=2025, help="the demo's seed (its default)")
    args = parser.parse_args()
    print(json.dumps(run(args.accounts, args.seed), indent=2))


if __name__ == "__main__":
    main()
