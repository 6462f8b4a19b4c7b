"""The quantiles of one symbol and side at a quantile point, from the ADL index's float rows, without ranking every
position exactly; the result is the exact ranking's, bit for bit (tests/property/test_quantile_index.py).

A position's quantile is that of its exact rank. The rows fall into two groups whose order is certain: positions
clearly above their bankruptcy price (the index's trusted rows, by float score) first, then those clearly past it
(ranked last, by uPnL / cost); the rows the index ranks exactly (equity too close to zero, cross positions in
several symbols) join their group at their exact score. Every key lies within a margin of the exact score
(backstop.core.adl_index), so the exact order is certain between two rows whose intervals (key ± margin) do not
overlap. The quantile changes between neighbouring ranks at four places at most; at each, the rows whose intervals
chain into it are ranked exactly and every other row is certainly before or after it. So the exact work is those
few rows, and the rest is a partition and a few scans: O(rows) per quantile point.

Whether a position is stressed (backstop.core.quantiles: 10 x its distance to its bankruptcy price <= the mark)
follows from its float equity too: distance x size lies within [equity, equity + 1e-8 (1 + size)), so only rows
within the index's bound of the threshold are decided exactly. Sizes are summed exactly (UNITS_SPLIT).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, localcontext

import numpy as np
import numpy.typing as npt

from backstop.core.adl import Ranked
from backstop.core.adl_index import (
    FLOAT_ERROR,
    RELATIVE_MARGIN,
    ROUNDING_SLACK,
    UNITS_SPLIT,
    UNTRUSTED_EQUITY,
    FloatArray,
    Side,
    _Book,
)
from backstop.core.errors import InvariantViolation
from backstop.core.numbers import CONTEXT
from backstop.core.quantiles import STRESS_LEVERAGE, is_stressed

Ids = npt.NDArray[np.intp]  # a row: its slot (>= 0), or -1 - its index among the exactly ranked rows
SCORE_ERROR = 1e-12  # the quantum an exact score is rounded to


def quantile_at(rank: int, count: int) -> int:
    """backstop.core.adl.quantile without the range check."""
    return 5 - (rank - 1) * 5 // count


def side_quantiles(book: _Book, mark: Decimal, side: Side, ranked: Callable[[str], Ranked],
                   published_of: Callable[[str], int]) -> tuple[list[tuple[str, int]], Decimal]:
    """(account, quantile) for every position of the book whose quantile differs from the one published for it (the
    book's record of it is updated), and the summed size of its stressed positions. `ranked` gives a position's
    exact ADL rank, `published_of` the quantile published for an account the index keeps apart from its rows."""
    book.flush()
    used = len(book.accounts)
    mark_float = float(mark)
    size, cost, base = book.size[:used], book.cost[:used], book.base[:used]
    score, trusted, untrusted = book.scores(mark_float, side)
    live = size > 0
    notional = size * mark_float
    upnl = cost - notional if side == "short" else notional - cost
    equity = base + upnl
    with np.errstate(invalid="ignore", over="ignore"):
        bound = np.maximum(UNTRUSTED_EQUITY * (np.abs(base) + notional + cost), ROUNDING_SLACK * (1 + size))
    bound[cost <= 0] = np.inf
    past = live & ~trusted & ~untrusted
    trusted_slots, past_slots = np.flatnonzero(trusted), np.flatnonzero(past)
    # Rows ranked exactly: those of equity near zero keep their slot (id >= 0), accounts apart from the rows get
    # id -1 - i (i: their place in `apart`)
    exact_slots = np.flatnonzero(live & untrusted)
    apart = sorted(book.exact)
    exact: dict[int, Ranked] = {slot: ranked(book.accounts[slot] or "") for slot in exact_slots.tolist()}
    exact.update((-1 - index, ranked(account)) for index, account in enumerate(apart))
    ahead = np.array([row for row, r in exact.items() if not r.past_bankruptcy], dtype=np.intp)
    behind = np.array([row for row, r in exact.items() if r.past_bankruptcy], dtype=np.intp)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        past_keys = upnl[past_slots] / cost[past_slots]
        # how far a float key can be from the exact score: the index's relative margin (the rounded bankruptcy price),
        # the score quantum, and the cancellation in uPnL = notional - cost, which a leverage (or its inverse) scales
        cancellation = FLOAT_ERROR * (notional + cost) / cost
        leverage = notional[trusted_slots] / equity[trusted_slots]
        trusted_spread = (np.abs(score[trusted_slots]) * RELATIVE_MARGIN + SCORE_ERROR
                          + cancellation[trusted_slots] * np.maximum(leverage, 1 / leverage))
        past_spread = np.abs(past_keys) * FLOAT_ERROR + SCORE_ERROR + cancellation[past_slots]
    ahead_keys = np.array([float(exact[row].score) for row in ahead.tolist()], dtype=np.float64)
    behind_keys = np.array([float(exact[row].score) for row in behind.tolist()], dtype=np.float64)
    groups = (
        (np.concatenate([score[trusted_slots], ahead_keys]),
         np.concatenate([trusted_spread, np.abs(ahead_keys) * FLOAT_ERROR]),
         np.concatenate([trusted_slots, ahead]), False),
        (np.concatenate([past_keys, behind_keys]), np.concatenate([past_spread, np.abs(behind_keys) * FLOAT_ERROR]),
         np.concatenate([past_slots, behind]), True),
    )
    count = sum(len(keys) for keys, _, _, _ in groups)

    def exact_order(ids: Ids, past_group: bool) -> list[int]:
        """The rows in exact ADL order (indices into ids)."""
        rows = [exact.get(row) or ranked(book.accounts[row] or "") for row in ids.tolist()]
        if any(r.past_bankruptcy != past_group for r in rows):
            raise InvariantViolation("a row's float score put it on the wrong side of its bankruptcy price")
        return sorted(range(len(rows)), key=lambda index: rows[index].sort_key())

    changes: list[tuple[str, int]] = []
    published = book.published
    offset = 0
    for keys, spread, ids, past_group in groups:
        quantiles = _group_quantiles(keys, spread, offset, count, ids, past_group, exact_order)
        offset += len(keys)
        in_book = ids >= 0
        slots, slot_quantiles = ids[in_book], quantiles[in_book]
        moved = slot_quantiles != published[slots]
        changes.extend(zip([book.accounts[slot] or "" for slot in slots[moved].tolist()],
                           slot_quantiles[moved].tolist(), strict=True))
        published[slots[moved]] = slot_quantiles[moved]
        for row, quantile in zip(ids[~in_book].tolist(), quantiles[~in_book].tolist(), strict=True):
            account = apart[-1 - row]
            if published_of(account) != quantile:
                changes.append((account, quantile))
    stressed = _stressed_size(book, mark, ranked, trusted_slots, past_slots, (equity, bound, notional))
    with localcontext(CONTEXT):
        for r in exact.values():
            if is_stressed(r, mark, inverse=False):
                stressed += r.position.size
    return changes, stressed


def _group_quantiles(keys: FloatArray, spread: FloatArray, offset: int, count: int, ids: Ids, past_group: bool,
                     exact_order: Callable[[Ids, bool], list[int]]) -> npt.NDArray[np.int8]:
    """The quantile of every row of a group whose ranks follow `offset` rows ranked before it (of `count` in all);
    each exact score lies within key ± spread; `exact_order(ids, past_group)` orders rows exactly."""
    rows = len(keys)
    quantiles = np.zeros(rows, dtype=np.int8)
    if rows == 0:
        return quantiles
    low, high = keys - spread, keys + spread
    # where the quantile changes between positions k and k + 1 of this group (0-based)
    cuts = sorted({-(-band * count // 5) - 1 - offset for band in range(1, 5)} & set(range(rows - 1)))
    after = np.zeros(rows, dtype=np.int64)  # how many cuts each row is certainly after
    exact_position = np.full(rows, -1, dtype=np.int64)
    negated = -keys
    for cut in cuts:
        order = np.argpartition(negated, [cut, cut + 1])
        above, below = order[cut], order[cut + 1]
        hull_low, hull_high = float(low[below]), float(high[above])
        while True:  # the rows whose intervals chain into the cut
            members = (high >= hull_low) & (low <= hull_high)
            wider_low, wider_high = float(low[members].min()), float(high[members].max())
            if wider_low >= hull_low and wider_high <= hull_high:
                break
            hull_low, hull_high = min(hull_low, wider_low), max(hull_high, wider_high)
        first = int(np.count_nonzero(low > hull_high))
        member_rows = np.flatnonzero(members)
        ranked_order = exact_order(ids[member_rows], past_group)
        exact_position[member_rows[ranked_order]] = first + np.arange(len(ranked_order))
        after += high < hull_low
    starts = np.array([0, *(cut + 1 for cut in cuts)], dtype=np.int64)
    position = np.where(exact_position >= 0, exact_position, starts[after])
    quantiles[:] = 5 - (offset + position) * 5 // count
    return quantiles


def _stressed_size(book: _Book, mark: Decimal, ranked: Callable[[str], Ranked], trusted_slots: Ids, past_slots: Ids,
                   floats: tuple[FloatArray, FloatArray, FloatArray]) -> Decimal:
    """The exact summed size of the stressed positions among the trusted and the past rows."""
    equity, bound, notional = (values[trusted_slots] for values in floats)
    clearly = trusted_slots[STRESS_LEVERAGE * equity + (STRESS_LEVERAGE + 1) * bound < notional]
    unclear = trusted_slots[(STRESS_LEVERAGE * equity + (STRESS_LEVERAGE + 1) * bound >= notional)
                            & (STRESS_LEVERAGE * equity - (STRESS_LEVERAGE + 1) * bound <= notional)]
    decided = [slot for slot in unclear.tolist() if is_stressed(ranked(book.accounts[slot] or ""), mark,
                                                                           inverse=False)]
    slots = np.concatenate([clearly, past_slots, np.array(decided, dtype=np.intp)]).astype(np.intp)
    units = (int(book.units_high[slots].astype(np.int64).sum()) * UNITS_SPLIT
             + int(book.units_low[slots].astype(np.int64).sum()))
    return Decimal(units).scaleb(-8, CONTEXT)
