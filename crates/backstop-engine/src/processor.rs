//! The journal processor (backstop.core.processor): sequence, apply, count, over a batch of journal lines, with the
//! outputs as canonical bytes; and the documents of the state (backstop.core.documents and backstop.core.snapshot):
//! the summary, accounts.json, the state hash, snapshots (with their identity file) and their restore. What is a
//! duplicate, late or ahead is the engine's to decide (crate::admission).

use crate::admission::{self, Kind as RejectionKind, Refusal};
use crate::adl::{Policy, WindowMax};
use crate::canonical::{self, J};
use crate::clock::{JournalClock, SymbolClock};
use crate::engine::{
    isolated_account, mode_name, money, money_wide, Engine, Outputs, FUND_ACCOUNT_PREFIX, SCHEMA_VERSION,
};
use crate::content::Digests;
use crate::decode_stage::{self, Line, Stage};
use crate::idtable::IdTable;
use crate::json::{self, Dialect, Value};
use crate::ledger::{Account, Names};
use crate::numbers::{self, text, text_512, text_wide, Kind, Rounding, Wide, S16, S18, S8};
use crate::valuation::{Valuation, LINEAR};
use crate::quantiles::SideView;
use crate::state::{
    position_label, FundSpec, FundState, Instrument, Lot, Position, Side, Tier, DEFAULT_MARK_TOLERANCE,
};
use crate::simulation::{self, Simulation};
use crate::wire::{self, Body, Dec, MarginMode, PositionSide, Record, Surplus};
use ethnum::I256;
use rustc_hash::FxHashMap as HashMap;

/// 3: the journal clock, the per-symbol clocks and what admission holds in the document; 4: the postings head, the
/// newest ts applied and the ADL quantiles published.
pub const SNAPSHOT_VERSION: i128 = 4;
/// Bytes of a bad line kept in its dead letter.
pub const RAW_KEEP_BYTES: usize = 4096;

/// Bytes of a consumed record kept in its dead letter (backstop.pipeline.ingest.RAW_KEEP_BYTES).
pub const KAFKA_RAW_KEEP_BYTES: usize = 64 * 1024;
const INPUT_SUFFIXES: [(&str, &str); 7] = [("fund", "funds"), ("instrument", "instruments"), ("transfer", "transfers"),
                                           ("fill", "fills"), ("mark", "marks"), ("funding", "funding"),
                                           ("liquidation", "liquidations")];

/// The record type an input topic under `prefix` carries (None: not an input topic).
pub fn input_type(topic: &str, prefix: &str) -> Option<&'static str> {
    let suffix = topic.strip_prefix(prefix)?;
    INPUT_SUFFIXES.iter().find(|(_, s)| *s == suffix).map(|(t, _)| *t)
}

/// One consumed Kafka record.
pub struct Consumed<'a> {
    pub topic: &'a str,
    pub partition: i64,
    pub offset: i64,
    pub value: Option<&'a [u8]>,
    /// The reason the engine failed on this record in an earlier run (the service's quarantine): once it decodes it
    /// is dead-lettered as `engine_error`, never applied, as backstop.pipeline.ingest does.
    pub quarantined: Option<&'a str>,
}

/// What one consumed batch produced (see backstop.engines.RecordsResult): the journal topic's records, the outputs,
/// the dead-letter topic's records, duplicates per record type.
#[derive(Default, Debug)]
pub struct RecordsBatch {
    pub journal: Vec<u8>,
    pub outputs: Outputs,
    pub dead_letters: Vec<u8>,
    pub duplicates: Vec<(&'static str, u64)>,
    /// the identities the batch's journal rows hold, admission::HELD_ROW_BYTES each
    pub held: Vec<u8>,
}

/// A reason as a dead letter carries it (backstop.core.errors.one_line), one line for every reader: C0, DEL and C1
/// written as \xNN, U+2028 and U+2029 as \uNNNN (PostgreSQL text holds no NUL).
fn escaped_reason(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    for character in reason.chars() {
        match character as u32 {
            code @ (0..=31 | 127..=159) => out.push_str(&format!("\\x{code:02x}")),
            code @ (0x2028 | 0x2029) => out.push_str(&format!("\\u{code:04x}")),
            _ => out.push(character),
        }
    }
    out
}

/// A record of the dead-letter topic (backstop.pipeline.ingest.DeadLetterRecord), decided after `after_seq`.
fn kafka_dead_letter(out: &mut Vec<u8>, record: &Consumed<'_>, kind: RejectionKind, reason: &str, after_seq: u64) {
    let kept = KeptRaw::of(record.value.unwrap_or_default(), KAFKA_RAW_KEEP_BYTES);
    let id = format!("dl-{}-{}-{}", record.topic, record.partition, record.offset);
    let reason = escaped_reason(reason);
    let document = J::Obj(vec![
        ("after_seq", J::Int(after_seq as i128)),
        ("id", J::Str(&id)),
        ("kind", J::Str(kind.name())),
        ("raw", J::Str(&kept.text)),
        ("raw_base64", kept.exact.as_deref().map_or(J::Null, J::Str)),
        ("raw_truncated", J::Bool(kept.truncated)),
        ("reason", J::Str(&reason)),
        ("schema_version", J::Int(SCHEMA_VERSION)),
        ("source_offset", J::Int(record.offset as i128)),
        ("source_partition", J::Int(record.partition as i128)),
        ("source_topic", J::Str(record.topic)),
    ]);
    canonical::write(out, &document);
    out.push(b'\n');
}

/// A snapshot due in a batch: its seq, its document, and how many identities its identity file holds (those held
/// by a seq at most its own: `Processor::write_ids` writes the file after the batch, identities are never dropped).
#[derive(Debug)]
pub struct SnapshotDue {
    pub seq: u64,
    pub document: Vec<u8>,
    pub ids: u64,
}

/// What one batch of lines produced (see backstop.engines.BatchResult).
#[derive(Default, Debug)]
pub struct Batch {
    pub outputs: Outputs,
    pub dead_letters: Vec<u8>,
    pub snapshots: Vec<SnapshotDue>,
    pub stopped: Option<(u64, String)>,
    /// the applied records' lines (with `Processor::journal`): the input line as given, a decided liquidation as
    /// the simulation writes it
    pub journal: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct Processor {
    pub engine: Engine,
    pub duplicates: u64,
    pub rejected: u64,
    /// of the rejected: an identity held with other content
    pub conflicting_duplicates: u64,
    pub fund_entries: u64,
    pub adl_events: u64,
    pub findings: u64,
    pub postings: u64,
    pub adl_quantiles: u64,
    pub strict: bool,
    pub snapshot_every: u64,
    /// Check after every batch that the ledger's balances sum to zero (--check-conservation).
    pub check_conservation: bool,
    /// Simulation mode (crate::simulation): liquidations decided after each mark, the log's own dropped.
    pub simulation: Option<Simulation>,
    /// Write each applied record's line to `Batch::journal` (a what-if run's journal.jsonl).
    pub journal: bool,
    /// When a batch of lines is decoded on a thread of its own, ahead of the rules (crate::decode_stage).
    pub decode_stage: Stage,
    /// The record a batch is at while it runs (its journal line in apply_lines, its index in the batch in
    /// apply_records), None between batches: a panic inside the rules names the record (backstop-py catches it, and
    /// the engine is never used again).
    pub applying: Option<u64>,
    /// A fault hook for tests (backstop.faults.engine_panic_on), None otherwise: panic right after the record with
    /// this id (fill, transfer or liquidation id) has applied, as a bug in the rules would, its effects half made.
    pub panic_on: Option<String>,
    next_snapshot: u64,
}

fn counts(outputs: &Outputs) -> [u64; 5] {
    [outputs.fund_entries, outputs.adl_count, outputs.finding_count, outputs.posting_count, outputs.quantile_count]
}

/// A dead letter's raw input, at most `keep` bytes of it (backstop.core.records.kept_raw): as text (a byte that is
/// not UTF-8 as U+FFFD), the same bytes in base64 when they are not UTF-8, and whether it was cut.
struct KeptRaw<'a> {
    text: std::borrow::Cow<'a, str>,
    exact: Option<String>,
    truncated: bool,
}

impl KeptRaw<'_> {
    fn of(raw: &[u8], keep: usize) -> KeptRaw<'_> {
        use base64::Engine as _;
        let kept = &raw[..raw.len().min(keep)];
        let text = String::from_utf8_lossy(kept);
        let exact = matches!(text, std::borrow::Cow::Owned(_))
            .then(|| base64::engine::general_purpose::STANDARD.encode(kept));
        KeptRaw { text, exact, truncated: raw.len() > keep }
    }
}

fn dead_letter(out: &mut Vec<u8>, line: u64, kind: RejectionKind, reason: &str, raw: &[u8]) {
    let kept = KeptRaw::of(raw, RAW_KEEP_BYTES);
    let reason = escaped_reason(reason);
    let document = J::Obj(vec![
        ("kind", J::Str(kind.name())),
        ("line", J::Int(line as i128)),
        ("reason", J::Str(&reason)),
        ("raw", J::Str(&kept.text)),
        ("raw_base64", kept.exact.as_deref().map_or(J::Null, J::Str)),
        ("raw_truncated", J::Bool(kept.truncated)),
    ]);
    canonical::write(out, &document);
    out.push(b'\n');
}

impl Processor {
    pub fn new(strict: bool, snapshot_every: u64) -> Processor {
        Processor { strict, snapshot_every, next_snapshot: snapshot_every, ..Processor::default() }
    }

