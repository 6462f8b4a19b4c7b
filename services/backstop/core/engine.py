"""The engine: a pure, synchronous fold of journal events into margin state, the fund ledger and ADL.

`Engine.apply(record, seq)` takes one of the core's events (backstop.core.events, which the wire layer translates
valid input records into) and raises AlreadyApplied or Rejected (nothing changed) or applies the event and returns
its Effects. Admission comes first (docs/design.md §4.1: duplicates, then the journal clock); every handler checks
everything first and mutates after, so a rejection never leaves half an event behind, and the bounds on state of
docs/design.md §9.3 are among those checks. All arithmetic runs in backstop.core.numbers.CONTEXT (exact), and every
rounding is a named rule of §9.4 from backstop.core.numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, getcontext, localcontext, setcontext
from typing import Any, ClassVar, Literal

from backstop.core import adl, adl_rounds, ledger, quantiles
from backstop.core.adl_allocation import Candidate, capped_pro_rata, min_max_leverage, socialized_shares
from backstop.core.adl_drawdown import DrawdownState, WindowMax
from backstop.core.adl_index import AdlIndex
from backstop.core.adl_policy import AdlPolicy as AdlPolicy  # re-exported: the engine's option
from backstop.core.dedupe import Dedupe, HeldIds
from backstop.core.errors import InvariantViolation, Rejected
from backstop.core.events import (
    Event,
    FillEvent,
    FundEvent,
    FundingEvent,
    InstrumentEvent,
    LiquidationEvent,
    MarkEvent,
    TransferEvent,
    fund_id_of,
    is_fund_account,
)
from backstop.core.hashing import GENESIS_HASH, chain_hash, combine
from backstop.core.idstore import IdStore
from backstop.core.margin import (
    bankruptcy_price,
    isolated_bankruptcy_price,
    liquidation_price,
    lot_cost_at_bankruptcy,
    position_maintenance,
)
from backstop.core.numbers import (
    CONTEXT,
    LARGEST_PRICE,
    MAX_COST,
    MAX_MONEY,
    MAX_POSITION_QTY,
    MONEY_QUANTUM,
    ONE,
    ZERO,
    cross_equity_share,
    equity_behind,
    funding_payment,
    initial_margin,
    is_money,
    is_multiple,
    money,
    share,
    surplus_cap,
    text,
    whole_steps,
)
from backstop.core.ordering import JournalClock, SymbolClock
from backstop.core.records import (
    SCHEMA_VERSION,
    AdlEvent,
    AdlQuantileRecord,
    Finding,
    FindingKind,
    FundEntryKind,
    FundLedgerEntry,
    Posting,
    PostingKind,
)
from backstop.core.state import (
    DEFAULT_MARK_TOLERANCE,
    FundSpec,
    FundState,
    Instrument,
    Lot,
    Position,
    PositionKey,
    Positions,
    PositionSide,
    Tier,
    position_label,
)
from backstop.core.valuation import LINEAR, MAX_FACE, Valuation


@dataclass(slots=True)
class Effects:
    """What one event produced, in order."""

    fund_entries: list[FundLedgerEntry] = field(default_factory=list)
    adl_events: list[AdlEvent] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    postings: list[Posting] = field(default_factory=list)
    adl_quantiles: list[AdlQuantileRecord] = field(default_factory=list)
    adl_rounds: list[adl_rounds.Round] = field(default_factory=list)
    closed_positions: list[tuple[str, str, PositionSide]] = field(default_factory=list)  # (account, symbol, side)


@dataclass(frozen=True, slots=True)
class Takeover:
    """Why the fund does not keep a lot (docs/design.md §11.3), and the reset proceeds of a drawdown round."""

    trigger: Literal["takeover", "drawdown"]
    reset: Decimal | None = None


@dataclass(frozen=True, slots=True)
class MarginView:
    """An account's margin at the current marks, as the rules of docs/design.md §4 define it."""

    margin_balance: Decimal  # isolated: margin + uPnL; cross: TNC = wallet + sum of cross uPnL
    maintenance_margin: Decimal  # isolated: this position's MM; cross: TMM
    position_maintenance: Decimal
    equity_share: Decimal  # the part of margin_balance that stands behind this position (cross: rounded up, §9.4)

    @property
    def liquidatable(self) -> bool:
        return self.margin_balance <= self.maintenance_margin


Exposures = dict[tuple[str, str], tuple[Decimal, Decimal]]  # one account's: (symbol, position_side) -> (uPnL, MM)


