"""`backstop statement --account`: any account of the general ledger (a trader's wallet, settlement, external ...)
from postings.jsonl, with the other account and the causing ids of every flow."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from backstop.entrypoints.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("replay") / "out"
    assert main(["replay", str(EXAMPLES / "02-adl-walks-queue.jsonl"), "--out", str(directory)]) == 0
    return directory


def account_statement(out: Path, tmp_path: Path, account: str, *more: str) -> dict[str, object]:
    target = tmp_path / "s.json"
    assert main(["statement", str(out), "--account", account, "--format", "json", "--out", str(target), *more]) == 0
    document: dict[str, object] = json.loads(target.read_text())
    return document


def test_a_trader_wallet_statement_names_the_liquidation_behind_an_adl_credit(out: Path, tmp_path: Path) -> None:
    s = account_statement(out, tmp_path, "wallet:A2:USDT")
    assert (s["account"], s["opening_balance"], s["closing_balance"]) == ("wallet:A2:USDT", "0", "3167.5")
    assert s["by_kind"] == {"adl": "1500", "transfer": "1667.5"}
    assert s["by_symbol"] == {"-": "1667.5", "BNBUSDT": "1500"}
    entries = s["entries"]
    assert isinstance(entries, list)
    assert [(e["kind"], e["counter_account"], e["transfer_id"], e["liquidation_id"], e["adl_event_id"])
            for e in entries] == [("transfer", "external:USDT", "d-A2", None, None),
                                  ("adl", "settlement:BNBUSDT", None, "liq-S", "adl-19-0")]
    accounts = json.loads((out / "accounts.json").read_text())
    assert s["closing_balance"] == accounts["A2"]["wallets"]["USDT"]


def test_every_account_closes_at_its_balance_and_all_of_them_sum_to_zero(out: Path, tmp_path: Path) -> None:
    postings = [json.loads(line) for line in (out / "postings.jsonl").read_text().splitlines()]
    last: dict[str, Decimal] = {}
    for p in postings:
        last[p["debit_account"]] = Decimal(p["debit_balance_after"])
        last[p["credit_account"]] = Decimal(p["credit_balance_after"])
    closing = {account: Decimal(str(account_statement(out, tmp_path, account)["closing_balance"]))
               for account in last}
    assert closing == last
    assert sum(closing.values()) == 0 and len(closing) > 5
    # a period: the opening balance is the balance before it, and opening + flows = closing
    s = account_statement(out, tmp_path, "settlement:BNBUSDT", "--from", "1760126460500")
    assert Decimal(str(s["opening_balance"])) + Decimal(str(s["total_flows"])) == Decimal(str(s["closing_balance"]))


def test_csv_and_parquet_of_an_account(out: Path, tmp_path: Path) -> None:
    assert main(["statement", str(out), "--account", "wallet:A2:USDT", "--out", str(tmp_path / "s.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [(r["amount"], r["counter_account"], r["adl_event_id"]) for r in rows] == [
        ("1667.5", "external:USDT", ""), ("1500", "settlement:BNBUSDT", "adl-19-0")]
    assert main(["statement", str(out), "--account", "external:USDT", "--format", "parquet", "--out",
                 str(tmp_path / "s.parquet")]) == 0
    amounts = pq.read_table(tmp_path / "s.parquet").column("amount").to_pylist()
    assert amounts[:2] == [Decimal("-100"), Decimal("-4785")]  # money out of the outside world


def test_an_account_without_postings_or_two_subjects_is_refused(out: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["statement", str(out), "--account", "wallet:NOBODY:USDT"]) == 2
    err = capsys.readouterr().err
    assert "no postings move wallet:NOBODY:USDT" in err and "wallet:A2:USDT" in err
    with pytest.raises(SystemExit) as exit_:
        main(["statement", str(out), "--account", "wallet:A2:USDT", "--fund", "BNB"])
    assert exit_.value.code == 2
