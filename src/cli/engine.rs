//! `mdsub demo` and `mdsub engine`: the engine's command lines (Black Box subscriber faces).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;

use super::args::{
    parse_bind_endpoint, parse_bytes, parse_clone_server, parse_count_nonzero_usize, parse_count_usize,
    parse_duration_nonzero, parse_endpoint_list, parse_ms_in, parse_thread_count, parse_whole_ms,
    parse_whole_ms_or_off, whole_ms, Endpoint, How, Idle,
};
use super::feed::FeedArgs;
use super::progress::{Field, FitBar, Keep, RunBar};
use super::security::{apply_security, apply_what_a_local_run_can, EngineAccessArgs};
use super::{
    describe_pacing, load_profile, override_idle_handler, position_bar_on, progress_target, status_on, store_servers,
};
use crate::agent::StopFlag;
use crate::bench::run::{run_once, RunSpec, Subscriber};
use crate::engine::defaults::METRICS_INTERVAL_RANGE_MS;
use crate::engine::handler::HandlerSpec;
use crate::engine::reader::{HandOff, Routing};
use crate::engine::{Engine, EngineError};
use crate::metrics::hlog::earlier_hgrm;
use crate::metrics::hlog_file::{claim_judged, judge_previous, Note, Rotation};
use crate::metrics::settings::{Level, Settings};
use crate::metrics::RunReport;
use crate::profile::{Profile, ProfileError};
use crate::replay::{PublisherConfig, Source};
use crate::snail::{Policy, SkewMode};

/// `mdsub demo`.
#[derive(Args, Debug)]
#[command(mut_arg("payload_bytes", super::feed::payload_into_the_engine))]
pub struct DemoArgs {
    #[command(flatten)]
    pub feed: FeedArgs,
    /// Tuning profile: a TOML file, `builtin` or `auto`.
    #[arg(long, default_value = "builtin", value_name = "FILE|builtin|auto")]
    pub profile: String,
    /// Idle strategy of the engine's readers and workers (overrides the profile's).
    #[arg(long, value_enum)]
    pub idle: Option<Idle>,
    /// Worker handler: latency, book, last, verify or work:NANOS (work:200000 makes a snail).
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
    /// rest (skip the backlog for --rest, rejoin at the live position) or off
    /// [default: the profile's `[snail]`, else croak].
    #[arg(long = "snail", value_parser = parse_policy, value_name = "croak|warn|rest|off")]
    pub policy: Option<Policy>,
    /// Lag (now - intended send time) above which a message is late (e.g. 1s, 200ms)
    /// [default: the profile's `[snail]`, else 1s].
    #[arg(long, value_parser = parse_max_lag, value_name = "DURATION")]
    pub max_lag: Option<Duration>,
    /// How long the lag must stay above --max-lag to be a snail [default: the profile's `[snail]`, else 1s].
    #[arg(long, value_parser = parse_grace, value_name = "DURATION")]
    pub grace: Option<Duration>,
    /// Nothing heard (no data, no heartbeat) for this long is STOP; 0s: not judged. Counted
    /// only while the engine runs: after a pause of its own (SIGSTOP, a VM pause) of 1s or
    /// more, from its resumption [default: the profile's `[snail]`, else 5s].
    #[arg(long, value_parser = parse_whole_ms, value_name = "DURATION")]
    pub silence: Option<Duration>,
    /// Clocks: synchronised (one host, PTP/NTP) or skew-tolerant (judge lag
    /// against the lowest lag seen over --skew-window) [default: the profile's `[snail]`, else synchronised].
    #[arg(long, value_parser = parse_skew, value_name = "synchronised|skew-tolerant")]
    pub skew: Option<SkewMode>,
    /// Policy rest: how long a snail skips everything before it rejoins [default: the profile's `[snail]`, else 10s].
    #[arg(long, value_parser = parse_whole_ms, value_name = "DURATION")]
    pub rest: Option<Duration>,
    /// Skew-tolerant mode: how far back the lowest lag is taken from [default: the profile's `[snail]`, else 30s].
    #[arg(long, value_parser = parse_whole_ms, value_name = "DURATION")]
    pub skew_window: Option<Duration>,
    /// Bind the monitor PUB here (`bind:EP` or `EP`): every scream and the
    /// state of every reader and worker (docs/SNAIL.md).
    #[arg(long, value_parser = parse_bind_endpoint, value_name = "[bind:]EP")]
    pub monitor: Option<Endpoint>,
}

impl SnailArgs {
    /// Apply the flags given to `profile`'s `[snail]`.
    pub fn apply(&self, profile: &mut Profile) -> anyhow::Result<()> {
        let s = &mut profile.snail;
        // The snail's settings are whole milliseconds: the flags' parsers refuse a finer
        // duration (`--max-lag 500us` became 0 ms, then "profile field `snail.max_lag_ms`: must be at least 1").
        if let Some(p) = self.policy {
            s.policy = p;
        }
        if let Some(d) = self.max_lag {
            s.max_lag_ms = whole_ms(d);
        }
        if let Some(d) = self.grace {
            s.grace_ms = whole_ms(d);
        }
        if let Some(d) = self.silence {
            s.silence_ms = whole_ms(d);
        }
        if let Some(k) = self.skew {
            s.skew = k;
        }
        if let Some(d) = self.rest {
            s.rest_ms = whole_ms(d);
        }
        if let Some(d) = self.skew_window {
            s.skew_window_ms = whole_ms(d);
        }
        if let Some(ep) = &self.monitor {
            s.monitor = Some(ep.endpoint.clone());
        }
        Ok(())
    }

    /// The line for a `[snail]` field of `profile` the check refused with `message`, naming
    /// the flags of these that set it (`None`: none did, the profile is at fault).
    pub fn refused(&self, profile: &Profile, field: &str, message: &str) -> Option<String> {
        let s = &profile.snail;
        let ms = |v: u64| crate::diag::human_duration_of(Duration::from_millis(v));
        match field {
            "snail.skew_window_ms" => {
                let given: Vec<String> = [
                    self.skew.map(|k| format!("--skew {}", k.name())),
                    self.skew_window.map(|d| format!("--skew-window {}", crate::diag::human_duration_of(d))),
                    self.grace.map(|d| format!("--grace {}", crate::diag::human_duration_of(d))),
                ]
                .into_iter()
                .flatten()
                .collect();
                (!given.is_empty()).then(|| {
                    format!(
                        "{}: skew-tolerant lag is judged against the lowest lag over the skew window, which \
                         must be longer than the grace to catch lag that grows (skew window {}, grace {}): \
                         give a longer --skew-window or a shorter --grace",
                        given.join(" with "),
                        ms(s.skew_window_ms),
                        ms(s.grace_ms)
                    )
                })
            }
            "snail.max_lag_ms" => {
                self.max_lag.map(|d| format!("--max-lag {}: {message}", crate::diag::human_duration_of(d)))
            }
            "snail.monitor" => self.monitor.as_ref().map(|ep| format!("--monitor {}: {message}", ep.endpoint)),
            _ => None,
        }
    }
}

/// A metrics interval: whole milliseconds inside [`METRICS_INTERVAL_RANGE_MS`].
pub fn parse_metrics_interval(s: &str) -> Result<Duration, String> {
    parse_ms_in(s, METRICS_INTERVAL_RANGE_MS)
}

/// `--forget-silent-after`: whole milliseconds, 2s at least
/// ([`FORGET_SILENT_AFTER_MIN_MS`](crate::engine::defaults::FORGET_SILENT_AFTER_MIN_MS)), or off.
fn parse_forget_silent_after(s: &str) -> Result<Duration, String> {
    let d = parse_whole_ms_or_off(s)?;
    match crate::engine::defaults::forget_silent_after_problem(whole_ms(d)) {
        Some(why) => Err(why),
        None => Ok(d),
    }
}

