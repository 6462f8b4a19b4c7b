"""The service's one engine port: what the ledger loop (backstop.service.ledger_loop) asks of an engine, and its two
implementations (docs/service.md, "The engine"):

- `ReferenceService`: the Python reference engine (backstop.core), driven record by record (backstop.pipeline.ingest);
- `CompiledService`: the compiled engine (backstop._engine), one call per consumed batch, its outputs canonical bytes.

Both take a consumed batch with its held identities resolved beforehand (PostgreSQL holds them: ServiceIds), give the
same BatchResult (the rows the store writes, byte for byte), the same head, state hash and snapshot document (a
snapshot written under one restores in the other), and projection rows equal as numbers.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson

from backstop import faults
from backstop.adapters.postgres.store import REFRESH_CHUNK_ROWS, RefreshCopy
from backstop.core.dedupe import (
    HeldRow,
    content_digest,
    identity_of_fields,
    key_digest,
    pack_rows,
    split_keys,
    unpack_rows,
)
from backstop.core.engine import Engine
from backstop.core.errors import InvariantViolation
from backstop.core.events import Event, is_fund_account
from backstop.core.hashing import canonical_json
from backstop.core.processor import Outcome, Processor
from backstop.core.snapshot import restore, state_document, state_hash
from backstop.engines import EngineName, compiled_available
from backstop.pipeline import projections
from backstop.pipeline.held_ids import ServiceIds
from backstop.pipeline.ingest import (
    REPLAY_CHUNK,
    BatchResult,
    Consumed,
    DeadLetter,
    HeldLookup,
    JournalFacts,
    OutputLine,
    PoisonRecord,
    Where,
    batch_identities,
    ingest_batch,
    replay_journal,
    resolve_identities,
)
from backstop.pipeline.projections import Touched
from backstop.pipeline.topics import TopicNames
from backstop.wire.decode import decode_record

if TYPE_CHECKING:  # the compiled module is imported where it runs (engine_to_run)
    from backstop._engine import HeldIds

log = logging.getLogger("backstop.ledger")

Snapshot = tuple[int, str, bytes]  # (seq, state hash, canonical JSON of {"engine": the state document})


class EngineHead(NamedTuple):
    """The engine's side of the journal head (backstop.adapters.postgres.store.Head less the output positions)."""

    seq: int
    head_hash: str
    ledger_head: str
    adl_head: str
    duplicates: int
    rejected: int


class ServiceEngine(Protocol):
    """The engine as the service drives it. Only the ledger loop's task touches it, one step at a time; `apply`,
    `projections`, `full_refresh`, `snapshot`, `state_hash` and `refresh_adl_index` are blocking (offloaded or run in
    a forked child)."""

    name: EngineName

    @property
    def last_seq(self) -> int: ...

    def load_held(self, keys: bytes) -> None:
        """Concatenated key digests PostgreSQL holds (at start, before `replay`)."""
        ...

    def drain_held(self) -> list[HeldRow]:
        """The identities applied since the last drain, for applied_ids."""
        ...

    def head(self) -> EngineHead: ...

    async def replay(self, rows: AsyncIterator[tuple[int, bytes]], lookup: HeldLookup) -> None:
        """Re-apply stored journal rows (seq, payload) after the engine's seq; each must apply as its own seq."""
        ...

    def set_counters(self, duplicates: int, rejected: int) -> None:
        """The counters the store keeps (a rebuilt engine carries on from them)."""
        ...

    def identities(self, batch: list[Consumed], topics: TopicNames) -> bytes:
        """The key digests (concatenated) of the identities the batch's records carry (blocking: offloaded)."""
        ...

    async def prepare(self, batch: list[Consumed], keys: bytes, lookup: HeldLookup, *, committed_seq: int) -> None:
        """Look up, in one query, what memory cannot decide of the batch's identities (`keys`), for the `apply` of
        this very batch, which comes next."""
        ...

    def apply(self, batch: list[Consumed], topics: TopicNames, quarantine: dict[Where, str]) -> BatchResult:
        """The batch `prepare` was last given through dedupe, sequencing and the rules: the rows the store writes,
        held identities included."""
        ...

    def projections(self, result: BatchResult, touched: projections.Touched, *, refresh_all: bool
                    ) -> projections.Projections:
        """Rows after `result`: wallets and positions of `touched` (every one with refresh_all), funds, lots when
        the inventory may have changed, the ADL queue with refresh_all."""
        ...

    def full_refresh(self, written: Touched | None = None) -> RefreshCopy:
        """Every wallet and position row and the ADL queue as COPY text (in a forked child), less the rows `written`
        names: those a batch writes as of the same seq (projections.build)."""
        ...

    def snapshot(self) -> Snapshot: ...

    def state_hash(self) -> str: ...

    def ledger_sum(self) -> Decimal:
        """The sum of every ledger balance: zero when the ledger balances."""
        ...

    def refresh_adl_index(self, limit: int | None = None) -> bool:
        """Bring the ADL index up to date (or `limit` accounts of it); False if nothing had changed."""
        ...

    def adl_index_backlog(self) -> int: ...

    def open_positions(self) -> int:
        """How many positions are open (each side of a hedge counts)."""
        ...


