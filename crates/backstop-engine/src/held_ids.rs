//! The service's held identities (docs/design.md §4.1), as backstop.pipeline.held_ids.ServiceIds decides them:
//! PostgreSQL holds every one (applied_ids); memory holds a blocked Bloom filter over them and the identities applied
//! here since. Before a batch is applied, its identities that neither rules out are looked up in one query
//! (`unresolved`, then `resolve`), so the engine is given exactly the held ones among its records (`answers`).
//! Pure: the caller does the lookups. A batch's identities are computed from its records here (`batch_keys`), so
//! no record becomes a Python object on their way.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::admission::{held_rows, pack_row, unpack_row, HELD_ROW_BYTES};
use crate::content::{admits, key_digest, Admits};
use crate::idtable::{Held, Key};
use crate::processor::{input_type, Consumed};
use crate::wire;

/// Identities in the first filter segment; each next one is twice as large (held_ids.FIRST_SEGMENT).
pub const FIRST_SEGMENT: usize = 1 << 20;
/// Recent identities kept before those already committed are dropped (held_ids.RECENT_KEEP).
pub const RECENT_KEEP: usize = 1 << 17;
const KEY_BYTES: usize = 16;
// As backstop.core.idstore: 16 bits per identity when a segment is full; 6 bits set in the one word a key falls in.
const BITS_PER_KEY: usize = 16;
const BITS_PER_WORD: usize = 64;
const BITS_SET: u32 = 6;

/// One blocked Bloom filter (backstop.core.idstore.BloomFilter, the same bits): a key sets BITS_SET bits of one
/// 64-bit word, the word chosen by the high half modulo the word count, the bits by the low half's 6-bit groups.
#[derive(Clone, Debug)]
struct Segment {
    words: Vec<u64>,
    capacity: usize,
    count: usize,
}

impl Segment {
    fn new(capacity: usize) -> Segment {
        let capacity = capacity.max(BITS_PER_WORD);
        Segment { words: vec![0; capacity * BITS_PER_KEY / BITS_PER_WORD], capacity, count: 0 }
    }

    fn mask(low: u64) -> u64 {
        (0..BITS_SET).fold(0, |mask, group| mask | 1 << ((low >> (6 * group)) & 63))
    }

    fn word(&self, key: Key) -> usize {
        (key.high % self.words.len() as u64) as usize
    }

    fn might(&self, key: Key) -> bool {
        let mask = Self::mask(key.low);
        self.words[self.word(key)] & mask == mask
    }

    fn add(&mut self, key: Key) {
        let word = self.word(key);
        self.words[word] |= Self::mask(key.low);
        self.count += 1;
    }
}

#[derive(Clone, Debug)]
pub struct HeldIds {
    segments: Vec<Segment>,
    /// applied by this process; dropped once committed (past RECENT_KEEP)
    recent: FxHashMap<Key, Held>,
    /// looked up for the batch being applied: held, or not (None)
    resolved: FxHashMap<Key, Option<Held>>,
    /// applied since the last drain: HELD_ROW rows for applied_ids
    unsaved: Vec<u8>,
    count: u64,
}

