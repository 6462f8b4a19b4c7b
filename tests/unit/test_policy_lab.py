"""The policy comparison's table (backstop.entrypoints.policy_lab): what each cell says where a figure has no value,
and the names --policies takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from backstop.engines import EngineName
from backstop.entrypoints.policy_lab import parse_policies, table_rows, whatif_policies
from backstop.scenarios import WhatIfError, WhatIfFile
from scenario import fill, fund, instrument, liquidation, mark, transfer

EXAMPLE_07 = Path(__file__).parents[2] / "examples" / "07-adl-lab.jsonl"


def run(adl: dict[str, Any] | None, liquidations: int = 3) -> dict[str, Any]:
    return {"liquidations": liquidations, "adl": adl, "funds": {}}


def test_an_over_use_without_a_need_is_all_overshoot_and_no_round_is_a_dash() -> None:
    comparison = {"policies": ["queue", "socialized", "pro_rata"], "runs": {
        "queue": run({"rounds": 2, "needed": "0", "haircut": "12.5", "over_use": None}),
        "socialized": run({"rounds": 0, "needed": "0", "haircut": "0", "over_use": None}),
        "pro_rata": run({"rounds": 1, "needed": "4", "haircut": "12", "over_use": "3"}, liquidations=4)}}
    rows = dict(table_rows(comparison))
    assert rows["over-use (haircut / needed)"] == ["all overshoot", "-", "3"]
    assert rows["liquidations"] == ["3", "3", "4"]  # a simulation's cascades can differ: said, not hidden


def test_policies_take_bitmex_for_queue_once() -> None:
    assert parse_policies("bitmex, pro_rata") == ["queue", "pro_rata"]
    with pytest.raises(WhatIfError, match="a policy is named twice"):
        parse_policies("queue,bitmex")


@pytest.mark.parametrize("engine", ["reference", "compiled"])
def test_a_fund_that_keeps_its_lot_shows_the_loss_at_the_mark_it_has_not_realized(tmp_path: Path,
                                                                                   engine: EngineName) -> None:
    """Example 07: socialized keeps the long lot of 6 at BP 90 (cost 540) with the mark at 85 (worth 510), so its
    balance of 20 is -10 at the mark; the queue deleveraged the lot (its haircut of 30 is that loss)."""
    comparison = whatif_policies(EXAMPLE_07, WhatIfFile(), ["queue", "socialized"], tmp_path / "out", engine=engine)
    rows = dict(table_rows(comparison))
    assert rows["fund LAB final balance"] == ["20", "20"]
    assert rows["fund LAB inventory uPnL"] == ["0", "-30"]
    assert rows["fund LAB balance at mark"] == ["20", "-10"]
    summary = json.loads((tmp_path / "out" / "socialized" / "summary.json").read_text())
    assert summary["funds"]["LAB"]["inventory_upnl"] == "-30"


@pytest.mark.parametrize(("balance", "floor", "needs"), [("50", "0", ["30", "30", "30"]),
                                                     ("100", "20", ["0", "0", "0"])])
def test_the_cascade_s_need_pays_each_earlier_deficit_the_fund_could(tmp_path: Path, balance: str, floor: str,
                                                                     needs: list[str]) -> None:
    """Two lots of deficit 40 each. With a fund of 50 the queue's rounds each need 0 (at the bankruptcy price the
    first debits nothing) where a fund that had paid the first could pay only 10 of the second: the cascade needs
    30, as OKX's (the first at the mark, paid) and Bybit's (the first at its reset proceeds, partly paid) do. With
    100 above a floor of 20 the fund could have paid both: none."""
    setup = [fund("LAB", ratio="0"), instrument("XUSDT", fund_id="LAB", tick="0.01", lot="1"),
             transfer("seed", "fund:LAB", balance), transfer("d-L1", "L1", "100"), transfer("d-L2", "L2", "100"),
             transfer("d-S", "S", "1000")]
    trades = [fill("f-S", "S", "sell", "20", "100", symbol="XUSDT", mode="isolated", leverage="2"),
              fill("f-L1", "L1", "buy", "10", "100", symbol="XUSDT", mode="isolated", leverage="10"),
              fill("f-L2", "L2", "buy", "10", "100", symbol="XUSDT", mode="isolated", leverage="10"),
              mark("86", symbol="XUSDT"),
              liquidation("liq-L1", "L1", "10", "86", symbol="XUSDT"), liquidation("liq-L2", "L2", "10", "86",
                                                                                    symbol="XUSDT")]
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in [*setup, *trades]))
    params = WhatIfFile.model_validate({"baseline": {"adl": {"floor": floor}}})
    rows = dict(table_rows(whatif_policies(journal, params, ["queue", "okx", "bybit"], tmp_path / "out")))
    assert rows["deficit"] == ["80", "80", "80"]
    assert rows["fund LAB cascade need"] == needs
