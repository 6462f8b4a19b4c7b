"""Event time under hypothesis (docs/design.md §4, Admission): records far ahead, inserted anywhere in generated
journals, change nothing else; one record ahead within the bound makes nothing after it late, ahead or stale; and a
journal decides the same from a snapshot as in one run."""

from __future__ import annotations

import dataclasses
import io
import re
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import SYMBOLS, journals

from backstop.core.idstore import IdStore
from backstop.core.numbers import text
from backstop.core.ordering import MAX_AHEAD_MS, MAX_LATENESS_MS
from backstop.core.processor import Outcome, Processor, Rejection
from backstop.core.snapshot import restore, state_document, state_hash
from scenario import fill, funding, liquidation, mark, run, transfer

T0 = 1_800_000_000_000
HOUR = 3_600_000
YEARS = 3 * 365 * 24 * HOUR


@st.composite
def timed(draw: st.DrawFn, journal: list[dict[str, Any]], *, jitter: bool) -> list[dict[str, Any]]:
    """The journal re-timed: steps of up to 2 s, now and then an hour or up to eleven hours of quiet; with `jitter`,
    some records up to twice the lateness window behind (some of them late)."""
    now, result = T0, []
    for record in journal:
        gap = draw(st.integers(0, 30))
        now += HOUR if gap == 0 else draw(st.integers(HOUR, 11 * HOUR)) if gap == 1 else draw(st.integers(0, 2000))
        behind = draw(st.integers(0, 2 * MAX_LATENESS_MS)) if jitter and draw(st.integers(0, 4)) == 0 else 0
        result.append({**record, "ts": now - behind})
    return result


def outlier(kind: str, number: int, ts: int, symbol: str) -> dict[str, Any]:
    """A valid record of `kind` but for its ts, with an identity of its own."""
    price = str(SYMBOLS[symbol][2])
    if kind == "fill":
        return fill(f"outlier-{number}", "a0", "buy", str(SYMBOLS[symbol][1]), price, symbol=symbol, ts=ts)
    if kind == "transfer":
        return transfer(f"outlier-{number}", "a1", "10", ts=ts)
    if kind == "mark":
        return mark(price, symbol=symbol, ts=ts)
    if kind == "funding":
        return funding("0.0001", price, symbol=symbol, ts=ts)
    return liquidation(f"outlier-{number}", "a2", str(SYMBOLS[symbol][1]), price, symbol=symbol, ts=ts)


kinds_of_outliers = st.sampled_from(["fill", "transfer", "mark", "funding", "liquidation"])
symbols = st.sampled_from(sorted(SYMBOLS))


def spelled_alike(outcomes: list[Outcome]) -> list[Outcome]:
    """Rejection reasons with decimals in one spelling: a restored snapshot holds 949.99 where the run that wrote it
    held 949.99000000 (equal numbers, as the state hash says; only a reason that quotes one shows it)."""
    return [dataclasses.replace(o, reason=re.sub(r"\d+\.\d+", lambda m: text(Decimal(m.group(0))), o.reason))
            if isinstance(o, Rejection) else o for o in outcomes]


def time_rejection(outcome: Outcome) -> bool:
    return isinstance(outcome, Rejection) and (outcome.kind in ("late", "ahead") or outcome.reason.startswith("stale"))


