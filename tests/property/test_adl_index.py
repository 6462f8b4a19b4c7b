"""The ADL index's candidates always contain the exact head of the queue: a deleverage through the index picks
the same counterparties, ranks, scores and quantities as ranking every position exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import journals

from backstop.core import ledger
from backstop.core.engine import AdlPolicy, Engine
from backstop.core.processor import Processor
from backstop.core.snapshot import state_hash
from backstop.core.state import Position
from backstop.core.valuation import LINEAR
from backstop.wire.decode import decode_record
from scenario import fund, instrument, run, transfer

D = Decimal
MARK = {"BTCUSDT": D("50000"), "ETHUSDT": D("2500")}
LOT = {"BTCUSDT": D("0.001"), "ETHUSDT": D("0.01")}


@st.composite
def books(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Positions around the mark, with equity anywhere from deep past bankruptcy to a hair above zero."""
    rows = []
    for number in range(draw(st.integers(1, 40))):
        for symbol in draw(st.sampled_from([["BTCUSDT"], ["ETHUSDT"], ["BTCUSDT", "ETHUSDT"]])):
            lots = draw(st.integers(1, 5000))
            entry = MARK[symbol] * D(draw(st.integers(500, 1500))) / 1000
            rows.append({"account": f"a{number:02d}", "symbol": symbol, "side": draw(st.sampled_from([1, -1])),
                         "qty": lots * LOT[symbol], "entry": entry.quantize(D("0.01")),
                         "mode": draw(st.sampled_from(["cross", "isolated"])),
                         "equity": draw(st.sampled_from([D("-100"), D(0), D("1e-8"), D("0.01"), D("1"), D("50")])
                                        | st.decimals(-1000, 100000, places=8))})
    return rows


def engine_with(rows: list[dict[str, Any]], mark: dict[str, Decimal]) -> Engine:
    processor, _ = run([fund(), instrument("BTCUSDT", tick="0.1", lot="0.001"),
                        instrument("ETHUSDT", tick="0.01", lot="0.01"),
                        instrument("MEMEUSDT", tick="0.00000001", lot="1"), transfer("seed", "fund:MAIN", "1")])
    engine = processor.engine
    engine.marks.update(mark)
    for row in rows:
        add_row(engine, row, mark)
    return engine


def add_row(engine: Engine, row: dict[str, Any], mark: dict[str, Decimal]) -> None:
    mode = "cross" if any(p.margin_mode == "cross" for p in engine.positions.of(row["account"])) else row["mode"]
    cost = row["qty"] * row["entry"]
    position = Position(row["account"], row["symbol"], row["qty"] * row["side"], cost, mode, D(10))
    engine.positions.add(position)
    engine.by_symbol[row["symbol"]][position.key] = position
    upnl = position.unrealized_pnl(mark[row["symbol"]], LINEAR)
    if mode == "isolated":
        engine.ledger.balances[ledger.isolated(row["account"], row["symbol"])] = row["equity"] - upnl
    else:  # the wallet makes this position's equity the drawn one (other cross positions move it further)
        engine.ledger.balances[ledger.wallet(row["account"], "USDT")] = row["equity"] - upnl
    engine.adl_index.touch(row["account"])


def close_row(engine: Engine, account: str, symbol: str) -> None:
    position = engine.positions.get(account, symbol)
    if position is not None:
        engine.positions.remove(position)
        del engine.by_symbol[symbol][position.key]
        engine.adl_index.touch(account)


def head(queue: list[Any], qty: Decimal) -> list[tuple[str, Decimal, Decimal]]:
    taken, left = [], qty
    for ranked in queue:
        if left <= 0:
            break
        take = min(ranked.position.size, left)
        taken.append((ranked.position.account_id, ranked.score, take))
        left -= take
    return taken


@given(books(), st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from(["long", "short"]),
       st.integers(1, 20000), st.integers(800, 1200))
