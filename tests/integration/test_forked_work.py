"""Whole-state work in forked children (backstop.service.forked), written behind the batches: the full projection
refresh never overwrites a row a batch wrote as of its seq or later and holds the engine's exact numbers and ranking;
a child that dies is reported while the service goes on; a snapshot is the state at its seq."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson
from service_harness import in_process, settings_for, wait_caught_up, wait_refreshed

from backstop.adapters.kafka.tools import ensure_topics, produce_file
from backstop.adapters.postgres.store import POSITION_COLUMNS, RefreshCopy, StaleRow, Store
from backstop.core.engine import Engine
from backstop.core.processor import Processor
from backstop.core.snapshot import restore, state_hash
from backstop.pipeline.projections import FullRefresh, adl_rows, full_refresh
from backstop.service import metrics
from backstop.wire.decode import decode_record

D = Decimal
REPO = Path(__file__).resolve().parents[2]
DEFINITIONS = (REPO / "examples" / "03-cross-two-positions.jsonl").read_bytes().splitlines()[:6]
ODD = "we\tird\\name\nwith\rescapes"  # every character COPY's text format escapes


def _position(account: str, seq: int, qty: str = "1") -> tuple[object, ...]:
    return (account, "BTCUSDT", "both", D(qty), D("100000"), "isolated", D(10), D("10000"), D("101000"), None,
            D("90000"), seq)


async def test_a_refresh_updates_only_rows_older_than_its_seq_and_replaces_the_queue(
        migrated_database: str) -> None:
    store = await Store.open(migrated_database)
    try:
        async with store.pool.acquire() as connection:
            await connection.executemany(f"INSERT INTO positions ({', '.join(POSITION_COLUMNS)}) VALUES "
                                         f"({', '.join(f'${n}' for n in range(1, len(POSITION_COLUMNS) + 1))})",
                                         [_position("newer", 10), _position("older", 3), _position(ODD, 3),
                                          _position("held", 3), _position("same", 5)])
            await connection.executemany("INSERT INTO account_wallets VALUES ($1, $2, $3, $4)",
                                         [("newer", "USDT", D(1), 10), ("older", "USDT", D(1), 3)])
            await connection.execute("INSERT INTO adl_queue VALUES ('BTCUSDT', 'long', 'gone', 1, 1, 5, 2)")
            refresh = FullRefresh(
                5, [("newer", "USDT", D(2), 5), ("older", "USDT", D("2.50"), 5), ("absent", "USDT", D(2), 5)],
                [_position("newer", 5, "2"), _position("older", 5, "2"), _position(ODD, 5, "2.000"),
                 _position("absent", 5, "2"), _position("held", 5, "2"), _position("same", 5, "2")],
                [("BTCUSDT", "long", ODD, 1, D("0.123456789012"), 5, 5), ("BTCUSDT", "long", "older", 2, D("-1E-12"),
                                                                          1, 5)])
            # a batch's transaction holds "held" (it is writing it as of a later seq): the refresh skips it and
            # never waits
            holder = await asyncpg.connect(migrated_database)
            try:
                async with holder.transaction():
                    await holder.execute("SELECT 1 FROM positions WHERE account_id = 'held' FOR UPDATE")
                    chunked = RefreshCopy.of(refresh, chunk_rows=2)  # a transaction per two rows
                    assert (len(chunked.wallets), len(chunked.positions)) == (2, 3)
                    await asyncio.wait_for(store.write_refresh(chunked), 30)
            finally:
                await holder.close()
            positions = {r["account_id"]: (r["qty"], r["seq"], r["liquidation_price"])
                         for r in await connection.fetch("SELECT * FROM positions")}
            wallets = {r["account_id"]: (r["wallet"], r["seq"])
                       for r in await connection.fetch("SELECT * FROM account_wallets")}
            queue = [tuple(r) for r in await connection.fetch(
                "SELECT symbol, side, account_id, rank, score, quantile, seq FROM adl_queue ORDER BY rank")]
    finally:
        await store.close()
    # the row a later batch wrote is kept, and one as of the refresh's seq (written from the same state: given
    # other numbers here to show it); older rows take the refresh's numbers; no row is created
    assert positions == {"newer": (D(1), 10, None), "older": (D(2), 5, None), ODD: (D("2.000"), 5, None),
                         "held": (D(1), 3, None), "same": (D(1), 5, None)}
    assert wallets == {"newer": (D(1), 10), "older": (D("2.50"), 5)}
    assert queue == refresh.adl_queue
    assert str(queue[0][4]) == "0.123456789012"  # the numeric keeps the score's scale


async def test_a_refresh_removes_stale_rows_in_a_transaction_of_their_own_before_it_rewrites_the_queue(
        migrated_database: str) -> None:
    """A batch that closes a position whose row the refresh is removing waits for that removal only: while the
    queue's rewrite waits here (a lock held on the queue), the stale row is already gone for everyone."""
    store = await Store.open(migrated_database)
    blocker = await asyncpg.connect(migrated_database)
    try:
        await blocker.execute(f"INSERT INTO positions ({', '.join(POSITION_COLUMNS)}) VALUES "
                              f"({', '.join(f'${n}' for n in range(1, len(POSITION_COLUMNS) + 1))})",
                              *_position("stale", 3))
        refresh = FullRefresh(5, [], [], [("BTCUSDT", "long", "other", 1, D("0.5"), 5, 5)])
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE adl_queue IN SHARE MODE")  # the queue's rewrite waits for this
            writing = asyncio.create_task(store.write_refresh(RefreshCopy.of(refresh)))
            async with asyncio.timeout(30):
                while await store.pool.fetchval("SELECT count(*) FROM positions"):
                    await asyncio.sleep(0.01)
            assert not writing.done()
        assert await asyncio.wait_for(writing, 30) == [StaleRow("stale", "BTCUSDT", "both", 3)]
        assert await blocker.fetchval("SELECT account_id FROM adl_queue") == "other"
    finally:
        await blocker.close()
        await store.close()


