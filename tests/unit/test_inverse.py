"""Inverse (coin-margined) contracts (docs/design.md §7, §9.3, §9.4), one rule at a time, in the reference engine.

BTCUSD below: contract_size 100 (USD a contract), settled in BTC; V(q, P) = HALF_EVEN(|q| x 100 / P) to 1e-16. Each
expected number is worked out from the written rule with exact fractions (`exact`), never read from the engine.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backstop.core import ledger
from backstop.core.adl_policy import PRESETS, preset
from backstop.core.documents import accounts
from backstop.core.engine import Engine
from backstop.core.processor import Applied, Processor, Rejection
from backstop.core.snapshot import restore, state_document, state_hash
from backstop.core.valuation import LINEAR, Valuation
from backstop.entrypoints.cli import main
from backstop.wire.decode import decode_record
from scenario import fill, fund, funding, instrument, liquidation, mark, run, transfer

D = Decimal
LARGEST = "9999999999.99999999"


def inverse(symbol: str = "BTCUSD", *, size: str = "100", tiers: Any = (("50", "0.005", "0"),), tick: str = "0.5",
            lot: str = "1", **more: Any) -> dict[str, Any]:
    return instrument(symbol, fund_id="COIN", asset="BTC", tiers=tiers, tick=tick, lot=lot, contract_type="inverse",
                      contract_size=size, **more)


def coin_market(fund_balance: str = "10", **wallets: str) -> list[dict[str, Any]]:
    """Fund COIN (BTC) with a balance, BTCUSD, and the accounts' BTC deposits."""
    return [fund("COIN", asset="BTC"), inverse(), transfer("seed", "fund:COIN", fund_balance, asset="BTC"),
            *(transfer(f"d-{account}", account, amount, asset="BTC") for account, amount in wallets.items())]


def btc(account: str, side: str, qty: str, price: str, mode: str = "cross", leverage: str = "10",
        **more: Any) -> dict[str, Any]:
    return fill(f"{account}-{side}-{qty}-{price}-{more.get('fill_id', '')}", account, side, qty, price,
                symbol="BTCUSD", mode=mode, leverage=leverage)


def reasons(outcomes: list[Any]) -> list[str]:
    return [o.reason for o in outcomes if isinstance(o, Rejection)]


def rounded(value: Fraction, places: int, rounding: str = "half_even") -> Decimal:
    """The exact rational value rounded once to 10^-places (the hand calculation's one rounding)."""
    scaled = value * 10 ** places
    units, rest = divmod(scaled.numerator, scaled.denominator)
    rest_fraction = Fraction(rest, scaled.denominator)
    if rest_fraction and (rounding == "ceiling" or (rounding == "half_even" and (
            rest_fraction > Fraction(1, 2) or (rest_fraction == Fraction(1, 2) and units % 2)))):
        units += 1
    return Decimal(units).scaleb(-places)


def value(qty: int | str, price: int | str, size: int = 100) -> Fraction:
    """V(q, P) as the rule writes it: HALF_EVEN(q x s / P) to 1e-16."""
    return Fraction(rounded(Fraction(Fraction(str(qty)) * size, Fraction(str(price))), 16))


# ------------------------------------------------------------------------------------------------ the instrument
def test_an_instrument_states_a_contract_size_exactly_when_it_is_inverse_and_never_changes_it() -> None:
    processor, outcomes = run([
        fund("COIN", asset="BTC"),
        instrument("NOSIZE", fund_id="COIN", asset="BTC", contract_type="inverse"),
        instrument("LINSIZE", fund_id="COIN", asset="BTC", contract_size="100"),
        instrument("LINSIZE", fund_id="COIN", asset="BTC", contract_type="linear", contract_size="100"),
        inverse(),
        inverse(size="10"),
        instrument("BTCUSD", fund_id="COIN", asset="BTC", tick="0.5", lot="1", tiers=(("50", "0.005", "0"),)),
        inverse(size="100.0", fee_rate="0.01"),  # the same size spelled otherwise: a redefinition of other specs
        instrument("ETHBTC", fund_id="COIN", asset="BTC", contract_type="linear"),  # linear, said aloud
    ])
    assert reasons(outcomes) == [
        "instrument NOSIZE: an inverse instrument needs a contract_size",
        "instrument LINSIZE: only an inverse instrument has a contract_size",
        "instrument LINSIZE: only an inverse instrument has a contract_size",
        "instrument BTCUSD cannot change its contract_type or contract_size",
        "instrument BTCUSD cannot change its contract_type or contract_size",
    ]
    engine = processor.engine
    assert engine.instruments["BTCUSD"].valuation == Valuation(D(100))
    assert engine.instruments["BTCUSD"].contract_type == "inverse"
    assert engine.instruments["BTCUSD"].liquidation_fee_rate == D("0.01")
    assert engine.instruments["ETHBTC"].valuation == LINEAR


