"""`backstop replay`: run a JSONL journal through the engine and write the output directory."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from backstop.adapters.files import REPLAY_OUTPUTS, OutputDir, OutputError, staged_dir, write_json
from backstop.adapters.journal_file import JournalFile, JournalFileError
from backstop.core import ledger
from backstop.core.dedupe import Deduper
from backstop.core.engine import AdlPolicy, Engine
from backstop.core.numbers import text
from backstop.core.processor import Applied, Processor, Rejection
from backstop.core.report import accounts, summary
from backstop.core.snapshot import restore, seal_holds, sealed, state_document, state_hash
from backstop.wire.decode import InvalidRecord, decode_record

PROGRESS_MIN_BYTES = 8 << 20
SNAPSHOT_COUNTERS = ("duplicates", "rejected", "fund_entries", "adl_events", "findings")


class ReplayError(Exception):
    """The journal could not be read (exit 2) or, with --strict, held a bad record (exit 1)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    journal: Path | None  # None: the lines come from a store (replay_lines)
    out: Path
    strict: bool = False
    snapshot_every: int = 0
    from_snapshot: Path | None = None
    check_conservation: bool = False
    adl_policy: AdlPolicy = field(default_factory=AdlPolicy)
    progress: bool | None = None  # None: on a terminal, for large files


@dataclass(frozen=True, slots=True)
class Carried:
    """What the service counted that its journal does not hold: duplicates, and the records it dead-lettered (as
    it published them, with their reasons)."""

    duplicates: int
    rejected: int
    dead_letters: list[dict[str, Any]]


def snapshot_document(processor: Processor, input_line: int) -> dict[str, Any]:
    return sealed({"input_line": input_line, "engine": state_document(processor.engine),
                   "state_hash": state_hash(processor.engine), "dedupe": processor.deduper.entries(),
                   "counters": {"duplicates": processor.duplicates, "rejected": processor.rejected,
                                "fund_entries": processor.fund_entries, "adl_events": processor.adl_events,
                                "findings": processor.findings}})


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def processor_from_snapshot(path: Path, *, check_conservation: bool) -> tuple[Processor, int]:
    """The processor a snapshot file holds and the input line it was taken after; every field checked."""
    def corrupt(what: str) -> ReplayError:
        return ReplayError(f"snapshot {path} is corrupt: {what}", 2)

    try:
        document = orjson.loads(path.read_bytes())
    except OSError as error:
        raise ReplayError(f"cannot read snapshot {path}: {error.strerror or error}", 2) from None
    except orjson.JSONDecodeError as error:
        raise corrupt(f"not JSON ({error})") from None
    if not isinstance(document, dict):
        raise corrupt("not a JSON object")
    if "snapshot_hash" not in document:
        raise corrupt("no snapshot_hash (a snapshot of an older backstop: write it again with --snapshot-every)")
    if not seal_holds(document):
        raise corrupt("its snapshot hash does not match its contents")
    counters = document.get("counters")
    if not isinstance(counters, dict) or sorted(counters) != sorted(SNAPSHOT_COUNTERS):
        raise corrupt(f"counters must be exactly {', '.join(SNAPSHOT_COUNTERS)}")
    for name in ("input_line", *SNAPSHOT_COUNTERS):
        value = document.get(name) if name == "input_line" else counters[name]
        if not _count(value):
            raise corrupt(f"{name} {value!r} is not a count (an integer >= 0)")
    try:
        engine = restore(document["engine"], check_conservation=check_conservation)
        processor = Processor(engine, Deduper((key, ts) for key, ts in document["dedupe"]))
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as error:
        raise corrupt(f"cannot restore the engine state ({type(error).__name__}: {error})") from None
    if state_hash(engine) != document.get("state_hash"):
        raise corrupt("its state hash does not match its contents")
    processor.duplicates, processor.rejected = counters["duplicates"], counters["rejected"]
    processor.fund_entries, processor.adl_events = counters["fund_entries"], counters["adl_events"]
    processor.findings = counters["findings"]
    return processor, document["input_line"]


