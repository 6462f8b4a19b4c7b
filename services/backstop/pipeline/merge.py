"""Deterministic interleaving of the input partitions: an event-time merge.

Inputs arrive on several topics and partitions; the order in which they are applied is decided here, once, and
recorded in the journal. Records are released in order of (ts, type rank, topic, partition, offset), and a
record is released only when every input partition's next record is known: buffered here, or known not to exist
because the partition's fetch position has reached its end as the broker reported it. An end the consumer has not
received holds the merge back, and so does an end received before the records about to be released were fetched:
it must be confirmed by a request made after them (`unconfirmed`, `confirm_end`). So the order does not depend on
how fetches split the data or when they came: a record is never ordered as if a record appended before it (on any
partition) did not exist, and a restart after a crash re-reads from the stored offsets and decides the same order
again. A caught-up (idle) partition holds the others back only until its end is confirmed.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence

import orjson

from backstop.pipeline.ingest import Consumed
from backstop.pipeline.topics import INPUT_TYPES, TopicNames
from backstop.wire.decode import MAX_RECORD_BYTES

Partition = tuple[str, int]
_TYPE_RANK = {t: i for i, t in enumerate(INPUT_TYPES)}
_UNKNOWN_TS = -1  # undecodable records carry no ts: they go first, straight to dead-letter


def event_time(message: Consumed) -> int:
    """The record's ts; -1 when it has none or is too large to read (it will be dead-lettered)."""
    if not message.value or len(message.value) > MAX_RECORD_BYTES:
        return _UNKNOWN_TS
    try:
        document = orjson.loads(message.value)
    except orjson.JSONDecodeError:
        return _UNKNOWN_TS
    ts = document.get("ts") if isinstance(document, dict) else None
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else _UNKNOWN_TS


def event_times(values: Sequence[bytes | None]) -> list[int]:
    """`event_time` of each value (the compiled engine's _engine.event_times reads the same, one call per fetch)."""
    return [event_time(Consumed("", 0, 0, None, value)) for value in values]


EventTimes = Callable[[list[bytes | None]], list[int]]


class Merger:
    """`event_times`: how a fetch's records get their event times (this module's, or the compiled engine's)."""

    def __init__(self, topics: TopicNames, *, max_buffered: int = 100_000, event_times: EventTimes = event_times
                 ) -> None:
        self.topics = topics
        self.max_buffered = max_buffered
        self.event_times = event_times
        self.buffers: dict[Partition, deque[tuple[int, Consumed]]] = {}  # each record after its event time
        self.next_fetch: dict[Partition, int] = {}  # offset after the last record buffered
        self.end_offsets: dict[Partition, int] = {}  # ends the broker reported; a partition without one is unknown
        self.arrivals = 0  # fetches that brought records, so far
        self.confirmed: dict[Partition, int] = {}  # `arrivals` when the partition's end was last confirmed
        self.buffered = 0

    def assign(self, partition: Partition, position: int) -> None:
        self.buffers.setdefault(partition, deque())
        self.next_fetch[partition] = position

    def advance(self, partition: Partition, position: int) -> None:
        """The consumer's fetch position moved (past records or transaction markers it did not return)."""
        if position > self.next_fetch.get(partition, 0):
            self.next_fetch[partition] = position

    def observe_end(self, partition: Partition, end_offset: int) -> None:
        """An end a fetch response carried. It can show that records are unread, never that there are none: it may
        be older than records fetched since from other partitions. Ends only grow."""
        if end_offset > self.end_offsets.get(partition, -1):
            self.end_offsets[partition] = end_offset

    def confirm_end(self, partition: Partition, end_offset: int) -> None:
        """The partition's end from a request made after the records buffered so far were fetched."""
        self.observe_end(partition, end_offset)
        self.confirmed[partition] = self.arrivals

    def add(self, partition: Partition, messages: Sequence[Consumed]) -> None:
        """One fetch's records of one partition, in offset order. Records below the offset already reached (a
        delivery repeated) are dropped: a record is buffered once."""
        if not messages:
            return
        reached = self.next_fetch.get(partition, 0)
        if messages[0].offset < reached:
            messages = [m for m in messages if m.offset >= reached]
            if not messages:
                return
        times = self.event_times([m.value for m in messages])
        self.buffers.setdefault(partition, deque()).extend(zip(times, messages, strict=True))
        self.next_fetch[partition] = messages[-1].offset + 1
        self.buffered += len(messages)
        self.arrivals += 1

    def reached(self) -> dict[Partition, int]:
        """Each partition with nothing buffered, and the offset its fetch reached: every record below it has been
        released, or was a transaction's marker or an aborted record, which the consumer passes over."""
        return {partition: self.next_fetch[partition] for partition, buffer in self.buffers.items()
                if not buffer and partition in self.next_fetch}

    def full(self) -> bool:
        return self.buffered >= self.max_buffered

    def drained(self) -> bool:
        """Nothing buffered and nothing unread as far as the last fetch knew: the input is caught up."""
        return self.buffered == 0 and not any(self._unread(p) for p in self.buffers)

    def _sort_key(self, timed: tuple[int, Consumed]) -> tuple[int, int, str, int, int]:
        ts, message = timed
        record_type = self.topics.type_of(message.topic)
        rank = _TYPE_RANK.get(record_type, -1) if record_type else -1
        return (ts, rank, message.topic, message.partition, message.offset)

    def _unread(self, partition: Partition) -> bool:
        """Its end is unknown, or records below it are not fetched yet."""
        end = self.end_offsets.get(partition)
        return end is None or self.next_fetch.get(partition, 0) < end

    def _waiting(self, partition: Partition, buffer: deque[tuple[int, Consumed]]) -> bool:
        """Nothing buffered, and not known to have nothing more: its next record could come before any other."""
        return not buffer and (self._unread(partition) or self.confirmed.get(partition, -1) < self.arrivals)

    def starved(self) -> set[Partition]:
        """Partitions with unread records (or an unknown end) but nothing buffered: they hold the order back, so a
        full buffer must still fetch from them (and only them), or it would wait forever for itself to drain."""
        return {partition for partition, buffer in self.buffers.items() if not buffer and self._unread(partition)}

    def unconfirmed(self) -> list[Partition]:
        """Partitions whose end must be asked for again before the records buffered can be released: the end they
        have may predate those records. Asked for every such partition, not only the empty ones, so that one that
        empties during the release need not stop it. Empty while nothing is buffered or a partition is still to be
        fetched (an answer now would be stale by the time that fetch brings its records)."""
        if not self.buffered or self.starved():
            return []
        arrivals = self.arrivals
        return sorted(p for p in self.buffers if self.confirmed.get(p, -1) < arrivals)

    def release(self, limit: int) -> list[Consumed]:
        """Up to `limit` records in merge order, as far as the order is already decided."""
        released: list[Consumed] = []
        if any(self._waiting(partition, buffer) for partition, buffer in self.buffers.items()):
            return released
        heads = [(self._sort_key(b[0]), p) for p, b in self.buffers.items() if b]
        heapq.heapify(heads)
        while heads and len(released) < limit:
            _, partition = heapq.heappop(heads)
            buffer = self.buffers[partition]
            released.append(buffer.popleft()[1])
            self.buffered -= 1
            if buffer:
                heapq.heappush(heads, (self._sort_key(buffer[0]), partition))
            elif self._waiting(partition, buffer):  # only the partition just emptied can have started to wait
                break
        return released
