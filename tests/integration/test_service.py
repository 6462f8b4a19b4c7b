"""The service against the real broker and database: same ledger as `backstop replay`, duplicates dropped,
bad input dead-lettered, and kill -9 at any point ends with exactly the ledger of an uninterrupted run."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from service_harness import (
    ServeProcess,
    assert_same_outcome,
    in_process,
    input_ends,
    published,
    settings_for,
    stored,
    two_runs,
    wait_caught_up,
    wait_projections,
    wait_refreshed,
)

from backstop.adapters.kafka.tools import ensure_topics, produce_file
from backstop.engines import EngineName
from backstop.entrypoints.cli import main as cli
from backstop.service import metrics
from backstop.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.jsonl"))
# Examples `backstop replay` runs in the reference engine (none: the compiled engine has the inverse rules too).
REFERENCE_ONLY: set[str] = set()


def engine_for(example: Path) -> list[str]:
    return ["--engine", "reference"] if example.stem in REFERENCE_ONLY else []


def replay_file(journal: Path, out: Path, engine: list[str] | None = None) -> dict[str, Any]:
    """As the service runs the journal: with quantile points (BACKSTOP_ADL_QUANTILES defaults to on), which the state
    hash depends on."""
    assert cli(["replay", str(journal), "--adl-quantiles", "--out", str(out), *(engine or [])]) == 0
    lines = {name: [json.loads(x) for x in (out / f"{name}.jsonl").read_text().splitlines()]
             for name in ("fund-ledger", "adl-events")}
    return {"summary": json.loads((out / "summary.json").read_text()), **lines}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
async def test_the_service_gives_what_backstop_replay_gives(example: Path, tmp_path: Path, kafka_bootstrap: str,
                                                           topic_prefix: str, migrated_database: str) -> None:
    engine = engine_for(example)
    expected = replay_file(example, tmp_path / "replay", engine)
    # the full projection on every batch that finds the service caught up, so the last one is in the ADL queue table
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}{example.stem[:2]}.",
                            adl_refresh_event_ms=1)
    async with in_process(settings) as (processor, _):
        await produce_file(settings, example)
        await wait_caught_up(migrated_database, applied=expected["summary"]["events_applied"])
        await wait_refreshed(processor)
    have = await stored(migrated_database)
    await _projections_match(migrated_database, tmp_path / "replay", example)
    assert have["fund_ledger"] == expected["fund-ledger"]
    assert have["adl_events"] == expected["adl-events"]
    assert have["head"]["head_hash"] == expected["summary"]["head_hash"]
    assert have["head"]["state_hash"] == expected["summary"]["state_hash"]
    out = await published(settings)
    assert sorted(out["fund-ledger"], key=lambda r: r["id"]) == sorted(expected["fund-ledger"], key=lambda r: r["id"])
    assert sorted(out["adl-events"], key=lambda r: r["id"]) == sorted(expected["adl-events"], key=lambda r: r["id"])
    assert [r["seq"] for r in sorted(out["journal"], key=lambda r: r["seq"])] == list(
        range(1, expected["summary"]["events_applied"] + 1))
    # the stored journal replays to the stored hashes, and exports as a file that replays the same
    assert await asyncio.to_thread(cli, ["replay", "--from-postgres", migrated_database, "--out",
                                         str(tmp_path / "pg"), *engine]) == 0
    export = tmp_path / "export.jsonl"
    assert await asyncio.to_thread(cli, ["journal", "export", "--dsn", migrated_database, "--out", str(export)]) == 0
    assert replay_file(export, tmp_path / "again", engine)["summary"]["head_hash"] == expected["summary"]["head_hash"]
    # and so does the journal topic, against the head hash the output topics carry
    import os

    os.environ["BACKSTOP_TOPIC_PREFIX"] = settings.topic_prefix
    try:
        assert await asyncio.to_thread(cli, ["replay", "--from-kafka", kafka_bootstrap, "--out",
                                             str(tmp_path / "kafka"), *engine]) == 0
    finally:
        del os.environ["BACKSTOP_TOPIC_PREFIX"]


async def test_the_state_hash_is_recorded_once_the_input_has_been_quiet(tmp_path: Path, kafka_bootstrap: str,
                                                                       topic_prefix: str,
                                                                       migrated_database: str) -> None:
    """Hashing the whole state holds the loop up (0.7 s at 137,000 positions): the pauses of a live stream do not
    trigger it, only BACKSTOP_STATE_HASH_QUIET_MS of quiet does, and then it is the replay's state hash. The ADL
    index, by contrast, is refreshed after a moment's quiet."""
    example = EXAMPLES[0]
    expected = replay_file(example, tmp_path / "replay")
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}qh.", state_hash_quiet_ms=5000)
    async with in_process(settings) as (ledger_processor, _):
        await produce_file(settings, example)
        applied = expected["summary"]["events_applied"]
        await wait_caught_up(migrated_database, applied=applied, state_hash=False)
        head = (await stored(migrated_database))["head"]
        assert head["seq"] == applied and head["state_hash_seq"] != applied  # caught up, not yet quiet for 5 s
        # quiet for a moment: the ADL index has caught up with the trading, ahead of the next deleverage
        for _ in range(100):
            if ledger_processor.progress.adl_index_seq == applied:
                break
            await asyncio.sleep(0.05)
        assert ledger_processor.progress.adl_index_seq == applied
        assert (await stored(migrated_database))["head"]["state_hash_seq"] != applied  # still within the 5 s
        await wait_caught_up(migrated_database, applied=applied)
    head = (await stored(migrated_database))["head"]
    assert head["state_hash_seq"] == applied and head["state_hash"] == expected["summary"]["state_hash"]


