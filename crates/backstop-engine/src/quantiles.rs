//! ADL quantiles and risk levels on the wire (backstop.core.quantiles, docs/design.md section 10, "ADL quantiles
//! and risk levels"): at the first applied event of each later period of event time, every open position is ranked
//! as a deleverage would rank it, and a record is published for each position whose quantile changed and each symbol
//! whose risk level changed.

use crate::canonical::{self, J};
use crate::engine::{quantile, Engine, Outputs, SCHEMA_VERSION};
use crate::ledger::Account;
use crate::numbers::{add, mul, pow10, rescale, sub, Rounding, S16, S8};
use crate::state::Side;
use ethnum::I256;

/// The quantile period of event time, in ms (as Binance updates its quantile estimates).
pub const QUANTILE_PERIOD_MS: u64 = 30_000;
/// A position within 1/STRESS_LEVERAGE of the mark of its bankruptcy price is stressed.
pub const STRESS_LEVERAGE: i128 = 10;
const SIDES: [Side; 2] = [Side::Long, Side::Short];

/// Whether an event at `ts`, applied after events whose newest ts was `newest_before`, is a quantile point.
pub fn crosses_period(newest_before: Option<u64>, ts: u64) -> bool {
    newest_before.is_some_and(|newest| ts / QUANTILE_PERIOD_MS > newest / QUANTILE_PERIOD_MS)
}

/// One symbol and side as the engine ranks it now: (account, rank, quantile) in queue order, and the summed size
/// (1e-8) of its stressed positions.
#[derive(Default, Debug)]
pub struct SideView {
    pub ranks: Vec<(u32, usize, u8)>,
    pub stressed_size: i128,
}

/// A symbol's ADL risk: its fund, the level, the fund's capacity (1e-26, >= 0), the stressed notionals (1e-16).
#[derive(Debug)]
pub struct Risk {
    pub fund: u32,
    pub level: &'static str,
    pub capacity: I256,
    pub stressed_long: I256,
    pub stressed_short: I256,
}

/// Every position of one symbol and side ranked exactly (Engine::adl_queue).
pub fn side_view(engine: &Engine, symbol: u32, side: Side) -> SideView {
    let Some(&mark) = engine.marks.get(&symbol) else { return SideView::default() };
    let queue = engine.adl_queue(symbol, side);
    let count = queue.len();
    let mut view = SideView { ranks: Vec::with_capacity(count), stressed_size: 0 };
    for (index, ranked) in queue.iter().enumerate() {
        view.ranks.push((ranked.account, index + 1, quantile(index + 1, count) as u8));
        let distance = if side == Side::Long { mark - ranked.bankruptcy } else { ranked.bankruptcy - mark };
        if distance * STRESS_LEVERAGE <= mark {
            view.stressed_size += ranked.size;
        }
    }
    view
}

/// What the fund can still take over before the takeover rule deleverages, at least 0 (1e-26).
pub fn capacity(engine: &Engine, fund: u32) -> I256 {
    let balance = engine.ledger.balance(Account::Fund(fund));
    if balance <= 0 {
        return I256::ZERO;
    }
    let state = &engine.funds[&fund];
    let limit = mul(I256::new(state.spec.max_inventory_ratio), balance); // 1e-18 x 1e-8
    let room = sub(limit, mul(engine.inventory_notional(state), pow10(10))); // 1e-16 -> 1e-26
    room.max(I256::ZERO)
}

/// Every symbol's risk (sorted by name) from the views of its two sides.
pub fn risks(engine: &Engine, views: &[(u32, [SideView; 2])]) -> Vec<(u32, Risk)> {
    let mut capacities: Vec<(u32, I256)> = Vec::new();
    views.iter().map(|(symbol, sides)| {
        let fund = engine.instruments[symbol].fund_id;
        let room = match capacities.iter().find(|(f, _)| *f == fund) {
            Some((_, room)) => *room,
            None => {
                let room = capacity(engine, fund);
                capacities.push((fund, room));
                room
            }
        };
        let mark = engine.marks.get(symbol).copied().unwrap_or(0);
        let notional = |view: &SideView| crate::numbers::wide_mul(view.stressed_size, mark); // 1e-16
        let (stressed_long, stressed_short) = (notional(&sides[0]), notional(&sides[1]));
        let stressed = mul(stressed_long.max(stressed_short), pow10(10)); // 1e-26
        let level = if room == 0 || stressed >= room {
            "high"
        } else if add(stressed, stressed) >= room {
            "medium"
        } else {
            "low"
        };
        (*symbol, Risk { fund, level, capacity: room, stressed_long, stressed_short })
    }).collect()
}

