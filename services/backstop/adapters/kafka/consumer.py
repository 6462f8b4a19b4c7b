"""The input topics through aiokafka: partitions assigned explicitly (no consumer group, nothing committed to
Kafka: the offsets live in PostgreSQL), read_committed, in batches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError

from backstop.pipeline.ingest import Consumed
from backstop.service.ports import EndsUnavailable, Fetched, Partition
from backstop.settings import Settings

METADATA_WAIT_S = 5.0  # a topic created just now appears in the metadata within this long


class KafkaConsumer:
    """Two clients: one fetches; the other, which never fetches, asks for offsets. A broker answers one connection's
    requests in order, so a request for ends sent behind a fetch waiting for data (up to fetch_max_wait_ms, for
    the partitions with nothing new) would wait as long, in every turn that confirms ends.

    `max_partition_fetch_bytes`: how much one fetch response may carry per partition (tests vary it: the order
    must not depend on it)."""

    def __init__(self, settings: Settings, *, max_partition_fetch_bytes: int = 4 << 20) -> None:
        common = {"bootstrap_servers": settings.kafka_bootstrap, "group_id": None, "enable_auto_commit": False,
                  "auto_offset_reset": "earliest", "isolation_level": "read_committed", "request_timeout_ms": 30_000,
                  "ssl_context": settings.ssl_context(), **settings.kafka_client_options()}
        self._consumer = AIOKafkaConsumer(client_id="backstop-ledger", fetch_max_bytes=32 << 20,
                                          max_partition_fetch_bytes=max_partition_fetch_bytes, **common)
        self._offsets = AIOKafkaConsumer(client_id="backstop-ledger-offsets", **common)

    async def start(self) -> None:
        await self._consumer.start()
        await self._offsets.start()

    async def stop(self) -> None:
        await stop_consumer(self._offsets)
        await stop_consumer(self._consumer)

    async def assign(self, topics: Sequence[str], positions: Mapping[Partition, int]
                     ) -> tuple[dict[Partition, int], dict[Partition, int]]:
        """All seeks at once: the partitions without a stored position start at their log's start offset, asked
        for in one request (a seek_to_beginning and position() per partition, one after another, each waited for
        the fetch in flight, and /health said 503 meanwhile)."""
        partitions: list[TopicPartition] = []
        for topic in topics:
            partitions.extend(TopicPartition(topic, p) for p in sorted(await self._partitions(topic)))
        offsets = self._offsets
        offsets.assign(partitions)
        for tp in partitions:  # a valid position, and paused: this client never fetches
            offsets.seek(tp, 0)
        if partitions:
            offsets.pause(*partitions)
        missing = [tp for tp in partitions if (tp.topic, tp.partition) not in positions]
        starts = await self._ask(offsets.beginning_offsets(missing)) if missing else {}
        consumer = self._consumer
        consumer.assign(partitions)
        assigned: dict[Partition, int] = {}
        for tp in partitions:
            position = positions.get((tp.topic, tp.partition))
            position = starts[(tp.topic, tp.partition)] if position is None else position
            consumer.seek(tp, position)
            assigned[(tp.topic, tp.partition)] = position
        return assigned, await self.end_offsets(list(assigned))

    async def fetch(self, *, only: set[Partition] | None, max_records: int, timeout_ms: int) -> Fetched:
        """One getmany; with `only`, the other partitions are paused for it (backpressure)."""
        consumer = self._consumer
        assignment = consumer.assignment()
        paused = [] if only is None else [tp for tp in assignment if (tp.topic, tp.partition) not in only]
        if paused:
            consumer.pause(*paused)
        try:
            fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        finally:
            if paused:
                consumer.resume(*paused)
        new = tuple.__new__  # a NamedTuple's own __new__ is a Python call per record
        records = {(tp.topic, tp.partition): [new(Consumed, (r.topic, r.partition, r.offset, r.key, r.value))
                                              for r in batch]
                   for tp, batch in fetched.items()}
        positions: dict[Partition, int] = {}
        ends: dict[Partition, int] = {}
        for tp in assignment:
            positions[(tp.topic, tp.partition)] = await consumer.position(tp)
            end = consumer.last_stable_offset(tp)  # read_committed reads up to here: the end it can reach
            if end is not None:
                ends[(tp.topic, tp.partition)] = end
        return Fetched(records, positions, ends)

    async def end_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        if not partitions:
            return {}
        return await self._ask(self._offsets.end_offsets([TopicPartition(t, p) for t, p in partitions]))

    @staticmethod
    async def _ask(request: Awaitable[dict[TopicPartition, int]]) -> dict[Partition, int]:
        try:
            answer = await request
        except KafkaTimeoutError as error:
            raise EndsUnavailable(str(error)) from error
        return {(tp.topic, tp.partition): offset for tp, offset in answer.items()}

    async def _partitions(self, topic: str) -> set[int]:
        deadline = asyncio.get_running_loop().time() + METADATA_WAIT_S
        while True:
            found = self._consumer.partitions_for_topic(topic)
            if found:
                return set(found)
            if asyncio.get_running_loop().time() >= deadline:
                raise RuntimeError(f"input topic {topic} does not exist (run `backstop topics create`)")
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """consumer.stop(), finished when aiokafka's own close breaks off: its fetcher awaits the fetch tasks it
    cancelled, and one that was pausing to retry (the broker away) raises CancelledError out of close() before the
    client is closed. That CancelledError is not a cancellation of the caller, which goes on."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller is being cancelled
        for task in list(consumer._fetcher._pending_tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await consumer._client.close()
