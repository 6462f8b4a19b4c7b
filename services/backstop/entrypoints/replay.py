"""`backstop replay`: run a JSONL journal through a ledger engine and write the output directory.

The journal goes to the engine in chunks of whole lines (backstop.engines: the batch API both engines serve); the
engine hands back each output file's bytes, which are appended as they come, or (the compiled engine) writes them
itself from a thread of its own while it applies the next chunk (docs/engines.md, "The replay's pipeline").
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from backstop.adapters.files import (
    REPLAY_OUTPUTS,
    OutputDir,
    OutputError,
    pretty_json,
    staged_dir,
    write_bytes,
    write_json,
)
from backstop.adapters.journal_file import JournalFile, JournalFileError
from backstop.core import adl_policy
from backstop.core.adl_policy import AdlPolicy
from backstop.core.errors import one_line
from backstop.core.events import IDENTIFIER_CHARS, IDENTIFIER_MAX, is_fund_account
from backstop.core.ledger import fund as fund_account
from backstop.core.ledger import wallet as wallet_account
from backstop.engines import (
    ENGINE_WRITTEN,
    SNAPSHOT_COUNTERS,
    EngineFailure,
    EngineName,
    EngineOptions,
    EngineUnavailable,
    LedgerEngine,
    Snapshot,
    SnapshotError,
    invariant_errors,
    open_engine,
    snapshot_name,
)
from backstop.entrypoints import snapshot_journal
from backstop.entrypoints.snapshot_journal import JournalMismatch, Prefix

T = TypeVar("T")
PROGRESS_MIN_BYTES = 8 << 20
CHUNK_BYTES = 8 << 20  # lines handed to the engine at once (docs/engines.md, "The replay's pipeline": why 8 MiB)


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
    adl_policy: AdlPolicy | None = None  # None: the default, or (--from-snapshot) the snapshot's
    adl_quantiles: bool = False  # quantile points: adl-quantiles.jsonl as the service publishes it (design §10)
    full_adl_metrics: bool = False
    progress: bool | None = None  # None: on a terminal, for large files
    engine: EngineName = "reference"


@dataclass(frozen=True, slots=True)
class Carried:
    """What the service counted that its journal does not hold: duplicates, and the records it dead-lettered (as
    it published them, with their reasons)."""

    duplicates: int
    rejected: int
    dead_letters: list[dict[str, Any]]



def _count(value: Any) -> bool:
    """A count both engines hold (a signed 64-bit integer, as the state's counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def read_snapshot(path: Path) -> tuple[Snapshot, dict[str, Any]]:
    """A snapshot's files (its JSON and the identity file it names beside it) and its document, every field of its
    envelope checked (its seal, counters, line, the identity file's name and SHA-256) and its state held to what a
    journal could have made (backstop.wire.snapshot_state); the engine that restores it checks the identities."""
    # the reference's modules and pydantic: only a resumed replay loads them
    from backstop.core.snapshot import SNAPSHOT_VERSION, seal_holds
    from backstop.wire.decode import repeated_key
    from backstop.wire.inputs import quoted
    from backstop.wire.snapshot_state import state_problem

    def corrupt(what: str) -> ReplayError:
        return ReplayError(f"snapshot {path} is corrupt: {what}", 2)

    try:
        raw = path.read_bytes()
        document = orjson.loads(raw)
    except OSError as error:
        raise ReplayError(f"cannot read snapshot {path}: {error.strerror or error}", 2) from None
    except orjson.JSONDecodeError as error:
        raise corrupt(f"not JSON ({error})") from None
    if not isinstance(document, dict):
        raise corrupt("not a JSON object")
    # which of a repeated key's values counts would be each engine's choice; a file as written repeats none
    if pretty_json(document) != raw and (key := repeated_key(raw, document)) is not None:
        raise corrupt(f"key {quoted(key)} repeats in an object")
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
            raise corrupt(f"{name} {value!r} is not a count (an integer from 0 below 2^63)")
    ids = _identity_file(path, document, corrupt)
    if not isinstance(document.get("adl_quantile_points", False), bool):
        raise corrupt("adl_quantile_points must be true or false")
    state = document.get("engine")
    if not isinstance(state, dict):
        raise corrupt("engine, the engine state, must be an object")
    version = state.get("snapshot_version")
    if type(version) is not int:  # True is an int to isinstance; the engines read an integer only
        raise corrupt(f"engine.snapshot_version {version!r} is not an integer")
    # a state of another version: the engines say which they read
    if version == SNAPSHOT_VERSION and (problem := state_problem(state)):
        raise corrupt(problem)
    _check_wallets_at_zero(document, state, corrupt)
    seq = state.get("seq")
    return Snapshot(seq if isinstance(seq, int) else 0, raw, ids), document


def _check_wallets_at_zero(document: dict[str, Any], state: dict[str, Any],
                           corrupt: Callable[[str], ReplayError]) -> None:
    """`wallets_at_zero`: [account, asset] pairs, sorted and distinct, each a wallet a journal could have made (a
    trader's account id, an asset a fund of the state settles in) and none one the state holds a balance of."""
    if "wallets_at_zero" not in document:
        raise corrupt("no wallets_at_zero (a snapshot of an older backstop: write it again with --snapshot-every)")
    wallets = document["wallets_at_zero"]
    if not (isinstance(wallets, list) and all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)
            for pair in wallets)):
        raise corrupt("wallets_at_zero must be a list of [account, asset] pairs of names")
    if any(earlier >= later for earlier, later in itertools.pairwise(wallets)):
        raise corrupt("wallets_at_zero must be sorted, each pair once")
    funds = state.get("funds")
    # only names: a malformed fund is the engines' to refuse when they restore the state
    assets = {asset for fund in funds if isinstance(fund, dict) and isinstance(asset := fund.get("settle_asset"), str)
              } if isinstance(funds, list) else set()
    balances = state.get("balances")
    for account_id, asset in wallets:
        if (not re.fullmatch(IDENTIFIER_CHARS, account_id) or len(account_id) > IDENTIFIER_MAX
                or is_fund_account(account_id) or asset not in assets):
            raise corrupt(f"wallets_at_zero names [{account_id!r}, {asset!r}], not a trader's wallet in an asset a "
                          f"fund of the state settles in")
        if isinstance(balances, dict) and wallet_account(account_id, asset) in balances:
            raise corrupt(f"wallets_at_zero names wallet {wallet_account(account_id, asset)}, which the state lists "
                          f"among its balances")


