"""`backstop replay` as a user runs it: exit codes, dead letters, strict mode, snapshots (the output contract:
test_replay_contract)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backstop.core.hashing import canonical_json
from backstop.entrypoints.cli import main

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "05-funding-and-fund-inventory.jsonl"


def test_missing_journal_exits_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "cannot read journal" in capsys.readouterr().err


def _with_bad_lines(tmp_path: Path) -> Path:
    lines = EXAMPLE.read_text().splitlines()
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({"type": "mark", "ts": json.loads(lines[4])["ts"], "symbol": "NOPE",
                                    "mark_price": "1"}))
    lines.insert(7, lines[6])  # a duplicate
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(lines) + "\n")
    return journal


@pytest.mark.parametrize("engine", ["reference", "compiled"])
def test_a_dead_letter_keeps_a_line_that_is_not_utf8_exactly(tmp_path: Path, engine: str) -> None:
    """`raw` is for reading (U+FFFD for a byte that is not UTF-8); `raw_base64` holds the very bytes, so the line
    can be put back; a line that is UTF-8 has none."""
    bad = b'{"type":"mark","symbol":"BTCUSDT","ts":1,"mark_price":"1\xff"}'
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(EXAMPLE.read_bytes() + bad + b"\n{not json\n")
    assert main(["replay", str(journal), "--out", str(tmp_path / "out"), "--engine", engine]) == 0
    dead = [json.loads(line) for line in (tmp_path / "out" / "dead-letter.jsonl").read_text().splitlines()]
    assert [d["raw"] for d in dead] == [bad.decode(errors="replace"), "{not json"]
    assert [d["raw_base64"] and base64.b64decode(d["raw_base64"]) for d in dead] == [bad, None]
    assert [d["raw_truncated"] for d in dead] == [False, False]


def test_bad_lines_go_to_dead_letter_and_the_replay_goes_on(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    assert main(["replay", str(EXAMPLE), "--out", str(clean)]) == 0
    dirty = tmp_path / "dirty"
    assert main(["replay", str(_with_bad_lines(tmp_path)), "--out", str(dirty)]) == 0
    dead = [json.loads(line) for line in (dirty / "dead-letter.jsonl").read_text().splitlines()]
    assert [(d["line"], d["raw"]) for d in dead] == [(4, "{not json"), (6, dead[1]["raw"])]
    assert dead[0]["reason"] == "invalid JSON" and dead[1]["reason"] == "unknown symbol NOPE"
    summary = json.loads((dirty / "summary.json").read_text())
    assert (summary["rejected"], summary["duplicates"]) == (2, 1)
    expected = json.loads((clean / "summary.json").read_text())
    assert (summary["head_hash"], summary["state_hash"]) == (expected["head_hash"], expected["state_hash"])


def test_strict_stops_at_the_first_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(_with_bad_lines(tmp_path)), "--out", str(tmp_path / "o"), "--strict"]) == 1
    assert "line 4" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["reference", "compiled"])
def test_a_strict_stop_says_its_reason_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   engine: str) -> None:
    journal = tmp_path / "j.jsonl"
    journal.write_bytes(b'{"type":"mark","symbol":"X","ts":1,"mark_price":"1","a\\nb\\u2028":1}\n')
    capsys.readouterr()
    assert main(["replay", str(journal), "--out", str(tmp_path / "o"), "--strict", "--engine", engine]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "line 1: mark.a\\x0ab\\u2028: " in err, err


def test_snapshot_plus_tail_equals_the_whole_replay(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    assert main(["replay", str(EXAMPLE), "--out", str(whole), "--snapshot-every", "4"]) == 0
    snapshots = sorted((whole / "snapshots").glob("snapshot-*.json"))
    assert [p.name for p in snapshots] == [f"snapshot-{n:012d}.json" for n in (4, 8, 12)]
    expected = json.loads((whole / "summary.json").read_text())
    for snapshot in snapshots:
        resumed = tmp_path / snapshot.stem
        assert main(["replay", str(EXAMPLE), "--out", str(resumed), "--from-snapshot", str(snapshot)]) == 0
        summary = json.loads((resumed / "summary.json").read_text())
        for key in ("head_hash", "state_hash", "events_applied", "funds", "fund_ledger_entries"):
            assert summary[key] == expected[key], (snapshot.name, key)
        assert (resumed / "accounts.json").read_text() == (whole / "accounts.json").read_text()


def test_a_tampered_snapshot_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "w"), "--snapshot-every", "10"]) == 0
    snapshot = next((tmp_path / "w" / "snapshots").glob("*.json"))
    document = json.loads(snapshot.read_text())
    document["engine"]["balances"]["fund:MAIN"] = "999999"
    snapshot.write_text(json.dumps(document))
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "r"), "--from-snapshot", str(snapshot)]) == 2
    assert "corrupt" in capsys.readouterr().err


def _seal(document: dict[str, object]) -> dict[str, object]:
    """What a forger would do: recompute the snapshot hash over the changed document."""
    body = {k: v for k, v in document.items() if k != "snapshot_hash"}
    return {**body, "snapshot_hash": hashlib.sha256(canonical_json(body)).hexdigest()}


def _a_wallet_with_a_balance(document: dict[str, Any]) -> list[str]:
    name = next(name for name in document["engine"]["balances"] if name.startswith("wallet:"))
    return [name[len("wallet:"):name.rindex(":")], name[name.rindex(":") + 1:]]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: {**d, "counters": {**d["counters"], "rejected": -5}}, "its snapshot hash does not match"),
    (lambda d: {**d, "input_line": d["input_line"] + 1}, "its snapshot hash does not match"),
    (lambda d: _seal({**d, "counters": {**d["counters"], "rejected": -5}}), "rejected -5 is not a count"),
    (lambda d: _seal({**d, "counters": {**d["counters"], "findings": "1"}}), "findings '1' is not a count"),
    (lambda d: _seal({**d, "input_line": True}), "input_line True is not a count"),
    (lambda d: _seal({**d, "counters": {**d["counters"], "postings": 2**64 - 1}}),
     "postings 18446744073709551615 is not a count"),
    (lambda d: _seal({**d, "counters": {"rejected": 0}}), "counters must be exactly duplicates, rejected"),
    (lambda d: _seal({k: v for k, v in d.items() if k != "wallets_at_zero"}), "no wallets_at_zero (a snapshot of an"),
    (lambda d: _seal({**d, "wallets_at_zero": [["u1"]]}), "wallets_at_zero must be a list of [account, asset] pairs"),
    (lambda d: _seal({**d, "wallets_at_zero": [["u2", "USDT"], ["u1", "USDT"]]}), "wallets_at_zero must be sorted"),
    (lambda d: _seal({**d, "wallets_at_zero": [["u1", "USDT"], ["u1", "USDT"]]}), "wallets_at_zero must be sorted"),
    (lambda d: _seal({**d, "wallets_at_zero": [_a_wallet_with_a_balance(d)]}),
     "wallets_at_zero names wallet wallet:"),
    (lambda d: _seal({**d, "wallets_at_zero": [["a", "B:USDT"]]}), "wallets_at_zero names ['a', 'B:USDT'], not a"),
    (lambda d: _seal({**d, "wallets_at_zero": [["a b", "USDT"]]}), "wallets_at_zero names ['a b', 'USDT'], not a"),
    (lambda d: _seal({**d, "wallets_at_zero": [["a\n", "USDT"]]}), "wallets_at_zero names ['a\\n', 'USDT'], not a"),
    (lambda d: _seal({**d, "wallets_at_zero": [["fund:F", "USDT"]]}), "wallets_at_zero names ['fund:F', 'USDT'], not"),
    (lambda d: _seal({**d, "wallets_at_zero": [["a", "usdt"]]}), "wallets_at_zero names ['a', 'usdt'], not a"),
    (lambda d: _seal({**d, "wallets_at_zero": [["a", "ETH"]]}), "wallets_at_zero names ['a', 'ETH'], not a"),
    (lambda d: _seal({**d, "engine": {}}), "engine.snapshot_version None is not an integer"),
    (lambda d: _seal({**d, "engine": {**d["engine"], "snapshot_version": 3}}),
     "cannot restore the engine state (ValueError: unsupported snapshot version 3"),
    (lambda d: _seal({k: v for k, v in d.items() if k != "engine"}), "engine, the engine state, must be an object"),
    (lambda d: _seal({**d, "engine": []}), "engine, the engine state, must be an object"),
    (lambda d: _seal({**d, "engine": "x"}), "engine, the engine state, must be an object"),
    (lambda d: _seal({**d, "engine": {**d["engine"], "snapshot_version": "4"}}),
     "engine.snapshot_version '4' is not an integer"),
    (lambda d: _seal({**d, "engine": {**d["engine"], "snapshot_version": True}}),
     "engine.snapshot_version True is not an integer"),
    (lambda d: _seal({**d, "engine": {k: v for k, v in d["engine"].items() if k != "snapshot_version"}}),
     "engine.snapshot_version None is not an integer"),
    (lambda d: _seal({**d, "engine": {"snapshot_version": d["engine"]["snapshot_version"]}}),
     "engine.seq: Field required"),
    (lambda d: _seal({**d, "engine": {**d["engine"], "balances": {"fund:MAIN": "x"}}}),
     'engine.balances.fund:MAIN: not an exact plain decimal: "x"'),
])
def test_every_field_of_a_snapshot_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              change: Callable[[dict[str, Any]], dict[str, object]],
                                              message: str) -> None:
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "w"), "--snapshot-every", "10"]) == 0
    snapshot = next((tmp_path / "w" / "snapshots").glob("*.json"))
    snapshot.write_text(json.dumps(change(json.loads(snapshot.read_text()))))
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "r"), "--from-snapshot", str(snapshot)]) == 2
    err = capsys.readouterr().err
    assert f"snapshot {snapshot} is corrupt: {message}" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("engine", ["reference", "compiled"])
def test_a_resealed_snapshot_with_a_malformed_fund_is_refused_in_one_line(
        engine: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "w"), "--snapshot-every", "10"]) == 0
    snapshot = next((tmp_path / "w" / "snapshots").glob("*.json"))
    document = json.loads(snapshot.read_text())
    funds = [{**document["engine"]["funds"][0], "settle_asset": []}, *document["engine"]["funds"][1:]]
    snapshot.write_text(json.dumps(_seal({**document, "engine": {**document["engine"], "funds": funds}})))
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "r"), "--from-snapshot", str(snapshot),
                 "--engine", engine]) == 2
    err = capsys.readouterr().err
    assert f"snapshot {snapshot} is corrupt: " in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_the_journal_goes_to_the_engine_in_chunks_of_whole_lines(chunk_bytes: int, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from backstop.adapters.journal_file import JournalFile
    from backstop.entrypoints import replay as replay_module

    monkeypatch.setattr(replay_module, "CHUNK_BYTES", chunk_bytes)
    data = b'{"a":1}\n\n{"b":2}\r\n' + b"x" * 100 + b"\n  \n{\"last\": true}"  # a long line, no final newline
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(data)
    for skip in (0, 2):
        chunks = list(replay_module.file_chunks(JournalFile.open(journal), skip))
        assert b"".join(chunk for _, chunk in chunks) == b"".join(data.splitlines(keepends=True)[skip:])
        assert all(chunk.endswith(b"\n") for _, chunk in chunks[:-1])
        numbers = [number for number, _ in chunks]
        assert numbers == [skip + 1 + sum(chunk.count(b"\n") for _, chunk in chunks[:at]) for at in range(len(chunks))]


def test_read_ahead_yields_every_item_in_order_each_made_while_the_one_before_is_used() -> None:
    import threading

    from backstop.entrypoints.replay import read_ahead

    made_in: list[str] = []

    def items() -> Any:
        for n in range(5):
            made_in.append(threading.current_thread().name)
            yield n

    assert list(read_ahead(items())) == [0, 1, 2, 3, 4]
    assert all(name.startswith("backstop-read") for name in made_in), made_in
    assert list(read_ahead(iter(()))) == []


def test_read_ahead_raises_a_reading_error_where_its_item_would_have_been() -> None:
    from backstop.entrypoints.replay import read_ahead

    def items() -> Any:
        yield 1
        yield 2
        raise OSError("disk gone")

    got: list[int] = []
    with pytest.raises(OSError, match="disk gone"):
        for item in read_ahead(items()):
            got.append(item)
    assert got == [1, 2], "every item made before the error is used first"


def test_read_ahead_stops_reading_when_its_user_stops() -> None:
    from backstop.entrypoints.replay import read_ahead

    made: list[int] = []

    def items() -> Any:
        for n in range(1000):
            made.append(n)
            yield n

    ahead = read_ahead(items())
    assert next(ahead) == 0
    ahead.close()  # a --strict stop: the reader is joined, having read at most one item ahead
    assert made == [0, 1]


def test_a_snapshot_resumes_under_its_own_policy_and_refuses_another(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The policy travels in the snapshot: without policy options the tail runs under it; options that name
    another are refused (they were ignored)."""
    journal = ROOT / "examples" / "07-adl-lab.jsonl"
    whole = tmp_path / "whole"
    assert main(["replay", str(journal), "--out", str(whole), "--adl-policy", "pro_rata", "--snapshot-every", "5"]) == 0
    snapshot = str(whole / "snapshots" / "snapshot-000000000010.json")
    capsys.readouterr()
    for other in (["--adl-policy", "queue"], ["--adl-price", "mark"]):
        assert main(["replay", str(journal), "--out", str(tmp_path / "r"), "--from-snapshot", snapshot, *other]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"backstop replay: snapshot {snapshot} was made under the ADL policy "
                              '{"price":"bankruptcy","rule":"pro_rata"}, not {"price":'), err
        assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()
    head = json.loads((whole / "summary.json").read_text())["head_hash"]
    for same in ([], ["--adl-policy", "pro_rata"]):
        out = tmp_path / f"r{len(same)}"
        assert main(["replay", str(journal), "--out", str(out), "--from-snapshot", snapshot, *same]) == 0
        assert json.loads((out / "summary.json").read_text())["head_hash"] == head


