//! Latency histograms per stage and the end-of-run report.
//!
//! Workers record into their own [`StageHistograms`] (no sharing on the hot
//! path; their wire and total stages counted first into a [`tally::StageTally`] laid out as
//! the histograms and added in before a set is shipped) and ship a copy to the collector over
//! a crossbeam channel once per interval; the collector adds them up. Stages, all from the publisher's
//! intended send time (so coordinated omission shows as latency):
//! `wire` = until the reader received the frame (the clock is read once per
//! drain round, so the frames of one round share it, and again for a frame sent
//! after that read: [`crate::clock::PassStamp`]), `queue` = from the
//! reader to the worker taking the batch, `total` = until the handler
//! finished (for the `latency` handler, which does nothing per message: until
//! the worker took the batch, as the baseline counts it).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::diag::human_ns;

pub mod collector;
pub mod hlog;
pub mod hlog_file;
pub mod http;
pub mod prom;
pub mod settings;
pub mod store;
pub mod tally;

/// Highest latency recorded (60 s). A larger one is recorded as 60 s and counted per stage
/// ([`OutOfBounds::clamped`]), and every output says so: the report (`≥60s` and a line
/// per stage), the JSON (`clamped` per stage), `/metrics` (`mdsub_latency_clamped_total`),
/// the status (`clamped`), `mdsub top` (`≥60s`) and `#[Clamped` comment lines in the `.hlog`
/// and `.hgrm`. Counting rather than raising the bound: any bound can be passed (a capture replayed verbatim lags by its age), and each
/// histogram at 3 significant digits is 216 KiB up to 60 s, 264 KiB up to 1 h, 304 KiB up to a
/// day, times 57 to 75 histograms in a 2-shard, 2-worker engine; and each worker (or inline
/// reader) holds a [`tally::StageTally`] a shard, two histograms' worth (432 KiB up to 60 s).
pub const MAX_TRACKABLE_NS: u64 = 60_000_000_000;

/// [`MAX_TRACKABLE_NS`] as people read it.
pub const MAX_TRACKABLE_HUMAN: &str = "60 s";

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; failure is a build bug.
    Histogram::new_with_bounds(1, MAX_TRACKABLE_NS, 3).expect("valid histogram bounds")
}

/// Latencies of one stage that the histogram holds at a bound rather than as measured.
///
/// Below 0 (`ahead`): the end came before the start, a send time ahead of this host's clock
/// (the publisher's host's clock runs ahead of this one, or this one stepped back; on one host
/// the reader's stamps never precede a send time, [`crate::clock::PassStamp`]). Every one is
/// counted, however small: a few µs of skew between hosts synchronised with PTP shows here
/// only for messages whose transit was shorter than the skew. Each output says so, as for
/// `clamped`: the report (`<0s` and a line per stage), the JSON (`ahead`, `ahead_max_ns`),
/// `/metrics` (`mdsub_latency_ahead_total`, `mdsub_latency_ahead_max_seconds`), the status
/// (`ahead`), `mdsub top` (`<0s`), `#[Ahead` comment lines in the `.hlog` and `.hgrm`, and
/// one line on stderr, once a run, with the amount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutOfBounds {
    /// Above [`MAX_TRACKABLE_NS`], recorded as it.
    pub clamped: u64,
    /// Below 0, recorded as 1 ns.
    pub ahead: u64,
    /// How far below 0 the lowest of them was (ns; 0 when none was).
    pub ahead_max_ns: u64,
}

impl OutOfBounds {
    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &OutOfBounds) {
        self.clamped += other.clamped;
        self.ahead += other.ahead;
        self.ahead_max_ns = self.ahead_max_ns.max(other.ahead_max_ns);
    }

    /// The counts since `earlier` (these taken later from the same cumulative histograms); the
    /// largest amount ahead is the whole run's.
    pub fn since(&self, earlier: &OutOfBounds) -> OutOfBounds {
        OutOfBounds {
            clamped: self.clamped.saturating_sub(earlier.clamped),
            ahead: self.ahead.saturating_sub(earlier.ahead),
            ahead_max_ns: self.ahead_max_ns,
        }
    }

    /// `bound(latency_ns(from_ns, to_ns), 1)`, the common case (`to_ns` not before `from_ns`)
    /// without the signed detour.
    #[inline(always)]
    fn bound_between(&mut self, from_ns: u64, to_ns: u64) -> u64 {
        match to_ns.checked_sub(from_ns) {
            Some(d) if d <= MAX_TRACKABLE_NS => d.max(1),
            _ => self.bound(latency_ns(from_ns, to_ns), 1),
        }
    }

    /// `ns` within the histograms' bounds; `n` more counted when it was out of them.
    #[inline]
    fn bound(&mut self, ns: i64, n: u64) -> u64 {
        if ns > MAX_TRACKABLE_NS as i64 {
            self.clamped += n;
            MAX_TRACKABLE_NS
        } else if ns < 0 {
            self.ahead += n;
            self.ahead_max_ns = self.ahead_max_ns.max(ns.unsigned_abs());
            1
        } else {
            (ns as u64).max(1)
        }
    }
}

/// The latency from `from_ns` to `to_ns`: negative when `to_ns` came first (saturating at
/// `i64`'s bounds, some 292 years: send times come from peers).
#[inline]
pub fn latency_ns(from_ns: u64, to_ns: u64) -> i64 {
    if to_ns >= from_ns {
        i64::try_from(to_ns - from_ns).unwrap_or(i64::MAX)
    } else {
        i64::try_from(from_ns - to_ns).map_or(i64::MIN, |d| -d)
    }
}

/// One histogram per stage, and the bytes of the frames recorded.
#[derive(Clone, Debug)]
pub struct StageHistograms {
    pub wire: Histogram<u64>,
    pub queue: Histogram<u64>,
    pub total: Histogram<u64>,
    /// Bytes of the frames whose latencies were recorded.
    pub bytes: u64,
    /// Latencies above [`MAX_TRACKABLE_NS`] or below 0, per stage in [`STAGES`] order.
    pub out_of_bounds: [OutOfBounds; 3],
}

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms {
            wire: new_histogram(),
            queue: new_histogram(),
            total: new_histogram(),
            bytes: 0,
            out_of_bounds: [OutOfBounds::default(); 3],
        }
    }
}

/// Histogram sets for an engine of `shards` shards: one per shard (every hand-off says its
/// shard: a batch in its header, a frame handed over on its own in its stamp).
pub fn shard_sets(shards: usize) -> Vec<StageHistograms> {
    vec![StageHistograms::default(); shards]
}

/// `shardK`: shard `k`'s name in reports, tags and labels.
pub fn shard_name(k: usize) -> String {
    format!("shard{k}")
}

/// The stage names, in the order [`StageHistograms::stages`] gives them.
pub const STAGES: [&str; 3] = ["wire", "queue", "total"];

impl StageHistograms {
    /// Record one message's stage latencies (ns, [`latency_ns`]). Never allocates.
    #[inline]
    pub fn record(&mut self, wire_ns: i64, queue_ns: i64, total_ns: i64) {
        // Values are bounded (and counted when out of bounds), so saturating records cannot fail.
        let [w, q, t] = &mut self.out_of_bounds;
        self.wire.saturating_record(w.bound(wire_ns, 1));
        self.queue.saturating_record(q.bound(queue_ns, 1));
        self.total.saturating_record(t.bound(total_ns, 1));
    }

