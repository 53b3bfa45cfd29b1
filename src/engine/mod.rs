//! The Black Box engine (the guide's high-speed subscriber): per shard, a
//! ZeroMQ context whose I/O thread is pinned to the shard's I/O core and a
//! SUB reader agent pinned to its reader core; readers fan out over inproc
//! PUSH/PULL to pinned worker agents; workers ship latency histograms to a
//! metrics collector over a crossbeam channel. With the `inline` hand-off
//! (one worker per shard; Aeron's shared threading mode) each reader runs its
//! shard's [`worker::WorkerCore`] itself and there are no worker threads.
//!
//! ```text
//! shard k: ctx k (I/O thread on io_core) ── SUB ── shardK-reader ──┐ inproc PUSH (batches)
//!                                                                   ├──► workerN: PULL → WorkerCore (Handler → histograms) ──► metrics
//! inline:  ctx k (I/O thread on io_core) ── SUB ── shardK-reader: checks → WorkerCore (Handler → histograms) ──────────────► metrics
//! ```

pub mod batch;
pub mod book;
pub mod handler;
pub mod reader;
pub mod sequence;
pub mod worker;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::{
    AgentCounters, AgentError, AgentHandle, AgentStats, IdleStrategy, IntervalMarks, RunSpec, Runner, StopFlag,
};
use crate::link::{LinkBoard, LinkWatch};
use crate::metrics::collector::{Collected, Collector, CollectorOutputs, IntervalLog, SharedLatency, WorkerReport};
use crate::metrics::http::MetricsServer;
use crate::metrics::prom::{EngineLive, HandlerRefused, ShardLive};
use crate::metrics::settings::{Level, LogLevel, Settings};
use crate::metrics::store::{StoreAgent, StoreInputs};
use crate::metrics::{Ceiling, OutputsConfig, RunReport, SequenceCounts, ShardReport, StageHistograms, ThreadAccount};
use crate::security::{ClientKeys, ServerAccess, ZapCounters, ZapService};
use crate::snail::monitor::MonitorAgent;
use crate::snail::{Guard, Scream, Site, SnailBoard, SnailConfig};
use crate::wire::DROP_REASON_NAMES;
use handler::{HandlerSpec, REFUSAL_REASONS};
use reader::{EndWait, HandOff, ReaderAgent, ReaderConfig, Routing, ShardCounters};
use worker::{MetricsLink, WorkerAgent, WorkerCore, WorkerCounters};

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
    /// The shortest and longest metrics interval (flag, profile and live setting alike).
    pub const METRICS_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=3_600_000;
    /// A publisher of which nothing (no data, no heartbeat, no end of stream) was heard for
    /// this long is forgotten as vanished (`--forget-silent-after`, profile
    /// `forget_silent_after_ms`; 0: never): 5 minutes. A live publisher heartbeats after 1 s
    /// without data, and the snail calls a shard silent (STOP) after 5 s: 5 minutes is three
    /// hundred heartbeats missed, long past any silence said, and long enough for a link to
    /// come back (a session heard again after it is taken up where it was, not lost).
    pub const FORGET_SILENT_AFTER_MS: u64 = 300_000;
    /// The shortest bound `--forget-silent-after` takes (besides 0, never): twice the second a
    /// live publisher waits without data before it heartbeats, and twice the pause of a reader
    /// after which silence is judged from its resumption (`sequence::READER_PAUSE_NS`). A
    /// shorter one would forget quiet live publishers between their heartbeats, and publishers
    /// whose frames wait unread behind a shorter pause.
    pub const FORGET_SILENT_AFTER_MIN_MS: u64 = 2_000;

    /// Why `ms` is no bound for forgetting a silent publisher (`--forget-silent-after`, profile
    /// `forget_silent_after_ms`), if it is not: 0 (never) or at least
    /// [`FORGET_SILENT_AFTER_MIN_MS`].
    pub fn forget_silent_after_problem(ms: u64) -> Option<String> {
        (ms != 0 && ms < FORGET_SILENT_AFTER_MIN_MS).then(|| {
            format!(
                "{} is too short: a live publisher heartbeats after 1s without data, so a bound under {} \
                 would forget quiet ones between their heartbeats; give {} or more, or off (never)",
                crate::diag::human_ms(ms),
                crate::diag::human_ms(FORGET_SILENT_AFTER_MIN_MS),
                crate::diag::human_ms(FORGET_SILENT_AFTER_MIN_MS)
            )
        })
    }
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
    /// A snail croaked (policy `croak`): the engine stopped; the report of
    /// what it did up to then comes with the scream.
    #[error("{}", .0.scream)]
    Croaked(Box<Croaked>),
}

/// What a croaking engine leaves: the scream and the report.
#[derive(Debug)]
pub struct Croaked {
    pub scream: Scream,
    pub report: RunReport,
}

/// One shard: where to connect (or bind) and what to subscribe.
#[derive(Debug, Clone, Default)]
pub struct ShardConfig {
    /// Publisher endpoints to connect (with a NIC source prefix already applied).
    pub endpoints: Vec<String>,
    /// Endpoints the shard's SUB binds, for publishers that connect to it. The publisher
    /// connections accepted there are counted, and each that ends is said (libzmq drops one
    /// with a message over `max_msg_bytes` and names no cause).
    pub binds: Vec<String>,
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
    /// (0: run until stopped; None: one per endpoint, and one from every publisher session it
    /// saw, and on a shard that binds one per publisher connected: [`reader::EndWait`]).
    pub expect_eos_per_shard: Option<usize>,
    /// A publisher of which nothing was heard for this long is forgotten as vanished (zero:
    /// never; [`sequence::SequenceTracker::sweep`]).
    pub forget_silent_after: Duration,
    /// Lag and silence checks and what their verdicts do.
    pub snail: SnailConfig,
    /// Endpoint to bind the monitor PUB on (screams and state; None: no monitor).
    pub monitor: Option<String>,
    /// Who may subscribe to the monitor PUB (open by default).
    pub monitor_access: ServerAccess,
    /// CURVE keys every shard's SUB presents to its publishers (None: plain).
    pub feed_keys: Option<ClientKeys>,
    /// TCP keepalive on every shard's SUB.
    pub keepalive: Keepalive,
    /// The engine's name in its metrics and status (default `HOST-PID`).
    pub engine_id: Option<String>,
    /// Interval log, spectrum, `/metrics`.
    pub outputs: OutputsConfig,
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
            forget_silent_after: Duration::from_millis(defaults::FORGET_SILENT_AFTER_MS),
            snail: SnailConfig::default(),
            monitor: None,
            monitor_access: ServerAccess::default(),
            feed_keys: None,
            keepalive: Keepalive::default(),
            engine_id: None,
            outputs: OutputsConfig::default(),
        }
    }
}

/// The engine's live outputs: its id, the shared latency and interval, the `/metrics` server.
struct LiveOutputs {
    engine_id: String,
    /// The metrics interval, changeable while running.
    metrics_interval_ns: Arc<AtomicU64>,
    latency: SharedLatency,
    /// The engine's log level (a live setting).
    log: Arc<LogLevel>,
    /// The `/metrics` server, stopped by its own flag once the engine is joined.
    metrics_http: Option<(AgentHandle<MetricsServer>, StopFlag, std::net::SocketAddr)>,
    /// The status agent (clone store), stopped the same way, and where it is told how the
    /// engine ended (a croak, an error) before it stops.
    store: Option<(AgentHandle<StoreAgent>, StopFlag, Arc<std::sync::OnceLock<String>>)>,
    /// Its links to the store when it stopped, for the report.
    store_links: Vec<crate::link::LinkStats>,
    /// Where the status agent's clone client publishes its links to the store while it runs
    /// (set when the agent starts), for `/metrics` and the status.
    store_boards: Arc<std::sync::OnceLock<Vec<LinkBoard>>>,
}

impl LiveOutputs {
    /// Stop and join the `/metrics` server and the status agent; `ended`: how the engine ended
    /// when not cleanly (a croak, an error), which its last status says (a clean end deletes it).
    fn stop(&mut self, ended: Option<String>) {
        if let Some((h, stop, _)) = self.metrics_http.take() {
            stop.stop();
            let _ = h.join();
        }
        if let Some((h, stop, how)) = self.store.take() {
            if let Some(ended) = ended {
                let _ = how.set(ended);
            }
            stop.stop();
            match h.join() {
                Ok(agent) => self.store_links = agent.links(),
                Err(e) => self.log.log(Level::Warn, format_args!("status agent: {e}")),
            }
        }
    }
}

