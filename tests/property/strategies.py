"""Hypothesis strategies: random but well-formed event streams over a small world (2 symbols, 6 accounts).

Streams are meant to hit every rule: opens and closes in both margin modes, one-way and hedge mode (two accounts
hold long and short sides), marks moving far enough to bankrupt accounts, liquidations with and without executions,
fund fills, funding and transfers. Many records are rejected (a liquidation of a position that is not there); that
is part of what is tested.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from hypothesis import strategies as st

from backstop.core.engine import Engine
from backstop.core.ordering import MAX_LATENESS_MS
from backstop.core.processor import Processor
from backstop.wire.decode import decode_record
from scenario import fill, fund, funding, instrument, liquidation, mark, transfer

ACCOUNTS = ("a0", "a1", "a2", "a3", "a4", "a5")
SYMBOLS = {"BTCUSDT": (Decimal("0.1"), Decimal("0.001"), 50000), "ETHUSDT": (Decimal("0.01"), Decimal("0.01"), 3000)}


def _price(symbol: str, ticks: int) -> str:
    tick, _, base = SYMBOLS[symbol]
    return str(max(Decimal(base) + ticks * tick * 100, tick))


def _qty(symbol: str, lots: int) -> str:
    return str(lots * SYMBOLS[symbol][1])


symbols = st.sampled_from(sorted(SYMBOLS))
accounts = st.sampled_from(ACCOUNTS)
moves = st.integers(min_value=-250, max_value=250)  # in 100-tick steps: +-50% for BTC
lots = st.integers(min_value=1, max_value=3000)


HEDGED = ("a4", "a5")  # accounts in hedge mode (docs/design.md §7); a few of their fills, and of others', mix modes


@st.composite
def fills(draw: st.DrawFn) -> dict[str, Any]:
    symbol = draw(symbols)
    account = draw(accounts)
    sides = ["long", "short"] if account in HEDGED else [None]
    position_side = draw(st.sampled_from(sides) if draw(st.integers(0, 9)) else st.sampled_from(
        [None, "both", "long", "short"]))
    return fill(f"f{draw(st.integers(0, 10**9))}", account, draw(st.sampled_from(["buy", "sell"])),
                _qty(symbol, draw(lots)), _price(symbol, draw(moves)), symbol=symbol,
                mode=draw(st.sampled_from(["cross", "isolated"])), leverage=str(draw(st.integers(1, 50))),
                fee=str(draw(st.integers(0, 500)) / Decimal(100)), position_side=position_side)


@st.composite
def fund_fills(draw: st.DrawFn) -> dict[str, Any]:
    symbol = draw(symbols)
    return fill(f"ff{draw(st.integers(0, 10**9))}", "fund:MAIN", draw(st.sampled_from(["buy", "sell"])),
                _qty(symbol, draw(lots)), _price(symbol, draw(moves)), symbol=symbol)


@st.composite
def marks(draw: st.DrawFn) -> dict[str, Any]:
    """A mark; most are stamped when the journal is built, after the records before them (one drawn earlier would
    be older than a liquidation's mark materialized since, and rejected as stale)."""
    symbol = draw(symbols)
    record = mark(_price(symbol, draw(moves)), symbol=symbol)
    return {**record, "fresh": True} if draw(st.integers(0, 3)) else record


@st.composite
def fundings(draw: st.DrawFn) -> dict[str, Any]:
    symbol = draw(symbols)
    return funding(str(Decimal(draw(st.integers(-30, 30))) / 10000), _price(symbol, draw(moves)), symbol=symbol)


@st.composite
def liquidations(draw: st.DrawFn) -> dict[str, Any]:
    """A liquidation intent: the qty and account are resolved against the state when the journal is built."""
    symbol = draw(symbols)
    executions = draw(st.lists(st.tuples(st.integers(1, 100), moves), max_size=2))
    return {"intent": "liquidation", "symbol": symbol, "account": draw(st.integers(0, len(ACCOUNTS) - 1)),
            "percent": draw(st.integers(1, 100)), "mark": _price(symbol, draw(moves)),
            "id": draw(st.integers(0, 10**9)),
            "executions": [(pct, _price(symbol, m)) for pct, m in executions]}


@st.composite
def fund_closes(draw: st.DrawFn) -> dict[str, Any]:
    symbol = draw(symbols)
    return {"intent": "fund_close", "symbol": symbol, "percent": draw(st.integers(1, 100)),
            "price": _price(symbol, draw(moves)), "id": draw(st.integers(0, 10**9))}


@st.composite
def transfers(draw: st.DrawFn) -> dict[str, Any]:
    account = draw(st.sampled_from([*ACCOUNTS, "fund:MAIN"]))
    return transfer(f"t{draw(st.integers(0, 10**9))}", account, str(draw(st.integers(-20000, 50000)) or 1))


@st.composite
def journals(draw: st.DrawFn, max_events: int = 60) -> list[dict[str, Any]]:
    """A fund, two instruments, deposits, then a random stream."""
    stated = draw(st.booleans())  # maint_amount stated, or derived from the brackets (docs/design.md §7)
    tolerance = draw(st.sampled_from([{}, {"mark_tolerance": "0"}, {"mark_tolerance": "0.1"}]))
    setup = [
        fund(surplus=draw(st.sampled_from(["fund", "trader"])), ratio=draw(st.sampled_from(["0", "0.5", "1", "5"]))),
        instrument("BTCUSDT", tick="0.1", lot="0.001",
                   tiers=tuple((n, m, a if stated else None) for n, m, a in (
                       ("50000", "0.004", "0"), ("250000", "0.005", "50"), ("1000000", "0.01", "1300")))),
        instrument("ETHUSDT", tick="0.01", lot="0.01", tiers=(("10000000", "0.01", "0"),), **tolerance),
        # brackets whose stated amount is not the one they imply: rejected alike
        instrument("XUSDT", tick="0.01", lot="0.01", tiers=(("1000", "0.01", "0"), ("2000", "0.02", "9"))),
        transfer("seed", "fund:MAIN", str(draw(st.integers(0, 200000)) or 1)),
        *[transfer(f"d-{a}", a, str(draw(st.integers(1000, 100000)))) for a in ACCOUNTS],
    ]
    opening = draw(st.lists(fills(), min_size=min(4, max_events), max_size=max(min(12, max_events), 0)))
    stream = draw(st.lists(st.one_of(fills(), fills(), marks(), marks(), liquidations(), liquidations(), fund_closes(),
                                     fund_fills(), fundings(), transfers()), max_size=max_events))
    return materialize(setup + opening + stream)


def _lots_of(total: Decimal, percent: int, lot: Decimal) -> Decimal:
    return max((total * percent / 100 // lot) * lot, lot)


def materialize(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn intents into concrete records, sized against the state the records before them produce.

    A liquidation intent picks the first account (from its index on) that holds the symbol, and a part of that
    position; a fund-close intent sells or buys back part of the fund's inventory. The result is a plain journal.
    """
    processor = Processor(Engine())
    journal: list[dict[str, Any]] = []
    newest = 0
    for item in items:
        engine = processor.engine
        record: dict[str, Any] | None = item
        if item.get("fresh"):
            record = {key: value for key, value in item.items() if key != "fresh"} | {"ts": newest + 1}
        if item.get("intent") == "liquidation":
            symbol, lot = item["symbol"], SYMBOLS[item["symbol"]][1]
            holders = sorted(engine.by_symbol.get(symbol, {}))
            if not holders:
                continue
            position = engine.by_symbol[symbol][holders[item["account"] % len(holders)]]
            qty = min(_lots_of(position.size, item["percent"], lot), position.size)
            left, executions = qty, []
            for pct, price in item["executions"]:
                part = min(_lots_of(qty, pct, lot), left)
                if part > 0:
                    executions.append((str(part), price))
                    left -= part
            side = None if position.position_side == "both" else position.position_side
            record = liquidation(f"l{item['id']}", position.account_id, str(qty), item["mark"], symbol=symbol,
                                 executions=executions, position_side=side)
        elif item.get("intent") == "fund_close":
            symbol, lot = item["symbol"], SYMBOLS[item["symbol"]][1]
            lots = engine.funds["MAIN"].lots.get(symbol) if "MAIN" in engine.funds else None
            if not lots:
                continue
            side = lots[0].side
            held = sum((x.qty for x in lots if x.side == side), Decimal(0))
            qty = min(_lots_of(held, item["percent"], lot), held)
            record = fill(f"fc{item['id']}", "fund:MAIN", "sell" if side == "long" else "buy", str(qty),
                          item["price"], symbol=symbol)
        assert record is not None
        processor.process(decode_record(orjson.dumps(record)))
        journal.append(record)
        newest = max(newest, record["ts"])
    return journal


# ---------------------------------------------------------------- event time (docs/design.md §4.1)
T0 = 1_800_000_000_000
HOUR = 3_600_000


@st.composite
def timed(draw: st.DrawFn, journal: list[dict[str, Any]], *, jitter: bool) -> list[dict[str, Any]]:
    """The journal re-timed: steps of up to 2 s, now and then an hour or up to eleven hours of quiet; with `jitter`,
    some records up to twice the lateness window behind (some of them late)."""
    now, result = T0, []
    for record in journal:
        gap = draw(st.integers(0, 30))
        now += HOUR if gap == 0 else draw(st.integers(HOUR, 11 * HOUR)) if gap == 1 else draw(st.integers(0, 2000))
        behind = draw(st.integers(0, 2 * MAX_LATENESS_MS)) if jitter and draw(st.integers(0, 4)) == 0 else 0
        result.append({**record, "ts": now - behind})
    return result


def outlier(kind: str, number: int, ts: int, symbol: str) -> dict[str, Any]:
    """A valid record of `kind` but for its ts, with an identity of its own."""
    price = str(SYMBOLS[symbol][2])
    if kind == "fill":
        return fill(f"outlier-{number}", "a0", "buy", str(SYMBOLS[symbol][1]), price, symbol=symbol, ts=ts)
    if kind == "transfer":
        return transfer(f"outlier-{number}", "a1", "10", ts=ts)
    if kind == "mark":
        return mark(price, symbol=symbol, ts=ts)
    if kind == "funding":
        return funding("0.0001", price, symbol=symbol, ts=ts)
    return liquidation(f"outlier-{number}", "a2", str(SYMBOLS[symbol][1]), price, symbol=symbol, ts=ts)


outlier_kinds = st.sampled_from(["fill", "transfer", "mark", "funding", "liquidation"])
