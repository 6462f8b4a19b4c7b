"""Charts of a run (or of two runs on the same axes): fund balance, liquidation and ADL notional per minute, the
mark price path and the ADL queue depth. Values are exact decimals until they are drawn: a chart is the only
place a float appears, and nothing returns from it to the ledger."""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence
from decimal import Decimal

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from backstop.entrypoints.whatif import RunMetrics

COLORS = ("#1f5fa8", "#d1495b")
ADL_COLORS = ("#f0a202", "#6a994e")


def _times(keys: Sequence[int]) -> list[datetime.datetime]:
    return [datetime.datetime.fromtimestamp(k / 1000, tz=datetime.UTC) for k in keys]


def _series(values: dict[int, Decimal]) -> tuple[list[datetime.datetime], list[float]]:
    keys = sorted(values)
    return _times(keys), [float(values[k]) for k in keys]


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _axes(title: str, ylabel: str) -> tuple[Figure, Axes]:
    figure, axes = plt.subplots(figsize=(9, 3.2))
    axes.set_title(title, loc="left", fontsize=11)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=datetime.UTC))  # type: ignore[no-untyped-call]
    return figure, axes


def charts(runs: Sequence[tuple[str, RunMetrics]]) -> dict[str, bytes]:
    """Chart name -> PNG bytes; each chart shows every run on the same axes."""
    out: dict[str, bytes] = {}
    figure, axes = _axes("Insurance fund balance", "USDT")
    for (label, run), color in zip(runs, COLORS, strict=False):
        for fund_id, series in sorted(run.minute_fund.items()):
            times, values = _series(series)
            axes.step(times, values, where="post", color=color, label=f"{label}: {fund_id}")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.legend(fontsize=8)
    out["fund-balance"] = _png(figure)

    figure, axes = _axes("Liquidated and deleveraged notional per minute", "USDT")
    width = datetime.timedelta(seconds=50 / max(len(runs), 1))
    for index, (label, run) in enumerate(runs):
        shift = width * index
        for series, colors, what, alpha in ((run.minute_liquidated, COLORS, "liquidated", 0.85),
                                            (run.minute_deleveraged, ADL_COLORS, "ADL", 0.95)):
            times, values = _series(series)
            if times:  # matplotlib cannot size bars on an empty time axis
                axes.bar([t + shift for t in times], values, width=width, color=colors[index % 2], alpha=alpha,
                         label=f"{label}: {what}")
    axes.legend(fontsize=8)
    out["liquidations-adl"] = _png(figure)

    figure, axes = _axes("Mark price", "USDT")
    label, run = runs[0]
    for symbol, series in sorted(run.minute_mark.items()):
        times, values = _series(series)
        axes.plot(times, values, color=COLORS[0], label=symbol)
    axes.legend(fontsize=8)
    out["mark-price"] = _png(figure)

    figure, axes = _axes("ADL queue depth (open positions per side)", "positions")
    for (label, run), color in zip(runs, COLORS, strict=False):
        for symbol, depth in sorted(run.minute_queue.items()):
            keys = sorted(depth)
            axes.plot(_times(keys), [depth[k][0] for k in keys], color=color, label=f"{label}: {symbol} longs")
            axes.plot(_times(keys), [depth[k][1] for k in keys], color=color, linestyle="--",
                      label=f"{label}: {symbol} shorts")
    axes.legend(fontsize=8)
    out["adl-queue-depth"] = _png(figure)
    return out