/// TCP keepalive on the shards' SUBs (a profile's `[keepalive]`). A dead path (a NIC down or
/// gone, a cable pulled) sends no FIN: without keepalive the connection, and the link, stayed
/// `up` for ever. With it the kernel probes after `idle_s` without a packet, then every
/// `interval_s`, and `probes` unanswered ones end the connection (libzmq then says
/// DISCONNECTED and reconnects): by default a dead path is a lost link about 5 s after its last
/// packet. Longer settings ride out longer outages on the same connection (nothing is lost if
/// the path comes back before the kernel gives up); shorter ones say a dead path sooner. Whole
/// seconds: the kernel's unit for all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keepalive {
    /// False: no keepalive (a dead path then keeps its link `up` until a packet is sent on it).
    pub enabled: bool,
    /// Seconds without a packet before the first probe.
    pub idle_s: u32,
    /// Seconds between probes.
    pub interval_s: u32,
    /// Unanswered probes that end the connection.
    pub probes: u32,
}

impl Keepalive {
    /// The longest `idle_s` and `interval_s` Linux takes (`TCP_KEEPIDLE`, `TCP_KEEPINTVL`).
    pub const MAX_S: u32 = 32_767;
    /// The most `probes` Linux takes (`TCP_KEEPCNT`).
    pub const MAX_PROBES: u32 = 127;

    /// Each setting out of the kernel's range: the field and why.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let range = |v: u32, max: u32| {
            (1..=max).contains(&v).then_some(()).ok_or(format!("{v} is out of range: give 1 to {max}"))
        };
        [
            ("idle_s", range(self.idle_s, Self::MAX_S)),
            ("interval_s", range(self.interval_s, Self::MAX_S)),
            ("probes", range(self.probes, Self::MAX_PROBES)),
        ]
        .into_iter()
        .find_map(|(f, r)| r.err().map(|m| (f, m)))
    }

    /// Set on `sub` (before it connects or binds: libzmq applies them to each connection).
    fn apply(&self, sub: &zmq::Socket) -> Result<(), EngineError> {
        let zerr = |context: &str| {
            let context = context.to_string();
            move |source| EngineError::Zmq { context, source }
        };
        if !self.enabled {
            return sub.set_tcp_keepalive(0).map_err(zerr("setting TCP_KEEPALIVE"));
        }
        // In range ([`Keepalive::problem`]): the `as` casts keep the values.
        sub.set_tcp_keepalive(1).map_err(zerr("setting TCP_KEEPALIVE"))?;
        sub.set_tcp_keepalive_idle(self.idle_s as i32).map_err(zerr("setting TCP_KEEPALIVE_IDLE"))?;
        sub.set_tcp_keepalive_intvl(self.interval_s as i32).map_err(zerr("setting TCP_KEEPALIVE_INTVL"))?;
        sub.set_tcp_keepalive_cnt(self.probes as i32).map_err(zerr("setting TCP_KEEPALIVE_CNT"))
    }
}

impl Default for Keepalive {
    /// 2 s, then 3 probes 1 s apart: a dead path is a lost link in about 5 s.
    fn default() -> Self {
        Keepalive { enabled: true, idle_s: 2, interval_s: 1, probes: 3 }
    }
}

/// A running engine: its agents, their counters and the contexts they use.
pub struct Engine {
    stop: StopFlag,
    start: Instant,
    readers: Vec<AgentHandle<ReaderAgent>>,
    workers: Vec<AgentHandle<WorkerAgent>>,
    collector: Option<AgentHandle<Collector>>,
    /// What the engine publishes while it runs (boxed: the engine is moved around).
    live: Box<LiveOutputs>,
    shard_counters: Vec<Arc<ShardCounters>>,
    /// Each shard's watched links (its SUB's connect endpoints).
    link_boards: Vec<LinkBoard>,
    /// Each shard's bound endpoints, as bound (ports resolved).
    bound: Vec<Vec<String>>,
    worker_counters: Vec<Arc<WorkerCounters>>,
    /// The reasons the handler refuses under: the labels of its live refusal counts.
    handler_reasons: &'static [&'static str],
    /// The publisher sessions each shard must have heard to an end for its loss to be known
    /// ([`ends_needed`]).
    ends_needed: Vec<u64>,
    snail: Arc<SnailBoard>,
    /// The monitor PUB's agent and its bound endpoint.
    monitor: Option<Box<(AgentHandle<MonitorAgent>, String)>>,
    /// The monitor context's ZAP handler, when the monitor has access control
    /// (dropped before the contexts).
    monitor_zap: Option<ZapService>,
    /// The agents beside the data path, role and counters: the snail monitor and its ZAP
    /// handler, the `/metrics` server, the status agent and its clone client. Their last
    /// counters join the readers', workers' and collector's in the report's `agents`.
    side_agents: Vec<(String, Arc<AgentCounters>)>,
    /// Linux thread ids of each shard's libzmq threads (its I/O thread and
    /// its reaper, both named `shardK-io`), for their CPU time.
    io_tids: Vec<Vec<u32>>,
    // Contexts last: sockets are closed by their threads before these drop.
    _contexts: Vec<zmq::Context>,
}

