"""Both engines on the same journals, through `backstop replay`: every output file byte-identical (fund ledger, ADL
events, findings, dead letters, summary, accounts, snapshots), so the head hash and the state hash too; and a
snapshot written by either engine resumes in either with the same result.

Journals: every example, and hypothesis-generated ones (tests/property/strategies.py: trading, marks, funding,
liquidations with and without executions, fund fills, transfers; many records rejected on purpose), with bad lines
and duplicates mixed in; each with quantile points off (replay's default) and on (the service's); under every ADL
policy (docs/design.md §11), with the full round metrics (adl-rounds.jsonl). A difference is a rule that is not
ported, or ported wrongly.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backstop.core.adl_policy import PRESETS, AdlPolicy, Drawdown
from backstop.engines import EngineName
from backstop.entrypoints.replay import ReplayError
from differential.alike import assert_same, outputs, run
from property.strategies import journals

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.jsonl"))
SECTION_9_4_PENDING: set[str] = set()  # examples the reference does not yet replay as docs/design.md §9 says


@pytest.mark.parametrize("journal", [
    pytest.param(path, marks=pytest.mark.xfail(strict=True, reason="reference not yet on §9.4"))
    if path.stem in SECTION_9_4_PENDING else path for path in EXAMPLES], ids=lambda path: path.stem)
@pytest.mark.parametrize("points", [False, True], ids=["points-off", "points-on"])
def test_examples_replay_alike(journal: Path, points: bool, tmp_path: Path) -> None:
    reference = run(journal, tmp_path / "reference", "reference", snapshot_every=2, adl_quantiles=points)
    compiled = run(journal, tmp_path / "compiled", "compiled", snapshot_every=2, adl_quantiles=points)
    assert_same(reference, compiled)


@pytest.mark.parametrize("journal", [path for path in EXAMPLES if path.stem not in SECTION_9_4_PENDING],
                         ids=lambda path: path.stem)
@pytest.mark.parametrize("points", [False, True], ids=["points-off", "points-on"])
def test_a_snapshot_of_either_engine_resumes_in_either(journal: Path, points: bool, tmp_path: Path) -> None:
    whole = run(journal, tmp_path / "whole", "reference", snapshot_every=4, adl_quantiles=points)
    snapshots = sorted((tmp_path / "whole" / "snapshots").glob("*.json"))
    assert snapshots
    whole_summary = orjson.loads(whole["summary.json"])
    tails = []
    for writer in ("reference", "compiled"):
        written = run(journal, tmp_path / f"by-{writer}", writer, snapshot_every=4,  # type: ignore[arg-type]
                      adl_quantiles=points)
        snapshot = tmp_path / f"by-{writer}" / "snapshots" / snapshots[0].name
        assert written["snapshots/" + snapshots[0].name] == whole["snapshots/" + snapshots[0].name]
        for reader in ("reference", "compiled"):
            tail = run(journal, tmp_path / f"{writer}-{reader}", reader,  # type: ignore[arg-type]
                       from_snapshot=snapshot, adl_quantiles=points)
            tails.append(tail)
            summary = orjson.loads(tail["summary.json"])
            assert summary.pop("from_snapshot")["seq"] > 0
            # `adl` sums this replay's rounds and postings (after the snapshot), so it is left out here
            assert {**summary, "dead_letters": 0, "adl": None} == {**whole_summary, "dead_letters": 0, "adl": None}, (
                writer, reader)
            assert tail["accounts.json"] == whole["accounts.json"], (writer, reader)
    assert all(tail == tails[0] for tail in tails)


def test_strict_mode_stops_alike(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(EXAMPLES[0].read_bytes() + b'{"type":"fill"}\n' + EXAMPLES[0].read_bytes())
    messages = []
    for engine in ("reference", "compiled"):
        with pytest.raises(ReplayError) as caught:
            run(journal, tmp_path / engine, engine, strict=True)  # type: ignore[arg-type]
        messages.append((str(caught.value), caught.value.exit_code))
    assert messages[0] == messages[1]
    assert outputs(tmp_path / "reference") == outputs(tmp_path / "compiled")


noise = st.sampled_from([b"", b"   ", b"not json", b'{"type":"fill"}', b'{"type":"mark","ts":1}', b"\xff\xfe",
                         b'{"type":"trade","ts":1}', b"[]"])


@given(records=journals(), bad=st.lists(st.tuples(st.integers(0, 200), noise), max_size=4),
       repeats=st.lists(st.integers(0, 200), max_size=4), points=st.booleans())
def test_generated_journals_replay_alike(records: list[dict[str, object]], bad: list[tuple[int, bytes]],
                                         repeats: list[int], points: bool,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    lines = [orjson.dumps(record) for record in records]
    for at in repeats:  # duplicates: a line sent again later
        if lines:
            lines.insert(min(at + 1, len(lines)), lines[at % len(lines)])
    for at, line in bad:
        lines.insert(min(at, len(lines)), line)
    directory = tmp_path_factory.mktemp("journal")
    journal = directory / "journal.jsonl"
    journal.write_bytes(b"\n".join(lines) + b"\n")
    reference = run(journal, directory / "reference", "reference", snapshot_every=7, adl_quantiles=points)
    compiled = run(journal, directory / "compiled", "compiled", snapshot_every=7, adl_quantiles=points)
    assert_same(reference, compiled)


def test_line_ends_and_blank_lines_are_read_alike(tmp_path: Path) -> None:
    lines = EXAMPLES[1].read_bytes().splitlines()
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(lines[0] + b"\r\n" + b" \t\r\n" + b"\r\n" + b"\x0c\n" + b"\n".join(lines[1:5]) + b"\r\r\n"
                        + lines[5].replace(b'"', b'"\r', 1) + b"\n" + b"\n".join(lines[6:]) + b"\n  \n" + lines[-1])
    reference = run(journal, tmp_path / "reference", "reference", snapshot_every=3)
    compiled = run(journal, tmp_path / "compiled", "compiled", snapshot_every=3)
    assert b'"line":4' in reference["dead-letter.jsonl"]  # the form feed is a record, not a blank line
    assert_same(reference, compiled)


def test_a_reason_holding_line_ends_is_written_as_one_line_alike(tmp_path: Path) -> None:
    """A dead letter's reason quotes the bad input (an extra field's name here): what some reader ends a line at
    (C0, DEL, C1, U+2028, U+2029) is escaped in one spelling, as the service's dead letters have it."""
    lines = EXAMPLES[1].read_bytes().splitlines()
    bad = orjson.dumps({"type": "mark", "ts": 1, "symbol": "X", "mark_price": "1", "X\x00\n\x7f\x85\u2028\u2029é": 1})
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"\n".join([*lines, bad]) + b"\n")
    reference = run(journal, tmp_path / "reference", "reference")
    assert_same(reference, run(journal, tmp_path / "compiled", "compiled"))
    (letter,) = map(orjson.loads, reference["dead-letter.jsonl"].splitlines())
    assert "X\\x00\\x0a\\x7f\\x85\\u2028\\u2029é" in letter["reason"] and letter["reason"].isprintable()


