"""`backstop demo`: a seeded cascade on the real BTCUSDT path of 10 Oct 2025, 20:00-24:00 UTC.

A few thousand accounts (deposits from 200 to 50,000 USDT; leverage 2x-125x, more of it high; 60% isolated)
open and trade BTCUSDT with load shaped like the real trade counts per minute; marks follow each real 1-minute
bar (open, then high and low in the order the bar's direction suggests, then close); funding is the real
settlement of 2025-10-11 00:00. Simulation mode decides every liquidation; a small insurance fund takes what it
can and deleverages the rest. Same seed, same journal, same hashes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from backstop.core.hashing import canonical_json
from backstop.core.margin import maintenance_margin
from backstop.core.state import Tier
from backstop.resources import Bar, btc_crash_bars, btc_funding_rates

TICK = Decimal("0.1")
LOT = Decimal("0.001")
LEVERAGES = (2, 3, 5, 5, 10, 10, 10, 20, 20, 20, 25, 50, 50, 75, 100, 125)
DEPOSITS = (200, 500, 500, 1000, 1000, 2000, 2000, 5000, 10000, 50000)
BINANCE_BTC_TIERS = (("50000", "0.004", "0"), ("250000", "0.005", "50"), ("3000000", "0.01", "1300"),
                     ("15000000", "0.025", "46300"), ("30000000", "0.05", "421300"),
                     ("80000000", "0.1", "1921300"), ("150000000", "0.125", "3921300"))
LIQUIDATION_BUFFER = Decimal("1.5")  # a margin balance within 1.5 x its maintenance margin may be liquidated


def _marks(bar: Bar) -> list[tuple[int, Decimal]]:
    """Four marks per minute: open, the extreme the bar reached first (guessed from its direction), the other
    extreme, close."""
    first, second = (bar.high, bar.low) if bar.close < bar.open else (bar.low, bar.high)
    return [(bar.open_time + offset, price) for offset, price in
            ((0, bar.open), (15_000, first), (30_000, second), (45_000, bar.close))]


@dataclass(slots=True)
class _Open:
    """What the generator knows of an account's position, to trade it as its margin allows (the engine decides)."""

    side: str
    lots: int
    entry: Decimal
    margin: Decimal  # isolated margin (0 for a cross position)


_TIERS = tuple(Tier(Decimal(n), Decimal(m), Decimal(a)) for n, m, a in BINANCE_BTC_TIERS)


def _near_liquidation(held: _Open, wallet: Decimal, mark: Decimal, isolated: bool) -> bool:
    """The position's margin balance at the mark is within LIQUIDATION_BUFFER of its maintenance margin (or below):
    the engine may liquidate it at this mark, so the account trades no more. Without that a later close of a
    position the engine liquidated would open one on the other side, on margin the account no longer has."""
    qty = LOT * held.lots
    pnl = (mark - held.entry) * qty if held.side == "long" else (held.entry - mark) * qty
    balance = (held.margin if isolated else wallet) + pnl
    return balance <= maintenance_margin(_TIERS, qty * mark) * LIQUIDATION_BUFFER


