"""The journal processor: sequence, apply, count. Shared by `backstop replay` and the service; what is a duplicate,
late or ahead is the engine's to decide (Engine.apply: docs/design.md §4, Admission)."""

from __future__ import annotations

from dataclasses import dataclass

from backstop.core.adl_rounds import RunTotals
from backstop.core.engine import Effects, Engine
from backstop.core.errors import AlreadyApplied, Rejected, RejectionKind
from backstop.core.events import Event


@dataclass(frozen=True, slots=True)
class Applied:
    seq: int
    effects: Effects


@dataclass(frozen=True, slots=True)
class Duplicate:
    key: str  # what was applied already, and by which seq


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    kind: RejectionKind = "rejected"


Outcome = Applied | Duplicate | Rejection


class Processor:
    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine if engine is not None else Engine()
        self.duplicates = 0
        self.rejected = 0
        self.conflicting_duplicates = 0  # of the rejected: an identity held with other content
        self.fund_entries = 0
        self.adl_events = 0
        self.findings = 0
        self.postings = 0
        self.adl_quantiles = 0
        self.adl_totals = RunTotals(full=self.engine.full_adl_metrics)  # this replay's rounds (summary's `adl`)

    @property
    def events_applied(self) -> int:
        return self.engine.last_seq

    def process(self, record: Event) -> Outcome:
        try:
            effects = self.engine.apply(record, self.engine.last_seq + 1)
        except AlreadyApplied as duplicate:
            self.duplicates += 1
            return Duplicate(str(duplicate))
        except Rejected as rejection:
            self.rejected += 1
            if rejection.kind == "conflicting_duplicate":
                self.conflicting_duplicates += 1
            return Rejection(str(rejection), rejection.kind)
        self.fund_entries += len(effects.fund_entries)
        self.adl_events += len(effects.adl_events)
        self.findings += len(effects.findings)
        self.postings += len(effects.postings)
        self.adl_quantiles += len(effects.adl_quantiles)
        totals = self.adl_totals
        for entry in effects.fund_entries:
            totals.add_fund_entry(entry.fund_id, entry.amount, entry.balance_after)
        funds = self.engine.funds
        for event in effects.adl_events:
            totals.add_event(event.fund_id, funds[event.fund_id].spec.settle_asset,
                             self.engine.instruments[event.symbol].valuation.reported_value(event.qty, event.price))
        for round_ in effects.adl_rounds:
            fund_id = round_.record["fund_id"]
            totals.add_round(round_, funds[fund_id].spec.settle_asset)
        return Applied(self.engine.last_seq, effects)

    def reject_unparsed(self) -> None:
        """Count a record that never reached the engine (undecodable or invalid)."""
        self.rejected += 1
