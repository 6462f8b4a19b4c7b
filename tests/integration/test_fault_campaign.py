"""A fault campaign: the real service, killed and disturbed at points drawn from a seed, against the real broker and
database, compared at the end with an uninterrupted run of the same input.

Faults: kill -9 inside the batch transaction, after commit, in the relay after publishing (injected at the n-th
time the process reaches that point, n drawn from the seed), kill -9 from outside after a random delay, a
PostgreSQL crash (immediate shutdown), a broker stop and start, and a worker handover (a second worker joins, the
first leaves with SIGTERM, the second takes over). CI runs 20 faults; for a long campaign (1,000 faults):

    scripts/test tests/integration/test_fault_campaign.py --long
    BACKSTOP_FAULTS=<n> ...               # any other number
    BACKSTOP_FAULT_SEED=<seed> ...        # replay a campaign: the seed is printed at the start
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from service_harness import (
    ServeProcess,
    assert_same_outcome,
    in_process,
    input_ends,
    local,
    seq_of,
    two_runs,
    wait_caught_up,
    wait_projections,
)

REPO = Path(__file__).resolve().parents[2]
SHORT, LONG = 20, 1000
EVENTS_PER_FAULT = 1200  # measured: a fault lets the worker apply ~500-1,300 events; faults need input left
FULL_BATCHES = {"batch_max_records": 5000, "relay_batch": 2000}  # reference and tail (the merge orders)
SEED = int(os.environ.get("BACKSTOP_FAULT_SEED") or secrets.randbelow(2**32))
KINDS = ("in_transaction", "after_commit", "relay_after_send", "relay_part_acked", "external_kill", "postgres_crash",
         "broker_restart", "worker_handover")
WEIGHTS = (3, 3, 2, 2, 3, 1, 1, 1)
SURVIVED = ("postgres_crash", "broker_restart", "worker_handover")  # the service goes on: no exit code to check


async def test_fault_campaign(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, databases: Any,
                              capsys: pytest.CaptureFixture[str], pytestconfig: pytest.Config) -> None:
    faults = int(os.environ.get("BACKSTOP_FAULTS") or (LONG if pytestconfig.getoption("--long") else SHORT))
    started = time.monotonic()
    with capsys.disabled():
        print(f"\nfault campaign: seed {SEED}, {faults} faults (BACKSTOP_FAULT_SEED={SEED} replays it)")
    rng = random.Random(SEED)
    for server in ("postgres", "kafka"):
        if subprocess.run([str(REPO / "deploy" / "local" / server), "status"], capture_output=True,
                          check=False).returncode != 0:
            pytest.fail(f"the campaign restarts deploy/local/{server}, which is not the running server: run it "
                        f"through scripts/test", pytrace=False)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from journal_gen import generate

    journal = tmp_path / "journal.jsonl"
    events = max(20000, faults * EVENTS_PER_FAULT)
    generate(journal, events=events, seed=SEED % 1000)
    reference, faulted = await two_runs(databases, kafka_bootstrap, f"{topic_prefix}c", journal, input_partitions=3,
                                        batch_max_records=20, relay_batch=30, snapshot_every_events=1500)
    faulted_dsn = faulted.dsn()
    # The reference reads in full-size batches (the merge decides the order, not the batch size), so a long
    # campaign's reference run takes minutes, not an hour.
    reference = reference.model_copy(update=FULL_BATCHES)
    async with in_process(reference) as (processor, _):
        await wait_caught_up(reference.dsn(), ends=await input_ends(reference), timeout=max(600, events / 50))
        await wait_projections(processor)

    log = tmp_path / "faulted.log"
    ends = await input_ends(faulted)
    landed: dict[str, int] = dict.fromkeys(KINDS, 0)
    slowest_start = 0.0  # a server's start after its fault: the service goes on meanwhile, with the input it holds
    for number in range(1, faults + 1):
        if number % max(10, faults // 20) == 0:
            with capsys.disabled():
                print(f"fault campaign: {number - 1} faults done in {time.monotonic() - started:.0f} s, "
                      f"journal at seq {await seq_of(faulted_dsn)} of ~{events}, landed {landed}", flush=True)
        kind = rng.choices(KINDS, WEIGHTS)[0]
        if kind in ("in_transaction", "after_commit", "relay_after_send", "relay_part_acked"):
            serve = ServeProcess(faulted, log, fault=f"{kind}@{rng.randint(1, 4)}")
            code = await _exit_or_done(serve, faulted_dsn, ends)
        else:
            serve = ServeProcess(faulted, log)
            await asyncio.to_thread(serve.wait_healthy)
            await asyncio.sleep(rng.uniform(0, 0.3))
            if kind == "external_kill":
                serve.kill()
            elif kind == "worker_handover":
                joiner = ServeProcess(faulted, log)  # waits on the advisory lock as a standby
                await asyncio.to_thread(joiner.wait_healthy, standby=True)
                await asyncio.sleep(rng.uniform(0, 0.3))
                before = await seq_of(faulted_dsn)
                serve.stop()  # the first worker leaves cleanly; the joiner takes the lock and goes on
                await _progress_or_done(faulted_dsn, before, ends)
                serve = joiner
            else:
                before = await seq_of(faulted_dsn)
                server, down, up = ("postgres", "crash", "start") if kind == "postgres_crash" else \
                    ("kafka", "stop", "start")
                local(server, down)
                await asyncio.sleep(rng.uniform(0.1, 0.5))
                restarting = time.monotonic()
                local(server, up)
                slowest_start = max(slowest_start, time.monotonic() - restarting)
                await _progress_or_done(faulted_dsn, before, ends)  # it recovered by itself and went on
            code = -9 if kind == "external_kill" else 0
        serve.stop()
        landed[kind] += 1 if code == -9 or kind in SURVIVED else 0
    # The rest of the input in full-size batches, like the reference: at 20 records a batch, the tail a long
    # campaign leaves (half its input) took most of an hour.
    serve = ServeProcess(faulted.model_copy(update=FULL_BATCHES), log)
    try:
        await asyncio.to_thread(serve.wait_healthy)
        await wait_caught_up(faulted_dsn, ends=await input_ends(faulted), timeout=max(600, events / 50))
        await asyncio.to_thread(serve.wait_projections)
    finally:
        serve.stop()
    with capsys.disabled():
        print(f"fault campaign: seed {SEED}: faults that landed: {landed}")

    await assert_same_outcome(reference, faulted, f"(seed {SEED})")
    assert sum(landed.values()) >= faults // 2, (
        f"too few faults landed mid-stream: {landed} (seed {SEED}); the slowest server start took "
        f"{slowest_start:.0f} s, during which the service applies what it fetched (a broker holding thousands of "
        f"partitions from earlier runs starts slowly: deploy/local/kafka stop, remove .local/kafka/data, start)")


async def _progress_or_done(dsn: str, before: int, ends: dict[tuple[str, int], int], timeout: float = 120) -> None:
    """Until the journal moves past `before`, or everything is consumed (the input may have run out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await seq_of(dsn) > before:
            return
        try:
            await wait_caught_up(dsn, ends=ends, timeout=0.2)
            return
        except (AssertionError, OSError, asyncpg.PostgresError):  # not yet, or the database is restarting
            await asyncio.sleep(0.1)
    raise AssertionError(f"no progress past seq {before} within {timeout}s after the fault")


async def _exit_or_done(serve: ServeProcess, dsn: str, ends: dict[tuple[str, int], int],
                        timeout: float = 120) -> int:
    """The injected fault kills the process (-9); if the input runs out first, it never will: stop waiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = serve.process.poll()
        if code is not None:
            return code
        try:
            await wait_caught_up(dsn, ends=ends, timeout=0.2)
            return 0
        except AssertionError:
            continue
        except (OSError, asyncpg.PostgresError):  # the database is restarting
            await asyncio.sleep(0.2)
    raise AssertionError(f"backstop serve neither reached its fault point nor caught up in {timeout}s")
