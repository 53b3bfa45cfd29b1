//! Where a file replay is and how long it has left: [`FilePosition`], plain atomics the sending
//! thread stores as it loads each message (no allocation, no system call) and a progress display
//! loads, and [`estimate`], a socket-free, clock-free core (position, span, elapsed time and pace
//! → the fraction done and the seconds left).
//!
//! A file's position is its market time between the first record's receive time and the end
//! its metadata gives (DBN files whose metadata all have an `end`: the span of all of them), or,
//! where market time is not known up front (a capture, a DBN file without an end, a span that is
//! empty), the bytes read of the files' sizes (compressed bytes of a `.dbn.zst`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Where a file replay is, shared by its sending thread (which stores) and a progress display
/// (which loads; [`FilePosition::extent`]). All zero before a run's file is open, and for the
/// generated feed.
#[derive(Debug, Default)]
pub struct FilePosition {
    /// Receive time of the record loaded last (DBN), ns since the epoch; 0 before the first.
    market_ns: AtomicU64,
    /// Receive time of the run's first record (DBN): where the market span starts.
    first_ns: AtomicU64,
    /// The latest `end` of the DBN files' metadata, when every file has one; 0 otherwise.
    end_ns: AtomicU64,
    /// Bytes of the files read so far (compressed bytes of a `.dbn.zst`), of `bytes_total`;
    /// `bytes_from`: those read when they were opened (headers, metadata, a first buffer).
    bytes_read: AtomicU64,
    bytes_from: AtomicU64,
    bytes_total: AtomicU64,
}

/// How far a file replay is, in the measure its file gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// Market time `now_ns` between `start_ns` and `end_ns` (ns since the epoch; `now_ns` 0:
    /// no record loaded yet).
    Market { now_ns: u64, start_ns: u64, end_ns: u64 },
    /// `read` bytes of `total`, `from` of them read when the files were opened (before the
    /// first message: the pace is of the bytes after).
    Bytes { read: u64, from: u64, total: u64 },
}

/// A replay's progress: the fraction done (0 to 1, never NaN) and the seconds left, when they
/// can be told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub fraction: f64,
    pub left_s: Option<f64>,
}

impl FilePosition {
    /// A new run: nothing read yet.
    pub(super) fn reset(&self) {
        for a in [&self.market_ns, &self.first_ns, &self.end_ns, &self.bytes_read, &self.bytes_from, &self.bytes_total]
        {
            a.store(0, Relaxed);
        }
    }

    /// The run's files, opened: their market end (None: not known up front), their sizes in
    /// bytes and the bytes read in opening them.
    pub(super) fn set_extent(&self, end_ns: Option<u64>, bytes_total: u64, bytes_read: u64) {
        self.end_ns.store(end_ns.unwrap_or(0), Relaxed);
        self.bytes_total.store(bytes_total, Relaxed);
        self.bytes_from.store(bytes_read, Relaxed);
        self.bytes_read.store(bytes_read, Relaxed);
    }

    /// A record of receive time `ts_ns` was loaded.
    #[inline]
    pub(super) fn at_record(&self, ts_ns: u64) {
        if self.first_ns.load(Relaxed) == 0 {
            self.first_ns.store(ts_ns, Relaxed);
        }
        self.market_ns.store(ts_ns, Relaxed);
    }

    /// `read` bytes of the files were read.
    #[inline]
    pub(super) fn at_bytes(&self, read: u64) {
        self.bytes_read.store(read, Relaxed);
    }

    /// Receive time of the record loaded last (DBN), ns since the epoch; None before the first
    /// and for other sources.
    pub fn market_ns(&self) -> Option<u64> {
        Some(self.market_ns.load(Relaxed)).filter(|t| *t != 0)
    }

    /// Where the replay is: by market time when the files' span is known (an end after the
    /// first record), else by bytes; None when neither is (the generated feed, no run yet).
    pub fn extent(&self) -> Option<Extent> {
        let (first, end) = (self.first_ns.load(Relaxed), self.end_ns.load(Relaxed));
        if end != 0 && (first == 0 || end > first) {
            return Some(Extent::Market { now_ns: self.market_ns.load(Relaxed), start_ns: first, end_ns: end });
        }
        let total = self.bytes_total.load(Relaxed);
        let (read, from) = (self.bytes_read.load(Relaxed), self.bytes_from.load(Relaxed));
        (total > 0).then_some(Extent::Bytes { read, from, total })
    }
}

