"""Scenario runs, the application layer under `whatif`, `demo` and the reports: a scenario's parameters (the
[baseline]/[alternative] tables of a what-if parameter file), the input records it changes, one run of the engine
on them with its journal and outputs, and the run's metrics (RunMetrics) that the comparison tables and the HTML
report draw. No command-line concerns here: backstop.entrypoints.whatif and .demo are the commands."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, StrictBool, ValidationError

from backstop.adapters.files import REPLAY_OUTPUTS, OutputDir, write_json
from backstop.adapters.journal_file import JournalFileError, read_journal
from backstop.core import ledger
from backstop.core.adl_policy import AdlPolicy, configured
from backstop.core.documents import accounts, summary
from backstop.core.engine import Engine
from backstop.core.hashing import canonical_json
from backstop.core.numbers import CONTEXT, money, text
from backstop.core.processor import Applied, Processor, Rejection
from backstop.core.simulation import SimulationParams, Simulator
from backstop.wire.decode import InvalidRecord, decode_record, describe
from backstop.wire.inputs import (
    AnyRecord,
    FundRecord,
    InstrumentRecord,
    LiquidationRecord,
    MarkRecord,
    NonNegativeDecimal,
    Tier,
    TransferRecord,
)

RUN_OUTPUTS = (*REPLAY_OUTPUTS, "journal.jsonl", "scenario.json")


class WhatIfError(Exception):
    """The parameters or the journal cannot make a what-if run (exit 2); nothing was written."""


def _below(bound: int, what: str) -> Callable[[Decimal], Decimal]:
    def check(value: Decimal) -> Decimal:
        if value >= bound:
            raise ValueError(f"must be below {bound} ({what})")
        return value
    return check


def _positive_hours(value: int) -> int:
    if value < 1:
        raise ValueError("must be a whole number of hours >= 1")
    return value


def _at_most_one(value: Decimal) -> Decimal:
    if value > 1:
        raise ValueError("must be at most 1 (the part of each liquidation order the market absorbs)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulationSection(_Strict):
    slippage_bps: Annotated[NonNegativeDecimal, AfterValidator(_below(10_000, "10,000 bp would fill at 0"))] = \
        Decimal(0)
    partial: StrictBool = True
    market_fill: Annotated[NonNegativeDecimal, AfterValidator(_at_most_one)] = Decimal(1)


class AdlSection(_Strict):
    policy: Literal["queue", "binance", "pro_rata", "capped_pro_rata", "min_max_leverage", "socialized", "bybit",
                    "okx", "bitmex"] = "queue"
    rule: Literal["bitmex", "binance", "pro_rata"] | None = None  # the policy's older name, as files spelled it
    price: Literal["bankruptcy", "mark", "floor"] | None = None
    floor: NonNegativeDecimal | None = None
    drawdown_ratio: NonNegativeDecimal | None = None
    stop_ratio: NonNegativeDecimal | None = None
    window_hours: Annotated[int, AfterValidator(_positive_hours)] | None = None

    def adl_policy(self) -> AdlPolicy:
        """The policy the section names; WhatIfError says what is wrong with it."""
        try:
            return configured(self.rule or self.policy, price=self.price, floor=self.floor,
                              drawdown_ratio=self.drawdown_ratio, stop_ratio=self.stop_ratio,
                              window_hours=self.window_hours)
        except ValueError as error:
            raise WhatIfError(f"bad ADL policy: {error}") from None

    def with_policy(self, name: str) -> AdlSection:
        return self.model_copy(update={"policy": name, "rule": None})


class FundSection(_Strict):
    surplus: Literal["fund", "trader"] | None = None
    max_inventory_ratio: NonNegativeDecimal | None = None
    balance_scale: NonNegativeDecimal | None = None


class InstrumentSection(_Strict):
    tiers: tuple[Tier, ...] | None = None
    liquidation_fee_rate: NonNegativeDecimal | None = None


class Scenario(_Strict):
    simulation: SimulationSection | None = None
    adl: AdlSection = AdlSection()
    funds: dict[str, FundSection] = {}
    instruments: dict[str, InstrumentSection] = {}


class WhatIfFile(_Strict):
    baseline: Scenario = Scenario()
    alternative: Scenario = Scenario()


def load_params(path: Path) -> WhatIfFile:
    try:
        return WhatIfFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as error:
        raise WhatIfError(f"cannot read parameter file {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise WhatIfError(f"bad parameter file {path}: {error}") from None
    except ValidationError as error:
        raise WhatIfError(f"bad parameter file {path}: {describe(error)}") from None


def wire_line(record: AnyRecord) -> bytes:
    """The record as a journal line: canonical JSON, decimals in plain notation (never an exponent). A linear
    instrument's line leaves the inverse fields out (docs/design.md §7), as a journal written before them did, so
    that a reader of that contract reads it."""
    document = record.model_dump()
    if isinstance(record, InstrumentRecord) and record.contract_type == "linear" and record.contract_size is None:
        del document["contract_type"], document["contract_size"]
    return canonical_json(document)


def _changed_by(record: AnyRecord) -> str:
    if isinstance(record, FundRecord):
        return f"funds.{record.fund_id}"
    if isinstance(record, InstrumentRecord):
        return f"instruments.{record.symbol}"
    if isinstance(record, TransferRecord):
        return f"funds.{record.account_id.removeprefix('fund:')}.balance_scale"
    return record.type


def scenario_record(number: int, original: AnyRecord, scenario: Scenario, label: str) -> AnyRecord:
    """transform(), and a changed record validated by the wire contract as `backstop replay` will read it from the
    run's journal: a parameter that makes a record the contract refuses is refused here, with the reason."""
    record = transform(original, scenario)
    if record is original:
        return record
    try:
        return decode_record(wire_line(record))
    except InvalidRecord as error:
        raise WhatIfError(f"the {label} scenario's {_changed_by(record)} makes journal line {number} a record the "
                          f"wire contract refuses: {error}") from None


