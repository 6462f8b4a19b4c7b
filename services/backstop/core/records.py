"""Output records of wire contract version 1: frozen, slotted, built only by the engine.

Their JSON Schemas are generated from these classes (backstop.wire.schemas); there is no second copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

# The one place for versions. CONTRACT_VERSION: the wire contract (input records, JSON Schemas, AsyncAPI; version 2
# added hedge mode). SCHEMA_VERSION: the `schema_version` every output record carries (ledger entries, ADL events,
# findings, rounds, dead letters, journal records); still 1, as version-2 inputs added no output field that changes
# a version-1 record, so version-1 journals keep their hashes.
CONTRACT_VERSION = 2
SCHEMA_VERSION = 1

FundEntryKind = Literal["transfer", "liquidation_gain", "liquidation_loss", "fee", "funding", "socialized_loss"]
FindingKind = Literal["not_liquidatable", "bp_mismatch", "bp_clamped", "negative_wallet", "bad_debt", "adl_shortfall",
                      "mark_mismatch"]


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
    counter_account: str
    prev_hash: str
    hash: str


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
