"""Wire contract v1 is strict: anything not exactly a valid record is a rejection with a clear reason."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from backstop.wire import schemas
from backstop.wire.decode import MAX_RECORD_BYTES, InvalidRecord, decode_record
from scenario import fill, liquidation

GOOD = fill("f1", "u1", "buy", "1.5", "50000.5")


def reason_for(raw: bytes) -> str:
    with pytest.raises(InvalidRecord) as caught:
        decode_record(raw)
    return str(caught.value)


def with_field(**changes: object) -> bytes:
    record = dict(GOOD)
    record.update(changes)
    return orjson.dumps(record)


def test_a_valid_fill_decodes_to_exact_decimals() -> None:
    record = decode_record(orjson.dumps(GOOD))
    assert record.type == "fill"
    assert record.qty == Decimal("1.5") and record.price == Decimal("50000.5")  # type: ignore[union-attr]


@pytest.mark.parametrize(("value", "reason"), [
    (50000.5, "a decimal must be a JSON string"),
    (50000, "a decimal must be a JSON string"),
    ("5e4", "not an exact plain decimal"),
    ("NaN", "not an exact plain decimal"),
    ("Infinity", "not an exact plain decimal"),
    ("1_000", "not an exact plain decimal"),
    (" 1", "not an exact plain decimal"),
    ("0x10", "not an exact plain decimal"),
    ("1" * 21, "not an exact plain decimal"),
    ("1." + "1" * 19, "not an exact plain decimal"),
    ("-1", "must be > 0"),
    ("0", "must be > 0"),
    ("-0", "must be > 0"),
])
def test_prices_must_be_positive_plain_decimal_strings(value: object, reason: str) -> None:
    assert reason in reason_for(with_field(price=value))


def test_a_malformed_decimal_is_quoted_in_the_reason() -> None:
    assert reason_for(with_field(qty="5e4")) == 'fill.qty: not an exact plain decimal: "5e4"'


@pytest.mark.parametrize(("value", "accepted"), [
    ("0", True), ("-0", True), ("-0.000", True), ("0.5", True), ("-0.001", False), ("-1", False)])
def test_non_negative_decimals_accept_zero_in_any_spelling(value: str, accepted: bool) -> None:
    fund = orjson.dumps({"type": "fund", "ts": 1, "fund_id": "F", "settle_asset": "USDT", "surplus": "fund",
                         "max_inventory_ratio": value})
    if accepted:
        assert decode_record(fund).max_inventory_ratio == Decimal(value)  # type: ignore[union-attr]
    else:
        assert "fund.max_inventory_ratio: must be >= 0" in reason_for(fund)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"not json", "invalid JSON"),
    (b"[1, 2]", "Input should be an object"),
    (b'{"ts": 1}', "Unable to extract tag"),
    (orjson.dumps({**GOOD, "type": "trade"}), "does not match any of the expected tags"),
    (orjson.dumps({**GOOD, "extra": 1}), "fill.extra: Extra inputs are not permitted"),
    (orjson.dumps({k: v for k, v in GOOD.items() if k != "fee"}), "fill.fee: Field required"),
    (orjson.dumps({**GOOD, "ts": "1"}), "fill.ts: Input should be a valid integer"),
    (orjson.dumps({**GOOD, "ts": True}), "fill.ts"),
    (orjson.dumps({**GOOD, "ts": -1}), "fill.ts"),
    (orjson.dumps({**GOOD, "side": "BUY"}), "fill.side"),
    (orjson.dumps({**GOOD, "margin_mode": "portfolio"}), "fill.margin_mode"),
    (orjson.dumps({**GOOD, "fill_id": ""}), "fill.fill_id"),
    (orjson.dumps({**GOOD, "fill_id": "x" * 129}), "fill.fill_id"),
    (orjson.dumps({**GOOD, "account_id": "u1\u202e"}), "fill.account_id"),
    (orjson.dumps({**GOOD, "symbol": "btc usdt"}), "fill.symbol"),
    (orjson.dumps(liquidation("l", "u", "1", "1", executions=[("1", "-5")])), "liquidation.executions.0.price"),
])
def test_malformed_records_are_rejected_with_the_field_and_the_rule(raw: bytes, reason: str) -> None:
    assert reason in reason_for(raw)


def test_oversized_records_are_rejected_before_parsing() -> None:
    raw = with_field(fill_id="x").replace(b"}", b"," + b" " * MAX_RECORD_BYTES + b"}")
    assert "exceeds the limit" in reason_for(raw)


def test_checked_in_json_schemas_match_the_models() -> None:
    directory = Path(__file__).parents[2] / "schemas" / "json"
    assert schemas.drift(directory) == [], "run `backstop schemas write` and commit schemas/json"


def test_schema_drift_is_detected(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    (tmp_path / "input-fill.json").write_text("{}")
    (tmp_path / "stray.json").write_text("{}")
    assert schemas.drift(tmp_path) == ["input-fill.json", "stray.json"]


def test_output_decimals_are_strings_in_the_schema() -> None:
    ledger_schema = schemas.json_schemas()["output-fund-ledger-entry"]
    assert ledger_schema["properties"]["amount"]["type"] == "string"
    assert set(ledger_schema["required"]) >= {"id", "seq", "ts", "fund_id", "kind", "amount", "balance_after",
                                              "prev_hash", "hash"}
