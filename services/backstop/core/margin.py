"""Margin rules (docs/design.md §4): brackets, maintenance margin, bankruptcy and liquidation prices.

Pure functions over exact decimals; each rounding is a named rule of docs/design.md §9.4 (backstop.core.numbers).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def liquidation_price(legs: Sequence[Position], tiers: Sequence[Tier], other_equity: Decimal,
                      valuation: Valuation) -> Decimal | None:
    """The mark at which a position's margin balance equals its maintenance margin.

    legs: the position, and for a cross hedge side the account's cross side of the other direction on the same
    symbol, which the same mark moves (so both sides have one liquidation price). other_equity: for isolated, the
    isolated margin; for cross, wallet + sum over the account's other cross positions (not a leg) of (uPnL - MM)
    at their marks. Solves other + sum of the legs' uPnL(P) = sum of their MM(P), each leg in a bracket of its own
    (tried in order, the first leg's slowest), P rounded HALF_EVEN to 1e-8, and keeps the first brackets that hold
    every leg's notional at the rounded P (the bracket is re-chosen at the liquidation price, as Binance does; the
    last is open above). None when no positive price liquidates the position.
    """
    candidate_of = _candidate if valuation.contract_size is None else _inverse_candidate
    bounds = [(lower, tier.max_notional if index < len(tiers) - 1 else None)
              for index, (lower, tier) in enumerate(zip([ZERO, *(t.max_notional for t in tiers)], tiers, strict=False))]
    for chosen in _bracket_choices(legs, bounds, valuation):
        candidate = candidate_of([(leg, tiers[index]) for leg, index in zip(legs, chosen, strict=True)], other_equity,
                                 valuation)
        if candidate is not None and candidate > 0 and all(
                _within(bounds[index], valuation.value(leg.size, candidate)) for leg, index in zip(legs, chosen,
                                                                                                 strict=True)):
            return candidate
    return None


def _bracket_choices(legs: Sequence[Position], bounds: Sequence[tuple[Decimal, Decimal | None]],
                     valuation: Valuation) -> Iterator[tuple[int, ...]]:
    """Each leg's bracket, in order (the first leg's slowest), without the pairs that no one price puts both legs
    in: at a price P the legs' notionals are their scales (size; an inverse contract: face) times one factor (P; 1
    / P), so brackets a and b meet only where lower_a x s2 < upper_b x s1 and lower_b x s1 < upper_a x s2; as a
    rises the b that meet it rise too, so the pairs left are about twice the brackets, not their square. An inverse
    notional is rounded to 1e-16, so there the test keeps a slack of 1e-15 x (s1 + s2): a pair left out never
    holds a root, and the first pair that does is the full search's."""
    if len(legs) == 1:
        yield from ((index,) for index in range(len(bounds)))
        return
    inverse = valuation.contract_size is not None
    first, second = (valuation.face(leg.size) if inverse else leg.size for leg in legs)
    slack = (first + second) * Decimal("1e-15") if inverse else ZERO

    def reaches(low: int, high: int, low_scale: Decimal, high_scale: Decimal) -> bool:
        """Bracket `low` of one leg starts below where bracket `high` of the other ends."""
        ceiling = bounds[high][1]
        return ceiling is None or bounds[low][0] * high_scale < ceiling * low_scale + slack

    start = 0
    for a in range(len(bounds)):
        while not reaches(a, start, first, second):  # the last bracket is open above: this stops there
            start += 1
        for b in range(start, len(bounds)):
            if not reaches(b, a, second, first):
                break
            yield a, b


def _within(bound: tuple[Decimal, Decimal | None], notional: Decimal) -> bool:
    lower, ceiling = bound
    return lower < notional and (ceiling is None or notional <= ceiling)


def _candidate(legs: Sequence[tuple[Position, Tier]], other_equity: Decimal, valuation: Valuation) -> Decimal | None:
    """The linear price of the legs in those brackets, (sum of signed cost - other - sum of maint_amount) / sum of
    (q - |q| mmr); None where the denominator is 0."""
    numerator, denominator = -other_equity, ZERO
    for position, tier in legs:
        numerator += (position.cost if position.qty > 0 else -position.cost) - tier.maint_amount
        denominator += position.qty - CONTEXT.multiply(position.size, tier.mmr)
    if denominator == 0:
        return None
    return numbers.liquidation_candidate(numerator, denominator)


def _inverse_candidate(legs: Sequence[tuple[Position, Tier]], other_equity: Decimal, valuation: Valuation
                       ) -> Decimal | None:
    """The inverse price of the legs in those brackets: sum of face x (mmr + 1 for a long, mmr - 1 for a short)
    over other + sum of (C for a long, -C for a short) + sum of maint_amount, both of one sign (one leg: |q| s (1 +
    mmr) / (other + C + maint_amount) for a long, |q| s (1 - mmr) / (C - other - maint_amount) for a short); None
    where no positive price solves it."""
    numerator, denominator = ZERO, other_equity
    for position, tier in legs:
        face = valuation.face(position.size)
        long = position.qty > 0
        numerator += CONTEXT.multiply(face, tier.mmr) + (face if long else -face)
        denominator += (position.cost if long else -position.cost) + tier.maint_amount
    if numerator == 0 or denominator == 0 or (numerator > 0) != (denominator > 0):
        return None
    return numbers.liquidation_candidate(abs(numerator), abs(denominator))
