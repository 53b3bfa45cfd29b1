//! Command-line arguments and the commands behind `mdsub demo | replay |
//! engine | bench`. `main.rs` only parses and dispatches.

pub mod bench;
pub mod clone;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::agent::StopFlag;
use crate::bench::run::{run_once, RunSpec, Subscriber};
use crate::engine::handler::HandlerSpec;
use crate::engine::reader::HandOff;
use crate::engine::Engine;
use crate::feed::GeneratorConfig;
use crate::metrics::RunReport;
use crate::profile::{host_cores, Profile};
use crate::replay::{Limits, Pacing, Publisher, PublisherConfig, Source};

/// Parse `3`, `3s`, `500ms`, `2m` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(Duration::from_secs_f64(v * mul)),
        _ => Err(format!("`{s}` is not a duration (examples: 5, 5s, 500ms, 2m)")),
    }
}

/// Parse a count with optional `_`, `k`, `M` (`2M`, `500k`, `1_000_000`).
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let (num, mul) = match t.chars().last() {
        Some('k') | Some('K') => (&t[..t.len() - 1], 1_000.0),
        Some('M') | Some('m') => (&t[..t.len() - 1], 1_000_000.0),
        _ => (&t[..], 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok((v * mul).round() as u64),
        _ => Err(format!("`{s}` is not a count (examples: 100000, 100k, 2M)")),
    }
}

/// The synthetic feed and its pacing.
#[derive(Args, Debug, Clone)]
pub struct FeedArgs {
    /// Offered rate in messages per second; 0 = flat out.
    #[arg(long, value_parser = parse_count)]
    pub rate: Option<u64>,
    /// Stop after this long (e.g. 5s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many messages (e.g. 2M).
    #[arg(long, value_parser = parse_count)]
    pub count: Option<u64>,
    /// Payload bytes per message (the frame adds topic + 49 bytes of header).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Number of symbols (topics), Zipf-popular.
    #[arg(long, default_value_t = 100)]
    pub symbols: usize,
    /// Zipf exponent of symbol popularity (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Send in bursts of this many messages sharing one intended send time.
    #[arg(long, default_value_t = 1)]
    pub burst: u64,
    /// Generator seed (same seed, same feed).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl FeedArgs {
    fn generator(&self) -> GeneratorConfig {
        GeneratorConfig { symbols: self.symbols.max(1), zipf_s: self.zipf, payload_bytes: self.size, seed: self.seed }
    }
    fn pacing(&self, default_rate: Option<u64>) -> Pacing {
        match self.rate.or(default_rate) {
            None | Some(0) => Pacing::FlatOut,
            Some(r) => Pacing::Rate { msgs_per_sec: r, burst: self.burst.max(1) },
        }
    }
    fn limits(&self, default_duration: Option<Duration>) -> Limits {
        let duration = if self.count.is_some() { self.duration } else { self.duration.or(default_duration) };
        Limits { max_msgs: self.count, duration }
    }
}

/// The publisher's socket settings.
#[derive(Args, Debug, Clone)]
pub struct PublisherArgs {
    /// Publisher send high-water mark per subscriber, in messages.
    #[arg(long, default_value_t = 100_000)]
    pub sndhwm: i32,
    /// Drop at the HWM like a plain PUB instead of pushing back (XPUB_NODROP off).
    #[arg(long)]
    pub lossy: bool,
}

fn progress_bar(total: Option<u64>, what: &str) -> indicatif::ProgressBar {
    let pb = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    let style = indicatif::ProgressStyle::with_template("{prefix} {wide_bar} {pos}/{len} msgs {per_sec} eta {eta}")
        .or_else(|_| indicatif::ProgressStyle::with_template("{prefix} {pos}"))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(if total.is_some() { style } else { indicatif::ProgressStyle::default_spinner() });
    pb.set_prefix(what.to_string());
    pb
}

