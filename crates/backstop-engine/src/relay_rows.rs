//! The relay's next rows as it publishes them, read from the COPY text of the store's one statement over every
//! source (backstop.adapters.postgres.store.UNPUBLISHED_SQL, its columns in that order), so that no published row
//! becomes a Python object: a quantile block split into its records with their stored keys, the journal's records
//! built from their columns (backstop.adapters.postgres.store.journal_record_text), each with its topic, Kafka key,
//! record id and place in its source. Then, for the relay, the rows already in Kafka passed over and the rest as
//! record batches (crate::kafka_batch).

use crate::engine::SCHEMA_VERSION;
use crate::json::{self, Dialect, Value};
use crate::kafka_batch::{self, Record};
use crate::outbox::{field, flat_fields, quantile_keys, Scalar};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Where a row is read from, in the order the statement gives them (its `rank` column).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Source {
    Outbox,
    Journal,
    FundLedger,
    AdlEvents,
    Postings,
}

impl Source {
    pub const ALL: [Source; 5] = [Source::Outbox, Source::Journal, Source::FundLedger, Source::AdlEvents,
                                  Source::Postings];

    /// As backstop.adapters.postgres.store names it (OUTBOX, TABLE_SOURCES).
    pub fn name(self) -> &'static str {
        match self {
            Source::Outbox => "outbox",
            Source::Journal => "journal",
            Source::FundLedger => "fund_ledger",
            Source::AdlEvents => "adl_events",
            Source::Postings => "postings",
        }
    }
}

/// One record to publish: its place in its source (outbox id, journal seq or table position), its topic (an index
/// into `RelayRows::topics`), and where its Kafka key, record id and value lie in its read's text
/// (`RelayRows::key`, `record_id`, `payload`).
#[derive(Clone, Copy, Debug)]
pub struct RelayRow {
    pub id: i64,
    pub topic: usize,
    key: Span,
    record_id: Span,
    payload: Span,
    pub source: Source,
}

/// Where a text lies in `RelayRows::text`.
type Span = (usize, usize);

/// The rows of one read, each source's in its order, sources in `Source::ALL` order. Their keys, record ids and
/// values lie side by side in one text: a read of tens of thousands of rows makes a few allocations, not three a row.
#[derive(Clone, Debug, Default)]
pub struct RelayRows {
    pub topics: Vec<String>,
    pub rows: Vec<RelayRow>,
    text: String,
}

impl PartialEq for RelayRows {
    /// The same topics and the same rows, wherever their texts lie.
    fn eq(&self, other: &RelayRows) -> bool {
        let view = |rows: &RelayRows, row: &RelayRow| (row.id, row.topic, row.source, rows.key(row).to_string(),
                                                        rows.record_id(row).to_string(), rows.payload(row).to_string());
        self.topics == other.topics && self.rows.len() == other.rows.len()
            && self.rows.iter().zip(&other.rows).all(|(a, b)| view(self, a) == view(other, b))
    }
}

/// What one batch wrote to the relay's sources (backstop.adapters.postgres.store.Committed): its quantile block,
/// its other outbox rows' (id, topic, key, record id, payload) and journal rows' COPY text as the store sent them,
/// its fund-ledger entries and ADL events as (position, key, record id, record), and its posting block (the last
/// posting's position and the lines).
pub struct Commit<'a> {
    pub block: Option<Block<'a>>,
    pub outbox_copy: &'a [u8],
    pub journal_copy: &'a [u8],
    pub fund_ledger: &'a [(i64, String, String, String)],
    pub adl_events: &'a [(i64, String, String, String)],
    pub postings: Option<(i64, &'a str)>,
}

/// A quantile block as stored: its row's id (its last record's), its records' topic, lines and keys.
pub struct Block<'a> {
    pub last_id: i64,
    pub topic: &'a str,
    pub lines: &'a str,
    pub keys: &'a str,
}

fn copy_lines(copy: &[u8]) -> impl Iterator<Item = &[u8]> {
    copy.split(|&byte| byte == b'\n').filter(|line| !line.is_empty())
}

/// The Kafka key field of each input type (backstop.pipeline.topics.input_key_field).
fn key_field(record_type: &str) -> &'static str {
    match record_type {
        "fund" => "fund_id",
        "mark" | "funding" | "instrument" => "symbol",
        _ => "account_id",
    }
}

