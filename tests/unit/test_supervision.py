"""The supervised loops' restarts (backstop.service.supervision): an error restarts the loop, but not once its task
has been cancelled, whatever the cancellation turned into on the way out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from backstop.service import supervision
from backstop.service.ports import LedgerStore


class _Store:
    @contextlib.asynccontextmanager
    async def hold_lock(self, lock_id: int) -> AsyncIterator[None]:
        yield


class _CleanupFails(supervision.SupervisedLoop):
    """Each run waits; cancelled, its cleanup fails (a store whose session is gone), so an Exception, not the
    CancelledError, leaves the run."""

    def __init__(self) -> None:
        super().__init__(cast(LedgerStore, _Store()))
        self.runs = 0
        self.errors: list[Exception] = []

    async def run_locked(self) -> None:
        self.runs += 1
        try:
            await asyncio.sleep(3600)
        finally:
            raise ConnectionError("the session is gone")

    def on_error(self, error: Exception) -> None:
        self.errors.append(error)


class _FailsOnce(_CleanupFails):
    async def run_locked(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise ConnectionError("lost")


async def test_a_cancelled_loop_stops_even_when_its_cleanup_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "BACKOFF_FIRST_S", 0.0)
    loop = _CleanupFails()
    task = asyncio.create_task(loop.run_forever())
    await asyncio.sleep(0.01)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1)
    loop.stop()  # a loop that started again ends at its next error: the test fails, not hangs
    assert task in done and task.cancelled()
    assert (loop.runs, loop.errors) == (1, [])


async def test_an_error_restarts_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "BACKOFF_FIRST_S", 0.0)
    loop: Any = _FailsOnce()
    await asyncio.wait_for(loop.run_forever(), 5)
    assert loop.runs == 2 and [str(e) for e in loop.errors] == ["lost"]


class _FailsAfterRuns(_CleanupFails):
    """Fails four times at once, then once after a long (healthy) run, then stops."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock

    async def run_locked(self) -> None:
        self.runs += 1
        if self.runs == 5:
            self.clock[0] += supervision.HEALTHY_RUN_S  # this run lasts a minute
        if self.runs <= 5:
            raise ConnectionError(f"failure {self.runs}")
        self.stop()


async def test_a_failure_after_a_healthy_run_waits_the_first_backoff_again(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(supervision.time, "monotonic", lambda: clock[0])
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(supervision.asyncio, "sleep", sleep)
    await asyncio.wait_for(_FailsAfterRuns(clock).run_forever(), 5)
    assert waits == [0.5, 1.0, 2.0, 4.0, 0.5]
