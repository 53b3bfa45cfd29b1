//! The metrics collector agent (`metrics`): adds up the per-interval
//! histograms workers ship over a crossbeam channel and hands each emptied
//! set back to its worker (the double buffer: nothing is copied or allocated
//! per interval). It ends when every worker has dropped its sender. At log level
//! `debug` it says a line per shard per interval ([`IntervalLog`]). The first interval with
//! latencies below 0 (send times ahead of this host's clock) is said on stderr, once a run
//! ([`ahead_line`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};

use super::hlog::{write_hgrm, HlogWriter};
use super::settings::{Level, LogLevel};
use super::{human_latency, shard_name, shard_sets, StageHistograms};
use crate::agent::{Agent, AgentError, Inbox, IntervalMarks, Step};
use crate::clock;
use crate::diag::human_ns;
use crate::outfile::Claimed;

/// What a worker sends to the collector.
pub struct WorkerReport {
    pub worker: usize,
    /// One set per shard (see [`shard_sets`]).
    pub stages: Vec<StageHistograms>,
    /// The handler's counters (final report only).
    pub handler_counters: Vec<(&'static str, u64)>,
    /// The handler's end-report lines (final report only).
    pub handler_summary: Vec<String>,
}

/// What the collector has added up.
#[derive(Default)]
pub struct Collected {
    /// Every shard's histograms added up.
    pub stages: StageHistograms,
    /// Per shard.
    pub per_shard: Vec<StageHistograms>,
    /// The messages each worker handled, per shard (the counts of the histograms it shipped):
    /// each worker's share of a shard's messages, for the shard's ceiling.
    pub per_worker: Vec<Vec<u64>>,
    pub handler: BTreeMap<String, u64>,
    /// The handlers' end-report lines, worker after worker.
    pub handler_summary: Vec<String>,
    /// Reports received.
    pub reports: u64,
    /// Interval-log or spectrum writes that failed (the first said on stderr, unless
    /// [`CollectorOutputs::quiet_write_errors`]).
    pub write_errors: u64,
    /// The first failed write's cause.
    pub first_write_error: Option<String>,
}

/// Latency the collector shares with the threads that publish it live (the
/// `/metrics` server, the status publisher); they lock it once per scrape or
/// interval, never on the data path.
#[derive(Default)]
pub struct LiveLatency {
    /// Since the start, per shard.
    pub cumulative: Vec<StageHistograms>,
    /// The last complete interval, the same way.
    pub last_interval: Vec<StageHistograms>,
    /// Intervals completed so far.
    pub intervals: u64,
    /// End of the last complete interval (monotonic ns: the store schedules its status on it).
    pub last_interval_end_ns: u64,
    /// Interval-log or spectrum writes that failed so far (a disk that fills while the engine
    /// runs shows on `/metrics` and in the store's status, not only at the end).
    pub write_errors: u64,
}

/// Shared handle on [`LiveLatency`].
pub type SharedLatency = Arc<Mutex<LiveLatency>>;

/// Where the collector writes, besides adding up.
#[derive(Default)]
pub struct CollectorOutputs {
    /// The interval log (`--hlog`), already opened with its header written, and its path.
    pub hlog: Option<(PathBuf, HlogWriter<BufWriter<File>>)>,
    /// The end-of-run spectrum (`--hgrm`), written when the collector ends.
    pub hgrm: Option<Claimed>,
    /// Keep a failed write's cause for the report instead of saying it as it happens: the
    /// caller says it once, in its own words (a capacity trial's error).
    pub quiet_write_errors: bool,
}

/// What the collector says at log level `debug`, once per interval: a line per shard (rate,
/// total-stage p50 and p99, gaps), on stderr through [`LogLevel::log`].
pub struct IntervalLog {
    /// The engine's log level (a live setting).
    pub log: Arc<LogLevel>,
    /// Each shard's gaps so far, read once per interval while `debug` is on.
    pub gaps: Box<dyn Fn() -> Vec<u64> + Send>,
}

/// The collector agent; [`Collector::into_collected`] after it ends.
pub struct Collector {
    inbox: Inbox<WorkerReport>,
    spares: Vec<Sender<Vec<StageHistograms>>>,
    total: Collected,
    interval: Vec<StageHistograms>,
    /// Start of the interval: realtime, the interval log's stamp (a wall time)…
    interval_start_ns: u64,
    /// … and monotonic, what its end and its rates are timed on (a wall-clock step neither ends
    /// an interval early nor holds it).
    interval_start_mono_ns: u64,
    /// The interval length, changeable live (a setting).
    interval_ns: Arc<AtomicU64>,
    live: SharedLatency,
    outputs: CollectorOutputs,
    interval_log: Option<IntervalLog>,
    /// Each shard's gaps at the last debug line (for the interval's own).
    gaps_before: Vec<u64>,
    /// Latencies below 0 were said ([`ahead_line`]: once a run).
    ahead_said: bool,
    /// The agents whose busy share is taken per interval (marked as each interval ends).
    marks: Option<Arc<IntervalMarks>>,
}

/// The line that says an interval's latencies below 0 (`sets`: per shard), if it had any: their send times were ahead of this host's clock, which the engine
/// cannot correct, only count. Every one is counted however small (hosts synchronised with PTP
/// may differ by a few µs, seen only where a message's transit was shorter); the line is said
/// once a run, with how many and the lowest, whatever the amount.
pub fn ahead_line(sets: &[StageHistograms]) -> Option<String> {
    let per_slot: Vec<String> = sets
        .iter()
        .enumerate()
        .filter_map(|(k, set)| {
            let n = set.out_of_bounds.iter().map(|b| b.ahead).max().unwrap_or(0);
            let lowest = set.out_of_bounds.iter().map(|b| b.ahead_max_ns).max().unwrap_or(0);
            (n > 0).then(|| format!("{} {n}, down to -{}", shard_name(k), human_ns(lowest)))
        })
        .collect();
    (!per_slot.is_empty()).then(|| {
        format!(
            "metrics: latencies below 0 ({}): send times ahead of this host's clock, so the publisher's host \
             and this one disagree on the time (clock skew: synchronise them, with PTP or NTP), or this clock \
             stepped back; recorded as 1 ns and counted (ahead, ahead_max_ns in the report and the JSON, \
             mdsub_latency_ahead_total on /metrics); said once",
            per_slot.join("; ")
        )
    })
}

impl Collector {
    /// Collect from `rx` for an engine of `shards` shards; `spares[w]` hands
    /// emptied sets back to worker `w`. Every `interval_ns` (read each step,
    /// so it can change while running) the interval's histograms go to the
    /// interval log and to `live`.
    pub fn new(
        rx: Receiver<WorkerReport>,
        spares: Vec<Sender<Vec<StageHistograms>>>,
        shards: usize,
        interval_ns: Arc<AtomicU64>,
        live: SharedLatency,
        outputs: CollectorOutputs,
    ) -> Self {
        if let Ok(mut l) = live.lock() {
            l.cumulative = shard_sets(shards);
            l.last_interval = shard_sets(shards);
        }
        Collector {
            inbox: Inbox::new(rx),
            total: Collected {
                per_shard: shard_sets(shards),
                per_worker: vec![vec![0; shards]; spares.len()],
                ..Default::default()
            },
            spares,
            interval: shard_sets(shards),
            interval_start_ns: clock::realtime_ns(),
            interval_start_mono_ns: clock::monotonic_ns(),
            interval_ns,
            live,
            outputs,
            interval_log: None,
            gaps_before: Vec::new(),
            ahead_said: false,
            marks: None,
        }
    }

