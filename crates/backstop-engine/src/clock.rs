//! Event time (backstop.core.ordering, docs/design.md §4.1 steps 3 and 4): the journal clock, late and ahead
//! records, and the per-symbol clocks of marks and fundings. Only applied records move them, so the journal alone
//! reproduces them; nothing here reads a clock of the machine.

use rustc_hash::FxHashMap as HashMap;

/// A record this far behind the journal clock is late (ten minutes of event time).
pub const MAX_LATENESS_MS: u64 = 600_000;
/// A record this far after the journal's time is ahead (twelve hours: more than a funding interval).
pub const MAX_AHEAD_MS: u64 = 43_200_000;
/// The clock is the median of this many applied records.
pub const WINDOW: usize = 3;

/// Why a record's ts refuses it: (kind, reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeRefusal {
    Ahead,
    Late,
}

/// The journal's event time: W, the ts of the last WINDOW applied records in journal order, and J.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalClock {
    pub recent: Vec<u64>,
    pub ts: Option<u64>,
}

impl JournalClock {
    /// Err: the record at `ts` is ahead of the journal or late (checked before it is applied), with the reason.
    pub fn check(&self, ts: u64, definition: bool) -> Result<(), (TimeRefusal, String)> {
        let Some(clock) = self.ts else { return Ok(()) };
        let now = clock.max(*self.recent.last().expect("a clock has applied records"));
        if ts > now + MAX_AHEAD_MS && !definition {
            return Err((TimeRefusal::Ahead, format!(
                "ahead of the journal: ts {ts} is {} ms after the journal's time (ts {now}); at most {MAX_AHEAD_MS} \
                 ms is accepted", ts - now)));
        }
        if ts + MAX_LATENESS_MS < clock && self.recent.len() == WINDOW {
            return Err((TimeRefusal::Late, format!(
                "late: ts {ts} is {} ms behind the journal clock (ts {clock}); at most {MAX_LATENESS_MS} ms is \
                 accepted", clock - ts)));
        }
        Ok(())
    }

    /// A record at `ts` was applied.
    pub fn advance(&mut self, ts: u64) {
        self.recent.push(ts);
        if self.recent.len() > WINDOW {
            self.recent.remove(0);
        }
        if self.recent.len() < WINDOW {
            self.ts = self.recent.iter().copied().min();
            return;
        }
        let mut sorted = [0u64; WINDOW];
        sorted.copy_from_slice(&self.recent);
        sorted.sort_unstable();
        let median = sorted[WINDOW / 2];
        if self.ts.is_none_or(|clock| median > clock) {
            self.ts = Some(median);
        }
    }

    /// Whether the journal clock has come within the lateness window of `ts`.
    pub fn reached(&self, ts: u64) -> bool {
        self.ts.is_none_or(|clock| ts <= clock + MAX_LATENESS_MS)
    }
}

/// Per symbol, the ts of the applied records of one kind as far as the journal clock has reached them: R (the
/// latest reached) and P (those not reached yet, in order; usually none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymbolClock {
    pub reached: HashMap<Box<str>, u64>,
    pub pending: HashMap<Box<str>, Vec<u64>>,
}

impl SymbolClock {
    /// Records of `symbol` older than this are stale (None: no bound yet).
    pub fn bound(&self, symbol: &str, clock: &JournalClock) -> Option<u64> {
        let mut bound = self.reached.get(symbol).copied();
        for &ts in self.pending.get(symbol).map_or(&[][..], |p| p.as_slice()) {
            if clock.reached(ts) && bound.is_none_or(|b| ts > b) {
                bound = Some(ts);
            }
        }
        bound
    }

    /// Whether a record of `symbol` was applied (reached or not).
    pub fn seen(&self, symbol: &str) -> bool {
        self.reached.contains_key(symbol) || self.pending.contains_key(symbol)
    }

    pub fn applied(&mut self, symbol: &str, ts: u64, clock: &JournalClock) {
        let mut bound = self.bound(symbol, clock);
        if clock.reached(ts) && bound.is_none_or(|b| ts > b) {
            bound = Some(ts);
        }
        if let Some(bound) = bound {
            match self.reached.get_mut(symbol) {
                Some(reached) => *reached = bound,
                None => {
                    self.reached.insert(symbol.into(), bound);
                }
            }
        }
        let had = self.pending.get(symbol).is_some_and(|p| !p.is_empty());
        if !had && clock.reached(ts) {
            return; // the common case: nothing waits, and this ts is reached
        }
        let mut waiting: Vec<u64> = self.pending.remove(symbol).unwrap_or_default();
        waiting.push(ts);
        waiting.retain(|&t| !clock.reached(t));
        if !waiting.is_empty() {
            self.pending.insert(symbol.into(), waiting);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_the_median_of_the_last_three_and_never_moves_back() {
        // tests/unit/test_ordering.py's sequence
        let mut clock = JournalClock::default();
        for (ts, expected) in [(100, 100), (50, 50), (70, 70), (1_000_000_000_000, 70), (80, 80), (60, 80), (90, 80),
                               (95, 90)] {
            clock.advance(ts);
            assert_eq!(clock.ts, Some(expected), "{ts} {:?}", clock.recent);
        }
    }

    #[test]
    fn late_and_ahead_reasons() {
        let mut clock = JournalClock::default();
        assert!(clock.check(5, false).is_ok());
        for ts in [1_000_000, 1_000_000, 1_000_000] {
            clock.advance(ts);
        }
        let (kind, reason) = clock.check(1_000_000 + MAX_AHEAD_MS + 1, false).unwrap_err();
        assert_eq!(kind, TimeRefusal::Ahead);
        assert_eq!(reason, "ahead of the journal: ts 44200001 is 43200001 ms after the journal's time (ts 1000000); \
                            at most 43200000 ms is accepted");
        assert!(clock.check(1_000_000 + MAX_AHEAD_MS + 1, true).is_ok());
        let (kind, reason) = clock.check(399_999, false).unwrap_err();
        assert_eq!(kind, TimeRefusal::Late);
        assert_eq!(reason, "late: ts 399999 is 600001 ms behind the journal clock (ts 1000000); at most 600000 ms \
                            is accepted");
        assert!(clock.check(400_000, false).is_ok());
    }

    #[test]
    fn a_symbol_clock_keeps_an_unreached_ts_apart() {
        let mut clock = JournalClock::default();
        for ts in [1_000, 1_000, 1_000] {
            clock.advance(ts);
        }
        let mut marks = SymbolClock::default();
        marks.applied("X", 1_000, &clock);
        marks.applied("X", 1_000 + 11 * 3_600_000, &clock); // far ahead: pending, bounds nothing
        assert_eq!(marks.bound("X", &clock), Some(1_000));
        assert_eq!(marks.pending["X"], vec![1_000 + 11 * 3_600_000]);
        for _ in 0..3 {
            clock.advance(1_000 + 11 * 3_600_000);
        }
        assert_eq!(marks.bound("X", &clock), Some(1_000 + 11 * 3_600_000));
        marks.applied("X", 1_000 + 11 * 3_600_000 + 5, &clock);
        assert!(marks.pending.is_empty());
        assert_eq!(marks.reached["X"], 1_000 + 11 * 3_600_000 + 5);
    }
}
