"""Least privilege in PostgreSQL itself: `backstop db migrate` creates the service's login role, the service runs as
it (every service test does: service_harness.settings_for) and it cannot rewrite the record, `serve` refuses the
owner, and the auditor's role only reads."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from service_harness import ANCHOR_KEY_FILE, SERVICE_ROLE, as_role, in_process, settings_for, stored, wait_caught_up

from backstop.adapters.kafka.tools import produce_file
from backstop.service.app import ServeRefused

REPO = Path(__file__).resolve().parents[2]
BACKSTOP = Path(sys.executable).parent / "backstop"


async def _run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(BACKSTOP), *args, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _drop_role(dsn: str, role: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP ROLE IF EXISTS {role}")
    finally:
        await connection.close()


@pytest.fixture
async def auditor(migrated_database: str) -> AsyncIterator[str]:
    """A login role in the auditor's group role (trust auth on the local test server), dropped after the test
    (roles belong to the whole server, not to the test's database)."""
    role = f"bt_aud_{secrets.token_hex(3)}"
    connection = await asyncpg.connect(migrated_database)
    try:
        await connection.execute(f"CREATE ROLE {role} LOGIN IN ROLE backstop_auditor")
        yield as_role(migrated_database, role)
    finally:
        await connection.execute(f"DROP ROLE IF EXISTS {role}")
        await connection.close()


async def test_db_migrate_creates_the_service_login_role_once(empty_database: str) -> None:
    role = f"bt_svc_{secrets.token_hex(3)}"
    service_dsn = as_role(empty_database, role).replace(f"{role}@", f"{role}:a-Secret_{secrets.token_hex(4)}@")
    env = {"BACKSTOP_PG_DSN": service_dsn, "BACKSTOP_PG_OWNER_DSN": empty_database}
    try:
        code, out, err = await _run("db", "migrate", env=env)
        assert code == 0, err
        assert out.splitlines()[-1] == f"service login role {role}: created, member of backstop_service, password set"
        code, out, err = await _run("db", "migrate", env=env)  # again: nothing to apply, the role brought in line
        assert code == 0, err
        assert "(0 migration(s) applied now)" in out
        assert out.splitlines()[-1] == f"service login role {role}: exists, member of backstop_service, password set"

        connection = await asyncpg.connect(empty_database)
        try:
            row = await connection.fetchrow(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, pg_has_role(rolname, 'backstop_service', "
                "'MEMBER') AS in_group, pg_has_role(rolname, current_user, 'MEMBER') AS is_owner "
                "FROM pg_roles WHERE rolname = $1", role)
        finally:
            await connection.close()
        assert dict(row) == {"rolcanlogin": True, "rolsuper": False, "rolcreaterole": False, "rolcreatedb": False,
                             "in_group": True, "is_owner": False}
        service = await asyncpg.connect(as_role(empty_database, role))  # trust auth here: the role can log in
        try:
            assert await service.fetchval("SELECT count(*) FROM checkpoints") == 0
        finally:
            await service.close()
    finally:
        await _drop_role(empty_database, role)


def owner_of(dsn: str) -> str:
    return str(urlsplit(dsn).username)


async def test_db_migrate_refuses_a_service_dsn_that_names_the_owner(empty_database: str) -> None:
    code, _, err = await _run("db", "migrate", env={"BACKSTOP_PG_DSN": empty_database,
                                                    "BACKSTOP_PG_OWNER_DSN": empty_database})
    assert code == 1
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"names {owner_of(empty_database)}, the role migrations run as" in err, err


async def test_the_service_role_cannot_rewrite_the_record(kafka_bootstrap: str, topic_prefix: str,
                                                          migrated_database: str, auditor: str) -> None:
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}roles{secrets.token_hex(2)}.")
    assert settings.dsn() == as_role(migrated_database, SERVICE_ROLE)
    async with in_process(settings):
        await produce_file(settings, REPO / "examples" / "06-bad-debt.jsonl")
        await wait_caught_up(migrated_database, applied=14)
    assert len((await stored(migrated_database))["fund_ledger"]) == 2

    service = await asyncpg.connect(settings.dsn())
    try:
        assert await service.fetchval("SELECT current_user") == SERVICE_ROLE
        for statement in (
                # switch the append-only triggers off, or the function behind them
                "ALTER TABLE fund_ledger DISABLE TRIGGER fund_ledger_append_only",
                "ALTER TABLE fund_ledger DISABLE TRIGGER USER", "ALTER TABLE journal DISABLE TRIGGER ALL",
                "ALTER TABLE checkpoints DISABLE TRIGGER USER", "DROP TRIGGER adl_events_append_only ON adl_events",
                "CREATE OR REPLACE FUNCTION backstop_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RETURN NEW; END $$",
                "SET session_replication_role = replica",  # which would skip every trigger
                # rewrite, remove
                "UPDATE fund_ledger SET amount = 0", "DELETE FROM fund_ledger WHERE position = 1",
                "TRUNCATE fund_ledger", "UPDATE journal SET payload = '{}'", "DELETE FROM journal",
                "TRUNCATE journal", "UPDATE adl_events SET qty = 0", "UPDATE checkpoints SET mac = ''",
                "DELETE FROM checkpoints", "TRUNCATE checkpoints", "UPDATE outbox SET payload = ''",
                "DELETE FROM outbox", "DELETE FROM relay_cursor", "DELETE FROM relay_sources",
                "DELETE FROM input_topics", "TRUNCATE input_topics",
                # alter, drop, become the owner
                "ALTER TABLE fund_ledger ADD COLUMN note text", "ALTER TABLE fund_ledger RENAME TO fund_ledger_old",
                f"ALTER TABLE fund_ledger OWNER TO {SERVICE_ROLE}", "DROP TABLE fund_ledger",
                "CREATE RULE keep AS ON UPDATE TO fund_ledger DO INSTEAD NOTHING",
                f"SET ROLE {owner_of(migrated_database)}", f"GRANT {owner_of(migrated_database)} TO {SERVICE_ROLE}"):
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as refused:
                await service.execute(statement)
            # refused for want of a privilege, not by a trigger the owner could switch off
            assert "append-only" not in str(refused.value), statement
    finally:
        await service.close()

    reader = await asyncpg.connect(auditor)
    try:
        assert await reader.fetchval("SELECT count(*) FROM fund_ledger") == 2
        assert await reader.fetchval("SELECT count(*) FROM checkpoints") >= 1
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await reader.execute("INSERT INTO findings (id, seq, ts, kind, details) VALUES ('x', 1, 1, 'x', '{}')")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await reader.execute("UPDATE relay_cursor SET published_up_to = 0")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await reader.execute("UPDATE relay_sources SET published_up_to = 0")
    finally:
        await reader.close()


async def test_serve_refuses_the_owner_and_a_missing_anchor_key(kafka_bootstrap: str, topic_prefix: str,
                                                                migrated_database: str) -> None:
    env = {"BACKSTOP_KAFKA_BOOTSTRAP": kafka_bootstrap, "BACKSTOP_TOPIC_PREFIX": f"{topic_prefix}refused.",
           "BACKSTOP_PG_DSN": migrated_database, "BACKSTOP_ANCHOR_KEY_FILE": str(ANCHOR_KEY_FILE)}
    code, _, err = await _run("serve", env=env)
    assert code == 2
    owner = owner_of(migrated_database)
    assert err.startswith(f"backstop serve: refusing to run as this role (BACKSTOP_PG_DSN): {owner} owns (or may "
                          f"act as the owner of) "), err
    assert len(err.splitlines()) == 1

    del env["BACKSTOP_ANCHOR_KEY_FILE"]
    code, _, err = await _run("serve", env={**env, "BACKSTOP_PG_DSN": as_role(migrated_database, SERVICE_ROLE)})
    assert code == 2
    assert err.startswith("backstop serve: BACKSTOP_ANCHOR_KEY_FILE is not set"), err
    assert len(err.splitlines()) == 1

    as_owner = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}refused.", role=owner)
    with pytest.raises(ServeRefused, match=f"{owner} owns"):
        async with in_process(as_owner):
            pass
