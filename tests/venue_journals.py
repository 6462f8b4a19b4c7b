"""Journals of contract version 2's rules (docs/design.md §7), shared by the unit tests that work their numbers out by
hand and the differential test that replays each through both engines (tests/differential/test_compiled_venues.py).

Each is a function returning a fresh list of records (timestamps come from scenario's clock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scenario import fill, fund, instrument, liquidation, mark, transfer

Journal = list[dict[str, Any]]


def _solvent_at_published_mark(leverage: str, liquidation_mark: str, **tolerance: str) -> Journal:
    return [fund(), instrument(tick="0.1", **tolerance), transfer("seed", "fund:MAIN", "100000"),
            transfer("d-u", "u", "10000"), transfer("d-v", "v", "1000000"), fill("v", "v", "sell", "5", "100000"),
            fill("u", "u", "buy", "1", "100000", mode="isolated", leverage=leverage), mark("99000"),
            liquidation("l", "u", "1", liquidation_mark)]


def mark_mismatch() -> Journal:
    return _solvent_at_published_mark("20", "94900")


def mark_within_tolerance() -> Journal:
    return _solvent_at_published_mark("20", "94900", mark_tolerance="0.05")


def not_liquidatable_at_both() -> Journal:
    return _solvent_at_published_mark("10", "98000")


def inventory_over_limit() -> Journal:
    """The fund takes 1.3 BTC over at BP 90,000 (mark 92,000: 119,600 <= 120,000), then the mark moves to 100,000."""
    return [fund(), instrument(tick="0.1"), transfer("seed", "fund:MAIN", "120000"),
            transfer("d-u", "u", "20000"), transfer("d-v", "v", "1000000"), fill("v", "v", "sell", "5", "100000"),
            fill("u", "u", "buy", "1.3", "100000", mode="isolated", leverage="10"),
            liquidation("l", "u", "1.3", "92000")]


def inventory_at_zero_balance() -> Journal:
    return [*inventory_over_limit(), transfer("draw", "fund:MAIN", "-120000"), mark("92000")]


def brackets() -> Journal:
    return [fund(), instrument(tiers=(("50000", "0.004", None), ("250000", "0.005", None), ("1000000", "0.01", None))),
            instrument("ETHUSDT", tiers=(("50000", "0.004", "0"), ("250000", "0.005", "50"),
                                         ("1000000", "0.01", "999"))),
            instrument("XUSDT", tiers=(("0.00000001", "0.25", "0"), ("1000", "0.5", None))),
            instrument("YUSDT", tiers=(("100", "0.02", "0"), ("200", "0.01", None))),
            transfer("d-u", "u", "10000"), fill("u", "u", "buy", "5", "50000"), mark("50000.1")]


JOURNALS: dict[str, Callable[[], Journal]] = {
    "mark_mismatch": mark_mismatch, "mark_within_tolerance": mark_within_tolerance,
    "not_liquidatable_at_both": not_liquidatable_at_both,
    "inventory_over_limit": lambda: [*inventory_over_limit(), mark("100000"), mark("99000")],
    "inventory_at_zero_balance": inventory_at_zero_balance, "brackets": brackets,
}
