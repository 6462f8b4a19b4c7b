//! The service's journal rows as COPY text, built from the journal lines a consumed batch returned
//! (`Processor::apply_records`), so the service's event loop never encodes a journal row: the columns of the
//! `journal` table (backstop.adapters.postgres.store.JOURNAL_COLUMNS), the record's canonical JSON as `payload`.
//! The reference engine's rows are encoded in Python (store.journal_copy_text); tests hold the two byte-identical.
//! In the same pass, what the service reads of those rows (JournalFacts), and later the checkpoint's journal digest
//! over them (`journal_digest`), so no journal row becomes a Python object on the service's path.

use crate::json::{self, Dialect, Value};
use crate::outbox::{field, flat_fields, Scalar};
use crate::projection::Line;
use crate::canonical::sha256_hex;
use std::borrow::Cow;
use std::collections::BTreeSet;

/// The journal table's columns in COPY order: the envelope's fields, the record's type, its canonical JSON.
pub const JOURNAL_COLUMNS: [&str; 8] =
    ["seq", "source_topic", "source_partition", "source_offset", "type", "ts", "payload", "payload_hash"];

const RECORD_AT: &[u8] = b"\"record\":";
const RECORD_END: &[u8] = b",\"schema_version\":";

/// Where the record sits in a journal line: its keys are sorted, so "record" follows "id" (j-<seq>) and
/// "payload_hash" (hex), and "schema_version" follows it, then numbers and the topic's name (no quote in either).
fn record_span(line: &[u8]) -> (usize, usize) {
    let at = find(line, RECORD_AT).expect("a journal line holds its record");
    let end = rfind(line, RECORD_END).expect("a journal line's record is followed by its schema version");
    (at, end)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|window| window == needle)
}

/// Top-level fields of a JSON object as column text, read flat when it can be (no nesting, no escapes), else parsed.
struct Fields<'a> {
    flat: Vec<(&'a [u8], Scalar<'a>)>,
    parsed: Option<Value<'a>>,
}

impl<'a> Fields<'a> {
    fn of(object: &'a [u8]) -> Fields<'a> {
        let mut flat = Vec::with_capacity(16);
        if flat_fields(object, &mut flat) {
            return Fields { flat, parsed: None };
        }
        let parsed = json::parse(object, Dialect::File).expect("the engine's own canonical JSON");
        Fields { flat, parsed: Some(parsed) }
    }

    fn text(&self, name: &str) -> Cow<'_, str> {
        self.optional_text(name).unwrap_or_else(|| panic!("a journal line without its {name}"))
    }

    /// A field's text: a string as it is, an integer as its digits; None when absent, null or of another kind.
    fn optional_text(&self, name: &str) -> Option<Cow<'_, str>> {
        match &self.parsed {
            None => self.flat.iter().rev().find(|(key, _)| *key == name.as_bytes()).and_then(|(_, value)| match value {
                Scalar::Text(raw) => Some(Cow::Borrowed(std::str::from_utf8(raw).expect("UTF-8 JSON"))),
                Scalar::Null => None,
            }),
            Some(document) => match field(document, name) {
                Some(Value::Str(text)) => Some(Cow::Borrowed(text.as_ref())),
                Some(Value::Int(digits)) => Some(Cow::Borrowed(std::str::from_utf8(digits).expect("ASCII digits"))),
                _ => None,
            },
        }
    }
}

/// What the service reads of a batch's journal rows besides storing them: how many, their first and last seq, the
/// last one's ts, the applied records per type (in the order each type first came), and the accounts, symbols and
/// (account, symbol) positions the records name (each sorted, once).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JournalFacts {
    pub rows: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_ts: i64,
    pub types: Vec<(String, u64)>,
    pub accounts: BTreeSet<String>,
    pub symbols: BTreeSet<String>,
    pub positions: BTreeSet<(String, String)>,
}

fn number<T: std::str::FromStr>(text: &str, name: &str) -> T {
    text.parse().unwrap_or_else(|_| panic!("a journal line's {name} is not an integer: {text}"))
}

/// One journal line's envelope and record, read in place.
struct Row<'a> {
    outer: Fields<'a>,
    record: Fields<'a>,
    payload: &'a [u8],
}

fn each_row(journal: &[u8], mut visit: impl FnMut(Row<'_>)) {
    let mut envelope = Vec::with_capacity(512);
    for line in journal.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
        let (at, end) = record_span(line);
        let payload = &line[at + RECORD_AT.len()..end];
        // the line less its record: a flat object of the envelope's fields
        envelope.clear();
        envelope.extend_from_slice(&line[..at - 1]);
        envelope.extend_from_slice(&line[end..]);
        visit(Row { outer: Fields::of(&envelope), record: Fields::of(payload), payload });
    }
}