/// A journal record's Kafka key read from its payload (backstop.adapters.postgres.store.journal_key): the key
/// field's string value where the field opens once, else the parsed record's field.
fn journal_key(record_type: &str, payload: &str) -> Result<String, String> {
    let opens = format!("\"{}\":\"", key_field(record_type));
    if let Some(at) = payload.find(&opens) {
        if !payload[at + 1..].contains(&opens) {
            let start = at + opens.len();
            if let Some(length) = payload[start..].find('"') {
                return Ok(payload[start..start + length].to_string());
            }
        }
    }
    let document = json::parse(payload.as_bytes(), Dialect::File)
        .map_err(|error| format!("journal payload is not JSON: {error:?}"))?;
    match field(&document, key_field(record_type)) {
        Some(Value::Str(text)) => Ok(text.to_string()),
        Some(Value::Int(digits)) => Ok(String::from_utf8_lossy(digits).into_owned()),
        _ => Err(format!("a {record_type} journal record without its {}", key_field(record_type))),
    }
}

/// String fields of a record's canonical JSON (None: one is missing or not a string): read flat where the record
/// allows (crate::outbox::flat_fields), else parsed.
fn text_fields<'a, const N: usize>(line: &'a str, names: [&str; N], flat: &mut Vec<(&'a [u8], Scalar<'a>)>)
                                   -> Option<[String; N]> {
    let found: [Option<String>; N] = if flat_fields(line.as_bytes(), flat) {
        names.map(|name| match flat.iter().rev().find(|(key, _)| *key == name.as_bytes()) {
            Some((_, Scalar::Text(raw))) => std::str::from_utf8(raw).ok().map(str::to_string),
            _ => None,
        })
    } else {
        let document = json::parse(line.as_bytes(), Dialect::File).ok()?;
        names.map(|name| match field(&document, name) {
            Some(Value::Str(text)) => Some(text.to_string()),
            _ => None,
        })
    };
    found.iter().all(Option::is_some).then(|| found.map(Option::unwrap_or_default))
}

/// A journal row's record as the relay publishes it: journal_record's canonical JSON, its keys in sorted order.
#[allow(clippy::too_many_arguments)]
fn journal_record(out: &mut String, seq: i64, topic: &str, partition: i64, offset: i64, ts: i64, payload: &str,
                  hash: &str) {
    let _ = write!(out, "{{\"id\":\"j-{seq}\",\"payload_hash\":\"{hash}\",\"record\":{payload},\
                         \"schema_version\":{SCHEMA_VERSION},\"seq\":{seq},\"source_offset\":{offset},\
                         \"source_partition\":{partition},\"source_topic\":");
    let mut topic_json = Vec::with_capacity(topic.len() + 2);
    json::write_string(&mut topic_json, topic);
    out.push_str(std::str::from_utf8(&topic_json).expect("JSON text of a str"));
    let _ = write!(out, ",\"ts\":{ts}}}");
}

/// One COPY text row's values (None: NULL), its escapes undone (PostgreSQL's text format).
fn copy_values(line: &[u8]) -> Vec<Option<Cow<'_, [u8]>>> {
    line.split(|&byte| byte == b'\t')
        .map(|raw| match raw {
            b"\\N" => None,
            _ if !raw.contains(&b'\\') => Some(Cow::Borrowed(raw)),
            _ => Some(Cow::Owned(unescape(raw))),
        })
        .collect()
}

fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    while at < raw.len() {
        let byte = raw[at];
        at += 1;
        if byte != b'\\' || at == raw.len() {
            out.push(byte);
            continue;
        }
        let next = raw[at];
        at += 1;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match raw.get(at) {
                        Some(&digit @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(digit - b'0');
                            at += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            b'x' if raw.get(at).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match raw.get(at).and_then(|&digit| (digit as char).to_digit(16)) {
                        Some(digit) => {
                            value = value * 16 + digit;
                            at += 1;
                        }
                        None => break,
                    }
                }
                out.push(value as u8);
            }
            other => out.push(other),
        }
    }
    out
}

struct Columns<'a>(Vec<Option<Cow<'a, [u8]>>>);