def test_the_state_document_lists_the_contract_fields_of_an_inverse_instrument_only() -> None:
    processor, _ = run([*coin_market(a="1", m="1"), instrument("ETHBTC", fund_id="COIN", asset="BTC"),
                        btc("a", "buy", "1000", "50000", "isolated"), btc("m", "sell", "1000", "50000")])
    documents = {i["symbol"]: i for i in state_document(processor.engine)["instruments"]}
    assert (documents["BTCUSD"]["contract_type"], documents["BTCUSD"]["contract_size"]) == ("inverse", "100")
    assert "contract_type" not in documents["ETHBTC"] and "contract_size" not in documents["ETHBTC"]
    restored = restore(orjson.loads(orjson.dumps(state_document(processor.engine))))
    assert restored.instruments["BTCUSD"].valuation == Valuation(D(100))
    assert state_hash(restored) == state_hash(processor.engine)


# ------------------------------------------------------------------------------------------------ positions
def test_the_entry_price_is_the_harmonic_mean_and_a_close_realizes_coin_pnl() -> None:
    processor, outcomes = run([*coin_market(a="1", m="1"),
                               btc("a", "buy", "1000", "50000"), btc("m", "sell", "1000", "50000"),
                               btc("a", "buy", "1000", "40000"), btc("m", "sell", "1000", "40000"),
                               btc("a", "sell", "500", "44000"), btc("m", "buy", "500", "44000")])
    assert all(isinstance(o, Applied) for o in outcomes)
    engine = processor.engine
    position = engine.positions.get("a", "BTCUSD")
    assert position is not None
    # cost 100,000 / 50,000 + 100,000 / 40,000 = 2 + 2.5 = 4.5; entry 2,000 x 100 / 4.5 = 44,444.44444444 (not the
    # arithmetic mean 45,000); a sells 500: cost share HALF_EVEN(4.5 x 500 / 2,000) = 1.125, proceeds V(500, 44000)
    # = 1.1363636363636364; a long realizes cost share - proceeds = -0.0113636363636364 -> -0.01136364 (the price
    # 44,000 is below the entry 44,444.44: a loss)
    cost_share = Fraction(9, 8)
    realized = rounded(cost_share - value(500, 44000), 8)
    assert realized == D("-0.01136364")
    assert position.qty == 1500 and position.cost == D("3.375")
    assert position.entry_price(engine.instruments["BTCUSD"].valuation) == rounded(Fraction(150000) / Fraction(
        "3.375"), 8) == D("44444.44444444")
    assert engine.ledger.balance(ledger.wallet("a", "BTC")) == 1 + realized
    assert engine.ledger.balance(ledger.wallet("m", "BTC")) == 1 - realized  # m's short realized the mirror


def test_isolated_margin_maintenance_upnl_bankruptcy_and_liquidation_prices_of_an_inverse_long() -> None:
    processor, _ = run([*coin_market(a="1", m="2"), btc("a", "buy", "1000", "50000", "isolated"),
                        btc("m", "sell", "1000", "50000"), mark("45600", symbol="BTCUSD")])
    engine = processor.engine
    assert engine.ledger.balance(ledger.isolated("a", "BTCUSD")) == D("0.2")  # V(1000, 50000) / 10
    view = accounts(engine)["a"]["positions"]["BTCUSD"]
    notional = value(1000, 45600)
    assert view["unrealized_pnl"] == str(rounded(2 - notional, 8))  # a long: C - N
    assert view["maintenance_margin"] == str(rounded(notional * Fraction("0.005"), 8))
    assert view["bankruptcy_price"] == str(rounded(Fraction(100000) / Fraction("2.2"), 8, "floor"))
    # LP: margin + C - 100,000 / P = 100,000 x 0.005 / P -> P = 100,000 x 1.005 / 2.2
    assert view["liquidation_price"] == str(rounded(Fraction(100500) / Fraction("2.2"), 8)) == "45681.81818182"


