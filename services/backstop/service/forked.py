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
import gc
import os
import signal
import traceback
from collections.abc import Callable
from typing import NoReturn

OK, FAILED = b"0", b"1"


class ForkFailed(Exception):
    """The child did not deliver its result (it raised, was killed, or exited early)."""


class Forked:
    """One child computing `work()`; `result()` gives its bytes."""

    def __init__(self, pid: int, pidfd: int, reading: asyncio.Future[tuple[bytes, int]]) -> None:
        self.pid = pid
        self._pidfd: int | None = pidfd  # signals through it never reach a process that reused the pid
        self._reading = reading

    @classmethod
    def start(cls, work: Callable[[], bytes]) -> Forked:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            _child(work, read_fd, write_fd)
        os.close(write_fd)
        pidfd = os.pidfd_open(pid)  # before the reader can reap it
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
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # it had ended
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            self._close()

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _read_and_reap(read_fd: int, pid: int) -> tuple[bytes, int]:
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    return data, status


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _child(work: Callable[[], bytes], read_fd: int, write_fd: int) -> NoReturn:
    code = 1
    try:
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
