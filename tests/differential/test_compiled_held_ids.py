"""The service's path in both engines (docs/design.md §4.1, In the service): consumed Kafka batches through
`apply_records` with identities held per batch — the held ones among each batch's records looked up once per batch
from a table standing in for applied_ids, behind the service's filter (backstop.pipeline.held_ids.ServiceIds; the
compiled service's in Rust, _engine.HeldIds) — decide exactly what an engine holding every identity in memory
decides, and what `backstop replay` of the same records decides; after a restart from a snapshot too.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backstop import _engine
from backstop.core.dedupe import HeldRow, pack_rows, unpack_rows
from backstop.core.ordering import MAX_AHEAD_MS, MAX_LATENESS_MS
from backstop.engines import ENGINES, Consumed, EngineName, EngineOptions, LedgerEngine, RecordsResult, open_engine
from backstop.pipeline.held_ids import ServiceIds
from backstop.pipeline.ingest import Consumed as IngestConsumed
from backstop.pipeline.ingest import batch_identities
from differential.alike import TOPICS, consumed, run
from differential.test_compiled_admission import admission_journal
from property.strategies import SYMBOLS, journals, outlier, outlier_kinds, timed

PREFIX = "t."


class AppliedIds:
    """applied_ids in a dict: its primary key refuses an identity twice; every lookup is one query."""

    def __init__(self) -> None:
        self.rows: dict[bytes, HeldRow] = {}
        self.queries = 0

    async def held(self, keys: list[bytes]) -> list[HeldRow]:
        self.queries += 1
        return [self.rows[key] for key in keys if key in self.rows]

    def hold(self, rows: list[HeldRow]) -> None:
        for row in rows:
            assert row[0] not in self.rows, "an identity held twice"
            self.rows[row[0]] = row


class Service:
    """An engine of the batch API whose identities are held per batch, and what the service keeps beside it: the
    reference's filter (ServiceIds, the identities read from each record's JSON) or the compiled service's
    (_engine.HeldIds, the identities of the records that decode, computed in Rust)."""

    def __init__(self, name: EngineName, table: AppliedIds, snapshot: Any = None) -> None:
        self.table = table
        self.ids: ServiceIds | _engine.HeldIds = ServiceIds() if name == "reference" else _engine.HeldIds()
        self.ids.load(b"".join(table.rows))  # a start loads the filter from applied_ids
        self.engine = open_engine(name, EngineOptions(held_ids="per_batch"), snapshot)

    def apply(self, batch: list[Consumed]) -> RecordsResult:
        committed = self.engine.events_applied
        if isinstance(self.ids, ServiceIds):  # as the service's reference path does (ingest.resolve_identities)
            keys = batch_identities([IngestConsumed(t, p, o, None, v) for t, p, o, v in batch], TOPICS)
            self.ids.committed(committed)
            asked = self.ids.unresolved(keys)
            self.ids.resolve(asked, asyncio.run(self.table.held(asked)) if asked else [])
            held = self.ids.answers(keys)
        else:  # as backstop.pipeline.service_engine.CompiledService does
            packed = _engine.batch_keys(batch, PREFIX)
            asked = self.ids.unresolved(packed, committed)
            found = asyncio.run(self.table.held([asked[at:at + 16] for at in range(0, len(asked), 16)]))
            self.ids.resolve(asked, pack_rows(found))
            held = self.ids.answers(packed)
        result = self.engine.apply_records(batch, PREFIX, held)
        self.ids.applied(result.held_ids)
        drained = self.ids.drain()
        self.table.hold(drained if isinstance(drained, list) else unpack_rows(drained))  # the batch's transaction
        return result


def in_memory(name: EngineName) -> LedgerEngine:
    return open_engine(name, EngineOptions())


def split(records: list[Consumed], cuts: list[int]) -> list[list[Consumed]]:
    bounds = [0, *sorted({min(cut, len(records)) for cut in cuts}), len(records)]
    return [records[a:b] for a, b in itertools.pairwise(bounds)]


def identity_rows(ids: bytes) -> list[HeldRow]:
    """The rows of an identity file (backstop.core.idstore's one run: four little-endian columns)."""
    count = int.from_bytes(ids[16:24], "little")
    column = [[int.from_bytes(ids[24 + 8 * (c * count + i): 32 + 8 * (c * count + i)], "little") for i in range(count)]
              for c in range(4)]
    return [(high.to_bytes(8, "big") + low.to_bytes(8, "big"), content.to_bytes(8, "big"), seq)
            for high, low, content, seq in zip(*column, strict=True)]


def decide_alike(journal: list[dict[str, Any]], cuts: list[int], restart: int | None, tmp: Path) -> None:
    lines = [orjson.dumps(record) for record in journal]
    batches = split(consumed(lines), cuts)
    memory = {name: in_memory(name) for name in ENGINES}
    table = {name: AppliedIds() for name in ENGINES}
    service = {name: Service(name, table[name]) for name in ENGINES}
    letters: list[tuple[str, str]] = []
    for number, batch in enumerate(batches):
        if number == restart:  # a new process: the filter from the table, the engine from a snapshot
            snapshot = memory["compiled"].snapshot(0)
            service = {name: Service(name, table[name], snapshot) for name in ENGINES}
        expected = memory["reference"].apply_records(batch, PREFIX)
        assert memory["compiled"].apply_records(batch, PREFIX) == expected
        for name in ENGINES:
            assert service[name].apply(batch) == expected, (name, number)
        letters += [(letter["kind"], letter["reason"])
                    for letter in map(orjson.loads, expected.dead_letters.splitlines())]
    held = identity_rows(memory["reference"].snapshot(0).ids)
    assert sorted(table["reference"].rows.values()) == sorted(table["compiled"].rows.values()) == held
    summary = memory["reference"].summary()
    for name in ENGINES:
        assert service[name].engine.state_hash() == summary["state_hash"]
    # what `backstop replay` of the same records, in the order consumed, decides
    path = tmp / "journal.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    replayed = run(path, tmp / "replay", "compiled")
    replay_summary = orjson.loads(replayed["summary.json"])
    for key in ("head_hash", "state_hash", "events_applied", "duplicates", "rejected", "conflicting_duplicates"):
        assert replay_summary[key] == summary[key], key
    assert [(letter["kind"], letter["reason"]) for letter in map(orjson.loads, replayed["dead-letter.jsonl"]
                                                                   .splitlines())] == letters


def test_every_admission_rule_through_kafka_batches_and_a_restart(tmp_path: Path) -> None:
    journal = admission_journal()
    decide_alike(journal, [7, 9, 12, 30, 45, 50, 55], restart=4, tmp=tmp_path)


@given(journal=journals(), data=st.data())
def test_generated_journals_through_kafka_batches_decide_as_replay_does(
        journal: list[dict[str, Any]], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory) -> None:
    journal = data.draw(timed(journal, jitter=True))
    far = max(record["ts"] for record in journal) + MAX_AHEAD_MS + 1
    for number in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(journal)))
        base = journal[min(at, len(journal) - 1)]["ts"]
        ts = data.draw(st.sampled_from([far + number, base + 11 * 3_600_000, base - MAX_LATENESS_MS - 1]))
        journal.insert(at, outlier(data.draw(outlier_kinds), number, max(ts, 0),
                                   data.draw(st.sampled_from(sorted(SYMBOLS)))))
    for _ in range(data.draw(st.integers(0, 4))):  # identities sent again, in another batch or the same one
        original = journal[data.draw(st.integers(0, len(journal) - 1))]
        again = {**original, **({"qty": "7"} if "qty" in original and data.draw(st.booleans()) else {})}
        journal.insert(data.draw(st.integers(journal.index(original) + 1, len(journal))), again)
    cuts = data.draw(st.lists(st.integers(1, len(journal)), max_size=6))
    restart = data.draw(st.none() | st.integers(1, len(cuts))) if cuts else None
    decide_alike(journal, cuts, restart, tmp_path_factory.mktemp("held"))


def test_one_lookup_per_batch_and_the_engine_decides_from_what_it_is_given() -> None:
    """An engine with per-batch identities asks nothing: an identity not given with the batch is not held. Given
    what the service's filter and table hold, a batch sent again is all duplicates."""
    records = consumed([orjson.dumps(record) for record in admission_journal()])
    for name in ENGINES:
        table = AppliedIds()
        service = Service(name, table)
        first = service.apply(records[:20])
        assert service.apply(records[:20]).journal == b"" and table.queries <= 2
        assert service.apply(records[20:]).journal
        bare = open_engine(name, EngineOptions(held_ids="per_batch"))
        assert bare.apply_records(records[:20], PREFIX, b"").journal == first.journal
        assert bare.apply_records(records[:20], PREFIX, b"").journal.count(b"\n") > 0  # nothing given: not held
