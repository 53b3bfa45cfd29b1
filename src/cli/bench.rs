//! `mdsub bench`'s face: flags → [`EngineBenchConfig`] → [`crate::bench::engine::run`] → the
//! lines (the machine, commit and settings at the top, a line per run, the medians and the
//! engine/baseline ratios) or `--json`; and the faces of `lvc-bench` and `clone-bench`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use super::args::{parse_count_nonzero, parse_count_nonzero_usize, parse_duration_nonzero, Idle};
use super::engine::parse_handoff;
use super::feed::{FeedArgs, PublisherArgs};
use super::progress::{Field, Keep, RunBar};
use super::replay::{file_source, parse_speed, Speed};
use super::{describe_pacing, load_profile, override_idle_handler};
use crate::agent::StopFlag;
use crate::bench::clone::{CloneBenchConfig, CloneResult};
use crate::bench::engine::{app_cpu_ns_per_msg, cpu_ns_per_msg, BenchResult, Compare, EngineBenchConfig, Underway};
use crate::bench::lvc::{LvcBenchConfig, LvcResult};
use crate::bench::result::SaveFile;
use crate::bench::stamp::Machine;
use crate::diag::human_ns;
use crate::diag::Lines;
use crate::engine::handler::HandlerSpec;
use crate::engine::reader::HandOff;
use crate::metrics::RunReport;
use crate::outfile::Claimed;
use crate::profile::Profile;
use crate::replay::{Pacing, PublisherConfig, Source};

#[derive(Args, Debug)]
#[command(mut_arg("payload_bytes", super::feed::payload_into_the_engine))]
pub struct BenchArgs {
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Replay these files instead of the generated feed: Databento DBN
    /// (`.dbn`, `.dbn.zst`; several are merged by receive time) or one mdsub
    /// capture. The whole file is sent unless --count or --duration says less.
    /// A file with nothing to replay is refused, as is a capture without an mdsub
    /// data frame (the engine delivers none of it); a damaged one is replayed up to
    /// the damage, said once, and the result is an error (exit status 1). The
    /// generated feed's flags (--symbols, --payload-bytes, --zipf, --seed,
    /// --thread-per-shard, and --burst without --rate N) are refused with it.
    /// On a terminal (not with --json) each measurement's line says how far
    /// its replay is in the files, as replay's bar does (`42.5% by bytes
    /// read`), or by --count or --duration when one ends it first (`42.5% of
    /// 4000 msgs`).
    #[arg(long = "from", num_args = 1.., value_name = "FILE")]
    pub from: Vec<std::path::PathBuf>,
    /// With --from: a multiple of the recorded pace (`1x`, `10x`) or `max`
    /// (flat out, the default).
    #[arg(long, requires = "from", conflicts_with = "rate", value_parser = parse_speed, value_name = "Nx|max")]
    pub speed: Option<Speed>,
    #[command(flatten)]
    pub publisher: PublisherArgs,
    /// Runs of every subscriber; the medians across them are reported, each column its own.
    /// Ctrl-C after a whole run ends it with the result of the whole runs, marked interrupted.
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
    /// least 2 workers; refused with `--handler book`, whose books round-robin
    /// routing would split between the workers), `snail` (the batch engine with the snail's checks
    /// on, policy croak, vs off); and publishers: `publishers` (flat out into
    /// the baseline: the replay vs a reference publisher sending prebuilt
    /// frames on the same socket settings, and the replay with one thread per
    /// shard over 2 shards); comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = ["shards", "routing", "snail", "publishers"], value_name = "WHAT")]
    pub compare: Vec<String>,
    /// Print the whole result as one JSON object on stdout (the header and run lines go to stderr).
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "FILE", help = SAVE_HELP)]
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

