//! The double-entry ledger (backstop.core.ledger): every money movement is one posting between two ledger
//! accounts, so the sum of all balances is zero by construction. Names are interned: an account is a small
//! enum of ids, its name (`wallet:<account>:<asset>`, ...) is rendered only for documents.

use crate::adl_index::Changed;
use crate::json::write_string_body;
use crate::numbers::{add, sub, wadd, wide256, Wide};
use crate::wire::PositionSide;
use ethnum::I256;
use rustc_hash::FxHashMap as HashMap;

/// Strings the engine meets again and again (account ids, symbols, assets, fund ids), as small integers.
#[derive(Default, Clone, Debug)]
pub struct Names {
    ids: HashMap<Key, u32>,
    names: Vec<String>,
    /// every name's JSON string body (json::write_string_body), one after the other: escaped once when interned,
    /// so the records that name it (most of all the postings, two account names each) copy it from one contiguous
    /// block without checking it again; name id's body ends at `json_ends[id]`
    json: Vec<u8>,
    json_ends: Vec<usize>,
}

/// A name as the id map holds it: a short one (most account ids and symbols) inside the map's own slot, so a
/// lookup compares it without following a pointer to another cache line; a long one on the heap.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Inline { length: u8, bytes: [u8; Key::INLINE] },
    Heap(Box<str>),
}

impl Key {
    const INLINE: usize = 22;

    fn new(name: &str) -> Key {
        match name.len() {
            length @ 0..=Key::INLINE => {
                let mut bytes = [0u8; Key::INLINE];
                bytes[..length].copy_from_slice(name.as_bytes());
                Key::Inline { length: length as u8, bytes }
            }
            _ => Key::Heap(name.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Key::Inline { length, bytes } => {
                std::str::from_utf8(&bytes[..*length as usize]).expect("copied from a str")
            }
            Key::Heap(name) => name,
        }
    }
}

/// Hashed as the str it holds, so that a map of keys is looked up by &str.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Names {
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        write_string_body(&mut self.json, name);
        self.json_ends.push(self.json.len());
        self.ids.insert(Key::new(name), id);
        id
    }
    pub fn find(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
    /// The name's JSON string body: what json::write_string_body writes of `name(id)`.
    pub fn json_body(&self, id: u32) -> &[u8] {
        let id = id as usize;
        let start = if id == 0 { 0 } else { self.json_ends[id - 1] };
        &self.json[start..self.json_ends[id]]
    }
    /// A hint, changing nothing: where `json_body(id)` starts brought into the cache (`body`: false), or its text
    /// (`body`: true; cheap once its start is cached). The output writer reads the names of postings ahead so.
    pub fn prefetch_json_body(&self, id: u32, body: bool) {
        let id = id as usize;
        if id >= self.json_ends.len() {
            return;
        }
        let start = if id == 0 { &0 } else { &self.json_ends[id - 1] };
        let address = if body { self.json.as_ptr().wrapping_add(*start) } else { std::ptr::from_ref(start).cast() };
        crate::idtable::prefetch_line(address.cast());
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    /// The names from id `first` on, in id order (a copy interning them in this order gets the same ids).
    pub fn since(&self, first: usize) -> &[String] {
        &self.names[first.min(self.names.len())..]
    }
}

/// A ledger account; the numbers are ids in `Names`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Account {
    Wallet { account: u32, asset: u32 },
    Isolated { account: u32, symbol: u32, side: PositionSide },
    Fund(u32),
    Fees(u32),
    Settlement(u32),
    Funding(u32),
    External(u32),
}

impl Account {
    pub fn name(&self, names: &Names) -> String {
        let mut out = String::new();
        self.push_name(names, &mut out);
        out
    }

    /// The name appended to `out` (no allocation of its own).
    pub fn push_name(&self, names: &Names, out: &mut String) {
        out.push_str(self.parts().0);
        self.push_rest(names, out);
    }

