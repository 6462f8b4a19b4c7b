//! The rules (backstop.core.engine, docs/design.md sections 4 and 9): a pure fold of journal events into margin
//! state, the fund ledger and ADL. `apply` either refuses an event (nothing changed: admission comes first,
//! docs/design.md §4.1, then every handler checks first and mutates after) or applies it and appends its outputs,
//! canonical JSON, to the event's output buffers.

use crate::adl::{self, Candidate, DrawdownState, Figures, Hit, Policy, Price, RunTotals, Rule};
use crate::adl_index::{AdlIndex, Candidates};
use crate::admission::{Admission, Kind, Refusal};
use crate::canonical::{self, J, GENESIS_HASH};
use crate::content::Digests;
use crate::ledger::{Account, Ledger, Names};
use crate::posting::{IdSpan, Posting};
use crate::numbers::{
    add, mul, pow10, pow10_i128, ratio, rescale, sub, text, text_wide, wide_mul, Rounding, Shown, S12, S16, S18, S8,
};
use crate::numbers::{
    fit128, fit256, narrow_wide, text_512, wadd, wide, wide256, wmul, wpow10, wratio, wrescale, wsub, Wide,
};
use crate::state::{
    position_label, FundSpec, FundState, Instrument, Lot, Position, Positions, Side, Tier, DEFAULT_MARK_TOLERANCE,
};
use crate::valuation::{Valuation, LARGEST_PRICE, MAX_FACE};
use crate::wire::{Body, ContractType, Dec, MarginMode, PositionSide, Record, Side as TradeSide, Surplus};
use ethnum::I256;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

pub const SCHEMA_VERSION: i128 = 1;
pub const FUND_ACCOUNT_PREFIX: &str = "fund:";
/// docs/design.md section 9.3: a position holds less than 10^12 (qty at 1e-8), costs less than 10^22 (at 1e-16).
const MAX_POSITION_QTY: i128 = 100_000_000_000_000_000_000;
const MAX_COST: i128 = 100_000_000_000_000_000_000_000_000_000_000_000_000;

/// Why an event was not applied (nothing changed).
pub type Rejected = String;

/// Outputs of the events applied so far in a batch: canonical JSON lines per output file, and counts.
#[derive(Default, Debug)]
pub struct Outputs {
    pub fund_ledger: Vec<u8>,
    pub adl_events: Vec<u8>,
    pub findings: Vec<u8>,
    pub postings: Vec<u8>,
    pub adl_quantiles: Vec<u8>,
    pub adl_rounds: Vec<u8>,
    /// the postings whose records are left to write, in order (Engine::defer_postings)
    pub deferred_postings: Vec<Posting>,
    /// the ids the postings name (their events' fill, transfer, liquidation and ADL event ids), each once per event
    pub posting_ids: Vec<u8>,
    pub fund_entries: u64,
    pub adl_count: u64,
    pub finding_count: u64,
    pub posting_count: u64,
    pub quantile_count: u64,
    /// the positions the events closed (account, symbol, side), in order: the rows a projection deletes
    pub closed_positions: Vec<(u32, u32, PositionSide)>,
}

/// Per-event counters for output ids (fl-<seq>-<n>, ...).
#[derive(Default, Clone, Copy, Debug)]
struct EventCounts {
    fund_entries: u64,
    adl_events: u64,
    findings: u64,
    postings: u64,
    fund_postings: u64,
    rounds: u64,
}

/// What the postings of the event in hand belong to (docs/design.md section 10, "Postings").
#[derive(Default, Clone, Debug)]
/// The ids sit in the event's `Outputs::posting_ids`.
struct Cause {
    transfer_id: Option<IdSpan>,
    fill_id: Option<IdSpan>,
    liquidation_id: Option<IdSpan>,
    adl_event_id: Option<IdSpan>,
}

/// An account's margin at the current marks: the balance behind the position (isolated: margin + uPnL; cross:
/// TNC), the maintenance it is compared with (isolated: its MM; cross: TMM), its own MM, and its equity share.
/// Balances and shares at 1e-16 (derived from a balance: 512 bits, docs/design.md section 9.3), maintenance at 1e-8.
#[derive(Clone, Copy, Debug)]
pub struct MarginView {
    pub margin_balance: Wide,
    pub maintenance_margin: I256,
    pub position_maintenance: i128,
    pub equity_share: Wide,
}

impl MarginView {
    pub fn liquidatable(&self) -> bool {
        self.margin_balance <= wide256(mul(self.maintenance_margin, pow10(S16 - S8)))
    }
}

/// One position's place in the ADL queue, and the (rounded) bankruptcy price it was scored against.
#[derive(Clone, Debug)]
pub struct Ranked {
    pub account: u32,
    pub position_side: PositionSide,
    pub size: i128,
    pub score: Wide,
    pub past_bankruptcy: bool,
    pub bankruptcy: Wide,
}

#[derive(Clone, Debug)]
pub struct Engine {
    pub names: Names,
    pub ledger: Ledger,
    pub funds: HashMap<u32, FundState>,
    pub instruments: HashMap<u32, Instrument>,
    pub marks: HashMap<u32, i128>,
    pub positions: Positions,
    /// finds the top of a queue without ranking every position exactly
    pub adl_index: AdlIndex,
    pub last_seq: u64,
    /// duplicates, the journal clock and the per-symbol clocks (docs/design.md §4.1)
    pub admission: Admission,
    /// The largest ts applied: quantile points (crate::quantiles).
    pub newest_ts: Option<u64>,
    pub ledger_head: String,
    pub adl_head: String,
    pub postings_head: String,
    /// Quantiles published for positions since closed, by (account, symbol, side) (crate::quantiles).
    pub quantile_closes: HashMap<(u32, u32, Side), u8>,
    /// The ADL risk level published per symbol.
    pub risk_levels: HashMap<u32, &'static str>,
    /// Quantile points on (an option: ranking every side at each point costs more than the rest of a replay; they
    /// never change the ledger or the head hash, docs/design.md section 10).
    pub adl_quantiles: bool,
    /// The ADL policy (docs/design.md section 11) and, under Bybit's trigger, its state.
    pub policy: Policy,
    pub drawdown: DrawdownState,
    /// Rank inversions and the eligible population per round (section 11.4); not state.
    pub full_metrics: bool,
    /// This run's rounds, ADL events and fund postings, summed (the summary's `adl`); not state.
    pub totals: RunTotals,
    settle_assets: HashSet<u32>,
    pub(crate) seq: u64,
    pub(crate) ts: u64,
    counts: EventCounts,
    cause: Cause,
    /// Each touched fund's balance and its symbols' PnL as the current event found them (Bybit's trigger).
    drawdown_before: Option<FundValues>,
    /// the lots (by liquidation id) a round of the current event left short with no taker left: no later round of
    /// the event retries them (engine._fell_short)
    fell_short: Vec<String>,
    /// Leave each posting's record to the output writer (Outputs::deferred_postings): `postings_head` is then the
    /// head before the first of them until the writer gives the chain's head back. Not state.
    pub defer_postings: bool,
}

/// A fund, its balance (1e-8) and each of its symbols' PnL (1e-16), at one moment (Bybit's trigger).
type FundValues = (u32, I256, Vec<(u32, Wide)>);

/// Why a round happens (section 11.3) and, for a drawdown round, the reset proceeds of the whole lot (1e-16).
type TakeoverRefusal = (&'static str, Option<Wide>);

/// What a round starts from, by id (the record names them).
struct Start {
    trigger: &'static str,
    fund: u32,
    lot: Option<Lot>,
    mark: Option<i128>,
    balance: I256,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            names: Names::default(),
            ledger: Ledger::default(),
            funds: HashMap::default(),
            instruments: HashMap::default(),
            marks: HashMap::default(),
            positions: Positions::default(),
            adl_index: AdlIndex::default(),
            last_seq: 0,
            admission: Admission::default(),
            newest_ts: None,
            ledger_head: GENESIS_HASH.to_string(),
            adl_head: GENESIS_HASH.to_string(),
            postings_head: GENESIS_HASH.to_string(),
            quantile_closes: HashMap::default(),
            risk_levels: HashMap::default(),
            adl_quantiles: false,
            policy: Policy::default(),
            drawdown: DrawdownState::default(),
            full_metrics: false,
            totals: RunTotals::default(),
            settle_assets: HashSet::default(),
            seq: 0,
            ts: 0,
            counts: EventCounts::default(),
            cause: Cause::default(),
            drawdown_before: None,
            fell_short: Vec::new(),
            defer_postings: false,
        }
    }
}

fn reject<T>(reason: impl Into<String>) -> Result<T, Rejected> {
    Err(reason.into())
}

/// |value| < 2^127 products and quotients on values at known scales, named for what they compute.
fn product(a: i128, b: i128) -> I256 {
    wide_mul(a, b)
}

impl Engine {
    pub fn head_hash(&self) -> String {
        canonical::combine(&[&self.ledger_head, &self.adl_head])
    }

    pub fn register_settle_asset(&mut self, asset: u32) {
        self.settle_assets.insert(asset);
    }

    // ------------------------------------------------------------------ entry point
    /// Apply one event at `seq` (the next one); Err: refused (a duplicate, or rejected with its kind and reason),
    /// nothing changed.
    pub fn apply(&mut self, record: &Record<'_>, seq: u64, out: &mut Outputs) -> Result<(), Refusal> {
        self.apply_digested(record, None, seq, out)
    }

    /// `apply`, with the record's admission digests when they were computed ahead (crate::decode_stage).
    /// A hint, changing nothing: have the CPU bring into its cache the dense records of `account_name` that a fill
    /// or liquidation reads first (its position keys, its wallet), while an earlier record applies. With hundreds
    /// of thousands of accounts they are seldom in the cache already.
    pub fn prefetch_account(&self, account_name: &str) {
        if let Some(account) = self.names.find(account_name) {
            self.positions.of_account.prefetch(account);
            self.ledger.prefetch_wallet(account);
        }
    }

