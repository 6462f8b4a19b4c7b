"""Charts of a run (or of several runs on the same axes): fund balance, liquidated and deleveraged notional per
minute, the mark price path, the ADL queue depth, and the fairness of ADL (docs/design.md §11.4): the haircut its
rounds took against the budget they needed, and the leverage of the positions they hit against the eligible
population. Values are exact decimals until they are drawn: a chart is the only place a float appears, and nothing
returns from it to the ledger.

Every chart has the same size and the same plot area, and every time axis the same span, in UTC, so charts stacked
in a page line up minute for minute. Axes show plain numbers with thousands separators (no offset or exponent),
and every legend says what a line shows and in which unit.
"""

from __future__ import annotations

import datetime
import io
import itertools
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from backstop.scenarios import RunMetrics

# One colour per run (baseline, alternative, or one per ADL policy); within a run, line styles tell series apart.
RUN_COLORS = ("#1f5fa8", "#d1495b", "#2a9d5c", "#e09f1f", "#7b4fa0", "#5f6b73", "#17becf", "#8c564b")
SIZE_IN = (10.0, 3.4)
DPI = 110
# The plot area as fractions of the figure: fixed, so every chart's time axis starts and ends at the same pixel.
PLOT_AREA = (0.125, 0.17, 0.835, 0.72)  # left, bottom, width, height
MINUTE = datetime.timedelta(minutes=1)


def _time(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


def _series(values: Mapping[int, Decimal]) -> tuple[list[datetime.datetime], list[float]]:
    keys = sorted(values)
    return [_time(k) for k in keys], [float(values[k]) for k in keys]


def _plain_numbers(value: float, _position: int, *, axes: Axes) -> str:
    """A tick label with thousands separators and as many decimals as the tick step needs."""
    ticks = axes.get_yticks()
    step = min((abs(b - a) for a, b in itertools.pairwise(ticks) if b != a), default=1.0)
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    text = f"{value:,.{decimals}f}"
    return "0" if text.lstrip("-").strip("0.,") == "" else text


def _plain_log(value: float, _position: int) -> str:
    """A log axis's tick label, plainly: 0.1, 1, 10, 1,000."""
    if value <= 0:
        return ""
    return f"{value:,.{max(0, -math.floor(math.log10(value)))}f}"


def _span(runs: Sequence[tuple[str, RunMetrics]]) -> tuple[datetime.datetime, datetime.datetime]:
    """The time span every chart shows: all minutes of every series of every run, plus the last minute's width."""
    minutes: list[int] = []
    for _, run in runs:
        for by_minute in (*run.minute_liquidated.values(), *run.minute_deleveraged.values(),
                          *run.minute_haircut.values(), *run.minute_fund.values(), *run.minute_mark.values()):
            minutes += list(by_minute)
        for depth in run.minute_queue.values():
            minutes += list(depth)
    if not minutes:
        start = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        return start, start + MINUTE
    return _time(min(minutes)), _time(max(minutes)) + MINUTE


def _axes(title: str, ylabel: str, span: tuple[datetime.datetime, datetime.datetime]) -> tuple[Figure, Axes]:
    figure = plt.figure(figsize=SIZE_IN, dpi=DPI)
    axes = figure.add_axes(PLOT_AREA)
    axes.set_title(title, loc="left", fontsize=11)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.set_xlim(*span)
    axes.set_xlabel("time (UTC)")
    length = span[1] - span[0]  # seconds where ticks fall less than a minute apart: no label twice
    layout = ("%m-%d %H:%M" if length > datetime.timedelta(days=1)
              else "%H:%M" if length > datetime.timedelta(minutes=10) else "%H:%M:%S")
    axes.xaxis.set_major_formatter(mdates.DateFormatter(layout, tz=datetime.UTC))  # type: ignore[no-untyped-call]
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, position: _plain_numbers(value, position, axes=axes)))
    return figure, axes


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)  # no tight bbox: every chart keeps the same size
    plt.close(figure)
    return buffer.getvalue()


