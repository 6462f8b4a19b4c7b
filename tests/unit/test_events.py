"""The core's own events (backstop.core.events) and the wire layer's translation into them (backstop.wire.translate):
the two sides name the same fields with the same defaults, a translated record keeps every value, and an event the
engine made itself reads back as the contract reads its journal line."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import orjson
import pytest

from backstop.core.dedupe import content_digest, content_document
from backstop.core.events import EVENT_TYPES, Execution, LiquidationEvent, StatedTier
from backstop.core.hashing import canonical_json
from backstop.wire import inputs
from backstop.wire.decode import InvalidRecord, decode_model, decode_record, through_contract
from backstop.wire.translate import to_event, wire_document

RECORDS: dict[str, dict[str, Any]] = {
    "fund": {"type": "fund", "ts": 1, "fund_id": "MAIN", "settle_asset": "USDT", "surplus": "fund",
             "max_inventory_ratio": "0.5"},
    "instrument": {"type": "instrument", "ts": 1, "symbol": "BTCUSD", "settle_asset": "BTC", "tick_size": "0.5",
                   "lot_size": "1", "tiers": [{"max_notional": "10", "mmr": "0.005"},
                                              {"max_notional": "20", "mmr": "0.01", "maint_amount": "0.05"}],
                   "liquidation_fee_rate": "0.005", "fund_id": "MAIN", "mark_tolerance": "0.01",
                   "contract_type": "inverse", "contract_size": "100"},
    "transfer": {"type": "transfer", "ts": 2, "transfer_id": "t-1", "account_id": "a", "asset": "USDT",
                 "amount": "-12.50"},
    "fill": {"type": "fill", "ts": 3, "fill_id": "f-1", "account_id": "a", "symbol": "BTCUSDT", "side": "buy",
             "qty": "1.0", "price": "50000.5", "fee": "0.1", "margin_mode": "isolated", "leverage": "10",
             "position_side": "long"},
    "mark": {"type": "mark", "ts": 4, "symbol": "BTCUSDT", "mark_price": "50001", "index_price": "50000"},
    "funding": {"type": "funding", "ts": 5, "symbol": "BTCUSDT", "rate": "-0.0001", "mark_price": "50001"},
    "liquidation": {"type": "liquidation", "ts": 6, "liquidation_id": "l-1", "account_id": "a", "symbol": "BTCUSDT",
                    "qty": "1", "mark_price": "45000", "bankruptcy_price": "44900",
                    "executions": [{"qty": "0.4", "price": "44950"}], "position_side": "long"},
}


def _fields(model: type[Any]) -> list[tuple[str, Any]]:
    return [(name, None if info.is_required() else info.default) for name, info in model.model_fields.items()
            if name != "type"]


def _event_fields(event: type[Any]) -> list[tuple[str, Any]]:
    return [(f.name, None if f.default is dataclasses.MISSING else f.default) for f in dataclasses.fields(event)]


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_each_event_has_the_wire_records_fields_and_defaults(kind: str) -> None:
    model, event = inputs.RECORD_TYPES[kind], EVENT_TYPES[kind]
    assert event.type == kind
    assert _event_fields(event) == _fields(model)
    required = {name for name, info in model.model_fields.items() if info.is_required()}
    assert required == {f.name for f in dataclasses.fields(event) if f.default is dataclasses.MISSING}


def test_nested_records_have_the_wire_fields_and_defaults() -> None:
    assert _event_fields(StatedTier) == _fields(inputs.Tier)
    assert _event_fields(Execution) == _fields(inputs.Execution)


@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_a_translated_record_keeps_every_value_and_dumps_as_its_wire_record(kind: str) -> None:
    raw = orjson.dumps(RECORDS[kind])
    model, event = decode_model(raw), decode_record(raw)
    assert type(event) is EVENT_TYPES[kind] and to_event(model) == event
    assert canonical_json(wire_document(event)) == canonical_json(model.model_dump())
    assert dataclasses.is_dataclass(event) and not hasattr(event, "__dict__")  # slotted


def test_events_are_frozen() -> None:
    event = decode_record(orjson.dumps(RECORDS["fill"]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.ts = 9  # type: ignore[misc]


def test_the_content_leaves_defaults_out_and_nests_records_as_objects() -> None:
    bare = decode_record(orjson.dumps({"type": "liquidation", "ts": 6, "liquidation_id": "l-1", "account_id": "a",
                                       "symbol": "BTCUSDT", "qty": "1", "mark_price": "45000"}))
    spelled = decode_record(orjson.dumps({"type": "liquidation", "ts": 6, "liquidation_id": "l-1", "account_id": "a",
                                          "symbol": "BTCUSDT", "qty": "1.0", "mark_price": "45000",
                                          "bankruptcy_price": None, "executions": [], "position_side": "both"}))
    assert content_document(bare) == {"type": "liquidation", "ts": 6, "liquidation_id": "l-1", "account_id": "a",
                                      "symbol": "BTCUSDT", "qty": Decimal(1), "mark_price": Decimal(45000)}
    assert content_digest(bare) == content_digest(spelled)
    full = content_document(decode_record(orjson.dumps(RECORDS["instrument"])))
    assert full["tiers"] == [{"max_notional": Decimal(10), "mmr": Decimal("0.005"), "maint_amount": None},
                             {"max_notional": Decimal(20), "mmr": Decimal("0.01"), "maint_amount": Decimal("0.05")}]


def test_the_content_digest_of_every_record_is_the_one_version_1_held() -> None:
    """The digests dedupe holds (and the state hash chains): computed before the core had its own events."""
    digests = {kind: content_digest(decode_record(orjson.dumps(record))).hex() for kind, record in RECORDS.items()}
    assert digests == GOLDEN_DIGESTS


GOLDEN_DIGESTS = {
    "fill": "5d0bab43639b8f49", "fund": "7474afe9882e91d3", "funding": "5089959184bcd178",
    "instrument": "c3f1fd9b9fe816f1", "liquidation": "361dc2ae091128d2", "mark": "f0b9994764dd6dba",
    "transfer": "80786b2e9fd3a985",
}


def test_a_decided_event_reads_back_through_the_contract() -> None:
    decided = LiquidationEvent(7, "sim-7", "a", "BTCUSDT", Decimal("1.50"), Decimal("45000"),
                               executions=(Execution(Decimal("1.5"), Decimal("44950")),))
    read = through_contract(decided)
    assert read == decided and str(read.qty) == "1.5"  # the decimal as the journal line writes it
    too_fine = dataclasses.replace(decided, qty=Decimal("0.000000001"))
    with pytest.raises(InvalidRecord, match="qty: at most 12 integer and 8 fraction digits"):
        through_contract(too_fine)
