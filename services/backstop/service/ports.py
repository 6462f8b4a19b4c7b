"""What the service's loops need from the outside world, as interfaces: the input topics (Consumer), the database
(LedgerStore), the output topics (Publisher), and how whole-state and blocking work is run (Runtime).

Each has a real implementation (aiokafka, asyncpg, forked children, threads) and an in-memory one beside it
(backstop.adapters.memory, forked.Inline), and one contract test suite runs against both
(tests/integration/test_contracts.py). The deterministic simulator (tests/sim) runs the real loops on the in-memory
ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import lru_cache
from operator import attrgetter
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar

from aiokafka.partitioner import murmur2

from backstop.adapters.postgres.store import (
    OUTBOX,
    TABLE_SOURCES,
    Head,
    OutboxRow,
    RefreshCopy,
    StaleRow,
)
from backstop.adapters.postgres.store import HeadMoved as HeadMoved
from backstop.adapters.postgres.store import Lease as Lease  # the stores' (re-exported: a port's type)
from backstop.adapters.postgres.store import LockLost as LockLost
from backstop.core.dedupe import HeldRow
from backstop.pipeline.ingest import BatchResult, Consumed
from backstop.pipeline.projections import Projections
from backstop.pipeline.topics import TopicNames
from backstop.settings import Settings

Partition = tuple[str, int]
OUTBOX_HEADER = "backstop-outbox-id"  # a record from the outbox carries its outbox id, ...
POSITION_HEADER = "backstop-position"  # ... one from its own table its seq or position there, ...
RECORD_ID_HEADER = "backstop-record-id"  # ... and every record its record id, in these headers
P = ParamSpec("P")
T = TypeVar("T")


class EndsUnavailable(Exception):
    """No answer to a request for ends (the broker is away): they stay unknown for now."""


class InputGap(Exception):
    """A stored input position outside its partition's log: records deleted (retention) before the service read
    them, or a topic created again (a new topic id, or fewer records than were read). The processor does not apply
    past it (it tries again, not ready, /health saying why) unless BACKSTOP_INPUT_GAP=skip (settings.input_gap)."""


class InputPartitionsGrew(Exception):
    """An input topic has more partitions than the run reads: the run restarts, which reads them all."""


class Fetched(NamedTuple):
    """What one fetch brought."""

    records: dict[Partition, list[Consumed]]  # per partition, in offset order
    positions: dict[Partition, int]  # every assigned partition's fetch position after it
    ends: dict[Partition, int]  # the end the last fetch response for a partition carried (absent: none yet)


class Consumer(Protocol):
    """The input partitions, read from positions the caller chooses (no consumer group, nothing committed to Kafka)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        """The id Kafka gave each of `topics` when it created it (a topic deleted and created again has a new one);
        a topic that does not exist, or a broker that gives no ids, is left out."""
        ...

    async def assign(self, topics: Sequence[str], positions: Mapping[Partition, int]
                     ) -> tuple[dict[Partition, int], dict[Partition, int]]:
        """Every partition of `topics`, each at its position in `positions` or, without one, at the start of its
        log. Returns every partition's position and end. A position outside its partition's log raises InputGap
        (unless settings.input_gap is "skip" and the position lies below the log's start: then it reads from the
        start)."""
        ...

    async def fetch(self, *, only: set[Partition] | None, max_records: int, timeout_ms: int) -> Fetched:
        """At most `max_records` records, waiting up to `timeout_ms` for some; with `only`, from those partitions
        alone. InputGap when a position fell out of its log meanwhile (retention), InputPartitionsGrew when an input
        topic has more partitions than assigned: the run restarts on either."""
        ...

    async def end_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """Each partition's end, from a request made now (after every record fetched so far); EndsUnavailable when
        no answer comes within the client's request timeout."""
        ...


