//! The ADL candidate index (the Rust side of backstop.core.adl_index; docs/design.md section 10, "ADL"): finds the
//! few positions a deleverage needs among millions, for the exact ranking to order.
//!
//! Under the BitMEX rule, a position whose account holds no other cross position in the same settlement asset has
//!     equity = B + uPnL,  uPnL = s x (size x mark - cost)      (B: its isolated margin, or the wallet if cross)
//!     r = uPnL / cost,  leverage = size x mark / equity,  score = r x leverage (r >= 0) or r / leverage (r < 0)
//! and is past its bankruptcy price when equity <= 0. Its score at any mark follows from three numbers (size, cost,
//! B), kept per symbol and side as doubles and rewritten only for the accounts whose positions or balances changed
//! since the last deleverage. Doubles only *choose candidates*, with a margin far above their rounding error; the
//! candidates are then ranked exactly (`Engine::rank`), so the outcome is the exact ranking's, bit for bit. The
//! margins and the rows always ranked exactly (equity too close to zero to trust, a cost rounded away, accounts
//! with cross positions in several symbols of one asset) are the reference's, for the reasons its docstring gives.
//!
//! Rows exactly alike score exactly alike, and the queue orders them by account id. Each row keeps its exact
//! numbers (margin mode, size, cost, B as integers), so of a group of rows alike in all of them only the first few
//! by account id stay candidates: the ones that cover the lot before the others are reached. Groups are formed on
//! those integers, never on doubles (two different balances can share a double).

use crate::ledger::{Account, Ledger};
use crate::state::{Instrument, Position, Positions, Side};
use crate::wire::MarginMode;
use rustc_hash::FxHashMap as HashMap;

/// Float scores are within ~1e-12 (relative) of the exact ones; this margin dwarfs that.
pub const RELATIVE_MARGIN: f64 = 1e-6;
/// And the 1e-12 score quantum, which could make a just-excluded row tie.
pub const ABSOLUTE_MARGIN: f64 = 1e-6;
/// |equity| below this share of (|B| + notional + cost): the float sign may be wrong.
pub const UNTRUSTED_EQUITY: f64 = 1e-6;
/// |equity| below ROUNDING_SLACK x (1 + size): the rounding of the BP and of the equity share (under one quantum
/// each) could move the exact score by half of RELATIVE_MARGIN or more.
pub const ROUNDING_SLACK: f64 = 1e-8 * 2.0 / RELATIVE_MARGIN;
/// A few units of rounding of a double (2.2e-16), relative: the cancellation in uPnL = notional - cost is this much
/// of notional + cost, and a score scales it by the leverage (or its inverse).
pub const FLOAT_ERROR: f64 = 1e-15;
/// Candidates beyond this many are checked for rows exactly alike.
pub const TIE_ROWS: usize = 256;
/// Rows of the strided sample that sets the bar a partial sort runs behind.
const SAMPLE_ROWS: usize = 4_096;
const UNITS: f64 = 1e8;

/// What a row stands for. `Isolated` and `Cross` rows are scored in doubles and grouped on their exact numbers;
/// `Untied` rows are scored but never grouped (a B beyond 128 bits); `Exact` rows are always candidates (an account
/// with cross positions in several symbols of one asset: its equity share depends on other marks), and keep the
/// position's size and cost and the account's wallet as integers for the quantile points (crate::quantiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
enum Kind {
    Empty,
    Isolated,
    Cross,
    Untied,
    Exact,
    /// an `Exact` row whose wallet is beyond 128 bits (not kept in the row)
    ExactWide,
}

/// Accounts whose positions or balances changed since the index last looked (the ledger marks the owners of the
/// wallets and isolated margins it posts to, the engine the accounts whose positions it changes).
#[derive(Clone, Debug, Default)]
pub struct Changed {
    flags: Vec<bool>,
    list: Vec<u32>,
}

impl Changed {
    #[inline]
    pub fn mark(&mut self, account: u32) {
        let at = account as usize;
        if at >= self.flags.len() {
            self.flags.resize((at + 1).max(2 * self.flags.len()), false);
        }
        if !self.flags[at] {
            self.flags[at] = true;
            self.list.push(account);
        }
    }

