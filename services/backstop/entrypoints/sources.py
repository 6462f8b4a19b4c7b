"""Journals stored by the service, read back for replay and export: from PostgreSQL or from Kafka."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from backstop.adapters.kafka.tools import journal_lines_from_kafka, read_topic
from backstop.adapters.postgres.store import Store
from backstop.core.hashing import GENESIS_HASH, combine, record_dict
from backstop.pipeline.ingest import DeadLetter
from backstop.pipeline.topics import TopicNames
from backstop.settings import Settings


async def postgres_journal(dsn: str) -> tuple[list[bytes], dict[str, Any]]:
    """The journal's payloads in seq order, and what the service stored beside it: the hashes, its counts of
    duplicates and rejections, and its dead letters (as it published them). A gap in the journal is an
    InvariantViolation."""
    store = await Store.open(dsn)
    try:
        async with store.pool.acquire() as connection, connection.transaction(isolation="repeatable_read",
                                                                              readonly=True):
            # one snapshot of the database: a service writing meanwhile cannot make the parts disagree
            reader = Store(_Single(connection))
            # a journal with a hole would replay to a history the service never had: the store refuses it
            lines = [payload async for _, payload in reader.journal()]
            stored = await reader.stored_hashes()
            head = await reader.head()
            letters = [record_dict(DeadLetter(*row).record()) for row in await reader.dead_letters()]
        return lines, {**stored, "duplicates": head.duplicates, "rejected": head.rejected, "dead_letters": letters}
    finally:
        await store.close()


class _Single:
    """One connection in the place of the store's pool, so that every read the store makes shares its transaction
    (a connection answers fetch, fetchrow and fetchval as a pool does)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def acquire(self) -> contextlib.nullcontext[Any]:
        return contextlib.nullcontext(self._connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


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
