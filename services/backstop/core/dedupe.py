"""Duplicates (docs/design.md §4, Admission): what "the same record again" means, decided from fixed-size digests.

- Fills, transfers, liquidations and fundings have an identity (a fill's `fill_id`, …, a funding's symbol and ts).
  Once a record is applied its identity is held forever, by its seq and the digest of its content. A later record
  with a held identity is a duplicate when its content is the same, a `conflicting_duplicate` (rejected, naming the
  seq that holds it) when it is not. Nothing with one identity is ever applied twice.
- Marks, funds and instruments have a subject (the symbol, the fund): a record with the same content as the last
  one applied for its subject is a duplicate. Memory: one digest per subject. An older mark is not remembered; the
  mark in force makes it stale (backstop.core.ordering).

Only applied records are held, so a rejected record can be sent again corrected.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import MISSING, fields
from typing import Any, NamedTuple, Protocol, cast

import orjson

from backstop.core.errors import AlreadyApplied, Rejected
from backstop.core.events import (
    EVENT_TYPES,
    Event,
    Execution,
    FillEvent,
    FundEvent,
    FundingEvent,
    InstrumentEvent,
    LiquidationEvent,
    MarkEvent,
    StatedTier,
    TransferEvent,
)
from backstop.core.numbers import text

KEY_BYTES = 16  # an identity's digest: a collision among 10^8 identities has a chance of about 10^-23
CONTENT_BYTES = 8  # a content's digest: another content passes for the same one with a chance of 2^-64
GENESIS = bytes(32)
_CHAIN_LINK = struct.Struct(">32s16s8sQ").pack  # the previous head, K, C, the seq as 8 bytes big-endian
HELD_ROW = struct.Struct(">16s8sQ")  # K, C, the seq: how the batch API passes held identities (32 bytes each)
HeldRow = tuple[bytes, bytes, int]  # (key digest, content digest, seq): a row of the service's applied_ids


class Held(NamedTuple):
    """Who holds an identity: the seq of the record applied with it, and that record's content digest."""

    content: bytes
    seq: int


class HeldIds(Protocol):
    """Held identities by key digest. backstop.core.idstore.IdStore keeps them all in memory (replay); the service
    keeps them in PostgreSQL behind a filter (backstop.pipeline.held_ids)."""

    def held(self, key: bytes) -> Held | None: ...

    def add(self, key: bytes, content: bytes, seq: int) -> None: ...

    def __len__(self) -> int: ...


def pack_rows(rows: Iterable[HeldRow]) -> bytes:
    """Held identities as the batch API passes them: HELD_ROW after HELD_ROW."""
    pack = HELD_ROW.pack
    return b"".join(pack(*row) for row in rows)


def split_keys(keys: bytes) -> list[bytes]:
    """Concatenated key digests, one by one."""
    return [keys[at:at + KEY_BYTES] for at in range(0, len(keys), KEY_BYTES)]


def unpack_rows(data: bytes) -> list[HeldRow]:
    if len(data) % HELD_ROW.size:
        raise ValueError(f"held identities of {len(data)} bytes: not a whole number of {HELD_ROW.size}-byte rows")
    return list(HELD_ROW.iter_unpack(data))


class BatchIds:
    """Implements HeldIds for an engine whose identities are held elsewhere (the service: PostgreSQL). With each
    batch the caller gives the held identities among the batch's records (`begin`); every other identity is not
    held. The batch's own identities are held for the rest of the batch."""

    __slots__ = ("_count", "_held")

    def __init__(self) -> None:
        self._held: dict[bytes, Held] = {}
        self._count = 0

    def begin(self, rows: Iterable[HeldRow]) -> None:
        self._held = {key: Held(content, seq) for key, content, seq in rows}

    def held(self, key: bytes) -> Held | None:
        return self._held.get(key)

    def add(self, key: bytes, content: bytes, seq: int) -> None:
        self._held[key] = Held(content, seq)
        self._count += 1

    def __len__(self) -> int:
        return self._count  # held by this engine since it started (the rest are the caller's)


def identity(record: Event) -> str | None:
    """`kind:id` of a fill, transfer, liquidation or funding (`funding:SYMBOL:ts`); None for other types."""
    if isinstance(record, FillEvent):
        return f"fill:{record.fill_id}"
    if isinstance(record, TransferEvent):
        return f"transfer:{record.transfer_id}"
    if isinstance(record, LiquidationEvent):
        return f"liquidation:{record.liquidation_id}"
    if isinstance(record, FundingEvent):
        return f"funding:{record.symbol}:{record.ts}"
    return None


def identity_of_fields(kind: str, fields: dict[str, Any]) -> str | None:
    """identity() of a record not decoded yet (its JSON object), for looking identities up before a batch is applied;
    None when the fields are not there (the record will be dead-lettered). Equal to identity() of every record that
    decodes: the wire models take these fields as they are (strict strings and integers)."""
    name = _ID_FIELDS.get(kind)
    if name is None:
        return None
    if kind == "funding":
        symbol, ts = fields.get("symbol"), fields.get("ts")
        if isinstance(symbol, str) and type(ts) is int:
            return f"funding:{symbol}:{ts}"
        return None
    value = fields.get(name)
    return f"{kind}:{value}" if isinstance(value, str) else None


_ID_FIELDS = {"fill": "fill_id", "transfer": "transfer_id", "liquidation": "liquidation_id", "funding": "ts"}