def fund_balances(rows: projections.Projections) -> dict[str, float]:
    """Each fund's balance from its projection row, for the metrics."""
    return {str(row[0]): float(row[4]) for row in projections.rows_of(rows.funds)}


# ------------------------------------------------------------------------------------------------ reference


class FaultyProcessor(Processor):
    """The fault hook (backstop.faults.engine_panic_on) on the reference engine: it raises right after applying the
    record with that id, as a bug in the rules would, which backstop.pipeline.ingest turns into a PoisonRecord."""

    def __init__(self, engine: Engine, fail_on: str) -> None:
        super().__init__(engine)
        self.fail_on = fail_on

    def process(self, record: Event) -> Outcome:
        outcome = super().process(record)
        if self.fail_on in (getattr(record, name, None) for name in ("fill_id", "transfer_id", "liquidation_id")):
            raise faults.EngineFault(f"fault hook: raised after applying record {self.fail_on}")
        return outcome


class ReferenceService:
    """backstop.core behind the port: records decoded and applied one at a time (backstop.pipeline.ingest)."""

    name: EngineName = "reference"

    def __init__(self, processor: Processor, ids: ServiceIds) -> None:
        self.processor, self.ids = processor, ids

    @classmethod
    def open(cls, ids: ServiceIds, state: dict[str, Any] | None, *, check_conservation: bool,
             adl_quantiles: bool) -> ReferenceService:
        engine = Engine(check_conservation=check_conservation, ids=ids, adl_quantiles=adl_quantiles) \
            if state is None else restore(state, check_conservation=check_conservation, ids=ids,
                                          adl_quantiles=adl_quantiles)
        fail_on = faults.engine_panic_on()
        return cls(Processor(engine) if fail_on is None else FaultyProcessor(engine, fail_on), ids)

    @property
    def engine(self) -> Engine:
        return self.processor.engine

    @property
    def last_seq(self) -> int:
        return self.processor.engine.last_seq

    def load_held(self, keys: bytes) -> None:
        self.ids.load(keys)

    def drain_held(self) -> list[HeldRow]:
        return self.ids.drain()

    def head(self) -> EngineHead:
        processor = self.processor
        engine = processor.engine
        return EngineHead(engine.last_seq, engine.head_hash, engine.ledger_head, engine.adl_head,
                          processor.duplicates, processor.rejected)

    async def replay(self, rows: AsyncIterator[tuple[int, bytes]], lookup: HeldLookup) -> None:
        await replay_journal(self.processor, rows, lookup)

    def set_counters(self, duplicates: int, rejected: int) -> None:
        self.processor.duplicates, self.processor.rejected = duplicates, rejected

    def identities(self, batch: list[Consumed], topics: TopicNames) -> bytes:
        return b"".join(batch_identities(batch, topics))

    async def prepare(self, batch: list[Consumed], keys: bytes, lookup: HeldLookup, *, committed_seq: int) -> None:
        await resolve_identities(self.processor, split_keys(keys), lookup, committed_seq=committed_seq)

    def apply(self, batch: list[Consumed], topics: TopicNames, quarantine: dict[Where, str]) -> BatchResult:
        return ingest_batch(self.processor, batch, topics, quarantine)

    def projections(self, result: BatchResult, touched: projections.Touched, *, refresh_all: bool
                    ) -> projections.Projections:
        engine = self.processor.engine
        if refresh_all:
            touched = projections.Touched.everything(engine)
        return projections.build(engine, result, refresh_all=refresh_all, touched=touched)

    def full_refresh(self, written: Touched | None = None) -> RefreshCopy:
        return RefreshCopy.of(projections.full_refresh(self.processor.engine, written))

    def snapshot(self) -> Snapshot:
        engine = self.processor.engine
        return engine.last_seq, state_hash(engine), canonical_json({"engine": state_document(engine)})

    def state_hash(self) -> str:
        return state_hash(self.processor.engine)

    def ledger_sum(self) -> Decimal:
        return sum(self.processor.engine.ledger.balances.values(), Decimal(0))

    def refresh_adl_index(self, limit: int | None = None) -> bool:
        return self.processor.engine.refresh_adl_index(limit)

    def adl_index_backlog(self) -> int:
        return self.processor.engine.adl_index_backlog()

    def open_positions(self) -> int:
        positions = self.processor.engine.positions
        return sum(len(positions.of(account_id)) for account_id in positions)


