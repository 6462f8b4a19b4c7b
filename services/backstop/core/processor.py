"""The journal processor: dedupe, sequence, apply. Shared by `backstop replay` and the service."""

from __future__ import annotations

from dataclasses import dataclass

from backstop.core.dedupe import Deduper, dedupe_key
from backstop.core.engine import Effects, Engine
from backstop.core.errors import Rejected
from backstop.wire.inputs import AnyRecord


@dataclass(frozen=True, slots=True)
class Applied:
    seq: int
    effects: Effects


@dataclass(frozen=True, slots=True)
class Duplicate:
    key: str


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str


Outcome = Applied | Duplicate | Rejection


class Processor:
    def __init__(self, engine: Engine | None = None, deduper: Deduper | None = None) -> None:
        self.engine = engine if engine is not None else Engine()
        self.deduper = deduper if deduper is not None else Deduper()
        self.duplicates = 0
        self.rejected = 0
        self.fund_entries = 0
        self.adl_events = 0
        self.findings = 0
        self.postings = 0
        self.adl_quantiles = 0

    @property
    def events_applied(self) -> int:
        return self.engine.last_seq

    def process(self, record: AnyRecord) -> Outcome:
        key = dedupe_key(record)
        if self.deduper.is_duplicate(key):
            self.duplicates += 1
            return Duplicate(key)
        try:
            effects = self.engine.apply(record, self.engine.last_seq + 1)
        except Rejected as rejection:
            self.rejected += 1
            return Rejection(str(rejection))
        self.deduper.remember(key, record.ts, self.engine.newest_ts or record.ts)
        self.fund_entries += len(effects.fund_entries)
        self.adl_events += len(effects.adl_events)
        self.findings += len(effects.findings)
        self.postings += len(effects.postings)
        self.adl_quantiles += len(effects.adl_quantiles)
        return Applied(self.engine.last_seq, effects)

    def reject_unparsed(self) -> None:
        """Count a record that never reached the engine (undecodable or invalid)."""
        self.rejected += 1
