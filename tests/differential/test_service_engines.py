"""The service's engine port (backstop.pipeline.service_engine) on both engines: the same consumed batches give the
same rows for the store (journal, fund ledger, ADL events, postings, findings, quantile records, dead letters, the
outbox in the same order, held identities), the same head and state hash, projection rows equal as numbers, and
the same snapshot document, which restores in either engine."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
import pytest

from backstop.adapters.postgres.store import block_keys, journal_copy_text
from backstop.core.hashing import GENESIS_HASH
from backstop.engines import ENGINES, EngineName
from backstop.pipeline import projections
from backstop.pipeline.ingest import (
    BatchResult,
    Consumed,
    JournalFacts,
    outbox_messages,
    output_json,
    posting_records,
)
from backstop.pipeline.service_engine import ServiceEngine, open_service_engine
from differential.alike import TOPICS, consumed

ROOT = Path(__file__).resolve().parents[2]
JOURNALS = sorted((ROOT / "examples").glob("*.jsonl"))


def batches(path: Path, size: int) -> list[list[Consumed]]:
    """The journal as consumed records, with bad input among them: undecodable, invalid, on a topic that is no
    input, and a record sent again (a duplicate)."""
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    records = [Consumed(topic, partition, offset, None, value)
               for topic, partition, offset, value in consumed(lines)]
    middle = len(records) // 2
    records[middle:middle] = [Consumed(TOPICS.input("fill"), 1, 0, None, b'{"not json'),
                              Consumed(TOPICS.input("mark"), 1, 0, None, b'{"symbol": "BTCUSDT", "ts": 1}'),
                              Consumed("t.unknown", 0, 0, None, b"{}")]
    records.append(records[1])
    return [records[start:start + size] for start in range(0, len(records), size)]


async def no_lookup(keys: list[bytes]) -> list[tuple[bytes, bytes, int]]:
    return []


def comparable(value: Any) -> Any:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return value


def numbers(rows: projections.Rows | None) -> list[tuple[Any, ...]] | None:
    return None if rows is None else sorted(tuple(map(comparable, row)) for row in projections.rows_of(rows))


def projection_numbers(rows: projections.Projections) -> dict[str, Any]:
    return {"wallets": numbers(rows.wallets), "positions": numbers(rows.positions),
            "closed": sorted(projections.rows_of(rows.closed_positions)), "funds": numbers(rows.funds),
            "lots": numbers(rows.lots), "adl_queue": numbers(rows.adl_queue)}


def store_rows(result: BatchResult) -> dict[str, Any]:
    """Everything the store writes of a batch, as bytes and plain values: the journal's COPY text as the store sends
    it (the compiled engine's built in Rust, the reference's encoded in Python), which is also what Python encodes of
    the compiled engine's rows."""
    if result.journal_copy:
        assert result.journal_copy == journal_copy_text(result.journal_rows())
        # what the service reads of the rows, found in Rust without them, is what the rows say
        assert result.journal_facts() == JournalFacts.of_rows(result.journal_rows())
    if result.quantile_keys:
        assert result.quantile_keys == block_keys(result.quantile_block)
    return {
        "journal": result.journal_rows(), "facts": result.journal_facts(),
        "journal_copy": result.journal_copy or journal_copy_text(result.journal_rows()),
        "digest": result.journal_digest(GENESIS_HASH),
        "quantile_keys": result.quantile_keys or block_keys(result.quantile_block),
        "outbox": outbox_messages(result), "held_ids": result.held_ids,
        "duplicates": result.duplicates, "next_offsets": result.next_offsets,
        "dead_letters": result.dead_letters,
        "records": [output_json(r) for r in (*result.fund_entries, *result.adl_events,
                                                              *result.findings, *posting_records(result))],
        "touched": (result.touched_accounts, result.touched_symbols, result.touched_positions,
                    result.closed_positions),
    }


async def drive(engine: ServiceEngine, journal: list[list[Consumed]]) -> list[dict[str, Any]]:
    seen = []
    for batch in journal:
        await engine.prepare(batch, engine.identities(batch, TOPICS), no_lookup, committed_seq=0)
        result = engine.apply(batch, TOPICS, {})
        touched = projections.Touched.of(result)
        seen.append({**store_rows(result), "head": engine.head(),
                     "rows": projection_numbers(engine.projections(result, touched, refresh_all=False))})
    return seen


def opened(name: EngineName, state: dict[str, Any] | None = None) -> ServiceEngine:
    return open_service_engine(name, state, check_conservation=True, adl_quantiles=True)


