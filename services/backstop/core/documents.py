"""Read-only views of engine state for people and tools: the summary and the accounts document.

Every figure is computed in backstop.core.numbers.CONTEXT (exact) and rounded, where it is, by a rule of
docs/design.md §9.4: reported money half-even to 1e-8, prices as the rules compute them."""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Any

from backstop.core import adl_policy, ledger, quantiles
from backstop.core.engine import Engine, Exposures
from backstop.core.numbers import CONTEXT, ZERO, money, text
from backstop.core.processor import Processor
from backstop.core.records import SCHEMA_VERSION
from backstop.core.snapshot import state_hash
from backstop.core.state import Position

# Every key of a replay's summary.json: summary()'s, and the dead letters' count the replay adds (a replay from a
# snapshot adds `from_snapshot`, one from a store `carried`). `audit verify` refuses a summary without one of them.
SUMMARY_KEYS = frozenset({
    "schema_version", "events_applied", "duplicates", "rejected", "conflicting_duplicates", "last_seq", "head_hash",
    "ledger_head_hash", "adl_head_hash", "state_hash", "postings_head_hash", "fund_ledger_entries", "adl_events",
    "findings", "postings", "adl_quantiles", "adl_quantile_points", "ledger_sum", "funds", "adl_risk", "adl",
    "adl_policy", "dead_letters"})


def summary(processor: Processor) -> dict[str, Any]:
    engine = processor.engine
    return {
        "schema_version": SCHEMA_VERSION,
        "events_applied": processor.events_applied,
        "duplicates": processor.duplicates,
        "rejected": processor.rejected,
        "conflicting_duplicates": processor.conflicting_duplicates,
        "last_seq": engine.last_seq,
        "head_hash": engine.head_hash,
        "ledger_head_hash": engine.ledger_head,
        "adl_head_hash": engine.adl_head,
        "state_hash": state_hash(engine),
        "postings_head_hash": engine.postings_head,
        "fund_ledger_entries": processor.fund_entries,
        "adl_events": processor.adl_events,
        "findings": processor.findings,
        "postings": processor.postings,
        "adl_quantiles": processor.adl_quantiles,
        "adl_quantile_points": engine.adl_quantiles,
        "ledger_sum": text(ledger_sum(engine)),
        "funds": funds(engine),
        "adl_risk": adl_risk(engine, quantiles.views_now(engine)),
        "adl": processor.adl_totals.document(),
        "adl_policy": adl_policy.document(engine.adl_policy),  # what `audit verify` replays the journal under
    }


def adl_risk(engine: Engine, views: dict[tuple[str, str], quantiles.SideView]) -> dict[str, Any]:
    """Each symbol's ADL risk level as the engine sees it now (backstop.core.quantiles), with its figures."""
    with localcontext(CONTEXT):
        return {symbol: {"fund_id": found.fund_id, "risk_level": found.level, "capacity": text(money(found.capacity)),
                         "stressed_notional_long": text(money(found.stressed_long)),
                         "stressed_notional_short": text(money(found.stressed_short))}
                for symbol, found in quantiles.risks(engine, quantiles.stressed_of(views)).items()}


def ledger_sum(engine: Engine) -> Decimal:
    """The sum of every ledger balance, exact (in CONTEXT: a default decimal context rounds large balances): zero
    when the ledger balances."""
    with localcontext(CONTEXT):
        return sum(engine.ledger.balances.values(), ZERO)


def funds(engine: Engine) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with localcontext(CONTEXT):
        for fund_id in sorted(engine.funds):
            state = engine.funds[fund_id]
            balance = engine.ledger.balance(ledger.fund(fund_id))
            result[fund_id] = {
                "balance": text(balance),
                "settle_asset": state.spec.settle_asset,
                "surplus": state.spec.surplus,
                "max_inventory_ratio": text(state.spec.max_inventory_ratio),
                "bad_debt": text(ledger.bad_debt(balance)),
                "inventory_notional": text(money(engine.inventory_notional(state))),
                "inventory_upnl": text(money(engine.inventory_upnl(state))),
                "inventory": {symbol: text(state.net_qty(symbol)) for symbol in sorted(state.lots)},
            }
    return result


def accounts(engine: Engine) -> dict[str, Any]:
    """Every account with a wallet or an open position (keyed `<symbol>`, or `<symbol>:long` / `<symbol>:short` in
    hedge mode); a fund's inventory under fund:<fund_id>."""
    wallets: dict[str, dict[str, str]] = {}
    for name, balance in engine.ledger.balances.items():
        if (parts := ledger.wallet_parts(name)) is not None:
            account_id, asset = parts
            wallets.setdefault(account_id, {})[asset] = text(balance)
    result: dict[str, Any] = {}
    views = quantiles.views_now(engine)
    with localcontext(CONTEXT):  # once for the whole report: a context per position view cost more than some views
        for account_id in sorted(set(wallets) | set(engine.positions)):
            account_wallets = dict(sorted(wallets.get(account_id, {}).items()))
            memo: Exposures = {}
            positions = {p.label: _position(engine, p, memo, views[(p.symbol, p.side)].ranks[account_id])
                         for p in engine.positions.in_symbol_order(account_id)}
            primary = next(iter(account_wallets.values()), "0")
            result[account_id] = {"wallet": primary, "wallets": account_wallets, "positions": positions}
        for fund_id in sorted(engine.funds):
            state = engine.funds[fund_id]
            inventory: dict[str, Any] = {}
            for symbol in sorted(state.lots):
                net = state.net_qty(symbol)
                valuation = engine.instruments[symbol].valuation
                lots = [{"liquidation_id": lot.liquidation_id, "side": lot.side, "qty": text(lot.qty),
                         "bankruptcy_price": text(lot.bankruptcy_price(valuation)), "seq": lot.seq}
                        for lot in state.lots[symbol]]
                inventory[symbol] = {"qty": text(net), "mark_price": text(engine.marks[symbol]), "lots": lots}
            result[ledger.fund(fund_id)] = {
                "wallet": text(engine.ledger.balance(ledger.fund(fund_id))), "positions": inventory}
    return result


def _position(engine: Engine, position: Position, memo: Exposures, rank: tuple[int, int]) -> dict[str, Any]:
    """One position's view; in CONTEXT (the caller's), memo as in Engine.exposure; rank: its place in the ADL queue
    of its symbol and side now, and the quantile of that place."""
    mark = engine.marks[position.symbol]
    view = engine.margin_view(position, memo)
    unrealized, _ = engine.exposure(position, memo)
    liquidation = engine.liquidation_price(position, memo)
    isolated = engine.ledger.balance(ledger.isolated(position.account_id, position.symbol, position.position_side))
    return {
        "qty": text(position.qty),
        "entry_price": text(position.entry_price(engine.instruments[position.symbol].valuation)),
        "cost": text(position.cost),
        "margin_mode": position.margin_mode,
        "leverage": text(position.leverage),
        "isolated_margin": text(isolated),
        "mark_price": text(mark),
        "unrealized_pnl": text(money(unrealized)),
        "maintenance_margin": text(view.position_maintenance),
        "margin_balance": text(money(view.margin_balance)),
        "liquidation_price": text(liquidation) if liquidation is not None else "0",
        "bankruptcy_price": text(engine.bankruptcy_price(position, memo)),
        "adl_rank": rank[0],
        "adl_quantile": rank[1],
    }