def subject(record: Event) -> str:
    """`type:name` of a mark, fund or instrument: the last applied record per subject is remembered."""
    if isinstance(record, FundEvent):
        return f"fund:{record.fund_id}"
    return f"{record.type}:{cast(MarkEvent | InstrumentEvent, record).symbol}"


def describe(identity_text: str) -> str:
    """An identity as a reason names it: `fill id f-1`, `funding of BTCUSDT at ts 1760000000000`."""
    kind, _, rest = identity_text.partition(":")
    if kind == "funding":
        symbol, _, ts = rest.partition(":")
        return f"funding of {symbol} at ts {ts}"
    return f"{kind} id {rest}"


def key_digest(identity_text: str) -> bytes:
    return hashlib.sha256(identity_text.encode()).digest()[:KEY_BYTES]


# Per record type: its fields; its optional fields with their defaults (left out of the content when they hold the
# default, so that "absent" and "the default" are the same content, and a field added later with a default changes
# no digest); the fields that hold nested records.
_FIELDS = {kind: tuple(f.name for f in fields(event)) for kind, event in EVENT_TYPES.items()}
_OPTIONAL = {kind: tuple((f.name, f.default) for f in fields(event) if f.default is not MISSING)
             for kind, event in EVENT_TYPES.items()}
_NESTED = {kind: tuple(f.name for f in fields(event) if str(f.type).startswith("tuple["))
           for kind, event in EVENT_TYPES.items()}


def _plain(value: Any) -> Any:
    """A field's value in the content: nested records (tiers, executions) as objects of every field."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, StatedTier):
        return {"max_notional": value.max_notional, "mmr": value.mmr, "maint_amount": value.maint_amount}
    if isinstance(value, Execution):
        return {"qty": value.qty, "price": value.price}
    return value


def content_document(record: Event) -> dict[str, Any]:
    """The record as the engine sees it: every field with its value (type included), optional fields at their
    default left out, nested records as objects. Its canonical JSON (sorted keys, decimals in the §9.5 text, so that
    "1.0" and "1" are the same) is what "the same content" compares."""
    kind = record.type
    document: dict[str, Any] = {"type": kind}
    for name in _FIELDS[kind]:
        document[name] = getattr(record, name)
    for name, default in _OPTIONAL[kind]:
        if document[name] == default:
            del document[name]
    for name in _NESTED[kind]:
        if name in document:
            document[name] = _plain(document[name])
    return document


def content_digest(record: Event) -> bytes:
    """The first CONTENT_BYTES of the SHA-256 of content_document's canonical JSON (backstop.core.hashing's:
    sorted keys, decimals as §9.5 text; the only values orjson hands back here are decimals)."""
    document = orjson.dumps(content_document(record), default=text, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(document).digest()[:CONTENT_BYTES]


class Admission(NamedTuple):
    """What applying a record will hold: its identity's key digest (None for a subject) or its subject."""

    key: bytes | None
    subject: str | None
    content: bytes


class Dedupe:
    """What the engine applied, as far as duplicates go: every identity (in a HeldIds), a chain hash over them in
    seq order (in the state hash: two engines that hold different identities have different state hashes), and the
    content digest of the last record of each subject."""

    __slots__ = ("count", "head", "ids", "latest", "recording")

    def __init__(self, ids: HeldIds) -> None:
        self.ids = ids
        self.count = 0
        self.head = GENESIS
        self.latest: dict[str, bytes] = {}  # subject -> content digest
        self.recording: list[bytes] | None = None  # when a list: HELD_ROW of each identity held, as they are held

    def admit(self, record: Event, seq: int) -> Admission:
        """Raise AlreadyApplied or Rejected (conflicting_duplicate) for a record already held; else what applying it
        at `seq` will hold."""
        content = content_digest(record)
        identity_text = identity(record)
        if identity_text is None:
            subject_text = subject(record)
            if self.latest.get(subject_text) == content:
                raise AlreadyApplied(f"the same {subject_text} record as the last one applied")
            return Admission(None, subject_text, content)
        key = key_digest(identity_text)
        held = self.ids.held(key)
        # held by a later seq: the service re-applying journal rows whose identities PostgreSQL already holds
        if held is not None and held.seq < seq:
            if held.content == content:
                raise AlreadyApplied(f"{describe(identity_text)} applied at seq {held.seq}")
            raise Rejected(f"conflicting_duplicate: {describe(identity_text)} is held by seq {held.seq} with other "
                           f"content", "conflicting_duplicate")
        return Admission(key, None, content)

    def hold(self, admission: Admission, seq: int) -> None:
        """The record was applied at `seq`."""
        key = admission.key
        if key is None:
            self.latest[cast(str, admission.subject)] = admission.content
            return
        self.ids.add(key, admission.content, seq)
        if self.recording is not None:
            self.recording.append(HELD_ROW.pack(key, admission.content, seq))
        self.count += 1
        self.head = hashlib.sha256(_CHAIN_LINK(self.head, key, admission.content, seq)).digest()

    def document(self) -> dict[str, Any]:
        return {"ids": self.count, "ids_head": self.head.hex(),
                "latest": {name: digest.hex() for name, digest in sorted(self.latest.items())}}

    def restore(self, document: dict[str, Any]) -> None:
        self.count = int(document["ids"])
        self.head = bytes.fromhex(document["ids_head"])
        self.latest = {str(name): bytes.fromhex(digest) for name, digest in document["latest"].items()}
        if len(self.head) != len(GENESIS) or any(len(d) != CONTENT_BYTES for d in self.latest.values()):
            raise ValueError("malformed dedupe state in the snapshot")

