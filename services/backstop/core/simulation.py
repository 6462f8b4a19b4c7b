"""Simulation mode: the engine decides liquidations itself, for counterfactual replays.

After every mark, each position of that symbol whose account is liquidatable (margin balance <= maintenance
margin) is liquidated at that mark, in account order: partially, down to the next lower maintenance bracket,
when its notional is above the first bracket (the rest waits for the next mark), else entirely. The liquidation
order fills at the mark moved against the position by `slippage_bps` (rounded to the tick, adversely), for the
`market_fill` part of it (in whole lots; the rest stays with the insurance fund, or is deleveraged). The log's
own liquidation events are dropped. Every decided liquidation is an ordinary journal record (id `sim-<seq>`), so
a simulated run is itself a journal that `backstop replay` reproduces.

Checking every position's margin exactly after every mark is most of a simulated run's time, so a position that
stands alone in its account (isolated, or the account's only position) is first checked in floats: when its equity
exceeds its maintenance margin by far more than float error and the margin's rounding could close, it is not
liquidatable and the exact check is skipped. A float notional close to a bracket's edge always gets the exact
check. The decisions are the exact check's (a test runs both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext

from backstop.core import ledger
from backstop.core.events import Event, Execution, LiquidationEvent, MarkEvent
from backstop.core.margin import bracket
from backstop.core.numbers import CONTEXT, LARGEST_PRICE, ONE, text, whole_steps
from backstop.core.processor import Applied, Outcome, Processor
from backstop.core.state import Instrument, Position


@dataclass(frozen=True, slots=True)
class SimulationParams:
    slippage_bps: Decimal = Decimal(0)
    partial: bool = True
    market_fill: Decimal = Decimal(1)  # the part of each liquidation order the market absorbs; the fund takes the rest


FLOAT_SLACK = 1e-9  # relative to the size of the terms: floats are within ~1e-15 of the exact values
MONEY_SLACK = 1e-7  # and the maintenance margin is rounded to 1e-8


def surely_safe(position: Position, mark: float, margin: float, tiers: tuple[tuple[float, float, float], ...]) -> bool:
    """True when the position's equity (margin + uPnL) is above its maintenance margin at the mark by more than any
    float error or rounding: it is then certainly not liquidatable. `margin`: its isolated margin, or the wallet
    of an account holding no other position; `tiers`: (max_notional, mmr, maint_amount) as floats."""
    size, cost = float(position.size), float(position.cost)
    notional = size * mark
    equity = margin + (notional - cost if position.qty > 0 else cost - notional)
    maintenance = None
    for ceiling, mmr, maint_amount in tiers:
        if abs(notional - ceiling) <= FLOAT_SLACK * ceiling:
            return False  # which bracket it is in is for the exact check to say
        if notional <= ceiling:
            maintenance = notional * mmr - maint_amount
            break
    if maintenance is None:
        ceiling, mmr, maint_amount = tiers[-1]
        maintenance = notional * mmr - maint_amount
    slack = FLOAT_SLACK * (abs(margin) + notional + cost) + MONEY_SLACK
    return equity - max(maintenance, 0.0) > slack


def keep(instrument: Instrument, mark: Decimal, ceiling: Decimal) -> Decimal:
    """What a partial liquidation keeps of a position: the whole lots that fit under `ceiling` (the next lower
    bracket's max_notional) at the mark, FLOOR(ceiling / (mark x lot_size)) x lot_size, or for an inverse contract
    FLOOR(ceiling x mark / (contract_size x lot_size)) x lot_size. The one place this is computed, as
    crate::simulation::keep is in the compiled engine."""
    return instrument.valuation.qty_of(ceiling, mark, instrument.lot_size, ROUND_FLOOR)


DecidedCheck = Callable[[LiquidationEvent], LiquidationEvent]


class Simulator:
    """`contract`: what a decided liquidation passes through before it is applied, as every input record does (the
    application gives the wire contract's check, backstop.wire.decode.through_contract, so that the run's journal
    replays); None: applied as decided."""

    def __init__(self, processor: Processor, params: SimulationParams, *, prefilter: bool = True,
                 contract: DecidedCheck | None = None) -> None:
        self.processor = processor
        self.params = params
        self.prefilter = prefilter  # the float check before the exact one (off: every position checked exactly)
        self.contract = contract
        self.dropped_liquidations = 0

    def process(self, record: Event) -> list[tuple[Event, Outcome]]:
        """The record's outcome, then those of the liquidations it triggered (each with its record)."""
        if isinstance(record, LiquidationEvent):
            self.dropped_liquidations += 1
            return []
        outcome = self.processor.process(record)
        results: list[tuple[Event, Outcome]] = [(record, outcome)]
        if isinstance(record, MarkEvent) and isinstance(outcome, Applied):
            results.extend(self._liquidate(record.symbol, record.ts))
        return results

    def _liquidate(self, symbol: str, ts: int) -> list[tuple[Event, Outcome]]:
        engine = self.processor.engine
        results: list[tuple[Event, Outcome]] = []
        instrument = engine.instruments[symbol]
        tiers = tuple((float(t.max_notional), float(t.mmr), float(t.maint_amount)) for t in instrument.tiers)
        mark = float(engine.marks[symbol])
        with localcontext(CONTEXT):
            for key in sorted(engine.by_symbol[symbol]):  # (account, position_side): hedge sides one by one
                position = engine.by_symbol[symbol].get(key)
                if position is None:
                    continue
                account_id = position.account_id
                if self.prefilter and not instrument.valuation.inverse and (
                        position.margin_mode == "isolated" or len(engine.positions.of(account_id)) == 1):
                    margin = engine.ledger.balance(ledger.isolated(account_id, symbol, position.position_side)
                                                   if position.margin_mode == "isolated"
                                                   else ledger.wallet(account_id, instrument.settle_asset))
                    if surely_safe(position, mark, float(margin), tiers):
                        continue
                if not engine.margin_view(position).liquidatable:
                    continue
                record = self._order(position, ts)
                results.append((record, self.processor.process(record)))
        return results

    def _order(self, position: Position, ts: int) -> LiquidationEvent:
        engine = self.processor.engine
        instrument = engine.instruments[position.symbol]
        mark = engine.marks[position.symbol]
        qty = position.size
        if self.params.partial:
            tier = bracket(instrument.tiers, instrument.valuation.value(position.size, mark))
            lower = [t.max_notional for t in instrument.tiers if t.max_notional < tier.max_notional]
            if lower:  # step down one bracket: keep what fits under the next lower bracket's ceiling
                qty = max(position.size - keep(instrument, mark, lower[-1]), instrument.lot_size)
        slip = (mark * self.params.slippage_bps).scaleb(-4)  # basis points: exact
        if position.qty > 0:  # the order sells: below the mark, rounded down to the tick
            fill = whole_steps(mark - slip, ONE, instrument.tick_size)
        else:
            fill = whole_steps(mark + slip, ONE, instrument.tick_size, ROUND_CEILING)
        fill = min(max(fill, instrument.tick_size), whole_steps(LARGEST_PRICE, ONE, instrument.tick_size))
        filled = whole_steps(qty * self.params.market_fill, ONE, instrument.lot_size)
        # each decimal as the journal line writes it and a replay reads it back
        record = LiquidationEvent(
            ts, f"sim-{engine.last_seq + 1}", position.account_id, position.symbol, Decimal(text(qty)),
            Decimal(text(mark)),
            executions=(Execution(Decimal(text(filled)), Decimal(text(fill))),) if filled > 0 else (),
            position_side=position.position_side)
        return record if self.contract is None else self.contract(record)
