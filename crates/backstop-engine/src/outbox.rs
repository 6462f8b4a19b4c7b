//! The service's outbox rows for a consumed batch's dead letters, as COPY text: topic, key, record id and the
//! record's canonical JSON (the relay reads the journal, fund ledger, ADL events and postings from their own
//! tables, and a batch's quantile records from the one outbox row that holds them as the engine wrote them). And the
//! flat reading of a canonical JSON record's top-level fields that the relay's keys are read with.

use crate::json::{self, Dialect, Value};
use crate::projection::Line;

pub(crate) fn field<'v, 'a>(value: &'v Value<'a>, name: &str) -> Option<&'v Value<'a>> {
    match value {
        Value::Object(entries) => entries.iter().rev().find(|(key, _)| key == name).map(|(_, v)| v),
        _ => None,
    }
}

fn text(value: Option<&Value<'_>>) -> String {
    match value {
        Some(Value::Str(text)) => text.to_string(),
        Some(Value::Int(digits)) => String::from_utf8_lossy(digits).into_owned(),
        Some(Value::Bool(flag)) => if *flag { "True" } else { "False" }.to_string(),
        _ => "None".to_string(),
    }
}

/// A batch's dead letters (the lines `Processor::apply_records` returns, in its order) as outbox rows in COPY text
/// (columns topic, key, record_id, payload) under the topic prefix, keyed by the consumed record's topic and
/// partition.
pub fn copy_text(prefix: &str, dead_letters: &[u8]) -> Vec<u8> {
    let topic = format!("{prefix}dead-letter");
    let mut out = Vec::with_capacity(dead_letters.len() * 2 + 64);
    for line in dead_letters.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
        let document = json::parse(line, Dialect::File).expect("the engine's own canonical JSON");
        let get = |name: &str| field(&document, name);
        let key = format!("{}:{}", text(get("source_topic")), text(get("source_partition")));
        Line::new(&mut out).text(&topic).text(&key).text(&text(get("id")))
            .text(std::str::from_utf8(line).expect("UTF-8 JSON")).end();
    }
    out
}

/// A quantile block's records (canonical JSON lines, as the engine wrote them) as the relay publishes them: for
/// each, its Kafka key (the account of a position's quantile, the symbol of a risk level) and its record id, each
/// ended by a newline (identifiers hold none). Stored with the block (migration 0012), so the relay parses none of
/// its lines.
pub fn quantile_keys(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() / 4 + 16);
    let mut flat: Vec<(&[u8], Scalar<'_>)> = Vec::with_capacity(16);
    let push = |out: &mut Vec<u8>, text: &[u8]| {
        out.extend_from_slice(text);
        out.push(b'\n');
    };
    for line in block.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
        if flat_fields(line, &mut flat) {
            let get = |name: &str| match flat.iter().rev().find(|(key, _)| *key == name.as_bytes()) {
                Some((_, Scalar::Text(raw))) => *raw,
                _ => panic!("a quantile record without its {name}"),
            };
            push(&mut out, get(if get("kind") == b"quantile" { "account_id" } else { "symbol" }));
            push(&mut out, get("id"));
        } else {
            let document = json::parse(line, Dialect::File).expect("the engine's own canonical JSON");
            let get = |name: &str| match field(&document, name) {
                Some(Value::Str(text)) => text.as_bytes().to_vec(),
                _ => panic!("a quantile record without its {name}"),
            };
            push(&mut out, &get(if get("kind") == b"quantile" { "account_id" } else { "symbol" }));
            push(&mut out, &get("id"));
        }
    }
    out
}

/// A top-level value of a flat record, as its column text: a string without escapes (its characters), an integer
/// (its digits), true or false; or null.
pub(crate) enum Scalar<'a> {
    Text(&'a [u8]),
    Null,
}

/// The top-level fields of a JSON object whose values are all plain strings (no escapes), integers, booleans or
/// null, read without building a document (most output records); false for anything else (a nested value, an
/// escape, a fraction), which the full parser then reads.
pub(crate) fn flat_fields<'a>(line: &'a [u8], fields: &mut Vec<(&'a [u8], Scalar<'a>)>) -> bool {
    fields.clear();
    let end = line.len();
    if end < 2 || line[0] != b'{' || line[end - 1] != b'}' {
        return false;
    }
    let mut at = 1;
    if end == 2 {
        return true;
    }
    loop {
        let Some((key, after)) = plain_string(line, at) else { return false };
        if line.get(after) != Some(&b':') {
            return false;
        }
        at = after + 1;
        let value = match line.get(at) {
            Some(b'"') => {
                let Some((text, after)) = plain_string(line, at) else { return false };
                at = after;
                Scalar::Text(text)
            }
            Some(b'n') if line[at..].starts_with(b"null") => {
                at += 4;
                Scalar::Null
            }
            Some(b't') if line[at..].starts_with(b"true") => {
                at += 4;
                Scalar::Text(b"true")
            }
            Some(b'f') if line[at..].starts_with(b"false") => {
                at += 5;
                Scalar::Text(b"false")
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = at;
                at += 1;
                while at < end && line[at].is_ascii_digit() {
                    at += 1;
                }
                if line[start..at] == *b"-" {
                    return false;
                }
                Scalar::Text(&line[start..at])
            }
            _ => return false,
        };
        fields.push((key, value));
        match line.get(at) {
            Some(b',') => at += 1,
            Some(b'}') if at == end - 1 => return true,
            _ => return false,
        }
    }
}

