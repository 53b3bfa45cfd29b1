//! The lag detector (a socket-free core): lag = now − intended send time, judged
//! over time, Burrow-style, into [`Verdict::Ok`], [`Verdict::Warn`] (lag rising
//! through the whole window) or [`Verdict::Snail`] (lag above `max_lag_ns`
//! continuously for at least `grace_ns`).
//!
//! Per message it costs a subtraction, a few compares and, once per sample
//! period, a shift of a small fixed array: no allocation, no clock read (the
//! shell passes the `now_ns` it read anyway).
//!
//! **Clock skew.** [`SkewMode::Synchronised`] (the default, as in the guide)
//! takes publisher and subscriber clocks to be one (same host, PTP or NTP):
//! lag is `now − send_time`. [`SkewMode::Tolerant`] judges lag relative to
//! the lowest lag seen over the last `skew_window_ns` (kept as the minimum of
//! two half-window buckets), so a constant offset between the hosts' clocks
//! reads as zero lag and only lag that *grows* is judged. The price: a
//! subscriber that is already behind when it starts, or that stays behind
//! for longer than the skew window, is measured against its own lag.

use super::{SkewMode, SnailConfig, Verdict};

/// Lag samples in the warn window (one every `window_ns / WARN_SAMPLES`).
pub const WARN_SAMPLES: usize = 8;

/// Judges the lag of every message at one place (a reader or a worker).
#[derive(Debug, Clone)]
pub struct LagDetector {
    max_lag_ns: u64,
    grace_ns: u64,
    skew: SkewMode,
    half_skew_window_ns: u64,
    /// Lowest raw lag (ns, signed: skewed clocks can make it negative) in the
    /// current and the previous half window.
    min_cur: i64,
    min_prev: i64,
    bucket_end_ns: u64,
    /// When the lag went above `max_lag_ns` and stayed there (0: it is not above).
    above_since_ns: u64,
    /// When the message before the last one was judged (0: none yet).
    last_seen_ns: u64,
    sample_every_ns: u64,
    next_sample_ns: u64,
    samples: [u64; WARN_SAMPLES],
    n_samples: usize,
    rising: bool,
    /// Lag of the last message judged, after skew correction.
    last_lag_ns: u64,
    /// Stream sequence of the last message whose lag was within `max_lag_ns`.
    last_good_seq: u64,
    verdict: Verdict,
}

impl LagDetector {
    /// New thresholds (a live setting). The rising-lag history is kept; the
    /// grace under a lowered `max_lag` starts at the next message above it.
    pub fn set_limits(&mut self, max_lag_ns: u64, grace_ns: u64) {
        self.max_lag_ns = max_lag_ns;
        self.grace_ns = grace_ns;
    }

    pub fn new(cfg: &SnailConfig) -> Self {
        let window = cfg.window_ns.max(WARN_SAMPLES as u64);
        LagDetector {
            max_lag_ns: cfg.max_lag_ns,
            grace_ns: cfg.grace_ns,
            skew: cfg.skew,
            half_skew_window_ns: (cfg.skew_window_ns / 2).max(1),
            min_cur: i64::MAX,
            min_prev: i64::MAX,
            bucket_end_ns: 0,
            above_since_ns: 0,
            last_seen_ns: 0,
            sample_every_ns: window / WARN_SAMPLES as u64,
            next_sample_ns: 0,
            samples: [0; WARN_SAMPLES],
            n_samples: 0,
            rising: false,
            last_lag_ns: 0,
            last_good_seq: 0,
            verdict: Verdict::Ok,
        }
    }

    /// Judge one message stamped `send_ns` (intended send time), seen at
    /// `now_ns`, with stream sequence `seq`.
    #[inline]
    pub fn observe(&mut self, send_ns: u64, seq: u64, now_ns: u64) -> Verdict {
        let raw = (now_ns as i64).wrapping_sub(send_ns as i64);
        let lag = match self.skew {
            SkewMode::Synchronised => raw.max(0) as u64,
            SkewMode::Tolerant => self.skew_corrected(raw, now_ns),
        };
        self.last_lag_ns = lag;
        if lag > self.max_lag_ns {
            if self.above_since_ns == 0 {
                self.above_since_ns = self.overdue_since(lag, now_ns);
            }
        } else {
            self.above_since_ns = 0;
            self.last_good_seq = seq;
        }
        self.last_seen_ns = now_ns;
        if now_ns >= self.next_sample_ns {
            self.sample(lag, now_ns);
        }
        self.verdict = if self.above_since_ns != 0 && now_ns.saturating_sub(self.above_since_ns) >= self.grace_ns {
            Verdict::Snail
        } else if self.rising {
            Verdict::Warn
        } else {
            Verdict::Ok
        };
        self.verdict
    }

