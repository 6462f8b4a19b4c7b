"""A relay that cannot publish (Kafka refuses the topic, or does not answer) while rows wait: /health says it is not
ready and backstop_outbox_backlog is read from the store, as no round sets it (docs/operations.md, the
BackstopOutboxBacklog alert). Run on the in-memory ports, the relay's send held."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import pytest

from backstop.adapters.memory.broker import MemoryBroker, MemoryConsumer, MemoryPublisher
from backstop.adapters.memory.store import MemoryDatabase, MemoryStore
from backstop.pipeline.topics import TopicNames
from backstop.service import metrics, relay
from backstop.service.forked import Inline
from backstop.service.ledger_loop import LedgerProcessor
from backstop.service.ports import Runtime
from backstop.service.relay import OutboxRelay
from backstop.settings import Settings

T = TypeVar("T")
TOPICS = TopicNames("t.")
T0 = 1_760_000_000_000


async def until(condition: Callable[[], bool], seconds: float = 30) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


async def stuck_then_released() -> tuple[bool, float | None, bool, float | None]:
    broker = MemoryBroker()
    for topic in (*TOPICS.inputs, *TOPICS.outputs):
        broker.create(topic, 1)
    store = MemoryStore(MemoryDatabase())
    held = asyncio.Event()

    async def hold(_: str) -> None:
        await held.wait()

    async def offload(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return func(*args, **kwargs)

    runtime = Runtime(consumer=lambda _: MemoryConsumer(broker), publisher=lambda _: MemoryPublisher(broker, hold),
                      background=lambda kind, errors: Inline(kind, errors), offload=offload)
    settings = Settings(topic_prefix="t.", batch_max_wait_ms=5, adl_quantiles=False)
    publisher = OutboxRelay(settings, store, runtime)
    processor = LedgerProcessor(settings, store, runtime, on_commit=publisher.wake)
    tasks = [asyncio.create_task(loop.run_forever()) for loop in (processor, publisher)]

    def backlog() -> float | None:
        return metrics.REGISTRY.get_sample_value("backstop_outbox_backlog")

    try:
        await until(lambda: processor.progress.ready and publisher.healthy)
        metrics.OUTBOX_BACKLOG.set(0)
        broker.append(TOPICS.input("fund"), 0, b"F", orjson.dumps({
            "type": "fund", "ts": T0, "fund_id": "F", "settle_asset": "USDT", "surplus": "fund",
            "max_inventory_ratio": "0"}))
        await until(lambda: not publisher.healthy)  # its send never returns: stuck, with rows waiting
        stuck = (publisher.healthy, backlog())
        held.set()
        await until(lambda: publisher.healthy and backlog() == 0)
        return (*stuck, publisher.healthy, backlog())
    finally:
        processor.stop()
        publisher.stop()
        held.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_a_relay_that_cannot_publish_is_not_ready_and_its_backlog_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay, "STUCK_AFTER_S", 0.05)
    healthy_stuck, backlog_stuck, healthy_after, backlog_after = asyncio.run(stuck_then_released())
    assert not healthy_stuck and backlog_stuck is not None and backlog_stuck > 0
    assert healthy_after and backlog_after == 0
