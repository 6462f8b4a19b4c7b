//! Held identities in memory at a fixed size each (docs/design.md §4.1): an identity is its 16-byte key digest K
//! held with its 8-byte content digest C and the 8-byte seq of the record that holds it, 32 bytes in one slot.
//!
//! The table is an ordered hash table: K is uniform already (it is a SHA-256 digest), so a key's home slot is read
//! off its bits in order (multiply-shift, monotone in K), and linear probing keeps every run of slots sorted by K.
//! A lookup reads from the home slot and stops at the first empty slot or larger key (one or two cache lines); the
//! table grows by a fifth at nine tenths full, moving each entry once in one forward pass; iterating the slots in
//! order yields the identities sorted by K, which is the identity file's one form. 256 shards, chosen by K's
//! first byte, grow on their own, so a growth copies a 256th of the table. Slots per identity: between 1.11 and
//! 1.39 (35 to 45 bytes), measured by benchmarks/idstore.py.
//!
//! The identity file (`snapshot-SEQ.ids`, backstop.core.idstore writes the same bytes): `BKSTIDS1`, a run count of
//! 1 and the run's length n as little-endian u64, then n high halves of K, n low halves, n C and n seqs, each a
//! little-endian u64 (K's halves and C read big-endian), sorted by K, strictly increasing.

use sha2::{Digest, Sha256};

pub const FILE_MAGIC: &[u8; 8] = b"BKSTIDS1";
/// A length beyond any journal: a damaged header, not an allocation to try (backstop.core.idstore.MAX_FILE_IDS).
pub const MAX_FILE_IDS: u64 = 1 << 40;
const SHARD_BITS: u32 = 8;
const SHARDS: usize = 1 << SHARD_BITS;
const MIN_HOME: usize = 8;

/// An identity's key digest as two integers, the first 8 bytes and the last 8 read big-endian: ordering them
/// orders the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub high: u64,
    pub low: u64,
}

impl Key {
    pub fn from_bytes(bytes: &[u8; 16]) -> Key {
        let (high, low) = bytes.split_at(8);
        Key { high: u64::from_be_bytes(high.try_into().expect("8 bytes")),
              low: u64::from_be_bytes(low.try_into().expect("8 bytes")) }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.high.to_be_bytes());
        out[8..].copy_from_slice(&self.low.to_be_bytes());
        out
    }
}

/// Who holds an identity: the content digest (its 8 bytes read big-endian) and the seq of the record applied with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub content: u64,
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
struct Slot {
    high: u64,
    low: u64,
    content: u64,
    /// 0: an empty slot (a held identity's seq is at least 1)
    seq: u64,
}

impl Slot {
    fn key(&self) -> Key {
        Key { high: self.high, low: self.low }
    }
    fn occupied(&self) -> bool {
        self.seq != 0
    }
}

#[derive(Clone, Debug)]
struct Shard {
    /// Home slots 0..home, then overflow slots the last runs spilled into.
    slots: Vec<Slot>,
    home: usize,
    len: usize,
}

impl Shard {
    fn with_home(home: usize) -> Shard {
        Shard { slots: Self::empty_slots(home), home, len: 0 }
    }

    /// `home` empty slots, with room for the few a last run spills past them (a Vec that doubled would waste half).
    fn empty_slots(home: usize) -> Vec<Slot> {
        let mut slots = Vec::with_capacity(home + Self::spill(home));
        slots.resize(home, Slot::default());
        slots
    }

    fn spill(home: usize) -> usize {
        home / 64 + 8
    }

    /// One more slot at the end, growing the Vec by a little, never by doubling.
    fn push_empty(&mut self) {
        if self.slots.len() == self.slots.capacity() {
            self.slots.reserve_exact(Self::spill(self.home));
        }
        self.slots.push(Slot::default());
    }

    fn home_of(home: usize, high: u64) -> usize {
        (((high << SHARD_BITS) as u128 * home as u128) >> 64) as usize
    }

    /// Ok: the slot holding `key`; Err: where it goes (the first empty slot or larger key from its home on).
    fn find(&self, key: Key) -> Result<usize, usize> {
        let mut index = Self::home_of(self.home, key.high);
        while let Some(slot) = self.slots.get(index) {
            if !slot.occupied() || slot.key() > key {
                return Err(index);
            }
            if slot.key() == key {
                return Ok(index);
            }
            index += 1;
        }
        Err(index)
    }