impl Columns<'_> {
    fn text(&self, at: usize) -> Result<&str, String> {
        match self.0.get(at) {
            Some(Some(value)) => std::str::from_utf8(value).map_err(|_| format!("column {at} is not UTF-8")),
            _ => Err(format!("column {at} is NULL or missing")),
        }
    }

    fn optional(&self, at: usize) -> Result<Option<&str>, String> {
        match self.0.get(at) {
            Some(None) => Ok(None),
            _ => self.text(at).map(Some),
        }
    }

    fn int(&self, at: usize) -> Result<i64, String> {
        let text = self.text(at)?;
        text.parse().map_err(|_| format!("column {at} is not an integer: {text:?}"))
    }
}

impl RelayRows {
    /// The rows of the statement's COPY text: outbox rows published on their own topic, tables' on
    /// `table_topics` (one per table source, in `Source::ALL` order after the outbox).
    pub fn from_copy(copy: &[u8], table_topics: &[String]) -> Result<RelayRows, String> {
        if table_topics.len() != 4 {
            return Err("one topic per table source".to_string());
        }
        let mut read = RelayRows { topics: table_topics.to_vec(), ..RelayRows::default() };
        for line in copy_lines(copy) {
            let columns = Columns(copy_values(line));
            if columns.0.len() != 14 {
                return Err(format!("a relay row of {} columns, not 14", columns.0.len()));
            }
            read.push_row(&columns)?;
        }
        Ok(read)
    }

    /// The rows one batch's commit wrote, as a read of them after the cursors they follow would give them (no row
    /// passed over): what the relay publishes without reading them back (backstop.service.relay).
    pub fn from_commit(commit: &Commit<'_>, table_topics: &[String]) -> Result<RelayRows, String> {
        if table_topics.len() != 4 {
            return Err("one topic per table source".to_string());
        }
        let mut read = RelayRows { topics: table_topics.to_vec(), ..RelayRows::default() };
        if let Some(block) = &commit.block {
            let topic = read.topic(block.topic);
            let records = block.lines.matches('\n').count() as i64;
            read.push_block(block.last_id, topic, records, block.lines, 0, Some(block.keys))?;
        }
        for line in copy_lines(commit.outbox_copy) {
            let columns = Columns(copy_values(line));
            if columns.0.len() != 5 {
                return Err(format!("an outbox row of {} columns, not 5", columns.0.len()));
            }
            let topic = read.topic(columns.text(1)?);
            read.push(columns.int(0)?, topic, columns.text(2)?, columns.text(3)?, columns.text(4)?, Source::Outbox);
        }
        for line in copy_lines(commit.journal_copy) {
            // the journal's columns: seq, source_topic, source_partition, source_offset, type, ts, payload, hash
            let columns = Columns(copy_values(line));
            if columns.0.len() != 8 {
                return Err(format!("a journal row of {} columns, not 8", columns.0.len()));
            }
            let seq = columns.int(0)?;
            read.push_journal(seq, columns.text(4)?, columns.text(1)?, columns.int(2)?, columns.int(3)?,
                              columns.int(5)?, columns.text(6)?, columns.text(7)?)?;
        }
        for (source, rows) in [(Source::FundLedger, commit.fund_ledger), (Source::AdlEvents, commit.adl_events)] {
            let topic = Source::ALL.iter().position(|&known| known == source).expect("a source") - 1;
            for (id, key, record_id, payload) in rows {
                read.push(*id, topic, key, record_id, payload, source);
            }
        }
        if let Some((last_position, lines)) = commit.postings {
            let records = lines.matches('\n').count() as i64;
            read.push_postings(last_position, records, lines, 0)?;
        }
        Ok(read)
    }

    fn topic(&mut self, name: &str) -> usize {
        match self.topics.iter().position(|known| known == name) {
            Some(at) => at,
            None => {
                self.topics.push(name.to_string());
                self.topics.len() - 1
            }
        }
    }

