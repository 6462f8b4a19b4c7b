"""Fund statements and reconciliation: balances at both ends, flows by kind and symbol, totals that add up."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from backstop.core.hashing import GENESIS_HASH, canonical_json, chain_hash
from backstop.entrypoints.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "05-funding-and-fund-inventory.jsonl"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "out")]) == 0
    return tmp_path / "out"


def test_a_period_statement_starts_from_the_balance_before_it(out: Path, tmp_path: Path) -> None:
    target = tmp_path / "s.json"
    # from the funding at 2025-10-11 08:00 UTC on: the seed transfer is the opening balance
    assert main(["statement", str(out), "--fund", "MAIN", "--from", "2025-10-11T08:00:00Z", "--format", "json",
                 "--out", str(target)]) == 0
    s = json.loads(target.read_text())
    assert (s["opening_balance"], s["closing_balance"]) == ("200000", "200245.96")
    assert s["by_kind"] == {"fee": "-43.24", "funding": "-10.8", "liquidation_gain": "300"}
    assert s["by_symbol"] == {"-": "-43.24", "BTCUSDT": "289.2"}
    assert Decimal(s["opening_balance"]) + Decimal(s["total_flows"]) == Decimal(s["closing_balance"])
    assert [e["id"] for e in s["entries"]] == ["fl-12-0", "fl-13-0", "fl-13-1"]


def test_csv_and_parquet_carry_exact_amounts(out: Path, tmp_path: Path) -> None:
    assert main(["statement", str(out), "--fund", "MAIN", "--format", "csv", "--out", str(tmp_path / "s.csv")]) == 0
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0].startswith("id,seq,ts,fund_id,kind,amount,balance_after") and len(lines) == 5
    assert main(["statement", str(out), "--fund", "MAIN", "--format", "parquet", "--out",
                 str(tmp_path / "s.parquet")]) == 0
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.column("amount").to_pylist() == [Decimal("200000"), Decimal("-10.8"), Decimal("300"),
                                                  Decimal("-43.24")]
    assert json.loads(table.schema.metadata[b"backstop.statement"])["closing_balance"] == "200245.96"


def test_reconcile_passes_and_catches_a_balance_that_does_not_add_up(out: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile", str(out)]) == 0
    assert "reconciled" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    summary["funds"]["MAIN"]["balance"] = "200245.97"
    (out / "summary.json").write_text(json.dumps(summary))
    assert main(["reconcile", str(out)]) == 1
    assert "entries add up to 200245.96, summary reports 200245.97" in capsys.readouterr().out


def test_reconcile_says_entries_that_do_not_follow_as_a_mismatch(out: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ledger = out / "fund-ledger.jsonl"
    ledger.write_text(ledger.read_text().replace('"amount":"-43.24"', '"amount":"-42.24"'))
    assert main(["reconcile", str(out)]) == 1
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith("MISMATCH fund-ledger record 4 (fl-13-1, seq 13): hash ") and said[0].endswith(
        "the record was altered (backstop audit verify checks the whole directory)"), said
    assert ("MISMATCH fund MAIN: fl-13-1: balance_after 200245.96 does not follow from 200289.2 + -42.24"
            in said), said


def test_reconcile_and_statement_hold_the_chains_to_the_summary(out: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A last entry relabelled (a fund's loss shown as a transfer) breaks its hash; postings cut short end the chain
    before the summary's head: both are mismatches, and a statement over them is refused (exit 1)."""
    ledger = out / "fund-ledger.jsonl"
    lines = ledger.read_text().splitlines()
    last = json.loads(lines[-1])
    lines[-1] = json.dumps({**last, "kind": "transfer" if last["kind"] != "transfer" else "fee"})
    ledger.write_text("\n".join(lines) + "\n")
    assert main(["statement", str(out), "--fund", "MAIN", "--out", str(out.parent / "s.csv")]) == 1
    assert "the record was altered" in capsys.readouterr().err
    assert main(["reconcile", str(out)]) == 1
    assert "the record was altered" in capsys.readouterr().out
    postings = out / "postings.jsonl"
    postings.write_text("".join(postings.read_text().splitlines(keepends=True)[:-1]))
    assert main(["reconcile", str(out)]) == 1
    assert "MISMATCH postings.jsonl ends at hash " in capsys.readouterr().out


