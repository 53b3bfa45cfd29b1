//! One measured run, as `mdsub demo` and `mdsub bench` make them: an
//! in-process publisher replays a feed into a subscriber (the engine or the
//! baseline) over TCP loopback, after a subscription handshake, and the
//! subscriber's report is returned with the replay's numbers. Both
//! subscribers time the same window: first frame received to last message
//! handled.
//!
//! A stop request (Ctrl-C) stops the publisher, not the subscriber: the publisher sends its
//! end of stream, and the subscriber reads up to it on every shard (or until the drain
//! deadline, [`INTERRUPTED_DRAIN`] at most), so an interrupted run still reports what was sent
//! and lost.

use std::time::Duration;

use crate::agent::{AgentHandle, RunSpec as AgentSpec, Runner, StopFlag};
use crate::bench::baseline::Baseline;
use crate::engine::handler::HandlerSpec;
use crate::engine::{Engine, EngineConfig};
use crate::metrics::RunReport;
use crate::replay::{FilePosition, Limits, Pacing, Publisher, PublisherConfig, ReplayStats, Source};
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
    /// Say what the input refuses (DBN record types not replayed, damage) as the replay meets
    /// it; false: only count it in `RunOutcome::replay` (a benchmark's runs after its first
    /// replay the same file, whose refusals the first said).
    pub say_refusals: bool,
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

/// After an interrupted replay, the longest the subscriber reads on to the end of stream the
/// publisher sent (the run's `drain_timeout` when that is shorter); then it is stopped, and its
/// report says the end of stream was not seen.
pub const INTERRUPTED_DRAIN: Duration = Duration::from_secs(5);

/// Run once. `progress(sent, position)` is called during the replay (about every 5 ms, on this
/// thread): the messages scheduled so far and where a file replay is in its files. `stop` (Ctrl-C) ends the handshake
/// wait with `ReplayError::Interrupted`, or stops the replay, which sends its end of stream;
/// the subscriber then drains (see the module doc) and the report is marked interrupted.
pub fn run_once(
    spec: &RunSpec,
    stop: &StopFlag,
    progress: &mut dyn FnMut(u64, &FilePosition),
) -> anyhow::Result<RunOutcome> {
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
    publisher.say_refusals(spec.say_refusals);
    let io_tids: Vec<u32> =
        crate::clock::task_ids_named(PUBLISHER_IO_THREAD).into_iter().filter(|t| !before.contains(t)).collect();
    let endpoints = publisher.endpoints();
    // Start the subscriber, then wait for its subscriptions (the handshake).
    enum Running {
        Engine(Box<Engine>),
        Baseline(AgentHandle<Baseline>),
    }
    // The subscriber's own flag: it ends at the end of stream (or the drain deadline), so an
    // interrupted replay's end of stream is read. Its failure or croak stops the publisher.
    let sub_stop = StopFlag::new();
    // An early return (Ctrl-C in the handshake, a failed publisher) stops the subscriber too.
    let _stop_subscriber = StopOnDrop(sub_stop.clone());
    let running = match &spec.subscriber {
        Subscriber::Engine(cfg) => {
            let mut cfg = (**cfg).clone();
            for (shard, ep) in cfg.shards.iter_mut().zip(&endpoints) {
                shard.endpoints = vec![ep.clone()];
            }
            let engine = Engine::start(&cfg, sub_stop.clone()).context("starting the engine")?;
            if !spec.say_refusals {
                // A benchmark's later runs: their publisher sessions are the first run's again
                // (said then); loss is still said as it comes.
                engine.log_level().set(crate::metrics::settings::Level::Warn);
            }
            Running::Engine(Box::new(engine))
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
            Running::Baseline(
                Runner::start(AgentSpec::unpinned(idle), sub_stop.clone(), b).context("starting the baseline")?,
            )
        }
    };
    // Ctrl-C (or SIGTERM) ends the wait at once with `ReplayError::Interrupted`.
    publisher.wait_for_subscribers_or_stop(1, Duration::from_secs(10), stop).context("waiting for the subscriber")?;
    // The publisher sends on its own agent thread (`replay`, or `replayK` per shard), and `run`
    // calls back on this thread about every 5 ms: it passes the progress on and hands a stop
    // over to the publisher (Ctrl-C, or the subscriber stopped: a croak, a failed agent), which
    // then ends its stream.
    let pub_stop = StopFlag::new();
    let position = publisher.position();
    let replay = publisher.run(&spec.source, spec.pacing, spec.limits, &pub_stop, &mut |n| {
        if stop.is_stopped() || sub_stop.is_stopped() {
            pub_stop.stop();
        }
        progress(n, &position);
    });
    // The publisher (its sockets) is kept until the subscriber is done: closed now, its
    // connections would end while the subscriber still has a backlog to read, which the engine
    // would report as a lost link.
    let replay = replay.context("replaying")?;
    let publisher_io_cpu_ns = io_tids.iter().filter_map(|&t| crate::clock::task_cpu_ns(t)).sum();
    let drain = if replay.interrupted { spec.drain_timeout.min(INTERRUPTED_DRAIN) } else { spec.drain_timeout };
    let mut report = match running {
        Running::Engine(e) => e.join(Some(drain)).context("running the engine")?,
        Running::Baseline(h) => {
            let deadline = std::time::Instant::now() + drain;
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            sub_stop.stop();
            let (role, counters) = (h.role().to_string(), h.counters().clone());
            let baseline = h.join().context("running the baseline")?;
            let mut report = baseline.report();
            let agent = counters.snapshot(&role);
            report.threads = baseline.threads(&agent);
            report.agents.push(agent);
            report
        }
    };
    // The subscriber may have read the whole stream; the run was still cut short.
    report.interrupted |= replay.interrupted;
    // A signal cut it short; a drain wait that ran out after it is said in the loss basis.
    report.time_limit &= !replay.interrupted;
    drop(publisher);
    drop(ctx);
    Ok(RunOutcome { replay, report, publisher_io_cpu_ns })
}

/// Sets its flag when dropped.
struct StopOnDrop(StopFlag);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}
