"""`backstop explain`: every number of an ADL event or a fund entry traced to its inputs, from the journal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backstop.entrypoints.cli import main
from scenario import fill, fund, instrument, liquidation, mark, transfer

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


ADL_JOURNAL = EXAMPLES / "02-adl-walks-queue.jsonl"


def test_a_duplicate_before_the_event_and_bad_lines_do_not_move_the_target(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Lines that apply nothing (a duplicate, an undecodable line, a rejected fill) sit right before the event: the
    explanation is the same as on the clean journal, at the same seq."""
    lines = ADL_JOURNAL.read_bytes().splitlines()
    liquidation = lines[18]
    rejected = lines[10].replace(b'"f-A1"', b'"f-X"').replace(b'"qty": "10"', b'"qty": "10.001"')
    noisy = tmp_path / "noisy.jsonl"
    noisy.write_bytes(b"\n".join([*lines[:18], lines[17], b"{not json", rejected, liquidation, liquidation,
                                  *lines[19:]]) + b"\n")
    for identifier in ("liq-S", "adl-19-0", "adl-19-1", "p-19-2"):
        _, clean, _ = explain(capsys, identifier, "--journal", str(ADL_JOURNAL), "--json")
        code, out, _ = explain(capsys, identifier, "--journal", str(noisy), "--json")
        assert code == 0 and json.loads(out) == json.loads(clean), identifier


