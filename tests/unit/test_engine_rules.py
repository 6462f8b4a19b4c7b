"""One rule at a time, with hand-worked numbers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from backstop.core import ledger
from backstop.core.processor import Applied, Duplicate, Rejection
from backstop.core.snapshot import state_hash
from backstop.core.valuation import LINEAR
from scenario import fill, fund, funding, instrument, liquidation, mark, run, transfer

D = Decimal
BASE = [fund(), instrument(tiers=(("1000000000", "0.01", "0"),), tick="0.1", lot="0.001"),
        transfer("seed", "fund:MAIN", "100000"), transfer("d-u", "u", "10000"), transfer("d-v", "v", "10000")]


def balance(processor: Any, account: str) -> Decimal:
    result: Decimal = processor.engine.ledger.balance(account)
    return result


def test_isolated_margin_is_posted_at_open_and_released_pro_rata() -> None:
    processor, _ = run([*BASE, fill("o", "u", "buy", "2", "50000", mode="isolated", leverage="20")])
    assert balance(processor, ledger.isolated("u", "BTCUSDT")) == 5000  # 2 x 50,000 / 20
    assert balance(processor, ledger.wallet("u", "USDT")) == 5000
    run([fill("c", "u", "sell", "0.5", "51000", mode="isolated", leverage="20")], processor=processor)
    assert balance(processor, ledger.isolated("u", "BTCUSDT")) == 3750  # a quarter released
    assert balance(processor, ledger.wallet("u", "USDT")) == 5000 + 1250 + 500  # released + realized


def test_fees_go_to_the_exchange_fee_account_and_rebates_come_back() -> None:
    processor, _ = run([*BASE, fill("o", "u", "buy", "1", "50000", fee="20"),
                        fill("o2", "v", "sell", "1", "50000", fee="-5")])
    assert balance(processor, ledger.fees("USDT")) == 15
    assert balance(processor, ledger.wallet("v", "USDT")) == 10005


def test_partial_close_keeps_the_exact_cost_basis() -> None:
    processor, _ = run([*BASE, fill("1", "u", "buy", "0.003", "50000.1"), fill("2", "u", "sell", "0.001", "50000.1")])
    position = processor.engine.positions.get("u", "BTCUSDT")
    assert (position.qty, position.cost) == (D("0.002"), D("100.0002"))
    assert balance(processor, ledger.wallet("u", "USDT")) == 10000  # closed at entry: no PnL


def test_funding_flows_from_longs_to_shorts_and_back() -> None:
    processor, _ = run([*BASE, fill("1", "u", "buy", "1", "50000"), fill("2", "v", "sell", "1", "50000"),
                        funding("0.0001", "50000"), funding("-0.0002", "50000")])
    assert balance(processor, ledger.wallet("u", "USDT")) == 10000 - 5 + 10
    assert balance(processor, ledger.wallet("v", "USDT")) == 10000 + 5 - 10
    assert balance(processor, ledger.funding("BTCUSDT")) == 0


def test_fund_accepts_inventory_up_to_max_inventory_ratio() -> None:
    records = [fund(ratio="0.5"), instrument(tick="0.1"), transfer("seed", "fund:MAIN", "100000"),
               transfer("d", "u", "5000"), transfer("d2", "v", "100000"),
               fill("v", "v", "sell", "3", "50000"),
               fill("1", "u", "buy", "1", "50000", mode="isolated", leverage="10"),
               liquidation("l1", "u", "1", "45100")]
    processor, outcomes = run(records)
    assert outcomes[-1] == Applied(8, outcomes[-1].effects)  # type: ignore[union-attr]
    assert processor.engine.funds["MAIN"].net_qty("BTCUSDT") == 1  # 45,100 <= 0.5 x 100,000: kept
    run([transfer("d3", "u", "5000"), fill("2", "u", "buy", "1", "50000", mode="isolated", leverage="10"),
         liquidation("l2", "u", "1", "45100")], processor=processor)
    # 2 x 45,100 = 90,200 > 50,000: the second lot is deleveraged at once against the short v
    assert processor.engine.funds["MAIN"].net_qty("BTCUSDT") == 1
    assert processor.engine.positions.get("v", "BTCUSDT").qty == -2


def test_fund_fill_realizes_lots_fifo() -> None:
    records = [*BASE, transfer("d", "w", "10000"),
               fill("1", "u", "buy", "1", "50000", mode="isolated", leverage="10"),
               fill("2", "w", "buy", "1", "50000", mode="isolated", leverage="20"),
               liquidation("first", "u", "1", "45100"), liquidation("second", "w", "1", "47600"),
               fill("f", "fund:MAIN", "sell", "1.5", "46000")]
    processor, outcomes = run(records)
    assert all(isinstance(o, Applied) for o in outcomes)
    last = outcomes[-1]
    assert isinstance(last, Applied)
    # lot "first" BP 45,000 -> +1,000 on 1; lot "second" BP 47,500 -> -750 on 0.5
    assert [(e.liquidation_id, e.amount) for e in last.effects.fund_entries] == [("first", D(1000)),
                                                                                ("second", D(-750))]
    lots = processor.engine.funds["MAIN"].lots["BTCUSDT"]
    assert [(lot.liquidation_id, lot.qty, lot.cost) for lot in lots] == [("second", D("0.5"), D(23750))]


def test_venue_bankruptcy_price_mismatch_and_not_liquidatable_are_findings() -> None:
    _processor, outcomes = run([*BASE, fill("1", "u", "buy", "1", "50000", mode="isolated", leverage="10"),
                               liquidation("l", "u", "1", "49000", bankruptcy_price="45500")])
    last = outcomes[-1]
    assert isinstance(last, Applied)
    kinds = {f.kind: f.details for f in last.effects.findings}
    assert kinds["not_liquidatable"] == {"margin_balance": "4000", "maintenance_margin": "490",
                                         "mark_price": "49000", "not_liquidatable_at": "liquidation_mark"}
    assert kinds["bp_mismatch"]["computed"] == "45000" and kinds["bp_mismatch"]["venue"] == "45500"


def test_adl_shortfall_is_recorded_when_the_queue_runs_dry() -> None:
    processor, outcomes = run([fund(), instrument(tick="0.1"), transfer("d", "u", "5000"),
                               fill("1", "u", "buy", "1", "50000", mode="isolated", leverage="10"),
                               liquidation("l", "u", "1", "45100")])
    last = outcomes[-1]
    assert isinstance(last, Applied)
    assert [(f.kind, f.details["unfilled_qty"]) for f in last.effects.findings] == [("adl_shortfall", "1")]
    assert processor.engine.funds["MAIN"].net_qty("BTCUSDT") == 1


@pytest.mark.parametrize(("record", "reason"), [
    (fill("x", "u", "buy", "1", "50000", symbol="NOPE"), "unknown symbol NOPE"),
    (fill("x", "u", "buy", "0.0001", "50000"), "not a multiple of the lot size"),
    (fill("x", "u", "buy", "1", "50000.05"), "not a multiple of the tick size"),
    (fill("x", "u", "buy", "1", "50000", mode="isolated"), "cannot change it while the position is open"),
    (fill("x", "fund:MAIN", "sell", "1", "50000"), "fund MAIN holds 0 long BTCUSDT"),
    (fill("x", "fund:OTHER", "sell", "1", "50000"), "unknown fund OTHER"),
    (liquidation("x", "v", "1", "40000"), "v holds no BTCUSDT position"),
    (liquidation("x", "u", "2", "40000"), "exceeds the position of 1"),
    (liquidation("x", "u", "1", "40000", executions=[("1", "40000"), ("1", "40000")]), "more than the liquidated"),
    (liquidation("x", "fund:MAIN", "1", "40000"), "a fund's inventory is not liquidated"),
    (transfer("x", "u", "-20000"), "exceeds the balance"),
    (transfer("x", "u", "0"), "must not be zero"),
    (transfer("x", "u", "5", asset="EUR"), "unknown asset EUR"),
    (transfer("x", "fund:MAIN", "5", asset="USDC"), "holds USDT, not USDC"),
    (mark("1", symbol="NOPE"), "unknown symbol"),
    (funding("1.5", "50000"), "not a plausible rate"),
    (instrument("ETHUSDT", fund_id="NOPE"), "unknown fund NOPE"),
    (instrument("ETHUSDT", tiers=(("100", "0.01", "0"), ("50", "0.02", "0"))), "strictly increasing"),
    (fund(asset="USDC"), "cannot change asset"),
])
def test_impossible_records_are_rejected_and_change_nothing(record: dict[str, Any], reason: str) -> None:
    processor, _ = run([*BASE, fill("open", "u", "buy", "1", "50000")])
    before = state_hash(processor.engine), processor.engine.head_hash
    _, outcomes = run([record], processor=processor)
    assert isinstance(outcomes[0], Rejection)
    assert reason in outcomes[0].reason
    assert (state_hash(processor.engine), processor.engine.head_hash) == before


def test_duplicates_are_counted_and_not_applied() -> None:
    again = fill("open", "u", "buy", "1", "50000")
    LATER = again["ts"] + 3_600_000  # an hour of quiet
    processor, outcomes = run([*BASE, again, dict(again), mark("50100", ts=LATER), mark("50100", ts=LATER),
                               mark("50100", ts=LATER + 1)])
    assert [type(o) for o in outcomes[-5:]] == [Applied, Duplicate, Applied, Duplicate, Applied]
    assert processor.duplicates == 2
    assert processor.engine.positions.get("u", "BTCUSDT").qty == 1


def test_a_rejected_record_can_be_sent_again_corrected() -> None:
    _processor, outcomes = run([*BASE, fill("f", "u", "buy", "1", "50000.05"), fill("f", "u", "buy", "1", "50000")])
    assert [type(o) for o in outcomes[-2:]] == [Rejection, Applied]


def _example_02_with(policy: Any) -> Any:
    from pathlib import Path

    from backstop.core.engine import Engine
    from backstop.core.processor import Processor
    from backstop.wire.decode import decode_record

    processor = Processor(Engine(check_conservation=True, adl_policy=policy))
    events = []
    for raw in (Path(__file__).parents[2] / "examples" / "02-adl-walks-queue.jsonl").read_bytes().splitlines():
        outcome = processor.process(decode_record(raw))
        assert isinstance(outcome, Applied)
        events.extend(outcome.effects.adl_events)
    return processor, events


def test_pro_rata_adl_spreads_the_lot_over_every_counterparty_by_size() -> None:
    from backstop.core.engine import AdlPolicy

    _, events = _example_02_with(AdlPolicy(rule="pro_rata"))
    # 20 over longs of 10, 10, 20, 30, 20, 10 (100 in all): 20% of each, listed in BitMEX order
    assert [(e.account_id, e.qty, e.price) for e in events] == [
        ("A2", D(2), D(650)), ("A5", D(4), D(650)), ("A4", D(6), D(650)), ("A1", D(2), D(650)),
        ("A6", D(2), D(650)), ("A3", D(4), D(650))]


def test_adl_at_the_mark_lets_the_fund_realize_the_difference() -> None:
    from backstop.core.engine import AdlPolicy

    processor, events = _example_02_with(AdlPolicy(price="mark"))
    assert [(e.account_id, e.qty, e.price) for e in events] == [("A2", D(10), D(645)), ("A5", D(10), D(645))]
    # the fund's short lot at BP 650 bought back at 645: +5 x 20
    assert processor.engine.ledger.balance(ledger.fund("BNB")) == 100 + 100


def test_binance_ranking_is_its_published_leverage_pnl() -> None:
    from backstop.core.adl import rank_binance
    from backstop.core.engine import AdlPolicy
    from backstop.core.state import Position

    _, events = _example_02_with(AdlPolicy(rule="binance"))
    # A2: cross long 10 @ 500 on a wallet of 1,667.5, mark 645: uPnL 1,450, MM 64.5, margin balance 3,117.5;
    # max(0, 1450) / max(1, 1667.5) x 64.5 / 3117.5 = 93,525 / 5,198,431.25
    assert [(e.account_id, e.qty, e.score) for e in events] == [("A2", D(10), D("0.017991004498")),
                                                               ("A5", D(10), D("0.010912265386"))]
    isolated = Position("i", "BTCUSDT", D(1), D(10000), "isolated", D(10))
    # isolated long 1 @ 10,000 with margin 1,000 at mark 12,000: uPnL 2,000, margin balance 3,000, MM 120
    ranked = rank_binance(isolated, D(12000), LINEAR, collateral=D(1000), margin_balance=D(3000), maintenance=D(120),
                          equity=D(3000), bankruptcy=D(9000))
    assert ranked.score == D("0.08")  # 2,000 / 1,000 x 120 / 3,000
    assert ranked.leverage == D(4)  # explain's effective leverage: 12,000 / 3,000
    # a losing position scores 0 (Binance: Pnl Percent = max(0, uPnL) / ...), and is not ranked last apart
    losing = rank_binance(isolated, D(9500), LINEAR, collateral=D(1000), margin_balance=D(500), maintenance=D(95),
                          equity=D(500), bankruptcy=D(9000))
    assert (losing.score, losing.past_bankruptcy) == (D(0), False)


BIG = [fund(ratio="0"), instrument(tiers=(("1000000000", "0.01", "0"),), tick="1", lot="1"),
       transfer("d-u", "u", "9999999999999999"), transfer("d-w", "w", "9999999999999999")]


@pytest.mark.parametrize(("records", "reason"), [
    ([fill("1", "u", "buy", "600000000000", "1"), fill("2", "u", "buy", "400000000000", "1")],
     "position would hold 1000000000000, above the bound 10^12"),
    ([fill("1", "u", "sell", "600000000000", "9999999999"), fill("2", "u", "sell", "400000000000", "1")],
     "position would hold 1000000000000, above the bound 10^12"),
    ([fill("1", "u", "buy", "600000000000", "1", mode="isolated", leverage="1"),
      fill("2", "w", "buy", "600000000000", "1", mode="isolated", leverage="1"),
      liquidation("l1", "u", "600000000000", "1"),
      liquidation("l2", "w", "600000000000", "1")],
     "fund MAIN would hold 1200000000000 BTCUSDT, above the bound 10^12"),
])
def test_an_event_beyond_the_state_bounds_is_rejected_before_anything_changes(records: list[dict[str, Any]],
                                                                              reason: str) -> None:
    """docs/design.md §9.3: positions below 10^12 in size and 10^22 in cost, a fund's net lots below 10^12."""
    processor, outcomes = run([*BIG, *records[:-1]])
    assert all(isinstance(o, Applied) for o in outcomes)
    before = state_hash(processor.engine), processor.engine.head_hash
    _, last = run(records[-1:], processor=processor)
    assert last == [Rejection(reason)]
    assert (state_hash(processor.engine), processor.engine.head_hash) == before


