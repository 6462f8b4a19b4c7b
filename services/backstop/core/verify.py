"""Audit checks over output records as dicts (from files, PostgreSQL or Kafka): pure, no I/O.

Each check returns the first problem it finds, or None: a broken hash chain, a balance that does not follow from
the amounts, or a record that differs from what a fresh replay of the journal derives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

from backstop.core.hashing import GENESIS_HASH, chain_hash
from backstop.core.numbers import CONTEXT


@dataclass(frozen=True, slots=True)
class Problem:
    stream: str
    index: int  # 0-based position in the stream
    record_id: str | None
    what: str
    seq: int | None = None  # the journal seq of the record, where it has one

    def __str__(self) -> str:
        names = ", ".join(n for n in (self.record_id, None if self.seq is None else f"seq {self.seq}") if n)
        return f"{self.stream} record {self.index + 1}" + (f" ({names})" if names else "") + f": {self.what}"


def check_chain(stream: str, records: Iterable[dict[str, Any]], *, first_prev: str = GENESIS_HASH) -> Problem | None:
    """Every record's hash covers its body and the previous record's hash."""
    previous = first_prev
    for index, record in enumerate(records):
        record_id = record.get("id")
        if record.get("prev_hash") != previous:
            return Problem(stream, index, record_id, f"prev_hash {record.get('prev_hash')} does not continue the "
                                                     f"chain (expected {previous}): a record before it was removed, "
                                                     f"inserted or reordered", record.get("seq"))
        body = {k: v for k, v in record.items() if k != "hash"}
        expected = chain_hash(body)
        if record.get("hash") != expected:
            return Problem(stream, index, record_id, f"hash {record.get('hash')} does not match its contents "
                                                     f"(recomputed {expected}): the record was altered",
                           record.get("seq"))
        previous = expected
    return None


def check_fund_balances(entries: Iterable[dict[str, Any]], *, opening: dict[str, Decimal] | None = None
                        ) -> tuple[Problem | None, dict[str, Decimal]]:
    """balance_after of each entry = the previous balance of that fund (at first its `opening` balance, else 0)
    + amount, added exactly (CONTEXT, as the engine does); returns the final balances."""
    balances: dict[str, Decimal] = dict(opening or {})
    with localcontext(CONTEXT):
        for index, entry in enumerate(entries):
            fund_id = entry["fund_id"]
            try:
                expected = balances.get(fund_id, Decimal(0)) + Decimal(entry["amount"])
                after = Decimal(entry["balance_after"])
            except (ArithmeticError, TypeError, ValueError):  # not a decimal, or beyond what the engine can hold
                return Problem("fund-ledger", index, entry.get("id"), f"amount {entry.get('amount')!r} or "
                                                                      f"balance_after {entry.get('balance_after')!r} "
                                                                      f"is not an exact decimal",
                               entry.get("seq")), balances
            if after != expected:
                return Problem("fund-ledger", index, entry.get("id"), f"balance_after {entry['balance_after']} but "
                                                                      f"the amounts add up to {expected}",
                               entry.get("seq")), balances
            balances[fund_id] = expected
    return None, balances


def _shown(record: dict[str, Any], key: str) -> str:
    return json_text(record[key]) if key in record else "no such field"


def json_text(value: Any) -> str:
    """A value as its JSON (true, "text"), as the files hold it, cut at 200 characters for a message."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))[:200]


ABSENT = object()  # first_difference's value for a key an object lacks


