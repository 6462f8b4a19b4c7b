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
from strategies import HOUR, SYMBOLS, T0, journals, outlier, outlier_kinds, timed

from backstop.core.idstore import IdStore
from backstop.core.numbers import text
from backstop.core.ordering import MAX_AHEAD_MS, MAX_LATENESS_MS
from backstop.core.processor import Outcome, Processor, Rejection
from backstop.core.snapshot import restore, state_document, state_hash
from scenario import run

YEARS = 3 * 365 * 24 * HOUR
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
    inserts = data.draw(st.lists(st.tuples(st.integers(0, len(journal)), outlier_kinds, symbols,
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
    record = outlier(data.draw(outlier_kinds), 0, ts, data.draw(symbols))
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
        journal.insert(position, outlier(data.draw(outlier_kinds), number, base + ahead, data.draw(symbols)))
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