    fn insert(&mut self, slot: Slot) {
        let index = match self.find(slot.key()) {
            Ok(index) => {
                self.slots[index] = slot;
                return;
            }
            Err(index) => index,
        };
        // shift the rest of the run one slot on, into its first empty slot (or a new one at the end)
        let empty = self.slots[index..].iter().position(|s| !s.occupied()).map(|offset| index + offset);
        let end = match empty {
            Some(end) => end,
            None => {
                self.push_empty();
                self.slots.len() - 1
            }
        };
        self.slots.copy_within(index..end, index + 1);
        self.slots[index] = slot;
        self.len += 1;
        if self.len * 10 > self.home * 9 {
            self.rebuild((self.home + self.home / 4).max(self.home + 1));
        }
    }

    /// The same entries over `home` home slots, each at its home or right after the one before.
    fn rebuild(&mut self, home: usize) {
        let old = std::mem::replace(&mut self.slots, Self::empty_slots(home));
        self.home = home;
        self.len = 0;
        let mut next = 0;
        for slot in old.iter().filter(|s| s.occupied()) {
            next = self.place_at_or_after(*slot, next);
        }
    }

    /// Put `slot`, whose key is larger than every key held, at its home or at `next` (the slot after the last
    /// held) if that is further; returns the slot after it.
    fn place_at_or_after(&mut self, slot: Slot, next: usize) -> usize {
        let at = Self::home_of(self.home, slot.high).max(next);
        while at >= self.slots.len() {
            self.push_empty();
        }
        self.slots[at] = slot;
        self.len += 1;
        at + 1
    }
}

/// Every held identity, by key digest.
#[derive(Clone, Debug)]
pub struct IdTable {
    shards: Vec<Shard>,
    len: u64,
}

impl Default for IdTable {
    fn default() -> Self {
        IdTable { shards: vec![Shard::with_home(MIN_HOME); SHARDS], len: 0 }
    }
}

