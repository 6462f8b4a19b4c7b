"""ADL quantiles and risk levels on the wire (docs/design.md §10, "ADL quantiles and risk levels").

Quantile points are in event time: the first applied event whose ts lies in a later period of QUANTILE_PERIOD_MS
than the newest ts applied before it. Right after that event, every open position is ranked as the engine would
rank it for a deleverage at that moment (its symbol and side, the policy's ranking, the marks in force), and a
record is published for each position whose quantile differs from the one last published for it (a first quantile,
a new one, or null for a position gone since), and for each symbol whose risk level changed. A quantile depends on
every position of its side and on the mark, so it is a fact of the moment it is computed; the points depend only
on the journal, never on how it was batched, so replay and the service publish the same records.

Risk level of a symbol: its fund's capacity (what it can still take over before the takeover rule deleverages:
max_inventory_ratio x balance - inventory notional, 0 when the balance is not positive) against the stressed
notional of the symbol's larger side (size x mark of the positions within 1/STRESS_LEVERAGE of the mark of their
bankruptcy price: effective leverage STRESS_LEVERAGE or more, or past it): high when the capacity is 0 or the
stressed notional reaches it, medium when it reaches half of it, low otherwise. Compared exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING, Literal

from backstop.core import adl, ledger
from backstop.core.numbers import CONTEXT, ZERO, money
from backstop.core.records import SCHEMA_VERSION, AdlQuantileChange, AdlQuantileRecord, AdlRiskChange, RiskLevel

if TYPE_CHECKING:
    from backstop.core.engine import Engine

QUANTILE_PERIOD_MS = 30_000  # as Binance updates its quantile estimates
STRESS_LEVERAGE = 10
SIDES: tuple[Literal["long", "short"], ...] = ("long", "short")


def crosses_period(newest_before: int | None, ts: int) -> bool:
    """Whether an event at ts, applied after events whose newest ts was `newest_before`, is a quantile point."""
    return newest_before is not None and ts // QUANTILE_PERIOD_MS > newest_before // QUANTILE_PERIOD_MS


@dataclass(slots=True)
class SideView:
    """One symbol and side as the engine ranks it now: each account's rank and quantile, and the summed size of
    its stressed positions."""

    ranks: dict[str, tuple[int, int]] = field(default_factory=dict)  # account -> (rank, quantile)
    stressed_size: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Risk:
    fund_id: str
    level: RiskLevel
    capacity: Decimal  # exact, >= 0
    stressed_long: Decimal  # exact notionals
    stressed_short: Decimal


def is_stressed(ranked: adl.Ranked, mark: Decimal) -> bool:
    """Within 1/STRESS_LEVERAGE of the mark of its own (rounded) bankruptcy price, or past it."""
    bankruptcy = ranked.bankruptcy_price
    distance = mark - bankruptcy if ranked.position.qty > 0 else bankruptcy - mark
    return distance * STRESS_LEVERAGE <= mark


def side_view(engine: Engine, symbol: str, side: Literal["long", "short"]) -> SideView:
    """Every position of the side ranked exactly (Engine.adl_queue)."""
    view = SideView()
    mark = engine.marks.get(symbol)
    if mark is None:
        return view
    queue = engine.adl_queue(symbol, side)
    count = len(queue)
    stressed = ZERO
    with localcontext(CONTEXT):
        for rank, ranked in enumerate(queue, start=1):
            view.ranks[ranked.position.account_id] = (rank, adl.quantile(rank, count))
            if is_stressed(ranked, mark):
                stressed += ranked.position.size
    view.stressed_size = stressed
    return view


def capacity(engine: Engine, fund_id: str) -> Decimal:
    """What the fund can still take over before the takeover rule deleverages (docs/design.md §4), at least 0."""
    fund_state = engine.funds[fund_id]
    with localcontext(CONTEXT):
        balance = engine.ledger.balance(ledger.fund(fund_id))
        if balance <= 0:
            return ZERO
        room = fund_state.spec.max_inventory_ratio * balance - engine.inventory_notional(fund_state)
        return max(room, ZERO)


def risk(engine: Engine, symbol: str, long_view: SideView, short_view: SideView,
         capacities: dict[str, Decimal]) -> Risk:
    fund_id = engine.instruments[symbol].fund_id
    room = capacities.get(fund_id)
    if room is None:
        room = capacities[fund_id] = capacity(engine, fund_id)
    mark = engine.marks.get(symbol, ZERO)
    with localcontext(CONTEXT):
        stressed_long, stressed_short = long_view.stressed_size * mark, short_view.stressed_size * mark
        stressed = max(stressed_long, stressed_short)
        level: RiskLevel = ("high" if room == 0 or stressed >= room else "medium" if 2 * stressed >= room
                            else "low")
    return Risk(fund_id, level, room, stressed_long, stressed_short)


def risks(engine: Engine, views: dict[tuple[str, str], SideView]) -> dict[str, Risk]:
    """Every symbol's risk from the views of its two sides (every instrument: a symbol without positions has
    nothing stressed)."""
    capacities: dict[str, Decimal] = {}
    empty = SideView()
    return {symbol: risk(engine, symbol, views.get((symbol, "long"), empty), views.get((symbol, "short"), empty),
                         capacities)
            for symbol in sorted(engine.instruments)}


def views_now(engine: Engine) -> dict[tuple[str, str], SideView]:
    return {(symbol, side): side_view(engine, symbol, side) for symbol in sorted(engine.instruments)
            for side in SIDES}


def publish(engine: Engine, seq: int, ts: int) -> list[AdlQuantileRecord]:
    """The records of a quantile point at seq (the event at ts just applied): per symbol in order, its risk level
    if it changed, then per side the positions whose quantile changed, by account id."""
    views = views_now(engine)
    closes: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for (account_id, symbol, side), _ in sorted(engine.quantile_closes.items()):
        closes.setdefault((symbol, side), []).append((account_id, 0))
    engine.quantile_closes.clear()
    records: list[AdlQuantileRecord] = []

    def next_id() -> str:
        return f"aq-{seq}-{len(records)}"

    for symbol, found in risks(engine, views).items():
        if engine.risk_levels.get(symbol) != found.level:
            engine.risk_levels[symbol] = found.level
            with localcontext(CONTEXT):
                records.append(AdlRiskChange(SCHEMA_VERSION, next_id(), seq, ts, "risk", symbol, found.fund_id,
                                             found.level, money(found.capacity), money(found.stressed_long),
                                             money(found.stressed_short)))
        book = engine.by_symbol[symbol]
        for side in SIDES:
            changed = closes.get((symbol, side), [])
            for account_id, (_, quantile) in views[(symbol, side)].ranks.items():
                position = book[account_id]
                if position.adl_quantile != quantile:
                    position.adl_quantile = quantile
                    changed.append((account_id, quantile))
            for account_id, quantile in sorted(changed):
                records.append(AdlQuantileChange(SCHEMA_VERSION, next_id(), seq, ts, "quantile", account_id, symbol,
                                                 side, quantile or None))
    return records
