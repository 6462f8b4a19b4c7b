"""Kafka topic names, keys and roles of wire contract v1 (docs/design.md §5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

INPUT_TYPES = ("fund", "instrument", "transfer", "fill", "mark", "funding", "liquidation")
_INPUT_SUFFIX = {"fund": "funds", "instrument": "instruments", "transfer": "transfers", "fill": "fills",
                 "mark": "marks", "funding": "funding", "liquidation": "liquidations"}


@dataclass(frozen=True, slots=True)
class TopicNames:
    """All topic names under one prefix (default "backstop."; tests use their own)."""

    prefix: str = "backstop."
    # topic -> record type, built once: type_of runs for every record consumed
    _types: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_types", {self.input(t): t for t in INPUT_TYPES})

    def input(self, record_type: str) -> str:
        return f"{self.prefix}{_INPUT_SUFFIX[record_type]}"

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.input(t) for t in INPUT_TYPES)

    def type_of(self, topic: str) -> str | None:
        return self._types.get(topic)

    @property
    def journal(self) -> str:
        return f"{self.prefix}journal"

    @property
    def fund_ledger(self) -> str:
        return f"{self.prefix}fund-ledger"

    @property
    def adl_events(self) -> str:
        return f"{self.prefix}adl-events"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}dead-letter"

    @property
    def postings(self) -> str:
        return f"{self.prefix}postings"

    @property
    def adl_quantiles(self) -> str:
        return f"{self.prefix}adl-quantiles"

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.journal, self.fund_ledger, self.adl_events, self.dead_letter, self.postings, self.adl_quantiles)

    def of_source(self, source: str) -> str:
        """The output topic the relay publishes a table source to (backstop.adapters.postgres.store.TABLE_SOURCES)."""
        return {"journal": self.journal, "fund_ledger": self.fund_ledger, "adl_events": self.adl_events,
                "postings": self.postings}[source]

    def role(self, topic: str) -> Literal["input", "journal", "ledger", "events", "dead-letter", "postings",
                                          "quantiles"]:
        if topic in self.inputs:
            return "input"
        if topic == self.journal:
            return "journal"
        if topic == self.fund_ledger:
            return "ledger"
        if topic == self.adl_events:
            return "events"
        if topic == self.postings:
            return "postings"
        if topic == self.adl_quantiles:
            return "quantiles"
        return "dead-letter"


def input_key_field(record_type: str) -> str:
    """docs/design.md §5: fund_id for funds; symbol for marks, funding and instruments; account_id otherwise."""
    if record_type == "fund":
        return "fund_id"
    if record_type in ("mark", "funding", "instrument"):
        return "symbol"
    return "account_id"


def input_key(record_type: str, fields: dict[str, object]) -> str:
    return str(fields[input_key_field(record_type)])
