//! The decode stage of a batch of journal lines (docs/engines.md, "The replay's pipeline"): each line decoded and
//! validated (crate::wire), with its admission digests (crate::content::Digests: SHA-256 of the record's content
//! and identity, which depend on the record alone), on a thread of its own ahead of the rules, handed over in
//! groups of lines through a bounded channel. The rules take the lines in order, as they would decode them one by
//! one, so the outputs are the same bytes wherever the groups are cut; a chunk too small to be worth a thread is
//! decoded in line.

use crate::content::Digests;
use crate::wire::{self, Record};
use std::panic::resume_unwind;
use std::sync::mpsc;

/// Groups decoded and not yet taken by the rules: the decoder runs at most this far ahead.
const GROUPS_AHEAD: usize = 8;

/// When a chunk is decoded on a thread of its own, and how many lines go to the rules at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage {
    /// chunks of fewer bytes are decoded in line (a thread per chunk costs more than it saves there)
    pub min_bytes: usize,
    pub group_lines: usize,
}

impl Default for Stage {
    fn default() -> Stage {
        Stage { min_bytes: 64 << 10, group_lines: 128 }
    }
}

impl Stage {
    /// Every chunk decoded in line.
    pub const IN_LINE: Stage = Stage { min_bytes: usize::MAX, group_lines: 1 };
}

/// One line of the journal, decoded: the record and its digests, or why it is not a valid record.
#[derive(Debug)]
pub struct Line<'a> {
    pub number: u64,
    pub raw: &'a [u8],
    pub decoded: Result<(Record<'a>, Digests), String>,
}

/// The records of a chunk by the journal reader's rule (backstop.adapters.journal_file), numbered from
/// `first_line`: the bytes between two `\n`, a `\r` right before the `\n` dropped; blank lines (only spaces, tabs
/// and carriage returns) are counted and skipped.
pub fn records(chunk: &[u8], first_line: u64) -> impl Iterator<Item = (u64, &[u8])> {
    chunk.split_inclusive(|&b| b == b'\n').enumerate().filter_map(move |(offset, line)| {
        let raw = match line {
            [rest @ .., b'\r', b'\n'] | [rest @ .., b'\n'] => rest,
            whole => whole,
        };
        let blank = raw.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'));
        (!blank).then_some((first_line + offset as u64, raw))
    })
}

/// A line decoded; `scratch`: a buffer lent for the digests' documents.
pub fn decode<'a>(number: u64, raw: &'a [u8], scratch: &mut Vec<u8>) -> Line<'a> {
    let decoded = wire::decode_line(raw).map(|record| {
        let digests = Digests::of(&record, scratch);
        (record, digests)
    });
    Line { number, raw, decoded }
}

/// `apply` on each line of the chunk in order, until it returns false (a strict replay stopping at a bad line). With
/// each line come the lines decoded after it that are at hand (the rest of its group; none when decoded in line),
/// which the rules may look ahead at (to prefetch what they will read).
pub fn each_line<'a>(chunk: &'a [u8], first_line: u64, stage: Stage,
                     apply: impl FnMut(Line<'a>, &[Line<'a>]) -> bool) {
    each_line_decoded_by(chunk, first_line, stage, decode, apply)
}

