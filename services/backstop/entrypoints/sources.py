"""Journals stored by the service, read back for replay and export: from PostgreSQL or from Kafka."""

from __future__ import annotations

from typing import Any

import orjson

from backstop.adapters.postgres.store import Store
from backstop.core.hashing import GENESIS_HASH, combine
from backstop.entrypoints.kafka_tools import journal_lines_from_kafka, read_topic
from backstop.pipeline.topics import TopicNames
from backstop.settings import Settings


async def postgres_journal(dsn: str) -> tuple[list[bytes], dict[str, Any]]:
    """The journal's payloads in seq order, and the hashes the service stored."""
    store = await Store.open(dsn)
    try:
        lines = [payload async for _, payload in store.journal()]
        return lines, await store.stored_hashes()
    finally:
        await store.close()


def chain_head(records: list[dict[str, Any]]) -> str:
    """The last hash of a chain whose records arrive in any order (Kafka orders per partition only)."""
    if not records:
        return GENESIS_HASH
    pointed_at = {r["prev_hash"] for r in records}
    heads = [r["hash"] for r in records if r["hash"] not in pointed_at]
    if len(heads) != 1:
        raise ValueError(f"the chain has {len(heads)} heads: records are missing or forked")
    head: str = heads[0]
    return head


async def kafka_journal(settings: Settings) -> tuple[list[bytes], dict[str, Any]]:
    """The journal topic's records in seq order, and the head hash the output topics carry."""
    topics = TopicNames(settings.topic_prefix)
    lines = await journal_lines_from_kafka(settings)
    chains = []
    for topic in (topics.fund_ledger, topics.adl_events):
        records = [orjson.loads(v) async for _, _, v in read_topic(settings, topic, follow=False)]
        unique = {r["id"]: r for r in records}  # a consumer drops duplicates by id
        chains.append(chain_head(list(unique.values())))
    return lines, {"seq": len(lines), "head_hash": combine(*chains), "state_hash": None, "state_hash_seq": None}
