//! Simulation mode (backstop.core.simulation): the engine decides liquidations itself, for counterfactual replays.
//!
//! After every applied mark, each position of that symbol whose account is liquidatable (margin balance <=
//! maintenance margin, the exact check of `Engine::margin_view`) is liquidated at that mark, in (account id,
//! position side) order by name: partially, down to the next lower maintenance bracket, when its notional is above
//! the first bracket (the rest waits for the next mark), else entirely. The order fills at the mark moved against
//! the position by `slippage_bps` (rounded to the tick, adversely), for the `market_fill` part of it (whole lots;
//! the fund takes the rest). The log's own liquidations are dropped. Each decided liquidation is an ordinary journal
//! record (id `sim-<seq>`), written as the reference writes it (pydantic's model_dump, canonical), decoded by the
//! wire layer and applied like any input line, so a simulated run is itself a journal that replay reproduces.
//!
//! Every position is checked exactly: the reference's float prefilter is a shortcut of its own and decides nothing.

use crate::canonical::{self, J};
use crate::engine::Engine;
use crate::numbers::{add, div_round, mul, pow10, sub, wide_mul, Rounding, S18, S8};
use crate::state::{Instrument, Position};
use crate::wire::PositionSide;
use ethnum::I256;

/// The largest PRICE the wire admits (docs/design.md section 9.2), at 1e-8: a fill price the engine writes.
const LARGEST_PRICE: i128 = 999_999_999_999_999_999;
/// Basis points in one.
const BPS: u32 = 4;

/// The parameters of a simulated run (backstop.core.simulation.SimulationParams): rates at 1e-18.
#[derive(Clone, Copy, Debug)]
pub struct Simulation {
    /// >= 0, below 10,000
    pub slippage_bps: i128,
    pub partial: bool,
    /// the part of each liquidation order the market absorbs, 0..1; the fund takes the rest
    pub market_fill: i128,
}

impl Default for Simulation {
    fn default() -> Simulation {
        Simulation { slippage_bps: 0, partial: true, market_fill: crate::numbers::pow10_i128(S18) }
    }
}

/// The positions of a symbol in the order the simulation visits them: by account id, then position side, as
/// names (the reference sorts its (account_id, position_side) keys).
pub fn visiting_order(engine: &Engine, symbol: u32) -> Vec<(u32, PositionSide)> {
    let mut keys = engine.positions.holders(symbol).to_vec();
    keys.sort_unstable_by(|a, b| {
        (engine.names.name(a.0), a.1.name()).cmp(&(engine.names.name(b.0), b.1.name()))
    });
    keys
}

/// Whether any position of the symbol is liquidatable now. The visit liquidates nothing when none is (nothing
/// changes the state between its checks then), so it need not sort them.
pub fn any_liquidatable(engine: &Engine, symbol: u32) -> bool {
    engine.positions.holders(symbol).iter().any(|&(account, side)| {
        engine.positions.get(account, symbol, side).is_some_and(|p| engine.margin_view(p).liquidatable())
    })
}

/// What a partial liquidation keeps of a position: as many whole lots as fit under `ceiling` (the next lower
/// bracket's max_notional, money at 1e-8) at the mark, FLOOR(ceiling / (mark x lot_size)) x lot_size, or for an
/// inverse contract FLOOR(ceiling x mark / (contract_size x lot_size)) x lot_size; at most the position's size (a
/// tiny contract size can make the count of lots pass 128 bits). The one place this is computed, as
/// backstop.core.simulation.keep is in the reference.
pub fn keep(instrument: &Instrument, mark: i128, ceiling: i128, size: i128) -> i128 {
    let lots = match instrument.valuation.contract_size {
        // ceiling at 1e-8 over mark x lot at 1e-16: the count of lots is ceiling x 10^8 / (mark x lot)
        None => div_round(mul(I256::new(ceiling), pow10(S8)), wide_mul(mark, instrument.lot_size), Rounding::Floor),
        // ceiling x mark at 1e-16 over contract_size x lot at 1e-16
        Some(size) => div_round(wide_mul(ceiling, mark), wide_mul(size, instrument.lot_size), Rounding::Floor),
    };
    crate::numbers::narrow(mul(lots, I256::new(instrument.lot_size)).min(I256::new(size)))
}

/// numerator (at `scale`) rounded once to a whole multiple of step (at 1e-8) in the direction given; at 1e-8.
fn whole_steps(numerator: I256, scale: u32, step: i128, rounding: Rounding) -> i128 {
    let steps = div_round(numerator, mul(I256::new(step), pow10(scale - S8)), rounding);
    crate::numbers::mul128(crate::numbers::narrow(steps), step)
}

