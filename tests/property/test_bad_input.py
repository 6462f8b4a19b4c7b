"""Fuzzed input against the decoder and the engine: every bad record is refused with a reason, nothing crashes,
and a refused record changes neither state nor hashes."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from backstop.core.processor import Applied, Duplicate, Processor, Rejection
from backstop.core.snapshot import state_hash
from backstop.entrypoints import cli
from backstop.wire.decode import InvalidRecord, decode_record
from fuzzing import SETUP, TEMPLATES, mutated
from scenario import run

BLANK = b" \t\r"  # what the journal readers skip as a blank line (bytes.strip() would also take \x0b, \x0c)


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
    fresh = Processor(processor.engine)
    last_mark = [record for record in applied if record["type"] == "mark"][-1]
    for record in replayed:
        outcome = fresh.process(decode_record(orjson.dumps(record)))
        if record["type"] == "mark" and record is not last_mark:  # only the last mark is remembered: older is stale
            assert isinstance(outcome, Rejection) and outcome.reason.startswith("stale mark"), outcome
        else:
            assert isinstance(outcome, Duplicate), outcome
    assert (state_hash(processor.engine), processor.engine.head_hash) == before


@settings(max_examples=50)
@given(st.lists(st.one_of(mutated(), st.binary(max_size=300)), min_size=1, max_size=20),
       st.randoms(use_true_random=False))
def test_backstop_replay_dead_letters_fuzzed_lines_and_the_rest_replays_alone(fuzzed: list[bytes],
                                                                            rng: random.Random) -> None:
    """Through the `backstop replay` command: it never fails on a bad line, every line that does not decode is
    dead-lettered with a reason, and the file without its dead-lettered lines replays to the same hashes."""
    lines = [orjson.dumps(record) for record in SETUP + TEMPLATES]
    for raw in fuzzed:
        lines.insert(rng.randint(len(SETUP), len(lines)), raw)
    with tempfile.TemporaryDirectory() as scratch:
        journal, clean = Path(scratch) / "fuzzed.jsonl", Path(scratch) / "clean.jsonl"
        journal.write_bytes(b"\n".join(lines) + b"\n")
        assert cli.main(["replay", str(journal), "--out", f"{scratch}/out", "--check-conservation"]) == 0
        dead = [orjson.loads(line) for line in Path(scratch, "out", "dead-letter.jsonl").read_bytes().splitlines()]
        assert all(letter["reason"] for letter in dead)
        dead_lines = {letter["line"] for letter in dead}
        parts = journal.read_bytes().split(b"\n")
        for number, part in enumerate(parts, start=1):
            if part.strip(BLANK):
                try:
                    decode_record(part.rstrip(b"\r"))
                except InvalidRecord:
                    assert number in dead_lines, f"line {number} does not decode but was not dead-lettered"
        summary = orjson.loads(Path(scratch, "out", "summary.json").read_bytes())
        read = sum(1 for part in parts if part.strip(BLANK))
        assert summary["events_applied"] + summary["duplicates"] + summary["rejected"] == read
        clean.write_bytes(b"\n".join(p for n, p in enumerate(parts, start=1) if n not in dead_lines))
        assert cli.main(["replay", str(clean), "--out", f"{scratch}/clean", "--strict"]) == 0
        alone = orjson.loads(Path(scratch, "clean", "summary.json").read_bytes())
        assert (alone["head_hash"], alone["state_hash"]) == (summary["head_hash"], summary["state_hash"])
