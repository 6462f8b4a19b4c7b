"""`backstop replay`: run a JSONL journal through a ledger engine and write the output directory.

The journal goes to the engine in chunks of whole lines (backstop.engines: the batch API both engines serve); the
engine hands back each output file's bytes, which are appended as they come.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from backstop.adapters.files import OutputDir, write_bytes, write_json
from backstop.core.engine import AdlPolicy
from backstop.engines import EngineName, EngineOptions, EngineUnavailable, SnapshotError, open_engine

PROGRESS_MIN_BYTES = 8 << 20
CHUNK_BYTES = 1 << 20  # lines handed to the engine at once


class ReplayError(Exception):
    """The journal could not be read (exit 2) or, with --strict, held a bad record (exit 1)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    journal: Path
    out: Path
    strict: bool = False
    snapshot_every: int = 0
    from_snapshot: Path | None = None
    check_conservation: bool = False
    adl_policy: AdlPolicy = field(default_factory=AdlPolicy)
    progress: bool | None = None  # None: on a terminal, for large files
    engine: EngineName = "reference"


def replay(options: ReplayOptions) -> dict[str, Any]:
    journal = options.journal
    if not journal.is_file():
        raise ReplayError(f"cannot read journal {journal}: no such file", 2)
    return replay_chunks(options, lambda skip: file_chunks(journal, skip), journal.stat().st_size)


def replay_lines(options: ReplayOptions, lines: Callable[[int], Iterable[tuple[int, bytes]]], size: int
                 ) -> dict[str, Any]:
    """Replay (line number, raw record) pairs; `lines(skip)` yields those after the first `skip` lines."""
    return replay_chunks(options, lambda skip: line_chunks(lines(skip)), size)


def file_chunks(path: Path, skip: int = 0) -> Iterator[tuple[int, bytes]]:
    """(number of its first line, whole lines) of a file, after its first `skip` lines, about CHUNK_BYTES each."""
    number = 1
    with path.open("rb") as handle:
        while number <= skip:
            if not handle.readline():
                return
            number += 1
        rest = b""
        while True:
            block = handle.read(CHUNK_BYTES)
            if not block:
                if rest:
                    yield number, rest
                return
            data = rest + block
            end = data.rfind(b"\n") + 1
            if end == 0:
                rest = data
                continue
            chunk, rest = data[:end], data[end:]
            yield number, chunk
            number += chunk.count(b"\n")


def line_chunks(lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """Chunks from numbered lines (each chunk's lines consecutive)."""
    first, size, expected = 0, 0, 0
    parts: list[bytes] = []
    for number, raw in lines:
        if parts and (number != expected or size >= CHUNK_BYTES):
            yield first, b"\n".join(parts) + b"\n"
            parts, size = [], 0
        if not parts:
            first = number
        parts.append(raw)
        size += len(raw) + 1
        expected = number + 1
    if parts:
        yield first, b"\n".join(parts) + b"\n"


def replay_chunks(options: ReplayOptions, chunks: Callable[[int], Iterable[tuple[int, bytes]]], size: int
                  ) -> dict[str, Any]:
    journal = options.journal
    engine_options = EngineOptions(strict=options.strict, snapshot_every=options.snapshot_every,
                                   check_conservation=options.check_conservation, adl_policy=options.adl_policy)
    skip = 0
    try:
        if options.from_snapshot is not None:
            skip = _snapshot_line(options.from_snapshot)
        engine = open_engine(options.engine, engine_options, options.from_snapshot)
    except (OSError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, EngineUnavailable):
            raise
        detail = "its state hash does not match its contents" if isinstance(error, SnapshotError) else error
        raise ReplayError(f"snapshot {options.from_snapshot} is corrupt or unreadable: {detail}", 2) from None
    show = options.progress if options.progress is not None else (sys.stderr.isatty() and
                                                                   size >= PROGRESS_MIN_BYTES)
    snapshots = options.out / "snapshots"
    if options.snapshot_every > 0:
        snapshots.mkdir(parents=True, exist_ok=True)
    with OutputDir(options.out) as out, Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), disable=not show, transient=True) as progress:
        task = progress.add_task("replay", total=size)
        try:
            for first_line, chunk in chunks(skip):
                result = engine.apply_lines(chunk, first_line)
                out.write_batch(result.fund_ledger, result.adl_events, result.findings, result.dead_letters)
                for seq, document in result.snapshots:
                    (snapshots / f"snapshot-{seq:012d}.json").write_bytes(document)
                if result.stopped is not None:
                    line, reason = result.stopped
                    raise ReplayError(f"line {line}: {reason}", 1)
                progress.advance(task, len(chunk))
        except OSError as error:
            raise ReplayError(f"cannot read journal {journal}: {error}", 2) from None
    result_summary = engine.summary()
    write_json(options.out / "summary.json", result_summary)
    write_bytes(options.out / "accounts.json", engine.accounts_json())
    return result_summary


def _snapshot_line(path: Path) -> int:
    """The journal line a snapshot was taken after (the replay resumes after it)."""
    document = orjson.loads(path.read_bytes())
    return int(document["input_line"])