def _identity_file(path: Path, document: dict[str, Any], corrupt: Callable[[str], ReplayError]) -> bytes:
    """The bytes of the identity file the snapshot names beside it, checked against the SHA-256 it is named with."""
    named = document.get("ids")
    if not (isinstance(named, dict) and sorted(named) == ["count", "file", "sha256"]
            and isinstance(named["file"], str) and isinstance(named["sha256"], str) and _count(named["count"])
            and Path(named["file"]).name == named["file"] and named["file"].endswith(".ids")):
        raise corrupt("`ids` must name the identity file beside it: file (NAME.ids), sha256, count")
    ids_path = path.parent / named["file"]
    try:
        ids = ids_path.read_bytes()
    except OSError as error:
        raise ReplayError(f"cannot read {ids_path}, the identities of snapshot {path}: {error.strerror or error}",
                          2) from None
    if hashlib.sha256(ids).hexdigest() != named["sha256"]:
        raise corrupt(f"{named['file']} is not the identity file it names (its SHA-256 differs)")
    return ids


def snapshot_start(document: dict[str, Any]) -> dict[str, Any]:
    """summary.json's `from_snapshot`: where the output files take over, so that they can be audited alone."""
    state, counters = document["engine"], document["counters"]
    funds = sorted(fund["fund_id"] for fund in state["funds"])
    return {"seq": state["seq"], "input_line": document["input_line"], "ledger_head_hash": state["ledger_head"],
            "adl_head_hash": state["adl_head"], "postings_head_hash": state["postings_head"],
            "fund_ledger_entries": counters["fund_entries"], "adl_events": counters["adl_events"],
            "findings": counters["findings"], "postings": counters["postings"],
            "adl_quantiles": counters["adl_quantiles"], "wallets_at_zero": len(document["wallets_at_zero"]),
            "fund_balances": {f: state["balances"].get(fund_account(f), "0") for f in funds}}


