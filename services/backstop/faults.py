"""Fault injection for the fault tests: the process kills itself with SIGKILL at a named point.

BACKSTOP_FAULT_INJECT="point@n[,point@n...]" kills the process the n-th time it reaches `point` (counted from
1 in this process). Points: `in_transaction` (rows written, not committed), `after_commit` (committed, before the
next fetch), `relay_after_send` (published to Kafka, the relay cursor not yet moved). Unset in production: a no-op.
"""

from __future__ import annotations

import os
import signal

_PLAN: dict[str, int] = {}
for _item in filter(None, os.environ.get("BACKSTOP_FAULT_INJECT", "").split(",")):
    _point, _, _count = _item.partition("@")
    _PLAN[_point.strip()] = int(_count or 1)
_SEEN: dict[str, int] = {}


def reached(point: str) -> None:
    if point not in _PLAN:
        return
    _SEEN[point] = _SEEN.get(point, 0) + 1
    if _SEEN[point] == _PLAN[point]:
        os.kill(os.getpid(), signal.SIGKILL)
