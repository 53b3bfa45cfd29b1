//! The Prometheus text exposition (format 0.0.4) of a running engine: counters
//! per shard, per-agent CPU and busy fraction, and latency as classic
//! histograms built from each shard's HdrHistogram at scrape time (fixed
//! `le` bounds, so they add up across shards and engines) plus quantile
//! gauges over the last interval.
//!
//! Written by hand: the format is a few lines of text, and the exposition
//! crates keep their own registry of atomics that would duplicate the
//! engine's counters (and the HdrHistograms) instead of reading them.

use std::fmt::Write;

use hdrhistogram::Histogram;

use super::collector::LiveLatency;
use super::{shard_name, OutOfBounds, StageHistograms};
use crate::agent::AgentStats;

/// Upper bounds of the latency histogram's buckets, in ns: 1-2-5 steps from 1 µs to 50 s,
/// then [`MAX_TRACKABLE_NS`](super::MAX_TRACKABLE_NS) (60 s), where latencies are clamped;
/// `+Inf` follows. Every latency up to the clamp falls in a finite bucket: Prometheus's
/// `histogram_quantile` answers the highest finite bound for a quantile in `+Inf`, so with
/// bounds ending at 10 s a 30 s p99 read as 10 s. A clamped latency (held at 60 s, whose
/// HdrHistogram bin reaches some 33 ms above it) is in `+Inf` and reads as 60 s.
pub const BUCKET_BOUNDS_NS: [u64; 25] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    20_000_000_000,
    50_000_000_000,
    super::MAX_TRACKABLE_NS,
];

/// The summary's quantiles: `(label, quantile)`; `1` is the max. Each is `NaN` for an
/// interval without observations.
pub const QUANTILES: [(&str, f64); 4] = [("0.5", 0.5), ("0.99", 0.99), ("0.999", 0.999), ("1", 1.0)];

/// One shard's live counters.
#[derive(Debug, Clone, Default)]
pub struct ShardLive {
    pub received: u64,
    pub forwarded: u64,
    /// Sequence checks and refused frames, as the report has them at the end.
    pub counts: super::SequenceCounts,
    /// The shard's watched links (losses by reason, reconnects).
    pub links: Vec<crate::link::LinkStats>,
    /// Publisher connections its bound endpoints accepted, and those that ended.
    pub publisher_connects: u64,
    pub publisher_disconnects: u64,
    pub publisher_refused: u64,
    /// Times libzmq could not accept a connection on its bound endpoints (attempts).
    pub accept_failed: u64,
    /// Handshake outcomes there its handshake ledger did not remember (it was full).
    pub handshake_ledger_forgotten: u64,
    /// Messages that arrived beyond what its publishers' ends of stream say they sent
    /// (`beyond_sent`: a publisher's count is wrong, loss unknown).
    pub beyond_sent: u64,
    /// Publishers and topics its reader's sequence tracker holds now.
    pub publishers_held: u64,
    pub topics_held: u64,
}

/// What the engine knows now, apart from latency.
#[derive(Debug, Clone, Default)]
pub struct EngineLive {
    pub engine_id: String,
    pub shards: Vec<ShardLive>,
    pub agents: Vec<AgentStats>,
    /// Intervals whose histograms workers could not ship (should stay 0).
    pub metrics_dropped: u64,
    /// The snail's state at every site that judges lag (readers, workers).
    pub snail: Vec<crate::snail::SiteReport>,
    /// What each worker core's handler refused, by reason (as of its last report period).
    pub handler_refused: Vec<HandlerRefused>,
    /// The monitor PUB's refused subscriber connections, every reason with its count (None: no
    /// monitor): its access policy's and libzmq's handshake's (`security::ZapCounters`).
    pub monitor_refused: Option<Vec<(&'static str, u64)>>,
    /// The monitor PUB's handshake outcomes its handshake ledger did not remember, being full
    /// (`security::ZapCounters::ledger_forgotten`; None: no monitor).
    pub monitor_ledger_forgotten: Option<u64>,
    /// The live settings in force now (None: not known, as in a unit test's page).
    pub settings: Option<SettingsLive>,
    /// The status agent's links to the clone store (`--store`; empty without one): its
    /// subscriber to each server's publisher and its update publisher to each server's collector.
    pub store_links: Vec<crate::link::LinkStats>,
}

/// The engine's settings that change while it runs (`/mdsub/config/<engine-id>/NAME`), as in
/// force now: read once per scrape from the snail's board and the shared interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingsLive {
    pub snail_policy: crate::snail::Policy,
    pub snail_max_lag_ns: u64,
    pub snail_grace_ns: u64,
    pub metrics_interval_ns: u64,
}

/// The snail's policies, in `mdsub_snail_policy`'s order.
const POLICIES: [crate::snail::Policy; 4] =
    [crate::snail::Policy::Croak, crate::snail::Policy::Warn, crate::snail::Policy::Rest, crate::snail::Policy::Off];

/// What one worker core's handler refused (a new key past one of its limits), by reason.
#[derive(Debug, Clone, Default)]
pub struct HandlerRefused {
    /// The thread that runs the handler: `workerN`, or `shardN-reader` with the inline hand-off.
    pub agent: String,
    /// Every reason the handler refuses under, with its count.
    pub counts: Vec<(&'static str, u64)>,
}

impl EngineLive {
    /// The worst snail verdict of the sites on shard `k` (a site serving
    /// several shards counts for each), or of all sites with `None`.
    pub fn snail_verdict(&self, shard: Option<usize>) -> crate::snail::Verdict {
        self.snail_sites(shard).map(|s| s.verdict).max().unwrap_or_default()
    }

    /// The WARN, SNAIL and STOP turns of the same sites as [`EngineLive::snail_verdict`].
    pub fn snail_turns(&self, shard: Option<usize>) -> [u64; 3] {
        crate::snail::turns(self.snail_sites(shard))
    }

    fn snail_sites(&self, shard: Option<usize>) -> impl Iterator<Item = &crate::snail::SiteReport> {
        self.snail.iter().filter(move |s| shard.is_none() || s.shard.is_none() || s.shard == shard)
    }

