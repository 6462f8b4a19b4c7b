//! The service's outbox rows for a consumed batch (backstop.pipeline.ingest's order), as COPY text: topic, key,
//! record id and the record's canonical JSON, one row per output record, in the order the reference engine writes
//! them: each journal record, then what its record caused (fund-ledger entries, ADL events, postings, quantile
//! records), a dead letter after the rows of the seq it was decided after.

use crate::json::{self, Dialect, Value};
use crate::projection::Line;

/// The output lines of one batch, as `Processor::apply_records` returns them.
pub struct Outputs<'a> {
    pub journal: &'a [u8],
    pub fund_ledger: &'a [u8],
    pub adl_events: &'a [u8],
    pub postings: &'a [u8],
    pub adl_quantiles: &'a [u8],
    pub dead_letters: &'a [u8],
}

fn field<'v, 'a>(value: &'v Value<'a>, name: &str) -> Option<&'v Value<'a>> {
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

fn int(value: Option<&Value<'_>>) -> u64 {
    match value {
        Some(Value::Int(digits)) => std::str::from_utf8(digits).ok().and_then(|t| t.parse().ok()).unwrap_or(0),
        _ => 0,
    }
}

/// backstop.pipeline.topics.input_key_field
fn input_key_field(record_type: &str) -> &'static str {
    match record_type {
        "fund" => "fund_id",
        "mark" | "funding" | "instrument" => "symbol",
        _ => "account_id",
    }
}

struct Row {
    seq: u64,
    kind: u8,
    topic: &'static str,
    key: String,
    id: String,
    line: usize,
}

/// The outbox rows as COPY text (columns topic, key, record_id, payload) under the topic prefix.
pub fn copy_text(prefix: &str, outputs: &Outputs<'_>) -> Vec<u8> {
    let sources: [(&[u8], u8, &'static str); 6] = [
        (outputs.journal, 0, "journal"),
        (outputs.fund_ledger, 1, "fund-ledger"),
        (outputs.adl_events, 2, "adl-events"),
        (outputs.postings, 3, "postings"),
        (outputs.adl_quantiles, 4, "adl-quantiles"),
        (outputs.dead_letters, 5, "dead-letter"),
    ];
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    for (blob, kind, topic) in sources {
        for line in blob.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let document = json::parse(line, Dialect::File).expect("the engine's own canonical JSON");
            let get = |name: &str| field(&document, name);
            let (seq, key) = match kind {
                0 => {
                    let record = get("record");
                    let record_type = text(record.and_then(|r| field(r, "type")));
                    (int(get("seq")), text(record.and_then(|r| field(r, input_key_field(&record_type)))))
                }
                1 => (int(get("seq")), text(get("fund_id"))),
                2 => (int(get("seq")), text(get("account_id"))),
                3 => (int(get("seq")), text(get("asset"))),
                4 => {
                    let by = if text(get("kind")) == "quantile" { "account_id" } else { "symbol" };
                    (int(get("seq")), text(get(by)))
                }
                _ => (int(get("after_seq")),
                      format!("{}:{}", text(get("source_topic")), text(get("source_partition")))),
            };
            rows.push(Row { seq, kind, topic, key, id: text(get("id")), line: lines.len() });
            lines.push(line);
        }
    }
    rows.sort_by_key(|row| (row.seq, row.kind)); // stable: each kind keeps its own order
    let mut out = Vec::with_capacity(lines.iter().map(|line| line.len() + 64).sum());
    for row in rows {
        let topic = format!("{prefix}{}", row.topic);
        Line::new(&mut out).text(&topic).text(&row.key).text(&row.id)
            .text(std::str::from_utf8(lines[row.line]).expect("UTF-8 JSON")).end();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_reference_order() {
        let journal = b"{\"id\":\"j-1\",\"record\":{\"account_id\":\"a\",\"type\":\"transfer\"},\"seq\":1}\n\
                        {\"id\":\"j-2\",\"record\":{\"symbol\":\"S\",\"type\":\"mark\"},\"seq\":2}\n";
        let postings = b"{\"asset\":\"USDT\",\"id\":\"p-1-0\",\"seq\":1}\n";
        let dead = b"{\"after_seq\":1,\"id\":\"dl-t-0-5\",\"source_partition\":0,\"source_topic\":\"t\"}\n";
        let outputs = Outputs { journal, fund_ledger: b"", adl_events: b"", postings, adl_quantiles: b"",
                                dead_letters: dead };
        let text = String::from_utf8(copy_text("x.", &outputs)).unwrap();
        let ids: Vec<(&str, &str, &str)> = text.lines().map(|l| {
            let mut parts = l.split('\t');
            (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap())
        }).collect();
        assert_eq!(ids, vec![("x.journal", "a", "j-1"), ("x.postings", "USDT", "p-1-0"),
                             ("x.dead-letter", "t:0", "dl-t-0-5"), ("x.journal", "S", "j-2")]);
    }
}
