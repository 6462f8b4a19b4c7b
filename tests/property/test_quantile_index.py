"""The quantiles and stressed sizes a quantile point takes from the ADL index's float rows are the exact ranking's:
for every position of a side, and after the mark moves, for exactly the positions whose quantile changed."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from test_adl_index import LOT, MARK, books, cheap_books, engine_with

from backstop.core import quantiles
from backstop.core.engine import Engine
from backstop.core.numbers import CONTEXT
from backstop.core.quantile_index import side_quantiles

D = Decimal


def exact(engine: Engine, symbol: str, side: Any) -> tuple[dict[str, int], Decimal]:
    view = quantiles.side_view(engine, symbol, side)
    return {account: quantile for account, (_, quantile) in view.ranks.items()}, view.stressed_size


def indexed(engine: Engine, symbol: str, side: Any) -> tuple[dict[str, int], Decimal]:
    """What a quantile point computes, as changes against the quantiles published so far; those become published."""
    engine.refresh_adl_index()
    rows = engine.adl_index.book(symbol, side)
    if rows is None:
        return {}, D(0)
    from decimal import localcontext

    with localcontext(CONTEXT):
        changes, stressed = side_quantiles(rows, engine.marks[symbol], side,
                                           lambda a: engine.ranked(engine.position_of(a, symbol, side)),
                                           lambda a: engine.position_of(a, symbol, side).adl_quantile)
    for account, quantile in changes:
        engine.position_of(account, symbol, side).adl_quantile = quantile
    return dict(changes), stressed


def published(engine: Engine, symbol: str, side: str) -> dict[str, int]:
    return {p.account_id: p.adl_quantile for p in engine.by_symbol[symbol].values() if p.side == side}


@given(books(), st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from(["long", "short"]),
       st.lists(st.integers(700, 1300), min_size=1, max_size=3))
def test_indexed_quantiles_are_the_exact_ranking_s(rows: list[dict[str, Any]], symbol: str, side: str,
                                                   moves: list[int]) -> None:
    engine = engine_with(rows, MARK)
    for move in moves:  # the mark moves: only the positions whose quantile changed come back
        before = published(engine, symbol, side)
        engine.marks[symbol] = (MARK[symbol] * move / 1000).quantize(D("0.1"))
        want, want_stressed = exact(engine, symbol, side)
        changes, stressed = indexed(engine, symbol, side)
        assert stressed == want_stressed
        assert changes == {a: q for a, q in want.items() if before.get(a) != q}
        assert published(engine, symbol, side) == want


@given(cheap_books(), st.sampled_from(["long", "short"]))
def test_indexed_quantiles_allow_for_the_rounded_bankruptcy_price(book: tuple[list[dict[str, Any]], Decimal],
                                                                  side: str) -> None:
    rows, mark = book
    engine = engine_with(rows, {**MARK, "MEMEUSDT": mark})
    want, want_stressed = exact(engine, "MEMEUSDT", side)
    changes, stressed = indexed(engine, "MEMEUSDT", side)
    assert (changes, stressed) == (want, want_stressed)


@given(st.integers(5, 400), st.integers(0, 60), st.sampled_from(["long", "short"]))
def test_rows_alike_across_a_quantile_boundary_are_ranked_by_account(alike: int, others: int, side: str) -> None:
    """Many positions with the same numbers score exactly alike: float order cannot place them, the exact order
    (size, then account id) does, also where a quantile boundary runs through them."""
    sign = 1 if side == "long" else -1
    rows = [{"account": f"x{n:04d}", "symbol": "BTCUSDT", "side": sign, "qty": D("0.5"), "entry": D("49000") if
             sign > 0 else D("51000"), "mode": "isolated", "equity": D("2000")} for n in range(alike)]
    rows += [{"account": f"o{n:04d}", "symbol": "BTCUSDT", "side": sign, "qty": LOT["BTCUSDT"] * (n + 1),
              "entry": D(48000 + 37 * n) if sign > 0 else D(52000 - 37 * n), "mode": "cross",
              "equity": D(500 + 91 * n)} for n in range(others)]
    engine = engine_with(rows, MARK)
    want, want_stressed = exact(engine, "BTCUSDT", side)
    assert indexed(engine, "BTCUSDT", side) == (want, want_stressed)


@given(st.lists(st.tuples(st.integers(1, 3000), st.sampled_from([D("-0.01"), D("-1e-8"), D(0), D("1e-8"), D("0.01")]),
                          st.sampled_from(["cross", "isolated"])), min_size=1, max_size=30),
       st.sampled_from(["long", "short"]))
def test_positions_at_the_stress_threshold_are_decided_exactly(rows: list[tuple[int, Decimal, str]],
                                                               side: str) -> None:
    """Equity a hair either side of a tenth of the notional (effective leverage 10): stressed or not by the exact
    distance to the bankruptcy price."""
    sign = 1 if side == "long" else -1
    book = [{"account": f"t{n:03d}", "symbol": "BTCUSDT", "side": sign, "qty": LOT["BTCUSDT"] * lots,
             "entry": D("50000"), "mode": mode, "equity": LOT["BTCUSDT"] * lots * MARK["BTCUSDT"] / 10 + delta}
            for n, (lots, delta, mode) in enumerate(rows)]
    engine = engine_with(book, MARK)
    want, want_stressed = exact(engine, "BTCUSDT", side)
    assert indexed(engine, "BTCUSDT", side) == (want, want_stressed)
