"""The service's held identities (docs/design.md §4, Admission): PostgreSQL holds every one (table applied_ids, whose
primary key refuses an identity twice); memory holds a Bloom filter over them (2 to 4 bytes each) and the identities
applied since the last commit. Before a batch is applied, its identities that neither rules out are looked up in one
query (`resolve`), so the engine asks only questions this object can answer exactly, and decides what `backstop
replay` decides. Pure: the caller does the lookups.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from backstop.core.dedupe import KEY_BYTES, Held, HeldRow, pack_rows, unpack_rows
from backstop.core.errors import InvariantViolation
from backstop.core.idstore import BloomFilter, split_many

FIRST_SEGMENT = 1 << 20  # identities in the first filter segment; each next one is twice as large
RECENT_KEEP = 1 << 17  # recent identities kept before those already committed are dropped


class ServiceIds:
    """Implements backstop.core.dedupe.HeldIds for the service."""

    __slots__ = ("_count", "_recent", "_resolved", "_segments", "_unsaved")

    def __init__(self, expected: int = 0) -> None:
        self._segments = [BloomFilter(max(FIRST_SEGMENT, expected + expected // 4))]
        self._recent: dict[bytes, Held] = {}  # applied by this process; dropped once committed
        self._resolved: dict[bytes, Held | None] = {}  # looked up for the batch being applied
        self._unsaved: list[HeldRow] = []  # applied since the last drain: rows for applied_ids
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def load(self, keys: bytes) -> None:
        """Concatenated key digests held in PostgreSQL (at start)."""
        if keys:
            self._filter(keys)
            self._count += len(keys) // KEY_BYTES

    def held(self, key: bytes) -> Held | None:
        held = self._recent.get(key)
        if held is not None:
            return held
        if key in self._resolved:
            return self._resolved[key]
        if any(segment.might(key) for segment in self._segments):
            raise InvariantViolation(f"identity digest {key.hex()} was not looked up before its batch was applied")
        return None

    def add(self, key: bytes, content: bytes, seq: int) -> None:
        self._recent[key] = Held(content, seq)
        self._unsaved.append((key, content, seq))
        self._count += 1

    # ---------------------------------------------------------------- the batch cycle
    def unresolved(self, keys: Iterable[bytes]) -> list[bytes]:
        """Of a batch's identities, those only PostgreSQL can decide: not applied here, not ruled out by the filter."""
        candidates = sorted({key for key in keys if key not in self._recent})
        if not candidates:
            return []
        high, low = split_many(b"".join(candidates))
        maybe = np.zeros(len(candidates), dtype=np.bool_)
        for segment in self._segments:
            maybe |= segment.might_many(high, low)
        return [key for key, hit in zip(candidates, maybe.tolist(), strict=True) if hit]

    def resolve(self, asked: list[bytes], found: Iterable[HeldRow]) -> None:
        """What PostgreSQL holds of `asked` (rows of applied_ids): the answers for the next batch."""
        resolved: dict[bytes, Held | None] = dict.fromkeys(asked)
        for key, content, seq in found:
            resolved[key] = Held(content, seq)
        self._resolved = resolved

    def answers(self, keys: Iterable[bytes]) -> bytes:
        """The held identities among a batch's keys, after `resolve`, as HELD_ROW rows: what an engine of the batch
        API whose identities are held per batch is given with the batch (InvariantViolation, as `held`, for one
        neither ruled out nor looked up)."""
        rows: list[HeldRow] = []
        for key in dict.fromkeys(keys):
            held = self.held(key)
            if held is not None:
                rows.append((key, held.content, held.seq))
        return pack_rows(rows)

    def applied(self, rows: bytes) -> None:
        """The identities a batch applied through the batch API (its `held_ids`): held here as `add` holds them."""
        for key, content, seq in unpack_rows(rows):
            self.add(key, content, seq)

    def drain(self) -> list[HeldRow]:
        """The identities applied since the last drain, for the batch's transaction; the filter learns them now."""
        rows, self._unsaved = self._unsaved, []
        if rows:
            self._filter(b"".join(key for key, _, _ in rows))
        return rows

    def committed(self, seq: int) -> None:
        """Everything up to `seq` is in PostgreSQL (and in the filter, since drained): those need not stay recent."""
        if len(self._recent) > RECENT_KEEP:
            self._recent = {key: held for key, held in self._recent.items() if held.seq > seq}

    def _filter(self, keys: bytes) -> None:
        high, low = split_many(keys)
        start = 0
        while start < len(high):
            segment = self._segments[-1]
            room = segment.capacity - segment.count
            if room <= 0:
                self._segments.append(BloomFilter(2 * segment.capacity))
                continue
            segment.add_many(high[start:start + room], low[start:start + room])
            start += room

    @property
    def nbytes(self) -> int:
        return sum(segment.nbytes for segment in self._segments)
