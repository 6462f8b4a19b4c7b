"""ADL selection benchmark: choosing the counterparties of one deleverage among 1,000,000 open positions on the
opposite side, through each engine's index (crates/backstop-engine/src/adl_index.rs, backstop.core.adl_index),
beside exact ranking of every position (the engine's path without the index) in the same run; and memory per open
position.

    python benchmarks/adl_selection.py [--positions 1000000] [--seed 42] [--engines compiled,reference]

The same book in both engines: each account deposits its margin and opens a BTCUSDT short around the mark, 90%
isolated and 10% cross, leverage 2x-100x. The compiled engine gets it as journal lines (a deposit and a fill per
account, through its own decode and apply path); the reference through its open path (a million fills would only
time its decoding). Between two deleverages the mark moves and a thousand accounts change (compiled: a deposit
each; reference: touched), then one deleverage's selection is timed: refreshing the changed rows, scoring at the
new mark, choosing the candidates and ranking them exactly.
A second state holds 100,000 shorts exactly alike (same size, entry, leverage and margin), where the float scores
cannot pick a few: the index must break the exact ties itself (`--alike N`).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from decimal import Decimal, localcontext
from typing import Any

from backstop.core import ledger
from backstop.core.engine import Engine
from backstop.core.numbers import CONTEXT, initial_margin
from backstop.core.processor import Processor
from backstop.wire.decode import decode_record

D = Decimal


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def build(positions: int, seed: int, alike: bool = False) -> Engine:
    import orjson

    processor = Processor(Engine())
    for record in (
            {"type": "fund", "ts": 1, "fund_id": "BTC", "settle_asset": "USDT", "surplus": "fund",
             "max_inventory_ratio": "1"},
            {"type": "instrument", "ts": 1, "symbol": "BTCUSDT", "settle_asset": "USDT", "tick_size": "0.1",
             "lot_size": "0.001", "tiers": [{"max_notional": "1000000000", "mmr": "0.004", "maint_amount": "0"}],
             "liquidation_fee_rate": "0.005", "fund_id": "BTC"}):
        processor.process(decode_record(orjson.dumps(record)))
    engine = processor.engine
    engine.marks["BTCUSDT"] = D("110000")
    instrument = engine.instruments["BTCUSDT"]
    rng = random.Random(seed)
    with localcontext(CONTEXT):  # through the engine's own open path: margin posted, index touched
        for number in range(positions):
            account = f"acct-{number:07d}"
            if alike:
                qty, entry, leverage, mode = D(1), D(110_000), D(10), "isolated"
            else:
                qty = D(rng.randint(1, 5000)) / 1000
                entry = D(rng.randint(95_000_0, 125_000_0)) / 10
                leverage = D(rng.choice(("2", "3", "5", "10", "20", "25", "50", "75", "100")))
                mode = "cross" if rng.random() < 0.1 else "isolated"
            engine.ledger.post(ledger.external("USDT"), ledger.wallet(account, "USDT"),
                               initial_margin(qty * entry, leverage))
            engine._open(account, instrument, -qty, entry, mode, leverage, None, "both")  # type: ignore[arg-type]
    return engine


def select(engine: Engine, positions: int, rng: random.Random, rounds: int) -> tuple[list[float], list[int]]:
    """Each round: a new mark, a thousand accounts touched, then one deleverage's selection, timed."""
    times, counterparties = [], []
    for _ in range(rounds):
        engine.marks["BTCUSDT"] = D(rng.randint(100_000_0, 115_000_0)) / 10
        for number in rng.sample(range(positions), min(1000, positions)):  # accounts traded since the last one
            engine.adl_index.touch(f"acct-{number:07d}")
        qty = D(rng.randint(1000, 50000)) / 1000
        started = time.perf_counter()
        queue, count = engine._adl_top("BTCUSDT", "short", qty)
        times.append(time.perf_counter() - started)
        assert count == positions
        left, used = qty, 0
        for ranked in queue:
            if left <= 0:
                break
            left -= min(ranked.position.size, left)
            used += 1
        counterparties.append(used)
    return times, counterparties


# ------------------------------------------------------------------------------------------------ compiled engine

T0 = 1_760_000_000_000
SETUP = (
    {"type": "fund", "ts": T0, "fund_id": "BTC", "settle_asset": "USDT", "surplus": "fund", "max_inventory_ratio": "1"},
    {"type": "instrument", "ts": T0, "symbol": "BTCUSDT", "settle_asset": "USDT", "tick_size": "0.1",
     "lot_size": "0.001", "tiers": [{"max_notional": "1000000000", "mmr": "0.004", "maint_amount": "0"}],
     "liquidation_fee_rate": "0.005", "fund_id": "BTC"})