    pub fn apply_digested(&mut self, record: &Record<'_>, digests: Option<Digests>, seq: u64, out: &mut Outputs)
                          -> Result<(), Refusal> {
        assert!(seq == self.last_seq + 1, "journal gap: seq {seq} after {}", self.last_seq);
        // duplicates first: one whenever it comes
        let admitted = match digests {
            Some(digests) => self.admission.admit_digested(record, digests, seq)?,
            None => self.admission.admit(record, seq)?,
        };
        let definition = matches!(record.body, Body::Fund { .. } | Body::Instrument { .. });
        self.admission.clock.check(record.ts, definition)?;
        self.apply_rules(record, seq, out).map_err(|reason| Refusal::Rejected(Kind::Rejected, reason))?;
        self.admission.hold(admitted, seq);
        self.admission.clock.advance(record.ts);
        Ok(())
    }

    fn apply_rules(&mut self, record: &Record<'_>, seq: u64, out: &mut Outputs) -> Result<(), Rejected> {
        self.seq = seq;
        self.ts = record.ts;
        self.counts = EventCounts::default();
        self.fell_short.clear();
        self.cause = Cause::default();
        if !self.defer_postings {
            out.posting_ids.clear(); // the earlier events' postings are written: their ids are read no more
        }
        let fund = self.fund_of(record);
        let checked = fund.or_else(|| self.fund_taken_below_a_floor(record));
        let before = checked.map(|fund| (fund, self.ledger.balance(Account::Fund(fund))));
        let drawdown = fund.filter(|_| self.policy.drawdown.is_some());
        self.drawdown_before = drawdown.map(|fund| self.drawdown_values(fund));
        match &record.body {
            Body::Fund { .. } => self.on_fund(record)?,
            Body::Instrument { .. } => self.on_instrument(record)?,
            Body::Transfer { .. } => self.on_transfer(record, out)?,
            Body::Fill { .. } => self.on_fill(record, out)?,
            Body::Mark { .. } => self.on_mark(record, out)?,
            Body::Funding { .. } => self.on_funding(record, out)?,
            Body::Liquidation { .. } => self.on_liquidation(record, out)?,
        }
        self.last_seq = seq;
        let newest = self.newest_ts; // quantile points are periods of the newest ts applied (design section 10)
        if newest.is_none_or(|newest| record.ts > newest) {
            self.newest_ts = Some(record.ts);
        }
        if let Some(before) = before {
            self.enforce_solvency(before, out);
        }
        if let Some(fund) = drawdown {
            self.sample_drawdown(fund);
        }
        if self.adl_quantiles && crate::quantiles::crosses_period(newest, record.ts) {
            crate::quantiles::publish(self, out);
        }
        Ok(())
    }

    /// The fund whose balance this event may move by the rules of section 4 (checked for solvency afterwards, and
    /// sampled for Bybit's drawdown trigger): liquidations, funding and the fund's own fills (engine._funds_of).
    fn fund_of(&self, record: &Record<'_>) -> Option<u32> {
        let symbol = match &record.body {
            Body::Liquidation { symbol, .. } | Body::Funding { symbol, .. } => symbol,
            Body::Fill { account_id, symbol, .. } if account_id.starts_with(FUND_ACCOUNT_PREFIX) => symbol,
            _ => return None,
        };
        self.names.find(symbol).and_then(|id| self.instruments.get(&id)).map(|instrument| instrument.fund_id)
    }

    /// The fund another event can leave below the ADL floor, checked for solvency too but not a drawdown sample
    /// (engine._funds_taken_below_a_floor): a withdrawal from a fund, and a mark under the ADL price `mark`.
    fn fund_taken_below_a_floor(&self, record: &Record<'_>) -> Option<u32> {
        if self.policy.rule == Rule::Socialized {
            return None; // it keeps every lot; a withdrawal is never taken from traders
        }
        match &record.body {
            Body::Transfer { account_id, amount, .. } if amount.value < 0 => account_id
                .strip_prefix(FUND_ACCOUNT_PREFIX)
                .and_then(|name| self.names.find(name))
                .filter(|id| self.funds.contains_key(id)),
            Body::Mark { symbol, .. } if self.policy.price == Price::Mark => {
                self.names.find(symbol).and_then(|id| self.instruments.get(&id)).map(|instrument| instrument.fund_id)
            }
            _ => None,
        }
    }

    // ------------------------------------------------------------------ definitions
    fn on_fund(&mut self, record: &Record<'_>) -> Result<(), Rejected> {
        let Body::Fund { fund_id, settle_asset, surplus, max_inventory_ratio } = &record.body else { unreachable!() };
        let fund = self.names.id(fund_id);
        let asset = self.names.id(settle_asset);
        if let Some(existing) = self.funds.get(&fund) {
            if existing.spec.settle_asset != asset {
                return reject(format!("fund {fund_id} settles in {}; cannot change asset",
                                      self.names.name(existing.spec.settle_asset)));
            }
        }
        let spec = FundSpec { fund_id: fund, settle_asset: asset, surplus: *surplus,
                              max_inventory_ratio: max_inventory_ratio.value };
        match self.funds.get_mut(&fund) {
            Some(existing) => existing.spec = spec,
            None => {
                self.funds.insert(fund, FundState::new(spec));
                self.settle_assets.insert(asset);
            }
        }
        Ok(())
    }

    fn on_instrument(&mut self, record: &Record<'_>) -> Result<(), Rejected> {
        let Body::Instrument {
            symbol, settle_asset, tick_size, lot_size, tiers, liquidation_fee_rate, fund_id, mark_tolerance,
            contract_type, contract_size,
        } = &record.body
        else {
            unreachable!()
        };
        let fund = self.names.find(fund_id).filter(|id| self.funds.contains_key(id));
        let Some(fund) = fund else { return reject(format!("unknown fund {fund_id}")) };
        let fund_asset = self.funds[&fund].spec.settle_asset;
        if self.names.name(fund_asset) != settle_asset.as_ref() {
            return reject(format!("fund {fund_id} settles in {}, instrument {symbol} in {settle_asset}",
                                  self.names.name(fund_asset)));
        }
        let symbol_id = self.names.id(symbol);
        let previous = self.instruments.get(&symbol_id);
        if let Some(previous) = previous {
            if previous.fund_id != fund || previous.settle_asset != fund_asset {
                return reject(format!("instrument {symbol} cannot move to another fund or settlement asset"));
            }
        }
        // linear, or inverse with its contract size: only an inverse instrument has one (docs/design.md section 7)
        let valuation = match (contract_type, contract_size) {
            (ContractType::Inverse, None) => {
                return reject(format!("instrument {symbol}: an inverse instrument needs a contract_size"))
            }
            (ContractType::Linear, Some(_)) => {
                return reject(format!("instrument {symbol}: only an inverse instrument has a contract_size"))
            }
            (_, size) => Valuation { contract_size: size.map(|size| size.value) },
        };
        if previous.is_some_and(|previous| previous.valuation != valuation) {
            return reject(format!("instrument {symbol} cannot change its contract_type or contract_size"));
        }
        if tiers.windows(2).any(|pair| pair[1].max_notional.value <= pair[0].max_notional.value) {
            return reject("tiers must have strictly increasing max_notional");
        }
        if tiers.iter().any(|tier| tier.mmr.value >= crate::numbers::pow10_i128(S18)) {
            return reject("mmr must be below 1");
        }
        let is_new = previous.is_none();
        let tiers = checked_tiers(tiers)?;
        self.instruments.insert(symbol_id, Instrument {
            symbol: symbol_id,
            settle_asset: fund_asset,
            tick_size: tick_size.value,
            lot_size: lot_size.value,
            tiers,
            liquidation_fee_rate: liquidation_fee_rate.value,
            fund_id: fund,
            mark_tolerance: mark_tolerance.map_or(DEFAULT_MARK_TOLERANCE, |tolerance| tolerance.value),
            valuation,
        });
        if is_new {
            self.funds.get_mut(&fund).expect("checked").symbols.push(symbol_id);
        }
        Ok(())
    }

    // ------------------------------------------------------------------ money in and out
    fn on_transfer(&mut self, record: &Record<'_>, out: &mut Outputs) -> Result<(), Rejected> {
        let Body::Transfer { transfer_id, account_id, asset, amount } = &record.body else { unreachable!() };
        let amount = amount.value;
        if amount == 0 {
            return reject("transfer amount must not be zero");
        }
        let asset_id = self.names.find(asset).filter(|id| self.settle_assets.contains(id));
        let (account, fund) = if let Some(fund_name) = account_id.strip_prefix(FUND_ACCOUNT_PREFIX) {
            let Some(fund) = self.names.find(fund_name).filter(|id| self.funds.contains_key(id)) else {
                return reject(format!("unknown fund {fund_name}"));
            };
            let fund_asset = self.funds[&fund].spec.settle_asset;
            if self.names.name(fund_asset) != asset.as_ref() {
                return reject(format!("fund {fund_name} holds {}, not {asset}", self.names.name(fund_asset)));
            }
            (Account::Fund(fund), Some(fund))
        } else {
            let Some(asset_id) = asset_id else { return reject(format!("unknown asset {asset}")) };
            (Account::Wallet { account: self.names.id(account_id), asset: asset_id }, None)
        };
        let asset_id = asset_id.expect("a fund's asset is a settlement asset");
        let balance = self.ledger.balance(account);
        if amount < 0 && add(balance, I256::new(amount)) < 0 {
            return reject(format!("withdrawal of {} exceeds the balance {} of {}", Shown(-amount, S8),
                                  text_wide(balance, S8), account.name(&self.names)));
        }
        let source = Account::External(asset_id);
        self.cause.transfer_id = Some(IdSpan::push(&mut out.posting_ids, transfer_id));
        self.post("transfer", source, account, amount, asset_id, out);
        if let Some(fund) = fund {
            self.fund_entry(fund, "transfer", I256::new(amount), None, source, None, out);
        }
        Ok(())
    }

    // ------------------------------------------------------------------ trading
    fn instrument_of(&self, symbol: &str) -> Result<u32, Rejected> {
        match self.names.find(symbol).filter(|id| self.instruments.contains_key(id)) {
            Some(id) => Ok(id),
            None => reject(format!("unknown symbol {symbol}")),
        }
    }

    fn check_steps(&self, symbol: u32, qty: i128, fill_price: Option<i128>) -> Result<(), Rejected> {
        let instrument = &self.instruments[&symbol];
        if qty % instrument.lot_size != 0 {
            return reject(format!("qty {} is not a multiple of the lot size {}", Shown(qty, S8),
                                  Shown(instrument.lot_size, S8)));
        }
        if let Some(fill_price) = fill_price {
            if fill_price % instrument.tick_size != 0 {
                return reject(format!("price {} is not a multiple of the tick size {}", Shown(fill_price, S8),
                                      Shown(instrument.tick_size, S8)));
            }
        }
        Ok(())
    }

    fn on_fill(&mut self, record: &Record<'_>, out: &mut Outputs) -> Result<(), Rejected> {
        let Body::Fill { fill_id, account_id, symbol, side, qty, price, fee, margin_mode, leverage, position_side } =
            &record.body
        else {
            unreachable!()
        };
        let symbol_id = self.instrument_of(symbol)?;
        let (qty, fill_price, fee) = (qty.value, price.value, fee.value);
        self.check_steps(symbol_id, qty, Some(fill_price))?;
        self.cause.fill_id = Some(IdSpan::push(&mut out.posting_ids, fill_id));
        if let Some(fund_name) = account_id.strip_prefix(FUND_ACCOUNT_PREFIX) {
            return self.fund_fill(fund_name, symbol_id, *side, qty, fill_price, fee, *position_side, out);
        }
        let account = self.names.id(account_id);
        let position_side = *position_side;
        self.check_position_mode(account, symbol_id, position_side)?;
        let delta = if *side == TradeSide::Buy { qty } else { -qty };
        let held = self.positions.get(account, symbol_id, position_side).cloned();
        if let Some(position) = &held {
            if position.margin_mode != *margin_mode {
                return reject(format!("{account_id} holds {} in {} margin; a {} fill cannot change it \
                                       while the position is open", position_label(symbol, position_side),
                                      mode_name(position.margin_mode), mode_name(*margin_mode)));
            }
        }
        if position_side != PositionSide::Both && (position_side == PositionSide::Long) != (delta > 0) {
            let held_size = held.as_ref().map_or(0, Position::size);
            if qty > held_size {
                // a hedge side is only reduced, never flipped
                return reject(format!("{account_id} holds {} {}; a {} of {} would take it below zero",
                                      Shown(held_size, S8), position_label(symbol, position_side),
                                      if *side == TradeSide::Buy { "buy" } else { "sell" }, Shown(qty, S8)));
            }
        }
        let closing = held.as_ref().map_or(0, |p| if (p.qty > 0) != (delta > 0) { p.size().min(qty) } else { 0 });
        let remaining = qty - closing;
        let valuation = self.instruments[&symbol_id].valuation;
        match &held {
            Some(p) if closing == 0 => {
                let grown_size = p.size() + remaining;
                let grown_cost = add(I256::new(p.cost), valuation.value_wide(remaining, fill_price));
                if grown_size >= MAX_POSITION_QTY {
                    return reject(format!("position would hold {}, above the bound 10^12", Shown(grown_size, S8)));
                }
                if grown_cost >= I256::new(MAX_COST) {
                    return reject(format!("position cost would be {}, above the bound 10^22",
                                          text_wide(grown_cost, S16)));
                }
                check_face(valuation, grown_size)?;
            }
            // a new position, or the part of a fill that flips one: within the linear bounds by its wire bounds
            _ => check_face(valuation, remaining)?,
        }
        self.marks.entry(symbol_id).or_insert(fill_price);
        if closing > 0 {
            let proceeds = wide(valuation.value(closing, fill_price));
            self.reduce(account, symbol_id, position_side, closing, proceeds, "realized_pnl", out);
        }
        if remaining > 0 {
            self.open(account, symbol_id, position_side, if delta > 0 { remaining } else { -remaining }, fill_price,
                      *margin_mode, *leverage, out);
        }
        let asset = self.instruments[&symbol_id].settle_asset;
        let wallet = Account::Wallet { account, asset };
        self.post("fee", wallet, Account::Fees(asset), fee, asset, out);
        let balance = self.ledger.balance(wallet);
        if balance < 0 {
            let details = vec![("wallet", J::Owned(text_wide(balance, S8))), ("fill_id", J::Str(fill_id))];
            self.finding("negative_wallet", Some(account), None, Some(symbol_id), details, out);
        }
        Ok(())
    }

    /// An account's positions in one symbol are all one-way (`both`) or all hedge sides, never mixed (section 7).
    fn check_position_mode(&self, account: u32, symbol: u32, side: PositionSide) -> Result<(), Rejected> {
        // in side order, not in the order the positions were opened (a restored state lists them sorted); the
        // account's keys name its positions, so none is looked up (PositionSide orders as its names sort)
        let held = self.positions.keys_of(account).iter().filter(|(s, _)| *s == symbol).map(|&(_, side)| side).min();
        if let Some(held) = held {
            if (held == PositionSide::Both) != (side == PositionSide::Both) {
                let mode = if held == PositionSide::Both { "one-way" } else { "hedge" };
                let symbol_name = self.names.name(symbol);
                return reject(format!("{} holds {} in {mode} mode; a position_side {} record cannot mix modes in \
                                       {symbol_name}", self.names.name(account),
                                      position_label(symbol_name, held), side.name()));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn open(&mut self, account: u32, symbol: u32, position_side: PositionSide, qty: i128, fill_price: i128,
            margin_mode: MarginMode, leverage: Dec, out: &mut Outputs) {
        let value = self.instruments[&symbol].valuation.value(qty.abs(), fill_price);
        match self.positions.get_mut(account, symbol, position_side) {
            Some(position) => {
                position.qty += qty;
                position.cost += value;
                position.leverage = leverage;
            }
            None => {
                let side = if qty > 0 { Side::Long } else { Side::Short };
                // the same position back before its close was published: as if never gone
                let adl_quantile = self.quantile_closes.remove(&(account, symbol, side)).unwrap_or(0);
                self.positions.add(Position { account, symbol, qty, cost: value, margin_mode, leverage,
                                              position_side, adl_quantile })
            }
        }
        self.adl_index.changed.mark(account);
        if margin_mode == MarginMode::Isolated {
            let initial_margin = ratio(I256::new(value), S16, I256::new(leverage.value), S8, S8, Rounding::HalfEven);
            let asset = self.instruments[&symbol].settle_asset;
            self.post("initial_margin", Account::Wallet { account, asset },
                      Account::Isolated { account, symbol, side: position_side },
                      crate::numbers::narrow(initial_margin), asset, out);
        }
    }

    /// Close qty of a trader's position for total proceeds (1e-16; a lot's cost share at a takeover or an ADL: 512
    /// bits); post realized PnL (as `kind`: a trade, the takeover of a liquidated position, a deleverage) and release
    /// margin.
    #[allow(clippy::too_many_arguments)]
    fn reduce(&mut self, account: u32, symbol: u32, position_side: PositionSide, qty: i128, proceeds: Wide,
              kind: &'static str, out: &mut Outputs) -> I256 {
        let (asset, valuation) = (self.instruments[&symbol].settle_asset, self.instruments[&symbol].valuation);
        let wallet = Account::Wallet { account, asset };
        let position = self.positions.get(account, symbol, position_side).expect("a held position").clone();
        let size = position.size();
        let cost_share = share(position.cost, S16, qty, size);
        let realized_exact = if valuation.value_long(position.qty > 0) {
            wsub(proceeds, wide(cost_share))
        } else {
            wsub(wide(cost_share), proceeds)
        };
        let realized = money_wide(realized_exact, S16);
        self.post(kind, Account::Settlement(symbol), wallet, realized, asset, out);
        if position.margin_mode == MarginMode::Isolated {
            let margin_account = Account::Isolated { account, symbol, side: position_side };
            let margin = self.ledger.balance(margin_account);
            let released = narrow_wide(share_wide(wide256(margin), S8, qty, size));
            self.post("margin_release", margin_account, wallet, released, asset, out);
        }
        let side = position.side();
        let position = self.positions.get_mut(account, symbol, position_side).expect("a held position");
        position.cost -= cost_share;
        position.qty -= if position.qty > 0 { qty } else { -qty };
        if position.qty == 0 {
            assert!(position.cost == 0, "closed position {}/{} kept cost", self.names.name(account),
                    position_label(self.names.name(symbol), position_side));
            let published = position.adl_quantile;
            self.positions.remove(account, symbol, position_side);
            out.closed_positions.push((account, symbol, position_side));
            if published != 0 {
                self.quantile_closes.insert((account, symbol, side), published);
            }
            self.adl_index.drop_position(account, symbol, side);
        }
        self.adl_index.changed.mark(account);
        realized
    }

    fn on_mark(&mut self, record: &Record<'_>, out: &mut Outputs) -> Result<(), Rejected> {
        let Body::Mark { symbol, mark_price, .. } = &record.body else { unreachable!() };
        let symbol_id = self.instrument_of(symbol)?;
        let admission = &mut self.admission;
        if let Some(bound) = admission.mark_clock.bound(symbol, &admission.clock) {
            if record.ts < bound {
                return reject(format!("stale mark: ts {} is older than the {symbol} mark of ts {bound}", record.ts));
            }
        }
        self.marks.insert(symbol_id, mark_price.value);
        admission.mark_clock.applied(symbol, record.ts, &admission.clock);
        self.check_inventory(symbol_id, out);
        Ok(())
    }

    fn on_funding(&mut self, record: &Record<'_>, out: &mut Outputs) -> Result<(), Rejected> {
        let Body::Funding { symbol, rate, mark_price } = &record.body else { unreachable!() };
        let symbol_id = self.instrument_of(symbol)?;
        if rate.value.abs() >= crate::numbers::pow10_i128(S18) {
            return reject(format!("funding rate {} is not a plausible rate", Shown(rate.value, S18)));
        }
        let admission = &mut self.admission;
        if let Some(last) = admission.funding_clock.bound(symbol, &admission.clock) {
            if record.ts <= last {
                return reject(format!("stale funding: ts {} is not after the {symbol} funding of ts {last}",
                                      record.ts));
            }
        }
        admission.funding_clock.applied(symbol, record.ts, &admission.clock);
        let clearing = Account::Funding(symbol_id);
        let (mark, rate) = (mark_price.value, rate.value);
        let (asset, valuation) = (self.instruments[&symbol_id].settle_asset, self.instruments[&symbol_id].valuation);
        // HALF_EVEN(V(q, mark) x rate) to 1e-8, signed by q: the value (1e-16) times the rate (1e-18)
        let payment_of = |qty: i128| money(product(valuation.signed_value(qty, mark), rate), S16 + S18);
        let mut payments = Vec::new();
        let mut holders = self.positions.holders(symbol_id).to_vec();
        // postings by account, then position side (docs/design.md section 10, "Postings")
        holders.sort_by(|a, b| self.names.name(a.0).cmp(self.names.name(b.0)).then(a.1.name().cmp(b.1.name())));
        for (account, side) in holders {
            // each hedge side pays on its own signed qty
            let position = self.positions.get(account, symbol_id, side).expect("indexed");
            let payment = payment_of(position.qty);
            let payer = if position.margin_mode == MarginMode::Isolated {
                Account::Isolated { account, symbol: symbol_id, side }
            } else {
                Account::Wallet { account, asset }
            };
            payments.push((payer, payment));
        }
        for (payer, payment) in payments {
            self.post("funding", payer, clearing, payment, asset, out);
        }
        let fund = self.instruments[&symbol_id].fund_id;
        let net = self.funds[&fund].net_qty(symbol_id);
        // the fund's net is bounded only lot by lot (its lots leave one side at a time): valued in 256 bits
        let value = valuation.value_wide(net.abs(), mark);
        let payment = money(mul(if net < 0 { -value } else { value }, I256::new(rate)), S16 + S18);
        if payment != 0 {
            self.post("funding", Account::Fund(fund), clearing, payment, asset, out);
            self.fund_entry(fund, "funding", I256::new(-payment), None, clearing, Some(symbol_id), out);
        }
        Ok(())
    }

    // ------------------------------------------------------------------ liquidation and the fund
    fn on_liquidation(&mut self, record: &Record<'_>, out: &mut Outputs) -> Result<(), Rejected> {
        let Body::Liquidation {
            liquidation_id, account_id, symbol, qty, mark_price, bankruptcy_price, executions, position_side,
        } = &record.body
        else {
            unreachable!()
        };
        let symbol_id = self.instrument_of(symbol)?;
        if account_id.starts_with(FUND_ACCOUNT_PREFIX) {
            return reject("a fund's inventory is not liquidated");
        }
        self.cause.liquidation_id = Some(IdSpan::push(&mut out.posting_ids, liquidation_id));
        let account = self.names.find(account_id);
        let position = account.and_then(|a| self.positions.get(a, symbol_id, *position_side)).cloned();
        let Some(position) = position else {
            return reject(format!("{account_id} holds no {} position", position_label(symbol, *position_side)));
        };
        let account = position.account;
        let qty = qty.value;
        if qty > position.size() {
            return reject(format!("liquidation of {} exceeds the position of {}", Shown(qty, S8),
                                  Shown(position.size(), S8)));
        }
        self.check_steps(symbol_id, qty, None)?;
        let executed: i128 = executions.iter().map(|e| e.qty.value).sum();
        if executed > qty {
            return reject(format!("executions total {}, more than the liquidated {}", Shown(executed, S8),
                                  Shown(qty, S8)));
        }
        for execution in executions {
            self.check_steps(symbol_id, execution.qty.value, Some(execution.price.value))?;
        }
        let fund = self.instruments[&symbol_id].fund_id;
        let net = self.funds[&fund].net_qty(symbol_id) + if position.qty > 0 { qty } else { -qty };
        if net.abs() >= MAX_POSITION_QTY {
            return reject(format!("fund {} would hold {} {symbol}, above the bound 10^12", self.names.name(fund),
                                  Shown(net, S8)));
        }
        let valuation = self.instruments[&symbol_id].valuation;
        if valuation.inverse() && valuation.face(net) >= I256::new(MAX_FACE) {
            return reject(format!("fund {} would hold a face value of {} in {symbol}, above the bound 10^14",
                                  self.names.name(fund), text_wide(valuation.face(net), S16)));
        }

        let mark = mark_price.value;
        // the published mark in force (one a mark or a liquidation set: a fill's price stands in before either), and
        // the account's margin at it
        let in_force = self.admission.mark_clock.seen(symbol).then(|| self.marks[&symbol_id]);
        let view_in_force = in_force.filter(|&m| m != mark).map(|_| self.margin_view(&position));
        self.marks.insert(symbol_id, mark);
        let admission = &mut self.admission;
        admission.mark_clock.applied(symbol, record.ts, &admission.clock);
        let instrument = self.instruments[&symbol_id].clone();
        let view = self.margin_view(&position);
        self.check_liquidation_mark(account, liquidation_id, symbol_id, mark, in_force, &view, view_in_force.as_ref(),
                                    out);
        let size = position.size();
        // the equity behind (1e-8) and the lot's cost (1e-16) derive from a balance: 512 bits (section 9.3)
        let equity_behind = if qty == size {
            wratio(view.equity_share, S16, Wide::ONE, 0, S8, Rounding::Ceiling)
        } else {
            wratio(wmul(view.equity_share, wide(qty)), S16 + S8, wide(size), S8, S8, Rounding::Ceiling)
        };
        let value = wide(valuation.value(qty, mark));
        let equity_16 = wmul(equity_behind, wpow10(S16 - S8));
        let mut lot_cost =
            if valuation.value_long(position.qty > 0) { wsub(value, equity_16) } else { wadd(value, equity_16) };
        if let Some((clamped_cost, clamped_price)) = clamped_lot_cost(&instrument, qty, lot_cost) {
            // no price within the wire's reaches zero equity: the lot is taken at the nearest one
            let computed = valuation.price(qty, lot_cost, Rounding::HalfEven);
            let details = vec![
                ("computed", J::Owned(text_512(computed, S8))),
                ("clamped_to", J::Owned(text(clamped_price, S8))),
                ("equity_share", J::Owned(text_512(equity_behind, S8))),
            ];
            self.finding("bp_clamped", Some(account), Some(liquidation_id), Some(symbol_id), details, out);
            lot_cost = clamped_cost;
        }
        let computed_bp = valuation.price(qty, lot_cost, Rounding::HalfEven);
        if let Some(venue) = bankruptcy_price {
            if wsub(wide(venue.value), computed_bp).unsigned_abs() > wide(instrument.tick_size).unsigned_abs() {
                let details = vec![
                    ("computed", J::Owned(text_512(computed_bp, S8))),
                    ("venue", J::Owned(text(venue.value, S8))),
                    ("tick_size", J::Owned(text(instrument.tick_size, S8))),
                    ("equity_share", J::Owned(text_512(equity_behind, S8))),
                ];
                self.finding("bp_mismatch", Some(account), Some(liquidation_id), Some(symbol_id), details, out);
            }
        }
        let lot = Lot {
            liquidation_id: liquidation_id.to_string(),
            symbol: symbol_id,
            side: position.side(),
            qty,
            cost: lot_cost,
            liquidated_account: account,
            seq: self.seq,
        };
        self.reduce(account, symbol_id, position.position_side, qty, lot_cost, "takeover", out);
        let symbol_name = self.names.name(symbol_id).to_string();
        let fund_state = self.funds.get_mut(&fund).expect("an instrument's fund");
        fund_state.add_lot(&symbol_name, lot);
        let lot_index = fund_state.lots[&symbol_name].len() - 1;
        for execution in executions {
            self.realize(fund, &symbol_name, lot_index, execution.qty.value, execution.price.value, out);
        }
        let remaining = self.funds[&fund].lots.get(&symbol_name).and_then(|lots| lots.get(lot_index))
            .filter(|lot| lot.liquidation_id == liquidation_id.as_ref() && lot.seq == self.seq)
            .map_or(0, |lot| lot.qty);
        if remaining > 0 {
            if let Some((trigger, reset)) = self.takeover(fund, &symbol_name, lot_index) {
                if self.deleverage(fund, &symbol_name, lot_index, trigger, reset, None, out) > 0 {
                    return Ok(()); // nobody left to take it: the mark's own check would find the same
                }
            }
        }
        self.check_inventory(symbol_id, out);
        Ok(())
    }

    /// The liquidation's mark against the published mark in force (docs/design.md section 7): `mark_mismatch` beyond
    /// the instrument's tolerance; `not_liquidatable` judged at both marks, saying at which it was not.
    #[allow(clippy::too_many_arguments)]
    fn check_liquidation_mark(&mut self, account: u32, liquidation_id: &str, symbol: u32, mark: i128,
                              in_force: Option<i128>, view: &MarginView, view_in_force: Option<&MarginView>,
                              out: &mut Outputs) {
        let tolerance = self.instruments[&symbol].mark_tolerance;
        if let Some(in_force) = in_force {
            // |mark - in force| (1e-8) against tolerance (1e-18) x in force (1e-8): compared at 1e-26
            if product((mark - in_force).abs(), pow10_i128(S18)) > product(tolerance, in_force) {
                let details = vec![
                    ("mark_price", J::Owned(text(mark, S8))),
                    ("mark_in_force", J::Owned(text(in_force, S8))),
                    ("tolerance", J::Owned(text(tolerance, S18))),
                ];
                self.finding("mark_mismatch", Some(account), Some(liquidation_id), Some(symbol), details, out);
            }
        }
        let at_liquidation_mark = !view.liquidatable();
        let at_mark_in_force = view_in_force.is_some_and(|v| !v.liquidatable());
        if !(at_liquidation_mark || at_mark_in_force) {
            return;
        }
        let mut details = vec![
            ("margin_balance", J::Owned(text_512(view.margin_balance, S16))),
            ("maintenance_margin", J::Owned(text_wide(view.maintenance_margin, S8))),
            ("mark_price", J::Owned(text(mark, S8))),
        ];
        if let (Some(other), Some(in_force)) = (view_in_force, in_force) {
            details.push(("mark_in_force", J::Owned(text(in_force, S8))));
            details.push(("margin_balance_at_mark_in_force", J::Owned(text_512(other.margin_balance, S16))));
            details.push(("maintenance_margin_at_mark_in_force", J::Owned(text_wide(other.maintenance_margin, S8))));
        }
        let at = if at_mark_in_force {
            if at_liquidation_mark { "both" } else { "mark_in_force" }
        } else if in_force == Some(mark) {
            "both"
        } else {
            "liquidation_mark"
        };
        details.push(("not_liquidatable_at", J::Str(at)));
        self.finding("not_liquidatable", Some(account), Some(liquidation_id), Some(symbol), details, out);
    }

    /// The fund's own trigger on a mark move (docs/design.md section 7): when the fund of `symbol` no longer accepts
    /// its inventory at the new mark, it deleverages the excess of its net position in `symbol` at once, from its
    /// lots on that side oldest first; a shortfall stops it.
    fn check_inventory(&mut self, symbol: u32, out: &mut Outputs) {
        // under `socialized` and Bybit's drawdown trigger the fund keeps what it holds until an event of its own
        if self.policy.rule == Rule::Socialized || self.policy.drawdown.is_some() {
            return;
        }
        let fund = self.instruments[&symbol].fund_id;
        let symbol_name = self.names.name(symbol).to_string();
        loop {
            let net = self.funds[&fund].net_qty(symbol);
            if net == 0 || self.accepts_inventory(fund) {
                return;
            }
            let mut wanted = self.excess_qty(fund, symbol, net);
            let side = if net > 0 { Side::Long } else { Side::Short };
            let mut index = 0;
            while wanted > 0 {
                let Some(lots) = self.funds[&fund].lots.get(&symbol_name) else { break };
                let Some(offset) = lots.iter().skip(index).position(|lot| lot.side == side) else { break };
                index += offset;
                let lot_qty = lots[index].qty;
                let take = lot_qty.min(wanted);
                wanted -= take;
                if self.deleverage(fund, &symbol_name, index, "inventory", None, Some(take), out) > 0 {
                    return;
                }
                if take < lot_qty {
                    index += 1; // the lot stays, partly taken; a lot taken whole left the list
                }
            }
        }
    }

    /// The qty of `net` whose notional at mark is above the limit, rounded up to whole lots (docs/design.md section
    /// 9.4); all of it when the fund's balance is not above zero.
    fn excess_qty(&self, fund: u32, symbol: u32, net: i128) -> i128 {
        let room = sub(self.ledger.balance(Account::Fund(fund)), I256::new(self.policy.floor));
        if room <= 0 {
            return net.abs();
        }
        let fund_state = &self.funds[&fund];
        // notional (1e-16) - ratio (1e-18) x (balance - floor) (1e-8), at 1e-26
        let excess = sub(mul(self.inventory_notional(fund_state), pow10(S26 - S16)),
                         mul(I256::new(fund_state.spec.max_inventory_ratio), room));
        let instrument = &self.instruments[&symbol];
        let mark = self.marks[&symbol];
        let lots = match instrument.valuation.contract_size {
            // CEILING(excess / (mark x lot)) whole lots: excess at 1e-26, mark x lot at 1e-16
            None => ratio(excess, S26, product(mark, instrument.lot_size), S16, 0, Rounding::Ceiling),
            // inverse: CEILING(excess x mark / (s x lot)): excess x mark at 1e-34, s x lot at 1e-16
            Some(contract_size) => ratio(mul(excess, I256::new(mark)), S26 + S8, product(contract_size,
                                         instrument.lot_size), S16, 0, Rounding::Ceiling),
        };
        // at most the net qty: an inverse excess (coin of every symbol of the fund) in contracts of this symbol at its
        // mark can pass any qty
        crate::numbers::narrow(mul(lots, I256::new(instrument.lot_size)).min(I256::new(net.abs())))
    }

    #[allow(clippy::too_many_arguments)]
    fn fund_fill(&mut self, fund_name: &str, symbol: u32, side: TradeSide, qty: i128, fill_price: i128, fee: i128,
                 position_side: PositionSide, out: &mut Outputs) -> Result<(), Rejected> {
        let Some(fund) = self.names.find(fund_name).filter(|id| self.funds.contains_key(id)) else {
            return reject(format!("unknown fund {fund_name}"));
        };
        let instrument = &self.instruments[&symbol];
        if instrument.fund_id != fund {
            return reject(format!("{} belongs to fund {}, not {fund_name}", self.names.name(symbol),
                                  self.names.name(instrument.fund_id)));
        }
        let asset = instrument.settle_asset;
        let closing = if side == TradeSide::Sell { Side::Long } else { Side::Short };
        if position_side != PositionSide::Both && position_side.name() != closing.name() {
            return reject(format!("a fund's {} closes its {} lots; position_side {} does not",
                                  if side == TradeSide::Buy { "buy" } else { "sell" }, closing.name(),
                                  position_side.name()));
        }
        let symbol_name = self.names.name(symbol).to_string();
        let held: i128 = self.funds[&fund].lots.get(&symbol_name)
            .map_or(0, |lots| lots.iter().filter(|lot| lot.side == closing).map(|lot| lot.qty).sum());
        if qty > held {
            return reject(format!("fund {fund_name} holds {} {} {symbol_name}; cannot {} {}", Shown(held, S8),
                                  closing.name(), if side == TradeSide::Buy { "buy" } else { "sell" },
                                  Shown(qty, S8)));
        }
        let mut remaining = qty;
        while remaining > 0 {
            let lots = &self.funds[&fund].lots[&symbol_name];
            let index = lots.iter().position(|lot| lot.side == closing).expect("held covers qty");
            let take = lots[index].qty.min(remaining);
            self.realize(fund, &symbol_name, index, take, fill_price, out);
            remaining -= take;
        }
        if fee != 0 {
            self.post("fee", Account::Fund(fund), Account::Fees(asset), fee, asset, out);
            self.fund_entry(fund, "fee", I256::new(-fee), None, Account::Fees(asset), Some(symbol), out);
        }
        Ok(())
    }

    /// The fund closes qty of a lot in the market; a gain is split per the surplus policy.
    fn realize(&mut self, fund: u32, symbol_name: &str, lot_index: usize, qty: i128, fill_price: i128,
               out: &mut Outputs) {
        let symbol = self.funds[&fund].lots[symbol_name][lot_index].symbol;
        let proceeds = wide(self.instruments[&symbol].valuation.value(qty, fill_price));
        self.realize_proceeds(fund, symbol_name, lot_index, qty, proceeds, out);
    }

    /// The fund closes qty of a lot for total proceeds (1e-16); a gain is split per the surplus policy.
    /// The proceeds are Wide: a drawdown round's derive from the lot's cost (section 9.3).
    fn realize_proceeds(&mut self, fund: u32, symbol_name: &str, lot_index: usize, qty: i128, proceeds: Wide,
                        out: &mut Outputs) {
        let (lot, cost_share) = self.take_from_lot(fund, symbol_name, lot_index, qty);
        let instrument = &self.instruments[&lot.symbol];
        let exact = if instrument.valuation.value_long(lot.side == Side::Long) {
            wsub(proceeds, cost_share)
        } else {
            wsub(cost_share, proceeds)
        };
        let gain = money_wide(exact, S16);
        let (asset, fee_rate) = (instrument.settle_asset, instrument.liquidation_fee_rate);
        let source = Account::Settlement(lot.symbol);
        let liquidation_id = Some(lot.liquidation_id.as_str());
        let cause = self.cause.liquidation_id.replace(IdSpan::push(&mut out.posting_ids, &lot.liquidation_id));
        if gain < 0 {
            self.post("liquidation_loss", Account::Fund(fund), source, -gain, asset, out);
            self.fund_entry(fund, "liquidation_loss", gain, liquidation_id, source, Some(lot.symbol), out);
        } else {
            let mut kept = gain;
            if self.funds[&fund].spec.surplus == Surplus::Trader {
                kept = gain.min(money_wide(wmul(wide(fee_rate), proceeds), S18 + S16));
                self.post("surplus_refund", source, Account::Wallet { account: lot.liquidated_account, asset },
                          sub(gain, kept), asset, out);
            }
            if kept > 0 {
                self.post("liquidation_gain", source, Account::Fund(fund), kept, asset, out);
                self.fund_entry(fund, "liquidation_gain", kept, liquidation_id, source, Some(lot.symbol), out);
            }
        }
        self.cause.liquidation_id = cause;
    }

    /// Take qty out of a lot: its cost share (1e-16), the whole remainder for the whole lot. Returns the lot as it
    /// was before (its id and side) and the share.
    fn take_from_lot(&mut self, fund: u32, symbol_name: &str, lot_index: usize, qty: i128) -> (Lot, Wide) {
        let fund_state = self.funds.get_mut(&fund).expect("a fund");
        let lots = fund_state.lots.get_mut(symbol_name).expect("the lot's symbol");
        let lot = &mut lots[lot_index];
        assert!(qty <= lot.qty, "fund closes {qty} of lot {} holding {}", lot.liquidation_id, lot.qty);
        let before = lot.clone();
        let cost_share = share_wide(lot.cost, S16, qty, lot.qty);
        lot.qty -= qty;
        lot.cost = wsub(lot.cost, cost_share);
        let signed = if lot.side == Side::Long { qty } else { -qty };
        let symbol = lot.symbol;
        let emptied = lot.qty == 0;
        *fund_state.net.get_mut(&symbol).expect("net of a held symbol") -= signed;
        if emptied {
            lots.remove(lot_index);
            if lots.is_empty() {
                fund_state.lots.remove(symbol_name);
                fund_state.net.remove(&symbol);
            }
        }
        (before, cost_share)
    }

    /// None when the fund keeps the rest of a lot (sections 4 and 11.3): while its balance is above its floor and its
    /// inventory's notional within max_inventory_ratio x (balance - floor); under Bybit's trigger, unless the
    /// drawdown trigger is on; under `socialized`, always.
    fn takeover(&mut self, fund: u32, symbol_name: &str, lot_index: usize) -> Option<TakeoverRefusal> {
        if self.policy.rule == Rule::Socialized {
            return None;
        }
        let balance = self.ledger.balance(Account::Fund(fund));
        let floor = I256::new(self.policy.floor);
        if balance <= floor {
            return Some(("takeover", None));
        }
        if self.policy.drawdown.is_some() {
            return self.drawdown_takeover(fund, symbol_name, lot_index, balance).map(|reset| ("drawdown", Some(reset)));
        }
        (!self.accepts_inventory(fund)).then_some(("takeover", None))
    }

    /// Its balance above the policy's floor, and its inventory's notional within max_inventory_ratio x (balance -
    /// floor).
    fn accepts_inventory(&self, fund: u32) -> bool {
        let room = sub(self.ledger.balance(Account::Fund(fund)), I256::new(self.policy.floor));
        if room <= 0 {
            return false;
        }
        let fund_state = &self.funds[&fund];
        // notional at 1e-16 against ratio (1e-18) x room (1e-8): compared at 1e-26, in 512 bits (section 9.3)
        let notional = self.inventory_notional(fund_state);
        wmul(wide256(notional), wpow10(S26 - S16)) <= wmul(wide(fund_state.spec.max_inventory_ratio), wide256(room))
    }

    /// Sum over the fund's symbols of |net qty| x mark, exact (1e-16).
    pub fn inventory_notional(&self, fund_state: &FundState) -> I256 {
        let mut total = I256::ZERO;
        for lots in fund_state.lots.values() {
            let symbol = lots.front().expect("no empty lot list").symbol;
            let value = self.instruments[&symbol].valuation.value_wide(fund_state.net_qty(symbol).abs(),
                                                                         self.marks[&symbol]);
            total = add(total, value);
        }
        total
    }

    /// What the fund's lots gain (or lose) at the marks over their costs, exact (1e-16): V(qty, mark) - cost for a
    /// lot long in value space, cost - V(qty, mark) otherwise (backstop.core.engine.Engine.inventory_upnl).
    pub fn inventory_upnl(&self, fund_state: &FundState) -> Wide {
        let mut total = Wide::ZERO;
        for lot in fund_state.lots.values().flatten() {
            let valuation = self.instruments[&lot.symbol].valuation;
            let value = wide256(valuation.value_wide(lot.qty, self.marks[&lot.symbol]));
            total = wadd(total, if valuation.value_long(lot.side == Side::Long) { wsub(value, lot.cost) } else { wsub(lot.cost, value) });
        }
        total
    }

    /// One ADL round (section 11): close `qty` of the lot (all of it when None) against opposite-side positions as
    /// the policy's rule allocates it, at the lot's bankruptcy price (the fund realizes nothing), at the mark, or for
    /// the reset proceeds of a drawdown round (the fund realizes the difference); then write the round's metrics.
    /// Returns the qty nobody was left to take (an `adl_shortfall`).
    #[allow(clippy::too_many_arguments)]
    fn deleverage(&mut self, fund: u32, symbol_name: &str, lot_index: usize, trigger: &'static str,
                  reset: Option<Wide>, qty: Option<i128>, out: &mut Outputs) -> i128 {
        let lot = self.funds[&fund].lots[symbol_name][lot_index].clone();
        let symbol = lot.symbol;
        let opposite = lot.side.opposite();
        let mark = self.marks[&symbol];
        let balance = self.ledger.balance(Account::Fund(fund));
        let valuation = self.instruments[&symbol].valuation;
        // long in value space: a linear long lot, an inverse short one (docs/design.md section 7)
        let long = valuation.value_long(lot.side == Side::Long);
        // the lot's cost, and so the deficit and the haircut, derive from a balance: 512 bits (section 9.3)
        let wanted = qty.unwrap_or(lot.qty);
        // the part of the lot this round closes (all of it, unless the fund's trigger on a mark takes its excess)
        let round_lot = match qty {
            None => lot.clone(),
            Some(wanted) => Lot { qty: wanted, cost: share_wide(lot.cost, S16, wanted, lot.qty), ..lot.clone() },
        };
        let value = wide(valuation.value(wanted, mark));
        let deficit = adl::deficit(long, round_lot.cost, value);
        let price_rule = match (reset, self.policy.price) {
            (Some(_), _) => "reset",
            (None, Price::Mark) => "mark",
            (None, Price::Bankruptcy) => "bankruptcy",
            (None, Price::Floor) => {
                // OKX: at the mark while the fund can pay the deficit above its floor
                let room = wmul(wide256(sub(balance, I256::new(self.policy.floor))), wpow10(S16 - S8));
                if room >= deficit { "mark" } else { "bankruptcy" }
            }
        };
        let whole = match price_rule {
            "mark" => value,
            "reset" => reset.expect("a reset round"),
            _ => round_lot.cost,
        };
        let full_haircut = if long { wsub(whole, value) } else { wsub(value, whole) };
        // BitMEX's queue walk needs only the head of the queue the index finds (the metrics rank nobody: they take
        // every eligible position's figures apart); Binance's score and the allocations need every position ranked
        // the account the lot was taken from is never its counterparty (a hedge account's other side is untouched,
        // design section 7): the queue reaches past it, which keeps its place (ranks and quantiles are the queue's)
        let own = self.lot_owner_position(&lot, opposite);
        let reach = wanted + own.map_or(0, |(_, size)| size);
        let (queue, count) = if self.policy.rule == Rule::Bitmex {
            self.adl_top(symbol, opposite, reach)
        } else {
            let queue = self.adl_queue(symbol, opposite);
            let count = queue.len();
            (queue, count)
        };
        let own_key = own.map(|(side, _)| (lot.liquidated_account, side));
        let (ranks, queue): (Vec<usize>, Vec<Ranked>) = queue.into_iter().enumerate()
            .filter(|(_, ranked)| own_key != Some((ranked.account, ranked.position_side)))
            .map(|(index, ranked)| (index + 1, ranked))
            .unzip();
        let eligible = self.full_metrics.then(|| self.eligible_figures(symbol, opposite, mark, own_key));
        let takes = self.allocate(&queue, &round_lot, full_haircut);
        let mut hits = Vec::new();
        let mut left = wanted;
        let mut reset_left = reset;
        for ((ranked, take), rank) in queue.iter().zip(takes).zip(ranks) {
            if left == 0 {
                break;
            }
            if take == 0 {
                continue;
            }
            let adl_event_id = IdSpan::write(&mut out.posting_ids, |ids| {
                ids.extend_from_slice(b"adl-");
                canonical::write_int(ids, i128::from(self.seq));
                ids.push(b'-');
                canonical::write_int(ids, i128::from(self.counts.adl_events));
            });
            let causes = (self.cause.liquidation_id.replace(IdSpan::push(&mut out.posting_ids, &lot.liquidation_id)),
                          self.cause.adl_event_id.replace(adl_event_id));
            let position = self.positions.get(ranked.account, symbol, ranked.position_side).expect("a queued position");
            let figures = self.figures(position, mark);
            let proceeds = match (price_rule, reset_left) {
                ("mark", _) => {
                    self.realize(fund, symbol_name, lot_index, take, mark, out);
                    wide(valuation.value(take, mark))
                }
                (_, Some(rest)) => {
                    let proceeds = share_wide(rest, S16, take, left);
                    reset_left = Some(wsub(rest, proceeds));
                    self.realize_proceeds(fund, symbol_name, lot_index, take, proceeds, out);
                    proceeds
                }
                _ => self.take_from_lot(fund, symbol_name, lot_index, take).1,
            };
            left -= take;
            self.reduce(ranked.account, symbol, ranked.position_side, take, proceeds, "adl", out);
            self.adl_event(fund, &lot, ranked.account, opposite, take, valuation.reported_price(take, proceeds), rank,
                           ranked.score, quantile(rank, count), out);
            (self.cause.liquidation_id, self.cause.adl_event_id) = causes;
            let at_mark = wide(valuation.value(take, mark)); // the haircut: what the take gave up against the mark
            // the taker is on the other side of the lot in value space too
            let haircut = if long { wsub(proceeds, at_mark) } else { wsub(at_mark, proceeds) };
            hits.push(Hit { figures, qty: take, haircut });
        }
        let takers = count - usize::from(own.is_some()); // the queue holds the owner's position, passed over
        if left > 0 {
            // a capped allocation may leave takers, which a later round of the event may take more from
            if self.takers(symbol, opposite, own_key).next().is_none() {
                self.fell_short.push(lot.liquidation_id.clone());
            }
            let details = vec![("unfilled_qty", J::Owned(text(left, S8))), ("counterparties", J::Owned(takers.to_string()))];
            self.finding("adl_shortfall", Some(lot.liquidated_account), Some(&lot.liquidation_id), Some(symbol),
                         details, out);
        }
        let closed = wanted - left;
        let start = Start { trigger, fund, lot: Some(round_lot), mark: Some(mark), balance };
        self.round(start, deficit, Some(price_rule), closed, &hits, eligible.as_deref(), takers, out);
        left
    }

    /// The takes of one round, aligned with the queue (section 11.2).
    fn allocate(&self, queue: &[Ranked], lot: &Lot, full_haircut: Wide) -> Vec<i128> {
        let lot_size = self.instruments[&lot.symbol].lot_size;
        match self.policy.rule {
            Rule::ProRata => adl::pro_rata(&queue.iter().map(|r| r.size).collect::<Vec<_>>(), lot.qty, lot_size),
            Rule::CappedProRata | Rule::MinMaxLeverage => {
                let candidates: Vec<Candidate<'_>> = queue.iter().map(|ranked| {
                    let position = self.positions.get(ranked.account, lot.symbol, ranked.position_side)
                        .expect("a queued position");
                    Candidate { account: ranked.account, name: self.names.name(ranked.account), size: position.size(),
                                profit: self.exposure(position).0,
                                equity: self.margin_view(position).equity_share }
                }).collect();
                if self.policy.rule == Rule::CappedProRata {
                    adl::capped_pro_rata(&candidates, lot.qty, lot_size, full_haircut)
                } else {
                    adl::min_max_leverage(&candidates, lot.qty, lot_size, full_haircut)
                }
            }
            _ => takes(queue, lot.qty),
        }
    }

    /// A position's figures at the mark for the round metrics.
    fn figures(&self, position: &Position, mark: i128) -> Figures {
        let view = self.margin_view(position);
        let notional = self.instruments[&position.symbol].valuation.value(position.size(), mark);
        Figures::of(position.account, position.cost, self.exposure(position).0, view.equity_share, notional)
    }

    /// The open positions on `side` of the symbol but the lot owner's: who a round may take from (engine._takers).
    fn takers(&self, symbol: u32, side: Side, own: Option<(u32, PositionSide)>) -> impl Iterator<Item = &Position> {
        self.positions.holders(symbol).iter()
            .filter(move |&&key| Some(key) != own)
            .filter_map(move |&(account, position_side)| self.positions.get(account, symbol, position_side))
            .filter(move |position| position.side() == side)
    }

    fn eligible_figures(&self, symbol: u32, side: Side, mark: i128, own: Option<(u32, PositionSide)>) -> Vec<Figures> {
        self.takers(symbol, side, own).map(|position| self.figures(position, mark)).collect()
    }

    /// The position on `side` of the account the lot was taken from, if it holds one (engine._lot_owner_position):
    /// its side and size.
    fn lot_owner_position(&self, lot: &Lot, side: Side) -> Option<(PositionSide, i128)> {
        let hedge_side = if side == Side::Long { PositionSide::Long } else { PositionSide::Short };
        [hedge_side, PositionSide::Both].into_iter().find_map(|position_side| {
            self.positions.get(lot.liquidated_account, lot.symbol, position_side)
                .filter(|position| position.side() == side)
                .map(|position| (position_side, position.size()))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn round(&mut self, start: Start, deficit: Wide, price_rule: Option<&str>, closed: i128, hits: &[Hit],
             eligible: Option<&[Figures]>, count: usize, out: &mut Outputs) {
        let id = format!("round-{}-{}", self.seq, self.counts.rounds);
        let names = &self.names;
        let lot = start.lot.as_ref();
        let round_start = adl::RoundStart {
            trigger: start.trigger,
            fund: names.name(start.fund),
            symbol: lot.map(|lot| names.name(lot.symbol)),
            liquidation_id: lot.map(|lot| lot.liquidation_id.as_str()),
            side: lot.map(|lot| lot.side.name()),
            qty: lot.map(|lot| lot.qty),
            cost: lot.map(|lot| lot.cost),
            bankruptcy_price: lot.map(|lot| self.instruments[&lot.symbol].valuation.reported_price(lot.qty, lot.cost)),
            mark: start.mark,
            fund_balance: start.balance,
            floor: self.policy.floor,
        };
        let round = adl::write_round(&mut out.adl_rounds, names, &id, self.seq, self.ts, &self.policy, &round_start,
                                     deficit, price_rule, closed, hits, eligible, count);
        let asset = self.names.name(self.funds[&start.fund].spec.settle_asset);
        self.totals.add_round(self.names.name(start.fund), asset, &round, start.trigger == "socialized", hits,
                              eligible);
        self.counts.rounds += 1;
    }

    fn enforce_solvency(&mut self, (fund, balance_before): (u32, I256), out: &mut Outputs) {
        let balance = self.ledger.balance(Account::Fund(fund));
        let floor = I256::new(self.policy.floor);
        if balance >= floor {
            return;
        }
        let balance = if self.policy.rule == Rule::Socialized {
            self.socialize(fund, sub(floor, balance), out);
            self.ledger.balance(Account::Fund(fund))
        } else {
            let symbols: Vec<String> = self.funds[&fund].lots.keys().cloned().collect();
            for symbol_name in symbols {
                // every lot of the symbol, oldest first; a deleverage closes its lot or leaves it short of takers
                let mut index = 0;
                while let Some(lots) = self.funds[&fund].lots.get(&symbol_name) {
                    if index >= lots.len() {
                        break;
                    }
                    if self.fell_short.contains(&lots[index].liquidation_id) {
                        index += 1;
                        continue;
                    }
                    let length = lots.len();
                    self.deleverage(fund, &symbol_name, index, "solvency", None, None, out);
                    let now = self.funds[&fund].lots.get(&symbol_name).map_or(0, |lots| lots.len());
                    if now == length {
                        index += 1;
                    }
                }
            }
            balance
        };
        if balance < 0 && balance < balance_before {
            let added = sub(balance_before.min(I256::ZERO), balance);
            let details = vec![
                ("fund_id", J::Owned(self.names.name(fund).to_string())),
                ("balance", J::Owned(text_wide(balance, S8))),
                ("added", J::Owned(text_wide(added, S8))),
            ];
            self.finding("bad_debt", None, None, None, details, out);
        }
    }

    /// Socialized loss (section 11.2): the shortfall (1e-8) is taken from every position of the fund's symbols with
    /// uPnL > 0 at its mark, in proportion and never beyond it, each as a posting from the position's margin to the
    /// fund; no position is closed.
    fn socialize(&mut self, fund: u32, shortfall: I256, out: &mut Outputs) {
        let balance = self.ledger.balance(Account::Fund(fund));
        let names = &self.names;
        let mut symbols = self.funds[&fund].symbols.clone();
        symbols.sort_by(|a, b| names.name(*a).cmp(names.name(*b)));
        let mut positions: Vec<Position> = Vec::new();
        for &symbol in &symbols {
            // (account, position side) by name, as the reference sorts its keys: hedge sides apart
            let mut holders = self.positions.holders(symbol).to_vec();
            holders.sort_by(|a, b| names.name(a.0).cmp(names.name(b.0)).then(a.1.name().cmp(b.1.name())));
            positions.extend(holders.iter().filter_map(|&(a, side)| self.positions.get(a, symbol, side)).cloned());
        }
        let profits: Vec<i128> = positions.iter().map(|p| self.exposure(p).0).collect();
        let labels: Vec<String> = positions.iter().map(|p| match p.position_side {
            PositionSide::Both => names.name(p.symbol).to_string(),
            side => format!("{}:{}", names.name(p.symbol), side.name()),
        }).collect();
        let keys: Vec<(&str, &str)> =
            positions.iter().zip(&labels).map(|(p, label)| (names.name(p.account), label.as_str())).collect();
        let shares = adl::socialized_shares(&profits, &keys, shortfall);
        let eligible = self.full_metrics
            .then(|| positions.iter().map(|p| self.figures(p, self.marks[&p.symbol])).collect::<Vec<_>>());
        // every figure before the first posting moves a wallet
        let taken: Vec<(Position, i128, Figures)> = positions.iter().zip(shares)
            .filter(|(_, amount)| *amount > 0)
            .map(|(p, amount)| (p.clone(), amount, self.figures(p, self.marks[&p.symbol])))
            .collect();
        let mut hits = Vec::with_capacity(taken.len());
        for (position, amount, figures) in taken {
            let source = if position.margin_mode == MarginMode::Isolated {
                Account::Isolated { account: position.account, symbol: position.symbol, side: position.position_side }
            } else {
                Account::Wallet { account: position.account, asset: self.instruments[&position.symbol].settle_asset }
            };
            let asset = self.instruments[&position.symbol].settle_asset;
            self.post("socialized_loss", source, Account::Fund(fund), amount, asset, out);
            self.fund_entry(fund, "socialized_loss", I256::new(amount), None, source, None, out);
            hits.push(Hit { figures, qty: 0, haircut: wide(amount * crate::numbers::pow10_i128(S16 - S8)) });
        }
        let start = Start { trigger: "socialized", fund, lot: None, mark: None, balance };
        let deficit = wmul(wide256(shortfall), wpow10(S16 - S8));
        self.round(start, deficit, None, 0, &hits, eligible.as_deref(), positions.len(), out);
    }

    // ------------------------------------------------------------------ Bybit's drawdown trigger (section 11.3)
    /// The fund's PnL on a symbol (1e-16): realized, plus its lots of the symbol valued at the mark.
    /// Wide: a lot's cost derives from a balance (section 9.3).
    fn symbol_pnl(&self, fund: u32, symbol: u32) -> Wide {
        let realized = self.drawdown.realized.get(&symbol).copied().unwrap_or(I256::ZERO);
        let mut total = wmul(wide256(realized), wpow10(S16 - S8));
        if let Some(lots) = self.funds[&fund].lots.get(self.names.name(symbol)) {
            let (mark, valuation) = (self.marks[&symbol], self.instruments[&symbol].valuation);
            for lot in lots {
                let value = wide(valuation.value(lot.qty, mark));
                total = wadd(total, if valuation.value_long(lot.side == Side::Long) {
                    wsub(value, lot.cost)
                } else {
                    wsub(lot.cost, value)
                });
            }
        }
        total
    }

    /// The fund's balance and each of its symbols' PnL, now.
    fn drawdown_values(&self, fund: u32) -> FundValues {
        let pnls = self.funds[&fund].symbols.iter().map(|&symbol| (symbol, self.symbol_pnl(fund, symbol))).collect();
        (fund, self.ledger.balance(Account::Fund(fund)), pnls)
    }

    /// backstop.core.engine.Engine._drawdown_takeover: the reset proceeds (1e-16) when the trigger fires or is on.
    fn drawdown_takeover(&mut self, fund: u32, symbol_name: &str, lot_index: usize, balance: I256) -> Option<Wide> {
        let drawdown = self.policy.drawdown.expect("Bybit's trigger");
        let lot = self.funds[&fund].lots[symbol_name][lot_index].clone();
        let (window, ts, symbol) = (drawdown.window_ms, self.ts, lot.symbol);
        let (_, balance_before, pnls_before) = self.drawdown_before.as_ref().expect("sampled before the event");
        let pnl_before = pnls_before.iter().find(|(s, _)| *s == symbol).map(|(_, v)| *v).expect("a fund's symbol");
        let pnl = self.symbol_pnl(fund, symbol);
        let top_pnl = self.drawdown.pnls.get(&symbol).map_or(pnl.max(pnl_before), |w| w.maximum(ts, window,
                                                                                            pnl.max(pnl_before)));
        let current_balance = wide256(balance.max(*balance_before));
        let top_balance = self.drawdown.balances.get(&fund).map_or(current_balance,
                                                                    |w| w.maximum(ts, window, current_balance));
        if top_balance <= Wide::ZERO {
            return None;
        }
        // at 1e-26: the symbol's PnL at which the drawdown reaches ratio x the pool's top balance
        let level = wsub(adl::at_26(top_pnl), adl::rate_of(drawdown.ratio, top_balance));
        if adl::at_26(pnl) >= level && !self.drawdown.triggered.contains(&symbol) {
            return None;
        }
        self.drawdown.triggered.insert(symbol);
        let valuation = self.instruments[&symbol].valuation;
        let value = wide(valuation.value(lot.qty, self.marks[&symbol]));
        let long = valuation.value_long(lot.side == Side::Long); // in value space (section 7)
        let lot_pnl = if long { wsub(value, lot.cost) } else { wsub(lot.cost, value) };
        // what the symbol's PnL may still lose without the lot, down to the level (1e-26)
        let room = wsub(wsub(adl::at_26(pnl), adl::at_26(lot_pnl)), level);
        let (low, high) = (lot.cost.min(value), lot.cost.max(value));
        let cost = adl::at_26(lot.cost);
        let exact = if long { wsub(cost, room) } else { wadd(cost, room) };
        if exact <= adl::at_26(low) {
            return Some(low);
        }
        if exact >= adl::at_26(high) {
            return Some(high);
        }
        // rounded to 1e-8 in the fund's favour (up when it sells a lot's value, down when it buys one back)
        let rounding = if long { Rounding::Ceiling } else { Rounding::Floor };
        let rounded = wmul(wrescale(exact, S26, S8, rounding), wpow10(S16 - S8));
        Some(if long { rounded.min(high) } else { rounded.max(low) })
    }

    /// After an event that may move a fund: the values it found and those it left join their windows; a symbol whose
    /// drawdown is back above the stop level is switched off.
    fn sample_drawdown(&mut self, fund: u32) {
        let drawdown = self.policy.drawdown.expect("Bybit's trigger");
        let (window, ts) = (drawdown.window_ms, self.ts);
        let after = self.drawdown_values(fund);
        let before = self.drawdown_before.take().expect("sampled before the event");
        let state = &mut self.drawdown;
        for (_, balance, pnls) in [&before, &after] {
            state.balances.entry(fund).or_default().add(ts, wide256(*balance), window);
            for (symbol, pnl) in pnls {
                state.pnls.entry(*symbol).or_default().add(ts, *pnl, window);
            }
        }
        let (_, balance, pnls) = after;
        let top_balance = state.balances[&fund].maximum(ts, window, wide256(balance));
        for (symbol, pnl) in pnls {
            let stop_level = wsub(adl::at_26(state.pnls[&symbol].maximum(ts, window, pnl)),
                                  adl::rate_of(drawdown.stop, top_balance));
            if state.triggered.contains(&symbol) && (top_balance <= Wide::ZERO || adl::at_26(pnl) > stop_level) {
                state.triggered.remove(&symbol);
            }
        }
    }

    // ------------------------------------------------------------------ views
    /// (uPnL at 1e-16, maintenance margin at 1e-8) of a position at its mark.
    pub fn exposure(&self, position: &Position) -> (i128, i128) {
        exposure_at(&self.instruments[&position.symbol], self.marks[&position.symbol], position.qty > 0,
                    position.size(), position.cost)
    }

    fn cross_positions(&self, account: u32, asset: u32) -> impl Iterator<Item = &Position> + '_ {
        self.positions
            .keys_of(account)
            .iter()
            .filter_map(move |&(symbol, side)| self.positions.get(account, symbol, side))
            .filter(move |p| p.margin_mode == MarginMode::Cross && self.instruments[&p.symbol].settle_asset == asset)
    }

    /// An account's cross margin in one asset: its margin balance (the wallet and the uPnL of its cross positions
    /// there, 1e-16) and their summed maintenance margin (1e-8).
    pub fn cross_totals(&self, account: u32, asset: u32) -> (Wide, I256) {
        let wallet = self.ledger.balance(Account::Wallet { account, asset });
        let mut tnc = wmul(wide256(wallet), wpow10(S16 - S8));
        let mut tmm = I256::ZERO;
        for other in self.cross_positions(account, asset) {
            let (pnl, mm) = self.exposure(other);
            tnc = wadd(tnc, wide(pnl));
            tmm = add(tmm, I256::new(mm));
        }
        (tnc, tmm)
    }

    pub fn margin_view(&self, position: &Position) -> MarginView {
        let (own_pnl, own_mm) = self.exposure(position);
        if position.margin_mode == MarginMode::Isolated {
            let margin = self.ledger.balance(isolated_account(position));
            let balance = wadd(wmul(wide256(margin), wpow10(S16 - S8)), wide(own_pnl));
            return MarginView { margin_balance: balance, maintenance_margin: I256::new(own_mm),
                                position_maintenance: own_mm, equity_share: balance };
        }
        let (tnc, tmm) = self.cross_totals(position.account, self.instruments[&position.symbol].settle_asset);
        let share = if tmm == 0 {
            tnc
        } else {
            wmul(wratio(wmul(tnc, wide(own_mm)), S16 + S8, wide256(tmm), S8, S8, Rounding::Ceiling), wpow10(S16 - S8))
        };
        MarginView { margin_balance: tnc, maintenance_margin: tmm, position_maintenance: own_mm, equity_share: share }
    }

    /// A position's bankruptcy price (docs/design.md section 9.4), rounded in the fund's favour to 1e-8: FLOOR for a
    /// long, CEILING for a short.
    pub fn bankruptcy_price(&self, position: &Position) -> Wide {
        let view = (position.margin_mode == MarginMode::Cross).then(|| self.margin_view(position));
        self.bankruptcy_price_in(position, view.as_ref())
    }

    /// bankruptcy_price with the position's margin view already at hand (a cross position needs it). It derives from a
    /// balance (its distance to the mark is up to share / size): 512 bits.
    pub fn bankruptcy_price_in(&self, position: &Position, view: Option<&MarginView>) -> Wide {
        let valuation = self.instruments[&position.symbol].valuation;
        // the value at bankruptcy: minus the equity for a long in value space, plus it else
        let long = valuation.value_long(position.qty > 0);
        let value = if position.margin_mode == MarginMode::Isolated {
            let margin = wmul(wide256(self.ledger.balance(isolated_account(position))), wpow10(S16 - S8));
            if long { wsub(wide(position.cost), margin) } else { wadd(wide(position.cost), margin) }
        } else {
            let share = view.map_or_else(|| self.margin_view(position), |view| *view).equity_share;
            let value = wide(valuation.value(position.size(), self.marks[&position.symbol]));
            if long { wsub(value, share) } else { wadd(value, share) }
        };
        valuation.bankruptcy_price(value, position.size(), position.qty > 0)
    }

    /// The ADL score of a position (docs/design.md section 9.4) and whether it is at or past its bankruptcy price.
    pub fn rank(&self, position: &Position) -> Ranked {
        if self.policy.rule == Rule::Binance {
            return self.rank_binance(position);
        }
        let mark = self.marks[&position.symbol];
        let bankruptcy = self.bankruptcy_price(position);
        // the distance and the score derive from a balance: 512 bits (section 9.3)
        let distance = if position.qty > 0 { wsub(wide(mark), bankruptcy) } else { wsub(bankruptcy, wide(mark)) };
        let (pnl, _) = self.exposure(position);
        let cost = position.cost;
        // the leverage is mark / distance, or BP / distance for an inverse contract (N / equity, section 9.4), its BP
        // at least the price quantum there (a long's BP can round down to 0)
        let scale = if self.instruments[&position.symbol].valuation.inverse() {
            bankruptcy.max(Wide::ONE)
        } else {
            wide(mark)
        };
        let (score, past) = if cost <= 0 {
            (Wide::ZERO, true) // a remainder whose cost rounded away: no PnL% to rank by
        } else if distance > Wide::ZERO {
            let score = if pnl >= 0 {
                wratio(wmul(wide(pnl), scale), S16 + S8, wmul(wide(cost), distance), S16 + S8, S12,
                       Rounding::HalfEven)
            } else {
                wratio(wmul(wide(pnl), distance), S16 + S8, wmul(wide(cost), scale), S16 + S8, S12,
                       Rounding::HalfEven)
            };
            (score, false)
        } else {
            (wide256(ratio(I256::new(pnl), S16, I256::new(cost), S16, S12, Rounding::HalfEven)), true)
        };
        Ranked { account: position.account, position_side: position.position_side, size: position.size(), score,
                 past_bankruptcy: past, bankruptcy }
    }

    /// The account's position on one side of a symbol: its one-way position of that sign, or its hedge side.
    pub fn position_on(&self, account: u32, symbol: u32, side: Side) -> Option<&Position> {
        let hedge = if side == Side::Long { PositionSide::Long } else { PositionSide::Short };
        self.positions.get(account, symbol, hedge)
            .or_else(|| self.positions.get(account, symbol, PositionSide::Both).filter(|p| p.side() == side))
    }

    /// Binance's published LeveragePnL (backstop.core.adl.rank_binance): max(uPnL, 0) x MM / (max(1, W) x (W + U)),
    /// 0 for a losing or bankrupt position; W the collateral (isolated margin, or the cross wallet), W + U the margin
    /// balance, MM the maintenance it is compared with.
    fn rank_binance(&self, position: &Position) -> Ranked {
        let view = self.margin_view(position);
        let (pnl, _) = self.exposure(position);
        let collateral = if position.margin_mode == MarginMode::Isolated {
            self.ledger.balance(Account::Isolated { account: position.account, symbol: position.symbol,
                                                    side: position.position_side })
        } else {
            let asset = self.instruments[&position.symbol].settle_asset;
            self.ledger.balance(Account::Wallet { account: position.account, asset })
        };
        // the margin balance derives from a balance: 512 bits (section 9.3)
        let score = if pnl <= 0 || view.margin_balance <= Wide::ZERO {
            Wide::ZERO
        } else {
            let numerator = wmul(wide(pnl), wide256(view.maintenance_margin)); // 1e-24
            let collateral = wide256(collateral.max(I256::new(adl::ONE_8)));
            // collateral x margin balance (1e-24) can pass 512 bits (two balances near the bound, section 9.3); it is
            // then more than twice the scaled numerator (a product of two bounded values), so the score rounds to 0
            match collateral.checked_mul(view.margin_balance) {
                Some(denominator) => wratio(numerator, S16 + S8, denominator, S8 + S16, S12, Rounding::HalfEven),
                None => Wide::ZERO,
            }
        };
        Ranked { account: position.account, position_side: position.position_side, size: position.size(), score,
                 past_bankruptcy: false, bankruptcy: self.bankruptcy_price(position) }
    }

    /// Every position of one symbol and side in ADL order (ties: the larger position, then the smaller account id).
    pub fn adl_queue(&self, symbol: u32, side: Side) -> Vec<Ranked> {
        let mut queue: Vec<Ranked> = self
            .positions
            .holders(symbol)
            .iter()
            .filter_map(|&(account, position_side)| self.positions.get(account, symbol, position_side))
            .filter(|p| p.side() == side)
            .map(|p| self.rank(p))
            .collect();
        self.order(&mut queue);
        queue
    }

    fn order(&self, queue: &mut [Ranked]) {
        let names = &self.names;
        queue.sort_by(|a, b| {
            (a.past_bankruptcy, -a.score, -a.size)
                .cmp(&(b.past_bankruptcy, -b.score, -b.size))
                .then_with(|| names.name(a.account).cmp(names.name(b.account)))
        });
    }

    /// The head of the (symbol, side) queue that covers qty, exactly ranked, and the queue's length: the index
    /// (crate::adl_index) picks the candidates among which it lies, or says to rank everyone.
    pub fn adl_top(&mut self, symbol: u32, side: Side, qty: i128) -> (Vec<Ranked>, usize) {
        if self.instruments[&symbol].valuation.inverse() {
            // the index's float rows score linear contracts only
            let queue = self.adl_queue(symbol, side);
            let count = queue.len();
            return (queue, count);
        }
        self.adl_index.refresh(&self.positions, &mut self.ledger, &self.instruments);
        let mark = self.marks[&symbol];
        let names = &self.names;
        let candidates =
            self.adl_index.candidates(symbol, side, mark, qty, |a, b| names.name(a).cmp(names.name(b)));
        let count = self.adl_index.count(symbol, side);
        debug_assert_eq!(count, self.positions.holders(symbol).iter()
            .filter(|&&(account, held)| self.positions.get(account, symbol, held).is_some_and(|p| p.side() == side))
            .count());
        match candidates {
            Candidates::Everyone => (self.adl_queue(symbol, side), count),
            Candidates::Among(accounts) => {
                let mut queue: Vec<Ranked> =
                    accounts.iter().filter_map(|&account| self.position_on(account, symbol, side)).map(|p| self.rank(p))
                        .collect();
                self.order(&mut queue);
                (queue, count)
            }
        }
    }

    /// What a deleverage of qty on the (symbol, side) queue would take, without taking it: (account, rank, score,
    /// take) of each counterparty, and the queue's length. `everyone`: rank every position (no index).
    pub fn adl_head(&mut self, symbol: u32, side: Side, qty: i128, everyone: bool)
                    -> (Vec<(u32, usize, Wide, i128)>, usize) {
        // the index ranks by BitMEX's score: another rule's queue ranks everyone
        let (queue, count) = if everyone || self.policy.rule != Rule::Bitmex {
            let queue = self.adl_queue(symbol, side);
            let count = queue.len();
            (queue, count)
        } else {
            self.adl_top(symbol, side, qty)
        };
        let head = queue.iter().zip(takes(&queue, qty)).enumerate().filter(|(_, (_, take))| *take > 0)
            .map(|(at, (ranked, take))| (ranked.account, at + 1, ranked.score, take)).collect();
        (head, count)
    }

    /// The mark at which the position's margin balance equals its maintenance margin (1e-8), if a positive one. Its
    /// numerator derives from a balance, over a denominator as small as 1e-26: 512 bits (section 9.3).
    pub fn liquidation_price(&self, position: &Position) -> Option<Wide> {
        let instrument = &self.instruments[&position.symbol];
        // the position, and a cross hedge side's cross side of the other direction: the same mark moves both
        let mut opposite: Option<&Position> = None;
        let other = if position.margin_mode == MarginMode::Isolated {
            wmul(wide256(self.ledger.balance(isolated_account(position))), wpow10(S16 - S8))
        } else {
            let asset = instrument.settle_asset;
            let mut other =
                wmul(wide256(self.ledger.balance(Account::Wallet { account: position.account, asset })), wpow10(S16 - S8));
            for peer in self.cross_positions(position.account, asset) {
                if peer.symbol == position.symbol {
                    if peer.position_side != position.position_side {
                        opposite = Some(peer);
                    }
                    continue;
                }
                let (pnl, mm) = self.exposure(peer);
                // uPnL - MM can pass i128 (a short's uPnL near -10^38 beside an MM near 10^38)
                other = wadd(other, wsub(wide(pnl), wide(mm * crate::numbers::pow10_i128(S8))));
            }
            other
        };
        let both = [position, opposite.unwrap_or(position)];
        let legs = &both[..if opposite.is_some() { 2 } else { 1 }];
        let valuation = instrument.valuation;
        let tiers = &instrument.tiers;
        // the price at which the legs in these brackets (one tier each) leave no margin above their MM
        let candidate_at = |chosen: &[usize]| -> Option<Wide> {
            match valuation.contract_size {
                None => {
                    // (sum of signed cost - other - sum of maint) at 1e-16 / sum of (q - size x mmr) at 1e-26
                    let (mut numerator, mut denominator) = (wsub(Wide::ZERO, other), I256::ZERO);
                    for (leg, &index) in legs.iter().zip(chosen) {
                        let tier = &tiers[index];
                        let signed_cost = if leg.qty > 0 { leg.cost } else { -leg.cost };
                        numerator = wsub(wadd(numerator, wide(signed_cost)), wide(tier.maint_amount * 100_000_000));
                        denominator = add(denominator, sub(mul(I256::new(leg.qty), pow10(S18)), product(leg.size(), tier.mmr)));
                    }
                    (denominator != 0).then(|| wratio(numerator, S16, wide256(denominator), S26, S8, Rounding::HalfEven))
                }
                Some(_) => {
                    // sum of face x (mmr +/- 1) at 1e-34 / (other + sum of +/-C + sum of maint) at 1e-16, of one sign
                    let (mut numerator, mut denominator) = (Wide::ZERO, other);
                    for (leg, &index) in legs.iter().zip(chosen) {
                        let tier = &tiers[index];
                        let face = wide256(valuation.face(leg.size()));
                        let (one, cost) = if leg.qty > 0 { (wpow10(S18), leg.cost) } else { (wsub(Wide::ZERO, wpow10(S18)), -leg.cost) };
                        numerator = wadd(numerator, wmul(face, wadd(wide(tier.mmr), one)));
                        denominator = wadd(wadd(denominator, wide(cost)), wide(tier.maint_amount * 100_000_000));
                    }
                    let zero = Wide::ZERO;
                    if numerator == zero || denominator == zero || (numerator > zero) != (denominator > zero) {
                        return None;
                    }
                    Some(wratio(numerator.abs(), S16 + S18, denominator.abs(), S16, S8, Rounding::HalfEven))
                }
            }
        };
        // a leg's notional at a candidate price (1e-16): size x P, or V(size, P) for an inverse contract
        let notional_at = |leg: &Position, price: Wide| -> Wide {
            if valuation.inverse() {
                wratio(wide256(valuation.face(leg.size())), S16, price, S8, S16, Rounding::HalfEven)
            } else {
                wmul(wide(leg.size()), price)
            }
        };
        // a tier holds a notional above the one before it, up to its own (the last: open above)
        let within = |index: usize, notional: Wide| -> bool {
            let lower = if index == 0 { Wide::ZERO } else { wide(tiers[index - 1].max_notional * 100_000_000) };
            lower < notional && (index + 1 == tiers.len() || notional <= wide(tiers[index].max_notional * 100_000_000))
        };
        first_bracket_choice(legs, tiers, valuation, |chosen| {
            let candidate = candidate_at(chosen)?;
            (candidate > Wide::ZERO && legs.iter().zip(chosen).all(|(leg, &index)| within(index, notional_at(leg, candidate))))
                .then_some(candidate)
        })
    }

    // ------------------------------------------------------------------ outputs
    /// Move `amount` (money; negative: the other way) in the ledger and write its posting: amount > 0 from the debit
    /// account to the credit account; nothing for zero. A posting to or from a fund names the fund-ledger entry the
    /// caller writes next.
    fn post(&mut self, kind: &'static str, source: Account, destination: Account, amount: impl Into<I256>,
            asset: u32, out: &mut Outputs) {
        let amount: I256 = amount.into();
        if amount == 0 {
            return;
        }
        let (source_after, destination_after) = self.ledger.post(source, destination, amount);
        let (debit, credit, amount, debit_balance_after, credit_balance_after) = if amount < 0 {
            (destination, source, -amount, destination_after, source_after)
        } else {
            (source, destination, amount, source_after, destination_after)
        };
        let touches_fund = matches!(debit, Account::Fund(_)) || matches!(credit, Account::Fund(_));
        self.counts.fund_postings += u64::from(touches_fund);
        let cause = &self.cause;
        let posting = Posting {
            kind, debit, credit, amount,
            debit_balance_after,
            credit_balance_after,
            asset, seq: self.seq, number: self.counts.postings, ts: self.ts,
            fund_entry: touches_fund.then_some(self.counts.fund_entries),
            adl_event_id: cause.adl_event_id,
            fill_id: cause.fill_id,
            liquidation_id: cause.liquidation_id,
            transfer_id: cause.transfer_id,
        };
        if self.defer_postings {
            out.deferred_postings.push(posting);
        } else {
            posting.write(&self.names, &out.posting_ids, &mut out.postings, &mut self.postings_head);
        }
        self.counts.postings += 1;
        out.posting_count += 1;
    }

    /// `symbol`: the symbol whose fund PnL the entry is (Bybit's trigger sums it per symbol, section 11.3).
    #[allow(clippy::too_many_arguments)]
    fn fund_entry(&mut self, fund: u32, kind: &str, amount: I256, liquidation_id: Option<&str>, counter: Account,
                  symbol: Option<u32>, out: &mut Outputs) {
        if let (Some(symbol), Some(_)) = (symbol, self.policy.drawdown) {
            let realized = self.drawdown.realized.entry(symbol).or_insert(I256::ZERO);
            *realized = crate::numbers::add(*realized, amount);
        }
        self.totals.add_fund_entry(self.names.name(fund), amount, self.ledger.balance(Account::Fund(fund)));
        let id = format!("fl-{}-{}", self.seq, self.counts.fund_entries);
        let counter_name = counter.name(&self.names);
        let balance = self.ledger.balance(Account::Fund(fund));
        let transfer_id = self.cause.transfer_id.filter(|_| kind == "transfer").map(|span| span.text(&out.posting_ids));
        assert!(self.counts.fund_postings == self.counts.fund_entries + 1,
                "fund-ledger entry {id} follows no posting to or from the fund");
        // the keys before "hash" and after it, in key order: the record is written once, the hash taken over both
        let before = J::Obj(vec![
            ("amount", J::Wide(amount, S8)),
            ("balance_after", J::Wide(balance, S8)),
            ("counter_account", J::Str(&counter_name)),
            ("fund_id", J::Str(self.names.name(fund))),
        ]);
        let after = J::Obj(vec![
            ("id", J::Str(&id)),
            ("kind", J::Str(kind)),
            ("liquidation_id", liquidation_id.map_or(J::Null, J::Str)),
            ("prev_hash", J::Str(&self.ledger_head)),
            ("schema_version", J::Int(SCHEMA_VERSION)),
            ("seq", J::Int(self.seq as i128)),
            ("transfer_id", transfer_id.map_or(J::Null, J::Str)),
            ("ts", J::Int(self.ts as i128)),
        ]);
        let hash = canonical::write_chained(&mut out.fund_ledger, &before, &after);
        drop((before, after));
        out.fund_ledger.push(b'\n');
        self.ledger_head = hash;
        self.counts.fund_entries += 1;
        out.fund_entries += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn adl_event(&mut self, fund: u32, lot: &Lot, account: u32, side: Side, qty: i128, fill_price: Wide, rank: usize,
                 score: Wide, quantile: usize, out: &mut Outputs) {
        // the event's notional: qty x price, or V(qty, price) for an inverse contract (0 at a reported price of 0,
        // which stands for a value of 0)
        let valuation = self.instruments[&lot.symbol].valuation;
        let notional = if !valuation.inverse() {
            wmul(wide(qty), fill_price)
        } else if fill_price == Wide::ZERO {
            Wide::ZERO
        } else {
            wide256(valuation.value_wide(qty, fit128(fill_price).expect("an inverse ADL price is a PRICE")))
        };
        self.totals.add_event(self.names.name(fund), self.names.name(self.funds[&fund].spec.settle_asset), notional);
        let id = format!("adl-{}-{}", self.seq, self.counts.adl_events);
        let mut body = vec![
            ("schema_version", J::Int(SCHEMA_VERSION)),
            ("id", J::Str(&id)),
            ("seq", J::Int(self.seq as i128)),
            ("ts", J::Int(self.ts as i128)),
            ("symbol", J::Str(self.names.name(lot.symbol))),
            ("liquidation_id", J::Str(&lot.liquidation_id)),
            ("fund_id", J::Str(self.names.name(fund))),
            ("account_id", J::Str(self.names.name(account))),
            ("side", J::Str(side.name())),
            ("qty", J::Dec(qty, S8)),
            ("price", J::Owned(text_512(fill_price, S8))),
            ("rank", J::Int(rank as i128)),
            ("score", J::Owned(text_512(score, S12))),
            ("quantile", J::Int(quantile as i128)),
            ("prev_hash", J::Str(&self.adl_head)),
        ];
        let hash = canonical::sha256_hex(&canonical::to_vec(&J::Obj(body.clone())));
        body.push(("hash", J::Str(&hash)));
        canonical::write(&mut out.adl_events, &J::Obj(body));
        out.adl_events.push(b'\n');
        self.adl_head = hash;
        self.counts.adl_events += 1;
        out.adl_count += 1;
    }

    fn finding(&mut self, kind: &str, account: Option<u32>, liquidation_id: Option<&str>, symbol: Option<u32>,
               details: Vec<(&str, J<'_>)>, out: &mut Outputs) {
        let id = format!("finding-{}-{}", self.seq, self.counts.findings);
        let name = |id: Option<u32>| id.map_or(J::Null, |id| J::Str(self.names.name(id)));
        // in key order: written as it stands, not sorted first
        let body = J::Obj(vec![
            ("account_id", name(account)),
            ("details", J::Obj(details)),
            ("id", J::Str(&id)),
            ("kind", J::Str(kind)),
            ("liquidation_id", liquidation_id.map_or(J::Null, J::Str)),
            ("schema_version", J::Int(SCHEMA_VERSION)),
            ("seq", J::Int(self.seq as i128)),
            ("symbol", name(symbol)),
            ("ts", J::Int(self.ts as i128)),
        ]);
        canonical::write(&mut out.findings, &body);
        out.findings.push(b'\n');
        self.counts.findings += 1;
        out.finding_count += 1;
    }
}

/// MAX_FACE (docs/design.md section 9.3): an inverse position's |q| x s stays below 10^14.
fn check_face(valuation: Valuation, size: i128) -> Result<(), Rejected> {
    let face = valuation.face(size);
    if valuation.inverse() && face >= I256::new(MAX_FACE) {
        return reject(format!("position face value would be {}, above the bound 10^14", text_wide(face, S16)));
    }
    Ok(())
}

/// The lot's cost clamped to a price the wire admits, and that price, or None when its price is one (docs/design.md
/// section 9.4): linear, at least qty x tick_size; inverse, its price qty x s / cost within [tick_size, largest
/// PRICE].
fn clamped_lot_cost(instrument: &Instrument, qty: i128, lot_cost: Wide) -> Option<(Wide, i128)> {
    let valuation = instrument.valuation;
    if !valuation.inverse() {
        let floor_cost = wide(qty * instrument.tick_size);
        return (lot_cost < floor_cost).then_some((floor_cost, instrument.tick_size));
    }
    let lowest_cost = wide(valuation.value(qty, LARGEST_PRICE));
    if lot_cost < lowest_cost {
        return Some((lowest_cost, LARGEST_PRICE));
    }
    let highest_cost = wide(valuation.value(qty, instrument.tick_size));
    (lot_cost > highest_cost).then_some((highest_cost, instrument.tick_size))
}

/// A position's isolated margin account.
pub fn isolated_account(position: &Position) -> Account {
    Account::Isolated { account: position.account, symbol: position.symbol, side: position.position_side }
}

/// Scale of a rate times a price (1e-26).
const S26: u32 = S18 + S8;

/// Each bracket's maint_amount is the cumulative amount the brackets imply (docs/design.md section 7): cum_1 = 0,
/// cum_i = cum_(i-1) + max_notional_(i-1) x (mmr_i - mmr_(i-1)) (exact, at 1e-26). A stated one must equal it; an
/// omitted one is derived, and must be a MONEY value (>= 0, whole 1e-8, below 10^16).
fn checked_tiers(tiers: &[crate::wire::Tier]) -> Result<Vec<Tier>, Rejected> {
    let mut checked: Vec<Tier> = Vec::with_capacity(tiers.len());
    let mut cumulative = I256::ZERO;
    let unit = pow10(S26 - S8);
    for (index, tier) in tiers.iter().enumerate() {
        if let Some(previous) = checked.last() {
            cumulative = add(cumulative, product(previous.max_notional, tier.mmr.value - previous.mmr));
        }
        let number = index + 1;
        match tier.maint_amount {
            None => {
                if cumulative < 0 || cumulative % unit != 0 || cumulative >= mul(pow10(16 + S8), unit) {
                    return reject(format!("bracket {number}: the brackets imply a maint_amount of {}, which is not \
                                           an amount (>= 0, at most 16 integer and 8 fraction digits)",
                                          text_wide(cumulative, S26)));
                }
            }
            Some(stated) => {
                if product(stated.value, pow10_i128(S26 - S8)) != cumulative {
                    return reject(format!("bracket {number}: maint_amount {} is not the cumulative amount {} the \
                                           brackets imply", Shown(stated.value, S8), text_wide(cumulative, S26)));
                }
            }
        }
        checked.push(Tier { max_notional: tier.max_notional.value, mmr: tier.mmr.value,
                            maint_amount: crate::numbers::narrow(cumulative / unit) });
    }
    Ok(checked)
}

pub fn mode_name(mode: MarginMode) -> &'static str {
    match mode {
        MarginMode::Cross => "cross",
        MarginMode::Isolated => "isolated",
    }
}

/// The first answer `attempt` gives over each leg's tier, in order (the first leg's slowest), without the pairs that
/// no one price puts both legs in (backstop.core.margin._bracket_choices): at a price the legs' notionals are their
/// scales (size; an inverse contract: face) times one factor, so tiers a and b meet only where lower_a x s2 <
/// upper_b x s1 and lower_b x s1 < upper_a x s2 (an inverse notional is rounded to 1e-16: a slack of 1e-15 x (s1 +
/// s2)). A pair left out never holds a root, so the answer is the full search's; about twice the tiers are tried,
/// not their square.
fn first_bracket_choice<T>(legs: &[&Position], tiers: &[Tier], valuation: Valuation,
                           mut attempt: impl FnMut(&[usize]) -> Option<T>) -> Option<T> {
    let count = tiers.len();
    if legs.len() == 1 {
        return (0..count).find_map(|index| attempt(&[index]));
    }
    let scale = |leg: &Position| if valuation.inverse() { wide256(valuation.face(leg.size())) } else { wide(leg.size()) };
    let (first, second) = (scale(legs[0]), scale(legs[1]));
    // notionals at 1e-16 times scales: the slack is 10 of those units per unit of scale
    let slack = if valuation.inverse() { wmul(wadd(first, second), wide(10)) } else { Wide::ZERO };
    let lower = |index: usize| if index == 0 { Wide::ZERO } else { wide(tiers[index - 1].max_notional * 100_000_000) };
    // tier `low` of one leg starts below where tier `high` of the other ends (the last tier is open above)
    let reaches = |low: usize, high: usize, low_scale: Wide, high_scale: Wide| -> bool {
        high + 1 == count
            || wmul(lower(low), high_scale) < wadd(wmul(wide(tiers[high].max_notional * 100_000_000), low_scale), slack)
    };
    let mut start = 0;
    for a in 0..count {
        while !reaches(a, start, first, second) {
            start += 1;
        }
        for b in start..count {
            if !reaches(b, a, second, first) {
                break;
            }
            if let Some(answer) = attempt(&[a, b]) {
                return Some(answer);
            }
        }
    }
    None
}


/// An exact amount at `scale` rounded to money (1e-8, HALF_EVEN).
pub fn money(value: I256, scale: u32) -> i128 {
    crate::numbers::narrow(rescale(value, scale, S8, Rounding::HalfEven))
}

/// The pro-rata share part/whole of total (at `scale`), rounded to money, never beyond the total; the whole takes
/// it all exactly. The result is at `scale`.
pub fn share(total: i128, scale: u32, part: i128, whole: i128) -> i128 {
    if part == whole {
        return total;
    }
    let rounded = ratio(product(total, part), scale + S8, I256::new(whole), S8, S8, Rounding::HalfEven);
    let result = crate::numbers::narrow(rescale(rounded, S8, scale, Rounding::HalfEven));
    // never beyond the total: a total below 1e-8 could round up past it
    if result.abs() > total.abs() { total } else { result }
}

/// A reported price: cost (1e-16) / qty (1e-8), HALF_EVEN to 1e-8.
pub fn price_of(cost: i128, qty: i128) -> i128 {
    crate::numbers::narrow(ratio(I256::new(cost), S16, I256::new(qty), S8, S8, Rounding::HalfEven))
}

// ------------------------------------------------------------------ values derived from a balance (section 9.3)

/// money on a Wide exact amount: the result is a ledger amount (it fits 256 bits; 128-bit arithmetic when the
/// amount fits).
pub fn money_wide(value: Wide, scale: u32) -> I256 {
    match fit256(value) {
        Some(value) => rescale(value, scale, S8, Rounding::HalfEven),
        None => narrow_wide(wrescale(value, scale, S8, Rounding::HalfEven)),
    }
}

/// share on a Wide total (a lot's cost, an isolated margin): the same rule, in 512 bits when the total needs it.
pub fn share_wide(total: Wide, scale: u32, part: i128, whole: i128) -> Wide {
    if let Some(total) = fit128(total) {
        return wide(share(total, scale, part, whole));
    }
    if part == whole {
        return total;
    }
    let rounded = wratio(wmul(total, wide(part)), scale + S8, wide(whole), S8, S8, Rounding::HalfEven);
    let result = wrescale(rounded, S8, scale, Rounding::HalfEven);
    if result.unsigned_abs() > total.unsigned_abs() { total } else { result }
}

/// price_of on a Wide cost (a lot's, or its share at an ADL).
pub fn price_of_wide(cost: Wide, qty: i128) -> Wide {
    wratio(cost, S16, wide(qty), S8, S8, Rounding::HalfEven)
}

/// Engine::exposure of a position given by its numbers: long or short, size (1e-8), cost (1e-16), at `mark`.
pub fn exposure_at(instrument: &Instrument, mark: i128, long: bool, size: i128, cost: i128) -> (i128, i128) {
    let value = instrument.valuation.value(size, mark);
    let pnl = if instrument.valuation.value_long(long) { value - cost } else { cost - value };
    (pnl, maintenance(&instrument.tiers, value))
}

/// The maintenance bracket for a notional (1e-16): the first whose max_notional covers it, else the last; MM =
/// max(HALF_EVEN(notional x mmr) - maint_amount, 0) at 1e-8.
pub fn maintenance(tiers: &[Tier], notional: i128) -> i128 {
    let tier = tiers
        .iter()
        .find(|tier| I256::new(notional) <= wide_mul(tier.max_notional, 100_000_000))
        .unwrap_or_else(|| tiers.last().expect("an instrument has tiers"));
    let rounded = money(product(notional, tier.mmr), S16 + S18);
    (rounded - tier.maint_amount).max(0)
}

/// What each position of a queue gives to a lot of qty: as much as it holds, in queue order, until the lot is gone.
pub fn takes(queue: &[Ranked], qty: i128) -> Vec<i128> {
    let mut remaining = qty;
    queue.iter().map(|ranked| {
        let take = ranked.size.min(remaining);
        remaining -= take;
        take
    }).collect()
}

/// 5 for the top 20% of ranked positions (rank 1 is the top) ... 1 for the bottom 20%.
pub fn quantile(rank: usize, count: usize) -> usize {
    5 - (rank - 1) * 5 / count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::Processor;

    const E8: i128 = 100_000_000;
    const WORLD: &str = concat!(
        r#"{"type":"fund","ts":1,"fund_id":"COIN","settle_asset":"BTC","surplus":"fund","max_inventory_ratio":"1"}"#, "\n",
        r#"{"type":"instrument","ts":1,"symbol":"BTCUSD","settle_asset":"BTC","tick_size":"0.5","lot_size":"1","tiers":[{"max_notional":"1000","mmr":"0.005"}],"liquidation_fee_rate":"0.005","fund_id":"COIN","contract_type":"inverse","contract_size":"100"}"#, "\n",
        r#"{"type":"transfer","ts":1,"transfer_id":"d","account_id":"a","asset":"BTC","amount":"1"}"#, "\n");

    fn replay(lines: &str) -> (Processor, String) {
        let mut processor = Processor::new(false, 0);
        let batch = processor.apply_lines(format!("{WORLD}{lines}").as_bytes(), 1);
        (processor, String::from_utf8(batch.dead_letters).expect("UTF-8"))
    }

    fn fill(id: &str, side: &str, qty: &str, price: &str) -> String {
        fill_of("BTCUSD", id, side, qty, price)
    }

    fn fill_of(symbol: &str, id: &str, side: &str, qty: &str, price: &str) -> String {
        format!(concat!(r#"{{"type":"fill","ts":2,"fill_id":"{}","account_id":"a","symbol":"{}","side":"{}","#,
                        r#""qty":"{}","price":"{}","fee":"0","margin_mode":"cross","leverage":"10"}}"#, "\n"),
                id, symbol, side, qty, price)
    }

    #[test]
    fn an_inverse_long_realizes_coin_pnl_against_its_harmonic_entry() {
        let lines = [fill("b1", "buy", "1", "40000"), fill("b2", "buy", "1", "60000"), fill("s1", "sell", "1", "50000")];
        let (processor, dead) = replay(&lines.concat());
        assert!(dead.is_empty(), "{dead}");
        let engine = &processor.engine;
        let (account, asset) = (engine.names.find("a").unwrap(), engine.names.find("BTC").unwrap());
        // C = 0.0025 + 0.0016666666666667; the half sold takes HALF_EVEN(C / 2) = 0.00208333 of it, against proceeds
        // of 100 / 50000 = 0.002: a long in coin gains 0.00008333 (it sold above its harmonic entry of 48000)
        assert_eq!(engine.ledger.balance(Account::Wallet { account, asset }), I256::new(E8 + 8_333));
        let position = engine.positions.get(account, engine.names.find("BTCUSD").unwrap(), PositionSide::Both).unwrap();
        assert_eq!(position.cost, 41_666_666_666_667 - 20_833_300_000_000);
    }

    #[test]
    fn max_face_refuses_an_open_and_a_growth() {
        // contracts of 10^6: 10^8 of them reach the bound
        let big = concat!(r#"{"type":"instrument","ts":1,"symbol":"BIGUSD","settle_asset":"BTC","tick_size":"0.5","#,
                          r#""lot_size":"1","tiers":[{"max_notional":"1000","mmr":"0.005"}],"liquidation_fee_rate":"0","#,
                          r#""fund_id":"COIN","contract_type":"inverse","contract_size":"1000000"}"#, "\n");
        let lines = [big.to_string(), fill_of("BIGUSD", "big", "buy", "100000000", "50000"),
                     fill_of("BIGUSD", "ok", "buy", "99999999", "50000"), fill_of("BIGUSD", "more", "buy", "1", "50000"),
                     fill_of("BIGUSD", "flip", "sell", "199999999", "50000")];
        let (_, dead) = replay(&lines.concat());
        let reasons: Vec<&str> = dead.lines().map(|line| line.split("\"reason\":\"").nth(1).unwrap()).collect();
        assert_eq!(reasons.len(), 3, "{dead}");
        for reason in reasons {
            assert!(reason.starts_with("position face value would be 100000000000000, above the bound 10^14"), "{dead}");
        }
    }

    #[test]
    fn an_inverse_lot_is_clamped_at_one_tick_and_at_the_largest_price() {
        let (processor, _) = replay("");
        let instrument = &processor.engine.instruments[&processor.engine.names.find("BTCUSD").unwrap()];
        let valuation = instrument.valuation;
        // 2 contracts of 100: a cost above V(2, 0.5) = 400 is a price below one tick
        let at_tick = wide(valuation.value(2 * E8, instrument.tick_size));
        assert_eq!(at_tick, wide(400 * E8 * E8));
        assert_eq!(clamped_lot_cost(instrument, 2 * E8, wadd(at_tick, Wide::ONE)), Some((at_tick, instrument.tick_size)));
        assert_eq!(clamped_lot_cost(instrument, 2 * E8, at_tick), None);
        // a cost at or below 0 (a short with more equity than value) is above every price
        let lowest = wide(valuation.value(2 * E8, LARGEST_PRICE));
        assert_eq!(lowest, wide(2 * E8)); // 200 / 9999999999.99999999 = 2.00000000000000000200e-8
        assert_eq!(clamped_lot_cost(instrument, 2 * E8, wide(-5)), Some((lowest, LARGEST_PRICE)));
        assert_eq!(clamped_lot_cost(instrument, 2 * E8, lowest), None);
        // a linear lot is clamped only below one tick
        let linear = Instrument { valuation: crate::valuation::LINEAR, ..instrument.clone() };
        assert_eq!(clamped_lot_cost(&linear, 2 * E8, wide(-5)), Some((wide(2 * E8 * 50_000_000), 50_000_000)));
    }
}
