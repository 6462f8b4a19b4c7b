"""Bybit's drawdown trigger (docs/design.md §11.3): the state it keeps, in event time.

Per fund, the balance's maximum over the window; per symbol of the fund, the fund's realized PnL on it and the
maximum over the window of its PnL at the mark (realized + the fund's lots of the symbol valued at the mark); and the
symbols whose ADL is on (triggered, not yet stopped). A maximum over a sliding window is a deque of (ts, value)
with values strictly decreasing from the front: a new value drops every value behind it that is not larger, and
entries older than the window are dropped from the front when a value is added (never when one is read, so the
state changes only where both engines change it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from backstop.core.numbers import text


@dataclass(slots=True)
class WindowMax:
    entries: deque[tuple[int, Decimal]] = field(default_factory=deque)

    def add(self, ts: int, value: Decimal, window_ms: int) -> None:
        entries = self.entries
        while entries and entries[0][0] <= ts - window_ms:
            entries.popleft()
        while entries and entries[-1][1] <= value:
            entries.pop()
        entries.append((ts, value))

    def maximum(self, ts: int, window_ms: int, current: Decimal) -> Decimal:
        """The largest of `current` and the values added within (ts - window_ms, ts]."""
        for added_at, value in self.entries:
            if added_at > ts - window_ms:
                return max(value, current)
        return current

    def document(self) -> list[list[Any]]:
        return [[ts, text(value)] for ts, value in self.entries]

    @classmethod
    def restored(cls, rows: list[list[Any]]) -> WindowMax:
        return cls(deque((int(ts), Decimal(value)) for ts, value in rows))


@dataclass(slots=True)
class DrawdownState:
    balances: dict[str, WindowMax] = field(default_factory=dict)  # fund id -> its balance's window
    pnls: dict[str, WindowMax] = field(default_factory=dict)  # symbol -> the fund's PnL on it, windowed
    realized: dict[str, Decimal] = field(default_factory=dict)  # symbol -> the fund's realized PnL on it
    triggered: set[str] = field(default_factory=set)

    def document(self) -> dict[str, Any]:
        return {"balances": {f: w.document() for f, w in sorted(self.balances.items())},
                "pnls": {s: w.document() for s, w in sorted(self.pnls.items())},
                "realized": {s: text(v) for s, v in sorted(self.realized.items())},
                "triggered": sorted(self.triggered)}

    @classmethod
    def restored(cls, document: dict[str, Any]) -> DrawdownState:
        return cls({f: WindowMax.restored(rows) for f, rows in document["balances"].items()},
                   {s: WindowMax.restored(rows) for s, rows in document["pnls"].items()},
                   {s: Decimal(v) for s, v in document["realized"].items()}, set(document["triggered"]))
