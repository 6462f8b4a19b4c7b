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
exactly such rows) and is passed over without being sent again. No record id is published twice; per key, order is
kept. Outbox rows written before the tables became sources (migration 0008) are published before any table row.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from backstop import faults
from backstop.adapters.postgres.store import RELAY_LOCK, OutboxRow
from backstop.pipeline.topics import TopicNames
from backstop.service import metrics, trace
from backstop.service.ports import (
    OUTBOX_HEADER,
    PLACE_HEADERS,
    POSITION_HEADER,
    LedgerStore,
    Outgoing,
    Partition,
    RelayRead,
    Runtime,
    partition_for,
    passed_over,
)
from backstop.service.supervision import SupervisedLoop
from backstop.settings import Settings


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

    def wake(self) -> None:
        """A batch was committed (by the processor in this process): look at the outbox now, not at the next poll.
        A processor in another process is seen by polling every `relay_idle_ms`."""
        self._woken.set()
        if self.settings.trace_stages:
            self._woken_at = trace.now()

    def on_error(self, error: Exception) -> None:
        self.ready = False

    async def run_locked(self) -> None:
        settings, checkpoint = self.settings, self.runtime.checkpoint
        publisher = self.runtime.publisher(settings)
        await publisher.start()
        try:
            counts = await publisher.partition_counts(self.topics.outputs)
            published_up_to = await publisher.last_published(counts)
            self.ready = True
            await checkpoint("relay_start")
            tracing = settings.trace_stages
            while not self.stopping:
                self._woken.clear()  # before reading: a commit after the read wakes the wait below
                read_at = trace.now() if tracing else 0.0
                rows = await self.store.relay_read(settings.relay_batch, self.topics)
                read_done = trace.now() if tracing else 0.0
                full = rows.most_of_one_source() >= settings.relay_batch
                metrics.OUTBOX_BACKLOG.set(await self.store.outbox_backlog() if full else len(rows))
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._woken.wait(), settings.relay_idle_ms / 1000)
                    continue
                pending = rows.without_published(counts, published_up_to) if published_up_to else rows
                sent = await publisher.send(Outgoing(pending))
                if sent:
                    faults.reached("relay_after_send")
                    await checkpoint("relay_send")
                acked = trace.now() if tracing else 0.0
                sent_up_to = dict(rows.last_of_each_source())
                await self.store.mark_published(sent_up_to)
                if published_up_to:
                    published_up_to = still_ahead(published_up_to, rows, sent_up_to)
                if tracing:
                    trace.relay_round({"woken": self._woken_at, "read": read_at, "read_done": read_done,
                                       "acked": acked, "marked": trace.now(), "rows": len(rows), "up_to": sent_up_to})
                await checkpoint("relay_mark")
                for topic, count in sorted(sent.items()):
                    metrics.RELAY_PUBLISHED.labels(topic).inc(count)
                self.published += sum(sent.values())
        finally:
            self.ready = False
            await publisher.stop()


__all__ = ["OUTBOX_HEADER", "POSITION_HEADER", "OutboxRelay", "OutboxRow", "partition_for",
           "to_send"]
