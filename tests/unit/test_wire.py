"""Wire contract v1 is strict: anything not exactly a valid record is a rejection with a clear reason."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backstop.wire import schemas
from backstop.wire.decode import MAX_RECORD_BYTES, InvalidRecord, decode_record, repeated_key
from backstop.wire.inputs import (
    KINDS,
    LEVERAGE_RANGE,
    NON_NEGATIVE,
    POSITIVE,
    SIGNED,
    Kind,
    decimal_fields,
    decimal_reason,
)
from scenario import fill, fund, funding, instrument, liquidation, mark, transfer

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
    ("1" * 21, "at most 10 integer and 8 fraction digits"),
    ("1." + "1" * 19, "at most 10 integer and 8 fraction digits"),
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


def _with_repeat(record: dict[str, object], key: str, value: object, *, at: int) -> bytes:
    entries = list(record.items())
    entries.insert(at, (key, value))
    return ("{" + ",".join(f"{orjson.dumps(k).decode()}:{orjson.dumps(v).decode()}" for k, v in entries) + "}").encode()


def test_a_key_repeated_in_an_object_is_refused_wherever_it_is() -> None:
    """Parsers differ on which of two equal keys counts (first, last, or an error): the ledger refuses the record
    rather than apply one reading of it. The first repeat in input order is named; keys compare unescaped."""
    # even a repeat with the same value, and one that would otherwise pass validation
    assert reason_for(_with_repeat(GOOD, "qty", GOOD["qty"], at=0)) == 'duplicate key "qty"'
    assert reason_for(_with_repeat(GOOD, "qty", "1000", at=len(GOOD))) == 'duplicate key "qty"'
    assert reason_for(with_field(extra=1).replace(b'"extra"', b'"fee":"0","\\u0065xtra"')) == 'duplicate key "fee"'
    assert reason_for(orjson.dumps(GOOD)[:-1] + b',"\\u0074s":2}') == 'duplicate key "ts"'
    liquidated = liquidation("l", "u", "1", "1", executions=[("1", "5")])
    inner = orjson.dumps(liquidated).replace(b'"price":"5"', b'"price":"5","qty":"2"')
    assert reason_for(inner) == 'duplicate key "qty"'
    # before the models (an unknown key), after the syntax (invalid JSON wins)
    assert reason_for(_with_repeat({**GOOD, "zz": 1}, "zz", 2, at=0)) == 'duplicate key "zz"'
    assert reason_for(_with_repeat(GOOD, "qty", "1", at=0)[:-1] + b",}") == "invalid JSON"
    # the same key in two objects, and keys inside strings, are no repeats
    assert reason_for(orjson.dumps({**GOOD, "fill_id": '{"a":1,"a":2}'})).startswith("fill.fill_id: String should")
    assert decode_record(orjson.dumps({**GOOD, "fill_id": "a:b:c"})).fill_id == "a:b:c"
    assert len(decode_record(orjson.dumps(liquidation("l", "u", "1", "1",
                                                      executions=[("1", "5"), ("1", "6")]))).executions) == 2


def _first_repeat(value: object) -> str | None:
    """The oracle, on the document's structure (objects as lists of pairs): keys in input order, each before its
    value."""
    if isinstance(value, list) and value and all(isinstance(item, tuple) for item in value):
        seen: set[str] = set()
        for key, inner in value:
            if key in seen:
                return str(key)
            seen.add(key)
            if (found := _first_repeat(inner)) is not None:
                return found
    elif isinstance(value, list):
        for inner in value:
            if (found := _first_repeat(inner)) is not None:
                return found
    return None


keys = st.sampled_from(["a", "b", "qty", "ts", "é", "a:b", '{"a":1}'])
documents = st.recursive(st.one_of(st.none(), st.integers(), keys), lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(st.tuples(keys, inner), max_size=4)), max_leaves=10)


def _text(value: object) -> str:
    if isinstance(value, list) and value and all(isinstance(item, tuple) for item in value):
        return "{" + ",".join(f"{json.dumps(k)}:{_text(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(item) for item in value) + "]"
    return json.dumps(value)


@given(documents)
def test_the_first_repeated_key_is_found_in_input_order(document: object) -> None:
    raw = _text(document).encode()
    assert repeated_key(raw, orjson.loads(raw)) == _first_repeat(document)


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


# docs/design.md §9.2, restated: field -> (kind, sign).
DESIGN_9_2 = {
    "fund.max_inventory_ratio": ("RATE", ">= 0"),
    "instrument.tick_size": ("PRICE", "> 0"), "instrument.lot_size": ("QTY", "> 0"),
    "instrument.tiers[].max_notional": ("MONEY", "> 0"), "instrument.tiers[].mmr": ("RATE", "> 0"),
    "instrument.tiers[].maint_amount": ("MONEY", ">= 0"), "instrument.liquidation_fee_rate": ("RATE", ">= 0"),
    "instrument.mark_tolerance": ("RATE", ">= 0"), "instrument.contract_size": ("PRICE", "> 0"),
    "transfer.amount": ("MONEY", "signed"),
    "fill.qty": ("QTY", "> 0"), "fill.price": ("PRICE", "> 0"), "fill.fee": ("MONEY", "signed"),
    "fill.leverage": ("LEVERAGE", "0.01 to 1000"),
    "mark.mark_price": ("PRICE", "> 0"), "mark.index_price": ("PRICE", "> 0"),
    "funding.rate": ("RATE", "signed"), "funding.mark_price": ("PRICE", "> 0"),
    "liquidation.qty": ("QTY", "> 0"), "liquidation.mark_price": ("PRICE", "> 0"),
    "liquidation.bankruptcy_price": ("PRICE", "> 0"),
    "liquidation.executions[].qty": ("QTY", "> 0"), "liquidation.executions[].price": ("PRICE", "> 0"),
}
DIGITS_9_2 = {"QTY": (12, 8), "PRICE": (10, 8), "MONEY": (16, 8), "RATE": (4, 18), "LEVERAGE": (4, 8)}
VALID = {"fund": fund(), "instrument": instrument(), "transfer": transfer("t", "u", "1"), "fill": dict(GOOD),
         "mark": mark("1"), "funding": funding("0.0001", "1"),
         "liquidation": liquidation("l", "u", "1", "1", executions=[("1", "1")])}


def test_every_decimal_field_has_the_kind_and_sign_of_design_9_2() -> None:
    assert {name: (kind.name, sign) for name, (kind, sign) in decimal_fields().items()} == DESIGN_9_2
    assert {name: (KINDS[name].integer_digits, KINDS[name].fraction_digits) for name in DIGITS_9_2} == DIGITS_9_2


def _with(field: str, value: str) -> bytes:
    record_type, *path = field.replace("[]", ".0").split(".")
    record = orjson.loads(orjson.dumps(VALID[record_type]))
    target = record
    for step in path[:-1]:
        target = target[int(step)] if step.isdigit() else target[step]
    target[path[-1]] = value
    return orjson.dumps(record)


def _largest(kind: Kind, sign: str) -> str:
    return "1000" if sign == LEVERAGE_RANGE else "9" * kind.integer_digits + "." + "9" * kind.fraction_digits


@pytest.mark.parametrize("field", sorted(DESIGN_9_2))
def test_every_field_takes_its_bounds_and_rejects_one_digit_more(field: str) -> None:
    kind, sign = decimal_fields()[field]
    integer, fraction = kind.integer_digits, kind.fraction_digits
    smallest = "0.01" if sign == LEVERAGE_RANGE else "0." + "0" * (fraction - 1) + "1"
    for value in (_largest(kind, sign), smallest):
        decode_record(_with(field, value))
    if sign == SIGNED:
        decode_record(_with(field, "-" + _largest(kind, sign)))
    bound = f"{field.replace('[]', '.0')}: at most {integer} integer and {fraction} fraction digits"
    for value in ("1" + "0" * integer, "0." + "0" * fraction + "1", "1." + "1" * (fraction + 1)):
        assert reason_for(_with(field, value)) == f'{bound}: "{value[:40]}"'


plain_decimals = st.builds(
    lambda sign, integer, fraction, dot: sign + integer + (dot + fraction if fraction or dot else ""),
    st.sampled_from(["", "", "-", "+"]), st.from_regex(r"\A(0|[1-9][0-9]{0,22}|00[0-9]?)\Z"),
    st.from_regex(r"\A[0-9]{0,21}\Z"), st.sampled_from([".", ".", ",", ""]))


@given(plain_decimals | st.text(alphabet="0123456789-.e ", max_size=12), st.sampled_from(sorted(DESIGN_9_2)))
def test_one_pattern_per_field_accepts_exactly_the_bounded_decimals(value: str, field: str) -> None:
    """The single pattern a field is checked with agrees with the rule spelled out: syntax, digits, sign."""
    kind, sign = decimal_fields()[field]
    syntax = re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?", value) is not None
    integer, _, fraction = value.lstrip("-").partition(".")
    digits = syntax and len(integer) <= kind.integer_digits and len(fraction) <= kind.fraction_digits
    number = Decimal(value) if syntax else None
    signed = number is not None and {SIGNED: True, POSITIVE: number > 0, NON_NEGATIVE: number >= 0,
                                     LEVERAGE_RANGE: Decimal("0.01") <= number <= 1000}[sign]
    try:
        decode_record(_with(field, value))
        accepted = True
    except InvalidRecord as error:
        accepted = False
        reason = str(error).split("; ")[0]  # (an invalid tier also reports the tuple of tiers as too short)
        assert reason == f"{field.replace('[]', '.0')}: {decimal_reason(value, kind, sign)}"
        expected = ("not an exact plain decimal" if not syntax else "fraction digits" if not digits else "must be")
        assert expected in reason
    assert accepted == (syntax and digits and signed)
