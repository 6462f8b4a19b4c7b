"""Event-time order: how far behind the newest applied event a record may be, and what is stale.

Inputs come from several topics and partitions, so event time is only nearly ordered: a fill may trail the
newest applied event by a little. The rules, all on the records' own `ts` (never a clock):
- any record more than MAX_LATENESS_MS behind the newest applied event is rejected (out of order);
- a mark older than the symbol's last applied mark is stale and rejected (it would move the mark backwards);
- a funding event not after the symbol's last applied funding is rejected (it would charge that period twice).
Dedupe remembers ids for the same window (backstop.core.dedupe), so a re-sent record is either inside the window
(a duplicate) or outside it (rejected here): never applied twice, in memory bounded by the window.
"""

from __future__ import annotations

MAX_LATENESS_MS = 600_000  # ten minutes of event time


def check_lateness(ts: int, newest_ts: int | None) -> str | None:
    """Why a record at `ts` is too late, or None."""
    if newest_ts is not None and ts < newest_ts - MAX_LATENESS_MS:
        return (f"ts {ts} is {newest_ts - ts} ms behind the newest applied event (ts {newest_ts}); at most "
                f"{MAX_LATENESS_MS} ms is accepted")
    return None
