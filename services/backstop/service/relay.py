"""The relay: publishes what the ledger processor committed, with an idempotent producer, exactly once per record id.

It reads each source after a cursor of its own, in the order the source keeps: the journal (by seq), the fund
ledger, the ADL events and the postings (by position) from their own tables, and from the outbox (by id) what has no
table of its own (ADL quantile records, a batch's as one row that the store splits into records with an outbox id
each; dead letters). Every output topic is fed by one source. Each row goes to the
partition Kafka's default partitioner gives its key (murmur2), chosen here explicitly, and carries its place in its
source in a header (POSITION_HEADER for a table's seq or position, OUTBOX_HEADER for an outbox id). A source's cursor
moves only once Kafka acknowledged every row up to it. Rows of one partition are published in their source's order,
so on start the relay reads the last record of every output partition: every row of that partition whose place is up
to the one that record's header names is already in Kafka (a crash between publishing and moving the cursor leaves
exactly such rows) and is passed over without being sent again. A last record placed by outbox id is looked up by
its record id, as a database restored from a backup numbers the outbox anew (OutboxRelay._places_here). No record id
is published twice (unless BACKSTOP_RELAY_MISSING_TAIL=republish says so, after a restore); per key, order is kept.
Outbox rows written before the tables became sources (migration 0008) are published before any table row.

The processor of the same process hands over what each batch's commit wrote (ports.Committed): the relay publishes
those rows as they are, without reading them back, when they follow what it has published in every source (each
source's place before the batch equal to its cursor: no row of another writer, and none it has not published,
between). Otherwise (a batch the relay read already, one handed over while it restarted, a processor in another
process, a batch whose rows the store could not name) it reads the store, which is always right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence

from backstop import faults
from backstop.adapters.postgres.store import RELAY_LOCK, TABLE_SOURCES, OutboxRow
from backstop.pipeline.topics import TopicNames
from backstop.service import metrics, trace
from backstop.service.ports import (
    OUTBOX_HEADER,
    PLACE_HEADERS,
    POSITION_HEADER,
    Committed,
    LedgerStore,
    Outgoing,
    Partition,
    RelayRead,
    Runtime,
    Tail,
    partition_for,
    passed_over,
)
from backstop.service.supervision import SupervisedLoop
from backstop.settings import Settings

log = logging.getLogger(__name__)


def to_send(rows: Sequence[OutboxRow], counts: Mapping[str, int],
            published_up_to: Mapping[Partition, tuple[str, int]]) -> Outgoing:
    """The rows to publish, less those already in Kafka: published before a crash, before their cursor moved (every
    row of a partition up to the place its last record's header names, in that header's source). Their partitions
    are left to the publisher unless some rows had to be passed over, which needed them."""
    if not published_up_to:  # nothing to pass over (the usual case, once the relay is past what it found)
        return Outgoing(rows)
    pending, partitions = [], []
    for row in rows:
        partition = partition_for(row.key, counts[row.topic])
        if not passed_over(row, partition, published_up_to):
            pending.append(row)
            partitions.append(partition)
    return Outgoing(pending, partitions)


def still_ahead(published_up_to: Mapping[Partition, tuple[str, int]], rows: RelayRead,
                sent_up_to: Mapping[str, int]) -> dict[Partition, tuple[str, int]]:
    """The places found at start that rows not yet read may still be at or before: a partition's place is passed
    once its source's rows were read up to it (each topic has one source, found from the rows read)."""
    source_of = dict(rows.topic_sources())
    return {partition: place for partition, place in published_up_to.items()
            if (source := source_of.get(partition[0])) is None or PLACE_HEADERS[source] != place[0]
            or sent_up_to[source] < place[1]}


HANDED_MAX = 64  # batches handed over and not yet published: beyond, they are dropped and the store is read
# While the processor of this process hands its batches over, the relay polls the store this rarely instead of every
# relay_idle_ms: a poll finds nothing new then (a batch handed over is published from what its commit wrote), and
# one that meets a commit landing reads that batch back. A processor in another process (after a failover) is seen
# by the first poll after its last hand-off.
HANDED_POLL_S = 1.0
# Rows waiting at two looks this far apart and no round landed: the relay is stuck (Kafka refuses or does not
# answer, or it keeps failing): the backlog gauge is read from the store, as no round sets it, and /health says the
# relay is not ready.
STUCK_AFTER_S = 5.0