    /// Record one message's wire and total latencies (ns, [`latency_ns`]); its queue stage
    /// goes in with [`StageHistograms::record_queue_n`]. Never allocates.
    #[inline]
    pub fn record_wire_total(&mut self, wire_ns: i64, total_ns: i64) {
        let [w, _, t] = &mut self.out_of_bounds;
        self.wire.saturating_record(w.bound(wire_ns, 1));
        self.total.saturating_record(t.bound(total_ns, 1));
    }

    /// [`StageHistograms::record_wire_total`] from the times themselves: a message sent at
    /// `sent_ns` (the sender's clock), received at `recv_ns` and done at `done_ns`. The same
    /// values and counts as `record_wire_total(latency_ns(sent_ns, recv_ns), latency_ns(sent_ns,
    /// done_ns))`, without the signed detour for the common case of a send time not ahead. The
    /// worker records through [`tally::StageTally::record_since_sent`] instead (perf37); this is
    /// the direct recording that tally is held to and measured against (benches/handoff.rs).
    #[inline(always)]
    pub fn record_since_sent(&mut self, sent_ns: u64, recv_ns: u64, done_ns: u64) {
        let [w, _, t] = &mut self.out_of_bounds;
        self.wire.saturating_record(w.bound_between(sent_ns, recv_ns));
        self.total.saturating_record(t.bound_between(sent_ns, done_ns));
    }

    /// Record the queue stage of `n` messages that all waited `queue_ns` (the
    /// frames of one hand-off batch share their receive and take times, so a
    /// worker records them once). Never allocates.
    #[inline]
    pub fn record_queue_n(&mut self, queue_ns: i64, n: u64) {
        if n > 0 {
            self.queue.saturating_record_n(self.out_of_bounds[1].bound(queue_ns, n), n);
        }
    }

    /// Add `other` into `self`.
    pub fn add(&mut self, other: &StageHistograms) {
        // Same bounds on both sides, so add cannot fail.
        let _ = self.wire.add(&other.wire);
        let _ = self.queue.add(&other.queue);
        let _ = self.total.add(&other.total);
        self.bytes += other.bytes;
        for (b, o) in self.out_of_bounds.iter_mut().zip(&other.out_of_bounds) {
            b.add(o);
        }
    }

    pub fn reset(&mut self) {
        self.wire.reset();
        self.queue.reset();
        self.total.reset();
        self.bytes = 0;
        self.out_of_bounds = [OutOfBounds::default(); 3];
    }

    /// `(name, histogram)` for every stage, in [`STAGES`] order.
    pub fn stages(&self) -> [(&'static str, &Histogram<u64>); 3] {
        [("wire", &self.wire), ("queue", &self.queue), ("total", &self.total)]
    }

    pub fn count(&self) -> u64 {
        self.total.len()
    }

    /// The percentiles of stage `i` (in [`STAGES`] order) with its counts out of bounds.
    pub fn percentiles(&self, i: usize) -> Percentiles {
        let (_, h) = self.stages()[i];
        Percentiles { out_of_bounds: self.out_of_bounds[i], ..Percentiles::of(h) }
    }

    /// Percentiles of each stage (with its counts out of bounds), keyed by stage name.
    pub fn summary(&self) -> BTreeMap<String, Percentiles> {
        STAGES.iter().enumerate().map(|(i, k)| (k.to_string(), self.percentiles(i))).collect()
    }
}

/// The percentiles mdsub quotes, in ns.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
    /// Latencies above [`MAX_TRACKABLE_NS`], recorded as it (a percentile at or above it is
    /// then a floor: `≥60s`), and below 0, recorded as 1 ns (a percentile at 1 ns is then a
    /// ceiling: `<0s`); flattened into the JSON (`clamped`, `ahead`, `ahead_max_ns`).
    #[serde(flatten)]
    pub out_of_bounds: OutOfBounds,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.50),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            mean_ns: h.mean(),
            out_of_bounds: OutOfBounds::default(),
        }
    }
}

/// A latency as [`human_ns`] says it, or `≥60s` for one in the histograms' top bin when
/// latencies above [`MAX_TRACKABLE_NS`] were recorded there (`b.clamped` of them): the bin also
/// holds latencies a little under 60 s, which read back as 60.03 s and are not clamped; `<0s`
/// for one in the bottom bin (1 ns) when latencies below 0 were recorded there (`b.ahead`).
pub fn human_latency(ns: u64, b: OutOfBounds) -> String {
    if b.clamped > 0 && ns >= MAX_TRACKABLE_NS {
        format!("≥{}s", MAX_TRACKABLE_NS / 1_000_000_000)
    } else if b.ahead > 0 && ns <= 1 {
        "<0s".to_string()
    } else {
        human_ns(ns)
    }
}

/// What a stage's `ahead` count means, in the report's and the files' words: `latencies below
/// 0, down to -X, were recorded as 1 ns: …`.
pub fn ahead_words(b: &OutOfBounds) -> String {
    let lowest = human_ns(b.ahead_max_ns);
    let what = if b.ahead == 1 {
        format!("latency below 0, at -{lowest}, was")
    } else {
        format!("latencies below 0, down to -{lowest}, were")
    };
    format!("{what} recorded as 1 ns: a send time ahead of this host's clock, or this clock stepped back")
}

/// Loss from what the publishers said they `sent` (their ends of stream, and the floors of
/// sessions without one) and what of it arrived: accepted (`accepted`), or dropped for order
/// (`reordered`: it came late, after a later message of its topic; it was not lost). `Err`:
/// more arrived than the publishers said they sent, by this many: a publisher's count is
/// wrong, so loss is not known (a 0 there would hide the excess).
pub fn loss_of(sent: u64, accepted: u64, reordered: u64) -> Result<u64, u64> {
    // In u128: no sum of two counts saturates into a false balance.
    let (sent, arrived) = (u128::from(sent), u128::from(accepted) + u128::from(reordered));
    match sent.checked_sub(arrived) {
        Some(lost) => Ok(lost as u64),
        None => Err(u64::try_from(arrived - sent).unwrap_or(u64::MAX)),
    }
}

/// The line that says `excess` more messages arrived on `whom` than the `sent` its
/// publishers' ends of stream claim ([`loss_of`]).
pub fn beyond_sent_line(whom: &str, sent: u64, excess: u64) -> String {
    format!(
        "{whom}: the publishers' ends of stream say {sent} message(s) were sent, but {} arrived \
         ({excess} more): a publisher's count is wrong; loss is unknown",
        sent.saturating_add(excess)
    )
}

/// The `loss_basis` of a run whose publishers' ends of stream say `sent` and `excess` more than
/// that arrived ([`loss_of`]): the engine's and the baseline's alike.
pub fn beyond_sent_basis(sent: u64, excess: u64) -> String {
    format!(
        "unknown: the publishers' ends of stream say {sent} message(s) were sent, but {excess} more than that \
         arrived: a publisher's count is wrong"
    )
}

/// `basis` (the run's `loss_basis`) for a `lost` that includes `n` data frames of publishers
/// over a reader's limit of live publishers ([`RunReport::over_limit_lost`]).
pub fn over_limit_basis(basis: &str, n: u64) -> String {
    format!(
        "{basis}, and {n} data frame(s) of publishers past a reader's limit of live publishers, \
         dropped unjudged with their ends of stream (a floor of what those publishers lost)"
    )
}

