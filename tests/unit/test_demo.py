"""`backstop demo` and the reports: deterministic from the seed, on the real price path, with charts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from backstop.demo_journal import journal
from backstop.entrypoints.cli import main
from backstop.resources import btc_crash_bars


def test_the_demo_input_follows_the_real_bars_and_funding() -> None:
    lines = [json.loads(line) for line in journal(seed=1, accounts=50)]
    marks = [r for r in lines if r["type"] == "mark"]
    bars = btc_crash_bars()
    assert len(marks) == 4 * len(bars) == 960
    assert min(float(m["mark_price"]) for m in marks) == 101516.5  # the real low, 21:20 UTC
    assert [r["rate"] for r in lines if r["type"] == "funding"] == ["0.00010000"]  # 2025-10-11 00:00 settlement
    assert all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(marks))


def test_same_seed_same_hashes_and_a_report(tmp_path: Path) -> None:
    summaries = []
    for run, policies in (("a", []), ("b", ["--no-policies"])):
        assert main(["demo", "--out", str(tmp_path / run), "--accounts", "300", "--seed", "7", *policies]) == 0
        summaries.append(json.loads((tmp_path / run / "summary.json").read_text()))
    assert summaries[0]["head_hash"] == summaries[1]["head_hash"]
    assert summaries[0]["state_hash"] == summaries[1]["state_hash"]
    assert main(["demo", "--out", str(tmp_path / "c"), "--accounts", "300", "--seed", "8", "--no-report",
                 "--no-policies"]) == 0
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["head_hash"] != summaries[0]["head_hash"]
    report = (tmp_path / "a" / "report.html").read_text()
    charts = ("fund-balance", "liquidations", "adl", "mark-price", "adl-queue-depth", "adl-haircut", "adl-leverage")
    assert report.count("data:image/png;base64,") == len(charts) and summaries[0]["head_hash"] in report
    for chart in charts:
        assert (tmp_path / "a" / f"report-{chart}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the run's journal (with its decided liquidations) replays to the same hashes
    assert main(["replay", str(tmp_path / "a" / "journal.jsonl"), "--out", str(tmp_path / "replayed")]) == 0
    replayed = json.loads((tmp_path / "replayed" / "summary.json").read_text())
    assert replayed["head_hash"] == summaries[0]["head_hash"]
    # every other policy's run: compared, reported, and its journal replays under that policy to its head hash
    comparison = json.loads((tmp_path / "a" / "policies" / "comparison.json").read_text())
    assert set(comparison["head_hashes"]) == {"queue", "pro_rata", "capped_pro_rata", "min_max_leverage",
                                              "socialized"}
    assert comparison["head_hashes"]["queue"] == summaries[0]["head_hash"]
    assert (tmp_path / "a" / "policies" / "report.html").read_text().count("capped_pro_rata") >= 1
    assert not (tmp_path / "b" / "policies").exists()
    for name in ("capped_pro_rata", "socialized"):
        out = tmp_path / f"replayed-{name}"
        assert main(["replay", str(tmp_path / "a" / "policies" / name / "journal.jsonl"), "--adl-policy", name,
                     "--out", str(out)]) == 0
        assert json.loads((out / "summary.json").read_text())["head_hash"] == comparison["head_hashes"][name]


def test_whatif_report_draws_both_runs(tmp_path: Path) -> None:
    examples = Path(__file__).parents[2] / "examples"
    assert main(["whatif", str(examples / "02-adl-walks-queue.jsonl"), "--params",
                 str(examples / "whatif-bigger-fund.toml"), "--out", str(tmp_path / "w"), "--report"]) == 0
    report = (tmp_path / "w" / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 7 and "alternative head hash" in report


def test_only_an_account_adl_closed_before_its_own_close_trades_beyond_its_margin(tmp_path: Path) -> None:
    """The generator follows each account's margin and stops one near its liquidation, so a negative wallet (a
    fill on margin the account no longer has) comes only after ADL closed the position the fill meant to close."""
    assert main(["demo", "--out", str(tmp_path / "d"), "--accounts", "1000", "--no-report", "--no-policies"]) == 0
    findings = [json.loads(line) for line in (tmp_path / "d" / "findings.jsonl").read_text().splitlines()]
    deleveraged: dict[str, int] = {}
    for line in (tmp_path / "d" / "adl-events.jsonl").read_text().splitlines():
        event = json.loads(line)
        deleveraged.setdefault(event["account_id"], event["seq"])
    negative = [f for f in findings if f["kind"] == "negative_wallet"]
    assert len(negative) < len(deleveraged)
    assert all(deleveraged.get(f["account_id"], f["seq"]) < f["seq"] for f in negative), negative