# ------------------------------------------------------------------------------------------------ compiled


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1] if data else []


def _chunks(text: bytes, rows: int = REFRESH_CHUNK_ROWS) -> list[bytes]:
    """COPY text in pieces of `rows` lines (a transaction each: RefreshCopy)."""
    lines = text.splitlines(keepends=True)
    return [b"".join(lines[start:start + rows]) for start in range(0, len(lines), rows)]


_SNAPSHOT_COUNTERS = ("duplicates", "rejected", "conflicting_duplicates", "fund_entries", "adl_events", "findings",
                      "postings", "adl_quantiles")


Records = list[tuple[str, int, int, bytes | None]]  # a consumed batch as the compiled engine takes it


class CompiledService:
    """backstop._engine.Ledger behind the port: a consumed batch crosses into Rust once, its held identities given
    with it; the rows come back as canonical JSON lines and projection rows as COPY text. Its held identities are
    Rust's too (_engine.HeldIds: ServiceIds' decisions), so no identity becomes a Python object on the way."""

    name: EngineName = "compiled"

    def __init__(self, ledger: Any, ids: HeldIds) -> None:
        from backstop import _engine

        self.ledger, self.ids = ledger, ids
        # the batch `identities` and `prepare` were last given: its records as apply_records takes them, and the
        # held identities among them
        self._records: tuple[list[Consumed], Records] | None = None
        self._held_rows: tuple[list[Consumed], bytes] | None = None
        self._batch_keys = _engine.batch_keys
        self._outbox_copy, self._violation = _engine.outbox_copy, _engine.InvariantViolation
        self._journal_copy_and_facts, self._quantile_keys = _engine.journal_copy_and_facts, _engine.quantile_keys
        self._record_panic = _engine.RecordPanic

    @classmethod
    def open(cls, held_expected: int, state: dict[str, Any] | None, *, check_conservation: bool,
             adl_quantiles: bool) -> CompiledService:
        from backstop import _engine

        snapshot = None
        if state is not None:
            document = canonical_json(state)
            # a snapshot file's envelope around the state; its counters are the store's (set_counters)
            snapshot = canonical_json({"engine": orjson.Fragment(document),
                                       "state_hash": hashlib.sha256(document).hexdigest(),
                                       "counters": dict.fromkeys(_SNAPSHOT_COUNTERS, 0)})
        try:
            ledger = _engine.Ledger(strict=False, snapshot_every=0, snapshot=snapshot, ids=None,
                                    check_conservation=check_conservation, held_per_batch=True,
                                    adl_quantiles=adl_quantiles)
        except ValueError as error:
            raise InvariantViolation(f"the compiled engine cannot restore the stored snapshot: {error}") from None
        fail_on = faults.engine_panic_on()
        if fail_on is not None:
            ledger._panic_on(fail_on)
        return cls(ledger, _engine.HeldIds(held_expected))

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A panic inside the compiled engine outside a record (a broken invariant) poisons it: the service stops, as
        it does on the reference's InvariantViolation. One while a record applies is apply's (a PoisonRecord)."""
        try:
            return method(*args, **kwargs)
        except self._violation as error:
            raise InvariantViolation(f"compiled engine: {error}") from error

    @property
    def last_seq(self) -> int:
        seq: int = self.ledger.head()[0]
        return seq

    def load_held(self, keys: bytes) -> None:
        self.ids.load(keys)

    def drain_held(self) -> list[HeldRow]:
        return unpack_rows(self.ids.drain())

    def head(self) -> EngineHead:
        return EngineHead(*self.ledger.head())

    async def replay(self, rows: AsyncIterator[tuple[int, bytes]], lookup: HeldLookup) -> None:
        chunk: list[tuple[int, bytes]] = []
        async for row in rows:
            chunk.append(row)
            if len(chunk) >= REPLAY_CHUNK:
                await self._replay_chunk(chunk, lookup)
                chunk = []
        if chunk:
            await self._replay_chunk(chunk, lookup)

    async def _replay_chunk(self, chunk: list[tuple[int, bytes]], lookup: HeldLookup) -> None:
        keys: dict[bytes, tuple[int, bytes]] = {}
        for seq, payload in chunk:
            fields = orjson.loads(payload)
            found = identity_of_fields(fields["type"], fields)
            if found is not None:
                keys[key_digest(found)] = (seq, payload)
        # PostgreSQL holds each row's identity by that row's seq: held by the very seq applying it, it is not
        # held before it, so the rows re-apply as themselves.
        held = await self._held(b"".join(keys), lookup, None)
        for key in keys.keys() - {key for key, _, _ in unpack_rows(held)}:
            # a journal written before applied_ids existed: the rebuild holds the identity (store.hold)
            seq, payload = keys[key]
            self.ids.add(key, content_digest(decode_record(payload)), seq)
        try:
            result = self._call(self.ledger.apply_lines, b"".join(payload + b"\n" for _, payload in chunk), 1, held)
        except InvariantViolation as error:
            panic = error.__cause__
            if not isinstance(panic, self._record_panic):
                raise
            line, reason = panic.args  # a committed row cannot be quarantined: the service stops, naming it
            raise InvariantViolation(f"compiled engine: journal row {chunk[line - 1][0]} does not re-apply, the "
                                     f"engine panicked on it: {reason}") from panic
        seq = self.last_seq
        if result[3] or seq != chunk[-1][0]:
            raise InvariantViolation(f"journal rows {chunk[0][0]} to {chunk[-1][0]} did not re-apply as themselves "
                                     f"(the engine is at seq {seq}): {result[3][:200]!r}")

    def set_counters(self, duplicates: int, rejected: int) -> None:
        self.ledger.set_counters(duplicates, rejected)

    async def _held(self, keys: bytes, lookup: HeldLookup, committed_seq: int | None) -> bytes:
        """The held identities among `keys` (concatenated digests) as HELD_ROW rows, after one query for what
        memory cannot decide (none when the filter rules every one out)."""
        asked = self.ids.unresolved(keys, committed_seq)
        found = await lookup(split_keys(asked)) if asked else []
        self.ids.resolve(asked, pack_rows(found))
        answers: bytes = self._call(self.ids.answers, keys)
        return answers

    def identities(self, batch: list[Consumed], topics: TopicNames) -> bytes:
        records: Records = [(m.topic, m.partition, m.offset, m.value) for m in batch]
        self._records = batch, records  # as apply_records takes them: built once
        keys: bytes = self._batch_keys(records, topics.prefix)  # each record decoded in Rust, without the GIL
        return keys

    async def prepare(self, batch: list[Consumed], keys: bytes, lookup: HeldLookup, *, committed_seq: int) -> None:
        self._held_rows = batch, await self._held(keys, lookup, committed_seq)

    def apply(self, batch: list[Consumed], topics: TopicNames, quarantine: dict[Where, str]) -> BatchResult:
        (given, records), (looked_up, held) = self._records or ((), []), self._held_rows or ((), b"")
        self._records = self._held_rows = None
        if given is not batch or looked_up is not batch:
            raise InvariantViolation("a batch was applied without its identities looked up (identities, prepare)")
        # quarantine: records an engine failed on in an earlier run, dead-lettered as engine_error this time
        quarantined = [] if not quarantine else [
            (index, reason) for index, m in enumerate(batch)
            if (reason := quarantine.get((m.topic, m.partition, m.offset))) is not None]
        try:
            journal, ledger_lines, adl, findings, dead, postings, quantiles, duplicates, held_ids, closed = (
                self.ledger.apply_records(records, topics.prefix, held, quarantined))
        except self._record_panic as error:
            # the reference's path (backstop.pipeline.ingest): the batch is lost, the run fails, the supervisor
            # rebuilds the engine from PostgreSQL (this one, poisoned, is never used again) and the record is
            # dead-lettered when met again
            index, reason = error.args
            message = batch[index]
            raise PoisonRecord((message.topic, message.partition, message.offset),
                               f"engine error: panic: {reason}") from error
        except self._violation as error:
            raise InvariantViolation(f"compiled engine: {error}") from error
        result = BatchResult()
        for message in batch:
            result.next_offsets[(message.topic, message.partition)] = message.offset + 1
        # the journal rows' COPY text and what the service reads of them, in Rust without the GIL: the commit
        # encodes nothing and no row becomes a Python object (journal_rows() parses them if ever asked)
        result.journal_lines = journal
        result.journal_copy, (rows, first, last, last_ts, types, accounts, symbols, positions) = (
            self._journal_copy_and_facts(journal))
        result.facts = JournalFacts(rows, first, last, last_ts, dict(types))
        result.touched_accounts.update(accounts)
        result.touched_symbols.update(symbols)
        result.touched_positions.update(positions)
        result.closed_positions.update(closed)
        for line in _lines(ledger_lines):
            result.fund_entries.append(OutputLine(orjson.loads(line), line))
        for line in _lines(adl):
            event = OutputLine(orjson.loads(line), line)
            result.adl_events.append(event)
            account = event.fields["account_id"]
            result.touched_accounts.add(account)
            result.touched_positions.add((account, event.fields["symbol"]))
        result.findings.extend(OutputLine(orjson.loads(line), line) for line in _lines(findings))
        result.posting_lines = postings  # stored and published as they are: never parsed here
        # quantile records are only published: the engine's lines are the batch's one outbox block as they are,
        # never a Python object; the other records are published from their own tables
        self._dead_letters(result, dead, batch)
        result.quantile_block, result.quantile_topic = quantiles, topics.adl_quantiles
        if quantiles:  # their keys and ids, stored beside them for the relay: in Rust, without the GIL
            result.quantile_keys = self._quantile_keys(quantiles)
        if dead:
            result.outbox_copy = self._outbox_copy(topics.prefix, dead)
        result.duplicates = dict(duplicates)
        self.ids.applied(held_ids)
        result.held_ids = self.drain_held()
        return result

    @staticmethod
    def _dead_letters(result: BatchResult, dead: bytes, batch: list[Consumed]) -> None:
        lines = _lines(dead)
        if not lines:
            return
        values = {(m.topic, m.partition, m.offset): m.value for m in batch}
        for line in lines:
            letter = orjson.loads(line)
            topic, partition, offset = letter["source_topic"], letter["source_partition"], letter["source_offset"]
            result.dead_letters.append(DeadLetter(topic, partition, offset, letter["reason"],
                                                  values.get((topic, partition, offset)) or b"", letter["kind"],
                                                  letter["after_seq"]))

    def projections(self, result: BatchResult, touched: projections.Touched, *, refresh_all: bool
                    ) -> projections.Projections:
        lots = refresh_all or "liquidation" in result.journal_facts().types or any(
            is_fund_account(a) for a in result.touched_accounts)
        wallets, positions, closed, funds, fund_lots, adl_queue = self._call(
            self.ledger.projection_rows, sorted(touched.accounts), sorted(touched.positions),
            everything=refresh_all, lots=lots, closed=sorted(touched.closed))
        return projections.Projections(wallets, positions, closed, funds, fund_lots, adl_queue)

    def full_refresh(self, written: Touched | None = None) -> RefreshCopy:
        written = written or Touched()
        wallets, positions, _, _, _, adl_queue = self._call(
            self.ledger.projection_rows, [], [], everything=True, lots=False,
            written_accounts=sorted(written.accounts), written_positions=sorted(written.positions))
        return RefreshCopy(self.last_seq, _chunks(wallets), _chunks(positions), adl_queue or b"")

    def snapshot(self) -> Snapshot:
        document = self._call(self.ledger.state_document)
        return self.last_seq, hashlib.sha256(document).hexdigest(), b'{"engine":' + document + b"}"

    def state_hash(self) -> str:
        digest: str = self._call(self.ledger.state_hash)
        return digest

    def ledger_sum(self) -> Decimal:
        return Decimal(orjson.loads(self._call(self.ledger.summary_json))["ledger_sum"])

    def refresh_adl_index(self, limit: int | None = None) -> bool:
        refreshed: bool = self._call(self.ledger.refresh_adl_index)  # whole: the compiled index is fast
        return refreshed

    def adl_index_backlog(self) -> int:
        backlog: int = self.ledger.adl_index_backlog()
        return backlog

    def open_positions(self) -> int:
        count: int = self.ledger.open_positions()
        return count


# ------------------------------------------------------------------------------------------------ opening

_fell_back: list[str] = []  # said once per process


def engine_to_run(wanted: EngineName) -> EngineName:
    """The engine the settings ask for, or the reference when the compiled one is not built here (said once)."""
    if wanted == "compiled":
        missing = compiled_available()
        if missing is not None:
            if not _fell_back:
                _fell_back.append(missing)
                log.warning("%s; the service runs the reference engine (Python) meanwhile", missing)
            return "reference"
    return wanted


def open_service_engine(name: EngineName, state: dict[str, Any] | None, *, check_conservation: bool,
                        adl_quantiles: bool, held_expected: int = 0) -> ServiceEngine:
    """An engine from the start, or from a stored snapshot's state document (written by either engine); its filter
    of held identities sized for `held_expected` of them (load_held)."""
    if engine_to_run(name) == "compiled":
        return CompiledService.open(held_expected, state, check_conservation=check_conservation,
                                    adl_quantiles=adl_quantiles)
    return ReferenceService.open(ServiceIds(held_expected), state, check_conservation=check_conservation,
                                 adl_quantiles=adl_quantiles)
