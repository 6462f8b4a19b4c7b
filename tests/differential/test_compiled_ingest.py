"""Both engines on consumed Kafka batches (backstop.pipeline.ingest.ingest_batch, the service's path): the journal
topic's records, the outputs, the dead-letter topic's records (reasons with control characters escaped) and the
duplicates byte-identical, and the state after them the same."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backstop.engines import CompiledEngine, Consumed, EngineOptions, LedgerEngine, ReferenceEngine
from backstop.pipeline.topics import TopicNames
from differential.alike import consumed

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.jsonl"))
TOPICS = TopicNames("t.")


def both() -> tuple[LedgerEngine, LedgerEngine]:
    """As the service runs them: quantile points on (its BACKSTOP_ADL_QUANTILES default)."""
    options = EngineOptions(adl_quantiles=True)
    return ReferenceEngine(options), CompiledEngine(options)


def assert_alike(batches: list[list[Consumed]]) -> None:
    reference, compiled = both()
    for batch in batches:
        assert compiled.apply_records(batch, "t.") == reference.apply_records(batch, "t.")
    assert compiled.summary() == reference.summary()
    assert compiled.accounts_json() == reference.accounts_json()


@pytest.mark.parametrize("journal", EXAMPLES, ids=lambda path: path.stem)
def test_examples_consumed_alike(journal: Path) -> None:
    records = consumed(journal.read_bytes().splitlines())
    assert_alike([records[:7], records[7:], records[3:9]])  # the last batch all duplicates


BAD: list[Consumed] = [
    ("t.fills", 0, 100, b"{nope"),
    ("t.fills", 0, 101, None),
    ("t.fills", 0, 102, orjson.dumps({"type": "mark", "ts": 1, "symbol": "X", "mark_price": "1"})),
    ("t.fills", 0, 103, orjson.dumps({"type": 5})),
    ("t.unknown", 3, 7, b"{}"),
    ("t.marks", 0, 104, b'{"ts":1,"symbol":"A\\u0000\\n\\u007f","mark_price":"1"}'),
    ("t.marks", 0, 105, b'{"ts":1,"symbol":"A","mark_price":"1e5\\u0001"}'),
    ("t.marks", 0, 106, b'{"ts":1,"symbol":"A","mark_price":"1","a\\u0002b":1}'),
    ("t.marks", 0, 107, b'{"ts":NaN,"symbol":"A","mark_price":"1"}'),
    ("t.marks", 0, 108, b'{"ts":18446744073709551616,"symbol":"A","mark_price":"1"}'),
    ("t.marks", 0, 109, b'{"zz":1,"ts":1,"aa":2,"zz":3,"symbol":"A","mark_price":"1"}'),
    ("t.marks", 0, 110, b"\xff\xfe"),
    ("t.marks", 0, 111, b'{"ts":1,"symbol":"A","mark_price":"1","x":' + b"[" * 300 + b"]" * 300 + b"}"),
    ("t.marks", 0, 112, b'{"ts":1,"symbol":"A","mark_price":"1","\\u0074s":2}'),
    ("t.liquidations", 0, 113, b'{"ts":1,"liquidation_id":"l","account_id":"u","symbol":"A","qty":"1",'
                               b'"mark_price":"1","executions":[{"qty":"1","price":"1","qty":"2"}]}'),
]


def test_bad_records_dead_letter_alike() -> None:
    records = consumed(EXAMPLES[1].read_bytes().splitlines())
    assert_alike([records[:10] + BAD + records[10:]])


@given(st.lists(st.tuples(st.sampled_from([*sorted(TOPICS.inputs), "t.other"]), st.binary(max_size=30)),
                max_size=8), st.integers(0, 5))
def test_random_values_on_every_topic(noise: list[tuple[str, bytes]], split: int) -> None:
    records = consumed(EXAMPLES[2].read_bytes().splitlines(), keep_type=True)
    mixed = records[:split] + [(topic, 1, 1000 + i, value) for i, (topic, value) in enumerate(noise)] + records[split:]
    assert_alike([mixed[:split + 3], mixed[split + 3:]])
