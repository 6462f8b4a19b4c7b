//! Canonical JSON and the SHA-256 hash chain (backstop.core.hashing): sorted keys, no whitespace, decimals as their
//! canonical strings (docs/design.md section 9.5), byte for byte what orjson writes with OPT_SORT_KEYS.

use crate::json::write_string;
use crate::numbers::{write_scaled, write_scaled_wide};
use ethnum::I256;
use sha2::{Digest, Sha256};

/// The hash before the first record of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A JSON value to write canonically.
#[derive(Clone, Debug)]
pub enum J<'a> {
    Null,
    Bool(bool),
    Int(i128),
    /// A decimal: value x 10^-scale, written as its canonical string.
    Dec(i128, u32),
    /// A 256-bit decimal (ledger balances).
    Wide(I256, u32),
    Str(&'a str),
    Owned(String),
    Arr(Vec<J<'a>>),
    /// Entries in any order: written sorted by key (keys are unique).
    Obj(Vec<(&'a str, J<'a>)>),
    /// Already canonical JSON, spliced in as it is.
    Raw(&'a [u8]),
}

pub fn write(out: &mut Vec<u8>, value: &J<'_>) {
    match value {
        J::Null => out.extend_from_slice(b"null"),
        J::Bool(true) => out.extend_from_slice(b"true"),
        J::Bool(false) => out.extend_from_slice(b"false"),
        J::Int(value) => write_int(out, *value),
        J::Dec(value, scale) => {
            out.push(b'"');
            write_scaled(out, *value, *scale);
            out.push(b'"');
        }
        J::Wide(value, scale) => {
            out.push(b'"');
            write_scaled_wide(out, *value, *scale);
            out.push(b'"');
        }
        J::Str(text) => write_string(out, text),
        J::Owned(text) => write_string(out, text),
        J::Arr(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write(out, item);
            }
            out.push(b']');
        }
        J::Obj(entries) => {
            out.push(b'{');
            let mut write_entry = |index: usize, (key, value): &(&str, J<'_>)| {
                if index > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write(out, value);
            };
            if entries.windows(2).all(|pair| key_before(pair[0].0, pair[1].0)) {
                entries.iter().enumerate().for_each(|(index, entry)| write_entry(index, entry));
            } else {
                let mut order: Vec<&(&str, J<'_>)> = entries.iter().collect();
                order.sort_unstable_by(|a, b| a.0.cmp(b.0));
                order.into_iter().enumerate().for_each(|(index, entry)| write_entry(index, entry));
            }
            out.push(b'}');
        }
        J::Raw(bytes) => out.extend_from_slice(bytes),
    }
}

/// a < b, by their first bytes when they differ (most keys of a record do: no call to memcmp).
fn key_before(a: &str, b: &str) -> bool {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x < y,
        _ => a < b,
    }
}

/// orjson's OPT_INDENT_2 | OPT_SORT_KEYS (summary.json, accounts.json, snapshots): two spaces per level, ": ",
/// empty containers as {} and [].
pub fn write_pretty(out: &mut Vec<u8>, value: &J<'_>, level: usize) {
    let newline = |out: &mut Vec<u8>, level: usize| {
        out.push(b'\n');
        out.extend(std::iter::repeat_n(b' ', 2 * level));
    };
    match value {
        J::Arr(items) if !items.is_empty() => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                newline(out, level + 1);
                write_pretty(out, item, level + 1);
            }
            newline(out, level);
            out.push(b']');
        }
        J::Obj(entries) if !entries.is_empty() => {
            // entries given in key order are written as they stand (no order to allocate)
            let sorted = entries.windows(2).all(|pair| key_before(pair[0].0, pair[1].0));
            let mut order: Vec<usize> = Vec::new();
            if !sorted {
                order.extend(0..entries.len());
                order.sort_unstable_by(|&a, &b| entries[a].0.cmp(entries[b].0));
            }
            out.push(b'{');
            for index in 0..entries.len() {
                let at = order.get(index).copied().unwrap_or(index);
                if index > 0 {
                    out.push(b',');
                }
                newline(out, level + 1);
                write_string(out, entries[at].0);
                out.extend_from_slice(b": ");
                write_pretty(out, &entries[at].1, level + 1);
            }
            newline(out, level);
            out.push(b'}');
        }
        other => write(out, other),
    }
}

pub fn to_vec(value: &J<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(&mut out, value);
    out
}

/// An integer as JSON writes it.
pub fn write_int(out: &mut Vec<u8>, value: i128) {
    write_scaled(out, value, 0);
}

/// A parsed JSON document as a canonical value (integers kept as written, "-0" as 0); None if it holds a float.
pub fn from_json<'a>(value: &'a crate::json::Value<'a>) -> Option<J<'a>> {
    use crate::json::Value;
    Some(match value {
        Value::Null => J::Null,
        Value::Bool(flag) => J::Bool(*flag),
        Value::Int(text) if text.iter().all(|&b| b == b'0' || b == b'-') => J::Raw(b"0"),
        Value::Int(text) => J::Raw(text),
        Value::Float => return None,
        Value::Str(text) => J::Str(text),
        Value::Array(items) => J::Arr(items.iter().map(from_json).collect::<Option<_>>()?),
        Value::Object(entries) => {
            J::Obj(entries.iter().map(|(k, v)| Some((k.as_ref(), from_json(v)?))).collect::<Option<_>>()?)
        }
    })
}

