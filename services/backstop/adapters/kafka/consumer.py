"""The input topics through aiokafka: partitions assigned explicitly (no consumer group, nothing committed to
Kafka: the offsets live in PostgreSQL), read_committed, in batches. A stored position outside its partition's log
is never moved silently (aiokafka's auto_offset_reset is "none"): records deleted before they were read stop the
run (InputGap) unless settings.input_gap says to skip them; a topic grown by partitions restarts it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError, OffsetOutOfRangeError

from backstop.adapters.kafka import admin
from backstop.pipeline.ingest import Consumed
from backstop.service.ports import EndsUnavailable, Fetched, InputGap, InputPartitionsGrew, Partition
from backstop.settings import Settings

log = logging.getLogger("backstop.service")
METADATA_WAIT_S = 5.0  # a topic created just now appears in the metadata within this long
METADATA_MAX_AGE_MS = 30_000  # how soon partitions added to an input topic are seen (aiokafka's default: 5 min)
TOPIC_IDS_TIMEOUT_MS = 10_000  # the run's start asks for the input topics' ids: a broker away fails it this soon


class KafkaConsumer:
    """Two clients: one fetches; the other, which never fetches, asks for offsets. A broker answers one connection's
    requests in order, so a request for ends sent behind a fetch waiting for data (up to fetch_max_wait_ms, for
    the partitions with nothing new) would wait as long, in every turn that confirms ends.

    `max_partition_fetch_bytes`: how much one fetch response may carry per partition (tests vary it: the order
    must not depend on it)."""

    def __init__(self, settings: Settings, *, max_partition_fetch_bytes: int = 4 << 20) -> None:
        common = {"bootstrap_servers": settings.kafka_bootstrap, "group_id": None, "enable_auto_commit": False,
                  "auto_offset_reset": "none", "isolation_level": "read_committed", "request_timeout_ms": 30_000,
                  "ssl_context": settings.ssl_context(), **settings.kafka_client_options()}
        self._consumer = AIOKafkaConsumer(client_id="backstop-ledger", fetch_max_bytes=32 << 20,
                                          max_partition_fetch_bytes=max_partition_fetch_bytes,
                                          metadata_max_age_ms=METADATA_MAX_AGE_MS, **common)
        self._offsets = AIOKafkaConsumer(client_id="backstop-ledger-offsets", **common)
        self._skip_gaps = settings.input_gap == "skip"
        self._settings = settings
        self._counts: dict[str, int] = {}  # the partitions of each topic the run reads

    async def start(self) -> None:
        await self._consumer.start()
        await self._offsets.start()

    async def stop(self) -> None:
        await stop_consumer(self._offsets)
        await stop_consumer(self._consumer)

    async def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        """From kafka-python's admin client, in a thread (aiokafka's metadata requests predate topic ids), which a
        stop cannot cancel: its timeout is short."""
        settings = self._settings
        return await asyncio.to_thread(admin.topic_ids, settings.kafka_bootstrap, list(topics),
                                       timeout_ms=TOPIC_IDS_TIMEOUT_MS, client_kwargs=settings.kafka_admin_options())

    async def assign(self, topics: Sequence[str], positions: Mapping[Partition, int]
                     ) -> tuple[dict[Partition, int], dict[Partition, int]]:
        """All seeks at once: the partitions without a stored position start at their log's start offset, asked
        for in one request (a seek_to_beginning and position() per partition, one after another, each waited for
        the fetch in flight, and /health said 503 meanwhile). A stored position outside its log is a gap
        (`_outside`)."""
        partitions: list[TopicPartition] = []
        self._counts = {}
        for topic in topics:
            found = sorted(await self._partitions(topic))
            self._counts[topic] = len(found)
            partitions.extend(TopicPartition(topic, p) for p in found)
        offsets = self._offsets
        offsets.assign(partitions)
        for tp in partitions:  # a valid position, and paused: this client never fetches
            offsets.seek(tp, 0)
        if partitions:
            offsets.pause(*partitions)
        starts = await self._ask(offsets.beginning_offsets(partitions)) if partitions else {}
        ends = await self.end_offsets([(tp.topic, tp.partition) for tp in partitions])
        consumer = self._consumer
        consumer.assign(partitions)
        assigned: dict[Partition, int] = {}
        for tp in partitions:
            partition = (tp.topic, tp.partition)
            start, position = starts[partition], positions.get(partition)
            if position is None:
                position = start
            elif not start <= position <= ends[partition]:
                position = self._outside(partition, position, start, ends[partition])
            consumer.seek(tp, position)
            assigned[partition] = position
        return assigned, ends

    def _outside(self, partition: Partition, position: int, start: int, end: int) -> int:
        """Where to read a partition whose stored position lies outside its log [start, end]. Below its start (records
        deleted before they were read): nowhere (InputGap), or, where settings.input_gap is "skip", from its start,
        said in the log. Beyond its end (a topic created again, or records the broker lost): nowhere until the log
        reaches the position, skip or not, since the offsets below it name records the journal holds."""
        topic, number = partition
        if position > end:
            raise InputGap(f"input {topic}[{number}]: the stored position {position} lies beyond the log's end {end} "
                           f"(a topic created again, or records the broker lost); the service reads on once the log "
                           f"reaches offset {position} (the offsets below it name records the journal holds)")
        gap = (f"input {topic}[{number}]: offsets {position} to {start - 1} were deleted (retention) before the "
               f"service read them")
        if not self._skip_gaps:
            raise InputGap(f"{gap}; set BACKSTOP_INPUT_GAP=skip to read on from offset {start} without them")
        log.warning("%s; BACKSTOP_INPUT_GAP=skip: reading on from offset %d", gap, start)
        return start

    async def fetch(self, *, only: set[Partition] | None, max_records: int, timeout_ms: int) -> Fetched:
        """One getmany; with `only`, the other partitions are paused for it (backpressure)."""
        consumer = self._consumer
        assignment = consumer.assignment()
        paused = [] if only is None else [tp for tp in assignment if (tp.topic, tp.partition) not in only]
        if paused:
            consumer.pause(*paused)
        try:
            fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except OffsetOutOfRangeError as error:  # deleted while the run lagged: a restart says what is missing
            raise InputGap(f"input records deleted before the service read them ({error}); restarting") from error
        finally:
            if paused:
                consumer.resume(*paused)
        for topic, count in self._counts.items():  # the metadata refreshed at least every METADATA_MAX_AGE_MS
            grown = len(consumer.partitions_for_topic(topic) or ())
            if grown > count:
                raise InputPartitionsGrew(f"input topic {topic} has {grown} partitions, {count} when the run "
                                          f"started: restarting to read them all")
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
