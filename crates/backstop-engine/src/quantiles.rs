//! ADL quantiles and risk levels on the wire (backstop.core.quantiles, docs/design.md section 10, "ADL quantiles
//! and risk levels"): at the first applied event of each later period of event time, every open position is ranked
//! as a deleverage would rank it, and a record is published for each position whose quantile changed and each symbol
//! whose risk level changed.

use crate::adl::Rule;
use crate::canonical::{self, J};
use crate::engine::{quantile, Engine, Outputs, Ranked, SCHEMA_VERSION};
use crate::ledger::Account;
use crate::numbers::{sub, text_512, wadd, wide, wide256, wmul, wpow10, wrescale, wsub, Rounding, Wide, S16, S8};
use bnum::cast::As;
use crate::state::Side;
use crate::wire::{MarginMode, PositionSide};
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
    pub capacity: Wide,
    pub stressed_long: I256,
    pub stressed_short: I256,
}

/// Every position of one symbol and side ranked exactly (Engine::adl_queue).
pub fn side_view(engine: &Engine, symbol: u32, side: Side) -> SideView {
    let Some(&mark) = engine.marks.get(&symbol) else { return SideView::default() };
    let queue = engine.adl_queue(symbol, side);
    let count = queue.len();
    let mut view = SideView { ranks: Vec::with_capacity(count), stressed_size: 0 };
    let inverse = engine.instruments[&symbol].valuation.inverse();
    for (index, ranked) in queue.iter().enumerate() {
        view.ranks.push((ranked.account, index + 1, quantile(index + 1, count) as u8));
        if is_stressed(ranked, mark, side, inverse) {
            view.stressed_size += ranked.size;
        }
    }
    view
}

/// What the fund can still take over before the takeover rule deleverages, at least 0 (1e-26).
/// Derived from a balance: 512 bits (docs/design.md section 9.3).
pub fn capacity(engine: &Engine, fund: u32) -> Wide {
    // the room above the ADL policy's floor (section 11)
    let balance = sub(engine.ledger.balance(Account::Fund(fund)), I256::new(engine.policy.floor));
    if balance <= 0 {
        return Wide::ZERO;
    }
    let state = &engine.funds[&fund];
    let limit = wmul(wide(state.spec.max_inventory_ratio), wide256(balance)); // 1e-18 x 1e-8
    let room = wsub(limit, wmul(wide256(engine.inventory_notional(state)), wpow10(10))); // 1e-16 -> 1e-26
    room.max(Wide::ZERO)
}

