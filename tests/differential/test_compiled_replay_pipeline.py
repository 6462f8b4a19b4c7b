"""The compiled replay's pipeline (docs/engines.md, "The replay's pipeline"): the engine writes its output files from a
thread of its own while it applies the next chunk. However the journal is cut into chunks (one line each, a few bytes
over a line, a line split across reads, the default size), every output file is byte for byte the reference's, with
snapshots due inside a chunk; a write that fails mid-replay leaves no output directory and says so in one line; and a
strict replay stops at a bad line deep inside a chunk that the decode stage reads ahead of the rules, with the
reference's one-line error and no output.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backstop.entrypoints import replay as replay_module
from differential.alike import assert_same, outputs, run

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark generator's journal (liquidations, ADL, duplicates): a few hundred KiB of outputs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from journal_gen import generate

    path = tmp_path_factory.mktemp("journal") / "journal.jsonl"
    assert generate(path, events=3000, seed=5) == 3000
    return path


@pytest.fixture(scope="module")
def oracle(journal: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return run(journal, tmp_path_factory.mktemp("reference") / "out", "reference", snapshot_every=701)


@settings(max_examples=12)
@given(chunk_bytes=st.one_of(st.sampled_from([1, 2, 150, 1 << 20]), st.integers(1, 1 << 16)))
def test_chunks_cut_anywhere_give_the_reference_bytes(journal: Path, oracle: dict[str, bytes], chunk_bytes: int,
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("compiled") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replay_module, "CHUNK_BYTES", chunk_bytes)
        compiled = run(journal, out, "compiled", snapshot_every=701)
    assert_same(oracle, compiled)
    assert len(oracle["postings.jsonl"]) > 100_000 and any(name.startswith("snapshots/") for name in oracle)


def _limit_file_size(limit: int) -> None:
    """In the child: a write beyond `limit` bytes fails (EFBIG) instead of killing the process (SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("engine", ["compiled", "reference"])
def test_a_write_error_mid_replay_leaves_no_output_and_says_one_line(journal: Path, oracle: dict[str, bytes],
                                                                      engine: str, tmp_path: Path) -> None:
    limit = len(oracle["postings.jsonl"]) // 3  # postings.jsonl outgrows it mid-replay
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "backstop.entrypoints.cli", "replay", str(journal), "--out",
                           str(out), "--engine", engine], capture_output=True, text=True,
                          preexec_fn=lambda: _limit_file_size(limit), check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot write {out}" in done.stderr and "File too large" in done.stderr, done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [], "a partial output was left behind"


def test_a_write_error_keeps_the_earlier_output(journal: Path, oracle: dict[str, bytes], tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = run(journal, out, "compiled")
    done = subprocess.run([sys.executable, "-m", "backstop.entrypoints.cli", "replay", str(journal), "--out",
                           str(out), "--engine", "compiled"], capture_output=True, text=True,
                          preexec_fn=lambda: _limit_file_size(len(oracle["postings.jsonl"]) // 3), check=False)
    assert done.returncode == 2 and "cannot write" in done.stderr, done.stderr
    assert outputs(out) == before


@pytest.mark.parametrize("bad_line", [1, 1700, 3000])
def test_a_strict_stop_inside_a_chunk_decoded_ahead_is_the_references_one_line(journal: Path, tmp_path: Path,
                                                                              bad_line: int) -> None:
    lines = journal.read_bytes().splitlines(keepends=True)
    lines.insert(bad_line - 1, b'{"type":"fill","ts":1760140800000,"qty":"1"}\n')
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"".join(lines))
    assert broken.stat().st_size > 64 << 10, "one chunk the decode stage reads ahead"
    said = {}
    for engine in ("reference", "compiled"):
        out = tmp_path / engine / "out"
        out.parent.mkdir()
        done = subprocess.run([sys.executable, "-m", "backstop.entrypoints.cli", "replay", str(broken), "--out",
                               str(out), "--strict", "--engine", engine], capture_output=True, text=True, check=False)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert f"line {bad_line}: " in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert list(out.parent.iterdir()) == [], "a partial output was left behind"
        said[engine] = done.stderr
    assert said["compiled"] == said["reference"]


def test_a_panic_in_the_rules_inside_a_chunk_decoded_ahead_names_its_line(journal: Path, tmp_path: Path) -> None:
    """The decode stage runs ahead of the rules: a panic while a record applies still names that record's line."""
    from backstop import faults

    lines = journal.read_bytes().splitlines()
    number, fill_id = next((n, orjson.loads(line)["fill_id"]) for n, line in enumerate(lines, 1)
                           if n > 2000 and b'"type":"fill"' in line)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "backstop.entrypoints.cli", "replay", str(journal), "--out", str(out),
                           "--engine", "compiled"], capture_output=True, text=True, check=False,
                          env={**os.environ, faults.ENGINE_PANIC_ENV: fill_id})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"failed on the record at line {number} of " in done.stderr, done.stderr
    assert f"panic after applying record {fill_id}" in done.stderr and "panicked" not in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == [], "a partial output was left behind"