class LedgerStore(Protocol):
    """The database: the batch transaction, what recovery reads back, the work written behind, the outbox."""

    async def head(self) -> Head: ...

    async def offsets(self) -> dict[Partition, int]: ...

    async def input_topic_ids(self) -> dict[str, str]:
        """Each input topic's id as the service first read the topic (migration 0019)."""
        ...

    async def adopt_input_topics(self, ids: Mapping[str, str]) -> None:
        """Store these topics' ids (in place of any stored)."""
        ...

    async def latest_snapshot(self) -> tuple[int, dict[str, Any]] | None: ...

    def journal(self, *, after_seq: int = 0, chunk: int = 10_000) -> AsyncIterator[tuple[int, bytes]]: ...

    async def held(self, keys: list[bytes]) -> list[HeldRow]:
        """The held identities (applied_ids rows: key digest, content digest, seq) among these key digests: one
        query."""
        ...

    async def held_estimate(self) -> int:
        """About how many identities are held: for sizing a filter, not for deciding."""
        ...

    async def held_keys(self, sink: Callable[[bytes], None]) -> None:
        """Every held key digest, to `sink` as concatenated 16-byte digests, a chunk at a time."""
        ...

    async def hold(self, rows: list[HeldRow]) -> None:
        """Identities a rebuild re-applied, each inserted unless held already (a journal older than applied_ids)."""
        ...

    async def commit(self, *, expected_seq: int, result: BatchResult, head: Head, projections: Projections,
                     expected_counts: tuple[int, int] | None = None) -> Committed | None:
        """Everything one batch produced, in one transaction, only if the journal head is still at expected_seq
        (and, given `expected_counts`, its duplicates and rejected still those: HeadMoved otherwise).
        Returns what it wrote to the relay's sources, for a relay in this process to publish without reading it back
        (None: the relay reads it)."""
        ...

    async def write_refresh(self, refresh: RefreshCopy) -> list[StaleRow]:
        """The refresh written (backstop.adapters.postgres.store.Store.write_refresh); the position rows it removed:
        closed by its seq, and no batch had written them since."""
        ...

    async def write_snapshot(self, seq: int, state_hash: str, document: bytes) -> None: ...

    async def record_state_hash(self, seq: int, value: str) -> None: ...

    async def unpublished(self, limit: int, topics: TopicNames) -> list[OutboxRow]:
        """The next rows of every relay source (the outbox, and the journal, fund ledger, ADL events and postings
        tables) after its cursor, at most `limit` of each, each source in its own order; while outbox rows written
        before the tables became sources wait, only those."""
        ...

    async def relay_read(self, limit: int, topics: TopicNames) -> RelayRead:
        """unpublished's rows, as the relay reads them: held in Rust where the service runs the compiled engine."""
        ...

    async def mark_published(self, up_to: Mapping[str, int]) -> None:
        """Every row of each source up to its id in `up_to` is in Kafka (no cursor moves back)."""
        ...

    async def published_places(self) -> dict[str, int]:
        """Each relay source's cursor: every row up to that place is in Kafka."""
        ...

    async def outbox_backlog(self) -> int:
        """Rows not yet published, over every source."""
        ...

    async def outbox_places(self, tails: Mapping[str, tuple[str, int]], after: int) -> tuple[dict[str, int], int]:
        """The outbox id each record (record id -> its topic and its outbox id where it was published) has in this
        database (a block's record: its own id in the block): at that same id, or else among the rows of its topic
        after id `after`; absent: not there (yet). With the last id looked through, from which the next look goes
        on."""
        ...

    def hold_lock(self, lock_id: int) -> AbstractAsyncContextManager[Lease]:
        """One holder per database and lock id; a second waits here (a standby). The lock dies with the session,
        which the lease yielded checks."""
        ...


class Publisher(Protocol):
    """The output topics, written by the outbox relay."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int]: ...

    async def last_published(self, counts: Mapping[str, int]) -> dict[Partition, Tail]:
        """Per output partition, its last record's place and record id (absent: an empty partition, or a last
        record of another producer's)."""
        ...

    async def send(self, outgoing: Outgoing) -> Counter[str]:
        """Each row to its partition, in order per partition, acknowledged when this returns (rows without their
        partitions: after partition_counts for their topics). Returns counts per topic."""
        ...


class BackgroundWork(Protocol[T]):
    """One kind of whole-state work (a full projection refresh, a snapshot), off the batches' path (forked.py)."""

    wanted: bool

    def start_if_wanted(self, work: Callable[[], T]) -> None: ...

    async def take(self) -> T | None: ...

    def stop(self) -> None: ...


class Offload(Protocol):
    """Runs blocking work (the engine, building rows) off the event loop, as asyncio.to_thread does."""

    def __call__(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]: ...


# (topic, partition, records, the batch's bytes before its producer state) in sending order
EncodedBatches = list[tuple[str, int, int, bytes]]


class RelayRead(Protocol):
    """One read of the relay's sources (LedgerStore.relay_read), each source's rows in its order: rows as Python
    tuples (RowList), or held by the compiled engine (backstop._engine.RelayRows: no Python object per row)."""

    def __len__(self) -> int: ...

    def rows(self) -> Sequence[tuple[int, str, str, str, str, str]]:
        """OutboxRow's fields of each row."""
        ...

    def last_of_each_source(self) -> list[tuple[str, int]]:
        """The last row's id per source that has rows."""
        ...

    def most_of_one_source(self) -> int: ...

    def topic_sources(self) -> list[tuple[str, str]]:
        """Each topic that has rows and its source (a topic has one)."""
        ...

    def without_published(self, counts: dict[str, int], published: dict[Partition, tuple[str, int]]
                          ) -> RelayRead:
        """The rows less those already in Kafka (passed_over)."""
        ...

    def record_batches(self, counts: dict[str, int], record_id_header: str, timestamp_ms: int, max_bytes: int
                       ) -> EncodedBatches:
        """The rows as record batches encoded in Rust (backstop._engine.record_batches)."""
        ...


class Committed(Protocol):
    """What one batch's commit wrote to the relay's sources, handed to the relay of the same process so that it
    publishes the rows without reading them back (backstop.service.relay)."""

    @property
    def before(self) -> Mapping[str, int]:
        """Every relay source's last place before the batch: its rows of each source follow that place, with no row
        of another writer between."""
        ...

    @property
    def after(self) -> Mapping[str, int]:
        """Every relay source's last place after the batch (its last row's, or `before`'s)."""
        ...

    def relay_rows(self, topics: TopicNames) -> RelayRead:
        """The batch's rows as a read of the relay's sources after `before` would give them (blocking: offload)."""
        ...


