//! The compiled engine alone over a journal: `cargo run --release --example replay_bench -- JOURNAL.jsonl`. Prints
//! the time and the head hash (for profiling without Python: `perf record` on the profiling build).
use backstop_engine::processor::Processor;
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("a journal path");
    let data = std::fs::read(path).expect("a readable journal");
    let started = Instant::now();
    let mut processor = Processor::new(false, 0);
    let mut first_line = 1;
    let mut outputs = 0usize;
    for chunk in data.split_inclusive(|&b| b == b'\n').collect::<Vec<_>>().chunks(10_000) {
        let joined = chunk.concat();
        let batch = processor.apply_lines(&joined, first_line);
        outputs += batch.outputs.fund_ledger.len() + batch.outputs.adl_events.len() + batch.dead_letters.len();
        first_line += chunk.len() as u64;
    }
    let applied = started.elapsed();
    let summary = processor.summary_json();
    let summarized = started.elapsed();
    let accounts = processor.accounts_json();
    println!("{} events in {:.2} s (+{:.2} s summary, +{:.2} s accounts), {} output bytes, {} accounts bytes",
             processor.events_applied(), applied.as_secs_f64(), (summarized - applied).as_secs_f64(),
             (started.elapsed() - summarized).as_secs_f64(), outputs + summary.len(), accounts.len());
}
