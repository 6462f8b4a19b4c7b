"""The database in memory: MemoryDatabase holds what a PostgreSQL server would (committed transactions only, so it
outlives a crash of the process), and MemoryStore is one process's session with it, implementing the LedgerStore
port as backstop.adapters.postgres.store does: the batch transaction all or nothing, unique keys enforced, the
journal head fenced, append-only tables that nothing here can change, a lock per id that dies with its session.

Projection values are kept as text, as PostgreSQL's COPY sends them (None for NULL), so rows written by a batch
and rows written by a refresh compare alike.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from backstop.adapters.postgres.store import (
    OUTBOX,
    TABLE_SOURCES,
    Head,
    HeadMoved,
    Lease,
    LockLost,
    OutboxRow,
    RefreshCopy,
    StaleRow,
    journal_relay_row,
    refuse_journal_gap,
)
from backstop.core.dedupe import HeldRow
from backstop.core.snapshot import SNAPSHOT_VERSION
from backstop.pipeline.copy_text import copy_rows
from backstop.pipeline.ingest import (
    BatchResult,
    DeadLetter,
    JournalRow,
    outbox_messages,
    output_json,
    output_values,
    posting_records,
)
from backstop.pipeline.projections import Projections, Rows
from backstop.pipeline.topics import TopicNames
from backstop.service.ports import Partition, RowList


@dataclass(frozen=True, slots=True)
class _MemoryLease:
    store: Any  # the MemoryStore holding the lock
    lock_id: int

    async def check(self) -> None:
        if self.store.db.locks.get(self.lock_id) is not self.store:
            raise LockLost(f"the session holding lock {self.lock_id} ended")

GENESIS = "0" * 64
HELD_KEYS_CHUNK = 65_536  # key digests per chunk handed to held_keys' sink, as a COPY streams them
POSITION_KEY = 3  # a position row's key: (account_id, symbol, position_side), as in PostgreSQL
Row = tuple[str | None, ...]
_CHAINED = ("id", "hash", "seq")  # what the memory store keeps of a fund-ledger entry or an ADL event, beside its JSON


class IntegrityError(Exception):
    """A unique key would be broken: the transaction writes nothing (PostgreSQL's unique_violation)."""


class SessionGone(Exception):
    """The process this session belonged to has died."""


def _block_records(result: BatchResult) -> int:
    """The records of a batch's quantile block (stored as one row, before its dead letters)."""
    return result.quantile_block.count(b"\n")


def _text(values: Iterable[Any]) -> Row:
    return tuple(None if value is None else str(value) for value in values)


def _rows(rows: Rows) -> list[Row]:
    """Projection rows as text, as PostgreSQL's COPY sends them."""
    return copy_rows(rows) if isinstance(rows, bytes) else [_text(row) for row in rows]


@dataclass(slots=True)
class MemoryDatabase:
    journal: list[JournalRow] = field(default_factory=list)
    consumed_offsets: dict[Partition, int] = field(default_factory=dict)
    input_topics: dict[str, str] = field(default_factory=dict)  # topic -> its id when the service first read it
    engine_head: dict[str, Any] | None = None
    fund_ledger: list[tuple[str, str, int, str]] = field(default_factory=list)  # (id, hash, seq, record)
    adl_events: list[tuple[str, str, int, str]] = field(default_factory=list)
    findings: dict[str, int] = field(default_factory=dict)  # id -> seq
    applied_ids: dict[bytes, HeldRow] = field(default_factory=dict)  # key digest -> (key, content digest, seq)
    dead_letter: list[DeadLetter] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)  # a row per record, ids 1, 2, 3 ...
    outbox_rows: list[int] = field(default_factory=list)  # the last id of each stored row (a block: its records')
    relay_cursor: int = 0
    # what the relay reads of the journal, fund ledger, ADL events and postings tables (their topic is the relay's
    # to name), and its cursor in each
    relayed: dict[str, list[OutboxRow]] = field(default_factory=lambda: {s: [] for s in TABLE_SOURCES})
    relay_cursors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLE_SOURCES, 0))
    posting_blocks: list[int] = field(default_factory=list)  # the last position of each stored block (a batch's)
    snapshots: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    wallets: dict[tuple[str | None, ...], Row] = field(default_factory=dict)
    positions: dict[tuple[str | None, ...], Row] = field(default_factory=dict)
    funds: dict[str | None, Row] = field(default_factory=dict)
    fund_lots: list[Row] = field(default_factory=list)
    adl_queue: list[Row] = field(default_factory=list)
    locks: dict[int, MemoryStore] = field(default_factory=dict)
    transactions: int = 0  # committed, of any kind
    keys: dict[str, set[Any]] = field(default_factory=lambda: {
        "journal": set(), "journal_source": set(), "fund_ledger": set(), "adl_events": set(), "findings": set(),
        "outbox": set(), "dead_letter": set(), "applied_ids": set()})  # the unique keys present, per table
    _released: asyncio.Event | None = None

    def released(self) -> asyncio.Event:
        if self._released is None:
            self._released = asyncio.Event()
        return self._released