    fn push_row(&mut self, columns: &Columns<'_>) -> Result<(), String> {
        let id = columns.int(1)?;
        let source = match columns.int(0)? {
            0 => Source::Outbox,
            1 => Source::Journal,
            2 => Source::FundLedger,
            3 => Source::AdlEvents,
            4 => Source::Postings,
            rank => return Err(format!("a relay row of source rank {rank}")),
        };
        match source {
            Source::Outbox => {
                let topic = self.topic(columns.text(2)?);
                match columns.optional(11)? {
                    None => self.push(id, topic, columns.text(3)?, columns.text(4)?, columns.text(5)?, source),
                    Some(records) => {
                        let records: i64 = records.parse()
                            .map_err(|_| format!("outbox block {id}: records {records:?}"))?;
                        self.push_block(id, topic, records, columns.text(5)?, columns.int(12)?,
                                        columns.optional(13)?)?;
                    }
                }
            }
            Source::Journal => self.push_journal(id, columns.text(2)?, columns.text(6)?, columns.int(7)?,
                                                 columns.int(8)?, columns.int(9)?, columns.text(5)?,
                                                 columns.text(10)?)?,
            Source::Postings if columns.optional(11)?.is_some() => {
                let records = columns.int(11)?;
                self.push_postings(id, records, columns.text(5)?, columns.int(12)?)?;
            }
            _ => {
                let topic = Source::ALL.iter().position(|&known| known == source).expect("a source") - 1;
                self.push(id, topic, columns.text(3)?, columns.text(4)?, columns.text(5)?, source);
            }
        }
        Ok(())
    }

    /// A journal row's record (journal_record), keyed as its input was.
    #[allow(clippy::too_many_arguments)]
    fn push_journal(&mut self, seq: i64, record_type: &str, topic: &str, partition: i64, offset: i64, ts: i64,
                    payload: &str, hash: &str) -> Result<(), String> {
        let key = self.put(&journal_key(record_type, payload)?);
        let start = self.text.len();
        let _ = write!(self.text, "j-{seq}");
        let record_id = (start, self.text.len());
        journal_record(&mut self.text, seq, topic, partition, offset, ts, payload, hash);
        let payload = (record_id.1, self.text.len());
        self.rows.push(RelayRow { id: seq, topic: 0, key, record_id, payload, source: Source::Journal });
        Ok(())
    }

    /// A quantile block's records (backstop.adapters.postgres.store.block_rows): ids `last_id - records + 1` to
    /// `last_id`, less those up to the outbox cursor, each with the key and id stored beside its line (or, for a
    /// block written before migration 0012, read from its line).
    fn push_block(&mut self, last_id: i64, topic: usize, records: i64, block: &str, after: i64,
                  keys: Option<&str>) -> Result<(), String> {
        let lines: Vec<&str> = block.split_terminator('\n').collect();
        if !block.ends_with('\n') || lines.len() as i64 != records {
            return Err(format!("outbox block {last_id} holds {} records, its row says {records}", lines.len()));
        }
        let derived;
        let keys = match keys {
            Some(keys) => keys,
            None => {
                derived = String::from_utf8(quantile_keys(block.as_bytes())).map_err(|_| "keys not UTF-8")?;
                &derived
            }
        };
        let named: Vec<&str> = keys.split_terminator('\n').collect();
        if !keys.ends_with('\n') || named.len() as i64 != 2 * records {
            return Err(format!("outbox block {last_id} names {} keys for its {records} records", named.len() / 2));
        }
        let first = last_id - records + 1;
        let skip = (after - first + 1).clamp(0, records) as usize;
        for (at, line) in lines.iter().enumerate().skip(skip) {
            self.push(first + at as i64, topic, named[2 * at], named[2 * at + 1], line, Source::Outbox);
        }
        Ok(())
    }

    /// A posting block's records (migration 0017): positions `last_position - records + 1` to `last_position`, less
    /// those up to `after` (the postings' cursor), each keyed by its asset and named by its id, read from its line.
    fn push_postings(&mut self, last_position: i64, records: i64, block: &str, after: i64) -> Result<(), String> {
        let lines: Vec<&str> = block.split_terminator('\n').collect();
        if !block.ends_with('\n') || lines.len() as i64 != records {
            return Err(format!("posting block {last_position} holds {} postings, its row says {records}",
                               lines.len()));
        }
        let first = last_position - records + 1;
        let skip = (after - first + 1).clamp(0, records) as usize;
        let mut flat = Vec::new();
        for (at, line) in lines.iter().enumerate().skip(skip) {
            let id = first + at as i64;
            let [key, record_id] = text_fields(line, ["asset", "id"], &mut flat)
                .ok_or_else(|| format!("posting {id}: its record names no asset or id"))?;
            self.push(id, 3, &key, &record_id, line, Source::Postings);
        }
        Ok(())
    }

