"""`backstop audit verify` checks the general ledger (postings.jsonl): its chain, count and head against the summary,
every account's balance against its postings, a sum of 0 per seq, the fund balances and the ledger sum, and with the
journal every posting re-derived."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_audit import ADL_EXAMPLE, EXAMPLE, rechain, replayed, rewrite, verify

from backstop.core.verify import check_postings
from backstop.entrypoints.cli import main

Records = list[dict[str, object]]


def forge_postings_summary(out: Path) -> None:
    """A forger who rewrote postings.jsonl makes summary.json agree with it (its head and count)."""
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(x) for x in (out / "postings.jsonl").read_text().splitlines()]
    summary["postings_head_hash"] = records[-1]["hash"] if records else "0" * 64
    summary["postings"] = len(records)
    (out / "summary.json").write_text(json.dumps(summary))


def test_a_clean_replay_verifies_its_postings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = verify(replayed(tmp_path, ADL_EXAMPLE), ADL_EXAMPLE, capsys)
    assert code == 0, text
    assert "postings: hash chain of 13 records" in text
    assert "the balances change by a sum of 0 in each of 10 seq(s)" in text
    assert "the fund accounts end at the funds' balances, all accounts at the ledger sum" in text
    assert "postings: all 13 records re-derived from the journal" in text


def _amount(records: Records) -> Records:
    records[3]["amount"] = "1"  # a fee or a margin posting shrunk; the balances after it left as they were
    return records


def _drop(records: Records) -> Records:
    return records[:2] + records[3:]


@pytest.mark.parametrize(("change", "forged", "message"), [
    (_amount, False, "postings record 4 (p-6-0, seq 6): hash"),
    (_drop, False, "postings record 3 (p-6-0, seq 6): prev_hash"),
    (lambda r: r[:-1], False, "summary.json: postings 13 but postings.jsonl holds 12 record(s)"),
    (lambda r: rechain(_amount(r)), False, "summary.json: postings_head_hash"),
    (lambda r: rechain(_amount(r)), True, "postings record 4 (p-6-0, seq 6): "),
    (lambda r: rechain(_drop(r)), True, "postings record 3 (p-6-0, seq 6): external:USDT balance after"),
])
def test_tampering_with_the_postings_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              change: Callable[[Records], Records], forged: bool,
                                              message: str) -> None:
    out = replayed(tmp_path, ADL_EXAMPLE)
    rewrite(out / "postings.jsonl", change)
    if forged:
        forge_postings_summary(out)
    code, text = verify(out, None, capsys)
    assert code == 1
    assert message in text, text


def test_a_forged_but_balanced_posting_is_caught_by_re_derivation(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A posting re-attributed to another transfer id keeps every balance: only the journal tells."""
    out = replayed(tmp_path, ADL_EXAMPLE)

    def blame(records: Records) -> Records:
        records[1]["transfer_id"] = "d-A2"
        return rechain(records)

    rewrite(out / "postings.jsonl", blame)
    forge_postings_summary(out)
    assert verify(out, None, capsys)[0] == 0
    code, text = verify(out, ADL_EXAMPLE, capsys)
    assert code == 1
    assert "postings record 2 (p-4-0, seq 4): differs from the replay" in text, text
    assert 'transfer_id: stored "d-A2", replay gives "d-A1"' in text


def test_a_missing_postings_file_is_not_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = replayed(tmp_path, EXAMPLE)
    (out / "postings.jsonl").unlink()
    assert main(["audit", "verify", str(out)]) == 2
    assert "postings.jsonl" in capsys.readouterr().err


def test_balances_that_do_not_follow_from_the_postings() -> None:
    posting = {"id": "p-1-0", "seq": 1, "amount": "5", "debit_account": "external:USDT", "credit_account": "fund:F",
               "debit_balance_after": "-5", "credit_balance_after": "5"}
    assert check_postings([posting])[0] is None
    assert check_postings([posting])[1:] == ({"external:USDT": -5, "fund:F": 5}, 1)
    moved = {**posting, "credit_balance_after": "6"}
    assert "fund:F balance after 6 but its postings add up to 5" in str(check_postings([moved])[0])
    # after a snapshot the opening balances are taken from the first postings; the next must follow from them
    later = {**posting, "id": "p-2-0", "seq": 2, "debit_balance_after": "-10", "credit_balance_after": "11"}
    assert check_postings([moved, later], opening_known=False)[0] is None
    assert "fund:F balance after 11 but its postings add up to 10" in str(
        check_postings([posting, later], opening_known=False)[0])
    for bad in ({**posting, "amount": "0"}, {**posting, "amount": "-5"},
                {**posting, "credit_account": "external:USDT"}):
        assert "a posting moves an amount > 0 between two accounts" in str(check_postings([bad])[0])
    assert "not exact decimals" in str(check_postings([{**posting, "amount": "five"}])[0])
