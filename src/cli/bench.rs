//! `mdsub bench`: the replay benchmark. The same feed goes to the baseline (a
//! plain single-thread SUB reader) and to the engine, one after the other in
//! every run; medians of the runs and engine/baseline ratios are printed
//! with the machine, commit and settings at the top.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use super::args::{parse_bytes_usize, parse_count_nonzero, parse_count_nonzero_usize, parse_duration, Idle};
use super::engine::parse_handoff;
use super::feed::{FeedArgs, PublisherArgs};
use super::replay::{file_source, parse_speed, Speed};
use super::{describe_pacing, load_profile, override_idle_handler};
use crate::agent::StopFlag;
use crate::bench::clone::{CloneBenchConfig, CloneResult};
use crate::bench::lvc::{LvcBenchConfig, LvcResult};
use crate::bench::median;
use crate::bench::result::{Results, SaveFile};
use crate::bench::run::{run_once, RunSpec, Subscriber};
use crate::bench::stamp::Machine;
use crate::diag::Lines;
use crate::engine::reader::{HandOff, Routing};
use crate::metrics::{human_ns, RunReport};
use crate::outfile::Claimed;
use crate::replay::{Pacing, PublisherConfig, Source};
use crate::snail::Policy;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Replay these files instead of the generated feed: Databento DBN
    /// (`.dbn`, `.dbn.zst`; several are merged by receive time) or one mdsub
    /// capture. The whole file is sent unless --count or --duration says less.
    /// A file with nothing to replay is refused; a damaged one is replayed up to
    /// the damage, said once, and the result is an error (exit status 1).
    #[arg(long = "from", num_args = 1.., value_name = "FILE")]
    pub from: Vec<std::path::PathBuf>,
    /// With --from: a multiple of the recorded pace (`1x`, `10x`) or `max`
    /// (flat out, the default).
    #[arg(long, requires = "from", conflicts_with = "rate", value_parser = parse_speed, value_name = "Nx|max")]
    pub speed: Option<Speed>,
    #[command(flatten)]
    pub publisher: PublisherArgs,
    /// Runs of every subscriber; medians are reported.
    #[arg(long, value_parser = parse_count_nonzero_usize, default_value = "5", value_name = "COUNT")]
    pub runs: usize,
    /// Engine tuning profile: a TOML file, `builtin` or `auto`.
    #[arg(long, default_value = "builtin", value_name = "FILE|builtin|auto")]
    pub profile: String,
    /// Engine hand-off(s) to measure: batch, per-message, inline, both (batch
    /// and per-message) or all three. `inline` (each shard's reader runs the
    /// handler, no worker thread) runs one handler per shard whatever the
    /// profile's worker count.
    #[arg(long, default_value = "both", value_parser = ["batch", "per-message", "inline", "both", "all"])]
    pub handoff: String,
    /// Handler run on every message, by the engine's workers and inline by
    /// the baseline (overrides the profile's): latency, book (order books
    /// from DBN records), last, verify or work:NANOS.
    #[arg(long, value_name = "HANDLER")]
    pub handler: Option<crate::engine::handler::HandlerSpec>,
    /// Idle strategy of the engine's readers and workers (overrides the profile's).
    #[arg(long, value_enum)]
    pub idle: Option<Idle>,
    /// Also compare engine layouts on the same feed in the same runs:
    /// `shards` (1 vs 2 shards), `routing` (by-topic vs round-robin, at
    /// least 2 workers), `snail` (the batch engine with the snail's checks
    /// on, policy croak, vs off); and publishers: `publishers` (flat out into
    /// the baseline: the replay vs a reference publisher sending prebuilt
    /// frames on the same socket settings, and the replay with one thread per
    /// shard over 2 shards); comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = ["shards", "routing", "snail", "publishers"], value_name = "WHAT")]
    pub compare: Vec<String>,
    /// Print the whole result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the whole result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub save: Option<std::path::PathBuf>,
    /// Also measure `engine/batch+outputs`: the batch engine with --hlog and
    /// --hgrm (DIR/bench.hlog, DIR/bench.hgrm) and --metrics-listen (an
    /// ephemeral port) on, in the same runs. DIR is made if missing; it and
    /// the files are checked (and the files locked) before any run.
    #[arg(long, value_name = "DIR")]
    pub outputs_dir: Option<std::path::PathBuf>,
    /// Also measure with CURVE on both sides, in the same runs: the publisher
    /// demands CURVE (fresh keys, an allow-list of the subscriber's key, the
    /// ZAP handler on) and the baseline's and engine's SUBs present keys.
    /// Adds `baseline+curve` and `engine/…+curve`, their ratio, and what CURVE
    /// costs each subscriber (curve / plain).
    #[arg(long)]
    pub curve: bool,
}

