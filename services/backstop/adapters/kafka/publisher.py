"""The output topics through aiokafka: an idempotent producer sending record batches built here, whole (a future
per batch, not per record: the per-record send path cost more than the rest of the relay), each record carrying its
place in its source (its outbox id, or its seq or position in its own table) and its record id in headers, every
record of a send with the same timestamp. No linger: the batches handed over are whole, and a linger only held each
one back before it was sent.

The batches are encoded in Rust (backstop._engine.record_batches, crates/backstop-engine/src/kafka_batch.rs: no
Python step per record) where the service runs the compiled engine, else record by record with aiokafka's own batch
builder; both give the same bytes (tests/differential/test_kafka_batches.py). A batch encoded in Rust reaches
aiokafka as the batch builder its public `create_batch()` returns would (EncodedBatch): aiokafka asks it for its
record count, then gives it the producer id, epoch and base sequence it is sent with, then asks for its bytes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.producer.message_accumulator import BatchBuilder

from backstop import faults
from backstop.adapters.kafka.consumer import stop_consumer
from backstop.engines import runs_compiled
from backstop.service.ports import (
    PLACE_HEADERS,
    RECORD_ID_HEADER,
    Outgoing,
    Partition,
    Tail,
    listed,
    partition_for,
    place_header,
    tail_in_headers,
)
from backstop.settings import Settings

RECORD_BATCH_BYTES = 512 << 10  # below the broker's default message.max.bytes (1 MiB)

# (topic, partition, records, the batch) in sending order: a partition's batches in its rows' order
Batches = list[tuple[str, int, int, Any]]


class EncodedBatch:
    """A record batch the compiled relay encoded, in the shape of aiokafka's BatchBuilder (what the producer's
    accumulator and sender call of it): closed to appends, sealed with the producer's state when first built."""

    def __init__(self, data: bytes, records: int) -> None:
        self._data, self._records = data, records
        self._state = (-1, -1, 0)  # a producer without idempotence never sets one
        self._buffer: bytes | None = None

    def append(self, **_: Any) -> None:
        return None  # full: a record sent to this partition meanwhile starts a batch of its own

    def close(self) -> None:
        pass

    def closed(self) -> bool:
        return True

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        self._state = (producer_id, producer_epoch, base_sequence)

    def _build(self) -> bytes:
        if self._buffer is None:  # once: a retry resends the same bytes, as aiokafka's builder does
            from backstop import _engine

            self._buffer = _engine.seal_batch(self._data, *self._state)
        return self._buffer

    def size(self) -> int:
        return len(self._data)

    def record_count(self) -> int:
        return self._records


def compiled_batches(outgoing: Outgoing, counts: Mapping[str, int], timestamp_ms: int,
                     max_bytes: int = RECORD_BATCH_BYTES) -> Batches:
    """The rows as record batches encoded in Rust: rows held there (the relay's read) without a Python step."""
    from backstop import _engine

    rows, partitions = outgoing
    if isinstance(rows, Sequence):
        encoded = _engine.record_batches(rows if isinstance(rows, list) else list(rows), dict(counts), PLACE_HEADERS,
                                         RECORD_ID_HEADER, timestamp_ms, max_bytes,
                                         None if partitions is None else list(partitions))
    else:
        encoded = rows.record_batches(dict(counts), RECORD_ID_HEADER, timestamp_ms, max_bytes)
    return [(topic, partition, records, EncodedBatch(data, records)) for topic, partition, records, data in encoded]


def python_batches(outgoing: Outgoing, counts: Mapping[str, int], timestamp_ms: int,
                   max_bytes: int = RECORD_BATCH_BYTES) -> Batches:
    """The rows as record batches of aiokafka's builder, record by record: the same bytes as compiled_batches."""
    rows, partitions = listed(outgoing.rows), outgoing.partitions
    if partitions is None:
        partitions = [partition_for(row.key, counts[row.topic]) for row in rows]
    done: Batches = []
    open_batches: dict[Partition, BatchBuilder] = {}
    header_of: dict[str, str] = {}  # a source's place header, found once per send
    for row, partition in zip(rows, partitions, strict=True):
        value, key, topic, source = row.payload.encode(), row.key.encode(), row.topic, row.source
        header = header_of.get(source)
        if header is None:
            header = header_of[source] = place_header(row)
        headers = [(header, b"%d" % row.id), (RECORD_ID_HEADER, row.record_id.encode())]
        batch = open_batches.get((topic, partition))
        if batch is None or batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
            if batch is not None:  # full: it goes first, and the next one of this partition starts
                done.append((topic, partition, batch.record_count(), batch))
            batch = open_batches[(topic, partition)] = BatchBuilder(max_bytes, 0)
            if batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
                raise ValueError(f"outbox row {row.id} does not fit in an empty record batch")
    done.extend((topic, partition, batch.record_count(), batch)
                for (topic, partition), batch in open_batches.items())
    return done


class KafkaPublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all", linger_ms=0,
            max_batch_size=RECORD_BATCH_BYTES, client_id="backstop-relay", request_timeout_ms=30_000,
            ssl_context=settings.ssl_context(), **settings.kafka_client_options())
        self._encode = compiled_batches if runs_compiled(settings.engine) else python_batches
        self._counts: dict[str, int] = {}

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        self._counts = {topic: len(await self._producer.partitions_for(topic)) for topic in topics}
        return dict(self._counts)

    async def send(self, outgoing: Outgoing) -> Counter[str]:
        producer = self._producer
        # the records' timestamp (Kafka's CreateTime, metadata only: no record carries it); encoded in a thread (Rust
        # without the GIL, under the compiled engine): the event loop meanwhile serves the consumer and the commit
        batches = await asyncio.to_thread(self._encode, outgoing, self._counts, int(time.time() * 1000))
        sent: Counter[str] = Counter()
        acks: list[asyncio.Future[Any]] = []
        for topic, partition, records, batch in batches:
            sent[topic] += records
            acks.append(await producer.send_batch(batch, topic, partition=partition))
        for number, ack in enumerate(acks):
            await ack
            if number == 0 and len(acks) > 1:
                faults.reached("relay_part_acked")  # some of the rows in Kafka, maybe not the rest
        return sent

    async def last_published(self, counts: Mapping[str, int]) -> dict[Partition, Tail]:
        """Reads the last record of every output partition that still holds one (its place and record id). A
        partition whose records have all expired (retention: 30 days on some topics) has none to read: its start
        offset is its end, and the store's cursors say what was published there (the crash window this read closes
        is seconds long)."""
        settings = self.settings
        partitions = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        # "none": a seek below the log start (the record expired meanwhile) raises instead of waiting at the end
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                    enable_auto_commit=False, isolation_level="read_committed",
                                    auto_offset_reset="none", client_id="backstop-relay-scan",
                                    ssl_context=settings.ssl_context(), **settings.kafka_client_options())
        await consumer.start()
        try:
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            starts = await consumer.beginning_offsets(partitions)
            found: dict[Partition, Tail] = {}
            for tp in partitions:
                if ends[tp] <= starts[tp]:
                    continue
                consumer.seek(tp, ends[tp] - 1)
                try:
                    async with asyncio.timeout(30):  # not wait_for: on 3.11 it can drop a cancel
                        record = await consumer.getone(tp)
                except OffsetOutOfRangeError:
                    continue  # expired since the ends were asked for
                tail = tail_in_headers(record.headers or ())
                if tail is not None:
                    found[(tp.topic, tp.partition)] = tail
            return found
        finally:
            await stop_consumer(consumer)
