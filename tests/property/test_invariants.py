"""Invariants of docs/design.md §6 over generated event streams."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import example, given
from strategies import journals

from backstop.core import ledger
from backstop.core.engine import Engine
from backstop.core.idstore import IdStore
from backstop.core.processor import Applied, Duplicate, Processor, Rejection
from backstop.core.snapshot import restore, state_document, state_hash
from backstop.wire.decode import decode_record
from scenario import run


def hashes(processor: Processor) -> tuple[str, str]:
    return processor.engine.head_hash, state_hash(processor.engine)


def check_state(engine: Engine) -> None:
    for fund_state in engine.funds.values():
        for lots in fund_state.lots.values():
            assert lots, "an empty lot queue is left behind"
            for lot in lots:
                assert lot.qty > 0 and lot.cost > 0, lot
    for account_id in engine.positions:
        book = engine.positions.of(account_id)
        assert book, f"{account_id} is left with an empty book"
        assert len({(p.symbol, p.position_side) for p in book}) == len(book), f"{account_id} holds a key twice"
        for position in book:
            assert position.qty != 0 and position.cost > 0, position
            assert position.position_side in ("both", position.side), position  # a hedge side never flips
            assert engine.by_symbol[position.symbol][position.key] is position
        for symbol in {p.symbol for p in book}:  # one-way or hedge in a symbol, never both
            assert len({p.position_side == "both" for p in book if p.symbol == symbol}) == 1, (account_id, symbol)


def held_by_side(engine: Engine) -> dict[tuple[str, str], Decimal]:
    """The funds' inventory per (symbol, side of its lots)."""
    held: dict[tuple[str, str], Decimal] = {}
    for fund_state in engine.funds.values():
        for lots in fund_state.lots.values():
            for lot in lots:
                held[(lot.symbol, lot.side)] = held.get((lot.symbol, lot.side), Decimal(0)) + lot.qty
    return held


def _fill(fill_id: str, account: str, side: str, ts: int) -> dict[str, Any]:
    return {"type": "fill", "ts": ts, "fill_id": fill_id, "account_id": account, "symbol": "BTCUSDT", "side": side,
            "qty": "0.001", "price": "50000.0", "fee": "0", "margin_mode": "cross", "leverage": "1"}


def _setup(max_inventory_ratio: str) -> list[dict[str, Any]]:
    return [
        {"type": "fund", "ts": 1, "fund_id": "MAIN", "settle_asset": "USDT", "surplus": "fund",
         "max_inventory_ratio": max_inventory_ratio},
        {"type": "instrument", "ts": 2, "symbol": "BTCUSDT", "settle_asset": "USDT", "tick_size": "0.1",
         "lot_size": "0.001", "tiers": [{"max_notional": "50000", "mmr": "0.004", "maint_amount": "0"}],
         "liquidation_fee_rate": "0.005", "fund_id": "MAIN"},
        {"type": "transfer", "ts": 3, "transfer_id": "seed", "account_id": "fund:MAIN", "asset": "USDT",
         "amount": "100"},
        *({"type": "transfer", "ts": 4, "transfer_id": f"d-{a}", "account_id": a, "asset": "USDT", "amount": "1000"}
          for a in ("a0", "a1"))]


def _liquidation(account: str, ts: int) -> dict[str, Any]:
    return {"type": "liquidation", "ts": ts, "liquidation_id": f"l-{account}", "account_id": account,
            "symbol": "BTCUSDT", "qty": "0.001", "mark_price": "50000.0", "executions": []}


# Found by the long profile: the fund holds a long and a short lot of one symbol (net flat) and sells one lot; the
# fund's fill id sent again, as the opposite side (a duplicate: nothing applied).
FLAT_NET_FUND_SELL = [*_setup("0.5"), _fill("f0", "a1", "sell", 5), _fill("f1", "a0", "buy", 6),
                      _liquidation("a0", 7), _liquidation("a1", 7), _fill("fc0", "fund:MAIN", "sell", 8)]
FUND_FILL_SENT_AGAIN = [*_setup("0.5"), _fill("f0", "a0", "buy", 5), _liquidation("a0", 7),
                        _fill("fc0", "fund:MAIN", "sell", 8), _fill("fc0", "fund:MAIN", "buy", 9)]


