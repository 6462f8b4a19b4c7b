"""The relay's send step against the real broker: rows over several record batches per partition arrive once each,
in id order per partition, on their key's partition, with their headers; rows already in Kafka are not sent."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from backstop.adapters.kafka.publisher import RECORD_BATCH_BYTES, KafkaPublisher
from backstop.adapters.postgres.store import OutboxRow
from backstop.service.ports import OUTBOX_HEADER
from backstop.service.relay import partition_for, to_send
from backstop.settings import Settings

PARTITIONS = 2


async def test_rows_beyond_one_record_batch_arrive_once_each_in_order(kafka_bootstrap: str,
                                                                     make_topics: Callable[..., list[str]]) -> None:
    [topic] = make_topics("relay-batches", partitions=PARTITIONS)
    payload = "x" * 1000
    rows = [OutboxRow(i, topic, f"account-{i % 7}", f"r-{i}", f'{{"n": {i}, "pad": "{payload}"}}')
            for i in range(1, 4001)]
    for partition in range(PARTITIONS):  # several record batches for each partition
        size = sum(len(r.payload) for r in rows if partition_for(r.key, PARTITIONS) == partition)
        assert size > 2 * RECORD_BATCH_BYTES
    already = {(topic, 0): 300}  # partition 0 holds every row up to id 300 from before a crash
    publisher = KafkaPublisher(Settings(kafka_bootstrap=kafka_bootstrap))
    await publisher.start()
    try:
        sent = await publisher.send(to_send(rows, {topic: PARTITIONS}, already))
    finally:
        await publisher.stop()
    expected = [r for r in rows if not (partition_for(r.key, PARTITIONS) == 0 and r.id <= 300)]
    assert sum(sent.values()) == len(expected) < len(rows)

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        got: dict[int, list[tuple[int, str, str, str]]] = {p: [] for p in range(PARTITIONS)}
        for _ in range(30):  # until everything sent is read (a missing record fails the comparison below)
            if sum(map(len, got.values())) >= len(expected):
                break
            for tp, records in (await consumer.getmany(timeout_ms=2000)).items():
                for record in records:
                    headers = dict(record.headers)
                    got[tp.partition].append((int(headers[OUTBOX_HEADER]), record.key.decode(),
                                              headers["backstop-record-id"].decode(), record.value.decode()))
    finally:
        await consumer.stop()
    for partition in range(PARTITIONS):
        want = [r for r in expected if partition_for(r.key, PARTITIONS) == partition]
        assert got[partition] == [(r.id, r.key, r.record_id, r.payload) for r in want]
