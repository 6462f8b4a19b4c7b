//! The PyO3 module `backstop._engine`: a thin skin over `backstop_engine`. It converts at the boundary once per
//! batch, releases the GIL while a batch runs, and turns engine errors into typed Python exceptions.

use backstop_engine::adl::Policy;
use backstop_engine::held_ids;
use backstop_engine::idtable::{IdTable, Key};
use backstop_engine::processor::{Consumed, Processor, RestoreError};
use backstop_engine::simulation::Simulation;
use backstop_engine::appender::Appender;
use backstop_engine::output_files::{OutputFiles, WriteError};
use backstop_engine::{kafka_batch, outbox, projection, relay_rows};
use backstop_engine::state::Side;
use backstop_engine::{canonical, json, numbers, wire};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::types::PyTuple;
use std::panic::{catch_unwind, AssertUnwindSafe};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::PyBytes;
use std::collections::HashMap;

fn wide(value: &str) -> PyResult<numbers::Wide> {
    numbers::Wide::from_str_radix(value, 10)
        .map_err(|_| PyValueError::new_err(format!("not a 512-bit integer: {value}")))
}

fn rounding(name: &str) -> PyResult<numbers::Rounding> {
    match name {
        "HALF_EVEN" => Ok(numbers::Rounding::HalfEven),
        "CEILING" => Ok(numbers::Rounding::Ceiling),
        "FLOOR" => Ok(numbers::Rounding::Floor),
        _ => Err(PyValueError::new_err(format!("unknown rounding {name}"))),
    }
}

fn kind(name: &str) -> PyResult<numbers::Kind> {
    [numbers::QTY, numbers::PRICE, numbers::MONEY, numbers::RATE, numbers::LEVERAGE]
        .into_iter()
        .find(|kind| kind.name == name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown kind {name}")))
}

/// The canonical text of value x 10^-scale (value: a decimal integer string of at most 512 bits).
#[pyfunction]
fn numbers_text(value: &str, scale: u32) -> PyResult<String> {
    Ok(numbers::text_512(wide(value)?, scale))
}

/// Wire text of a kind to its scaled integer (as a string); ValueError "syntax" or "bounds".
#[pyfunction]
fn numbers_parse(text: &str, kind_name: &str) -> PyResult<String> {
    numbers::parse(text.as_bytes(), kind(kind_name)?)
        .map(|value| value.to_string())
        .map_err(|error| PyValueError::new_err(format!("{error:?}").to_lowercase()))
}

/// numerator / denominator rounded once (HALF_EVEN, CEILING or FLOOR), integers as decimal strings.
#[pyfunction]
fn numbers_div(numerator: &str, denominator: &str, rounding_name: &str) -> PyResult<String> {
    let denominator = wide(denominator)?;
    if denominator == numbers::Wide::ZERO {
        return Err(PyValueError::new_err("division by zero"));
    }
    Ok(numbers::wdiv_round(wide(numerator)?, denominator, rounding(rounding_name)?).to_string())
}

/// A journal line through the compiled wire layer: (True, pydantic's model_dump_json) or (False, the reason).
#[pyfunction]
fn wire_decode_line(raw: &[u8]) -> (bool, String) {
    match wire::line_dump(raw) {
        Ok(dump) => (true, dump),
        Err(reason) => (false, reason),
    }
}

/// A consumed Kafka value: (True, the journal payload) or (False, the reason as bytes).
#[pyfunction]
fn wire_decode_consumed<'py>(py: Python<'py>, value: Option<&[u8]>, record_type: &str, topic: &str)
                             -> (bool, Bound<'py, PyBytes>) {
    match wire::decode_consumed(value, record_type, topic) {
        Ok((_, payload)) => (true, PyBytes::new(py, &payload)),
        Err(reason) => (false, PyBytes::new(py, reason.as_bytes())),
    }
}

/// A consumed batch's dead letters as outbox rows in COPY text (topic, key, record id, payload), from the lines
/// apply_records returned.
#[pyfunction]
fn outbox_copy<'py>(py: Python<'py>, prefix: &str, dead_letters: &[u8]) -> Bound<'py, PyBytes> {
    let text = py.detach(|| outbox::copy_text(prefix, dead_letters));
    PyBytes::new(py, &text)
}

/// What the service reads of a batch's journal rows: (rows, first seq, last seq, the last one's ts, [(type, count)]
/// in first-come order, accounts, symbols, [(account, symbol)]).
type JournalFactsTuple = (u64, u64, u64, i64, Vec<(String, u64)>, Vec<String>, Vec<String>, Vec<(String, String)>);

/// The service: a consumed batch's journal lines as COPY text of the journal table (journal_copy) and, from the same
/// pass, what the service reads of its rows.
#[pyfunction]
fn journal_copy_and_facts<'py>(py: Python<'py>, journal: &[u8]) -> (Bound<'py, PyBytes>, JournalFactsTuple) {
    let (text, facts) = py.detach(|| backstop_engine::journal_copy::journal_copy_and_facts(journal));
    (PyBytes::new(py, &text), (facts.rows, facts.first_seq, facts.last_seq, facts.last_ts, facts.types,
                               facts.accounts.into_iter().collect(), facts.symbols.into_iter().collect(),
                               facts.positions.into_iter().collect()))
}

/// The service: the checkpoints' journal digest after a batch's journal lines, from the digest before them.
#[pyfunction]
fn journal_digest(py: Python<'_>, digest: &str, journal: &[u8]) -> String {
    py.detach(|| backstop_engine::journal_copy::journal_digest(digest, journal))
}

