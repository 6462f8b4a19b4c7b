"""Service benchmark: events/s of the service end to end (Kafka in -> PostgreSQL -> Kafka out) beside a raw
aiokafka consumer reading the same topics and doing nothing, measured in the same run.

    python benchmarks/service.py [--events 200000] [--seed 42] [--engine compiled|reference]

Needs the local servers (deploy/local/kafka start, deploy/local/postgres start) or BACKSTOP_KAFKA_BOOTSTRAP and
BACKSTOP_BENCH_PG_DSN (a role that may create databases and roles). Creates its own database and topics, drops them
after. As in production, the database's owner migrates it and creates the service's login role (the user and
password of BACKSTOP_PG_DSN, default backstop_svc), the service runs as that role and signs its checkpoints with an
anchor key of the run's own.
The input is produced before the service starts; the clock runs from the service's start until every input
offset is consumed and every output record is published.

What bounds it: for the same window, the CPU seconds per input record of each process (from /proc/<pid>/stat,
utime + stime): this process, which runs the service (its event loop thread: the consumer, the merge, the commit's
encoding, the relay; its other threads: the engine's calls offloaded; forked children once reaped), every
PostgreSQL server process (the postmaster, its live children, and the children it reaped), and the Kafka broker
(the process listening on the bootstrap port); and what PostgreSQL wrote per input record: rows inserted per table
(pg_stat_user_tables) and WAL bytes (the difference of pg_current_wal_lsn). The raw consume's window gets the same
CPU figures, for the broker's and a consumer's share of a plain fetch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from backstop.adapters.kafka import admin  # noqa: E402
from backstop.adapters.kafka.tools import end_offsets, ensure_topics, produce_file  # noqa: E402
from backstop.adapters.postgres.migrations import migrate  # noqa: E402
from backstop.adapters.postgres.roles import ServiceLogin, ensure_service_role  # noqa: E402
from backstop.pipeline.topics import TopicNames  # noqa: E402
from backstop.service.app import running  # noqa: E402
from backstop.settings import Settings  # noqa: E402
from replay import journal_for  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command's name (which may hold spaces): field 3 of proc(5) first."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def cpu_ticks(pid: int | str, *, children: bool = False) -> int:
    """utime + stime of a process (all its threads), plus cutime + cstime (its reaped children) if asked."""
    fields = _stat(pid)  # utime, stime, cutime, cstime are proc(5)'s fields 14 to 17
    ticks = int(fields[11]) + int(fields[12])
    return ticks + int(fields[13]) + int(fields[14]) if children else ticks


def _children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(entry.name)[1]) == parent:  # proc(5) field 4: the parent's pid
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return found


def listening_pid(port: int) -> int | None:
    """The process holding the listening socket on `port` (Linux: /proc/net/tcp*, then every process's fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                for fd in (entry / "fd").iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) in inodes:
                            return int(entry.name)
    return None


class CpuMeter:
    """CPU seconds of the processes a service benchmark runs on, between two readings (None where one is not
    found: a remote server)."""

    def __init__(self, postmaster: int | None, broker: int | None) -> None:
        self.postmaster, self.broker = postmaster, broker

    @classmethod
    async def find(cls, connection: asyncpg.Connection, kafka_bootstrap: str) -> CpuMeter:
        backend = await connection.fetchval("SELECT pg_backend_pid()")
        postmaster = None
        with contextlib.suppress(OSError):
            postmaster = int(_stat(backend)[1])
        host, _, port = kafka_bootstrap.split(",")[0].rpartition(":")
        local = host in ("127.0.0.1", "localhost", "::1", "[::1]")
        return cls(postmaster, listening_pid(int(port)) if local else None)

    def read(self) -> dict[str, float | None]:
        own = os.getpid()
        process = cpu_ticks(own, children=True)
        loop_thread = cpu_ticks(f"{own}/task/{threading.main_thread().native_id}")
        postgres = None
        if self.postmaster is not None:
            with contextlib.suppress(OSError):
                postgres = cpu_ticks(self.postmaster, children=True)
                for child in _children_of(self.postmaster):  # one that exits meanwhile lands in cutime
                    with contextlib.suppress(OSError):
                        postgres += cpu_ticks(child)
        broker = None
        if self.broker is not None:
            with contextlib.suppress(OSError):
                broker = cpu_ticks(self.broker)
        return {name: None if ticks is None else ticks / CLOCK_TICKS for name, ticks in (
            ("service_loop_thread", loop_thread), ("service_other_threads", process - loop_thread),
            ("postgresql", postgres), ("kafka_broker", broker))}


def cpu_per_record(before: dict[str, float | None], after: dict[str, float | None], records: int
                   ) -> dict[str, float | None]:
    """Microseconds of CPU per input record of each process between two readings."""
    return {name: None if (start := before[name]) is None or (end := after[name]) is None
            else round((end - start) / records * 1e6, 1) for name in before}


TABLE_WRITES_SQL = "SELECT relname, n_tup_ins, n_tup_upd + n_tup_del AS changed FROM pg_stat_user_tables"


async def pg_writes(connection: asyncpg.Connection) -> tuple[dict[str, tuple[int, int]], str]:
    """Rows inserted, and rows updated or deleted, per table so far (the statistics of sessions that ended or went
    idle), and the WAL position."""
    await connection.execute("SELECT pg_stat_clear_snapshot()")
    writes = {r["relname"]: (r["n_tup_ins"], r["changed"]) for r in await connection.fetch(TABLE_WRITES_SQL)}
    return writes, await connection.fetchval("SELECT pg_current_wal_lsn()::text")


# every record the relay published: the journal's, fund ledger's, ADL events', postings' (a block: its postings) and
# the outbox's (a block: its records)
PUBLISHED_SQL = ("SELECT (SELECT count(*) FROM journal) + (SELECT count(*) FROM fund_ledger) + "
                 "(SELECT count(*) FROM adl_events) + (SELECT coalesce(sum(postings), 0) FROM posting_blocks) + "
                 "(SELECT coalesce(sum(coalesce(records, 1)), 0) FROM outbox)")
SERVER_DSN = os.environ.get("BACKSTOP_BENCH_PG_DSN", "postgresql://backstop@127.0.0.1:5432/backstop")  # the owner


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def prepare_database(owner_dsn: str) -> str:
    """Migrations and the service's login role, as `backstop db migrate` does; returns the service's DSN there."""
    login = ServiceLogin.from_dsn(Settings().dsn())
    await migrate(owner_dsn)
    await ensure_service_role(owner_dsn, login)
    parts = urlsplit(owner_dsn)
    user = quote(login.role, safe="") + (f":{quote(login.password, safe='')}" if login.password else "")
    return urlunsplit((parts.scheme, f"{user}@{parts.netloc.split('@')[-1]}", parts.path, parts.query,
                       parts.fragment))


def anchor_key_file(directory: str) -> Path:
    """A key of the run's own: the service signs a checkpoint with every batch, as in production."""
    path = Path(directory) / "anchor.key"
    path.write_text(secrets.token_hex(32))
    return path


async def drop_database(server: asyncpg.Connection, database: str) -> None:
    """DROP ... WITH (FORCE) ends our own sessions, not an autovacuum worker's: wait for that one to finish."""
    for _ in range(60):
        try:
            await server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            return
        except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
            await asyncio.sleep(1)
    raise RuntimeError(f"could not drop the benchmark database {database}")


async def raw_consume(settings: Settings, ends: dict[tuple[str, int], int], meter: CpuMeter
                      ) -> tuple[int, float, dict[str, float | None]]:
    """The floor: a plain aiokafka consumer fetching every input record and doing nothing with it; its rate and CPU
    per record (the consumer is this process's)."""
    before = meter.read()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 << 20, fetch_max_bytes=32 << 20)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t, p in ends]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count, started = 0, time.perf_counter()
        while count < sum(ends.values()):
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            count += sum(len(records) for records in batch.values())
        elapsed = time.perf_counter() - started
        return count, elapsed, cpu_per_record(before, meter.read(), count)
    finally:
        await consumer.stop()


