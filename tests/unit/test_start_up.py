"""`backstop replay` on the compiled engine starts without the modules only the reference engine uses (its rules,
pydantic's wire models, numpy, rich when no progress bar is shown): their import was most of a replay's start-up
(docs/engines.md, "Performance"). The reference engine and the progress bar still load them where they run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backstop.engines import ENGINES, EngineName, compiled_available
from backstop.entrypoints.replay import ReplayOptions, replay

ROOT = Path(__file__).parents[2]
JOURNAL = ROOT / "examples" / "02-adl-walks-queue.jsonl"
# modules a compiled replay must not import, and one it must (so that the check sees the replay's own imports)
UNUSED = ("numpy", "pydantic", "backstop.core.engine", "backstop.core.processor", "backstop.wire.decode", "rich",
          "asyncio")
REPLAYED = (
    "import sys\n"
    "from backstop.entrypoints.cli import main\n"
    "assert main(sys.argv[1:]) == 0\n"
    "print(' '.join(sorted(sys.modules)))\n"
)


def imported_by(*argv: str) -> set[str]:
    run = subprocess.run([sys.executable, "-c", REPLAYED, *argv], capture_output=True, text=True, check=True)
    return set(run.stdout.strip().splitlines()[-1].split())


@pytest.mark.skipif(compiled_available() is not None, reason="the compiled engine is not built here")
def test_a_compiled_replay_imports_none_of_the_reference_engine(tmp_path: Path) -> None:
    modules = imported_by("replay", str(JOURNAL), "--out", str(tmp_path / "out"), "--engine", "compiled")
    assert "backstop._engine" in modules
    assert (tmp_path / "out" / "summary.json").exists()
    assert [name for name in UNUSED if name in modules] == []


def test_a_reference_replay_still_loads_what_it_uses(tmp_path: Path) -> None:
    modules = imported_by("replay", str(JOURNAL), "--out", str(tmp_path / "out"), "--engine", "reference")
    assert {"backstop.core.engine", "backstop.wire.decode", "pydantic"} <= modules


@pytest.mark.parametrize("engine", ENGINES)
def test_the_progress_bar_changes_no_output(engine: EngineName, tmp_path: Path) -> None:
    if engine == "compiled" and compiled_available() is not None:
        pytest.skip("the compiled engine is not built here")
    written = {}
    for progress in (False, True):
        out = tmp_path / f"{engine}-{progress}"
        result = replay(ReplayOptions(journal=JOURNAL, out=out, progress=progress, engine=engine))
        written[progress] = (result["head_hash"], {path.name: path.read_bytes() for path in out.iterdir()})
    assert written[True] == written[False]
