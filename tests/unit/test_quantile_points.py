"""Quantile points as an option (docs/design.md §10, "ADL quantiles and risk levels"): off by default for a replay of
a journal file, on with --adl-quantiles and in the service; summary.json records which, and audit re-derives with it
so that the state hash (which holds the quantiles published) is reproduced either way."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from backstop.core import ledger, quantiles
from backstop.core.adl_policy import AdlPolicy
from backstop.core.engine import Engine
from backstop.core.processor import Processor
from backstop.entrypoints.cli import main
from backstop.settings import Settings
from backstop.wire.decode import decode_record

ADL_EXAMPLE = Path(__file__).parents[2] / "examples" / "02-adl-walks-queue.jsonl"


def replayed(out: Path, *flags: str) -> dict[str, object]:
    assert main(["replay", str(ADL_EXAMPLE), "--out", str(out), *flags]) == 0
    summary: dict[str, object] = json.loads((out / "summary.json").read_text())
    return summary


def test_a_replay_has_no_quantile_points_unless_asked(tmp_path: Path) -> None:
    off = replayed(tmp_path / "off")
    on = replayed(tmp_path / "on", "--adl-quantiles")
    assert (tmp_path / "off" / "adl-quantiles.jsonl").read_bytes() == b""
    published = [json.loads(line) for line in (tmp_path / "on" / "adl-quantiles.jsonl").read_text().splitlines()]
    assert {record["kind"] for record in published} == {"quantile", "risk"}
    assert (off["adl_quantile_points"], off["adl_quantiles"]) == (False, 0)
    assert (on["adl_quantile_points"], on["adl_quantiles"]) == (True, len(published))
    assert on["head_hash"] == off["head_hash"] and on["state_hash"] != off["state_hash"]
    for name in ("fund-ledger.jsonl", "adl-events.jsonl", "postings.jsonl", "accounts.json"):
        assert (tmp_path / "on" / name).read_bytes() == (tmp_path / "off" / name).read_bytes(), name


@pytest.mark.parametrize("flags", [(), ("--adl-quantiles",)], ids=["points-off", "points-on"])
def test_audit_re_derives_with_the_setting_the_outputs_were_written_with(
        flags: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replayed(tmp_path / "out", *flags)
    capsys.readouterr()
    code = main(["audit", "verify", str(tmp_path / "out"), "--journal", str(ADL_EXAMPLE)])
    assert code == 0 and "head hash and state hash reproduced" in capsys.readouterr().out


def test_audit_catches_a_summary_that_misstates_the_setting(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    replayed(tmp_path / "out", "--adl-quantiles")
    summary_path = tmp_path / "out" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["adl_quantile_points"] = False
    summary_path.write_text(json.dumps(summary))
    capsys.readouterr()
    code = main(["audit", "verify", str(tmp_path / "out"), "--journal", str(ADL_EXAMPLE)])
    assert code == 1 and "state_hash" in capsys.readouterr().out


def test_the_service_publishes_quantiles_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKSTOP_ADL_QUANTILES", raising=False)
    assert Settings().adl_quantiles is True
    monkeypatch.setenv("BACKSTOP_ADL_QUANTILES", "false")
    assert Settings().adl_quantiles is False


def test_the_funds_capacity_is_its_room_above_the_policys_floor() -> None:
    """The risk level's capacity is what the takeover rule still lets the fund take (docs/design.md §10): with the ADL
    lab's floor (§11), max_inventory_ratio x (balance - floor) - inventory notional, 0 at or below the floor."""
    processor = Processor(Engine())
    for line in ADL_EXAMPLE.read_bytes().splitlines():
        processor.process(decode_record(line))
    engine = processor.engine
    [fund_id] = engine.funds
    fund_state = engine.funds[fund_id]
    balance = engine.ledger.balance(ledger.fund(fund_id))
    ratio, notional = fund_state.spec.max_inventory_ratio, engine.inventory_notional(fund_state)
    assert quantiles.capacity(engine, fund_id) == max(ratio * balance - notional, Decimal(0))
    floor = balance / 4
    engine.adl_policy = AdlPolicy(price="floor", floor=floor)
    assert quantiles.capacity(engine, fund_id) == max(ratio * (balance - floor) - notional, Decimal(0))
    engine.adl_policy = AdlPolicy(price="floor", floor=balance)
    assert quantiles.capacity(engine, fund_id) == 0