    /// Self-stalls of the sites on shard `k` (a site serving several shards is no shard's), or
    /// of all sites with `None`: how many, and the longest (ns).
    pub fn self_stalls(&self, shard: Option<usize>) -> (u64, u64) {
        self.snail
            .iter()
            .filter(|s| shard.is_none() || s.shard == shard)
            .fold((0, 0), |(n, longest), s| (n + s.self_stalls, longest.max(s.longest_self_stall_ns)))
    }

    /// Every key the handlers refused, over all agents and reasons.
    pub fn handler_refused_total(&self) -> u64 {
        self.handler_refused.iter().flat_map(|h| h.counts.iter().map(|(_, n)| n)).sum()
    }
}

/// Cumulative bucket counts of `h` for [`BUCKET_BOUNDS_NS`], then the total
/// (`+Inf`), `clamped` of `h`'s values having been above [`MAX_TRACKABLE_NS`](super::MAX_TRACKABLE_NS)
/// and recorded as it. A recorded value counts at its HdrHistogram bin's highest
/// equivalent value (at most 0.1 % above it), so a bucket never counts a value above its
/// bound; but the clamp's bin (59.995 s to 60.029 s) is split: its values that were not clamped
/// were at most 60 s and count in the last finite bucket (`le="60"`), and the clamped ones
/// alone in `+Inf`.
pub fn bucket_counts(h: &Histogram<u64>, clamped: u64) -> [u64; BUCKET_BOUNDS_NS.len() + 1] {
    const LAST: usize = BUCKET_BOUNDS_NS.len() - 1;
    let mut per = [0u64; BUCKET_BOUNDS_NS.len() + 1];
    for v in h.iter_recorded() {
        let (at, n) = (v.value_iterated_to(), v.count_at_value());
        if h.equivalent(at, BUCKET_BOUNDS_NS[LAST]) {
            let above = clamped.min(n);
            per[LAST] += n - above;
            per[LAST + 1] += above;
        } else {
            per[BUCKET_BOUNDS_NS.partition_point(|&b| b < at)] += n;
        }
    }
    let mut acc = 0;
    for c in &mut per {
        acc += *c;
        *c = acc;
    }
    per
}

fn seconds(ns: f64) -> f64 {
    ns / 1e9
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A metric family being written: [`family`] has written its HELP and TYPE lines, and this
/// writes its samples only. The page is a string borrowed by the family while it is written,
/// so nothing (another family's header, say) can come between a family's header and its
/// samples: a parser that reads families in order (prometheus_client) would otherwise take
/// the separated samples for untyped families of their own.
struct Family<'a> {
    s: &'a mut String,
    name: &'a str,
}

impl Family<'_> {
    /// The sample `NAME{suffix}{labels} value` (`suffix`: `""`, `_bucket`, `_sum`, `_count`).
    fn sample(&mut self, suffix: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.s, "{}{suffix}{{{labels}}} {value}", self.name);
    }
}

/// Write the family `name` of `kind` (counter, gauge, histogram, summary): its HELP and
/// TYPE lines, then every sample `samples` writes.
fn family(s: &mut String, name: &str, kind: &str, help: &str, samples: impl FnOnce(&mut Family)) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    samples(&mut Family { s, name });
}

/// Write the family `name` with one sample per row: a row is a sample's labels and the item
/// `value` reads the sample's value from.
fn per_row<T, V: std::fmt::Display>(
    s: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: &[(String, &T)],
    value: impl Fn(&T) -> V,
) {
    family(s, name, kind, help, |f| {
        for (labels, item) in rows {
            f.sample("", labels, value(item));
        }
    });
}

/// The shards' watched links: losses by reason, reconnects, re-establishments, up or not.
fn link_metrics(s: &mut String, id: &str, live: &EngineLive) {
    family(s, "mdsub_link_lost_total", "counter", "Connections of a shard's SUB lost, by endpoint and reason.", |f| {
        for (k, sh) in live.shards.iter().enumerate() {
            for l in &sh.links {
                for (reason, n) in &l.lost {
                    let labels = format!(
                        "engine=\"{id}\",shard=\"{k}\",endpoint=\"{}\",reason=\"{}\"",
                        escape(&l.endpoint),
                        escape(reason)
                    );
                    f.sample("", &labels, n);
                }
            }
        }
    });
    let links: Vec<(String, &crate::link::LinkStats)> = (live.shards.iter().enumerate())
        .flat_map(|(k, sh)| {
            sh.links
                .iter()
                .map(move |l| (format!("engine=\"{id}\",shard=\"{k}\",endpoint=\"{}\"", escape(&l.endpoint)), l))
        })
        .collect();
    let per_link = |s: &mut String, name, kind, help, v: fn(&crate::link::LinkStats) -> u64| {
        per_row(s, name, kind, help, &links, v)
    };
    per_link(s, "mdsub_link_reconnects_total", "counter", "Times a shard's link came back after being lost.", |l| {
        l.reconnects
    });
    per_link(
        s,
        "mdsub_link_reestablished_total",
        "counter",
        "Times mdsub disconnected and connected a link libzmq would not reconnect.",
        |l| l.reestablished,
    );
    per_link(s, "mdsub_link_up", "gauge", "1 while the link is up.", |l| u64::from(l.state == "up"));
    let per_link_s = |s: &mut String, name, kind, help, v: fn(&crate::link::LinkStats) -> u64| {
        per_row(s, name, kind, help, &links, |l| seconds(v(l) as f64))
    };
    per_link_s(
        s,
        "mdsub_link_down_seconds_total",
        "counter",
        "Time the shard's link was not up (connecting, the first time too, or down), the outage it is \
         in now included.",
        |l| l.down_ns,
    );
    per_link_s(
        s,
        "mdsub_link_state_seconds",
        "gauge",
        "How long the shard's link has been in its state now (up or not: see mdsub_link_up).",
        |l| l.for_ns,
    );
    store_link_metrics(s, id, &live.store_links);
}

