"""A self-contained HTML report: the facts of the run, its figures in a table (thousands separators, units), and the
charts, embedded (no external files or scripts)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from backstop.report.charts import charts
from backstop.scenarios import FUND_ADL_FIGURES, FUND_FIGURES, RunMetrics, assets_mixed, run_figure


def _number(value: Any) -> str:
    """An exact figure with thousands separators: an int, or a decimal string as the run reports it ("-" for none:
    a sum over more than one asset)."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, str):
        try:
            return f"{Decimal(value):,}"
        except ArithmeticError:
            return value
    return str(value)


def figure_rows(runs: Sequence[tuple[str, RunMetrics]], assets: Mapping[str, str]) -> list[tuple[str, str, list[str]]]:
    """(figure, unit, one formatted value per run) for the summary table."""
    figures = [run.as_json() for _, run in runs]
    notional_units = {assets[f] for f in assets}
    notional = notional_units.pop() if len(notional_units) == 1 else "settlement asset"
    rows = [("liquidations", "count", "liquidations"), ("liquidated notional", notional, "liquidated_notional"),
            ("ADL events", "count", "adl_events"), ("ADL notional", notional, "adl_notional"),
            ("accounts liquidated", "accounts", "accounts_liquidated"),
            ("accounts deleveraged", "accounts", "accounts_deleveraged")]
    table = [(name, unit, [_number(f[key]) for f in figures]) for name, unit, key in rows]
    fairness = [("ADL rounds", "count", ("rounds",)), ("ADL haircut", notional, ("haircut",)),
                ("ADL needed budget", notional, ("needed",)), ("ADL overshoot", notional, ("overshoot",)),
                ("ADL over-use", "haircut / needed", ("over_use",)),
                ("worst share of a profit taken", "ratio", ("worst_share",)),
                ("rank inversions by profit", "share of pairs", ("inversions", "profit")),
                ("rank inversions by leverage", "share of pairs", ("inversions", "leverage")),
                ("socialized loss", notional, ("socialized",))]
    if any(f.get("adl") for f in figures):
        table += [(name, unit, [_number(run_figure(f, ("adl", *path))) for f in figures])
                  for name, unit, path in fairness]
    for fund_id in sorted({fund_id for f in figures for fund_id in f["funds"]}):
        for key, label in FUND_FIGURES.items():
            table.append((f"insurance fund {fund_id}: {label}", assets.get(fund_id, ""),
                          [_number(f["funds"].get(fund_id, {}).get(key, "-")) for f in figures]))
        if assets_mixed(figures):
            table += [(f"insurance fund {fund_id}: {label}", assets.get(fund_id, ""),
                       [_number(run_figure(f, ("adl", "by_fund", fund_id, key))) for f in figures])
                      for key, label in FUND_ADL_FIGURES.items()]
    return table


def _summary(runs: Sequence[tuple[str, RunMetrics]], assets: Mapping[str, str]) -> str:
    head = "".join(f'<th class="n">{html.escape(label)}</th>' for label, _ in runs)
    body = "".join(f"<tr><th>{html.escape(name)}</th>"
                   + "".join(f'<td class="n">{html.escape(value)}</td>' for value in values)
                   + f"<td>{html.escape(unit)}</td></tr>" for name, unit, values in figure_rows(runs, assets))
    return f'<table class="figures"><tr><th></th>{head}<th>unit</th></tr>{body}</table>'


def _policy_table(runs: Sequence[tuple[str, RunMetrics]], rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    head = "".join(f'<th class="n">{html.escape(label)}</th>' for label, _ in runs)
    body = "".join(f"<tr><th>{html.escape(name)}</th>"
                   + "".join(f'<td class="n">{html.escape(_number(value))}</td>' for value in values) + "</tr>"
                   for name, values in rows)
    return f'<h2>ADL policies compared</h2><table class="figures"><tr><th></th>{head}</tr>{body}</table>'


def write_report(path: Path, title: str, runs: Sequence[tuple[str, RunMetrics]], facts: Sequence[tuple[str, str]],
                 assets: Mapping[str, str], *, policy_table: Sequence[tuple[str, Sequence[str]]] | None = None
                 ) -> dict[str, Path]:
    """Writes `path` (HTML) and the charts as PNG files beside it; returns the PNG paths by chart name. `assets`
    maps each fund to its settlement asset (the unit of its balance); `policy_table`: the rows of an ADL policy
    comparison (one value per run), shown above the charts."""
    images = charts(runs, assets)
    pngs = {}
    for name, data in images.items():
        png = path.with_name(f"{path.stem}-{name}.png")
        png.write_bytes(data)
        pngs[name] = png
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    comparison = _policy_table(runs, policy_table) if policy_table else ""
    figures = "".join(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
                      f'{base64.b64encode(data).decode()}"></figure>' for name, data in images.items())
    path.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin-bottom:1.5em}}
th,td{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}
.n{{text-align:right;font-variant-numeric:tabular-nums}}figure{{margin:0 0 1em 0}}img{{width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1><table>{rows}</table>{_summary(runs, assets)}{comparison}{figures}</body></html>
""", encoding="utf-8")
    return pngs