class Engine:
    def __init__(self, *, check_conservation: bool = False, adl_policy: AdlPolicy | None = None,
                 ids: HeldIds | None = None, adl_quantiles: bool = False, full_adl_metrics: bool = False) -> None:
        self.check_conservation = check_conservation
        # quantile points (backstop.core.quantiles): an option, since ranking every side at each point costs more
        # than the rest of a replay; they never change the ledger or the head hash (docs/design.md §10)
        self.adl_quantiles = adl_quantiles
        self.adl_policy = adl_policy or AdlPolicy()
        self.full_adl_metrics = full_adl_metrics  # rank inversions and the eligible population per round (§11.4)
        self.drawdown = DrawdownState()  # Bybit's trigger (§11.3); empty under any other policy
        self._drawdown_before: dict[str, tuple[Decimal, dict[str, Decimal]]] = {}  # as the current event found it
        # the lots a round of the current event left short with no taker left: no later round of the event retries
        # them (none can find a taker: a deleverage only reduces positions), nor says the shortfall again
        self._fell_short: set[str] = set()
        self.ledger = ledger.Ledger(strict=check_conservation)
        self.funds: dict[str, FundState] = {}
        self.instruments: dict[str, Instrument] = {}
        self.marks: dict[str, Decimal] = {}
        self.positions = Positions()
        self.by_symbol: dict[str, dict[PositionKey, Position]] = {}  # symbol -> (account, position_side) -> position
        self.adl_index = AdlIndex()  # finds the top of a queue without ranking every position exactly
        self._leverages: dict[str, Decimal] = {}
        self._settle_assets: tuple[int, frozenset[str]] = (0, frozenset())  # (funds seen, their assets)
        self._rank_cache: dict[str, tuple[Decimal, dict[PositionKey, tuple[tuple[Decimal, ...], adl.Ranked]]]] = {}
        # symbol -> (mark, (account, position_side) -> (its numbers, equity share, figures)), as _rank_cache
        self._figures_cache: dict[str, tuple[Decimal, dict[PositionKey, tuple[tuple[Decimal, ...], Decimal,
                                                                              adl_rounds.Figures]]]] = {}
        self.last_seq = 0
        self.dedupe = Dedupe(ids if ids is not None else IdStore())  # what was applied (backstop.core.dedupe)
        self.clock = JournalClock()  # the journal's event time (backstop.core.ordering)
        self.newest_ts: int | None = None  # the largest ts applied: quantile points (backstop.core.quantiles)
        self.mark_clock = SymbolClock()  # marks and liquidations: an older mark is stale
        self.funding_clock = SymbolClock()  # fundings: one not after the last is stale
        self.ledger_head = GENESIS_HASH
        self.adl_head = GENESIS_HASH
        self.postings_head = GENESIS_HASH
        # ADL quantiles on the wire (backstop.core.quantiles): the quantiles published for positions since closed,
        # by (account, symbol, side), and the risk level published per symbol
        self.quantile_closes: dict[tuple[str, str, str], int] = {}
        self.risk_levels: dict[str, str] = {}
        self._effects = Effects()
        # What the postings of the event in hand belong to (docs/design.md §10, "Postings")
        self._transfer_id: str | None = None
        self._fill_id: str | None = None
        self._liquidation_id: str | None = None
        self._adl_event_id: str | None = None
        self._context = CONTEXT.copy()  # this engine's own: apply() makes it current for the event
        self._seq = 0
        self._ts = 0

    # ------------------------------------------------------------------ entry point
    def apply(self, record: Event, seq: int) -> Effects:
        if seq != self.last_seq + 1:
            raise InvariantViolation(f"journal gap: seq {seq} after {self.last_seq}")
        admission = self.dedupe.admit(record, seq)  # duplicates first: a record sent again is one whenever it comes
        kind = record.type
        self.clock.check(record.ts, definition=kind == "fund" or kind == "instrument")
        self._effects = effects = Effects()
        self._seq, self._ts = seq, record.ts
        self._transfer_id = self._fill_id = self._liquidation_id = self._adl_event_id = None
        if self._fell_short:
            self._fell_short = set()
        caller_context = getcontext()
        switch = caller_context is not self._context  # not already current (see decimal_context)
        if switch:
            setcontext(self._context)  # what localcontext(CONTEXT) does, without copying CONTEXT for every event
        try:
            funds = self._funds_of(record)
            checked = funds or self._funds_taken_below_a_floor(record)
            funds_before = {fid: self.ledger.balance(ledger.fund(fid)) for fid in checked} if checked else None
            drawdown = self.adl_policy.drawdown is not None and bool(funds)
            self._drawdown_before = self._drawdown_values(funds) if drawdown else {}
            self._handlers[kind](self, record)
            self.last_seq = seq
            self.dedupe.hold(admission, seq)
            self.clock.advance(record.ts)
            newest = self.newest_ts  # quantile points are periods of the newest ts applied (design §10)
            if newest is None or record.ts > newest:
                self.newest_ts = record.ts
            if funds_before:
                self._enforce_solvency(funds_before)
            if drawdown:
                self._sample_drawdown(funds)
            if self.adl_quantiles and quantiles.crosses_period(newest, record.ts):
                effects.adl_quantiles.extend(quantiles.publish(self, seq, record.ts))
            if self.check_conservation:
                self.ledger.check_conservation()
        finally:
            if switch:
                setcontext(caller_context)
        return effects

    @contextmanager
    def decimal_context(self) -> Iterator[None]:
        """Make the engine's decimal context current around many apply() calls: switching it for every event cost
        a replay ~3% (setcontext goes through a context variable)."""
        caller_context = getcontext()
        setcontext(self._context)
        try:
            yield
        finally:
            setcontext(caller_context)

    @property
    def head_hash(self) -> str:
        return combine(self.ledger_head, self.adl_head)

    # ------------------------------------------------------------------ definitions
    def _on_fund(self, record: FundEvent) -> None:
        existing = self.funds.get(record.fund_id)
        if existing is not None and existing.spec.settle_asset != record.settle_asset:
            raise Rejected(f"fund {record.fund_id} settles in {existing.spec.settle_asset}; cannot change asset")
        spec = FundSpec(record.fund_id, record.settle_asset, record.surplus, record.max_inventory_ratio)
        if existing is None:
            self.funds[record.fund_id] = FundState(spec)
        else:
            existing.spec = spec

    def _on_instrument(self, record: InstrumentEvent) -> None:
        fund_state = self.funds.get(record.fund_id)
        if fund_state is None:
            raise Rejected(f"unknown fund {record.fund_id}")
        if fund_state.spec.settle_asset != record.settle_asset:
            raise Rejected(f"fund {record.fund_id} settles in {fund_state.spec.settle_asset}, "
                           f"instrument {record.symbol} in {record.settle_asset}")
        previous = self.instruments.get(record.symbol)
        if previous is not None and (previous.fund_id, previous.settle_asset) != (record.fund_id,
                                                                                  record.settle_asset):
            raise Rejected(f"instrument {record.symbol} cannot move to another fund or settlement asset")
        valuation = self._valuation(record)
        if previous is not None and previous.valuation != valuation:
            raise Rejected(f"instrument {record.symbol} cannot change its contract_type or contract_size")
        ceilings = [tier.max_notional for tier in record.tiers]
        if any(b <= a for a, b in itertools.pairwise(ceilings)):
            raise Rejected("tiers must have strictly increasing max_notional")
        if any(tier.mmr >= 1 for tier in record.tiers):
            raise Rejected("mmr must be below 1")
        tolerance = DEFAULT_MARK_TOLERANCE if record.mark_tolerance is None else record.mark_tolerance
        self.instruments[record.symbol] = Instrument(
            record.symbol, record.settle_asset, record.tick_size, record.lot_size, self._checked_tiers(record),
            record.liquidation_fee_rate, record.fund_id, tolerance, valuation)
        if previous is None:
            fund_state.symbols.append(record.symbol)
            self.by_symbol[record.symbol] = {}

    @staticmethod
    def _valuation(record: InstrumentEvent) -> Valuation:
        """Linear, or inverse with its contract_size (docs/design.md §7): only an inverse instrument has one."""
        if record.contract_type == "inverse":
            if record.contract_size is None:
                raise Rejected(f"instrument {record.symbol}: an inverse instrument needs a contract_size")
            return Valuation(record.contract_size)
        if record.contract_size is not None:
            raise Rejected(f"instrument {record.symbol}: only an inverse instrument has a contract_size")
        return LINEAR

    @staticmethod
    def _checked_tiers(record: InstrumentEvent) -> tuple[Tier, ...]:
        """Each bracket's maint_amount is the cumulative amount the brackets imply (docs/design.md §7): cum_1 = 0,
        cum_i = cum_(i-1) + max_notional_(i-1) x (mmr_i - mmr_(i-1)), which keeps MM continuous at every edge. A
        stated one must equal it; an omitted one is derived, and must be a MONEY value (>= 0, whole 1e-8)."""
        tiers: list[Tier] = []
        cumulative = ZERO
        for number, tier in enumerate(record.tiers, start=1):
            if tiers:
                previous = tiers[-1]
                cumulative += CONTEXT.multiply(previous.max_notional, tier.mmr - previous.mmr)
            if tier.maint_amount is None:
                if cumulative < 0 or cumulative >= MAX_MONEY or not is_money(cumulative):
                    raise Rejected(f"bracket {number}: the brackets imply a maint_amount of {text(cumulative)}, which "
                                   f"is not an amount (>= 0, at most 16 integer and 8 fraction digits)")
            elif tier.maint_amount != cumulative:
                raise Rejected(f"bracket {number}: maint_amount {text(tier.maint_amount)} is not the cumulative "
                               f"amount {text(cumulative)} the brackets imply")
            tiers.append(Tier(tier.max_notional, tier.mmr, cumulative))
        return tuple(tiers)

    # ------------------------------------------------------------------ money in and out
    def _on_transfer(self, record: TransferEvent) -> None:
        amount = record.amount
        if amount == 0:
            raise Rejected("transfer amount must not be zero")
        if not is_money(amount):
            raise Rejected(f"amount {amount} has more decimals than the asset unit {MONEY_QUANTUM}")
        if is_fund_account(record.account_id):
            fund_state = self._fund(fund_id_of(record.account_id))
            if record.asset != fund_state.spec.settle_asset:
                raise Rejected(f"fund {fund_state.spec.fund_id} holds {fund_state.spec.settle_asset}, "
                               f"not {record.asset}")
            account = ledger.fund(fund_state.spec.fund_id)
        else:
            if not self._is_settle_asset(record.asset):
                raise Rejected(f"unknown asset {record.asset}")
            account = ledger.wallet(record.account_id, record.asset)
        if amount < 0 and self.ledger.balance(account) + amount < 0:
            raise Rejected(f"withdrawal of {text(-amount)} exceeds the balance {text(self.ledger.balance(account))} of "
                           f"{account}")
        source = ledger.external(record.asset)
        self._transfer_id = record.transfer_id
        self._post("transfer", source, account, amount, record.asset)
        if is_fund_account(record.account_id):
            self._fund_entry(fund_id_of(record.account_id), "transfer", amount, None, source)

    # ------------------------------------------------------------------ trading
    def _on_fill(self, record: FillEvent) -> None:
        instrument = self._instrument(record.symbol)
        self._check_steps(instrument, record.qty, record.price)
        if not is_money(record.fee):
            raise Rejected(f"fee {record.fee} has more decimals than the asset unit {MONEY_QUANTUM}")
        self._fill_id = record.fill_id
        if is_fund_account(record.account_id):
            self._fund_fill(record, instrument)
            return
        position_side = record.position_side
        self._check_position_mode(record.account_id, record.symbol, position_side)
        position = self.positions.get(record.account_id, record.symbol, position_side)
        if position is not None and position.margin_mode != record.margin_mode:
            raise Rejected(f"{record.account_id} holds {position.label} in {position.margin_mode} margin; "
                           f"a {record.margin_mode} fill cannot change it while the position is open")
        delta = record.qty if record.side == "buy" else -record.qty
        if position_side != "both" and (position_side == "long") != (delta > 0):
            held_size = ZERO if position is None else position.size
            if record.qty > held_size:  # a hedge side is only reduced, never flipped
                label = position_label(record.symbol, position_side)
                raise Rejected(f"{record.account_id} holds {text(held_size)} {label}; a {record.side} of "
                               f"{text(record.qty)} would take it below zero")
        valuation = instrument.valuation
        if position is not None and (position.qty > 0) == (delta > 0):
            self._check_growth(position, record.qty, record.price, valuation)
        elif valuation.inverse:  # a new position, or the part of a fill that flips one (§9.3: MAX_FACE)
            self._check_face(record.qty - (ZERO if position is None else min(position.size, record.qty)), valuation)
        self.marks.setdefault(record.symbol, record.price)
        remaining = record.qty
        if position is not None and (position.qty > 0) != (delta > 0):
            closed = min(position.size, remaining)
            self._reduce(position, closed, valuation.value(closed, record.price), "realized_pnl")
            remaining -= closed
        if remaining > 0:
            held = position if position is not None and position.qty != 0 else None  # a flip closed it first
            self._open(record.account_id, instrument, remaining if delta > 0 else -remaining, record.price,
                       record.margin_mode, record.leverage, held, position_side)
        wallet = ledger.wallet(record.account_id, instrument.settle_asset)
        self._post("fee", wallet, ledger.fees(instrument.settle_asset), record.fee, instrument.settle_asset)
        if self.ledger.balance(wallet) < 0:
            self._finding("negative_wallet", record.account_id, None, record.symbol,
                          {"wallet": text(self.ledger.balance(wallet)), "fill_id": record.fill_id})

    def _check_position_mode(self, account_id: str, symbol: str, position_side: PositionSide) -> None:
        """An account's positions in one symbol are all one-way (both) or all hedge sides, never mixed (§7)."""
        # in side order, not in the order the positions were opened (a restored state lists them sorted)
        for held in sorted(self.positions.in_symbol(account_id, symbol), key=lambda p: p.position_side):
            if (held.position_side == "both") != (position_side == "both"):
                mode = "one-way" if held.position_side == "both" else "hedge"
                raise Rejected(f"{account_id} holds {held.label} in {mode} mode; a position_side {position_side} "
                               f"record cannot mix modes in {symbol}")

    @classmethod
    def _check_growth(cls, position: Position, qty: Decimal, fill_price: Decimal, valuation: Valuation) -> None:
        """The bounds of docs/design.md §9.3 on a position a fill grows (a new or flipped linear position is within
        them: its qty and price are)."""
        size = position.size + qty
        if size >= MAX_POSITION_QTY:
            raise Rejected(f"position would hold {text(size)}, above the bound 10^12")
        cost = position.cost + valuation.value(qty, fill_price)
        if cost >= MAX_COST:
            raise Rejected(f"position cost would be {text(cost)}, above the bound 10^22")
        if valuation.inverse:
            cls._check_face(size, valuation)

    @staticmethod
    def _check_face(size: Decimal, valuation: Valuation) -> None:
        """MAX_FACE (docs/design.md §9.3): an inverse position's |q| x s stays below 10^14."""
        face = valuation.face(size)
        if face >= MAX_FACE:
            raise Rejected(f"position face value would be {text(face)}, above the bound 10^14")

    def _open(self, account_id: str, instrument: Instrument, qty: Decimal, fill_price: Decimal,
              margin_mode: Literal["cross", "isolated"], leverage: Decimal, position: Position | None,
              position_side: PositionSide) -> None:
        """Open or add to a position; `position`: the one the account holds with that key, if any."""
        symbol = instrument.symbol
        value = instrument.valuation.value(abs(qty), fill_price)
        self.adl_index.touch(account_id)
        leverage = self._leverages.setdefault(str(leverage), leverage)  # one object per spelling, not one per position
        if position is None:
            position = Position(account_id, symbol, qty, value, margin_mode, leverage, position_side)
            if self.quantile_closes:  # the same position back before its close was published: as if never gone
                position.adl_quantile = self.quantile_closes.pop((account_id, symbol, position.side), 0)
            self.positions.add(position)
            self.by_symbol[symbol][position.key] = position
        else:
            position.qty += qty
            position.cost += value
            position.leverage = leverage
        if margin_mode == "isolated":
            self._post("initial_margin", ledger.wallet(account_id, instrument.settle_asset),
                       ledger.isolated(account_id, symbol, position_side), initial_margin(value, leverage),
                       instrument.settle_asset)

    def _reduce(self, position: Position, qty: Decimal, proceeds: Decimal,
                kind: Literal["realized_pnl", "takeover", "adl"]) -> Decimal:
        """Close qty of a trader's position for total proceeds; post realized PnL (as `kind`: a trade, the takeover
        of a liquidated position, a deleverage) and release margin."""
        instrument = self.instruments[position.symbol]
        asset = instrument.settle_asset
        wallet = ledger.wallet(position.account_id, asset)
        cost_share = share(position.cost, qty, position.size)
        side = position.side
        self.adl_index.touch(position.account_id)
        realized = money(proceeds - cost_share if instrument.valuation.value_long(position.qty > 0)
                         else cost_share - proceeds)
        self._post(kind, ledger.settlement(position.symbol), wallet, realized, asset)
        if position.margin_mode == "isolated":
            margin_account = ledger.isolated(position.account_id, position.symbol, position.position_side)
            released = share(self.ledger.balance(margin_account), qty, position.size)
            self._post("margin_release", margin_account, wallet, released, asset)
        position.cost -= cost_share
        position.qty -= qty if position.qty > 0 else -qty
        if position.qty == 0:
            if position.cost != 0:
                raise InvariantViolation(f"closed position {position.account_id}/{position.label} kept cost")
            self.positions.remove(position)
            self._effects.closed_positions.append((position.account_id, position.symbol, position.position_side))
            del self.by_symbol[position.symbol][position.key]
            if position.adl_quantile:
                self.quantile_closes[(position.account_id, position.symbol, side)] = position.adl_quantile
        return realized

    def _on_mark(self, record: MarkEvent) -> None:
        self._instrument(record.symbol)
        bound = self.mark_clock.bound(record.symbol, self.clock)
        if bound is not None and record.ts < bound:
            raise Rejected(f"stale mark: ts {record.ts} is older than the {record.symbol} mark of ts {bound}")
        self.marks[record.symbol] = record.mark_price
        self.mark_clock.applied(record.symbol, record.ts, self.clock)
        self._check_inventory(record.symbol)

    def _on_funding(self, record: FundingEvent) -> None:
        instrument = self._instrument(record.symbol)
        if abs(record.rate) >= 1:
            raise Rejected(f"funding rate {text(record.rate)} is not a plausible rate")
        last = self.funding_clock.bound(record.symbol, self.clock)
        if last is not None and record.ts <= last:
            raise Rejected(f"stale funding: ts {record.ts} is not after the {record.symbol} funding of ts {last}")
        self.funding_clock.applied(record.symbol, record.ts, self.clock)
        clearing = ledger.funding(record.symbol)
        valuation = instrument.valuation
        book = self.by_symbol[record.symbol]
        for key in sorted(book):  # by account, then position side (docs/design.md §10, "Postings")
            position = book[key]  # each hedge side pays on its own signed qty
            payment = funding_payment(valuation.signed_value(position.qty, record.mark_price), record.rate)
            payer = (ledger.isolated(position.account_id, position.symbol, position.position_side)
                     if position.margin_mode == "isolated" else ledger.wallet(position.account_id,
                                                                              instrument.settle_asset))
            self._post("funding", payer, clearing, payment, instrument.settle_asset)
        fund_state = self.funds[instrument.fund_id]
        payment = funding_payment(valuation.signed_value(fund_state.net_qty(record.symbol), record.mark_price),
                                  record.rate)
        if payment != 0:
            self._post("funding", ledger.fund(instrument.fund_id), clearing, payment, instrument.settle_asset)
            self._fund_entry(instrument.fund_id, "funding", -payment, None, clearing, symbol=record.symbol)

    # ------------------------------------------------------------------ liquidation and the fund
    def _on_liquidation(self, record: LiquidationEvent) -> None:
        instrument = self._instrument(record.symbol)
        if is_fund_account(record.account_id):
            raise Rejected("a fund's inventory is not liquidated")
        self._liquidation_id = record.liquidation_id
        position = self.positions.get(record.account_id, record.symbol, record.position_side)
        if position is None:
            raise Rejected(f"{record.account_id} holds no {position_label(record.symbol, record.position_side)} "
                           f"position")
        if record.qty > position.size:
            raise Rejected(f"liquidation of {text(record.qty)} exceeds the position of {text(position.size)}")
        self._check_steps(instrument, record.qty, None)
        executed = sum((e.qty for e in record.executions), ZERO)
        if executed > record.qty:
            raise Rejected(f"executions total {text(executed)}, more than the liquidated {text(record.qty)}")
        for execution in record.executions:
            self._check_steps(instrument, execution.qty, execution.price)
        fund_state = self.funds[instrument.fund_id]
        net = fund_state.net_qty(record.symbol) + (record.qty if position.qty > 0 else -record.qty)
        if abs(net) >= MAX_POSITION_QTY:
            raise Rejected(f"fund {instrument.fund_id} would hold {text(net)} {record.symbol}, above the bound 10^12")
        valuation = instrument.valuation
        if valuation.inverse and valuation.face(net) >= MAX_FACE:
            raise Rejected(f"fund {instrument.fund_id} would hold a face value of {text(valuation.face(net))} in "
                           f"{record.symbol}, above the bound 10^14")

        # the published mark in force: one a mark or a liquidation set (a fill's price stands in before either)
        in_force = self.marks[record.symbol] if self.mark_clock.seen(record.symbol) else None
        view_in_force = self.margin_view(position) if in_force is not None and in_force != record.mark_price else None
        self.marks[record.symbol] = record.mark_price
        self.mark_clock.applied(record.symbol, record.ts, self.clock)
        view = self.margin_view(position)
        self._check_liquidation_mark(record, instrument, in_force, view, view_in_force)
        equity_share = equity_behind(view.equity_share, record.qty, position.size)
        lot_cost = lot_cost_at_bankruptcy(position, record.qty, equity_share, record.mark_price, valuation)
        clamped = self._clamped_lot_cost(instrument, record.qty, lot_cost)
        if clamped is not None:
            # BP below one tick (or, inverse, above the largest price): the equity behind the position exceeds its
            # value, or the account is underwater by more than it: no price reaches zero equity within the wire's
            # prices, so the lot is taken at the nearest one.
            self._finding("bp_clamped", record.account_id, record.liquidation_id, record.symbol, {
                "computed": text(valuation.price(record.qty, lot_cost)), "clamped_to": text(clamped[1]),
                "equity_share": text(equity_share)})
            lot_cost = clamped[0]
        computed_bp = valuation.price(record.qty, lot_cost)
        venue_bp = record.bankruptcy_price
        if venue_bp is not None and abs(venue_bp - computed_bp) > instrument.tick_size:
            self._finding("bp_mismatch", record.account_id, record.liquidation_id, record.symbol, {
                "computed": text(computed_bp), "venue": text(venue_bp),
                "tick_size": text(instrument.tick_size), "equity_share": text(equity_share)})

        lot = Lot(record.liquidation_id, record.symbol, position.side, record.qty, lot_cost, record.account_id,
                  self._seq)
        self._reduce(position, record.qty, lot_cost, "takeover")
        fund_state.add_lot(lot)
        for execution in record.executions:
            self._realize(fund_state, lot, execution.qty, execution.price)
        if lot.qty > 0:
            refused = self._takeover(fund_state, lot)
            if refused is not None and self._deleverage(fund_state, lot, refused.trigger, refused.reset) > 0:
                return  # nobody left to take it: the mark's own check would find the same
        self._check_inventory(record.symbol)

    @staticmethod
    def _clamped_lot_cost(instrument: Instrument, qty: Decimal, lot_cost: Decimal) -> tuple[Decimal, Decimal] | None:
        """(cost, price) of the lot clamped to a price the wire admits, or None when its price is one (§9.4): linear,
        at least qty x tick_size; inverse, its price qty x s / cost within [tick_size, largest PRICE]."""
        valuation = instrument.valuation
        if not valuation.inverse:
            floor_cost = CONTEXT.multiply(qty, instrument.tick_size)
            return (floor_cost, instrument.tick_size) if lot_cost < floor_cost else None
        lowest_cost = valuation.value(qty, LARGEST_PRICE)
        if lot_cost < lowest_cost:
            return lowest_cost, LARGEST_PRICE
        highest_cost = valuation.value(qty, instrument.tick_size)
        return (highest_cost, instrument.tick_size) if lot_cost > highest_cost else None

    def _check_liquidation_mark(self, record: LiquidationEvent, instrument: Instrument, in_force: Decimal | None,
                                view: MarginView, view_in_force: MarginView | None) -> None:
        """The liquidation's mark against the published mark in force (docs/design.md §7): `mark_mismatch` beyond
        the instrument's tolerance; `not_liquidatable` judged at both marks, saying at which it was not."""
        if in_force is not None and abs(record.mark_price - in_force) > CONTEXT.multiply(instrument.mark_tolerance,
                                                                                          in_force):
            self._finding("mark_mismatch", record.account_id, record.liquidation_id, record.symbol, {
                "mark_price": text(record.mark_price), "mark_in_force": text(in_force),
                "tolerance": text(instrument.mark_tolerance)})
        at_liquidation_mark = not view.liquidatable
        at_mark_in_force = view_in_force is not None and not view_in_force.liquidatable
        if not (at_liquidation_mark or at_mark_in_force):
            return
        details = {"margin_balance": text(view.margin_balance), "maintenance_margin": text(view.maintenance_margin),
                   "mark_price": text(record.mark_price)}
        if view_in_force is not None and in_force is not None:
            details |= {"mark_in_force": text(in_force),
                        "margin_balance_at_mark_in_force": text(view_in_force.margin_balance),
                        "maintenance_margin_at_mark_in_force": text(view_in_force.maintenance_margin)}
        if at_mark_in_force:
            details["not_liquidatable_at"] = "both" if at_liquidation_mark else "mark_in_force"
        else:  # the mark in force is the liquidation's own, or there is none, or it liquidates the account
            details["not_liquidatable_at"] = "both" if in_force == record.mark_price else "liquidation_mark"
        self._finding("not_liquidatable", record.account_id, record.liquidation_id, record.symbol, details)

    def _fund_fill(self, record: FillEvent, instrument: Instrument) -> None:
        fund_id = fund_id_of(record.account_id)
        fund_state = self._fund(fund_id)
        if instrument.fund_id != fund_id:
            raise Rejected(f"{record.symbol} belongs to fund {instrument.fund_id}, not {fund_id}")
        closing = "long" if record.side == "sell" else "short"
        if record.position_side not in ("both", closing):
            raise Rejected(f"a fund's {record.side} closes its {closing} lots; position_side {record.position_side} "
                           f"does not")
        lots = [lot for lot in fund_state.lots.get(record.symbol, ()) if lot.side == closing]
        held = sum((lot.qty for lot in lots), ZERO)
        if record.qty > held:
            raise Rejected(f"fund {fund_id} holds {text(held)} {closing} {record.symbol}; cannot {record.side} "
                           f"{text(record.qty)}")
        remaining = record.qty
        for lot in lots:
            if remaining == 0:
                break
            take = min(lot.qty, remaining)
            self._realize(fund_state, lot, take, record.price)
            remaining -= take
        if record.fee != 0:
            self._post("fee", ledger.fund(fund_id), ledger.fees(instrument.settle_asset), record.fee,
                       instrument.settle_asset)
            self._fund_entry(fund_id, "fee", -record.fee, None, ledger.fees(instrument.settle_asset),
                             symbol=record.symbol)

    def _realize(self, fund_state: FundState, lot: Lot, qty: Decimal, fill_price: Decimal) -> None:
        """The fund closes qty of a lot in the market; a gain is split per the surplus policy."""
        self._realize_proceeds(fund_state, lot, qty, self.instruments[lot.symbol].valuation.value(qty, fill_price))

    def _realize_proceeds(self, fund_state: FundState, lot: Lot, qty: Decimal, proceeds: Decimal) -> None:
        """The fund closes qty of a lot for total proceeds (exact); a gain is split per the surplus policy."""
        instrument = self.instruments[lot.symbol]
        asset = instrument.settle_asset
        cost_share = self._take_from_lot(fund_state, lot, qty)
        gain = money(proceeds - cost_share if instrument.valuation.value_long(lot.side == "long")
                     else cost_share - proceeds)
        fund_id = fund_state.spec.fund_id
        source = ledger.settlement(lot.symbol)
        cause, self._liquidation_id = self._liquidation_id, lot.liquidation_id
        if gain < 0:
            self._post("liquidation_loss", ledger.fund(fund_id), source, -gain, asset)
            self._fund_entry(fund_id, "liquidation_loss", gain, lot.liquidation_id, source, symbol=lot.symbol)
        else:
            kept = gain
            if fund_state.spec.surplus == "trader":
                kept = min(gain, surplus_cap(instrument.liquidation_fee_rate, proceeds))
                self._post("surplus_refund", source, ledger.wallet(lot.liquidated_account, asset), gain - kept, asset)
            if kept > 0:
                self._post("liquidation_gain", source, ledger.fund(fund_id), kept, asset)
                self._fund_entry(fund_id, "liquidation_gain", kept, lot.liquidation_id, source, symbol=lot.symbol)
        self._liquidation_id = cause

    def _take_from_lot(self, fund_state: FundState, lot: Lot, qty: Decimal) -> Decimal:
        if qty > lot.qty:
            raise InvariantViolation(f"fund closes {qty} of lot {lot.liquidation_id} holding {lot.qty}")
        cost_share = share(lot.cost, qty, lot.qty)
        fund_state.take_from_lot(lot, qty, cost_share)
        return cost_share

    def _takeover(self, fund_state: FundState, lot: Lot) -> Takeover | None:
        """None when the fund keeps the rest of a lot (docs/design.md §4, §11.3): while its balance is above its floor
        and its inventory's notional within max_inventory_ratio x (balance - floor); under Bybit's trigger, unless the
        drawdown trigger is on; under `socialized`, always."""
        policy = self.adl_policy
        if policy.rule == "socialized":
            return None
        balance = self.ledger.balance(ledger.fund(fund_state.spec.fund_id))
        if balance <= policy.floor:
            return Takeover("takeover")
        if policy.drawdown is not None:
            return self._drawdown_takeover(fund_state, lot, balance)
        return None if self._accepts_inventory(fund_state) else Takeover("takeover")

    def _accepts_inventory(self, fund_state: FundState) -> bool:
        """Its balance above the policy's floor, and its inventory's notional within max_inventory_ratio x (balance -
        floor)."""
        room = self.ledger.balance(ledger.fund(fund_state.spec.fund_id)) - self.adl_policy.floor
        return room > 0 and self.inventory_notional(fund_state) <= CONTEXT.multiply(
            fund_state.spec.max_inventory_ratio, room)

    def _check_inventory(self, symbol: str) -> None:
        """The fund's own trigger on a mark move (docs/design.md §7): when the fund of `symbol` no longer accepts its
        inventory at the new mark, it deleverages the excess of its net position in `symbol` at once, from its lots
        on that side oldest first, as it would a takeover's remainder; a shortfall stops it. Under `socialized` and
        under Bybit's drawdown trigger the fund keeps what it holds until an event of its own (docs/design.md §11)."""
        if self.adl_policy.rule == "socialized" or self.adl_policy.drawdown is not None:
            return
        instrument = self.instruments[symbol]
        fund_state = self.funds[instrument.fund_id]
        net = fund_state.net_qty(symbol)
        while net != 0 and not self._accepts_inventory(fund_state):
            wanted = self._excess_qty(fund_state, instrument, net)
            side = "long" if net > 0 else "short"
            for lot in [lot for lot in fund_state.lots[symbol] if lot.side == side]:
                take = min(lot.qty, wanted)
                if take == 0:
                    break
                wanted -= take
                if self._deleverage(fund_state, lot, "inventory", None, take) > 0:
                    return
            net = fund_state.net_qty(symbol)

    def _excess_qty(self, fund_state: FundState, instrument: Instrument, net: Decimal) -> Decimal:
        """The qty of `net` whose notional at mark is above the limit, rounded up to whole lots (docs/design.md
        §9.4); all of it when the fund's balance is not above the policy's floor."""
        room = self.ledger.balance(ledger.fund(fund_state.spec.fund_id)) - self.adl_policy.floor
        if room <= 0:
            return abs(net)
        excess = self.inventory_notional(fund_state) - CONTEXT.multiply(fund_state.spec.max_inventory_ratio, room)
        wanted = instrument.valuation.qty_of(excess, self.marks[instrument.symbol], instrument.lot_size,
                                             ROUND_CEILING)
        return min(wanted, abs(net))

    def inventory_notional(self, fund_state: FundState) -> Decimal:
        """Sum over the fund's symbols of V(|net qty|, mark)."""
        total = ZERO
        for symbol in fund_state.lots:
            total += self.instruments[symbol].valuation.value(abs(fund_state.net_qty(symbol)), self.marks[symbol])
        return total

    def inventory_upnl(self, fund_state: FundState) -> Decimal:
        """What the fund's lots gain (or lose) at the marks over their costs, exact: V(qty, mark) - cost for a lot
        long in value space, cost - V(qty, mark) otherwise. Its balance does not hold it until the lots are closed."""
        total = ZERO
        for symbol, lots in fund_state.lots.items():
            valuation = self.instruments[symbol].valuation
            for lot in lots:
                value = valuation.value(lot.qty, self.marks[symbol])
                total += value - lot.cost if valuation.value_long(lot.side == "long") else lot.cost - value
        return total

    def _deleverage(self, fund_state: FundState, lot: Lot, trigger: str = "takeover", reset: Decimal | None = None,
                    qty: Decimal | None = None) -> Decimal:
        """One ADL round (docs/design.md §11): close `qty` of the lot (all of it by default) against opposite-side
        positions, as the policy's rule allocates it, at the lot's bankruptcy price (the fund realizes nothing), at
        the mark, or for the reset proceeds of a drawdown round (the fund realizes the difference); then record the
        round's metrics. Returns the qty nobody was left to take (an `adl_shortfall`)."""
        symbol = lot.symbol
        policy = self.adl_policy
        wanted = lot.qty if qty is None else qty
        cost = lot.cost if qty is None else share(lot.cost, wanted, lot.qty)  # the part of the lot this round closes
        opposite: Literal["long", "short"] = "short" if lot.side == "long" else "long"
        mark = self.marks[symbol]
        fund_id = fund_state.spec.fund_id
        valuation = self.instruments[symbol].valuation
        lot_value_long = valuation.value_long(lot.side == "long")
        start = adl_rounds.RoundStart(trigger, fund_id, symbol, lot.liquidation_id, lot.side, wanted, cost, mark,
                                      self.ledger.balance(ledger.fund(fund_id)), policy.floor,
                                      valuation.reported_price(wanted, cost))
        value = valuation.value(wanted, mark)
        deficit = adl_rounds.deficit(lot_value_long, cost, value)
        price_rule: str = policy.price
        if reset is not None:
            price_rule = "reset"
        elif price_rule == "floor":  # OKX: at the mark while the fund can pay the deficit above its floor
            price_rule = "mark" if start.fund_balance - policy.floor >= deficit else "bankruptcy"
        whole_price = {"bankruptcy": cost, "mark": value, "reset": reset}[price_rule]
        assert whole_price is not None
        full_haircut = whole_price - value if lot_value_long else value - whole_price
        # the account the lot was taken from is never its counterparty (a hedge account's other side is untouched,
        # design §7): the queue reaches past it, which keeps its place (ranks and quantiles are the queue's)
        own = self._lot_owner_position(lot, opposite)
        queue, count = self.adl_top(symbol, opposite, wanted + (own.size if own is not None else 0))
        ranks = [(rank, ranked) for rank, ranked in enumerate(queue, start=1) if ranked.position is not own]
        queue = [ranked for _, ranked in ranks]
        eligible = self._eligible_figures(symbol, opposite, mark, own) if self.full_adl_metrics else None
        takes = self._allocate(queue, lot, wanted, full_haircut)
        hits: list[adl_rounds.Hit] = []
        reset_left = reset
        left = wanted
        for (rank, ranked), take in zip(ranks, takes, strict=True):
            if left == 0:
                break
            if take == 0:
                continue
            left -= take
            counterparty = ranked.position
            figures = self._figures(counterparty, mark)
            causes = self._liquidation_id, self._adl_event_id
            self._liquidation_id = lot.liquidation_id
            self._adl_event_id = f"adl-{self._seq}-{len(self._effects.adl_events)}"  # the event made below
            if price_rule == "mark":
                proceeds = valuation.value(take, mark)
                self._realize(fund_state, lot, take, mark)
            elif reset_left is not None:
                proceeds = share(reset_left, take, lot.qty)
                reset_left -= proceeds
                self._realize_proceeds(fund_state, lot, take, proceeds)
            else:
                proceeds = self._take_from_lot(fund_state, lot, take)
            self._reduce(counterparty, take, proceeds, "adl")
            self._adl_event(fund_id, lot, counterparty.account_id, opposite, take,
                            valuation.reported_price(take, proceeds), rank, ranked.score, adl.quantile(rank, count))
            self._liquidation_id, self._adl_event_id = causes
            at_mark = valuation.value(take, mark)  # the haircut: what the take gave up against the mark
            haircut = proceeds - at_mark if lot_value_long else at_mark - proceeds  # the taker: the other side
            hits.append(adl_rounds.Hit(figures, take, haircut))
        takers = count - (own is not None)  # the queue holds the owner's position, which is passed over
        if left > 0:
            if next(self._takers(symbol, opposite, own), None) is None:  # a capped allocation may leave takers,
                self._fell_short.add(lot.liquidation_id)  # which a later round of the event may take more from
            self._finding("adl_shortfall", lot.liquidated_account, lot.liquidation_id, symbol, {
                "unfilled_qty": text(left), "counterparties": str(takers)})
        self._round(start, deficit, price_rule, wanted - left, hits, eligible, takers)
        return left

    def _allocate(self, queue: list[adl.Ranked], lot: Lot, wanted: Decimal, full_haircut: Decimal) -> list[Decimal]:
        """The takes of one round closing `wanted` of the lot, aligned with the queue (docs/design.md §11.2)."""
        rule = self.adl_policy.rule
        lot_size = self.instruments[lot.symbol].lot_size
        if rule == "pro_rata":
            return adl.pro_rata([r.position.size for r in queue], wanted, lot_size)
        if rule in ("capped_pro_rata", "min_max_leverage"):
            mark = self.marks[lot.symbol]
            candidates = [Candidate(r.position.account_id, r.position.size, r.unrealized_pnl,
                                    self._equity(r.position, mark)) for r in queue]
            allocate = capped_pro_rata if rule == "capped_pro_rata" else min_max_leverage
            return allocate(candidates, wanted, lot_size, full_haircut)
        takes = []
        remaining = wanted
        for ranked in queue:
            takes.append(min(ranked.position.size, remaining))
            remaining -= takes[-1]
        return takes

    def _round(self, start: adl_rounds.RoundStart, deficit: Decimal, price_rule: str | None, closed: Decimal,
               hits: list[adl_rounds.Hit], eligible: list[adl_rounds.Figures] | None, count: int) -> None:
        rounds = self._effects.adl_rounds
        rounds.append(adl_rounds.build(
            round_id=f"round-{self._seq}-{len(rounds)}", seq=self._seq, ts=self._ts, policy=self.adl_policy.name,
            start=start, deficit_=deficit, price_rule=price_rule, closed=closed, hits=hits, eligible=eligible,
            eligible_count=count, sequential=self.adl_policy.sequential))

    def _figures(self, position: Position, mark: Decimal) -> adl_rounds.Figures:
        """A position's figures at the mark for the round metrics."""
        return self._viewed(position, mark)[1]

    def _equity(self, position: Position, mark: Decimal) -> Decimal:
        """A position's equity share at the mark (margin_view's), as the allocations weigh it."""
        return self._viewed(position, mark)[0]

    def _viewed(self, position: Position, mark: Decimal) -> tuple[Decimal, adl_rounds.Figures]:
        """(equity share, figures) at the mark, remembered like ranked for positions whose equity depends on nothing
        else: a block of rounds at one mark views the same eligible positions again and again."""
        alone = position.margin_mode == "isolated" or len(self.positions.of(position.account_id)) == 1
        cached_mark, cache = self._figures_cache.get(position.symbol, (None, {}))
        if cached_mark != mark:
            cache = {}
            self._figures_cache[position.symbol] = (mark, cache)
        numbers = (position.qty, position.cost, self._margin_base(position)) if alone else ()
        if alone:
            hit = cache.get(position.key)
            if hit is not None and hit[0] == numbers:
                return hit[1], hit[2]
        equity = self.margin_view(position).equity_share
        valuation = self.instruments[position.symbol].valuation
        result = adl_rounds.figures(position.account_id, position.cost, position.unrealized_pnl(mark, valuation),
                                    equity, valuation.value(position.size, mark))
        if alone:
            cache[position.key] = (numbers, equity, result)
        return equity, result

    def _takers(self, symbol: str, side: str, own: Position | None) -> Iterator[Position]:
        """The open positions on `side` of the symbol but the lot owner's: who a round may take from."""
        want_long = side == "long"
        return (p for p in self.by_symbol[symbol].values() if (p.qty > 0) == want_long and p is not own)

    def _eligible_figures(self, symbol: str, side: str, mark: Decimal, own: Position | None
                          ) -> list[adl_rounds.Figures]:
        return [self._figures(p, mark) for p in self._takers(symbol, side, own)]

    def _lot_owner_position(self, lot: Lot, side: Literal["long", "short"]) -> Position | None:
        """The position on `side` of the account the lot was taken from, if it holds one: a hedge account's other
        side, or a one-way position turned since the takeover."""
        book = self.by_symbol[lot.symbol]
        for key in ((lot.liquidated_account, side), (lot.liquidated_account, "both")):
            position = book.get(key)
            if position is not None and (position.qty > 0) == (side == "long"):
                return position
        return None

    def _enforce_solvency(self, funds_before: dict[str, Decimal]) -> None:
        """A fund that ends an event below its floor deleverages all of its inventory (or, under `socialized`, takes
        the shortfall from the profitable positions of its symbols); a balance below zero that grew is bad debt."""
        floor = self.adl_policy.floor
        for fund_id, before in funds_before.items():
            balance = self.ledger.balance(ledger.fund(fund_id))
            if balance >= floor:
                continue
            fund_state = self.funds[fund_id]
            if self.adl_policy.rule == "socialized":
                self._socialize(fund_state, floor - balance)
                balance = self.ledger.balance(ledger.fund(fund_id))
            else:
                for symbol in sorted(fund_state.lots):
                    for lot in list(fund_state.lots.get(symbol, ())):
                        if lot.liquidation_id not in self._fell_short:
                            self._deleverage(fund_state, lot, "solvency")
            if balance < 0 and balance < before:
                self._finding("bad_debt", None, None, None, {
                    "fund_id": fund_id, "balance": text(balance), "added": text(min(before, ZERO) - balance)})

    def _socialize(self, fund_state: FundState, shortfall: Decimal) -> None:
        """Socialized loss (docs/design.md §11.2): the shortfall is taken from every position of the fund's symbols
        with uPnL > 0 at its mark, in proportion to it and never beyond it, each as a posting from the position's
        margin (isolated margin, or the cross wallet) to the fund; no position is closed."""
        fund_id = fund_state.spec.fund_id
        start = adl_rounds.RoundStart("socialized", fund_id, None, None, None, None, None, None,
                                      self.ledger.balance(ledger.fund(fund_id)), self.adl_policy.floor)
        positions = [self.by_symbol[symbol][key] for symbol in sorted(fund_state.symbols)
                     for key in sorted(self.by_symbol[symbol])]  # (account, position_side): hedge sides apart
        profits = [p.unrealized_pnl(self.marks[p.symbol], self.instruments[p.symbol].valuation) for p in positions]
        keys = [(p.account_id, p.label) for p in positions]
        eligible = ([self._figures(p, self.marks[p.symbol]) for p in positions] if self.full_adl_metrics else None)
        taken = [(position, amount, self._figures(position, self.marks[position.symbol]))
                 for position, amount in zip(positions, socialized_shares(profits, keys, shortfall), strict=True)
                 if amount > 0]  # every figure before the first posting moves a wallet
        hits = []
        for position, amount, figures in taken:
            settle_asset = self.instruments[position.symbol].settle_asset
            source = (ledger.isolated(position.account_id, position.symbol, position.position_side)
                      if position.margin_mode == "isolated" else ledger.wallet(position.account_id, settle_asset))
            self._post("socialized_loss", source, ledger.fund(fund_id), amount, settle_asset)
            self._fund_entry(fund_id, "socialized_loss", amount, None, source)
            hits.append(adl_rounds.Hit(figures, ZERO, amount))
        self._round(start, shortfall, None, ZERO, hits, eligible, len(positions))

    # ------------------------------------------------------------------ Bybit's drawdown trigger (§11.3)
    def _symbol_pnl(self, fund_state: FundState, symbol: str) -> Decimal:
        """The fund's PnL on a symbol: realized, plus its lots of the symbol valued at the mark (exact)."""
        total = self.drawdown.realized.get(symbol, ZERO)
        lots = fund_state.lots.get(symbol)
        if lots:
            mark = self.marks[symbol]
            valuation = self.instruments[symbol].valuation
            for lot in lots:
                value = valuation.value(lot.qty, mark)
                total += value - lot.cost if valuation.value_long(lot.side == "long") else lot.cost - value
        return total

    def _drawdown_values(self, funds: list[str]) -> dict[str, tuple[Decimal, dict[str, Decimal]]]:
        """Each fund's balance and each of its symbols' PnL, now (nothing changes: the event may yet be rejected)."""
        values = {}
        for fund_id in funds:
            fund_state = self.funds[fund_id]
            values[fund_id] = (self.ledger.balance(ledger.fund(fund_id)),
                               {symbol: self._symbol_pnl(fund_state, symbol) for symbol in fund_state.symbols})
        return values

    def _drawdown_takeover(self, fund_state: FundState, lot: Lot, balance: Decimal) -> Takeover | None:
        """The trigger fires when the symbol's PnL (the lot in it, at the mark) is below its window maximum (with the
        PnL the event found) by more than ratio x the pool's window maximum balance, or while it is on; the lot's
        proceeds are then reset so that the drawdown stops at that level, between the lot's cost and its value at
        the mark, rounded in the fund's favour to 1e-8."""
        drawdown = self.adl_policy.drawdown
        assert drawdown is not None
        state, symbol, window, fund_id = self.drawdown, lot.symbol, drawdown.window_ms, fund_state.spec.fund_id
        balance_before, pnls_before = self._drawdown_before[fund_id]
        pnl = self._symbol_pnl(fund_state, symbol)
        top_pnl = state.pnls.get(symbol, WindowMax()).maximum(self._ts, window, max(pnl, pnls_before[symbol]))
        top_balance = state.balances.get(fund_id, WindowMax()).maximum(self._ts, window, max(balance, balance_before))
        if top_balance <= 0:
            return None
        level = top_pnl - CONTEXT.multiply(drawdown.ratio, top_balance)
        if pnl >= level and symbol not in state.triggered:
            return None
        state.triggered.add(symbol)
        value = self.instruments[symbol].valuation.value(lot.qty, self.marks[symbol])
        value_long = self.instruments[symbol].valuation.value_long(lot.side == "long")  # in value space (§7)
        lot_pnl = value - lot.cost if value_long else lot.cost - value
        room = pnl - lot_pnl - level  # what the symbol's PnL may still lose without the lot, down to the level
        low, high = min(lot.cost, value), max(lot.cost, value)
        exact = lot.cost - room if value_long else lot.cost + room
        if exact <= low or exact >= high:
            return Takeover("drawdown", low if exact <= low else high)
        if value_long:  # the fund sells the lot's value: rounded up, in its favour
            return Takeover("drawdown", min(whole_steps(exact, ONE, MONEY_QUANTUM, ROUND_CEILING), high))
        return Takeover("drawdown", max(whole_steps(exact, ONE, MONEY_QUANTUM, ROUND_FLOOR), low))

    def _sample_drawdown(self, funds: list[str]) -> None:
        """After an event that may move a fund: the balance and each symbol's PnL the event found, then those it
        left, join their windows (at the event's ts); a symbol whose drawdown is back above the stop level is
        switched off."""
        drawdown = self.adl_policy.drawdown
        assert drawdown is not None
        state, ts, window = self.drawdown, self._ts, drawdown.window_ms
        after = self._drawdown_values(funds)
        for fund_id in funds:
            balances = state.balances.setdefault(fund_id, WindowMax())
            for balance, pnls in (self._drawdown_before[fund_id], after[fund_id]):
                balances.add(ts, balance, window)
                for symbol, pnl in pnls.items():
                    state.pnls.setdefault(symbol, WindowMax()).add(ts, pnl, window)
            balance, pnls = after[fund_id]
            top_balance = balances.maximum(ts, window, balance)
            for symbol, pnl in pnls.items():
                stop_level = state.pnls[symbol].maximum(ts, window, pnl) - CONTEXT.multiply(drawdown.stop, top_balance)
                if symbol in state.triggered and (top_balance <= 0 or pnl > stop_level):
                    state.triggered.discard(symbol)

    # ------------------------------------------------------------------ views (used by reports too)
    def exposure(self, position: Position, memo: Exposures | None = None) -> tuple[Decimal, Decimal]:
        """(uPnL, maintenance margin) of a position at its mark. A caller that views several positions of one
        account passes one memo dict to every view, so each peer is computed once, not once per view."""
        key = (position.symbol, position.position_side)
        if memo is not None:
            known = memo.get(key)
            if known is not None:
                return known
        mark = self.marks[position.symbol]
        instrument = self.instruments[position.symbol]
        result = (position.unrealized_pnl(mark, instrument.valuation),
                  position_maintenance(position, instrument.tiers, mark, instrument.valuation))
        if memo is not None:
            memo[key] = result
        return result

    def margin_view(self, position: Position, memo: Exposures | None = None) -> MarginView:
        memo = {} if memo is None else memo  # a cross position is its own peer: computed once either way
        own_pnl, own_mm = self.exposure(position, memo)
        if position.margin_mode == "isolated":
            balance = self.ledger.balance(self._isolated_account(position)) + own_pnl
            return MarginView(balance, own_mm, own_mm, balance)
        asset = self.instruments[position.symbol].settle_asset
        tnc = self.ledger.balance(ledger.wallet(position.account_id, asset))
        tmm = ZERO
        for other in self._cross_positions(position.account_id, asset):
            pnl, mm = self.exposure(other, memo)
            tnc += pnl
            tmm += mm
        return MarginView(tnc, tmm, own_mm, cross_equity_share(tnc, own_mm, tmm))

    def bankruptcy_price(self, position: Position, memo: Exposures | None = None) -> Decimal:
        with localcontext(CONTEXT):
            return self._bankruptcy_price(position, memo)

    def _bankruptcy_price(self, position: Position, memo: Exposures | None = None) -> Decimal:
        """The position's BP, rounded in the fund's favour (docs/design.md §9.4)."""
        valuation = self.instruments[position.symbol].valuation
        if position.margin_mode == "isolated":
            return isolated_bankruptcy_price(position, self.ledger.balance(self._isolated_account(position)),
                                             valuation)
        return bankruptcy_price(position, self.margin_view(position, memo).equity_share,
                                self.marks[position.symbol], valuation)

    def position_of(self, account_id: str, symbol: str, side: Literal["long", "short"]) -> Position:
        """The account's open position of one direction on a symbol: its hedge side of that name, else its one-way
        position (an account's positions on a symbol are all one-way or all hedge sides, docs/design.md §7)."""
        book = self.by_symbol[symbol]
        return book.get((account_id, side)) or book[(account_id, "both")]

    def adl_queue(self, symbol: str, side: Literal["long", "short"]) -> list[adl.Ranked]:
        """The positions of one symbol and side in ADL order (fund inventory is never in the queue)."""
        with localcontext(CONTEXT):
            mark = self.marks[symbol]
            want_long = side == "long"
            candidates = [p for p in self.by_symbol[symbol].values() if (p.qty > 0) == want_long]
            if self.adl_policy.rule == "binance":
                return adl.order([self._rank_binance(p, mark) for p in candidates])
            return adl.order([self.ranked(p) for p in candidates])

    def _rank_binance(self, position: Position, mark: Decimal) -> adl.Ranked:
        view = self.margin_view(position)
        if position.margin_mode == "isolated":
            collateral = self.ledger.balance(ledger.isolated(position.account_id, position.symbol,
                                                             position.position_side))
        else:
            collateral = self.ledger.balance(ledger.wallet(position.account_id,
                                                           self.instruments[position.symbol].settle_asset))
        return adl.rank_binance(position, mark, self.instruments[position.symbol].valuation, collateral=collateral,
                                margin_balance=view.margin_balance, maintenance=view.maintenance_margin,
                                equity=view.equity_share, bankruptcy=self._bankruptcy_price(position))

    def adl_top(self, symbol: str, side: Literal["long", "short"], qty: Decimal) -> tuple[list[adl.Ranked], int]:
        """The head of the ADL queue that covers qty, exactly ranked, and the queue's length: the counterparties a
        deleverage of qty against this side works through, first to last (the compiled engine's Ledger.adl_head).
        Under the BitMEX rule the index picks the candidates (backstop.core.adl_index); otherwise every position is
        ranked. The index is brought up to date first; nothing else changes."""
        with localcontext(CONTEXT):  # as adl_queue: the exact ranking is the same whoever calls
            return self._adl_top_in_context(symbol, side, qty)

    def _adl_top_in_context(self, symbol: str, side: Literal["long", "short"], qty: Decimal
                            ) -> tuple[list[adl.Ranked], int]:
        if self.adl_policy.rule != "bitmex" or self.instruments[symbol].valuation.inverse:
            queue = self.adl_queue(symbol, side)  # the index's float rows score linear contracts only
            return queue, len(queue)
        index = self.adl_index
        self.refresh_adl_index()
        count = index.count(symbol, side)
        candidates = index.candidates(symbol, side, self.marks[symbol], qty)
        if candidates is None:
            return self.adl_queue(symbol, side), count
        book = self.by_symbol[symbol]  # an account holds one position per side of a symbol: one-way or hedge
        return adl.order([self.ranked(book.get((a, side)) or book[(a, "both")]) for a in candidates]), count

    def refresh_adl_index(self, limit: int | None = None) -> bool:
        """Bring the ADL index up to date with every change so far (or with `limit` of the accounts touched);
        False if nothing had changed. Each deleverage does this first; a service calls it while its input is idle
        or in slices after a backlog, so that the first deleverage after a burst of trading does not wait for it.
        The index only picks candidates: when it is refreshed changes no outcome."""
        index = self.adl_index
        if self.adl_policy.rule != "bitmex" or not (self.ledger.touched or index.dirty):
            return False
        index.touch_ledger_accounts(self.ledger.drain_touched())
        index.refresh(self.positions, self._margin_base, lambda s: self.instruments[s].settle_asset, limit)
        return True

    def adl_index_backlog(self) -> int:
        """About how many accounts the next refresh_adl_index rewrites (ledger accounts touched count one each)."""
        return self.adl_index.pending + len(self.ledger.touched)

    def ranked(self, position: Position) -> adl.Ranked:
        """adl.rank_position, remembered while the mark and the position's own numbers stay the same: a block of
        deleverages at one mark re-ranks the same candidates many times. Only for positions whose rank depends on
        nothing else (isolated, or the account's only position)."""
        mark = self.marks[position.symbol]
        cached_mark, cache = self._rank_cache.get(position.symbol, (None, {}))
        if cached_mark != mark:
            cache = {}
            self._rank_cache[position.symbol] = (mark, cache)
        alone = position.margin_mode == "isolated" or len(self.positions.of(position.account_id)) == 1
        if not alone:
            return adl.rank_position(position, mark, self._bankruptcy_price(position),
                                     self.instruments[position.symbol].valuation)
        numbers = (position.qty, position.cost, self._margin_base(position))
        hit = cache.get(position.key)
        if hit is not None and hit[0] == numbers and hit[1].position is position:
            return hit[1]
        ranked = adl.rank_position(position, mark, self._bankruptcy_price(position),
                                   self.instruments[position.symbol].valuation)
        cache[position.key] = (numbers, ranked)
        return ranked

    def _margin_base(self, position: Position) -> Decimal:
        """B in the index's equity = B + uPnL: the isolated margin, or the wallet for a lone cross position."""
        if position.margin_mode == "isolated":
            return self.ledger.balance(self._isolated_account(position))
        return self.ledger.balance(ledger.wallet(position.account_id, self.instruments[position.symbol].settle_asset))

    @staticmethod
    def _isolated_account(position: Position) -> str:
        return ledger.isolated(position.account_id, position.symbol, position.position_side)

    def liquidation_price(self, position: Position, memo: Exposures | None = None) -> Decimal | None:
        with localcontext(CONTEXT):
            return self._liquidation_price(position, memo)

    def _liquidation_price(self, position: Position, memo: Exposures | None = None) -> Decimal | None:
        instrument = self.instruments[position.symbol]
        legs = [position]
        if position.margin_mode == "isolated":
            other = self.ledger.balance(self._isolated_account(position))
        else:
            other = self.ledger.balance(ledger.wallet(position.account_id, instrument.settle_asset))
            for peer in self._cross_positions(position.account_id, instrument.settle_asset):
                if peer.symbol == position.symbol:  # the position, or its other hedge side: the same mark moves it
                    legs += [peer] if peer is not position else []
                    continue
                pnl, mm = self.exposure(peer, memo)
                other += pnl - mm
        return liquidation_price(legs, instrument.tiers, other, instrument.valuation)

    def _cross_positions(self, account_id: str, asset: str) -> list[Position]:
        return [p for p in self.positions.of(account_id)
                if p.margin_mode == "cross" and self.instruments[p.symbol].settle_asset == asset]

    # ------------------------------------------------------------------ outputs
    def _post(self, kind: PostingKind, source: str, destination: str, amount: Decimal, asset: str) -> None:
        """Move amount (quantized money; negative: the other way) in the ledger and write its posting: amount > 0
        from the debit account to the credit account; nothing for zero. A posting to or from a fund names the
        fund-ledger entry the caller writes next."""
        self.ledger.post(source, destination, amount)
        if amount == 0:
            return
        if amount < 0:
            source, destination, amount = destination, source, -amount
        effects = self._effects
        postings = effects.postings
        balances = self.ledger.balances
        touches_fund = is_fund_account(source) or is_fund_account(destination)
        body: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "id": f"p-{self._seq}-{len(postings)}", "seq": self._seq,
            "ts": self._ts, "kind": kind, "debit_account": source, "credit_account": destination, "asset": asset,
            "amount": amount, "debit_balance_after": balances.get(source, ZERO),
            "credit_balance_after": balances.get(destination, ZERO), "transfer_id": self._transfer_id,
            "fill_id": self._fill_id, "liquidation_id": self._liquidation_id, "adl_event_id": self._adl_event_id,
            "fund_entry_id": f"fl-{self._seq}-{len(effects.fund_entries)}" if touches_fund else None,
            "prev_hash": self.postings_head}
        self.postings_head = chain_hash(body)
        postings.append(Posting(**body, hash=self.postings_head))

    def _fund_entry(self, fund_id: str, kind: FundEntryKind, amount: Decimal, liquidation_id: str | None,
                    counter_account: str, *, symbol: str | None = None) -> None:
        """`symbol`: the symbol whose fund PnL the entry is (Bybit's trigger sums it per symbol, §11.3)."""
        if symbol is not None and self.adl_policy.drawdown is not None:
            realized = self.drawdown.realized
            realized[symbol] = realized.get(symbol, ZERO) + amount
        entries = self._effects.fund_entries
        entry_id = f"fl-{self._seq}-{len(entries)}"
        postings = self._effects.postings
        if not postings or postings[-1].fund_entry_id != entry_id:
            raise InvariantViolation(f"fund-ledger entry {entry_id} follows no posting to or from the fund")
        body: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "id": entry_id, "seq": self._seq,
            "ts": self._ts, "fund_id": fund_id, "kind": kind, "amount": amount,
            "balance_after": self.ledger.balance(ledger.fund(fund_id)), "liquidation_id": liquidation_id,
            "transfer_id": self._transfer_id if kind == "transfer" else None,
            "counter_account": counter_account, "prev_hash": self.ledger_head}
        self.ledger_head = chain_hash(body)
        entries.append(FundLedgerEntry(**body, hash=self.ledger_head))

    def _adl_event(self, fund_id: str, lot: Lot, account_id: str, side: Literal["long", "short"],
                   qty: Decimal, fill_price: Decimal, rank: int, rank_score: Decimal, quantile: int) -> None:
        events = self._effects.adl_events
        body: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "id": f"adl-{self._seq}-{len(events)}", "seq": self._seq,
            "ts": self._ts, "symbol": lot.symbol, "liquidation_id": lot.liquidation_id, "fund_id": fund_id,
            "account_id": account_id, "side": side, "qty": qty, "price": fill_price, "rank": rank,
            "score": rank_score, "quantile": quantile, "prev_hash": self.adl_head}
        self.adl_head = chain_hash(body)
        events.append(AdlEvent(**body, hash=self.adl_head))

    def _finding(self, kind: FindingKind, account_id: str | None, liquidation_id: str | None,
                 symbol: str | None, details: dict[str, str]) -> None:
        findings = self._effects.findings
        findings.append(Finding(SCHEMA_VERSION, f"finding-{self._seq}-{len(findings)}", self._seq, self._ts,
                                kind, account_id, liquidation_id, symbol, details))

    # ------------------------------------------------------------------ lookups and checks
    def _instrument(self, symbol: str) -> Instrument:
        instrument = self.instruments.get(symbol)
        if instrument is None:
            raise Rejected(f"unknown symbol {symbol}")
        return instrument

    def _fund(self, fund_id: str) -> FundState:
        fund_state = self.funds.get(fund_id)
        if fund_state is None:
            raise Rejected(f"unknown fund {fund_id}")
        return fund_state

    def _is_settle_asset(self, asset: str) -> bool:
        known = self._settle_assets
        if known[0] != len(self.funds):  # funds are only added (a snapshot too) and never change asset
            known = self._settle_assets = (len(self.funds), frozenset(f.spec.settle_asset for f in self.funds.values()))
        return asset in known[1]

    @staticmethod
    def _check_steps(instrument: Instrument, qty: Decimal, fill_price: Decimal | None) -> None:
        if not is_multiple(qty, instrument.lot_size):
            raise Rejected(f"qty {text(qty)} is not a multiple of the lot size {text(instrument.lot_size)}")
        if fill_price is not None and not is_multiple(fill_price, instrument.tick_size):
            raise Rejected(f"price {text(fill_price)} is not a multiple of the tick size {text(instrument.tick_size)}")

    def _funds_of(self, record: Event) -> list[str]:
        """The funds whose balance this event may move by the rules of §4 (checked for solvency afterwards, and
        sampled for Bybit's drawdown trigger): liquidations, funding and the fund's own fills. Trades between
        traders and definitions do not touch a fund; for transfers and marks see _funds_taken_below_a_floor."""
        if isinstance(record, (LiquidationEvent, FundingEvent)) or (
                isinstance(record, FillEvent) and is_fund_account(record.account_id)):
            instrument = self.instruments.get(record.symbol)
            return [instrument.fund_id] if instrument is not None else []
        return []

    def _funds_taken_below_a_floor(self, record: Event) -> list[str]:
        """The funds another event can leave below the ADL floor, checked for solvency too (a fund that ends any
        event below its floor deleverages its inventory, design §11.3): a withdrawal from a fund (below zero it is
        refused; a floor above zero it can cross), and a mark under the ADL price `mark`, whose rounds on the fund's
        excess inventory realize at the mark. Not drawdown samples: Bybit's trigger watches §4's events alone."""
        if self.adl_policy.rule == "socialized":  # it keeps every lot; a withdrawal is never taken from traders
            return []
        if isinstance(record, TransferEvent) and is_fund_account(record.account_id) and record.amount < 0:
            return [fund_id_of(record.account_id)]
        if isinstance(record, MarkEvent) and self.adl_policy.price == "mark":
            instrument = self.instruments.get(record.symbol)
            return [instrument.fund_id] if instrument is not None else []
        return []

    _handlers: ClassVar[dict[str, Any]] = {
        "fund": _on_fund,
        "instrument": _on_instrument,
        "transfer": _on_transfer,
        "fill": _on_fill,
        "mark": _on_mark,
        "funding": _on_funding,
        "liquidation": _on_liquidation,
    }
