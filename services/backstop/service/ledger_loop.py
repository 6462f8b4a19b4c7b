"""The money path: Kafka batches -> merge -> engine -> one PostgreSQL transaction per batch.

Offsets live in PostgreSQL, committed with the rows they produced; Kafka's committed offsets are never used
(no consumer group: partitions are assigned explicitly). On start, and after any error, the engine is rebuilt
from PostgreSQL (latest snapshot + journal tail) and the consumer seeks to the stored offsets, so a crash at any
point loses nothing and applies nothing twice. One processor per database holds an advisory lock; a second one
waits as a standby.

Each start is one LedgerRun, whose turns are named steps: fetch, merge, apply, project, commit, housekeeping
(docs/service-loop.md). The steps reach the outside only through the ports (backstop.service.ports), so the
simulator runs them on in-memory implementations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from backstop import faults
from backstop.adapters.postgres.store import WRITER_LOCK, Head, RefreshCopy
from backstop.core.errors import InvariantViolation
from backstop.engines import EngineName, runs_compiled
from backstop.pipeline import projections
from backstop.pipeline.ingest import BatchResult, Consumed, PoisonRecord, Where
from backstop.pipeline.merge import EventTimes, Merger, event_times
from backstop.pipeline.service_engine import ServiceEngine, Snapshot, fund_balances, open_service_engine
from backstop.pipeline.topics import TopicNames
from backstop.service import metrics, trace
from backstop.service.ports import (
    BackgroundWork,
    Committed,
    Consumer,
    EndsUnavailable,
    HeadMoved,
    InputGap,
    LedgerStore,
    Partition,
    Runtime,
)
from backstop.service.supervision import SupervisedLoop
from backstop.settings import Settings

log = logging.getLogger("backstop.ledger")
ADL_INDEX_QUIET_S = 0.1  # input quiet this long: refresh the ADL index ahead of the next deleverage
LEASE_IDLE_CHECK_S = 1.0  # input quiet: the writer's lock is checked this often (before each commit otherwise)
ADL_INDEX_SLICE = 10_000  # caught up with a backlog of touched accounts: this many per batch
GATHER_POLL_MS = 2  # a batch gathering during a commit: how long a fetch waits for more input before the loop looks


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
    refresh_due_seq: int = 0  # the seq at which a full refresh was last due: settled once refreshed_seq reaches it
    snapshot_seq: int = 0  # the seq of the last snapshot written
    background_errors: dict[str, str] = field(default_factory=dict)  # forked work that failed, by kind


@dataclass(slots=True)
class SnapshotCadence:
    """A snapshot at each multiple of `every` events (0: none), but no sooner than `per_position` events per position
    open at the last one (after a restart, counted from the one the engine was rebuilt from): a snapshot writes every
    position, so at a fixed count of events its cost grows with the state where the events' does not."""

    every: int
    per_position: int
    last_seq: int
    interval: int

    def due(self, result: BatchResult, expected_seq: int, seq: int, positions: Callable[[], int]) -> bool:
        every = self.every
        due = bool(every and result.journal_facts().rows and seq // every > expected_seq // every
                   and seq - self.last_seq >= self.interval)
        if due:
            self.last_seq, self.interval = seq, self.per_position * positions()
        return due


class WriteBehind:
    """Writes what forked children computed (backstop.service.forked) beside the batch commits, one write at a
    time, in transactions of its own: a full refresh is ~2 s of PostgreSQL's time at 100,000 positions, which in a
    batch's transaction held up every batch behind it. Of work that lands while a write runs, the newest of each
    kind waits for the next. A snapshot at seq S is written only once batch S has committed (recovery starts
    from the latest snapshot), and so is a refresh as of S (it leaves out the rows batch S writes, which its
    removal of older rows would otherwise take for closed); a failed write fails the loop, as a failed commit
    does."""

    def __init__(self, store: LedgerStore, progress: Progress) -> None:
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
        # each once batch S has committed: a refresh as of S leaves out the rows batch S writes
        snapshot, refresh, committed = self._snapshot, self._refresh, self.progress.seq
        ready = snapshot if snapshot is not None and snapshot[0] <= committed else None
        refresh = refresh if refresh is not None and refresh.seq <= committed else None
        if refresh is not None or ready is not None:
            self._task = asyncio.create_task(self._write(refresh, ready))
            self._refresh = None if refresh is not None else self._refresh
            self._snapshot = None if ready is not None else snapshot

    async def _write(self, refresh: RefreshCopy | None, snapshot: Snapshot | None) -> None:
        if refresh is not None:
            metrics.PROJECTION_ROWS_REMOVED.inc(len(await self.store.write_refresh(refresh)))
            self.progress.refreshed_seq = refresh.seq
        if snapshot is not None:
            await self.store.write_snapshot(*snapshot)
            self.progress.snapshot_seq = snapshot[0]

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()  # a full refresh is rewritten at the next start; a snapshot is only a shortcut


