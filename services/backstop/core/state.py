"""Engine state: plain mutable records owned by the engine. Money balances live in the ledger, not here."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from backstop.core.numbers import CONTEXT, ZERO

MarginMode = Literal["cross", "isolated"]
SurplusPolicy = Literal["fund", "trader"]


@dataclass(frozen=True, slots=True)
class Tier:
    max_notional: Decimal
    mmr: Decimal
    maint_amount: Decimal


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    settle_asset: str
    tick_size: Decimal
    lot_size: Decimal
    tiers: tuple[Tier, ...]
    liquidation_fee_rate: Decimal
    fund_id: str


@dataclass(frozen=True, slots=True)
class FundSpec:
    fund_id: str
    settle_asset: str
    surplus: SurplusPolicy
    max_inventory_ratio: Decimal


@dataclass(slots=True)
class Position:
    """A one-way position: signed qty (long > 0) and exact cost basis |qty| x entry."""

    account_id: str
    symbol: str
    qty: Decimal
    cost: Decimal
    margin_mode: MarginMode
    leverage: Decimal

    @property
    def side(self) -> Literal["long", "short"]:
        return "long" if self.qty > 0 else "short"

    @property
    def size(self) -> Decimal:
        return abs(self.qty)

    def entry_price(self) -> Decimal:
        return CONTEXT.divide(self.cost, self.size)

    def unrealized_pnl(self, mark: Decimal) -> Decimal:
        value = CONTEXT.multiply(self.size, mark)
        return value - self.cost if self.qty > 0 else self.cost - value


@dataclass(slots=True)
class Lot:
    """Fund inventory taken over from one liquidation, at its bankruptcy price (cost / qty)."""

    liquidation_id: str
    symbol: str
    side: Literal["long", "short"]
    qty: Decimal
    cost: Decimal
    liquidated_account: str
    seq: int

    def bankruptcy_price(self) -> Decimal:
        return CONTEXT.divide(self.cost, self.qty)


@dataclass(slots=True)
class FundState:
    """A fund's spec and inventory. Lots change only through add_lot and take_from_lot, which keep the net
    quantity per symbol beside them: the inventory check after every liquidation reads it without summing lots."""

    spec: FundSpec
    symbols: list[str] = field(default_factory=list)
    lots: dict[str, deque[Lot]] = field(default_factory=dict)
    _net: dict[str, Decimal] = field(default_factory=dict)  # symbol -> signed qty of its lots (long > 0)

    def net_qty(self, symbol: str) -> Decimal:
        return self._net.get(symbol, ZERO)

    def add_lot(self, lot: Lot) -> None:
        self.lots.setdefault(lot.symbol, deque()).append(lot)
        self._net[lot.symbol] = self._net.get(lot.symbol, ZERO) + (lot.qty if lot.side == "long" else -lot.qty)

    def take_from_lot(self, lot: Lot, qty: Decimal, cost_share: Decimal) -> None:
        """Close qty of the lot (its cost falls by cost_share); a lot closed in full leaves the inventory."""
        lot.qty -= qty
        lot.cost -= cost_share
        self._net[lot.symbol] -= qty if lot.side == "long" else -qty
        if lot.qty != 0:
            return
        lots = self.lots[lot.symbol]
        if lots[-1] is lot:  # usually the newest (executions) or the oldest (FIFO): O(1) at either end
            lots.pop()
        elif lots[0] is lot:
            lots.popleft()
        else:
            lots.remove(lot)
        if not lots:
            del self.lots[lot.symbol]
            del self._net[lot.symbol]