    /// End each of `marks`' agents' busy interval with its own ([`IntervalMarks::mark`]), so
    /// their busy share covers the interval its rates and latencies do.
    pub fn with_interval_marks(mut self, marks: Arc<IntervalMarks>) -> Self {
        self.marks = Some(marks);
        self
    }

    /// Say a line per shard per interval at log level `debug`.
    pub fn with_interval_log(mut self, log: IntervalLog) -> Self {
        self.interval_log = Some(log);
        self
    }

    /// The interval's line for each shard, at `debug`.
    fn log_interval(&mut self, mono_ns: u64) {
        let Some(l) = self.interval_log.as_ref().filter(|l| l.log.get() >= Level::Debug) else { return };
        let gaps = (l.gaps)();
        let secs = mono_ns.saturating_sub(self.interval_start_mono_ns).max(1) as f64 / 1e9;
        for (k, set) in self.interval.iter().enumerate() {
            let p = set.percentiles(2);
            let q = |v: u64| if p.count == 0 { "-".to_string() } else { human_latency(v, p.out_of_bounds) };
            let g = gaps.get(k).copied();
            let new = g.map(|g| g.saturating_sub(self.gaps_before.get(k).copied().unwrap_or(0)));
            let gaps = match (g, new) {
                (Some(g), Some(new)) => format!(", gaps {g} (+{new})"),
                _ => String::new(),
            };
            l.log.log(
                Level::Debug,
                format_args!(
                    "{}: {:.0} msg/s, p50 {} p99 {}{gaps}",
                    shard_name(k),
                    p.count as f64 / secs,
                    q(p.p50_ns),
                    q(p.p99_ns)
                ),
            );
        }
        self.gaps_before = gaps;
    }

