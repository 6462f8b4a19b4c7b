"""Seeded journal generator for benchmarks: a crash on the real BTCUSDT path of 10 Oct 2025.

Three symbols follow the real 1-minute BTCUSDT bars (ETH and SOL scaled from it), load per minute is shaped
like the real trade counts, accounts open and close isolated and cross positions at 2x-100x, and every
position whose mark crosses its liquidation price is liquidated: 96% executed in the market at a slip, 3% half
and 1% not at all, so the funds take inventory and, past their limits, deleverage. About 0.5% of
records are sent twice, as a venue's retries would.

    python benchmarks/journal_gen.py OUT.jsonl --events 1000000 --seed 42
"""

from __future__ import annotations

import argparse
import heapq
import random
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction
from pathlib import Path

import orjson

from backstop.resources import btc_crash_bars

VERSION = 2  # part of the cached file's name (benchmarks/data/): a change to what a seed generates bumps it

LEVERAGES = (2, 3, 5, 10, 10, 20, 20, 25, 50, 75, 100)
MMR = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Spec:
    symbol: str
    fund_id: str
    scale: Decimal
    tick: Decimal
    lot: Decimal
    max_lots: int


SPECS = (
    Spec("BTCUSDT", "BTC", Decimal(1), Decimal("0.1"), Decimal("0.001"), 2000),
    Spec("ETHUSDT", "ALT", Decimal("0.0375"), Decimal("0.01"), Decimal("0.01"), 2000),
    Spec("SOLUSDT", "ALT", Decimal("0.00188"), Decimal("0.01"), Decimal("0.1"), 3000),
)


@dataclass(slots=True)
class Open:
    account: str
    spec: Spec
    lots: int  # signed
    entry: Decimal
    liquidation: Decimal
    live: bool = True


