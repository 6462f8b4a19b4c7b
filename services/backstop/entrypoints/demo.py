"""`backstop demo`: run the seeded 10 Oct 2025 cascade through simulation mode and write the report; then run the
same cascade under other ADL policies and compare their fairness (backstop.entrypoints.policy_lab)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from backstop.adapters.files import staged_dir, write_json
from backstop.adapters.journal_file import journal_bytes
from backstop.demo_journal import journal
from backstop.engines import EngineName
from backstop.entrypoints.policy_lab import (
    DEFAULT_POLICIES,
    compare_policies,
    render_policies,
    run_policies,
    table_rows,
)
from backstop.entrypoints.whatif import render_run
from backstop.scenarios import RUN_OUTPUTS, AdlSection, Scenario, SimulationSection, read_records, run_scenario

DEMO_SCENARIO = Scenario(simulation=SimulationSection(slippage_bps="30", market_fill="0.8"),
                         adl=AdlSection())
DEMO_OUTPUTS = (*RUN_OUTPUTS, "input.jsonl", "report.html", "report-*.png", "policies")


def run_demo(out: Path, *, seed: int, accounts: int, report: bool, progress: bool,
             policies: tuple[str, ...] = DEFAULT_POLICIES, engine: EngineName = "reference") -> dict[str, Any]:
    """The demo's input, run and report into `out`, which appears whole when they have finished. `policies`: the ADL
    policies to compare on the same cascade (the demo's own run is `queue`'s), into out/policies."""
    with staged_dir(out, owned=DEMO_OUTPUTS) as staging:
        (staging / "input.jsonl").write_bytes(journal_bytes(journal(seed=seed, accounts=accounts,
                                                                    fund_balance="1000000")))
        records = read_records(staging / "input.jsonl")  # read back as every command reads a journal
        others = [name for name in policies if name != "queue"]
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), disable=not progress, transient=True) as bar:
            task = bar.add_task("10 Oct 2025 cascade", total=len(records) * (1 + len(others)))
            metrics, summary = run_scenario(records, DEMO_SCENARIO, staging, label="demo", engine=engine,
                                            progress=lambda done: bar.update(task, completed=done))
            runs, summaries = run_policies(
                records, DEMO_SCENARIO, others, staging / "policies", engine=engine,
                progress=lambda name, done: bar.update(task, completed=len(records) * (1 + others.index(name)) + done))
        run_table = render_run(metrics.as_json(), "demo")
        result = {"summary": summary, "metrics": metrics.as_json(), "table": run_table, "input_records": len(records)}
        if policies:
            compared = {name: metrics if name == "queue" else runs[name] for name in policies}
            head_hashes = {name: summary["head_hash"] if name == "queue" else summaries[name]["head_hash"]
                           for name in policies}
            comparison = compare_policies(compared, head_hashes)
            (staging / "policies").mkdir(exist_ok=True)
            write_json(staging / "policies" / "comparison.json", comparison)
            result["policies_table"] = render_policies(comparison)
        if report:
            from backstop.report.html import write_report

            facts = [("input", f"{len(records):,} records, seed {seed}, {accounts:,} accounts, BTCUSDT 1-minute bars "
                               f"of 2025-10-10 20:00-24:00 UTC (Binance)"),
                     ("simulation", "liquidations decided by the engine; fills at the mark less 30 bp for 80% of "
                                    "each order, the fund takes the rest"),
                     ("head hash", summary["head_hash"]), ("state hash", summary["state_hash"])]
            assets = {fund_id: fund["settle_asset"] for fund_id, fund in summary["funds"].items()}
            write_report(staging / "report.html", "backstop demo: the 10 Oct 2025 cascade", [("demo", metrics)],
                         facts, assets)
            if policies:
                write_report(staging / "policies" / "report.html",
                             "backstop demo: ADL policies on the 10 Oct 2025 cascade", list(compared.items()),
                             [*facts[:2], *((f"{name} head hash", hash_) for name, hash_ in head_hashes.items())],
                             assets, policy_table=table_rows(comparison))
    return result