/// `each_line` with the decoding function given (tests make it fail).
fn each_line_decoded_by<'a>(chunk: &'a [u8], first_line: u64, stage: Stage,
                            decode: impl Fn(u64, &'a [u8], &mut Vec<u8>) -> Line<'a> + Send,
                            mut apply: impl FnMut(Line<'a>, &[Line<'a>]) -> bool) {
    if chunk.len() < stage.min_bytes {
        let mut scratch = Vec::new();
        for (number, raw) in records(chunk, first_line) {
            if !apply(decode(number, raw, &mut scratch), &[]) {
                return;
            }
        }
        return;
    }
    let group_lines = stage.group_lines.max(1);
    std::thread::scope(|scope| {
        let (decoded, to_apply) = mpsc::sync_channel::<Vec<Line<'a>>>(GROUPS_AHEAD);
        // groups the rules have emptied go back to the decoder, their memory kept (at most every group in flight)
        let (emptied, to_fill) = mpsc::sync_channel::<Vec<Line<'a>>>(GROUPS_AHEAD + 2);
        let decoder = std::thread::Builder::new()
            .name("backstop-decode".to_string())
            .spawn_scoped(scope, move || {
                let fresh = || to_fill.try_recv().unwrap_or_else(|_| Vec::with_capacity(group_lines));
                let mut scratch = Vec::new();
                let mut group = fresh();
                for (number, raw) in records(chunk, first_line) {
                    group.push(decode(number, raw, &mut scratch));
                    if group.len() == group_lines {
                        let full = std::mem::replace(&mut group, fresh());
                        if decoded.send(full).is_err() {
                            return; // the rules stopped
                        }
                    }
                }
                if !group.is_empty() {
                    let _ = decoded.send(group);
                }
            })
            .expect("a thread for the decode stage");
        'groups: for mut group in &to_apply {
            let mut lines = group.drain(..);
            while let Some(line) = lines.next() {
                if !apply(line, lines.as_slice()) {
                    break 'groups;
                }
            }
            drop(lines);
            let _ = emptied.try_send(group);
        }
        drop(to_apply); // a decoder still sending stops
        if let Err(panic) = decoder.join() {
            resume_unwind(panic); // the decoder's own panic, as it would have been raised in line
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOURNAL: &[u8] = include_bytes!("../../../examples/02-adl-walks-queue.jsonl");

    fn decoded_lines(chunk: &[u8], stage: Stage) -> Vec<(u64, Vec<u8>, Result<Digests, String>)> {
        let mut seen = Vec::new();
        let mut ahead: Vec<u64> = Vec::new(); // the numbers of the lines at hand after each line
        each_line(chunk, 5, stage, |line, after| {
            if let Some(expected) = ahead.first() {
                assert_eq!(*expected, line.number, "the line looked ahead at comes next");
            }
            ahead = after.iter().map(|next| next.number).collect();
            seen.push((line.number, line.raw.to_vec(), line.decoded.map(|(_, digests)| digests)));
            true
        });
        seen
    }

    #[test]
    fn lines_come_in_order_however_the_groups_are_cut() {
        let chunk = [JOURNAL, b"\n  \r\nnot json\r\n{\"type\":\"mark\"}\n", JOURNAL].concat();
        let in_line = decoded_lines(&chunk, Stage::IN_LINE);
        assert!(in_line.iter().any(|(_, _, decoded)| decoded.is_err()));
        for group_lines in [1, 2, 3, 7, 128] {
            assert_eq!(decoded_lines(&chunk, Stage { min_bytes: 0, group_lines }), in_line, "groups of {group_lines}");
        }
    }

    #[test]
    fn a_stop_ends_the_decoder_and_keeps_what_was_applied() {
        for stage in [Stage::IN_LINE, Stage { min_bytes: 0, group_lines: 2 }] {
            let mut applied = Vec::new();
            each_line(JOURNAL, 1, stage, |line, _| {
                applied.push(line.number);
                applied.len() < 3
            });
            assert_eq!(applied, vec![1, 2, 3]);
        }
    }

    #[test]
    fn a_panic_in_the_decoder_is_raised_in_the_rules_thread_as_it_is() {
        for stage in [Stage::IN_LINE, Stage { min_bytes: 0, group_lines: 2 }] {
            let mut applied = Vec::new();
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                each_line_decoded_by(JOURNAL, 1, stage, |number, raw, scratch| {
                    assert!(number != 4, "cannot decode line {number}");
                    decode(number, raw, scratch)
                }, |line, _| {
                    applied.push(line.number);
                    true
                })
            }));
            let panic = caught.expect_err("the decoder's panic");
            assert_eq!(panic.downcast_ref::<String>().map(String::as_str), Some("cannot decode line 4"));
            // lines before it, in order (with the stage, those of the groups handed over before it)
            assert!(!applied.is_empty() && [1, 2, 3].starts_with(&applied), "{applied:?}");
        }
    }
}