/// A shard's context, its SUB, the SUB's link watch and its bound endpoints (ports resolved).
type ShardSocket = (zmq::Context, zmq::Socket, Option<LinkWatch>, Vec<String>);

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
        if cfg.shards.len() > usize::from(u16::MAX) {
            return Err(EngineError::Config(format!(
                "{} shards: at most {} are supported",
                cfg.shards.len(),
                u16::MAX
            )));
        }
        let inline = cfg.handoff == HandOff::Inline;
        if inline && cfg.worker_cores.len() != cfg.shards.len() {
            let why = inline_layout_error(cfg.shards.len(), cfg.worker_cores.len());
            return Err(EngineError::Config(format!("handoff: {why}")));
        }
        let engine_id = cfg.engine_id.clone().unwrap_or_else(default_engine_id);
        // The files were claimed (made, locked, emptied) by whoever owns the run, before it.
        let hlog = match &cfg.outputs.hlog {
            Some(claimed) => {
                let hlog_err = |e: &dyn std::fmt::Display| EngineError::Config(format!("{}: {e}", claimed.named()));
                let comment = format!(
                    "[mdsub engine {engine_id}: latency in ns per shard and stage, tags shardK.wire|queue|total, \
                     one histogram per tag every {} ms at the start (a live metrics_interval \
                     changes it; each line has its own interval)]",
                    cfg.metrics_interval.as_millis()
                );
                let f = crate::metrics::hlog_file::HlogFile::open(
                    claimed.clone(),
                    crate::clock::realtime_ns(),
                    comment,
                    cfg.outputs.hlog_rotation,
                )
                .map_err(|e| hlog_err(&e))?;
                Some(f)
            }
            None => None,
        };
        let metrics_interval_ns = Arc::new(AtomicU64::new(cfg.metrics_interval.as_nanos() as u64));
        let latency = SharedLatency::default();
        let id = ENGINE_ID.fetch_add(1, Relaxed);
        let one_shard = (cfg.shards.len() == 1).then_some(0);
        let sites = (0..cfg.shards.len())
            .map(|k| Site { role: format!("shard{k}-reader"), shard: Some(k) })
            // Inline, each reader is its shard's only site: it judges lag as it receives.
            .chain(
                (0..cfg.worker_cores.len())
                    .filter(|_| !inline)
                    .map(|w| Site { role: format!("worker{w}"), shard: one_shard }),
            )
            .collect();
        let board = SnailBoard::new(cfg.snail, sites);
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
            (0..cfg.worker_cores.len()).map(|_| crossbeam::channel::bounded::<Vec<StageHistograms>>(2)).unzip();
        // The collector ends by itself once every worker's sender is gone,
        // so it does not take the stop flag (the final reports still arrive).
        let outputs = CollectorOutputs {
            hlog,
            hgrm: cfg.outputs.hgrm.clone(),
            quiet_write_errors: cfg.outputs.quiet_write_errors,
        };
        // Made before the readers, so the collector's lines can read their gaps and sessions.
        let shard_counters: Vec<Arc<ShardCounters>> = cfg.shards.iter().map(|_| Arc::default()).collect();
        let log = Arc::<LogLevel>::default();
        let interval_log = IntervalLog {
            log: log.clone(),
            counts: Box::new({
                let shards = shard_counters.clone();
                move |out: &mut Vec<_>| {
                    out.clear();
                    out.extend(shards.iter().map(|c| c.loss()));
                }
            }),
        };
        // The agents `/metrics` and the status list, their busy share taken per interval.
        let marks = Arc::new(IntervalMarks::default());
        let collector = Runner::start(
            RunSpec::unpinned(IdleStrategy::Block { wait_us: 100_000 }),
            StopFlag::new(),
            Collector::new(rx, spare_txs, cfg.shards.len(), metrics_interval_ns.clone(), latency.clone(), outputs)
                .with_interval_log(interval_log)
                .with_interval_marks(marks.clone()),
        )?;
        // From here an early return drops `engine`, which stops and joins
        // whatever was already started.
        let mut engine = Engine {
            stop: stop.clone(),
            start: Instant::now(),
            readers: Vec::new(),
            workers: Vec::new(),
            collector: Some(collector),
            live: Box::new(LiveOutputs {
                engine_id,
                metrics_interval_ns: metrics_interval_ns.clone(),
                latency,
                log,
                metrics_http: None,
                store: None,
                store_links: Vec::new(),
                store_boards: Arc::default(),
            }),
            shard_counters: Vec::new(),
            link_boards: Vec::new(),
            bound: Vec::new(),
            worker_counters: Vec::new(),
            handler_reasons: cfg.handler.refusal_reasons(),
            ends_needed: Vec::new(),
            snail: board.clone(),
            monitor: None,
            monitor_zap: None,
            side_agents: Vec::new(),
            io_tids: Vec::new(),
            _contexts: vec![fanout.clone()],
        };
        let screams = match &cfg.monitor {
            Some(ep) => {
                let ctx = zmq::Context::new();
                let (tx, rx) = crossbeam::channel::bounded::<Scream>(1024);
                let every = Duration::from_millis(crate::snail::defaults::STATE_EVERY_MS);
                let zap = ZapService::start(&ctx, "snail-monitor", &cfg.monitor_access)?;
                engine.side_agents.extend(zap.agent_counters());
                engine.monitor_zap = Some(zap);
                let access = (&cfg.monitor_access, engine.monitor_zap.as_ref());
                let (agent, bound) = MonitorAgent::bind(&ctx, ep, access, rx, board.clone(), every)?;
                engine._contexts.push(ctx);
                // Like the collector, it ends by itself once every guard's sender is gone.
                let idle = IdleStrategy::Block { wait_us: 100_000 };
                let h = Runner::start(RunSpec::unpinned(idle), StopFlag::new(), agent)?;
                engine.side_agents.push((h.role().to_string(), h.counters().clone()));
                engine.monitor = Some(Box::new((h, bound)));
                Some(tx)
            }
            None => None,
        };
        let guard = |site: usize| Guard::new(board.clone(), site, screams.clone());
        let mut worker_endpoints = Vec::new();
        // Inline, worker w's core is run by shard w's reader (its configured core unused).
        let mut inline_cores = Vec::new();
        for ((w, core), spares) in cfg.worker_cores.iter().enumerate().zip(spare_rxs) {
            let counters = Arc::new(WorkerCounters::default());
            engine.worker_counters.push(counters.clone());
            let link = MetricsLink { reports: tx.clone(), spares, interval_ns: metrics_interval_ns.clone() };
            let n = cfg.shards.len();
            let guard = (!inline).then(|| guard(n + w));
            let wc = WorkerCore::new(w, n, cfg.handler.build(), link, counters, guard, crate::clock::Realtime);
            if inline {
                inline_cores.push(Some(wc));
                continue;
            }
            let endpoint = format!("inproc://mdsub{id}-worker{w}");
            // Built here, so its PULL is bound before any reader connects.
            let agent = WorkerAgent::new(&fanout, &endpoint, cfg.handoff_hwm_msgs, n, wc, stop.clone())?;
            worker_endpoints.push(endpoint);
            engine.workers.push(Runner::start(RunSpec { core: *core, idle: cfg.idle }, stop.clone(), agent)?);
        }
        drop(tx);

        for (k, shard) in cfg.shards.iter().enumerate() {
            let io_name = format!("shard{k}-io");
            let before = crate::clock::task_ids_named(&io_name);
            // One publisher per endpoint, bound or connected: at least (a bound one has as many as
            // connect to it, a connected one behind a proxy all the proxy's: the reader waits for
            // every session it saw, `EndWait`).
            let publishers = shard.endpoints.len() + shard.binds.len();
            let expect_eos = cfg.expect_eos_per_shard.unwrap_or(publishers);
            let eos_id = subscriber_id(k);
            let (ctx, sub, links, bound) = Self::make_shard_socket(
                k,
                shard,
                cfg.rcvhwm_msgs,
                cfg.max_msg_bytes,
                cfg.feed_keys.clone(),
                cfg.keepalive,
                (expect_eos > 0).then_some(eos_id),
            )?;
            engine.link_boards.push(links.as_ref().map(|w| w.board()).unwrap_or_default());
            engine.bound.push(bound);
            engine._contexts.push(ctx);
            // The threads libzmq just started, named after their creator.
            engine
                .io_tids
                .push(crate::clock::task_ids_named(&io_name).into_iter().filter(|t| !before.contains(t)).collect());
            engine.ends_needed.push(ends_needed(cfg.expect_eos_per_shard, shard.endpoints.len()));
            let counters = shard_counters[k].clone();
            engine.shard_counters.push(counters.clone());
            let rc = ReaderConfig {
                shard: k,
                sources: shard
                    .endpoints
                    .iter()
                    .filter_map(|e| crate::endpoint::tcp_parts(e).and_then(|(source, _)| source))
                    .map(|s| crate::endpoint::host_of(s).to_string())
                    .collect(),
                batch_max: cfg.batch_max.max(1),
                handoff: cfg.handoff,
                routing: cfg.routing,
                // Books are per instrument: a renamed one (a new topic) stays on its worker.
                by_instrument: cfg.handler == HandlerSpec::Book,
                worker_endpoints: worker_endpoints.clone(),
                expect_eos,
                eos_id,
                end_wait: EndWait::of_shard(cfg.expect_eos_per_shard, !shard.binds.is_empty()),
                forget_silent_after_ns: u64::try_from(cfg.forget_silent_after.as_nanos()).unwrap_or(u64::MAX),
                full_subscription: shard.subscribe.is_empty() || shard.subscribe.iter().any(|s| s.is_empty()),
                handoff_hwm_msgs: cfg.handoff_hwm_msgs,
            };
            let mut wc = inline_cores.get_mut(k).and_then(Option::take);
            if let Some(wc) = &mut wc {
                wc.serving(k);
            }
            let agent =
                ReaderAgent::new(rc, sub, &fanout, wc, counters, stop.clone())?.with_guard(guard(k)).with_links(links);
            let spec = RunSpec { core: shard.reader_core, idle: cfg.idle };
            engine.readers.push(Runner::start(spec, stop.clone(), agent)?);
        }
        drop(screams);
        let readers = engine.readers.iter().map(|h| h.counters());
        let workers = engine.workers.iter().map(|h| h.counters());
        for c in readers.chain(workers).chain(engine.collector.iter().map(|h| h.counters())) {
            marks.watch(c.clone());
        }
        if let Some(addr) = cfg.outputs.listen {
            engine.start_metrics_http(addr, cfg.outputs.metrics_access.clone())?;
        }
        engine.start = Instant::now();
        Ok(engine)
    }

    /// Serve `/metrics` on `addr` from an agent of its own (not on the data path).
    fn start_metrics_http(
        &mut self,
        addr: std::net::SocketAddr,
        access: crate::security::HttpAccess,
    ) -> Result<(), EngineError> {
        let live = self.live_source();
        let latency = self.live.latency.clone();
        let render = Box::new(move || {
            let l = live();
            match latency.lock() {
                Ok(lat) => crate::metrics::prom::render(&l, &lat),
                Err(_) => String::new(),
            }
        });
        let server = MetricsServer::bind(addr, render)
            .map_err(|e| EngineError::Config(format!("--metrics-listen {addr}: {e}")))?
            .with_access(access)
            .with_engine_id(&self.live.engine_id);
        let bound = server.local_addr().map_err(|e| EngineError::Config(format!("--metrics-listen {addr}: {e}")))?;
        let stop = StopFlag::new();
        let h = Runner::start(RunSpec::unpinned(IdleStrategy::Block { wait_us: 100_000 }), stop.clone(), server)?;
        self.side_agents.push((h.role().to_string(), h.counters().clone()));
        self.live.metrics_http = Some((h, stop, bound));
        Ok(())
    }

    /// Publish status in the clone store at `servers` (one, or a Binary Star
    /// pair) every metrics interval and apply `settings` from
    /// `/mdsub/config/<engine-id>/NAME` (see [`crate::metrics::store`]).
    pub fn start_store(&mut self, servers: Vec<String>, settings: Settings) -> Result<(), EngineError> {
        let inputs = StoreInputs {
            engine_id: self.live.engine_id.clone(),
            servers,
            live: Box::new(self.live_source()),
            latency: self.live.latency.clone(),
            interval_ns: self.live.metrics_interval_ns.clone(),
            log: self.live.log.clone(),
            settings,
            ended: Arc::default(),
        };
        let ended = inputs.ended.clone();
        let agent = StoreAgent::new(inputs).map_err(EngineError::Config)?;
        let _ = self.live.store_boards.set(agent.link_boards());
        let client = agent.client_counters();
        let stop = StopFlag::new();
        let h = Runner::start(RunSpec::unpinned(IdleStrategy::Block { wait_us: 100_000 }), stop.clone(), agent)?;
        self.side_agents.push((h.role().to_string(), h.counters().clone()));
        self.side_agents.extend(client);
        self.live.store = Some((h, stop, ended));
        Ok(())
    }

    /// The engine's log level (a live setting).
    pub fn log_level(&self) -> Arc<LogLevel> {
        self.live.log.clone()
    }

    /// The address `/metrics` is served on, if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.live.metrics_http.as_ref().map(|(_, _, a)| *a)
    }

    /// The engine's id in its metrics and status.
    pub fn engine_id(&self) -> &str {
        &self.live.engine_id
    }

    /// The metrics interval, shared with the collector (a live setting).
    pub fn metrics_interval_ns(&self) -> Arc<AtomicU64> {
        self.live.metrics_interval_ns.clone()
    }

    /// The latency the collector shares: cumulative and last interval, per shard.
    pub fn latency(&self) -> SharedLatency {
        self.live.latency.clone()
    }

    /// A function that reads the engine's live counters (for `/metrics` and
    /// status), cheap enough to call once per scrape or interval.
    pub fn live_source(&self) -> impl Fn() -> EngineLive + Send + 'static {
        let shards = self.shard_counters.clone();
        let links = self.link_boards.clone();
        let workers = self.worker_counters.clone();
        let mut agents: Vec<(String, Arc<AgentCounters>)> = Vec::new();
        agents.extend(self.readers.iter().map(|h| (h.role().to_string(), h.counters().clone())));
        agents.extend(self.workers.iter().map(|h| (h.role().to_string(), h.counters().clone())));
        agents.extend(self.collector.iter().map(|h| (h.role().to_string(), h.counters().clone())));
        let engine_id = self.live.engine_id.clone();
        let board = self.snail.clone();
        // Who runs each worker core's handler: its worker, or inline its shard's reader.
        let sites: Vec<String> = if self.workers.is_empty() {
            self.readers.iter().map(|h| h.role().to_string()).collect()
        } else {
            self.workers.iter().map(|h| h.role().to_string()).collect()
        };
        let reasons = self.handler_reasons;
        let monitor_zap = self.monitor_access_counters();
        let interval = self.live.metrics_interval_ns.clone();
        let store_boards = self.live.store_boards.clone();
        move || EngineLive {
            engine_id: engine_id.clone(),
            shards: shards.iter().zip(&links).map(|(c, l)| shard_live(c, l)).collect(),
            agents: agents.iter().map(|(r, c)| c.snapshot(r)).collect(),
            metrics_dropped: workers.iter().map(|c| c.metrics_dropped.load(Relaxed)).sum(),
            snail: board.report().sites,
            handler_refused: sites
                .iter()
                .zip(&workers)
                .map(|(site, c)| HandlerRefused { agent: site.clone(), counts: refused_of(c, reasons) })
                .collect(),
            monitor_refused: monitor_zap.as_ref().map(|c| c.every_reason()),
            monitor_ledger_forgotten: monitor_zap.as_ref().map(|c| c.ledger_forgotten.load(Relaxed)),
            settings: Some({
                let snail = board.current();
                crate::metrics::prom::SettingsLive {
                    snail_policy: snail.policy,
                    snail_max_lag_ns: snail.max_lag_ns,
                    snail_grace_ns: snail.grace_ns,
                    metrics_interval_ns: interval.load(Relaxed),
                }
            }),
            store_links: store_boards.get().into_iter().flatten().flat_map(LinkBoard::snapshot).collect(),
        }
    }

    /// Make shard `k`'s context and SUB socket on a thread pinned to the
    /// shard's I/O core: libzmq starts the context's I/O thread with the first
    /// socket, and the thread inherits the creator's CPU mask (and its name,
    /// so the shard's I/O thread shows as `shardK-io` in `top -H`). A shard that ends at
    /// ends of stream (`awaits_eos`: its subscriber id) subscribes
    /// [`wire::AWAITS_EOS`](crate::wire::AWAITS_EOS) too, bare and naming it
    /// ([`wire::awaits_eos_as`](crate::wire::awaits_eos_as)): its reader confirms each end of
    /// stream it counts ([`wire::TOOK_EOS`](crate::wire::TOOK_EOS)), which its publishers wait for.
    fn make_shard_socket(
        k: usize,
        shard: &ShardConfig,
        rcvhwm: i32,
        max_msg_bytes: i64,
        keys: Option<ClientKeys>,
        keepalive: Keepalive,
        awaits_eos: Option<u64>,
    ) -> Result<ShardSocket, EngineError> {
        let shard = shard.clone();
        let name = format!("shard{k}-io");
        let core = shard.io_core;
        let make = move || -> Result<ShardSocket, EngineError> {
            let zerr = |context: String| move |source| EngineError::Zmq { context, source };
            let ctx = zmq::Context::new();
            ctx.set_io_threads(1).map_err(zerr("configuring the shard context".into()))?;
            let mut sub = ctx.socket(zmq::SUB).map_err(zerr("creating the SUB".into()))?;
            sub.set_rcvhwm(rcvhwm).map_err(zerr("setting RCVHWM".into()))?;
            sub.set_maxmsgsize(max_msg_bytes).map_err(zerr("setting MAXMSGSIZE".into()))?;
            sub.set_linger(0).map_err(zerr("setting LINGER".into()))?;
            // A dead path sends no FIN: keepalive ends its connection ([`Keepalive`]).
            keepalive.apply(&sub)?;
            ClientKeys::apply_if(keys.as_ref(), &sub).map_err(zerr("setting CURVE keys".into()))?;
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
            if let Some(id) = awaits_eos {
                // Bare for an older publisher; named for one that counts each subscriber once
                // across its connections (a reconnect beside a connection dead without a close).
                sub.set_subscribe(crate::wire::AWAITS_EOS)
                    .and_then(|()| sub.set_subscribe(&crate::wire::awaits_eos_as(id)))
                    .map_err(zerr("subscribing the end-of-stream wait".into()))?;
            }
            // Watched before binding and connecting, so the first connect is seen too. A shard
            // that binds is watched for the publisher connections it accepts, each end said.
            let name = format!("shard{k}");
            let mut links = if shard.binds.is_empty() {
                LinkWatch::attach(&ctx, &mut sub, &name, &shard.endpoints)
            } else {
                let head = format!("{name}: a publisher's connection ended");
                LinkWatch::attach_always(&ctx, &mut sub, &name, &shard.endpoints)
                    .map(|w| Some(w.saying_publisher_ends(head, "max_msg_bytes", max_msg_bytes)))
            }
            .map_err(zerr("starting the link monitor".into()))?;
            let mut bound = Vec::with_capacity(shard.binds.len());
            for ep in &shard.binds {
                bound.push(crate::zmqx::bind_resolved(&sub, ep).map_err(|e| zerr(crate::zmqx::binding(ep, e))(e))?);
            }
            // No publisher at a bound endpoint 5 s on is said, as a connect that is not up is.
            if let Some(w) = links.as_mut() {
                w.awaiting_publishers(&bound);
            }
            for ep in &shard.endpoints {
                sub.connect(ep).map_err(zerr(format!("connecting to {ep}")))?;
            }
            Ok((ctx, sub, links, bound))
        };
        Runner::task(&name, core, make)
            .and_then(|t| t.join())
            .map_err(|e| EngineError::Config(format!("shard {k} io_core: {e}")))?
    }

    /// Each shard's bound endpoints, as bound (ports resolved; empty for a shard that only connects).
    pub fn shard_binds(&self) -> &[Vec<String>] {
        &self.bound
    }

    /// The monitor PUB's endpoint as bound (port resolved), if there is one.
    pub fn monitor_endpoint(&self) -> Option<&str> {
        self.monitor.as_ref().map(|m| m.1.as_str())
    }

    /// What the monitor PUB's ZAP handler has decided, and the subscribers libzmq refused in
    /// their handshake (None: no monitor).
    pub fn monitor_access_counters(&self) -> Option<Arc<ZapCounters>> {
        self.monitor_zap.as_ref().map(ZapService::counters)
    }

    /// The snail's live verdicts and counters of every reader and worker.
    pub fn snail(&self) -> &Arc<SnailBoard> {
        &self.snail
    }

    /// Ask every thread to stop (Ctrl-C); `join` then reports what was done.
    pub fn stop_flag(&self) -> StopFlag {
        self.stop.clone()
    }

    /// Counters of every agent of this engine, now: readers, workers, the collector and the
    /// agents beside the data path (snail monitor and its ZAP handler, `/metrics` server, status
    /// agent and its clone client).
    pub fn agent_stats(&self) -> Vec<AgentStats> {
        let readers = self.readers.iter().map(|h| h.stats());
        let workers = self.workers.iter().map(|h| h.stats());
        let side = self.side_agents.iter().map(|(role, c)| c.snapshot(role));
        readers.chain(workers).chain(self.collector.iter().map(|h| h.stats())).chain(side).collect()
    }

    /// True once every reader has finished (end of stream on every shard).
    pub fn readers_finished(&self) -> bool {
        self.readers.iter().all(|h| h.is_finished())
    }

    /// True once every reader and every worker has finished: the end of stream on every shard
    /// and every message handed off before it handled (the workers' backlog may outlast the
    /// readers by any time a slow handler takes).
    pub fn finished(&self) -> bool {
        self.readers_finished() && self.workers.iter().all(|h| h.is_finished())
    }

    /// Hand-off buffers the shards' readers made so far (the batches they
    /// had in flight at most; see [`reader::ShardCounters::handoff_buffers`]).
    pub fn handoff_buffers(&self) -> u64 {
        self.shard_counters.iter().map(|c| c.handoff_buffers.load(Relaxed)).sum()
    }

    /// Of those, idle ones the readers freed again (none was needed for
    /// [`reader::IDLE_BUFFERS_WINDOW_NS`]; see [`reader::ShardCounters::handoff_buffers_freed`]).
    pub fn handoff_buffers_freed(&self) -> u64 {
        self.shard_counters.iter().map(|c| c.handoff_buffers_freed.load(Relaxed)).sum()
    }

    /// Messages delivered to handlers so far.
    pub fn delivered(&self) -> u64 {
        self.worker_counters.iter().map(|c| c.handled.load(Relaxed)).sum()
    }

    /// Wait for the end of stream on every shard and for the workers to handle what was handed
    /// off before it, at most `timeout` (then stop the engine), join every thread and build the
    /// report. The wait, and a stop request, cover the workers' backlog after the readers saw
    /// the end of stream too.
    pub fn join(self, timeout: Option<Duration>) -> Result<RunReport, EngineError> {
        self.join_watching(timeout, &mut |_| {})
    }

    /// [`Engine::join`], calling `watch` with the running engine every 5 ms of the wait (a
    /// status line reads its counters; `watch` keeps its own pace).
    pub fn join_watching(
        mut self,
        timeout: Option<Duration>,
        watch: &mut dyn FnMut(&Engine),
    ) -> Result<RunReport, EngineError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut timed_out = false;
        // Until the workers are done too: a wait that ended with the readers left a slow
        // handler's backlog to run past the deadline and deaf to Ctrl-C, unmarked.
        while !self.finished() && !self.stop.is_stopped() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                timed_out = true;
                break;
            }
            watch(&self);
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
        // Every guard is gone with its agent: the monitor sends the last state and ends.
        if let Some(m) = self.monitor.take() {
            let _ = m.0.join();
        }
        // Its PUB closed with it: its ZAP handler has nothing more to answer.
        if let Some(z) = self.monitor_zap.as_mut() {
            z.stop();
        }
        // A croak stops the engine through the stop flag too; that is the croak, not an interruption.
        let croak = self.snail.croak();
        // The status agent's clone client ends with it; its last status says how the engine
        // ended when it was no clean end.
        // A run that ends cleanly but did not do its job (the command then exits 1) is no clean
        // end either: its last status says why, by the words its exit line says.
        let time_limit = interrupted && timeout.is_some() && timed_out;
        let failed = || {
            let links: Vec<(String, Vec<crate::link::LinkStats>)> = (self.link_boards.iter().enumerate())
                .map(|(k, b)| (crate::metrics::shard_name(k), b.snapshot()))
                .collect();
            let shards: Vec<(&str, &[crate::link::LinkStats])> =
                links.iter().map(|(k, l)| (k.as_str(), l.as_slice())).collect();
            outputs_failure(collected.files_incomplete())
                .or_else(|| links_failure(time_limit, self.delivered(), &shards))
        };
        let ended = match (&first_err, &croak) {
            (Some(e), _) => Some(format!("error: {e}")),
            (None, Some(scream)) => Some(format!("the snail croaked: {scream}")),
            (None, None) => failed().map(|why| format!("error: {why}")),
        };
        self.live.stop(ended);
        agents.extend(self.side_agents.iter().map(|(role, c)| c.snapshot(role)));
        if let Some(e) = first_err {
            return Err(e);
        }
        let waited = timeout.filter(|_| timed_out);
        let report = self.report(collected, interrupted && croak.is_none(), waited, agents);
        match croak {
            Some(scream) => Err(EngineError::Croaked(Box::new(Croaked { scream, report }))),
            None => Ok(report),
        }
    }

    /// From the first data message received to the last one handled (ns), if there is such a
    /// span.
    fn active_span_ns(&self) -> Option<u64> {
        let first = self.shard_counters.iter().map(|c| c.first_recv_ns.load(Relaxed)).filter(|&t| t > 0).min()?;
        let last = self.worker_counters.iter().map(|c| c.last_done_ns.load(Relaxed)).max()?;
        (last > first).then(|| last - first)
    }

    /// [`Engine::active_span_ns`]; the time since start if nothing arrived.
    fn active_window(&self) -> Duration {
        self.active_span_ns().map_or_else(|| self.start.elapsed(), Duration::from_nanos)
    }

    /// `waited`: the wait `join` was given, when it ran out before the end of stream.
    fn report(
        &self,
        collected: Collected,
        interrupted: bool,
        waited: Option<Duration>,
        agents: Vec<AgentStats>,
    ) -> RunReport {
        let stages = &collected.stages;
        let shards = &self.shard_counters;
        let sum = |f: &dyn Fn(&ShardCounters) -> u64| shards.iter().map(|c| f(c)).sum::<u64>();
        let delivered = self.delivered();
        let forwarded = sum(&|c| c.forwarded.load(Relaxed));
        let ends: Vec<ShardEnds> = shards.iter().zip(&self.ends_needed).map(|(c, &n)| ShardEnds::of(c, n)).collect();
        // What the publishers sent is known in part once a session ended somewhere (by its end
        // of stream, or counted to its last arrived message).
        let sent = ends.iter().any(|e| e.heard() > 0).then(|| sum(&|c| c.sent()));
        let unended = (sum(&|c| c.unended_sessions.load(Relaxed)), sum(&|c| c.unended_sent.load(Relaxed)));
        // Accepted but not handled: skipped by a worker's resting guard (policy `rest`: dropped on
        // purpose, so lost), or left when the engine stopped (its backlog; and a malformed hand-off,
        // a fault of mdsub's): `not_handled`, never lost, since the network delivered them.
        let rested: u64 = self.worker_counters.iter().map(|c| c.rested.load(Relaxed)).sum();
        let not_handled = forwarded.saturating_sub(delivered).saturating_sub(rested);
        // Per shard: what arrived beyond what its publishers said they sent (a wrong count).
        let beyond_sent = sum(&beyond_sent_of);
        let losses: Vec<Result<u64, LossUnknown>> = ends.iter().map(ShardEnds::loss).collect();
        let unheard: Vec<String> = (losses.iter().enumerate())
            .filter_map(|(k, l)| match l {
                Err(LossUnknown::Unheard { heard, needed }) => {
                    Some(unheard_words(&crate::metrics::shard_name(k), *heard, *needed, ends[k].forwarded))
                }
                _ => None,
            })
            .collect();
        let (lost, loss_basis) = if !unheard.is_empty() {
            let within =
                waited.map(|t| format!(" within the {} wait", crate::diag::human_duration_of(t))).unwrap_or_default();
            (None, format!("unknown: end of stream not seen on every shard{within} ({})", unheard.join("; ")))
        } else if losses.contains(&Err(LossUnknown::Filtered)) {
            (None, FILTERED_BASIS.to_string())
        } else if losses.iter().any(|l| matches!(l, Err(LossUnknown::BeyondSent(_)))) {
            (None, beyond_basis(sent.unwrap_or(0), beyond_sent, ends.iter().map(|e| e.eos).sum()))
        } else {
            // Per shard: what its publishers said they sent (or, for a session without an end of
            // stream, its last arrived sequence), less what arrived of it (accepted, or dropped
            // for order: late, not lost); plus what a resting worker skipped.
            let missing: u64 = losses.iter().map(|l| l.unwrap_or(0)).sum();
            let eos = ends.iter().map(|e| e.eos).sum();
            let basis = known_basis(eos, ends.iter().map(|e| e.unended).sum());
            let basis = match ends.iter().map(|e| e.over_limit).sum() {
                0 => basis,
                n => crate::metrics::over_limit_basis(&basis, n),
            };
            (Some(missing + forwarded.saturating_sub(delivered).min(rested)), basis)
        };
        let secs = self.active_window().as_secs_f64().max(1e-9);
        let bytes: u64 = self.worker_counters.iter().map(|c| c.handled_bytes.load(Relaxed)).sum();
        // n messages from the first's arrival to the last's handling span n − 1 intervals (the
        // baseline's rate is taken alike).
        let msgs_per_sec = crate::metrics::span_rate(delivered, self.active_span_ns().unwrap_or(0), secs);
        let mean_bytes = if delivered > 0 { bytes as f64 / delivered as f64 } else { 0.0 };
        let (shard_reports, threads) = self.accounts(&agents, delivered, &collected);
        // The run's counts are its shards'.
        let mut counts = SequenceCounts::default();
        for sh in &shard_reports {
            counts.add(&sh.counts);
        }
        RunReport {
            subscriber: "engine".into(),
            duration_s: secs,
            sent,
            unended_sessions: unended.0,
            unended_sent: unended.1,
            delivered,
            not_handled,
            lost,
            beyond_sent,
            over_limit_lost: lost.map_or(0, |_| sum(&|c| c.over_limit_data.load(Relaxed))),
            loss_basis,
            counts,
            msgs_per_sec,
            mb_per_sec: msgs_per_sec * mean_bytes / 1e6,
            latency: stages.summary(),
            interrupted,
            // The wait ran out (not a croak, which is not an interruption).
            time_limit: interrupted && waited.is_some(),
            metrics_dropped: self.worker_counters.iter().map(|c| c.metrics_dropped.load(Relaxed)).sum(),
            handoff_malformed: self.worker_counters.iter().map(|c| c.malformed.load(Relaxed)).sum(),
            monitor_refused: (self.monitor_access_counters().map(|c| c.by_reason()).unwrap_or_default().into_iter())
                .map(|(reason, n)| (reason.to_string(), n))
                .collect(),
            monitor_ledger_forgotten: self.monitor_access_counters().map_or(0, |c| c.ledger_forgotten.load(Relaxed)),
            handler: collected.handler,
            handler_summary: collected.handler_summary,
            agents,
            snail: Some(self.snail.report()),
            metrics_write_errors: collected.write_errors,
            metrics_write_errors_made_good: collected.write_errors_made_good,
            metrics_write_error: collected.first_write_error,
            shards: shard_reports,
            store_links: self.live.store_links.clone(),
            threads,
        }
    }
}