/// The status agent's links to the clone store (`--store`): up or not, losses by reason,
/// reconnects and the time not up, by endpoint (its subscriber's to each server's publisher,
/// its update publisher's to each server's collector). No sample without a store.
fn store_link_metrics(s: &mut String, id: &str, store: &[crate::link::LinkStats]) {
    let links: Vec<(String, &crate::link::LinkStats)> =
        store.iter().map(|l| (format!("engine=\"{id}\",endpoint=\"{}\"", escape(&l.endpoint)), l)).collect();
    per_row(s, "mdsub_store_link_up", "gauge", "1 while the engine's link to the clone store is up.", &links, |l| {
        u64::from(l.state == "up")
    });
    family(s, "mdsub_store_link_lost_total", "counter", "Connections to the clone store lost, by reason.", |f| {
        for (labels, l) in &links {
            for (reason, n) in &l.lost {
                f.sample("", &format!("{labels},reason=\"{}\"", escape(reason)), n);
            }
        }
    });
    per_row(
        s,
        "mdsub_store_link_reconnects_total",
        "counter",
        "Times a link to the clone store came back after being lost.",
        &links,
        |l| l.reconnects,
    );
    per_row(
        s,
        "mdsub_store_link_down_seconds_total",
        "counter",
        "Time the link to the clone store was not up (connecting, the first time too, or down), the \
         outage it is in now included.",
        &links,
        |l| seconds(l.down_ns as f64),
    );
}

/// The `/metrics` server's own counters (`super::http::HttpCounters`), appended by the server to
/// every page it serves: `mdsub_metrics_http_{served,refused,timed_out,evicted,accept_errors}_total`,
/// and the requests its access policy refused, `mdsub_metrics_http_access_refused_total{reason}`.
pub fn http(s: &mut String, engine_id: &str, c: &super::http::HttpCounts) {
    use super::http::{ACCEPT_PAUSE, MAX_CONNECTIONS, REQUEST_DEADLINE};
    let labels = format!("engine=\"{}\"", escape(engine_id));
    let deadline_s = REQUEST_DEADLINE.as_secs_f64();
    let families = [
        ("served", "Requests the /metrics server answered 200 (a scrape counts itself).".to_string(), c.served),
        (
            "refused",
            "Requests answered 4xx: malformed, wrong path or method, or refused by the access policy.".into(),
            c.refused,
        ),
        (
            "timed_out",
            format!("Connections closed unanswered: no whole request, or the answer not taken, within {deadline_s} s."),
            c.timed_out,
        ),
        (
            "evicted",
            format!("Connections closed unanswered: the oldest, when one more than {MAX_CONNECTIONS} were open."),
            c.evicted,
        ),
        (
            "accept_errors",
            format!(
                "Times accept() failed for want of descriptors or memory; each left the listener alone {} ms.",
                ACCEPT_PAUSE.as_millis()
            ),
            c.accept_errors,
        ),
    ];
    for (what, help, v) in families {
        family(s, &format!("mdsub_metrics_http_{what}_total"), "counter", &help, |f| f.sample("", &labels, v));
    }
    family(
        s,
        "mdsub_metrics_http_access_refused_total",
        "counter",
        "Requests the access policy refused: from outside --metrics-allow-addr (reason address, \
         403), without the bearer token or with another (reason token, 401).",
        |f| {
            f.sample("", &format!("{labels},reason=\"address\""), c.access_refused_address);
            f.sample("", &format!("{labels},reason=\"token\""), c.access_refused_token);
        },
    );
}

