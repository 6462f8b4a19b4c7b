"""Kafka in memory: topics of partitions of records, a consumer and a publisher of the service's ports.

The consumer models what the merge depends on: a fetch response per broker node, carrying up to some records of
each of that node's partitions and each partition's end as of that response; records a response brought are
handed out over later fetches (aiokafka's buffer), and a partition with records still buffered is not fetched
again. A well-behaved broker (`Orderly`) answers every fetch from one node with everything there is; the simulator
passes a `Disorder` drawn from its seed: nodes that answer late (their partitions' ends grow stale), fetch sizes,
pauses between responses during which producers append, deliveries repeated, partitions whose leader is away.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

from backstop.pipeline.ingest import Consumed
from backstop.service.ports import (
    RECORD_ID_HEADER,
    EndsUnavailable,
    Fetched,
    InputGap,
    Outgoing,
    Partition,
    Tail,
    listed,
    partition_for,
    place_header,
    tail_in_headers,
)

WAIT_STEP_S = 0.05  # a fetch with nothing to hand out looks again this often until its timeout


class StoredRecord(NamedTuple):
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class UnknownTopic(Exception):
    pass


class MemoryBroker:
    """The topics: what outlives every process that reads or writes them."""

    def __init__(self) -> None:
        self.topics: dict[str, list[list[StoredRecord]]] = {}
        self.ids: dict[str, str] = {}  # each topic's id, new each time it is created (as Kafka's topic ids)
        self.created = 0  # topics created so far
        self.appends = 0  # records appended so far, to every topic

    def create(self, topic: str, partitions: int) -> None:
        if topic not in self.topics:
            self.topics[topic] = [[] for _ in range(partitions)]
            self.created += 1
            self.ids[topic] = str(uuid.UUID(int=self.created))

    def delete(self, topic: str) -> None:
        del self.topics[topic], self.ids[topic]

    def partitions(self, topic: str) -> int:
        if topic not in self.topics:
            raise UnknownTopic(f"topic {topic} does not exist (run `backstop topics create`)")
        return len(self.topics[topic])

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
               headers: tuple[tuple[str, bytes], ...] = ()) -> int:
        log = self.topics[topic][partition]
        log.append(StoredRecord(key, value, headers))
        self.appends += 1
        return len(log) - 1

    def end(self, partition: Partition) -> int:
        return len(self.topics[partition[0]][partition[1]])

    def read(self, partition: Partition, start: int, stop: int) -> list[Consumed]:
        topic, number = partition
        log = self.topics[topic][number]
        return [Consumed(topic, number, offset, log[offset].key, log[offset].value)
                for offset in range(start, min(stop, len(log)))]


class Disorder(Protocol):
    """How a consumer's fetches behave."""

    def node_of(self, partition: Partition) -> int: ...

    def answers(self, node: int) -> bool:
        """Whether the node's response to this fetch is here (else its partitions keep the ends they had)."""
        ...

    def take(self, partition: Partition, available: int) -> int:
        """How many of the records available a response carries (the fetch size)."""
        ...

    def pause(self) -> float:
        """Seconds between two responses, or before an answer to a request for ends."""
        ...

    def repeat(self, partition: Partition, delivered: int) -> int:
        """How many of the records delivered to hand out again (the fetch position moved back)."""
        ...

    def away(self, partition: Partition) -> bool:
        """The partition's leader is away: no fetch response and no end for it now."""
        ...


class Orderly:
    def node_of(self, partition: Partition) -> int:
        return 0

    def answers(self, node: int) -> bool:
        return True

    def take(self, partition: Partition, available: int) -> int:
        return available

    def pause(self) -> float:
        return 0.0

    def repeat(self, partition: Partition, delivered: int) -> int:
        return 0

    def away(self, partition: Partition) -> bool:
        return False


