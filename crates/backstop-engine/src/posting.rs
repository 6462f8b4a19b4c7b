//! A posting (docs/design.md section 10, "Postings") as the engine decides it, and its record in postings.jsonl:
//! written at once by the engine, or, in a replay that writes its own files, by the output writer in the chain's
//! order (crate::output_files), so that formatting and hashing the largest output run beside the rules. Both write
//! it with `Posting::write`: the same bytes either way.

use crate::canonical;
use crate::json::write_string;
use crate::engine::SCHEMA_VERSION;
use crate::ledger::{Account, Names};
use crate::numbers::{write_scaled_wide, S8};
use ethnum::I256;
use sha2::{Digest, Sha256};

#[derive(Clone, Debug)]
pub struct Posting {
    pub kind: &'static str,
    pub debit: Account,
    pub credit: Account,
    /// > 0, from the debit account to the credit account
    pub amount: I256,
    pub debit_balance_after: I256,
    pub credit_balance_after: I256,
    pub asset: u32,
    pub seq: u64,
    /// its place among the event's postings: id p-<seq>-<number>
    pub number: u64,
    pub ts: u64,
    /// the fund-ledger entry it belongs to (fl-<seq>-<n>), when it moves a fund's balance
    pub fund_entry: Option<u64>,
    /// in its batch's `Outputs::posting_ids`, shared with the event's other postings (nothing allocated per id)
    pub adl_event_id: Option<IdSpan>,
    pub fill_id: Option<IdSpan>,
    pub liquidation_id: Option<IdSpan>,
    pub transfer_id: Option<IdSpan>,
}

/// Where an id a posting names (its fill, transfer, liquidation or ADL event) sits in its batch's
/// `Outputs::posting_ids`: each event's ids are copied there once, so that a posting carries no allocation for the
/// engine's thread to make and the writer's to free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdSpan {
    start: u32,
    end: u32,
}

impl IdSpan {
    /// `text` appended to `ids`, and where it sits.
    pub fn push(ids: &mut Vec<u8>, text: &str) -> IdSpan {
        IdSpan::write(ids, |ids| ids.extend_from_slice(text.as_bytes()))
    }

    /// What `write` appends to `ids` (UTF-8 text), and where it sits.
    pub fn write(ids: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> IdSpan {
        let start = ids.len();
        write(ids);
        let offset = |at: usize| u32::try_from(at).expect("a batch's posting ids within u32 bytes");
        IdSpan { start: offset(start), end: offset(ids.len()) }
    }

    /// Its text in `ids` (the buffer it was pushed into).
    pub fn text(self, ids: &[u8]) -> &str {
        std::str::from_utf8(&ids[self.start as usize..self.end as usize]).expect("an id pushed as text")
    }
}

impl Posting {
    /// Its record appended to `out` (a line), chained after `head`, which becomes its hash. The record is canonical
    /// JSON written key by key in sorted order (the keys are this function's own; every text from the input is
    /// escaped, an account's name from its parts), the hash taken over it without `hash`, then written into the room
    /// left for it: what `write_chained` writes for the same record as a tree (a test holds them equal). Nothing is
    /// allocated per posting. `ids`: the buffer its ids were pushed into.
    pub fn write(&self, names: &Names, ids: &[u8], out: &mut Vec<u8>, head: &mut String) {
        let start = out.len();
        out.extend_from_slice(b"{\"adl_event_id\":");
        optional(out, ids, self.adl_event_id);
        out.extend_from_slice(b",\"amount\":");
        decimal(out, self.amount);
        out.extend_from_slice(b",\"asset\":\"");
        out.extend_from_slice(names.json_body(self.asset));
        out.push(b'"');
        out.extend_from_slice(b",\"credit_account\":");
        self.credit.write_json_name(names, out);
        out.extend_from_slice(b",\"credit_balance_after\":");
        decimal(out, self.credit_balance_after);
        out.extend_from_slice(b",\"debit_account\":");
        self.debit.write_json_name(names, out);
        out.extend_from_slice(b",\"debit_balance_after\":");
        decimal(out, self.debit_balance_after);
        out.extend_from_slice(b",\"fill_id\":");
        optional(out, ids, self.fill_id);
        out.extend_from_slice(b",\"fund_entry_id\":");
        match self.fund_entry {
            Some(entry) => id(out, b"fl-", self.seq, entry),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b',');
        let middle = out.len(); // the record without "hash" is out[start..middle] then what follows the hash
        out.extend_from_slice(b"\"hash\":\"");
        let digits = out.len();
        out.extend_from_slice(&[b'0'; 64]);
        out.extend_from_slice(b"\",");
        let after = out.len();
        out.extend_from_slice(b"\"id\":");
        id(out, b"p-", self.seq, self.number);
        out.extend_from_slice(b",\"kind\":");
        write_string(out, self.kind);
        out.extend_from_slice(b",\"liquidation_id\":");
        optional(out, ids, self.liquidation_id);
        out.extend_from_slice(b",\"prev_hash\":");
        write_string(out, head);
        out.extend_from_slice(b",\"schema_version\":");
        canonical::write_int(out, SCHEMA_VERSION);
        out.extend_from_slice(b",\"seq\":");
        canonical::write_int(out, i128::from(self.seq));
        out.extend_from_slice(b",\"transfer_id\":");
        optional(out, ids, self.transfer_id);
        out.extend_from_slice(b",\"ts\":");
        canonical::write_int(out, i128::from(self.ts));
        out.push(b'}');
        let mut hasher = Sha256::new();
        hasher.update(&out[start..middle]);
        hasher.update(&out[after..]);
        canonical::write_hex(&mut out[digits..digits + 64], &hasher.finalize());
        out.push(b'\n');
        head.clear();
        head.push_str(std::str::from_utf8(&out[digits..digits + 64]).expect("hex digits"));
    }
}

impl Posting {
    /// A hint, changing nothing: the names its record copies brought into the cache, in two steps (`body`: false,
    /// where each name's text starts; then true, the text), each some postings ahead of the one being written.
    pub fn prefetch_names(&self, names: &Names, body: bool) {
        self.debit.prefetch_json_name(names, body);
        self.credit.prefetch_json_name(names, body);
    }
}

fn optional(out: &mut Vec<u8>, ids: &[u8], value: Option<IdSpan>) {
    match value {
        Some(span) => write_string(out, span.text(ids)),
        None => out.extend_from_slice(b"null"),
    }
}

/// An amount (1e-8) as a JSON string.
fn decimal(out: &mut Vec<u8>, value: I256) {
    out.push(b'"');
    write_scaled_wide(out, value, S8);
    out.push(b'"');
}

/// An output id `<prefix><seq>-<number>` as a JSON string (digits only: nothing to escape).
fn id(out: &mut Vec<u8>, prefix: &[u8], seq: u64, number: u64) {
    out.push(b'"');
    out.extend_from_slice(prefix);
    canonical::write_int(out, i128::from(seq));
    out.push(b'-');
    canonical::write_int(out, i128::from(number));
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::J;
    use crate::wire::PositionSide;
    use proptest::prelude::*;
    
    /// The record as a tree through `write_chained`, as postings were written before `write` wrote them key by key.
    fn write_by_tree(posting: &Posting, names: &Names, ids: &[u8], out: &mut Vec<u8>, head: &mut String) {
        let (debit, credit) = (posting.debit.name(names), posting.credit.name(names));
        let id = format!("p-{}-{}", posting.seq, posting.number);
        let fund_entry_id = posting.fund_entry.map(|entry| format!("fl-{}-{entry}", posting.seq));
        let optional = |value: Option<IdSpan>| value.map_or(J::Null, |span| J::Str(span.text(ids)));
        let before = J::Obj(vec![
            ("adl_event_id", optional(posting.adl_event_id)),
            ("amount", J::Wide(posting.amount, S8)),
            ("asset", J::Str(names.name(posting.asset))),
            ("credit_account", J::Str(&credit)),
            ("credit_balance_after", J::Wide(posting.credit_balance_after, S8)),
            ("debit_account", J::Str(&debit)),
            ("debit_balance_after", J::Wide(posting.debit_balance_after, S8)),
            ("fill_id", optional(posting.fill_id)),
            ("fund_entry_id", fund_entry_id.as_deref().map_or(J::Null, J::Str)),
        ]);
        let after = J::Obj(vec![
            ("id", J::Str(&id)),
            ("kind", J::Str(posting.kind)),
            ("liquidation_id", optional(posting.liquidation_id)),
            ("prev_hash", J::Str(head)),
            ("schema_version", J::Int(SCHEMA_VERSION)),
            ("seq", J::Int(posting.seq as i128)),
            ("transfer_id", optional(posting.transfer_id)),
            ("ts", J::Int(posting.ts as i128)),
        ]);
        let hash = canonical::write_chained(out, &before, &after);
        out.push(b'\n');
        drop((before, after));
        *head = hash;
    }

    fn text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("(\\PC|[\"\\\\\\x00-\\x1f]){0,30}")
    }

