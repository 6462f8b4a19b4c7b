"""How an event can fail: a rejection (bad input, state untouched), a duplicate (applied already, state untouched)
or a broken invariant (a bug)."""

from __future__ import annotations

from typing import Literal

# What an auditor filters dead letters by (docs/design.md §4, Admission). `invalid` is decided by the wire layer,
# before the engine sees a record; `engine_error` by the service, for a record the engine raised on.
RejectionKind = Literal["invalid", "rejected", "late", "ahead", "conflicting_duplicate", "engine_error"]


# A reason may quote the bad input; what some reader ends a line at is escaped, so a dead letter's reason is one
# line for all of them: C0, DEL and C1 as \xNN, U+2028 and U+2029 as \uNNNN (and PostgreSQL text cannot hold NUL).
_LINE_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), *range(127, 160))} | {
    code: f"\\u{code:04x}" for code in (0x2028, 0x2029)}


def one_line(reason: str) -> str:
    """A reason as a dead letter carries it (the compiled engine: processor::escaped_reason)."""
    return reason.translate(_LINE_ESCAPES)


class Rejected(Exception):
    """The record is malformed or impossible; nothing was applied. The message is the reason."""

    def __init__(self, reason: str, kind: RejectionKind = "rejected") -> None:
        super().__init__(reason)
        self.kind: RejectionKind = kind


class AlreadyApplied(Exception):
    """The same record (same identity, same content) was applied before; nothing was applied again."""


class InvariantViolation(Exception):
    """An internal rule broke. The processor must stop (and restart from stored offsets), never continue."""