class MemoryConsumer:
    """`request_timeout_s`: an end asked of a partition whose leader is away fails after this long (aiokafka's
    request_timeout_ms)."""

    def __init__(self, broker: MemoryBroker, disorder: Disorder | None = None, *,
                 request_timeout_s: float = 30.0) -> None:
        self.broker = broker
        self.disorder = disorder or Orderly()
        self.request_timeout_s = request_timeout_s
        self.started = False
        self.position: dict[Partition, int] = {}  # the next offset to hand out
        self.first: dict[Partition, int] = {}  # where reading started (a repeat never goes below it)
        self.buffered: dict[Partition, list[Consumed]] = {}  # fetched, not handed out yet
        self.ends: dict[Partition, int] = {}  # as the last response for the partition said

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        return {topic: self.broker.ids[topic] for topic in topics if topic in self.broker.ids}

    async def assign(self, topics: Sequence[str], positions: Mapping[Partition, int]
                     ) -> tuple[dict[Partition, int], dict[Partition, int]]:
        """As the port says; a log here starts at 0 (nothing expires), so only a position beyond its end is a gap."""
        partitions = [(topic, number) for topic in topics for number in range(self.broker.partitions(topic))]
        for partition in partitions:
            self.position[partition] = self.first[partition] = positions.get(partition, 0)
            self.buffered[partition] = []
        ends = await self.end_offsets(partitions)
        for partition, position in self.position.items():
            if position > ends[partition]:
                raise InputGap(f"input {partition[0]}[{partition[1]}]: the stored position {position} lies beyond "
                               f"the log's end {ends[partition]} (a topic created again, or records the broker "
                               f"lost); the service reads on once the log reaches offset {position} (the offsets "
                               f"below it name records the journal holds)")
        return dict(self.position), ends

    async def fetch(self, *, only: set[Partition] | None, max_records: int, timeout_ms: int) -> Fetched:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            if not any(self.buffered[p] for p in self._eligible(only)):
                await self._responses(only)
            records = self._hand_out(only, max_records)
            if records or loop.time() >= deadline:
                return Fetched(records, dict(self.position), dict(self.ends))
            await asyncio.sleep(min(WAIT_STEP_S, deadline - loop.time()))

    async def end_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_s
        while any(self.disorder.away(p) for p in partitions):
            if loop.time() >= deadline:
                raise EndsUnavailable(f"no answer for the ends of {sorted(partitions)} in {self.request_timeout_s} s")
            await asyncio.sleep(WAIT_STEP_S)
        pause = self.disorder.pause()
        if pause:
            await asyncio.sleep(pause)
        return {p: self.broker.end(p) for p in partitions}

    def _eligible(self, only: set[Partition] | None) -> list[Partition]:
        return [p for p in sorted(self.position) if only is None or p in only]

    async def _responses(self, only: set[Partition] | None) -> None:
        """One response per node that answers, each a view of its partitions at its own moment."""
        disorder = self.disorder
        nodes: dict[int, list[Partition]] = {}
        for partition in self._eligible(only):
            if not self.buffered[partition] and not disorder.away(partition):
                nodes.setdefault(disorder.node_of(partition), []).append(partition)
        for node in sorted(nodes):
            if not disorder.answers(node):
                continue
            for partition in nodes[node]:
                start = self.position[partition]
                end = self.broker.end(partition)
                size = disorder.take(partition, max(end - start, 0))
                if size:
                    self.buffered[partition] = self.broker.read(partition, start, start + size)
                self.ends[partition] = end
            pause = disorder.pause()
            if pause:
                await asyncio.sleep(pause)

    def _hand_out(self, only: set[Partition] | None, max_records: int) -> dict[Partition, list[Consumed]]:
        out: dict[Partition, list[Consumed]] = {}
        room = max_records
        for partition in self._eligible(only):
            buffer = self.buffered[partition]
            if not buffer or room <= 0:
                continue
            taken, self.buffered[partition] = buffer[:room], buffer[room:]
            out[partition] = taken
            room -= len(taken)
            self.position[partition] = taken[-1].offset + 1
            again = self.disorder.repeat(partition, self.position[partition] - self.first[partition])
            if again:  # the position moves back: those records come again with a later fetch
                self.position[partition] -= again
                self.buffered[partition] = []
        return out


class MemoryPublisher:
    """The output topics' side of the relay. `interpose` runs before each record is appended (the simulator fails a
    send part-way through, or kills the process there)."""

    def __init__(self, broker: MemoryBroker, interpose: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.broker = broker
        self._interpose = interpose

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        return {topic: self.broker.partitions(topic) for topic in topics}

    async def last_published(self, counts: Mapping[str, int]) -> dict[Partition, Tail]:
        found: dict[Partition, Tail] = {}
        for topic, partitions in counts.items():
            for number in range(partitions):
                log = self.broker.topics[topic][number]
                tail = tail_in_headers(log[-1].headers) if log else None
                if tail is not None:
                    found[(topic, number)] = tail
        return found

    async def send(self, outgoing: Outgoing) -> Counter[str]:
        sent: Counter[str] = Counter()
        rows, partitions = listed(outgoing.rows), outgoing.partitions
        if partitions is None:
            partitions = [partition_for(row.key, self.broker.partitions(row.topic)) for row in rows]
        for row, partition in zip(rows, partitions, strict=True):
            if self._interpose is not None:
                await self._interpose("publish")
            self.broker.append(row.topic, partition, row.key.encode(), row.payload.encode(),
                               ((place_header(row), str(row.id).encode()), (RECORD_ID_HEADER, row.record_id.encode())))
            sent[row.topic] += 1
        return sent
