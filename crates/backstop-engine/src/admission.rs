//! Admission (backstop.core.dedupe and the first steps of backstop.core.engine.Engine.apply, docs/design.md §4.1):
//! whether a record is applied at all. An identity applied once is held for ever: the same content again is a
//! duplicate, other content a `conflicting_duplicate` naming the seq that holds it; a mark or definition equal to
//! the last of its subject is a duplicate; then the journal clock refuses records late or ahead. Only applied
//! records are held, so a refused one can be sent again corrected.
//!
//! Identities are held in memory (an IdTable of every one: replay), or per batch: the caller (the service, which
//! holds them in PostgreSQL) gives with each batch the held identities among its records, and every other identity
//! is not held.

use crate::clock::{JournalClock, SymbolClock, TimeRefusal};
use crate::content::{admits, describe, Admits, Digests, SubjectKind};
use crate::idtable::{Held, IdTable, Key};
use crate::wire::Record;
use rustc_hash::FxHashMap as HashMap;
use sha2::{Digest, Sha256};

/// What an auditor filters dead letters by (backstop.core.errors.RejectionKind; `engine_error` is the service's:
/// a record the engine failed on in an earlier run, dead-lettered when met again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Invalid,
    Rejected,
    Late,
    Ahead,
    ConflictingDuplicate,
    EngineError,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Invalid => "invalid",
            Kind::Rejected => "rejected",
            Kind::Late => "late",
            Kind::Ahead => "ahead",
            Kind::ConflictingDuplicate => "conflicting_duplicate",
            Kind::EngineError => "engine_error",
        }
    }
}

/// Why a record was not applied (nothing changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// the same record was applied before: counted, not a dead letter
    Duplicate,
    Rejected(Kind, String),
}

impl From<(TimeRefusal, String)> for Refusal {
    fn from((kind, reason): (TimeRefusal, String)) -> Refusal {
        Refusal::Rejected(if kind == TimeRefusal::Ahead { Kind::Ahead } else { Kind::Late }, reason)
    }
}

/// What applying an admitted record will hold.
#[derive(Clone, Copy, Debug)]
pub struct Admitted<'r> {
    held: Holds<'r>,
    content: u64,
}

#[derive(Clone, Copy, Debug)]
enum Holds<'r> {
    Identity(Key),
    Subject(SubjectKind, &'r str),
}

pub const GENESIS: [u8; 32] = [0; 32];

#[derive(Clone, Debug, Default)]
pub struct Admission {
    /// every held identity, or (per batch) the batch's held ones and those it applied
    pub ids: IdTable,
    pub per_batch: bool,
    /// identities held, and H, the chain over them in seq order
    pub count: u64,
    pub head: [u8; 32],
    /// per subject kind (fund, instrument, mark): each subject's last content digest
    pub latest: [HashMap<Box<str>, u64>; 3],
    pub clock: JournalClock,
    pub mark_clock: SymbolClock,
    pub funding_clock: SymbolClock,
    /// the identity the last applied record holds, with its content digest (a batch's rows for applied_ids)
    pub last_held: Option<(Key, u64)>,
    identity: Vec<u8>,
    document: Vec<u8>,
}

impl Admission {
    pub fn new(per_batch: bool) -> Admission {
        Admission { per_batch, ..Admission::default() }
    }

    /// Steps 1 and 2: Err for a record held already; else what applying it at `seq` will hold. An identity held by
    /// a later seq (a rebuild re-applying rows whose identities the caller holds by those very seqs) is not held.
    pub fn admit<'r>(&mut self, record: &'r Record<'_>, seq: u64) -> Result<Admitted<'r>, Refusal> {
        let digests = Digests::of(record, &mut self.document);
        self.admit_digested(record, digests, seq)
    }