/// Render the exposition.
pub fn render(live: &EngineLive, latency: &LiveLatency) -> String {
    let mut s = String::with_capacity(16 * 1024);
    let id = escape(&live.engine_id);
    let shards: Vec<(String, &ShardLive)> =
        live.shards.iter().enumerate().map(|(k, sh)| (format!("engine=\"{id}\",shard=\"{k}\""), sh)).collect();
    let counter = |s: &mut String, name, help, v: fn(&ShardLive) -> u64| per_row(s, name, "counter", help, &shards, v);
    counter(&mut s, "mdsub_shard_received_total", "Frames the shard's SUB reader received.", |c| c.received);
    counter(&mut s, "mdsub_shard_forwarded_total", "Data frames the reader accepted and handed to workers.", |c| {
        c.forwarded
    });
    counter(&mut s, "mdsub_shard_gaps_total", "Messages missing by sequence number.", |c| c.counts.gaps);
    counter(&mut s, "mdsub_shard_duplicates_total", "Duplicate messages dropped.", |c| c.counts.duplicates);
    counter(
        &mut s,
        "mdsub_shard_reordered_total",
        "Messages dropped for arriving after a later one of their topic.",
        |c| c.counts.reordered,
    );
    counter(
        &mut s,
        "mdsub_shard_restarts_total",
        "Publisher restarts seen (a new session; after a vanished one too).",
        |c| c.counts.restarts,
    );
    counter(
        &mut s,
        "mdsub_shard_vanished_sessions_total",
        "Publisher sessions forgotten as vanished: nothing (no data, no heartbeat, no end of stream) \
         heard of their publisher for --forget-silent-after, and a publisher connection of the shard ended \
         since, or another publisher was heard since on its one connection (a proxy's); counted as unended when seen from their first \
         message, topics released.",
        |c| c.counts.vanished,
    );
    counter(
        &mut s,
        "mdsub_shard_vanished_back_total",
        "Of the vanished sessions, those heard again afterwards: taken up where they were.",
        |c| c.counts.vanished_back,
    );
    per_row(
        &mut s,
        "mdsub_shard_beyond_sent",
        "gauge",
        "Messages that arrived beyond what the publishers' ends of stream say they sent: a publisher's \
         count is wrong, loss is unknown. As of the last end of stream after which no session of the \
         shard was open; a later one can take it back (counts are per shard), so not a counter.",
        &shards,
        |c| c.beyond_sent,
    );
    per_row(
        &mut s,
        "mdsub_shard_publishers_held",
        "gauge",
        "Publishers the shard's reader tracks now: live ones (no end of stream yet, heard within \
         --forget-silent-after), and the last 16 that ended. At 1024 live ones a new publisher is \
         dropped (bad_frames over_limit_publishers).",
        &shards,
        |c| c.publishers_held,
    );
    per_row(
        &mut s,
        "mdsub_shard_topics_held",
        "gauge",
        "Topics the shard's reader tracks now across those publishers' sessions (at most 4 Mi; past it \
         new topics are dropped, bad_frames over_limit_topics).",
        &shards,
        |c| c.topics_held,
    );
    counter(
        &mut s,
        "mdsub_shard_publisher_connects_total",
        "Publisher connections accepted on the shard's bound endpoints (handshakes).",
        |c| c.publisher_connects,
    );
    counter(
        &mut s,
        "mdsub_shard_publisher_disconnects_total",
        "Publisher connections on the shard's bound endpoints that ended: the publisher closed, or \
         libzmq dropped it for a message over max_msg_bytes (it gives no cause).",
        |c| c.publisher_disconnects,
    );
    counter(
        &mut s,
        "mdsub_shard_publisher_refused_total",
        "Connections to the shard's bound endpoints that libzmq refused in their handshake (no ZeroMQ \
         peer, a port check, another security mechanism).",
        |c| c.publisher_refused,
    );
    counter(
        &mut s,
        "mdsub_shard_accept_failed_total",
        "Times libzmq could not accept a connection on the shard's bound endpoints (accept() failed, \
         most often EMFILE: out of file descriptors); attempts, not peers: libzmq retries at once.",
        |c| c.accept_failed,
    );
    counter(
        &mut s,
        "mdsub_shard_handshake_ledger_forgotten_total",
        "Handshake outcomes on the shard's bound endpoints not remembered because the handshake ledger \
         (one entry per connection open at once, bounded by the descriptor limit) was full: by how many \
         the publisher connects, disconnects and refusals are off. 0 unless it filled.",
        |c| c.handshake_ledger_forgotten,
    );
    family(
        &mut s,
        "mdsub_shard_bad_frames_total",
        "counter",
        "Frames dropped as malformed or refused, by reason.",
        |f| {
            for (k, sh) in live.shards.iter().enumerate() {
                for (reason, n) in &sh.counts.bad_frames {
                    f.sample("", &format!("engine=\"{id}\",shard=\"{k}\",reason=\"{}\"", escape(reason)), n);
                }
            }
        },
    );
    link_metrics(&mut s, &id, live);
    // Delivered messages and bytes per shard come with the latency sets (as
    // workers ship them, once per interval).
    let slots: Vec<(String, &StageHistograms)> =
        latency.cumulative.iter().enumerate().map(|(k, set)| (shard_name(k), set)).collect();
    let shard_label = |name: &str| name.strip_prefix("shard").unwrap_or(name).to_string();
    let slot_rows: Vec<(String, &StageHistograms)> =
        slots.iter().map(|(slot, set)| (format!("engine=\"{id}\",shard=\"{}\"", shard_label(slot)), *set)).collect();
    let per_slot =
        |s: &mut String, name, help, v: fn(&StageHistograms) -> u64| per_row(s, name, "counter", help, &slot_rows, v);
    per_slot(
        &mut s,
        "mdsub_shard_delivered_total",
        "Messages handled by workers (shipped once per interval).",
        |set| set.count(),
    );
    per_slot(&mut s, "mdsub_shard_delivered_bytes_total", "Bytes of the frames handled by workers.", |set| set.bytes);
    family(
        &mut s,
        "mdsub_latency_seconds",
        "histogram",
        "Latency from the publisher's intended send time, by stage \
         (wire: to the reader, queue: reader to worker, total: to the handler's end).",
        |f| {
            for (name, set) in &slots {
                let shard = shard_label(name);
                for (k, (stage, h)) in set.stages().into_iter().enumerate() {
                    let labels = format!("engine=\"{id}\",shard=\"{shard}\",stage=\"{stage}\"");
                    let counts = bucket_counts(h, set.out_of_bounds[k].clamped);
                    for (b, c) in BUCKET_BOUNDS_NS.iter().zip(&counts) {
                        f.sample("_bucket", &format!("{labels},le=\"{}\"", seconds(*b as f64)), c);
                    }
                    f.sample("_bucket", &format!("{labels},le=\"+Inf\""), h.len());
                    f.sample("_sum", &labels, seconds(h.mean() * h.len() as f64));
                    f.sample("_count", &labels, h.len());
                }
            }
        },
    );
    // What each shard's stage held at a bound rather than as measured.
    let stage_rows: Vec<(String, &OutOfBounds)> = (slots.iter())
        .flat_map(|(slot, set)| {
            let (id, shard) = (&id, shard_label(slot));
            (super::STAGES.iter().zip(&set.out_of_bounds))
                .map(move |(stage, b)| (format!("engine=\"{id}\",shard=\"{shard}\",stage=\"{stage}\""), b))
        })
        .collect();
    let per_stage =
        |s: &mut String, name, kind, help, v: fn(&OutOfBounds) -> f64| per_row(s, name, kind, help, &stage_rows, v);
    per_stage(
        &mut s,
        "mdsub_latency_clamped_total",
        "counter",
        "Latencies above 60 s, by stage: recorded as 60 s in mdsub_latency_seconds and the quantiles.",
        |b| b.clamped as f64,
    );
    per_stage(
        &mut s,
        "mdsub_latency_ahead_total",
        "counter",
        "Latencies below 0, by stage: send times ahead of this host's clock (clock skew), or this clock \
         stepped back; recorded as 1 ns in mdsub_latency_seconds and the quantiles.",
        |b| b.ahead as f64,
    );
    per_stage(
        &mut s,
        "mdsub_latency_ahead_max_seconds",
        "gauge",
        "How far below 0 the lowest of those latencies was (0 while none was).",
        |b| seconds(b.ahead_max_ns as f64),
    );
    family(
        &mut s,
        "mdsub_latency_interval_seconds",
        "summary",
        "Latency quantiles over the last metrics interval (quantile 1 is the max); \
         _sum and _count over the whole run, as a Prometheus summary's are.",
        |f| {
            for (k, set) in latency.last_interval.iter().enumerate() {
                let shard = shard_label(&shard_name(k));
                let whole = latency.cumulative.get(k).map(|w| w.stages());
                for (i, (stage, h)) in set.stages().into_iter().enumerate() {
                    let labels = format!("engine=\"{id}\",shard=\"{shard}\",stage=\"{stage}\"");
                    for (label, q) in QUANTILES {
                        // An interval without observations has no quantiles: NaN, as Prometheus'
                        // own summaries say it (0 would draw an idle feed as a fast one).
                        let v = if h.is_empty() { f64::NAN } else { seconds(h.value_at_quantile(q) as f64) };
                        f.sample("", &format!("{labels},quantile=\"{label}\""), v);
                    }
                    let (sum, count) = whole.map_or((0.0, 0), |w| (w[i].1.mean() * w[i].1.len() as f64, w[i].1.len()));
                    f.sample("_sum", &labels, seconds(sum));
                    f.sample("_count", &labels, count);
                }
            }
        },
    );
    let agents: Vec<(String, &AgentStats)> =
        live.agents.iter().map(|a| (format!("engine=\"{id}\",agent=\"{}\"", escape(&a.role)), a)).collect();
    let agent_metric =
        |s: &mut String, name, kind, help, v: fn(&AgentStats) -> f64| per_row(s, name, kind, help, &agents, v);
    // A counter with one sample for the whole engine.
    let engine = format!("engine=\"{id}\"");
    let engine_counter =
        |s: &mut String, name, help, v: u64| family(s, name, "counter", help, |f| f.sample("", &engine, v));
    agent_metric(&mut s, "mdsub_agent_cpu_seconds_total", "counter", "CPU time of the agent's thread.", |a| {
        seconds(a.cpu_ns as f64)
    });
    agent_metric(
        &mut s,
        "mdsub_agent_busy_ratio",
        "gauge",
        "Share of the last metrics interval the agent's thread was on a CPU (rate() the CPU counter for other windows).",
        |a| a.recent_busy(),
    );
    agent_metric(&mut s, "mdsub_agent_work_total", "counter", "Items the agent processed.", |a| a.work as f64);
    agent_metric(
        &mut s,
        "mdsub_agent_blocked_seconds_total",
        "counter",
        "Time the agent waited on back-pressure.",
        |a| seconds(a.blocked_ns as f64),
    );
    engine_counter(&mut s, "mdsub_metrics_intervals_total", "Metric intervals completed.", latency.intervals);
    if !live.snail.is_empty() {
        let site = |x: &crate::snail::SiteReport| match x.shard {
            Some(k) => format!("engine=\"{id}\",site=\"{}\",shard=\"{k}\"", x.role),
            None => format!("engine=\"{id}\",site=\"{}\",shard=\"all\"", x.role),
        };
        let sites: Vec<(String, &crate::snail::SiteReport)> = live.snail.iter().map(|x| (site(x), x)).collect();
        let per_site = |s: &mut String, name, kind, help, v: fn(&crate::snail::SiteReport) -> f64| {
            per_row(s, name, kind, help, &sites, v)
        };
        per_site(
            &mut s,
            "mdsub_snail_verdict",
            "gauge",
            "The snail's verdict per site: 0 OK, 1 WARN (lag rising), 2 SNAIL (lag above max_lag past the grace), 3 STOP (silence).",
            |x| f64::from(x.verdict as u8),
        );
        family(
            &mut s,
            "mdsub_snail_lag_seconds",
            "gauge",
            "Lag (now minus intended send time) of the last message judged, and the highest.",
            |f| {
                for x in &live.snail {
                    f.sample("", &format!("{},kind=\"last\"", site(x)), seconds(x.last_lag_ns as f64));
                    f.sample("", &format!("{},kind=\"max\"", site(x)), seconds(x.max_lag_ns as f64));
                }
            },
        );
        family(
            &mut s,
            "mdsub_snail_verdicts_total",
            "counter",
            "Times a site's verdict turned WARN, SNAIL or STOP.",
            |f| {
                for x in &live.snail {
                    for (v, n) in [("warn", x.warns), ("snail", x.snails), ("stop", x.stops)] {
                        f.sample("", &format!("{},verdict=\"{v}\"", site(x)), n);
                    }
                }
            },
        );
        per_site(
            &mut s,
            "mdsub_snail_skipped_total",
            "counter",
            "Messages skipped while resting (policy rest).",
            |x| x.skipped as f64,
        );
        per_site(
            &mut s,
            "mdsub_snail_self_stalls_total",
            "counter",
            "Times a site itself did not run for 1 s or more (paused, stopped, starved): silence is not judged across them.",
            |x| x.self_stalls as f64,
        );
        per_site(
            &mut s,
            "mdsub_snail_longest_self_stall_seconds",
            "gauge",
            "The longest time a site itself did not run (0 until its first self-stall).",
            |x| seconds(x.longest_self_stall_ns as f64),
        );
    }
    engine_counter(
        &mut s,
        "mdsub_metrics_dropped_total",
        "Metric intervals workers could not ship.",
        live.metrics_dropped,
    );
    engine_counter(
        &mut s,
        "mdsub_metrics_write_errors_total",
        "Interval-log (--hlog) writes that failed (disk full, file gone): the log misses those intervals.",
        latency.write_errors,
    );
    family(
        &mut s,
        "mdsub_handler_refused_total",
        "counter",
        "New keys the handler refused past one of its limits, by agent and reason (last_full, \
         last_too_big, verify_full, instruments_full, orders_full, levels_full); published once per \
         report period (a tenth of the metrics interval).",
        |f| {
            for h in &live.handler_refused {
                for (reason, n) in &h.counts {
                    f.sample("", &format!("engine=\"{id}\",agent=\"{}\",reason=\"{reason}\"", escape(&h.agent)), n);
                }
            }
        },
    );
    if let Some(set) = &live.settings {
        family(
            &mut s,
            "mdsub_setting_seconds",
            "gauge",
            "A live duration setting in force, by name (metrics_interval, snail_max_lag, snail_grace): \
             the profile's or a flag's, or the last value applied from the clone store.",
            |f| {
                let durations = [
                    ("metrics_interval", set.metrics_interval_ns),
                    ("snail_max_lag", set.snail_max_lag_ns),
                    ("snail_grace", set.snail_grace_ns),
                ];
                for (name, ns) in durations {
                    f.sample("", &format!("engine=\"{id}\",name=\"{name}\""), seconds(ns as f64));
                }
            },
        );
        family(
            &mut s,
            "mdsub_snail_policy",
            "gauge",
            "The snail policy in force: 1 for it, 0 for each other (croak, warn, rest, off).",
            |f| {
                for p in POLICIES {
                    f.sample("", &format!("engine=\"{id}\",policy=\"{}\"", p.name()), u8::from(p == set.snail_policy));
                }
            },
        );
    }
    if let Some(refused) = &live.monitor_refused {
        family(
            &mut s,
            "mdsub_monitor_access_refused_total",
            "counter",
            "Connections to the monitor PUB refused, by reason: its access policy's (address_not_allowed, \
             key_not_allowed, mechanism_not_allowed) and libzmq's handshake's (handshake_failed_*: \
             docs/REFUSALS.md), with or without a policy.",
            |f| {
                for (reason, n) in refused {
                    f.sample("", &format!("engine=\"{id}\",reason=\"{reason}\""), n);
                }
            },
        );
    }
    if let Some(forgotten) = live.monitor_ledger_forgotten {
        family(
            &mut s,
            "mdsub_monitor_handshake_ledger_forgotten_total",
            "counter",
            "Handshake outcomes at the monitor PUB not remembered because the handshake ledger (one entry \
             per connection open at once, bounded by the descriptor limit) was full: by how many the \
             refusals above are off. 0 unless it filled.",
            |f| f.sample("", &format!("engine=\"{id}\""), forgotten),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::shard_sets;

    /// Every family a page with every optional part filled in (snail sites, links, handler
    /// refusals, the server's own counts) serves is a row of docs/METRICS.md, and every row is a
    /// family the page serves: the doc is the page's list.
    #[test]
    fn every_family_rendered_is_documented() {
        let link = crate::link::LinkStats { endpoint: "tcp://127.0.0.1:1".into(), ..Default::default() };
        let live = EngineLive {
            engine_id: "e".into(),
            shards: vec![ShardLive { links: vec![link.clone()], ..Default::default() }],
            store_links: vec![link],
            agents: vec![AgentStats { role: "worker0".into(), ..Default::default() }],
            snail: vec![crate::snail::SiteReport { role: "shard0-reader".into(), ..Default::default() }],
            handler_refused: vec![HandlerRefused { agent: "worker0".into(), counts: vec![("verify_full", 0)] }],
            monitor_refused: Some(vec![("handshake_failed_protocol", 0)]),
            monitor_ledger_forgotten: Some(0),
            settings: Some(SettingsLive {
                snail_policy: crate::snail::Policy::Croak,
                snail_max_lag_ns: 1,
                snail_grace_ns: 1,
                metrics_interval_ns: 1,
            }),
            ..Default::default()
        };
        let latency = LiveLatency { cumulative: shard_sets(1), last_interval: shard_sets(1), ..Default::default() };
        let mut page = render(&live, &latency);
        http(&mut page, "e", &super::super::http::HttpCounts::default());
        let doc = include_str!("../../docs/METRICS.md");
        let rows: std::collections::BTreeSet<&str> =
            doc.lines().filter(|l| l.starts_with("| `mdsub_")).filter_map(|l| l.split('`').nth(1)).collect();
        let families: std::collections::BTreeSet<&str> =
            page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        assert_eq!(
            families.difference(&rows).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "served, not in docs/METRICS.md"
        );
        assert_eq!(families.len(), rows.len(), "rows of docs/METRICS.md the page does not serve: {rows:?}");
    }

    #[test]
    fn links_say_since_when_they_are_down_and_the_store_link_has_its_own_series() {
        // Before: a link down showed only as mdsub_link_up 0 (for how long: nowhere), and the
        // engine's link to the clone store had no series at all.
        let s = 1_000_000_000;
        let feed = crate::link::LinkStats {
            endpoint: "tcp://lvc:5556".into(),
            state: "down".into(),
            reconnects: 2,
            for_ns: 9 * s,
            down_ns: 12 * s + s / 2,
            lost: [("disconnected".to_string(), 3)].into(),
            ..Default::default()
        };
        let store = crate::link::LinkStats {
            endpoint: "tcp://store:5557".into(),
            state: "connecting".into(),
            for_ns: 4 * s,
            down_ns: 4 * s,
            lost: [("handshake_failed".to_string(), 1)].into(),
            ..Default::default()
        };
        let live = EngineLive {
            engine_id: "e".into(),
            shards: vec![ShardLive { links: vec![feed], ..Default::default() }],
            store_links: vec![store],
            ..Default::default()
        };
        let latency = LiveLatency { cumulative: shard_sets(1), last_interval: shard_sets(1), ..Default::default() };
        let page = render(&live, &latency);
        let feed = "engine=\"e\",shard=\"0\",endpoint=\"tcp://lvc:5556\"";
        let store = "engine=\"e\",endpoint=\"tcp://store:5557\"";
        for line in [
            format!("mdsub_link_up{{{feed}}} 0"),
            format!("mdsub_link_reconnects_total{{{feed}}} 2"),
            format!("mdsub_link_down_seconds_total{{{feed}}} 12.5"),
            format!("mdsub_link_state_seconds{{{feed}}} 9"),
            format!("mdsub_store_link_up{{{store}}} 0"),
            format!("mdsub_store_link_lost_total{{{store},reason=\"handshake_failed\"}} 1"),
            format!("mdsub_store_link_reconnects_total{{{store}}} 0"),
            format!("mdsub_store_link_down_seconds_total{{{store}}} 4"),
        ] {
            assert!(page.lines().any(|l| l == line), "{line} not in:\n{page}");
        }
    }

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let mut h = Histogram::new_with_bounds(1, crate::metrics::MAX_TRACKABLE_NS, 3).expect("bounds");
        for v in [500, 1_000, 1_500, 3_000_000, 30_000_000_000, crate::metrics::MAX_TRACKABLE_NS] {
            h.record(v).expect("in range");
        }
        let c = bucket_counts(&h, 1);
        let at = |bound_ns: u64| BUCKET_BOUNDS_NS.iter().position(|&b| b == bound_ns).expect("a bound");
        assert_eq!(c[0], 2, "500 ns and 1 µs are ≤ 1 µs");
        assert_eq!(c[1], 3);
        assert_eq!(c[11], 4, "3 ms is ≤ 5 ms");
        assert_eq!(c[at(20_000_000_000)], 4, "30 s is above 20 s");
        assert_eq!(c[at(50_000_000_000)], 5, "30 s is ≤ 50 s: before, above every bound (10 s the last)");
        // A clamped latency, held at the clamp and counted as clamped, is the one value in +Inf
        // alone, so histogram_quantile reads a quantile among them as the clamp.
        assert_eq!(BUCKET_BOUNDS_NS.last(), Some(&crate::metrics::MAX_TRACKABLE_NS));
        assert_eq!(c[BUCKET_BOUNDS_NS.len() - 1], 5, "the clamped one is above the last bound");
        assert_eq!(c[BUCKET_BOUNDS_NS.len()], 6);
    }

    #[test]
    fn a_latency_of_60s_is_in_le_60_and_only_the_clamped_ones_are_above_it() {
        // Before: the clamp's HdrHistogram bin (59.995 s to 60.029 s) counted whole above 60 s,
        // so a latency of 60 s, or of 59.999 s, was missing from le="60" (Prometheus's `le` is
        // "at most"), and +Inf past le="60" was more than mdsub_latency_clamped_total.
        let mut latency = LiveLatency { cumulative: shard_sets(1), last_interval: shard_sets(1), ..Default::default() };
        let clamp = crate::metrics::MAX_TRACKABLE_NS as i64;
        for total_ns in [40_000_000_000, clamp - 1_000_000, clamp, clamp + 1, 600_000_000_000] {
            latency.cumulative[0].record(1_000, 1_000, total_ns);
        }
        let t = render(&EngineLive { engine_id: "e".into(), ..Default::default() }, &latency);
        let labels = "engine=\"e\",shard=\"0\",stage=\"total\"";
        for (le, n) in [("50", 1), ("60", 3), ("+Inf", 5)] {
            let line = format!("mdsub_latency_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n");
            assert!(t.contains(&line), "{line} in\n{t}");
        }
        assert!(t.contains(&format!("mdsub_latency_clamped_total{{{labels}}} 2\n")), "{t}");
    }

    #[test]
    fn every_sample_follows_its_own_familys_header() {
        // Before: the bad-frame samples came after the link families' headers.
        let mut counts = crate::metrics::SequenceCounts::default();
        counts.bad_frames.insert("short".into(), 3);
        let link = crate::link::LinkStats {
            endpoint: "tcp://127.0.0.1:1".into(),
            state: "up".into(),
            lost: [("disconnected".to_string(), 1)].into(),
            ..Default::default()
        };
        let live = EngineLive {
            engine_id: "e".into(),
            shards: vec![ShardLive { counts, links: vec![link], ..Default::default() }],
            ..Default::default()
        };
        let latency = LiveLatency { cumulative: shard_sets(1), last_interval: shard_sets(1), ..Default::default() };
        let t = render(&live, &latency);
        let mut family = "";
        let mut seen = std::collections::BTreeSet::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().expect("a name");
                assert!(seen.insert(family), "{family} twice:\n{t}");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("a name");
                let ok =
                    name == family || ["_bucket", "_sum", "_count"].iter().any(|x| *name == format!("{family}{x}"));
                assert!(ok, "{name} under the header of {family}:\n{t}");
            }
        }
        assert!(t.contains("mdsub_shard_bad_frames_total{engine=\"e\",shard=\"0\",reason=\"short\"} 3"), "{t}");
        assert!(t.contains("reason=\"disconnected\"} 1"), "{t}");
    }

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let mut latency = LiveLatency { cumulative: shard_sets(2), last_interval: shard_sets(2), ..Default::default() };
        latency.cumulative[1].record(1_000, 2_000, 3_000);
        latency.cumulative[0].record(-30_000_000_000, 2_000, -29_999_998_000);
        latency.cumulative[1].bytes = 120;
        latency.last_interval[1].record(1_000, 2_000, 3_000);
        let live = EngineLive {
            engine_id: "e\"1".into(),
            shards: vec![
                ShardLive {
                    received: 7,
                    beyond_sent: 5,
                    publishers_held: 3,
                    topics_held: 40,
                    handshake_ledger_forgotten: 4,
                    ..Default::default()
                },
                ShardLive::default(),
            ],
            // Busy half of its run, idle over the last interval: the gauge is the interval's.
            agents: vec![AgentStats {
                role: "worker0".into(),
                cpu_ns: 2_000_000_000,
                wall_ns: 4_000_000_000,
                interval_busy: Some(0.0),
                ..Default::default()
            }],
            metrics_dropped: 0,
            snail: vec![crate::snail::SiteReport {
                role: "worker0".into(),
                shard: Some(1),
                verdict: crate::snail::Verdict::Snail,
                checked: 10,
                last_lag_ns: 0,
                max_lag_ns: 1_500_000_000,
                warns: 0,
                snails: 1,
                stops: 0,
                rests: 0,
                skipped: 0,
                self_stalls: 2,
                longest_self_stall_ns: 8_340_000_000,
            }],
            handler_refused: vec![HandlerRefused { agent: "worker0".into(), counts: vec![("orders_full", 3)] }],
            monitor_refused: Some(vec![("address_not_allowed", 0), ("handshake_failed_protocol", 2)]),
            monitor_ledger_forgotten: Some(6),
            settings: Some(SettingsLive {
                snail_policy: crate::snail::Policy::Warn,
                snail_max_lag_ns: 250_000_000,
                snail_grace_ns: 0,
                metrics_interval_ns: 2_000_000_000,
            }),
            store_links: Vec::new(),
        };
        let t = render(&live, &latency);
        // The settings in force (before: none of them on the page, though docs/SNAIL.md said so).
        for line in [
            "mdsub_setting_seconds{engine=\"e\\\"1\",name=\"metrics_interval\"} 2\n",
            "mdsub_setting_seconds{engine=\"e\\\"1\",name=\"snail_max_lag\"} 0.25\n",
            "mdsub_setting_seconds{engine=\"e\\\"1\",name=\"snail_grace\"} 0\n",
            "mdsub_snail_policy{engine=\"e\\\"1\",policy=\"croak\"} 0\n",
            "mdsub_snail_policy{engine=\"e\\\"1\",policy=\"warn\"} 1\n",
        ] {
            assert!(t.contains(line), "{line} in {t}");
        }
        assert!(t.contains("mdsub_snail_verdict{engine=\"e\\\"1\",site=\"worker0\",shard=\"1\"} 2"), "{t}");
        assert!(t.contains("kind=\"max\"} 1.5"), "{t}");
        assert!(t.contains("mdsub_snail_self_stalls_total{engine=\"e\\\"1\",site=\"worker0\",shard=\"1\"} 2"), "{t}");
        let longest = "mdsub_snail_longest_self_stall_seconds{engine=\"e\\\"1\",site=\"worker0\",shard=\"1\"} 8.34\n";
        assert!(t.contains(longest), "{t}");
        assert_eq!(live.self_stalls(Some(1)), (2, 8_340_000_000));
        assert_eq!((live.self_stalls(Some(0)), live.self_stalls(None)), ((0, 0), (2, 8_340_000_000)));
        assert_eq!(live.handler_refused_total(), 3);
        assert_eq!(live.snail_verdict(Some(1)), crate::snail::Verdict::Snail);
        assert_eq!(live.snail_verdict(Some(0)), crate::snail::Verdict::Ok);
        assert!(t.contains("mdsub_shard_received_total{engine=\"e\\\"1\",shard=\"0\"} 7"), "{t}");
        assert!(t.contains("mdsub_shard_publishers_held{engine=\"e\\\"1\",shard=\"0\"} 3\n"), "{t}");
        assert!(t.contains("mdsub_shard_topics_held{engine=\"e\\\"1\",shard=\"0\"} 40\n"), "{t}");
        assert!(t.contains("# TYPE mdsub_shard_topics_held gauge\n"), "{t}");
        assert!(t.contains("# TYPE mdsub_shard_beyond_sent gauge\n"), "{t}");
        assert!(t.contains("mdsub_shard_beyond_sent{engine=\"e\\\"1\",shard=\"0\"} 5\n"), "{t}");
        let refused = "mdsub_handler_refused_total{engine=\"e\\\"1\",agent=\"worker0\",reason=\"orders_full\"} 3\n";
        assert!(t.contains(refused), "{t}");
        let monitor = "mdsub_monitor_access_refused_total{engine=\"e\\\"1\",reason=\"handshake_failed_protocol\"} 2\n";
        assert!(t.contains(monitor), "{t}");
        // A full handshake ledger is counted beside the counts it puts off.
        let forgotten = "mdsub_shard_handshake_ledger_forgotten_total{engine=\"e\\\"1\",shard=\"0\"} 4\n";
        assert!(t.contains(forgotten), "{t}");
        assert!(t.contains("mdsub_monitor_handshake_ledger_forgotten_total{engine=\"e\\\"1\"} 6\n"), "{t}");
        assert!(t.contains("mdsub_shard_delivered_total{engine=\"e\\\"1\",shard=\"1\"} 1"), "{t}");
        assert!(t.contains("mdsub_shard_delivered_bytes_total{engine=\"e\\\"1\",shard=\"1\"} 120"), "{t}");
        assert!(t.contains("stage=\"total\",le=\"0.000005\"} 1"), "{t}");
        assert!(t.contains("mdsub_agent_cpu_seconds_total{engine=\"e\\\"1\",agent=\"worker0\"} 2"), "{t}");
        assert!(t.contains("mdsub_agent_busy_ratio{engine=\"e\\\"1\",agent=\"worker0\"} 0\n"), "{t}");
        assert!(t.contains("quantile=\"0.99\"} 0.000003"), "{t}");
        // Shard 0's interval was idle: no quantile, not 0 (before: `0`, a p99 panel fell to 0 s).
        for q in ["0.5", "0.99", "0.999", "1"] {
            let line = format!(
                "mdsub_latency_interval_seconds{{engine=\"e\\\"1\",shard=\"0\",stage=\"total\",quantile=\"{q}\"}} NaN\n"
            );
            assert!(t.contains(&line), "{line} in {t}");
        }
        assert!(t.contains("mdsub_latency_clamped_total{engine=\"e\\\"1\",shard=\"1\",stage=\"wire\"} 0"), "{t}");
        // A send time 30 s ahead of this host's clock: counted, with how far.
        assert!(t.contains("mdsub_latency_ahead_total{engine=\"e\\\"1\",shard=\"0\",stage=\"wire\"} 1\n"), "{t}");
        assert!(t.contains("mdsub_latency_ahead_total{engine=\"e\\\"1\",shard=\"0\",stage=\"queue\"} 0\n"), "{t}");
        assert!(
            t.contains("mdsub_latency_ahead_max_seconds{engine=\"e\\\"1\",shard=\"0\",stage=\"wire\"} 30\n"),
            "{t}"
        );
        assert!(t.contains("mdsub_latency_ahead_max_seconds{engine=\"e\\\"1\",shard=\"1\",stage=\"wire\"} 0\n"), "{t}");
    }
}
