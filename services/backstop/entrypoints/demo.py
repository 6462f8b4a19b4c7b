"""`backstop demo`: run the seeded 10 Oct 2025 cascade through simulation mode and write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from backstop.adapters.files import staged_dir
from backstop.adapters.journal_file import journal_bytes
from backstop.demo import journal
from backstop.entrypoints.whatif import (
    RUN_OUTPUTS,
    AdlSection,
    Scenario,
    SimulationSection,
    read_records,
    render_run,
    run_scenario,
)

DEMO_SCENARIO = Scenario(simulation=SimulationSection(slippage_bps="30", market_fill="0.8"),
                         adl=AdlSection())
DEMO_OUTPUTS = (*RUN_OUTPUTS, "input.jsonl", "report.html", "report-*.png")


def run_demo(out: Path, *, seed: int, accounts: int, report: bool, progress: bool) -> dict[str, Any]:
    """The demo's input, run and report into `out`, which appears whole when they have finished."""
    with staged_dir(out, owned=DEMO_OUTPUTS) as staging:
        (staging / "input.jsonl").write_bytes(journal_bytes(journal(seed=seed, accounts=accounts,
                                                                    fund_balance="1000000")))
        records = read_records(staging / "input.jsonl")  # read back as every command reads a journal
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), disable=not progress, transient=True) as bar:
            task = bar.add_task("10 Oct 2025 cascade", total=len(records))
            metrics, summary = run_scenario(records, DEMO_SCENARIO, staging, label="demo",
                                            progress=lambda done: bar.update(task, completed=done))
        run_table = render_run(metrics.as_json(), "demo")
        result = {"summary": summary, "metrics": metrics.as_json(), "table": run_table, "input_records": len(records)}
        if report:
            from backstop.report.html import write_report

            facts = [("input", f"{len(records):,} records, seed {seed}, {accounts:,} accounts, BTCUSDT 1-minute bars "
                               f"of 2025-10-10 20:00-24:00 UTC (Binance)"),
                     ("simulation", "liquidations decided by the engine; fills at the mark less 30 bp for 80% of "
                                    "each order, the fund takes the rest"),
                     ("head hash", summary["head_hash"]), ("state hash", summary["state_hash"])]
            write_report(staging / "report.html", "backstop demo: the 10 Oct 2025 cascade", [("demo", metrics)],
                         facts, {fund_id: fund["settle_asset"] for fund_id, fund in summary["funds"].items()})
    return result
