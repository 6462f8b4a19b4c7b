"""ADL ranking (BitMEX's rule, which Bybit and Binance follow in spirit) and the 1-5 quantiles.

PnL% = q x (mark - E) / |q x E|; effective leverage = |mark| / |mark - BP| of the position's own BP;
score = PnL% x leverage when PnL% >= 0, else PnL% / leverage. A position at or past its own BP is ranked
last. Ties go to the larger position, then the smaller account id.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from backstop.core.numbers import CONTEXT, score
from backstop.core.state import Position


@dataclass(frozen=True, slots=True)
class Ranked:
    position: Position
    pnl_ratio: Decimal
    leverage: Decimal | None  # None: at or past its own bankruptcy price
    score: Decimal
    bankruptcy_price: Decimal

    @property
    def past_bankruptcy(self) -> bool:
        return self.leverage is None

    def sort_key(self) -> tuple[bool, Decimal, Decimal, str]:
        return (self.past_bankruptcy, -self.score, -self.position.size, self.position.account_id)


def rank_position(position: Position, mark: Decimal, bankruptcy: Decimal) -> Ranked:
    """Score one position. PnL% and leverage stay exact; only the score is quantized (SCORE_QUANTUM)."""
    pnl_ratio = CONTEXT.divide(position.unrealized_pnl(mark), position.cost)
    distance = mark - bankruptcy if position.qty > 0 else bankruptcy - mark
    if distance <= 0:
        return Ranked(position, pnl_ratio, None, score(pnl_ratio), bankruptcy)
    leverage = CONTEXT.divide(mark, distance)
    raw = CONTEXT.multiply(pnl_ratio, leverage) if pnl_ratio >= 0 else CONTEXT.divide(pnl_ratio, leverage)
    return Ranked(position, pnl_ratio, leverage, score(raw), bankruptcy)


def rank_binance(position: Position, mark: Decimal, equity: Decimal, bankruptcy: Decimal) -> Ranked:
    """Binance's published rule: effective leverage = |notional at mark| / the position's margin balance."""
    pnl_ratio = CONTEXT.divide(position.unrealized_pnl(mark), position.cost)
    if equity <= 0:
        return Ranked(position, pnl_ratio, None, score(pnl_ratio), bankruptcy)
    leverage = CONTEXT.divide(CONTEXT.multiply(position.size, mark), equity)
    raw = CONTEXT.multiply(pnl_ratio, leverage) if pnl_ratio >= 0 else CONTEXT.divide(pnl_ratio, leverage)
    return Ranked(position, pnl_ratio, leverage, score(raw), bankruptcy)


def pro_rata(sizes: list[Decimal], total: Decimal, lot_size: Decimal) -> list[Decimal]:
    """Split `total` over positions in proportion to their sizes, in whole lots (rounded down), then hand the
    remaining lots out one at a time in queue order; no position gives more than it holds."""
    held = sum(sizes, Decimal(0))
    if held <= total:
        return list(sizes)
    takes = [CONTEXT.divide(CONTEXT.multiply(size, total), held) // lot_size * lot_size for size in sizes]
    left = total - sum(takes, Decimal(0))
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
