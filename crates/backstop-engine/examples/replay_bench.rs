//! The compiled engine alone over a journal, without Python (for `perf` on the profiling build):
//!
//!     cargo run --release --example replay_bench -- JOURNAL.jsonl               # the rules, outputs in memory
//!     cargo run --release --example replay_bench -- JOURNAL.jsonl OUT           # as `backstop replay` runs it
//!     cargo run --release --example replay_bench -- JOURNAL.jsonl OUT --writer  # the output writer's own ceiling
//!
//! With OUT it runs the replay's pipeline (docs/engines.md, "The replay's pipeline"): chunks of whole lines
//! (CHUNK_BYTES, as Python reads them), the postings left to the output writer's thread, which writes the files
//! into OUT, then the summary and accounts.json side by side (accounts.json while the writer writes the last
//! postings); it says how long the engine waited for the writer, and how long the writer ran on after the engine
//! had finished. `--writer` first applies the whole journal keeping
//! every chunk's outputs, then times the writer alone on them: what it can write per second when nothing else
//! waits on it. Each phase says its CPU seconds (user + system, every thread of the process) beside its wall time:
//! on a machine shared with other work the CPU seconds move less than the wall time.
use backstop_engine::engine::Outputs;
use backstop_engine::ledger::Names;
use backstop_engine::output_files::OutputFiles;
use backstop_engine::processor::Processor;
use std::path::PathBuf;
use std::time::Instant;

const CHUNK_BYTES: usize = 1 << 20;

/// CPU seconds (user + system) this process has spent so far, every thread included (0 where not Linux).
#[cfg(not(target_os = "linux"))]
fn cpu_seconds() -> f64 {
    0.0
}

/// CPU seconds (user + system) this process has spent so far, every thread included.
#[cfg(target_os = "linux")]
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Whole lines of about CHUNK_BYTES each, with the number of their first line.
fn chunks(data: &[u8]) -> Vec<(u64, &[u8])> {
    let (mut out, mut at, mut line) = (Vec::new(), 0, 1u64);
    while at < data.len() {
        let end = (at + CHUNK_BYTES).min(data.len());
        let end = match data[at..end].iter().rposition(|&b| b == b'\n') {
            Some(last) if end < data.len() => at + last + 1,
            _ => end,
        };
        out.push((line, &data[at..end]));
        line += data[at..end].iter().filter(|&&b| b == b'\n').count() as u64;
        at = end;
    }
    out
}

fn in_memory(data: &[u8]) {
    let started = Instant::now();
    let mut processor = Processor::new(false, 0);
    let mut outputs = 0usize;
    for (first_line, chunk) in chunks(data) {
        let batch = processor.apply_lines(chunk, first_line);
        outputs += batch.outputs.fund_ledger.len() + batch.outputs.adl_events.len() + batch.dead_letters.len();
    }
    let applied = started.elapsed();
    let summary = processor.summary_json();
    let summarized = started.elapsed();
    let accounts = processor.accounts_json();
    println!("{} events in {:.2} s (+{:.2} s summary, +{:.2} s accounts), {} output bytes, {} accounts bytes",
             processor.events_applied(), applied.as_secs_f64(), (summarized - applied).as_secs_f64(),
             (started.elapsed() - summarized).as_secs_f64(), outputs + summary.len(), accounts.len());
}

fn pipeline(data: &[u8], out: &std::path::Path) {
    let (started, cpu_started) = (Instant::now(), cpu_seconds());
    let mut processor = Processor::new(false, 0);
    let mut files = OutputFiles::create(out, &processor.engine.postings_head).expect("the output files");
    let mut waited = std::time::Duration::ZERO;
    for (first_line, chunk) in chunks(data) {
        processor.engine.defer_postings = true;
        let batch = processor.apply_lines_into(chunk, first_line, files.outputs());
        let handing = Instant::now();
        files.hand_over(batch.outputs, &processor.engine.names).expect("written");
        waited += handing.elapsed();
    }
    let (applied, cpu_applied) = (started.elapsed(), cpu_seconds());
    eprintln!("the engine waited for the writer {:.2} s", waited.as_secs_f64());
    processor.engine.defer_postings = false;
    // as backstop replay ends: accounts.json under way while the writer writes the last postings, the summary once
    // it has
    let mut caught_up = applied;
    let (summary, accounts) = processor.summary_and_accounts_settling(|| {
        let head = files.postings_head();
        caught_up = started.elapsed();
        head
    }, |pieces| pieces.iter().map(Vec::len).sum::<usize>()).expect("written");
    let (documented, cpu_documented) = (started.elapsed(), cpu_seconds());
    files.finish().expect("written");
    eprintln!("the writer caught up +{:.2} s after the last chunk, closed the files +{:.2} s after the documents",
              (caught_up - applied).as_secs_f64(), (started.elapsed() - documented).as_secs_f64());
    println!("{} events: applied in {:.2} s, summary and accounts (beside the writer's rest) +{:.2} s ({} + {} bytes); \
              CPU {:.2} + {:.2} s",
             processor.events_applied(), applied.as_secs_f64(), (documented - applied).as_secs_f64(), summary.len(),
             accounts, cpu_applied - cpu_started, cpu_documented - cpu_applied);
}

fn writer_ceiling(data: &[u8], out: &std::path::Path) {
    let mut processor = Processor::new(false, 0);
    let mut kept: Vec<(Outputs, Names)> = Vec::new();
    let started = Instant::now();
    for (first_line, chunk) in chunks(data) {
        processor.engine.defer_postings = true;
        let batch = processor.apply_lines_into(chunk, first_line, Outputs::default());
        kept.push((batch.outputs, processor.engine.names.clone()));
    }
    let applied = started.elapsed();
    let bytes: usize = kept.iter().map(|(outputs, _)| {
        outputs.fund_ledger.len() + outputs.adl_events.len() + outputs.findings.len() + outputs.adl_rounds.len()
    }).sum();
    let postings: usize = kept.iter().map(|(outputs, _)| outputs.deferred_postings.len()).sum();
    let (started, cpu_started) = (Instant::now(), cpu_seconds());
    let mut files = OutputFiles::create(out, &Processor::new(false, 0).engine.postings_head).expect("the files");
    for (outputs, names) in kept {
        files.hand_over(outputs, &names).expect("written");
    }
    files.finish().expect("written");
    let (written, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_started);
    let size: u64 = std::fs::read_dir(out).expect("OUT").map(|entry| entry.expect("a file").metadata().expect("its size").len()).sum();
    println!("engine alone (postings left): {:.2} s; writer alone: {postings} postings and {bytes} other bytes, \
              {size} bytes written in {written:.2} s ({cpu:.2} CPU s): {:.0} records/s, {:.0} MB/s",
             applied.as_secs_f64(), processor.events_applied() as f64 / written, size as f64 / written / 1e6);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("a journal path");
    let data = std::fs::read(path).expect("a readable journal");
    match (args.next().map(PathBuf::from), args.next().as_deref()) {
        (None, _) => in_memory(&data),
        (Some(out), None) => pipeline(&data, &out),
        (Some(out), Some("--writer")) => writer_ceiling(&data, &out),
        (Some(_), Some(other)) => panic!("unknown option {other}"),
    }
}