class OutboxRelay(SupervisedLoop):
    name = "relay"
    lock_id = RELAY_LOCK

    def __init__(self, settings: Settings, store: LedgerStore, runtime: Runtime) -> None:
        super().__init__(store)
        self.settings = settings
        self.runtime = runtime
        self.topics = TopicNames(settings.topic_prefix)
        self.published = 0
        self.ready = False
        self._woken = asyncio.Event()
        self._woken_at = 0.0  # traced: when the last wake came (backstop.service.trace)
        self._handed: deque[Committed] = deque()  # batches handed over by the processor, in commit order
        self._taking = False  # whether batches are handed over now (the relay runs, holding its lock)
        self._unread = True  # whether the store may hold rows not handed over: read it next
        self._handed_lately = False  # the last wake handed a batch over (the store is polled only every HANDED_POLL_S)
        self._cursors: dict[str, int] = {}  # each source's place published up to, as stored
        self.rounds: Counter[str] = Counter()  # rounds with rows, by where they came from: "handed" or "read"
        self._landed_at = time.monotonic()  # when the last round landed (or the relay started): for health only
        self.stuck = False  # rows waited at two looks STUCK_AFTER_S apart, and no round landed
        self._waited = False
        self.waiting: str | None = None  # why the relay does not publish yet (a database restored behind the topics)

    @property
    def healthy(self) -> bool:
        return self.ready and not self.stuck

    async def run_forever(self) -> None:
        watcher = asyncio.create_task(self._watch())
        try:
            await super().run_forever()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self) -> None:
        """While no round lands, the backlog as the store counts it, every STUCK_AFTER_S (rounds set it otherwise)."""
        while True:
            await asyncio.sleep(STUCK_AFTER_S)
            if time.monotonic() - self._landed_at < STUCK_AFTER_S:
                self.stuck = self._waited = False
                continue
            try:
                backlog = await self.store.outbox_backlog()
            except Exception:  # the store away too: the loops say why; the gauge keeps its last value
                continue
            metrics.OUTBOX_BACKLOG.set(backlog)
            # rows waiting at two looks in a row with no round between (not rows a commit wrote just now)
            self.stuck, self._waited = backlog > 0 and self._waited, backlog > 0

    def wake(self, committed: Committed | None = None) -> None:
        """A batch was committed by the processor in this process: `committed`, what it wrote for the relay (None:
        read the store). Publish it now, not at the next poll; a processor in another process is seen by polling
        every `relay_idle_ms`."""
        if committed is None or len(self._handed) >= HANDED_MAX:
            self._handed.clear()
            self._unread = True
        elif self._taking:
            self._handed.append(committed)
        self._handed_lately = committed is not None
        self._woken.set()
        if self.settings.trace_stages:
            self._woken_at = trace.now()

    def _next_handed(self) -> Committed | None:
        """The next batch handed over whose rows follow exactly what has been published in every source, passing
        over those a read of the store published already; at one that neither follows nor was published (rows not
        handed over lie between), none: the store is read."""
        cursors = self._cursors
        while self._handed:
            handed = self._handed.popleft()
            if handed.before == cursors:
                return handed
            if any(place > cursors.get(source, -1) for source, place in handed.after.items()):
                self._handed.clear()
                self._unread = True
        return None

    def on_error(self, error: Exception) -> None:
        self.ready = False

    async def _places_here(self, tails: Mapping[Partition, Tail]) -> dict[Partition, tuple[str, int]] | None:
        """Each output partition's last record's place in this database's sources. A table's seq or position is
        the same in every database; an outbox id is not (a rolled-back batch takes ids, and a database restored
        from a backup numbers the rows written after it anew): a last record of a topic fed from the outbox is
        looked up by its record id (at its own id, where every database that holds it has it unless restored from
        a backup older than it; else anywhere, newest first, then among the rows written since). One this database
        does not hold yet (restored behind the topic) is waited for, the relay not ready meanwhile (`waiting` says
        why): the processor writes it again as it catches up, and every row of its partition up to it is then
        passed over. With `relay_missing_tail=republish`, such a partition's rows after the cursor are sent again
        instead. None: stopped while waiting."""
        places = {partition: (tail.header, tail.place) for partition, tail in tails.items()}
        from_outbox = set(self.topics.outputs) - {self.topics.of_source(source) for source in TABLE_SOURCES}
        wanted = {partition: tail.record_id for partition, tail in tails.items()
                  if partition[0] in from_outbox and tail.header == OUTBOX_HEADER and tail.record_id is not None}
        found: dict[str, int] = {}
        looked_to = 0
        while True:
            self._woken.clear()  # before looking: a commit after the look wakes the wait below
            if self.lease is not None:  # a relay whose lock ended waits no longer
                await self.lease.check()
            more, looked_to = await self.store.outbox_places(
                {record_id: (partition[0], tails[partition].place) for partition, record_id in wanted.items()
                 if record_id not in found}, looked_to)
            found.update(more)
            missing = sorted((partition, record_id) for partition, record_id in wanted.items()
                             if record_id not in found)
            if not missing:
                break
            if self.settings.relay_missing_tail == "republish":
                for partition, record_id in missing:
                    log.warning("relay: %s[%d] ends with record %s, which this database does not hold: its rows "
                                "after the cursor are sent again (BACKSTOP_RELAY_MISSING_TAIL=republish)",
                                *partition, record_id)
                    del places[partition], wanted[partition]
                break
            (topic, number), record_id = missing[0]
            waiting = (f"waiting for the database to write record {record_id} again, the last on {topic}[{number}]"
                       f" ({len(missing)} partition(s) in all: restored from a backup behind the topics?)")
            if waiting != self.waiting:
                log.warning("relay: %s", waiting)
                self.waiting = waiting
            with contextlib.suppress(TimeoutError):  # a commit of this process's processor wakes it
                async with asyncio.timeout(max(self.settings.relay_idle_ms / 1000, HANDED_POLL_S)):
                    await self._woken.wait()
            if self.stopping:
                return None
        if self.waiting is not None:
            log.warning("relay: the database holds again every record last published; publishing")
            self.waiting = None
        places.update((partition, (OUTBOX_HEADER, found[record_id])) for partition, record_id in wanted.items())
        return places

    async def run_locked(self) -> None:
        settings, checkpoint = self.settings, self.runtime.checkpoint
        publisher = self.runtime.publisher(settings)
        await publisher.start()
        try:
            counts = await publisher.partition_counts(self.topics.outputs)
            places = await self._places_here(await publisher.last_published(counts))
            if places is None:  # stopped while waiting for the database
                return
            published_up_to = places
            self._handed.clear()
            self._taking, self._unread = True, True
            self._cursors = await self.store.published_places()
            self.ready, self._landed_at = True, time.monotonic()
            self.stuck = self._waited = False  # what it saw as a standby, or before a restart, is not this run's
            await checkpoint("relay_start")
            tracing = settings.trace_stages
            while not self.stopping:
                self._woken.clear()  # before looking: a commit after the look wakes the wait below
                handed = self._next_handed()
                if handed is None and not self._unread:
                    idle_s = HANDED_POLL_S if self._handed_lately else settings.relay_idle_ms / 1000
                    with contextlib.suppress(TimeoutError):  # not wait_for: on 3.11 it can swallow a cancel
                        async with asyncio.timeout(idle_s):
                            await self._woken.wait()
                    if not self._woken.is_set():  # quiet for a while: poll the store
                        self._unread, self._handed_lately = True, False
                    continue
                read_at = trace.now() if tracing else 0.0
                if handed is not None:  # built in a thread: Rust, without the GIL
                    rows = await self.runtime.offload(handed.relay_rows, self.topics)
                else:
                    self._unread = False  # a commit's wake during the read sets it again
                    rows = await self.store.relay_read(settings.relay_batch, self.topics)
                    self._unread |= bool(rows)  # more may wait behind a full read
                read_done = trace.now() if tracing else 0.0
                full = rows.most_of_one_source() >= settings.relay_batch
                metrics.OUTBOX_BACKLOG.set(await self.store.outbox_backlog() if full else len(rows))
                if not rows:
                    continue
                origin = "read" if handed is None else "handed"
                self.rounds[origin] += 1
                metrics.RELAY_ROUNDS.labels(origin).inc()
                pending = rows.without_published(counts, published_up_to) if published_up_to else rows
                if self.lease is not None:  # a relay whose lock ended must not publish beside its successor
                    await self.lease.check()
                sent = await publisher.send(Outgoing(pending))
                if sent:
                    faults.reached("relay_after_send")
                    await checkpoint("relay_send")
                acked = trace.now() if tracing else 0.0
                sent_up_to = dict(rows.last_of_each_source())
                await self.store.mark_published(sent_up_to)
                self._landed_at, self.stuck = time.monotonic(), False
                for source, last in sent_up_to.items():
                    self._cursors[source] = max(self._cursors.get(source, last), last)
                if published_up_to:
                    published_up_to = still_ahead(published_up_to, rows, sent_up_to)
                if tracing:
                    trace.relay_round({"woken": self._woken_at, "read": read_at, "read_done": read_done,
                                       "acked": acked, "marked": trace.now(), "rows": len(rows), "up_to": sent_up_to})
                await checkpoint("relay_mark")
                for topic, count in sorted(sent.items()):
                    metrics.RELAY_PUBLISHED.labels(topic).inc(count)
                self.published += sum(sent.values())
                if not self._handed and not self._unread:  # caught up with every batch it knows of
                    metrics.OUTBOX_BACKLOG.set(0)
        finally:
            self.ready = self._taking = False
            self.waiting = None  # a successor (maybe another instance) says its own
            self._handed.clear()
            await publisher.stop()


__all__ = ["OUTBOX_HEADER", "POSITION_HEADER", "OutboxRelay", "OutboxRow", "partition_for",
           "to_send"]
