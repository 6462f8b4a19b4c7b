"""The event-time merge decides the same order however the fetches split the data."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from backstop.pipeline.ingest import Consumed
from backstop.pipeline.merge import Merger, event_time
from backstop.pipeline.topics import TopicNames

TOPICS = TopicNames("t.")
EXAMPLES = Path(__file__).parents[2] / "examples"


def on_topics(lines: list[bytes], partitions: int = 1) -> dict[tuple[str, int], list[Consumed]]:
    streams: dict[tuple[str, int], list[Consumed]] = {}
    for index, line in enumerate(lines):
        record = orjson.loads(line)
        partition = (TOPICS.input(record["type"]), index % partitions if record["type"] == "fill" else 0)
        stream = streams.setdefault(partition, [])
        stream.append(Consumed(partition[0], partition[1], len(stream), None, line))
    return streams


def merged(streams: dict[tuple[str, int], list[Consumed]], rng: random.Random) -> list[Consumed]:
    """Feed each partition in random-sized fetches, releasing in random-sized batches, like a live consumer."""
    merger = Merger(TOPICS)
    cursors = dict.fromkeys(streams, 0)
    for partition, stream in streams.items():
        merger.assign(partition, 0)
        merger.set_end(partition, len(stream))
    out: list[Consumed] = []
    total = sum(len(s) for s in streams.values())
    while len(out) < total:
        partition = rng.choice(sorted(streams))
        take = rng.randint(0, 3)
        merger.add(streams[partition][cursors[partition]:cursors[partition] + take])
        cursors[partition] = min(cursors[partition] + take, len(streams[partition]))
        out.extend(merger.release(rng.randint(1, 4)))
    return out


def test_the_order_does_not_depend_on_fetch_boundaries() -> None:
    lines = b"".join(p.read_bytes() for p in sorted(EXAMPLES.glob("*.jsonl"))[:2]).splitlines()
    streams = on_topics(lines, partitions=3)
    orders = {tuple((m.topic, m.partition, m.offset) for m in merged(streams, random.Random(seed)))
              for seed in range(30)}
    assert len(orders) == 1


def test_every_example_file_is_already_in_merge_order() -> None:
    """So the service, reading the examples from Kafka, applies them in file order (and gets the same hashes)."""
    for path in sorted(EXAMPLES.glob("*.jsonl")):
        lines = path.read_bytes().splitlines()
        order = [m.value for m in merged(on_topics(lines), random.Random(1))]
        assert order == lines, path.name


def test_an_idle_partition_does_not_hold_the_others_back() -> None:
    merger = Merger(TOPICS)
    merger.assign(("t.marks", 0), 5)
    merger.set_end(("t.marks", 0), 5)  # caught up
    merger.assign(("t.fills", 0), 0)
    merger.set_end(("t.fills", 0), 2)
    merger.add([Consumed("t.fills", 0, 0, None, b'{"ts": 7}')])
    assert [m.offset for m in merger.release(10)] == [0]
    assert merger.release(10) == []  # fills has one unread record left: wait for it


def test_event_time_is_the_ts_field_and_missing_is_first() -> None:
    assert event_time(Consumed("t", 0, 0, None, b'{"a": "ts", "symbol": "X", "ts" : 123}')) == 123
    assert event_time(Consumed("t", 0, 0, None, b'{"ts": "123"}')) == -1
    assert event_time(Consumed("t", 0, 0, None, b"{oops")) == -1
    assert event_time(Consumed("t", 0, 0, None, None)) == -1


def test_a_full_buffer_names_the_partitions_it_must_still_read() -> None:
    """The buffer filled up with one partition's records while another has unread ones: nothing can be released
    until the starved partition is read, so it (and only it) is what the consumer fetches next."""
    merger = Merger(TOPICS, max_buffered=2)
    merger.assign(("t.fills", 0), 0)
    merger.set_end(("t.fills", 0), 10)
    merger.assign(("t.transfers", 0), 0)
    merger.set_end(("t.transfers", 0), 1)
    merger.add([Consumed("t.fills", 0, n, None, b'{"ts": %d}' % (10 + n)) for n in range(2)])
    assert merger.full() and merger.release(10) == []
    assert merger.starved() == {("t.transfers", 0)}
    merger.add([Consumed("t.transfers", 0, 0, None, b'{"ts": 5}')])
    assert merger.starved() == set()
    assert [(m.topic, m.offset) for m in merger.release(10)] == [("t.transfers", 0), ("t.fills", 0), ("t.fills", 1)]


def test_drained_means_nothing_buffered_and_nothing_unread() -> None:
    merger = Merger(TOPICS)
    merger.assign(("t.marks", 0), 0)
    merger.set_end(("t.marks", 0), 2)
    merger.add([Consumed("t.marks", 0, 0, None, b'{"ts": 1}')])
    assert not merger.drained()  # one buffered, one unread
    assert len(merger.release(10)) == 1 and not merger.drained()  # one unread
    merger.add([Consumed("t.marks", 0, 1, None, b'{"ts": 2}')])
    assert len(merger.release(10)) == 1 and merger.drained()
    merger.set_end(("t.marks", 0), 3)  # a later fetch saw a new record
    assert not merger.drained()
