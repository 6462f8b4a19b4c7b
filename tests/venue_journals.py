"""Journals of contract version 2's rules (docs/design.md §7), shared by the unit tests that work their numbers out by
hand and the differential test that replays each through both engines (tests/differential/test_compiled_venues.py).

Each is a function returning a fresh list of records (timestamps come from scenario's clock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scenario import fill, fund, funding, instrument, liquidation, mark, transfer

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


def _hedge_world(fund_balance: str = "100000") -> Journal:
    return [fund(), instrument(tick="0.1"), transfer("seed", "fund:MAIN", fund_balance)]


def hedge_cross_both_sides() -> Journal:
    """u: cross long 1 and cross short 0.5 of BTCUSDT @ 100,000 in hedge mode; the mark falls to 90,000."""
    return [*_hedge_world(), transfer("d-u", "u", "10000"),
            fill("ul", "u", "buy", "1", "100000", position_side="long"),
            fill("us", "u", "sell", "0.5", "100000", position_side="short"), mark("90000")]


def hedge_rules() -> Journal:
    """Mixing modes, reducing beyond a side, margin mode per side, isolated margin per side, a fund fill's side."""
    return [*_hedge_world(), transfer("d-u", "u", "100000"), transfer("d-w", "w", "100000"),
            fill("w1", "w", "buy", "1", "100000"),  # one-way
            fill("w2", "w", "buy", "1", "100000", position_side="long"),  # rejected: w is one-way in BTCUSDT
            fill("u1", "u", "buy", "2", "100000", mode="isolated", leverage="10", position_side="long"),
            fill("u2", "u", "sell", "1", "100000", position_side="short"),  # cross short beside an isolated long
            fill("u3", "u", "sell", "1", "100000"),  # rejected: u is in hedge mode
            fill("u4", "u", "sell", "3", "101000", mode="isolated", leverage="10",
                 position_side="long"),  # rejected: reduces the long of 2 below zero
            fill("u5", "u", "buy", "1", "99000", mode="isolated", position_side="short"),  # rejected: short is cross
            fill("u6", "u", "sell", "0.5", "101000", mode="isolated", leverage="10", position_side="long"),
            fill("u7", "u", "buy", "1", "99000", position_side="short"),  # closes the short
            fill("u8", "u", "buy", "0.5", "99000", position_side="short"),  # rejected: no short left
            fill("f1", "fund:MAIN", "sell", "1", "100000", position_side="short"),  # rejected: a sell closes longs
            mark("100000")]


def hedge_funding() -> Journal:
    """u: isolated long 1 (10x) and cross short 1 of BTCUSDT @ 100,000; funding 0.0001 at 100,000."""
    return [*_hedge_world(), transfer("d-u", "u", "100000"),
            fill("ul", "u", "buy", "1", "100000", mode="isolated", leverage="10", position_side="long"),
            fill("us", "u", "sell", "1", "100000", position_side="short"), funding("0.0001", "100000")]


def hedge_deleveraged_on_one_side() -> Journal:
    """examples/07: h holds a cross long 1 and a cross short 1 in hedge mode; s's isolated short is liquidated and
    the fund (100) refuses the lot; h's long heads the long queue and is closed at the lot's BP, its short stays."""
    return [*_hedge_world("100"), transfer("d-h", "h", "20000"), transfer("d-s", "s", "10000"),
            transfer("d-o", "o", "50000"),
            fill("h1", "h", "buy", "1", "100000", position_side="long"),
            fill("h2", "h", "sell", "1", "100000", position_side="short"),
            fill("s1", "s", "sell", "1", "100000", mode="isolated", leverage="10"),
            fill("o1", "o", "buy", "0.5", "100000"), mark("109000"), liquidation("ls", "s", "1", "109000")]


def hedge_side_liquidated() -> Journal:
    """A hedge side liquidated by its position_side, the other side kept; a one-way liquidation of a hedged account
    is refused."""
    return [*_hedge_world(), transfer("d-u", "u", "20000"), transfer("d-v", "v", "1000000"),
            fill("v1", "v", "sell", "2", "100000"), fill("v2", "v", "buy", "1", "100000", symbol="BTCUSDT"),
            fill("ul", "u", "buy", "1", "100000", mode="isolated", leverage="10", position_side="long"),
            fill("us", "u", "sell", "1", "100000", position_side="short"), mark("91000"),
            liquidation("l0", "u", "1", "90500"),  # rejected: u holds no one-way BTCUSDT position
            liquidation("l1", "u", "1", "90500", position_side="long", executions=[("0.4", "90400")]),
            funding("0.0002", "90500")]


JOURNALS: dict[str, Callable[[], Journal]] = {
    "hedge_cross_both_sides": hedge_cross_both_sides, "hedge_rules": hedge_rules, "hedge_funding": hedge_funding,
    "hedge_deleveraged_on_one_side": hedge_deleveraged_on_one_side, "hedge_side_liquidated": hedge_side_liquidated,
    "mark_mismatch": mark_mismatch, "mark_within_tolerance": mark_within_tolerance,
    "not_liquidatable_at_both": not_liquidatable_at_both,
    "inventory_over_limit": lambda: [*inventory_over_limit(), mark("100000"), mark("99000")],
    "inventory_at_zero_balance": inventory_at_zero_balance, "brackets": brackets,
}
