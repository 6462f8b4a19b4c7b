//! Engine state (backstop.core.state): plain records owned by the engine; money lives in the ledger.
//! Quantities and prices are integers at 1e-8, costs at 1e-16, rates at 1e-18 (docs/design.md section 9.2).

use crate::numbers::Wide;
use crate::wire::{Dec, MarginMode, Surplus};
use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug)]
pub struct Tier {
    pub max_notional: i128,
    pub mmr: i128,
    pub maint_amount: i128,
}

#[derive(Clone, Debug)]
pub struct Instrument {
    pub symbol: u32,
    pub settle_asset: u32,
    pub tick_size: i128,
    pub lot_size: i128,
    pub tiers: Vec<Tier>,
    pub liquidation_fee_rate: i128,
    pub fund_id: u32,
}

#[derive(Clone, Debug)]
pub struct FundSpec {
    pub fund_id: u32,
    pub settle_asset: u32,
    pub surplus: Surplus,
    pub max_inventory_ratio: i128,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Long,
    Short,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Long => "long",
            Side::Short => "short",
        }
    }
    pub fn opposite(self) -> Side {
        match self {
            Side::Long => Side::Short,
            Side::Short => Side::Long,
        }
    }
}

/// A one-way position: signed qty (long > 0) and the exact cost basis |qty| x entry.
#[derive(Clone, Debug)]
pub struct Position {
    pub account: u32,
    pub symbol: u32,
    pub qty: i128,
    pub cost: i128,
    pub margin_mode: MarginMode,
    pub leverage: Dec,
    /// The ADL quantile last published for it (crate::quantiles); 0: none.
    pub adl_quantile: u8,
}

impl Position {
    pub fn size(&self) -> i128 {
        self.qty.abs()
    }
    pub fn side(&self) -> Side {
        if self.qty > 0 { Side::Long } else { Side::Short }
    }
}

/// Fund inventory taken over from one liquidation, at its bankruptcy price (cost / qty). The cost includes the
/// equity behind the liquidated qty, derived from a balance: 512 bits (docs/design.md section 9.3).
#[derive(Clone, Debug)]
pub struct Lot {
    pub liquidation_id: String,
    pub symbol: u32,
    pub side: Side,
    pub qty: i128,
    pub cost: Wide,
    pub liquidated_account: u32,
    pub seq: u64,
}

/// A fund's spec and inventory: lots per symbol name (sorted, as the reference iterates them), FIFO.
#[derive(Clone, Debug)]
pub struct FundState {
    pub spec: FundSpec,
    pub symbols: Vec<u32>,
    pub lots: BTreeMap<String, VecDeque<Lot>>,
    pub net: HashMap<u32, i128>,
}

impl FundState {
    pub fn new(spec: FundSpec) -> FundState {
        FundState { spec, symbols: Vec::new(), lots: BTreeMap::new(), net: HashMap::default() }
    }

    pub fn net_qty(&self, symbol: u32) -> i128 {
        self.net.get(&symbol).copied().unwrap_or(0)
    }

    pub fn add_lot(&mut self, symbol_name: &str, lot: Lot) {
        let signed = if lot.side == Side::Long { lot.qty } else { -lot.qty };
        *self.net.entry(lot.symbol).or_insert(0) += signed;
        self.lots.entry(symbol_name.to_string()).or_default().push_back(lot);
    }
}

/// Open positions: by (account, symbol), each account's symbols in the order they opened, each symbol's accounts.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    /// (account, symbol) -> the position and its place in `of_symbol[symbol]`
    pub by_key: HashMap<(u32, u32), (Position, usize)>,
    pub of_account: HashMap<u32, Vec<u32>>,
    pub of_symbol: HashMap<u32, Vec<u32>>,
}

impl Positions {
    pub fn get(&self, account: u32, symbol: u32) -> Option<&Position> {
        self.by_key.get(&(account, symbol)).map(|(position, _)| position)
    }
    pub fn get_mut(&mut self, account: u32, symbol: u32) -> Option<&mut Position> {
        self.by_key.get_mut(&(account, symbol)).map(|(position, _)| position)
    }
    pub fn symbols_of(&self, account: u32) -> &[u32] {
        self.of_account.get(&account).map_or(&[], Vec::as_slice)
    }
    pub fn accounts_in(&self, symbol: u32) -> &[u32] {
        self.of_symbol.get(&symbol).map_or(&[], Vec::as_slice)
    }
    pub fn add(&mut self, position: Position) {
        let key = (position.account, position.symbol);
        self.of_account.entry(position.account).or_default().push(position.symbol);
        let accounts = self.of_symbol.entry(position.symbol).or_default();
        accounts.push(position.account);
        self.by_key.insert(key, (position, accounts.len() - 1));
    }
    pub fn remove(&mut self, account: u32, symbol: u32) {
        let Some((_, at)) = self.by_key.remove(&(account, symbol)) else { return };
        if let Some(symbols) = self.of_account.get_mut(&account) {
            symbols.retain(|&s| s != symbol);
            if symbols.is_empty() {
                self.of_account.remove(&account);
            }
        }
        let accounts = self.of_symbol.get_mut(&symbol).expect("indexed by symbol");
        accounts.swap_remove(at);
        if let Some(&moved) = accounts.get(at) {
            self.by_key.get_mut(&(moved, symbol)).expect("indexed").1 = at;
        }
    }
}