    fn take(&mut self, mut r: WorkerReport) {
        let mut live = self.live.lock().ok();
        for (k, s) in r.stages.iter_mut().enumerate() {
            if let Some(n) = self.total.per_worker.get_mut(r.worker).and_then(|w| w.get_mut(k)) {
                *n += s.count();
            }
            if let (Some(t), Some(i)) = (self.total.per_shard.get_mut(k), self.interval.get_mut(k)) {
                t.add(s);
                i.add(s);
                self.total.stages.add(s);
                if let Some(c) = live.as_mut().and_then(|l| l.cumulative.get_mut(k)) {
                    c.add(s);
                }
            }
            s.reset();
        }
        drop(live);
        self.total.reports += 1;
        for (k, v) in r.handler_counters.drain(..) {
            *self.total.handler.entry(k.to_string()).or_default() += v;
        }
        self.total.handler_summary.append(&mut r.handler_summary);
        if let Some(back) = self.spares.get(r.worker) {
            // Full or gone: the worker allocates nothing more, it keeps counting.
            let _ = back.try_send(r.stages);
        }
    }

    fn write_error(&mut self, e: impl std::fmt::Display) {
        if self.total.write_errors == 0 {
            if !self.outputs.quiet_write_errors {
                crate::diag!("metrics: {e} (further write errors are counted, not shown)");
            }
            self.total.first_write_error = Some(e.to_string());
        }
        self.total.write_errors += 1;
    }

    /// Close the interval ending at `wall_ns` (realtime) and `mono_ns` (monotonic): log it, share
    /// it, start the next.
    fn end_interval(&mut self, wall_ns: u64, mono_ns: u64) {
        self.log_interval(mono_ns);
        if !self.ahead_said {
            if let Some(l) = ahead_line(&self.interval) {
                crate::diag!("{l}");
                self.ahead_said = true;
            }
        }
        if let Some((path, w)) = self.outputs.hlog.as_mut() {
            let mut failed = None;
            for (k, set) in self.interval.iter().enumerate() {
                for ((stage, h), bounds) in set.stages().into_iter().zip(set.out_of_bounds) {
                    let tag = format!("{}.{stage}", shard_name(k));
                    let mut written = w.write(&tag, self.interval_start_ns, wall_ns, h);
                    if written.is_ok() {
                        written = w.note_out_of_bounds(&tag, self.interval_start_ns, bounds);
                    }
                    if let Err(e) = written {
                        failed = Some(e);
                    }
                }
            }
            if let Err(e) = w.flush() {
                failed = Some(e);
            }
            if let Some(e) = failed {
                let path = path.display().to_string();
                self.write_error(format_args!("{path}: {e}"));
            }
        }
        // Before the interval is shared: whoever sees it closed sees the agents' share of it too.
        if let Some(m) = &self.marks {
            m.mark(mono_ns);
        }
        if let Ok(mut l) = self.live.lock() {
            std::mem::swap(&mut l.last_interval, &mut self.interval);
            l.intervals += 1;
            l.last_interval_end_ns = mono_ns;
            l.write_errors = self.total.write_errors;
        }
        for s in &mut self.interval {
            s.reset();
        }
        self.interval_start_ns = wall_ns;
        self.interval_start_mono_ns = mono_ns;
    }

