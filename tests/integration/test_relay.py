"""The relay's send step against the real broker: rows over several record batches per partition arrive once each,
in id order per partition, on their key's partition, with their headers; rows already in Kafka are not sent."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr
from service_harness import migrate_before

from backstop.adapters.kafka.publisher import RECORD_BATCH_BYTES, KafkaPublisher
from backstop.adapters.kafka.tools import ensure_topics, read_topic
from backstop.adapters.postgres.migrations import migrate
from backstop.adapters.postgres.store import OUTBOX, Head, OutboxRow, Store, journal_relay_row
from backstop.core.engine import Engine
from backstop.core.processor import Processor
from backstop.pipeline import projections
from backstop.pipeline.held_ids import ServiceIds
from backstop.pipeline.ingest import (
    BatchResult,
    Consumed,
    OutboxMessage,
    ingest_batch,
    journal_record,
    output_json,
    output_values,
    quantile_block_rows,
)
from backstop.pipeline.service_engine import open_service_engine
from backstop.pipeline.topics import TopicNames
from backstop.service.app import kafka_runtime
from backstop.service.ports import OUTBOX_HEADER, RECORD_ID_HEADER, RowList, place_header
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


def outbox_record(record: Any) -> tuple[int, str, str, str]:
    """A record the relay published from the outbox: its outbox id, key, record id and bytes."""
    headers = dict(record.headers)
    return (int(headers[OUTBOX_HEADER]), record.key.decode(), headers["backstop-record-id"].decode(),
            record.value.decode())

async def read_both(store: Store, limit: int, topics: TopicNames) -> list[OutboxRow]:
    """store.unpublished's rows, after checking the compiled relay's read of the same statement's COPY text gives
    the same rows, summaries, rows to pass over and record batches (backstop._engine.RelayRows)."""
    rows, was = RowList(await store.unpublished(limit, topics)), store.relay_in_rust
    store.relay_in_rust = True
    try:
        held = await store.relay_read(limit, topics)
    finally:
        store.relay_in_rust = was
    assert [OutboxRow(*fields) for fields in held.rows()] == rows
    assert (len(held), held.last_of_each_source(), held.most_of_one_source(), held.topic_sources()) == (
        len(rows), rows.last_of_each_source(), rows.most_of_one_source(), rows.topic_sources())
    counts = {topic: 3 for topic in topics.outputs}
    published = {(row.topic, partition_for(row.key, 3)): (place_header(row), row.id) for row in rows[::4]}
    assert held.without_published(counts, published).rows() == rows.without_published(counts, published)
    assert held.record_batches(counts, RECORD_ID_HEADER, 1, 300) == rows.record_batches(counts, RECORD_ID_HEADER,
                                                                                      1, 300)
    return rows


async def relay_until_drained(settings: Settings, store: Store) -> None:
    """Runs a relay until every stored row is in Kafka (or 15 s passed: the test's topic check then says what is
    missing), then stops it."""
    relay = OutboxRelay(settings, store, kafka_runtime())
    task = asyncio.create_task(relay.run_forever())
    for _ in range(300):
        if relay.ready and await store.outbox_backlog() == 0:
            break
        await asyncio.sleep(0.05)
    relay.stop()
    relay.wake()
    await task


@pytest.mark.parametrize("engine", ["compiled", "reference"])  # record batches encoded in Rust, or by aiokafka
async def test_rows_beyond_one_record_batch_arrive_once_each_in_order(kafka_bootstrap: str,
                                                                     make_topics: Callable[..., list[str]],
                                                                     engine: Literal["compiled", "reference"]) -> None:
    [topic] = make_topics(f"relay-batches-{engine}", partitions=PARTITIONS)
    payload = "x" * 1000
    rows = [OutboxRow(i, topic, f"account-{i % 7}", f"r-{i}", f'{{"n": {i}, "pad": "{payload}"}}')
            for i in range(1, 4001)]
    for partition in range(PARTITIONS):  # several record batches for each partition
        size = sum(len(r.payload) for r in rows if partition_for(r.key, PARTITIONS) == partition)
        assert size > 2 * RECORD_BATCH_BYTES
    already = {(topic, 0): (OUTBOX_HEADER, 300)}  # partition 0 holds every row up to id 300 from before a crash
    publisher = KafkaPublisher(Settings(kafka_bootstrap=kafka_bootstrap, engine=engine))
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
                got[tp.partition].extend(map(outbox_record, records))
    finally:
        await consumer.stop()
    for partition in range(PARTITIONS):
        want = [r for r in expected if partition_for(r.key, PARTITIONS) == partition]
        assert got[partition] == [(r.id, r.key, r.record_id, r.payload) for r in want]


class StoreOfThen(Store):
    """Today's store writing to a database of before migration 0008, whose postings are rows (0007), not blocks
    (0017): the postings before a batch are counted there."""

    async def _stored_before(self, connection: asyncpg.Connection, expected_seq: int) -> tuple[int, int]:
        row = await connection.fetchrow("SELECT (SELECT count(*) FROM postings), (SELECT coalesce(max(id), 0) "
                                        "FROM outbox)")
        return row[0], row[1]


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

    store: Store = await StoreOfThen.open(empty_database, relay_in_rust=True)  # the relay as the service runs it
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
        # the postings as the code of then stored them: every field a column (migration 0007), which today's store
        # no longer writes (0015)
        old_postings, old.postings = old.postings, []
        await store.commit(expected_seq=expected, result=old, head=head, projections=rows)
        columns = ("id", "seq", "ts", "kind", "debit_account", "credit_account", "asset", "amount",
                   "debit_balance_after", "credit_balance_after", "transfer_id", "fill_id", "liquidation_id",
                   "adl_event_id", "fund_entry_id", "prev_hash", "hash")
        await store.pool.copy_records_to_table("postings", columns=["position", *columns, "record"], records=[
            (position, *output_values(p, columns), output_json(p).decode())
            for position, p in enumerate(old_postings, start=1)])
        outbox = [OutboxRow(*r) for r in await store.pool.fetch(
            "SELECT id, topic, key, record_id, payload FROM outbox ORDER BY id")]
        counts = await publisher.partition_counts(topics.outputs)
        half = len(outbox) // 2
        await publisher.send(to_send(outbox[:half], counts, {}))
        await store.pool.execute("UPDATE relay_cursor SET published_up_to = $1", outbox[half - 3].id)
        await migrate(empty_database)
        await store.close()  # the service of then stops; today's starts on the upgraded database
        store = await Store.open(empty_database, relay_in_rust=True)
        # after it: rows in their own tables only
        bad = [Consumed(topics.input("fill"), 0, offset, None, b"{nope") for offset in (10_000, 10_001)]
        expected, new, head, rows = batch([*as_consumed(lines[12:], topics, offsets), *bad])
        assert new.journal and new.postings and {m.topic for m in new.outbox} == {topics.dead_letter}
        await store.commit(expected_seq=expected, result=new, head=head, projections=rows)
        await relay_until_drained(settings, store)
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


async def test_a_quantile_block_published_in_part_before_a_crash_is_completed_once(
        kafka_bootstrap: str, topic_prefix: str, empty_database: str) -> None:
    """A batch's quantile records are one outbox row (migration 0011), split by the relay into one Kafka record each,
    as one row per record gave them (key, headers, bytes). A crash after part of the block reached Kafka and before
    the cursor moved leaves each partition a prefix of its records: the relay's restart sends the rest, each once,
    in order per partition."""
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"{topic_prefix}block{secrets.token_hex(3)}.",
                        output_partitions=3, relay_batch=5, relay_idle_ms=10, pg_dsn=SecretStr(empty_database))
    topics = TopicNames(settings.topic_prefix)
    ensure_topics(settings)
    await migrate(empty_database)
    processor = Processor(Engine(ids=ServiceIds(), adl_quantiles=True))  # as the service runs it
    engine = processor.engine
    result = ingest_batch(processor, as_consumed(EXAMPLE.read_bytes().splitlines(), topics, {}), topics)
    head = Head(engine.last_seq, engine.head_hash, engine.ledger_head, engine.adl_head, processor.duplicates,
                processor.rejected, len(result.fund_entries), len(result.adl_events))
    expected = quantile_block_rows(result.quantile_block.decode())
    assert len(expected) >= 6 and len({partition_for(key, 3) for key, _, _ in expected}) == 3
    store = await Store.open(empty_database, relay_in_rust=True)  # the relay as the service runs it
    publisher = KafkaPublisher(settings)
    await publisher.start()
    try:
        await store.commit(expected_seq=0, result=result, head=head, projections=projections.build(
            engine, result, refresh_all=True, touched=projections.Touched.everything(engine)))
        assert [tuple(r) for r in await store.pool.fetch("SELECT id, records FROM outbox")] == [
            (len(expected), len(expected))]  # one row, its records' ids 1 to n
        block = [r for r in await read_both(store, 1000, topics) if r.source == OUTBOX]
        assert [(r.id, r.topic, r.key, r.record_id, r.payload) for r in block] == [
            (i, topics.adl_quantiles, *record) for i, record in enumerate(expected, 1)]
        counts = await publisher.partition_counts(topics.outputs)
        await publisher.send(to_send(block[:len(block) // 2], counts, {}))  # then a crash: the cursor did not move
        await relay_until_drained(settings, store)
    finally:
        await publisher.stop()
        await store.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.adl_quantiles, p) for p in range(3)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        got: dict[int, list[tuple[int, str, str, str]]] = {p: [] for p in range(3)}
        while sum(map(len, got.values())) < sum(ends.values()):  # a record missing fails below, one too many too
            for tp, records in (await consumer.getmany(timeout_ms=2000)).items():
                got[tp.partition].extend(map(outbox_record, records))
    finally:
        await consumer.stop()
    for partition in range(3):  # each record once, in id order, with the key, id and bytes of its line
        assert got[partition] == [(i, *r) for i, r in enumerate(expected, 1) if partition_for(r[0], 3) == partition]


async def commit_example(store: Store, topics: TopicNames) -> BatchResult:
    """The example journal applied with ADL quantiles on and committed as the first batch; its result."""
    processor = Processor(Engine(ids=ServiceIds(), adl_quantiles=True))
    engine = processor.engine
    result = ingest_batch(processor, as_consumed(EXAMPLE.read_bytes().splitlines(), topics, {}), topics)
    head = Head(engine.last_seq, engine.head_hash, engine.ledger_head, engine.adl_head, processor.duplicates,
                processor.rejected, len(result.fund_entries), len(result.adl_events))
    await store.commit(expected_seq=0, result=result, head=head, projections=projections.build(
        engine, result, refresh_all=True, touched=projections.Touched.everything(engine)))
    return result


async def test_outbox_rows_written_before_migration_0011_are_read_as_before_and_blocks_follow_them(
        topic_prefix: str, empty_database: str, tmp_path: Path) -> None:
    """A database upgraded to quantile blocks: the rows written before (one record each) are read as they were, a
    block written after takes the next ids, the cursor passes over what is published, and a row that is neither a
    record nor a block is refused."""
    topics = TopicNames(f"{topic_prefix}up11.")
    await migrate_before(empty_database, tmp_path, "0011")
    store = await Store.open(empty_database)
    try:
        await store.pool.copy_records_to_table("outbox", columns=["topic", "key", "record_id", "payload"], records=[
            (topics.dead_letter, "t:0", f"dl-t-0-{n}", f'{{"n":{n}}}') for n in range(3)])  # the old writer's rows
        await migrate(empty_database)
        result = await commit_example(store, topics)
        block = quantile_block_rows(result.quantile_block.decode())
        old = [(n + 1, topics.dead_letter, "t:0", f"dl-t-0-{n}", f'{{"n":{n}}}') for n in range(3)]
        new = [(n, topics.adl_quantiles, *record) for n, record in enumerate(block, 4)]

        async def outbox(limit: int) -> list[tuple[int, str, str, str, str]]:
            return [(r.id, r.topic, r.key, r.record_id, r.payload) for r in await read_both(store, limit, topics)
                    if r.source == OUTBOX]

        assert await outbox(1000) == old + new
        assert await outbox(3) == old  # a block is read whole, once fewer than the limit of records precede it
        assert await outbox(4) == old + new
        await store.mark_published({OUTBOX: 2})
        assert await outbox(1000) == old[2:] + new and await store.outbox_backlog() >= len(new) + 1
        await store.mark_published({OUTBOX: 5})  # a cursor inside a block: the records after it only
        assert await outbox(1000) == new[2:]
        with pytest.raises(asyncpg.CheckViolationError):
            await store.pool.execute("INSERT INTO outbox (topic, payload) VALUES ('t', '{}')")
    finally:
        await store.close()


async def test_a_block_written_before_migration_0012_is_read_from_its_lines_and_one_after_from_its_keys(
        topic_prefix: str, empty_database: str, tmp_path: Path) -> None:
    """Migration 0012 stores a block's keys and record ids beside its lines, so the relay parses none of them: a
    block written before it (no keys) is read from its lines, one written after from its keys, the same records
    either way; a row that is no block cannot carry keys."""
    topics = TopicNames(f"{topic_prefix}up12.")
    await migrate_before(empty_database, tmp_path, "0012")
    processor = Processor(Engine(ids=ServiceIds(), adl_quantiles=True))
    old = ingest_batch(processor, as_consumed(EXAMPLE.read_bytes().splitlines(), topics, {}), topics)
    expected = quantile_block_rows(old.quantile_block.decode())
    store = await Store.open(empty_database)
    try:
        await store.pool.execute(  # the block as the writer before 0012 wrote it
            "INSERT INTO outbox (id, records, topic, payload) VALUES (setval(pg_get_serial_sequence('outbox', 'id'), "
            "nextval(pg_get_serial_sequence('outbox', 'id')) + $1 - 1), $1, $2, $3)", len(expected),
            topics.adl_quantiles, old.quantile_block.decode())
        assert (await migrate(empty_database))[0] == "0012"
        # its records found by their ids, as a relay starting on a restored database looks them up: from its lines
        tails = {expected[1][1]: (topics.adl_quantiles, 2), "absent": (topics.adl_quantiles, 1)}
        assert await store.outbox_places(tails, 0) == ({expected[1][1]: 2}, len(expected))  # at its own id
        tails[expected[1][1]] = (topics.adl_quantiles, 7)
        assert await store.outbox_places(tails, 0) == ({expected[1][1]: 2}, len(expected))  # looked for
        await commit_example(store, topics)
        n = len(expected)
        assert [(r["id"], r["keys"] is None) for r in await store.pool.fetch("SELECT id, keys FROM outbox")] == [
            (n, True), (2 * n, False)]
        rows = [(r.id, r.topic, r.key, r.record_id, r.payload) for r in await read_both(store, 1000, topics)
                if r.source == OUTBOX]
        assert rows == [(i, topics.adl_quantiles, *record) for i, record in enumerate(expected + expected, 1)]
        await store.mark_published({OUTBOX: n + 2})  # a cursor inside the keyed block: the records after it only
        assert [r.id for r in await read_both(store, 1000, topics) if r.source == OUTBOX] == list(
            range(n + 3, 2 * n + 1))
        with pytest.raises(asyncpg.CheckViolationError):
            await store.pool.execute("INSERT INTO outbox (topic, key, record_id, payload, keys) "
                                     "VALUES ('t', 'k', 'r', '{}', 'k\nr\n')")
    finally:
        await store.close()


async def test_the_compiled_relay_reads_every_source_as_the_store_does_escapes_included(
        topic_prefix: str, empty_database: str) -> None:
    """Every source after cursors the relay can leave, read by the compiled relay from the statement's COPY text and
    by the store row by row: the same rows, including dead letters whose bad input holds what COPY text escapes
    (tabs, newlines, backslashes) and more (quotes, control characters, non-ASCII)."""
    topics = TopicNames(f"{topic_prefix}read{secrets.token_hex(3)}.")
    await migrate(empty_database)
    processor = Processor(Engine(ids=ServiceIds(), adl_quantiles=True))
    engine = processor.engine
    awkward = [rb'{"account_id": "a\tb\\c\n", "x": "' + "é".encode() + rb'\u0001\"' + b"\t\x7f" + rb'"}',
               rb"not json \\ \t at all", rb'{"fill_id": "f\r\u2028", "account_id": 7}']
    batches = [as_consumed(EXAMPLE.read_bytes().splitlines(), topics, {}),
               [Consumed(topics.input("fill"), 0, n, b"k\tk", raw) for n, raw in enumerate(awkward)]]
    store = await Store.open(empty_database)
    try:
        entries = events = 0
        for batch in batches:
            seq = engine.last_seq
            result = ingest_batch(processor, batch, topics)
            entries, events = entries + len(result.fund_entries), events + len(result.adl_events)
            head = Head(engine.last_seq, engine.head_hash, engine.ledger_head, engine.adl_head, processor.duplicates,
                        processor.rejected, entries, events)
            await store.commit(expected_seq=seq, result=result, head=head, projections=projections.build(
                engine, result, refresh_all=True, touched=projections.Touched.everything(engine)))
        rows = await read_both(store, 1000, topics)
        assert {row.source for row in rows} == {OUTBOX, "journal", "fund_ledger", "adl_events", "postings"}
        assert sum(row.topic == topics.dead_letter for row in rows) == len(awkward)
        for limit in (1, 2, 7):
            await read_both(store, limit, topics)
        block = [row for row in rows if row.source == OUTBOX]
        cursors = {OUTBOX: block[2].id, "journal": 3, "postings": 1}  # the outbox's inside the quantile block
        await store.mark_published(cursors)
        assert await read_both(store, 1000, topics) == [row for row in rows if row.id > cursors.get(row.source, 0)]
    finally:
        await store.close()


async def test_a_commit_hands_over_the_rows_a_read_after_its_cursors_gives(topic_prefix: str,
                                                                           empty_database: str) -> None:
    """The compiled service engine's batches, committed one by one: what each commit hands the relay (the rows it
    publishes without reading them back) is what the store's read after the cursors gives (the same rows, sources and
    record batches), and the places it names are the cursors the batch before left, dead letters and escapes
    included."""
    topics = TopicNames(f"{topic_prefix}handed{secrets.token_hex(3)}.")
    await migrate(empty_database)
    engine = open_service_engine("compiled", None, check_conservation=True, adl_quantiles=True)
    records = as_consumed(EXAMPLE.read_bytes().splitlines(), topics, {})
    records[5:5] = [Consumed(topics.input("fill"), 1, 0, None, b'{"not json')]
    store = await Store.open(empty_database, relay_in_rust=True)
    counts = {topic: 3 for topic in topics.outputs}
    try:
        positions, topics_seen = (0, 0), set()
        for start in range(0, len(records), 4):
            batch, seq = records[start:start + 4], engine.last_seq
            await engine.prepare(batch, engine.identities(batch, topics), store.held, committed_seq=seq)
            result = engine.apply(batch, topics, {})
            positions = (positions[0] + len(result.fund_entries), positions[1] + len(result.adl_events))
            committed = await store.commit(
                expected_seq=seq, result=result, head=Head(*engine.head(), *positions),
                projections=engine.projections(result, projections.Touched.of(result), refresh_all=False))
            read = RowList(await read_both(store, 100_000, topics))
            assert committed is not None
            assert committed.before == await store.published_places()
            assert committed.after == {**committed.before, **dict(read.last_of_each_source())}
            handed = committed.relay_rows(topics)
            assert [OutboxRow(*fields) for fields in handed.rows()] == read
            assert handed.last_of_each_source() == read.last_of_each_source()
            assert handed.record_batches(counts, RECORD_ID_HEADER, 1, 300) == read.record_batches(
                counts, RECORD_ID_HEADER, 1, 300)
            topics_seen |= {row.topic for row in read}
            await store.mark_published(dict(read.last_of_each_source()))
        assert topics_seen == set(topics.outputs)
    finally:
        await store.close()


def restore_batches(topics: TopicNames) -> list[tuple[int, BatchResult, Head, projections.Projections]]:
    """The example journal in three batches as the service commits them, with ADL quantiles on: each writes a
    quantile block (a mark in a later minute ends it), the last two dead letters too. The same every call (as a
    database restored behind them writes them again)."""
    lines = EXAMPLE.read_bytes().splitlines()
    assert lines[17].startswith(b'{"type": "mark"')

    def mark(ts: int, price: str) -> bytes:
        return orjson.dumps({"type": "mark", "ts": ts, "symbol": "BNBUSDT", "mark_price": price})

    new_position = [orjson.dumps(line) for line in (  # a first quantile for it
        {"type": "transfer", "ts": 1760126575000, "transfer_id": "d-N", "account_id": "N", "asset": "USDT",
         "amount": "10000"},
        {"type": "fill", "ts": 1760126575000, "fill_id": "f-N", "account_id": "N", "symbol": "BNBUSDT", "side": "buy",
         "qty": "5", "price": "640", "fee": "0", "margin_mode": "cross", "leverage": "10"})]
    processor, offsets, positions, made = Processor(Engine(ids=ServiceIds(), adl_quantiles=True)), {}, [0, 0], []
    engine = processor.engine
    for number, part in enumerate((lines[:18], [*lines[18:], mark(1760126520000, "641")],
                                   [*new_position, mark(1760126580000, "652")])):
        expected = engine.last_seq
        bad = [Consumed(topics.input("fill"), 0, 10_000 + 10 * number + i, None, b"{nope") for i in range(number)]
        result = ingest_batch(processor, [*as_consumed(part, topics, offsets), *bad], topics)
        assert result.quantile_block and len(result.outbox) == number
        positions[0] += len(result.fund_entries)
        positions[1] += len(result.adl_events)
        head = Head(engine.last_seq, engine.head_hash, engine.ledger_head, engine.adl_head, processor.duplicates,
                    processor.rejected, *positions)
        made.append((expected, result, head, projections.build(engine, result, refresh_all=True,
                                                                 touched=projections.Touched.everything(engine))))
    return made


async def topic_ids(settings: Settings, topic: str) -> dict[int, list[str]]:
    """Each partition's record ids, in offset order."""
    got: dict[int, list[str]] = {}
    async for partition, _, value in read_topic(settings, topic, follow=False):
        got.setdefault(partition, []).append(orjson.loads(value)["id"])
    return got


