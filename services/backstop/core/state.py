"""Engine state: plain mutable records owned by the engine. Money balances live in the ledger, not here."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from backstop.core.errors import InvariantViolation
from backstop.core.numbers import CONTEXT, ZERO, average_price

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
    adl_quantile: int = 0  # the quantile last published for it (docs/design.md §10, "ADL quantiles"); 0: none

    @property
    def side(self) -> Literal["long", "short"]:
        return "long" if self.qty > 0 else "short"

    @property
    def size(self) -> Decimal:
        return abs(self.qty)

    def entry_price(self) -> Decimal:
        """The reported entry price: HALF_EVEN(cost / size) to 1e-8 (the rules use the exact cost, never this)."""
        return average_price(self.cost, self.size)

    def unrealized_pnl(self, mark: Decimal) -> Decimal:
        value = CONTEXT.multiply(self.size, mark)
        return value - self.cost if self.qty > 0 else self.cost - value


class Positions:
    """Open positions by account, each account's in a tuple in the order they opened. An account holds one or a
    few, so a scan finds a symbol as fast as a dict lookup, and a tuple of one is 48 bytes where a dict of one is
    184 (memory per open position is a benchmark goal). Iterating yields accounts in the order they first opened."""

    __slots__ = ("_of",)

    def __init__(self) -> None:
        self._of: dict[str, tuple[Position, ...]] = {}

    def get(self, account_id: str, symbol: str) -> Position | None:
        for position in self._of.get(account_id, ()):
            if position.symbol == symbol:
                return position
        return None

    def of(self, account_id: str) -> tuple[Position, ...]:
        return self._of.get(account_id, ())

    def in_symbol_order(self, account_id: str) -> list[Position]:
        """The account's positions by symbol (reports and snapshots must not depend on the order they opened)."""
        held = self._of.get(account_id, ())
        return list(held) if len(held) < 2 else sorted(held, key=lambda position: position.symbol)

    def add(self, position: Position) -> None:
        """Open a position; its account must hold none in that symbol (a malformed snapshot could say so)."""
        held = self._of.get(position.account_id, ())
        for other in held:  # a loop, not any() over a generator: this runs for every position opened
            if other.symbol == position.symbol:
                raise InvariantViolation(f"{position.account_id} already holds a {position.symbol} position")
        self._of[position.account_id] = (*held, position)

    def remove(self, position: Position) -> None:
        held = self._of[position.account_id]
        if len(held) == 1 and held[0] is position:  # the usual case: the account's only position
            del self._of[position.account_id]
            return
        rest = tuple([p for p in held if p is not position])
        if len(rest) == len(held):
            raise InvariantViolation(f"{position.account_id} holds no such {position.symbol} position to remove")
        if rest:
            self._of[position.account_id] = rest
        else:
            del self._of[position.account_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._of)

    def __len__(self) -> int:
        return len(self._of)

    def __contains__(self, account_id: object) -> bool:
        return account_id in self._of


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
        """The reported BP of the lot: HALF_EVEN(cost / qty) to 1e-8 (the rules use the exact cost, never this)."""
        return average_price(self.cost, self.qty)


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
