"""`backstop explain ID`: the causal chain behind a fund-ledger entry, an ADL event, a posting or a liquidation, in
words and numbers, re-derived from the journal (nothing is taken from the outputs on trust).

Postings are walked both ways: from a liquidation, a fund entry or an ADL event to every posting it caused (a
trader's wallet credited by a deleverage, the settlement account, the fund), and from a posting (p-SEQ-N) back to
the fund entry, ADL event and liquidation, transfer or fill that caused it."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import fields
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any, Literal

import orjson

from backstop.adapters.journal_file import JournalFileError, read_journal
from backstop.adapters.output_reader import OutputReadError, file_bytes
from backstop.core import adl, adl_policy, ledger
from backstop.core.adl_policy import AdlPolicy
from backstop.core.engine import Engine
from backstop.core.events import (
    Event,
    FillEvent,
    FundingEvent,
    LiquidationEvent,
    MarkEvent,
    TransferEvent,
    fund_id_of,
    is_fund_account,
)
from backstop.core.numbers import CONTEXT, equity_behind, money, text
from backstop.core.records import AdlEvent, Finding, FundLedgerEntry, Posting
from backstop.core.valuation import LINEAR
from backstop.engines import BatchResult, EngineOptions, ReferenceEngine
from backstop.wire.decode import InvalidRecord, decode_record


class ExplainError(Exception):
    """The id is not in the journal's outputs, or the journal cannot be read."""


def _target_seq(identifier: str) -> tuple[int | None, str | None]:
    """(seq, liquidation id) from an output id (fl-SEQ-N, adl-SEQ-N, p-SEQ-N) or a liquidation id."""
    for prefix in ("fl-", "adl-", "p-"):
        if identifier.startswith(prefix):
            parts = identifier[len(prefix):].split("-")
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                return int(parts[0]), None
    return None, identifier


PENDING_LINES = 4096  # journal lines handed to the engine at once on the way to the target


def recorded_policy(journal_path: Path) -> AdlPolicy | None:
    """The ADL policy the summary.json beside a journal says its run applied (a what-if or demo run writes its
    journal.jsonl there); None without such a summary or where it names none (an older backstop's: the default);
    an adl_policy that is not one is refused."""
    summary_path = journal_path.parent / "summary.json"
    if not os.path.lexists(summary_path):
        return None
    try:  # a directory or a pipe in its place is refused, as every reader of a run's outputs refuses it
        data = file_bytes(summary_path)
    except OutputReadError as error:
        raise ExplainError(str(error)) from None
    try:
        document = orjson.loads(data).get("adl_policy")
        return None if document is None else adl_policy.from_document(document)
    except (OSError, orjson.JSONDecodeError, AttributeError, ArithmeticError, KeyError, TypeError,
            ValueError) as error:
        raise ExplainError(f"{summary_path}: adl_policy is not a policy ({error})") from None


def explain(identifier: str, journal_path: Path, policy: AdlPolicy | None = None) -> dict[str, Any]:
    """Replay the journal through the batch API of the reference engine (backstop.engines, as replay and audit do;
    the reference, because the state before the event is read from its objects) up to the event, under the ADL
    policy the outputs were made under, read the state before it, then apply the event alone and take its outputs
    from the lines the engine wrote."""
    policy = policy or AdlPolicy()
    try:
        lines = read_journal(journal_path)
    except JournalFileError as error:
        raise ExplainError(str(error)) from None
    seq, liquidation_id = _target_seq(identifier)
    ledger_engine = ReferenceEngine(EngineOptions(adl_policy=policy))
    refused: str | None = None  # why the liquidation was not applied, when it was in the journal but refused
    for number, raw, record in _candidates(ledger_engine, lines, seq, liquidation_id):
        before, lots = _before(ledger_engine.engine, record), _lots(ledger_engine.engine)
        applied = ledger_engine.events_applied
        result = ledger_engine.apply_lines(raw + b"\n", number)
        if ledger_engine.events_applied == applied:  # a duplicate or a rejection: the event is further on, if at all
            if result.dead_letters:
                refused = orjson.loads(result.dead_letters)["reason"]
            continue
        explanation = {"id": identifier, "seq": applied + 1, "event": orjson.loads(raw),
                       "adl_policy": adl_policy.document(policy), **before, **_outputs(result)}
        taken = {event["liquidation_id"] for event in explanation["adl_events"]}
        if taken:  # lots of earlier liquidations the event deleveraged (its own lot: the bankruptcy above)
            explanation["lots_deleveraged"] = [lot for lot in lots if lot["liquidation_id"] in taken]
        if seq is not None:
            wanted = [e for e in explanation["fund_ledger"] + explanation["adl_events"] + explanation["postings"]
                      if e["id"] == identifier]
            if not wanted:
                raise ExplainError(f"{identifier}: event {seq} produced no output with that id")
            explanation["subject"] = wanted[0]
        explanation.update(_walk(explanation))
        return explanation
    if liquidation_id is not None and refused is not None:
        raise ExplainError(f"{identifier}: the journal event was not applied: {refused}")
    raise ExplainError(f"{identifier}: no such fund-ledger entry, ADL event, posting or liquidation in "
                       f"{journal_path}")