/// Why a run whose `--hlog`/`--hgrm` writes failed (`write_errors` of them, leaving a file
/// incomplete: not an `--hgrm` rewrite the final write made good) is no success, for its exit
/// status 1 and its last status in the store: the files are incomplete. None when none failed.
pub fn outputs_failure(write_errors: u64) -> Option<String> {
    (write_errors > 0).then(|| {
        format!(
            "{write_errors} write(s) to the --hlog/--hgrm files failed (the first is said above): they are incomplete"
        )
    })
}

/// Why an engine that ran to its time limit (`time_limit`) having delivered nothing while a link
/// of it never came up did not do its job (a key the publisher refuses, a wrong port), naming
/// each such link of `shards` (each shard's name and links) and what it met: for its exit status
/// 1 and its last status in the store. None otherwise: a stop by Ctrl-C or SIGTERM is a person's
/// (or a supervisor's) decision, and a bound endpoint has no link to judge.
pub fn links_failure(time_limit: bool, delivered: u64, shards: &[(&str, &[crate::link::LinkStats])]) -> Option<String> {
    if !time_limit || delivered > 0 {
        return None;
    }
    let never: Vec<String> = shards
        .iter()
        .flat_map(|(shard, links)| links.iter().filter(|l| l.connects == 0).map(move |l| (shard, l)))
        .map(|(shard, l)| {
            let met: Vec<String> = l.lost.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
            // The losses by reason, and the attempts they came from: a wrong key fails every
            // attempt libzmq makes, counted as one loss (`handshake_failed=1` alone, after `33
            // attempts so far` on its line, read as a contradiction).
            let met = if !met.is_empty() && l.retries > 0 {
                format!("lost: {}, over {} connection attempts", met.join(", "), l.retries)
            } else if !met.is_empty() {
                format!("lost: {}", met.join(", "))
            } else if let Some(why) = crate::host::unresolved(&l.endpoint) {
                why
            } else if l.retries == 0 {
                "no connection attempt ended".into()
            } else {
                format!("nothing answered {} connection attempts", l.retries)
            };
            format!("{shard} {} ({met})", l.endpoint)
        })
        .collect();
    (!never.is_empty()).then(|| format!("nothing delivered, and these links never came up: {}", never.join("; ")))
}