@pytest.mark.parametrize("mode", ["renumbered-higher", "renumbered-lower", "republish"])
async def test_a_database_restored_behind_the_topics_publishes_each_outbox_record_once(
        kafka_bootstrap: str, topic_prefix: str, databases: Any, mode: str) -> None:
    """PostgreSQL restored from a backup behind the output topics numbers its outbox rows anew (here: ids a
    rolled-back batch took, in the restored database before the rows were written again, or in the lost one). The
    relay looks each partition's last record up by its record id: while the restored database does not hold it
    yet, the relay waits, not ready and saying why, and publishes nothing; once the processor wrote it again, every
    row up to it is passed over and what follows is published: every record on every output topic once, in its
    source's order per partition. With BACKSTOP_RELAY_MISSING_TAIL=republish it does not wait: the outbox topics'
    rows are sent again from the restored cursor (consumers drop ids seen before), none lost, the tables' once."""
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"{topic_prefix}rst{secrets.token_hex(3)}.",
                        output_partitions=3, relay_batch=50, relay_idle_ms=10,
                        relay_missing_tail="republish" if mode == "republish" else "wait")
    topics = TopicNames(settings.topic_prefix)
    ensure_topics(settings)
    first, second, third = restore_batches(topics)
    suffix = secrets.token_hex(3)
    lost, restored = await databases.create(f"_lost{suffix}"), await databases.create(f"_rest{suffix}")
    for dsn in (lost, restored):
        await migrate(dsn)
    store = await Store.open(lost, relay_in_rust=True)
    try:  # the database lost: two batches, every record published
        if mode == "renumbered-lower":
            await store.pool.execute("SELECT setval('outbox_id_seq', 40)")
        for expected, result, head, rows in (first, second):
            await store.commit(expected_seq=expected, result=result, head=head, projections=rows)
        lost_outbox = await store.pool.fetchval("SELECT max(id) FROM outbox")
        await relay_until_drained(settings, store)
    finally:
        await store.close()
    before = {topic: await topic_ids(settings, topic) for topic in topics.outputs}
    assert before[topics.adl_quantiles] and before[topics.dead_letter]

    store = await Store.open(restored, relay_in_rust=True)  # the backup: the first batch
    relay = OutboxRelay(settings, store, kafka_runtime())
    task = asyncio.create_task(relay.run_forever())
    try:
        if mode == "renumbered-higher":
            await store.pool.execute("SELECT setval('outbox_id_seq', $1)", lost_outbox + 5)
        expected, result, head, rows = first
        await store.commit(expected_seq=expected, result=result, head=head, projections=rows)
        if mode != "republish":
            for _ in range(200):
                if relay.waiting is not None:
                    break
                await asyncio.sleep(0.05)
            assert relay.waiting is not None and "again" in relay.waiting and not relay.healthy
            assert {topic: await topic_ids(settings, topic) for topic in topics.outputs} == before  # nothing sent
        for expected, result, head, rows in (second, third):  # the processor catches up, then goes on
            await store.commit(expected_seq=expected, result=result, head=head, projections=rows)
            relay.wake()
        for _ in range(300):
            if relay.ready and await store.outbox_backlog() == 0:
                break
            await asyncio.sleep(0.05)
        assert relay.waiting is None and relay.healthy and await store.outbox_backlog() == 0
        order = {topic: [r["id"] for r in await store.pool.fetch(f"SELECT id FROM {table} ORDER BY position")]
                 for topic, table in ((topics.fund_ledger, "fund_ledger"), (topics.adl_events, "adl_events"),
                                      (topics.postings, "postings"))}
    finally:
        relay.stop()
        relay.wake()
        await task
        await store.close()
    order[topics.journal] = [f"j-{seq}" for seq in range(1, third[2].seq + 1)]
    order[topics.adl_quantiles] = [q[1] for _, r, _, _ in (first, second, third)
                                   for q in quantile_block_rows(r.quantile_block.decode())]
    order[topics.dead_letter] = [m.record_id for _, r, _, _ in (first, second, third) for m in r.outbox]
    for topic, ids in order.items():
        got = await topic_ids(settings, topic)
        assert {i for found in got.values() for i in found} == set(ids), topic  # none lost
        for partition, found in got.items():
            mine = [i for i in ids if i in found]  # the partition's records in their source's order
            if mode == "republish" and topic in (topics.adl_quantiles, topics.dead_letter):
                # what the lost database published, then sent again from some record on, in order, none left out
                published = before[topic].get(partition, [])
                rest = found[len(published):]
                assert found[:len(published)] == published and rest == mine[len(mine) - len(rest):], (topic,
                                                                                                       partition)
                assert set(mine) - set(published) <= set(rest), (topic, partition)
            else:
                assert found == mine, (topic, partition)  # each once, in order