/// Messages per second over a run's span: `n` messages from the first (at the span's start)
/// to the last (at its end) span n − 1 intervals, so the rate is (n − 1) / span (3 messages
/// a second apart are 1 msg/s, not 1.5). With fewer than two messages, or no span, `n` over
/// `fallback_s` (the run's time).
pub fn span_rate(n: u64, span_ns: u64, fallback_s: f64) -> f64 {
    if n >= 2 && span_ns > 0 {
        (n - 1) as f64 * 1e9 / span_ns as f64
    } else {
        n as f64 / fallback_s.max(1e-9)
    }
}

/// Where the engine publishes its metrics besides the report.
#[derive(Debug, Clone, Default)]
pub struct OutputsConfig {
    /// HdrHistogram interval log (`--hlog`), claimed by whoever owns the run.
    pub hlog: Option<crate::outfile::Claimed>,
    /// When the interval log is closed and a new one started, and how many closed ones are kept
    /// (`--hlog-rotate-every`, `--hlog-rotate-bytes`, `--hlog-keep`; never by default).
    pub hlog_rotation: hlog_file::Rotation,
    /// End-of-run percentile spectrum of the `total` stage (`--hgrm`), claimed likewise.
    pub hgrm: Option<crate::outfile::Claimed>,
    /// Serve `/metrics` here (`--metrics-listen`).
    pub listen: Option<std::net::SocketAddr>,
    /// Who may scrape it (`--metrics-allow-addr`, `--metrics-token-file`; open by default).
    pub metrics_access: crate::security::HttpAccess,
    /// A failed write to the files is kept in the report's `metrics_write_error` for the caller
    /// to say, instead of said by the collector as it happens (capacity's trials: one cause, one line).
    pub quiet_write_errors: bool,
}

/// What the sequence checks and the frame decoder counted: a run's totals ([`RunReport`]) or
/// one shard's ([`ShardReport`]).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SequenceCounts {
    /// Of `lost`: messages sent before the first one seen of their publisher's session (a late
    /// join, or loss at the very start: sequence numbers cannot tell them apart).
    pub before_first: u64,
    /// Messages missing by sequence number.
    pub gaps: u64,
    /// Dropped: a topic sequence already delivered.
    pub duplicates: u64,
    /// Messages dropped for arriving after a later one of their topic (not in `gaps`).
    pub reordered: u64,
    /// Publisher restarts seen (new session id).
    pub restarts: u64,
    /// Publisher ids two or more publishers were found to share (their sessions are then
    /// tracked side by side, and new sessions of the id are not counted as restarts).
    pub id_conflicts: u64,
    /// Publisher sessions forgotten as vanished: nothing (no data, no heartbeat, no end of
    /// stream) was heard of their publisher for `--forget-silent-after`. Each is in
    /// `unended_sessions`, counted to its last arrived message (seen from its first).
    pub vanished: u64,
    /// Of `vanished`, those heard again afterwards (a link down that long): taken up where
    /// they were, out of `unended_sessions` again.
    pub vanished_back: u64,
    /// Malformed or rejected frames dropped, by reason.
    pub bad_frames: BTreeMap<String, u64>,
}

impl SequenceCounts {
    /// Add `other`'s counts to these (a run's totals from its shards').
    pub fn add(&mut self, other: &SequenceCounts) {
        // Saturating: the counts come from peers' sequence numbers.
        self.before_first = self.before_first.saturating_add(other.before_first);
        self.gaps = self.gaps.saturating_add(other.gaps);
        self.duplicates = self.duplicates.saturating_add(other.duplicates);
        self.reordered = self.reordered.saturating_add(other.reordered);
        self.restarts = self.restarts.saturating_add(other.restarts);
        self.id_conflicts = self.id_conflicts.saturating_add(other.id_conflicts);
        self.vanished = self.vanished.saturating_add(other.vanished);
        self.vanished_back = self.vanished_back.saturating_add(other.vanished_back);
        for (reason, n) in &other.bad_frames {
            let total = self.bad_frames.entry(reason.clone()).or_insert(0);
            *total = total.saturating_add(*n);
        }
    }
}

/// End-of-run report of one subscriber (the engine or the baseline).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    /// `engine` or `baseline`.
    pub subscriber: String,
    pub duration_s: f64,
    /// Data messages the publishers sent (from their end-of-stream frames), if
    /// any was seen; sessions without one (a restarted publisher's old session)
    /// count by the last stream sequence that arrived (`unended_*`).
    pub sent: Option<u64>,
    /// Publisher sessions that ended without an end of stream (the publisher
    /// restarted, and later ended a new session with its own end of stream; or the session was
    /// still open when the engine ended: Ctrl-C, a time limit, a snail stop, a publisher gone)
    /// and the messages in `sent` counted for them by
    /// their last arrived sequence: a floor, since what such a session sent
    /// after its last arrived message is not known.
    pub unended_sessions: u64,
    pub unended_sent: u64,
    /// Data messages that reached a handler (duplicates excluded).
    pub delivered: u64,
    /// Data messages a reader accepted that no handler took because the engine stopped (a
    /// croak, Ctrl-C, a time limit), before the end of stream or after it: frames staged for or
    /// queued to a worker, which stops on the flag within one hand-off's handling. They arrived,
    /// so they are not in `lost`. Accepted = `delivered` + this (+ what a worker's resting
    /// snail skipped, which is lost); 0 after a normal end.
    pub not_handled: u64,
    /// Messages sent but not delivered, where that can be known (see `loss_basis`): never
    /// arrived, or skipped by a resting snail. With sessions in `unended_sessions` it is counted
    /// up to each one's last arrived message (the gaps before it), a floor like `sent`. Those left unhandled at a stop are `not_handled`;
    /// those dropped for order (`reordered`) arrived late and are not lost.
    pub lost: Option<u64>,
    /// Messages that arrived (accepted or dropped for order) beyond what the publishers' ends
    /// of stream say they sent: a publisher's count is wrong, and `lost` is then unknown.
    /// 0 normally.
    #[serde(default)]
    pub beyond_sent: u64,
    /// Of `lost`: data frames of publishers past a reader's limit of live publishers
    /// (`bad_frames.over_limit_publishers`), dropped unjudged with their ends of stream, so no
    /// end-of-stream count covers them; what else those publishers sent is not known (a floor).
    #[serde(default)]
    pub over_limit_lost: u64,
    /// How `lost` was established, or why it is unknown.
    pub loss_basis: String,
    /// What the sequence checks and the frame decoder counted (flattened into the JSON).
    #[serde(flatten)]
    pub counts: SequenceCounts,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    /// Latency percentiles by stage (`wire`, `queue`, `total`).
    pub latency: BTreeMap<String, Percentiles>,
    /// Stopped by Ctrl-C / stop request (or its time limit) before the end of stream had been
    /// read and every message handed off before it handled.
    pub interrupted: bool,
    /// Of those, stopped because its time limit ran out (`engine --max-duration`, a bench or
    /// capacity drain deadline), not by a signal.
    pub time_limit: bool,
    /// Metric intervals lost because the collector's queue was full (should be 0).
    pub metrics_dropped: u64,
    /// Connections to the engine's monitor PUB refused, by reason (its access policy's and
    /// libzmq's handshake's: docs/REFUSALS.md); each reason was said on stderr when first met.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub monitor_refused: BTreeMap<String, u64>,
    /// Of the monitor PUB's connections, handshake outcomes its handshake ledger did not
    /// remember, being full: by how many `monitor_refused` is off (said once on stderr).
    #[serde(default, skip_serializing_if = "crate::diag::is_zero")]
    pub monitor_ledger_forgotten: u64,
    /// Hand-offs or handed-off frames a worker could not read (a fault of mdsub's own; should
    /// be 0). Their messages are in `not_handled`.
    #[serde(default)]
    pub handoff_malformed: u64,
    /// Interval-log or spectrum writes that failed (see stderr).
    pub metrics_write_errors: u64,
    /// Of them, `--hgrm` rewrites during the run that failed and that the final write made good
    /// (FILE whole at the end): they do not make the run fail ([`RunReport::metrics_files_incomplete`]).
    #[serde(default, skip_serializing_if = "crate::diag::is_zero")]
    pub metrics_write_errors_made_good: u64,
    /// The first of them: its file and cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_write_error: Option<String>,
    /// Per shard (the engine; empty for the baseline).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardReport>,
    /// The status agent's links to the clone store (`engine --store`): their state and losses
    /// by reason when it stopped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub store_links: Vec<crate::link::LinkStats>,
    /// Counters kept by the workers' handler (e.g. `verify`), summed.
    pub handler: BTreeMap<String, u64>,
    /// The handler's end-report lines (e.g. the `book` handler's best bid and ask per instrument).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub handler_summary: Vec<String>,
    /// Every agent thread of the subscriber: work, idle and back-pressure
    /// time, CPU time.
    pub agents: Vec<crate::agent::AgentStats>,
    /// The snail's verdicts and counters per reader and worker (engine only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snail: Option<crate::snail::SnailReport>,
    /// Per thread, per message: the readers, the shards' libzmq I/O threads,
    /// the workers and the collector; for the baseline its thread and its
    /// libzmq I/O thread.
    pub threads: Vec<ThreadAccount>,
}