def test_an_inverse_short_bankruptcy_price_rounds_up_and_is_the_largest_price_when_its_margin_covers_its_cost() -> None:
    processor, _ = run([*coin_market(s="3", t="1", m="5"), btc("s", "sell", "1000", "50000", "isolated", "3"),
                        btc("t", "sell", "1000", "50000", "isolated", "1"), btc("m", "buy", "2000", "50000")])
    positions = accounts(processor.engine)
    # s: margin HALF_EVEN(2 / 3) = 0.66666667; BP = CEILING(100,000 / (2 - 0.66666667)) = CEILING(75,000.000187500...)
    assert positions["s"]["positions"]["BTCUSD"]["bankruptcy_price"] == str(
        rounded(Fraction(100000) / (2 - Fraction("0.66666667")), 8, "ceiling")) == "75000.00018751"
    # t at leverage 1: margin = cost, so C - M = 0: no price bankrupts the short
    assert positions["t"]["positions"]["BTCUSD"]["bankruptcy_price"] == LARGEST


def test_funding_is_paid_on_the_value_at_the_funding_mark_in_the_coin() -> None:
    processor, _ = run([*coin_market(a="1", m="1"), btc("a", "buy", "700", "50000", "isolated"),
                        btc("m", "sell", "700", "50000"), funding("0.0003", "47000", symbol="BTCUSD"),
                        funding("-0.0001", "47000", symbol="BTCUSD")])
    engine = processor.engine
    paid = rounded(value(700, 47000) * Fraction("0.0003"), 8)  # the long pays: 1.4893617021276596 x 0.0003
    received = rounded(value(700, 47000) * Fraction("0.0001"), 8)  # then receives
    assert paid == D("0.00044681") and received == D("0.00014894")
    assert engine.ledger.balance(ledger.isolated("a", "BTCUSD")) == D("0.14") - paid + received
    assert engine.ledger.balance(ledger.wallet("m", "BTC")) == 1 + paid - received
    assert engine.ledger.balance(ledger.funding("BTCUSD")) == 0


# ------------------------------------------------------------------------------------------------ bounds
def test_max_face_bounds_an_inverse_position_opened_or_grown_and_the_funds_net() -> None:
    big = "10000000000"
    processor, outcomes = run([
        fund("COIN", asset="BTC"), inverse(size="1000000", tick="1", lot="1", tiers=(("1000000000000", "0.005", "0"),)),
        transfer("seed", "fund:COIN", big, asset="BTC"),
        *(transfer(f"d-{account}", account, big, asset="BTC") for account in "abcm"),
        btc("a", "buy", "100000000", "50000"),  # a face of 10^8 x 10^6 = 10^14: refused on opening
        btc("a", "buy", "60000000", "50000"), btc("m", "sell", "60000000", "50000"),
        btc("a", "buy", "40000000", "50000"),  # would grow the long to a face of 10^14
        btc("m", "buy", "160000000", "50000"),  # would flip m's short to a long of 10^8 contracts
        btc("b", "buy", "60000000", "50000"), btc("c", "sell", "60000000", "50000"),
        liquidation("liq-a", "a", "60000000", "50000", symbol="BTCUSD"),  # the fund keeps the lot
        liquidation("liq-b", "b", "60000000", "50000", symbol="BTCUSD"),  # its net would be 1.2 x 10^8
    ])
    assert reasons(outcomes) == [
        "position face value would be 100000000000000, above the bound 10^14",
        "position face value would be 100000000000000, above the bound 10^14",
        "position face value would be 100000000000000, above the bound 10^14",
        "fund COIN would hold a face value of 120000000000000 in BTCUSD, above the bound 10^14",
    ]
    assert processor.engine.funds["COIN"].net_qty("BTCUSD") == 60000000


