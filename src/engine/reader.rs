//! The shard's SUB reader agent (`shardK-reader`): drains the SUB socket,
//! decodes and checks every frame, and hands data to workers over inproc
//! PUSH, batched adaptively (whatever the SUB already holds, up to
//! `batch_max`; it never waits to fill a batch).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crossbeam::utils::CachePadded;

use super::batch;
use super::sequence::SequenceTracker;
use crate::agent::{Agent, AgentError, Step};
use crate::feed::topic_hash;
use crate::wire::{self, Kind, DROP_REASONS};

/// How data frames are handed to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandOff {
    /// Everything drained in one round goes as one message per worker.
    Batch,
    /// Each received `zmq::Message` is moved to its worker as is.
    PerMessage,
}

/// How a data frame picks its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// By topic hash: one topic always goes to one worker, so its order is kept.
    ByTopic,
    /// Round-robin per message: even load, no per-topic order across workers.
    RoundRobin,
}

/// Live counters of one shard, written by its reader only (single writer,
/// relaxed stores once per drain round), read by anyone.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub received: CachePadded<AtomicU64>,
    pub forwarded: CachePadded<AtomicU64>,
    pub gaps: AtomicU64,
    pub duplicates: AtomicU64,
    pub restarts: AtomicU64,
    pub bad: [AtomicU64; DROP_REASONS],
    /// Sum of `sent` of the end-of-stream frames seen, and how many.
    pub eos_sent: AtomicU64,
    pub eos_seen: AtomicU64,
    /// Data accepted from sessions whose end of stream was seen.
    pub eos_accepted: AtomicU64,
}

/// Reader settings.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub shard: usize,
    pub batch_max: usize,
    pub handoff: HandOff,
    pub routing: Routing,
    /// Workers' inproc endpoints, in worker order.
    pub worker_endpoints: Vec<String>,
    /// End of stream after this many publishers said so (0: run until stopped).
    pub expect_eos: usize,
    /// The shard subscribes to every topic (stream gaps are then real loss).
    pub full_subscription: bool,
    /// Hand-off SNDHWM, in messages (batches).
    pub push_hwm: i32,
}

/// The per-frame checks and routing of a reader (socket-free).
pub struct Checks {
    tracker: SequenceTracker,
    routing: Routing,
    workers: usize,
    rr: usize,
    received: u64,
    forwarded: u64,
    bad: [u64; DROP_REASONS],
    eos_seen: usize,
}

impl Checks {
    pub fn new(routing: Routing, workers: usize, full_subscription: bool) -> Self {
        Checks {
            tracker: SequenceTracker::new(full_subscription),
            routing,
            workers: workers.max(1),
            rr: 0,
            received: 0,
            forwarded: 0,
            bad: [0; DROP_REASONS],
            eos_seen: 0,
        }
    }

    /// Decode and check one frame; `Some(worker)` if it is data to deliver.
    #[inline]
    pub fn check(&mut self, frame: &[u8]) -> Option<usize> {
        self.received += 1;
        let view = match wire::decode(frame) {
            Ok(v) => v,
            Err(e) => {
                self.bad[e.reason()] += 1;
                return None;
            }
        };
        match view.header.kind {
            Kind::Data => {
                if !self.tracker.on_data(&view.header, view.topic).accept {
                    return None;
                }
                self.forwarded += 1;
                Some(match self.routing {
                    Routing::ByTopic => (topic_hash(view.topic) % self.workers as u64) as usize,
                    Routing::RoundRobin => {
                        self.rr = (self.rr + 1) % self.workers;
                        self.rr
                    }
                })
            }
            Kind::Heartbeat => None,
            Kind::EndOfStream => {
                let sent = match view.payload.try_into() {
                    Ok(b) => u64::from_le_bytes(b),
                    Err(_) => view.header.stream_seq,
                };
                self.tracker.on_end_of_stream(&view.header, sent);
                self.eos_seen += 1;
                None
            }
        }
    }

    /// End-of-stream frames seen.
    pub fn eos_seen(&self) -> usize {
        self.eos_seen
    }