async def test_duplicates_are_dropped_and_bad_input_is_dead_lettered(tmp_path: Path, kafka_bootstrap: str,
                                                                    topic_prefix: str, migrated_database: str) -> None:
    example = REPO / "examples" / "01-isolated-liquidation-surplus.jsonl"
    expected = replay_file(example, tmp_path / "replay")
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}bad.")
    fills = f"{settings.topic_prefix}fills"
    async with in_process(settings):
        await produce_file(settings, example)
        await wait_caught_up(migrated_database, applied=9)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            for value in (b"{not json", b'{"ts": 1, "fill_id": "x"}', b'{"type": "mark", "ts": 1}'):
                await producer.send_and_wait(fills, value, key=b"u9")
            await producer.send_and_wait(f"{settings.topic_prefix}marks", orjson.dumps(
                {"ts": 1760000000009, "symbol": "NOPE", "mark_price": "1"}), key=b"NOPE")
        finally:
            await producer.stop()
        await produce_file(settings, example)  # every record again: all duplicates
        await wait_caught_up(migrated_database, applied=9)
        await _until(lambda: _dead_letters(migrated_database), 4)
    have = await stored(migrated_database)
    assert have["journal"] == 9 and have["head"]["duplicates"] == 9
    assert have["head"]["head_hash"] == expected["summary"]["head_hash"]
    reasons = [(d["source_topic"].split(".")[-1], d["reason"].split(":")[0]) for d in have["dead_letter"]]
    assert reasons == [("fills", "invalid JSON"), ("fills", "fill.account_id"), ("fills", "type"),
                       ("marks", "unknown symbol NOPE")]
    assert have["dead_letter"][2]["reason"] == f'type: "mark" is not "fill", the type of the topic {fills}'
    assert [d["source_offset"] for d in have["dead_letter"][:3]] == [2, 3, 4]  # after the two fills of the example
    out = await published(settings)
    assert len(out["dead-letter"]) == 4 and out["dead-letter"][0]["raw"] == "{not json"
    assert len(out["fund-ledger"]) == len({r["id"] for r in out["fund-ledger"]}) == 2


