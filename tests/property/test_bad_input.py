"""Fuzzed input against the decoder and the engine: every bad record is refused with a reason, nothing crashes,
and a refused record changes neither state nor hashes."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from backstop.core.processor import Applied, Duplicate, Processor, Rejection
from backstop.core.snapshot import state_hash
from backstop.wire.decode import InvalidRecord, decode_record
from fuzzing import SETUP, TEMPLATES, mutated
from scenario import run


@given(st.one_of(mutated(), st.binary(max_size=300)))
def test_bad_input_is_refused_with_a_reason_and_changes_nothing(raw: bytes) -> None:
    processor, outcomes = run(SETUP)
    assert all(isinstance(o, Applied) for o in outcomes)
    before = (state_hash(processor.engine), processor.engine.head_hash)
    try:
        record = decode_record(raw)
    except InvalidRecord as error:
        assert str(error)
        return
    outcome = processor.process(record)
    if isinstance(outcome, Rejection):
        assert outcome.reason
        assert (state_hash(processor.engine), processor.engine.head_hash) == before
    else:
        assert isinstance(outcome, Applied | Duplicate)  # a mutation can still be a valid record


@given(st.lists(st.integers(0, len(SETUP + TEMPLATES) - 1), min_size=1, max_size=12))
def test_old_ids_replayed_in_any_order_are_duplicates(picks: list[int]) -> None:
    journal = SETUP + TEMPLATES
    processor, outcomes = run(journal)
    applied = [record for record, outcome in zip(journal, outcomes, strict=True) if isinstance(outcome, Applied)]
    replayed = [applied[i % len(applied)] for i in picks]  # only what was applied is remembered
    before = (state_hash(processor.engine), processor.engine.head_hash)
    fresh = Processor(processor.engine, processor.deduper)
    for record in replayed:
        outcome = fresh.process(decode_record(orjson.dumps(record)))
        assert isinstance(outcome, Duplicate), outcome
    assert (state_hash(processor.engine), processor.engine.head_hash) == before
