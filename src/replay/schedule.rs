//! The replay's pacing core (a socket-free state machine, like the snail
//! detector): given a message's index (or its recorded offset) and the time
//! now, [`Schedule::turn`] says send it now with this intended send time,
//! wait this many ns, or the duration is over. It never reads a clock: the
//! publisher's agent shell ([`super::PublisherAgent`]) passes `now_ns`
//! (CLOCK_MONOTONIC), and tests pass a manual clock.
//!
//! The schedule runs on the monotonic clock (a wall-clock step neither stalls
//! nor bursts it); the stamped time is CLOCK_REALTIME at the start plus the
//! monotonic offset.

/// What the schedule says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Send it now; its intended send time (realtime ns).
    Send(u64),
    /// Not yet: it is due in this many ns.
    Wait(u64),
    /// The duration is over: send no more.
    Over,
}

/// How long past the end of a duration `end_ns` a publisher behind its schedule may still send
/// what was due before the end: a tenth of it, at most 1 s.
pub fn overrun_ns(end_ns: u64) -> u64 {
    (end_ns / 10).min(1_000_000_000)
}

/// Heartbeat when the schedule leaves the publisher idle this long.
pub const HEARTBEAT_AFTER_NS: u64 = 1_000_000_000;

/// A replay's schedule: intended send times by pacing, the end of a duration, the heartbeat
/// clock, and what a fixed rate achieved.
#[derive(Debug, Clone)]
pub struct Schedule {
    pacing: super::Pacing,
    start_mono_ns: u64,
    start_rt_ns: u64,
    end_offset_ns: Option<u64>,
    /// When a publisher behind its schedule stops: the end plus [`overrun_ns`] of it.
    stop_offset_ns: Option<u64>,
    last_send_offset_ns: u64,
    /// Flat out: the last clock reading (offset from the start; 0 before any).
    flat_offset_ns: u64,
    /// Turns granted so far, and the clock readings (offsets from the start) at the first and
    /// the last: what a paced publisher achieved ([`Schedule::achieved_msgs_per_sec`]).
    turns: u64,
    first_turn_at_ns: u64,
    last_turn_at_ns: u64,
    /// Time stalled on purpose ([`Schedule::paused`]) since the last turn, and of the stalls
    /// between the first turn and the last: left out of the achieved rate.
    pause_pending_ns: u64,
    paused_in_span_ns: u64,
}

impl Schedule {
    /// A schedule starting at `start_mono_ns` (CLOCK_MONOTONIC), which is `start_rt_ns`
    /// (CLOCK_REALTIME), ending `duration_ns` later if given.
    pub fn new(pacing: super::Pacing, duration_ns: Option<u64>, start_mono_ns: u64, start_rt_ns: u64) -> Self {
        Schedule {
            pacing,
            start_mono_ns,
            start_rt_ns,
            end_offset_ns: duration_ns,
            stop_offset_ns: duration_ns.map(|end| end.saturating_add(overrun_ns(end))),
            last_send_offset_ns: 0,
            flat_offset_ns: 0,
            turns: 0,
            first_turn_at_ns: 0,
            last_turn_at_ns: 0,
            pause_pending_ns: 0,
            paused_in_span_ns: 0,
        }
    }

    /// When a publisher behind its schedule stops (CLOCK_MONOTONIC ns): the end of the
    /// duration plus [`overrun_ns`] of it; None without a duration.
    pub fn stop_at_ns(&self) -> Option<u64> {
        self.stop_offset_ns.map(|stop| self.start_mono_ns.saturating_add(stop))
    }

    /// True once `now_ns` is past [`Schedule::stop_at_ns`]: no turn is granted any more, and
    /// a message that was granted one but could not be sent (a lossless subscriber that
    /// stopped reading) is given up, since the duration is time elapsed whatever the pace.
    pub fn is_over(&self, now_ns: u64) -> bool {
        self.stop_offset_ns.is_some_and(|stop| self.offset(now_ns) >= stop)
    }

    /// The publisher stalled on purpose for `ns` (`--pause-at`): a stall between two turns is
    /// left out of the achieved rate, which judges what the publisher could send, not the
    /// silence it was told to keep.
    pub fn paused(&mut self, ns: u64) {
        self.pause_pending_ns = self.pause_pending_ns.saturating_add(ns);
    }

