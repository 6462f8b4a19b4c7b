"""`backstop whatif`: the same input under two parameter sets, with differences checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backstop.entrypoints.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples"


def run(tmp_path: Path, example: str, params: str) -> dict[str, object]:
    toml = tmp_path / "params.toml"
    toml.write_text(params)
    assert main(["whatif", str(EXAMPLES / example), "--params", str(toml), "--out", str(tmp_path / "out")]) == 0
    comparison: dict[str, object] = json.loads((tmp_path / "out" / "comparison.json").read_text())
    return comparison


def test_a_bigger_fund_keeps_the_lot_instead_of_deleveraging(tmp_path: Path) -> None:
    # examples/02: a fund of 100 refuses a lot of 20 x 645 = 12,900 and deleverages A2 and A5; scaled to 20,000 it
    # keeps the lot (12,900 <= 1 x 20,000), so nobody is deleveraged and two accounts are affected differently
    result = run(tmp_path, "02-adl-walks-queue.jsonl", '[alternative.funds.BNB]\nbalance_scale = "200"\n')
    base, alt = result["baseline"], result["alternative"]
    assert (base["adl_events"], base["adl_notional"]) == (2, "13000")  # type: ignore[index]
    assert (alt["adl_events"], alt["funds"]["BNB"]["final_balance"]) == (0, "20000")  # type: ignore[index]
    assert result["accounts_affected_differently"] == 2
    assert result["accounts_affected_differently_sample"] == ["A2", "A5"]


def test_simulation_decides_liquidations_at_the_mark_with_slippage(tmp_path: Path) -> None:
    # examples/06 simulated: at mark 3,530 a and b (isolated long 2 @ 4,000, margin 1,000: equity 60 <= MM 70.6)
    # are liquidated; the order fills 20 bp under the mark, 3,522.94, above BP 3,500: +45.88 each for the fund,
    # where the log had b's lot sold at 3,200 (-600) and the fund in bad debt.
    result = run(tmp_path, "06-bad-debt.jsonl", '[alternative.simulation]\nslippage_bps = "20"\n')
    base, alt = result["baseline"], result["alternative"]
    assert base["funds"]["MAIN"]["bad_debt"] == "100" and base["adl_events"] == 1  # type: ignore[index]
    assert alt["funds"]["MAIN"] == {"final_balance": "591.76", "min_balance": "500", "max_drawdown": "0",  # type: ignore[index]
                                    "bad_debt": "0", "inventory_upnl": "0", "marked_balance": "591.76",
                                    "cascade_needed": "0"}
    assert (alt["liquidations"], alt["adl_events"]) == (2, 0)  # type: ignore[index]
    journal = (tmp_path / "out" / "alternative" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(x)["liquidation_id"] for x in journal if '"liquidation"' in x] == ["sim-13", "sim-14"]


def test_every_run_is_a_journal_that_replays_to_its_hashes(tmp_path: Path) -> None:
    run(tmp_path, "02-adl-walks-queue.jsonl", '[alternative.adl]\nrule = "pro_rata"\nprice = "mark"\n'
                                              '[alternative.simulation]\nslippage_bps = "10"\n')
    for name, extra in (("baseline", []), ("alternative", ["--adl-rule", "pro_rata", "--adl-price", "mark"])):
        run_dir = tmp_path / "out" / name
        assert main(["replay", str(run_dir / "journal.jsonl"), "--out", str(tmp_path / name), *extra]) == 0
        replayed = json.loads((tmp_path / name / "summary.json").read_text())
        recorded = json.loads((run_dir / "summary.json").read_text())
        assert (replayed["head_hash"], replayed["state_hash"]) == (recorded["head_hash"], recorded["state_hash"])


def test_a_bad_parameter_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text('[alternative.adl]\nrule = "lottery"\n')
    assert main(["whatif", str(EXAMPLES / "01-isolated-liquidation-surplus.jsonl"), "--params", str(toml), "--out",
                 str(tmp_path / "o")]) == 2
    assert "bad parameter file" in capsys.readouterr().err


def test_a_changed_record_the_journal_dead_letters_anyway_is_not_blamed_on_the_parameters(tmp_path: Path) -> None:
    """A duplicate of the fund's seed transfer with other content is dead-lettered by any replay; scaling the
    fund's transfers changes it too, and the run goes on (only a refusal of what a change made is refused)."""
    lines = (EXAMPLES / "07-adl-lab.jsonl").read_text().splitlines()
    seed = next(line for line in lines if '"transfer"' in line and "fund:" in line)
    twin = json.loads(seed)
    twin["amount"] = str(int(twin["amount"]) + 1)
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join([*lines[:lines.index(seed) + 1], json.dumps(twin), *lines[lines.index(seed) + 1:]])
                       + "\n")
    fund = json.loads(next(line for line in lines if '"fund"' in line))["fund_id"]
    params = tmp_path / "p.toml"
    params.write_text(f'[alternative.funds.{fund}]\nbalance_scale = "2"\n')
    assert main(["whatif", str(journal), "--params", str(params), "--out", str(tmp_path / "w")]) == 0
    letters = [json.loads(x) for x in (tmp_path / "w" / "alternative" / "dead-letter.jsonl").read_text().splitlines()]
    assert [letter["kind"] for letter in letters] == ["conflicting_duplicate"]


