"""Finds the few positions a deleverage needs among millions, for the exact ADL ranking to order.

Scoring every opposite position exactly (Decimal) takes seconds at a million positions, yet a deleverage only
needs the top of the queue. Under the BitMEX rule, a position whose account has no other cross position in the
same settlement asset has
    equity = B + uPnL,  uPnL = s x (size x mark - cost)      (B: its isolated margin, or the wallet if cross)
    r = uPnL / cost,  leverage = size x mark / equity,  score = r x leverage (r >= 0) or r / leverage (r < 0)
and is past its bankruptcy price when equity <= 0. So its score at any mark follows from three numbers (size,
cost, B), kept per symbol and side in float arrays and refreshed only for the accounts touched since the last
deleverage. Floats only *choose candidates*, with a margin far above their rounding error; the candidates are
then ranked exactly by adl.rank_position, so the outcome is the exact ranking's, bit for bit. The exact score uses
the BP rounded in the fund's favour and, for cross, the equity share rounded up (docs/design.md §9.4): both only
lengthen the distance to the BP, by less than one price quantum plus one money quantum over the size, so the float
score overstates the exact one by a relative error below (1 + size) quanta over the equity. Rows whose float
equity is too close to zero to trust or small enough for that error to matter, rows whose cost rounded away to
zero, and accounts with cross positions in several symbols (their equity share depends on other marks), are always
among the candidates, as are rows whose leverage (or its inverse) scales the float's rounding of uPnL = notional -
cost past the margin. Rows exactly alike (same margin mode, size, cost and B)
score exactly alike and queue by account id, so of many such rows only the first few by account id are candidates
(`_Book.thin_ties`). The tests compare it with the full ranking.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

import numpy as np
import numpy.typing as npt

from backstop.core.ledger import isolated_owner
from backstop.core.state import Position, Positions

Side = Literal["long", "short"]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
KindArray = npt.NDArray[np.int8]

RELATIVE_MARGIN = 1e-6  # float scores are within ~1e-12 of the exact ones; this margin dwarfs that
ABSOLUTE_MARGIN = 1e-6  # and the 1e-12 score quantum, which could make a just-excluded row tie
# a few units of rounding of a double (2.2e-16), relative: the cancellation in uPnL = notional - cost is this much
# of notional + cost, and a score scales it by the leverage (or its inverse)
FLOAT_ERROR = 1e-15
UNTRUSTED_EQUITY = 1e-6  # |equity| below this share of (|B| + notional + cost): the float sign may be wrong
# |equity| below ROUNDING_SLACK x (1 + size): the rounding of the BP and of the equity share (under one quantum each)
# could move the exact score by half of RELATIVE_MARGIN or more
ROUNDING_SLACK = 1e-8 * 2 / RELATIVE_MARGIN
FLUSH_ROWS = 4096  # pending rows written at once: the first build would otherwise hold a million tuples
# (size, cost, B, kind, size units high, low, published quantile) of an empty slot: clearly past bankruptcy on
# either side, so never a candidate
EMPTY_ROW = (0.0, 1.0, -4.0, 0, 0.0, 0.0, 0)
UNITS_SPLIT = 10**10  # a size in units of 1e-8 (< 10^20) as high x UNITS_SPLIT + low: each part exact in a double
# A row's kind: whether its float numbers stand for its exact ones (each decimal written in at most 15 characters,
# so at most 15 significant digits: two such decimals are equal exactly when their nearest doubles are), and its
# margin mode, which picks the exact bankruptcy formula. Only rows of one kind > 0 are compared for ties.
UNTIED, ISOLATED, CROSS = 0, 1, 2
EXACT_DIGITS = 15
TIE_ROWS = 256  # candidates beyond this many are checked for rows exactly alike


@dataclass(slots=True)
class _Book:
    """The trusted rows of one symbol and side: slot -> (account, size, cost, B, kind)."""

    size: FloatArray = field(default_factory=lambda: np.zeros(0))
    cost: FloatArray = field(default_factory=lambda: np.zeros(0))
    base: FloatArray = field(default_factory=lambda: np.zeros(0))
    kind: KindArray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    # For the quantile points (backstop.core.quantile_index): the exact size in two parts, and the quantile last
    # published for the row's position
    units_high: FloatArray = field(default_factory=lambda: np.zeros(0))
    units_low: FloatArray = field(default_factory=lambda: np.zeros(0))
    published: KindArray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    accounts: list[str | None] = field(default_factory=list)
    slot_of: dict[str, int] = field(default_factory=dict)
    free: list[int] = field(default_factory=list)
    exact: set[str] = field(default_factory=set)  # accounts always ranked exactly
    # Scores at the mark of the last deleverage, kept for the next one: in a liquidation block every deleverage
    # comes at the same mark, and only the rows written since (counterparties, the liquidated) are scored again.
    scored_at: float | None = None
    scored: tuple[FloatArray, BoolArray, BoolArray] | None = None  # score, trusted, untrusted
    changed: set[int] = field(default_factory=set)  # slots written since they were scored

    pending: dict[int, tuple[float, ...]] = field(default_factory=dict)  # slot -> row, until flush()
    # Groups of rows exactly alike, their slots by account id, kept between deleverages (sorting a large group's
    # account ids again each time would cost more than the deleverage, and a group mostly just loses the members a
    # deleverage took): (kind, size, cost, B) ->
    # (slots in account order, len(joined) when sorted). `joined`: slots given to a new account since, in order.
    tie_orders: dict[tuple[float, ...], tuple[npt.NDArray[np.intp], int]] = field(default_factory=dict)
    joined: list[int] = field(default_factory=list)

    def put(self, account_id: str, size: float, cost: float, base: float, kind: int, units: int = 0,
            published: int = 0) -> None:
        if self.exact:
            self.exact.discard(account_id)
        slot = self.slot_of.get(account_id)
        if slot is None:
            slot = self.free.pop() if self.free else self._grow()
            self.slot_of[account_id] = slot
            self.accounts[slot] = account_id
            if self.tie_orders:
                self.joined.append(slot)
        high, low = divmod(units, UNITS_SPLIT)
        self.pending[slot] = (size, cost, base, kind, high, low, published)
        if len(self.pending) >= FLUSH_ROWS:
            self.flush()

    def put_exact(self, account_id: str) -> None:
        self._release(account_id)
        self.exact.add(account_id)

    def drop(self, account_id: str) -> None:
        self.exact.discard(account_id)
        self._release(account_id)

    def _release(self, account_id: str) -> None:
        slot = self.slot_of.pop(account_id, None)
        if slot is not None:
            self.accounts[slot] = None
            self.pending[slot] = EMPTY_ROW
            self.free.append(slot)

    def flush(self) -> None:
        """Write the pending rows into the arrays at once (a numpy item write per number costs more)."""
        if self.pending:
            slots = np.fromiter(self.pending, dtype=np.intp, count=len(self.pending))
            rows = np.array(list(self.pending.values()))
            self.size[slots], self.cost[slots], self.base[slots] = rows[:, 0], rows[:, 1], rows[:, 2]
            self.kind[slots] = rows[:, 3]
            self.units_high[slots], self.units_low[slots], self.published[slots] = rows[:, 4], rows[:, 5], rows[:, 6]
            self.changed.update(self.pending)
            self.pending.clear()

    def _grow(self) -> int:
        used = len(self.accounts)
        if used == len(self.size):
            capacity = max(1024, 2 * used)
            self.size, self.cost, self.base = (np.resize(a, capacity) for a in (self.size, self.cost, self.base))
            self.kind = np.resize(self.kind, capacity)
            self.units_high, self.units_low = np.resize(self.units_high, capacity), np.resize(self.units_low, capacity)
            self.published = np.resize(self.published, capacity)
            (self.size[used:], self.cost[used:], self.base[used:], self.kind[used:], self.units_high[used:],
             self.units_low[used:], self.published[used:]) = EMPTY_ROW
        self.accounts.append(None)
        return used

    def scores(self, mark: float, side: Side) -> tuple[FloatArray, BoolArray, BoolArray]:
        """Every row's float score (-inf unless trusted), whether it is trusted, whether its equity is too close to
        zero to trust; the rows changed since the last call are rescored, or all of them at a new mark."""
        used = len(self.accounts)
        if self.scored is None or self.scored_at != mark or len(self.scored[0]) != used:
            self.scored = _scores(self.size[:used], self.cost[:used], self.base[:used], mark, side)
        elif self.changed:
            slots = np.array(sorted(self.changed), dtype=np.intp)
            score, trusted, untrusted = self.scored
            score[slots], trusted[slots], untrusted[slots] = _scores(self.size[slots], self.cost[slots],
                                                                     self.base[slots], mark, side)
        self.scored_at = mark
        self.changed.clear()
        return self.scored

    def thin_ties(self, rows: npt.NDArray[np.intp], qty: float) -> npt.NDArray[np.intp]:
        """Of each group of rows exactly alike (one kind > 0, equal size, cost and B), only the first few by account
        id: they score exactly alike, so the queue orders them by account id, and the first ones cover qty before
        the others are reached. Rows of kind UNTIED, and groups too small to thin, are all kept."""
        size, cost, base, kind = self.size[rows], self.cost[rows], self.base[rows], self.kind[rows]
        alike = (kind != UNTIED) & _normal(size) & _normal(cost) & _normal(base)
        if np.count_nonzero(alike) <= TIE_ROWS:
            return rows
        kept = [rows[~alike]]
        rows, size, cost, base, kind = rows[alike], size[alike], cost[alike], base[alike], kind[alike]
        order = np.lexsort((base, cost, size, kind))
        rows, size, cost, base, kind = rows[order], size[order], cost[order], base[order], kind[order]
        starts = np.flatnonzero(np.concatenate(([True], (np.diff(size) != 0) | (np.diff(cost) != 0)
                                                | (np.diff(base) != 0) | (np.diff(kind) != 0))))
        lengths = np.diff(np.append(starts, len(rows)))
        with np.errstate(divide="ignore", over="ignore"):  # rows that cover qty, with room for float rounding
            enough = np.floor(qty * (1 + RELATIVE_MARGIN) / size[starts]) + 2
        big = lengths > enough
        thinned = np.ones(len(rows), dtype=np.bool_)
        orders: dict[tuple[float, ...], tuple[npt.NDArray[np.intp], int]] = {}
        for start, length, keep in zip(starts[big].tolist(), lengths[big].tolist(), enough[big].tolist(), strict=True):
            thinned[start:start + length] = False
            key = (float(kind[start]), float(size[start]), float(cost[start]), float(base[start]))
            orders[key] = self._tie_order(key, rows[start:start + length])
            kept.append(orders[key][0][:int(keep)])
        self.tie_orders = orders  # only the groups still seen
        if not orders or len(self.joined) > len(self.accounts):
            self.tie_orders, self.joined = {}, []  # bounds `joined`; the groups are sorted again next time
        kept.append(rows[thinned])
        return np.concatenate(kept)

    def _tie_order(self, key: tuple[float, ...], group: npt.NDArray[np.intp]) -> tuple[npt.NDArray[np.intp], int]:
        """The group's slots in account order (its rows ascend by slot), from the last sort when every member is
        still there in the same slot: members that left are skipped; a row that joined the group, or a slot given
        to another account since, sorts it again."""
        known = self.tie_orders.get(key)
        if known is not None:
            order, joined_then = known
            member = np.zeros(len(self.accounts), dtype=np.bool_)
            member[group] = True
            fresh = self.joined[joined_then:]
            if not (fresh and member[fresh].any()):
                order = order[member[order]]
                if len(order) == len(group):
                    return order, joined_then
        accounts = self.accounts
        names = [accounts[slot] or "" for slot in group.tolist()]
        return group[sorted(range(len(group)), key=names.__getitem__)], len(self.joined)


def _normal(values: FloatArray) -> BoolArray:
    """Zero, or a normal double far from overflow: where the nearest double tells 15-digit decimals apart."""
    magnitude = np.abs(values)
    normal: BoolArray = (magnitude == 0) | ((magnitude >= 1e-290) & (magnitude <= 1e290))
    return normal


CHUNK = 16_384  # rows scored per pass: the scratch arrays (~400 KiB) stay in the CPU cache


class _Scratch:
    """Working arrays of one chunk, allocated once: fresh temporaries of a million rows would each cost page
    faults and a trip through memory, where chunks stay in the cache."""

    def __init__(self) -> None:
        self.notional, self.upnl, self.equity, self.other = (np.empty(CHUNK) for _ in range(4))
        self.bits = np.empty(CHUNK, dtype=np.int64)


_SCRATCH = _Scratch()
_NEG_INF_BITS = np.array(-np.inf).view(np.int64)


def _scores(size: FloatArray, cost: FloatArray, base: FloatArray, mark: float, side: Side
            ) -> tuple[FloatArray, BoolArray, BoolArray]:
    """Row by row (the same numbers whichever rows are passed): the score, trusted, untrusted."""
    rows = len(size)
    score, trusted, untrusted = np.empty(rows), np.empty(rows, dtype=np.bool_), np.empty(rows, dtype=np.bool_)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, rows, CHUNK):
            end = min(start + CHUNK, rows)
            _score_chunk(size[start:end], cost[start:end], base[start:end], mark, side == "short",
                         score[start:end], trusted[start:end], untrusted[start:end])
    return score, trusted, untrusted


def _score_chunk(size: FloatArray, cost: FloatArray, base: FloatArray, mark: float, short: bool,
                 score: FloatArray, trusted: BoolArray, untrusted: BoolArray) -> None:
    """equity = B + uPnL; trusted: equity > bound, untrusted: |equity| <= bound, bound = the larger of
    UNTRUSTED_EQUITY (|B| + notional + cost) and ROUNDING_SLACK (1 + size), infinite where cost <= 0; score =
    r x leverage (r >= 0) or r / leverage (r < 0), -inf unless trusted. Choices between two values are made on
    their bits (masks from sign bits): a masked ufunc branches on every row and runs ~15x slower than the
    arithmetic."""
    rows = len(size)
    notional, upnl, equity, other, bits = (a[:rows] for a in (
        _SCRATCH.notional, _SCRATCH.upnl, _SCRATCH.equity, _SCRATCH.other, _SCRATCH.bits))
    np.multiply(size, mark, out=notional)
    if short:
        np.subtract(cost, notional, out=upnl)
    else:
        np.subtract(notional, cost, out=upnl)
    np.add(base, upnl, out=equity)
    bound = np.abs(base, out=other)
    bound += notional
    bound += cost
    bound *= UNTRUSTED_EQUITY
    np.multiply(size, ROUNDING_SLACK, out=score)  # score is scratch until the end
    score += ROUNDING_SLACK
    np.maximum(bound, score, out=bound)
    bound[cost <= 0] = np.inf
    np.greater(equity, bound, out=trusted)  # clearly above bankruptcy (empty slots never are: EMPTY_ROW)
    np.less_equal(np.abs(equity, out=score), bound, out=untrusted)
    # a score far from its float's cancellation error: else (a leverage or its inverse of ~1e9 and more, an equity
    # far above the notional) the row is ranked exactly, as one of equity near zero is
    # (FLOAT_ERROR (notional + cost) / cost x max(leverage, 1 / leverage) <= ABSOLUTE_MARGIN / 2, without a division)
    quiet = (FLOAT_ERROR * (notional + cost) * np.fmax(notional * notional, equity * equity)
             <= ABSOLUTE_MARGIN / 2 * cost * notional * equity)
    amplified = trusted & ~quiet
    np.subtract(bound, equity, out=bound)  # negative exactly where trusted
    keep = np.right_shift(bound.view(np.int64), 63, out=bits)  # all ones where trusted
    ratio = np.divide(upnl, cost, out=upnl)
    leverage = np.divide(notional, equity, out=notional)
    np.multiply(ratio, leverage, out=score)
    np.divide(ratio, leverage, out=other)
    losing = np.right_shift(ratio.view(np.int64), 63, out=equity.view(np.int64))  # all ones where r < 0
    chosen, alternative = score.view(np.int64), other.view(np.int64)
    alternative ^= chosen
    alternative &= losing
    chosen ^= alternative  # r / leverage where losing
    chosen &= keep
    np.invert(keep, out=keep)
    keep &= _NEG_INF_BITS
    chosen |= keep  # -inf unless trusted
    if amplified.any():
        score[amplified] = -np.inf
        trusted &= ~amplified
        untrusted |= amplified


def _head(score: FloatArray, top: int) -> npt.NDArray[np.intp]:
    """The rows of the `top` highest scores, highest first. A strided sample gives a bar that about 4 x top rows
    clear, so the partial sort runs over those few instead of every row (all of them if the bar lets too few
    through)."""
    rows = len(score)
    if top == 0:
        return np.zeros(0, dtype=np.intp)
    step = max(1, rows // 65_536)
    sample = score[::step]
    keep = min(len(sample), 4 * (top // step + 1) + 8)
    bar = np.partition(sample, len(sample) - keep)[len(sample) - keep]
    pool = np.flatnonzero(score >= bar)
    if len(pool) < top:
        pool = np.arange(rows)
    if top < len(pool):
        pool = pool[np.argpartition(score[pool], len(pool) - top)[len(pool) - top:]]
    return pool[np.argsort(-score[pool], kind="stable")]


class AdlIndex:
    """Float prefilter for BitMEX-rule deleverages; `touch` every account whose positions or balances change."""

    def __init__(self) -> None:
        self._books: dict[tuple[str, Side], _Book] = {}
        self._dirty: set[str] = set()

    def touch(self, account_id: str) -> None:
        self._dirty.add(account_id)

    @property
    def dirty(self) -> bool:
        """Whether accounts were touched since the last refresh."""
        return bool(self._dirty)

    @property
    def pending(self) -> int:
        """How many accounts the next refresh rewrites (besides those behind the ledger's touched accounts)."""
        return len(self._dirty)

    def touch_ledger_accounts(self, names: Iterable[str]) -> None:
        """Mark the traders behind wallet:<account>:<asset> and isolated:<account>:<symbol> ledger accounts."""
        for name in names:  # (ledger.wallet_owner inline: a call per name made the first build 5% slower)
            if name.startswith("wallet:"):
                self._dirty.add(name[7:name.rindex(":")])
            elif name.startswith("isolated:"):
                self._dirty.add(isolated_owner(name))

    def refresh(self, positions: Positions, base_of: Callable[[Position], Decimal],
                settle_asset: Callable[[str], str], limit: int | None = None) -> None:
        """Rewrite the rows of every touched account, or of `limit` of them (the rest stay touched). The order and
        the share do not matter: rows only choose candidates, and a deleverage refreshes them all first."""
        if limit is None or len(self._dirty) <= limit:
            dirty, self._dirty = self._dirty, set()
        else:
            dirty = set(itertools.islice(self._dirty, limit))
            self._dirty -= dirty
        books = self._books
        empty = not any(book.slot_of or book.exact for book in books.values())  # the first build: no rows to drop
        for account_id in dirty:
            book_of_account = positions.of(account_id)
            cross_assets = [settle_asset(p.symbol) for p in book_of_account if p.margin_mode == "cross"]
            keys = []
            for position in book_of_account:
                key = (position.symbol, position.side)
                keys.append(key)
                book = books.get(key) or books.setdefault(key, _Book())
                if position.margin_mode == "cross" and cross_assets.count(settle_asset(position.symbol)) > 1:
                    book.put_exact(account_id)
                else:  # float(Decimal) goes through its string anyway: the string's length comes for free
                    size, cost, base = str(position.size), str(position.cost), str(base_of(position))
                    exact = len(size) <= EXACT_DIGITS and len(cost) <= EXACT_DIGITS and len(base) <= EXACT_DIGITS
                    book.put(account_id, float(size), float(cost), float(base),
                             (ISOLATED if position.margin_mode == "isolated" else CROSS) if exact else UNTIED,
                             int(position.size.scaleb(8)), position.adl_quantile)
            if not empty:  # rows of positions the account no longer holds (a call only where there is one)
                for key, book in books.items():
                    if key not in keys and (account_id in book.slot_of or account_id in book.exact):
                        book.drop(account_id)
        for book in books.values():
            book.flush()

    def candidates(self, symbol: str, side: Side, mark: Decimal, qty: Decimal) -> list[str] | None:
        """Accounts among which the exact top of the queue covering `qty` must lie; None: rank them all."""
        book = self._books.get((symbol, side))
        if book is None:
            return []
        used = len(book.accounts)
        size = book.size[:used]
        score, trusted, untrusted = book.scores(float(mark), side)
        chosen = set(book.exact)
        chosen.update(book.accounts[i] or "" for i in np.flatnonzero(untrusted))
        trusted_count = int(np.count_nonzero(trusted))
        top = 64
        while True:  # the top rows by float score until they cover qty: a partial sort, not a full one
            head = _head(score, min(top, trusted_count))
            covered = np.cumsum(size[head])
            if len(head) and covered[-1] >= float(qty) * (1 + RELATIVE_MARGIN):
                break
            if top >= trusted_count:
                return None  # the trusted rows do not cover it: positions past bankruptcy come into play
            top *= 8
        needed = int(np.searchsorted(covered, float(qty) * (1 + RELATIVE_MARGIN)))
        threshold = score[head[needed]]
        floor = threshold - abs(threshold) * RELATIVE_MARGIN - ABSOLUTE_MARGIN
        rows = np.flatnonzero(score >= floor)
        if len(rows) > TIE_ROWS:
            rows = book.thin_ties(rows, float(qty))
        chosen.update(book.accounts[i] or "" for i in rows)
        chosen.discard("")
        return sorted(chosen)

    def count(self, symbol: str, side: Side) -> int:
        """Open positions of that symbol and side (after a refresh)."""
        book = self._books.get((symbol, side))
        return 0 if book is None else len(book.slot_of) + len(book.exact)

    def book(self, symbol: str, side: Side) -> _Book | None:
        """The rows of one symbol and side (after a refresh), for backstop.core.quantile_index."""
        return self._books.get((symbol, side))

    def memory_bytes(self) -> int:
        """Bytes held by the float rows and their scores (not the positions themselves)."""
        return sum(b.size.nbytes + b.cost.nbytes + b.base.nbytes + b.kind.nbytes + b.units_high.nbytes
                   + b.units_low.nbytes + b.published.nbytes + sum(a.nbytes for a in b.scored or ())
                   for b in self._books.values())