impl HeldIds {
    /// `expected`: the identities PostgreSQL holds, about to be loaded.
    pub fn new(expected: usize) -> HeldIds {
        HeldIds {
            segments: vec![Segment::new(FIRST_SEGMENT.max(expected + expected / 4))],
            recent: FxHashMap::default(),
            resolved: FxHashMap::default(),
            unsaved: Vec::new(),
            count: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the filter.
    pub fn nbytes(&self) -> usize {
        self.segments.iter().map(|segment| segment.words.len() * 8).sum()
    }

    /// Concatenated key digests PostgreSQL holds (at start).
    pub fn load(&mut self, keys: &[u8]) -> Result<(), String> {
        let keys = split_keys(keys)?;
        self.filter(&keys);
        self.count += keys.len() as u64;
        Ok(())
    }

    /// Who holds `key`: Err when neither memory rules it out nor it was looked up (a caller's bug).
    pub fn held(&self, key: Key) -> Result<Option<Held>, String> {
        if let Some(held) = self.recent.get(&key) {
            return Ok(Some(*held));
        }
        if let Some(held) = self.resolved.get(&key) {
            return Ok(*held);
        }
        if self.segments.iter().any(|segment| segment.might(key)) {
            let hex: String = key.to_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
            return Err(format!("identity digest {hex} was not looked up before its batch was applied"));
        }
        Ok(None)
    }

    pub fn add(&mut self, key: Key, content: u64, seq: u64) {
        self.recent.insert(key, Held { content, seq });
        pack_row(&mut self.unsaved, key, content, seq);
        self.count += 1;
    }

    /// Of a batch's identities, those only PostgreSQL can decide, sorted: not applied here, not ruled out by the
    /// filter.
    pub fn unresolved(&self, keys: &[Key]) -> Vec<Key> {
        let mut asked: Vec<Key> = keys.iter().copied()
            .filter(|key| !self.recent.contains_key(key) && self.segments.iter().any(|segment| segment.might(*key)))
            .collect();
        asked.sort_unstable();
        asked.dedup();
        asked
    }

    /// What PostgreSQL holds of `asked` (HELD_ROW rows of applied_ids): the answers for the next batch.
    pub fn resolve(&mut self, asked: &[Key], found: &[u8]) -> Result<(), String> {
        let mut resolved: FxHashMap<Key, Option<Held>> = asked.iter().map(|key| (*key, None)).collect();
        for row in held_rows(found)? {
            let (key, content, seq) = unpack_row(row);
            resolved.insert(key, Some(Held { content, seq }));
        }
        self.resolved = resolved;
        Ok(())
    }

    /// The held identities among a batch's keys, after `resolve`, as HELD_ROW rows in the order of their first
    /// appearance: what the engine is given with the batch.
    pub fn answers(&self, keys: &[Key]) -> Result<Vec<u8>, String> {
        let mut seen = FxHashSet::default();
        let mut out = Vec::new();
        for key in keys {
            if seen.insert(*key) {
                if let Some(held) = self.held(*key)? {
                    pack_row(&mut out, *key, held.content, held.seq);
                }
            }
        }
        Ok(out)
    }

    /// The identities a batch applied (its HELD_ROW rows): held here as `add` holds them.
    pub fn applied(&mut self, applied: &[u8]) -> Result<(), String> {
        for row in held_rows(applied)? {
            let (key, content, seq) = unpack_row(row);
            self.add(key, content, seq);
        }
        Ok(())
    }

    /// The identities applied since the last drain (HELD_ROW rows), for the batch's transaction; the filter learns
    /// them now.
    pub fn drain(&mut self) -> Vec<u8> {
        let drained = std::mem::take(&mut self.unsaved);
        let keys: Vec<Key> = drained.chunks_exact(HELD_ROW_BYTES).map(|row| unpack_row(row).0).collect();
        self.filter(&keys);
        drained
    }

    /// Everything up to `seq` is in PostgreSQL (and in the filter, since drained): those need not stay recent.
    pub fn committed(&mut self, seq: u64) {
        if self.recent.len() > RECENT_KEEP {
            self.recent.retain(|_, held| held.seq > seq);
        }
    }

    fn filter(&mut self, keys: &[Key]) {
        for key in keys {
            let last = self.segments.last().expect("a segment");
            if last.count >= last.capacity {
                let capacity = 2 * last.capacity;
                self.segments.push(Segment::new(capacity));
            }
            self.segments.last_mut().expect("a segment").add(*key);
        }
    }
}

/// Concatenated 16-byte key digests.
pub fn split_keys(keys: &[u8]) -> Result<Vec<Key>, String> {
    if keys.len() % KEY_BYTES != 0 {
        return Err(format!("key digests of {} bytes: not a whole number of {KEY_BYTES}-byte keys", keys.len()));
    }
    Ok(keys.chunks_exact(KEY_BYTES).map(|key| Key::from_bytes(key.try_into().expect("16 bytes"))).collect())
}

/// The key digests of the identities a consumed batch's records carry, in order: those of every record that
/// decodes as its topic's type (one that does not is dead-lettered, and no identity of it is asked about).
pub fn batch_keys(records: &[Consumed<'_>], prefix: &str) -> Vec<Key> {
    let mut scratch = Vec::new();
    records.iter().filter_map(|record| {
        let record_type = input_type(record.topic, prefix)?;
        let decoded = wire::decode_consumed_record(record.value, record_type, record.topic).ok()?;
        match admits(&decoded, &mut scratch) {  // Digests::of's key, without the content digest
            Admits::Identity(_) => Some(key_digest(&scratch)),
            Admits::Subject(..) => None,
        }
    }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        Key { high: n.wrapping_mul(0x9e37_79b9_7f4a_7c15), low: n.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) }
    }

    fn row(key: Key, content: u64, seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        pack_row(&mut out, key, content, seq);
        out
    }

    #[test]
    fn a_loaded_identity_must_be_looked_up_and_then_is_answered_as_postgres_holds_it() {
        let mut ids = HeldIds::new(0);
        ids.load(&key(1).to_bytes()).unwrap();
        assert_eq!(ids.len(), 1);
        assert!(ids.held(key(1)).is_err(), "the filter cannot rule it out");
        let asked = ids.unresolved(&[key(1), key(2), key(1)]);
        assert_eq!(asked, vec![key(1)], "a new identity is ruled out by the filter, a repeated one asked once");
        ids.resolve(&asked, &row(key(1), 7, 3)).unwrap();
        assert_eq!(ids.answers(&[key(2), key(1), key(1)]).unwrap(), row(key(1), 7, 3));
        assert_eq!(ids.held(key(2)).unwrap(), None);
    }

    #[test]
    fn applied_identities_answer_from_memory_until_committed_and_drain_once() {
        let mut ids = HeldIds::new(0);
        ids.applied(&[row(key(5), 1, 10), row(key(6), 2, 11)].concat()).unwrap();
        assert_eq!(ids.unresolved(&[key(5), key(6)]), Vec::<Key>::new(), "recent: no lookup");
        assert_eq!(ids.held(key(6)).unwrap(), Some(Held { content: 2, seq: 11 }));
        assert_eq!(ids.drain(), [row(key(5), 1, 10), row(key(6), 2, 11)].concat());
        assert!(ids.drain().is_empty());
        ids.committed(11); // below RECENT_KEEP: kept, still answered from memory
        assert_eq!(ids.held(key(5)).unwrap(), Some(Held { content: 1, seq: 10 }));
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn past_recent_keep_committed_identities_leave_memory_and_are_asked_again() {
        let mut ids = HeldIds::new(0);
        let rows: Vec<u8> = (0..=RECENT_KEEP as u64).flat_map(|n| row(key(n), n, n + 1)).collect();
        ids.applied(&rows).unwrap();
        ids.drain();
        ids.committed(RECENT_KEEP as u64); // all but the last are committed
        assert_eq!(ids.unresolved(&[key(0), key(RECENT_KEEP as u64)]), vec![key(0)]);
    }

    #[test]
    fn a_full_segment_is_followed_by_one_twice_as_large_and_no_key_is_lost() {
        let mut ids = HeldIds::new(0);
        let keys: Vec<u8> = (0..(FIRST_SEGMENT as u64 + 10)).flat_map(|n| key(n).to_bytes()).collect();
        ids.load(&keys).unwrap();
        assert_eq!(ids.segments.len(), 2);
        assert_eq!(ids.segments[1].capacity, 2 * FIRST_SEGMENT);
        assert_eq!(ids.nbytes(), 3 * FIRST_SEGMENT * BITS_PER_KEY / 8);
        assert!((0..(FIRST_SEGMENT as u64 + 10)).all(|n| ids.held(key(n)).is_err()), "no false negative");
    }

    #[test]
    fn ragged_input_is_refused_with_its_length() {
        let mut ids = HeldIds::new(0);
        assert!(ids.load(&[0; 17]).unwrap_err().contains("17 bytes"));
        assert!(ids.applied(&[0; 31]).unwrap_err().contains("31 bytes"));
        assert!(ids.resolve(&[], &[0; 33]).is_err());
    }

    #[test]
    fn a_batch_s_keys_are_those_of_its_records_that_decode() {
        let fill = br#"{"type":"fill","ts":1,"fill_id":"f-1","account_id":"u","symbol":"X","side":"buy","qty":"1","price":"2","fee":"0","margin_mode":"cross","leverage":"10"}"#;
        let mark = br#"{"type":"mark","ts":1,"symbol":"X","price":"2"}"#;
        let consumed = |topic: &'static str, value: &'static [u8]| Consumed {
            topic, partition: 0, offset: 0, value: Some(value), quarantined: None,
        };
        let records = [consumed("p.fills", fill), consumed("p.marks", mark), consumed("p.fills", b"{"),
                       consumed("p.other", fill), consumed("p.fills", fill)];
        let expected = crate::content::key_digest(b"fill:f-1");
        assert_eq!(batch_keys(&records, "p."), vec![expected, expected]);
    }
}
