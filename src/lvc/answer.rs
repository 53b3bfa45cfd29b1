//! Bounded LVC answers: which subscriptions the LVC answers and how much, socket-free.
//!
//! [`AnswerGate`] takes `(event, now_ns)` and decides; the LVC's hooks
//! (`lvc::proxy`) do what it says. Two bounds (issue 13, "subscriptions cannot
//! flood the LVC"), both counted:
//!
//! - **Coalescing**: a subscribe to a prefix that was unsubscribed less than
//!   `coalesce_window_ns` ago is a re-subscription (churn, or a quick
//!   reconnect) and gets no answer of its own; what that answer would have
//!   sent is counted in `coalesced_msgs`. A different subscriber joining the
//!   same prefix is still answered (no unsubscribe came in between). So is a
//!   **new subscriber connection** inside the window: libzmq's XPUB does not say
//!   which subscriber a subscription came from, but the proxy sees each
//!   subscriber connection's handshake ([`AnswerGate::on_join`]) before that
//!   connection's subscriptions (libzmq emits the monitor event before it reads
//!   them). Each connection that joined within the window lets one subscribe of
//!   a coalescing prefix through (`joiner_answers`): a client churning on its
//!   connection opens none, a brand-new joiner (or a subscriber that reconnected
//!   and may have missed values) gets its snapshot at once. A client that churns
//!   by reconnecting is answered each time and bounded by the budget alone.
//! - **Budget**: a token bucket in messages and bytes per second (burst: one
//!   second's worth); a cached message is sent only while both have tokens,
//!   the rest of that answer is counted in `suppressed_msgs` /
//!   `suppressed_bytes` and the answer as `truncated`.
//!
//! Accounting is exact: for every subscribe, the matching cached messages
//! are either sent (`answer_msgs`), coalesced or suppressed.

use std::collections::{HashMap, VecDeque};

/// Most prefixes remembered for coalescing (unsubscribed or answered within the
/// window); past it (after dropping expired ones), a new prefix is not remembered.
pub const MAX_TRACKED_PREFIXES: usize = 65_536;

/// Most subscriber connections remembered as joined within the window (a
/// connect storm beyond it lets no more subscribes through, it never grows memory).
pub const MAX_TRACKED_JOINS: usize = 65_536;

/// How answers are bounded (0 turns a bound off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerLimits {
    /// A subscribe within this long of an unsubscribe of the same prefix is not answered, ns.
    pub coalesce_window_ns: u64,
    /// Cached messages sent in answers per second.
    pub msgs_per_s: u64,
    /// Bytes sent in answers per second.
    pub bytes_per_s: u64,
}

impl Default for AnswerLimits {
    fn default() -> Self {
        AnswerLimits { coalesce_window_ns: 500_000_000, msgs_per_s: 200_000, bytes_per_s: 64 << 20 }
    }
}

/// What the gate said about a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Answer it, taking each message through [`AnswerGate::take`].
    Answer,
    /// A re-subscription within the window: no answer.
    Coalesced,
}

/// Answer counters (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerCounters {
    /// Subscribes answered with at least one cached message.
    pub answered: u64,
    /// Cached messages and bytes sent in answers.
    pub answer_msgs: u64,
    pub answer_bytes: u64,
    /// Subscribes not answered as re-subscriptions, and the messages they would have had.
    pub coalesced: u64,
    pub coalesced_msgs: u64,
    /// Subscribes inside the window answered all the same, each for a subscriber
    /// connection that joined within the window.
    pub joiner_answers: u64,
    /// Answers cut short by the budget, and the messages and bytes left out.
    pub truncated: u64,
    pub suppressed_msgs: u64,
    pub suppressed_bytes: u64,
}

/// A token bucket: `rate` per second, holding at most one second's worth.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: u64,
    /// Tokens in units of 1e-9 (one token = 1e9), so refills are exact in integers.
    nano_tokens: u128,
}

const NANO: u128 = 1_000_000_000;

impl Bucket {
    fn full(rate: u64) -> Self {
        Bucket { rate, nano_tokens: rate as u128 * NANO }
    }

    fn refill(&mut self, elapsed_ns: u64) {
        let cap = self.rate as u128 * NANO;
        self.nano_tokens = (self.nano_tokens + elapsed_ns as u128 * self.rate as u128).min(cap);
    }

