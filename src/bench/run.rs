//! One measured run, as `mdsub demo` and `mdsub bench` make them: an
//! in-process publisher replays a feed into a subscriber (the engine or the
//! baseline) over TCP loopback, after a subscription handshake, and the
//! subscriber's report is returned with the replay's numbers. Both
//! subscribers time the same window: first frame received to last message
//! handled.

use std::time::Duration;

use crate::agent::{AgentHandle, RunSpec as AgentSpec, Runner, StopFlag};
use crate::bench::baseline::Baseline;
use crate::engine::handler::HandlerSpec;
use crate::engine::{Engine, EngineConfig};
use crate::metrics::RunReport;
use crate::replay::{Limits, Pacing, Publisher, PublisherConfig, ReplayStats, Source};
use crate::security::ClientKeys;

/// Which subscriber a run measures.
#[derive(Debug, Clone)]
pub enum Subscriber {
    Engine(Box<EngineConfig>),
    /// The plain SUB reader, running `handler` inline.
    Baseline {
        rcvhwm_msgs: i32,
        /// Most frames per drain round (the engine's `batch_max`, so both read the clock as often).
        batch_max: usize,
        handler: HandlerSpec,
        /// CURVE keys its SUB presents (None: plain).
        keys: Option<ClientKeys>,
    },
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub publisher: PublisherConfig,
    pub source: Source,
    pub pacing: Pacing,
    pub limits: Limits,
    pub subscriber: Subscriber,
    /// How long to wait for the subscriber to finish after the replay ends.
    pub drain_timeout: Duration,
}

/// A run's outcome.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub replay: ReplayStats,
    pub report: RunReport,
    /// CPU time of the publisher's libzmq I/O thread(s) (named `replay-io`), ns;
    /// its sending threads' is `replay.cpu_ns`.
    pub publisher_io_cpu_ns: u64,
}

/// The name of the in-process publisher's libzmq I/O thread(s).
pub const PUBLISHER_IO_THREAD: &str = "replay-io";

/// Run once. `progress(sent)` is called during the replay.
pub fn run_once(spec: &RunSpec, stop: &StopFlag, progress: &mut dyn FnMut(u64)) -> anyhow::Result<RunOutcome> {
    use anyhow::Context as _;
    // The publisher's context and sockets are made on a thread named
    // `replay-io`, so libzmq's I/O threads carry that name and their CPU
    // time can be read (one I/O thread per shard with a thread per shard).
    let before = crate::clock::task_ids_named(PUBLISHER_IO_THREAD);
    let cfg = spec.publisher.clone();
    let (ctx, mut publisher) = Runner::task(PUBLISHER_IO_THREAD, None, move || -> anyhow::Result<_> {
        let ctx = zmq::Context::new();
        if cfg.thread_per_shard {
            ctx.set_io_threads(cfg.endpoints.len().max(1) as i32)?;
        }
        let publisher = Publisher::bind(&ctx, &cfg)?;
        Ok((ctx, publisher))
    })?
    .join()?
    .context("starting the publisher")?;
    let io_tids: Vec<u32> =
        crate::clock::task_ids_named(PUBLISHER_IO_THREAD).into_iter().filter(|t| !before.contains(t)).collect();
    let endpoints = publisher.endpoints();
    // Start the subscriber, then wait for its subscriptions (the handshake).
    enum Running {
        Engine(Box<Engine>),
        Baseline(AgentHandle<Baseline>),
    }
    let sub_stop = stop.clone();
    let running = match &spec.subscriber {
        Subscriber::Engine(cfg) => {
            let mut cfg = (**cfg).clone();
            for (shard, ep) in cfg.shards.iter_mut().zip(&endpoints) {
                shard.endpoints = vec![ep.clone()];
            }
            Running::Engine(Box::new(Engine::start(&cfg, sub_stop).context("starting the engine")?))
        }
        Subscriber::Baseline { rcvhwm_msgs, batch_max, handler, keys } => {
            let limit = spec.limits.duration.unwrap_or(Duration::from_secs(3600))
                + spec.drain_timeout
                + Duration::from_secs(30);
            let b = Baseline::connect(&endpoints, *rcvhwm_msgs, keys.as_ref(), limit)
                .context("connecting the baseline subscriber")?
                .with_handler(*handler)
                .with_batch_max(*batch_max);
            let idle = crate::agent::IdleStrategy::default();
            Running::Baseline(Runner::start(AgentSpec::unpinned(idle), sub_stop, b).context("starting the baseline")?)
        }
    };
    // Ctrl-C (or SIGTERM) ends the wait at once with `ReplayError::Interrupted`.
    publisher.wait_for_subscribers_or_stop(1, Duration::from_secs(10), stop).context("waiting for the subscriber")?;
    // The publisher runs on a thread of its own (`replay`); this thread
    // passes its progress on to the caller.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (source, pacing, limits, pub_stop, counter) =
        (spec.source.clone(), spec.pacing, spec.limits, stop.clone(), sent.clone());
    let task = Runner::task("replay", None, move || {
        let mut tell = |n: u64| counter.store(n, std::sync::atomic::Ordering::Relaxed);
        let r = publisher.run(&source, pacing, limits, &pub_stop, &mut tell);
        // The publisher (its sockets) goes back to the caller, which keeps it until the
        // subscriber is done: closed here, its connections would end while the subscriber still
        // has a backlog to read, which the engine would report as a lost link.
        (publisher, r)
    })
    .context("starting the publisher")?;
    while !task.is_finished() {
        progress(sent.load(std::sync::atomic::Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(50));
    }
    progress(sent.load(std::sync::atomic::Ordering::Relaxed));
    let (publisher, replay) = task.join().context("running the publisher")?;
    let replay = replay.context("replaying")?;
    let publisher_io_cpu_ns = io_tids.iter().filter_map(|&t| crate::clock::task_cpu_ns(t)).sum();
    let report = match running {
        Running::Engine(e) => e.join(Some(spec.drain_timeout)).context("running the engine")?,
        Running::Baseline(h) => {
            let (role, counters) = (h.role().to_string(), h.counters().clone());
            let baseline = h.join().context("running the baseline")?;
            let mut report = baseline.report();
            let agent = counters.snapshot(&role);
            report.threads = baseline.threads(&agent);
            report.agents.push(agent);
            report
        }
    };
    drop(publisher);
    drop(ctx);
    Ok(RunOutcome { replay, report, publisher_io_cpu_ns })
}