class CompiledBook:
    """The compiled engine fed journal lines; ts moves one millisecond per record (the dedupe window forgets)."""

    def __init__(self) -> None:
        from backstop import _engine

        self.ledger = _engine.Ledger(strict=False, snapshot_every=0, snapshot=None, ids=None)
        self.ts = T0
        self.line = 1
        self.apply(list(SETUP))

    def apply(self, records: list[dict[str, Any]]) -> None:
        import orjson

        for record in records:
            self.ts += 1
            record["ts"] = self.ts
        chunk = b"".join(orjson.dumps(record) + b"\n" for record in records)
        dead = self.ledger.apply_lines(chunk, self.line, b"")[3]  # the dead letters
        if dead:
            raise SystemExit(f"the benchmark's own records were refused: {dead[:300]!r}")
        self.line += len(records)


def compiled_book(positions: int, seed: int, alike: bool = False) -> CompiledBook:
    """The reference's build() as journal lines: a deposit of the initial margin and a short per account."""
    book = CompiledBook()
    rng = random.Random(seed)
    batch: list[dict[str, Any]] = []
    for number in range(positions):
        account = f"acct-{number:07d}"
        if alike:
            qty, entry, leverage, mode = D(1), D(110_000), D(10), "isolated"
        else:
            qty = D(rng.randint(1, 5000)) / 1000
            entry = D(rng.randint(95_000_0, 125_000_0)) / 10
            leverage = D(rng.choice(("2", "3", "5", "10", "20", "25", "50", "75", "100")))
            mode = "cross" if rng.random() < 0.1 else "isolated"
        with localcontext(CONTEXT):
            margin = initial_margin(qty * entry, leverage)
        batch += [{"type": "transfer", "transfer_id": f"d-{number}", "account_id": account, "asset": "USDT",
                   "amount": format(margin, "f")},
                  {"type": "fill", "fill_id": f"f-{number}", "account_id": account, "symbol": "BTCUSDT",
                   "side": "sell", "qty": format(qty, "f"), "price": format(entry, "f"), "fee": "0",
                   "margin_mode": mode, "leverage": format(leverage, "f")}]
        if len(batch) >= 20_000:
            book.apply(batch)
            batch = []
    book.apply([*batch, {"type": "mark", "symbol": "BTCUSDT", "mark_price": "110000"}])
    return book


def compiled_select(book: CompiledBook, positions: int, rng: random.Random, rounds: int
                    ) -> tuple[list[float], list[int]]:
    """Each round: a new mark, a thousand accounts changed (a deposit each), then one deleverage's selection, timed."""
    times, counterparties = [], []
    for round_number in range(rounds):
        mark = D(rng.randint(100_000_0, 115_000_0)) / 10
        changed = [{"type": "transfer", "transfer_id": f"r{round_number}-{number}",
                    "account_id": f"acct-{number:07d}", "asset": "USDT", "amount": "0.00000001"}
                   for number in rng.sample(range(positions), min(1000, positions))]
        book.apply([{"type": "mark", "symbol": "BTCUSDT", "mark_price": format(mark, "f")}, *changed])
        qty = D(rng.randint(1000, 50000)) / 1000
        started = time.perf_counter()
        head, count = book.ledger.adl_head("BTCUSDT", "short", format(qty, "f"))
        times.append(time.perf_counter() - started)
        assert count == positions
        counterparties.append(len(head))
    return times, counterparties


def compiled_alike(positions: int, seed: int, rounds: int = 10) -> dict[str, Any]:
    book = compiled_book(positions, seed, alike=True)
    book.ledger.adl_head("BTCUSDT", "short", "0.001")
    times, _ = compiled_select(book, positions, random.Random(seed + 1), rounds)
    started = time.perf_counter()
    book.ledger.adl_head("BTCUSDT", "short", "0.001", everyone=True)
    full_s = time.perf_counter() - started
    median = statistics.median(times)
    return {"figure": f"choose counterparties among {positions:,} positions exactly alike (median, compiled engine)",
            "value": round(median * 1000, 2), "unit": "ms", "baseline": "exact ranking of every position",
            "baseline_value": round(full_s * 1000), "ratio": round(full_s / median)}


