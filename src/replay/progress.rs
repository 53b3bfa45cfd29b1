//! Where a file replay is and how long it has left: [`FilePosition`], plain atomics the sending
//! thread stores as it loads each message (no allocation, no system call) and a progress display
//! loads, and [`estimate`], a socket-free, clock-free core (position, span, elapsed time and pace
//! → the fraction done and the seconds left).
//!
//! A file's position is its market time between the first record's receive time and the end
//! its metadata gives (DBN files whose metadata all have an `end`: the span of all of them),
//! held within what the bytes read say. A DBN file's `end` is its query's end, not its data's
//! (a daily file whose data stops at 20:00 ends at midnight): market time alone left the bar
//! short of the end when the data ended, and the time left at a recorded pace too long. The
//! bytes read of the files' sizes bound the position from both sides (a plain file's exactly,
//! a `.dbn.zst`'s compressed bytes within its decompressor's read-ahead): where market time
//! falls outside those bounds the bytes give the fraction. Where market time is not known up
//! front (a capture, a DBN file without an end, a span that is empty), the bytes read alone
//! (compressed bytes of a `.dbn.zst`).

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
    /// How far `bytes_read` may be ahead of the message loaded last (a decompressor's buffers).
    bytes_ahead: AtomicU64,
}

/// How far a file replay is, in the measure its file gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// Market time `now_ns` between `start_ns` and `end_ns` (ns since the epoch; `now_ns` 0:
    /// no record loaded yet), held within the bounds `bytes` sets when the files' sizes are
    /// known (`end_ns` is a metadata's: the data may end well before it).
    Market { now_ns: u64, start_ns: u64, end_ns: u64, bytes: Option<ByteBounds> },
    /// `read` bytes of `total`, `from` of them read when the files were opened (before the
    /// first message: the pace is of the bytes after).
    Bytes { read: u64, from: u64, total: u64 },
}

/// The bytes read of the files' sizes, as bounds of a market-time position: the message loaded
/// last is at most `read` bytes in and at least `read - ahead` (`ahead`: what a decompressor
/// may have read past it; 0 for plain files, read record by record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteBounds {
    pub read: u64,
    /// Of `read`, those read in opening the files (before the first message).
    pub from: u64,
    pub total: u64,
    pub ahead: u64,
}

/// What a fraction done is measured by (a progress line says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The market time of the message loaded last, in the files' span.
    MarketTime,
    /// The bytes read of the files' sizes.
    BytesRead,
}

impl Basis {
    /// `by market time`, `by bytes read`: how a progress line says it.
    pub fn said(self) -> &'static str {
        match self {
            Basis::MarketTime => "by market time",
            Basis::BytesRead => "by bytes read",
        }
    }
}

