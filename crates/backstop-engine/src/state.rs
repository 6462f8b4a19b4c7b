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
    /// the positions, each with its place in `of_symbol[symbol]`, at the index its account's slot names; a closed
    /// position's index is reused (`free`), so an open one's never moves
    slab: Vec<(Position, usize)>,
    free: Vec<u32>,
    pub of_account: KeysByAccount,
    pub of_symbol: HashMap<u32, Vec<(u32, PositionSide)>>,
}

/// A position's key within its account: (symbol, position side).
pub type AccountKey = (u32, PositionSide);

/// Each account's position keys in the order they opened, by account id, each with the index of its position in
/// `Positions`. The rules read them on every fill (the position mode check, then the position) and liquidation, for
/// accounts that number hundreds of thousands: so they sit in a dense array found without hashing, an account's
/// first keys inside its own slot (most accounts hold one or two positions), one cache line where a map would cost
/// two or three.
#[derive(Clone, Debug, Default)]
pub struct KeysByAccount {
    slots: Vec<KeysSlot>,
    /// the keys, and their positions' indices, of accounts holding more than fit in a slot
    more: HashMap<u32, (Vec<AccountKey>, Vec<u32>)>,
    /// how many accounts hold a position
    holders: usize,
}

#[derive(Clone, Copy, Debug)]
struct KeysSlot {
    /// how many keys the account has (above INLINE_KEYS they are all in `more`)
    count: u32,
    inline: [AccountKey; INLINE_KEYS],
    /// the index of each inline key's position
    index: [u32; INLINE_KEYS],
}

const INLINE_KEYS: usize = 2;

impl KeysByAccount {
    /// The account's keys, in the order they opened.
    pub fn get(&self, account: u32) -> &[AccountKey] {
        match self.slots.get(account as usize) {
            Some(slot) if slot.count as usize <= INLINE_KEYS => &slot.inline[..slot.count as usize],
            Some(_) => &self.more[&account].0,
            None => &[],
        }
    }

    /// The index of the position the account holds under `key`.
    pub fn find(&self, account: u32, key: AccountKey) -> Option<u32> {
        let slot = self.slots.get(account as usize)?;
        let count = slot.count as usize;
        if count <= INLINE_KEYS {
            let at = slot.inline[..count].iter().position(|&held| held == key)?;
            return Some(slot.index[at]);
        }
        let (keys, indices) = &self.more[&account];
        keys.iter().position(|&held| held == key).map(|at| indices[at])
    }

    /// A hint, changing nothing: the account's slot brought into the cache (crate::engine::Engine::prefetch_account).
    pub fn prefetch(&self, account: u32) {
        if let Some(slot) = self.slots.get(account as usize) {
            crate::idtable::prefetch_line(std::ptr::from_ref(slot).cast());
        }
    }

    /// The accounts holding a position (in id order).
    pub fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..).zip(&self.slots).filter(|(_, slot)| slot.count > 0).map(|(account, _)| account)
    }

    pub fn len(&self) -> usize {
        self.holders
    }

    pub fn is_empty(&self) -> bool {
        self.holders == 0
    }

    fn push(&mut self, account: u32, key: AccountKey, index: u32) {
        let at = account as usize;
        if at >= self.slots.len() {
            let empty = KeysSlot { count: 0, inline: [(0, PositionSide::Both); INLINE_KEYS], index: [0; INLINE_KEYS] };
            self.slots.resize(at + 1, empty);
        }
        let slot = &mut self.slots[at];
        let count = slot.count as usize;
        if count == 0 {
            self.holders += 1;
        }
        if count < INLINE_KEYS {
            slot.inline[count] = key;
            slot.index[count] = index;
        } else if count == INLINE_KEYS {
            let keys = slot.inline.iter().copied().chain([key]).collect();
            let indices = slot.index.iter().copied().chain([index]).collect();
            self.more.insert(account, (keys, indices));
        } else {
            let (keys, indices) = self.more.get_mut(&account).expect("an account with more keys");
            keys.push(key);
            indices.push(index);
        }
        slot.count += 1;
    }

    /// The key removed from the account's (the others keep their order); the index of its position.
    fn remove(&mut self, account: u32, key: AccountKey) -> Option<u32> {
        let slot = self.slots.get_mut(account as usize)?;
        let count = slot.count as usize;
        if count <= INLINE_KEYS {
            let at = slot.inline[..count].iter().position(|&held| held == key)?;
            let index = slot.index[at];
            slot.inline.copy_within(at + 1..count, at);
            slot.index.copy_within(at + 1..count, at);
            slot.count -= 1;
            if slot.count == 0 {
                self.holders -= 1;
            }
            return Some(index);
        }
        let (keys, indices) = self.more.get_mut(&account).expect("an account with more keys");
        let at = keys.iter().position(|&held| held == key)?;
        keys.remove(at);
        let index = indices.remove(at);
        slot.count -= 1;
        if keys.len() <= INLINE_KEYS {
            slot.inline[..keys.len()].copy_from_slice(keys);
            slot.index[..keys.len()].copy_from_slice(indices);
            self.more.remove(&account);
        }
        Some(index)
    }
}