def transform(record: AnyRecord, scenario: Scenario) -> AnyRecord:
    """The record as the scenario would have had it."""
    if isinstance(record, FundRecord) and record.fund_id in scenario.funds:
        change = scenario.funds[record.fund_id]
        return record.model_copy(update={k: v for k, v in (("surplus", change.surplus), (
            "max_inventory_ratio", change.max_inventory_ratio)) if v is not None})
    if isinstance(record, InstrumentRecord) and record.symbol in scenario.instruments:
        change_i = scenario.instruments[record.symbol]
        return record.model_copy(update={k: v for k, v in (("tiers", change_i.tiers), (
            "liquidation_fee_rate", change_i.liquidation_fee_rate)) if v is not None})
    if isinstance(record, TransferRecord) and record.account_id.startswith("fund:"):
        change_f = scenario.funds.get(record.account_id[len("fund:"):])
        if change_f is not None and change_f.balance_scale is not None:
            with localcontext(CONTEXT):
                return record.model_copy(update={"amount": money(record.amount * change_f.balance_scale)})
    return record


@dataclass(frozen=True, slots=True)
class RoundPoint:
    """One ADL round for the report's charts: when, the leverage of those it hit, and the eligible population's
    p10 / p50 / p90 leverage (None with the basic metrics)."""

    ts: int
    hit_leverage: tuple[Decimal, ...]
    eligible_leverage: tuple[Decimal, Decimal, Decimal] | None