class Outgoing(NamedTuple):
    """Rows for the publisher, in their sources' order, and each one's partition; None: each goes to the partition
    Kafka's default partitioner gives its key over its topic's partitions (partition_for), which the publisher works
    out (the compiled relay in Rust, without a Python step per row). Rows held in Rust are published without ever
    becoming Python objects (publisher.compiled_batches); the other publishers read them as OutboxRows (listed)."""

    rows: Sequence[OutboxRow] | RelayRead
    partitions: Sequence[int] | None = None


def listed(rows: Sequence[OutboxRow] | RelayRead) -> Sequence[OutboxRow]:
    """Rows as OutboxRows (those held in Rust copied out)."""
    if isinstance(rows, Sequence):
        return rows
    return [OutboxRow(*fields) for fields in rows.rows()]


@lru_cache(maxsize=1 << 16)  # keys repeat (accounts, funds, symbols) and murmur2 is pure Python
def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record."""
    partition: int = (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
    return partition


PLACE_HEADERS = {OUTBOX: OUTBOX_HEADER, **dict.fromkeys(TABLE_SOURCES, POSITION_HEADER)}  # each source's


def place_header(row: OutboxRow) -> str:
    """The header a published row carries its place in its source in."""
    return OUTBOX_HEADER if row.source == OUTBOX else POSITION_HEADER


class RowList(list[OutboxRow]):
    """A relay read as OutboxRows (the in-memory store's, and PostgreSQL's where the relay runs the reference)."""

    def rows(self) -> RowList:
        return self

    def last_of_each_source(self) -> list[tuple[str, int]]:
        return list(dict(zip(map(_source, self), map(_id, self), strict=True)).items())

    def most_of_one_source(self) -> int:
        return max(Counter(map(_source, self)).values(), default=0)

    def topic_sources(self) -> list[tuple[str, str]]:
        return list(dict(zip(map(_topic, self), map(_source, self), strict=True)).items())

    def without_published(self, counts: dict[str, int], published: dict[Partition, tuple[str, int]]) -> RowList:
        """The rows less those already in Kafka (passed_over)."""
        return RowList(row for row in self
                       if not passed_over(row, partition_for(row.key, counts[row.topic]), published))

    def record_batches(self, counts: dict[str, int], record_id_header: str, timestamp_ms: int, max_bytes: int
                       ) -> EncodedBatches:
        from backstop import _engine

        return _engine.record_batches(self, counts, PLACE_HEADERS, record_id_header, timestamp_ms, max_bytes)


_source, _id, _topic = attrgetter("source"), attrgetter("id"), attrgetter("topic")


def passed_over(row: OutboxRow, partition: int, published: Mapping[Partition, tuple[str, int]]) -> bool:
    """Whether a row is in Kafka already: its partition's last record, found at start (`published`), names its
    place header and a place at or after its own (rows of a partition are published in their source's order)."""
    last = published.get((row.topic, partition))
    return last is not None and row.id <= last[1] and place_header(row) == last[0]


class Tail(NamedTuple):
    """An output partition's last record, as the relay finds it at start: the header its place is in
    (OUTBOX_HEADER or POSITION_HEADER), that place, and its record id (None: a record without one)."""

    header: str
    place: int
    record_id: str | None


def tail_in_headers(headers: Iterable[tuple[str, bytes | None]]) -> Tail | None:
    """A published record's place and record id; None on a record that names no place (place_in_headers)."""
    headers = list(headers)
    place = place_in_headers(headers)
    if place is None:
        return None
    record_id = next((value for name, value in headers if name == RECORD_ID_HEADER), None)
    try:
        return Tail(*place, record_id.decode() if record_id else None)
    except UnicodeDecodeError:  # not one of the relay's ids
        return Tail(*place, None)


def place_in_headers(headers: Iterable[tuple[str, bytes | None]]) -> tuple[str, int] | None:
    """The place a published record's headers name: (its header, the id there); None on a record without one, or
    whose header holds no id (another producer's record: the store's cursors say what was published)."""
    for name, value in headers:
        if name in (OUTBOX_HEADER, POSITION_HEADER):
            # an id below 2^63: 19 digits at most (int() of thousands refuses to run)
            return (name, int(value)) if value and len(value) <= 19 and value.isascii() and value.isdigit() else None
    return None


async def no_checkpoint(step: str) -> None:
    """Production: nothing happens between steps."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the loops are built from. backstop.service.app.kafka_runtime() gives the real ones; the simulator gives
    in-memory ones and a `checkpoint` that checks invariants and injects faults after every step."""

    consumer: Callable[[Settings], Consumer]
    publisher: Callable[[Settings], Publisher]
    background: Callable[[str, dict[str, str]], BackgroundWork[Any]]
    offload: Offload
    checkpoint: Callable[[str], Awaitable[None]] = no_checkpoint
