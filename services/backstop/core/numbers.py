"""Exact numbers and the rounding rules, in one place.

All arithmetic runs in CONTEXT (60 significant digits, ROUND_HALF_EVEN, traps on), so results never depend
on the caller's decimal context. Inputs hold at most 38 digits, so sums and products of two inputs are
exact; only divisions round, and each one is quantized by a named rule below:

- money (every ledger amount): MONEY_QUANTUM = 1e-8 of the settlement asset, ROUND_HALF_EVEN;
- the equity share behind a takeover (which fixes the price the fund takes the lot at): rounded up
  (ROUND_CEILING), so the fund's lot is never booked at a price worse for the fund than the exact BP;
- pro-rata shares of a cost basis or an isolated margin: MONEY_QUANTUM, ROUND_HALF_EVEN; a full close
  takes the exact remainder, so nothing leaks;
- reported prices (entry, bankruptcy, liquidation, ADL price): PRICE_QUANTUM = 1e-8, ROUND_HALF_EVEN;
- ADL scores and leverages: SCORE_QUANTUM = 1e-12, ROUND_HALF_EVEN; ranking uses the quantized score.
"""

from __future__ import annotations

from decimal import (
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)

CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])
MONEY_QUANTUM = Decimal("1e-8")
PRICE_QUANTUM = Decimal("1e-8")
SCORE_QUANTUM = Decimal("1e-12")
ZERO = Decimal(0)


def money(value: Decimal) -> Decimal:
    """A ledger amount: quantized to the asset unit, half-even."""
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN, context=CONTEXT)


def money_up(value: Decimal) -> Decimal:
    """A ledger amount rounded toward +infinity (used where the rule says 'in the fund's favour')."""
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_CEILING, context=CONTEXT)


def price(value: Decimal) -> Decimal:
    """A reported price."""
    return value.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_EVEN, context=CONTEXT)


def score(value: Decimal) -> Decimal:
    """An ADL score or leverage."""
    return value.quantize(SCORE_QUANTUM, rounding=ROUND_HALF_EVEN, context=CONTEXT)


def share(total: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """The pro-rata share part/whole of total, quantized as money; the whole takes it all exactly."""
    if part == whole:
        return total
    return money(CONTEXT.divide(CONTEXT.multiply(total, part), whole))


def is_multiple(value: Decimal, step: Decimal) -> bool:
    """True when value is an exact multiple of step (tick or lot size)."""
    return CONTEXT.remainder(value, step) == 0


def text(value: Decimal) -> str:
    """Canonical decimal text for the wire: plain notation, no exponent, trailing zeros removed ("-0" -> "0")."""
    plain = str(value)
    if "E" not in plain and not ("." in plain and plain[-1] == "0") and plain != "-0":
        return plain  # already canonical: the common case, decimals as they came off the wire
    if value == 0:
        return "0"
    return f"{value.normalize(CONTEXT):f}"  # "f" writes a positive exponent out in zeros: 9.3E+4 -> 93000