    fn drain(&mut self) -> Vec<u32> {
        for &account in &self.list {
            self.flags[account as usize] = false;
        }
        std::mem::take(&mut self.list)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// The rows of one symbol and side, one slot per account, in columns.
#[derive(Clone, Debug, Default)]
struct Book {
    kind: Vec<Kind>,
    account: Vec<u32>,
    size: Vec<f64>,
    cost: Vec<f64>,
    base: Vec<f64>,
    exact_size: Vec<i128>,
    exact_cost: Vec<i128>,
    exact_base: Vec<i128>,
    /// the quantile last published for the row's position (crate::quantiles), 0 for none
    published: Vec<u8>,
    slot_of: HashMap<u32, u32>,
    free: Vec<u32>,
    /// the rows near the top at one mark, kept between deleverages at that mark
    scored: Option<Scored>,
    /// slots written since `scored` was made (their scores are stale)
    changed: Vec<u32>,
}

/// What one scoring pass at a mark found: every trusted row scoring at least `bar`, and the rows always ranked
/// exactly. Rows written since are scored again one by one while the mark stays.
#[derive(Clone, Debug)]
struct Scored {
    mark: i128,
    /// f64::NEG_INFINITY: every trusted row is in the pool
    bar: f64,
    /// (float score, slot)
    pool: Vec<(f64, u32)>,
    always: Vec<u32>,
}

/// (size, cost, B) of an empty slot: clearly past bankruptcy on either side, so never a candidate.
const EMPTY_ROW: (f64, f64, f64) = (0.0, 1.0, -4.0);
/// (size, cost, B) of an `Exact` row: B is NaN, so the row scores NaN, which marks a row always ranked exactly.
const EXACT_ROW: (f64, f64, f64) = (0.0, 1.0, f64::NAN);
/// A scoring pass keeps the rows that cover this many times the lot (by the sample's estimate), and at least
/// MIN_POOL rows: the deleverages that follow at the same mark take from the same pool.
const POOL_COVER: f64 = 8.0;
const MIN_POOL: usize = 512;
/// Rows scored at once into a buffer that stays in the cache, so the arithmetic runs without branches.
const CHUNK: usize = 1024;

impl Book {
    fn rows(&self) -> usize {
        self.slot_of.len()
    }

    fn slot(&mut self, account: u32) -> usize {
        if let Some(&slot) = self.slot_of.get(&account) {
            return slot as usize;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot as usize,
            None => {
                self.kind.push(Kind::Empty);
                self.account.push(u32::MAX);
                self.size.push(EMPTY_ROW.0);
                self.cost.push(EMPTY_ROW.1);
                self.base.push(EMPTY_ROW.2);
                self.exact_size.push(0);
                self.exact_cost.push(0);
                self.exact_base.push(0);
                self.published.push(0);
                self.kind.len() - 1
            }
        };
        self.slot_of.insert(account, slot as u32);
        self.account[slot] = account;
        slot
    }

    fn write(&mut self, slot: usize, kind: Kind, (size, cost, base): (i128, i128, Option<i128>), floats: (f64, f64, f64),
             published: u8) {
        self.kind[slot] = kind;
        self.published[slot] = published;
        (self.size[slot], self.cost[slot], self.base[slot]) = floats;
        self.exact_size[slot] = size;
        self.exact_cost[slot] = cost;
        self.exact_base[slot] = base.unwrap_or(0);
        if self.scored.is_some() {
            self.changed.push(slot as u32);
            if self.changed.len() > self.kind.len() {
                self.forget_scores(); // cheaper to score everything again than to follow this many changes
            }
        }
    }

    fn forget_scores(&mut self) {
        self.scored = None;
        self.changed = Vec::new();
    }

    fn put(&mut self, account: u32, mode: Kind, (size, cost): (i128, i128), base: ethnum::I256, published: u8) {
        let slot = self.slot(account);
        let narrow = i128::try_from(base).ok();
        let kind = if narrow.is_some() { mode } else { Kind::Untied };
        let floats = (size as f64 / UNITS, cost as f64 / (UNITS * UNITS), base.as_f64() / UNITS);
        self.write(slot, kind, (size, cost, narrow), floats, published);
    }

    /// An `Exact` row keeps its exact size, cost and wallet (a quantile point values it from them), not doubles.
    fn put_exact(&mut self, account: u32, (size, cost): (i128, i128), wallet: ethnum::I256, published: u8) {
        let slot = self.slot(account);
        let narrow = i128::try_from(wallet).ok();
        let kind = if narrow.is_some() { Kind::Exact } else { Kind::ExactWide };
        self.write(slot, kind, (size, cost, narrow), EXACT_ROW, published);
    }

    fn drop_account(&mut self, account: u32) {
        if let Some(slot) = self.slot_of.remove(&account) {
            let at = slot as usize;
            self.account[at] = u32::MAX;
            self.write(at, Kind::Empty, (0, 0, Some(0)), EMPTY_ROW, 0);
            self.free.push(slot);
        }
    }

    /// Bring the pool up to date at `mark`: the rows written since the last pass at the same mark are scored again
    /// one by one; a new mark scores every row.
    fn score_at(&mut self, mark: i128, side: Side, want: f64) {
        let mark_f = mark as f64 / UNITS;
        let short = side == Side::Short;
        let Some(scored) = self.scored.as_mut().filter(|scored| scored.mark == mark) else {
            let bar = self.bar_for(mark_f, short, want, f64::INFINITY);
            self.score_all(mark, short, bar);
            return;
        };
        if self.changed.is_empty() {
            return;
        }
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        let stale = |slot: &u32| changed.binary_search(slot).is_ok();
        scored.pool.retain(|(_, slot)| !stale(slot));
        scored.always.retain(|slot| !stale(slot));
        for &slot in &changed {
            let at = slot as usize;
            let score = score_row(self.size[at], self.cost[at], self.base[at], mark_f, short);
            if score.is_nan() {
                scored.always.push(slot);
            } else if score >= scored.bar && score > f64::NEG_INFINITY {
                scored.pool.push((score, slot));
            }
        }
        changed.clear();
        self.changed = changed;
    }

    /// A bar about POOL_COVER x `want` of trusted size (and MIN_POOL rows) clears, estimated from a strided sample;
    /// always below `below`. NEG_INFINITY: the sample sees too little above it to set one.
    fn bar_for(&self, mark: f64, short: bool, want: f64, below: f64) -> f64 {
        let rows = self.kind.len();
        let step = (rows / SAMPLE_ROWS).max(1);
        let picked: Vec<usize> = (0..rows).step_by(step).collect();
        let column = |values: &[f64]| -> Vec<f64> { picked.iter().map(|&at| values[at]).collect() };
        let (sizes, costs, bases) = (column(&self.size), column(&self.cost), column(&self.base));
        let mut scores = vec![0.0; picked.len()];
        score_chunk(&sizes, &costs, &bases, mark, short, &mut scores);
        let mut sample: Vec<(f64, f64)> = scores.into_iter().zip(sizes)
            .filter(|(score, _)| *score > f64::NEG_INFINITY && *score < below)
            .collect();
        let (target, least) = (want * POOL_COVER, MIN_POOL.div_ceil(step));
        let descending = |a: &(f64, f64), b: &(f64, f64)| b.0.total_cmp(&a.0);
        let mut sorted = 0; // the sample's top, sorted, a few more each time it falls short
        let mut covered = 0.0;
        while sorted < sample.len() {
            let top = (4 * sorted).max(least + 64).min(sample.len());
            if top < sample.len() {
                sample.select_nth_unstable_by(top - 1, descending);
            }
            sample[sorted..top].sort_unstable_by(descending);
            for (taken, (score, size)) in sample[..top].iter().enumerate().skip(sorted) {
                covered += size * step as f64;
                if covered >= target && taken + 1 >= least {
                    return *score;
                }
            }
            sorted = top;
        }
        f64::NEG_INFINITY
    }

    /// Score every row at `mark`: the pool of trusted rows at or above `bar`, the rows always ranked exactly.
    fn score_all(&mut self, mark: i128, short: bool, bar: f64) {
        let mark_f = mark as f64 / UNITS;
        let mut pool = Vec::with_capacity(4 * MIN_POOL);
        let mut always = Vec::new();
        let mut scores = [0.0f64; CHUNK];
        let rows = self.kind.len();
        for start in (0..rows).step_by(CHUNK) {
            let end = (start + CHUNK).min(rows);
            let scores = &mut scores[..end - start];
            score_chunk(&self.size[start..end], &self.cost[start..end], &self.base[start..end], mark_f, short, scores);
            for_each_kept(scores, bar, |at| {
                let (score, slot) = (scores[at], (start + at) as u32);
                if score.is_nan() {
                    always.push(slot);
                } else if score > f64::NEG_INFINITY {
                    pool.push((score, slot));
                }
            });
        }
        self.scored = Some(Scored { mark, bar, pool, always });
        self.changed.clear();
    }
}

/// One row's float score: the score when its equity is clearly above bankruptcy (trusted), NaN when the equity is
/// too close to zero to trust (or B is NaN: an `Exact` row), -inf when it is clearly past bankruptcy.
#[inline(always)]
fn score_row(size: f64, cost: f64, base: f64, mark: f64, short: bool) -> f64 {
    let notional = size * mark;
    let difference = notional - cost;
    let upnl = if short { -difference } else { difference };
    let equity = base + upnl;
    let loose = (base.abs() + notional + cost) * UNTRUSTED_EQUITY;
    let slack = (1.0 + size) * ROUNDING_SLACK;
    let bound = if loose > slack { loose } else { slack };
    let bound = if cost > 0.0 { bound } else { f64::INFINITY };
    // r x leverage = uPnL x notional / (cost x equity); r / leverage = uPnL x equity / (cost x notional)
    let gaining = upnl >= 0.0;
    let numerator = upnl * if gaining { notional } else { equity };
    let denominator = cost * if gaining { equity } else { notional };
    let score = numerator / denominator;
    // a score far from its float's cancellation error: else (a leverage or its inverse of ~1e9 and more, an equity
    // far above the notional) the row is ranked exactly, as one of equity near zero is
    // (FLOAT_ERROR (notional + cost) / cost x max(leverage, 1 / leverage) <= ABSOLUTE_MARGIN / 2, without a division)
    let quiet = FLOAT_ERROR * (notional + cost) * (notional * notional).max(equity * equity)
        <= ABSOLUTE_MARGIN / 2.0 * cost * notional * equity;
    let trusted = equity > bound;
    if trusted && quiet {
        score
    } else if equity.abs() > bound && !trusted {
        f64::NEG_INFINITY
    } else {
        f64::NAN // trusted but noisy, near zero, or B NaN (an `Exact` row)
    }
}

/// score_row over a chunk of rows (no branch depends on the data, so the compiler vectorizes it).
#[inline(always)]
fn score_chunk_with(size: &[f64], cost: &[f64], base: &[f64], mark: f64, short: bool, out: &mut [f64]) {
    let rows = out.len();
    let (size, cost, base) = (&size[..rows], &cost[..rows], &base[..rows]);
    if short {
        for i in 0..rows {
            out[i] = score_row(size[i], cost[i], base[i], mark, true);
        }
    } else {
        for i in 0..rows {
            out[i] = score_row(size[i], cost[i], base[i], mark, false);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn score_chunk_avx2(size: &[f64], cost: &[f64], base: &[f64], mark: f64, short: bool, out: &mut [f64]) {
    score_chunk_with(size, cost, base, mark, short, out);
}

/// score_chunk_with, four rows per instruction where the CPU has AVX2 (the same IEEE operations: the same bits).
fn score_chunk(size: &[f64], cost: &[f64], base: &[f64], mark: f64, short: bool, out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only requirement of score_chunk_avx2
        unsafe { score_chunk_avx2(size, cost, base, mark, short, out) };
        return;
    }
    score_chunk_with(size, cost, base, mark, short, out);
}

/// Whether a score is kept by a bar: at or above it, or NaN (a row always ranked).
#[inline(always)]
fn clears(score: f64, bar: f64) -> bool {
    score.partial_cmp(&bar) != Some(std::cmp::Ordering::Less)
}

/// Call `kept` with the index of every score not below the bar (at or above it, or NaN), in order.
fn for_each_kept(scores: &[f64], bar: f64, mut kept: impl FnMut(usize)) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only requirement of kept_avx2
        unsafe { kept_avx2(scores, bar, &mut kept) };
        return;
    }
    for (at, &score) in scores.iter().enumerate() {
        if clears(score, bar) {
            kept(at);
        }
    }
}

/// for_each_kept four scores per comparison: most rows are below the bar, so most comparisons find nothing.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kept_avx2(scores: &[f64], bar: f64, kept: &mut impl FnMut(usize)) {
    use std::arch::x86_64::{_mm256_cmp_pd, _mm256_loadu_pd, _mm256_movemask_pd, _mm256_set1_pd, _CMP_NLT_UQ};
    let bars = _mm256_set1_pd(bar);
    let whole = scores.len() / 4 * 4;
    for at in (0..whole).step_by(4) {
        // SAFETY: at + 4 <= scores.len(), so the four lanes read lie inside the slice
        let lanes = unsafe { _mm256_loadu_pd(scores.as_ptr().add(at)) };
        let mut mask = _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_NLT_UQ>(lanes, bars));
        while mask != 0 {
            kept(at + mask.trailing_zeros() as usize);
            mask &= mask - 1;
        }
    }
    for (at, &score) in scores.iter().enumerate().skip(whole) {
        if clears(score, bar) {
            kept(at);
        }
    }
}