    /// Identities held per batch: the caller gives each batch's (`begin_batch`); no snapshots.
    pub fn with_held_per_batch(mut self) -> Processor {
        assert!(self.snapshot_every == 0, "an engine whose identities are held per batch writes no snapshots");
        self.engine.admission.per_batch = true;
        self
    }

    /// The held identities among the next batch's records (per batch only; rows of admission::HELD_ROW_BYTES).
    pub fn begin_batch(&mut self, held: &[u8]) -> Result<(), String> {
        self.engine.admission.begin_batch(held)
    }

    /// A refusal counted: Err(kind, reason) for a dead letter, Ok for a duplicate.
    fn refused(&mut self, refusal: Refusal) -> Result<(), (RejectionKind, String)> {
        match refusal {
            Refusal::Duplicate => {
                self.duplicates += 1;
                Ok(())
            }
            Refusal::Rejected(kind, reason) => {
                self.rejected += 1;
                if kind == RejectionKind::ConflictingDuplicate {
                    self.conflicting_duplicates += 1;
                }
                Err((kind, reason))
            }
        }
    }

    pub fn events_applied(&self) -> u64 {
        self.engine.last_seq
    }

    /// Apply whole journal lines (the first numbered `first_line`) by the journal reader's rule
    /// (backstop.adapters.journal_file): a record is the bytes between two `\n`, a `\r` right before the `\n` is
    /// dropped, blank lines are counted and skipped.
    pub fn apply_lines(&mut self, chunk: &[u8], first_line: u64) -> Batch {
        self.apply_lines_into(chunk, first_line, Outputs::default())
    }

    /// `apply_lines` writing the outputs into `outputs` (empty; its buffers' memory reused: crate::output_files).
    pub fn apply_lines_into(&mut self, chunk: &[u8], first_line: u64, outputs: Outputs) -> Batch {
        let mut batch = Batch { outputs, ..Batch::default() };
        self.apply_chunk(chunk, first_line, &mut batch);
        if self.check_conservation {
            let total = self.engine.ledger.sum();
            assert!(total == Wide::ZERO, "ledger does not balance: sum of balances is {}", text_512(total, S8));
        }
        batch
    }

    fn apply_chunk(&mut self, chunk: &[u8], first_line: u64, batch: &mut Batch) {
        decode_stage::each_line(chunk, first_line, self.decode_stage, |line, after| {
            if let Some(Line { decoded: Ok((next, digests)), .. }) = after.first() {
                // what the next line will read, brought into the cache while this one applies
                if let Some(key) = digests.key {
                    self.engine.admission.ids.prefetch(key); // its identity's slot
                }
                if let Body::Fill { account_id, .. } | Body::Liquidation { account_id, .. } = &next.body {
                    self.engine.prefetch_account(account_id); // its account's position keys and wallet
                }
            }
            self.applying = Some(line.number);
            let Err((kind, reason)) = self.apply_line(&line, batch) else { return true };
            dead_letter(&mut batch.dead_letters, line.number, kind, &reason, line.raw);
            if self.strict {
                batch.stopped = Some((line.number, reason));
                return false;
            }
            true
        });
        self.applying = None;
    }

