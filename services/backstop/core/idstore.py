"""Held identities in memory at a fixed size each (docs/design.md §4, Admission; measured by benchmarks/idstore.py).

An identity is a 16-byte key digest held with an 8-byte content digest and an 8-byte seq: 32 bytes in numpy arrays,
sorted by key, in runs that grow by merging (so an insert never rewrites the whole store). A blocked Bloom filter
over the runs answers most lookups (a new identity, almost always) without searching them; the newest identities
wait in a dict until there are RECENT_LIMIT of them. A Python set of the same digests costs several times as much.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from backstop.core.dedupe import CONTENT_BYTES, KEY_BYTES, Held

U64 = npt.NDArray[np.uint64]
RECENT_LIMIT = 1 << 16  # identities held in a dict before they are sorted into a run
MAX_MERGE = 1 << 24  # runs are merged up to this many entries; larger ones stay apart (a merge copies its runs)
BITS_PER_KEY = 16  # filter bits per identity when the filter is full; a new one twice as large replaces it
BITS_PER_WORD = 64
BITS_SET = 6  # of the word an identity falls in: with 16 bits per key, about 0.5% of new identities pass
FILE_MAGIC = b"BKSTIDS1"
MAX_FILE_IDS = 1 << 40  # a length beyond any journal: a damaged header, not an allocation to try
_PAIRS = [1 << (bits & 63) | 1 << (bits >> 6) for bits in range(4096)]  # two 6-bit positions -> their mask


def split(key: bytes) -> tuple[int, int]:
    """The key digest as two unsigned 64-bit integers, big-endian: sorting by them sorts by the bytes."""
    return int.from_bytes(key[:8], "big"), int.from_bytes(key[8:KEY_BYTES], "big")


def split_many(keys: bytes) -> tuple[U64, U64]:
    """Concatenated key digests as two arrays (high and low 8 bytes)."""
    pairs = np.frombuffer(keys, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])


class BloomFilter:
    """A blocked Bloom filter over key digests: a key sets BITS_SET bits of one 64-bit word, so a lookup reads one
    word. No false negatives; false positives only cost a search. The digests are uniform already: the word is the
    high half modulo the word count, the bits come from the low half."""

    __slots__ = ("capacity", "count", "words")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, BITS_PER_WORD)
        self.words: U64 = np.zeros(self.capacity * BITS_PER_KEY // BITS_PER_WORD, dtype=np.uint64)
        self.count = 0

    @staticmethod
    def _masks(low: U64) -> U64:
        masks = np.zeros(len(low), dtype=np.uint64)
        one, six, bits = np.uint64(1), np.uint64(6), np.uint64(63)
        for _ in range(BITS_SET):
            masks |= np.left_shift(one, low & bits)
            low = low >> six
        return masks

    def might(self, key: bytes) -> bool:
        value = int.from_bytes(key, "big")  # high half << 64 | low half
        mask = _PAIRS[value & 4095] | _PAIRS[value >> 12 & 4095] | _PAIRS[value >> 24 & 4095]  # as _masks
        return bool(self.words.item((value >> 64) % len(self.words)) & mask == mask)

    def add_many(self, high: U64, low: U64) -> None:
        if not len(high):
            return
        index, masks = (high % np.uint64(len(self.words))).astype(np.intp), self._masks(low)
        words = self.words
        while len(index):  # keys that share a word lose all but one's bits to the next: they go round again
            words[index] |= masks  # several times faster than np.bitwise_or.at, which ORs every key in once
            lost = (words[index] & masks) != masks
            index, masks = index[lost], masks[lost]
        self.count += len(high)

    def might_many(self, high: U64, low: U64) -> npt.NDArray[np.bool_]:
        masks = self._masks(low)
        return np.asarray((self.words[high % np.uint64(len(self.words))] & masks) == masks)

    @property
    def full(self) -> bool:
        return self.count >= self.capacity

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes)


class Run:
    """Identities sorted by key (high half; the low half decides between equal high halves)."""

    __slots__ = ("_high_view", "content", "high", "low", "seq")
    COLUMNS = ("high", "low", "content", "seq")

    def __init__(self, high: U64, low: U64, content: U64, seq: U64) -> None:
        self.high, self.low, self.content, self.seq = high, low, content, seq
        # bisect on a memoryview of the high halves: a numpy call per lookup costs more than the search itself
        self._high_view = np.ascontiguousarray(high).data.cast("B").cast("Q") if len(high) else None

    def __len__(self) -> int:
        return len(self.high)

    def __deepcopy__(self, memo: dict[int, object]) -> Run:
        return self  # never changed once made (a merge makes a new run), so a copied store shares it

    def columns(self) -> tuple[U64, U64, U64, U64]:
        return self.high, self.low, self.content, self.seq

    def find(self, high: int, low: int) -> Held | None:
        view = self._high_view
        if view is None:
            return None
        index = bisect.bisect_left(view, high)
        size = len(view)
        while index < size and view[index] == high:
            if self.low.item(index) == low:
                return Held(self.content.item(index).to_bytes(CONTENT_BYTES, "big"), self.seq.item(index))
            index += 1
        return None

    @classmethod
    def merged(cls, runs: list[Run]) -> Run:
        columns = [np.concatenate(parts) for parts in zip(*(run.columns() for run in runs), strict=True)]
        order = np.argsort(columns[0], kind="stable")  # a few sorted runs: timsort merges them in linear time
        return cls(*(column[order] for column in columns))


class IdStore:
    """Every held identity, in memory. Implements backstop.core.dedupe.HeldIds."""

    __slots__ = ("_filter", "_recent", "_runs", "_size")

    def __init__(self) -> None:
        self._recent: dict[bytes, tuple[bytes, int]] = {}  # plain tuples: a NamedTuple per insert costs more
        self._runs: list[Run] = []
        self._size = 0  # entries in runs
        self._filter = BloomFilter(RECENT_LIMIT * 4)

    def __len__(self) -> int:
        return self._size + len(self._recent)

    def held(self, key: bytes) -> Held | None:
        recent = self._recent.get(key)
        if recent is not None:
            return Held(*recent)
        if not self._size or not self._filter.might(key):
            return None
        high, low = split(key)
        for run in reversed(self._runs):  # newest first: a record sent again is usually sent again soon
            found = run.find(high, low)
            if found is not None:
                return found
        return None

    def add(self, key: bytes, content: bytes, seq: int) -> None:
        recent = self._recent
        recent[key] = (content, seq)
        if len(recent) >= RECENT_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Sort the recent identities into a run (lookups are the same before and after)."""
        recent = self._recent
        if not recent:
            return
        high, low = split_many(b"".join(recent))
        values = list(recent.values())
        content = np.frombuffer(b"".join([value[0] for value in values]), dtype=">u8").astype(np.uint64)
        seq = np.array([value[1] for value in values], dtype=np.uint64)
        order = np.argsort(high, kind="stable")
        self._append(Run(high[order], low[order], content[order], seq[order]))
        recent.clear()

    def _append(self, run: Run) -> None:
        runs = self._runs
        runs.append(run)
        self._size += len(run)
        while len(runs) >= 2 and len(runs[-2]) <= 2 * len(runs[-1]) and len(runs[-2]) + len(runs[-1]) <= MAX_MERGE:
            runs[-2:] = [Run.merged(runs[-2:])]
        if self._size > self._filter.capacity:  # rebuilt twice as large: every run's keys again
            self._filter = BloomFilter(2 * self._size)
            for each in runs:
                self._filter.add_many(each.high, each.low)
        else:
            self._filter.add_many(run.high, run.low)

    @property
    def nbytes(self) -> int:
        """Memory of the arrays and the filter (the recent dict aside: at most RECENT_LIMIT entries)."""
        return sum(column.nbytes for run in self._runs for column in run.columns()) + self._filter.nbytes

    @property
    def runs(self) -> int:
        """How many sorted runs a lookup that passes the filter may search (benchmarks/idstore.py reports it)."""
        return len(self._runs)

    def filter_passes(self, key: bytes) -> bool:
        """Whether the filter lets a lookup of `key` go on to the runs: True for every key held in them, and for
        a few others (its false positives, which benchmarks/idstore.py measures)."""
        return self._filter.might(key)

    # ---------------------------------------------------------------- snapshots: a binary file beside the JSON
    def write(self, handle: BinaryIO) -> str:
        """Write every identity in the file's one form (FILE_MAGIC, a run count of 1 and the run's length, then its
        four little-endian uint64 columns high, low, content, seq, sorted by key): a function of the identities held
        alone, so that both engines write the same bytes for the same identities. Returns the SHA-256 of what was
        written."""
        digest = hashlib.sha256()
        for chunk in self._chunks():
            digest.update(chunk)
            handle.write(chunk)
        return digest.hexdigest()

    def _chunks(self) -> Iterator[bytes]:
        self.flush()
        runs = self._runs
        yield FILE_MAGIC
        yield np.array([1, len(self)], dtype="<u8").tobytes()
        if len(runs) == 1 and _strictly_increasing(runs[0].high, runs[0].low):
            columns: tuple[U64, ...] = runs[0].columns()
        elif runs:  # several runs (or equal high halves in one): one sort by the whole key
            high, low = np.concatenate([run.high for run in runs]), np.concatenate([run.low for run in runs])
            order = np.lexsort((low, high))
            columns = tuple(np.concatenate([getattr(run, name) for run in runs])[order] for name in Run.COLUMNS)
        else:
            columns = ()
        for column in columns:
            yield column.astype("<u8", copy=False).tobytes()  # a copy of one column at a time

    @classmethod
    def read(cls, handle: BinaryIO) -> tuple[IdStore, str]:
        """The store `write` wrote, and the SHA-256 of what was read (ValueError when it is not such a file: one run,
        keys strictly increasing, every seq at least 1)."""
        digest = hashlib.sha256()

        def take(count: int) -> U64:
            data = handle.read(8 * count)
            if len(data) != 8 * count:
                raise ValueError("truncated identity file")
            digest.update(data)
            return np.frombuffer(data, dtype="<u8").astype(np.uint64, copy=False)  # a view of the bytes read

        magic = handle.read(len(FILE_MAGIC))
        if magic != FILE_MAGIC:
            raise ValueError("not an identity file")
        digest.update(magic)
        runs, length = (int(n) for n in take(2))
        if runs != 1:
            raise ValueError(f"an identity file holds one run, not {runs}")
        if length > MAX_FILE_IDS:
            raise ValueError(f"an identity file of {length} identities")
        run = Run(*(take(length) for _ in Run.COLUMNS))
        if not _strictly_increasing(run.high, run.low):
            raise ValueError("identity file with keys out of order or held twice")
        if length and int(run.seq.min()) < 1:
            raise ValueError("identity file with a seq below 1")
        if handle.read(1):
            raise ValueError("identity file longer than its run")
        store = cls()
        store._filter = BloomFilter(max(2 * length, RECENT_LIMIT * 4))
        if length:
            store._append(run)
        return store, digest.hexdigest()


def _strictly_increasing(high: U64, low: U64) -> bool:
    """Whether the keys (high, low) are sorted and none is there twice."""
    if len(high) < 2:
        return True
    rising, level = high[1:] > high[:-1], high[1:] == high[:-1]
    return bool(np.all(rising | (level & (low[1:] > low[:-1]))))
