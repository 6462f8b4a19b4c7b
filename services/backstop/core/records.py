"""Output records of wire contract version 1, every one of them, and the versions: frozen, slotted, built by the
engine (ledger entries, postings, ADL events and quantiles, findings) or by the journal's writer around it (journal
records, dead letters).

Their JSON Schemas are generated from these classes (backstop.wire.schemas); there is no second copy.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from backstop.core.errors import RejectionKind

# The one place for versions. CONTRACT_VERSION: the wire contract (input records, JSON Schemas, AsyncAPI; version 2
# added hedge mode). SCHEMA_VERSION: the `schema_version` every output record carries (ledger entries, ADL events,
# findings, rounds, dead letters, journal records); still 1, as version-2 inputs added no output field that changes
# a version-1 record, so version-1 journals keep their hashes.
CONTRACT_VERSION = 2
SCHEMA_VERSION = 1

FundEntryKind = Literal["transfer", "liquidation_gain", "liquidation_loss", "fee", "funding", "socialized_loss"]
FindingKind = Literal["not_liquidatable", "bp_mismatch", "bp_clamped", "negative_wallet", "bad_debt", "adl_shortfall",
                      "mark_mismatch"]
PostingKind = Literal["transfer", "fee", "initial_margin", "margin_release", "realized_pnl", "takeover", "adl",
                      "funding", "liquidation_gain", "liquidation_loss", "surplus_refund", "socialized_loss"]
RiskLevel = Literal["low", "medium", "high"]


@dataclass(frozen=True, slots=True)
class FundLedgerEntry:
    """One transfer that touches an insurance fund, chained to the entry before it."""

    schema_version: int
    id: str
    seq: int
    ts: int
    fund_id: str
    kind: FundEntryKind
    amount: Decimal
    balance_after: Decimal
    liquidation_id: str | None
    transfer_id: str | None  # the transfer behind a `transfer` entry
    counter_account: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Posting:
    """One movement of the general ledger (docs/design.md §10, "Postings"): `amount` (> 0) leaves the debit account
    and enters the credit account, whose balances after it are given; chained like the fund ledger. The causing ids
    name the input behind it (transfer_id, fill_id), the liquidation its position or lot belongs to, the ADL event
    it is part of, and the fund-ledger entry that shows it (a posting to or from a fund)."""

    schema_version: int
    id: str
    seq: int
    ts: int
    kind: PostingKind
    debit_account: str
    credit_account: str
    asset: str
    amount: Decimal
    debit_balance_after: Decimal
    credit_balance_after: Decimal
    transfer_id: str | None
    fill_id: str | None
    liquidation_id: str | None
    adl_event_id: str | None
    fund_entry_id: str | None
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class AdlQuantileChange:
    """A position's ADL quantile as the engine ranks it at a quantile point (docs/design.md §10, "ADL quantiles"),
    published when it differs from the one published before for that account, symbol and side; null: the position
    is gone."""

    schema_version: int
    id: str
    seq: int
    ts: int
    kind: Literal["quantile"]
    account_id: str
    symbol: str
    side: Literal["long", "short"]
    quantile: int | None


@dataclass(frozen=True, slots=True)
class AdlRiskChange:
    """A symbol's ADL risk level at a quantile point, published when it differs from the one published before, with
    the figures it was decided on (money half-even to 1e-8; the comparison is exact)."""

    schema_version: int
    id: str
    seq: int
    ts: int
    kind: Literal["risk"]
    symbol: str
    fund_id: str
    risk_level: RiskLevel
    capacity: Decimal
    stressed_notional_long: Decimal
    stressed_notional_short: Decimal


AdlQuantileRecord = AdlQuantileChange | AdlRiskChange


@dataclass(frozen=True, slots=True)
class AdlEvent:
    """One counterparty reduced against a fund lot at the lot's bankruptcy price, chained like the ledger."""

    schema_version: int
    id: str
    seq: int
    ts: int
    symbol: str
    liquidation_id: str
    fund_id: str
    account_id: str
    side: Literal["long", "short"]
    qty: Decimal
    price: Decimal
    rank: int
    score: Decimal
    quantile: int
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Finding:
    """Something the log shows that looks wrong (an audit finding): recorded, never an error."""

    schema_version: int
    id: str
    seq: int
    ts: int
    kind: FindingKind
    account_id: str | None
    liquidation_id: str | None
    symbol: str | None
    details: dict[str, str]


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A record of the dead-letter topic: an input that was not applied, and why. `kind` and `after_seq` are None
    only when read back from a row written before they were recorded (migration 0005)."""

    schema_version: int
    id: str
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    raw: str  # the input as text (undecodable bytes replaced), at most 64 KiB
    kind: RejectionKind | None  # what an auditor filters by (backstop.core.errors.RejectionKind)
    after_seq: int | None  # the journal seq it was decided after: put back there, it replays to the same decision
    raw_base64: str | None  # the bytes `raw` holds, when they are not UTF-8 (else None: `raw` is them)
    raw_truncated: bool  # the input was longer than what `raw` holds


def kept_raw(raw: bytes, keep: int) -> tuple[str, str | None, bool]:
    """A dead letter's raw input, at most `keep` bytes of it: as text (a byte that is not UTF-8 as U+FFFD, for
    reading), the same bytes in base64 when they are not UTF-8 (so the exact input can be put back), and whether
    it was cut."""
    kept = raw[:keep]
    try:
        return kept.decode("utf-8"), None, len(raw) > keep
    except UnicodeDecodeError:
        return kept.decode("utf-8", errors="replace"), base64.b64encode(kept).decode("ascii"), len(raw) > keep


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """A record of the journal topic: one accepted input with the seq that orders it."""

    schema_version: int
    id: str
    seq: int
    ts: int
    source_topic: str
    source_partition: int
    source_offset: int
    payload_hash: str  # sha256 of the canonical JSON of `record`
    record: dict[str, Any]  # the input record as `backstop replay` reads it (with its "type")