def _event_times(engine: EngineName) -> EventTimes:
    """The merge reads each fetched record's event time in Rust where the compiled engine runs (one call per fetch,
    no document a Python object), else in Python: the same rule (tests/differential/test_compiled_wire.py)."""
    if runs_compiled(engine):
        from backstop import _engine

        return _engine.event_times
    return event_times


async def rebuild(store: LedgerStore, *, check_conservation: bool, adl_quantiles: bool = True,
                  engine: EngineName = "compiled") -> tuple[ServiceEngine, Head, int]:
    """The engine (`engine`: compiled or reference) as PostgreSQL last committed it: latest snapshot (written under
    either engine), then the journal after it; the identities it holds are PostgreSQL's (applied_ids), behind a
    filter loaded here. Also the seq of that snapshot (0: none)."""
    head = await store.head()
    snapshot = await store.latest_snapshot()
    after, state = (0, None) if snapshot is None else (snapshot[0], snapshot[1]["engine"])
    opened = open_service_engine(engine, state, check_conservation=check_conservation, adl_quantiles=adl_quantiles,
                                 held_expected=await store.held_estimate())
    await store.held_keys(opened.load_held)
    await opened.replay(store.journal(after_seq=after), store.held)
    await store.hold(opened.drain_held())  # a no-op, but for a journal written before applied_ids existed
    opened.set_counters(head.duplicates, head.rejected)
    rebuilt = opened.head()
    if head.seq and rebuilt.head_hash != head.head_hash:
        raise InvariantViolation(f"rebuilt head hash {rebuilt.head_hash} != stored {head.head_hash} at seq {head.seq}")
    return opened, head, after


class Applied(NamedTuple):
    """A batch after the engine: what `project` builds the commit from."""

    expected_seq: int  # the journal head the batch extends
    expected_counts: tuple[int, int]  # and its duplicates and rejected
    result: BatchResult
    consumed: int  # records in the batch
    started: float  # perf_counter() readings, for metrics only
    applied_at: float


class PendingCommit(NamedTuple):
    """Everything one batch transaction writes, and what the metrics report of it."""

    expected_seq: int
    expected_counts: tuple[int, int]  # the head's duplicates and rejected the batch was applied after
    result: BatchResult
    head: Head
    rows: projections.Projections
    fund_balances: dict[str, float]
    started: float
    consumed: int  # 0: projection rows written alone
    phases_s: dict[str, float]
    stamps: dict[str, Any] | None = None  # the batch's stage stamps, when traced (backstop.service.trace)