/// Where a deleverage's counterparties are to be found.
#[derive(Debug, PartialEq, Eq)]
pub enum Candidates {
    /// Among these accounts (unordered): the exact top of the queue covering the qty lies within them.
    Among(Vec<u32>),
    /// The rows the index trusts do not cover the qty: rank every position.
    Everyone,
}

/// The index: a book per symbol and side, and the accounts changed since it last looked.
#[derive(Clone, Debug, Default)]
pub struct AdlIndex {
    books: HashMap<(u32, bool), Book>,
    built: bool,
    /// accounts whose positions changed (the ledger keeps those whose balances changed)
    pub changed: Changed,
}

fn book_key(symbol: u32, side: Side) -> (u32, bool) {
    (symbol, side == Side::Long)
}

impl AdlIndex {
    /// Forget a closed position (the engine calls it as the position goes).
    pub fn drop_position(&mut self, account: u32, symbol: u32, side: Side) {
        if let Some(book) = self.books.get_mut(&book_key(symbol, side)) {
            book.drop_account(account);
        }
    }

    /// Rewrite the rows of every account changed since the last refresh (all of them the first time).
    pub fn refresh(&mut self, positions: &Positions, ledger: &mut Ledger, instruments: &HashMap<u32, Instrument>) {
        let mut accounts = self.changed.drain();
        accounts.extend(ledger.changed.drain());
        if !self.built {
            accounts = positions.of_account.keys().collect();
            self.built = true;
        }
        let mut held: Vec<(&Position, u32)> = Vec::new(); // an account's positions and their settlement assets
        for account in accounts {
            // (symbol, position side): hedge sides are rows of their own
            held.clear();
            held.extend(positions.keys_of(account).iter()
                .filter_map(|&(symbol, position_side)| positions.get(account, symbol, position_side))
                .map(|position| (position, instruments[&position.symbol].settle_asset)));
            for &(position, asset) in &held {
                let (symbol, position_side) = (position.symbol, position.position_side);
                let book = self.books.entry(book_key(symbol, position.side())).or_default();
                match position.margin_mode {
                    MarginMode::Isolated => {
                        let base = ledger.balance(Account::Isolated { account, symbol, side: position_side });
                        book.put(account, Kind::Isolated, (position.size(), position.cost), base, position.adl_quantile);
                    }
                    MarginMode::Cross => {
                        let peers = held.iter()
                            .filter(|(other, other_asset)| other.margin_mode == MarginMode::Cross && *other_asset == asset);
                        let wallet = ledger.balance(Account::Wallet { account, asset });
                        if peers.count() > 1 {
                            book.put_exact(account, (position.size(), position.cost), wallet, position.adl_quantile);
                        } else {
                            book.put(account, Kind::Cross, (position.size(), position.cost), wallet, position.adl_quantile);
                        }
                    }
                }
            }
        }
    }

