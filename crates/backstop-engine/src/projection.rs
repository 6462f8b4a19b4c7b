//! The service's PostgreSQL projections (backstop.pipeline.projections.build) read from the engine's state: wallet,
//! position, fund, fund-lot and ADL-queue rows as COPY text, for the accounts and positions a batch touched or for
//! every one. Each figure is the accounts report's (docs/design.md section 9.4: prices as the rules round them,
//! money at 1e-8), so a row equals, as a number, the reference's.

use crate::engine::{isolated_account, money, quantile, Engine};
use crate::ledger::Account;
use crate::numbers::{text, text_512, text_wide, wide, S12, S16, S8};
use crate::state::{Position, Side};
use crate::wire::{MarginMode, PositionSide, Surplus};
use ethnum::I256;
use rustc_hash::FxHashSet as HashSet;

const SIDES: [PositionSide; 3] = [PositionSide::Both, PositionSide::Long, PositionSide::Short];
const FUND_PREFIX: &str = "fund:";

/// What to write: the rows of `accounts` (their wallets and their cross positions), of `positions` (account,
/// symbol: the positions held), and the deletion of `closed` (account, symbol, side: positions the batches closed)
/// that are not held again; or of every account (`everything`: every side not held is deleted); fund lots only when
/// `lots`, the ADL queue only with `everything`.
pub struct Wanted<'a> {
    pub accounts: &'a [String],
    pub positions: &'a [(String, String)],
    pub closed: &'a [(String, String, String)],
    pub everything: bool,
    pub lots: bool,
    /// what a batch writes as of the same seq, left out: the wallets and cross positions of `written_accounts`,
    /// the positions of `written_positions` (account, symbol)
    pub written_accounts: &'a [String],
    pub written_positions: &'a [(String, String)],
}

/// COPY text per table (columns as backstop.adapters.postgres.store names them), the positions to delete among
/// them (account, symbol, position side).
#[derive(Default)]
pub struct Rows {
    pub wallets: Vec<u8>,
    pub positions: Vec<u8>,
    pub closed: Vec<u8>,
    pub funds: Vec<u8>,
    pub lots: Option<Vec<u8>>,
    pub adl_queue: Option<Vec<u8>>,
}

/// One COPY text row: a tab between values, \N for none, and backslash, tab and line ends escaped.
pub(crate) struct Line<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Line<'o> {
    pub(crate) fn new(out: &'o mut Vec<u8>) -> Line<'o> {
        Line { out, first: true }
    }

    fn sep(&mut self) {
        if !self.first {
            self.out.push(b'\t');
        }
        self.first = false;
    }

    pub(crate) fn text(mut self, value: &str) -> Self {
        self.sep();
        let bytes = value.as_bytes();
        if !bytes.iter().any(|&byte| matches!(byte, b'\\' | b'\t' | b'\n' | b'\r')) {
            self.out.extend_from_slice(bytes); // the usual case: nothing to escape, one copy
            return self;
        }
        for &byte in bytes {
            match byte {
                b'\\' => self.out.extend_from_slice(b"\\\\"),
                b'\t' => self.out.extend_from_slice(b"\\t"),
                b'\n' => self.out.extend_from_slice(b"\\n"),
                b'\r' => self.out.extend_from_slice(b"\\r"),
                _ => self.out.push(byte),
            }
        }
        self
    }

    pub(crate) fn null(mut self) -> Self {
        self.sep();
        self.out.extend_from_slice(b"\\N");
        self
    }

    pub(crate) fn end(self) {
        self.out.push(b'\n');
    }
}

fn mode_name(mode: MarginMode) -> &'static str {
    match mode {
        MarginMode::Cross => "cross",
        MarginMode::Isolated => "isolated",
    }
}

fn surplus_name(surplus: Surplus) -> &'static str {
    match surplus {
        Surplus::Fund => "fund",
        Surplus::Trader => "trader",
    }
}

fn sorted_names(engine: &Engine, ids: impl Iterator<Item = u32>) -> Vec<(String, u32)> {
    let mut named: Vec<(String, u32)> = ids.map(|id| (engine.names.name(id).to_string(), id)).collect();
    named.sort();
    named.dedup();
    named
}

fn position_row(out: &mut Vec<u8>, engine: &Engine, p: &Position, seq: &str) {
    let names = &engine.names;
    let view = engine.margin_view(p);
    let liquidation = engine.liquidation_price(p);
    let line = Line::new(out)
        .text(names.name(p.account))
        .text(names.name(p.symbol))
        .text(p.position_side.name())
        .text(&text(p.qty, S8))
        .text(&text_512(engine.instruments[&p.symbol].valuation.reported_price(p.size(), wide(p.cost)), S8))
        .text(mode_name(p.margin_mode))
        .text(&text(p.leverage.value, S8))
        .text(&text_wide(engine.ledger.balance(isolated_account(p)), S8))
        .text(&text(engine.marks[&p.symbol], S8));
    let line = match liquidation {
        Some(price) => line.text(&text_512(price, S8)),
        None => line.null(),
    };
    line.text(&text_512(engine.bankruptcy_price_in(p, Some(&view)), S8)).text(seq).end();
}

