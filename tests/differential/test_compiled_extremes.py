"""Both engines on journals at the numeric bounds of docs/design.md §9 (tests/extremes.py, the builder both fuzzers
use): every output file byte-identical (fund ledger, ADL events, findings, dead letters, summary, accounts,
snapshots), so the head hash and the state hash too; and a snapshot of the reference resumes alike in both.

Values derived from a balance (TNC, equity shares, bankruptcy prices and their distance to the mark, a short lot's
cost, liquidation prices, ADL scores) pass 256 bits at these bounds (§9.3); the compiled engine forms them in 512.
`HYPOTHESIS_PROFILE=long` runs the long mode (tests/differential/conftest.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backstop.core.adl_policy import PRESETS, AdlPolicy
from differential.test_compiled_replay import assert_same, policies, run
from extremes import FINE, FUND_ID, IN_BOUND_POISON, ISSUE_19_POISON, build_journal, lines
from scenario import fill, fund, funding, instrument, liquidation, mark, transfer

T = TypeVar("T")


class _Draws:
    """extremes.Chooser over hypothesis draws."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def pick(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(options))

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))


@st.composite
def extreme_journals(draw: st.DrawFn, max_events: int = 40) -> list[dict[str, Any]]:
    return build_journal(_Draws(draw), draw(st.integers(1, max_events)))


BIG, TOP, TINY = "9999999999999999.99999999", "9999999999.99999999", "0.00000001"  # largest MONEY and PRICE
MOST = "999999999999.99999999"  # the largest QTY
# the second bracket's maint_amount is the cumulative amount the brackets imply (docs/design.md §7), as large as
# a bracket edge written in MONEY lets it be
TIERS = (("5000000000000000", "0.000000000000000001", "0"), (BIG, "0.999999999999999999", "4999999999999999.99"))
WORLD = [fund(FUND_ID, ratio="0"), *(instrument(symbol, fund_id=FUND_ID, tick=TINY, lot=TINY, tiers=TIERS)
                                     for symbol in (FINE, "WIDE")),
         transfer("seed", f"fund:{FUND_ID}", BIG), *(transfer(f"d{n}", f"x{n}", BIG) for n in range(4))]


def round_trips(account: str, times: int) -> list[dict[str, Any]]:
    """Buy the largest qty at the smallest price and sell it at the largest: about 10^22 realized each time."""
    return [record for n in range(times) for record in (
        fill(f"{account}-buy{n}", account, "buy", MOST, TINY, symbol=FINE),
        fill(f"{account}-sell{n}", account, "sell", MOST, TOP, symbol=FINE))]


# Values derived from a balance past 128 bits, in a journal short enough to read: x1 and x2 realize about 3 x 10^22
# each, x3's isolated open at leverage 0.01 takes about 10^24 from its wallet. x2's tiny cross long then has a
# bankruptcy price, a distance and an ADL score past 2^127 at their scale (it takes x1's first lot); x3's tiny cross
# long a bankruptcy price, a liquidation price and, taken over, a lot whose computed BP is past it too; x1's short
# lots carry its equity into their cost, the ADL price and the fund's gain.
WIDE_EQUITY = [
    *WORLD, *round_trips("x1", 3), *round_trips("x2", 3),
    fill("x3-big", "x3", "buy", MOST, TOP, symbol="WIDE", mode="isolated", leverage="0.01"),
    fill("x3-tiny", "x3", "buy", "0.00000002", TOP, symbol=FINE),
    fill("x2-tiny", "x2", "buy", TINY, TOP, symbol=FINE),
    fill("x1-short", "x1", "sell", "0.00000004", TOP, symbol=FINE),
    mark("1", symbol=FINE),
    liquidation("l1", "x1", "0.00000001", "1", symbol=FINE),
    liquidation("l2", "x1", "0.00000001", "1", symbol=FINE, executions=[(TINY, "1")]),
    funding("0.999999999999999999", TOP, symbol="WIDE"),
    liquidation("l3", "x3", TINY, "0.5", symbol=FINE, bankruptcy_price="1"),
]