    /// Open positions of that symbol and side (after a refresh).
    pub fn count(&self, symbol: u32, side: Side) -> usize {
        self.books.get(&book_key(symbol, side)).map_or(0, Book::rows)
    }

    /// Accounts among which the exact top of the (symbol, side) queue covering `qty` (1e-8) lies, at `mark`
    /// (1e-8); the index must be refreshed first. `name_order` compares two accounts by id (the queue's last key).
    pub fn candidates(&mut self, symbol: u32, side: Side, mark: i128, qty: i128,
                      name_order: impl Fn(u32, u32) -> std::cmp::Ordering) -> Candidates {
        let Some(book) = self.books.get_mut(&book_key(symbol, side)) else { return Candidates::Among(Vec::new()) };
        let want = qty as f64 / UNITS * (1.0 + RELATIVE_MARGIN);
        book.score_at(mark, side, want);
        let short = side == Side::Short;
        loop {
            let scored = book.scored.as_mut().expect("scored at this mark");
            // the pool's top rows by float score until they cover qty
            scored.pool.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut covered = 0.0;
            let needed = scored.pool.iter().position(|&(_, slot)| {
                covered += book.size[slot as usize];
                covered >= want
            });
            let Some(needed) = needed else {
                let old_bar = scored.bar;
                if old_bar == f64::NEG_INFINITY {
                    return Candidates::Everyone; // the trusted rows do not cover it: positions past bankruptcy come in
                }
                let bar = book.bar_for(mark as f64 / UNITS, short, want * 8.0, old_bar);
                book.score_all(mark, short, bar);
                continue;
            };
            let threshold = scored.pool[needed].0;
            let floor = threshold - threshold.abs() * RELATIVE_MARGIN - ABSOLUTE_MARGIN;
            if floor < scored.bar {
                book.score_all(mark, short, floor); // rows between the floor and the bar are candidates too
                continue;
            }
            let above = scored.pool.partition_point(|&(score, _)| score >= floor);
            let mut rows: Vec<(f64, u32)> = scored.pool[..above].to_vec();
            rows.extend(scored.always.iter().map(|&slot| (f64::NAN, slot)));
            if rows.len() > TIE_ROWS {
                rows = thin_ties(book, rows, qty, &name_order);
            }
            return Candidates::Among(rows.into_iter().map(|(_, slot)| book.account[slot as usize]).collect());
        }
    }

