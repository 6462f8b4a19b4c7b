"""The policy comparison's table (backstop.entrypoints.policy_lab): what each cell says where a figure has no value,
and the names --policies takes."""

from __future__ import annotations

from typing import Any

import pytest

from backstop.entrypoints.policy_lab import parse_policies, table_rows
from backstop.scenarios import WhatIfError


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
