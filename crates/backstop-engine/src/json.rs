//! A JSON parser for input records that accepts exactly what the reference's parsers accept.
//!
//! Two dialects, because the reference reads two ways (backstop.wire.decode and backstop.pipeline.ingest):
//! - `File`: a journal line goes straight to pydantic's parser (jiter): NaN, Infinity and -Infinity are numbers,
//!   integers of any size are integers, duplicate keys are all kept (the last one counts for a lookup);
//! - `Kafka`: a consumed value goes through orjson first (strict JSON: no NaN or Infinity, a number that overflows
//!   a double is an error, integers outside [-2^63, 2^64) become doubles), whose dict keeps the last of
//!   duplicate keys, and is written again with sorted keys before pydantic sees it.
//!
//! jiter refuses a value nested in more than `MAX_DEPTH` containers; orjson a container nested in more than
//! `ORJSON_MAX_DEPTH` (so a Kafka value nested deeper than jiter reads is refused later, after its type is checked:
//! `Parsed::depth` tells).
//! A refusal carries no detail: the two parsers' messages differ, so the canonical reason is "invalid JSON".
//! A record's parse (`parse_record`) also names the first key, in input order, that repeats one before it in its
//! object (backstop.wire.decode.repeated_key): the wire refuses it in both dialects.

use std::borrow::Cow;

/// jiter's recursion limit: a value inside more containers than this is refused.
pub const MAX_DEPTH: usize = 200;
/// orjson's: a container inside this many containers is refused.
pub const ORJSON_MAX_DEPTH: usize = 1024;
/// jiter makes a large integer a Python int, whose conversion refuses more than 4,300 digits (Python's default
/// `sys.get_int_max_str_digits()`); it counts the literal's sign too: a longer integer literal is invalid JSON, and
/// so is a number whose integer part is longer, whatever fraction or exponent follows it.
pub const PYTHON_INT_MAX_CHARS: usize = 4300;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    File,
    Kafka,
}

/// A parsed JSON value; strings are unescaped, numbers are kept as their text.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// An integer literal (no fraction, no exponent) that the dialect keeps as an integer.
    Int(&'a [u8]),
    /// Any other number: a fraction or exponent, NaN or Infinity, an integer orjson turns into a double.
    Float,
    Str(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Entries in input order, duplicates kept (Kafka: deduplicated, last wins, sorted by key).
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

/// The input is not JSON the dialect accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid;

/// Why a record's JSON is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    Invalid,
    /// The first key, in input order, that repeats a key before it in the same object.
    RepeatedKey(String),
}

/// An object holding more keys than this looks a key up in a set (a record has a dozen; a hostile one, 100,000,
/// chosen to collide in a hash without a seed).
const LINEAR_KEYS: usize = 16;

/// A record's JSON: the value and its depth as `parse_with_depth` gives them, unless a key repeats in an object.
/// In the File dialect a value nested too deep is invalid first; in the Kafka dialect the caller checks the depth.
pub fn parse_record(input: &[u8], dialect: Dialect) -> Result<(Value<'_>, usize), Refused> {
    let (value, depth, repeated) = run(input, dialect).map_err(|Invalid| Refused::Invalid)?;
    if dialect == Dialect::File && depth > MAX_DEPTH {
        return Err(Refused::Invalid);
    }
    match repeated {
        Some(key) => Err(Refused::RepeatedKey(key)),
        None => Ok((value, depth)),
    }
}

pub fn parse(input: &[u8], dialect: Dialect) -> Result<Value<'_>, Invalid> {
    let (value, depth) = parse_with_depth(input, dialect)?;
    if depth > MAX_DEPTH {
        return Err(Invalid);
    }
    Ok(value)
}

/// The value and how many containers its deepest value is inside (which a Kafka caller checks against
/// MAX_DEPTH once it has checked the record's type, as the reference does).
pub fn parse_with_depth(input: &[u8], dialect: Dialect) -> Result<(Value<'_>, usize), Invalid> {
    run(input, dialect).map(|(value, depth, _)| (value, depth))
}