/// Both sides of every instrument's symbol, symbols sorted by name.
pub fn views_now(engine: &Engine) -> Vec<(u32, [SideView; 2])> {
    let mut symbols: Vec<u32> = engine.instruments.keys().copied().collect();
    symbols.sort_by(|a, b| engine.names.name(*a).cmp(engine.names.name(*b)));
    symbols.into_iter().map(|symbol| (symbol, SIDES.map(|side| side_view(engine, symbol, side)))).collect()
}

/// Reported money of an exact amount at `scale` (HALF_EVEN to 1e-8).
fn reported(value: I256, scale: u32) -> I256 {
    rescale(value, scale, S8, Rounding::HalfEven)
}

/// The records of a quantile point (the event in hand just applied): per symbol in order, its risk level if it
/// changed, then per side the positions whose quantile changed, by account id.
pub fn publish(engine: &mut Engine, out: &mut Outputs) {
    let views = views_now(engine);
    let found = risks(engine, &views);
    let closes: Vec<(u32, u32, Side)> = engine.quantile_closes.drain().map(|(key, _)| key).collect();
    let (seq, ts) = (engine.seq, engine.ts);
    let mut written = 0;
    let mut write = |fields: Vec<(&str, J<'_>)>, out: &mut Outputs| {
        let id = format!("aq-{seq}-{written}");
        let mut fields = fields;
        fields.extend([
            ("schema_version", J::Int(SCHEMA_VERSION)),
            ("id", J::Str(&id)),
            ("seq", J::Int(seq as i128)),
            ("ts", J::Int(ts as i128)),
        ]);
        canonical::write(&mut out.adl_quantiles, &J::Obj(fields));
        out.adl_quantiles.push(b'\n');
        out.quantile_count += 1;
        written += 1;
    };
    for ((symbol, sides), (_, risk)) in views.iter().zip(found) {
        if engine.risk_levels.get(symbol) != Some(&risk.level) {
            engine.risk_levels.insert(*symbol, risk.level);
            let fields = vec![
                ("kind", J::Str("risk")),
                ("symbol", J::Str(engine.names.name(*symbol))),
                ("fund_id", J::Str(engine.names.name(risk.fund))),
                ("risk_level", J::Str(risk.level)),
                ("capacity", J::Wide(reported(risk.capacity, 26), S8)),
                ("stressed_notional_long", J::Wide(reported(risk.stressed_long, S16), S8)),
                ("stressed_notional_short", J::Wide(reported(risk.stressed_short, S16), S8)),
            ];
            write(fields, out);
        }
        for (view, side) in sides.iter().zip(SIDES) {
            let mut changed: Vec<(u32, u8)> = closes.iter()
                .filter(|(_, s, d)| s == symbol && *d == side)
                .map(|(account, _, _)| (*account, 0))
                .collect();
            for &(account, _, quantile) in &view.ranks {
                let position = engine.positions.get_mut(account, *symbol).expect("a ranked position");
                if position.adl_quantile != quantile {
                    position.adl_quantile = quantile;
                    changed.push((account, quantile));
                }
            }
            changed.sort_by(|a, b| engine.names.name(a.0).cmp(engine.names.name(b.0)));
            for (account, quantile) in changed {
                let fields = vec![
                    ("kind", J::Str("quantile")),
                    ("account_id", J::Str(engine.names.name(account))),
                    ("symbol", J::Str(engine.names.name(*symbol))),
                    ("side", J::Str(side.name())),
                    ("quantile", if quantile == 0 { J::Null } else { J::Int(i128::from(quantile)) }),
                ];
                write(fields, out);
            }
        }
    }
}
