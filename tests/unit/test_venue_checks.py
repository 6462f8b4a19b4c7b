"""Checks of issue 21 items 5-7, with hand-worked numbers: brackets checked against the cumulative amounts they
imply, a liquidation's mark checked against the published mark, the fund's own inventory check on mark moves
(docs/design.md §7)."""

from __future__ import annotations

from decimal import Decimal

import venue_journals
from backstop.core import ledger
from backstop.core.margin import maintenance_margin
from backstop.core.processor import Applied, Rejection
from scenario import fund, instrument, mark, run

D = Decimal
BTC_TIERS = (("50000", "0.004", None), ("250000", "0.005", None), ("1000000", "0.01", None))


def test_a_maint_amount_that_breaks_the_brackets_is_rejected_with_the_amount_they_imply() -> None:
    # cum_3 = cum_2 + 250,000 x (1% - 0.5%) = 50 + 1,250 = 1,300: a stated 999 would drop MM from 1,200 to 0 at the
    # edge (250,000 x 1% - 999 = 1,501 just above it, against 250,000 x 0.5% - 50 = 1,200 just below: not continuous)
    _, outcomes = run([fund(), instrument(tiers=(("50000", "0.004", "0"), ("250000", "0.005", "50"),
                                                 ("1000000", "0.01", "999")))])
    assert outcomes[-1] == Rejection("bracket 3: maint_amount 999 is not the cumulative amount 1300 the brackets "
                                     "imply")
    _, outcomes = run([fund(), instrument(tiers=(("50000", "0.004", "1"),))])
    assert outcomes[-1] == Rejection("bracket 1: maint_amount 1 is not the cumulative amount 0 the brackets imply")


def test_an_omitted_maint_amount_is_derived_and_keeps_maintenance_continuous() -> None:
    processor, outcomes = run([fund(), instrument(tiers=BTC_TIERS)])
    assert isinstance(outcomes[-1], Applied)
    tiers = processor.engine.instruments["BTCUSDT"].tiers
    assert [tier.maint_amount for tier in tiers] == [0, 50, 1300]  # 0; 50,000 x 0.1%; 50 + 250,000 x 0.5%
    assert maintenance_margin(tiers, D(250000)) == 1200  # 250,000 x 0.5% - 50
    assert maintenance_margin(tiers, D("250000.1")) == D("1200.001")  # 2,500.001 - 1,300


def test_brackets_that_imply_an_amount_finer_than_the_asset_unit_or_below_zero_are_rejected() -> None:
    # 0.00000001 x (0.5 - 0.25) = 0.0000000025: finer than 1e-8
    _, outcomes = run([fund(), instrument(tiers=(("0.00000001", "0.25", "0"), ("1000", "0.5", None)))])
    assert outcomes[-1] == Rejection("bracket 2: the brackets imply a maint_amount of 0.0000000025, which is not an "
                                     "amount (>= 0, at most 16 integer and 8 fraction digits)")
    # an mmr that falls: 100 x (0.01 - 0.02) = -1
    _, outcomes = run([fund(), instrument(tiers=(("100", "0.02", "0"), ("200", "0.01", None)))])
    assert isinstance(outcomes[-1], Rejection)
    assert "a maint_amount of -1," in outcomes[-1].reason


def test_a_liquidation_far_from_the_published_mark_is_a_mark_mismatch_judged_at_both_marks() -> None:
    # u: isolated long 1 @ 100,000 at 20x: margin 5,000. At the published 99,000 the margin balance is
    # 5,000 - 1,000 = 4,000 against MM 990: solvent. The venue liquidates at 94,900: 5,000 - 5,100 = -100 <= 949.
    processor, outcomes = run(venue_journals.mark_mismatch())
    last = outcomes[-1]
    assert isinstance(last, Applied)
    findings = {f.kind: f.details for f in last.effects.findings}
    # |94,900 - 99,000| = 4,100 > 0.5% x 99,000 = 495
    assert findings["mark_mismatch"] == {"mark_price": "94900", "mark_in_force": "99000", "tolerance": "0.005"}
    assert findings["not_liquidatable"] == {
        "margin_balance": "-100", "maintenance_margin": "949", "mark_price": "94900", "mark_in_force": "99000",
        "margin_balance_at_mark_in_force": "4000", "maintenance_margin_at_mark_in_force": "990",
        "not_liquidatable_at": "mark_in_force"}
    assert processor.engine.marks["BTCUSDT"] == 94900  # the liquidation's mark still becomes the mark


