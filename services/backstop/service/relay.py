"""The outbox relay: publishes outbox rows, in id order, with an idempotent producer, exactly once per record id.

Each row goes to the partition Kafka's default partitioner gives its key (murmur2), chosen here explicitly, and
carries its outbox id in a header. The relay reads the rows after its cursor (relay_cursor) and moves the cursor
only once Kafka acknowledged every row up to it. Rows of one partition are published in id order, so on start the
relay reads the last record of every output partition: every row of that partition with an id up to that record's
header is already in Kafka (a crash between publishing and moving the cursor leaves exactly such rows) and is
passed over without being sent again. No record id is published twice; per key, order is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from functools import lru_cache

from aiokafka.partitioner import murmur2

from backstop import faults
from backstop.adapters.postgres.store import RELAY_LOCK, OutboxRow
from backstop.pipeline.topics import TopicNames
from backstop.service import metrics
from backstop.service.ports import OUTBOX_HEADER, LedgerStore, Partition, Runtime
from backstop.service.supervision import SupervisedLoop
from backstop.settings import Settings


@lru_cache(maxsize=1 << 16)  # keys repeat (accounts, funds, symbols) and murmur2 is pure Python
def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record."""
    partition: int = (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
    return partition


def to_send(rows: Sequence[OutboxRow], counts: Mapping[str, int],
            published_up_to: Mapping[Partition, int]) -> list[tuple[OutboxRow, int]]:
    """The rows with their partitions, less those already in Kafka: published before a crash, before the cursor
    moved (every row of a partition up to the outbox id its last record carries)."""
    pending = []
    for row in rows:
        partition = partition_for(row.key, counts[row.topic])
        if row.id > published_up_to.get((row.topic, partition), 0):
            pending.append((row, partition))
    return pending


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

    def wake(self) -> None:
        """A batch was committed (by the processor in this process): look at the outbox now, not at the next poll.
        A processor in another process is seen by polling every `relay_idle_ms`."""
        self._woken.set()

    def on_error(self, error: Exception) -> None:
        self.ready = False

    async def run_locked(self) -> None:
        settings, checkpoint = self.settings, self.runtime.checkpoint
        publisher = self.runtime.publisher(settings)
        await publisher.start()
        try:
            counts = await publisher.partition_counts(self.topics.outputs)
            published_up_to = await publisher.last_outbox_ids(counts)
            self.ready = True
            await checkpoint("relay_start")
            while not self.stopping:
                self._woken.clear()  # before reading: a commit after the read wakes the wait below
                rows = await self.store.unpublished(settings.relay_batch)
                metrics.OUTBOX_BACKLOG.set(len(rows) if len(rows) < settings.relay_batch
                                           else await self.store.outbox_backlog())
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._woken.wait(), settings.relay_idle_ms / 1000)
                    continue
                sent = await publisher.send(to_send(rows, counts, published_up_to))
                if sent:
                    faults.reached("relay_after_send")
                    await checkpoint("relay_send")
                await self.store.mark_published_up_to(rows[-1].id)
                await checkpoint("relay_mark")
                for topic, count in sorted(sent.items()):
                    metrics.RELAY_PUBLISHED.labels(topic).inc(count)
                self.published += sum(sent.values())
        finally:
            self.ready = False
            await publisher.stop()


__all__ = ["OUTBOX_HEADER", "OutboxRelay", "OutboxRow", "partition_for", "to_send"]
