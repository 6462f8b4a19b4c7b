"""CI's short run of the coverage-guided fuzzer (tests/fuzz/fuzz_engine.py): a fixed number of inputs from a fixed
seed, starting from the seed corpus, so a run is reproducible. The long mode is in the fuzzer's docstring."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RUNS = 1000  # a few seconds at the fuzzer's rate on this project's machines


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (pip install atheris: wheels for Linux x86_64)")
def test_the_fuzzer_finds_no_crash_in_its_short_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    run = subprocess.run([sys.executable, str(HERE / "fuzz_engine.py"), str(corpus), str(HERE / "seeds"),
                          f"-runs={RUNS}", "-seed=20251010", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, f"the fuzzer found a crash (input kept in {tmp_path}):\n{run.stderr[-6000:]}"
    assert f"Done {RUNS} runs" in run.stderr