/// The fraction done and the seconds left of a replay at `extent`, `elapsed_s` after it began,
/// at `speed` times the recorded pace (None: flat out or a fixed rate). None when the extent
/// measures nothing (a span or size of zero).
///
/// The time left is the time so far scaled by what is left of the fraction (`elapsed · (1 − f)
/// / f`, by bytes the fraction of those after the ones read in opening the files: `elapsed`
/// counts from the first message); by market time at a recorded pace it is at least the market
/// time left divided by the speed (the same when the replay keeps the pace, the first sooner).
/// It is unknown before anything was read or any time passed, and 0 once the fraction is
/// whole. Market time past the span's end counts as its end, before its start as the start.
pub fn estimate(extent: Extent, elapsed_s: f64, speed: Option<f64>) -> Option<Estimate> {
    let elapsed_s = if elapsed_s.is_finite() && elapsed_s > 0.0 { elapsed_s } else { 0.0 };
    let speed = speed.filter(|s| s.is_finite() && *s > 0.0);
    // The fraction shown, the fraction since the first message, and the market time left.
    let (fraction, paced, market_left_ns) = match extent {
        Extent::Market { start_ns, end_ns, .. } if end_ns <= start_ns => return None,
        Extent::Market { now_ns: 0, .. } => (0.0, 0.0, None),
        Extent::Market { now_ns, start_ns, end_ns } => {
            let now = now_ns.clamp(start_ns, end_ns);
            let f = (now - start_ns) as f64 / (end_ns - start_ns) as f64;
            (f, f, Some(end_ns - now))
        }
        Extent::Bytes { total: 0, .. } => return None,
        Extent::Bytes { read, from, total } => {
            let (read, from) = (read.min(total), from.min(total));
            let paced = if total > from { read.saturating_sub(from) as f64 / (total - from) as f64 } else { 1.0 };
            (read as f64 / total as f64, paced, None)
        }
    };
    if fraction >= 1.0 {
        return Some(Estimate { fraction: 1.0, left_s: Some(0.0) });
    }
    let by_time = (paced > 0.0 && elapsed_s > 0.0).then(|| elapsed_s * (1.0 - paced) / paced);
    let by_pace = market_left_ns.zip(speed).map(|(ns, s)| ns as f64 / 1e9 / s).filter(|_| paced > 0.0);
    let left_s = match (by_time, by_pace) {
        (Some(t), Some(p)) => Some(t.max(p)),
        (t, p) => t.or(p),
    };
    Some(Estimate { fraction, left_s: left_s.filter(|s| s.is_finite()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn market(now_s: u64, span_s: u64) -> Extent {
        Extent::Market { now_ns: T0 + now_s * S, start_ns: T0, end_ns: T0 + span_s * S }
    }

    fn left(e: Option<Estimate>) -> Option<f64> {
        e.and_then(|e| e.left_s)
    }

    #[test]
    fn market_time_gives_the_fraction_and_at_a_recorded_pace_the_time_left() {
        // An hour of market data, a quarter through.
        let e = estimate(market(900, 3600), 90.0, Some(10.0)).expect("a span");
        assert_eq!(e.fraction, 0.25);
        // 2700 s of market time left at 10x is 270 s; the time so far says the same.
        assert_eq!(e.left_s, Some(270.0));
        // Behind the pace (the publisher cannot keep 10x): the time so far says more.
        assert_eq!(left(estimate(market(900, 3600), 300.0, Some(10.0))), Some(900.0));
        // Flat out: the time so far alone.
        assert_eq!(left(estimate(market(900, 3600), 2.0, None)), Some(6.0));
        // At the pace, before any time passed: the market time left.
        assert_eq!(left(estimate(market(1800, 3600), 0.0, Some(1.0))), Some(1800.0));
    }

    #[test]
    fn bytes_give_the_fraction_and_the_time_so_far_the_time_left() {
        let e = estimate(Extent::Bytes { read: 400, from: 0, total: 1000 }, 4.0, Some(1.0)).expect("a size");
        assert_eq!(e.fraction, 0.4);
        assert!(e.left_s.is_some_and(|s| (s - 6.0).abs() < 1e-9), "{e:?}");
        assert_eq!(
            estimate(Extent::Bytes { read: 1000, from: 0, total: 1000 }, 4.0, None).map(|e| e.fraction),
            Some(1.0)
        );
        // 100 bytes read in opening the files (metadata): the pace is of the 300 since.
        let e = estimate(Extent::Bytes { read: 400, from: 100, total: 1000 }, 3.0, None).expect("a size");
        assert_eq!(e.fraction, 0.4);
        assert!(e.left_s.is_some_and(|s| (s - 6.0).abs() < 1e-9), "{e:?}");
        // Nothing since the opening: no time left to tell yet.
        let e = estimate(Extent::Bytes { read: 100, from: 100, total: 1000 }, 3.0, None).expect("a size");
        assert_eq!(e, Estimate { fraction: 0.1, left_s: None });
        // Opening read it all (a small compressed file, one buffer).
        let e = estimate(Extent::Bytes { read: 1000, from: 1000, total: 1000 }, 0.0, None).expect("a size");
        assert_eq!(e, Estimate { fraction: 1.0, left_s: Some(0.0) });
        let e = estimate(Extent::Bytes { read: 5, from: 50, total: 10 }, 1.0, None).expect("a size");
        assert_eq!(e.fraction, 0.5, "a start past the size counts as the size");
    }

    #[test]
    fn nothing_read_or_no_time_yet_tells_no_time_left() {
        let none = Estimate { fraction: 0.0, left_s: None };
        assert_eq!(estimate(Extent::Bytes { read: 0, from: 0, total: 1000 }, 5.0, None), Some(none));
        assert_eq!(estimate(Extent::Bytes { read: 10, from: 0, total: 1000 }, 0.0, None).and_then(|e| e.left_s), None);
        // No record loaded yet (market time 0), even at a known pace.
        let not_yet = Extent::Market { now_ns: 0, start_ns: 0, end_ns: T0 };
        assert_eq!(estimate(not_yet, 1.0, Some(1.0)), Some(none));
        // At the first record: 0 done, nothing to scale.
        assert_eq!(estimate(market(0, 3600), 1.0, Some(1.0)), Some(none));
    }

    #[test]
    fn an_empty_span_or_size_measures_nothing() {
        assert_eq!(estimate(market(0, 0), 1.0, Some(1.0)), None);
        let backwards = Extent::Market { now_ns: T0, start_ns: T0, end_ns: T0 - S };
        assert_eq!(estimate(backwards, 1.0, None), None);
        assert_eq!(estimate(Extent::Bytes { read: 0, from: 0, total: 0 }, 1.0, None), None);
        assert_eq!(estimate(Extent::Bytes { read: 5, from: 0, total: 0 }, 1.0, None), None);
    }

    #[test]
    fn past_the_end_is_whole_and_never_more() {
        let all = Estimate { fraction: 1.0, left_s: Some(0.0) };
        assert_eq!(estimate(market(4000, 3600), 10.0, Some(1.0)), Some(all));
        assert_eq!(estimate(Extent::Bytes { read: 2000, from: 10, total: 1000 }, 10.0, None), Some(all));
        // Before the span's start: its start.
        let early = Extent::Market { now_ns: T0 - S, start_ns: T0, end_ns: T0 + S };
        assert_eq!(estimate(early, 1.0, None).map(|e| e.fraction), Some(0.0));
    }

    #[test]
    fn odd_clocks_and_speeds_make_no_nan() {
        for elapsed in [f64::NAN, f64::INFINITY, -1.0, 0.0, 1e-300, 1e300] {
            for speed in [None, Some(f64::NAN), Some(0.0), Some(-1.0), Some(f64::INFINITY), Some(1e-3)] {
                for extent in [market(1, 3600), market(0, 1), Extent::Bytes { read: 1, from: 0, total: u64::MAX }] {
                    let e = estimate(extent, elapsed, speed).expect("measures");
                    assert!((0.0..=1.0).contains(&e.fraction), "{extent:?} {elapsed} {speed:?}: {e:?}");
                    assert!(
                        e.left_s.is_none_or(|s| s.is_finite() && s >= 0.0),
                        "{extent:?} {elapsed} {speed:?}: {e:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_position_is_by_market_time_when_the_span_is_known_else_by_bytes() {
        let p = FilePosition::default();
        assert_eq!(p.extent(), None, "nothing open");
        p.set_extent(None, 1000, 24);
        assert_eq!(p.extent(), Some(Extent::Bytes { read: 24, from: 24, total: 1000 }));
        p.at_bytes(250);
        assert_eq!(p.extent(), Some(Extent::Bytes { read: 250, from: 24, total: 1000 }));
        p.reset();
        p.set_extent(Some(T0 + 10 * S), 1000, 0);
        assert_eq!(p.extent(), Some(Extent::Market { now_ns: 0, start_ns: 0, end_ns: T0 + 10 * S }));
        p.at_record(T0);
        p.at_record(T0 + 5 * S);
        assert_eq!(p.market_ns(), Some(T0 + 5 * S));
        assert_eq!(p.extent(), Some(Extent::Market { now_ns: T0 + 5 * S, start_ns: T0, end_ns: T0 + 10 * S }));
        // An end at or before the first record: no span, the bytes then.
        p.reset();
        p.set_extent(Some(T0), 1000, 10);
        p.at_record(T0);
        assert_eq!(p.extent(), Some(Extent::Bytes { read: 10, from: 10, total: 1000 }));
    }
}