def test_a_position_whose_cost_rounded_away_is_ranked_last_and_crashes_nothing() -> None:
    """4 units at 0.25 cost 1e-8; closing 3 of them takes a share that rounds to 1e-8, the whole cost: the last
    unit keeps a cost of 0. Its PnL% has no denominator: the engine used to stop with DivisionByZero when an ADL
    ranked it. Now it is ranked last, score 0, and deleveraged only after the other longs."""
    processor, outcomes = run([fund(ratio="0"), instrument(tick="0.00000001", lot="0.00000001"),
                               transfer("d", "u", "100"), transfer("d2", "s", "100"), transfer("d3", "v", "100"),
                               fill("1", "u", "buy", "0.00000004", "0.25"),
                               fill("2", "u", "sell", "0.00000003", "0.25"),
                               fill("3", "v", "buy", "0.00000001", "0.25"),
                               fill("4", "s", "sell", "0.00000002", "0.25", mode="isolated", leverage="1"),
                               liquidation("l", "s", "0.00000002", "0.3")])
    assert all(isinstance(o, Applied) for o in outcomes), outcomes
    dust = processor.engine.positions.get("u", "BTCUSDT")
    assert dust is None  # deleveraged second, after v
    last = outcomes[-1]
    assert isinstance(last, Applied)
    # v: PnL% 0.2; its BP is far below zero (wallet 100 behind 1e-8 of BTC), leverage 0.3 / ~1e10: score 6e-12
    assert [(e.account_id, e.rank, e.score) for e in last.effects.adl_events] == [("v", 1, D("6E-12")), ("u", 2, 0)]


def test_a_cost_basis_at_its_bound_rejects_the_fill_that_would_pass_it() -> None:
    """MAX_COST follows from the size and price bounds up to the rounding residue of partial closes, so no journal
    reaches it in practice; the check is tested on a cost set just below it."""
    processor, outcomes = run([*BIG, fill("1", "u", "buy", "1", "1")])
    assert all(isinstance(o, Applied) for o in outcomes)
    processor.engine.positions.get("u", "BTCUSDT").cost = D(10) ** 22 - 5
    before = state_hash(processor.engine), processor.engine.head_hash
    _, last = run([fill("2", "u", "buy", "1", "5")], processor=processor)
    assert last == [Rejection("position cost would be 10000000000000000000000, above the bound 10^22")]
    assert (state_hash(processor.engine), processor.engine.head_hash) == before
