//! The Black Box engine (the guide's high-speed subscriber): per shard, a
//! ZeroMQ context whose I/O thread is pinned to the shard's I/O core and a
//! SUB reader agent pinned to its reader core; readers fan out over inproc
//! PUSH/PULL to pinned worker agents; workers ship latency histograms to a
//! metrics collector over a crossbeam channel.
//!
//! ```text
//! shard k: ctx k (I/O thread on io_core) ── SUB ── shardK-reader ──┐ inproc PUSH (batches)
//!                                                                   ├──► workerN: PULL → Handler → histograms ──► metrics
//! ```

pub mod batch;
pub mod handler;
pub mod reader;
pub mod sequence;
pub mod worker;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};

use crate::agent::{AgentError, IdleStrategy, RunSpec, Runner, StopFlag};
use crate::metrics::{RunReport, StageHistograms};
use crate::wire::DROP_REASON_NAMES;
use handler::HandlerSpec;
use reader::{HandOff, ReaderAgent, ReaderConfig, Routing, ShardCounters};
use worker::{WorkerAgent, WorkerCounters, WorkerReport};

/// Errors starting or running the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("zmq error while {context}: {source}")]
    Zmq {
        context: String,
        #[source]
        source: zmq::Error,
    },
    #[error("could not start thread {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// One shard: where to connect and what to subscribe.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Publisher endpoints to connect (with a NIC source prefix already applied).
    pub endpoints: Vec<String>,
    /// Topic prefixes; empty = everything.
    pub subscribe: Vec<String>,
    pub io_core: Option<usize>,
    pub reader_core: Option<usize>,
}

/// The whole engine's settings (a tuning profile, resolved).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub shards: Vec<ShardConfig>,
    /// One entry per worker: its core.
    pub worker_cores: Vec<Option<usize>>,
    pub routing: Routing,
    pub handoff: HandOff,
    /// Most messages drained per hand-off round.
    pub batch_max: usize,
    pub rcvhwm_msgs: i32,
    /// Largest frame accepted (ZMQ_MAXMSGSIZE on the SUB; a larger one drops
    /// the connection, as libzmq does).
    pub max_msg_bytes: i64,
    /// Hand-off queue depth per worker, in hand-off messages.
    pub handoff_hwm: i32,
    pub idle: IdleStrategy,
    pub handler: HandlerSpec,
    pub metrics_interval: Duration,
    /// Each shard ends after end of stream from this many publisher sessions
    /// (0: run until stopped; None: one per endpoint it connects to).
    pub expect_eos_per_shard: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: vec![],
            worker_cores: vec![None],
            routing: Routing::ByTopic,
            handoff: HandOff::Batch,
            batch_max: 64,
            rcvhwm_msgs: 100_000,
            max_msg_bytes: 1 << 20,
            handoff_hwm: 1_000,
            idle: IdleStrategy::default(),
            handler: HandlerSpec::Latency,
            metrics_interval: Duration::from_secs(1),
            expect_eos_per_shard: None,
        }
    }
}

/// Ends of streams of the engine's readers, live.
pub struct Engine {
    stop: StopFlag,
    start: Instant,
    readers: Vec<JoinHandle<Result<(), AgentError>>>,
    workers: Vec<JoinHandle<Result<(), AgentError>>>,
    collector: Option<JoinHandle<Collected>>,
    shard_counters: Vec<Arc<ShardCounters>>,
    worker_counters: Vec<Arc<WorkerCounters>>,
    /// End-of-stream sessions each shard waits for (0: none).
    expect_eos: Vec<u64>,
    // Contexts last: sockets are closed by their threads before these drop.
    _contexts: Vec<zmq::Context>,
}

/// What the collector adds up.
#[derive(Default)]
struct Collected {
    stages: StageHistograms,
    handler: std::collections::BTreeMap<String, u64>,
}

/// Add up every report; hand each emptied histogram set back to its worker.
fn collect(rx: Receiver<WorkerReport>, spares: Vec<Sender<StageHistograms>>) -> Collected {
    let mut total = Collected::default();
    for mut r in rx.iter() {
        total.stages.add(&r.stages);
        for (k, v) in r.handler_counters {
            *total.handler.entry(k.to_string()).or_default() += v;
        }
        r.stages.reset();
        if let Some(back) = spares.get(r.worker) {
            let _ = back.try_send(r.stages);
        }
    }
    total
}