    fn balance() -> impl Strategy<Value = I256> {
        prop_oneof![any::<i64>().prop_map(I256::from), any::<i128>().prop_map(|v| I256::from(v) * I256::from(1_000_000_007))]
    }

    proptest! {
        #[test]
        fn a_posting_written_key_by_key_is_the_tree_written_canonically(
            ids in (text(), text(), text(), text()), amounts in (balance(), balance(), balance()),
            account in "(\\PC|[\"\\\\]){0,24}", numbers in (any::<u64>(), any::<u64>(), any::<u64>()),
            fund_entry in proptest::option::of(any::<u64>()), side in 0..3usize,
        ) {
            let mut names = Names::default();
            let (account, asset, symbol) = (names.id(&account), names.id("USDT"), names.id("BTC\"USDT"));
            let side = [PositionSide::Both, PositionSide::Long, PositionSide::Short][side];
            let mut buffer = b"before".to_vec();
            let mut span = |text: Option<String>| text.map(|text| IdSpan::push(&mut buffer, &text));
            let ids = (span(ids.0), span(ids.1), span(ids.2), span(ids.3));
            let posting = Posting {
                kind: "liquidation_gain", debit: Account::Isolated { account, symbol, side },
                credit: Account::Wallet { account, asset }, amount: amounts.0,
                debit_balance_after: amounts.1, credit_balance_after: amounts.2, asset,
                seq: numbers.0, number: numbers.1, ts: numbers.2, fund_entry,
                adl_event_id: ids.0, fill_id: ids.1, liquidation_id: ids.2, transfer_id: ids.3,
            };
            let (mut by_keys, mut by_tree) = (b"earlier\n".to_vec(), b"earlier\n".to_vec());
            let (mut head_keys, mut head_tree) = (canonical::GENESIS_HASH.to_string(), canonical::GENESIS_HASH.to_string());
            for _ in 0..2 {
                posting.write(&names, &buffer, &mut by_keys, &mut head_keys);
                write_by_tree(&posting, &names, &buffer, &mut by_tree, &mut head_tree);
            }
            prop_assert_eq!(String::from_utf8(by_keys).unwrap(), String::from_utf8(by_tree).unwrap());
            prop_assert_eq!(head_keys, head_tree);
        }
    }
}