def test_a_position_whose_cost_rounded_away_ranks_alike(tmp_path: Path) -> None:
    """A cost share that would round past a cost below 1e-8 takes the cost (docs/design.md §9.4's shares never exceed
    their total), leaving a position of cost 0, which the ADL queue ranks last with score 0."""
    from scenario import fill, fund, instrument, liquidation, mark, transfer

    records = [
        fund(ratio="0"), instrument("XUSDT", tick="0.1", lot="0.00000001", tiers=(("1000000", "0.01", "0"),)),
        transfer("seed", "fund:MAIN", "1000"), *(transfer(f"d-{a}", a, "1000") for a in ("a", "b", "c")),
        fill("a1", "a", "buy", "0.00000007", "0.1", symbol="XUSDT"),
        fill("a2", "a", "sell", "0.00000006", "0.1", symbol="XUSDT"),
        fill("c1", "c", "buy", "0.5", "100", symbol="XUSDT"),
        fill("b1", "b", "sell", "1", "100", symbol="XUSDT", mode="isolated", leverage="10"),
        mark("1000", symbol="XUSDT"),
        liquidation("lb", "b", "1", "1000", symbol="XUSDT"),
    ]
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
    reference = run(journal, tmp_path / "reference", "reference")
    compiled = run(journal, tmp_path / "compiled", "compiled")
    assert reference["adl-events.jsonl"].count(b"\n") == 2
    assert_same(reference, compiled)


