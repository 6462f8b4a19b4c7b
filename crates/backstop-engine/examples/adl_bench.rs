//! ADL selection in the compiled engine alone: `cargo run --release --example adl_bench -- [POSITIONS]`. Builds
//! POSITIONS BTCUSDT shorts through journal lines (as benchmarks/adl_selection.py does), then times the selection of
//! one deleverage after a mark move and a thousand changed accounts (for `perf`; the profiling profile keeps symbols).
use backstop_engine::processor::Processor;
use backstop_engine::state::Side;
use std::time::Instant;

fn main() {
    let positions: usize = std::env::args().nth(1).map_or(1_000_000, |n| n.parse().expect("a count"));
    let mut processor = Processor::new(false, 0);
    let mut ts = 1_760_000_000_000u64;
    let mut line = 1u64;
    let mut apply = |processor: &mut Processor, text: String| {
        let count = text.lines().count() as u64;
        let batch = processor.apply_lines(text.as_bytes(), line);
        assert!(batch.dead_letters.is_empty(), "{}", String::from_utf8_lossy(&batch.dead_letters));
        line += count;
    };
    let mut next_ts = || {
        ts += 1;
        ts
    };
    let setup = format!(
        "{{\"type\":\"fund\",\"ts\":{},\"fund_id\":\"BTC\",\"settle_asset\":\"USDT\",\"surplus\":\"fund\",\"max_inventory_ratio\":\"1\"}}\n\
         {{\"type\":\"instrument\",\"ts\":{},\"symbol\":\"BTCUSDT\",\"settle_asset\":\"USDT\",\"tick_size\":\"0.1\",\"lot_size\":\"0.001\",\"tiers\":[{{\"max_notional\":\"1000000000\",\"mmr\":\"0.004\",\"maint_amount\":\"0\"}}],\"liquidation_fee_rate\":\"0.005\",\"fund_id\":\"BTC\"}}\n",
        next_ts(), next_ts());
    apply(&mut processor, setup);
    let mut state = 42u64;
    let mut random = |below: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % below
    };
    let started = Instant::now();
    let mut text = String::new();
    for number in 0..positions {
        let lots = 1 + random(5000);
        let entry_tenths = 950_000 + random(300_000);
        let leverage = [2, 3, 5, 10, 20, 25, 50, 75, 100][random(9) as usize];
        let mode = if random(10) == 0 { "cross" } else { "isolated" };
        // the initial margin, rounded up to 1e-8 (enough for the fill's own rounding)
        let value_units = lots as u128 * entry_tenths as u128 * 10_000_000_000_000 / 10_000; // at 1e-16 / 1e4
        let margin_e8 = value_units / leverage as u128 / 100_000_000 + 1;
        text.push_str(&format!(
            "{{\"type\":\"transfer\",\"ts\":{},\"transfer_id\":\"d-{number}\",\"account_id\":\"acct-{number:07}\",\"asset\":\"USDT\",\"amount\":\"{}.{:08}\"}}\n",
            next_ts(), margin_e8 / 100_000_000, margin_e8 % 100_000_000));
        text.push_str(&format!(
            "{{\"type\":\"fill\",\"ts\":{},\"fill_id\":\"f-{number}\",\"account_id\":\"acct-{number:07}\",\"symbol\":\"BTCUSDT\",\"side\":\"sell\",\"qty\":\"{}.{:03}\",\"price\":\"{}.{}\",\"fee\":\"0\",\"margin_mode\":\"{mode}\",\"leverage\":\"{leverage}\"}}\n",
            next_ts(), lots / 1000, lots % 1000, entry_tenths / 10, entry_tenths % 10));
        if text.len() > 4 << 20 {
            apply(&mut processor, std::mem::take(&mut text));
        }
    }
    text.push_str(&format!("{{\"type\":\"mark\",\"ts\":{},\"symbol\":\"BTCUSDT\",\"mark_price\":\"110000\"}}\n", next_ts()));
    apply(&mut processor, text);
    println!("{positions} positions built in {:.2} s", started.elapsed().as_secs_f64());
    let symbol = processor.engine.names.find("BTCUSDT").expect("the symbol");
    let started = Instant::now();
    processor.engine.adl_head(symbol, Side::Short, 100_000, false);
    println!("first selection (index build) {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    let mut times = Vec::new();
    for round in 0..50 {
        let mut text = format!("{{\"type\":\"mark\",\"ts\":{},\"symbol\":\"BTCUSDT\",\"mark_price\":\"{}.{}\"}}\n",
                               next_ts(), 100_000 + random(15_000), random(10));
        for _ in 0..1000 {
            text.push_str(&format!(
                "{{\"type\":\"transfer\",\"ts\":{},\"transfer_id\":\"r{round}-{}\",\"account_id\":\"acct-{:07}\",\"asset\":\"USDT\",\"amount\":\"0.00000001\"}}\n",
                next_ts(), random(1 << 40), random(positions as u64)));
        }
        apply(&mut processor, text);
        let qty = (1000 + random(49_000)) as i128 * 100_000;
        let started = Instant::now();
        let (head, count) = processor.engine.adl_head(symbol, Side::Short, qty, false);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(count == positions && !head.is_empty());
    }
    times.sort_by(f64::total_cmp);
    println!("selection: median {:.2} ms, max {:.2} ms", times[times.len() / 2], times[times.len() - 1]);
    let started = Instant::now();
    processor.engine.adl_head(symbol, Side::Short, 100_000, true);
    println!("exact ranking of every position {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
}
