"""One journal reader for every command: records split on `\\n` only, `\\r\\n` endings taken once, a bare `\\r` part of
its record, a BOM refused by name. Every command reads the same journal the same way."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from backstop.adapters.journal_file import JournalFile, JournalFileError, journal_bytes, read_journal, records
from backstop.entrypoints.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples"
ADL_EXAMPLE = EXAMPLES / "02-adl-walks-queue.jsonl"


def test_records_split_on_line_feeds_only() -> None:
    text = b'{"a": 1}\r\n\r\n{"b":\r2}\n  \t\n{"c": "x\ry"}\r\n{"d": 4}'
    assert list(records(io.BytesIO(text))) == [(1, b'{"a": 1}'), (3, b'{"b":\r2}'), (5, b'{"c": "x\ry"}'),
                                               (6, b'{"d": 4}')]
    assert list(records(io.BytesIO(text), skip=3)) == [(5, b'{"c": "x\ry"}'), (6, b'{"d": 4}')]


def test_only_the_line_end_is_dropped() -> None:
    # one \r before the \n is the line end; another is the record's own (JSON whitespace here)
    assert list(records(io.BytesIO(b'{"a": 1}\r\r\n{"b": 2}\r'))) == [(1, b'{"a": 1}\r'), (2, b'{"b": 2}\r')]


def test_a_bom_is_refused_by_name(tmp_path: Path) -> None:
    journal = tmp_path / "bom.jsonl"
    journal.write_bytes(b"\xef\xbb\xbf" + ADL_EXAMPLE.read_bytes())
    with pytest.raises(JournalFileError, match="byte order mark"):
        JournalFile.open(journal)
    with pytest.raises(JournalFileError, match="is a directory"):
        JournalFile.open(tmp_path)
    with pytest.raises(JournalFileError, match="no such file"):
        read_journal(tmp_path / "nope.jsonl")


def test_a_pipe_is_refused_before_a_byte_is_read(tmp_path: Path) -> None:
    # a pipe gives its bytes once, and commands read a journal more than once: the first read would eat its start
    fifo = tmp_path / "journal.fifo"
    os.mkfifo(fifo)
    with pytest.raises(JournalFileError, match="not a regular file"):
        JournalFile.open(fifo)  # returns at once: opening a FIFO to read would wait for a writer


def test_the_writer_refuses_a_record_that_would_become_two_lines() -> None:
    assert journal_bytes([b"{}", b'{"a":\r1}']) == b'{}\n{"a":\r1}\n'
    with pytest.raises(ValueError, match="line break"):
        journal_bytes([b'{"a":\n1}'])


def _with_carriage_return(tmp_path: Path) -> Path:
    """The ADL example with a bare \\r between two tokens of the liquidation (still valid JSON) and CRLF endings."""
    lines = ADL_EXAMPLE.read_bytes().splitlines()
    index = next(i for i, line in enumerate(lines) if b'"liquidation"' in line)
    lines[index] = lines[index].replace(b', "account_id"', b',\r"account_id"')
    journal = tmp_path / "cr.jsonl"
    journal.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return journal


def _summary(out: Path) -> dict[str, object]:
    summary: dict[str, object] = json.loads((out / "summary.json").read_text())
    return summary


def test_every_command_reads_a_bare_carriage_return_as_part_of_its_record(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = _with_carriage_return(tmp_path)
    assert main(["replay", str(ADL_EXAMPLE), "--out", str(tmp_path / "plain")]) == 0
    assert main(["replay", str(journal), "--out", str(tmp_path / "cr")]) == 0
    plain, carried = _summary(tmp_path / "plain"), _summary(tmp_path / "cr")
    assert (carried["head_hash"], carried["adl_events"], carried["rejected"]) == (plain["head_hash"], 2, 0)
    capsys.readouterr()
    # audit re-derives the same ledger from the same records
    assert main(["audit", "verify", str(tmp_path / "cr"), "--journal", str(journal)]) == 0
    assert main(["audit", "verify", "--journal", str(journal)]) == 0
    assert f"head hash {plain['head_hash']}" in capsys.readouterr().out
    # explain finds the liquidation on that line
    assert main(["explain", "liq-S", "--journal", str(journal), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq"] == 19
    # what-if runs on the same records: its baseline is the replay
    assert main(["whatif", str(journal), "--out", str(tmp_path / "w")]) == 0
    assert _summary(tmp_path / "w" / "baseline")["head_hash"] == plain["head_hash"]


def test_a_carriage_return_inside_a_string_spoils_only_its_own_record(tmp_path: Path) -> None:
    lines = ADL_EXAMPLE.read_bytes().splitlines()
    lines[-1] = lines[-1].replace(b'"liq-S"', b'"liq-\rS"')
    journal = tmp_path / "bad.jsonl"
    journal.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["replay", str(journal), "--out", str(tmp_path / "out")]) == 0
    dead = [json.loads(x) for x in (tmp_path / "out" / "dead-letter.jsonl").read_text().splitlines()]
    assert [d["line"] for d in dead] == [len(lines)] and dead[0]["reason"] == "invalid JSON"
    assert _summary(tmp_path / "out")["events_applied"] == len(lines) - 1


@pytest.mark.parametrize("command", [
    ["replay", "{journal}", "--out", "{tmp}/out"],
    ["audit", "verify", "--journal", "{journal}"],
    ["audit", "verify", "{tmp}/replayed", "--journal", "{journal}"],
    ["explain", "liq-S", "--journal", "{journal}"],
    ["whatif", "{journal}", "--out", "{tmp}/out"],
    ["produce", "{journal}"],  # refused before Kafka is contacted
], ids=lambda c: " ".join(c[:2]))
def test_a_bom_is_named_by_every_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         command: list[str]) -> None:
    journal = tmp_path / "bom.jsonl"
    journal.write_bytes(b"\xef\xbb\xbf" + ADL_EXAMPLE.read_bytes())
    assert main(["replay", str(ADL_EXAMPLE), "--out", str(tmp_path / "replayed")]) == 0
    capsys.readouterr()
    assert main([part.format(journal=journal, tmp=tmp_path) for part in command]) == 2
    err = capsys.readouterr().err
    assert "BOM" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
