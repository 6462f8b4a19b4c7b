"""Stage stamps of the money path, for measuring where a record's latency goes (`BACKSTOP_TRACE_STAGES`, off by
default): one `backstop.trace` log line per batch (the monotonic clock when its records were released by the merge,
applied, projected, when its commit started and landed; the liquidations in it with the moment the consumer handed
each over) and one per relay round (woken, read, acknowledged by Kafka, cursor moved; the last row of each source).
`benchmarks/latency.py --trace` joins them to its probes: docs/service.md, "Where a liquidation's time goes".

The stamps are `time.monotonic()`, the system-wide monotonic clock, so another process on the same machine can
compare them with its own. Nothing the service decides reads them."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("backstop.trace")
now = time.monotonic


def batch(stamps: dict[str, Any]) -> None:
    log.info("batch stages", extra={"fields": stamps})


def relay_round(stamps: dict[str, Any]) -> None:
    log.info("relay stages", extra={"fields": stamps})


__all__ = ["batch", "now", "relay_round"]