def _candidates(ledger_engine: ReferenceEngine, lines: list[tuple[int, bytes]], seq: int | None,
                liquidation_id: str | None) -> Iterator[tuple[int, bytes, Event]]:
    """The lines that may be the event, each with its record, the engine holding what every line before it applied.
    The other lines go through the engine in batches: a line applies at most one event, so a batch that cannot
    reach seq - 1 stops short of the event, and a line without the liquidation's id is not it."""
    if seq is not None and seq < 1:
        return  # no event has that seq
    pending: list[tuple[int, bytes]] = []
    wanted = None if liquidation_id is None else liquidation_id.encode()

    def flush() -> None:
        if pending:
            ledger_engine.apply_lines(b"".join(raw + b"\n" for _, raw in pending), pending[0][0])
            pending.clear()

    for number, raw in lines:
        if seq is not None:
            if ledger_engine.events_applied + len(pending) >= seq - 1:
                flush()
            may_be = ledger_engine.events_applied == seq - 1
        else:  # the id as written, or a line with an escape, which may spell it otherwise
            may_be = wanted is not None and (wanted in raw or b"\\" in raw)
        record = _decoded(raw) if may_be else None
        if record is not None and (seq is not None or (
                isinstance(record, LiquidationEvent) and record.liquidation_id == liquidation_id)):
            flush()
            yield number, raw, record
            continue
        pending.append((number, raw))
        if len(pending) >= PENDING_LINES:
            flush()


def _decoded(raw: bytes) -> Event | None:
    try:
        return decode_record(raw)
    except InvalidRecord:
        return None  # the engine dead-letters it: it changes nothing


# The output files' records, their fields in the order the records declare them (the explanation's key order).
_OUTPUTS = (("fund_ledger", FundLedgerEntry), ("adl_events", AdlEvent), ("findings", Finding), ("postings", Posting))


def _outputs(result: BatchResult) -> dict[str, list[dict[str, Any]]]:
    """The event's outputs, read from the lines the engine wrote."""
    found: dict[str, list[dict[str, Any]]] = {}
    for name, record in _OUTPUTS:
        order = [field.name for field in fields(record)]
        found[name] = [{key: document[key] for key in order}
                       for document in map(orjson.loads, getattr(result, name).splitlines())]
    return found


CAUSES = ("liquidation_id", "adl_event_id", "fund_entry_id", "transfer_id", "fill_id")


def _walk(explanation: dict[str, Any]) -> dict[str, Any]:
    """Forward: the postings a fund entry or an ADL event caused. Backward: what caused a posting, as the records
    of the same event (its fund entry, its ADL event) and the input ids it names."""
    subject = explanation.get("subject")
    if subject is None:
        return {}
    if subject["id"].startswith("p-"):
        records = {r["id"]: r for r in explanation["fund_ledger"] + explanation["adl_events"]}
        causes = {key: subject[key] for key in CAUSES if subject.get(key) is not None}
        caused_by = {key: records[value] for key, value in causes.items() if value in records}
        return {"causes": causes, "caused_by": caused_by}
    key = "fund_entry_id" if subject["id"].startswith("fl-") else "adl_event_id"
    return {"subject_postings": [p for p in explanation["postings"] if p.get(key) == subject["id"]]}


def _lots(engine: Engine) -> list[dict[str, Any]]:
    """Every fund's inventory: the lots an ADL round can deleverage, each with the liquidation it came from."""
    return [{"liquidation_id": lot.liquidation_id, "seq": lot.seq, "liquidated_account": lot.liquidated_account,
             "fund_id": fund_id, "symbol": symbol, "side": lot.side, "qty": text(lot.qty),
             "bankruptcy_price": text(lot.bankruptcy_price(engine.instruments[symbol].valuation))}
            for fund_id, fund_state in sorted(engine.funds.items())
            for symbol, lots in sorted(fund_state.lots.items()) for lot in lots]