def run_compiled(positions: int, seed: int, rounds: int = 20, alike: int = 100_000) -> tuple[list[dict[str, Any]],
                                                                                            int]:
    before = rss_bytes()
    book = compiled_book(positions, seed)
    started = time.perf_counter()
    book.ledger.adl_head("BTCUSDT", "short", "0.001")  # the first call builds the index rows for every account
    build_s = time.perf_counter() - started
    per_position = (rss_bytes() - before) / positions
    index_bytes = book.ledger.adl_index_bytes()
    times, counterparties = compiled_select(book, positions, random.Random(seed + 1), rounds)
    started = time.perf_counter()
    _, count = book.ledger.adl_head("BTCUSDT", "short", "0.001", everyone=True)
    full_s = time.perf_counter() - started
    assert count == positions
    del book
    median = statistics.median(times)
    return [
        {"figure": "choose counterparties (median, compiled engine)", "value": round(median * 1000, 2), "unit": "ms",
         "baseline": "exact ranking of every position", "baseline_value": round(full_s * 1000),
         "ratio": round(full_s / median)},
        {"figure": "choose counterparties (max, compiled engine)", "value": round(max(times) * 1000, 2), "unit": "ms"},
        {"figure": "index build (first deleverage, compiled engine)", "value": round(build_s * 1000), "unit": "ms"},
        {"figure": "memory per open position (state + index, compiled engine)", "value": round(per_position),
         "unit": "bytes"},
        {"figure": "of which the index's rows (compiled engine)", "value": round(index_bytes / positions),
         "unit": "bytes"},
        *([compiled_alike(alike, seed)] if alike else []),
    ], int(statistics.median(counterparties))


# ------------------------------------------------------------------------------------------------ reference engine


def run_alike(positions: int, seed: int, rounds: int = 10) -> dict[str, Any]:
    """Selection among positions exactly alike, beside the exact ranking of all of them."""
    engine = build(positions, seed, alike=True)
    engine._adl_top("BTCUSDT", "short", D("0.001"))
    times, _ = select(engine, positions, random.Random(seed + 1), rounds)
    started = time.perf_counter()
    engine.adl_queue("BTCUSDT", "short")
    full_s = time.perf_counter() - started
    median = statistics.median(times)
    return {"figure": f"choose counterparties among {positions:,} positions exactly alike (median, reference engine)",
            "value": round(median * 1000, 1), "unit": "ms", "baseline": "exact ranking of every position",
            "baseline_value": round(full_s * 1000), "ratio": round(full_s / median)}


def run_reference(positions: int, seed: int, rounds: int = 20, alike: int = 100_000) -> tuple[list[dict[str, Any]],
                                                                                             int]:
    before = rss_bytes()
    engine = build(positions, seed)
    started = time.perf_counter()
    engine._adl_top("BTCUSDT", "short", D("0.001"))  # the first call builds the index rows for every account
    build_s = time.perf_counter() - started
    per_position = (rss_bytes() - before) / positions
    times, counterparties = select(engine, positions, random.Random(seed + 1), rounds)
    started = time.perf_counter()
    full = engine.adl_queue("BTCUSDT", "short")
    full_s = time.perf_counter() - started
    assert len(full) == positions
    del engine, full
    median = statistics.median(times)
    return [
        {"figure": "choose counterparties (median, reference engine)", "value": round(median * 1000, 1), "unit": "ms",
         "baseline": "exact ranking of every position", "baseline_value": round(full_s * 1000),
         "ratio": round(full_s / median)},
        {"figure": "choose counterparties (max, reference engine)", "value": round(max(times) * 1000, 1), "unit": "ms"},
        {"figure": "index build (first deleverage, reference engine)", "value": round(build_s * 1000), "unit": "ms"},
        {"figure": "memory per open position (state + index, reference engine)", "value": round(per_position),
         "unit": "bytes"},
        *([run_alike(alike, seed)] if alike else []),
    ], int(statistics.median(counterparties))


def run(positions: int, seed: int, rounds: int = 20, alike: int = 100_000,
        engines: tuple[str, ...] = ("compiled", "reference")) -> dict[str, Any]:
    """Each engine in turn (the compiled one first, while the process is small: memory is measured as RSS)."""
    figures: list[dict[str, Any]] = []
    counterparties = 0
    for engine in engines:
        measured, median = (run_compiled if engine == "compiled" else run_reference)(positions, seed, rounds, alike)
        figures += measured
        counterparties = counterparties or median
    return {
        "name": "adl selection",
        "input": {"open_positions_opposite_side": positions, "seed": seed, "deleverages": rounds, "alike": alike,
                  "touched_accounts_between": 1000, "counterparties_median": counterparties},
        "figures": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--alike", type=int, default=100_000, help="positions exactly alike (0: skip)")
    parser.add_argument("--engines", default="compiled,reference")
    args = parser.parse_args()
    print(json.dumps(run(args.positions, args.seed, alike=args.alike, engines=tuple(args.engines.split(","))),
                     indent=2))


if __name__ == "__main__":
    main()