@pytest.mark.parametrize("engine", ["reference", "compiled"])
def test_quantile_points_change_neither_the_ledger_nor_the_head_hash(engine: EngineName, tmp_path: Path) -> None:
    """Quantile points (docs/design.md §10) only publish: every other output and the head hash are the same with them
    off and on; the state hash records the quantiles published, so it moves; summary.json says which it was."""
    journal = next(path for path in EXAMPLES if path.stem.startswith("02-"))
    off = run(journal, tmp_path / "off", engine)
    on = run(journal, tmp_path / "on", engine, adl_quantiles=True)
    assert off["adl-quantiles.jsonl"] == b""
    assert on["adl-quantiles.jsonl"].count(b"\n") > 0
    for name in ("fund-ledger.jsonl", "adl-events.jsonl", "postings.jsonl", "findings.jsonl", "dead-letter.jsonl",
                 "accounts.json"):
        assert on[name] == off[name], name
    summary_off, summary_on = orjson.loads(off["summary.json"]), orjson.loads(on["summary.json"])
    assert (summary_off["adl_quantile_points"], summary_on["adl_quantile_points"]) == (False, True)
    assert summary_on["head_hash"] == summary_off["head_hash"]
    assert summary_on["postings_head_hash"] == summary_off["postings_head_hash"]
    assert summary_on["state_hash"] != summary_off["state_hash"]
@pytest.mark.parametrize("policy", sorted(PRESETS))
@pytest.mark.parametrize("journal", EXAMPLES, ids=lambda path: path.stem)
def test_examples_replay_alike_under_every_policy(journal: Path, policy: str, tmp_path: Path) -> None:
    options = {"adl_policy": PRESETS[policy], "full_adl_metrics": True, "snapshot_every": 3, "adl_quantiles": True}
    reference = run(journal, tmp_path / "reference", "reference", **options)
    compiled = run(journal, tmp_path / "compiled", "compiled", **options)
    assert_same(reference, compiled)


policies = st.builds(
    AdlPolicy, rule=st.sampled_from(["bitmex", "binance", "pro_rata", "capped_pro_rata", "min_max_leverage"]),
    price=st.sampled_from(["bankruptcy", "mark", "floor"]), floor=st.sampled_from([Decimal(0), Decimal("500.5")]),
    drawdown=st.one_of(st.none(), st.builds(
        lambda ratios, window_ms: Drawdown(*ratios, window_ms),
        st.sampled_from([(Decimal("0.3"), Decimal("0.25")), (Decimal("0.01"), Decimal("0.005")),
                         (Decimal("0.3"), Decimal(0))]),
        st.sampled_from([60_000, 8 * 3_600_000]))),
) | st.builds(AdlPolicy, rule=st.just("socialized"), floor=st.sampled_from([Decimal(0), Decimal("1000")]))