async def _projections_match(dsn: str, replay_out: Path, journal: Path, *, queue: bool = True) -> None:
    """The PostgreSQL projections say what accounts.json and summary.json of the replay say, and (with `queue`)
    the ADL queue table holds the exact ranking of the final state."""
    from decimal import Decimal

    import asyncpg

    from backstop.core.engine import Engine
    from backstop.core.processor import Processor
    from backstop.core.state import position_label
    from backstop.pipeline.projections import adl_rows
    from backstop.wire.decode import decode_record

    replayed = Processor(Engine())
    for line in journal.read_bytes().splitlines():
        replayed.process(decode_record(line))
    ranked = [row[:6] for row in adl_rows(replayed.engine, replayed.engine.last_seq)]

    accounts = json.loads((replay_out / "accounts.json").read_text())
    funds = json.loads((replay_out / "summary.json").read_text())["funds"]
    connection = await asyncpg.connect(dsn)
    try:
        wallets = {(r["account_id"], r["asset"]): r["wallet"] for r in await connection.fetch(
            "SELECT * FROM account_wallets")}
        positions = {(r["account_id"], position_label(r["symbol"], r["position_side"])): r
                     for r in await connection.fetch("SELECT * FROM positions")}  # accounts.json's keys
        fund_rows = {r["fund_id"]: r for r in await connection.fetch("SELECT * FROM funds")}
        stored_queue = [(r["symbol"], r["side"], r["account_id"], r["rank"], r["score"], r["quantile"])
                        for r in await connection.fetch("SELECT * FROM adl_queue ORDER BY symbol, side, rank")]
    finally:
        await connection.close()
    traders = {k: v for k, v in accounts.items() if not k.startswith("fund:")}
    assert wallets == {(a, asset): Decimal(w) for a, v in traders.items() for asset, w in v["wallets"].items()}
    assert set(positions) == {(a, s) for a, v in traders.items() for s in v["positions"]}
    for (account_id, symbol), row in positions.items():
        want = traders[account_id]["positions"][symbol]
        assert (row["qty"], row["entry_price"], row["margin_mode"]) == (
            Decimal(want["qty"]), Decimal(want["entry_price"]), want["margin_mode"])
    assert {f: r["balance"] for f, r in fund_rows.items()} == {f: Decimal(v["balance"]) for f, v in funds.items()}
    if queue:
        assert stored_queue == ranked


async def _dead_letters(dsn: str) -> int:
    return len((await stored(dsn))["dead_letter"])


async def _until(probe: Any, value: int, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe() >= value:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {value}")


async def test_rows_touched_while_catching_up_are_all_written_once_caught_up(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    """Catching up, the wallets and positions batches touch wait (projections.Touched) and go out with the batch
    that finds the service caught up. The second half arrives while the service runs, in more records than one
    batch holds, and no full refresh comes after the first (none is due: no funding, cadence out of reach): only
    the rows that waited can make the tables right."""
    lines = [line for line in _generated_journal(tmp_path / "journal.jsonl", 3000, seed=11).read_bytes().splitlines(
        keepends=True) if orjson.loads(line)["type"] != "funding"]  # funding refreshes every row
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"".join(lines[:1500]))
    second.write_bytes(b"".join(lines[1500:]))
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}cu.", batch_max_records=150,
                            adl_refresh_events=10**9, adl_refresh_event_ms=10**12)
    ensure_topics(settings)
    await produce_file(settings, first)
    async with in_process(settings) as (processor, _relay):
        await wait_caught_up(migrated_database, ends=await input_ends(settings))
        batches = processor.progress.batches
        await produce_file(settings, second)
        await wait_caught_up(migrated_database, ends=await input_ends(settings))
        assert processor.progress.batches - batches >= 5
        export = tmp_path / "export.jsonl"
        assert await asyncio.to_thread(cli, ["journal", "export", "--dsn", migrated_database, "--out",
                                             str(export)]) == 0
        replay_file(export, tmp_path / "replay")
        await _projections_match(migrated_database, tmp_path / "replay", export, queue=False)


def _generated_journal(path: Path, events: int, seed: int) -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from journal_gen import generate

    generate(path, events=events, seed=seed)
    return path