@given(journal=extreme_journals())
@example(journal=[*WORLD, ISSUE_19_POISON, IN_BOUND_POISON, mark(TINY, symbol=FINE),
                  liquidation("lp", "x0", MOST, TINY, symbol=FINE)])
@example(journal=WIDE_EQUITY)
def test_journals_at_the_bounds_replay_alike(journal: list[dict[str, Any]],
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("extremes")
    path = directory / "journal.jsonl"
    path.write_bytes(lines(journal))
    reference = run(path, directory / "reference", "reference", snapshot_every=5)
    compiled = run(path, directory / "compiled", "compiled", snapshot_every=5)
    assert_same(reference, compiled)
    snapshots = sorted((directory / "reference" / "snapshots").glob("*.json"))
    if snapshots:  # the reference's last snapshot (wide lot costs and balances) resumes alike in both engines
        assert_same(run(path, directory / "resumed-reference", "reference", from_snapshot=snapshots[-1]),
                    run(path, directory / "resumed-compiled", "compiled", from_snapshot=snapshots[-1]))


def test_the_wide_example_reaches_past_128_bits(tmp_path: Path) -> None:
    """The example above is not vacuous: its accounts and ADL events hold values past 2^127 at 1e-8, where the
    compiled engine's 128-bit values used to overflow (or wrap)."""
    path = tmp_path / "journal.jsonl"
    path.write_bytes(lines(WIDE_EQUITY))
    reference = run(path, tmp_path / "reference", "reference")
    compiled = run(path, tmp_path / "compiled", "compiled")
    assert_same(reference, compiled)
    documents = [orjson.loads(compiled["accounts.json"])]
    documents += [orjson.loads(line) for name in ("adl-events.jsonl", "findings.jsonl", "fund-ledger.jsonl")
                  for line in compiled[name].splitlines()]
    past = {key for document in documents for key, value in _decimals(document) if abs(value) * 10**8 >= 2**127}
    assert {"bankruptcy_price", "liquidation_price", "price", "score", "computed"} <= past, past


def _decimals(document: Any, key: str = "") -> list[tuple[str, Decimal]]:
    if isinstance(document, dict):
        return [pair for name, item in document.items() for pair in _decimals(item, name)]
    if isinstance(document, list):
        return [pair for item in document for pair in _decimals(item, key)]
    if isinstance(document, str) and document.lstrip("-").replace(".", "", 1).isdigit():
        return [(key, Decimal(document))]
    return []


# Balances near BALANCE_BOUND (10^68) cannot come from a journal of any length a test can run (a posting adds at most
# about 10^24 of new value), so they come from a snapshot: the state after HEAD with balances moved to 10^67 (from the
# external account, so the ledger still sums to zero), then TAIL in both engines. Its TNC, equity shares, lot costs,
# bankruptcy and liquidation prices, scores and the fund's inventory limit need up to about 340 bits, their products
# up to about 380: the 512-bit path of every rule of docs/design.md §9.3.
NEAR_BOUND = Decimal(10) ** 67
HEAD = [fund("F", ratio="0"), fund("G", ratio="9999.999999999999999999", surplus="trader"),
        instrument(FINE, fund_id="F", tick=TINY, lot=TINY, tiers=TIERS),
        instrument("WIDE", fund_id="G", tick=TINY, lot=TINY, tiers=TIERS, fee_rate="0.005"),
        *(transfer(f"h{n}", f"x{n}", "1000") for n in range(6)),
        fill("h-x1", "x1", "sell", "0.00000004", "100", symbol=FINE),
        fill("h-x2", "x2", "buy", "0.00000001", "100", symbol=FINE),
        fill("h-x0", "x0", "buy", "0.00000001", "100", symbol=FINE),
        fill("h-x4", "x4", "buy", "0.00000002", "100", symbol=FINE),
        fill("h-x3", "x3", "buy", MOST, "100", symbol="WIDE", mode="isolated", leverage="0.01"),
        fill("h-x5", "x5", "sell", "0.00000002", "100", symbol="WIDE")]
MOVED = {"wallet:x1:USDT": NEAR_BOUND, "wallet:x2:USDT": NEAR_BOUND, "wallet:x4:USDT": -NEAR_BOUND,
         "isolated:x3:WIDE": NEAR_BOUND, "fund:G": NEAR_BOUND, "wallet:x5:USDT": NEAR_BOUND}
TAIL = [mark("50", symbol=FINE),
        liquidation("t1", "x1", "0.00000002", "50", symbol=FINE),
        liquidation("t2", "x4", TINY, "50", symbol=FINE, executions=[(TINY, "60")], bankruptcy_price="1"),
        mark("150", symbol="WIDE"),
        funding("0.5", "150", symbol="WIDE"),
        fill("t-x3", "x3", "sell", "499999999999.99999999", "150", symbol="WIDE", mode="isolated", leverage="0.01"),
        liquidation("t3", "x5", "0.00000002", "150", symbol="WIDE"),
        fill("t-g", "fund:G", "buy", TINY, "150", symbol="WIDE")]


def _moved(snapshot: Path, target: Path) -> Path:
    """The snapshot with MOVED added to its balances (taken from the external account), hashed and sealed again;
    its identity file beside it."""
    from backstop.core.hashing import canonical_json
    from backstop.core.numbers import CONTEXT, text
    from backstop.core.snapshot import sealed

    document = orjson.loads(snapshot.read_bytes())
    balances = document["engine"]["balances"]
    for account, amount in MOVED.items():
        balances[account] = text(CONTEXT.add(Decimal(balances.get(account, "0")), amount))
        balances["external:USDT"] = text(CONTEXT.subtract(Decimal(balances["external:USDT"]), amount))
    document["engine"]["balances"] = dict(sorted(balances.items()))
    document["state_hash"] = hashlib.sha256(canonical_json(document["engine"])).hexdigest()
    target.write_bytes(orjson.dumps(sealed(document), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    identities = snapshot.with_suffix(".ids")  # the identity file the snapshot names, beside it
    (target.parent / identities.name).write_bytes(identities.read_bytes())
    return target


def test_balances_near_the_bound_replay_alike(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(lines([*HEAD, *TAIL]))
    run(path, tmp_path / "head", "reference", snapshot_every=len(HEAD))
    snapshot = _moved(tmp_path / "head" / "snapshots" / f"snapshot-{len(HEAD):012d}.json", tmp_path / "moved.json")
    reference = run(path, tmp_path / "reference", "reference", from_snapshot=snapshot)
    compiled = run(path, tmp_path / "compiled", "compiled", from_snapshot=snapshot)
    assert_same(reference, compiled)
    adl = [orjson.loads(line) for line in compiled["adl-events.jsonl"].splitlines()]
    assert len(adl) == 2 and max(abs(Decimal(event["score"])) for event in adl) * 10**12 >= 2**256
    x4 = orjson.loads(compiled["accounts.json"])["x4"]["positions"][FINE]  # its wallet near -10^67
    assert Decimal(x4["liquidation_price"]) * 10**8 >= 2**300
    assert b"liquidation_gain" in compiled["fund-ledger.jsonl"] and b"bad_debt" in compiled["findings.jsonl"]


# ------------------------------------------------------------------ the same bounds under every ADL policy (§11)
# The policies' arithmetic (allocations over equity shares and the full haircut, deficits, haircuts, leverage and
# PnL% of the round metrics, Binance's score over the margin balance, Bybit's PnL with the lots' costs, the
# socialized shares of a shortfall) takes values derived from a balance: 512 bits in the compiled engine.


def _run_both(path: Path, directory: Path, **options: object) -> dict[str, bytes]:
    reference = run(path, directory / "reference", "reference", **options)
    compiled = run(path, directory / "compiled", "compiled", **options)
    assert_same(reference, compiled)
    return compiled


def _rounds_past_128_bits(compiled: dict[str, bytes]) -> set[str]:
    """The fields of the ADL rounds (adl-rounds.jsonl) holding a value past 2^127 at 1e-8."""
    documents = [orjson.loads(line) for line in compiled["adl-rounds.jsonl"].splitlines()]
    return {key for document in documents for key, value in _decimals(document) if abs(value) * 10**8 >= 2**127}


@pytest.mark.parametrize("policy", sorted(PRESETS))
def test_the_wide_example_replays_alike_under_every_policy(policy: str, tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(lines(WIDE_EQUITY))
    options = {"adl_policy": PRESETS[policy], "full_adl_metrics": True, "snapshot_every": 5}
    compiled = _run_both(path, tmp_path / "whole", **options)
    # the policy had rounds to play (socialized has none: its fund, seeded with the largest MONEY, never falls below
    # its floor; the test below has its rounds)
    assert bool(compiled["adl-rounds.jsonl"]) is (policy != "socialized"), policy
    snapshot = sorted((tmp_path / "whole" / "reference" / "snapshots").glob("*.json"))[-1]
    _run_both(path, tmp_path / "resumed", from_snapshot=snapshot, full_adl_metrics=True)


# a rising market after HEAD: the longs facing x1's short lot profit, so Binance ranks them by their margin, a wallet
# near 10^67 (the product of collateral and margin balance in its score's denominator passes 512 bits)
RISING = [mark("150", symbol=FINE), liquidation("r1", "x1", "0.00000002", "150", symbol=FINE)]


@pytest.mark.parametrize("tail", [TAIL, RISING], ids=["falling", "rising"])
@pytest.mark.parametrize("policy", sorted(PRESETS))
def test_balances_near_the_bound_replay_alike_under_every_policy(policy: str, tail: list[dict[str, Any]],
                                                                 tmp_path: Path) -> None:
    """The state near BALANCE_BOUND (above), taken under the policy (a snapshot carries it), then a tail in both
    engines with the full round metrics: every round's figures come from balances near 10^67."""
    path = tmp_path / "journal.jsonl"
    path.write_bytes(lines([*HEAD, *tail]))
    run(path, tmp_path / "head", "reference", snapshot_every=len(HEAD), adl_policy=PRESETS[policy])
    snapshot = _moved(tmp_path / "head" / "snapshots" / f"snapshot-{len(HEAD):012d}.json", tmp_path / "moved.json")
    compiled = _run_both(path, tmp_path, from_snapshot=snapshot, full_adl_metrics=True)
    if policy == "socialized" and tail is RISING:  # its fund stays above its floor: no round
        assert orjson.loads(compiled["summary.json"])["adl"]["rounds"] == 0
        return
    assert orjson.loads(compiled["summary.json"])["adl"]["rounds"] > 0, policy
    assert _rounds_past_128_bits(compiled), policy  # e.g. the lot's bankruptcy price, haircut, deficit


@given(journal=extreme_journals(), policy=policies, full=st.booleans())
@settings(max_examples=60)
def test_journals_at_the_bounds_replay_alike_under_generated_policies(
        journal: list[dict[str, Any]], policy: AdlPolicy, full: bool,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("extremes-policy")
    path = directory / "journal.jsonl"
    path.write_bytes(lines(journal))
    _run_both(path, directory, adl_policy=policy, full_adl_metrics=full, snapshot_every=5)


# ------------------------------------------------------------------ inverse contracts at their bounds (§7, §9.3)
# An inverse position's face |q| x s stays below MAX_FACE (10^14), so with prices down to 1e-8 every value V(q, P) =
# |q| x s / P stays below 10^22, as a linear one does; the contract sizes span the PRICE kind. Fills of the largest
# face at the smallest price carry costs near MAX_COST, a short's round trip realizes about 10^22 of the coin, and the
# lots taken over are clamped at one tick and at the largest PRICE.
INVERSE_SIZES = {"INVTINY": TINY, "INVONE": "1", "INVUSD": "100", "INVTOP": TOP}
# the largest qty whose face is below 10^14 (QTY's own bound for the small sizes)
FACE_QTY = {"INVTINY": MOST, "INVONE": MOST, "INVUSD": "999999999999.99999999", "INVTOP": "10000"}
INVERSE_PRICES = (TINY, "0.5", "1", "50000", TOP)
INVERSE_WORLD = [
    fund("COINX", asset="XBT", ratio="0"),
    *(instrument(symbol, fund_id="COINX", asset="XBT", tick=TINY, lot=TINY, tiers=TIERS, contract_type="inverse",
                 contract_size=size) for symbol, size in INVERSE_SIZES.items()),
    transfer("seed-x", "fund:COINX", BIG, asset="XBT"),
    *(transfer(f"dx{n}", f"x{n}", BIG, asset="XBT") for n in range(4)),
]
INVERSE_EDGES = [
    *INVERSE_WORLD,
    # MAX_FACE: 10000 x 9999999999.99999999 is below 10^14, 10000.00000001 is not (at once, or grown)
    fill("x0-face", "x0", "sell", "10000", TINY, symbol="INVTOP"),
    fill("x1-over", "x1", "buy", "10000.00000001", TOP, symbol="INVTOP"),
    fill("x1-long", "x1", "buy", "9999.99999999", TOP, symbol="INVTOP"),
    fill("x1-grow", "x1", "buy", "0.00000002", TOP, symbol="INVTOP"),
    # a short's round trips: sold at the largest price (a cost of about 10^4), bought back at the smallest (a value
    # near 10^22): the short's coin gain
    *(record for n in range(3) for record in (
        fill(f"x2-sell{n}", "x2", "sell", "9999.99999999", TOP, symbol="INVTOP"),
        fill(f"x2-buy{n}", "x2", "buy", "9999.99999999", TINY, symbol="INVTOP"))),
    fill("x3-tiny", "x3", "buy", TINY, TOP, symbol="INVTINY"),
    fill("x2-tiny", "x2", "sell", MOST, TINY, symbol="INVTINY", mode="isolated", leverage="0.01"),
    fill("x3-usd", "x3", "buy", "999999999999.99999999", "50000", symbol="INVUSD", mode="isolated", leverage="1000"),
    fill("x0-usd", "x0", "sell", "0.00000003", "50000", symbol="INVUSD"),
    mark(TINY, symbol="INVUSD"),
    mark(TOP, symbol="INVTOP"),
    funding("0.999999999999999999", TINY, symbol="INVUSD"),
    funding("-0.999999999999999999", TOP, symbol="INVTOP"),
    liquidation("lx3", "x3", "999999999999.99999999", TINY, symbol="INVUSD", executions=[(TINY, TOP)],
                bankruptcy_price="1"),
    liquidation("lx0", "x0", "0.00000001", TOP, symbol="INVTOP"),
    liquidation("lx1", "x1", "9999.99999999", "0.5", symbol="INVTOP"),
    liquidation("lx2", "x2", MOST, TOP, symbol="INVTINY"),
    fill("fund-x", "fund:COINX", "buy", TINY, TINY, symbol="INVTINY"),
]


@st.composite
def inverse_extreme_journals(draw: st.DrawFn, max_events: int = 30) -> list[dict[str, Any]]:
    """The inverse world at its bounds: fills of the largest faces and the smallest, at the bounds of PRICE, marks
    and fundings there, and liquidations of what is held (qty resolved against the reference's state)."""
    from backstop.core.engine import Engine
    from backstop.core.numbers import text
    from backstop.core.processor import Processor
    from backstop.wire.decode import decode_record

    processor = Processor(Engine())
    journal: list[dict[str, Any]] = []
    for record in INVERSE_WORLD:
        processor.process(decode_record(orjson.dumps(record)))
        journal.append(record)
    for number in range(draw(st.integers(1, max_events))):
        symbol = draw(st.sampled_from(sorted(INVERSE_SIZES)))
        kind = draw(st.sampled_from(["fill", "fill", "fill", "mark", "funding", "liquidation", "liquidation"]))
        price = draw(st.sampled_from(INVERSE_PRICES))
        record: dict[str, Any]
        if kind == "fill":
            qty = draw(st.sampled_from([TINY, "1", FACE_QTY[symbol], "10000.00000001", MOST]))
            record = fill(f"xf{number}", f"x{draw(st.integers(0, 3))}", draw(st.sampled_from(["buy", "sell"])), qty,
                          price, symbol=symbol, mode=draw(st.sampled_from(["cross", "isolated"])),
                          leverage=draw(st.sampled_from(["0.01", "1", "1000"])))
        elif kind == "mark":
            record = mark(price, symbol=symbol)
        elif kind == "funding":
            record = funding(draw(st.sampled_from(["0.999999999999999999", "-0.5", "0.000000000000000001"])), price,
                             symbol=symbol)
        else:
            held = sorted(processor.engine.by_symbol.get(symbol, {}).items())
            if not held:
                continue
            _, position = held[draw(st.integers(0, len(held) - 1))]
            qty = position.size if draw(st.booleans()) else min(position.size, Decimal(TINY))
            side = None if position.position_side == "both" else position.position_side
            record = liquidation(f"xl{number}", position.account_id, text(qty), price, symbol=symbol,
                                 executions=[(TINY, draw(st.sampled_from(INVERSE_PRICES)))] if draw(st.booleans())
                                 else [], position_side=side)
        processor.process(decode_record(orjson.dumps(record)))
        journal.append(record)
    return journal


# The fund's excess in coin (a lot of INVTOP valued at a mark of 1e-8: 10^18) in contracts of INVTINY at 50000 passes
# any qty before it is capped at the net qty (the compiled engine overflowed there).
HUGE_EXCESS = [
    *INVERSE_WORLD,
    fill("xf0", "x0", "buy", TINY, TINY, symbol="INVTINY", leverage="0.01"),
    fill("xf1", "x0", "buy", "1", TINY, symbol="INVTOP", leverage="0.01"),
    liquidation("xl7", "x0", TINY, TINY, symbol="INVTINY"),
    liquidation("xl8", "x0", "1", TINY, symbol="INVTOP"),
    mark("50000", symbol="INVTINY"),
]


@given(journal=inverse_extreme_journals())
@example(journal=INVERSE_EDGES)
@example(journal=HUGE_EXCESS)
def test_inverse_journals_at_the_bounds_replay_alike(journal: list[dict[str, Any]],
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("inverse-extremes")
    path = directory / "journal.jsonl"
    path.write_bytes(lines(journal))
    reference = run(path, directory / "reference", "reference", snapshot_every=5, adl_quantiles=True)
    compiled = run(path, directory / "compiled", "compiled", snapshot_every=5, adl_quantiles=True)
    assert_same(reference, compiled)
    snapshots = sorted((directory / "reference" / "snapshots").glob("*.json"))
    if snapshots:
        assert_same(run(path, directory / "resumed-reference", "reference", from_snapshot=snapshots[-1],
                        adl_quantiles=True),
                    run(path, directory / "resumed-compiled", "compiled", from_snapshot=snapshots[-1],
                        adl_quantiles=True))


def test_the_inverse_edges_reach_the_bounds(tmp_path: Path) -> None:
    """INVERSE_EDGES is not vacuous: MAX_FACE refuses the contract beyond it, and clamped lots and values near 10^22
    come out alike."""
    path = tmp_path / "journal.jsonl"
    path.write_bytes(lines(INVERSE_EDGES))
    compiled = _run_both(path, tmp_path, full_adl_metrics=True, adl_quantiles=True)
    reasons = [orjson.loads(line)["reason"] for line in compiled["dead-letter.jsonl"].splitlines()]
    assert reasons[:2] == ["position face value would be 100000000000099.9998999999999999, above the bound 10^14"] * 2
    assert b'"bp_clamped"' in compiled["findings.jsonl"]
    accounts = orjson.loads(compiled["accounts.json"])
    assert Decimal(accounts["x2"]["wallets"]["XBT"]) > Decimal(BIG) + Decimal(10) ** 22  # the round trips' gains


@pytest.mark.parametrize("policy", sorted(PRESETS))
def test_the_inverse_edges_replay_alike_under_every_policy(policy: str, tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(lines(INVERSE_EDGES))
    _run_both(path, tmp_path, adl_policy=PRESETS[policy], full_adl_metrics=True, snapshot_every=7)


# A fund's lots are bounded one by one, not its net: a fund long and short in one symbol that sells its long lots
# (fills of its own) is left with a net short past 10^12 (and, inverse, a face past 10^14): its funding and its
# inventory are valued past 128 bits (the compiled engine wrapped, then stopped, before it valued them in 256).
FUND_NETS = sorted((Path(__file__).resolve().parents[1] / "data").glob("fund-net-*.jsonl"))


@pytest.mark.parametrize("policy", ["queue", "socialized"])
@pytest.mark.parametrize("journal", FUND_NETS, ids=[path.stem for path in FUND_NETS])
def test_a_fund_net_past_the_position_bounds_replays_alike(journal: Path, policy: str, tmp_path: Path) -> None:
    compiled = _run_both(journal, tmp_path / "whole", adl_policy=PRESETS[policy], snapshot_every=1)
    nets = [orjson.loads(line) for line in compiled["fund-ledger.jsonl"].splitlines()]
    assert any(entry["kind"] == "funding" and entry["amount"] != "0" for entry in nets), "the fund paid funding"
    # and a snapshot of such a state resumes (backstop.wire.snapshot_state holds lots, not the net, to the bounds)
    snapshot = sorted((tmp_path / "whole" / "reference" / "snapshots").glob("*.json"))[-3]
    _run_both(journal, tmp_path / "resumed", adl_policy=PRESETS[policy], from_snapshot=snapshot)


@pytest.mark.parametrize("policy", ["queue", "okx", "bybit"])
@pytest.mark.parametrize(("qty", "price", "tick", "wallet"), [
    ("999999999999", TINY, TINY, "9999999999999999"),  # equity 10^12 x the notional: one engine's float said -1.8e-4
    ("3", "0.1", "0.1", "9999999999999999"),  # both engines' floats left A out
])
def test_a_score_whose_float_error_a_leverage_swamps_is_ranked_exactly(
        policy: str, qty: str, price: str, tick: str, wallet: str, tmp_path: Path) -> None:
    """A and B are short at the mark they sold at: both score exactly 0, so the larger, A, is deleveraged first. A
    float score's uPnL (notional - cost, about 0) carries a rounding error that 1 / leverage (the equity over the
    notional, here up to 10^12) scales past the index's margin: such a row is ranked exactly, never left out."""
    journal = [fund("F", ratio="0"), instrument("S", fund_id="F", tick=tick, lot="1", fee_rate="0"),
               transfer("dA", "A", wallet), transfer("dB", "B", wallet),
               fill("a", "A", "sell", qty, price, symbol="S", leverage="1"),
               fill("b", "B", "sell", "2", price, symbol="S", leverage="1"),
               fill("l", "L", "buy", "1", price, symbol="S", mode="isolated", leverage="1"),
               liquidation("x", "L", "1", price, symbol="S")]
    path = tmp_path / "journal.jsonl"
    path.write_bytes(lines(journal))
    compiled = _run_both(path, tmp_path, adl_policy=PRESETS[policy])
    events = [orjson.loads(line) for line in compiled["adl-events.jsonl"].splitlines()]
    assert [event["account_id"] for event in events] == ["A"]
