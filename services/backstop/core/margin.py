"""Margin rules (docs/design.md §4): brackets, maintenance margin, bankruptcy and liquidation prices.

Pure functions over exact decimals; nothing here rounds except where it returns a reported price.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from backstop.core.numbers import CONTEXT, ZERO
from backstop.core.state import Position, Tier


def bracket(tiers: Sequence[Tier], notional: Decimal) -> Tier:
    """The maintenance bracket for a notional: the first whose max_notional covers it (else the last)."""
    for tier in tiers:
        if notional <= tier.max_notional:
            return tier
    return tiers[-1]


def maintenance_margin(tiers: Sequence[Tier], notional: Decimal) -> Decimal:
    """MM = notional x mmr - maint_amount (Binance's cumulative amount), never below zero."""
    tier = bracket(tiers, notional)
    return max(CONTEXT.multiply(notional, tier.mmr) - tier.maint_amount, ZERO)


def position_maintenance(position: Position, tiers: Sequence[Tier], mark: Decimal) -> Decimal:
    return maintenance_margin(tiers, CONTEXT.multiply(position.size, mark))


def lot_cost_at_bankruptcy(position: Position, qty: Decimal, equity_share: Decimal, mark: Decimal) -> Decimal:
    """Cost of `qty` of the position at its bankruptcy price, given the equity share behind that qty.

    Long: qty x mark - share; short: qty x mark + share. For an isolated position the share is
    margin + uPnL, which reduces to the textbook cost - margin (BP = E - M/q) whatever the mark.
    """
    value = CONTEXT.multiply(qty, mark)
    return value - equity_share if position.qty > 0 else value + equity_share


def bankruptcy_price(position: Position, equity_share: Decimal, mark: Decimal) -> Decimal:
    """The price at which the position's share of the account's equity is zero."""
    return CONTEXT.divide(lot_cost_at_bankruptcy(position, position.size, equity_share, mark), position.size)


def liquidation_price(position: Position, tiers: Sequence[Tier], other_equity: Decimal) -> Decimal | None:
    """The mark at which this position's margin balance equals its maintenance margin.

    other_equity: for isolated, the isolated margin; for cross, wallet + sum over the account's other cross
    positions of (uPnL - MM) at their marks. Solves other + q(P - E) = |q| P mmr - cum per bracket and keeps
    the bracket whose notional at P lies inside it (the bracket is re-chosen at the liquidation price, as
    Binance does). None when no positive price liquidates the position.
    """
    q = position.qty
    signed_cost = position.cost if q > 0 else -position.cost
    lower = ZERO
    for tier in tiers:
        denominator = q - CONTEXT.multiply(position.size, tier.mmr)
        if denominator == 0:
            lower = tier.max_notional
            continue
        candidate = CONTEXT.divide(signed_cost - other_equity - tier.maint_amount, denominator)
        notional = CONTEXT.multiply(position.size, candidate)
        if candidate > 0 and lower < notional <= tier.max_notional:
            return candidate
        lower = tier.max_notional
    last = tiers[-1]
    denominator = q - CONTEXT.multiply(position.size, last.mmr)
    if denominator != 0:
        candidate = CONTEXT.divide(signed_cost - other_equity - last.maint_amount, denominator)
        if candidate > 0 and CONTEXT.multiply(position.size, candidate) > last.max_notional:
            return candidate
    return None
