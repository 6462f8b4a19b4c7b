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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
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

# every record the relay published: the journal, fund-ledger, ADL event and posting rows and the outbox's
PUBLISHED_SQL = ("SELECT (SELECT count(*) FROM journal) + (SELECT count(*) FROM fund_ledger) + "
                 "(SELECT count(*) FROM adl_events) + (SELECT count(*) FROM postings) + (SELECT count(*) FROM outbox)")
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


async def raw_consume(settings: Settings, ends: dict[tuple[str, int], int]) -> tuple[int, float]:
    """The floor: a plain aiokafka consumer fetching every input record and doing nothing with it."""
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
        return count, time.perf_counter() - started
    finally:
        await consumer.stop()


async def service_until_done(settings: Settings, dsn: str, ends: dict[tuple[str, int], int]) -> float:
    started = time.perf_counter()
    async with running(settings) as (processor, _relay):
        store = processor.store
        while True:
            await asyncio.sleep(0.05)
            offsets = {(r["topic"], r["partition"]): r["next_offset"]
                       for r in await store.pool.fetch("SELECT * FROM consumed_offsets")}
            if all(offsets.get(tp, 0) >= end for tp, end in ends.items() if end) and \
                    await store.outbox_backlog() == 0:
                return time.perf_counter() - started


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
        records, raw_s = await raw_consume(settings, ends)
        service_s = await service_until_done(settings, settings.dsn(), ends)
        connection = await asyncpg.connect(settings.dsn())
        try:
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
    return {
        "name": "service",
        "input": {"records": records, "seed": seed, "events_applied": applied, "outputs_published": published,
                  "input_partitions": 3, "engine": engine},
        "figures": [
            {"figure": "service end to end (Kafka -> PostgreSQL -> Kafka)", "value": round(service_rate),
             "unit": "records/s", "baseline": "raw aiokafka consume", "baseline_value": round(raw_rate),
             "ratio": round(service_rate / raw_rate, 3)},
            {"figure": "service wall time", "value": round(service_s, 2), "unit": "s"},
        ],
    }


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