/// Why a layout cannot run `handoff = "inline"`, in one line naming the fix.
pub fn inline_layout_error(shards: usize, workers: usize) -> String {
    format!(
        "`inline` runs each shard's handler on its reader, so it needs exactly one worker per shard \
         ({shards} shard(s), {workers} worker(s)): give {shards} [[workers]] table(s) (--workers {shards}) \
         or use handoff = \"batch\""
    )
}

/// `HOST-PID`: unique among running engines on a network.
pub fn default_engine_id() -> String {
    let host = crate::host::name().unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", std::process::id())
}

/// One shard's live counters, read now.
fn shard_live(c: &ShardCounters, links: &LinkBoard) -> ShardLive {
    ShardLive {
        links: links.snapshot(),
        publisher_connects: c.publisher_connects.load(Relaxed),
        publisher_disconnects: c.publisher_disconnects.load(Relaxed),
        publisher_refused: c.publisher_refused.load(Relaxed),
        accept_failed: c.accept_failed.load(Relaxed),
        handshake_ledger_forgotten: c.handshake_ledger_forgotten.load(Relaxed),
        beyond_sent: beyond_sent_of(c),
        publishers_held: c.publishers_held.load(Relaxed),
        topics_held: c.topics_held.load(Relaxed),
        received: c.received.load(Relaxed),
        forwarded: c.forwarded.load(Relaxed),
        counts: counts_of(c),
    }
}

