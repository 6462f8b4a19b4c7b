"""Event time: the journal clock, and which records are late, ahead or stale (docs/design.md §4, Admission).

Inputs come from several topics and partitions, so event time is only nearly ordered, and one producer's clock can
be wrong by a day or by years. All rules here use the records' own `ts`, never a clock of the machine:
- the journal clock is the median ts of the last three applied records, and it never moves back: one record, however
  far off, cannot move it (it takes two of three), and only applied records move it, so the journal alone
  reproduces it (a rejected record is not in the journal);
- a record more than MAX_LATENESS_MS behind the journal clock is late; one more than MAX_AHEAD_MS after the journal's
  time (the later of the clock and the last applied record's ts: in a sparse journal the median lags by a record) is
  ahead of the journal (fund and instrument definitions excepted: they are how an operator moves the journal past a
  longer silence); both are rejected;
- a per-symbol clock (of marks, with liquidations, which carry a mark; of fundings) refuses records older than the
  latest ts applied that the journal clock has come within MAX_LATENESS_MS of (reached). A ts not reached yet may be
  a bad clock: it waits apart and bounds nothing until the journal reaches it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from backstop.core.errors import Rejected

MAX_LATENESS_MS = 600_000  # ten minutes of event time
MAX_AHEAD_MS = 43_200_000  # twelve hours: more than a funding interval, so a small journal's gaps still apply
WINDOW = 3  # the clock is the median of this many applied records


class JournalClock:
    """The journal's event time, a function of the applied records alone."""

    __slots__ = ("recent", "ts")

    def __init__(self, recent: Iterable[int] = (), ts: int | None = None) -> None:
        self.recent: list[int] = list(recent)  # the ts of the last WINDOW applied records, in journal order
        self.ts = ts  # None until a record was applied

    def check(self, ts: int, *, definition: bool) -> None:
        """Raise Rejected when a record at `ts` is ahead of the journal or late; checked before it is applied."""
        clock = self.ts
        if clock is None:
            return
        now = max(clock, self.recent[-1])
        if ts > now + MAX_AHEAD_MS and not definition:
            raise Rejected(f"ahead of the journal: ts {ts} is {ts - now} ms after the journal's time (ts {now}); at "
                           f"most {MAX_AHEAD_MS} ms is accepted", "ahead")
        if ts < clock - MAX_LATENESS_MS and len(self.recent) == WINDOW:  # the first records set the clock
            raise Rejected(f"late: ts {ts} is {clock - ts} ms behind the journal clock (ts {clock}); at most "
                           f"{MAX_LATENESS_MS} ms is accepted", "late")

    def advance(self, ts: int) -> None:
        """A record at `ts` was applied."""
        recent = self.recent
        recent.append(ts)
        if len(recent) > WINDOW:
            del recent[0]
        if len(recent) < WINDOW:
            self.ts = min(recent)
            return
        median = sorted(recent)[WINDOW // 2]
        if self.ts is None or median > self.ts:
            self.ts = median

    def reached(self, ts: int) -> bool:
        """Whether the journal clock has come within the lateness window of `ts`, so that a per-symbol clock at `ts`
        refuses older records."""
        return self.ts is None or ts <= self.ts + MAX_LATENESS_MS

    def document(self) -> dict[str, object]:
        return {"recent": list(self.recent), "ts": self.ts}


class SymbolClock:
    """Per symbol, the ts of the applied records of one kind as far as the journal clock has reached them."""

    __slots__ = ("pending", "reached")

    def __init__(self) -> None:
        self.reached: dict[str, int] = {}  # symbol -> the latest ts applied that the journal had reached
        self.pending: dict[str, tuple[int, ...]] = {}  # symbol -> ts applied that it had not reached (usually none)

    def bound(self, symbol: str, clock: JournalClock) -> int | None:
        """Records of `symbol` older than this are stale (None: no bound yet)."""
        bound = self.reached.get(symbol)
        for ts in self.pending.get(symbol, ()):
            if clock.reached(ts) and (bound is None or ts > bound):
                bound = ts
        return bound

    def seen(self, symbol: str) -> bool:
        """Whether a record of `symbol` was applied (reached or not)."""
        return symbol in self.reached or symbol in self.pending

    def applied(self, symbol: str, ts: int, clock: JournalClock) -> None:
        bound = self.bound(symbol, clock)
        if clock.reached(ts) and (bound is None or ts > bound):
            bound = ts
        if bound is not None:
            self.reached[symbol] = bound
        pending = tuple(t for t in (*self.pending.get(symbol, ()), ts) if not clock.reached(t))
        if pending:
            self.pending[symbol] = pending
        else:
            self.pending.pop(symbol, None)

    def document(self) -> dict[str, object]:
        return {"reached": dict(sorted(self.reached.items())),
                "pending": {symbol: list(ts) for symbol, ts in sorted(self.pending.items())}}

    @classmethod
    def of(cls, document: dict[str, dict[str, object]]) -> SymbolClock:
        result = cls()
        result.reached = {str(symbol): int(cast(int, ts)) for symbol, ts in document["reached"].items()}
        result.pending = {str(symbol): tuple(int(t) for t in cast(list[int], ts))
                          for symbol, ts in document["pending"].items()}
        return result


def clock_of(document: dict[str, object]) -> JournalClock:
    recent = document["recent"]
    ts = document["ts"]
    if (not isinstance(recent, list) or not all(type(t) is int for t in recent)
            or not (ts is None or type(ts) is int) or len(recent) > WINDOW
            or (ts is None) != (not recent)):  # a clock exists exactly when a record was applied
        raise ValueError("malformed journal clock in the snapshot")
    return JournalClock((int(t) for t in recent), ts)