@example(FLAT_NET_FUND_SELL)
@example(FUND_FILL_SENT_AGAIN)
@given(journals())
def test_money_is_conserved_and_rejections_and_duplicates_change_nothing(journal: list[dict[str, Any]]) -> None:
    processor = Processor(Engine(check_conservation=True))  # raises InvariantViolation on any imbalance
    for record in journal:
        before = hashes(processor)
        held = held_by_side(processor.engine)
        _, (outcome,) = run([record], processor=processor)
        if isinstance(outcome, Rejection | Duplicate):
            assert hashes(processor) == before, outcome
        elif record["type"] == "fill" and record["account_id"] == "fund:MAIN":
            # a fund never closes more inventory than it holds on that side (it may hold long and short lots of
            # one symbol at once: a sell closes long lots even when the net is flat)
            closing = "long" if record["side"] == "sell" else "short"
            assert held.get((record["symbol"], closing), Decimal(0)) >= Decimal(record["qty"]), (held, record)
        check_state(processor.engine)
    assert sum(processor.engine.ledger.balances.values(), Decimal(0)) == 0


@given(journals())
def test_adl_runs_at_the_lot_price_down_the_queue(journal: list[dict[str, Any]]) -> None:
    processor = Processor(Engine(check_conservation=True))
    for record in journal:
        _, (outcome,) = run([record], processor=processor)
        if not isinstance(outcome, Applied) or not outcome.effects.adl_events:
            continue
        engine = processor.engine
        by_lot: dict[str, list[Any]] = {}
        for event in outcome.effects.adl_events:
            by_lot.setdefault(event.liquidation_id, []).append(event)
        for events in by_lot.values():
            ranks = [e.rank for e in events]
            assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
            prices = {e.price for e in events}
            spread = max(prices) - min(prices)
            assert spread <= Decimal("1e-8") * 2 + Decimal("1e-8") / min(e.qty for e in events)
            for event in events[:-1]:  # everyone but the last counterparty is closed out entirely
                position = engine.positions.get(event.account_id, event.symbol)
                assert position is None or position.side != event.side, event
        balance = engine.ledger.balance(ledger.fund("MAIN"))
        own = [e for e in outcome.effects.adl_events if e.liquidation_id == record.get("liquidation_id")]
        if record["type"] == "liquidation" and balance > 0 and own:
            # the policy refused the lot: keeping it would have broken max_inventory_ratio (events of older lots come
            # from the fund's inventory check after the liquidation, and this one may have closed on executions)
            fund_state = engine.funds["MAIN"]
            symbol = record["symbol"]
            adl_qty = sum((e.qty for e in own), Decimal(0))
            side = own[0].side  # the counterparties' side; the lot is the other
            kept = fund_state.net_qty(symbol) + (adl_qty if side == "short" else -adl_qty)
            notional = abs(kept) * engine.marks[symbol] + sum(
                (abs(fund_state.net_qty(s)) * engine.marks[s] for s in fund_state.lots if s != symbol), Decimal(0))
            assert notional > fund_state.spec.max_inventory_ratio * balance


@given(journals())
def test_replay_is_deterministic_and_duplicates_change_nothing(journal: list[dict[str, Any]]) -> None:
    first, _ = run(journal)
    second, _ = run(journal)
    assert hashes(first) == hashes(second)
    doubled, _ = run([r for record in journal for r in (record, dict(record))])
    assert hashes(doubled) == hashes(first)
    assert doubled.events_applied == first.events_applied


@given(journals(), journals(max_events=0).map(len))
def test_snapshot_plus_tail_equals_the_whole(journal: list[dict[str, Any]], setup_size: int) -> None:
    whole, _ = run(journal)
    for split in sorted({setup_size, (len(journal) + setup_size) // 2, len(journal)}):
        head, _ = run(journal[:split])
        document = json.loads(orjson.dumps(state_document(head.engine)))  # through JSON, as on disk
        held = io.BytesIO()
        store = head.engine.dedupe.ids
        assert isinstance(store, IdStore)
        store.write(held)  # and the identities through their file
        held.seek(0)
        resumed = Processor(restore(document, check_conservation=True, ids=IdStore.read(held)[0]))
        assert state_hash(resumed.engine) == state_hash(head.engine)
        for record in journal[split:]:
            resumed.process(decode_record(orjson.dumps(record)))
        assert hashes(resumed) == hashes(whole)