    fn has(&self, n: u64) -> bool {
        self.rate == 0 || self.nano_tokens >= n as u128 * NANO
    }

    fn take(&mut self, n: u64) {
        if self.rate != 0 {
            self.nano_tokens -= n as u128 * NANO;
        }
    }
}

/// What coalescing remembers of a prefix.
#[derive(Debug, Default)]
struct PrefixSeen {
    /// Its last unsubscribe.
    unsubscribed_ns: Option<u64>,
    /// When its subscribes were answered, the last window's worth, oldest first.
    answered_ns: Vec<u64>,
}

impl PrefixSeen {
    fn fresh(&self, since_ns: u64) -> bool {
        self.unsubscribed_ns.is_some_and(|t| t >= since_ns) || self.answered_ns.last().is_some_and(|&t| t >= since_ns)
    }
}

/// How many of `joins` (ascending) no answered subscribe (`answered`, ascending) accounts for:
/// each answered subscribe claims the earliest join before it not claimed yet (a connection's
/// subscriptions follow its handshake; a subscribe with no join before it is an older
/// connection's and claims none).
fn unclaimed_joins(joins: &VecDeque<u64>, answered: &[u64]) -> usize {
    let mut next = 0;
    for &t in answered {
        if next < joins.len() && joins[next] <= t {
            next += 1;
        }
    }
    joins.len() - next
}

/// The answer policy: coalescing and the budget. Socket-free.
#[derive(Debug)]
pub struct AnswerGate {
    limits: AnswerLimits,
    prefixes: HashMap<Box<[u8]>, PrefixSeen>,
    /// When subscriber connections joined, the last window's worth, oldest first.
    joins_ns: VecDeque<u64>,
    msgs: Bucket,
    bytes: Bucket,
    last_refill_ns: Option<u64>,
    /// Whether the answer in progress ran out of budget.
    exhausted: bool,
    sent_in_answer: u64,
    counters: AnswerCounters,
}

impl AnswerGate {
    pub fn new(limits: AnswerLimits) -> Self {
        AnswerGate {
            limits,
            prefixes: HashMap::new(),
            joins_ns: VecDeque::new(),
            msgs: Bucket::full(limits.msgs_per_s),
            bytes: Bucket::full(limits.bytes_per_s),
            last_refill_ns: None,
            exhausted: false,
            sent_in_answer: 0,
            counters: AnswerCounters::default(),
        }
    }

    pub fn limits(&self) -> AnswerLimits {
        self.limits
    }

    pub fn counters(&self) -> AnswerCounters {
        self.counters
    }

    /// An unsubscribe of `prefix` at `now_ns`.
    pub fn on_unsubscribe(&mut self, prefix: &[u8], now_ns: u64) {
        if self.limits.coalesce_window_ns == 0 {
            return;
        }
        if let Some(p) = self.prefix(prefix, now_ns) {
            p.unsubscribed_ns = Some(now_ns);
        }
    }

    /// What is remembered of `prefix`, made room for (None: [`MAX_TRACKED_PREFIXES`] are
    /// remembered within the window; this one is not).
    fn prefix(&mut self, prefix: &[u8], now_ns: u64) -> Option<&mut PrefixSeen> {
        if !self.prefixes.contains_key(prefix) {
            if self.prefixes.len() >= MAX_TRACKED_PREFIXES {
                let since = now_ns.saturating_sub(self.limits.coalesce_window_ns);
                self.prefixes.retain(|_, p| p.fresh(since));
                if self.prefixes.len() >= MAX_TRACKED_PREFIXES {
                    return None;
                }
            }
            self.prefixes.insert(prefix.into(), PrefixSeen::default());
        }
        self.prefixes.get_mut(prefix)
    }

    /// A subscriber connection completed its handshake at `now_ns` (its subscriptions follow).
    pub fn on_join(&mut self, now_ns: u64) {
        let window = self.limits.coalesce_window_ns;
        if window == 0 {
            return;
        }
        self.forget_joins_before(now_ns.saturating_sub(window));
        if self.joins_ns.len() < MAX_TRACKED_JOINS {
            self.joins_ns.push_back(now_ns);
        }
    }

