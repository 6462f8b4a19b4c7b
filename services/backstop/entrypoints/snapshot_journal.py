"""The journal a snapshot was taken on. Beside `snapshot-SEQ.json`, `backstop replay --snapshot-every` writes
`snapshot-SEQ.journal`: the number of journal lines the snapshot had applied and the SHA-256 of those lines' bytes,
each with its line end, as the file holds them. A replay from the snapshot reads that many lines of the journal it
is given and refuses, in one line, a journal that is shorter or whose lines differ, instead of applying the rest of
another journal to this state. (A snapshot without the file, or a replay of a store's journal, is not checked.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

SUFFIX = ".journal"


class JournalMismatch(Exception):
    """The journal is not the one the snapshot was taken on (one line: what differs)."""


class Prefix:
    """The SHA-256 of a journal's bytes from its first line on, as its chunks are handed to the engine: `begin` a
    chunk, take the digest `through` each snapshot's line in it (ascending), `end` it."""

    def __init__(self, sha: Any | None = None, offset: int = 0) -> None:
        self.sha = sha if sha is not None else hashlib.sha256()
        self.offset = offset  # the bytes hashed before the first chunk (where the lines a snapshot applied end)
        self.chunk, self.at, self.line = b"", 0, 0

    def begin(self, chunk: bytes, first_line: int) -> None:
        self.chunk, self.at, self.line = chunk, 0, first_line - 1

    def through(self, line: int) -> str:
        """The digest of every line up to `line`, which lies in the chunk begun (at or after the last asked)."""
        start = self.at
        for _ in range(line - self.line):
            found = self.chunk.find(b"\n", self.at)
            self.at = len(self.chunk) if found < 0 else found + 1
        self.line = line
        self.sha.update(memoryview(self.chunk)[start:self.at])
        return str(self.sha.copy().hexdigest())

    def end(self) -> None:
        self.sha.update(memoryview(self.chunk)[self.at:])
        self.chunk, self.at = b"", 0


def input_line(document: bytes) -> int:
    """A snapshot document's `input_line`, read without parsing the state: its top-level key comes after the state's
    (the keys are sorted), so the last occurrence is it; a string cannot hold the quotes unescaped."""
    at = document.rfind(b'"input_line":') + len(b'"input_line":')
    while document[at:at + 1] in (b" ", b"\n"):
        at += 1
    end = at
    while document[end:end + 1].isdigit():
        end += 1
    return int(document[at:end])


def record_bytes(lines: Any, digest: Any) -> bytes:
    return orjson.dumps({"input_line": lines, "sha256": digest}) + b"\n"


def check(snapshot: Path, journal: Path, lines: int) -> Prefix:
    """The first `lines` lines of `journal` hashed, and held to the digest the snapshot's journal file records;
    JournalMismatch when the journal is shorter or differs. The digest so far goes on with the lines after, which
    start at its `offset`."""
    sha, read, offset = hashlib.sha256(), 0, 0
    with journal.open("rb") as handle:
        while read < lines and (line := handle.readline()):
            sha.update(line)
            read, offset = read + 1, offset + len(line)
    if read < lines:
        raise JournalMismatch(f"{journal} has {read} lines, but snapshot {snapshot} was taken after line {lines}: "
                              f"it was taken on another journal")
    recorded = snapshot.with_suffix(SUFFIX)
    if recorded.exists():
        try:
            raw = recorded.read_bytes()
            expected = orjson.loads(raw)
        except (OSError, orjson.JSONDecodeError) as error:
            raise JournalMismatch(f"{recorded} cannot be read: {error}") from None
        # exactly as record_bytes writes it: an input_line of 6.0, a key repeated or another key is not this file
        if not isinstance(expected, dict) or type(expected.get("input_line")) is not int or raw != record_bytes(
                expected["input_line"], expected.get("sha256")):
            raise JournalMismatch(f"{recorded} cannot be read: not {{\"input_line\": N, \"sha256\": ...}} as a "
                                  f"replay writes it")
        held = (expected["input_line"], expected["sha256"])
        if held != (lines, sha.hexdigest()):
            raise JournalMismatch(f"the first {lines} lines of {journal} are not those snapshot {snapshot} was taken "
                                  f"on (their SHA-256 differs from {recorded.name}'s): it was taken on another journal")
    return Prefix(sha, offset)