class Generator:
    def __init__(self, events: int, seed: int) -> None:
        self.target = events
        self.rng = random.Random(seed)
        self.accounts = [f"acct-{i:06d}" for i in range(max(events // 20, 100))]
        self.out: list[bytes] = []
        self.serial = 0
        self.ts = 0
        self.positions: dict[tuple[str, str], Open] = {}
        self.long_heap: dict[str, list[tuple[Decimal, int, Open]]] = {s.symbol: [] for s in SPECS}
        self.short_heap: dict[str, list[tuple[Decimal, int, Open]]] = {s.symbol: [] for s in SPECS}
        self.marks: dict[str, Decimal] = {}
        self.wallets: dict[str, int] = {}

    def emit(self, record: dict[str, object]) -> None:
        line = orjson.dumps(record)
        self.out.append(line)
        if self.rng.random() < 0.005:
            self.out.append(line)

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def setup(self) -> None:
        for fund_id, seed_amount in (("BTC", "2000000"), ("ALT", "300000")):
            self.emit({"type": "fund", "ts": self.ts, "fund_id": fund_id, "settle_asset": "USDT", "surplus": "fund",
                       "max_inventory_ratio": "1"})
            self.emit({"type": "transfer", "ts": self.ts, "transfer_id": f"seed-{fund_id}", "account_id":
                       f"fund:{fund_id}", "asset": "USDT", "amount": seed_amount})
        for spec in SPECS:
            self.emit({"type": "instrument", "ts": self.ts, "symbol": spec.symbol, "settle_asset": "USDT",
                       "tick_size": str(spec.tick), "lot_size": str(spec.lot), "liquidation_fee_rate": "0.0125",
                       "fund_id": spec.fund_id, "tiers": [
                           {"max_notional": "50000", "mmr": "0.004", "maint_amount": "0"},
                           {"max_notional": "250000", "mmr": "0.005", "maint_amount": "50"},
                           {"max_notional": "1000000", "mmr": "0.01", "maint_amount": "1300"},
                           {"max_notional": "10000000", "mmr": "0.025", "maint_amount": "16300"}]})
        for account in self.accounts:
            amount = self.rng.choice((500, 1000, 2000, 5000, 10000, 25000, 100000))
            self.wallets[account] = amount
            self.emit({"type": "transfer", "ts": self.ts, "transfer_id": f"dep-{account}", "account_id": account,
                       "asset": "USDT", "amount": str(amount)})

    def price(self, spec: Spec, btc: Decimal) -> Decimal:
        return (btc * spec.scale).quantize(spec.tick, rounding=ROUND_DOWN)

    def mark(self, spec: Spec, btc: Decimal) -> None:
        mark = self.price(spec, btc)
        self.marks[spec.symbol] = mark
        self.emit({"type": "mark", "ts": self.ts, "symbol": spec.symbol, "mark_price": str(mark)})
        self.liquidate_crossed(spec, mark)

    def liquidate_crossed(self, spec: Spec, mark: Decimal) -> None:
        longs, shorts = self.long_heap[spec.symbol], self.short_heap[spec.symbol]
        while longs and -longs[0][0] >= mark:
            self.liquidate(heapq.heappop(longs)[2], mark)
        while shorts and shorts[0][0] <= mark:
            self.liquidate(heapq.heappop(shorts)[2], mark)

    def liquidate(self, position: Open, mark: Decimal) -> None:
        if not position.live:
            return
        position.live = False
        del self.positions[(position.account, position.spec.symbol)]
        spec, size = position.spec, abs(position.lots)
        qty = spec.lot * size
        roll = self.rng.random()
        executed = size if roll < 0.96 else (size // 2 if roll < 0.99 else 0)
        slip = (mark * self.rng.randint(0, 60) / 10000).quantize(spec.tick, rounding=ROUND_DOWN)
        fill_price = max(mark - slip if position.lots > 0 else mark + slip, spec.tick)
        executions = [{"qty": str(spec.lot * executed), "price": str(fill_price)}] if executed else []
        self.emit({"type": "liquidation", "ts": self.ts, "liquidation_id": self.next_id("liq"),
                   "account_id": position.account, "symbol": spec.symbol, "qty": str(qty), "mark_price": str(mark),
                   "executions": executions})

    def trade(self, spec: Spec) -> None:
        account = self.rng.choice(self.accounts)
        mark = self.marks[spec.symbol]
        key = (account, spec.symbol)
        held = self.positions.get(key)
        price = max(mark + spec.tick * self.rng.randint(-5, 5), spec.tick)
        base = {"type": "fill", "ts": self.ts, "fill_id": self.next_id("fill"), "account_id": account,
                "symbol": spec.symbol, "price": str(price)}
        if held is not None and self.rng.random() < 0.45:
            lots = self.rng.randint(1, abs(held.lots))
            side = "sell" if held.lots > 0 else "buy"
            mode = "isolated" if account[-1] in "0123456" else "cross"
            self.emit({**base, "side": side, "qty": str(spec.lot * lots), "fee": "0", "margin_mode": mode,
                       "leverage": "10"})
            held.lots += -lots if held.lots > 0 else lots
            if held.lots == 0:
                held.live = False
                del self.positions[key]
            return
        if held is not None:
            return
        leverage = self.rng.choice(LEVERAGES)
        wallet = self.wallets[account]
        # a quarter to 90% of a third of the wallet as margin (an account trades up to three symbols)
        notional = Decimal(wallet * leverage * self.rng.randint(25, 90)) / 300
        lots = min(max(int(notional / (price * spec.lot)), 1), spec.max_lots * 50)
        long = self.rng.random() < 0.55
        mode = "isolated" if account[-1] in "0123456" else "cross"
        fee = (spec.lot * lots * price * Decimal("0.0002")).quantize(Decimal("0.00000001"))
        self.emit({**base, "side": "buy" if long else "sell", "qty": str(spec.lot * lots), "fee": str(fee),
                   "margin_mode": mode, "leverage": str(leverage)})
        margin = spec.lot * lots * price / leverage if mode == "isolated" else Decimal(wallet) / 3
        cushion = margin / (spec.lot * lots * price) - MMR
        liquidation = price * (1 - cushion) if long else price * (1 + cushion)
        position = Open(account, spec, lots if long else -lots, price, liquidation)
        self.positions[key] = position
        if long:
            heapq.heappush(self.long_heap[spec.symbol], (-liquidation, self.serial, position))
        else:
            heapq.heappush(self.short_heap[spec.symbol], (liquidation, self.serial, position))

    def run(self) -> list[bytes]:
        """Exactly `target` records: the bars' load scaled to fill them, then one funding record per symbol."""
        bars = btc_crash_bars()
        self.ts = bars[0].open_time - 60_000
        self.setup()
        body = self.target - len(SPECS)  # the funding records come last
        trades_left = sum(bar.trades for bar in bars)
        start, draws = len(self.out), 0
        for bar in bars:
            # This bar's share of the records still to write, in draws: a draw on an account that holds the symbol
            # trades only 45% of the time, while marks, liquidations and resends add records; records per draw so
            # far (10/13 to begin with) turns one into the other, so the journal ends with the last bar.
            per_draw = Fraction(len(self.out) - start, draws) if draws else Fraction(10, 13)
            budget = max(int((body - len(self.out)) * bar.trades / (trades_left * per_draw)), 4)
            trades_left -= bar.trades
            path = (bar.open, bar.high if bar.close < bar.open else bar.low, bar.low if bar.close < bar.open
                    else bar.high, bar.close)
            steps = max(budget // 40, 4)
            for step in range(steps):
                leg = step * 3 // steps
                fraction = Decimal(step * 3 % steps) / steps
                btc = path[leg] + (path[leg + 1] - path[leg]) * fraction
                self.ts = bar.open_time + step * 60_000 // steps
                for spec in SPECS:
                    self.mark(spec, btc)
                for _ in range(budget // steps):
                    self.trade(self.rng.choice(SPECS))
                draws += budget // steps
                if len(self.out) >= body:
                    break
            if len(self.out) >= body:
                break
        while len(self.out) < body:  # the last bar's estimate fell short: a few more trades in its minute
            self.trade(self.rng.choice(SPECS))
        del self.out[body:]
        self.ts = bars[-1].open_time + 60_000
        for spec in SPECS:
            self.emit({"type": "funding", "ts": self.ts, "symbol": spec.symbol, "rate": "0.0001",
                       "mark_price": str(self.marks[spec.symbol])})
        del self.out[self.target:]  # a funding record sent twice: the copy goes
        return self.out


def generate(path: Path, *, events: int, seed: int) -> int:
    lines = Generator(events, seed).run()
    with path.open("wb") as handle:
        handle.write(b"\n".join(lines) + b"\n")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(f"wrote {generate(args.out, events=args.events, seed=args.seed)} records to {args.out}")


if __name__ == "__main__":
    main()
