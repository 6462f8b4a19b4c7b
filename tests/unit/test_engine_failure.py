"""A compiled engine that panics on a record (a bug, made deterministic by the fault hook of backstop.faults) stops a
command with one line naming the record's journal line, exit 2, no output directory and nothing from Rust's panic
report on stderr; the bindings name the record and refuse every later call. (The service: tests/integration/
test_admission.py and tests/differential/test_service_engines.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from backstop import faults
from backstop.entrypoints.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "02-adl-walks-queue.jsonl"
FILL_ID, LINE = "f-A1", 11  # the fill on line 11 of the example
NAMED = f"the compiled engine failed on the record at line {LINE} of "


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENGINE_PANIC_ENV, FILL_ID)


def one_line_error(capfd: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Exit 2 and exactly one line on stderr, read from the file descriptor: a panic report Rust wrote would show."""
    code = main(argv)
    err = capfd.readouterr().err
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "panicked" not in err, err
    return lines[0]


@pytest.mark.usefixtures("failing")
def test_replay_names_the_line_and_leaves_no_output(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    line = one_line_error(capfd, ["replay", str(EXAMPLE), "--out", str(out), "--engine", "compiled"])
    assert line.startswith(f"backstop replay: {NAMED}{EXAMPLE} (a bug in the engine, not in the input): fault hook: "
                           f"panic after applying record {FILL_ID}"), line
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("failing")
def test_replay_with_the_engine_writing_its_files_and_snapshots(tmp_path: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    line = one_line_error(capfd, ["replay", str(EXAMPLE), "--out", str(out), "--snapshot-every", "3"])
    assert NAMED in line, line
    assert not out.exists()


@pytest.mark.usefixtures("failing")
def test_audit_verify_names_the_line(capfd: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capfd, ["audit", "verify", "--journal", str(EXAMPLE), "--engine", "compiled"])
    assert line.startswith(f"backstop audit verify: {NAMED}{EXAMPLE} "), line


@pytest.mark.usefixtures("failing")
def test_whatif_names_the_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capfd, ["whatif", str(EXAMPLE), "--out", str(tmp_path / "w"), "--engine", "compiled"])
    assert line.startswith("backstop whatif: ") and f"line {LINE} " in line and FILL_ID in line, line


def test_without_the_hook_the_example_replays(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "out"), "--engine", "compiled"]) == 0


def test_the_bindings_name_the_record_and_refuse_every_later_call() -> None:
    from backstop import _engine

    ledger = _engine.Ledger(strict=False, snapshot_every=0, snapshot=None, ids=None)
    ledger._panic_on(FILL_ID)
    with pytest.raises(_engine.RecordPanic) as raised:
        ledger.apply_lines(EXAMPLE.read_bytes(), 1, b"")
    assert raised.value.args == (LINE, f"fault hook: panic after applying record {FILL_ID}")
    assert isinstance(raised.value, _engine.InvariantViolation)
    with pytest.raises(_engine.InvariantViolation, match="the engine stopped earlier: fault hook"):
        ledger.apply_lines(b"", 1, b"")
    with pytest.raises(_engine.InvariantViolation, match="the engine stopped earlier"):
        ledger.summary_json()