async def test_two_replacements_of_the_adl_queue_at_once_leave_the_later_one_alone(migrated_database: str) -> None:
    """The queue has no key (migration 0018): a refresh that replaces it while another replacement is in flight (a
    stopping run's, say) waits for it, then deletes its rows too; without the lock each would keep the other's."""
    store = await Store.open(migrated_database)
    other = await asyncpg.connect(migrated_database)
    try:
        refresh = FullRefresh(5, [], [], [("BTCUSDT", "long", "new", 1, D("0.5"), 5, 5)])
        async with other.transaction():
            await other.execute("DELETE FROM adl_queue")
            await other.execute("INSERT INTO adl_queue VALUES ('BTCUSDT', 'long', 'old', 1, 0.25, 5, 4)")
            writing = asyncio.create_task(store.write_refresh(RefreshCopy.of(refresh)))
            await asyncio.sleep(0.5)
            assert not writing.done()  # waits for the replacement in flight
        await asyncio.wait_for(writing, 30)
        assert [r[0] for r in await other.fetch("SELECT account_id FROM adl_queue")] == ["new"]
    finally:
        await other.close()
        await store.close()


def _journal(path: Path, accounts: int) -> Path:
    """Definitions, then a deposit and a BTCUSDT position for each account, then a mark."""
    lines = list(DEFINITIONS)
    ts = 1760126401000
    for number in range(accounts):
        account = f"a{number:05d}"
        lines.append(orjson.dumps({"type": "transfer", "ts": ts, "transfer_id": f"d-{account}",
                                   "account_id": account, "asset": "USDT", "amount": "10000"}))
        lines.append(orjson.dumps({
            "type": "fill", "ts": ts, "fill_id": f"f-{account}", "account_id": account, "symbol": "BTCUSDT",
            "side": "buy" if number % 2 else "sell", "qty": f"0.{1 + number % 97:03d}",
            "price": str(99_000 + number % 2000), "fee": "0", "margin_mode": "cross" if number % 10 == 0 else
            "isolated", "leverage": str(2 + number % 40)}))
    lines.append(orjson.dumps({"type": "mark", "ts": ts + 1000, "symbol": "BTCUSDT", "mark_price": "99500"}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _children() -> set[int]:
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as handle:
                found |= {int(pid) for pid in handle.read().split()}
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return found


async def _kill_the_next_child(timeout: float = 60) -> int:
    before = _children()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = _children() - before
        if new:
            pid = min(new)
            os.kill(pid, signal.SIGKILL)
            return pid
        await asyncio.sleep(0.005)
    raise AssertionError("no refresh child was forked")


def _failures() -> float:
    return metrics.REGISTRY.get_sample_value("backstop_background_failures_total",
                                             {"kind": "projection refresh"}) or 0.0


Rows = dict[tuple[str, str, str], tuple[object, ...]]


async def _stored(dsn: str) -> tuple[list[tuple[object, ...]], Rows, list[bytes]]:
    """The ADL queue and position rows, and the journal in the service's order."""
    connection = await asyncpg.connect(dsn)
    try:
        queue = [tuple(r) for r in await connection.fetch(
            "SELECT symbol, side, account_id, rank, score, quantile, seq FROM adl_queue ORDER BY symbol, side, rank")]
        positions = {(r[0], r[1], r[2]): tuple(r) for r in await connection.fetch(
            f"SELECT {', '.join(POSITION_COLUMNS)} FROM positions")}
        lines = [r["payload"].encode() for r in await connection.fetch("SELECT payload FROM journal ORDER BY seq")]
    finally:
        await connection.close()
    return queue, positions, lines


async def test_a_killed_refresh_child_is_reported_and_the_next_refresh_writes_the_exact_projection(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    journal = _journal(tmp_path / "journal.jsonl", 6000)
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}refresh.", adl_refresh_event_ms=1,
                            check_conservation=False)
    await asyncio.to_thread(ensure_topics, settings)
    await produce_file(settings, journal)  # all of it first: the first refresh comes once the service caught up
    failures = _failures()
    killer = asyncio.create_task(_kill_the_next_child())
    async with in_process(settings) as (processor, _):
        await killer
        await wait_caught_up(migrated_database, applied=6 + 2 * 6000 + 1)
        deadline = time.monotonic() + 30
        errors = processor.progress.background_errors
        while "projection refresh" not in errors and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert "SIGKILL" in errors["projection refresh"]
        assert _failures() == failures + 1
        assert processor.progress.refreshed_seq < processor.progress.seq  # nothing of that refresh was written
        # the next due refresh: one more mark, then the projection of the final state, written by a new child
        mark = tmp_path / "mark.jsonl"
        mark.write_bytes(orjson.dumps({"type": "mark", "ts": 1760126403000, "symbol": "BTCUSDT",
                                       "mark_price": "99800"}) + b"\n")
        await produce_file(settings, mark)
        await wait_caught_up(migrated_database, applied=6 + 2 * 6000 + 2)
        await wait_refreshed(processor)
        assert errors == {}
    queue, positions, lines = await _stored(migrated_database)
    replayed = Processor(Engine(adl_quantiles=True))  # as the service runs it
    for line in lines:
        replayed.process(decode_record(line))
    engine = replayed.engine
    want = full_refresh(engine)
    assert queue == adl_rows(engine, engine.last_seq) == want.adl_queue
    assert len(queue) == 6000
    assert positions == {(row[0], row[1], row[2]): row for row in want.positions}


async def test_a_snapshot_taken_in_a_forked_child_is_the_state_at_its_seq(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    journal = _journal(tmp_path / "journal.jsonl", 3000)
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}snap.", snapshot_every_events=2500,
                            batch_max_records=500, check_conservation=False)
    await asyncio.to_thread(ensure_topics, settings)
    await produce_file(settings, journal)
    async with in_process(settings) as (processor, _):
        await wait_caught_up(migrated_database, applied=6 + 2 * 3000 + 1)
        deadline = time.monotonic() + 30
        while processor.progress.snapshot_seq < 5000 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    connection = await asyncpg.connect(migrated_database)
    try:
        rows = await connection.fetch("SELECT seq, state_hash, document FROM snapshots ORDER BY seq")
        # the service's own order (records of one timestamp on several topics interleave by its merge rule)
        lines = [r["payload"].encode() for r in await connection.fetch("SELECT payload FROM journal ORDER BY seq")]
    finally:
        await connection.close()
    seqs = [r["seq"] for r in rows]  # one at the batch that crossed each multiple of 2,500
    assert len(seqs) == 2 and 2500 <= seqs[0] < 3000 and 5000 <= seqs[1] < 5500, seqs
    replayed = Processor(Engine(adl_quantiles=True))  # as the service runs it
    for row in rows:
        while replayed.engine.last_seq < row["seq"]:
            replayed.process(decode_record(lines[replayed.engine.last_seq]))
        assert row["state_hash"] == state_hash(replayed.engine)
        document = orjson.loads(row["document"])
        assert state_hash(restore(document["engine"])) == row["state_hash"]
        assert document.keys() == {"engine"}  # identities are PostgreSQL's (applied_ids), not the snapshot's
