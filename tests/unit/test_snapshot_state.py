"""The engine state of a snapshot file is held to what a journal could have made (backstop.wire.snapshot_state):
each rule refuses a forged state in one line, and every state the engines write passes."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backstop.entrypoints.cli import main
from backstop.wire.snapshot_state import state_problem

ROOT = Path(__file__).resolve().parents[2]


def _snapshots(tmp_path: Path, example: str) -> list[dict[str, Any]]:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["replay", str(ROOT / "examples" / f"{example}.jsonl"), "--out", str(tmp_path / example),
                     "--snapshot-every", "1"]) == 0
    return [json.loads(p.read_text())["engine"] for p in sorted((tmp_path / example / "snapshots").glob("*.json"))]


@pytest.mark.parametrize("engine", ["reference", "compiled"])
def test_every_state_the_engines_write_passes(engine: str, tmp_path: Path) -> None:
    examples = sorted(p.stem for p in (ROOT / "examples").glob("*.jsonl"))
    for example in examples:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["replay", str(ROOT / "examples" / f"{example}.jsonl"), "--out", str(tmp_path / example),
                         "--snapshot-every", "1", "--engine", engine]) == 0
        for path in sorted((tmp_path / example / "snapshots").glob("*.json")):
            assert state_problem(json.loads(path.read_text())["engine"]) is None, path


def _position(state: dict[str, Any], **change: object) -> None:
    state["positions"][0].update(change)


def _lot(state: dict[str, Any], **change: object) -> None:
    next(fund for fund in state["funds"] if fund["lots"])["lots"][0].update(change)


def _instrument(state: dict[str, Any], **change: object) -> None:
    state["instruments"][0].update(change)


FORGERIES: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    ("a position in a symbol with no instrument", lambda s: _position(s, symbol="NOPE"),
     "engine: symbol NOPE has no instrument in the state"),
    ("an empty position", lambda s: _position(s, qty="0"),
     "engine.positions.0: a position holds a qty other than zero"),
    ("a qty beyond the bound", lambda s: _position(s, qty="1000000000000"),
     'engine.positions.0.qty: at most 12 integer and 8 fraction digits: "1000000000000"'),
    ("a qty finer than 1e-8", lambda s: _position(s, qty="0.000000001"),
     'engine.positions.0.qty: at most 12 integer and 8 fraction digits: "0.000000001"'),
    ("a long side holding a short qty", lambda s: _position(s, position_side="long", qty="-1"),
     "engine.positions.0: a long position with qty -1"),
    ("a quantile beyond 5", lambda s: _position(s, adl_quantile=6), "engine.positions.0.adl_quantile: Input should be"),
    ("a leverage of 0", lambda s: _position(s, leverage="0"),
     "engine.positions.0.leverage: must be >= 0.01 and <= 1000"),
    ("a position listed twice", lambda s: s["positions"].append(dict(s["positions"][0])),
     "engine: account long holds BTCUSDT twice, or in both modes"),
    ("a ledger that does not balance", lambda s: s["balances"].update({"fund:BTC": "7"}),
     "engine: the balances must sum to zero"),
    ("a ledger account no journal makes", lambda s: s["balances"].update({"bonus:x": "0"}),
     "engine.balances.bonus:x.[key]: String should match pattern"),
    ("a mark of zero", lambda s: s["marks"].update({"BTCUSDT": "0"}), "engine.marks.BTCUSDT: must be > 0"),
    ("a position with no mark", lambda s: s["marks"].clear(),
     "engine: symbol BTCUSDT has positions, lots or marks applied but no mark in the state"),
    ("an instrument of a fund not in the state", lambda s: _instrument(s, fund_id="NOPE"),
     "engine: instrument BTCUSDT: no fund NOPE settling in USDT"),
    ("tiers out of order", lambda s: _instrument(s, tiers=s["instruments"][0]["tiers"][::-1]),
     "engine.instruments.0: tiers must have strictly increasing max_notional"),
    ("a lot size of zero", lambda s: _instrument(s, lot_size="0"), "engine.instruments.0.lot_size: must be > 0"),
    ("an inverse instrument without a contract size", lambda s: _instrument(s, contract_type="inverse"),
     "engine.instruments.0: an inverse instrument, and only one, has a contract_size"),
    ("a fund's symbols not its instruments'", lambda s: s["funds"][0]["symbols"].append("NOPE"),
     "engine: fund MAIN: symbols must be those of its instruments"),
    ("a lot after the state's seq", lambda s: _lot(s, seq=10**6),
     "engine: fund MAIN: a lot in a symbol of another fund, or after the state's seq"),
    ("a lot of no qty", lambda s: _lot(s, qty="0"), "engine.funds.0.lots.0.qty: must be > 0"),
    ("a negative seq", lambda s: s.update(seq=-1), "engine.seq: Input should be greater than or equal to 0"),
    ("a clock before 1970", lambda s: s["clock"].update(ts=-1),
     "engine.clock.ts: Input should be greater than or equal"),
    ("an empty pending mark clock", lambda s: s["mark_clock"]["pending"].update({"BTCUSDT": []}),
     "engine.mark_clock.pending.BTCUSDT: Tuple should have at least 1 item"),
    ("a head that is not a SHA-256", lambda s: s.update(ledger_head="00"), "engine.ledger_head: String should match"),
    ("a negative cost", lambda s: _position(s, cost="-1"), "engine.positions.0.cost: must be >= 0"),
    ("a position of a fund's account", lambda s: _position(s, account_id="fund:MAIN"),
     "engine.positions.0.account_id: fund:MAIN is a fund's account, not a trader's"),
    ("a lot liquidated from a fund's account", lambda s: _lot(s, liquidated_account="fund:MAIN"),
     "engine.funds.0.lots.0.liquidated_account: fund:MAIN is a fund's account, not a trader's"),
    ("a lot beyond the bound on a qty", lambda s: _lot(s, qty="1000000000000"),
     'engine.funds.0.lots.0.qty: at most 12 integer and 8 fraction digits: "1000000000000"'),
    ("a snapshot version written as a fraction", lambda s: s.update(snapshot_version=4.0),
     "engine.snapshot_version: Input should be a valid integer"),
    ("a drawdown window written as a fraction", lambda s: s.update(adl_policy={
        "rule": "bitmex", "price": "bankruptcy",
        "drawdown": {"ratio": "0.3", "stop": "0.25", "window_ms": 28800000.0}}),
     "engine.adl_policy: not an ADL policy as a snapshot writes one"),
    ("a wallet of a fund's account", lambda s: s["balances"].update({"wallet:fund:MAIN:USDT": "0"}),
     "engine: a wallet or isolated margin of fund:MAIN, a fund's account"),
    ("a maint_amount the brackets do not imply", lambda s: s["instruments"][0]["tiers"][0].update(maint_amount="1"),
     "engine.instruments.0: bracket 1: maint_amount 1 is not the 0 the brackets imply"),
    ("a dedupe subject admission never makes", lambda s: s["dedupe"]["latest"].update({"fill:x": "00" * 8}),
     "engine.dedupe.latest.fill:x.[key]: String should match pattern"),
    ("an ADL policy the reference refuses", lambda s: s.update(adl_policy={"rule": "bitmex", "price": "bankruptcy",
                                                                           "floor": "-5"}),
     "engine.adl_policy: not an ADL policy: the fund floor must be >= 0"),
    ("an ADL policy spelt otherwise", lambda s: s.update(adl_policy={"rule": "bitmex", "price": "bankruptcy",
                                                                     "floor": "0"}),
     "engine.adl_policy: not an ADL policy as a snapshot writes one"),
    ("a key holding a newline", lambda s: s["balances"].update({"wallet:a\nb:USDT": "0"}),
     "engine.balances.wallet:a\\x0ab:USDT.[key]: String should match pattern"),
    ("a key holding a next line", lambda s: s["marks"].update({"X\u0085Y": "1"}),
     "engine.marks.X\\x85Y.[key]: String should match pattern"),
    ("a key holding a line separator", lambda s: s["balances"].update({"wallet:a\u2028b:USDT": "0"}),
     "engine.balances.wallet:a\\u2028b:USDT.[key]: String should match pattern"),
]


@pytest.mark.parametrize(("change", "message"), [(change, message) for _, change, message in FORGERIES],
                         ids=[name for name, _, _ in FORGERIES])
def test_a_forged_state_is_refused_in_one_line(tmp_path: Path, change: Callable[[dict[str, Any]], object],
                                               message: str) -> None:
    state = _snapshots(tmp_path, "05-funding-and-fund-inventory")[10]  # positions, a fund's lot, marks
    assert state_problem(state) is None
    change(state)
    problem = state_problem(state)
    assert problem is not None and problem.startswith(message) and len(problem.splitlines()) == 1, problem


def test_balances_at_the_bound_sum_exactly(tmp_path: Path) -> None:
    state = _snapshots(tmp_path, "05-funding-and-fund-inventory")[10]
    big = "9" * 67 + ".99999999"  # 75 significant digits: a float or a 28-digit context would lose the last ones
    state["balances"] = {"wallet:a:USDT": big, "wallet:b:USDT": "0.00000001", "external:USDT": f"-{'1' + '0' * 67}"}
    assert state_problem(state) is None
    state["balances"]["wallet:b:USDT"] = "0.00000002"
    assert state_problem(state) == "engine: the balances must sum to zero, each within 10^68 (they sum to 1E-8)"


def test_a_repeated_key_is_refused_whichever_value_comes_first(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    journal = ROOT / "examples" / "05-funding-and-fund-inventory.jsonl"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["replay", str(journal), "--out", str(tmp_path / "w"), "--snapshot-every", "10"]) == 0
    snapshot = next((tmp_path / "w" / "snapshots").glob("*.json"))
    text = snapshot.read_text()
    first = text.index('"balances": {') + len('"balances": {')
    snapshot.write_text(text[:first] + '"fund:MAIN": 5,' + text[first:])  # the seal covers the parsed document
    assert main(["replay", str(journal), "--out", str(tmp_path / "r"), "--from-snapshot", str(snapshot)]) == 2
    assert capsys.readouterr().err.strip().endswith('is corrupt: key "fund:MAIN" repeats in an object')
