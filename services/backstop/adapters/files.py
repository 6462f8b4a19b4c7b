"""File adapter: the JSONL journal in, the replay output directory out.

Output files (the contract other tools rely on): summary.json, accounts.json, fund-ledger.jsonl,
adl-events.jsonl, findings.jsonl, dead-letter.jsonl, and snapshots/ when asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from backstop.core.engine import Effects
from backstop.core.hashing import canonical_json, record_dict

RAW_KEEP_BYTES = 4096


def read_lines(path: Path, *, skip: int = 0) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw bytes without newline) for every non-blank line after the first `skip`."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if number <= skip:
                continue
            stripped = line.rstrip(b"\r\n")
            if stripped.strip():
                yield number, stripped


def write_json(path: Path, document: Any) -> None:
    """Pretty, sorted JSON written atomically (temp file + rename)."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    os.replace(temporary, path)


class OutputDir:
    """Streams effects and dead letters into the output directory as they happen."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._ledger = self._open("fund-ledger.jsonl")
        self._adl = self._open("adl-events.jsonl")
        self._findings = self._open("findings.jsonl")
        self._dead = self._open("dead-letter.jsonl")

    def _open(self, name: str) -> IO[bytes]:
        return (self.root / name).open("wb", buffering=1 << 20)

    def effects(self, effects: Effects) -> None:
        for entry in effects.fund_entries:
            self._ledger.write(canonical_json(record_dict(entry)) + b"\n")
        for event in effects.adl_events:
            self._adl.write(canonical_json(record_dict(event)) + b"\n")
        for finding in effects.findings:
            self._findings.write(canonical_json(record_dict(finding)) + b"\n")

    def dead_letter(self, line: int, reason: str, raw: bytes, kind: str) -> None:
        """`kind`: backstop.core.errors.RejectionKind."""
        text = raw[:RAW_KEEP_BYTES].decode("utf-8", errors="replace")
        self._dead.write(canonical_json({"line": line, "kind": kind, "reason": reason, "raw": text,
                                         "raw_truncated": len(raw) > RAW_KEEP_BYTES}) + b"\n")

    def close(self) -> None:
        for handle in (self._ledger, self._adl, self._findings, self._dead):
            handle.close()

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