    /// A row whose key, record id and value are copied into the read's text.
    fn push(&mut self, id: i64, topic: usize, key: &str, record_id: &str, payload: &str, source: Source) {
        let (key, record_id, payload) = (self.put(key), self.put(record_id), self.put(payload));
        self.rows.push(RelayRow { id, topic, key, record_id, payload, source });
    }

    fn put(&mut self, text: &str) -> Span {
        let start = self.text.len();
        self.text.push_str(text);
        (start, self.text.len())
    }

    pub fn key(&self, row: &RelayRow) -> &str {
        &self.text[row.key.0..row.key.1]
    }

    pub fn record_id(&self, row: &RelayRow) -> &str {
        &self.text[row.record_id.0..row.record_id.1]
    }

    pub fn payload(&self, row: &RelayRow) -> &str {
        &self.text[row.payload.0..row.payload.1]
    }

    /// The last row's id of each source that has rows.
    pub fn last_of_each_source(&self) -> Vec<(Source, i64)> {
        let mut last: Vec<(Source, i64)> = Vec::new();
        for row in &self.rows {
            match last.last_mut() {
                Some((source, id)) if *source == row.source => *id = row.id,
                _ => last.push((row.source, row.id)),
            }
        }
        last
    }

    /// The most rows any one source gave.
    pub fn most_of_one_source(&self) -> usize {
        Source::ALL.iter().map(|&source| self.rows.iter().filter(|row| row.source == source).count())
            .max().unwrap_or(0)
    }

    /// Each topic that has rows and the source they come from (a topic has one source).
    pub fn topic_sources(&self) -> Vec<(&str, Source)> {
        let mut found: Vec<(&str, Source)> = Vec::new();
        for row in &self.rows {
            let topic = self.topics[row.topic].as_str();
            if !found.iter().any(|(known, _)| *known == topic) {
                found.push((topic, row.source));
            }
        }
        found
    }

    /// The rows less those already in Kafka (backstop.service.ports.passed_over): a row whose partition's last record
    /// names, in `published` (by topic and partition), the same place header and a place at or after its own.
    pub fn without_published(&self, counts: &HashMap<String, u32>, place_header: impl Fn(Source) -> String,
                             published: &HashMap<(String, u32), (String, i64)>) -> Result<RelayRows, String> {
        let mut kept = RelayRows { topics: self.topics.clone(), rows: Vec::with_capacity(self.rows.len()),
                                   text: self.text.clone() };
        for row in &self.rows {
            let topic = &self.topics[row.topic];
            let partition = kafka_batch::partition_for(self.key(row).as_bytes(), count_of(counts, topic)?);
            let passed = published.get(&(topic.clone(), partition))
                .is_some_and(|(header, last)| row.id <= *last && *header == place_header(row.source));
            if !passed {
                kept.rows.push(*row);
            }
        }
        Ok(kept)
    }

    /// The rows as record batches (kafka_batch::encode): each to the partition its key gives over its topic's
    /// count, with its place under its source's header and its record id.
    pub fn record_batches(&self, counts: &HashMap<String, u32>, place_header: impl Fn(Source) -> String,
                          record_id_header: &str, timestamp_ms: i64, max_bytes: usize)
                          -> Result<Vec<EncodedBatch>, String> {
        let headers: Vec<(Source, String)> = Source::ALL.iter().map(|&source| (source, place_header(source)))
            .collect();
        let header_of = |source| &headers.iter().find(|(known, _)| *known == source).expect("every source").1;
        let mut records = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            let topic = &self.topics[row.topic];
            records.push(Record {
                topic, partition: kafka_batch::partition_for(self.key(row).as_bytes(), count_of(counts, topic)?),
                key: self.key(row).as_bytes(), value: self.payload(row).as_bytes(), place_header: header_of(row.source),
                place: row.id, record_id_header, record_id: self.record_id(row),
            });
        }
        Ok(kafka_batch::encode(records, timestamp_ms, max_bytes).into_iter()
            .map(|(topic, partition, count, batch)| (topic.to_string(), partition, count, batch)).collect())
    }
}

