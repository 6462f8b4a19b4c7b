"""Event time (backstop.core.ordering, docs/design.md §4 Admission): the journal clock that one record cannot move,
late and ahead records, quiet gaps that still apply, per-symbol clocks that one record cannot poison, and all of it
the same after a snapshot."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from backstop.core.ordering import MAX_AHEAD_MS, MAX_LATENESS_MS, JournalClock
from backstop.core.processor import Applied, Duplicate, Outcome, Processor, Rejection
from backstop.core.snapshot import restore, state_document, state_hash
from scenario import fill, fund, funding, instrument, liquidation, mark, run, transfer

T0 = 1_900_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
BASE = [fund(ts=T0), instrument(tick="0.1", lot="0.001", ts=T0), transfer("seed", "fund:MAIN", "100000", ts=T0),
        transfer("d-u", "u", "10000", ts=T0), transfer("d-v", "v", "10000", ts=T0)]


def kinds(outcomes: list[Outcome]) -> list[str]:
    return [o.kind if isinstance(o, Rejection) else type(o).__name__ for o in outcomes]


def trades(start: int, count: int, *, step: int = 60_000, prefix: str = "t") -> list[dict[str, Any]]:
    """Valid fills between u and v, one per `step` ms from `start`."""
    return [fill(f"{prefix}{i}", "u" if i % 2 else "v", "buy" if i % 2 else "sell", "0.01", "50000",
                 ts=start + i * step) for i in range(count)]


def test_the_clock_is_the_median_of_the_last_three_applied_and_never_moves_back() -> None:
    clock = JournalClock()
    for ts, expected in ((100, 100), (50, 50), (70, 70), (10**12, 70), (80, 80), (60, 80), (90, 80), (95, 90)):
        clock.advance(ts)
        assert clock.ts == expected, (ts, clock.recent)


def test_one_record_a_day_or_three_years_ahead_is_dead_lettered_and_every_record_after_it_applies() -> None:
    for ahead in (DAY, 3 * 365 * DAY):
        valid = trades(T0 + 60_000, 19)
        outlier = fill("bad-clock", "u", "buy", "0.01", "50000", ts=T0 + 60_000 + ahead)
        processor, outcomes = run([*BASE, *valid[:5], outlier, *valid[5:]])
        assert kinds(outcomes[len(BASE):]) == ["Applied"] * 5 + ["ahead"] + ["Applied"] * 14
        reason = outcomes[len(BASE) + 5]
        assert isinstance(reason, Rejection)
        assert reason.reason.startswith(f"ahead of the journal: ts {T0 + 60_000 + ahead} is ")
        assert reason.reason.endswith(f"ms after the journal's time (ts {T0 + 5 * 60_000}); at most {MAX_AHEAD_MS} "
                                      f"ms is accepted")
        alone, _ = run([*BASE, *valid])
        assert state_hash(processor.engine) == state_hash(alone.engine)  # as if it had never been sent


def test_one_record_less_than_the_bound_ahead_is_applied_and_makes_no_record_after_it_late() -> None:
    valid = trades(T0 + 60_000, 19)
    near = fill("skewed", "u", "buy", "0.01", "50000", ts=T0 + 11 * HOUR)
    _, outcomes = run([*BASE, *valid[:5], near, *valid[5:]])
    assert kinds(outcomes[len(BASE):]) == ["Applied"] * 20


def test_a_record_a_little_late_is_applied_one_too_late_is_rejected_with_the_lag() -> None:
    now = T0 + HOUR
    processor, outcomes = run([*BASE, *trades(now, 3, step=0),
                               fill("b", "v", "sell", "1", "50000", ts=now - MAX_LATENESS_MS),
                               fill("c", "v", "sell", "1", "50000", ts=now - MAX_LATENESS_MS - 1)])
    assert kinds(outcomes[-2:]) == ["Applied", "late"]
    last = outcomes[-1]
    assert isinstance(last, Rejection)
    assert last.reason == (f"late: ts {now - MAX_LATENESS_MS - 1} is {MAX_LATENESS_MS + 1} ms behind the journal "
                           f"clock (ts {now}); at most {MAX_LATENESS_MS} ms is accepted")
    assert processor.engine.clock.ts == now  # late records do not move the clock back


def test_quiet_gaps_apply_a_market_idle_for_an_hour_funding_eight_hours_apart_eleven_hours_of_silence() -> None:
    journal = [*BASE, fill("a", "u", "buy", "1", "50000", ts=T0 + 1000), fill("b", "v", "sell", "1", "50000",
                                                                              ts=T0 + 1000),
               mark("50100", ts=T0 + 2000),
               mark("50200", ts=T0 + HOUR + 2000),  # the market was idle for an hour
               funding("0.0001", "50200", ts=T0 + 8 * HOUR),
               funding("0.0001", "50300", ts=T0 + 16 * HOUR),
               mark("50400", ts=T0 + 27 * HOUR),  # eleven hours of silence
               fill("c", "u", "sell", "1", "50400", ts=T0 + 27 * HOUR + 1)]
    processor, outcomes = run(journal)
    assert all(isinstance(o, Applied) for o in outcomes), kinds(outcomes)
    assert processor.engine.ledger.balance("wallet:u:USDT") == Decimal("10389.95")  # 10,000 - 5.02 - 5.03 + 400


def test_a_silence_longer_than_the_bound_costs_dead_letters_until_a_definition_moves_the_journal_past_it() -> None:
    """What a genuine silence of more than MAX_AHEAD_MS costs: the records after it are ahead of the journal until an
    operator sends a definition dated after it (e.g. the fund's definition again); then they can be sent again."""
    later = T0 + 13 * HOUR
    after = trades(later, 3, prefix="after")
    processor, outcomes = run([*BASE, *trades(T0 + 1000, 3), *after])
    assert kinds(outcomes[-3:]) == ["ahead"] * 3
    _, outcomes = run([fund(ts=later), *after], processor=processor)
    assert kinds(outcomes) == ["Applied"] * 4


def test_a_journal_that_starts_with_a_bad_clock_is_not_stopped_by_it() -> None:
    processor, outcomes = run([fund(ts=T0 + 3 * 365 * DAY), *BASE[1:], *trades(T0 + 1000, 4)])
    assert all(isinstance(o, Applied) for o in outcomes), kinds(outcomes)
    assert processor.engine.clock.ts == T0 + 1000 + 2 * 60_000  # the median of the last three


def test_a_stale_mark_is_rejected_and_the_mark_in_force_stays() -> None:
    processor, outcomes = run([*BASE, mark("50000", ts=T0 + 2000), mark("40000", ts=T0 + 1000),
                               mark("50100", ts=T0 + 2000)])
    assert [type(o) for o in outcomes[-3:]] == [Applied, Rejection, Applied]
    assert "stale mark: ts 1900000001000 is older than the BTCUSDT mark of ts 1900000002000" in str(outcomes[-2])
    assert processor.engine.marks["BTCUSDT"] == 50100  # same ts, later in the journal: it wins


def test_a_mark_or_liquidation_ahead_of_the_journal_does_not_make_the_marks_after_it_stale() -> None:
    setup = [*BASE, fill("a", "u", "buy", "1", "50000", ts=T0 + 1000), fill("b", "v", "sell", "1", "50000",
                                                                            ts=T0 + 1000)]
    for skewed in (mark("60000", ts=T0 + 11 * HOUR), liquidation("l1", "u", "0.5", "60000", ts=T0 + 11 * HOUR)):
        processor, outcomes = run([*setup, mark("50100", ts=T0 + 2000), skewed, mark("50200", ts=T0 + 3000),
                                   mark("50300", ts=T0 + 4000), mark("50250", ts=T0 + 3500)])
        assert kinds(outcomes[-5:]) == ["Applied", "Applied", "Applied", "Applied", "rejected"], skewed["type"]
        assert processor.engine.marks["BTCUSDT"] == 50300  # and once the journal reached it, a mark in force holds
        assert "stale mark" in str(outcomes[-1])


def test_funding_ahead_of_the_journal_does_not_block_the_next_funding_and_no_period_is_charged_twice() -> None:
    setup = [*BASE, fill("a", "u", "buy", "1", "50000", ts=T0 + 1000), fill("b", "v", "sell", "1", "50000",
                                                                            ts=T0 + 1000)]
    skewed = funding("0.0001", "50000", ts=T0 + 11 * HOUR)
    processor, outcomes = run([*setup, skewed, funding("0.0001", "50000", ts=T0 + 8 * HOUR), dict(skewed),
                               funding("0.0002", "50000", ts=T0 + 11 * HOUR)])
    assert kinds(outcomes[-4:]) == ["Applied", "Applied", "Duplicate", "conflicting_duplicate"]
    assert processor.engine.ledger.balance("wallet:u:USDT") == 10000 - 5 - 5  # two periods, each once


def test_funding_for_a_period_already_charged_or_an_older_one_is_rejected() -> None:
    processor, outcomes = run([*BASE, fill("a", "u", "buy", "1", "50000", ts=T0),
                               fill("b", "v", "sell", "1", "50000", ts=T0),
                               funding("0.0001", "50000", ts=T0 + 10), funding("0.0002", "50000", ts=T0 + 10),
                               funding("0.0001", "50000", ts=T0 + 5)])
    assert kinds(outcomes[-3:]) == ["Applied", "conflicting_duplicate", "rejected"]
    assert str(outcomes[-1]).count("stale funding: ts 1900000000005 is not after the BTCUSDT funding of ts")
    assert processor.engine.ledger.balance("wallet:u:USDT") == 10000 - 5  # charged once: 1 x 50,000 x 0.0001


def test_the_clock_and_the_per_symbol_clocks_survive_a_snapshot_and_decide_the_same() -> None:
    journal = [*BASE, mark("50000", ts=T0 + 50), funding("0.0001", "50000", ts=T0 + 60),
               mark("60000", ts=T0 + 11 * HOUR)]
    tail = [mark("50100", ts=T0 + 70), fill("x", "u", "buy", "0.01", "50000", ts=T0 + 2 * DAY),
            funding("0.0001", "50000", ts=T0 + 30)]
    processor, _ = run(journal)
    engine = restore(state_document(processor.engine))
    assert state_hash(engine) == state_hash(processor.engine)
    assert (engine.clock.recent, engine.clock.ts) == (processor.engine.clock.recent, processor.engine.clock.ts)
    _, whole = run(tail, processor=processor)
    _, resumed = run(tail, processor=Processor(engine))
    assert kinds(resumed) == kinds(whole) == ["Applied", "ahead", "rejected"]


def test_the_clock_is_part_of_the_state_hash() -> None:
    first, _ = run([*BASE, mark("50000", ts=T0 + 50)])
    second, _ = run([*BASE, mark("50000", ts=T0 + 50)])
    second.engine.clock.advance(T0 + 60)
    assert state_hash(first.engine) != state_hash(second.engine)


def test_duplicates_are_decided_before_the_clock() -> None:
    """A record sent again is a duplicate whenever it comes, not late."""
    original = fill("x", "u", "buy", "0.01", "50000", ts=T0 + 1)
    _, outcomes = run([*BASE, original, *trades(T0 + 2 * HOUR, 3), dict(original)])
    assert isinstance(outcomes[-1], Duplicate)


def test_a_mark_ahead_of_the_journal_does_not_make_an_older_mark_than_the_one_before_it_fresh() -> None:
    """A mark the journal has not reached bounds nothing: records are judged against the latest one it has reached,
    so inserting the skewed mark changes no other outcome."""
    journal = [*BASE, mark("50100", ts=T0 + 2000), mark("50000", ts=T0 + 1000), mark("50200", ts=T0 + 3000)]
    _, plain = run(journal)
    processor, skewed = run([*journal[:-2], mark("60000", ts=T0 + 11 * HOUR), *journal[-2:]])
    assert kinds(skewed[-3:]) == ["Applied", "rejected", "Applied"]
    assert kinds(plain[-2:]) == kinds(skewed[-2:])
    assert str(skewed[-2]).count("older than the BTCUSDT mark of ts 1900000002000")
    assert processor.engine.marks["BTCUSDT"] == 50200
