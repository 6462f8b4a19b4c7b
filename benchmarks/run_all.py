"""Run the benchmark suite, write benchmarks/results/latest.json and a dated copy, and render the tables of
benchmarks/README.md from it (render_results.py).

    benchmarks/run [--events N] [--seed S] [--service-events N] [--skip NAME ...] [--note TEXT]

replay, profile (needs Linux perf), scenarios, incident, adl, memory, idstore need nothing; service and
latency need the local servers (deploy/local/postgres start && deploy/local/kafka start).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import adl_selection  # noqa: E402
import idstore  # noqa: E402
import incident  # noqa: E402
import latency  # noqa: E402
import machine  # noqa: E402
import memory  # noqa: E402
import render_results  # noqa: E402
import replay  # noqa: E402
import replay_profile  # noqa: E402
import scenarios  # noqa: E402
import service  # noqa: E402

RESULTS = HERE / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--service-events", type=int, default=200_000, help="events for the service benchmark")
    parser.add_argument("--note", default="", help="conditions of this run, printed under the table's title")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["replay", "profile", "scenarios", "incident", "adl", "memory", "idstore",
                                 "service", "latency"])
    args = parser.parse_args()
    now = datetime.datetime.now(datetime.UTC)  # a report's date, never a ledger input
    host = machine.describe()  # before the suite, so the load average is the one it started under
    runs: list[tuple[str, Any]] = [
        ("replay", lambda: replay.run(args.events, args.seed, ["compiled", "reference"])),
        ("profile", lambda: replay_profile.run(args.events, args.seed)),
        ("scenarios", lambda: scenarios.run(3000, 2025)),
        ("incident", lambda: incident.run(437_000, 3_240_000, 11_279, 7)),
        ("adl", lambda: adl_selection.run(1_000_000, args.seed)),
        ("memory", lambda: memory.run(10_000, 250_000, 11)),
        ("idstore", lambda: idstore.run([10_000_000, 100_000_000], 10_000_000, 7)),
        ("service", lambda: service.run(args.service_events, args.seed)),
        ("latency", lambda: latency.run([20_000, 1_000], 15, 10)),
    ]
    benchmarks = []
    for name, bench in runs:
        if name in args.skip:
            continue
        print(f"benchmark: {name}", file=sys.stderr, flush=True)
        try:
            result = bench()
            if result is not None:  # None: skipped, the benchmark said why
                benchmarks.append(result)
        except OSError as error:
            print(f"{name} benchmark skipped: servers not reachable ({error}); start them with "
                  f"deploy/local/postgres start && deploy/local/kafka start", file=sys.stderr)
    report = {"when": now.strftime("%Y-%m-%d %H:%M UTC"), "machine": host, "note": args.note,
              "benchmarks": benchmarks}
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    (RESULTS / "latest.json").write_text(text)
    (RESULTS / f"{now.strftime('%Y-%m-%dT%H%M')}.json").write_text(text)
    readme = render_results.README
    readme.write_text(render_results.rendered(readme.read_text(encoding="utf-8"), report), encoding="utf-8")
    print(render_results.results_table(report))
    print()
    print(render_results.goals_table(report))


if __name__ == "__main__":
    main()
