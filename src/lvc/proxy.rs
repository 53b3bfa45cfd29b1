//! The LVC's hooks on the proxy shell (guide, chapter 5, Last Value Cache).
//!
//! [`LvcHooks`] put a [`LastValueCache`] between the shell's XSUB and XPUB:
//! every message from the publishers updates it, every new subscription is
//! answered from it, to the subscriber that sent it only, before it is
//! forwarded upstream. The XPUB runs in manual mode: the hooks apply each
//! (un)subscription themselves, then send the answer as ONE multipart
//! message (every matching cached message's frames, back to back), because
//! libzmq sends only the first message after a subscription to its
//! subscriber alone (docs/LVC-TAP.md, "Answers go to the joiner only").
//! What is answered is bounded by an [`AnswerGate`].

use crate::diag::RefusalLog;
use crate::lvc::answer::{Admit, AnswerCounters, AnswerGate, AnswerLimits};
use crate::lvc::cache::{CacheCounters, CacheLimits, LastValueCache, Update};
use crate::proxy::{Downstream, FromSubscriber, ProxyHooks, ShellCounters};
use crate::wire::mark_from_cache;
use crate::zmqx::frame::Frame;

/// Counters of one LVC run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LvcReport {
    /// The proxy shell's counters: messages, frames and bytes in (and forwarded to the
    /// subscribers), what subscribers sent that was not forwarded upstream (multipart ones, and
    /// unsubscribes of the empty prefix, see `on_subscription`) or was too long to forward,
    /// delivery drops and waits, failed sends, the bound frontend's publisher connections.
    pub shell: ShellCounters,
    /// Subscribe / unsubscribe messages seen on the XPUB (duplicates included).
    pub subscribes: u64,
    pub unsubscribes: u64,
    /// Single-frame messages from subscribers that were neither: forwarded upstream as is.
    pub other_upstream: u64,
    /// Cached messages re-sent in answer to subscriptions.
    pub cache_answers: u64,
    /// How answers were bounded (coalesced, truncated, suppressed).
    pub answers: AnswerCounters,
    /// Topics and bytes held at the end (data topics only: a control frame is never cached).
    pub topics: u64,
    pub cache_bytes: u64,
    /// What the cache did with each message from the publishers (`control`: control frames,
    /// forwarded live and never cached).
    pub cache: CacheCounters,
}

impl std::fmt::Display for LvcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (c, a, sh) = (&self.cache, &self.answers, &self.shell);
        write!(
            f,
            "messages_in={} frames_in={} bytes_in={} subscribes={} unsubscribes={} other_upstream={} \
             not_forwarded={} too_long_up={} cache_answers={} {} answered={} \
             answer_msgs={} answer_bytes={} coalesced={} coalesced_msgs={} joiner_answers={} truncated={} suppressed_msgs={} \
             suppressed_bytes={} topics={} cache_bytes={} inserted={} replaced={} rejected_full={} \
             evicted_too_big={} uncacheable={} bad_frames={} control={}",
            sh.messages_in,
            sh.frames_in,
            sh.bytes_in,
            self.subscribes,
            self.unsubscribes,
            self.other_upstream,
            sh.not_forwarded,
            sh.too_long_up,
            self.cache_answers,
            sh.delivery_fields(),
            a.answered,
            a.answer_msgs,
            a.answer_bytes,
            a.coalesced,
            a.coalesced_msgs,
            a.joiner_answers,
            a.truncated,
            a.suppressed_msgs,
            a.suppressed_bytes,
            self.topics,
            self.cache_bytes,
            c.inserted,
            c.replaced,
            c.rejected_full,
            c.evicted_too_big,
            c.uncacheable,
            c.bad_frames,
            c.control
        )
    }
}

/// The LVC on the proxy shell: the cache and the LVC's own counters.
pub struct LvcHooks {
    cache: LastValueCache,
    gate: AnswerGate,
    /// The answer being built (reused).
    answer: Vec<Frame>,
    subscribes: u64,
    unsubscribes: u64,
    other_upstream: u64,
    cache_answers: u64,
    other_logged: bool,
    /// Messages the cache would not hold, counted by reason and said (rate-limited).
    refusals: RefusalLog,
    /// Answers cut short (budget) or not sent (send failed), said by the same rule.
    cut_answers: RefusalLog,
}

/// Where an answer stopped: the first value left out (its topic or foreign first
/// frame, at most 64 bytes) and how many values and bytes were left out.
struct Cut {
    at: Vec<u8>,
    msgs: u64,
    bytes: u64,
}

