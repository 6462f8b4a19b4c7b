"""Incident-scale benchmark: a window shaped like Hyperliquid's 10 Oct 2025 cascade, replayed by `backstop replay`:
437,000 accounts, 3.24 million events over 82 minutes of event time, and one block of 11,279 liquidations that
the fund cannot absorb, so each one deleverages. Reports wall time, events/s and peak memory.

    python benchmarks/incident.py [--accounts 437000] [--events 3240000] [--block 11279] [--seed 7]

The window (generated from the seed, cached in benchmarks/data/): every account deposits and opens one isolated
position (BTC 60%, ETH 30%, SOL 10%, long or short, entry within 2% of the mark); marks tick once a second per
symbol; the rest is trading
(adding to or trimming positions). At minute 41 BTC drops 9% within ten seconds and the 11,279 most levered BTC
longs are liquidated with no market execution; the BTC fund's max_inventory_ratio is 0, so each lot is
deleveraged against the BTC shorts at once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from replay import backstop_replay, decode_only  # noqa: E402

T0 = 1_760_130_000_000  # 10 Oct 2025, 21:00 UTC
MINUTES = 82
# symbol, fund, tick (in 1/10^decimals), price in ticks, lot (in 1/1000), decimals of price, share of accounts
SYMBOLS = (("BTCUSDT", "BTC", 1, 1_210_000, "0.001", 1, 60), ("ETHUSDT", "ALT", 1, 436_000, "0.01", 2, 30),
           ("SOLUSDT", "ALT", 1, 21_800, "0.1", 2, 10))


def _price(ticks: int, decimals: int) -> str:
    text = str(ticks).rjust(decimals + 1, "0")
    return f"{text[:-decimals]}.{text[-decimals:]}"


def generate(path: Path, *, accounts: int, events: int, block: int, seed: int, minutes: int = MINUTES) -> int:
    rng = random.Random(seed)
    lines: list[str] = []
    add = lines.append
    add(f'{{"type":"fund","ts":{T0},"fund_id":"BTC","settle_asset":"USDT","surplus":"fund","max_inventory_ratio":"0"}}')
    add(f'{{"type":"fund","ts":{T0},"fund_id":"ALT","settle_asset":"USDT","surplus":"fund","max_inventory_ratio":"1"}}')
    for fund_id, amount in (("BTC", 50_000_000), ("ALT", 10_000_000)):
        add(f'{{"type":"transfer","ts":{T0},"transfer_id":"seed-{fund_id}","account_id":"fund:{fund_id}",'
            f'"asset":"USDT","amount":"{amount}"}}')
    for symbol, fund_id, tick, _, lot, decimals, _ in SYMBOLS:
        add(f'{{"type":"instrument","ts":{T0},"symbol":"{symbol}","settle_asset":"USDT","tick_size":'
            f'"{_price(tick, decimals)}","lot_size":"{lot}","tiers":[{{"max_notional":"1000000","mmr":"0.005",'
            f'"maint_amount":"0"}},{{"max_notional":"100000000","mmr":"0.01","maint_amount":"5000"}}],'
            f'"liquidation_fee_rate":"0.0125","fund_id":"{fund_id}"}}')
    marks = {s[0]: s[3] for s in SYMBOLS}
    weights = [s[6] for s in SYMBOLS]
    held: list[tuple[str, int, int, int]] = []  # (account, symbol index, signed lots, leverage)
    for number in range(accounts):
        account = f"u{number:06d}"
        index = rng.choices(range(3), weights)[0]
        symbol, _, _, _, lot, decimals, _ = SYMBOLS[index]
        lots = rng.randint(1, 400)
        leverage = rng.choice((2, 3, 5, 10, 20, 25, 50))
        side = "buy" if number % 2 == 0 else "sell"
        add(f'{{"type":"transfer","ts":{T0},"transfer_id":"d-{account}","account_id":"{account}","asset":"USDT",'
            f'"amount":"{rng.choice((1000, 5000, 20000, 100000))}"}}')
        qty = _qty(lots, lot)
        entry = marks[symbol] + rng.randint(-marks[symbol] // 50, marks[symbol] // 50)  # opened within +-2%
        add(f'{{"type":"fill","ts":{T0},"fill_id":"o-{account}","account_id":"{account}","symbol":"{symbol}",'
            f'"side":"{side}","qty":"{qty}","price":"{_price(entry, decimals)}","fee":"0",'
            f'"margin_mode":"isolated","leverage":"{leverage}"}}')
        held.append((account, index, lots if side == "buy" else -lots, leverage))
    btc_longs = sorted((h for h in held if h[1] == 0 and h[2] > 0), key=lambda h: (-h[3], h[0]))
    victims = {h[0] for h in btc_longs[:block]}
    traders = [h for h in held if h[0] not in victims]
    budget = events - len(lines) - block - minutes * 60 * 3
    per_second = budget // (minutes * 60)
    serial = 0
    for second in range(minutes * 60):
        ts = T0 + 60_000 + second * 1000
        crash = 41 * 60 <= second < 41 * 60 + 10
        for symbol, _, _, start, _, decimals, _ in SYMBOLS:
            drift = -start * 9 // 1000 if crash else rng.randint(-start // 5000, start // 5000)
            marks[symbol] = max(marks[symbol] + drift, start // 2)
            add(f'{{"type":"mark","ts":{ts},"symbol":"{symbol}","mark_price":"{_price(marks[symbol], decimals)}"}}')
        if second == 41 * 60 + 10 and block:
            for account, _, lots, _ in btc_longs[:block]:
                add(f'{{"type":"liquidation","ts":{ts},"liquidation_id":"liq-{account}","account_id":"{account}",'
                    f'"symbol":"BTCUSDT","qty":"{_qty(lots, "0.001")}","mark_price":'
                    f'"{_price(marks["BTCUSDT"], 1)}","executions":[]}}')
        for _ in range(per_second):
            account, index, lots, leverage = traders[rng.randrange(len(traders))]
            symbol, _, _, _, lot, decimals, _ = SYMBOLS[index]
            serial += 1
            side = ("buy" if lots > 0 else "sell") if rng.random() < 0.5 else ("sell" if lots > 0 else "buy")
            add(f'{{"type":"fill","ts":{ts},"fill_id":"t-{serial}","account_id":"{account}","symbol":"{symbol}",'
                f'"side":"{side}","qty":"{lot}","price":"{_price(marks[symbol], decimals)}","fee":"0",'
                f'"margin_mode":"isolated","leverage":"{leverage}"}}')
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def _qty(lots: int, lot: str) -> str:
    whole, _, fraction = lot.partition(".")
    scale = 10 ** len(fraction)
    units = lots * int(whole + fraction)
    return f"{units // scale}.{str(units % scale).rjust(len(fraction), '0')}"


def window_for(accounts: int, events: int, block: int, seed: int) -> Path:
    path = HERE / "data" / f"incident-{accounts}-{events}-{block}-seed{seed}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        in_child(generate, path, accounts=accounts, events=events, block=block, seed=seed)
    return path


def in_child(function: Any, *args: Any, **kwargs: Any) -> None:
    """Run a generator in a child process, so this process stays small."""
    process = multiprocessing.get_context("spawn").Process(target=function, args=args, kwargs=kwargs)
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"generating {args[0]} failed with exit code {process.exitcode}")


def run(accounts: int, events: int, block: int, seed: int) -> dict[str, Any]:
    path = window_for(accounts, events, block, seed)
    records, decode_s = decode_only(path)
    elapsed, summary, peak_kib = backstop_replay(path)
    return {
        "name": "incident window",
        "input": {"accounts": accounts, "records": records, "event_minutes": MINUTES, "liquidation_block": block,
                  "seed": seed, "events_applied": summary["events_applied"], "rejected": summary["rejected"],
                  "adl_events": summary["adl_events"], "fund_ledger_entries": summary["fund_ledger_entries"]},
        "figures": [
            {"figure": "backstop replay wall time", "value": round(elapsed, 1), "unit": "s"},
            {"figure": "backstop replay rate", "value": round(records / elapsed), "unit": "records/s",
             "baseline": "orjson decode only", "baseline_value": round(records / decode_s),
             "ratio": round(decode_s / elapsed, 3)},
            {"figure": "backstop replay peak memory", "value": round(peak_kib / 1024), "unit": "MiB"},
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=437_000)
    parser.add_argument("--events", type=int, default=3_240_000)
    parser.add_argument("--block", type=int, default=11_279)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps(run(args.accounts, args.events, args.block, args.seed), indent=2))


if __name__ == "__main__":
    main()