def test_reconcile_holds_each_fund_to_its_account_in_the_general_ledger(out: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Fund ledger (its chain recomputed, as a forger would) and summary rewritten alike: the postings, which the
    rewrite left alone, tell."""
    ledger = out / "fund-ledger.jsonl"
    ledger.write_text(ledger.read_text().replace('"amount":"-43.24","balance_after":"200245.96"',
                                                 '"amount":"-42.24","balance_after":"200246.96"'))
    records = [json.loads(line) for line in ledger.read_text().splitlines()]
    previous = GENESIS_HASH
    for record in records:
        record["prev_hash"] = previous
        record["hash"] = previous = chain_hash({k: v for k, v in record.items() if k != "hash"})
    ledger.write_bytes(b"".join(canonical_json(record) + b"\n" for record in records))
    summary = json.loads((out / "summary.json").read_text())
    summary["funds"]["MAIN"]["balance"] = "200246.96"
    summary["ledger_head_hash"] = previous
    (out / "summary.json").write_text(json.dumps(summary))
    assert main(["reconcile", str(out)]) == 1
    said = capsys.readouterr().out.splitlines()
    assert [line for line in said if line.startswith("MISMATCH")] == [
        "MISMATCH fund MAIN: its postings leave fund:MAIN at 200245.96, summary reports 200246.96"], said


def test_reconcile_refuses_outputs_without_the_general_ledger(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (out / "postings.jsonl").unlink()
    assert main(["reconcile", str(out)]) == 1
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("MISMATCH")] == [
        "MISMATCH postings.jsonl is missing: the general ledger (each fund's account, its sum) is not there to "
        "reconcile"]


def test_outputs_of_a_replay_from_a_snapshot_open_at_the_snapshot_s_balances(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A replay from a snapshot writes only the entries after it: statements and reconcile open at the balances
    the snapshot held (summary.json's from_snapshot), as audit verify does."""
    journal = Path(__file__).parents[2] / "examples" / "06-bad-debt.jsonl"
    whole, tail = tmp_path / "whole", tmp_path / "tail"
    assert main(["replay", str(journal), "--out", str(whole), "--snapshot-every", "5"]) == 0
    assert main(["replay", str(journal), "--out", str(tail), "--from-snapshot",
                 str(whole / "snapshots" / "snapshot-000000000010.json")]) == 0
    capsys.readouterr()
    assert main(["reconcile", str(tail)]) == 0
    assert "fund MAIN: opening 500 (the snapshot's), closing -100 USDT" in capsys.readouterr().out
    for directory in (whole, tail):
        assert main(["statement", str(directory), "--fund", "MAIN", "--format", "json",
                     "--out", str(tmp_path / f"{directory.name}.json")]) == 0
        assert main(["statement", str(directory), "--account", "fund:MAIN", "--format", "json",
                     "--out", str(tmp_path / f"{directory.name}-account.json")]) == 0
    closing = {name: json.loads((tmp_path / f"{name}.json").read_text())["closing_balance"]
               for name in ("whole", "tail", "whole-account", "tail-account")}
    assert set(closing.values()) == {"-100"}, closing
    assert json.loads((tmp_path / "tail.json").read_text())["opening_balance"] == "500"
    capsys.readouterr()
    for period in (["--from", "1700000000000"], ["--to", "1760000000001"]):
        for selected in (["--fund", "MAIN"], ["--account", "fund:MAIN"]):
            assert main(["statement", str(tail), *selected, *period, "--out", str(tmp_path / "p.csv")]) == 2
            err = capsys.readouterr().err
            assert err == (f"backstop statement: {tail} holds only what came after the snapshot at seq 10: a statement "
                           f"over a period needs the outputs of a replay from the journal's start (without --from "
                           f"and --to, it runs from the snapshot's balances)\n")
            assert not (tmp_path / "p.csv").exists()


LATE = [  # B is applied after A but carries an earlier time (within the 10 minutes a record may come late)
    {"type": "fund", "ts": 1760000000000, "fund_id": "F", "settle_asset": "USDT", "surplus": "fund",
     "max_inventory_ratio": "1"},
    {"type": "transfer", "ts": 1760000300000, "transfer_id": "A", "account_id": "fund:F", "asset": "USDT",
     "amount": "100"},
    {"type": "transfer", "ts": 1760000060000, "transfer_id": "B", "account_id": "fund:F", "asset": "USDT",
     "amount": "7"},
]


@pytest.mark.parametrize(("period", "opening", "closing", "seqs"), [
    (["--from", "1760000100000"], "7", "107", [2]),  # B before the period, A in it
    (["--to", "1760000100000"], "0", "7", [3]),  # B in it, A after
    (["--from", "1760000000000", "--to", "1760000100000"], "0", "7", [3]),
])
def test_a_period_takes_entries_by_event_time_where_times_go_back(
        tmp_path: Path, period: list[str], opening: str, closing: str, seqs: list[int]) -> None:
    journal = tmp_path / "late.jsonl"
    journal.write_text("".join(json.dumps(record) + "\n" for record in LATE))
    assert main(["replay", str(journal), "--out", str(tmp_path / "out")]) == 0
    for source in (["--fund", "F"], ["--account", "fund:F"]):
        target = tmp_path / "s.json"
        assert main(["statement", str(tmp_path / "out"), *source, *period, "--format", "json",
                     "--out", str(target)]) == 0
        s = json.loads(target.read_text())
        assert (s["opening_balance"], s["closing_balance"]) == (opening, closing)
        assert [e["seq"] for e in s["entries"]] == seqs


def test_a_settlement_account_statement_names_its_symbol(out: Path, tmp_path: Path) -> None:
    target = tmp_path / "s.json"
    assert main(["statement", str(out), "--account", "settlement:BTCUSDT", "--format", "json",
                 "--out", str(target)]) == 0
    s = json.loads(target.read_text())
    assert list(s["by_symbol"]) == ["BTCUSDT"] and s["entries"]


def test_a_statement_without_an_end_says_none(out: Path, tmp_path: Path) -> None:
    for period, to_ts in (([], None), (["--to", "1760000000000"], 1760000000000)):
        target = tmp_path / f"s{len(period)}.json"
        assert main(["statement", str(out), "--fund", "MAIN", "--format", "json", "--out", str(target), *period]) == 0
        assert json.loads(target.read_text())["to_ts"] == to_ts


@pytest.mark.parametrize("cut", ["last entry", "every entry"])
def test_a_statement_of_a_ledger_cut_short_is_refused(out: Path, tmp_path: Path, cut: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # what is left adds up line by line; only summary.json's chain head and balance tell it is not the whole ledger
    ledger = out / "fund-ledger.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:-1]) if cut == "last entry" else "")
    target = tmp_path / "s.json"
    assert main(["statement", str(out), "--fund", "MAIN", "--format", "json", "--out", str(target)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ("cut short" in err or "reports 200245.96" in err), err
    assert not target.exists()


def test_an_account_statement_of_postings_cut_short_is_refused(out: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    postings = out / "postings.jsonl"
    postings.write_text("".join(postings.read_text().splitlines(keepends=True)[:-1]))
    assert main(["statement", str(out), "--account", "fund:MAIN", "--out", str(tmp_path / "s.csv")]) == 1
    assert "postings.jsonl ends at hash" in capsys.readouterr().err


def test_a_summary_of_an_older_backstop_without_the_chain_head_is_stated(out: Path, tmp_path: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    del summary["postings_head_hash"]  # written before the postings had a chain head
    (out / "summary.json").write_text(json.dumps(summary))
    assert main(["statement", str(out), "--account", "fund:MAIN", "--out", str(tmp_path / "s.csv")]) == 0