    /// The rows of one symbol and side as a quantile point reads them (after a refresh).
    pub fn rows(&self, symbol: u32, side: Side) -> Option<Rows<'_>> {
        self.books.get(&book_key(symbol, side)).map(|book| Rows { book })
    }

    /// Every book's rows, with its symbol and side, in no particular order.
    pub fn all_rows(&self) -> impl Iterator<Item = (u32, Side, Rows<'_>)> {
        self.books.iter().map(|(&(symbol, long), book)| (symbol, if long { Side::Long } else { Side::Short }, Rows { book }))
    }

    /// Record the quantile published for an account's position of that symbol and side, where it has a row (one
    /// it has not is written when the account's row is, from its position).
    pub fn set_published(&mut self, symbol: u32, side: Side, account: u32, quantile: u8) {
        if let Some(book) = self.books.get_mut(&book_key(symbol, side)) {
            if let Some(&slot) = book.slot_of.get(&account) {
                book.published[slot as usize] = quantile;
            }
        }
    }

    /// Bytes the rows hold (capacity of every column and the slot maps), not the positions themselves.
    pub fn memory_bytes(&self) -> usize {
        self.books.values().map(|book| {
            let slots = book.kind.capacity();
            let scored = book.scored.as_ref().map_or(0, |s| s.pool.capacity() * 16 + s.always.capacity() * 4);
            slots * (1 + 4 + 3 * 8 + 3 * 16 + 1) + book.slot_of.capacity() * 9 + book.free.capacity() * 4
                + book.changed.capacity() * 4 + scored
        }).sum()
    }
}

