"""The boundary between the wire contract and the core: a validated input record (backstop.wire.inputs, pydantic)
becomes the core's own event (backstop.core.events), one function per record type; and back, an event as the
journal line the contract reads (a liquidation the simulation decided).

The fields carry over as they are (the same names, the same Decimal values), so an event's content digest, and
every output and hash, are what the record's would be; tests/unit/test_events.py holds the two sides' fields and
defaults equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, cast

from backstop.core.events import (
    Event,
    Execution,
    FillEvent,
    FundEvent,
    FundingEvent,
    InstrumentEvent,
    LiquidationEvent,
    MarkEvent,
    StatedTier,
    TransferEvent,
)
from backstop.wire.inputs import (
    AnyRecord,
    FillRecord,
    FundingRecord,
    FundRecord,
    InstrumentRecord,
    LiquidationRecord,
    MarkRecord,
    TransferRecord,
)


def fund_event(record: FundRecord) -> FundEvent:
    return FundEvent(record.ts, record.fund_id, record.settle_asset, record.surplus, record.max_inventory_ratio)


def instrument_event(record: InstrumentRecord) -> InstrumentEvent:
    return InstrumentEvent(
        record.ts, record.symbol, record.settle_asset, record.tick_size, record.lot_size,
        tuple(StatedTier(tier.max_notional, tier.mmr, tier.maint_amount) for tier in record.tiers),
        record.liquidation_fee_rate, record.fund_id, record.mark_tolerance, record.contract_type,
        record.contract_size)


def transfer_event(record: TransferRecord) -> TransferEvent:
    return TransferEvent(record.ts, record.transfer_id, record.account_id, record.asset, record.amount)


def fill_event(record: FillRecord) -> FillEvent:
    return FillEvent(record.ts, record.fill_id, record.account_id, record.symbol, record.side, record.qty,
                     record.price, record.fee, record.margin_mode, record.leverage, record.position_side)


def mark_event(record: MarkRecord) -> MarkEvent:
    return MarkEvent(record.ts, record.symbol, record.mark_price, record.index_price)


def funding_event(record: FundingRecord) -> FundingEvent:
    return FundingEvent(record.ts, record.symbol, record.rate, record.mark_price)


def liquidation_event(record: LiquidationRecord) -> LiquidationEvent:
    return LiquidationEvent(
        record.ts, record.liquidation_id, record.account_id, record.symbol, record.qty, record.mark_price,
        record.bankruptcy_price, tuple(Execution(execution.qty, execution.price) for execution in record.executions),
        record.position_side)


_TRANSLATIONS: dict[str, Callable[[Any], Event]] = {
    "fund": fund_event,
    "instrument": instrument_event,
    "transfer": transfer_event,
    "fill": fill_event,
    "mark": mark_event,
    "funding": funding_event,
    "liquidation": liquidation_event,
}


def to_event(record: AnyRecord) -> Event:
    """The core's event for a validated record (dispatched on `type`: a pydantic model class checks isinstance in
    Python)."""
    return _TRANSLATIONS[record.type](record)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, StatedTier | Execution):
        return {field.name: getattr(value, field.name) for field in fields(value)}
    return value


def wire_document(event: Event) -> dict[str, Any]:
    """The event as its wire record dumps it (every field, defaults included, `type` first; decimals stay Decimal,
    backstop.core.hashing.canonical_json writes them): the journal line of a record the engine made itself."""
    document: dict[str, Any] = {"type": event.type}
    for field in fields(cast(Any, event)):
        document[field.name] = _plain(getattr(event, field.name))
    return document
