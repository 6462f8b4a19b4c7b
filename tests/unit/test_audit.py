"""`backstop audit verify` catches tampering: an altered amount, a reordered or deleted entry, a forged chain."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from backstop.core.documents import SUMMARY_KEYS
from backstop.core.hashing import canonical_json, chain_hash, combine
from backstop.entrypoints.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples"
EXAMPLE = EXAMPLES / "05-funding-and-fund-inventory.jsonl"
ADL_EXAMPLE = EXAMPLES / "02-adl-walks-queue.jsonl"


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


def forge_summary(out: Path) -> None:
    """What a forger who rewrote the streams would do next: make summary.json agree with them (heads, counts)."""
    summary = json.loads((out / "summary.json").read_text())
    for stream, head, count in (("fund-ledger", "ledger_head_hash", "fund_ledger_entries"),
                                ("adl-events", "adl_head_hash", "adl_events")):
        records = [json.loads(x) for x in (out / f"{stream}.jsonl").read_text().splitlines()]
        summary[head] = records[-1]["hash"] if records else "0" * 64
        summary[count] = len(records)
    summary["head_hash"] = combine(summary["ledger_head_hash"], summary["adl_head_hash"])
    (out / "summary.json").write_text(json.dumps(summary))


def test_a_clean_replay_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = verify(replayed(tmp_path), EXAMPLE, capsys)
    assert code == 0 and "head hash and state hash reproduced" in text


def _set_amount(records: list[dict[str, object]]) -> list[dict[str, object]]:
    records[1]["amount"] = "-10.79"
    return records


@pytest.mark.parametrize(("change", "forged", "journal", "message"), [
    (_set_amount, False, False, "fund-ledger record 2 (fl-12-0, seq 12): hash"),
    (lambda r: [r[0], r[2], r[1], r[3]], False, False, "fund-ledger record 2 (fl-13-0, seq 13): prev_hash"),
    (lambda r: r[:2] + r[3:], False, False, "fund-ledger record 3 (fl-13-1, seq 13): prev_hash"),
    (lambda r: rechain(_set_amount(r)), False, False, "but the fund-ledger chain ends at"),
    (lambda r: rechain(_set_amount(r)), True, False,
     "fund-ledger record 2 (fl-12-0, seq 12): balance_after 199989.2 but the amounts"),
    (lambda r: r[:-1], False, False, "summary.json: fund_ledger_entries 4 but fund-ledger.jsonl holds 3 record(s)"),
    (lambda r: rechain(r[:-1]), True, False, "summary.json: fund MAIN balance 200245.96 but its ledger entries add "
                                             "up to 200289.2"),
    (lambda r: rechain(r[:-1]), True, True, "summary.json: fund MAIN balance"),
])
def test_tampering_with_the_fund_ledger_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  change: Callable[[list[dict[str, object]]], list[dict[str, object]]],
                                                  forged: bool, journal: bool, message: str) -> None:
    out = replayed(tmp_path)
    rewrite(out / "fund-ledger.jsonl", change)
    if forged:
        forge_summary(out)
    code, text = verify(out, EXAMPLE if journal else None, capsys)
    assert code == 1
    assert message in text, text


def test_an_entry_relabelled_with_its_chain_and_summary_forged_is_caught_by_its_posting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fund's liquidation loss relabelled as a transfer out, the fund ledger's chain and the summary's heads
    recomputed: the fund ledger holds, but its entry no longer says what the untouched posting of it says, and that
    is seen without the journal."""
    out, journal = tmp_path / "out", EXAMPLES / "06-bad-debt.jsonl"
    assert main(["replay", str(journal), "--out", str(out)]) == 0

    def relabel(records: list[dict[str, object]]) -> list[dict[str, object]]:
        assert records[-1]["kind"] == "liquidation_loss"
        records[-1].update(kind="transfer", counter_account="external:USDT", liquidation_id=None)
        return rechain(records)

    rewrite(out / "fund-ledger.jsonl", relabel)
    forge_summary(out)
    code, text = verify(out, None, capsys)
    assert code == 1
    assert ("FAIL  fund-ledger record 2 (fl-14-0, seq 14): differs from its posting: kind: the entry says "
            '"transfer", posting p-14-2 "liquidation_loss"') in text, text


