"""The write-behind (backstop.service.ledger_loop.WriteBehind): a full refresh as of seq S is written only once
batch S has committed, since it leaves out the rows batch S writes (and takes rows older than S for closed)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from backstop.adapters.memory.store import MemoryDatabase, MemoryStore
from backstop.adapters.postgres.store import RefreshCopy
from backstop.pipeline.projections import FullRefresh
from backstop.service.ledger_loop import Progress, WriteBehind


async def _settled(behind: WriteBehind) -> None:
    await behind.hand(None, None)  # awaits a write under way
    await asyncio.sleep(0)


async def test_a_refresh_waits_until_the_batch_at_its_seq_has_committed() -> None:
    database = MemoryDatabase()
    database.positions[("a", "BTCUSDT", "both")] = ("a", "BTCUSDT", "both", Decimal(1), *(None,) * 7, 3)
    progress = Progress(seq=9)
    behind = WriteBehind(MemoryStore(database), progress)
    await behind.hand(RefreshCopy.of(FullRefresh(10, [], [], [])), None)
    await _settled(behind)
    # batch 10 writes a's row as of 10 (the refresh left it out): not removed as closed before it lands
    assert progress.refreshed_seq == 0 and ("a", "BTCUSDT", "both") in database.positions
    progress.seq = 10
    await behind.hand(None, None)
    await _settled(behind)
    assert progress.refreshed_seq == 10
