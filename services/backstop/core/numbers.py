"""Exact numbers and the rounding rules of docs/design.md §9, in one place.

Sums, differences and products are exact: CONTEXT's precision is above every value the rules form from input
within the bounds of §9.2 and state within those of §9.3, and CONTEXT traps Inexact and Rounded, so an inexact
+, - or x is a bug that stops the engine (InvariantViolation's kin), never a silent rounding. Every division goes
through `div`, which rounds the exact rational value once, with integer arithmetic, to a named quantum in a named
direction. The named rules of §9.4 below are thin functions over `div` or over one rounding of an exact value;
nothing else in the engine rounds.
"""

from __future__ import annotations

from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
)

# More digits than the widest integer the compiled engine forms (§9.3): no exact result within the bounds reaches
# it, so Rounded is only ever a bug.
PRECISION = 160
CONTEXT = Context(prec=PRECISION, rounding=ROUND_HALF_EVEN,
                  traps=[InvalidOperation, DivisionByZero, Overflow, Inexact, Rounded])
_ROUNDING = Context(prec=PRECISION, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])

MONEY_QUANTUM = Decimal("1e-8")  # every ledger amount, in units of the settlement asset
PRICE_QUANTUM = Decimal("1e-8")  # every computed price
SCORE_QUANTUM = Decimal("1e-12")  # ADL scores and the explain-only ratios
ZERO = Decimal(0)
ONE = Decimal(1)
MAX_POSITION_QTY = Decimal(10) ** 12  # §9.3: a position holds less, and a liquidation's lot leaves a fund's net so
MAX_MONEY = Decimal(10) ** 16  # §9.2: a MONEY field has at most 16 integer digits (a derived maint_amount too)
MAX_COST = Decimal(10) ** 22  # §9.3: a position's cost basis stays below it
BALANCE_BOUND = Decimal(10) ** 68  # §9.3: every ledger balance stays below it in magnitude (a 256-bit integer)
LARGEST_PRICE = Decimal("9999999999.99999999")  # §9.2: the largest PRICE the wire admits (a record the engine writes)

_POWERS_OF_TEN = [10 ** places for places in range(2 * PRECISION)]


def div(numerator: Decimal, denominator: Decimal, quantum: Decimal, rounding: str) -> Decimal:
    """numerator / denominator rounded once, from the exact rational value, to a multiple of quantum (a power of ten)
    toward ROUND_HALF_EVEN, ROUND_CEILING or ROUND_FLOOR. Integer arithmetic throughout: no intermediate rounding."""
    top, n_den = numerator.as_integer_ratio()
    d_num, d_den = denominator.as_integer_ratio()
    if d_num == 0:
        raise DivisionByZero(f"{numerator} / 0")
    top, bottom = top * d_den, n_den * d_num
    places = -quantum.adjusted()  # the quotient in units of the quantum: top / bottom x 10^places
    if places >= 0:
        top *= _POWERS_OF_TEN[places]
    else:
        bottom *= _POWERS_OF_TEN[-places]
    if bottom < 0:
        top, bottom = -top, -bottom
    units, rest = divmod(top, bottom)  # floor division: rest in [0, bottom)
    if rest:
        if rounding == ROUND_HALF_EVEN:
            twice = 2 * rest
            if twice > bottom or (twice == bottom and units & 1):
                units += 1
        elif rounding == ROUND_CEILING:
            units += 1
        elif rounding != ROUND_FLOOR:
            raise ValueError(f"unsupported rounding {rounding}")
    return Decimal(units).scaleb(-places, context=CONTEXT)


def rounded(value: Decimal, quantum: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    """An exact value rounded once to a multiple of quantum."""
    return value.quantize(quantum, rounding=rounding, context=_ROUNDING)


def money(value: Decimal) -> Decimal:
    """An exact amount rounded half-even to the asset unit: realized PnL, funding, fund gains, reported money."""
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN, context=_ROUNDING)


def is_money(value: Decimal) -> bool:
    """True when value is a whole number of asset units (a ledger posting must be)."""
    return value == money(value)


# ---------------------------------------------------------------------------------------------- the rules of §9.4
def initial_margin(value: Decimal, leverage: Decimal) -> Decimal:
    """Isolated margin posted at an open: HALF_EVEN(value / leverage) to 1e-8."""
    return div(value, leverage, MONEY_QUANTUM, ROUND_HALF_EVEN)


