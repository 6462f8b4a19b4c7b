"""The ADL lab's policies and fairness metrics (docs/design.md §11) on the hand-worked journals of examples/, in both
engines. Every expected number was worked out by hand from the rules (the arithmetic is in the comments).

examples/07-adl-lab.jsonl, the base: fund LAB holds 100. L's isolated long 10 @ 100 (10x: margin 100, BP 90) is
liquidated at mark 85; 4 are sold in the market at 70 (cost share 360, the fund loses 80: balance 20), and the fund
refuses the other 6 (lot cost 540, BP 90; 6 x 85 = 510 of inventory > 1 x 20). The counterparties are four isolated
shorts, at mark 85:

    account  short @ entry  leverage  margin  uPnL (u)  equity  BP   leverage s x 85 / equity  BitMEX score
    C1       10 @ 120       5x        240     350       590     144  1.440677966102            0.420197740113
    C2        5 @ 100       20x       25      75        100     105  4.25                      0.6375
    C3       20 @ 90        2x        900     100       1000    135  1.7                       0.094444444444
    C4        5 @ 80        10x       40      -25       15      88   28.333333333333           negative

The round's deficit is 540 - 6 x 85 = 30 (the shorts buy at 90 what is worth 85: 5 a unit); the fund could pay 20 of
it, so 10 was needed.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import scenario
from backstop.core.adl import quantile
from backstop.engines import ENGINES, compiled_available
from backstop.entrypoints.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples"
D = Decimal


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "compiled" and compiled_available() is not None:
        pytest.skip("the compiled engine is not built here")
    return name


def replay(tmp_path: Path, engine: str, example: str, *options: str) -> dict[str, Any]:
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLES / example), "--out", str(out), "--engine", engine, "--check-conservation",
                 "--adl-metrics", "full", *options]) == 0
    result: dict[str, Any] = {"summary": json.loads((out / "summary.json").read_text())}
    for stream in ("fund-ledger", "adl-events", "adl-rounds", "findings", "dead-letter"):
        result[stream] = [json.loads(line) for line in (out / f"{stream}.jsonl").read_text().splitlines()]
    assert result["dead-letter"] == [] and result["summary"]["ledger_sum"] == "0"
    return result


def takes(out: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["account_id"], e["qty"], e["price"]) for e in out["adl-events"]]


def figures(round_: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(round_[k] for k in ("deficit", "needed", "haircut", "overshoot", "over_use", "worst_share"))


def test_the_queue_takes_the_top_of_the_queue_and_overshoots_what_was_needed(tmp_path: Path, engine: str) -> None:
    out = replay(tmp_path, engine, "07-adl-lab.jsonl")
    assert takes(out) == [("C2", "5", "90"), ("C1", "1", "90")]  # C2 ranks first (0.6375), then C1
    [round_] = out["adl-rounds"]
    assert (round_["id"], round_["trigger"], round_["policy"], round_["price"]) == (
        "round-15-0", "takeover", "queue", "bankruptcy")
    assert (round_["qty"], round_["closed"], round_["bankruptcy_price"], round_["fund_balance"]) == (
        "6", "6", "90", "20")
    # haircuts: C2 5 x 5 = 25 of its 75, C1 1 x 5 = 5 of its 350; H = 30 against 10 needed: 20 too much, 3 times
    # the need; worst share 25 / (75 + 1e-8) = 0.33333333328888... -> 0.333333333289
    assert figures(round_) == ("30", "10", "30", "20", "3", "0.333333333289")
    # pairs (hit, hit later or never): (C2,C1) (C2,C3) (C2,C4) (C1,C3) (C1,C4) = 5. Higher profit later: C1 and C3
    # after C2: 2 of 5. Higher leverage later: C4 after C2, C3 and C4 after C1: 3 of 5.
    assert round_["inversions"] == {"profit": "0.4", "leverage": "0.6", "pairs": 5}
    assert round_["hits"] == [
        {"account_id": "C2", "qty": "5", "haircut": "25", "profit": "75", "leverage": "4.25", "pnl_pct": "0.15"},
        {"account_id": "C1", "qty": "1", "haircut": "5", "profit": "350", "leverage": "1.440677966102",
         "pnl_pct": "0.291666666667"}]
    # eligible leverages 1.44, 1.7, 4.25, 28.33: nearest rank p10 = 1st, p50 = 2nd, p90 = 4th of 4
    assert round_["leverage"]["eligible"] == {"count": 4, "p10": "1.440677966102", "p50": "1.7",
                                              "p90": "28.333333333333", "max": "28.333333333333", "unbounded": 0}
    assert round_["pnl_pct"]["hit"] == {"count": 2, "p10": "0.15", "p50": "0.15", "p90": "0.291666666667",
                                        "max": "0.291666666667"}
    adl = out["summary"]["adl"]
    assert (adl["rounds"], adl["events"], adl["notional"], adl["overshoot"], adl["accounts_affected"]) == (
        1, 2, "540", "20", 2)
    assert adl["fund_max_drawdown"] == {"LAB": "80"}


def test_pro_rata_spreads_by_size(tmp_path: Path, engine: str) -> None:
    out = replay(tmp_path, engine, "07-adl-lab.jsonl", "--adl-policy", "pro_rata")
    # 6 of 40 held: FLOOR(5 x 6 / 40) = 0, FLOOR(10 x 6 / 40) = 1, FLOOR(20 x 6 / 40) = 3, 0; the 2 lots left go
    # in queue order: C2, C1. Events stay in queue order.
    assert takes(out) == [("C2", "1", "90"), ("C1", "2", "90"), ("C3", "3", "90")]
    [round_] = out["adl-rounds"]
    # C3 gives 15 of its 100: the worst share, 15 / (100 + 1e-8)
    assert figures(round_) == ("30", "10", "30", "20", "3", "0.149999999985")
    # an allocation made at once: pairs (hit, never hit) = 3 x 1; C4 has the lowest profit and the highest leverage
    assert round_["inversions"] == {"profit": "0", "leverage": "1", "pairs": 3}


def test_capped_pro_rata_takes_in_proportion_to_profit(tmp_path: Path, engine: str) -> None:
    out = replay(tmp_path, engine, "07-adl-lab.jsonl", "--adl-policy", "capped_pro_rata")
    # profitable: C1 350, C2 75, C3 100 (U = 525). Caps: haircut 5 a unit, so FLOOR(u / 5) and the size: 10, 5, 20;
    # nobody's cap binds (C1's 10 x 525 > 6 x 350). FLOOR(6 u / 525): C1 4, C2 0, C3 1; the lot left goes to the
    # largest profit, C1: 5. C2, the top of the queue, gives nothing.
    assert takes(out) == [("C1", "5", "90"), ("C3", "1", "90")]
    [round_] = out["adl-rounds"]
    # shares: C1 25 / 350, C3 5 / 100: the worst is 25 / (350 + 1e-8) = 0.0714285714265...
    assert figures(round_) == ("30", "10", "30", "20", "3", "0.071428571427")
    assert [e["rank"] for e in out["adl-events"]] == [2, 3]  # their places in the queue


def test_min_max_leverage_water_fills_from_the_top(tmp_path: Path, engine: str) -> None:
    out = replay(tmp_path, engine, "07-adl-lab.jsonl", "--adl-policy", "min_max_leverage")
    # valued at the lot's price 90, F = 6 x equity - size x 30: C1 3,240, C2 450, C3 5,400, C4 -60 (bankrupt at 90:
    # left for last). By size / F: C2 (0.0111), C3 (0.0037), C1 (0.0031). With C2 and C3: S = 25, Phi = 5,850,
    # S - 6 = 19 and 19 x 3,240 >= 10 x 5,850, so the level stops above C1. C2 keeps 450 x 19 / 5,850 = 1.46:
    # FLOOR((5 x 5850 - 450 x 19) / 5850) = 3; C3 FLOOR((20 x 5850 - 5400 x 19) / 5850) = 2; the lot left to C2: 4.
    assert takes(out) == [("C2", "4", "90"), ("C3", "2", "90")]
    [round_] = out["adl-rounds"]
    assert figures(round_) == ("30", "10", "30", "20", "3", "0.266666666631")  # C2: 20 / (75 + 1e-8)


def test_binance_ranks_by_its_leverage_pnl_where_bitmex_ranks_otherwise(tmp_path: Path, engine: str) -> None:
    # examples/11: S's isolated short 10 @ 600 (12x, BP 650) liquidated at 645; the fund (100) refuses 6,450. Longs:
    #   A: cross 10 @ 600 on a wallet of 1,000: uPnL 450, margin balance 1,450, MM 64.5, BP 500
    #      BitMEX 450 x 645 / (6,000 x 145) = 0.333620689655; Binance 450 / 1,000 x 64.5 / 1,450 = 0.020017241379
    #   B: cross 10 @ 400 on a wallet of 4,000: uPnL 2,450, margin balance 6,450, BP 0
    #      BitMEX 2,450 x 645 / (4,000 x 645) = 0.6125;          Binance 2,450 / 4,000 x 64.5 / 6,450 = 0.006125
    queue = replay(tmp_path / "queue", engine, "11-binance-leverage-pnl.jsonl")
    binance = replay(tmp_path / "binance", engine, "11-binance-leverage-pnl.jsonl", "--adl-policy", "binance")
    assert [(e["account_id"], e["score"]) for e in queue["adl-events"]] == [("B", "0.6125")]
    assert [(e["account_id"], e["score"]) for e in binance["adl-events"]] == [("A", "0.020017241379")]
    # the lot's BP 650 is above the mark: A sells at 650 what is worth 645, a haircut of -50 (a gain), no deficit
    [round_] = binance["adl-rounds"]
    assert (round_["deficit"], round_["haircut"], round_["hits"][0]["haircut"]) == ("0", "0", "-50")


@pytest.mark.parametrize(("floor", "price", "fund"), [("0", "mark", "390"), ("400", "bankruptcy", "420")])
def test_okx_deleverages_at_the_mark_while_the_fund_can_pay_above_its_floor(tmp_path: Path, engine: str, floor: str,
                                                                           price: str, fund: str) -> None:
    # examples/08 is 07 with a fund of 500: 420 after the market sale. It refuses the lot (510 of inventory > 420, or
    # > 420 - 400 above a floor of 400). Floor 0: 420 - 0 >= the deficit 30, so at the mark: the fund pays the 30
    # (C2 5 x 5, C1 1 x 5) and nobody is cut; floor 400: only 20 above it, so at the BP, as the queue.
    out = replay(tmp_path, engine, "08-okx-floor.jsonl", "--adl-policy", "okx", "--adl-floor", floor)
    [round_] = out["adl-rounds"]
    assert (round_["price"], round_["floor"], out["summary"]["funds"]["LAB"]["balance"]) == (price, floor, fund)
    at = "85" if price == "mark" else "90"
    assert takes(out) == [("C2", "5", at), ("C1", "1", at)]
    if price == "mark":
        assert figures(round_) == ("30", "0", "0", "0", None, "0")
        assert [(e["kind"], e["amount"]) for e in out["fund-ledger"][2:]] == [("liquidation_loss", "-25"),
                                                                              ("liquidation_loss", "-5")]
    else:
        assert figures(round_) == ("30", "10", "30", "20", "3", "0.333333333289")


@pytest.mark.parametrize(("options", "name"), [(["--adl-policy", "bybit"], "bybit"),
                                               (["--adl-policy", "pro_rata", "--adl-drawdown", "0.3"],
                                                "pro_rata+drawdown")])
def test_a_round_names_the_rule_under_the_drawdown_trigger(tmp_path: Path, engine: str, options: list[str],
                                                           name: str) -> None:
    out = replay(tmp_path, engine, "09-bybit-drawdown.jsonl", *options)
    assert {r["policy"] for r in out["adl-rounds"]} == {name}


def test_bybit_resets_the_price_so_that_the_drawdown_stops_at_30_percent(tmp_path: Path, engine: str) -> None:
    # examples/09: pool POOL holds 1,000. M's isolated long 100 @ 100 (10x, BP 90) is liquidated at 86: the lot costs
    # 9,000 and is worth 8,600. The symbol's fund PnL would fall from 0 to -400, below 0 - 0.3 x 1,000 = -300: the
    # trigger fires, and the fund takes the loss down to -300, the winners the rest: proceeds 9,000 - 300 = 8,700,
    # 87 a unit. W1 (short 60 @ 100, BitMEX first) buys 60 for 5,220, W2 40 for 3,480; the fund loses 180 + 120.
    out = replay(tmp_path, engine, "09-bybit-drawdown.jsonl", "--adl-policy", "bybit")
    assert takes(out) == [("W1", "60", "87"), ("W2", "40", "87"), ("W2", "10", "90")]
    first, second = out["adl-rounds"]
    assert (first["trigger"], first["price"], first["fund_balance"]) == ("drawdown", "reset", "1000")
    # deficit 400, of which the fund could have paid all: the winners' 100 (1 a unit) is all overshoot
    assert figures(first) == ("400", "0", "100", "100", None, "0.074074074073")  # W2: 40 / (540 + 1e-8)
    # N's lot (10 @ 90, worth 860) while the trigger is on: the symbol is at -300 already, no room: at its BP
    assert (second["trigger"], second["price"], figures(second)[:3]) == ("drawdown", "reset", ("40", "0", "40"))
    assert out["summary"]["funds"]["POOL"]["balance"] == "700"
    # the queue (Binance's inventory rule) would have taken all 400 from the winners and kept N's lot
    queue = replay(tmp_path / "queue", engine, "09-bybit-drawdown.jsonl")
    assert takes(queue) == [("W1", "60", "90"), ("W2", "40", "90")]
    assert queue["summary"]["funds"]["POOL"]["balance"] == "1000"


def test_socialized_loss_spreads_the_shortfall_over_profits(tmp_path: Path, engine: str) -> None:
    # examples/10 is 07 with the market sale at 50: the fund loses 160 and ends at -60. Socialized: no position is
    # closed (the fund keeps its 6); the 60 is taken from profits C1 350, C2 75, C3 100 (U = 525), FLOOR to 1e-8:
    # 60 x 350 / 525 = 40, 60 x 75 / 525 = 8.571428571... -> 8.57142857, 60 x 100 / 525 = 11.428571428... ->
    # 11.42857142; the 1e-8 left goes to the largest profit, C1.
    out = replay(tmp_path, engine, "10-socialized-loss.jsonl", "--adl-policy", "socialized")
    assert out["adl-events"] == []
    assert [(e["kind"], e["amount"], e["counter_account"]) for e in out["fund-ledger"][2:]] == [
        ("socialized_loss", "40.00000001", "isolated:C1:XUSDT"), ("socialized_loss", "8.57142857", "isolated:C2:XUSDT"),
        ("socialized_loss", "11.42857142", "isolated:C3:XUSDT")]
    summary = out["summary"]
    assert (summary["funds"]["LAB"]["balance"], summary["funds"]["LAB"]["inventory"]) == ("0", {"XUSDT": "6"})
    [round_] = out["adl-rounds"]
    assert (round_["trigger"], round_["symbol"], round_["fund_balance"], round_["eligible"]) == (
        "socialized", None, "-60", 4)
    assert figures(round_) == ("60", "60", "60", "0", "1", "0.114285714311")  # C1: 40.00000001 / 350.00000001
    assert (summary["adl"]["socialized"], summary["adl"]["accounts_affected"]) == ("60", 3)
    assert out["findings"] == []  # no bad debt is left
    queue = replay(tmp_path / "queue", engine, "10-socialized-loss.jsonl")
    assert [f["kind"] for f in queue["findings"]] == ["bad_debt"]


STUCK_LOT = [  # L's isolated long 10 @ 100 (BP 90) liquidated at 85 with no short to take it: the fund of 1 refuses it
    {"type": "fund", "ts": 1760126400000, "fund_id": "LAB", "settle_asset": "USDT", "surplus": "fund",
     "max_inventory_ratio": "1"},
    {"type": "instrument", "ts": 1760126400000, "symbol": "XUSDT", "settle_asset": "USDT", "tick_size": "0.01",
     "lot_size": "1", "tiers": [{"max_notional": "1000000000", "mmr": "0.01", "maint_amount": "0"}],
     "liquidation_fee_rate": "0.005", "fund_id": "LAB"},
    {"type": "transfer", "ts": 1760126400000, "transfer_id": "seed", "account_id": "fund:LAB", "asset": "USDT",
     "amount": "1"},
    {"type": "transfer", "ts": 1760126400000, "transfer_id": "d-L", "account_id": "L", "asset": "USDT",
     "amount": "100"},
    {"type": "fill", "ts": 1760126402000, "fill_id": "f-L", "account_id": "L", "symbol": "XUSDT", "side": "buy",
     "qty": "10", "price": "100", "fee": "0", "margin_mode": "isolated", "leverage": "10"},
    {"type": "mark", "ts": 1760126460000, "symbol": "XUSDT", "mark_price": "85"},
    {"type": "liquidation", "ts": 1760126460500, "liquidation_id": "liq-L", "account_id": "L", "symbol": "XUSDT",
     "qty": "10", "mark_price": "85", "executions": []},
    # each mark retries the lot: a round without a taker
    *({"type": "mark", "ts": 1760126460000 + minute * 60_000, "symbol": "XUSDT", "mark_price": "85"}
      for minute in (1, 2, 3)),
    # then a short opens, and the next mark's round closes the lot against it
    {"type": "transfer", "ts": 1760126650000, "transfer_id": "d-S", "account_id": "S", "asset": "USDT",
     "amount": "1000"},
    {"type": "fill", "ts": 1760126660000, "fill_id": "f-S", "account_id": "S", "symbol": "XUSDT", "side": "sell",
     "qty": "10", "price": "86", "fee": "0", "margin_mode": "isolated", "leverage": "2"},
    {"type": "mark", "ts": 1760126700000, "symbol": "XUSDT", "mark_price": "85"},
]


def test_a_lot_retried_without_a_taker_counts_its_deficit_once(tmp_path: Path, engine: str) -> None:
    """Each round of the lot has D = 10 x 90 - 10 x 85 = 50 and B = 50 - (1 - 0) = 49; the first four find no taker.
    The summary counts them (rounds_without_takers) but sums D, B and H over the round that took: over_use 50 / 49."""
    journal = tmp_path / "stuck.jsonl"
    journal.write_text("".join(json.dumps(record) + "\n" for record in STUCK_LOT))
    out = tmp_path / "out"
    assert main(["replay", str(journal), "--out", str(out), "--engine", engine, "--adl-metrics", "full"]) == 0
    rounds = [json.loads(line) for line in (out / "adl-rounds.jsonl").read_text().splitlines()]
    assert [(r["trigger"], r["closed"], r["deficit"], r["needed"], r["counterparties"]) for r in rounds] == [
        ("takeover", "0", "50", "49", 0), *[("inventory", "0", "50", "49", 0)] * 3, ("inventory", "10", "50", "49", 1)]
    adl = json.loads((out / "summary.json").read_text())["adl"]
    assert (adl["rounds"], adl["rounds_without_takers"], adl["deficit"], adl["needed"], adl["haircut"],
            adl["over_use"]) == (5, 4, "50", "49", "50", "1.020408163265")


# the stuck lot, but a short of 4 stands when it is liquidated: the first round closes 4 of 10, the rest waits
PART_TAKEN = [*STUCK_LOT[:4],
              {"type": "transfer", "ts": 1760126400000, "transfer_id": "d-S0", "account_id": "S0", "asset": "USDT",
               "amount": "1000"},
              {"type": "fill", "ts": 1760126401000, "fill_id": "f-S0", "account_id": "S0", "symbol": "XUSDT",
               "side": "sell", "qty": "4", "price": "100", "fee": "0", "margin_mode": "isolated", "leverage": "2"},
              *STUCK_LOT[4:7], *STUCK_LOT[10:]]


def test_a_round_that_closes_part_of_a_lot_counts_the_deficit_of_that_part(tmp_path: Path, engine: str) -> None:
    """Round 1 asks for 10 (D = 50) and closes 4: it adds 4/10 of D = 20, and its need at the fund's 1, 19. Round
    2 closes the other 6 (D = 6 x 90 - 6 x 85 = 30, B = 29). The lot's deficit, 50, is counted once."""
    journal = tmp_path / "part.jsonl"
    journal.write_text("".join(json.dumps(record) + "\n" for record in PART_TAKEN))
    out = tmp_path / "out"
    assert main(["replay", str(journal), "--out", str(out), "--engine", engine]) == 0
    rounds = [json.loads(line) for line in (out / "adl-rounds.jsonl").read_text().splitlines()]
    assert [(r["qty"], r["closed"], r["deficit"], r["needed"]) for r in rounds] == [
        ("10", "4", "50", "49"), ("6", "6", "30", "29")]
    adl = json.loads((out / "summary.json").read_text())["adl"]
    assert (adl["deficit"], adl["needed"]) == ("50", "48")


