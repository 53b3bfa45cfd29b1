//! LVC proxy agent (guide, chapter 5, Last Value Cache): owns the XSUB, the XPUB and the cache.
//!
//! XSUB toward the publishers, XPUB (verbose) toward the subscribers, and a
//! [`LastValueCache`] between them that answers every new subscription.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agent::{Agent, AgentError, Step};
use crate::lvc::cache::{CacheCounters, CacheLimits, LastValueCache, Update};
use crate::wire::{mark_from_cache, now_ns};
use crate::zmqx::{self, recv_message, send_frame, send_message, Attach};

/// Messages handled per direction in one `do_work`.
pub const BATCH_MSGS: usize = 256;

/// What the proxy is told at start.
#[derive(Debug, Clone)]
pub struct LvcConfig {
    /// Publisher side (XSUB).
    pub frontend: Vec<Attach>,
    /// Subscriber side (XPUB).
    pub backend: Vec<Attach>,
    pub limits: CacheLimits,
    /// SNDHWM and RCVHWM of both sockets, messages (0 = unlimited).
    pub hwm_msgs: i32,
    /// Largest message accepted from the publishers (ZMQ_MAXMSGSIZE).
    pub max_msg_bytes: i64,
}

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

/// The proxy: owns both sockets and the cache.
pub struct LvcProxy {
    frontend: zmq::Socket,
    backend: zmq::Socket,
    cache: LastValueCache,
    frames: Vec<zmq::Message>,
    report: LvcReport,
    shared: Arc<Mutex<LvcReport>>,
    /// Endpoints in effect, frontend then backend, as `(side, verb, endpoint)`.
    pub endpoints: Vec<(&'static str, &'static str, String)>,
}

fn zerr(context: &'static str) -> impl FnOnce(zmq::Error) -> AgentError {
    move |source| AgentError::Zmq { role: "lvc".into(), context, source }
}

impl LvcProxy {
    /// Make the sockets on `ctx`, attach them, and subscribe upstream to
    /// everything (so the cache is warm before the first subscriber).
    pub fn new(ctx: &zmq::Context, config: &LvcConfig, shared: Arc<Mutex<LvcReport>>) -> Result<Self, AgentError> {
        let zmqx::ProxySockets { frontend, backend, endpoints } =
            zmqx::proxy_sockets(ctx, &config.frontend, &config.backend, config.hwm_msgs, config.max_msg_bytes)
                .map_err(|(context, source)| AgentError::Zmq { role: "lvc".into(), context, source })?;
        frontend.send(&[1u8][..], 0).map_err(zerr("subscribing upstream"))?;
        Ok(LvcProxy {
            frontend,
            backend,
            cache: LastValueCache::new(config.limits),
            frames: Vec::with_capacity(8),
            report: LvcReport::default(),
            shared,
            endpoints,
        })
    }

    /// Counters so far.
    pub fn report(&self) -> LvcReport {
        let mut r = self.report;
        r.topics = self.cache.topics() as u64;
        r.cache_bytes = self.cache.bytes() as u64;
        r.cache = self.cache.counters();
        r
    }

    /// One subscription message from the XPUB: answer from the cache, then forward it upstream.
    fn on_subscription(&mut self) -> Result<(), AgentError> {
        let is_sub = match self.frames.first().and_then(|f| f.first()) {
            Some(1) if self.frames.len() == 1 => true,
            Some(0) if self.frames.len() == 1 => {
                self.report.unsubscribes += 1;
                false
            }
            _ => {
                self.report.other_upstream += 1;
                false
            }
        };
        if is_sub {
            self.report.subscribes += 1;
            let prefix = &self.frames[0][1..];
            for cached in self.cache.matching(prefix) {
                let n = cached.frame_count();
                for (i, frame) in cached.enumerate() {
                    let mut m = zmq::Message::from(frame);
                    if n == 1 {
                        // Only mdsub frames decode; foreign frames are sent as they are.
                        mark_from_cache(&mut m);
                    }
                    if send_frame(&self.backend, m, i + 1 < n).is_err() {
                        self.report.send_failures += 1;
                    }
                }
                self.report.cache_answers += 1;
            }
        }
        // Upstream gets single-frame (un)subscriptions only: libzmq 4.3.4
        // treats every frame that starts with 0/1 as one, so a multipart
        // message would be split or merged on the way. And never an
        // unsubscribe of the empty prefix: the XSUB counts it against the
        // LVC's own subscribe-to-everything, and one stray `\x00` from any
        // peer would cut the cache off from its publishers.
        let forward = self.frames.len() == 1 && !(self.frames[0].len() == 1 && self.frames[0][0] == 0);
        if forward {
            if send_message(&self.frontend, &mut self.frames).is_err() {
                self.report.send_failures += 1;
            }
        } else {
            self.report.not_forwarded += 1;
            self.frames.clear();
        }
        Ok(())
    }

    /// One message from a publisher: cache it, forward it.
    fn on_data(&mut self) {
        self.report.messages_in += 1;
        self.report.frames_in += self.frames.len() as u64;
        self.report.bytes_in += self.frames.iter().map(|f| f.len() as u64).sum::<u64>();
        match self.cache.update(&self.frames) {
            Update::RejectedFull | Update::EvictedTooBig => {
                if self.cache.should_log_limit(now_ns()) {
                    let c = self.cache.counters();
                    let l = self.cache.limits();
                    eprintln!(
                        "lvc: cache limit hit (topics {}/{}, bytes {}/{}); new topics pass uncached \
                         (rejected_full={} evicted_too_big={})",
                        self.cache.topics(),
                        l.max_topics,
                        self.cache.bytes(),
                        l.max_bytes,
                        c.rejected_full,
                        c.evicted_too_big
                    );
                }
            }
            Update::Inserted | Update::Replaced | Update::Uncacheable => {}
        }
        if send_message(&self.backend, &mut self.frames).is_err() {
            self.report.send_failures += 1;
        }
    }
}

impl Agent for LvcProxy {
    fn role(&self) -> &str {
        "lvc-proxy"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let mut done = 0;
        // Subscriptions first: a joining subscriber is answered before more live traffic.
        for _ in 0..BATCH_MSGS {
            if !recv_message(&self.backend, &mut self.frames).map_err(zerr("receiving a subscription"))? {
                break;
            }
            self.on_subscription()?;
            done += 1;
        }
        for _ in 0..BATCH_MSGS {
            if !recv_message(&self.frontend, &mut self.frames).map_err(zerr("receiving from publishers"))? {
                break;
            }
            self.on_data();
            done += 1;
        }
        Ok(Step::Worked(done))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let ms = timeout.as_millis().clamp(1, i64::MAX as u128) as i64;
        let mut items = [self.frontend.as_poll_item(zmq::POLLIN), self.backend.as_poll_item(zmq::POLLIN)];
        // EINTR (a signal) or any poll error: return and let the runner look at its stop flag.
        let _ = zmq::poll(&mut items, ms);
    }

    fn on_close(&mut self) {
        let r = self.report();
        if let Ok(mut shared) = self.shared.lock() {
            *shared = r;
        }
    }
}
