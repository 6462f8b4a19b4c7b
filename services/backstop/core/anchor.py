"""Checkpoints that anchor the stored history outside the database: what the service signs with every batch, and
the checks `backstop audit verify --dsn --anchor-key-file` runs against them. Pure: no I/O.

The owner of the service's tables can switch the append-only triggers off, rewrite the journal and every record
derived from it, and recompute every hash chain, so that the stored history is consistent again. The owner cannot
sign: in the transaction of every batch that appends to the journal, the service signs (HMAC-SHA256, with a key the
database never sees) the journal digest (a chain over every journal row), the fund-ledger, ADL and postings heads
and counts as of the batch's last seq (the postings since migration 0009: a checkpoint signed before it has none,
and verifies as it was signed). Each signed value covers everything before it, so the last checkpoint vouches for the
whole history and the earlier ones say where a rewrite starts. docs/operations-security.md says what this cannot
catch.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backstop.core.hashing import GENESIS_HASH, canonical_json, combine

JOURNAL_GENESIS = GENESIS_HASH  # the journal digest before the first row
MIN_KEY_BYTES = 32
_MAC_DOMAIN = b"backstop checkpoint v1\n"  # a MAC made for a checkpoint is never valid for anything else
_KEY_ID_DOMAIN = b"backstop anchor key id v1\n"
_WHITESPACE = b" \t\r\n"


class AnchorKeyError(ValueError):
    """An anchor key or an adoption that cannot be used; the message is one line."""


def journal_step(digest: str, seq: int, source_topic: str, source_partition: int, source_offset: int,
                 payload_hash: str) -> str:
    """The journal digest after one more row: it covers the row's seq, its source (Kafka topics cannot contain
    ':', so the joined fields cannot be confused) and its payload's hash."""
    return combine(digest, str(seq), source_topic, str(source_partition), str(source_offset), payload_hash)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The history as of `seq`, as the service signs it."""

    seq: int
    prev_seq: int  # the checkpoint this one follows; 0 for the first one and for an adoption
    adopted_seq: int  # > 0: the history up to this seq was adopted (vouched for by an operator), not signed as written
    journal_digest: str
    head_hash: str  # combine(ledger_head, adl_head), the engine's head hash
    ledger_head: str
    ledger_entries: int
    adl_head: str
    adl_events: int
    # the postings chain (docs/design.md §10, "Postings"): its head and count; None in a checkpoint signed before
    # migration 0009, whose message has neither
    postings_head: str | None = None
    postings_count: int | None = None

    def message(self) -> bytes:
        fields: dict[str, Any] = {
            "seq": self.seq, "prev_seq": self.prev_seq, "adopted_seq": self.adopted_seq,
            "journal_digest": self.journal_digest, "head_hash": self.head_hash, "ledger_head": self.ledger_head,
            "ledger_entries": self.ledger_entries, "adl_head": self.adl_head, "adl_events": self.adl_events}
        if self.postings_head is not None or self.postings_count is not None:
            fields |= {"postings_head": self.postings_head, "postings_count": self.postings_count}
        return _MAC_DOMAIN + canonical_json(fields)


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    key_id: str
    mac: str


@dataclass(frozen=True, slots=True)
class AnchorKey:
    secret: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str) -> AnchorKey:
        """The key is the file's bytes without surrounding whitespace (`openssl rand -hex 32` makes a good one)."""
        secret = raw.strip(_WHITESPACE)
        if len(secret) < MIN_KEY_BYTES:
            raise AnchorKeyError(f"the anchor key in {source} has {len(secret)} bytes, fewer than {MIN_KEY_BYTES} "
                                 f"(make one with: openssl rand -hex 32 > {source})")
        return cls(secret)

    @property
    def key_id(self) -> str:
        """Names the key in each checkpoint, so that a verifier can say which key signed it (a hash of the key:
        the key itself never reaches the database)."""
        return hashlib.sha256(_KEY_ID_DOMAIN + self.secret).hexdigest()[:16]

    def sign(self, checkpoint: Checkpoint) -> SignedCheckpoint:
        mac = hmac.new(self.secret, checkpoint.message(), hashlib.sha256).hexdigest()
        return SignedCheckpoint(checkpoint, self.key_id, mac)

    def verifies(self, signed: SignedCheckpoint) -> bool:
        return signed.key_id == self.key_id and hmac.compare_digest(self.sign(signed.checkpoint).mac, signed.mac)


@dataclass(frozen=True, slots=True)
class Adoption:
    """An operator's word that the stored journal up to `seq`, with this digest, is the history: what lets the
    service sign a history that has no valid checkpoint at its head (written before anchoring, or under another
    key). `backstop audit verify --dsn` prints both numbers."""

    seq: int
    journal_digest: str

    @classmethod
    def parse(cls, text: str) -> Adoption:
        seq, _, digest = text.strip().partition(":")
        if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise AnchorKeyError(f"BACKSTOP_ANCHOR_ADOPT is {text!r}: it is <seq>:<journal digest> (64 hex digits), "
                                 f"as `backstop audit verify --dsn` prints them")
        return cls(int(seq), digest)


@dataclass(frozen=True, slots=True)
class Anchor:
    """What the service signs with, and the adoption it may use once."""

    key: AnchorKey
    adopt: Adoption | None = None