def _unit(assets: Mapping[str, str]) -> str:
    """The funds' settlement asset, or "settlement asset" when they differ: the unit of a chart with nothing on it
    (a chart with data is drawn per asset)."""
    chosen = set(assets.values())
    return chosen.pop() if len(chosen) == 1 else "settlement asset"


def _label(run_label: str, text: str, runs: int) -> str:
    return f"{run_label}: {text}" if runs > 1 else text


def _bars(axes: Axes, runs: Sequence[tuple[str, RunMetrics]], asset: str, series_of: str, what: str,
          marks_of: str | None = None, marked: str = "") -> None:
    """One bar per minute and run, the runs side by side within the minute (never stacked, never overlaid), of
    what settles in `asset`; with `marks_of`, a second series drawn as a dash across each run's bar (what the bar
    is measured against)."""
    width = MINUTE * 0.8 / max(len(runs), 1)
    for index, ((label, run), color) in enumerate(zip(runs, RUN_COLORS, strict=False)):
        times, values = _series(getattr(run, series_of).get(asset, {}))
        if times:  # matplotlib cannot size bars on an empty time axis
            axes.bar([t + MINUTE * 0.1 + width * index for t in times], values, width=width, align="edge",
                     color=color, label=_label(label, what, len(runs)))
        if marks_of is not None:
            times, values = _series(getattr(run, marks_of).get(asset, {}))
            if times:
                axes.plot([t + MINUTE * 0.1 + width * (index + 0.5) for t in times], values, linestyle="none",
                          marker="_", markersize=10, markeredgewidth=2.5, color="black",
                          markerfacecolor=color, label=_label(label, marked, len(runs)))
    _legend(axes, "upper right")
    axes.set_ylim(bottom=0)


def _legend(axes: Axes, where: Literal["upper right", "upper left"]) -> None:
    """The chart's legend, if anything was drawn with a label (a run with no such event draws nothing)."""
    handles = axes.get_legend_handles_labels()[0]
    if handles:  # two columns for many runs (the lab's eight policies), so the legend stays inside the plot
        axes.legend(fontsize=8, loc=where, ncol=2 if len(handles) > 5 else 1)


def _leverage(axes: Axes, runs: Sequence[tuple[str, RunMetrics]]) -> None:
    """Per ADL round: the eligible population's p10 to p90 leverage as a band and its median as a dash, and the
    leverage of every position the round hit as a dot, one colour per run, on a log scale."""
    drawn = False
    for (label, run), color in zip(runs, RUN_COLORS, strict=False):
        bands = [(point.ts, point.eligible_leverage) for point in run.rounds if point.eligible_leverage is not None]
        if bands:
            times = [_time(ts) for ts, _ in bands]
            axes.vlines(times, [float(q[0]) for _, q in bands], [float(q[2]) for _, q in bands], color=color,
                        alpha=0.3, linewidth=4, label=_label(label, "eligible, p10 to p90 (x)", len(runs)))
            axes.plot(times, [float(q[1]) for _, q in bands], linestyle="none", marker="_", markersize=8,
                      color=color, label=_label(label, "eligible, median (x)", len(runs)))
        hits = [(_time(point.ts), float(value)) for point in run.rounds for value in point.hit_leverage]
        if hits:
            axes.plot([t for t, _ in hits], [v for _, v in hits], linestyle="none", marker="o", markersize=3,
                      color=color, label=_label(label, "deleveraged (x)", len(runs)))
        drawn = drawn or bool(bands or hits)
    if drawn:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(FuncFormatter(_plain_log))
        axes.yaxis.set_minor_formatter(NullFormatter())
        _legend(axes, "upper right")


def charts(runs: Sequence[tuple[str, RunMetrics]], assets: Mapping[str, str]) -> dict[str, bytes]:
    """Chart name -> PNG bytes; each chart shows every run on the same axes. `assets` maps each fund to its
    settlement asset, the unit of its balance and of the notional of the symbols it backs."""
    return {name: _png(figure) for name, figure in figures(runs, assets).items()}


