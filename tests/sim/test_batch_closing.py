"""When the ledger processor closes a batch (docs/service-loop.md, "When a batch closes"): caught up, what arrives
while a commit is in flight joins the next batch, which closes once that commit has landed, so a record waits for at
most the commit in flight and its own; behind, a batch closes at once and is applied while the one before commits.
Run on the in-memory ports; the simulator checks that the outputs never depend on where batches end."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from backstop.adapters.memory.broker import MemoryBroker, MemoryConsumer, MemoryPublisher
from backstop.adapters.memory.store import MemoryDatabase, MemoryStore
from backstop.adapters.postgres.store import Head
from backstop.pipeline.ingest import BatchResult
from backstop.pipeline.projections import Projections
from backstop.pipeline.topics import TopicNames
from backstop.service.forked import Inline
from backstop.service.ledger_loop import LedgerProcessor
from backstop.service.ports import Fetched, Runtime
from backstop.settings import Settings

T = TypeVar("T")
TOPICS = TopicNames("t.")
T0 = 1_760_000_000_000


def fund(number: int) -> bytes:
    return orjson.dumps({"type": "fund", "ts": T0 + number, "fund_id": f"F{number}", "settle_asset": "USDT",
                         "surplus": "fund", "max_inventory_ratio": "0"})


class HeldStore(MemoryStore):
    """Each batch's commit waits at its start until the test lets it land; records which offsets each one wrote."""

    def __init__(self, database: MemoryDatabase) -> None:
        super().__init__(database)
        self.gate = asyncio.Event()
        self.entered = 0
        self.batches: list[list[int]] = []

    async def commit(self, *, expected_seq: int, result: BatchResult, head: Head, projections: Projections,
                     expected_counts: tuple[int, int] | None = None) -> None:
        if result.journal_facts().rows:
            self.entered += 1
            await self.gate.wait()
            self.batches.append([row.source_offset for row in result.journal_rows()])
        await super().commit(expected_seq=expected_seq, result=result, head=head, projections=projections,
                             expected_counts=expected_counts)


async def until(condition: Callable[[], bool], seconds: float = 30) -> None:
    async with asyncio.timeout(seconds):  # a condition that never holds fails the test instead of hanging it
        while not condition():
            await asyncio.sleep(0.001)