def test_the_tolerance_is_per_instrument_and_a_mark_within_it_is_no_finding() -> None:
    _, outcomes = run(venue_journals.mark_within_tolerance())
    last = outcomes[-1]
    assert isinstance(last, Applied)
    assert [f.kind for f in last.effects.findings] == ["not_liquidatable"]  # 4,100 <= 5% x 99,000 = 4,950


def test_not_liquidatable_at_either_mark_says_both() -> None:
    # margin 10,000 at 10x: at 99,000 the balance is 9,000 > 990, at 98,000 it is 8,000 > 980
    _, outcomes = run(venue_journals.not_liquidatable_at_both())
    last = outcomes[-1]
    assert isinstance(last, Applied)
    findings = {f.kind: f.details for f in last.effects.findings}
    assert "mark_mismatch" in findings  # 1,000 > 495
    assert findings["not_liquidatable"]["not_liquidatable_at"] == "both"
    assert findings["not_liquidatable"]["margin_balance_at_mark_in_force"] == "9000"


def test_a_mark_move_that_puts_the_fund_over_its_inventory_limit_deleverages_the_excess_at_once() -> None:
    # u: isolated long 1.3 @ 100,000 at 10x (margin 13,000), liquidated at 92,000: BP = 100,000 - 13,000 / 1.3 =
    # 90,000. The fund (balance 120,000, ratio 1) accepts the lot: 1.3 x 92,000 = 119,600 <= 120,000.
    processor, outcomes = run(venue_journals.inventory_over_limit())
    assert outcomes[-1].effects.adl_events == []  # type: ignore[union-attr]
    assert processor.engine.funds["MAIN"].net_qty("BTCUSDT") == D("1.3")
    # The mark moves to 100,000: 1.3 x 100,000 = 130,000 > 120,000. The excess 10,000 is 0.1 BTC at the mark
    # (CEILING(10,000 / 100,000) to the lot 0.001): deleveraged against v at the lot's BP 90,000.
    _, outcomes = run([mark("100000")], processor=processor)
    events = outcomes[-1].effects.adl_events  # type: ignore[union-attr]
    assert [(e.account_id, e.qty, e.price, e.liquidation_id) for e in events] == [("v", D("0.1"), D("90000"), "l")]
    assert processor.engine.funds["MAIN"].net_qty("BTCUSDT") == D("1.2")  # 120,000 <= 120,000: accepted
    assert processor.engine.positions.get("v", "BTCUSDT").qty == D("-4.9")
    assert processor.engine.ledger.balance(ledger.fund("MAIN")) == 120000  # at the BP the fund realizes nothing
    # v sold 0.1 @ 100,000 and bought it back at 90,000: +1,000
    assert processor.engine.ledger.balance(ledger.wallet("v", "USDT")) == 1001000
    _, outcomes = run([mark("99000")], processor=processor)  # 1.2 x 99,000 = 118,800: nothing to do
    assert outcomes[-1].effects.adl_events == []  # type: ignore[union-attr]


def test_a_fund_at_zero_deleverages_all_of_the_symbol_when_its_mark_moves() -> None:
    processor, outcomes = run(venue_journals.inventory_at_zero_balance())
    events = outcomes[-1].effects.adl_events  # type: ignore[union-attr]
    assert [(e.account_id, e.qty) for e in events] == [("v", D("1.3"))]
    assert processor.engine.funds["MAIN"].lots == {}