impl Extent {
    /// The fraction done (0 to 1) and what measured it; None when the extent measures nothing
    /// (a span or size of zero). Market time past the span's end counts as its end, before its
    /// start as the start; with byte bounds, a market fraction outside `[(read - ahead) /
    /// total, read / total]` is moved to the nearer bound and measured by bytes read.
    pub fn fraction(&self) -> Option<(f64, Basis)> {
        match *self {
            Extent::Market { start_ns, end_ns, .. } if end_ns <= start_ns => None,
            Extent::Market { now_ns, start_ns, end_ns, bytes } => {
                let market = match now_ns {
                    0 => 0.0,
                    now => (now.clamp(start_ns, end_ns) - start_ns) as f64 / (end_ns - start_ns) as f64,
                };
                let Some(b) = bytes.filter(|b| b.total > 0) else { return Some((market, Basis::MarketTime)) };
                let read = b.read.min(b.total);
                let (lo, hi) = (read.saturating_sub(b.ahead) as f64 / b.total as f64, read as f64 / b.total as f64);
                Some(match market {
                    m if m < lo => (lo, Basis::BytesRead),
                    m if m > hi => (hi, Basis::BytesRead),
                    m => (m, Basis::MarketTime),
                })
            }
            Extent::Bytes { total: 0, .. } => None,
            Extent::Bytes { read, total, .. } => Some((read.min(total) as f64 / total as f64, Basis::BytesRead)),
        }
    }
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
        for a in [
            &self.market_ns,
            &self.first_ns,
            &self.end_ns,
            &self.bytes_read,
            &self.bytes_from,
            &self.bytes_total,
            &self.bytes_ahead,
        ] {
            a.store(0, Relaxed);
        }
    }

    /// The run's files, opened: their market end (None: not known up front), their sizes in
    /// bytes, the bytes read in opening them, and how far those may be ahead of the first
    /// message (a decompressor's read-ahead).
    pub(super) fn set_extent(&self, end_ns: Option<u64>, bytes_total: u64, bytes_read: u64, ahead: u64) {
        self.end_ns.store(end_ns.unwrap_or(0), Relaxed);
        self.bytes_total.store(bytes_total, Relaxed);
        self.bytes_from.store(bytes_read, Relaxed);
        self.bytes_read.store(bytes_read, Relaxed);
        self.bytes_ahead.store(ahead, Relaxed);
    }

    /// A record of receive time `ts_ns` was loaded.
    #[inline]
    pub(super) fn at_record(&self, ts_ns: u64) {
        if self.first_ns.load(Relaxed) == 0 {
            self.first_ns.store(ts_ns, Relaxed);
        }
        self.market_ns.store(ts_ns, Relaxed);
    }

    /// `read` bytes of the files were read, at most `ahead` of them past the message loaded
    /// last.
    #[inline]
    pub(super) fn at_bytes(&self, read: u64, ahead: u64) {
        self.bytes_read.store(read, Relaxed);
        self.bytes_ahead.store(ahead, Relaxed);
    }

    /// Receive time of the record loaded last (DBN), ns since the epoch; None before the first
    /// and for other sources.
    pub fn market_ns(&self) -> Option<u64> {
        Some(self.market_ns.load(Relaxed)).filter(|t| *t != 0)
    }

    /// Where the replay is: by market time when the files' span is known (an end after the
    /// first record), within the bounds of the bytes read when their sizes are known; else by
    /// bytes; None when neither is (the generated feed, no run yet).
    pub fn extent(&self) -> Option<Extent> {
        let (first, end) = (self.first_ns.load(Relaxed), self.end_ns.load(Relaxed));
        let total = self.bytes_total.load(Relaxed);
        let (read, from) = (self.bytes_read.load(Relaxed), self.bytes_from.load(Relaxed));
        if end != 0 && (first == 0 || end > first) {
            let bytes = (total > 0).then(|| ByteBounds { read, from, total, ahead: self.bytes_ahead.load(Relaxed) });
            return Some(Extent::Market { now_ns: self.market_ns.load(Relaxed), start_ns: first, end_ns: end, bytes });
        }
        (total > 0).then_some(Extent::Bytes { read, from, total })
    }
}

/// A replay at a recorded pace keeps it while its time since the first message is at most the
/// market time so far at the speed, this share over ([`PACE_SLACK_S`] more).
pub const PACE_SLACK: f64 = 0.05;
/// See [`PACE_SLACK`]: seconds a replay that keeps its pace may be behind (a redraw, a wait).
pub const PACE_SLACK_S: f64 = 0.5;