def test_the_index_picks_what_the_full_ranking_picks(rows: list[dict[str, Any]], symbol: str, side: str,
                                                     lots: int, move: int) -> None:
    engine = engine_with(rows, MARK)
    engine.marks[symbol] = (MARK[symbol] * move / 1000).quantize(D("0.1"))  # the mark moves after the build
    qty = lots * LOT[symbol]
    full = engine.adl_queue(symbol, side)  # type: ignore[arg-type]
    fast, count = engine.adl_top(symbol, side, qty)  # type: ignore[arg-type]
    assert count == len(full)
    assert head(fast, qty) == head(full, qty)


@st.composite
def cheap_books(draw: st.DrawFn) -> tuple[list[dict[str, Any]], Decimal]:
    """Positions in a symbol priced in fractions of a unit, where rounding a BP to the price quantum moves the
    distance to it, and so the exact score, by far more than the index's float margin."""
    mark = draw(st.sampled_from([D("0.00012345"), D("0.01234567"), D("0.5"), D("3.3")]))
    rows = []
    for number in range(draw(st.integers(2, 40))):
        entry = max((mark * D(draw(st.integers(500, 1500))) / 1000).quantize(D("1e-8")), D("1e-8"))
        rows.append({"account": f"c{number:02d}", "symbol": "MEMEUSDT", "side": draw(st.sampled_from([1, -1])),
                     "qty": D(draw(st.integers(1, 10 ** 7))), "entry": entry,
                     "mode": draw(st.sampled_from(["cross", "isolated"])),
                     "equity": draw(st.decimals(D("1e-8"), D(5), places=8) | st.decimals(0, 100000, places=8))})
    return rows, mark


@given(cheap_books(), st.sampled_from(["long", "short"]), st.integers(1, 10 ** 8))
@example(  # found by this test before the index allowed for the rounding: equity 1e-8 on 1 and on 2 units
    ([{"account": "c00", "symbol": "MEMEUSDT", "side": 1, "qty": D(1), "entry": D("0.00006172"), "mode": "cross",
       "equity": D("1E-8")},
      {"account": "c01", "symbol": "MEMEUSDT", "side": 1, "qty": D(2), "entry": D("0.00006185"), "mode": "cross",
       "equity": D("1E-8")}], D("0.00012345")), "long", 1)
def test_the_index_allows_for_the_rounded_bankruptcy_price(book: tuple[list[dict[str, Any]], Decimal], side: str,
                                                           qty: int) -> None:
    rows, mark = book
    engine = engine_with(rows, {**MARK, "MEMEUSDT": mark})
    full = engine.adl_queue("MEMEUSDT", side)  # type: ignore[arg-type]
    fast, count = engine.adl_top("MEMEUSDT", side, D(qty))  # type: ignore[arg-type]
    assert count == len(full)
    assert head(fast, D(qty)) == head(full, D(qty))


def test_a_hair_above_bankruptcy_ranks_first_and_the_index_finds_it() -> None:
    rows = [{"account": f"a{n:04d}", "symbol": "BTCUSDT", "side": -1, "qty": D("1"), "entry": D(50001 + n),
             "mode": "isolated", "equity": D("10000")} for n in range(2000)]
    rows.append({"account": "z-hair", "symbol": "BTCUSDT", "side": -1, "qty": D("1"), "entry": D("51000"),
                 "mode": "cross", "equity": D("1e-8")})  # in profit, leverage 5e12: the top of the queue
    engine = engine_with(rows, MARK)
    fast, count = engine.adl_top("BTCUSDT", "short", D("1.5"))
    assert count == 2001
    assert head(fast, D("1.5"))[0][::2] == ("z-hair", D("1"))
    assert head(fast, D("1.5")) == head(engine.adl_queue("BTCUSDT", "short"), D("1.5"))
    assert len(fast) < 2001  # it ranked a few candidates, not the whole side


class _RankEverything(Engine):
    """The engine without the index: every deleverage ranks every position exactly."""

    def adl_top(self, symbol: str, side: Any, qty: Decimal) -> tuple[list[Any], int]:
        queue = self.adl_queue(symbol, side)
        return queue, len(queue)


