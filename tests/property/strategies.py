"""Hypothesis strategies: random but well-formed event streams over a small world (2 symbols, 6 accounts).

Streams are meant to hit every rule: opens and closes in both margin modes, one-way and hedge mode (two accounts
hold long and short sides), marks moving far enough to bankrupt accounts, liquidations with and without executions,
fund fills, funding and transfers. Many records are rejected (a liquidation of a position that is not there); that
is part of what is tested. `inverse_journals` does the same over inverse (coin-margined) contracts backed by a coin
fund, beside a linear one (docs/design.md §7).
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


# Inverse contracts settled in BTC by the fund COIN: (tick, lot, base price) and the contract size (docs/design.md §7)
INVERSE_SYMBOLS = {"BTCUSD": (Decimal("0.5"), Decimal("1"), 50000), "XBTUSD": (Decimal("0.5"), Decimal("100"), 40000)}
CONTRACT_SIZES = {"BTCUSD": "100", "XBTUSD": "1"}
_WORLD = {**SYMBOLS, **INVERSE_SYMBOLS}


def _price(symbol: str, ticks: int) -> str:
    tick, _, base = _WORLD[symbol]
    return str(max(Decimal(base) + ticks * tick * 100, tick))


def _qty(symbol: str, lots: int) -> str:
    return str(lots * _WORLD[symbol][1])


symbols = st.sampled_from(sorted(SYMBOLS))
# the inverse world: mostly its coin-margined symbols, and the linear one beside them
inverse_symbols = st.sampled_from(["BTCUSD", "BTCUSD", "XBTUSD", "XBTUSD", "BTCUSDT"])
accounts = st.sampled_from(ACCOUNTS)
moves = st.integers(min_value=-250, max_value=250)  # in 100-tick steps: +-50% for BTC
lots = st.integers(min_value=1, max_value=3000)


HEDGED = ("a4", "a5")  # accounts in hedge mode (docs/design.md §7); a few of their fills, and of others', mix modes


@st.composite
def fills(draw: st.DrawFn, symbols: st.SearchStrategy[str] = symbols) -> dict[str, Any]:
    symbol = draw(symbols)
    account = draw(accounts)
    sides = ["long", "short"] if account in HEDGED else [None]
    position_side = draw(st.sampled_from(sides) if draw(st.integers(0, 9)) else st.sampled_from(
        [None, "both", "long", "short"]))
    return fill(f"f{draw(st.integers(0, 10**9))}", account, draw(st.sampled_from(["buy", "sell"])),
                _qty(symbol, draw(lots)), _price(symbol, draw(moves)), symbol=symbol,
                mode=draw(st.sampled_from(["cross", "isolated"])), leverage=str(draw(st.integers(1, 50))),
                fee=str(draw(st.integers(0, 500)) / Decimal(10**6 if symbol in INVERSE_SYMBOLS else 100)),
                position_side=position_side)


def _fund_of(symbol: str) -> str:
    return "COIN" if symbol in INVERSE_SYMBOLS else "MAIN"


@st.composite
def fund_fills(draw: st.DrawFn, symbols: st.SearchStrategy[str] = symbols) -> dict[str, Any]:
    symbol = draw(symbols)
    return fill(f"ff{draw(st.integers(0, 10**9))}", f"fund:{_fund_of(symbol)}", draw(st.sampled_from(["buy", "sell"])),
                _qty(symbol, draw(lots)), _price(symbol, draw(moves)), symbol=symbol)


@st.composite
def marks(draw: st.DrawFn, symbols: st.SearchStrategy[str] = symbols) -> dict[str, Any]:
    """A mark; most are stamped when the journal is built, after the records before them (one drawn earlier would
    be older than a liquidation's mark materialized since, and rejected as stale)."""
    symbol = draw(symbols)
    record = mark(_price(symbol, draw(moves)), symbol=symbol)
    return {**record, "fresh": True} if draw(st.integers(0, 3)) else record


@st.composite
def fundings(draw: st.DrawFn, symbols: st.SearchStrategy[str] = symbols) -> dict[str, Any]:
    symbol = draw(symbols)
    return funding(str(Decimal(draw(st.integers(-30, 30))) / 10000), _price(symbol, draw(moves)), symbol=symbol)


@st.composite
def liquidations(draw: st.DrawFn, symbols: st.SearchStrategy[str] = symbols) -> dict[str, Any]:
    """A liquidation intent: the qty and account are resolved against the state when the journal is built."""
    symbol = draw(symbols)
    executions = draw(st.lists(st.tuples(st.integers(1, 100), moves), max_size=2))
    return {"intent": "liquidation", "symbol": symbol, "account": draw(st.integers(0, len(ACCOUNTS) - 1)),
            "percent": draw(st.integers(1, 100)), "mark": _price(symbol, draw(moves)),
            "id": draw(st.integers(0, 10**9)),
            "executions": [(pct, _price(symbol, m)) for pct, m in executions]}


@st.composite
def fund_closes(draw: st.DrawFn, symbols: st.SearchStrategy[str] = symbols) -> dict[str, Any]:
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


@st.composite
def coin_transfers(draw: st.DrawFn) -> dict[str, Any]:
    """Deposits and withdrawals of BTC (the inverse world's coin), to accounts and the coin fund."""
    account = draw(st.sampled_from([*ACCOUNTS, "fund:COIN"]))
    amount = Decimal(draw(st.integers(-20000, 50000)) or 1) / 10000
    return transfer(f"tc{draw(st.integers(0, 10**9))}", account, str(amount), asset="BTC")


FACE_SYMBOL = "FACEUSD"  # contract size 10^9: 10^5 contracts reach MAX_FACE (docs/design.md §9.3)


@st.composite
def face_fills(draw: st.DrawFn) -> dict[str, Any]:
    """Fills at MAX_FACE: a face of 99,999 x 10^9 is accepted, 100,000 x 10^9 (at once, or grown) is not."""
    return fill(f"fx{draw(st.integers(0, 10**9))}", draw(accounts), draw(st.sampled_from(["buy", "sell"])),
                str(draw(st.sampled_from([1, 99999, 100000, 50000]))), str(draw(st.sampled_from([1, 1000, 50000]))),
                symbol=FACE_SYMBOL, mode=draw(st.sampled_from(["cross", "isolated"])), leverage="1")


@st.composite
def _pair(draw: st.DrawFn, symbol: str) -> list[dict[str, Any]]:
    """A long and a short of one symbol, opened by two accounts (in hedge mode, on their sides)."""
    long_account, short_account = draw(st.lists(accounts, min_size=2, max_size=2, unique=True))
    qty, number = _qty(symbol, draw(lots)), draw(st.integers(0, 10**9))
    return [fill(f"p{number}-{side}", account, "buy" if side == "long" else "sell", qty,
                 _price(symbol, draw(st.integers(-20, 20))), symbol=symbol,
                 mode=draw(st.sampled_from(["cross", "isolated"])), leverage=str(draw(st.integers(1, 50))),
                 position_side=side if account in HEDGED else None)
            for side, account in (("long", long_account), ("short", short_account))]


@st.composite
def inverse_journals(draw: st.DrawFn, max_events: int = 60) -> list[dict[str, Any]]:
    """A coin fund and its inverse instruments (docs/design.md §7) beside a linear fund and instrument, deposits in
    both assets, then a random stream over both; bad instrument records (an inverse one without a contract_size, a
    linear one with one, a changed contract_size) and fills at MAX_FACE are rejected alike."""
    setup = [
        fund(surplus=draw(st.sampled_from(["fund", "trader"])), ratio=draw(st.sampled_from(["0.5", "1", "5"]))),
        fund("COIN", asset="BTC", surplus=draw(st.sampled_from(["fund", "trader"])),
             ratio=draw(st.sampled_from(["0", "0.2", "1", "5"]))),
        instrument("BTCUSDT", tick="0.1", lot="0.001", tiers=(("1000000", "0.01", "0"),)),
        # brackets in the coin: chosen by the value at mark
        instrument("BTCUSD", fund_id="COIN", asset="BTC", tick="0.5", lot="1", fee_rate="0.005",
                   tiers=(("2", "0.004", None), ("10", "0.005", None), ("100", "0.01", None)),
                   contract_type="inverse", contract_size=CONTRACT_SIZES["BTCUSD"]),
        instrument("XBTUSD", fund_id="COIN", asset="BTC", tick="0.5", lot="100", tiers=(("50", "0.005", "0"),),
                   contract_type="inverse", contract_size=CONTRACT_SIZES["XBTUSD"],
                   **draw(st.sampled_from([{}, {"mark_tolerance": "0.1"}]))),
        instrument(FACE_SYMBOL, fund_id="COIN", asset="BTC", tick="1", lot="1",
                   tiers=(("100000000000", "0.01", "0"),), contract_type="inverse", contract_size="1000000000"),
        instrument("BADUSD", fund_id="COIN", asset="BTC", contract_type="inverse"),
        instrument("BADUSDT", contract_size="100"),
        instrument("BADUSDT", contract_type="linear", contract_size="100"),
        instrument("XBTUSD", fund_id="COIN", asset="BTC", tick="0.5", lot="100", tiers=(("50", "0.005", "0"),),
                   contract_type="inverse", contract_size="2"),  # a changed contract size
        instrument("BTCUSDT", tick="0.1", lot="0.001", tiers=(("1000000", "0.01", "0"),), contract_type="inverse",
                   contract_size="1"),  # a linear instrument turned inverse
        transfer("seed", "fund:MAIN", str(draw(st.integers(1, 200000)))),
        transfer("seed-coin", "fund:COIN", str(Decimal(draw(st.integers(0, 200000)) or 1) / 10000), asset="BTC"),
        *[transfer(f"d-{a}", a, str(draw(st.integers(1000, 100000)))) for a in ACCOUNTS],
        *[transfer(f"dc-{a}", a, str(Decimal(draw(st.integers(100, 50000))) / 10000), asset="BTC")
          for a in ACCOUNTS],
    ]
    # both sides open before the stream, so that liquidations find positions and deleverages find counterparties
    opening = [record for symbol in INVERSE_SYMBOLS
               for pair in draw(st.lists(_pair(symbol), min_size=1, max_size=3)) for record in pair]
    opening += draw(st.lists(fills(inverse_symbols), min_size=min(4, max_events), max_size=max(min(12, max_events), 0)))
    stream = draw(st.lists(st.one_of(
        fills(inverse_symbols), fills(inverse_symbols), marks(inverse_symbols), marks(inverse_symbols),
        liquidations(inverse_symbols), liquidations(inverse_symbols), liquidations(inverse_symbols),
        fund_closes(inverse_symbols), fund_fills(inverse_symbols), fundings(inverse_symbols), coin_transfers(),
        transfers(), face_fills()), min_size=min(10, max_events), max_size=max_events))
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
            symbol, lot = item["symbol"], _WORLD[item["symbol"]][1]
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
            symbol, lot = item["symbol"], _WORLD[item["symbol"]][1]
            fund_id = _fund_of(symbol)
            lots = engine.funds[fund_id].lots.get(symbol) if fund_id in engine.funds else None
            if not lots:
                continue
            side = lots[0].side
            held = sum((x.qty for x in lots if x.side == side), Decimal(0))
            qty = min(_lots_of(held, item["percent"], lot), held)
            record = fill(f"fc{item['id']}", f"fund:{fund_id}", "sell" if side == "long" else "buy", str(qty),
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
