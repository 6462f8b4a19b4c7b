"""Audit checks over output records as dicts (from files, PostgreSQL or Kafka): pure, no I/O.

Each check returns the first problem it finds, or None: a broken hash chain, a balance that does not follow from
the amounts, or a record that differs from what a fresh replay of the journal derives.
"""

from __future__ import annotations

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


def compare_streams(stream: str, stored: Sequence[dict[str, Any]], derived: Sequence[dict[str, Any]]) -> Problem | None:
    """The stored records equal, one by one, the records a fresh replay derives."""
    for index, (have, want) in enumerate(zip(stored, derived, strict=False)):
        if have != want:
            fields = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
            detail = "; ".join(f"{k}: stored {have.get(k)!r}, replay gives {want.get(k)!r}" for k in fields)
            return Problem(stream, index, have.get("id"), f"differs from the replay: {detail}", have.get("seq"))
    if len(stored) != len(derived):
        index = min(len(stored), len(derived))
        missing = "replay derives more records: the stored stream lacks" if len(stored) < len(derived) else \
            "stored stream has records the replay does not derive, from"
        record = derived[index] if len(stored) < len(derived) else stored[index]
        return Problem(stream, index, record.get("id"), f"{missing} this one", record.get("seq"))
    return None
