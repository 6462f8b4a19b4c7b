"""Statements: opening and closing balance over a period, every flow by kind and by symbol, and the check that
opening + flows = closing. Pure: fund-ledger entries (a fund's statement) or postings (any account of the general
ledger: a trader's wallet, an isolated margin, settlement, fees, external) as dicts, as written and published, in,
a statement out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

from backstop.core.numbers import CONTEXT, text


class StatementError(ValueError):
    """The entries do not add up (the ledger is broken: run `backstop audit verify`)."""


def symbol_of(entry: dict[str, Any]) -> str:
    """settlement:<symbol> and funding:<symbol> name the symbol a flow belongs to, as the other account or (in the
    statement of one of them) as the account itself; transfers and fees have none."""
    for name in (entry.get("counter_account"), entry.get("account")):
        kind, _, rest = str(name or "").partition(":")
        if kind in ("settlement", "funding"):
            return rest
    return "-"


OPEN_END = 2**53 + 1  # a period's end without --to (exclusive): past every event time the wire takes


@dataclass(slots=True)
class Statement:
    fund_id: str  # the fund, or the ledger account of an account statement
    period_from: int
    period_to: int
    opening_balance: Decimal = Decimal(0)
    closing_balance: Decimal = Decimal(0)
    by_kind: dict[str, Decimal] = field(default_factory=dict)
    by_symbol: dict[str, Decimal] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    names: str = "fund_id"  # what fund_id names: "fund_id", or "account" for an account statement

    def as_json(self) -> dict[str, Any]:
        with localcontext(CONTEXT):
            total = sum(self.by_kind.values(), Decimal(0))
        return {self.names: self.fund_id, "from_ts": self.period_from,
                "to_ts": None if self.period_to == OPEN_END else self.period_to,  # null: no end given
                "opening_balance": text(self.opening_balance), "closing_balance": text(self.closing_balance),
                "total_flows": text(total),
                "by_kind": {k: text(v) for k, v in sorted(self.by_kind.items())},
                "by_symbol": {k: text(v) for k, v in sorted(self.by_symbol.items())},
                "entries": self.entries}


def statement(entries: Iterable[dict[str, Any]], fund_id: str, *, period_from: int, period_to: int,
              opening: Decimal = Decimal(0)) -> Statement:
    """Entries with period_from <= ts < period_to; balances from the chain's balance_after, from `opening` (the
    balance before the first entry: 0 at the start of the ledger, or the snapshot's that a replay started from).
    Sums are exact (CONTEXT); an amount beyond what the engine can hold is a StatementError."""
    try:
        with localcontext(CONTEXT):
            return _statement(entries, fund_id, period_from=period_from, period_to=period_to, opening=opening)
    except ArithmeticError:
        raise StatementError("an amount or balance_after is not an exact decimal within the ledger's bounds") from None


def account_entries(postings: Iterable[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    """The postings that move `account`, each as an entry of its statement: the amount signed (+ into it, - out of
    it), its balance after, the other account and the causing ids."""
    entries = []
    for posting in postings:
        if account not in (posting["debit_account"], posting["credit_account"]):
            continue
        into = posting["credit_account"] == account
        amount = posting["amount"] if into else f"-{posting['amount']}"
        entries.append({
            "id": posting["id"], "seq": posting["seq"], "ts": posting["ts"], "account": account,
            "kind": posting["kind"], "amount": amount,
            "balance_after": posting["credit_balance_after" if into else "debit_balance_after"],
            "counter_account": posting["debit_account" if into else "credit_account"],
            **{key: posting.get(key) for key in CAUSES}, "hash": posting["hash"]})
    return entries


CAUSES = ("transfer_id", "fill_id", "liquidation_id", "adl_event_id", "fund_entry_id")


def account_statement(postings: Iterable[dict[str, Any]], account: str, *, period_from: int,
                      period_to: int, from_start: bool = True) -> Statement:
    """Any ledger account's statement from the postings: balances from 0 at the start of the ledger, or (postings
    after a snapshot, `from_start` false) from the balance before the account's first posting."""
    entries = [{**entry, "fund_id": account} for entry in account_entries(postings, account)]
    opening = Decimal(0)
    if entries and not from_start:
        with localcontext(CONTEXT):
            opening = Decimal(entries[0]["balance_after"]) - Decimal(entries[0]["amount"])
    result = statement(entries, account, period_from=period_from, period_to=period_to, opening=opening)
    result.entries = [{k: v for k, v in entry.items() if k != "fund_id"} for entry in result.entries]
    result.names = "account"
    return result


def _statement(entries: Iterable[dict[str, Any]], fund_id: str, *, period_from: int, period_to: int,
               opening: Decimal) -> Statement:
    """The chain is checked in ledger order; the period in event time. Times can go back (a late record is applied
    after records that carry a later ts), so the opening is `opening` plus every amount before period_from, and the
    closing the opening plus the period's flows: the balance as of each time, not a balance_after of the chain."""
    result = Statement(fund_id, period_from, period_to)
    result.opening_balance = balance = opening
    for entry in entries:
        if entry["fund_id"] != fund_id:
            continue
        amount, after = Decimal(entry["amount"]), Decimal(entry["balance_after"])
        if balance + amount != after:
            raise StatementError(f"{entry['id']}: balance_after {after} does not follow from {balance} + {amount}")
        if entry["ts"] < period_from:
            result.opening_balance += amount
        elif entry["ts"] < period_to:
            result.entries.append(entry)
            result.by_kind[entry["kind"]] = result.by_kind.get(entry["kind"], Decimal(0)) + amount
            symbol = symbol_of(entry)
            result.by_symbol[symbol] = result.by_symbol.get(symbol, Decimal(0)) + amount
        balance = after
    result.closing_balance = result.opening_balance + sum(result.by_kind.values(), Decimal(0))
    return result
