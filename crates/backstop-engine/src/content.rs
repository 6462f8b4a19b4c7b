//! What "the same record" means (backstop.core.dedupe, docs/design.md §4.1): a record's identity and its key digest
//! K, its subject, and its content digest C, byte for byte as the reference computes them.
//!
//! The content document is written straight from the decoded record, its keys already in sorted order: every field
//! (`type` included) but an optional one at its default, decimals in the text of §9.5, ts an integer, nested
//! records as objects. Nothing is allocated per record: the caller lends a buffer.

use crate::idtable::Key;
use crate::json::write_string;
use crate::numbers::{write_scaled, S18, S8};
use crate::wire::{Body, ContractType, Dec, MarginMode, PositionSide, Record, Side, Surplus};
use sha2::{Digest, Sha256};
use std::io::Write;

/// The identity's kind, as its text and a reason name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    Fill,
    Transfer,
    Liquidation,
    Funding,
}

/// A subject's kind: the last record applied per subject is remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectKind {
    Fund,
    Instrument,
    Mark,
}

impl SubjectKind {
    pub fn name(self) -> &'static str {
        match self {
            SubjectKind::Fund => "fund",
            SubjectKind::Instrument => "instrument",
            SubjectKind::Mark => "mark",
        }
    }
}

/// What admission looks a record up by.
pub enum Admits<'r> {
    /// fill, transfer, liquidation, funding: its identity text written into the caller's buffer
    Identity(IdentityKind),
    /// fund, instrument, mark: the subject's name (the fund id, the symbol)
    Subject(SubjectKind, &'r str),
}

/// The record's identity text (`fill:` + fill_id, ..., `funding:` + symbol + `:` + ts) into `out`, or its subject.
pub fn admits<'r>(record: &'r Record<'_>, out: &mut Vec<u8>) -> Admits<'r> {
    out.clear();
    let (kind, id) = match &record.body {
        Body::Fill { fill_id, .. } => (IdentityKind::Fill, &**fill_id),
        Body::Transfer { transfer_id, .. } => (IdentityKind::Transfer, &**transfer_id),
        Body::Liquidation { liquidation_id, .. } => (IdentityKind::Liquidation, &**liquidation_id),
        Body::Funding { symbol, .. } => {
            write!(out, "funding:{symbol}:{}", record.ts).expect("a Vec");
            return Admits::Identity(IdentityKind::Funding);
        }
        Body::Fund { fund_id, .. } => return Admits::Subject(SubjectKind::Fund, fund_id),
        Body::Instrument { symbol, .. } => return Admits::Subject(SubjectKind::Instrument, symbol),
        Body::Mark { symbol, .. } => return Admits::Subject(SubjectKind::Mark, symbol),
    };
    out.extend_from_slice(record.type_name().as_bytes());
    out.push(b':');
    out.extend_from_slice(id.as_bytes());
    Admits::Identity(kind)
}

/// An identity as a reason names it (backstop.core.dedupe.describe): `fill id f-1`, `funding of X at ts 7`.
pub fn describe(identity: &[u8]) -> String {
    let text = String::from_utf8_lossy(identity);
    let (kind, rest) = text.split_once(':').unwrap_or((&text, ""));
    if kind == "funding" {
        let (symbol, ts) = rest.rsplit_once(':').unwrap_or((rest, ""));
        return format!("funding of {symbol} at ts {ts}");
    }
    format!("{kind} id {rest}")
}

/// K: the first 16 bytes of the SHA-256 of the identity text.
pub fn key_digest(identity: &[u8]) -> Key {
    let digest = Sha256::digest(identity);
    Key::from_bytes(digest[..16].try_into().expect("16 bytes"))
}

/// A record's admission digests, which depend on the record alone: its content digest C and, when it has an
/// identity, its key digest K (the decode stage computes them ahead of the rules: crate::decode_stage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digests {
    pub content: u64,
    pub key: Option<Key>,
}

impl Digests {
    /// `scratch`: a buffer lent for the documents (no allocation per record).
    pub fn of(record: &Record<'_>, scratch: &mut Vec<u8>) -> Digests {
        let content = content_digest(record, scratch);
        let key = match admits(record, scratch) {
            Admits::Identity(_) => Some(key_digest(scratch)),
            Admits::Subject(..) => None,
        };
        Digests { content, key }
    }
}

