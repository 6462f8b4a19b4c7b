"""Fixtures for tests against the real servers: Apache Kafka and PostgreSQL.

`scripts/test` starts both (deploy/local/kafka, deploy/local/postgres). Run alone, these tests need them
running; a server that cannot be reached FAILS the tests that need it, with the address and the command that
starts it. They never skip: a green run always means the servers were really exercised.

Isolation: each test session gets its own database (backstop_test_<hex>, migrated, dropped at the end) and
its own topic prefix (bt_<hex>.; topics and consumer groups under it are deleted at the end), so sessions can
run side by side against the same servers.

Environment:
  BACKSTOP_KAFKA_BOOTSTRAP   broker (default 127.0.0.1:9092)
  BACKSTOP_TEST_PG_DSN       a DSN whose role may CREATE DATABASE and CREATE ROLE: the tables' owner (default:
                             BACKSTOP_PG_OWNER_DSN, else postgresql://backstop@127.0.0.1:5432/backstop). The
                             service runs as the login role backstop_svc, which the fixtures create as
                             `backstop db migrate` does (service_harness.prepare_database).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

with warnings.catch_warnings():
    # kafka-python 3.0 loads its protocol schemas through importlib.resources' legacy API: 200 warnings of noise.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.admin import KafkaAdminClient, NewTopic

from service_harness import prepare_database

REPO = Path(__file__).resolve().parents[2]
SESSION_ID = secrets.token_hex(4)
KAFKA_BOOTSTRAP = os.environ.get("BACKSTOP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
PG_SERVER_DSN = (os.environ.get("BACKSTOP_TEST_PG_DSN") or os.environ.get("BACKSTOP_PG_OWNER_DSN")
                 or "postgresql://backstop@127.0.0.1:5432/backstop")
INTEGRATION_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test, marked or not."""
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def _announce(config: pytest.Config, line: str) -> None:
    """Print to the terminal even while output is captured (the names help to find leftovers)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line(line)


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    return host.strip("[]"), int(port)


def _tcp_error(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as error:
        return str(error) or type(error).__name__


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _redacted(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return dsn


# ------------------------------------------------------------------------------------------------ Kafka


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker's bootstrap address, after checking that a broker answers there."""
    first = KAFKA_BOOTSTRAP.split(",")[0].strip()
    host, port = _host_port(first, 9092)
    start = "deploy/local/kafka start" if port == 9092 else f"BACKSTOP_KAFKA_PORT={port} deploy/local/kafka start"
    how = (f"Start it with `{start}` (or run the whole suite with `scripts/test`, which starts and stops it), "
           "or point BACKSTOP_KAFKA_BOOTSTRAP at a running broker.")
    error = _tcp_error(host, port)
    if error is not None:
        pytest.fail(f"Kafka broker not reachable at {host}:{port} (BACKSTOP_KAFKA_BOOTSTRAP={KAFKA_BOOTSTRAP}): "
                    f"{error}. {how}", pytrace=False)
    problem = None
    try:
        admin = KafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, client_id="backstop-tests-probe",
                                 request_timeout_ms=10_000)
        admin.list_topics()
        admin.close()
    except Exception as exc:  # any failure here means "not a usable broker"
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        pytest.fail(f"something listens on {host}:{port}, but it does not answer as a Kafka broker ({problem}). "
                    f"{how}", pytrace=False)
    return KAFKA_BOOTSTRAP


@pytest.fixture(scope="session")
def topic_prefix(request: pytest.FixtureRequest) -> str:
    prefix = f"bt_{SESSION_ID}."
    _announce(request.config, f"integration: Kafka topics and groups of this session start with {prefix!r}")
    return prefix


@pytest.fixture(scope="session")
def kafka_admin(request: pytest.FixtureRequest, kafka_bootstrap: str,
                topic_prefix: str) -> Iterator[KafkaAdminClient]:
    """An admin client; at the end of the session every topic and group under the prefix is deleted."""
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id=f"{topic_prefix}admin",
                             request_timeout_ms=30_000)
    try:
        yield admin
    finally:
        admin.close()
        _delete_session_topics(request.config, kafka_bootstrap, topic_prefix)