/// The fraction done ([`Extent::fraction`]) and the seconds left of a replay at `extent`,
/// `elapsed_s` after its first message, at `speed` times the recorded pace (None: flat out or
/// a fixed rate). None when the extent measures nothing (a span or size of zero).
///
/// The time left is the time so far scaled by what is left of the fraction (`elapsed · (1 − f)
/// / f`; measured by bytes, the fraction of those after the ones read in opening the files,
/// since `elapsed` counts from the first message). At a recorded pace, while the replay keeps
/// it ([`PACE_SLACK`]), it is at most the market time left to the span's end divided by the
/// speed: that end is a metadata's, at or after the last record, so this bounds the time left
/// and is not its measure (taken as the least time left, it said hours too many of a daily
/// file whose data stops hours before midnight). It is unknown before anything was read or any
/// time passed unless that bound tells it, and 0 once the fraction is whole.
pub fn estimate(extent: Extent, elapsed_s: f64, speed: Option<f64>) -> Option<Estimate> {
    let elapsed_s = if elapsed_s.is_finite() && elapsed_s > 0.0 { elapsed_s } else { 0.0 };
    let speed = speed.filter(|s| s.is_finite() && *s > 0.0);
    let (fraction, basis) = extent.fraction()?;
    if fraction >= 1.0 {
        return Some(Estimate { fraction: 1.0, left_s: Some(0.0) });
    }
    // Of the bytes after those read in opening the files, the share `at` bytes in is.
    let since_open = |at: f64, from: u64, total: u64| match total > from {
        true => ((at - from as f64) / (total - from) as f64).clamp(0.0, 1.0),
        false => 1.0,
    };
    // The fraction since the first message, and the market time so far and left (ns).
    let (paced, market) = match extent {
        Extent::Market { now_ns: 0, .. } => (0.0, None),
        Extent::Market { now_ns, start_ns, end_ns, bytes } => {
            let now = now_ns.clamp(start_ns, end_ns);
            let paced = match (basis, bytes) {
                (Basis::BytesRead, Some(b)) => since_open(fraction * b.total as f64, b.from, b.total),
                _ => fraction,
            };
            (paced, Some((now - start_ns, end_ns - now)))
        }
        Extent::Bytes { read, from, total } => (since_open(read.min(total) as f64, from, total), None),
    };
    let by_time = (paced > 0.0 && elapsed_s > 0.0).then(|| elapsed_s * (1.0 - paced) / paced);
    let at_most = market.zip(speed).and_then(|((so_far_ns, left_ns), s)| {
        let keeps_pace = elapsed_s <= so_far_ns as f64 / 1e9 / s * (1.0 + PACE_SLACK) + PACE_SLACK_S;
        keeps_pace.then(|| left_ns as f64 / 1e9 / s)
    });
    let left_s = match (by_time, at_most) {
        (Some(t), Some(m)) => Some(t.min(m)),
        (t, m) => t.or(m),
    };
    Some(Estimate { fraction, left_s: left_s.filter(|s| s.is_finite()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn market(now_s: u64, span_s: u64) -> Extent {
        Extent::Market { now_ns: T0 + now_s * S, start_ns: T0, end_ns: T0 + span_s * S, bytes: None }
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
        let not_yet = Extent::Market { now_ns: 0, start_ns: 0, end_ns: T0, bytes: None };
        assert_eq!(estimate(not_yet, 1.0, Some(1.0)), Some(none));
        // At the first record: 0 done, nothing to scale.
        assert_eq!(estimate(market(0, 3600), 1.0, Some(1.0)), Some(none));
    }

    #[test]
    fn an_empty_span_or_size_measures_nothing() {
        assert_eq!(estimate(market(0, 0), 1.0, Some(1.0)), None);
        let backwards = Extent::Market { now_ns: T0, start_ns: T0, end_ns: T0 - S, bytes: None };
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
        let early = Extent::Market { now_ns: T0 - S, start_ns: T0, end_ns: T0 + S, bytes: None };
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
        p.set_extent(None, 1000, 24, 0);
        assert_eq!(p.extent(), Some(Extent::Bytes { read: 24, from: 24, total: 1000 }));
        p.at_bytes(250, 0);
        assert_eq!(p.extent(), Some(Extent::Bytes { read: 250, from: 24, total: 1000 }));
        p.reset();
        p.set_extent(Some(T0 + 10 * S), 1000, 0, 0);
        let bytes = |read, ahead| Some(ByteBounds { read, from: 0, total: 1000, ahead });
        assert_eq!(
            p.extent(),
            Some(Extent::Market { now_ns: 0, start_ns: 0, end_ns: T0 + 10 * S, bytes: bytes(0, 0) })
        );
        p.at_record(T0);
        p.at_record(T0 + 5 * S);
        p.at_bytes(600, 300);
        assert_eq!(p.market_ns(), Some(T0 + 5 * S));
        let at = Extent::Market { now_ns: T0 + 5 * S, start_ns: T0, end_ns: T0 + 10 * S, bytes: bytes(600, 300) };
        assert_eq!(p.extent(), Some(at));
        // An end at or before the first record: no span, the bytes then.
        p.reset();
        p.set_extent(Some(T0), 1000, 10, 0);
        p.at_record(T0);
        assert_eq!(p.extent(), Some(Extent::Bytes { read: 10, from: 10, total: 1000 }));
    }

    /// A day's span (a daily file's metadata: midnight to midnight) at `now_s`, `read` bytes of
    /// 1000 read, `ahead` of them past the position.
    fn day(now_s: u64, read: u64, ahead: u64) -> Extent {
        let bytes = Some(ByteBounds { read, from: 0, total: 1000, ahead });
        Extent::Market { now_ns: T0 + now_s * S, start_ns: T0, end_ns: T0 + 86_400 * S, bytes }
    }

    #[test]
    fn a_metadata_end_past_the_data_gives_way_to_the_bytes_read() {
        // A daily file whose data stops at 20:00, its metadata's end at midnight; a plain file
        // (no read-ahead). At 19:00 of market time 950 of its 1000 bytes are read.
        let h = 3600;
        assert_eq!(day(19 * h, 950, 0).fraction(), Some((0.95, Basis::BytesRead)));
        // Before: by market time, 79%, then done at 20:00 with a jump from 83%.
        let e = estimate(day(19 * h, 950, 0), (19 * h) as f64, Some(1.0)).expect("a span");
        assert_eq!(e.fraction, 0.95);
        // At 1x the time so far scaled by the bytes: an hour, not the 5 h to midnight.
        let left = e.left_s.expect("a time left");
        assert!((left - h as f64).abs() < 1e-6, "{left}");
        // The last record read: whole, at 20:00 of a span that runs to midnight.
        assert_eq!(estimate(day(20 * h, 1000, 0), (20 * h) as f64, Some(1.0)).map(|e| e.fraction), Some(1.0));
        // Bytes that lag market time (a quiet morning, a busy close still to come) hold the
        // fraction down to them too, plain files being exact.
        assert_eq!(day(12 * h, 200, 0).fraction(), Some((0.2, Basis::BytesRead)));
    }

    #[test]
    fn a_compressed_file_bounds_market_time_only_within_its_read_ahead() {
        // Market time within [read - ahead, read]: it stays the measure.
        assert_eq!(day(43_200, 600, 200).fraction(), Some((0.5, Basis::MarketTime)));
        // Below: raised to what was surely read; above: lowered to what was read at most.
        assert_eq!(day(21_600, 600, 200).fraction(), Some((0.4, Basis::BytesRead)));
        assert_eq!(day(64_800, 600, 200).fraction(), Some((0.6, Basis::BytesRead)));
        // A small `.dbn.zst` read whole in opening it (its read-ahead all of it) says nothing:
        // market time then, not done at the first record.
        assert_eq!(day(21_600, 1000, 1000).fraction(), Some((0.25, Basis::MarketTime)));
        let e = estimate(day(21_600, 1000, 1000), 21_600.0, Some(1.0)).expect("a span");
        assert_eq!(e, Estimate { fraction: 0.25, left_s: Some(64_800.0) });
        // Its last record read: the read-ahead is used up (0), the bytes say whole.
        assert_eq!(day(72_000, 1000, 0).fraction(), Some((1.0, Basis::BytesRead)));
    }

    #[test]
    fn the_market_time_left_bounds_the_time_left_only_at_the_pace() {
        // 10% of the bytes in 1 h at 1x, 1 h of market time: the bytes say 9 h more, the
        // market time to the metadata's end at most 23 h: 9 h.
        let h = 3600.0;
        assert_eq!(left(estimate(day(3600, 100, 0), h, Some(1.0))).map(f64::round), Some(9.0 * h));
        // A quiet morning: 1% in 6 h says 594 h; the replay keeps its pace, so at most the
        // 18 h to the metadata's end are left.
        assert_eq!(left(estimate(day(21_600, 10, 0), 6.0 * h, Some(1.0))), Some(18.0 * h));
        // Behind the pace (the publisher cannot keep 10x: 6 h of market time in 1 h, not
        // 36 min): no bound, the bytes' time so far.
        assert_eq!(left(estimate(day(21_600, 500, 0), h, Some(10.0))).map(f64::round), Some(h));
        assert_eq!(left(estimate(day(21_600, 10, 0), h, Some(10.0))).map(f64::round), Some(99.0 * h));
        // Flat out: no pace, no bound.
        assert_eq!(left(estimate(day(21_600, 10, 0), h, None)).map(f64::round), Some(99.0 * h));
    }
}
