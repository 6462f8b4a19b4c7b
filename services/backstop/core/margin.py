"""Margin rules (docs/design.md §4): brackets, maintenance margin, bankruptcy and liquidation prices.

Pure functions over exact decimals; each rounding is a named rule of docs/design.md §9.4 (backstop.core.numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from backstop.core import numbers
from backstop.core.numbers import CONTEXT, ZERO
from backstop.core.state import Position, Tier


def bracket(tiers: Sequence[Tier], notional: Decimal) -> Tier:
    """The maintenance bracket for a notional: the first whose max_notional covers it (else the last)."""
    for tier in tiers:
        if notional <= tier.max_notional:
            return tier
    return tiers[-1]


def maintenance_margin(tiers: Sequence[Tier], notional: Decimal) -> Decimal:
    """MM = HALF_EVEN(notional x mmr) - maint_amount (Binance's cumulative amount), never below zero."""
    tier = bracket(tiers, notional)
    return numbers.maintenance(notional, tier.mmr, tier.maint_amount)


def position_maintenance(position: Position, tiers: Sequence[Tier], mark: Decimal) -> Decimal:
    return maintenance_margin(tiers, CONTEXT.multiply(position.size, mark))


def lot_cost_at_bankruptcy(position: Position, qty: Decimal, equity_behind: Decimal, mark: Decimal) -> Decimal:
    """Cost of `qty` of the position at its bankruptcy price, given the equity behind that qty (exact).

    Long: qty x mark - equity; short: qty x mark + equity. For an isolated position the equity is
    margin + uPnL, which reduces to the textbook cost - margin (BP = E - M/q) whatever the mark.
    """
    value = CONTEXT.multiply(qty, mark)
    return value - equity_behind if position.qty > 0 else value + equity_behind


def bankruptcy_price(position: Position, equity_share: Decimal, mark: Decimal) -> Decimal:
    """The price at which the position's share of the account's equity is zero: (size x mark -/+ share) / size,
    FLOOR for a long and CEILING for a short to 1e-8."""
    numerator = lot_cost_at_bankruptcy(position, position.size, equity_share, mark)
    return numbers.bankruptcy_price(numerator, position.size, long=position.qty > 0)


def isolated_bankruptcy_price(position: Position, margin: Decimal) -> Decimal:
    """(cost - margin) / size for a long, (cost + margin) / size for a short, FLOOR / CEILING to 1e-8: needs no mark
    and no maintenance margin."""
    long = position.qty > 0
    return numbers.bankruptcy_price(position.cost - margin if long else position.cost + margin, position.size,
                                    long=long)


def liquidation_price(position: Position, tiers: Sequence[Tier], other_equity: Decimal) -> Decimal | None:
    """The mark at which this position's margin balance equals its maintenance margin.

    other_equity: for isolated, the isolated margin; for cross, wallet + sum over the account's other cross
    positions of (uPnL - MM) at their marks. Solves other + q(P - E) = |q| P mmr - cum per bracket, P rounded
    HALF_EVEN to 1e-8, and keeps the bracket whose notional at the rounded P lies inside it (the bracket is
    re-chosen at the liquidation price, as Binance does). None when no positive price liquidates the position.
    """
    q = position.qty
    signed_cost = position.cost if q > 0 else -position.cost
    lower = ZERO
    for tier in tiers:
        candidate = _candidate(position, signed_cost - other_equity - tier.maint_amount, tier.mmr)
        if candidate is not None and candidate > 0 and lower < CONTEXT.multiply(position.size, candidate) <= \
                tier.max_notional:
            return candidate
        lower = tier.max_notional
    last = tiers[-1]
    candidate = _candidate(position, signed_cost - other_equity - last.maint_amount, last.mmr)
    if candidate is not None and candidate > 0 and CONTEXT.multiply(position.size, candidate) > last.max_notional:
        return candidate
    return None


def _candidate(position: Position, numerator: Decimal, mmr: Decimal) -> Decimal | None:
    """One bracket's price; None where q - |q| mmr = 0 (mmr = 1 for a long: the engine admits only mmr < 1)."""
    denominator = position.qty - CONTEXT.multiply(position.size, mmr)
    return None if denominator == 0 else numbers.liquidation_candidate(numerator, denominator)