def test_a_liquidation_the_engine_rejects_is_explained_by_its_reason(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lines = ADL_JOURNAL.read_bytes().splitlines()
    journal = tmp_path / "too-much.jsonl"
    journal.write_bytes(b"\n".join([*lines[:18], lines[18].replace(b'"qty": "20"', b'"qty": "25"')]) + b"\n")
    code, _, err = explain(capsys, "liq-S", "--journal", str(journal))
    assert code == 2
    assert err == ("backstop explain: liq-S: the journal event was not applied: liquidation of 25 exceeds the "
                   "position of 20\n")


def test_explain_hands_the_journal_to_the_engine_in_batches(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch API, as replay and audit use it: not a call per line on the way to the event."""
    from backstop.engines import ReferenceEngine

    lines = ADL_JOURNAL.read_bytes().splitlines()
    marks = [b'{"type": "mark", "ts": 1760126459%03d, "symbol": "BNBUSDT", "mark_price": "645"}' % i
             for i in range(1000)]
    journal = tmp_path / "long.jsonl"
    journal.write_bytes(b"\n".join([*lines[:17], *marks, *lines[17:]]) + b"\n")
    calls = []
    apply_lines = ReferenceEngine.apply_lines

    def counted(self: ReferenceEngine, chunk: bytes, first_line: int, held: bytes = b"") -> object:
        calls.append(chunk.count(b"\n"))
        return apply_lines(self, chunk, first_line, held)

    monkeypatch.setattr(ReferenceEngine, "apply_lines", counted)
    code, out, _ = explain(capsys, "liq-S", "--journal", str(journal), "--json")
    assert code == 0 and json.loads(out)["seq"] == 1019
    assert calls == [len(lines) - 1 + 1000, 1]  # up to the event, then the event alone


def test_a_liquidation_id_spelled_with_a_json_escape_is_found(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    lines = ADL_JOURNAL.read_bytes().splitlines()
    journal = tmp_path / "escaped.jsonl"
    journal.write_bytes(b"\n".join([*lines[:18], lines[18].replace(b'"liq-S"', b'"liq\\u002dS"')]) + b"\n")
    code, out, _ = explain(capsys, "liq-S", "--journal", str(journal), "--json")
    assert code == 0 and json.loads(out)["seq"] == 19


def test_an_output_id_of_seq_zero_is_no_such_entry(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = explain(capsys, "fl-0-0", "--journal", str(ADL_JOURNAL))
    assert code == 2 and "no such fund-ledger entry" in err


@pytest.mark.parametrize("policy", ["queue", "pro_rata", "capped_pro_rata", "socialized"])
def test_an_adl_event_is_explained_under_the_policy_it_was_made_under(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str) -> None:
    """explain re-derives under the policy it is given, as the replay ran: each ADL event it names is the one the
    replay wrote (under the default it explained another ledger)."""
    journal = EXAMPLES / "07-adl-lab.jsonl"
    assert main(["replay", str(journal), "--out", str(tmp_path / "o"), "--adl-policy", policy]) == 0
    capsys.readouterr()
    events = [json.loads(line) for line in (tmp_path / "o" / "adl-events.jsonl").read_text().splitlines()]
    assert events or policy == "socialized"
    for event in events:
        code, out, err = explain(capsys, event["id"], "--journal", str(journal), "--adl-policy", policy, "--json")
        assert code == 0, err
        explanation = json.loads(out)
        assert explanation["subject"] == event
        assert explanation["adl_policy"]["rule"] == ("bitmex" if policy == "queue" else policy)


def test_a_run_s_journal_is_explained_under_the_policy_its_summary_records(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A what-if run's journal.jsonl sits beside its summary.json: explain takes the run's policy from there, and
    says so when told another."""
    assert main(["whatif", str(EXAMPLES / "07-adl-lab.jsonl"), "--policies", "pro_rata", "--out",
                 str(tmp_path / "w")]) == 0
    run = tmp_path / "w" / "pro_rata"
    events = [json.loads(line) for line in (run / "adl-events.jsonl").read_text().splitlines()]
    capsys.readouterr()
    code, out, err = explain(capsys, events[0]["id"], "--journal", str(run / "journal.jsonl"), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["subject"] == events[0]
    code, out, err = explain(capsys, events[0]["id"], "--journal", str(run / "journal.jsonl"), "--adl-policy",
                             "queue", "--json")
    assert code == 0 and json.loads(out)["subject"] != events[0]
    assert err.startswith(f"backstop explain: note: {run / 'summary.json'} says the journal ran under the ADL "
                          'policy {"rule":"pro_rata","price":"bankruptcy"}; explaining it under the one given')


def test_a_summary_that_is_no_file_is_refused_in_one_line_not_passed_over(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A summary.json beside the journal that cannot be read (a directory) is said, not taken for a run without
    one (whose policy would silently be the default)."""
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes((EXAMPLES / "02-adl-walks-queue.jsonl").read_bytes())
    (tmp_path / "summary.json").mkdir()
    code, out, err = explain(capsys, "adl-19-1", "--journal", str(journal))
    assert (code, out) == (2, "")
    assert err == f"backstop explain: cannot read {tmp_path / 'summary.json'}: is a directory\n"


@pytest.mark.parametrize(("example", "event_id", "policy", "heading", "inputs"), [
    ("02-adl-walks-queue.jsonl", "adl-19-1", "queue",
     "deleveraged (at the lot's bankruptcy price, in ADL-queue order):", "PnL% 0.29 x leverage 1.724137931034"),
    # Binance's score is not PnL% x leverage: the inputs are listed, not multiplied
    ("02-adl-walks-queue.jsonl", "adl-19-1", "binance",
     "deleveraged (at the lot's bankruptcy price, in ADL-queue order):", "PnL% 0.29, leverage 1.724137931034"),
    ("08-okx-floor.jsonl", "adl-15-0", "okx", "deleveraged (at the mark when the fund's balance above its floor covers "
     "the lot's deficit, else at the lot's bankruptcy price, in ADL-queue order):", "rank 1 C2: 5 @ 85"),
    ("09-bybit-drawdown.jsonl", "adl-13-0", "bybit", "deleveraged (at the lot's bankruptcy price; a drawdown round at "
     "its reset proceeds, in ADL-queue order):", "rank 1 W1: 60 @ 87"),
    ("07-adl-lab.jsonl", "adl-15-0", "pro_rata", "deleveraged (at the lot's bankruptcy price, shared by the pro_rata "
     "rule, listed in ADL-queue order):", "rank 1 C2: 1 @ 90"),
])
def test_the_text_says_the_price_rule_and_score_of_the_policy(
        capsys: pytest.CaptureFixture[str], example: str, event_id: str, policy: str, heading: str,
        inputs: str) -> None:
    code, out, _ = explain(capsys, event_id, "--journal", str(EXAMPLES / example), "--adl-policy", policy)
    assert code == 0
    lines = out.splitlines()
    at = lines.index(f"  {heading}")
    assert inputs in "\n".join(lines[at + 1:at + 3]), out


T0 = 1760000000000
_FUND_AND_TRADES = [
    fund("F", ts=T0), instrument("XUSDT", fund_id="F", tiers=(("100000", "0.01", None),), ts=T0),
    transfer("top", "fund:F", "1000", ts=T0), transfer("da", "a", "200", ts=T0), transfer("db", "b", "3000", ts=T0),
    transfer("ds", "s", "5000", ts=T0),
    fill("fa", "a", "buy", "2", "400", symbol="XUSDT", mode="isolated", leverage="4", ts=T0 + 1000),
    fill("fb", "b", "buy", "10", "450", symbol="XUSDT", mode="isolated", leverage="1.5", ts=T0 + 1000),
    fill("fs", "s", "sell", "3", "700", symbol="XUSDT", leverage="5", ts=T0 + 1000),
    mark("290", symbol="XUSDT", ts=T0 + 60_000),
    # the fund keeps a's lot (bankruptcy price 400 - 200 / 2 = 300)
    liquidation("liq-a", "a", "2", "290", symbol="XUSDT", ts=T0 + 60_500),
]


def _journal(tmp_path: Path, *records: dict[str, Any]) -> Path:
    path = tmp_path / "journal.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*_FUND_AND_TRADES, *records]))
    return path


def test_a_deleverage_of_an_earlier_liquidation_s_lot_names_that_lot(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """b's liquidation leaves the fund below zero, which deleverages the lot a's liquidation left: its price is a's
    bankruptcy price (300), not b's (150)."""
    journal = _journal(tmp_path, mark("149", symbol="XUSDT", ts=T0 + 180_000),
                       liquidation("liq-b", "b", "10", "149", symbol="XUSDT", executions=[("10", "40")],
                                   ts=T0 + 180_500))
    code, out, _ = explain(capsys, "adl-13-0", "--journal", str(journal))
    assert code == 0, out
    assert "bankruptcy price 150 (isolated: BP = entry - margin / |qty| = 450 - 3000 / 10)" in out
    assert "the fund's lot of liq-a (journal seq 11, a): long 2 XUSDT, bankruptcy price 300" in out
    assert "rank 1 s: 2 @ 300" in out


def test_a_deleverage_on_a_mark_shows_the_inventory_check_and_the_score_inputs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = _journal(tmp_path, mark("600", symbol="XUSDT", ts=T0 + 120_000))
    code, out, _ = explain(capsys, "adl-12-0", "--journal", str(journal))
    assert code == 0, out
    assert ("the fund's inventory at the new mark: fund F net 2, notional 1200 against max_inventory_ratio 1 x "
            "(balance 1000 - floor 0) = 1000: over, the excess deleveraged") in out
    assert "the fund's lot of liq-a (journal seq 11, a): long 2 XUSDT, bankruptcy price 300" in out
    # s's score inputs at the new mark: PnL% (700 - 600) / 700
    assert "rank 1 s: 0.334 @ 300, score 0.048517520216, quantile 5; XUSDT: PnL% 0.142857142857 x leverage" in out
