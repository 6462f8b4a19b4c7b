"""What the ledger processor and the outbox relay share: one instance per database (an advisory lock, held on a
connection of its own, checked before a loop acts as its holder), and restarts after an error with a bounded
backoff. An InvariantViolation is never retried: it stops the loop, as a broken rule must (but for HeadMoved, a
handover's last batch from the instance before: the engine is rebuilt from the store); nor is an error of a loop
whose task was cancelled (a cleanup that failed on the way out, or a cancellation an await swallowed, must not
start it again)."""

from __future__ import annotations

import asyncio
import logging
import time

from backstop.core.errors import InvariantViolation
from backstop.service import metrics
from backstop.service.ports import HeadMoved, InputGap, InputPartitionsGrew, Lease, LedgerStore, LockLost

log = logging.getLogger("backstop.service")
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
HEALTHY_RUN_S = 60.0  # a run that lasted this long before it failed was healthy: the next backoff is the first
_SAID_IN_FULL = (InputGap, InputPartitionsGrew, LockLost, HeadMoved)  # their message is the whole story: no traceback


class SupervisedLoop:
    name = "loop"
    lock_id = 0

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.lease: Lease | None = None  # the lock, while run_locked runs
        self.standby = False  # waiting for the lock another instance holds (a healthy standby)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run_forever(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self.stopping:
            started = time.monotonic()
            try:
                await self.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if isinstance(error, InvariantViolation) and not isinstance(error, HeadMoved):
                    raise
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError(f"{self.name} was cancelled") from error
                self.on_error(error)
                metrics.RESTARTS.labels(self.name).inc()
                if time.monotonic() - started >= HEALTHY_RUN_S:  # a failure after a healthy run starts afresh
                    backoff = BACKOFF_FIRST_S
                log.warning("%s failed (%s: %s); restarting in %.1fs", self.name, type(error).__name__, error,
                            backoff, exc_info=None if isinstance(error, _SAID_IN_FULL) else error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def run(self) -> None:
        """Run once, holding this loop's lock (a second instance waits here as a standby)."""
        log.info("%s: waiting for its lock (one per database)", self.name)
        self.standby = True
        try:
            async with self.store.hold_lock(self.lock_id) as lease:
                self.standby, self.lease = False, lease
                try:
                    await self.run_locked()
                finally:
                    self.lease = None
        finally:
            self.standby = False

    async def run_locked(self) -> None:
        raise NotImplementedError

    def on_error(self, error: Exception) -> None:
        """Record the error (for health); the loop restarts after it."""
