"""Margin rules (docs/design.md §4): brackets, maintenance margin, bankruptcy and liquidation prices.

Pure functions over exact decimals; each rounding is a named rule of docs/design.md §9.4 (backstop.core.numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from backstop.core import numbers
from backstop.core.numbers import CONTEXT, ZERO
from backstop.core.state import Position, Tier
from backstop.core.valuation import Valuation


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


def position_maintenance(position: Position, tiers: Sequence[Tier], mark: Decimal, valuation: Valuation) -> Decimal:
    """MM of a position, its bracket chosen by its notional at mark N = V(size, mark) (docs/design.md §7)."""
    return maintenance_margin(tiers, valuation.value(position.size, mark))


def lot_cost_at_bankruptcy(position: Position, qty: Decimal, equity_behind: Decimal, mark: Decimal,
                           valuation: Valuation) -> Decimal:
    """Value of `qty` of the position at its bankruptcy price, given the equity behind that qty (exact).

    Long in value space (a linear long, an inverse short): V(qty, mark) - equity; else V(qty, mark) + equity. For an
    isolated position the equity is margin + uPnL, which reduces to the textbook cost -/+ margin whatever the mark.
    """
    value = valuation.value(qty, mark)
    return value - equity_behind if valuation.value_long(position.qty > 0) else value + equity_behind


def bankruptcy_price(position: Position, equity_share: Decimal, mark: Decimal, valuation: Valuation) -> Decimal:
    """The price at which the position's share of the account's equity is zero: the price of its value at bankruptcy
    (V(size, mark) -/+ share), FLOOR for a long and CEILING for a short to 1e-8."""
    value = lot_cost_at_bankruptcy(position, position.size, equity_share, mark, valuation)
    return valuation.bankruptcy_price(value, position.size, long=position.qty > 0)


def isolated_bankruptcy_price(position: Position, margin: Decimal, valuation: Valuation) -> Decimal:
    """The price of cost -/+ margin (minus for a long in value space), FLOOR for a long and CEILING for a short to
    1e-8: needs no mark and no maintenance margin."""
    cost = position.cost
    value = cost - margin if valuation.value_long(position.qty > 0) else cost + margin
    return valuation.bankruptcy_price(value, position.size, long=position.qty > 0)


def liquidation_price(position: Position, tiers: Sequence[Tier], other_equity: Decimal,
                      valuation: Valuation) -> Decimal | None:
    """The mark at which this position's margin balance equals its maintenance margin.

    other_equity: for isolated, the isolated margin; for cross, wallet + sum over the account's other cross
    positions of (uPnL - MM) at their marks. Solves other + uPnL(P) = MM(P) per bracket, P rounded HALF_EVEN to
    1e-8, and keeps the bracket whose notional at the rounded P lies inside it (the bracket is re-chosen at the
    liquidation price, as Binance does). None when no positive price liquidates the position.
    """
    candidate_of = _candidate if valuation.contract_size is None else _inverse_candidate
    lower = ZERO
    for tier in tiers:
        candidate = candidate_of(position, tier, other_equity, valuation)
        if candidate is not None and candidate > 0 and lower < valuation.value(position.size, candidate) <= \
                tier.max_notional:
            return candidate
        lower = tier.max_notional
    last = tiers[-1]
    candidate = candidate_of(position, last, other_equity, valuation)
    if candidate is not None and candidate > 0 and valuation.value(position.size, candidate) > last.max_notional:
        return candidate
    return None


def _candidate(position: Position, tier: Tier, other_equity: Decimal, valuation: Valuation) -> Decimal | None:
    """One bracket's linear price, (signed cost - other - maint_amount) / (q - |q| mmr); None where the denominator
    is 0 (mmr = 1 for a long: the engine admits only mmr < 1)."""
    signed_cost = position.cost if position.qty > 0 else -position.cost
    denominator = position.qty - CONTEXT.multiply(position.size, tier.mmr)
    if denominator == 0:
        return None
    return numbers.liquidation_candidate(signed_cost - other_equity - tier.maint_amount, denominator)


def _inverse_candidate(position: Position, tier: Tier, other_equity: Decimal, valuation: Valuation
                       ) -> Decimal | None:
    """One bracket's inverse price: |q| s (1 + mmr) / (other + C + maint_amount) for a long, |q| s (1 - mmr) /
    (C - other - maint_amount) for a short; None where the denominator is not positive."""
    face = valuation.face(position.size)
    if position.qty > 0:
        numerator = face + CONTEXT.multiply(face, tier.mmr)
        denominator = other_equity + position.cost + tier.maint_amount
    else:
        numerator = face - CONTEXT.multiply(face, tier.mmr)
        denominator = position.cost - other_equity - tier.maint_amount
    if denominator <= 0:
        return None
    return numbers.liquidation_candidate(numerator, denominator)
