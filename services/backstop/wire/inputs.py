"""Input records of wire contract version 2 (docs/design.md sections 5 and 7), strict.

Every decimal is a JSON string holding a plain decimal ("50000.5"): no exponent, no NaN or Infinity, no
JSON number (a float would already have lost exactness). Each decimal field has a kind (docs/design.md §9.2)
that bounds its integer and fraction digits, and a sign; the bounds are what let both engines compute every
product exactly in fixed-width integers. Timestamps are integer milliseconds. Unknown fields, missing fields and
unknown types are rejections, not guesses.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    TypeAdapter,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from backstop.core.events import IDENTIFIER_CHARS, IDENTIFIER_MAX

# The syntax of every decimal, on the wire and in outputs: plain notation, no leading zeros, no exponent.
DECIMAL_PATTERN = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$"
_SYNTAX = re.compile(DECIMAL_PATTERN)


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of number (docs/design.md §9.2): at most so many integer and fraction digits, as written."""

    name: str
    integer_digits: int
    fraction_digits: int

    def pattern(self, sign: str) -> str:
        """The one pattern a field of this kind and sign matches: syntax, digits and sign together."""
        integer, fraction = self.integer_digits, self.fraction_digits
        whole = f"[1-9][0-9]{{0,{integer - 1}}}"
        digits = f"(?:\\.[0-9]{{1,{fraction}}})?"
        if sign == SIGNED:
            return f"^-?(?:0|{whole}){digits}$"
        if sign == NON_NEGATIVE:  # zero in any spelling, "-0" included
            return f"^(?:(?:0|{whole}){digits}|-0(?:\\.0{{1,{fraction}}})?)$"
        if sign == POSITIVE:  # a non-zero integer part, or "0." and at most `fraction` digits, one of them non-zero
            small = "|".join("0" * zeros + "[1-9]" + (f"[0-9]{{0,{rest}}}" if (rest := fraction - 1 - zeros) else "")
                             for zeros in range(fraction))
            return f"^(?:{whole}{digits}|0\\.(?:{small}))$"
        if sign == LEVERAGE_RANGE and self == LEVERAGE:  # 0.01 to 1000
            return "^(?:[1-9][0-9]{0,2}(?:\\.[0-9]{1,8})?|1000(?:\\.0{1,8})?|0\\.(?:[1-9][0-9]{0,7}|0[1-9][0-9]{0,6}))$"
        raise ValueError(f"no pattern for {self.name} with sign {sign!r}")

    def bound_text(self) -> str:
        return f"at most {self.integer_digits} integer and {self.fraction_digits} fraction digits"


QTY = Kind("QTY", 12, 8)
PRICE = Kind("PRICE", 10, 8)
MONEY = Kind("MONEY", 16, 8)
RATE = Kind("RATE", 4, 18)
LEVERAGE = Kind("LEVERAGE", 4, 8)
# Not a wire kind: decimal parameters of tools (what-if files), bounded as wire decimals were in version 1.
PARAMETER = Kind("PARAMETER", 20, 18)
# Not wire kinds: numbers of the engine state a snapshot carries (docs/design.md §9.3; backstop.wire.snapshot_state):
# a position's cost basis (MAX_COST, at 1e-16), a lot's cost (< 2^280 at 1e-16; held below 10^68 here, which no
# journal reaches either) and a ledger balance (BALANCE_BOUND).
COST = Kind("COST", 22, 16)
LOT_COST = Kind("LOT_COST", 68, 16)
BALANCE = Kind("BALANCE", 68, 8)
KINDS = {kind.name: kind for kind in (QTY, PRICE, MONEY, RATE, LEVERAGE, PARAMETER, COST, LOT_COST, BALANCE)}

# A field's sign rule, and the reason when a decimal within its kind's digits breaks it.
SIGNED, POSITIVE, NON_NEGATIVE, LEVERAGE_RANGE = "signed", "> 0", ">= 0", "0.01 to 1000"
SIGN_REASONS = {SIGNED: "", POSITIVE: "must be > 0", NON_NEGATIVE: "must be >= 0",
                LEVERAGE_RANGE: "must be >= 0.01 and <= 1000"}
_QUOTED = 40  # characters of a bad value quoted in a reason