@pytest.mark.parametrize("path", JOURNALS, ids=lambda p: p.stem)
@pytest.mark.parametrize("size", [1, 7, 5000])
async def test_both_engines_give_the_service_the_same_rows(path: Path, size: int) -> None:
    journal = batches(path, size)
    reference, compiled = opened("reference"), opened("compiled")
    assert reference.name == "reference" and compiled.name == "compiled"
    seen = await drive(reference, journal)
    assert seen == await drive(compiled, journal)
    assert reference.state_hash() == compiled.state_hash()
    assert reference.snapshot() == compiled.snapshot()
    assert reference.ledger_sum() == compiled.ledger_sum() == 0
    everything = [projection_numbers(engine.projections(BatchResult(), projections.Touched(), refresh_all=True))
                  for engine in (reference, compiled)]
    assert everything[0] == everything[1]
    accounts, _, pairs, _ = seen[-1]["touched"]
    # whole, and less the rows the last batch wrote as of the same seq
    for written in (None, projections.Touched(set(accounts), set(pairs))):
        refresh, compiled_refresh = (
            (r.seq, numbers(b"".join(r.wallets)), numbers(b"".join(r.positions)), numbers(r.adl_queue))
            for r in (reference.full_refresh(written), compiled.full_refresh(written)))
        assert refresh == compiled_refresh


async def test_both_engines_write_a_reason_holding_line_ends_as_one_line_alike() -> None:
    """A dead letter's reason quotes the bad input (here an extra field's name): what some reader ends a line at
    (C0, DEL, C1, U+2028, U+2029) is escaped by both engines, in one spelling."""
    value = orjson.dumps({"ts": 1, "symbol": "X", "mark_price": "1", "X\x00\n\x7f\x85\u2028\u2029é": 1})
    journal = [[Consumed(TOPICS.input("mark"), 0, 0, None, value)]]
    seen = await drive(opened("reference"), journal)
    assert seen == await drive(opened("compiled"), journal)
    (letter,) = seen[0]["dead_letters"]
    assert "X\\x00\\x0a\\x7f\\x85\\u2028\\u2029é" in letter.reason and len(letter.reason.splitlines()) == 1


async def test_both_engines_name_the_positions_a_batch_closed() -> None:
    """The rows a batch deletes are the positions the engine closed (fills, liquidations, deleverages): the same in
    both engines, batch by batch."""
    journal = batches(ROOT / "examples" / "07-adl-lab.jsonl", 5)
    named = []
    for engine in (opened("reference"), opened("compiled")):
        closed = []
        for batch in journal:
            await engine.prepare(batch, engine.identities(batch, TOPICS), no_lookup, committed_seq=0)
            closed.append(sorted(engine.apply(batch, TOPICS, {}).closed_positions))
        named.append(closed)
    assert named[0] == named[1]
    # the example's last batch: L's position is liquidated and C2's is taken whole by the deleverage
    assert named[0] == [[], [], [], [("C2", "XUSDT", "both"), ("L", "XUSDT", "both")]]


@pytest.mark.parametrize("written_by", ENGINES)
@pytest.mark.parametrize("restored_in", ENGINES)
async def test_a_snapshot_written_by_either_engine_restores_in_either(written_by: EngineName,
                                                                      restored_in: EngineName) -> None:
    import orjson

    journal = batches(ROOT / "examples" / "07-adl-lab.jsonl", 5)
    half = len(journal) // 2
    writer = opened(written_by)
    await drive(writer, journal[:half])
    seq, state_hash, document = writer.snapshot()
    restored = opened(restored_in, orjson.loads(document)["engine"])
    assert (restored.last_seq, restored.state_hash()) == (seq, state_hash)
    straight = opened(restored_in)
    await drive(straight, journal[:half])
    after = await drive(restored, journal[half:])
    assert [step["head"][:4] for step in after] == [step["head"][:4] for step in await drive(straight, journal[half:])]
    assert restored.state_hash() == straight.state_hash()


def test_without_the_compiled_engine_the_service_runs_the_reference_and_says_so_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from backstop.pipeline import service_engine

    monkeypatch.setattr(service_engine, "compiled_available", lambda: "the compiled engine is not built")
    monkeypatch.setattr(service_engine, "_fell_back", [])
    assert [opened("compiled").name for _ in range(3)] == ["reference"] * 3
    said = [r.getMessage() for r in caplog.records if "not built" in r.getMessage()]
    assert said == ["the compiled engine is not built; the service runs the reference engine (Python) meanwhile"]


