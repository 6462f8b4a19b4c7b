"""The two ledger engines behind one batch API (docs/engines.md).

- `reference`: the rules in Python (backstop.core), readable, the executable specification and the test oracle;
- `compiled`: the same rules in Rust (crates/, the extension module backstop._engine), fed whole batches.

A batch is raw journal bytes (whole lines of a JSONL file); what comes back is the output files' bytes, already
canonical, so no Python object is made per record. Both engines give byte-identical outputs, head hash and state
hash (tests/differential proves it), and a snapshot written by either resumes in either.

Held identities (docs/design.md §4.1): an engine holds them all in memory (`held_ids="memory"`: replay; a snapshot
carries them in its identity file), or the caller holds them (`"per_batch"`: the service, in PostgreSQL) and gives
with each batch the held identities among its records; every other identity is then not held.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from backstop import faults
from backstop.adapters.files import RAW_KEEP_BYTES, pretty_json, write_bytes
from backstop.adapters.journal_file import records
from backstop.core.adl_policy import AdlPolicy
from backstop.core.adl_policy import document as policy_document
from backstop.core.errors import InvariantViolation, one_line
from backstop.core.hashing import canonical_json, record_dict
from backstop.core.numbers import text
from backstop.core.records import kept_raw

if TYPE_CHECKING:
    # The reference engine's modules (numpy, pydantic through the wire layer) are imported where it runs, so that a
    # command on the compiled engine never loads them (its start-up: docs/engines.md, "Performance").
    from backstop.core.engine import Effects, Engine
    from backstop.core.processor import Processor
    from backstop.core.simulation import SimulationParams

EngineName = Literal["reference", "compiled"]
ENGINES: tuple[EngineName, ...] = ("reference", "compiled")
HeldIdsMode = Literal["memory", "per_batch"]


class EngineUnavailable(Exception):
    """The compiled engine is not built here, or cannot run these options; the message says which."""


class SnapshotError(ValueError):
    """A snapshot that cannot be restored (corrupt, or of another version)."""


class EngineFailure(InvariantViolation):
    """The compiled engine panicked while applying the record on journal line `line` (a bug in the engine, never the
    input's fault). The engine is not used again: a command says it in one line and writes no output."""

    def __init__(self, engine: EngineName, line: int, reason: str) -> None:
        super().__init__(self.naming(engine, line, reason, "the journal"))
        self.engine, self.line, self.reason = engine, line, reason

    @staticmethod
    def naming(engine: EngineName, line: int, reason: str, source: str) -> str:
        return (f"the {engine} engine failed on the record at line {line} of {source} (a bug in the engine, not in "
                f"the input): {reason}")

    def of(self, source: object) -> str:
        """The one line a command says, naming the journal."""
        return self.naming(self.engine, self.line, self.reason, str(source))


@dataclass(frozen=True, slots=True)
class EngineOptions:
    strict: bool = False  # stop a batch at its first bad line (the replay then exits 1)
    snapshot_every: int = 0  # a snapshot after every N applied events (0: none)
    check_conservation: bool = False
    adl_policy: AdlPolicy = field(default_factory=AdlPolicy)
    adl_quantiles: bool = False  # quantile points (docs/design.md §10): adl-quantiles.jsonl; off, it stays empty
    full_adl_metrics: bool = False  # rank inversions and eligible quantiles per ADL round (docs/design.md §11.4)
    held_ids: HeldIdsMode = "memory"  # "per_batch": the caller holds them and gives each batch's (no snapshots)
    simulation: SimulationParams | None = None  # simulation mode (backstop.core.simulation): liquidations decided
    journal: bool = False  # each batch returns the applied records' lines (BatchResult.journal)

    def __post_init__(self) -> None:
        if self.held_ids == "per_batch" and self.snapshot_every:
            raise ValueError("an engine whose identities are held per batch writes no snapshots")


def snapshot_name(seq: int) -> str:
    """The stem of a snapshot's files: snapshot-SEQ.json and its identity file snapshot-SEQ.ids."""
    return f"snapshot-{seq:012d}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot as `backstop replay` writes it: the document (snapshot-SEQ.json: indented, sorted keys, sealed)
    and the identity file it names in `ids` (snapshot-SEQ.ids: every held identity, 32 bytes each, one canonical
    form: docs/design.md §4.1). An engine restored with per-batch identities reads no identity file (`ids` b"")."""

    seq: int
    document: bytes
    ids: bytes


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one batch of lines produced: each output file's new bytes (canonical JSON lines), the snapshots due in
    it, and, in strict mode, the bad line it stopped at."""

    fund_ledger: bytes
    adl_events: bytes
    findings: bytes
    dead_letters: bytes
    postings: bytes
    adl_quantiles: bytes
    snapshots: tuple[Snapshot, ...]
    stopped: tuple[int, str] | None
    adl_rounds: bytes = b""
    journal: bytes = b""  # with EngineOptions.journal: each applied record's line (a decided liquidation's as written)


@dataclass(frozen=True, slots=True)
class RecordsResult:
    """What one consumed Kafka batch produced: the journal topic's records (one per accepted input), the outputs,
    the dead-letter topic's records (canonical JSON lines), duplicates per record type, and the identities its
    journal records hold (backstop.core.dedupe.HELD_ROW after HELD_ROW: the service's applied_ids rows)."""

    journal: bytes
    fund_ledger: bytes
    adl_events: bytes
    findings: bytes
    dead_letters: bytes
    postings: bytes
    adl_quantiles: bytes
    duplicates: dict[str, int]
    held_ids: bytes


Consumed = tuple[str, int, int, bytes | None]  # topic, partition, offset, value


class LedgerEngine(Protocol):
    name: EngineName

    @property
    def events_applied(self) -> int: ...

    def apply_lines(self, chunk: bytes, first_line: int, held: bytes = b"") -> BatchResult:
        """Apply whole journal lines (the first numbered `first_line`); blank lines count but are skipped. `held`
        (per-batch identities only): the held identities among the batch's records, HELD_ROW after HELD_ROW."""
        ...

    def apply_records(self, records: Sequence[Consumed], topic_prefix: str, held: bytes = b"") -> RecordsResult:
        """Apply a consumed Kafka batch: the topic (under `topic_prefix`) names each record's type. `held`: as for
        apply_lines."""
        ...

    def write_outputs(self, directory: Path) -> bool:
        """From now on write the output files of apply_lines (ENGINE_WRITTEN: all but dead-letter.jsonl) into
        `directory` itself, and return them empty in BatchResult: True. False: this engine does not, the caller
        writes what apply_lines returns. OSError: a file that cannot be created."""
        ...

    def finish_outputs(self) -> None:
        """Everything write_outputs took written and the files closed (nothing without write_outputs). Call it
        before the files are read or the directory moved, also when the replay failed. OSError: the first write
        that failed."""
        ...

    def summary(self) -> dict[str, Any]: ...

    def summary_writing_accounts(self, accounts_path: Path) -> dict[str, Any]:
        """summary(), with accounts_json() written to `accounts_path` (the compiled engine builds and writes it
        beside the summary, and, after write_outputs, while it still writes the last postings: finish_outputs may
        come after it). OSError: it could not be written, or an output file could not."""
        ...

    def queue_depth(self, symbol: str) -> tuple[int, int]:
        """(long positions, positions) of a symbol: its ADL queues' depth."""
        ...

    def accounts_json(self) -> bytes:
        """accounts.json, as written (indented, sorted keys, a final newline)."""
        ...

    def state_hash(self) -> str: ...

    def snapshot(self, input_line: int) -> Snapshot: ...


def journal_lines(chunk: bytes, first_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, record) of every non-blank line of a chunk, by the journal reader's rule
    (backstop.adapters.journal_file.records)."""
    for number, record in records(io.BytesIO(chunk)):
        yield first_line + number - 1, record


def dead_letter_line(line: int, reason: str, raw: bytes, kind: str) -> bytes:
    """`kind`: backstop.core.errors.RejectionKind."""
    text, exact, truncated = kept_raw(raw, RAW_KEEP_BYTES)
    return canonical_json({"line": line, "kind": kind, "reason": one_line(reason), "raw": text, "raw_base64": exact,
                           "raw_truncated": truncated})


# The output files an engine writes itself after write_outputs (the compiled engine: crate output_files).
ENGINE_WRITTEN = ("fund-ledger.jsonl", "adl-events.jsonl", "adl-rounds.jsonl", "findings.jsonl", "postings.jsonl",
                  "adl-quantiles.jsonl")

SNAPSHOT_COUNTERS = ("duplicates", "rejected", "conflicting_duplicates", "fund_entries", "adl_events", "findings",
                     "postings", "adl_quantiles")


# ------------------------------------------------------------------------------------------------ reference


@dataclass(slots=True)
class _Lines:
    """A batch's output lines as they are written."""

    ledger: bytearray = field(default_factory=bytearray)
    adl: bytearray = field(default_factory=bytearray)
    findings: bytearray = field(default_factory=bytearray)
    dead: bytearray = field(default_factory=bytearray)
    postings: bytearray = field(default_factory=bytearray)
    quantiles: bytearray = field(default_factory=bytearray)
    rounds: bytearray = field(default_factory=bytearray)
    journal: bytearray = field(default_factory=bytearray)

    def add(self, effects: Effects) -> None:
        for entry in effects.fund_entries:
            self.ledger += canonical_json(record_dict(entry)) + b"\n"
        for event in effects.adl_events:
            self.adl += canonical_json(record_dict(event)) + b"\n"
        for finding in effects.findings:
            self.findings += canonical_json(record_dict(finding)) + b"\n"
        for posting in effects.postings:
            self.postings += canonical_json(record_dict(posting)) + b"\n"
        for change in effects.adl_quantiles:
            self.quantiles += canonical_json(record_dict(change)) + b"\n"
        for round_ in effects.adl_rounds:
            self.rounds += canonical_json(round_.record) + b"\n"


class ReferenceEngine:
    """backstop.core.processor.Processor behind the batch API."""

    name: EngineName = "reference"

    def __init__(self, options: EngineOptions, processor: Processor | None = None) -> None:
        from backstop.core.dedupe import BatchIds
        from backstop.core.engine import Engine
        from backstop.core.idstore import IdStore
        from backstop.core.processor import Processor
        from backstop.core.simulation import Simulator
        from backstop.wire.decode import through_contract

        self.options = options
        if processor is None:
            ids = BatchIds() if options.held_ids == "per_batch" else IdStore()
            processor = Processor(Engine(check_conservation=options.check_conservation,
                                         adl_policy=options.adl_policy, ids=ids,
                                         adl_quantiles=options.adl_quantiles,
                                         full_adl_metrics=options.full_adl_metrics))
        self.processor = processor
        self.simulator = None if options.simulation is None else Simulator(processor, options.simulation,
                                                                            contract=through_contract)
        self._next_snapshot = self.processor.events_applied + options.snapshot_every

    @property
    def events_applied(self) -> int:
        return self.processor.events_applied

    @property
    def engine(self) -> Engine:
        """The core engine, for reading its state between batches (explain reads the state before an event)."""
        return self.processor.engine

    def _begin(self, held: bytes) -> None:
        """The batch's held identities (per-batch identities only)."""
        from backstop.core.dedupe import BatchIds, unpack_rows

        ids = self.processor.engine.dedupe.ids
        if isinstance(ids, BatchIds):
            ids.begin(unpack_rows(held))
        elif held:
            raise ValueError("held identities given to an engine that holds its own")

    def apply_lines(self, chunk: bytes, first_line: int, held: bytes = b"") -> BatchResult:
        from backstop.core.processor import Applied, Rejection
        from backstop.wire.decode import InvalidRecord, decode_record
        from backstop.wire.translate import wire_document

        self._begin(held)
        out = _Lines()
        snapshots: list[Snapshot] = []
        processor, every, simulator = self.processor, self.options.snapshot_every, self.simulator

        def result(stopped: tuple[int, str] | None) -> BatchResult:
            return BatchResult(bytes(out.ledger), bytes(out.adl), bytes(out.findings), bytes(out.dead),
                               bytes(out.postings), bytes(out.quantiles), tuple(snapshots), stopped, bytes(out.rounds),
                               bytes(out.journal))

        with processor.engine.decimal_context():
            for number, raw in journal_lines(chunk, first_line):
                try:
                    record = decode_record(raw)
                except InvalidRecord as error:
                    processor.reject_unparsed()
                    out.dead += dead_letter_line(number, str(error), raw, "invalid") + b"\n"
                    if self.options.strict:
                        return result((number, str(error)))
                    continue
                # simulation mode: the record's outcome, then those of the liquidations it decided (each a line of
                # its own, as its wire record dumps it; a rejected one is a dead letter of this line)
                for applied, outcome in (simulator.process(record) if simulator is not None
                                         else ((record, processor.process(record)),)):
                    line = raw if applied is record else canonical_json(wire_document(applied))
                    if isinstance(outcome, Applied):
                        if self.options.journal:
                            out.journal += line + b"\n"
                        out.add(outcome.effects)
                        if every > 0 and outcome.seq >= self._next_snapshot:
                            snapshots.append(self.snapshot(number))
                            self._next_snapshot = outcome.seq + every
                    elif isinstance(outcome, Rejection):
                        out.dead += dead_letter_line(number, outcome.reason, line, outcome.kind) + b"\n"
                        if self.options.strict and applied is record:
                            return result((number, outcome.reason))
        return result(None)

    def apply_records(self, records: Sequence[Consumed], topic_prefix: str, held: bytes = b"") -> RecordsResult:
        from backstop.pipeline.ingest import Consumed as IngestConsumed
        from backstop.pipeline.ingest import ingest_batch, journal_record
        from backstop.pipeline.topics import TopicNames

        self._begin(held)
        batch = [IngestConsumed(topic, partition, offset, None, value) for topic, partition, offset, value in records]
        dedupe = self.processor.engine.dedupe
        recorded: list[bytes] = []
        dedupe.recording = recorded
        try:
            result = ingest_batch(self.processor, batch, TopicNames(topic_prefix))
        finally:
            dedupe.recording = None
        return RecordsResult(
            b"".join(journal_record(row) + b"\n" for row in result.journal),
            b"".join(canonical_json(record_dict(entry)) + b"\n" for entry in result.fund_entries),
            b"".join(canonical_json(record_dict(event)) + b"\n" for event in result.adl_events),
            b"".join(canonical_json(record_dict(finding)) + b"\n" for finding in result.findings),
            b"".join(canonical_json(record_dict(letter.record())) + b"\n" for letter in result.dead_letters),
            b"".join(canonical_json(record_dict(posting)) + b"\n" for posting in result.postings),
            b"".join(canonical_json(record_dict(change)) + b"\n" for change in result.adl_quantiles),
            dict(result.duplicates), b"".join(recorded))

    def write_outputs(self, directory: Path) -> bool:
        return False

    def finish_outputs(self) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        from backstop.core.documents import summary

        return summary(self.processor)

    def summary_writing_accounts(self, accounts_path: Path) -> dict[str, Any]:
        write_bytes(accounts_path, self.accounts_json())
        return self.summary()

    def queue_depth(self, symbol: str) -> tuple[int, int]:
        positions = self.processor.engine.by_symbol.get(symbol, {})
        return sum(1 for p in positions.values() if p.qty > 0), len(positions)

    def accounts_json(self) -> bytes:
        from backstop.core.documents import accounts

        return pretty_json(accounts(self.processor.engine))

    def state_hash(self) -> str:
        from backstop.core.snapshot import state_hash

        return state_hash(self.processor.engine)

    def snapshot(self, input_line: int) -> Snapshot:
        from backstop.core.idstore import IdStore
        from backstop.core.snapshot import sealed, state_document, state_hash, wallets_at_zero

        processor = self.processor
        engine = processor.engine
        store = engine.dedupe.ids
        if not isinstance(store, IdStore):
            raise EngineUnavailable("an engine whose identities are held per batch writes no snapshots")
        buffer = io.BytesIO()
        sha256 = store.write(buffer)
        name = snapshot_name(engine.last_seq)
        document = sealed({
            "input_line": input_line, "engine": state_document(engine), "state_hash": state_hash(engine),
            "ids": {"file": f"{name}.ids", "sha256": sha256, "count": len(store)},
            "counters": {"duplicates": processor.duplicates, "rejected": processor.rejected,
                         "conflicting_duplicates": processor.conflicting_duplicates,
                         "fund_entries": processor.fund_entries, "adl_events": processor.adl_events,
                         "findings": processor.findings, "postings": processor.postings,
                         "adl_quantiles": processor.adl_quantiles},
            "wallets_at_zero": wallets_at_zero(engine), "adl_quantile_points": engine.adl_quantiles})
        return Snapshot(engine.last_seq, pretty_json(document), buffer.getvalue())

    @classmethod
    def restored(cls, options: EngineOptions, snapshot: Snapshot) -> ReferenceEngine:
        """From a snapshot whose envelope (seal, counters, the identity file's SHA-256) the caller checked."""
        from backstop.core.dedupe import BatchIds
        from backstop.core.idstore import IdStore
        from backstop.core.processor import Processor
        from backstop.core.snapshot import hold_wallets_at_zero, restore, state_hash

        try:
            document = orjson.loads(snapshot.document)
        except orjson.JSONDecodeError as error:
            raise SnapshotError(f"not JSON: {error}") from None
        if options.held_ids == "per_batch":
            ids: IdStore | BatchIds = BatchIds()  # the caller holds them (PostgreSQL): the file is not read
        else:
            try:
                ids, _ = IdStore.read(io.BytesIO(snapshot.ids))
            except ValueError as error:
                raise SnapshotError(f"{document['ids']['file']}: {error}") from None
            if len(ids) != document["ids"]["count"]:
                raise SnapshotError(f"{document['ids']['file']} holds {len(ids)} identities, not the "
                                    f"{document['ids']['count']} it is named with")
        engine = restore(document["engine"], check_conservation=options.check_conservation, ids=ids,
                         adl_quantiles=options.adl_quantiles, full_adl_metrics=options.full_adl_metrics)
        if state_hash(engine) != document.get("state_hash"):
            raise SnapshotError("its state hash does not match its contents")
        if isinstance(ids, IdStore) and len(ids) != engine.dedupe.count:
            raise SnapshotError(f"{document['ids']['file']} holds {len(ids)} identities, the state "
                                f"{engine.dedupe.count}")
        hold_wallets_at_zero(engine, document.get("wallets_at_zero", []))  # none in the service's stored state
        processor = Processor(engine)
        counters = document["counters"]
        processor.duplicates, processor.rejected = counters["duplicates"], counters["rejected"]
        processor.conflicting_duplicates = counters["conflicting_duplicates"]
        processor.fund_entries, processor.adl_events = counters["fund_entries"], counters["adl_events"]
        processor.findings = counters["findings"]
        processor.postings, processor.adl_quantiles = counters["postings"], counters["adl_quantiles"]
        return cls(options, processor)


# ------------------------------------------------------------------------------------------------ compiled


def compiled_available() -> str | None:
    """None when the compiled engine can run here, else why not (one line)."""
    try:
        from backstop import _engine  # noqa: F401
    except ImportError:
        return "the compiled engine (backstop._engine) is not built: run ./backstop (it needs cargo: rustup.rs)"
    return None


def runs_compiled(engine: str) -> bool:
    """Whether work named for `engine` ("compiled" or "reference") runs in Rust here: the service's relay reads and
    encodes its rows there only when the compiled engine is chosen and built."""
    return engine == "compiled" and compiled_available() is None


def _simulation(params: SimulationParams) -> tuple[str, bool, str]:
    return text(params.slippage_bps), params.partial, text(params.market_fill)


class CompiledEngine:
    """backstop._engine.Ledger (crates/backstop-engine) behind the batch API: a batch crosses the boundary once."""

    name: EngineName = "compiled"

    def __init__(self, options: EngineOptions, snapshot: Snapshot | None = None) -> None:
        from backstop import _engine

        self.options = options
        try:
            self._ledger = _engine.Ledger(strict=options.strict, snapshot_every=options.snapshot_every,
                                          snapshot=None if snapshot is None else snapshot.document,
                                          ids=None if snapshot is None else snapshot.ids,
                                          check_conservation=options.check_conservation,
                                          held_per_batch=options.held_ids == "per_batch",
                                          adl_quantiles=options.adl_quantiles,
                                          adl_policy=canonical_json(policy_document(options.adl_policy)),
                                          full_adl_metrics=options.full_adl_metrics,
                                          simulation=None if options.simulation is None else _simulation(
                                              options.simulation),
                                          journal=options.journal)
        except ValueError as error:  # named as the reference names it (the state, its hash, the identity file)
            raise SnapshotError(str(error)) from None
        self._record_panic = _engine.RecordPanic
        fail_on = faults.engine_panic_on()
        if fail_on is not None:
            self._ledger._panic_on(fail_on)

    @property
    def events_applied(self) -> int:
        return self._ledger.events_applied()

    def apply_lines(self, chunk: bytes, first_line: int, held: bytes = b"") -> BatchResult:
        try:
            ledger, adl, findings, dead, postings, quantiles, snapshots, stopped, rounds, journal = (
                self._ledger.apply_lines(chunk, first_line, held))
        except self._record_panic as error:
            line, reason = error.args
            raise EngineFailure(self.name, line, reason) from None
        return BatchResult(ledger, adl, findings, dead, postings, quantiles,
                           tuple(Snapshot(*each) for each in snapshots), stopped, rounds, journal)

    def apply_records(self, records: Sequence[Consumed], topic_prefix: str, held: bytes = b"") -> RecordsResult:
        journal, ledger, adl, findings, dead, postings, quantiles, duplicates, held_ids, _ = (
            self._ledger.apply_records(list(records), topic_prefix, held))
        return RecordsResult(journal, ledger, adl, findings, dead, postings, quantiles, dict(duplicates), held_ids)

    def write_outputs(self, directory: Path) -> bool:
        self._ledger.write_outputs(str(directory))
        return True

    def finish_outputs(self) -> None:
        self._ledger.finish_outputs()

    def summary(self) -> dict[str, Any]:
        document: dict[str, Any] = orjson.loads(self._ledger.summary_json())
        return document

    def summary_writing_accounts(self, accounts_path: Path) -> dict[str, Any]:
        document: dict[str, Any] = orjson.loads(self._ledger.summary_writing_accounts(str(accounts_path)))
        return document

    def queue_depth(self, symbol: str) -> tuple[int, int]:
        return self._ledger.queue_depth(symbol)

    def accounts_json(self) -> bytes:
        return self._ledger.accounts_json()

    def state_hash(self) -> str:
        return self._ledger.state_hash()

    def snapshot(self, input_line: int) -> Snapshot:
        if self.options.held_ids == "per_batch":
            raise EngineUnavailable("an engine whose identities are held per batch writes no snapshots")
        return Snapshot(*self._ledger.snapshot(input_line))


# ------------------------------------------------------------------------------------------------ opening


def invariant_errors() -> tuple[type[Exception], ...]:
    """What an engine stops with when one of its invariants breaks (conservation, with check_conservation)."""
    errors: list[type[Exception]] = [InvariantViolation]
    try:
        from backstop import _engine
    except ImportError:
        return tuple(errors)
    errors.append(_engine.InvariantViolation)
    return tuple(errors)



def open_engine(name: EngineName, options: EngineOptions, snapshot: Snapshot | None = None) -> LedgerEngine:
    """An engine from the start, or from a snapshot written by either engine."""
    if name == "compiled":
        missing = compiled_available()
        if missing is not None:
            raise EngineUnavailable(missing)
        return CompiledEngine(options, snapshot)
    if snapshot is None:
        return ReferenceEngine(options)
    return ReferenceEngine.restored(options, snapshot)
