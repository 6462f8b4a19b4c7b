"""Engine state as a canonical document: the state hash, and snapshots that restore an engine exactly.

The document lists everything that decides a future outcome (balances, specs, positions, lots in FIFO
order, marks, hash heads, seq, the journal clock, what dedupe holds) in a canonical order; its SHA-256 is the
state hash. Held identities are in the document by their count and chain hash only: a snapshot carries them in a
file of their own (IdStore.write, 32 bytes each) or, in the service, PostgreSQL holds them.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

from backstop.core import adl_policy, ledger
from backstop.core.adl_drawdown import DrawdownState
from backstop.core.dedupe import HeldIds
from backstop.core.engine import Engine
from backstop.core.hashing import canonical_json
from backstop.core.numbers import ZERO, text
from backstop.core.ordering import SymbolClock, clock_of
from backstop.core.state import DEFAULT_MARK_TOLERANCE, FundSpec, FundState, Instrument, Lot, Position, Tier
from backstop.core.valuation import LINEAR, Valuation

SNAPSHOT_VERSION = 4  # 3: the journal clock and dedupe in the document; 4: postings head and ADL quantiles


def _d(value: str) -> Decimal:
    """A decimal of the state: a JSON string, as the state document writes it (the compiled engine reads nothing
    else, so neither does the reference)."""
    if not isinstance(value, str):
        raise ValueError(f"a decimal must be a JSON string, not {value!r}")
    return Decimal(value)


def _int(value: object) -> int:
    """A count or seq of the state: a JSON integer (not a string, a float or a boolean)."""
    if type(value) is not int:
        raise ValueError(f"an integer must be a JSON integer, not {value!r}")
    return value


def state_document(engine: Engine) -> dict[str, Any]:
    document = _state_document(engine)
    if engine.adl_policy.drawdown is not None:  # only under Bybit's trigger: every other state hash stays as it was
        document["adl_drawdown"] = engine.drawdown.document()
    return document


def _state_document(engine: Engine) -> dict[str, Any]:
    return {
        "snapshot_version": SNAPSHOT_VERSION,
        "seq": engine.last_seq,
        "adl_policy": adl_policy.document(engine.adl_policy),
        "ledger_head": engine.ledger_head,
        "adl_head": engine.adl_head,
        "postings_head": engine.postings_head,
        "balances": {k: text(v) for k, v in sorted(engine.ledger.balances.items()) if v != 0},
        "funds": [{
            "fund_id": f.spec.fund_id, "settle_asset": f.spec.settle_asset, "surplus": f.spec.surplus,
            "max_inventory_ratio": text(f.spec.max_inventory_ratio), "symbols": list(f.symbols),
            "lots": [{"liquidation_id": lot.liquidation_id, "symbol": lot.symbol, "side": lot.side,
                      "qty": text(lot.qty), "cost": text(lot.cost), "liquidated_account": lot.liquidated_account,
                      "seq": lot.seq}
                     for symbol in sorted(f.lots) for lot in f.lots[symbol]],
        } for f in sorted(engine.funds.values(), key=lambda f: f.spec.fund_id)],
        "instruments": [_instrument_document(i) for _, i in sorted(engine.instruments.items())],
        "marks": {symbol: text(mark) for symbol, mark in sorted(engine.marks.items())},
        "clock": engine.clock.document(),
        "newest_ts": engine.newest_ts,
        "dedupe": engine.dedupe.document(),
        "mark_clock": engine.mark_clock.document(),
        "funding_clock": engine.funding_clock.document(),
        "positions": [_position_document(p) for account in sorted(engine.positions)
                      for p in engine.positions.in_symbol_order(account)],
        "quantile_closes": [[account, symbol, side, quantile]
                            for (account, symbol, side), quantile in sorted(engine.quantile_closes.items())],
        "risk_levels": dict(sorted(engine.risk_levels.items())),
    }


def _instrument_document(i: Instrument) -> dict[str, Any]:
    """An instrument's specs; a version-2 field is written only when it is not its default, so that a version-1
    journal keeps its state hash."""
    document: dict[str, Any] = {
        "symbol": i.symbol, "settle_asset": i.settle_asset, "tick_size": text(i.tick_size),
        "lot_size": text(i.lot_size), "liquidation_fee_rate": text(i.liquidation_fee_rate), "fund_id": i.fund_id,
        "tiers": [{"max_notional": text(t.max_notional), "mmr": text(t.mmr), "maint_amount": text(t.maint_amount)}
                  for t in i.tiers]}
    if i.mark_tolerance != DEFAULT_MARK_TOLERANCE:
        document["mark_tolerance"] = text(i.mark_tolerance)
    if i.valuation.contract_size is not None:  # inverse only: a linear instrument keeps its state hash
        document["contract_type"] = "inverse"
        document["contract_size"] = text(i.valuation.contract_size)
    return document


def _position_document(p: Position) -> dict[str, Any]:
    document: dict[str, Any] = {"account_id": p.account_id, "symbol": p.symbol, "qty": text(p.qty),
                                "cost": text(p.cost), "margin_mode": p.margin_mode, "leverage": text(p.leverage),
                                "adl_quantile": p.adl_quantile}
    if p.position_side != "both":  # a version-1 journal keeps its state hash
        document["position_side"] = p.position_side
    return document


def state_hash(engine: Engine) -> str:
    return hashlib.sha256(canonical_json(state_document(engine))).hexdigest()


def wallets_at_zero(engine: Engine) -> list[list[str]]:
    """[account, asset] of every wallet the ledger holds at zero, sorted. Not state (a wallet at zero decides nothing,
    so the state document leaves it out), but accounts.json lists it: a snapshot file carries these beside the state
    so that a replay resumed from it lists the same wallets as the whole replay."""
    return sorted([*parts] for name, balance in engine.ledger.balances.items()
                  if balance == 0 and (parts := ledger.wallet_parts(name)) is not None)


def hold_wallets_at_zero(engine: Engine, wallets: list[list[str]]) -> None:
    """The wallets of a snapshot's `wallets_at_zero` held again at zero (read_snapshot checked that none holds a
    balance in the state)."""
    for account_id, asset in wallets:
        engine.ledger.balances.setdefault(ledger.wallet(account_id, asset), ZERO)


def sealed(document: dict[str, Any]) -> dict[str, Any]:
    """The document with `snapshot_hash`, the SHA-256 of everything else in it: a snapshot file's counters and
    position in the input are covered as much as the engine state (whose own state hash covers only the state)."""
    body = {k: v for k, v in document.items() if k != "snapshot_hash"}
    return {**body, "snapshot_hash": hashlib.sha256(canonical_json(body)).hexdigest()}


def seal_holds(document: dict[str, Any]) -> bool:
    return "snapshot_hash" in document and sealed(document)["snapshot_hash"] == document["snapshot_hash"]


def restore(document: dict[str, Any], *, check_conservation: bool = False, ids: HeldIds | None = None,
            adl_quantiles: bool = False, full_adl_metrics: bool = False) -> Engine:
    """The engine of a state document; `ids`: the identities held up to its seq (default: none)."""
    if document.get("snapshot_version") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported snapshot version {document.get('snapshot_version')!r}")
    engine = Engine(check_conservation=check_conservation, adl_quantiles=adl_quantiles,
                    adl_policy=adl_policy.from_document(document.get("adl_policy", {})), ids=ids,
                    full_adl_metrics=full_adl_metrics)
    if engine.adl_policy.drawdown is not None:
        engine.drawdown = DrawdownState.restored(document["adl_drawdown"])
    engine.last_seq = _int(document["seq"])
    engine.ledger_head = document["ledger_head"]
    engine.adl_head = document["adl_head"]
    engine.postings_head = document["postings_head"]
    engine.ledger.balances = {k: _d(v) for k, v in document["balances"].items()}
    for f in document["funds"]:
        spec = FundSpec(f["fund_id"], f["settle_asset"], f["surplus"], _d(f["max_inventory_ratio"]))
        state = FundState(spec, list(f["symbols"]))
        for lot in f["lots"]:
            state.add_lot(Lot(
                lot["liquidation_id"], lot["symbol"], lot["side"], _d(lot["qty"]), _d(lot["cost"]),
                lot["liquidated_account"], _int(lot["seq"])))
        engine.funds[spec.fund_id] = state
    for i in document["instruments"]:
        tiers = tuple(Tier(_d(t["max_notional"]), _d(t["mmr"]), _d(t["maint_amount"])) for t in i["tiers"])
        engine.instruments[i["symbol"]] = Instrument(
            i["symbol"], i["settle_asset"], _d(i["tick_size"]), _d(i["lot_size"]), tiers,
            _d(i["liquidation_fee_rate"]), i["fund_id"], _d(i.get("mark_tolerance", str(DEFAULT_MARK_TOLERANCE))),
            Valuation(_d(i["contract_size"])) if i.get("contract_type") == "inverse" else LINEAR)
        engine.by_symbol[i["symbol"]] = {}
    engine.marks = {symbol: _d(mark) for symbol, mark in document["marks"].items()}
    engine.clock = clock_of(document["clock"])
    engine.newest_ts = None if document["newest_ts"] is None else _int(document["newest_ts"])
    engine.dedupe.restore(document["dedupe"])
    engine.mark_clock = SymbolClock.of(document["mark_clock"])
    engine.funding_clock = SymbolClock.of(document["funding_clock"])
    for p in document["positions"]:
        position = Position(p["account_id"], p["symbol"], _d(p["qty"]), _d(p["cost"]), p["margin_mode"],
                            _d(p["leverage"]), p.get("position_side", "both"), _int(p["adl_quantile"]))
        engine.positions.add(position)
        engine.by_symbol[position.symbol][position.key] = position
        engine.adl_index.touch(position.account_id)
    engine.quantile_closes = {(account, symbol, side): _int(quantile)
                              for account, symbol, side, quantile in document["quantile_closes"]}
    engine.risk_levels = dict(document["risk_levels"])
    return engine
