"""`backstop audit verify` catches tampering: an altered amount, a reordered or deleted entry, a forged chain."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from backstop.core.hashing import canonical_json, chain_hash
from backstop.entrypoints.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "05-funding-and-fund-inventory.jsonl"
ADL_EXAMPLE = Path(__file__).parents[2] / "examples" / "02-adl-walks-queue.jsonl"


def replayed(tmp_path: Path, journal: Path = EXAMPLE) -> Path:
    out = tmp_path / "out"
    assert main(["replay", str(journal), "--out", str(out)]) == 0
    return out


def rewrite(path: Path, change: Callable[[list[dict[str, object]]], list[dict[str, object]]]) -> None:
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    path.write_bytes(b"".join(canonical_json(r) + b"\n" for r in change(records)))


def rechain(records: list[dict[str, object]]) -> list[dict[str, object]]:
    """What a forger would do: recompute every hash so the chain itself looks intact."""
    previous = "0" * 64
    for record in records:
        record["prev_hash"] = previous
        body = {k: v for k, v in record.items() if k != "hash"}
        record["hash"] = previous = chain_hash(body)
    return records


def verify(out: Path, journal: Path | None, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", "verify", str(out), *(["--journal", str(journal)] if journal else [])])
    return code, capsys.readouterr().out


def test_a_clean_replay_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = verify(replayed(tmp_path), EXAMPLE, capsys)
    assert code == 0 and "head hash and state hash reproduced" in text


def _set_amount(records: list[dict[str, object]]) -> list[dict[str, object]]:
    records[1]["amount"] = "-10.79"
    return records


@pytest.mark.parametrize(("change", "journal", "message"), [
    (_set_amount, False, "fund-ledger record 2 (fl-12-0, seq 12): hash"),
    (lambda r: [r[0], r[2], r[1], r[3]], False, "fund-ledger record 2 (fl-13-0, seq 13): prev_hash"),
    (lambda r: r[:2] + r[3:], False, "fund-ledger record 3 (fl-13-1, seq 13): prev_hash"),
    (lambda r: rechain(_set_amount(r)), False,
     "fund-ledger record 2 (fl-12-0, seq 12): balance_after 199989.2 but the amounts"),
    (lambda r: rechain(r[:-1]), False, "summary.json: fund MAIN balance 200245.96 but its ledger entries add up to "
                                       "200289.2"),
    (lambda r: rechain(r[:-1]), True, "summary.json: fund MAIN balance"),
])
def test_tampering_with_the_fund_ledger_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  change: Callable[[list[dict[str, object]]], list[dict[str, object]]],
                                                  journal: bool, message: str) -> None:
    out = replayed(tmp_path)
    rewrite(out / "fund-ledger.jsonl", change)
    code, text = verify(out, EXAMPLE if journal else None, capsys)
    assert code == 1
    assert message in text, text


def test_a_forged_but_consistent_history_is_caught_by_re_derivation(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = replayed(tmp_path, ADL_EXAMPLE)

    def swap_counterparty(records: list[dict[str, object]]) -> list[dict[str, object]]:
        records[0]["account_id"] = "A4"  # blame another account, and re-hash so the chain holds
        return rechain(records)

    rewrite(out / "adl-events.jsonl", swap_counterparty)
    code, text = verify(out, None, capsys)
    assert code == 0  # the chain and the balances alone cannot see it ...
    code, text = verify(out, ADL_EXAMPLE, capsys)
    assert code == 1  # ... re-deriving from the journal does
    assert ("adl-events record 1 (adl-19-0, seq 19): differs from the replay: account_id: stored 'A4', replay gives "
            "'A2'") in text


def test_unreadable_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = replayed(tmp_path)
    (out / "summary.json").write_text("{")
    assert main(["audit", "verify", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
    json.loads((replayed(tmp_path / "again") / "summary.json").read_text())


def test_a_journal_alone_is_verified_by_replaying_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--journal", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "conservation: checked after each of 13 events" in out and "ledger verified" in out