    /// Forget the joins before `since_ns`.
    fn forget_joins_before(&mut self, since_ns: u64) {
        while self.joins_ns.front().is_some_and(|&t| t < since_ns) {
            self.joins_ns.pop_front();
        }
    }

    /// A subscribe of `prefix` at `now_ns`: answer it, or not (coalesced;
    /// then report the messages it would have had with [`AnswerGate::coalesced_msgs`]).
    pub fn on_subscribe(&mut self, prefix: &[u8], now_ns: u64) -> Admit {
        let window = self.limits.coalesce_window_ns;
        if window > 0 {
            // `since` is the start of the window: a subscribe after an unsubscribe of the same
            // prefix since then is coalesced unless a connection that joined in the window has
            // not had a subscribe of this prefix answered yet.
            let since = now_ns.saturating_sub(window).saturating_add(1);
            self.forget_joins_before(since);
            let joins = &self.joins_ns;
            if let Some(p) = self.prefixes.get_mut(prefix) {
                p.answered_ns.retain(|&t| t >= since);
                if p.unsubscribed_ns.is_some_and(|t| t >= since) {
                    if unclaimed_joins(joins, &p.answered_ns) == 0 {
                        self.counters.coalesced += 1;
                        return Admit::Coalesced;
                    }
                    self.counters.joiner_answers += 1;
                }
            }
            if let Some(p) = self.prefix(prefix, now_ns) {
                if p.answered_ns.len() < MAX_TRACKED_JOINS {
                    p.answered_ns.push(now_ns);
                }
            }
        }
        if let Some(last) = self.last_refill_ns {
            let elapsed = now_ns.saturating_sub(last);
            self.msgs.refill(elapsed);
            self.bytes.refill(elapsed);
        }
        self.last_refill_ns = Some(now_ns.max(self.last_refill_ns.unwrap_or(0)));
        self.exhausted = false;
        self.sent_in_answer = 0;
        Admit::Answer
    }

    /// A coalesced subscribe would have sent `n` messages.
    pub fn coalesced_msgs(&mut self, n: u64) {
        self.counters.coalesced_msgs += n;
    }

    /// May the answer in progress send a cached message of `bytes`? Counts
    /// it as sent or suppressed. An answer stops at the first message refused:
    /// the caller counts the rest with [`AnswerGate::suppress`] (and a later
    /// `take` in the same answer is refused too).
    pub fn take(&mut self, bytes: u64) -> bool {
        if !self.exhausted && self.msgs.has(1) && self.bytes.has(bytes) {
            self.msgs.take(1);
            self.bytes.take(bytes);
            self.sent_in_answer += 1;
            self.counters.answer_msgs += 1;
            self.counters.answer_bytes += bytes;
            return true;
        }
        if !self.exhausted {
            self.exhausted = true;
            self.counters.truncated += 1;
        }
        self.counters.suppressed_msgs += 1;
        self.counters.suppressed_bytes += bytes;
        false
    }

    /// A cached value of `bytes` after the one [`AnswerGate::take`] refused: the
    /// answer has stopped, it is counted as suppressed.
    pub fn suppress(&mut self, bytes: u64) {
        self.counters.suppressed_msgs += 1;
        self.counters.suppressed_bytes += bytes;
    }

    /// The answer in progress is complete (after its last [`AnswerGate::take`]).
    pub fn end_answer(&mut self) {
        if self.sent_in_answer > 0 {
            self.counters.answered += 1;
        }
    }

