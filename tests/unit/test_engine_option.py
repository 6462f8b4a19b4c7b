"""`--engine reference|compiled` on whatif, demo and audit verify (replay's is tested with replay): either engine
gives the same files; without it the compiled engine runs, and the reference when the compiled one is not built
here, saying so in one line; asked for by name when it is not built, the command refuses in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from backstop import engines
from backstop.entrypoints.cli import main
from differential.alike import outputs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JOURNAL = EXAMPLES / "02-adl-walks-queue.jsonl"
PARAMS = EXAMPLES / "whatif-simulated-pro-rata.toml"


def commands(out: Path) -> dict[str, list[str]]:
    return {
        "whatif": ["whatif", str(JOURNAL), "--params", str(PARAMS), "--out", str(out)],
        "demo": ["demo", "--out", str(out), "--accounts", "60", "--no-report", "--policies", "queue,pro_rata"],
        "audit": ["audit", "verify", str(out.parent / "replayed"), "--journal", str(JOURNAL)],
    }


@pytest.fixture
def replayed(tmp_path: Path) -> Path:
    assert main(["replay", str(JOURNAL), "--out", str(tmp_path / "replayed"), "--engine", "reference"]) == 0
    return tmp_path / "replayed"


@pytest.mark.parametrize("command", ["whatif", "demo", "audit"])
def test_either_engine_writes_the_same(command: str, replayed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    printed = {}
    for engine in engines.ENGINES:
        out = replayed.parent / engine
        assert main([*commands(out)[command], "--engine", engine]) == 0
        printed[engine] = capsys.readouterr().out.replace(str(out), "OUT")
        if command != "audit":
            assert outputs(out)
    if command != "audit":
        assert outputs(replayed.parent / "reference") == outputs(replayed.parent / "compiled")
    # audit says how it checked conservation (each event, or each batch of lines); the rest alike
    assert [line for line in printed["reference"].splitlines() if "conservation" not in line] == [
        line for line in printed["compiled"].splitlines() if "conservation" not in line]


@pytest.mark.parametrize("command", ["whatif", "demo", "audit"])
def test_without_the_compiled_engine_the_reference_runs_saying_so(command: str, replayed: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    missing = "the compiled engine (backstop._engine) is not built: run ./backstop"
    monkeypatch.setattr(engines, "compiled_available", lambda: missing)
    monkeypatch.delenv("BACKSTOP_ENGINE_FALLBACK_SAID", raising=False)
    assert main(commands(replayed.parent / "fallback")[command]) == 0
    assert capsys.readouterr().err.splitlines()[0] == f"backstop: {missing}; using the reference engine"
    assert main([*commands(replayed.parent / "asked")[command], "--engine", "compiled"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and missing in error


def test_an_engine_that_stops_is_said_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from backstop.core.errors import InvariantViolation

    def broken(*_: object, **__: object) -> None:
        raise InvariantViolation("ledger does not balance")

    monkeypatch.setattr(engines.ReferenceEngine, "apply_lines", broken)
    assert main([*commands(tmp_path / "w")["whatif"], "--engine", "reference"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "stopped in the reference engine" in error and "does not balance" in error