def test_a_forged_but_consistent_history_is_caught_by_re_derivation(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = replayed(tmp_path, ADL_EXAMPLE)

    def swap_counterparty(records: list[dict[str, object]]) -> list[dict[str, object]]:
        records[0]["account_id"] = "A4"  # blame another account, and re-hash so the chain holds
        return rechain(records)

    rewrite(out / "adl-events.jsonl", swap_counterparty)
    code, text = verify(out, None, capsys)
    assert code == 1 and "summary.json: adl_head_hash" in text  # the summary's head no longer matches ...
    forge_summary(out)
    code, text = verify(out, None, capsys)
    assert code == 0  # ... a forger who rewrites it too passes the checks of the files alone ...
    code, text = verify(out, ADL_EXAMPLE, capsys)
    assert code == 1  # ... re-deriving from the journal does not
    assert ("adl-events record 1 (adl-19-0, seq 19): differs from the replay: account_id: stored \"A4\", replay gives "
            '"A2"') in text


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize(("journal", "damage", "message"), [
    # without the journal, each file is held to the counts and heads summary.json records
    (ADL_EXAMPLE, lambda out: (out / "adl-events.jsonl").write_text("\n".join(_lines(out / "adl-events.jsonl")[:-1])
                                                                     + "\n"),
     "summary.json: adl_events 2 but adl-events.jsonl holds 1 record(s)"),
    (ADL_EXAMPLE, lambda out: (out / "adl-events.jsonl").write_text(""),
     "summary.json: adl_events 2 but adl-events.jsonl holds 0 record(s)"),
    (EXAMPLES / "06-bad-debt.jsonl", lambda out: (out / "findings.jsonl").write_text(""),
     "summary.json: findings 1 but findings.jsonl holds 0 record(s)"),
    (EXAMPLES / "06-bad-debt.jsonl", lambda out: (out / "findings.jsonl").write_text(
        (out / "findings.jsonl").read_text() * 2), "summary.json: findings 1 but findings.jsonl holds 2 record(s)"),
    (None, lambda out: (out / "dead-letter.jsonl").write_text(""),
     "summary.json: dead_letters 2 but dead-letter.jsonl holds 0 record(s)"),
    # a summary cut down to hide a file: every key a replay writes is wanted
    (EXAMPLES / "10-socialized-loss.jsonl", lambda out: (
        _summary_without(out, "postings", "postings_head_hash"), (out / "postings.jsonl").unlink()),
     "summary.json has no postings, postings_head_hash: every replay writes them"),
    (None, lambda out: _summary_without(out, "dead_letters", "last_seq", "schema_version"),
     "summary.json has no dead_letters, last_seq, schema_version: every replay writes them"),
    # ... those the summary's model requires too: a check that fails (exit 1), not a file refused (exit 2)
    (None, lambda out: _summary_without(out, "head_hash", "funds", "ledger_sum"),
     "summary.json has no funds, head_hash, ledger_sum: every replay writes them"),
    # a count or head set to null would leave its check undone
    (EXAMPLES / "10-socialized-loss.jsonl", lambda out: (
        _summary_with(out, ("postings",), None), _summary_with(out, ("postings_head_hash",), None)),
     "summary.json: postings, postings_head_hash null: every replay writes a value"),
    (ADL_EXAMPLE, lambda out: _summary_with(out, ("adl", "rounds"), "1"),
     'summary.json: adl.rounds "1" is not a count'),
    # a fund cut from the summary still has its entries and postings
    (EXAMPLES / "06-bad-debt.jsonl", lambda out: _summary_with(out, ("funds",), {}),
     "summary.json: fund MAIN has ledger entries but is not among its funds"),
    # bad debt is the fund's negative balance, nothing else
    (EXAMPLES / "06-bad-debt.jsonl", lambda out: _summary_with(out, ("funds", "MAIN", "bad_debt"), "50"),
     "summary.json: fund MAIN bad_debt 50 but its balance is -100 (bad debt is a negative balance)"),
])
def test_the_files_are_held_to_the_summary_without_the_journal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], journal: Path | None, damage: Callable[[Path], object],
        message: str) -> None:
    out = replayed(tmp_path, journal or _with_two_bad_lines(tmp_path))
    assert verify(out, None, capsys)[0] == 0
    damage(out)
    code, text = verify(out, None, capsys)
    assert code == 1 and message in text, text


