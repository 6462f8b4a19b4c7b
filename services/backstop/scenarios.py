"""Scenario runs, the application layer under `whatif`, `demo` and the reports: a scenario's parameters (the
[baseline]/[alternative] tables of a what-if parameter file), the input records it changes, one run of the engine
on them with its journal and outputs, and the run's metrics (RunMetrics) that the comparison tables and the HTML
report draw. No command-line concerns here: backstop.entrypoints.whatif and .demo are the commands."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from backstop.adapters.files import REPLAY_OUTPUTS, OutputDir, pretty_json, write_bytes, write_json
from backstop.adapters.journal_file import JournalFileError, read_journal
from backstop.core.adl_policy import AdlPolicy, configured
from backstop.core.adl_rounds import closed_share, needed
from backstop.core.events import fund_id_of, is_fund_account
from backstop.core.hashing import canonical_json
from backstop.core.ledger import bad_debt, isolated_owner, wallet_owner
from backstop.core.numbers import CONTEXT, money, text
from backstop.core.simulation import SimulationParams
from backstop.core.valuation import LINEAR, Valuation
from backstop.engines import (
    BatchResult,
    EngineName,
    EngineOptions,
    EngineUnavailable,
    invariant_errors,
    open_engine,
)
from backstop.wire.decode import InvalidRecord, decode_model, describe
from backstop.wire.inputs import (
    AnyRecord,
    FundRecord,
    InstrumentRecord,
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


OlderName = Literal["bitmex", "binance", "pro_rata"]


class AdlSection(_Strict):
    policy: Literal["queue", "binance", "pro_rata", "capped_pro_rata", "min_max_leverage", "socialized", "bybit",
                    "okx", "bitmex"] = "queue"
    rule: OlderName | None = None  # the policy's older name, as files spelled it
    price: Literal["bankruptcy", "mark", "floor"] | None = None
    floor: NonNegativeDecimal | None = None
    drawdown_ratio: NonNegativeDecimal | None = None
    stop_ratio: NonNegativeDecimal | None = None
    window_hours: Annotated[int, Field(strict=True), AfterValidator(_positive_hours)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_name(cls, data: Any) -> Any:
        """`rule` stands for `policy` (scenario.json then names the policy run); both at once are refused, since one
        would be dropped without a word."""
        if isinstance(data, dict) and data.get("rule") is not None:
            if data.get("policy") is not None:
                raise ValueError("give policy or rule (its older name), not both")
            if data["rule"] in get_args(OlderName):  # else refused as a rule
                data = {**data, "policy": data["rule"], "rule": None}
        return data

    def adl_policy(self) -> AdlPolicy:
        """The policy the section names; WhatIfError says what is wrong with it."""
        try:
            return configured(self.policy, price=self.price, floor=self.floor,
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
    """The parameter file, every section checked (an ADL policy's options together too); WhatIfError names the file
    and what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
        if text.startswith("\ufeff"):
            raise WhatIfError(f"bad parameter file {path}: it starts with a byte order mark (BOM); save it as UTF-8 "
                              f"without one")
        params = WhatIfFile.model_validate(tomllib.loads(text))
    except OSError as error:
        raise WhatIfError(f"cannot read parameter file {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise WhatIfError(f"bad parameter file {path}: {error}") from None
    except ValidationError as error:
        raise WhatIfError(f"bad parameter file {path}: {describe(error)}") from None
    for name in ("baseline", "alternative"):
        try:
            getattr(params, name).adl.adl_policy()
        except WhatIfError as error:
            raise WhatIfError(f"bad parameter file {path}: [{name}.adl] {error}") from None
    return params


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
        return f"funds.{fund_id_of(record.account_id)}.balance_scale"
    return record.type


def scenario_record(number: int, original: AnyRecord, scenario: Scenario, label: str) -> AnyRecord:
    """transform(), and a changed record validated by the wire contract as `backstop replay` will read it from the
    run's journal: a parameter that makes a record the contract refuses is refused here, with the reason."""
    record = transform(original, scenario)
    if record is original:
        return record
    try:
        return decode_model(wire_line(record))
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
    if isinstance(record, TransferRecord) and is_fund_account(record.account_id):
        change_f = scenario.funds.get(fund_id_of(record.account_id))
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
    fund_inventory_upnl: dict[str, Decimal] = field(default_factory=dict)  # its lots at the last marks, over cost
    liquidated_by_account: dict[str, Decimal] = field(default_factory=dict)
    deleveraged_by_account: dict[str, Decimal] = field(default_factory=dict)
    # what happened to each account that ADL or a liquidation touched, to tell runs apart: each liquidation (symbol,
    # qty), deleverage (symbol, side, qty, price) and socialized loss (fund, amount), in order
    outcomes_by_account: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    rejected: int = 0
    # per minute of event time (ms of the minute's start) -> value, for the report's charts; the notionals and
    # amounts by settlement asset first (what settles in BTC is not added to what settles in USDT)
    minute_liquidated: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    minute_deleveraged: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    minute_fund: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    minute_mark: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    minute_queue: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)  # symbol -> (longs, shorts)
    minute_haircut: dict[str, dict[int, Decimal]] = field(default_factory=dict)  # what ADL rounds took, and what
    minute_needed: dict[str, dict[int, Decimal]] = field(default_factory=dict)  # they needed
    rounds: list[RoundPoint] = field(default_factory=list)
    # the cascade's need per fund: its rounds as if it had paid every earlier deficit it could (_cascade_need), and
    # what it would have paid then beyond what it did
    fund_spared: dict[str, Decimal] = field(default_factory=dict)
    fund_cascade_needed: dict[str, Decimal] = field(default_factory=dict)
    adl: dict[str, Any] = field(default_factory=dict)  # the engine summary's `adl` (docs/design.md §11.4)
    valuations: dict[str, Valuation] = field(default_factory=dict)  # symbol -> linear or inverse, from the journal
    settle_assets: dict[str, str] = field(default_factory=dict)  # symbol -> its settlement asset, from the journal
    # the assets the liquidated notional was settled in: a sum over more than one is reported as none (null), as
    # the ADL notional is where the engine's sums are (adl_assets)
    liquidated_assets: set[str] = field(default_factory=set)

    def valuation(self, symbol: str) -> Valuation:
        return self.valuations.get(symbol, LINEAR)

    def as_json(self) -> dict[str, Any]:
        with localcontext(CONTEXT):
            return self._as_json()

    def _as_json(self) -> dict[str, Any]:
        return {
            "liquidations": self.liquidations,
            "liquidated_notional": _one_asset_sum(self.liquidated_notional, self.liquidated_assets),
            "adl_events": self.adl_events, "adl_notional": _one_asset_sum(self.adl_notional, adl_assets(self.adl)),
            "funds": {f: {"final_balance": text(self.fund_final[f]), "min_balance": text(self.fund_min[f]),
                          "max_drawdown": text(self.fund_drawdown[f]),
                          "bad_debt": text(bad_debt(self.fund_final[f])),
                          "inventory_upnl": text(self.fund_inventory_upnl.get(f, Decimal(0))),  # 0: no lots
                          "marked_balance": text(self.fund_final[f] + self.fund_inventory_upnl.get(f, Decimal(0))),
                          "cascade_needed": text(money(self.fund_cascade_needed.get(f, Decimal(0))))}
                      for f in sorted(self.fund_final)},
            "accounts_liquidated": len(self.liquidated_by_account),
            "accounts_deleveraged": len(self.deleveraged_by_account), "rejected": self.rejected, "adl": self.adl}


def _one_asset_sum(amount: Decimal, assets: set[str]) -> str | None:
    return text(money(amount)) if len(assets) <= 1 else None


# Each fund's figures in RunMetrics.as_json, and how the tables name them.
FUND_FIGURES = {"final_balance": "final balance", "min_balance": "min balance", "max_drawdown": "max drawdown",
                "bad_debt": "bad debt", "inventory_upnl": "inventory uPnL", "marked_balance": "balance at mark",
                "cascade_needed": "cascade need"}
# Each fund's own ADL sums (summary.json's adl.by_fund), which the tables add where a run's funds settle in more than
# one asset: the run's sums are none (null) there, since amounts of different assets do not add.
FUND_ADL_FIGURES = {"notional": "ADL notional", "deficit": "deficit", "needed": "needed budget",
                    "haircut": "haircut", "overshoot": "overshoot", "over_use": "over-use (haircut / needed)",
                    "socialized": "socialized loss"}


def adl_assets(adl: dict[str, Any] | None) -> set[str]:
    """The assets of the funds a run's ADL rounds were of (the engine summary's adl.by_fund): more than one, and the
    run's ADL sums are none."""
    return {fund["asset"] for fund in ((adl or {}).get("by_fund") or {}).values()}


def assets_mixed(runs: Iterable[dict[str, Any]]) -> bool:
    """Whether a run (RunMetrics.as_json) settled its ADL rounds in more than one asset."""
    return any(len(adl_assets(run.get("adl"))) > 1 for run in runs)


def run_figure(run: dict[str, Any], path: tuple[str, ...]) -> Any:
    """A figure of a run's metrics (RunMetrics.as_json), or "-" where there is none (no round); an over-use without
    a need but with a haircut taken is "all overshoot" (H / B with B = 0, design §11.4)."""
    if path == ("adl", "over_use") and run_figure(run, path[:1]) != "-" and run["adl"].get("over_use") is None \
            and run["adl"].get("haircut") not in (None, "0"):
        return "all overshoot"
    value: Any = run
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return "-"
        value = value[key]
    return value


OBSERVED_LINES = 4096  # lines handed to the engine at once between the points the metrics look at its state


def run_scenario(records: Sequence[tuple[int, AnyRecord]], scenario: Scenario, out: Path, *, label: str = "run",
                 progress: Callable[[int], None] | None = None, full_adl_metrics: bool = True,
                 engine: EngineName = "reference") -> tuple[RunMetrics, dict[str, Any]]:
    """Replay (line number, record) pairs under a scenario into `out` (the usual replay files plus journal.jsonl
    and scenario.json) on either engine. The metrics are read from what the engine wrote (its journal and outputs),
    and from its ADL queues' depth after the first mark of every minute of each symbol, so both engines give the
    same metrics when they give the same files."""
    _names_exist(records, scenario, label)
    options = EngineOptions(adl_policy=scenario.adl.adl_policy(), full_adl_metrics=full_adl_metrics, journal=True,
                            simulation=None if scenario.simulation is None else SimulationParams(
                                scenario.simulation.slippage_bps, scenario.simulation.partial,
                                scenario.simulation.market_fill))
    try:
        ledger_engine = open_engine(engine, options)
    except EngineUnavailable as error:
        raise WhatIfError(str(error)) from None
    metrics = RunMetrics()
    out.mkdir(parents=True, exist_ok=True)
    with OutputDir(out) as files, (out / "journal.jsonl").open("wb") as journal:
        def apply(lines: list[tuple[int, bytes]]) -> bytes:
            """The lines through the engine, its outputs written and observed; the journal lines it applied."""
            if not lines:
                return b""
            chunk, first = numbered_chunk(lines)
            try:
                result = ledger_engine.apply_lines(chunk, first)
            except InvalidRecord as error:
                raise WhatIfError(f"the {label} scenario's simulation, after journal line {lines[-1][0]}, decided a "
                                  f"liquidation the wire contract refuses: {error}") from None
            except invariant_errors() as error:  # a bug, never the input's fault: said in one line, not a traceback
                raise WhatIfError(f"the {label} scenario's run stopped in the {engine} engine at or before journal "
                                  f"line {lines[-1][0]}: {error}") from None
            _changes_applied(result.dead_letters, changed, label)
            files.write_batch(result.fund_ledger, result.adl_events, result.findings, result.dead_letters,
                              result.postings, result.adl_quantiles, result.adl_rounds)
            journal.write(result.journal)
            metrics.rejected += result.dead_letters.count(b"\n")
            _observe(metrics, result)
            lines.clear()
            return result.journal

        pending: list[tuple[int, bytes]] = []
        changed: dict[int, str] = {}  # line -> what of the scenario changed its record
        for done, (number, original) in enumerate(records, start=1):
            if progress is not None and done % 500 == 0:
                progress(done)
            record = scenario_record(number, original, scenario, label)
            line = wire_line(record)
            if record is not original and line != wire_line(original):
                changed[number] = _changed_by(record)
            if isinstance(record, MarkRecord) and _minute(record.ts) not in metrics.minute_queue.get(record.symbol, {}):
                apply(pending)  # the queues' depth after this mark (and what it decided) is a metric
                if apply([(number, line)]):
                    metrics.minute_queue.setdefault(record.symbol, {})[_minute(record.ts)] = (
                        ledger_engine.queue_depth(record.symbol))
                continue
            pending.append((number, line))
            if len(pending) >= OBSERVED_LINES:
                apply(pending)
        apply(pending)
    write_json(out / "scenario.json", orjson.loads(scenario.model_dump_json()))
    result = ledger_engine.summary()
    result["dead_letters"] = files.dead_letters
    metrics.adl = result["adl"]
    write_bytes(out / "summary.json", pretty_json(result))
    write_bytes(out / "accounts.json", ledger_engine.accounts_json())
    with localcontext(CONTEXT):
        for fund_id, fund in result["funds"].items():
            balance = Decimal(fund["balance"])
            metrics.fund_final[fund_id] = balance
            metrics.fund_inventory_upnl[fund_id] = Decimal(fund["inventory_upnl"])
            metrics.fund_min.setdefault(fund_id, balance)
            metrics.fund_drawdown.setdefault(fund_id, Decimal(0))
    return metrics, result


def _names_exist(records: Sequence[tuple[int, AnyRecord]], scenario: Scenario, label: str) -> None:
    """Each fund and instrument the scenario changes has a record in the journal (else the change would do
    nothing, silently)."""
    for kind, named, present in (
            ("fund", scenario.funds, {r.fund_id for _, r in records if isinstance(r, FundRecord)}),
            ("instrument", scenario.instruments, {r.symbol for _, r in records if isinstance(r, InstrumentRecord)})):
        for name in sorted(set(named) - present):
            raise WhatIfError(f"the {label} scenario changes {kind} {name}, which no {kind} record of the journal "
                              f"has (its {kind}s: {', '.join(sorted(present)) or 'none'})")


def _changes_applied(dead_letters: bytes, changed: dict[int, str], label: str) -> None:
    """A record the scenario changed that the engine then refused (a maintenance rate of 2, say) would leave a run
    of a different market, silently: refused, with the engine's reason."""
    if not changed:
        return
    for line in dead_letters.splitlines():
        letter = orjson.loads(line)
        number = letter.get("line")
        # refused for what it holds: not a duplicate, a late or an early record, which it would be unchanged too
        if number in changed and letter.get("kind") in ("invalid", "rejected"):
            raise WhatIfError(f"the {label} scenario's {changed[number]} makes journal line {number} a record the "
                              f"engine refuses: {letter['reason']}")


def numbered_chunk(lines: Sequence[tuple[int, bytes]]) -> tuple[bytes, int]:
    """Numbered lines (ascending) as one chunk of journal lines and the number of its first: a gap in the numbers
    (a line read_records left out) is a blank line, so every line keeps its number in the outputs."""
    first = expected = lines[0][0]
    parts: list[bytes] = []
    for number, line in lines:
        parts.extend(b"" for _ in range(number - expected))
        parts.append(line)
        expected = number + 1
    return b"\n".join(parts) + b"\n", first


def _minute(ts: int) -> int:
    return ts - ts % 60_000


def _observe(metrics: RunMetrics, result: BatchResult) -> None:
    with localcontext(CONTEXT):  # exact sums and products, as the engine's (a default context rounds wide ones)
        _observe_exactly(metrics, result)


def _lines(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in raw.splitlines()]


def _counted_deficit(round_: dict[str, Any]) -> Decimal | None:
    """The deficit of a round (its adl-rounds.jsonl record) that a run counts, as summary.json's `adl` does (§11.4):
    none without a taker (a retry of the same lot), and of a round that closed part of what it asked for, that
    part's (its pro-rata share, §9.4)."""
    if not round_["counterparties"]:
        return None
    wanted = None if round_["qty"] is None else Decimal(round_["qty"])
    return closed_share(Decimal(round_["deficit"]), wanted, Decimal(round_["closed"]))


def _cascade_need(metrics: RunMetrics, round_: dict[str, Any], deficit: Decimal) -> None:
    """A round's need had its fund paid every earlier round's deficit it could. A round at the bankruptcy price does
    not debit the fund (at the mark, or at Bybit's reset, it pays some or all of it), so each round's own `needed`
    is taken at a balance that still holds what the rounds before it did not pay, and their sum understates what
    the fund could not have paid over a cascade. Here a fund's room is its balance at the round above its floor less
    what it would have paid before beyond what it did (min(D, room) less D - haircut, each earlier round); the
    deficit D of a round that closed part of what it asked for is that part's (its pro-rata share, §9.4:
    `deficit`, _counted_deficit's)."""
    fund_id = round_["fund_id"]
    spared = metrics.fund_spared.get(fund_id, Decimal(0))
    room = max(Decimal(round_["fund_balance"]) - Decimal(round_["floor"]) - spared, Decimal(0))
    metrics.fund_cascade_needed[fund_id] = (metrics.fund_cascade_needed.get(fund_id, Decimal(0))
                                            + max(deficit - room, Decimal(0)))
    paid = max(deficit - Decimal(round_["haircut"]), Decimal(0))  # what the fund bore of it: the takers took the rest
    metrics.fund_spared[fund_id] = spared + min(deficit, room) - paid


def _add(series: dict[str, dict[int, Decimal]], asset: str, minute: int, value: Decimal) -> None:
    by_minute = series.setdefault(asset, {})
    by_minute[minute] = by_minute.get(minute, Decimal(0)) + value


def _observe_exactly(metrics: RunMetrics, result: BatchResult) -> None:
    """The batch's journal and outputs into the metrics; each output counts in the minute of its ts (its record's)."""
    for record in _lines(result.journal):
        minute = _minute(record["ts"])
        if record["type"] == "instrument":  # notionals are V(qty, price): qty x price, or inverse (§7)
            size = record.get("contract_size") if record.get("contract_type") == "inverse" else None
            metrics.valuations[record["symbol"]] = Valuation(None if size is None else Decimal(size))
            metrics.settle_assets[record["symbol"]] = record["settle_asset"]
        elif record["type"] == "mark":
            metrics.minute_mark.setdefault(record["symbol"], {})[minute] = Decimal(record["mark_price"])
        elif record["type"] == "liquidation":
            qty = Decimal(record["qty"])
            notional = metrics.valuation(record["symbol"]).value(qty, Decimal(record["mark_price"]))
            asset = metrics.settle_assets.get(record["symbol"], "")
            _add(metrics.minute_liquidated, asset, minute, notional)
            metrics.liquidations += 1
            metrics.liquidated_notional += notional
            metrics.liquidated_assets.add(asset)
            account = record["account_id"]
            metrics.liquidated_by_account[account] = metrics.liquidated_by_account.get(account, Decimal(0)) + qty
            metrics.outcomes_by_account.setdefault(account, []).append(
                ("liquidated", record["symbol"], record.get("position_side", "both"), record["qty"]))
    for event in _lines(result.adl_events):
        minute, qty = _minute(event["ts"]), Decimal(event["qty"])
        notional = metrics.valuation(event["symbol"]).reported_value(qty, Decimal(event["price"]))
        metrics.adl_events += 1
        metrics.adl_notional += notional
        account = event["account_id"]
        metrics.deleveraged_by_account[account] = metrics.deleveraged_by_account.get(account, Decimal(0)) + qty
        metrics.outcomes_by_account.setdefault(account, []).append(
            ("deleveraged", event["symbol"], event.get("position_side", "both"), event["qty"], event["price"]))
        _add(metrics.minute_deleveraged, metrics.settle_assets.get(event["symbol"], ""), minute, notional)
    for round_ in _lines(result.adl_rounds):
        minute, asset = _minute(round_["ts"]), metrics.settle_assets.get(round_["symbol"], "")
        _add(metrics.minute_haircut, asset, minute, Decimal(round_["haircut"]))
        counted = _counted_deficit(round_)
        if counted is not None:  # a round without a taker counts nothing (a retry of the same lot)
            # the need the tables sum: of the deficit counted, at the round's balance
            need = needed(counted, Decimal(round_["fund_balance"]), Decimal(round_["floor"]))
            _add(metrics.minute_needed, asset, minute, need)
            _cascade_need(metrics, round_, counted)
        eligible = round_["leverage"]["eligible"]
        hits = round_["hits"] or ()
        metrics.rounds.append(RoundPoint(
            round_["ts"], tuple(Decimal(hit["leverage"]) for hit in hits if hit["leverage"] is not None),
            (Decimal(eligible["p10"]), Decimal(eligible["p50"]), Decimal(eligible["p90"]))
            if eligible is not None and eligible["count"] else None))
    for entry in _lines(result.fund_ledger):
        fund_id, balance = entry["fund_id"], Decimal(entry["balance_after"])
        before = balance - Decimal(entry["amount"])
        if entry["kind"] == "socialized_loss":  # from a wallet or an isolated margin account
            counter = entry["counter_account"]
            account = wallet_owner(counter) or isolated_owner(counter)
            metrics.outcomes_by_account.setdefault(account, []).append(("socialized_loss", fund_id, entry["amount"]))
        peak = max(metrics.fund_peak.get(fund_id, before), balance)  # from the balance before the first, as §11.4
        metrics.fund_peak[fund_id] = peak
        metrics.fund_min[fund_id] = min(metrics.fund_min.get(fund_id, balance), balance)
        metrics.fund_drawdown[fund_id] = max(metrics.fund_drawdown.get(fund_id, Decimal(0)), peak - balance)
        metrics.minute_fund.setdefault(fund_id, {})[_minute(entry["ts"])] = balance


def read_records(path: Path, left_out: list[tuple[int, str]] | None = None) -> list[tuple[int, AnyRecord]]:
    """(line number, record) of every valid record of the journal; each line that is not one goes to `left_out`,
    (line number, reason): a what-if compares what the engine does with valid input, and its caller says what it
    left out (replay dead-letters such lines)."""
    try:
        lines = read_journal(path)
    except JournalFileError as error:
        raise WhatIfError(str(error)) from None
    records = []
    for number, raw in lines:
        try:
            records.append((number, decode_model(raw)))
        except InvalidRecord as error:
            if left_out is not None:
                left_out.append((number, str(error)))
    return records