def test_settings_choose_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from backstop.settings import Settings

    assert Settings().engine == "compiled"
    monkeypatch.setenv("BACKSTOP_ENGINE", "reference")
    assert Settings().engine == "reference"
    monkeypatch.setenv("BACKSTOP_ENGINE", "fast")
    with pytest.raises(ValueError, match="compiled"):
        Settings()


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_rebuild_over_a_journal_older_than_applied_ids_holds_its_identities(engine: EngineName) -> None:
    """Journal rows whose identities the table does not hold (written before it existed) are re-applied as
    themselves, and the rebuild hands their identities to store.hold."""
    writer = opened("reference")
    [batch] = batches(ROOT / "examples" / "07-adl-lab.jsonl", 5000)
    await writer.prepare(batch, writer.identities(batch, TOPICS), no_lookup, committed_seq=0)
    written = writer.apply(batch, TOPICS, {})
    assert written.held_ids

    async def journal() -> Any:
        for row in written.journal:
            yield row.seq, row.payload

    rebuilt = opened(engine)
    await rebuilt.replay(journal(), no_lookup)
    assert rebuilt.head() == writer.head()._replace(duplicates=0, rejected=0)
    assert sorted(rebuilt.drain_held()) == sorted(written.held_ids)


async def test_a_record_an_engine_fails_on_is_a_poison_record_then_dead_lettered_alike(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault hook (backstop.faults.engine_panic_on) fails each engine right after it applied a fill: the compiled
    engine's panic and the reference's exception both come out as the PoisonRecord naming that record, the compiled
    engine refuses every later call, and engines opened afresh with that record quarantined give the same rows, its
    dead letter (engine_error) included."""
    from backstop import faults
    from backstop.core.errors import InvariantViolation
    from backstop.pipeline.ingest import PoisonRecord

    journal = batches(ROOT / "examples" / "02-adl-walks-queue.jsonl", 4)
    flat = [record for batch in journal for record in batch]
    victim = next(r for r in flat if r.topic == TOPICS.input("fill") and b'"fill_id"' in (r.value or b""))
    fill_id = orjson.loads(victim.value or b"")["fill_id"]
    where = (victim.topic, victim.partition, victim.offset)
    monkeypatch.setenv(faults.ENGINE_PANIC_ENV, fill_id)
    reasons = {}
    for name in ENGINES:
        engine = opened(name)
        with pytest.raises(PoisonRecord) as raised:
            await drive(engine, journal)
        assert raised.value.where == where
        assert raised.value.reason.startswith("engine error: ") and fill_id in raised.value.reason
        reasons[name] = raised.value.reason
        if name == "compiled":
            with pytest.raises(InvariantViolation, match="the engine stopped earlier"):
                engine.state_hash()
    quarantined = {}
    for name in ENGINES:
        engine = opened(name)
        seen = []
        for batch in journal:
            await engine.prepare(batch, engine.identities(batch, TOPICS), no_lookup, committed_seq=0)
            seen.append(store_rows(engine.apply(batch, TOPICS, {where: reasons["compiled"]})))
        quarantined[name] = seen, engine.head(), engine.state_hash()
    assert quarantined["reference"] == quarantined["compiled"]
    letters = [letter for step in quarantined["compiled"][0] for letter in step["dead_letters"]]
    assert [(letter.kind, letter.reason) for letter in letters if letter.kind == "engine_error"] == [
        ("engine_error", reasons["compiled"])]


async def test_a_stored_journal_row_the_compiled_engine_panics_on_stops_the_rebuild_naming_its_seq(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A committed row cannot be quarantined: a rebuild that panics on one stops the service and names its seq."""
    from backstop import faults
    from backstop.core.errors import InvariantViolation

    lines = [line for line in (ROOT / "examples" / "02-adl-walks-queue.jsonl").read_bytes().splitlines()
             if line.strip()]
    rows = [(seq, orjson.dumps(orjson.loads(line))) for seq, line in enumerate(lines, start=1)]
    victim = next(seq for seq, payload in rows if orjson.loads(payload).get("fill_id") == "f-A1")
    monkeypatch.setenv(faults.ENGINE_PANIC_ENV, "f-A1")

    async def stored() -> Any:
        for row in rows:
            yield row

    with pytest.raises(InvariantViolation, match=rf"^compiled engine: journal row {victim} does not re-apply, the "
                                                 rf"engine panicked on it: fault hook: panic after applying record "
                                                 rf"f-A1$"):
        await opened("compiled").replay(stored(), no_lookup)