def figures(runs: Sequence[tuple[str, RunMetrics]], assets: Mapping[str, str]) -> dict[str, Figure]:
    """The charts as matplotlib figures (the caller closes them; `charts` renders and closes them)."""
    out: dict[str, Figure] = {}
    span = _span(runs)
    unit = _unit(assets)

    # funds settled in different assets on axes of their own: a BTC balance beside a USDT one would read as zero
    funds_of: dict[str, set[str]] = {}
    for _, run in runs:
        for fund_id in run.minute_fund:
            funds_of.setdefault(assets.get(fund_id, "?"), set()).add(fund_id)
    for asset, funds in sorted(funds_of.items()) or [(unit, set())]:
        apart = len(funds_of) > 1
        figure, axes = _axes("Insurance fund balance" + (f" in {asset}" if apart else ""), f"balance ({asset})",
                             span)
        for (label, run), color in zip(runs, RUN_COLORS, strict=False):
            mine = sorted(fund_id for fund_id in run.minute_fund if fund_id in funds)
            for fund_id, style in zip(mine, ("-", "--", ":", "-."), strict=False):
                times, values = _series(run.minute_fund[fund_id])
                axes.step(times, values, where="post", color=color, linestyle=style,
                          label=_label(label, f"insurance fund {fund_id} ({asset})", len(runs)))
        axes.axhline(0, color="black", linewidth=0.8)
        _legend(axes, "upper right")
        out["fund-balance" + (f"-{asset}" if apart else "")] = figure

    # notionals and amounts are added up per settlement asset: one chart for each asset, when they differ
    settled = sorted({asset for _, run in runs for series in (run.minute_liquidated, run.minute_deleveraged,
                                                              run.minute_haircut) for asset in series}) or [unit]
    named = {asset: ("", "") if len(settled) == 1 else (f"-{asset}", f" in {asset}") for asset in settled}
    for asset, (suffix, title) in named.items():
        figure, axes = _axes(f"Liquidated notional per minute (quantity x mark){title}", f"notional ({asset})",
                             span)
        _bars(axes, runs, asset, "minute_liquidated", f"liquidated ({asset})")
        out[f"liquidations{suffix}"] = figure
    for asset, (suffix, title) in named.items():
        figure, axes = _axes(f"Deleveraged (ADL) notional per minute{title}", f"notional ({asset})", span)
        _bars(axes, runs, asset, "minute_deleveraged", f"deleveraged by ADL ({asset})")
        out[f"adl{suffix}"] = figure

    figure, axes = _axes("Mark price", "price", span)
    label, run = runs[0]
    for symbol, style in zip(sorted(run.minute_mark), ("-", "--", ":", "-."), strict=False):
        times, values = _series(run.minute_mark[symbol])
        axes.plot(times, values, color=RUN_COLORS[0], linestyle=style, label=f"{symbol} mark price")
    _legend(axes, "upper right")
    out["mark-price"] = figure

    figure, axes = _axes("ADL queue depth: open positions per side", "open positions", span)
    for (label, run), color in zip(runs, RUN_COLORS, strict=False):
        for symbol, depth in sorted(run.minute_queue.items()):
            keys = sorted(depth)
            times = [_time(k) for k in keys]
            axes.plot(times, [depth[k][0] for k in keys], color=color,
                      label=_label(label, f"{symbol} longs", len(runs)))
            axes.plot(times, [depth[k][1] for k in keys], color=color, linestyle="--",
                      label=_label(label, f"{symbol} shorts", len(runs)))
    _legend(axes, "upper left")
    axes.set_ylim(bottom=0)
    out["adl-queue-depth"] = figure

    for asset, (suffix, title) in named.items():
        figure, axes = _axes(f"ADL haircut per minute against the budget its rounds needed{title}",
                             f"amount ({asset})", span)
        _bars(axes, runs, asset, "minute_haircut", f"haircut taken from counterparties ({asset})", "minute_needed",
              f"needed: the deficit the fund could not pay ({asset})")
        out[f"adl-haircut{suffix}"] = figure

    figure, axes = _axes("Leverage of the positions ADL hit against the eligible population", "leverage (x)", span)
    _leverage(axes, runs)
    out["adl-leverage"] = figure
    return out