    /// Store the counters into the shared atomics.
    pub fn publish(&self, c: &ShardCounters) {
        let t = self.tracker.totals();
        c.received.store(self.received, Relaxed);
        c.forwarded.store(self.forwarded, Relaxed);
        c.gaps.store(t.gaps, Relaxed);
        c.duplicates.store(t.duplicates, Relaxed);
        c.restarts.store(t.restarts, Relaxed);
        for (a, v) in c.bad.iter().zip(self.bad) {
            a.store(v, Relaxed);
        }
        let (sent, accepted) = self.tracker.sent_and_accepted();
        c.eos_sent.store(sent, Relaxed);
        c.eos_accepted.store(accepted, Relaxed);
        c.eos_seen.store(self.eos_seen as u64, Relaxed);
    }
}

pub struct ReaderAgent {
    role: String,
    cfg: ReaderConfig,
    sub: zmq::Socket,
    pushes: Vec<zmq::Socket>,
    staging: Vec<Vec<u8>>,
    msg: zmq::Message,
    checks: Checks,
    counters: Arc<ShardCounters>,
}

fn zerr<'a>(role: &'a str, context: &'static str) -> impl FnOnce(zmq::Error) -> AgentError + 'a {
    move |source| AgentError::Zmq { role: role.to_string(), context, source }
}

impl ReaderAgent {
    /// Wrap a connected, subscribed SUB; connect PUSH sockets (in the fan-out
    /// context `fanout`) to every worker.
    pub fn new(
        cfg: ReaderConfig,
        sub: zmq::Socket,
        fanout: &zmq::Context,
        counters: Arc<ShardCounters>,
    ) -> Result<Self, AgentError> {
        let role = format!("shard{}-reader", cfg.shard);
        let mut pushes = Vec::with_capacity(cfg.worker_endpoints.len());
        for ep in &cfg.worker_endpoints {
            let p = fanout.socket(zmq::PUSH).map_err(zerr(&role, "creating a PUSH"))?;
            p.set_sndhwm(cfg.push_hwm).map_err(zerr(&role, "setting the hand-off SNDHWM"))?;
            p.set_linger(-1).map_err(zerr(&role, "setting LINGER"))?;
            p.connect(ep).map_err(zerr(&role, "connecting to a worker"))?;
            pushes.push(p);
        }
        if pushes.is_empty() {
            return Err(AgentError::Fatal { role, message: "no workers to hand off to".into() });
        }
        let staging = (0..pushes.len()).map(|_| Vec::with_capacity(cfg.batch_max * 256 + 1)).collect();
        let checks = Checks::new(cfg.routing, pushes.len(), cfg.full_subscription);
        Ok(ReaderAgent { role, cfg, sub, pushes, staging, msg: zmq::Message::new(), checks, counters })
    }

    fn flush(&mut self) -> Result<(), AgentError> {
        for (w, buf) in self.staging.iter_mut().enumerate() {
            if !buf.is_empty() {
                self.pushes[w].send(&buf[..], 0).map_err(zerr(&self.role, "handing a batch to a worker"))?;
                buf.clear();
            }
        }
        Ok(())
    }
}

impl Agent for ReaderAgent {
    fn role(&self) -> &str {
        &self.role
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let mut n = 0;
        while n < self.cfg.batch_max {
            match self.sub.recv(&mut self.msg, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(zerr(&self.role, "receiving from the SUB")(e)),
            }
            n += 1;
            let recv_ns = wire::now_ns();
            let frame: &[u8] = &self.msg;
            let Some(w) = self.checks.check(frame) else { continue };
            match self.cfg.handoff {
                HandOff::Batch => batch::push(&mut self.staging[w], recv_ns, frame),
                HandOff::PerMessage => {
                    let m = std::mem::replace(&mut self.msg, zmq::Message::new());
                    self.pushes[w].send(m, 0).map_err(zerr(&self.role, "handing a message to a worker"))?;
                }
            }
        }
        if n > 0 {
            self.flush()?;
            self.checks.publish(&self.counters);
        }
        if self.cfg.expect_eos > 0 && self.checks.eos_seen() >= self.cfg.expect_eos {
            return Ok(Step::Finished);
        }
        Ok(Step::Worked(n))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let mut items = [self.sub.as_poll_item(zmq::POLLIN)];
        let _ = zmq::poll(&mut items, timeout.as_millis().max(1) as i64);
    }

    fn on_close(&mut self) {
        let _ = self.flush();
        self.checks.publish(&self.counters);
        // End markers: an empty message to every worker, after all batches.
        for p in &self.pushes {
            let _ = p.send(&b""[..], 0);
        }
    }
}