    /// Apply a consumed Kafka batch (backstop.pipeline.ingest.ingest_batch): the topic names the type; each
    /// accepted record becomes a journal row (and its identity a row of `held`), each bad one a dead letter of the
    /// dead-letter topic.
    pub fn apply_records(&mut self, records: &[Consumed<'_>], prefix: &str) -> RecordsBatch {
        let mut batch = RecordsBatch::default();
        let mut duplicates: Vec<(&'static str, u64)> = Vec::new();
        for (index, record) in records.iter().enumerate() {
            self.applying = Some(index as u64);
            let record_type = input_type(record.topic, prefix);
            let after_seq = self.engine.last_seq;
            let Some(record_type) = record_type else {
                kafka_dead_letter(&mut batch.dead_letters, record, RejectionKind::Invalid,
                                  &format!("not an input topic: {}", record.topic), after_seq);
                continue;
            };
            let (decoded, payload) = match wire::decode_consumed(record.value, record_type, record.topic) {
                Ok(decoded) => decoded,
                Err(reason) => {
                    self.rejected += 1;
                    kafka_dead_letter(&mut batch.dead_letters, record, RejectionKind::Invalid, &reason, after_seq);
                    continue;
                }
            };
            if let Some(reason) = record.quarantined {
                self.rejected += 1;
                kafka_dead_letter(&mut batch.dead_letters, record, RejectionKind::EngineError, reason, after_seq);
                continue;
            }
            let before = counts(&batch.outputs);
            let seq = self.engine.last_seq + 1;
            let applied = self.engine.apply(&decoded, seq, &mut batch.outputs);
            if applied.is_ok() {
                self.fault_hook(&decoded);
            }
            if let Err(refusal) = applied {
                match self.refused(refusal) {
                    Ok(()) => match duplicates.iter_mut().find(|(t, _)| *t == record_type) {
                        Some((_, count)) => *count += 1,
                        None => duplicates.push((record_type, 1)),
                    },
                    Err((kind, reason)) => {
                        kafka_dead_letter(&mut batch.dead_letters, record, kind, &reason, after_seq)
                    }
                }
                continue;
            }
            if let Some((key, content)) = self.engine.admission.last_held {
                admission::pack_row(&mut batch.held, key, content, seq);
            }
            self.count(before, &batch.outputs);
            let id = format!("j-{seq}");
            let payload_hash = canonical::sha256_hex(&payload);
            let row = J::Obj(vec![
                ("id", J::Str(&id)),
                ("payload_hash", J::Str(&payload_hash)),
                ("record", J::Raw(&payload)),
                ("schema_version", J::Int(1)),
                ("seq", J::Int(seq as i128)),
                ("source_offset", J::Int(record.offset as i128)),
                ("source_partition", J::Int(record.partition as i128)),
                ("source_topic", J::Str(record.topic)),
                ("ts", J::Int(decoded.ts as i128)),
            ]);
            canonical::write(&mut batch.journal, &row);
            batch.journal.push(b'\n');
        }
        self.applying = None;
        batch.duplicates = duplicates;
        batch
    }

    /// The fault hook (`panic_on`): never fires unless a test set it.
    fn fault_hook(&self, record: &Record<'_>) {
        let Some(wanted) = &self.panic_on else { return };
        let id = match &record.body {
            Body::Transfer { transfer_id: id, .. } | Body::Fill { fill_id: id, .. }
            | Body::Liquidation { liquidation_id: id, .. } => id,
            _ => return,
        };
        if id == wanted {
            panic!("fault hook: panic after applying record {wanted}");
        }
    }

    fn apply_line(&mut self, line: &Line<'_>, batch: &mut Batch) -> Result<(), (RejectionKind, String)> {
        let (record, digests) = match &line.decoded {
            Ok(decoded) => decoded,
            Err(reason) => {
                self.rejected += 1;
                return Err((RejectionKind::Invalid, reason.clone()));
            }
        };
        if self.simulation.is_some() && matches!(record.body, Body::Liquidation { .. }) {
            return Ok(()); // simulation mode decides liquidations itself: the log's own are dropped
        }
        let applied = self.apply_record(record, Some(*digests), line.raw, line.number, batch)?;
        if let (true, Some(simulation), Body::Mark { symbol, .. }) = (applied, self.simulation, &record.body) {
            self.simulate(simulation, symbol, record.ts, line.number, batch);
        }
        Ok(())
    }

    /// Apply one decoded record (its line `raw`): Ok(true) applied, Ok(false) a duplicate.
    /// `digests`: the record's admission digests when the decode stage computed them.
    fn apply_record(&mut self, record: &Record<'_>, digests: Option<Digests>, raw: &[u8], number: u64,
                    batch: &mut Batch) -> Result<bool, (RejectionKind, String)> {
        let before = counts(&batch.outputs);
        let seq = self.engine.last_seq + 1;
        if let Err(refusal) = self.engine.apply_digested(record, digests, seq, &mut batch.outputs) {
            return self.refused(refusal).map(|()| false);
        }
        self.fault_hook(record);
        self.count(before, &batch.outputs);
        if self.journal {
            batch.journal.extend_from_slice(raw);
            batch.journal.push(b'\n');
        }
        let seq = self.engine.last_seq;
        if self.snapshot_every > 0 && seq >= self.next_snapshot {
            let (mut document, ids) = self.snapshot_json(number);
            document.push(b'\n');
            batch.snapshots.push(SnapshotDue { seq, document, ids });
            self.next_snapshot = seq + self.snapshot_every;
        }
        Ok(true)
    }

    /// Simulation mode after an applied mark of `symbol` (journal line `number`): each liquidatable position of the
    /// symbol liquidated by the order the simulation decides, applied as a journal line of its own (a rejected one
    /// is a dead letter of the mark's line).
    fn simulate(&mut self, simulation: Simulation, symbol: &str, ts: u64, number: u64, batch: &mut Batch) {
        let Some(symbol) = self.engine.names.find(symbol) else { return };
        if !simulation::any_liquidatable(&self.engine, symbol) {
            return;
        }
        for (account, side) in simulation::visiting_order(&self.engine, symbol) {
            let Some(position) = self.engine.positions.get(account, symbol, side) else { continue };
            if !self.engine.margin_view(position).liquidatable() {
                continue;
            }
            let line = simulation.order(&self.engine, position, ts, self.engine.last_seq + 1);
            let record = wire::decode_line(&line)
                .unwrap_or_else(|reason| panic!("the simulation decided a liquidation the wire refuses: {reason}"));
            if let Err((kind, reason)) = self.apply_record(&record, None, &line, number, batch) {
                dead_letter(&mut batch.dead_letters, number, kind, &reason, &line);
            }
        }
    }

    /// Add what an applied event wrote (the outputs' counts after it, less `before`) to the totals.
    fn count(&mut self, before: [u64; 5], outputs: &Outputs) {
        let after = counts(outputs);
        self.fund_entries += after[0] - before[0];
        self.adl_events += after[1] - before[1];
        self.findings += after[2] - before[2];
        self.postings += after[3] - before[3];
        self.adl_quantiles += after[4] - before[4];
    }

    // ------------------------------------------------------------------ documents

    /// The state document (backstop.core.snapshot.state_document): everything that decides a future outcome.
    pub fn state_document(&self) -> Vec<u8> {
        self.state_document_at(&self.engine.postings_head)
    }

    /// The state document with the postings chain's head given (the output writer's, while the engine's own is the
    /// one before the postings it left to the writer).
    fn state_document_at(&self, postings_head: &str) -> Vec<u8> {
        let engine = &self.engine;
        let names = &engine.names;
        let balances_json = balances_json(engine);
        let mut funds: Vec<&FundState> = engine.funds.values().collect();
        funds.sort_by(|a, b| names.name(a.spec.fund_id).cmp(names.name(b.spec.fund_id)));
        let mut instruments: Vec<&Instrument> = engine.instruments.values().collect();
        instruments.sort_by(|a, b| names.name(a.symbol).cmp(names.name(b.symbol)));
        let mut closes: Vec<(&str, &str, &str, u8)> = engine.quantile_closes.iter()
            .map(|((account, symbol, side), quantile)| (names.name(*account), names.name(*symbol), side.name(), *quantile))
            .collect();
        closes.sort();
        let admission = &engine.admission;
        let latest = admission.latest_sorted();
        let latest_hex: Vec<(String, String)> =
            latest.into_iter().map(|(subject, digest)| (subject, format!("{digest:016x}"))).collect();
        let head_hex: String = admission.head.iter().map(|byte| format!("{byte:02x}")).collect();
        let dedupe = J::Obj(vec![
            ("ids", J::Int(admission.count as i128)),
            ("ids_head", J::Str(&head_hex)),
            ("latest", J::Obj(latest_hex.iter().map(|(subject, hex)| (subject.as_str(), J::Str(hex))).collect())),
        ]);
        let positions_json = positions_json(engine);
        let mut entries = vec![
            ("snapshot_version", J::Int(SNAPSHOT_VERSION)),
            ("seq", J::Int(engine.last_seq as i128)),
            ("adl_policy", engine.policy.document()),
            ("ledger_head", J::Str(&engine.ledger_head)),
            ("adl_head", J::Str(&engine.adl_head)),
            ("postings_head", J::Str(postings_head)),
            ("balances", J::Raw(&balances_json)),
            ("funds", J::Arr(funds.iter().map(|f| fund_document(engine, f)).collect())),
            ("instruments", J::Arr(instruments.iter().map(|i| instrument_document(engine, i)).collect())),
            ("marks", J::Obj(engine.marks.iter().map(|(s, m)| (names.name(*s), J::Owned(text(*m, S8)))).collect())),
            ("clock", clock_document(&admission.clock)),
            ("newest_ts", engine.newest_ts.map_or(J::Null, |ts| J::Int(ts as i128))),
            ("dedupe", dedupe),
            ("mark_clock", symbol_clock_document(&admission.mark_clock)),
            ("funding_clock", symbol_clock_document(&admission.funding_clock)),
            ("positions", J::Raw(&positions_json)),
            ("quantile_closes", J::Arr(closes.iter().map(|(account, symbol, side, quantile)| J::Arr(vec![
                J::Str(account), J::Str(symbol), J::Str(side), J::Int(i128::from(*quantile))])).collect())),
            ("risk_levels", J::Obj(engine.risk_levels.iter().map(|(s, level)| (names.name(*s), J::Str(level))).collect())),
        ];
        if engine.policy.drawdown.is_some() {
            // only under Bybit's trigger: every other state hash stays as it was
            entries.push(("adl_drawdown", engine.drawdown.document(names)));
        }
        canonical::to_vec(&J::Obj(entries))
    }

    pub fn state_hash(&self) -> String {
        canonical::sha256_hex(&self.state_document())
    }

    /// A snapshot (backstop.engines.ReferenceEngine.snapshot) as written, indented with sorted keys, and how many
    /// identities its identity file holds (`write_ids` writes that file: snapshot-SEQ.ids, which it names).
    pub fn snapshot_json(&self, input_line: u64) -> (Vec<u8>, u64) {
        assert!(!self.engine.admission.per_batch, "an engine whose identities are held per batch writes no snapshots");
        let state = self.state_document();
        let parsed = json::parse(&state, Dialect::File).expect("our own JSON");
        let engine_document = canonical::from_json(&parsed).expect("no floats");
        let state_hash = canonical::sha256_hex(&state);
        let seq = self.engine.last_seq;
        let (ids_sha256, ids_count) = self.engine.admission.ids.file_sha256(seq);
        let ids_file = format!("snapshot-{seq:012}.ids");
        let document = J::Obj(vec![
            ("input_line", J::Int(input_line as i128)),
            ("engine", engine_document),
            ("state_hash", J::Str(&state_hash)),
            ("ids", J::Obj(vec![
                ("file", J::Str(&ids_file)),
                ("sha256", J::Str(&ids_sha256)),
                ("count", J::Int(ids_count as i128)),
            ])),
            ("counters", J::Obj(vec![
                ("duplicates", J::Int(self.duplicates as i128)),
                ("rejected", J::Int(self.rejected as i128)),
                ("conflicting_duplicates", J::Int(self.conflicting_duplicates as i128)),
                ("fund_entries", J::Int(self.fund_entries as i128)),
                ("adl_events", J::Int(self.adl_events as i128)),
                ("findings", J::Int(self.findings as i128)),
                ("postings", J::Int(self.postings as i128)),
                ("adl_quantiles", J::Int(self.adl_quantiles as i128)),
            ])),
            ("wallets_at_zero", J::Arr(self.wallets_at_zero().into_iter()
                .map(|(account, asset)| J::Arr(vec![J::Str(account), J::Str(asset)])).collect())),
            // whether quantile points ran: a resume must run them alike (adl-quantiles.jsonl, the state hash)
            ("adl_quantile_points", J::Bool(self.engine.adl_quantiles)),
        ]);
        // sealed (backstop.core.snapshot.sealed): the SHA-256 of everything else in the document
        let J::Obj(mut entries) = document else { unreachable!() };
        let seal = canonical::sha256_hex(&canonical::to_vec(&J::Obj(entries.clone())));
        entries.push(("snapshot_hash", J::Str(&seal)));
        let mut out = Vec::with_capacity(state.len() * 2);
        canonical::write_pretty(&mut out, &J::Obj(entries), 0);
        (out, ids_count)
    }

    /// (account, asset) of every wallet the ledger holds at zero, sorted (backstop.core.snapshot.wallets_at_zero):
    /// not state, but accounts.json lists them, so a snapshot file carries them beside the state.
    fn wallets_at_zero(&self) -> Vec<(&str, &str)> {
        let names = &self.engine.names;
        let mut wallets: Vec<(&str, &str)> = self.engine.ledger.all_balances()
            .filter_map(|(account, balance)| match *account {
                Account::Wallet { account, asset } if *balance == I256::ZERO => Some((names.name(account), names.name(asset))),
                _ => None,
            })
            .collect();
        wallets.sort_unstable();
        wallets
    }

    /// The identity file of a snapshot at `seq` (of `count` identities, as snapshot_json said), in pieces.
    pub fn write_ids(&self, seq: u64, count: u64, sink: impl FnMut(&[u8])) {
        self.engine.admission.ids.write_file(seq, count, sink);
    }

    /// backstop.core.documents.summary, compact (the caller indents it).
    pub fn summary_json(&self) -> Vec<u8> {
        self.summary_json_with(&crate::quantiles::views_now(&self.engine), &self.engine.postings_head)
    }

    /// summary_json from the ADL views of every symbol's sides (crate::quantiles::views_now), which accounts.json
    /// also reads.
    fn summary_json_with(&self, views: &[(u32, [SideView; 2])], postings_head: &str) -> Vec<u8> {
        let engine = &self.engine;
        let names = &engine.names;
        let mut fund_ids: Vec<u32> = engine.funds.keys().copied().collect();
        fund_ids.sort_by(|a, b| names.name(*a).cmp(names.name(*b)));
        let funds = fund_ids.iter().map(|fund| {
            let state = &engine.funds[fund];
            let balance = engine.ledger.balance(Account::Fund(*fund));
            let inventory = state.lots.iter().map(|(symbol, lots)| {
                (symbol.as_str(), J::Owned(text(state.net_qty(lots[0].symbol), S8)))
            }).collect();
            (names.name(*fund), J::Obj(vec![
                ("balance", J::Owned(text_wide(balance, S8))),
                ("settle_asset", J::Str(names.name(state.spec.settle_asset))),
                ("surplus", J::Str(surplus_name(state.spec.surplus))),
                ("max_inventory_ratio", J::Owned(text(state.spec.max_inventory_ratio, S18))),
                ("bad_debt", J::Owned(text_wide(if balance < 0 { -balance } else { I256::ZERO }, S8))),
                ("inventory_notional", J::Owned(text(money(engine.inventory_notional(state), S16), S8))),
                ("inventory_upnl", J::Owned(text_wide(money_wide(engine.inventory_upnl(state), S16), S8))),
                ("inventory", J::Obj(inventory)),
            ]))
        }).collect();
        let head = engine.head_hash();
        let state_hash = canonical::sha256_hex(&self.state_document_at(postings_head));
        let risk = crate::quantiles::risks(engine, views).into_iter().map(|(symbol, risk)| {
            (names.name(symbol), J::Obj(vec![
                ("fund_id", J::Str(names.name(risk.fund))),
                ("risk_level", J::Str(risk.level)),
                ("capacity", J::Owned(crate::quantiles::reported(risk.capacity, 26))),
                ("stressed_notional_long", J::Owned(text_wide(reported(risk.stressed_long, S16), S8))),
                ("stressed_notional_short", J::Owned(text_wide(reported(risk.stressed_short, S16), S8))),
            ]))
        }).collect();
        let document = J::Obj(vec![
            ("schema_version", J::Int(1)),
            ("events_applied", J::Int(self.events_applied() as i128)),
            ("duplicates", J::Int(self.duplicates as i128)),
            ("rejected", J::Int(self.rejected as i128)),
            ("conflicting_duplicates", J::Int(self.conflicting_duplicates as i128)),
            ("last_seq", J::Int(engine.last_seq as i128)),
            ("head_hash", J::Str(&head)),
            ("ledger_head_hash", J::Str(&engine.ledger_head)),
            ("adl_head_hash", J::Str(&engine.adl_head)),
            ("state_hash", J::Str(&state_hash)),
            ("fund_ledger_entries", J::Int(self.fund_entries as i128)),
            ("adl_events", J::Int(self.adl_events as i128)),
            ("findings", J::Int(self.findings as i128)),
            ("postings_head_hash", J::Str(postings_head)),
            ("postings", J::Int(self.postings as i128)),
            ("adl_quantiles", J::Int(self.adl_quantiles as i128)),
            ("adl_quantile_points", J::Bool(engine.adl_quantiles)),
            ("ledger_sum", J::Owned(text_512(engine.ledger.sum(), S8))),
            ("funds", J::Obj(funds)),
            ("adl_risk", J::Obj(risk)),
            ("adl", engine.totals.document()),
            ("adl_policy", engine.policy.document()),
        ]);
        canonical::to_vec(&document)
    }

    /// summary_json, and accounts_json handed to `consume` in pieces (the document is the pieces in order: e.g. to
    /// write it), side by side on two threads (the end of a replay: both only read the state), from one ranking of
    /// every ADL queue.
    pub fn summary_and_accounts<R: Send>(&self, consume: impl FnOnce(Vec<Vec<u8>>) -> R + Send) -> (Vec<u8>, R) {
        let views = crate::quantiles::views_now(&self.engine);
        let settled = || Ok::<_, ()>(self.engine.postings_head.clone());
        let (summary, accounts, _) = self.summary_and_accounts_with(&views, settled, consume).expect("no error");
        (summary, accounts)
    }

    /// summary_and_accounts at the end of a replay whose output writer may still be writing the last postings: the
    /// ADL views and accounts.json (which read no posting) are built while `settle` waits for the writer and gives
    /// the postings chain's head, which the summary and the state hash then read, and which the engine keeps. Err:
    /// the writer's error (accounts.json is built and handed to `consume` all the same).
    pub fn summary_and_accounts_settling<R: Send, E>(&mut self, settle: impl FnOnce() -> Result<String, E>,
                                                     consume: impl FnOnce(Vec<Vec<u8>>) -> R + Send)
                                                     -> Result<(Vec<u8>, R), E> {
        let views = crate::quantiles::views_now(&self.engine);
        let (summary, accounts, head) = self.summary_and_accounts_with(&views, settle, consume)?;
        self.engine.postings_head = head;
        Ok((summary, accounts))
    }

    /// The summary at the postings head `settle` gives (on this thread, once accounts.json is under way on another)
    /// beside accounts.json handed to `consume`; and that head.
    fn summary_and_accounts_with<R: Send, E>(&self, views: &[(u32, [SideView; 2])],
                                             settle: impl FnOnce() -> Result<String, E>,
                                             consume: impl FnOnce(Vec<Vec<u8>>) -> R + Send)
                                             -> Result<(Vec<u8>, R, String), E> {
        std::thread::scope(|scope| {
            let accounts = std::thread::Builder::new()
                .name("backstop-accounts".to_string())
                .spawn_scoped(scope, || consume(self.accounts_json_with(views, crate::parallel::threads())))
                .expect("a thread for accounts.json");
            let summary = settle().map(|head| (self.summary_json_with(views, &head), head));
            let accounts = accounts.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            summary.map(|(summary, head)| (summary, accounts, head))
        })
    }

    /// accounts.json as written (backstop.core.documents.accounts): indented, sorted keys, a final newline.
    pub fn accounts_json(&self) -> Vec<u8> {
        self.accounts_json_with(&crate::quantiles::views_now(&self.engine), crate::parallel::threads()).concat()
    }

    /// accounts.json from the ADL views, its entries (accounts and funds, by name) rendered in contiguous pieces on
    /// up to `threads` threads: the document is the pieces in order (never joined on the way to a file), the same
    /// bytes however it is split.
    fn accounts_json_with(&self, views: &[(u32, [SideView; 2])], threads: usize) -> Vec<Vec<u8>> {
        let engine = &self.engine;
        let names = &engine.names;
        let mut wallets: HashMap<u32, Vec<(&str, I256)>> = HashMap::default();
        for (account, balance) in engine.ledger.all_balances() {
            if let Account::Wallet { account, asset } = account {
                wallets.entry(*account).or_default().push((names.name(*asset), *balance));
            }
        }
        wallets.values_mut().for_each(|own| own.sort_by(|a, b| a.0.cmp(b.0)));
        // (account, symbol, direction) -> (rank, quantile): one position per direction of a symbol (section 7)
        let mut ranks: HashMap<(u32, u32, Side), (usize, u8)> = HashMap::default();
        for (symbol, sides) in views {
            for (view, side) in sides.iter().zip([Side::Long, Side::Short]) {
                ranks.extend(view.ranks.iter().map(|&(account, rank, quantile)| ((account, *symbol, side), (rank, quantile))));
            }
        }
        // `<symbol>:long` and `<symbol>:short`, the keys of hedge positions (a one-way position is keyed by its symbol)
        let hedge_labels: HashMap<(u32, PositionSide), String> = engine.instruments.keys()
            .flat_map(|&symbol| [PositionSide::Long, PositionSide::Short]
                .map(|side| ((symbol, side), position_label(names.name(symbol), side))))
            .collect();
        // the document's entries by name: accounts, then funds as `fund:<id>` (a stable sort keeps that order for
        // equal names)
        let mut accounts: Vec<u32> = wallets.keys().copied()
            .chain(engine.positions.of_account.keys().filter(|a| !wallets.contains_key(a)))
            .collect();
        sort_by_name(&mut accounts, names);
        let mut fund_ids: Vec<u32> = engine.funds.keys().copied().collect();
        sort_by_name(&mut fund_ids, names);
        let funds: Vec<(String, u32)> =
            fund_ids.into_iter().map(|fund| (format!("{FUND_ACCOUNT_PREFIX}{}", names.name(fund)), fund)).collect();
        // the two sorted lists merged by name, an account before a fund of the same name
        let mut entries: Vec<(&str, Entry)> = Vec::with_capacity(accounts.len() + funds.len());
        let mut funds_left = funds.iter().peekable();
        for account in accounts {
            let name = names.name(account);
            while let Some((label, fund)) = funds_left.next_if(|(label, _)| label.as_str() < name) {
                entries.push((label, Entry::Fund(*fund)));
            }
            entries.push((name, Entry::Account(account)));
        }
        entries.extend(funds_left.map(|(label, fund)| (label.as_str(), Entry::Fund(*fund))));
        let account_value = |account: u32| {
            let own: &[(&str, I256)] = wallets.get(&account).map_or(&[], Vec::as_slice);
            let primary = own.first().map_or_else(|| "0".to_string(), |(_, balance)| text_wide(*balance, S8));
            let positions = positions_of(engine, account).into_iter().map(|position| {
                let label = match position.position_side {
                    PositionSide::Both => names.name(position.symbol),
                    side => hedge_labels[&(position.symbol, side)].as_str(),
                };
                (label, position_view(engine, position, ranks[&(account, position.symbol, position.side())]))
            }).collect();
            J::Obj(vec![
                ("positions", J::Obj(positions)),
                ("wallet", J::Owned(primary)),
                ("wallets", J::Obj(own.iter().map(|(asset, b)| (*asset, J::Owned(text_wide(*b, S8)))).collect())),
            ])
        };
        let fund_value = |fund: u32| {
            let state = &engine.funds[&fund];
            let inventory = state.lots.iter().map(|(symbol, lots)| {
                let symbol_id = lots[0].symbol;
                let lots = lots.iter().map(|lot| J::Obj(vec![
                    ("liquidation_id", J::Str(&lot.liquidation_id)),
                    ("side", J::Str(lot.side.name())),
                    ("qty", J::Owned(text(lot.qty, S8))),
                    ("bankruptcy_price", J::Owned(text_512(
                        engine.instruments[&symbol_id].valuation.reported_price(lot.qty, lot.cost), S8))),
                    ("seq", J::Int(lot.seq as i128)),
                ])).collect();
                (symbol.as_str(), J::Obj(vec![
                    ("qty", J::Owned(text(state.net_qty(symbol_id), S8))),
                    ("mark_price", J::Owned(text(engine.marks[&symbol_id], S8))),
                    ("lots", J::Arr(lots)),
                ]))
            }).collect();
            J::Obj(vec![
                ("wallet", J::Owned(text_wide(engine.ledger.balance(Account::Fund(fund)), S8))),
                ("positions", J::Obj(inventory)),
            ])
        };
        // each entry as `,\n  "name": {...}` (the first as `{\n  "name": ...`), each value dropped as soon as it is
        // written
        let pieces = threads.clamp(1, entries.len().max(1));
        let per_piece = entries.len().div_ceil(pieces);
        let parts = crate::parallel::map(pieces, pieces, |piece| {
            let mine = &entries[(piece * per_piece).min(entries.len())..((piece + 1) * per_piece).min(entries.len())];
            let mut out = Vec::with_capacity(1024 + 600 * mine.len());
            for (index, (name, entry)) in mine.iter().enumerate() {
                out.extend_from_slice(if piece == 0 && index == 0 { b"{\n  " } else { b",\n  " });
                json::write_string(&mut out, name);
                out.extend_from_slice(b": ");
                let value = match *entry {
                    Entry::Account(account) => account_value(account),
                    Entry::Fund(fund) => fund_value(fund),
                };
                canonical::write_pretty(&mut out, &value, 1);
            }
            out
        });
        if entries.is_empty() {
            return vec![b"{}\n".to_vec()];
        }
        let mut parts = parts;
        parts.push(b"\n}\n".to_vec());
        parts
    }

    // ------------------------------------------------------------------ restore

    /// A processor from a snapshot written by either engine: its document and the identity file it names (not
    /// read when identities are held per batch). Fails as the reference's restore does: the identity file first,
    /// then the state, then its state hash.
    pub fn restore(raw: &[u8], ids: &[u8], strict: bool, snapshot_every: u64, per_batch: bool)
                   -> Result<Processor, RestoreError> {
        let as_state = |error: String| {
            RestoreError::State(if error.starts_with("KeyError") { error } else { format!("ValueError: {error}") })
        };
        let document = json::parse(raw, Dialect::File).map_err(|_| as_state("not JSON".into()))?;
        let root = object(&document).map_err(as_state)?;
        let mut table = IdTable::default();
        let mut named = None;
        if !per_batch {
            let ids_entry = object(field(root, "ids").map_err(as_state)?).map_err(as_state)?;
            let file = string(field(ids_entry, "file").map_err(as_state)?).map_err(as_state)?.to_string();
            let count = int(field(ids_entry, "count").map_err(as_state)?).map_err(as_state)?;
            table = IdTable::read_file(ids).map_err(|error| RestoreError::Snapshot(format!("{file}: {error}")))?;
            if table.len() as i128 != count {
                return Err(RestoreError::Snapshot(format!(
                    "{file} holds {} identities, not the {count} it is named with", table.len())));
            }
            named = Some(file);
        }
        let mut processor = Self::restore_state(root, strict, snapshot_every).map_err(as_state)?;
        let held = processor.engine.admission.count;
        processor.engine.admission.ids = table;
        processor.engine.admission.per_batch = per_batch;
        let stated = field(root, "state_hash").and_then(string).ok();
        if stated != Some(processor.state_hash().as_str()) {
            return Err(RestoreError::Snapshot("its state hash does not match its contents".into()));
        }
        if let Some(file) = named {
            let table_len = processor.engine.admission.ids.len();
            if table_len != held {
                return Err(RestoreError::Snapshot(format!("{file} holds {table_len} identities, the state {held}")));
            }
        }
        Ok(processor)
    }

    fn restore_state(root: Entries<'_, '_>, strict: bool, snapshot_every: u64) -> Result<Processor, String> {
        let state = object(field(root, "engine")?)?;
        let version = field(state, "snapshot_version").and_then(int).ok();
        if version != Some(SNAPSHOT_VERSION) {
            return Err(format!("unsupported snapshot version {}", version.map_or("None".into(), |v| v.to_string())));
        }
        let policy = Policy::from_document(field(state, "adl_policy")?)?;
        let mut processor = Processor::new(strict, snapshot_every);
        let engine = &mut processor.engine;
        engine.policy = policy;
        engine.last_seq = int(field(state, "seq")?)? as u64;
        engine.ledger_head = string(field(state, "ledger_head")?)?.to_string();
        engine.adl_head = string(field(state, "adl_head")?)?.to_string();
        engine.postings_head = string(field(state, "postings_head")?)?.to_string();
        for f in array(field(state, "funds")?)? {
            let f = object(f)?;
            let fund_id = engine.names.id(string(field(f, "fund_id")?)?);
            let asset = engine.names.id(string(field(f, "settle_asset")?)?);
            let surplus = match string(field(f, "surplus")?)? {
                "fund" => Surplus::Fund,
                "trader" => Surplus::Trader,
                other => return Err(format!("unknown surplus policy {other}")),
            };
            let spec = FundSpec { fund_id, settle_asset: asset, surplus,
                                  max_inventory_ratio: decimal(field(f, "max_inventory_ratio")?, S18)? };
            let mut fund_state = FundState::new(spec);
            for symbol in array(field(f, "symbols")?)? {
                fund_state.symbols.push(engine.names.id(string(symbol)?));
            }
            for lot in array(field(f, "lots")?)? {
                let lot = object(lot)?;
                let symbol_name = string(field(lot, "symbol")?)?;
                let symbol = engine.names.id(symbol_name);
                let side = match string(field(lot, "side")?)? {
                    "long" => Side::Long,
                    "short" => Side::Short,
                    other => return Err(format!("unknown side {other}")),
                };
                let restored = Lot {
                    liquidation_id: string(field(lot, "liquidation_id")?)?.to_string(),
                    symbol,
                    side,
                    qty: decimal(field(lot, "qty")?, S8)?,
                    cost: wide_512_decimal(field(lot, "cost")?, S16)?,
                    liquidated_account: engine.names.id(string(field(lot, "liquidated_account")?)?),
                    seq: int(field(lot, "seq")?)? as u64,
                };
                fund_state.add_lot(symbol_name, restored);
            }
            engine.register_settle_asset(asset);
            engine.funds.insert(fund_id, fund_state);
        }
        for i in array(field(state, "instruments")?)? {
            let i = object(i)?;
            let symbol = engine.names.id(string(field(i, "symbol")?)?);
            let mut tiers = Vec::new();
            for t in array(field(i, "tiers")?)? {
                let t = object(t)?;
                tiers.push(Tier { max_notional: decimal(field(t, "max_notional")?, S8)?,
                                  mmr: decimal(field(t, "mmr")?, S18)?,
                                  maint_amount: decimal(field(t, "maint_amount")?, S8)? });
            }
            let instrument = Instrument {
                symbol,
                settle_asset: engine.names.id(string(field(i, "settle_asset")?)?),
                tick_size: decimal(field(i, "tick_size")?, S8)?,
                lot_size: decimal(field(i, "lot_size")?, S8)?,
                tiers,
                liquidation_fee_rate: decimal(field(i, "liquidation_fee_rate")?, S18)?,
                fund_id: engine.names.id(string(field(i, "fund_id")?)?),
                mark_tolerance: match field(i, "mark_tolerance") {
                    Ok(value) => decimal(value, S18)?,
                    Err(_) => DEFAULT_MARK_TOLERANCE,
                },
                valuation: match field(i, "contract_type").ok().map(string).transpose()? {
                    Some("inverse") => Valuation { contract_size: Some(decimal(field(i, "contract_size")?, S8)?) },
                    _ => LINEAR,
                },
            };
            engine.instruments.insert(symbol, instrument);
        }
        for (name, balance) in object(field(state, "balances")?)? {
            let account = account_named(engine, name).ok_or_else(|| format!("unknown ledger account {name}"))?;
            engine.ledger.set(account, wide_decimal(balance, S8)?);
        }
        for (symbol, mark) in object(field(state, "marks")?)? {
            let symbol = engine.names.id(symbol);
            engine.marks.insert(symbol, decimal(mark, S8)?);
        }
        engine.newest_ts = match field(state, "newest_ts")? {
            Value::Null => None,
            other => Some(int(other)? as u64),
        };
        let admission = &mut engine.admission;
        admission.clock = restore_clock(field(state, "clock")?)?;
        restore_dedupe(admission, field(state, "dedupe")?)?;
        admission.mark_clock = restore_symbol_clock(field(state, "mark_clock")?)?;
        admission.funding_clock = restore_symbol_clock(field(state, "funding_clock")?)?;
        for p in array(field(state, "positions")?)? {
            let p = object(p)?;
            let leverage_text = string(field(p, "leverage")?)?;
            let leverage = numbers::plain(leverage_text.as_bytes())
                .map_err(|_| format!("not a decimal: {leverage_text}"))?;
            let margin_mode = match string(field(p, "margin_mode")?)? {
                "cross" => MarginMode::Cross,
                "isolated" => MarginMode::Isolated,
                other => return Err(format!("unknown margin mode {other}")),
            };
            let position_side = match field(p, "position_side").and_then(string) {
                Err(_) => PositionSide::Both,
                Ok("long") => PositionSide::Long,
                Ok("short") => PositionSide::Short,
                Ok(other) => return Err(format!("unknown position side {other}")),
            };
            let position = Position {
                account: engine.names.id(string(field(p, "account_id")?)?),
                symbol: engine.names.id(string(field(p, "symbol")?)?),
                qty: decimal(field(p, "qty")?, S8)?,
                cost: decimal(field(p, "cost")?, S16)?,
                margin_mode,
                leverage: Dec { value: decimal(field(p, "leverage")?, S8)?, places: leverage.fraction.len() as u8 },
                position_side,
                adl_quantile: quantile_of(field(p, "adl_quantile")?)?,
            };
            if engine.positions.get(position.account, position.symbol, position_side).is_some() || position.qty == 0 {
                return Err("a position listed twice, or empty".into());
            }
            engine.positions.add(position);
        }
        for entry in array(field(state, "quantile_closes")?)? {
            let [account, symbol, side, quantile] = array(entry)? else {
                return Err("a quantile close is not [account, symbol, side, quantile]".into());
            };
            let side = match string(side)? {
                "long" => Side::Long,
                "short" => Side::Short,
                other => return Err(format!("unknown side {other}")),
            };
            let key = (engine.names.id(string(account)?), engine.names.id(string(symbol)?), side);
            engine.quantile_closes.insert(key, quantile_of(quantile)?);
        }
        for (symbol, level) in object(field(state, "risk_levels")?)? {
            let level = match string(level)? {
                "low" => "low",
                "medium" => "medium",
                "high" => "high",
                other => return Err(format!("unknown risk level {other}")),
            };
            let symbol = engine.names.id(symbol);
            engine.risk_levels.insert(symbol, level);
        }
        if policy.drawdown.is_some() {
            restore_drawdown(engine, object(field(state, "adl_drawdown")?)?)?;
        }
        let counters = object(field(root, "counters")?)?;
        processor.duplicates = int(field(counters, "duplicates")?)? as u64;
        processor.rejected = int(field(counters, "rejected")?)? as u64;
        processor.conflicting_duplicates = int(field(counters, "conflicting_duplicates")?)? as u64;
        processor.fund_entries = int(field(counters, "fund_entries")?)? as u64;
        processor.adl_events = int(field(counters, "adl_events")?)? as u64;
        processor.findings = int(field(counters, "findings")?)? as u64;
        processor.postings = int(field(counters, "postings")?)? as u64;
        processor.adl_quantiles = int(field(counters, "adl_quantiles")?)? as u64;
        // held again at zero (a snapshot file's; the service's stored state has none): accounts.json lists them
        if let Ok(wallets) = field(root, "wallets_at_zero") {
            for pair in array(wallets)? {
                let [account, asset] = array(pair)? else { return Err("a wallet at zero is [account, asset]".into()) };
                let engine = &mut processor.engine;
                let wallet = Account::Wallet { account: engine.names.id(string(account)?),
                                               asset: engine.names.id(string(asset)?) };
                if !engine.ledger.holds(wallet) {
                    engine.ledger.set(wallet, I256::ZERO);
                }
            }
        }
        processor.next_snapshot = processor.engine.last_seq + snapshot_every;
        Ok(processor)
    }
}

/// Why a snapshot cannot be restored: its state (named as the reference's restore fails: "KeyError: 'seq'",
/// "ValueError: ..."), or the snapshot (its identity file, its state hash), named as it is.
#[derive(Debug, PartialEq, Eq)]
pub enum RestoreError {
    State(String),
    Snapshot(String),
}

fn restore_clock(value: &Value<'_>) -> Result<JournalClock, String> {
    let malformed = || "malformed journal clock in the snapshot".to_string();
    let clock = object(value)?;
    let recent = array(field(clock, "recent")?).map_err(|_| malformed())?;
    let recent = recent.iter().map(|ts| int(ts).map(|ts| ts as u64)).collect::<Result<Vec<u64>, _>>()?;
    let ts = match field(clock, "ts")? {
        Value::Null => None,
        Value::Int(_) => Some(int(field(clock, "ts")?)? as u64),
        _ => return Err(malformed()),
    };
    if recent.len() > crate::clock::WINDOW || (ts.is_some() == recent.is_empty()) {
        return Err(malformed());
    }
    Ok(JournalClock { recent, ts })
}

fn restore_dedupe(admission: &mut crate::admission::Admission, value: &Value<'_>) -> Result<(), String> {
    let malformed = || "malformed dedupe state in the snapshot".to_string();
    let dedupe = object(value)?;
    admission.count = int(field(dedupe, "ids")?)? as u64;
    let head = hex_bytes(string(field(dedupe, "ids_head")?)?).ok_or_else(malformed)?;
    admission.head = head.try_into().map_err(|_| malformed())?;
    for (subject, digest) in object(field(dedupe, "latest")?)? {
        let digest: [u8; 8] = hex_bytes(string(digest)?).and_then(|d| d.try_into().ok()).ok_or_else(malformed)?;
        if !admission.restore_latest(subject, u64::from_be_bytes(digest)) {
            return Err(malformed());
        }
    }
    Ok(())
}

/// Bybit's trigger state from a state document's `adl_drawdown` (backstop.core.adl_drawdown.DrawdownState).
fn restore_drawdown(engine: &mut Engine, document: Entries<'_, '_>) -> Result<(), String> {
    let window = |rows: &Value<'_>, scale: u32| -> Result<WindowMax, String> {
        let mut restored = WindowMax::default();
        for row in array(rows)? {
            let [ts, value] = array(row)? else { return Err("a window entry is not [ts, value]".into()) };
            restored.entries.push_back((int(ts)? as u64, wide_512_decimal(value, scale)?));
        }
        Ok(restored)
    };
    for (fund, rows) in object(field(document, "balances")?)? {
        let fund = engine.names.id(fund);
        engine.drawdown.balances.insert(fund, window(rows, S8)?);
    }
    for (symbol, rows) in object(field(document, "pnls")?)? {
        let symbol = engine.names.id(symbol);
        engine.drawdown.pnls.insert(symbol, window(rows, S16)?);
    }
    for (symbol, value) in object(field(document, "realized")?)? {
        let symbol = engine.names.id(symbol);
        engine.drawdown.realized.insert(symbol, wide_decimal(value, S8)?);
    }
    for symbol in array(field(document, "triggered")?)? {
        let symbol = engine.names.id(string(symbol)?);
        engine.drawdown.triggered.insert(symbol);
    }
    Ok(())
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

fn restore_symbol_clock(value: &Value<'_>) -> Result<SymbolClock, String> {
    let document = object(value)?;
    let mut clock = SymbolClock::default();
    for (symbol, ts) in object(field(document, "reached")?)? {
        clock.reached.insert((**symbol).into(), int(ts)? as u64);
    }
    for (symbol, waiting) in object(field(document, "pending")?)? {
        let waiting = array(waiting)?.iter().map(|ts| int(ts).map(|ts| ts as u64)).collect::<Result<Vec<_>, _>>()?;
        clock.pending.insert((**symbol).into(), waiting);
    }
    Ok(clock)
}

/// The journal clock in the state document (backstop.core.ordering.JournalClock.document).
fn clock_document(clock: &JournalClock) -> J<'_> {
    J::Obj(vec![
        ("recent", J::Arr(clock.recent.iter().map(|ts| J::Int(*ts as i128)).collect())),
        ("ts", clock.ts.map_or(J::Null, |ts| J::Int(ts as i128))),
    ])
}

/// A per-symbol clock in the state document (backstop.core.ordering.SymbolClock.document).
fn symbol_clock_document(clock: &SymbolClock) -> J<'_> {
    J::Obj(vec![
        ("reached", J::Obj(clock.reached.iter().map(|(symbol, ts)| (&**symbol, J::Int(*ts as i128))).collect())),
        ("pending", J::Obj(clock.pending.iter().map(|(symbol, waiting)| {
            (&**symbol, J::Arr(waiting.iter().map(|ts| J::Int(*ts as i128)).collect()))
        }).collect())),
    ])
}

