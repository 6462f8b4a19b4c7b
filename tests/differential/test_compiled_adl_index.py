"""The compiled engine's ADL index (crates/backstop-engine/src/adl_index.rs) against ranking every position exactly.

Books are built in the reference engine as tests/property/test_adl_index.py builds them (equity anywhere from deep
past bankruptcy to a hair above zero, positions exactly alike), carried into the compiled engine by a snapshot, and
changed afterwards through journal lines applied to both engines. Each deleverage's head through the compiled
index (counterparties, ranks, scores, quantities) must be the reference's full exact ranking's.
"""

from __future__ import annotations

import itertools
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backstop import _engine
from backstop.core.engine import Engine
from backstop.core.processor import Processor
from backstop.engines import EngineOptions, ReferenceEngine
from backstop.wire.decode import decode_record
from scenario import fill, mark, transfer

sys.path.insert(0, str(Path(__file__).parents[1] / "property"))  # its book builders import `strategies` by name
from test_adl_index import LOT, MARK, books, cheap_books, engine_with

D = Decimal
Head = list[tuple[str, int, Decimal, Decimal]]


def compiled_from(engine: Engine) -> _engine.Ledger:
    """The compiled engine restored from a snapshot of the reference's state."""
    snapshot = ReferenceEngine(EngineOptions(), Processor(engine)).snapshot(0)
    return _engine.Ledger(strict=False, snapshot_every=0, snapshot=snapshot.document, ids=snapshot.ids)


def reference_head(engine: Engine, symbol: str, side: str, qty: Decimal) -> tuple[Head, int]:
    """The head of the full exact ranking: (account, rank, score, take) of each counterparty."""
    queue = engine.adl_queue(symbol, side)  # type: ignore[arg-type]
    taken, left = [], qty
    for rank, ranked in enumerate(queue, start=1):
        if left <= 0:
            break
        take = min(ranked.position.size, left)
        taken.append((ranked.position.account_id, rank, ranked.score, take))
        left -= take
    return taken, len(queue)


def compiled_head(ledger: _engine.Ledger, symbol: str, side: str, qty: Decimal, *, everyone: bool = False
                  ) -> tuple[Head, int]:
    head, count = ledger.adl_head(symbol, side, format(qty, "f"), everyone=everyone)
    return [(account, rank, D(score), D(take)) for account, rank, score, take in head], count


def apply_both(engine: Engine, ledger: _engine.Ledger, records: list[dict[str, Any]]) -> None:
    """The same journal lines through both engines (each accepts or rejects them alike). The books were written
    straight into the reference's ledger, so its conservation check stays off."""
    engine.check_conservation = False
    processor = Processor(engine)
    lines = [orjson.dumps(record) for record in records]
    for line in lines:
        processor.process(decode_record(line))
    ledger.apply_lines(b"".join(line + b"\n" for line in lines), 1, b"")
    assert ledger.events_applied() == engine.last_seq


def assert_same_head(engine: Engine, ledger: _engine.Ledger, symbol: str, side: str, qty: Decimal) -> None:
    want = reference_head(engine, symbol, side, qty)
    assert compiled_head(ledger, symbol, side, qty) == want
    assert compiled_head(ledger, symbol, side, qty, everyone=True) == want


@given(books(), st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from(["long", "short"]),
       st.integers(1, 20000), st.integers(800, 1200))
def test_the_compiled_index_picks_what_the_full_ranking_picks(rows: list[dict[str, Any]], symbol: str, side: str,
                                                              lots: int, move: int) -> None:
    engine = engine_with(rows, MARK)
    ledger = compiled_from(engine)
    qty = lots * LOT[symbol]
    assert_same_head(engine, ledger, symbol, side, qty)  # the index built at the snapshot's mark
    moved = (MARK[symbol] * move / 1000).quantize(D("0.1"))
    apply_both(engine, ledger, [mark(str(moved), symbol=symbol)])  # the mark moves after the build
    assert_same_head(engine, ledger, symbol, side, qty)


@given(cheap_books(), st.sampled_from(["long", "short"]), st.integers(1, 10 ** 8))
def test_the_compiled_index_allows_for_the_rounded_bankruptcy_price(book: tuple[list[dict[str, Any]], Decimal],
                                                                    side: str, qty: int) -> None:
    rows, price = book
    engine = engine_with(rows, {**MARK, "MEMEUSDT": price})
    assert_same_head(engine, compiled_from(engine), "MEMEUSDT", side, D(qty))


