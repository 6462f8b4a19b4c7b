"""How an event can fail: a rejection (bad input, state untouched), a duplicate (applied already, state untouched)
or a broken invariant (a bug)."""

from __future__ import annotations

from typing import Literal

# What an auditor filters dead letters by (docs/design.md §4, Admission). `invalid` is decided by the wire layer,
# before the engine sees a record; `engine_error` by the service, for a record the engine raised on.
RejectionKind = Literal["invalid", "rejected", "late", "ahead", "conflicting_duplicate", "engine_error"]


class Rejected(Exception):
    """The record is malformed or impossible; nothing was applied. The message is the reason."""

    def __init__(self, reason: str, kind: RejectionKind = "rejected") -> None:
        super().__init__(reason)
        self.kind: RejectionKind = kind


class AlreadyApplied(Exception):
    """The same record (same identity, same content) was applied before; nothing was applied again."""


class InvariantViolation(Exception):
    """An internal rule broke. The processor must stop (and restart from stored offsets), never continue."""