@dataclass(slots=True)
class RunMetrics:
    liquidations: int = 0
    liquidated_notional: Decimal = Decimal(0)
    adl_events: int = 0
    adl_notional: Decimal = Decimal(0)
    fund_min: dict[str, Decimal] = field(default_factory=dict)
    fund_peak: dict[str, Decimal] = field(default_factory=dict)
    fund_drawdown: dict[str, Decimal] = field(default_factory=dict)
    fund_final: dict[str, Decimal] = field(default_factory=dict)
    liquidated_by_account: dict[str, Decimal] = field(default_factory=dict)
    deleveraged_by_account: dict[str, Decimal] = field(default_factory=dict)
    rejected: int = 0
    # per minute of event time (ms of the minute's start) -> value, for the report's charts
    minute_liquidated: dict[int, Decimal] = field(default_factory=dict)
    minute_deleveraged: dict[int, Decimal] = field(default_factory=dict)
    minute_fund: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    minute_mark: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    minute_queue: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)  # symbol -> (longs, shorts)
    minute_haircut: dict[int, Decimal] = field(default_factory=dict)  # what ADL rounds took, and what they needed
    minute_needed: dict[int, Decimal] = field(default_factory=dict)
    rounds: list[RoundPoint] = field(default_factory=list)
    adl: dict[str, Any] = field(default_factory=dict)  # the engine summary's `adl` (docs/design.md §11.4)

    def as_json(self) -> dict[str, Any]:
        with localcontext(CONTEXT):
            return self._as_json()

    def _as_json(self) -> dict[str, Any]:
        return {
            "liquidations": self.liquidations, "liquidated_notional": text(money(self.liquidated_notional)),
            "adl_events": self.adl_events, "adl_notional": text(money(self.adl_notional)),
            "funds": {f: {"final_balance": text(self.fund_final[f]), "min_balance": text(self.fund_min[f]),
                          "max_drawdown": text(self.fund_drawdown[f]),
                          "bad_debt": text(max(-self.fund_final[f], Decimal(0)))} for f in sorted(self.fund_final)},
            "accounts_liquidated": len(self.liquidated_by_account),
            "accounts_deleveraged": len(self.deleveraged_by_account), "rejected": self.rejected, "adl": self.adl}


def run_scenario(records: Sequence[tuple[int, AnyRecord]], scenario: Scenario, out: Path, *, label: str = "run",
                 progress: Callable[[int], None] | None = None, full_adl_metrics: bool = True,
                 ) -> tuple[RunMetrics, dict[str, Any]]:
    """Replay (line number, record) pairs under a scenario into `out` (the usual replay files plus journal.jsonl
    and scenario.json)."""
    processor = Processor(Engine(adl_policy=scenario.adl.adl_policy(), full_adl_metrics=full_adl_metrics))
    simulator = Simulator(processor, SimulationParams(scenario.simulation.slippage_bps, scenario.simulation.partial,
                                                      scenario.simulation.market_fill)) if scenario.simulation else None
    metrics = RunMetrics()
    out.mkdir(parents=True, exist_ok=True)
    with OutputDir(out) as files, (out / "journal.jsonl").open("wb") as journal:
        for done, (number, original) in enumerate(records, start=1):
            if progress is not None and done % 500 == 0:
                progress(done)
            record = scenario_record(number, original, scenario, label)
            try:
                results = simulator.process(record) if simulator else [(record, processor.process(record))]
            except InvalidRecord as error:
                raise WhatIfError(f"the {label} scenario's simulation, after journal line {number}, decided a "
                                  f"liquidation the wire contract refuses: {error}") from None
            for applied_record, outcome in results:
                if isinstance(outcome, Rejection):
                    metrics.rejected += 1
                    files.dead_letter(number, outcome.reason, wire_line(applied_record), outcome.kind)
                if not isinstance(outcome, Applied):
                    continue
                journal.write(wire_line(applied_record) + b"\n")
                files.effects(outcome.effects)
                _observe(metrics, processor.engine, applied_record, outcome)
    write_json(out / "scenario.json", orjson.loads(scenario.model_dump_json()))
    result = summary(processor)
    result["dead_letters"] = files.dead_letters
    metrics.adl = result["adl"]
    write_json(out / "summary.json", result)
    write_json(out / "accounts.json", accounts(processor.engine))
    for fund_id in processor.engine.funds:
        balance = processor.engine.ledger.balance(ledger.fund(fund_id))
        metrics.fund_final[fund_id] = balance
        metrics.fund_min.setdefault(fund_id, balance)
        metrics.fund_drawdown.setdefault(fund_id, Decimal(0))
    return metrics, result


