"""Numeric extremes (issue #19 item 5, docs/design.md §9): values at and just beyond every bound, in every field,
and journals that push positions to the state bounds. Nothing but a rejection ever leaves the decoder, the
processor or Engine.apply; replay, audit verify --journal, explain and whatif never crash on these journals."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backstop.core.documents import accounts, summary
from backstop.core.engine import Engine
from backstop.core.processor import Applied, Duplicate, Processor, Rejection
from backstop.core.snapshot import state_hash
from backstop.entrypoints import cli
from backstop.wire.decode import InvalidRecord, decode_record
from backstop.wire.inputs import decimal_fields
from extremes import (
    FINE,
    FUND_ID,
    IN_BOUND_POISON,
    ISSUE_19_POISON,
    boundary_values,
    build_journal,
    lines,
)
from scenario import fill, fund, funding, instrument, liquidation, mark, run, transfer

T = TypeVar("T")


class _Draws:
    """extremes.Chooser over hypothesis draws."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def pick(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(options))

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))


@st.composite
def extreme_journals(draw: st.DrawFn, max_events: int = 40) -> list[dict[str, Any]]:
    return build_journal(_Draws(draw), draw(st.integers(1, max_events)))


def _apply_all(journal: list[dict[str, Any]]) -> Processor:
    """Every record through a conservation-checking processor: each outcome is applied, a duplicate or a
    rejection with its reason, and a rejection changes nothing (any other exception fails the test)."""
    processor = Processor(Engine(check_conservation=True))
    for record in journal:
        try:
            decoded = decode_record(orjson.dumps(record))
        except InvalidRecord as error:
            assert str(error)
            continue
        before = (state_hash(processor.engine), processor.engine.head_hash)
        outcome = processor.process(decoded)
        assert isinstance(outcome, Applied | Duplicate | Rejection)
        if isinstance(outcome, Rejection):
            assert outcome.reason
            assert (state_hash(processor.engine), processor.engine.head_hash) == before
    return processor


# A world where each field's record can apply: a fund, an instrument with tick and lot 1e-8, rich accounts, an open
# isolated long of x0 and a cross short of x1.
WORLD = [fund(FUND_ID, ratio="1"), instrument(FINE, fund_id=FUND_ID, tick="0.00000001", lot="0.00000001"),
         transfer("seed", f"fund:{FUND_ID}", "1000000"), transfer("d0", "x0", "9999999999999999"),
         transfer("d1", "x1", "9999999999999999"), fill("o0", "x0", "buy", "2", "100", symbol=FINE, mode="isolated"),
         fill("o1", "x1", "sell", "2", "100", symbol=FINE)]
TEMPLATES = {
    "fund": fund(FUND_ID, ratio="1"),
    "instrument": instrument(FINE, fund_id=FUND_ID, tick="0.00000001", lot="0.00000001"),
    "transfer": transfer("t", "x0", "1"),
    "fill": fill("f", "x0", "buy", "1", "100", symbol=FINE, mode="isolated"),
    "mark": mark("100", symbol=FINE),
    "funding": funding("0.0001", "100", symbol=FINE),
    "liquidation": liquidation("l", "x0", "2", "100", symbol=FINE, executions=[("1", "100")]),
}


def _with(field: str, value: str) -> dict[str, Any]:
    record_type, *path = field.replace("[]", ".0").split(".")
    record: dict[str, Any] = orjson.loads(orjson.dumps(TEMPLATES[record_type]))
    target = record
    for step in path[:-1]:
        target = target[int(step)] if step.isdigit() else target[step]
    target[path[-1]] = value
    return record


FIELD_VALUES = [(field, value) for field, (kind, sign) in sorted(decimal_fields().items())
                for value in boundary_values(kind, sign)]


@pytest.mark.parametrize(("field", "value"), FIELD_VALUES)
def test_every_field_at_and_beyond_its_bounds_is_applied_or_refused_with_a_reason(field: str, value: str) -> None:
    record = _with(field, value)
    _apply_all([*WORLD, record, mark("0.00000001", symbol=FINE), mark("9999999999.99999999", symbol=FINE),
                liquidation("l2", "x1", "2", "9999999999.99999999", symbol=FINE)])


@given(extreme_journals())
@example([*WORLD, ISSUE_19_POISON, IN_BOUND_POISON, mark("0.00000001", symbol=FINE),
          liquidation("lp", "x0", "999999999999.99999999", "0.00000001", symbol=FINE)])