@pytest.mark.parametrize("engine", ["reference", "compiled"])
@pytest.mark.parametrize("taken_with", [True, False])
def test_a_snapshot_resumes_with_quantile_points_as_its_run_had_them(
        engine: str, taken_with: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Quantile points change the state and adl-quantiles.jsonl: the other setting on resume is refused; the same
    gives the whole run's outputs. A snapshot of a backstop before the field says so only by its quantile records."""
    on, off = "--adl-quantiles", "--no-adl-quantiles"
    flag, other = (on, off) if taken_with else (off, on)
    whole = tmp_path / "whole"
    assert main(["replay", str(EXAMPLE), "--out", str(whole), "--snapshot-every", "10", flag, "--engine", engine]) == 0
    snapshot = whole / "snapshots" / "snapshot-000000000010.json"
    document = json.loads(snapshot.read_text())
    assert document["adl_quantile_points"] is taken_with
    assert (document["counters"]["adl_quantiles"] > 0) is taken_with
    capsys.readouterr()
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "r"), "--from-snapshot", str(snapshot), other]) == 2
    err = capsys.readouterr().err
    assert err == (f"backstop replay: snapshot {snapshot} was taken with ADL quantile points "
                   f"{'on' if taken_with else 'off'}: resume it with {flag}, as its run was\n")
    tail = tmp_path / "tail"
    assert main(["replay", str(EXAMPLE), "--out", str(tail), "--from-snapshot", str(snapshot), flag, "--engine",
                 engine]) == 0
    hashes = [{key: json.loads((out / "summary.json").read_text())[key] for key in ("state_hash", "head_hash")}
              for out in (whole, tail)]
    assert hashes[0] == hashes[1]
    older = _seal({k: v for k, v in document.items() if k != "adl_quantile_points"})
    snapshot.write_text(json.dumps(older))
    refused = main(["replay", str(EXAMPLE), "--out", str(tmp_path / "o"), "--from-snapshot", str(snapshot), other])
    assert refused == (2 if taken_with else 0), "an older snapshot with quantile records was taken with them on"
    snapshot.write_text(json.dumps(_seal({**document, "adl_quantile_points": "yes"})))
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "y"), "--from-snapshot", str(snapshot), flag]) == 2
    assert "is corrupt: adl_quantile_points must be true or false" in capsys.readouterr().err


