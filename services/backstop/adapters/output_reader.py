"""A replay output directory read back (by `audit verify`, `statement`, `reconcile`): every file checked for the
shape the tools rely on, so that a damaged file is named with its line and what is wrong, never half-read.

Records stay the dicts they were written as (their hashes cover exactly those bytes' fields); the models here only
check them.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from backstop.adapters.files import pretty_json
from backstop.wire.decode import describe, repeated_key

_PLAIN_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
_BALANCE = re.compile(r"-?(0|[1-9][0-9]{0,67})(\.[0-9]{1,8})?")
_AMOUNT = re.compile(r"-?(0|[1-9][0-9]{0,68})(\.[0-9]{1,8})?")  # a difference of two balances: below 2 x 10^68


def _plain_decimal(value: str) -> str:
    if not _PLAIN_DECIMAL.fullmatch(value):
        raise ValueError(f"not a plain decimal: {value[:40]!r}")
    return value


def _bounded(pattern: re.Pattern[str], bound: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"not an amount as backstop writes one (a plain decimal below {bound} at 1e-8): "
                             f"{value[:40]!r}{'...' if len(value) > 40 else ''}")
        return value

    return AfterValidator(check)


# Plain decimal text as backstop writes it (no exponent); the bounds are the writer's, not checked again here ...
DecimalText = Annotated[str, Field(strict=True), AfterValidator(_plain_decimal)]
# ... but for the ledger's balances and amounts, which the tools add up (docs/design.md §9.3: balances below 10^68
# at 1e-8, so an amount, the difference of two, below 2 x 10^68)
BalanceText = Annotated[str, Field(strict=True), _bounded(_BALANCE, "10^68")]
AmountText = Annotated[str, Field(strict=True), _bounded(_AMOUNT, "10^69")]
Count = Annotated[int, Field(strict=True, ge=0)]
Text = Annotated[str, Field(strict=True)]


class OutputReadError(Exception):
    """A file of the output directory is missing, unreadable or not in the shape backstop writes (exit 2)."""


class _Checked(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class FundLedgerRow(_Checked):
    id: Text
    seq: Count
    ts: Count
    fund_id: Text
    kind: Text
    amount: AmountText
    balance_after: BalanceText
    liquidation_id: Text | None
    counter_account: Text
    prev_hash: Text
    hash: Text


class AdlEventRow(_Checked):
    id: Text
    seq: Count
    ts: Count
    symbol: Text
    liquidation_id: Text
    fund_id: Text
    account_id: Text
    side: Text
    qty: DecimalText
    price: DecimalText
    rank: Count
    score: DecimalText
    quantile: Count
    prev_hash: Text
    hash: Text


class PostingRow(_Checked):
    id: Text
    seq: Count
    ts: Count
    kind: Text
    debit_account: Text
    credit_account: Text
    asset: Text
    amount: AmountText
    debit_balance_after: BalanceText
    credit_balance_after: BalanceText
    prev_hash: Text
    hash: Text


class FindingRow(_Checked):
    id: Text
    seq: Count
    kind: Text


class SeqRow(_Checked):
    """An ADL round or a quantile record: an id and the seq that made it."""
    id: Text
    seq: Count


class DeadLetterRow(_Checked):
    reason: Text
    raw: Text


class FundSummary(_Checked):
    balance: BalanceText
    settle_asset: Text
    bad_debt: BalanceText


class SnapshotStart(_Checked):
    """Where a replay from a snapshot took over: its files hold what came after (the fields an older backstop did
    not write may be absent, never of another type)."""

    seq: Annotated[int, Field(strict=True, ge=1)]  # a snapshot follows an applied event, on its line
    input_line: Annotated[int, Field(strict=True, ge=1)]
    ledger_head_hash: Text
    adl_head_hash: Text
    postings_head_hash: Text | None = None
    fund_ledger_entries: Count
    adl_events: Count
    findings: Count
    postings: Count | None = None
    adl_quantiles: Count | None = None
    wallets_at_zero: Count | None = None
    fund_balances: dict[str, BalanceText]


class CarriedCounts(_Checked):
    """What the service counted beside its journal (a replay --from-postgres or --from-kafka): these keys only."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    duplicates: Count
    rejected: Count
    conflicting_duplicates: Count
    dead_letters: Count