/// The characters of the string starting at `at` (a quote) and the index after its closing quote, if it holds no
/// escape and no control character.
fn plain_string(line: &[u8], at: usize) -> Option<(&[u8], usize)> {
    if line.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let length = line[start..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    let close = start + length;
    (line[close] == b'"').then(|| (&line[start..close], close + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flat_reading_agrees_with_the_parser() {
        let columns = ["id", "seq", "amount", "flag", "gone", "neg", "nested"];
        for (line, flat_expected) in [
            (&b"{\"amount\":\"1.5\",\"flag\":true,\"id\":\"p-1\",\"neg\":-3,\"seq\":7}"[..], true),
            (b"{\"flag\":false,\"gone\":null,\"id\":\"\xc3\xa9\",\"seq\":0}", true),
            (b"{\"id\":\"a\\\"b\",\"seq\":1}", false), // an escape: the parser reads it
            (b"{\"id\":\"p\",\"nested\":{\"a\":1},\"seq\":2}", false), // a nested value: the parser reads it
            (b"{\"amount\":1.25,\"id\":\"p\"}", false), // a fraction: the parser reads it
            (b"{}", true),
        ] {
            let mut flat = Vec::new();
            let fast = flat_fields(line, &mut flat);
            let document = json::parse(line, Dialect::File).unwrap();
            if fast {
                for name in columns {
                    let expected = match field(&document, name) {
                        Some(Value::Str(text)) => Some(text.as_bytes().to_vec()),
                        Some(Value::Int(digits)) => Some(digits.to_vec()),
                        Some(Value::Bool(flag)) => Some(if *flag { b"true".to_vec() } else { b"false".to_vec() }),
                        _ => None,
                    };
                    let got = flat.iter().rev().find(|(key, _)| *key == name.as_bytes()).and_then(|(_, v)| match v {
                        Scalar::Text(raw) => Some(raw.to_vec()),
                        Scalar::Null => None,
                    });
                    assert_eq!(got, expected, "{name} of {}", String::from_utf8_lossy(line));
                }
            }
            assert_eq!(fast, flat_expected, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn dead_letters_are_keyed_by_their_source() {
        let dead = b"{\"after_seq\":1,\"id\":\"dl-t-0-5\",\"source_partition\":0,\"source_topic\":\"t\"}\n\
                     {\"after_seq\":3,\"id\":\"dl-u-2-7\",\"source_partition\":2,\"source_topic\":\"u\"}\n";
        let text = String::from_utf8(copy_text("x.", dead)).unwrap();
        let ids: Vec<(&str, &str, &str)> = text.lines().map(|l| {
            let mut parts = l.split('\t');
            (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap())
        }).collect();
        assert_eq!(ids, vec![("x.dead-letter", "t:0", "dl-t-0-5"), ("x.dead-letter", "u:2", "dl-u-2-7")]);
    }

    #[test]
    fn quantile_keys_name_each_records_key_and_id() {
        let block = b"{\"account_id\":\"A1\",\"id\":\"aq-5-0\",\"kind\":\"quantile\",\"quantile\":null,\"seq\":5,\
                      \"side\":\"long\",\"symbol\":\"BTCUSDT\"}\n\
                      {\"capacity\":\"1.5\",\"fund_id\":\"f\",\"id\":\"aq-5-1\",\"kind\":\"risk\",\"symbol\":\"ETHUSDT\"}\n\
                      {\"account_id\":\"A2\",\"id\":\"aq-6-0\",\"kind\":\"quantile\",\"note\":{\"a\":1},\"symbol\":\"X\"}\n";
        assert_eq!(quantile_keys(block), b"A1\naq-5-0\nETHUSDT\naq-5-1\nA2\naq-6-0\n");
        assert!(quantile_keys(b"").is_empty());
    }
}