def test_a_lot_priced_outside_the_wire_is_clamped_with_a_finding() -> None:
    # a: cross long 1 contract @ 50,000 with a wallet of 1,000 BTC; its lot would cost V(1, 50000) + equity, far more
    # than V(1, 0.5) = 200 BTC: clamped to the tick (cost 200). t: isolated short at leverage 1: cost - margin = 0,
    # so the lot's cost V - equity = 0 < V(1, largest price): clamped to the largest price.
    processor, outcomes = run([*coin_market(a="1000", t="1", m="10"), btc("a", "buy", "1", "50000"),
                               btc("t", "sell", "1", "50000", "isolated", "1"), btc("m", "sell", "1", "50000"),
                               btc("m", "buy", "1", "50000"), mark("50000", symbol="BTCUSD"),
                               liquidation("liq-a", "a", "1", "50000", symbol="BTCUSD"),
                               liquidation("liq-t", "t", "1", "50000", symbol="BTCUSD")])
    assert reasons(outcomes) == []
    findings = [f for o in outcomes if isinstance(o, Applied) for f in o.effects.findings if f.kind == "bp_clamped"]
    assert [(f.account_id, f.details["clamped_to"]) for f in findings] == [("a", "0.5"), ("t", LARGEST)]
    lots = processor.engine.funds["COIN"].lots["BTCUSD"]
    assert [(lot.side, lot.cost) for lot in lots] == [("long", D(200)), ("short", D("0.00000001"))]  # V(1, largest)


# ------------------------------------------------------------------------------------------------ ADL
def test_an_inverse_short_lot_is_deleveraged_at_its_bp_against_longs_ranked_by_pnl_and_bp_over_distance() -> None:
    # s: isolated short 1,000 @ 50,000, 10x (C 2, M 0.2): BP CEILING(100,000 / 1.8) = 55,555.55555556. The fund
    # (0.001 BTC) refuses the lot. Longs: l1 cross 500 @ 50,000 (C 1), l2 cross 500 @ 40,000 (C 1.25), wallets 1.
    processor, outcomes = run([*coin_market("0.001", s="1", l1="1", l2="1"),
                               btc("s", "sell", "1000", "50000", "isolated"), btc("l1", "buy", "500", "50000"),
                               btc("l2", "buy", "500", "40000"), mark("55400", symbol="BTCUSD"),
                               liquidation("liq-s", "s", "1000", "55400", symbol="BTCUSD")])
    assert reasons(outcomes) == []
    events = outcomes[-1].effects.adl_events
    lot_cost = value(1000, 55400) - Fraction(rounded(Fraction("0.2") + value(1000, 55400) - 2, 8, "ceiling"))

    def score(cost: Fraction) -> Decimal:
        notional = value(500, 55400)
        upnl = cost - notional  # a long: C - N
        share = rounded(1 + upnl, 8, "ceiling")  # the account's only position: CEILING(TNC)
        bp = rounded(Fraction(50000) / (notional + Fraction(share)), 8, "floor")
        distance = 55400 - Fraction(bp)
        return rounded(upnl * Fraction(bp) / (cost * distance), 12)

    assert [(e.account_id, e.qty, e.score) for e in events] == [
        ("l2", D(500), score(Fraction("1.25"))), ("l1", D(500), score(Fraction(1)))]
    # each take's proceeds are its cost share of the lot: the first HALF_EVEN(cost x 500 / 1,000), the last the rest;
    # its fill price HALF_EVEN(500 x 100 / proceeds)
    first = rounded(lot_cost / 2, 8)
    assert events[0].price == rounded(Fraction(50000) / Fraction(first), 8)
    assert processor.engine.ledger.balance(ledger.fund("COIN")) == D("0.001")  # at the BP the fund realizes nothing