def snapshot_start(processor: Processor, input_line: int) -> dict[str, Any]:
    """summary.json's `from_snapshot`: where the output files take over, so that they can be audited alone."""
    engine = processor.engine
    return {"seq": engine.last_seq, "input_line": input_line, "ledger_head_hash": engine.ledger_head,
            "adl_head_hash": engine.adl_head, "fund_ledger_entries": processor.fund_entries,
            "adl_events": processor.adl_events, "findings": processor.findings,
            "fund_balances": {f: text(engine.ledger.balance(ledger.fund(f))) for f in sorted(engine.funds)}}


def replay(options: ReplayOptions) -> dict[str, Any]:
    if options.journal is None:
        raise ValueError("replay() reads a journal file: give ReplayOptions.journal")
    try:
        journal = JournalFile.open(options.journal)
    except JournalFileError as error:
        raise ReplayError(str(error), 2) from None
    return replay_lines(options, lambda skip: journal.lines(skip=skip), journal.size)


def replay_lines(options: ReplayOptions, lines: Callable[[int], Iterable[tuple[int, bytes]]], size: int, *,
                 carried: Carried | None = None) -> dict[str, Any]:
    """Replay (line number, raw record) pairs; `lines(skip)` yields those after the first `skip` lines. The output
    directory appears whole when the replay has finished, or not at all."""
    start: dict[str, Any] | None = None
    if options.from_snapshot is not None:
        processor, skip = processor_from_snapshot(options.from_snapshot,
                                                  check_conservation=options.check_conservation)
        start = snapshot_start(processor, skip)
    else:
        processor, skip = Processor(Engine(check_conservation=options.check_conservation,
                                           adl_policy=options.adl_policy)), 0
    inputs = [path for path in (options.journal, options.from_snapshot) if path is not None]
    try:
        with staged_dir(options.out, owned=REPLAY_OUTPUTS, inputs=inputs) as out_path:
            result = _replay_into(out_path, options, processor, lines(skip), size, carried)
            if start is not None:
                result["from_snapshot"] = start
            write_json(out_path / "summary.json", result)
            write_json(out_path / "accounts.json", accounts(processor.engine))
    except OutputError as error:
        raise ReplayError(str(error), 2) from None
    except JournalFileError as error:
        raise ReplayError(str(error), 2) from None
    except OSError as error:
        raise ReplayError(f"cannot write {options.out}: {error.strerror or error}", 2) from None
    return result


def _replay_into(out_path: Path, options: ReplayOptions, processor: Processor, lines: Iterable[tuple[int, bytes]],
                 size: int, carried: Carried | None) -> dict[str, Any]:
    show = options.progress if options.progress is not None else (sys.stderr.isatty() and
                                                                   size >= PROGRESS_MIN_BYTES)
    snapshots = out_path / "snapshots"
    if options.snapshot_every > 0:
        snapshots.mkdir()
    next_snapshot = processor.events_applied + options.snapshot_every
    with processor.engine.decimal_context(), OutputDir(out_path) as out, Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), disable=not show, transient=True) as progress:
        for letter in carried.dead_letters if carried is not None else ():
            out.dead_letter_record(letter)
        task = progress.add_task("replay", total=size)
        done_bytes = 0
        for number, raw in lines:
            done_bytes += len(raw) + 1
            if number % 4096 == 0:
                progress.update(task, completed=done_bytes)
            try:
                record = decode_record(raw)
            except InvalidRecord as error:
                processor.reject_unparsed()
                out.dead_letter(number, str(error), raw)
                if options.strict:
                    raise ReplayError(f"line {number}: {error}", 1) from None
                continue
            outcome = processor.process(record)
            if isinstance(outcome, Applied):
                out.effects(outcome.effects)
                if options.snapshot_every > 0 and outcome.seq >= next_snapshot:
                    write_json(snapshots / f"snapshot-{outcome.seq:012d}.json", snapshot_document(processor, number))
                    next_snapshot = outcome.seq + options.snapshot_every
            elif isinstance(outcome, Rejection):
                out.dead_letter(number, outcome.reason, raw)
                if options.strict:
                    raise ReplayError(f"line {number}: {outcome.reason}", 1)
    result = summary(processor)
    result["dead_letters"] = out.dead_letters
    if carried is not None:
        result["duplicates"] += carried.duplicates
        result["rejected"] += carried.rejected
    return result