/// backstop.core.hashing.chain_hash of a record written as JSON: SHA-256 of its canonical JSON without `hash`.
pub fn chain_hash_of(value: &J<'_>) -> String {
    let body = match value {
        J::Obj(entries) => J::Obj(entries.iter().filter(|(key, _)| *key != "hash").cloned().collect()),
        other => other.clone(),
    };
    sha256_hex(&to_vec(&body))
}

/// A chained record written once: `before` holds its keys that sort before "hash", `after` those after it (both
/// non-empty objects). The hash is SHA-256 of the record without "hash" (backstop.core.hashing.chain_hash); the
/// record with its hash is appended to `out`, and the hash returned. Written in place: the hash's digits fill the
/// room left for them, and the opening brace of `after` becomes the comma after the hash.
pub fn write_chained(out: &mut Vec<u8>, before: &J<'_>, after: &J<'_>) -> String {
    const KEY: &[u8] = b"\"hash\":\"";
    let start = out.len();
    write(out, before);
    let middle = out.len() - 1; // the closing brace of `before`
    out[middle] = b',';
    out.extend_from_slice(KEY);
    let digits = out.len();
    out.extend_from_slice(&[b'0'; 64]);
    out.push(b'"');
    let opening = out.len();
    write(out, after);
    let mut hasher = Sha256::new();
    hasher.update(&out[start..=middle]);
    hasher.update(&out[opening + 1..]);
    let hash = hex(&hasher.finalize());
    out[digits..digits + 64].copy_from_slice(hash.as_bytes());
    out[opening] = b',';
    hash
}

/// Lowercase hex of SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    let mut out = vec![0u8; digest.len() * 2];
    write_hex(&mut out, digest);
    String::from_utf8(out).expect("hex digits")
}

/// `hex(digest)` written into `out` (two bytes per byte of the digest).
pub fn write_hex(out: &mut [u8], digest: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, &byte) in out.chunks_exact_mut(2).zip(digest) {
        pair[0] = DIGITS[(byte >> 4) as usize];
        pair[1] = DIGITS[(byte & 15) as usize];
    }
}

/// backstop.core.hashing.combine: SHA-256 of the hashes joined by ":".
pub fn combine(hashes: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for (index, hash) in hashes.iter().enumerate() {
        if index > 0 {
            hasher.update(b":");
        }
        hasher.update(hash.as_bytes());
    }
    hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_sorted_and_decimals_are_strings() {
        let value = J::Obj(vec![
            ("seq", J::Int(3)),
            ("amount", J::Dec(-150_000_000, 8)),
            ("liquidation_id", J::Null),
            ("details", J::Obj(vec![("z", J::Str("1")), ("a", J::Str("é\n"))])),
            ("list", J::Arr(vec![J::Bool(true), J::Wide(I256::new(5), 0)])),
        ]);
        assert_eq!(String::from_utf8(to_vec(&value)).unwrap(),
                   r#"{"amount":"-1.5","details":{"a":"é\n","z":"1"},"liquidation_id":null,"list":[true,"5"],"seq":3}"#);
    }

    #[test]
    fn pretty_is_orjsons_indent_2() {
        let value = J::Obj(vec![
            ("b", J::Obj(vec![("c", J::Str("x")), ("d", J::Arr(vec![]))])),
            ("a", J::Arr(vec![J::Int(1), J::Obj(vec![("x", J::Obj(vec![]))])])),
            ("n", J::Null),
        ]);
        let mut out = Vec::new();
        write_pretty(&mut out, &value, 0);
        let expected = "{\n  \"a\": [\n    1,\n    {\n      \"x\": {}\n    }\n  ],\n  \"b\": {\n    \"c\": \"x\",\n    \"d\": []\n  },\n  \"n\": null\n}";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn a_chained_record_is_written_once_with_its_hash() {
        let before = J::Obj(vec![("amount", J::Dec(15, 1)), ("fund", J::Str("a\"b"))]);
        let after = J::Obj(vec![("id", J::Str("p-1-0")), ("seq", J::Int(1))]);
        let mut out = b"earlier\n".to_vec();
        let hash = write_chained(&mut out, &before, &after);
        assert_eq!(hash, sha256_hex(br#"{"amount":"1.5","fund":"a\"b","id":"p-1-0","seq":1}"#));
        let whole = J::Obj(vec![("amount", J::Dec(15, 1)), ("fund", J::Str("a\"b")), ("hash", J::Str(&hash)),
                                ("id", J::Str("p-1-0")), ("seq", J::Int(1))]);
        assert_eq!(out, [b"earlier\n".as_slice(), &to_vec(&whole)].concat());
        assert_eq!(chain_hash_of(&whole), hash);
    }

    #[test]
    fn hashes_are_pythons() {
        // hashlib.sha256(b"").hexdigest() and combine("a", "b")
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(combine(&["a", "b"]), sha256_hex(b"a:b"));
    }
}
