"""Engine state: plain mutable records owned by the engine. Money balances live in the ledger, not here."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from backstop.core.errors import InvariantViolation
from backstop.core.numbers import ZERO
from backstop.core.valuation import LINEAR, Valuation

MarginMode = Literal["cross", "isolated"]
SurplusPolicy = Literal["fund", "trader"]
Side = Literal["long", "short"]
PositionSide = Literal["both", "long", "short"]  # both: one-way mode; long, short: a hedge-mode side (§7)
PositionKey = tuple[str, PositionSide]  # (account_id, position_side): a position among one symbol's


def position_label(symbol: str, position_side: PositionSide) -> str:
    """How a position is named (accounts.json, isolated ledger accounts): the symbol in one-way mode,
    `<symbol>:long` / `<symbol>:short` in hedge mode (docs/design.md §7)."""
    return symbol if position_side == "both" else f"{symbol}:{position_side}"


@dataclass(frozen=True, slots=True)
class Tier:
    max_notional: Decimal
    mmr: Decimal
    maint_amount: Decimal


DEFAULT_MARK_TOLERANCE = Decimal("0.005")  # docs/design.md §7: a liquidation's mark this far from the one in force


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    settle_asset: str
    tick_size: Decimal
    lot_size: Decimal
    tiers: tuple[Tier, ...]  # maint_amount checked against (or derived from) the brackets
    liquidation_fee_rate: Decimal
    fund_id: str
    mark_tolerance: Decimal = DEFAULT_MARK_TOLERANCE
    valuation: Valuation = LINEAR  # linear, or inverse with its contract_size (docs/design.md §7)

    @property
    def contract_type(self) -> Literal["linear", "inverse"]:
        return "inverse" if self.valuation.inverse else "linear"


@dataclass(frozen=True, slots=True)
class FundSpec:
    fund_id: str
    settle_asset: str
    surplus: SurplusPolicy
    max_inventory_ratio: Decimal


@dataclass(slots=True)
class Position:
    """A position: signed qty (long > 0) and exact cost basis |qty| x entry. One account holds one per symbol in
    one-way mode (position_side both), or one per side in hedge mode (position_side long or short, whose qty has
    that sign): a position is keyed (account, symbol, position_side)."""

    account_id: str
    symbol: str
    qty: Decimal
    cost: Decimal
    margin_mode: MarginMode
    leverage: Decimal
    position_side: PositionSide = "both"
    adl_quantile: int = 0  # the quantile last published for it (docs/design.md §10, "ADL quantiles"); 0: none

    @property
    def side(self) -> Side:
        return "long" if self.qty > 0 else "short"

    @property
    def key(self) -> PositionKey:
        return self.account_id, self.position_side

    @property
    def label(self) -> str:
        return position_label(self.symbol, self.position_side)

    @property
    def size(self) -> Decimal:
        return abs(self.qty)

    def entry_price(self, valuation: Valuation) -> Decimal:
        """The reported entry price: HALF_EVEN(cost / size) to 1e-8, or the harmonic HALF_EVEN(size x s / cost) of an
        inverse contract (the rules use the exact cost, never this)."""
        return valuation.reported_price(self.size, self.cost)

    def unrealized_pnl(self, mark: Decimal, valuation: Valuation) -> Decimal:
        """Value at mark - cost for a long in value space (a linear long, an inverse short), cost - value else."""
        value = valuation.value(self.size, mark)
        return value - self.cost if valuation.value_long(self.qty > 0) else self.cost - value


class Positions:
    """Open positions by account, each account's in a tuple in the order they opened. An account holds one or a
    few, so a scan finds a symbol as fast as a dict lookup, and a tuple of one is 48 bytes where a dict of one is
    184 (memory per open position is a benchmark goal). Iterating yields accounts in the order they first opened."""

    __slots__ = ("_of",)

    def __init__(self) -> None:
        self._of: dict[str, tuple[Position, ...]] = {}

    def get(self, account_id: str, symbol: str, position_side: PositionSide = "both") -> Position | None:
        for position in self._of.get(account_id, ()):
            if position.symbol == symbol and position.position_side == position_side:
                return position
        return None

    def in_symbol(self, account_id: str, symbol: str) -> list[Position]:
        """The account's positions in a symbol: none, its one-way position, or its hedge sides."""
        return [position for position in self._of.get(account_id, ()) if position.symbol == symbol]

    def of(self, account_id: str) -> tuple[Position, ...]:
        return self._of.get(account_id, ())

    def in_symbol_order(self, account_id: str) -> list[Position]:
        """The account's positions by symbol, then long before short (reports and snapshots must not depend on the
        order they opened)."""
        held = self._of.get(account_id, ())
        return list(held) if len(held) < 2 else sorted(held, key=lambda p: (p.symbol, p.position_side))

    def add(self, position: Position) -> None:
        """Open a position; its account must hold none with its key (a malformed snapshot could say so)."""
        held = self._of.get(position.account_id, ())
        for other in held:  # a loop, not any() over a generator: this runs for every position opened
            if other.symbol == position.symbol and other.position_side == position.position_side:
                raise InvariantViolation(f"{position.account_id} already holds a {position.label} position")
        self._of[position.account_id] = (*held, position)

    def remove(self, position: Position) -> None:
        held = self._of[position.account_id]
        if len(held) == 1 and held[0] is position:  # the usual case: the account's only position
            del self._of[position.account_id]
            return
        rest = tuple([p for p in held if p is not position])
        if len(rest) == len(held):
            raise InvariantViolation(f"{position.account_id} holds no such {position.label} position to remove")
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

    def bankruptcy_price(self, valuation: Valuation) -> Decimal:
        """The reported BP of the lot: the price of its cost, HALF_EVEN to 1e-8 (the rules use the exact cost)."""
        return valuation.reported_price(self.qty, self.cost)


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
