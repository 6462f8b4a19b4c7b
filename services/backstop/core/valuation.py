"""What a position is worth in its settlement asset, linear or inverse (docs/design.md §7): the one place where the
two contract types differ.

Linear: the value of q contracts at P is q x P (exact). Inverse (coin-margined): |q| x s / P, s the quote value of
one contract, rounded HALF_EVEN to 1e-16 (the internal scale of linear's exact q x P): the only new division in value
space. Every rule about money uses `value` where linear uses q x P. In value space an inverse long is a short (its
coin PnL rises as its value at mark falls), so a rule that says "long: X, short: Y" about money takes the formula of
`value_long`; a rule about contracts (the ADL queue's side, a lot's side, the funding payer) keeps the contract side.
A price is read back from a value with `price`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from backstop.core.numbers import CONTEXT, LARGEST_PRICE, PRICE_QUANTUM, ZERO, div, whole_steps

VALUE_QUANTUM = Decimal("1e-16")
MAX_FACE = Decimal(10) ** 14  # docs/design.md §9.3: an inverse position's |q| x s stays below it


@dataclass(frozen=True, slots=True)
class Valuation:
    """An instrument's valuation: linear (contract_size None) or inverse with that contract size."""

    contract_size: Decimal | None = None

    @property
    def inverse(self) -> bool:
        return self.contract_size is not None

    def value(self, qty: Decimal, price: Decimal) -> Decimal:
        """V(qty, P) of a size (qty >= 0): qty x P, or HALF_EVEN(qty x s / P) to 1e-16 for an inverse contract."""
        size = self.contract_size
        if size is None:
            return CONTEXT.multiply(qty, price)
        return div(CONTEXT.multiply(qty, size), price, VALUE_QUANTUM, ROUND_HALF_EVEN)

    def reported_value(self, qty: Decimal, reported_price: Decimal) -> Decimal:
        """The value of qty at a reported price (an ADL event's, summed in summaries): V(qty, price), and 0 at a
        reported price of 0, which stands for a value of 0 (reported_price)."""
        if reported_price == 0:
            return ZERO
        return self.value(qty, reported_price)

    def signed_value(self, qty: Decimal, price: Decimal) -> Decimal:
        """The value of a signed qty, signed as the qty (funding: a long pays when the rate is positive)."""
        value = self.value(abs(qty), price)
        return -value if qty < 0 else value

    def face(self, qty: Decimal) -> Decimal:
        """|qty| x s: an inverse position's face value in the quote currency (the MAX_FACE bound)."""
        return CONTEXT.multiply(abs(qty), self.contract_size or ZERO)

    def qty_of(self, value: Decimal, price: Decimal, step: Decimal, rounding: str) -> Decimal:
        """The qty worth `value` at `price`, rounded once to a multiple of step (a lot): value / price, or
        value x price / s (inverse)."""
        size = self.contract_size
        if size is None:
            return whole_steps(value, price, step, rounding)
        return whole_steps(CONTEXT.multiply(value, price), size, step, rounding)

    def value_long(self, long: bool) -> bool:
        """Whether a position of this contract side gains in value space as its value at the mark rises: a linear
        long, an inverse short."""
        return long != self.inverse

    def price(self, qty: Decimal, value: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
        """The price at which a size is worth `value`, to 1e-8: value / qty, or qty x s / value for an inverse
        contract, whose value <= 0 no price reaches (the largest PRICE stands for it)."""
        size = self.contract_size
        if size is None:
            return div(value, qty, PRICE_QUANTUM, rounding)
        if value <= 0:
            return LARGEST_PRICE
        return div(CONTEXT.multiply(qty, size), value, PRICE_QUANTUM, rounding)

    def reported_price(self, qty: Decimal, value: Decimal) -> Decimal:
        """A reported price (an entry price, a lot's BP, an ADL fill price): HALF_EVEN to 1e-8; "0" for a value of 0
        (a cost that rounded away)."""
        if value == 0 and self.contract_size is not None:
            return ZERO
        return self.price(qty, value)

    def bankruptcy_price(self, value: Decimal, size: Decimal, *, long: bool) -> Decimal:
        """A position's BP from its value at bankruptcy, to 1e-8 in the fund's favour: FLOOR for a long, CEILING for a
        short (the contract side). Inverse with a value <= 0 (a long bankrupt at every price, a short never): the
        largest PRICE."""
        if self.contract_size is not None and value <= 0:
            return LARGEST_PRICE
        return self.price(size, value, ROUND_FLOOR if long else ROUND_CEILING)


LINEAR = Valuation()