@st.composite
def tied_books(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Hundreds of positions exactly alike (a few templates, each under many account ids, in shuffled order), some
    nudged by a few money quanta: below a double's resolution at the size of their balances (~10^9), so a double
    cannot tell them from the rest, yet exactly different."""
    templates = draw(st.lists(st.tuples(st.integers(1, 3000), st.integers(900, 1100),
                                        st.sampled_from(["cross", "isolated"]),
                                        st.sampled_from([D("1"), D("50"), D("1000000000"), D("-1000000000")])),
                              min_size=1, max_size=3))
    count = draw(st.integers(257, 700))
    numbers = draw(st.permutations(range(count)))
    nudged = draw(st.sets(st.integers(0, count - 1), max_size=20))
    nudge = D("1e-8") * draw(st.integers(1, 5)) * draw(st.sampled_from([1, -1]))
    rows = []
    for n, number in enumerate(numbers):
        lots, permille, mode, equity = templates[n % len(templates)]
        rows.append({"account": f"t{number:04d}", "symbol": "BTCUSDT", "side": -1, "qty": lots * LOT["BTCUSDT"],
                     "entry": MARK["BTCUSDT"] * permille / 1000, "mode": mode,
                     "equity": equity + nudge if n in nudged else equity})
    return rows


@given(tied_books(), st.integers(1, 20000), st.integers(950, 1050))
@example([{"account": f"t{n:04d}", "symbol": "BTCUSDT", "side": -1, "qty": D("1"), "entry": D("50000"),
           "mode": "cross", "equity": D("1000000000") + (D("1e-8") if n == 400 else 0)} for n in range(600)],
         1000, 1000)
def test_positions_exactly_alike_are_ranked_by_account_id_through_the_compiled_index(
        rows: list[dict[str, Any]], lots: int, move: int) -> None:
    engine = engine_with(rows, MARK)
    ledger = compiled_from(engine)
    qty = lots * LOT["BTCUSDT"]
    assert_same_head(engine, ledger, "BTCUSDT", "short", qty)
    moved = (MARK["BTCUSDT"] * move / 1000).quantize(D("0.1"))
    apply_both(engine, ledger, [mark(str(moved))])
    assert_same_head(engine, ledger, "BTCUSDT", "short", qty)


def test_ties_are_grouped_on_exact_integers_not_on_doubles() -> None:
    """1,000 cross longs exactly alike, and one whose wallet is one money quantum lower: the same double (the wallet
    is about -10^9), yet an exactly higher score. It heads the queue, ahead of the thousand it shares every double
    with."""
    alike = [{"account": f"a{n:04d}", "symbol": "BTCUSDT", "side": 1, "qty": D("1"), "entry": D("100000"),
              "mode": "cross", "equity": D("-1000000000")} for n in range(1000)]
    nudged = dict(alike[0], account="zz", equity=D("-1000000000.00000001"))
    engine = engine_with([*alike, nudged], {**MARK, "BTCUSDT": D("100000")})
    ledger = compiled_from(engine)
    apply_both(engine, ledger, [mark("1000200000")])  # uPnL 1,000,100,000: equity 100,000 and 99,999.99999999
    head, count = compiled_head(ledger, "BTCUSDT", "long", D("1.5"))
    assert [account for account, *_ in head] == ["zz", "a0000"] and count == 1001
    assert (head, count) == reference_head(engine, "BTCUSDT", "long", D("1.5"))


_ids = itertools.count()


@given(tied_books(), st.lists(st.tuples(st.sampled_from(["nudge", "restore", "close", "join", "deposit"]),
                                        st.integers(0, 10**6), st.integers(1, 20000)), min_size=1, max_size=8))
def test_ties_stay_right_as_journal_lines_change_the_groups_between_deleverages(
        rows: list[dict[str, Any]], steps: list[tuple[str, int, int]]) -> None:
    """At one mark, deleverage after deleverage: members leave a group (a deposit of one money quantum, a closed
    position) and come back, new accounts join it; every change reaches the compiled index through the engine's
    own paths (postings, opened and closed positions)."""
    engine = engine_with(rows, MARK)
    ledger = compiled_from(engine)
    assert_same_head(engine, ledger, "BTCUSDT", "short", LOT["BTCUSDT"])  # the groups formed once
    first = sorted(rows, key=lambda r: r["account"])[:16]  # the accounts the deleverages reach
    held = {row["account"]: row for row in rows}
    for action, pick, lots in steps:
        row = first[pick % len(first)] if pick % 2 else rows[pick % len(rows)]
        account, size = row["account"], format(row["qty"], "f")
        price = format(row["entry"], "f")
        records: list[dict[str, Any]] = []
        if action in ("nudge", "restore") and row["mode"] == "cross" and account in held:
            amount = "0.00000001" if action == "nudge" else "-0.00000001"
            records.append(transfer(f"x{next(_ids)}", account, amount))
        elif action == "deposit":
            records.append(transfer(f"x{next(_ids)}", account, "1000000"))
        elif action == "close" and account in held:
            records.append(fill(f"x{next(_ids)}", account, "buy", size, price, mode=row["mode"]))
            held.pop(account)
        elif action == "join":
            joiner = f"a{next(_ids):05d}"  # sorts before every t account
            records += [transfer(f"x{next(_ids)}", joiner, "1000000"),
                        fill(f"x{next(_ids)}", joiner, "sell", size, price, mode=row["mode"])]
        if records:
            apply_both(engine, ledger, records)
        assert_same_head(engine, ledger, "BTCUSDT", "short", lots * LOT["BTCUSDT"])


def test_a_liquidation_block_at_one_mark_replays_alike(tmp_path: Path) -> None:
    """The incident benchmark's shape, small: one block of liquidations at one mark, each deleveraged at once
    through the compiled index; every output file byte for byte the reference's."""
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from differential.test_compiled_replay import assert_same, run
    from incident import generate

    journal = tmp_path / "block.jsonl"
    generate(journal, accounts=600, events=6000, block=80, seed=3)
    reference = run(journal, tmp_path / "reference", "reference")
    compiled = run(journal, tmp_path / "compiled", "compiled")
    assert_same(reference, compiled)
    assert orjson.loads(compiled["summary.json"])["adl_events"] > 80


def test_the_head_is_refused_for_unknown_names() -> None:
    ledger = _engine.Ledger(strict=False, snapshot_every=0, snapshot=None, ids=None)
    with pytest.raises(ValueError, match="no mark for BTCUSDT"):
        ledger.adl_head("BTCUSDT", "long", "1")