    /// The name after its kind appended to `out`; returns the kind.
    fn push_rest(&self, names: &Names, out: &mut String) -> &'static str {
        let (kind, first, second) = self.parts();
        out.push_str(names.name(first));
        if let Some(second) = second {
            out.push(':');
            out.push_str(names.name(second));
        }
        if let Some(side) = self.side_suffix() {
            out.push(':');
            out.push_str(side);
        }
        kind
    }

    /// The name as a JSON string appended to `out`: what json::write_string writes of `name`, written from its parts
    /// (a posting names two accounts: no name is put together first).
    pub fn write_json_name(&self, names: &Names, out: &mut Vec<u8>) {
        let (kind, first, second) = self.parts();
        out.push(b'"');
        out.extend_from_slice(kind.as_bytes()); // the kinds and sides need no escape
        out.extend_from_slice(names.json_body(first));
        if let Some(second) = second {
            out.push(b':');
            out.extend_from_slice(names.json_body(second));
        }
        if let Some(side) = self.side_suffix() {
            out.push(b':');
            out.extend_from_slice(side.as_bytes());
        }
        out.push(b'"');
    }

    /// The kinds of names (with their colons) in the order their names sort: no kind's text begins another's, so
    /// names sort by kind first, then by the rest of the name.
    pub const KINDS: [&'static str; 7] = ["external:", "fees:", "fund:", "funding:", "isolated:", "settlement:", "wallet:"];

    /// Its kind's place in KINDS, with the rest of its name (after the kind) appended to `out`: names sort as these
    /// pairs do.
    pub fn sort_parts(&self, names: &Names, out: &mut String) -> u8 {
        let kind = self.push_rest(names, out);
        Account::KINDS.iter().position(|known| *known == kind).expect("a kind of KINDS") as u8
    }

    /// The name's kind (with its colon) and the ids it names.
    fn parts(&self) -> (&'static str, u32, Option<u32>) {
        match *self {
            Account::Wallet { account, asset } => ("wallet:", account, Some(asset)),
            Account::Isolated { account, symbol, .. } => ("isolated:", account, Some(symbol)),
            Account::Fund(fund) => ("fund:", fund, None),
            Account::Fees(asset) => ("fees:", asset, None),
            Account::Settlement(symbol) => ("settlement:", symbol, None),
            Account::Funding(symbol) => ("funding:", symbol, None),
            Account::External(asset) => ("external:", asset, None),
        }
    }

    /// A hint, changing nothing: what `write_json_name` reads of `names` brought into the cache
    /// (Names::prefetch_json_body).
    pub fn prefetch_json_name(&self, names: &Names, body: bool) {
        let (_, first, second) = self.parts();
        names.prefetch_json_body(first, body);
        if let Some(second) = second {
            names.prefetch_json_body(second, body);
        }
    }

    /// A hedge side's isolated margin ends in its side (`:long`, `:short`).
    fn side_suffix(&self) -> Option<&'static str> {
        match *self {
            Account::Isolated { side: side @ (PositionSide::Long | PositionSide::Short), .. } => Some(side.name()),
            _ => None,
        }
    }
}

/// Balances at the money scale (1e-8) in 256 bits (docs/design.md section 9.3). Each account's wallet in the asset it
/// first held sits in a dense array by account id (most accounts hold one asset: the wallet a record names is found
/// without hashing, in one place in memory); every other balance in a map.
#[derive(Default, Clone, Debug)]
pub struct Ledger {
    balances: HashMap<Account, I256>,
    wallets: Vec<WalletSlot>,
    /// owners of the wallets and isolated margins posted to since the ADL index last looked
    pub changed: Changed,
}

/// A wallet in the dense array: `held` once it has a balance (zero included), then for good.
#[derive(Clone, Copy, Debug)]
struct WalletSlot {
    account: Account,
    held: bool,
    balance: I256,
}

const EMPTY_SLOT: WalletSlot = WalletSlot { account: Account::External(u32::MAX), held: false, balance: I256::ZERO };

impl Ledger {
    /// The dense slot of a wallet: its own, or the free slot of its account (None: another asset holds the slot, or
    /// not a wallet).
    fn slot(&self, account: Account) -> Option<&WalletSlot> {
        let Account::Wallet { account: owner, .. } = account else { return None };
        self.wallets.get(owner as usize).filter(|slot| slot.held && slot.account == account)
    }

