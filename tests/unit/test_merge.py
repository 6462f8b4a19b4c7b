"""The event-time merge decides the same order however the fetches split the data and whenever they come."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from backstop.pipeline.ingest import Consumed
from backstop.pipeline.merge import Merger, event_time
from backstop.pipeline.topics import TopicNames

TOPICS = TopicNames("t.")
EXAMPLES = Path(__file__).parents[2] / "examples"
MARKS, FILLS, TRANSFERS = ("t.marks", 0), ("t.fills", 0), ("t.transfers", 0)


def on_topics(lines: list[bytes], partitions: int = 1) -> dict[tuple[str, int], list[Consumed]]:
    streams: dict[tuple[str, int], list[Consumed]] = {}
    for index, line in enumerate(lines):
        record = orjson.loads(line)
        partition = (TOPICS.input(record["type"]), index % partitions if record["type"] == "fill" else 0)
        stream = streams.setdefault(partition, [])
        stream.append(Consumed(partition[0], partition[1], len(stream), None, line))
    return streams


def merged(streams: dict[tuple[str, int], list[Consumed]], rng: random.Random) -> list[Consumed]:
    """Feed each partition in random-sized fetches, releasing in random-sized batches, like a live consumer: after
    each fetch, the caught-up partitions' ends are confirmed, as the service does with a ListOffsets request."""
    merger = Merger(TOPICS)
    cursors = dict.fromkeys(streams, 0)
    for partition, stream in streams.items():
        merger.assign(partition, 0)
        merger.confirm_end(partition, len(stream))
    out: list[Consumed] = []
    total = sum(len(s) for s in streams.values())
    while len(out) < total:
        partition = rng.choice(sorted(streams))
        take = rng.randint(0, 3)
        merger.add(partition, streams[partition][cursors[partition]:cursors[partition] + take])
        cursors[partition] = min(cursors[partition] + take, len(streams[partition]))
        for waiting in merger.unconfirmed():
            merger.confirm_end(waiting, len(streams[waiting]))
        out.extend(merger.release(rng.randint(1, 4)))
    return out


def record(partition: tuple[str, int], offset: int, ts: int) -> Consumed:
    return Consumed(partition[0], partition[1], offset, None, b'{"ts": %d}' % ts)


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


def test_an_idle_partition_does_not_hold_the_others_back_once_its_end_is_confirmed() -> None:
    merger = Merger(TOPICS)
    merger.assign(MARKS, 5)
    merger.confirm_end(MARKS, 5)  # caught up
    merger.assign(FILLS, 0)
    merger.confirm_end(FILLS, 2)
    merger.add(FILLS, [record(FILLS, 0, 7)])
    assert merger.release(10) == []  # marks' end is from before the fill was fetched
    assert merger.unconfirmed() == [FILLS, MARKS]
    merger.confirm_end(MARKS, 5)  # still nothing new on marks
    merger.confirm_end(FILLS, 2)
    assert [m.offset for m in merger.release(10)] == [0]
    assert merger.release(10) == []  # fills has one unread record left: wait for it


def test_a_partition_whose_end_is_unknown_holds_the_merge_back() -> None:
    """Issue 19 item 1: a partition the consumer had no end for yet was taken for idle, and a liquidation was
    released before the mark that came before it (which was then dead-lettered as stale)."""
    merger = Merger(TOPICS)
    merger.assign(MARKS, 0)  # no end received yet
    merger.assign(FILLS, 0)
    merger.confirm_end(FILLS, 1)
    merger.add(FILLS, [record(FILLS, 0, 2001)])
    assert merger.release(10) == []
    assert merger.starved() == {MARKS} and merger.unconfirmed() == []  # fetch it; asking for its end is not enough
    merger.observe_end(MARKS, 1)  # the next fetch response says it holds a record ...
    assert merger.release(10) == []
    merger.add(MARKS, [record(MARKS, 0, 2000)])  # ... which comes first
    assert merger.unconfirmed() == [FILLS, MARKS]
    merger.confirm_end(FILLS, 1)
    merger.confirm_end(MARKS, 1)
    assert [(m.topic, m.offset) for m in merger.release(10)] == [("t.marks", 0), ("t.fills", 0)]