/// The service: a quantile block's records' Kafka keys and record ids, each ended by a newline, stored with the block.
#[pyfunction]
fn quantile_keys<'py>(py: Python<'py>, block: &[u8]) -> Bound<'py, PyBytes> {
    let text = py.detach(|| outbox::quantile_keys(block));
    PyBytes::new(py, &text)
}

/// A relay row: its place in its source, topic, key, record id, payload and source (`OutboxRow`).
type RelayRow = (i64, PyBackedStr, PyBackedStr, PyBackedStr, PyBackedStr, PyBackedStr);

/// The relay: rows as Kafka record batches, each record headed by its place (under its source's header name) and
/// its record id, in the partition of `partitions` (one per row) or else Kafka's default partitioner's for its key
/// over its topic's count. Returns (topic, partition, records, batch) in sending order: a partition's batches in
/// its rows' order. Each batch is below `max_bytes` unless one record alone is not.
#[pyfunction]
#[pyo3(signature = (rows, counts, place_headers, record_id_header, timestamp_ms, max_bytes, partitions=None))]
#[allow(clippy::too_many_arguments)]
fn record_batches<'py>(py: Python<'py>, rows: Vec<RelayRow>, counts: HashMap<String, u32>,
                       place_headers: HashMap<String, String>, record_id_header: &str, timestamp_ms: i64,
                       max_bytes: usize, partitions: Option<Vec<u32>>) -> PyResult<Vec<RecordBatch<'py>>> {
    if partitions.as_ref().is_some_and(|chosen| chosen.len() != rows.len()) {
        return Err(PyValueError::new_err("one partition per row"));
    }
    let mut records = Vec::with_capacity(rows.len());
    for (index, (id, topic, key, record_id, payload, source)) in rows.iter().enumerate() {
        let topic: &str = topic;
        let partition = match &partitions {
            Some(chosen) => chosen[index],
            None => {
                let count = *counts.get(topic)
                    .ok_or_else(|| PyValueError::new_err(format!("no partition count for topic {topic}")))?;
                kafka_batch::partition_for(key.as_bytes(), count)
            }
        };
        let place_header = place_headers.get(&**source)
            .ok_or_else(|| PyValueError::new_err(format!("no place header for source {}", &**source)))?;
        records.push(kafka_batch::Record { topic, partition, key: key.as_bytes(), value: payload.as_bytes(),
                                           place_header, place: *id, record_id_header, record_id });
    }
    let batches = py.detach(|| kafka_batch::encode(records, timestamp_ms, max_bytes));
    Ok(batches.into_iter()
        .map(|(topic, partition, count, batch)| (topic.to_string(), partition, count, PyBytes::new(py, &batch)))
        .collect())
}

/// (topic, partition, records, batch) of record_batches.
type RecordBatch<'py> = (String, u32, i32, Bound<'py, PyBytes>);

/// The relay's rows of one read, held in Rust (backstop_engine::relay_rows): read from the COPY text of the store's
/// statement over every source, published as record batches, never one Python object per row.
#[pyclass(module = "backstop._engine", frozen)]
struct RelayRows {
    read: relay_rows::RelayRows,
    place_headers: HashMap<String, String>,
}

impl RelayRows {
    fn place_header(&self) -> impl Fn(relay_rows::Source) -> String + '_ {
        |source| self.place_headers[source.name()].clone()
    }
}

