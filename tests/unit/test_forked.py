"""The forked child of backstop.service.forked: it works on the state as of the fork, and every way it can fail
reaches the parent as ForkFailed with the reason."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backstop.service.forked import Forked, ForkFailed


async def test_the_child_reads_the_state_as_of_the_fork_while_the_parent_goes_on() -> None:
    state = {"seq": 1, "rows": list(range(5))}

    def work() -> bytes:
        time.sleep(0.3)  # the parent changes its state meanwhile
        return repr(state).encode() + b"|" + str(os.getpid()).encode()

    child = Forked.start(work)
    state["seq"] = 2
    state["rows"].append(99)  # type: ignore[attr-defined]
    seen, pid = (await child.result()).split(b"|")
    assert seen == repr({"seq": 1, "rows": [0, 1, 2, 3, 4]}).encode()
    assert int(pid) == child.pid != os.getpid()


async def test_a_result_larger_than_a_pipe_holds_arrives_whole() -> None:
    blob = bytes(range(256)) * 40_000  # 10 MB: the child blocks on the pipe until the parent's reader drains it
    assert await Forked.start(lambda: blob).result() == blob


async def test_an_exception_in_the_child_is_the_parents_reason() -> None:
    def work() -> bytes:
        raise RuntimeError("no marks for BTCUSDT")

    with pytest.raises(ForkFailed, match="RuntimeError: no marks for BTCUSDT"):
        await Forked.start(work).result()


async def test_a_killed_child_fails_and_says_how() -> None:
    child = Forked.start(lambda: time.sleep(30) or b"late")  # type: ignore[func-returns-value]
    await asyncio.sleep(0.1)
    child.kill()
    with pytest.raises(ForkFailed, match="signal SIGKILL"):
        await child.result()
    child.kill()  # again, after it ended: harmless


async def test_a_child_that_exits_early_fails() -> None:
    child = Forked.start(lambda: os._exit(3))
    with pytest.raises(ForkFailed, match="exit code 3"):
        await child.result()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"  # a zombie has died
    except FileNotFoundError:
        return False


def test_the_child_dies_with_its_parent(tmp_path: Path) -> None:
    """kill -9 of the service leaves no orphan computing a result nobody will read."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import asyncio, time\n"
        "from backstop.service.forked import Forked\n"
        "async def main():\n"
        "    child = Forked.start(lambda: time.sleep(60) or b'')\n"
        "    print(child.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()
