"""`backstop replay`: run a JSONL journal through the engine and write the output directory."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from backstop.adapters.files import OutputDir, read_lines, write_json
from backstop.core.engine import AdlPolicy, Engine
from backstop.core.idstore import IdStore
from backstop.core.processor import Applied, Processor, Rejection
from backstop.core.report import accounts, summary
from backstop.core.snapshot import restore, state_document, state_hash
from backstop.wire.decode import InvalidRecord, decode_record

PROGRESS_MIN_BYTES = 8 << 20


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


def snapshot_document(processor: Processor, input_line: int, ids: dict[str, Any]) -> dict[str, Any]:
    """`ids`: the file that holds the engine's identities (name beside the document, sha256, count)."""
    return {"input_line": input_line, "engine": state_document(processor.engine),
            "state_hash": state_hash(processor.engine), "ids": ids,
            "counters": {"duplicates": processor.duplicates, "rejected": processor.rejected,
                         "conflicting_duplicates": processor.conflicting_duplicates,
                         "fund_entries": processor.fund_entries, "adl_events": processor.adl_events,
                         "findings": processor.findings}}


def write_snapshot(directory: Path, processor: Processor, input_line: int) -> Path:
    """snapshot-SEQ.json and, beside it, snapshot-SEQ.ids: the held identities in binary (IdStore.write, 32 bytes
    each; as JSON, 100 million of them would be gigabytes of text to parse)."""
    engine = processor.engine
    name = f"snapshot-{engine.last_seq:012d}"
    ids_path = directory / f"{name}.ids"
    temporary = ids_path.with_suffix(".ids.tmp")
    store = engine.dedupe.ids
    if not isinstance(store, IdStore):
        raise TypeError("a replay snapshot needs the identities in memory")
    with temporary.open("wb") as handle:
        sha256 = store.write(handle)
    os.replace(temporary, ids_path)
    path = directory / f"{name}.json"
    write_json(path, snapshot_document(processor, input_line, {"file": ids_path.name, "sha256": sha256,
                                                              "count": len(store)}))
    return path


def processor_from_snapshot(path: Path, *, check_conservation: bool) -> tuple[Processor, int]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReplayError(f"cannot read snapshot {path}: {error}", 2) from None
    ids = document["ids"]
    ids_path = path.parent / ids["file"]
    try:
        with ids_path.open("rb") as handle:
            store, sha256 = IdStore.read(handle)
    except (OSError, ValueError) as error:
        raise ReplayError(f"cannot read the identities of snapshot {path} ({ids_path}): {error}", 2) from None
    if sha256 != ids["sha256"] or len(store) != ids["count"]:
        raise ReplayError(f"snapshot {path} is corrupt: {ids_path.name} is not the file it names", 2)
    engine = restore(document["engine"], check_conservation=check_conservation, ids=store)
    if state_hash(engine) != document["state_hash"] or engine.dedupe.count != len(store):
        raise ReplayError(f"snapshot {path} is corrupt: its state hash does not match its contents", 2)
    processor = Processor(engine)
    counters = document["counters"]
    processor.duplicates, processor.rejected = counters["duplicates"], counters["rejected"]
    processor.conflicting_duplicates = counters["conflicting_duplicates"]
    processor.fund_entries, processor.adl_events = counters["fund_entries"], counters["adl_events"]
    processor.findings = counters["findings"]
    return processor, int(document["input_line"])


def replay(options: ReplayOptions) -> dict[str, Any]:
    journal = options.journal
    if not journal.is_file():
        raise ReplayError(f"cannot read journal {journal}: no such file", 2)
    return replay_lines(options, lambda skip: read_lines(journal, skip=skip), journal.stat().st_size)


def replay_lines(options: ReplayOptions, lines: Callable[[int], Iterable[tuple[int, bytes]]], size: int
                 ) -> dict[str, Any]:
    """Replay (line number, raw record) pairs; `lines(skip)` yields those after the first `skip` lines."""
    journal = options.journal
    if options.from_snapshot is not None:
        processor, skip = processor_from_snapshot(options.from_snapshot,
                                                  check_conservation=options.check_conservation)
    else:
        processor, skip = Processor(Engine(check_conservation=options.check_conservation,
                                           adl_policy=options.adl_policy)), 0
    show = options.progress if options.progress is not None else (sys.stderr.isatty() and
                                                                   size >= PROGRESS_MIN_BYTES)
    snapshots = options.out / "snapshots"
    if options.snapshot_every > 0:
        snapshots.mkdir(parents=True, exist_ok=True)
    next_snapshot = processor.events_applied + options.snapshot_every
    with processor.engine.decimal_context(), OutputDir(options.out) as out, Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), disable=not show, transient=True) as progress:
        task = progress.add_task("replay", total=size)
        done_bytes = 0
        try:
            for number, raw in lines(skip):
                done_bytes += len(raw) + 1
                if number % 4096 == 0:
                    progress.update(task, completed=done_bytes)
                try:
                    record = decode_record(raw)
                except InvalidRecord as error:
                    processor.reject_unparsed()
                    out.dead_letter(number, str(error), raw, "invalid")
                    if options.strict:
                        raise ReplayError(f"line {number}: {error}", 1) from None
                    continue
                outcome = processor.process(record)
                if isinstance(outcome, Applied):
                    out.effects(outcome.effects)
                    if options.snapshot_every > 0 and outcome.seq >= next_snapshot:
                        write_snapshot(snapshots, processor, number)
                        next_snapshot = outcome.seq + options.snapshot_every
                elif isinstance(outcome, Rejection):
                    out.dead_letter(number, outcome.reason, raw, outcome.kind)
                    if options.strict:
                        raise ReplayError(f"line {number}: {outcome.reason}", 1)
        except OSError as error:
            raise ReplayError(f"cannot read journal {journal}: {error}", 2) from None
    result = summary(processor)
    write_json(options.out / "summary.json", result)
    write_json(options.out / "accounts.json", accounts(processor.engine))
    return result
