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
from collections import Counter
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from backstop import faults
from backstop.adapters.postgres.store import RELAY_LOCK, OutboxRow, Store
from backstop.pipeline.topics import TopicNames
from backstop.service import metrics
from backstop.service.supervision import SupervisedLoop
from backstop.settings import Settings

OUTBOX_HEADER = "backstop-outbox-id"
RECORD_BATCH_BYTES = 512 << 10  # below the broker's default message.max.bytes (1 MiB)


@lru_cache(maxsize=1 << 16)  # keys repeat (accounts, funds, symbols) and murmur2 is pure Python: ~3 us a call
def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record."""
    partition: int = (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
    return partition


class OutboxRelay(SupervisedLoop):
    name = "relay"
    lock_id = RELAY_LOCK

    def __init__(self, settings: Settings, store: Store) -> None:
        super().__init__(store)
        self.settings = settings
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
        settings = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all", linger_ms=5,
            max_batch_size=RECORD_BATCH_BYTES,
            client_id="backstop-relay", request_timeout_ms=30_000, ssl_context=settings.ssl_context(),
            **settings.kafka_client_options())
        await producer.start()
        try:
            counts = {topic: len(await producer.partitions_for(topic)) for topic in self.topics.outputs}
            published_up_to = await self._published_up_to(counts)
            self.ready = True
            while not self.stopping:
                self._woken.clear()  # before reading: a commit after the read wakes the wait below
                rows = await self.store.unpublished(settings.relay_batch)
                metrics.OUTBOX_BACKLOG.set(len(rows) if len(rows) < settings.relay_batch
                                           else await self.store.outbox_backlog())
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._woken.wait(), settings.relay_idle_ms / 1000)
                    continue
                sent = await self._send(producer, rows, counts, published_up_to)
                if sent:
                    faults.reached("relay_after_send")
                await self.store.mark_published_up_to(rows[-1].id)
                self.published += sent
        finally:
            self.ready = False
            await producer.stop()

    @staticmethod
    async def _send(producer: AIOKafkaProducer, rows: list[OutboxRow], counts: dict[str, int],
                    published_up_to: dict[tuple[str, int], int]) -> int:
        """Send the rows not yet in Kafka, in id order per partition, and wait until all are acknowledged. Rows go
        in record batches built here, one open batch per partition (a future per batch, not per record: the
        per-record send path cost more than the rest of the relay)."""
        open_batches: dict[tuple[str, int], Any] = {}
        acks: list[asyncio.Future[Any]] = []
        sent: Counter[str] = Counter()
        for row in rows:
            partition = partition_for(row.key, counts[row.topic])
            if row.id <= published_up_to.get((row.topic, partition), 0):
                continue  # already in Kafka: published before a crash, before the cursor moved
            value, key = row.payload.encode(), row.key.encode()
            headers = [(OUTBOX_HEADER, str(row.id).encode()), ("backstop-record-id", row.record_id.encode())]
            batch = open_batches.get((row.topic, partition))
            if batch is None or batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                if batch is not None:  # full: queue it and start the next one of this partition
                    acks.append(await producer.send_batch(batch, row.topic, partition=partition))
                batch = open_batches[(row.topic, partition)] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    raise ValueError(f"outbox row {row.id} does not fit in an empty record batch")
            sent[row.topic] += 1
        for (topic, partition), batch in open_batches.items():
            acks.append(await producer.send_batch(batch, topic, partition=partition))
        for ack in acks:
            await ack
        for topic, count in sorted(sent.items()):
            metrics.RELAY_PUBLISHED.labels(topic).inc(count)
        return sum(sent.values())

    async def _published_up_to(self, counts: dict[str, int]) -> dict[tuple[str, int], int]:
        """Per output partition, the outbox id in the header of its last record."""
        partitions = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, group_id=None,
                                    enable_auto_commit=False, isolation_level="read_committed",
                                    client_id="backstop-relay-scan", ssl_context=self.settings.ssl_context(),
                                    **self.settings.kafka_client_options())
        await consumer.start()
        try:
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            found: dict[tuple[str, int], int] = {}
            for tp in partitions:
                if ends[tp] == 0:
                    continue
                consumer.seek(tp, ends[tp] - 1)
                record = await asyncio.wait_for(consumer.getone(tp), timeout=30)
                for name, value in record.headers or ():
                    if name == OUTBOX_HEADER:
                        found[(tp.topic, tp.partition)] = int(value)
            return found
        finally:
            await consumer.stop()


__all__ = ["OUTBOX_HEADER", "OutboxRelay", "OutboxRow", "partition_for"]
