"""The general ledger's conservation check: cheap enough to run after every event, still a re-derivation."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest

from backstop.core import ledger
from backstop.core.errors import InvariantViolation
from backstop.core.numbers import ZERO


def test_postings_conserve_and_the_check_passes_after_each() -> None:
    book = ledger.Ledger(strict=True)
    for number in range(1, 50):
        book.post(ledger.external("USDT"), ledger.wallet(f"a{number % 7}", "USDT"), Decimal(number))
        book.post(ledger.wallet(f"a{number % 7}", "USDT"), ledger.fund("BTC"), Decimal("0.25"))
        book.check_conservation()
    assert sum(book.balances.values()) == 0
    assert book.balance(ledger.fund("BTC")) == Decimal("12.25")


def test_a_posted_account_changed_behind_the_ledger_is_caught_at_the_next_check() -> None:
    book = ledger.Ledger()
    book.post(ledger.external("USDT"), ledger.wallet("a", "USDT"), Decimal(100))
    book.check_conservation()
    book.post(ledger.wallet("a", "USDT"), ledger.fund("BTC"), Decimal(10))
    book.balances[ledger.fund("BTC")] += Decimal("0.01")  # a one-sided write, as a bug would make it
    with pytest.raises(InvariantViolation, match=r"sum to 0\.01"):
        book.check_conservation()


def test_an_account_changed_without_a_posting_is_caught_by_the_periodic_full_sum() -> None:
    book = ledger.Ledger()
    book.post(ledger.external("USDT"), ledger.wallet("a", "USDT"), Decimal(100))
    book.check_conservation()
    book.balances[ledger.wallet("a", "USDT")] += Decimal(1)  # never posted to since: only a full sum sees it
    with pytest.raises(InvariantViolation, match="sum of balances is 1"):
        for _ in range(ledger.FULL_CHECK_EVERY):
            book.check_conservation()


def test_a_balance_back_at_zero_shares_one_zero_object() -> None:
    book = ledger.Ledger()
    wallet, margin = ledger.wallet("a", "USDT"), ledger.isolated("a", "BTCUSDT")
    book.post(ledger.external("USDT"), wallet, Decimal("100.00000000"))
    book.post(wallet, margin, Decimal("100"))
    assert book.balance(wallet) == 0 and book.balances[wallet] is ZERO  # no Decimal of its own per empty wallet
    book.post(margin, wallet, Decimal("40.5"))
    assert (book.balance(wallet), book.balance(margin)) == (Decimal("40.5"), Decimal("59.5"))
    assert sum(book.balances.values()) == 0


def test_a_balance_beyond_the_bound_is_a_broken_invariant_not_a_rejection() -> None:
    """docs/design.md §9.3: no input within the bounds reaches 10^68, so a posting that would is a bug."""
    from backstop.core.numbers import BALANCE_BOUND, CONTEXT

    book = ledger.Ledger()
    below = CONTEXT.subtract(BALANCE_BOUND, Decimal(1))
    with localcontext(CONTEXT):  # as Engine.apply makes it current: a default context would round these balances
        book.post("external:USDT", "wallet:u:USDT", below)
        with pytest.raises(InvariantViolation, match="beyond the bound 10\\^68"):
            book.post("external:USDT", "wallet:u:USDT", Decimal(1))
    assert book.balance("wallet:u:USDT") == below  # nothing moved