/// What a row of a book holds, for a quantile point (crate::quantiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    /// a free slot
    Empty,
    /// a position whose score follows from its (size, cost, B) doubles
    Scored,
    /// a cross position of an account with cross positions in several symbols of one asset: its equity share
    /// depends on other marks
    Apart,
}

/// One symbol and side's rows, slot by slot: what each holds, its account, its (size, cost, B) doubles and the
/// quantile last published for its position.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    book: &'a Book,
}

impl Rows<'_> {
    /// Slots, free ones included.
    pub fn slots(&self) -> usize {
        self.book.kind.len()
    }

    /// Open positions.
    pub fn count(&self) -> usize {
        self.book.rows()
    }

    #[inline]
    pub fn row(&self, slot: usize) -> Row {
        match self.book.kind[slot] {
            Kind::Empty => Row::Empty,
            Kind::Exact | Kind::ExactWide => Row::Apart,
            Kind::Isolated | Kind::Cross | Kind::Untied => Row::Scored,
        }
    }

    #[inline]
    pub fn account(&self, slot: usize) -> u32 {
        self.book.account[slot]
    }

    /// (size, cost, B) as doubles, in units of 1.
    #[inline]
    pub fn floats(&self, slot: usize) -> (f64, f64, f64) {
        (self.book.size[slot], self.book.cost[slot], self.book.base[slot])
    }

    /// The exact size (1e-8) of a row.
    #[inline]
    pub fn exact_size(&self, slot: usize) -> i128 {
        self.book.exact_size[slot]
    }

    /// The wallet (1e-8) of an `Apart` row's account in the row's settlement asset, where it fits 128 bits.
    #[inline]
    pub fn wallet(&self, slot: usize) -> Option<i128> {
        (self.book.kind[slot] == Kind::Exact).then(|| self.book.exact_base[slot])
    }

    /// The exact cost (1e-16) of a row.
    #[inline]
    pub fn exact_cost(&self, slot: usize) -> i128 {
        self.book.exact_cost[slot]
    }

    #[inline]
    pub fn published(&self, slot: usize) -> u8 {
        self.book.published[slot]
    }
}

