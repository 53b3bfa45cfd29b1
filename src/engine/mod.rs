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
use std::time::{Duration, Instant};

use crate::agent::{AgentError, AgentHandle, AgentStats, IdleStrategy, RunSpec, Runner, StopFlag};
use crate::metrics::collector::{Collected, Collector, WorkerReport};
use crate::metrics::{Ceiling, RunReport, ShardReport, StageHistograms, ThreadAccount};
use crate::wire::DROP_REASON_NAMES;
use handler::HandlerSpec;
use reader::{HandOff, ReaderAgent, ReaderConfig, Routing, ShardCounters};
use worker::{WorkerAgent, WorkerCounters};

/// The engine's defaults, in one place (profiles and `EngineConfig::default`).
pub mod defaults {
    /// Most messages a reader drains into one hand-off round.
    pub const BATCH_MAX: usize = 64;
    /// SUB receive queue, in messages.
    pub const RCVHWM_MSGS: i32 = 100_000;
    /// Largest frame accepted (ZMQ_MAXMSGSIZE).
    pub const MAX_MSG_BYTES: i64 = 1 << 20;
    /// Hand-off queue depth per worker, in hand-off messages (batches).
    pub const HANDOFF_HWM_MSGS: i32 = 1_000;
    /// How often workers ship their histograms.
    pub const METRICS_INTERVAL_MS: u64 = 1_000;
}

/// Errors starting or running the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("zmq error while {context}: {source}")]
    Zmq {
        context: String,
        #[source]
        source: zmq::Error,
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
    /// Hand-off queue depth per worker, in hand-off messages (batches).
    pub handoff_hwm_msgs: i32,
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
            batch_max: defaults::BATCH_MAX,
            rcvhwm_msgs: defaults::RCVHWM_MSGS,
            max_msg_bytes: defaults::MAX_MSG_BYTES,
            handoff_hwm_msgs: defaults::HANDOFF_HWM_MSGS,
            idle: IdleStrategy::default(),
            handler: HandlerSpec::Latency,
            metrics_interval: Duration::from_millis(defaults::METRICS_INTERVAL_MS),
            expect_eos_per_shard: None,
        }
    }
}

