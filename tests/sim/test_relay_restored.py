"""A relay started on a database behind its output topics (restored from a backup): the last record of an outbox
topic's partition is looked up by its record id, not by the outbox id it was published with, and waited for until
the processor writes it again (docs/operations.md, restore step 4). Run on the in-memory ports; the same on
PostgreSQL and Kafka: tests/integration/test_relay.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

from backstop.adapters.memory.broker import MemoryBroker, MemoryConsumer, MemoryPublisher
from backstop.adapters.memory.store import MemoryDatabase, MemoryStore
from backstop.pipeline.topics import TopicNames
from backstop.service.forked import Inline
from backstop.service.ledger_loop import LedgerProcessor
from backstop.service.ports import OUTBOX_HEADER, RECORD_ID_HEADER, Runtime
from backstop.service.relay import OutboxRelay
from backstop.settings import Settings

T = TypeVar("T")
TOPICS = TopicNames("t.")
FILLS = TOPICS.input("fill")


async def until(condition: Callable[[], bool], seconds: float = 30) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


def published(broker: MemoryBroker, topic: str) -> list[str]:
    return [dict(record.headers)[RECORD_ID_HEADER].decode() for record in broker.topics[topic][0]]


@asynccontextmanager
async def service(broker: MemoryBroker, missing_tail: Literal["wait", "republish"] = "wait",
                  ) -> AsyncIterator[tuple[LedgerProcessor, OutboxRelay, asyncio.Task[None]]]:
    """The ledger processor and the relay on an empty database (restored from a backup older than every record
    on the topics), the relay's task apart so that a test can see it end."""
    store = MemoryStore(MemoryDatabase())

    async def offload(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return func(*args, **kwargs)

    runtime = Runtime(consumer=lambda _: MemoryConsumer(broker), publisher=lambda _: MemoryPublisher(broker),
                      background=lambda kind, errors: Inline(kind, errors), offload=offload)
    settings = Settings(topic_prefix="t.", batch_max_wait_ms=5, adl_quantiles=False, relay_missing_tail=missing_tail)
    relay = OutboxRelay(settings, store, runtime)
    processor = LedgerProcessor(settings, store, runtime, on_commit=relay.wake)
    relay_task = asyncio.create_task(relay.run_forever())
    processor_task = asyncio.create_task(processor.run_forever())
    try:
        yield processor, relay, relay_task
    finally:
        processor.stop()
        relay.stop()
        relay.wake()
        processor_task.cancel()
        await asyncio.gather(relay_task, processor_task, return_exceptions=True)


def topics_with_a_lost_dead_letter() -> MemoryBroker:
    """The topics as a lost database left them: the dead letter of fills[0]@0 published with outbox id 7 (this
    database will number it 1), and the journal topic ending in an outbox-placed record (an upgrade's old copy)
    that no outbox will hold again. The input that made the dead letter is appended by each test when it wants
    the processor to write it again."""
    broker = MemoryBroker()
    for topic in (*TOPICS.inputs, *TOPICS.outputs):
        broker.create(topic, 1)
    broker.append(TOPICS.dead_letter, 0, f"{FILLS}:0".encode(), b"{}",
                  ((OUTBOX_HEADER, b"7"), (RECORD_ID_HEADER, f"dl-{FILLS}-0-0".encode())))
    broker.append(TOPICS.journal, 0, b"j", b"{}", ((OUTBOX_HEADER, b"3"), (RECORD_ID_HEADER, b"j-0")))
    return broker


async def waits_until_written_again() -> tuple[str | None, bool, list[str]]:
    broker = topics_with_a_lost_dead_letter()
    async with service(broker) as (_, relay, _task):
        await until(lambda: relay.waiting is not None or relay.healthy)
        waiting, healthy = relay.waiting, relay.healthy
        broker.append(FILLS, 0, None, b"{not json")  # the processor catches up ...
        broker.append(FILLS, 0, None, b"{not json either")  # ... and goes on past the point of loss
        await until(lambda: relay.healthy and len(broker.topics[TOPICS.dead_letter][0]) == 2)
        return waiting, healthy, published(broker, TOPICS.dead_letter)


def test_a_last_record_is_waited_for_then_passed_over_where_this_database_numbers_it() -> None:
    waiting, healthy, letters = asyncio.run(waits_until_written_again())
    assert waiting is not None and f"dl-{FILLS}-0-0" in waiting and f"{TOPICS.dead_letter}[0]" in waiting
    assert not healthy
    # written again at outbox id 1, passed over; the next one published once; the journal topic's old copy
    # (a table's topic) is not waited for
    assert letters == [f"dl-{FILLS}-0-0", f"dl-{FILLS}-0-1"]


async def stopped_while_waiting() -> tuple[str | None, str | None, bool]:
    broker = topics_with_a_lost_dead_letter()  # the input that would write it again never comes
    async with service(broker) as (_, relay, task):
        await until(lambda: relay.waiting is not None)
        waiting = relay.waiting
        relay.stop()
        relay.wake()
        await asyncio.wait_for(task, 5)  # not held by the wait
        return waiting, relay.waiting, relay.healthy


def test_a_relay_waiting_for_a_record_that_never_comes_stops_when_told() -> None:
    waiting, after, healthy = asyncio.run(stopped_while_waiting())
    assert waiting is not None and (after, healthy) == (None, False)


async def republished() -> list[str]:
    broker = topics_with_a_lost_dead_letter()
    async with service(broker, "republish") as (_, relay, _task):
        await until(lambda: relay.healthy)
        broker.append(FILLS, 0, None, b"{not json")  # written again after the relay started
        await until(lambda: relay.healthy and len(broker.topics[TOPICS.dead_letter][0]) == 2)
        assert relay.waiting is None
        return published(broker, TOPICS.dead_letter)


def test_republish_sends_a_partition_whose_last_record_is_missing_again_from_the_cursor() -> None:
    # the processor writes the dead letter again after the relay started: sent again, a duplicate by its id
    assert asyncio.run(republished()) == [f"dl-{FILLS}-0-0", f"dl-{FILLS}-0-0"]
