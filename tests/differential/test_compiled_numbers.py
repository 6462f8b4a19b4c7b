"""The compiled engine's numbers (crates/backstop-engine/src/numbers.rs) against Python's decimal module: parsing
wire text per kind, the canonical text of docs/design.md section 9.5, and division rounded once."""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backstop import _engine
from backstop.core.numbers import text

# kind -> (integer digits, fraction digits, scale) of docs/design.md section 9.2
KINDS = {"QTY": (12, 8, 8), "PRICE": (10, 8, 8), "MONEY": (16, 8, 8), "RATE": (4, 18, 18), "LEVERAGE": (4, 8, 8)}
PLAIN = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
WIDE = Context(prec=200)
ROUNDINGS = {"HALF_EVEN": ROUND_HALF_EVEN, "CEILING": ROUND_CEILING, "FLOOR": ROUND_FLOOR}
I256_MAX = 2**255 - 1

digits = st.text(alphabet="0123456789", min_size=0, max_size=24)
wire_text = st.one_of(
    st.builds(lambda sign, i, f: f"{sign}{i}{f}", st.sampled_from(["", "-"]), digits,
              st.one_of(st.just(""), digits.map(lambda d: "." + d))),
    st.text(alphabet="0123456789.-+eE _xN", max_size=12),
)


def expected_parse(value: str, kind: str) -> str:
    integer_digits, fraction_digits, scale = KINDS[kind]
    if not PLAIN.fullmatch(value):
        return "syntax"
    integer, _, fraction = value.lstrip("-").partition(".")
    if len(integer) > integer_digits or len(fraction) > fraction_digits:
        return "bounds"
    return str(int(Decimal(value).scaleb(scale, WIDE)))


@given(wire_text, st.sampled_from(sorted(KINDS)))
@example("1234567890123.5", "QTY")
@example("-0.000", "MONEY")
@example("9999.999999999999999999", "RATE")
@example("00.5", "PRICE")
def test_parse_agrees_with_decimal(value: str, kind: str) -> None:
    try:
        got = _engine.numbers_parse(value, kind)
    except ValueError as error:
        got = str(error)
    assert got == expected_parse(value, kind)


@given(st.integers(min_value=-(10**60) + 1, max_value=10**60 - 1), st.integers(min_value=0, max_value=40))
@example(0, 8)
@example(-1, 8)
@example(10**20, 8)
@example(-1234500000, 4)
def test_canonical_text_is_the_reference_text(value: int, scale: int) -> None:
    assert _engine.numbers_text(str(value), scale) == text(Decimal(value).scaleb(-scale, WIDE))


@given(st.integers(min_value=-I256_MAX, max_value=I256_MAX), st.integers(min_value=0, max_value=76))
@example(-(10**70), 70)
@example(I256_MAX, 0)
def test_canonical_text_of_wide_values(value: int, scale: int) -> None:
    # beyond the reference's context: the same rule, with a context wide enough for 256 bits
    exact = Decimal(value).scaleb(-scale, WIDE)
    expected = "0" if value == 0 else f"{exact.normalize(WIDE):f}"
    assert _engine.numbers_text(str(value), scale) == expected


def exact_quotient(numerator: int, denominator: int, rounding: str) -> int:
    # 200 digits hold the quotient of 256-bit integers far beyond the units digit, so quantizing it rounds the
    # exact value (a tie is a terminating decimal, exact in the context)
    quotient = WIDE.divide(Decimal(numerator), Decimal(denominator))
    return int(quotient.quantize(Decimal(1), rounding=ROUNDINGS[rounding], context=WIDE))


@given(st.integers(min_value=-I256_MAX, max_value=I256_MAX),
       st.integers(min_value=-(2**200), max_value=2**200).filter(lambda d: d != 0),
       st.sampled_from(sorted(ROUNDINGS)))
@example(5, 2, "HALF_EVEN")
@example(-5, 2, "HALF_EVEN")
@example(-7, 2, "CEILING")
@example(-7, 2, "FLOOR")
@example(10**60 + 1, 10**30, "CEILING")
@example(I256_MAX, -1, "FLOOR")
def test_division_rounds_the_exact_quotient_once(numerator: int, denominator: int, rounding: str) -> None:
    assert int(_engine.numbers_div(str(numerator), str(denominator), rounding)) == exact_quotient(
        numerator, denominator, rounding)


@given(st.integers(min_value=-(10**30), max_value=10**30), st.integers(min_value=1, max_value=10**6),
       st.sampled_from(sorted(ROUNDINGS)))
def test_small_divisions_round_like_decimal(numerator: int, denominator: int, rounding: str) -> None:
    assert int(_engine.numbers_div(str(numerator), str(denominator), rounding)) == exact_quotient(
        numerator, denominator, rounding)


def test_unknown_rounding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown rounding"):
        _engine.numbers_div("1", "2", "UP")


I512_MAX = 2**511 - 1


def exact_integer_quotient(numerator: int, denominator: int, rounding: str) -> int:
    """The rounded quotient from Python's integers alone (floor and remainder, then the rule)."""
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    floor, rest = divmod(numerator, denominator)
    if rest == 0 or rounding == "FLOOR":
        return floor
    if rounding == "CEILING":
        return floor + 1
    twice = 2 * rest
    return floor + (1 if twice > denominator or (twice == denominator and floor % 2) else 0)


@given(st.integers(min_value=-I512_MAX, max_value=I512_MAX),
       st.one_of(st.integers(min_value=-I512_MAX, max_value=I512_MAX), st.integers(-(2**130), 2**130))
       .filter(lambda d: d != 0),
       st.sampled_from(sorted(ROUNDINGS)))
@example(7 * 10**120, 2 * 10**120, "HALF_EVEN")
@example(-7 * 10**120, 2 * 10**120, "HALF_EVEN")
@example(5 * 10**120, 2 * 10**120, "HALF_EVEN")
@example(-(10**150) - 1, 10**75, "FLOOR")
@example(I512_MAX, -1, "CEILING")
@example(2**300 + 1, 2**299, "HALF_EVEN")
def test_division_of_512_bit_values_rounds_the_exact_quotient_once(numerator: int, denominator: int,
                                                                    rounding: str) -> None:
    """Values derived from a balance (docs/design.md §9.3) are divided in 512 bits; the result is Python's exact one."""
    assert int(_engine.numbers_div(str(numerator), str(denominator), rounding)) == exact_integer_quotient(
        numerator, denominator, rounding)


@given(st.integers(min_value=-I512_MAX, max_value=I512_MAX), st.integers(min_value=0, max_value=160))
@example(-(10**150) + 1, 34)
@example(I512_MAX, 0)
@example(10**120, 121)
def test_canonical_text_of_512_bit_values(value: int, scale: int) -> None:
    exact = Decimal(value).scaleb(-scale, WIDE)
    expected = "0" if value == 0 else f"{exact.normalize(WIDE):f}"
    assert _engine.numbers_text(str(value), scale) == expected