fn surplus_name(surplus: Surplus) -> &'static str {
    match surplus {
        Surplus::Fund => "fund",
        Surplus::Trader => "trader",
    }
}

fn fund_document<'e>(engine: &'e Engine, f: &'e FundState) -> J<'e> {
    let names = &engine.names;
    let lots = f.lots.values().flat_map(|lots| lots.iter()).map(|lot| J::Obj(vec![
        ("liquidation_id", J::Str(&lot.liquidation_id)),
        ("symbol", J::Str(names.name(lot.symbol))),
        ("side", J::Str(lot.side.name())),
        ("qty", J::Owned(text(lot.qty, S8))),
        ("cost", J::Owned(text_512(lot.cost, S16))),
        ("liquidated_account", J::Str(names.name(lot.liquidated_account))),
        ("seq", J::Int(lot.seq as i128)),
    ])).collect();
    J::Obj(vec![
        ("fund_id", J::Str(names.name(f.spec.fund_id))),
        ("settle_asset", J::Str(names.name(f.spec.settle_asset))),
        ("surplus", J::Str(surplus_name(f.spec.surplus))),
        ("max_inventory_ratio", J::Owned(text(f.spec.max_inventory_ratio, S18))),
        ("symbols", J::Arr(f.symbols.iter().map(|s| J::Str(names.name(*s))).collect())),
        ("lots", J::Arr(lots)),
    ])
}

