"""The relay's send step against the real broker: rows over several record batches per partition arrive once each,
in id order per partition, on their key's partition, with their headers; rows already in Kafka are not sent."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr
from service_harness import migrate_before

from backstop.adapters.kafka.publisher import RECORD_BATCH_BYTES, KafkaPublisher
from backstop.adapters.kafka.tools import ensure_topics, read_topic
from backstop.adapters.postgres.migrations import migrate
from backstop.adapters.postgres.store import Head, OutboxRow, Store, journal_relay_row
from backstop.core.engine import Engine
from backstop.core.processor import Processor
from backstop.pipeline import projections
from backstop.pipeline.held_ids import ServiceIds
from backstop.pipeline.ingest import BatchResult, Consumed, OutboxMessage, ingest_batch, journal_record, output_json
from backstop.pipeline.topics import TopicNames
from backstop.service.app import kafka_runtime
from backstop.service.ports import OUTBOX_HEADER
from backstop.service.relay import OutboxRelay, partition_for, to_send
from backstop.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "02-adl-walks-queue.jsonl"

PARTITIONS = 2


def as_consumed(lines: list[bytes], topics: TopicNames, offsets: dict[str, int]) -> list[Consumed]:
    """The lines as consumed records, each topic's offsets going on from `offsets` (updated)."""
    batch = []
    for line in lines:
        document = orjson.loads(line)
        topic = topics.input(document.pop("type"))
        offsets[topic] = offsets.get(topic, -1) + 1
        batch.append(Consumed(topic, 0, offsets[topic], None, orjson.dumps(document)))
    return batch


async def test_rows_beyond_one_record_batch_arrive_once_each_in_order(kafka_bootstrap: str,
                                                                     make_topics: Callable[..., list[str]]) -> None:
    [topic] = make_topics("relay-batches", partitions=PARTITIONS)
    payload = "x" * 1000
    rows = [OutboxRow(i, topic, f"account-{i % 7}", f"r-{i}", f'{{"n": {i}, "pad": "{payload}"}}')
            for i in range(1, 4001)]
    for partition in range(PARTITIONS):  # several record batches for each partition
        size = sum(len(r.payload) for r in rows if partition_for(r.key, PARTITIONS) == partition)
        assert size > 2 * RECORD_BATCH_BYTES
    already = {(topic, 0): (OUTBOX_HEADER, 300)}  # partition 0 holds every row up to id 300 from before a crash
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


async def test_an_outbox_written_before_the_upgrade_drains_first_then_the_tables(
        kafka_bootstrap: str, topic_prefix: str, empty_database: str, tmp_path: Path) -> None:
    """A database whose outbox still holds copies of journal, fund-ledger, ADL event and posting rows, some of them
    published and the cursor not moved since (a crash), upgraded by migration 0008: the relay publishes every record
    once, the outbox's before any table row, and per partition in its source's order."""
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"{topic_prefix}upgrade{secrets.token_hex(3)}.",
                        output_partitions=2, relay_batch=5, relay_idle_ms=10, pg_dsn=SecretStr(empty_database))
    topics = TopicNames(settings.topic_prefix)
    ensure_topics(settings)
    await migrate_before(empty_database, tmp_path, "0008")
    lines = EXAMPLE.read_bytes().splitlines()
    processor, positions, offsets = Processor(Engine(ids=ServiceIds())), [0, 0], dict[str, int]()

    def batch(consumed: list[Consumed]) -> tuple[int, BatchResult, Head, projections.Projections]:
        engine, expected = processor.engine, processor.engine.last_seq
        result = ingest_batch(processor, consumed, topics)
        positions[0] += len(result.fund_entries)
        positions[1] += len(result.adl_events)
        head = Head(engine.last_seq, engine.head_hash, engine.ledger_head, engine.adl_head, processor.duplicates,
                    processor.rejected, *positions)
        return expected, result, head, projections.build(engine, result, refresh_all=True,
                                                          touched=projections.Touched.everything(engine))

    store = await Store.open(empty_database)
    publisher = KafkaPublisher(settings)
    await publisher.start()
    try:
        # before the upgrade: every output record copied to the outbox, half of them published, the cursor behind
        expected, old, head, rows = batch(as_consumed(lines[:12], topics, offsets))
        old.outbox = [*(OutboxMessage(topics.journal, *journal_relay_row(r)[:2], journal_record(r))
                        for r in old.journal),
                      *(OutboxMessage(topics.fund_ledger, e.fund_id, e.id, output_json(e)) for e in old.fund_entries),
                      *(OutboxMessage(topics.adl_events, e.account_id, e.id, output_json(e)) for e in old.adl_events),
                      *(OutboxMessage(topics.postings, p.asset, p.id, output_json(p)) for p in old.postings),
                      *old.outbox]
        await store.commit(expected_seq=expected, result=old, head=head, projections=rows)
        outbox = [OutboxRow(*r) for r in await store.pool.fetch(
            "SELECT id, topic, key, record_id, payload FROM outbox ORDER BY id")]
        counts = await publisher.partition_counts(topics.outputs)
        half = len(outbox) // 2
        await publisher.send(to_send(outbox[:half], counts, {}))
        await store.pool.execute("UPDATE relay_cursor SET published_up_to = $1", outbox[half - 3].id)
        await migrate(empty_database)
        # after it: rows in their own tables only
        bad = [Consumed(topics.input("fill"), 0, offset, None, b"{nope") for offset in (10_000, 10_001)]
        expected, new, head, rows = batch([*as_consumed(lines[12:], topics, offsets), *bad])
        assert new.journal and new.postings and {m.topic for m in new.outbox} == {topics.dead_letter}
        await store.commit(expected_seq=expected, result=new, head=head, projections=rows)
        relay = OutboxRelay(settings, store, kafka_runtime())
        task = asyncio.create_task(relay.run_forever())
        for _ in range(300):
            if relay.ready and await store.outbox_backlog() == 0:
                break
            await asyncio.sleep(0.05)
        relay.stop()
        relay.wake()
        await task
        # what each topic must hold, in its source's order: the tables' and the outbox's
        order = {topics.journal: [f"j-{r.seq}" for r in old.journal + new.journal],
                 topics.dead_letter: [r.record_id for r in outbox if r.topic == topics.dead_letter] + [
                     m.record_id for m in new.outbox]}
        for topic, table in ((topics.fund_ledger, "fund_ledger"), (topics.adl_events, "adl_events"),
                             (topics.postings, "postings")):
            order[topic] = [r["id"] for r in await store.pool.fetch(f"SELECT id FROM {table} ORDER BY position")]
        assert all(order.values())
    finally:
        await publisher.stop()
        await store.close()
    for topic, ids in order.items():
        got: dict[int, list[str]] = {}
        async for partition, _, value in read_topic(settings, topic, follow=False):
            got.setdefault(partition, []).append(orjson.loads(value)["id"])
        assert sorted(i for found in got.values() for i in found) == sorted(ids), topic  # each once, none lost
        for partition, found in got.items():
            assert found == [i for i in ids if i in found], (topic, partition)  # in the source's order
