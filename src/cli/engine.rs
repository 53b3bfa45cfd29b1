//! `mdsub demo` and `mdsub engine`: the engine's command lines (Black Box subscriber faces).

use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;

use super::args::{parse_count_usize, parse_duration, parse_endpoint, parse_endpoint_list, Endpoint, How, Idle};
use super::feed::FeedArgs;
use super::{describe_pacing, expected_msgs, load_profile, progress_bar};
use crate::agent::StopFlag;
use crate::bench::run::{run_once, RunSpec, Subscriber};
use crate::engine::handler::HandlerSpec;
use crate::engine::reader::HandOff;
use crate::engine::{Engine, EngineError};
use crate::metrics::RunReport;
use crate::profile::{host_cores, Profile};
use crate::replay::{PublisherConfig, Source};
use crate::snail::{Policy, SkewMode};

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
    /// Worker handler: latency, book, verify or work:NANOS (work:200000 makes a snail).
    #[arg(long)]
    pub handler: Option<HandlerSpec>,
    #[command(flatten)]
    pub snail: SnailArgs,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The Suicidal Snail's flags (override the profile's `[snail]`), shared by demo and engine.
#[derive(Args, Debug, Default)]
pub struct SnailArgs {
    /// What a bad verdict does: croak (scream, stop, exit 3), warn (log, count, go on),
    /// rest (skip the backlog for --rest, rejoin at the live position) or off.
    #[arg(long = "snail", value_parser = parse_policy, value_name = "croak|warn|rest|off")]
    pub policy: Option<Policy>,
    /// Lag (now - intended send time) above which a message is late (e.g. 1s, 200ms).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_lag: Option<Duration>,
    /// How long the lag must stay above --max-lag to be a snail.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub grace: Option<Duration>,
    /// Nothing heard (no data, no heartbeat) for this long is STOP; 0s: not judged.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub silence: Option<Duration>,
    /// Clocks: synchronised (one host, PTP/NTP) or skew-tolerant (judge lag
    /// against the lowest lag seen over --skew-window).
    #[arg(long, value_parser = parse_skew, value_name = "synchronised|skew-tolerant")]
    pub skew: Option<SkewMode>,
    /// Policy rest: how long a snail skips everything before it rejoins.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub rest: Option<Duration>,
    /// Skew-tolerant mode: how far back the lowest lag is taken from.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub skew_window: Option<Duration>,
    /// Bind the monitor PUB here (`bind:EP` or `EP`): every scream and the
    /// state of every reader and worker (docs/SNAIL.md).
    #[arg(long, value_parser = parse_endpoint, value_name = "[bind:]EP")]
    pub monitor: Option<Endpoint>,
}

impl SnailArgs {
    /// Apply the flags given to `profile`'s `[snail]`.
    pub fn apply(&self, profile: &mut Profile) -> anyhow::Result<()> {
        let s = &mut profile.snail;
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        if let Some(p) = self.policy {
            s.policy = p;
        }
        if let Some(d) = self.max_lag {
            s.max_lag_ms = ms(d);
        }
        if let Some(d) = self.grace {
            s.grace_ms = ms(d);
        }
        if let Some(d) = self.silence {
            s.silence_ms = ms(d);
        }
        if let Some(k) = self.skew {
            s.skew = k;
        }
        if let Some(d) = self.rest {
            s.rest_ms = ms(d);
        }
        if let Some(d) = self.skew_window {
            s.skew_window_ms = ms(d);
        }
        if let Some(ep) = &self.monitor {
            s.monitor = Some(ep.only(How::Bind, "--monitor").map_err(anyhow::Error::msg)?);
        }
        Ok(())
    }
}

/// Parse a snail policy name.
pub fn parse_policy(s: &str) -> Result<Policy, String> {
    Policy::from_name(s).ok_or_else(|| format!("`{s}` is not a snail policy (croak, warn, rest or off)"))
}

/// Parse a clock-skew mode.
pub fn parse_skew(s: &str) -> Result<SkewMode, String> {
    match s {
        "synchronised" | "synchronized" => Ok(SkewMode::Synchronised),
        "skew-tolerant" => Ok(SkewMode::Tolerant),
        _ => Err(format!("`{s}` is not a clock mode (synchronised or skew-tolerant)")),
    }
}

/// The report a croaking engine left, if `e` is a croak.
fn croak_report(e: &anyhow::Error) -> Option<&RunReport> {
    match e.downcast_ref::<EngineError>() {
        Some(EngineError::Croaked(c)) => Some(&c.report),
        _ => None,
    }
}

fn print_report(report: &RunReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

pub const DEMO_RATE: u64 = 100_000;
pub const DEMO_DURATION: Duration = Duration::from_secs(3);

/// Run `mdsub demo`: a generated feed replayed into the engine in one process.
pub fn demo(args: &DemoArgs, stop: &StopFlag) -> anyhow::Result<RunReport> {
    let mut profile = load_profile(&args.profile)?;
    if let Some(idle) = args.idle {
        profile.idle = idle.name().into();
    }
    if let Some(h) = args.handler {
        profile.handler = h;
    }
    args.snail.apply(&mut profile)?;
    profile.validate(&host_cores())?;
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
    let out = run_once(&spec, stop, &mut |n| pb.set_position(n));
    pb.finish_and_clear();
    match out {
        Ok(out) => {
            print_report(&out.report, args.json)?;
            Ok(out.report)
        }
        Err(e) => {
            // A croak still shows what the engine did up to then.
            if let Some(report) = croak_report(&e) {
                print_report(report, args.json)?;
            }
            Err(e)
        }
    }
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
    /// Worker handler: latency, book (order books from DBN records), last (last
    /// value per topic), verify (per-topic order check) or work:NANOS.
    #[arg(long)]
    pub handler: Option<HandlerSpec>,
    /// Hand-off: batch or per-message.
    #[arg(long, value_parser = parse_handoff)]
    pub handoff: Option<HandOff>,
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
    #[command(flatten)]
    pub snail: SnailArgs,
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

/// Run `mdsub engine` against running publishers.
pub fn engine(args: &EngineArgs, stop: &StopFlag) -> anyhow::Result<RunReport> {
    let mut profile = Profile::load(&args.profile)?;
    let shard_endpoints: Vec<Vec<String>> = args
        .endpoint
        .iter()
        .map(|list| Endpoint::all_only(list, How::Connect, "--endpoint"))
        .collect::<anyhow::Result<_>>()?;
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
    if let Some(idle) = args.idle {
        profile.idle = idle.name().into();
    }
    args.snail.apply(&mut profile)?;
    profile.validate(&host_cores())?;
    if profile.shards.iter().any(|s| s.endpoints.is_empty()) {
        bail!(
            "every shard needs an endpoint: give --endpoint tcp://HOST:PORT or set shards[].endpoints in the profile"
        );
    }
    let mut cfg = profile.engine_config(None);
    cfg.expect_eos_per_shard = args.expect_eos;
    let engine = Engine::start(&cfg, stop.clone()).context("starting the engine")?;
    if let Some(ep) = engine.monitor_endpoint() {
        eprintln!("monitor: bound {ep}");
    }
    for (k, s) in cfg.shards.iter().enumerate() {
        eprintln!("shard{k}: connected to {}", s.endpoints.join(", "));
    }
    match engine.join(args.max_duration) {
        Ok(report) => {
            print_report(&report, args.json)?;
            Ok(report)
        }
        Err(EngineError::Croaked(c)) => {
            print_report(&c.report, args.json)?;
            Err(EngineError::Croaked(c).into())
        }
        Err(e) => Err(e.into()),
    }
}