    /// The turns granted so far, and the time from the first to the last (clock readings);
    /// None before two turns a clock tick apart. Any pacing (flat out, the readings taken
    /// every 64 messages).
    pub fn turn_span_ns(&self) -> Option<(u64, u64)> {
        let span_ns = self.last_turn_at_ns.saturating_sub(self.first_turn_at_ns);
        (self.turns >= 2 && span_ns > 0).then_some((self.turns, span_ns))
    }

    /// The turns granted so far and the clock readings (CLOCK_MONOTONIC ns) at the first and
    /// the last: the sending threads' schedules together span from the earliest first to the
    /// latest last (the summary's `send_span_s`). None before a turn.
    pub fn turns_mono_ns(&self) -> Option<(u64, u64, u64)> {
        (self.turns > 0).then(|| {
            let at = |offset: u64| self.start_mono_ns.saturating_add(offset);
            (self.turns, at(self.first_turn_at_ns), at(self.last_turn_at_ns))
        })
    }

    /// The message granted the last turn was given up at `now_ns` (the duration ended while a
    /// lossless subscriber held it back): its turn is not counted, and the time held back is,
    /// in the rates (the turns after the first per second from the first to `now_ns`), so that
    /// a publisher held back says so ([`Schedule::achieved_msgs_per_sec`] below the rate).
    pub fn gave_up(&mut self, now_ns: u64) {
        if self.turns > 0 {
            self.turns -= 1;
            self.last_turn_at_ns = self.last_turn_at_ns.max(self.offset(now_ns));
        }
    }

    /// A turn is granted at `now` (offset from the start).
    #[inline]
    fn granted(&mut self, now: u64) {
        if self.turns == 0 {
            self.first_turn_at_ns = now;
            self.pause_pending_ns = 0;
        } else if self.pause_pending_ns != 0 {
            self.paused_in_span_ns = self.paused_in_span_ns.saturating_add(std::mem::take(&mut self.pause_pending_ns));
        }
        self.turns += 1;
        self.last_turn_at_ns = now;
    }

    /// Flat out: as fast as the publisher can send.
    pub fn is_flat_out(&self) -> bool {
        matches!(self.pacing, super::Pacing::FlatOut)
    }

    /// Whether [`Schedule::turn`] of message `i` takes `now_ns` into account (flat out it
    /// does every 64 messages only): a shell may skip reading the clock when it does not.
    #[inline]
    pub fn needs_clock(&self, i: u64) -> bool {
        !self.is_flat_out() || i & 63 == 0 || self.flat_offset_ns == 0
    }