impl LvcHooks {
    pub fn new(limits: CacheLimits, answers: AnswerLimits) -> Self {
        LvcHooks {
            cache: LastValueCache::new(limits),
            gate: AnswerGate::new(answers),
            answer: Vec::new(),
            subscribes: 0,
            unsubscribes: 0,
            other_upstream: 0,
            cache_answers: 0,
            other_logged: false,
            refusals: RefusalLog::new("lvc"),
            cut_answers: RefusalLog::new("lvc").said_as("lvc: answer cut short"),
        }
    }

    /// The cache, as it is now (what a benchmark reads of it after its run).
    pub fn cache(&self) -> &LastValueCache {
        &self.cache
    }

    /// Answer a subscribe to `prefix` (already applied) within the gate's bounds.
    ///
    /// The answer is the matching cached values in topic order and stops at the
    /// first that the budget does not cover: the subscriber gets every topic
    /// before that one, none after it (docs/LVC-TAP.md, "Budget"). A cut answer
    /// and an answer that could not be queued are said when they happen.
    fn answer(&mut self, prefix: &[u8], down: &mut Downstream<'_>, now_ns: u64) {
        if self.gate.on_subscribe(prefix, now_ns) == Admit::Coalesced {
            let n = self.cache.matching(prefix).count() as u64;
            self.gate.coalesced_msgs(n);
            down.count_work(n);
            return;
        }
        self.answer.clear();
        let (mut msgs, mut bytes, mut looked) = (0u64, 0u64, 0u64);
        let mut values = self.cache.matching(prefix);
        let mut cut: Option<Cut> = None;
        for cached in values.by_ref() {
            looked += 1;
            let size: u64 = cached.clone().map(|f| f.len() as u64).sum();
            if !self.gate.take(size) {
                let name = cached.name();
                cut = Some(Cut { at: name[..name.len().min(64)].to_vec(), msgs: 1, bytes: size });
                break;
            }
            let n = cached.frame_count();
            for frame in cached {
                let mut f = Frame::copy_of(frame);
                if n == 1 {
                    // Only mdsub frames decode; foreign frames are sent as they are.
                    mark_from_cache(f.bytes_mut());
                }
                self.answer.push(f);
            }
            msgs += 1;
            bytes += size;
        }
        if let Some(cut) = cut.as_mut() {
            // The answer has stopped: what is left is counted, not sent.
            for rest in values {
                let size: u64 = rest.map(|f| f.len() as u64).sum();
                self.gate.suppress(size);
                cut.msgs += 1;
                cut.bytes += size;
                looked += 1;
            }
        }
        self.gate.end_answer();
        down.count_work(looked);
        if let Some(cut) = cut {
            let l = self.gate.limits();
            let detail = format_args!(
                "a subscribe to \"{}\" got {msgs} of {} cached values, in topic order up to \"{}\" (not included); \
                 the other {} ({} bytes) are not sent: the answer budget (--answer-msgs {}/s, --answer-bytes {}/s) \
                 is spent (counted in truncated=, suppressed_msgs=, suppressed_bytes=)",
                prefix.escape_ascii(),
                msgs + cut.msgs,
                cut.at.escape_ascii(),
                cut.msgs,
                cut.bytes,
                l.msgs_per_s,
                l.bytes_per_s
            );
            self.cut_answers.refuse("budget", &detail, now_ns);
        }
        if msgs == 0 {
            return;
        }
        match down.answer(&mut self.answer) {
            Ok(()) => self.cache_answers += msgs,
            Err(e) => {
                self.gate.unsend(msgs, bytes);
                let detail = format_args!(
                    "an answer of {msgs} cached values ({bytes} bytes) to a subscribe to \"{}\" could not be \
                     queued: {e}; none of it is sent (counted in send_failures=, suppressed_msgs=)",
                    prefix.escape_ascii()
                );
                self.cut_answers.refuse("send_failed", &detail, now_ns);
            }
        }
        self.answer.clear();
    }

    /// Count and say (rate-limited) a message the cache would not hold; it is forwarded all the same.
    fn refuse(&mut self, update: Update, now_ns: u64) {
        let (reason, what) = match update {
            Update::RejectedFull => ("cache_full", "new topics pass uncached"),
            Update::EvictedTooBig => {
                ("too_big", "a value too big for the cache passes uncached (the old one is dropped)")
            }
            Update::BadFrame(e) => {
                let detail = format_args!(
                    "bad frame: {e}: a one-frame message with a topic NUL that the wire decoder refuses passes \
                     uncached (an mdsub subscriber drops it; the topic's last good value stays; counted in bad_frames=)"
                );
                self.refusals.refuse("bad_frame", &detail, now_ns);
                return;
            }
            _ => (
                "uncacheable",
                "a message with no cache key (one frame without a topic NUL, or too many frames) passes uncached",
            ),
        };
        let l = self.cache.limits();
        let detail = format_args!(
            "cache limit hit (topics {}/{}, bytes {}/{}): {what}",
            self.cache.topics(),
            l.max_topics,
            self.cache.bytes(),
            l.max_bytes
        );
        let detail: &dyn std::fmt::Display = if reason == "uncacheable" { &what } else { &detail };
        self.refusals.refuse(reason, detail, now_ns);
    }
}