def _summary_without(out: Path, *keys: str) -> None:
    summary = json.loads((out / "summary.json").read_text())
    for key in keys:
        del summary[key]
    (out / "summary.json").write_text(json.dumps(summary))


def _summary_with(out: Path, path: tuple[str, ...], value: object) -> None:
    summary = json.loads((out / "summary.json").read_text())
    inner = summary
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    (out / "summary.json").write_text(json.dumps(summary))


def test_every_key_of_a_summary_is_one_audit_verify_wants(tmp_path: Path) -> None:
    for engine in ("reference", "compiled"):
        out = tmp_path / engine
        assert main(["replay", str(EXAMPLE), "--out", str(out), "--engine", engine]) == 0
        assert set(json.loads((out / "summary.json").read_text())) == SUMMARY_KEYS


def _with_two_bad_lines(tmp_path: Path) -> Path:
    journal = tmp_path / "bad.jsonl"
    journal.write_bytes(EXAMPLE.read_bytes() + b"{not json\n" + b'{"type": "mark", "ts": 1, "symbol": "NOPE"}\n')
    return journal


def test_a_replay_from_a_snapshot_verifies_alone_and_against_its_journal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = tmp_path / "whole"
    assert main(["replay", str(EXAMPLE), "--out", str(whole), "--snapshot-every", "8"]) == 0
    tail = tmp_path / "tail"
    snapshot = whole / "snapshots" / "snapshot-000000000008.json"
    assert main(["replay", str(EXAMPLE), "--out", str(tail), "--from-snapshot", str(snapshot)]) == 0
    assert len(_lines(tail / "fund-ledger.jsonl")) < len(_lines(whole / "fund-ledger.jsonl"))
    assert verify(tail, None, capsys)[0] == 0
    code, text = verify(tail, EXAMPLE, capsys)
    assert code == 0 and "head hash and state hash reproduced" in text, text
    rewrite(tail / "fund-ledger.jsonl", lambda r: r[1:])  # the first entry after the snapshot removed
    code, text = verify(tail, None, capsys)
    assert code == 1 and "fund-ledger record 1" in text and "prev_hash" in text


