"""The whole double-entry ledger in the service: every posting stored in PostgreSQL (append-only: the service's
role may only append, the owner is stopped by the trigger), published on backstop.postings through the outbox, the
same records `backstop replay` writes to postings.jsonl, and checked by `audit verify --dsn`."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from service_harness import in_process, settings_for, wait_caught_up

from backstop.adapters.kafka.tools import produce_file, read_topic
from backstop.entrypoints.cli import main as cli
from backstop.pipeline.topics import TopicNames
from backstop.settings import Settings

ADL_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "02-adl-walks-queue.jsonl"


async def _on_topic(settings: Settings, topic: str, count: int) -> list[dict[str, Any]]:
    """The records on a topic once `count` of them are there (the relay publishes after the commit)."""
    records: list[dict[str, Any]] = []
    for _ in range(60):
        records = [orjson.loads(v) async for _, _, v in read_topic(settings, topic, follow=False,
                                                                   idle_timeout_s=1.0)]
        if len(records) >= count:
            break
        await asyncio.sleep(0.5)
    return records


async def test_every_posting_is_stored_append_only_published_and_audited(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, migrated_database: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "replay"
    assert await asyncio.to_thread(cli, ["replay", str(ADL_EXAMPLE), "--adl-quantiles", "--out", str(out)]) == 0
    want = [json.loads(line) for line in (out / "postings.jsonl").read_text().splitlines()]
    quantiles = [json.loads(line) for line in (out / "adl-quantiles.jsonl").read_text().splitlines()]
    assert len(want) == 13 and quantiles

    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}post{secrets.token_hex(2)}.")
    topics = TopicNames(settings.topic_prefix)
    async with in_process(settings):
        await produce_file(settings, ADL_EXAMPLE)
        await wait_caught_up(migrated_database, applied=19)
        on_postings = await _on_topic(settings, topics.postings, len(want))
        on_quantiles = await _on_topic(settings, topics.adl_quantiles, len(quantiles))
    assert on_postings == want  # exactly once, in order, as replay writes them
    by_id = sorted(on_quantiles, key=lambda r: r["id"]) == sorted(quantiles, key=lambda r: r["id"])
    assert by_id  # keyed by account: spread over partitions, each record once

    owner = await asyncpg.connect(migrated_database)
    try:
        rows = await owner.fetch("SELECT position, id, debit_account, credit_account, amount, record FROM postings "
                                 "ORDER BY position")
        assert [orjson.loads(r["record"]) for r in rows] == want
        assert [r["position"] for r in rows] == list(range(1, len(want) + 1))
        assert (rows[0]["debit_account"], rows[0]["credit_account"], str(rows[0]["amount"])) == (
            "external:USDT", "fund:BNB", "100")
        blocks = await owner.fetch("SELECT last_position, postings, first_seq, last_seq, records FROM posting_blocks")
        assert sum(b["postings"] for b in blocks) == len(want)  # a block per batch that made postings (0017)
        assert [orjson.loads(line) for b in blocks for line in b["records"].split("\n")[:-1]] == want
        for statement in ("UPDATE posting_blocks SET records = ''", "DELETE FROM posting_blocks",
                          "TRUNCATE posting_blocks"):
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
                await owner.execute(statement)  # the owner is stopped by the trigger
        with pytest.raises(asyncpg.exceptions.ObjectNotInPrerequisiteStateError):
            await owner.execute("DELETE FROM postings")  # the view of every column (migrations 0015, 0017) is read-only
    finally:
        await owner.close()
    service = await asyncpg.connect(settings.dsn())
    try:
        for statement in ("UPDATE posting_blocks SET records = ''", "DELETE FROM posting_blocks",
                          "TRUNCATE posting_blocks",
                          "ALTER TABLE posting_blocks DISABLE TRIGGER posting_blocks_append_only"):
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as refused:
                await service.execute(statement)
            assert "append-only" not in str(refused.value), statement  # refused for want of a privilege
    finally:
        await service.close()

    capsys.readouterr()
    assert await asyncio.to_thread(cli, ["audit", "verify", "--dsn", migrated_database]) == 0
    text = capsys.readouterr().out
    assert f"postings: hash chain of {len(want)} records" in text, text
    assert "postings: the fund accounts end at the funds' balances" in text
