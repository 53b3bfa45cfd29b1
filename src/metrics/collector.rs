//! The metrics collector agent (`metrics`): adds up the per-interval
//! histograms workers ship over a crossbeam channel and hands each emptied
//! set back to its worker (the double buffer: nothing is copied or allocated
//! per interval). It ends when every worker has dropped its sender. As each interval ends it
//! says, from the readers' published counts ([`IntervalLog`]), the interval's new gaps (one
//! `warn: loss:` line for the interval, whatever the shards) and the publisher sessions that
//! began as restarts or ended with an end of stream (`info:`, the first of each kind per shard
//! at once and then one summary per 10 s: [`LossLines`]): loss is said where an operator looks,
//! and nothing is added to the data path. At log level `debug` it says a line per shard per
//! interval. The first interval with latencies below 0 (send times ahead of this host's clock)
//! is said on stderr, once a run ([`ahead_line`]).

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};

use super::hlog::write_hgrm;
use super::hlog_file::{HlogFile, Note};
use super::settings::{Level, LogLevel};
use super::{human_latency, shard_name, shard_sets, StageHistograms};
use crate::agent::{Agent, AgentError, Inbox, IntervalMarks, Step};
use crate::clock;
use crate::diag::{human_ns, Refusals, SUMMARY_INTERVAL_NS};
use crate::outfile::{Claimed, ReplaceError};

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
    /// The first failed write's cause (a failed `--hgrm` rewrite during the run is said on its
    /// own, not here).
    pub first_write_error: Option<String>,
    /// Of `write_errors`, the `--hgrm` rewrites during the run that failed and that the final
    /// write made good: FILE is whole at the end, so the run is no failure for them.
    pub write_errors_made_good: u64,
}

impl Collected {
    /// Failed writes that left a file incomplete ([`Collected::write_errors_made_good`] aside).
    pub fn files_incomplete(&self) -> u64 {
        self.write_errors.saturating_sub(self.write_errors_made_good)
    }
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
    /// An interval to end on a count rather than the clock (a capacity trial's warm-up end).
    pub cut: Option<Cut>,
}

/// An interval ended where the total stage's count reaches a number, not when its time is up:
/// a capacity trial ends its warm-up there, so its interval log's intervals are each all warm-up
/// or all hold, and the hold's add up to what the trial judged. Ended at a clock time instead,
/// the interval the warm-up ended in mixed the two (its p99 7.34 ms read from the log, 305 µs
/// in the trial's summary).
#[derive(Debug, Clone)]
pub enum Cut {
    /// End the interval at the first worker report that brings the total stage's count, over
    /// every shard, to `at_msgs` or more (0: at the next report, or at the close).
    Asked { at_msgs: u64 },
    /// Ended: the cumulative sets, per shard, up to and including that report.
    Made(Vec<StageHistograms>),
}

impl LiveLatency {
    /// The total stage's count so far over every shard.
    pub fn total_count(&self) -> u64 {
        self.cumulative.iter().map(|s| s.total.len()).sum()
    }

    /// Make the cut asked for if the count has reached it (`closing`: whatever the count);
    /// true when it was made now.
    fn cut_if_due(&mut self, closing: bool) -> bool {
        match self.cut {
            Some(Cut::Asked { at_msgs }) if closing || self.total_count() >= at_msgs => {
                self.cut = Some(Cut::Made(self.cumulative.clone()));
                true
            }
            _ => false,
        }
    }
}

/// Shared handle on [`LiveLatency`].
pub type SharedLatency = Arc<Mutex<LiveLatency>>;

/// Where the collector writes, besides adding up.
#[derive(Default)]
pub struct CollectorOutputs {
    /// The interval log (`--hlog`), already opened with its header written, and its rotation.
    pub hlog: Option<HlogFile>,
    /// The run's spectrum (`--hgrm`): a regular file rewritten whole as intervals end
    /// ([`HGRM_REWRITE_SPACING_NS`]), so a killed run leaves the spectrum so far; written last
    /// when the collector ends (a device or FIFO only then).
    pub hgrm: Option<Claimed>,
    /// Keep a failed write's cause for the report instead of saying it as it happens: the
    /// caller says it once, in its own words (a capacity trial's error).
    pub quiet_write_errors: bool,
}

