"""The topics changing under the service, as retention and operators change them: an output partition whose records
all expired, input records deleted before the service read them, an input topic deleted and created again,
partitions added to an input topic. Nothing is passed over silently and nothing stops for good.

DeleteRecords moves a partition's log start exactly as retention does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, NewPartitions
from service_harness import in_process, input_ends, recreate_topic, settings_for, wait_caught_up

from backstop.adapters.kafka import consumer as kafka_consumer
from backstop.adapters.kafka.tools import end_offsets, produce_file
from backstop.pipeline.topics import TopicNames
from backstop.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "01-isolated-liquidation-surplus.jsonl"  # 9 events, transfers on offsets 0 to 2
T0 = 1760000000000


def transfer(transfer_id: str, ts: int) -> bytes:
    return orjson.dumps({"ts": ts, "transfer_id": transfer_id, "account_id": "u9", "asset": "USDT", "amount": "1"})


async def send(bootstrap: str, topic: str, values: list[bytes], partition: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        while partition is not None and partition not in await producer.partitions_for(topic):
            await producer.client.force_metadata_update()  # a partition added just now
        for value in values:
            await producer.send_and_wait(topic, value, key=b"u9", partition=partition)
    finally:
        await producer.stop()


def delete_records(bootstrap: str, partition: TopicPartition, before: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="backstop-tests")
    try:
        admin.delete_records({partition: before}, timeout_ms=30_000)
    finally:
        admin.close()


async def applied_transfers(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT payload FROM journal WHERE type = 'transfer' ORDER BY seq")
        return [orjson.loads(row["payload"])["transfer_id"] for row in rows]
    finally:
        await connection.close()


async def example_applied(settings: Settings, dsn: str) -> tuple[Settings, str]:
    """The example through a service on `settings` (its database's owner: `dsn`), stopped once it is applied; and the
    transfers topic."""
    async with in_process(settings):
        await produce_file(settings, EXAMPLE)
        await wait_caught_up(dsn, applied=9)
    return settings, TopicNames(settings.topic_prefix).input("transfer")


async def until(condition: Any, what: str, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"not within {timeout:g} s: {what}", pytrace=False)


async def test_a_relay_starts_over_an_output_partition_whose_records_all_expired(
        kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}oexp.")
    topics = TopicNames(settings.topic_prefix)
    async with in_process(settings):
        await produce_file(settings, EXAMPLE)
        await send(kafka_bootstrap, topics.input("fill"), [b"{not json"])
        await wait_caught_up(migrated_database, applied=9)
    ends = await end_offsets(settings, [topics.dead_letter])
    assert ends[(topics.dead_letter, 0)] == 1
    delete_records(kafka_bootstrap, TopicPartition(topics.dead_letter, 0), 1)  # its 30 days have passed
    async with in_process(settings) as (_, relay):
        await until(lambda: relay.ready, "the relay ready after its start")
        await send(kafka_bootstrap, topics.input("fill"), [b"{still not json"])
        await wait_caught_up(migrated_database, applied=9, ends=await input_ends(settings))
    assert await end_offsets(settings, [topics.dead_letter]) == {(topics.dead_letter, 0): 2}


async def test_input_deleted_before_it_was_read_stops_the_processor_until_it_is_told_to_skip(
        kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    settings, transfers = await example_applied(
        settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}igap."), migrated_database)
    # while the service is away: offsets 3 to 7 are written, then deleted before it reads them
    await send(kafka_bootstrap, transfers, [transfer(f"gone-{n}", T0 + 10 + n) for n in range(5)]
               + [transfer("kept", T0 + 20)])
    delete_records(kafka_bootstrap, TopicPartition(transfers, 0), 8)
    expected = (f"InputGap: input {transfers}[0]: offsets 3 to 7 were deleted (retention) before the service read "
                f"them; set BACKSTOP_INPUT_GAP=skip to read on from offset 8 without them")
    async with in_process(settings) as (processor, _):
        await until(lambda: processor.progress.last_error == expected,
                    f"the processor reporting {expected!r} (it has {processor.progress.last_error!r})")
        assert not processor.progress.ready and processor.progress.seq == 9  # the stored head, for /health
    assert await applied_transfers(migrated_database) == ["t1", "t2", "t3"]
    async with in_process(settings.model_copy(update={"input_gap": "skip"})):
        await wait_caught_up(migrated_database, applied=10)
    assert await applied_transfers(migrated_database) == ["t1", "t2", "t3", "kept"]


async def test_an_input_topic_created_again_holds_the_processor_until_it_is_told_to_read_the_new_one(
        kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    settings, transfers = await example_applied(settings_for(kafka_bootstrap, migrated_database,
                                                             f"{topic_prefix}again."), migrated_database)
    connection = await asyncpg.connect(migrated_database)
    try:
        first_id = await connection.fetchval("SELECT topic_id::text FROM input_topics WHERE topic = $1", transfers)
    finally:
        await connection.close()
    # while the service is away the topic is deleted and created again, and gets more records than the old one had:
    # read on from the stored position 3, the new topic's offsets 0 to 2 would be passed over without a word
    await asyncio.to_thread(recreate_topic, kafka_bootstrap, transfers, 1)
    await send(kafka_bootstrap, transfers, [transfer(f"new-{n}", T0 + 10 + n) for n in range(5)])
    async with in_process(settings) as (processor, _):
        await until(lambda: processor.progress.last_error is not None, "the processor holding")
        error = processor.progress.last_error
        assert error is not None and error.startswith(
            f"InputGap: input topic {transfers} was deleted and created again (its id was {first_id}, now "), error
        assert error.endswith(") after the service read the old one up to the positions stored (next offsets: [0] 3);"
                              " set BACKSTOP_INPUT_GAP=skip to read the new topic on from those positions, without its"
                              " records below them"), error
        assert not processor.progress.ready and processor.progress.seq == 9
    assert await applied_transfers(migrated_database) == ["t1", "t2", "t3"]
    async with in_process(settings.model_copy(update={"input_gap": "skip"})):
        await wait_caught_up(migrated_database, applied=11)
    assert await applied_transfers(migrated_database) == ["t1", "t2", "t3", "new-3", "new-4"]
    async with in_process(settings) as (processor, _):  # the new topic's id is the one stored now: no hold
        await until(lambda: processor.progress.ready, "the processor ready on the new topic")
        assert processor.progress.last_error is None


async def test_an_input_topic_never_read_and_created_again_is_read_from_its_start_without_a_hold(
        kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    """The example has no funding: the funding topic's positions are stored at 0 (read empty), and nothing of the
    old topic can be passed over: the new one is read from its start."""
    settings, _ = await example_applied(settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}never."),
                                        migrated_database)
    funding = TopicNames(settings.topic_prefix).input("funding")
    connection = await asyncpg.connect(migrated_database)
    try:
        stored = await connection.fetch("SELECT next_offset FROM consumed_offsets WHERE topic = $1", funding)
    finally:
        await connection.close()
    assert stored and all(row["next_offset"] == 0 for row in stored)
    await asyncio.to_thread(recreate_topic, kafka_bootstrap, funding, 1)
    await send(kafka_bootstrap, funding, [orjson.dumps({"ts": T0 + 60_000, "symbol": "ETHUSDT", "rate": "0.0001",
                                                        "mark_price": "1510"})])
    async with in_process(settings) as (processor, _):
        await wait_caught_up(migrated_database, applied=10)
        assert processor.progress.last_error is None


async def test_a_stored_position_beyond_a_partition_s_end_holds_until_the_log_reaches_it_even_told_to_skip(
        kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    settings, transfers = await example_applied(settings_for(kafka_bootstrap, migrated_database,
                                                             f"{topic_prefix}short.", input_gap="skip"),
                                                migrated_database)
    connection = await asyncpg.connect(migrated_database)  # as a database migrated after the topic was made again
    try:
        await connection.execute("DELETE FROM input_topics")
    finally:
        await connection.close()
    await asyncio.to_thread(recreate_topic, kafka_bootstrap, transfers, 1)
    await send(kafka_bootstrap, transfers, [transfer("short-0", T0 + 10)])
    async with in_process(settings) as (processor, _):
        # read from the start, the new offset 0 would repeat t1's place in the journal: the service waits for 3
        expected = (f"InputGap: input {transfers}[0]: the stored position 3 lies beyond the log's end 1 (a topic "
                    f"created again, or records the broker lost); the service reads on once the log reaches offset 3"
                    f" (the offsets below it name records the journal holds)")
        await until(lambda: processor.progress.last_error == expected,
                    f"the processor reporting {expected!r} (it has {processor.progress.last_error!r})")
        await send(kafka_bootstrap, transfers, [transfer(f"short-{n}", T0 + 10 + n) for n in (1, 2, 3)])
        await wait_caught_up(migrated_database, applied=10)
    assert await applied_transfers(migrated_database) == ["t1", "t2", "t3", "short-3"]


async def test_a_transaction_s_marker_after_the_last_record_read_is_no_gap_once_deleted(
        kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    """The consumer passes over a commit marker; the stored offset goes past it with the record, so retention
    deleting everything read (a partition quiet for its retention) leaves no stored offset below the log start."""
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}txn.")
    transfers = TopicNames(settings.topic_prefix).input("transfer")
    async with in_process(settings):
        await produce_file(settings, EXAMPLE)
        await wait_caught_up(migrated_database, applied=9)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic_prefix}txn")
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(transfers, transfer("in-a-transaction", T0 + 10), key=b"u9")
        finally:
            await producer.stop()
        ends = await input_ends(settings)
        assert ends[(transfers, 0)] == 5  # t1, t2, t3, the record, its marker
        await wait_caught_up(migrated_database, applied=10, ends=ends)
    delete_records(kafka_bootstrap, TopicPartition(transfers, 0), 5)
    async with in_process(settings) as (processor, _):
        await until(lambda: processor.progress.ready, "the processor ready after retention deleted what it read")
        assert processor.progress.last_error is None
    assert await applied_transfers(migrated_database) == ["t1", "t2", "t3", "in-a-transaction"]


async def test_partitions_added_to_an_input_topic_are_read_after_the_processor_restarts_itself(
        kafka_bootstrap: str, topic_prefix: str, migrated_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_consumer, "METADATA_MAX_AGE_MS", 500)
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}grow.")
    transfers = TopicNames(settings.topic_prefix).input("transfer")
    async with in_process(settings) as (processor, _):
        await produce_file(settings, EXAMPLE)
        await wait_caught_up(migrated_database, applied=9)
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="backstop-tests")
        try:
            admin.create_partitions({transfers: NewPartitions(total_count=2)})
        finally:
            admin.close()
        await send(kafka_bootstrap, transfers, [transfer("on-the-new-partition", T0 + 10)], partition=1)
        await wait_caught_up(migrated_database, applied=10)
        assert processor.progress.ready
    assert await applied_transfers(migrated_database) == ["t1", "t2", "t3", "on-the-new-partition"]
