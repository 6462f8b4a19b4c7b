"""Admission through the real service (docs/design.md §4): identities applied once, ever, across restarts, from
PostgreSQL; conflicting duplicates and a record far ahead dead-lettered with their kinds, and the journal the file
replay gives; a record that crashes the engine dead-lettered while the records after it apply exactly once; and the
service's journal with its dead letters put back replays to the same decisions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from service_harness import in_process, input_ends, published, settings_for, stored, wait_caught_up

from backstop import faults
from backstop.adapters.kafka.tools import produce_file
from backstop.core.dedupe import identity, key_digest
from backstop.entrypoints.cli import main as cli
from backstop.pipeline.topics import TopicNames, input_key
from backstop.service import metrics
from backstop.wire.decode import decode_record
from scenario import fill, fund, instrument, liquidation, mark, transfer

T0 = 1_900_000_000_000
DAY = 24 * 3_600_000
SETUP = [fund(ts=T0), instrument(tick="0.1", lot="0.001", ts=T0), transfer("seed", "fund:MAIN", "100000", ts=T0),
         transfer("d-u", "u", "10000", ts=T0), transfer("d-v", "v", "10000", ts=T0),
         transfer("d-w", "w", "10000", ts=T0)]
OPEN = [fill("open-u", "u", "buy", "0.02", "50000", mode="isolated", leverage="50", ts=T0 + 1000),
        fill("open-v", "v", "sell", "0.01", "50000", ts=T0 + 1000),
        fill("open-w", "w", "sell", "0.01", "50000", ts=T0 + 1000)]
POISON = fill("poison", "p", "buy", "99999999999999999999", "99999999999999999999", mode="isolated",
              leverage="0.000000000000000001", ts=T0 + 4000)


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
    return path


def replay(journal: Path, out: Path) -> dict[str, Any]:
    assert cli(["replay", str(journal), "--out", str(out)]) == 0
    return {"summary": json.loads((out / "summary.json").read_text()),
            "dead": [json.loads(line) for line in (out / "dead-letter.jsonl").read_text().splitlines()],
            "fund-ledger": [json.loads(line) for line in (out / "fund-ledger.jsonl").read_text().splitlines()],
            "adl-events": [json.loads(line) for line in (out / "adl-events.jsonl").read_text().splitlines()]}


async def rows(dsn: str, query: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await connection.fetch(query)]
    finally:
        await connection.close()


async def send(bootstrap: str, topics: TopicNames, records: list[dict[str, Any]], compression: str | None = None
               ) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                                compression_type=compression)
    await producer.start()
    try:
        for record in records:
            value = {k: v for k, v in record.items() if k != "type"}
            await producer.send_and_wait(topics.input(record["type"]), orjson.dumps(value),
                                         key=input_key(record["type"], record).encode())
    finally:
        await producer.stop()


async def assert_identities_held_once(dsn: str) -> None:
    """applied_ids holds exactly the identities of the journal, each by the seq of its journal row."""
    journal = await rows(dsn, "SELECT seq, payload FROM journal ORDER BY seq")
    expected = {}
    for row in journal:
        found = identity(decode_record(row["payload"].encode()))
        if found is not None:
            assert key_digest(found) not in expected, f"{found} applied twice"
            expected[key_digest(found)] = row["seq"]
    held = {r["id_digest"]: r["seq"] for r in await rows(dsn, "SELECT id_digest, seq FROM applied_ids")}
    assert held == expected


async def decisions_replay_alike(dsn: str, topics: TopicNames, out: Path) -> None:
    """The journal with every dead letter's record put back after its after_seq is the service's input in the order
    it decided it: a file replay of it gives the same journal and the same dead letters."""
    journal = await rows(dsn, "SELECT seq, payload FROM journal ORDER BY seq")
    dead = await rows(dsn, "SELECT source_topic, raw, reason, kind, after_seq FROM dead_letter ORDER BY id")
    lines, by_seq = [], {}
    for letter in dead:
        record = {"type": topics.type_of(letter["source_topic"]), **orjson.loads(letter["raw"])}
        by_seq.setdefault(letter["after_seq"], []).append(orjson.dumps(record))
    lines.extend(by_seq.pop(0, []))
    for row in journal:
        lines.append(row["payload"].encode())
        lines.extend(by_seq.pop(row["seq"], []))
    assert not by_seq
    (out.parent / "decided.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    replayed = replay(out.parent / "decided.jsonl", out)
    head = (await stored(dsn))["head"]
    assert replayed["summary"]["head_hash"] == head["head_hash"]
    assert replayed["summary"]["events_applied"] == len(journal)
    assert [(d["kind"], d["reason"]) for d in replayed["dead"]] == [(d["kind"], d["reason"]) for d in dead]


async def test_identities_once_ever_conflicts_and_a_far_outlier_through_kafka_and_across_a_restart(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    first = [*SETUP, *OPEN,
             liquidation("liq-S", "u", "0.001", "49000", ts=T0 + 2000),
             liquidation("liq-S", "u", "0.02", "49000", ts=T0 + 2001),  # the real one, reusing the id
             transfer("far", "u", "5", ts=T0 + 3 * 365 * DAY),  # a bad clock: the last transfer, so merge order holds
             mark("49500", ts=T0 + 3000),
             fill("x", "v", "sell", "0.001", "49500", ts=T0 + 5000),
             dict(OPEN[1])]  # sent again identical
    expected = replay(write(tmp_path / "first.jsonl", first), tmp_path / "replay-first")
    assert [d["kind"] for d in expected["dead"]] == ["conflicting_duplicate", "ahead"]
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}adm.")
    topics = TopicNames(settings.topic_prefix)
    async with in_process(settings):
        await produce_file(settings, tmp_path / "first.jsonl")
        await wait_caught_up(migrated_database, ends=await input_ends(settings))
    have = await stored(migrated_database)
    assert have["head"]["head_hash"] == expected["summary"]["head_hash"]
    assert have["head"]["state_hash"] == expected["summary"]["state_hash"]
    assert have["fund_ledger"] == expected["fund-ledger"] and have["adl_events"] == expected["adl-events"]
    assert have["head"]["duplicates"] == expected["summary"]["duplicates"] == 1
    dead = await rows(migrated_database, "SELECT kind, reason FROM dead_letter ORDER BY id")
    assert [d["kind"] for d in dead] == ["conflicting_duplicate", "ahead"]  # the outlier: last in merge order
    assert dead[0]["reason"] == expected["dead"][0]["reason"] == (
        "conflicting_duplicate: liquidation id liq-S is held by seq 10 with other content")
    assert dead[1]["reason"].startswith(f"ahead of the journal: ts {T0 + 3 * 365 * DAY} is ")

    # A new process: recent memory empty, so every answer below comes from applied_ids through the filter.
    later = [dict(OPEN[0]), transfer("d-v", "v", "1", ts=T0 + 6000), fill("y", "w", "sell", "0.001", "49500",
                                                                          ts=T0 + 6001)]
    await send(kafka_bootstrap, topics, later)
    async with in_process(settings):
        await wait_caught_up(migrated_database, ends=await input_ends(settings))
    whole = replay(write(tmp_path / "whole.jsonl", [*first, *later]), tmp_path / "replay-whole")
    have = await stored(migrated_database)
    assert have["head"]["head_hash"] == whole["summary"]["head_hash"]
    assert have["head"]["duplicates"] == whole["summary"]["duplicates"] == 2
    dead = await rows(migrated_database, "SELECT kind, reason FROM dead_letter ORDER BY id")
    assert dead[-1] == {"kind": "conflicting_duplicate",
                        "reason": "conflicting_duplicate: transfer id d-v is held by seq 5 with other content"}
    await assert_identities_held_once(migrated_database)
    await decisions_replay_alike(migrated_database, topics, tmp_path / "decided")
    out = await published(settings)
    ids = [r["id"] for r in out["journal"]]
    assert len(ids) == len(set(ids)) == whole["summary"]["events_applied"]
    assert sorted(r["kind"] for r in out["dead-letter"]) == ["ahead", "conflicting_duplicate",
                                                             "conflicting_duplicate"]


async def test_a_record_that_crashes_the_engine_is_dead_lettered_and_the_records_after_it_apply_exactly_once(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    after = [fill("after-1", "v", "sell", "0.001", "50000", ts=T0 + 5000), mark("49000", ts=T0 + 6000),
             liquidation("liq-u", "u", "0.02", "49000", ts=T0 + 7000), fill("after-2", "w", "buy", "0.001", "49000",
                                                                           ts=T0 + 8000)]
    setup = [fund(ratio="0", ts=T0), *SETUP[1:]]  # the fund keeps no inventory: the liquidation deleverages
    journal = write(tmp_path / "journal.jsonl", [*setup, *OPEN, POISON, *after])
    expected = replay(write(tmp_path / "clean.jsonl", [*setup, *OPEN, *after]), tmp_path / "replay")
    assert expected["adl-events"]
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}poison.")
    async with in_process(settings) as (processor, _):
        await produce_file(settings, journal)
        await wait_caught_up(migrated_database, ends=await input_ends(settings))
        assert processor.progress.ready
    dead = await rows(migrated_database, "SELECT source_topic, source_offset, kind, reason FROM dead_letter")
    assert len(dead) == 1 and dead[0]["source_topic"].endswith(".fills") and dead[0]["source_offset"] == 3
    # today the engine raises on it (quarantined); with the numeric bounds of docs/design.md §9 the wire refuses it
    assert dead[0]["kind"] in ("engine_error", "invalid") and "\n" not in dead[0]["reason"]
    have = await stored(migrated_database)
    assert have["journal"] == expected["summary"]["events_applied"]
    assert have["head"]["head_hash"] == expected["summary"]["head_hash"]
    assert have["fund_ledger"] == expected["fund-ledger"] and have["adl_events"] == expected["adl-events"]
    out = await published(settings)
    for stream in ("journal", "fund-ledger", "adl-events"):
        ids = [r["id"] for r in out[stream]]
        assert len(ids) == len(set(ids)), f"{stream}: published twice"
    assert len(out["adl-events"]) == len(expected["adl-events"])
    await assert_identities_held_once(migrated_database)


async def test_the_filter_loads_every_held_identity_from_one_binary_copy(migrated_database: str) -> None:
    """Store.held_keys parses COPY's binary rows as they stream (chunks end anywhere, even inside a row)."""
    import hashlib

    from backstop.adapters.postgres.store import Store

    count = 70_001
    keys = [hashlib.sha256(i.to_bytes(8, "big")).digest()[:16] for i in range(count)]
    connection = await asyncpg.connect(migrated_database)
    try:
        await connection.copy_records_to_table("journal", columns=[
            "seq", "source_topic", "source_partition", "source_offset", "type", "ts", "payload", "payload_hash"],
            records=[(seq, "t", 0, seq, "fill", 0, "{}", "") for seq in range(1, count + 1)])
        await connection.copy_records_to_table("applied_ids", columns=["id_digest", "content_digest", "seq"],
                                               records=[(key, bytes(8), seq) for seq, key in enumerate(keys, 1)])
    finally:
        await connection.close()
    store = await Store.open(migrated_database)
    try:
        chunks: list[bytes] = []
        await store.held_keys(chunks.append)
        loaded = b"".join(chunks)
        assert sorted(loaded[i:i + 16] for i in range(0, len(loaded), 16)) == sorted(keys)
        assert len(chunks) > 1
        found = await store.held([keys[0], keys[-1], b"\0" * 16])
        assert sorted(found) == sorted([(keys[0], bytes(8), 1), (keys[-1], bytes(8), count)])
    finally:
        await store.close()


