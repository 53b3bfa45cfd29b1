//! One measured run, as `mdsub demo` and `mdsub bench` make them: an
//! in-process publisher replays a feed into a subscriber (the engine or the
//! baseline) over TCP loopback, after a subscription handshake, and the
//! subscriber's report is returned with the replay's numbers. Both
//! subscribers time the same window: first frame received to last message
//! handled.

use std::time::Duration;

use crate::agent::StopFlag;
use crate::bench::baseline::Baseline;
use crate::engine::{Engine, EngineConfig};
use crate::metrics::RunReport;
use crate::replay::{Limits, Pacing, Publisher, PublisherConfig, ReplayStats, Source};

/// Which subscriber a run measures.
#[derive(Debug, Clone)]
pub enum Subscriber {
    Engine(Box<EngineConfig>),
    Baseline { rcvhwm_msgs: i32 },
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
}

/// Run once. `progress(sent)` is called during the replay.
pub fn run_once(spec: &RunSpec, stop: &StopFlag, progress: &mut dyn FnMut(u64)) -> anyhow::Result<RunOutcome> {
    use anyhow::Context as _;
    let ctx = zmq::Context::new();
    let mut publisher = Publisher::bind(&ctx, &spec.publisher).context("starting the publisher")?;
    let endpoints = publisher.endpoints();
    // Start the subscriber, then wait for its subscriptions (the handshake).
    enum Running {
        Engine(Engine),
        Baseline(std::thread::JoinHandle<zmq::Result<RunReport>>),
    }
    let sub_stop = stop.clone();
    let running = match &spec.subscriber {
        Subscriber::Engine(cfg) => {
            let mut cfg = (**cfg).clone();
            for (shard, ep) in cfg.shards.iter_mut().zip(&endpoints) {
                shard.endpoints = vec![ep.clone()];
            }
            Running::Engine(Engine::start(&cfg, sub_stop).context("starting the engine")?)
        }
        Subscriber::Baseline { rcvhwm_msgs } => {
            let b = Baseline::connect(&endpoints, *rcvhwm_msgs).context("connecting the baseline subscriber")?;
            let limit = spec.limits.duration.unwrap_or(Duration::from_secs(3600))
                + spec.drain_timeout
                + Duration::from_secs(30);
            Running::Baseline(
                std::thread::Builder::new()
                    .name("baseline".into())
                    .spawn(move || b.run(&sub_stop, limit))
                    .context("starting the baseline thread")?,
            )
        }
    };
    publisher.wait_for_subscribers(1, Duration::from_secs(10)).context("waiting for the subscriber")?;
    let replay = publisher.run(&spec.source, spec.pacing, spec.limits, stop, progress).context("replaying")?;
    let report = match running {
        Running::Engine(e) => e.join(Some(spec.drain_timeout)).context("running the engine")?,
        Running::Baseline(h) => {
            h.join().map_err(|_| anyhow::anyhow!("the baseline thread panicked"))?.context("running the baseline")?
        }
    };
    Ok(RunOutcome { replay, report })
}