    /// Since when the lag has been above `max_lag_ns`, judged at the first
    /// message above it: since that message became overdue (`now − (lag −
    /// max_lag)`), but not before the message judged before it, which was
    /// within `max_lag`. So a stall of the wire (nothing, then messages long
    /// overdue) counts from when it began, while a lone late message in a
    /// busy stream counts from the message before it.
    #[inline]
    fn overdue_since(&self, lag: u64, now_ns: u64) -> u64 {
        if self.last_seen_ns == 0 {
            return now_ns.max(1);
        }
        now_ns.saturating_sub(lag - self.max_lag_ns).max(self.last_seen_ns).max(1)
    }

    #[inline]
    fn skew_corrected(&mut self, raw: i64, now_ns: u64) -> u64 {
        if now_ns >= self.bucket_end_ns {
            // A new half window: the oldest bucket falls out.
            self.min_prev = if self.bucket_end_ns == 0 { i64::MAX } else { self.min_cur };
            self.min_cur = i64::MAX;
            self.bucket_end_ns = now_ns.saturating_add(self.half_skew_window_ns);
        }
        self.min_cur = self.min_cur.min(raw);
        let base = self.min_cur.min(self.min_prev);
        raw.saturating_sub(base).max(0) as u64
    }

    /// Take one warn-window sample: the window is "rising" when every sample
    /// is above the one before and the latest is above a quarter of
    /// `max_lag_ns` (so microsecond jitter that happens to rise is not a warning).
    fn sample(&mut self, lag: u64, now_ns: u64) {
        self.next_sample_ns = now_ns.saturating_add(self.sample_every_ns);
        if self.n_samples == WARN_SAMPLES {
            self.samples.copy_within(1.., 0);
            self.n_samples -= 1;
        }
        self.samples[self.n_samples] = lag;
        self.n_samples += 1;
        self.rising =
            self.n_samples == WARN_SAMPLES && self.samples.windows(2).all(|w| w[1] > w[0]) && lag > self.max_lag_ns / 4;
    }

    /// The verdict of the last message judged.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Lag of the last message judged (after skew correction), ns.
    pub fn last_lag_ns(&self) -> u64 {
        self.last_lag_ns
    }

    /// How long the lag has been above `max_lag_ns` at `now_ns` (0: it is not).
    pub fn above_for_ns(&self, now_ns: u64) -> u64 {
        match self.above_since_ns {
            0 => 0,
            t => now_ns.saturating_sub(t),
        }
    }

    /// Stream sequence of the last message that arrived within `max_lag_ns`.
    pub fn last_good_seq(&self) -> u64 {
        self.last_good_seq
    }

    /// Skew-tolerant mode: the lowest raw lag of the window (0 before any, or when synchronised).
    pub fn floor_ns(&self) -> i64 {
        match self.min_cur.min(self.min_prev) {
            i64::MAX => 0,
            m => m,
        }
    }