#[pymethods]
impl RelayRows {
    /// `copy`: the statement's COPY text; `table_topics`: the journal's, fund ledger's, ADL events' and
    /// postings' topics; `place_headers`: each source's place header. ValueError: text the statement cannot give.
    #[new]
    fn new(py: Python<'_>, copy: &[u8], table_topics: Vec<String>, place_headers: HashMap<String, String>)
           -> PyResult<Self> {
        if let Some(source) = relay_rows::Source::ALL.iter().find(|s| !place_headers.contains_key(s.name())) {
            return Err(PyValueError::new_err(format!("no place header for source {}", source.name())));
        }
        let read = py.detach(|| relay_rows::RelayRows::from_copy(copy, &table_topics))
            .map_err(PyValueError::new_err)?;
        Ok(RelayRows { read, place_headers })
    }

    /// The rows one batch's commit wrote (relay_rows::RelayRows::from_commit): `block`, its quantile block as
    /// (row id, topic, lines, keys); its other outbox rows' and the journal's COPY text as the store sent it (the
    /// outbox's with each row's id first); the fund ledger's and ADL events' rows as (position, key, record id,
    /// record); its posting block as (last position, lines). ValueError: text the store cannot send.
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    fn committed(py: Python<'_>, block: Option<(i64, String, String, String)>, outbox_copy: &[u8],
                 journal_copy: &[u8],
                 fund_ledger: Vec<(i64, String, String, String)>, adl_events: Vec<(i64, String, String, String)>,
                 postings: Option<(i64, PyBackedBytes)>, table_topics: Vec<String>,
                 place_headers: HashMap<String, String>) -> PyResult<Self> {
        if let Some(source) = relay_rows::Source::ALL.iter().find(|s| !place_headers.contains_key(s.name())) {
            return Err(PyValueError::new_err(format!("no place header for source {}", source.name())));
        }
        let read = py.detach(|| {
            let block = block.as_ref().map(|(last_id, topic, lines, keys)| relay_rows::Block {
                last_id: *last_id, topic, lines, keys });
            let postings = match &postings {
                Some((last, lines)) => Some((*last, std::str::from_utf8(lines)
                    .map_err(|_| "the posting block is not UTF-8".to_string())?)),
                None => None,
            };
            relay_rows::RelayRows::from_commit(&relay_rows::Commit {
                block, outbox_copy, journal_copy, fund_ledger: &fund_ledger, adl_events: &adl_events, postings,
            }, &table_topics)
        }).map_err(PyValueError::new_err)?;
        Ok(RelayRows { read, place_headers })
    }

    fn __len__(&self) -> usize {
        self.read.rows.len()
    }

    /// The rows as (id, topic, key, record id, payload, source) tuples (`OutboxRow`'s fields).
    fn rows(&self) -> Vec<(i64, &str, &str, &str, &str, &str)> {
        self.read.rows.iter().map(|row| (row.id, self.read.topics[row.topic].as_str(), self.read.key(row),
                                         self.read.record_id(row), self.read.payload(row), row.source.name()))
            .collect()
    }

    fn last_of_each_source(&self) -> Vec<(&'static str, i64)> {
        self.read.last_of_each_source().into_iter().map(|(source, id)| (source.name(), id)).collect()
    }

    fn most_of_one_source(&self) -> usize {
        self.read.most_of_one_source()
    }

    fn topic_sources(&self) -> Vec<(String, &'static str)> {
        self.read.topic_sources().into_iter().map(|(topic, source)| (topic.to_string(), source.name())).collect()
    }

    /// The rows less those a partition's last record shows in Kafka already (ports.passed_over's rule).
    fn without_published(&self, py: Python<'_>, counts: HashMap<String, u32>,
                         published: HashMap<(String, u32), (String, i64)>) -> PyResult<Self> {
        let read = py.detach(|| self.read.without_published(&counts, self.place_header(), &published))
            .map_err(PyValueError::new_err)?;
        Ok(RelayRows { read, place_headers: self.place_headers.clone() })
    }

    /// The rows as record batches (record_batches' result for the same rows).
    fn record_batches<'py>(&self, py: Python<'py>, counts: HashMap<String, u32>, record_id_header: &str,
                           timestamp_ms: i64, max_bytes: usize) -> PyResult<Vec<RecordBatch<'py>>> {
        let batches = py.detach(|| self.read.record_batches(&counts, self.place_header(), record_id_header,
                                                            timestamp_ms, max_bytes))
            .map_err(PyValueError::new_err)?;
        Ok(batches.into_iter()
            .map(|(topic, partition, count, batch)| (topic, partition, count, PyBytes::new(py, &batch)))
            .collect())
    }
}

/// The relay: a record batch of record_batches with the producer state it is sent with, and its CRC.
#[pyfunction]
fn seal_batch<'py>(py: Python<'py>, batch: &[u8], producer_id: i64, producer_epoch: i16, base_sequence: i32)
                   -> PyResult<Bound<'py, PyBytes>> {
    if batch.len() < 61 {
        return Err(PyValueError::new_err("not a record batch"));
    }
    let mut sealed = batch.to_vec();
    kafka_batch::seal(&mut sealed, producer_id, producer_epoch, base_sequence);
    Ok(PyBytes::new(py, &sealed))
}

/// Kafka's default partitioner for a key (tests compare it with aiokafka's).
#[pyfunction]
fn kafka_partition(key: &[u8], partitions: u32) -> PyResult<u32> {
    if partitions == 0 {
        return Err(PyValueError::new_err("a topic has at least one partition"));
    }
    Ok(kafka_batch::partition_for(key, partitions))
}

fn parsed_json(raw: &[u8]) -> PyResult<json::Value<'_>> {
    json::parse(raw, json::Dialect::File).map_err(|_| PyValueError::new_err("invalid JSON"))
}

/// A JSON document written again canonically (compact, or orjson's indent of 2): tests compare it with orjson's.
#[pyfunction]
fn canonical_reencode<'py>(py: Python<'py>, raw: &[u8], pretty: bool) -> PyResult<Bound<'py, PyBytes>> {
    let document = parsed_json(raw)?;
    let value = canonical::from_json(&document).ok_or_else(|| PyValueError::new_err("a float"))?;
    let mut out = Vec::new();
    if pretty {
        canonical::write_pretty(&mut out, &value, 0);
    } else {
        canonical::write(&mut out, &value);
    }
    Ok(PyBytes::new(py, &out))
}

/// The chain hash of an output record written as JSON (its canonical JSON without `hash`).
#[pyfunction]
fn canonical_chain_hash(raw: &[u8]) -> PyResult<String> {
    let document = parsed_json(raw)?;
    let value = canonical::from_json(&document).ok_or_else(|| PyValueError::new_err("a float"))?;
    Ok(canonical::chain_hash_of(&value))
}

/// Simulation parameters from their texts: rates (1e-18), slippage below 10,000 bp, the market's part at most 1.
fn simulation_params(slippage_bps: &str, partial: bool, market_fill: &str) -> PyResult<Simulation> {
    let rate = |text: &str, what: &str| {
        numbers::parse(text.as_bytes(), numbers::RATE)
            .ok()
            .filter(|value| *value >= 0)
            .ok_or_else(|| PyValueError::new_err(format!("{what} must be a decimal >= 0 with at most 4 integer and \
                                                           18 fraction digits, not {text:?}")))
    };
    let one = numbers::pow10_i128(numbers::S18);
    let slippage_bps = rate(slippage_bps, "slippage_bps")?;
    let market_fill = rate(market_fill, "market_fill")?;
    if slippage_bps >= 10_000 * one || market_fill > one {
        return Err(PyValueError::new_err("slippage_bps must be below 10000 and market_fill at most 1"));
    }
    Ok(Simulation { slippage_bps, partial, market_fill })
}