fn run(input: &[u8], dialect: Dialect) -> Result<(Value<'_>, usize, Option<String>), Invalid> {
    let mut parser = Parser { input, at: 0, dialect, deepest: 0, repeated: None };
    parser.skip_ws();
    let mut value = parser.value(0)?;
    parser.skip_ws();
    if parser.at != input.len() {
        return Err(Invalid);
    }
    if dialect == Dialect::Kafka {
        normalize(&mut value);
    }
    Ok((value, parser.deepest, parser.repeated))
}

/// What orjson's dict and its sorted dump do to objects: the last of duplicate keys wins, keys in order.
fn normalize(value: &mut Value<'_>) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::Object(entries) => {
            entries.iter_mut().for_each(|(_, v)| normalize(v));
            // stable sort, then keep the last of each run of equal keys
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            let mut kept: Vec<(Cow<'_, str>, Value<'_>)> = Vec::with_capacity(entries.len());
            for entry in entries.drain(..) {
                match kept.last_mut() {
                    Some(last) if last.0 == entry.0 => *last = entry,
                    _ => kept.push(entry),
                }
            }
            *entries = kept;
        }
        _ => {}
    }
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
    dialect: Dialect,
    deepest: usize,
    /// The first key found repeating one before it in its object (found in input order: a key is checked before
    /// its value is parsed).
    repeated: Option<String>,
}