def test_a_left_out_line_s_reason_is_said_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "with-bad.jsonl"
    journal.write_bytes((EXAMPLES / "02-adl-walks-queue.jsonl").read_bytes()
                        + b'{"type":"mark","symbol":"X","ts":1,"mark_price":"1","a\\nb\\u2028":1}\n')
    assert main(["whatif", str(journal), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "(first: line 20: mark.a\\x0ab\\u2028: " in err, err


@pytest.mark.parametrize("policies", [[], ["--policies", "queue,pro_rata"]])
def test_lines_that_are_not_records_are_left_out_and_said(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          policies: list[str]) -> None:
    journal = tmp_path / "with-bad.jsonl"
    journal.write_bytes((EXAMPLES / "02-adl-walks-queue.jsonl").read_bytes() + b"\x00garbage\n[1]\n")
    assert main(["whatif", str(journal), "--out", str(tmp_path / "out"), *policies]) == 0
    err = capsys.readouterr().err
    assert err == (f"backstop whatif: 2 line(s) of {journal} are not valid records, left out of every run (first: "
                   f"line 20: invalid JSON); `backstop replay` dead-letters them\n"), err
    # the runs are those of the journal without them
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes((EXAMPLES / "02-adl-walks-queue.jsonl").read_bytes())
    assert main(["whatif", str(clean), "--out", str(tmp_path / "clean-out"), *policies]) == 0
    assert capsys.readouterr().err == ""
    comparisons = [json.loads((tmp_path / d / "comparison.json").read_text()) for d in ("out", "clean-out")]
    assert comparisons[0] == comparisons[1]


@pytest.mark.parametrize(("content", "said"), [
    (b'\xef\xbb\xbf[alternative.adl]\nrule = "pro_rata"\n', "it starts with a byte order mark (BOM)"),
    (b'[alternative.adl]\npolicy = "bybit"\nwindow_hours = 99999999\n',
     "[alternative.adl] bad ADL policy: drawdown: the window must be > 0 ms and at most 1000000 hours"),
    (b'[baseline.adl]\nstop_ratio = "0.5"\n',
     "[baseline.adl] bad ADL policy: drawdown: 0 < ratio <= 1 and 0 <= stop <= ratio, not ratio 0.3 and stop 0.5"),
])
def test_a_parameter_file_is_refused_naming_the_file_and_the_section(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, said: str) -> None:
    toml = tmp_path / "p.toml"
    toml.write_bytes(content)
    assert main(["whatif", str(EXAMPLES / "02-adl-walks-queue.jsonl"), "--params", str(toml), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"backstop whatif: bad parameter file {toml}: {said}") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("example", "policy", "affected"), [
    # the same quantities at another price: OKX closes C1 and C2 at the mark (85), the queue at the lot's BP (90)
    ("08-okx-floor.jsonl", "okx", ["C1", "C2"]),
    # C3 is not deleveraged in either run, but pays a socialized loss in the alternative
    ("10-socialized-loss.jsonl", "socialized", ["C1", "C2", "C3"]),
])
def test_accounts_affected_differently_count_prices_and_socialized_losses(tmp_path: Path, example: str, policy: str,
                                                                          affected: list[str]) -> None:
    result = run(tmp_path, example, f'[alternative.adl]\npolicy = "{policy}"\n')
    assert result["accounts_affected_differently_sample"] == affected
    assert result["accounts_affected_differently"] == len(affected)


def test_a_fund_s_drawdown_counts_from_its_balance_before_its_first_entry(tmp_path: Path) -> None:
    """examples/06 without the fund's seed: its first entry is the loss of 600, a fall from 0 (as summary.json's
    adl.fund_max_drawdown counts it)."""
    journal = tmp_path / "no-seed.jsonl"
    journal.write_text("".join(line + "\n" for line in (EXAMPLES / "06-bad-debt.jsonl").read_text().splitlines()
                               if "fund:MAIN" not in line))
    assert main(["whatif", str(journal), "--out", str(tmp_path / "out")]) == 0
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["baseline"]["funds"]["MAIN"] == {"final_balance": "-600", "min_balance": "-600",
                                                       "max_drawdown": "600", "bad_debt": "600",
                                                       "inventory_upnl": "0", "marked_balance": "-600",
                                                       "cascade_needed": "0"}
    assert comparison["baseline"]["adl"]["fund_max_drawdown"] == {"MAIN": "600"}


def test_records_a_scenario_makes_the_engine_reject_are_said(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """examples/14 with its fund 1,000 times smaller: the fund's lots are deleveraged, so the journal's own sale of
    1,200 of them by the fund is rejected in that run; the command says so, naming each run that rejected."""
    run(tmp_path, "14-inverse-funding-and-fifo.jsonl", '[baseline.funds.COIN]\nbalance_scale = "0.001"\n')
    err = capsys.readouterr().err
    assert "the engine rejected records of the journal (baseline 1)" in err
    letter = json.loads((tmp_path / "out" / "baseline" / "dead-letter.jsonl").read_text().splitlines()[0])
    assert "cannot sell 1200" in letter["reason"]
    assert main(["whatif", str(EXAMPLES / "14-inverse-funding-and-fifo.jsonl"), "--out", str(tmp_path / "same")]) == 0
    assert "rejected" not in capsys.readouterr().err


def test_policy_and_its_older_name_rule_at_once_are_refused(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`rule` (the older name) stands for `policy`, and scenario.json names the policy run; both at once would drop
    one of them without a word (okx's price rule, bybit's trigger), so the file is refused."""
    toml = tmp_path / "both.toml"
    toml.write_text('[alternative.adl]\npolicy = "okx"\nrule = "bitmex"\n')
    assert main(["whatif", str(EXAMPLES / "08-okx-floor.jsonl"), "--params", str(toml), "--out",
                 str(tmp_path / "o")]) == 2
    assert "alternative.adl: give policy or rule (its older name), not both" in capsys.readouterr().err
    run(tmp_path, "08-okx-floor.jsonl", '[alternative.adl]\nrule = "pro_rata"\n')
    assert json.loads((tmp_path / "out" / "alternative" / "scenario.json").read_text())["adl"]["policy"] == "pro_rata"