/// One counterparty of a deleverage: account, rank, score, qty taken (decimal texts).
type Counterparty = (String, usize, String, String);

create_exception!(_engine, InvariantViolation, PyException,
                  "An internal rule of the compiled engine broke (a bug): the engine must not be used any more.");
create_exception!(_engine, RecordPanic, InvariantViolation,
                  "The compiled engine panicked while applying one record (a bug): args are (where, reason), where \
                   the record's journal line (apply_lines) or its index in the batch (apply_records). The engine \
                   must not be used any more.");

/// The service's held identities behind the compiled engine (backstop_engine::held_ids; the reference keeps the
/// same decisions in backstop.pipeline.held_ids.ServiceIds): key digests, HELD_ROW rows and answers cross as bytes,
/// never one Python object per identity. A misuse (an identity asked about but never looked up) raises
/// InvariantViolation; ragged bytes ValueError.
#[pyclass(module = "backstop._engine")]
struct HeldIds {
    ids: held_ids::HeldIds,
}

fn violation(reason: String) -> PyErr {
    InvariantViolation::new_err(reason)
}

#[pymethods]
impl HeldIds {
    #[new]
    #[pyo3(signature = (expected=0))]
    fn new(expected: usize) -> HeldIds {
        HeldIds { ids: held_ids::HeldIds::new(expected) }
    }

    fn __len__(&self) -> usize {
        self.ids.len() as usize
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.ids.nbytes()
    }

    /// Concatenated 16-byte key digests PostgreSQL holds (at start).
    fn load(&mut self, keys: &[u8]) -> PyResult<()> {
        self.ids.load(keys).map_err(PyValueError::new_err)
    }

    /// One identity a rebuild re-applied that PostgreSQL did not hold (a journal older than applied_ids).
    fn add(&mut self, key: &[u8], content: &[u8], seq: u64) -> PyResult<()> {
        let key: &[u8; 16] = key.try_into().map_err(|_| PyValueError::new_err("a key digest is 16 bytes"))?;
        let content: [u8; 8] = content.try_into().map_err(|_| PyValueError::new_err("a content digest is 8 bytes"))?;
        self.ids.add(Key::from_bytes(key), u64::from_be_bytes(content), seq);
        Ok(())
    }

    /// Of a batch's key digests (concatenated), those only PostgreSQL can decide, sorted and concatenated; first,
    /// with `committed_seq`, the journal is committed up to there (recent identities up to it may be dropped).
    #[pyo3(signature = (keys, committed_seq=None))]
    fn unresolved<'py>(&mut self, py: Python<'py>, keys: &[u8], committed_seq: Option<u64>)
                       -> PyResult<Bound<'py, PyBytes>> {
        if let Some(seq) = committed_seq {
            self.ids.committed(seq);
        }
        let keys = held_ids::split_keys(keys).map_err(PyValueError::new_err)?;
        let asked: Vec<u8> = self.ids.unresolved(&keys).into_iter().flat_map(Key::to_bytes).collect();
        Ok(PyBytes::new(py, &asked))
    }

    /// What PostgreSQL holds of `asked` (concatenated key digests), as HELD_ROW rows: the next batch's answers.
    fn resolve(&mut self, asked: &[u8], found: &[u8]) -> PyResult<()> {
        let asked = held_ids::split_keys(asked).map_err(PyValueError::new_err)?;
        self.ids.resolve(&asked, found).map_err(PyValueError::new_err)
    }

    /// The held identities among a batch's key digests, as HELD_ROW rows: `held` of apply_records.
    fn answers<'py>(&self, py: Python<'py>, keys: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let keys = held_ids::split_keys(keys).map_err(PyValueError::new_err)?;
        Ok(PyBytes::new(py, &self.ids.answers(&keys).map_err(violation)?))
    }

    /// The HELD_ROW rows a batch applied (apply_records' last output): held here from now on.
    fn applied(&mut self, rows: &[u8]) -> PyResult<()> {
        self.ids.applied(rows).map_err(PyValueError::new_err)
    }

    /// The identities applied since the last drain, as HELD_ROW rows, for the batch's transaction.
    fn drain<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.ids.drain())
    }

    fn committed(&mut self, seq: u64) {
        self.ids.committed(seq);
    }
}

/// How many lines `data` holds (its newlines), counted without the GIL: a batch's postings are megabytes.
#[pyfunction]
fn line_count(py: Python<'_>, data: &[u8]) -> usize {
    // counted in chunks of at most 255 bytes into a byte-wide sum, which the compiler vectorizes (a usize count per
    // byte it does not)
    py.detach(|| data.chunks(255)
        .map(|chunk| usize::from(chunk.iter().fold(0u8, |count, &byte| count + u8::from(byte == b'\n'))))
        .sum())
}

/// The event time of each consumed value (backstop.pipeline.merge.event_time, the same rule): one call per fetch.
#[pyfunction]
fn event_times(values: Vec<Option<PyBackedBytes>>) -> Vec<i128> {
    values.iter().map(|value| wire::event_time(value.as_deref())).collect()
}

/// The key digests (concatenated) of the identities a consumed batch's records carry, in order: of each record that
/// decodes as its topic's type under `prefix`. Records as apply_records takes them; the GIL is released meanwhile.
#[pyfunction]
fn batch_keys<'py>(py: Python<'py>, records: Vec<(PyBackedStr, i64, i64, Option<PyBackedBytes>)>, prefix: &str)
                   -> Bound<'py, PyBytes> {
    let keys: Vec<u8> = py.detach(|| {
        let consumed: Vec<Consumed<'_>> = records.iter()
            .map(|(topic, partition, offset, value)| Consumed {
                topic, partition: *partition, offset: *offset, value: value.as_deref(), quarantined: None,
            })
            .collect();
        held_ids::batch_keys(&consumed, prefix).into_iter().flat_map(Key::to_bytes).collect()
    });
    PyBytes::new(py, &keys)
}