    /// `admit` with the record's digests computed already (`Digests::of` of this record).
    pub fn admit_digested<'r>(&mut self, record: &'r Record<'_>, digests: Digests, seq: u64)
                              -> Result<Admitted<'r>, Refusal> {
        let content = digests.content;
        self.last_held = None;
        match digests.key {
            None => {
                let Admits::Subject(kind, name) = admits(record, &mut self.identity) else {
                    unreachable!("a record without a key digest has a subject")
                };
                if self.latest[kind as usize].get(name) == Some(&content) {
                    return Err(Refusal::Duplicate);
                }
                Ok(Admitted { held: Holds::Subject(kind, name), content })
            }
            Some(key) => {
                // the identity's text, for the reason only (rare: the digests stand for it otherwise)
                let named = |identity: &mut Vec<u8>| {
                    admits(record, identity);
                    describe(identity)
                };
                match self.ids.get(key) {
                    Some(held) if held.seq < seq && held.content == content => Err(Refusal::Duplicate),
                    Some(held) if held.seq < seq => Err(Refusal::Rejected(Kind::ConflictingDuplicate, format!(
                        "conflicting_duplicate: {} is held by seq {} with other content",
                        named(&mut self.identity), held.seq))),
                    _ => Ok(Admitted { held: Holds::Identity(key), content }),
                }
            }
        }
    }

    /// Step 5: the admitted record was applied at `seq`.
    pub fn hold(&mut self, admitted: Admitted<'_>, seq: u64) {
        let content = admitted.content;
        match admitted.held {
            Holds::Subject(kind, name) => {
                let latest = &mut self.latest[kind as usize];
                match latest.get_mut(name) {
                    Some(digest) => *digest = content,
                    None => {
                        latest.insert(name.into(), content);
                    }
                }
            }
            Holds::Identity(key) => {
                self.ids.insert(key, Held { content, seq });
                self.count += 1;
                let mut link = [0u8; 64];
                link[..32].copy_from_slice(&self.head);
                link[32..48].copy_from_slice(&key.to_bytes());
                link[48..56].copy_from_slice(&content.to_be_bytes());
                link[56..].copy_from_slice(&seq.to_be_bytes());
                self.head = Sha256::digest(link).into();
                self.last_held = Some((key, content));
            }
        }
    }

    /// Per batch: the held identities among the next batch's records (HELD_ROW after HELD_ROW: K, C, seq
    /// big-endian), replacing the last batch's.
    pub fn begin_batch(&mut self, rows: &[u8]) -> Result<(), String> {
        if !self.per_batch {
            return if rows.is_empty() { Ok(()) } else {
                Err("held identities given to an engine that holds its own".into())
            };
        }
        let rows = held_rows(rows)?;
        self.ids.clear();
        for row in rows {
            let (key, content, seq) = unpack_row(row);
            if seq < 1 {
                return Err("a held identity's seq is at least 1".into());
            }
            self.ids.insert(key, Held { content, seq });
        }
        Ok(())
    }

    /// Each subject's last content digest, as the state document names them (`fund:MAIN`), sorted.
    pub fn latest_sorted(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = [SubjectKind::Fund, SubjectKind::Instrument, SubjectKind::Mark].iter()
            .flat_map(|kind| self.latest[*kind as usize].iter().map(|(name, digest)| {
                (format!("{}:{name}", kind.name()), *digest)
            }))
            .collect();
        out.sort();
        out
    }

    /// Set a subject's last content digest from its name in the state document; false: not a subject.
    pub fn restore_latest(&mut self, subject: &str, digest: u64) -> bool {
        let Some((kind, name)) = subject.split_once(':') else { return false };
        let kind = match kind {
            "fund" => SubjectKind::Fund,
            "instrument" => SubjectKind::Instrument,
            "mark" => SubjectKind::Mark,
            _ => return false,
        };
        self.latest[kind as usize].insert(name.into(), digest);
        true
    }
}

/// A held identity as the batch API passes it: K (16 bytes), C (8), seq (8 big-endian).
pub const HELD_ROW_BYTES: usize = 32;

pub fn pack_row(out: &mut Vec<u8>, key: Key, content: u64, seq: u64) {
    out.extend_from_slice(&key.to_bytes());
    out.extend_from_slice(&content.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
}

/// HELD_ROW rows one by one; Err for bytes that are not a whole number of them.
pub fn held_rows(data: &[u8]) -> Result<std::slice::ChunksExact<'_, u8>, String> {
    if data.len() % HELD_ROW_BYTES != 0 {
        return Err(format!("held identities of {} bytes: not a whole number of {HELD_ROW_BYTES}-byte rows",
                           data.len()));
    }
    Ok(data.chunks_exact(HELD_ROW_BYTES))
}

pub fn unpack_row(row: &[u8]) -> (Key, u64, u64) {
    let word = |at: usize| u64::from_be_bytes(row[at..at + 8].try_into().expect("8 bytes"));
    (Key { high: word(0), low: word(8) }, word(16), word(24))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode_line;

    const FILL: &[u8] = br#"{"type":"fill","ts":1,"fill_id":"f-1","account_id":"u","symbol":"X","side":"buy","qty":"1","price":"2","fee":"0","margin_mode":"cross","leverage":"10"}"#;

    #[test]
    fn an_identity_is_held_for_ever_and_other_content_names_its_seq() {
        let mut admission = Admission::default();
        let record = decode_line(FILL).unwrap();
        let admitted = admission.admit(&record, 7).unwrap();
        admission.hold(admitted, 7);
        assert_eq!(admission.admit(&record, 8).unwrap_err(), Refusal::Duplicate);
        let spelled = String::from_utf8(FILL.to_vec()).unwrap().replace(r#""qty":"1""#, r#""qty":"1.000""#);
        assert_eq!(admission.admit(&decode_line(spelled.as_bytes()).unwrap(), 9).unwrap_err(), Refusal::Duplicate);
        let other = String::from_utf8(FILL.to_vec()).unwrap().replace(r#""qty":"1""#, r#""qty":"2""#);
        assert_eq!(admission.admit(&decode_line(other.as_bytes()).unwrap(), 9).unwrap_err(), Refusal::Rejected(
            Kind::ConflictingDuplicate, "conflicting_duplicate: fill id f-1 is held by seq 7 with other content".into()));
        assert!(admission.admit(&record, 7).is_ok()); // held by this very seq: not before it
        assert_eq!(admission.count, 1);
        assert_ne!(admission.head, GENESIS);
    }

    #[test]
    fn per_batch_only_the_rows_given_are_held() {
        let mut admission = Admission::new(true);
        let record = decode_line(FILL).unwrap();
        let admitted = admission.admit(&record, 3).unwrap();
        admission.hold(admitted, 3);
        let (key, content) = admission.last_held.unwrap();
        admission.begin_batch(&[]).unwrap();
        assert!(admission.admit(&record, 4).is_ok()); // not given: not held
        let mut rows = Vec::new();
        pack_row(&mut rows, key, content, 3);
        admission.begin_batch(&rows).unwrap();
        assert_eq!(admission.admit(&record, 4).unwrap_err(), Refusal::Duplicate);
        assert!(admission.begin_batch(&rows[..31]).is_err());
    }
}