def _before(engine: Engine, record: Event) -> dict[str, Any]:
    """What the engine knew right before the event, as far as the event's rules use it."""
    if isinstance(record, LiquidationEvent):
        return {"kind": "liquidation", **_liquidation_inputs(engine, record)}
    if isinstance(record, MarkEvent) and record.symbol in engine.instruments:
        # a mark can trip the fund's inventory check: the queues its deleverages would walk, at the new mark
        engine = copy.deepcopy(engine)
        engine.marks[record.symbol] = record.mark_price
        inventory_fund = engine.funds[engine.instruments[record.symbol].fund_id]
        with localcontext(CONTEXT):
            balance = engine.ledger.balance(ledger.fund(inventory_fund.spec.fund_id))
            inventory = {"fund_id": inventory_fund.spec.fund_id, "net_qty": text(inventory_fund.net_qty(record.symbol)),
                         "notional": text(money(engine.inventory_notional(inventory_fund))),
                         "max_inventory_ratio": text(inventory_fund.spec.max_inventory_ratio), "balance": text(balance),
                         "floor": text(engine.adl_policy.floor),
                         "limit": text(money(inventory_fund.spec.max_inventory_ratio
                                             * max(balance - engine.adl_policy.floor, Decimal(0))))}
        return {"kind": "mark", "inventory_check": inventory,
                "adl_queue_top10": [*_ranked(engine, record.symbol, "long"), *_ranked(engine, record.symbol, "short")]}
    if isinstance(record, FillEvent) and is_fund_account(record.account_id):
        fund_state = engine.funds.get(fund_id_of(record.account_id))
        spec = engine.instruments.get(record.symbol)
        valuation = spec.valuation if spec else LINEAR
        lots = [{"liquidation_id": lot.liquidation_id, "side": lot.side, "qty": text(lot.qty),
                 "bankruptcy_price": text(lot.bankruptcy_price(valuation))}
                for lot in (fund_state.lots.get(record.symbol, ()) if fund_state else ())]
        gain = ("gain = cost share - qty x size / price for a long lot (coin-margined)" if valuation.inverse
                else "gain = qty x (price - BP) for a long lot")
        return {"kind": "fund fill", "lots_before": lots,
                "rule": f"the fill realizes the fund's lots of the closing side FIFO; {gain}, reversed for a short; "
                        "the fee is paid by the fund"}
    if isinstance(record, FundingEvent):
        instrument = engine.instruments.get(record.symbol)
        net = engine.funds[instrument.fund_id].net_qty(record.symbol) if instrument else Decimal(0)
        if instrument is not None and instrument.valuation.inverse:
            return {"kind": "funding", "fund_net_qty": text(net),
                    "rule": "each position pays qty x contract_size / mark x rate in the coin (longs pay when the "
                            "rate is positive); the fund pays on its net inventory: " + f"{text(net)} x "
                            f"{text(instrument.valuation.face(Decimal(1)))} / {text(record.mark_price)} x "
                            f"{text(record.rate)}"}
        return {"kind": "funding", "fund_net_qty": text(net),
                "rule": "each position pays qty x mark x rate (longs pay when the rate is positive); the fund "
                        "pays on its net inventory: " + f"{text(net)} x {text(record.mark_price)} x "
                        f"{text(record.rate)}"}
    if isinstance(record, TransferEvent):
        return {"kind": "transfer", "rule": "a top-up (+) or draw (-) of the fund from outside the venue"}
    return {"kind": record.type}


