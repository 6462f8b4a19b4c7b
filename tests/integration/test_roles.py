"""Least privilege in PostgreSQL itself: the service's role appends to the record and cannot rewrite it, the
auditor's role only reads, and the service runs under its role."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from service_harness import in_process, settings_for, stored, wait_caught_up

from backstop.entrypoints.kafka_tools import produce_file

REPO = Path(__file__).resolve().parents[2]


def as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.split("@")[-1]
    return urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, parts.fragment))


@pytest.fixture
async def roles(migrated_database: str) -> AsyncIterator[tuple[str, str]]:
    """Login roles in the service's and the auditor's group roles (trust auth on the local test server), dropped
    after the test (roles belong to the whole server, not to the test's database)."""
    suffix = secrets.token_hex(3)
    service, auditor = f"bt_svc_{suffix}", f"bt_aud_{suffix}"
    connection = await asyncpg.connect(migrated_database)
    try:
        await connection.execute(f"CREATE ROLE {service} LOGIN IN ROLE backstop_service")
        await connection.execute(f"CREATE ROLE {auditor} LOGIN IN ROLE backstop_auditor")
        yield as_role(migrated_database, service), as_role(migrated_database, auditor)
    finally:
        for role in (service, auditor):
            await connection.execute(f"DROP ROLE IF EXISTS {role}")
        await connection.close()


async def test_the_service_runs_under_its_role_and_cannot_rewrite_the_record(
        roles: tuple[str, str], kafka_bootstrap: str, topic_prefix: str) -> None:
    service_dsn, auditor_dsn = roles
    settings = settings_for(kafka_bootstrap, service_dsn, f"{topic_prefix}roles{secrets.token_hex(2)}.")
    async with in_process(settings):
        await produce_file(settings, REPO / "examples" / "06-bad-debt.jsonl")
        await wait_caught_up(service_dsn, applied=14)
    assert len((await stored(service_dsn))["fund_ledger"]) == 2

    service = await asyncpg.connect(service_dsn)
    try:
        for statement in ("UPDATE fund_ledger SET amount = 0", "DELETE FROM fund_ledger", "TRUNCATE fund_ledger",
                          "DELETE FROM journal", "UPDATE adl_events SET qty = 0", "UPDATE outbox SET payload = ''",
                          "DELETE FROM outbox", "DELETE FROM relay_cursor",
                          "ALTER TABLE fund_ledger DISABLE TRIGGER USER", "DROP TABLE fund_ledger"):
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await service.execute(statement)
    finally:
        await service.close()

    auditor = await asyncpg.connect(auditor_dsn)
    try:
        assert await auditor.fetchval("SELECT count(*) FROM fund_ledger") == 2
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await auditor.execute("INSERT INTO findings (id, seq, ts, kind, details) VALUES ('x', 1, 1, 'x', '{}')")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await auditor.execute("UPDATE relay_cursor SET published_up_to = 0")
    finally:
        await auditor.close()
