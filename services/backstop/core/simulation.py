"""Simulation mode: the engine decides liquidations itself, for counterfactual replays.

After every mark, each position of that symbol whose account is liquidatable (margin balance <= maintenance
margin) is liquidated at that mark, in account order: partially, down to the next lower maintenance bracket,
when its notional is above the first bracket (the rest waits for the next mark), else entirely. The liquidation
order fills at the mark moved against the position by `slippage_bps` (rounded to the tick, adversely), for the
`market_fill` part of it (in whole lots; the rest stays with the insurance fund, or is deleveraged). The log's
own liquidation events are dropped. Every decided liquidation is an ordinary journal record (id `sim-<seq>`), so
a simulated run is itself a journal that `backstop replay` reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, localcontext

from backstop.core.hashing import canonical_json
from backstop.core.margin import bracket
from backstop.core.numbers import CONTEXT, LARGEST_PRICE, ONE, text, whole_steps
from backstop.core.processor import Applied, Outcome, Processor
from backstop.core.state import Position
from backstop.wire.decode import decode_record
from backstop.wire.inputs import AnyRecord, LiquidationRecord, MarkRecord


@dataclass(frozen=True, slots=True)
class SimulationParams:
    slippage_bps: Decimal = Decimal(0)
    partial: bool = True
    market_fill: Decimal = Decimal(1)  # the part of each liquidation order the market absorbs; the fund takes the rest


class Simulator:
    def __init__(self, processor: Processor, params: SimulationParams) -> None:
        self.processor = processor
        self.params = params
        self.dropped_liquidations = 0

    def process(self, record: AnyRecord) -> list[tuple[AnyRecord, Outcome]]:
        """The record's outcome, then those of the liquidations it triggered (each with its record)."""
        if isinstance(record, LiquidationRecord):
            self.dropped_liquidations += 1
            return []
        outcome = self.processor.process(record)
        results: list[tuple[AnyRecord, Outcome]] = [(record, outcome)]
        if isinstance(record, MarkRecord) and isinstance(outcome, Applied):
            results.extend(self._liquidate(record.symbol, record.ts))
        return results

    def _liquidate(self, symbol: str, ts: int) -> list[tuple[AnyRecord, Outcome]]:
        engine = self.processor.engine
        results: list[tuple[AnyRecord, Outcome]] = []
        with localcontext(CONTEXT):
            for key in sorted(engine.by_symbol[symbol]):  # (account, position_side): hedge sides one by one
                position = engine.by_symbol[symbol].get(key)
                if position is None or not engine.margin_view(position).liquidatable:
                    continue
                record = self._order(position, ts)
                results.append((record, self.processor.process(record)))
        return results

    def _order(self, position: Position, ts: int) -> LiquidationRecord:
        engine = self.processor.engine
        instrument = engine.instruments[position.symbol]
        mark = engine.marks[position.symbol]
        qty = position.size
        if self.params.partial:
            tier = bracket(instrument.tiers, position.size * mark)
            lower = [t.max_notional for t in instrument.tiers if t.max_notional < tier.max_notional]
            if lower:  # step down one bracket: keep what fits under the next lower bracket's ceiling
                keep = whole_steps(lower[-1], mark, instrument.lot_size)
                qty = max(position.size - keep, instrument.lot_size)
        slip = (mark * self.params.slippage_bps).scaleb(-4)  # basis points: exact
        if position.qty > 0:  # the order sells: below the mark, rounded down to the tick
            fill = whole_steps(mark - slip, ONE, instrument.tick_size)
        else:
            fill = whole_steps(mark + slip, ONE, instrument.tick_size, ROUND_CEILING)
        fill = min(max(fill, instrument.tick_size), whole_steps(LARGEST_PRICE, ONE, instrument.tick_size))
        filled = whole_steps(qty * self.params.market_fill, ONE, instrument.lot_size)
        record = decode_record(canonical_json({
            "type": "liquidation", "ts": ts, "liquidation_id": f"sim-{engine.last_seq + 1}",
            "account_id": position.account_id, "symbol": position.symbol, "qty": text(qty), "mark_price": text(mark),
            "executions": [{"qty": text(filled), "price": text(fill)}] if filled > 0 else [],
            **({} if position.position_side == "both" else {"position_side": position.position_side})}))
        assert isinstance(record, LiquidationRecord)
        return record