def first_difference(have: Any, want: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """Where two JSON values first differ, in key order: (the dotted path, [i] for an item of a list, the two values
    there, ABSENT for a missing key), or None where they are the same JSON. Types count (1, 1.0 and true are three
    values, as their bytes are), not the order of an object's keys."""
    if type(have) is not type(want):
        return path, have, want
    if isinstance(have, dict):
        for key in sorted(have.keys() | want.keys()):
            where = f"{path}.{key}" if path else key
            if key not in have or key not in want:
                return where, have.get(key, ABSENT), want.get(key, ABSENT)
            if (found := first_difference(have[key], want[key], where)) is not None:
                return found
        return None
    if isinstance(have, list):
        for index, (one, other) in enumerate(zip(have, want, strict=False)):
            if (found := first_difference(one, other, f"{path}[{index}]")) is not None:
                return found
        return None if len(have) == len(want) else (f"{path} (length)", len(have), len(want))
    return None if have == want else (path, have, want)


def compare_streams(stream: str, stored: Sequence[dict[str, Any]], derived: Sequence[dict[str, Any]]) -> Problem | None:
    """The stored records equal, one by one, the records a fresh replay derives (as JSON: types count)."""
    for index, (have, want) in enumerate(zip(stored, derived, strict=False)):
        if first_difference(have, want) is not None:
            fields = sorted(k for k in have.keys() | want.keys()
                            if first_difference(have.get(k, ABSENT), want.get(k, ABSENT)) is not None)
            detail = "; ".join(f"{k}: stored {_shown(have, k)}, replay gives {_shown(want, k)}" for k in fields)
            return Problem(stream, index, have.get("id"), f"differs from the replay: {detail}", have.get("seq"))
    if len(stored) != len(derived):
        index = min(len(stored), len(derived))
        missing = "replay derives more records: the stored stream lacks" if len(stored) < len(derived) else \
            "stored stream has records the replay does not derive, from"
        record = derived[index] if len(stored) < len(derived) else stored[index]
        return Problem(stream, index, record.get("id"), f"{missing} this one", record.get("seq"))
    return None


def check_postings(postings: Iterable[dict[str, Any]], *, opening_known: bool = True
                   ) -> tuple[Problem | None, dict[str, Decimal], int]:
    """The general ledger's postings (postings.jsonl): each moves an amount > 0 between two different accounts;
    each account's balance after it is the one before (0 at the start of the ledger) less the amount for the debit
    account, plus it for the credit account; and the balances of all accounts change by a sum of 0 in each seq.
    After a snapshot (`opening_known` False) an account's balance before its first posting is taken from it.
    Returns the first problem, the balances after the last posting and the number of seqs checked."""
    balances: dict[str, Decimal] = {}
    seq: object = None
    opened: dict[str, Decimal] = {}  # account -> its balance before the current seq

    def seq_sum_problem(index: int, record_id: str | None) -> Problem | None:
        change = sum((balances[account] - before for account, before in opened.items()), Decimal(0))
        if change != 0:
            return Problem("postings", index, record_id, f"the balances of seq {seq} change by {change}, not 0", None
                           if not isinstance(seq, int) else seq)
        return None

    seqs = 0
    last_id: str | None = None
    index = -1
    with localcontext(CONTEXT):
        for index, posting in enumerate(postings):
            record_id, record_seq = posting.get("id"), posting.get("seq")
            if record_seq != seq:
                if seq is not None and (problem := seq_sum_problem(index - 1, last_id)):
                    return problem, balances, seqs
                seq, opened, seqs = record_seq, {}, seqs + 1
            try:
                amount = Decimal(posting["amount"])
                sides = ((posting["debit_account"], -amount, Decimal(posting["debit_balance_after"])),
                         (posting["credit_account"], amount, Decimal(posting["credit_balance_after"])))
            except (KeyError, ArithmeticError, TypeError, ValueError):
                return Problem("postings", index, record_id, "amount, accounts or balances missing or not exact "
                                                             "decimals", record_seq), balances, seqs
            if not amount > 0 or sides[0][0] == sides[1][0]:
                return Problem("postings", index, record_id, f"amount {posting['amount']} from {sides[0][0]} to "
                                                             f"{sides[1][0]}: a posting moves an amount > 0 between "
                                                             f"two accounts", record_seq), balances, seqs
            for account, change, after in sides:
                before = balances.get(account)
                if before is None:
                    before = Decimal(0) if opening_known else after - change
                opened.setdefault(account, before)
                if before + change != after:
                    return Problem("postings", index, record_id, f"{account} balance after {after} but its postings "
                                                                 f"add up to {before + change}", record_seq), \
                        balances, seqs
                balances[account] = after
            last_id = record_id
        if seq is not None and (problem := seq_sum_problem(index, last_id)):
            return problem, balances, seqs
    return None, balances, seqs


def check_entries_posted(entries: Sequence[dict[str, Any]], postings: Iterable[dict[str, Any]]) -> Problem | None:
    """Each fund-ledger entry is shown by exactly one posting (its `fund_entry_id`): the same kind, seq, ts and
    transfer, its liquidation where it names one, the entry's amount moved between the fund's account and the
    entry's counter account in the direction its sign says (into the fund when > 0), and the fund's balance after
    it; and a posting names no other entry. Two files, two chains: a rewrite of one that keeps its own chain whole
    still disagrees with the other."""
    shown: dict[str, tuple[int, dict[str, Any]]] = {}  # fund entry id -> (the posting's index, the posting)
    for index, posting in enumerate(postings):
        entry_id = posting.get("fund_entry_id")
        if entry_id is None:
            continue
        if entry_id in shown:
            return Problem("postings", index, posting.get("id"), f"a second posting of fund entry {entry_id}",
                           posting.get("seq"))
        shown[entry_id] = (index, posting)
    for index, entry in enumerate(entries):
        entry_id = str(entry.get("id"))
        if entry_id not in shown:
            return Problem("fund-ledger", index, entry.get("id"), "no posting of the general ledger shows this entry",
                           entry.get("seq"))
        posting = shown.pop(entry_id)[1]
        amount = str(entry.get("amount"))
        fund, counter = f"fund:{entry.get('fund_id')}", entry.get("counter_account")
        into = not amount.startswith("-")
        expected = {"kind": entry.get("kind"), "seq": entry.get("seq"), "ts": entry.get("ts"),
                    "transfer_id": entry.get("transfer_id"),
                    "amount": amount.removeprefix("-"),
                    "credit_account": fund if into else counter, "debit_account": counter if into else fund,
                    "credit_balance_after" if into else "debit_balance_after": entry.get("balance_after")}
        if entry.get("liquidation_id") is not None:  # a socialized loss's entry names none; its postings do
            expected["liquidation_id"] = entry["liquidation_id"]
        differing = [key for key, value in expected.items() if first_difference(posting.get(key, ABSENT), value)]
        if differing:
            detail = "; ".join(f"{key}: the entry says {json_text(expected[key])}, posting {posting.get('id')} "
                               f"{_shown(posting, key)}" for key in differing)
            return Problem("fund-ledger", index, entry.get("id"), f"differs from its posting: {detail}",
                           entry.get("seq"))
    if shown:
        entry_id, (index, posting) = min(shown.items(), key=lambda item: item[1][0])
        return Problem("postings", index, posting.get("id"), f"shows fund entry {entry_id}, which the fund ledger "
                                                             f"does not hold", posting.get("seq"))
    return None
