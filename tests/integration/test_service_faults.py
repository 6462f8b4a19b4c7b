"""Server faults under the running service: PostgreSQL crashes (immediate shutdown, crash recovery) and the
Kafka broker restarts, mid-stream. The service recovers by itself and ends with exactly the ledger, hashes and
published records of an uninterrupted run.

This test restarts the servers of deploy/local (the ones `scripts/test` starts), so it must run against them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from service_harness import (
    ServeProcess,
    assert_same_outcome,
    in_process,
    input_ends,
    local,
    stored,
    two_runs,
    until_seq,
    wait_caught_up,
    wait_projections,
)

REPO = Path(__file__).resolve().parents[2]


async def test_postgres_crash_and_broker_restart_mid_stream_lose_nothing(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, databases: Any) -> None:
    for server in ("postgres", "kafka"):
        if subprocess.run([str(REPO / "deploy" / "local" / server), "status"], capture_output=True,
                          check=False).returncode != 0:
            pytest.fail(f"this test restarts deploy/local/{server}, which is not the running server: run it through "
                        f"scripts/test (or start deploy/local/{server})", pytrace=False)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from journal_gen import generate

    journal = tmp_path / "journal.jsonl"
    generate(journal, events=8000, seed=11)
    reference, faulted = await two_runs(databases, kafka_bootstrap, f"{topic_prefix}s", journal, input_partitions=3,
                                        batch_max_records=20, relay_batch=50, snapshot_every_events=2500)
    reference_dsn, faulted_dsn = reference.dsn(), faulted.dsn()
    async with in_process(reference) as (processor, _):
        await wait_caught_up(reference_dsn, ends=await input_ends(reference), timeout=300)
        await wait_projections(processor)

    serve = ServeProcess(faulted, tmp_path / "faulted.log")
    try:
        serve.wait_healthy()
        crashed_at = await until_seq(faulted_dsn, 400)
        local("postgres", "crash")
        await asyncio.sleep(1.0)
        local("postgres", "start")
        restarted_at = await until_seq(faulted_dsn, crashed_at + 800)  # it recovered by itself
        local("kafka", "stop")
        await asyncio.sleep(1.0)
        local("kafka", "start")
        await wait_caught_up(faulted_dsn, ends=await input_ends(faulted), timeout=300)
        await asyncio.to_thread(serve.wait_projections)
        assert serve.process.poll() is None, "the service died instead of riding the faults out"
    finally:
        serve.stop()
    total = (await stored(reference_dsn))["journal"]
    assert crashed_at < total and restarted_at < total, "the faults did not land mid-stream"

    await assert_same_outcome(reference, faulted)
    log = (tmp_path / "faulted.log").read_text()
    assert "failed" in log  # it did see the faults (and restarted its loops)


async def reference_run_beside_a_shared_one(tmp_path: Path, kafka_bootstrap: str, prefix: str, databases: Any, *,
                                            seed: int, **options: Any) -> tuple[Any, Any]:
    """A generated journal of 4,000 events on two databases: applied whole by an in-process service on the first
    (the reference), waiting on the second for the services under test."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from journal_gen import generate

    journal = tmp_path / "journal.jsonl"
    generate(journal, events=4000, seed=seed)
    reference, shared = await two_runs(databases, kafka_bootstrap, prefix, journal, input_partitions=3,
                                       batch_max_records=20, **options)
    async with in_process(reference) as (processor, _):
        await wait_caught_up(reference.dsn(), ends=await input_ends(reference), timeout=300)
        await wait_projections(processor)
    return reference, shared


