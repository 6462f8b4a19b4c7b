"""Dedupe by input id: fills, transfers and liquidations by their ids; everything else by content.

A key is remembered only once its record was applied, so a rejected record can be sent again corrected.
"""

from __future__ import annotations

from backstop.core.numbers import text
from backstop.wire.inputs import (
    AnyRecord,
    FillRecord,
    FundingRecord,
    LiquidationRecord,
    MarkRecord,
    TransferRecord,
)


def dedupe_key(record: AnyRecord) -> str:
    if isinstance(record, FillRecord):
        return f"fill\x1f{record.fill_id}"
    if isinstance(record, TransferRecord):
        return f"transfer\x1f{record.transfer_id}"
    if isinstance(record, LiquidationRecord):
        return f"liquidation\x1f{record.liquidation_id}"
    if isinstance(record, MarkRecord):
        index = "" if record.index_price is None else text(record.index_price)
        return f"mark\x1f{record.symbol}\x1f{record.ts}\x1f{text(record.mark_price)}\x1f{index}"
    if isinstance(record, FundingRecord):
        return f"funding\x1f{record.symbol}\x1f{record.ts}\x1f{text(record.rate)}\x1f{text(record.mark_price)}"
    return f"{record.type}\x1f{record.model_dump_json()}"


class Deduper:
    __slots__ = ("seen",)

    def __init__(self, seen: set[str] | None = None) -> None:
        self.seen: set[str] = seen if seen is not None else set()

    def is_duplicate(self, key: str) -> bool:
        return key in self.seen

    def remember(self, key: str) -> None:
        self.seen.add(key)
