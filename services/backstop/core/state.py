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
    spec: FundSpec
    symbols: list[str] = field(default_factory=list)
    lots: dict[str, deque[Lot]] = field(default_factory=dict)

    def net_qty(self, symbol: str) -> Decimal:
        net = ZERO
        for lot in self.lots.get(symbol, ()):
            net += lot.qty if lot.side == "long" else -lot.qty
        return net
