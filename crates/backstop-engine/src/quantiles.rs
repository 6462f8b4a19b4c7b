//! ADL quantiles and risk levels on the wire (backstop.core.quantiles, docs/design.md section 10, "ADL quantiles
//! and risk levels"): at the first applied event of each later period of event time, every open position is ranked
//! as a deleverage would rank it, and a record is published for each position whose quantile changed and each symbol
//! whose risk level changed.

use crate::adl::Rule;
use crate::adl_index::Row as IndexRow;
use crate::adl_index::{FLOAT_ERROR, RELATIVE_MARGIN, ROUNDING_SLACK, UNTRUSTED_EQUITY};
use crate::canonical::{self, write_int, J};
use crate::json::write_string;
use crate::engine::{exposure_at, quantile, Engine, Outputs, Ranked, SCHEMA_VERSION};
use crate::ledger::Account;
use crate::numbers::{add, sub, text_512, wadd, wide, wide256, wmul, wpow10, wrescale, wsub, Rounding, Wide, S16, S8};
use bnum::cast::As;
use crate::state::Side;
use crate::wire::PositionSide;
use ethnum::I256;
use rustc_hash::FxHashMap;

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

/// A position whose published quantile a quantile point changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub account: u32,
    pub position_side: PositionSide,
    pub quantile: u8,
}

/// The same with every position ranked exactly, as the ADL policy ranks (any rule but BitMEX's, whose score the
/// float rows stand for).
fn side_changes_exact(engine: &Engine, symbol: u32, side: Side) -> (Vec<Change>, i128) {
    let view = side_view(engine, symbol, side);
    let changes = view.ranks.iter().filter_map(|&(account, _, quantile)| {
        let position = engine.position_on(account, symbol, side).expect("a ranked position");
        (position.adl_quantile != quantile).then_some(Change { account, position_side: position.position_side, quantile })
    }).collect();
    (changes, view.stressed_size)
}

// The float margins of crate::adl_index, as backstop.core.quantile_index uses them: equity within `bound` of zero
// (or of the stress threshold) is decided exactly; beyond it a float score lies within RELATIVE_MARGIN x |score|
// (the rounded bankruptcy price and equity share), SCORE_ERROR (the quantum of an exact score) and the
// cancellation in uPnL = notional - cost (FLOAT_ERROR of notional + cost), which a leverage (or its inverse) scales.
/// The quantum an exact score is rounded to.
const SCORE_ERROR: f64 = 1e-12;

/// A row of a group: its account, its key (float score, or uPnL / cost past bankruptcy), how far its exact score
/// can lie from the key, and the quantile last published for its position.
struct Row {
    account: u32,
    key: f64,
    spread: f64,
    published: u8,
}

/// An apart row's uPnL (1e-16) and maintenance margin (1e-8), and the place of its account's totals.
type ApartRow = (i128, i128, u32);

/// The rows the index keeps apart (cross positions of accounts with cross positions in several symbols of one
/// asset), valued exactly once a quantile point from the index's rows: per book, (uPnL at 1e-16, maintenance margin
/// at 1e-8, its account's totals) of each such row in slot order; per account and asset, its cross margin balance
/// and summed maintenance margin (Engine::cross_totals), as doubles.
#[derive(Default)]
pub struct Apart {
    exposures: FxHashMap<(u32, bool), Vec<ApartRow>>,
    totals: Vec<(f64, f64)>,
}

impl Apart {
    /// From the index's rows (refreshed first); the sums are exact, so the books' order does not matter.
    pub fn of(engine: &Engine) -> Apart {
        let mut places: FxHashMap<(u32, u32), u32> = FxHashMap::default(); // (account, asset) -> its sums
        let mut sums: Vec<(Wide, I256)> = Vec::new();
        let mut exposures = FxHashMap::default();
        for (symbol, side, book) in engine.adl_index.all_rows() {
            let instrument = &engine.instruments[&symbol];
            let asset = instrument.settle_asset;
            let mut rows = Vec::new();
            for slot in (0..book.slots()).filter(|&slot| book.row(slot) == IndexRow::Apart) {
                let account = book.account(slot);
                let (pnl, maintenance) = exposure_at(instrument, engine.marks[&symbol], side == Side::Long,
                                                     book.exact_size(slot), book.exact_cost(slot));
                let place = *places.entry((account, asset)).or_insert_with(|| {
                    let wallet = book.wallet(slot).map_or_else(|| engine.ledger.balance(Account::Wallet { account, asset }),
                                                               I256::new);
                    sums.push((wmul(wide256(wallet), wpow10(S16 - S8)), I256::ZERO));
                    (sums.len() - 1) as u32
                });
                let sum = &mut sums[place as usize];
                *sum = (wadd(sum.0, wide(pnl)), add(sum.1, I256::new(maintenance)));
                rows.push((pnl, maintenance, place));
            }
            if !rows.is_empty() {
                exposures.insert((symbol, side == Side::Long), rows);
            }
        }
        let totals = sums.into_iter()
            .map(|(balance, maintenance)| (balance.as_::<f64>() / 1e16, maintenance.as_f64() / 1e8))
            .collect();
        Apart { exposures, totals }
    }
}

