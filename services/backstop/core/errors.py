"""The two ways an event can fail: a rejection (bad input, state untouched) or a broken invariant (a bug)."""


class Rejected(Exception):
    """The record is malformed or impossible; nothing was applied. The message is the reason."""


class InvariantViolation(Exception):
    """An internal rule broke. The processor must stop (and restart from stored offsets), never continue."""
