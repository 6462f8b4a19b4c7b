"""The example scenarios in examples/, replayed through the CLI, with the numbers docs/examples.md quotes.

Every expected number here was worked out by hand from the rules of docs/design.md §4 (the arithmetic is in comments).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from backstop.entrypoints.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples"
D = Decimal


# Examples only the reference engine replays (none: the compiled engine has the inverse rules too).
REFERENCE_ONLY: set[str] = set()


def replay(name: str, out: Path) -> dict[str, Any]:
    engine = ["--engine", "reference"] if name in REFERENCE_ONLY else []
    assert main(["replay", str(EXAMPLES / name), "--out", str(out), "--check-conservation", *engine]) == 0
    result: dict[str, Any] = {
        "summary": json.loads((out / "summary.json").read_text()),
        "accounts": json.loads((out / "accounts.json").read_text()),
    }
    for stream in ("fund-ledger", "adl-events", "findings", "dead-letter"):
        result[stream] = [json.loads(line) for line in (out / f"{stream}.jsonl").read_text().splitlines()]
    assert result["summary"]["ledger_sum"] == "0"
    assert result["dead-letter"] == []
    return result


def test_01_isolated_liquidation_with_surplus(tmp_path: Path) -> None:
    # u1: isolated long 2 @ 2000, 4x -> margin 1000, BP = 2000 - 1000/2 = 1500; sold at 1505 -> fund +10.
    out = replay("01-isolated-liquidation-surplus.jsonl", tmp_path)
    assert out["summary"]["events_applied"] == 9
    assert out["summary"]["funds"]["MAIN"]["balance"] == "5010"
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in out["fund-ledger"]] == [
        ("transfer", "5000", "5000"), ("liquidation_gain", "10", "5010")]
    assert out["fund-ledger"][1]["liquidation_id"] == "liq-1"
    assert out["accounts"]["u1"] == {"wallet": "0", "wallets": {"USDT": "0"}, "positions": {}}
    u2 = out["accounts"]["u2"]["positions"]["ETHUSDT"]
    # u2: cross short 2 @ 2000, wallet 3000, mark 1510: TNC = 3000 + 980; BP = 1510 + 3980/2 = 3500.
    assert (u2["qty"], u2["unrealized_pnl"], u2["bankruptcy_price"]) == ("-2", "980", "3500")
    # LP: 3000 + (-2)(P - 2000) = 2 P 0.01  ->  P = 7000 / 2.02
    assert u2["liquidation_price"] == "3465.34653465"


def test_02_adl_walks_the_queue(tmp_path: Path) -> None:
    # S: isolated short 20 @ 600, 12x -> margin 1000, BP 650. Fund balance 100 < 20 x 645 of inventory:
    # the fund refuses the lot and it is deleveraged against the longs in BitMEX order.
    out = replay("02-adl-walks-queue.jsonl", tmp_path)
    assert [(e["account_id"], e["qty"], e["price"], e["rank"], e["score"], e["quantile"])
            for e in out["adl-events"]] == [("A2", "10", "650", 1, "0.6", 5), ("A5", "10", "650", 2, "0.5", 5)]
    assert out["summary"]["funds"]["BNB"]["balance"] == "100"
    assert out["findings"] == []
    # A2 bought 10 @ 500 and was closed at 650: +1500 realized on a wallet of 1667.5.
    assert out["accounts"]["A2"] == {"wallet": "3167.5", "wallets": {"USDT": "3167.5"}, "positions": {}}
    assert out["accounts"]["A5"]["positions"]["BNBUSDT"]["qty"] == "10"
    assert out["accounts"]["S"]["wallet"] == "0"


def test_03_cross_account_shares_equity_by_maintenance_margin(tmp_path: Path) -> None:
    # c1: wallet 10,000; long 1 BTC @ 100,000 and 10 ETH @ 4,000; marks 93,000 and 3,750.
    # TNC = 10,000 - 7,000 - 2,500 = 500. MM: BTC 93,000 x 0.5% - 50 = 415; ETH 37,500 x 0.5% = 187.5.
    # BTC's share = 500 x 415 / 602.5 = 344.39834024... rounded up (fund's favour) to 344.39834025;
    # BP = 93,000 - 344.39834025 = 92,655.60165975; sold at 92,900 -> fund +244.39834025.
    out = replay("03-cross-two-positions.jsonl", tmp_path)
    gain = out["fund-ledger"][-1]
    assert (gain["fund_id"], gain["kind"], gain["amount"]) == ("BTC", "liquidation_gain", "244.39834025")
    assert out["summary"]["funds"]["ETH"]["balance"] == "500000"
    c1 = out["accounts"]["c1"]
    # realized on BTC = 92,655.60165975 - 100,000; the wallet keeps ETH's share of equity behind ETH.
    assert c1["wallet"] == "2655.60165975"
    eth = c1["positions"]["ETHUSDT"]
    assert D(eth["margin_balance"]) == D("155.60165975")  # = 500 - 344.39834025, ETH's share
    assert eth["bankruptcy_price"] == "3734.43983402"  # 3,750 - 155.60165975 / 10, half-even
    assert "BTCUSDT" not in c1["positions"]


def test_04_surplus_policy_trader_caps_the_fund_at_the_fee(tmp_path: Path) -> None:
    # t1, t2: isolated long 0.1 @ 51,500, margin 50 -> BP 51,000 (dYdX Q7 setup).
    # t1 sold at 51,600: surplus 60, fund keeps 0.5% x 5,160 = 25.80, t1 gets 34.20 back.
    # t2 sold at 51,051: surplus 5.10 < cap 25.53: the fund keeps all of it.
    out = replay("04-surplus-trader.jsonl", tmp_path)
    assert [(e["liquidation_id"], e["amount"]) for e in out["fund-ledger"][1:]] == [("liq-t1", "25.8"),
                                                                                     ("liq-t2", "5.1")]
    assert out["accounts"]["t1"]["wallet"] == "34.2"
    assert out["accounts"]["t2"]["wallet"] == "0"
    assert out["summary"]["funds"]["DYDX"]["balance"] == "10030.9"


def test_05_funding_and_fund_inventory(tmp_path: Path) -> None:
    # iso: isolated long 1 @ 110,000, 50x -> margin 2,200, BP 107,800; taken over at mark 108,200 with no
    # executions: inventory 108,200 <= 1 x 200,000, so the fund keeps the lot.
    # funding 0.01% at 108,000: long 2 pays 21.6, short 1 receives 10.8, the fund's long 1 pays 10.8.
    # fund sells 1 @ 108,100: gain 300, fee 43.24.
    out = replay("05-funding-and-fund-inventory.jsonl", tmp_path)
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in out["fund-ledger"]] == [
        ("transfer", "200000", "200000"), ("funding", "-10.8", "199989.2"),
        ("liquidation_gain", "300", "200289.2"), ("fee", "-43.24", "200245.96")]
    assert out["accounts"]["long"]["wallet"] == str(D(20000) - 88 - D("21.6"))
    assert out["accounts"]["short"]["wallet"] == str(D(20000) - 44 + D("10.8"))
    assert out["accounts"]["fund:MAIN"]["positions"] == {}


def test_06_bad_debt_deleverages_all_inventory(tmp_path: Path) -> None:
    # a, b: isolated long 2 @ 4,000, 8x -> margin 1,000, BP 3,500. a's lot is accepted
    # (2 x 3,530 = 7,060 <= 20 x 500). b's lot is sold at 3,200: loss 600 -> fund 500 - 600 = -100,
    # so all inventory (a's lot) is deleveraged at its BP 3,500 against the best-ranked short, s1.
    out = replay("06-bad-debt.jsonl", tmp_path)
    assert out["summary"]["funds"]["MAIN"]["balance"] == "-100"
    assert out["summary"]["funds"]["MAIN"]["bad_debt"] == "100"
    assert [(e["account_id"], e["qty"], e["price"], e["liquidation_id"]) for e in out["adl-events"]] == [
        ("s1", "2", "3500", "liq-a")]
    assert [(f["kind"], f["details"]["added"]) for f in out["findings"]] == [("bad_debt", "100")]
    assert out["accounts"]["fund:MAIN"]["positions"] == {}
    assert out["accounts"]["s1"]["positions"]["ETHUSDT"]["qty"] == "-1"
    # s1 shorted 3 @ 4,000 and bought 2 back at 3,500 in the ADL: +1,000 realized.
    assert out["accounts"]["s1"]["wallet"] == "6000"


def test_07_a_hedged_account_is_deleveraged_on_one_side(tmp_path: Path) -> None:
    # Hedge mode (docs/design.md §7). h: cross long 1 and cross short 1 @ 100,000 (wallet 20,000); s: isolated short
    # 1 @ 100,000, 10x -> margin 10,000, BP 110,000; o: cross long 0.5 @ 100,000 (wallet 50,000). Mark 109,000.
    # s: 10,000 - 9,000 = 1,000 <= MM 1,090: liquidated; the fund (100) refuses the lot (109,000 > 1 x 100), so the
    # lot is deleveraged against the long queue at its BP 110,000.
    # h's long: TNC = 20,000 + 9,000 - 9,000 = 20,000, MM 1,090 on each side, share 20,000 x 1,090 / 2,180 = 10,000,
    # BP (109,000 - 10,000) / 1 = 99,000, score 9,000 x 109,000 / (100,000 x (109,000 - 99,000)) = 0.981.
    # o's long: share = TNC = 54,500, BP (54,500 - 54,500) / 0.5 = 0, score 4,500 x 109,000 / (50,000 x 109,000) = 0.09.
    out = replay("12-hedge-deleveraged-one-side.jsonl", tmp_path)
    assert out["summary"]["events_applied"] == 12
    assert [(e["account_id"], e["side"], e["qty"], e["price"], e["rank"], e["score"], e["quantile"])
            for e in out["adl-events"]] == [("h", "long", "1", "110000", 1, "0.981", 5)]
    assert out["summary"]["funds"]["MAIN"]["balance"] == "100"  # took the lot at 110,000, gave it up at 110,000
    assert out["findings"] == []
    h = out["accounts"]["h"]
    # h's long closed at 110,000: +10,000; its short stays, keyed BTCUSDT:short with a signed qty
    assert h["wallet"] == "30000" and list(h["positions"]) == ["BTCUSDT:short"]
    short = h["positions"]["BTCUSDT:short"]
    # alone now: TNC = 30,000 - 9,000 = 21,000; BP (109,000 + 21,000) / 1 = 130,000;
    # LP: 30,000 + (100,000 - P) = 0.01 P -> P = 130,000 / 1.01 = 128,712.87128713 (half-even at 1e-8)
    assert (short["qty"], short["unrealized_pnl"], short["margin_balance"], short["bankruptcy_price"],
            short["liquidation_price"]) == ("-1", "-9000", "21000", "130000", "128712.87128713")
    assert out["accounts"]["o"]["positions"]["BTCUSDT"]["qty"] == "0.5"  # untouched
    # s: its isolated margin of 10,000 is the whole loss of 1 x (110,000 - 100,000)
    assert out["accounts"]["s"] == {"wallet": "0", "wallets": {"USDT": "0"}, "positions": {}}


def test_13_inverse_isolated_liquidations_with_a_surplus_and_a_loss(tmp_path: Path) -> None:
    # Inverse BTCUSD (docs/design.md §7): contract_size 100 USD, money in BTC, V(q, P) = HALF_EVEN(q x 100 / P, 1e-16).
    # a and b: isolated long 1,000 @ 50,000, 10x: cost C = V(1000, 50000) = 2, margin 0.2 each; BP = FLOOR(100,000 /
    # (C + M)) = FLOOR(45,454.5454...) = 45,454.54545454. m: cross short 2,000 @ 50,000 (cost 4, wallet 2).
    # Mark 45,600: N = V(1000, 45600) = 2.19298245614035087719... -> 2.1929824561403509; uPnL = C - N =
    # -0.1929824561403509; equity 0.0070175438596491 <= MM HALF_EVEN(N x 0.005) = 0.01096491: liquidatable.
    # Equity behind = CEILING(0.0070175438596491, 1e-8) = 0.00701755; the lot's cost (an inverse long takes
    # V + equity) = 2.2000000061403509 (C + M = 2.2 and the rounding in the fund's favour); its BP HALF_EVEN(100,000 /
    # 2.2000000061403509) = 45,454.54532768. Each trader realizes HALF_EVEN(2 - 2.2000000061403509) = -0.20000001 and
    # gets 0.2 of margin back: wallet 0.8 + 0.2 - 0.20000001 = 0.79999999.
    # a's lot sold at 45,500: proceeds V(1000, 45500) = 2.1978021978021978; gain (a long lot: cost - proceeds)
    # HALF_EVEN(0.0021978083381531) = 0.00219781. b's at 45,000: proceeds 2.2222222222222222, loss
    # HALF_EVEN(-0.0222222160818713) = -0.02222222. Fund: 1 + 0.00219781 - 0.02222222 = 0.97997559.
    out = replay("13-inverse-isolated-liquidations.jsonl", tmp_path)
    assert [(e["kind"], e["amount"], e["balance_after"], e["liquidation_id"]) for e in out["fund-ledger"]] == [
        ("transfer", "1", "1", None), ("liquidation_gain", "0.00219781", "1.00219781", "liq-a"),
        ("liquidation_loss", "-0.02222222", "0.97997559", "liq-b")]
    assert out["findings"] == [] and out["adl-events"] == []
    assert out["accounts"]["a"]["wallets"] == out["accounts"]["b"]["wallets"] == {"BTC": "0.79999999"}
    m = out["accounts"]["m"]["positions"]["BTCUSD"]
    # m at 45,600: N = V(2000, 45600) = 4.3859649122807018, uPnL = N - C = 0.38596491 (reported), TNC = 2 + uPnL,
    # MM HALF_EVEN(N x 0.005) = 0.02192982; share CEILING(TNC) = 2.38596492; BP = CEILING(200,000 / (N - share)) =
    # 100,000.00038597; LP = HALF_EVEN(200,000 x (1 - 0.005) / (C - wallet)) = 99,500 (V(2000, 99500) <= 50).
    assert (m["qty"], m["entry_price"], m["cost"], m["unrealized_pnl"], m["maintenance_margin"], m["margin_balance"],
            m["bankruptcy_price"], m["liquidation_price"]) == (
        "-2000", "50000", "4", "0.38596491", "0.02192982", "2.38596491", "100000.00038597", "99500")


def test_14_inverse_funding_and_a_coin_fund_selling_its_lots_fifo(tmp_path: Path) -> None:
    # a: isolated long 1,000 @ 50,000, 10x (C 2, M 0.2); b: isolated long 600 @ 48,000, 10x (C = 60,000 / 48,000 =
    # 1.25, M 0.125); m: cross short 1,600 (C 3.25, wallet 4). Fund COIN: 10 BTC.
    # Funding at mark 48,000, rate 0.0001: a pays HALF_EVEN(V(1000, 48000) x 0.0001) = HALF_EVEN(2.0833333333333333 x
    # 0.0001) = 0.00020833 from its margin; b pays 1.25 x 0.0001 = 0.000125; m receives HALF_EVEN(3.3333333333333333 x
    # 0.0001) = 0.00033333: the clearing account ends at 0. M_a = 0.19979167, M_b = 0.124875.
    # Mark 45,000: a's N = 2.2222222222222222, equity 0.19979167 + 2 - N = -0.0224305522222222, equity behind CEILING ->
    # -0.02243055, lot cost N + equity = 2.1997916722222222 (BP 45,458.85015511); a realizes HALF_EVEN(2 - cost) =
    # -0.19979167, exactly its margin: wallet 0.8. The fund keeps the lot (V(1000, 45000) <= 1 x 10).
    # Mark 43,800: b's N = V(600, 43800) = 1.3698630136986301, equity 0.0050119863013699 <= MM 0.00684932; behind
    # 0.00501199, lot cost 1.3748750036986301; b realizes -0.124875 (its margin): wallet 0.875.
    # Funding at 44,000: the fund's net 1,600 long pays HALF_EVEN(V(1600, 44000) x 0.0001) =
    # HALF_EVEN(3.6363636363636364 x 0.0001) = 0.00036364; m receives the same: wallet 4 + 0.00033333 + 0.00036364 =
    # 4.00069697.
    # The fund sells 1,200 @ 44,500, FIFO: all of a's lot: proceeds V(1000, 44500) = 2.2471910112359551, gain
    # HALF_EVEN(2.1997916722222222 - 2.2471910112359551) = -0.04739934; then 200 of b's 600: cost share
    # HALF_EVEN(1.3748750036986301 x 200 / 600) = 0.45829167, proceeds V(200, 44500) = 0.4494382022471910, gain
    # HALF_EVEN(0.0088534677528090) = 0.00885347. Fund: 10 - 0.00036364 - 0.04739934 + 0.00885347 = 9.96109049.
    # b's lot keeps 400 at cost 1.3748750036986301 - 0.45829167 = 0.9165833336986301: BP HALF_EVEN(40,000 / cost) =
    # 43,640.33092178.
    out = replay("14-inverse-funding-and-fifo.jsonl", tmp_path)
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in out["fund-ledger"]] == [
        ("transfer", "10", "10"), ("funding", "-0.00036364", "9.99963636"),
        ("liquidation_loss", "-0.04739934", "9.95223702"), ("liquidation_gain", "0.00885347", "9.96109049")]
    assert [e["liquidation_id"] for e in out["fund-ledger"][2:]] == ["liq-a", "liq-b"]
    assert out["findings"] == [] and out["adl-events"] == []
    accounts = out["accounts"]
    assert (accounts["a"]["wallet"], accounts["b"]["wallet"], accounts["m"]["wallet"]) == ("0.8", "0.875",
                                                                                           "4.00069697")
    assert accounts["fund:COIN"]["positions"]["BTCUSD"] == {
        "qty": "400", "mark_price": "43800",
        "lots": [{"liquidation_id": "liq-b", "side": "long", "qty": "400", "bankruptcy_price": "43640.33092178",
                  "seq": 15}]}
    m = accounts["m"]["positions"]["BTCUSD"]
    # the harmonic entry: 1,600 x 100 / 3.25 = 49,230.76923077; m's wallet covers more than its short can lose, so no
    # price bankrupts it (the largest PRICE) and none liquidates it ("0")
    assert (m["entry_price"], m["unrealized_pnl"], m["bankruptcy_price"], m["liquidation_price"]) == (
        "49230.76923077", "0.40296804", "9999999999.99999999", "0")
    assert out["summary"]["funds"]["COIN"]["inventory_notional"] == "0.91324201"  # V(400, 43800), reported


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.jsonl")))
def test_every_example_replays_to_the_same_hashes_twice(name: str, tmp_path: Path) -> None:
    first = replay(name, tmp_path / "a")["summary"]
    second = replay(name, tmp_path / "b")["summary"]
    assert (first["head_hash"], first["state_hash"]) == (second["head_hash"], second["state_hash"])

