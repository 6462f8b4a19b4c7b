"""Data shipped with backstop (public market data for demos and benchmarks); see SOURCES.md."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from decimal import Decimal
from importlib.resources import files

KLINES_FILE = "binance_um_BTCUSDT_klines_1m_2025-10-10_20-24UTC.csv"


@dataclass(frozen=True, slots=True)
class Bar:
    """One Binance 1-minute bar (BTCUSDT perpetual, 10 Oct 2025 20:00-24:00 UTC)."""

    open_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    trades: int


def btc_crash_bars() -> list[Bar]:
    text = files(__package__).joinpath(KLINES_FILE).read_text(encoding="utf-8")
    return [Bar(int(row["open_time"]), Decimal(row["open"]), Decimal(row["high"]), Decimal(row["low"]),
                Decimal(row["close"]), int(row["count"])) for row in csv.DictReader(text.splitlines())]


FUNDING_FILE = "binance_um_BTCUSDT_fundingRate_2020-2026.csv"


def btc_funding_rates(start_ms: int, end_ms: int) -> list[tuple[int, Decimal]]:
    """(calc_time ms, rate) of the real BTCUSDT funding settlements with start_ms <= calc_time <= end_ms."""
    text = files(__package__).joinpath(FUNDING_FILE).read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines())
    return [(int(r["calc_time"]), Decimal(r["last_funding_rate"])) for r in rows
            if start_ms <= int(r["calc_time"]) <= end_ms]
