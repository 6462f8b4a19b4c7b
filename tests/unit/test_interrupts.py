"""Ctrl-C and SIGTERM raise KeyboardInterrupt in the commands, but never inside an import: a native extension
interrupted while it was being made crashed the process (SIGSEGV) at its next use."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from backstop.entrypoints.interrupts import interrupts_held_in_imports


def test_an_interrupt_during_an_import_is_raised_once_the_import_is_done(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "interrupted_module.py").write_text(
        "import signal\nsignal.raise_signal(signal.SIGINT)\nimport json\nMADE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "interrupted_module", raising=False)
    with interrupts_held_in_imports(sigterm=True), pytest.raises(KeyboardInterrupt):
        import interrupted_module  # noqa: F401
    assert sys.modules["interrupted_module"].MADE  # the module was made whole before the interrupt came out


def test_sigterm_interrupts_as_ctrl_c_does_and_the_handlers_are_put_back() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with interrupts_held_in_imports(sigterm=True), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM)
        for _ in range(1000):  # the handler runs between bytecodes
            pass
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