    /// The balance of `account` to change, created at zero: in the dense slot when it is the account's first wallet
    /// (or its slot is free), else in the map.
    fn entry(&mut self, account: Account) -> &mut I256 {
        if let Account::Wallet { account: owner, .. } = account {
            let at = owner as usize;
            if at >= self.wallets.len() {
                self.wallets.resize(at + 1, EMPTY_SLOT);
            }
            let slot = &mut self.wallets[at];
            if !slot.held {
                *slot = WalletSlot { account, held: true, balance: I256::ZERO };
            }
            if slot.account == account {
                return &mut self.wallets[at].balance;
            }
        }
        self.balances.entry(account).or_insert(I256::ZERO)
    }

    /// A hint, changing nothing: the dense slot of the account's first wallet brought into the cache
    /// (crate::engine::Engine::prefetch_account).
    pub fn prefetch_wallet(&self, owner: u32) {
        if let Some(slot) = self.wallets.get(owner as usize) {
            crate::idtable::prefetch_line(std::ptr::from_ref(slot).cast());
        }
    }

    pub fn balance(&self, account: Account) -> I256 {
        match self.slot(account) {
            Some(slot) => slot.balance,
            None => self.balances.get(&account).copied().unwrap_or(I256::ZERO),
        }
    }

    /// Whether the account has a balance, zero included (it was posted to).
    pub fn holds(&self, account: Account) -> bool {
        self.slot(account).is_some() || self.balances.contains_key(&account)
    }

    /// Move `amount` (money, 1e-8) from `source` to `destination`; a negative amount moves the other way. The
    /// balances of both after it (a zero amount: none moved, the balances as they are).
    pub fn post(&mut self, source: Account, destination: Account, amount: impl Into<I256>) -> (I256, I256) {
        let amount: I256 = amount.into();
        if amount == 0 {
            return (self.balance(source), self.balance(destination));
        }
        for account in [source, destination] {
            if let Account::Wallet { account, .. } | Account::Isolated { account, .. } = account {
                self.changed.mark(account);
            }
        }
        let from = self.entry(source);
        *from = sub(*from, amount);
        let from_after = *from;
        let to = self.entry(destination);
        *to = add(*to, amount);
        let to_after = *to;
        // docs/design.md section 9.3: no reachable balance comes near 10^68 units; one that does is a bug
        let bound = crate::numbers::pow10(68 + crate::numbers::S8);
        assert!(from_after.abs() < bound && to_after.abs() < bound, "a posting takes a balance beyond the bound 10^68");
        (from_after, to_after)
    }

    /// Every non-zero balance (in no particular order).
    pub fn balances(&self) -> impl Iterator<Item = (&Account, &I256)> {
        self.all_balances().filter(|(_, balance)| **balance != I256::ZERO)
    }

    /// Every balance the ledger holds, zero ones included (an account whose postings cancelled out), in no particular
    /// order.
    pub fn all_balances(&self) -> impl Iterator<Item = (&Account, &I256)> {
        let wallets = self.wallets.iter().filter(|slot| slot.held).map(|slot| (&slot.account, &slot.balance));
        wallets.chain(self.balances.iter())
    }

    pub fn set(&mut self, account: Account, balance: I256) {
        *self.entry(account) = balance;
    }