class Summary(_Checked):
    events_applied: Count
    duplicates: Count
    rejected: Count
    head_hash: Text
    ledger_head_hash: Text
    adl_head_hash: Text
    state_hash: Text
    fund_ledger_entries: Count
    adl_events: Count
    findings: Count
    dead_letters: Count | None = None  # absent from the summaries of backstop before it counted them
    postings: Count | None = None  # ... and before it wrote the general ledger (audit verify wants them all)
    postings_head_hash: Text | None = None
    last_seq: Count | None = None
    adl_quantiles: Count | None = None
    ledger_sum: DecimalText
    funds: dict[str, FundSummary]
    from_snapshot: SnapshotStart | None = None
    carried: CarriedCounts | None = None


STREAMS: dict[str, type[_Checked]] = {"fund-ledger.jsonl": FundLedgerRow, "adl-events.jsonl": AdlEventRow,
                                      "findings.jsonl": FindingRow, "dead-letter.jsonl": DeadLetterRow,
                                      "postings.jsonl": PostingRow, "adl-rounds.jsonl": SeqRow,
                                      "adl-quantiles.jsonl": SeqRow}


def file_bytes(path: Path) -> bytes:
    """A regular file's bytes. Anything else is refused, never read: a pipe would hang the reader (opened without
    blocking here), a device (/dev/zero behind a symlink) would fill its memory."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise OutputReadError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise OutputReadError(f"cannot read {path}: " + ("is a directory" if stat.S_ISDIR(mode)
                                                             else "not a regular file"))
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            return handle.read()
    except OSError as error:
        raise OutputReadError(f"cannot read {path}: {error.strerror or error}") from None
    finally:
        os.close(descriptor)


def read_object(path: Path) -> dict[str, Any]:
    """A JSON file the commands write (summary.json, accounts.json): one object, no key repeated in any of its
    objects (which of a repeated key's values counts would be each reader's choice)."""
    return parse_object(path, file_bytes(path))


def parse_object(path: Path, raw: bytes) -> dict[str, Any]:
    """read_object of bytes already read from `path`."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise OutputReadError(f"cannot read {path}: not JSON ({error})") from None
    if not isinstance(document, dict):
        raise OutputReadError(f"cannot read {path}: not a JSON object")
    if pretty_json(document) != raw and (key := repeated_key(raw, document)) is not None:
        raise OutputReadError(f"{path}: key {orjson.dumps(key).decode()} repeats in an object")
    return document


def read_summary(out: Path) -> dict[str, Any]:
    path = out / "summary.json"
    document = read_object(path)
    try:
        Summary.model_validate(document)
    except ValidationError as error:
        raise OutputReadError(f"{path}: {describe(error)}") from None
    return document


def read_stream(out: Path, name: str) -> list[dict[str, Any]]:
    """The records of one JSONL output file (named as in STREAMS), each checked; blank lines skipped."""
    path, model = out / name, STREAMS[name]
    records = []
    for number, line in enumerate(file_bytes(path).split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise OutputReadError(f"{path} line {number}: not JSON ({error})") from None
        if not isinstance(record, dict):
            raise OutputReadError(f"{path} line {number}: not a JSON object")
        if orjson.dumps(record) != line and (key := repeated_key(line, record)) is not None:
            raise OutputReadError(f"{path} line {number}: key {orjson.dumps(key).decode()} repeats in an object")
        try:
            model.model_validate(record)
        except ValidationError as error:
            raise OutputReadError(f"{path} line {number}: {describe(error)}") from None
        records.append(record)
    return records
