"""Projection rows for PostgreSQL, derived from engine state after a batch (read-only views of the engine).

Wallets are rewritten for the accounts batches touched, and positions for the (account, symbol) pairs they
touched plus every cross position of a touched account (a wallet change moves their liquidation and bankruptcy
prices; an isolated position in another symbol did not change); the positions the engine closed are deleted unless
held again (a full rewrite deletes every side no account holds); funds every batch; fund lots when the
inventory may have changed; the ADL queue (and every position's liquidation and bankruptcy price, which move with
the marks) when RefreshCadence says so, as a FullRefresh that the service computes in a forked child. Once caught
up, touched rows go with every batch; catching up, they are collected (Touched) until the next full refresh, a
count of events (RefreshCadence.touched_due) or the service has caught up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import localcontext
from typing import Any, NamedTuple, cast

from backstop.core import adl, ledger
from backstop.core.engine import Engine, Exposures
from backstop.core.events import is_fund_account
from backstop.core.numbers import CONTEXT, money
from backstop.core.state import Position, PositionSide
from backstop.pipeline.copy_text import copy_rows
from backstop.pipeline.ingest import BatchResult

POSITION_SIDES: tuple[PositionSide, ...] = ("both", "long", "short")


Rows = list[tuple[Any, ...]] | bytes  # tuples (the reference engine), or COPY text (the compiled engine)


@dataclass(frozen=True, slots=True)
class Projections:
    """Derived rows to upsert with the batch (see backstop.pipeline.projections)."""

    wallets: Rows
    positions: Rows
    closed_positions: Rows  # (account, symbol, position_side) of the rows to delete
    funds: Rows
    lots: Rows | None  # None: unchanged; otherwise the full set
    adl_queue: Rows | None


def rows_of(rows: Rows) -> list[tuple[Any, ...]]:
    """Rows as tuples, whichever form they came in."""
    return copy_rows(rows) if isinstance(rows, bytes) else rows


@dataclass(slots=True)
class RefreshCadence:
    """When the full projection (every position and the ADL queue) is rewritten, and when the rows batches touched
    while catching up are written.

    The full refresh: after `every_events` events, or `per_position` events per position open at the last one
    (or at the start), whichever is more; after funding (it moves every wallet); and, once the service has caught
    up with its input, the first time and then every `every_event_ms` of event time. A refresh rewrites every
    position, so its cost grows with the state where the events' does not: at a fixed count of events, 100,000
    positions would be four rows an event, and a service catching up would spend itself on refreshes. Catching up,
    event time runs far ahead of the clock, and a queue written at every minute of it would be overwritten a batch
    later. The touched rows go with every batch once caught up, and catching up with a refresh or every
    `every_events` events, whichever comes first (they hold the balances, which the count of positions does not
    slow)."""

    every_events: int
    every_event_ms: int
    last_seq: int
    per_position: int = 0
    last_ts: int | None = None
    interval: int = 0  # events the next refresh by count waits for, past every_events: set at each refresh
    touched_seq: int | None = None  # when the touched rows were last written (None: last_seq)

    def due(self, result: BatchResult, seq: int, *, caught_up: bool, positions: Callable[[], int]) -> bool:
        """`positions`: how many the engine holds open (asked only when a refresh falls due)."""
        facts = result.journal_facts()
        if not facts.rows:
            return False
        newest = facts.last_ts
        due = (seq - self.last_seq >= max(self.every_events, self.interval) or "funding" in facts.types
               or (caught_up and (self.last_ts is None or newest - self.last_ts >= self.every_event_ms)))
        if due:
            self.last_seq, self.last_ts, self.touched_seq = seq, newest, seq
            self.interval = self.per_position * positions()
        return due

    def touched_due(self, seq: int, *, caught_up: bool) -> bool:
        """Whether the rows touched since they were last written go with this batch (a refresh's batch aside)."""
        last = self.last_seq if self.touched_seq is None else self.touched_seq
        due = caught_up or seq - last >= self.every_events
        if due:
            self.touched_seq = seq
        return due


@dataclass(slots=True)
class Touched:
    """The wallets and positions to rewrite: those batches touched since their rows were last written. Catching
    up, the same busy accounts are touched batch after batch, and writing their rows with every batch cost the
    service a sixth of its rate."""

    accounts: set[str] = field(default_factory=set)
    positions: set[tuple[str, str]] = field(default_factory=set)  # (account, symbol)
    # (account, symbol, side) the engine closed: their rows go unless held again (no other side can have a row: a
    # row goes when its position closes, and a symbol's position mode changes only once every position in it closed)
    closed: set[tuple[str, str, str]] = field(default_factory=set)

    @classmethod
    def of(cls, result: BatchResult) -> Touched:
        return cls(set(result.touched_accounts), set(result.touched_positions), set(result.closed_positions))

    def add(self, result: BatchResult) -> None:
        self.accounts |= result.touched_accounts
        self.positions |= result.touched_positions
        self.closed |= result.closed_positions

    def __bool__(self) -> bool:
        return bool(self.accounts or self.positions or self.closed)

    @classmethod
    def everything(cls, engine: Engine) -> Touched:
        """Every account with a wallet (with refresh_all, build adds every account with a position)."""
        return cls({owner for name in engine.ledger.balances if (owner := ledger.wallet_owner(name)) is not None})


def position_row(engine: Engine, position: Position, seq: int, memo: Exposures) -> tuple[Any, ...]:
    """memo: one per account (see Engine.exposure)."""
    with localcontext(CONTEXT):
        liquidation = engine.liquidation_price(position, memo)
        return (position.account_id, position.symbol, position.position_side, position.qty,
                position.entry_price(engine.instruments[position.symbol].valuation),
                position.margin_mode, position.leverage,
                engine.ledger.balance(ledger.isolated(position.account_id, position.symbol, position.position_side)),
                engine.marks[position.symbol], liquidation, engine.bankruptcy_price(position, memo), seq)


def build(engine: Engine, result: BatchResult, *, refresh_all: bool, touched: Touched | None = None,
          written: Touched | None = None) -> Projections:
    """Rows after `result`; wallets and positions for `touched` (default: what this batch touched), or for every
    account with refresh_all, less the rows `written` names (its accounts' wallets and cross positions, its pairs'
    positions: what a batch writes as of the same seq)."""
    if touched is None:
        touched = Touched.of(result)
    seq = engine.last_seq
    assets = sorted({f.spec.settle_asset for f in engine.funds.values()})
    symbols = sorted(engine.instruments)
    accounts: Iterable[str] = sorted(touched.accounts | (set(engine.positions) if refresh_all else set()))
    wallets: list[tuple[Any, ...]] = []
    positions: list[tuple[Any, ...]] = []
    closed: list[tuple[Any, ...]] = []
    skip = written or Touched()
    for account_id in accounts:
        if is_fund_account(account_id):
            continue
        written_here = account_id in skip.accounts
        for asset in assets:
            name = ledger.wallet(account_id, asset)
            if name in engine.ledger.balances and not written_here:
                wallets.append((account_id, asset, engine.ledger.balances[name], seq))
        memo: Exposures = {}
        for symbol in symbols:
            touched_here = refresh_all or (account_id, symbol) in touched.positions
            written_pair = written_here and (account_id, symbol) in skip.positions
            for position_side in POSITION_SIDES:  # one-way, or a hedge side: each its own row
                position = engine.positions.get(account_id, symbol, position_side)
                if position is None:
                    if refresh_all:
                        closed.append((account_id, symbol, position_side))
                else:
                    cross = position.margin_mode == "cross"
                    if (touched_here or cross) and not (written_pair or (written_here and cross)):
                        positions.append(position_row(engine, position, seq, memo))
    if not refresh_all:
        closed = [(account_id, symbol, side) for account_id, symbol, side in sorted(touched.closed)
                  if engine.positions.get(account_id, symbol, cast(PositionSide, side)) is None]
    with localcontext(CONTEXT):
        funds = [(f.spec.fund_id, f.spec.settle_asset, f.spec.surplus, f.spec.max_inventory_ratio,
                  engine.ledger.balance(ledger.fund(f.spec.fund_id)),
                  ledger.bad_debt(engine.ledger.balance(ledger.fund(f.spec.fund_id))),
                  money(engine.inventory_notional(f)), seq) for f in engine.funds.values()]
        inventory_changed = refresh_all or "liquidation" in result.journal_facts().types or any(
            is_fund_account(a) for a in result.touched_accounts)
        lots = [(f.spec.fund_id, lot.liquidation_id, lot.symbol, lot.side, lot.qty, lot.cost,
                 lot.bankruptcy_price(engine.instruments[lot.symbol].valuation), lot.liquidated_account, lot.seq)
                for f in engine.funds.values() for queue in f.lots.values() for lot in queue] \
            if inventory_changed else None
    return Projections(wallets, positions, closed, funds, lots, adl_rows(engine, seq) if refresh_all else None)


class FullRefresh(NamedTuple):
    """Every wallet and position row and the whole ADL queue, as of seq: what moves with the marks (and, after
    funding, every wallet). The service computes it in a forked child (backstop.service.forked) and writes it over
    the rows older than seq, so a row a later batch wrote is kept (and one as of seq already holds these values)."""

    seq: int
    wallets: list[tuple[Any, ...]]
    positions: list[tuple[Any, ...]]
    adl_queue: list[tuple[Any, ...]]


def full_refresh(engine: Engine, written: Touched | None = None) -> FullRefresh:
    """`written`: the rows a batch writes as of the same seq, left out (see build)."""
    rows = build(engine, BatchResult(), refresh_all=True, touched=Touched.everything(engine), written=written)
    return FullRefresh(engine.last_seq, rows_of(rows.wallets), rows_of(rows.positions), rows_of(rows.adl_queue or []))


def adl_rows(engine: Engine, seq: int) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for symbol in sorted(engine.by_symbol):
        if symbol not in engine.marks:
            continue
        for side in ("long", "short"):
            queue: list[adl.Ranked] = engine.adl_queue(symbol, side)
            for rank, ranked in enumerate(queue, start=1):
                rows.append((symbol, side, ranked.position.account_id, rank, ranked.score,
                             adl.quantile(rank, len(queue)), seq))
    return rows

