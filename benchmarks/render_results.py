"""Render benchmarks/results/latest.json as the results and goals tables of benchmarks/README.md.

    python benchmarks/render_results.py            # rewrite the tables in benchmarks/README.md
    python benchmarks/render_results.py --check    # exit 1 if they differ from latest.json (tests do this)

`benchmarks/run` calls it after every suite. The tables sit between `--8<--` section markers, which the docs
site's performance page includes as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LATEST = HERE / "results" / "latest.json"
README = HERE / "README.md"
START = "<!-- --8<-- [start:{}] -->"
END = "<!-- --8<-- [end:{}] -->"


@dataclass(frozen=True)
class Goal:
    text: str
    benchmark: str
    figure: str  # the figure's name, or the start of it (latency figures end with the rate actually sent)
    field: str  # "value" or "ratio"
    at_most: bool
    target: float


# The performance goals (issues #6 and #20), each read from one figure of the latest run.
GOALS = (
    Goal("replay >= 250,000 records/s", "replay", "backstop replay", "value", False, 250_000),
    Goal("replay >= 0.45 x decode-only", "replay", "backstop replay", "ratio", False, 0.45),
    Goal("incident window < 15 s", "incident window", "backstop replay wall time", "value", True, 15),
    Goal("service >= 50,000 records/s", "service", "service end to end", "value", False, 50_000),
    Goal("service >= 0.3 x raw consume", "service", "service end to end", "ratio", False, 0.3),
    Goal("latency p99 <= 50 ms, background 20,000/s", "latency",
         "liquidation -> ADL event, p99, background 20,000/s", "value", True, 50),
    Goal("latency p99 <= 50 ms, background 1,000/s", "latency",
         "liquidation -> ADL event, p99, background 1,000/s", "value", True, 50),
    Goal("ADL selection <= 5 ms median at 1,000,000 positions", "adl selection",
         "choose counterparties (median, compiled engine)", "value", True, 5),
    Goal("memory <= 1 KiB per open position", "adl selection", "memory per open position", "value", True, 1024),
)


def _number(value: float | int) -> str:
    return f"{value:,}"


def results_table(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [f"Run of {report['when']} on {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
             f"Python {machine['python']}; load average {machine.get('load_at_start')} at start"
             + (f"; {report['note']}" if report.get("note") else "") + ".", "",
             "| benchmark | figure | value | baseline (same run) | ratio |", "|---|---|---|---|---|"]
    for bench in report["benchmarks"]:
        for figure in bench["figures"]:
            baseline = (f"{figure['baseline']}: {_number(figure['baseline_value'])} {figure['unit']}"
                        if "baseline" in figure else "")
            lines.append(f"| {bench['name']} | {figure['figure']} | {_number(figure['value'])} {figure['unit']} "
                         f"| {baseline} | {figure.get('ratio', '')} |")
    lines += ["", "| benchmark | input |", "|---|---|"]
    for bench in report["benchmarks"]:
        described = ", ".join(f"{key} {_number(value) if isinstance(value, int) else value}"
                              for key, value in bench["input"].items())
        lines.append(f"| {bench['name']} | {described} |")
    return "\n".join(lines)


def _find(report: dict[str, Any], goal: Goal) -> dict[str, Any] | None:
    for bench in report["benchmarks"]:
        if bench["name"] == goal.benchmark:
            for figure in bench["figures"]:
                if figure["figure"].startswith(goal.figure) and goal.field in figure:
                    return dict(figure)
    return None


def goals_table(report: dict[str, Any]) -> str:
    lines = ["| goal | latest run | met |", "|---|---|---|"]
    for goal in GOALS:
        figure = _find(report, goal)
        if figure is None:
            lines.append(f"| {goal.text} | not measured in this run | |")
            continue
        value = figure[goal.field]
        shown = f"{_number(value)} {figure['unit']}" if goal.field == "value" else f"{value} x"
        met = value <= goal.target if goal.at_most else value >= goal.target
        lines.append(f"| {goal.text} | {shown} | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def _replace(text: str, section: str, body: str) -> str:
    start, end = START.format(section), END.format(section)
    if start not in text or end not in text:
        raise SystemExit(f"{README} has no {start} ... {end} section")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{body}\n{end}{after}"


def rendered(readme: str, report: dict[str, Any]) -> str:
    return _replace(_replace(readme, "results", results_table(report)), "goals", goals_table(report))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's tables differ from latest.json")
    args = parser.parse_args()
    report = json.loads(LATEST.read_text(encoding="utf-8"))
    current = README.read_text(encoding="utf-8")
    expected = rendered(current, report)
    if args.check:
        if expected != current:
            print(f"{README} does not show {LATEST}: run python benchmarks/render_results.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
