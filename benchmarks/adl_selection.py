"""ADL selection benchmark: choosing the counterparties of one deleverage among 1,000,000 open positions on the
opposite side, through each engine's index (crates/backstop-engine/src/adl_index.rs, backstop.core.adl_index),
beside exact ranking of every position (the engine's path without the index) in the same run; and memory per open
position.

    python benchmarks/adl_selection.py [--positions 1000000] [--seed 42] [--engines compiled,reference]

The same book in both engines: each account deposits its margin and opens a BTCUSDT short around the mark, 90%
isolated and 10% cross, leverage 2x-100x: a deposit and a fill per account, through each engine's own checks and
rules. The compiled engine gets them as journal lines (through its own decode); the reference as the core's events
(backstop.core.events: a million fills decoded would mostly time the wire models). Between two deleverages the mark
moves and a thousand accounts change (a deposit each), then one deleverage's selection is timed (the compiled
engine's Ledger.adl_head, the reference's Engine.adl_top): refreshing the changed rows, scoring at the new mark,
choosing the candidates and ranking them exactly.
A second state holds 100,000 shorts exactly alike (same size, entry, leverage and margin), where the float scores
cannot pick a few: the index must break the exact ties itself (`--alike N`).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Iterator
from decimal import Decimal, localcontext
from typing import Any

import orjson

from backstop.core.engine import Engine
from backstop.core.events import Event, FillEvent, MarkEvent, TransferEvent
from backstop.core.numbers import CONTEXT, ZERO, initial_margin
from backstop.core.processor import Applied, Processor
from backstop.wire.decode import decode_record

D = Decimal
T0 = 1_760_000_000_000
SETUP = (
    {"type": "fund", "ts": T0, "fund_id": "BTC", "settle_asset": "USDT", "surplus": "fund", "max_inventory_ratio": "1"},
    {"type": "instrument", "ts": T0, "symbol": "BTCUSDT", "settle_asset": "USDT", "tick_size": "0.1",
     "lot_size": "0.001", "tiers": [{"max_notional": "1000000000", "mmr": "0.004", "maint_amount": "0"}],
     "liquidation_fee_rate": "0.005", "fund_id": "BTC"})
Short = tuple[str, Decimal, Decimal, Decimal, str, Decimal]  # account, qty, entry, leverage, margin mode, deposit


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def shorts(positions: int, seed: int, alike: bool = False) -> Iterator[Short]:
    """The book, the same for both engines: each account's short and the initial margin it deposits for it."""
    rng = random.Random(seed)
    for number in range(positions):
        if alike:
            qty, entry, leverage, mode = D(1), D(110_000), D(10), "isolated"
        else:
            qty = D(rng.randint(1, 5000)) / 1000
            entry = D(rng.randint(95_000_0, 125_000_0)) / 10
            leverage = D(rng.choice(("2", "3", "5", "10", "20", "25", "50", "75", "100")))
            mode = "cross" if rng.random() < 0.1 else "isolated"
        with localcontext(CONTEXT):
            margin = initial_margin(qty * entry, leverage)
        yield f"acct-{number:07d}", qty, entry, leverage, mode, margin


def deleverages(positions: int, rng: random.Random, rounds: int) -> Iterator[tuple[Decimal, list[str], Decimal]]:
    """Each round's new mark, the accounts that change before it (a deposit each) and the qty deleveraged."""
    for _ in range(rounds):
        mark = D(rng.randint(100_000_0, 115_000_0)) / 10
        changed = [f"acct-{number:07d}" for number in rng.sample(range(positions), min(1000, positions))]
        yield mark, changed, D(rng.randint(1000, 50000)) / 1000


# ------------------------------------------------------------------------------------------------ compiled engine


