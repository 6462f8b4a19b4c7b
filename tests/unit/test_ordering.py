"""Event-time order (backstop.core.ordering): late records, stale marks, funding charged twice, and a dedupe that
forgets only what the lateness rule already refuses."""

from __future__ import annotations

from backstop.core.dedupe import Deduper
from backstop.core.ordering import MAX_LATENESS_MS
from backstop.core.processor import Applied, Duplicate, Rejection
from backstop.core.snapshot import restore, state_document, state_hash
from scenario import fill, fund, funding, instrument, mark, run, transfer

T0 = 1_900_000_000_000
BASE = [fund(ts=T0), instrument(tick="0.1", lot="0.001", ts=T0), transfer("seed", "fund:MAIN", "100000", ts=T0),
        transfer("d-u", "u", "10000", ts=T0), transfer("d-v", "v", "10000", ts=T0)]


def test_a_record_a_little_late_is_applied_one_too_late_is_rejected_with_the_lag() -> None:
    now = T0 + 3_600_000
    processor, outcomes = run([*BASE, fill("a", "u", "buy", "1", "50000", ts=now),
                               fill("b", "v", "sell", "1", "50000", ts=now - MAX_LATENESS_MS),
                               fill("c", "v", "sell", "1", "50000", ts=now - MAX_LATENESS_MS - 1)])
    assert [type(o) for o in outcomes[-3:]] == [Applied, Applied, Rejection]
    last = outcomes[-1]
    assert isinstance(last, Rejection)
    assert last.reason == (f"ts {now - MAX_LATENESS_MS - 1} is {MAX_LATENESS_MS + 1} ms behind the newest applied "
                           f"event (ts {now}); at most {MAX_LATENESS_MS} ms is accepted")
    assert processor.engine.newest_ts == now  # a late record does not move the newest ts back


def test_a_stale_mark_is_rejected_and_the_mark_in_force_stays() -> None:
    processor, outcomes = run([*BASE, mark("50000", ts=T0 + 2000), mark("40000", ts=T0 + 1000),
                               mark("50100", ts=T0 + 2000)])
    assert [type(o) for o in outcomes[-3:]] == [Applied, Rejection, Applied]
    assert "stale mark: ts 1900000001000 is older than the BTCUSDT mark in force" in str(outcomes[-2])
    assert processor.engine.marks["BTCUSDT"] == 50100  # same ts, later in the journal: it wins


def test_funding_for_a_period_already_charged_is_rejected() -> None:
    processor, outcomes = run([*BASE, fill("a", "u", "buy", "1", "50000", ts=T0),
                               fill("b", "v", "sell", "1", "50000", ts=T0),
                               funding("0.0001", "50000", ts=T0 + 10), funding("0.0002", "50000", ts=T0 + 10),
                               funding("0.0001", "50000", ts=T0 + 5)])
    assert [type(o) for o in outcomes[-3:]] == [Applied, Rejection, Rejection]
    assert processor.engine.ledger.balance("wallet:u:USDT") == 10000 - 5  # charged once: 1 x 50,000 x 0.0001


def test_an_id_sent_again_is_a_duplicate_inside_the_window_and_rejected_after_it_never_applied_twice() -> None:
    first = fill("x", "u", "buy", "1", "50000", ts=T0 + 1)
    processor, outcomes = run([*BASE, first, dict(first), mark("50000", ts=T0 + MAX_LATENESS_MS + 2), dict(first)])
    assert [type(o) for o in outcomes[-4:]] == [Applied, Duplicate, Applied, Rejection]
    assert processor.engine.positions.get("u", "BTCUSDT").qty == 1
    assert len(processor.deduper) == 1  # the fill's key was forgotten: only the mark's is left


def test_dedupe_memory_is_bounded_by_the_window_not_by_the_journal() -> None:
    records = [*BASE]
    for minute in range(200):
        records.append(mark(str(50000 + minute), ts=T0 + minute * 60_000))
    processor, outcomes = run(records)
    assert all(isinstance(o, Applied) for o in outcomes)
    assert len(processor.deduper) <= MAX_LATENESS_MS // 60_000 + 1


def test_order_state_survives_a_snapshot() -> None:
    processor, _ = run([*BASE, mark("50000", ts=T0 + 50), funding("0.0001", "50000", ts=T0 + 60)])
    engine = restore(state_document(processor.engine))
    assert state_hash(engine) == state_hash(processor.engine)
    assert (engine.newest_ts, engine.mark_ts, engine.funding_ts) == (T0 + 60, {"BTCUSDT": T0 + 50},
                                                                    {"BTCUSDT": T0 + 60})
    deduper = Deduper(processor.deduper.entries())
    assert deduper.entries() == processor.deduper.entries() and len(deduper) == len(processor.deduper)