/// One shard's account: what arrived, what was wrong with it, its latency and
/// its projected ceiling.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ShardReport {
    /// `shard0`, `shard1`, …
    pub shard: String,
    /// Frames received on the shard's SUB (data, control, bad).
    pub received: u64,
    /// Data messages accepted and handed to workers.
    pub msgs: u64,
    /// Bytes of those messages (whole frames: topic, header, payload).
    pub bytes: u64,
    /// What the shard's publishers said they sent (their end-of-stream frames, and a session
    /// without one by its last arrived sequence), once a session was heard to an end.
    pub sent: Option<u64>,
    /// `sent - msgs - reordered` when the shard heard the publisher sessions it needs to an end
    /// (one per endpoint it connects to, or `--expect-eos N`) and takes every topic (a message
    /// dropped for order arrived: it is not lost); unknown when more arrived than `sent`
    /// (`beyond_sent`). A floor when a session without an end of stream is in `sent`.
    pub lost: Option<u64>,
    /// How the shard's `lost` was established, or why it is unknown (the run's `loss_basis`,
    /// for this shard).
    pub loss_basis: String,
    /// Messages that arrived beyond what the shard's publishers' ends of stream say they sent
    /// (a publisher's count is wrong); 0 normally.
    #[serde(default)]
    pub beyond_sent: u64,
    /// The shard's sequence and frame counts (flattened into the JSON).
    #[serde(flatten)]
    pub counts: SequenceCounts,
    /// Its SUB's connect endpoints: state, connects, reconnects, losses by
    /// reason, links mdsub re-established (libzmq would not).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<crate::link::LinkStats>,
    /// Publisher connections its SUB's bound endpoints accepted, and those that ended (a
    /// publisher that closed, or a message over `max_msg_bytes`: libzmq does not say which).
    pub publisher_connects: u64,
    pub publisher_disconnects: u64,
    /// Connections accepted there that libzmq refused in their handshake (no ZeroMQ peer, a port
    /// check, another security mechanism): not publisher disconnects.
    #[serde(default)]
    pub publisher_refused: u64,
    /// Times libzmq could not accept a connection on its bound endpoints (`accept()` failed,
    /// most often EMFILE: out of descriptors): attempts, not peers, since libzmq retries at once.
    #[serde(default)]
    pub accept_failed: u64,
    /// Handshake outcomes there not remembered because the handshake ledger was full: by how
    /// many the three counts above are off (0 unless it filled; said once on stderr when it did).
    #[serde(default)]
    pub handshake_ledger_forgotten: u64,
    /// Times the shard went silent (no frame, not even a heartbeat, for 1.5 s).
    pub silences: u64,
    pub longest_silence_ms: f64,
    /// Receive time minus the publisher's intended send time: of the last
    /// data message, and the largest seen (ms).
    pub lag_last_ms: f64,
    pub lag_max_ms: f64,
    /// What the shard could take with each of its threads on a core of its
    /// own; None before any message.
    pub ceiling: Option<Ceiling>,
    /// Messages its workers handled (duplicates excluded), and their bytes.
    pub delivered: u64,
    pub delivered_bytes: u64,
    /// Latency percentiles by stage, of this shard's messages.
    pub latency: BTreeMap<String, Percentiles>,
}

/// A shard's projected ceiling: the rate of the shard's messages at which the first thread on
/// its path saturates (a core of its own each): its I/O thread and its reader take every one of
/// the shard's messages, a worker its share of them. So 1e9 ÷ the largest of (a thread's CPU ns
/// per message it handled × its share of the shard's messages).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Ceiling {
    pub msgs_per_sec: f64,
    /// The thread that sets it (`shard0-io`, `shard0-reader`, `worker1`).
    pub thread: String,
    /// Its CPU ns per message it handled.
    pub cpu_ns_per_msg: f64,
    /// The share of the shard's messages it takes (1 for the shard's own threads; a worker's
    /// share of what the shard delivered).
    pub share: f64,
}

/// One thread's cost per message.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ThreadAccount {
    /// Thread name (`shard0-io`, `shard0-reader`, `worker0`, `metrics`).
    pub thread: String,
    /// Messages that passed through it (frames for a shard's threads,
    /// handled messages for a worker, delivered ones for the collector).
    pub msgs: u64,
    pub cpu_ns: u64,
    pub cpu_ns_per_msg: f64,
    /// Share of the run's wall time it was on a CPU.
    pub busy_fraction: f64,
    /// Time it waited on a full output (back-pressure), ms, and as a share of its wall time.
    pub blocked_ms: f64,
    pub blocked_fraction: f64,
    /// Minor page faults the thread took over the run, where mdsub reads them from
    /// /proc (libzmq's I/O threads: see zmqx::heap); absent for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
}

impl ThreadAccount {
    /// The account of `msgs` messages that cost `cpu_ns` over `wall_ns`, blocked `blocked_ns`.
    pub fn new(thread: &str, msgs: u64, cpu_ns: u64, wall_ns: u64, blocked_ns: u64) -> ThreadAccount {
        let frac = |v: u64| if wall_ns == 0 { 0.0 } else { (v as f64 / wall_ns as f64).min(1.0) };
        ThreadAccount {
            thread: thread.to_string(),
            msgs,
            cpu_ns,
            cpu_ns_per_msg: if msgs == 0 { 0.0 } else { cpu_ns as f64 / msgs as f64 },
            busy_fraction: frac(cpu_ns),
            blocked_ms: blocked_ns as f64 / 1e6,
            blocked_fraction: frac(blocked_ns),
            minor_faults: None,
        }
    }
}

