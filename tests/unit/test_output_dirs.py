"""Outputs are atomic: every command with --out writes beside the target and renames into place, so a failed run
leaves the old directory as it was and a finished one leaves nothing of an older run; an input inside --out, or a
directory holding what the command does not write, is refused before anything is touched."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import backstop.wire.decode
from backstop.adapters.files import OutputError, staged_dir, write_file_atomically
from backstop.entrypoints.cli import main
from backstop.wire.decode import decode_record

EXAMPLES = Path(__file__).parents[2] / "examples"
EXAMPLE = EXAMPLES / "05-funding-and-fund-inventory.jsonl"
OTHER = EXAMPLES / "02-adl-walks-queue.jsonl"


def contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_failed_replay_leaves_the_old_output_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLE), "--out", str(out)]) == 0
    before = contents(out)
    calls = 0

    def failing(raw: bytes) -> object:  # a crash half-way, after effects were written
        nonlocal calls
        calls += 1
        if calls == 10:
            raise RuntimeError("crash")
        return decode_record(raw)

    monkeypatch.setattr(backstop.wire.decode, "decode_record", failing)  # the reference engine decodes
    with pytest.raises(RuntimeError, match="crash"):
        main(["replay", str(OTHER), "--out", str(out), "--engine", "reference"])
    assert contents(out) == before
    assert leftovers(tmp_path) == []


def test_strict_stopping_at_a_bad_line_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLE), "--out", str(out)]) == 0
    before = contents(out)
    journal = tmp_path / "bad.jsonl"
    journal.write_bytes(OTHER.read_bytes() + b"{not json\n")
    assert main(["replay", str(journal), "--out", str(out), "--strict"]) == 1
    assert contents(out) == before and leftovers(tmp_path) == []


def test_a_finished_replay_replaces_the_whole_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLE), "--out", str(out), "--snapshot-every", "4"]) == 0
    assert (out / "snapshots").is_dir()
    assert main(["replay", str(OTHER), "--out", str(out)]) == 0
    assert not (out / "snapshots").exists()  # no snapshot of another journal left beside this one's summary
    assert sorted(contents(out)) == ["accounts.json", "adl-events.jsonl", "adl-quantiles.jsonl", "adl-rounds.jsonl",
                                     "dead-letter.jsonl", "findings.jsonl", "fund-ledger.jsonl", "postings.jsonl",
                                     "summary.json"]
    assert json.loads((out / "summary.json").read_text())["adl_events"] == 2
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("command", [
    ["replay", "{out}/findings.jsonl", "--out", "{out}"],
    ["replay", str(EXAMPLE), "--out", "{out}", "--from-snapshot", "{out}/snapshots/snapshot-000000000004.json"],
    ["replay", "{out}/findings.jsonl", "--out", "{out}/.."],
    ["whatif", "{out}/findings.jsonl", "--out", "{out}"],
], ids=["journal", "snapshot", "parent", "whatif"])
def test_an_input_inside_out_is_refused_before_anything_is_touched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLE), "--out", str(out), "--snapshot-every", "4"]) == 0
    (out / "findings.jsonl").write_bytes(EXAMPLE.read_bytes())  # a journal kept where it does not belong
    before = contents(out)
    capsys.readouterr()
    assert main([part.format(out=out) for part in command]) == 2
    assert "is inside the output directory" in capsys.readouterr().err
    assert contents(out) == before


def test_whatif_params_inside_out_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w"
    assert main(["whatif", str(OTHER), "--out", str(out)]) == 0
    params = out / "alt.toml"
    params.write_text('[alternative.adl]\nrule = "pro_rata"\n')
    assert main(["whatif", str(OTHER), "--params", str(params), "--out", str(out)]) == 2
    assert "the input" in capsys.readouterr().err and params.exists()


def test_a_directory_holding_other_files_is_never_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    for command in (["replay", str(EXAMPLE)], ["whatif", str(EXAMPLE)], ["demo", "--accounts", "20"]):
        assert main([*command, "--out", str(home)]) == 2
        assert "holds files this command does not write (notes.txt)" in capsys.readouterr().err
    assert [p.name for p in home.iterdir()] == ["notes.txt"]


def test_whatif_and_demo_outputs_are_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "w"
    assert main(["whatif", str(OTHER), "--out", str(out), "--report"]) == 0
    assert (out / "report.html").exists()
    assert main(["whatif", str(OTHER), "--out", str(out)]) == 0
    assert not (out / "report.html").exists() and not list(out.glob("report-*.png"))
    demo = tmp_path / "demo"
    assert main(["demo", "--accounts", "20", "--out", str(demo)]) == 0
    assert main(["demo", "--accounts", "20", "--out", str(demo), "--no-report"]) == 0
    assert not (demo / "report.html").exists() and (demo / "input.jsonl").exists()
    assert leftovers(tmp_path) == []


def test_staged_dir_removes_its_work_when_the_block_fails(tmp_path: Path) -> None:
    target = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt), staged_dir(target, owned=["a"]) as staging:
        (staging / "a").write_text("half")
        raise KeyboardInterrupt
    assert not target.exists() and leftovers(tmp_path) == []
    with staged_dir(target, owned=["a"]) as staging:
        (staging / "a").write_text("whole")
    assert (target / "a").read_text() == "whole"


def test_a_file_output_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "s.csv"
    target.write_text("old")

    def fails(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file_atomically(target, fails)
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    with pytest.raises(OutputError, match="is one of the inputs"):
        write_file_atomically(target, lambda path: path.write_text("new"), inputs=[tmp_path / "." / "s.csv"])
    write_file_atomically(target, lambda path: path.write_text("new"))
    assert target.read_text() == "new"


def test_a_file_output_to_a_pipe_is_written_through_it_not_renamed_over_it(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(pipe.read_bytes()), daemon=True)
    reader.start()
    write_file_atomically(pipe, lambda path: path.write_bytes(b"statement"))
    reader.join(timeout=10)
    assert read == [b"statement"] and stat.S_ISFIFO(pipe.stat().st_mode) and leftovers(tmp_path) == []


def test_a_statement_to_dev_stdout_goes_down_the_pipe_and_its_summary_to_stderr(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLE), "--out", str(out)]) == 0
    done = subprocess.run([sys.executable, "-m", "backstop.entrypoints.cli", "statement", str(out), "--fund", "MAIN",
                           "--out", "/dev/stdout"], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"id,seq,ts,fund_id") and b"opening" not in done.stdout
    assert done.stderr.startswith(b"fund MAIN: opening ") and done.stderr.endswith(b"-> /dev/stdout\n")


@pytest.mark.parametrize("name", ["fund-ledger.jsonl", "postings.jsonl", "statement.csv"])
def test_a_statement_into_the_directory_it_states_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             name: str) -> None:
    """Into its own input, or any other file of the replay output directory (the general ledger, or a new file a
    later `replay --out` there would refuse as foreign): refused, nothing written."""
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLE), "--out", str(out)]) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert main(["statement", str(out), "--fund", "MAIN", "--out", str(out / name)]) == 2
    assert f"{out / name} lies inside the replay output directory {out}" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before


def test_a_file_in_the_way_of_an_output_path_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.log").write_text("")
    journal = Path(__file__).parents[2] / "examples" / "05-funding-and-fund-inventory.jsonl"
    assert main(["replay", str(journal), "--out", str(tmp_path / "notes.log" / "out")]) == 2
    assert f"{tmp_path / 'notes.log'} is a file, not a directory" in capsys.readouterr().err
    assert main(["replay", str(journal), "--out", str(tmp_path / "out")]) == 0
    target = tmp_path / "notes.log" / "s.csv"
    assert main(["statement", str(tmp_path / "out"), "--fund", "MAIN", "--out", str(target)]) == 2
    assert f"{tmp_path / 'notes.log'} is a file, not a directory" in capsys.readouterr().err


def test_a_failed_run_leaves_no_directory_it_made_on_the_way(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"bad"\n')
    target = tmp_path / "new" / "deeper" / "out"
    assert main(["replay", str(tmp_path / "bad.jsonl"), "--strict", "--out", str(target)]) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.jsonl"]