impl ProxyHooks for LvcHooks {
    type Report = LvcReport;

    fn role(&self) -> &'static str {
        "lvc-proxy"
    }

    /// The LVC applies subscriptions itself, to answer the joiner alone.
    fn manual_subscriptions(&self) -> bool {
        true
    }

    /// Its own subscription to everything keeps the cache warm: the LVC is no subscriber in a
    /// publisher's count, the subscribers behind it are (docs/LVC-TAP.md).
    fn own_subscription_counts(&self) -> bool {
        false
    }

    /// Subscriber connections let a subscribe inside the coalescing window through (the gate's
    /// joiners); nothing to follow when coalescing is off.
    fn follows_joins(&self) -> bool {
        self.gate.limits().coalesce_window_ns > 0
    }

    fn on_subscriber_joined(&mut self, now_ns: u64) {
        self.gate.on_join(now_ns);
    }

    /// Cache it (the shell forwards it), unless it is a control frame: those pass live only.
    fn on_upstream_message(&mut self, frames: &[Frame], now_ns: u64) {
        match self.cache.update(frames) {
            // A control frame is forwarded live, never cached (counted in control=).
            Update::Inserted | Update::Replaced | Update::Control => {}
            refused => self.refuse(refused, now_ns),
        }
    }

    /// Apply a subscription, answer it from the cache (the joiner only),
    /// then let the shell forward it upstream.
    fn on_subscriber_message(
        &mut self,
        msg: FromSubscriber<'_>,
        frames: &[Frame],
        down: &mut Downstream<'_>,
        now_ns: u64,
    ) -> bool {
        match msg {
            FromSubscriber::Subscribe(prefix) => {
                self.subscribes += 1;
                down.apply(true, prefix);
                self.answer(prefix, down, now_ns);
            }
            FromSubscriber::Unsubscribe(prefix) => {
                self.unsubscribes += 1;
                down.apply(false, prefix);
                self.gate.on_unsubscribe(prefix, now_ns);
            }
            FromSubscriber::Other => {
                self.other_upstream += 1;
                if !self.other_logged {
                    self.other_logged = true;
                    crate::diag!(
                        "lvc: a subscriber sent a message that is not a subscription ({} frame(s)); libzmq's \
                         manual XPUB does not track its sender, so later subscriptions may be applied to the \
                         wrong subscriber (counted in other_upstream; logged once)",
                        frames.len()
                    );
                }
            }
        }
        // Upstream gets single-frame (un)subscriptions only: libzmq 4.3.4
        // treats every frame that starts with 0/1 as one, so a multipart
        // message would be split or merged on the way. And never an
        // unsubscribe of the empty prefix: the XSUB counts it against the
        // LVC's own subscribe-to-everything, and one stray `\x00` from any
        // peer would cut the cache off from its publishers.
        frames.len() == 1 && msg != FromSubscriber::Unsubscribe(b"")
    }

    /// Refusals and cut answers counted since their last line are summarised when their
    /// interval is up, even when no more traffic comes to say them.
    fn on_tick(&mut self, now_ns: u64) {
        self.refusals.tick(now_ns);
        self.cut_answers.tick(now_ns);
    }

    fn report(&self, shell: &ShellCounters) -> LvcReport {
        LvcReport {
            shell: *shell,
            subscribes: self.subscribes,
            unsubscribes: self.unsubscribes,
            other_upstream: self.other_upstream,
            cache_answers: self.cache_answers,
            answers: self.gate.counters(),
            topics: self.cache.topics() as u64,
            cache_bytes: self.cache.bytes() as u64,
            cache: self.cache.counters(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Agent, IdleStrategy};
    use crate::clock::{Clock, ManualClock};
    use crate::diag::SUMMARY_INTERVAL_NS;
    use crate::lvc::LvcConfig;
    use crate::proxy::{Delivery, ProxyConfig, ProxyShell};
    use crate::wire::{encode, Header};
    use crate::zmqx::Attach;

    fn frame(topic: &str, seq: u64) -> Vec<u8> {
        encode(topic.as_bytes(), &Header::data(seq, 0), b"value")
    }

    /// A frame of `topic` the wire decoder refuses (version 9).
    fn bad_frame(topic: &str) -> Frame {
        let mut f = frame(topic, 1);
        f[topic.len() + 1] = 9;
        Frame::copy_of(&f)
    }

    #[test]
    fn refusals_left_unsaid_are_summarised_on_the_tick_with_no_more_traffic() {
        // Before, a refusal counted after the first was said only with the next refusal or at exit.
        let clock = ManualClock::new(1_000 * SUMMARY_INTERVAL_NS);
        let mut lvc = LvcHooks::new(CacheLimits::default(), AnswerLimits::default());
        lvc.on_upstream_message(&[bad_frame("VER9")], clock.now_ns());
        assert!(!lvc.refusals.counts().unsaid(), "the first is said at once");
        lvc.on_upstream_message(&[bad_frame("VER9")], clock.advance_ns(1));
        assert!(lvc.refusals.counts().unsaid(), "the second is counted, for the summary");
        lvc.on_tick(clock.advance_ns(SUMMARY_INTERVAL_NS - 2));
        assert!(lvc.refusals.counts().unsaid(), "not before the interval is up");
        lvc.on_tick(clock.advance_ns(1));
        assert!(!lvc.refusals.counts().unsaid(), "said on the tick, with no message since");
        assert_eq!(lvc.refusals.counts().count("bad_frame"), 2);
        assert_eq!(lvc.report(&ShellCounters::default()).cache.bad_frames, 2);
    }

    /// Step `lvc` until `done` holds (at most 5 s).
    fn step_until(lvc: &mut ProxyShell<LvcHooks>, what: &str, done: impl Fn(&LvcReport) -> bool) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done(&lvc.report()) {
            assert!(std::time::Instant::now() < end, "timed out waiting for {what}: {}", lvc.report());
            lvc.do_work().expect("lvc step");
        }
    }

    #[test]
    fn an_answer_a_full_subscriber_queue_cannot_take_is_counted_and_said() {
        // A subscriber that stopped reading, whose queue live traffic has filled (lossy delivery),
        // subscribes to a cached topic: its answer cannot be queued.
        let ctx = zmq::Context::new();
        let config = LvcConfig {
            proxy: ProxyConfig {
                frontend: vec![Attach::Bind("inproc://lvc-send-failed-front".into())],
                backend: vec![Attach::Bind("inproc://lvc-send-failed-back".into())],
                hwm_msgs: 4,
                max_msg_bytes: 1 << 20,
                idle: IdleStrategy::default(),
                delivery: Delivery::Lossy,
            },
            limits: CacheLimits::default(),
            answers: AnswerLimits { coalesce_window_ns: 0, ..AnswerLimits::default() },
        };
        let mut lvc = crate::lvc::new_proxy(&ctx, &config).expect("lvc");
        let publisher = ctx.socket(zmq::PUB).expect("pub");
        publisher.connect("inproc://lvc-send-failed-front").expect("connect");
        let sub = ctx.socket(zmq::SUB).expect("sub");
        sub.set_rcvhwm(1).expect("rcvhwm");
        sub.connect("inproc://lvc-send-failed-back").expect("connect");
        sub.set_subscribe(b"L").expect("subscribe");
        // The path is up once a live L comes through (the LVC's subscription reached the publisher
        // and the subscriber's was applied).
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sub.recv_bytes(zmq::DONTWAIT).is_err() {
            assert!(std::time::Instant::now() < end, "the path did not come up: {}", lvc.report());
            publisher.send(frame("L", 1), 0).expect("publish");
            lvc.do_work().expect("lvc step");
        }
        publisher.send(frame("B", 1), 0).expect("publish");
        step_until(&mut lvc, "B cached", |r| r.topics == 2);
        // Live L the subscriber does not read, until its queue is full and L is dropped there.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lvc.report().shell.dropped_full == 0 {
            assert!(std::time::Instant::now() < end, "the queue never filled: {}", lvc.report());
            publisher.send(frame("L", 2), 0).expect("publish");
            lvc.do_work().expect("lvc step");
        }
        let before = lvc.report();
        sub.set_subscribe(b"B").expect("subscribe");
        step_until(&mut lvc, "the subscribe to B", |r| r.subscribes > before.subscribes);
        let after = lvc.report();
        assert_eq!(after.shell.send_failures - before.shell.send_failures, 1, "{after}");
        assert_eq!(after.answers.suppressed_msgs - before.answers.suppressed_msgs, 1, "{after}");
        assert_eq!(after.cache_answers, before.cache_answers, "nothing of it sent: {after}");
        let said = &lvc.hooks().cut_answers;
        assert_eq!((said.counts().count("send_failed"), said.counts().unsaid()), (1, false), "said at once");
    }
}
