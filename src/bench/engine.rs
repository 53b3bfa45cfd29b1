//! `mdsub bench`'s engine-vs-baseline benchmark: the same feed goes to the baseline (a plain
//! single-thread SUB reader) and to each engine variant, one after the other in every run;
//! medians of the runs and engine/baseline ratios come back in the one result shape
//! ([`Results`]). The CLI (`cli::bench`) turns its flags into an [`EngineBenchConfig`], prints the
//! stamp, each run's line (through `on_run`) and the medians.

use std::time::Duration;

use serde::Serialize;

use super::median;
use super::result::{Completed, Results};
use super::run::{run_once, RunSpec, Subscriber};
use super::stamp::Machine;
use crate::agent::StopFlag;
use crate::engine::reader::{HandOff, Routing};
use crate::metrics::RunReport;
use crate::outfile::Claimed;
use crate::profile::Profile;
use crate::replay::{FilePosition, Limits, Pacing, PublisherConfig, Source};
use crate::snail::Policy;

/// Which engine layouts and publishers `--compare` adds to the runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compare {
    /// `engine/1-shard` vs `engine/2-shards`.
    pub shards: bool,
    /// `engine/by-topic` vs `engine/round-robin` (at least 2 workers).
    pub routing: bool,
    /// The batch engine with the snail's checks on (policy croak) vs off.
    pub snail: bool,
    /// Publishers flat out into the baseline: the replay vs a prebuilt reference publisher, and
    /// the replay with one thread per shard over 2 shards. Needs the generated feed.
    pub publishers: bool,
}

