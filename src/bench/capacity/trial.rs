//! One run of a capacity trial (the shell around [`search`](super::search)):
//! a publisher offers a fixed rate on an open-loop schedule to a fresh
//! engine for the warm-up plus the hold; the warm-up's latency is
//! subtracted, the hold's is judged. The publisher is in-process (its
//! `replay` agent, started by [`Publisher::run`]) or another process driven
//! over a control socket ([`remote`](super::remote)).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;

use super::remote::RemotePublisher;
use super::search::RunMeasure;
use crate::agent::StopFlag;
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::feed::GeneratorConfig;
use crate::metrics::collector::{Cut, SharedLatency};
use crate::metrics::OutputsConfig;
use crate::outfile::Claimed;
use crate::replay::{Limits, Pacing, Publisher, PublisherConfig, ReplayStats, Source};

/// Where the load comes from.
#[derive(Debug, Clone)]
pub enum PublisherSide {
    /// In this process, on its own `replay` thread, sharing the host.
    Local {
        /// Never send faster than this (msg/s): a load generator that cannot
        /// keep up, for checking that such trials are not taken for the engine's limit.
        max_rate: Option<u64>,
        sndhwm_msgs: i32,
    },
    /// Another process (maybe on another host) serving trials on a control endpoint.
    Remote { control: String },
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct TrialSpec {
    pub rate: u64,
    pub warmup: Duration,
    pub hold: Duration,
    pub feed: GeneratorConfig,
    /// The engine (shards' endpoints are filled in from the publisher's).
    pub engine: EngineConfig,
    /// The quantiles to measure (ascending; 1.0 = max).
    pub quantiles: Vec<f64>,
    /// Where the engine writes this run's interval log, and where the hold's spectrum goes.
    pub hlog: PathBuf,
    pub hgrm: PathBuf,
}

/// Run once; errors are failures of the harness (a socket, a file), not of the trial.
pub fn run_trial(spec: &TrialSpec, side: &PublisherSide, stop: &StopFlag) -> anyhow::Result<RunMeasure> {
    let shards = spec.engine.shards.len().max(1);
    let offered = spec.rate;
    let duration = spec.warmup + spec.hold;
    let ctx = zmq::Context::new();
    // Bind (or have the remote bind) the publisher, then start the engine on its endpoints.
    enum Pub {
        Local(Box<Publisher>, u64),
        Remote(Box<RemotePublisher>),
    }
    let (publisher, endpoints) = match side {
        PublisherSide::Local { max_rate, sndhwm_msgs } => {
            let cfg = PublisherConfig {
                endpoints: vec!["tcp://127.0.0.1:*".into(); shards],
                sndhwm_msgs: *sndhwm_msgs,
                // Lossy: a publisher that never waits on the engine, so a
                // shortfall in its rate is its own; an engine that falls
                // behind shows as latency and, past the HWMs, as loss.
                lossless: false,
                publisher_id_base: 0,
                access: Default::default(),
                thread_per_shard: false,
                peer_timeout: crate::replay::DEFAULT_PEER_TIMEOUT,
            };
            let p = Publisher::bind(&ctx, &cfg).context("starting the publisher")?;
            let eps = p.endpoints();
            let sent_rate = max_rate.map_or(offered, |m| offered.min(m.max(1)));
            (Pub::Local(Box::new(p), sent_rate), eps)
        }
        PublisherSide::Remote { control } => {
            let mut r = RemotePublisher::connect(&ctx, control, stop)?;
            let eps = r.prepare(offered, duration, &spec.feed, shards)?;
            (Pub::Remote(Box::new(r)), eps)
        }
    };
    let mut cfg = spec.engine.clone();
    for (shard, ep) in cfg.shards.iter_mut().zip(&endpoints) {
        shard.endpoints = vec![ep.clone()];
    }
    // The run's folder is this search's own; the claim still keeps the file to this run.
    // A failed write is said once, by the trial's error, not by the collector as well.
    let hlog = Claimed::claim("the trial's interval log", &spec.hlog)?;
    cfg.outputs = OutputsConfig { hlog: Some(hlog), quiet_write_errors: true, ..Default::default() };
    // Short intervals: the workers report every tenth of one, and the warm-up ends at a report.
    let interval = (spec.warmup / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    cfg.metrics_interval = cfg.metrics_interval.min(interval);
    let engine_stop = StopFlag::new();
    let engine = Engine::start(&cfg, engine_stop.clone()).context("starting the engine")?;
    // A trial at a rate it may not keep up with: its loss is its verdict, said once by the
    // search, not per interval (of 10 to 250 ms) by the engine.
    engine.log_level().set(crate::metrics::settings::Level::Error);
    let live = engine.latency();
    let start = Instant::now();
    // The warm-up is the schedule's first `rate x warm-up` messages, counted where the engine
    // handled them: a clock started here also ran while the engine subscribed and while the
    // collector had not yet heard of what the workers handled, so the hold took up to a tenth
    // of its messages from the warm-up (66269 in a 1 s hold at 60000 msg/s). The collector
    // ends the warm-up at the first worker report that reaches its count, and ends the interval
    // being logged there too ([`Cut`]): the hold may lose a report period (a tenth of a metrics
    // interval) of its first messages to the warm-up, never the other way round, and each of
    // the .hlog's intervals is all warm-up or all hold, so the hold's add up to what is judged.
    let rate_sent = match &publisher {
        Pub::Local(_, sent_rate) => *sent_rate,
        Pub::Remote(_) => offered,
    };
    let warm_msgs = (rate_sent as f64 * spec.warmup.as_secs_f64()).round() as u64;
    if warm_msgs > 0 {
        set_cut(&live, Cut::Asked { at_msgs: warm_msgs });
    }
    // A local publisher sends on its own agent thread (`replay`); `run` calls back on this
    // thread about every 5 ms.
    let mut local_publisher = None;
    let mut remote = None;
    let local_run = match publisher {
        Pub::Local(mut p, sent_rate) => {
            if let Err(e) = p.wait_for_subscribers_or_stop(1, Duration::from_secs(10), stop) {
                // Stopped (Ctrl-C) or failed in the handshake: the engine goes first, so the
                // publisher's close is no link lost in its handshake (`shard0: link … lost
                // (handshake_failed)`, said at every Ctrl-C before).
                drop(engine);
                return Err(e).context("waiting for the engine to subscribe");
            }
            let pacing = Pacing::Rate { msgs_per_sec: sent_rate, burst: 1 };
            let source = Source::Generator(spec.feed.clone());
            let limits = Limits { max_msgs: None, duration: Some(duration) };
            let r = p.run(&source, pacing, limits, stop, &mut |_| {});
            // `p` is kept open until the engine is done (see bench::run::run_once: closed now,
            // its disconnect would read as a lost link).
            local_publisher = Some(p);
            Some(r)
        }
        Pub::Remote(mut r) => {
            r.go()?;
            remote = Some(r);
            None
        }
    };
    // A warm-up not yet counted (a remote publisher's, or a local run that ended before the
    // engine counted it): wait for its count, at most until the schedule's time is over (an
    // engine a whole hold behind, or losing messages, fails the trial whatever is counted as
    // its hold), then end it at the next report (or at the engine's end).
    if warm_msgs > 0 {
        while !cut_made(&live) && start.elapsed() < duration && !stop.is_stopped() {
            std::thread::sleep(Duration::from_millis(5).min(duration.saturating_sub(start.elapsed())));
        }
        if !cut_made(&live) {
            set_cut(&live, Cut::Asked { at_msgs: 0 });
        }
    }
    let achieved = match (local_run, remote.as_mut()) {
        (Some(stats), _) => achieved_of(&stats.context("publishing")?, Some(duration)),
        (None, Some(r)) => {
            let (sent, send_s) = r.finish(duration + Duration::from_secs(30))?;
            sent as f64 / send_s.max(1e-9)
        }
        (None, None) => anyhow::bail!("no publisher ran"),
    };
    let drain = Duration::from_secs(5).max(spec.hold);
    let joined = engine.join(Some(drain));
    drop(local_publisher);
    let (report, error) = match joined {
        Ok(r) => (r, None),
        Err(EngineError::Croaked(c)) => (
            c.report.clone(),
            Some(format!("the snail croaked at {} (lag {})", c.scream.site, crate::diag::human_ns(c.scream.lag_ns))),
        ),
        Err(e) => return Err(anyhow::Error::new(e).context("running the engine")),
    };
    // The interval log is incomplete: no measurement to keep (the collector kept the cause quiet
    // for this one line).
    if let Some(e) = &report.metrics_write_error {
        // `FILE: writing the interval log: CAUSE`.
        anyhow::bail!("{e}");
    }
    let (whole, bounds) = live.lock().map(|l| total_of(&l.cumulative)).unwrap_or_else(|_| total_of(&[]));
    // The warm-up as the collector cut it (it makes a cut still asked for as it closes); none
    // asked for, or none made, leaves it empty, or all of the run.
    let (warm, warm_bounds) = match live.lock().ok().and_then(|mut l| l.cut.take()) {
        Some(Cut::Made(sets)) => total_of(&sets),
        Some(Cut::Asked { .. }) => (whole.clone(), bounds),
        None => total_of(&[]),
    };
    let hold_bounds = bounds.since(&warm_bounds);
    // Both come from one cumulative histogram, so the subtraction cannot underflow.
    let mut hold = whole.clone();
    if hold.subtract(&warm).is_err() {
        hold = whole;
    }
    let hgrm = std::fs::File::create(&spec.hgrm).with_context(|| format!("creating {}", spec.hgrm.display()))?;
    crate::metrics::hlog::write_hgrm(std::io::BufWriter::new(hgrm), &hold, hold_bounds)
        .with_context(|| format!("writing {}", spec.hgrm.display()))?;
    let latency_ns = spec
        .quantiles
        .iter()
        .map(|&q| {
            (
                q,
                if hold.is_empty() {
                    0
                } else if q >= 1.0 {
                    hold.max()
                } else {
                    hold.value_at_quantile(q)
                },
            )
        })
        .collect();
    let error = error.or_else(|| report.interrupted.then(|| "the engine did not drain in time".to_string()));
    Ok(RunMeasure {
        offered,
        achieved,
        lost: report.lost,
        gaps: report.counts.gaps,
        latency_ns,
        count: hold.len(),
        error,
    })
}

/// The rate a publisher achieved, msg/s: its pacer's, the turns after the first per second from
/// the first turn to the last ([`ReplayStats::achieved_msgs_per_sec`]); the messages sent over
/// the run's time when the pacer has none (a run a stop cut short, fewer than two turns). At
/// most the messages sent over the schedule's `duration`: a publisher that kept its pace for
/// half the schedule and was then told it was over (descheduled past its end and the catch-up
/// allowance) sent half what was due, though its first-to-last turns kept the rate.
///
/// Before, it was the messages sent over the time from the call that started the sending thread
/// to the moment this thread, polling every 5 ms, saw the schedule done: on a loaded 2-core box
/// the thread's start and that poll's wake-up added tens of ms to a 300 ms schedule, and a
/// publisher that kept 1000 msg/s was said to have achieved 920 ("rate not achieved", a
/// publisher-limited search). A trial server answers `send_s` by the same rule
/// ([`remote`](super::remote)).
pub fn achieved_of(stats: &ReplayStats, duration: Option<Duration>) -> f64 {
    let paced = match stats.achieved_msgs_per_sec {
        Some(a) if a > 0.0 => a,
        _ => stats.sent_total as f64 / stats.elapsed_s.max(1e-9),
    };
    match duration.map(|d| d.as_secs_f64()).filter(|&d| d > 0.0) {
        Some(d) => paced.min(stats.sent_total as f64 / d),
        None => paced,
    }
}

/// Ask the collector for `cut`.
fn set_cut(live: &SharedLatency, cut: Cut) {
    if let Ok(mut l) = live.lock() {
        l.cut = Some(cut);
    }
}

/// Whether the collector has made the cut asked for.
fn cut_made(live: &SharedLatency) -> bool {
    live.lock().is_ok_and(|l| matches!(l.cut, Some(Cut::Made(_))))
}

/// The total stage over every shard of `sets`, and how many of its latencies were out of bounds.
fn total_of(sets: &[crate::metrics::StageHistograms]) -> (Histogram<u64>, crate::metrics::OutOfBounds) {
    let mut h = crate::metrics::StageHistograms::default().total;
    let mut bounds = crate::metrics::OutOfBounds::default();
    for s in sets {
        let _ = h.add(&s.total);
        bounds.add(&s.out_of_bounds[2]);
    }
    (h, bounds)
}

#[cfg(test)]
mod tests {
    use super::super::search::{judge, Sla, Verdict};
    use super::*;
    use crate::replay::schedule::{Schedule, Turn};

    const MS: u64 = 1_000_000;
    /// Arbitrary clock origins (monotonic and realtime): only differences count.
    const T0: u64 = 5_000 * MS;
    const RT0: u64 = 1_700_000_000_000_000_000;

    /// The trial's verdict on a 1000 msg/s, 300 ms schedule (warm-up 100 ms, hold 200 ms) whose
    /// sender took its turns at `turn_at(i)` (manual clock), and the run's call returned `late`
    /// after its last turn, the thread having started `start` after the call.
    fn verdict(turn_at: impl Fn(u64) -> u64, start: u64, late: u64) -> (f64, f64, Verdict) {
        let mut s = Schedule::new(Pacing::Rate { msgs_per_sec: 1_000, burst: 1 }, Some(300 * MS), T0, RT0);
        let mut i = 0;
        loop {
            match s.turn(i, T0 + turn_at(i)) {
                Turn::Send(_) => i += 1,
                Turn::Over => break,
                Turn::Wait(ns) => panic!("turn {i} taken {ns} ns early"),
            }
        }
        let (_, _, last) = s.turns_mono_ns().expect("turns were taken");
        let stats = ReplayStats {
            sent_total: i,
            offered_msgs_per_sec: Some(1_000),
            achieved_msgs_per_sec: s.achieved_msgs_per_sec(),
            elapsed_s: (start + last - T0 + late) as f64 / 1e9,
            ..Default::default()
        };
        let achieved = achieved_of(&stats, Some(Duration::from_millis(300)));
        let run = RunMeasure {
            offered: 1_000,
            achieved,
            lost: Some(0),
            gaps: 0,
            latency_ns: vec![(0.5, 1_000), (1.0, 1_000)],
            count: i,
            error: None,
        };
        // What the trial said before: the messages sent over the time from the run's call to
        // the moment its caller saw the schedule done.
        let before = stats.sent_total as f64 / stats.elapsed_s;
        (achieved, before, judge(&[run], &Sla::default()).verdict)
    }

    /// A publisher that kept its schedule, though its thread started 30 ms after the run was
    /// called, was descheduled 20 ms mid-run (it caught up: the turns due went out at once) and
    /// its caller saw the end 15 ms late (a busy 2-core box), achieved the rate: before, those
    /// 45 ms counted against it, 300 messages over 344 ms, "rate not achieved" at 872 msg/s, a
    /// false publisher-limited search. One that cannot keep up (a turn every 1.2 ms) still
    /// falls short.
    #[test]
    fn a_publisher_that_caught_up_achieved_the_rate_however_late_its_start_was_seen() {
        let stalled = |i: u64| if (150..170).contains(&i) { 170 * MS } else { i * MS };
        let (achieved, before, v) = verdict(stalled, 30 * MS, 15 * MS);
        assert!(achieved >= 1_000.0 && v == Verdict::Pass, "achieved {achieved}: {v:?}");
        assert!(before < 0.95 * 1_000.0, "the old measure: {before}");
        // A thread 20 ms late to its first turn starts its schedule there: no turn is late.
        let (achieved, _, v) = verdict(|i| i * MS, 20 * MS, 0);
        assert!(achieved >= 1_000.0 && v == Verdict::Pass, "achieved {achieved}: {v:?}");
        // Slower than the rate: 1.2 ms a message, stopped at the duration and its tenth.
        let (achieved, _, v) = verdict(|i| i * 6 * MS / 5, 0, 0);
        assert!((achieved - 1_000.0 / 1.2).abs() < 1.0, "achieved {achieved}");
        assert!(matches!(v, Verdict::RateNotAchieved { .. }), "{v:?}");
    }

    /// A publisher that kept its schedule for half of it (150 of 300 messages due), was then
    /// descheduled past the schedule's end and its catch-up allowance (330 ms), and was told
    /// the schedule was over, sent half its load: its first-to-last turns are 150 in 150 ms,
    /// 1000 msg/s, and the pacer's rate alone read it "achieved", a pass at a rate whose hold
    /// was offered 50 ms of messages. The messages sent over the schedule's duration bound it.
    #[test]
    fn a_publisher_that_sent_half_its_schedule_and_stopped_fell_short() {
        let halted = |i: u64| if i <= 150 { i * MS } else { 350 * MS };
        let (achieved, _, v) = verdict(halted, 0, 0);
        assert!(achieved < 0.6 * 1_000.0, "151 of 300 sent: achieved {achieved}");
        assert!(matches!(v, Verdict::RateNotAchieved { .. }), "{v:?}");
    }
}
