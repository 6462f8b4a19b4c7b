"""The order the service decides does not depend on fetch sizes, batch sizes or timing (issue 19 item 1): each
example journal, sent with `backstop produce` to fresh topics while a fresh service starts, gives exactly the
journal of the documented merge order of what it sent (with one partition per topic, the file itself), and the
ledger and hashes `backstop replay` gives for that journal, whatever the batch and fetch sizes. (The simulator,
tests/sim, does the same over thousands of seeds with faults.)"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from service_harness import in_process, input_ends, prepare_database, settings_for, stored, wait_caught_up

from backstop.adapters.kafka.consumer import KafkaConsumer
from backstop.adapters.kafka.tools import ensure_topics
from backstop.core.hashing import canonical_json
from backstop.entrypoints.cli import main as cli
from backstop.pipeline.topics import INPUT_TYPES, TopicNames, input_key
from backstop.service.app import kafka_runtime
from backstop.service.relay import partition_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.jsonl"))
# (batch records, fetch bytes per partition, input partitions, how the input comes: `backstop produce` before the
# service starts or while it starts, or one record at a time, each acknowledged before the next, with pauses)
CONFIGS = [(1, 1, 3, "produce"), (3, 300, 2, "produce"), (5000, 4 << 20, 3, "produce"), (2, 1, 1, "before"),
           (1, 1, 3, "trickle"), (4, 200, 2, "trickle")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"batch{c[0]}-fetch{c[1]}-partitions{c[2]}-{c[3]}")
async def test_each_example_through_a_fresh_service_is_its_replay(config: tuple[int, int, int, str],
                                                                  tmp_path: Path, kafka_bootstrap: str,
                                                                  topic_prefix: str, databases: Any) -> None:
    batch_records, fetch_bytes, partitions, how = config
    runtime = dataclasses.replace(kafka_runtime(), consumer=lambda s: KafkaConsumer(
        s, max_partition_fetch_bytes=fetch_bytes))
    for number, example in enumerate(EXAMPLES):
        name = f"o{batch_records}x{fetch_bytes}x{partitions}{how[0]}e{number}"
        dsn = await databases.create(f"_{name}")
        await prepare_database(dsn)
        settings = settings_for(kafka_bootstrap, dsn, f"{topic_prefix}{name}.", batch_max_records=batch_records,
                                input_partitions=partitions, batch_max_wait_ms=5)
        # trickled, each record is applied before the next exists: the topics never hold two at once, and the
        # order is the file's (both orders are the merge order of what the topics held when it was decided)
        expected = file_order(example) if how == "trickle" else merge_order(example, partitions)
        if partitions == 1:
            assert expected == file_order(example)
        ordered = tmp_path / f"{name}.jsonl"
        ordered.write_bytes(b"\n".join(expected) + b"\n")
        assert await asyncio.to_thread(cli, ["replay", str(ordered), "--adl-quantiles", "--out",
                                             str(tmp_path / name)]) == 0
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        await asyncio.to_thread(ensure_topics, settings)
        if how == "before":
            await produce(settings, example)
        async with in_process(settings, runtime):
            if how == "produce":
                await produce(settings, example)  # while the service starts: its first fetches race the records
            elif how == "trickle":
                await trickle(settings, dsn, example, random.Random(number))
            await wait_caught_up(dsn, ends=await input_ends(settings))
        have, journaled = await stored(dsn), await journal(dsn)
        await databases.drop(dsn)
        assert have["dead_letter"] == [], f"{example.name}: {have['dead_letter']}"
        assert journaled == expected, example.name
        assert (have["head"]["head_hash"], have["head"]["state_hash"]) == (summary["head_hash"], summary["state_hash"])


def file_order(example: Path) -> list[bytes]:
    return [canonical_json(orjson.loads(line)) for line in example.read_bytes().splitlines()]


def merge_order(example: Path, partitions: int) -> list[bytes]:
    """The file's records where `backstop produce` puts them (each type's topic, the partition of its key), merged
    by (ts, type rank, topic, partition, offset): the order the service must decide."""
    topics = TopicNames("x.")
    streams: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for line in example.read_bytes().splitlines():
        record = orjson.loads(line)
        key = input_key(record["type"], record)
        streams.setdefault((topics.input(record["type"]), partition_for(key, partitions)), []).append(record)
    rank = {topics.input(t): i for i, t in enumerate(INPUT_TYPES)}
    heads = {stream: 0 for stream in streams}
    order = []
    while any(heads[s] < len(streams[s]) for s in streams):
        stream = min((s for s in streams if heads[s] < len(streams[s])),
                     key=lambda s: (streams[s][heads[s]]["ts"], rank[s[0]], s[0], s[1]))
        order.append(canonical_json(streams[stream][heads[stream]]))
        heads[stream] += 1
    return order


async def produce(settings: Any, example: Path) -> None:
    """`backstop produce`, as the issue's runs did (in a thread: the CLI runs its own event loop)."""
    import os

    environment = {"BACKSTOP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "BACKSTOP_TOPIC_PREFIX": settings.topic_prefix}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        assert await asyncio.to_thread(cli, ["produce", str(example)]) == 0
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def trickle(settings: Any, dsn: str, example: Path, rng: random.Random) -> None:
    """Each record to its topic and key's partition once the one before is applied, after a pause of 0-20 ms. (Only
    acknowledged is not enough to decide the order: a record the service has not fetched yet can still be merged
    before the one sent ahead of it, at an equal ts, or not, depending on when the service fetched.)"""
    topics = TopicNames(settings.topic_prefix)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for line in example.read_bytes().splitlines():
            record = orjson.loads(line)
            record_type = record.pop("type")
            await asyncio.sleep(rng.uniform(0, 0.02))
            sent = await producer.send_and_wait(topics.input(record_type), orjson.dumps(record),
                                                key=input_key(record_type, record).encode())
            await wait_caught_up(dsn, ends={(sent.topic, sent.partition): sent.offset + 1}, state_hash=False)
    finally:
        await producer.stop()


async def journal(dsn: str) -> list[bytes]:
    connection = await asyncpg.connect(dsn)
    try:
        return [r["payload"].encode() for r in await connection.fetch("SELECT payload FROM journal ORDER BY seq")]
    finally:
        await connection.close()
