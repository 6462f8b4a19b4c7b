//! The replay's output files written by a thread of their own (docs/engines.md, "The replay's pipeline"): the
//! engine fills a batch's output buffers, hands them to the writer through a bounded channel and goes on with the
//! next batch, while the writer appends them to their files (the kernel's copy into the page cache runs on the
//! other core). Emptied buffers come back for the next batches, so their memory is allocated once, not per batch.
//! The first write error stops the writer; the engine's next hand-over (or `finish`) returns it.

use crate::appender::Appender;
use crate::engine::Outputs;
use crate::ledger::Names;
use crate::posting::Posting;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The files, in the order of `Buffers::parts`.
pub const FILE_NAMES: [&str; 6] = ["fund-ledger.jsonl", "adl-events.jsonl", "adl-rounds.jsonl", "findings.jsonl",
                                   "postings.jsonl", "adl-quantiles.jsonl"];

/// The postings file's place in FILE_NAMES and `Buffers::parts`.
const POSTINGS: usize = 4;

/// Batches handed over and not yet written: the engine runs at most this far ahead of the writer.
const QUEUE_BATCHES: usize = 2;

/// How many postings ahead of the one it writes the writer asks for the names' places (and half as many ahead, for
/// their texts).
const PREFETCH_AHEAD: usize = 8;

/// One batch's output bytes, a buffer per file; the postings whose records the writer writes, and the names
/// interned since the last batch (the writer's copy of the engine's names, for those records).
#[derive(Default, Debug)]
pub struct Buffers {
    pub parts: [Vec<u8>; 6],
    pub postings: Vec<Posting>,
    /// the ids the postings name (Outputs::posting_ids)
    pub posting_ids: Vec<u8>,
    pub new_names: Vec<String>,
}

/// What the writer has done: batches written, the postings chain's head after them, whether it has stopped.
#[derive(Debug)]
struct Progress {
    written: u64,
    postings_head: String,
    stopped: bool,
}

type Shared = Arc<(Mutex<Progress>, Condvar)>;

impl Buffers {
    /// Exchange these buffers with the output lines of `outputs` (its counts stay).
    fn swap_with(&mut self, outputs: &mut Outputs) {
        let [ledger, adl, rounds, findings, postings, quantiles] = &mut self.parts;
        std::mem::swap(ledger, &mut outputs.fund_ledger);
        std::mem::swap(adl, &mut outputs.adl_events);
        std::mem::swap(rounds, &mut outputs.adl_rounds);
        std::mem::swap(findings, &mut outputs.findings);
        std::mem::swap(postings, &mut outputs.postings);
        std::mem::swap(quantiles, &mut outputs.adl_quantiles);
        std::mem::swap(&mut self.postings, &mut outputs.deferred_postings);
        std::mem::swap(&mut self.posting_ids, &mut outputs.posting_ids);
    }
}

/// A write error with the file it happened on.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub error: io::Error,
}

impl WriteError {
    /// The same error again (io::Error is not Clone): the writer's error is returned to every later call.
    fn again(&self) -> WriteError {
        let error = match self.error.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.error.kind(), self.error.to_string()),
        };
        WriteError { path: self.path.clone(), error }
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "cannot write {}: {}", self.path.display(), self.error)
    }
}

/// The writer thread of one output directory.
#[derive(Debug)]
pub struct OutputFiles {
    full: Option<SyncSender<Buffers>>,
    /// in a Mutex only to be Sync (the Python object holding it must be); always reached through `&mut self`
    emptied: Mutex<Receiver<Buffers>>,
    writer: Option<JoinHandle<Result<(), WriteError>>>,
    progress: Shared,
    handed: u64,
    /// how many of the engine's names the writer has
    names_sent: usize,
    /// the error the writer stopped with, once it has been joined
    failure: Option<WriteError>,
}

impl OutputFiles {
    /// Create (or truncate) the files in `directory` and start their writer; `postings_head`: the head of the
    /// postings chain before the first posting it fills.
    pub fn create(directory: &Path, postings_head: &str) -> Result<OutputFiles, WriteError> {
        let mut files = Vec::with_capacity(FILE_NAMES.len());
        for name in FILE_NAMES {
            let path = directory.join(name);
            match Appender::create(path.clone()) {
                Ok(file) => files.push(file),
                Err(error) => return Err(WriteError { path, error }),
            }
        }
        OutputFiles::start(files, postings_head)
    }

