"""The full projection refresh, computed in a forked child (backstop.service.forked) and written by a later commit:
it never overwrites a row a newer batch wrote, it holds the engine's exact numbers and ranking, and a child that
dies is reported while the service goes on."""

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

from backstop.adapters.postgres.store import Head, RefreshCopy, Store
from backstop.core.engine import Engine
from backstop.core.processor import Processor
from backstop.entrypoints.kafka_tools import produce_file
from backstop.pipeline.ingest import BatchResult
from backstop.pipeline.projections import FullRefresh, Projections, adl_rows, full_refresh
from backstop.service import metrics
from backstop.service.app import ensure_topics
from backstop.wire.decode import decode_record

D = Decimal
REPO = Path(__file__).resolve().parents[2]
DEFINITIONS = (REPO / "examples" / "03-cross-two-positions.jsonl").read_bytes().splitlines()[:6]
ODD = "we\tird\\name\nwith\rescapes"  # every character COPY's text format escapes


def _position(account: str, seq: int, qty: str = "1") -> tuple[object, ...]:
    return (account, "BTCUSDT", D(qty), D("100000"), "isolated", D(10), D("10000"), D("101000"), None, D("90000"),
            seq)


async def test_a_refresh_updates_only_rows_no_newer_than_its_seq_and_replaces_the_queue(
        migrated_database: str) -> None:
    store = await Store.open(migrated_database)
    try:
        async with store.pool.acquire() as connection:
            await connection.executemany("INSERT INTO positions VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                                         [_position("newer", 10), _position("older", 3), _position(ODD, 3)])
            await connection.executemany("INSERT INTO account_wallets VALUES ($1, $2, $3, $4)",
                                         [("newer", "USDT", D(1), 10), ("older", "USDT", D(1), 3)])
            await connection.execute("INSERT INTO adl_queue VALUES ('BTCUSDT', 'long', 'gone', 1, 1, 5, 2)")
            refresh = FullRefresh(
                5, [("newer", "USDT", D(2), 5), ("older", "USDT", D("2.50"), 5), ("absent", "USDT", D(2), 5)],
                [_position("newer", 5, "2"), _position("older", 5, "2"), _position(ODD, 5, "2.000"),
                 _position("absent", 5, "2")],
                [("BTCUSDT", "long", ODD, 1, D("0.123456789012"), 5, 5), ("BTCUSDT", "long", "older", 2, D("-1E-12"),
                                                                          1, 5)])
            head = Head(5, "h", "0" * 64, "0" * 64, 0, 0, 0, 0)
            await store.write_batch(connection, expected_seq=0, result=BatchResult(), head=head,
                                    projections=Projections([], [], [], [], None, None), snapshot=None,
                                    refresh=RefreshCopy.of(refresh))
            positions = {r["account_id"]: (r["qty"], r["seq"], r["liquidation_price"])
                         for r in await connection.fetch("SELECT * FROM positions")}
            wallets = {r["account_id"]: (r["wallet"], r["seq"])
                       for r in await connection.fetch("SELECT * FROM account_wallets")}
            queue = [tuple(r) for r in await connection.fetch(
                "SELECT symbol, side, account_id, rank, score, quantile, seq FROM adl_queue ORDER BY rank")]
    finally:
        await store.close()
    # the row a later batch wrote is kept; older rows take the refresh's numbers; no row is created
    assert positions == {"newer": (D(1), 10, None), "older": (D(2), 5, None), ODD: (D("2.000"), 5, None)}
    assert wallets == {"newer": (D(1), 10), "older": (D("2.50"), 5)}
    assert queue == refresh.adl_queue
    assert str(queue[0][4]) == "0.123456789012"  # the numeric keeps the score's scale


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
        with open(f"/proc/self/task/{task}/children") as handle:
            found |= {int(pid) for pid in handle.read().split()}
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
    return metrics.REGISTRY.get_sample_value("backstop_projection_refresh_failures_total") or 0.0


async def _queue_and_positions(dsn: str) -> tuple[list[tuple[object, ...]], dict[tuple[str, str], tuple[object, ...]]]:
    connection = await asyncpg.connect(dsn)
    try:
        queue = [tuple(r) for r in await connection.fetch(
            "SELECT symbol, side, account_id, rank, score, quantile, seq FROM adl_queue ORDER BY symbol, side, rank")]
        positions = {(r[0], r[1]): tuple(r) for r in await connection.fetch("SELECT * FROM positions")}
    finally:
        await connection.close()
    return queue, positions


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
        while processor.progress.refresh_error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert processor.progress.refresh_error is not None and "SIGKILL" in processor.progress.refresh_error
        assert _failures() == failures + 1
        assert processor.progress.refreshed_seq < processor.progress.seq  # nothing of that refresh was written
        # the next due refresh: one more mark, then the projection of the final state, written by a new child
        mark = tmp_path / "mark.jsonl"
        mark.write_bytes(orjson.dumps({"type": "mark", "ts": 1760126403000, "symbol": "BTCUSDT",
                                       "mark_price": "99800"}) + b"\n")
        await produce_file(settings, mark)
        await wait_caught_up(migrated_database, applied=6 + 2 * 6000 + 2)
        await wait_refreshed(processor)
        assert processor.progress.refresh_error is None
    replayed = Processor(Engine())
    for line in [*journal.read_bytes().splitlines(), mark.read_bytes().strip()]:
        replayed.process(decode_record(line))
    engine = replayed.engine
    queue, positions = await _queue_and_positions(migrated_database)
    want = full_refresh(engine)
    assert queue == adl_rows(engine, engine.last_seq) == want.adl_queue
    assert len(queue) == 6000
    assert positions == {(row[0], row[1]): row for row in want.positions}