@given(journals(max_events=120))
def test_through_whole_journals_the_index_changes_no_outcome(journal: list[dict[str, Any]]) -> None:
    """Every way an account's positions or balances change reaches the index before the next deleverage."""
    indexed, plain = Processor(Engine()), Processor(_RankEverything())
    for record in journal:
        decoded = decode_record(orjson.dumps(record))
        assert type(indexed.process(decoded)) is type(plain.process(decoded))
    assert indexed.engine.head_hash == plain.engine.head_hash
    assert state_hash(indexed.engine) == state_hash(plain.engine)


def _cross(account: str, symbol: str, qty: str, entry: str, equity: str) -> dict[str, Any]:
    return {"account": account, "symbol": symbol, "side": 1, "qty": D(qty), "entry": D(entry), "mode": "cross",
            "equity": D(equity)}


@given(books(), st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from(["long", "short"]), st.integers(1, 20000),
       st.lists(st.tuples(st.integers(0, 39), st.decimals(-500, 500, places=2)), max_size=12))
@example(  # found by this test: a caller outside the engine's 60-digit context (28 digits) got a rounded score
    [_cross("a00", "BTCUSDT", "0.001", "50000", "-100"), _cross("a00", "ETHUSDT", "0.01", "1250", "1E-8"),
     _cross("a01", "BTCUSDT", "0.001", "25000", "-100"), _cross("a02", "BTCUSDT", "0.001", "25000", "-100"),
     _cross("a03", "ETHUSDT", "0.02", "1250", "0.01")], "ETHUSDT", "long", 1, [])
def test_at_one_mark_the_index_follows_what_changed_between_deleverages(
        rows: list[dict[str, Any]], symbol: str, side: str, lots: int, moves: list[tuple[int, Decimal]]) -> None:
    """A liquidation block deleverages again and again at one mark: the index keeps its scores between them and
    rescores only the rows that changed; it still picks what ranking everything picks."""
    engine = engine_with(rows, MARK)
    qty = lots * LOT[symbol]
    engine.adl_top(symbol, side, qty)  # type: ignore[arg-type]  # scored at this mark
    for number, amount in moves:  # margin moves in and out of some accounts between two deleverages
        book = engine.positions.of(f"a{number:02d}")
        if book:
            position = book[0]
            name = (ledger.isolated(position.account_id, position.symbol) if position.margin_mode == "isolated"
                    else ledger.wallet(position.account_id, "USDT"))
            engine.ledger.post(ledger.external("USDT"), name, amount)
    fast, _ = engine.adl_top(symbol, side, qty)  # type: ignore[arg-type]
    assert head(fast, qty) == head(engine.adl_queue(symbol, side), qty)  # type: ignore[arg-type]


def test_an_account_that_rises_to_the_top_between_two_deleverages_at_one_mark_is_found() -> None:
    rows = [{"account": f"a{n:04d}", "symbol": "BTCUSDT", "side": -1, "qty": D("1"), "entry": D(50001 + n),
             "mode": "isolated", "equity": D("10000")} for n in range(2000)]
    engine = engine_with(rows, MARK)
    first = head(engine.adl_top("BTCUSDT", "short", D("1.5"))[0], D("1.5"))
    assert "a1000" not in [account for account, _, _ in first]
    # a1000 takes out nearly all its margin: leverage ~5,000x, so it now heads the queue
    engine.ledger.post(ledger.isolated("a1000", "BTCUSDT"), ledger.external("USDT"), D("9990"))
    fast, _ = engine.adl_top("BTCUSDT", "short", D("1.5"))
    assert head(fast, D("1.5"))[0][0] == "a1000"
    assert head(fast, D("1.5")) == head(engine.adl_queue("BTCUSDT", "short"), D("1.5"))