impl Engine {
    /// Per shard and per thread accounts, and each shard's projected ceiling.
    /// `collected.per_shard` gives each shard's delivered messages and latency.
    fn accounts(
        &self,
        agents: &[AgentStats],
        delivered: u64,
        collected: &Collected,
    ) -> (Vec<ShardReport>, Vec<ThreadAccount>) {
        let wall_ns = self.start.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
        let account = |a: &AgentStats, msgs: u64| ThreadAccount::new(&a.role, msgs, a.cpu_ns, a.wall_ns, a.blocked_ns);
        let mut threads = Vec::new();
        let mut shard_threads = Vec::new();
        for (k, c) in self.shard_counters.iter().enumerate() {
            let received = c.received.load(Relaxed);
            let tids = self.io_tids.get(k).filter(|t| !t.is_empty());
            let io = tids.map(|t| t.iter().filter_map(|&tid| crate::clock::task_cpu_ns(tid)).sum::<u64>());
            let faults =
                tids.map(|t| t.iter().filter_map(|&tid| crate::zmqx::heap::task_minor_faults(tid)).sum::<u64>());
            let io = io.map(|cpu| ThreadAccount {
                minor_faults: faults,
                ..ThreadAccount::new(&format!("shard{k}-io"), received, cpu, wall_ns, 0)
            });
            // Messages from the shard's own counters: the runner's `work`
            // misses the last round of an agent that finishes in it.
            let reader = agents.iter().find(|a| a.role == format!("shard{k}-reader")).map(|a| account(a, received));
            let mine: Vec<ThreadAccount> = io.into_iter().chain(reader).collect();
            threads.extend(mine.iter().cloned());
            shard_threads.push(mine);
        }
        let workers: Vec<(usize, ThreadAccount)> = agents
            .iter()
            .filter_map(|a| {
                let w: usize = a.role.strip_prefix("worker")?.parse().ok()?;
                Some((w, account(a, self.worker_counters.get(w)?.handled.load(Relaxed))))
            })
            .collect();
        threads.extend(workers.iter().map(|(_, t)| t.clone()));
        threads.extend(agents.iter().filter(|a| a.role == "metrics").map(|a| account(a, delivered)));
        let empty = StageHistograms::default();
        let handled = |k: usize| collected.per_shard.get(k).unwrap_or(&empty);
        // Worker w's share of shard k's messages: what it handled of them over what all did.
        let share = |w: usize, k: usize| {
            let of = |w: usize| collected.per_worker.get(w).and_then(|s| s.get(k)).copied().unwrap_or(0);
            let all: u64 = (0..collected.per_worker.len()).map(of).sum();
            if all == 0 {
                0.0
            } else {
                of(w) as f64 / all as f64
            }
        };
        let shards: Vec<ShardReport> = self
            .shard_counters
            .iter()
            .zip(&self.ends_needed)
            .zip(&shard_threads)
            .enumerate()
            .map(|(k, ((c, &needed), mine))| {
                let msgs = c.forwarded.load(Relaxed);
                let ends = ShardEnds::of(c, needed);
                let loss = ends.loss();
                ShardReport {
                    shard: crate::metrics::shard_name(k),
                    received: c.received.load(Relaxed),
                    msgs,
                    bytes: c.forwarded_bytes.load(Relaxed),
                    sent: (ends.heard() > 0).then(|| c.sent()),
                    lost: loss.ok(),
                    loss_basis: match loss {
                        Ok(_) => known_basis(ends.eos, ends.unended),
                        Err(LossUnknown::Unheard { heard, needed }) => {
                            format!("unknown: {}", unheard_words("it", heard, needed, msgs))
                        }
                        Err(LossUnknown::Filtered) => FILTERED_BASIS.to_string(),
                        Err(LossUnknown::BeyondSent(excess)) => beyond_basis(c.sent(), excess, ends.eos),
                    },
                    beyond_sent: beyond_sent_of(c),
                    counts: counts_of(c),
                    links: self.link_boards.get(k).map(|b| b.snapshot()).unwrap_or_default(),
                    publisher_connects: c.publisher_connects.load(Relaxed),
                    publisher_disconnects: c.publisher_disconnects.load(Relaxed),
                    publisher_refused: c.publisher_refused.load(Relaxed),
                    accept_failed: c.accept_failed.load(Relaxed),
                    handshake_ledger_forgotten: c.handshake_ledger_forgotten.load(Relaxed),
                    silences: c.silences.load(Relaxed),
                    longest_silence_ms: c.longest_silence_ns.load(Relaxed) as f64 / 1e6,
                    lag_last_ms: c.last_lag_ns.load(Relaxed) as f64 / 1e6,
                    lag_max_ms: c.max_lag_ns.load(Relaxed) as f64 / 1e6,
                    // The shard's own threads take each of its messages, a worker its share.
                    ceiling: Ceiling::of(
                        mine.iter().map(|t| (t, 1.0)).chain(workers.iter().map(|(w, t)| (t, share(*w, k)))),
                    ),
                    delivered: handled(k).count(),
                    delivered_bytes: handled(k).bytes,
                    latency: handled(k).summary(),
                }
            })
            .collect();
        (shards, threads)
    }
}

