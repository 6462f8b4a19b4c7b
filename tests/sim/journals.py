"""Small journals drawn from a seed for the simulator: a fund, two instruments, deposits, then trading that
moves marks far enough to bankrupt accounts, liquidations sized against the state so far (with and without
executions), fund closes, funding, transfers, and identities sent again (identical or with other content).
Timestamps repeat on purpose: records of one ts on several topics are ordered by the merge's tie-break. Many records
are valid, some are rejected by the engine (that is tested too)."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import orjson

from backstop.core.engine import Engine
from backstop.core.processor import Processor
from backstop.wire.decode import decode_record

ACCOUNTS = ("a0", "a1", "a2", "a3", "a4", "a5")
SYMBOLS = {"BTCUSDT": (Decimal("0.1"), Decimal("0.001"), 50000), "ETHUSDT": (Decimal("0.01"), Decimal("0.01"), 3000)}
START_TS = 1_760_000_000_000


def _price(symbol: str, steps: int) -> str:
    tick, _, base = SYMBOLS[symbol]
    return str(max(Decimal(base) + steps * tick * 100, tick))


def _lots(symbol: str, total: Decimal, percent: int) -> Decimal:
    lot = SYMBOLS[symbol][1]
    return min(max((total * percent / 100 // lot) * lot, lot), total)


class _Writer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.ts = START_TS
        self.processor = Processor(Engine())
        self.records: list[dict[str, Any]] = []
        self.ids = 0

    def add(self, record: dict[str, Any]) -> None:
        self.ts += self.rng.choice((0, 0, 1, 1000, 60_000))
        record = {"ts": self.ts, **record}
        self.processor.process(decode_record(orjson.dumps(record)))  # the state later records are sized against
        self.records.append(record)

    def next_id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}{self.ids}"


def journal(rng: random.Random, events: int) -> list[dict[str, Any]]:
    w = _Writer(rng)
    w.add({"type": "fund", "fund_id": "MAIN", "settle_asset": "USDT", "surplus": rng.choice(["fund", "trader"]),
           "max_inventory_ratio": rng.choice(["0", "0.5", "1", "5"])})
    btc_tiers = [("50000", "0.004", "0"), ("250000", "0.005", "50"), ("1000000", "0.01", "1300")]
    for symbol, tiers in (("BTCUSDT", btc_tiers), ("ETHUSDT", [("10000000", "0.01", "0")])):
        tick, lot, _ = SYMBOLS[symbol]
        w.add({"type": "instrument", "symbol": symbol, "settle_asset": "USDT", "tick_size": str(tick),
               "lot_size": str(lot), "liquidation_fee_rate": "0.005", "fund_id": "MAIN",
               "tiers": [{"max_notional": n, "mmr": m, "maint_amount": a} for n, m, a in tiers]})
    w.add({"type": "transfer", "transfer_id": "seed", "account_id": "fund:MAIN", "asset": "USDT",
           "amount": str(rng.randint(1, 200_000))})
    for account in ACCOUNTS:
        w.add({"type": "transfer", "transfer_id": f"d-{account}", "account_id": account, "asset": "USDT",
               "amount": str(rng.randint(1000, 100_000))})
    for symbol in SYMBOLS:
        w.add({"type": "mark", "symbol": symbol, "mark_price": _price(symbol, 0)})
    moves = {symbol: 0 for symbol in SYMBOLS}
    modes = {(a, s): rng.choice(["cross", "isolated"]) for a in ACCOUNTS for s in SYMBOLS}  # mostly kept
    kinds = ("fill", "fill", "fill", "mark", "mark", "liquidation", "liquidation", "fund_close", "funding", "transfer",
             "again")
    for _ in range(events):
        kind = rng.choice(kinds)
        symbol = rng.choice(sorted(SYMBOLS))
        if kind == "fill":
            account = rng.choice(ACCOUNTS)
            mode = modes[(account, symbol)] if rng.random() < 0.95 else rng.choice(["cross", "isolated"])
            w.add({"type": "fill", "fill_id": w.next_id("f"), "account_id": account, "symbol": symbol,
                   "side": rng.choice(["buy", "sell"]), "qty": str(rng.randint(1, 3000) * SYMBOLS[symbol][1]),
                   "price": _price(symbol, moves[symbol] + rng.randint(-5, 5)), "fee": str(rng.randint(0, 5)),
                   "margin_mode": mode, "leverage": str(rng.randint(1, 50))})
        elif kind == "mark":
            moves[symbol] = max(-200, min(200, moves[symbol] + rng.randint(-60, 60)))
            w.add({"type": "mark", "symbol": symbol, "mark_price": _price(symbol, moves[symbol])})
        elif kind == "liquidation":
            holders = sorted(w.processor.engine.by_symbol.get(symbol, {}))
            if not holders:
                continue
            position = w.processor.engine.by_symbol[symbol][rng.choice(holders)]
            qty = _lots(symbol, position.size, rng.randint(1, 100))
            mark = _price(symbol, moves[symbol])
            executions = []
            if rng.random() < 0.5:
                part = _lots(symbol, qty, rng.randint(1, 100))
                executions.append({"qty": str(part), "price": _price(symbol, moves[symbol] - rng.randint(0, 3))})
            w.add({"type": "liquidation", "liquidation_id": w.next_id("l"), "account_id": position.account_id,
                   "symbol": symbol, "qty": str(qty), "mark_price": mark, "executions": executions})
        elif kind == "fund_close":
            fund = w.processor.engine.funds.get("MAIN")
            lots = fund.lots.get(symbol) if fund else None
            if not lots:
                continue
            side = lots[0].side
            held = sum((lot.qty for lot in lots if lot.side == side), Decimal(0))
            w.add({"type": "fill", "fill_id": w.next_id("fc"), "account_id": "fund:MAIN", "symbol": symbol,
                   "side": "sell" if side == "long" else "buy", "qty": str(_lots(symbol, held, rng.randint(1, 100))),
                   "price": _price(symbol, moves[symbol]), "fee": "0", "margin_mode": "cross", "leverage": "1"})
        elif kind == "again":  # an identity sent again (docs/design.md §4.1): identical, or with other content
            sent = [r for r in w.records if r["type"] in ("fill", "transfer", "liquidation")]
            if not sent:
                continue
            again = dict(rng.choice(sent))
            if rng.random() < 0.5:
                field = "amount" if again["type"] == "transfer" else "qty"
                again[field] = str(Decimal(again[field]) * 2)
            w.add(again)
        elif kind == "funding":
            w.add({"type": "funding", "symbol": symbol, "rate": str(Decimal(rng.randint(-30, 30)) / 10000),
                   "mark_price": _price(symbol, moves[symbol])})
        else:
            account = rng.choice([*ACCOUNTS, "fund:MAIN"])
            w.add({"type": "transfer", "transfer_id": w.next_id("t"), "account_id": account, "asset": "USDT",
                   "amount": str(rng.randint(-20_000, 50_000) or 1)})
    return w.records
