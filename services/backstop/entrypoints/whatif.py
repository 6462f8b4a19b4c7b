"""`backstop whatif`: the same input replayed under two parameter sets, side by side.

A parameter file (TOML) has a [baseline] and an [alternative] table, each optional, each of the form:

    [alternative.simulation]          # decide liquidations in the engine (the log's own are dropped)
    slippage_bps = "20"               # >= 0, < 10000
    partial = true                    # a TOML boolean
    market_fill = "0.8"               # the part of each liquidation the market absorbs (the fund takes the rest), 0..1
    [alternative.adl]                 # the ADL policy (docs/design.md §11)
    policy = "pro_rata"               # queue (default), binance, pro_rata, capped_pro_rata, min_max_leverage,
                                      # socialized, bybit, okx
    price = "mark"                    # bankruptcy, mark, floor (default: the policy's)
    floor = "1000"                    # the fund's balance floor (default 0)
    drawdown_ratio = "0.3"            # Bybit's trigger (bybit: 0.3, 0.25, 8)
    stop_ratio = "0.25"
    window_hours = 8
    [alternative.funds.MAIN]
    surplus = "trader"
    max_inventory_ratio = "0.5"
    balance_scale = "0.25"            # every top-up and draw of this fund, scaled
    [alternative.instruments.BTCUSDT]
    liquidation_fee_rate = "0.01"
    tiers = [{max_notional = "50000", mmr = "0.01", maint_amount = "0"}]

Parameters change the input records themselves (fund and instrument specs, fund transfers) or the engine's
policies, so each run writes its own journal: every number in the comparison is traceable to a log that
`backstop replay` reproduces (with the run's ADL policy, which its scenario.json records). A changed record is
checked by the wire contract as that replay will read it; a parameter that makes one the contract refuses is
refused, with the journal line and the reason.

`--policies a,b,...` replays the input once per ADL policy instead, each on the [baseline] scenario, and compares
them in one table: the policies' fairness (docs/design.md §11.4) side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backstop.adapters.files import OutputError, staged_dir, write_json
from backstop.core.adl_policy import PRESETS
from backstop.engines import EngineName
from backstop.scenarios import (
    FUND_ADL_FIGURES,
    FUND_FIGURES,
    RunMetrics,
    WhatIfError,
    WhatIfFile,
    assets_mixed,
    read_records,
    run_figure,
    run_scenario,
)

WHATIF_OUTPUTS = ("baseline", "alternative", *PRESETS, "bitmex", "comparison.json", "report.html", "report-*.png")


def compare(base: RunMetrics, alt: RunMetrics) -> dict[str, Any]:
    """The two runs' figures, and the accounts whose liquidations, deleverages (quantity and price) or socialized
    losses differ between them."""
    accounts_differ = sorted(
        a for a in set(base.outcomes_by_account) | set(alt.outcomes_by_account)
        if base.outcomes_by_account.get(a) != alt.outcomes_by_account.get(a))
    return {"baseline": base.as_json(), "alternative": alt.as_json(),
            "accounts_affected_differently": len(accounts_differ),
            "accounts_affected_differently_sample": accounts_differ[:20]}


def render_run(run: dict[str, Any], label: str) -> str:
    """One run's figures as a two-column table."""
    return "\n".join(line[: line.rfind("  ")].rstrip() if index else f"{'':<{len(line) - 47}}{label:>24}"
                     for index, line in enumerate(render({"baseline": run, "alternative": run,
                                                         "accounts_affected_differently": 0}).splitlines()[:-1]))


def render(comparison: dict[str, Any]) -> str:
    base, alt = comparison["baseline"], comparison["alternative"]
    rows = [("liquidations", base["liquidations"], alt["liquidations"]),
            ("liquidated notional", base["liquidated_notional"], alt["liquidated_notional"]),
            ("ADL events", base["adl_events"], alt["adl_events"]),
            ("ADL notional", base["adl_notional"], alt["adl_notional"]),
            ("accounts liquidated", base["accounts_liquidated"], alt["accounts_liquidated"]),
            ("accounts deleveraged", base["accounts_deleveraged"], alt["accounts_deleveraged"])]
    for fund_id in sorted(set(base["funds"]) | set(alt["funds"])):
        for key, label in FUND_FIGURES.items():
            rows.append((f"fund {fund_id} {label}", base["funds"].get(fund_id, {}).get(key, "-"),
                         alt["funds"].get(fund_id, {}).get(key, "-")))
        if assets_mixed((base, alt)):
            rows += [(f"fund {fund_id} {label}", run_figure(base, ("adl", "by_fund", fund_id, key)),
                      run_figure(alt, ("adl", "by_fund", fund_id, key))) for key, label in FUND_ADL_FIGURES.items()]
    rows = [(name, "-" if b is None else b, "-" if a is None else a) for name, b, a in rows]  # a sum over assets
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'baseline':>22}  {'alternative':>22}"]
    lines += [f"{name:<{width}}  {b!s:>22}  {a!s:>22}" for name, b, a in rows]
    lines.append(f"accounts affected differently: {comparison['accounts_affected_differently']}")
    return "\n".join(lines)


def whatif(journal: Path, params: WhatIfFile, out: Path, *, report: bool = False,
           inputs: Sequence[Path] = (), engine: EngineName = "reference",
           left_out: list[tuple[int, str]] | None = None) -> dict[str, Any]:
    """Both runs (on `engine`) and the comparison into `out`, which appears whole when they have finished (or not
    at all); `inputs` (the parameter file) must not lie inside it, nor may the journal. The journal's lines that are
    not valid records go to `left_out` (read_records)."""
    records = read_records(journal, left_out)
    try:
        with staged_dir(out, owned=WHATIF_OUTPUTS, inputs=[journal, *inputs]) as staging:
            base, base_summary = run_scenario(records, params.baseline, staging / "baseline", label="baseline",
                                              engine=engine)
            alt, alt_summary = run_scenario(records, params.alternative, staging / "alternative", label="alternative",
                                            engine=engine)
            comparison = compare(base, alt)
            write_json(staging / "comparison.json", comparison)
            if report:
                from backstop.report.html import write_report

                facts = [("input", f"{journal} ({len(records):,} records)"),
                         ("baseline head hash", base_summary["head_hash"]),
                         ("alternative head hash", alt_summary["head_hash"]),
                         ("accounts affected differently", f"{comparison['accounts_affected_differently']:,}")]
                assets = {fund_id: fund["settle_asset"] for summary in (base_summary, alt_summary)
                          for fund_id, fund in summary["funds"].items()}
                write_report(staging / "report.html", f"backstop what-if: {journal.name}",
                             [("baseline", base), ("alternative", alt)], facts, assets)
    except OutputError as error:
        raise WhatIfError(str(error)) from None
    except OSError as error:
        raise WhatIfError(f"cannot write {out}: {error.strerror or error}") from None
    return comparison


__all__ = ["compare", "render", "render_run", "whatif"]