def _liquidation_inputs(engine: Engine, record: LiquidationEvent) -> dict[str, Any]:
    engine = copy.deepcopy(engine)  # look ahead at the event's mark without touching the replay
    engine.marks[record.symbol] = record.mark_price
    position = engine.positions.get(record.account_id, record.symbol, record.position_side)
    if position is None:
        return {"position": None}
    with localcontext(CONTEXT):
        view = engine.margin_view(position)
        instrument = engine.instruments[record.symbol]
        valuation = instrument.valuation
        account: dict[str, Any] = {
            "wallet": text(engine.ledger.balance(ledger.wallet(record.account_id, instrument.settle_asset))),
            "positions": {
                p.label: {"qty": text(p.qty),
                          "entry_price": text(p.entry_price(engine.instruments[p.symbol].valuation)),
                          "margin_mode": p.margin_mode, "mark_price": text(engine.marks[p.symbol]),
                          "unrealized_pnl": text(money(p.unrealized_pnl(engine.marks[p.symbol],
                                                                        engine.instruments[p.symbol].valuation)))}
                for p in engine.positions.of(record.account_id)},
        }
        share_part = equity_behind(view.equity_share, record.qty, position.size)  # as the engine takes it over
        bp = engine.bankruptcy_price(position)
        if position.margin_mode == "isolated":
            margin = engine.ledger.balance(ledger.isolated(record.account_id, record.symbol, record.position_side))
            sign = "-" if valuation.value_long(position.qty > 0) else "+"
            if valuation.inverse:
                rule = (f"isolated, inverse: BP = |qty| x contract_size / (cost {sign} margin) = "
                        f"{text(valuation.face(position.size))} / ({text(position.cost)} {sign} {text(margin)})")
            else:
                rule = (f"isolated: BP = entry {sign} margin / |qty| = {text(position.entry_price(valuation))} "
                        f"{sign} {text(margin)} / {text(position.size)}")
        else:
            rule = (f"cross: the account's TNC {text(money(view.margin_balance))} is shared by maintenance margin; "
                    f"this position's share = TNC x MM {text(money(view.position_maintenance))} / TMM "
                    f"{text(money(view.maintenance_margin))} = {text(money(view.equity_share))}; "
                    + (f"BP = |qty| x contract_size / (qty x contract_size / mark "
                       f"{'-' if valuation.value_long(position.qty > 0) else '+'} share)" if valuation.inverse else
                       f"BP = mark {'-' if position.qty > 0 else '+'} share / qty"))
        ranked = _ranked(engine, record.symbol, "short" if position.qty > 0 else "long")
    return {
        "account_before": account,
        "margin_view": {"margin_balance": text(money(view.margin_balance)),
                        "maintenance_margin": text(money(view.maintenance_margin)),
                        "liquidatable": view.liquidatable},
        "bankruptcy": {"rule": rule, "bankruptcy_price": text(bp),
                       "equity_share_behind_qty": text(share_part), "venue_bankruptcy_price":
                           text(record.bankruptcy_price) if record.bankruptcy_price is not None else None},
        "adl_queue_top10": ranked,
        "fund_balance_before": text(engine.ledger.balance(ledger.fund(instrument.fund_id))),
    }


def _ranked(engine: Engine, symbol: str, side: Literal["long", "short"]) -> list[dict[str, Any]]:
    """The first ten of one side's ADL queue, with each one's score inputs."""
    with localcontext(CONTEXT):
        valuation = engine.instruments[symbol].valuation
        queue = engine.adl_queue(symbol, side)
        return [{"rank": i, "account_id": r.position.account_id, "side": side,
                 "position": r.position.label,  # a hedge side
                 "qty": text(r.position.qty),
                 "entry_price": text(r.position.entry_price(valuation)),
                 "bankruptcy_price": text(r.bankruptcy_price),
                 "pnl_ratio": text(r.pnl_ratio),
                 "leverage": text(leverage) if (leverage := r.leverage) is not None else "past its BP",
                 "score": text(r.score), "quantile": adl.quantile(i, len(queue))}
                for i, r in enumerate(queue[:10], start=1)]


# How a deleverage's price is set, per the policy's price rule (docs/design.md §11.3)
PRICE_RULES = {"bankruptcy": "at the lot's bankruptcy price", "mark": "at the mark",
               "floor": "at the mark when the fund's balance above its floor covers the lot's deficit, else at the "
                        "lot's bankruptcy price"}