def test_journals_at_the_bounds_apply_or_reject_and_never_raise(journal: list[dict[str, Any]]) -> None:
    processor = _apply_all(journal)
    assert summary(processor)["ledger_sum"] == "0"
    accounts(processor.engine)  # every position's view at the extremes: BP, liquidation price, margin


def test_the_issue_19_poison_is_a_wire_rejection_naming_the_bound() -> None:
    with pytest.raises(InvalidRecord) as refused:
        decode_record(orjson.dumps(ISSUE_19_POISON))
    assert str(refused.value).startswith('fill.qty: at most 12 integer and 8 fraction digits: "99999999999999999999"')
    twin = dict(IN_BOUND_POISON, account_id="x2", fill_id="twin")  # its largest twin within the bounds applies
    processor, outcomes = run([*WORLD, twin])
    assert isinstance(outcomes[-1], Applied)
    position = processor.engine.positions.get("x2", FINE)
    # (10^12 - 1e-8)(10^10 - 1e-8) = 10^22 - 10^4 - 10^2 + 1e-16, exact
    assert (position.qty, position.cost) == (Decimal("999999999999.99999999"),
                                             Decimal("9999999999999999989900.0000000000000001"))
    # isolated margin at leverage 0.01: the value x 100 = ...98990000.00000000000001, half-even to 1e-8
    assert processor.engine.ledger.balance(f"isolated:x2:{FINE}") == Decimal("999999999999999998990000")


WHATIF = """
[alternative.simulation]
slippage_bps = "9999"
market_fill = "0.5"
[alternative.adl]
rule = "pro_rata"
price = "mark"
"""


@settings(max_examples=15)
@given(extreme_journals(max_events=25))
@example([*WORLD, ISSUE_19_POISON, IN_BOUND_POISON, mark("0.00000001", symbol=FINE),
          liquidation("lp", "x0", "999999999999.99999999", "0.00000001", symbol=FINE)])
def test_replay_audit_explain_and_whatif_never_crash_at_the_bounds(journal: list[dict[str, Any]]) -> None:
    """Through the commands: replay exits 0 (bad lines dead-lettered), audit verify --journal re-derives and
    verifies it, explain answers for every output and liquidation (0, or 2 for one that was not applied), whatif
    runs both scenarios. An exception from any of them fails the test."""
    with tempfile.TemporaryDirectory() as scratch:
        path, out = Path(scratch) / "extreme.jsonl", Path(scratch) / "out"
        path.write_bytes(lines(journal))
        assert cli.main(["replay", str(path), "--out", str(out), "--check-conservation"]) == 0
        assert cli.main(["audit", "verify", str(out), "--journal", str(path)]) == 0
        assert cli.main(["reconcile", str(out)]) == 0
        ids = [orjson.loads(line)["id"] for stream in ("fund-ledger", "adl-events")
               for line in (out / f"{stream}.jsonl").read_bytes().splitlines()]
        ids += [record["liquidation_id"] for record in journal if record["type"] == "liquidation"]
        for identifier in ids[:6]:
            assert cli.main(["explain", identifier, "--journal", str(path), "--json"]) in (0, 2)
        params = Path(scratch) / "alt.toml"
        params.write_text(WHATIF)
        assert cli.main(["whatif", str(path), "--params", str(params), "--out", f"{scratch}/whatif"]) == 0


def test_a_simulated_liquidation_at_the_largest_price_stays_a_valid_record() -> None:
    """Found by the test above: what-if's simulation priced a short's liquidation order at mark + slippage, beyond
    the PRICE bound, and its own record failed to decode (a traceback from `backstop whatif`). The price is now
    capped at the largest PRICE on the tick grid (docs/design.md §9.4)."""
    from backstop.core.simulation import SimulationParams, Simulator

    processor = Processor(Engine(check_conservation=True))
    simulator = Simulator(processor, SimulationParams(slippage_bps=Decimal(9999), market_fill=Decimal("0.5")))
    results = []
    for record in [*WORLD, transfer("d3", "x3", "1000"), fill("o3", "x3", "sell", "2", "100", symbol=FINE),
                   mark("9999999999.99999999", symbol=FINE)]:
        results += simulator.process(decode_record(orjson.dumps(record)))
    decided = [(record, outcome) for record, outcome in results if record.type == "liquidation"]
    assert [record.account_id for record, _ in decided] == ["x3"]  # the small cross short, far under water
    record, outcome = decided[0]
    assert isinstance(outcome, Applied)
    assert [(e.qty, e.price) for e in record.executions] == [(Decimal(1), Decimal("9999999999.99999999"))]