    /// Start the writer of files opened already, in the order of FILE_NAMES.
    pub fn start(files: Vec<Appender>, postings_head: &str) -> Result<OutputFiles, WriteError> {
        let progress: Shared = Arc::new((
            Mutex::new(Progress { written: 0, postings_head: postings_head.to_string(), stopped: false }),
            Condvar::new(),
        ));
        let shared = Arc::clone(&progress);
        let (full, to_write) = mpsc::sync_channel::<Buffers>(QUEUE_BATCHES);
        // the writer returns each batch's buffers once written: at most every batch queued, the one being
        // written and the engine's own can be in flight, so this channel never blocks the writer
        let (written, emptied) = mpsc::sync_channel::<Buffers>(QUEUE_BATCHES + 2);
        let writer = std::thread::Builder::new()
            .name("backstop-output-writer".to_string())
            .spawn(move || {
                let result = write_all(files, to_write, written, &shared);
                let (progress, changed) = &*shared;
                progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).stopped = true;
                changed.notify_all();
                result
            })
            .map_err(|error| WriteError { path: PathBuf::from("the output writer thread"), error })?;
        Ok(OutputFiles { full: Some(full), emptied: Mutex::new(emptied), writer: Some(writer), progress, handed: 0,
                        names_sent: 0, failure: None })
    }

    /// Empty outputs for the next batch, in buffers the writer has emptied (their memory kept) when one has come
    /// back.
    pub fn outputs(&mut self) -> Outputs {
        let mut outputs = Outputs::default();
        let emptied = self.emptied.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Ok(mut buffers) = emptied.try_recv() {
            buffers.swap_with(&mut outputs);
        }
        outputs
    }

    /// Hand a batch's outputs to the writer, with the engine's `names` (its postings name accounts and assets).
    /// Err: the writer stopped on an error (the files are incomplete).
    pub fn hand_over(&mut self, mut outputs: Outputs, names: &Names) -> Result<(), WriteError> {
        let mut buffers = Buffers::default();
        buffers.swap_with(&mut outputs);
        buffers.new_names = names.since(self.names_sent).to_vec();
        self.names_sent = names.len();
        let Some(full) = &self.full else { return self.finish() };
        if full.send(buffers).is_err() {
            return self.finish(); // the writer stopped: its error
        }
        self.handed += 1;
        Ok(())
    }

    /// The postings chain's head once everything handed over is written (it waits for the writer).
    pub fn postings_head(&mut self) -> Result<String, WriteError> {
        let (progress, changed) = &*self.progress;
        let mut state = progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while state.written < self.handed && !state.stopped {
            state = changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if state.written == self.handed {
            return Ok(state.postings_head.clone());
        }
        drop(state);
        self.finish()?;
        Err(WriteError { path: PathBuf::from("the output files"),
                         error: io::Error::other("the output writer stopped before it wrote every batch") })
    }

    /// Write what was handed over, flush and close the files; the first write error, if any (again at every
    /// later call).
    pub fn finish(&mut self) -> Result<(), WriteError> {
        self.full = None; // the writer ends when the channel is empty and closed
        if let Some(writer) = self.writer.take() {
            if let Err(error) = writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)) {
                self.failure = Some(error);
            }
        }
        self.failure.as_ref().map_or(Ok(()), |error| Err(error.again()))
    }
}

impl Drop for OutputFiles {
    fn drop(&mut self) {
        let _ = self.finish(); // never leave the thread writing behind its owner; the error was the owner's to ask
    }
}