class CompiledBook:
    """The compiled engine fed journal lines; ts moves one millisecond per record (the dedupe window forgets)."""

    def __init__(self) -> None:
        from backstop import _engine

        self.ledger = _engine.Ledger(strict=False, snapshot_every=0, snapshot=None, ids=None)
        self.ts = T0
        self.line = 1
        self.apply([dict(record) for record in SETUP])

    def apply(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.ts += 1
            record["ts"] = self.ts
        chunk = b"".join(orjson.dumps(record) + b"\n" for record in records)
        dead = self.ledger.apply_lines(chunk, self.line, b"")[3]  # the dead letters
        if dead:
            raise SystemExit(f"the benchmark's own records were refused: {dead[:300]!r}")
        self.line += len(records)


def compiled_book(positions: int, seed: int, alike: bool = False) -> CompiledBook:
    """The book as journal lines: a deposit of the initial margin and a short per account."""
    book = CompiledBook()
    batch: list[dict[str, Any]] = []
    for number, (account, qty, entry, leverage, mode, margin) in enumerate(shorts(positions, seed, alike)):
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
    for round_number, (mark, changed, qty) in enumerate(deleverages(positions, rng, rounds)):
        book.apply([{"type": "mark", "symbol": "BTCUSDT", "mark_price": format(mark, "f")},
                    *({"type": "transfer", "transfer_id": f"r{round_number}-{account}", "account_id": account,
                       "asset": "USDT", "amount": "0.00000001"} for account in changed)])
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


class ReferenceBook:
    """The reference engine fed the same records as the core's events; ts moves as the compiled book's."""

    def __init__(self) -> None:
        self.processor = Processor(Engine())
        self.engine = self.processor.engine
        self.ts = T0
        for record in SETUP:
            self.apply(decode_record(orjson.dumps({**record, "ts": self.tick()})))

    def tick(self) -> int:
        self.ts += 1
        return self.ts

    def apply(self, event: Event) -> None:
        outcome = self.processor.process(event)
        if not isinstance(outcome, Applied):
            raise SystemExit(f"the benchmark's own record was refused: {outcome}")


def reference_book(positions: int, seed: int, alike: bool = False) -> ReferenceBook:
    book = ReferenceBook()
    with book.engine.decimal_context():
        for number, (account, qty, entry, leverage, mode, margin) in enumerate(shorts(positions, seed, alike)):
            book.apply(TransferEvent(book.tick(), f"d-{number}", account, "USDT", margin))
            book.apply(FillEvent(book.tick(), f"f-{number}", account, "BTCUSDT", "sell", qty, entry, ZERO,
                                 "cross" if mode == "cross" else "isolated", leverage))
        book.apply(MarkEvent(book.tick(), "BTCUSDT", D(110_000)))
    return book


def select(book: ReferenceBook, positions: int, rng: random.Random, rounds: int) -> tuple[list[float], list[int]]:
    """Each round: a new mark, a thousand accounts changed (a deposit each), then one deleverage's selection, timed."""
    times, counterparties = [], []
    for round_number, (mark, changed, qty) in enumerate(deleverages(positions, rng, rounds)):
        with book.engine.decimal_context():
            book.apply(MarkEvent(book.tick(), "BTCUSDT", mark))
            for account in changed:
                book.apply(TransferEvent(book.tick(), f"r{round_number}-{account}", account, "USDT",
                                         D("0.00000001")))
        started = time.perf_counter()
        queue, count = book.engine.adl_top("BTCUSDT", "short", qty)
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


def run_alike(positions: int, seed: int, rounds: int = 10) -> dict[str, Any]:
    """Selection among positions exactly alike, beside the exact ranking of all of them."""
    book = reference_book(positions, seed, alike=True)
    book.engine.adl_top("BTCUSDT", "short", D("0.001"))
    times, _ = select(book, positions, random.Random(seed + 1), rounds)
    started = time.perf_counter()
    book.engine.adl_queue("BTCUSDT", "short")
    full_s = time.perf_counter() - started
    median = statistics.median(times)
    return {"figure": f"choose counterparties among {positions:,} positions exactly alike (median, reference engine)",
            "value": round(median * 1000, 1), "unit": "ms", "baseline": "exact ranking of every position",
            "baseline_value": round(full_s * 1000), "ratio": round(full_s / median)}


def run_reference(positions: int, seed: int, rounds: int = 20, alike: int = 100_000) -> tuple[list[dict[str, Any]],
                                                                                             int]:
    before = rss_bytes()
    book = reference_book(positions, seed)
    started = time.perf_counter()
    book.engine.adl_top("BTCUSDT", "short", D("0.001"))  # the first call builds the index rows for every account
    build_s = time.perf_counter() - started
    per_position = (rss_bytes() - before) / positions
    times, counterparties = select(book, positions, random.Random(seed + 1), rounds)
    started = time.perf_counter()
    full = book.engine.adl_queue("BTCUSDT", "short")
    full_s = time.perf_counter() - started
    assert len(full) == positions
    del book, full
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
