"""Inverse (coin-margined) contracts in both engines (docs/design.md §7, §9.3-9.4): generated journals over a coin
fund and its inverse instruments beside a linear one (tests/property/strategies.py `inverse_journals`: both margin
modes, hedge sides, funding, marks through bankruptcy prices, liquidations with and without executions, ADL against
counterparties, the fund's inventory trigger, fund fills closing lots, bad instruments, fills at MAX_FACE), replayed
by both with every output file compared byte for byte, with quantile points off and on, under every ADL policy, and
resumed from a snapshot of either engine in either; then hand-made journals at the rules' edges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backstop.core.adl_policy import AdlPolicy
from differential.alike import assert_same, run
from differential.test_compiled_replay import noise, policies
from property.strategies import inverse_journals
from scenario import fill, fund, funding, instrument, liquidation, mark, transfer


def _write(directory: Path, lines: list[bytes]) -> Path:
    journal = directory / "journal.jsonl"
    journal.write_bytes(b"".join(line + b"\n" for line in lines))
    return journal


@given(records=inverse_journals(), bad=st.lists(st.tuples(st.integers(0, 200), noise), max_size=3),
       repeats=st.lists(st.integers(0, 200), max_size=3), points=st.booleans())
def test_generated_inverse_journals_replay_alike(records: list[dict[str, Any]], bad: list[tuple[int, bytes]],
                                                repeats: list[int], points: bool,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    lines = [orjson.dumps(record) for record in records]
    for at in repeats:  # duplicates: a line sent again later
        lines.insert(min(at + 1, len(lines)), lines[at % len(lines)])
    for at, line in bad:
        lines.insert(min(at, len(lines)), line)
    directory = tmp_path_factory.mktemp("journal")
    journal = _write(directory, lines)
    reference = run(journal, directory / "reference", "reference", snapshot_every=7, adl_quantiles=points)
    compiled = run(journal, directory / "compiled", "compiled", snapshot_every=7, adl_quantiles=points)
    assert_same(reference, compiled)


@given(records=inverse_journals(), policy=policies, full=st.booleans(), points=st.booleans())
def test_generated_inverse_journals_replay_alike_under_every_policy(
        records: list[dict[str, Any]], policy: AdlPolicy, full: bool, points: bool,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("journal")
    journal = _write(directory, [orjson.dumps(record) for record in records])
    options = {"adl_policy": policy, "full_adl_metrics": full, "snapshot_every": 9, "adl_quantiles": points}
    reference = run(journal, directory / "reference", "reference", **options)
    compiled = run(journal, directory / "compiled", "compiled", **options)
    assert_same(reference, compiled)


@given(records=inverse_journals(max_events=40), data=st.data(), points=st.booleans())
def test_a_snapshot_of_an_inverse_journal_resumes_in_either_engine(
        records: list[dict[str, Any]], data: st.DataObject, points: bool,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("journal")
    journal = _write(directory, [orjson.dumps(record) for record in records])
    writer = data.draw(st.sampled_from(["reference", "compiled"]))
    whole = run(journal, directory / "whole", writer, snapshot_every=11, adl_quantiles=points)
    snapshots = sorted(name for name in whole if name.startswith("snapshots/") and name.endswith(".json"))
    if not snapshots:
        return
    snapshot = directory / "whole" / data.draw(st.sampled_from(snapshots))
    tails = [run(journal, directory / f"tail-{reader}", reader, from_snapshot=snapshot, adl_quantiles=points)
             for reader in ("reference", "compiled")]
    assert_same(*tails)
    summary = orjson.loads(tails[1]["summary.json"])
    del summary["from_snapshot"]
    assert {**summary, "dead_letters": 0, "adl": None} == {**orjson.loads(whole["summary.json"]), "dead_letters": 0,
                                                           "adl": None}


def _coin_world(**fund_options: str) -> list[dict[str, Any]]:
    return [
        fund("COIN", asset="BTC", **fund_options),
        instrument("BTCUSD", fund_id="COIN", asset="BTC", tick="0.5", lot="1",
                   tiers=(("2", "0.004", None), ("10", "0.005", None)), contract_type="inverse", contract_size="100"),
        transfer("seed", "fund:COIN", "10", asset="BTC"),
        *(transfer(f"d-{a}", a, "5", asset="BTC") for a in ("a", "b", "c", "d")),
    ]


def _both(tmp_path: Path, records: list[dict[str, Any]], **options: Any) -> dict[str, bytes]:
    journal = _write(tmp_path, [orjson.dumps(record) for record in records])
    reference = run(journal, tmp_path / "reference", "reference", snapshot_every=2, **options)
    compiled = run(journal, tmp_path / "compiled", "compiled", snapshot_every=2, **options)
    assert_same(reference, compiled)
    return reference


def test_instrument_checks_refuse_alike(tmp_path: Path) -> None:
    records = [
        *_coin_world(),
        instrument("NOSIZE", fund_id="COIN", asset="BTC", contract_type="inverse"),
        instrument("LINEAR", fund_id="COIN", asset="BTC", contract_size="100"),
        instrument("BTCUSD", fund_id="COIN", asset="BTC", tick="0.5", lot="1",
                   tiers=(("2", "0.004", None), ("10", "0.005", None)), contract_type="inverse",
                   contract_size="100.0"),  # the same contract: a redefinition that changes nothing
        instrument("BTCUSD", fund_id="COIN", asset="BTC", tick="0.5", lot="1",
                   tiers=(("2", "0.004", None), ("10", "0.005", None)), contract_type="inverse", contract_size="10"),
        instrument("BTCUSD", fund_id="COIN", asset="BTC", tick="0.5", lot="1",
                   tiers=(("2", "0.004", None), ("10", "0.005", None))),
        # a linear instrument with its version-2 defaults spelled out is the same content: a duplicate
        plain := instrument("PLAIN", fund_id="COIN", asset="BTC"),
        {**plain, "contract_type": "linear", "contract_size": None},
    ]
    outputs = _both(tmp_path, records)
    assert orjson.loads(outputs["summary.json"])["duplicates"] == 1
    reasons = [orjson.loads(line)["reason"] for line in outputs["dead-letter.jsonl"].splitlines()]
    assert reasons == ["instrument NOSIZE: an inverse instrument needs a contract_size",
                       "instrument LINEAR: only an inverse instrument has a contract_size",
                       "instrument BTCUSD cannot change its contract_type or contract_size",
                       "instrument BTCUSD cannot change its contract_type or contract_size"]
    state = orjson.loads(outputs["snapshots/snapshot-00000006.json"])["state"] if (
        "snapshots/snapshot-00000006.json" in outputs) else None
    if state is not None:
        [btcusd] = [i for i in state["instruments"] if i["symbol"] == "BTCUSD"]
        assert (btcusd["contract_type"], btcusd["contract_size"]) == ("inverse", "100")


def test_max_face_refuses_alike(tmp_path: Path) -> None:
    """|q| x s < 10^14: a fill that opens or grows beyond it, and a liquidation that would leave the fund beyond it,
    are refused with the bound in the reason."""
    records = [
        fund("COIN", asset="BTC", ratio="10"),
        instrument("FACEUSD", fund_id="COIN", asset="BTC", tick="1", lot="1",
                   tiers=(("100000000000", "0.01", "0"),), contract_type="inverse", contract_size="1000000000"),
        transfer("seed", "fund:COIN", "100000000000", asset="BTC"),  # keeps the first lot (no deleverage)
        *(transfer(f"d-{a}", a, "100000", asset="BTC") for a in ("a", "b", "c")),
        fill("a-too-big", "a", "buy", "100000", "1000", symbol="FACEUSD"),
        fill("a-open", "a", "buy", "60000", "1000", symbol="FACEUSD"),
        fill("a-grow", "a", "buy", "40000", "1000", symbol="FACEUSD"),
        fill("b-open", "b", "buy", "60000", "1000", symbol="FACEUSD", mode="isolated", leverage="1"),
        fill("c-short", "c", "sell", "99999", "1000", symbol="FACEUSD"),
        fill("a-flip", "a", "sell", "160000", "1000", symbol="FACEUSD"),  # closes 60000, opens 100000
        mark("100", symbol="FACEUSD"),
        liquidation("la", "a", "60000", "100", symbol="FACEUSD"),
        liquidation("lb", "b", "60000", "100", symbol="FACEUSD"),
    ]
    outputs = _both(tmp_path, records)
    reasons = [orjson.loads(line)["reason"] for line in outputs["dead-letter.jsonl"].splitlines()]
    assert "position face value would be 100000000000000, above the bound 10^14" in reasons
    assert reasons.count("position face value would be 100000000000000, above the bound 10^14") == 3
    assert "fund COIN would hold a face value of 120000000000000 in FACEUSD, above the bound 10^14" in reasons


def test_lot_costs_clamped_at_both_ends_alike(tmp_path: Path) -> None:
    """A lot whose price would fall below one tick (an inverse long's equity above its value) or rise above the
    largest PRICE (an inverse short far underwater) is clamped, with a `bp_clamped` finding, alike."""
    records = [
        *_coin_world(ratio="100"),
        transfer("big-a", "a", "1000", asset="BTC"),
        fill("a-long", "a", "buy", "1", "50000", symbol="BTCUSD"),  # 1000 BTC behind 0.002 BTC: BP ~ 0.1 < tick
        fill("b-short", "b", "sell", "1", "50000", symbol="BTCUSD"),
        fill("c-short", "c", "sell", "10", "50000", symbol="BTCUSD", mode="isolated", leverage="1"),  # never bankrupt
        fill("d-long", "d", "buy", "10", "50000", symbol="BTCUSD"),
        liquidation("la", "a", "1", "50000", symbol="BTCUSD"),
        liquidation("lc", "c", "10", "50000", symbol="BTCUSD", bankruptcy_price="1"),
        funding("0.001", "50000", symbol="BTCUSD"),
        fill("fund-sell", "fund:COIN", "sell", "1", "60000", symbol="BTCUSD"),
        fill("fund-buy", "fund:COIN", "buy", "4", "40000", symbol="BTCUSD"),
    ]
    outputs = _both(tmp_path, records, adl_quantiles=True)
    clamped = [orjson.loads(line)["details"]["clamped_to"] for line in outputs["findings.jsonl"].splitlines()
               if b'"bp_clamped"' in line]
    assert clamped == ["0.5", "9999999999.99999999"]


@pytest.mark.parametrize("policy", [None, *sorted(("binance", "pro_rata", "capped_pro_rata", "min_max_leverage",
                                                  "socialized", "bybit", "okx"))])
def test_an_inverse_deleverage_alike_under_each_policy(policy: str | None, tmp_path: Path) -> None:
    """A coin fund too small for its lot deleverages it against inverse counterparties, both sides, cross and
    isolated, one-way and hedged."""
    from backstop.core.adl_policy import PRESETS

    records = [
        *_coin_world(ratio="0.01"),
        transfer("d-e", "e", "1", asset="BTC"),
        fill("a-long", "a", "buy", "400", "50000", symbol="BTCUSD", mode="isolated", leverage="20"),
        fill("b-short", "b", "sell", "150", "50000", symbol="BTCUSD"),
        fill("c-short", "c", "sell", "150", "49000", symbol="BTCUSD", mode="isolated", leverage="5"),
        fill("d-short", "d", "sell", "60", "51000", symbol="BTCUSD", position_side="short"),
        fill("d-long", "d", "buy", "20", "51000", symbol="BTCUSD", position_side="long"),
        fill("e-short", "e", "sell", "40", "50000", symbol="BTCUSD"),
        mark("47000", symbol="BTCUSD"),
        liquidation("la", "a", "400", "47000", symbol="BTCUSD", executions=[("100", "47500")]),
        mark("46000", symbol="BTCUSD"),
        funding("-0.0005", "46000", symbol="BTCUSD"),
        mark("52000", symbol="BTCUSD"),
    ]
    options: dict[str, Any] = {"adl_quantiles": True, "full_adl_metrics": True}
    if policy is not None:
        options["adl_policy"] = PRESETS[policy]
    outputs = _both(tmp_path, records, **options)
    assert outputs["adl-rounds.jsonl"] or policy in ("socialized", "bybit")  # they keep the lot here
