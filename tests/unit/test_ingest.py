"""The service's batch step, without Kafka or PostgreSQL: same outputs as a file replay, bad input to dead-letter."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson

from backstop.adapters.postgres.store import journal_relay_row
from backstop.core.engine import Engine
from backstop.core.hashing import canonical_json, record_dict
from backstop.core.processor import Processor
from backstop.core.records import JournalRecord, Posting
from backstop.pipeline.ingest import (
    BatchResult,
    Consumed,
    PostingBlock,
    ingest_batch,
    last_posting_hash,
    output_json,
    posting_block,
    posting_tail,
)
from backstop.pipeline.topics import TopicNames, input_key
from backstop.wire.decode import decode_record

EXAMPLE = Path(__file__).parents[2] / "examples" / "02-adl-walks-queue.jsonl"
TOPICS = TopicNames("t.")


def as_consumed(lines: list[bytes], *, drop_type: bool = True) -> list[Consumed]:
    """Each line on its type's topic, one partition per topic, offsets counting up per topic."""
    offsets: dict[str, int] = {}
    batch = []
    for line in lines:
        document = orjson.loads(line)
        topic = TOPICS.input(document["type"])
        if drop_type:
            del document["type"]  # on Kafka the topic names the type
        offsets[topic] = offsets.get(topic, -1) + 1
        batch.append(Consumed(topic, 0, offsets[topic], None, orjson.dumps(document)))
    return batch


def test_a_batch_gives_what_a_file_replay_gives() -> None:
    lines = EXAMPLE.read_bytes().splitlines()
    replayed = Processor(Engine())
    entries, events = [], []
    for line in lines:
        outcome = replayed.process(decode_record(line))
        entries.extend(outcome.effects.fund_entries)  # type: ignore[union-attr]
        events.extend(outcome.effects.adl_events)  # type: ignore[union-attr]
    service = Processor(Engine())
    result = ingest_batch(service, as_consumed(lines[:7]), TOPICS)
    result2 = ingest_batch(service, as_consumed(lines[7:]), TOPICS)
    assert service.engine.head_hash == replayed.engine.head_hash
    assert [r.seq for r in result.journal + result2.journal] == list(range(1, len(lines) + 1))
    assert result2.adl_events == events and result.fund_entries + result2.fund_entries == entries
    # the journal rows are the lines of a replayable file
    journal_file = Processor(Engine())
    for row in result.journal + result2.journal:
        journal_file.process(decode_record(row.payload))
    assert journal_file.engine.head_hash == replayed.engine.head_hash
    # the journal rows and the effects are published from their own tables (the relay), not copied to the outbox
    assert {m.topic for m in result.outbox + result2.outbox} <= {"t.adl-quantiles", "t.dead-letter"}
    # a journal record is the canonical JSON of its envelope, the input record (with its type) inside
    first = result.journal[0]
    fields = orjson.loads(lines[0])
    assert journal_relay_row(first) == (input_key(fields["type"], fields), "j-1", canonical_json(record_dict(
        JournalRecord(1, "j-1", 1, first.ts, first.source_topic, 0, 0, first.payload_hash, fields))).decode())