impl Positions {
    pub fn get(&self, account: u32, symbol: u32, side: PositionSide) -> Option<&Position> {
        let index = self.of_account.find(account, (symbol, side))?;
        Some(&self.slab[index as usize].0)
    }
    pub fn get_mut(&mut self, account: u32, symbol: u32, side: PositionSide) -> Option<&mut Position> {
        let index = self.of_account.find(account, (symbol, side))?;
        Some(&mut self.slab[index as usize].0)
    }
    /// How many positions are open.
    pub fn len(&self) -> usize {
        self.slab.len() - self.free.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    /// A position not held yet (the caller checks).
    pub fn add(&mut self, position: Position) {
        let (account, key) = (position.account, (position.symbol, position.position_side));
        let holders = self.of_symbol.entry(position.symbol).or_default();
        holders.push((position.account, position.position_side));
        let entry = (position, holders.len() - 1);
        let index = match self.free.pop() {
            Some(index) => {
                self.slab[index as usize] = entry;
                index
            }
            None => {
                self.slab.push(entry);
                u32::try_from(self.slab.len() - 1).expect("fewer positions than u32 counts")
            }
        };
        self.of_account.push(account, key, index);
    }
    pub fn remove(&mut self, account: u32, symbol: u32, side: PositionSide) {
        let Some(index) = self.of_account.remove(account, (symbol, side)) else { return };
        self.free.push(index);
        let at = self.slab[index as usize].1;
        let holders = self.of_symbol.get_mut(&symbol).expect("indexed by symbol");
        holders.swap_remove(at);
        if let Some(&(moved, moved_side)) = holders.get(at) {
            let moved = self.of_account.find(moved, (symbol, moved_side)).expect("indexed");
            self.slab[moved as usize].1 = at;
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
            let (mut dense, mut model) = (KeysByAccount::default(), BTreeMap::<u32, Vec<(AccountKey, u32)>>::new());
            for (step, (account, symbol, side, add)) in steps.into_iter().enumerate() {
                let key = (symbol, sides[side]);
                let held = model.get(&account).and_then(|keys| keys.iter().find(|(k, _)| *k == key)).map(|&(_, i)| i);
                if add && held.is_none() {
                    dense.push(account, key, step as u32);
                    model.entry(account).or_default().push((key, step as u32));
                } else if !add {
                    prop_assert_eq!(dense.remove(account, key), held);
                    if let Some(keys) = model.get_mut(&account) {
                        keys.retain(|&(k, _)| k != key);
                        if keys.is_empty() {
                            model.remove(&account);
                        }
                    }
                }
                for account in 0..7 {
                    let keys: Vec<AccountKey> = model.get(&account).map_or(vec![], |keys| keys.iter().map(|&(k, _)| k).collect());
                    prop_assert_eq!(dense.get(account), &keys[..]);
                    for symbol in 0..4 {
                        for side in sides {
                            let index = model.get(&account)
                                .and_then(|keys| keys.iter().find(|(k, _)| *k == (symbol, side))).map(|&(_, i)| i);
                            prop_assert_eq!(dense.find(account, (symbol, side)), index);
                        }
                    }
                }
                prop_assert_eq!(dense.keys().collect::<Vec<_>>(), model.keys().copied().collect::<Vec<_>>());
                prop_assert_eq!(dense.len(), model.len());
            }
        }

        #[test]
        fn positions_hold_what_a_map_holds(
            steps in proptest::collection::vec((0u32..6, 0u32..3, 0usize..3, any::<bool>(), 1i128..100), 0..200),
        ) {
            let sides = [PositionSide::Both, PositionSide::Long, PositionSide::Short];
            let mut positions = Positions::default();
            let mut model = BTreeMap::<(u32, u32, PositionSide), i128>::new();
            let mut symbol_order = BTreeMap::<u32, Vec<(u32, PositionSide)>>::new();
            for (account, symbol, side, add, qty) in steps {
                let side = sides[side];
                let key = (account, symbol, side);
                if add && !model.contains_key(&key) {
                    positions.add(Position { account, symbol, qty, cost: qty, margin_mode: MarginMode::Cross,
                                             leverage: Dec { value: 1, places: 0 }, position_side: side,
                                             adl_quantile: 0 });
                    model.insert(key, qty);
                    symbol_order.entry(symbol).or_default().push((account, side));
                } else if add {
                    positions.get_mut(account, symbol, side).unwrap().qty += qty;
                    *model.get_mut(&key).unwrap() += qty;
                } else {
                    positions.remove(account, symbol, side);
                    if model.remove(&key).is_some() {
                        let holders = symbol_order.get_mut(&symbol).unwrap();
                        let at = holders.iter().position(|&h| h == (account, side)).unwrap();
                        holders.swap_remove(at);
                    }
                }
                prop_assert_eq!(positions.len(), model.len());
                for account in 0..7 {
                    for symbol in 0..4 {
                        for side in sides {
                            let held = positions.get(account, symbol, side);
                            prop_assert_eq!(held.map(|p| (p.account, p.symbol, p.position_side, p.qty)),
                                            model.get(&(account, symbol, side)).map(|&q| (account, symbol, side, q)));
                        }
                    }
                }
                for (symbol, holders) in &symbol_order {
                    prop_assert_eq!(positions.holders(*symbol), &holders[..]);
                }
            }
        }
    }
}
