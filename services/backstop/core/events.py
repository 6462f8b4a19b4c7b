"""The input events the core applies: frozen, slotted, plain data, owned by the core.

The wire layer validates input records against the contract (backstop.wire.inputs: pydantic, the schema source of
schemas/json and AsyncAPI) and translates each valid record into one of these (backstop.wire.translate); the core
never sees the wire models. A field here means what the wire field of the same name means (docs/design.md §5, §7):
same names, same defaults, every decimal already within its kind's bounds (§9.2). `type` is the record type's name,
a class attribute, as the journal writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, Literal

from backstop.core.state import MarginMode, PositionSide, SurplusPolicy

FUND_ACCOUNT_PREFIX = "fund:"  # an account id that names an insurance fund: "fund:<fund_id>"
# the ids the wire accepts (backstop.wire.inputs.Identifier: accounts, funds, fills...), held to in snapshots too
IDENTIFIER_CHARS, IDENTIFIER_MAX = r"[A-Za-z0-9_.:@/-]+", 128


def is_fund_account(account_id: str) -> bool:
    return account_id.startswith(FUND_ACCOUNT_PREFIX)


def fund_id_of(account_id: str) -> str:
    """The fund a fund account names (an account id that names none comes back unchanged)."""
    return account_id.removeprefix(FUND_ACCOUNT_PREFIX)


@dataclass(frozen=True, slots=True)
class FundEvent:
    """An insurance fund defined or redefined (its settlement asset never changes)."""

    type: ClassVar[Literal["fund"]] = "fund"
    ts: int
    fund_id: str
    settle_asset: str
    surplus: SurplusPolicy
    max_inventory_ratio: Decimal


@dataclass(frozen=True, slots=True)
class StatedTier:
    """A maintenance bracket as an instrument event states it: maint_amount None when the event leaves it to be
    derived from the brackets (docs/design.md §7)."""

    max_notional: Decimal
    mmr: Decimal
    maint_amount: Decimal | None = None


@dataclass(frozen=True, slots=True)
class InstrumentEvent:
    """An instrument defined or redefined. mark_tolerance None: the default; contract_size only for inverse."""

    type: ClassVar[Literal["instrument"]] = "instrument"
    ts: int
    symbol: str
    settle_asset: str
    tick_size: Decimal
    lot_size: Decimal
    tiers: tuple[StatedTier, ...]
    liquidation_fee_rate: Decimal
    fund_id: str
    mark_tolerance: Decimal | None = None
    contract_type: Literal["linear", "inverse"] = "linear"
    contract_size: Decimal | None = None


@dataclass(frozen=True, slots=True)
class TransferEvent:
    """Money into (+) or out of (-) an account's wallet, or a fund, from outside the venue."""

    type: ClassVar[Literal["transfer"]] = "transfer"
    ts: int
    transfer_id: str
    account_id: str
    asset: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class FillEvent:
    """A trade of one account on one symbol (position_side long or short: a hedge-mode side)."""

    type: ClassVar[Literal["fill"]] = "fill"
    ts: int
    fill_id: str
    account_id: str
    symbol: str
    side: Literal["buy", "sell"]
    qty: Decimal
    price: Decimal
    fee: Decimal
    margin_mode: MarginMode
    leverage: Decimal
    position_side: PositionSide = "both"


@dataclass(frozen=True, slots=True)
class MarkEvent:
    """A symbol's mark price (and index price, when the venue sends it)."""

    type: ClassVar[Literal["mark"]] = "mark"
    ts: int
    symbol: str
    mark_price: Decimal
    index_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class FundingEvent:
    """A funding payment between a symbol's longs and shorts at a rate and a mark."""

    type: ClassVar[Literal["funding"]] = "funding"
    ts: int
    symbol: str
    rate: Decimal
    mark_price: Decimal


@dataclass(frozen=True, slots=True)
class Execution:
    """One market execution of a liquidation order."""

    qty: Decimal
    price: Decimal


@dataclass(frozen=True, slots=True)
class LiquidationEvent:
    """A position (one hedge side, or the one-way position) liquidated by the venue: the qty taken over, the mark
    it was decided at, the venue's bankruptcy price if it sent one, and what the market executed of it."""

    type: ClassVar[Literal["liquidation"]] = "liquidation"
    ts: int
    liquidation_id: str
    account_id: str
    symbol: str
    qty: Decimal
    mark_price: Decimal
    bankruptcy_price: Decimal | None = None
    executions: tuple[Execution, ...] = ()
    position_side: PositionSide = "both"


Event = FundEvent | InstrumentEvent | TransferEvent | FillEvent | MarkEvent | FundingEvent | LiquidationEvent
EVENT_TYPES: dict[str, type[Event]] = {
    "fund": FundEvent,
    "instrument": InstrumentEvent,
    "transfer": TransferEvent,
    "fill": FillEvent,
    "mark": MarkEvent,
    "funding": FundingEvent,
    "liquidation": LiquidationEvent,
}
