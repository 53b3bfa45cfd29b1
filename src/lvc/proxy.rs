//! The LVC's hooks on the proxy shell (guide, chapter 5, Last Value Cache).
//!
//! [`LvcHooks`] put a [`LastValueCache`] between the shell's XSUB and XPUB:
//! every message from the publishers updates it, every new subscription is
//! answered from it before it is forwarded upstream.

use crate::diag::RefusalLog;
use crate::lvc::cache::{CacheCounters, CacheLimits, LastValueCache, Update};
use crate::proxy::{Downstream, FromSubscriber, ProxyHooks, ShellCounters};
use crate::wire::{mark_from_cache, now_ns};

/// Counters of one LVC run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LvcReport {
    /// Messages received from publishers (and forwarded to subscribers).
    pub messages_in: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Subscribe / unsubscribe messages seen on the XPUB (duplicates included).
    pub subscribes: u64,
    pub unsubscribes: u64,
    /// Single-frame messages from subscribers that were neither: forwarded upstream as is.
    pub other_upstream: u64,
    /// Messages from subscribers not forwarded upstream: multipart ones, and
    /// unsubscribes of the empty prefix (see `on_subscription`).
    pub not_forwarded: u64,
    /// Cached messages re-sent in answer to subscriptions.
    pub cache_answers: u64,
    /// Sends that failed (message lost).
    pub send_failures: u64,
    /// Topics and bytes held at the end.
    pub topics: u64,
    pub cache_bytes: u64,
    pub cache: CacheCounters,
}

impl std::fmt::Display for LvcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.cache;
        write!(
            f,
            "messages_in={} frames_in={} bytes_in={} subscribes={} unsubscribes={} other_upstream={} \
             not_forwarded={} cache_answers={} send_failures={} topics={} cache_bytes={} inserted={} replaced={} \
             rejected_full={} evicted_too_big={} uncacheable={}",
            self.messages_in,
            self.frames_in,
            self.bytes_in,
            self.subscribes,
            self.unsubscribes,
            self.other_upstream,
            self.not_forwarded,
            self.cache_answers,
            self.send_failures,
            self.topics,
            self.cache_bytes,
            c.inserted,
            c.replaced,
            c.rejected_full,
            c.evicted_too_big,
            c.uncacheable
        )
    }
}

/// The LVC on the proxy shell: the cache and the LVC's own counters.
pub struct LvcHooks {
    cache: LastValueCache,
    subscribes: u64,
    unsubscribes: u64,
    other_upstream: u64,
    cache_answers: u64,
    /// Messages the cache would not hold, counted by reason and said (rate-limited).
    refusals: RefusalLog,
}

impl LvcHooks {
    pub fn new(limits: CacheLimits) -> Self {
        LvcHooks {
            cache: LastValueCache::new(limits),
            subscribes: 0,
            unsubscribes: 0,
            other_upstream: 0,
            cache_answers: 0,
            refusals: RefusalLog::new("lvc"),
        }
    }

    /// Count and say (rate-limited) a message the cache would not hold; it is forwarded all the same.
    fn refuse(&mut self, update: Update) {
        let (reason, what) = match update {
            Update::RejectedFull => ("cache_full", "new topics pass uncached"),
            Update::EvictedTooBig => {
                ("too_big", "a value too big for the cache passes uncached (the old one is dropped)")
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
        self.refusals.refuse(reason, detail, now_ns());
    }
}

impl ProxyHooks for LvcHooks {
    type Report = LvcReport;

    fn role(&self) -> &'static str {
        "lvc-proxy"
    }

    /// Cache it (the shell forwards it).
    fn on_upstream_message(&mut self, frames: &[zmq::Message]) {
        match self.cache.update(frames) {
            Update::Inserted | Update::Replaced => {}
            refused => self.refuse(refused),
        }
    }

    /// Answer a subscription from the cache, then let the shell forward it upstream.
    fn on_subscriber_message(
        &mut self,
        msg: FromSubscriber<'_>,
        frames: &[zmq::Message],
        down: &mut Downstream<'_>,
    ) -> bool {
        match msg {
            FromSubscriber::Subscribe(prefix) => {
                self.subscribes += 1;
                for cached in self.cache.matching(prefix) {
                    let n = cached.frame_count();
                    for (i, frame) in cached.enumerate() {
                        let mut m = zmq::Message::from(frame);
                        if n == 1 {
                            // Only mdsub frames decode; foreign frames are sent as they are.
                            mark_from_cache(&mut m);
                        }
                        down.send_frame(m, i + 1 < n);
                    }
                    self.cache_answers += 1;
                }
            }
            FromSubscriber::Unsubscribe(_) => self.unsubscribes += 1,
            FromSubscriber::Other => self.other_upstream += 1,
        }
        // Upstream gets single-frame (un)subscriptions only: libzmq 4.3.4
        // treats every frame that starts with 0/1 as one, so a multipart
        // message would be split or merged on the way. And never an
        // unsubscribe of the empty prefix: the XSUB counts it against the
        // LVC's own subscribe-to-everything, and one stray `\x00` from any
        // peer would cut the cache off from its publishers.
        frames.len() == 1 && msg != FromSubscriber::Unsubscribe(b"")
    }

    fn report(&self, shell: &ShellCounters) -> LvcReport {
        LvcReport {
            messages_in: shell.messages_in,
            frames_in: shell.frames_in,
            bytes_in: shell.bytes_in,
            subscribes: self.subscribes,
            unsubscribes: self.unsubscribes,
            other_upstream: self.other_upstream,
            not_forwarded: shell.not_forwarded,
            cache_answers: self.cache_answers,
            send_failures: shell.send_failures,
            topics: self.cache.topics() as u64,
            cache_bytes: self.cache.bytes() as u64,
            cache: self.cache.counters(),
        }
    }
}
