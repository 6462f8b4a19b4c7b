"""Running the service for tests: in-process loops, or `backstop serve` as a real process that can be killed."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest

from backstop.adapters.kafka.tools import end_offsets, read_topic
from backstop.adapters.postgres.migrations import migrate
from backstop.adapters.postgres.roles import ServiceLogin, ensure_service_role
from backstop.adapters.postgres.store import RELAY_BACKLOG_SQL
from backstop.pipeline.topics import TopicNames
from backstop.service.app import running
from backstop.service.ledger_loop import LedgerProcessor
from backstop.settings import Settings

BACKSTOP = Path(sys.executable).parent / "backstop"
SERVICE_ROLE = "backstop_svc"  # the service's login role, as `backstop db migrate` creates it (no password: trust)
ANCHOR_KEY_FILE = Path(__file__).with_name("test-only-anchor.key")  # a key for tests, never for a real service
MIGRATIONS = Path(__file__).resolve().parents[2] / "schemas" / "postgres"


def as_role(dsn: str, role: str) -> str:
    """The DSN with another user (and no password: the local test server trusts 127.0.0.1)."""
    parts = urlsplit(dsn)
    host = parts.netloc.split("@")[-1]
    return urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, parts.fragment))


async def migrate_before(dsn: str, scratch: Path, first_left_out: str) -> list[str]:
    """The schema as it stood before migration `first_left_out` (e.g. "0008"): an older database, to upgrade (or
    one upgraded that far). Returns the versions applied now."""
    before = scratch / f"before-{first_left_out}"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < first_left_out:
            shutil.copy(path, before / path.name)
    return await migrate(dsn, before)


async def prepare_database(dsn: str) -> None:
    """As an operator does, as the tables' owner: the migrations, then the service's login role."""
    await migrate(dsn)
    await ensure_service_role(dsn, ServiceLogin(SERVICE_ROLE))


def settings_for(bootstrap: str, dsn: str, prefix: str, *, role: str = SERVICE_ROLE, **overrides: Any) -> Settings:
    """Settings of a service on the database `dsn` (the owner's), which runs as `role`, never as the owner, and
    signs its checkpoints with the tests' anchor key."""
    values: dict[str, Any] = {"kafka_bootstrap": bootstrap, "pg_dsn": as_role(dsn, role), "topic_prefix": prefix,
                              "input_partitions": 1, "output_partitions": 3, "batch_max_wait_ms": 20,
                              "relay_idle_ms": 10, "check_conservation": True, "state_hash_quiet_ms": 100,
                              "anchor_key_file": ANCHOR_KEY_FILE,
                              # the tests' snapshots fall at each multiple of snapshot_every_events, restores of them
                              # under faults included, however many positions are open
                              "snapshot_events_per_position": 0}
    values.update(overrides)
    return Settings(**values)


in_process = running  # the ledger processor and the relay as tasks of the test's event loop


def recreate_topic(bootstrap: str, topic: str, partitions: int, config: dict[str, str] | None = None) -> None:
    """Delete the topic and create it again (a new topic id, an empty log), as an operator might: Kafka deletes a
    topic in the background, so the creation is tried again until the name is free."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="backstop-test-admin")
    try:
        admin.delete_topics([topic], timeout_ms=30_000)
        deadline = time.monotonic() + 60
        while True:
            try:
                admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config or {})], timeout_ms=30_000,
                                    wait_for_metadata=True)
                return
            except TopicAlreadyExistsError:  # still being deleted
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        admin.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServeProcess:
    """`backstop serve` in a child process, configured by environment variables, as an operator runs it."""

    def __init__(self, settings: Settings, log: Path, fault: str | None = None) -> None:
        self.port = free_port()
        env = {**os.environ, "BACKSTOP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "BACKSTOP_PG_DSN": settings.dsn(),
               "BACKSTOP_TOPIC_PREFIX": settings.topic_prefix, "BACKSTOP_WEB_PORT": str(self.port),
               "BACKSTOP_INPUT_PARTITIONS": str(settings.input_partitions),
               "BACKSTOP_OUTPUT_PARTITIONS": str(settings.output_partitions),
               "BACKSTOP_BATCH_MAX_RECORDS": str(settings.batch_max_records),
               "BACKSTOP_BATCH_MAX_WAIT_MS": str(settings.batch_max_wait_ms),
               "BACKSTOP_RELAY_BATCH": str(settings.relay_batch),
               "BACKSTOP_SNAPSHOT_EVERY_EVENTS": str(settings.snapshot_every_events),
               "BACKSTOP_SNAPSHOT_EVENTS_PER_POSITION": str(settings.snapshot_events_per_position),
               "BACKSTOP_STATE_HASH_QUIET_MS": str(settings.state_hash_quiet_ms),
               "BACKSTOP_ENGINE": settings.engine,
               "BACKSTOP_CHECK_CONSERVATION": "true"}
        if settings.anchor_key_file is not None:
            env["BACKSTOP_ANCHOR_KEY_FILE"] = str(settings.anchor_key_file)
        env.pop("BACKSTOP_FAULT_INJECT", None)
        env.pop("BACKSTOP_ANCHOR_ADOPT", None)
        if fault:
            env["BACKSTOP_FAULT_INJECT"] = fault
        self.log = log
        self.handle = log.open("ab")
        self.process = subprocess.Popen([str(BACKSTOP), "serve"], env=env, stdout=self.handle,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=log.parent)  # faust puts its data dir in the cwd

    def wait_healthy(self, timeout: float = 90, *, standby: bool = False) -> None:
        """Until /health says ok (a standby too, once it stands by); with standby=True, until it answers at all."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"backstop serve exited with {self.process.returncode}: "
                                     f"{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                if standby and error.code == 503:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"backstop serve not healthy after {timeout}s: {self.log.read_text()[-3000:]}")

    def wait_projections(self, timeout: float = 90) -> None:
        """Until the last full projection refresh that became due is written (see wait_projections)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = json.loads(self._health_body())
            if health["projections_refreshed_seq"] >= health["projections_due_seq"]:
                return
            time.sleep(0.1)
        raise AssertionError(f"projection refresh not written after {timeout}s: {self._health_body()}")

    def _health_body(self) -> str:
        import urllib.error

        try:
            return self.get("/health")
        except urllib.error.HTTPError as error:  # 503 while starting: the body says the same
            body: bytes = error.read()
            return body.decode()

    def get(self, path: str) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    def wait_exit(self, timeout: float = 90) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the service did not exit within {timeout:g} s; its log ends:\n"
                        f"{self.log.read_text(errors='replace')[-3000:]}", pytrace=False)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.handle.close()


async def wait_caught_up(dsn: str, *, applied: int | None = None, ends: dict[tuple[str, int], int] | None = None,
                         timeout: float = 90, state_hash: bool = True) -> None:
    """Until the journal holds `applied` events (or every input partition is consumed up to `ends`), every outbox
    row is published and (unless state_hash=False) the state hash is recorded at the head, which the service does
    once its input has been quiet for BACKSTOP_STATE_HASH_QUIET_MS."""
    connection = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seq = await connection.fetchval("SELECT coalesce(max(seq), 0) FROM journal")
            backlog = await connection.fetchval(RELAY_BACKLOG_SQL)
            offsets = {(r["topic"], r["partition"]): r["next_offset"]
                       for r in await connection.fetch("SELECT * FROM consumed_offsets")}
            consumed = ends is None or all(offsets.get(tp, 0) >= end for tp, end in ends.items() if end > 0)
            head = await connection.fetchrow("SELECT seq, state_hash_seq FROM engine_head")
            hashed = not state_hash or head is None or head["seq"] == 0 or head["state_hash_seq"] == head["seq"]
            if (applied is None or seq >= applied) and consumed and backlog == 0 and hashed:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"not caught up after {timeout}s: seq {seq} (want {applied}), offsets {offsets} "
                             f"(want {ends}), {backlog} unpublished, head {dict(head) if head else None}")
    finally:
        await connection.close()


async def wait_refreshed(processor: LedgerProcessor, timeout: float = 60) -> None:
    """Until a full projection refresh (computed in a forked child) has been written as of the processor's seq."""
    deadline = time.monotonic() + timeout
    progress = processor.progress
    while time.monotonic() < deadline:
        if progress.seq and progress.refreshed_seq == progress.seq:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no full refresh at seq {progress.seq} in {timeout}s (last at {progress.refreshed_seq}, "
                         f"errors {progress.background_errors})")


async def wait_projections(processor: LedgerProcessor, timeout: float = 90) -> None:
    """Until the last full projection refresh that became due (funding moves every wallet; only a refresh writes
    that) is written: caught up and quiet, the service may still be computing it in a forked child, and a stop
    drops it (the next start rewrites every row). Account rows compared before then can be a refresh behind."""
    deadline = time.monotonic() + timeout
    progress = processor.progress
    while time.monotonic() < deadline:
        if progress.refreshed_seq >= progress.refresh_due_seq:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the refresh due at seq {progress.refresh_due_seq} was not written in {timeout}s (last "
                         f"at {progress.refreshed_seq}, errors {progress.background_errors})")


async def input_ends(settings: Settings) -> dict[tuple[str, int], int]:
    """The end offset of every input partition."""
    return await end_offsets(settings, list(TopicNames(settings.topic_prefix).inputs))


async def stored(dsn: str) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        head = await connection.fetchrow("SELECT * FROM engine_head")
        return {
            "head": dict(head) if head else None,
            "fund_ledger": [orjson.loads(r["record"]) for r in
                            await connection.fetch("SELECT record FROM fund_ledger ORDER BY position")],
            "adl_events": [orjson.loads(r["record"]) for r in
                           await connection.fetch("SELECT record FROM adl_events ORDER BY position")],
            "dead_letter": [dict(r) for r in await connection.fetch(
                "SELECT source_topic, source_partition, source_offset, reason FROM dead_letter ORDER BY id")],
            "journal": await connection.fetchval("SELECT count(*) FROM journal"),
        }
    finally:
        await connection.close()


async def published(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every record on the output topics, by topic name suffix."""
    topics = TopicNames(settings.topic_prefix)
    result: dict[str, list[dict[str, Any]]] = {}
    for name, topic in (("journal", topics.journal), ("fund-ledger", topics.fund_ledger),
                        ("adl-events", topics.adl_events), ("dead-letter", topics.dead_letter),
                        ("adl-quantiles", topics.adl_quantiles), ("postings", topics.postings)):
        result[name] = [orjson.loads(v) async for _, _, v in read_topic(settings, topic, follow=False,
                                                                        idle_timeout_s=1.0)]
    return result


async def seq_of(dsn: str) -> int:
    """The journal head, or -1 while the database is away."""
    try:
        connection = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return -1
    try:
        value: int = await connection.fetchval("SELECT coalesce(max(seq), 0) FROM journal")
        return value
    except (OSError, asyncpg.PostgresError):
        return -1
    finally:
        await connection.close()


async def until_seq(dsn: str, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seq = await seq_of(dsn)
        if seq >= at_least:
            return seq
        await asyncio.sleep(0.05)
    raise AssertionError(f"the journal did not reach seq {at_least} in {timeout}s")


REPO = Path(__file__).resolve().parents[2]


def local(server: str, *command: str) -> None:
    # After a crash PostgreSQL replays its WAL and writes an end-of-recovery checkpoint before it accepts
    # connections; on a busy host that outlasts the script's default wait.
    env = {**os.environ, "BACKSTOP_PG_START_TIMEOUT": "170"}
    run = subprocess.run([str(REPO / "deploy" / "local" / server), *command], capture_output=True, text=True,
                         timeout=180, check=False, env=env)
    assert run.returncode == 0, f"deploy/local/{server} {' '.join(command)}: {run.stdout}{run.stderr}"


async def two_runs(databases: Any, kafka_bootstrap: str, prefix: str, journal: Path,
                   **common: Any) -> tuple[Settings, Settings]:
    """A reference and a faulted setup: own databases (migrated) and topics, both filled with the same journal before
    any service starts (the order the service decides is a function of the topics' contents)."""
    from backstop.adapters.kafka.tools import ensure_topics, produce_file

    run_id = secrets.token_hex(2)
    runs = []
    for name in ("ref", "flt"):
        dsn = await databases.create(f"_{prefix}{name}{run_id}")
        await prepare_database(dsn)
        settings = settings_for(kafka_bootstrap, dsn, f"{prefix}{name}{run_id}.", **common)
        ensure_topics(settings)
        await produce_file(settings, journal)
        runs.append(settings)
    return runs[0], runs[1]


async def account_rows(dsn: str) -> dict[str, Any]:
    """The projection rows that do not depend on when they were written (marks, and the prices that follow them,
    do): wallets, positions' own numbers, fund balances."""
    connection = await asyncpg.connect(dsn)
    try:
        return {
            "wallets": sorted(tuple(r) for r in await connection.fetch(
                "SELECT account_id, asset, wallet FROM account_wallets")),
            "positions": sorted(tuple(r) for r in await connection.fetch(
                "SELECT account_id, symbol, qty, entry_price, margin_mode, leverage, isolated_margin FROM positions")),
            "funds": sorted(tuple(r) for r in await connection.fetch("SELECT fund_id, balance FROM funds")),
        }
    finally:
        await connection.close()


async def whole_rows(dsn: str, table: str, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every column of the projection rows account_rows gave (keyed by their first two columns)."""
    connection = await asyncpg.connect(dsn)
    try:
        return [dict(r) for key in rows for r in await connection.fetch(
            f"SELECT * FROM {ACCOUNT_TABLES[table]} WHERE {ACCOUNT_KEYS[table][0]} = $1 AND "
            f"{ACCOUNT_KEYS[table][1]} = $2", key[0], key[1])]
    finally:
        await connection.close()


ACCOUNT_TABLES = {"wallets": "account_wallets", "positions": "positions", "funds": "funds"}
ACCOUNT_KEYS = {"wallets": ("account_id", "asset"), "positions": ("account_id", "symbol"),
                "funds": ("fund_id", "balance")}


async def assert_same_outcome(reference: Settings, faulted: Settings, context: str = "") -> None:
    """Same journal, fund ledger, ADL events, head and state hash, and the same account projections; every output
    id published once, the same ids. The engine's outcome is compared before the projections: a projection row that
    differs on the same state hash is the projection's fault, not the rules'."""
    want, have = await stored(reference.dsn()), await stored(faulted.dsn())
    assert have["journal"] == want["journal"], context
    assert have["fund_ledger"] == want["fund_ledger"], context
    assert have["adl_events"] == want["adl_events"], context
    assert have["head"]["head_hash"] == want["head"]["head_hash"], context
    assert have["head"]["state_hash"] == want["head"]["state_hash"], context
    rows_want, rows_have = await account_rows(reference.dsn()), await account_rows(faulted.dsn())
    for table, expected in rows_want.items():
        extra, missing = sorted(set(rows_have[table]) - set(expected)), sorted(set(expected) - set(rows_have[table]))
        if extra or missing:  # shown in full (their seq says which write left them)
            raise AssertionError(f"{table}: rows not in the reference {extra[:5]} "
                                 f"{await whole_rows(faulted.dsn(), table, extra[:5])}, rows missing {missing[:5]} "
                                 f"{await whole_rows(reference.dsn(), table, missing[:5])} {context}")
    out_want, out_have = await published(reference), await published(faulted)
    for stream in ("journal", "fund-ledger", "adl-events", "adl-quantiles", "postings"):
        ids = [r["id"] for r in out_have[stream]]
        assert len(ids) == len(set(ids)), f"{stream}: a record id was published twice {context}"
        assert sorted(ids) == sorted(r["id"] for r in out_want[stream]), f"{stream} {context}"
