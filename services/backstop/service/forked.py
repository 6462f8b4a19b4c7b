"""Work on a copy of the engine's state in a forked child, while the service goes on.

Some work reads the whole state: the full projection refresh (every position's prices and the exact ADL ranking of
every position, ~2.4 s at 100,000 positions) and the snapshot document. In the engine's thread it stalls every
batch behind it, and in a thread it would hold the interpreter lock all the same. `os.fork` gives a child a
copy-on-write image of the process as it is at that instant (6.5 ms at 145 MiB): the child reads the state as of
that seq on the other core and sends back bytes, while the parent applies the next batches. The child copies the
pages it touches (reference counts are writes), so a refresh can briefly need up to the state's size again.

The parent forks from the event loop's thread between engine steps (nothing mutates the engine then). The child runs
only the pure work given to it, writes one status byte and the result to a pipe, and leaves with `os._exit`: no
finalizers, no flushed buffers, nothing of the parent's sockets or event loop touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import pickle
import signal
import time
import traceback
from collections.abc import Callable
from typing import Generic, Literal, NoReturn, TypeVar

from backstop.service import metrics

log = logging.getLogger("backstop.ledger")
T = TypeVar("T")

OK, FAILED = b"0", b"1"
PR_SET_PDEATHSIG = 1  # prctl(2)


class ForkFailed(Exception):
    """The child did not deliver its result (it raised, was killed, or exited early)."""


class Forked:
    """One child computing `work()`; `result()` gives its bytes."""

    def __init__(self, pid: int, pidfd: int | None, reading: asyncio.Future[tuple[bytes, int]]) -> None:
        self.pid = pid
        self._pidfd = pidfd  # signals through it never reach a process that reused the pid (Linux)
        self._reading = reading

    @classmethod
    def start(cls, work: Callable[[], bytes]) -> Forked:
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _child(work, read_fd, write_fd, parent)
        os.close(write_fd)
        pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None  # before the reader can reap it
        return cls(pid, pidfd, asyncio.get_running_loop().run_in_executor(None, _read_and_reap, read_fd, pid))

    def done(self) -> bool:
        return self._reading.done()

    async def result(self) -> bytes:
        data, status = await self._reading
        self._close()
        if status != 0 or not data.startswith(OK):
            detail = data[1:].decode(errors="replace").strip() if data.startswith(FAILED) else ""
            raise ForkFailed(detail or f"child {self.pid} ended with {_describe(status)} before its result")
        return data[1:]

    def kill(self) -> None:
        """Stop the child (its reader reaps it); harmless if it has ended."""
        with contextlib.suppress(ProcessLookupError):  # it had ended
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            elif not self._reading.done():  # without a pidfd: only while its reader has not reaped it
                os.kill(self.pid, signal.SIGKILL)
        self._close()

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class Background(Generic[T]):
    """One kind of whole-state work (a full projection refresh, a snapshot) in forked children, one at a time: wanted
    when due, started between engine steps, its result taken by a later commit. Work due while a child runs starts
    once that child's result has been taken. A child that fails is logged, counted and recorded in `errors` (until
    one succeeds); the next due run tries again."""

    def __init__(self, kind: str, errors: dict[str, str]) -> None:
        self.kind = kind
        self.wanted = False
        self._errors = errors
        self._child: Forked | None = None
        self._started = 0.0

    def start_if_wanted(self, work: Callable[[], T]) -> None:
        """Only between engine steps: the child sees the state as it is now."""
        if self.wanted and self._child is None:
            self.wanted = False
            self._started = time.perf_counter()
            self._child = Forked.start(lambda: pickle.dumps(work()))

    async def take(self) -> T | None:
        """The result, once the child has finished (None while it runs, and if it failed)."""
        child = self._child
        if child is None or not child.done():
            return None
        self._child = None
        try:
            result: T = pickle.loads(await child.result())  # bytes from our own child, never from input
        except ForkFailed as error:
            metrics.BACKGROUND_FAILURES.labels(self.kind).inc()
            self._errors[self.kind] = str(error).splitlines()[-1]
            log.error("forked %s failed: %s", self.kind, error)
            return None
        metrics.BACKGROUND_SECONDS.labels(self.kind).observe(time.perf_counter() - self._started)
        self._errors.pop(self.kind, None)
        return result

    def stop(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child = None


def _read_and_reap(read_fd: int, pid: int) -> tuple[bytes, int]:
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    return data, status


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _die_with(parent: int) -> None:
    """Linux: the kernel kills the child when the parent dies (a kill -9 of the service leaves no orphan computing a
    refresh nobody will read)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before that took effect
        os._exit(1)


def _child(work: Callable[[], bytes], read_fd: int, write_fd: int, parent: int) -> NoReturn:
    code = 1
    try:
        _die_with(parent)
        os.close(read_fd)
        # The parent's signal handling is not the child's: a stop signal ends it outright, and never wakes the
        # parent's event loop through the wake-up pipe they share.
        try:
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, signal.SIG_DFL)
        except ValueError:  # forked from a thread other than the main one: it had no handlers to undo
            pass
        gc.disable()  # a collection would walk (and copy) the whole heap; the child lives seconds
        try:
            message = OK + work()
        except Exception:  # its reason goes to the parent, which reports it
            message = FAILED + traceback.format_exc().encode()
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(message)
        code = 0 if message.startswith(OK) else 1
    finally:
        os._exit(code)


class Inline(Generic[T]):
    """Background's in-memory counterpart: the work is done at once, in the process, as of the moment it starts
    (what a forked child sees). `outcome`, asked at each take, says whether the "child" is still running, has
    delivered or has died; the simulator draws it from its seed, so a refresh or snapshot can land late or never."""

    def __init__(self, kind: str, errors: dict[str, str],
                 outcome: Callable[[], Literal["running", "done", "failed"]] = lambda: "done") -> None:
        self.kind = kind
        self.wanted = False
        self._errors = errors
        self._outcome = outcome
        self._result: list[T] = []  # the result of the work started, until taken

    def start_if_wanted(self, work: Callable[[], T]) -> None:
        if self.wanted and not self._result:
            self.wanted = False
            self._result.append(work())

    async def take(self) -> T | None:
        if not self._result:
            return None
        outcome = self._outcome()
        if outcome == "running":
            return None
        result = self._result.pop()
        if outcome == "failed":
            metrics.BACKGROUND_FAILURES.labels(self.kind).inc()
            self._errors[self.kind] = "child ended with signal SIGKILL before its result"
            return None
        self._errors.pop(self.kind, None)
        return result

    def stop(self) -> None:
        self._result.clear()
