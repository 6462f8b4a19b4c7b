"""After a restart the service's next snapshot waits from the snapshot it was rebuilt from, not from the journal's
head: a service restarting more often than the wait would otherwise never take one again (docs/service.md,
"Whole-state work off the batches' path"). Run on the in-memory ports."""

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


async def restarted() -> tuple[int, int, int]:
    """Five funds with a snapshot every 2 events, then a restart: (the stored snapshot's seq, where the new run's
    snapshot cadence waits from, the head it rebuilt)."""
    broker = MemoryBroker()
    for topic in (*TOPICS.inputs, *TOPICS.outputs):
        broker.create(topic, 1)
    database = MemoryDatabase()

    async def offload(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return func(*args, **kwargs)

    runtime = Runtime(consumer=lambda _: MemoryConsumer(broker), publisher=lambda _: MemoryPublisher(broker),
                      background=lambda kind, errors: Inline(kind, errors), offload=offload)
    settings = Settings(topic_prefix="t.", batch_max_wait_ms=5, batch_max_records=1, adl_quantiles=False,
                        snapshot_every_events=2, snapshot_events_per_position=0)
    first = LedgerProcessor(settings, MemoryStore(database), runtime)
    task = asyncio.create_task(first.run_forever())
    try:
        await until(lambda: first.progress.ready)
        for number in range(5):
            broker.append(TOPICS.input("fund"), 0, f"F{number}".encode(), fund(number))
        await until(lambda: first.progress.seq == 5 and first.progress.snapshot_seq == 4)
    finally:
        first.stop()
        await task
    second = LedgerProcessor(settings.model_copy(update={"snapshot_events_per_position": 4}), MemoryStore(database),
                             runtime)
    task = asyncio.create_task(second.run_forever())
    try:
        await until(lambda: second.progress.ready)
        run = second.current
        assert run is not None
        # the new run rewrote every projection row at start: /health says they are settled at its head
        assert second.progress.refresh_due_seq == second.progress.refreshed_seq == 5
        return first.progress.snapshot_seq, run.snapshot_cadence.last_seq, run.engine.last_seq
    finally:
        second.stop()
        await task


def test_after_a_restart_the_next_snapshot_waits_from_the_one_the_engine_was_rebuilt_from() -> None:
    assert asyncio.run(restarted()) == (4, 4, 5)