async def service_until_done(settings: Settings, ends: dict[tuple[str, int], int], meter: CpuMeter
                             ) -> tuple[float, dict[str, float | None], dict[str, int]]:
    """Seconds from the service's start until every input is consumed and every output published, the CPU
    seconds of each process over that window, and the relay's rounds by where their rows came from."""
    before, started = meter.read(), time.perf_counter()
    async with running(settings) as (processor, relay):
        store = processor.store
        while True:
            await asyncio.sleep(0.05)
            offsets = {(r["topic"], r["partition"]): r["next_offset"]
                       for r in await store.pool.fetch("SELECT * FROM consumed_offsets")}
            if all(offsets.get(tp, 0) >= end for tp, end in ends.items() if end) and \
                    await store.outbox_backlog() == 0:
                elapsed, after = time.perf_counter() - started, meter.read()
                return elapsed, {name: None if (start := before[name]) is None or (end := after[name]) is None
                                 else end - start for name in before}, dict(sorted(relay.rounds.items()))


async def run_async(events: int, seed: int, engine: str = "compiled") -> dict[str, Any]:
    run_id = secrets.token_hex(3)
    database = f"backstop_bench_{run_id}"
    settings = Settings(kafka_bootstrap=os.environ.get("BACKSTOP_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        topic_prefix=f"bench_{run_id}.", input_partitions=3, output_partitions=3, engine=engine)
    journal = journal_for(events, seed)
    server = await asyncpg.connect(SERVER_DSN)
    await server.execute(f'CREATE DATABASE "{database}"')
    scratch = tempfile.TemporaryDirectory()
    try:
        settings = settings.model_copy(update={
            "pg_dsn": SecretStr(await prepare_database(_with_database(SERVER_DSN, database))),
            "anchor_key_file": anchor_key_file(scratch.name)})
        ensure_topics(settings)
        await produce_file(settings, journal)
        ends = await end_offsets(settings, list(TopicNames(settings.topic_prefix).inputs))
        connection = await asyncpg.connect(settings.dsn())
        try:
            meter = await CpuMeter.find(connection, settings.kafka_bootstrap)
            records, raw_s, raw_cpu = await raw_consume(settings, ends, meter)
            inserts_before, wal_before = await pg_writes(connection)
            service_s, service_cpu_s, relay_rounds = await service_until_done(settings, ends, meter)
            await asyncio.sleep(1)  # the service's sessions ended: their statistics reach pg_stat_user_tables
            inserts_after, _ = await pg_writes(connection)
            wal_bytes = await connection.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)",
                                                  wal_before)
            applied = await connection.fetchval("SELECT count(*) FROM journal")
            published = await connection.fetchval(PUBLISHED_SQL)
        finally:
            await connection.close()
    finally:
        topics = TopicNames(settings.topic_prefix)
        admin.delete(settings.kafka_bootstrap, [*topics.inputs, *topics.outputs])
        await drop_database(server, database)
        await server.close()
        scratch.cleanup()
    service_rate, raw_rate = records / service_s, records / raw_s
    cpu_us = {name: None if seconds is None else round(seconds / records * 1e6, 1)
              for name, seconds in service_cpu_s.items()}
    rows = {table: inserts_after[table][0] - inserts_before.get(table, (0, 0))[0] for table in sorted(inserts_after)}
    changed = {table: inserts_after[table][1] - inserts_before.get(table, (0, 0))[1] for table in sorted(inserts_after)}
    profile = {
        "cpu_us_per_record": cpu_us,
        "cpu_us_per_record_total": round(sum(v for v in cpu_us.values() if v is not None), 1),
        "cpu_cores_busy": round(sum(v for v in service_cpu_s.values() if v is not None) / service_s, 2),
        "raw_consume_cpu_us_per_record": raw_cpu,
        "pg_rows_per_record": {table: round(count / records, 3) for table, count in rows.items() if count},
        "pg_rows_updated_or_deleted_per_record": {table: round(count / records, 3)
                                                  for table, count in changed.items() if count},
        "pg_wal_bytes_per_record": round(float(wal_bytes) / records),
        "relay_rounds": relay_rounds,
    }
    return {
        "name": "service",
        "input": {"records": records, "seed": seed, "events_applied": applied, "outputs_published": published,
                  "input_partitions": 3, "engine": engine},
        "figures": [
            {"figure": "service end to end (Kafka -> PostgreSQL -> Kafka)", "value": round(service_rate),
             "unit": "records/s", "baseline": "raw aiokafka consume", "baseline_value": round(raw_rate),
             "ratio": round(service_rate / raw_rate, 3)},
            {"figure": "service wall time", "value": round(service_s, 2), "unit": "s"},
            *cpu_figures(profile),
        ],
        "profile": profile,
    }