/// A running engine: its agents, their counters and the contexts they use.
pub struct Engine {
    stop: StopFlag,
    start: Instant,
    readers: Vec<AgentHandle<ReaderAgent>>,
    workers: Vec<AgentHandle<WorkerAgent>>,
    collector: Option<AgentHandle<Collector>>,
    shard_counters: Vec<Arc<ShardCounters>>,
    worker_counters: Vec<Arc<WorkerCounters>>,
    /// End-of-stream sessions each shard waits for (0: none).
    expect_eos: Vec<u64>,
    /// Linux thread ids of each shard's libzmq threads (its I/O thread and
    /// its reaper, both named `shardK-io`), for their CPU time.
    io_tids: Vec<Vec<u32>>,
    // Contexts last: sockets are closed by their threads before these drop.
    _contexts: Vec<zmq::Context>,
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
        Runner::task("fanout-zmq", None, move || f.socket(zmq::PUSH).map(drop))?
            .join()?
            .map_err(zerr("starting the fan-out context"))?;
        let (tx, rx) = crossbeam::channel::bounded::<WorkerReport>(256);
        let (spare_txs, spare_rxs): (Vec<_>, Vec<_>) =
            (0..cfg.worker_cores.len()).map(|_| crossbeam::channel::bounded::<StageHistograms>(2)).unzip();
        // The collector ends by itself once every worker's sender is gone,
        // so it does not take the stop flag (the final reports still arrive).
        let collector = Runner::start(
            RunSpec::unpinned(IdleStrategy::Block { wait_us: 100_000 }),
            StopFlag::new(),
            Collector::new(rx, spare_txs),
        )?;
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
            io_tids: Vec::new(),
            _contexts: vec![fanout.clone()],
        };
        let mut worker_endpoints = Vec::new();
        for ((w, core), spares) in cfg.worker_cores.iter().enumerate().zip(spare_rxs) {
            let endpoint = format!("inproc://mdsub{id}-worker{w}");
            let counters = Arc::new(WorkerCounters::default());
            engine.worker_counters.push(counters.clone());
            // Built here, so its PULL is bound before any reader connects.
            let agent = WorkerAgent::new(
                w,
                &fanout,
                &endpoint,
                cfg.handoff_hwm_msgs,
                cfg.shards.len(),
                cfg.handler.build(),
                tx.clone(),
                spares,
                cfg.metrics_interval,
                counters,
            )?;
            worker_endpoints.push(endpoint);
            engine.workers.push(Runner::start(RunSpec { core: *core, idle: cfg.idle }, stop.clone(), agent)?);
        }
        drop(tx);

        for (k, shard) in cfg.shards.iter().enumerate() {
            let io_name = format!("shard{k}-io");
            let before = crate::clock::task_ids_named(&io_name);
            let (ctx, sub) = Self::make_shard_socket(k, shard, cfg.rcvhwm_msgs, cfg.max_msg_bytes)?;
            engine._contexts.push(ctx);
            // The threads libzmq just started, named after their creator.
            engine
                .io_tids
                .push(crate::clock::task_ids_named(&io_name).into_iter().filter(|t| !before.contains(t)).collect());
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
                handoff_hwm_msgs: cfg.handoff_hwm_msgs,
            };
            let agent = ReaderAgent::new(rc, sub, &fanout, counters, stop.clone())?;
            let spec = RunSpec { core: shard.reader_core, idle: cfg.idle };
            engine.readers.push(Runner::start(spec, stop.clone(), agent)?);
        }
        engine.start = Instant::now();
        Ok(engine)
    }

    /// Make shard `k`'s context and SUB socket on a thread pinned to the
    /// shard's I/O core: libzmq starts the context's I/O thread with the first
    /// socket, and the thread inherits the creator's CPU mask (and its name,
    /// so the shard's I/O thread shows as `shardK-io` in `top -H`).
    fn make_shard_socket(
        k: usize,
        shard: &ShardConfig,
        rcvhwm: i32,
        max_msg_bytes: i64,
    ) -> Result<(zmq::Context, zmq::Socket), EngineError> {
        let shard = shard.clone();
        let name = format!("shard{k}-io");
        let core = shard.io_core;
        let make = move || -> Result<(zmq::Context, zmq::Socket), EngineError> {
            let zerr = |context: String| move |source| EngineError::Zmq { context, source };
            let ctx = zmq::Context::new();
            ctx.set_io_threads(1).map_err(zerr("configuring the shard context".into()))?;
            let sub = ctx.socket(zmq::SUB).map_err(zerr("creating the SUB".into()))?;
            sub.set_rcvhwm(rcvhwm).map_err(zerr("setting RCVHWM".into()))?;
            sub.set_maxmsgsize(max_msg_bytes).map_err(zerr("setting MAXMSGSIZE".into()))?;
            sub.set_linger(0).map_err(zerr("setting LINGER".into()))?;
            let control = [crate::wire::CONTROL_TOPIC, b"\0"].concat();
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
        };
        Runner::task(&name, core, make)
            .and_then(|t| t.join())
            .map_err(|e| EngineError::Config(format!("shard {k} io_core: {e}")))?
    }

    /// Ask every thread to stop (Ctrl-C); `join` then reports what was done.
    pub fn stop_flag(&self) -> StopFlag {
        self.stop.clone()
    }

    /// Counters of every agent of this engine, now.
    pub fn agent_stats(&self) -> Vec<AgentStats> {
        let readers = self.readers.iter().map(|h| h.stats());
        let workers = self.workers.iter().map(|h| h.stats());
        readers.chain(workers).chain(self.collector.iter().map(|h| h.stats())).collect()
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
        let mut agents = Vec::new();
        for h in self.readers.drain(..) {
            let (role, counters) = (h.role().to_string(), h.counters().clone());
            if let Err(e) = h.join() {
                first_err = first_err.or(Some(EngineError::Agent(e)));
            }
            agents.push(counters.snapshot(&role));
        }
        for h in self.workers.drain(..) {
            let (role, counters) = (h.role().to_string(), h.counters().clone());
            if let Err(e) = h.join() {
                first_err = first_err.or(Some(EngineError::Agent(e)));
            }
            agents.push(counters.snapshot(&role));
        }
        let collected = match self.collector.take() {
            Some(h) => {
                let (role, counters) = (h.role().to_string(), h.counters().clone());
                let c = h.join().map(Collector::into_collected).unwrap_or_default();
                agents.push(counters.snapshot(&role));
                c
            }
            None => Collected::default(),
        };
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(self.report(collected, interrupted, agents))
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

    fn report(&self, collected: Collected, interrupted: bool, agents: Vec<AgentStats>) -> RunReport {
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
        for c in shards.iter() {
            for (reason, n) in bad_frames_of(c) {
                *bad_frames.entry(reason).or_insert(0) += n;
            }
        }
        let secs = self.active_window().as_secs_f64().max(1e-9);
        let bytes: u64 = self.worker_counters.iter().map(|c| c.handled_bytes.load(Relaxed)).sum();
        let (shard_reports, threads) = self.accounts(&agents, delivered);
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
            agents,
            shards: shard_reports,
            threads,
        }
    }

    /// Per shard and per thread accounts, and each shard's projected ceiling.
    fn accounts(&self, agents: &[AgentStats], delivered: u64) -> (Vec<ShardReport>, Vec<ThreadAccount>) {
        let wall_ns = self.start.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
        let account = |a: &AgentStats, msgs: u64| ThreadAccount::new(&a.role, msgs, a.cpu_ns, a.wall_ns, a.blocked_ns);
        let mut threads = Vec::new();
        let mut shard_threads = Vec::new();
        for (k, c) in self.shard_counters.iter().enumerate() {
            let received = c.received.load(Relaxed);
            let tids = self.io_tids.get(k).filter(|t| !t.is_empty());
            let io = tids.map(|t| t.iter().filter_map(|&tid| crate::clock::task_cpu_ns(tid)).sum::<u64>());
            let io = io.map(|cpu| ThreadAccount::new(&format!("shard{k}-io"), received, cpu, wall_ns, 0));
            // Messages from the shard's own counters: the runner's `work`
            // misses the last round of an agent that finishes in it.
            let reader = agents.iter().find(|a| a.role == format!("shard{k}-reader")).map(|a| account(a, received));
            let mine: Vec<ThreadAccount> = io.into_iter().chain(reader).collect();
            threads.extend(mine.iter().cloned());
            shard_threads.push(mine);
        }
        let workers: Vec<ThreadAccount> = agents
            .iter()
            .filter_map(|a| {
                let w: usize = a.role.strip_prefix("worker")?.parse().ok()?;
                Some(account(a, self.worker_counters.get(w)?.handled.load(Relaxed)))
            })
            .collect();
        threads.extend(workers.iter().cloned());
        threads.extend(agents.iter().filter(|a| a.role == "metrics").map(|a| account(a, delivered)));
        let shards = self
            .shard_counters
            .iter()
            .zip(&self.expect_eos)
            .zip(&shard_threads)
            .enumerate()
            .map(|(k, ((c, &expect), mine))| {
                let msgs = c.forwarded.load(Relaxed);
                let eos = c.eos_sessions.load(Relaxed);
                let sent = (eos > 0).then(|| c.eos_sent.load(Relaxed));
                let complete = expect > 0 && eos >= expect && c.full_subscription.load(Relaxed);
                ShardReport {
                    shard: k,
                    received: c.received.load(Relaxed),
                    msgs,
                    bytes: c.forwarded_bytes.load(Relaxed),
                    sent,
                    lost: sent.filter(|_| complete).map(|s| s.saturating_sub(msgs)),
                    gaps: c.gaps.load(Relaxed),
                    duplicates: c.duplicates.load(Relaxed),
                    restarts: c.restarts.load(Relaxed),
                    bad_frames: bad_frames_of(c),
                    silences: c.silences.load(Relaxed),
                    longest_silence_ms: c.longest_silence_ns.load(Relaxed) as f64 / 1e6,
                    lag_last_ms: c.last_lag_ns.load(Relaxed) as f64 / 1e6,
                    lag_max_ms: c.max_lag_ns.load(Relaxed) as f64 / 1e6,
                    ceiling: Ceiling::of(mine.iter().chain(&workers)),
                }
            })
            .collect();
        (shards, threads)
    }
}

/// A shard's malformed or rejected frames, by reason.
fn bad_frames_of(c: &ShardCounters) -> std::collections::BTreeMap<String, u64> {
    let mut m: std::collections::BTreeMap<String, u64> =
        DROP_REASON_NAMES.iter().enumerate().map(|(r, name)| (name.to_string(), c.bad[r].load(Relaxed))).collect();
    m.insert("implausible_sequence".into(), c.implausible.load(Relaxed));
    m.insert("over_limit".into(), c.over_limit.load(Relaxed));
    m
}

impl Drop for Engine {
    /// An engine dropped without `join` (an error path) stops its threads.
    fn drop(&mut self) {
        if self.readers.is_empty() && self.workers.is_empty() {
            return;
        }
        self.stop.stop();
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        // The collector ends by itself once every worker's sender is gone.
    }
}