@pytest.mark.parametrize("engine", ["compiled", "reference"])
async def test_a_record_an_engine_fails_on_is_dead_lettered_after_the_rebuild_and_nothing_else_is_lost_or_doubled(
        engine: str, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, migrated_database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault hook (backstop.faults.engine_panic_on) fails the engine right after it applied fill `boom`, its
    effects half made: the compiled engine panics, the reference raises. The batch is lost, the engine rebuilt from
    PostgreSQL, and `boom` dead-lettered (engine_error) when met again; the rest is the replay of the journal
    without it."""
    monkeypatch.setenv(faults.ENGINE_PANIC_ENV, "boom")
    boom = fill("boom", "v", "sell", "0.001", "50000", ts=T0 + 4000)
    after = [fill("after-1", "v", "sell", "0.001", "50000", ts=T0 + 5000), mark("49000", ts=T0 + 6000),
             liquidation("liq-u", "u", "0.02", "49000", ts=T0 + 7000), fill("after-2", "w", "buy", "0.001", "49000",
                                                                           ts=T0 + 8000)]
    setup = [fund(ratio="0", ts=T0), *SETUP[1:]]  # the fund keeps no inventory: the liquidation deleverages
    journal = write(tmp_path / "journal.jsonl", [*setup, *OPEN, boom, *after])
    clean = write(tmp_path / "clean.jsonl", [*setup, *OPEN, *after])
    assert cli(["replay", str(clean), "--out", str(tmp_path / "replay"), "--adl-quantiles", "--engine", engine]) == 0
    expected = replay(clean, tmp_path / "replay-default")
    summary = json.loads((tmp_path / "replay" / "summary.json").read_text())
    assert expected["adl-events"] and summary["head_hash"] == expected["summary"]["head_hash"]
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}fail{engine}.", engine=engine)
    async with in_process(settings) as (processor, _):
        await produce_file(settings, journal)
        await wait_caught_up(migrated_database, ends=await input_ends(settings))
        assert processor.progress.ready
        assert processor.quarantine and all(reason.startswith("engine error: ")
                                            for reason in processor.quarantine.values())
    dead = await rows(migrated_database, "SELECT source_topic, source_offset, kind, reason FROM dead_letter")
    assert len(dead) == 1, dead
    assert dead[0]["source_topic"].endswith(".fills") and dead[0]["source_offset"] == len(OPEN)
    assert dead[0]["kind"] == "engine_error" and "fault hook" in dead[0]["reason"] and "\n" not in dead[0]["reason"]
    have = await stored(migrated_database)
    assert have["journal"] == summary["events_applied"]
    assert have["head"]["head_hash"] == summary["head_hash"]
    assert have["head"]["state_hash"] == summary["state_hash"]
    assert have["head"]["rejected"] == 1
    assert have["fund_ledger"] == expected["fund-ledger"] and have["adl_events"] == expected["adl-events"]
    postings = await rows(migrated_database, "SELECT record FROM postings ORDER BY position")
    assert [orjson.loads(r["record"]) for r in postings] == [
        orjson.loads(line) for line in (tmp_path / "replay" / "postings.jsonl").read_bytes().splitlines()]
    out = await published(settings)
    for stream in ("journal", "fund-ledger", "adl-events"):
        ids = [r["id"] for r in out[stream]]
        assert len(ids) == len(set(ids)), f"{stream}: published twice"
    assert len(out["journal"]) == summary["events_applied"]
    assert [r["kind"] for r in out["dead-letter"]] == ["engine_error"]
    await assert_identities_held_once(migrated_database)


async def test_input_that_a_producer_compressed_is_read_whatever_the_codec(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, migrated_database: str) -> None:
    """Kafka's four codecs (aiokafka reads snappy, lz4 and zstd with cramjam): each batch applies as it would
    uncompressed, rather than stop the consumer."""
    records = [*SETUP, *OPEN, mark("50500", ts=T0 + 2000)]
    expected = replay(write(tmp_path / "all.jsonl", records), tmp_path / "replay")
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}codec.")
    topics = TopicNames(settings.topic_prefix)
    async with in_process(settings):
        for index, codec in enumerate(("gzip", "snappy", "lz4", "zstd")):  # the setup first: its records in order
            await send(kafka_bootstrap, topics, records[index * 3:(index + 1) * 3] if index < 3 else records[9:],
                       compression=codec)
        await wait_caught_up(migrated_database, ends=await input_ends(settings))
    have = await stored(migrated_database)
    assert have["head"]["head_hash"] == expected["summary"]["head_hash"]
    assert have["head"]["seq"] == expected["summary"]["events_applied"] == len(records)

    # started again on a stored journal and nothing new: the metrics say its seq and funds before any batch
    metrics.JOURNAL_SEQ.set(0)
    metrics.FUND_BALANCE.clear()
    async with in_process(settings) as (processor, _):
        while not processor.progress.ready:
            await asyncio.sleep(0.05)
        assert metrics.JOURNAL_SEQ._value.get() == len(records)
        assert metrics.FUND_BALANCE.labels("MAIN")._value.get() == 100000