    pub fn into_collected(self) -> Collected {
        self.total
    }
}

impl Agent for Collector {
    fn role(&self) -> &str {
        "metrics"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let mut n = 0;
        while let Some(r) = self.inbox.next() {
            self.take(r);
            n += 1;
        }
        let finished = self.inbox.is_closed();
        let now = clock::monotonic_ns();
        if now.saturating_sub(self.interval_start_mono_ns) >= self.interval_ns.load(Relaxed) {
            self.end_interval(clock::realtime_ns(), now);
        }
        Ok(if finished { Step::Finished(n) } else { Step::Worked(n) })
    }

    fn idle_wait(&mut self, timeout: Duration) {
        // Wake for the next interval's end at the latest.
        let left = (self.interval_start_mono_ns + self.interval_ns.load(Relaxed)).saturating_sub(clock::monotonic_ns());
        self.inbox.wait(timeout.min(Duration::from_nanos(left)));
    }

    fn on_close(&mut self) {
        // The last (partial) interval, then the whole run's spectrum.
        self.end_interval(clock::realtime_ns(), clock::monotonic_ns());
        if let Some(hgrm) = self.outputs.hgrm.take() {
            let written = hgrm.rewrite().map_err(|e| format!("opening it: {e}")).and_then(|f| {
                write_hgrm(BufWriter::new(f), &self.total.stages.total, self.total.stages.out_of_bounds[2])
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = written {
                self.write_error(format_args!("{}: {e}", hgrm.path().display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{run_agent, AgentCounters, IdleStrategy, StopFlag};

    #[test]
    fn adds_up_hands_sets_back_and_ends_when_workers_are_gone() {
        let (tx, rx) = crossbeam::channel::bounded(4);
        let (back_tx, back_rx) = crossbeam::channel::bounded(2);
        let live = SharedLatency::default();
        let interval = Arc::new(AtomicU64::new(1_000_000_000));
        let mut c = Collector::new(rx, vec![back_tx], 2, interval, live.clone(), CollectorOutputs::default());
        for i in 0..3i64 {
            let mut stages = shard_sets(2);
            stages[(i % 2) as usize].record(1_000 + i, 10, 2_000);
            tx.send(WorkerReport {
                worker: 0,
                stages,
                handler_counters: vec![("seen", 2)],
                handler_summary: Vec::new(),
            })
            .expect("send");
        }
        drop(tx);
        run_agent(&mut c, IdleStrategy::Block { wait_us: 1_000 }, &StopFlag::new(), &AgentCounters::default())
            .expect("runs");
        let total = c.into_collected();
        assert_eq!((total.stages.count(), total.reports), (3, 3));
        assert_eq!((total.per_shard.len(), total.per_shard[0].count(), total.per_shard[1].count()), (2, 2, 1));
        assert_eq!(total.per_worker, [[2, 1]], "worker 0's messages, per shard");
        assert_eq!(total.handler.get("seen"), Some(&6));
        let back = back_rx.try_recv().expect("a set came back");
        assert!(back.iter().all(|s| s.count() == 0), "emptied before it goes back");
        let l = live.lock().expect("lock");
        assert_eq!(l.cumulative[0].count(), 2, "live totals follow");
        assert_eq!(l.last_interval.iter().map(|s| s.count()).sum::<u64>(), 3, "the closing interval is shared");
    }

    /// Send times 30 s ahead of this host's clock: said once, with how many and how far, per
    /// shard. Before: every latency read 1 ns and nothing was said.
    #[test]
    fn latencies_below_zero_are_said_with_how_many_and_how_far() {
        let mut sets = shard_sets(2);
        assert_eq!(ahead_line(&sets), None, "nothing below 0, nothing said");
        sets[1].record(60, 5, 65);
        assert_eq!(ahead_line(&sets), None);
        for i in 0..3 {
            sets[1].record(-30_000_000_000 + i, 5, -29_999_999_000 + i);
        }
        sets[0].record(-4_100, 5, 900);
        let l = ahead_line(&sets).expect("said");
        assert!(
            l.starts_with("metrics: latencies below 0 (shard0 1, down to -4.1µs; shard1 3, down to -30.00s): send times ahead of this host's clock"),
            "{l}"
        );
        assert!(l.contains("clock skew") && l.ends_with("said once"), "{l}");
        assert_eq!(sets[1].out_of_bounds[1], Default::default(), "the queue stage was not below 0");
    }
}