# ------------------------------------------------------------------------------------------------ properties
@st.composite
def inverse_journals(draw: st.DrawFn) -> list[dict[str, Any]]:
    records = coin_market(draw(st.sampled_from(["0.0001", "1", "100"])), a="3", b="3", c="3")
    price = draw(st.integers(20000, 80000))
    for step in range(draw(st.integers(1, 12))):
        account = draw(st.sampled_from("abc"))
        kind = draw(st.sampled_from(["fill", "fill", "mark", "funding", "liquidation"]))
        price = max(1000, price + 10 * draw(st.integers(-500, 500)))
        if kind == "fill":
            side = draw(st.sampled_from(["buy", "sell"]))
            qty = str(draw(st.integers(1, 2000)))
            other = draw(st.sampled_from([x for x in "abc" if x != account]))
            mode = draw(st.sampled_from(["cross", "isolated"]))
            records += [fill(f"f{step}", account, side, qty, str(price), symbol="BTCUSD", mode=mode, leverage="20"),
                        fill(f"g{step}", other, "sell" if side == "buy" else "buy", qty, str(price),
                             symbol="BTCUSD", mode=mode, leverage="20")]
        elif kind == "mark":
            records.append(mark(str(price), symbol="BTCUSD"))
        elif kind == "funding":
            records.append(funding(draw(st.sampled_from(["0.0001", "-0.0003"])), str(price), symbol="BTCUSD"))
        else:
            records.append(liquidation(f"liq{step}", account, "1", str(price), symbol="BTCUSD",
                                       executions=[("1", str(price + 10 * draw(st.integers(-50, 50))))]))
    return records


@settings(max_examples=60, deadline=None)
@given(inverse_journals())
def test_an_inverse_journal_conserves_money_and_books_every_lot_in_the_funds_favour(
        records: list[dict[str, Any]]) -> None:
    processor = Processor(Engine(check_conservation=True))  # checks the ledger sums to zero after every event
    for record in records:
        outcome = processor.process(decode_record(orjson.dumps(record)))
        if not isinstance(outcome, Applied) or record["type"] != "liquidation":
            continue
        for finding in outcome.effects.findings:
            assert finding.kind in ("not_liquidatable", "mark_mismatch", "bp_clamped", "adl_shortfall", "bad_debt",
                                    "negative_wallet")
    engine = processor.engine
    assert sum(engine.ledger.balances.values(), D(0)) == 0
    for position in (p for account in engine.positions for p in engine.positions.of(account)):
        valuation = engine.instruments[position.symbol].valuation
        bp = engine.bankruptcy_price(position)
        if position.margin_mode == "isolated" and bp != D(LARGEST):
            margin = Fraction(engine.ledger.balance(ledger.isolated(position.account_id, "BTCUSD")))
            cost = Fraction(position.cost)
            exact = Fraction(position.size * 100) / (cost + margin if position.qty > 0 else cost - margin)
            # in the fund's favour: a long's BP never above the exact one, a short's never below
            assert (Fraction(bp) <= exact) if position.qty > 0 else (Fraction(bp) >= exact)
        if position.cost > 0:
            harmonic = Fraction(position.size * 100) / Fraction(position.cost)
            assert position.entry_price(valuation) == rounded(harmonic, 8)


# ------------------------------------------------------------------------------------------------ reports
EXAMPLES = Path(__file__).parents[2] / "examples"


