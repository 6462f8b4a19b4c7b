"""Kafka for the command-line tools: produce a journal file to the input topics, tail an output topic, read the
journal topic (the service's own consumer and publisher are consumer.py and publisher.py beside it)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from backstop.adapters.journal_file import JournalFile
from backstop.adapters.kafka import admin
from backstop.pipeline.topics import INPUT_TYPES, TopicNames, input_key, input_key_field
from backstop.settings import Settings
from backstop.wire.decode import repeated_key


async def _started(client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
    """start(), and stop() when it fails: a client that never connected still holds tasks and sockets."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


@dataclass(slots=True)
class Produced:
    counts: dict[str, int] = field(default_factory=dict)  # records sent, per type
    not_sent: list[tuple[int, str]] = field(default_factory=list)  # (line number, why it cannot be routed)


def route(raw: bytes, *, keep_type: bool) -> tuple[str, bytes, bytes]:
    """(record type, Kafka key, value) of a journal line, or ValueError saying why it has no topic or key. Only
    what routing needs is checked: the service validates the rest (and dead-letters what fails)."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    record_type = document.get("type")
    if record_type not in INPUT_TYPES:
        raise ValueError(f"no known \"type\" to choose a topic by (got {record_type!r})")
    key_field = input_key_field(record_type)
    if document.get(key_field) is None:
        raise ValueError(f"no {key_field} to key a {record_type} record by")
    key = input_key(record_type, document).encode()
    if orjson.dumps(document) != raw and repeated_key(raw, document) is not None:
        # re-encoded, it would keep one of the key's values: sent as it is, for the service to dead-letter it as
        # `replay` does (duplicate key)
        return record_type, key, bytes(raw)
    if not keep_type:
        del document["type"]  # on Kafka the topic names the type
    return record_type, key, orjson.dumps(document)


def ensure_topics(settings: Settings, *, timeout_ms: int = 30_000) -> list[str]:
    """The contract's topics as the service lays them out (partitions, retention); returns the ones created."""
    plans = admin.plan(TopicNames(settings.topic_prefix), input_partitions=settings.input_partitions,
                       input_retention_ms=settings.input_retention_ms, output_partitions=settings.output_partitions)
    created, _ = admin.create(settings.kafka_bootstrap, plans, replication=settings.replication_factor,
                              timeout_ms=timeout_ms, client_kwargs=settings.kafka_admin_options())
    return created


async def produce_file(settings: Settings, path: Path, *, keep_type: bool = False,
                       create_topics: bool = False) -> Produced:
    """Each line to its type's topic, keyed per the contract, with an idempotent producer. A line that cannot be
    routed is not sent and is listed in the result with its reason; the lines after it are sent. `create_topics`:
    the missing topics are created first (after the producer connected, so a broker that is down fails fast)."""
    topics = TopicNames(settings.topic_prefix)
    journal = JournalFile.open(path)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all",
                                linger_ms=5, client_id="backstop-produce", ssl_context=settings.ssl_context(),
                                **settings.kafka_client_options())
    await _started(producer)
    produced = Produced()
    try:
        if create_topics:
            await asyncio.to_thread(ensure_topics, settings)
        pending = []
        for number, raw in journal.lines():
            try:
                record_type, key, value = route(raw, keep_type=keep_type)
            except ValueError as error:
                produced.not_sent.append((number, str(error)))
                continue
            pending.append(await producer.send(topics.input(record_type), value, key=key))
            produced.counts[record_type] = produced.counts.get(record_type, 0) + 1
        for future in pending:
            await future
    finally:
        await producer.stop()
    return produced


async def read_topic(settings: Settings, topic: str, *, follow: bool, idle_timeout_s: float = 2.0
                     ) -> AsyncIterator[tuple[int, int, bytes]]:
    """(partition, offset, value) from the beginning; stops at the end offsets of the start, unless following."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed", client_id="backstop-tail",
                                ssl_context=settings.ssl_context(), **settings.kafka_client_options())
    await _started(consumer)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
        if not partitions:
            raise ValueError(f"no topic {topic}")
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        while True:
            if not follow and all([await consumer.position(tp) >= ends[tp] for tp in assigned]):
                return
            batch = await consumer.getmany(timeout_ms=int(idle_timeout_s * 1000))
            for tp, records in sorted(batch.items(), key=lambda item: item[0].partition):
                for record in records:
                    yield tp.partition, record.offset, record.value or b""
    finally:
        await consumer.stop()


async def end_offsets(settings: Settings, topics: list[str]) -> dict[tuple[str, int], int]:
    """The end offset of every partition of the given topics."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                client_id="backstop-offsets", ssl_context=settings.ssl_context(),
                                **settings.kafka_client_options())
    await _started(consumer)
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def tail(settings: Settings, stream: str, *, follow: bool) -> int:
    topics = TopicNames(settings.topic_prefix)
    topic = {"adl-events": topics.adl_events, "fund-ledger": topics.fund_ledger, "journal": topics.journal,
             "dead-letter": topics.dead_letter, "postings": topics.postings,
             "adl-quantiles": topics.adl_quantiles}[stream]
    count = 0
    async for _, _, value in read_topic(settings, topic, follow=follow):
        sys.stdout.write(value.decode() + "\n")
        sys.stdout.flush()
        count += 1
    return count


async def journal_lines_from_kafka(settings: Settings) -> list[bytes]:
    """The journal topic's records in seq order, as replayable lines (their `record` field)."""
    topics = TopicNames(settings.topic_prefix)
    by_seq: dict[int, bytes] = {}
    async for _, _, value in read_topic(settings, topics.journal, follow=False):
        document = orjson.loads(value)
        by_seq[document["seq"]] = orjson.dumps(document["record"], option=orjson.OPT_SORT_KEYS)
    missing = [seq for seq in range(1, len(by_seq) + 1) if seq not in by_seq]
    if missing:
        raise ValueError(f"the journal topic has gaps: seq {missing[:5]} missing")
    return [by_seq[seq] for seq in range(1, len(by_seq) + 1)]


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]