@given(records=journals(), policy=policies, full=st.booleans(), points=st.booleans())
def test_generated_journals_replay_alike_under_every_policy(
        records: list[dict[str, object]], policy: AdlPolicy, full: bool, points: bool,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("journal")
    journal = directory / "journal.jsonl"
    journal.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
    options = {"adl_policy": policy, "full_adl_metrics": full, "snapshot_every": 9, "adl_quantiles": points}
    reference = run(journal, directory / "reference", "reference", **options)
    compiled = run(journal, directory / "compiled", "compiled", **options)
    assert_same(reference, compiled)


@pytest.mark.parametrize(("journal", "policy"), [("09-bybit-drawdown", "bybit"), ("10-socialized-loss", "socialized"),
                                                 ("07-adl-lab", "min_max_leverage")])
def test_a_snapshot_under_a_policy_resumes_in_either_engine(journal: str, policy: str, tmp_path: Path) -> None:
    """The policy and Bybit's trigger state travel in the snapshot: a tail replayed from it, by either engine, ends
    where the whole replay ends."""
    path = EXAMPLES[0].parent / f"{journal}.jsonl"
    whole = run(path, tmp_path / "whole", "reference", adl_policy=PRESETS[policy], snapshot_every=12)
    whole_summary = orjson.loads(whole["summary.json"])
    tails = []
    for writer in ("reference", "compiled"):
        written = run(path, tmp_path / f"by-{writer}", writer, adl_policy=PRESETS[policy],  # type: ignore[arg-type]
                      snapshot_every=12)
        [snapshot] = [name for name in written if name.startswith("snapshots/") and name.endswith(".json")]
        assert written[snapshot] == whole[snapshot]
        for reader in ("reference", "compiled"):
            tail = run(path, tmp_path / f"{writer}-{reader}", reader,  # type: ignore[arg-type]
                       from_snapshot=tmp_path / f"by-{writer}" / snapshot)
            tails.append(tail)
            summary = orjson.loads(tail["summary.json"])
            summary.pop("from_snapshot")
            assert {**summary, "adl": None} == {**whole_summary, "adl": None}, (writer, reader)
    # every output after the snapshot, accounts.json included (the snapshot carries the wallets at zero)
    assert all(tail == tails[0] for tail in tails)
    assert tails[0]["accounts.json"] == whole["accounts.json"]


def test_quantile_points_over_a_side_whose_positions_all_closed(tmp_path: Path) -> None:
    """A point, then every position of a side closes (the index keeps the side's book, with free slots only), then
    the next point: both engines publish the closes and nothing else, alike."""
    ts = 1_760_000_000_000
    records: list[dict[str, object]] = [
        {"type": "fund", "ts": ts, "fund_id": "F", "settle_asset": "USDT", "surplus": "fund",
         "max_inventory_ratio": "1"},
        {"type": "instrument", "ts": ts, "symbol": "BTCUSDT", "settle_asset": "USDT", "tick_size": "0.1",
         "lot_size": "0.001", "tiers": [{"max_notional": "1000000", "mmr": "0.004", "maint_amount": "0"}],
         "liquidation_fee_rate": "0.005", "fund_id": "F"},
    ]
    for number, side in enumerate(["buy", "sell", "buy"]):
        records += [
            {"type": "transfer", "ts": ts, "transfer_id": f"d{number}", "account_id": f"a{number}", "asset": "USDT",
             "amount": "1000"},
            {"type": "fill", "ts": ts, "fill_id": f"o{number}", "account_id": f"a{number}", "symbol": "BTCUSDT",
             "side": side, "qty": "0.01", "price": "50000", "fee": "0", "margin_mode": "cross", "leverage": "10"},
        ]
    records += [
        {"type": "mark", "ts": ts + 30_000, "symbol": "BTCUSDT", "mark_price": "50100"},  # a point: every quantile
        {"type": "fill", "ts": ts + 31_000, "fill_id": "c0", "account_id": "a0", "symbol": "BTCUSDT", "side": "sell",
         "qty": "0.01", "price": "50100", "fee": "0", "margin_mode": "cross", "leverage": "10"},
        {"type": "fill", "ts": ts + 31_000, "fill_id": "c2", "account_id": "a2", "symbol": "BTCUSDT", "side": "sell",
         "qty": "0.01", "price": "50100", "fee": "0", "margin_mode": "cross", "leverage": "10"},
        {"type": "mark", "ts": ts + 60_000, "symbol": "BTCUSDT", "mark_price": "50200"},  # the longs' nulls
        {"type": "mark", "ts": ts + 90_000, "symbol": "BTCUSDT", "mark_price": "50300"},  # no long left
    ]
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
    reference = run(journal, tmp_path / "reference", "reference", adl_quantiles=True)
    compiled = run(journal, tmp_path / "compiled", "compiled", adl_quantiles=True)
    assert_same(reference, compiled)
    published = [orjson.loads(line) for line in reference["adl-quantiles.jsonl"].splitlines()]
    assert [(r["account_id"], r["quantile"]) for r in published if r["kind"] == "quantile" and r["side"] == "long"
            and r["seq"] > published[0]["seq"]] == [("a0", None), ("a2", None)]


@pytest.mark.parametrize(("path", "value"), [(("seq",), "12"), (("seq",), 12.0), (("seq",), True),
                                             (("balances", "fund:MAIN"), 200000.5)])
def test_a_resealed_snapshot_with_a_value_of_the_wrong_json_type_is_refused_by_both(
        path: tuple[str, ...], value: object, tmp_path: Path) -> None:
    """A hand-edited snapshot, sealed again: a seq as a string or a float, a balance as a number. The compiled engine
    refused it and the reference read it; both refuse it now."""
    from backstop.core.snapshot import sealed

    journal = EXAMPLES[0].parent / "05-funding-and-fund-inventory.jsonl"
    whole = run(journal, tmp_path / "whole", "reference", snapshot_every=12)
    [name] = [name for name in whole if name.startswith("snapshots/") and name.endswith(".json")]
    document = orjson.loads(whole[name])
    target = document["engine"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    edited = tmp_path / "whole" / name
    edited.write_bytes(orjson.dumps(sealed(document)))
    for engine in ("reference", "compiled"):
        with pytest.raises(ReplayError, match="is corrupt") as refused:
            run(journal, tmp_path / f"from-{engine}", engine, from_snapshot=edited)  # type: ignore[arg-type]
        assert refused.value.exit_code == 2
