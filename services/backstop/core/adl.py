"""ADL ranking (BitMEX's rule, which Bybit and Binance follow in spirit) and the 1-5 quantiles.

PnL% = q x (mark - E) / |q x E|; effective leverage = |mark| / |mark - BP| of the position's own BP (rounded in the
fund's favour); score = PnL% x leverage when PnL% >= 0, else PnL% / leverage, formed with one division and rounded
half-even to 1e-12 (docs/design.md §9.4). A position at or past its own BP is ranked last. Ties go to the larger
position, then the smaller account id.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from backstop.core.numbers import CONTEXT, ONE, PRICE_QUANTUM, ZERO, ratio, whole_steps
from backstop.core.state import Position
from backstop.core.valuation import Valuation


@dataclass(frozen=True, slots=True)
class Ranked:
    """A position's place in the queue: its score (docs/design.md §9.4, one division to 1e-12) and whether it is
    ranked last (at or past its own BP, or a position whose cost rounded away to zero). PnL% and leverage are
    explain-only figures, computed when asked."""

    position: Position
    score: Decimal
    bankruptcy_price: Decimal
    past_bankruptcy: bool
    unrealized_pnl: Decimal
    leverage_terms: tuple[Decimal, Decimal]  # leverage = numerator / denominator

    @property
    def pnl_ratio(self) -> Decimal:
        """uPnL / cost, HALF_EVEN to 1e-12 (explain only)."""
        cost = self.position.cost
        return ZERO if cost == 0 else ratio(self.unrealized_pnl, cost)

    @property
    def leverage(self) -> Decimal | None:
        """The effective leverage, HALF_EVEN to 1e-12 (explain only); None when ranked last or without equity."""
        return None if self.past_bankruptcy or self.leverage_terms[1] <= 0 else ratio(*self.leverage_terms)

    def sort_key(self) -> tuple[bool, Decimal, Decimal, str]:
        return (self.past_bankruptcy, -self.score, -self.position.size, self.position.account_id)


def score(unrealized_pnl: Decimal, cost: Decimal, mark: Decimal, distance: Decimal) -> Decimal:
    """The BitMEX score with one division: PnL% x leverage = uPnL x mark / (cost x distance) when uPnL >= 0,
    PnL% / leverage = uPnL x distance / (cost x mark) when uPnL < 0."""
    if unrealized_pnl >= 0:
        return ratio(CONTEXT.multiply(unrealized_pnl, mark), CONTEXT.multiply(cost, distance))
    return ratio(CONTEXT.multiply(unrealized_pnl, distance), CONTEXT.multiply(cost, mark))


def rank_position(position: Position, mark: Decimal, bankruptcy: Decimal, valuation: Valuation) -> Ranked:
    """Score one position against its own (rounded) BP: distance = mark - BP for a long, BP - mark for a short.
    Its leverage is mark / distance, or BP / distance for an inverse contract (N / equity: docs/design.md §9.4), so
    the score's `mark` is the BP there, at least the price quantum 1e-8 (a long's BP can round down to 0)."""
    unrealized = position.unrealized_pnl(mark, valuation)
    cost = position.cost
    distance = mark - bankruptcy if position.qty > 0 else bankruptcy - mark
    scale = max(bankruptcy, PRICE_QUANTUM) if valuation.inverse else mark  # a long's BP may floor to 0
    if cost <= 0:  # a remainder whose cost rounded away: no PnL% to rank by
        return Ranked(position, ZERO, bankruptcy, True, unrealized, (scale, distance))
    if distance <= 0:
        return Ranked(position, ratio(unrealized, cost), bankruptcy, True, unrealized, (scale, distance))
    return Ranked(position, score(unrealized, cost, scale, distance), bankruptcy, False, unrealized,
                  (scale, distance))


def rank_binance(position: Position, mark: Decimal, valuation: Valuation, *, collateral: Decimal,
                 margin_balance: Decimal, maintenance: Decimal, equity: Decimal, bankruptcy: Decimal) -> Ranked:
    """Binance's published LeveragePnL (its ADL FAQ): Pnl Percent = max(0, uPnL) / max(1, wallet balance), margin
    ratio = maintenance margin / (wallet balance + uPnL) (0 when that is <= 0), score = their product, formed with
    one division: max(uPnL, 0) x MM / (max(1, W) x (W + U)). W is the collateral (isolated margin, or the cross
    wallet), W + U the margin balance and MM the maintenance it is compared with (isolated: the position's; cross:
    the account's, so the margin ratio is the account's), uPnL the position's own. A losing or bankrupt position
    scores 0; nothing is ranked last apart (ties: the larger position, then the smaller account id).
    `equity` (the position's equity share) only feeds the explain-only effective leverage."""
    unrealized = position.unrealized_pnl(mark, valuation)
    notional = valuation.value(position.size, mark)
    terms = (notional, equity)
    if unrealized <= 0 or margin_balance <= 0:
        return Ranked(position, ZERO, bankruptcy, False, unrealized, terms)
    numerator = CONTEXT.multiply(unrealized, maintenance)
    denominator = CONTEXT.multiply(max(collateral, ONE), margin_balance)
    return Ranked(position, ratio(numerator, denominator), bankruptcy, False, unrealized, terms)


def pro_rata(sizes: list[Decimal], total: Decimal, lot_size: Decimal) -> list[Decimal]:
    """Split `total` over positions in proportion to their sizes, each FLOOR(size x total / held) to whole lots,
    then hand the remaining lots out one at a time in queue order; no position gives more than it holds."""
    held = sum(sizes, ZERO)
    if held <= total:
        return list(sizes)
    takes = [whole_steps(CONTEXT.multiply(size, total), held, lot_size) for size in sizes]
    left = total - sum(takes, ZERO)
    while left > 0:
        for index, size in enumerate(sizes):
            if left <= 0:
                break
            step = min(lot_size, size - takes[index], left)
            if step > 0:
                takes[index] += step
                left -= step
    return takes


def quantile(rank: int, count: int) -> int:
    """5 for the top 20% of ranked positions (rank 1 is the top) ... 1 for the bottom 20%."""
    if not 1 <= rank <= count:
        raise ValueError(f"rank {rank} outside 1..{count}")
    return 5 - (rank - 1) * 5 // count


def order(ranked: list[Ranked]) -> list[Ranked]:
    return sorted(ranked, key=Ranked.sort_key)
