"""The report reads at a glance: plain numbers with separators, UTC on every time axis, charts that line up,
legends with units, bars side by side, a summary with separators and units."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from backstop.report.charts import charts, figures
from backstop.report.html import figure_rows, write_report
from backstop.scenarios import RunMetrics

MINUTE_MS = 60_000
START_MS = 1_760_126_400_000  # 2025-10-10 20:00 UTC
D = Decimal


def _run(scale: int, minutes: int = 30) -> RunMetrics:
    run = RunMetrics(liquidations=12_345, liquidated_notional=D("314504422.9996"), adl_events=2_811,
                     adl_notional=D("53032764.3730193"))
    for minute in range(minutes):
        ts = START_MS + minute * MINUTE_MS
        run.minute_liquidated.setdefault("USDT", {})[ts] = D(scale * (minute + 1) * 1_000_000)
        run.minute_deleveraged.setdefault("USDT", {})[ts] = D(scale * minute * 100_000)
        run.minute_fund.setdefault("BTC", {})[ts] = D(1_000_000 - scale * minute * 10_000)
        run.minute_mark.setdefault("BTCUSDT", {})[ts] = D(116_000 - minute * 100)
        run.minute_queue.setdefault("BTCUSDT", {})[ts] = (minute * 40, minute * 30)
    run.fund_final["BTC"], run.fund_min["BTC"] = D("29411.62673393"), D("24235.36623283")
    run.fund_drawdown["BTC"] = D("1303159.15848793")
    return run


RUNS = [("baseline", _run(1)), ("alternative", _run(2, minutes=20))]
ASSETS = {"BTC": "USDT"}


@pytest.fixture
def charted() -> Iterator[dict[str, Figure]]:
    result = figures(RUNS, ASSETS)
    for figure in result.values():
        figure.canvas.draw()  # lays out ticks and labels
    yield result
    for figure in result.values():
        plt.close(figure)


def test_axes_show_plain_numbers_with_separators(charted: dict[str, Figure]) -> None:
    for name, figure in charted.items():
        axes = figure.axes[0]
        assert axes.yaxis.get_offset_text().get_text() == "", name  # no "1e6" above the axis
        labels = [label.get_text() for label in axes.get_yticklabels()]
        assert not any("e" in label.lower() for label in labels), (name, labels)
    balance_axes = charted["fund-balance"].axes[0]
    balance_labels = [label.get_text() for label in balance_axes.get_yticklabels()]
    assert "1,000,000" in balance_labels


def test_every_time_axis_names_utc_and_all_line_up(charted: dict[str, Figure]) -> None:
    positions = {tuple(figure.axes[0].get_position().bounds) for figure in charted.values()}
    spans = {figure.axes[0].get_xlim() for figure in charted.values()}
    sizes = {tuple(figure.get_size_inches()) for figure in charted.values()}
    assert len(positions) == len(spans) == len(sizes) == 1
    assert all("UTC" in figure.axes[0].get_xlabel() for figure in charted.values())


def test_legends_say_what_and_in_which_unit(charted: dict[str, Figure]) -> None:
    legend = [text.get_text() for text in charted["fund-balance"].axes[0].get_legend().get_texts()]
    assert legend == ["baseline: insurance fund BTC (USDT)", "alternative: insurance fund BTC (USDT)"]
    assert "USDT" in charted["liquidations"].axes[0].get_ylabel()


def test_bars_of_two_runs_stand_side_by_side(charted: dict[str, Figure]) -> None:
    axes = charted["liquidations"].axes[0]
    baseline, alternative = [c for c in axes.containers if isinstance(c, BarContainer)]
    for left, right in zip(baseline.patches, alternative.patches, strict=False):
        assert left.get_x() + left.get_width() <= right.get_x() + 1e-9  # next to each other, not overlaid
        assert left.get_y() == right.get_y() == 0  # both from zero: not stacked


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_every_png_has_the_same_size() -> None:
    assert len({_png_size(data) for data in charts(RUNS, ASSETS).values()}) == 1


def test_summary_has_separators_and_units(tmp_path: Path) -> None:
    rows = {name: (unit, values) for name, unit, values in figure_rows(RUNS, ASSETS)}
    assert rows["liquidations"] == ("count", ["12,345", "12,345"])
    assert rows["liquidated notional"] == ("USDT", ["314,504,422.9996", "314,504,422.9996"])
    assert rows["insurance fund BTC: max drawdown"] == ("USDT", ["1,303,159.15848793", "1,303,159.15848793"])
    write_report(tmp_path / "report.html", "t", RUNS, [("input", "x")], ASSETS)
    page = (tmp_path / "report.html").read_text()
    assert "1,303,159.15848793" in page and page.count("data:image/png;base64,") == 7  # with the ADL lab's two


def test_runs_with_nothing_to_chart_draw_empty_charts_without_a_warning() -> None:
    import warnings

    empty = [("baseline", RunMetrics()), ("alternative", RunMetrics())]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned of a legend with no entries
        drawn = charts(empty, {})
    assert len(drawn) == 7 and all(data.startswith(b"\x89PNG") for data in drawn.values())


def test_notionals_settled_in_two_assets_are_charted_apart_never_added() -> None:
    """A run whose symbols settle in USDT and in BTC (a linear and an inverse contract): each asset's notionals and
    fund balances get their own charts, in its own unit; no bar adds BTC to USDT."""
    run = _run(1, minutes=3)
    run.minute_liquidated["BTC"] = {START_MS: D("2.5")}
    run.minute_haircut["BTC"], run.minute_needed["BTC"] = {START_MS: D("0.5")}, {START_MS: D("0.75")}
    run.minute_fund["BTC-INV"] = {START_MS: D("12.5")}  # a fund settled in BTC beside one in USDT
    result = figures([("mixed", run)], {"BTC": "USDT", "BTC-INV": "BTC"})
    try:
        assert [name for name in result if name.startswith("fund-balance")] == ["fund-balance-BTC",
                                                                                 "fund-balance-USDT"]
        balance = result["fund-balance-BTC"].axes[0]
        assert balance.get_ylabel() == "balance (BTC)"
        assert [text.get_text() for text in balance.get_legend().get_texts()] == ["insurance fund BTC-INV (BTC)"]
        assert [name for name in result if name.startswith(("liquidations", "adl"))] == [
            "liquidations-BTC", "liquidations-USDT", "adl-BTC", "adl-USDT", "adl-queue-depth", "adl-haircut-BTC",
            "adl-haircut-USDT", "adl-leverage"]
        axes = result["liquidations-BTC"].axes[0]
        assert axes.get_ylabel() == "notional (BTC)" and axes.get_title(loc="left").endswith(" in BTC")
        (bars,) = [c for c in axes.containers if isinstance(c, BarContainer)]
        assert [bar.get_height() for bar in bars] == [2.5]
        (usdt,) = [c for c in result["liquidations-USDT"].axes[0].containers if isinstance(c, BarContainer)]
        assert [bar.get_height() for bar in usdt] == [1_000_000, 2_000_000, 3_000_000]
        assert not [c for c in result["adl-BTC"].axes[0].containers if isinstance(c, BarContainer)]
    finally:
        for figure in result.values():
            plt.close(figure)
