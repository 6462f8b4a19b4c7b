"""The public worked examples restated in backstop's terms: docs/vectors.md, each row naming its test here."""

from __future__ import annotations

import itertools
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import orjson
import pytest

from backstop.core import ledger
from backstop.core.adl import order, rank_position
from backstop.core.engine import Engine
from backstop.core.margin import bracket, maintenance_margin
from backstop.core.processor import Applied, Processor
from backstop.core.state import Position, Tier
from backstop.core.valuation import LINEAR
from backstop.wire.decode import decode_record
from scenario import fill, fund, instrument, liquidation, mark, run, transfer

D = Decimal
# Binance BTCUSDT brackets (2021): (max_notional, mmr, cum)
BINANCE_BTC = (("50000", "0.004", "0"), ("250000", "0.005", "50"), ("1000000", "0.01", "1300"),
               ("10000000", "0.025", "16300"), ("20000000", "0.05", "266300"), ("50000000", "0.1", "1266300"),
               ("100000000", "0.125", "2516300"), ("200000000", "0.15", "5016300"),
               ("300000000", "0.25", "25016300"), ("500000000", "0.5", "100016300"))
TIERS = tuple(Tier(D(n), D(m), D(c)) for n, m, c in BINANCE_BTC)


def test_b1_bracket_is_chosen_by_notional() -> None:
    assert bracket(TIERS, D(264000)).mmr == D("0.01")
    assert bracket(TIERS, D(250000)).mmr == D("0.005")


def test_b2_cumulative_amount_keeps_maintenance_continuous_at_every_edge() -> None:
    cum = D(0)
    for previous, tier in itertools.pairwise(TIERS):
        cum = previous.max_notional * (tier.mmr - previous.mmr) + cum
        assert tier.maint_amount == cum
        edge = previous.max_notional
        assert maintenance_margin(TIERS, edge) == edge * tier.mmr - tier.maint_amount
    assert TIERS[2].maint_amount == D(1300)


def _isolated_position(side: str, qty: str, entry: str, leverage: str, tiers: tuple[tuple[str, str, str], ...],
                       mark_price: str) -> dict[str, str]:
    from backstop.core.documents import accounts

    processor, outcomes = run([
        fund(), instrument(tiers=tiers, tick="0.1"), transfer("d", "u", "1000000"),
        fill("f", "u", side, qty, entry, mode="isolated", leverage=leverage), mark(mark_price)])
    assert all(isinstance(o, Applied) for o in outcomes)
    position: dict[str, str] = accounts(processor.engine)["u"]["positions"]["BTCUSDT"]
    return position


def _four_dp(value: str) -> Decimal:
    return D(value).quantize(D("0.0001"), rounding=ROUND_HALF_EVEN)


def test_b5_isolated_long_liquidation_and_bankruptcy_price() -> None:
    position = _isolated_position("buy", "1", "10000", "10", BINANCE_BTC, "10000")
    assert position["isolated_margin"] == "1000"
    assert _four_dp(position["liquidation_price"]) == D("9036.1446")
    assert D(position["bankruptcy_price"]) == D(9000)


def test_b6_isolated_short_liquidation_and_bankruptcy_price() -> None:
    position = _isolated_position("sell", "1", "10000", "10", BINANCE_BTC, "10000")
    assert _four_dp(position["liquidation_price"]) == D("10956.1753")
    assert D(position["bankruptcy_price"]) == D(11000)


def test_b7_bracket_is_rechosen_at_the_liquidation_price() -> None:
    position = _isolated_position("buy", "30", "10000", "20", BINANCE_BTC, "10000")
    assert position["isolated_margin"] == "15000"
    assert _four_dp(position["liquidation_price"]) == D("9552.1886")
    assert D(position["liquidation_price"]) * 30 > 250000  # valid in bracket 3, not bracket 2's 9,546.06


def test_y3_bybit_isolated_bankruptcy_price() -> None:
    position = _isolated_position("buy", "1", "10000", "50", BINANCE_BTC, "10000")
    assert D(position["bankruptcy_price"]) == D(9800)


# dYdX v4 liquidations_test.go: BTC mark 50,000, maintenance 10%, one cross position.
DYDX_TIERS = (("1000000000", "0.1", "0"),)


def _dydx_takeover(side: str, wallet: str, close_qty: str) -> tuple[Decimal, Decimal]:
    """Open 0.1 at 50,000 (so quote = wallet -/+ 5,000), liquidate close_qty at mark 50,000.

    Returns (bankruptcy price of the lot, the lot's cost)."""
    processor, outcomes = run([
        fund(ratio="1000"), instrument(tiers=DYDX_TIERS, tick="1", lot="0.01"),
        transfer("seed", "fund:MAIN", "1000000"), transfer("d", "t", wallet),
        fill("open", "t", side, "0.1", "50000"), liquidation("liq", "t", close_qty, "50000")])
    assert all(isinstance(o, Applied) for o in outcomes), outcomes
    lot = processor.engine.funds["MAIN"].lots["BTCUSDT"][0]
    return lot.bankruptcy_price(LINEAR), lot.cost