def test_unreadable_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = replayed(tmp_path)
    (out / "summary.json").write_text("{")
    assert main(["audit", "verify", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
    json.loads((replayed(tmp_path / "again") / "summary.json").read_text())


@pytest.mark.parametrize(("engine", "checked"), [("reference", "after each of 13 events"),
                                                 ("compiled", "after every batch of lines (13 events)")])
def test_a_journal_alone_is_verified_by_replaying_it(engine: str, checked: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--journal", str(EXAMPLE), "--engine", engine]) == 0
    out = capsys.readouterr().out
    assert f"conservation: checked {checked}" in out and "ledger verified" in out


@pytest.mark.parametrize(("example", "policy"), [("07-adl-lab", "capped_pro_rata"), ("08-okx-floor", "okx"),
                                                 ("09-bybit-drawdown", "bybit"), ("10-socialized-loss", "socialized")])
def test_a_replay_under_another_adl_policy_verifies_against_its_journal(tmp_path: Path, example: str,
                                                                        policy: str) -> None:
    """summary.json records the policy, and the audit replays the journal under it (it replayed under the default
    and failed every run of the ADL lab)."""
    journal = Path(__file__).parents[2] / "examples" / f"{example}.jsonl"
    out = tmp_path / "out"
    assert main(["replay", str(journal), "--adl-policy", policy, "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["adl_policy"] != {"rule": "bitmex", "price": "bankruptcy"}
    assert main(["audit", "verify", str(out), "--journal", str(journal)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "adl_policy": {"rule": "no such rule"}}))
    assert main(["audit", "verify", str(out), "--journal", str(journal)]) == 1


def _set(path: Path, key: str, value: object) -> None:
    document = json.loads(path.read_text())
    document[key] = value
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda out: rewrite(out / "findings.jsonl", lambda r: [{**r[0], "kind": "adl_shortfall"}, *r[1:]]),
     "findings record 1 (finding-14-0, seq 14): differs from the replay: kind: stored \"adl_shortfall\""),
    (lambda out: _set(out / "summary.json", "events_applied", 99),
     "summary.json: events_applied 99 but the replay of the journal gives 14"),
    (lambda out: _set(out / "summary.json", "duplicates", 3), "summary.json: duplicates 3 but the replay"),
    (lambda out: (out / "accounts.json").write_text("{}"),  # an object, as without the journal it must be
     'accounts.json: a (absent) but the replay of the journal gives {"positions"'),
    (lambda out: rewrite(out / "adl-rounds.jsonl", lambda r: [{**r[0], "haircut": "1"}]),
     "adl-rounds record 1"),
])
def test_every_file_is_held_to_the_replay_of_the_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         damage: Callable[[Path], object], message: str) -> None:
    """Files without a hash chain (findings, ADL rounds, accounts.json, the summary's figures) are derived again and
    compared too: a change that leaves every chain, count and head intact is still caught."""
    journal = EXAMPLES / "06-bad-debt.jsonl"
    out = replayed(tmp_path, journal)
    damage(out)
    assert verify(out, None, capsys)[0] == 0, "the chains, counts and heads do not see it"
    code, text = verify(out, journal, capsys)
    assert code == 1 and message in text, text


def test_dead_letters_are_held_to_the_replay_of_the_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = _with_two_bad_lines(tmp_path)
    out = replayed(tmp_path, journal)
    assert verify(out, journal, capsys)[0] == 0
    rewrite(out / "dead-letter.jsonl", lambda r: r[::-1])
    code, text = verify(out, journal, capsys)
    assert code == 1 and "dead-letter record 1" in text and "line: stored 15, replay gives 14" in text, text


def test_adl_files_are_counted_without_the_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(ADL_EXAMPLE), "--out", str(out), "--adl-quantiles"]) == 0
    assert verify(out, None, capsys)[0] == 0
    rewrite(out / "adl-quantiles.jsonl", lambda r: r[:-1])
    code, text = verify(out, None, capsys)
    assert code == 1 and "of adl-quantiles.jsonl but it holds" in text, text


