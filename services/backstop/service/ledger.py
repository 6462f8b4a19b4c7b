"""The money path: Kafka batches -> merge -> engine -> one PostgreSQL transaction per batch.

Offsets live in PostgreSQL, committed with the rows they produced; Kafka's committed offsets are never used
(no consumer group: partitions are assigned explicitly). On start, and after any error, the engine is rebuilt
from PostgreSQL (latest snapshot + journal tail) and the consumer seeks to the stored offsets, so a crash at any
point loses nothing and applies nothing twice. One processor per database holds an advisory lock; a second one
waits as a standby.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from backstop import faults
from backstop.adapters.postgres.store import WRITER_LOCK, Head, RefreshCopy, Store
from backstop.core import ledger
from backstop.core.engine import Engine
from backstop.core.errors import InvariantViolation
from backstop.core.hashing import canonical_json
from backstop.core.processor import Processor
from backstop.core.snapshot import restore, state_document, state_hash
from backstop.pipeline import projections
from backstop.pipeline.held_ids import ServiceIds
from backstop.pipeline.ingest import (
    BatchResult,
    Consumed,
    PoisonRecord,
    Where,
    batch_identities,
    ingest_batch,
    replay_journal,
    resolve_identities,
)
from backstop.pipeline.merge import Merger
from backstop.pipeline.topics import TopicNames
from backstop.service import metrics
from backstop.service.forked import Background
from backstop.service.supervision import SupervisedLoop
from backstop.settings import Settings

log = logging.getLogger("backstop.ledger")
ADL_INDEX_QUIET_S = 0.1  # input quiet this long: refresh the ADL index ahead of the next deleverage
ADL_INDEX_SLICE = 10_000  # caught up with a backlog of touched accounts: this many (~0.1 s) per batch


@dataclass(slots=True)
class Progress:
    """What the processor has done since it started (for health and tests)."""

    seq: int = 0
    batches: int = 0
    ready: bool = False
    last_error: str | None = None
    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    adl_index_seq: int = 0  # the seq at which the ADL index was last refreshed while the input was idle
    refreshed_seq: int = 0  # the seq of the last full projection refresh written (ADL queue, every position)
    snapshot_seq: int = 0  # the seq of the last snapshot written
    background_errors: dict[str, str] = field(default_factory=dict)  # forked work that failed, by kind


Snapshot = tuple[int, str, bytes]  # (seq, state hash, canonical JSON of the engine's state; identities: PostgreSQL)


def snapshot_of(processor: Processor) -> Snapshot:
    engine = processor.engine
    document = {"engine": state_document(engine)}
    return engine.last_seq, state_hash(engine), canonical_json(document)


class WriteBehind:
    """Writes what forked children computed (backstop.service.forked) beside the batch commits, one write at a
    time, in transactions of its own: a full refresh is ~2 s of PostgreSQL's time at 100,000 positions, which in a
    batch's transaction held up every batch behind it. Of work that lands while a write runs, the newest of each
    kind waits for the next. A snapshot at seq S is written only once batch S has committed (recovery starts
    from the latest snapshot); a failed write fails the loop, as a failed commit does."""

    def __init__(self, store: Store, progress: Progress) -> None:
        self.store, self.progress = store, progress
        self._refresh: RefreshCopy | None = None
        self._snapshot: Snapshot | None = None
        self._task: asyncio.Task[None] | None = None

    async def hand(self, refresh: RefreshCopy | None, snapshot: Snapshot | None) -> None:
        if refresh is not None:
            self._refresh = refresh
        if snapshot is not None:
            self._snapshot = snapshot
        if self._task is not None:
            if not self._task.done():
                return
            await self._task  # raises what the write raised
            self._task = None
        snapshot = self._snapshot
        ready = snapshot if snapshot is not None and snapshot[0] <= self.progress.seq else None  # batch S committed
        if self._refresh is not None or ready is not None:
            self._task = asyncio.create_task(self._write(self._refresh, ready))
            self._refresh = None
            self._snapshot = None if ready is not None else snapshot

    async def _write(self, refresh: RefreshCopy | None, snapshot: Snapshot | None) -> None:
        if refresh is not None:
            await self.store.write_refresh(refresh)
            self.progress.refreshed_seq = refresh.seq
        if snapshot is not None:
            await self.store.write_snapshot(*snapshot)
            self.progress.snapshot_seq = snapshot[0]

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()  # a full refresh is rewritten at the next start; a snapshot is only a shortcut


async def rebuild(store: Store, *, check_conservation: bool) -> tuple[Processor, Head]:
    """The engine as PostgreSQL last committed it: latest snapshot, then the journal after it; the identities it
    holds are PostgreSQL's (applied_ids), behind a filter loaded here."""
    head = await store.head()
    ids = ServiceIds(await store.held_estimate())
    await store.held_keys(ids.load)
    snapshot = await store.latest_snapshot()
    if snapshot is None:
        processor = Processor(Engine(check_conservation=check_conservation, ids=ids))
        after = 0
    else:
        after, document = snapshot
        processor = Processor(restore(document["engine"], check_conservation=check_conservation, ids=ids))
    await replay_journal(processor, store.journal(after_seq=after), store.held)
    await store.hold(ids.drain())  # a no-op, but for a journal written before applied_ids existed
    processor.duplicates, processor.rejected = head.duplicates, head.rejected
    if head.seq and processor.engine.head_hash != head.head_hash:
        raise InvariantViolation(f"rebuilt head hash {processor.engine.head_hash} != stored {head.head_hash} at "
                                 f"seq {head.seq}")
    return processor, head