impl Ceiling {
    /// The ceiling set by the thread of `path` that saturates first: `path` gives each thread
    /// with the share (0 to 1) of the shard's messages it takes; those with no messages, or no
    /// share, are not on the path.
    pub fn of<'a>(path: impl IntoIterator<Item = (&'a ThreadAccount, f64)>) -> Option<Ceiling> {
        let cost = |(t, share): &(&ThreadAccount, f64)| t.cpu_ns_per_msg * share;
        let (busiest, share) = path
            .into_iter()
            .filter(|(t, share)| t.msgs > 0 && t.cpu_ns_per_msg > 0.0 && *share > 0.0)
            .max_by(|a, b| cost(a).total_cmp(&cost(b)))?;
        Some(Ceiling {
            msgs_per_sec: 1e9 / (busiest.cpu_ns_per_msg * share),
            thread: busiest.thread.clone(),
            cpu_ns_per_msg: busiest.cpu_ns_per_msg,
            share,
        })
    }

    /// How the report says it: `93.2 k msg/s, set by worker0 at 21469 ns/msg for 50 % of them`.
    /// When its thread's CPU per message includes its idle polling (`idle_polling`, see
    /// [`idle_polling`]), the ceiling is only a floor and is not worded as a limit: `at least
    /// 15.3 k msg/s: shard0-reader's 65435 ns/msg includes its idle polling at this rate (--idle)`.
    pub fn words(&self, idle_polling: bool) -> String {
        let of = if self.share < 1.0 { format!(" for {:.0} % of them", self.share * 100.0) } else { String::new() };
        let rate = crate::diag::human_rate(self.msgs_per_sec);
        if idle_polling {
            return format!(
                "at least {rate}: {}'s {:.0} ns/msg{of} includes its idle polling at this rate (--idle)",
                self.thread, self.cpu_ns_per_msg
            );
        }
        format!("{rate}, set by {} at {:.0} ns/msg{of}", self.thread, self.cpu_ns_per_msg)
    }
}

/// An agent that found no work this many times per item it handled, or more, spun through at
/// least `backoff`'s whole spin phase (its first 10 idle rounds; 10 yields follow) before every
/// item on average: its CPU per item includes that polling, which a saturated thread does not do
/// (readers at 2k msg/s under the default `backoff`: 17 idle rounds and 50-56 µs of CPU per
/// message, a ceiling of 18 k msg/s that was no limit). A `block` idle waits once or twice per
/// item at such rates, without polling.
pub const IDLE_POLLING_ROUNDS_PER_ITEM: u64 = 10;

/// Whether agent `a`'s CPU per item includes idle polling ([`IDLE_POLLING_ROUNDS_PER_ITEM`]).
pub fn idle_polling(a: &crate::agent::AgentStats) -> bool {
    a.work > 0 && a.idle_rounds / a.work >= IDLE_POLLING_ROUNDS_PER_ITEM
}

impl RunReport {
    /// Failed writes that left an `--hlog`/`--hgrm` file incomplete: every failed write but the
    /// `--hgrm` rewrites the final write made good. Not 0: the run exits 1.
    pub fn metrics_files_incomplete(&self) -> u64 {
        self.metrics_write_errors.saturating_sub(self.metrics_write_errors_made_good)
    }

