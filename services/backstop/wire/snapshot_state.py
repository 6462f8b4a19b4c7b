"""The engine state a snapshot file carries, checked before either engine restores it (`replay --from-snapshot`).

A snapshot's hashes prove only that nothing changed since someone sealed it; anyone can seal a state of their own.
So the state is held to what a journal could have made: every name as the wire allows it, every number within its
kind and the bounds on state (docs/design.md §9.2, §9.3), every symbol one the state defines, each position once and
on the side its qty says, the instruments' own rules, and a ledger whose balances sum to zero. Both engines then read
only states their rules were written for, so they accept the same files and neither can be crashed by one. The
engine's own bookkeeping (clocks, dedupe, policy) keeps the checks of each engine's restore, which agree.
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from backstop.core.numbers import BALANCE_BOUND
from backstop.core.ordering import WINDOW
from backstop.wire.decode import describe
from backstop.wire.inputs import (
    BALANCE,
    COST,
    LOT_COST,
    QTY,
    SIGNED,
    Asset,
    Identifier,
    Leverage,
    NonNegativeMoney,
    NonNegativeRate,
    PlainDecimal,
    PositiveMoney,
    PositiveRate,
    Price,
    Qty,
    Symbol,
    Timestamp,
)

SignedQty = Annotated[Decimal, PlainDecimal(QTY, SIGNED)]
Cost = Annotated[Decimal, PlainDecimal(COST, SIGNED)]
LotCost = Annotated[Decimal, PlainDecimal(LOT_COST, SIGNED)]
Balance = Annotated[Decimal, PlainDecimal(BALANCE, SIGNED)]
Count = Annotated[int, Field(ge=0, lt=2**63)]
Quantile = Annotated[int, Field(ge=0, le=5)]
Head = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Side = Literal["long", "short"]
_ACCOUNT = r"[A-Za-z0-9_.:@/-]{1,128}"
# every ledger account a journal can make (backstop.core.ledger); an account id may hold a colon
LedgerAccount = Annotated[str, StringConstraints(pattern=(
    rf"^(?:wallet:{_ACCOUNT}:[A-Z0-9]{{1,16}}|isolated:{_ACCOUNT}:[A-Z0-9_-]{{1,32}}(?::long|:short)?"
    r"|fund:[A-Za-z0-9_.:@/-]{1,128}|(?:fees|external):[A-Z0-9]{1,16}|(?:settlement|funding):[A-Z0-9_-]{1,32})$"))]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Lot(_Part):
    liquidation_id: Identifier
    symbol: Symbol
    side: Side
    qty: Qty
    cost: LotCost
    liquidated_account: Identifier
    seq: Count


class Fund(_Part):
    fund_id: Identifier
    settle_asset: Asset
    surplus: Literal["fund", "trader"]
    max_inventory_ratio: NonNegativeRate
    symbols: tuple[Symbol, ...]
    lots: tuple[Lot, ...]


class Tier(_Part):
    max_notional: PositiveMoney
    mmr: PositiveRate
    maint_amount: NonNegativeMoney


class Instrument(_Part):
    symbol: Symbol
    settle_asset: Asset
    tick_size: Price
    lot_size: Qty
    tiers: Annotated[tuple[Tier, ...], Field(min_length=1, max_length=64)]
    liquidation_fee_rate: NonNegativeRate
    fund_id: Identifier
    mark_tolerance: NonNegativeRate | None = None
    contract_type: Literal["linear", "inverse"] = "linear"
    contract_size: Price | None = None

    @model_validator(mode="after")
    def _rules(self) -> Instrument:
        """The rules an instrument record is held to (backstop.core.engine, `_on_instrument`)."""
        if any(b.max_notional <= a.max_notional for a, b in itertools.pairwise(self.tiers)):
            raise ValueError("tiers must have strictly increasing max_notional")
        if any(tier.mmr >= 1 for tier in self.tiers):
            raise ValueError("mmr must be below 1")
        if (self.contract_type == "inverse") != (self.contract_size is not None):
            raise ValueError("an inverse instrument, and only one, has a contract_size")
        return self


class Position(_Part):
    account_id: Identifier
    symbol: Symbol
    qty: SignedQty
    cost: Cost
    margin_mode: Literal["cross", "isolated"]
    leverage: Leverage
    adl_quantile: Quantile
    position_side: Side | None = None

    @model_validator(mode="after")
    def _on_its_side(self) -> Position:
        if self.qty == 0:
            raise ValueError("a position holds a qty other than zero")
        if self.position_side is not None and (self.qty > 0) != (self.position_side == "long"):
            raise ValueError(f"a {self.position_side} position with qty {self.qty}")
        return self


class Clock(_Part):
    recent: Annotated[tuple[Timestamp, ...], Field(max_length=WINDOW)]
    ts: Timestamp | None


class SymbolClock(_Part):
    pending: dict[Symbol, Annotated[tuple[Timestamp, ...], Field(min_length=1)]]  # an empty one is dropped
    reached: dict[Symbol, Timestamp]


class Dedupe(_Part):
    ids: Count
    ids_head: Head
    latest: dict[Annotated[str, StringConstraints(pattern=r"^[a-z]+:.")], Digest]  # subject (fund:F, mark:S, ...)


class State(BaseModel):
    """The fields of the state the rules read; the engine's bookkeeping passes through to its restore."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    seq: Count
    newest_ts: Timestamp | None
    ledger_head: Head
    adl_head: Head
    postings_head: Head
    balances: dict[LedgerAccount, Balance]
    funds: tuple[Fund, ...]
    instruments: tuple[Instrument, ...]
    marks: dict[Symbol, Price]
    positions: tuple[Position, ...]
    quantile_closes: tuple[tuple[Identifier, Symbol, Side, Quantile], ...]
    risk_levels: dict[Symbol, Literal["low", "medium", "high"]]
    clock: Clock
    mark_clock: SymbolClock
    funding_clock: SymbolClock
    dedupe: Dedupe

    @model_validator(mode="after")
    def _consistent(self) -> State:
        funds = {fund.fund_id: fund for fund in self.funds}
        instruments = {instrument.symbol: instrument for instrument in self.instruments}
        if len(funds) != len(self.funds) or len(instruments) != len(self.instruments):
            raise ValueError("a fund or an instrument is listed twice")
        for instrument in self.instruments:
            fund = funds.get(instrument.fund_id)
            if fund is None or fund.settle_asset != instrument.settle_asset:
                raise ValueError(f"instrument {instrument.symbol}: no fund {instrument.fund_id} settling in "
                                 f"{instrument.settle_asset}")
        for fund in self.funds:
            own = {instrument.symbol for instrument in self.instruments if instrument.fund_id == fund.fund_id}
            if sorted(fund.symbols) != sorted(own):
                raise ValueError(f"fund {fund.fund_id}: symbols must be those of its instruments")
            if any(lot.symbol not in own or lot.seq > self.seq for lot in fund.lots):
                raise ValueError(f"fund {fund.fund_id}: a lot in a symbol of another fund, or after the state's seq")
        named = [*self.marks, *self.risk_levels, *(position.symbol for position in self.positions),
                 *(close[1] for close in self.quantile_closes)]
        if unknown := next((symbol for symbol in named if symbol not in instruments), None):
            raise ValueError(f"symbol {unknown} has no instrument in the state")
        # a fill sets its symbol's mark when none is in force, a mark or a liquidation always does
        priced = [*(position.symbol for position in self.positions), *(lot.symbol for fund in self.funds
                                                                        for lot in fund.lots),
                  *self.mark_clock.pending, *self.mark_clock.reached]
        if unpriced := next((symbol for symbol in priced if symbol not in self.marks), None):
            raise ValueError(f"symbol {unpriced} has positions, lots or marks applied but no mark in the state")
        sides: dict[tuple[str, str], list[str | None]] = {}
        for position in self.positions:
            held = sides.setdefault((position.account_id, position.symbol), [])
            if position.position_side in held or (held and None in (position.position_side, *held)):
                raise ValueError(f"account {position.account_id} holds {position.symbol} twice, or in both modes")
            held.append(position.position_side)
        total = sum(self.balances.values(), Decimal(0))
        if total != 0 or any(abs(balance) >= BALANCE_BOUND for balance in self.balances.values()):
            raise ValueError(f"the balances must sum to zero, each within 10^68 (they sum to {total})")
        return self


def state_problem(document: Any) -> str | None:
    """Why a snapshot's engine state is not one a journal could have made (one line), or None."""
    if not isinstance(document, dict):
        return "the engine state is not a JSON object"
    try:
        State.model_validate_json(orjson.dumps(document))  # JSON's types: an array is a tuple
    except ValidationError as error:
        return f"engine{'.' if error.errors()[0]['loc'] else ': '}{describe(error)}"
    return None

