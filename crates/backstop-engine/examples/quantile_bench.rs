//! The cost of ADL quantile points in the compiled engine alone (docs/design.md, "ADL quantiles and risk levels"):
//!
//!     cargo run --release --example quantile_bench -- JOURNAL.jsonl [ROUNDS]
//!
//! Applies the journal in memory with quantile points off and on, alternating (off, on, on, off per round), and
//! prints each run's time, the points' extra time and the records they published. For `perf` on the profiling
//! build: `cargo build --profile profiling --example quantile_bench`.
use backstop_engine::processor::Processor;
use sha2::{Digest, Sha256};
use std::time::Instant;

const CHUNK_BYTES: usize = 1 << 20;

/// Apply the journal in chunks of whole lines: (seconds, quantile records, SHA-256 of adl-quantiles.jsonl).
fn run(data: &[u8], points: bool) -> (f64, u64, String) {
    let started = Instant::now();
    let mut processor = Processor::new(false, 0);
    processor.engine.adl_quantiles = points;
    let (mut at, mut line) = (0, 1u64);
    let mut digest = Sha256::new();
    while at < data.len() {
        let end = (at + CHUNK_BYTES).min(data.len());
        let end = match data[at..end].iter().rposition(|&b| b == b'\n') {
            Some(last) if end < data.len() => at + last + 1,
            _ => end,
        };
        digest.update(&processor.apply_lines(&data[at..end], line).outputs.adl_quantiles);
        line += data[at..end].iter().filter(|&&b| b == b'\n').count() as u64;
        at = end;
    }
    let seconds = started.elapsed().as_secs_f64();
    let digest: String = digest.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    (seconds, processor.adl_quantiles, digest)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let data = std::fs::read(args.next().expect("a journal path")).expect("a readable journal");
    let rounds: usize = args.next().map_or(2, |n| n.parse().expect("a count of rounds"));
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for points in [false, true, true, false] {
            let (seconds, records, digest) = run(&data, points);
            println!("quantile points {}: {seconds:.3} s, {records} quantile records, sha256 {}",
                     if points { "on " } else { "off" }, &digest[..16]);
            if points { on.push(seconds) } else { off.push(seconds) }
        }
    }
    let mean = |times: &[f64]| times.iter().sum::<f64>() / times.len() as f64;
    println!("points' extra time: {:.3} s (on {:.3} s, off {:.3} s)", mean(&on) - mean(&off), mean(&on), mean(&off));
}