    /// The human table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into());
        let _ = writeln!(s, "== {} ==", self.subscriber);
        let _ = writeln!(
            s,
            "  duration     {:.3} s{}",
            self.duration_s,
            match (self.time_limit, self.interrupted) {
                (true, _) => " (stopped at its time limit)",
                (false, true) => " (interrupted)",
                _ if self.snail.as_ref().is_some_and(|s| s.croaked.is_some()) => " (stopped: the snail croaked)",
                _ => "",
            }
        );
        let unended = if self.sent.is_some() && self.unended_sessions > 0 {
            format!(
                "   ({} of them by the last sequence that arrived from {} session(s) without an end of stream: what a session sent after that is not known)",
                self.unended_sent, self.unended_sessions
            )
        } else {
            String::new()
        };
        let _ = writeln!(s, "  sent         {}{unended}", opt(self.sent));
        let not_handled = match self.not_handled {
            0 => String::new(),
            n => format!("   ({n} more accepted but not handled when the engine stopped)"),
        };
        let _ = writeln!(s, "  delivered    {}{not_handled}", self.delivered);
        let _ = writeln!(
            s,
            "  lost         {}   (gaps by sequence: {}, duplicates dropped: {}, reordered dropped: {}, restarts: {})",
            // Unknown says why (`unknown: end of stream not seen …`).
            self.lost.map(|v| v.to_string()).unwrap_or_else(|| match self.loss_basis.starts_with("unknown") {
                true => self.loss_basis.clone(),
                false => "unknown".into(),
            }),
            self.counts.gaps,
            self.counts.duplicates,
            self.counts.reordered,
            self.counts.restarts
        );
        if self.lost.is_some() && !self.loss_basis.is_empty() && self.loss_basis != "end-of-stream counts" {
            // Known, but not from ends of stream alone: what it was counted from.
            let _ = writeln!(s, "  loss basis   {}", self.loss_basis);
        }
        if self.beyond_sent > 0 {
            let _ = writeln!(
                s,
                "  beyond sent  {}   (arrived beyond what the publishers' ends of stream say they sent: a publisher's count is wrong)",
                self.beyond_sent
            );
        }
        if self.lost.is_some() && self.over_limit_lost > 0 {
            let _ = writeln!(
                s,
                "               of them {} data frame(s) of publishers past a reader's limit of live publishers, \
                 dropped with their ends of stream (bad frames over_limit_publishers): what else they sent is not known",
                self.over_limit_lost
            );
        }
        if let Some(lost) = self.lost.filter(|&l| l > 0 && self.counts.before_first > 0) {
            let _ = writeln!(
                s,
                "               of them {} sent before the first message seen of their publisher's session: \
                 this subscriber joined late, or they were lost at the very start",
                self.counts.before_first.min(lost)
            );
        }
        if self.counts.id_conflicts > 0 {
            let _ = writeln!(
                s,
                "  id conflicts {}   (publisher ids two publishers share: each needs its own --publisher-id)",
                self.counts.id_conflicts
            );
        }
        if self.counts.vanished > 0 {
            let back = match self.counts.vanished_back {
                0 => String::new(),
                n => format!("; {n} heard again after, taken up where they were and that count taken back"),
            };
            let _ = writeln!(
                s,
                "  vanished     {}   (publisher sessions forgotten after nothing was heard of them for \
                 --forget-silent-after: counted as unended when seen from their first message{back})",
                self.counts.vanished
            );
        }
        let bad: u64 = self.counts.bad_frames.values().sum();
        if bad > 0 {
            let reasons: Vec<String> =
                self.counts.bad_frames.iter().filter(|(_, &v)| v > 0).map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  bad frames   {bad}   ({})", reasons.join(", "));
        } else {
            let _ = writeln!(s, "  bad frames   0");
        }
        match self.delivered {
            // The rate is the messages after the first over the first-to-last span ([`span_rate`]):
            // one message has none (before: `28350 msg/s`, one over the run's time).
            1 => {
                let _ = writeln!(s, "  throughput   n/a (one message: a rate needs two)");
            }
            _ => {
                let _ = writeln!(s, "  throughput   {:.0} msg/s   {:.1} MB/s", self.msgs_per_sec, self.mb_per_sec);
            }
        }
        let _ = writeln!(s, "  latency      {:>10} {:>10} {:>10} {:>10}", "p50", "p99", "p99.9", "max");
        for stage in ["wire", "queue", "total"] {
            if let Some(p) = self.latency.get(stage) {
                if p.count > 0 {
                    let _ = writeln!(
                        s,
                        "    {:<10} {:>10} {:>10} {:>10} {:>10}",
                        stage,
                        human_latency(p.p50_ns, p.out_of_bounds),
                        human_latency(p.p99_ns, p.out_of_bounds),
                        human_latency(p.p999_ns, p.out_of_bounds),
                        human_latency(p.max_ns, p.out_of_bounds)
                    );
                }
            }
        }
        for stage in ["wire", "queue", "total"] {
            let Some(b) = self.latency.get(stage).map(|p| p.out_of_bounds) else { continue };
            if b.clamped > 0 {
                let _ = writeln!(
                    s,
                    "    {stage}: {} latencies above {MAX_TRACKABLE_HUMAN} recorded as {MAX_TRACKABLE_HUMAN}",
                    b.clamped
                );
            }
            if b.ahead > 0 {
                let _ = writeln!(s, "    {stage}: {} {}", b.ahead, ahead_words(&b));
            }
        }
        if let Some(snail) = &self.snail {
            s.push_str(&snail.render());
        }
        if !self.handler.is_empty() {
            let c: Vec<String> = self.handler.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  handler      {}", c.join(", "));
        }
        for line in &self.handler_summary {
            let _ = writeln!(s, "    {line}");
        }
        if !self.agents.is_empty() {
            let _ = writeln!(
                s,
                "  threads      {:<14} {:>10} {:>9} {:>8} {:>9} {:>9}",
                "", "items", "CPU", "ns/item", "busy", "blocked"
            );
            for a in &self.agents {
                let _ = writeln!(
                    s,
                    "    {:<24} {:>10} {:>9} {:>8.0} {:>8.0}% {:>9}",
                    a.role,
                    a.work,
                    human_ns(a.cpu_ns),
                    a.cpu_ns_per_item(),
                    a.busy_fraction() * 100.0,
                    human_ns(a.blocked_ns)
                );
            }
        }
        if !self.shards.is_empty() {
            let _ = writeln!(
                s,
                "  shards       {:>10} {:>10} {:>6} {:>5} {:>8} {:>4} {:>8}   ceiling (1 core per thread)",
                "msgs", "MB", "gaps", "dups", "restarts", "bad", "silences"
            );
            for sh in &self.shards {
                let ceiling = match &sh.ceiling {
                    Some(c) => c.words(self.agents.iter().any(|a| a.role == c.thread && idle_polling(a))),
                    None => "unknown (no messages)".into(),
                };
                let _ = writeln!(
                    s,
                    "    {:<11} {:>10} {:>10.1} {:>6} {:>5} {:>8} {:>4} {:>8}   {}",
                    sh.shard,
                    sh.msgs,
                    sh.bytes as f64 / 1e6,
                    sh.counts.gaps,
                    sh.counts.duplicates,
                    sh.counts.restarts,
                    sh.counts.bad_frames.values().sum::<u64>(),
                    sh.silences,
                    ceiling
                );
            }
            for sh in &self.shards {
                for l in &sh.links {
                    let _ = writeln!(s, "    {:<11} link {l}", sh.shard);
                }
                if sh.publisher_connects > 0
                    || sh.publisher_disconnects > 0
                    || sh.publisher_refused > 0
                    || sh.accept_failed > 0
                {
                    let forgotten = match sh.handshake_ledger_forgotten {
                        0 => String::new(),
                        n => format!(" handshake_ledger_forgotten={n}"),
                    };
                    let _ = writeln!(
                        s,
                        "    {:<11} bound: publisher_connects={} publisher_disconnects={} publisher_refused={} \
                         accept_failed={}{forgotten}",
                        sh.shard,
                        sh.publisher_connects,
                        sh.publisher_disconnects,
                        sh.publisher_refused,
                        sh.accept_failed
                    );
                }
            }
        }
        for l in &self.store_links {
            let _ = writeln!(s, "  store        link {l}");
        }
        if !self.threads.is_empty() {
            let _ =
                writeln!(s, "  per message  {:<14} {:>10} {:>8} {:>6} {:>8}", "", "msgs", "CPU ns", "busy", "blocked");
            for t in &self.threads {
                let _ = writeln!(
                    s,
                    "    {:<24} {:>10} {:>8.0} {:>5.0}% {:>7.1}%",
                    t.thread,
                    t.msgs,
                    t.cpu_ns_per_msg,
                    t.busy_fraction * 100.0,
                    t.blocked_fraction * 100.0
                );
            }
        }
        if !self.monitor_refused.is_empty() {
            let said: Vec<String> = self.monitor_refused.iter().map(|(r, n)| format!("{r}={n}")).collect();
            let _ = writeln!(
                s,
                "  monitor: refused {} subscriber connection(s): {}",
                self.monitor_refused.values().sum::<u64>(),
                said.join(", ")
            );
        }
        if self.monitor_ledger_forgotten > 0 {
            let _ = writeln!(
                s,
                "  monitor: handshake_ledger_forgotten={} (the handshake ledger was full: the refusals above are \
                 off by as many)",
                self.monitor_ledger_forgotten
            );
        }
        if self.metrics_dropped > 0 {
            let _ = writeln!(
                s,
                "  WARNING: {} metric intervals were dropped; latency counts are incomplete",
                self.metrics_dropped
            );
        }
        if self.handoff_malformed > 0 {
            let _ = writeln!(
                s,
                "  WARNING: {} hand-offs (or frames in them) a worker could not read were not handled: a fault of mdsub's, please report it",
                self.handoff_malformed
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_add_and_summarise() {
        let mut a = StageHistograms::default();
        let mut b = StageHistograms::default();
        for i in 1..=1000i64 {
            a.record(i, 0, i * 1000);
        }
        b.record(0, i64::MAX, 5);
        b.record_queue_n(MAX_TRACKABLE_NS as i64 + 1, 4);
        b.record_queue_n(MAX_TRACKABLE_NS as i64, 2);
        a.add(&b);
        assert_eq!(a.count(), 1001);
        let clamped = a.out_of_bounds.map(|b| b.clamped);
        assert_eq!(clamped, [0, 5, 0], "above 60 s counted (60 s itself is not), n at a time");
        let s = a.summary();
        assert_eq!((s["wire"].out_of_bounds.clamped, s["queue"].out_of_bounds.clamped), (0, 5));
        assert!(s["total"].p50_ns >= 499_000 && s["total"].p50_ns <= 501_000, "{:?}", s["total"]);
        assert_eq!(s["queue"].max_ns, a.queue.highest_equivalent(MAX_TRACKABLE_NS));
        assert_eq!(s["wire"].count, 1001);
    }

    /// The worker's form records what `record_wire_total` of the signed latencies does, at every
    /// edge: equal times, 1 ns, the bound and past it, a send time ahead, and the far ends.
    #[test]
    fn recording_from_the_times_is_recording_the_latencies() {
        let m = MAX_TRACKABLE_NS;
        let times = [0, 1, 2, 1_000, m - 1, m, m + 1, m + 2, 2 * m, u64::MAX / 2, u64::MAX - 1, u64::MAX];
        for &sent in &times {
            for &recv in &times {
                for &done in &[recv, recv.saturating_add(1), sent, u64::MAX] {
                    let (mut by_times, mut by_latency) = (StageHistograms::default(), StageHistograms::default());
                    by_times.record_since_sent(sent, recv, done);
                    by_latency.record_wire_total(latency_ns(sent, recv), latency_ns(sent, done));
                    let what = format!("sent {sent} recv {recv} done {done}");
                    assert_eq!(by_times.wire, by_latency.wire, "{what}");
                    assert_eq!(by_times.total, by_latency.total, "{what}");
                    assert_eq!(by_times.out_of_bounds, by_latency.out_of_bounds, "{what}");
                }
            }
        }
    }

    #[test]
    fn human_units() {
        let clamped = OutOfBounds { clamped: 1, ..Default::default() };
        assert_eq!(human_latency(59_990_000_000, clamped), "59.99s");
        assert_eq!(human_latency(60_030_000_000, clamped), "≥60s");
        // The top bin with nothing clamped: a latency a little under 60 s read back.
        assert_eq!(human_latency(60_030_000_000, OutOfBounds::default()), "60.03s");
        // The bottom bin: below 0 where some were, 1 ns (the floor of a 0) where none was.
        let ahead = OutOfBounds { ahead: 1, ..Default::default() };
        assert_eq!((human_latency(1, ahead), human_latency(2, ahead)), ("<0s".into(), "2ns".into()));
        assert_eq!(human_latency(1, OutOfBounds::default()), "1ns");
    }

    #[test]
    fn latency_is_signed_and_saturates() {
        assert_eq!(latency_ns(1_000, 3_500), 2_500);
        assert_eq!(latency_ns(3_500, 1_000), -2_500);
        assert_eq!(latency_ns(7, 7), 0);
        assert_eq!(latency_ns(0, u64::MAX), i64::MAX);
        assert_eq!(latency_ns(u64::MAX, 0), i64::MIN, "a send time from a peer can be anything");
        assert_eq!(latency_ns(i64::MAX as u64, 0), -i64::MAX);
    }

    /// A capture whose send times are 30 s ahead of this host's clock, replayed at its pace:
    /// before, every wire and total latency read 1 ns in the report and the JSON, and nothing
    /// was counted or said.
    #[test]
    fn latencies_below_0_are_marked_and_counted_in_the_report() {
        let mut h = StageHistograms::default();
        for i in 0..3 {
            h.record(-30_000_000_000 + i, 25_000, -29_999_975_000 + i);
        }
        h.record(-4_100, 25_000, 20_900);
        let r = RunReport { latency: h.summary(), ..Default::default() };
        let t = r.render();
        let row = format!("    {:<10} {:>10} {:>10} {:>10} {:>10}\n", "wire", "<0s", "<0s", "<0s", "<0s");
        assert!(t.contains(&row), "{t}");
        assert!(
            t.contains(
                "    wire: 4 latencies below 0, down to -30.00s, were recorded as 1 ns: a send time ahead of this \
                 host's clock, or this clock stepped back\n"
            ),
            "{t}"
        );
        assert!(t.contains("    total: 3 latencies below 0, down to -30.00s, were recorded"), "{t}");
        assert!(!t.contains("queue:"), "{t}");
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["latency"]["wire"]["ahead"], 4, "{json}");
        assert_eq!(json["latency"]["wire"]["ahead_max_ns"], 30_000_000_000u64, "{json}");
        assert_eq!(json["latency"]["wire"]["clamped"], 0, "{json}");
        assert_eq!(json["latency"]["queue"]["ahead"], 0, "{json}");
    }

    #[test]
    fn latencies_above_60s_are_marked_and_counted_in_the_report() {
        // Before: `wire 60.03s 60.03s 60.03s 60.03s` for a capture whose lag was 589 s.
        let mut h = StageHistograms::default();
        for _ in 0..3 {
            h.record(589_210_000_000, 1_000, 589_210_001_000);
        }
        h.record(1_000, 1_000, 2_000);
        let r = RunReport { latency: h.summary(), ..Default::default() };
        let t = r.render();
        let row = format!("    {:<10} {:>10} {:>10} {:>10} {:>10}\n", "wire", "≥60s", "≥60s", "≥60s", "≥60s");
        assert!(t.contains(&row), "{t}");
        assert!(t.contains("    wire: 3 latencies above 60 s recorded as 60 s\n"), "{t}");
        assert!(t.contains("    total: 3 latencies above 60 s recorded as 60 s\n"), "{t}");
        assert!(!t.contains("queue:"), "{t}");
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["latency"]["wire"]["clamped"], 3, "{json}");
        assert_eq!(json["latency"]["queue"]["clamped"], 0, "{json}");
    }