    /// Forget the lag history (after a rest: the subscriber rejoined live).
    pub fn reset(&mut self) {
        self.min_cur = i64::MAX;
        self.min_prev = i64::MAX;
        self.bucket_end_ns = 0;
        self.above_since_ns = 0;
        self.last_seen_ns = 0;
        self.next_sample_ns = 0;
        self.n_samples = 0;
        self.rising = false;
        self.verdict = Verdict::Ok;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000_000_000_000;

    fn cfg() -> SnailConfig {
        SnailConfig { max_lag_ns: 100 * MS, grace_ns: 200 * MS, window_ns: 800 * MS, ..SnailConfig::default() }
    }

    /// A detector fed by a test clock, one message a millisecond.
    struct Feed {
        d: LagDetector,
        clock: ManualClock,
        seq: u64,
    }

    impl Feed {
        fn new(cfg: &SnailConfig) -> Feed {
            Feed { d: LagDetector::new(cfg), clock: ManualClock::new(T0), seq: 0 }
        }

        /// Feed one message every ms for `for_ms`, each `lag_ms` late;
        /// returns the worst verdict seen.
        fn run(&mut self, for_ms: u64, lag_ms: u64) -> Verdict {
            let mut worst = Verdict::Ok;
            for _ in 0..for_ms {
                let now = self.clock.advance_ms(1);
                self.seq += 1;
                worst = worst.max(self.d.observe(now - lag_ms * MS, self.seq, now));
            }
            worst
        }
    }

    #[test]
    fn healthy_feed_is_ok() {
        let mut f = Feed::new(&cfg());
        assert_eq!(f.run(3_000, 2), Verdict::Ok);
        assert_eq!(f.d.last_good_seq(), f.seq);
    }

    #[test]
    fn a_spike_shorter_than_the_grace_is_not_a_snail() {
        let mut f = Feed::new(&cfg());
        f.run(500, 1);
        assert!(f.run(150, 500) < Verdict::Snail, "150 ms above, grace 200 ms");
        assert_eq!(f.run(500, 1), Verdict::Ok);
    }

    #[test]
    fn lag_above_the_threshold_for_the_grace_is_a_snail_and_names_the_last_good_seq() {
        let mut f = Feed::new(&cfg());
        f.run(100, 1);
        let good = f.seq;
        let mut first_snail = None;
        for i in 1..=300u64 {
            let now = f.clock.advance_ms(1);
            f.seq += 1;
            if f.d.observe(now - 150 * MS, f.seq, now) == Verdict::Snail && first_snail.is_none() {
                first_snail = Some(i);
            }
        }
        // Above since the message before the first late one (1 ms earlier):
        // the grace (200 ms) has passed at the 200th.
        assert_eq!(first_snail, Some(200));
        assert_eq!(f.d.last_good_seq(), good);
        assert_eq!(f.d.last_lag_ns(), 150 * MS);
        assert_eq!(f.d.above_for_ns(f.clock.now_ns()), 300 * MS);
    }

    #[test]
    fn a_stall_counts_from_when_the_messages_became_overdue() {
        // On time, then nothing for `stall` ms, then the backlog: the first
        // message after the stall is `stall` ms late.
        for (stall_ms, want) in [(250, Verdict::Ok), (299, Verdict::Ok), (300, Verdict::Snail), (2_000, Verdict::Snail)]
        {
            let mut f = Feed::new(&cfg());
            f.run(100, 1);
            let now = f.clock.advance_ms(stall_ms);
            // Overdue (above 100 ms) for stall − 100 ms; the grace is 200 ms.
            let v = f.d.observe(now - stall_ms * MS, f.seq + 1, now);
            assert_eq!(v, want, "a {stall_ms} ms stall");
            assert_eq!(f.d.above_for_ns(now), (stall_ms - 100) * MS);
        }
        // A lone late message in a busy stream counts from the message before it.
        let mut f = Feed::new(&cfg());
        f.run(100, 1);
        let now = f.clock.advance_ms(1);
        assert_eq!(f.d.observe(now - 2_000 * MS, f.seq + 1, now), Verdict::Ok);
        assert_eq!(f.d.above_for_ns(now), MS);
    }

    #[test]
    fn a_dip_below_the_threshold_restarts_the_grace() {
        let mut f = Feed::new(&cfg());
        assert!(f.run(150, 150) < Verdict::Snail);
        f.run(1, 10);
        assert!(f.run(150, 150) < Verdict::Snail);
    }

    #[test]
    fn steadily_rising_lag_warns_before_it_croaks() {
        let clock = ManualClock::new(T0);
        let mut d = LagDetector::new(&cfg());
        let mut verdicts = Vec::new();
        // Lag grows by 0.1 ms per ms (a worker at 90 % of the rate).
        for i in 1..=1_500u64 {
            let now = clock.advance_ms(1);
            let v = d.observe(now - i * MS / 10, i, now);
            if verdicts.last() != Some(&v) {
                verdicts.push(v);
            }
        }
        assert_eq!(verdicts, vec![Verdict::Ok, Verdict::Warn, Verdict::Snail], "{verdicts:?}");
    }

    #[test]
    fn jittery_lag_below_the_threshold_does_not_warn() {
        let clock = ManualClock::new(T0);
        let mut d = LagDetector::new(&cfg());
        for i in 1..=5_000u64 {
            let now = clock.advance_ms(1);
            let lag = [1, 5, 2, 8, 3][(i % 5) as usize] * MS;
            assert_eq!(d.observe(now - lag, i, now), Verdict::Ok);
        }
    }

    #[test]
    fn constant_clock_offset_croaks_when_synchronised_but_not_when_skew_tolerant() {
        for (skew, want) in [(SkewMode::Synchronised, Verdict::Snail), (SkewMode::Tolerant, Verdict::Ok)] {
            let mut f = Feed::new(&SnailConfig { skew, skew_window_ns: 2_000 * MS, ..cfg() });
            // The publisher's clock is 2 s behind ours.
            assert_eq!(f.run(5_000, 2_000), want, "{skew:?}");
        }
        // A publisher clock ahead of ours (negative raw lag) is no lag either way.
        let clock = ManualClock::new(T0);
        let mut d = LagDetector::new(&cfg());
        let now = clock.advance_ms(1);
        assert_eq!(d.observe(now + 2_000 * MS, 1, now), Verdict::Ok);
    }

    #[test]
    fn skew_tolerant_still_catches_lag_that_grows() {
        let mut f = Feed::new(&SnailConfig { skew: SkewMode::Tolerant, skew_window_ns: 10_000 * MS, ..cfg() });
        f.run(500, 2_000);
        assert_eq!(f.run(500, 2_300), Verdict::Snail, "300 ms more than the floor");
    }

    #[test]
    fn reset_forgets_the_history() {
        let mut f = Feed::new(&cfg());
        assert_eq!(f.run(500, 500), Verdict::Snail);
        f.d.reset();
        assert_eq!(f.run(100, 1), Verdict::Ok);
    }
}