fn write_all(files: Vec<Appender>, to_write: Receiver<Buffers>, written: SyncSender<Buffers>, shared: &Shared)
             -> Result<(), WriteError> {
    let mut files = files;
    let (progress, changed) = &**shared;
    let mut postings_head = progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).postings_head.clone();
    let mut names = Names::default();
    for mut buffers in to_write {
        for name in buffers.new_names.drain(..) {
            names.id(&name);
        }
        for (file, part) in files.iter_mut().zip(&mut buffers.parts) {
            if !part.is_empty() {
                file.append(part).map_err(|error| WriteError { path: file.path.clone(), error })?;
                part.clear();
            }
        }
        // the postings' records after the postings file's bytes the engine wrote (none when it defers them),
        // formatted straight into the file's pending buffer
        let file = &mut files[POSTINGS];
        let (postings, ids) = (&mut buffers.postings, &buffers.posting_ids);
        file.append_with(|pending| {
            // the names of the postings ahead brought into the cache, where each starts, then its text: with
            // hundreds of thousands of accounts they are seldom there already
            for at in 0..postings.len() {
                if let Some(ahead) = postings.get(at + PREFETCH_AHEAD) {
                    ahead.prefetch_names(&names, false);
                }
                if let Some(ahead) = postings.get(at + PREFETCH_AHEAD / 2) {
                    ahead.prefetch_names(&names, true);
                }
                postings[at].write(&names, ids, pending, &mut postings_head);
            }
            postings.clear();
        }).map_err(|error| WriteError { path: file.path.clone(), error })?;
        buffers.posting_ids.clear();
        let _ = written.try_send(buffers); // the engine may have finished: then the buffers are simply freed
        let mut state = progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.written += 1;
        state.postings_head.clone_from(&postings_head);
        changed.notify_all();
    }
    for file in &mut files {
        file.finish().map_err(|error| WriteError { path: file.path.clone(), error })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("backstop-output-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        directory
    }

    #[test]
    fn batches_are_appended_in_order_and_buffers_come_back() {
        let directory = scratch("order");
        let mut files = OutputFiles::create(&directory, crate::canonical::GENESIS_HASH).unwrap();
        let mut expected = Vec::new();
        for batch in 0..50u32 {
            let mut outputs = files.outputs();
            assert!(outputs.postings.is_empty() && outputs.fund_ledger.is_empty());
            let line = format!("{{\"batch\":{batch}}}\n").repeat(1 + batch as usize % 7);
            outputs.postings.extend_from_slice(line.as_bytes());
            outputs.fund_ledger.extend_from_slice(b"x\n");
            expected.extend_from_slice(line.as_bytes());
            files.hand_over(outputs, &Names::default()).unwrap();
        }
        files.finish().unwrap();
        assert_eq!(std::fs::read(directory.join("postings.jsonl")).unwrap(), expected);
        assert_eq!(std::fs::read(directory.join("fund-ledger.jsonl")).unwrap(), b"x\n".repeat(50));
        assert_eq!(std::fs::read(directory.join("adl-events.jsonl")).unwrap(), b"");
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[test]
    fn postings_written_by_the_writer_are_those_written_at_once() {
        let journal: &[u8] = include_bytes!("../../../examples/02-adl-walks-queue.jsonl");
        let mut at_once = crate::processor::Processor::new(false, 0);
        let whole = at_once.apply_lines(journal, 1);
        assert!(whole.outputs.posting_count > 3);
        for lines_per_batch in [1, 2, 5] {
            let directory = scratch(&format!("deferred-{lines_per_batch}"));
            let mut deferred = crate::processor::Processor::new(false, 0);
            let mut files = OutputFiles::create(&directory, &deferred.engine.postings_head).unwrap();
            let lines: Vec<&[u8]> = journal.split_inclusive(|&b| b == b'\n').collect();
            for (index, batch) in lines.chunks(lines_per_batch).enumerate() {
                deferred.engine.defer_postings = true;
                let outputs = files.outputs();
                let applied = deferred.apply_lines_into(&batch.concat(), 1 + (index * lines_per_batch) as u64, outputs);
                files.hand_over(applied.outputs, &deferred.engine.names).unwrap();
            }
            assert_eq!(files.postings_head().unwrap(), at_once.engine.postings_head);
            files.finish().unwrap();
            assert_eq!(std::fs::read(directory.join("postings.jsonl")).unwrap(), whole.outputs.postings);
            assert_eq!(std::fs::read(directory.join("fund-ledger.jsonl")).unwrap(), whole.outputs.fund_ledger);
            std::fs::remove_dir_all(directory).unwrap();
        }
    }

    #[test]
    fn a_write_error_stops_the_writer_and_is_returned_with_its_file() {
        let Ok(full) = std::fs::File::options().write(true).open("/dev/full") else { return }; // writes fail: ENOSPC
        let directory = scratch("full");
        let mut files: Vec<Appender> =
            FILE_NAMES.iter().map(|name| Appender::create(directory.join(name)).unwrap()).collect();
        files[POSTINGS] = Appender::buffered(PathBuf::from("/dev/full"), full);
        let mut writer = OutputFiles::start(files, crate::canonical::GENESIS_HASH).unwrap();
        let mut first_error = None;
        for _ in 0..10 {
            let mut outputs = writer.outputs();
            outputs.postings.extend_from_slice(b"{}\n");
            if let Err(error) = writer.hand_over(outputs, &Names::default()) {
                first_error = Some(error);
                break;
            }
        }
        let error = first_error.or_else(|| writer.finish().err()).expect("the write error");
        assert_eq!(error.path, PathBuf::from("/dev/full"));
        assert!(error.to_string().starts_with("cannot write /dev/full: "), "{error}");
        assert_eq!(writer.finish().unwrap_err().path, PathBuf::from("/dev/full"), "the error, again");
        assert_eq!(writer.postings_head().unwrap_err().path, PathBuf::from("/dev/full"));
        std::fs::remove_dir_all(directory).unwrap();
    }
}