CPU_FIGURES = (("service_loop_thread", "the service's event loop thread (consumer, merge, commit encoding, relay)"),
               ("service_other_threads", "the service's other threads (the engine, offloaded)"),
               ("postgresql", "PostgreSQL (every server process)"),
               ("kafka_broker", "the Kafka broker"))


def cpu_figures(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """The profile as rows of the results table: CPU per input record of each process, then PostgreSQL's writes."""
    figures = [{"figure": f"CPU per input record: {label}", "value": value, "unit": "us"}
               for name, label in CPU_FIGURES if (value := profile["cpu_us_per_record"][name]) is not None]
    figures.append({"figure": "CPU per input record: all of the above", "value": profile["cpu_us_per_record_total"],
                    "unit": "us"})
    figures.append({"figure": "PostgreSQL rows inserted per input record",
                    "value": round(sum(profile["pg_rows_per_record"].values()), 2), "unit": "rows"})
    figures.append({"figure": "PostgreSQL rows updated or deleted per input record (projections, cursors)",
                    "value": round(sum(profile["pg_rows_updated_or_deleted_per_record"].values()), 2),
                    "unit": "rows"})
    figures.append({"figure": "PostgreSQL WAL per input record", "value": profile["pg_wal_bytes_per_record"],
                    "unit": "bytes"})
    return figures


def run(events: int, seed: int, engine: str = "compiled") -> dict[str, Any]:
    return asyncio.run(run_async(events, seed, engine))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--engine", choices=("compiled", "reference"), default="compiled")
    args = parser.parse_args()
    print(json.dumps(run(args.events, args.seed, args.engine), indent=2))


if __name__ == "__main__":
    main()
