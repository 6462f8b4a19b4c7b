"""The relay's record batches encoded in Rust (crates/backstop-engine/src/kafka_batch.rs) against aiokafka's own
batch builder (the relay's path without the compiled engine): the same batches, split at the same records, the same
bytes once sealed with the same producer state; aiokafka's reader takes them back, CRC and all; and Kafka's default
partitioner's choice for every key."""

from __future__ import annotations

from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from backstop import _engine
from backstop.adapters.kafka.publisher import PLACE_HEADERS, compiled_batches, python_batches
from backstop.adapters.postgres.store import OUTBOX, TABLE_SOURCES, OutboxRow
from backstop.service.ports import RECORD_ID_HEADER, Outgoing, place_header

TOPICS = {"t.journal": 3, "t.adl-quantiles": 1, "t.postings": 5}
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def outgoing(draw: st.DrawFn) -> tuple[Outgoing, int]:
    rows = draw(st.lists(st.builds(
        lambda place, topic, key, record_id, payload, source: OutboxRow(place, topic, key, record_id, payload,
                                                                       source),
        st.integers(0, 2**62), st.sampled_from(sorted(TOPICS)), text, text,
        st.one_of(text, st.integers(0, 3000).map(lambda n: "x" * n)),
        st.sampled_from([OUTBOX, *TABLE_SOURCES])), max_size=60))
    given_partitions = draw(st.booleans())
    partitions = [draw(st.integers(0, TOPICS[row.topic] - 1)) for row in rows] if given_partitions else None
    return Outgoing(rows, partitions), draw(st.sampled_from([200, 4096, 512 << 10]))


def sealed(batches: list[tuple[str, int, int, object]]) -> list[tuple[str, int, int, bytes]]:
    out = []
    for topic, partition, records, batch in batches:
        batch._set_producer_state(7, 2, 1000 + records)  # type: ignore[attr-defined]
        out.append((topic, partition, records, batch._build()))  # type: ignore[attr-defined]
    return out


@settings(max_examples=300, deadline=None)
@given(outgoing(), st.integers(0, 2**41))
def test_the_compiled_batches_are_aiokafkas_byte_for_byte(case: tuple[Outgoing, int], timestamp_ms: int) -> None:
    sending, max_bytes = case
    compiled = sealed(compiled_batches(sending, TOPICS, timestamp_ms, max_bytes))
    assert compiled == sealed(python_batches(sending, TOPICS, timestamp_ms, max_bytes))
    assert sum(records for _, _, records, _ in compiled) == len(sending.rows)


@settings(max_examples=100, deadline=None)
@given(outgoing(), st.integers(0, 2**41))
def test_aiokafka_reads_each_row_back_from_its_partitions_batches_in_order(case: tuple[Outgoing, int],
                                                                           timestamp_ms: int) -> None:
    sending, max_bytes = case
    read: dict[tuple[str, int], list[tuple[bytes, bytes, list[tuple[str, bytes]], int]]] = {}
    for topic, partition, records, data in sealed(compiled_batches(sending, TOPICS, timestamp_ms, max_bytes)):
        batch = DefaultRecordBatch(data)
        assert batch.validate_crc() and batch.producer_id == 7 and batch.base_sequence == 1000 + records
        got = [(r.key, r.value, list(r.headers), r.timestamp) for r in batch]
        assert len(got) == records
        read.setdefault((topic, partition), []).extend(got)
    partitions = sending.partitions or [(murmur2(r.key.encode()) & 0x7FFFFFFF) % TOPICS[r.topic]
                                        for r in sending.rows]
    want: dict[tuple[str, int], list[tuple[bytes, bytes, list[tuple[str, bytes]], int]]] = {}
    for row, partition in zip(sending.rows, partitions, strict=True):
        want.setdefault((row.topic, partition), []).append(
            (row.key.encode(), row.payload.encode(),
             [(place_header(row), str(row.id).encode()), (RECORD_ID_HEADER, row.record_id.encode())], timestamp_ms))
    assert read == want


@given(st.binary(max_size=80), st.integers(1, 1000))
def test_the_partition_of_a_key_is_kafkas_default_partitioners(key: bytes, partitions: int) -> None:
    assert _engine.kafka_partition(key, partitions) == (murmur2(key) & 0x7FFFFFFF) % partitions


def test_every_source_has_the_header_place_header_gives_it() -> None:
    for source in (OUTBOX, *TABLE_SOURCES):
        assert PLACE_HEADERS[source] == place_header(OutboxRow(1, "t", "k", "r", "p", source))