# ------------------------------------------------------------------------------------------------ verification

JournalRowText = tuple[int, str, int, int, bytes, str]  # seq, source topic, partition, offset, payload, payload_hash


def check_signatures(checkpoints: Sequence[SignedCheckpoint], keys: Sequence[AnchorKey]) -> str | None:
    """Every checkpoint signed by one of the keys, and each following the one before it (none removed)."""
    by_id = {key.key_id: key for key in keys}
    previous = 0
    for signed in checkpoints:
        checkpoint = signed.checkpoint
        key = by_id.get(signed.key_id)
        if key is None:
            return (f"checkpoint at seq {checkpoint.seq}: signed with key id {signed.key_id}, which no given anchor "
                    f"key has (given: {', '.join(sorted(by_id))})")
        if not key.verifies(signed):
            return f"checkpoint at seq {checkpoint.seq}: its signature does not verify: the checkpoint was altered"
        if checkpoint.prev_seq != previous and not checkpoint.adopted_seq:
            return (f"checkpoint at seq {checkpoint.seq}: it follows the checkpoint at seq {checkpoint.prev_seq}, but "
                    f"the one before it is at seq {previous}: checkpoints were removed")
        if checkpoint.head_hash != combine(checkpoint.ledger_head, checkpoint.adl_head):
            return f"checkpoint at seq {checkpoint.seq}: its head hash is not that of its ledger and ADL heads"
        previous = checkpoint.seq
    return None


def _rewritten(what: str, seq: int, matched: int) -> str:
    """Where a rewrite starts, as far as the checkpoints tell: after the last one that matches."""
    if matched + 1 == seq:
        return f"{what} rewritten at seq {seq}"
    return f"{what} rewritten between seq {matched + 1} and seq {seq}"


def check_journal(rows: Iterable[JournalRowText], checkpoints: Sequence[SignedCheckpoint]
                  ) -> tuple[str | None, int, str]:
    """The stored journal: seqs without gaps, each payload hash that of its payload, and the journal digest at every
    checkpoint the one signed there. Returns (the first problem, the last seq, the digest there)."""
    digest, last, matched = JOURNAL_GENESIS, 0, 0
    pending = iter(checkpoints)
    due = next(pending, None)
    for seq, topic, partition, offset, payload, payload_hash in rows:
        if seq != last + 1:
            return f"journal: seq {seq} follows seq {last}: journal rows were removed", last, digest
        if hashlib.sha256(payload).hexdigest() != payload_hash:
            return f"journal seq {seq}: its payload_hash is not the hash of its payload", last, digest
        digest, last = journal_step(digest, seq, topic, partition, offset, payload_hash), seq
        if due is not None and due.checkpoint.seq == seq:
            if due.checkpoint.journal_digest != digest:
                since = f" (the checkpoint at seq {matched} matches)" if matched else ""
                return (f"{_rewritten('journal', seq, matched)}: the stored rows do not give the journal digest "
                        f"signed in the checkpoint at seq {seq}{since}"), last, digest
            matched = seq
            due = next(pending, None)
    if due is not None:
        return (f"checkpoint at seq {due.checkpoint.seq}: the journal ends at seq {last}: journal rows were "
                f"removed"), last, digest
    return None, last, digest


def _heads(records: Sequence[dict[str, Any]], seq: int, start: int) -> tuple[int, str]:
    """(how many records have a seq up to `seq`, the hash of the last of them), walking on from `start`."""
    index = start
    while index < len(records) and records[index]["seq"] <= seq:
        index += 1
    return index, records[index - 1]["hash"] if index else GENESIS_HASH


def check_heads(checkpoints: Sequence[SignedCheckpoint], ledger: Sequence[dict[str, Any]],
                adl_events: Sequence[dict[str, Any]], postings: Sequence[dict[str, Any]] = ()) -> str | None:
    """The stored fund ledger, ADL events and postings (each in chain order) give, at every checkpoint, the heads and
    counts signed there (the postings' at the checkpoints that sign them: those signed since migration 0009)."""
    ledger_at = adl_at = postings_at = matched = 0
    for signed in checkpoints:
        checkpoint = signed.checkpoint
        ledger_at, ledger_head = _heads(ledger, checkpoint.seq, ledger_at)
        adl_at, adl_head = _heads(adl_events, checkpoint.seq, adl_at)
        postings_at, postings_head = _heads(postings, checkpoint.seq, postings_at)
        streams: list[tuple[str, int, str, int | None, str | None]] = [
            ("fund ledger", ledger_at, ledger_head, checkpoint.ledger_entries, checkpoint.ledger_head),
            ("ADL events", adl_at, adl_head, checkpoint.adl_events, checkpoint.adl_head)]
        if checkpoint.postings_head is not None:
            streams.append(("postings", postings_at, postings_head, checkpoint.postings_count,
                            checkpoint.postings_head))
        for stream, count, head, signed_count, signed_head in streams:
            if (count, head) != (signed_count, signed_head):
                return (f"{_rewritten(stream, checkpoint.seq, matched)}: up to seq {checkpoint.seq} the stored "
                        f"records are {count} with head {head[:16]}, the checkpoint signed {signed_count} with head "
                        f"{(signed_head or '')[:16]}")
        matched = checkpoint.seq
    return None