    #[test]
    fn report_renders_loss_and_reasons() {
        let mut r = RunReport {
            subscriber: "engine".into(),
            sent: Some(10),
            delivered: 9,
            lost: Some(1),
            loss_basis: "end-of-stream counts".into(),
            ..Default::default()
        };
        r.counts.bad_frames.insert("short".into(), 2);
        let t = r.render();
        assert!(t.contains("lost         1"), "{t}");
        assert!(!t.contains("loss basis"), "counted from ends of stream alone, nothing more to say: {t}");
        assert!(t.contains("short=2"), "{t}");
        assert!(t.contains("sent         10\n"), "no unended sessions, no note: {t}");
        r.unended_sessions = 1;
        r.unended_sent = 4;
        let t = r.render();
        assert!(t.contains("sent         10   (4 of them by the last sequence that arrived from 1 session(s)"), "{t}");
        // A known loss counted in part to a session's last arrived message says so beside it.
        r.loss_basis = "end-of-stream counts; 1 session without an end of stream counted to its last arrived message \
                        (sent after it: unknown)"
            .into();
        let t = r.render();
        assert!(t.contains("lost         1   (gaps by sequence: 0,"), "{t}");
        assert!(t.contains(&format!("  loss basis   {}\n", r.loss_basis)), "{t}");
    }

    /// A vanished session joined late (the engine started after its publisher) is not in
    /// `unended_sessions`: the report's line does not say every one is, and says that those
    /// heard again had that count taken back. Before, it said they all were counted.
    #[test]
    fn the_vanished_line_says_which_sessions_count_as_unended() {
        let mut gone = RunReport::default();
        (gone.counts.vanished, gone.counts.vanished_back) = (2, 1);
        assert!(
            gone.render().contains(
                "--forget-silent-after: counted as unended when seen from their first message; 1 heard again \
                 after, taken up where they were and that count taken back)\n"
            ),
            "{}",
            gone.render()
        );
    }