def held_processor() -> tuple[MemoryBroker, HeldStore, list[MemoryConsumer], LedgerProcessor]:
    """A processor on the in-memory ports whose commits wait for the store's gate; the consumers it opened."""
    broker = MemoryBroker()
    for topic in (*TOPICS.inputs, *TOPICS.outputs):
        broker.create(topic, 1)
    store = HeldStore(MemoryDatabase())
    consumers: list[MemoryConsumer] = []

    def consumer(_: Settings) -> MemoryConsumer:
        consumers.append(MemoryConsumer(broker))
        return consumers[-1]

    async def offload(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return func(*args, **kwargs)

    runtime = Runtime(consumer=consumer, publisher=lambda _: MemoryPublisher(broker),
                      background=lambda kind, errors: Inline(kind, errors), offload=offload)
    settings = Settings(topic_prefix="t.", batch_max_wait_ms=5, adl_quantiles=False)
    return broker, store, consumers, LedgerProcessor(settings, store, runtime)


async def batches_committed() -> list[list[int]]:
    """Fund F0 is applied and its commit held; F1 is fetched meanwhile, then F2 is appended; then the commits land."""
    broker, store, consumers, processor = held_processor()
    task = asyncio.create_task(processor.run_forever())
    try:
        await until(lambda: processor.progress.ready)
        funds = TOPICS.input("fund"), 0
        broker.append(*funds, b"F0", fund(0))
        await until(lambda: store.entered == 1)  # F0's commit is in flight
        broker.append(*funds, b"F1", fund(1))
        await until(lambda: consumers[-1].position[funds] == 2)  # F1 fetched while F0 commits
        for _ in range(50):  # the loop settles: F1 applied (a batch of its own) or gathered
            await asyncio.sleep(0)
        broker.append(*funds, b"F2", fund(2))
        store.gate.set()
        await until(lambda: sum(map(len, store.batches)) == 3)
        return store.batches
    finally:
        processor.stop()
        await task


def test_a_record_that_arrives_during_a_commit_joins_the_next_batch() -> None:
    """F1 came while F0 committed, F2 before F0 landed: both are in the batch that closes once F0 has landed. (A
    batch closed at once would have committed F1 alone and F2 after it.)"""
    assert asyncio.run(batches_committed()) == [[0], [1, 2]]


async def lag_while_a_commit_is_held() -> tuple[float | None, float | None]:
    """F0 and F1 fetched and applied, their commit held: the lag counts them until it lands."""
    from backstop.service import metrics

    broker, store, consumers, processor = held_processor()
    funds = TOPICS.input("fund"), 0

    def lag() -> float | None:
        return metrics.REGISTRY.get_sample_value("backstop_consumer_lag", {"topic": funds[0], "partition": "0"})

    task = asyncio.create_task(processor.run_forever())
    try:
        await until(lambda: processor.progress.ready)
        broker.append(*funds, b"F0", fund(0))
        broker.append(*funds, b"F1", fund(1))
        await until(lambda: store.entered == 1 and consumers[-1].position[funds] == 2)
        for _ in range(50):  # fetches go on while the commit is held
            await asyncio.sleep(0.002)
        held = lag()
        store.gate.set()
        await until(lambda: sum(map(len, store.batches)) == 2)
        await until(lambda: lag() == 0)
        return held, lag()
    finally:
        processor.stop()
        await task


def test_the_consumer_lag_counts_records_fetched_until_their_batch_has_committed() -> None:
    """backstop_consumer_lag is records not yet applied (docs/operations.md): a batch applied in memory whose commit
    has not landed (or fails, as when the service cannot write) still counts, so BackstopStalled can fire."""
    assert asyncio.run(lag_while_a_commit_is_held()) == (2.0, 0.0)


class _MarkerAfter(MemoryConsumer):
    """Once `marker` is set, the funds partition's log has one more offset, a transaction's marker the consumer
    passes over (it hands over no record for it)."""

    marker = False

    async def fetch(self, **options: Any) -> Fetched:
        fetched = await super().fetch(**options)
        funds = TOPICS.input("fund"), 0
        if not self.marker or fetched.records or funds not in fetched.ends:
            return fetched
        self.position[funds] = fetched.ends[funds] + 1
        return Fetched(fetched.records, {**fetched.positions, funds: self.position[funds]},
                       {**fetched.ends, funds: self.position[funds]})


async def lag_after_a_marker_on_a_quiet_input() -> float | None:
    from backstop.service import metrics

    broker, store, _, processor = held_processor()
    store.gate.set()
    consumers: list[_MarkerAfter] = []

    def consumer(_: Settings) -> _MarkerAfter:
        consumers.append(_MarkerAfter(broker))
        return consumers[-1]

    processor.runtime = dataclasses.replace(processor.runtime, consumer=consumer)
    funds = TOPICS.input("fund"), 0
    task = asyncio.create_task(processor.run_forever())
    try:
        await until(lambda: processor.progress.ready)
        broker.append(*funds, b"F0", fund(0))
        await until(lambda: processor.progress.seq == 1)
        consumers[-1].marker = True
        await until(lambda: consumers[-1].position[funds] == 2)
        for _ in range(20):  # fetches go on over the quiet input
            await asyncio.sleep(0.005)
        return metrics.REGISTRY.get_sample_value("backstop_consumer_lag", {"topic": funds[0], "partition": "0"})
    finally:
        processor.stop()
        await task


def test_the_consumer_lag_is_0_past_a_marker_no_batch_stores() -> None:
    """A transaction's marker fetched after the last batch closed, the input quiet: nothing waits, lag 0."""
    assert asyncio.run(lag_after_a_marker_on_a_quiet_input()) == 0.0
