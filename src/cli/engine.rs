//! `mdsub demo` and `mdsub engine`: the engine's command lines (Black Box subscriber faces).

use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;

use super::args::{parse_count_usize, parse_duration, parse_endpoint_list, Endpoint, How, Idle};
use super::feed::FeedArgs;
use super::{describe_pacing, expected_msgs, load_profile, progress_bar};
use crate::agent::StopFlag;
use crate::bench::run::{run_once, RunSpec, Subscriber};
use crate::engine::handler::HandlerSpec;
use crate::engine::reader::{HandOff, Routing};
use crate::engine::Engine;
use crate::metrics::RunReport;
use crate::profile::{host_cores, Profile};
use crate::replay::{PublisherConfig, Source};

/// `mdsub demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Tuning profile: a TOML file, `builtin` (the default) or `auto`.
    #[arg(long, default_value = "builtin")]
    pub profile: String,
    /// Idle strategy of the engine's readers and workers (overrides the profile's).
    #[arg(long, value_enum)]
    pub idle: Option<Idle>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub const DEMO_RATE: u64 = 100_000;
pub const DEMO_DURATION: Duration = Duration::from_secs(3);

/// Run `mdsub demo`: a generated feed replayed into the engine in one process.
pub fn demo(args: &DemoArgs, stop: &StopFlag) -> anyhow::Result<RunReport> {
    let mut profile = load_profile(&args.profile)?;
    if let Some(idle) = args.idle {
        profile.idle = idle.name().into();
    }
    let shards = profile.shards.len();
    let pacing = args.feed.pacing(Some(DEMO_RATE));
    let limits = args.feed.limits(Some(DEMO_DURATION));
    let spec = RunSpec {
        publisher: PublisherConfig { endpoints: vec!["tcp://127.0.0.1:*".into(); shards], ..Default::default() },
        source: Source::Generator(args.feed.generator()),
        pacing,
        limits,
        subscriber: Subscriber::Engine(Box::new(profile.engine_config(None))),
        drain_timeout: Duration::from_secs(30),
    };
    if !args.json {
        println!(
            "mdsub demo: {} of {}-byte payloads over {} symbols, {}, {} shard(s), {} worker(s), profile {}",
            limits.duration.map(|d| format!("{:.1}s", d.as_secs_f64())).unwrap_or_else(|| "a run".into()),
            args.feed.payload_bytes,
            args.feed.symbols,
            describe_pacing(pacing),
            shards,
            profile.workers.len(),
            profile.name
        );
        println!("publisher: XPUB over TCP loopback, lossless (XPUB_NODROP), SNDHWM {}", spec.publisher.sndhwm_msgs);
    }
    let pb = progress_bar(expected_msgs(pacing, limits), "replay");
    let out = run_once(&spec, stop, &mut |n| pb.set_position(n))?;
    pb.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out.report)?);
    } else {
        print!("{}", out.report.render());
    }
    Ok(out.report)
}

