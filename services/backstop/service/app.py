"""The faust-streaming app that hosts the service: worker lifecycle, web views, and the two loops.

The money path does not go through faust streams (about 7k records/s, and faust's recovery would override
offsets kept in PostgreSQL): the ledger processor owns a plain aiokafka consumer, and faust runs it as a task,
beside the outbox relay, with /health and /metrics as web views.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import faust
from faust.app.base import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backstop.adapters.kafka.consumer import KafkaConsumer
from backstop.adapters.kafka.publisher import KafkaPublisher
from backstop.adapters.kafka.tools import ensure_topics
from backstop.adapters.postgres.roles import rewrite_powers
from backstop.adapters.postgres.store import Store
from backstop.collector import raise_young_threshold
from backstop.core.errors import InvariantViolation
from backstop.engines import runs_compiled
from backstop.service import logs, metrics
from backstop.service.forked import Background
from backstop.service.ledger_loop import LedgerProcessor
from backstop.service.ports import Runtime
from backstop.service.relay import OutboxRelay
from backstop.settings import Settings

log = logging.getLogger("backstop.service")


def kafka_runtime() -> Runtime:
    """The real loops: aiokafka, forked children for whole-state work, threads for the engine."""
    return Runtime(consumer=KafkaConsumer, publisher=KafkaPublisher, background=Background, offload=asyncio.to_thread)


class ServeRefused(Exception):
    """The service will not start; the message says why, in one line."""


class ServeStopped(Exception):
    """The service stopped on an error it does not retry (an InvariantViolation); the message says which, in one
    line (the log holds its traceback)."""


NO_ANCHOR_KEY = ("BACKSTOP_ANCHOR_KEY_FILE is not set: the service signs a checkpoint of the stored history with "
                 "every batch, with a key the database never sees (docs/operations-security.md); make one with "
                 "`openssl rand -hex 32 > anchor.key` and keep it away from the database")


async def preflight(settings: Settings, *, require_anchor: bool = True) -> int:
    """Before anything starts: the service's role cannot rewrite the record, and the journal's head is signed with
    the anchor key (or adopted). Raises ServeRefused; returns the seq BACKSTOP_ANCHOR_ADOPT adopts, or 0."""
    anchor = settings.anchor()
    if anchor is None and require_anchor:
        raise ServeRefused(NO_ANCHOR_KEY)
    try:
        store = await Store.open(settings.dsn(), max_size=1, anchor=anchor)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        raise ServeRefused(f"cannot connect to PostgreSQL with BACKSTOP_PG_DSN: {type(error).__name__}: {error}") \
            from None
    try:
        async with store.pool.acquire() as connection:
            problem = await rewrite_powers(connection, await connection.fetchval("SELECT current_user"))
        if problem:
            raise ServeRefused(f"refusing to run as this role (BACKSTOP_PG_DSN): {problem}; run as the service's "
                               f"login role, which `backstop db migrate` creates (docs/operations-security.md)")
        return await store.check_anchor()
    except InvariantViolation as error:
        raise ServeRefused(str(error)) from None
    finally:
        await store.close()


def web_address_free(settings: Settings) -> None:
    """/health and /metrics can listen where the settings say (else ServeRefused, in one line, rather than the web
    server's traceback once everything else has started)."""
    try:
        family = socket.getaddrinfo(settings.web_host, settings.web_port, type=socket.SOCK_STREAM)[0][0]
        socket.create_server((settings.web_host, settings.web_port), family=family).close()
    except OSError as error:  # gaierror's errno is its own (negative): its strerror says it
        said = os.strerror(error.errno) if error.errno and error.errno > 0 else error.strerror or str(error)
        raise ServeRefused(f"cannot listen on {settings.web_host}:{settings.web_port} (BACKSTOP_WEB_HOST, "
                           f"BACKSTOP_WEB_PORT) for /health and /metrics: {said}") from None


def topics_ready(settings: Settings, *, timeout_ms: int = 30_000) -> list[str]:
    """The contract's topics exist (the ones created where missing are returned); a broker that cannot be reached
    within timeout_ms, or refuses to create them, is ServeRefused, in one line, rather than a traceback (the
    orchestrator restarts the service). kafka-python's own log of its retries is kept out of the way meanwhile."""
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    kafka_log = logging.getLogger("kafka")
    kafka_log.propagate = False
    try:
        return ensure_topics(settings, timeout_ms=timeout_ms)
    except (KafkaError, ValueError) as error:  # ValueError: a bootstrap address kafka-python cannot parse
        said = " ".join(str(error).split())  # kafka-python's errors start with their class's name; not all do
        said = said if said.startswith(type(error).__name__) else f"{type(error).__name__}: {said}"
        where = f"Kafka at {settings.kafka_bootstrap} (BACKSTOP_KAFKA_BOOTSTRAP)"
        if isinstance(error, KafkaConnectionError | KafkaTimeoutError):
            raise ServeRefused(f"cannot reach {where} within {timeout_ms / 1000:g} s: {said}") from None
        raise ServeRefused(f"cannot create the topics on {where}: {said}") from None
    finally:
        kafka_log.propagate = True


class _LifecycleOnly(BootStrategy):
    """faust hosts the worker lifecycle, the tasks and the web views; it joins no consumer group and owns no
    producer, so a restarted worker never waits for a killed one's group session to expire."""

    enable_kafka_consumer = False
    enable_kafka_producer = False


class ServiceApp(faust.App):
    BootStrategy = _LifecycleOnly


async def _both_until_one_stops(processor: LedgerProcessor, relay: OutboxRelay) -> None:
    """Both loops; when one stops (an InvariantViolation: a broken rule is never retried), the other is stopped and
    awaited before the store closes under it, and the first one's error is raised."""
    tasks = [asyncio.create_task(processor.run_forever()), asyncio.create_task(relay.run_forever())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        processor.stop()
        relay.stop()
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome


def faust_datadir(settings: Settings) -> Path:
    """Where faust makes <datadir>/v1/tables at start: the tables are in memory, so nothing is kept there; under the
    temporary directory, one per user, rather than in the working directory. ServeRefused if it cannot be made."""
    datadir = Path(tempfile.gettempdir()) / f"backstop-faust-{os.getuid()}" / f"{settings.topic_prefix}service"
    try:
        datadir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ServeRefused(f"cannot make faust's data directory {datadir}: {error.strerror or error}") from None
    return datadir


def create_app(settings: Settings, datadir: Path) -> faust.App:
    app = ServiceApp(
        f"{settings.topic_prefix}service", broker=f"kafka://{settings.kafka_bootstrap}", store="memory://",
        autodiscover=False,
        # web_bind is the address the server listens on (faust's default: every interface); web_host only names it
        web_bind=settings.web_host, web_host=settings.web_host, web_port=settings.web_port, web_in_thread=False,
        topic_partitions=1, topic_replication_factor=settings.replication_factor, broker_credentials=None,
        consumer_auto_offset_reset="earliest", datadir=datadir)
    state: dict[str, Any] = {}

    @app.task
    async def ledger_and_relay() -> None:
        store = await Store.open(settings.dsn(), max_size=6, anchor=settings.anchor(),
                                 relay_in_rust=runs_compiled(settings.engine))
        runtime = kafka_runtime()
        relay = OutboxRelay(settings, store, runtime)
        processor = LedgerProcessor(settings, store, runtime, on_commit=relay.wake)
        state.update(store=store, processor=processor, relay=relay)
        try:
            await _both_until_one_stops(processor, relay)
        finally:
            await store.close()

    @app.page("/health")
    async def health(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        processor: LedgerProcessor | None = state.get("processor")
        relay: OutboxRelay | None = state.get("relay")
        # each loop does its work or waits, healthy, as a standby for the lock another instance holds (the two
        # locks can be held by two instances: each is then ready with one loop working and one standing by)
        ledger_ok = bool(processor and (processor.progress.ready or processor.standby))
        relay_ok = bool(relay and (relay.healthy or relay.standby))
        ready = ledger_ok and relay_ok
        body = {"status": "ok" if ready else "starting", "ledger_ready": bool(processor and processor.progress.ready),
                "relay_ready": bool(relay and relay.healthy), "ledger_standby": bool(processor and processor.standby),
                "relay_standby": bool(relay and relay.standby), "relay_waiting": relay.waiting if relay else None,
                "seq": processor.progress.seq if processor else 0,
                "last_error": processor.progress.last_error if processor else None,
                "projections_refreshed_seq": processor.progress.refreshed_seq if processor else 0,
                "projections_due_seq": processor.progress.refresh_due_seq if processor else 0,
                "snapshot_seq": processor.progress.snapshot_seq if processor else 0,
                "background_errors": processor.progress.background_errors if processor else {}}
        return web.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    async def prometheus(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.bytes(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app


def serve(settings: Settings) -> None:
    """Runs until stopped; raises ServeRefused (or AnchorKeyError) before starting anything, ServeStopped after."""
    loop = asyncio.new_event_loop()  # not asyncio.run: it leaves no current loop, and faust's worker wants one
    try:
        adopted = loop.run_until_complete(preflight(settings))
    finally:
        loop.close()
    web_address_free(settings)
    created = topics_ready(settings)
    datadir = faust_datadir(settings)
    logs.configure(logging.INFO)  # from here on, JSON lines; a refusal above is one plain line
    if created:
        log.info("created topics: %s", ", ".join(created))
    if adopted:  # a checkpoint follows a batch: until one lands, a start without the setting is refused again
        log.warning("BACKSTOP_ANCHOR_ADOPT: the journal up to seq %d has the digest given; the adoption is recorded "
                    "with the checkpoint of the next batch applied: keep the setting until then", adopted)
    app = create_app(settings, datadir)
    # quiet, and no spinner: faust would print a banner and terminal codes beside the JSON lines
    worker = faust.Worker(app, loglevel="INFO", redirect_stdouts=False, override_logging=False, quiet=True)
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit:
        reason = worker.crash_reason
        if reason is None:
            raise
        said = " ".join(str(reason).split())
        raise ServeStopped(f"stopped: {type(reason).__name__}: {said}") from None


@contextlib.asynccontextmanager
async def running(settings: Settings, runtime: Runtime | None = None
                  ) -> AsyncIterator[tuple[LedgerProcessor, OutboxRelay]]:
    """The ledger processor and the relay as tasks of the current event loop, without the faust host (tests and
    benchmarks); stopped and awaited on exit. Refuses, as `serve` does, a role that could rewrite the record; an
    anchor key is optional here."""
    await preflight(settings, require_anchor=False)
    raise_young_threshold()  # as `backstop serve` runs (backstop.collector)
    await asyncio.to_thread(ensure_topics, settings)
    store = await Store.open(settings.dsn(), max_size=6, anchor=settings.anchor(),
                             relay_in_rust=runs_compiled(settings.engine))
    runtime = runtime or kafka_runtime()
    relay = OutboxRelay(settings, store, runtime)
    processor = LedgerProcessor(settings, store, runtime, on_commit=relay.wake)
    tasks = [asyncio.create_task(processor.run_forever()), asyncio.create_task(relay.run_forever())]
    try:
        yield processor, relay
    finally:
        processor.stop()
        relay.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
