"""The service's side of admission, without Kafka or PostgreSQL (a dict stands in for applied_ids): identities looked
up once per batch decide what a file replay decides; dead letters carry their kind and the seq they follow; a record
the engine raises on is quarantined and the batch goes on without it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from test_ingest import TOPICS, as_consumed

from backstop.core.dedupe import Held, identity, identity_of_fields, key_digest
from backstop.core.engine import Engine
from backstop.core.errors import InvariantViolation
from backstop.core.processor import Processor, Rejection
from backstop.pipeline import held_ids
from backstop.pipeline.held_ids import ServiceIds
from backstop.pipeline.ingest import (
    RAW_KEEP_BYTES,
    BatchResult,
    Consumed,
    PoisonRecord,
    batch_identities,
    ingest_batch,
    replay_journal,
    resolve_identities,
)
from backstop.wire.decode import decode_record
from scenario import fill, fund, funding, instrument, liquidation, mark, run, transfer

T0 = 1_900_000_000_000
SETUP = [fund(ts=T0), instrument(tick="0.1", lot="0.001", ts=T0), transfer("seed", "fund:MAIN", "100000", ts=T0),
         transfer("d-u", "u", "10000", ts=T0), transfer("d-v", "v", "10000", ts=T0)]
POISON = fill("poison", "p", "buy", "1", "50000", ts=T0 + 3)  # valid: the engine below raises on it (a bug)


class Database:
    """applied_ids in a dict: what the service's store holds once a batch commits."""

    def __init__(self) -> None:
        self.rows: dict[bytes, tuple[bytes, bytes, int]] = {}
        self.journal: list[tuple[int, bytes]] = []  # (seq, payload): the journal table
        self.queries = 0

    async def held(self, keys: list[bytes]) -> list[tuple[bytes, bytes, int]]:
        self.queries += 1
        return [self.rows[key] for key in keys if key in self.rows]

    def commit(self, result: BatchResult) -> None:
        for row in result.held_ids:
            assert row[0] not in self.rows  # the primary key
            self.rows[row[0]] = row
        self.journal.extend((row.seq, row.payload) for row in result.journal)

    def service(self) -> Processor:
        """The service's processor as a (re)start rebuilds it: the filter loaded from the table, the journal
        re-applied (nothing recent)."""
        ids = ServiceIds(len(self.rows))
        ids.load(b"".join(self.rows))
        processor = Processor(Engine(ids=ids))

        async def rows() -> AsyncIterator[tuple[int, bytes]]:
            for row in self.journal:
                yield row

        asyncio.run(replay_journal(processor, rows(), self.held))
        ids.drain()  # held already
        return processor


def lines(records: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(record) for record in records]


def batch(processor: Processor, database: Database, consumed: list[Consumed]) -> BatchResult:
    asyncio.run(resolve_identities(processor, batch_identities(consumed, TOPICS), database.held,
                                   committed_seq=processor.engine.last_seq))
    result = ingest_batch(processor, consumed, TOPICS)
    database.commit(result)
    return result


def test_identities_read_from_json_are_the_identities_of_the_decoded_records() -> None:
    for record in (fill("f:1/@x", "u", "buy", "1", "1"), transfer("t", "u", "1"), liquidation("l", "u", "1", "1"),
                   funding("0.1", "1", symbol="ETHUSDT", ts=12)):
        assert identity_of_fields(record["type"], record) == identity(decode_record(orjson.dumps(record)))
    assert identity_of_fields("mark", mark("1")) is None
    assert identity_of_fields("funding", {**funding("0.1", "1"), "ts": True}) is None  # not an integer: dead letter


def test_after_a_restart_the_service_decides_duplicates_from_the_table_as_a_replay_does() -> None:
    first = [*SETUP, fill("f-1", "u", "buy", "1", "50000", ts=T0 + 1), fill("f-2", "v", "sell", "1", "50000",
                                                                          ts=T0 + 1)]
    later = [mark("50100", ts=T0 + 60_000), fill("f-1", "u", "buy", "1", "50000", ts=T0 + 1),
             transfer("d-u", "u", "99", ts=T0 + 60_001), fill("f-3", "u", "sell", "1", "50100", ts=T0 + 60_002)]
    database = Database()
    service = database.service()
    batch(service, database, as_consumed(lines(first)))
    assert len(database.rows) == 5  # three transfers, two fills
    restarted = database.service()
    result = batch(restarted, database, as_consumed(lines(later)))
    replayed, outcomes = run([*first, *later])
    assert [(d.kind, d.reason) for d in result.dead_letters] == [
        ("conflicting_duplicate", "conflicting_duplicate: transfer id d-u is held by seq 4 with other content")]
    assert [(d.kind, d.reason) for d in result.dead_letters] == [(o.kind, o.reason) for o in outcomes
                                                                 if isinstance(o, Rejection)]
    assert result.duplicates == {"fill": 1}
    assert restarted.engine.head_hash == replayed.engine.head_hash
    assert [row.seq for row in result.journal] == [8, 9]