def _delete_session_topics(config: pytest.Config, bootstrap: str, prefix: str) -> None:
    """With a client of its own (the session's has lived through broker restarts), and a failure is said, not
    swallowed: sessions here once left ~1,800 topics behind on the local broker unnoticed."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"{prefix}cleanup", request_timeout_ms=30_000)
    except Exception as error:
        _announce(config, f"integration: could not delete the topics under {prefix!r}: {error!r}")
        return
    try:
        groups = [g for g in (_group_id(g) for g in admin.list_groups()) if g.startswith(prefix)]
        if groups:
            admin.delete_groups(groups)
        doomed = [t for t in admin.list_topics() if t.startswith(prefix)]
        if doomed:
            admin.delete_topics(doomed, timeout_ms=30_000)
    except Exception as error:
        _announce(config, f"integration: could not delete every topic and group under {prefix!r}: {error!r}")
    finally:
        admin.close()


def _group_id(group: object) -> str:
    if isinstance(group, dict):
        return str(group.get("group_id") or group.get("group") or "")
    if isinstance(group, tuple | list):
        return str(group[0])
    return str(getattr(group, "group_id", group))


@pytest.fixture(scope="session")
def make_topics(kafka_admin: KafkaAdminClient, topic_prefix: str) -> Callable[..., list[str]]:
    """make_topics("in", "out", partitions=3) creates <prefix>in, <prefix>out and waits until they are usable."""

    def create(*names: str, partitions: int = 1) -> list[str]:
        full = [topic_prefix + name for name in names]
        kafka_admin.create_topics([NewTopic(name, partitions, 1) for name in full], timeout_ms=30_000,
                                  wait_for_metadata=True)
        return full

    return create


# ------------------------------------------------------------------------------------------------ PostgreSQL


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server_dsn() -> str:
    """A DSN on the PostgreSQL server whose role may create databases, after checking it answers."""
    parts = urlsplit(PG_SERVER_DSN)
    port = parts.port or 5432
    where = f"{parts.hostname or '127.0.0.1'}:{port}"
    start = "deploy/local/postgres start" if port == 5432 else f"BACKSTOP_PG_PORT={port} deploy/local/postgres start"
    how = (f"Start it with `{start}` (or run the whole suite with `scripts/test`, which starts and stops it), "
           "or point BACKSTOP_TEST_PG_DSN at a server whose role may CREATE DATABASE.")
    problem = None
    try:
        connection = await asyncpg.connect(PG_SERVER_DSN, timeout=5)
        await connection.close()
    except (OSError, TimeoutError) as error:
        problem = f"PostgreSQL not reachable at {where} ({_redacted(PG_SERVER_DSN)}): {error}."
    except asyncpg.PostgresError as error:
        problem = (f"PostgreSQL at {where} refused the connection ({_redacted(PG_SERVER_DSN)}): "
                   f"{type(error).__name__}: {error}.")
    if problem is not None:
        pytest.fail(f"{problem} {how}", pytrace=False)
    return PG_SERVER_DSN


class Databases:
    """Creates throwaway databases on the server and drops them all at the end."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.created: list[str] = []

    async def create(self, suffix: str = "") -> str:
        name = f"backstop_test_{SESSION_ID}{suffix}"
        connection = await asyncpg.connect(self.server_dsn, timeout=10)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        self.created.append(name)
        return with_database(self.server_dsn, name)

    async def drop(self, dsn: str) -> None:
        """One database created here, dropped now (a test that makes many keeps the server's data small: a crash
        recovery fsyncs every file of it)."""
        name = urlsplit(dsn).path[1:]
        connection = await asyncpg.connect(self.server_dsn, timeout=10)
        try:
            await _drop(connection, name)
        finally:
            await connection.close()
        self.created.remove(name)

    async def drop_all(self) -> None:
        connection = await asyncpg.connect(self.server_dsn, timeout=10)
        try:
            for name in reversed(self.created):
                await _drop(connection, name)
        finally:
            await connection.close()


async def _drop(connection: asyncpg.Connection, name: str) -> None:
    """DROP ... WITH (FORCE) ends our own sessions, not an autovacuum worker's: wait for that one to finish."""
    for _ in range(30):
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
            await asyncio.sleep(1)
    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def databases(pg_server_dsn: str) -> AsyncIterator[Databases]:
    registry = Databases(pg_server_dsn)
    try:
        yield registry
    finally:
        await registry.drop_all()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_dsn(request: pytest.FixtureRequest, databases: Databases) -> str:
    """The session's database, with every migration applied and the service's login role."""
    dsn = await databases.create()
    _announce(request.config, f"integration: PostgreSQL database of this session: {urlsplit(dsn).path[1:]} "
                              f"(dropped at the end)")
    await prepare_database(dsn)
    return dsn


@pytest_asyncio.fixture(loop_scope="session")
async def empty_database(databases: Databases) -> str:
    """A fresh database with nothing in it (not even the migrations), dropped at the end of the session."""
    return await databases.create(f"_{secrets.token_hex(3)}")


@pytest_asyncio.fixture(loop_scope="session")
async def migrated_database(databases: Databases) -> str:
    """A fresh database with every migration applied and the service's login role, for tests that write rows others
    must not see."""
    dsn = await databases.create(f"_{secrets.token_hex(3)}")
    await prepare_database(dsn)
    return dsn