/// What a worker core's handler refused under each of `reasons`, as it last published it.
fn refused_of(c: &WorkerCounters, reasons: &[&'static str]) -> Vec<(&'static str, u64)> {
    reasons
        .iter()
        .filter_map(|r| Some((*r, c.refused.get(REFUSAL_REASONS.iter().position(|x| x == r)?)?.load(Relaxed))))
        .collect()
}

/// What arrived on a shard beyond what its publishers' ends of stream (and the last arrived
/// sequences of its sessions without one) say they sent, once a session was heard to an end and
/// where every topic is taken (through a filter, what was sent is not all for it),
/// as its reader counted it ([`reader::ShardCounters::beyond_sent`]).
fn beyond_sent_of(c: &ShardCounters) -> u64 {
    c.beyond_sent.load(Relaxed)
}

/// A shard's sequence and frame counts, as its reader last published them.
fn counts_of(c: &ShardCounters) -> SequenceCounts {
    let mut bad_frames: std::collections::BTreeMap<String, u64> =
        DROP_REASON_NAMES.iter().enumerate().map(|(r, name)| (name.to_string(), c.bad[r].load(Relaxed))).collect();
    bad_frames.insert("implausible_sequence".into(), c.implausible.load(Relaxed));
    bad_frames.insert("over_limit_publishers".into(), c.over_limit_publishers.load(Relaxed));
    bad_frames.insert("over_limit_topics".into(), c.over_limit_topics.load(Relaxed));
    bad_frames.insert("after_end".into(), c.after_end.load(Relaxed));
    SequenceCounts {
        vanished: c.vanished.load(Relaxed),
        vanished_back: c.vanished_back.load(Relaxed),
        before_first: c.before_first.load(Relaxed),
        gaps: c.gaps.load(Relaxed),
        duplicates: c.duplicates.load(Relaxed),
        reordered: c.reordered.load(Relaxed),
        restarts: c.restarts.load(Relaxed),
        id_conflicts: c.id_conflicts.load(Relaxed),
        bad_frames,
    }
}

impl Drop for Engine {
    /// An engine dropped without `join` (an error path) stops its threads.
    fn drop(&mut self) {
        // After `join` the status agent is stopped already: this is an error path's end.
        self.live.stop(Some("error: the engine was stopped before its run ended (its stderr says why)".into()));
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

/// The loss basis of a shard that takes only some topics: what was sent is not all for it.
const FILTERED_BASIS: &str = "unknown: topics are filtered (gaps are counted by topic sequence)";

/// Shard `k`'s subscriber id in the end-of-stream wait ([`crate::wire::awaits_eos_as`]): drawn
/// from the clock, the process and the shard, so two engines (or shards) on one publisher are
/// told apart; the same across the shard's reconnects (its SUB holds the subscription).
fn subscriber_id(k: usize) -> u64 {
    let pid = u64::from(std::process::id());
    let seed = [crate::clock::realtime_ns().to_le_bytes(), pid.to_le_bytes(), (k as u64).to_le_bytes()].concat();
    crate::wire::fnv1a(crate::wire::FNV_OFFSET, &seed)
}

/// The publisher sessions a shard must have heard to an end (by its end of stream, or counted
/// to its last arrived message when the shard's reading ended without one) for its loss to be
/// known: `expect_eos` of them when `--expect-eos N` (N > 0) says how many there are, else one
/// per endpoint it `connects` to (one publisher each), and at least one. A bound endpoint needs
/// none of its own: as many publishers connect to it as do, none included, and each session of
/// theirs it saw ended one way or the other by the end.
fn ends_needed(expect_eos: Option<usize>, connects: usize) -> u64 {
    match expect_eos {
        Some(n) if n > 0 => n as u64,
        _ => connects.max(1) as u64,
    }
}

/// What a shard's loss rests on, from its counters once its reading ended (socket-free: the
/// rule is [`ShardEnds::loss`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ShardEnds {
    /// Publisher sessions whose end of stream came.
    eos: u64,
    /// Sessions counted without one, to their last arrived message: ended by a restart of
    /// their publisher, or still open when the shard's reading ended (Ctrl-C, `--max-duration`,
    /// a snail stop; [`sequence::SequenceTracker::close`]).
    unended: u64,
    /// Sessions it must have heard to an end ([`ends_needed`]).
    needed: u64,
    /// It takes every topic.
    full: bool,
    /// What its publishers sent by those counts, and what arrived of it: accepted, or dropped
    /// for order (late, not lost).
    sent: u64,
    forwarded: u64,
    reordered: u64,
    /// Data frames of publishers over the reader's limit, dropped unjudged with their ends of
    /// stream: no count covers them, so they are added to the loss (a floor).
    over_limit: u64,
}

/// Why a shard's loss is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LossUnknown {
    /// Fewer sessions heard to an end than it needs: a publisher not heard from may have sent
    /// what never arrived.
    Unheard { heard: u64, needed: u64 },
    /// Through a topic filter, what was sent is not all for the shard.
    Filtered,
    /// This many more arrived than the counts say were sent.
    BeyondSent(u64),
}

impl ShardEnds {
    fn of(c: &ShardCounters, needed: u64) -> Self {
        ShardEnds {
            eos: c.eos_sessions.load(Relaxed),
            unended: c.unended_sessions.load(Relaxed),
            needed,
            full: c.full_subscription.load(Relaxed),
            sent: c.sent(),
            forwarded: c.forwarded.load(Relaxed),
            reordered: c.reordered.load(Relaxed),
            over_limit: c.over_limit_data.load(Relaxed),
        }
    }

    /// Sessions heard to an end, by end of stream or counted without one.
    fn heard(&self) -> u64 {
        self.eos.saturating_add(self.unended)
    }

    /// The shard's loss: what was sent less what arrived of it, once it heard the sessions it
    /// needs to an end and takes every topic. A session without an end of stream counts to its
    /// last arrived message: the gaps before it are loss, what it sent after it is not known
    /// (so `sent` and the loss are floors then, and the basis says so).
    fn loss(&self) -> Result<u64, LossUnknown> {
        if self.heard() < self.needed {
            return Err(LossUnknown::Unheard { heard: self.heard(), needed: self.needed });
        }
        if !self.full {
            return Err(LossUnknown::Filtered);
        }
        crate::metrics::loss_of(self.sent, self.forwarded, self.reordered)
            .map(|lost| lost.saturating_add(self.over_limit))
            .map_err(LossUnknown::BeyondSent)
    }
}

/// `whom` heard fewer publisher sessions to an end than it needs, in words; `arrived`, the
/// messages it took (from a session in no count, when none was heard to an end).
fn unheard_words(whom: &str, heard: u64, needed: u64, arrived: u64) -> String {
    match (heard, arrived) {
        (0, 0) => format!("{whom} heard no publisher session to its end, of the {needed} it needs"),
        // A session without an end of stream counts to its last arrived message only when it
        // was seen from its first ([`sequence::SequenceTotals::unended_sessions`]).
        (0, _) => format!(
            "{whom} heard no publisher session to its end, of the {needed} it needs: {arrived} message(s) arrived \
             from a session seen only after it began (or in a cache's values), which only its end of stream counts"
        ),
        _ => format!("{whom} heard {heard} publisher session(s) to an end, of the {needed} it needs"),
    }
}

/// The basis of a loss unknown because `excess` more arrived than the counts say were `sent`:
/// a wrong count in an end of stream ([`crate::metrics::beyond_sent_basis`]), or, with no end of
/// stream among them (`eos` 0), a session in no count: one seen only after it began, or only in
/// a cache's values, is not counted without its end of stream.
fn beyond_basis(sent: u64, excess: u64, eos: u64) -> String {
    match eos {
        0 => format!(
            "unknown: the last arrived messages of the sessions without an end of stream say {sent} message(s) \
             were sent, but {excess} more than that arrived: a session seen only after it began is in no count"
        ),
        _ => crate::metrics::beyond_sent_basis(sent, excess),
    }
}

/// How a known loss was counted: from `eos` ends of stream, and `unended` sessions without
/// one counted to their last arrived message (what they sent after it is not known: `sent` and
/// `lost` are floors then).
fn known_basis(eos: u64, unended: u64) -> String {
    let counts = "end-of-stream counts";
    let floors = match unended {
        0 => return counts.to_string(),
        1 => "1 session without an end of stream counted to its last arrived message (sent after it: unknown)"
            .to_string(),
        n => format!(
            "{n} sessions without an end of stream counted to their last arrived messages (sent after them: unknown)"
        ),
    };
    match eos {
        0 => floors,
        _ => format!("{counts}; {floors}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{ends_needed, known_basis, LossUnknown, ShardEnds};

    /// A shard that takes every topic and heard `eos` ends of stream and `unended` sessions
    /// without one, of the `needed`; `sent` by those counts, `forwarded` of it arrived.
    fn shard(eos: u64, unended: u64, needed: u64, sent: u64, forwarded: u64) -> ShardEnds {
        ShardEnds { eos, unended, needed, full: true, sent, forwarded, reordered: 0, over_limit: 0 }
    }

    #[test]
    fn a_shard_needs_one_session_per_endpoint_it_connects_to_or_its_expect_eos() {
        assert_eq!(ends_needed(None, 1), 1);
        assert_eq!(ends_needed(None, 2), 2, "`--endpoint EP1,EP2`: a publisher each");
        assert_eq!(ends_needed(Some(0), 2), 2, "run until stopped: the same");
        assert_eq!(ends_needed(Some(3), 1), 3, "`--expect-eos 3` says how many there are");
        // A bound endpoint has as many publishers as connect to it, none included: a shard that
        // connects to one and binds another needs the connected one's session. Before, two (one
        // per endpoint, bound or connected): the bound one nobody used left the loss unknown.
        assert_eq!(ends_needed(None, 1), 1, "connect + bind");
        assert_eq!(ends_needed(None, 0), 1, "bind only: at least one session heard");
    }

    #[test]
    fn loss_is_known_once_every_shard_heard_the_sessions_it_needs() {
        // `--expect-eos 0` took no end of stream as enough, so loss was always "unknown".
        assert_eq!(shard(1, 0, 1, 10, 8).loss(), Ok(2));
        assert_eq!(shard(0, 0, 1, 0, 0).loss(), Err(LossUnknown::Unheard { heard: 0, needed: 1 }), "heard nothing");
        // Two publishers on one shard (`--endpoint EP1,EP2`): one not heard from at all.
        assert_eq!(shard(1, 0, 2, 10, 10).loss(), Err(LossUnknown::Unheard { heard: 1, needed: 2 }));
        assert_eq!(shard(2, 0, 2, 20, 19).loss(), Ok(1));
        let filtered = ShardEnds { full: false, ..shard(1, 0, 1, 10, 3) };
        assert_eq!(filtered.loss(), Err(LossUnknown::Filtered));
        assert_eq!(shard(1, 0, 1, 5, 10).loss(), Err(LossUnknown::BeyondSent(5)));
    }

    #[test]
    fn a_session_without_an_end_of_stream_counts_to_its_last_arrived_message() {
        // The publisher was killed mid-stream and the engine stopped: no end of stream at all,
        // its session closed as unended by its last arrived sequence (100), 98 arrived. Before,
        // `sent unknown`, `lost unknown: end of stream not seen on every shard`.
        assert_eq!(shard(0, 1, 1, 100, 98).loss(), Ok(2));
        // The second publisher of `EP1,EP2` still sending at the stop: it counts, to its last
        // arrived message, and cannot hide the first one's loss.
        assert_eq!(shard(1, 1, 2, 10 + 50, 9 + 50).loss(), Ok(1));
        assert_eq!(
            known_basis(0, 1),
            "1 session without an end of stream counted to its last arrived message (sent after it: unknown)"
        );
        assert_eq!(
            known_basis(2, 3),
            "end-of-stream counts; 3 sessions without an end of stream counted to their last arrived messages \
             (sent after them: unknown)"
        );
        assert_eq!(known_basis(2, 0), "end-of-stream counts");
    }
}
