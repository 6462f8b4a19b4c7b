"""Summaries and reports computed under the engine's one numeric rule (docs/design.md §9): exact sums."""

from __future__ import annotations

from pathlib import Path

import orjson

from backstop.core.documents import summary
from backstop.entrypoints.cli import main
from scenario import fill, fund, instrument, run, transfer


def test_three_deposits_at_the_money_bound_sum_to_zero() -> None:
    """Issue #19 item 6, within the MONEY bound: two deposits of 9999999999999999.12345678 and one of 0.00000001."""
    processor, _ = run([fund(), instrument(), transfer("a", "u", "9999999999999999.12345678"),
                        transfer("b", "u", "9999999999999999.12345678"), transfer("c", "u", "0.00000001")])
    assert summary(processor)["ledger_sum"] == "0"


# A long of 999999999999.12345678 at 9999999999.12345678 closed at 0.00000001 loses about 10^22: balances of 31
# digits, which a default 28-digit decimal context rounded when the summary added them up.
LARGE = [fund(), instrument(tick="0.00000001", lot="0.00000001"), transfer("d", "u", "1.12345678"),
         fill("open", "u", "buy", "999999999999.12345678", "9999999999.12345678"),
         fill("close", "u", "sell", "999999999999.12345678", "0.00000001")]


def test_balances_wider_than_a_default_decimal_context_sum_to_zero() -> None:
    processor, outcomes = run(LARGE)
    assert processor.rejected == 0, outcomes
    assert len(str(abs(processor.engine.ledger.balance("settlement:BTCUSDT")))) > 28
    assert summary(processor)["ledger_sum"] == "0"


def test_replay_audit_and_reconcile_agree_that_a_wide_ledger_balances(tmp_path: Path) -> None:
    journal = tmp_path / "wide.jsonl"
    journal.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in LARGE))
    assert main(["replay", str(journal), "--out", str(tmp_path / "out"), "--check-conservation"]) == 0
    assert orjson.loads((tmp_path / "out" / "summary.json").read_bytes())["ledger_sum"] == "0"
    assert main(["audit", "verify", str(tmp_path / "out"), "--journal", str(journal)]) == 0
    assert main(["reconcile", str(tmp_path / "out")]) == 0


def test_what_if_metrics_are_exact(tmp_path: Path) -> None:
    from decimal import Decimal

    from backstop.scenarios import Scenario, run_scenario
    from backstop.wire.decode import decode_model
    from scenario import liquidation

    qty, mark = "999999999999.12345678", "9999999999.12345678"
    records = [decode_model(orjson.dumps(r)) for r in (
        fund(), instrument(tick="0.00000001", lot="0.00000001"), transfer("seed", "fund:MAIN", "1000"),
        transfer("d", "u", "9999999999999999"), fill("open", "u", "buy", qty, mark, mode="isolated", leverage="1000"),
        liquidation("liq", "u", qty, mark))]
    metrics, result = run_scenario(list(enumerate(records, start=1)), Scenario(), tmp_path / "run")
    assert metrics.liquidations == 1 and result["rejected"] == 0
    from backstop.core.numbers import CONTEXT, money, text

    exact = CONTEXT.multiply(Decimal(qty), Decimal(mark))  # 38 digits: a default context keeps 28
    assert metrics.liquidated_notional == exact
    assert metrics.as_json()["liquidated_notional"] == text(money(exact)) == "9999999999114691347800.76832802"