class LedgerProcessor(SupervisedLoop):
    name = "ledger"
    lock_id = WRITER_LOCK

    def __init__(self, settings: Settings, store: LedgerStore, runtime: Runtime,
                 on_commit: Callable[[Committed | None], None] = lambda committed: None) -> None:
        super().__init__(store)
        self.settings = settings
        self.runtime = runtime
        self.topics = TopicNames(settings.topic_prefix)
        self.progress = Progress()
        self.on_commit = on_commit  # hands a relay in this process what each batch wrote for it to publish
        self.quarantine: dict[Where, str] = {}  # records the engine raised on: dead-lettered when met again
        self.current: LedgerRun | None = None  # the run holding the lock, if any

    def on_error(self, error: Exception) -> None:
        self.progress.ready = False
        self.progress.last_error = f"{type(error).__name__}: {error}"
        if isinstance(error, PoisonRecord):
            self.quarantine[error.where] = error.reason

    async def run_locked(self) -> None:
        settings = self.settings
        offsets = await self.store.offsets()
        self.progress.seq = (await self.store.head()).seq  # what /health says while the input holds the run,
        metrics.JOURNAL_SEQ.set(self.progress.seq)  # and the metrics
        consumer = self.runtime.consumer(self.settings)
        await consumer.start()
        run: LedgerRun | None = None
        try:
            # the input first: a topic created again or a stored offset outside its log (InputGap) stops the run
            # before a rebuild for nothing
            await self._same_topics(consumer, offsets)
            assigned = await consumer.assign(self.topics.inputs, offsets)
            engine, head, snapshot_seq = await rebuild(self.store, check_conservation=settings.check_conservation,
                                                       adl_quantiles=settings.adl_quantiles, engine=settings.engine)
            if await self.store.offsets() != offsets:  # read apart from the head: the writer before us had a batch
                raise HeadMoved("the consumed offsets moved while the engine was rebuilt: the last batch of the "
                                "writer before this one landed; rebuilding")  # in flight, which landed meanwhile
            self.progress.snapshot_seq = max(self.progress.snapshot_seq, snapshot_seq)  # one stored before a start
            self.current = run = LedgerRun(self, consumer, engine, head, snapshot_seq)
            await run.start(offsets, assigned)
            while not self.stopping:
                await run.turn()
            await run.finish()
        finally:
            self.current = None
            if run is not None:
                run.close()
            self.progress.ready = False
            await consumer.stop()

    async def _same_topics(self, consumer: Consumer, offsets: dict[Partition, int]) -> None:
        """Each input topic's id is the one stored when the service first read it. A topic deleted and created again
        (a new id) holds the run (InputGap): the stored positions were read in the old log; read on from them, the
        new one's records below them would be passed over, and read from its start they would repeat the (topic,
        partition, offset) of records the journal holds. Where settings.input_gap is "skip" the new id is stored and
        the new topic read on from the stored positions, said in the log. A topic seen for the first time, or one
        created again before any of its records was stored, has its id stored."""
        ids = await consumer.topic_ids(self.topics.inputs)
        stored = await self.store.input_topic_ids()
        for topic in sorted(topic for topic, topic_id in ids.items() if stored.get(topic, topic_id) != topic_id):
            positions = [(number, offset) for (name, number), offset in sorted(offsets.items()) if name == topic]
            if not any(offset > 0 for _, offset in positions):  # none of the old topic's records was stored (at most
                continue  # positions at 0, stored for partitions read empty): the new one is read from its start
            read = ", ".join(f"[{number}] {offset}" for number, offset in positions)
            said = (f"input topic {topic} was deleted and created again (its id was {stored[topic]}, now "
                    f"{ids[topic]}) after the service read the old one up to the positions stored (next offsets: "
                    f"{read})")
            if self.settings.input_gap != "skip":
                raise InputGap(f"{said}; set BACKSTOP_INPUT_GAP=skip to read the new topic on from those positions, "
                               f"without its records below them")
            log.warning("%s; BACKSTOP_INPUT_GAP=skip: reading the new topic on from them, without its records below "
                        "them", said)
        new = {topic: topic_id for topic, topic_id in ids.items() if stored.get(topic) != topic_id}
        if new:
            await self.store.adopt_input_topics(new)