/// The compiled engine's state behind backstop.engines.CompiledEngine. A batch crosses the boundary once, with the
/// GIL released while it runs; a panic inside (an overflow, a broken invariant) poisons the engine and surfaces as
/// RecordPanic when it came while a record applied (naming the record), else as InvariantViolation.
#[pyclass(module = "backstop._engine")]
struct Ledger {
    processor: Processor,
    poisoned: Option<String>,
    /// the replay's output files, when the engine writes them itself (write_outputs)
    files: Option<OutputFiles>,
    /// the output writer writes the postings' records and their hash chain (write_outputs without snapshots: a
    /// snapshot due inside a batch needs the chain's head there)
    deferred_hashes: bool,
}

/// A write error as Python's OSError (errno, its text, the file), as a failed `open(...).write` raises it.
fn os_error(failure: WriteError) -> PyErr {
    let text = failure.error.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    let path = failure.path.to_string_lossy().into_owned();
    match failure.error.raw_os_error() {
        Some(code) => PyOSError::new_err((code, text, path)),
        None => PyOSError::new_err(format!("cannot write {path}: {text}")),
    }
}

impl Ledger {
    /// A snapshot's identity file as Python bytes, written straight into them.
    fn ids_bytes<'py>(&self, py: Python<'py>, seq: u64, count: u64) -> PyResult<Bound<'py, PyBytes>> {
        PyBytes::new_with(py, IdTable::file_len(count), |buffer: &mut [u8]| {
            let mut at = 0;
            self.processor.write_ids(seq, count, |piece| {
                buffer[at..at + piece.len()].copy_from_slice(piece);
                at += piece.len();
            });
            Ok(())
        })
    }

    /// The postings chain's head from the output writer, once it has filled in every hash handed to it (nothing to
    /// do when it fills none): before anything reads or extends the chain outside apply_lines.
    fn settled(&mut self, py: Python<'_>) -> PyResult<()> {
        if let (Some(files), true) = (self.files.as_mut(), self.deferred_hashes) {
            self.processor.engine.postings_head = py.detach(|| files.postings_head()).map_err(os_error)?;
        }
        Ok(())
    }

    fn guarded<T>(&mut self, work: impl FnOnce(&mut Processor) -> T) -> PyResult<T> {
        if let Some(reason) = &self.poisoned {
            return Err(InvariantViolation::new_err(format!("the engine stopped earlier: {reason}")));
        }
        GUARDED.set(true);
        let outcome = catch_unwind(AssertUnwindSafe(|| work(&mut self.processor)));
        GUARDED.set(false);
        match outcome {
            Ok(value) => Ok(value),
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".to_string());
                self.poisoned = Some(reason.clone());
                Err(match self.processor.applying.take() {
                    Some(at) => RecordPanic::new_err((at, reason)),
                    None => InvariantViolation::new_err(reason),
                })
            }
        }
    }
}

#[pymethods]
impl Ledger {
    /// A new engine, or one restored from a snapshot's document and its identity file (ValueError: why not, as
    /// the reference names it). `held_per_batch`: the caller gives each batch's held identities. `adl_policy`: the
    /// policy's state-document JSON (a snapshot carries its own); `full_adl_metrics`: rank inversions and the
    /// eligible population per ADL round. `simulation`: (slippage_bps, partial, market_fill), the decimals as text
    /// (simulation mode: crate::simulation); `journal`: each batch returns the applied records' lines.
    #[new]
    #[pyo3(signature = (*, strict, snapshot_every, snapshot, ids, check_conservation=false, held_per_batch=false,
                        adl_quantiles=false, adl_policy=None, full_adl_metrics=false, simulation=None,
                        journal=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(strict: bool, snapshot_every: u64, snapshot: Option<&[u8]>, ids: Option<&[u8]>, check_conservation: bool,
           held_per_batch: bool, adl_quantiles: bool, adl_policy: Option<&[u8]>, full_adl_metrics: bool,
           simulation: Option<(String, bool, String)>, journal: bool) -> PyResult<Ledger> {
        if held_per_batch && snapshot_every > 0 {
            return Err(PyValueError::new_err("an engine whose identities are held per batch writes no snapshots"));
        }
        let mut processor = match snapshot {
            None => {
                let mut processor = if held_per_batch {
                    Processor::new(strict, snapshot_every).with_held_per_batch()
                } else {
                    Processor::new(strict, snapshot_every)
                };
                if let Some(raw) = adl_policy {
                    let document = parsed_json(raw)?;
                    processor.engine.policy = Policy::from_document(&document).map_err(PyValueError::new_err)?;
                }
                processor
            }
            Some(raw) => Processor::restore(raw, ids.unwrap_or_default(), strict, snapshot_every, held_per_batch)
                .map_err(|error| PyValueError::new_err(match error {
                    RestoreError::State(reason) => format!("cannot restore the engine state ({reason})"),
                    RestoreError::Snapshot(reason) => reason,
                }))?,
        };
        processor.check_conservation = check_conservation;
        processor.engine.adl_quantiles = adl_quantiles;
        processor.engine.full_metrics = full_adl_metrics;
        processor.engine.totals.full = full_adl_metrics;
        processor.journal = journal;
        if let Some((slippage_bps, partial, market_fill)) = simulation {
            processor.simulation = Some(simulation_params(&slippage_bps, partial, &market_fill)?);
        }
        Ok(Ledger { processor, poisoned: None, files: None, deferred_hashes: false })
    }