/// `mdsub engine`.
#[derive(Args, Debug)]
pub struct EngineArgs {
    /// Tuning profile: a TOML file, `builtin` or `auto`.
    #[arg(long, default_value = "builtin")]
    pub profile: String,
    /// Publisher endpoint(s) to connect, `connect:EP` or `EP`: each use of the
    /// flag is one shard (replacing the profile's shards); `EP1,EP2` puts two
    /// publishers on one shard.
    #[arg(long, value_parser = parse_endpoint_list, value_name = "[connect:]EP[,EP…]")]
    pub endpoint: Vec<Vec<Endpoint>>,
    /// Topic prefix to subscribe (repeatable; default everything).
    #[arg(long = "subscribe")]
    pub subscribe: Vec<String>,
    /// Number of workers (overrides the profile's, unpinned).
    #[arg(long, value_parser = parse_count_usize, value_name = "COUNT")]
    pub workers: Option<usize>,
    /// Worker handler: latency, book, verify (per-topic order check) or work:NANOS.
    #[arg(long)]
    pub handler: Option<HandlerSpec>,
    /// Hand-off: batch or per-message.
    #[arg(long, value_parser = parse_handoff)]
    pub handoff: Option<HandOff>,
    /// Routing to workers: by-topic (each topic's order kept) or round-robin
    /// (even load, no per-topic order across workers).
    #[arg(long, value_parser = parse_routing)]
    pub routing: Option<Routing>,
    /// Idle strategy of the engine's readers and workers (overrides the profile's).
    #[arg(long, value_enum)]
    pub idle: Option<Idle>,
    /// End-of-stream frames (one per publisher session) each shard waits for
    /// before the engine ends; default one per endpoint it connects to; 0 runs
    /// until Ctrl-C.
    #[arg(long, value_parser = parse_count_usize, value_name = "COUNT")]
    pub expect_eos: Option<usize>,
    /// Stop anyway after this long (e.g. 90s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_duration: Option<Duration>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parse a hand-off name: `batch` or `per-message`.
pub fn parse_handoff(s: &str) -> Result<HandOff, String> {
    match s {
        "batch" => Ok(HandOff::Batch),
        "per-message" => Ok(HandOff::PerMessage),
        _ => Err(format!("`{s}` is not a hand-off (batch or per-message)")),
    }
}

/// Parse a routing name: `by-topic` or `round-robin`.
pub fn parse_routing(s: &str) -> Result<Routing, String> {
    match s {
        "by-topic" => Ok(Routing::ByTopic),
        "round-robin" => Ok(Routing::RoundRobin),
        _ => Err(format!("`{s}` is not a routing (by-topic or round-robin)")),
    }
}

/// Run `mdsub engine` against running publishers.
pub fn engine(args: &EngineArgs, stop: &StopFlag) -> anyhow::Result<RunReport> {
    let mut profile = Profile::load(&args.profile)?;
    let shard_endpoints: Vec<Vec<String>> = args
        .endpoint
        .iter()
        .map(|list| list.iter().map(|e| e.only(How::Connect, "--endpoint")).collect::<Result<Vec<_>, _>>())
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    if !shard_endpoints.is_empty() {
        let template = profile.shards.first().cloned().unwrap_or_else(|| Profile::builtin().shards[0].clone());
        profile.shards = shard_endpoints
            .into_iter()
            .enumerate()
            .map(|(i, endpoints)| {
                let mut s = template.clone();
                s.endpoints = endpoints;
                if i > 0 {
                    s.io_core = None;
                    s.reader_core = None;
                }
                s
            })
            .collect();
    }
    if !args.subscribe.is_empty() {
        for s in &mut profile.shards {
            s.subscribe = args.subscribe.clone();
        }
    }
    if let Some(w) = args.workers {
        if w == 0 {
            bail!("--workers must be at least 1");
        }
        profile.workers = vec![Default::default(); w];
    }
    if let Some(h) = args.handler {
        profile.handler = h;
    }
    if let Some(h) = args.handoff {
        profile.handoff = h;
    }
    if let Some(r) = args.routing {
        profile.routing = r;
    }
    if let Some(idle) = args.idle {
        profile.idle = idle.name().into();
    }
    profile.validate(&host_cores())?;
    if profile.shards.iter().any(|s| s.endpoints.is_empty()) {
        bail!(
            "every shard needs an endpoint: give --endpoint tcp://HOST:PORT or set shards[].endpoints in the profile"
        );
    }
    let mut cfg = profile.engine_config(None);
    cfg.expect_eos_per_shard = args.expect_eos;
    let engine = Engine::start(&cfg, stop.clone()).context("starting the engine")?;
    for (k, s) in cfg.shards.iter().enumerate() {
        eprintln!("shard{k}: connected to {}", s.endpoints.join(", "));
    }
    let report = engine.join(args.max_duration)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(report)
}