    /// An answer that was built could not be sent (the send failed): move
    /// its messages from sent to suppressed so the accounting stays exact.
    pub fn unsend(&mut self, msgs: u64, bytes: u64) {
        self.counters.answer_msgs -= msgs.min(self.counters.answer_msgs);
        self.counters.answer_bytes -= bytes.min(self.counters.answer_bytes);
        self.counters.suppressed_msgs += msgs;
        self.counters.suppressed_bytes += bytes;
        if msgs > 0 && self.counters.answered > 0 {
            self.counters.answered -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const MS: u64 = 1_000_000;

    fn answer(g: &mut AnswerGate, prefix: &[u8], sizes: &[u64], now: u64) -> Option<usize> {
        match g.on_subscribe(prefix, now) {
            Admit::Coalesced => {
                g.coalesced_msgs(sizes.len() as u64);
                None
            }
            Admit::Answer => {
                let sent = sizes.iter().take_while(|&&b| g.take(b)).count();
                for &b in sizes.iter().skip(sent + 1) {
                    g.suppress(b);
                }
                g.end_answer();
                Some(sent)
            }
        }
    }

    #[test]
    fn churn_is_coalesced_and_new_joiners_are_not() {
        let clock = ManualClock::new(1_000 * MS);
        let mut g = AnswerGate::new(AnswerLimits { coalesce_window_ns: 500 * MS, ..AnswerLimits::default() });
        let sizes = vec![64; 5_000];
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(5_000), "first subscribe answered");
        // A second subscriber joins the same prefix: no unsubscribe between, answered.
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(5_000));
        // 100 unsubscribe/subscribe pairs within the window: none answered.
        for _ in 0..100 {
            clock.advance_ms(1);
            g.on_unsubscribe(b"R", clock.now_ns());
            assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), None);
        }
        // Another prefix is not affected.
        assert_eq!(answer(&mut g, b"S", &sizes[..3], clock.now_ns()), Some(3));
        // Past the window since the last unsubscribe: answered again.
        clock.advance_ms(500);
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(5_000));
        let c = g.counters();
        assert_eq!(c.coalesced, 100);
        assert_eq!(c.coalesced_msgs, 500_000);
        assert_eq!(c.answered, 4);
        assert_eq!(c.answer_msgs, 15_003);
        assert_eq!(c.answer_bytes, 15_003 * 64);
        assert_eq!((c.truncated, c.suppressed_msgs), (0, 0));
    }

    #[test]
    fn a_new_joiner_inside_the_window_is_answered_and_churn_still_is_not() {
        let clock = ManualClock::new(1_000 * MS);
        let mut g = AnswerGate::new(AnswerLimits { coalesce_window_ns: 500 * MS, ..AnswerLimits::default() });
        let sizes = vec![64; 50];
        // A churns on its connection: answered once, then coalesced.
        g.on_join(clock.now_ns());
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(50));
        clock.advance_ms(600); // A's join is older than the window now.
        for _ in 0..10 {
            clock.advance_ms(1);
            g.on_unsubscribe(b"R", clock.now_ns());
            assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), None, "churn without a join");
        }
        // B connects 100 ms after A's last unsubscribe and subscribes: a brand-new joiner, answered.
        clock.advance_ms(100);
        g.on_join(clock.now_ns());
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(50), "the joiner gets its snapshot");
        // Its join lets one subscribe of R through, not the churn that follows.
        g.on_unsubscribe(b"R", clock.now_ns());
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), None);
        // ... but each prefix once: B's subscribe of S (unsubscribed by A just before) is answered too.
        g.on_unsubscribe(b"S", clock.now_ns());
        clock.advance_ms(1);
        assert_eq!(answer(&mut g, b"S", &sizes, clock.now_ns()), Some(50));

        // C's handshake is read before A's unsubscribe, C's subscribe after it: still C's.
        clock.advance_ms(1_000);
        g.on_join(clock.now_ns());
        clock.advance_ms(1);
        g.on_unsubscribe(b"R", clock.now_ns());
        clock.advance_ms(1);
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(50));
        // Three connections join at once: three subscribes of R answered, the fourth coalesced.
        clock.advance_ms(1_000);
        g.on_unsubscribe(b"R", clock.now_ns());
        for _ in 0..3 {
            g.on_join(clock.now_ns());
        }
        let got: Vec<Option<usize>> = (0..4).map(|_| answer(&mut g, b"R", &sizes, clock.now_ns())).collect();
        assert_eq!(got, [Some(50), Some(50), Some(50), None]);
        let c = g.counters();
        assert_eq!((c.joiner_answers, c.coalesced, c.coalesced_msgs), (6, 12, 600));
        assert_eq!(c.answered, 7);

        // D, a new connection, churns at once: its join is claimed by its first subscribe.
        clock.advance_ms(1_000);
        g.on_join(clock.now_ns());
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(50));
        g.on_unsubscribe(b"R", clock.now_ns());
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), None, "D's churn");
        // E, connected long ago, subscribes and leaves; F joins and subscribes: E's subscribe
        // (no join before it) claims nothing, F is answered.
        clock.advance_ms(1_000);
        assert_eq!(answer(&mut g, b"T", &sizes, clock.now_ns()), Some(50));
        clock.advance_ms(100);
        g.on_unsubscribe(b"T", clock.now_ns());
        clock.advance_ms(100);
        g.on_join(clock.now_ns());
        assert_eq!(answer(&mut g, b"T", &sizes, clock.now_ns()), Some(50), "F");
        assert_eq!((g.counters().joiner_answers, g.counters().coalesced), (7, 13));

        // A join older than the window lets nothing through.
        clock.advance_ms(1_000);
        g.on_join(clock.now_ns());
        clock.advance_ms(600);
        g.on_unsubscribe(b"R", clock.now_ns());
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), None);
    }

    #[test]
    fn budget_truncates_answers_and_refills_with_time() {
        let clock = ManualClock::new(0);
        let mut g = AnswerGate::new(AnswerLimits { coalesce_window_ns: 0, msgs_per_s: 1_000, bytes_per_s: 1 << 30 });
        let sizes = vec![10; 600];
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(600));
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(400), "the burst is one second's worth");
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(0));
        clock.advance_ms(100); // 100 tokens back
        assert_eq!(answer(&mut g, b"R", &sizes, clock.now_ns()), Some(100));
        clock.advance_ms(10_000); // capped at one second's worth
        assert_eq!(answer(&mut g, b"R", &vec![10; 1_500], clock.now_ns()), Some(1_000));
        let c = g.counters();
        assert_eq!(c.answer_msgs, 600 + 400 + 100 + 1_000);
        assert_eq!(c.suppressed_msgs, 200 + 600 + 500 + 500);
        assert_eq!(c.suppressed_bytes, c.suppressed_msgs * 10);
        assert_eq!(c.truncated, 4);
        assert_eq!(c.answered, 4, "the empty answer is not counted as answered");
        assert_eq!(c.answer_msgs + c.suppressed_msgs, 600 * 4 + 1_500, "every matching message accounted for");
    }

    #[test]
    fn byte_budget_bounds_big_values_and_zero_turns_bounds_off() {
        let mut g = AnswerGate::new(AnswerLimits { coalesce_window_ns: 0, msgs_per_s: 0, bytes_per_s: 1_000 });
        assert_eq!(answer(&mut g, b"R", &[400, 400, 400, 10], 0), Some(2), "cut at the first that does not fit");
        assert_eq!(g.counters().suppressed_bytes, 410);
        let mut open = AnswerGate::new(AnswerLimits { coalesce_window_ns: 0, msgs_per_s: 0, bytes_per_s: 0 });
        for _ in 0..10 {
            open.on_unsubscribe(b"R", 0);
            assert_eq!(answer(&mut open, b"R", &vec![1 << 20; 1_000], 0), Some(1_000));
        }
        assert_eq!(open.counters().coalesced, 0);
    }

    #[test]
    fn a_failed_send_moves_the_answer_to_suppressed() {
        let mut g = AnswerGate::new(AnswerLimits::default());
        assert_eq!(answer(&mut g, b"R", &[5, 5, 5], 0), Some(3));
        g.unsend(3, 15);
        let c = g.counters();
        assert_eq!((c.answered, c.answer_msgs, c.answer_bytes), (0, 0, 0));
        assert_eq!((c.suppressed_msgs, c.suppressed_bytes), (3, 15));
    }

    #[test]
    fn tracked_prefixes_are_bounded() {
        let mut g = AnswerGate::new(AnswerLimits { coalesce_window_ns: 10, ..AnswerLimits::default() });
        for i in 0..(MAX_TRACKED_PREFIXES as u64 + 10) {
            g.on_unsubscribe(&i.to_le_bytes(), 0);
        }
        assert_eq!(g.prefixes.len(), MAX_TRACKED_PREFIXES);
        // Later, the expired ones make room.
        g.on_unsubscribe(b"new", 100);
        assert_eq!(g.prefixes.len(), 1);
        assert_eq!(g.on_subscribe(b"new", 105), Admit::Coalesced);
    }
}