/// A prefetch of the cache line at `address` (none where the CPU has no such instruction here).
#[inline]
pub(crate) fn prefetch_line(address: *const i8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads no byte into the program and faults on no address
    unsafe {
        std::arch::x86_64::_mm_prefetch(address, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

fn shard_of(key: Key) -> usize {
    (key.high >> (64 - SHARD_BITS)) as usize
}

impl IdTable {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: Key) -> Option<Held> {
        let shard = &self.shards[shard_of(key)];
        shard.find(key).ok().map(|index| {
            let slot = &shard.slots[index];
            Held { content: slot.content, seq: slot.seq }
        })
    }

    /// A hint, changing nothing: have the CPU bring the slot where `key`'s lookup starts into its cache, so that the
    /// lookup of a record a little later (the decode stage gives every record's key ahead of the rules) does not
    /// wait for memory. A table of millions of identities is far larger than the caches.
    pub fn prefetch(&self, key: Key) {
        let shard = &self.shards[shard_of(key)];
        if let Some(slot) = shard.slots.get(Shard::home_of(shard.home, key.high)) {
            prefetch_line(std::ptr::from_ref(slot).cast());
        }
    }

    /// Hold `key` (a key held already takes the new content and seq).
    pub fn insert(&mut self, key: Key, held: Held) {
        assert!(held.seq >= 1, "an identity held by seq 0");
        let shard = &mut self.shards[shard_of(key)];
        let before = shard.len;
        shard.insert(Slot { high: key.high, low: key.low, content: held.content, seq: held.seq });
        self.len += (shard.len - before) as u64;
    }

    /// Forget every identity (keeping the memory).
    pub fn clear(&mut self) {
        for shard in &mut self.shards {
            shard.slots.iter_mut().for_each(|slot| *slot = Slot::default());
            shard.len = 0;
        }
        self.len = 0;
    }

    /// Memory of the slots.
    pub fn nbytes(&self) -> u64 {
        self.shards.iter().map(|shard| (shard.slots.capacity() * std::mem::size_of::<Slot>()) as u64).sum()
    }

    /// Every identity with its holder, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (Key, Held)> + '_ {
        self.shards.iter().flat_map(|shard| shard.slots.iter()).filter(|slot| slot.occupied())
            .map(|slot| (slot.key(), Held { content: slot.content, seq: slot.seq }))
    }

    // ------------------------------------------------------------------ the identity file

    /// The identity file's length for `count` identities.
    pub fn file_len(count: u64) -> usize {
        FILE_MAGIC.len() + 16 + 32 * count as usize
    }

    /// How many identities are held by a seq at most `upto` (those the file of a snapshot at `upto` holds).
    pub fn count_upto(&self, upto: u64) -> u64 {
        if self.iter().all(|(_, held)| held.seq <= upto) { self.len } else {
            self.iter().filter(|(_, held)| held.seq <= upto).count() as u64
        }
    }

    /// The identity file of the identities held by a seq at most `upto`, in pieces handed to `sink` in order.
    pub fn write_file(&self, upto: u64, count: u64, mut sink: impl FnMut(&[u8])) {
        sink(FILE_MAGIC);
        sink(&1u64.to_le_bytes());
        sink(&count.to_le_bytes());
        let mut buffer: Vec<u8> = Vec::with_capacity(1 << 16);
        let columns: [fn(&Slot) -> u64; 4] = [|s| s.high, |s| s.low, |s| s.content, |s| s.seq];
        for column in columns {
            for slot in self.shards.iter().flat_map(|shard| shard.slots.iter()) {
                if slot.occupied() && slot.seq <= upto {
                    buffer.extend_from_slice(&column(slot).to_le_bytes());
                    if buffer.len() >= 1 << 16 {
                        sink(&buffer);
                        buffer.clear();
                    }
                }
            }
        }
        sink(&buffer);
    }

    /// The identity file's bytes (tests, and a snapshot's restore in Rust alone).
    pub fn file_bytes(&self, upto: u64) -> Vec<u8> {
        let count = self.count_upto(upto);
        let mut out = Vec::with_capacity(Self::file_len(count));
        self.write_file(upto, count, |piece| out.extend_from_slice(piece));
        out
    }

    /// Lowercase hex SHA-256 of the identity file of the identities held by a seq at most `upto`, and their count.
    pub fn file_sha256(&self, upto: u64) -> (String, u64) {
        let count = self.count_upto(upto);
        let mut hasher = Sha256::new();
        self.write_file(upto, count, |piece| hasher.update(piece));
        let digest = hasher.finalize();
        (digest.iter().map(|byte| format!("{byte:02x}")).collect(), count)
    }

    /// The table an identity file holds; Err: why it is not one, as backstop.core.idstore.IdStore.read says.
    pub fn read_file(data: &[u8]) -> Result<IdTable, String> {
        if data.len() < FILE_MAGIC.len() || &data[..FILE_MAGIC.len()] != FILE_MAGIC {
            return Err("not an identity file".into());
        }
        let word = |index: usize| -> Option<u64> {
            let start = FILE_MAGIC.len() + 8 * index;
            data.get(start..start + 8).map(|bytes| u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
        };
        let (Some(runs), Some(length)) = (word(0), word(1)) else { return Err("truncated identity file".into()) };
        if runs != 1 {
            return Err(format!("an identity file holds one run, not {runs}"));
        }
        if length > MAX_FILE_IDS {
            return Err(format!("an identity file of {length} identities"));
        }
        let count = length as usize;
        if data.len() < Self::file_len(length) {
            return Err("truncated identity file".into());
        }
        let column = |which: usize, index: usize| word(2 + which * count + index).expect("length checked");
        let mut previous: Option<Key> = None;
        for index in 0..count {
            let key = Key { high: column(0, index), low: column(1, index) };
            if previous.is_some_and(|previous| previous >= key) {
                return Err("identity file with keys out of order or held twice".into());
            }
            previous = Some(key);
        }
        if (0..count).any(|index| column(3, index) < 1) {
            return Err("identity file with a seq below 1".into());
        }
        if data.len() > Self::file_len(length) {
            return Err("identity file longer than its run".into());
        }
        // sorted already: each shard is laid out in one pass, at a load of about four fifths
        let mut per_shard = vec![0usize; SHARDS];
        for index in 0..count {
            per_shard[shard_of(Key { high: column(0, index), low: 0 })] += 1;
        }
        let mut table = IdTable { shards: per_shard.iter().map(|&n| Shard::with_home((n + n / 4 + 1).max(MIN_HOME)))
                                                       .collect(), len: length };
        let mut next = vec![0usize; SHARDS];
        for index in 0..count {
            let slot = Slot { high: column(0, index), low: column(1, index), content: column(2, index),
                              seq: column(3, index) };
            let which = shard_of(slot.key());
            next[which] = table.shards[which].place_at_or_after(slot, next[which]);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform keys, as SHA-256 digests are (SplitMix64).
    fn keys(count: usize, salt: u64) -> Vec<Key> {
        let mut state = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..count).map(|_| Key { high: next(), low: next() }).collect()
    }

    #[test]
    fn every_identity_is_found_and_nothing_else() {
        let mut table = IdTable::default();
        let held = keys(200_000, 1);
        for (seq, key) in held.iter().enumerate() {
            table.insert(*key, Held { content: key.low ^ 7, seq: seq as u64 + 1 });
        }
        assert_eq!(table.len(), held.len() as u64);
        for (seq, key) in held.iter().enumerate() {
            assert_eq!(table.get(*key), Some(Held { content: key.low ^ 7, seq: seq as u64 + 1 }));
        }
        assert!(keys(50_000, 2).iter().all(|key| table.get(*key).is_none()));
        let sorted: Vec<Key> = table.iter().map(|(key, _)| key).collect();
        let mut expected = held.clone();
        expected.sort();
        assert_eq!(sorted, expected);
        let per_id = table.nbytes() as f64 / held.len() as f64;
        assert!((32.0..48.0).contains(&per_id), "{per_id} bytes per identity");
    }

    #[test]
    fn keys_that_share_a_home_and_high_halves_stay_in_order() {
        let mut table = IdTable::default();
        let mut held = Vec::new();
        for index in 0..500u64 {
            let key = Key { high: (index % 3) << 40, low: u64::MAX - index };
            held.push(key);
            table.insert(key, Held { content: index, seq: index + 1 });
        }
        held.sort();
        assert_eq!(table.iter().map(|(key, _)| key).collect::<Vec<_>>(), held);
        assert!(held.iter().all(|key| table.get(*key).is_some()));
        assert!(table.get(Key { high: 1 << 40, low: 0 }).is_none());
    }

    #[test]
    fn the_file_round_trips_and_a_damaged_one_is_named() {
        let mut table = IdTable::default();
        for (seq, key) in keys(5000, 3).iter().enumerate() {
            table.insert(*key, Held { content: key.high, seq: seq as u64 + 1 });
        }
        let data = table.file_bytes(u64::MAX);
        let read = IdTable::read_file(&data).unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), table.iter().collect::<Vec<_>>());
        assert_eq!(read.file_bytes(u64::MAX), data);
        let upto = IdTable::read_file(&table.file_bytes(100)).unwrap();
        assert_eq!(upto.len(), 100);
        assert_eq!(table.file_sha256(u64::MAX).0, crate::canonical::sha256_hex(&data));
        let reason = |bytes: &[u8]| IdTable::read_file(bytes).unwrap_err();
        assert_eq!(reason(&data[..data.len() - 8]), "truncated identity file");
        assert_eq!(reason(&[&data[..], b"\0"].concat()), "identity file longer than its run");
        assert_eq!(reason(&[b"NOTIDS00", &data[8..]].concat()), "not an identity file");
        let mut two_runs = data.clone();
        two_runs[8] = 2;
        assert_eq!(reason(&two_runs), "an identity file holds one run, not 2");
        let mut swapped = data.clone();
        swapped[24..40].copy_from_slice(&[&data[32..40], &data[24..32]].concat());
        assert_eq!(reason(&swapped), "identity file with keys out of order or held twice");
        let empty = IdTable::default().file_bytes(u64::MAX);
        assert_eq!(empty, [&FILE_MAGIC[..], &1u64.to_le_bytes(), &0u64.to_le_bytes()].concat());
        assert!(IdTable::read_file(&empty).unwrap().is_empty());
    }
}