/// An instrument's specs; a version-2 field is written only when it is not its default, so that a version-1 journal
/// keeps its state hash (backstop.core.snapshot).
fn instrument_document<'e>(engine: &'e Engine, i: &'e Instrument) -> J<'e> {
    let names = &engine.names;
    let mut entries = vec![
        ("symbol", J::Str(names.name(i.symbol))),
        ("settle_asset", J::Str(names.name(i.settle_asset))),
        ("tick_size", J::Owned(text(i.tick_size, S8))),
        ("lot_size", J::Owned(text(i.lot_size, S8))),
        ("liquidation_fee_rate", J::Owned(text(i.liquidation_fee_rate, S18))),
        ("fund_id", J::Str(names.name(i.fund_id))),
        ("tiers", J::Arr(i.tiers.iter().map(|t| J::Obj(vec![
            ("max_notional", J::Owned(text(t.max_notional, S8))),
            ("mmr", J::Owned(text(t.mmr, S18))),
            ("maint_amount", J::Owned(text(t.maint_amount, S8))),
        ])).collect())),
    ];
    if i.mark_tolerance != DEFAULT_MARK_TOLERANCE {
        entries.push(("mark_tolerance", J::Owned(text(i.mark_tolerance, S18))));
    }
    if let Some(contract_size) = i.valuation.contract_size {
        // inverse only: a linear instrument keeps its state hash
        entries.push(("contract_type", J::Str("inverse")));
        entries.push(("contract_size", J::Owned(text(contract_size, S8))));
    }
    J::Obj(entries)
}