/// `--hgrm FILE` (a regular file) is rewritten with the spectrum so far as an interval ends,
/// when it has new counts, at most this often (1 s): a run killed with `kill -9` leaves FILE
/// whole, up to the last rewrite. Off the data path (the collector's), and cheap: one small
/// file made, synced and renamed (and its folder synced) per second at most.
pub const HGRM_REWRITE_SPACING_NS: u64 = 1_000_000_000;

/// What the collector says on stderr through [`LogLevel::log`] as each interval ends: loss and
/// publisher sessions at the default level ([`LossLines`]), and at `debug` a line per shard
/// (rate, total-stage p50 and p99, gaps).
pub struct IntervalLog {
    /// The engine's log level (a live setting).
    pub log: Arc<LogLevel>,
    /// Fills its argument (cleared first) with each shard's counts as its reader last published
    /// them: read once per interval, into a buffer kept (nothing allocated per interval).
    pub counts: ReadCounts,
}

/// How [`IntervalLog`] reads the shards' counts.
pub type ReadCounts = Box<dyn Fn(&mut Vec<ShardLoss>) + Send>;

/// One shard's gaps, restarts and ends of stream so far, and whose the last of each were, as
/// its reader last published them ([`crate::engine::reader::ShardCounters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardLoss {
    pub gaps: u64,
    pub restarts: u64,
    pub eos_sessions: u64,
    /// `(publisher_id, session_id)` of the session of the last gap, and of the new session of
    /// the last restart.
    pub last_gap: (u32, u64),
    pub last_restart: (u32, u64),
    /// `(publisher_id, session_id, sent)` of the last end of stream.
    pub last_eos: (u32, u64, u64),
}

/// The lines loss and publisher sessions are said in, as intervals end (socket-free: each
/// shard's counts and the time in, lines out). Per interval with new gaps, one line for every
/// shard (`warn`); per shard, a restart (a publisher's new session) and an end of stream the
/// first time at once with whose it was, later ones summarised once per
/// [`SUMMARY_INTERVAL_NS`] ([`Refusals`], `info`). A flood of gaps or sessions costs a line per
/// interval, or per summary.
/// The loss line speaks at most this often (1 s), whatever the metrics interval.
pub const LOSS_LINE_SPACING_NS: u64 = 1_000_000_000;

pub struct LossLines {
    /// The counts at the last interval's end.
    before: Vec<ShardLoss>,
    /// Each shard's gaps when the loss line last spoke (or found none new), and when
    /// (monotonic ns; None before the first interval): new gaps are said at most once per
    /// [`LOSS_LINE_SPACING_NS`], so a short `--metrics-interval` under steady loss does not
    /// flood stderr (what comes between is said with the next line, over its longer span).
    gaps_said: Vec<u64>,
    gaps_said_at_ns: Option<u64>,
    /// The next interval is the run's last: what is new is said whatever the spacing.
    closing: bool,
    /// Per shard: its restarts and ends of stream.
    sessions: Vec<Refusals>,
}

/// `publisher 10 session 000000000000002a` (written only when said: nothing is allocated for a
/// line not said).
struct Whose(u32, u64);

impl std::fmt::Display for Whose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "publisher {} session {:016x}", self.0, self.1)
    }
}

impl LossLines {
    pub fn new(shards: usize) -> Self {
        LossLines {
            before: vec![ShardLoss::default(); shards],
            gaps_said: vec![0; shards],
            gaps_said_at_ns: None,
            closing: false,
            sessions: (0..shards)
                .map(|k| {
                    let name = shard_name(k);
                    Refusals::new(name.clone(), SUMMARY_INTERVAL_NS).said_as(format!("{name}: publisher sessions"))
                })
                .collect(),
        }
    }