/// Medians of one subscriber's runs.
#[derive(Debug, Clone, Serialize)]
pub struct Medians {
    pub subscriber: String,
    pub msgs_per_sec: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub lost_total: u64,
    /// CPU ns per delivered message of every thread of the subscriber,
    /// libzmq's I/O threads included: the baseline's one thread and its
    /// I/O thread; the engine's I/O threads, readers, workers and collector.
    /// This is the figure the engine/baseline CPU ratio compares.
    pub cpu_ns_per_msg: f64,
    /// The same without libzmq's I/O threads (the subscriber's own threads only).
    pub app_cpu_ns_per_msg: f64,
    /// Per thread, CPU ns per delivered message (so they add up to `cpu_ns_per_msg`).
    pub threads: std::collections::BTreeMap<String, f64>,
    /// The publisher feeding this variant: messages sent per second (its
    /// own clock, send start to end of stream) and CPU ns per message sent
    /// (its sending threads and its libzmq I/O threads).
    pub publisher_msgs_per_sec: f64,
    pub publisher_cpu_ns_per_msg: f64,
}

/// The publisher's side of one run.
#[derive(Debug, Clone, Serialize)]
pub struct PublisherRun {
    pub variant: String,
    pub sent: u64,
    pub msgs_per_sec: f64,
    /// CPU ns per message sent of the sending thread(s) and of the I/O thread(s).
    pub send_cpu_ns_per_msg: f64,
    pub io_cpu_ns_per_msg: f64,
}

/// `mdsub bench`'s result: the common envelope ([`Results`]) with the engine runs
/// ([`RunReport`]), the medians per subscriber and, per engine variant, (throughput, p50, p99,
/// p99.9, CPU ns per message) as engine / baseline, each from the medians of the same runs.
pub type BenchResult = Results<RunReport, Medians, [f64; 5], BenchExtra>;

/// What `mdsub bench` reports beyond the common envelope.
#[derive(Debug, Clone, Serialize)]
pub struct BenchExtra {
    /// The publisher's side of each run, in the order of `runs`.
    pub publisher_runs: Vec<PublisherRun>,
    /// `--compare`: (what, B / A) for throughput and CPU ns per message,
    /// e.g. ("2 shards / 1 shard", [1.1, 0.97]).
    pub comparisons: Vec<(String, [f64; 2])>,
    /// `--compare publishers`: (what, B / A) for throughput at the subscriber
    /// and the publisher's CPU ns per message.
    pub publisher_comparisons: Vec<(String, [f64; 2])>,
    /// `--from` a damaged file: what its replay refused, by reason (`truncated_tail`,
    /// `bad_record`), as each run met it. Every run replayed only what came before the damage,
    /// so the result is not one (`error`; docs/REFUSALS.md, "Damaged files").
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub refused: std::collections::BTreeMap<String, u64>,
}

fn medians(name: &str, runs: &[&RunReport], pubs: &[&PublisherRun]) -> Medians {
    let total = |r: &RunReport| r.latency.get("total").copied().unwrap_or_default();
    let mut names: Vec<&str> = runs.iter().flat_map(|r| r.threads.iter().map(|t| t.thread.as_str())).collect();
    names.sort_unstable();
    names.dedup();
    let per_thread = |r: &RunReport, n: &str| {
        r.threads.iter().filter(|t| t.thread == n).map(|t| t.cpu_ns).sum::<u64>() as f64 / r.delivered.max(1) as f64
    };
    Medians {
        subscriber: name.to_string(),
        msgs_per_sec: median(runs.iter().map(|r| r.msgs_per_sec).collect()),
        p50_ns: median(runs.iter().map(|r| total(r).p50_ns).collect()),
        p99_ns: median(runs.iter().map(|r| total(r).p99_ns).collect()),
        p999_ns: median(runs.iter().map(|r| total(r).p999_ns).collect()),
        max_ns: median(runs.iter().map(|r| total(r).max_ns).collect()),
        lost_total: runs.iter().map(|r| r.lost.unwrap_or(0)).sum(),
        cpu_ns_per_msg: median(runs.iter().map(|r| cpu_ns_per_msg(r)).collect()),
        app_cpu_ns_per_msg: median(runs.iter().map(|r| app_cpu_ns_per_msg(r)).collect()),
        threads: names
            .into_iter()
            .map(|n| (n.to_string(), median(runs.iter().map(|r| per_thread(r, n)).collect())))
            .collect(),
        publisher_msgs_per_sec: median(pubs.iter().map(|p| p.msgs_per_sec).collect()),
        publisher_cpu_ns_per_msg: median(pubs.iter().map(|p| p.send_cpu_ns_per_msg + p.io_cpu_ns_per_msg).collect()),
    }
}