def replay(options: ReplayOptions) -> dict[str, Any]:
    if options.journal is None:
        raise ValueError("replay() reads a journal file: give ReplayOptions.journal")
    try:
        journal = JournalFile.open(options.journal)
    except JournalFileError as error:
        raise ReplayError(str(error), 2) from None
    return _replay(options, lambda skip, offset: read_ahead(file_chunks(journal, skip, offset)), journal.size, None)


def replay_lines(options: ReplayOptions, lines: Callable[[int], Iterable[tuple[int, bytes]]], size: int, *,
                 carried: Carried | None = None) -> dict[str, Any]:
    """Replay (line number, raw record) pairs; `lines(skip)` yields those after the first `skip` lines. The output
    directory appears whole when the replay has finished, or not at all."""
    return _replay(options, lambda skip, _offset: line_chunks(lines(skip)), size, carried)


def file_chunks(journal: JournalFile, skip: int = 0, offset: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(number of its first line, whole lines) of a journal file after its first `skip` lines (which end at byte
    `offset`, when that is known), about CHUNK_BYTES each; the engines read lines by the journal reader's rule
    (backstop.adapters.journal_file)."""
    number = 1
    try:
        with journal.path.open("rb") as handle:
            if offset is not None:
                handle.seek(offset)
                number = skip + 1
            while number <= skip:
                if not handle.readline():
                    return
                number += 1
            while block := handle.read(CHUNK_BYTES):
                # the block's last line completed from the file: the chunk is copied once, not cut from a copy
                tail = b"" if block.endswith(b"\n") else handle.readline()
                chunk = block + tail if tail else block
                yield number, chunk
                number += chunk.count(b"\n")
    except OSError as error:
        raise JournalFileError(f"cannot read journal {journal.path}: {error.strerror or error}") from None


class _End:
    """What read_ahead's reader returns past the last item."""


def read_ahead(items: Iterable[T]) -> Iterator[T]:
    """The items of `items`, each made in a thread while the one before is used: the next chunk of a journal is read
    (the kernel's copy into a fresh 8 MiB buffer, its lines counted) while the engine applies this one without the
    GIL, off the engine's path. An error made reading is raised where the item it spoils would have been."""
    iterator = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="backstop-read") as reader:
        end = _End()
        pending = reader.submit(next, iterator, end)
        while not isinstance(item := pending.result(), _End):
            pending = reader.submit(next, iterator, end)
            yield item


