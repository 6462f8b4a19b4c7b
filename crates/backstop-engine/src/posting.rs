//! A posting (docs/design.md section 10, "Postings") as the engine decides it, and its record in postings.jsonl:
//! written at once by the engine, or, in a replay that writes its own files, by the output writer in the chain's
//! order (crate::output_files), so that formatting and hashing the largest output run beside the rules. Both write
//! it with `Posting::write`: the same bytes either way.

use crate::canonical::{self, J};
use crate::engine::SCHEMA_VERSION;
use crate::ledger::{Account, Names};
use crate::numbers::S8;
use ethnum::I256;
use std::fmt::Write as _;
use std::sync::Arc;

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
    /// shared with the event's other postings (one allocation per event, none per posting)
    pub adl_event_id: Option<Arc<str>>,
    pub fill_id: Option<Arc<str>>,
    pub liquidation_id: Option<Arc<str>>,
    pub transfer_id: Option<Arc<str>>,
}

impl Posting {
    /// Its record appended to `out` (a line), chained after `head`, which becomes its hash. `texts`: a buffer kept
    /// across postings for the names and ids (no allocation per posting).
    pub fn write(&self, names: &Names, texts: &mut String, out: &mut Vec<u8>, head: &mut String) {
        texts.clear();
        self.debit.push_name(names, texts);
        let debit_end = texts.len();
        self.credit.push_name(names, texts);
        let credit_end = texts.len();
        let _ = write!(texts, "p-{}-{}", self.seq, self.number);
        let id_end = texts.len();
        if let Some(entry) = self.fund_entry {
            let _ = write!(texts, "fl-{}-{entry}", self.seq);
        }
        let (debit_name, credit_name) = (&texts[..debit_end], &texts[debit_end..credit_end]);
        let id = &texts[credit_end..id_end];
        let fund_entry_id = self.fund_entry.map(|_| &texts[id_end..]);
        fn optional(value: &Option<Arc<str>>) -> J<'_> {
            value.as_deref().map_or(J::Null, J::Str)
        }
        // the keys before "hash" and after it: the record is written once, the hash taken over both halves
        let before = J::Obj(vec![
            ("adl_event_id", optional(&self.adl_event_id)),
            ("amount", J::Wide(self.amount, S8)),
            ("asset", J::Str(names.name(self.asset))),
            ("credit_account", J::Str(credit_name)),
            ("credit_balance_after", J::Wide(self.credit_balance_after, S8)),
            ("debit_account", J::Str(debit_name)),
            ("debit_balance_after", J::Wide(self.debit_balance_after, S8)),
            ("fill_id", optional(&self.fill_id)),
            ("fund_entry_id", fund_entry_id.map_or(J::Null, J::Str)),
        ]);
        let after = J::Obj(vec![
            ("id", J::Str(id)),
            ("kind", J::Str(self.kind)),
            ("liquidation_id", optional(&self.liquidation_id)),
            ("prev_hash", J::Str(head)),
            ("schema_version", J::Int(SCHEMA_VERSION)),
            ("seq", J::Int(self.seq as i128)),
            ("transfer_id", optional(&self.transfer_id)),
            ("ts", J::Int(self.ts as i128)),
        ]);
        let hash = canonical::write_chained(out, &before, &after);
        out.push(b'\n');
        *head = hash;
    }
}