/// `bench`'s progress line while a measurement runs: which (`run 2/5 engine/batch (3/4)`: run
/// 2 of 5, its third measurement of four) and how far its replay is, as `replay`'s bar says it
/// ([`RunBar`]: by its count, duration or files' position, whichever is further on, the
/// messages sent, their rate and the time left of this measurement). Drawn where replay's bar
/// is ([`super::progress_target`]), fitted to the terminal ([`super::progress::FitBar`]).
struct BenchBar {
    run: RunBar,
    /// The measurement shown (run, measurement).
    at: (usize, usize),
}

impl BenchBar {
    fn new(run: RunBar) -> Self {
        BenchBar { run, at: (0, 0) }
    }

    /// Show `u` at `now`; a new measurement starts its bar, rate and time again.
    fn show(&mut self, u: &Underway<'_>, now: Instant) {
        if (u.rep, u.k) != self.at {
            self.at = (u.rep, u.k);
            self.run.restart();
        }
        let label = format!("run {}/{} {} ({}/{}):", u.rep, u.runs, u.variant, u.k, u.of);
        self.run.show(u.sent, u.position, Some(Field::new(Keep::Label, label)), now);
    }
}

/// `--outputs-dir DIR`: made if missing (with its parents, like capacity's `--out`) and its
/// `bench.hlog` and `bench.hgrm` claimed before any run, so a folder that cannot be written, or
/// files another run writes, fail the benchmark at once rather than after its baseline.
fn claim_outputs(dir: &std::path::Path, save: Option<&std::path::Path>) -> anyhow::Result<[Claimed; 2]> {
    let [hlog, hgrm] = [dir.join("bench.hlog"), dir.join("bench.hgrm")];
    let mut named = vec![("--outputs-dir", hlog.as_path()), ("--outputs-dir", hgrm.as_path())];
    named.extend(save.map(|p| ("--save", p)));
    crate::outfile::distinct(&named).map_err(|e| super::UsageError(e.to_string()))?;
    if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
        anyhow::bail!("--outputs-dir {}: not a directory (give a folder for bench.hlog and bench.hgrm)", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--outputs-dir {}: creating it", dir.display()))?;
    let claimed = crate::outfile::claim_all(&named[..2]).map_err(super::outfile_error)?;
    let [hlog, hgrm]: [Claimed; 2] = claimed.try_into().map_err(|_| anyhow::anyhow!("two outputs claimed"))?;
    Ok([hlog, hgrm])
}

/// The book handler where some engine of the benchmark would split every book between workers
/// (round-robin routing over several: wrong books, the engine itself refuses them): refused
/// (exit 2) before anything runs. The profile was checked before `--handler` changed its handler,
/// and `--compare routing`'s round-robin case routes round-robin over at least two workers.
fn refuse_split_books(profile: &Profile, compare: &[String]) -> anyhow::Result<()> {
    if let Some(why) = profile.split_books() {
        anyhow::bail!(super::UsageError(format!("--handler {} with this profile: {why}", profile.handler)));
    }
    if profile.handler == HandlerSpec::Book && compare.iter().any(|c| c == "routing") {
        anyhow::bail!(super::UsageError(
            "--compare routing with --handler book: its round-robin case would hand each worker every few records \
             of an instrument, splitting every book between them (wrong books, which `mdsub engine` refuses); \
             compare routing with another handler"
                .into()
        ));
    }
    Ok(())
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
    refuse_split_books(&profile, &args.compare)?;
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
    let source = if args.from.is_empty() {
        Source::Generator(args.feed.generator()?)
    } else {
        file_source(&args.from, true, false, true)?.0
    };
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
        peer_timeout: crate::replay::DEFAULT_PEER_TIMEOUT,
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
    // The header and the run lines: stdout, or stderr with --json (stdout is then the JSON alone).
    let lines = Lines { json: args.json };
    lines.say(format_args!("mdsub bench  {machine}"));
    let what = if whole_file {
        format!(
            "{} ({})",
            settings["source"].as_str().unwrap_or(""),
            if matches!(source, Source::Dbn { .. }) { "DBN" } else { "capture" }
        )
    } else {
        format!("{}-byte payloads, {} symbols", args.feed.payload_bytes, args.feed.symbols)
    };
    lines.say(format_args!(
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
    ));
    lines.say(format_args!(
        "engine: profile {}, {} shard(s), {} worker(s), batch_max {}, handler {}; {} run(s), medians reported",
        profile.name,
        shards,
        profile.workers.len(),
        profile.batch_max,
        profile.handler,
        args.runs
    ));
    let cfg = EngineBenchConfig {
        profile,
        handoffs,
        compare: Compare {
            shards: args.compare.iter().any(|c| c == "shards"),
            routing: args.compare.iter().any(|c| c == "routing"),
            snail: args.compare.iter().any(|c| c == "snail"),
            publishers: args.compare.iter().any(|c| c == "publishers"),
        },
        curve: args.curve,
        outputs,
        publisher,
        source,
        pacing,
        limits,
        runs: args.runs,
        machine,
        settings,
    };
    // Where each measurement is, on replay's terms: on stderr when it is a terminal, never with
    // --json; the run lines are written above it.
    let bar = super::position_bar_on(super::progress_target(args.json), "bench");
    let mut bar = BenchBar::new(RunBar::new(bar, pacing, limits));
    let mut shown = 0;
    let show_run = &mut |rep: usize, report: &RunReport| {
        shown += 1;
        let t = report.latency.get("total").copied().unwrap_or_default();
        lines.say(format_args!(
            "  run {rep} {:<22} {:>13}  cpu {:>5.0} ns/msg (own threads {:>4.0})  sent {:>9}  lost {:>7}  p50 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}",
            report.subscriber,
            crate::diag::human_rate(report.msgs_per_sec),
            cpu_ns_per_msg(report),
            app_cpu_ns_per_msg(report),
            report.sent.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            report.lost.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            human_ns(t.p50_ns),
            human_ns(t.p99_ns),
            human_ns(t.p999_ns),
            human_ns(t.max_ns)
        ));
    };
    super::run_under_way();
    // A stop before the first whole run leaves nothing to show (exit 130); after it, the result
    // is of the whole runs, marked interrupted, and the command ends as one that has a result.
    let run = crate::bench::engine::run(&cfg, stop, show_run, &mut |u| bar.show(u, Instant::now()));
    bar.run.bar.pb.finish_and_clear();
    let result = run?.ok_or(super::Interrupted)?;
    if let Some(line) = result.extra.completed.said(args.runs, shown - result.runs.len()) {
        lines.say(format_args!("{line}"));
    }
    let result = result.finish(args.json, save)?;
    if !args.json {
        if let Some(line) = input_skipped_line(&result.extra) {
            crate::outln!("{line}");
        }
        crate::outln!(
            "medians of {} run(s){} (each column is its own median across the runs, not one run's figures; cpu: \
             every thread of the subscriber incl. libzmq's I/O threads, per delivered message):",
            result.extra.completed.runs_completed,
            if result.extra.completed.interrupted { format!(" of {}, interrupted", args.runs) } else { String::new() }
        );
        for m in &result.medians {
            crate::outln!(
                "  {:<22} {:>13}  cpu {:>5.0} ns/msg (own threads {:>4.0})  lost {:>7}  p50 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}",
                m.subscriber,
                crate::diag::human_rate(m.msgs_per_sec),
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
                    "  {:<24} sends {:>13}  publisher cpu {:>5.0} ns/msg",
                    m.subscriber,
                    crate::diag::human_rate(m.publisher_msgs_per_sec),
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

/// The report's line of what each run's replay of `--from` DBN files did not send, None when it
/// sent everything: `input: not replayed (each run), by record type: 0x16 symbol-mapping 3, 0x17
/// system 1; symbol mappings dropped 10 (over 4096 per instrument id or 16777216 in all)`.
fn input_skipped_line(extra: &crate::bench::engine::BenchExtra) -> Option<String> {
    let types: Vec<String> = (extra.skipped_by_rtype.iter())
        .map(|(rt, n)| {
            let name =
                u8::from_str_radix(rt.trim_start_matches("0x"), 16).ok().and_then(|r| dbn::RType::try_from(r).ok());
            format!("{rt} {} {n}", name.map_or("unknown", |t| t.as_str()))
        })
        .collect();
    let mut parts = Vec::new();
    if !types.is_empty() {
        parts.push(format!("not replayed (each run), by record type: {}", types.join(", ")));
    }
    if extra.symbol_mappings_dropped > 0 {
        parts.push(format!(
            "symbol mappings dropped {} ({})",
            extra.symbol_mappings_dropped,
            crate::feed::dbn_source::symbol_mapping_caps()
        ));
    }
    (!parts.is_empty()).then(|| format!("input: {}", parts.join("; ")))
}

/// `mdsub lvc-bench`: the comparison, its lines, and the result printed (`--json`) and saved (`--save`).
/// Ctrl-C after a whole run: the result of the whole runs, marked interrupted; before it,
/// [`super::Interrupted`] (exit 130).
pub fn lvc_bench(args: &LvcBenchArgs, stop: &StopFlag) -> anyhow::Result<LvcResult> {
    // Before anything is made: a refused size is a usage error (exit 2), not a run.
    let cfg = args.to_config();
    cfg.check().map_err(super::UsageError)?;
    let save = args.save.as_deref().map(SaveFile::create).transpose()?;
    super::run_under_way();
    let result = crate::bench::lvc::run(cfg, Lines { json: args.json }, stop)?.ok_or(super::Interrupted)?;
    result.finish(args.json, save)
}

/// `mdsub clone-bench`: the measurements, their lines, and the result printed (`--json`) and saved (`--save`).
/// Ctrl-C after a whole run: the result of the whole runs, marked interrupted; before it,
/// [`super::Interrupted`] (exit 130).
pub fn clone_bench(args: &CloneBenchArgs, stop: &StopFlag) -> anyhow::Result<CloneResult> {
    let save = args.save.as_deref().map(SaveFile::create).transpose()?;
    super::run_under_way();
    let result = crate::bench::clone::run(&args.to_config(), Lines { json: args.json }, stop)?;
    result.ok_or(super::Interrupted)?.finish(args.json, save)
}

/// `mdsub lvc-bench`: messages/s through the LVC vs a plain proxy and direct PUB→SUB (TCP loopback).
#[derive(Args, Debug, Clone)]
pub struct LvcBenchArgs {
    /// Messages per measurement (e.g. 1M).
    #[arg(long, value_parser = parse_count_nonzero, default_value = "1M", value_name = "COUNT")]
    pub count: u64,
    /// Payload bytes per message, up to 16Mi (the frame adds the topic, a NUL and the header).
    #[arg(long, value_parser = super::feed::parse_payload_bytes, default_value = "100", value_name = "BYTES")]
    pub payload_bytes: usize,
    /// Distinct topics, cycled: 1 to 1048576, and their frames (one per topic, built before
    /// sending) within 256 MiB.
    #[arg(long, value_parser = super::feed::parse_symbols, default_value = "1k", value_name = "COUNT")]
    pub symbols: usize,
    /// Runs (each measures direct, then a plain proxy, then the LVC); medians are reported.
    /// Ctrl-C after a whole run keeps the whole runs.
    #[arg(long, value_parser = parse_count_nonzero_usize, default_value = "3", value_name = "COUNT")]
    pub runs: usize,
    /// Give up on a measurement after this long (reported as loss).
    #[arg(long, value_parser = parse_duration_nonzero, default_value = "60s", value_name = "DURATION")]
    pub timeout: Duration,
    /// Idle strategy of the LVC thread.
    #[arg(long, value_enum, default_value_t = Idle::Backoff)]
    pub idle: Idle,
    /// Print the whole result as one JSON object on stdout (the run lines go to stderr).
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "FILE", help = SAVE_HELP)]
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

/// `--save FILE` of `bench`, `lvc-bench` and `clone-bench`: when FILE is replaced and when it is
/// left as it was ([`SaveFile`](crate::bench::result::SaveFile)).
const SAVE_HELP: &str = "Also write the whole result as JSON to this file (its path is checked before \
    the first run). FILE is replaced, whole, only by a benchmark that exits 0 with a result: all its runs, \
    or the whole runs before a Ctrl-C (marked interrupted). One that fails, or is stopped before its first \
    whole run, leaves an earlier FILE as it was";

/// `mdsub clone-bench`: update throughput, snapshot time and failover time of the clone stack.
#[derive(Args, Debug, Clone)]
pub struct CloneBenchArgs {
    /// Updates sent through the server for the throughput runs (e.g. 1M).
    #[arg(long, value_parser = parse_count_nonzero, default_value = "1M", value_name = "COUNT")]
    pub updates: u64,
    /// Keys in the map for the snapshot runs (e.g. 1M).
    #[arg(long, value_parser = parse_count_nonzero, default_value = "1M", value_name = "COUNT")]
    pub keys: u64,
    /// Runs (each measures every variant in turn: baseline, throughput, snapshot, failover);
    /// medians are reported. Ctrl-C after a whole run keeps the whole runs.
    #[arg(long, value_parser = parse_count_nonzero_usize, default_value = "3", value_name = "COUNT")]
    pub runs: usize,
    /// Skip the failover runs (they start server processes).
    #[arg(long)]
    pub skip_failover: bool,
    /// Client silence before failover, for the failover runs (e.g. 2s): more than the 1s HUGZ
    /// interval of the servers they start (a shorter one takes them for dead between heartbeats).
    #[arg(long, value_parser = parse_bench_silence, default_value = "2s", value_name = "DURATION")]
    pub silence: Duration,
    /// Idle strategy of every agent the benchmark starts: the clone servers (in this process,
    /// and the failover runs' `clone-server` processes) and the clone clients.
    #[arg(long, value_enum, default_value_t = Idle::Block)]
    pub idle: Idle,
    /// Print the whole result as one JSON object on stdout (the run lines go to stderr).
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "FILE", help = SAVE_HELP)]
    pub save: Option<std::path::PathBuf>,
}

/// `clone-bench --silence`: as clone-client's ([`super::clone::parse_silence`]), and above the
/// HUGZ interval of the servers the failover runs start (the default one, so known here).
/// Before, `--silence 0s` ended in `timed out after 5 s waiting for a snapshot`.
fn parse_bench_silence(s: &str) -> Result<Duration, String> {
    let d = super::clone::parse_silence(s)?;
    match super::clone::silence_warning(d) {
        Some(_) => Err(format!(
            "must be more than {}ms, the HUGZ interval of the servers the failover runs start: a silence not \
             above it takes them for dead between heartbeats",
            crate::clone::server::DEFAULT_HUGZ_INTERVAL_MS
        )),
        None => Ok(d),
    }
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
            idle: self.idle.strategy(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::Limits;

    #[test]
    fn a_measurement_shows_its_run_how_far_it_is_its_messages_and_their_rate() {
        use crate::replay::FilePosition;
        // Before: nothing at all while a run went (a no-op progress callback); then no fraction
        // done and no time left from the generated feed, whose count was known.
        let screen = super::super::test_screen::Screen::default();
        let target = indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let count = Limits { max_msgs: Some(10_000), duration: None };
        let fitted = super::super::position_bar_drawn_on(target, "bench").with_columns(200);
        let mut bar = BenchBar::new(RunBar::new(fitted, Pacing::FlatOut, count));
        let position = FilePosition::default();
        let u = |rep, k, sent| Underway { rep, runs: 5, k, of: 3, variant: "engine/batch", sent, position: &position };
        let t0 = Instant::now();
        let shown = |bar: &BenchBar| {
            bar.run.bar.pb.tick();
            screen.text().rsplit("<clear>").next().unwrap_or_default().trim_end().to_string()
        };
        bar.show(&u(2, 2, 0), t0);
        assert!(
            shown(&bar).ends_with("run 2/5 engine/batch (2/3): 0.0% of 10000 msgs, 0 msgs sent"),
            "{:?}",
            screen.text()
        );
        // The first message at t0, 2000 more in the half second after: their rate and the time left.
        bar.show(&u(2, 2, 1), t0);
        bar.show(&u(2, 2, 2001), t0 + Duration::from_millis(500));
        assert!(
            shown(&bar).ends_with("(2/3): 20.0% of 10000 msgs, 2001 msgs sent, 4.0 k msg/s, eta 2s"),
            "{:?}",
            screen.text()
        );
        assert_eq!(bar.run.bar.pb.position(), 200);
        // The next measurement times its own messages: no rate before its first quarter second.
        bar.show(&u(2, 3, 5), t0 + Duration::from_millis(600));
        assert!(
            shown(&bar).ends_with("run 2/5 engine/batch (3/3): 0.0% of 10000 msgs, 5 msgs sent"),
            "{:?}",
            screen.text()
        );
        bar.run.bar.pb.finish_and_clear();
        // Drawn where replay's bar is: never with --json (and not when stderr is no terminal).
        let hidden = super::super::position_bar_on(super::super::progress_target(true), "bench");
        assert!(BenchBar::new(RunBar::new(hidden, Pacing::FlatOut, count)).run.bar.pb.is_hidden());
    }

    #[test]
    fn a_silence_must_outlast_the_heartbeats() {
        let hugz = crate::clone::server::DEFAULT_HUGZ_INTERVAL_MS;
        assert!(parse_bench_silence("0s").is_err_and(|e| e.starts_with("must be more than 0")));
        for short in ["100ms", "1s"] {
            let e = parse_bench_silence(short).expect_err(short);
            assert!(e.starts_with(&format!("must be more than {hugz}ms, the HUGZ interval")), "{short}: {e}");
        }
        assert_eq!(parse_bench_silence("1001ms"), Ok(Duration::from_millis(1001)));
        assert_eq!(parse_bench_silence("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn lvc_bench_refuses_what_it_could_not_hold() {
        use clap::Parser;
        #[derive(Parser)]
        struct Probe {
            #[command(flatten)]
            lvc: LvcBenchArgs,
        }
        let parse = |argv: &[&str]| Probe::try_parse_from([&["probe"], argv].concat()).map(|p| p.lvc);
        // Before: taken, and `--payload-bytes 256Mi` built 1000 frames of 256 MiB (RSS 0.5 to 2.6 GB
        // in 6 s).
        let e = parse(&["--payload-bytes", "256Mi"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("too large: at most 16777216 bytes (16Mi)"), "{e}");
        let e = parse(&["--symbols", "2M"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("too many: at most 1048576 symbols"), "{e}");
        // Each alone within its bound, together over the frames' bound: said with the arithmetic.
        let args = parse(&["--payload-bytes", "16Mi"]).expect("16Mi is the bound");
        let e = args.to_config().check().expect_err("1000 frames of 16 MiB");
        assert!(
            e.starts_with("--symbols, --payload-bytes: 1000 symbols of 16777216-byte payloads: 1000 × (16777216 + 64")
                && e.contains("over the 256 MiB"),
            "{e}"
        );
        let args = parse(&["--payload-bytes", "16Mi", "--symbols", "15"]).expect("15 of 16 MiB");
        assert_eq!(args.to_config().check(), Ok(()));
        assert_eq!(parse(&[]).expect("defaults").to_config().check(), Ok(()));
    }
}