def test_q1_cross_long_bankruptcy_price() -> None:
    bp, cost = _dydx_takeover("buy", "499", "0.1")  # quote -4,501: TNC 499, MM 500
    assert (bp, cost) == (D(45010), D(4501))


def test_q2_cross_short_bankruptcy_price() -> None:
    bp, cost = _dydx_takeover("sell", "499", "0.1")  # quote +5,499
    assert (bp, cost) == (D(54990), D(5499))


@pytest.mark.parametrize(("close_qty", "quote_share"), [("0.1", "5000"), ("0.05", "2500")])
def test_q3_partial_close_has_the_same_bankruptcy_price(close_qty: str, quote_share: str) -> None:
    processor, outcomes = run([
        fund(ratio="1000"), instrument(tiers=DYDX_TIERS, tick="1", lot="0.01"),
        transfer("seed", "fund:MAIN", "1000000"), transfer("d", "t", "1000"),
        fill("open", "t", "buy", "0.1", "60000"), liquidation("liq", "t", close_qty, "50000")])
    # entry 60,000 with 1,000 of wallet: TNC = 1,000 - 1,000 = 0, so BP = mark = 50,000 (quote -5,000)
    assert all(isinstance(o, Applied) for o in outcomes)
    lot = processor.engine.funds["MAIN"].lots["BTCUSDT"][0]
    assert lot.bankruptcy_price(LINEAR) == D(50000)
    assert lot.cost == D(quote_share)


def _surplus(side: str, entry: str, leverage: str, sold_at: str, fee_rate: str) -> tuple[Decimal, Decimal]:
    """Isolated 0.1 with margin 50 (BP 51,000 long / 49,000 short), closed at sold_at by the liquidation.

    Returns (fund delta, trader refund) under surplus policy `trader`."""
    processor, outcomes = run([
        fund("DYDX", asset="USDC", surplus="trader", ratio="1000"),
        instrument("BTC-USD", fund_id="DYDX", asset="USDC", tiers=DYDX_TIERS, tick="1", lot="0.1",
                   fee_rate=fee_rate),
        transfer("seed", "fund:DYDX", "100000", asset="USDC"), transfer("d", "t", "50", asset="USDC"),
        fill("open", "t", side, "0.1", entry, symbol="BTC-USD", mode="isolated", leverage=leverage),
        liquidation("liq", "t", "0.1", entry, symbol="BTC-USD", executions=[("0.1", sold_at)])])
    assert all(isinstance(o, Applied) for o in outcomes), outcomes
    engine = processor.engine
    assert engine.ledger.balance(ledger.wallet("t", "USDC")) >= 0
    return (engine.ledger.balance(ledger.fund("DYDX")) - 100000,
            engine.ledger.balance(ledger.wallet("t", "USDC")))


@pytest.mark.parametrize(("sold_at", "fee_rate", "fund_delta"), [
    ("56100", "0.005", "28.05"),   # Q7
    ("56100", "0.025", "140.25"),  # Q8
    ("56100", "1", "510"),         # Q8, cap 100%: all of the surplus
    ("51051", "0.005", "5.10"),    # Q9: surplus below the cap
    ("51000", "0.005", "0"),       # Q10
    ("50490", "0.005", "-51"),     # Q11: a loss is always the fund's
])
def test_q7_to_q11_long_surplus_policy_trader(sold_at: str, fee_rate: str, fund_delta: str) -> None:
    delta, refund = _surplus("buy", "51500", "103", sold_at, fee_rate)
    assert delta == D(fund_delta)
    gain = (D(sold_at) - 51000) * D("0.1")
    assert refund == max(gain - max(delta, D(0)), D(0))  # the rest of the surplus is the trader's


@pytest.mark.parametrize(("bought_at", "fee_rate", "fund_delta"), [
    ("44100", "0.005", "22.05"), ("44100", "0.025", "110.25"), ("44100", "1", "490"),
    ("48951", "0.005", "4.90"),
])
def test_q12_short_surplus_policy_trader(bought_at: str, fee_rate: str, fund_delta: str) -> None:
    delta, _ = _surplus("sell", "48500", "97", bought_at, fee_rate)
    assert delta == D(fund_delta)


def ranked(qty: str, entry: str, mark_price: str, bp: str) -> tuple[Decimal, Decimal | None, Decimal]:
    position = Position("a", "BTCUSDT", D(qty), abs(D(qty)) * D(entry), "cross", D(10))
    ranked = rank_position(position, D(mark_price), D(bp), LINEAR)
    return ranked.pnl_ratio, ranked.leverage, ranked.score