/// The ids in the order of their names (names are unique: one order whatever the sort), compared first on their
/// first bytes, so that most comparisons read no name (`prefix_key`).
pub fn sort_by_name(ids: &mut [u32], names: &Names) {
    let mut keyed: Vec<(u128, u32)> = ids.iter().map(|&id| (prefix_key(names.name(id).as_bytes()), id)).collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| names.name(a.1).cmp(names.name(b.1))));
    for (slot, (_, id)) in ids.iter_mut().zip(keyed) {
        *slot = id;
    }
}

/// A text's first 16 bytes as a big-endian number, zero-padded: prefix_key(a) < prefix_key(b) only when a < b, so a
/// sort on (key, text) is the sort on text.
fn prefix_key(text: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let length = text.len().min(16);
    bytes[..length].copy_from_slice(&text[..length]);
    u128::from_be_bytes(bytes)
}

/// The state document's `balances` object as canonical JSON (names sorted, amounts as strings), written at once:
/// no name or value allocated per balance. Names sort by their kind (Account::sort_parts), then by the rest of the
/// name, compared on its first bytes first.
fn balances_json(engine: &Engine) -> Vec<u8> {
    let mut rests = String::new();
    let mut rows: Vec<(u8, u128, u32, u32, I256)> = engine.ledger.balances().map(|(account, balance)| {
        let start = rests.len();
        let kind = account.sort_parts(&engine.names, &mut rests);
        (kind, prefix_key(&rests.as_bytes()[start..]), start as u32, rests.len() as u32, *balance)
    }).collect();
    let rest = |row: &(u8, u128, u32, u32, I256)| &rests[row.2 as usize..row.3 as usize];
    rows.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| rest(a).cmp(rest(b))));
    let mut out = Vec::with_capacity(2 + 64 * rows.len());
    out.push(b'{');
    for (index, row) in rows.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(Account::KINDS[row.0 as usize].as_bytes()); // a kind needs no escape
        json::write_string_body(&mut out, rest(row));
        out.extend_from_slice(b"\":\"");
        numbers::write_scaled_wide(&mut out, row.4, S8);
        out.push(b'"');
    }
    out.push(b'}');
    out
}