/// One row's numbers as doubles: what stands for the distance to its bankruptcy price times its size (its equity,
/// or for a cross position of several symbols its share of the account's margin balance), the bound within which
/// that is decided exactly, its uPnL, cost and notional, and its exact size (1e-8).
struct Floats {
    equity: f64,
    bound: f64,
    upnl: f64,
    cost: f64,
    notional: f64,
    size: i128,
}

/// The quantiles of one symbol and side at a quantile point, from the ADL index's rows (the index refreshed first)
/// as backstop.core.quantile_index computes them (see there why the result is the exact ranking's): every position
/// whose quantile differs from the one published for it, and the summed size of its stressed positions.
///
/// Beyond the reference, the positions the index keeps apart (cross positions of an account with cross positions
/// in several symbols of one asset) are scored in doubles too: their equity share, margin balance x own
/// maintenance / total maintenance (rounded up to 1e-8), from the account's exact totals, computed once a point; so
/// the exact work is the boundaries' few rows wherever the accounts trade.
pub fn side_changes(engine: &Engine, symbol: u32, side: Side, apart: &Apart) -> (Vec<Change>, i128) {
    let instrument = &engine.instruments[&symbol];
    // the float rows stand for BitMEX's score of a linear contract
    if engine.policy.rule != Rule::Bitmex || instrument.valuation.inverse() {
        return side_changes_exact(engine, symbol, side);
    }
    let (Some(&mark), Some(book)) = (engine.marks.get(&symbol), engine.adl_index.rows(symbol, side)) else {
        return (Vec::new(), 0);
    };
    debug_assert_eq!(book.count(), engine.positions.holders(symbol).iter()
        .filter(|&&(account, held)| engine.positions.get(account, symbol, held).is_some_and(|p| p.side() == side))
        .count());
    let mark_float = mark as f64 / 1e8;
    let (asset, valuation) = (instrument.settle_asset, instrument.valuation);
    let position_of = |account: u32| engine.position_on(account, symbol, side).expect("a row's position");
    let mut apart_exposures = apart.exposures.get(&(symbol, side == Side::Long)).map_or(&[][..], Vec::as_slice).iter();
    let mut groups: [Vec<Row>; 2] = [Vec::with_capacity(book.count()), Vec::new()];
    let mut stressed: i128 = 0;
    for slot in 0..book.slots() {
        let account = book.account(slot);
        let floats = match book.row(slot) {
            IndexRow::Empty => continue,
            IndexRow::Scored => {
                let (size, cost, base) = book.floats(slot);
                let notional = size * mark_float;
                let upnl = if side == Side::Long { notional - cost } else { cost - notional };
                let bound = if cost <= 0.0 {
                    f64::INFINITY
                } else {
                    (UNTRUSTED_EQUITY * (base.abs() + notional + cost)).max(ROUNDING_SLACK * (1.0 + size))
                };
                Floats { equity: base + upnl, bound, upnl, cost, notional, size: book.exact_size(slot) }
            }
            IndexRow::Apart => {
                let &(pnl, own, place) = apart_exposures.next().expect("an exposure per apart row");
                let (balance, maintenance) = apart.totals[place as usize];
                debug_assert_eq!(engine.exposure(position_of(account)), (pnl, own));
                debug_assert_eq!(engine.cross_totals(account, asset).0.as_::<f64>() / 1e16, balance);
                let (exact_size, exact_cost) = (book.exact_size(slot), book.exact_cost(slot));
                let (size, cost) = (exact_size as f64 / 1e8, exact_cost as f64 / 1e16);
                let notional = valuation.value(exact_size, mark) as f64 / 1e16;
                // each double the exact value rounded once, so the share is within a few of its ulps, and the exact
                // share (rounded up to 1e-8) within 1e-8 more: far inside the bound
                let share = if maintenance == 0.0 { balance } else { balance * (own as f64 / 1e8) / maintenance };
                let bound = if exact_cost <= 0 {
                    f64::INFINITY
                } else {
                    (UNTRUSTED_EQUITY * (balance.abs() + notional + cost)).max(ROUNDING_SLACK * (1.0 + size))
                };
                Floats { equity: share, bound, upnl: pnl as f64 / 1e16, cost, notional, size: exact_size }
            }
        };
        let published = book.published(slot);
        let Floats { equity, bound, upnl, cost, notional, size } = floats;
        if equity > bound {
            let per_cost = 1.0 / cost;
            let ratio = upnl * per_cost;
            let (leverage, inverse) = (notional / equity, equity / notional);
            let key = ratio * if ratio >= 0.0 { leverage } else { inverse };
            if key.is_finite() {
                let (clearly, clearly_not) = (STRESS_LEVERAGE as f64 * equity + 11.0 * bound < notional,
                                              STRESS_LEVERAGE as f64 * equity - 11.0 * bound > notional);
                if clearly || (!clearly_not && is_stressed(&engine.rank(position_of(account)), mark, side, false)) {
                    stressed += size;
                }
                let cancellation = FLOAT_ERROR * (notional + cost) * per_cost * leverage.max(inverse);
                let spread = key.abs() * RELATIVE_MARGIN + SCORE_ERROR + cancellation;
                groups[0].push(Row { account, key, spread, published });
                continue;
            }
        } else if equity < -bound && (upnl / cost).is_finite() {
            stressed += size; // clearly past its bankruptcy price
            let key = upnl / cost; // its exact score is uPnL / cost, no bankruptcy price in it
            let spread = key.abs() * FLOAT_ERROR + SCORE_ERROR + FLOAT_ERROR * (notional + cost) / cost;
            groups[1].push(Row { account, key, spread, published });
            continue;
        }
        // too close to zero (or to a double's range) to trust: ranked exactly
        let ranked = engine.rank(position_of(account));
        if is_stressed(&ranked, mark, side, false) {
            stressed += ranked.size;
        }
        let key = ranked.score.as_::<f64>() / 1e12;
        let spread = key.abs() * FLOAT_ERROR;
        groups[usize::from(ranked.past_bankruptcy)].push(Row { account, key, spread, published });
    }
    let count = groups[0].len() + groups[1].len();
    let mut changes = Vec::new();
    let mut offset = 0;
    for (past, rows) in groups.iter().enumerate() {
        let exact = |account: u32| engine.rank(position_of(account));
        let name_order = |a: u32, b: u32| engine.names.name(a).cmp(engine.names.name(b));
        let quantiles = group_quantiles(rows, (offset, count), past == 1, exact, name_order);
        offset += rows.len();
        for (row, quantile) in rows.iter().zip(quantiles) {
            if row.published != quantile {
                let position_side = position_of(row.account).position_side;
                changes.push(Change { account: row.account, position_side, quantile });
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
///
/// The rows are split by key at the cuts, highest first (selection, not a sort): segment s holds the places from
/// one after cut s - 1 to cut s. At a cut, the hull [low, high] of the intervals (key ± spread: the exact score
/// lies in it) of the lowest key before it and the highest after it widens over every row whose interval meets it until none more does: those
/// rows' exact scores lie in the hull, every other row's outside it, above or below. So the run is ranked exactly
/// after the rows above it, and a row in no run is certainly in its segment's band. A segment whose intervals all
/// miss the hull (its least low and greatest high tell) is not looked into.
/// `exact` ranks an account's position exactly, `name_order` orders two accounts by id (the queue's last key).
fn group_quantiles(rows: &[Row], (offset, count): (usize, usize), past: bool, exact: impl Fn(u32) -> Ranked,
                   name_order: impl Fn(u32, u32) -> std::cmp::Ordering) -> Vec<u8> {
    let n = rows.len();
    let mut cuts: Vec<usize> = (1..5)
        .map(|band| (band * count).div_ceil(5))
        .filter(|&first| first > offset && first - offset < n)
        .map(|first| first - 1 - offset)
        .collect();
    cuts.dedup();
    if cuts.is_empty() {
        // one band (or no row at all, and perhaps no position in the side: no quantile to compute)
        return if n == 0 { Vec::new() } else { vec![quantile(offset + 1, count) as u8; n] };
    }
    let mut order: Vec<(f64, u32)> = rows.iter().enumerate().map(|(i, row)| (row.key, i as u32)).collect();
    let starts: Vec<usize> = std::iter::once(0).chain(cuts.iter().map(|cut| cut + 1)).collect();
    split_at_places(&mut order, &starts[1..]);
    let low: Vec<f64> = order.iter().map(|&(key, i)| key - rows[i as usize].spread).collect();
    let high: Vec<f64> = order.iter().map(|&(key, i)| key + rows[i as usize].spread).collect();
    let segment = |s: usize| starts[s]..starts.get(s + 1).copied().unwrap_or(n);
    // per segment: the places of its lowest and highest key, its least low and greatest high
    let bounds: Vec<(usize, usize, f64, f64)> = (0..starts.len()).map(|s| {
        let first = starts[s];
        segment(s).fold((first, first, f64::INFINITY, f64::NEG_INFINITY), |(lowest, highest, least, greatest), at| {
            let key = order[at].0;
            (if key < order[lowest].0 { at } else { lowest }, if key > order[highest].0 { at } else { highest },
             least.min(low[at]), greatest.max(high[at]))
        })
    }).collect();
    let mut place: Vec<Option<usize>> = vec![None; n]; // exact places, by row
    let mut run: Vec<usize> = Vec::new();
    for c in 0..cuts.len() {
        let (above, below) = (bounds[c].0, bounds[c + 1].1); // the lowest key before the cut, the highest after
        let (mut hull_low, mut hull_high) = (low[above].min(low[below]), high[above].max(high[below]));
        let first = loop {
            run.clear();
            let (mut wider_low, mut wider_high) = (hull_low, hull_high);
            let mut first = 0;
            for (s, &(_, _, least_low, greatest_high)) in bounds.iter().enumerate() {
                if greatest_high < hull_low || least_low > hull_high {
                    first += if s <= c { segment(s).len() } else { 0 }; // all above the hull, or all below it
                    continue;
                }
                for at in segment(s) {
                    if low[at] > hull_high {
                        first += 1;
                    } else if high[at] >= hull_low {
                        run.push(at);
                        (wider_low, wider_high) = (wider_low.min(low[at]), wider_high.max(high[at]));
                    }
                }
            }
            if (wider_low, wider_high) == (hull_low, hull_high) {
                break first;
            }
            (hull_low, hull_high) = (wider_low, wider_high);
        };
        let mut members: Vec<(usize, Ranked)> = run.iter().map(|&at| {
            let i = order[at].1 as usize;
            (i, exact(rows[i].account))
        }).collect();
        for (_, ranked) in &members {
            assert!(ranked.past_bankruptcy == past, "a row's float score put it on the wrong side of its bankruptcy price");
        }
        members.sort_by(|(_, a), (_, b)| {
            (-a.score, -a.size).cmp(&(-b.score, -b.size)).then_with(|| name_order(a.account, b.account))
        });
        for (at, (i, _)) in members.iter().enumerate() {
            place[*i] = Some(first + at);
        }
    }
    let mut quantiles = vec![0u8; n];
    for (s, &start) in starts.iter().enumerate() {
        // a row in no run is certainly in its segment's band
        let band = quantile(offset + start + 1, count) as u8;
        for at in segment(s) {
            let i = order[at].1 as usize;
            quantiles[i] = place[i].map_or(band, |place| quantile(offset + place + 1, count) as u8);
        }
    }
    quantiles
}

/// Reorder `order` (key, row) so that, for each place p of `places` (ascending), the keys before p are all at
/// least those from p on: the cuts of a selection, in about two passes over the rows.
fn split_at_places(order: &mut [(f64, u32)], places: &[usize]) {
    if places.is_empty() {
        return;
    }
    let middle = places.len() / 2;
    let at = places[middle];
    order.select_nth_unstable_by(at, |a, b| b.0.total_cmp(&a.0));
    let (before, after) = order.split_at_mut(at);
    split_at_places(before, &places[..middle]);
    let later: Vec<usize> = places[middle + 1..].iter().map(|place| place - at).collect();
    split_at_places(after, &later);
}

/// A quantile record, as canonical::write writes its object (keys sorted), without building it: the account and
/// the id's place among the point's records, then the point's parts (QuantileParts) around the quantile.
fn write_quantile_record(out: &mut Vec<u8>, account: &str, written: usize, quantile: u8, parts: &QuantileParts) {
    out.extend_from_slice(b"{\"account_id\":");
    write_string(out, account);
    out.extend_from_slice(&parts.id);
    write_int(out, written as i128);
    out.extend_from_slice(b"\",\"kind\":\"quantile\",\"quantile\":");
    if quantile == 0 {
        out.extend_from_slice(b"null");
    } else {
        write_int(out, i128::from(quantile));
    }
    out.extend_from_slice(&parts.tail);
}

/// What a point's quantile records of one symbol and side share: the id up to its place, and the fields after the
/// quantile.
struct QuantileParts {
    id: Vec<u8>,
    tail: Vec<u8>,
}

impl QuantileParts {
    fn new(seq: u64, ts: u64, side: Side, symbol: &str) -> QuantileParts {
        let mut id = b",\"id\":\"aq-".to_vec();
        write_int(&mut id, i128::from(seq));
        id.push(b'-');
        let mut tail = b",\"schema_version\":".to_vec();
        write_int(&mut tail, SCHEMA_VERSION);
        tail.extend_from_slice(b",\"seq\":");
        write_int(&mut tail, i128::from(seq));
        tail.extend_from_slice(b",\"side\":");
        write_string(&mut tail, side.name());
        tail.extend_from_slice(b",\"symbol\":");
        write_string(&mut tail, symbol);
        tail.extend_from_slice(b",\"ts\":");
        write_int(&mut tail, i128::from(ts));
        tail.extend_from_slice(b"}\n");
        QuantileParts { id, tail }
    }
}

/// Reported money of an exact amount at `scale` (HALF_EVEN to 1e-8), as text: a capacity derives from a balance
/// and may need more than 256 bits.
pub fn reported(value: Wide, scale: u32) -> String {
    text_512(wrescale(value, scale, S8, Rounding::HalfEven), S8)
}

/// The records of a quantile point (the event in hand just applied): per symbol in order, its risk level if it
/// changed, then per side the positions whose quantile changed, by account id.
pub fn publish(engine: &mut Engine, out: &mut Outputs) {
    if engine.policy.rule == Rule::Bitmex {
        engine.adl_index.refresh(&engine.positions, &mut engine.ledger, &engine.instruments);
    }
    let mut symbols: Vec<u32> = engine.instruments.keys().copied().collect();
    symbols.sort_by(|a, b| engine.names.name(*a).cmp(engine.names.name(*b)));
    let mut views: Vec<(u32, [SideView; 2])> = Vec::with_capacity(symbols.len());
    let mut all_changes: Vec<[Vec<Change>; 2]> = Vec::with_capacity(symbols.len());
    let apart = if engine.policy.rule == Rule::Bitmex { Apart::of(engine) } else { Apart::default() };
    for &symbol in &symbols {
        let (long, long_stressed) = side_changes(engine, symbol, Side::Long, &apart);
        let (short, short_stressed) = side_changes(engine, symbol, Side::Short, &apart);
        views.push((symbol, [SideView { ranks: Vec::new(), stressed_size: long_stressed },
                             SideView { ranks: Vec::new(), stressed_size: short_stressed }]));
        all_changes.push([long, short]);
    }
    let found = risks(engine, &views);
    let closes: Vec<(u32, u32, Side)> = engine.quantile_closes.drain().map(|(key, _)| key).collect();
    let (seq, ts) = (engine.seq, engine.ts);
    let mut written = 0;
    for (((symbol, _), (_, risk)), changes) in views.iter().zip(found).zip(all_changes) {
        if engine.risk_levels.get(symbol) != Some(&risk.level) {
            engine.risk_levels.insert(*symbol, risk.level);
            let id = format!("aq-{seq}-{written}");
            let fields = vec![
                ("kind", J::Str("risk")),
                ("symbol", J::Str(engine.names.name(*symbol))),
                ("fund_id", J::Str(engine.names.name(risk.fund))),
                ("risk_level", J::Str(risk.level)),
                ("capacity", J::Owned(reported(risk.capacity, 26))),
                ("stressed_notional_long", J::Owned(reported(wide256(risk.stressed_long), S16))),
                ("stressed_notional_short", J::Owned(reported(wide256(risk.stressed_short), S16))),
                ("schema_version", J::Int(SCHEMA_VERSION)),
                ("id", J::Str(&id)),
                ("seq", J::Int(seq as i128)),
                ("ts", J::Int(ts as i128)),
            ];
            canonical::write(&mut out.adl_quantiles, &J::Obj(fields));
            out.adl_quantiles.push(b'\n');
            out.quantile_count += 1;
            written += 1;
        }
        for (side_changes, side) in changes.iter().zip(SIDES) {
            let mut changed: Vec<(u32, u8)> = closes.iter()
                .filter(|(_, s, d)| s == symbol && *d == side)
                .map(|(account, _, _)| (*account, 0))
                .collect();
            for &Change { account, position_side, quantile } in side_changes {
                let position = engine.positions.get_mut(account, *symbol, position_side).expect("a ranked position");
                position.adl_quantile = quantile;
                engine.adl_index.set_published(*symbol, side, account, quantile);
                changed.push((account, quantile));
            }
            let names = &engine.names;
            changed.sort_by(|a, b| names.name(a.0).cmp(names.name(b.0)));
            let parts = QuantileParts::new(seq, ts, side, names.name(*symbol));
            for (account, quantile) in changed {
                write_quantile_record(&mut out.adl_quantiles, names.name(account), written, quantile, &parts);
                out.quantile_count += 1;
                written += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::Processor;
    use std::collections::BTreeMap;

    struct Random(u64);

    impl Random {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    const SETUP: &str = concat!(
        r#"{"type":"fund","ts":1,"fund_id":"F","settle_asset":"USDT","surplus":"fund","max_inventory_ratio":"1"}"#, "\n",
        r#"{"type":"fund","ts":1,"fund_id":"COIN","settle_asset":"BTC","surplus":"fund","max_inventory_ratio":"1"}"#, "\n",
        r#"{"type":"instrument","ts":1,"symbol":"BTCUSDT","settle_asset":"USDT","tick_size":"0.1","lot_size":"0.001","tiers":[{"max_notional":"50000","mmr":"0.004","maint_amount":"0"},{"max_notional":"1000000","mmr":"0.01","maint_amount":"300"}],"liquidation_fee_rate":"0.005","fund_id":"F"}"#, "\n",
        r#"{"type":"instrument","ts":1,"symbol":"ETHUSDT","settle_asset":"USDT","tick_size":"0.01","lot_size":"0.01","tiers":[{"max_notional":"1000000","mmr":"0.005","maint_amount":"0"}],"liquidation_fee_rate":"0.005","fund_id":"F"}"#, "\n",
        r#"{"type":"instrument","ts":1,"symbol":"BTCUSD","settle_asset":"BTC","tick_size":"0.5","lot_size":"1","tiers":[{"max_notional":"50","mmr":"0.005","maint_amount":"0"}],"liquidation_fee_rate":"0.0075","fund_id":"COIN","contract_type":"inverse","contract_size":"100"}"#, "\n",
        r#"{"type":"instrument","ts":1,"symbol":"ETHBTC","settle_asset":"BTC","tick_size":"0.00001","lot_size":"0.01","tiers":[{"max_notional":"100","mmr":"0.01","maint_amount":"0"}],"liquidation_fee_rate":"0.005","fund_id":"COIN"}"#, "\n",
    );
    /// (symbol, lot, tick, price at the start in ticks)
    const SYMBOLS: [(&str, &str, u64, u64); 4] =
        [("BTCUSDT", "0.001", 10, 500_000), ("ETHUSDT", "0.01", 100, 300_000), ("BTCUSD", "1", 2, 100_000),
         ("ETHBTC", "0.01", 100_000, 5_000)];

    fn decimal(units: u64, per_one: u64) -> String {
        let digits = per_one.ilog10() as usize;
        if digits == 0 { units.to_string() } else { format!("{}.{:0digits$}", units / per_one, units % per_one) }
    }

    fn apply(processor: &mut Processor, lines: &str) {
        let batch = processor.apply_lines(lines.as_bytes(), 1);
        assert!(batch.dead_letters.is_empty(), "{}", String::from_utf8_lossy(&batch.dead_letters));
    }

    /// A quantile point's changes from the index (and the apart rows' doubles) against ranking everyone exactly,
    /// view by view; the exact ones are then published. How many changed, rows were apart, positions were past
    /// their bankruptcy price.
    fn check_point(engine: &mut Engine) -> [usize; 3] {
        engine.adl_index.refresh(&engine.positions, &mut engine.ledger, &engine.instruments);
        let apart = Apart::of(engine);
        let mut symbols: Vec<u32> = engine.instruments.keys().copied().collect();
        symbols.sort_unstable();
        let mut published = 0;
        let apart_rows = engine.adl_index.all_rows()
            .map(|(_, _, rows)| (0..rows.slots()).filter(|&slot| rows.row(slot) == IndexRow::Apart).count()).sum();
        let mut past = 0;
        for symbol in symbols {
            for side in SIDES {
                past += engine.adl_queue(symbol, side).iter().filter(|ranked| ranked.past_bankruptcy).count();
                let (mut fast, fast_stressed) = side_changes(engine, symbol, side, &apart);
                let (mut full, full_stressed) = side_changes_exact(engine, symbol, side);
                fast.sort_by_key(|change| change.account);
                full.sort_by_key(|change| change.account);
                let name = engine.names.name(symbol);
                assert_eq!(fast, full, "{name} {side:?}");
                assert_eq!(fast_stressed, full_stressed, "{name} {side:?}");
                for Change { account, position_side, quantile } in full {
                    engine.positions.get_mut(account, symbol, position_side).expect("held").adl_quantile = quantile;
                    engine.adl_index.set_published(symbol, side, account, quantile);
                    published += 1;
                }
            }
        }
        [published, apart_rows, past]
    }

    /// Accounts trading every symbol (cross ones in several symbols of an asset, isolated ones, hedge sides in
    /// BTCUSDT, a group exactly alike), positions opening, growing, shrinking, closing and flipping between
    /// points, marks moving both ways, some far enough to put positions past their bankruptcy price.
    #[test]
    fn a_point_finds_the_exact_ranking_s_quantiles() {
        for seed in 1..5u64 {
            let mut random = Random(seed);
            let mut processor = Processor::new(false, 0);
            let mut lines = String::from(SETUP);
            let accounts = 90u64;
            for account in 0..accounts {
                let alike = account % 9 == 4; // a group of identical positions: ties at any boundary
                let (usdt, btc) = if alike { (5_000, 2) } else { (200 + random.below(20_000), 1 + random.below(3)) };
                lines += &format!(concat!(
                    r#"{{"type":"transfer","ts":2,"transfer_id":"u{a}","account_id":"a{a:03}","asset":"USDT","amount":"{u}"}}"#, "\n",
                    r#"{{"type":"transfer","ts":2,"transfer_id":"b{a}","account_id":"a{a:03}","asset":"BTC","amount":"{b}"}}"#, "\n"),
                    a = account, u = usdt, b = btc);
            }
            apply(&mut processor, &lines);
            let mut marks: Vec<u64> = SYMBOLS.iter().map(|symbol| symbol.3).collect();
            let mut held: BTreeMap<(u64, usize, &str), i64> = BTreeMap::new(); // lots, signed (one-way) or >= 0
            let (mut ts, mut fill, mut seen) = (3u64, 0u64, [0usize; 3]);
            for _round in 0..14 {
                let mut lines = String::new();
                for _ in 0..70 {
                    let account = random.below(accounts);
                    let at = random.below(4) as usize;
                    let (symbol, lot, tick, _) = SYMBOLS[at];
                    let alike = account % 9 == 4;
                    let hedge = at == 0 && account % 5 == 0;
                    let mode = if (account + at as u64) % 3 == 0 && !alike { "isolated" } else { "cross" };
                    let (position_side, lots, buy) = if alike {
                        if held.contains_key(&(account, at, "both")) { continue; }
                        ("both", 7i64, at % 2 == 0)
                    } else if hedge {
                        let position_side = if random.below(2) == 0 { "long" } else { "short" };
                        let now = held.get(&(account, at, position_side)).copied().unwrap_or(0);
                        let lots = if now > 0 && random.below(3) == 0 { -now.min(1 + random.below(now as u64) as i64) }
                                   else { 1 + random.below(400) as i64 };
                        (position_side, lots, (position_side == "long") == (lots > 0))
                    } else {
                        let now = held.get(&(account, at, "both")).copied().unwrap_or(0);
                        // close, flip or trade
                        let lots = match random.below(6) {
                            0 if now != 0 => -now,
                            1 if now != 0 => -2 * now,
                            _ => random.below(801) as i64 - 400,
                        };
                        if lots == 0 { continue; }
                        ("both", lots, lots > 0)
                    };
                    let key = (account, at, position_side);
                    let signed = if position_side == "both" { lots } else { lots.abs() * if buy == (position_side == "long") { 1 } else { -1 } };
                    *held.entry(key).or_insert(0) += signed;
                    if held[&key] == 0 { held.remove(&key); }
                    let price = marks[at] * (995 + random.below(11)) / 1000;
                    let lot_units: u64 = match lot { "0.001" => 1, "0.01" => 1, _ => 1 };
                    let per_one = match lot { "0.001" => 1000, "0.01" => 100, _ => 1 };
                    fill += 1;
                    lines += &format!(
                        concat!(r#"{{"type":"fill","ts":{ts},"fill_id":"f{n}","account_id":"a{a:03}","symbol":"{s}","side":"{d}","qty":"{q}","price":"{p}","fee":"0","margin_mode":"{m}","leverage":"10"{h}}}"#, "\n"),
                        ts = ts, n = fill, a = account, s = symbol, d = if buy { "buy" } else { "sell" },
                        q = decimal(signed.unsigned_abs() * lot_units, per_one), p = decimal(price, tick), m = mode,
                        h = if position_side == "both" { String::new() } else { format!(r#","position_side":"{position_side}""#) });
                }
                ts += 1;
                for (at, (symbol, _, tick, _)) in SYMBOLS.iter().enumerate() {
                    // both ways, now and then far
                    let step = if random.below(5) == 0 { 150 } else { 20 };
                    marks[at] = marks[at] * (1000 - step + random.below(2 * step + 1)) / 1000;
                    lines += &format!(concat!(r#"{{"type":"mark","ts":{},"symbol":"{}","mark_price":"{}"}}"#, "\n"),
                                      ts, symbol, decimal(marks[at], *tick));
                }
                apply(&mut processor, &lines);
                let found = check_point(&mut processor.engine);
                seen = [0, 1, 2].map(|at| seen[at] + found[at]);
            }
            assert!(seen.iter().all(|&count| count > 50), "seed {seed}: changes, apart rows, past bankruptcy {seen:?}");
        }
    }

    /// A side whose positions have all closed keeps its book (free slots only), and a group can be empty: a point
    /// publishes the closes and computes no quantile.
    #[test]
    fn a_point_over_a_side_whose_positions_all_closed() {
        let mut processor = Processor::new(false, 0);
        apply(&mut processor, &(SETUP.to_string() + concat!(
            r#"{"type":"transfer","ts":2,"transfer_id":"u","account_id":"a","asset":"USDT","amount":"1000"}"#, "\n",
            r#"{"type":"fill","ts":2,"fill_id":"f1","account_id":"a","symbol":"BTCUSDT","side":"buy","qty":"0.01","price":"50000","fee":"0","margin_mode":"cross","leverage":"10"}"#, "\n")));
        assert_eq!(check_point(&mut processor.engine)[0], 1);
        apply(&mut processor, concat!(
            r#"{"type":"fill","ts":3,"fill_id":"f2","account_id":"a","symbol":"BTCUSDT","side":"sell","qty":"0.01","price":"50000","fee":"0","margin_mode":"cross","leverage":"10"}"#, "\n"));
        assert_eq!(check_point(&mut processor.engine)[0], 0);
        let symbol = processor.engine.names.find("BTCUSDT").unwrap();
        let rows = processor.engine.adl_index.rows(symbol, Side::Long).expect("the book stays");
        assert_eq!((rows.count(), rows.slots()), (0, 1));
        assert!(group_quantiles(&[], (0, 0), false, |_| unreachable!(), |a, b| a.cmp(&b)).is_empty());
    }

    #[test]
    fn a_quantile_record_is_written_as_its_canonical_object() {
        for (account, quantile) in [("a001", 3u8), ("quote\"back\\slash", 0), ("ünïcode\u{1}", 5)] {
            let mut fast = Vec::new();
            let parts = QuantileParts::new(123_456, 1_760_000_000_000, Side::Short, "BTCUSDT");
            write_quantile_record(&mut fast, account, 7, quantile, &parts);
            let id = "aq-123456-7";
            let fields = vec![
                ("kind", J::Str("quantile")),
                ("account_id", J::Str(account)),
                ("symbol", J::Str("BTCUSDT")),
                ("side", J::Str("short")),
                ("quantile", if quantile == 0 { J::Null } else { J::Int(i128::from(quantile)) }),
                ("schema_version", J::Int(SCHEMA_VERSION)),
                ("id", J::Str(id)),
                ("seq", J::Int(123_456)),
                ("ts", J::Int(1_760_000_000_000)),
            ];
            let mut canonical = Vec::new();
            canonical::write(&mut canonical, &J::Obj(fields));
            canonical.push(b'\n');
            assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(canonical).unwrap());
        }
    }

    /// Keys anywhere within their spreads (of every size) of the exact scores, which tie often and lie closer than
    /// a spread apart (so runs chain across many rows): the quantiles are those of the exact order.
    #[test]
    fn a_group_s_quantiles_are_the_exact_order_s_however_far_the_keys_stray() {
        let mut random = Random(11);
        for round in 0..300 {
            let n = 1 + random.below(if round % 3 == 0 { 400 } else { 40 }) as usize;
            let offset = random.below(3) as usize * random.below(20) as usize;
            let count = offset + n + random.below(3) as usize * random.below(30) as usize;
            let width = [3u64, 50, 5_000, 2_000_000][round % 4]; // of the scores, in 1e-12
            let ranked: Vec<Ranked> = (0..n as u32).map(|account| Ranked {
                account,
                position_side: PositionSide::Both,
                size: 1 + random.below(3) as i128,
                score: Wide::from(random.below(width)) - Wide::from(width / 2),
                past_bankruptcy: false,
                bankruptcy: Wide::ZERO,
            }).collect();
            let rows: Vec<Row> = ranked.iter().map(|r| {
                let exact = r.score.as_::<f64>() / 1e12;
                let spread = exact.abs() * [0.0, 1e-9, 1e-6][random.below(3) as usize]
                    + [0.0, SCORE_ERROR, 1e-9, 1e-6][random.below(4) as usize];
                // within the spread with room for the rounding of the sum
                let stray = (random.below(2001) as f64 - 1000.0) / 1000.0 * 0.999 * spread;
                Row { account: r.account, key: exact + stray, spread, published: 0 }
            }).collect();
            let got = group_quantiles(&rows, (offset, count), false, |account| ranked[account as usize].clone(),
                                      |a, b| a.cmp(&b));
            let mut order: Vec<&Ranked> = ranked.iter().collect();
            order.sort_by_key(|r| (-r.score, -r.size, r.account));
            let mut want = vec![0u8; n];
            for (place, r) in order.iter().enumerate() {
                want[r.account as usize] = quantile(offset + place + 1, count) as u8;
            }
            assert_eq!(got, want, "round {round}: {n} rows after {offset} of {count}");
        }
    }

    #[test]
    fn a_split_orders_the_segments_between_its_places() {
        let mut random = Random(7);
        for rows in [2usize, 3, 10, 101, 1000] {
            let mut order: Vec<(f64, u32)> = (0..rows).map(|i| ((random.below(50) as f64) - 25.0, i as u32)).collect();
            let places: Vec<usize> = [rows / 5, 2 * rows / 5, 3 * rows / 5, 4 * rows / 5].into_iter()
                .filter(|&place| place > 0).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            split_at_places(&mut order, &places);
            for &place in &places {
                let least_before = order[..place].iter().map(|row| row.0).fold(f64::INFINITY, f64::min);
                let most_after = order[place..].iter().map(|row| row.0).fold(f64::NEG_INFINITY, f64::max);
                assert!(least_before >= most_after, "{rows} rows, place {place}");
            }
        }
    }
}
