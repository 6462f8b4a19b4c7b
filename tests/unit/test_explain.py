"""`backstop explain`: every number of an ADL event or a fund entry traced to its inputs, from the journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backstop.entrypoints.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples"


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["explain", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_adl_event_is_explained_with_the_queue_and_the_score_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, "adl-19-1", "--journal", str(EXAMPLES / "02-adl-walks-queue.jsonl"), "--json")
    assert code == 0
    explanation = json.loads(out)
    assert explanation["subject"]["account_id"] == "A5" and explanation["seq"] == 19
    assert explanation["bankruptcy"]["bankruptcy_price"] == "650"
    assert explanation["margin_view"] == {"margin_balance": "100", "maintenance_margin": "129", "liquidatable": True}
    queue = explanation["adl_queue_top10"]
    assert [(r["account_id"], r["score"]) for r in queue[:2]] == [("A2", "0.6"), ("A5", "0.5")]
    # score = PnL% x leverage, from the counterparty's own entry and bankruptcy price at the mark
    a5 = queue[1]
    assert a5["pnl_ratio"] == "0.29" and a5["bankruptcy_price"] == "270.9"  # (645 - 500) / 500; 500 - 4582 / 20


def test_a_cross_liquidation_shows_the_tnc_share(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, "liq-c1-btc", "--journal", str(EXAMPLES / "03-cross-two-positions.jsonl"))
    assert code == 0
    assert "TNC 500 is shared by maintenance margin" in out and "MM 415 / TMM 602.5 = 344.39834025" in out
    assert "bankruptcy price 92655.60165975" in out and "liquidation_gain 244.39834025" in out


def test_a_hedge_side_is_explained_as_its_own_position(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, "adl-12-0", "--journal", str(EXAMPLES / "12-hedge-deleveraged-one-side.jsonl"))
    assert code == 0
    # h's long side alone: share 20,000 x 1,090 / 2,180 = 10,000, own BP 109,000 - 10,000 (its short is not ranked)
    assert ("rank 1 h: 1 @ 110000, score 0.981, quantile 5; BTCUSDT:long: PnL% 0.09 x leverage 10.9 (entry 100000, "
            "own BP 99000)") in out


def test_a_fund_entry_names_its_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, "fl-12-0", "--journal", str(EXAMPLES / "05-funding-and-fund-inventory.jsonl"))
    assert code == 0 and "1 x 108000 x 0.0001" in out and "funding -10.8 -> balance 199989.2" in out


def test_an_unknown_id_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = explain(capsys, "fl-99-0", "--journal", str(EXAMPLES / "05-funding-and-fund-inventory.jsonl"))
    assert code == 2 and "no such fund-ledger entry" in err
