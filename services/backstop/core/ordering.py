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
- a per-symbol clock (the ts of the mark in force, of the last funding) refuses older records once the journal clock
  has come within MAX_LATENESS_MS of it (it is reached). Until then it may be a bad clock: records are judged against
  the floor (the last ts in force that the journal had reached when it was replaced), and the next record of its
  kind at or after the floor replaces it.
"""

from __future__ import annotations

from collections.abc import Iterable

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
            raise Rejected(f"ahead of the journal: ts {ts} is {ts - now} ms after the journal's time (ts {now}); at most "
                           f"{MAX_AHEAD_MS} ms is accepted", "ahead")
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


def symbol_bound(in_force: dict[str, int], floor: dict[str, int], symbol: str, clock: JournalClock) -> int | None:
    """The ts older records of `symbol` are judged against: the ts in force once reached, else the floor."""
    ts = in_force.get(symbol)
    if ts is not None and clock.reached(ts):
        return ts
    return floor.get(symbol)


def put_in_force(in_force: dict[str, int], floor: dict[str, int], symbol: str, ts: int, clock: JournalClock) -> None:
    """A record of `symbol` at `ts` (not before its bound) was applied: it is in force, its bound the new floor."""
    bound = symbol_bound(in_force, floor, symbol, clock)
    if bound is not None:
        floor[symbol] = bound
    in_force[symbol] = ts


def clock_of(document: dict[str, object]) -> JournalClock:
    recent = document["recent"]
    ts = document["ts"]
    if not isinstance(recent, list) or not (ts is None or isinstance(ts, int)):
        raise ValueError("malformed journal clock in the snapshot")
    return JournalClock((int(t) for t in recent), ts)