/// `--max-lag`: whole milliseconds inside [`MAX_LAG_RANGE_MS`](crate::snail::defaults::MAX_LAG_RANGE_MS).
fn parse_max_lag(s: &str) -> Result<Duration, String> {
    parse_ms_in(s, crate::snail::defaults::MAX_LAG_RANGE_MS)
}

/// `--grace`: whole milliseconds inside [`GRACE_RANGE_MS`](crate::snail::defaults::GRACE_RANGE_MS).
fn parse_grace(s: &str) -> Result<Duration, String> {
    parse_ms_in(s, crate::snail::defaults::GRACE_RANGE_MS)
}

/// Parse a snail policy name.
pub fn parse_policy(s: &str) -> Result<Policy, String> {
    Policy::from_name(s).ok_or_else(|| "not a snail policy (croak, warn, rest or off)".to_string())
}

/// Parse a clock-skew mode.
pub fn parse_skew(s: &str) -> Result<SkewMode, String> {
    match s {
        "synchronised" | "synchronized" => Ok(SkewMode::Synchronised),
        "skew-tolerant" => Ok(SkewMode::Tolerant),
        _ => Err("not a clock mode (synchronised or skew-tolerant)".into()),
    }
}

/// The report a croaking engine left, if `e` is a croak.
fn croak_report(e: &anyhow::Error) -> Option<&RunReport> {
    match e.downcast_ref::<EngineError>() {
        Some(EngineError::Croaked(c)) => Some(&c.report),
        _ => None,
    }
}

/// A run whose `--hlog`/`--hgrm` writes failed is not a success: the files are incomplete. The
/// first failure was said when it happened; this ends the command with exit status 1
/// ([`crate::engine::outputs_failure`], which its last status in the store says too).
fn outputs_written(report: &RunReport) -> anyhow::Result<()> {
    match crate::engine::outputs_failure(report.metrics_files_incomplete()) {
        Some(why) => bail!(why),
        None => Ok(()),
    }
}

fn print_report(report: &RunReport, json: bool) -> anyhow::Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(report)?);
    } else {
        crate::out!("{}", report.render());
    }
    Ok(())
}

pub const DEMO_RATE: u64 = 100_000;
pub const DEMO_DURATION: Duration = Duration::from_secs(3);

