"""Deterministic interleaving of the input partitions: an event-time merge.

Inputs arrive on several topics and partitions; the order in which they are applied is decided here, once, and
recorded in the journal. Records are released in order of (ts, type rank, topic, partition, offset), and a
record is released only when every partition that still has unread records (its position is below its end
offset) has at least one record buffered. So, given the same topic contents, the order does not depend on how
fetches happened to split the data: a restart after a crash re-reads from the stored offsets and decides the same
order again. A partition that is caught up (idle) does not hold the others back.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable

import orjson

from backstop.pipeline.ingest import Consumed
from backstop.pipeline.topics import INPUT_TYPES, TopicNames

Partition = tuple[str, int]
_TYPE_RANK = {t: i for i, t in enumerate(INPUT_TYPES)}
_UNKNOWN_TS = -1  # undecodable records carry no ts: they go first, straight to dead-letter


def event_time(message: Consumed) -> int:
    """The record's ts; -1 when it has none (it will be dead-lettered)."""
    if not message.value:
        return _UNKNOWN_TS
    try:
        document = orjson.loads(message.value)
    except orjson.JSONDecodeError:
        return _UNKNOWN_TS
    ts = document.get("ts") if isinstance(document, dict) else None
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else _UNKNOWN_TS


class Merger:
    def __init__(self, topics: TopicNames, *, max_buffered: int = 100_000) -> None:
        self.topics = topics
        self.max_buffered = max_buffered
        self.buffers: dict[Partition, deque[Consumed]] = {}
        self.next_fetch: dict[Partition, int] = {}  # offset after the last record buffered
        self.end_offsets: dict[Partition, int] = {}
        self.buffered = 0

    def assign(self, partition: Partition, position: int) -> None:
        self.buffers.setdefault(partition, deque())
        self.next_fetch[partition] = position

    def advance(self, partition: Partition, position: int) -> None:
        """The consumer's fetch position moved (past records or transaction markers it did not return)."""
        if position > self.next_fetch.get(partition, 0):
            self.next_fetch[partition] = position

    def set_end(self, partition: Partition, end_offset: int) -> None:
        self.end_offsets[partition] = end_offset

    def add(self, messages: Iterable[Consumed]) -> None:
        for message in messages:
            partition = (message.topic, message.partition)
            self.buffers.setdefault(partition, deque()).append(message)
            self.next_fetch[partition] = message.offset + 1
            self.buffered += 1

    def full(self) -> bool:
        return self.buffered >= self.max_buffered

    def drained(self) -> bool:
        """Nothing buffered and nothing unread as far as the last fetch knew: the input is caught up."""
        return self.buffered == 0 and all(self.next_fetch.get(p, 0) >= self.end_offsets.get(p, 0)
                                          for p in self.buffers)

    def _sort_key(self, message: Consumed) -> tuple[int, int, str, int, int]:
        record_type = self.topics.type_of(message.topic)
        rank = _TYPE_RANK.get(record_type, -1) if record_type else -1
        return (event_time(message), rank, message.topic, message.partition, message.offset)

    def _starving(self, partition: Partition, buffer: deque[Consumed]) -> bool:
        return not buffer and self.next_fetch.get(partition, 0) < self.end_offsets.get(partition, 0)

    def starved(self) -> set[Partition]:
        """Partitions with unread records but nothing buffered: they hold the order back, so a full buffer must
        still fetch from them (and only them), or it would wait forever for itself to drain."""
        return {partition for partition, buffer in self.buffers.items() if self._starving(partition, buffer)}

    def _blocked(self) -> bool:
        """Some partition is starved: releasing now could break the order."""
        return any(self._starving(partition, buffer) for partition, buffer in self.buffers.items())

    def release(self, limit: int) -> list[Consumed]:
        """Up to `limit` records in merge order, as far as the order is already decided."""
        released: list[Consumed] = []
        if self._blocked():
            return released
        heads = [(self._sort_key(b[0]), p) for p, b in self.buffers.items() if b]
        heapq.heapify(heads)
        while heads and len(released) < limit:
            _, partition = heapq.heappop(heads)
            buffer = self.buffers[partition]
            released.append(buffer.popleft())
            self.buffered -= 1
            if buffer:
                heapq.heappush(heads, (self._sort_key(buffer[0]), partition))
            elif self._starving(partition, buffer):  # only the partition just emptied can have become starved
                break
        return released