def test_an_older_summary_without_rounds_without_takers_verifies_where_there_were_none(tmp_path: Path) -> None:
    """A summary written before rounds without a taker were counted apart has no rounds_without_takers: where the
    journal has none its sums are the same and it verifies against the journal; where it has some they differ, and
    audit verify says why."""
    stuck = tmp_path / "stuck.jsonl"
    stuck.write_text("".join(json.dumps(record) + "\n" for record in STUCK_LOT))
    for journal, verified in ((EXAMPLES / "07-adl-lab.jsonl", True), (stuck, False)):
        out = tmp_path / journal.stem
        assert main(["replay", str(journal), "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        del summary["adl"]["rounds_without_takers"]
        (out / "summary.json").write_text(json.dumps(summary))
        assert (main(["audit", "verify", str(out), "--journal", str(journal)]) == 0) is verified


def _journal(tmp_path: Path, records: list[dict[str, Any]]) -> str:
    path = tmp_path / "journal.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)  # absolute: replay() joins it to EXAMPLES, which keeps it as it is


def _book(fund_balance: str, *, ratio: str = "1", symbols: tuple[str, ...] = ("BTCUSDT",)) -> list[dict[str, Any]]:
    return [scenario.fund("F", ratio=ratio), *(scenario.instrument(s, fund_id="F", tick="0.1", lot="0.01")
                                              for s in symbols),
            scenario.transfer("seed", "fund:F", fund_balance)]


@pytest.mark.parametrize("policy", ["queue", "pro_rata"])
def test_a_liquidated_hedge_side_is_never_deleveraged_against_its_own_other_side(tmp_path: Path, engine: str,
                                                                                policy: str) -> None:
    # H holds both sides; its short is liquidated and the fund (100) refuses the lot: the long that takes it is
    # O's, not H's own long, which ranks first (design §7: the other side is untouched)
    records = [*_book("100"), *(scenario.transfer(f"d{a}", a, amount) for a, amount in
                                (("H", "2000"), ("O", "100000"), ("S", "100000"))),
               scenario.fill("h1", "H", "buy", "1", "100000", position_side="long"),
               scenario.fill("s1", "S", "sell", "1", "100000"),
               scenario.fill("h2", "H", "sell", "1", "100000", position_side="short"),
               scenario.fill("o1", "O", "buy", "1", "100000"),
               scenario.mark("109000"),
               scenario.liquidation("LH", "H", "1", "109000", position_side="short")]
    out = replay(tmp_path, engine, _journal(tmp_path, records), "--adl-policy", policy)
    # the short lot's cost: TNC 2000 shared by MM 1090 a side, CEILING(2000 x 1090 / 2180) = 1000 behind it
    assert takes(out) == [("O", "1", "110000")]
    [event] = out["adl-events"]
    assert (event["rank"], event["quantile"]) == (2, quantile(2, 2))  # its place in the queue H stays in
    [round_] = out["adl-rounds"]
    assert round_["eligible"] == 1 and round_["leverage"]["eligible"]["count"] == 1  # O alone is eligible
    accounts = json.loads((tmp_path / "out" / "accounts.json").read_text())
    assert accounts["H"]["positions"]["BTCUSDT:long"]["qty"] == "1"


def test_a_withdrawal_that_leaves_a_fund_below_its_floor_deleverages_its_inventory(tmp_path: Path,
                                                                                  engine: str) -> None:
    records = [*_book("200000"), scenario.transfer("dA", "A", "10000"), scenario.transfer("dL", "L", "1000000"),
               scenario.fill("a1", "A", "buy", "1", "100000", mode="isolated"),
               scenario.fill("l1", "L", "sell", "1", "100000"),
               scenario.mark("90500"),
               scenario.liquidation("L1", "A", "1", "90500"),  # the fund keeps the lot at BP 90000
               scenario.transfer("w1", "fund:F", "-199500")]  # 500 left, under the floor of 1000
    out = replay(tmp_path, engine, _journal(tmp_path, records), "--adl-policy", "okx", "--adl-floor", "1000")
    [round_] = out["adl-rounds"]
    assert (round_["trigger"], round_["seq"], round_["fund_balance"]) == ("solvency", 10, "500")
    assert takes(out) == [("L", "1", "90000")]
    assert out["summary"]["funds"]["F"]["inventory"] == {}


def test_rounds_at_the_mark_that_sink_a_fund_are_followed_by_its_solvency(tmp_path: Path, engine: str) -> None:
    records = [*_book("1000", ratio="200", symbols=("BTCUSDT", "ETHUSDT")),
               *(scenario.transfer(f"d{a}", a, amount) for a, amount in
                 (("S", "10000"), ("L", "1000000"), ("E", "1000"), ("M", "100000"))),
               scenario.fill("s1", "S", "sell", "1", "100000", mode="isolated"),
               scenario.fill("l1", "L", "buy", "1", "100000"),
               scenario.fill("e1", "E", "buy", "1", "4000", symbol="ETHUSDT", mode="isolated"),
               scenario.fill("m1", "M", "sell", "1", "4000", symbol="ETHUSDT"),
               scenario.mark("109500"), scenario.liquidation("L1", "S", "1", "109500"),  # a short lot at 110000
               scenario.mark("3620", symbol="ETHUSDT"),
               scenario.liquidation("L2", "E", "1", "3620", symbol="ETHUSDT"),  # a long lot at 3600
               scenario.mark("250000")]  # the BTC lot's excess goes at the mark: the fund pays 140000
    out = replay(tmp_path, engine, _journal(tmp_path, records), "--adl-price", "mark")
    # the excess at the fund's balance (0.22), then the rest once that left it below zero; the ETH lot's round
    # comes from the solvency check that follows the mark
    assert [(r["trigger"], r["symbol"], r["qty"]) for r in out["adl-rounds"] if r["seq"] == 17] == [
        ("inventory", "BTCUSDT", "0.22"), ("inventory", "BTCUSDT", "0.78"), ("solvency", "ETHUSDT", "1")]
    [bad_debt] = [f for f in out["findings"] if f["kind"] == "bad_debt"]
    assert bad_debt["details"]["added"] == "139000"
    assert out["summary"]["funds"]["F"]["inventory"] == {}


def test_a_lot_short_of_takers_is_not_tried_again_in_the_same_event(tmp_path: Path, engine: str) -> None:
    # S's short lot is kept; A's long is liquidated below its BP (executions at 80000): nobody is left long to take
    # S's lot at the inventory check, and the fund, now below zero, would try the same lot again for its solvency
    records = [*_book("1000", ratio="200"),
               *(scenario.transfer(f"d{a}", a, "10000") for a in ("S", "A")),
               scenario.fill("s1", "S", "sell", "1", "100000", mode="isolated"),
               scenario.fill("a1", "A", "buy", "1", "100000", mode="isolated"),
               scenario.mark("109500"), scenario.liquidation("LS", "S", "1", "109500"),
               scenario.mark("90500"), scenario.liquidation("LA", "A", "1", "90500", executions=[("1", "80000")])]
    out = replay(tmp_path, engine, _journal(tmp_path, records))
    assert [(f["seq"], f["kind"]) for f in out["findings"]] == [(11, "adl_shortfall"), (11, "bad_debt")]
    assert [(r["seq"], r["trigger"], r["closed"]) for r in out["adl-rounds"]] == [(11, "inventory", "0")]


def test_a_withdrawal_below_the_floor_is_never_taken_from_traders_under_socialized(tmp_path: Path,
                                                                                  engine: str) -> None:
    records = [*_book("2000"), scenario.transfer("dS", "S", "100000"), scenario.transfer("dL", "L", "100000"),
               scenario.fill("s1", "S", "sell", "1", "100000"), scenario.fill("l1", "L", "buy", "1", "100000"),
               scenario.mark("105000"),  # L is in profit
               scenario.transfer("w1", "fund:F", "-1500")]
    out = replay(tmp_path, engine, _journal(tmp_path, records), "--adl-policy", "socialized", "--adl-floor", "1000")
    assert out["adl-rounds"] == [] and out["summary"]["funds"]["F"]["balance"] == "500"


def test_a_capped_round_short_with_takers_left_is_tried_again_in_the_event(tmp_path: Path, engine: str) -> None:
    # the fund (100, floor 1000) refuses S's lot; capped_pro_rata caps L's take by its profit and leaves the lot
    # short with L still long: the solvency round of the same event takes more from L
    records = [*_book("100"), *(scenario.transfer(f"d{a}", a, amount) for a, amount in
                                (("S", "10000"), ("L", "100000"), ("M", "100000"))),
               scenario.fill("s1", "S", "sell", "1", "100000", mode="isolated"),
               scenario.fill("m1", "M", "buy", "1", "100000"), scenario.fill("m2", "M", "sell", "1", "110900"),
               scenario.fill("l1", "L", "buy", "1", "110900"),
               scenario.mark("111000"), scenario.liquidation("LS", "S", "1", "111000")]
    out = replay(tmp_path, engine, _journal(tmp_path, records), "--adl-policy", "capped_pro_rata",
                 "--adl-floor", "1000")
    assert [(r["trigger"], r["closed"]) for r in out["adl-rounds"]] == [("takeover", "0.1"), ("solvency", "0.09")]


def _in_usdc(record: dict[str, Any]) -> dict[str, Any]:
    """Example 07's record for a twin market settled in USDC: fund LABC, symbol XUSDC, accounts and ids suffixed."""
    twin = dict(record)
    for key, value in record.items():
        if key in ("fund_id", "transfer_id", "fill_id", "liquidation_id"):
            twin[key] = f"{value}c"
        elif key in ("settle_asset", "asset"):
            twin[key] = "USDC"
        elif key == "symbol":
            twin[key] = "XUSDC"
        elif key == "account_id":
            twin[key] = "fund:LABc" if value == "fund:LAB" else f"{value}c"
    return twin


def test_funds_of_two_assets_are_summed_apart(tmp_path: Path, engine: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Example 07 twice, once in USDT and once in USDC: each fund's round is example 07's (D 30, B 10, H 30, two
    events worth 540), in summary.json's adl.by_fund; the run's sums would add USDT to USDC, so they are null, and
    the policy table shows each fund's own figures where the run's read "-"."""
    base = [json.loads(line) for line in (EXAMPLES / "07-adl-lab.jsonl").read_text().splitlines()]
    records = sorted([*base, *(_in_usdc(record) for record in base)], key=lambda record: record["ts"])
    journal = tmp_path / "two-assets.jsonl"
    journal.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "out"
    assert main(["replay", str(journal), "--out", str(out), "--engine", engine]) == 0
    adl = json.loads((out / "summary.json").read_text())["adl"]
    one = {"deficit": "30", "needed": "10", "haircut": "30", "overshoot": "20", "over_use": "3", "socialized": "0",
           "notional": "540", "rounds": 1, "events": 2}
    assert adl["by_fund"] == {"LAB": {"asset": "USDT", **one}, "LABc": {"asset": "USDC", **one}}
    assert (adl["rounds"], adl["events"]) == (2, 4)
    assert [adl[key] for key in ("notional", "deficit", "needed", "haircut", "overshoot", "over_use",
                                 "socialized")] == [None] * 7
    assert main(["audit", "verify", str(out), "--journal", str(journal)]) == 0
    capsys.readouterr()
    lab = tmp_path / "lab"
    assert main(["whatif", str(journal), "--policies", "queue", "--out", str(lab), "--engine", engine,
                 "--report"]) == 0
    report = (lab / "report.html").read_text()
    assert "<th>insurance fund LABc: haircut</th><td class=\"n\">30</td>" in report and "None" not in report
    run = json.loads((lab / "comparison.json").read_text())["runs"]["queue"]
    assert (run["adl_notional"], run["adl"]["by_fund"]["LABc"]["haircut"]) == (None, "30")
    rows = {line[:30].strip(): line[30:].split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert (rows["haircut"], rows["ADL notional"], rows["fund LAB haircut"], rows["fund LABc needed budget"]) == (
        ["-"], ["-"], ["30"], ["10"])


def test_an_older_summary_without_each_funds_sums(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A summary written before adl.by_fund: where its funds settle in one asset its sums are this replay's; where
    they settle in two it added them (two rounds of example 07: haircut 30 + 30), which this backstop writes as null,
    so those sums are set aside, and the answer names what it did not compare; any other field still must agree."""
    base = [json.loads(line) for line in (EXAMPLES / "07-adl-lab.jsonl").read_text().splitlines()]
    two = tmp_path / "two-assets.jsonl"
    two.write_text("".join(json.dumps(r) + "\n" for r in sorted([*base, *map(_in_usdc, base)], key=lambda r: r["ts"])))
    added = {"notional": "1080", "deficit": "60", "needed": "20", "haircut": "60", "overshoot": "40", "over_use": "3",
             "socialized": "0"}
    for journal, older, aside in ((EXAMPLES / "07-adl-lab.jsonl", {}, "without adl.by_fund"),
                                  (two, added, "without adl.by_fund, adl's sums over funds of different assets")):
        out = tmp_path / journal.stem
        assert main(["replay", str(journal), "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        del summary["adl"]["by_fund"]
        summary["adl"].update(older)  # as the older backstop wrote them
        (out / "summary.json").write_text(json.dumps(summary))
        capsys.readouterr()
        assert main(["audit", "verify", str(out), "--journal", str(journal)]) == 0
        assert f"summary.json: every field as the replay of the journal gives it; as an older backstop wrote it, " \
               f"{aside}" in capsys.readouterr().out
        summary["adl"]["rounds"] = 3
        (out / "summary.json").write_text(json.dumps(summary))
        assert main(["audit", "verify", str(out), "--journal", str(journal)]) == 1
        assert "summary.json: adl.rounds 3 but the replay of the journal gives" in capsys.readouterr().out


def test_the_charts_need_per_minute_is_the_need_the_tables_sum(tmp_path: Path, engine: str) -> None:
    """The report's needed marks count a round as summary.json does: the stuck lot's four rounds without a taker
    (B = 49 each) count nothing, and of a partial round the need of the part it closed (PART_TAKEN: 19, then 29),
    so the minutes add up to the table's 48, not to the rounds' own 49 + 29."""
    from backstop.scenarios import Scenario, run_scenario
    from backstop.wire.decode import decode_model

    for journal, total in ((STUCK_LOT, D(49)), (PART_TAKEN, D(48))):
        records = [decode_model(json.dumps(record).encode()) for record in journal]
        metrics, result = run_scenario(list(enumerate(records, start=1)), Scenario(), tmp_path / str(total),
                                       engine="compiled" if engine == "compiled" else "reference")
        (by_minute,) = metrics.minute_needed.values()  # one settlement asset
        assert sum(by_minute.values()) == total == D(result["adl"]["needed"])