    #[inline]
    fn offset(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.start_mono_ns)
    }

    /// Message `i`'s turn at `now_ns`, flat out or at a fixed rate (a recorded pace: the
    /// message is due at once; use [`Schedule::turn_at`] with its recorded offset).
    ///
    /// Flat out, `now_ns` is taken as the send time every 64 messages only (and after a
    /// [`Schedule::restamp`]); the messages in between carry the last reading, so a shell may
    /// pass a reading it took once for a batch.
    #[inline]
    pub fn turn(&mut self, i: u64, now_ns: u64) -> Turn {
        let offset = match self.pacing {
            super::Pacing::FlatOut => {
                if i & 63 == 0 || self.flat_offset_ns == 0 {
                    self.flat_offset_ns = self.offset(now_ns).max(1);
                }
                let offset = self.flat_offset_ns;
                if self.end_offset_ns.is_some_and(|end| offset >= end) {
                    return Turn::Over;
                }
                self.granted(offset);
                self.last_send_offset_ns = offset;
                return Turn::Send(self.start_rt_ns.saturating_add(offset));
            }
            super::Pacing::Recorded { .. } => self.offset(now_ns),
            super::Pacing::Rate { msgs_per_sec, burst } => {
                let burst = burst.max(1);
                let group = i / burst * burst;
                (group as u128 * 1_000_000_000u128 / msgs_per_sec.max(1) as u128).min(u64::MAX as u128) as u64
            }
        };
        self.turn_at(offset, now_ns)
    }

    /// The turn of a message due `offset_ns` after the start (a recorded pace, and a fixed
    /// rate's turn) at `now_ns`. The duration is time elapsed: a publisher behind its schedule
    /// (a rate or a pace faster than it can send) is told [`Turn::Over`] once the duration and
    /// a tenth of it more (at most 1 s) have passed, with the messages due before the end
    /// unsent; the tenth lets a publisher that kept its schedule but for a few milliseconds of
    /// jitter send all it was due (`--rate 20k --duration 1s` sends 20 000).
    #[inline]
    pub fn turn_at(&mut self, offset_ns: u64, now_ns: u64) -> Turn {
        if self.end_offset_ns.is_some_and(|end| offset_ns >= end) {
            return Turn::Over;
        }
        let now = self.offset(now_ns);
        if now < offset_ns {
            return Turn::Wait(offset_ns - now);
        }
        if self.stop_offset_ns.is_some_and(|stop| now >= stop) {
            return Turn::Over;
        }
        self.granted(now);
        self.last_send_offset_ns = offset_ns;
        Turn::Send(self.start_rt_ns.saturating_add(offset_ns))
    }

    /// The publisher is waiting for its next turn at `now_ns`: true once it has sent nothing
    /// for [`HEARTBEAT_AFTER_NS`] (time for a heartbeat; the heartbeat clock restarts).
    pub fn heartbeat_due(&mut self, now_ns: u64) -> bool {
        let now = self.offset(now_ns);
        if now.saturating_sub(self.last_send_offset_ns) > HEARTBEAT_AFTER_NS {
            self.last_send_offset_ns = now;
            true
        } else {
            false
        }
    }

    /// After a stall (snails on purpose): flat out, the next message takes the clock again,
    /// since a reading from before the stall would stamp up to 63 messages after it with a
    /// send time the stall's length in the past (a false lag).
    pub fn restamp(&mut self) {
        self.flat_offset_ns = 0;
    }

    /// A paced publisher's achieved rate: the turns after the first per second from the first
    /// to the last, less the time stalled on purpose in between (n turns on schedule at a rate
    /// R span (n-1)/R at most, so on schedule this is R or more; behind it, what was sent).
    /// None flat out, at a recorded pace, or before two turns a clock tick apart.
    pub fn achieved_msgs_per_sec(&self) -> Option<f64> {
        let span_ns = self.last_turn_at_ns.saturating_sub(self.first_turn_at_ns).saturating_sub(self.paused_in_span_ns);
        match self.pacing {
            super::Pacing::Rate { .. } if self.turns >= 2 && span_ns > 0 => {
                Some((self.turns - 1) as f64 * 1e9 / span_ns as f64)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Pacing, ReplayStats};
    use super::*;

    const MS: u64 = 1_000_000;
    /// Arbitrary clock origins: the schedule only uses differences and the realtime base.
    const T0: u64 = 7_000_000_000;
    const RT0: u64 = 1_700_000_000_000_000_000;

    /// Flat out, a stall (`--pause-at`) makes the next message read the clock: before, up to 63
    /// messages after a pause carried the time from before it, a false lag of the pause's length.
    #[test]
    fn a_flat_out_stall_restamps_the_next_message() {
        let mut s = Schedule::new(Pacing::FlatOut, None, T0, RT0);
        let Turn::Send(first) = s.turn(0, T0 + 5) else { panic!("flat out sends") };
        assert_eq!(first, RT0 + 5);
        assert_eq!(s.turn(1, T0 + 1_000), Turn::Send(first), "between readings: the last one");
        s.restamp();
        assert_eq!(s.turn(2, T0 + 30 * MS), Turn::Send(RT0 + 30 * MS), "after a stall: the clock again");
        // Without the restamp the same turn would carry the reading from before.
        let mut s = Schedule::new(Pacing::FlatOut, None, T0, RT0);
        s.turn(0, T0 + 5);
        assert_eq!(s.turn(2, T0 + 30 * MS), Turn::Send(first));
    }

    /// Flat out with a duration ends once the clock reading passes it.
    #[test]
    fn flat_out_ends_at_the_duration() {
        let mut s = Schedule::new(Pacing::FlatOut, Some(50 * MS), T0, RT0);
        assert!(matches!(s.turn(0, T0 + 49 * MS), Turn::Send(_)));
        assert_eq!(s.turn(64, T0 + 50 * MS), Turn::Over);
        assert_eq!(s.achieved_msgs_per_sec(), None, "only a fixed rate is judged");
    }

    /// A rate the publisher cannot keep stops at the duration (and a tenth), by the clock, with
    /// what was achieved said: before, the end was the schedule's (`--rate 20M --duration 1s`
    /// ran 7.6 s and sent all 20 M; `--rate` u64::MAX never ended).
    #[test]
    fn a_rate_out_of_reach_stops_when_the_duration_has_passed() {
        for rate in [1_000_000_000, u64::MAX] {
            let mut s = Schedule::new(Pacing::Rate { msgs_per_sec: rate, burst: 1 }, Some(50 * MS), T0, RT0);
            // A publisher that sends one message a microsecond.
            let (mut i, mut now) = (0u64, T0);
            while let Turn::Send(_) = s.turn(i, now) {
                i += 1;
                now += 1_000;
                assert!(i < 10_000_000, "rate {rate}: still granting turns");
            }
            assert_eq!(now - T0, 55 * MS, "rate {rate}: stops at the duration and its tenth");
            let achieved = s.achieved_msgs_per_sec().expect("a rate was offered");
            assert!((achieved - 1e6).abs() < 1.0, "achieved {achieved}, sent one a µs");
            let stats = ReplayStats {
                sent_total: i,
                offered_msgs_per_sec: Some(rate),
                achieved_msgs_per_sec: Some(achieved),
                ..Default::default()
            };
            let note = stats.rate_note().expect("said");
            assert!(note.starts_with(&format!("rate not achieved: offered {rate} msg/s, achieved ")), "{note}");
        }
        // A recorded pace faster than the publisher (a 1 ns gap between records) stops the same way.
        let mut s = Schedule::new(Pacing::Recorded { speed: 1.0 }, Some(50 * MS), T0, RT0);
        let (mut i, mut now) = (0u64, T0);
        while let Turn::Send(_) = s.turn_at(i, now) {
            i += 1;
            now += 1_000;
        }
        assert_eq!(now - T0, 55 * MS, "recorded pace: stops at the duration and its tenth");
        assert_eq!(s.achieved_msgs_per_sec(), None, "only a fixed rate is judged");
    }

    /// A publisher that kept its schedule but for a few milliseconds at the end still sends what
    /// was due before the end (before: `demo --rate 20000 --duration 1s` now and then sent 19 943),
    /// and nothing after it.
    #[test]
    fn a_publisher_a_little_behind_at_the_end_still_sends_what_was_due() {
        let mut s = Schedule::new(Pacing::Rate { msgs_per_sec: 200, burst: 1 }, Some(500 * MS), T0, RT0);
        for i in 0..95 {
            let due = i * 5 * MS;
            if i > 0 {
                assert_eq!(s.turn(i, T0 + due - 1), Turn::Wait(1), "turn {i} not before it is due");
            }
            assert_eq!(s.turn(i, T0 + due), Turn::Send(RT0 + due), "turn {i}");
        }
        // Late: past the end (500 ms), within its tenth (50 ms).
        for i in 95..100 {
            assert_eq!(s.turn(i, T0 + 505 * MS), Turn::Send(RT0 + i * 5 * MS), "turn {i}, due before the end");
        }
        assert_eq!(s.turn(100, T0 + 505 * MS), Turn::Over, "due at the end: not sent");
        // Behind by more than the tenth: what was due is not sent either.
        let mut s = Schedule::new(Pacing::Rate { msgs_per_sec: 200, burst: 1 }, Some(500 * MS), T0, RT0);
        assert_eq!(s.turn(99, T0 + 550 * MS), Turn::Over);
        assert_eq!(overrun_ns(500_000_000), 50_000_000);
        assert_eq!(overrun_ns(3_600_000_000_000), 1_000_000_000, "at most 1 s");
    }

    /// A rate kept is achieved (the rate or more: n turns on schedule span (n-1)/R at most),
    /// and nothing is said about it; a burst shares one intended time.
    #[test]
    fn a_rate_kept_is_achieved_and_not_said() {
        let mut s = Schedule::new(Pacing::Rate { msgs_per_sec: 2_000, burst: 4 }, None, T0, RT0);
        for i in 0..40 {
            let due = i / 4 * 4 * 500_000;
            // Each turn taken a little late, as a real publisher's are.
            assert_eq!(s.turn(i, T0 + due + 3_000), Turn::Send(RT0 + due), "turn {i}");
        }
        let achieved = s.achieved_msgs_per_sec().expect("a rate was offered");
        assert!(achieved >= 0.95 * 2_000.0, "achieved {achieved}");
        let stats = ReplayStats {
            offered_msgs_per_sec: Some(2_000),
            achieved_msgs_per_sec: Some(achieved),
            ..Default::default()
        };
        assert_eq!(stats.rate_note(), None);
    }

    /// A run too short to measure a rate is not judged by it: 10 messages due over 90 µs at
    /// 100k msg/s whose first went out 70 µs late achieved "57%" (before: `demo --count 10`
    /// said `rate not achieved`). Behind by 10 ms or more, a short run is judged as before.
    #[test]
    fn a_run_too_short_to_measure_its_rate_is_not_said_to_miss_it() {
        let mut s = Schedule::new(Pacing::Rate { msgs_per_sec: 100_000, burst: 1 }, None, T0, RT0);
        for i in 0..10 {
            let due = i * 10_000;
            let late = if i == 0 { 0 } else { 70_000 };
            assert_eq!(s.turn(i, T0 + due + late), Turn::Send(RT0 + due), "turn {i}");
        }
        let achieved = s.achieved_msgs_per_sec().expect("a rate was offered");
        assert!(achieved < 0.6 * 100_000.0, "achieved {achieved}: far below the ratio");
        let stats = |sent_total, achieved| ReplayStats {
            sent_total,
            offered_msgs_per_sec: Some(100_000),
            achieved_msgs_per_sec: Some(achieved),
            ..Default::default()
        };
        assert_eq!(stats(10, achieved).rate_note(), None, "70 µs behind: no measure of a rate");
        // 1 000 messages due over 10 ms that took 25 ms: 15 ms behind, said.
        let slow = 999.0 / 0.025;
        assert!(stats(1_000, slow).rate_note().is_some_and(|n| n.starts_with("rate not achieved")));
        // 200 messages due over 2 ms that took 4 ms: 2 ms behind, not judged.
        assert_eq!(stats(200, 199.0 / 0.004).rate_note(), None);
    }

    /// A stall on purpose between two turns is left out of the achieved rate (before, `--rate
    /// 10k --count 10k --pause-at 5k --pause-for 1500ms` said it achieved 50%, "the publisher
    /// could not send faster"); one before the first turn is not in the span to begin with.
    #[test]
    fn a_pause_on_purpose_is_not_counted_against_the_rate() {
        let mut s = Schedule::new(Pacing::Rate { msgs_per_sec: 1_000, burst: 1 }, None, T0, RT0);
        s.paused(5_000 * MS);
        for i in 0..10 {
            assert_eq!(s.turn(i, T0 + i * MS), Turn::Send(RT0 + i * MS));
        }
        // Stalled 1.5 s, then the turns due meanwhile go out at once, 10 µs apart.
        s.paused(1_500 * MS);
        for i in 10..20 {
            assert!(matches!(s.turn(i, T0 + 1_509 * MS + (i - 10) * 10_000), Turn::Send(_)));
        }
        let achieved = s.achieved_msgs_per_sec().expect("a rate was offered");
        assert!(achieved >= 1_000.0, "the stall is left out: {achieved}");
        assert_eq!(s.turn_span_ns(), Some((20, 1_509 * MS + 90_000)), "the span as it was");
        let (turns, first, last) = s.turns_mono_ns().expect("turns");
        assert_eq!((turns, last - first), (20, 1_509 * MS + 90_000), "the same, as clock readings");
        assert!(first >= T0, "on the monotonic clock: {first}");
    }

    /// A message held back past the duration's end (and its tenth) is given up: its turn is
    /// not counted and the time held back is, so the rate says the publisher was held back.
    #[test]
    fn a_message_held_back_past_the_end_is_given_up_and_counted_as_time() {
        let mut s = Schedule::new(Pacing::Rate { msgs_per_sec: 1_000, burst: 1 }, Some(1_000 * MS), T0, RT0);
        for i in 0..100 {
            assert!(matches!(s.turn(i, T0 + i * MS), Turn::Send(_)));
        }
        assert_eq!(s.stop_at_ns(), Some(T0 + 1_100 * MS));
        assert!(!s.is_over(T0 + 1_100 * MS - 1));
        assert!(s.is_over(T0 + 1_100 * MS));
        s.gave_up(T0 + 1_100 * MS);
        let achieved = s.achieved_msgs_per_sec().expect("a rate was offered");
        assert!((achieved - 98.0 / 1.1).abs() < 0.01, "98 intervals over 1.1 s: {achieved}");
    }

    /// A heartbeat is due after a second without a send, and then not again for a second.
    #[test]
    fn a_heartbeat_is_due_after_a_silent_second() {
        let mut s = Schedule::new(Pacing::Recorded { speed: 1.0 }, None, T0, RT0);
        assert!(matches!(s.turn_at(0, T0), Turn::Send(_)));
        assert!(!s.heartbeat_due(T0 + 1_000 * MS));
        assert!(s.heartbeat_due(T0 + 1_000 * MS + 1));
        assert!(!s.heartbeat_due(T0 + 1_500 * MS), "the heartbeat restarts the clock");
        assert!(s.heartbeat_due(T0 + 2_001 * MS));
        assert_eq!(s.turn_at(5_000 * MS, T0 + 2_001 * MS), Turn::Wait(2_999 * MS));
    }
}
