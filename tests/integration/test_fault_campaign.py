"""A fault campaign: the real service, killed and disturbed at points drawn from a seed, against the real broker and
database, compared at the end with an uninterrupted run of the same input.

Faults: kill -9 inside the batch transaction, after commit, in the relay after publishing (injected at the n-th
time the process reaches that point, n drawn from the seed), kill -9 from outside after a random delay, a
PostgreSQL crash (immediate shutdown), a broker stop and start. CI runs 20 faults; for a long campaign:

    BACKSTOP_FAULTS=1000 scripts/test tests/integration/test_fault_campaign.py
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
    in_process,
    input_ends,
    local,
    published,
    seq_of,
    settings_for,
    stored,
    wait_caught_up,
)

from backstop.adapters.postgres.migrations import migrate
from backstop.entrypoints.kafka_tools import produce_file
from backstop.service.app import ensure_topics

REPO = Path(__file__).resolve().parents[2]
FAULTS = int(os.environ.get("BACKSTOP_FAULTS", "20"))
SEED = int(os.environ.get("BACKSTOP_FAULT_SEED") or secrets.randbelow(2**32))
KINDS = ("in_transaction", "after_commit", "relay_after_send", "external_kill", "postgres_crash", "broker_restart")
WEIGHTS = (3, 3, 2, 3, 1, 1)


async def test_fault_campaign(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, databases: Any,
                              capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nfault campaign: seed {SEED}, {FAULTS} faults (BACKSTOP_FAULT_SEED={SEED} replays it)")
    rng = random.Random(SEED)
    for server in ("postgres", "kafka"):
        if subprocess.run([str(REPO / "deploy" / "local" / server), "status"], capture_output=True,
                          check=False).returncode != 0:
            pytest.fail(f"the campaign restarts deploy/local/{server}, which is not the running server: run it "
                        f"through scripts/test", pytrace=False)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from journal_gen import generate

    journal = tmp_path / "journal.jsonl"
    generate(journal, events=max(20000, FAULTS * 1000), seed=SEED % 1000)
    run_id = secrets.token_hex(2)
    common = {"input_partitions": 3, "batch_max_records": 20, "relay_batch": 30, "snapshot_every_events": 1500}
    reference_dsn, faulted_dsn = await databases.create(f"_cref{run_id}"), await databases.create(f"_cflt{run_id}")
    await migrate(reference_dsn)
    await migrate(faulted_dsn)
    reference = settings_for(kafka_bootstrap, reference_dsn, f"{topic_prefix}cref{run_id}.", **common)
    faulted = settings_for(kafka_bootstrap, faulted_dsn, f"{topic_prefix}cflt{run_id}.", **common)
    for settings in (reference, faulted):
        ensure_topics(settings)
        await produce_file(settings, journal)
    async with in_process(reference):
        await wait_caught_up(reference_dsn, ends=await input_ends(reference), timeout=600)

    log = tmp_path / "faulted.log"
    ends = await input_ends(faulted)
    landed: dict[str, int] = dict.fromkeys(KINDS, 0)
    for _ in range(FAULTS):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        if kind in ("in_transaction", "after_commit", "relay_after_send"):
            serve = ServeProcess(faulted, log, fault=f"{kind}@{rng.randint(1, 4)}")
            code = await _exit_or_done(serve, faulted_dsn, ends)
        else:
            serve = ServeProcess(faulted, log)
            await asyncio.to_thread(serve.wait_healthy)
            await asyncio.sleep(rng.uniform(0, 0.3))
            if kind == "external_kill":
                serve.kill()
            else:
                before = await seq_of(faulted_dsn)
                server, down, up = ("postgres", "crash", "start") if kind == "postgres_crash" else \
                    ("kafka", "stop", "start")
                local(server, down)
                await asyncio.sleep(rng.uniform(0.1, 0.5))
                local(server, up)
                await _progress_or_done(faulted_dsn, before, ends)  # it recovered by itself and went on
            code = -9 if kind == "external_kill" else 0
        serve.stop()
        landed[kind] += 1 if code == -9 or kind in ("postgres_crash", "broker_restart") else 0
    serve = ServeProcess(faulted, log)
    try:
        await asyncio.to_thread(serve.wait_healthy)
        await wait_caught_up(faulted_dsn, ends=await input_ends(faulted), timeout=600)
    finally:
        serve.stop()
    with capsys.disabled():
        print(f"fault campaign: seed {SEED}: faults that landed: {landed}")

    want, have = await stored(reference_dsn), await stored(faulted_dsn)
    context = f"(seed {SEED})"
    assert have["journal"] == want["journal"], context
    assert have["fund_ledger"] == want["fund_ledger"], context
    assert have["adl_events"] == want["adl_events"], context
    assert have["head"]["head_hash"] == want["head"]["head_hash"], context
    assert have["head"]["state_hash"] == want["head"]["state_hash"], context
    out_want, out_have = await published(reference), await published(faulted)
    for stream in ("journal", "fund-ledger", "adl-events"):
        ids = [r["id"] for r in out_have[stream]]
        assert len(ids) == len(set(ids)), f"{stream}: a record id was published twice {context}"
        assert sorted(ids) == sorted(r["id"] for r in out_want[stream]), f"{stream} {context}"
    assert sum(landed.values()) >= FAULTS // 2, f"too few faults landed mid-stream: {landed} {context}"


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