@pytest.mark.parametrize("recorded", ["[]", '{"input_line": 10.0, "sha256": "%s"}\n',
                                      '{"input_line": 10, "sha256": "%s", "more": 1}\n',
                                      '{"input_line": 10, "input_line": 10, "sha256": "%s"}\n', "{"])
def test_a_snapshot_journal_file_not_as_written_is_refused_in_one_line(
        recorded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = tmp_path / "whole"
    assert main(["replay", str(EXAMPLE), "--out", str(whole), "--snapshot-every", "10"]) == 0
    snapshot = whole / "snapshots" / "snapshot-000000000010.json"
    sha256 = json.loads(snapshot.with_suffix(".journal").read_text())["sha256"]
    snapshot.with_suffix(".journal").write_text(recorded.replace("%s", sha256))
    capsys.readouterr()
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "r"), "--from-snapshot", str(snapshot)]) == 2
    err = capsys.readouterr().err
    assert f"{snapshot.with_suffix('.journal')} cannot be read: " in err and len(err.splitlines()) == 1, err


def test_a_snapshot_refuses_a_journal_it_was_not_taken_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """snapshot-SEQ.journal records the SHA-256 of the lines the snapshot applied; a resumed run continues it, so
    its own snapshots record the same; a journal that is shorter or differs before the snapshot is refused."""
    lines = EXAMPLE.read_bytes().splitlines(keepends=True)
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"".join(lines[:3]) + b"\n" + lines[3].replace(b"\n", b"\r\n") + b"".join(lines[4:]))
    whole, tail = tmp_path / "whole", tmp_path / "tail"
    assert main(["replay", str(journal), "--out", str(whole), "--snapshot-every", "4"]) == 0
    first = whole / "snapshots" / "snapshot-000000000004.json"
    recorded = json.loads(first.with_suffix(".journal").read_text())
    taken = journal.read_bytes().splitlines(keepends=True)[:recorded["input_line"]]
    assert recorded["sha256"] == hashlib.sha256(b"".join(taken)).hexdigest()
    assert main(["replay", str(journal), "--out", str(tail), "--snapshot-every", "4", "--from-snapshot",
                 str(first)]) == 0
    later = "snapshots/snapshot-000000000008.journal"
    assert (tail / later).read_bytes() == (whole / later).read_bytes(), "the digest goes on from the snapshot's"
    capsys.readouterr()
    for name, content in (("edited", journal.read_bytes().replace(b'"200000"', b'"1"', 1)),
                          ("short", b"".join(taken[:-1]))):
        other = tmp_path / f"{name}.jsonl"
        other.write_bytes(content)
        assert main(["replay", str(other), "--out", str(tmp_path / name), "--from-snapshot", str(first)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "it was taken on another journal" in err, err
        assert not (tmp_path / name).exists()