    #[test]
    fn a_croaked_run_says_on_its_duration_line_that_the_snail_stopped_it() {
        let scream = crate::snail::Scream {
            verdict: crate::snail::Verdict::Snail,
            policy: crate::snail::Policy::Croak,
            site: "worker0".into(),
            shard: Some(0),
            publisher_id: None,
            topic: None,
            lag_ns: 500_000_000,
            max_lag_ns: 200_000_000,
            above_for_ns: 300_000_000,
            grace_ns: 300_000_000,
            silent_for_ns: None,
            last_good_seq: 80,
            at_ns: 0,
        };
        let mut r = RunReport { duration_s: 1.5, ..Default::default() };
        // One message has no rate (first to last is no span): said, not computed over the run.
        let one = RunReport { delivered: 1, msgs_per_sec: 28_350.0, ..Default::default() };
        assert!(one.render().contains("\n  throughput   n/a (one message: a rate needs two)\n"), "{}", one.render());
        let two = RunReport { delivered: 2, msgs_per_sec: 1000.0, ..Default::default() };
        assert!(two.render().contains("\n  throughput   1000 msg/s"), "{}", two.render());
        assert!(r.render().contains("  duration     1.500 s\n"), "{}", r.render());
        r.snail = Some(crate::snail::SnailReport { croaked: Some(scream), ..Default::default() });
        let t = r.render();
        assert!(t.contains("  duration     1.500 s (stopped: the snail croaked)\n"), "{t}");
    }

    /// Each thread of `threads` taking every message of the shard.
    fn whole(threads: &[ThreadAccount]) -> Vec<(&ThreadAccount, f64)> {
        threads.iter().map(|t| (t, 1.0)).collect()
    }

    /// Two workers share a shard's messages round-robin, each at 21469 ns per message it
    /// handles: the shard saturates them at 2 × 1e9 / 21469 msg/s. Before, the ceiling was
    /// 1e9 / 21469 (`0.05 M msg/s`) while the shard carried 30k msg/s with each worker 32 % busy.
    #[test]
    fn a_workers_cost_counts_at_its_share_of_the_shards_messages() {
        let threads = [
            ThreadAccount::new("shard0-reader", 60_000, 60_000 * 900, 2_000_000_000, 0),
            ThreadAccount::new("worker0", 30_000, 30_000 * 21_469, 2_000_000_000, 0),
            ThreadAccount::new("worker1", 30_000, 30_000 * 21_000, 2_000_000_000, 0),
        ];
        let path = [(&threads[0], 1.0), (&threads[1], 0.5), (&threads[2], 0.5)];
        let c = Ceiling::of(path).expect("a ceiling");
        assert_eq!((c.thread.as_str(), c.cpu_ns_per_msg, c.share), ("worker0", 21_469.0, 0.5));
        assert!((c.msgs_per_sec - 2e9 / 21_469.0).abs() < 1e-6, "{c:?}");
        assert_eq!(c.words(false), "93.2 k msg/s, set by worker0 at 21469 ns/msg for 50 % of them");
        // A worker that took none of the shard's messages is not on its path.
        let c = Ceiling::of([(&threads[0], 1.0), (&threads[1], 0.0)]).expect("a ceiling");
        assert_eq!(c.thread, "shard0-reader");
        // One hot worker (by-topic routing): 90 % of the messages at its cost.
        let c = Ceiling::of([(&threads[1], 0.9), (&threads[2], 0.1)]).expect("a ceiling");
        assert!((c.msgs_per_sec - 1e9 / (21_469.0 * 0.9)).abs() < 1e-6, "{c:?}");
    }

    #[test]
    fn ceiling_is_set_by_the_costliest_thread_and_named() {
        let threads = [
            ThreadAccount::new("shard0-io", 1000, 240_000, 1_000_000, 0),
            ThreadAccount::new("shard0-reader", 1000, 244_000, 2_000_000, 500_000),
            ThreadAccount::new("worker0", 1000, 96_000, 1_000_000, 0),
            ThreadAccount::new("worker1", 0, 5_000, 1_000_000, 0),
        ];
        assert_eq!(threads[1].cpu_ns_per_msg, 244.0);
        assert_eq!(threads[1].busy_fraction, 0.122);
        assert_eq!(threads[1].blocked_fraction, 0.25);
        let c = Ceiling::of(whole(&threads)).expect("a ceiling");
        assert_eq!((c.thread.as_str(), c.share), ("shard0-reader", 1.0));
        assert!((c.msgs_per_sec - 1e9 / 244.0).abs() < 1e-6);
        assert_eq!(Ceiling::of(whole(&threads[3..])), None, "no messages, no ceiling");
        let r = RunReport {
            shards: vec![ShardReport { msgs: 1000, ceiling: Some(c), ..Default::default() }],
            threads: threads.to_vec(),
            ..Default::default()
        };
        let t = r.render();
        assert!(t.contains("4.098 M msg/s, set by shard0-reader at 244 ns/msg\n"), "{t}");
    }

    /// A reader at 2k msg/s under the default `backoff` idle spins and yields between messages:
    /// its 65435 ns/msg is mostly that polling, and its ceiling is a floor, worded so. Before, the
    /// report said `0.02 M msg/s, set by shard0-reader at 65435 ns/msg`, which read as a limit.
    #[test]
    fn a_ceiling_from_a_thread_that_idle_polls_is_not_worded_as_a_limit() {
        let reader = ThreadAccount::new("shard0-reader", 20_000, 20_000 * 65_435, 10_000_000_000, 0);
        let c = Ceiling::of(whole(std::slice::from_ref(&reader))).expect("a ceiling");
        let agent = |work, idle_rounds| crate::agent::AgentStats {
            role: "shard0-reader".into(),
            work,
            idle_rounds,
            ..Default::default()
        };
        let mut r = RunReport {
            shards: vec![ShardReport { msgs: 20_000, ceiling: Some(c), ..Default::default() }],
            threads: vec![reader],
            agents: vec![agent(20_000, 20_000 * 17)],
            ..Default::default()
        };
        let t = r.render();
        assert!(
            t.contains(
                "at least 15.3 k msg/s: shard0-reader's 65435 ns/msg includes its idle polling at this rate (--idle)\n"
            ),
            "{t}"
        );
        assert!(!t.contains("set by"), "{t}");
        // A reader that idled less than a whole spin phase per message: its cost, a limit.
        r.agents = vec![agent(20_000, 20_000 * 9)];
        assert!(r.render().contains("15.3 k msg/s, set by shard0-reader at 65435 ns/msg\n"), "{}", r.render());
    }

    /// Loss counts what never arrived: a message dropped for order arrived (late); more
    /// arriving than was said sent is a wrong count, not a loss of 0.
    #[test]
    fn loss_is_what_never_arrived_and_an_excess_is_no_zero() {
        assert_eq!(loss_of(6, 5, 1), Ok(0), "1 2 3 5 4 6: 4 came late");
        assert_eq!(loss_of(8, 5, 1), Ok(2));
        assert_eq!(loss_of(5, 10, 0), Err(5), "an end of stream short of what arrived");
        assert_eq!(loss_of(u64::MAX, u64::MAX, 1), Err(1), "no overflow");
        let l = beyond_sent_line("shard0", 5, 5);
        assert!(l.starts_with("shard0: ") && l.contains("5 message(s) were sent, but 10 arrived"), "{l}");
    }

    /// n messages over the span from the first to the last are n − 1 intervals.
    #[test]
    fn a_rate_over_a_span_counts_its_intervals() {
        assert!((span_rate(3, 2_000_000_000, 9.0) - 1.0).abs() < 1e-12, "--rate 1 --count 3 is 1 msg/s");
        assert!((span_rate(1_000_001, 1_000_000_000, 9.0) - 1e6).abs() < 1e-6);
        assert_eq!(span_rate(1, 0, 2.0), 0.5, "one message: over the run's time");
        assert_eq!(span_rate(4, 0, 2.0), 2.0, "no span");
        assert_eq!(span_rate(0, 0, 0.0), 0.0);
    }
}