    /// The lines of an interval of `interval_ns` ending at `now_ns`, the shards' counts being
    /// `now`.
    pub fn interval(&mut self, now: &[ShardLoss], interval_ns: u64, now_ns: u64) -> Vec<(Level, String)> {
        let mut lines = Vec::new();
        if self.before.len() < now.len() {
            self.before.resize(now.len(), ShardLoss::default());
        }
        if self.gaps_said.len() < now.len() {
            self.gaps_said.resize(now.len(), 0);
        }
        while self.sessions.len() < now.len() {
            let name = shard_name(self.sessions.len());
            let head = format!("{name}: publisher sessions");
            self.sessions.push(Refusals::new(name, SUMMARY_INTERVAL_NS).said_as(head));
        }
        // Gaps can go down (a late frame, a cached value): only what is new is said. Nothing
        // is allocated unless something is said.
        let new = |k: usize| now[k].gaps.saturating_sub(self.gaps_said[k]);
        let all_new: u64 = (0..now.len()).map(new).sum();
        let span_ns = self.gaps_said_at_ns.map_or(interval_ns, |at| now_ns.saturating_sub(at));
        let due = self.closing || self.gaps_said_at_ns.is_none_or(|_| span_ns >= LOSS_LINE_SPACING_NS);
        if all_new > 0 && due {
            let per_shard: Vec<String> = (0..now.len())
                .filter(|&k| new(k) > 0)
                .map(|k| {
                    let (p, sid) = now[k].last_gap;
                    format!("{}: {}, the last in {}", shard_name(k), new(k), Whose(p, sid))
                })
                .collect();
            let total: u64 = now.iter().map(|c| c.gaps).sum();
            lines.push((
                Level::Warn,
                format!(
                    "loss: {all_new} new gap(s) in the last {} ({}; total {total})",
                    crate::diag::human_duration(span_ns),
                    per_shard.join("; ")
                ),
            ));
        }
        if all_new == 0 || due {
            self.gaps_said.clear();
            self.gaps_said.extend(now.iter().map(|c| c.gaps));
            self.gaps_said_at_ns = Some(now_ns);
        }
        for (k, (c, b)) in now.iter().zip(&self.before).enumerate() {
            let restarts = c.restarts.saturating_sub(b.restarts);
            let ends = c.eos_sessions.saturating_sub(b.eos_sessions);
            let r = &mut self.sessions[k];
            let (p, sid) = c.last_restart;
            let detail = format_args!("{} began, replacing the one it had (restarts: {})", Whose(p, sid), c.restarts);
            let said = r.refuse_many("restart", restarts, &detail, now_ns);
            let (p, sid, sent) = c.last_eos;
            let detail = format_args!("end of stream from {}: it sent {sent}", Whose(p, sid));
            let said = said.into_iter().chain(r.refuse_many("end_of_stream", ends, &detail, now_ns));
            lines.extend(said.map(|l| (Level::Info, l)));
        }
        self.before.clear();
        self.before.extend_from_slice(now);
        lines
    }

    /// The next [`LossLines::interval`] is the run's last: its new gaps are said, however soon
    /// after the line before (nothing held for the spacing is left unsaid).
    pub fn closing(&mut self) {
        self.closing = true;
    }

