"""Dedupe by input id: fills, transfers and liquidations by their ids; everything else by content.

A key is remembered only once its record was applied, so a rejected record can be sent again corrected. Keys are
kept for the lateness window of backstop.core.ordering: an older record is rejected as out of order anyway, so
memory stays bounded by the input rate, not by the length of the journal.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import cast

from backstop.core.numbers import text
from backstop.core.ordering import MAX_LATENESS_MS
from backstop.wire.inputs import (
    AnyRecord,
    FillRecord,
    FundingRecord,
    LiquidationRecord,
    MarkRecord,
    TransferRecord,
)


def dedupe_key(record: AnyRecord) -> str:
    kind = record.type  # not isinstance: a pydantic model class checks instances in Python
    if kind == "fill":
        return f"fill\x1f{cast(FillRecord, record).fill_id}"
    if kind == "transfer":
        return f"transfer\x1f{cast(TransferRecord, record).transfer_id}"
    if kind == "liquidation":
        return f"liquidation\x1f{cast(LiquidationRecord, record).liquidation_id}"
    if kind == "mark":
        mark = cast(MarkRecord, record)
        index = "" if mark.index_price is None else text(mark.index_price)
        return f"mark\x1f{mark.symbol}\x1f{mark.ts}\x1f{text(mark.mark_price)}\x1f{index}"
    if kind == "funding":
        funding = cast(FundingRecord, record)
        return (f"funding\x1f{funding.symbol}\x1f{funding.ts}\x1f{text(funding.rate)}\x1f"
                f"{text(funding.mark_price)}")
    return f"{kind}\x1f{record.model_dump_json()}"


class Deduper:
    """Applied keys with their ts, in the order they were applied; forgets those older than the window."""

    __slots__ = ("_keys", "_order", "window_ms")

    def __init__(self, remembered: Iterable[tuple[str, int]] = (), *, window_ms: int = MAX_LATENESS_MS) -> None:
        self.window_ms = window_ms
        self._keys: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()
        for key, ts in remembered:
            self._keys[key] = ts
            self._order.append((ts, key))

    def __len__(self) -> int:
        return len(self._keys)

    def is_duplicate(self, key: str) -> bool:
        return key in self._keys

    def remember(self, key: str, ts: int, newest_ts: int) -> None:
        keys, order = self._keys, self._order
        keys[key] = ts
        order.append((ts, key))
        cutoff = newest_ts - self.window_ms
        while order and order[0][0] < cutoff:  # nearly ts-ordered: a straggler is forgotten a little later
            old_ts, old_key = order.popleft()
            if keys.get(old_key) == old_ts:
                del keys[old_key]

    def entries(self) -> list[tuple[str, int]]:
        """For snapshots: (key, ts) in the order they were applied."""
        return [(key, ts) for ts, key in self._order]