/// Expected messages for a progress bar, when knowable.
fn expected_msgs(pacing: Pacing, limits: Limits) -> Option<u64> {
    let by_time = match (pacing, limits.duration) {
        (Pacing::Rate { msgs_per_sec, .. }, Some(d)) => Some((msgs_per_sec as f64 * d.as_secs_f64()) as u64),
        _ => None,
    };
    match (limits.max_msgs, by_time) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn describe_pacing(p: Pacing) -> String {
    match p {
        Pacing::FlatOut => "flat out".into(),
        Pacing::Rate { msgs_per_sec, burst: 1 } => format!("{msgs_per_sec} msg/s"),
        Pacing::Rate { msgs_per_sec, burst } => format!("{msgs_per_sec} msg/s in bursts of {burst}"),
        Pacing::Recorded => "recorded timing".into(),
    }
}

fn load_profile(spec: &str) -> anyhow::Result<Profile> {
    let p = Profile::load(spec)?;
    p.validate(&host_cores())?;
    Ok(p)
}

/// `mdsub demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Tuning profile: a TOML file, `builtin` (the default) or `auto`.
    #[arg(long, default_value = "builtin")]
    pub profile: String,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub const DEMO_RATE: u64 = 100_000;
pub const DEMO_DURATION: Duration = Duration::from_secs(3);

pub fn demo(args: &DemoArgs, stop: &StopFlag) -> anyhow::Result<RunReport> {
    let profile = load_profile(&args.profile)?;
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
            args.feed.size,
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

/// `mdsub replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Endpoint to bind, one per shard (repeat the flag for more shards).
    #[arg(long = "bind", default_value = "tcp://127.0.0.1:5556")]
    pub bind: Vec<String>,
    /// Replay a capture file (from `mdsub tap --record`) instead of generating.
    #[arg(long = "from")]
    pub from: Option<PathBuf>,
    /// With --from: give mdsub data frames this publisher's own sequences and
    /// fresh intended send times (so latency is measured from now); without it
    /// frames go out byte for byte, keeping their recorded publisher, session
    /// and send time.
    #[arg(long, requires = "from")]
    pub restamp: bool,
    /// With --from: keep the recorded gaps between frames instead of --rate.
    #[arg(long, requires = "from")]
    pub recorded_timing: bool,
    #[command(flatten)]
    pub feed: FeedArgs,
    #[command(flatten)]
    pub publisher: PublisherArgs,
    /// Publisher id of shard 0 (shard k uses ID+k). Give every publisher that
    /// feeds the same subscriber its own range: sessions of one id are taken
    /// for restarts of one publisher.
    #[arg(long, default_value_t = 0)]
    pub publisher_id: u32,
    /// Subscribers to wait for on every shard before sending (0: do not wait).
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Give up if the subscribers have not connected by then.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub wait_timeout: Duration,
    /// Print the replay's numbers as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn replay(args: &ReplayArgs, stop: &StopFlag) -> anyhow::Result<()> {
    let cfg = PublisherConfig {
        endpoints: args.bind.clone(),
        sndhwm_msgs: args.publisher.sndhwm,
        lossless: !args.publisher.lossy,
        publisher_id_base: args.publisher_id,
    };
    let ctx = zmq::Context::new();
    let mut publisher = Publisher::bind(&ctx, &cfg)?;
    for (k, ep) in publisher.endpoints().iter().enumerate() {
        println!("bound shard{k} {ep}");
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    if args.subscribers > 0 {
        eprintln!("waiting for {} subscriber(s) per shard…", args.subscribers);
        publisher.wait_for_subscribers(args.subscribers, args.wait_timeout)?;
    }
    let source = match &args.from {
        Some(path) => Source::Capture { path: path.clone(), restamp: args.restamp },
        None => Source::Generator(args.feed.generator()),
    };
    let pacing = if args.recorded_timing { Pacing::Recorded } else { args.feed.pacing(None) };
    let limits = args.feed.limits(if args.from.is_some() { None } else { Some(Duration::from_secs(10)) });
    let pb = progress_bar(expected_msgs(pacing, limits), "replay");
    let stats = publisher.run(&source, pacing, limits, stop, &mut |n| pb.set_position(n))?;
    pb.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!(
            "sent {} messages in {:.3} s ({:.0} msg/s){}; per shard {:?}",
            stats.sent_total,
            stats.elapsed_s,
            stats.sent_total as f64 / stats.elapsed_s.max(1e-9),
            if stats.interrupted { " (interrupted)" } else { "" },
            stats.sent_per_shard
        );
    }
    Ok(())
}

/// `mdsub engine`.
#[derive(Args, Debug)]
pub struct EngineArgs {
    /// Tuning profile: a TOML file, `builtin` or `auto`.
    #[arg(long, default_value = "builtin")]
    pub profile: String,
    /// Publisher endpoint(s) to connect: each use of the flag is one shard
    /// (replacing the profile's shards); `EP1,EP2` puts two publishers on one shard.
    #[arg(long = "connect")]
    pub connect: Vec<String>,
    /// Topic prefix to subscribe (repeatable; default everything).
    #[arg(long = "subscribe")]
    pub subscribe: Vec<String>,
    /// Number of workers (overrides the profile's, unpinned).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Worker handler: latency, book, verify (per-topic order check) or work:NANOS.
    #[arg(long)]
    pub handler: Option<HandlerSpec>,
    /// Hand-off: batch or per-message.
    #[arg(long, value_parser = parse_handoff)]
    pub handoff: Option<HandOff>,
    /// End-of-stream frames (one per publisher session) each shard waits for
    /// before the engine ends; default one per endpoint it connects to; 0 runs
    /// until Ctrl-C.
    #[arg(long)]
    pub expect_eos: Option<usize>,
    /// Stop anyway after this long.
    #[arg(long, value_parser = parse_duration)]
    pub max_duration: Option<Duration>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_handoff(s: &str) -> Result<HandOff, String> {
    match s {
        "batch" => Ok(HandOff::Batch),
        "per-message" => Ok(HandOff::PerMessage),
        _ => Err(format!("`{s}` is not a hand-off (batch or per-message)")),
    }
}

pub fn engine(args: &EngineArgs, stop: &StopFlag) -> anyhow::Result<RunReport> {
    let mut profile = Profile::load(&args.profile)?;
    if !args.connect.is_empty() {
        let template = profile.shards.first().cloned().unwrap_or_else(|| Profile::builtin().shards[0].clone());
        profile.shards = args
            .connect
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let mut s = template.clone();
                s.endpoints = ep.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
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
    profile.validate(&host_cores())?;
    if profile.shards.iter().any(|s| s.endpoints.is_empty()) {
        bail!("every shard needs an endpoint: give --connect tcp://HOST:PORT or set shards[].endpoints in the profile");
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