    /// The sum of every balance: in 256 bits while the partial sums fit, else in 512 (each balance is below 10^68,
    /// a sum of many need not be).
    pub fn sum(&self) -> Wide {
        let mut total = I256::ZERO;
        for (_, balance) in self.all_balances() {
            match total.checked_add(*balance) {
                Some(sum) => total = sum,
                None => {
                    return self.all_balances().fold(Wide::ZERO, |total, (_, balance)| wadd(total, wide256(*balance)))
                }
            }
        }
        wide256(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_short_and_long_get_one_id_each() {
        let mut names = Names::default();
        let long = "an-account-id-longer-than-a-key-holds-inside";
        let words = ["u", "", "acct-012656", "exactly-twenty-two-byt", "exactly-twenty-three-by", long, "é€"];
        let ids: Vec<u32> = words.iter().map(|word| names.id(word)).collect();
        assert_eq!(ids, (0..words.len() as u32).collect::<Vec<_>>());
        for (word, id) in words.iter().zip(&ids) {
            assert_eq!((names.id(word), names.find(word), names.name(*id)), (*id, Some(*id), *word));
        }
        assert_eq!(names.find("acct-01265"), None);
        assert_eq!(names.len(), words.len());
    }

    #[test]
    fn a_names_json_body_is_its_escaped_text() {
        let mut names = Names::default();
        let words = ["", "acct-1", "a\"quote", "back\\slash", "tab\tand\u{1}", "é€", "", "acct-1", "x"];
        for word in words {
            let id = names.id(word);
            let mut escaped = Vec::new();
            write_string_body(&mut escaped, word);
            assert_eq!(names.json_body(id), escaped.as_slice(), "{word:?}");
        }
        assert_eq!(names.json_body(names.find("a\"quote").unwrap()), b"a\\\"quote");
    }
    use crate::numbers::{pow10, text_512, S8};

    #[test]
    fn a_wallet_is_the_same_balance_in_its_slot_or_in_the_map() {
        let (alice, bob, usdt, usdc) = (3, 9, 1, 2);
        let wallet = |account, asset| Account::Wallet { account, asset };
        let mut ledger = Ledger::default();
        assert!(!ledger.holds(wallet(alice, usdt)) && ledger.balance(wallet(alice, usdt)) == 0);
        ledger.post(Account::External(usdt), wallet(alice, usdt), 500); // alice's slot: USDT
        ledger.post(Account::External(usdc), wallet(alice, usdc), 70); // her second asset: in the map
        ledger.post(wallet(alice, usdc), wallet(bob, usdc), 30); // bob's slot: USDC
        let after = ledger.post(wallet(alice, usdt), wallet(alice, usdt), 11); // to itself: nothing moves
        assert_eq!(after, (I256::from(489), I256::from(500)));
        ledger.post(wallet(bob, usdc), Account::Fees(usdc), 30); // bob's wallet back to zero: still held
        assert_eq!([ledger.balance(wallet(alice, usdt)), ledger.balance(wallet(alice, usdc)),
                    ledger.balance(wallet(bob, usdc)), ledger.balance(wallet(bob, usdt))],
                   [I256::from(500), I256::from(40), I256::ZERO, I256::ZERO]);
        assert!(ledger.holds(wallet(bob, usdc)) && !ledger.holds(wallet(bob, usdt)));
        let mut all: Vec<(Account, I256)> = ledger.all_balances().map(|(a, b)| (*a, *b)).collect();
        all.sort_by_key(|(account, _)| format!("{account:?}"));
        assert_eq!(all.len(), 6); // two externals, fees, alice's two wallets, bob's zero wallet
        assert_eq!(ledger.balances().count(), 5);
        assert_eq!(ledger.sum(), Wide::ZERO);
        // restored in another order (a snapshot's balances are sorted by name): the same balances
        let mut restored = Ledger::default();
        for (account, balance) in all.iter().rev() {
            restored.set(*account, *balance);
        }
        let mut again: Vec<(Account, I256)> = restored.all_balances().map(|(a, b)| (*a, *b)).collect();
        again.sort_by_key(|(account, _)| format!("{account:?}"));
        assert_eq!(again, all);
    }

    #[test]
    fn a_sum_of_balances_near_the_bound_passes_256_bits_exactly() {
        // six balances of almost 10^68 each: partial sums past 2^255 in some orders; the total is exact in every one
        let mut ledger = Ledger::default();
        let near = pow10(76) - I256::ONE;
        for fund in 0..6 {
            ledger.set(Account::Fund(fund), near);
        }
        ledger.set(Account::External(0), -(near * 5));
        assert_eq!(text_512(ledger.sum(), S8), "99999999999999999999999999999999999999999999999999999999999999999999.99999999");
        ledger.set(Account::External(1), -near);
        assert_eq!(ledger.sum(), Wide::ZERO);
    }
}