def share(total: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """The pro-rata share part/whole of total (a cost basis, an isolated margin, a lot's cost): HALF_EVEN to 1e-8,
    never beyond total (a cost below 1e-8 could round up past it); the whole takes total exactly."""
    if part == whole:
        return total
    result = div(CONTEXT.multiply(total, part), whole, MONEY_QUANTUM, ROUND_HALF_EVEN)
    return total if abs(result) > abs(total) else result


def maintenance(notional: Decimal, mmr: Decimal, maint_amount: Decimal) -> Decimal:
    """MM of a position: max(HALF_EVEN(notional x mmr) - maint_amount, 0), rounded before the subtraction."""
    return max(money(CONTEXT.multiply(notional, mmr)) - maint_amount, ZERO)


def funding_payment(signed_value: Decimal, rate: Decimal) -> Decimal:
    """What a position worth signed_value at the funding's mark pays (signed as its qty): HALF_EVEN(value x rate)
    to 1e-8 (linear: qty x mark x rate)."""
    return money(CONTEXT.multiply(signed_value, rate))


def cross_equity_share(tnc: Decimal, position_mm: Decimal, total_mm: Decimal) -> Decimal:
    """A cross position's share of the account's equity: CEILING(TNC x MM_j / TMM) to 1e-8; TNC itself when TMM = 0."""
    if total_mm == 0:
        return tnc
    return div(CONTEXT.multiply(tnc, position_mm), total_mm, MONEY_QUANTUM, ROUND_CEILING)


def equity_behind(equity_share: Decimal, qty: Decimal, size: Decimal) -> Decimal:
    """The equity behind a liquidated qty of a position of `size`: CEILING(share x qty / size) to 1e-8 (the fund's
    favour); the whole position: CEILING(share)."""
    if qty == size:
        return rounded(equity_share, MONEY_QUANTUM, ROUND_CEILING)
    return div(CONTEXT.multiply(equity_share, qty), size, MONEY_QUANTUM, ROUND_CEILING)


def bankruptcy_price(numerator: Decimal, size: Decimal, *, long: bool) -> Decimal:
    """A position's BP, numerator / size (numerator: cost -/+ margin, or size x mark -/+ equity share), to 1e-8 in the
    fund's favour: FLOOR for a long, CEILING for a short."""
    return div(numerator, size, PRICE_QUANTUM, ROUND_FLOOR if long else ROUND_CEILING)


def average_price(cost: Decimal, qty: Decimal) -> Decimal:
    """A reported price (entry price, a lot's BP, an ADL fill price, a takeover's computed BP): HALF_EVEN(cost / qty)
    to 1e-8."""
    return div(cost, qty, PRICE_QUANTUM, ROUND_HALF_EVEN)


def liquidation_candidate(numerator: Decimal, denominator: Decimal) -> Decimal:
    """One bracket's liquidation price: HALF_EVEN(numerator / denominator) to 1e-8 (margin.liquidation_price)."""
    return div(numerator, denominator, PRICE_QUANTUM, ROUND_HALF_EVEN)


def surplus_cap(liquidation_fee_rate: Decimal, proceeds: Decimal) -> Decimal:
    """What a fund keeps of a gain under `surplus: trader`: HALF_EVEN(liquidation_fee_rate x proceeds) to 1e-8."""
    return money(CONTEXT.multiply(liquidation_fee_rate, proceeds))


def ratio(numerator: Decimal, denominator: Decimal) -> Decimal:
    """An ADL score or an explain-only ratio (PnL%, leverage): HALF_EVEN(numerator / denominator) to 1e-12."""
    return div(numerator, denominator, SCORE_QUANTUM, ROUND_HALF_EVEN)


def whole_steps(numerator: Decimal, denominator: Decimal, step: Decimal, rounding: str = ROUND_FLOOR) -> Decimal:
    """numerator / denominator rounded once to a multiple of step (a lot or a tick): FLOOR unless told otherwise."""
    return CONTEXT.multiply(div(numerator, CONTEXT.multiply(denominator, step), ONE, rounding), step)


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