/// Run `mdsub demo`: a generated feed replayed into the engine in one process.
pub fn demo(args: &DemoArgs, stop: &StopFlag) -> anyhow::Result<RunReport> {
    let mut profile = load_profile(&args.profile)?;
    override_idle_handler(&mut profile, args.idle, args.handler);
    args.snail.apply(&mut profile)?;
    super::check_profile_with(&profile, &args.profile, |field, message| {
        args.snail.refused(&profile, field, message).map(|line| super::UsageError(line).into())
    })?;
    args.feed.check_fits(profile.max_msg_bytes)?;
    if let Some(note) = verify_unchecked_order(&profile) {
        crate::diag!("{note}");
    }
    let shards = profile.shards.len();
    let pacing = args.feed.pacing(Some(DEMO_RATE));
    let limits = args.feed.limits(Some(DEMO_DURATION));
    let mut engine = profile.engine_config(None);
    apply_what_a_local_run_can("demo", &args.profile, &profile.security, Some(&mut engine))?;
    let spec = RunSpec {
        publisher: PublisherConfig { endpoints: vec!["tcp://127.0.0.1:*".into(); shards], ..Default::default() },
        source: Source::Generator(args.feed.generator()?),
        pacing,
        limits,
        subscriber: Subscriber::Engine(Box::new(engine)),
        drain_timeout: Duration::from_secs(30),
        say_refusals: true,
    };
    if !args.json {
        crate::outln!(
            "mdsub demo: {} of {}-byte payloads over {} symbols, {}, {} shard(s), {} worker(s), profile {}",
            limits.duration.map(crate::diag::human_duration_of).unwrap_or_else(|| "a run".into()),
            args.feed.payload_bytes,
            args.feed.symbols,
            describe_pacing(pacing),
            shards,
            profile.workers.len(),
            profile.name
        );
        crate::outln!(
            "publisher: XPUB over TCP loopback, lossless (XPUB_NODROP), SNDHWM {}",
            spec.publisher.sndhwm_msgs
        );
    }
    // The replay's bar, as `replay` draws it.
    let mut bar = RunBar::new(position_bar_on(progress_target(args.json), "replay"), pacing, limits);
    let mut sending = false;
    super::run_under_way();
    let out = run_once(&spec, stop, &mut |n, position| {
        if n > 0 && !sending {
            // As `replay` says it: the handshake is done, a Ctrl-C from here gets a report.
            sending = true;
            crate::diag!("subscribed: sending");
        }
        bar.show(n, position, None, std::time::Instant::now())
    });
    bar.bar.pb.finish_and_clear();
    match out {
        Ok(out) => {
            if out.replay.interrupted {
                let drain = crate::diag::human_duration_of(crate::bench::run::INTERRUPTED_DRAIN);
                // Stopped at the drain, the engine still knows its loss up to the last message
                // that arrived (the session counted without its end of stream), so a known loss
                // alone does not say it read the end of stream; no session left unended does.
                let read_to_the_end = out.report.lost.is_some() && out.report.unended_sessions == 0;
                let engine = match read_to_the_end {
                    true => "the engine read up to it".to_string(),
                    false => format!("the engine did not reach it within the {drain} drain and was stopped"),
                };
                crate::diag!(
                    "interrupted: the publisher stopped after {} messages and sent its end of stream; {engine}",
                    out.replay.sent_total
                );
            }
            print_report(&out.report, args.json)?;
            if let Some(note) = out.replay.rate_note() {
                // On stderr: with --json, stdout is the report alone.
                crate::diag!("demo: publisher: {note}");
            }
            outputs_written(&out.report)?;
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
    #[arg(long, default_value = "builtin", value_name = "FILE|builtin|auto")]
    pub profile: String,
    /// Publisher endpoint(s), `connect:EP` or `EP` to connect, `bind:EP` for
    /// publishers that connect to the engine: each use of the flag is one
    /// shard (replacing the profile's shards: shard k keeps the profile's shard
    /// k's interface, cores and subscriptions; one the profile lacks runs
    /// unpinned, subscribed to everything); `EP1,EP2` puts two publishers on
    /// one shard. The same publisher twice is refused. Each link is watched: a loss is logged with its reason
    /// and counted (the report's `links`), one libzmq will not reconnect (a
    /// frame over max_msg_bytes) is connected again. On a bound endpoint
    /// libzmq says only that a publisher's connection ended (a frame over
    /// max_msg_bytes drops it too): each end is logged and counted
    /// (`publisher_disconnects`).
    #[arg(long, value_parser = parse_endpoint_list, value_name = "[bind:|connect:]EP[,EP…]")]
    pub endpoint: Vec<Vec<Endpoint>>,
    /// Topic prefix to subscribe (repeatable; default everything).
    #[arg(long = "subscribe", value_name = "PREFIX")]
    pub subscribe: Vec<String>,
    /// Number of workers (overrides the profile's, unpinned; 1 to 256).
    #[arg(long, value_parser = parse_thread_count, value_name = "COUNT")]
    pub workers: Option<usize>,
    /// Worker handler: latency, book (order books from DBN records), last (last
    /// value per topic), verify (per-topic order check) or work:NANOS. Each
    /// worker's last and verify keep at most 2 Mi topics (last: 512 MiB), book
    /// 256 Ki instruments, 4 Mi resting orders and 16 Ki price levels a side; more is refused, counted
    /// (`refused_*` in the report's handler line) and said on stderr, as is a payload book cannot
    /// read as a DBN record (`not_dbn`).
    #[arg(long)]
    pub handler: Option<HandlerSpec>,
    /// Hand-off from readers to workers: batch (one message per worker per
    /// drain round), per-message, or inline (no hand-off: each shard's reader
    /// runs the handler itself; needs one worker per shard, e.g. --workers 1
    /// with one shard).
    #[arg(long, value_parser = parse_handoff)]
    pub handoff: Option<HandOff>,
    /// Routing to workers: by-topic (each topic's order kept; with `--handler book` a DBN record
    /// goes by its publisher id and instrument id, so a renamed instrument keeps its worker) or round-robin
    /// (even load, no per-topic order across workers; refused with `--handler book` over several
    /// workers, which would each build part of every instrument's book).
    #[arg(long, value_parser = parse_routing)]
    pub routing: Option<Routing>,
    /// Idle strategy of the engine's readers and workers (overrides the profile's).
    #[arg(long, value_enum)]
    pub idle: Option<Idle>,
    /// End-of-stream frames (one per publisher session) each shard waits for
    /// before the engine ends, N exactly; by default one per endpoint, and one from every
    /// publisher session the shard saw live (an endpoint behind a proxy such as `mdsub lvc`
    /// carries several publishers; a session its publisher restarted, or known only from a
    /// cache, is not waited for), and on a bound endpoint one from every publisher connected;
    /// 0 runs until Ctrl-C. Loss is known once every shard heard one publisher session per
    /// endpoint it connects to (or N) to an end; sessions without an end of stream at the end
    /// count, in `sent` and `lost`, to their last arrived message (floors, said).
    #[arg(long, value_parser = parse_count_usize, value_name = "COUNT")]
    pub expect_eos: Option<usize>,
    /// Stop anyway after this long (e.g. 90s), also while the workers still handle a backlog
    /// after the end of stream (within one hand-off's handling); the report says so and counts
    /// what was left as `not_handled`. An engine stopped so that delivered nothing while a link
    /// of it never came up exits 1, naming the links.
    #[arg(long, value_parser = parse_duration_nonzero, value_name = "DURATION")]
    pub max_duration: Option<Duration>,
    /// Forget a publisher of which nothing at all (no data, no heartbeat, no end of stream) was
    /// heard for this long (e.g. 5m, 2s at least; 0s or off: never) [default: the profile's
    /// forget_silent_after_ms, else 5m]. A publisher killed without an end of stream under an
    /// id never heard again is otherwise held with its topics for the rest of the run. Its
    /// open session is counted as unended to its last arrived message (the report's
    /// `vanished`), its topics are released, and it is said once. A live publisher heartbeats
    /// after 1s without data, so a quiet one is never forgotten; and only once, besides, a
    /// publisher connection of the shard ended after it was last heard (killed, or its host
    /// gone), or another publisher was heard well inside its silence on the shard's one open
    /// connection (a proxy's: lvc, tap, a forwarder, whose connection outlives the publishers
    /// behind it; a proxy held back as a whole silences them all, and forgets none). One
    /// held back (a lossless replay waiting on another subscriber) keeps its own connection up;
    /// behind a proxy it is said vanished if another behind it flows, and taken back when it
    /// resumes. One heard again later (a link down that long) is taken up where it was; a new
    /// session under its id is its restart. Not on a shard with a --subscribe filter: a live publisher's data on other
    /// topics does not reach it, so its silence says nothing.
    #[arg(long, value_parser = parse_forget_silent_after, value_name = "DURATION")]
    pub forget_silent_after: Option<Duration>,
    #[command(flatten)]
    pub snail: SnailArgs,
    #[command(flatten)]
    pub outputs: OutputArgs,
    #[command(flatten)]
    pub access: EngineAccessArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where the engine publishes latency and counters while it runs.
#[derive(Args, Debug, Default, Clone)]
pub struct OutputArgs {
    /// Write an HdrHistogram interval log (V2 compressed, tags shardK.wire,
    /// shardK.queue, shardK.total; values in ns) every metrics interval. Like
    /// --hgrm, the file is locked for the run: one another process writes is
    /// refused before the run starts. It grows for as long as the engine runs, by
    /// three lines per shard every interval, about 3 KB each (more for a wider
    /// spread of latencies): at the 1s interval about 9 KB/s, some 750 MB a day
    /// per shard; a longer --metrics-interval shrinks it as much, and
    /// --hlog-rotate-every/--hlog-rotate-bytes bound it. Moved away or emptied
    /// by an external logrotate (rename, or copytruncate), it is started anew at
    /// the next interval, with no signal (SIGHUP ends the engine). An earlier
    /// run's FILE is never lost: it is closed first, as a rotation would close
    /// it (named by its own start), and said; a FILE that is not an interval
    /// log is refused and left as it was.
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,
    /// Close the --hlog FILE and start a new one as the first interval ends at
    /// or after each multiple of DURATION in UTC (e.g. 1h: on the hour). The
    /// closed file keeps its intervals under FILE's name stamped with its start
    /// (run.hlog: run.20261206T170000.002Z.hlog), a whole interval log with
    /// its own header; no interval is split. FILE stays locked throughout. On a
    /// file system without hard links (vfat) FILE is renamed to the closed
    /// name, then the new file to FILE: missing for a moment (said once),
    /// neither rename replacing a file. The new FILE keeps FILE's permission
    /// bits (0777), and its owner and group where the run may give them.
    #[arg(long, requires = "hlog", value_parser = parse_duration_nonzero, value_name = "DURATION")]
    pub hlog_rotate_every: Option<Duration>,
    /// Close the --hlog FILE, as --hlog-rotate-every does, as the first
    /// interval ends at which it holds BYTES or more (e.g. 256Mi): a file
    /// exceeds it by at most one interval's lines.
    #[arg(long, requires = "hlog", value_parser = parse_bytes, value_name = "BYTES")]
    pub hlog_rotate_bytes: Option<u64>,
    /// Closed --hlog files kept (of FILE's name, earlier runs' too); older ones
    /// are removed at the start and at each rotation, oldest first, each said on stderr
    /// [default: 24].
    #[arg(long, value_parser = parse_count_nonzero_usize, value_name = "COUNT")]
    pub hlog_keep: Option<usize>,
    /// Write the whole run's percentile spectrum of the total stage (.hgrm,
    /// values in ms) at the end, and the spectrum so far at most once a second
    /// while it runs (whole: a new file renamed over FILE), so a run killed
    /// with kill -9 leaves FILE whole. An earlier run's spectrum in FILE is kept,
    /// not written over: closed under FILE's name stamped with the file's time
    /// (run.20261206T170000.002Z.hgrm), and said; a FILE that is not a
    /// spectrum is refused and left as it was. Each new file keeps FILE's
    /// permission bits (0777: not setuid, setgid or sticky), and its owner and
    /// group where the run may give them.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (a bare PORT
    /// listens on 127.0.0.1; port 0 picks one, printed on stderr). It binds:
    /// `bind:` may be written before it, as on every endpoint flag.
    #[arg(long, value_parser = parse_listen, value_name = "[bind:][ADDR:]PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// How often histograms are collected, logged and published (e.g. 1s)
    /// [default: the profile's `metrics_interval_ms`, else 1s].
    #[arg(long, value_parser = parse_metrics_interval, value_name = "DURATION")]
    pub metrics_interval: Option<Duration>,
    /// The engine's name in metrics and status (default HOST-PID).
    #[arg(long, value_parser = parse_engine_id, value_name = "NAME")]
    pub engine_id: Option<String>,
    /// Clone store server (`[connect:]tcp://HOST:P`; twice for a Binary Star
    /// pair): publish status under /mdsub/status/ENGINE-ID/ every interval and
    /// take live settings from /mdsub/config/ENGINE-ID/NAME.
    #[arg(long, value_parser = parse_clone_server, value_name = "[connect:]tcp://HOST:P")]
    pub store: Vec<Endpoint>,
    /// What the engine says on stderr while it runs: error, warn (and loss: a
    /// `loss:` line per metrics interval with new gaps, at most one a second), info (the default;
    /// and publisher restarts and ends of stream) or debug (and a line per
    /// shard per interval); a live setting too.
    #[arg(long, value_parser = Level::parse, value_name = "LEVEL")]
    pub log_level: Option<Level>,
}

impl OutputArgs {
    /// Apply to an engine configuration.
    pub fn apply(&self, cfg: &mut crate::engine::EngineConfig) -> anyhow::Result<()> {
        // Checked before anything starts (the store is reached after the engine started).
        store_servers(&self.store)?;
        if let Some(i) = self.metrics_interval {
            cfg.metrics_interval = i;
        }
        if let Some(id) = &self.engine_id {
            cfg.engine_id = Some(id.clone());
        }
        // Claimed now, before the run: a file another run writes is refused, not shared.
        let named: Vec<(&str, &std::path::Path)> = [("--hlog", &self.hlog), ("--hgrm", &self.hgrm)]
            .into_iter()
            .filter_map(|(flag, path)| Some((flag, path.as_deref()?)))
            .collect();
        // All locked first, then both judged (a file that is not an interval log or a spectrum
        // refused), and only then anything kept or emptied: a refused run leaves every file as
        // it was, and an earlier run's files are kept under their start's name.
        let mut locked = crate::outfile::lock_all(&named).map_err(super::outfile_error)?.into_iter();
        let (hlog, hgrm) =
            (self.hlog.as_ref().and_then(|_| locked.next()), self.hgrm.as_ref().and_then(|_| locked.next()));
        cfg.outputs.hlog_rotation = self.hlog_rotation(hlog.as_ref())?;
        let hlog = hlog.map(judge_previous).transpose()?;
        let hgrm = hgrm
            .map(|h| crate::outfile::judge_earlier(h, "an HdrHistogram percentile spectrum", earlier_hgrm))
            .transpose()?;
        // Both checked before either is kept: a spectrum's closed name taken used to be found
        // after the interval log was kept aside (and older closed logs removed).
        for judged in hlog.iter().chain(hgrm.iter()) {
            judged.check()?;
        }
        // The spectrum claimed first: the interval log's claim also removes closed logs beyond
        // --hlog-keep, the last step, taken once nothing else can refuse the run.
        let hgrm = hgrm.map(|h| h.claim()).transpose()?;
        if let Some(hlog) = hlog {
            let (claimed, notes) = claim_judged(hlog, &cfg.outputs.hlog_rotation)?;
            for note in notes {
                match note {
                    Note::Said(line) | Note::Removed(line) | Note::Started(line) => {
                        crate::diag!("metrics: --hlog: {line}")
                    }
                    Note::Error(e) => crate::diag!("metrics: --hlog: {e} (the run goes on)"),
                }
            }
            cfg.outputs.hlog = Some(claimed);
        }
        if let Some((claimed, kept)) = hgrm {
            if let Some(line) = kept {
                crate::diag!("metrics: --hgrm: {line}");
            }
            cfg.outputs.hgrm = Some(claimed);
        }
        cfg.outputs.listen = self.metrics_listen;
        Ok(())
    }
}

impl OutputArgs {
    /// `--hlog-rotate-every`, `--hlog-rotate-bytes` and `--hlog-keep` for the claimed `--hlog`.
    fn hlog_rotation(&self, hlog: Option<&crate::outfile::Locked>) -> anyhow::Result<Rotation> {
        let rotation = Rotation {
            every: self.hlog_rotate_every,
            bytes: self.hlog_rotate_bytes,
            keep: self.hlog_keep.unwrap_or(crate::metrics::hlog_file::DEFAULT_KEEP),
        };
        if self.hlog_keep.is_some() && !rotation.is_on() {
            bail!("--hlog-keep: the --hlog file is never closed without --hlog-rotate-every or --hlog-rotate-bytes");
        }
        if let Some(h) = hlog.filter(|h| rotation.is_on() && !h.is_regular()) {
            bail!("{}: not a regular file, so it cannot be rotated; give a file, or no --hlog-rotate-*", h.named());
        }
        Ok(rotation)
    }

    /// After the engine started: the log level, then the status agent.
    pub fn start_live(&self, engine: &mut Engine) -> anyhow::Result<()> {
        if let Some(l) = self.log_level {
            engine.log_level().set(l);
        }
        if self.store.is_empty() {
            return Ok(());
        }
        let servers = store_servers(&self.store)?;
        engine.start_store(servers, engine_settings(engine)).context("starting the status agent")?;
        Ok(())
    }
}

/// The settings an engine takes while it runs, from
/// `/mdsub/config/ENGINE-ID/NAME` in the clone store. Snail thresholds and
/// policy register here too, the same way (`snail.…`).
pub fn engine_settings(engine: &Engine) -> Settings {
    let mut s = Settings::default();
    let interval = engine.metrics_interval_ns();
    let now = Duration::from_nanos(interval.load(std::sync::atomic::Ordering::Relaxed));
    register_duration(
        &mut s,
        "metrics_interval",
        "how often histograms are collected, logged and published (10ms to 1h, e.g. 500ms)",
        now,
        METRICS_INTERVAL_RANGE_MS,
        move |d| interval.store(d.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed),
    );
    let snail = engine.snail().clone();
    let now = snail.current();
    let board = snail.clone();
    register_duration(
        &mut s,
        "snail_max_lag",
        "the snail's max lag: above it for longer than snail_grace is a SNAIL (1ms to 1h, e.g. 500ms)",
        Duration::from_nanos(now.max_lag_ns),
        crate::snail::defaults::MAX_LAG_RANGE_MS,
        move |d| board.set_max_lag_ns(d.as_nanos() as u64),
    );
    let board = snail.clone();
    register_duration(
        &mut s,
        "snail_grace",
        "how long lag may stay above snail_max_lag before it is a SNAIL (0s to 1h, e.g. 300ms)",
        Duration::from_nanos(now.grace_ns),
        crate::snail::defaults::GRACE_RANGE_MS,
        move |d| board.set_grace_ns(d.as_nanos() as u64),
    );
    let board = snail;
    s.register("snail_policy", "croak, warn, rest or off", now.policy.name().to_string(), move |raw| {
        let p = Policy::from_name(raw.trim()).ok_or_else(|| "not one of croak, warn, rest, off".to_string())?;
        board.set_policy(p);
        Ok(p.name().to_string())
    });
    let log = engine.log_level();
    s.register("log_level", "error, warn, info or debug", log.get().name().to_string(), move |raw| {
        let l = Level::parse(raw)?;
        log.set(l);
        Ok(l.name().to_string())
    });
    s
}

/// Register a live duration setting inside `range_ms` (whole milliseconds, the range its flag
/// and profile field take too); `apply` puts an accepted value in force.
fn register_duration(
    s: &mut Settings,
    name: &str,
    help: &'static str,
    now: Duration,
    range_ms: std::ops::RangeInclusive<u64>,
    apply: impl Fn(Duration) + Send + 'static,
) {
    s.register(name, help, crate::diag::human_duration_of(now), move |raw| {
        let d = parse_ms_in(raw, range_ms.clone())?;
        apply(d);
        Ok(crate::diag::human_duration_of(d))
    });
}

/// An engine id: one path segment of the store's keys (`/mdsub/status/ID/`) and a metrics
/// label, so not empty and without `/`, spaces, quotes, backslashes or line breaks. Refused
/// here, by the flag's parser (exit 2 with the usage); it was a plain error after parsing.
pub fn parse_engine_id(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty: the engine needs a name (leave the flag out for HOST-PID)".into());
    }
    match s.chars().find(|c| matches!(c, '/' | '"' | '\\') || c.is_whitespace()) {
        Some(c) => Err(format!(
            "holds {c:?}: the id is one segment of the store's keys (/mdsub/status/ID/); use letters, digits, '-', \
             '_' or '.'"
        )),
        None => Ok(s.to_string()),
    }
}

/// `PORT` (on 127.0.0.1) or `ADDR:PORT`, either after an optional `bind:` (a listener binds;
/// `connect:` is refused). A value refused says what is wrong with it: the port out of range or
/// not a number, no port, no address before the port, an address that is no IP address (a
/// name is not looked up), an IPv6 address outside its brackets (before: `not a listen
/// address` for each of them).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if s.starts_with("connect:") {
        return Err("a listen address binds: write bind:PORT, bind:ADDR:PORT or leave the prefix out".into());
    }
    let s = s.strip_prefix("bind:").unwrap_or(s);
    let refused = |why: String| {
        format!("{why}; accepted: [bind:]PORT (on 127.0.0.1) or [bind:]ADDR:PORT, ADDR an IP address, e.g. 9464, 0.0.0.0:9464 or [::1]:9464")
    };
    // The port named by itself inside ADDR:PORT; clap already quotes a value that is one.
    let port = |p: &str| -> Result<u16, String> {
        let named = if p == s { "the port".to_string() } else { format!("the port `{p}`") };
        match p.parse::<u16>() {
            Ok(port) => Ok(port),
            Err(_) if p.is_empty() => Err(refused("no port after the address".into())),
            Err(_) if p.bytes().all(|b| b.is_ascii_digit()) => {
                Err(refused(format!("{named} is out of range (0 to 65535)")))
            }
            Err(_) => Err(refused(format!("{named} is not a number (0 to 65535)"))),
        }
    };
    if s.is_empty() {
        return Err(refused("empty".into()));
    }
    // A bare port (`9464`), or what was meant for one (`99999`, `-1`).
    if !s.contains(':') && !s.contains('.') {
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if digits(s.strip_prefix('-').unwrap_or(s)) {
            return port(s).map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        }
        return Err(refused("neither a port nor ADDR:PORT".into()));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match s.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => return Err(refused("no port after the address".into())),
        Ok(std::net::IpAddr::V6(_)) => {
            return Err(refused(
                "no port after the address (an IPv6 address is written in brackets, the port after them: [ADDR]:PORT)"
                    .into(),
            ))
        }
        Err(_) => {}
    }
    let (host, p) = match s.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((v6, rest)) => (v6, rest.strip_prefix(':').unwrap_or(rest)),
        None => s.rsplit_once(':').unwrap_or((s, "")),
    };
    let port = port(p)?;
    if host.is_empty() {
        return Err(refused(format!("no address before the port (`{port}` alone listens on 127.0.0.1)")));
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(_)) if !s.starts_with('[') => {
            Err(refused(format!("an IPv6 address is written in brackets: [{host}]:{port}")))
        }
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => Err(refused(format!(
            "the address `{host}` is not an IP address (a listener binds an address of this host; a name is not looked up)"
        ))),
    }
}

