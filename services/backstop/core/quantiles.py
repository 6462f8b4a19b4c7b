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


def is_stressed(ranked: adl.Ranked, mark: Decimal, *, inverse: bool) -> bool:
    """Effective leverage STRESS_LEVERAGE or more, or past its own (rounded) bankruptcy price: within
    1/STRESS_LEVERAGE of the mark (an inverse contract: of its BP, its leverage being BP / distance)."""
    bankruptcy = ranked.bankruptcy_price
    distance = mark - bankruptcy if ranked.position.qty > 0 else bankruptcy - mark
    return distance * STRESS_LEVERAGE <= (bankruptcy if inverse else mark)


def side_view(engine: Engine, symbol: str, side: Literal["long", "short"]) -> SideView:
    """Every position of the side ranked exactly (Engine.adl_queue)."""
    view = SideView()
    mark = engine.marks.get(symbol)
    if mark is None:
        return view
    queue = engine.adl_queue(symbol, side)
    count = len(queue)
    stressed = ZERO
    inverse = engine.instruments[symbol].valuation.inverse
    with localcontext(CONTEXT):
        for rank, ranked in enumerate(queue, start=1):
            view.ranks[ranked.position.account_id] = (rank, adl.quantile(rank, count))
            if is_stressed(ranked, mark, inverse=inverse):
                stressed += ranked.position.size
    view.stressed_size = stressed
    return view


def capacity(engine: Engine, fund_id: str) -> Decimal:
    """What the fund can still take over before the takeover rule deleverages (docs/design.md §4, with the ADL
    policy's floor of §11), at least 0."""
    fund_state = engine.funds[fund_id]
    with localcontext(CONTEXT):
        balance = engine.ledger.balance(ledger.fund(fund_id)) - engine.adl_policy.floor  # the room above the floor
        if balance <= 0:
            return ZERO
        room = fund_state.spec.max_inventory_ratio * balance - engine.inventory_notional(fund_state)
        return max(room, ZERO)


def risks(engine: Engine, stressed_sizes: dict[tuple[str, str], Decimal]) -> dict[str, Risk]:
    """Every symbol's risk (every instrument, in order) from the stressed size of each of its sides (none: 0)."""
    capacities: dict[str, Decimal] = {}
    found: dict[str, Risk] = {}
    with localcontext(CONTEXT):
        for symbol in sorted(engine.instruments):
            fund_id = engine.instruments[symbol].fund_id
            room = capacities.get(fund_id)
            if room is None:
                room = capacities[fund_id] = capacity(engine, fund_id)
            mark = engine.marks.get(symbol)
            valuation = engine.instruments[symbol].valuation
            stressed_long = stressed_short = ZERO
            if mark is not None:  # V(stressed size, mark): one rounding per side for an inverse contract
                stressed_long = valuation.value(stressed_sizes.get((symbol, "long"), ZERO), mark)
                stressed_short = valuation.value(stressed_sizes.get((symbol, "short"), ZERO), mark)
            stressed = max(stressed_long, stressed_short)
            level: RiskLevel = ("high" if room == 0 or stressed >= room else "medium" if 2 * stressed >= room
                                else "low")
            found[symbol] = Risk(fund_id, level, room, stressed_long, stressed_short)
    return found


def views_now(engine: Engine) -> dict[tuple[str, str], SideView]:
    return {(symbol, side): side_view(engine, symbol, side) for symbol in sorted(engine.instruments)
            for side in SIDES}


def stressed_of(views: dict[tuple[str, str], SideView]) -> dict[tuple[str, str], Decimal]:
    return {key: view.stressed_size for key, view in views.items()}


Changes = dict[tuple[str, str], list[tuple[str, int]]]  # (symbol, side) -> (account, quantile) that changed


def _changes_exact(engine: Engine) -> tuple[Changes, dict[tuple[str, str], Decimal]]:
    """Every position ranked exactly (any ADL policy)."""
    views = views_now(engine)
    changes: Changes = {}
    for symbol in sorted(engine.instruments):
        for side in SIDES:
            changes[(symbol, side)] = [
                (account_id, quantile) for account_id, (_, quantile) in views[(symbol, side)].ranks.items()
                if engine.position_of(account_id, symbol, side).adl_quantile != quantile]
    return changes, stressed_of(views)


def _changes_indexed(engine: Engine) -> tuple[Changes, dict[tuple[str, str], Decimal]]:
    """The same, from the ADL index's float rows (BitMEX rule): exact work only where floats cannot decide."""
    from backstop.core.quantile_index import side_quantiles

    engine.refresh_adl_index()
    changes: Changes = {}
    stressed: dict[tuple[str, str], Decimal] = {}
    for symbol in sorted(engine.instruments):
        mark = engine.marks.get(symbol)
        for side in SIDES:
            rows = engine.adl_index.book(symbol, side)
            if mark is None or rows is None:
                continue
            if engine.instruments[symbol].valuation.inverse:  # the index's float rows score linear contracts only
                view = side_view(engine, symbol, side)
                changes[(symbol, side)] = [
                    (account_id, quantile) for account_id, (_, quantile) in view.ranks.items()
                    if engine.position_of(account_id, symbol, side).adl_quantile != quantile]
                stressed[(symbol, side)] = view.stressed_size
                continue

            def ranked(account_id: str) -> adl.Ranked:
                return engine.ranked(engine.position_of(account_id, symbol, side))  # noqa: B023 (this side only)

            def published(account_id: str) -> int:
                return engine.position_of(account_id, symbol, side).adl_quantile  # noqa: B023
            changes[(symbol, side)], stressed[(symbol, side)] = side_quantiles(rows, mark, side, ranked, published)
    return changes, stressed


def publish(engine: Engine, seq: int, ts: int) -> list[AdlQuantileRecord]:
    """The records of a quantile point at seq (the event at ts just applied): per symbol in order, its risk level
    if it changed, then per side the positions whose quantile changed, by account id."""
    with localcontext(CONTEXT):
        changes, stressed = (_changes_indexed(engine) if engine.adl_policy.rule == "bitmex"
                             else _changes_exact(engine))
    closes: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for account_id, symbol, side in sorted(engine.quantile_closes):
        closes.setdefault((symbol, side), []).append((account_id, 0))
    engine.quantile_closes.clear()
    records: list[AdlQuantileRecord] = []

    def next_id() -> str:
        return f"aq-{seq}-{len(records)}"

    for symbol, found in risks(engine, stressed).items():
        if engine.risk_levels.get(symbol) != found.level:
            engine.risk_levels[symbol] = found.level
            with localcontext(CONTEXT):
                records.append(AdlRiskChange(SCHEMA_VERSION, next_id(), seq, ts, "risk", symbol, found.fund_id,
                                             found.level, money(found.capacity), money(found.stressed_long),
                                             money(found.stressed_short)))
        for side in SIDES:
            changed = closes.get((symbol, side), [])
            for account_id, quantile in changes.get((symbol, side), ()):
                engine.position_of(account_id, symbol, side).adl_quantile = quantile
                changed.append((account_id, quantile))
            for account_id, quantile in sorted(changed):
                records.append(AdlQuantileChange(SCHEMA_VERSION, next_id(), seq, ts, "quantile", account_id, symbol,
                                                 side, quantile or None))
    return records
