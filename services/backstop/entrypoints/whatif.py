"""`backstop whatif`: the same input replayed under two parameter sets, side by side.

A parameter file (TOML) has a [baseline] and an [alternative] table, each optional, each of the form:

    [alternative.simulation]          # decide liquidations in the engine (the log's own are dropped)
    slippage_bps = "20"               # >= 0, < 10000
    partial = true                    # a TOML boolean
    market_fill = "0.8"               # the part of each liquidation the market absorbs (the fund takes the rest), 0..1
    [alternative.adl]
    rule = "pro_rata"                 # bitmex (default), binance, pro_rata
    price = "mark"                    # bankruptcy (default), mark
    [alternative.funds.MAIN]
    surplus = "trader"
    max_inventory_ratio = "0.5"
    balance_scale = "0.25"            # every top-up and draw of this fund, scaled
    [alternative.instruments.BTCUSDT]
    liquidation_fee_rate = "0.01"
    tiers = [{max_notional = "50000", mmr = "0.01", maint_amount = "0"}]

Parameters change the input records themselves (fund and instrument specs, fund transfers) or the engine's
policies, so each run writes its own journal: every number in the comparison is traceable to a log that
`backstop replay` reproduces. A changed record is checked by the wire contract as that replay will read it; a
parameter that makes one the contract refuses is refused, with the journal line and the reason.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, StrictBool, ValidationError

from backstop.adapters.files import REPLAY_OUTPUTS, OutputDir, OutputError, staged_dir, write_json
from backstop.adapters.journal_file import JournalFileError, read_journal
from backstop.core import ledger
from backstop.core.engine import AdlPolicy, Engine
from backstop.core.hashing import canonical_json
from backstop.core.numbers import CONTEXT, money, text
from backstop.core.processor import Applied, Processor, Rejection
from backstop.core.report import accounts, summary
from backstop.core.simulation import SimulationParams, Simulator
from backstop.wire.decode import InvalidRecord, decode_record, describe
from backstop.wire.inputs import (
    AnyRecord,
    DecimalStr,
    FundRecord,
    InstrumentRecord,
    LiquidationRecord,
    MarkRecord,
    NonNegativeDecimal,
    PositiveDecimal,
    Tier,
    TransferRecord,
)

RUN_OUTPUTS = (*REPLAY_OUTPUTS, "journal.jsonl", "scenario.json")
WHATIF_OUTPUTS = ("baseline", "alternative", "comparison.json", "report.html", "report-*.png")


class WhatIfError(Exception):
    """The parameters or the journal cannot make a what-if run (exit 2); nothing was written."""


def _below(bound: int, what: str) -> Callable[[Decimal], Decimal]:
    def check(value: Decimal) -> Decimal:
        if value >= bound:
            raise ValueError(f"must be below {bound} ({what})")
        return value
    return check


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
    rule: Literal["bitmex", "binance", "pro_rata"] = "bitmex"
    price: Literal["bankruptcy", "mark"] = "bankruptcy"


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
    """The record as a journal line: canonical JSON, decimals in plain notation (never an exponent)."""
    return canonical_json(record.model_dump())


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
            "accounts_deleveraged": len(self.deleveraged_by_account), "rejected": self.rejected}


def run_scenario(records: Sequence[tuple[int, AnyRecord]], scenario: Scenario, out: Path, *, label: str = "run",
                 progress: Callable[[int], None] | None = None) -> tuple[RunMetrics, dict[str, Any]]:
    """Replay (line number, record) pairs under a scenario into `out` (the usual replay files plus journal.jsonl
    and scenario.json)."""
    processor = Processor(Engine(adl_policy=AdlPolicy(scenario.adl.rule, scenario.adl.price)))
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
    if isinstance(record, LiquidationRecord):
        metrics.minute_liquidated[minute] = metrics.minute_liquidated.get(minute, Decimal(0)) + (
            record.qty * record.mark_price)
        metrics.liquidations += 1
        metrics.liquidated_notional += record.qty * record.mark_price
        metrics.liquidated_by_account[record.account_id] = metrics.liquidated_by_account.get(
            record.account_id, Decimal(0)) + record.qty
    for event in outcome.effects.adl_events:
        metrics.adl_events += 1
        metrics.adl_notional += event.qty * event.price
        metrics.deleveraged_by_account[event.account_id] = metrics.deleveraged_by_account.get(
            event.account_id, Decimal(0)) + event.qty
        metrics.minute_deleveraged[minute] = metrics.minute_deleveraged.get(minute, Decimal(0)) + (
            event.qty * event.price)
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


def compare(base: RunMetrics, alt: RunMetrics) -> dict[str, Any]:
    accounts_differ = sorted(
        a for a in set(base.liquidated_by_account) | set(alt.liquidated_by_account) | set(base.deleveraged_by_account)
        | set(alt.deleveraged_by_account)
        if (base.liquidated_by_account.get(a), base.deleveraged_by_account.get(a))
        != (alt.liquidated_by_account.get(a), alt.deleveraged_by_account.get(a)))
    return {"baseline": base.as_json(), "alternative": alt.as_json(),
            "accounts_affected_differently": len(accounts_differ),
            "accounts_affected_differently_sample": accounts_differ[:20]}


def render_run(run: dict[str, Any], label: str) -> str:
    """One run's figures as a two-column table."""
    return "\n".join(line[: line.rfind("  ")].rstrip() if index else f"{'':<{len(line) - 47}}{label:>24}"
                     for index, line in enumerate(render({"baseline": run, "alternative": run,
                                                         "accounts_affected_differently": 0}).splitlines()[:-1]))


