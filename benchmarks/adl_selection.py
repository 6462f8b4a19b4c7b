"""ADL selection benchmark: choosing the counterparties of one deleverage among 1,000,000 open positions on the
opposite side, through the index (backstop.core.adl_index), beside exact ranking of every position (the engine's
path without the index) in the same run; and memory per open position.

    python benchmarks/adl_selection.py [--positions 1000000] [--seed 42]

Positions are opened through the engine's own open path (a million fills would only time decoding): each account
deposits its margin and opens a BTCUSDT short around the mark, 90% isolated and 10% cross, leverage 2x-100x.
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
            engine._open(account, instrument, -qty, entry, mode, leverage, None)  # type: ignore[arg-type]
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


def run_alike(positions: int, seed: int, rounds: int = 10) -> dict[str, Any]:
    """Selection among positions exactly alike, beside the exact ranking of all of them."""
    engine = build(positions, seed, alike=True)
    engine._adl_top("BTCUSDT", "short", D("0.001"))
    times, _ = select(engine, positions, random.Random(seed + 1), rounds)
    started = time.perf_counter()
    engine.adl_queue("BTCUSDT", "short")
    full_s = time.perf_counter() - started
    median = statistics.median(times)
    return {"figure": f"choose counterparties among {positions:,} positions exactly alike (median)",
            "value": round(median * 1000, 1), "unit": "ms", "baseline": "exact ranking of every position",
            "baseline_value": round(full_s * 1000), "ratio": round(full_s / median)}


def run(positions: int, seed: int, rounds: int = 20, alike: int = 100_000) -> dict[str, Any]:
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
    return {
        "name": "adl selection",
        "input": {"open_positions_opposite_side": positions, "seed": seed, "deleverages": rounds, "alike": alike,
                  "touched_accounts_between": 1000, "counterparties_median": int(statistics.median(counterparties))},
        "figures": [
            {"figure": "choose counterparties (median)", "value": round(median * 1000, 1), "unit": "ms",
             "baseline": "exact ranking of every position", "baseline_value": round(full_s * 1000),
             "ratio": round(full_s / median)},
            {"figure": "choose counterparties (max)", "value": round(max(times) * 1000, 1), "unit": "ms"},
            {"figure": "index build (first deleverage)", "value": round(build_s * 1000), "unit": "ms"},
            {"figure": "memory per open position (state + index)", "value": round(per_position), "unit": "bytes"},
            *([run_alike(alike, seed)] if alike else []),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--alike", type=int, default=100_000, help="positions exactly alike (0: skip)")
    args = parser.parse_args()
    print(json.dumps(run(args.positions, args.seed, alike=args.alike), indent=2))


if __name__ == "__main__":
    main()