def test_outputs_of_a_stored_journal_are_held_to_the_journal_apart_from_what_the_service_carried(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`replay --from-postgres` adds what the service counted beside its journal (duplicates, its dead letters):
    summary.json's `carried` says how much, and the audit against the exported journal sets it aside."""
    from backstop.adapters.journal_file import read_journal
    from backstop.entrypoints.replay import Carried, ReplayOptions, replay_lines

    lines = [raw for _, raw in read_journal(ADL_EXAMPLE)]
    letter = {"kind": "invalid", "reason": "invalid JSON", "raw": "{", "source_topic": "backstop.fills",
              "source_partition": 0, "source_offset": 7}
    out = tmp_path / "stored"
    replay_lines(ReplayOptions(journal=None, out=out), lambda skip: list(enumerate(lines, start=1))[skip:],
                 sum(len(raw) + 1 for raw in lines), carried=Carried(2, 1, [letter]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["carried"] == {"duplicates": 2, "rejected": 1, "conflicting_duplicates": 0, "dead_letters": 1}
    code, text = verify(out, ADL_EXAMPLE, capsys)
    assert code == 0 and "summary.json: every field as the replay of the journal gives it" in text, text
    # and the answer says what it set aside
    assert "dead-letter.jsonl: all 0 records re-derived from the journal (the service's 1 before them set aside" \
        in text
    assert "(the service's counts set aside: conflicting_duplicates 0, dead_letters 1, duplicates 2, rejected 1)" \
        in text
    _set(out / "summary.json", "duplicates", summary["duplicates"] + 1)
    code, text = verify(out, ADL_EXAMPLE, capsys)
    assert code == 1 and "summary.json: duplicates 3 but the replay of the journal gives 2" in text, text


@pytest.mark.parametrize("engine", ["compiled", "reference"])
def test_a_replay_from_a_snapshot_with_wallets_at_zero_verifies_byte_for_byte(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str) -> None:
    """The state leaves wallets at zero out, but the snapshot file carries them, so accounts.json of a replay
    from it is the whole replay's, byte for byte, and the audit compares it so."""
    journal = EXAMPLES / "07-adl-lab.jsonl"
    whole, tail = tmp_path / "whole", tmp_path / "tail"
    assert main(["replay", str(journal), "--out", str(whole), "--snapshot-every", "2", "--engine", engine]) == 0
    snapshot = whole / "snapshots" / "snapshot-000000000012.json"
    assert orjson.loads(snapshot.read_bytes())["wallets_at_zero"]  # the case: some wallet at zero by then
    assert main(["replay", str(journal), "--out", str(tail), "--from-snapshot", str(snapshot), "--engine", engine]) == 0
    assert (whole / "accounts.json").read_bytes() == (tail / "accounts.json").read_bytes()
    capsys.readouterr()
    assert main(["audit", "verify", str(tail), "--journal", str(journal), "--engine", engine]) == 0
    assert "accounts.json: as the replay of the journal writes it, byte for byte" in capsys.readouterr().out
    # a wallet at zero gone from the tail fails it
    accounts = orjson.loads((tail / "accounts.json").read_bytes())
    account_id = next(name for name, account in accounts.items() if "0" in account.get("wallets", {}).values())
    (tail / "accounts.json").write_bytes((tail / "accounts.json").read_bytes().replace(
        f'"{account_id}"'.encode(), b'"renamed"', 1))
    assert main(["audit", "verify", str(tail), "--journal", str(journal), "--engine", engine]) == 1
    assert f"accounts.json: {account_id} (absent) but the replay of the journal gives" in capsys.readouterr().out


def test_outputs_resumed_from_an_older_snapshot_verify_with_the_wallets_at_zero_aside(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An older backstop's snapshot carried no wallet at zero, so the tail listed none, and its summary's
    `from_snapshot` does not count them: the audit compares accounts.json with those aside, and says so."""
    journal = EXAMPLES / "07-adl-lab.jsonl"
    whole, tail = tmp_path / "whole", tmp_path / "tail"
    assert main(["replay", str(journal), "--out", str(whole), "--snapshot-every", "2"]) == 0
    assert main(["replay", str(journal), "--out", str(tail), "--from-snapshot",
                 str(whole / "snapshots" / "snapshot-000000000012.json")]) == 0
    summary = orjson.loads((tail / "summary.json").read_bytes())
    assert summary["from_snapshot"].pop("wallets_at_zero") > 0
    (tail / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    accounts = orjson.loads((tail / "accounts.json").read_bytes())
    older = {name: account if "wallets" not in account  # a fund
             else {**account, "wallets": {a: v for a, v in account["wallets"].items() if v != "0"}}
             for name, account in accounts.items() if "wallets" not in account or account.get("positions")
             or any(v != "0" for v in account["wallets"].values())}
    assert older != accounts
    (tail / "accounts.json").write_bytes(orjson.dumps(older, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    capsys.readouterr()
    assert main(["audit", "verify", str(tail), "--journal", str(journal)]) == 0
    assert "(wallets at zero aside: the snapshot these outputs resumed from did not carry them)" in \
        capsys.readouterr().out


def test_outputs_of_a_backstop_before_raw_base64_and_inventory_upnl_verify(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Older outputs have no `raw_base64` in their dead letters and no `inventory_upnl` per fund: the audit compares
    without them; a field missing otherwise is named."""
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b'{"type":"mark","symbol":"X","ts":1,"mark_price":"1\xff"}\n' + (EXAMPLES / "07-adl-lab.jsonl")
                        .read_bytes())
    out = tmp_path / "out"
    assert main(["replay", str(journal), "--out", str(out)]) == 0
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert all(fund.pop("inventory_upnl") for fund in summary["funds"].values())
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    letters = [orjson.loads(line) for line in (out / "dead-letter.jsonl").read_bytes().splitlines()]
    assert all(letter.pop("raw_base64") for letter in letters)
    (out / "dead-letter.jsonl").write_bytes(b"".join(orjson.dumps(letter, option=orjson.OPT_SORT_KEYS) + b"\n"
                                                     for letter in letters))
    capsys.readouterr()
    assert main(["audit", "verify", str(out), "--journal", str(journal)]) == 0, capsys.readouterr().out
    (out / "dead-letter.jsonl").write_bytes(b"".join(orjson.dumps({k: v for k, v in letter.items() if k != "kind"},
                                                                  option=orjson.OPT_SORT_KEYS) + b"\n"
                                                     for letter in letters))
    assert main(["audit", "verify", str(out), "--journal", str(journal)]) == 1
    assert 'kind: stored no such field, replay gives "invalid"' in capsys.readouterr().out


def test_a_dead_letter_reason_an_older_backstop_left_on_several_lines_verifies_another_does_not(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before dead letters escaped their reasons to one line, a field name holding a line end was written as it
    came: the audit takes such a reason for the escaped one it gives; a reason that differs otherwise is named."""
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b'{"type":"mark","symbol":"X","ts":1,"mark_price":"1","a\\nb\\u2028":1}\n'
                        + (EXAMPLES / "07-adl-lab.jsonl").read_bytes())
    out = tmp_path / "out"
    assert main(["replay", str(journal), "--out", str(out)]) == 0
    (letter,) = [orjson.loads(line) for line in (out / "dead-letter.jsonl").read_bytes().splitlines()]
    assert "a\\x0ab\\u2028" in letter["reason"]
    for reason, code in ((letter["reason"].replace("\\x0a", "\n").replace("\\u2028", "\u2028"), 0),
                         (letter["reason"].replace("\\x0a", "\n").replace("a", "c", 1), 1)):
        (out / "dead-letter.jsonl").write_bytes(orjson.dumps({**letter, "reason": reason},
                                                             option=orjson.OPT_SORT_KEYS) + b"\n")
        capsys.readouterr()
        assert main(["audit", "verify", str(out), "--journal", str(journal)]) == code, capsys.readouterr().out


def test_a_fund_cut_from_the_summary_is_a_reconcile_mismatch(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = replayed(tmp_path, EXAMPLES / "06-bad-debt.jsonl")
    _summary_with(out, ("funds",), {})
    assert main(["reconcile", str(out)]) == 1
    assert "fund MAIN: entries or postings of it, but summary.json does not list it" in capsys.readouterr().out


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["from_snapshot"].update(postings="x"), "from_snapshot.postings"),
    (lambda s: s["from_snapshot"].update(input_line="x"), "from_snapshot.input_line"),
    (lambda s: s["from_snapshot"].update(seq=0), "from_snapshot.seq"),
    (lambda s: s.update(carried=[1, 2]), "carried"),
    (lambda s: s.update(carried={"duplicates": 0, "rejected": 0, "conflicting_duplicates": 0, "dead_letters": 0,
                                 "events_applied": 100}), "carried.events_applied"),
])
def test_a_summary_of_the_wrong_shape_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         change: Callable[[dict[str, object]], None],
                                                         message: str) -> None:
    whole, tail = tmp_path / "whole", tmp_path / "tail"
    assert main(["replay", str(ADL_EXAMPLE), "--out", str(whole), "--snapshot-every", "10"]) == 0
    assert main(["replay", str(ADL_EXAMPLE), "--out", str(tail), "--from-snapshot",
                 str(whole / "snapshots" / "snapshot-000000000010.json")]) == 0
    summary = json.loads((tail / "summary.json").read_text())
    change(summary)
    (tail / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    for journal in (None, ADL_EXAMPLE):
        assert main(["audit", "verify", str(tail), *(["--journal", str(journal)] if journal else [])]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error


@pytest.mark.parametrize(("change", "message"), [
    # the ADL figures of the rounds after the snapshot: derived again from a snapshot at the same seq
    (lambda s: s["adl"].update(haircut="123456"),
     'summary.json: adl.haircut "123456" but the replay of the journal gives "0"'),
    # a start the journal does not have there
    (lambda s: s["from_snapshot"].update(seq=9), "summary.json: from_snapshot"),
    (lambda s: s["from_snapshot"].update(input_line=99),
     "from_snapshot: input_line 99, but the journal has fewer lines"),
])
def test_a_replay_from_a_snapshot_is_held_to_a_replay_from_the_same_snapshot(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Callable[[dict[str, object]], None],
        message: str) -> None:
    whole, tail = tmp_path / "whole", tmp_path / "tail"
    assert main(["replay", str(ADL_EXAMPLE), "--out", str(whole), "--snapshot-every", "10"]) == 0
    assert main(["replay", str(ADL_EXAMPLE), "--out", str(tail), "--from-snapshot",
                 str(whole / "snapshots" / "snapshot-000000000010.json")]) == 0
    code, text = verify(tail, ADL_EXAMPLE, capsys)
    assert code == 0 and "(from a snapshot of it at seq 10, as these outputs were made)" in text, text
    summary = json.loads((tail / "summary.json").read_text())
    change(summary)
    (tail / "summary.json").write_text(json.dumps(summary))
    code, text = verify(tail, ADL_EXAMPLE, capsys)
    assert code == 1 and message in text, text


@pytest.mark.parametrize(("cut", "every", "options"), [
    (False, "10", ["--adl-quantiles"]),  # the snapshot taken with quantile points, resumed with them
    (True, "19", []),  # the snapshot on the journal's last line, which ends the file without a line break
])
def test_outputs_resumed_from_a_snapshot_verify_against_their_journal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: bool, every: str, options: list[str]) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(ADL_EXAMPLE.read_bytes().removesuffix(b"\n") if cut else ADL_EXAMPLE.read_bytes())
    whole, tail = tmp_path / "whole", tmp_path / "tail"
    assert main(["replay", str(journal), "--out", str(whole), "--snapshot-every", every, *options]) == 0
    snapshot = whole / "snapshots" / f"snapshot-{int(every):012d}.json"
    assert main(["replay", str(journal), "--out", str(tail), "--from-snapshot", str(snapshot), *options]) == 0
    code, text = verify(tail, journal, capsys)
    assert code == 0 and f"(from a snapshot of it at seq {every}, as these outputs were made)" in text, text


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda out: _replace(out / "adl-rounds.jsonl", '"counterparties":1', '"counterparties":true'),
     "adl-rounds record 1 (round-14-0, seq 14): differs from the replay: counterparties: stored true, replay gives 1"),
    (lambda out: _replace(out / "findings.jsonl", '"schema_version":1', '"schema_version":1.0'),
     "findings record 1 (finding-14-0, seq 14): differs from the replay: schema_version: stored 1.0, replay gives 1"),
    (lambda out: _set(out / "summary.json", "adl", {**json.loads((out / "summary.json").read_text())["adl"],
                                                     "rounds": True}),
     "summary.json: adl.rounds true but the replay of the journal gives 1"),
    (lambda out: _set(out / "summary.json", "zz", None), "summary.json: zz null but the replay of the journal gives "
                                                         "(absent)"),
])
def test_a_value_of_another_json_type_is_another_value(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       damage: Callable[[Path], object], message: str) -> None:
    """1, 1.0 and true compare equal in Python but are three JSON values (three byte strings, three hashes): held
    to the replay of the journal, a file that says true where it wrote 1 fails, as does a key the replay has not."""
    out, journal = tmp_path / "out", EXAMPLES / "06-bad-debt.jsonl"  # a finding, a round
    assert main(["replay", str(journal), "--out", str(out)]) == 0
    damage(out)
    capsys.readouterr()
    assert main(["audit", "verify", str(out), "--journal", str(journal)]) == 1
    assert message in capsys.readouterr().out


def test_accounts_json_formatted_otherwise_verifies_and_says_so(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(ADL_EXAMPLE), "--out", str(out)]) == 0
    (out / "accounts.json").write_bytes(orjson.dumps(orjson.loads((out / "accounts.json").read_bytes())))
    capsys.readouterr()
    assert main(["audit", "verify", str(out), "--journal", str(ADL_EXAMPLE)]) == 0
    assert "accounts.json: as the replay of the journal writes it (the same JSON, formatted otherwise)" in \
        capsys.readouterr().out


@pytest.mark.parametrize("name", ["findings.jsonl", "accounts.json", "summary.json"])
def test_an_output_that_is_not_a_regular_file_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                name: str) -> None:
    """A pipe would hang a reader waiting for its writer, a device (/dev/zero) would fill its memory: both are
    refused in one line, exit 2, with the journal or without."""
    import os

    out = tmp_path / "out"
    assert main(["replay", str(ADL_EXAMPLE), "--out", str(out)]) == 0
    (out / name).unlink()
    os.mkfifo(out / name)
    for journal in ([], ["--journal", str(ADL_EXAMPLE)]):
        capsys.readouterr()
        assert main(["audit", "verify", str(out), *journal]) == 2
        assert f"cannot read {out / name}: not a regular file" in capsys.readouterr().err
    (out / name).unlink()
    (out / name).symlink_to("/dev/zero")
    assert main(["audit", "verify", str(out)]) == 2
    assert f"cannot read {out / name}: not a regular file" in capsys.readouterr().err
    if name == "summary.json":
        assert main(["reconcile", str(out)]) == 2
        assert f"cannot read {out / name}: not a regular file" in capsys.readouterr().err


def test_accounts_json_with_a_repeated_key_is_refused_with_the_journal_too(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A forged account put before the real one: a reader keeping the last value would see the replay's JSON; the
    file is refused as without the journal (exit 2), never compared as if it were that JSON."""
    out = replayed(tmp_path, ADL_EXAMPLE)
    text = (out / "accounts.json").read_text()
    first = next(iter(json.loads(text)))
    (out / "accounts.json").write_text(text.replace("{", f'{{"{first}": {{"wallet": "999999"}},', 1))
    for journal in ([], ["--journal", str(ADL_EXAMPLE)]):
        capsys.readouterr()
        assert main(["audit", "verify", str(out), *journal]) == 2
        assert f'accounts.json: key "{first}" repeats in an object' in capsys.readouterr().err


def test_a_posting_of_an_entry_the_fund_ledger_lacks_is_named_by_its_place(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = replayed(tmp_path, EXAMPLES / "06-bad-debt.jsonl")

    def point_elsewhere(records: list[dict[str, object]]) -> list[dict[str, object]]:
        assert records[12]["id"] == "p-14-3" and records[12]["fund_entry_id"] is None
        records[12]["fund_entry_id"] = "fl-99-0"
        return rechain(records)

    rewrite(out / "postings.jsonl", point_elsewhere)
    summary = json.loads((out / "summary.json").read_text())
    summary["postings_head_hash"] = json.loads((out / "postings.jsonl").read_text().splitlines()[-1])["hash"]
    (out / "summary.json").write_text(json.dumps(summary))
    code, text = verify(out, None, capsys)
    assert code == 1
    assert "FAIL  postings record 13 (p-14-3, seq 14): shows fund entry fl-99-0, which the fund ledger does not " \
           "hold" in text, text