def test_x4_profitable_long_score() -> None:
    assert ranked("1", "10000", "12000", "9000") == (D("0.2"), D(4), D("0.8"))


def test_x5_losing_long_score() -> None:
    pnl, leverage, score = ranked("1", "10000", "9500", "9000")
    assert (pnl, leverage) == (D("-0.05"), D(19))
    assert score.quantize(D("0.0000001")) == D("-0.0026316")


def test_x6_profitable_short_score() -> None:
    pnl, leverage, score = ranked("-1", "10000", "8000", "11000")
    assert pnl == D("0.2")
    assert leverage is not None and leverage.quantize(D("0.0001")) == D("2.6667")
    assert score.quantize(D("0.00001")) == D("0.53333")


def test_x3_bitmex_queue_is_walked_in_score_order() -> None:
    """examples/02: six longs with scores 0.3, 0.6, 0.1, 0.4, 0.5, 0.2; a short of 20 with BP 650."""
    processor = Processor(Engine(check_conservation=True))
    lines = (Path(__file__).parents[2] / "examples" / "02-adl-walks-queue.jsonl").read_bytes().splitlines()
    for raw in lines[:-1]:
        assert isinstance(processor.process(decode_record(raw)), Applied)
    engine = processor.engine
    engine.marks["BNBUSDT"] = D(645)
    queue = order([rank_position(p, D(645), engine.bankruptcy_price(p), LINEAR)
                   for p in engine.by_symbol["BNBUSDT"].values() if p.qty > 0])
    assert [(r.position.account_id, r.score) for r in queue] == [
        ("A2", D("0.6")), ("A5", D("0.5")), ("A4", D("0.4")), ("A1", D("0.3")), ("A6", D("0.2")),
        ("A3", D("0.1"))]

    outcome = processor.process(decode_record(lines[-1]))
    assert isinstance(outcome, Applied)
    assert [(e.account_id, e.qty, e.price, e.rank, e.quantile) for e in outcome.effects.adl_events] == [
        ("A2", D(10), D(650), 1, 5), ("A5", D(10), D(650), 2, 5)]
    positions = engine.by_symbol["BNBUSDT"]
    assert ("A2", "both") not in positions and positions["A5", "both"].qty == D(10)
    for untouched, qty in (("A1", 10), ("A3", 20), ("A4", 30), ("A6", 10)):
        assert positions[untouched, "both"].qty == D(qty)
    assert engine.funds["BNB"].lots == {}  # the whole lot went to ADL, the fund holds nothing


def _cross_pnl(sequence: list[dict[str, str]], mark_price: str) -> tuple[Decimal, Decimal, Decimal]:
    processor, outcomes = run([fund(), instrument(tick="1", lot="1"), transfer("d", "v", "1000"), *sequence,
                               mark(mark_price)])
    assert all(isinstance(o, Applied) for o in outcomes)
    engine = processor.engine
    position = engine.positions.get("v", "BTCUSDT")
    realized = engine.ledger.balance(ledger.wallet("v", "USDT")) - 1000
    return position.qty, realized, position.unrealized_pnl(D(mark_price), LINEAR)


def test_v2_fill_that_crosses_zero_closes_then_opens() -> None:
    result = _cross_pnl([fill("1", "v", "buy", "1", "100"), fill("2", "v", "sell", "2", "120")], "60")
    assert result == (D(-1), D(20), D(60))


def test_v3_adding_to_a_position_averages_the_entry() -> None:
    qty, realized, unrealized = _cross_pnl([fill("1", "v", "buy", "1", "100"), fill("2", "v", "buy", "1", "90")],
                                           "60")
    assert (qty, realized, unrealized) == (D(2), D(0), D(-70))


# ------------------------------------------------------------------------------------ inverse (docs/design.md §7)
# Binance COIN-M BTCUSD (contract size 100 USD), brackets by notional in BTC: the maximum positions of "Leverage and
# Margin in Coin-Margined Futures Contracts" (5, 10, 20, 50, 100, 200, 400 BTC) with maintenance rates half the initial
# ones; the cumulative amounts are derived (maint_amount omitted), and the FAQ's 11.605 BTC at 300 BTC is one of them.
BINANCE_COIN_M = (("5", "0.004", None), ("10", "0.005", None), ("20", "0.01", None), ("50", "0.025", None),
                  ("100", "0.05", None), ("200", "0.1", None), ("400", "0.125", None), ("1000", "0.15", None),
                  ("1000000", "0.25", None))


