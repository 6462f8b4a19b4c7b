"""Ctrl-C and SIGTERM for the commands: both raise KeyboardInterrupt, which the command line turns into one line
and exit 130, except inside an import.

The commands import most modules when they first need them. An interrupt raised while Python runs a module's body
leaves that module half made, and some cannot be made twice in one process (orjson's, the engine's: native
extensions): the next use crashed the process with SIGSEGV where the user had pressed Ctrl-C. So an interrupt that
lands while the main thread imports is held, and raised as soon as the outermost import is done.
"""

from __future__ import annotations

import builtins
import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any


class _Held:
    def __init__(self) -> None:
        self.importing = 0  # imports of the main thread under way, nested
        self.pending = False  # an interrupt came during one


_state = _Held()
_import = builtins.__import__


def _tracked_import(name: str, *args: Any, **kwargs: Any) -> Any:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _import(name, *args, **kwargs)
    _state.importing += 1
    try:
        return _import(name, *args, **kwargs)
    finally:
        _state.importing -= 1
        if not _state.importing and _state.pending:
            _state.pending = False
            raise KeyboardInterrupt


def _interrupt(_signal: int, _frame: FrameType | None) -> None:
    if _state.importing:
        _state.pending = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_held_in_imports(*, sigterm: bool) -> Iterator[None]:
    """SIGINT (and SIGTERM, if `sigterm`) raise KeyboardInterrupt, held while an import runs; what was there before is
    put back on the way out. Outside the main thread (which alone can set handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM) if sigterm else (signal.SIGINT,)
    previous = {number: signal.signal(number, _interrupt) for number in signals}
    builtins.__import__ = _tracked_import
    try:
        yield
    finally:
        builtins.__import__ = _import
        _state.importing, _state.pending = 0, False
        for number, handler in previous.items():
            signal.signal(number, handler)