@dataclass(frozen=True, slots=True)
class HandedRows:
    """What one batch's commit wrote to the relay's sources (ports.Committed): the rows as unpublished reads them,
    the tables' without their topic (given by the relay's topic names)."""

    before: dict[str, int]
    rows: list[OutboxRow]

    @property
    def after(self) -> dict[str, int]:
        return {**self.before, **{row.source: row.id for row in self.rows}}

    def relay_rows(self, topics: TopicNames) -> RowList:
        return RowList(row if row.source == OUTBOX else row._replace(topic=topics.of_source(row.source))
                       for row in self.rows)


def _whole_rows(rows: list[OutboxRow], ends: list[int], after: int, limit: int) -> Iterator[OutboxRow]:
    """A source stored in blocks (the outbox, the postings) as PostgreSQL reads it: the rows after `after` of the
    stored rows (`ends`: the last id of each) with fewer than `limit` records before them, a block counted whole;
    `rows` holds a row per record, ids 1, 2, 3 ..."""
    index = bisect.bisect_right(ends, after)
    start, before = ends[index - 1] if index else 0, 0
    for end in ends[index:index + limit]:
        if before >= limit:
            break
        yield from (row for row in rows[start:end] if row.id > after)
        start, before = end, before + end - start


class MemoryStore:
    """One process's session. `interpose` runs at named points of each call (the simulator makes a commit slow,
    fail before or after it lands, or kills the process there)."""

    def __init__(self, database: MemoryDatabase,
                 interpose: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.db = database
        self._interpose = interpose
        self.alive = True

    async def _at(self, point: str) -> None:
        if not self.alive:
            raise SessionGone(point)
        if self._interpose is not None:
            await self._interpose(point)
        if not self.alive:
            raise SessionGone(point)

    def kill(self) -> None:
        """The process died: its session ends and its locks with it."""
        self.alive = False
        for lock_id, holder in list(self.db.locks.items()):
            if holder is self:
                del self.db.locks[lock_id]
        self.db.released().set()

    async def close(self) -> None:
        self.kill()

    # ---------------------------------------------------------------- reading state back
    async def head(self) -> Head:
        await self._at("head")
        db = self.db
        row = db.engine_head
        if row is None:
            return Head(0, "", GENESIS, GENESIS, 0, 0, len(db.fund_ledger), len(db.adl_events))
        return Head(row["seq"], row["head_hash"], row["ledger_head"], row["adl_head"], row["duplicates"],
                    row["rejected"], len(db.fund_ledger), len(db.adl_events))

    async def offsets(self) -> dict[Partition, int]:
        await self._at("offsets")
        return dict(self.db.consumed_offsets)

    async def input_topic_ids(self) -> dict[str, str]:
        await self._at("input_topic_ids")
        return dict(self.db.input_topics)

    async def adopt_input_topics(self, ids: Mapping[str, str]) -> None:
        await self._at("adopt_input_topics")
        self.db.input_topics.update(ids)
        self.db.transactions += 1

    async def latest_snapshot(self) -> tuple[int, dict[str, Any]] | None:
        """The latest snapshot this backstop can restore (one of an older snapshot version is passed over)."""
        await self._at("latest_snapshot")
        for seq in sorted(self.db.snapshots, reverse=True):
            document = orjson.loads(self.db.snapshots[seq][1])
            engine = document.get("engine") if isinstance(document, dict) else None
            if isinstance(engine, dict) and str(engine.get("snapshot_version")) == str(SNAPSHOT_VERSION):
                return seq, document
        return None

    # ---------------------------------------------------------------- held identities (docs/design.md §4.1)
    async def held(self, keys: list[bytes]) -> list[HeldRow]:
        await self._at("held")
        rows = self.db.applied_ids
        return [rows[key] for key in dict.fromkeys(keys) if key in rows]

    async def held_estimate(self) -> int:
        await self._at("held_estimate")
        return len(self.db.applied_ids)

    async def held_keys(self, sink: Callable[[bytes], None]) -> None:
        await self._at("held_keys")
        keys = list(self.db.applied_ids)
        for start in range(0, len(keys), HELD_KEYS_CHUNK):
            sink(b"".join(keys[start:start + HELD_KEYS_CHUNK]))

    async def hold(self, rows: list[HeldRow]) -> None:
        """Identities a rebuild re-applied: each one not held yet is inserted (ON CONFLICT DO NOTHING)."""
        await self._at("hold")
        new = [row for row in rows if row[0] not in self.db.applied_ids]
        if new:
            self.db.applied_ids.update((row[0], row) for row in new)
            self.db.keys["applied_ids"].update(row[0] for row in new)
            self.db.transactions += 1

    async def journal(self, *, after_seq: int = 0, chunk: int = 10_000) -> AsyncIterator[tuple[int, bytes]]:
        last = after_seq
        while True:
            await self._at("journal")
            rows = [row for row in self.db.journal if row.seq > last][:chunk]
            refuse_journal_gap(last, [row.seq for row in rows])
            for row in rows:
                yield row.seq, row.payload
            if len(rows) < chunk:
                return
            last = rows[-1].seq

    async def records(self, table: str) -> list[dict[str, Any]]:
        if table not in ("fund_ledger", "adl_events"):
            raise ValueError(table)
        return [orjson.loads(record) for *_, record in getattr(self.db, table)]

    async def stored_hashes(self) -> dict[str, Any]:
        row = self.db.engine_head
        if row is None:
            return {"seq": 0, "head_hash": None, "state_hash": None, "state_hash_seq": None}
        return {key: row[key] for key in ("seq", "head_hash", "state_hash", "state_hash_seq")}

    # ---------------------------------------------------------------- the batch transaction
    async def commit(self, *, expected_seq: int, result: BatchResult, head: Head, projections: Projections,
                     expected_counts: tuple[int, int] | None = None) -> HandedRows:
        await self._at("commit")
        db = self.db
        stored = db.engine_head or {}
        current = (stored.get("seq", 0), stored.get("duplicates", 0), stored.get("rejected", 0))
        if current[0] != expected_seq or (expected_counts is not None and current[1:] != expected_counts):
            raise HeadMoved(f"journal head moved: expected seq {expected_seq} {expected_counts}, found {current}: "
                            f"another writer is active")
        ledger_rows = [(*output_values(e, _CHAINED), output_json(e).decode()) for e in result.fund_entries]
        adl_rows = [(*output_values(e, _CHAINED), output_json(e).decode()) for e in result.adl_events]
        added, dead_letters = self._new_keys(result, head, ledger_rows, adl_rows)
        # everything checked: the transaction lands whole, with no await in between
        before = {OUTBOX: db.outbox[-1].id if db.outbox else 0, "journal": expected_seq,
                  **{source: len(db.relayed[source]) for source in TABLE_SOURCES if source != "journal"}}
        for table, keys in added.items():
            db.keys[table] |= keys
        db.journal.extend(result.journal_rows())
        db.fund_ledger.extend(ledger_rows)
        db.adl_events.extend(adl_rows)
        db.findings.update(output_values(f, ("id", "seq")) for f in result.findings)
        db.applied_ids.update((row[0], row) for row in result.held_ids)
        db.dead_letter.extend(dead_letters)
        first_id = db.outbox[-1].id + 1 if db.outbox else 1
        messages = outbox_messages(result)
        db.outbox.extend(OutboxRow(first_id + i, m.topic, m.key, m.record_id, m.payload.decode())
                         for i, m in enumerate(messages))
        blocked = _block_records(result)  # one stored row, its records' ids taken together; the rest one row each
        db.outbox_rows.extend([first_id + blocked - 1] if blocked else [])
        db.outbox_rows.extend(range(first_id + blocked, first_id + len(messages)))
        self._relayed(result)
        handed = HandedRows(before, [*db.outbox[len(db.outbox) - len(messages):], *(
            row for source in TABLE_SOURCES for row in db.relayed[source][before[source]:])])
        self._project(projections)
        db.consumed_offsets.update(result.next_offsets)
        state = db.engine_head or {"state_hash": None, "state_hash_seq": None}
        db.engine_head = {**state, "seq": head.seq, "head_hash": head.head_hash, "ledger_head": head.ledger_head,
                          "adl_head": head.adl_head, "duplicates": head.duplicates, "rejected": head.rejected}
        db.transactions += 1
        await self._at("committed")
        return handed

    def _relayed(self, result: BatchResult) -> None:
        """The batch's rows of each table source, as the PostgreSQL store reads them for the relay."""
        relayed = self.db.relayed
        journal = relayed["journal"]
        journal.extend(OutboxRow(row.seq, "", *journal_relay_row(row), "journal") for row in result.journal_rows())
        for source, records, key in (("fund_ledger", result.fund_entries, "fund_id"),
                                     ("adl_events", result.adl_events, "account_id"),
                                     ("postings", posting_records(result), "asset")):
            rows, first = relayed[source], len(relayed[source]) + 1  # positions 1, 2, 3 ...
            rows.extend(OutboxRow(first + i, "", str(output_values(r, (key,))[0]),
                                  str(output_values(r, ("id",))[0]), output_json(r).decode(), source)
                        for i, r in enumerate(records))
            if source == "postings" and records:  # one stored row (migration 0017)
                self.db.posting_blocks.append(len(rows))

    def _new_keys(self, result: BatchResult, head: Head, ledger_rows: list[tuple[str, str, int, str]],
                  adl_rows: list[tuple[str, str, int, str]]) -> tuple[dict[str, set[Any]], list[DeadLetter]]:
        """The unique keys the batch adds, per table (IntegrityError if one is present already), and the dead
        letters to insert (ON CONFLICT DO NOTHING: one already there is skipped)."""
        keys = self.db.keys
        added: dict[str, set[Any]] = {name: set() for name in keys}

        def add(table: str, key: Any) -> None:
            if key in keys[table] or key in added[table]:
                raise IntegrityError(f"{table}: {key!r} already present")
            added[table].add(key)

        for row in result.journal_rows():
            add("journal", row.seq)
            add("journal_source", (row.source_topic, row.source_partition, row.source_offset))
        seqs = keys["journal"] | added["journal"]
        for table, rows, position in (("fund_ledger", ledger_rows, head.ledger_position),
                                      ("adl_events", adl_rows, head.adl_position)):
            stored = len(getattr(self.db, table))
            if rows and position - len(rows) != stored:
                raise IntegrityError(f"{table}: position {position - len(rows) + 1} does not follow {stored}")
            for entry_id, entry_hash, seq, _ in rows:
                add(table, entry_id)
                add(table, entry_hash)
                if seq not in seqs:
                    raise IntegrityError(f"{table}: seq {seq} is not in the journal")
        for finding in result.findings:
            add("findings", output_values(finding, ("id",))[0])
        for held_key, _, seq in result.held_ids:  # applied_ids' primary key: an identity held twice fails the batch
            add("applied_ids", held_key)
            if seq not in seqs:
                raise IntegrityError(f"applied_ids: seq {seq} is not in the journal")
        for message in outbox_messages(result)[_block_records(result):]:  # a block's records have no unique key
            add("outbox", message.record_id)
        kept = []
        for letter in result.dead_letters:
            key = (letter.source_topic, letter.source_partition, letter.source_offset)
            if key not in keys["dead_letter"] and key not in added["dead_letter"]:
                added["dead_letter"].add(key)
                kept.append(letter)
        return added, kept

    def _project(self, projections: Projections) -> None:
        db = self.db
        for text in _rows(projections.wallets):
            db.wallets[text[:2]] = text
        for account, symbol, position_side in _rows(projections.closed_positions):
            db.positions.pop((account, symbol, position_side), None)
        for text in _rows(projections.positions):
            db.positions[text[:POSITION_KEY]] = text
        for text in _rows(projections.funds):
            db.funds[text[0]] = text
        if projections.lots is not None:
            db.fund_lots = _rows(projections.lots)
        if projections.adl_queue is not None:
            db.adl_queue = _rows(projections.adl_queue)

    # ---------------------------------------------------------------- written behind the batches
    async def write_refresh(self, refresh: RefreshCopy) -> list[StaleRow]:
        """Rows updated where only earlier batches wrote them (one as of the refresh's seq holds its values); no row
        created; position rows still older than the refresh (closed by then) removed and returned; the ADL queue
        replaced."""
        await self._at("write_refresh")
        db = self.db
        for table, chunks, key in ((db.wallets, refresh.wallets, 2), (db.positions, refresh.positions, POSITION_KEY)):
            for chunk in chunks:
                for row in copy_rows(chunk):
                    stored = table.get(row[:key])
                    if stored is not None and int(stored[-1] or 0) < int(row[-1] or 0):
                        table[row[:key]] = row
        stale = sorted(StaleRow(str(key[0]), str(key[1]), str(key[2]), int(row[-1] or 0))
                       for key, row in db.positions.items()
                       if int(row[-1] or 0) < refresh.seq)
        for gone in stale:
            del db.positions[(gone.account_id, gone.symbol, gone.position_side)]
        db.adl_queue = copy_rows(refresh.adl_queue)
        db.transactions += 1
        return stale

    async def write_snapshot(self, seq: int, state_hash: str, document: bytes) -> None:
        await self._at("write_snapshot")
        if seq in self.db.snapshots:
            raise IntegrityError(f"snapshots: seq {seq} already present")
        self.db.snapshots[seq] = (state_hash, document)
        self.db.transactions += 1

    async def record_state_hash(self, seq: int, value: str) -> None:
        await self._at("record_state_hash")
        head = self.db.engine_head
        if head is not None and head["seq"] == seq:
            head["state_hash"], head["state_hash_seq"] = value, seq
            self.db.transactions += 1

    # ---------------------------------------------------------------- outbox
    async def unpublished(self, limit: int, topics: TopicNames) -> list[OutboxRow]:
        await self._at("unpublished")
        db = self.db
        cursor = db.relay_cursor
        rows = list(_whole_rows(db.outbox, db.outbox_rows, cursor, limit))
        for source in TABLE_SOURCES:
            after, topic = db.relay_cursors[source], topics.of_source(source)
            found = _whole_rows(db.relayed[source], db.posting_blocks, after, limit) if source == "postings" \
                else db.relayed[source][after:after + limit]
            rows.extend(row._replace(topic=topic) for row in found)
        return rows

    async def relay_read(self, limit: int, topics: TopicNames) -> RowList:
        return RowList(await self.unpublished(limit, topics))

    async def mark_published(self, up_to: Mapping[str, int]) -> None:
        await self._at("mark_published")
        db = self.db
        for source, last in up_to.items():
            if source == OUTBOX:
                db.relay_cursor = max(db.relay_cursor, last)
            else:
                db.relay_cursors[source] = max(db.relay_cursors[source], last)

    async def published_places(self) -> dict[str, int]:
        await self._at("published_places")
        return {OUTBOX: self.db.relay_cursor, **self.db.relay_cursors}

    async def outbox_backlog(self) -> int:
        await self._at("outbox_backlog")
        db = self.db
        cursor = db.relay_cursor
        return sum(1 for row in db.outbox if row.id > cursor) + sum(
            len(db.relayed[source]) - db.relay_cursors[source] for source in TABLE_SOURCES)

    async def outbox_places(self, tails: Mapping[str, tuple[str, int]], after: int) -> tuple[dict[str, int], int]:
        await self._at("outbox_places")
        outbox = self.db.outbox
        return ({row.record_id: row.id for row in outbox if row.record_id in tails
                 and (row.id == tails[row.record_id][1] or (row.id > after and row.topic == tails[row.record_id][0]))},
                outbox[-1].id if outbox else 0)

    def end_session(self, lock_id: int) -> None:
        """What a killed session or a lost connection does to PostgreSQL's advisory lock: it is gone, and a standby
        waiting for it takes it."""
        if lock_id in self.db.locks:
            del self.db.locks[lock_id]
            self.db.released().set()

    # ---------------------------------------------------------------- one holder per lock
    @contextlib.asynccontextmanager
    async def hold_lock(self, lock_id: int) -> AsyncIterator[Lease]:
        db = self.db
        while True:
            await self._at("lock")
            if lock_id not in db.locks:
                break
            released = db.released()
            released.clear()
            await released.wait()
        db.locks[lock_id] = self
        try:
            yield _MemoryLease(self, lock_id)
        finally:
            if db.locks.get(lock_id) is self:
                del db.locks[lock_id]
                db.released().set()
