//! The decode stage (crate::decode_stage) changes no byte: every example journal, with bad lines among its
//! records, applied with the lines decoded ahead on a thread of their own (groups of any size, chunks cut anywhere)
//! gives the outputs, dead letters, snapshots, summary, accounts.json and state hash of decoding each line in turn;
//! a strict replay stops at the same line.
use backstop_engine::decode_stage::Stage;
use backstop_engine::processor::{Batch, Processor};
use backstop_engine::simulation::Simulation;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

/// Every example journal, and all of them one after the other with bad lines between (dead letters, duplicates).
fn journals() -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(EXAMPLES).unwrap().map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl")).collect();
    paths.sort();
    let mut journals: Vec<Vec<u8>> = paths.iter().map(|path| std::fs::read(path).unwrap()).collect();
    let mut mixed = Vec::new();
    for journal in &journals {
        mixed.extend_from_slice(journal);
        mixed.extend_from_slice(b"not json\n\r\n{\"type\":\"mark\",\"ts\":1}\n   \n");
    }
    journals.push(mixed);
    journals
}

/// Each stream's bytes over all batches, where a strict replay stopped, the documents at the end.
fn outcome(processor: &Processor, batches: &[Batch]) -> Vec<Vec<u8>> {
    let mut streams = vec![Vec::new(); 8];
    for batch in batches {
        let outputs = &batch.outputs;
        for (stream, part) in streams.iter_mut().zip([&outputs.fund_ledger, &outputs.adl_events, &outputs.findings,
                                                      &outputs.postings, &outputs.adl_rounds, &batch.dead_letters,
                                                      &batch.journal]) {
            stream.extend_from_slice(part);
        }
        for due in &batch.snapshots {
            streams[7].extend_from_slice(&due.document);
        }
    }
    let stopped = batches.last().and_then(|batch| batch.stopped.clone());
    streams.extend([format!("{stopped:?}").into_bytes(), processor.summary_json(), processor.accounts_json(),
                    processor.state_hash().into_bytes()]);
    streams
}

fn replay(journal: &[u8], stage: Stage, lines_per_chunk: usize, open: &dyn Fn() -> Processor) -> Vec<Vec<u8>> {
    let mut processor = open();
    processor.decode_stage = stage;
    let lines: Vec<&[u8]> = journal.split_inclusive(|&b| b == b'\n').collect();
    let mut batches = Vec::new();
    for (index, chunk) in lines.chunks(lines_per_chunk).enumerate() {
        let batch = processor.apply_lines(&chunk.concat(), 1 + (index * lines_per_chunk) as u64);
        let stopped = batch.stopped.is_some();
        batches.push(batch);
        if stopped {
            break;
        }
    }
    outcome(&processor, &batches)
}

fn staged(group_lines: usize) -> Stage {
    Stage { min_bytes: 0, group_lines }
}

#[test]
fn lines_decoded_ahead_give_the_bytes_of_lines_decoded_in_turn() {
    let settings: [(&str, &dyn Fn() -> Processor); 4] = [
        ("default", &|| Processor::new(false, 0)),
        ("strict", &|| Processor::new(true, 0)),
        ("snapshots and the journal", &|| {
            let mut processor = Processor::new(false, 3);
            processor.journal = true;
            processor
        }),
        ("simulation", &|| {
            let mut processor = Processor::new(false, 0);
            processor.simulation = Some(Simulation::default());
            processor
        }),
    ];
    for (index, journal) in journals().iter().enumerate() {
        for (name, open) in settings {
            let expected = replay(journal, Stage::IN_LINE, usize::MAX, open);
            for (group_lines, lines_per_chunk) in [(1, usize::MAX), (2, usize::MAX), (7, 5), (128, 1), (3, 2)] {
                assert!(replay(journal, staged(group_lines), lines_per_chunk, open) == expected,
                        "journal {index}, {name}: groups of {group_lines}, chunks of {lines_per_chunk} lines");
            }
        }
    }
}

#[test]
fn the_default_stage_decodes_large_chunks_ahead_and_small_ones_in_line() {
    let stage = Stage::default();
    assert!(stage.min_bytes > 0 && stage.min_bytes <= 1 << 20 && stage.group_lines > 1);
    assert_eq!(Processor::new(false, 0).decode_stage, stage);
}