@pytest.mark.parametrize("engines", [("compiled",), ("reference", "compiled")], ids=["compiled", "switching"])
async def test_kill_9_anywhere_ends_with_the_ledger_of_an_uninterrupted_run(
        engines: tuple[EngineName, ...], tmp_path: Path, kafka_bootstrap: str, topic_prefix: str,
        databases: Any) -> None:
    """`engines`: the faulted run's processes take them in turn (switching: each restart rebuilds on the other
    engine from what the one before wrote, snapshots included); the uninterrupted run is on the compiled engine."""
    journal = _generated_journal(tmp_path / "journal.jsonl", 3000, seed=7)
    reference, faulted = await two_runs(databases, kafka_bootstrap, f"{topic_prefix}k", journal,
                                        input_partitions=3, batch_max_records=150, relay_batch=40,
                                        snapshot_every_events=700)
    reference_dsn, faulted_dsn = reference.dsn(), faulted.dsn()
    serve = ServeProcess(reference, tmp_path / "reference.log")
    try:
        serve.wait_healthy()
        await wait_caught_up(reference_dsn, ends=await input_ends(reference), timeout=180)
        serve.wait_projections()
        metrics = serve.get("/metrics")
        applied = sum(float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("backstop_events_applied_total{"))
        assert applied == (await stored(reference_dsn))["journal"]
        assert "backstop_outbox_backlog 0.0" in metrics and "backstop_batch_seconds_bucket" in metrics
    finally:
        serve.stop()
    # with three partitions per input topic the service's (event-time) order may differ from the file's, so the
    # reference is the service itself, uninterrupted
    expected = (await stored(reference_dsn))["journal"]

    starts = iter(range(10))

    def faulted_on_next_engine() -> Settings:
        return faulted.model_copy(update={"engine": engines[next(starts) % len(engines)]})

    # each fault must find work left, whatever the timing: the first three commit at most 2 + 4 + 1 of the 20 or more
    # batches (3,000 records, at most 150 a batch), so the last process still has rows to relay
    for fault in ("in_transaction@3", "after_commit@4", "in_transaction@2", "relay_after_send@3",
                  "relay_part_acked@2"):
        crashed = ServeProcess(faulted_on_next_engine(), tmp_path / "faulted.log", fault=fault)
        assert crashed.wait_exit(timeout=180) == -9, f"{fault}: {(tmp_path / 'faulted.log').read_text()[-2000:]}"
        crashed.stop()
    serve = ServeProcess(faulted_on_next_engine(), tmp_path / "faulted.log")
    try:
        serve.wait_healthy()
        await asyncio.sleep(1.0)
        serve.kill()  # and once more from outside, at whatever point it is
        serve.stop()
        serve = ServeProcess(faulted_on_next_engine(), tmp_path / "faulted.log")
        serve.wait_healthy()
        await wait_caught_up(faulted_dsn, applied=expected, ends=await input_ends(faulted), timeout=180)
        serve.wait_projections()
    finally:
        serve.stop()

    assert (await stored(faulted_dsn))["journal"] == expected
    await assert_same_outcome(reference, faulted)
    log = (tmp_path / "faulted.log").read_text()
    assert all(f"on the {engine} engine" in log for engine in engines)


async def test_audit_verify_over_the_database_catches_a_doctored_row(tmp_path: Path, kafka_bootstrap: str,
                                                                     topic_prefix: str,
                                                                     migrated_database: str) -> None:
    import asyncpg

    example = REPO / "examples" / "06-bad-debt.jsonl"
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}audit.")
    async with in_process(settings):
        await produce_file(settings, example)
        await wait_caught_up(migrated_database, applied=14)
    assert await asyncio.to_thread(cli, ["audit", "verify", "--dsn", migrated_database]) == 0
    connection = await asyncpg.connect(migrated_database)
    try:
        # the owner can switch the append-only triggers off: that is what the audit is for
        await connection.execute("ALTER TABLE fund_ledger DISABLE TRIGGER USER")
        await connection.execute("UPDATE fund_ledger SET record = replace(record, '\"amount\":\"-600\"', "
                                 "'\"amount\":\"-60\"') WHERE kind = 'liquidation_loss'")
    finally:
        await connection.close()
    assert await asyncio.to_thread(cli, ["audit", "verify", "--dsn", migrated_database]) == 1


async def test_a_full_merge_buffer_applies_backpressure_and_still_drains(tmp_path: Path, kafka_bootstrap: str,
                                                                          topic_prefix: str, databases: Any) -> None:
    """With the merge buffer far smaller than the input, fetching stops for the partitions that filled it and goes
    on for the ones holding the order back; the outcome is that of a run with a roomy buffer."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from journal_gen import generate

    journal = tmp_path / "journal.jsonl"
    generate(journal, events=20000, seed=5)
    roomy, small = await two_runs(databases, kafka_bootstrap, f"{topic_prefix}bp", journal, input_partitions=3)
    small = small.model_copy(update={"merge_max_buffered": 1000, "batch_max_records": 200})
    held = []
    for settings in (roomy, small):
        before = metrics.REGISTRY.get_sample_value("backstop_merge_backpressure_total") or 0.0
        async with in_process(settings) as (processor, _):
            await wait_caught_up(settings.dsn(), ends=await input_ends(settings), timeout=300)
            await wait_projections(processor)
        held.append((metrics.REGISTRY.get_sample_value("backstop_merge_backpressure_total") or 0.0) - before)
    # the small buffer filled and fetching was held to the partitions holding the order back; the roomy one never
    assert held[0] == 0 and held[1] > 0, held
    await assert_same_outcome(roomy, small)