def test_bad_input_goes_to_dead_letter_and_offsets_still_advance() -> None:
    processor = Processor(Engine())
    lines = EXAMPLE.read_bytes().splitlines()
    good = as_consumed(lines)
    bad = [
        Consumed(TOPICS.input("fill"), 0, 100, None, b"{nope"),
        Consumed(TOPICS.input("fill"), 0, 101, None, None),
        Consumed(TOPICS.input("fill"), 0, 102, None, orjson.dumps({"type": "mark", "ts": 1, "symbol": "BNBUSDT",
                                                                    "mark_price": "1"})),
        Consumed(TOPICS.input("mark"), 0, 100, None, orjson.dumps({"ts": orjson.loads(lines[-1])["ts"],
                                                                     "symbol": "NOPE", "mark_price": "1"})),
        Consumed("t.unknown", 3, 7, None, b"{}"),
        Consumed(TOPICS.input("fill"), 0, 103, None, good[10].value),  # a fill sent again
        # sent again with a second qty: which one a reader takes is the parser's choice, so neither is applied
        Consumed(TOPICS.input("fill"), 0, 104, None, good[10].value[:-1] + b',"qty":"999"}'),
    ]
    result = ingest_batch(processor, good + bad, TOPICS)
    reasons = [(d.source_topic, d.source_offset, d.reason) for d in result.dead_letters]
    assert reasons == [
        ("t.fills", 100, "invalid JSON"),
        ("t.fills", 101, "empty record (tombstone)"),
        ("t.fills", 102, 'type: "mark" is not "fill", the type of the topic t.fills'),
        ("t.marks", 100, "unknown symbol NOPE"),
        ("t.unknown", 7, "not an input topic: t.unknown"),
        ("t.fills", 104, 'duplicate key "qty"'),
    ]
    assert result.duplicates == {"fill": 1}
    assert result.next_offsets[("t.fills", 0)] == 105 and result.next_offsets[("t.unknown", 3)] == 8
    assert len(result.journal) == len(lines)
    assert sum(1 for m in result.outbox if m.topic == "t.dead-letter") == 6


def test_a_reason_quoting_control_characters_is_escaped() -> None:
    processor = Processor(Engine())
    # an extra field's name, with what some reader ends a line at: C0, DEL, C1 and Unicode's two separators
    value = orjson.dumps({"ts": 1, "symbol": "X", "mark_price": "1", "X\x00\n\x7f\x85\u2028\u2029é": 1})
    result = ingest_batch(processor, [Consumed(TOPICS.input("mark"), 0, 0, None, value)], TOPICS)
    (letter,) = result.dead_letters
    assert len(letter.reason.splitlines()) == 1 and letter.reason.isprintable()
    assert "X\\x00\\x0a\\x7f\\x85\\u2028\\u2029é" in letter.reason


def test_posting_tail_counts_the_compiled_lines_after_the_reference_records_and_reads_the_last_hash() -> None:
    def tail(lines: bytes, records: int = 0) -> tuple[int, str | None]:
        result = BatchResult()
        result.posting_lines = lines
        result.postings = [Posting(1, f"p-{n}", n, 0, "transfer", "a", "b", "USDT", Decimal(1), Decimal(-1), Decimal(1),
                                   None, None, None, None, None, "0" * 64, f"r{n}") for n in range(records)]
        return posting_tail(result)

    assert tail(b"") == (0, None)
    assert tail(b"", records=2) == (2, "r1")
    assert tail(b'{"hash":"a"}\n') == (1, "a")
    assert tail(b'{"hash":"a"}\n{"hash":"b"}\n', records=1) == (3, "b")
    assert tail(b'{"hash":"a"}\n{"hash":"b"}') == (2, "b")  # a last line without its newline


def test_a_batchs_postings_are_one_block_whichever_engine_made_them() -> None:
    """posting_block: the reference engine's records become the lines the compiled engine writes, in order and
    before the lines; the block's count and first and last seqs are the postings'."""
    records = [Posting(seq, f"p-{seq}-{n}", seq, 0, "transfer", "a", "b", "USDT", Decimal(1), Decimal(-1), Decimal(1),
                       None, None, None, None, None, "0" * 64, f"r{seq}") for n, seq in enumerate((4, 4, 6))]
    lines = b"".join(output_json(r) + b"\n" for r in records)

    def block(postings: list[Posting], posting_lines: bytes) -> PostingBlock | None:
        result = BatchResult()
        result.postings, result.posting_lines = postings, posting_lines
        return posting_block(result)

    assert block([], b"") is None
    assert block(records, b"") == block([], lines) == PostingBlock(lines, 3, 4, 6)
    assert block(records[:1], b"".join(lines.splitlines(keepends=True)[1:])) == PostingBlock(lines, 3, 4, 6)
    assert block([], lines.rstrip(b"\n")) == PostingBlock(lines, 3, 4, 6)  # a last line without its newline
    assert last_posting_hash(lines.decode()) == "r6" == last_posting_hash(lines.decode().rstrip("\n"))