def test_a_liquidation_block_at_one_mark_gives_what_ranking_everything_gives(tmp_path: Any) -> None:
    """The incident benchmark's shape, small: one block of liquidations at one mark, each deleveraged at once."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from incident import generate

    journal = tmp_path / "block.jsonl"
    generate(journal, accounts=600, events=6000, block=80, seed=3)
    indexed, plain = Processor(Engine()), Processor(_RankEverything())
    for line in journal.read_bytes().splitlines():
        decoded = decode_record(line)
        indexed.process(decoded)
        plain.process(decoded)
    assert indexed.adl_events == plain.adl_events > 80  # every liquidation deleveraged, most against several
    assert indexed.engine.head_hash == plain.engine.head_hash
    assert state_hash(indexed.engine) == state_hash(plain.engine)


def _plain_scores(size: Any, cost: Any, base: Any, mark: float, side: str) -> tuple[Any, Any, Any]:
    """The index's float formula written the plain way (module docstring of adl_index), for comparison."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        notional = size * mark
        upnl = (notional - cost) * (1 if side == "long" else -1)
        equity = base + upnl
        bound = np.maximum((np.abs(base) + notional + cost) * 1e-6, (1 + size) * 0.02)  # 0.02: ROUNDING_SLACK
        bound = np.where(cost <= 0, np.inf, bound)
        ratio, leverage = upnl / cost, notional / equity
        score = np.where(ratio < 0, ratio / leverage, ratio * leverage)
        return np.where(equity > bound, score, -np.inf), equity > bound, np.abs(equity) <= bound


@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.sampled_from(["long", "short"]))
def test_chunked_scoring_gives_the_plain_formula_in_every_row(seed: int, chunks: int, side: str) -> None:
    """Scoring runs in cache-sized chunks and picks between values on their bits; every row of every chunk (the
    last one partial) gets what the plain formula gives: profit and loss, past bankruptcy, a hair above it,
    empty slots."""
    import numpy as np

    from backstop.core.adl_index import CHUNK, _scores

    rng = np.random.default_rng(seed)
    rows = chunks * CHUNK - int(rng.integers(0, CHUNK // 2))  # a partial last chunk; never too few for every case
    size = rng.integers(1, 5000, rows) / 1000
    cost = size * rng.integers(40000, 60000, rows)
    mark = 50000.0
    upnl = (size * mark - cost) * (1 if side == "long" else -1)
    equity = rng.choice([-100.0, 0.0, 1e-8, 0.01, 50.0, 1e4], rows) * rng.choice([1.0, 1.0 + 1e-7], rows)
    base = equity - upnl
    empty = rng.random(rows) < 0.05
    size[empty], cost[empty], base[empty] = 0.0, 1.0, -4.0
    score, trusted, untrusted = _scores(size, cost, base, mark, side)  # type: ignore[arg-type]
    want_score, want_trusted, want_untrusted = _plain_scores(size, cost, base, mark, side)
    assert np.array_equal(trusted, want_trusted) and np.array_equal(untrusted, want_untrusted)
    assert trusted.any() and (~trusted).any() and untrusted.any()
    assert np.array_equal(np.isneginf(score), ~trusted)
    assert np.allclose(score[trusted], want_score[trusted], rtol=1e-14, atol=0)
    assert (score[trusted] < 0).any() and (score[trusted] > 0).any()


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 64, 512, 4096]), st.sampled_from([1_000, 300_000, 1_000_000]),
       st.booleans())