def test_explain_and_statements_speak_the_inverse_rules_in_the_coin(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    journal = EXAMPLES / "14-inverse-funding-and-fifo.jsonl"
    assert main(["explain", "--journal", str(journal), "liq-a", "--json"]) == 0
    explanation = orjson.loads(capsys.readouterr().out)
    # a's isolated margin after funding: 0.2 - 0.00020833; BP = FLOOR(100,000 / (2 + 0.19979167))
    assert explanation["bankruptcy"]["rule"] == ("isolated, inverse: BP = |qty| x contract_size / (cost + margin) = "
                                                 "100000 / (2 + 0.19979167)")
    assert explanation["bankruptcy"]["bankruptcy_price"] == str(rounded(Fraction(100000) / Fraction("2.19979167"),
                                                                        8, "floor")) == "45458.85020102"
    assert explanation["account_before"]["positions"]["BTCUSD"]["entry_price"] == "50000"
    assert main(["explain", "--journal", str(journal), "fl-16-0"]) == 0
    assert "1600 x 100 / 44000 x 0.0001" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["replay", str(journal), "--engine", "reference", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["statement", str(out), "--account", "wallet:m:BTC", "--out", str(tmp_path / "wallet.csv")]) == 0
    assert "funding 0.00069697, transfer 4, closing 4.00069697" in capsys.readouterr().out


def _adl_journal(fund_balance: str = "0.001") -> list[dict[str, Any]]:
    """s's isolated short 1,000 @ 50,000 (C 2, M 0.2) liquidated at 55,400 (equity 0.0050541516245487 <= MM
    0.00902527); the longs l1 (500 @ 50,000) and l2 (500 @ 40,000) are on the other side."""
    return [*coin_market(fund_balance, s="1", l1="1", l2="1"), btc("s", "sell", "1000", "50000", "isolated"),
            btc("l1", "buy", "500", "50000"), btc("l2", "buy", "500", "40000"), mark("55400", symbol="BTCUSD"),
            liquidation("liq-s", "s", "1000", "55400", symbol="BTCUSD"), mark("56000", symbol="BTCUSD"),
            funding("0.0001", "56000", symbol="BTCUSD")]


@pytest.mark.parametrize("policy", sorted(PRESETS))
def test_every_adl_policy_runs_an_inverse_round_in_value_space(policy: str) -> None:
    engine = Engine(check_conservation=True, adl_policy=preset(policy), adl_quantiles=True, full_adl_metrics=True)
    _, outcomes = run(_adl_journal(), processor=Processor(engine))
    assert reasons(outcomes) == []
    rounds = [r.record for o in outcomes if isinstance(o, Applied) for r in o.effects.adl_rounds]
    if policy in ("socialized", "bybit"):
        # the fund keeps every lot (socialized), or its PnL on the symbol has not fallen (Bybit's trigger: the short
        # lot, long in value space, is worth V(1000, 55400) - cost > 0 at the mark)
        assert rounds == []
        return
    (round_,) = rounds
    # the short lot's cost V(1000, 55400) - CEILING(0.0050541516245487) = 1.7999999916245487: its BP HALF_EVEN(100,000 /
    # cost) = 55,555.55581406; at 55,400 closing it costs V(1000, 55400) = 1.8050541516245487 > the cost, so the lot
    # (long in value space) has no deficit, and its takers (short in value space) give up nothing against the mark
    assert (round_["bankruptcy_price"], round_["deficit"], round_["haircut"]) == (
        rounded(Fraction(100000) / Fraction("1.7999999916245487"), 8), D(0), D(0))
    assert round_["closed"] == D(1000)
    assert engine.ledger.balance(ledger.funding("BTCUSD")) == 0


def test_simulation_liquidates_an_inverse_position_down_to_the_next_bracket() -> None:
    # brackets: V <= 1 BTC at 1%, <= 100 at 5% (cum 0.04). a: isolated long 100,000 contracts (s = 1) @ 50,000 at 10x
    # (C 2, M 0.2). At 46,000: N = 2.1739130434782609 (bracket 2); equity 0.2 + 2 - N = 0.0260869565217391 <= MM
    # HALF_EVEN(N x 0.05) - 0.04 = 0.06869565: liquidated, keeping FLOOR(1 x 46,000 / (1 x 1)) = 46,000 contracts (worth
    # 1 BTC, the first bracket's ceiling): the order closes 54,000.
    from backstop.core.simulation import SimulationParams, Simulator

    tiers = (("1", "0.01", "0"), ("100", "0.05", None))
    records = [fund("COIN", asset="BTC"), inverse(size="1", tick="0.5", tiers=tiers),
               transfer("seed", "fund:COIN", "100", asset="BTC"), transfer("d-a", "a", "1", asset="BTC"),
               transfer("d-m", "m", "10", asset="BTC"), btc("a", "buy", "100000", "50000", "isolated"),
               btc("m", "sell", "100000", "50000"), mark("46000", symbol="BTCUSD")]
    simulator = Simulator(Processor(Engine(check_conservation=True)), SimulationParams())
    decided = [record for raw in records for record, _ in simulator.process(decode_record(orjson.dumps(raw)))
               if record.type == "liquidation"]
    assert [(record.account_id, record.qty) for record in decided] == [("a", D(54000))]
    assert simulator.processor.engine.positions.get("a", "BTCUSD").qty == 46000  # type: ignore[union-attr]


def test_hedge_sides_of_an_inverse_symbol_share_the_cross_equity_by_maintenance_margin() -> None:
    # u (wallet 1 BTC) holds a cross long and a cross short of 1,000 @ 50,000 (cost 2 each). At 45,000: N =
    # V(1000, 45000) = 2.2222222222222222 on each side; uPnL -0.2222222222222222 (long: C - N) and +0.2222222222222222
    # (short: N - C); TNC 1; MM 0.01111111 each, so each side's share is CEILING(1 x 1/2) = 0.5. Long BP =
    # FLOOR(100,000 / (N + 0.5)), short BP = CEILING(100,000 / (N - 0.5)).
    processor, outcomes = run([*coin_market(u="1", m="1"),
                               fill("ul", "u", "buy", "1000", "50000", symbol="BTCUSD", position_side="long"),
                               fill("us", "u", "sell", "1000", "50000", symbol="BTCUSD", position_side="short"),
                               fill("m1", "m", "sell", "1000", "50000", symbol="BTCUSD"),
                               fill("m2", "m", "buy", "1000", "50000", symbol="BTCUSD"),
                               mark("45000", symbol="BTCUSD")])
    assert reasons(outcomes) == []
    positions = accounts(processor.engine)["u"]["positions"]
    long, short = positions["BTCUSD:long"], positions["BTCUSD:short"]
    notional = value(1000, 45000)
    assert (long["unrealized_pnl"], short["unrealized_pnl"]) == ("-0.22222222", "0.22222222")
    assert long["margin_balance"] == short["margin_balance"] == "1"
    assert long["bankruptcy_price"] == str(rounded(Fraction(100000) / (notional + Fraction("0.5")), 8, "floor"))
    assert short["bankruptcy_price"] == str(rounded(Fraction(100000) / (notional - Fraction("0.5")), 8, "ceiling"))
    assert (long["bankruptcy_price"], short["bankruptcy_price"]) == ("36734.69387755", "58064.51612904")


@st.composite
def extreme_inverse_journals(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Contract sizes, prices and quantities at the wire's bounds: values that round to nothing, faces at MAX_FACE,
    lots clamped at either end."""
    size = draw(st.sampled_from(["0.00000001", "1", "100", "9999999999.99999999"]))
    prices = st.sampled_from(["0.00000001", "0.5", "1", "50000", "9999999999.99999999"])
    quantities = st.sampled_from(["1", "7", "10000", "99999999", "999999999999"])
    records = [fund("COIN", asset="BTC"),
               inverse(size=size, tick="0.00000001", tiers=(("1", "0.01", "0"), ("9999999999999999", "0.5", None))),
               transfer("seed", "fund:COIN", draw(st.sampled_from(["0.00000001", "9999999999999999"])), asset="BTC"),
               *(transfer(f"d-{a}", a, draw(st.sampled_from(["0.00000001", "1", "9999999999999999"])), asset="BTC")
                 for a in "abc")]
    for step in range(draw(st.integers(1, 10))):
        account = draw(st.sampled_from("abc"))
        kind = draw(st.sampled_from(["fill", "fill", "mark", "funding", "liquidation"]))
        price = draw(prices)
        if kind == "fill":
            side, qty = draw(st.sampled_from(["buy", "sell"])), draw(quantities)
            mode = draw(st.sampled_from(["cross", "isolated"]))
            leverage = draw(st.sampled_from(["0.01", "1", "1000"]))
            records += [fill(f"f{step}", account, side, qty, price, symbol="BTCUSD", mode=mode, leverage=leverage),
                        fill(f"g{step}", "c" if account != "c" else "a", "sell" if side == "buy" else "buy", qty,
                             price, symbol="BTCUSD", mode=mode, leverage=leverage)]
        elif kind == "mark":
            records.append(mark(price, symbol="BTCUSD"))
        elif kind == "funding":
            records.append(funding(draw(st.sampled_from(["0.0001", "-0.9"])), price, symbol="BTCUSD"))
        else:
            records.append(liquidation(f"liq{step}", account, draw(quantities), price, symbol="BTCUSD",
                                       executions=[("1", draw(prices))]))
    return records


@settings(max_examples=150, deadline=None)
@given(extreme_inverse_journals())
def test_inverse_journals_at_the_wire_bounds_never_break_the_engine(records: list[dict[str, Any]]) -> None:
    """Every record is applied or rejected with a reason (no exception, no inexact arithmetic), money is conserved
    after every event, and a restored snapshot has the same state hash."""
    processor = Processor(Engine(check_conservation=True))
    for record in records:
        processor.process(decode_record(orjson.dumps(record)))
    engine = processor.engine
    accounts(engine)  # every report figure can be formed
    assert state_hash(restore(orjson.loads(orjson.dumps(state_document(engine))))) == state_hash(engine)


def test_the_funds_trigger_on_a_mark_move_deleverages_the_excess_in_contracts() -> None:
    # a: isolated long 1,000 @ 50,000 (C 2, M 0.2), liquidated at 45,000: equity 0.2 + 2 - 2.2222222222222222 ->
    # behind CEILING = -0.02222222, lot cost 2.2222222222222222 - 0.02222222 = 2.2000000022222222. The fund (2.3 BTC,
    # ratio 1) keeps it: V(1000, 45000) = 2.2222222222222222 <= 2.3. At 40,000 the lot (long in contracts) is worth
    # V(1000, 40000) = 2.5: excess 0.2, qty CEILING(0.2 x 40,000 / (100 x 1)) = 80 contracts, deleveraged against m's
    # short at the lot's BP: proceeds HALF_EVEN(2.2000000022222222 x 80 / 1,000) = 0.176, price HALF_EVEN(8,000 / 0.176)
    # = 45,454.54545455; then V(920, 40000) = 2.3 is accepted. m realizes (a short: proceeds - cost share) 0.176 -
    # HALF_EVEN(2 x 80 / 1,000) = 0.016.
    processor, outcomes = run([*coin_market("2.3", a="1", m="1"), btc("a", "buy", "1000", "50000", "isolated"),
                               btc("m", "sell", "1000", "50000"), mark("45000", symbol="BTCUSD"),
                               liquidation("liq-a", "a", "1000", "45000", symbol="BTCUSD"),
                               mark("40000", symbol="BTCUSD")])
    assert reasons(outcomes) == []
    assert isinstance(outcomes[-2], Applied) and outcomes[-2].effects.adl_events == []
    last = outcomes[-1]
    assert isinstance(last, Applied)
    assert [(e.account_id, e.side, e.qty, e.price) for e in last.effects.adl_events] == [
        ("m", "short", D(80), D("45454.54545455"))]
    assert [(r.record["trigger"], r.record["qty"]) for r in last.effects.adl_rounds] == [("inventory", D(80))]
    engine = processor.engine
    assert engine.funds["COIN"].net_qty("BTCUSD") == 920
    assert engine.ledger.balance(ledger.wallet("m", "BTC")) == D("1.016")


def test_bybits_drawdown_trigger_resets_an_inverse_lots_proceeds_in_value_space() -> None:
    # a: isolated long 1,000 @ 50,000 (C 2, M 0.2) liquidated at 40,000: equity 0.2 + 2 - 2.5 = -0.3, so the lot costs
    # V + equity = 2.2 and is worth 2.5 at the mark: the fund's PnL on it (an inverse long is short in value space)
    # is 2.2 - 2.5 = -0.3. Fund 0.5 BTC: level = 0 - 0.3 x 0.5 = -0.15 > -0.3, so the trigger fires; room = (-0.3 -
    # (-0.3)) - (-0.15) = 0.15 and the reset proceeds are C + room = 2.35 (between 2.2 and 2.5; FLOOR for a lot short
    # in value space): the fund loses 0.15, down to the level, and m (short in contracts) pays 2.35 for what is worth
    # 2.5, at HALF_EVEN(100,000 / 2.35) = 42,553.19148936, realizing 2.35 - 2 = 0.35.
    engine = Engine(check_conservation=True, adl_policy=preset("bybit"))
    _, outcomes = run([*coin_market("0.5", a="1", m="1"), btc("a", "buy", "1000", "50000", "isolated"),
                       btc("m", "sell", "1000", "50000"), mark("40000", symbol="BTCUSD"),
                       liquidation("liq-a", "a", "1000", "40000", symbol="BTCUSD")], processor=Processor(engine))
    assert reasons(outcomes) == []
    last = outcomes[-1]
    assert isinstance(last, Applied)
    assert [(r.record["trigger"], r.record["price"]) for r in last.effects.adl_rounds] == [("drawdown", "reset")]
    assert [(e.account_id, e.qty, e.price) for e in last.effects.adl_events] == [("m", D(1000), D("42553.19148936"))]
    assert [(e.kind, e.amount) for e in last.effects.fund_entries] == [("liquidation_loss", D("-0.15"))]
    assert engine.ledger.balance(ledger.fund("COIN")) == D("0.35")
    assert engine.ledger.balance(ledger.wallet("m", "BTC")) == D("1.35")
