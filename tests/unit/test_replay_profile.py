"""benchmarks/replay_profile.py sums a perf report into categories: each function lands in the category its name
says, the first match wins, and every sample is counted once."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import replay_profile

REPORT = """
    25.00%  [kernel.kallsyms]            [k] copy_folio_from_iter_atomic
     7.50%  _engine.abi3.so              [.] sha2::sha256::x86::digest_blocks
     5.00%  _engine.abi3.so              [.] backstop_engine::numbers::write_scaled
     4.00%  _engine.abi3.so              [.] backstop_engine::json::Parser::object
     3.00%  _engine.abi3.so              [.] backstop_engine::engine::Engine::apply
     2.00%  libc.so.6                    [.] __memmove_avx512_unaligned_erms
     1.50%  libpython3.11.so.1.0         [.] _PyEval_EvalFrameDefault
     0.25%  perf-1234.map                [.] 0x00007f00
"""


def test_each_sample_lands_in_its_category_once() -> None:
    shares = replay_profile.categorize(REPORT)
    assert shares == {
        "the kernel (writing the output files, page faults)": 25.0,
        "SHA-256 of the hash chains": 7.5,
        "output: canonical JSON and decimal text": 5.0,
        "input: JSON parsing and wire validation": 4.0,
        "the rules and the rest of the compiled engine": 3.0,
        "copying and allocating memory (libc)": 2.0,
        "Python (start-up, the batch loop, file writes)": 1.5,
        "other": 0.2,
    }


def test_lines_that_are_not_samples_are_ignored() -> None:
    assert sum(replay_profile.categorize("# comment\n\n  no percent here\n").values()) == 0


def test_samples_are_split_by_thread() -> None:
    report = """
    46.50%  python
    15.00%  backstop-decode
    30.00%  backstop-output
     8.00%  backstop-accoun
     0.50%  perf
"""
    assert replay_profile.thread_shares(report) == {
        "the engine's thread (and Python)": 47.0, "the decode thread": 15.0, "the output writer thread": 30.0,
        "the accounts.json thread": 8.0}