class LedgerRun:
    """One run of the processor, from the engine rebuilt out of the store to a stop or a failure. Its state is
    these fields; each turn is named steps: fetch, merge, then apply, project and commit a batch, then housekeeping.
    Only this run touches the engine, one step at a time; the runtime's checkpoint runs after every step."""

    def __init__(self, owner: LedgerProcessor, consumer: Consumer, engine: ServiceEngine, head: Head,
                 snapshot_seq: int) -> None:
        """`snapshot_seq`: the snapshot the engine was rebuilt from (the next one waits from there)."""
        settings = owner.settings
        self.settings, self.store, self.runtime, self.progress = settings, owner.store, owner.runtime, owner.progress
        self.topics, self.on_commit = owner.topics, owner.on_commit
        self.quarantine = owner.quarantine  # the processor's: it outlives a run that failed on a record
        self.lease = owner.lease  # the writer's lock: checked before each commit, and now and then when idle
        self.lease_checked_at = 0.0  # the loop's clock at the last check when idle
        self.moved_head = False  # a commit of this run moved the head (HeadMoved can no longer be a handover's)
        self.consumer = consumer
        self.engine = engine
        self.merger = Merger(self.topics, max_buffered=settings.merge_max_buffered,
                             event_times=_event_times(settings.engine))
        self.positions = (head.ledger_position, head.adl_position)  # rows in the fund ledger and the ADL events
        per_position, positions = settings.adl_refresh_events_per_position, engine.open_positions()
        self.cadence = projections.RefreshCadence(settings.adl_refresh_events, settings.adl_refresh_event_ms,
                                                  engine.last_seq, per_position,  # start() has just written every row
                                                  interval=per_position * positions)
        self.snapshot_cadence = SnapshotCadence(settings.snapshot_every_events, settings.snapshot_events_per_position,
                                                snapshot_seq, settings.snapshot_events_per_position * positions)
        self.touched = projections.Touched()  # rows batches touched while catching up, not written yet
        self.caught_up = False  # as of the last batch: nothing buffered and nothing unread
        self.committing: asyncio.Task[None] | None = None  # batch N commits while batch N+1 is applied
        self.gathered: list[Consumed] = []  # released in merge order, waiting for the committer (`merge`)
        # per partition, the offset the last batch stores, and the offsets the next one may store (`merge`)
        self.stored: dict[Partition, int] = {}
        self.committed: dict[Partition, int] = {}  # per partition, the offset after the last record committed
        self.reached: dict[Partition, int] = {}
        self.quiet_since: float | None = None  # the loop's clock when the input went quiet (None: not quiet)
        self.state_hashed_at = -1
        # Whole-state work runs in forked children (backstop.service.forked), off the batches' path.
        self.refreshing: BackgroundWork[RefreshCopy] = self.runtime.background("projection refresh",
                                                                               self.progress.background_errors)
        self.snapshotting: BackgroundWork[Snapshot] = self.runtime.background("snapshot",
                                                                             self.progress.background_errors)
        self.behind = WriteBehind(self.store, self.progress)
        self._lag: dict[Partition, Any] = {}  # the lag gauge of each partition (labels() is a locked lookup)
        self.tracing = settings.trace_stages
        # traced: when each liquidation was fetched, and released by the merge
        self.fetched_at: dict[tuple[str, int, int], list[float]] = {}

    async def start(self, offsets: dict[Partition, int],
                    assigned: tuple[dict[Partition, int], dict[Partition, int]]) -> None:
        """`offsets`: as stored; `assigned`: the consumer's positions and ends (Consumer.assign)."""
        positions, ends = assigned
        self.stored, self.committed = dict(offsets), dict(positions)
        for partition in sorted(positions):
            self.merger.assign(partition, positions[partition])
            self.merger.confirm_end(partition, ends[partition])
        engine = self.engine
        # Projection rows still waiting when the last run stopped were lost with it: rewrite every row.
        if engine.last_seq:
            await self._write_projections(None)
        self.progress.refresh_due_seq = engine.last_seq  # that rewrite was the refresh due now (/health: settled)
        self.progress.seq = engine.last_seq
        metrics.JOURNAL_SEQ.set(engine.last_seq)  # the fund balances: from the rows just written
        self.progress.ready = True
        log.info("ledger processor ready at seq %d on the %s engine", engine.last_seq, engine.name)
        await self.runtime.checkpoint("start")

    async def turn(self) -> None:
        checkpoint = self.runtime.checkpoint
        await self.fetch()
        await checkpoint("fetch")
        batch = self.merge()
        await checkpoint("merge")
        if batch:
            stamps = self._trace(batch) if self.tracing else None
            applied = await self.apply(batch)
            if stamps is not None:
                stamps["applied"] = trace.now()
            await checkpoint("apply")
            pending = await self.project(applied)
            await checkpoint("project")
            if stamps is not None:
                stamps.update(projected=trace.now(), first_seq=applied.expected_seq + 1,
                              seq=pending.head.seq)
                pending = pending._replace(stamps=stamps)
            await self.commit(pending)
            await checkpoint("commit")
            await self.housekeeping(batch_applied=True)
        elif not self.gathered:  # while gathering, a turn only fetches: the batch grows until the commit lands
            await self.housekeeping(batch_applied=False)
        await checkpoint("housekeeping")

    async def finish(self) -> None:
        """A clean stop lands the batch already applied."""
        if self.committing is not None:
            await self.committing
            self.committing = None

    def close(self) -> None:
        self.refreshing.stop()
        self.snapshotting.stop()
        self.behind.stop()
        if self.committing is not None and not self.committing.done():
            self.committing.cancel()

    # ---------------------------------------------------------------- the steps
    async def fetch(self) -> None:
        """Read the input, unless the merge buffer is full and no partition holds the order back (then only the
        ones that do); then, if records wait to be released, ask for the ends the merge needs confirmed."""
        merger, settings = self.merger, self.settings
        starved = merger.starved() if merger.full() else None
        if starved is not None:
            metrics.MERGE_BACKPRESSURE.inc()
        if starved is None or starved:
            # Records gathered wait only for the committer: the loop goes on draining the consumer (so that its
            # next fetch goes out and what arrives during the commit joins the batch) and looks at the commit
            # every GATHER_POLL_MS.
            fetched = await self.consumer.fetch(
                only=starved, max_records=settings.batch_max_records,
                timeout_ms=min(GATHER_POLL_MS, settings.batch_max_wait_ms) if self.gathered
                else settings.batch_max_wait_ms)
            if self.tracing:
                self._trace_fetched(fetched.records)
            for partition, records in fetched.records.items():
                merger.add(partition, records)  # before advance: add drops records below the offset reached
                metrics.EVENTS_IN.labels(self.topics.type_of(partition[0]) or "unknown").inc(len(records))
            for partition, position in fetched.positions.items():
                merger.advance(partition, position)
            lag = self._lag
            for partition, end in fetched.ends.items():
                merger.observe_end(partition, end)
            applied = self._applied_up_to(fetched.ends)
            for partition, end in fetched.ends.items():
                gauge = lag.get(partition)
                if gauge is None:
                    gauge = lag[partition] = metrics.CONSUMER_LAG.labels(partition[0], str(partition[1]))
                gauge.set(end - applied.get(partition, fetched.positions.get(partition, end)))
        metrics.MERGE_BUFFERED.set(merger.buffered)
        unconfirmed = merger.unconfirmed()
        if unconfirmed:
            try:
                ends = await self.consumer.end_offsets(unconfirmed)
            except EndsUnavailable as error:  # the broker is away: the merge waits, the loop goes on
                log.warning("ends of %d partitions unavailable, the merge waits: %s", len(unconfirmed), error)
                return
            for partition, end in ends.items():
                merger.confirm_end(partition, end)

    def _applied_up_to(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """Per partition, the offset below which every record is applied and committed (the lag counts from it): the
        last batch committed's, or, where nothing of the partition is buffered, released or in a batch not landed,
        the offset its fetch reached (past a transaction's marker no batch will store)."""
        reached, gathered = self.merger.reached(), {(c.topic, c.partition) for c in self.gathered}
        result = {}
        for partition in partitions:
            committed = self.committed.get(partition)
            if committed is None:
                continue
            idle = (partition in reached and partition not in gathered
                    and self.stored.get(partition, committed) == committed)
            result[partition] = max(committed, reached[partition]) if idle else committed
        return result

    def merge(self) -> list[Consumed]:
        """The next batch in merge order, as far as the order is decided (backstop.pipeline.merge). Caught up, a
        batch closes once the batch before it has committed: meanwhile the records released are gathered, so what
        arrives during a commit goes into the next one, not into the one after (a record waits for at most the
        commit in flight and its own). Behind, or full, it closes at once and is applied while the batch before
        commits. The order is the merge's either way: only where batches begin and end moves, and nothing the
        service decides depends on that."""
        limit = self.settings.batch_max_records
        gathered = self.gathered
        released = self.merger.release(limit - len(gathered))
        if self.tracing and released:
            self._trace_released(released)
        gathered.extend(released)
        committing = self.committing
        if not gathered or (len(gathered) < limit and committing is not None and not committing.done()
                            and self.merger.drained()):
            return []
        self.gathered = []
        self.reached = self.merger.reached()
        return gathered

    async def apply(self, batch: list[Consumed]) -> Applied:
        """The batch through dedupe, sequencing and the engine: consumed records in, a BatchResult out. In a
        thread, so the previous batch's commit keeps the event loop (and its socket) moving meanwhile."""
        started = time.perf_counter()
        engine = self.engine
        before = engine.head()
        expected, counts = before.seq, (before.duplicates, before.rejected)
        # What memory cannot decide of the batch's identities: one query, before the engine runs (§4.1).
        keys = await self.runtime.offload(engine.identities, batch, self.topics)
        await engine.prepare(batch, keys, self.store.held, committed_seq=self.progress.seq)
        result = await self.runtime.offload(engine.apply, batch, self.topics, self.quarantine)
        self._store_reached(result.next_offsets)
        return Applied(expected, counts, result, len(batch), started, time.perf_counter())

    def _store_reached(self, next_offsets: dict[Partition, int]) -> None:
        """The batch stores, beside each partition's offset after its last record in it, the offset the fetch had
        reached where nothing of a partition was left to release when the batch closed: past a transaction's marker
        or aborted records after its last record, which the consumer never hands over. Otherwise retention could
        later delete a stored offset that held only a marker, and the next start would take it for input lost
        (InputGap). Only offsets that move are written (a row per partition in each batch would cost PostgreSQL)."""
        stored = self.stored
        for partition, offset in self.reached.items():
            if offset > next_offsets.get(partition, stored.get(partition, -1)):
                next_offsets[partition] = offset
        stored.update(next_offsets)

    async def project(self, applied: Applied) -> PendingCommit:
        """The rest of the batch's transaction: the journal head and the projection rows (the rows touched, once
        caught up). Whole-state work that became due starts here, before anything else can move the engine."""
        engine, result = self.engine, applied.result
        self.caught_up = caught_up = self.merger.drained()
        refresh_due = self.cadence.due(result, engine.last_seq, caught_up=caught_up, positions=engine.open_positions)
        self.refreshing.wanted |= refresh_due
        if refresh_due:
            self.progress.refresh_due_seq = engine.last_seq
        self.snapshotting.wanted |= self.snapshot_cadence.due(result, applied.expected_seq, engine.last_seq,
                                                              engine.open_positions)
        self.touched.add(result)
        # catching up, touched rows wait (projections.Touched) for a refresh or a count of events
        write_touched = refresh_due or self.cadence.touched_due(engine.last_seq, caught_up=caught_up)
        # this batch writes its touched rows as of this seq: a refresh that starts now leaves them out, and is written
        # once a batch at this seq has committed; so only if this one is the first at it (it applied an event)
        advanced = engine.last_seq > applied.expected_seq
        self._start_due(written=self.touched if write_touched and advanced else None)
        self.positions = (self.positions[0] + len(result.fund_entries), self.positions[1] + len(result.adl_events))
        head = self._head()
        rows = await self.runtime.offload(engine.projections, result,
                                          self.touched if write_touched else projections.Touched(), refresh_all=False)
        if write_touched:
            self.touched = projections.Touched()
        balances = fund_balances(rows)
        phases_s = {"apply": applied.applied_at - applied.started, "project": time.perf_counter() - applied.applied_at}
        return PendingCommit(applied.expected_seq, applied.expected_counts, result, head, rows, balances,
                             applied.started, applied.consumed,
                             phases_s)

    async def commit(self, pending: PendingCommit) -> None:
        """Batch N commits in a task of its own while batch N+1 is applied in memory, and N+1's commit waits for
        N's. If a commit fails, the run fails and the supervisor rebuilds the engine from the store, so the batch
        that ran ahead is dropped (and applied again)."""
        if self.committing is not None:
            await self.committing
        await self.behind.hand(await self.refreshing.take(), await self.snapshotting.take())
        self.committing = asyncio.create_task(self._commit(pending))

    async def housekeeping(self, *, batch_applied: bool) -> None:
        """Beside a batch's commit: the ADL index catches up a slice after a backlog. With no batch: the work
        that waits for a pause (waiting rows, forked results, the ADL index, the state hash)."""
        engine = self.engine
        if batch_applied:
            self.quiet_since = None
            # Caught up after a backlog (a restart, a burst): the index catches up a slice per batch, beside the
            # commit, rather than all of it in the path of the first deleverage; a live
            # stream seldom pauses for ADL_INDEX_QUIET_S. Small backlogs are left to the deleverage.
            if self.caught_up and engine.adl_index_backlog() >= ADL_INDEX_SLICE:
                await self.runtime.offload(engine.refresh_adl_index, ADL_INDEX_SLICE)
            return
        await self._landed()  # nothing new: let the last commit land before idling
        now = asyncio.get_running_loop().time()
        if self.lease is not None and now - self.lease_checked_at >= LEASE_IDLE_CHECK_S:
            self.lease_checked_at = now  # an idle writer whose lock ended says so (LockLost) rather than stay ready
            await self.lease.check()
        if self.touched:  # rows that waited while catching up, and the input went quiet: write them now
            await self._write_projections(self.touched)
            self.touched = projections.Touched()
        await self.behind.hand(await self.refreshing.take(), await self.snapshotting.take())
        self._start_due()  # work due while the last child ran
        self.quiet_since = now if self.quiet_since is None else self.quiet_since
        quiet_s = now - self.quiet_since
        # Quiet for a moment: the ADL index catches up with the trading so far now, not in the next deleverage's
        # path. Not at every pause while catching up: a busy account's rows would be rewritten at each one, where
        # the next deleverage rewrites them once (9% of the service rate).
        if quiet_s >= ADL_INDEX_QUIET_S and await self.runtime.offload(engine.refresh_adl_index):
            self.progress.adl_index_seq = engine.last_seq
        if self.state_hashed_at != engine.last_seq and quiet_s >= self.settings.state_hash_quiet_ms / 1000:
            self.state_hashed_at = engine.last_seq  # once per quiet spell; in a thread: the relay keeps publishing
            digest = await self.runtime.offload(engine.state_hash)
            await self.store.record_state_hash(self.state_hashed_at, digest)

    # ---------------------------------------------------------------- helpers
    async def _landed(self) -> None:
        """The commit in flight has landed (its failure fails the run)."""
        if self.committing is not None:
            await self.committing
            self.committing = None

    def _trace_fetched(self, records: dict[Partition, list[Consumed]]) -> None:
        fetched_at, at, topic = self.fetched_at, trace.now(), self.topics.input("liquidation")
        for (record_topic, partition), consumed in records.items():
            if record_topic == topic:
                for record in consumed:
                    fetched_at[(record_topic, partition, record.offset)] = [at]

    def _trace_released(self, released: list[Consumed]) -> None:
        fetched_at, at = self.fetched_at, trace.now()
        for c in released:
            stamps = fetched_at.get((c.topic, c.partition, c.offset))
            if stamps is not None:
                stamps.append(at)

    def _trace(self, batch: list[Consumed]) -> dict[str, Any]:
        fetched_at = self.fetched_at
        liquidations = [[c.partition, c.offset, *fetched_at.pop((c.topic, c.partition, c.offset))]
                        for c in batch if (c.topic, c.partition, c.offset) in fetched_at]
        return {"closed": trace.now(), "records": len(batch), "buffered": self.merger.buffered,
                "liquidations": liquidations}

    def _start_due(self, written: projections.Touched | None = None) -> None:
        """Only between engine steps: a forked child sees the state as it is now. `written`: the rows a batch writes
        as of this seq (a refresh as of it leaves them out)."""
        engine = self.engine
        self.refreshing.start_if_wanted(lambda: engine.full_refresh(written))
        self.snapshotting.start_if_wanted(engine.snapshot)

    async def _write_projections(self, touched: projections.Touched | None) -> None:
        """Projection rows alone, in their own transaction: `touched`, or every row (None)."""
        engine = self.engine
        rows = await self.runtime.offload(engine.projections, BatchResult(), touched or projections.Touched(),
                                          refresh_all=touched is None)
        if touched is None:  # every fund's row: its balance for the metrics (as a batch's rows give them after)
            for fund_id, balance in fund_balances(rows).items():
                metrics.FUND_BALANCE.labels(fund_id).set(balance)
        head = self._head()
        await self._commit(PendingCommit(engine.last_seq, (head.duplicates, head.rejected), BatchResult(), head, rows,
                                         {}, time.perf_counter(), 0, {}))
        if touched is None:
            self.progress.refreshed_seq = engine.last_seq

    def _head(self) -> Head:
        return Head(*self.engine.head(), *self.positions)

    async def _commit(self, pending: PendingCommit) -> None:
        """One batch in one transaction; the head's expected seq guards against a second writer."""
        committing_at = time.perf_counter()
        commit_start = trace.now()
        if self.lease is not None:  # a writer whose lock ended must not commit beside the one that took it
            await self.lease.check()
        try:
            committed = await self.store.commit(expected_seq=pending.expected_seq, result=pending.result,
                                                head=pending.head, projections=pending.rows,
                                                expected_counts=pending.expected_counts)
        except HeadMoved as moved:
            # a handover: this writer's lock ended (LockLost), or the last batch of the writer before it landed
            # after its rebuild, which can only be met before this one first moves the head; after, a broken rule
            if self.lease is not None:
                await self.lease.check()
            if self.moved_head:
                raise InvariantViolation(f"{moved}, though this writer has held its lock and moved the head since "
                                         f"its start: its own commits out of order") from moved
            raise
        head = pending.head  # once this writer moved the head, a late batch of the one before fails its own check
        self.moved_head |= (head.seq, (head.duplicates, head.rejected)) != (pending.expected_seq,
                                                                             pending.expected_counts)
        if pending.stamps is not None:
            trace.batch({**pending.stamps, "commit_start": commit_start, "committed": trace.now()})
        self.on_commit(committed)
        self.committed.update(pending.result.next_offsets)
        if self.progress.last_error is not None:  # applying again: /health's last_error is the current trouble only
            self.progress.last_error = None
        faults.reached("after_commit")
        if pending.consumed:  # not for rows written alone (projections that waited)
            self._observe(pending, commit_s=time.perf_counter() - committing_at)

    def _observe(self, pending: PendingCommit, *, commit_s: float) -> None:
        result = pending.result
        facts = result.journal_facts()
        for record_type, count in facts.types.items():  # a labels() lookup per type
            metrics.EVENTS_APPLIED.labels(record_type).inc(count)
        for record_type, count in result.duplicates.items():
            metrics.EVENTS_DUPLICATE.labels(record_type).inc(count)
        for letter in result.dead_letters:
            metrics.EVENTS_REJECTED.labels(letter.source_topic).inc()
        metrics.ADL_EVENTS.inc(len(result.adl_events))
        metrics.FUND_ENTRIES.inc(len(result.fund_entries))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - pending.started)
        metrics.BATCH_RECORDS.observe(pending.consumed)
        for fund_id, balance in pending.fund_balances.items():
            metrics.FUND_BALANCE.labels(fund_id).set(balance)
        metrics.JOURNAL_SEQ.set(pending.head.seq)
        self.progress.seq = pending.head.seq
        self.progress.batches += 1
        if facts.rows or result.dead_letters:
            phases_ms = {name: round(seconds * 1000, 2) for name, seconds in
                         {**pending.phases_s, "commit": commit_s}.items()}
            log.info("batch", extra={"fields": {
                "seq": pending.head.seq, "applied": facts.rows, "dead_letters": len(result.dead_letters),
                "duplicates": sum(result.duplicates.values()), "adl_events": len(result.adl_events),
                "ms": round((time.perf_counter() - pending.started) * 1000, 2), **phases_ms}})


__all__ = ["LedgerProcessor", "LedgerRun", "Progress", "rebuild"]