/// Everything one engine-vs-baseline benchmark needs.
#[derive(Debug, Clone)]
pub struct EngineBenchConfig {
    /// The engine's profile (idle and handler already overridden); the baseline takes its
    /// RCVHWM, `batch_max` and handler.
    pub profile: Profile,
    /// Engine hand-offs measured, one variant each (`engine/batch`, …).
    pub handoffs: Vec<HandOff>,
    pub compare: Compare,
    /// Also measure every subscriber with CURVE on both sides (`+curve` variants).
    pub curve: bool,
    /// `--outputs-dir`: the claimed `bench.hlog` and `bench.hgrm` of `engine/batch+outputs`.
    pub outputs: Option<[Claimed; 2]>,
    pub publisher: PublisherConfig,
    pub source: Source,
    pub pacing: Pacing,
    pub limits: Limits,
    /// Runs of every variant; medians are reported.
    pub runs: usize,
    /// The stamp and the settings the result carries (the caller has printed them).
    pub machine: Machine,
    pub settings: serde_json::Value,
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
    /// The publisher feeding this variant: messages sent per second (its own clock, the
    /// messages after the first over the span from the first's send to the last's, as the
    /// subscribers' `msgs_per_sec` counts theirs: [`crate::replay::ReplayStats::msgs_per_sec`])
    /// and CPU ns per message sent (its sending threads and its libzmq I/O threads).
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
    /// The publisher fell behind its schedule (`rate not achieved: …` at a fixed `--rate`, `pace
    /// not kept: …` at a file's `--speed`): said on stderr too. Absent when it kept it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PublisherRun {
    /// The run of `variant`'s publisher from its stats and its I/O threads' CPU time: its rate
    /// is the replay's own (n − 1 intervals over the span first..last send, the kind of figure
    /// the subscribers' `msgs_per_sec` is, [`crate::metrics::span_rate`]), not `sent / elapsed`
    /// (n messages over a time that also holds the sending threads' start and the end of stream).
    pub fn of(variant: &str, replay: &crate::replay::ReplayStats, pacing: Pacing, io_cpu_ns: u64) -> Self {
        let sent = replay.sent_total.max(1) as f64;
        PublisherRun {
            variant: variant.to_string(),
            sent: replay.sent_total,
            msgs_per_sec: replay.msgs_per_sec,
            send_cpu_ns_per_msg: replay.cpu_ns as f64 / sent,
            io_cpu_ns_per_msg: io_cpu_ns as f64 / sent,
            note: replay.schedule_note(pacing),
        }
    }
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
    /// `--from` DBN files: the records each run's replay skipped (not replayed: control and
    /// unknown types), by record type (`0x16`), as `mdsub replay` reports them.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub skipped_by_rtype: std::collections::BTreeMap<String, u64>,
    /// `--from` DBN files: symbol mappings each run's replay dropped over
    /// [`crate::feed::dbn_source::MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT`] per instrument id.
    #[serde(skip_serializing_if = "crate::diag::is_zero")]
    pub symbol_mappings_dropped: u64,
    /// `interrupted`, `runs_completed`: Ctrl-C after a whole run keeps the whole runs.
    #[serde(flatten)]
    pub completed: Completed,
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
pub fn cpu_ns_per_msg(r: &RunReport) -> f64 {
    let cpu: u64 = r.threads.iter().map(|t| t.cpu_ns).sum();
    cpu as f64 / r.delivered.max(1) as f64
}

/// CPU ns of the subscriber's own agent threads per delivered message.
pub fn app_cpu_ns_per_msg(r: &RunReport) -> f64 {
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

/// The bench variant of the engine with hand-off `h`: `engine/batch`, `engine/inline`, ….
fn engine_variant(h: HandOff) -> String {
    format!("engine/{}", h.name())
}

/// Where a benchmark is, for a progress display: measurement `k` (from 1) of the `of`
/// in run `rep` of `runs`, of `variant`, with the messages its replay scheduled so far and
/// where that replay is in its files ([`FilePosition::extent`]: None for the generated feed).
#[derive(Debug, Clone, Copy)]
pub struct Underway<'a> {
    pub rep: usize,
    pub runs: usize,
    pub k: usize,
    pub of: usize,
    pub variant: &'a str,
    pub sent: u64,
    pub position: &'a FilePosition,
}

/// Run every variant `bench.runs` times, in turn within each run, and return the medians and
/// ratios (`error` set when the input was damaged; the caller's `finish` makes it the command's
/// error). `on_run` is given each run's number and report (named by its variant) as it ends;
/// `on_progress` where a measurement is, about every 5 ms while its replay runs.
/// A stop request (Ctrl-C) ends it early: the result is then of the whole runs before it
/// (`interrupted`, `runs_completed`; the measurements of a run it cut between its variants are
/// left out, and one it cut mid-measurement is no measurement), and `None` when no run was whole.
pub fn run(
    bench: &EngineBenchConfig,
    stop: &StopFlag,
    on_run: &mut dyn FnMut(usize, &RunReport),
    on_progress: &mut dyn FnMut(&Underway<'_>),
) -> anyhow::Result<Option<BenchResult>> {
    let (profile, publisher, source) = (&bench.profile, &bench.publisher, &bench.source);
    let (pacing, limits) = (bench.pacing, bench.limits);
    let baseline = Subscriber::Baseline {
        rcvhwm_msgs: profile.rcvhwm_msgs,
        batch_max: profile.batch_max,
        handler: profile.handler,
        keys: None,
    };
    let mut variants: Vec<(String, Subscriber, PublisherConfig, Source)> =
        vec![("baseline".into(), baseline.clone(), publisher.clone(), source.clone())];
    let curve = if bench.curve { Some(curve_pair()?) } else { None };
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
    for h in &bench.handoffs {
        let mut cfg = profile.engine_config(None);
        cfg.handoff = *h;
        if *h == HandOff::Inline {
            // One core per shard, run by its reader: workers' cores are not used.
            cfg.worker_cores = vec![None; cfg.shards.len()];
        }
        let name = &engine_variant(*h);
        if let (HandOff::Batch, Some([hlog, hgrm])) = (h, &bench.outputs) {
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
        for h in &bench.handoffs {
            let name = engine_variant(*h);
            pairs.push((format!("{name}: curve / plain"), name.clone(), format!("{name}+curve")));
        }
    }
    let with_shards = |n: usize| {
        let mut p = profile.with_shards(n);
        if p.handoff == HandOff::Inline {
            p.workers = vec![Default::default(); n];
        }
        let mut pc = publisher.clone();
        pc.endpoints = vec!["tcp://127.0.0.1:*".into(); n];
        (Subscriber::Engine(Box::new(p.engine_config(None))), pc)
    };
    if bench.compare.shards {
        for (n, name) in [(1, "engine/1-shard"), (2, "engine/2-shards")] {
            let (sub, pc) = with_shards(n);
            variants.push((name.into(), sub, pc, source.clone()));
        }
        pairs.push(("2 shards / 1 shard".into(), "engine/1-shard".into(), "engine/2-shards".into()));
    }
    if bench.compare.routing {
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
    if bench.compare.snail {
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
    if bench.compare.publishers {
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
    // What the replay skipped: the same input every run, so the first run's.
    let mut skipped: Option<(std::collections::BTreeMap<String, u64>, u64)> = None;
    let mut runs_completed = 0;
    'runs: for rep in 1..=bench.runs.max(1) {
        for (k, (name, sub, publisher, source)) in variants.iter().enumerate() {
            if stop.is_stopped() {
                break 'runs;
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
            let (all, of) = (bench.runs.max(1), variants.len());
            let progress = &mut |sent, position: &FilePosition| {
                on_progress(&Underway { rep, runs: all, k: k + 1, of, variant: name, sent, position })
            };
            let mut out = match run_once(&spec, stop, progress) {
                Ok(out) => out,
                // Ctrl-C while this run waited for its subscriber: it never began.
                Err(e) if stop.is_stopped() && crate::replay::ReplayError::is_interrupted(&e) => break 'runs,
                Err(e) => return Err(e),
            };
            // A run the signal cut short measured a part of its count: not a result to show
            // (a medians table of whole runs is what bench promises).
            if stop.is_stopped() {
                break 'runs;
            }
            out.report.subscriber = name.clone();
            on_run(rep, &out.report);
            if refused.is_empty() {
                refused = out.replay.refused.clone();
            }
            skipped.get_or_insert_with(|| (out.replay.skipped_by_rtype.clone(), out.replay.symbol_mappings_dropped));
            let run = PublisherRun::of(name, &out.replay, pacing, out.publisher_io_cpu_ns);
            if let Some(note) = &run.note {
                crate::diag!("bench: run {rep} {name}: publisher: {note}");
            }
            publisher_runs.push(run);
            runs.push(out.report);
        }
        runs_completed = rep;
    }
    if runs_completed == 0 {
        return Ok(None);
    }
    // Every variant's medians, and so the ratios, are of the same whole runs.
    let completed = Completed::of(runs_completed, bench.runs.max(1));
    runs.truncate(runs_completed * variants.len());
    publisher_runs.truncate(runs_completed * variants.len());
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
    Ok(Some(BenchResult {
        kind: "bench",
        machine: bench.machine.clone(),
        settings: bench.settings.clone(),
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
        extra: {
            let (skipped_by_rtype, symbol_mappings_dropped) = skipped.unwrap_or_default();
            BenchExtra {
                publisher_runs,
                comparisons,
                publisher_comparisons,
                refused,
                skipped_by_rtype,
                symbol_mappings_dropped,
                completed,
            }
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::PublisherRun;

    /// Four messages 0.2 s apart, in a run of 1 s (its start and end of stream around them):
    /// the publisher sent at 5 msg/s, as a subscriber counts its rate. Before, it was
    /// sent / elapsed, 4 msg/s, printed beside the subscribers' span rates.
    #[test]
    fn the_publishers_rate_is_the_same_kind_of_figure_as_the_subscribers() {
        let replay = crate::replay::ReplayStats {
            sent_total: 4,
            elapsed_s: 1.0,
            msgs_per_sec: 5.0,
            cpu_ns: 400,
            ..Default::default()
        };
        let p = PublisherRun::of("baseline", &replay, crate::replay::Pacing::FlatOut, 800);
        assert_eq!(p.msgs_per_sec, crate::metrics::span_rate(4, 600_000_000, 1.0));
        assert_eq!((p.sent, p.send_cpu_ns_per_msg, p.io_cpu_ns_per_msg), (4, 100.0, 200.0));
    }
}