/// Parse a hand-off name: `batch`, `per-message` or `inline`.
pub fn parse_handoff(s: &str) -> Result<HandOff, String> {
    [HandOff::Batch, HandOff::PerMessage, HandOff::Inline]
        .into_iter()
        .find(|h| h.name() == s)
        .ok_or_else(|| "not a hand-off (batch, per-message or inline)".to_string())
}

/// Parse a routing name: `by-topic` or `round-robin`.
pub fn parse_routing(s: &str) -> Result<Routing, String> {
    match s {
        "by-topic" => Ok(Routing::ByTopic),
        "round-robin" => Ok(Routing::RoundRobin),
        _ => Err("not a routing (by-topic or round-robin)".into()),
    }
}

/// Validate the profile the flags changed. A refusal of what a flag set names the flag and is
/// a refused flag (exit 2), as is no `--endpoint` with the builtin or `auto` profile (they list
/// no endpoints: that is a missing flag, not the fault of a profile nobody typed); the rest
/// names the profile (`--profile FILE: profile field …`, exit 1).
fn check_flags_on_profile(args: &EngineArgs, profile: &Profile) -> anyhow::Result<()> {
    super::check_profile_with(profile, &args.profile, |field, message| {
        // A file a flag named that cannot be used is no usage error (exit 1), as when it is read.
        if let Some(flag) = args.access.flag_of(field) {
            return Some(anyhow::anyhow!("{flag}: {message}"));
        }
        refused_flag(args, profile, field, message).map(|line| super::UsageError(line).into())
    })?;
    let of_profile = |e: ProfileError| anyhow::Error::new(e).context(format!("--profile {}", args.profile));
    // No --endpoint and no shard of the profile lists one: a missing flag (exit 2), whichever
    // profile it is; a profile that lists some but leaves a shard without is the profile's fault.
    if args.endpoint.is_empty() && profile.shards.iter().all(|s| s.endpoints.is_empty() && s.binds.is_empty()) {
        let which = match crate::profile::Origin::of(&args.profile).made_by() {
            Some(word) => format!("the {word} profile"),
            None => format!("profile {}", args.profile),
        };
        bail!(super::UsageError(format!(
            "no endpoint: give --endpoint EP (once per shard), or a --profile FILE whose shards list endpoints \
             ({which} lists none)"
        )));
    }
    profile.check_endpoints().map_err(of_profile)
}