/// C: the first 8 bytes of the SHA-256 of the record's content document (written into `out`), read big-endian.
pub fn content_digest(record: &Record<'_>, out: &mut Vec<u8>) -> u64 {
    out.clear();
    content_document(record, out);
    let digest = Sha256::digest(out.as_slice());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A JSON object written key by key, in the order the caller gives them (sorted).
struct Object<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Object<'o> {
    fn open(out: &'o mut Vec<u8>) -> Object<'o> {
        out.push(b'{');
        Object { out, first: true }
    }
    fn key(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }
    fn text(&mut self, name: &str, value: &str) {
        write_string(self.key(name), value);
    }
    fn decimal(&mut self, name: &str, value: Dec, scale: u32) {
        let out = self.key(name);
        out.push(b'"');
        write_scaled(out, value.value, scale);
        out.push(b'"');
    }
    fn int(&mut self, name: &str, value: u64) {
        write!(self.key(name), "{value}").expect("a Vec");
    }
    fn close(self) {
        self.out.push(b'}');
    }
}

/// The content document (backstop.core.dedupe.content_document in canonical JSON): keys sorted by their bytes.
pub fn content_document(record: &Record<'_>, out: &mut Vec<u8>) {
    let mut o = Object::open(out);
    let ts = record.ts;
    match &record.body {
        Body::Fund { fund_id, settle_asset, surplus, max_inventory_ratio } => {
            o.text("fund_id", fund_id);
            o.decimal("max_inventory_ratio", *max_inventory_ratio, S18);
            o.text("settle_asset", settle_asset);
            o.text("surplus", if *surplus == Surplus::Fund { "fund" } else { "trader" });
        }
        Body::Instrument {
            symbol, settle_asset, tick_size, lot_size, tiers, liquidation_fee_rate, fund_id, mark_tolerance,
            contract_type, contract_size,
        } => {
            // contract version 2 fields holding their defaults (linear, no size) are left out
            if let Some(contract_size) = contract_size {
                o.decimal("contract_size", *contract_size, S8);
            }
            if *contract_type != ContractType::Linear {
                o.text("contract_type", contract_type.name());
            }
            o.text("fund_id", fund_id);
            o.decimal("liquidation_fee_rate", *liquidation_fee_rate, S18);
            o.decimal("lot_size", *lot_size, S8);
            if let Some(mark_tolerance) = mark_tolerance {  // absent: its default, left out
                o.decimal("mark_tolerance", *mark_tolerance, S18);
            }
            o.text("settle_asset", settle_asset);
            o.text("symbol", symbol);
            o.decimal("tick_size", *tick_size, S8);
            let out = o.key("tiers");
            out.push(b'[');
            for (index, tier) in tiers.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                let mut t = Object::open(out);
                match tier.maint_amount {  // a nested record holds all its fields: an omitted one is null
                    Some(maint_amount) => t.decimal("maint_amount", maint_amount, S8),
                    None => t.key("maint_amount").extend_from_slice(b"null"),
                }
                t.decimal("max_notional", tier.max_notional, S8);
                t.decimal("mmr", tier.mmr, S18);
                t.close();
            }
            out.push(b']');
        }
        Body::Transfer { transfer_id, account_id, asset, amount } => {
            o.text("account_id", account_id);
            o.decimal("amount", *amount, S8);
            o.text("asset", asset);
            o.text("transfer_id", transfer_id);
        }
        Body::Fill { fill_id, account_id, symbol, side, qty, price, fee, margin_mode, leverage, position_side } => {
            o.text("account_id", account_id);
            o.decimal("fee", *fee, S8);
            o.text("fill_id", fill_id);
            o.decimal("leverage", *leverage, S8);
            o.text("margin_mode", if *margin_mode == MarginMode::Cross { "cross" } else { "isolated" });
            if *position_side != PositionSide::Both {  // one-way mode, the default: left out
                o.text("position_side", position_side.name());
            }
            o.decimal("price", *price, S8);
            o.decimal("qty", *qty, S8);
            o.text("side", if *side == Side::Buy { "buy" } else { "sell" });
            o.text("symbol", symbol);
        }
        Body::Mark { symbol, mark_price, index_price } => {
            if let Some(index_price) = index_price {
                o.decimal("index_price", *index_price, S8);
            }
            o.decimal("mark_price", *mark_price, S8);
            o.text("symbol", symbol);
        }
        Body::Funding { symbol, rate, mark_price } => {
            o.decimal("mark_price", *mark_price, S8);
            o.decimal("rate", *rate, S18);
            o.text("symbol", symbol);
        }
        Body::Liquidation {
            liquidation_id, account_id, symbol, qty, mark_price, bankruptcy_price, executions, position_side,
        } => {
            o.text("account_id", account_id);
            if let Some(bankruptcy_price) = bankruptcy_price {
                o.decimal("bankruptcy_price", *bankruptcy_price, S8);
            }
            if !executions.is_empty() {
                let out = o.key("executions");
                out.push(b'[');
                for (index, execution) in executions.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    let mut e = Object::open(out);
                    e.decimal("price", execution.price, S8);
                    e.decimal("qty", execution.qty, S8);
                    e.close();
                }
                out.push(b']');
            }
            o.text("liquidation_id", liquidation_id);
            o.decimal("mark_price", *mark_price, S8);
            if *position_side != PositionSide::Both {
                o.text("position_side", position_side.name());
            }
            o.decimal("qty", *qty, S8);
            o.text("symbol", symbol);
        }
    }
    o.int("ts", ts);
    o.text("type", record.type_name());
    o.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode_line;

    fn digests(line: &str) -> (String, String, String) {
        let record = decode_line(line.as_bytes()).unwrap();
        let mut identity = Vec::new();
        let Admits::Identity(_) = admits(&record, &mut identity) else { panic!("no identity") };
        let key = key_digest(&identity).to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let mut document = Vec::new();
        let content = content_digest(&record, &mut document);
        (key, format!("{content:016x}"), String::from_utf8(document).unwrap())
    }

    #[test]
    fn the_vectors_of_the_design_document() {
        // docs/design.md §4.1
        let (key, content, document) = digests(
            r#"{"type":"liquidation","ts":1760140860100,"liquidation_id":"liq-iso","account_id":"iso","symbol":"BTCUSDT","qty":"1.0","mark_price":"108200","executions":[]}"#);
        assert_eq!(document, r#"{"account_id":"iso","liquidation_id":"liq-iso","mark_price":"108200","qty":"1","symbol":"BTCUSDT","ts":1760140860100,"type":"liquidation"}"#);
        assert_eq!((key.as_str(), content.as_str()), ("04fd283a50e4ee7be09771f92471f478", "1100a3508c595ff6"));
        let (key, content, _) = digests(
            r#"{"type":"funding","ts":1760169600000,"symbol":"BTCUSDT","rate":"0.0001","mark_price":"108000"}"#);
        assert_eq!((key.as_str(), content.as_str()), ("f515a5751b5c36f73149716547327148", "e424f27826fb8ac0"));
    }

    #[test]
    fn every_field_in_sorted_order_and_defaults_left_out() {
        let (_, _, document) = digests(
            r#"{"type":"fill","ts":1,"fill_id":"f","account_id":"u","symbol":"X","side":"sell","qty":"1.50","price":"2","fee":"-0.0","margin_mode":"isolated","leverage":"10.0"}"#);
        assert_eq!(document, r#"{"account_id":"u","fee":"0","fill_id":"f","leverage":"10","margin_mode":"isolated","price":"2","qty":"1.5","side":"sell","symbol":"X","ts":1,"type":"fill"}"#);
        let record = decode_line(br#"{"type":"mark","ts":2,"symbol":"X","mark_price":"5","index_price":null}"#).unwrap();
        let mut out = Vec::new();
        content_document(&record, &mut out);
        assert_eq!(out, br#"{"mark_price":"5","symbol":"X","ts":2,"type":"mark"}"#);
        out.clear();
        let record = decode_line(br#"{"type":"instrument","ts":3,"symbol":"X","settle_asset":"USDT","tick_size":"0.1","lot_size":"0.001","tiers":[{"max_notional":"1000","mmr":"0.005","maint_amount":"0"}],"liquidation_fee_rate":"0.0125","fund_id":"M"}"#).unwrap();
        content_document(&record, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"fund_id":"M","liquidation_fee_rate":"0.0125","lot_size":"0.001","settle_asset":"USDT","symbol":"X","tick_size":"0.1","tiers":[{"maint_amount":"0","max_notional":"1000","mmr":"0.005"}],"ts":3,"type":"instrument"}"#);
    }

    #[test]
    fn identities_and_how_reasons_name_them() {
        let record = decode_line(br#"{"type":"funding","ts":7,"symbol":"BTCUSDT","rate":"0.1","mark_price":"1"}"#).unwrap();
        let mut identity = Vec::new();
        admits(&record, &mut identity);
        assert_eq!(identity, b"funding:BTCUSDT:7");
        assert_eq!(describe(&identity), "funding of BTCUSDT at ts 7");
        assert_eq!(describe(b"fill:a:b"), "fill id a:b");
    }
}