def test_the_head_holds_the_highest_scores_highest_first(seed: int, top: int, rows: int, sampled_high: bool
                                                         ) -> None:
    """The partial sort behind a strided-sample bar returns what sorting every score returns: ties, -inf rows
    (past bankruptcy), and rows the sample sees above all others (its bar then lets too few through)."""
    import numpy as np

    from backstop.core.adl_index import _head

    rng = np.random.default_rng(seed)
    score = np.round(rng.standard_normal(rows), int(rng.integers(1, 6)))  # coarse rounding: many ties
    score[rng.random(rows) < rng.choice([0.0, 0.5, 0.999])] = -np.inf
    if sampled_high:
        score[::max(1, rows // 65_536)] += 100
    top = min(top, rows)
    head = _head(score, top)
    assert np.array_equal(score[head], np.sort(score)[::-1][:top])
    assert len(set(head.tolist())) == top


@st.composite
def tied_books(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Hundreds of positions exactly alike (a few templates, each under many account ids, in shuffled order),
    some nudged by amounts a double may not tell apart."""
    from backstop.core.adl_index import TIE_ROWS

    templates = draw(st.lists(st.tuples(st.integers(1, 3000), st.integers(900, 1100), st.sampled_from(["cross",
                     "isolated"]), st.sampled_from([D("1"), D("50"), D("1000")])), min_size=1, max_size=3))
    count = draw(st.integers(TIE_ROWS + 1, 3 * TIE_ROWS))
    numbers = draw(st.permutations(range(count)))
    nudged = draw(st.sets(st.integers(0, count - 1), max_size=20))
    nudge = D(10) ** draw(st.integers(-20, -6)) * draw(st.sampled_from([1, -1]))
    rows = []
    for n, number in enumerate(numbers):
        lots, permille, mode, equity = templates[n % len(templates)]
        rows.append({"account": f"t{number:04d}", "symbol": "BTCUSDT", "side": -1, "qty": lots * LOT["BTCUSDT"],
                     "entry": MARK["BTCUSDT"] * permille / 1000, "mode": mode,
                     "equity": equity + nudge if n in nudged else equity})
    return rows


@given(tied_books(), st.integers(1, 20000), st.integers(950, 1050))
def test_positions_exactly_alike_are_ranked_by_account_id_through_the_index(rows: list[dict[str, Any]], lots: int,
                                                                            move: int) -> None:
    engine = engine_with(rows, MARK)
    engine.marks["BTCUSDT"] = (MARK["BTCUSDT"] * move / 1000).quantize(D("0.1"))
    qty = lots * LOT["BTCUSDT"]
    fast, count = engine.adl_top("BTCUSDT", "short", qty)
    assert count == len(rows)
    assert head(fast, qty) == head(engine.adl_queue("BTCUSDT", "short"), qty)


def test_ties_are_thinned_only_where_the_doubles_stand_for_the_exact_numbers() -> None:
    """1,000 cross longs exactly alike, and one whose wallet is one money quantum lower: the same double (the wallet
    is about -10^9), yet an exactly higher score (its BP, rounded down to the price quantum, is one quantum higher:
    a shorter distance, a higher leverage). It heads the queue; the index keeps it among a handful of candidates
    although it shares every double with the thousand it outranks."""
    alike = [{"account": f"a{n:04d}", "symbol": "BTCUSDT", "side": 1, "qty": D("1"), "entry": D("100000"),
              "mode": "cross", "equity": D("-1000000000")} for n in range(1000)]  # at the build's mark: the wallet
    nudged = dict(alike[0], account="zz", equity=D("-1000000000.00000001"))
    engine = engine_with([*alike, nudged], {**MARK, "BTCUSDT": D("100000")})
    engine.marks["BTCUSDT"] = D("1000200000")  # uPnL 1,000,100,000: equity 100,000 and 99,999.99999999
    wallets = {engine.ledger.balance(ledger.wallet(account, "USDT")) for account in ("a0000", "zz")}
    assert len(wallets) == 2 and len({float(wallet) for wallet in wallets}) == 1
    fast, count = engine.adl_top("BTCUSDT", "long", D("1.5"))
    full = engine.adl_queue("BTCUSDT", "long")
    assert [ranked.position.account_id for ranked in full[:3]] == ["zz", "a0000", "a0001"]
    assert full[0].score > full[1].score == full[1000].score
    assert head(fast, D("1.5")) == head(full, D("1.5"))
    assert count == 1001 and len(fast) < 10  # ranked a handful, not the thousand alike


def test_refreshing_the_index_ahead_of_a_deleverage_changes_nothing_and_leaves_it_nothing_to_do() -> None:
    """What a service does while its input is idle: the deleverage that follows finds the index up to date."""
    rows = [{"account": f"a{n:03d}", "symbol": "BTCUSDT", "side": -1, "qty": D("1"), "entry": D(50001 + n),
             "mode": "isolated", "equity": D("1000")} for n in range(300)]
    ahead, lazy = engine_with(rows, MARK), engine_with(rows, MARK)
    assert ahead.refresh_adl_index() is True
    assert ahead.refresh_adl_index() is False and not ahead.adl_index.dirty and not ahead.ledger.touched
    for engine in (ahead, lazy):
        engine.ledger.post(ledger.isolated("a123", "BTCUSDT"), ledger.external("USDT"), D("990"))
    assert ahead.adl_index.dirty or ahead.ledger.touched  # the margin moved: the next refresh has work again
    assert ahead.refresh_adl_index() is True
    assert head(ahead.adl_top("BTCUSDT", "short", D("2.5"))[0], D("2.5")) == \
        head(lazy.adl_top("BTCUSDT", "short", D("2.5"))[0], D("2.5")) == \
        head(lazy.adl_queue("BTCUSDT", "short"), D("2.5"))
    binance = engine_with(rows, MARK)
    binance.adl_policy = AdlPolicy(rule="binance")
    assert binance.refresh_adl_index() is False  # only the BitMEX rule uses the index


@given(tied_books(), st.lists(st.tuples(st.sampled_from(["nudge", "restore", "close", "join", "swap"]),
                                        st.integers(0, 10**6), st.integers(1, 20000)), min_size=1, max_size=10))
def test_ties_stay_right_through_deleverages_that_change_the_groups(rows: list[dict[str, Any]],
                                                                    steps: list[tuple[str, int, int]]) -> None:
    """The index keeps each tie group's account order between deleverages. Members leave (margin moved, position
    closed) and come back (the margin moved back); new accounts join a group with ids that sort first, also into
    a slot freed since the last deleverage: every deleverage still picks what ranking everything picks."""
    engine = engine_with(rows, MARK)
    mark = {"BTCUSDT": engine.marks["BTCUSDT"]}
    engine.adl_top("BTCUSDT", "short", LOT["BTCUSDT"])  # the groups sorted once
    joined, nudged = 0, rows[0]
    first = sorted(rows, key=lambda r: r["account"])[:16]  # the accounts the deleverages reach
    for action, pick, lots in steps:
        row = first[pick % len(first)] if pick % 2 else rows[pick % len(rows)]
        if action == "nudge":
            nudged = row
        elif action == "restore":
            row = nudged
        margin = (ledger.isolated(row["account"], "BTCUSDT") if row["mode"] == "isolated"
                  else ledger.wallet(row["account"], "USDT"))
        if action in ("nudge", "restore"):  # out of its group, or back into it
            engine.ledger.post(ledger.external("USDT"), margin, D("0.01") if action == "nudge" else D("-0.01"))
        if action in ("close", "swap"):
            close_row(engine, row["account"], "BTCUSDT")
        if action in ("join", "swap"):  # swap: the new account takes the slot just freed, before any deleverage
            joined += 1
            add_row(engine, dict(row, account=f"a{joined:04d}"), mark)
        qty = lots * LOT["BTCUSDT"]
        fast, count = engine.adl_top("BTCUSDT", "short", qty)
        full = engine.adl_queue("BTCUSDT", "short")
        assert count == len(full)
        assert head(fast, qty) == head(full, qty)


@given(books(), st.integers(1, 30), st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from(["long", "short"]),
       st.integers(1, 20000), st.integers(800, 1200))
def test_a_refresh_in_slices_leaves_the_rest_touched_and_the_deleverage_still_exact(
        rows: list[dict[str, Any]], limit: int, symbol: str, side: str, lots: int, move: int) -> None:
    """What a service does after a backlog: a slice of the touched accounts per batch; a deleverage in between
    refreshes the rest first."""
    engine = engine_with(rows, MARK)
    engine.adl_index.touch_ledger_accounts(engine.ledger.drain_touched())
    touched = engine.adl_index.pending
    assert engine.refresh_adl_index(limit) is True
    assert engine.adl_index.pending == max(touched - limit, 0)
    engine.marks[symbol] = (MARK[symbol] * move / 1000).quantize(D("0.1"))
    qty = lots * LOT[symbol]
    fast, count = engine.adl_top(symbol, side, qty)  # type: ignore[arg-type]
    full = engine.adl_queue(symbol, side)  # type: ignore[arg-type]
    assert engine.adl_index.pending == 0
    assert count == len(full) and head(fast, qty) == head(full, qty)


@st.composite
def inverse_books(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Inverse BTCUSD positions (contract size 100, money in BTC) around the mark, equity from past bankruptcy to a
    hair above zero; some accounts also hold a linear BTC-settled position in cross margin."""
    rows = []
    for number in range(draw(st.integers(1, 30))):
        entry = D(50000) * D(draw(st.integers(500, 1500))) / 1000
        rows.append({"account": f"i{number:02d}", "symbol": "BTCUSD", "side": draw(st.sampled_from([1, -1])),
                     "qty": D(draw(st.integers(1, 5000))), "entry": entry.quantize(D("0.5")),
                     "mode": draw(st.sampled_from(["cross", "isolated"])),
                     "equity": draw(st.sampled_from([D("-1"), D(0), D("1e-8"), D("0.01")])
                                    | st.decimals(-10, 100, places=8)),
                     "linear": draw(st.booleans())})
    return rows


@given(inverse_books(), st.sampled_from(["long", "short"]), st.integers(1, 20000), st.integers(800, 1200))
def test_an_inverse_symbol_is_ranked_exactly_whatever_the_index_holds(rows: list[dict[str, Any]], side: str,
                                                                      qty: int, move: int) -> None:
    """The index's float rows score linear positions only: a deleverage in an inverse symbol ranks its side exactly
    (docs/design.md §7), and linear rows of the same accounts do not disturb it."""
    from backstop.core.valuation import Valuation

    processor, _ = run([fund("COIN", asset="BTC"),
                        instrument("BTCUSD", fund_id="COIN", asset="BTC", tick="0.5", lot="1",
                                   contract_type="inverse", contract_size="100"),
                        instrument("ETHBTC", fund_id="COIN", asset="BTC", tick="0.00001", lot="0.01")])
    engine = processor.engine
    valuation = Valuation(D(100))
    engine.marks.update({"BTCUSD": D(50000), "ETHBTC": D("0.05")})
    for row in rows:
        position = Position(row["account"], "BTCUSD", row["qty"] * row["side"], valuation.value(row["qty"],
                            row["entry"]), row["mode"], D(10))
        engine.positions.add(position)
        engine.by_symbol["BTCUSD"][position.key] = position
        upnl = position.unrealized_pnl(D(50000), valuation)
        account = (ledger.isolated(row["account"], "BTCUSD") if row["mode"] == "isolated"
                   else ledger.wallet(row["account"], "BTC"))
        engine.ledger.balances[account] = row["equity"] - upnl
        if row["linear"]:
            other = Position(row["account"], "ETHBTC", D(1), D("0.05"), "isolated", D(10))
            engine.positions.add(other)
            engine.by_symbol["ETHBTC"][other.key] = other
        engine.adl_index.touch(row["account"])
    engine.refresh_adl_index()
    engine.marks["BTCUSD"] = (D(50000) * move / 1000).quantize(D("0.5"))
    full = engine.adl_queue("BTCUSD", side)  # type: ignore[arg-type]
    fast, count = engine.adl_top("BTCUSD", side, D(qty))  # type: ignore[arg-type]
    assert count == len(full)
    assert head(fast, D(qty)) == head(full, D(qty))
    linear, _ = engine.adl_top("ETHBTC", "long", D(1))
    assert head(linear, D(1)) == head(engine.adl_queue("ETHBTC", "long"), D(1))