/// Of each group of rows exactly alike (one margin mode, equal size, cost and B as integers), only the first
/// ceil(qty / size) by account id: they score exactly alike, so the queue orders them by account id, and those
/// cover qty before the others are reached. Rows alike have the same doubles, so the same float score: groups are
/// looked for only inside runs of equal float scores. `rows`: (float score, slot), NaN for rows always ranked.
fn thin_ties(book: &Book, mut rows: Vec<(f64, u32)>, qty: i128, name_order: &impl Fn(u32, u32) -> std::cmp::Ordering)
             -> Vec<(f64, u32)> {
    rows.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let exact = |slot: u32| {
        let at = slot as usize;
        (book.kind[at], book.exact_size[at], book.exact_cost[at], book.exact_base[at])
    };
    let groupable = |slot: u32| matches!(book.kind[slot as usize], Kind::Isolated | Kind::Cross);
    let mut kept = Vec::with_capacity(rows.len().min(4 * TIE_ROWS));
    let mut start = 0;
    while start < rows.len() {
        let bits = rows[start].0.to_bits();
        let end = start + rows[start..].iter().take_while(|(score, _)| score.to_bits() == bits).count();
        let run = &mut rows[start..end];
        if run.len() == 1 || run[0].0.is_nan() {
            kept.extend_from_slice(run); // a single row, or rows always ranked: nothing to thin
        } else {
            run.sort_unstable_by_key(|&(_, slot)| (!groupable(slot), exact(slot), slot));
            let mut group_start = 0;
            while group_start < run.len() {
                let first = run[group_start].1;
                let alike = run[group_start..].iter()
                    .take_while(|(_, slot)| groupable(first) && exact(*slot) == exact(first)).count();
                let group = &mut run[group_start..group_start + alike.max(1)];
                let size = book.exact_size[first as usize];
                let enough = if alike > 1 && size > 0 { ((qty + size - 1) / size).max(1) as usize } else { usize::MAX };
                if group.len() > enough {
                    group.select_nth_unstable_by(enough - 1, |a, b| name_order(book.account[a.1 as usize],
                                                                               book.account[b.1 as usize]));
                    kept.extend_from_slice(&group[..enough]);
                } else {
                    kept.extend_from_slice(group);
                }
                group_start += alike.max(1);
            }
        }
        start = end;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::processor::Processor;

    /// A book of shorts through journal lines: random ones, and groups exactly alike, some a money quantum apart.
    fn book(seed: u64) -> (Processor, u32) {
        let mut state = seed;
        let mut random = |below: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % below
        };
        let mut lines = String::from(concat!(
            r#"{"type":"fund","ts":1,"fund_id":"F","settle_asset":"USDT","surplus":"fund","max_inventory_ratio":"1"}"#, "\n",
            r#"{"type":"instrument","ts":1,"symbol":"BTCUSDT","settle_asset":"USDT","tick_size":"0.1","lot_size":"0.001","tiers":[{"max_notional":"1000000000","mmr":"0.004","maint_amount":"0"}],"liquidation_fee_rate":"0.005","fund_id":"F"}"#, "\n"));
        for number in 0..1500u64 {
            let alike = number % 3 != 0;
            let lots = if alike { 1000 } else { 1 + random(5000) };
            let entry = if alike { 500_000 } else { 450_000 + random(100_000) };
            let mode = if alike || random(4) == 0 { "cross" } else { "isolated" };
            let wallet = if alike { format!("1000000000.{:08}", u64::from(number % 7 == 0)) }
                         else { format!("{}.{:08}", random(20_000), random(100_000_000)) };
            lines += &format!(concat!(
                r#"{{"type":"transfer","ts":2,"transfer_id":"d{n}","account_id":"a{n:05}","asset":"USDT","amount":"{w}"}}"#, "\n",
                r#"{{"type":"fill","ts":2,"fill_id":"f{n}","account_id":"a{n:05}","symbol":"BTCUSDT","side":"sell","qty":"{q}.{r:03}","price":"{p}.{t}","fee":"0","margin_mode":"{m}","leverage":"10"}}"#, "\n"),
                n = number, w = wallet, q = lots / 1000, r = lots % 1000, p = entry / 10, t = entry % 10, m = mode);
        }
        let mut processor = Processor::new(false, 0);
        let batch = processor.apply_lines(lines.as_bytes(), 1);
        assert!(batch.dead_letters.is_empty(), "{}", String::from_utf8_lossy(&batch.dead_letters));
        let symbol = processor.engine.names.find("BTCUSDT").unwrap();
        (processor, symbol)
    }

    #[test]
    fn the_index_picks_what_ranking_everyone_picks() {
        for seed in 1..4 {
            let (mut processor, symbol) = book(seed);
            let engine = &mut processor.engine;
            for (mark, qty) in [(500_000, 1), (450_000, 700), (499_999, 3_000), (520_000, 100_000), (400_000, 9)] {
                engine.marks.insert(symbol, mark * 10_000_000);
                for lots in [qty, qty * 7 + 1] {
                    let qty = lots as i128 * 100_000;
                    let fast = engine.adl_head(symbol, Side::Short, qty, false);
                    let full = engine.adl_head(symbol, Side::Short, qty, true);
                    assert_eq!(fast, full, "seed {seed} mark {mark} qty {qty}");
                }
            }
        }
    }

    #[test]
    fn ties_are_grouped_on_integers_not_on_doubles() {
        // cross shorts of 1 at 9 x 10^9 whose wallets are -4,499,900,000 (a fee), every seventh one a money quantum
        // lower: the same double, yet at mark 4.5 x 10^9 an equity of 100,000 that is exactly lower by 10^-8, so a
        // score higher by ~2 x 10^-9
        let mut lines = String::from(concat!(
            r#"{"type":"fund","ts":1,"fund_id":"F","settle_asset":"USDT","surplus":"fund","max_inventory_ratio":"1"}"#, "\n",
            r#"{"type":"instrument","ts":1,"symbol":"BTCUSDT","settle_asset":"USDT","tick_size":"0.1","lot_size":"0.001","tiers":[{"max_notional":"1000000000","mmr":"0.004","maint_amount":"0"}],"liquidation_fee_rate":"0.005","fund_id":"F"}"#, "\n"));
        for number in 0..700u64 {
            lines += &format!(concat!(
                r#"{{"type":"fill","ts":2,"fill_id":"f{n}","account_id":"a{n:05}","symbol":"BTCUSDT","side":"sell","qty":"1","price":"9000000000","fee":"4499900000.{f:08}","margin_mode":"cross","leverage":"10"}}"#, "\n"),
                n = number, f = u64::from(number % 7 == 3));
        }
        lines += r#"{"type":"mark","ts":3,"symbol":"BTCUSDT","mark_price":"4500000000"}"#;
        let mut processor = Processor::new(false, 0);
        processor.apply_lines(lines.as_bytes(), 1);
        let symbol = processor.engine.names.find("BTCUSDT").unwrap();
        let engine = &mut processor.engine;
        for lots in [1, 2, 150, 699] {
            let fast = engine.adl_head(symbol, Side::Short, lots * 100_000_000, false);
            let full = engine.adl_head(symbol, Side::Short, lots * 100_000_000, true);
            assert_eq!(engine.names.name(fast.0[0].0), "a00003");
            assert_eq!(fast, full, "{lots}");
        }
    }

    #[test]
    fn scores_follow_the_plain_formula() {
        // a long in profit, one in loss, one past bankruptcy, one a hair above it; one whose equity is 10^12 its
        // notional (the float's cancellation in uPnL, scaled by 1 / leverage, could swamp the margin)
        let cases = [(1.0, 50_000.0, 10_000.0, 55_000.0), (2.0, 110_000.0, 5_000.0, 50_000.0),
                     (1.0, 50_000.0, 100.0, 49_000.0), (1.0, 50_000.0, 1e-8, 50_000.0),
                     (999_999_999_999.0, 9_999.999_999_99, 1e16, 1e-8)];
        assert!(score_row(1.0, 50_000.0, f64::NAN, 50_000.0, false).is_nan()); // an `Exact` row: always ranked
        for (size, cost, base, mark) in cases {
            let score = score_row(size, cost, base, mark, false);
            let upnl = size * mark - cost;
            let equity = base + upnl;
            let bound = ((base.abs() + size * mark + cost) * UNTRUSTED_EQUITY).max((1.0 + size) * ROUNDING_SLACK);
            let (ratio, leverage) = (upnl / cost, size * mark / equity);
            let want = if ratio < 0.0 { ratio / leverage } else { ratio * leverage };
            let noise = FLOAT_ERROR * (size * mark + cost) / cost * leverage.max(1.0 / leverage);
            if equity > bound && noise > ABSOLUTE_MARGIN / 2.0 {
                assert!(score.is_nan(), "{score}");
            } else if equity > bound {
                assert!((score - want).abs() <= want.abs() * 1e-14, "{score} {want}");
            } else if equity.abs() <= bound {
                assert!(score.is_nan());
            } else {
                assert_eq!(score, f64::NEG_INFINITY);
            }
        }
    }
}
