"""`backstop whatif JOURNAL --policies a,b,...`: the same input replayed once per ADL policy, compared in one table.

Every run is the parameter file's [baseline] scenario (simulation, funds, instruments) with its ADL policy replaced
by a preset of docs/design.md §11 (the [baseline.adl] options, such as a floor, apply to each); each writes the
usual run directory under the policy's name, so every figure is traceable to a journal `backstop replay
--adl-policy NAME` reproduces. The table reads the engine's own fairness metrics (summary.json's `adl`, §11.4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backstop.adapters.files import OutputError, staged_dir, write_json
from backstop.core.adl_policy import ALIASES, PRESETS
from backstop.engines import EngineName
from backstop.entrypoints.whatif import WHATIF_OUTPUTS
from backstop.scenarios import (
    FUND_ADL_FIGURES,
    FUND_FIGURES,
    RunMetrics,
    Scenario,
    WhatIfError,
    WhatIfFile,
    assets_mixed,
    read_records,
    run_figure,
    run_scenario,
)
from backstop.wire.inputs import AnyRecord

DEFAULT_POLICIES = ("queue", "pro_rata", "capped_pro_rata", "min_max_leverage", "socialized")

# (row, the figure's path in a run's metrics): the fairness of each policy, then what it cost the funds.
ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("liquidations", ("liquidations",)),  # differ between policies where a simulation's cascade does
    ("ADL rounds", ("adl", "rounds")),
    ("  of them without a taker", ("adl", "rounds_without_takers")),
    ("ADL events", ("adl_events",)),
    ("ADL notional", ("adl_notional",)),
    ("deficit", ("adl", "deficit")),
    ("needed budget", ("adl", "needed")),
    ("haircut", ("adl", "haircut")),
    ("overshoot", ("adl", "overshoot")),
    ("over-use (haircut / needed)", ("adl", "over_use")),
    ("worst share of a profit taken", ("adl", "worst_share")),
    ("rank inversions by profit", ("adl", "inversions", "profit")),
    ("rank inversions by leverage", ("adl", "inversions", "leverage")),
    ("socialized loss", ("adl", "socialized")),
    ("median leverage, deleveraged", ("adl", "leverage", "hit", "p50")),
    ("median leverage, eligible", ("adl", "leverage", "eligible", "p50")),
    ("accounts affected", ("adl", "accounts_affected")),
)


def parse_policies(text: str) -> list[str]:
    """`queue,pro_rata,...`: known preset names, each once, in the order given."""
    names = [ALIASES.get(name.strip(), name.strip()) for name in text.split(",") if name.strip()]  # bitmex: queue
    unknown = [name for name in names if name not in PRESETS]
    if unknown or not names:
        raise WhatIfError(f"--policies: unknown ADL policy {', '.join(unknown) or '(none given)'}: choose from "
                          f"{', '.join(PRESETS)}")
    if len(set(names)) != len(names):
        raise WhatIfError("--policies: a policy is named twice")
    return names


def compare_policies(runs: dict[str, RunMetrics], head_hashes: dict[str, str]) -> dict[str, Any]:
    return {"policies": list(runs), "runs": {name: run.as_json() for name, run in runs.items()},
            "head_hashes": head_hashes}


def table_rows(comparison: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(row, one value per policy), values as the engine wrote them ("-" where a figure has no value)."""
    runs = [comparison["runs"][name] for name in comparison["policies"]]
    rows = [(label, [str(run_figure(run, path)) for run in runs]) for label, path in ROWS]
    funds = sorted({fund_id for run in runs for fund_id in run["funds"]})
    for fund_id in funds:
        for key in ("bad_debt", "max_drawdown", "final_balance", "inventory_upnl", "marked_balance", "cascade_needed"):
            # the drawdown over the fund ledger (the engine's, summary.json's adl), the rest the run's figures
            path = ("adl", "fund_max_drawdown", fund_id) if key == "max_drawdown" else ("funds", fund_id, key)
            rows.append((f"fund {fund_id} {FUND_FIGURES[key]}", [str(run_figure(run, path)) for run in runs]))
        if assets_mixed(runs):
            rows += [(f"fund {fund_id} {label}",
                      [str(run_figure(run, ("adl", "by_fund", fund_id, key))) for run in runs])
                     for key, label in FUND_ADL_FIGURES.items()]
    return rows


def render_policies(comparison: dict[str, Any]) -> str:
    """The comparison as a plain-text table, one column per policy."""
    rows = table_rows(comparison)
    names = comparison["policies"]
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(name), *(len(values[index]) for _, values in rows)) for index, name in enumerate(names)]
    lines = [" " * label_width + "".join(f"  {name:>{width}}" for name, width in zip(names, widths, strict=True))]
    lines += [f"{label:<{label_width}}" + "".join(f"  {value:>{width}}" for value, width in zip(values, widths,
                                                                                                strict=True))
              for label, values in rows]
    return "\n".join(lines)


def run_policies(records: Sequence[tuple[int, AnyRecord]], base: Scenario, policies: Sequence[str], out: Path, *,
                 progress: Callable[[str, int], None] | None = None, engine: EngineName = "reference",
                 ) -> tuple[dict[str, RunMetrics], dict[str, dict[str, Any]]]:
    """One run per policy (on `engine`) into out/<policy>: (metrics, summaries) by policy."""
    runs: dict[str, RunMetrics] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for name in policies:
        scenario = base.model_copy(update={"adl": base.adl.with_policy(name)})
        scenario.adl.adl_policy()  # a bad combination (a floor below 0, ...) is refused before the run
        tick = (lambda done, name=name: progress(name, done)) if progress is not None else None
        runs[name], summaries[name] = run_scenario(records, scenario, out / name, label=name, progress=tick,
                                                   engine=engine)
    return runs, summaries


def whatif_policies(journal: Path, params: WhatIfFile, policies: Sequence[str], out: Path, *, report: bool = False,
                    inputs: Sequence[Path] = (), engine: EngineName = "reference",
                    left_out: list[tuple[int, str]] | None = None) -> dict[str, Any]:
    """Every policy's run and the comparison into `out`, which appears whole when they have finished; the journal's
    lines that are not valid records go to `left_out` (read_records)."""
    if params.alternative != Scenario():
        raise WhatIfError("--policies runs every policy on the [baseline] scenario: the parameter file's "
                          "[alternative] has no place here")
    records = read_records(journal, left_out)
    try:
        with staged_dir(out, owned=WHATIF_OUTPUTS, inputs=[journal, *inputs]) as staging:
            runs, summaries = run_policies(records, params.baseline, policies, staging, engine=engine)
            comparison = compare_policies(runs, {name: s["head_hash"] for name, s in summaries.items()})
            write_json(staging / "comparison.json", comparison)
            if report:
                from backstop.report.html import write_report

                facts = [("input", f"{journal} ({len(records):,} records)"),
                         *((f"{name} head hash", summary["head_hash"]) for name, summary in summaries.items())]
                assets = {fund_id: fund["settle_asset"] for summary in summaries.values()
                          for fund_id, fund in summary["funds"].items()}
                write_report(staging / "report.html", f"backstop what-if, ADL policies: {journal.name}",
                             list(runs.items()), facts, assets, policy_table=table_rows(comparison))
    except OutputError as error:
        raise WhatIfError(str(error)) from None
    except OSError as error:
        raise WhatIfError(f"cannot write {out}: {error.strerror or error}") from None
    return comparison
