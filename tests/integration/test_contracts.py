"""One contract per port, every implementation held to it: the in-memory ones (backstop.adapters.memory) and the
real ones (PostgreSQL through asyncpg, Kafka through aiokafka). The simulator (tests/sim) runs the service on the
in-memory ones, so what it shows holds for the real service only as far as these tests make them alike."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from service_harness import recreate_topic

from backstop.adapters.kafka.consumer import KafkaConsumer
from backstop.adapters.kafka.publisher import KafkaPublisher
from backstop.adapters.memory.broker import MemoryBroker, MemoryConsumer, MemoryPublisher
from backstop.adapters.memory.store import MemoryDatabase, MemoryStore
from backstop.adapters.postgres.store import (
    INLINE_ROWS,
    OUTBOX,
    POSITION_COLUMNS,
    TABLE_SOURCES,
    Head,
    OutboxRow,
    RefreshCopy,
    StaleRow,
    Store,
    copy_text,
    journal_relay_row,
)
from backstop.core.engine import Engine
from backstop.core.errors import InvariantViolation
from backstop.core.processor import Processor
from backstop.core.snapshot import SNAPSHOT_VERSION
from backstop.pipeline import projections
from backstop.pipeline.held_ids import ServiceIds
from backstop.pipeline.ingest import BatchResult, Consumed, ingest_batch, output_json, posting_records
from backstop.pipeline.projections import FullRefresh, Projections, Rows
from backstop.pipeline.topics import TopicNames
from backstop.service.ports import (
    OUTBOX_HEADER,
    POSITION_HEADER,
    RECORD_ID_HEADER,
    Consumer,
    InputGap,
    LedgerStore,
    Publisher,
    RowList,
)
from backstop.service.relay import partition_for, still_ahead, to_send
from backstop.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "02-adl-walks-queue.jsonl"
TOPICS = TopicNames("contract.")
D = Decimal


# ------------------------------------------------------------------------------------------------ the store
@dataclass
class StoreUnderTest:
    store: LedgerStore
    other: Callable[[], Awaitable[LedgerStore]]  # a second session on the same database
    table: Callable[[str], Awaitable[list[tuple[Any, ...]]]]  # a projection table's rows, values made comparable
    delete_journal_row: Callable[[int], Awaitable[None]]  # as the journal's owner could (the seq's effects too)
    end_lock_session: Callable[[int], Awaitable[None]]  # the session holding a lock killed (or its connection lost)


def comparable(value: Any) -> Any:
    """PostgreSQL gives numerics back as Decimals, the memory store as the text COPY would send: compare numbers."""
    if value is None or isinstance(value, int | Decimal):
        return None if value is None else Decimal(value)
    try:
        return Decimal(value)
    except InvalidOperation:
        return value


TABLES = {"account_wallets": "account_id, asset", "positions": "account_id, symbol, position_side", "funds": "fund_id",
          "adl_queue": "symbol, side, rank", "fund_lots": "fund_id, liquidation_id"}


@pytest_asyncio.fixture(params=["memory", "postgres"])
async def under_test(request: pytest.FixtureRequest, databases: Any) -> AsyncIterator[StoreUnderTest]:
    if request.param == "memory":
        database = MemoryDatabase()
        memory_tables = {"account_wallets": lambda: database.wallets.values(),
                         "positions": lambda: database.positions.values(), "funds": lambda: database.funds.values(),
                         "adl_queue": lambda: database.adl_queue, "fund_lots": lambda: database.fund_lots}

        async def memory_table(name: str) -> list[tuple[Any, ...]]:
            return sorted(tuple(comparable(v) for v in row) for row in memory_tables[name]())

        async def memory_other() -> LedgerStore:
            return MemoryStore(database)

        async def memory_delete(seq: int) -> None:
            database.journal = [row for row in database.journal if row.seq != seq]

        store = MemoryStore(database)

        async def memory_end_session(lock_id: int) -> None:
            store.end_session(lock_id)

        yield StoreUnderTest(store, memory_other, memory_table, memory_delete, memory_end_session)
        return
    dsn = await databases.create(f"_ct{secrets.token_hex(3)}")
    from backstop.adapters.postgres.migrations import migrate

    await migrate(dsn)
    opened: list[Store] = [await Store.open(dsn)]

    async def pg_table(name: str) -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(dsn)
        try:
            # positions: the store's column order (migration 0006 added position_side as the table's last column)
            columns = ", ".join(POSITION_COLUMNS) if name == "positions" else "*"
            rows = await connection.fetch(f"SELECT {columns} FROM {name} ORDER BY {TABLES[name]}")
        finally:
            await connection.close()
        return sorted(tuple(comparable(v) for v in row) for row in rows)

    async def pg_other() -> LedgerStore:
        opened.append(await Store.open(dsn))
        return opened[-1]

    async def pg_delete(seq: int) -> None:
        connection = await asyncpg.connect(dsn)
        try:
            async with connection.transaction():  # the append-only triggers off, as only the owner can
                for table in ("fund_ledger", "adl_events", "findings", "applied_ids", "journal"):
                    await connection.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
                    await connection.execute(f"DELETE FROM {table} WHERE seq = $1", seq)
                    await connection.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        finally:
            await connection.close()

    async def pg_end_session(lock_id: int) -> None:
        connection = await asyncpg.connect(dsn)
        try:  # a bigint advisory key is (classid, objid) = its high and low 32 bits
            ended = await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid::bigint = $1 AND objid::bigint = $2", lock_id >> 32, lock_id & 0xFFFFFFFF)
            assert ended == 1
        finally:
            await connection.close()

    try:
        yield StoreUnderTest(opened[0], pg_other, pg_table, pg_delete, pg_end_session)
    finally:
        for store in opened:
            await store.close()
        await databases.drop(dsn)


def as_consumed(lines: list[bytes]) -> list[Consumed]:
    offsets: dict[str, int] = {}
    batch = []
    for line in lines:
        document = orjson.loads(line)
        topic = TOPICS.input(document.pop("type"))
        offsets[topic] = offsets.get(topic, -1) + 1
        batch.append(Consumed(topic, 0, offsets[topic], None, orjson.dumps(document)))
    return batch


class Batches:
    """The example journal in two batches through the real engine: the results, heads and rows a commit takes."""

    def __init__(self, adl_quantiles: bool = False) -> None:
        lines = EXAMPLE.read_bytes().splitlines()
        consumed = as_consumed(lines)
        # the service's: a batch's identities for applied_ids; with quantiles on, each batch writes a quantile block
        self.processor = Processor(Engine(ids=ServiceIds(), adl_quantiles=adl_quantiles))
        self.positions = (0, 0)
        self.first = self._batch(consumed[:9])
        bad = [Consumed(TOPICS.input("fill"), 0, offset, None, b"{nope") for offset in (10_000, 10_001)]
        self.second = self._batch([*consumed[9:], *bad])  # dead letters: the outbox has rows too

    def _batch(self, consumed: list[Consumed]) -> tuple[int, BatchResult, Head, Projections]:
        processor, engine = self.processor, self.processor.engine
        expected = engine.last_seq
        result = ingest_batch(processor, consumed, TOPICS)
        self.positions = (self.positions[0] + len(result.fund_entries), self.positions[1] + len(result.adl_events))
        head = Head(engine.last_seq, engine.head_hash, engine.ledger_head, engine.adl_head, processor.duplicates,
                    processor.rejected, *self.positions)
        return expected, result, head, projections.build(engine, result, refresh_all=True,
                                                          touched=projections.Touched.everything(engine))


def published_rows(results: list[BatchResult]) -> list[tuple[str, str, str, str]]:
    """(topic, key, record id, payload) of what the relay publishes for these batches, in the order the store
    gives them: the outbox's rows, then each table source's."""
    rows = [(m.topic, m.key, m.record_id, m.payload.decode()) for r in results for m in r.outbox]
    rows += [(TOPICS.journal, *journal_relay_row(row)) for r in results for row in r.journal]
    for topic, records, key in ((TOPICS.fund_ledger, "fund_entries", "fund_id"),
                                (TOPICS.adl_events, "adl_events", "account_id"),
                                (TOPICS.postings, "postings", "asset")):
        rows += [(topic, getattr(e, key), e.id, output_json(e).decode()) for r in results for e in getattr(r, records)]
    return rows


async def commit(store: LedgerStore, batch: tuple[int, BatchResult, Head, Projections]) -> None:
    expected, result, head, rows = batch
    await store.commit(expected_seq=expected, result=result, head=head, projections=rows)


async def test_an_empty_store_has_the_genesis_head_and_nothing_else(under_test: StoreUnderTest) -> None:
    store = under_test.store
    assert await store.head() == Head(0, "", "0" * 64, "0" * 64, 0, 0, 0, 0)
    assert await store.offsets() == {}
    assert await store.latest_snapshot() is None
    assert [row async for row in store.journal()] == []
    assert await store.unpublished(10, TOPICS) == [] and await store.outbox_backlog() == 0


async def test_input_topic_ids_are_stored_and_replaced(under_test: StoreUnderTest) -> None:
    store, batches = under_test.store, Batches()
    await commit(store, batches.first)
    positions = await store.offsets()
    assert await store.input_topic_ids() == {}
    topics = sorted({topic for topic, _ in positions})
    first = {topic: str(uuid.UUID(int=n + 1)) for n, topic in enumerate(topics)}
    await store.adopt_input_topics(first)
    assert await store.input_topic_ids() == first
    again = {topics[0]: str(uuid.UUID(int=99))}
    await store.adopt_input_topics(again)
    assert await store.input_topic_ids() == {**first, **again} and await store.offsets() == positions


async def test_a_journal_read_back_with_a_row_missing_names_the_seq(under_test: StoreUnderTest) -> None:
    store, batches = under_test.store, Batches()
    await commit(store, batches.first)
    await commit(store, batches.second)
    seqs = [seq async for seq, _ in store.journal()]
    await under_test.delete_journal_row(seqs[2])
    for after, chunk in ((0, 10_000), (0, 2), (seqs[1], 1)):  # the gap inside a chunk, at its start, at its end
        with pytest.raises(InvariantViolation, match=f"^the stored journal has a gap: seq {seqs[2]} is missing$"):
            _ = [row async for row in store.journal(after_seq=after, chunk=chunk)]
    assert [seq async for seq, _ in store.journal(after_seq=seqs[2])] == seqs[3:]  # after it: nothing missing


async def test_a_commit_lands_whole_and_reads_back(under_test: StoreUnderTest) -> None:
    store, batches = under_test.store, Batches()
    await commit(store, batches.first)
    await commit(store, batches.second)
    _, result, head, _ = batches.second
    assert await store.head() == head
    assert await store.offsets() == {**batches.first[1].next_offsets, **result.next_offsets}
    journal = [row async for row in store.journal(after_seq=3, chunk=4)]  # read in chunks
    want = [(row.seq, row.payload) for row in batches.first[1].journal_rows() + result.journal_rows()]
    assert journal == want[3:]
    relayed = await store.unpublished(1000, TOPICS)
    both = [batches.first[1], result]
    assert [(r.topic, r.key, r.record_id, r.payload) for r in relayed] == published_rows(both)
    for source in (OUTBOX, *TABLE_SOURCES):  # each source in its own order: outbox ids, seqs, positions 1, 2, 3 ...
        ids = [r.id for r in relayed if r.source == source]
        assert ids == (sorted(ids) if source == OUTBOX else list(range(1, len(ids) + 1)))
    assert await store.outbox_backlog() == len(relayed)
    engine = batches.processor.engine
    everything = projections.build(engine, BatchResult(), refresh_all=True,
                                   touched=projections.Touched.everything(engine))
    assert await under_test.table("account_wallets") == sorted(tuple(map(comparable, r)) for r in everything.wallets)
    assert await under_test.table("positions") == sorted(tuple(map(comparable, r)) for r in everything.positions)
    assert await under_test.table("funds") == sorted(tuple(map(comparable, r)) for r in everything.funds)
    assert await under_test.table("adl_queue") == sorted(tuple(map(comparable, r)) for r in everything.adl_queue or [])


async def test_a_commit_against_a_moved_head_writes_nothing(under_test: StoreUnderTest) -> None:
    store, batches = under_test.store, Batches()
    with pytest.raises(InvariantViolation, match="journal head moved"):
        await commit(store, batches.second)  # expects the head at the first batch's seq
    assert await store.head() == Head(0, "", "0" * 64, "0" * 64, 0, 0, 0, 0)
    assert await store.outbox_backlog() == 0


async def test_a_commit_after_a_batch_of_dead_letters_alone_meets_a_moved_head(under_test: StoreUnderTest) -> None:
    """A batch of only dead letters (or duplicates) leaves the seq where it was: the head's counts tell that another
    writer committed it (the last batch of a writer whose lock ended)."""
    store, batches = under_test.store, Batches()
    await commit(store, batches.first)
    _, _, head, rows = batches.first
    bad = ingest_batch(batches.processor, [Consumed(TOPICS.input("fill"), 0, 20_000, None, b"{nope")], TOPICS)
    moved = dataclasses.replace(head, rejected=head.rejected + 1)
    await store.commit(expected_seq=head.seq, result=bad, head=moved, projections=rows,
                       expected_counts=(head.duplicates, head.rejected))
    with pytest.raises(InvariantViolation, match="journal head moved"):  # a writer that had not seen it
        await store.commit(expected_seq=head.seq, result=BatchResult(), head=head, projections=rows,
                           expected_counts=(head.duplicates, head.rejected))
    assert (await store.head()).rejected == head.rejected + 1


async def test_a_commit_that_breaks_a_unique_key_writes_nothing(under_test: StoreUnderTest) -> None:
    store, batches = under_test.store, Batches()
    await commit(store, batches.first)
    head, backlog = await store.head(), await store.outbox_backlog()
    _, result, first_head, rows = batches.first
    with pytest.raises(Exception):  # noqa: B017 (asyncpg's UniqueViolationError, the memory store's IntegrityError)
        await store.commit(expected_seq=first_head.seq, result=result, head=first_head, projections=rows)
    assert await store.head() == head and await store.outbox_backlog() == backlog
    assert len([row async for row in store.journal()]) == first_head.seq


async def test_the_state_hash_is_recorded_only_at_the_head(under_test: StoreUnderTest) -> None:
    store, batches = under_test.store, Batches()
    await commit(store, batches.first)
    seq = batches.first[2].seq
    await store.record_state_hash(seq - 1, "stale")
    await store.record_state_hash(seq, "current")
    hashes = await store.stored_hashes()  # type: ignore[attr-defined]
    assert (hashes["state_hash"], hashes["state_hash_seq"]) == ("current", seq)


async def test_the_latest_snapshot_is_read_back(under_test: StoreUnderTest) -> None:
    store, batches = under_test.store, Batches()
    await commit(store, batches.first)
    await commit(store, batches.second)
    current = {"engine": {"snapshot_version": SNAPSHOT_VERSION, "at": 3}}
    await store.write_snapshot(3, "h3", orjson.dumps(current))
    assert await store.latest_snapshot() == (3, current)
    await store.write_snapshot(9, "h9", orjson.dumps({"engine": {"snapshot_version": SNAPSHOT_VERSION - 1}}))
    assert await store.latest_snapshot() == (3, current)  # an older version is passed over: the journal replays
    newer = {"engine": {"snapshot_version": SNAPSHOT_VERSION, "at": 12}}
    await store.write_snapshot(12, "h12", orjson.dumps(newer))
    assert await store.latest_snapshot() == (12, newer)


async def test_identities_are_held_with_their_batch_once_ever(under_test: StoreUnderTest) -> None:
    store, batches = under_test.store, Batches()
    assert await store.held_estimate() == 0
    await commit(store, batches.first)
    await commit(store, batches.second)
    rows = sorted(batches.first[1].held_ids + batches.second[1].held_ids)
    assert rows and len({row[0] for row in rows}) == len(rows)
    keys = [row[0] for row in rows]
    unknown = bytes(16)
    assert sorted(await store.held([unknown, *keys[::2], keys[0]])) == rows[::2]  # one query, each row once
    streamed: list[bytes] = []
    await store.held_keys(streamed.append)
    joined = b"".join(streamed)
    assert sorted(joined[i:i + 16] for i in range(0, len(joined), 16)) == keys
    await store.hold([rows[0], (unknown, bytes(8), 1)])  # a rebuild's: one held already, one not
    assert sorted(await store.held([unknown, keys[0]])) == sorted([rows[0], (unknown, bytes(8), 1)])
    # a batch that would hold an identity again commits nothing (the primary key refuses it)
    _, _, head, projected = batches.second
    again = BatchResult(held_ids=[rows[1]], next_offsets={("contract.fill", 0): 99})
    before = (await store.head(), await store.offsets(), await store.outbox_backlog())
    with pytest.raises(Exception):  # noqa: B017 (asyncpg's UniqueViolationError, the memory store's IntegrityError)
        await store.commit(expected_seq=head.seq, result=again, head=head, projections=projected)
    assert (await store.head(), await store.offsets(), await store.outbox_backlog()) == before


async def test_an_identity_past_its_batchs_journal_rows_fails_the_batch(under_test: StoreUnderTest) -> None:
    """The check that an identity's seq is in the journal holds where a small batch writes its journal rows and its
    identities in one statement (it runs at the statement's end, with the journal's rows in)."""
    store, batches = under_test.store, Batches()
    expected, result, head, rows = batches.first
    assert 0 < len(result.held_ids) <= INLINE_ROWS and result.journal_facts().rows <= INLINE_ROWS
    key, content, _ = result.held_ids[-1]
    result.held_ids[-1] = (key, content, head.seq + 1)
    with pytest.raises(Exception, match=f"seq {head.seq + 1} is not in the journal"):
        await store.commit(expected_seq=expected, result=result, head=head, projections=rows)
    assert await store.head() == Head(0, "", "0" * 64, "0" * 64, 0, 0, 0, 0)
    assert [row async for row in store.journal()] == []


async def test_each_relay_cursor_only_moves_forward(under_test: StoreUnderTest) -> None:
    store, batches = under_test.store, Batches()
    await commit(store, batches.first)
    await commit(store, batches.second)
    rows = await store.unpublished(1000, TOPICS)
    of = {source: [r for r in rows if r.source == source] for source in (OUTBOX, *TABLE_SOURCES)}
    assert all(of.values()), {source: len(found) for source, found in of.items()}  # every source has rows
    # 3 of each, but a block is read whole: the postings of each batch are one (migration 0017)
    first_block = len(posting_records(batches.first[1]))
    assert first_block >= 3
    assert await store.unpublished(3, TOPICS) == [r for source, found in of.items()
                                                  for r in found[:first_block if source == "postings" else 3]]
    await store.mark_published({"journal": of["journal"][4].id, "postings": of["postings"][0].id,
                                OUTBOX: of[OUTBOX][1].id})
    await store.mark_published({"journal": of["journal"][1].id, OUTBOX: of[OUTBOX][0].id})  # never back
    rest = {**of, "journal": of["journal"][5:], "postings": of["postings"][1:], OUTBOX: of[OUTBOX][2:]}
    assert await store.unpublished(1000, TOPICS) == [r for found in rest.values() for r in found]
    assert await store.outbox_backlog() == len(rows) - 8


async def test_an_outbox_record_is_found_by_its_record_id_at_its_own_id(under_test: StoreUnderTest) -> None:
    """What the relay looks up at start for each partition's last record from the outbox: its id in this database,
    a block's record at its own id in the block, a dead letter at its row's: at the id it was published with, or
    else among the rows of its topic after the id the look goes on from; an id not there is absent."""
    store, batches = under_test.store, Batches(adl_quantiles=True)
    await commit(store, batches.first)
    await commit(store, batches.second)
    rows = [r for r in await store.unpublished(10_000, TOPICS) if r.source == OUTBOX]
    quantiles = [r for r in rows if r.topic == TOPICS.adl_quantiles]
    dead = [r for r in rows if r.topic == TOPICS.dead_letter]
    assert len(quantiles) >= 3 and dead and len(rows) == len(quantiles) + len(dead)
    asked = [quantiles[0], quantiles[len(quantiles) // 2], quantiles[-1], *dead]
    top = max(r.id for r in rows)

    def tails(shift: int, topic: str | None = None) -> dict[str, tuple[str, int]]:
        """The asked records as published with ids `shift` off theirs here (and one never written)."""
        asking = {r.record_id: (topic or r.topic, r.id + shift) for r in asked}
        return asking | {"no-such-record": (TOPICS.dead_letter, 1)}

    want = {r.record_id: r.id for r in asked}
    assert await store.outbox_places(tails(0), top) == (want, top)  # at their own ids: looked for nowhere else
    for shift in (1, 1000, -1):  # published with other ids (another database numbered them): looked for by id
        assert await store.outbox_places(tails(shift), 0) == (want, top)
    middle = quantiles[len(quantiles) // 2].id  # within the block: its records after it only
    assert await store.outbox_places(tails(1000), middle) == ({k: v for k, v in want.items() if v > middle}, top)
    assert await store.outbox_places(tails(1000), top) == ({}, top)
    assert await store.outbox_places(tails(1000, "another-topic"), 0) == ({}, top)  # rows of its topic only


def _position(account: str, seq: int, qty: str = "1") -> tuple[Any, ...]:
    return (account, "BTCUSDT", "both", D(qty), D("100000"), "isolated", D(10), D("10000"), D("101000"), None,
            D("90000"), seq)


async def test_a_refresh_updates_only_rows_older_than_its_seq_and_replaces_the_queue(
        under_test: StoreUnderTest) -> None:
    """And removes (and names) a position row older than its seq that it does not hold: closed by then, its batch's
    rows still waiting. A row as of its own seq was written from the state it was computed from: not written again
    (given other values here, to show it)."""
    store = under_test.store
    head = Head(0, "", "0" * 64, "0" * 64, 0, 0, 0, 0)
    rows = Projections(wallets=[("newer", "USDT", D(1), 10), ("older", "USDT", D(1), 3), ("same", "USDT", D(1), 5)],
                       positions=[_position("newer", 10), _position("older", 3), _position("we\tird\\x\n", 3),
                                  _position("stale", 4), _position("closed later", 10), _position("same", 5)],
                       closed_positions=[], funds=[], lots=None,
                       adl_queue=[("BTCUSDT", "long", "gone", 1, D(1), 5, 2)])
    await store.commit(expected_seq=0, result=BatchResult(), head=head, projections=rows)
    refresh = FullRefresh(
        5, [("newer", "USDT", D(2), 5), ("older", "USDT", D("2.50"), 5), ("absent", "USDT", D(2), 5),
            ("same", "USDT", D(2), 5)],
        [_position("newer", 5, "2"), _position("older", 5, "2"), _position("we\tird\\x\n", 5, "2.000"),
         _position("absent", 5, "2"), _position("same", 5, "2")],
        [("BTCUSDT", "long", "we\tird\\x\n", 1, D("0.123456789012"), 5, 5)])
    assert await store.write_refresh(RefreshCopy.of(refresh, chunk_rows=2)) == [
        StaleRow("stale", "BTCUSDT", "both", 4)]
    assert [r[:4] for r in await under_test.table("account_wallets")] == [
        ("newer", "USDT", D(1), D(10)), ("older", "USDT", D("2.5"), D(5)), ("same", "USDT", D(1), D(5))]
    assert [(r[0], r[3], r[-1]) for r in await under_test.table("positions")] == [
        ("closed later", D(1), D(10)), ("newer", D(1), D(10)), ("older", D(2), D(5)), ("same", D(1), D(5)),
        ("we\tird\\x\n", D(2), D(5))]
    assert await under_test.table("adl_queue") == [("BTCUSDT", "long", "we\tird\\x\n", D(1), D("0.123456789012"),
                                                    D(5), D(5))]


@pytest.mark.parametrize("form", ["tuples", "copy text"])
async def test_a_batch_deletes_the_positions_it_closed_and_keeps_one_it_opened_again(
        under_test: StoreUnderTest, form: str) -> None:
    """Closed positions come as tuples (the reference) or COPY text (the compiled engine: split by the server when it
    escapes nothing, else read back here); a key closed and written again in the same batch stays."""
    store, weird = under_test.store, "we\tird\\x\n"
    head = Head(0, "", "0" * 64, "0" * 64, 0, 0, 0, 0)
    opened = [_position(name, 1) for name in ("a", "b", "c", weird)]
    await store.commit(expected_seq=0, result=BatchResult(), head=head, projections=Projections(
        wallets=[], positions=opened, closed_positions=[], funds=[], lots=None, adl_queue=None))
    for closed in ([("a", "BTCUSDT", "both"), ("b", "BTCUSDT", "both"), ("x", "BTCUSDT", "long")],
                   [(weird, "BTCUSDT", "both")]):
        rows: Rows = closed if form == "tuples" else b"".join(
            b"%s\t%s\t%s\n" % tuple(copy_escaped(value) for value in key) for key in closed)
        await store.commit(expected_seq=0, result=BatchResult(), head=head, projections=Projections(
            wallets=[], positions=[_position("b", 2)], closed_positions=rows, funds=[], lots=None, adl_queue=None))
    assert [(r[0], r[-1]) for r in await under_test.table("positions")] == [("b", D(2)), ("c", D(1))]


@pytest.mark.parametrize("form", ["tuples", "copy text", "copy text escaped", "copy text, many rows"])
async def test_projection_rows_land_alike_in_every_form(under_test: StoreUnderTest, form: str) -> None:
    """Wallets, positions and funds as tuples (the reference) or COPY text (the compiled engine): a few lines that
    escape nothing but NULL go as parameters of one statement, others by COPY; inserted, then updated, alike."""
    store = under_test.store
    head = Head(0, "", "0" * 64, "0" * 64, 0, 0, 0, 0)
    names = ["a", "b:c", "we\\ird" if form == "copy text escaped" else "d"]
    names += [f"n{i}" for i in range(INLINE_ROWS + 1)] if form == "copy text, many rows" else []
    fund = ("F", "USDT", "fund", D("0.5"), D("1000.25"), D("0"), D("7.5"), 1)
    for seq, qty in ((1, "1"), (2, "2.5")):
        wallets = [(name, "USDT", D(qty) * 100, seq) for name in names]
        positions = [_position(name, seq, qty) for name in names]
        funds = [(*fund[:4], D(qty), *fund[5:7], seq)]
        rows = (wallets, positions, funds) if form == "tuples" else tuple(copy_text(r) for r in
                                                                          (wallets, positions, funds))
        await store.commit(expected_seq=0, result=BatchResult(), head=head, projections=Projections(
            wallets=rows[0], positions=rows[1], closed_positions=[], funds=rows[2], lots=None, adl_queue=None))
    assert await under_test.table("account_wallets") == sorted(tuple(map(comparable, r)) for r in wallets)
    assert await under_test.table("positions") == sorted(tuple(map(comparable, r)) for r in positions)
    assert await under_test.table("funds") == [tuple(map(comparable, funds[0]))]


def copy_escaped(value: str) -> bytes:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").encode()


async def test_a_lock_has_one_holder_and_a_second_waits(under_test: StoreUnderTest) -> None:
    first, second = under_test.store, await under_test.other()
    order: list[str] = []

    async def standby() -> None:
        async with second.hold_lock(42):
            order.append("second holds")

    async with first.hold_lock(42):
        waiting = asyncio.create_task(standby())
        await asyncio.sleep(0.3)
        assert not waiting.done()
        order.append("first leaves")
    await asyncio.wait_for(waiting, 30)
    assert order == ["first leaves", "second holds"]


async def test_a_lock_whose_session_ended_is_lost_and_taken_by_the_standby(under_test: StoreUnderTest) -> None:
    """A relay must not publish beside its successor: once the session holding its lock ended (killed, or the
    connection lost), the lease says so, and the standby holds the lock."""
    from backstop.service.ports import LockLost

    first, second = under_test.store, await under_test.other()
    taken = asyncio.Event()

    async def standby() -> None:
        async with second.hold_lock(45) as lease:
            await lease.check()
            taken.set()

    async with first.hold_lock(45) as lease:
        await lease.check()
        waiting = asyncio.create_task(standby())
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await under_test.end_lock_session(45)
        await asyncio.wait_for(taken.wait(), 30)
        with pytest.raises(LockLost, match="the session holding lock 45 ended"):
            await lease.check()
    await asyncio.wait_for(waiting, 30)


async def test_a_lock_whose_unlock_failed_is_not_kept_by_the_pool(empty_database: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool does not reset a released connection's session (no unlock-all per release): a lock whose unlock
    failed ends with its session, and the pool goes on with a new connection."""
    store = await Store.open(empty_database, max_size=1)
    execute = asyncpg.Connection.execute

    async def unlock_cancelled(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> str:
        if "pg_advisory_unlock(" in query:
            raise asyncio.CancelledError  # cancelled on its way out
        return await execute(self, query, *args, **kwargs)

    try:
        with pytest.raises(asyncio.CancelledError):
            async with store.hold_lock(43):
                monkeypatch.setattr(asyncpg.Connection, "execute", unlock_cancelled)
        monkeypatch.undo()
        other = await asyncpg.connect(empty_database)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock(43)") is True
        finally:
            await other.close()
        assert await store.pool.fetchval("SELECT pg_try_advisory_lock(44)") is True
    finally:
        await store.close()


# ------------------------------------------------------------------------------------------------ the consumer
@dataclass
class TopicsUnderTest:
    make: Callable[[str, int], Awaitable[str]]  # (name, partitions) -> topic
    append: Callable[[str, int, bytes], Awaitable[None]]
    consumer: Callable[[], Consumer]
    make_again: Callable[[str, int], Awaitable[None]]  # the topic deleted and created again


@pytest_asyncio.fixture(params=["memory", "kafka"])
async def topics(request: pytest.FixtureRequest) -> AsyncIterator[TopicsUnderTest]:
    if request.param == "memory":
        broker = MemoryBroker()

        async def memory_make(name: str, partitions: int) -> str:
            broker.create(name, partitions)
            return name

        async def memory_append(topic: str, partition: int, value: bytes) -> None:
            broker.append(topic, partition, None, value)

        async def memory_make_again(topic: str, partitions: int) -> None:
            broker.delete(topic)
            broker.create(topic, partitions)

        yield TopicsUnderTest(memory_make, memory_append, lambda: MemoryConsumer(broker), memory_make_again)
        return
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    make_topics = request.getfixturevalue("make_topics")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()

    async def kafka_make(name: str, partitions: int) -> str:
        [topic] = await asyncio.to_thread(make_topics, f"{name}{secrets.token_hex(3)}", partitions=partitions)
        return str(topic)

    async def kafka_append(topic: str, partition: int, value: bytes) -> None:
        await producer.send_and_wait(topic, value, partition=partition)

    async def kafka_make_again(topic: str, partitions: int) -> None:
        await asyncio.to_thread(recreate_topic, bootstrap, topic, partitions)

    try:
        yield TopicsUnderTest(kafka_make, kafka_append,
                              lambda: KafkaConsumer(Settings(kafka_bootstrap=bootstrap)), kafka_make_again)
    finally:
        await producer.stop()


async def read_all(consumer: Consumer, count: int, **fetch: Any) -> dict[tuple[str, int], list[Consumed]]:
    got: dict[tuple[str, int], list[Consumed]] = {}
    for _ in range(100):
        if sum(map(len, got.values())) >= count:
            break
        fetched = await consumer.fetch(**{"only": None, "max_records": 1000, "timeout_ms": 200, **fetch})
        for partition, records in fetched.records.items():
            got.setdefault(partition, []).extend(records)
    return got


async def test_a_consumer_reads_every_partition_in_offset_order_from_where_it_is_told(
        topics: TopicsUnderTest) -> None:
    fills = await topics.make("fills", 2)
    marks = await topics.make("marks", 1)
    for n in range(6):
        await topics.append(fills, n % 2, b"f%d" % n)
    await topics.append(marks, 0, b"m0")
    consumer = topics.consumer()
    await consumer.start()
    try:
        positions, ends = await consumer.assign([fills, marks], {(fills, 1): 1})
        assert positions == {(fills, 0): 0, (fills, 1): 1, (marks, 0): 0}
        assert ends == {(fills, 0): 3, (fills, 1): 3, (marks, 0): 1}
        got = await read_all(consumer, 6, max_records=2)
        assert {p: [(r.offset, r.value) for r in records] for p, records in got.items()} == {
            (fills, 0): [(0, b"f0"), (1, b"f2"), (2, b"f4")], (fills, 1): [(1, b"f3"), (2, b"f5")],
            (marks, 0): [(0, b"m0")]}
        assert all(r.topic == p[0] and r.partition == p[1] for p, records in got.items() for r in records)
        fetched = await consumer.fetch(only=None, max_records=10, timeout_ms=100)
        assert fetched.records == {}
        assert fetched.positions == ends and fetched.ends == ends
        await topics.append(marks, 0, b"m1")  # an end asked for now sees what was appended since
        assert await consumer.end_offsets([(marks, 0), (fills, 0)]) == {(marks, 0): 2, (fills, 0): 3}
    finally:
        await consumer.stop()


async def test_a_consumer_fetches_only_the_partitions_it_is_asked_for(topics: TopicsUnderTest) -> None:
    fills = await topics.make("fills", 1)
    marks = await topics.make("marks", 1)
    await topics.append(fills, 0, b"f0")
    await topics.append(marks, 0, b"m0")
    consumer = topics.consumer()
    await consumer.start()
    try:
        await consumer.assign([fills, marks], {})
        got = await read_all(consumer, 1, only={(marks, 0)})
        assert list(got) == [(marks, 0)]
        assert [r.value for r in (await read_all(consumer, 1))[(fills, 0)]] == [b"f0"]
    finally:
        await consumer.stop()


async def test_a_consumer_names_each_topic_s_id_which_changes_when_the_topic_is_created_again(
        topics: TopicsUnderTest) -> None:
    fills = await topics.make("fills", 1)
    marks = await topics.make("marks", 1)
    missing = f"contract.missing{secrets.token_hex(3)}"
    consumer = topics.consumer()
    await consumer.start()
    try:
        ids = await consumer.topic_ids([fills, marks, missing])
        assert sorted(ids) == sorted([fills, marks]) and ids[fills] != ids[marks]
        assert all(uuid.UUID(topic_id) for topic_id in ids.values())
        assert await consumer.topic_ids([fills]) == {fills: ids[fills]}
        await topics.make_again(fills, 1)
        again = await consumer.topic_ids([fills, marks])
        assert again[marks] == ids[marks] and again[fills] not in (ids[fills], ids[marks])
    finally:
        await consumer.stop()


async def test_a_consumer_refuses_a_topic_that_does_not_exist(topics: TopicsUnderTest) -> None:
    consumer = topics.consumer()
    await consumer.start()
    try:
        with pytest.raises(Exception, match="does not exist"):
            await consumer.assign([f"contract.missing{secrets.token_hex(3)}"], {})
    finally:
        await consumer.stop()


async def test_a_consumer_refuses_a_stored_position_beyond_the_log_s_end(topics: TopicsUnderTest) -> None:
    fills = await topics.make("fills", 1)
    await topics.append(fills, 0, b"f0")
    consumer = topics.consumer()
    await consumer.start()
    try:
        assert await consumer.assign([fills], {(fills, 0): 1}) == ({(fills, 0): 1}, {(fills, 0): 1})
        with pytest.raises(InputGap, match=rf"^input {fills}\[0\]: the stored position 5 lies beyond the log's end 1"):
            await consumer.assign([fills], {(fills, 0): 5})
    finally:
        await consumer.stop()


# ------------------------------------------------------------------------------------------------ the publisher
@dataclass
class OutputsUnderTest:
    make: Callable[[str, int], Awaitable[str]]
    publisher: Callable[[], Publisher]
    read: Callable[[str, int], Awaitable[list[tuple[bytes, bytes, dict[str, bytes]]]]]  # (key, value, headers)


# Kafka's publisher encodes its record batches in Rust where the service runs the compiled engine, record by record
# with aiokafka's builder where it runs the reference: both against the same contract
@pytest_asyncio.fixture(params=["memory", "kafka", "kafka-reference"])
async def outputs(request: pytest.FixtureRequest) -> AsyncIterator[OutputsUnderTest]:
    if request.param == "memory":
        broker = MemoryBroker()

        async def memory_make(name: str, partitions: int) -> str:
            broker.create(name, partitions)
            return name

        async def memory_read(topic: str, partition: int) -> list[tuple[bytes, bytes, dict[str, bytes]]]:
            return [(r.key or b"", r.value or b"", dict(r.headers)) for r in broker.topics[topic][partition]]

        yield OutputsUnderTest(memory_make, lambda: MemoryPublisher(broker), memory_read)
        return
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    make_topics = request.getfixturevalue("make_topics")

    async def kafka_make(name: str, partitions: int) -> str:
        [topic] = await asyncio.to_thread(make_topics, f"{name}{secrets.token_hex(3)}", partitions=partitions)
        return str(topic)

    async def kafka_read(topic: str, partition: int) -> list[tuple[bytes, bytes, dict[str, bytes]]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    isolation_level="read_committed")
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            out: list[tuple[bytes, bytes, dict[str, bytes]]] = []
            while len(out) < end:
                for record in (await consumer.getmany(tp, timeout_ms=2000)).get(tp, []):
                    out.append((record.key, record.value, dict(record.headers)))
            return out
        finally:
            await consumer.stop()

    engine = "reference" if request.param == "kafka-reference" else "compiled"
    yield OutputsUnderTest(kafka_make, lambda: KafkaPublisher(Settings(kafka_bootstrap=bootstrap, engine=engine)),
                           kafka_read)


async def test_a_publisher_writes_rows_in_order_per_partition_with_their_places(outputs: OutputsUnderTest) -> None:
    ledger = await outputs.make("ledger", 2)
    journal = await outputs.make("journal", 1)
    quantiles = await outputs.make("quantiles", 2)
    # each topic fed by one source: the journal and the fund ledger from their tables, quantiles from the outbox
    rows = [OutboxRow(i // 3 + 1, [journal, ledger, quantiles][i % 3], f"key-{i % 5}", f"r-{i}", f'{{"n": {i}}}',
                      ["journal", "fund_ledger", OUTBOX][i % 3]) for i in range(45)]
    publisher = outputs.publisher()
    await publisher.start()
    try:
        counts = await publisher.partition_counts([ledger, journal, quantiles])
        assert counts == {ledger: 2, journal: 1, quantiles: 2}
        assert await publisher.last_published(counts) == {}
        first = to_send(rows[:30], counts, {})
        assert sum((await publisher.send(first)).values()) == 30
        already = await publisher.last_published(counts)
        rest = to_send(rows, counts, already)  # a restart before the cursors moved: the first 30 are there
        assert [row.record_id for row in rest.rows] == [f"r-{i}" for i in range(30, 45)]
        await publisher.send(rest)
        last = await publisher.last_published(counts)
    finally:
        await publisher.stop()
    for topic, partitions in counts.items():
        for partition in range(partitions):
            want = [r for r in rows if r.topic == topic and partition_for(r.key, partitions) == partition]
            got = await outputs.read(topic, partition)
            header = OUTBOX_HEADER if topic == quantiles else POSITION_HEADER
            assert got == [(r.key.encode(), r.payload.encode(), {header: str(r.id).encode(),
                                                                  RECORD_ID_HEADER: r.record_id.encode()})
                           for r in want]
            assert last.get((topic, partition)) == ((header, want[-1].id, want[-1].record_id) if want else None)


def test_a_place_in_another_source_passes_nothing_over() -> None:
    """After the upgrade to table sources, a journal partition's last record may be an outbox row (its copy in the
    outbox, published before): journal rows from the table are sent whatever their seq."""
    row = OutboxRow(3, "t.journal", "k", "j-3", "{}", "journal")
    counts = {"t.journal": 1}
    assert to_send([row], counts, {("t.journal", 0): (OUTBOX_HEADER, 90)}) == ([row], [0])
    assert to_send([row], counts, {("t.journal", 0): (POSITION_HEADER, 3)}) == ([], [])
    assert to_send([row], counts, {("t.journal", 0): (POSITION_HEADER, 2)}) == ([row], [0])
    assert to_send([row], counts, {}) == ([row], None)  # nothing to pass over: the publisher partitions


def test_a_place_found_at_start_is_forgotten_once_its_source_is_read_past_it() -> None:
    found = {("t.journal", 0): (POSITION_HEADER, 7), ("t.journal", 1): (OUTBOX_HEADER, 40),
             ("t.adl-quantiles", 0): (OUTBOX_HEADER, 30), ("t.postings", 0): (POSITION_HEADER, 9)}
    rows = RowList([OutboxRow(5, "t.journal", "a", "j-5", "{}", "journal"),
                    OutboxRow(8, "t.journal", "b", "j-8", "{}", "journal"),
                    OutboxRow(30, "t.adl-quantiles", "c", "q-1", "{}", OUTBOX)])
    # the journal read up to 8 passes its place 7; an outbox place on the journal topic has no outbox rows of that
    # topic read to pass it (kept); the outbox read up to 30 passes 30; postings not read at all: kept
    assert still_ahead(found, rows, dict(rows.last_of_each_source())) == {("t.journal", 1): (OUTBOX_HEADER, 40),
                                                                   ("t.postings", 0): (POSITION_HEADER, 9)}
