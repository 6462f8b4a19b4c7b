"""Fuzzed records sent through Kafka to the running service: every bad one ends in dead-letter with a reason,
nothing crashes, and the ledger, head hash and state hash are those of the good records alone."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from service_harness import in_process, input_ends, prepare_database, settings_for, stored, wait_caught_up

from backstop.adapters.kafka.tools import ensure_topics, produce_file
from backstop.core.engine import Engine
from backstop.core.processor import Processor
from backstop.core.snapshot import state_hash
from backstop.pipeline.ingest import Consumed, ingest_batch
from backstop.pipeline.topics import INPUT_TYPES, TopicNames
from backstop.wire.decode import MAX_RECORD_BYTES
from fuzzing import SETUP, TEMPLATES, mutated
from scenario import mark, run

EXAMPLES = int(os.environ.get("BACKSTOP_KAFKA_FUZZ_EXAMPLES", "3"))
_runs = itertools.count()
TOPICS = TopicNames("fuzz.")


def rejected(record_type: str, raw: bytes | None) -> bool:
    """Would the service dead-letter this value on that topic, right after the setup? (its own ingest decides)"""
    processor, _ = run(SETUP)
    result = ingest_batch(processor, [Consumed(TOPICS.input(record_type), 0, 0, None, raw)], TOPICS)
    return bool(result.dead_letters)


def on_its_topic(raw: bytes, fallback: str, follow_type: bool) -> str:
    try:
        declared = orjson.loads(raw).get("type")
    except (orjson.JSONDecodeError, AttributeError):
        return fallback
    return declared if follow_type and declared in INPUT_TYPES else fallback


sends = st.lists(st.builds(lambda value, fallback, follow: (on_its_topic(value, fallback, follow), value),
                           st.one_of(mutated(), mutated(), st.binary(max_size=300)), st.sampled_from(INPUT_TYPES),
                           st.booleans()), min_size=5, max_size=30)


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sends)
async def test_fuzzed_records_through_kafka_are_dead_lettered_and_change_nothing(
        kafka_bootstrap: str, topic_prefix: str, databases: Any, drawn: list[tuple[str, bytes]]) -> None:
    fixed = [("fill", b""), ("mark", b"null"), ("fill", b"[]"),  # and a NUL, which PostgreSQL text cannot hold:
             ("fill", orjson.dumps({**TEMPLATES[0], "u\x00": "NO\x00PE"})),
             # issue #19's poison: it passed the wire and crashed the engine (serve would crash-loop on it)
             ("fill", orjson.dumps({**TEMPLATES[0], "qty": "99999999999999999999", "price": "99999999999999999999",
                                    "margin_mode": "isolated", "leverage": "0.000000000000000001"}))]
    bad = [(t, raw) for t, raw in drawn if rejected(t, raw)] + fixed
    final = mark("50100", ts=max(r["ts"] for r in SETUP) + 1)
    number = next(_runs)
    dsn = await databases.create(f"_fz{number}")
    await prepare_database(dsn)
    config = settings_for(kafka_bootstrap, dsn, f"{topic_prefix}fz{number}.", check_conservation=True)
    ensure_topics(config)
    topics = TopicNames(config.topic_prefix)
    with tempfile.TemporaryDirectory() as scratch:
        journal = Path(scratch) / "setup.jsonl"
        journal.write_bytes(b"\n".join(orjson.dumps(r) for r in SETUP) + b"\n")
        await produce_file(config, journal)
        async with in_process(config):
            await wait_caught_up(dsn, applied=len(SETUP), ends=await input_ends(config))
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
            await producer.start()
            try:
                for record_type, raw in bad:
                    await producer.send_and_wait(topics.input(record_type), raw)
            finally:
                await producer.stop()
            await wait_caught_up(dsn, ends=await input_ends(config))
            journal.write_bytes(orjson.dumps(final) + b"\n")  # one good record after them: the state must be
            await produce_file(config, journal)               # exactly the good records' state
            await wait_caught_up(dsn, applied=len(SETUP) + 1, ends=await input_ends(config))  # state hash too
    have = await stored(dsn)
    reference, _ = run([*SETUP, final], processor=Processor(Engine(adl_quantiles=True)))  # as the service
    assert have["journal"] == len(SETUP) + 1
    assert len(have["dead_letter"]) == len(bad), (have["dead_letter"], bad)
    assert all(row["reason"] for row in have["dead_letter"])
    assert have["head"]["head_hash"] == reference.engine.head_hash
    assert have["head"]["state_hash"] == state_hash(reference.engine)



async def test_a_record_over_1_mib_through_kafka_is_dead_lettered(kafka_bootstrap: str, topic_prefix: str,
                                                                   databases: Any) -> None:
    """A venue's topic may accept records larger than backstop reads: one over MAX_RECORD_BYTES is dead-lettered
    with its size and the limit, and the records around it apply as if it had never been sent."""
    dsn = await databases.create("_big")
    await prepare_database(dsn)
    config = settings_for(kafka_bootstrap, dsn, f"{topic_prefix}big.", check_conservation=True)
    ensure_topics(config)
    topics = TopicNames(config.topic_prefix)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:  # the broker's default would refuse the record before backstop could see it
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topics.input("fill"),
                                            configs={"max.message.bytes": str(4 << 20)})])
    finally:
        admin.close()
    big = orjson.dumps({**TEMPLATES[0], "ts": max(r["ts"] for r in SETUP), "pad": "x" * (MAX_RECORD_BYTES + 1)})
    final = mark("50100", ts=max(r["ts"] for r in SETUP) + 1)
    with tempfile.TemporaryDirectory() as scratch:
        journal = Path(scratch) / "setup.jsonl"
        journal.write_bytes(b"\n".join(orjson.dumps(r) for r in SETUP) + b"\n")
        await produce_file(config, journal)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all",
                                    max_request_size=8 << 20)
        await producer.start()
        try:
            await producer.send_and_wait(topics.input("fill"), big)
        finally:
            await producer.stop()
        journal.write_bytes(orjson.dumps(final) + b"\n")
        await produce_file(config, journal)
        async with in_process(config):
            await wait_caught_up(dsn, applied=len(SETUP) + 1, ends=await input_ends(config))
    have = await stored(dsn)
    reference, _ = run([*SETUP, final], processor=Processor(Engine(adl_quantiles=True)))  # as the service
    assert [row["reason"] for row in have["dead_letter"]] == [
        f"record of {len(big)} bytes exceeds the limit of {MAX_RECORD_BYTES}"]
    assert have["journal"] == len(SETUP) + 1
    assert have["head"]["head_hash"] == reference.engine.head_hash
