"""Input topics deleted and created again, on the in-memory ports: the processor stores each input topic's id when
it first reads it; a topic created again after records of it were stored holds it (InputGap) until told to skip,
one created again before any was stored is simply read from its start (docs/operations.md, "Input deleted before it
was read"). tests/integration/test_topic_changes.py runs the first case on real Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from test_batch_closing import TOPICS, fund, until

from backstop.adapters.memory.broker import MemoryBroker, MemoryConsumer, MemoryPublisher
from backstop.adapters.memory.store import MemoryDatabase, MemoryStore
from backstop.service.forked import Inline
from backstop.service.ledger_loop import LedgerProcessor
from backstop.service.ports import Runtime
from backstop.settings import Settings

T = TypeVar("T")
FUNDS = TOPICS.input("fund")


async def _offload(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    return func(*args, **kwargs)


async def run_until(broker: MemoryBroker, database: MemoryDatabase, condition: Callable[[LedgerProcessor], bool],
                    **settings: Any) -> LedgerProcessor:
    runtime = Runtime(consumer=lambda _: MemoryConsumer(broker), publisher=lambda _: MemoryPublisher(broker),
                      background=lambda kind, errors: Inline(kind, errors), offload=_offload)
    processor = LedgerProcessor(Settings(topic_prefix="t.", batch_max_wait_ms=5, adl_quantiles=False, **settings),
                                MemoryStore(database), runtime)
    task = asyncio.create_task(processor.run_forever())
    try:
        await until(lambda: condition(processor))
    finally:
        processor.stop()
        await task
    return processor


def fresh() -> tuple[MemoryBroker, MemoryDatabase]:
    broker = MemoryBroker()
    for topic in (*TOPICS.inputs, *TOPICS.outputs):
        broker.create(topic, 1)
    return broker, MemoryDatabase()


async def created_again_after_records_were_stored() -> tuple[str | None, str | None, int]:
    broker, database = fresh()
    broker.append(FUNDS, 0, b"F0", fund(0))
    await run_until(broker, database, lambda p: p.progress.seq == 1)
    first_id = database.input_topics[FUNDS]
    broker.delete(FUNDS)
    broker.create(FUNDS, 1)
    for number in (1, 2):
        broker.append(FUNDS, 0, f"F{number}".encode(), fund(number))
    held = await run_until(broker, database, lambda p: p.progress.last_error is not None)
    assert not held.progress.ready and database.input_topics[FUNDS] == first_id  # nothing changed while held
    skipped = await run_until(broker, database, lambda p: p.progress.seq == 2, input_gap="skip")
    return held.progress.last_error, skipped.progress.last_error, len(database.journal)


def test_a_topic_created_again_after_records_were_stored_holds_until_told_to_skip() -> None:
    held, skipped, journal = asyncio.run(created_again_after_records_were_stored())
    assert held is not None and held.startswith(f"InputGap: input topic {FUNDS} was deleted and created again")
    assert held.endswith("(next offsets: [0] 1); set BACKSTOP_INPUT_GAP=skip to read the new topic on from those "
                         "positions, without its records below them"), held
    assert skipped is None and journal == 2  # F0, then F2 (offset 1 of the new topic); F1 (its offset 0) is not read


async def created_again_before_any_record_was_stored() -> tuple[str | None, int, bool]:
    broker, database = fresh()
    await run_until(broker, database, lambda p: p.progress.ready)
    first_id = database.input_topics[FUNDS]
    broker.delete(FUNDS)
    broker.create(FUNDS, 1)
    broker.append(FUNDS, 0, b"F0", fund(0))
    again = await run_until(broker, database, lambda p: p.progress.seq == 1)
    return again.progress.last_error, len(database.journal), database.input_topics[FUNDS] != first_id


def test_a_topic_created_again_before_any_record_was_stored_is_read_from_its_start() -> None:
    assert asyncio.run(created_again_before_any_record_was_stored()) == (None, 1, True)
