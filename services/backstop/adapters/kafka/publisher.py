"""The output topics through aiokafka: an idempotent producer sending record batches built here, one open batch per
partition (a future per batch, not per record: the per-record send path cost more than the rest of the relay),
each record carrying its place in its source (its outbox id, or its seq or position in its own table) in a header.
No linger: the batches handed over are whole, and a linger only held each one back before it was sent."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from backstop import faults
from backstop.adapters.kafka.consumer import stop_consumer
from backstop.adapters.postgres.store import OutboxRow
from backstop.service.ports import RECORD_ID_HEADER, Partition, place_header, place_in_headers
from backstop.settings import Settings

RECORD_BATCH_BYTES = 512 << 10  # below the broker's default message.max.bytes (1 MiB)


class KafkaPublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all", linger_ms=0,
            max_batch_size=RECORD_BATCH_BYTES, client_id="backstop-relay", request_timeout_ms=30_000,
            ssl_context=settings.ssl_context(), **settings.kafka_client_options())

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        return {topic: len(await self._producer.partitions_for(topic)) for topic in topics}

    async def send(self, rows: Sequence[tuple[OutboxRow, int]]) -> Counter[str]:
        producer = self._producer
        open_batches: dict[Partition, Any] = {}
        acks: list[asyncio.Future[Any]] = []
        sent: Counter[str] = Counter(row.topic for row, _ in rows)
        header_of: dict[str, str] = {}  # a source's place header, found once per send
        for row, partition in rows:
            value, key, topic, source = row.payload.encode(), row.key.encode(), row.topic, row.source
            header = header_of.get(source)
            if header is None:
                header = header_of[source] = place_header(row)
            headers = [(header, b"%d" % row.id), (RECORD_ID_HEADER, row.record_id.encode())]
            batch = open_batches.get((topic, partition))
            if batch is None or batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                if batch is not None:  # full: queue it and start the next one of this partition
                    acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[(topic, partition)] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    raise ValueError(f"outbox row {row.id} does not fit in an empty record batch")
        for (topic, partition), batch in open_batches.items():
            acks.append(await producer.send_batch(batch, topic, partition=partition))
        for number, ack in enumerate(acks):
            await ack
            if number == 0 and len(acks) > 1:
                faults.reached("relay_part_acked")  # some of the rows in Kafka, maybe not the rest
        return sent

    async def last_published(self, counts: Mapping[str, int]) -> dict[Partition, tuple[str, int]]:
        """Reads the last record of every output partition."""
        settings = self.settings
        partitions = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                    enable_auto_commit=False, isolation_level="read_committed",
                                    client_id="backstop-relay-scan", ssl_context=settings.ssl_context(),
                                    **settings.kafka_client_options())
        await consumer.start()
        try:
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            found: dict[Partition, tuple[str, int]] = {}
            for tp in partitions:
                if ends[tp] == 0:
                    continue
                consumer.seek(tp, ends[tp] - 1)
                record = await asyncio.wait_for(consumer.getone(tp), timeout=30)
                place = place_in_headers(record.headers or ())
                if place is not None:
                    found[(tp.topic, tp.partition)] = place
            return found
        finally:
            await stop_consumer(consumer)
