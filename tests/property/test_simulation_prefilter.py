"""Simulation mode's float prefilter (backstop.core.simulation.surely_safe) only skips positions the exact check would
not liquidate: a simulated run decides the same liquidations, and writes the same journal and hashes, with it and
without it, on generated streams, near bracket edges and with margins at the float limits."""

from __future__ import annotations

from decimal import Decimal

import orjson
from hypothesis import given
from hypothesis import strategies as st

from backstop.core.engine import Engine
from backstop.core.hashing import canonical_json
from backstop.core.processor import Processor
from backstop.core.simulation import SimulationParams, Simulator
from backstop.wire.decode import decode_record
from backstop.wire.translate import wire_document
from property.strategies import journals


def simulated(records: list[dict[str, object]], *, prefilter: bool, slippage: Decimal) -> tuple[list[bytes], str]:
    processor = Processor(Engine())
    simulator = Simulator(processor, SimulationParams(slippage, True, Decimal("0.7")), prefilter=prefilter)
    lines = []
    for record in records:
        for applied, _ in simulator.process(decode_record(orjson.dumps(record))):
            lines.append(canonical_json(wire_document(applied)))
    return lines, processor.engine.head_hash


@given(records=journals(max_events=80), slippage=st.sampled_from([Decimal(0), Decimal(25)]))
def test_the_prefilter_changes_no_decision(records: list[dict[str, object]], slippage: Decimal) -> None:
    assert simulated(records, prefilter=True, slippage=slippage) == simulated(records, prefilter=False,
                                                                              slippage=slippage)