impl<'a> Parser<'a> {
    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.at) {
            self.at += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn literal(&mut self, word: &[u8], value: Value<'a>) -> Result<Value<'a>, Invalid> {
        if self.input[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(Invalid)
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, Invalid> {
        if depth > self.deepest {
            self.deepest = depth;
            let limit = if self.dialect == Dialect::File { MAX_DEPTH } else { ORJSON_MAX_DEPTH };
            if depth > limit {
                return Err(Invalid);
            }
        }
        let first = self.peek().ok_or(Invalid)?;
        if self.dialect == Dialect::Kafka && depth >= ORJSON_MAX_DEPTH && (first == b'[' || first == b'{') {
            return Err(Invalid);
        }
        match first {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => Ok(Value::Str(self.string()?)),
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            b'N' if self.dialect == Dialect::File => self.literal(b"NaN", Value::Float),
            b'I' if self.dialect == Dialect::File => self.literal(b"Infinity", Value::Float),
            b'-' if self.dialect == Dialect::File && self.input[self.at..].starts_with(b"-Infinity") => {
                self.at += 9;
                Ok(Value::Float)
            }
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Invalid),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value<'a>, Invalid> {
        self.at += 1;
        self.skip_ws();
        let mut items = Vec::new();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.at += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(Invalid),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value<'a>, Invalid> {
        self.at += 1;
        self.skip_ws();
        let mut entries: Vec<(Cow<'a, str>, Value<'a>)> = Vec::with_capacity(12);
        let mut keys: Option<std::collections::HashSet<Cow<'a, str>>> = None; // past LINEAR_KEYS keys
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(entries));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(Invalid);
            }
            let key = self.string()?;
            if self.repeated.is_none() {
                let repeats = match &mut keys {
                    Some(set) => !set.insert(key.clone()),
                    None if entries.len() < LINEAR_KEYS => entries.iter().any(|(earlier, _)| *earlier == key),
                    None => {
                        // std's hasher, seeded per process: a hostile record cannot choose keys that collide (the
                        // set only answers "seen?", so the seed reaches no output)
                        let set = keys.insert(entries.iter().map(|(earlier, _)| earlier.clone()).collect());
                        !set.insert(key.clone())
                    }
                };
                if repeats {
                    self.repeated = Some(key.to_string());
                }
            }
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(Invalid);
            }
            self.at += 1;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.at += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(entries));
                }
                _ => return Err(Invalid),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<Value<'a>, Invalid> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let int_start = self.at;
        let int_digits = self.digits();
        if int_digits == 0 || (int_digits > 1 && self.input[int_start] == b'0') {
            return Err(Invalid);
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(Invalid);
            }
            integer = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(Invalid);
            }
            integer = false;
        }
        let text = &self.input[start..self.at];
        if self.dialect == Dialect::File {
            // jiter reads the integer part (its sign too) as an int first, fraction or exponent after it or not
            if int_start + int_digits - start > PYTHON_INT_MAX_CHARS {
                return Err(Invalid);
            }
            return Ok(if integer { Value::Int(text) } else { Value::Float });
        }
        if integer && orjson_int_range(text) {
            return Ok(Value::Int(text));
        }
        // a double: orjson refuses one that overflows to infinity
        let parsed: f64 = std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()).ok_or(Invalid)?;
        if parsed.is_infinite() {
            return Err(Invalid);
        }
        Ok(Value::Float)
    }

    fn hex4(&mut self) -> Result<u32, Invalid> {
        let digits = self.input.get(self.at..self.at + 4).ok_or(Invalid)?;
        let mut value = 0;
        for &digit in digits {
            value = value * 16 + (digit as char).to_digit(16).ok_or(Invalid)?;
        }
        self.at += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<Cow<'a, str>, Invalid> {
        self.at += 1;
        let start = self.at;
        // fast path: up to the first quote, backslash or control character
        let rest = &self.input[start..];
        let end = rest.iter().position(|&b| STRING_STOP[b as usize]).ok_or(Invalid)?;
        self.at += end;
        if rest[end] == b'"' {
            let raw = &rest[..end];
            self.at += 1;
            if raw.is_ascii() {
                // SAFETY: ASCII is UTF-8
                return Ok(Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(raw) }));
            }
            return std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|_| Invalid);
        }
        if rest[end] != b'\\' {
            return Err(Invalid);
        }
        let mut out: Vec<u8> = self.input[start..self.at].to_vec();
        loop {
            match self.peek().ok_or(Invalid)? {
                b'"' => {
                    self.at += 1;
                    return String::from_utf8(out).map(Cow::Owned).map_err(|_| Invalid);
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = self.peek().ok_or(Invalid)?;
                    self.at += 1;
                    match escaped {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            let code = match first {
                                0xD800..=0xDBFF => {
                                    if !self.input[self.at..].starts_with(b"\\u") {
                                        return Err(Invalid);
                                    }
                                    self.at += 2;
                                    let second = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&second) {
                                        return Err(Invalid);
                                    }
                                    0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return Err(Invalid),
                                _ => first,
                            };
                            let character = char::from_u32(code).ok_or(Invalid)?;
                            let mut buffer = [0u8; 4];
                            out.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
                        }
                        _ => return Err(Invalid),
                    }
                }
                0..=0x1f => return Err(Invalid),
                byte => {
                    out.push(byte);
                    self.at += 1;
                }
            }
        }
    }
}

/// Bytes that end the plain run of a string: the closing quote, an escape, a control character.
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether orjson keeps an integer literal as an integer: -2^63 <= n < 2^64.
fn orjson_int_range(text: &[u8]) -> bool {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    let limit: &[u8] = if negative { b"9223372036854775808" } else { b"18446744073709551615" };
    digits.len() < limit.len() || (digits.len() == limit.len() && digits <= limit)
}

/// Append `text` as a JSON string the way orjson writes it: `"` and `\` escaped, control characters as \b \f \n
/// \r \t or \u00XX, everything else (DEL and non-ASCII included) as it is.
pub fn write_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    write_string_body(out, text);
    out.push(b'"');
}