def test_rebuilding_from_the_journal_re_applies_identities_the_table_holds_by_those_very_seqs() -> None:
    database = Database()
    service = database.service()
    batch(service, database, as_consumed(lines([*SETUP, fill("f-1", "u", "buy", "1", "50000", ts=T0 + 1)])))
    restarted = database.service()
    assert restarted.engine.head_hash == service.engine.head_hash
    assert restarted.engine.dedupe.document() == service.engine.dedupe.document()


def test_one_query_per_batch_and_none_for_identities_the_filter_rules_out() -> None:
    database = Database()
    service = database.service()
    batch(service, database, as_consumed(lines(SETUP)))
    restarted = database.service()
    queries = database.queries
    batch(restarted, database, as_consumed(lines([fill(f"new-{i}", "u", "buy", "0.001", "50000", ts=T0 + i)
                                                  for i in range(1, 200)])))
    assert database.queries - queries <= 1  # 199 new identities: at most the filter's false positives asked


def test_an_identity_the_filter_cannot_rule_out_must_have_been_looked_up() -> None:
    ids = ServiceIds()
    key = key_digest("fill:x")
    ids.load(key)
    with pytest.raises(InvariantViolation, match="was not looked up"):
        ids.held(key)
    ids.resolve([key], [(key, bytes(8), 3)])
    assert ids.held(key) == Held(bytes(8), 3)


def test_recent_identities_are_dropped_once_committed_and_the_filter_still_knows_them() -> None:
    ids = ServiceIds()
    keys = [hashlib.sha256(str(i).encode()).digest()[:16] for i in range(held_ids.RECENT_KEEP + 10)]
    for seq, key in enumerate(keys, start=1):
        ids.add(key, bytes(8), seq)
    assert len(ids.drain()) == len(keys)
    ids.committed(len(keys) - 5)
    assert ids.held(keys[-1]) == Held(bytes(8), len(keys))  # not committed: still recent
    assert ids.unresolved([keys[0], keys[-1]]) == [keys[0]]  # committed: PostgreSQL decides, the filter says maybe
    assert len(ids) == len(keys)


def test_dead_letters_carry_their_kind_and_the_seq_they_follow() -> None:
    records = [*SETUP, fill("a", "u", "buy", "1", "50000", ts=T0 + 1), transfer("a", "u", "1", ts=T0 + 2),
               transfer("a", "u", "2", ts=T0 + 3), mark("1", symbol="NOPE", ts=T0 + 4),
               mark("50000", ts=T0 + 5 * 24 * 3_600_000)]
    consumed = [*as_consumed(lines(records)), Consumed(TOPICS.input("fill"), 0, 99, None, b"{")]
    result = ingest_batch(Processor(), consumed, TOPICS)
    assert [(d.kind, d.after_seq) for d in result.dead_letters] == [
        ("conflicting_duplicate", 7), ("rejected", 7), ("ahead", 7), ("invalid", 7)]
    record = result.dead_letters[0].record()
    assert (record.kind, record.after_seq) == ("conflicting_duplicate", 7)


def test_a_dead_letter_carries_bytes_that_are_not_utf8_exactly_and_says_when_it_cut_them() -> None:
    bad, long = b'{"fill_id":"\xff"', b"[" * (RAW_KEEP_BYTES + 1)
    consumed = [Consumed(TOPICS.input("fill"), 0, 1, None, bad), Consumed(TOPICS.input("fill"), 0, 2, None, long)]
    letters = [d.record() for d in ingest_batch(Processor(), consumed, TOPICS).dead_letters]
    assert [(d.raw, d.raw_base64, d.raw_truncated) for d in letters] == [
        (bad.decode(errors="replace"), base64.b64encode(bad).decode(), False),
        ("[" * RAW_KEEP_BYTES, None, True)]


def test_a_record_the_engine_raises_on_stops_the_batch_and_once_quarantined_is_dead_lettered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The numeric bounds of docs/design.md §9 turn every known crash into an invalid record, so a bug is simulated:
    a fill handler that raises half-way through the poison fill, after it changed the engine."""
    on_fill = Engine._handlers["fill"]

    def buggy(engine: Engine, record: Any) -> None:
        on_fill(engine, record)
        if record.fill_id == "poison":
            raise ArithmeticError("a bug after the position was opened")

    monkeypatch.setitem(Engine._handlers, "fill", buggy)
    records = [*SETUP, POISON, fill("after", "u", "buy", "1", "50000", ts=T0 + 4)]
    consumed = as_consumed(lines(records))
    with pytest.raises(PoisonRecord) as raised:
        ingest_batch(Processor(), consumed, TOPICS)
    poison = raised.value
    assert poison.where == (TOPICS.input("fill"), 0, 0)
    assert poison.reason == "engine error: ArithmeticError: a bug after the position was opened"
    service = Processor()  # rebuilt: the engine the failed batch half-changed is dropped
    result = ingest_batch(service, consumed, TOPICS, {poison.where: poison.reason})
    assert [(d.kind, d.reason, d.source_offset) for d in result.dead_letters] == [
        ("engine_error", poison.reason, 0)]
    assert [row.type for row in result.journal][-1] == "fill"
    assert service.engine.positions.get("u", "BTCUSDT").qty == Decimal(1)
    assert service.engine.positions.get("p", "BTCUSDT") is None