/// The state document's `positions` array as canonical JSON: every open position, accounts sorted, each account's
/// positions by symbol, then position side (backstop.core.snapshot), each written key by key.
fn positions_json(engine: &Engine) -> Vec<u8> {
    let names = &engine.names;
    let mut accounts: Vec<u32> = engine.positions.of_account.keys().collect();
    sort_by_name(&mut accounts, names);
    let mut out = Vec::with_capacity(2 + 200 * engine.positions.len());
    out.push(b'[');
    for position in accounts.into_iter().flat_map(|account| positions_of(engine, account)) {
        if out.len() > 1 {
            out.push(b',');
        }
        write_position(&mut out, engine, position);
    }
    out.push(b']');
    out
}

/// An entry of accounts.json: an account's wallets and positions, or a fund's balance and inventory.
#[derive(Clone, Copy)]
enum Entry {
    Account(u32),
    Fund(u32),
}

/// An account's positions by symbol, then position side (backstop.core.state.Positions.in_symbol_order).
fn positions_of(engine: &Engine, account: u32) -> Vec<&Position> {
    let names = &engine.names;
    let mut keys = engine.positions.keys_of(account).to_vec();
    keys.sort_by(|a, b| names.name(a.0).cmp(names.name(b.0)).then(a.1.cmp(&b.1)));
    keys.iter().filter_map(|&(symbol, side)| engine.positions.get(account, symbol, side)).collect()
}

/// A position in the state document, its keys in order (backstop.core.snapshot).
fn write_position(out: &mut Vec<u8>, engine: &Engine, p: &Position) {
    let decimal = |out: &mut Vec<u8>, value: i128, scale: u32| {
        out.push(b'"');
        numbers::write_scaled(out, value, scale);
        out.push(b'"');
    };
    out.extend_from_slice(b"{\"account_id\":");
    json::write_string(out, engine.names.name(p.account));
    out.extend_from_slice(b",\"adl_quantile\":");
    canonical::write_int(out, i128::from(p.adl_quantile));
    out.extend_from_slice(b",\"cost\":");
    decimal(out, p.cost, S16);
    out.extend_from_slice(b",\"leverage\":");
    decimal(out, p.leverage.value, S8);
    out.extend_from_slice(b",\"margin_mode\":");
    json::write_string(out, mode_name(p.margin_mode));
    if p.position_side != PositionSide::Both {
        // a version-1 journal keeps its state hash
        out.extend_from_slice(b",\"position_side\":");
        json::write_string(out, p.position_side.name());
    }
    out.extend_from_slice(b",\"qty\":");
    decimal(out, p.qty, S8);
    out.extend_from_slice(b",\"symbol\":");
    json::write_string(out, engine.names.name(p.symbol));
    out.push(b'}');
}

fn position_view<'e>(engine: &'e Engine, p: &'e Position, (rank, quantile): (usize, u8)) -> J<'e> {
    let mark = engine.marks[&p.symbol];
    let view = engine.margin_view(p);
    let (pnl, _) = engine.exposure(p);
    let isolated = engine.ledger.balance(isolated_account(p));
    let liquidation = engine.liquidation_price(p).map_or_else(|| "0".to_string(), |price| text_512(price, S8));
    // in key order: written as it stands
    J::Obj(vec![
        ("adl_quantile", J::Int(i128::from(quantile))),
        ("adl_rank", J::Int(rank as i128)),
        ("bankruptcy_price", J::Owned(text_512(engine.bankruptcy_price_in(p, Some(&view)), S8))),
        ("cost", J::Owned(text(p.cost, S16))),
        ("entry_price", J::Owned(text_512(
            engine.instruments[&p.symbol].valuation.reported_price(p.size(), numbers::wide(p.cost)), S8))),
        ("isolated_margin", J::Owned(text_wide(isolated, S8))),
        ("leverage", J::Owned(text(p.leverage.value, S8))),
        ("liquidation_price", J::Owned(liquidation)),
        ("maintenance_margin", J::Owned(text(view.position_maintenance, S8))),
        ("margin_balance", J::Owned(text_wide(money_wide(view.margin_balance, S16), S8))),
        ("margin_mode", J::Str(mode_name(p.margin_mode))),
        ("mark_price", J::Owned(text(mark, S8))),
        ("qty", J::Owned(text(p.qty, S8))),
        ("unrealized_pnl", J::Owned(text(money(I256::new(pnl), S16), S8))),
    ])
}

fn account_named(engine: &mut Engine, name: &str) -> Option<Account> {
    let names = &mut engine.names;
    if let Some(rest) = name.strip_prefix("wallet:") {
        let (account, asset) = rest.rsplit_once(':')?;
        return Some(Account::Wallet { account: names.id(account), asset: names.id(asset) });
    }
    if let Some(rest) = name.strip_prefix("isolated:") {
        // isolated:<account>:<symbol>, or with :long / :short after the symbol (a symbol is upper case)
        let (rest, side) = match rest.rsplit_once(':')? {
            (head, "long") => (head, PositionSide::Long),
            (head, "short") => (head, PositionSide::Short),
            _ => (rest, PositionSide::Both),
        };
        let (account, symbol) = rest.rsplit_once(':')?;
        return Some(Account::Isolated { account: names.id(account), symbol: names.id(symbol), side });
    }
    let (kind, rest) = name.split_once(':')?;
    let id = names.id(rest);
    Some(match kind {
        "fund" => Account::Fund(id),
        "fees" => Account::Fees(id),
        "settlement" => Account::Settlement(id),
        "funding" => Account::Funding(id),
        "external" => Account::External(id),
        _ => return None,
    })
}

// ------------------------------------------------------------------ reading a snapshot document

type Entries<'v, 'a> = &'v [(std::borrow::Cow<'a, str>, Value<'a>)];

