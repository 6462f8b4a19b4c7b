"""Builders for input records in tests: readable scenarios without JSON noise."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from backstop.core.engine import Engine
from backstop.core.processor import Outcome, Processor
from backstop.wire.decode import decode_record

_clock = itertools.count(1_760_000_000_000)


def _ts(ts: int | None) -> int:
    return next(_clock) if ts is None else ts


def fund(fund_id: str = "MAIN", *, asset: str = "USDT", surplus: str = "fund", ratio: str = "1",
         ts: int | None = None) -> dict[str, Any]:
    return {"type": "fund", "ts": _ts(ts), "fund_id": fund_id, "settle_asset": asset, "surplus": surplus,
            "max_inventory_ratio": ratio}


def instrument(symbol: str = "BTCUSDT", *, fund_id: str = "MAIN", asset: str = "USDT",
               tiers: Sequence[tuple[str, str, str | None]] = (("1000000000", "0.01", "0"),), tick: str = "0.01",
               lot: str = "0.001", fee_rate: str = "0.005", ts: int | None = None,
               **version_2: str) -> dict[str, Any]:
    """A tier's maint_amount None is left out (derived); version-2 fields (mark_tolerance, contract_type,
    contract_size) are added as given."""
    return {"type": "instrument", "ts": _ts(ts), "symbol": symbol, "settle_asset": asset, "tick_size": tick,
            "lot_size": lot, "tiers": [{"max_notional": n, "mmr": m} | ({} if a is None else {"maint_amount": a})
                                       for n, m, a in tiers],
            "liquidation_fee_rate": fee_rate, "fund_id": fund_id, **version_2}


def transfer(transfer_id: str, account_id: str, amount: str, *, asset: str = "USDT",
             ts: int | None = None) -> dict[str, Any]:
    return {"type": "transfer", "ts": _ts(ts), "transfer_id": transfer_id, "account_id": account_id,
            "asset": asset, "amount": amount}


def fill(fill_id: str, account_id: str, side: str, qty: str, price: str, *, symbol: str = "BTCUSDT",
         mode: str = "cross", leverage: str = "10", fee: str = "0", ts: int | None = None,
         position_side: str | None = None) -> dict[str, Any]:
    """position_side None leaves the field out (one-way mode, as in version 1)."""
    record = {"type": "fill", "ts": _ts(ts), "fill_id": fill_id, "account_id": account_id, "symbol": symbol,
              "side": side, "qty": qty, "price": price, "fee": fee, "margin_mode": mode, "leverage": leverage}
    return record if position_side is None else {**record, "position_side": position_side}


def mark(price: str, *, symbol: str = "BTCUSDT", ts: int | None = None) -> dict[str, Any]:
    return {"type": "mark", "ts": _ts(ts), "symbol": symbol, "mark_price": price}


def funding(rate: str, mark_price: str, *, symbol: str = "BTCUSDT", ts: int | None = None) -> dict[str, Any]:
    return {"type": "funding", "ts": _ts(ts), "symbol": symbol, "rate": rate, "mark_price": mark_price}


def liquidation(liquidation_id: str, account_id: str, qty: str, mark_price: str, *, symbol: str = "BTCUSDT",
                executions: Iterable[tuple[str, str]] = (), bankruptcy_price: str | None = None,
                ts: int | None = None, position_side: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "liquidation", "ts": _ts(ts), "liquidation_id": liquidation_id, "account_id": account_id,
        "symbol": symbol, "qty": qty, "mark_price": mark_price,
        "executions": [{"qty": q, "price": p} for q, p in executions]}
    if bankruptcy_price is not None:
        record["bankruptcy_price"] = bankruptcy_price
    if position_side is not None:
        record["position_side"] = position_side
    return record


def run(records: Iterable[dict[str, Any]], *, processor: Processor | None = None) -> tuple[Processor,
                                                                                          list[Outcome]]:
    """Feed records through a conservation-checking processor, as `backstop replay` would."""
    processor = processor or Processor(Engine(check_conservation=True))
    outcomes = [processor.process(decode_record(orjson.dumps(r))) for r in records]
    return processor, outcomes
