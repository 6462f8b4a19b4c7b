"""The rounding rules of docs/design.md §9.4 and the canonical decimal text that hashes depend on."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, Inexact, Rounded, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backstop.core.numbers import (
    CONTEXT,
    average_price,
    bankruptcy_price,
    cross_equity_share,
    div,
    equity_behind,
    initial_margin,
    maintenance,
    money,
    share,
    text,
    whole_steps,
)

D = Decimal
decimals = st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("-1e20"), max_value=Decimal("1e20"),
                       places=None).filter(lambda d: abs(d.as_tuple().exponent) <= 30)  # type: ignore[arg-type]


@given(decimals)
def test_text_is_canonical_plain_and_exact(value: Decimal) -> None:
    rendered = text(value)
    assert Decimal(rendered) == value
    assert "E" not in rendered and "e" not in rendered
    assert rendered == text(Decimal(rendered))  # one spelling per value: "1.50" and "1.5" hash alike
    assert not ("." in rendered and rendered.endswith("0")) and rendered != "-0"


def test_text_writes_exponents_and_trailing_zeros_out() -> None:
    assert [text(Decimal(v)) for v in ("9.3E+4", "93000.00000000", "1E-8", "-0.000", "-1.50", "12")] == [
        "93000", "93000", "0.00000001", "0", "-1.5", "12"]


def _exact(numerator: Decimal, denominator: Decimal, quantum: Decimal, rounding: str) -> Decimal:
    """The rule as written: the rational value, rounded once (Fractions, no decimal arithmetic at all)."""
    units = Fraction(numerator) / Fraction(denominator) / Fraction(quantum)
    floor = math.floor(units)
    if rounding == ROUND_FLOOR or units == floor:
        chosen = floor
    elif rounding == ROUND_CEILING:
        chosen = floor + 1
    else:
        above = units - floor
        chosen = floor + (1 if above > Fraction(1, 2) or (above == Fraction(1, 2) and floor % 2) else 0)
    return CONTEXT.multiply(Decimal(chosen), quantum)


wide = st.builds(lambda digits, exponent: Decimal(digits).scaleb(exponent), st.integers(-(10 ** 40), 10 ** 40),
                 st.integers(-34, 22))


@given(wide, wide.filter(lambda d: d != 0), st.sampled_from([D("1e-8"), D("1e-12"), D("1e-16"), D(1), D(100)]),
       st.sampled_from([ROUND_HALF_EVEN, ROUND_CEILING, ROUND_FLOOR]))
def test_div_rounds_the_exact_rational_once(numerator: Decimal, denominator: Decimal, quantum: Decimal,
                                            rounding: str) -> None:
    assert div(numerator, denominator, quantum, rounding) == _exact(numerator, denominator, quantum, rounding)


def test_div_does_not_round_twice() -> None:
    # 1.5e-8 minus 1e-79: a 60-digit division used to see the tie 1.5e-8 and round it to the even 2e-8
    numerator, denominator = Decimal(15 * 10 ** 70 - 1), Decimal(10) ** 79
    assert div(numerator, denominator, D("1e-8"), ROUND_HALF_EVEN) == D("1e-8")
    with localcontext() as sixty:
        sixty.prec = 60
        assert (numerator / denominator).quantize(D("1e-8"), rounding=ROUND_HALF_EVEN) == D("2e-8")


def test_half_even_ceiling_and_floor_to_the_quantum() -> None:
    q = D("1e-8")
    assert div(D("0.000000005"), D(1), q, ROUND_HALF_EVEN) == 0
    assert div(D("0.000000015"), D(1), q, ROUND_HALF_EVEN) == D("0.00000002")
    assert div(D(2), D(3), q, ROUND_HALF_EVEN) == D("0.66666667")
    assert div(D(-2), D(3), q, ROUND_FLOOR) == D("-0.66666667")
    assert div(D(-2), D(3), q, ROUND_CEILING) == D("-0.66666666")
    assert div(D(1), D(-3), q, ROUND_CEILING) == D("-0.33333333")


def test_context_keeps_sums_and_products_exact_or_stops() -> None:
    big = Decimal("12345678901234567890.123456789012345678")
    with localcontext(CONTEXT):
        assert Fraction(big * big) == Fraction(big) ** 2  # 76 digits: exact, where a 60-digit context rounded
        with pytest.raises((Inexact, Rounded)):
            _ = (big ** 5) * big  # beyond the precision: a bug that stops, never a silent rounding


def test_a_share_is_half_even_never_beyond_its_total_and_the_whole_takes_the_rest() -> None:
    assert share(D("100.000000001"), D(3), D(3)) == D("100.000000001")
    assert share(D(100), D(1), D(3)) == D("33.33333333")
    assert share(D(-100), D(2), D(3)) == D("-66.66666667")
    # a cost below 1e-8: 3/4 of 0.000000009 rounds to 0.00000001, more than the cost: the share is the cost
    assert share(D("0.000000009"), D(3), D(4)) == D("0.000000009")


def test_named_rules_round_where_the_design_says() -> None:
    assert initial_margin(D("100.00000001"), D(3)) == D("33.33333334")  # 33.333333336... half-even
    assert maintenance(D("12345.678"), D("0.004"), D(0)) == D("49.38271200")
    assert maintenance(D("0.000000011"), D("0.5"), D(0)) == D("0.00000001")  # 5.5e-9, half-even
    assert maintenance(D("0.000000009"), D("0.5"), D(0)) == 0  # 4.5e-9
    assert maintenance(D(100), D("0.01"), D(5)) == 0  # never below zero
    assert cross_equity_share(D(500), D(415), D("602.5")) == D("344.39834025")  # 344.3983402489... rounded up
    assert cross_equity_share(D(-500), D(415), D("602.5")) == D("-344.39834024")  # up is toward +infinity
    assert cross_equity_share(D("12.5"), D(0), D(0)) == D("12.5")  # no maintenance margin: the whole TNC
    assert equity_behind(D("344.39834025"), D("0.3"), D(1)) == D("103.31950208")  # 103.319502075 rounded up
    assert equity_behind(D("0.000000001"), D(1), D(1)) == D("0.00000001")  # the whole position: CEILING(share)
    assert bankruptcy_price(D(200), D(3), long=True) == D("66.66666666")  # a long rounds down
    assert bankruptcy_price(D(200), D(3), long=False) == D("66.66666667")  # a short up
    assert average_price(D(200), D(3)) == D("66.66666667")
    assert whole_steps(D(7), D(3), D("0.5")) == D(2)  # 2.333... is 4 half-lots, floored
    assert whole_steps(D(7), D(3), D("0.5"), ROUND_CEILING) == D("2.5")


@given(wide.filter(lambda d: d != 0))
def test_money_is_a_single_half_even_rounding(value: Decimal) -> None:
    assert money(value) == _exact(value, D(1), D("1e-8"), ROUND_HALF_EVEN)
