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
use crate::agent::{Agent, AgentError, Step, StopFlag};
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
    /// Data frames handed to workers.
    pub forwarded: CachePadded<AtomicU64>,
    pub gaps: AtomicU64,
    pub duplicates: AtomicU64,
    pub restarts: AtomicU64,
    /// Malformed frames by [`wire::DecodeError::reason`].
    pub bad: [AtomicU64; DROP_REASONS],
    /// Dropped by the sequence checks as implausible jumps / over state limits.
    pub implausible: AtomicU64,
    pub over_limit: AtomicU64,
    /// Distinct publisher sessions whose end of stream arrived, and the sum of
    /// the `sent` counts they carried.
    pub eos_sessions: AtomicU64,
    pub eos_sent: AtomicU64,
    /// Receive time of the first frame (0 before any).
    pub first_recv_ns: AtomicU64,
    /// The shard takes every topic (loss can be computed from end-of-stream counts).
    pub full_subscription: std::sync::atomic::AtomicBool,
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
    first_recv_ns: u64,
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
            first_recv_ns: 0,
        }
    }

    /// Decode and check one frame received at `recv_ns`; `Some(worker)` if it
    /// is data to deliver.
    #[inline]
    pub fn check(&mut self, frame: &[u8], recv_ns: u64) -> Option<usize> {
        if self.received == 0 {
            self.first_recv_ns = recv_ns;
        }
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
            // A cache (LVC) may re-send a publisher's control frames: only live ones count.
            _ if view.header.flags & wire::FLAG_FROM_CACHE != 0 => None,
            Kind::Heartbeat => None,
            Kind::EndOfStream => {
                let sent = match view.payload.try_into() {
                    Ok(b) => u64::from_le_bytes(b),
                    Err(_) => view.header.stream_seq,
                };
                self.tracker.on_end_of_stream(&view.header, sent);
                None
            }
        }
    }

    /// Distinct publisher sessions whose end of stream was seen.
    pub fn eos_sessions(&self) -> u64 {
        self.tracker.totals().eos_sessions
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
        c.implausible.store(t.implausible, Relaxed);
        c.over_limit.store(t.over_limit, Relaxed);
        c.eos_sessions.store(t.eos_sessions, Relaxed);
        c.eos_sent.store(t.eos_sent, Relaxed);
        c.first_recv_ns.store(self.first_recv_ns, Relaxed);
        c.full_subscription.store(self.tracker.full_subscription(), Relaxed);
    }
}

pub struct ReaderAgent {
    role: String,
    stop: StopFlag,
    cfg: ReaderConfig,
    sub: zmq::Socket,
    pushes: Vec<zmq::Socket>,
    staging: Vec<Vec<u8>>,
    msg: zmq::Message,
    checks: Checks,
    counters: Arc<ShardCounters>,
    /// Ended by end of stream (not by a stop request or an error).
    finished: bool,
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
        stop: StopFlag,
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
        Ok(ReaderAgent {
            role,
            stop,
            cfg,
            sub,
            pushes,
            staging,
            msg: zmq::Message::new(),
            checks,
            counters,
            finished: false,
        })
    }

    /// Hand `data` to worker `w`. Never blocks for good: a full hand-off
    /// queue is waited on in short polls, and a stop request (or a worker that
    /// is gone) ends the wait; returns false then.
    fn send_to(&self, w: usize, data: Sendable) -> Result<bool, AgentError> {
        let push = &self.pushes[w];
        let mut data = Some(data);
        loop {
            let r = match data.take() {
                Some(Sendable::Bytes(b)) => push.send(b, zmq::DONTWAIT).map_err(|e| (e, Some(Sendable::Bytes(b)))),
                Some(Sendable::Msg(m)) => {
                    // zmq consumes a message even on EAGAIN, so move it only
                    // once the PUSH says it can take one (POLLOUT is exact for
                    // PUSH, and this thread is its only writer).
                    let writable = push.get_events().map(|e| e.contains(zmq::POLLOUT)).unwrap_or(false);
                    if writable {
                        push.send(m, zmq::DONTWAIT).map_err(|e| (e, None))
                    } else {
                        Err((zmq::Error::EAGAIN, Some(Sendable::Msg(m))))
                    }
                }
                None => return Ok(true),
            };
            match r {
                Ok(()) => return Ok(true),
                Err((zmq::Error::EAGAIN, back @ Some(_))) | Err((zmq::Error::EINTR, back @ Some(_))) => {
                    if self.stop.is_stopped() {
                        return Ok(false);
                    }
                    data = back;
                    let mut items = [push.as_poll_item(zmq::POLLOUT)];
                    let _ = zmq::poll(&mut items, 10);
                }
                Err((e, _)) => return Err(zerr(&self.role, "handing off to a worker")(e)),
            }
        }
    }

    fn flush(&mut self) -> Result<bool, AgentError> {
        for w in 0..self.staging.len() {
            if !self.staging[w].is_empty() {
                let buf = std::mem::take(&mut self.staging[w]);
                let ok = self.send_to(w, Sendable::Bytes(&buf));
                self.staging[w] = buf;
                self.staging[w].clear();
                if !ok? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// What a reader hands over: a batch buffer or a received message as is.
enum Sendable<'a> {
    Bytes(&'a [u8]),
    Msg(zmq::Message),
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
            let Some(w) = self.checks.check(frame, recv_ns) else { continue };
            match self.cfg.handoff {
                HandOff::Batch => batch::push(&mut self.staging[w], recv_ns, frame),
                HandOff::PerMessage => {
                    let m = std::mem::replace(&mut self.msg, zmq::Message::new());
                    if !self.send_to(w, Sendable::Msg(m))? {
                        return Ok(Step::Finished);
                    }
                }
            }
        }
        if n > 0 {
            if !self.flush()? {
                return Ok(Step::Finished);
            }
            self.checks.publish(&self.counters);
        }
        if self.cfg.expect_eos > 0 && self.checks.eos_sessions() >= self.cfg.expect_eos as u64 {
            self.finished = true;
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
        // End markers (an empty message to every worker, after all batches)
        // on a normal finish; when stopped, workers stop on the flag.
        if self.finished {
            for w in 0..self.pushes.len() {
                if !matches!(self.send_to(w, Sendable::Bytes(b"")), Ok(true)) {
                    break;
                }
            }
        }
    }
}