/// The line for a profile `field` the check refused with `message`, when a flag of `args` set
/// it (`None`: the profile did).
fn refused_flag(args: &EngineArgs, profile: &Profile, field: &str, message: &str) -> Option<String> {
    let shards = profile.shards.len();
    let endpoints = (!args.endpoint.is_empty()).then(|| format!("--endpoint given {shards} time(s)"));
    match field {
        "shards" => endpoints.map(|flag| format!("{flag}: {message}")),
        f if f.ends_with(".subscribe") && !args.subscribe.is_empty() => Some(format!("--subscribe: {message}")),
        "handoff" => {
            let mut given: Vec<String> = [
                args.handoff.map(|h| format!("--handoff {}", h.name())),
                args.workers.map(|w| format!("--workers {w}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            if given.is_empty() {
                given.extend(endpoints);
            }
            (!given.is_empty()).then(|| {
                format!(
                    "{}: `inline` runs each shard's handler on its reader, so it needs exactly one worker per \
                     shard ({shards} shard(s), {} worker(s)): give --workers {shards}, or --handoff batch",
                    given.join(" with "),
                    profile.workers.len()
                )
            })
        }
        // An endpoint the flag gave (its source, the same publisher twice).
        f if endpoints.is_some()
            && f.starts_with("shards[")
            && (f.contains("].endpoints[") || f.contains("].binds[")) =>
        {
            Some(format!("--endpoint: {message}"))
        }
        f if f.starts_with("snail.") => args.snail.refused(profile, f, message),
        "routing" => {
            let given: Vec<String> = [
                args.handler.map(|h| format!("--handler {h}")),
                args.routing.map(|r| format!("--routing {}", r.name())),
                args.workers.map(|w| format!("--workers {w}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            (!given.is_empty()).then(|| format!("{}: {message}", given.join(" with ")))
        }
        _ => None,
    }
}

/// `--endpoint` given: each use of it is a shard, replacing the profile's shards. Shard k
/// keeps the profile's shard k (its interface, cores and subscriptions) with the flag's
/// endpoints; a shard the profile does not have runs unpinned, from the interface the routing
/// table picks, subscribed to everything. When the profile places its shards (an interface or
/// a core), the line to say so about those beyond it.
fn shards_from_flags(args: &EngineArgs, profile: &mut Profile) -> Option<String> {
    if args.endpoint.is_empty() {
        return None;
    }
    let placed = profile.shards.iter().any(|s| s.interface.is_some() || s.io_core.is_some() || s.reader_core.is_some());
    let (given, had) = (args.endpoint.len(), profile.shards.len());
    *profile = profile.with_shards(given);
    for (s, list) in profile.shards.iter_mut().zip(&args.endpoint) {
        let (binds, connects): (Vec<&Endpoint>, Vec<&Endpoint>) = list.iter().partition(|e| e.how == Some(How::Bind));
        s.binds = binds.into_iter().map(|e| e.endpoint.clone()).collect();
        s.endpoints = connects.into_iter().map(|e| e.endpoint.clone()).collect();
    }
    (placed && given > had).then(|| {
        let these = if given - had == 1 { format!("shard{had}") } else { format!("shard{had} to shard{}", given - 1) };
        format!(
            "{these}: --endpoint given {given} times and profile {} has {had} shard(s): unpinned, connecting \
             from the interface the routing table picks",
            profile.name
        )
    })
}

/// An engine that ran to its `--max-duration` having delivered nothing while a link of it
/// never came up did not do its job: after its report, the error that makes it exit 1
/// ([`crate::engine::links_failure`], which its last status in the store says too).
fn a_link_came_up(report: &RunReport) -> anyhow::Result<()> {
    let shards: Vec<(&str, &[crate::link::LinkStats])> =
        report.shards.iter().map(|s| (s.shard.as_str(), s.links.as_slice())).collect();
    match crate::engine::links_failure(report.time_limit, report.delivered, &shards) {
        Some(why) => bail!(why),
        None => Ok(()),
    }
}

/// The line to say when the verify handler cannot check order: round-robin routing spreads a
/// topic over the workers, so each sees gaps in its sequence (counted `skipped`) and none can
/// see it go back (`out_of_order` stays 0 whatever the feed does). None when order is checked.
pub(crate) fn verify_unchecked_order(profile: &Profile) -> Option<String> {
    let spread = profile.routing == Routing::RoundRobin
        && profile.workers.len() > 1
        && profile.handoff != HandOff::Inline
        && profile.handler == crate::engine::handler::HandlerSpec::Verify;
    spread.then(|| {
        format!(
            "note: --handler verify with --routing round-robin over {} workers does not check order: each \
             worker sees every few messages of a topic (its gaps are counted `skipped`, and `out_of_order` \
             cannot count); --routing by-topic checks it",
            profile.workers.len()
        )
    })
}

/// Run `mdsub engine` against running publishers.
pub fn engine(args: &EngineArgs, stop: &StopFlag) -> anyhow::Result<RunReport> {
    let mut profile = Profile::load(&args.profile)?;
    let beyond = shards_from_flags(args, &mut profile);
    if !args.subscribe.is_empty() {
        for s in &mut profile.shards {
            s.subscribe = args.subscribe.clone();
        }
    }
    if let Some(w) = args.workers {
        profile.workers = vec![Default::default(); w];
    }
    override_idle_handler(&mut profile, args.idle, args.handler);
    if let Some(h) = args.handoff {
        profile.handoff = h;
    }
    if let Some(r) = args.routing {
        profile.routing = r;
    }
    if let Some(d) = args.forget_silent_after {
        profile.forget_silent_after_ms = whole_ms(d);
    }
    args.snail.apply(&mut profile)?;
    args.access.apply(&mut profile.security);
    check_flags_on_profile(args, &profile)?;
    if let Some(note) = beyond {
        crate::diag!("{note}");
    }
    if let Some(note) = verify_unchecked_order(&profile) {
        crate::diag!("{note}");
    }
    for (k, why) in profile.interfaces_down() {
        crate::diag!("shard{k}: {why}: its links come up once it carries traffic (libzmq keeps trying)");
    }
    let mut cfg = profile.engine_config(None);
    cfg.expect_eos_per_shard = args.expect_eos;
    args.outputs.apply(&mut cfg)?;
    apply_security(&profile.security, &mut cfg, |field| match args.access.flag_of(field) {
        Some(flag) => flag.to_string(),
        None => format!("--profile {}: profile field `{field}`", args.profile),
    })?;
    // Every file read and claimed: from here the first Ctrl-C stops the engine for its report.
    super::run_under_way();
    let mut engine = Engine::start(&cfg, stop.clone()).context("starting the engine")?;
    args.outputs.start_live(&mut engine)?;
    if let Some(ep) = engine.monitor_endpoint() {
        crate::diag!("monitor: bound {ep}");
    }
    for (k, (s, bound)) in cfg.shards.iter().zip(engine.shard_binds()).enumerate() {
        if !bound.is_empty() {
            crate::diag!("shard{k}: bound {}", bound.join(", "));
        }
        if !s.endpoints.is_empty() {
            crate::diag!("shard{k}: connecting to {}", s.endpoints.join(", "));
        }
    }
    crate::diag!("engine id: {}", engine.engine_id());
    crate::diag!("profile {} (--profile {}): {}", profile.name, args.profile, profile.summary());
    if let Some(addr) = engine.metrics_addr() {
        crate::diag!("metrics: http://{addr}/metrics");
    }
    let mut status = EngineStatus::on(status_on(progress_target(args.json)));
    let joined = engine.join_watching(args.max_duration, &mut |e| {
        if let Some(s) = status.as_mut() {
            s.tick(e, crate::clock::monotonic_ns(), std::time::Instant::now());
        }
    });
    if let Some(s) = &status {
        s.bar.pb.finish_and_clear();
    }
    match joined {
        Ok(report) => {
            print_report(&report, args.json)?;
            outputs_written(&report)?;
            a_link_came_up(&report)?;
            Ok(report)
        }
        Err(EngineError::Croaked(c)) => {
            print_report(&c.report, args.json)?;
            Err(EngineError::Croaked(c).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The engine's one-line status on stderr while it runs, once a metrics interval: messages
/// handled, their rate over the interval, the total stage's p99 over the last metrics interval,
/// the snail's worst verdict, fitted to the terminal as replay's bar is (whole fields dropped,
/// the least useful first: [`status_fields`]). It is drawn on replay's progress target
/// ([`progress_target`]), so it shows only when stderr is a terminal and not with `--json` (the
/// same decision); on a log or a pipe it writes nothing.
struct EngineStatus {
    bar: FitBar,
    /// The line said last, fitted again as the terminal's width changes.
    line: Vec<Field>,
    /// What the line saw when it was last drawn.
    last: Option<Last>,
    /// The snail's worst verdict since the last line (a SNAIL shorter than an interval is
    /// over when the line is drawn).
    worst: crate::snail::WorstSince,
}

impl EngineStatus {
    /// A status drawn on `bar` ([`status_on`]); None when its target is hidden (stderr is no
    /// terminal, or --json).
    fn on(bar: FitBar) -> Option<EngineStatus> {
        if bar.pb.is_hidden() {
            return None;
        }
        let line = vec![
            Field::spaced(Keep::Label, "engine:".into()),
            Field::new(Keep::Done, "running".into()),
            Field::spaced(Keep::Note, "(a status line every metrics interval)".into()),
        ];
        Some(EngineStatus { bar, line, last: None, worst: Default::default() })
    }

    /// Called often (every few ms, at `now_ns` and `now`); draws the line when the metrics
    /// collector has closed an interval, so the rate and the p99 cover the same stretch of time
    /// (a line drawn on its own clock showed `p99 -` when the collector's last interval, out of
    /// phase with it, was empty while the line's window held messages). A collector that closes
    /// none for two intervals still gets a line, with the p99 of the last interval it closed.
    /// Between lines the last is fitted again to the terminal's width.
    fn tick(&mut self, engine: &Engine, now_ns: u64, now: std::time::Instant) {
        let line = self.next_line(engine, now_ns);
        self.show(line, now);
    }

    /// Say `line` when there is a new one, else the last again, fitted to the terminal at `now`.
    fn show(&mut self, line: Option<Vec<Field>>, now: std::time::Instant) {
        if let Some(line) = line {
            self.line = line;
        }
        self.bar.say(&self.line, now);
    }

    /// The next line's fields when one is due.
    fn next_line(&mut self, engine: &Engine, now_ns: u64) -> Option<Vec<Field>> {
        let interval_ns = engine.metrics_interval_ns().load(std::sync::atomic::Ordering::Relaxed);
        let msgs = engine.delivered();
        let latency = engine.latency();
        let l = latency.lock().ok()?;
        let rate = self.due(now_ns, l.intervals, interval_ns, msgs)?;
        let mut all = crate::metrics::StageHistograms::default();
        for shard in &l.last_interval {
            all.add(shard);
        }
        let p99 = all.percentiles(2);
        drop(l);
        let snail = engine.snail().report();
        let worst = self.worst.next(snail.verdict, crate::snail::turns(&snail.sites));
        Some(status_fields(msgs, rate, Some(p99), (snail.verdict, worst)))
    }
    /// The rate (msg/s) since the last line when a line is due at `now_ns`: when the collector's
    /// interval count has moved past `intervals` seen at the last line, or two `interval_ns`
    /// have passed without it. The first call starts the count.
    fn due(&mut self, now_ns: u64, intervals: u64, interval_ns: u64, msgs: u64) -> Option<f64> {
        match self.last {
            Some(Last { at_ns, msgs: before, intervals: seen })
                if (intervals != seen && now_ns > at_ns)
                    || now_ns.saturating_sub(at_ns) >= interval_ns.max(1).saturating_mul(2) =>
            {
                self.last = Some(Last { at_ns: now_ns, msgs, intervals });
                Some(msgs.saturating_sub(before) as f64 * 1e9 / (now_ns - at_ns) as f64)
            }
            Some(_) => None,
            None => {
                self.last = Some(Last { at_ns: now_ns, msgs, intervals });
                None
            }
        }
    }
}

/// What the status line saw when it was last drawn.
#[derive(Clone, Copy)]
struct Last {
    /// Monotonic ns.
    at_ns: u64,
    /// Messages handled.
    msgs: u64,
    /// The metrics collector's closed intervals.
    intervals: u64,
}

/// The status line: `engine: 120000 msgs, 20000 msg/s, p99 1.2ms, snail OK` (`p99 -` before
/// an interval with messages; `p99` is the total stage's, receive to handled). `snail` is the
/// verdict now and the worst since the last line: `snail OK (SNAIL since the last line)`. As
/// fields a narrow terminal drops some of ([`super::progress::fit`]): the messages handled
/// first (the rate says more of a live engine), then the rate, the p99, `engine:`, the worst
/// verdict since the last line, the verdict now last.
fn status_fields(
    msgs: u64,
    rate: f64,
    p99: Option<crate::metrics::Percentiles>,
    snail: (crate::snail::Verdict, crate::snail::Verdict),
) -> Vec<Field> {
    let p99 = match p99 {
        Some(p) if p.count > 0 => crate::metrics::human_latency(p.p99_ns, p.out_of_bounds),
        _ => "-".into(),
    };
    let (now, worst) = snail;
    let mut fields = vec![
        Field::spaced(Keep::Label, "engine:".into()),
        Field::new(Keep::Handled, format!("{msgs} msgs")),
        Field::new(Keep::Rate, format!("{rate:.0} msg/s")),
        Field::new(Keep::Latency, format!("p99 {p99}")),
        Field::new(Keep::Verdict, format!("snail {}", now.name())),
    ];
    if worst > now {
        fields.push(Field::spaced(Keep::Since, format!("({} since the last line)", worst.name())));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_screen::Screen;
    use std::io::IsTerminal as _;

    /// A bound under 2s would forget a quiet live publisher between its heartbeats (one a
    /// second): refused, as in a profile; off and 0s are never. Before, 500ms was taken.
    #[test]
    fn a_bound_for_silent_publishers_under_two_heartbeats_is_refused() {
        assert_eq!(parse_forget_silent_after("off"), Ok(Duration::ZERO));
        assert_eq!(parse_forget_silent_after("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_forget_silent_after("2s"), Ok(Duration::from_secs(2)));
        for short in ["500ms", "1s", "1999ms"] {
            let e = parse_forget_silent_after(short).unwrap_err();
            assert!(e.contains("is too short: a live publisher heartbeats after 1s"), "{short}: {e}");
            assert!(e.ends_with("give 2s or more, or off (never)"), "{short}: {e}");
        }
        let mut p = Profile::builtin();
        p.forget_silent_after_ms = 500;
        let e = p.validate_for(&[0, 1], false).unwrap_err().to_string();
        assert!(e.contains("forget_silent_after_ms") && e.contains("500ms is too short"), "{e}");
        p.forget_silent_after_ms = 0;
        assert!(p.validate_for(&[0, 1], false).is_ok());
    }

    #[test]
    fn verify_over_round_robin_says_order_is_not_checked() {
        // Before: `out_of_order=0` while most messages were `skipped`, and nothing said why.
        let mut p = Profile::builtin();
        p.handler = crate::engine::handler::HandlerSpec::Verify;
        p.workers = vec![Default::default(); 2];
        assert_eq!(verify_unchecked_order(&p), None, "by-topic checks order");
        p.routing = Routing::RoundRobin;
        let note = verify_unchecked_order(&p).expect("said");
        assert!(
            note.starts_with("note: --handler verify with --routing round-robin over 2 workers does not check order")
        );
        p.workers.truncate(1);
        assert_eq!(verify_unchecked_order(&p), None, "one worker sees every message");
    }

    #[test]
    fn a_listen_address_may_say_bind() {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(parse_listen("9464"), Ok(local(9464)));
        assert_eq!(parse_listen("bind:9464"), Ok(local(9464)));
        assert_eq!(parse_listen("bind:0.0.0.0:9464"), parse_listen("0.0.0.0:9464"));
        assert_eq!(parse_listen("bind:[::1]:0"), Ok("[::1]:0".parse().expect("an address")));
        assert!(parse_listen("connect:9464").is_err_and(|m| m.contains("binds")));
        assert!(parse_listen("bind:").is_err_and(|m| m.starts_with("empty; accepted: ")));
        assert!(parse_listen("bind:tcp://127.0.0.1:9464").is_err());
        assert_eq!(parse_listen("[::1]:9464"), Ok("[::1]:9464".parse().expect("an address")));
    }

    /// Before, each of these said only `not a listen address`.
    #[test]
    fn a_refused_listen_address_says_what_is_wrong_with_it() {
        for (value, why) in [
            ("127.0.0.1:99999", "the port `99999` is out of range (0 to 65535)"),
            ("99999", "the port is out of range (0 to 65535)"),
            ("-1", "the port is not a number (0 to 65535)"),
            ("127.0.0.1:abc", "the port `abc` is not a number (0 to 65535)"),
            ("127.0.0.1:", "no port after the address"),
            ("127.0.0.1", "no port after the address;"),
            ("nowhere", "neither a port nor ADDR:PORT"),
            (":9000", "no address before the port (`9000` alone listens on 127.0.0.1)"),
            ("localhost:9000", "the address `localhost` is not an IP address"),
            ("999.1.1.1:80", "the address `999.1.1.1` is not an IP address"),
            ("::1:9000", "no port after the address (an IPv6 address is written in brackets, the port"),
            ("[::1]:", "no port after the address"),
            ("[::1]:70000", "the port `70000` is out of range (0 to 65535)"),
        ] {
            let e = parse_listen(value).expect_err(value);
            assert!(e.starts_with(why), "{value}: {e}");
            assert!(e.contains("; accepted: [bind:]PORT"), "{value}: {e}");
        }
    }

    #[test]
    fn the_status_shows_on_a_terminal_and_writes_nothing_elsewhere() {
        // Replay's bar decides: shown when stderr is a terminal, never with --json.
        let real = EngineStatus::on(status_on(progress_target(false)));
        assert_eq!(real.is_some(), std::io::stderr().is_terminal(), "the status follows stderr");
        assert!(EngineStatus::on(status_on(progress_target(true))).is_none(), "--json: no status");
        let screen = Screen::default();
        let target = indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let mut s = EngineStatus::on(status_on(target).with_columns(120)).expect("a terminal: a status");
        s.show(
            Some(status_fields(5, 1.0, None, (crate::snail::Verdict::Ok, crate::snail::Verdict::Ok))),
            std::time::Instant::now(),
        );
        let drawn = screen.text();
        assert!(drawn.contains("engine: 5 msgs, 1 msg/s, p99 -, snail OK"), "drawn: {drawn:?}");
        s.bar.pb.finish_and_clear();
    }

    #[test]
    fn the_status_line_fits_the_terminal_by_dropping_whole_fields() {
        // Before: `engine: 123456789 msgs, 2038919 msg/s, p99 126.68ms, snail OK (SNAIL since
        // the last line)` whatever the terminal: a narrow one wrapped it, and each redraw left
        // a line behind.
        let (ok, snail) = (crate::snail::Verdict::Ok, crate::snail::Verdict::Snail);
        let p = crate::metrics::Percentiles { count: 10, p99_ns: 126_680_000, ..Default::default() };
        let fields = status_fields(123_456_789, 2_038_919.0, Some(p), (ok, snail));
        let p99 = crate::metrics::human_latency(p.p99_ns, p.out_of_bounds);
        let at = |columns: usize| super::super::progress::fit(&fields, columns - 2);
        assert_eq!(
            at(200),
            format!("engine: 123456789 msgs, 2038919 msg/s, p99 {p99}, snail OK (SNAIL since the last line)")
        );
        assert_eq!(at(80), format!("engine: 2038919 msg/s, p99 {p99}, snail OK (SNAIL since the last line)"));
        assert_eq!(at(60), format!("engine: p99 {p99}, snail OK (SNAIL since the last line)"));
        assert_eq!(at(40), "snail OK (SNAIL since the last line)");
        assert_eq!(at(20), "snail OK");
        // Drawn: the spinner, a space and the line within the columns.
        let screen = Screen::default();
        let target = indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let mut s = EngineStatus::on(status_on(target).with_columns(60)).expect("a status");
        s.show(Some(fields.clone()), std::time::Instant::now());
        s.bar.pb.tick();
        let drawn = screen.text().rsplit("<clear>").next().unwrap_or_default().trim_end().to_string();
        assert!(drawn.ends_with(&at(60)), "{drawn:?}");
        assert!(drawn.chars().count() <= 60, "{drawn:?}");
        s.bar.pb.finish_and_clear();
    }

    #[test]
    fn the_status_line_comes_when_the_collector_closes_an_interval_with_its_rate() {
        let bar = status_on(indicatif::ProgressDrawTarget::hidden());
        let mut s = EngineStatus { bar, line: Vec::new(), last: None, worst: Default::default() };
        let sec = 1_000_000_000;
        assert_eq!(s.due(10 * sec, 3, sec, 100), None, "the first call starts the count");
        assert_eq!(s.due(10 * sec + sec / 2, 3, sec, 5_000), None, "the collector closed no interval");
        assert_eq!(s.due(11 * sec - sec / 4, 3, sec, 15_100), None, "a whole interval of time, but none closed");
        assert_eq!(s.due(11 * sec, 4, sec, 20_100), Some(20_000.0), "an interval closed: a line");
        assert_eq!(s.due(11 * sec, 5, sec, 20_100), None, "no time since the last line");
        assert_eq!(s.due(12 * sec + sec / 2, 4, sec, 20_100), None, "1.5 intervals, none closed");
        assert_eq!(
            s.due(13 * sec, 4, sec, 40_100),
            Some(10_000.0),
            "a stalled collector: a line after two intervals, the rate over the time since"
        );
    }

    /// The whole status line, as a terminal wide enough shows it.
    fn status_line(
        msgs: u64,
        rate: f64,
        p99: Option<crate::metrics::Percentiles>,
        snail: (crate::snail::Verdict, crate::snail::Verdict),
    ) -> String {
        super::super::progress::fit(&status_fields(msgs, rate, p99, snail), usize::MAX)
    }

    #[test]
    fn the_status_line_says_messages_rate_p99_and_the_snail() {
        let mut h = crate::metrics::StageHistograms::default();
        for ns in 1..=1000i64 {
            h.record_wire_total(ns * 1_000, ns * 1_000);
        }
        let p = h.percentiles(2);
        assert_eq!(
            status_line(123_456, 20_000.4, Some(p), (crate::snail::Verdict::Snail, crate::snail::Verdict::Snail)),
            format!("engine: 123456 msgs, 20000 msg/s, p99 {}, snail SNAIL", crate::diag::human_ns(p.p99_ns))
        );
        let empty = crate::metrics::Percentiles::default();
        assert_eq!(
            status_line(0, 0.0, Some(empty), (crate::snail::Verdict::Ok, crate::snail::Verdict::Ok)),
            "engine: 0 msgs, 0 msg/s, p99 -, snail OK"
        );
        assert_eq!(
            status_line(9, 1.0, Some(empty), (crate::snail::Verdict::Ok, crate::snail::Verdict::Snail)),
            "engine: 9 msgs, 1 msg/s, p99 -, snail OK (SNAIL since the last line)",
            "a SNAIL over by the time the line is drawn"
        );
        // Send times 30 s ahead of this host's clock: not a 1 ns p99.
        let mut ahead = crate::metrics::StageHistograms::default();
        ahead.record_wire_total(-30_000_000_000, -29_999_000_000);
        assert_eq!(
            status_line(1, 1.0, Some(ahead.percentiles(2)), (crate::snail::Verdict::Ok, crate::snail::Verdict::Ok)),
            "engine: 1 msgs, 1 msg/s, p99 <0s, snail OK"
        );
    }
}
