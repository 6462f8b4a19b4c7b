"""The same journal gives the same bytes in another process with another hash seed: nothing the ledger writes may
depend on the order of a set or a dict built from hashed keys, nor on the process that ran it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backstop.entrypoints.cli import main

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from journal_gen import generate  # noqa: E402

CLI = "import sys; from backstop.entrypoints.cli import main; sys.exit(main(sys.argv[1:]))"


def _outputs(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}


def _replay_elsewhere(journal: Path, out: Path, engine: str, hash_seed: str) -> None:
    environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run([sys.executable, "-c", CLI, "replay", str(journal), "--engine", engine, "--out", str(out)],
                          env=environment, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("engine", ["reference", "compiled"])
def test_a_replay_in_fresh_processes_with_other_hash_seeds_writes_the_same_bytes(tmp_path: Path, engine: str) -> None:
    journal = tmp_path / "journal.jsonl"
    generate(journal, events=3000, seed=11)
    examples = sorted((REPO / "examples").glob("*.jsonl"))
    for source in [journal, *examples]:
        here = tmp_path / f"{source.stem}-here"
        assert main(["replay", str(source), "--engine", engine, "--out", str(here)]) == 0
        expected = _outputs(here)
        assert "summary.json" in expected and "fund-ledger.jsonl" in expected
        for seed in ("1", "4242"):
            there = tmp_path / f"{source.stem}-{seed}"
            _replay_elsewhere(source, there, engine, seed)
            assert _outputs(there) == expected, f"{source.name}: process with PYTHONHASHSEED={seed} differs"