static ENGINE_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Engine {
    /// Start every thread. Returns once all SUB sockets are connected and
    /// subscribed (the publisher's handshake sees them).
    pub fn start(cfg: &EngineConfig, stop: StopFlag) -> Result<Engine, EngineError> {
        if cfg.shards.is_empty() {
            return Err(EngineError::Config("the engine needs at least one shard".into()));
        }
        if cfg.worker_cores.is_empty() {
            return Err(EngineError::Config("the engine needs at least one worker".into()));
        }
        let id = ENGINE_ID.fetch_add(1, Relaxed);
        let fanout = zmq::Context::new();
        let zerr = |context: &str| {
            let context = context.to_string();
            move |source| EngineError::Zmq { context, source }
        };
        // inproc needs no I/O thread. Its reaper thread starts with the first
        // socket and inherits the creator's name: make that `fanout-zmq`.
        fanout.set_io_threads(0).map_err(zerr("configuring the fan-out context"))?;
        let f = fanout.clone();
        std::thread::Builder::new()
            .name("fanout-zmq".into())
            .spawn(move || f.socket(zmq::PUSH).map(drop))
            .map_err(|source| EngineError::Spawn { name: "fanout-zmq".into(), source })?
            .join()
            .map_err(|_| EngineError::Config("fanout-zmq panicked".into()))?
            .map_err(zerr("starting the fan-out context"))?;
        let (tx, rx) = crossbeam::channel::bounded::<WorkerReport>(256);
        let (spare_txs, mut spare_rxs): (Vec<_>, Vec<_>) =
            (0..cfg.worker_cores.len()).map(|_| crossbeam::channel::bounded::<StageHistograms>(2)).unzip();
        let collector = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || collect(rx, spare_txs))
            .map_err(|source| EngineError::Spawn { name: "metrics".into(), source })?;
        // From here an early return drops `engine`, which stops and joins
        // whatever was already started.
        let mut engine = Engine {
            stop: stop.clone(),
            start: Instant::now(),
            readers: Vec::new(),
            workers: Vec::new(),
            collector: Some(collector),
            shard_counters: Vec::new(),
            worker_counters: Vec::new(),
            expect_eos: Vec::new(),
            _contexts: vec![fanout.clone()],
        };
        let mut worker_endpoints = Vec::new();
        for (w, core) in cfg.worker_cores.iter().enumerate() {
            let endpoint = format!("inproc://mdsub{id}-worker{w}");
            worker_endpoints.push(endpoint.clone());
            let counters = Arc::new(WorkerCounters::default());
            engine.worker_counters.push(counters.clone());
            let (fanout, tx, handler, readers, interval, hwm) =
                (fanout.clone(), tx.clone(), cfg.handler, cfg.shards.len(), cfg.metrics_interval, cfg.handoff_hwm);
            let spares = spare_rxs.remove(0);
            // Bind before any reader connects: wait for the worker to say so.
            let (ready_tx, ready_rx) = crossbeam::channel::bounded(1);
            let name = format!("worker{w}");
            let h = Runner::spawn(&name, RunSpec { core: *core, idle: cfg.idle }, stop.clone(), move || {
                let a = WorkerAgent::new(
                    w,
                    &fanout,
                    &endpoint,
                    hwm,
                    readers,
                    handler.build(),
                    tx,
                    spares,
                    interval,
                    counters,
                );
                let _ = ready_tx.send(a.is_ok());
                a
            })
            .map_err(|source| EngineError::Spawn { name: name.clone(), source })?;
            if ready_rx.recv_timeout(Duration::from_secs(10)) != Ok(true) {
                stop.stop();
                let err = h.join().ok().and_then(|r| r.err());
                return Err(err
                    .map(EngineError::from)
                    .unwrap_or_else(|| EngineError::Config(format!("{name} did not start"))));
            }
            engine.workers.push(h);
        }
        drop(tx);

        for (k, shard) in cfg.shards.iter().enumerate() {
            let (ctx, sub) = Self::make_shard_socket(k, shard, cfg.rcvhwm_msgs, cfg.max_msg_bytes)?;
            engine._contexts.push(ctx);
            let expect_eos = cfg.expect_eos_per_shard.unwrap_or(shard.endpoints.len());
            engine.expect_eos.push(expect_eos as u64);
            let counters = Arc::new(ShardCounters::default());
            engine.shard_counters.push(counters.clone());
            let rc = ReaderConfig {
                shard: k,
                batch_max: cfg.batch_max.max(1),
                handoff: cfg.handoff,
                routing: cfg.routing,
                worker_endpoints: worker_endpoints.clone(),
                expect_eos,
                full_subscription: shard.subscribe.is_empty() || shard.subscribe.iter().any(|s| s.is_empty()),
                push_hwm: cfg.handoff_hwm,
            };
            let (fanout, reader_stop) = (fanout.clone(), stop.clone());
            let name = format!("shard{k}-reader");
            let h =
                Runner::spawn(&name, RunSpec { core: shard.reader_core, idle: cfg.idle }, stop.clone(), move || {
                    ReaderAgent::new(rc, sub, &fanout, counters, reader_stop)
                })
                .map_err(|source| EngineError::Spawn { name, source })?;
            engine.readers.push(h);
        }
        engine.start = Instant::now();
        Ok(engine)
    }

    /// Make shard `k`'s context and SUB socket on a thread pinned to the
    /// shard's I/O core: libzmq starts the context's I/O thread with the first
    /// socket, and the thread inherits the creator's CPU mask.
    fn make_shard_socket(
        k: usize,
        shard: &ShardConfig,
        rcvhwm: i32,
        max_msg_bytes: i64,
    ) -> Result<(zmq::Context, zmq::Socket), EngineError> {
        let shard = shard.clone();
        // libzmq's threads inherit this thread's name and CPU mask, so the
        // shard's I/O thread shows as `shardK-io` in `top -H`.
        let name = format!("shard{k}-io");
        let h = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || -> Result<(zmq::Context, zmq::Socket), EngineError> {
                if let Some(core) = shard.io_core {
                    crate::agent::pin_current_thread(core)
                        .map_err(|m| EngineError::Config(format!("shard {k} io_core: {m}")))?;
                }
                let zerr = |context: String| move |source| EngineError::Zmq { context, source };
                let ctx = zmq::Context::new();
                ctx.set_io_threads(1).map_err(zerr("configuring the shard context".into()))?;
                let sub = ctx.socket(zmq::SUB).map_err(zerr("creating the SUB".into()))?;
                sub.set_rcvhwm(rcvhwm).map_err(zerr("setting RCVHWM".into()))?;
                sub.set_maxmsgsize(max_msg_bytes).map_err(zerr("setting MAXMSGSIZE".into()))?;
                sub.set_linger(0).map_err(zerr("setting LINGER".into()))?;
                let control = [crate::replay::CONTROL_TOPIC, b"\0"].concat();
                if shard.subscribe.is_empty() {
                    sub.set_subscribe(b"").map_err(zerr("subscribing".into()))?;
                } else {
                    for t in &shard.subscribe {
                        sub.set_subscribe(t.as_bytes()).map_err(zerr(format!("subscribing to `{t}`")))?;
                    }
                    if !shard.subscribe.iter().any(|t| control.starts_with(t.as_bytes())) {
                        sub.set_subscribe(&control).map_err(zerr("subscribing to control frames".into()))?;
                    }
                }
                for ep in &shard.endpoints {
                    sub.connect(ep).map_err(zerr(format!("connecting to {ep}")))?;
                }
                Ok((ctx, sub))
            })
            .map_err(|source| EngineError::Spawn { name: name.clone(), source })?;
        h.join().map_err(|_| EngineError::Config(format!("{name} panicked")))?
    }

    /// Ask every thread to stop (Ctrl-C); `join` then reports what was done.
    pub fn stop_flag(&self) -> StopFlag {
        self.stop.clone()
    }

    /// True once every reader has finished (end of stream on every shard).
    pub fn readers_finished(&self) -> bool {
        self.readers.iter().all(|h| h.is_finished())
    }

    /// Messages delivered to handlers so far.
    pub fn delivered(&self) -> u64 {
        self.worker_counters.iter().map(|c| c.handled.load(Relaxed)).sum()
    }

    /// Wait for the end of stream on every shard, at most `timeout` (then stop
    /// the engine), join every thread and build the report.
    pub fn join(mut self, timeout: Option<Duration>) -> Result<RunReport, EngineError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut timed_out = false;
        while !self.readers_finished() && !self.stop.is_stopped() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let interrupted = self.stop.is_stopped() || timed_out;
        if timed_out {
            self.stop.stop();
        }
        // Readers first: one that failed has set the stop flag (the runner
        // does), so workers waiting for its end marker stop too.
        let mut first_err = None;
        let mut note = |r: std::thread::Result<Result<(), AgentError>>| match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_err = first_err.take().or(Some(EngineError::Agent(e))),
            Err(_) => first_err = first_err.take().or(Some(EngineError::Config("an engine thread panicked".into()))),
        };
        for h in self.readers.drain(..) {
            note(h.join());
        }
        for h in self.workers.drain(..) {
            note(h.join());
        }
        let collected = self.collector.take().and_then(|h| h.join().ok()).unwrap_or_default();
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(self.report(collected, interrupted))
    }

    /// From the first frame received to the last message handled; the time
    /// since start if nothing arrived.
    fn active_window(&self) -> Duration {
        let first = self.shard_counters.iter().map(|c| c.first_recv_ns.load(Relaxed)).filter(|&t| t > 0).min();
        let last = self.worker_counters.iter().map(|c| c.last_done_ns.load(Relaxed)).max();
        match (first, last) {
            (Some(f), Some(l)) if l > f => Duration::from_nanos(l - f),
            _ => self.start.elapsed(),
        }
    }

    fn report(&self, collected: Collected, interrupted: bool) -> RunReport {
        let stages = collected.stages;
        let shards = &self.shard_counters;
        let sum = |f: &dyn Fn(&ShardCounters) -> u64| shards.iter().map(|c| f(c)).sum::<u64>();
        let delivered = self.delivered();
        let forwarded = sum(&|c| c.forwarded.load(Relaxed));
        let complete = shards.iter().zip(&self.expect_eos).all(|(c, &e)| e > 0 && c.eos_sessions.load(Relaxed) >= e);
        let full = shards.iter().all(|c| c.full_subscription.load(Relaxed));
        let any_eos = sum(&|c| c.eos_sessions.load(Relaxed)) > 0;
        let sent = any_eos.then(|| sum(&|c| c.eos_sent.load(Relaxed)));
        let (lost, loss_basis) = match (complete, full) {
            (true, true) => {
                // Per shard: what its publishers said they sent, less what it
                // accepted; plus anything accepted but not handled.
                let missing = sum(&|c| c.eos_sent.load(Relaxed).saturating_sub(c.forwarded.load(Relaxed)));
                (Some(missing + forwarded.saturating_sub(delivered)), "end-of-stream counts".to_string())
            }
            (true, false) => (None, "unknown: topics are filtered (gaps are counted by topic sequence)".to_string()),
            (false, _) => (None, "unknown: end of stream not seen on every shard".to_string()),
        };
        let mut bad_frames = std::collections::BTreeMap::new();
        for (r, name) in DROP_REASON_NAMES.iter().enumerate() {
            bad_frames.insert(name.to_string(), sum(&|c| c.bad[r].load(Relaxed)));
        }
        bad_frames.insert("implausible_sequence".into(), sum(&|c| c.implausible.load(Relaxed)));
        bad_frames.insert("over_limit".into(), sum(&|c| c.over_limit.load(Relaxed)));
        let secs = self.active_window().as_secs_f64().max(1e-9);
        let bytes: u64 = self.worker_counters.iter().map(|c| c.handled_bytes.load(Relaxed)).sum();
        RunReport {
            subscriber: "engine".into(),
            duration_s: secs,
            sent,
            delivered,
            lost,
            loss_basis,
            gaps: sum(&|c| c.gaps.load(Relaxed)),
            duplicates: sum(&|c| c.duplicates.load(Relaxed)),
            restarts: sum(&|c| c.restarts.load(Relaxed)),
            bad_frames,
            msgs_per_sec: delivered as f64 / secs,
            mb_per_sec: bytes as f64 / secs / 1e6,
            latency: stages.summary(),
            interrupted,
            metrics_dropped: self.worker_counters.iter().map(|c| c.metrics_dropped.load(Relaxed)).sum(),
            handler: collected.handler,
        }
    }
}

impl Drop for Engine {
    /// An engine dropped without `join` (an error path) stops its threads.
    fn drop(&mut self) {
        if self.readers.is_empty() && self.workers.is_empty() {
            return;
        }
        self.stop.stop();
        for h in self.readers.drain(..).chain(self.workers.drain(..)) {
            let _ = h.join();
        }
        // The collector ends by itself once every worker's sender is gone.
    }
}