/// A string's JSON escapes without the quotes: a string written in pieces (a name joined from names) is the pieces'
/// bodies one after the other, each escape standing for one character.
pub fn write_string_body(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // most strings (names, ids, hashes) need no escape: checked whole first, then copied at once
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut run = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            8 => b"\\b",
            12 => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(byte >> 4) as usize]);
            out.push(HEX[(byte & 15) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
}

/// Whether any byte of `bytes` is a control character, `"` or `\`: sixteen bytes at a time, each block without a
/// branch inside it (so the compiler checks a block with vector compares), the last few bytes one by one.
pub fn needs_escape(bytes: &[u8]) -> bool {
    let escaped = |byte: u8| (byte < 0x20) | (byte == b'"') | (byte == b'\\');
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        let block: &[u8; 16] = block.try_into().expect("sixteen bytes");
        if block.iter().fold(false, |any, &byte| any | escaped(byte)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&byte| escaped(byte))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// write_string byte by byte, as it was before words were skipped.
    fn escaped_byte_by_byte(text: &str) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &byte in text.as_bytes() {
            match byte {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                8 => out.extend_from_slice(b"\\b"),
                12 => out.extend_from_slice(b"\\f"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..=0x1f => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
                _ => out.push(byte),
            }
        }
        out.push(b'"');
        out
    }

    fn repeated(input: &str, dialect: Dialect) -> Result<(), Refused> {
        parse_record(input.as_bytes(), dialect).map(|_| ())
    }

    #[test]
    fn a_repeated_key_is_named_first_in_input_order() {
        let key = |k: &str| Err(Refused::RepeatedKey(k.to_string()));
        for dialect in [Dialect::File, Dialect::Kafka] {
            assert_eq!(repeated(r#"{"a":1,"b":2,"a":3}"#, dialect), key("a"));
            // the inner object's repeat comes first in the input, though its object closes first either way
            assert_eq!(repeated(r#"{"a":{"x":1,"x":2},"a":1}"#, dialect), key("x"));
            assert_eq!(repeated(r#"{"a":1,"a":2,"b":{"x":1,"x":2}}"#, dialect), key("a"));
            // keys compare unescaped; the same key in two objects is no repeat
            assert_eq!(repeated(r#"{"ts":1,"\u0074s":2}"#, dialect), key("ts"));
            assert_eq!(repeated(r#"[{"a":1},{"a":2}]"#, dialect), Ok(()));
            assert_eq!(repeated(r#"{"s":"{\"a\":1,\"a\":2}"}"#, dialect), Ok(()));
            // invalid JSON after a repeat is invalid JSON
            assert_eq!(repeated(r#"{"a":1,"a":2,}"#, dialect), Err(Refused::Invalid));
            // an object of many keys looks them up in a set: the repeat is still found, and only the first named
            let many: Vec<String> = (0..100).map(|n| format!(r#""k{n}":{n}"#)).collect();
            let text = format!(r#"{{{},"k40":1,"k7":2}}"#, many.join(","));
            assert_eq!(repeated(&text, dialect), key("k40"));
        }
        // the File dialect refuses a value nested too deep before it names a repeat
        let deep = format!(r#"{{"a":1,"a":2,"b":{}{}}}"#, "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(repeated(&deep, Dialect::File), Err(Refused::Invalid));
        assert_eq!(repeated(&deep, Dialect::Kafka), key("a"));
    }

    proptest! {
        #[test]
        fn strings_are_escaped_as_byte_by_byte(text in "(\\PC|[\\x00-\\x20\"\\\\\\x7f]){0,40}", prefix in "[a-z0-9-]{0,17}") {
            for text in [text.clone(), format!("{prefix}{text}")] {
                let mut out = Vec::new();
                write_string(&mut out, &text);
                prop_assert_eq!(out, escaped_byte_by_byte(&text));
            }
        }
    }

    #[test]
    fn every_byte_that_needs_an_escape_is_seen_wherever_it_is() {
        for byte in 0u8..=255 {
            for length in [1, 15, 16, 17, 40] {
                for at in 0..length {
                    let mut text = vec![b'a'; length];
                    text[at] = byte;
                    assert_eq!(needs_escape(&text), byte < 0x20 || byte == b'"' || byte == b'\\', "{byte} at {at} of {length}");
                }
            }
        }
        assert!(!needs_escape(b""));
    }

    fn ok(text: &str, dialect: Dialect) -> bool {
        parse(text.as_bytes(), dialect).is_ok()
    }

    #[test]
    fn accepts_json_and_the_dialects_extras() {
        for good in ["{}", " [1, -0, 2.5e-3, true, false, null] ", r#"{"a":"\u00e9\ud83d\ude00\n"}"#, "\"\x7f\""] {
            assert!(ok(good, Dialect::File) && ok(good, Dialect::Kafka), "{good}");
        }
        for file_only in ["NaN", "[Infinity, -Infinity]", "1e400", "123456789012345678901234567890"] {
            assert!(ok(file_only, Dialect::File), "{file_only}");
        }
        assert!(!ok("NaN", Dialect::Kafka) && !ok("1e400", Dialect::Kafka));
        assert_eq!(parse(b"123456789012345678901234567890", Dialect::Kafka), Ok(Value::Float));
        assert_eq!(parse(b"18446744073709551615", Dialect::Kafka), Ok(Value::Int(b"18446744073709551615")));
        // jiter's integers go through Python's int, which takes at most 4,300 characters, the sign counted
        let nines = |count: usize| "9".repeat(count);
        assert!(parse(nines(4300).as_bytes(), Dialect::File).is_ok());
        assert!(parse(nines(4301).as_bytes(), Dialect::File).is_err());
        assert!(parse(format!("-{}", nines(4299)).as_bytes(), Dialect::File).is_ok());
        assert!(parse(format!("-{}", nines(4300)).as_bytes(), Dialect::File).is_err());
        // ... and so does a number's integer part, whatever follows it (pydantic_core.from_json)
        assert_eq!(parse(format!("{}.5", nines(4300)).as_bytes(), Dialect::File), Ok(Value::Float));
        assert!(parse(format!("{}.5", nines(4301)).as_bytes(), Dialect::File).is_err());
        assert!(parse(format!("-{}e5", nines(4300)).as_bytes(), Dialect::File).is_err());
        assert_eq!(parse(format!("1.{}", nines(5000)).as_bytes(), Dialect::File), Ok(Value::Float));
        assert_eq!(parse(format!("0.{}1", "0".repeat(5000)).as_bytes(), Dialect::Kafka), Ok(Value::Float));
        assert_eq!(parse(b"-9223372036854775809", Dialect::Kafka), Ok(Value::Float));
    }

    #[test]
    fn refuses_what_jiter_refuses() {
        for bad in ["", " ", "\u{feff}{}", "{} x", "{,}", "{\"a\":1,}", "[1,]", "01", "1.", ".1", "-", "+1", "-NaN",
                    "Inf", "tru", "\"\\x\"", "\"a\tb\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "{1:2}",
                    "\x0c{}", "{}\x00"] {
            assert!(!ok(bad, Dialect::File), "{bad:?}");
        }
        assert_eq!(parse(b"\"\xff\"", Dialect::File), Err(Invalid));
    }

    #[test]
    fn depth_limit_is_jiters() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(ok(&nested(201), Dialect::File));
        assert!(!ok(&nested(202), Dialect::File));
        let objects = |n: usize| format!("{{\"x\":{}1{}}}", "{\"a\":".repeat(n), "}".repeat(n));
        assert!(ok(&objects(199), Dialect::File));
        assert!(!ok(&objects(200), Dialect::File));
    }

    #[test]
    fn kafka_objects_keep_the_last_duplicate_in_key_order() {
        let value = parse(br#"{"b":1,"a":2,"b":3}"#, Dialect::Kafka).unwrap();
        assert_eq!(value, Value::Object(vec![("a".into(), Value::Int(b"2")), ("b".into(), Value::Int(b"3"))]));
    }

    #[test]
    fn strings_are_written_as_orjson_writes_them() {
        let mut out = Vec::new();
        write_string(&mut out, "a\"\\\u{8}\u{c}\n\r\t\u{0}\u{1f}\u{7f}é");
        assert_eq!(out, "\"a\\\"\\\\\\b\\f\\n\\r\\t\\u0000\\u001f\u{7f}é\"".as_bytes());
    }
}
