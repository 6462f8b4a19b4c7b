"""The engine state a snapshot file carries, checked before either engine restores it (`replay --from-snapshot`).

A snapshot's hashes prove only that nothing changed since someone sealed it; anyone can seal a state of their own.
So the state is held to what a journal could have made: every name as the wire allows it (a trader's never a fund's),
every number within its kind and the bounds on state (docs/design.md §9.2, §9.3: a position's size, cost and face, a
lot's), every symbol one the state defines, each position once and on the side its qty says,
the instruments' own rules, the ADL policy's, and a ledger whose balances sum to zero, exactly. Both engines then read
only states their rules were written for, and accept the same files. A state within these rules can still carry
balances no journal reaches (a forger's, near the bound 10^68) and drive one past it: each engine then stops at its
invariant, which the replay says in one line (docs/tools.md, "Snapshots").
"""

from __future__ import annotations

import itertools
import re
from decimal import Decimal, localcontext
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from backstop.core import adl_policy
from backstop.core.events import IDENTIFIER_CHARS, IDENTIFIER_MAX, is_fund_account
from backstop.core.hashing import canonical_json
from backstop.core.ledger import isolated_owner, wallet_owner
from backstop.core.numbers import BALANCE_BOUND, CONTEXT
from backstop.core.ordering import WINDOW
from backstop.core.snapshot import SNAPSHOT_VERSION
from backstop.core.valuation import MAX_FACE
from backstop.wire.decode import describe
from backstop.wire.inputs import (
    ASSET_CHARS,
    ASSET_MAX,
    BALANCE,
    COST,
    LOT_COST,
    NON_NEGATIVE,
    QTY,
    SIGNED,
    SYMBOL_CHARS,
    SYMBOL_MAX,
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
Cost = Annotated[Decimal, PlainDecimal(COST, NON_NEGATIVE)]
LotCost = Annotated[Decimal, PlainDecimal(LOT_COST, NON_NEGATIVE)]
Balance = Annotated[Decimal, PlainDecimal(BALANCE, SIGNED)]
SymbolPnl = Annotated[Decimal, PlainDecimal(LOT_COST, SIGNED)]  # a fund's PnL on a symbol: its lots' costs
Count = Annotated[int, Field(ge=0, lt=2**63)]
Quantile = Annotated[int, Field(ge=0, le=5)]
Head = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Side = Literal["long", "short"]


def _a_trader(account_id: str) -> str:
    if is_fund_account(account_id):
        raise ValueError(f"{account_id} is a fund's account, not a trader's")
    return account_id


Trader = Annotated[Identifier, AfterValidator(_a_trader)]
_ACCOUNT = f"{IDENTIFIER_CHARS.removesuffix('+')}{{1,{IDENTIFIER_MAX}}}"
_SYMBOL, _ASSET = f"{SYMBOL_CHARS}{{1,{SYMBOL_MAX}}}", f"{ASSET_CHARS}{{1,{ASSET_MAX}}}"
# every ledger account a journal can make (backstop.core.ledger); an account id may hold a colon
LedgerAccount = Annotated[str, StringConstraints(pattern=(
    f"^(?:wallet:{_ACCOUNT}:{_ASSET}|isolated:{_ACCOUNT}:{_SYMBOL}(?::long|:short)?|fund:{_ACCOUNT}"
    f"|(?:fees|external):{_ASSET}|(?:settlement|funding):{_SYMBOL})$"))]
# the subjects whose last record admission remembers (backstop.core.dedupe.subject)
Subject = Annotated[str, StringConstraints(pattern=f"^(?:fund:{_ACCOUNT}|(?:instrument|mark):{_SYMBOL})$")]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Lot(_Part):
    liquidation_id: Identifier
    symbol: Symbol
    side: Side
    qty: Qty
    cost: LotCost
    liquidated_account: Trader
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
        with localcontext(CONTEXT):  # the brackets' cumulative amounts, exactly
            steps = (below.max_notional * (tier.mmr - below.mmr) for below, tier in itertools.pairwise(self.tiers))
            implied = list(itertools.accumulate(steps, initial=Decimal(0)))
        for number, (tier, amount) in enumerate(zip(self.tiers, implied, strict=True), start=1):
            if tier.maint_amount != amount:
                raise ValueError(f"bracket {number}: maint_amount {tier.maint_amount} is not the {amount} the brackets "
                                 f"imply")
        return self


class Position(_Part):
    account_id: Trader
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
    latest: dict[Subject, Digest]


class Drawdown(_Part):
    """Bybit's trigger's state (backstop.core.adl_drawdown): windows of (ts, value), realized PnL, symbols triggered."""

    balances: dict[Identifier, tuple[tuple[Timestamp, Balance], ...]]
    pnls: dict[Symbol, tuple[tuple[Timestamp, SymbolPnl], ...]]
    realized: dict[Symbol, Balance]
    triggered: tuple[Symbol, ...]


def _a_policy(document: dict[str, Any]) -> dict[str, Any]:
    """The ADL policy as the reference reads it (its own checks), and written back the same (no other spelling)."""
    try:
        policy = adl_policy.from_document(document)
    except (ValueError, ArithmeticError, TypeError, KeyError) as error:
        raise ValueError(f"not an ADL policy: {error}") from None
    if canonical_json(adl_policy.document(policy)) != canonical_json(document):  # bytes: 1.0 is not 1, true not 1
        raise ValueError("not an ADL policy as a snapshot writes one")
    return document


class State(BaseModel):
    """Every field of a state document (backstop.core.snapshot.state_document); a field of no version is left to
    the state hash, which the engines recompute without it."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    snapshot_version: Annotated[int, Field(ge=SNAPSHOT_VERSION, le=SNAPSHOT_VERSION)]
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
    quantile_closes: tuple[tuple[Trader, Symbol, Side, Quantile], ...]
    risk_levels: dict[Symbol, Literal["low", "medium", "high"]]
    clock: Clock
    mark_clock: SymbolClock
    funding_clock: SymbolClock
    dedupe: Dedupe
    adl_policy: Annotated[dict[str, Any], AfterValidator(_a_policy)]
    adl_drawdown: Drawdown | None = None

    @model_validator(mode="after")
    def _consistent(self) -> State:
        funds = {fund.fund_id: fund for fund in self.funds}
        instruments = {instrument.symbol: instrument for instrument in self.instruments}
        if len(funds) != len(self.funds) or len(instruments) != len(self.instruments):
            raise ValueError("a fund or an instrument is listed twice")
        self._references(funds, instruments)
        self._positions(instruments)
        self._lots(instruments)
        self._ledger()
        return self

    def _references(self, funds: dict[str, Fund], instruments: dict[str, Instrument]) -> None:
        """Every fund, symbol and mark a part of the state names is one the state holds."""
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
        drawdown = self.adl_drawdown
        named = [*self.marks, *self.risk_levels, *(position.symbol for position in self.positions),
                 *(close[1] for close in self.quantile_closes),
                 *((*drawdown.pnls, *drawdown.realized, *drawdown.triggered) if drawdown is not None else ())]
        if unknown := next((symbol for symbol in named if symbol not in instruments), None):
            raise ValueError(f"symbol {unknown} has no instrument in the state")
        if drawdown is not None and (stranger := next((f for f in drawdown.balances if f not in funds), None)):
            raise ValueError(f"adl_drawdown names fund {stranger}, which the state has not")
        # a fill sets its symbol's mark when none is in force, a mark or a liquidation always does
        priced = [*(position.symbol for position in self.positions),
                  *(lot.symbol for fund in self.funds for lot in fund.lots), *self.mark_clock.pending,
                  *self.mark_clock.reached]
        if unpriced := next((symbol for symbol in priced if symbol not in self.marks), None):
            raise ValueError(f"symbol {unpriced} has positions, lots or marks applied but no mark in the state")

    def _positions(self, instruments: dict[str, Instrument]) -> None:
        """Each position once (one-way, or hedge sides), an inverse one's face within MAX_FACE (§9.3)."""
        sides: dict[tuple[str, str], list[str | None]] = {}
        for position in self.positions:
            held = sides.setdefault((position.account_id, position.symbol), [])
            if position.position_side in held or (held and None in (position.position_side, *held)):
                raise ValueError(f"account {position.account_id} holds {position.symbol} twice, or in both modes")
            held.append(position.position_side)
            size = instruments[position.symbol].contract_size
            if size is not None and CONTEXT.multiply(abs(position.qty), size) >= MAX_FACE:
                raise ValueError(f"a {position.symbol} position of {position.qty} has a face value above 10^14")

    def _lots(self, instruments: dict[str, Instrument]) -> None:
        """An inverse lot's face within MAX_FACE, as the liquidated position's was (the engine bounds a fund's lots one
        by one: its net in a symbol can pass them once its lots of one side leave)."""
        for fund in self.funds:
            for lot in fund.lots:
                size = instruments[lot.symbol].contract_size
                if size is not None and CONTEXT.multiply(lot.qty, size) >= MAX_FACE:
                    raise ValueError(f"fund {fund.fund_id}: a {lot.symbol} lot of {lot.qty} has a face value above "
                                     f"10^14")

    def _ledger(self) -> None:
        """No wallet or isolated margin of a fund's account; every balance within 10^68, and all summing to zero."""
        owners = (wallet_owner(name) if name.startswith("wallet:") else isolated_owner(name)
                  for name in self.balances if name.startswith(("wallet:", "isolated:")))
        if fund := next((owner for owner in owners if owner is not None and is_fund_account(owner)), None):
            raise ValueError(f"a wallet or isolated margin of {fund}, a fund's account")
        with localcontext(CONTEXT):  # exact: 160 digits, Inexact trapped
            total = sum(self.balances.values(), Decimal(0))
        if total != 0 or not all(-BALANCE_BOUND < balance < BALANCE_BOUND for balance in self.balances.values()):
            raise ValueError(f"the balances must sum to zero, each within 10^68 (they sum to {total})")


def _escaped(found: re.Match[str]) -> str:
    code = ord(found[0])
    return f"\\x{code:02x}" if code <= 0xff else f"\\u{code:04x}"


def state_problem(document: Any) -> str | None:
    """Why a snapshot's engine state is not one a journal could have made (one line), or None."""
    if not isinstance(document, dict):
        return "the engine state is not a JSON object"
    try:
        State.model_validate_json(orjson.dumps(document))  # JSON's types: an array is a tuple
    except ValidationError as error:
        problem = f"engine{'.' if error.errors()[0]['loc'] else ': '}{describe(error)}"
        # a forged key can hold any character: one line, whatever it holds (C0, DEL, C1 and Unicode's line breaks)
        return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", _escaped, problem)
    return None