def line_chunks(lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """Chunks of numbered records; a gap in the numbers (blank lines) is kept as empty lines."""
    first, size, expected = 0, 0, 0
    parts: list[bytes] = []
    for number, raw in lines:
        if parts and (number < expected or size >= CHUNK_BYTES):
            yield first, b"\n".join(parts) + b"\n"
            parts, size = [], 0
        if not parts:
            first, expected = number, number
        parts.extend(b"" for _ in range(number - expected))
        parts.append(raw)
        size += len(raw) + 1 + number - expected
        expected = number + 1
    if parts:
        yield first, b"\n".join(parts) + b"\n"


def _open(options: ReplayOptions) -> tuple[LedgerEngine, int, dict[str, Any] | None, Prefix | None]:
    """The engine (from the snapshot, if one is given), the lines to skip, where the snapshot starts, and the digest
    of the journal's lines so far (None: a store's journal resumed from a snapshot, whose lines are not read)."""
    engine_options = EngineOptions(strict=options.strict, snapshot_every=options.snapshot_every,
                                   check_conservation=options.check_conservation,
                                   adl_policy=options.adl_policy or AdlPolicy(),
                                   adl_quantiles=options.adl_quantiles, full_adl_metrics=options.full_adl_metrics)
    if options.from_snapshot is None:
        return open_engine(options.engine, engine_options), 0, None, Prefix()
    snapshot, document = read_snapshot(options.from_snapshot)
    prefix = None
    if options.journal is not None:
        try:
            prefix = snapshot_journal.check(options.from_snapshot, options.journal, int(document["input_line"]))
        except JournalMismatch as error:
            raise ReplayError(str(error), 2) from None
        except OSError as error:
            raise ReplayError(f"cannot read journal {options.journal}: {error.strerror or error}", 2) from None
    # quantile points change the state and adl-quantiles.jsonl: a resume runs them as the snapshot's run did (a
    # snapshot of a backstop before it says so only when its run published quantile records)
    taken_with = document.get("adl_quantile_points", True if document["counters"]["adl_quantiles"] else None)
    if taken_with is not None and taken_with != options.adl_quantiles:
        flag = "--adl-quantiles" if taken_with else "--no-adl-quantiles"
        raise ReplayError(f"snapshot {options.from_snapshot} was taken with ADL quantile points "
                          f"{'on' if taken_with else 'off'}: resume it with {flag}, as its run was", 2)
    # the policy travels in the snapshot: one given beside it must be the same
    made_under = document["engine"].get("adl_policy")
    if options.adl_policy is not None and isinstance(made_under, dict):
        given = adl_policy.document(options.adl_policy)
        if made_under != given:
            raise ReplayError(f"snapshot {options.from_snapshot} was made under the ADL policy "
                              f"{orjson.dumps(made_under, option=orjson.OPT_SORT_KEYS).decode()}, not "
                              f"{orjson.dumps(given, option=orjson.OPT_SORT_KEYS).decode()}: resume it "
                              f"under its own policy (no policy options) or the same options", 2)
    try:
        engine = open_engine(options.engine, engine_options, snapshot)
    except EngineUnavailable:
        raise
    except SnapshotError as error:
        raise ReplayError(f"snapshot {options.from_snapshot} is corrupt: {error}", 2) from None
    except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as error:
        raise ReplayError(f"snapshot {options.from_snapshot} is corrupt: cannot restore the engine state "
                          f"({type(error).__name__}: {error})", 2) from None
    return engine, int(document["input_line"]), snapshot_start(document), prefix


def _replay(options: ReplayOptions, chunks: Callable[[int, int | None], Iterable[tuple[int, bytes]]], size: int,
            carried: Carried | None) -> dict[str, Any]:
    engine, skip, start, prefix = _open(options)
    inputs = [path for path in (options.journal, options.from_snapshot) if path is not None]
    try:
        with staged_dir(options.out, owned=REPLAY_OUTPUTS, inputs=inputs) as out_path, \
                engine_files(engine, out_path) as elsewhere:
            # the lines a snapshot applied were read once, to check them (snapshot_journal): the rest starts there
            start_at = prefix.offset if prefix is not None and skip else None
            result = _replay_into(out_path, options, engine, chunks(skip, start_at), size, carried, elsewhere,
                                  prefix if options.snapshot_every > 0 else None)
            if start is not None:
                result["from_snapshot"] = start
            write_json(out_path / "summary.json", result)
    except OutputError as error:
        raise ReplayError(str(error), 2) from None
    except JournalFileError as error:
        raise ReplayError(str(error), 2) from None
    except OSError as error:
        raise ReplayError(f"cannot write {options.out}: {error.strerror or error}", 2) from None
    except EngineFailure as error:  # the staged output is discarded: nothing partial is left
        source = options.journal or "the stored journal"
        raise ReplayError(f"the {error.engine} engine stopped on the record at line {error.line} of {source}: "
                          f"{error.reason}{resumed}" if (resumed := _resumed(options, error.reason)) else
                          error.of(source), 2) from None
    except invariant_errors() as error:  # the reference's: said in one line, as the compiled engine's
        raise ReplayError(f"the {engine.name} engine stopped: {error}{_resumed(options, str(error))}", 2) from None
    return result


def _resumed(options: ReplayOptions, reason: str) -> str:
    """Why an engine may stop in a replay from a snapshot without a bug: a state within the checked rules that no
    journal makes, whose balances a forger set near the bound 10^68 (any other stop is the engine's)."""
    if options.from_snapshot is None or "beyond the bound 10^68" not in reason:
        return ""
    return f" (resumed from {options.from_snapshot}, whose state may be one no journal makes)"


@contextlib.contextmanager
def engine_files(engine: LedgerEngine, out_path: Path) -> Iterator[Collection[str]]:
    """The output files the engine writes itself into `out_path` (ENGINE_WRITTEN, or none), all written and closed
    when the block ends, if not before. When the block raises, its error is the one reported (the staged output is
    discarded whatever the writer says)."""
    elsewhere = ENGINE_WRITTEN if engine.write_outputs(out_path) else ()
    try:
        yield elsewhere
    except BaseException:
        with contextlib.suppress(OSError):
            engine.finish_outputs()
        raise
    engine.finish_outputs()


@contextlib.contextmanager
def progress_bar(show: bool, size: int) -> Iterator[Callable[[int], None]]:
    """`advance(bytes)` of a transient progress bar on stderr, or of nothing (rich is imported only to show one)."""
    if not show:
        yield lambda _done: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), transient=True) as progress:
        task = progress.add_task("replay", total=size)
        yield lambda done: progress.advance(task, done)