def render_text(explanation: dict[str, Any]) -> str:
    lines = [f"{explanation['id']}: journal seq {explanation['seq']}, a {explanation['kind']} event",
             f"  event: {orjson.dumps(explanation['event']).decode()}"]
    if explanation["adl_policy"] != adl_policy.document(AdlPolicy()):
        lines.append(f"  under the ADL policy {orjson.dumps(explanation['adl_policy']).decode()}")
    if "subject" in explanation:
        lines.append(f"  subject: {orjson.dumps(explanation['subject']).decode()}")
    if explanation.get("kind") == "liquidation" and explanation.get("account_before"):
        account = explanation["account_before"]
        lines.append(f"  account before: wallet {account['wallet']}")
        for symbol, p in account["positions"].items():
            lines.append(f"    {symbol}: {p['qty']} @ {p['entry_price']} ({p['margin_mode']}), mark {p['mark_price']}, "
                         f"uPnL {p['unrealized_pnl']}")
        view = explanation["margin_view"]
        lines.append(f"  margin at the liquidation mark: balance {view['margin_balance']}, maintenance "
                     f"{view['maintenance_margin']}: {'liquidatable' if view['liquidatable'] else 'NOT liquidatable'}")
        bankruptcy = explanation["bankruptcy"]
        lines.append(f"  bankruptcy price {bankruptcy['bankruptcy_price']} ({bankruptcy['rule']}); equity behind the "
                     f"liquidated qty {bankruptcy['equity_share_behind_qty']}, rounded up for the lot"
                     + (f"; the venue said {bankruptcy['venue_bankruptcy_price']}"
                        if bankruptcy["venue_bankruptcy_price"] else ""))
        lines.append(f"  fund balance before: {explanation['fund_balance_before']}")
    elif "rule" in explanation:
        lines.append(f"  rule: {explanation['rule']}")
    check, policy = explanation.get("inventory_check"), explanation["adl_policy"]
    # the fund's own trigger on a mark: not under socialized, nor under Bybit's drawdown trigger (design §11)
    if check is not None and check["net_qty"] != "0" and policy["rule"] != "socialized" and "drawdown" not in policy:
        over = Decimal(check["notional"]) > Decimal(check["limit"])
        lines.append(f"  the fund's inventory at the new mark: fund {check['fund_id']} net {check['net_qty']}, "
                     f"notional {check['notional']} against max_inventory_ratio {check['max_inventory_ratio']} x "
                     f"(balance {check['balance']} - floor {check['floor']}) = {check['limit']}: "
                     + ("over, the excess deleveraged" if over else "within, kept"))
    for entry in explanation["fund_ledger"]:
        lines.append(f"  fund {entry['fund_id']}: {entry['kind']} {entry['amount']} -> balance "
                     f"{entry['balance_after']} ({entry['id']})")
    if explanation["adl_events"]:
        policy = explanation["adl_policy"]
        lines.append(f"  deleveraged ({PRICE_RULES[policy['price']]}"
                     + ("; a drawdown round at its reset proceeds" if "drawdown" in policy else "")
                     + (", in ADL-queue order):" if policy["rule"] in ("bitmex", "binance") else
                        f", shared by the {policy['rule']} rule, listed in ADL-queue order):"))
        for lot in explanation.get("lots_deleveraged", []):
            lines.append(f"    the fund's lot of {lot['liquidation_id']} (journal seq {lot['seq']}, "
                         f"{lot['liquidated_account']}): {lot['side']} {lot['qty']} {lot['symbol']}, bankruptcy "
                         f"price {lot['bankruptcy_price']}")
        queue = {(r["account_id"], r["side"]): r for r in explanation.get("adl_queue_top10", [])}
        for event in explanation["adl_events"]:
            inputs = queue.get((event["account_id"], event["side"]))
            # BitMEX's score is PnL% x leverage, or PnL% / leverage below 0 (§4); another rule's is neither
            joined = (", " if policy["rule"] != "bitmex" else " / " if inputs and inputs["pnl_ratio"].startswith("-")
                      else " x ")
            why = (f"; {inputs['position']}: PnL% {inputs['pnl_ratio']}{joined}leverage {inputs['leverage']} "
                   f"(entry {inputs['entry_price']}, own BP {inputs['bankruptcy_price']})") if inputs else ""
            lines.append(f"    rank {event['rank']} {event['account_id']}: {event['qty']} @ {event['price']}, score "
                         f"{event['score']}, quantile {event['quantile']}{why}")
    for finding in explanation["findings"]:
        details = ", ".join(f"{key} {value}" for key, value in finding["details"].items())
        lines.append(f"  finding {finding['kind']}: {details}")
    if "causes" in explanation:
        names = {"liquidation_id": "liquidation", "adl_event_id": "ADL event", "fund_entry_id": "fund entry",
                 "transfer_id": "transfer", "fill_id": "fill"}
        lines.append("  caused by: " + (", ".join(f"{names[k]} {v}" for k, v in explanation["causes"].items())
                                        or "the event alone"))
    if explanation["postings"]:
        lines.append("  postings of the event (debit -> credit):")
        for posting in explanation["postings"]:
            causes = ", ".join(posting[k] for k in CAUSES if posting.get(k) is not None)
            lines.append(f"    {posting['id']} {posting['kind']} {posting['amount']} {posting['asset']}: "
                         f"{posting['debit_account']} -> {posting['credit_account']}" + (f" ({causes})" if causes
                                                                                          else ""))
    return "\n".join(lines)