/// The rows `wanted` names, as of the engine's last seq.
pub fn rows<'a>(engine: &Engine, wanted: &Wanted<'a>) -> Rows {
    let names = &engine.names;
    let seq = engine.last_seq.to_string();
    let mut rows = Rows::default();
    let assets = sorted_names(engine, engine.funds.values().map(|f| f.spec.settle_asset));
    let symbols = sorted_names(engine, engine.instruments.keys().copied());
    let mut accounts: Vec<String> = wanted.accounts.to_vec();
    if wanted.everything {
        for (account, _) in engine.ledger.all_balances() {
            if let Account::Wallet { account, .. } = account {
                accounts.push(names.name(*account).to_string());
            }
        }
        accounts.extend(engine.positions.of_account.keys().map(|a| names.name(a).to_string()));
    }
    accounts.sort();
    accounts.dedup();
    let pairs = |given: &'a [(String, String)]| -> HashSet<(&'a str, &'a str)> {
        given.iter().map(|(account, symbol)| (account.as_str(), symbol.as_str())).collect()
    };
    let (touched, written_pairs) = (pairs(wanted.positions), pairs(wanted.written_positions));
    let written_accounts: HashSet<&str> = wanted.written_accounts.iter().map(String::as_str).collect();
    for account_name in &accounts {
        if account_name.starts_with(FUND_PREFIX) {
            continue;
        }
        let account = names.find(account_name);
        let written = written_accounts.contains(account_name.as_str());
        if let Some(account) = account.filter(|_| !written) {
            for (asset_name, asset) in &assets {
                let wallet = Account::Wallet { account, asset: *asset };
                if engine.ledger.holds(wallet) {
                    Line::new(&mut rows.wallets).text(account_name).text(asset_name)
                        .text(&text_wide(engine.ledger.balance(wallet), S8)).text(&seq).end();
                }
            }
        }
        for (symbol_name, symbol) in &symbols {
            let pair = (account_name.as_str(), symbol_name.as_str());
            let here = wanted.everything || touched.contains(&pair);
            let written_pair = written && written_pairs.contains(&pair);
            for side in SIDES {
                match account.and_then(|account| engine.positions.get(account, *symbol, side)) {
                    None if wanted.everything => {
                        Line::new(&mut rows.closed).text(account_name).text(symbol_name).text(side.name()).end()
                    }
                    None => {}
                    Some(position) => {
                        let cross = position.margin_mode == MarginMode::Cross;
                        if (here || cross) && !(written_pair || written && cross) {
                            position_row(&mut rows.positions, engine, position, &seq);
                        }
                    }
                }
            }
        }
    }
    if !wanted.everything {
        let mut closed: Vec<&(String, String, String)> = wanted.closed.iter().collect();
        closed.sort();
        closed.dedup();
        for (account_name, symbol_name, side_name) in closed {
            let side = SIDES.into_iter().find(|side| side.name() == side_name);
            let held = names.find(account_name).zip(names.find(symbol_name)).zip(side)
                .is_some_and(|((account, symbol), side)| engine.positions.get(account, symbol, side).is_some());
            if !held {
                Line::new(&mut rows.closed).text(account_name).text(symbol_name).text(side_name).end();
            }
        }
    }
    for state in engine.funds.values() {
        let spec = &state.spec;
        let balance = engine.ledger.balance(Account::Fund(spec.fund_id));
        Line::new(&mut rows.funds)
            .text(names.name(spec.fund_id))
            .text(names.name(spec.settle_asset))
            .text(surplus_name(spec.surplus))
            .text(&text(spec.max_inventory_ratio, crate::numbers::S18))
            .text(&text_wide(balance, S8))
            .text(&text_wide(if balance < 0 { -balance } else { I256::ZERO }, S8))
            .text(&text(money(engine.inventory_notional(state), S16), S8))
            .text(&seq)
            .end();
    }
    if wanted.lots || wanted.everything {
        let mut out = Vec::new();
        for state in engine.funds.values() {
            for lot in state.lots.values().flatten() {
                Line::new(&mut out)
                    .text(names.name(state.spec.fund_id))
                    .text(&lot.liquidation_id)
                    .text(names.name(lot.symbol))
                    .text(lot.side.name())
                    .text(&text(lot.qty, S8))
                    .text(&text_512(lot.cost, S16))
                    .text(&text_512(engine.instruments[&lot.symbol].valuation.reported_price(lot.qty, lot.cost), S8))
                    .text(names.name(lot.liquidated_account))
                    .text(&lot.seq.to_string())
                    .end();
            }
        }
        rows.lots = Some(out);
    }
    if wanted.everything {
        let mut out = Vec::new();
        for (symbol_name, symbol) in &symbols {
            if !engine.marks.contains_key(symbol) {
                continue;
            }
            for side in [Side::Long, Side::Short] {
                let queue = engine.adl_queue(*symbol, side);
                for (index, ranked) in queue.iter().enumerate() {
                    let rank = index + 1;
                    Line::new(&mut out)
                        .text(symbol_name)
                        .text(side.name())
                        .text(names.name(ranked.account))
                        .text(&rank.to_string())
                        .text(&text_512(ranked.score, S12))
                        .text(&quantile(rank, queue.len()).to_string())
                        .text(&seq)
                        .end();
                }
            }
        }
        rows.adl_queue = Some(out);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_and_nulls() {
        let mut out = Vec::new();
        Line::new(&mut out).text("a\tb\\c\nd").null().text("1").end();
        assert_eq!(out, b"a\\tb\\\\c\\nd\t\\N\t1\n");
    }

    #[test]
    fn an_empty_engine_has_no_rows_but_closes_what_was_touched() {
        let engine = Engine::default();
        let accounts = vec!["acct-1".to_string()];
        let wanted = Wanted { accounts: &accounts, positions: &[], closed: &[], everything: true, lots: false,
                              written_accounts: &[], written_positions: &[] };
        let rows = rows(&engine, &wanted);
        assert!(rows.wallets.is_empty() && rows.positions.is_empty() && rows.closed.is_empty());
        assert_eq!(rows.lots, Some(Vec::new()));
        assert_eq!(rows.adl_queue, Some(Vec::new()));
    }
}
