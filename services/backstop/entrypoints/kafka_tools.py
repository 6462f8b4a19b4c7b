"""Kafka command-line tools: produce a journal file to the input topics, tail an output topic, read the journal."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from backstop.pipeline.topics import INPUT_TYPES, TopicNames, input_key
from backstop.settings import Settings


async def produce_file(settings: Settings, path: Path, *, keep_type: bool = False) -> dict[str, int]:
    """Each line to its type's topic, keyed per the contract, with an idempotent producer. Returns counts."""
    topics = TopicNames(settings.topic_prefix)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all",
                                linger_ms=5, client_id="backstop-produce", ssl_context=settings.ssl_context(),
                                **settings.kafka_client_options())
    await producer.start()
    counts: dict[str, int] = {}
    try:
        pending = []
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            document = orjson.loads(line)
            record_type = document.get("type") if isinstance(document, dict) else None
            if record_type not in INPUT_TYPES:
                raise ValueError(f"{path}:{number}: no known \"type\" to choose a topic by")
            if not keep_type:
                del document["type"]  # on Kafka the topic names the type
            key = input_key(record_type, document)
            pending.append(await producer.send(topics.input(record_type), orjson.dumps(document), key=key.encode()))
            counts[record_type] = counts.get(record_type, 0) + 1
        for future in pending:
            await future
    finally:
        await producer.stop()
    return counts


async def read_topic(settings: Settings, topic: str, *, follow: bool, idle_timeout_s: float = 2.0
                     ) -> AsyncIterator[tuple[int, int, bytes]]:
    """(partition, offset, value) from the beginning; stops at the end offsets of the start, unless following."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed", client_id="backstop-tail",
                                ssl_context=settings.ssl_context(), **settings.kafka_client_options())
    await consumer.start()
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
    await consumer.start()
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
             "dead-letter": topics.dead_letter}[stream]
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