def _coin_m(records: list[dict[str, object]], *, size: str = "100", tiers: object = BINANCE_COIN_M,
            tick: str = "0.1") -> Processor:
    processor, outcomes = run([fund("COIN", asset="BTC"), instrument(
        "BTCUSD", fund_id="COIN", asset="BTC", tiers=tiers, tick=tick, lot="1", contract_type="inverse",
        contract_size=size), transfer("seed", "fund:COIN", "1000", asset="BTC"), *records])
    assert all(isinstance(o, Applied) for o in outcomes), outcomes
    return processor


def _coin_position(processor: Processor, account: str = "u") -> dict[str, str]:
    from backstop.core.documents import accounts

    position: dict[str, str] = accounts(processor.engine)[account]["positions"]["BTCUSD"]
    return position


def test_c1_coin_m_maintenance_amount_is_derived_from_the_brackets() -> None:
    processor = _coin_m([])
    tiers = processor.engine.instruments["BTCUSD"].tiers
    assert (tiers[6].mmr, tiers[6].maint_amount) == (D("0.125"), D("11.605"))  # the FAQ's 300 BTC position
    assert tiers[4].maint_amount == D(50) * (D("0.05") - D("0.025")) + tiers[3].maint_amount


def test_c2_coin_m_maintenance_margin_of_100_contracts_at_25000() -> None:
    processor = _coin_m([transfer("d", "u", "1", asset="BTC"), fill("f", "u", "buy", "100", "25000", symbol="BTCUSD"),
                         mark("25000", symbol="BTCUSD")])
    # notional 100 x 100 / 25,000 = 0.4 BTC (level 1): MM = 0.4 x 0.4% - 0 = 0.0016 BTC
    assert _coin_position(processor)["maintenance_margin"] == "0.0016"


def test_c3_coin_m_cross_long_liquidation_price() -> None:
    # wallet 101 BTC, long 100,000 contracts (10,000,000 USD) @ 45,000: C = 222.2222222222222222 BTC. Level 7 (200-400
    # BTC): LP = 10^7 x 1.125 / (101 + C + 11.605) = 33,599.41860562 (its notional 297.62 BTC is in level 7).
    processor = _coin_m([transfer("d", "u", "101", asset="BTC"),
                         fill("f", "u", "buy", "100000", "45000", symbol="BTCUSD")])
    position = _coin_position(processor)
    assert position["liquidation_price"] == "33599.41860562"
    assert D(position["liquidation_price"]).quantize(D("0.1")) == D("33599.4")  # Binance's calculator


def _xbtusd(side: str, qty: str, entry: str, leverage: str) -> Processor:
    """BitMEX XBTUSD: contract size 1 USD, tick 0.5, maintenance 0.5%; an isolated position."""
    return _coin_m([transfer("d", "u", "100", asset="BTC"),
                    fill("f", "u", side, qty, entry, symbol="BTCUSD", mode="isolated", leverage=leverage)],
                   size="1", tiers=(("1000000", "0.005", "0"),), tick="0.5")


def test_x7_bitmex_inverse_pnl_of_a_long_closed_higher() -> None:
    processor = _xbtusd("buy", "100000", "10000", "100")
    assert processor.engine.ledger.balance(ledger.isolated("u", "BTCUSD")) == D("0.1")  # 10 XBT at 100x
    processor.process(decode_record(orjson.dumps(fill("g", "u", "sell", "100000", "10500", symbol="BTCUSD",
                                                      mode="isolated", leverage="100"))))
    # 100,000 x (1 / 10,000 - 1 / 10,500) = 10 - 9.5238095238095238 = 0.4761904761904762 -> 0.47619048 XBT
    assert processor.engine.ledger.balance(ledger.wallet("u", "BTC")) == D(100) + D("0.47619048")


def test_x8_bitmex_isolated_bankruptcy_prices() -> None:
    # 200,000 contracts @ 10,000 (20 XBT) at 20x: margin 1 XBT. Long: 200,000 / (20 + 1) = 9,523.8095238..., FLOOR;
    # short: 200,000 / (20 - 1) = 10,526.3157894..., CEILING (BitMEX: entry x L / (L + 1), entry x L / (L - 1))
    assert _coin_position(_xbtusd("buy", "200000", "10000", "20"))["bankruptcy_price"] == "9523.8095238"
    assert _coin_position(_xbtusd("sell", "200000", "10000", "20"))["bankruptcy_price"] == "10526.31578948"


def test_x9_bitmex_liquidation_price_with_maintenance_at_mark() -> None:
    # backstop charges maintenance on the value at the mark: long 200,000 x 1.005 / (1 + 20) = 9,571.42857143; short
    # 200,000 x 0.995 / (20 - 1) = 10,473.68421053. BitMEX adds 0.5% of the entry (and funding) to the BP instead.
    assert _coin_position(_xbtusd("buy", "200000", "10000", "20"))["liquidation_price"] == "9571.42857143"
    assert _coin_position(_xbtusd("sell", "200000", "10000", "20"))["liquidation_price"] == "10473.68421053"
