//! The service's journal rows as COPY text, built from the journal lines a consumed batch returned
//! (`Processor::apply_records`), so the service's event loop never encodes a journal row: the columns of the
//! `journal` table (backstop.adapters.postgres.store.JOURNAL_COLUMNS), the record's canonical JSON as `payload`.
//! The reference engine's rows are encoded in Python (store.journal_copy_text); tests hold the two byte-identical.

use crate::json::{self, Dialect, Value};
use crate::outbox::{field, flat_fields, Scalar};
use crate::projection::Line;
use std::borrow::Cow;

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
        let found = match &self.parsed {
            None => self.flat.iter().rev().find(|(key, _)| *key == name.as_bytes()).and_then(|(_, value)| match value {
                Scalar::Text(raw) => Some(Cow::Borrowed(std::str::from_utf8(raw).expect("UTF-8 JSON"))),
                Scalar::Null => None,
            }),
            Some(document) => match field(document, name) {
                Some(Value::Str(text)) => Some(Cow::Borrowed(text.as_ref())),
                Some(Value::Int(digits)) => Some(Cow::Borrowed(std::str::from_utf8(digits).expect("ASCII digits"))),
                _ => None,
            },
        };
        found.unwrap_or_else(|| panic!("a journal line without its {name}"))
    }
}

/// The journal lines (canonical JSON, one a line, as the engine wrote them) as COPY text of the journal table's
/// JOURNAL_COLUMNS.
pub fn journal_copy(journal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(journal.len() + journal.len() / 8 + 64);
    let mut envelope = Vec::with_capacity(512);
    for line in journal.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
        let (at, end) = record_span(line);
        let payload = &line[at + RECORD_AT.len()..end];
        // the line less its record: a flat object of the envelope's fields
        envelope.clear();
        envelope.extend_from_slice(&line[..at - 1]);
        envelope.extend_from_slice(&line[end..]);
        let outer = Fields::of(&envelope);
        let record = Fields::of(payload);
        let mut row = Line::new(&mut out);
        for name in ["seq", "source_topic", "source_partition", "source_offset"] {
            row = row.text(&outer.text(name));
        }
        row = row.text(&record.text("type")).text(&outer.text("ts"));
        row.text(std::str::from_utf8(payload).expect("UTF-8 JSON")).text(&outer.text("payload_hash")).end();
    }
    out
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
        let text = String::from_utf8(journal_copy(journal)).unwrap();
        assert_eq!(text, "7\tin.transfers\t2\t41\ttransfer\t3\t{\"account_id\":\"A1\",\"amount\":\"5\",\"ts\":3,\
                          \"type\":\"transfer\"}\tab12\n\
                          8\tin.liq\t0\t0\tliquidation\t4\t{\"executions\":[{\"price\":\"1\",\"qty\":\"2\"}],\
                          \"note\":\"a\\\\\\\\b\",\"ts\":4,\"type\":\"liquidation\"}\tcd34\n");
        assert!(journal_copy(b"").is_empty());
    }
}