async def test_a_standby_worker_takes_over_when_the_active_one_dies(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, databases: Any) -> None:
    reference, shared = await reference_run_beside_a_shared_one(tmp_path, kafka_bootstrap, f"{topic_prefix}w",
                                                                databases, seed=12)
    reference_dsn, shared_dsn = reference.dsn(), shared.dsn()
    active = ServeProcess(shared, tmp_path / "active.log")
    active.wait_healthy()
    standby = ServeProcess(shared, tmp_path / "standby.log")  # joins once the first holds the lock
    try:
        await until_seq(shared_dsn, 300)
        assert "ledger processor ready" not in (tmp_path / "standby.log").read_text()  # it waits on the lock
        active.kill()  # the active worker leaves (kill -9): its session and lock die with it
        await wait_caught_up(shared_dsn, ends=await input_ends(shared), timeout=300)
        await asyncio.to_thread(standby.wait_projections)
        assert "ledger processor ready" in (tmp_path / "standby.log").read_text()
    finally:
        active.stop()
        standby.stop()
    import re

    took_over_at = int(re.findall(r"ledger processor ready at seq (\d+)", (tmp_path / "standby.log").read_text())[0])
    assert 300 <= took_over_at < (await stored(reference_dsn))["journal"], "the standby did not take over mid-stream"
    await assert_same_outcome(reference, shared)


async def lock_sessions(dsn: str, lock_id: int, *, end: bool = False) -> int:
    """The sessions holding an advisory lock (a bigint key: classid, objid = its high, low 32 bits); with `end`,
    each is ended (pg_terminate_backend), as a lost connection or a PostgreSQL restart ends it."""
    import asyncpg

    owner = await asyncpg.connect(dsn)
    try:
        return int(await owner.fetchval(
            f"SELECT count({'pg_terminate_backend(pid)' if end else '*'}) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND classid::bigint = $1 AND objid::bigint = $2", lock_id >> 32, lock_id & 0xFFFFFFFF))
    finally:
        await owner.close()


@pytest.mark.parametrize("loop", ["ledger", "relay"])
async def test_a_loop_whose_lock_session_ends_stops_beside_the_standby(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, databases: Any, loop: str) -> None:
    """The lock of the ledger writer (or of the relay) ends with its session (killed here; a lost connection or a
    PostgreSQL restart alike) while its process runs on: the standby takes the lock, and the first must not go on
    writing (publishing) beside it: it checks its lock before each commit (round) and, idle, every second. Neither
    process stops: a writer whose batch met the other's head rebuilds from the store."""
    from backstop.adapters.postgres.store import RELAY_LOCK, WRITER_LOCK

    lock = WRITER_LOCK if loop == "ledger" else RELAY_LOCK
    reference, shared = await reference_run_beside_a_shared_one(
        tmp_path, kafka_bootstrap, f"{topic_prefix}{loop[0]}", databases, seed=17 if loop == "ledger" else 13,
        **({} if loop == "ledger" else {"relay_batch": 50}))
    shared_dsn = shared.dsn()
    active = ServeProcess(shared, tmp_path / "active.log")
    active.wait_healthy()
    standby = ServeProcess(shared, tmp_path / "standby.log")
    try:
        await until_seq(shared_dsn, 300)
        await asyncio.to_thread(standby.wait_healthy)  # up, and standing by for both locks
        assert await lock_sessions(shared_dsn, lock, end=True) == 1
        await wait_caught_up(shared_dsn, ends=await input_ends(shared), timeout=300)
        await asyncio.sleep(2.0)  # an idle writer checks its lock every second; both relays' rounds
        assert active.process.poll() is None and standby.process.poll() is None
        assert await lock_sessions(shared_dsn, lock) == 1  # one holds it, the other waits for it
        # the writer: the standby, or the first again if the standby's first batch met its head and it waited
        writers = [w for w in (active, standby) if json.loads(w._health_body())["ledger_ready"]]
        assert len(writers) == 1
        # both ready (200): the two locks may now be in two instances, each with one loop working, one standing by
        assert [json.loads(w.get("/health"))["status"] for w in (active, standby)] == ["ok", "ok"]
        await asyncio.to_thread(writers[0].wait_projections)
    finally:
        active.stop()
        standby.stop()
    await assert_same_outcome(reference, shared)  # every record applied once and published once, in order
    assert "LockLost" in (tmp_path / "active.log").read_text()
