"""The cyclic garbage collector's young threshold, for every command and the service.

CPython collects its youngest generation every 700 net new container objects, and the whole heap each time it has
grown by a quarter. A replay's state is millions of long-lived objects with almost no reference cycles, so the
collector's full passes cost a large replay seconds for nothing. The service makes tens of thousands of
short-lived objects per batch (the consumer's records, the relay's rows): at 700 the young passes promote enough
of them that a full pass, walking the whole heap, paused the event loop every few seconds (40 to 70 ms each in
the service benchmark, 0.8 s of the run in all). At 50,000 most die before a pass sees them (docs/service.md,
"What bounds its speed").
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def raise_young_threshold() -> None:
    """The young generation collected every YOUNG_THRESHOLD net new container objects; the older ones as before."""
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
