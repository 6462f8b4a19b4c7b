"""Every command, `serve` included, and the service run in-process, collect the young generation every
backstop.collector.YOUNG_THRESHOLD new container objects (docs/service.md, "What bounds its speed"): checked in a
fresh interpreter, where the threshold starts at CPython's default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from backstop.collector import YOUNG_THRESHOLD

JOURNAL = Path(__file__).parents[2] / "examples" / "02-adl-walks-queue.jsonl"
THRESHOLD_AFTER = (
    "import gc, sys\n"
    "before = gc.get_threshold()[0]\n"
    "from backstop.entrypoints.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print(before, gc.get_threshold()[0], code)\n"
)


def threshold_after(*argv: str, env: dict[str, str] | None = None) -> tuple[int, int, int]:
    run = subprocess.run([sys.executable, "-c", THRESHOLD_AFTER, *argv], capture_output=True, text=True, check=True,
                         env=None if env is None else {**os.environ, **env})
    before, after, code = run.stdout.split()[-3:]
    return int(before), int(after), int(code)


def test_a_command_raises_the_young_threshold(tmp_path: Path) -> None:
    assert threshold_after("replay", str(JOURNAL), "--out", str(tmp_path / "out")) == (700, YOUNG_THRESHOLD, 0)


def test_serve_raises_it_before_it_starts_anything() -> None:
    # refused at once (no database there): the threshold is set before the command's own work, whatever it does
    before, after, code = threshold_after("serve", env={"BACKSTOP_PG_DSN": "postgresql://nobody@127.0.0.1:1/none"})
    assert (before, after) == (700, YOUNG_THRESHOLD) and code != 0