/// CPU ns of every thread of the subscriber (libzmq's I/O threads
/// included) per delivered message.
fn cpu_ns_per_msg(r: &RunReport) -> f64 {
    let cpu: u64 = r.threads.iter().map(|t| t.cpu_ns).sum();
    cpu as f64 / r.delivered.max(1) as f64
}

/// CPU ns of the subscriber's own agent threads per delivered message.
fn app_cpu_ns_per_msg(r: &RunReport) -> f64 {
    let cpu: u64 = r.agents.iter().map(|a| a.cpu_ns).sum();
    cpu as f64 / r.delivered.max(1) as f64
}

/// The `--curve` baseline's name.
const BASELINE_CURVE: &str = "baseline+curve";

/// `--curve`: a fresh server pair with the subscriber's fresh key on its
/// allow-list (so the ZAP handler is asked, as in a real deployment), and
/// the keys the subscriber presents.
fn curve_pair() -> anyhow::Result<(crate::security::ServerAccess, crate::security::ClientKeys)> {
    use crate::security::{ClientKeys, Keypair, ServerAccess};
    let (server, client) = (Keypair::generate()?, Keypair::generate()?);
    let keys = ClientKeys { server_public: server.public, client: client.clone() };
    let access = ServerAccess { curve: Some((server, [client.public].into_iter().collect())), allow_addrs: vec![] };
    Ok((access, keys))
}