/// The journal lines (canonical JSON, one a line, as the engine wrote them) as COPY text of the journal table's
/// JOURNAL_COLUMNS, and the rows' JournalFacts from the same pass.
pub fn journal_copy_and_facts(journal: &[u8]) -> (Vec<u8>, JournalFacts) {
    let mut out = Vec::with_capacity(journal.len() + journal.len() / 8 + 64);
    let mut facts = JournalFacts::default();
    each_row(journal, |Row { outer, record, payload }| {
        let mut row = Line::new(&mut out);
        for name in ["seq", "source_topic", "source_partition", "source_offset"] {
            row = row.text(&outer.text(name));
        }
        let record_type = record.text("type");
        row = row.text(&record_type).text(&outer.text("ts"));
        row.text(std::str::from_utf8(payload).expect("UTF-8 JSON")).text(&outer.text("payload_hash")).end();

        let seq = number(&outer.text("seq"), "seq");
        if facts.rows == 0 {
            facts.first_seq = seq;
        }
        facts.rows += 1;
        facts.last_seq = seq;
        facts.last_ts = number(&outer.text("ts"), "ts");
        match facts.types.iter_mut().find(|(name, _)| *name == record_type) {
            Some((_, count)) => *count += 1,
            None => facts.types.push((record_type.into_owned(), 1)),
        }
        let account = record.optional_text("account_id");
        let symbol = record.optional_text("symbol");
        if let Some(account) = &account {
            facts.accounts.insert(account.to_string());
        }
        if let Some(symbol) = &symbol {
            facts.symbols.insert(symbol.to_string());
            if let Some(account) = &account {
                facts.positions.insert((account.to_string(), symbol.to_string()));
            }
        }
    });
    (out, facts)
}

/// The checkpoints' journal digest after these rows, from `digest` before them: per row, SHA-256 (hex) of the digest
/// before, the seq, the source topic, partition and offset and the payload's hash joined by ':'
/// (backstop.core.anchor.journal_step).
pub fn journal_digest(digest: &str, journal: &[u8]) -> String {
    let mut digest = digest.to_string();
    let mut joined = String::with_capacity(256);
    each_row(journal, |Row { outer, .. }| {
        joined.clear();
        joined.push_str(&digest);
        for name in ["seq", "source_topic", "source_partition", "source_offset", "payload_hash"] {
            joined.push(':');
            joined.push_str(&outer.text(name));
        }
        digest = sha256_hex(joined.as_bytes());
    });
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_rows_carry_the_envelope_the_type_and_the_payload() {
        let journal = b"{\"id\":\"j-7\",\"payload_hash\":\"ab12\",\"record\":{\"account_id\":\"A1\",\"amount\":\"5\",\
                        \"ts\":3,\"type\":\"transfer\"},\"schema_version\":1,\"seq\":7,\"source_offset\":41,\
                        \"source_partition\":2,\"source_topic\":\"in.transfers\",\"ts\":3}\n\
                        {\"id\":\"j-8\",\"payload_hash\":\"cd34\",\"record\":{\"executions\":[{\"price\":\"1\",\
                        \"qty\":\"2\"}],\"note\":\"a\\\\b\",\"ts\":4,\"type\":\"liquidation\"},\"schema_version\":1,\
                        \"seq\":8,\"source_offset\":0,\"source_partition\":0,\"source_topic\":\"in.liq\",\"ts\":4}\n";
        let (text, facts) = journal_copy_and_facts(journal);
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text, "7\tin.transfers\t2\t41\ttransfer\t3\t{\"account_id\":\"A1\",\"amount\":\"5\",\"ts\":3,\
                          \"type\":\"transfer\"}\tab12\n\
                          8\tin.liq\t0\t0\tliquidation\t4\t{\"executions\":[{\"price\":\"1\",\"qty\":\"2\"}],\
                          \"note\":\"a\\\\\\\\b\",\"ts\":4,\"type\":\"liquidation\"}\tcd34\n");
        assert!(journal_copy_and_facts(b"").0.is_empty());
        assert_eq!(facts, JournalFacts {
            rows: 2, first_seq: 7, last_seq: 8, last_ts: 4,
            types: vec![("transfer".to_string(), 1), ("liquidation".to_string(), 1)],
            accounts: ["A1".to_string()].into(), symbols: BTreeSet::new(), positions: BTreeSet::new(),
        });
        assert_eq!(journal_copy_and_facts(b"").1, JournalFacts::default());
        let first = sha256_hex(b"g:7:in.transfers:2:41:ab12");
        assert_eq!(journal_digest("g", journal), sha256_hex(format!("{first}:8:in.liq:0:0:cd34").as_bytes()));
        assert_eq!(journal_digest("g", b""), "g");
    }

    #[test]
    fn a_position_is_an_account_and_a_symbol_named_by_one_record() {
        let journal = b"{\"id\":\"j-1\",\"payload_hash\":\"00\",\"record\":{\"account_id\":\"B\",\"symbol\":\"BTCUSDT\",\
                        \"ts\":1,\"type\":\"fill\"},\"schema_version\":1,\"seq\":1,\"source_offset\":0,\
                        \"source_partition\":0,\"source_topic\":\"in.fills\",\"ts\":1}\n\
                        {\"id\":\"j-2\",\"payload_hash\":\"01\",\"record\":{\"symbol\":\"ETHUSDT\",\"ts\":2,\
                        \"type\":\"mark\"},\"schema_version\":1,\"seq\":2,\"source_offset\":1,\
                        \"source_partition\":0,\"source_topic\":\"in.marks\",\"ts\":2}\n";
        let (_, facts) = journal_copy_and_facts(journal);
        assert_eq!(facts.symbols, ["BTCUSDT".to_string(), "ETHUSDT".to_string()].into());
        assert_eq!(facts.positions, [("B".to_string(), "BTCUSDT".to_string())].into());
        assert_eq!(facts.accounts, ["B".to_string()].into());
    }
}