    /// What went unsaid of the sessions (a summary however recent): at the end of the run.
    pub fn flush(&mut self) -> Vec<(Level, String)> {
        self.sessions.iter_mut().filter_map(|r| r.flush()).map(|l| (Level::Info, l)).collect()
    }
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
    /// What [`IntervalLog`] says of loss and sessions, and the shards' counts it reads into.
    loss_lines: LossLines,
    counts: Vec<ShardLoss>,
    /// Latencies below 0 were said ([`ahead_line`]: once a run).
    ahead_said: bool,
    /// The agents whose busy share is taken per interval (marked as each interval ends).
    marks: Option<Arc<IntervalMarks>>,
    /// `--hgrm` rewritten as the run goes: the total count it holds, and when (monotonic ns) it
    /// was written; off once FILE's folder took no new file (then it is written at the end only).
    hgrm_count: u64,
    hgrm_at_ns: Option<u64>,
    hgrm_as_it_goes: bool,
    /// `--hgrm` rewrites during the run that failed (said once, the first): made good by a
    /// final write that works.
    hgrm_rewrites_failed: u64,
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
            loss_lines: LossLines::new(shards),
            counts: Vec::with_capacity(shards),
            ahead_said: false,
            marks: None,
            hgrm_count: 0,
            hgrm_at_ns: None,
            hgrm_as_it_goes: true,
            hgrm_rewrites_failed: 0,
        }
    }

    /// End each of `marks`' agents' busy interval with its own ([`IntervalMarks::mark`]), so
    /// their busy share covers the interval its rates and latencies do.
    pub fn with_interval_marks(mut self, marks: Arc<IntervalMarks>) -> Self {
        self.marks = Some(marks);
        self
    }

    /// Say loss and publisher sessions as intervals end, and at log level `debug` a line per
    /// shard per interval.
    pub fn with_interval_log(mut self, log: IntervalLog) -> Self {
        self.interval_log = Some(log);
        self
    }

    /// The interval's lines: loss and sessions ([`LossLines`]), and at `debug` one per shard.
    fn log_interval(&mut self, mono_ns: u64) {
        let Some(l) = self.interval_log.as_ref() else { return };
        let counts = &mut self.counts;
        (l.counts)(counts);
        let span_ns = mono_ns.saturating_sub(self.interval_start_mono_ns).max(1);
        let debug = l.log.get() >= Level::Debug;
        let before: Vec<u64> = match debug {
            true => self.loss_lines.before.iter().map(|c| c.gaps).collect(),
            false => Vec::new(),
        };
        for (level, line) in self.loss_lines.interval(counts, span_ns, mono_ns) {
            l.log.log(level, line);
        }
        if !debug {
            return;
        }
        let secs = span_ns as f64 / 1e9;
        for (k, set) in self.interval.iter().enumerate() {
            let p = set.percentiles(2);
            let q = |v: u64| if p.count == 0 { "-".to_string() } else { human_latency(v, p.out_of_bounds) };
            let g = counts.get(k).map(|c| c.gaps);
            let new = g.map(|g| g.saturating_sub(before.get(k).copied().unwrap_or(0)));
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
    }

    /// Add `r` up; true when it made the [`Cut`] asked for (its interval is to end now).
    fn take(&mut self, mut r: WorkerReport) -> bool {
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
        let cut = live.as_mut().is_some_and(|l| l.cut_if_due(false));
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
        cut
    }

    fn write_error(&mut self, e: impl std::fmt::Display) {
        // The first of these, not the first failed write: a failed `--hgrm` rewrite, counted
        // before, is said on its own and may be made good ([`Collector::hgrm_so_far`]).
        if self.total.first_write_error.is_none() {
            if !self.outputs.quiet_write_errors {
                crate::diag!("metrics: {e} (further write errors are counted, not shown)");
            }
            self.total.first_write_error = Some(e.to_string());
        }
        self.total.write_errors += 1;
    }

    /// Say what the interval log's rotation did: a removal at info, a new file at debug (through
    /// the engine's log level, else on stderr), an error counted as a failed write.
    fn hlog_note(&mut self, note: Note) {
        let (level, line) = match note {
            Note::Error(e) => return self.write_error(e),
            Note::Removed(line) | Note::Said(line) => (Level::Info, line),
            Note::Started(line) => (Level::Debug, line),
        };
        match &self.interval_log {
            Some(l) => l.log.log(level, format_args!("metrics: --hlog: {line}")),
            None if level == Level::Info => crate::diag!("metrics: --hlog: {line}"),
            None => {}
        }
    }

    /// Write the run's spectrum so far to `--hgrm` FILE, whole ([`Claimed::replace`]), as an
    /// interval ends at `mono_ns`: when FILE is a regular file, the spectrum has new counts and
    /// the last rewrite is [`HGRM_REWRITE_SPACING_NS`] old. A folder that takes no new file
    /// beside FILE turns this off, said once: FILE is then written at the end only, in place.
    fn hgrm_so_far(&mut self, mono_ns: u64) {
        let Some(hgrm) = self.outputs.hgrm.as_ref() else { return };
        let count = self.total.stages.total.len();
        let spaced = self.hgrm_at_ns.is_none_or(|at| mono_ns.saturating_sub(at) >= HGRM_REWRITE_SPACING_NS);
        if !(hgrm.is_regular() && self.hgrm_as_it_goes && count != self.hgrm_count && spaced) {
            return;
        }
        self.hgrm_count = count;
        self.hgrm_at_ns = Some(mono_ns);
        match hgrm.replace(|f| self.spectrum(f)) {
            Ok(()) => {}
            Err(e @ ReplaceError::Temp { .. }) => {
                self.hgrm_as_it_goes = false;
                let line = format_args!(
                    "metrics: --hgrm: {}: {e}: the spectrum is written at the run's end only (a run killed before \
                     leaves it empty)",
                    hgrm.path().display()
                );
                match &self.interval_log {
                    Some(l) => l.log.log(Level::Info, line),
                    None => crate::diag!("{line}"),
                }
            }
            Err(e @ (ReplaceError::Write(_) | ReplaceError::Sync(_))) => {
                // FILE holds the last rewrite that worked, whole: counted, said once, and made
                // good by the final write if that one works.
                self.hgrm_rewrites_failed += 1;
                self.total.write_errors += 1;
                if self.hgrm_rewrites_failed == 1 && !self.outputs.quiet_write_errors {
                    crate::diag!(
                        "metrics: --hgrm: {}: rewriting it: {e}: it holds the last spectrum written, whole; tried \
                         again as intervals end and at the run's end (further failed rewrites are counted, not \
                         shown)",
                        hgrm.path().display()
                    );
                }
            }
        }
    }

    /// The run's spectrum so far (the total stage, every shard), written to `f`.
    fn spectrum(&self, f: std::fs::File) -> std::io::Result<()> {
        write_hgrm(BufWriter::new(f), &self.total.stages.total, self.total.stages.out_of_bounds[2])
            .map_err(std::io::Error::other)
    }

    /// Close the interval ending at `wall_ns` (realtime) and `mono_ns` (monotonic): log it, share
    /// it, start the next.
    fn end_interval(&mut self, wall_ns: u64, mono_ns: u64, closing: bool) {
        self.log_interval(mono_ns);
        if !self.ahead_said {
            if let Some(l) = ahead_line(&self.interval) {
                crate::diag!("{l}");
                self.ahead_said = true;
            }
        }
        if let Some(f) = self.outputs.hlog.as_mut() {
            let mut notes: Vec<Note> = f.follow(self.interval_start_ns).into_iter().collect();
            let mut failed = None;
            let w = f.writer();
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
            if let Err(e) = f.flush() {
                failed = Some(e);
            }
            if let Some(e) = failed {
                notes.push(Note::Error(format!("{}: {e}", f.path().display())));
            }
            // The last interval closes the run, not the file: nothing starts after it.
            if !closing {
                notes.extend(f.rotate_if_due(wall_ns));
            }
            for note in notes {
                self.hlog_note(note);
            }
        }
        // After the interval log: FILE never holds more than the log's intervals so far.
        if !closing {
            self.hgrm_so_far(mono_ns);
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
            if self.take(r) {
                self.end_interval(clock::realtime_ns(), clock::monotonic_ns(), false);
            }
            n += 1;
        }
        let finished = self.inbox.is_closed();
        let now = clock::monotonic_ns();
        if now.saturating_sub(self.interval_start_mono_ns) >= self.interval_ns.load(Relaxed) {
            self.end_interval(clock::realtime_ns(), now, false);
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
        self.loss_lines.closing();
        // A cut still asked for is made here: everything so far is before it.
        if let Ok(mut l) = self.live.lock() {
            l.cut_if_due(true);
        }
        self.end_interval(clock::realtime_ns(), clock::monotonic_ns(), true);
        if let Some(l) = &self.interval_log {
            for (level, line) in self.loss_lines.flush() {
                l.log.log(level, line);
            }
        }
        if let Some(hgrm) = self.outputs.hgrm.take() {
            // Whole, as during the run; where no file can be made beside FILE, in place.
            let written = match hgrm.replace(|f| self.spectrum(f)) {
                Err(ReplaceError::Temp { .. }) => hgrm.rewrite_synced(|f| self.spectrum(f)).map_err(|e| e.to_string()),
                written => written.map_err(|e| e.to_string()),
            };
            match written {
                Err(e) => self.write_error(format_args!("{}: {e}", hgrm.path().display())),
                Ok(()) if self.hgrm_rewrites_failed > 0 => {
                    // FILE is whole: the rewrites that failed before cost nothing at the end.
                    self.total.write_errors_made_good = self.hgrm_rewrites_failed;
                    if !self.outputs.quiet_write_errors {
                        crate::diag!(
                            "metrics: --hgrm: {}: written whole at the run's end ({} rewrite(s) during the run failed)",
                            hgrm.path().display(),
                            self.hgrm_rewrites_failed
                        );
                    }
                }
                Ok(()) => {}
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

    /// `--hgrm` holds the spectrum so far once an interval ended with counts (before, it was
    /// empty until the collector closed), not rewritten at the next interval within a second;
    /// where no file can be made beside it, it is written at the close only, in place.
    #[test]
    fn hgrm_holds_the_spectrum_so_far_and_falls_back_to_the_close() {
        let total_in = |f: &std::path::Path| {
            let text = std::fs::read_to_string(f).expect("read");
            text.lines()
                .find_map(|l| l.split("Total count    =").nth(1).map(|v| v.trim_end_matches(']').trim().to_string()))
        };
        let report = || {
            let mut stages = shard_sets(1);
            stages[0].record(1_000, 10, 2_000);
            WorkerReport { worker: 0, stages, handler_counters: Vec::new(), handler_summary: Vec::new() }
        };
        let d = crate::test_dir("collector-hgrm");
        for blocked in [false, true] {
            let path = d.join(format!("{blocked}.hgrm"));
            if blocked {
                std::fs::create_dir(d.join(format!(".{blocked}.hgrm.next"))).expect("a folder where the new file goes");
            }
            let hgrm = Claimed::claim("--hgrm", &path).expect("claim");
            let (tx, rx) = crossbeam::channel::bounded(4);
            // Every step ends an interval.
            let interval = Arc::new(AtomicU64::new(0));
            let outputs = CollectorOutputs { hgrm: Some(hgrm), ..Default::default() };
            let mut c = Collector::new(rx, Vec::new(), 1, interval, SharedLatency::default(), outputs);
            tx.send(report()).expect("send");
            c.do_work().expect("a step");
            let so_far = if blocked { None } else { Some("1".to_string()) };
            assert_eq!(total_in(&path), so_far, "after the first interval ({blocked})");
            tx.send(report()).expect("send");
            c.do_work().expect("a step");
            assert_eq!(total_in(&path), so_far, "not again within a second");
            drop(tx);
            c.on_close();
            assert_eq!(total_in(&path), Some("2".to_string()), "the whole run at the close");
            assert_eq!(c.into_collected().write_errors, 0);
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A failed `--hgrm` rewrite (counted first) does not take the place of the first failed write
    /// of another file: the `--hlog` error that follows is the run's `metrics_write_error` (and
    /// said on stderr), and only the rewrite is made good by the final write. Before, the
    /// rewrite's count silenced the `--hlog` error: the run exited 1 with no cause kept.
    #[test]
    fn a_failed_hgrm_rewrite_does_not_hide_another_files_first_error() {
        let d = crate::test_dir("collector-hgrm-hides");
        let path = d.join("h.hgrm");
        let hgrm = Claimed::claim("--hgrm", &path).expect("claim");
        // FILE made a folder mid-run: the rewrite's rename over it fails.
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("a folder at FILE");
        let (tx, rx) = crossbeam::channel::bounded(4);
        let outputs = CollectorOutputs { hgrm: Some(hgrm), ..Default::default() };
        let interval = Arc::new(AtomicU64::new(0));
        let mut c = Collector::new(rx, Vec::new(), 1, interval, SharedLatency::default(), outputs);
        let mut stages = shard_sets(1);
        stages[0].record(1_000, 10, 2_000);
        tx.send(WorkerReport { worker: 0, stages, handler_counters: Vec::new(), handler_summary: Vec::new() })
            .expect("send");
        c.do_work().expect("a step");
        assert_eq!(c.total.write_errors, 1, "the rewrite failed");
        c.hlog_note(Note::Error("x.hlog: disk full".into()));
        std::fs::remove_dir(&path).expect("FILE a file's place again");
        drop(tx);
        c.on_close();
        let total = c.into_collected();
        assert_eq!(total.first_write_error.as_deref(), Some("x.hlog: disk full"));
        assert_eq!((total.write_errors, total.write_errors_made_good, total.files_incomplete()), (2, 1, 1));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// At a 100 ms metrics interval under steady loss the loss line speaks once a second (it
    /// spoke ten times), each line over its whole span: nothing new is left out.
    #[test]
    fn the_loss_line_speaks_at_most_once_a_second_whatever_the_interval() {
        const MS: u64 = 1_000_000;
        let mut l = LossLines::new(1);
        let mut now = [ShardLoss::default()];
        let mut said = Vec::new();
        for t in 1..=30u64 {
            now[0].gaps += 10;
            said.extend(l.interval(&now, 100 * MS, t * 100 * MS).into_iter().map(|(_, line)| line));
        }
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[0].starts_with("loss: 10 new gap(s) in the last 100ms"), "the first at once: {said:?}");
        assert!(said[1].starts_with("loss: 100 new gap(s) in the last 1s"), "{said:?}");
        assert!(
            said[2].starts_with("loss: 100 new gap(s) in the last 1s") && said[2].ends_with("total 210)"),
            "{said:?}"
        );
        // The run's last interval says what is new however soon after the line before: the 90
        // held since 2.1 s and 10 more.
        now[0].gaps += 10;
        l.closing();
        let last = l.interval(&now, 20 * MS, 3_020 * MS);
        assert!(last.len() == 1 && last[0].1.starts_with("loss: 100 new gap(s) in the last 920ms"), "{last:?}");
        assert!(last[0].1.ends_with("total 310)"), "{last:?}");
    }

    /// Loss is said at the default level, one line per interval with new gaps, naming whose;
    /// a restart and an end of stream are said at once the first time, later ones summarised.
    /// Before, gaps were said only at `debug`, restarts and ends of stream not at all: an LVC
    /// down for 9 s (27 304 gaps) left no line on stderr.
    #[test]
    fn loss_restarts_and_ends_of_stream_are_said_without_flooding() {
        const S: u64 = 1_000_000_000;
        let mut l = LossLines::new(2);
        let quiet = [ShardLoss::default(); 2];
        assert_eq!(l.interval(&quiet, S, S), Vec::new(), "nothing new, nothing said");
        let mut now = [ShardLoss { gaps: 100, last_gap: (10, 0xab), ..Default::default() }, ShardLoss::default()];
        assert_eq!(
            l.interval(&now, S, 2 * S),
            [(
                Level::Warn,
                "loss: 100 new gap(s) in the last 1s (shard0: 100, the last in publisher 10 session \
                 00000000000000ab; total 100)"
                    .to_string()
            )]
        );
        assert_eq!(l.interval(&now, S, 3 * S), Vec::new(), "no new gaps: no line");
        now[0].gaps = 27_304;
        now[1] = ShardLoss { gaps: 4, last_gap: (11, 1), ..Default::default() };
        let lines = l.interval(&now, 2 * S, 5 * S);
        assert_eq!(lines.len(), 1, "one line for the interval, whatever the shards: {lines:?}");
        assert_eq!(
            lines[0].1,
            "loss: 27208 new gap(s) in the last 2s (shard0: 27204, the last in publisher 10 session \
             00000000000000ab; shard1: 4, the last in publisher 11 session 0000000000000001; total 27308)"
        );
        // A restart: said at once with whose it is; a hundred more within 10 s: one summary.
        now[0].restarts = 1;
        now[0].last_restart = (10, 0xac);
        let lines = l.interval(&now, S, 6 * S);
        assert_eq!(
            lines,
            [(
                Level::Info,
                "shard0: publisher sessions (restart): publisher 10 session 00000000000000ac began, replacing the \
                 one it had (restarts: 1) (the first; more are counted and summarised every 10s)"
                    .to_string()
            )]
        );
        let mut said = 0;
        for t in 7..=15 {
            now[0].restarts += 11;
            said += l.interval(&now, S, t * S).len();
        }
        assert_eq!(said, 0, "held for the summary");
        now[0].restarts += 1;
        let lines = l.interval(&now, S, 16 * S);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].1, "shard0: publisher sessions in the last 10s: restart=100 (totals: restart=101)");
        // The end of stream: said at once the first time; what is unsaid at the end, flushed.
        now[0].eos_sessions = 1;
        now[0].last_eos = (10, 0xac, 10_000);
        let lines = l.interval(&now, S, 17 * S);
        assert!(
            lines.len() == 1
                && lines[0].1.starts_with(
                    "shard0: publisher sessions (end_of_stream): end of stream from publisher 10 session \
                     00000000000000ac: it sent 10000"
                ),
            "{lines:?}"
        );
        now[0].restarts += 1;
        assert_eq!(l.interval(&now, S, 18 * S), Vec::new());
        let end = l.flush();
        assert_eq!(end.len(), 1, "{end:?}");
        assert!(end[0].1.contains("restart=1 (totals: restart=102 end_of_stream=1)"), "{end:?}");
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