/// `--outputs-dir DIR`: made if missing (with its parents, like capacity's `--out`) and its
/// `bench.hlog` and `bench.hgrm` claimed before any run, so a folder that cannot be written, or
/// files another run writes, fail the benchmark at once rather than after its baseline.
fn claim_outputs(dir: &std::path::Path, save: Option<&std::path::Path>) -> anyhow::Result<[Claimed; 2]> {
    let [hlog, hgrm] = [dir.join("bench.hlog"), dir.join("bench.hgrm")];
    let mut named = vec![("--outputs-dir", hlog.as_path()), ("--outputs-dir", hgrm.as_path())];
    named.extend(save.map(|p| ("--save", p)));
    crate::outfile::distinct(&named).map_err(|e| super::UsageError(e.to_string()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("--outputs-dir {}: creating it", dir.display()))?;
    Ok([Claimed::claim("--outputs-dir", &hlog)?, Claimed::claim("--outputs-dir", &hgrm)?])
}

/// The bench variant of the engine with hand-off `h`: `engine/batch`, `engine/inline`, ….
fn engine_variant(h: HandOff) -> String {
    format!("engine/{}", h.name())
}

pub fn bench(args: &BenchArgs, stop: &StopFlag) -> anyhow::Result<BenchResult> {
    let pacing = match args.speed {
        Some(s) => s.pacing(),
        None => args.feed.pacing(None),
    };
    // Refused before anything is loaded, opened or printed.
    if args.compare.iter().any(|c| c == "publishers") {
        if !args.from.is_empty() {
            anyhow::bail!(super::UsageError("--compare publishers needs the generated feed, not --from files".into()));
        }
        if pacing != Pacing::FlatOut {
            anyhow::bail!(super::UsageError(
                "--compare publishers measures publishers flat out: leave out --rate".into()
            ));
        }
    }
    let mut profile = load_profile(&args.profile)?;
    super::security::apply_what_a_local_run_can("bench", &args.profile, &profile.security, None)?;
    override_idle_handler(&mut profile, args.idle, args.handler);
    if args.from.is_empty() {
        args.feed.check_fits(profile.max_msg_bytes)?;
    }
    // The --save file is made before the runs, so a bad path fails now, not after them.
    let save = args.save.as_deref().map(SaveFile::create).transpose()?;
    let handoffs: Vec<HandOff> = match args.handoff.as_str() {
        "both" => vec![HandOff::Batch, HandOff::PerMessage],
        "all" => vec![HandOff::Batch, HandOff::PerMessage, HandOff::Inline],
        h => vec![parse_handoff(h).map_err(anyhow::Error::msg)?],
    };
    // So are --outputs-dir and its files (written by the batch engine), claimed for the whole benchmark.
    let outputs = match &args.outputs_dir {
        Some(dir) if handoffs.contains(&HandOff::Batch) => Some(claim_outputs(dir, args.save.as_deref())?),
        _ => None,
    };
    let source =
        if args.from.is_empty() { Source::Generator(args.feed.generator()?) } else { file_source(&args.from, true)? };
    let whole_file = !args.from.is_empty();
    let default_count =
        if whole_file || args.feed.duration.is_some() || args.feed.count.is_some() { None } else { Some(2_000_000) };
    let mut limits = args.feed.limits(None);
    limits.max_msgs = limits.max_msgs.or(default_count);
    let shards = profile.shards.len();
    let publisher = PublisherConfig {
        endpoints: vec!["tcp://127.0.0.1:*".into(); shards],
        sndhwm_msgs: args.publisher.sndhwm_msgs,
        lossless: !args.publisher.lossy,
        thread_per_shard: args.publisher.thread_per_shard,
        publisher_id_base: 0,
        access: Default::default(),
    };
    let machine = Machine::here();
    let settings = serde_json::json!({
        "pacing": describe_pacing(pacing),
        "source": if whole_file {
            args.from.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
        } else {
            "generated".into()
        },
        "payload_bytes": if whole_file { None } else { Some(args.feed.payload_bytes) },
        "symbols": if whole_file { None } else { Some(args.feed.symbols) },
        "count": limits.max_msgs,
        "duration_s": limits.duration.map(|d| d.as_secs_f64()),
        "runs": args.runs,
        "idle": profile.idle,
        "publisher": if publisher.lossless { "XPUB lossless (XPUB_NODROP)" } else { "XPUB lossy (drops at HWM)" },
        "sndhwm_msgs": publisher.sndhwm_msgs,
        "rcvhwm_msgs": profile.rcvhwm_msgs,
        "profile": profile.name,
        "shards": shards,
        // Of the batch and per-message engines; `engine/inline` runs one handler per shard.
        "workers": profile.workers.len(),
        "inline_handlers": handoffs.contains(&HandOff::Inline).then_some(shards),
        "batch_max": profile.batch_max,
        "handler": profile.handler.to_string(),
        "curve": args.curve,
    });
    if !args.json {
        crate::outln!("mdsub bench  {machine}");
        let what = if whole_file {
            format!(
                "{} ({})",
                settings["source"].as_str().unwrap_or(""),
                if matches!(source, Source::Dbn { .. }) { "DBN" } else { "capture" }
            )
        } else {
            format!("{}-byte payloads, {} symbols", args.feed.payload_bytes, args.feed.symbols)
        };
        crate::outln!(
            "feed: {}, {what}, {}; publisher {} SNDHWM {}; subscribers RCVHWM {}",
            describe_pacing(pacing),
            match (limits.max_msgs, limits.duration) {
                (Some(n), _) => format!("{n} messages"),
                (None, Some(d)) => format!("{:.1}s", d.as_secs_f64()),
                _ if whole_file => "whole file".into(),
                _ => "unbounded".into(),
            },
            settings["publisher"].as_str().unwrap_or(""),
            publisher.sndhwm_msgs,
            profile.rcvhwm_msgs
        );
        crate::outln!(
            "engine: profile {}, {} shard(s), {} worker(s), batch_max {}, handler {}; {} run(s), median reported",
            profile.name,
            shards,
            profile.workers.len(),
            profile.batch_max,
            profile.handler,
            args.runs
        );
    }
    let baseline = Subscriber::Baseline {
        rcvhwm_msgs: profile.rcvhwm_msgs,
        batch_max: profile.batch_max,
        handler: profile.handler,
        keys: None,
    };
    let mut variants: Vec<(String, Subscriber, PublisherConfig, Source)> =
        vec![("baseline".into(), baseline.clone(), publisher.clone(), source.clone())];
    let curve = if args.curve { Some(curve_pair()?) } else { None };
    if let Some((access, keys)) = &curve {
        let mut pc = publisher.clone();
        pc.access = access.clone();
        let handler = profile.handler;
        let sub = Subscriber::Baseline {
            rcvhwm_msgs: profile.rcvhwm_msgs,
            batch_max: profile.batch_max,
            handler,
            keys: Some(keys.clone()),
        };
        variants.push((BASELINE_CURVE.into(), sub, pc, source.clone()));
    }
    for h in &handoffs {
        let mut cfg = profile.engine_config(None);
        cfg.handoff = *h;
        if *h == HandOff::Inline {
            // One core per shard, run by its reader: workers' cores are not used.
            cfg.worker_cores = vec![None; cfg.shards.len()];
        }
        let name = &engine_variant(*h);
        if let (HandOff::Batch, Some([hlog, hgrm])) = (h, &outputs) {
            let mut with = cfg.clone();
            with.outputs = crate::metrics::OutputsConfig {
                hlog: Some(hlog.clone()),
                hgrm: Some(hgrm.clone()),
                listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                ..Default::default()
            };
            variants.push((
                "engine/batch+outputs".into(),
                Subscriber::Engine(Box::new(with)),
                publisher.clone(),
                source.clone(),
            ));
        }
        if let Some((access, keys)) = &curve {
            let (mut with, mut pc) = (cfg.clone(), publisher.clone());
            with.feed_keys = Some(keys.clone());
            pc.access = access.clone();
            variants.push((format!("{name}+curve"), Subscriber::Engine(Box::new(with)), pc, source.clone()));
        }
        variants.push((name.into(), Subscriber::Engine(Box::new(cfg)), publisher.clone(), source.clone()));
    }
    let mut pairs: Vec<(String, String, String)> = Vec::new();
    if curve.is_some() {
        pairs.push(("baseline: curve / plain".into(), "baseline".into(), BASELINE_CURVE.into()));
        for h in &handoffs {
            let name = engine_variant(*h);
            pairs.push((format!("{name}: curve / plain"), name.clone(), format!("{name}+curve")));
        }
    }
    let with_shards = |n: usize| {
        let mut p = profile.clone();
        let template = p.shards[0].clone();
        p.shards = vec![template; n];
        if p.handoff == HandOff::Inline {
            p.workers = vec![Default::default(); n];
        }
        for s in p.shards.iter_mut().skip(1) {
            (s.io_core, s.reader_core) = (None, None);
        }
        let mut pc = publisher.clone();
        pc.endpoints = vec!["tcp://127.0.0.1:*".into(); n];
        (Subscriber::Engine(Box::new(p.engine_config(None))), pc)
    };
    if args.compare.iter().any(|c| c == "shards") {
        for (n, name) in [(1, "engine/1-shard"), (2, "engine/2-shards")] {
            let (sub, pc) = with_shards(n);
            variants.push((name.into(), sub, pc, source.clone()));
        }
        pairs.push(("2 shards / 1 shard".into(), "engine/1-shard".into(), "engine/2-shards".into()));
    }
    if args.compare.iter().any(|c| c == "routing") {
        let mut p = profile.clone();
        if p.workers.len() < 2 {
            p.workers = vec![Default::default(); 2];
        }
        for (r, name) in [(Routing::ByTopic, "engine/by-topic"), (Routing::RoundRobin, "engine/round-robin")] {
            let mut cfg = p.engine_config(None);
            cfg.routing = r;
            if cfg.handoff == HandOff::Inline {
                // Routing is between workers: only a hand-off has any.
                cfg.handoff = HandOff::Batch;
            }
            variants.push((name.into(), Subscriber::Engine(Box::new(cfg)), publisher.clone(), source.clone()));
        }
        pairs.push(("round-robin / by-topic".into(), "engine/by-topic".into(), "engine/round-robin".into()));
    }
    if args.compare.iter().any(|c| c == "snail") {
        for (policy, name) in [(Policy::Croak, "engine/snail-on"), (Policy::Off, "engine/snail-off")] {
            let mut cfg = profile.engine_config(None);
            cfg.handoff = HandOff::Batch;
            cfg.snail.policy = policy;
            variants.push((name.into(), Subscriber::Engine(Box::new(cfg)), publisher.clone(), source.clone()));
        }
        pairs.push(("snail on / off".into(), "engine/snail-off".into(), "engine/snail-on".into()));
    }
    // Publishers, each into the baseline subscriber: the replay (the
    // `baseline` variant), the prebuilt reference publisher on the same
    // socket settings, and the replay with one thread per shard over 2 shards.
    let mut pub_pairs: Vec<(String, String, String)> = Vec::new();
    if args.compare.iter().any(|c| c == "publishers") {
        let Source::Generator(gen) = &source else {
            anyhow::bail!("--compare publishers needs the generated feed, not --from files");
        };
        let prebuilt = Source::Prebuilt(gen.clone());
        variants.push(("baseline/prebuilt-pub".into(), baseline.clone(), publisher.clone(), prebuilt));
        let mut two = publisher.clone();
        two.endpoints = vec!["tcp://127.0.0.1:*".into(); 2];
        two.thread_per_shard = true;
        variants.push(("baseline/2-pub-threads".into(), baseline.clone(), two, source.clone()));
        pub_pairs.push(("replay / prebuilt publisher".into(), "baseline/prebuilt-pub".into(), "baseline".into()));
        pub_pairs.push(("2 replay threads / 1".into(), "baseline".into(), "baseline/2-pub-threads".into()));
    }
    let mut runs: Vec<RunReport> = Vec::new();
    let mut publisher_runs: Vec<PublisherRun> = Vec::new();
    let mut refused = std::collections::BTreeMap::new();
    for rep in 1..=args.runs.max(1) {
        for (k, (name, sub, publisher, source)) in variants.iter().enumerate() {
            if stop.is_stopped() {
                return Err(super::Interrupted.into());
            }
            let spec = RunSpec {
                publisher: publisher.clone(),
                source: source.clone(),
                pacing,
                limits,
                subscriber: sub.clone(),
                drain_timeout: Duration::from_secs(60),
                // Every run replays the same input: what it refuses is said by the first.
                say_refusals: rep == 1 && k == 0,
            };
            let mut out = run_once(&spec, stop, &mut |_| {})?;
            // A run the signal cut short measured a part of its count: not a result to show
            // (a medians table of whole runs is what bench promises).
            if stop.is_stopped() {
                return Err(super::Interrupted.into());
            }
            out.report.subscriber = name.clone();
            if !args.json {
                let t = out.report.latency.get("total").copied().unwrap_or_default();
                crate::outln!(
                    "  run {rep} {:<22} {:>6.3} M msg/s  cpu {:>5.0} ns/msg (own threads {:>4.0})  sent {:>9}  lost {:>7}  p50 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}",
                    name,
                    out.report.msgs_per_sec / 1e6,
                    cpu_ns_per_msg(&out.report),
                    app_cpu_ns_per_msg(&out.report),
                    out.report.sent.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                    out.report.lost.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                    human_ns(t.p50_ns),
                    human_ns(t.p99_ns),
                    human_ns(t.p999_ns),
                    human_ns(t.max_ns)
                );
            }
            if refused.is_empty() {
                refused = out.replay.refused.clone();
            }
            if let Some(note) = out.replay.rate_note() {
                crate::diag!("bench: run {rep} {name}: publisher: {note}");
            }
            let sent = out.replay.sent_total.max(1) as f64;
            publisher_runs.push(PublisherRun {
                variant: name.clone(),
                sent: out.replay.sent_total,
                msgs_per_sec: out.replay.sent_total as f64 / out.replay.elapsed_s.max(1e-9),
                send_cpu_ns_per_msg: out.replay.cpu_ns as f64 / sent,
                io_cpu_ns_per_msg: out.publisher_io_cpu_ns as f64 / sent,
            });
            runs.push(out.report);
        }
    }
    let meds: Vec<Medians> = variants
        .iter()
        .map(|(name, _, _, _)| {
            let mine = |r: &&PublisherRun| &r.variant == name;
            medians(
                name,
                &runs.iter().filter(|r| &r.subscriber == name).collect::<Vec<_>>(),
                &publisher_runs.iter().filter(mine).collect::<Vec<_>>(),
            )
        })
        .collect();
    let base = meds[0].clone();
    let curve_base = meds.iter().find(|m| m.subscriber == BASELINE_CURVE).cloned();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    // Engines with CURVE are compared with the baseline with CURVE.
    let ratios: Vec<(String, [f64; 5])> = meds[1..]
        .iter()
        .filter(|m| m.subscriber.starts_with("engine"))
        .map(|m| {
            let base = match (&curve_base, m.subscriber.ends_with("+curve")) {
                (Some(b), true) => b,
                _ => &base,
            };
            (
                m.subscriber.clone(),
                [
                    ratio(m.msgs_per_sec, base.msgs_per_sec),
                    ratio(m.p50_ns as f64, base.p50_ns as f64),
                    ratio(m.p99_ns as f64, base.p99_ns as f64),
                    ratio(m.p999_ns as f64, base.p999_ns as f64),
                    ratio(m.cpu_ns_per_msg, base.cpu_ns_per_msg),
                ],
            )
        })
        .collect();
    let find = |n: &str| meds.iter().find(|m| m.subscriber == n);
    let comparisons: Vec<(String, [f64; 2])> = pairs
        .iter()
        .filter_map(|(what, a, b)| {
            let (a, b) = (find(a)?, find(b)?);
            Some((what.clone(), [ratio(b.msgs_per_sec, a.msgs_per_sec), ratio(b.cpu_ns_per_msg, a.cpu_ns_per_msg)]))
        })
        .collect();
    let publisher_comparisons: Vec<(String, [f64; 2])> = pub_pairs
        .iter()
        .filter_map(|(what, a, b)| {
            let (a, b) = (find(a)?, find(b)?);
            Some((
                what.clone(),
                [ratio(b.msgs_per_sec, a.msgs_per_sec), ratio(b.publisher_cpu_ns_per_msg, a.publisher_cpu_ns_per_msg)],
            ))
        })
        .collect();
    let result = BenchResult {
        kind: "bench",
        machine,
        settings,
        runs,
        medians: meds,
        ratios,
        error: (!refused.is_empty()).then(|| {
            let list: Vec<String> = refused.iter().map(|(r, n)| format!("{r}={n}")).collect();
            format!(
                "bench: damaged input (refused: {}); every run replayed only what came before the damage (said \
                 above), so these are not numbers of the whole file",
                list.join(" ")
            )
        }),
        extra: BenchExtra { publisher_runs, comparisons, publisher_comparisons, refused },
    }
    .finish(args.json, save)?;
    if !args.json {
        crate::outln!(
            "medians (cpu: every thread of the subscriber incl. libzmq's I/O threads, per delivered message):"
        );
        for m in &result.medians {
            crate::outln!(
                "  {:<22} {:>6.3} M msg/s  cpu {:>5.0} ns/msg (own threads {:>4.0})  lost {:>7}  p50 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}",
                m.subscriber,
                m.msgs_per_sec / 1e6,
                m.cpu_ns_per_msg,
                m.app_cpu_ns_per_msg,
                m.lost_total,
                human_ns(m.p50_ns),
                human_ns(m.p99_ns),
                human_ns(m.p999_ns),
                human_ns(m.max_ns),
            );
            let threads: Vec<String> = m.threads.iter().map(|(t, ns)| format!("{t} {ns:.0}")).collect();
            crate::outln!("  {:<22} per thread, ns/msg: {}", "", threads.join(", "));
        }
        crate::outln!("ratios engine / baseline (throughput: higher is better; latency and CPU: lower is better; +curve against baseline+curve):");
        for (name, r) in &result.ratios {
            crate::outln!(
                "  {:<19} throughput {:.2}x  p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x  CPU ns/msg {:.2}x",
                name,
                r[0],
                r[1],
                r[2],
                r[3],
                r[4]
            );
        }
        if !result.extra.comparisons.is_empty() {
            crate::outln!("comparisons (same feed, same runs; on a shared box only the CPU ratio is meaningful):");
            for (what, r) in &result.extra.comparisons {
                crate::outln!("  {:<24} throughput {:.2}x  CPU ns/msg {:.2}x", what, r[0], r[1]);
            }
        }
        if !result.extra.publisher_comparisons.is_empty() {
            crate::outln!("publishers (into the baseline; throughput at the subscriber, CPU of the publisher's threads incl. its I/O threads):");
            for m in result.medians.iter().filter(|m| m.subscriber.starts_with("baseline")) {
                crate::outln!(
                    "  {:<24} sends {:>6.3} M msg/s  publisher cpu {:>5.0} ns/msg",
                    m.subscriber,
                    m.publisher_msgs_per_sec / 1e6,
                    m.publisher_cpu_ns_per_msg
                );
            }
            for (what, r) in &result.extra.publisher_comparisons {
                crate::outln!("  {:<24} throughput {:.2}x  publisher CPU ns/msg {:.2}x", what, r[0], r[1]);
            }
        }
    }
    Ok(result)
}

/// `mdsub lvc-bench`: the comparison, its lines, and the result printed (`--json`) and saved (`--save`).
pub fn lvc_bench(args: &LvcBenchArgs) -> anyhow::Result<LvcResult> {
    let save = args.save.as_deref().map(SaveFile::create).transpose()?;
    crate::bench::lvc::run(args.to_config(), Lines { json: args.json })?.finish(args.json, save)
}

/// `mdsub clone-bench`: the measurements, their lines, and the result printed (`--json`) and saved (`--save`).
pub fn clone_bench(args: &CloneBenchArgs) -> anyhow::Result<CloneResult> {
    let save = args.save.as_deref().map(SaveFile::create).transpose()?;
    crate::bench::clone::run(&args.to_config(), Lines { json: args.json })?.finish(args.json, save)
}

/// `mdsub lvc-bench`: messages/s through the LVC vs a plain proxy and direct PUB→SUB (TCP loopback).
#[derive(Args, Debug, Clone)]
pub struct LvcBenchArgs {
    /// Messages per measurement (e.g. 1M).
    #[arg(long, value_parser = parse_count_nonzero, default_value = "1M", value_name = "COUNT")]
    pub count: u64,
    /// Payload bytes per message (the frame adds the topic, a NUL and the header).
    #[arg(long, value_parser = parse_bytes_usize, default_value = "100", value_name = "BYTES")]
    pub payload_bytes: usize,
    /// Distinct topics, cycled.
    #[arg(long, value_parser = parse_count_nonzero_usize, default_value = "1000", value_name = "COUNT")]
    pub symbols: usize,
    /// Runs (each measures direct, then a plain proxy, then the LVC); medians are reported.
    #[arg(long, value_parser = parse_count_nonzero_usize, default_value = "3", value_name = "COUNT")]
    pub runs: usize,
    /// Give up on a measurement after this long (reported as loss).
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub timeout: Duration,
    /// Idle strategy of the LVC thread.
    #[arg(long, value_enum, default_value_t = Idle::Backoff)]
    pub idle: Idle,
    /// Print the whole result as one JSON object on stdout (the run lines go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the whole result as JSON to this file (replaced only when the run is a result).
    #[arg(long, value_name = "FILE")]
    pub save: Option<std::path::PathBuf>,
}

impl LvcBenchArgs {
    /// The library configuration these arguments describe.
    pub fn to_config(&self) -> LvcBenchConfig {
        LvcBenchConfig {
            messages: self.count,
            payload_bytes: self.payload_bytes,
            topics: self.symbols,
            runs: self.runs,
            timeout: self.timeout,
            idle: self.idle.strategy(),
        }
    }
}

/// `mdsub clone-bench`: update throughput, snapshot time and failover time of the clone stack.
#[derive(Args, Debug, Clone)]
pub struct CloneBenchArgs {
    /// Updates sent through the server for the throughput runs (e.g. 1M).
    #[arg(long, value_parser = parse_count_nonzero, default_value = "1M", value_name = "COUNT")]
    pub updates: u64,
    /// Keys in the map for the snapshot runs (e.g. 1M).
    #[arg(long, value_parser = parse_count_nonzero, default_value = "1M", value_name = "COUNT")]
    pub keys: u64,
    /// Runs of each measurement (the median is reported).
    #[arg(long, value_parser = parse_count_nonzero_usize, default_value = "3", value_name = "COUNT")]
    pub runs: usize,
    /// Skip the failover runs (they start server processes).
    #[arg(long)]
    pub skip_failover: bool,
    /// Client silence before failover, for the failover runs (e.g. 2s).
    #[arg(long, value_parser = parse_duration, default_value = "2s", value_name = "DURATION")]
    pub silence: Duration,
    /// Print the whole result as one JSON object on stdout (the run lines go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the whole result as JSON to this file (replaced only when the run is a result).
    #[arg(long, value_name = "FILE")]
    pub save: Option<std::path::PathBuf>,
}

impl CloneBenchArgs {
    /// The library configuration these arguments describe.
    pub fn to_config(&self) -> CloneBenchConfig {
        CloneBenchConfig {
            updates: self.updates,
            keys: self.keys,
            runs: self.runs,
            skip_failover: self.skip_failover,
            silence_ms: self.silence.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }
}
