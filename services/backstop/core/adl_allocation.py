"""How a round splits a lot (or a shortfall) among counterparties, for the allocation rules of docs/design.md §11.2.

Pure functions over exact decimals. Each returns the takes aligned with its input; every division rounds once
(backstop.core.numbers.whole_steps: FLOOR to a whole lot, or to the money unit), and what the rounding leaves is
handed out one step at a time in a stated order, so the result never depends on anything but the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from backstop.core.numbers import CONTEXT, MONEY_QUANTUM, ONE, ZERO, whole_steps


@dataclass(frozen=True, slots=True)
class Candidate:
    """An eligible counterparty: its position's size, its profit u = uPnL at the mark (exact, signed), and its
    equity (the position's equity share: isolated margin + uPnL, or the cross share of §9.4)."""

    account_id: str
    size: Decimal
    profit: Decimal
    equity: Decimal


def hand_out(takes: list[Decimal], caps: list[Decimal], order: list[int], left: Decimal, step: Decimal) -> Decimal:
    """Give `left` away `step` at a time in `order`, pass after pass, never a take beyond its cap; what nobody has
    room for is returned."""
    while left > 0:
        moved = False
        for index in order:
            if left <= 0:
                break
            give = min(step, caps[index] - takes[index], left)
            if give > 0:
                takes[index] += give
                left -= give
                moved = True
        if not moved:
            break
    return left


def _by_profit(candidates: list[Candidate], among: list[int]) -> list[int]:
    """Profit descending, then size descending, then account id."""
    return sorted(among, key=lambda i: (-candidates[i].profit, -candidates[i].size, candidates[i].account_id))


def capped_pro_rata(candidates: list[Candidate], total: Decimal, lot_size: Decimal, full_haircut: Decimal
                    ) -> list[Decimal]:
    """Chitra's capped pro-rata on profit, in whole lots: only profitable counterparties (u > 0), each taking a share
    of `total` in proportion to u, capped at its size and, when closing the whole lot at the round's price costs its
    takers `full_haircut` > 0, at FLOOR(u x total / full_haircut) (its haircut never above its profit). Capped ones
    take their cap, in ascending cap / u; the others FLOOR(rest x u / U_rest) to whole lots; the lots left go one
    at a time by profit. What no cap allows is left undeleveraged."""
    count = len(candidates)
    caps = [ZERO] * count
    for index, candidate in enumerate(candidates):
        if candidate.profit > 0:
            cap = candidate.size
            if full_haircut > 0:
                cap = min(cap, whole_steps(CONTEXT.multiply(candidate.profit, total), full_haircut, lot_size))
            caps[index] = cap
    active = [i for i in range(count) if caps[i] > 0]
    active.sort(key=lambda i: (Fraction(caps[i]) / Fraction(candidates[i].profit), candidates[i].account_id))
    takes = [ZERO] * count
    rest_qty, rest_profit = total, sum((candidates[i].profit for i in active), ZERO)
    first_free = len(active)
    for place, index in enumerate(active):
        if CONTEXT.multiply(caps[index], rest_profit) > CONTEXT.multiply(rest_qty, candidates[index].profit):
            first_free = place
            break
        takes[index] = caps[index]
        rest_qty -= caps[index]
        rest_profit -= candidates[index].profit
    for index in active[first_free:]:
        takes[index] = whole_steps(CONTEXT.multiply(rest_qty, candidates[index].profit), rest_profit, lot_size)
    hand_out(takes, caps, _by_profit(candidates, active), total - sum(takes, ZERO), lot_size)
    return takes


def min_max_leverage(candidates: list[Candidate], total: Decimal, lot_size: Decimal, full_haircut: Decimal
                     ) -> list[Decimal]:
    """Takes that minimise the largest leverage left (arXiv 2603.15963), water-filled in whole lots. Leverage is
    valued at the round's price p, where a take changes no equity: size x p / equity_p, with
    F = total x equity_p = total x equity - size x full_haircut. The positions with F > 0, by size / F descending
    (then size descending, account id), are cut from the top down to one level: the top k with
    (S_k - total) x F_{k+1} >= s_{k+1} x Phi_k (S, Phi: their sizes and F summed) each keep
    (S_k - total) x F / Phi_k, so take FLOOR((s x Phi_k - F x (S_k - total)) / Phi_k) to whole lots; the lots left go
    one at a time in that order. Positions with F <= 0 (bankrupt at p) give only after every other position is
    closed, in the input's order (the ADL queue)."""
    count = len(candidates)
    takes = [ZERO] * count
    weights = [CONTEXT.multiply(total, c.equity) - CONTEXT.multiply(c.size, full_haircut) for c in candidates]
    solvent = [i for i in range(count) if weights[i] > 0]
    solvent.sort(key=lambda i: (-Fraction(candidates[i].size) / Fraction(weights[i]), -candidates[i].size,
                                candidates[i].account_id))
    sizes, phi, cut = ZERO, ZERO, len(solvent)
    for place, index in enumerate(solvent):
        sizes += candidates[index].size
        phi += weights[index]
        if place + 1 < len(solvent):
            following = solvent[place + 1]
            excess = sizes - total
            if excess > 0 and CONTEXT.multiply(excess, weights[following]) >= CONTEXT.multiply(
                    candidates[following].size, phi):
                cut = place + 1
                break
    top = solvent[:cut]
    if sizes > total:
        excess = sizes - total
        for index in top:
            takes[index] = whole_steps(CONTEXT.multiply(candidates[index].size, phi)
                                       - CONTEXT.multiply(weights[index], excess), phi, lot_size)
        hand_out(takes, [c.size for c in candidates], top, total - sum(takes, ZERO), lot_size)
        return takes
    for index in top:
        takes[index] = candidates[index].size
    left = total - sizes
    for index in range(count):
        if left <= 0:
            break
        if weights[index] <= 0:
            takes[index] = min(candidates[index].size, left)
            left -= takes[index]
    return takes


def socialized_shares(profits: list[Decimal], keys: list[tuple[str, str]], shortfall: Decimal) -> list[Decimal]:
    """A shortfall spread over profits u > 0 in proportion to them, never beyond one (to the money unit, FLOOR):
    all of every profit when they sum to the shortfall or less, else FLOOR(shortfall x u / U) each and the units left
    one at a time by profit descending, then key (account id, symbol)."""
    count = len(profits)
    caps = [whole_steps(u, ONE, MONEY_QUANTUM) if u > 0 else ZERO for u in profits]
    total = sum((u for u in profits if u > 0), ZERO)
    if total <= shortfall:
        return caps
    shares = [whole_steps(CONTEXT.multiply(shortfall, u), total, MONEY_QUANTUM) if u > 0 else ZERO for u in profits]
    order = sorted((i for i in range(count) if profits[i] > 0), key=lambda i: (-profits[i], keys[i]))
    hand_out(shares, caps, order, shortfall - sum(shares, ZERO), MONEY_QUANTUM)
    return shares
