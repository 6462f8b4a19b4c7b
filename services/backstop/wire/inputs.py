"""Input records of wire contract version 1 (DESIGN.md section 5), strict.

Every decimal is a JSON string holding a plain decimal ("50000.5"): no exponent, no NaN or Infinity, no
JSON number (a float would already have lost exactness), bounded in size. Timestamps are integer
milliseconds. Unknown fields, missing fields and unknown types are rejections, not guesses.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

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

SCHEMA_VERSION = 1

# At most 20 integer digits and 18 fraction digits: products of two such numbers stay exact in the
# engine's 60-digit context (see backstop.core.numbers).
DECIMAL_PATTERN = r"^-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,18})?$"


class _PlainDecimal:
    """A decimal field: a JSON string matching DECIMAL_PATTERN (and the sign the field requires), turned into a
    Decimal. Every check is a pattern that pydantic-core runs in Rust: with a Python validator per field, decoding
    and validating ran at 238,000 records/s instead of 311,000 (benchmarks/replay.py's validate_only)."""

    def __init__(self, sign: str = "", sign_message: str = "") -> None:
        self.sign, self.sign_message = sign, sign_message

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        steps = [
            core_schema.custom_error_schema(core_schema.str_schema(strict=True), "plain_decimal_type",
                                            custom_error_message='a decimal must be a JSON string such as "50000.5"'),
            core_schema.custom_error_schema(core_schema.str_schema(pattern=DECIMAL_PATTERN), "plain_decimal_syntax",
                                            custom_error_message="not an exact plain decimal"),
        ]
        if self.sign:
            sign = core_schema.str_schema(pattern=self.sign)
            steps.append(core_schema.custom_error_schema(sign, "plain_decimal_sign",
                                                         custom_error_message=self.sign_message))
        return core_schema.chain_schema([*steps, core_schema.no_info_plain_validator_function(Decimal)])

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "pattern": DECIMAL_PATTERN}


# Applied after DECIMAL_PATTERN matched, so they only need to tell the sign: digits and dots with a non-zero digit;
# anything but a minus sign followed by a non-zero digit ("-0.0" is zero).
DecimalStr = Annotated[Decimal, _PlainDecimal()]
PositiveDecimal = Annotated[Decimal, _PlainDecimal(r"^[0-9.]*[1-9][0-9.]*$", "must be > 0")]
NonNegativeDecimal = Annotated[Decimal, _PlainDecimal(r"^(?:[^-]|-[0.]*$)", "must be >= 0")]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]+$")]
Symbol = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Z0-9_-]+$")]
Asset = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[A-Z0-9]+$")]
Timestamp = Annotated[int, Field(ge=0, le=2**53)]

FUND_ACCOUNT_PREFIX = "fund:"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FundRecord(_Record):
    type: Literal["fund"] = "fund"
    ts: Timestamp
    fund_id: Identifier
    settle_asset: Asset
    surplus: Literal["fund", "trader"]
    max_inventory_ratio: NonNegativeDecimal


class Tier(_Record):
    max_notional: PositiveDecimal
    mmr: PositiveDecimal
    maint_amount: NonNegativeDecimal


class InstrumentRecord(_Record):
    type: Literal["instrument"] = "instrument"
    ts: Timestamp
    symbol: Symbol
    settle_asset: Asset
    tick_size: PositiveDecimal
    lot_size: PositiveDecimal
    tiers: Annotated[tuple[Tier, ...], Field(min_length=1, max_length=64)]
    liquidation_fee_rate: NonNegativeDecimal
    fund_id: Identifier


class TransferRecord(_Record):
    type: Literal["transfer"] = "transfer"
    ts: Timestamp
    transfer_id: Identifier
    account_id: Identifier
    asset: Asset
    amount: DecimalStr


class FillRecord(_Record):
    type: Literal["fill"] = "fill"
    ts: Timestamp
    fill_id: Identifier
    account_id: Identifier
    symbol: Symbol
    side: Literal["buy", "sell"]
    qty: PositiveDecimal
    price: PositiveDecimal
    fee: DecimalStr
    margin_mode: Literal["cross", "isolated"]
    leverage: PositiveDecimal


class MarkRecord(_Record):
    type: Literal["mark"] = "mark"
    ts: Timestamp
    symbol: Symbol
    mark_price: PositiveDecimal
    index_price: PositiveDecimal | None = None


class FundingRecord(_Record):
    type: Literal["funding"] = "funding"
    ts: Timestamp
    symbol: Symbol
    rate: DecimalStr
    mark_price: PositiveDecimal


class Execution(_Record):
    qty: PositiveDecimal
    price: PositiveDecimal


class LiquidationRecord(_Record):
    type: Literal["liquidation"] = "liquidation"
    ts: Timestamp
    liquidation_id: Identifier
    account_id: Identifier
    symbol: Symbol
    qty: PositiveDecimal
    mark_price: PositiveDecimal
    bankruptcy_price: PositiveDecimal | None = None
    executions: Annotated[tuple[Execution, ...], Field(max_length=1024)] = ()


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