    fn events_applied(&self) -> u64 {
        self.processor.events_applied()
    }

    /// A fault hook for tests only (backstop.faults.engine_panic_on): from now on the engine panics right after
    /// applying the record with this id (fill, transfer or liquidation id), as a bug in the rules would.
    fn _panic_on(&mut self, record_id: String) {
        self.processor.panic_on = Some(record_id);
    }

    /// Whole journal lines; `held`: the batch's held identities (per batch only).
    fn apply_lines<'py>(&mut self, py: Python<'py>, chunk: &[u8], first_line: u64, held: &[u8])
                        -> PyResult<Bound<'py, PyTuple>> {
        self.processor.begin_batch(held).map_err(PyValueError::new_err)?;
        let batch = py.detach(|| {
            let mut files = self.files.take();
            let outputs = files.as_mut().map(OutputFiles::outputs).unwrap_or_default();
            let deferred = self.deferred_hashes;
            let applied = self.guarded(|processor| {
                processor.engine.defer_postings = deferred;
                let batch = processor.apply_lines_into(chunk, first_line, outputs);
                processor.engine.defer_postings = false;
                batch
            });
            let names = &self.processor.engine.names;
            let handed = match (applied, files.as_mut()) {
                (Ok(mut batch), Some(writer)) => {
                    writer.hand_over(std::mem::take(&mut batch.outputs), names).map(|()| batch).map_err(os_error)
                }
                (applied, _) => applied,
            };
            self.files = files;
            handed
        })?;
        let mut snapshots: Vec<(u64, Bound<'py, PyBytes>, Bound<'py, PyBytes>)> = Vec::new();
        for due in &batch.snapshots {
            snapshots.push((due.seq, PyBytes::new(py, &due.document), self.ids_bytes(py, due.seq, due.ids)?));
        }
        (
            PyBytes::new(py, &batch.outputs.fund_ledger),
            PyBytes::new(py, &batch.outputs.adl_events),
            PyBytes::new(py, &batch.outputs.findings),
            PyBytes::new(py, &batch.dead_letters),
            PyBytes::new(py, &batch.outputs.postings),
            PyBytes::new(py, &batch.outputs.adl_quantiles),
            snapshots,
            batch.stopped,
            PyBytes::new(py, &batch.outputs.adl_rounds),
            PyBytes::new(py, &batch.journal),
        )
            .into_pyobject(py)
    }

    /// From now on write the output files of apply_lines (all but dead-letter.jsonl: output_files::FILE_NAMES)
    /// into `directory` from a thread of the engine's own; apply_lines returns them empty. OSError: a file that
    /// cannot be created.
    fn write_outputs(&mut self, py: Python<'_>, directory: std::path::PathBuf) -> PyResult<()> {
        if self.files.is_some() {
            return Err(PyValueError::new_err("the engine writes its output files already"));
        }
        let head = &self.processor.engine.postings_head;
        self.files = Some(py.detach(|| OutputFiles::create(&directory, head)).map_err(os_error)?);
        self.deferred_hashes = self.processor.snapshot_every == 0;
        Ok(())
    }

    /// Write everything handed over, close the files and stop their thread (nothing when none were opened).
    /// OSError: the first write that failed.
    fn finish_outputs(&mut self, py: Python<'_>) -> PyResult<()> {
        let settled = self.settled(py);
        self.deferred_hashes = false;
        let finished = match self.files.take() {
            Some(mut files) => py.detach(|| files.finish()).map_err(os_error),
            None => Ok(()),
        };
        settled.and(finished)
    }

    /// (long positions, positions) of a symbol: the depth of its ADL queues (0, 0 for a symbol unknown).
    fn queue_depth(&self, symbol: &str) -> (usize, usize) {
        let engine = &self.processor.engine;
        let Some(symbol) = engine.names.find(symbol) else { return (0, 0) };
        let holders = engine.positions.holders(symbol);
        let longs = holders
            .iter()
            .filter_map(|&(account, side)| engine.positions.get(account, symbol, side))
            .filter(|position| position.qty > 0)
            .count();
        (longs, holders.len())
    }

    /// A consumed Kafka batch: (topic, partition, offset, value) per record, under the topic prefix; `held`: the
    /// batch's held identities (per batch only); `quarantined`: (index in the batch, reason) of the records the engine
    /// failed on in an earlier run, dead-lettered as engine_error instead of applied. The last item: the positions
    /// the batch closed, (account, symbol, side) in order.
    #[pyo3(signature = (records, prefix, held, quarantined=Vec::new()))]
    fn apply_records<'py>(&mut self, py: Python<'py>, records: Vec<(PyBackedStr, i64, i64, Option<PyBackedBytes>)>,
                          prefix: &str,
                          held: &[u8], quarantined: Vec<(usize, String)>) -> PyResult<Bound<'py, PyTuple>> {
        self.settled(py)?;
        self.processor.begin_batch(held).map_err(PyValueError::new_err)?;
        let mut consumed: Vec<Consumed<'_>> = records
            .iter()
            .map(|(topic, partition, offset, value)| Consumed {
                topic, partition: *partition, offset: *offset, value: value.as_deref(), quarantined: None,
            })
            .collect();
        for (index, reason) in &quarantined {
            let record = consumed.get_mut(*index)
                .ok_or_else(|| PyValueError::new_err(format!("quarantined index {index} is not in the batch")))?;
            record.quarantined = Some(reason);
        }
        let batch = py.detach(|| self.guarded(|processor| processor.apply_records(&consumed, prefix)))?;
        let names = &self.processor.engine.names;
        let closed: Vec<(&str, &str, &str)> = batch.outputs.closed_positions.iter()
            .map(|&(account, symbol, side)| (names.name(account), names.name(symbol), side.name()))
            .collect();
        (
            PyBytes::new(py, &batch.journal),
            PyBytes::new(py, &batch.outputs.fund_ledger),
            PyBytes::new(py, &batch.outputs.adl_events),
            PyBytes::new(py, &batch.outputs.findings),
            PyBytes::new(py, &batch.dead_letters),
            PyBytes::new(py, &batch.outputs.postings),
            PyBytes::new(py, &batch.outputs.adl_quantiles),
            batch.duplicates,
            PyBytes::new(py, &batch.held),
            closed,
        )
            .into_pyobject(py)
    }

    fn summary_json<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.settled(py)?;
        let document = py.detach(|| self.guarded(|processor| processor.summary_json()))?;
        Ok(PyBytes::new(py, &document))
    }

    /// summary_json, with accounts.json written to `path` (O_DIRECT where the filesystem takes it), built and
    /// written beside the summary; while the output writer (write_outputs) still writes the last postings,
    /// accounts.json is under way beside it, and the summary waits for the postings chain's head. OSError: the file
    /// could not be written, or the output writer's error.
    fn summary_writing_accounts<'py>(&mut self, py: Python<'py>, path: std::path::PathBuf)
                                     -> PyResult<Bound<'py, PyBytes>> {
        let write = |pieces: Vec<Vec<u8>>| -> Result<(), WriteError> {
            let failed = |error| WriteError { path: path.clone(), error };
            let mut file = Appender::create(path.clone()).map_err(failed)?;
            for piece in pieces {
                file.append(&piece).map_err(failed)?; // each piece freed once written
            }
            file.finish().map_err(failed)
        };
        let mut files = self.files.take();
        let deferred = self.deferred_hashes;
        let outcome = py.detach(|| self.guarded(|processor| {
            let head = processor.engine.postings_head.clone();
            processor.summary_and_accounts_settling(|| match (files.as_mut(), deferred) {
                (Some(files), true) => files.postings_head(),
                _ => Ok(head),
            }, write)
        }));
        self.files = files;
        let (summary, written) = outcome?.map_err(os_error)?;
        written.map_err(os_error)?;
        Ok(PyBytes::new(py, &summary))
    }

    fn accounts_json<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let document = py.detach(|| self.guarded(|processor| processor.accounts_json()))?;
        Ok(PyBytes::new(py, &document))
    }

    fn state_hash(&mut self, py: Python<'_>) -> PyResult<String> {
        self.settled(py)?;
        py.detach(|| self.guarded(|processor| processor.state_hash()))
    }

    /// What a deleverage of qty (a QTY text) on the (symbol, side) queue would take, without taking it: (account,
    /// rank, score, take) per counterparty and the queue's length. `everyone`: rank every position, not through
    /// the index (tests and benchmarks compare the two).
    #[pyo3(signature = (symbol, side, qty, *, everyone=false))]
    fn adl_head(&mut self, py: Python<'_>, symbol: &str, side: &str, qty: &str, everyone: bool)
                -> PyResult<(Vec<Counterparty>, usize)> {
        let side = match side {
            "long" => Side::Long,
            "short" => Side::Short,
            _ => return Err(PyValueError::new_err(format!("side must be long or short, not {side:?}"))),
        };
        let qty = numbers::parse(qty.as_bytes(), numbers::QTY)
            .map_err(|_| PyValueError::new_err(format!("not a qty: {qty:?}")))?;
        let Some(symbol) = self.processor.engine.names.find(symbol).filter(|id| self.processor.engine.marks.contains_key(id))
        else {
            return Err(PyValueError::new_err(format!("no mark for {symbol}")));
        };
        let (head, count) = py.detach(|| self.guarded(|processor| processor.engine.adl_head(symbol, side, qty, everyone)))?;
        let names = &self.processor.engine.names;
        let head = head.into_iter().map(|(account, rank, score, take)| {
            (names.name(account).to_string(), rank, numbers::text_512(score, numbers::S12), numbers::text(take, numbers::S8))
        }).collect();
        Ok((head, count))
    }

    /// Bytes held by the ADL index's rows (not the positions themselves).
    fn adl_index_bytes(&self) -> usize {
        self.processor.engine.adl_index.memory_bytes()
    }

    /// The service's reading of the head: (last seq, head hash, ledger head, ADL head, duplicates, rejected).
    fn head(&self) -> (u64, String, String, String, u64, u64) {
        let processor = &self.processor;
        let engine = &processor.engine;
        (engine.last_seq, engine.head_hash(), engine.ledger_head.clone(), engine.adl_head.clone(),
         processor.duplicates, processor.rejected)
    }

    /// The counters a service keeps in its store (a rebuilt engine carries on from them).
    fn set_counters(&mut self, duplicates: u64, rejected: u64) {
        self.processor.duplicates = duplicates;
        self.processor.rejected = rejected;
    }

    /// The engine's state document (backstop.core.snapshot.state_document), canonical JSON: its SHA-256 is the
    /// state hash.
    fn state_document<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.settled(py)?;
        let document = py.detach(|| self.guarded(|processor| processor.state_document()))?;
        Ok(PyBytes::new(py, &document))
    }

    /// The service's projection rows (backstop.pipeline.projections) as COPY text: (wallets, positions, closed
    /// positions, funds, fund lots or None, ADL queue or None) for the accounts and (account, symbol) positions
    /// given and the deletion of the `closed` (account, symbol, side) not held again, or for every one (`everything`,
    /// with the ADL queue, less what a batch writes as of the same seq: the wallets and cross positions of
    /// `written_accounts`, the positions of `written_positions`).
    #[pyo3(signature = (accounts, positions, *, everything, lots, closed=Vec::new(), written_accounts=Vec::new(),
                        written_positions=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn projection_rows<'py>(&mut self, py: Python<'py>, accounts: Vec<String>, positions: Vec<(String, String)>,
                            everything: bool, lots: bool, closed: Vec<(String, String, String)>,
                            written_accounts: Vec<String>, written_positions: Vec<(String, String)>)
                            -> PyResult<Bound<'py, PyTuple>> {
        let wanted = projection::Wanted { accounts: &accounts, positions: &positions, closed: &closed, everything,
                                          lots, written_accounts: &written_accounts,
                                          written_positions: &written_positions };
        let rows = py.detach(|| self.guarded(|processor| projection::rows(&processor.engine, &wanted)))?;
        (
            PyBytes::new(py, &rows.wallets),
            PyBytes::new(py, &rows.positions),
            PyBytes::new(py, &rows.closed),
            PyBytes::new(py, &rows.funds),
            rows.lots.map(|lots| PyBytes::new(py, &lots)),
            rows.adl_queue.map(|queue| PyBytes::new(py, &queue)),
        )
            .into_pyobject(py)
    }

    /// Bring the ADL index up to date (each deleverage does so first); False when nothing had changed.
    fn refresh_adl_index(&mut self, py: Python<'_>) -> PyResult<bool> {
        py.detach(|| self.guarded(|processor| {
            let engine = &mut processor.engine;
            let pending = !engine.ledger.changed.is_empty();
            engine.adl_index.refresh(&engine.positions, &mut engine.ledger, &engine.instruments);
            pending
        }))
    }

    /// About how many accounts the next refresh_adl_index rewrites.
    fn adl_index_backlog(&self) -> usize {
        self.processor.engine.ledger.changed.len()
    }

    /// How many positions are open (each side of a hedge counts).
    fn open_positions(&self) -> usize {
        self.processor.engine.positions.len()
    }

    /// (seq, the snapshot's document, its identity file).
    fn snapshot<'py>(&mut self, py: Python<'py>, input_line: u64) -> PyResult<Bound<'py, PyTuple>> {
        self.settled(py)?;
        if self.processor.engine.admission.per_batch {
            return Err(PyValueError::new_err("an engine whose identities are held per batch writes no snapshots"));
        }
        let (mut document, count) = py.detach(|| self.guarded(|processor| processor.snapshot_json(input_line)))?;
        document.push(b'\n');
        let seq = self.processor.events_applied();
        (seq, PyBytes::new(py, &document), self.ids_bytes(py, seq, count)?).into_pyobject(py)
    }
}