def render(comparison: dict[str, Any]) -> str:
    base, alt = comparison["baseline"], comparison["alternative"]
    rows = [("liquidations", base["liquidations"], alt["liquidations"]),
            ("liquidated notional", base["liquidated_notional"], alt["liquidated_notional"]),
            ("ADL events", base["adl_events"], alt["adl_events"]),
            ("ADL notional", base["adl_notional"], alt["adl_notional"]),
            ("accounts liquidated", base["accounts_liquidated"], alt["accounts_liquidated"]),
            ("accounts deleveraged", base["accounts_deleveraged"], alt["accounts_deleveraged"])]
    for fund_id in sorted(set(base["funds"]) | set(alt["funds"])):
        for key in ("final_balance", "min_balance", "max_drawdown", "bad_debt"):
            rows.append((f"fund {fund_id} {key.replace('_', ' ')}", base["funds"].get(fund_id, {}).get(key, "-"),
                         alt["funds"].get(fund_id, {}).get(key, "-")))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {'baseline':>22}  {'alternative':>22}"]
    lines += [f"{name:<{width}}  {b!s:>22}  {a!s:>22}" for name, b, a in rows]
    lines.append(f"accounts affected differently: {comparison['accounts_affected_differently']}")
    return "\n".join(lines)


def whatif(journal: Path, params: WhatIfFile, out: Path, *, report: bool = False,
           inputs: Sequence[Path] = ()) -> dict[str, Any]:
    """Both runs and the comparison into `out`, which appears whole when they have finished (or not at all);
    `inputs` (the parameter file) must not lie inside it, nor may the journal."""
    records = read_records(journal)
    try:
        with staged_dir(out, owned=WHATIF_OUTPUTS, inputs=[journal, *inputs]) as staging:
            base, base_summary = run_scenario(records, params.baseline, staging / "baseline", label="baseline")
            alt, alt_summary = run_scenario(records, params.alternative, staging / "alternative", label="alternative")
            comparison = compare(base, alt)
            write_json(staging / "comparison.json", comparison)
            if report:
                from backstop.report.html import write_report

                facts = [("input", f"{journal} ({len(records):,} records)"),
                         ("baseline head hash", base_summary["head_hash"]),
                         ("alternative head hash", alt_summary["head_hash"]),
                         ("accounts affected differently", f"{comparison['accounts_affected_differently']:,}")]
                assets = {fund_id: fund["settle_asset"] for summary in (base_summary, alt_summary)
                          for fund_id, fund in summary["funds"].items()}
                write_report(staging / "report.html", f"backstop what-if: {journal.name}",
                             [("baseline", base), ("alternative", alt)], facts, assets)
    except OutputError as error:
        raise WhatIfError(str(error)) from None
    except OSError as error:
        raise WhatIfError(f"cannot write {out}: {error.strerror or error}") from None
    return comparison


__all__ = ["DecimalStr", "PositiveDecimal", "WhatIfFile", "load_params", "whatif"]
