//! Snails on purpose (a socket-free core of the replay's schedule): where a
//! replay pauses, which messages it leaves out, and where it starts a new
//! session, so the Suicidal Snail's verdicts can be shown and tested end to
//! end (docs/SNAIL.md, "Snails on purpose").
//!
//! The schedule asks [`Faults::due`] with each message's index (0-based, every
//! message the source yields, sent or left out); it costs one compare per
//! message until the next fault's index, and nothing more when no fault is set.

use std::time::Duration;

/// What to do to a replay's stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Once this many messages have been scheduled, stop sending for the
    /// duration: no data and no heartbeats (a stalled publisher). At a fixed
    /// rate the schedule runs on, so the messages due meanwhile go out late.
    pub pause: Option<(u64, Duration)>,
    /// Leave out one message in every N (N >= 2): the middle one of each block
    /// of N, i.e. message numbers k·N + ⌈N/2⌉ (1-based). Its sequences are used
    /// up, so subscribers see a gap; none at either end of a run of whole
    /// blocks, where loss could not be told from a late join or an early end.
    pub drop_every: Option<u64>,
    /// Once this many messages have been scheduled, start a new session on
    /// every shard (new session id, sequences from 1, as a restarted publisher
    /// would), without ending the old one.
    pub restart_at: Option<u64>,
}

impl FaultPlan {
    /// True when nothing is planned.
    pub fn is_empty(&self) -> bool {
        *self == FaultPlan::default()
    }

    /// Refuse a plan that cannot mean anything.
    pub fn check(&self) -> Result<(), String> {
        match self.drop_every {
            Some(n) if n < 2 => Err(format!("drop every {n}: N must be at least 2")),
            _ => Ok(()),
        }
    }
}

/// What is due before one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Due {
    /// Stall this long before the message.
    pub pause: Option<Duration>,
    /// Start new sessions before the message.
    pub restart: bool,
    /// Use the message's sequences but do not send it.
    pub drop: bool,
}

/// A [`FaultPlan`] being applied to one run.
#[derive(Debug, Clone)]
pub struct Faults {
    plan: FaultPlan,
    /// Index of the next message something is due at (`u64::MAX`: none).
    next: u64,
    paused: bool,
    restarted: bool,
}

impl Faults {
    pub fn new(plan: FaultPlan) -> Faults {
        let mut f = Faults { plan, next: u64::MAX, paused: false, restarted: false };
        f.next = f.next_from(0);
        f
    }

    /// What is due before message `i` (None: nothing, the common case).
    #[inline]
    pub fn due(&mut self, i: u64) -> Option<Due> {
        if i < self.next {
            return None;
        }
        Some(self.fire(i))
    }

    fn fire(&mut self, i: u64) -> Due {
        let mut due = Due::default();
        if let Some((at, d)) = self.plan.pause {
            if !self.paused && i >= at {
                self.paused = true;
                due.pause = Some(d);
            }
        }
        if let Some(at) = self.plan.restart_at {
            if !self.restarted && i >= at {
                self.restarted = true;
                due.restart = true;
            }
        }
        due.drop = self.plan.drop_every.is_some_and(|n| next_drop(n, i) == i);
        self.next = self.next_from(i.saturating_add(1));
        due
    }

    /// The first index at or after `from` at which something is due.
    fn next_from(&self, from: u64) -> u64 {
        let mut next = u64::MAX;
        if let (Some((at, _)), false) = (self.plan.pause, self.paused) {
            next = next.min(at.max(from));
        }
        if let (Some(at), false) = (self.plan.restart_at, self.restarted) {
            next = next.min(at.max(from));
        }
        if let Some(n) = self.plan.drop_every {
            next = next.min(next_drop(n, from));
        }
        next
    }
}

/// The first index at or after `from` that "drop every `n`" leaves out
/// (1-based message numbers ≡ ⌈n/2⌉ mod n).
fn next_drop(n: u64, from: u64) -> u64 {
    let n = n.max(2);
    let want = n.div_ceil(2) % n;
    let m = from.saturating_add(1);
    let delta = (want + n - m % n) % n;
    m.saturating_add(delta) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(plan: FaultPlan, msgs: u64) -> Vec<(u64, Due)> {
        let mut f = Faults::new(plan);
        (0..msgs).filter_map(|i| f.due(i).map(|d| (i, d))).filter(|(_, d)| *d != Due::default()).collect()
    }

    #[test]
    fn nothing_planned_is_nothing_due() {
        let mut f = Faults::new(FaultPlan::default());
        assert!((0..10_000).all(|i| f.due(i).is_none()));
        assert_eq!(f.next, u64::MAX);
    }

    #[test]
    fn drop_every_hundredth_of_100_000_is_exactly_1_000_and_never_at_an_end() {
        let dropped = run(FaultPlan { drop_every: Some(100), ..Default::default() }, 100_000);
        assert_eq!(dropped.len(), 1_000);
        assert!(dropped.iter().all(|(i, d)| d.drop && (i + 1) % 100 == 50));
        assert_eq!((dropped[0].0, dropped[999].0), (49, 99_949));
        // Odd N: the middle of 1..=3 is 2.
        let dropped = run(FaultPlan { drop_every: Some(3), ..Default::default() }, 9);
        assert_eq!(dropped.iter().map(|(i, _)| i + 1).collect::<Vec<_>>(), vec![2, 5, 8]);
        assert_eq!(run(FaultPlan { drop_every: Some(2), ..Default::default() }, 6).len(), 3);
    }

    #[test]
    fn pause_and_restart_fire_once_at_their_index() {
        let plan = FaultPlan { pause: Some((500, Duration::from_millis(20))), restart_at: Some(700), drop_every: None };
        let due = run(plan, 10_000);
        assert_eq!(
            due,
            vec![
                (500, Due { pause: Some(Duration::from_millis(20)), ..Default::default() }),
                (700, Due { restart: true, ..Default::default() }),
            ]
        );
        // Both at once, on a dropped message.
        let plan = FaultPlan { pause: Some((49, Duration::ZERO)), restart_at: Some(49), drop_every: Some(100) };
        assert_eq!(run(plan, 60), vec![(49, Due { pause: Some(Duration::ZERO), restart: true, drop: true })]);
    }

    #[test]
    fn a_bad_plan_is_refused() {
        assert!(FaultPlan { drop_every: Some(1), ..Default::default() }.check().is_err());
        assert!(FaultPlan { drop_every: Some(2), ..Default::default() }.check().is_ok());
    }
}