thread_local! {
    /// Set while `Ledger::guarded` runs work on this thread: a panic there is reported by the exception it raises.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The panic hook: quiet for a panic `guarded` catches (its message travels in the exception, so a command says it
/// in one line), and for one on the engine's own threads (named `backstop-…`: decode, output writer, accounts,
/// parallel helpers), which raise it again on the thread that waits for them; the default hook's report for any
/// other.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let engine_thread = std::thread::current().name().is_some_and(|name| name.starts_with("backstop-"));
        if !GUARDED.get() && !engine_thread {
            default(info);
        }
    }));
}

#[pymodule]
fn _engine(module: &Bound<'_, PyModule>) -> PyResult<()> {
    install_panic_hook();
    module.add("VERSION", backstop_engine::VERSION)?;
    module.add("InvariantViolation", module.py().get_type::<InvariantViolation>())?;
    module.add("RecordPanic", module.py().get_type::<RecordPanic>())?;
    module.add_class::<Ledger>()?;
    module.add_class::<RelayRows>()?;
    module.add_class::<HeldIds>()?;
    module.add_function(wrap_pyfunction!(batch_keys, module)?)?;
    module.add_function(wrap_pyfunction!(event_times, module)?)?;
    module.add_function(wrap_pyfunction!(line_count, module)?)?;
    module.add_function(wrap_pyfunction!(numbers_text, module)?)?;
    module.add_function(wrap_pyfunction!(numbers_parse, module)?)?;
    module.add_function(wrap_pyfunction!(numbers_div, module)?)?;
    module.add_function(wrap_pyfunction!(wire_decode_line, module)?)?;
    module.add_function(wrap_pyfunction!(wire_decode_consumed, module)?)?;
    module.add_function(wrap_pyfunction!(canonical_reencode, module)?)?;
    module.add_function(wrap_pyfunction!(canonical_chain_hash, module)?)?;
    module.add_function(wrap_pyfunction!(outbox_copy, module)?)?;
    module.add_function(wrap_pyfunction!(journal_copy_and_facts, module)?)?;
    module.add_function(wrap_pyfunction!(journal_digest, module)?)?;
    module.add_function(wrap_pyfunction!(quantile_keys, module)?)?;
    module.add_function(wrap_pyfunction!(record_batches, module)?)?;
    module.add_function(wrap_pyfunction!(seal_batch, module)?)?;
    module.add_function(wrap_pyfunction!(kafka_partition, module)?)?;
    Ok(())
}
