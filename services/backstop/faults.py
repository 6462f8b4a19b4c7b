"""Fault injection for the fault tests: the process kills itself with SIGKILL at a named point, or an engine fails
on a chosen record.

BACKSTOP_FAULT_INJECT="point@n[,point@n...]" kills the process the n-th time it reaches `point` (counted from
1 in this process). Points: `in_transaction` (rows written, not committed), `after_commit` (committed, before the
next fetch), `relay_after_send` (published to Kafka, the relay cursor not yet moved), `relay_part_acked` (the
first of a send's record batches acknowledged by Kafka, the others perhaps not: part of a round, often part of a
quantile block). Unset in production: a no-op.

BACKSTOP_FAULT_ENGINE_PANIC=<record id> makes an engine fail right after applying the record with that fill,
transfer or liquidation id, as a bug in the rules would (its effects half made): the compiled engine panics
(backstop._engine.Ledger._panic_on) wherever it is opened (backstop.engines, the service), the reference engine
raises in the service (backstop.pipeline.service_engine). Read when an engine is opened. Unset in production: a
no-op.
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


ENGINE_PANIC_ENV = "BACKSTOP_FAULT_ENGINE_PANIC"


class EngineFault(RuntimeError):
    """What the reference engine raises under BACKSTOP_FAULT_ENGINE_PANIC (a stand-in for a bug in its rules)."""


def engine_panic_on() -> str | None:
    """The record id an engine opened now must fail on (BACKSTOP_FAULT_ENGINE_PANIC), or None: always in production."""
    return os.environ.get(ENGINE_PANIC_ENV) or None