@given(journals(), st.data())
def test_records_far_ahead_inserted_anywhere_change_nothing_else(journal: list[dict[str, Any]],
                                                                data: st.DataObject) -> None:
    journal = data.draw(timed(journal, jitter=True))
    plain_processor, plain = run(journal)
    far = max(record["ts"] for record in journal) + MAX_AHEAD_MS + 1  # ahead of any journal time it meets
    inserts = data.draw(st.lists(st.tuples(st.integers(0, len(journal)), kinds_of_outliers, symbols,
                                           st.integers(0, YEARS)), min_size=1, max_size=4))
    mixed: list[tuple[bool, dict[str, Any]]] = [(False, record) for record in journal]
    for number, (position, kind, symbol, beyond) in enumerate(sorted(inserts, key=lambda i: -i[0])):
        mixed.insert(position, (True, outlier(kind, number, far + beyond, symbol)))
    processor, outcomes = run([record for _, record in mixed])
    assert [o for (is_outlier, _), o in zip(mixed, outcomes, strict=True) if not is_outlier] == plain
    assert (processor.engine.head_hash, state_hash(processor.engine)) == (plain_processor.engine.head_hash,
                                                                          state_hash(plain_processor.engine))
    applied_before = False
    for (is_outlier, _), outcome in zip(mixed, outcomes, strict=True):
        if is_outlier:
            assert isinstance(outcome, Rejection)
            assert outcome.kind == "ahead" or not applied_before, outcome  # before the first, there is no clock
        applied_before = applied_before or not isinstance(outcome, Rejection)


@given(journals(), st.data())
def test_one_record_ahead_within_the_bound_makes_nothing_after_it_late_ahead_or_stale(journal: list[dict[str, Any]],
                                                                                      data: st.DataObject) -> None:
    journal = data.draw(timed(journal, jitter=False))
    _, plain = run(journal)
    # in order, nothing is late or stale; ahead only after quiet spells around refused records (N is the last applied)
    assume(not any(time_rejection(o) for o in plain))
    position = data.draw(st.integers(1, len(journal)))
    head, _ = run(journal[:position])
    clock = head.engine.clock
    now = max(clock.ts or T0, clock.recent[-1] if clock.recent else T0)
    ts = now + data.draw(st.integers(MAX_LATENESS_MS + 1, MAX_AHEAD_MS))
    record = outlier(data.draw(kinds_of_outliers), 0, ts, data.draw(symbols))
    _, outcomes = run([record, *journal[position:]], processor=Processor(
        restore(state_document(head.engine), ids=_copy(head))))  # from a snapshot, too
    _, outcomes_alone = run([*journal[:position], record, *journal[position:]])
    assert spelled_alike(outcomes_alone[position:]) == spelled_alike(outcomes)
    for later, outcome in zip(journal[position:], outcomes[1:], strict=True):
        if later["ts"] < ts - MAX_LATENESS_MS:  # before the journal reaches the outlier's time
            assert not time_rejection(outcome), (later, outcome)


@given(journals(), st.data())
def test_a_journal_with_late_and_far_records_decides_the_same_from_a_snapshot(journal: list[dict[str, Any]],
                                                                             data: st.DataObject) -> None:
    journal = data.draw(timed(journal, jitter=True))
    for number, position in enumerate(data.draw(st.lists(st.integers(0, len(journal)), max_size=3))):
        ahead = data.draw(st.sampled_from([MAX_LATENESS_MS + 1, 11 * HOUR, MAX_AHEAD_MS + 1, YEARS]))
        base = journal[min(position, len(journal) - 1)]["ts"]
        journal.insert(position, outlier(data.draw(kinds_of_outliers), number, base + ahead, data.draw(symbols)))
    whole, outcomes = run(journal)
    split = data.draw(st.integers(0, len(journal)))
    head, _ = run(journal[:split])
    document = orjson.loads(orjson.dumps(state_document(head.engine)))
    resumed = Processor(restore(document, check_conservation=True, ids=_copy(head)))
    _, tail = run(journal[split:], processor=resumed)
    assert spelled_alike(tail) == spelled_alike(outcomes[split:])
    assert state_hash(resumed.engine) == state_hash(whole.engine)


def _copy(processor: Processor) -> IdStore:
    """The processor's identities through their snapshot file."""
    buffer = io.BytesIO()
    store = processor.engine.dedupe.ids
    assert isinstance(store, IdStore)
    store.write(buffer)
    buffer.seek(0)
    return IdStore.read(buffer)[0]
