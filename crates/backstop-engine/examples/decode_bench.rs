//! Decode-and-validate cost per journal line: `cargo run --release --example decode_bench -- JOURNAL.jsonl`
//! (without an argument, a fill line repeated). Prints ns per line; compare with benchmarks/replay.py's
//! orjson decode-only pass of the same file.
use std::time::Instant;

fn main() {
    let data = match std::env::args().nth(1) {
        Some(path) => std::fs::read(path).expect("a readable journal"),
        None => {
            let line: &[u8] = br#"{"type":"fill","ts":1700000000000,"fill_id":"f123456","account_id":"acct-000123","symbol":"BTCUSDT","side":"buy","qty":"0.015","price":"50123.4","fee":"0.3759255","margin_mode":"cross","leverage":"20"}"#;
            [line, b"\n"].concat().repeat(300_000)
        }
    };
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    for _ in 0..3 {
        let start = Instant::now();
        let mut accepted = 0usize;
        for line in &lines {
            accepted += usize::from(backstop_engine::wire::decode_line(line).is_ok());
        }
        let elapsed = start.elapsed();
        println!("{} lines ({} accepted): {:.0} ns per line", lines.len(), accepted,
                 elapsed.as_nanos() as f64 / lines.len() as f64);
    }
}
