"""End-to-end smoke test of the stack the service runs on: the real Kafka 4.1 broker with the pinned clients
(kafka-python admin, aiokafka producer and consumer group, a faust-streaming worker) and PostgreSQL through
asyncpg with the migrated schema (append-only ledger enforced by the database)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

pytestmark = pytest.mark.integration

FAUST_APP = Path(__file__).with_name("faust_smoke_app.py")


async def _consume(consumer: AIOKafkaConsumer, want: int, timeout: float) -> list[object]:
    records: list[object] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(records) < want and asyncio.get_running_loop().time() < deadline:
        batches = await consumer.getmany(timeout_ms=500, max_records=1000)
        for batch in batches.values():
            records.extend(batch)
    return records


async def test_kafka_idempotent_producer_and_consumer_group_with_explicit_commits(
        kafka_bootstrap: str, make_topics: Callable[..., list[str]], topic_prefix: str) -> None:
    (topic,) = make_topics("smoke.fills", partitions=3)
    group = f"{topic_prefix}smoke-group"
    sent = [(f"acct-{i % 5}".encode(), orjson.dumps({"fill_id": f"f{i}", "qty": "0.001"})) for i in range(60)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all",
                                client_id=f"{topic_prefix}producer")
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for key, value in sent]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert {m.topic for m in metadata} == {topic}
    end_offsets: dict[int, int] = {}
    for m in metadata:
        end_offsets[m.partition] = max(end_offsets.get(m.partition, 0), m.offset + 1)

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                client_id=f"{topic_prefix}consumer")
    await consumer.start()
    try:
        records = await _consume(consumer, len(sent), timeout=30)
        assert len(records) == len(sent), f"consumed {len(records)} of {len(sent)} records"
        # exactly what was sent, nothing twice; per key in the order sent (a key always lands on one partition)
        assert sorted((r.key, r.value) for r in records) == sorted(sent)  # type: ignore[attr-defined]
        for key in {k for k, _ in sent}:
            got = [r.value for r in records if r.key == key]  # type: ignore[attr-defined]
            assert got == [v for k, v in sent if k == key]
        await consumer.commit()
        committed = {tp.partition: await consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        await consumer.stop()
    for partition, offset in end_offsets.items():
        assert committed[partition] == offset, f"partition {partition}: committed {committed[partition]}, end {offset}"

    # A new member of the group resumes at the committed offsets: nothing is delivered again.
    again = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    await again.start()
    try:
        assert await _consume(again, 1, timeout=3) == []
        for partition, offset in end_offsets.items():
            assert await again.position(TopicPartition(topic, partition)) == offset
    finally:
        await again.stop()


async def test_faust_worker_forwards_a_record(kafka_bootstrap: str, make_topics: Callable[..., list[str]],
                                              topic_prefix: str, tmp_path: Path) -> None:
    source, sink = make_topics("smoke.faust-in", "smoke.faust-out")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(source, key=b"BTCUSDT", value=b'{"mark_price": "50000.5"}')
    finally:
        await producer.stop()

    log_path = tmp_path / "faust-worker.log"
    env = dict(os.environ, SMOKE_BROKER=kafka_bootstrap, SMOKE_APP_ID=f"{topic_prefix}faust-smoke",
               SMOKE_IN=source, SMOKE_OUT=sink, SMOKE_DATADIR=str(tmp_path / "faust-data"))
    with log_path.open("wb") as log:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, str(FAUST_APP), "worker", "--loglevel", "info", "--without-web",
            cwd=tmp_path, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(sink, 0)])
            await consumer.seek_to_beginning(TopicPartition(sink, 0))
            records = await _consume(consumer, 1, timeout=90)
        finally:
            await consumer.stop()
        if not records:
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"the faust worker forwarded nothing within 90 s; worker exit code {worker.returncode}; "
                        f"its log ends with:\n{tail}")
        (record,) = records
        assert record.key == b"BTCUSDT"  # type: ignore[attr-defined]
        assert orjson.loads(record.value) == {  # type: ignore[attr-defined]
            "forwarded_by": "faust", "original": '{"mark_price": "50000.5"}'}
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(worker.wait(), timeout=30)
            except TimeoutError:
                worker.kill()
                await worker.wait()


async def test_postgres_write_read_and_the_ledger_is_append_only(migrated_database: str) -> None:
    writer = await asyncpg.connect(migrated_database)
    try:
        async with writer.transaction():
            await writer.execute(
                "INSERT INTO journal (seq, source_topic, source_partition, source_offset, type, ts, payload, "
                "payload_hash) VALUES (1, 'backstop.liquidations', 0, 41, 'liquidation', 1760126400000, $1, $2)",
                '{"liquidation_id":"L1"}', "ab" * 32)
            await writer.execute(
                "INSERT INTO fund_ledger (position, id, seq, ts, fund_id, kind, amount, balance_after, "
                "liquidation_id, counter_account, prev_hash, hash, record) "
                "VALUES (1, 'fl-1-0', 1, 1760126400000, 'BTC', 'liquidation_gain', $1, $2, 'L1', "
                "'acct:alice', $3, $4, '{}')",
                Decimal("0.00000001"), Decimal("1000000.00000001"), "0" * 64, "cd" * 32)
            await writer.execute(
                "INSERT INTO consumed_offsets (topic, partition, next_offset) VALUES ('backstop.liquidations', 0, 42)")
    finally:
        await writer.close()

    reader = await asyncpg.connect(migrated_database)
    try:
        row = await reader.fetchrow("SELECT amount, balance_after, liquidation_id FROM fund_ledger WHERE id = 'fl-1-0'")
        assert row is not None
        assert (row["amount"], row["balance_after"], row["liquidation_id"]) == (
            Decimal("0.00000001"), Decimal("1000000.00000001"), "L1")
        assert await reader.fetchval("SELECT next_offset FROM consumed_offsets") == 42

        # Append-only is the database's rule, not only the code's: UPDATE, DELETE and TRUNCATE are refused.
        for table, statement in [
            ("fund_ledger", "UPDATE fund_ledger SET amount = 0 WHERE id = 'fl-1-0'"),
            ("fund_ledger", "DELETE FROM fund_ledger WHERE id = 'fl-1-0'"),
            ("fund_ledger", "TRUNCATE fund_ledger"),
            ("journal", "UPDATE journal SET payload = '{}' WHERE seq = 1"),
            ("journal", "DELETE FROM journal"),
            ("adl_events", "TRUNCATE adl_events"),
        ]:
            with pytest.raises(asyncpg.PostgresError, match=f"{table} is append-only"):
                await reader.execute(statement)
        assert await reader.fetchval("SELECT amount FROM fund_ledger WHERE id = 'fl-1-0'") == Decimal("0.00000001")
        assert await reader.fetchval("SELECT count(*) FROM journal") == 1
        # Projections are not the record: they may be rewritten.
        await reader.execute("UPDATE consumed_offsets SET next_offset = 43")
    finally:
        await reader.close()
