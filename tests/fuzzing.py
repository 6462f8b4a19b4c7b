"""Hypothesis strategies for bad input, shared by the engine's fuzz tests and the service's (through Kafka)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

from scenario import fill, fund, funding, instrument, liquidation, mark, transfer

SETUP = [fund(), instrument(tick="0.1", lot="0.001"), transfer("seed", "fund:MAIN", "100000"),
         transfer("d", "u", "10000"), fill("o", "u", "buy", "1", "50000", mode="isolated"), mark("50000")]
TEMPLATES = [fill("f", "u", "sell", "0.5", "50000.1"), mark("49000"), funding("0.0001", "50000"),
             liquidation("l", "u", "1", "45000", executions=[("0.5", "44990")]), transfer("t", "u", "5"),
             instrument("ETHUSDT"), fund("OTHER")]

nasty_strings = st.sampled_from([
    "", "-0", "0", "1e5", "1E-3", "NaN", "Infinity", "-Infinity", "0x10", "1_000", " 1", "1 ", "+1", "1.", ".5",
    "9" * 21, "1." + "1" * 19, "0.000000000000000001", "99999999999999999999.999999999999999999",
    "\u0661\u0662", "1\u00a0", "\u202e", "x" * 200, "fund:", "fund:MAIN", "u\x00", "ETH/USDT", "btcusdt"])
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=True) | nasty_strings
           | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    record: dict[str, Any] = dict(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "drop", "add", "ts"]))
        key = draw(st.sampled_from(sorted(record)))
        if action == "set":
            record[key] = draw(json_values)
        elif action == "drop":
            record.pop(key, None)
        elif action == "add":
            record[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
        else:
            record["ts"] = draw(st.integers(-(2**63), 2**63 - 1))
    return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS) if draw(st.booleans()) else \
        orjson.dumps(record)[: draw(st.integers(0, 400))]