def test_an_end_reported_before_other_records_arrived_must_be_confirmed() -> None:
    """A fetch response said marks was empty; records of fills fetched later may have been appended after a mark
    was: the end must be asked for again, and a record it shows must be fetched and ordered first."""
    merger = Merger(TOPICS)
    for partition in (MARKS, FILLS):
        merger.assign(partition, 0)
        merger.observe_end(partition, 0)
    merger.observe_end(FILLS, 1)
    merger.add(FILLS, [record(FILLS, 0, 2001)])
    assert merger.release(10) == [] and merger.unconfirmed() == [FILLS, MARKS]
    merger.confirm_end(MARKS, 1)  # the mark was there by then
    assert merger.release(10) == [] and merger.starved() == {MARKS}
    merger.add(MARKS, [record(MARKS, 0, 2000)])
    assert merger.unconfirmed() == [FILLS, MARKS]  # either buffer may empty during the release
    merger.confirm_end(FILLS, 1)
    merger.confirm_end(MARKS, 1)
    assert [(m.topic, m.offset) for m in merger.release(10)] == [("t.marks", 0), ("t.fills", 0)]


def test_a_repeated_delivery_is_buffered_once() -> None:
    merger = Merger(TOPICS)
    merger.assign(FILLS, 0)
    merger.add(FILLS, [record(FILLS, n, 10 + n) for n in range(3)])
    merger.add(FILLS, [record(FILLS, n, 10 + n) for n in range(1, 5)])  # 1 and 2 again, then 3 and 4
    merger.confirm_end(FILLS, 5)
    assert [m.offset for m in merger.release(10)] == [0, 1, 2, 3, 4]
    merger.add(FILLS, [record(FILLS, 4, 14)])
    assert merger.buffered == 0


def test_event_time_is_the_ts_field_and_missing_is_first() -> None:
    assert event_time(Consumed("t", 0, 0, None, b'{"a": "ts", "symbol": "X", "ts" : 123}')) == 123
    assert event_time(Consumed("t", 0, 0, None, b'{"ts": "123"}')) == -1
    assert event_time(Consumed("t", 0, 0, None, b"{oops")) == -1
    assert event_time(Consumed("t", 0, 0, None, None)) == -1


def test_a_full_buffer_names_the_partitions_it_must_still_read() -> None:
    """The buffer filled up with one partition's records while another has unread ones: nothing can be released
    until the starved partition is read, so it (and only it) is what the consumer fetches next."""
    merger = Merger(TOPICS, max_buffered=2)
    merger.assign(FILLS, 0)
    merger.confirm_end(FILLS, 10)
    merger.assign(TRANSFERS, 0)
    merger.confirm_end(TRANSFERS, 1)
    merger.add(FILLS, [record(FILLS, n, 10 + n) for n in range(2)])
    assert merger.full() and merger.release(10) == []
    assert merger.starved() == {TRANSFERS}
    merger.add(TRANSFERS, [record(TRANSFERS, 0, 5)])
    assert merger.starved() == set()
    merger.confirm_end(TRANSFERS, 1)
    assert [(m.topic, m.offset) for m in merger.release(10)] == [("t.transfers", 0), ("t.fills", 0), ("t.fills", 1)]


def test_drained_means_nothing_buffered_and_nothing_unread() -> None:
    merger = Merger(TOPICS)
    merger.assign(MARKS, 0)
    assert not merger.drained()  # its end is unknown
    merger.confirm_end(MARKS, 2)
    merger.add(MARKS, [record(MARKS, 0, 1)])
    assert not merger.drained()  # one buffered, one unread
    assert len(merger.release(10)) == 1 and not merger.drained()  # one unread
    merger.add(MARKS, [record(MARKS, 1, 2)])
    assert len(merger.release(10)) == 1 and merger.drained()
    merger.observe_end(MARKS, 3)  # a later fetch saw a new record
    assert not merger.drained()