/// Every symbol's risk (sorted by name) from the views of its two sides.
pub fn risks(engine: &Engine, views: &[(u32, [SideView; 2])]) -> Vec<(u32, Risk)> {
    let mut capacities: Vec<(u32, Wide)> = Vec::new();
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
        let mark = engine.marks.get(symbol).copied();
        let valuation = engine.instruments[symbol].valuation;
        // V(stressed size, mark), 1e-16: one rounding per side for an inverse contract
        let notional = |view: &SideView| mark.map_or(I256::ZERO, |mark| valuation.value_wide(view.stressed_size, mark));
        let (stressed_long, stressed_short) = (notional(&sides[0]), notional(&sides[1]));
        let stressed = wmul(wide256(stressed_long.max(stressed_short)), wpow10(10)); // 1e-26
        let level = if room == Wide::ZERO || stressed >= room {
            "high"
        } else if wadd(stressed, stressed) >= room {
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
    // each side ranked on a core of its own: they only read the state
    let mut views = crate::parallel::map(2 * symbols.len(), crate::parallel::threads(), |index| {
        side_view(engine, symbols[index / 2], SIDES[index % 2])
    }).into_iter();
    symbols.into_iter().map(|symbol| (symbol, [(); 2].map(|()| views.next().expect("two sides a symbol")))).collect()
}

// ------------------------------------------------------------------ quantile points without ranking everyone

/// The same with every position ranked exactly, as the ADL policy ranks (any rule but BitMEX's, whose score the
/// float rows stand for).
fn side_changes_exact(engine: &Engine, symbol: u32, side: Side) -> (Vec<(u32, PositionSide, u8)>, i128) {
    let view = side_view(engine, symbol, side);
    let changes = view.ranks.iter().filter_map(|&(account, _, quantile)| {
        let position = engine.position_on(account, symbol, side).expect("a ranked position");
        (position.adl_quantile != quantile).then_some((account, position.position_side, quantile))
    }).collect();
    (changes, view.stressed_size)
}

/// The float margins of backstop.core.adl_index: a float score within RELATIVE_MARGIN x |score| + ABSOLUTE_MARGIN
/// of the exact one; equity within `bound` of zero (or of the stress threshold) decided exactly.
const RELATIVE_MARGIN: f64 = 1e-6;
const ABSOLUTE_MARGIN: f64 = 1e-6;
const UNTRUSTED_EQUITY: f64 = 1e-6;
const ROUNDING_SLACK: f64 = 1e-8 * 2.0 / RELATIVE_MARGIN;

fn spread(key: f64) -> f64 {
    key.abs() * RELATIVE_MARGIN + ABSOLUTE_MARGIN
}

/// A row of a group: its account, its key (float score, or uPnL / cost past bankruptcy), and its exact rank where
/// it was computed.
struct Row {
    account: u32,
    position_side: PositionSide,
    key: f64,
    exact: Option<Ranked>,
}

/// The quantiles of one symbol and side at a quantile point, as backstop.core.quantile_index computes them (see
/// there why the result is the exact ranking's): (account, quantile) of every position whose quantile differs from
/// the one published for it (and its position side), and the summed size of its stressed positions.
pub fn side_changes(engine: &Engine, symbol: u32, side: Side) -> (Vec<(u32, PositionSide, u8)>, i128) {
    // the float rows stand for BitMEX's score of a linear contract
    if engine.policy.rule != Rule::Bitmex || engine.instruments[&symbol].valuation.inverse() {
        return side_changes_exact(engine, symbol, side);
    }
    let Some(&mark) = engine.marks.get(&symbol) else { return (Vec::new(), 0) };
    let mark_float = mark as f64 / 1e8;
    let asset = engine.instruments[&symbol].settle_asset;
    let mut groups: [Vec<Row>; 2] = [Vec::new(), Vec::new()];
    let mut stressed: i128 = 0;
    for &(account, position_side) in engine.positions.holders(symbol) {
        let position = engine.positions.get(account, symbol, position_side).expect("indexed");
        if position.side() != side {
            continue;
        }
        let cross = position.margin_mode == MarginMode::Cross;
        // another cross position in the asset (another symbol, or the other hedge side): the index ranks it exactly
        let apart = cross && engine.positions.keys_of(account).iter().any(|&(other, other_side)| {
            (other, other_side) != (symbol, position_side) && engine.positions.get(account, other, other_side)
                .is_some_and(|p| p.margin_mode == MarginMode::Cross && engine.instruments[&other].settle_asset == asset)
        });
        let base = if cross {
            engine.ledger.balance(Account::Wallet { account, asset })
        } else {
            engine.ledger.balance(Account::Isolated { account, symbol, side: position_side })
        };
        let (size, cost, base) = (position.size() as f64 / 1e8, position.cost as f64 / 1e16, base.as_f64() / 1e8);
        let notional = size * mark_float;
        let upnl = if side == Side::Long { notional - cost } else { cost - notional };
        let equity = base + upnl;
        let bound = if position.cost <= 0 {
            f64::INFINITY
        } else {
            (UNTRUSTED_EQUITY * (base.abs() + notional + cost)).max(ROUNDING_SLACK * (1.0 + size))
        };
        if apart || equity.abs() <= bound {
            let ranked = engine.rank(position);
            if is_stressed(&ranked, mark, side, false) {
                stressed += ranked.size;
            }
            let key = ranked.score.as_::<f64>() / 1e12;
            groups[usize::from(ranked.past_bankruptcy)].push(Row { account, position_side, key, exact: Some(ranked) });
        } else if equity > bound {
            let ratio = upnl / cost;
            let leverage = notional / equity;
            let key = if ratio >= 0.0 { ratio * leverage } else { ratio / leverage };
            let (clearly, clearly_not) = (STRESS_LEVERAGE as f64 * equity + 11.0 * bound < notional,
                                          STRESS_LEVERAGE as f64 * equity - 11.0 * bound > notional);
            if clearly || (!clearly_not && is_stressed(&engine.rank(position), mark, side, false)) {
                stressed += position.size();
            }
            groups[0].push(Row { account, position_side, key, exact: None });
        } else {
            stressed += position.size(); // clearly past its bankruptcy price
            groups[1].push(Row { account, position_side, key: upnl / cost, exact: None });
        }
    }
    let count = groups[0].len() + groups[1].len();
    let mut changes = Vec::new();
    let mut offset = 0;
    for (past, rows) in groups.iter_mut().enumerate() {
        let quantiles = group_quantiles(engine, symbol, rows, offset, count, past == 1);
        offset += rows.len();
        for (row, quantile) in rows.iter().zip(quantiles) {
            if engine.positions.get(row.account, symbol, row.position_side).expect("indexed").adl_quantile != quantile {
                changes.push((row.account, row.position_side, quantile));
            }
        }
    }
    (changes, stressed)
}

/// Effective leverage STRESS_LEVERAGE or more, or past its own (rounded) bankruptcy price: within 1/STRESS_LEVERAGE
/// of the mark (an inverse contract: of its BP, its leverage being BP / distance).
fn is_stressed(ranked: &Ranked, mark: i128, side: Side, inverse: bool) -> bool {
    let distance = if side == Side::Long { wsub(wide(mark), ranked.bankruptcy) } else { wsub(ranked.bankruptcy, wide(mark)) };
    wmul(distance, wide(STRESS_LEVERAGE)) <= if inverse { ranked.bankruptcy } else { wide(mark) }
}

/// The quantile of every row of a group ranked after `offset` others (of `count`): floats where they decide, the
/// exact ranking at the (at most four) places where the quantile changes.
fn group_quantiles(engine: &Engine, symbol: u32, rows: &mut [Row], offset: usize, count: usize, past: bool) -> Vec<u8> {
    let n = rows.len();
    let mut cuts: Vec<usize> = (1..5)
        .map(|band| (band * count).div_ceil(5))
        .filter(|&first| first > offset && first - offset < n)
        .map(|first| first - 1 - offset)
        .collect();
    cuts.dedup();
    let mut after = vec![0usize; n];
    let mut position: Vec<Option<usize>> = vec![None; n];
    let mut scratch: Vec<f64> = Vec::with_capacity(n);
    for &cut in &cuts {
        scratch.clear();
        scratch.extend(rows.iter().map(|row| row.key));
        let (_, &mut above, rest) = scratch.select_nth_unstable_by(cut, |a, b| b.total_cmp(a));
        let below = rest.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (mut low, mut high) = (below - spread(below), above + spread(above));
        let members = loop {
            let members: Vec<usize> = (0..n)
                .filter(|&i| rows[i].key + spread(rows[i].key) >= low && rows[i].key - spread(rows[i].key) <= high)
                .collect();
            let wider_low = members.iter().map(|&i| rows[i].key - spread(rows[i].key)).fold(f64::INFINITY, f64::min);
            let wider_high = members.iter().map(|&i| rows[i].key + spread(rows[i].key)).fold(f64::NEG_INFINITY, f64::max);
            if wider_low >= low && wider_high <= high {
                break members;
            }
            (low, high) = (low.min(wider_low), high.max(wider_high));
        };
        let first = rows.iter().filter(|row| row.key - spread(row.key) > high).count();
        for &i in &members {
            if rows[i].exact.is_none() {
                let position = engine.positions.get(rows[i].account, symbol, rows[i].position_side).expect("indexed");
                rows[i].exact = Some(engine.rank(position));
            }
            let exact = rows[i].exact.as_ref().expect("ranked");
            assert!(exact.past_bankruptcy == past, "a row's float score put it on the wrong side of its bankruptcy price");
        }
        let mut ordered = members.clone();
        let names = &engine.names;
        ordered.sort_by(|&a, &b| {
            let (a, b) = (rows[a].exact.as_ref().expect("ranked"), rows[b].exact.as_ref().expect("ranked"));
            (-a.score, -a.size).cmp(&(-b.score, -b.size)).then_with(|| names.name(a.account).cmp(names.name(b.account)))
        });
        for (place, &i) in ordered.iter().enumerate() {
            position[i] = Some(first + place);
        }
        for (i, row) in rows.iter().enumerate() {
            if row.key + spread(row.key) < low {
                after[i] += 1;
            }
        }
    }
    (0..n).map(|i| {
        let place = position[i].unwrap_or_else(|| if after[i] == 0 { 0 } else { cuts[after[i] - 1] + 1 });
        quantile(offset + place + 1, count) as u8
    }).collect()
}

/// Reported money of an exact amount at `scale` (HALF_EVEN to 1e-8), as text: a capacity derives from a balance
/// and may need more than 256 bits.
pub fn reported(value: Wide, scale: u32) -> String {
    text_512(wrescale(value, scale, S8, Rounding::HalfEven), S8)
}

/// The records of a quantile point (the event in hand just applied): per symbol in order, its risk level if it
/// changed, then per side the positions whose quantile changed, by account id.
pub fn publish(engine: &mut Engine, out: &mut Outputs) {
    let mut symbols: Vec<u32> = engine.instruments.keys().copied().collect();
    symbols.sort_by(|a, b| engine.names.name(*a).cmp(engine.names.name(*b)));
    let mut views: Vec<(u32, [SideView; 2])> = Vec::with_capacity(symbols.len());
    let mut all_changes: Vec<[Vec<(u32, PositionSide, u8)>; 2]> = Vec::with_capacity(symbols.len());
    for &symbol in &symbols {
        let [(long, long_stressed), (short, short_stressed)] = SIDES.map(|side| side_changes(engine, symbol, side));
        views.push((symbol, [SideView { ranks: Vec::new(), stressed_size: long_stressed },
                             SideView { ranks: Vec::new(), stressed_size: short_stressed }]));
        all_changes.push([long, short]);
    }
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
    for (((symbol, _), (_, risk)), changes) in views.iter().zip(found).zip(all_changes) {
        if engine.risk_levels.get(symbol) != Some(&risk.level) {
            engine.risk_levels.insert(*symbol, risk.level);
            let fields = vec![
                ("kind", J::Str("risk")),
                ("symbol", J::Str(engine.names.name(*symbol))),
                ("fund_id", J::Str(engine.names.name(risk.fund))),
                ("risk_level", J::Str(risk.level)),
                ("capacity", J::Owned(reported(risk.capacity, 26))),
                ("stressed_notional_long", J::Owned(reported(wide256(risk.stressed_long), S16))),
                ("stressed_notional_short", J::Owned(reported(wide256(risk.stressed_short), S16))),
            ];
            write(fields, out);
        }
        for (side_changes, side) in changes.iter().zip(SIDES) {
            let mut changed: Vec<(u32, u8)> = closes.iter()
                .filter(|(_, s, d)| s == symbol && *d == side)
                .map(|(account, _, _)| (*account, 0))
                .collect();
            for &(account, position_side, quantile) in side_changes {
                let position = engine.positions.get_mut(account, *symbol, position_side).expect("a ranked position");
                position.adl_quantile = quantile;
                changed.push((account, quantile));
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
