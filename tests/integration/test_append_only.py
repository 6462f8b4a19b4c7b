"""The ledger is append-only by the database's own rule: the migrated schema refuses UPDATE, DELETE and TRUNCATE of
the journal and the ledgers to anyone (projections may be rewritten). What the service does with Kafka is tested
through its own adapters (test_contracts.py) and `backstop serve` itself (test_serve.py, test_service*.py)."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest

pytestmark = pytest.mark.integration


async def test_postgres_write_read_and_the_ledger_is_append_only(migrated_database: str) -> None:
    writer = await asyncpg.connect(migrated_database)
    try:
        async with writer.transaction():
            await writer.execute(
                "INSERT INTO journal (seq, source_topic, source_partition, source_offset, type, ts, payload, "
                "payload_hash) VALUES (1, 'backstop.liquidations', 0, 41, 'liquidation', 1760126400000, $1, $2)",
                '{"liquidation_id":"L1"}', "ab" * 32)
            await writer.execute(
                "INSERT INTO fund_ledger (position, id, seq, ts, fund_id, kind, amount, balance_after, "
                "liquidation_id, counter_account, prev_hash, hash, record) "
                "VALUES (1, 'fl-1-0', 1, 1760126400000, 'BTC', 'liquidation_gain', $1, $2, 'L1', "
                "'acct:alice', $3, $4, '{}')",
                Decimal("0.00000001"), Decimal("1000000.00000001"), "0" * 64, "cd" * 32)
            await writer.execute(
                "INSERT INTO consumed_offsets (topic, partition, next_offset) VALUES ('backstop.liquidations', 0, 42)")
    finally:
        await writer.close()

    reader = await asyncpg.connect(migrated_database)
    try:
        row = await reader.fetchrow("SELECT amount, balance_after, liquidation_id FROM fund_ledger WHERE id = 'fl-1-0'")
        assert row is not None
        assert (row["amount"], row["balance_after"], row["liquidation_id"]) == (
            Decimal("0.00000001"), Decimal("1000000.00000001"), "L1")
        assert await reader.fetchval("SELECT next_offset FROM consumed_offsets") == 42

        # Append-only is the database's rule, not only the code's: UPDATE, DELETE and TRUNCATE are refused.
        for table, statement in [
            ("fund_ledger", "UPDATE fund_ledger SET amount = 0 WHERE id = 'fl-1-0'"),
            ("fund_ledger", "DELETE FROM fund_ledger WHERE id = 'fl-1-0'"),
            ("fund_ledger", "TRUNCATE fund_ledger"),
            ("journal", "UPDATE journal SET payload = '{}' WHERE seq = 1"),
            ("journal", "DELETE FROM journal"),
            ("adl_events", "TRUNCATE adl_events"),
        ]:
            with pytest.raises(asyncpg.PostgresError, match=f"{table} is append-only"):
                await reader.execute(statement)
        assert await reader.fetchval("SELECT amount FROM fund_ledger WHERE id = 'fl-1-0'") == Decimal("0.00000001")
        assert await reader.fetchval("SELECT count(*) FROM journal") == 1
        # Projections are not the record: they may be rewritten.
        await reader.execute("UPDATE consumed_offsets SET next_offset = 43")
    finally:
        await reader.close()