/// (topic, partition, records, the batch) of `RelayRows::record_batches`.
pub type EncodedBatch = (String, u32, i32, Vec<u8>);

fn count_of(counts: &HashMap<String, u32>, topic: &str) -> Result<u32, String> {
    counts.get(topic).copied().ok_or_else(|| format!("no partition count for topic {topic}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::Line;

    fn topics() -> Vec<String> {
        ["t.journal", "t.fund", "t.adl", "t.postings"].map(str::to_string).to_vec()
    }

    #[test]
    fn copy_escapes_are_undone() {
        let mut out = Vec::new();
        Line::new(&mut out).text("a\tb\\c\nd\re").null().text("").end();
        let values = copy_values(&out[..out.len() - 1]);
        assert_eq!(values, vec![Some(Cow::Borrowed(&b"a\tb\\c\nd\re"[..])), None, Some(Cow::Borrowed(&b""[..]))]);
        assert_eq!(unescape(b"\\101\\x42\\v\\q"), b"AB\x0bq");
    }

    #[test]
    fn a_journal_row_becomes_its_record_with_its_key() {
        let copy = "1\t7\tfill\t\\N\t\\N\t{\"account_id\":\"a-1\",\"note\":\"x\\\\\\\"y\"}\tin.fills\t2\t40\t1000\tab\
                    \t\\N\t\\N\t\\N\n";
        let rows = RelayRows::from_copy(copy.as_bytes(), &topics()).unwrap();
        assert_eq!(rows.rows.len(), 1);
        let row = &rows.rows[0];
        assert_eq!((row.id, row.topic, rows.key(row), rows.record_id(row)), (7, 0, "a-1", "j-7"));
        assert_eq!(rows.payload(row), "{\"id\":\"j-7\",\"payload_hash\":\"ab\",\"record\":{\"account_id\":\"a-1\",\
                                 \"note\":\"x\\\"y\"},\"schema_version\":1,\"seq\":7,\"source_offset\":40,\
                                 \"source_partition\":2,\"source_topic\":\"in.fills\",\"ts\":1000}");
    }

    #[test]
    fn a_key_named_twice_is_read_from_the_parsed_record() {
        assert_eq!(journal_key("mark", "{\"symbol\":\"BTC\",\"x\":{\"symbol\":\"ETH\"}}").unwrap(), "BTC");
        assert_eq!(journal_key("fund", "{\"fund_id\":\"F\"}").unwrap(), "F");
        assert!(journal_key("fill", "{\"symbol\":\"BTC\"}").is_err());
    }

    #[test]
    fn a_block_is_split_after_the_cursor_and_sources_are_summed_up() {
        let block = "{\"account_id\":\"a\",\"id\":\"q-1\",\"kind\":\"quantile\"}\\n\
                     {\"id\":\"q-2\",\"kind\":\"risk\",\"symbol\":\"BTC\"}\\n";
        let copy = format!("0\t12\tt.quantiles\t\\N\t\\N\t{block}\t\\N\t\\N\t\\N\t\\N\t\\N\t2\t11\t\\N\n\
                            4\t3\t\\N\tUSDT\tp-3\t{{}}\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n");
        let rows = RelayRows::from_copy(copy.as_bytes(), &topics()).unwrap();
        let got: Vec<_> = rows.rows.iter().map(|r| (r.id, rows.topics[r.topic].as_str(), rows.key(r),
                                                   rows.record_id(r), r.source)).collect();
        assert_eq!(got, vec![(12, "t.quantiles", "BTC", "q-2", Source::Outbox),
                             (3, "t.postings", "USDT", "p-3", Source::Postings)]);
        assert_eq!(rows.last_of_each_source(), vec![(Source::Outbox, 12), (Source::Postings, 3)]);
        assert_eq!(rows.most_of_one_source(), 1);
        assert_eq!(rows.topic_sources(), vec![("t.quantiles", Source::Outbox), ("t.postings", Source::Postings)]);
    }

    #[test]
    fn a_commit_gives_the_rows_a_read_after_its_cursors_gives() {
        let block = "{\"account_id\":\"a\",\"id\":\"q-1\",\"kind\":\"quantile\"}\n\
                     {\"id\":\"q-2\",\"kind\":\"risk\",\"symbol\":\"BTC\"}\n";
        let keys = "a\nq-1\nBTC\nq-2\n";
        let payload = "{\"account_id\":\"a-1\",\"note\":\"x\\\\\\\"y\"}";
        // a block of positions 2 to 4, 2 published already: a read gives 3 and 4, as does a commit of 3 and 4
        let postings = "{\"asset\":\"USDT\",\"id\":\"p-2\"}\n{\"asset\":\"USDT\",\"id\":\"p-3\",\"n\":\"a\\\"b\"}\n\
                        {\"asset\":\"BTC\",\"id\":\"p-4\"}\n";
        let committed: String = postings.split_inclusive('\n').skip(1).collect();
        let read = format!(
            "0\t12\tt.quantiles\t\\N\t\\N\t{}\t\\N\t\\N\t\\N\t\\N\t\\N\t2\t10\t{}\n\
             0\t13\tt.dead\tk\td-1\t{{\"a\":\"\\t\"}}\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n\
             1\t7\tfill\t\\N\t\\N\t{payload}\tin.fills\t2\t40\t1000\tab\t\\N\t\\N\t\\N\n\
             2\t5\t\\N\tF\tfl-5\t{{\"x\":1}}\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n\
             4\t4\t\\N\t\\N\t\\N\t{}\t\\N\t\\N\t\\N\t\\N\t\\N\t3\t2\t\\N\n",
            block.replace('\n', "\\n"), keys.replace('\n', "\\n"), postings.replace('\\', "\\\\").replace('\n', "\\n"));
        let journal = format!("7\tin.fills\t2\t40\tfill\t1000\t{payload}\tab\n");
        let fund = [(5, "F".to_string(), "fl-5".to_string(), "{\"x\":1}".to_string())];
        let commit = Commit { block: Some(Block { last_id: 12, topic: "t.quantiles", lines: block, keys }),
                              outbox_copy: b"13\tt.dead\tk\td-1\t{\"a\":\"\\t\"}\n", journal_copy: journal.as_bytes(), fund_ledger: &fund, adl_events: &[],
                              postings: Some((4, &committed)) };
        let handed = RelayRows::from_commit(&commit, &topics()).unwrap();
        assert_eq!(handed, RelayRows::from_copy(read.as_bytes(), &topics()).unwrap());
        assert_eq!(handed.last_of_each_source(), vec![(Source::Outbox, 13), (Source::Journal, 7),
                                                      (Source::FundLedger, 5), (Source::Postings, 4)]);
        let keyed: Vec<_> = handed.rows.iter().filter(|r| r.source == Source::Postings)
            .map(|r| (r.id, handed.key(r), handed.record_id(r))).collect();
        assert_eq!(keyed, vec![(3, "USDT", "p-3"), (4, "BTC", "p-4")]);
        assert!(RelayRows::from_commit(&Commit { postings: Some((4, "{\"id\":\"p-4\"}\n")), ..commit }, &topics())
            .is_err());
    }

    #[test]
    fn rows_already_published_are_passed_over() {
        let copy = "2\t5\t\\N\tBTC\tfl-5\t{}\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n\
                    2\t6\t\\N\tBTC\tfl-6\t{}\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n";
        let rows = RelayRows::from_copy(copy.as_bytes(), &topics()).unwrap();
        let counts = HashMap::from([("t.fund".to_string(), 1)]);
        let header = |source: Source| if source == Source::Outbox { "o" } else { "p" }.to_string();
        let at = |header: &str, last| HashMap::from([(("t.fund".to_string(), 0), (header.to_string(), last))]);
        let kept = |published| rows.without_published(&counts, header, &published).unwrap().rows.len();
        assert_eq!((kept(at("p", 5)), kept(at("o", 9)), kept(at("p", 6)), kept(HashMap::new())), (1, 2, 0, 2));
    }

    #[test]
    fn bad_copy_text_is_an_error() {
        assert!(RelayRows::from_copy(b"1\t2\n", &topics()).is_err());
        assert!(RelayRows::from_copy(b"9\t1\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n",
                                     &topics()).is_err());
    }
}