def quoted(text: str) -> str:
    """At most 40 characters of a bad input in a reason, as a JSON string (control characters escaped): one
    canonical spelling that the compiled engine writes too (Python's repr depends on Unicode tables)."""
    return orjson.dumps(text[:_QUOTED]).decode()


def decimal_reason(value: object, kind: Kind, sign: str) -> str:
    """Why `value` is not a valid decimal of this kind and sign: the type, the syntax, the digits, or the sign (in
    that order). Runs only for a rejected value: the check itself is the one pattern of Kind.pattern."""
    if not isinstance(value, str):
        return 'a decimal must be a JSON string such as "50000.5"'
    # fullmatch: `$` also matches before a last "\n", which pydantic-core's patterns (Rust's regex) do not
    if not _SYNTAX.fullmatch(value):
        return f"not an exact plain decimal: {quoted(value)}"
    if not re.fullmatch(kind.pattern(SIGNED), value):
        return f"{kind.bound_text()}: {quoted(value)}"
    return SIGN_REASONS[sign] or f"not a {kind.name} decimal: {quoted(value)}"


class PlainDecimal:
    """A decimal field: a JSON string matching its kind's pattern for its sign, turned into a Decimal. The check is
    one pattern that pydantic-core runs in Rust (a Python validator per field made decoding and validating markedly
    slower: benchmarks/replay.py's validate_only). Its error carries the kind and the sign; backstop.wire.decode asks
    decimal_reason which rule the value broke, only for a value it refused."""

    def __init__(self, kind: Kind, sign: str) -> None:
        self.kind, self.sign = kind, sign
        self.pattern = kind.pattern(sign)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        check = core_schema.custom_error_schema(
            core_schema.str_schema(strict=True, pattern=self.pattern), "plain_decimal",
            custom_error_message=self.description(), custom_error_context={"kind": self.kind.name, "sign": self.sign})
        return core_schema.chain_schema([check, core_schema.no_info_plain_validator_function(Decimal)])

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "pattern": self.pattern, "description": self.description()}

    def description(self) -> str:
        sign = f", {self.sign}" if self.sign != SIGNED else ""
        return f"a plain decimal string of kind {self.kind.name}: {self.kind.bound_text()}{sign}"