fn object<'v, 'a>(value: &'v Value<'a>) -> Result<Entries<'v, 'a>, String> {
    match value {
        Value::Object(entries) => Ok(entries),
        _ => Err("an object was expected".into()),
    }
}
fn array<'v, 'a>(value: &'v Value<'a>) -> Result<&'v [Value<'a>], String> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err("an array was expected".into()),
    }
}
fn field<'v, 'a>(entries: Entries<'v, 'a>, name: &str) -> Result<&'v Value<'a>, String> {
    entries.iter().rev().find(|(key, _)| key == name).map(|(_, v)| v).ok_or_else(|| format!("KeyError: '{name}'"))
}
fn string<'v>(value: &'v Value<'_>) -> Result<&'v str, String> {
    match value {
        Value::Str(text) => Ok(text),
        _ => Err("a string was expected".into()),
    }
}
fn int(value: &Value<'_>) -> Result<i128, String> {
    match value {
        Value::Int(text) => std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()).ok_or("a number too large".into()),
        _ => Err("an integer was expected".into()),
    }
}
fn quantile_of(value: &Value<'_>) -> Result<u8, String> {
    u8::try_from(int(value)?).ok().filter(|q| *q <= 5).ok_or_else(|| "a quantile is 0 to 5".to_string())
}
/// Reported money of an exact amount at `scale` (HALF_EVEN to 1e-8).
fn reported(value: I256, scale: u32) -> I256 {
    numbers::rescale(value, scale, S8, Rounding::HalfEven)
}
fn decimal(value: &Value<'_>, scale: u32) -> Result<i128, String> {
    let text = string(value)?;
    let kind = Kind { name: "STATE", integer_digits: 38 - scale, fraction_digits: scale, scale };
    numbers::parse(text.as_bytes(), kind).map_err(|_| format!("not a decimal at 1e-{scale}: {text}"))
}
/// A decimal of a value derived from a balance (a lot's cost): up to 512 bits at `scale`.
fn wide_512_decimal(value: &Value<'_>, scale: u32) -> Result<Wide, String> {
    let text = string(value)?;
    let plain = numbers::plain(text.as_bytes()).map_err(|_| format!("not a decimal: {text}"))?;
    if plain.fraction.len() as u32 > scale {
        return Err(format!("not a decimal at 1e-{scale}: {text}"));
    }
    let digits = format!("{}{}{}", if plain.negative { "-" } else { "" }, std::str::from_utf8(plain.integer).unwrap_or("0"),
                         std::str::from_utf8(plain.fraction).unwrap_or(""));
    let value = Wide::from_str_radix(&digits, 10).map_err(|_| format!("a decimal too large: {text}"))?;
    let shift = scale - plain.fraction.len() as u32;
    value.checked_mul(numbers::wpow10(shift)).ok_or_else(|| format!("a decimal too large: {text}"))
}

fn wide_decimal(value: &Value<'_>, scale: u32) -> Result<I256, String> {
    let wide = wide_512_decimal(value, scale)?;
    numbers::fit256(wide).ok_or_else(|| format!("a decimal too large: {}", string(value).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    const SETUP: &[u8] = b"{\"type\":\"fund\",\"ts\":1,\"fund_id\":\"F\",\"settle_asset\":\"USDT\",\"surplus\":\"fund\",\
        \"max_inventory_ratio\":\"1\"}\n\
        {\"type\":\"transfer\",\"ts\":2,\"transfer_id\":\"t-1\",\"account_id\":\"a\",\"asset\":\"USDT\",\"amount\":\"5\"}\n\
        {\"type\":\"transfer\",\"ts\":3,\"transfer_id\":\"t-2\",\"account_id\":\"a\",\"asset\":\"USDT\",\"amount\":\"7\"}\n";

    #[test]
    fn a_panic_while_a_line_applies_leaves_its_line_number_and_none_outside_a_batch() {
        let mut processor = Processor::new(false, 0);
        processor.panic_on = Some("t-2".to_string());
        let panicked = catch_unwind(AssertUnwindSafe(|| processor.apply_lines(SETUP, 10)));
        assert!(panicked.is_err());
        assert_eq!(processor.applying, Some(12));

        let mut clean = Processor::new(false, 0);
        clean.apply_lines(SETUP, 1);
        assert_eq!((clean.applying, clean.events_applied()), (None, 3));
    }

    #[test]
    fn a_snapshot_carries_the_wallets_at_zero_that_accounts_json_lists() {
        let mut processor = Processor::new(false, 0);
        processor.apply_lines(SETUP, 1);
        processor.apply_lines(b"{\"type\":\"transfer\",\"ts\":4,\"transfer_id\":\"t-3\",\"account_id\":\"a\",\
            \"asset\":\"USDT\",\"amount\":\"-12\"}\n", 4);
        assert_eq!(processor.wallets_at_zero(), [("a", "USDT")]);
        let (document, count) = processor.snapshot_json(4);
        let mut ids = Vec::new();
        processor.write_ids(processor.engine.last_seq, count, |piece| ids.extend_from_slice(piece));
        let restored = Processor::restore(&document, &ids, false, 0, false).expect("its own snapshot");
        assert_eq!(restored.state_hash(), processor.state_hash());
        assert_eq!(String::from_utf8(restored.accounts_json()).unwrap(),
                   String::from_utf8(processor.accounts_json()).unwrap());
        // without them (the service's stored state), the state is the same and the wallet goes unlisted
        let text = String::from_utf8(document).unwrap().replace("\"wallets_at_zero\"", "\"unread\"");
        let bare = Processor::restore(text.as_bytes(), &ids, false, 0, false).expect("no wallets at zero");
        assert_eq!(bare.state_hash(), processor.state_hash());
        let listed = |accounts: Vec<u8>| String::from_utf8(accounts).unwrap().contains("\n  \"a\": {");
        assert!(listed(processor.accounts_json()) && !listed(bare.accounts_json()));
    }

    #[test]
    fn accounts_json_is_the_same_bytes_however_its_pieces_are_cut() {
        let empty = Processor::new(false, 0);
        assert_eq!(empty.accounts_json(), b"{}\n");
        let mut processor = Processor::new(false, 0);
        processor.apply_lines(include_bytes!("../../../examples/02-adl-walks-queue.jsonl"), 1);
        processor.apply_lines(include_bytes!("../../../examples/05-funding-and-fund-inventory.jsonl"), 100);
        let views = crate::quantiles::views_now(&processor.engine);
        let whole = processor.accounts_json_with(&views, 1).concat();
        assert!(whole.starts_with(b"{\n  \"") && whole.ends_with(b"\n}\n"));
        for threads in [2, 3, 8, 64] {
            let pieces = processor.accounts_json_with(&views, threads);
            assert!(pieces.len() > 2, "{threads} threads: pieces and the closing one");
            assert_eq!(String::from_utf8(pieces.concat()).unwrap(), String::from_utf8(whole.clone()).unwrap());
        }
        let (summary, written) = processor.summary_and_accounts(|pieces| pieces.concat());
        assert_eq!((summary, written), (processor.summary_json(), whole));
    }

    #[test]
    fn names_sort_by_their_kind_then_the_rest_as_the_whole_names_do() {
        let mut names = Names::default();
        let words = ["a", "a-1", "a:b", "b", "", "\u{e9}", "a\u{0}", "fund", "acct-0000000000000000001",
                     "acct-0000000000000000002", "acct-00000000000000000010"];
        let ids: Vec<u32> = words.iter().map(|word| names.id(word)).collect();
        let mut accounts = Vec::new();
        for &first in &ids {
            for &second in &ids {
                accounts.push(Account::Wallet { account: first, asset: second });
                for side in [PositionSide::Both, PositionSide::Long, PositionSide::Short] {
                    accounts.push(Account::Isolated { account: first, symbol: second, side });
                }
            }
            accounts.extend([Account::Fund(first), Account::Fees(first), Account::Settlement(first),
                             Account::Funding(first), Account::External(first)]);
        }
        let mut by_name: Vec<String> = accounts.iter().map(|account| account.name(&names)).collect();
        by_name.sort();
        let mut by_parts: Vec<(u8, String)> = accounts.iter().map(|account| {
            let mut rest = String::new();
            (account.sort_parts(&names, &mut rest), rest)
        }).collect();
        by_parts.sort();
        let joined: Vec<String> =
            by_parts.into_iter().map(|(kind, rest)| format!("{}{rest}", Account::KINDS[kind as usize])).collect();
        assert_eq!(joined, by_name);
        let mut sorted = ids.clone();
        sort_by_name(&mut sorted, &names);
        let mut expected = ids;
        expected.sort_by(|a, b| names.name(*a).cmp(names.name(*b)));
        assert_eq!(sorted, expected);
    }

    #[test]
    fn a_quarantined_record_is_dead_lettered_as_an_engine_error_and_a_panic_names_its_index() {
        let values: Vec<&[u8]> = SETUP.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        let topics = ["t.funds", "t.transfers", "t.transfers"];
        let consumed = |quarantined: Option<&'static str>| -> Vec<Consumed<'_>> {
            values.iter().zip(topics).enumerate().map(|(offset, (value, topic))| Consumed {
                topic, partition: 0, offset: offset as i64, value: Some(value),
                quarantined: if offset == 1 { quarantined } else { None },
            }).collect()
        };
        let mut processor = Processor::new(false, 0);
        let batch = processor.apply_records(&consumed(Some("engine error: panic: boom")), "t.");
        let letter = String::from_utf8(batch.dead_letters).unwrap();
        assert!(letter.contains("\"kind\":\"engine_error\"") && letter.contains("engine error: panic: boom"), "{letter}");
        assert_eq!((processor.events_applied(), processor.rejected, processor.applying), (2, 1, None));

        let mut failing = Processor::new(false, 0);
        failing.panic_on = Some("t-2".to_string());
        let records = consumed(None);
        assert!(catch_unwind(AssertUnwindSafe(|| failing.apply_records(&records, "t."))).is_err());
        assert_eq!(failing.applying, Some(2));
    }
}
