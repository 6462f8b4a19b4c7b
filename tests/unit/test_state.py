"""The position book: one tuple per account, opening order kept, symbol order on demand."""

from __future__ import annotations

from decimal import Decimal

import pytest

from backstop.core.errors import InvariantViolation
from backstop.core.state import Position, Positions


def position(account_id: str, symbol: str, qty: str = "1") -> Position:
    return Position(account_id, symbol, Decimal(qty), Decimal(qty) * 100, "cross", Decimal(10))


def test_positions_keep_opening_order_and_forget_an_account_with_none_left() -> None:
    book = Positions()
    eth, btc, sol, other = position("u", "ETHUSDT"), position("u", "BTCUSDT"), position("u", "SOLUSDT"), \
        position("v", "BTCUSDT", "-2")
    for opened in (eth, other, btc, sol):
        book.add(opened)
    assert list(book) == ["u", "v"] and len(book) == 2 and "u" in book and "w" not in book
    assert book.of("u") == (eth, btc, sol)
    assert book.in_symbol_order("u") == [btc, eth, sol]
    assert book.get("u", "BTCUSDT") is btc and book.get("v", "BTCUSDT") is other
    assert book.get("u", "XRPUSDT") is None and book.get("w", "BTCUSDT") is None and book.of("w") == ()

    book.remove(btc)
    assert book.of("u") == (eth, sol) and book.get("u", "BTCUSDT") is None
    book.add(btc)  # reopened: last in opening order, like a dict key deleted and set again
    assert book.of("u") == (eth, sol, btc)
    for closed in (eth, sol, btc):
        book.remove(closed)
    assert "u" not in book and list(book) == ["v"]
    book.add(eth)  # the account comes back after the others
    assert list(book) == ["v", "u"]


def test_a_second_position_in_one_symbol_or_removing_one_not_held_is_an_invariant_violation() -> None:
    book = Positions()
    held = position("u", "BTCUSDT")
    book.add(held)
    with pytest.raises(InvariantViolation, match="already holds a BTCUSDT position"):
        book.add(position("u", "BTCUSDT", "2"))  # a snapshot listing one account and symbol twice
    with pytest.raises(InvariantViolation, match="no such BTCUSDT position"):
        book.remove(position("u", "BTCUSDT"))  # equal numbers, another object
    assert book.of("u") == (held,)
