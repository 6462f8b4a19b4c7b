"""The rounding rules and the canonical decimal text that hashes depend on."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from backstop.core.numbers import money, money_up, price, share, text

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


def test_money_rounds_half_even_to_the_asset_unit() -> None:
    assert money(Decimal("0.000000005")) == Decimal("0")
    assert money(Decimal("0.000000015")) == Decimal("0.00000002")
    assert money_up(Decimal("0.000000001")) == Decimal("0.00000001")
    assert money_up(Decimal("-0.000000019")) == Decimal("-0.00000001")
    assert price(Decimal(2) / Decimal(3)) == Decimal("0.66666667")


def test_a_full_share_takes_the_exact_remainder() -> None:
    assert share(Decimal("100.000000001"), Decimal(3), Decimal(3)) == Decimal("100.000000001")
    assert share(Decimal(100), Decimal(1), Decimal(3)) == Decimal("33.33333333")