Qty = Annotated[Decimal, PlainDecimal(QTY, POSITIVE)]
Price = Annotated[Decimal, PlainDecimal(PRICE, POSITIVE)]
Money = Annotated[Decimal, PlainDecimal(MONEY, SIGNED)]
PositiveMoney = Annotated[Decimal, PlainDecimal(MONEY, POSITIVE)]
NonNegativeMoney = Annotated[Decimal, PlainDecimal(MONEY, NON_NEGATIVE)]
Rate = Annotated[Decimal, PlainDecimal(RATE, SIGNED)]
PositiveRate = Annotated[Decimal, PlainDecimal(RATE, POSITIVE)]
NonNegativeRate = Annotated[Decimal, PlainDecimal(RATE, NON_NEGATIVE)]
Leverage = Annotated[Decimal, PlainDecimal(LEVERAGE, LEVERAGE_RANGE)]
# Tool parameters (not wire fields).
DecimalStr = Annotated[Decimal, PlainDecimal(PARAMETER, SIGNED)]
PositiveDecimal = Annotated[Decimal, PlainDecimal(PARAMETER, POSITIVE)]
NonNegativeDecimal = Annotated[Decimal, PlainDecimal(PARAMETER, NON_NEGATIVE)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=IDENTIFIER_MAX, pattern=f"^{IDENTIFIER_CHARS}$")]
SYMBOL_CHARS, SYMBOL_MAX, ASSET_CHARS, ASSET_MAX = r"[A-Z0-9_-]", 32, r"[A-Z0-9]", 16
Symbol = Annotated[str, StringConstraints(min_length=1, max_length=SYMBOL_MAX, pattern=f"^{SYMBOL_CHARS}+$")]
Asset = Annotated[str, StringConstraints(min_length=1, max_length=ASSET_MAX, pattern=f"^{ASSET_CHARS}+$")]
Timestamp = Annotated[int, Field(ge=0, le=2**53)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FundRecord(_Record):
    type: Literal["fund"] = "fund"
    ts: Timestamp
    fund_id: Identifier
    settle_asset: Asset
    surplus: Literal["fund", "trader"]
    max_inventory_ratio: NonNegativeRate


class Tier(_Record):
    max_notional: PositiveMoney
    mmr: PositiveRate
    maint_amount: NonNegativeMoney | None = None  # omitted: derived from the brackets (docs/design.md §7)


class InstrumentRecord(_Record):
    type: Literal["instrument"] = "instrument"
    ts: Timestamp
    symbol: Symbol
    settle_asset: Asset
    tick_size: Price
    lot_size: Qty
    tiers: Annotated[tuple[Tier, ...], Field(min_length=1, max_length=64)]
    liquidation_fee_rate: NonNegativeRate
    fund_id: Identifier
    mark_tolerance: NonNegativeRate | None = None  # omitted: DEFAULT_MARK_TOLERANCE (docs/design.md §7)
    # docs/design.md §7, inverse contracts: the quote value of one contract, required for (and only for) inverse
    contract_type: Literal["linear", "inverse"] = "linear"
    contract_size: Price | None = None


class TransferRecord(_Record):
    type: Literal["transfer"] = "transfer"
    ts: Timestamp
    transfer_id: Identifier
    account_id: Identifier
    asset: Asset
    amount: Money


class FillRecord(_Record):
    type: Literal["fill"] = "fill"
    ts: Timestamp
    fill_id: Identifier
    account_id: Identifier
    symbol: Symbol
    side: Literal["buy", "sell"]
    qty: Qty
    price: Price
    fee: Money
    margin_mode: Literal["cross", "isolated"]
    leverage: Leverage
    position_side: Literal["both", "long", "short"] = "both"  # docs/design.md §7: hedge mode


class MarkRecord(_Record):
    type: Literal["mark"] = "mark"
    ts: Timestamp
    symbol: Symbol
    mark_price: Price
    index_price: Price | None = None


class FundingRecord(_Record):
    type: Literal["funding"] = "funding"
    ts: Timestamp
    symbol: Symbol
    rate: Rate
    mark_price: Price


class Execution(_Record):
    qty: Qty
    price: Price


class LiquidationRecord(_Record):
    type: Literal["liquidation"] = "liquidation"
    ts: Timestamp
    liquidation_id: Identifier
    account_id: Identifier
    symbol: Symbol
    qty: Qty
    mark_price: Price
    bankruptcy_price: Price | None = None
    executions: Annotated[tuple[Execution, ...], Field(max_length=1024)] = ()
    position_side: Literal["both", "long", "short"] = "both"  # the position liquidated (hedge mode: one side)


AnyRecord = (
    FundRecord | InstrumentRecord | TransferRecord | FillRecord | MarkRecord | FundingRecord | LiquidationRecord
)
InputRecord = Annotated[AnyRecord, Field(discriminator="type")]
RECORD_TYPES: dict[str, type[_Record]] = {
    "fund": FundRecord,
    "instrument": InstrumentRecord,
    "transfer": TransferRecord,
    "fill": FillRecord,
    "mark": MarkRecord,
    "funding": FundingRecord,
    "liquidation": LiquidationRecord,
}
INPUT_ADAPTER: TypeAdapter[InputRecord] = TypeAdapter(InputRecord)


@functools.cache
def decimal_fields() -> dict[str, tuple[Kind, str]]:
    """Every decimal field of the input records, as "fill.qty" or "instrument.tiers[].mmr" -> (kind, sign): the table
    of docs/design.md §9.2, read from the models (tests compare the two; fuzz tests try every bound of every field)."""
    found: dict[str, tuple[Kind, str]] = {}

    def visit(prefix: str, model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            annotations = [info.annotation, *get_args(info.annotation)]
            for item in [*info.metadata, *(m for a in annotations for m in getattr(a, "__metadata__", ()))]:
                if isinstance(item, PlainDecimal):
                    found[f"{prefix}.{name}"] = (item.kind, item.sign)
            for annotation in (a for outer in annotations for a in (outer, *get_args(outer))):
                if isinstance(annotation, type) and issubclass(annotation, _Record):
                    visit(f"{prefix}.{name}[]", annotation)

    for record_type, model in RECORD_TYPES.items():
        visit(record_type, model)
    return found
