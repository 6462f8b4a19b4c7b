"""Projection rows after a batch: which positions are rewritten, and that they hold the engine's own numbers."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
from test_ingest import TOPICS, as_consumed

from backstop.core.engine import Engine
from backstop.core.processor import Processor
from backstop.pipeline import projections
from backstop.pipeline.ingest import BatchResult, JournalRow, ingest_batch

DEFINITIONS = (Path(__file__).parents[2] / "examples" / "03-cross-two-positions.jsonl").read_bytes().splitlines()[:6]
TS = 1760126401000


def _deposit(account: str) -> bytes:
    return orjson.dumps({"type": "transfer", "ts": TS, "transfer_id": f"dep-{account}", "account_id": account,
                         "asset": "USDT", "amount": "10000"})


def _fill(fill_id: str, account: str, symbol: str, side: str, qty: str, mode: str) -> bytes:
    fill_price = "100000" if symbol == "BTCUSDT" else "4000"
    return orjson.dumps({"type": "fill", "ts": TS, "fill_id": fill_id, "account_id": account, "symbol": symbol,
                         "side": side, "qty": qty, "price": fill_price, "fee": "0", "margin_mode": mode,
                         "leverage": "10"})


def _setup() -> Processor:
    processor = Processor(Engine())
    lines = [*DEFINITIONS, _deposit("iso"), _deposit("x"),
             _fill("iso-btc", "iso", "BTCUSDT", "buy", "0.1", "isolated"),
             _fill("iso-eth", "iso", "ETHUSDT", "buy", "1", "isolated"),
             _fill("x-btc", "x", "BTCUSDT", "buy", "0.1", "cross"),
             _fill("x-eth", "x", "ETHUSDT", "sell", "1", "cross")]
    ingest_batch(processor, as_consumed(lines), TOPICS)
    return processor


def test_a_batch_rewrites_the_positions_it_touched_and_every_cross_position_of_a_touched_account() -> None:
    processor = _setup()
    batch = as_consumed([_fill("iso-btc-2", "iso", "BTCUSDT", "buy", "0.1", "isolated"),
                         _fill("x-btc-2", "x", "BTCUSDT", "sell", "0.05", "cross")])
    result = ingest_batch(processor, batch, TOPICS)
    rows = projections.build(processor.engine, result, refresh_all=False)
    # iso's ETH position is isolated and untouched: its row cannot have changed; x's ETH position is cross and
    # moves with x's wallet
    assert sorted((r[0], r[1]) for r in rows.positions) == [("iso", "BTCUSDT"), ("x", "BTCUSDT"),
                                                            ("x", "ETHUSDT")]
    # nothing closed, nothing deleted (a side a touched pair does not hold has no row: a row goes when its position
    # closes, and a change of position mode in a symbol needs every position of it closed first)
    assert rows.closed_positions == []
    assert sorted((w[0], w[1]) for w in rows.wallets) == [("iso", "USDT"), ("x", "USDT")]
    refreshed = projections.build(processor.engine, result, refresh_all=True)
    assert set(rows.positions) < set(refreshed.positions)  # the same rows as a full refresh writes
    engine = processor.engine
    for row in refreshed.positions:  # rows built with one memo per account hold the single-position views
        position = engine.positions.get(row[0], row[1], row[2])
        liquidation = engine.liquidation_price(position)
        assert row[9] == liquidation
        assert row[10] == engine.bankruptcy_price(position)


def test_a_position_closed_in_the_batch_is_deleted_and_no_other() -> None:
    processor = _setup()
    result = ingest_batch(processor, as_consumed([_fill("iso-btc-close", "iso", "BTCUSDT", "sell", "0.1",
                                                        "isolated")]), TOPICS)
    assert result.closed_positions == {("iso", "BTCUSDT", "both")}  # named by the engine as it closed
    rows = projections.build(processor.engine, result, refresh_all=False)
    assert rows.closed_positions == [("iso", "BTCUSDT", "both")]
    assert rows.positions == []
    # a full rewrite deletes every side no one holds, whatever closed
    everything = projections.build(processor.engine, BatchResult(), refresh_all=True)
    assert {key for key in everything.closed_positions if key[0] == "iso" and key[1] == "BTCUSDT"} == {
        ("iso", "BTCUSDT", side) for side in ("both", "long", "short")}


def test_a_position_closed_and_opened_again_is_written_not_deleted() -> None:
    processor = _setup()
    result = ingest_batch(processor, as_consumed([
        _fill("iso-btc-close", "iso", "BTCUSDT", "sell", "0.1", "isolated"),
        _fill("iso-btc-again", "iso", "BTCUSDT", "buy", "0.2", "isolated")]), TOPICS)
    assert result.closed_positions == {("iso", "BTCUSDT", "both")}
    rows = projections.build(processor.engine, result, refresh_all=False)
    assert rows.closed_positions == []
    assert [(r[0], r[1], r[2], r[3]) for r in rows.positions] == [("iso", "BTCUSDT", "both", Decimal("0.2"))]


def _applied(*tss: int) -> BatchResult:
    result = BatchResult()
    result.journal = [JournalRow(n, "t.marks", 0, n, "mark", ts, b"", "") for n, ts in enumerate(tss, start=1)]
    return result


def _none() -> int:
    return 0


def test_the_full_refresh_runs_every_n_events_and_on_event_time_only_once_caught_up() -> None:
    cadence = projections.RefreshCadence(every_events=100, every_event_ms=60_000, last_seq=0)
    assert not cadence.due(_applied(1_000), 10, caught_up=False, positions=_none)  # catching up: no event time
    assert cadence.due(_applied(2_000), 20, caught_up=True, positions=_none)  # caught up for the first time
    assert not cadence.due(_applied(30_000), 30, caught_up=True, positions=_none)  # 28 s of event time since
    assert not cadence.due(_applied(900_000), 40, caught_up=False, positions=_none)  # far ahead, but catching up
    assert cadence.due(_applied(900_001), 50, caught_up=True, positions=_none)
    assert cadence.due(_applied(900_002), 150, caught_up=False, positions=_none)  # 100 events since the last
    assert not cadence.due(BatchResult(), 150, caught_up=True, positions=_none)  # nothing applied
    funding = _applied(900_003)
    funding.journal[0] = JournalRow(151, "t.funding", 0, 1, "funding", 900_003, b"", "")
    assert cadence.due(funding, 151, caught_up=False, positions=_none)  # funding moves every wallet


def test_catching_up_the_full_refresh_waits_longer_the_more_positions_it_rewrites() -> None:
    """Every 100 events, but no sooner than 4 per position open at the last refresh; the touched rows still go
    every 100 events, and funding and event time once caught up still refresh."""
    held = [50]
    cadence = projections.RefreshCadence(every_events=100, every_event_ms=60_000, last_seq=0, per_position=4)
    due = [seq for seq in range(1, 501) if cadence.due(_applied(seq), seq, caught_up=False, positions=lambda: held[0])]
    assert due == [100, 300, 500]  # 50 positions: 200 events apart
    cadence = projections.RefreshCadence(every_events=100, every_event_ms=60_000, last_seq=0, per_position=4)
    flushed = []
    for seq in range(1, 501):
        held[0] = 10 if seq > 100 else 50  # positions closed after the first refresh: it still waits 200 events
        if not cadence.due(_applied(seq), seq, caught_up=False, positions=lambda: held[0]) and cadence.touched_due(
                seq, caught_up=False):
            flushed.append(seq)
    assert cadence.last_seq == 500 and flushed == [200]  # refreshed at 100, 300 (10 then: 100 apart), 400, 500
    funding = _applied(501)
    funding.journal[0] = JournalRow(501, "t.funding", 0, 1, "funding", 501, b"", "")
    assert cadence.due(funding, 501, caught_up=False, positions=lambda: 10_000)
    assert not cadence.due(_applied(502), 600, caught_up=False, positions=_none)  # 40,000 events from now
    assert cadence.touched_due(601, caught_up=False)  # the touched rows: 100 events
    assert cadence.touched_due(602, caught_up=True)  # and with every batch once caught up
    assert cadence.due(_applied(70_000), 603, caught_up=True, positions=_none)  # a minute of event time


def test_caught_up_or_just_started_the_count_of_events_waits_for_the_positions_too() -> None:
    """Started over 1,000 positions (every row just written): no refresh by count for 4,000 events, caught up or
    not; event time once caught up still refreshes, and sets the next wait from the positions then."""
    cadence = projections.RefreshCadence(every_events=100, every_event_ms=60_000, last_seq=0, per_position=4,
                                         interval=4_000)
    assert cadence.due(_applied(1), 1, caught_up=True, positions=lambda: 1_000)  # caught up for the first time
    due = [seq for seq in range(2, 9_000) if cadence.due(_applied(2), seq, caught_up=seq % 2 == 0,
                                                         positions=lambda: 1_000)]
    assert due == [4_001, 8_001]
    assert cadence.due(_applied(60_002), 8_002, caught_up=True, positions=lambda: 10)  # a minute of event time
    assert cadence.due(_applied(60_002), 8_102, caught_up=False, positions=_none)  # 10 positions: 100 events


def test_touched_rows_add_up_over_batches_and_everything_reaches_wallet_only_accounts() -> None:
    processor = _setup()
    touched = projections.Touched()
    assert not touched
    first = ingest_batch(processor, as_consumed([_deposit("w")]), TOPICS)  # w: a wallet, never a position
    second = ingest_batch(processor, as_consumed([_fill("iso-btc-close", "iso", "BTCUSDT", "sell", "0.1",
                                                        "isolated")]), TOPICS)
    touched.add(first)
    touched.add(second)
    rows = projections.build(processor.engine, BatchResult(), refresh_all=False, touched=touched)
    assert sorted((w[0], w[1]) for w in rows.wallets) == [("iso", "USDT"), ("w", "USDT")]
    # closed in the second batch, deleted all the same
    assert rows.closed_positions == [("iso", "BTCUSDT", "both")]
    # after a restart every row is written from the engine: wallets of accounts without positions too
    everything = projections.build(processor.engine, BatchResult(), refresh_all=True,
                                   touched=projections.Touched.everything(processor.engine))
    assert sorted(w[0] for w in everything.wallets) == ["iso", "w", "x"]
    assert projections.build(processor.engine, BatchResult(), refresh_all=True).wallets != everything.wallets


def test_a_full_refresh_leaves_out_exactly_the_rows_a_batch_writes_as_of_its_seq() -> None:
    """Catching up, the batch at which a refresh falls due writes every row touched since the last one, from the
    state the refresh reads: the refresh leaves those out, and the two together are every row."""
    processor = _setup()
    more = orjson.dumps({"type": "transfer", "ts": TS, "transfer_id": "dep-iso-2", "account_id": "iso",
                         "asset": "USDT", "amount": "5"})
    result = ingest_batch(processor, as_consumed([_fill("x-btc-2", "x", "BTCUSDT", "sell", "0.05", "cross"), more]),
                          TOPICS)
    touched = projections.Touched.of(result)
    batch = projections.build(processor.engine, result, refresh_all=False, touched=touched)
    everything = projections.full_refresh(processor.engine)
    refresh = projections.full_refresh(processor.engine, written=touched)
    assert sorted(refresh.positions + list(batch.positions)) == sorted(everything.positions)
    assert sorted(refresh.wallets + list(batch.wallets)) == sorted(everything.wallets)
    assert not set(refresh.positions) & set(batch.positions)
    assert [r[0] for r in refresh.wallets] == []  # both accounts with a wallet were touched
    # x's positions are cross: the batch writes them; iso's are isolated and a transfer names no symbol
    assert sorted((r[0], r[1]) for r in refresh.positions) == [("iso", "BTCUSDT"), ("iso", "ETHUSDT")]
    assert refresh.adl_queue == everything.adl_queue


def test_a_snapshot_falls_at_multiples_of_its_count_but_waits_for_the_positions_it_writes() -> None:
    from backstop.service.ledger_loop import SnapshotCadence

    held = [0]
    cadence = SnapshotCadence(every=100, per_position=4, last_seq=0, interval=0)
    due = []
    for seq in range(1, 1_001):
        held[0] = 60 if seq > 200 else 10
        if cadence.due(_applied(seq), seq - 1, seq, positions=lambda: held[0]):
            due.append(seq)
    # 10 positions: every multiple; from 200 on, 60 positions: 240 events, so every third multiple
    assert due == [100, 200, 300, 600, 900]
    assert not SnapshotCadence(every=0, per_position=4, last_seq=0, interval=0).due(_applied(1), 0, 100, lambda: 0)
    assert not cadence.due(BatchResult(), 1_199, 1_200, lambda: 0)  # a batch that applied nothing
    started = SnapshotCadence(every=100, per_position=4, last_seq=1_000, interval=400)  # a restart over 100
    assert [seq for seq in range(1_001, 2_001) if started.due(_applied(seq), seq - 1, seq, lambda: 100)] == [1_400,
                                                                                                           1_800]