def _observe(metrics: RunMetrics, engine: Engine, record: AnyRecord, outcome: Applied) -> None:
    with localcontext(CONTEXT):  # exact sums and products, as the engine's (a default context rounds wide ones)
        _observe_exactly(metrics, engine, record, outcome)


def _observe_exactly(metrics: RunMetrics, engine: Engine, record: AnyRecord, outcome: Applied) -> None:
    minute = record.ts - record.ts % 60_000
    if isinstance(record, MarkRecord):
        metrics.minute_mark.setdefault(record.symbol, {})[minute] = record.mark_price
        queue = metrics.minute_queue.setdefault(record.symbol, {})
        if minute not in queue:
            positions = engine.by_symbol[record.symbol].values()
            longs = sum(1 for p in positions if p.qty > 0)
            queue[minute] = (longs, len(engine.by_symbol[record.symbol]) - longs)
    if isinstance(record, LiquidationRecord):  # notionals: qty x price, V(qty, price) for an inverse contract
        liquidated = engine.instruments[record.symbol].valuation.value(record.qty, record.mark_price)
        metrics.minute_liquidated[minute] = metrics.minute_liquidated.get(minute, Decimal(0)) + liquidated
        metrics.liquidations += 1
        metrics.liquidated_notional += liquidated
        metrics.liquidated_by_account[record.account_id] = metrics.liquidated_by_account.get(
            record.account_id, Decimal(0)) + record.qty
    for event in outcome.effects.adl_events:
        metrics.adl_events += 1
        deleveraged = engine.instruments[event.symbol].valuation.reported_value(event.qty, event.price)
        metrics.adl_notional += deleveraged
        metrics.deleveraged_by_account[event.account_id] = metrics.deleveraged_by_account.get(
            event.account_id, Decimal(0)) + event.qty
        metrics.minute_deleveraged[minute] = metrics.minute_deleveraged.get(minute, Decimal(0)) + deleveraged
    for round_ in outcome.effects.adl_rounds:
        metrics.minute_haircut[minute] = metrics.minute_haircut.get(minute, Decimal(0)) + round_.haircut
        metrics.minute_needed[minute] = metrics.minute_needed.get(minute, Decimal(0)) + round_.needed
        eligible = round_.record["leverage"]["eligible"]
        metrics.rounds.append(RoundPoint(record.ts, tuple(h.figures.leverage for h in round_.hits
                                                           if h.figures.leverage is not None),
                                         (eligible["p10"], eligible["p50"], eligible["p90"])
                                         if eligible is not None and eligible["count"] else None))
    for entry in outcome.effects.fund_entries:
        fund_id, balance = entry.fund_id, entry.balance_after
        peak = max(metrics.fund_peak.get(fund_id, balance), balance)
        metrics.fund_peak[fund_id] = peak
        metrics.fund_min[fund_id] = min(metrics.fund_min.get(fund_id, balance), balance)
        metrics.fund_drawdown[fund_id] = max(metrics.fund_drawdown.get(fund_id, Decimal(0)), peak - balance)
        metrics.minute_fund.setdefault(fund_id, {})[minute] = balance


def read_records(path: Path) -> list[tuple[int, AnyRecord]]:
    """(line number, record) of every valid record of the journal."""
    try:
        lines = read_journal(path)
    except JournalFileError as error:
        raise WhatIfError(str(error)) from None
    records = []
    for number, raw in lines:
        try:
            records.append((number, decode_record(raw)))
        except InvalidRecord:
            continue  # a what-if compares what the engine does with valid input; replay reports bad lines
    return records


