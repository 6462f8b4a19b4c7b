"""Input records of wire contract version 1 (DESIGN.md section 5), strict.

Every decimal is a JSON string holding a plain decimal ("50000.5"): no exponent, no NaN or Infinity, no
JSON number (a float would already have lost exactness), bounded in size. Timestamps are integer
milliseconds. Unknown fields, missing fields and unknown types are rejections, not guesses.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
)

SCHEMA_VERSION = 1

# At most 20 integer digits and 18 fraction digits: products of two such numbers stay exact in the
# engine's 60-digit context (see backstop.core.numbers).
DECIMAL_PATTERN = r"^-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,18})?$"
_DECIMAL_RE = re.compile(DECIMAL_PATTERN)


def _parse_decimal(value: Any) -> Decimal:
    if not isinstance(value, str):
        raise ValueError("a decimal must be a JSON string such as \"50000.5\"")
    if not _DECIMAL_RE.match(value):
        raise ValueError(f"not an exact plain decimal: {value[:40]!r}")
    return Decimal(value)


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _non_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("must be >= 0")
    return value


_DECIMAL_JSON_SCHEMA = WithJsonSchema({"type": "string", "pattern": DECIMAL_PATTERN})
DecimalStr = Annotated[Decimal, BeforeValidator(_parse_decimal), _DECIMAL_JSON_SCHEMA]
PositiveDecimal = Annotated[Decimal, BeforeValidator(_parse_decimal), AfterValidator(_positive),
                            _DECIMAL_JSON_SCHEMA]
NonNegativeDecimal = Annotated[Decimal, BeforeValidator(_parse_decimal), AfterValidator(_non_negative),
                               _DECIMAL_JSON_SCHEMA]
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
