//! Engine state (backstop.core.state): plain records owned by the engine; money lives in the ledger.
//! Quantities and prices are integers at 1e-8, costs at 1e-16, rates at 1e-18 (docs/design.md section 9.2).

use crate::numbers::Wide;
use crate::valuation::Valuation;
use crate::wire::{Dec, MarginMode, PositionSide, Surplus};
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
    /// how far (a rate, 1e-18) a liquidation's mark may be from the mark in force without a finding
    pub mark_tolerance: i128,
    /// linear, or inverse with its contract size (docs/design.md section 7)
    pub valuation: Valuation,
}

/// docs/design.md section 7: 0.5% at 1e-18.
pub const DEFAULT_MARK_TOLERANCE: i128 = 5_000_000_000_000_000;

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

/// A position: signed qty (long > 0) and the exact cost basis |qty| x entry, keyed (account, symbol, position side):
/// one per symbol in one-way mode (`Both`), one per side in hedge mode (`Long`, `Short`, whose qty has that sign).
#[derive(Clone, Debug)]
pub struct Position {
    pub account: u32,
    pub symbol: u32,
    pub qty: i128,
    pub cost: i128,
    pub margin_mode: MarginMode,
    pub leverage: Dec,
    pub position_side: PositionSide,
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

/// How a position is named (accounts.json, isolated ledger accounts): the symbol in one-way mode, `<symbol>:long` /
/// `<symbol>:short` in hedge mode.
pub fn position_label(symbol: &str, side: PositionSide) -> String {
    match side {
        PositionSide::Both => symbol.to_string(),
        other => format!("{symbol}:{}", other.name()),
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

/// Open positions: by (account, symbol, position side), each account's keys in the order they opened, each symbol's
/// holders.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    /// (account, symbol, position side) -> the position and its place in `of_symbol[symbol]`
    pub by_key: HashMap<(u32, u32, PositionSide), (Position, usize)>,
    pub of_account: KeysByAccount,
    pub of_symbol: HashMap<u32, Vec<(u32, PositionSide)>>,
}

/// A position's key within its account: (symbol, position side).
pub type AccountKey = (u32, PositionSide);

/// Each account's position keys in the order they opened, by account id. The rules read them on every fill (the
/// position mode check) and liquidation, for accounts that number hundreds of thousands: so they sit in a dense
/// array found without hashing, an account's first keys inside its own slot (most accounts hold one or two
/// positions), one cache line where a map would cost two or three.
#[derive(Clone, Debug, Default)]
pub struct KeysByAccount {
    slots: Vec<KeysSlot>,
    /// the keys of accounts holding more than fit in a slot
    more: HashMap<u32, Vec<AccountKey>>,
    /// how many accounts hold a position
    holders: usize,
}

#[derive(Clone, Copy, Debug)]
struct KeysSlot {
    /// the slot's own index: the account `KeysByAccount::keys` names
    account: u32,
    /// how many keys the account has (above INLINE_KEYS they are all in `more`)
    count: u32,
    inline: [AccountKey; INLINE_KEYS],
}

const INLINE_KEYS: usize = 2;

impl KeysByAccount {
    /// The account's keys, in the order they opened.
    pub fn get(&self, account: u32) -> &[AccountKey] {
        match self.slots.get(account as usize) {
            Some(slot) if slot.count as usize <= INLINE_KEYS => &slot.inline[..slot.count as usize],
            Some(_) => &self.more[&account],
            None => &[],
        }
    }

    /// A hint, changing nothing: the account's slot brought into the cache (crate::engine::Engine::prefetch_account).
    pub fn prefetch(&self, account: u32) {
        if let Some(slot) = self.slots.get(account as usize) {
            crate::idtable::prefetch_line(std::ptr::from_ref(slot).cast());
        }
    }

    /// The accounts holding a position (in id order).
    pub fn keys(&self) -> impl Iterator<Item = &u32> + '_ {
        self.slots.iter().filter(|slot| slot.count > 0).map(|slot| &slot.account)
    }

    pub fn len(&self) -> usize {
        self.holders
    }

    pub fn is_empty(&self) -> bool {
        self.holders == 0
    }

    fn push(&mut self, account: u32, key: AccountKey) {
        let at = account as usize;
        if at >= self.slots.len() {
            let empty = |index: usize| KeysSlot { account: index as u32, count: 0,
                                                  inline: [(0, PositionSide::Both); INLINE_KEYS] };
            let start = self.slots.len();
            self.slots.extend((start..=at).map(empty));
        }
        let slot = &mut self.slots[at];
        let count = slot.count as usize;
        if count == 0 {
            self.holders += 1;
        }
        if count < INLINE_KEYS {
            slot.inline[count] = key;
        } else if count == INLINE_KEYS {
            self.more.insert(account, slot.inline.iter().copied().chain([key]).collect());
        } else {
            self.more.get_mut(&account).expect("an account with more keys").push(key);
        }
        slot.count += 1;
    }

    /// The key removed from the account's (the others keep their order).
    fn remove(&mut self, account: u32, key: AccountKey) {
        let Some(slot) = self.slots.get_mut(account as usize) else { return };
        let count = slot.count as usize;
        if count <= INLINE_KEYS {
            let Some(at) = slot.inline[..count].iter().position(|&held| held == key) else { return };
            slot.inline.copy_within(at + 1..count, at);
            slot.count -= 1;
            if slot.count == 0 {
                self.holders -= 1;
            }
            return;
        }
        let keys = self.more.get_mut(&account).expect("an account with more keys");
        let Some(at) = keys.iter().position(|&held| held == key) else { return };
        keys.remove(at);
        slot.count -= 1;
        if keys.len() <= INLINE_KEYS {
            slot.inline[..keys.len()].copy_from_slice(keys);
            self.more.remove(&account);
        }
    }
}

impl Positions {
    pub fn get(&self, account: u32, symbol: u32, side: PositionSide) -> Option<&Position> {
        self.by_key.get(&(account, symbol, side)).map(|(position, _)| position)
    }
    pub fn get_mut(&mut self, account: u32, symbol: u32, side: PositionSide) -> Option<&mut Position> {
        self.by_key.get_mut(&(account, symbol, side)).map(|(position, _)| position)
    }
    /// The account's (symbol, position side) keys, in the order they opened.
    pub fn keys_of(&self, account: u32) -> &[(u32, PositionSide)] {
        self.of_account.get(account)
    }
    /// The (account, position side) keys of a symbol's positions.
    pub fn holders(&self, symbol: u32) -> &[(u32, PositionSide)] {
        self.of_symbol.get(&symbol).map_or(&[], Vec::as_slice)
    }
    /// The account's positions in a symbol: none, its one-way position, or its hedge sides.
    pub fn in_symbol(&self, account: u32, symbol: u32) -> impl Iterator<Item = &Position> + '_ {
        self.keys_of(account)
            .iter()
            .filter(move |(s, _)| *s == symbol)
            .filter_map(move |(s, side)| self.get(account, *s, *side))
    }
    pub fn add(&mut self, position: Position) {
        let key = (position.account, position.symbol, position.position_side);
        self.of_account.push(position.account, (position.symbol, position.position_side));
        let holders = self.of_symbol.entry(position.symbol).or_default();
        holders.push((position.account, position.position_side));
        self.by_key.insert(key, (position, holders.len() - 1));
    }
    pub fn remove(&mut self, account: u32, symbol: u32, side: PositionSide) {
        let Some((_, at)) = self.by_key.remove(&(account, symbol, side)) else { return };
        self.of_account.remove(account, (symbol, side));
        let holders = self.of_symbol.get_mut(&symbol).expect("indexed by symbol");
        holders.swap_remove(at);
        if let Some(&(moved, moved_side)) = holders.get(at) {
            self.by_key.get_mut(&(moved, symbol, moved_side)).expect("indexed").1 = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_by_account_hold_what_a_map_of_lists_holds(
            steps in proptest::collection::vec((0u32..6, 0u32..4, 0usize..3, any::<bool>()), 0..200),
        ) {
            let sides = [PositionSide::Both, PositionSide::Long, PositionSide::Short];
            let (mut dense, mut model) = (KeysByAccount::default(), BTreeMap::<u32, Vec<AccountKey>>::new());
            for (account, symbol, side, add) in steps {
                let key = (symbol, sides[side]);
                let held = model.get(&account).is_some_and(|keys| keys.contains(&key));
                if add && !held {
                    dense.push(account, key);
                    model.entry(account).or_default().push(key);
                } else if !add {
                    dense.remove(account, key);
                    if let Some(keys) = model.get_mut(&account) {
                        keys.retain(|&k| k != key);
                        if keys.is_empty() {
                            model.remove(&account);
                        }
                    }
                }
                for account in 0..7 {
                    prop_assert_eq!(dense.get(account), model.get(&account).map_or(&[][..], Vec::as_slice));
                }
                prop_assert_eq!(dense.keys().copied().collect::<Vec<_>>(), model.keys().copied().collect::<Vec<_>>());
                prop_assert_eq!(dense.len(), model.len());
            }
        }
    }
}
