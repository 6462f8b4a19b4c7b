"""The replay output contract that tools and tests downstream rely on, checked on the installed `backstop` command:
the files, their fields and the few numbers that follow from the design (docs/design.md §4), for a small public
scenario kept beside the tests (an isolated long liquidated with a surplus)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

SCENARIO = Path(__file__).parents[1] / "data" / "contract-scenario.jsonl"
BACKSTOP = Path(sys.executable).parent / "backstop"
FILES = ("summary.json", "accounts.json", "fund-ledger.jsonl", "adl-events.jsonl", "findings.jsonl",
         "dead-letter.jsonl")


def replay(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BACKSTOP), "replay", str(SCENARIO), "--out", str(out)], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("contract") / "out"
    run = replay(out)
    assert run.returncode == 0, f"replay exited {run.returncode}: {run.stderr.strip()[-500:]}"
    return out


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal("NaN")


def contract_problems(out: Path) -> list[str]:
    """Every way the output directory breaks the contract (empty when it holds)."""
    problems = [f"missing {name}" for name in FILES if not (out / name).exists()]
    if problems:
        return problems

    def need(condition: bool, what: str) -> None:
        if not condition:
            problems.append(what)

    summary = json.loads((out / "summary.json").read_text())
    accounts = json.loads((out / "accounts.json").read_text())
    for key in ("events_applied", "duplicates", "rejected", "head_hash", "state_hash", "funds"):
        need(key in summary, f"summary.json lacks {key}")
    need(isinstance(summary.get("funds", {}).get("MAIN"), dict) and "balance" in summary["funds"]["MAIN"],
         "summary.json funds.MAIN.balance missing")
    need(summary.get("events_applied") == 9, f"events_applied {summary.get('events_applied')} != 9")
    # u1: isolated long 2 @ 2000, 4x: margin 1000 posted from wallet 1000, so wallet 0; BP = 2000 - 1000 / 2 = 1500.
    # Liquidated at mark 1510, sold at 1505: the fund gains 2 x (1505 - 1500) = 10, so 5000 becomes 5010.
    balance = summary.get("funds", {}).get("MAIN", {}).get("balance")
    need(_decimal(balance) == Decimal("5010"), f"fund MAIN balance {balance} != 5010")
    need(isinstance(balance, str), "decimals must be JSON strings")
    u1 = accounts.get("u1", {})
    need(_decimal(u1.get("wallet")) == 0, f"u1 wallet {u1.get('wallet')} != 0")
    need(not {s: p for s, p in u1.get("positions", {}).items() if _decimal(p.get("qty", 0)) != 0},
         "u1 should hold no position")
    u2 = accounts.get("u2", {}).get("positions", {}).get("ETHUSDT", {})
    for key in ("qty", "entry_price", "margin_mode", "isolated_margin", "liquidation_price", "bankruptcy_price"):
        need(key in u2, f"accounts.json u2.positions.ETHUSDT lacks {key}")
    need(_decimal(u2.get("qty", "0")) == -2, f"u2 qty {u2.get('qty')} != -2")
    ledger = [json.loads(x) for x in (out / "fund-ledger.jsonl").read_text().splitlines() if x.strip()]
    need(len(ledger) >= 2, "fund-ledger.jsonl should hold the top-up and the liquidation gain")
    for row in ledger:
        for key in ("id", "seq", "ts", "fund_id", "kind", "amount", "balance_after", "prev_hash", "hash"):
            need(key in row, f"fund-ledger row lacks {key}: {row}")
    if ledger:
        need(_decimal(ledger[-1].get("balance_after")) == Decimal("5010"), "last balance_after != 5010")
        need(any(r.get("liquidation_id") == "liq-1" for r in ledger), "no fund-ledger row names liq-1")
    return problems


def test_the_replay_output_contract_holds(output: Path) -> None:
    assert contract_problems(output) == []


def test_two_identical_replays_give_the_same_head_hash(output: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert replay(again).returncode == 0
    first = json.loads((output / "summary.json").read_text())
    second = json.loads((again / "summary.json").read_text())
    assert second["head_hash"] == first["head_hash"]


def test_the_checker_sees_a_broken_contract(output: Path, tmp_path: Path) -> None:
    """The checks can fail: a balance off by a cent, a field dropped and a missing file are each named."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in FILES:
        (broken / name).write_bytes((output / name).read_bytes())
    summary = json.loads((broken / "summary.json").read_text())
    summary["funds"]["MAIN"]["balance"] = "5010.01"
    del summary["state_hash"]
    (broken / "summary.json").write_text(json.dumps(summary))
    assert contract_problems(broken) == ["summary.json lacks state_hash", "fund MAIN balance 5010.01 != 5010"]
    (broken / "findings.jsonl").unlink()
    assert contract_problems(broken) == ["missing findings.jsonl"]