impl Simulation {
    /// The liquidation order the simulation places for a liquidatable position at the mark in force, as its
    /// journal line (canonical JSON, no newline); `seq` is the seq it will be applied at.
    pub fn order(&self, engine: &Engine, position: &Position, ts: u64, seq: u64) -> Vec<u8> {
        let instrument = &engine.instruments[&position.symbol];
        let mark = engine.marks[&position.symbol];
        let size = position.size();
        let mut qty = size;
        if self.partial {
            let notional = instrument.valuation.value_wide(size, mark); // 1e-16: V(size, mark)
            let unit = pow10(S8);
            let tiers = &instrument.tiers;
            let tier = tiers
                .iter()
                .find(|tier| notional <= mul(I256::new(tier.max_notional), unit))
                .unwrap_or_else(|| tiers.last().expect("an instrument has tiers"));
            let lower = tiers.iter().rfind(|t| t.max_notional < tier.max_notional);
            if let Some(lower) = lower {
                qty = (size - keep(instrument, mark, lower.max_notional, size)).max(instrument.lot_size);
            }
        }
        // mark +- mark x bps / 10^4, exact at 1e-30, rounded to the tick against the position
        let scale = S8 + S18 + BPS;
        let at_mark = mul(I256::new(mark), pow10(S18 + BPS));
        let slip = wide_mul(mark, self.slippage_bps);
        let fill = if position.qty > 0 {
            whole_steps(sub(at_mark, slip), scale, instrument.tick_size, Rounding::Floor) // the order sells
        } else {
            whole_steps(add(at_mark, slip), scale, instrument.tick_size, Rounding::Ceiling)
        };
        let highest = whole_steps(I256::new(LARGEST_PRICE), S8, instrument.tick_size, Rounding::Floor);
        let fill = fill.max(instrument.tick_size).min(highest);
        let filled = whole_steps(wide_mul(qty, self.market_fill), S8 + S18, instrument.lot_size, Rounding::Floor);
        let id = format!("sim-{seq}");
        let executions = if filled > 0 {
            vec![J::Obj(vec![("price", J::Dec(fill, S8)), ("qty", J::Dec(filled, S8))])]
        } else {
            Vec::new()
        };
        let line = J::Obj(vec![
            ("account_id", J::Str(engine.names.name(position.account))),
            ("bankruptcy_price", J::Null),
            ("executions", J::Arr(executions)),
            ("liquidation_id", J::Str(&id)),
            ("mark_price", J::Dec(mark, S8)),
            ("position_side", J::Str(position.position_side.name())),
            ("qty", J::Dec(qty, S8)),
            ("symbol", J::Str(engine.names.name(position.symbol))),
            ("ts", J::Int(ts as i128)),
            ("type", J::Str("liquidation")),
        ]);
        let mut out = Vec::with_capacity(256);
        canonical::write(&mut out, &line);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Tier;
    use crate::valuation::{Valuation, LINEAR};

    fn instrument(tick: i128, lot: i128) -> Instrument {
        Instrument { symbol: 0, settle_asset: 0, tick_size: tick, lot_size: lot,
                     tiers: vec![Tier { max_notional: 50_000 * 100_000_000, mmr: 0, maint_amount: 0 }],
                     liquidation_fee_rate: 0, fund_id: 0, mark_tolerance: 0, valuation: LINEAR }
    }

    const E8: i128 = 100_000_000;

    #[test]
    fn keep_is_the_whole_lots_under_the_ceiling() {
        // 50,000 at a mark of 30,000 with lots of 0.001: 1.666 BTC
        let (lot, size) = (100_000, 1_000_000 * E8);
        assert_eq!(keep(&instrument(1, lot), 30_000 * E8, 50_000 * E8, size), 1_666 * lot);
        // exactly on a lot: kept whole
        assert_eq!(keep(&instrument(1, lot), 25_000 * E8, 50_000 * E8, size), 2_000 * lot);
        // never more than the position holds
        assert_eq!(keep(&instrument(1, lot), 25_000 * E8, 50_000 * E8, 3 * lot), 3 * lot);
    }

    #[test]
    fn an_inverse_keep_counts_contracts_worth_the_ceiling() {
        // 2 BTC at a mark of 30,000 in contracts of 100 USD, lots of 1: 2 x 30,000 / 100 = 600 contracts
        let inverse = Instrument { valuation: Valuation { contract_size: Some(100 * E8) }, ..instrument(1, E8) };
        assert_eq!(keep(&inverse, 30_000 * E8, 2 * E8, 10_000 * E8), 600 * E8);
        // 2.0001 BTC: 600.003 contracts, floored to whole lots
        assert_eq!(keep(&inverse, 30_000 * E8, 200_010_000, 10_000 * E8), 600 * E8);
        // a contract of 1e-8 USD at the largest price: the count of lots is far past 128 bits; kept: the size
        let tiny = Instrument { valuation: Valuation { contract_size: Some(1) }, ..instrument(1, 1) };
        assert_eq!(keep(&tiny, 999_999_999_999_999_999, 10i128.pow(23), 5 * E8), 5 * E8);
    }

    #[test]
    fn whole_steps_rounds_once_in_the_direction_given() {
        // 100.5 at 1e-30 to ticks of 0.5 (1e-8): exact; 100.7 floors to 100.5, ceils to 101
        let at = |value: i128| mul(I256::new(value), pow10(22));
        assert_eq!(whole_steps(at(10_050_000_000), 30, 50_000_000, Rounding::Floor), 10_050_000_000);
        assert_eq!(whole_steps(at(10_070_000_000), 30, 50_000_000, Rounding::Floor), 10_050_000_000);
        assert_eq!(whole_steps(at(10_070_000_000), 30, 50_000_000, Rounding::Ceiling), 10_100_000_000);
    }
}