class LedgerProcessor(SupervisedLoop):
    name = "ledger"
    lock_id = WRITER_LOCK

    def __init__(self, settings: Settings, store: Store, on_commit: Callable[[], None] = lambda: None) -> None:
        super().__init__(store)
        self.settings = settings
        self.topics = TopicNames(settings.topic_prefix)
        self.progress = Progress()
        self.on_commit = on_commit  # wakes a relay in this process: outbox rows are waiting
        self.quarantine: dict[Where, str] = {}  # records the engine raised on: dead-lettered when met again

    def on_error(self, error: Exception) -> None:
        self.progress.ready = False
        self.progress.last_error = f"{type(error).__name__}: {error}"
        if isinstance(error, PoisonRecord):
            self.quarantine[error.where] = error.reason

    async def run_locked(self) -> None:
        settings = self.settings
        processor, head = await rebuild(self.store, check_conservation=settings.check_conservation)
        offsets = await self.store.offsets()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed", client_id="backstop-ledger",
            max_partition_fetch_bytes=4 << 20, fetch_max_bytes=32 << 20, request_timeout_ms=30_000,
            ssl_context=settings.ssl_context(), **settings.kafka_client_options())
        await consumer.start()
        # Whole-state work runs in forked children (backstop.service.forked), off the batches' path.
        refreshing: Background[RefreshCopy] = Background("projection refresh", self.progress.background_errors)
        snapshotting: Background[Snapshot] = Background("snapshot", self.progress.background_errors)
        behind = WriteBehind(self.store, self.progress)
        committing: asyncio.Task[None] | None = None
        try:
            merger = await self._assign(consumer, offsets)
            positions = (head.ledger_position, head.adl_position)
            # Projection rows still waiting when the last run stopped were lost with it: rewrite every row.
            if processor.engine.last_seq:
                await self._write_projections(processor, positions, None)
            self.progress.seq = processor.engine.last_seq
            self.progress.ready = True
            log.info("ledger processor ready at seq %d", processor.engine.last_seq)
            cadence = projections.RefreshCadence(settings.adl_refresh_events, settings.adl_refresh_event_ms,
                                                 processor.engine.last_seq)
            state_hashed_at = -1
            quiet_since: float | None = None  # when the input last went quiet (monotonic; None: not quiet)
            touched = projections.Touched()
            # Batch N commits while batch N+1 is applied in memory. If a commit fails, the loop fails and the
            # supervisor rebuilds the engine from PostgreSQL, so the in-memory batch that ran ahead is dropped.
            while not self.stopping:
                starved = merger.starved() if merger.full() else None
                if starved is None or starved:
                    fetched = await self._fetch(consumer, starved)
                    for tp, records in fetched.items():
                        merger.add(Consumed(r.topic, r.partition, r.offset, r.key, r.value) for r in records)
                        metrics.EVENTS_IN.labels(self.topics.type_of(tp.topic) or "unknown").inc(len(records))
                    for tp in consumer.assignment():
                        position = await consumer.position(tp)
                        merger.advance((tp.topic, tp.partition), position)
                        highwater = consumer.highwater(tp)
                        if highwater is not None:
                            merger.set_end((tp.topic, tp.partition), highwater)
                            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(highwater - position)
                batch = merger.release(settings.batch_max_records)
                if not batch:
                    if committing is not None:  # nothing new: let the last commit land before idling
                        await committing
                        committing = None
                    if touched:  # rows that waited while catching up, and the input went quiet: write them now
                        await self._write_projections(processor, positions, touched)
                        touched = projections.Touched()
                    await behind.hand(await refreshing.take(), await snapshotting.take())
                    self._start_due(processor, refreshing, snapshotting)  # work due while the last child ran
                    now = time.monotonic()
                    quiet_since = now if quiet_since is None else quiet_since
                    # Quiet for a moment: the ADL index catches up with the trading so far now, not in the next
                    # deleverage's path. Not at every pause while catching up: a busy account's rows would be
                    # rewritten at each one, where the next deleverage rewrites them once (9% of the service rate).
                    if now - quiet_since >= ADL_INDEX_QUIET_S and await asyncio.to_thread(
                            processor.engine.refresh_adl_index):
                        self.progress.adl_index_seq = processor.engine.last_seq
                    quiet_long_enough = now - quiet_since >= settings.state_hash_quiet_ms / 1000
                    if state_hashed_at != processor.engine.last_seq and quiet_long_enough:  # once per quiet spell
                        state_hashed_at = processor.engine.last_seq  # in a thread: the relay keeps publishing
                        digest = await asyncio.to_thread(state_hash, processor.engine)
                        await self.store.record_state_hash(state_hashed_at, digest)
                    continue
                quiet_since = None
                started = time.perf_counter()
                expected = processor.engine.last_seq
                # The engine works in a thread so the previous batch's commit keeps the event loop (and its socket)
                # moving meanwhile; only this loop touches the engine, one step at a time.
                await resolve_identities(processor, batch_identities(batch, self.topics), self.store.held,
                                         committed_seq=self.progress.seq)
                result = await asyncio.to_thread(ingest_batch, processor, batch, self.topics, self.quarantine)
                applied_at = time.perf_counter()
                engine = processor.engine
                caught_up = merger.drained()
                refresh_due = cadence.due(result, engine.last_seq, caught_up=caught_up)
                refreshing.wanted |= refresh_due
                every = settings.snapshot_every_events
                snapshotting.wanted |= bool(every and result.journal and engine.last_seq // every > expected // every)
                self._start_due(processor, refreshing, snapshotting)  # before anything else can move the engine
                touched.add(result)
                write_touched = refresh_due or caught_up  # catching up, touched rows wait (projections.Touched)
                positions = (positions[0] + len(result.fund_entries), positions[1] + len(result.adl_events))
                new_head = self._head(processor, positions)
                rows = await asyncio.to_thread(projections.build, engine, result, refresh_all=False,
                                               touched=touched if write_touched else projections.Touched())
                if write_touched:
                    touched = projections.Touched()
                balances = {fund_id: float(engine.ledger.balance(ledger.fund(fund_id))) for fund_id in engine.funds}
                projected_at = time.perf_counter()
                if committing is not None:
                    await committing
                await behind.hand(await refreshing.take(), await snapshotting.take())
                committing = asyncio.create_task(self._commit(
                    expected, result, new_head, rows, balances, started, len(batch),
                    {"apply": applied_at - started, "project": projected_at - applied_at}))
                # Caught up after a backlog (a restart, a burst): the index catches up a slice per batch, beside the
                # commit, rather than all of it (~1 s per 100,000 accounts) in the path of the first deleverage; a
                # live stream seldom pauses for ADL_INDEX_QUIET_S. Small backlogs are left to the deleverage.
                if caught_up and engine.adl_index_backlog() >= ADL_INDEX_SLICE:
                    await asyncio.to_thread(engine.refresh_adl_index, ADL_INDEX_SLICE)
            if committing is not None:  # a clean stop lands the batch already applied
                await committing
        finally:
            refreshing.stop()
            snapshotting.stop()
            behind.stop()
            if committing is not None and not committing.done():
                committing.cancel()
            self.progress.ready = False
            await consumer.stop()

    @staticmethod
    def _start_due(processor: Processor, refreshing: Background[RefreshCopy],
                   snapshotting: Background[Snapshot]) -> None:
        engine = processor.engine
        refreshing.start_if_wanted(lambda: RefreshCopy.of(projections.full_refresh(engine)))
        snapshotting.start_if_wanted(lambda: snapshot_of(processor))

    async def _write_projections(self, processor: Processor, positions: tuple[int, int],
                                 touched: projections.Touched | None) -> None:
        """Projection rows alone, in their own transaction: `touched`, or every row (None)."""
        engine = processor.engine
        rows = await asyncio.to_thread(projections.build, engine, BatchResult(), refresh_all=touched is None,
                                       touched=projections.Touched.everything(engine) if touched is None else touched)
        await self._commit(processor.engine.last_seq, BatchResult(), self._head(processor, positions), rows, {},
                           time.perf_counter(), 0, {})
        if touched is None:
            self.progress.refreshed_seq = engine.last_seq

    @staticmethod
    def _head(processor: Processor, positions: tuple[int, int]) -> Head:
        engine = processor.engine
        return Head(engine.last_seq, engine.head_hash, engine.ledger_head, engine.adl_head, processor.duplicates,
                    processor.rejected, *positions)

    async def _commit(self, expected: int, result: BatchResult, head: Head, rows: projections.Projections,
                      fund_balances: dict[str, float], started: float, consumed: int,
                      phases_ms: dict[str, float]) -> None:
        """One batch in one transaction; the head's expected seq guards against a second writer."""
        committing_at = time.perf_counter()
        async with self.store.pool.acquire() as connection:
            await self.store.write_batch(connection, expected_seq=expected, result=result, head=head,
                                         projections=rows)
        self.on_commit()
        faults.reached("after_commit")
        if consumed:  # not for rows written alone (projections that waited)
            self._observe(result, fund_balances, started, consumed, head.seq,
                          phases_ms={**phases_ms, "commit": time.perf_counter() - committing_at})

    async def _fetch(self, consumer: AIOKafkaConsumer, only: set[tuple[str, int]] | None
                     ) -> dict[TopicPartition, list[Any]]:
        """One fetch; with `only`, the buffer is full and just those partitions are read (backpressure on the
        others, which are paused for this fetch)."""
        settings = self.settings
        paused = [] if only is None else [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in only]
        if paused:
            consumer.pause(*paused)
        try:
            fetched: dict[TopicPartition, list[Any]] = await consumer.getmany(
                timeout_ms=settings.batch_max_wait_ms, max_records=settings.batch_max_records)
        finally:
            if paused:
                consumer.resume(*paused)
        return fetched

    async def _assign(self, consumer: AIOKafkaConsumer, offsets: dict[tuple[str, int], int]) -> Merger:
        partitions: list[TopicPartition] = []
        for topic in self.topics.inputs:
            available = await self._partitions(consumer, topic)
            partitions.extend(TopicPartition(topic, p) for p in sorted(available))
        consumer.assign(partitions)
        merger = Merger(self.topics, max_buffered=self.settings.merge_max_buffered)
        ends = await consumer.end_offsets(partitions) if partitions else {}
        for tp in partitions:
            position = offsets.get((tp.topic, tp.partition), 0)
            if position:
                consumer.seek(tp, position)
            else:
                await consumer.seek_to_beginning(tp)
                position = await consumer.position(tp)
            merger.assign((tp.topic, tp.partition), position)
            merger.set_end((tp.topic, tp.partition), ends.get(tp, 0))
        return merger

    @staticmethod
    async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
        for _ in range(50):
            found = consumer.partitions_for_topic(topic)
            if found:
                return set(found)
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"input topic {topic} does not exist (run `backstop topics create`)")

    def _observe(self, result: BatchResult, fund_balances: dict[str, float], started: float, consumed: int,
                 committed_seq: int, phases_ms: dict[str, float]) -> None:
        for row in result.journal:
            metrics.EVENTS_APPLIED.labels(row.type).inc()
        for record_type, count in result.duplicates.items():
            metrics.EVENTS_DUPLICATE.labels(record_type).inc(count)
        for letter in result.dead_letters:
            metrics.EVENTS_REJECTED.labels(letter.source_topic).inc()
        metrics.ADL_EVENTS.inc(len(result.adl_events))
        metrics.FUND_ENTRIES.inc(len(result.fund_entries))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_RECORDS.observe(consumed)
        for fund_id, balance in fund_balances.items():
            metrics.FUND_BALANCE.labels(fund_id).set(balance)
        metrics.JOURNAL_SEQ.set(committed_seq)
        self.progress.seq = committed_seq
        self.progress.batches += 1
        if result.journal or result.dead_letters:
            log.info(json.dumps({"event": "batch", "seq": committed_seq, "applied": len(result.journal),
                                 "dead_letters": len(result.dead_letters),
                                 "duplicates": sum(result.duplicates.values()), "adl_events": len(result.adl_events),
                                 "ms": round((time.perf_counter() - started) * 1000, 2),
                                 **{k: round(v * 1000, 2) for k, v in phases_ms.items()}}))


__all__ = ["LedgerProcessor", "Progress", "asyncpg", "rebuild"]
