"""`backstop explain` walks the postings both ways: from a liquidation, an ADL event or a fund entry to the postings
it caused, and from a posting (a trader's wallet credited by a deleverage) back to its ADL event and liquidation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backstop.entrypoints.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples"
ADL = str(EXAMPLES / "02-adl-walks-queue.jsonl")


def explained(capsys: pytest.CaptureFixture[str], identifier: str, journal: str = ADL) -> dict[str, Any]:
    assert main(["explain", identifier, "--journal", journal, "--json"]) == 0
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


def test_from_a_liquidation_to_the_trader_wallets_it_credited(capsys: pytest.CaptureFixture[str]) -> None:
    postings = explained(capsys, "liq-S")["postings"]
    assert [(p["kind"], p["debit_account"], p["credit_account"], p["amount"], p["adl_event_id"]) for p in postings] == [
        ("takeover", "wallet:S:USDT", "settlement:BNBUSDT", "1000", None),
        ("margin_release", "isolated:S:BNBUSDT", "wallet:S:USDT", "1000", None),
        ("adl", "settlement:BNBUSDT", "wallet:A2:USDT", "1500", "adl-19-0"),
        ("adl", "settlement:BNBUSDT", "wallet:A5:USDT", "1500", "adl-19-1")]
    assert {p["liquidation_id"] for p in postings} == {"liq-S"}


def test_from_a_wallet_posting_back_to_its_adl_event_and_liquidation(capsys: pytest.CaptureFixture[str]) -> None:
    explanation = explained(capsys, "p-19-2")
    assert explanation["subject"]["credit_account"] == "wallet:A2:USDT"
    assert explanation["causes"] == {"liquidation_id": "liq-S", "adl_event_id": "adl-19-0"}
    event = explanation["caused_by"]["adl_event_id"]
    assert (event["id"], event["account_id"], event["liquidation_id"], event["rank"]) == ("adl-19-0", "A2", "liq-S", 1)
    assert explanation["event"]["liquidation_id"] == "liq-S"  # the journal event the walk ends at
    assert main(["explain", "p-19-2", "--journal", ADL]) == 0
    text = capsys.readouterr().out
    assert "caused by: liquidation liq-S, ADL event adl-19-0" in text
    assert "p-19-2 adl 1500 USDT: settlement:BNBUSDT -> wallet:A2:USDT (liq-S, adl-19-0)" in text


def test_from_an_adl_event_or_a_fund_entry_to_its_postings(capsys: pytest.CaptureFixture[str]) -> None:
    assert [p["id"] for p in explained(capsys, "adl-19-1")["subject_postings"]] == ["p-19-3"]
    funding = explained(capsys, "fl-12-0", str(EXAMPLES / "05-funding-and-fund-inventory.jsonl"))
    assert [(p["id"], p["debit_account"], p["credit_account"], p["amount"]) for p in funding["subject_postings"]] == [
        ("p-12-2", "fund:MAIN", "funding:BTCUSDT", "10.8")]
    back = explained(capsys, "p-12-2", str(EXAMPLES / "05-funding-and-fund-inventory.jsonl"))
    assert back["caused_by"]["fund_entry_id"]["id"] == "fl-12-0"


def test_an_unknown_posting_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "p-19-9", "--journal", ADL]) == 2
    assert "p-19-9: event 19 produced no output with that id" in capsys.readouterr().err