def _replay_into(out_path: Path, options: ReplayOptions, engine: LedgerEngine, chunks: Iterable[tuple[int, bytes]],
                 size: int, carried: Carried | None, elsewhere: Collection[str] = (),
                 prefix: Prefix | None = None) -> dict[str, Any]:
    """The summary after the chunks are applied and their outputs written into `out_path`, accounts.json too; with
    `prefix`, each snapshot's journal file beside it (snapshot_journal)."""
    show = options.progress if options.progress is not None else (sys.stderr.isatty() and
                                                                   size >= PROGRESS_MIN_BYTES)
    snapshots = out_path / "snapshots"
    if options.snapshot_every > 0:
        snapshots.mkdir()
    with OutputDir(out_path, elsewhere=elsewhere) as out, progress_bar(show, size) as advance:
        for letter in carried.dead_letters if carried is not None else ():
            out.dead_letter_record(letter)
        for first_line, chunk in chunks:
            batch = engine.apply_lines(chunk, first_line)
            if prefix is not None:
                prefix.begin(chunk, first_line)
            out.write_batch(batch.fund_ledger, batch.adl_events, batch.findings, batch.dead_letters,
                            postings=batch.postings, adl_quantiles=batch.adl_quantiles, adl_rounds=batch.adl_rounds)
            for snapshot in batch.snapshots:  # the identities first: a snapshot never names a missing file
                name = snapshot_name(snapshot.seq)
                write_bytes(snapshots / f"{name}.ids", snapshot.ids)
                if prefix is not None:
                    line = snapshot_journal.input_line(snapshot.document)
                    write_bytes(snapshots / f"{name}{snapshot_journal.SUFFIX}",
                                snapshot_journal.record_bytes(line, prefix.through(line)))
                write_bytes(snapshots / f"{name}.json", snapshot.document)
            if prefix is not None:
                prefix.end()
            if batch.stopped is not None:
                line, reason = batch.stopped
                raise ReplayError(f"line {line}: {one_line(reason)}", 1)
            advance(len(chunk))
    # accounts.json is built while the engine's writer still writes the last chunks' postings; the summary takes the
    # postings chain's head from it (docs/engines.md, "The replay's pipeline")
    result = engine.summary_writing_accounts(out_path / "accounts.json")
    engine.finish_outputs()
    result["dead_letters"] = out.dead_letters
    if carried is not None:
        # what the service counted that its journal does not hold, in the totals and apart (so that the outputs
        # can be held to a replay of the journal alone: audit verify)
        conflicting = sum(letter.get("kind") == "conflicting_duplicate" for letter in carried.dead_letters)
        result["carried"] = {"duplicates": carried.duplicates, "rejected": carried.rejected,
                             "conflicting_duplicates": conflicting, "dead_letters": len(carried.dead_letters)}
        result["duplicates"] += carried.duplicates
        result["rejected"] += carried.rejected
        result["conflicting_duplicates"] += conflicting
    return result