def journal(seed: int = 2025, accounts: int = 3000, fund_balance: str = "150000") -> Iterator[bytes]:
    """The demo's input journal, one canonical JSON line per record, in time order.

    The generator keeps each account's wallet and position as the engine would (fees, margin, realized PnL), and
    an account whose position nears its liquidation at a mark stops trading: the engine decides liquidations, and a
    fill is a fact it applies whatever margin the account has left."""
    rng = random.Random(seed)
    bars = btc_crash_bars()
    start = bars[0].open_time - 60_000

    def line(record: dict[str, object]) -> bytes:
        return canonical_json(record)

    yield line({"type": "fund", "ts": start, "fund_id": "BTC", "settle_asset": "USDT", "surplus": "fund",
                "max_inventory_ratio": "0.5"})
    yield line({"type": "instrument", "ts": start, "symbol": "BTCUSDT", "settle_asset": "USDT", "tick_size": "0.1",
                "lot_size": "0.001", "liquidation_fee_rate": "0.0125", "fund_id": "BTC",
                "tiers": [{"max_notional": n, "mmr": m, "maint_amount": a} for n, m, a in BINANCE_BTC_TIERS]})
    yield line({"type": "transfer", "ts": start, "transfer_id": "fund-seed", "account_id": "fund:BTC",
                "asset": "USDT", "amount": fund_balance})
    names = [f"trader-{i:05d}" for i in range(accounts)]
    wallets: dict[str, Decimal] = {}
    for name in names:
        deposit = rng.choice(DEPOSITS)
        wallets[name] = Decimal(deposit)
        yield line({"type": "transfer", "ts": start, "transfer_id": f"dep-{name}", "account_id": name,
                    "asset": "USDT", "amount": str(deposit)})
    positions: dict[str, _Open] = {}  # in the order they opened
    stopped: set[str] = set()  # accounts whose position neared its liquidation: they trade no more
    modes = {name: ("isolated" if rng.random() < 0.6 else "cross") for name in names}
    total_trades = sum(bar.trades for bar in bars)
    fills_budget = accounts * 6
    serial = 0
    for bar in bars:
        marks = _marks(bar)
        fills = max(1, fills_budget * bar.trades // total_trades)
        for index, (ts, mark) in enumerate(marks):
            yield line({"type": "mark", "ts": ts, "symbol": "BTCUSDT", "mark_price": str(mark)})
            for name in [n for n, held in positions.items()
                         if _near_liquidation(held, wallets[n], mark, modes[n] == "isolated")]:
                del positions[name]
                stopped.add(name)
            for _ in range(fills // len(marks) + (1 if index < fills % len(marks) else 0)):
                serial += 1
                name = rng.choice(names)
                price = max(mark + TICK * rng.randint(-20, 20), TICK)
                fill_ts = ts + 1 + rng.randint(0, 14_000)
                if name in stopped:
                    continue
                held = positions.get(name)
                if held is not None and rng.random() < 0.35:  # take profit or cut the loss, in part
                    closing = rng.randint(1, held.lots)
                    record = {"side": "sell" if held.side == "long" else "buy", "qty": str(LOT * closing),
                              "leverage": "10"}
                    qty = LOT * closing
                    wallets[name] += (price - held.entry) * qty if held.side == "long" else (held.entry - price) * qty
                    released = held.margin * closing / held.lots
                    held.margin -= released
                    wallets[name] += released
                    held.lots -= closing
                    if held.lots == 0:
                        del positions[name]
                elif held is None:
                    leverage = rng.choice(LEVERAGES)
                    margin = wallets[name] * Decimal(rng.randint(20, 80)) / 100
                    lots = int((margin * leverage / price / LOT).to_integral_value(ROUND_DOWN))
                    if lots < 1:
                        continue
                    side = "long" if rng.random() < 0.62 else "short"
                    record = {"side": "buy" if side == "long" else "sell", "qty": str(LOT * lots),
                              "leverage": str(leverage)}
                    isolated = LOT * lots * price / leverage if modes[name] == "isolated" else Decimal(0)
                    wallets[name] -= isolated
                    positions[name] = _Open(side, lots, price, isolated)
                else:
                    continue
                fee = (Decimal(record["qty"]) * price * Decimal("0.0004")).quantize(Decimal("0.00000001"))
                wallets[name] -= fee
                yield line({"type": "fill", "ts": fill_ts, "fill_id": f"f{serial}", "account_id": name,
                            "symbol": "BTCUSDT", "price": str(price), "fee": str(fee),
                            "margin_mode": modes[name], **record})
    for calc_time, rate in btc_funding_rates(bars[-1].open_time, bars[-1].open_time + 120_000):
        yield line({"type": "funding", "ts": calc_time, "symbol": "BTCUSDT", "rate": str(rate),
                    "mark_price": str(bars[-1].close)})
