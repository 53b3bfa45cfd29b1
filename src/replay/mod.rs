//! `mdsub replay`: publishes a feed (synthetic generator, capture file or
//! Databento DBN files merged by receive time) on
//! one XPUB endpoint per shard, paced at a fixed rate or flat out, stamping
//! each frame's *intended* send time and sequences, then ends each shard's
//! stream with an end-of-stream frame.
//!
//! The publisher is an XPUB (so it can see subscriptions and wait for them: a
//! real handshake, not a sleep). SNDHWM is always set explicitly. In lossless
//! mode ZMQ_XPUB_NODROP makes a full pipe push back on the publisher instead
//! of dropping (PERF-ANCHORS: a default-HWM publisher flat out delivers only
//! ~0.74 M msg/s of 100 B and drops the rest, so benchmarks would measure it).
//! A lossy publisher keeps NODROP on too, to see and count each full pipe, and
//! sends a message a full pipe refused to the shard's other subscribers (the
//! socket lossy for that message alone): it drops per subscriber, as a lossy
//! PUB does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::{AgentHandle, IdleStrategy, StopFlag};
use crate::feed::dbn_source::DbnSourceError;
use crate::feed::{shard_of, Generator, GeneratorConfig, SplitMix64};
use crate::security::{HandshakenPeers, SecureError, ServerAccess, ZapCounters, ZapService};
use crate::wire::capture::CaptureError;
use crate::wire::{self, Header, Kind, CONTROL_TOPIC};
use crate::zmqx::frame::send_bytes;

mod agent;
pub mod faults;
pub mod progress;
pub mod schedule;
pub use agent::PublisherAgent;
use faults::FaultPlan;
pub use progress::FilePosition;

/// How often the end of stream goes again, while unconfirmed, on a shard where a lossy message
/// went past a subscriber's full pipe ([`Shard::eos_repeat_due`]).
const EOS_REPEAT_EVERY: Duration = Duration::from_millis(100);

/// How long a wait for subscribers goes on before the shards still short of them are said.
const WAITING_SAID_AFTER: Duration = Duration::from_secs(5);

/// Errors of a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("zmq error while {context}: {source}")]
    Zmq {
        context: String,
        #[source]
        source: zmq::Error,
    },
    /// `no subscriber reached EP …` was said also when some had (`expected 2, saw 1`).
    #[error(
        "{} reached {endpoint} within {}{}",
        if *seen == 0 { "no subscriber".to_string() } else { format!("only {seen} of {expected} subscribers") },
        crate::diag::human_duration(waited_ms.saturating_mul(1_000_000)),
        if *seen == 0 { format!(" (expected {expected})") } else { String::new() }
    )]
    NoSubscribers { endpoint: String, expected: usize, seen: usize, waited_ms: u64 },
    #[error("capture file {path}: {source}")]
    Capture {
        path: PathBuf,
        #[source]
        source: CaptureError,
    },
    #[error("DBN input {0}")]
    Dbn(DbnSourceError),
    #[error("bad replay setting: {0}")]
    Config(String),
    /// Stopped (Ctrl-C, SIGTERM) before the replay began.
    #[error("interrupted while waiting for subscribers")]
    Interrupted,
    /// The replay ran, but shards could not take their end of stream in time (a lossless
    /// subscriber stopped reading): what it did, for its summary.
    #[error(
        "{} could not take the end of stream within {} (a subscriber stopped reading)",
        .0.eos_missed.join(", "),
        crate::diag::human_duration_of(EOS_TIMEOUT)
    )]
    EndOfStreamMissed(Box<ReplayStats>),
}

impl ReplayError {
    /// True when `e`, under any context, is a wait that Ctrl-C (or SIGTERM) ended
    /// ([`ReplayError::Interrupted`]).
    pub fn is_interrupted(e: &anyhow::Error) -> bool {
        matches!(e.downcast_ref::<ReplayError>(), Some(ReplayError::Interrupted))
    }

    /// What the replay did, when it ran to the end and the error is in how its stream ended
    /// ([`ReplayError::EndOfStreamMissed`]).
    pub fn stats(&self) -> Option<&ReplayStats> {
        match self {
            ReplayError::EndOfStreamMissed(stats) => Some(stats),
            _ => None,
        }
    }
}

fn zerr(context: impl Into<String>) -> impl FnOnce(zmq::Error) -> ReplayError {
    let context = context.into();
    move |source| ReplayError::Zmq { context, source }
}

/// Why a capture sent byte for byte cannot take `--restart-at`: said by the command before it
/// waits for subscribers, and by [`Publisher`] for any other caller.
pub const RESTART_NEEDS_FRESH_SEQUENCES: &str = "a restart mid-stream needs fresh sequences: replay the capture \
     with --restamp (without --keep-seq, which keeps its recorded ones)";

/// Publisher settings.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// One bind endpoint per shard (`tcp://127.0.0.1:*` picks a free port).
    pub endpoints: Vec<String>,
    /// Send high-water mark per subscriber pipe, in messages.
    pub sndhwm_msgs: i32,
    /// Back-pressure instead of drops (XPUB_NODROP).
    pub lossless: bool,
    /// Added to the shard index to make each shard's publisher id.
    pub publisher_id_base: u32,
    /// Who may subscribe (CURVE and/or an address allow-list; open by default).
    pub access: ServerAccess,
    /// One sending thread per shard (generated feeds only), each sending its
    /// shard's topics; give the context one I/O thread per shard too.
    pub thread_per_shard: bool,
    /// A subscriber's connection whose sent data stays unacknowledged this long is ended
    /// (`TCP_USER_TIMEOUT`, libzmq's `ZMQ_TCP_MAXRT`): a host gone without a close (powered off,
    /// its cable pulled) no longer holds a lossless publisher, and every other subscriber, for
    /// the kernel's own ~15 minutes of retransmissions. Linux (5.11 and later) also ends a
    /// connection whose receive window stays closed that long: a live subscriber that stopped
    /// reading is cut alike, which a lossless publisher otherwise waits for. Zero: the kernel's
    /// limits ([`DEFAULT_PEER_TIMEOUT`]).
    pub peer_timeout: Duration,
}

/// The most named subscribers' addresses a shard keeps to say them ([`Shard::heard_from`]).
const NAMED_FROM_MAX: usize = 1024;

/// [`PublisherConfig::peer_timeout`] unless told otherwise (`--peer-timeout`): none of mdsub's,
/// so a lossless publisher keeps waiting for a subscriber that stopped reading, as ever.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::ZERO;

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            endpoints: vec!["tcp://127.0.0.1:*".into()],
            sndhwm_msgs: 100_000,
            lossless: true,
            publisher_id_base: 0,
            access: ServerAccess::default(),
            thread_per_shard: false,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
        }
    }
}

/// How to pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// As fast as the publisher can send (send time = the moment of encoding).
    FlatOut,
    /// A fixed total rate in messages per second, in bursts of `burst` sharing one intended time.
    Rate { msgs_per_sec: u64, burst: u64 },
    /// Files only: keep the recorded gaps between receive times, divided by
    /// `speed` (1.0 = recorded pace, 10.0 = ten times faster).
    Recorded { speed: f64 },
}

/// What to replay, and for how long.
#[derive(Debug, Clone)]
pub enum Source {
    Generator(GeneratorConfig),
    /// Frames sent as recorded; with `restamp`, mdsub data frames get fresh
    /// sequences and intended send times (needed to measure latency).
    Capture {
        path: PathBuf,
        restamp: bool,
    },
    /// Databento DBN files (plain or zstd), merged by receive time. Each
    /// record is one data frame: topic = the instrument's symbol (its id
    /// when the symbology has none), payload = the record's bytes, fresh
    /// sequences, intended send time = the receive time shifted to now.
    Dbn {
        paths: Vec<PathBuf>,
    },
    /// The reference publisher of `mdsub bench --compare publishers`: the
    /// generator's topics and payload built into frames once, sent flat out
    /// round-robin over the topics with only the sequences and the send time
    /// patched in place (the clock read every 64 messages), like the plain C
    /// publisher of `shared/anchors/cpub.c`. What a publisher that does
    /// nothing else costs on the same socket.
    Prebuilt(GeneratorConfig),
}

/// Is this one-frame message of a capture a recorded control frame (an mdsub frame of another
/// kind than data: heartbeat, end of stream), which a replay leaves out, sending its own? Every
/// other message is replayed as recorded: mdsub data frames, multipart messages, and single
/// frames that are not mdsub frames (foreign traffic, or a wire version this build does not
/// read), which a subscriber counts as it would live. The one rule of the replay and of its
/// check that a capture holds something to replay.
pub fn is_recorded_control(frame: &[u8]) -> bool {
    wire::decode(frame).is_ok_and(|v| v.header.kind != Kind::Data)
}

/// Limits of one replay run (the first reached ends it).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_msgs: Option<u64>,
    pub duration: Option<Duration>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplayStats {
    /// Data messages sent, per shard.
    pub sent_per_shard: Vec<u64>,
    pub sent_total: u64,
    /// The whole run, s: from the start of sending through the end of stream (the sending
    /// threads' start, the pacing, the waits on full pipes, the end of stream's waits to go out
    /// and to be confirmed), as a person timing the command would see it, after the wait for
    /// subscribers.
    pub elapsed_s: f64,
    /// The time from the first send to the last, s (over every sending thread: the earliest
    /// first to the latest last; to the duration's end when a message held back then was given
    /// up): what [`msgs_per_sec`](Self::msgs_per_sec) is over. None when there were not two
    /// sends a clock reading apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_span_s: Option<f64>,
    /// The rate the replay sent at, msg/s: its messages (those left out on purpose included)
    /// after the first per second of [`send_span_s`](Self::send_span_s) (n messages span n-1
    /// intervals); `sent_total / elapsed_s` when there is no span.
    pub msgs_per_sec: f64,
    /// Of the messages sent, those a lossy publisher (`--lossy`) found a subscriber's pipe
    /// full for (at its SNDHWM), per shard and in all: messages at least one subscriber missed
    /// at its HWM. With one subscriber each was dropped and never left this process; with
    /// several each went to those with room and was dropped for the full one alone, which
    /// libzmq then skips in silence until its reader has drained it to its low-water mark (the
    /// messages it misses meanwhile are not in this count: that subscriber counts them, an
    /// engine as lost, by sequence and from the end-of-stream count). Not
    /// [`dropped_on_purpose`](Self::dropped_on_purpose).
    pub dropped_at_hwm_per_shard: Vec<u64>,
    pub dropped_at_hwm: u64,
    /// Time each shard's sends (data or its end of stream) waited on a full pipe, s: a lossless
    /// subscriber that read too slowly, or not at all, held the publisher back (a hold of 1 s or
    /// more is said on stderr when it reaches 1 s, and again when it ends).
    pub blocked_s_per_shard: Vec<f64>,
    /// Of the messages sent, those sent while their shard had no subscriber: they reached no
    /// one (a subscriber left mid-run, or none was awaited). Subscribers are seen by their
    /// subscription to the control topic (every mdsub subscriber, and any that takes
    /// everything), checked every 1 Ki messages and at least every 10 ms while a paced publisher waits.
    pub sent_with_no_subscriber: u64,
    /// True when stopped by a stop request before its source or limits ended.
    pub interrupted: bool,
    /// Shards that could not take their end of stream in time (`shardK ENDPOINT`): a subscriber
    /// stopped reading (an error unless `interrupted`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub eos_missed: Vec<String>,
    /// Shards whose end of stream went out but not every subscriber that ends at one (holding
    /// [`wire::AWAITS_EOS`], as an mdsub engine's shard does) confirmed it ([`wire::TOOK_EOS`])
    /// within `--eos-wait`, or before a stop request ended the wait: such a subscriber may not
    /// have it (its connection died without a close, it is still behind, it was killed). Said on
    /// stderr when the wait ends. Subscribers to everything (a tap, a plain SUB) are not waited
    /// for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub eos_unconfirmed: Vec<EosUnconfirmed>,
    /// Ends of stream sent again on a shard to a subscriber that took the control topic after
    /// it went out (a reconnect, whose old connection may have swallowed the first).
    #[serde(skip_serializing_if = "is_zero")]
    pub eos_resent: u64,
    /// How long the end of stream waited for its confirmation, s (the longest of the sending
    /// threads'; in `elapsed_s`): 0 with no subscriber that ends at one, or `--eos-wait 0s`.
    pub eos_wait_s: f64,
    /// CPU time of the sending thread(s) (not libzmq's I/O threads), ns.
    pub cpu_ns: u64,
    /// DBN sources: receive time of the first and last record sent (ns since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub market_span_ns: Option<(u64, u64)>,
    /// DBN sources: records not replayed (control and unknown types), by record type.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_by_rtype: BTreeMap<String, u64>,
    /// DBN records received before the record ahead of them in their file, sent as they are:
    /// historical DBN files are in receive-time order, so the file is corrupted (a `.dbn.zst`
    /// without a zstd checksum hands corrupted bytes on) or was not written in that order (a live
    /// recording mixing schemas may not be). The first
    /// is said on stderr.
    #[serde(skip_serializing_if = "crate::diag::is_zero")]
    pub ts_recv_backwards: u64,
    /// DBN symbol mappings (metadata intervals, symbol mapping records) dropped because their
    /// instrument id had [`crate::feed::dbn_source::MAX_SYMBOL_MAPPINGS_PER_INSTRUMENT`] already
    /// (said once on stderr): its records are named from the mappings kept.
    #[serde(skip_serializing_if = "crate::diag::is_zero")]
    pub symbol_mappings_dropped: u64,
    /// Damaged input files, by reason (`truncated_tail`, `bad_record`): a file is replayed up
    /// to its first damage and ends there (the damage was said on stderr when met).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub refused: BTreeMap<String, u64>,
    /// Subscribers' connections the data endpoints refused, by reason (`address_not_allowed`,
    /// `key_not_allowed`, `handshake_failed_*`: docs/REFUSALS.md), each reason said on stderr
    /// when first met; with or without an access policy (a peer that is not ZeroMQ).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subscribers_refused: BTreeMap<String, u64>,
    /// Handshake outcomes at the data endpoints not remembered because the handshake ledger
    /// was full (one entry per connection open at once, bounded by the descriptor limit): by
    /// how many `subscribers_refused` and the subscribers counted are off. 0 unless it filled.
    #[serde(skip_serializing_if = "crate::diag::is_zero")]
    pub subscribers_ledger_forgotten: u64,
    /// A fixed rate (`--rate`): the rate offered and what the publisher achieved, msg/s (its
    /// turns after the first per second from the first to the last, less the time paused on
    /// purpose in between (`paused_s`); the schedule's turns, messages dropped on purpose
    /// included). None flat out or at a recorded pace (and the
    /// achieved rate of a run cut short by a stop request, or of fewer than two messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_msgs_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub achieved_msgs_per_sec: Option<f64>,
    /// Snails on purpose ([`FaultPlan`]): messages left out (`--drop-every`:
    /// never sent, so not in `sent_total`, but numbered, their sequences used up, so in the
    /// end-of-stream count: a subscriber counts them in its `gaps` and its `lost`), new
    /// sessions started, and time spent stalled.
    pub dropped_on_purpose: u64,
    pub restarts: u64,
    pub paused_s: f64,
}

/// A shard whose end of stream was not confirmed by every subscriber that ends at one
/// ([`ReplayStats::eos_unconfirmed`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EosUnconfirmed {
    pub shard: usize,
    pub endpoint: String,
    /// Subscribers that end at an end of stream and had not confirmed it when the wait ended.
    pub waiting: usize,
    /// Of those, the ones that named themselves (an `mdsub engine` shard does): where each
    /// subscribed from and its id (`10.0.0.7 (subscriber 5f0c…)`). Not serialized when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<String>,
    /// Its end of stream was due to go again (a subscriber took the control topic after it
    /// went: a reconnect) but a full pipe held the resend back until the wait ended: a lossless
    /// subscriber on the shard is far behind or stopped reading. Not serialized when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resend_pending: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How long a replay waits, after its end of stream, for the subscribers that end at one to
/// confirm it, unless told otherwise ([`Publisher::set_eos_wait`], `--eos-wait`).
pub const DEFAULT_EOS_WAIT: Duration = Duration::from_secs(10);

/// The sending threads' idle strategy unless told otherwise: block (up to 100 ms), that is
/// nap until the next turn and wait in a full pipe's send, as the publisher always did: it
/// keeps pacing accurate and leaves the core to the subscriber between turns.
pub const DEFAULT_IDLE: IdleStrategy = IdleStrategy::Block { wait_us: 100_000 };

/// The highest fixed rate a pacer takes, msg/s: one message a nanosecond, the resolution of its
/// schedule (no ZeroMQ socket sends within two orders of magnitude of it; the command line refuses
/// more, `cli::args::parse_rate`, and so does a trial server).
pub const MAX_RATE_MSGS_PER_SEC: u64 = 1_000_000_000;

/// A fixed rate counts as achieved from this share of it up (`mdsub capacity`'s rule too, its
/// `Sla::min_achieved_ratio`): a publisher that kept its schedule achieves the rate or more.
pub const MIN_ACHIEVED_RATIO: f64 = 0.95;

/// How far behind its schedule a publisher's last message may be and the rate still count as
/// kept, however short the run: one late wake-up (a nap that overran, a core busy elsewhere) is
/// that much, and over a run too short to measure a rate it was all there was (`demo --count 10`,
/// 10 messages due over 90 µs at 100k msg/s, said `rate not achieved: … 57210 msg/s (57%)` for
/// a start 70 µs late). A run of 200 ms or more falls below [`MIN_ACHIEVED_RATIO`] only this far
/// behind or further, so it is judged by the ratio alone.
pub const BEHIND_SCHEDULE_JUDGED_NS: u64 = 10_000_000;

impl ReplayStats {
    /// `(offered, achieved)` msg/s when a fixed rate was offered and the publisher achieved
    /// less than [`MIN_ACHIEVED_RATIO`] of it (it could not send faster, or a lossless
    /// subscriber held it back), its last message [`BEHIND_SCHEDULE_JUDGED_NS`] or more behind
    /// its schedule.
    pub fn rate_not_achieved(&self) -> Option<(u64, f64)> {
        let (offered, achieved) = (self.offered_msgs_per_sec?, self.achieved_msgs_per_sec?);
        let short = achieved < MIN_ACHIEVED_RATIO * offered as f64;
        fell_behind(short, self.behind_schedule_ns(offered, achieved)).then_some((offered, achieved))
    }

    /// How far behind its schedule the publisher's last message went, ns: its messages (those
    /// left out on purpose counted, as the achieved rate counts them) spanned n-1 intervals at
    /// the achieved rate where n-1 at the offered rate were due.
    fn behind_schedule_ns(&self, offered: u64, achieved: f64) -> f64 {
        let intervals = (self.sent_total + self.dropped_on_purpose).saturating_sub(1) as f64;
        match achieved {
            a if a > 0.0 => intervals * (1.0 / a - 1.0 / offered.max(1) as f64) * 1e9,
            _ => f64::INFINITY,
        }
    }

    /// [`rate_not_achieved`](Self::rate_not_achieved) in words, for the commands' summaries.
    pub fn rate_note(&self) -> Option<String> {
        let (offered, achieved) = self.rate_not_achieved()?;
        Some(format!(
            "rate not achieved: offered {offered} msg/s, achieved {achieved:.0} msg/s ({:.0}%); the publisher could \
             not send faster (or, lossless, a subscriber held it back)",
            100.0 * achieved / offered as f64
        ))
    }

    /// `pace not kept: …` when a file replayed at a multiple of its recorded pace (`pacing`)
    /// fell behind it by the rule a `--rate` not achieved is judged by (`fell_behind`): a
    /// subscriber measures latency from the schedule, so it counts how far behind the publisher
    /// went (time paused on purpose aside). None for any other pacing.
    pub fn pace_note(&self, pacing: Pacing) -> Option<String> {
        let Pacing::Recorded { speed } = pacing else { return None };
        let ((first, last), span_s) = (self.market_span_ns?, self.send_span_s?);
        let due_s = last.saturating_sub(first) as f64 / 1e9 / speed;
        let took_s = (span_s - self.paused_s).max(0.0);
        let short = due_s < MIN_ACHIEVED_RATIO * took_s;
        let ns = |s: f64| crate::diag::human_ns((s * 1e9) as u64);
        fell_behind(short, (took_s - due_s) * 1e9).then(|| {
            format!(
                "pace not kept: the {} recorded at {speed}x were due in {}; sending took {} ({:.0}% of the pace), so \
                 the last message went {} behind the recorded schedule, and a subscriber's latency, measured from \
                 it, includes that (the publisher could not send faster, or, lossless, a subscriber held it back)",
                crate::diag::human_ns(last.saturating_sub(first)),
                ns(due_s),
                ns(took_s),
                100.0 * due_s / took_s,
                ns(took_s - due_s)
            )
        })
    }

    /// The note on the schedule the replay kept, if it fell behind it: the rate's
    /// ([`rate_note`](Self::rate_note)) or the recorded pace's ([`pace_note`](Self::pace_note);
    /// only one of the two applies to a run).
    pub fn schedule_note(&self, pacing: Pacing) -> Option<String> {
        self.rate_note().or_else(|| self.pace_note(pacing))
    }

    /// The replay's numbers as JSON (`mdsub replay --json`): these stats with the notes the text
    /// summary prints, `rate_note` and `pace_note`, each present only when said.
    pub fn to_json(&self, pacing: Pacing) -> serde_json::Result<serde_json::Value> {
        let mut v = serde_json::to_value(self)?;
        if let Some(o) = v.as_object_mut() {
            for (name, note) in [("rate_note", self.rate_note()), ("pace_note", self.pace_note(pacing))] {
                if let Some(n) = note {
                    o.insert(name.into(), n.into());
                }
            }
        }
        Ok(v)
    }
}

/// A schedule (a `--rate`, a recorded pace) counts as not kept when the publisher went below
/// [`MIN_ACHIEVED_RATIO`] of it (`short`) and its last message [`BEHIND_SCHEDULE_JUDGED_NS`] or
/// more behind it (`behind_ns`).
fn fell_behind(short: bool, behind_ns: f64) -> bool {
    short && behind_ns >= BEHIND_SCHEDULE_JUDGED_NS as f64
}

struct Shard {
    socket: zmq::Socket,
    endpoint: String,
    publisher_id: u32,
    session_id: u64,
    stream_seq: u64,
    /// Messages sent (any kind).
    sent: u64,
    /// mdsub data frames numbered in this session (what the end of stream reports): sent,
    /// dropped at the SNDHWM, or left out on purpose.
    data_sent: u64,
    /// Data messages a full pipe refused (lossy): dropped for that subscriber, sent to the
    /// others with room (more than one subscriber), or dropped for all (one).
    dropped_at_hwm: u64,
    /// A lossy data message went past a subscriber's full pipe in this run
    /// ([`PublisherAgent::pass_over`](agent::PublisherAgent)): that pipe may be out of libzmq's
    /// sending set still, so its end of stream may have skipped it. It is sent again while one
    /// of its subscribers has not confirmed it ([`Shard::eos_repeat_due`]).
    passed_over: bool,
    /// When the end of stream was last sent again for that (mono ns).
    eos_repeated_ns: u64,
    /// Subscribers as last drained: [`subscribers_of`] its `subscriptions` (less the proxies'
    /// own, `proxies`) and its handshaken connections.
    subscribers: usize,
    /// Whether anyone at all took its frames as last drained: a subscriber, or a proxy for
    /// itself (an LVC keeping its cache warm).
    heard: bool,
    /// Proxies' own subscriptions to everything open, each marked [`wire::PROXY_OWN`] (an LVC's,
    /// which keeps its cache warm): no subscribers of their own, taken off `subscriptions`.
    proxies: usize,
    /// Whether a proxy's own subscription was said (once a shard).
    proxy_said: bool,
    /// Handshaken connections open as last drained (0 without a handshake watch).
    connections: usize,
    /// Subscriptions open that take the control topic (each mdsub subscriber makes one; a
    /// peer may make several, and libzmq makes one up, `""`, for a ZMTP 1.0 peer).
    subscriptions: usize,
    /// The XPUB's connections that completed their handshake and are open (its handshake
    /// watch's count; None without one: subscriptions alone count).
    handshaken: Option<Arc<HandshakenPeers>>,
    /// Data messages sent while nobody took them (`heard` false): they reached no one.
    sent_unheard: u64,
    /// Time a full pipe (a lossless subscriber not reading) held its sends back, ns.
    blocked_ns: u64,
    /// Subscriptions open to [`wire::AWAITS_EOS`]: subscribers that end at an end of stream and
    /// confirm it (an mdsub engine's shard; a proxy's connection holds one while any such
    /// subscriber behind it does). Each connection of a subscriber counts.
    awaiting: usize,
    /// Those subscribers that name themselves ([`wire::awaits_eos_as`], beside the bare one):
    /// id and how many connections hold it (a reconnect beside a connection dead without a
    /// close: two). Counted once each, however many.
    awaiting_named: Vec<(u64, usize)>,
    /// Where each named subscriber's last [`wire::awaits_eos_as`] came from (its connection's
    /// peer address, libzmq's `Peer-Address`: the IP alone), to say which one left or did not confirm ([`Shard::who`]).
    named_from: Vec<(u64, String)>,
    /// The named subscribers whose last connection holding the wait ended since the last drain
    /// of the subscription events: said with the "a subscriber left" line.
    left_named: Vec<u64>,
    /// Confirmations of this shard's session's end of stream ([`wire::confirms_eos`]), and
    /// subscriptions taking the control topic (a subscriber that joins, or joins again: a
    /// reconnect), since bind.
    took: u64,
    control_joins: u64,
    /// Of the confirmations, those in the named form ([`wire::confirming_id`]), since bind (each
    /// is followed by a bare one, in `took`), and the subscribers they named since its end of
    /// stream last went out.
    took_named: u64,
    confirmed_named: Vec<u64>,
    /// Where those stood when its end of stream went out (None: it has not, or not in time).
    eos_at: Option<EosAt>,
    /// The subscribers that named themselves when it went out ([`Shard::awaiting_named`]'s ids).
    eos_named: Vec<u64>,
    /// Ends of stream sent again to subscribers that joined after it went out.
    eos_resent: u64,
}

/// A shard's subscriptions when its end of stream went out: what its wait for them counts from
/// ([`Shard::eos_waiting`]).
#[derive(Debug, Clone, Copy)]
struct EosAt {
    /// The subscriptions to the bare [`wire::AWAITS_EOS`] of subscribers that did not name
    /// themselves (an older engine; a proxy's).
    awaiting: usize,
    took: u64,
    took_named: u64,
    /// The control-topic subscriptions it was last sent for (a later one is sent it again).
    control_joins: u64,
}

impl Shard {
    /// A bound shard of `publisher_id`'s session `session_id`, nothing sent or heard yet.
    fn new(
        socket: zmq::Socket,
        endpoint: String,
        publisher_id: u32,
        session_id: u64,
        handshaken: Option<Arc<HandshakenPeers>>,
    ) -> Shard {
        Shard {
            socket,
            endpoint,
            publisher_id,
            session_id,
            stream_seq: 0,
            sent: 0,
            data_sent: 0,
            dropped_at_hwm: 0,
            passed_over: false,
            eos_repeated_ns: 0,
            sent_unheard: 0,
            subscribers: 0,
            heard: false,
            proxies: 0,
            proxy_said: false,
            connections: 0,
            subscriptions: 0,
            handshaken,
            blocked_ns: 0,
            awaiting: 0,
            awaiting_named: Vec::new(),
            named_from: Vec::new(),
            left_named: Vec::new(),
            took: 0,
            control_joins: 0,
            took_named: 0,
            confirmed_named: Vec::new(),
            eos_at: None,
            eos_named: Vec::new(),
            eos_resent: 0,
        }
    }

    /// One message sent (or dropped by a lossy publisher: its sequences are
    /// spent), `data` of them data messages (the end-of-stream count).
    #[inline]
    fn count_sent(&mut self, data: u64) {
        self.sent += 1;
        self.data_sent += data;
        if !self.heard {
            self.sent_unheard += data;
        }
    }

    fn send_error(&self, source: zmq::Error) -> ReplayError {
        ReplayError::Zmq { context: format!("sending on {}", self.endpoint), source }
    }

    /// Its end of stream went out: the wait for its subscribers counts from here.
    fn eos_went(&mut self) {
        // A named subscriber holds the bare subscription beside the named one on each connection.
        let named_holds: usize = self.awaiting_named.iter().map(|&(_, n)| n).sum();
        let awaiting = self.awaiting.saturating_sub(named_holds);
        let (took, took_named, control_joins) = (self.took, self.took_named, self.control_joins);
        self.eos_at = Some(EosAt { awaiting, took, took_named, control_joins });
        self.eos_repeated_ns = crate::clock::monotonic_ns();
        self.eos_named.clear();
        self.eos_named.extend(self.awaiting_named.iter().map(|&(id, _)| id));
        self.confirmed_named.clear();
    }

    /// Subscribers that end at an end of stream and have not confirmed this one: those that held
    /// [`wire::AWAITS_EOS`] when it went out, less the confirmations since. A holder's connection
    /// that ends withdraws it, which confirms nothing: it may have died without a close with the
    /// end of stream in it, its subscriber reconnecting (that reconnect is sent it again, and its
    /// confirmation stands for the dead connection's). A subscriber that names itself
    /// ([`wire::awaits_eos_as`]) counts once however many of its connections held it (one dead
    /// without a close beside its reconnect), and is settled by a confirmation naming it; the
    /// others by the bare confirmations that no named one came with. 0 when it never went out.
    fn eos_waiting(&self) -> usize {
        let Some(at) = self.eos_at else { return 0 };
        let named = self.took_named.saturating_sub(at.took_named);
        let bare = self.took.saturating_sub(at.took).saturating_sub(named);
        let bare = usize::try_from(bare).unwrap_or(usize::MAX);
        let named_left = self.eos_named.iter().filter(|id| !self.confirmed_named.contains(id)).count();
        at.awaiting.saturating_sub(bare) + named_left
    }

    /// Named subscriber `id`'s awaits-eos came from `peer` (a connection's address). Bounded
    /// ([`NAMED_FROM_MAX`]): when full, the addresses of subscribers no longer held nor waited
    /// for go (a peer subscribing under ever new ids grew it without end); still full, the new
    /// one is said by its id alone.
    fn heard_from(&mut self, id: u64, peer: &str) {
        match self.named_from.iter_mut().find(|(held, _)| *held == id) {
            Some((_, from)) if from != peer => *from = peer.to_string(),
            Some(_) => {}
            None => {
                if self.named_from.len() >= NAMED_FROM_MAX {
                    let (holding, waited, left) = (&self.awaiting_named, &self.eos_named, &self.left_named);
                    self.named_from.retain(|&(k, _)| {
                        holding.iter().any(|&(h, _)| h == k) || waited.contains(&k) || left.contains(&k)
                    });
                }
                if self.named_from.len() < NAMED_FROM_MAX {
                    self.named_from.push((id, peer.to_string()));
                }
            }
        }
    }

    /// Named subscriber `id` as a line says it: where it subscribed from, and its id (the same
    /// across its reconnects; an engine draws one per shard).
    fn who(&self, id: u64) -> String {
        match self.named_from.iter().find(|(held, _)| *held == id) {
            Some((_, from)) => format!("{from} (subscriber {id:016x})"),
            None => format!("subscriber {id:016x}"),
        }
    }

    /// The named subscribers that have not confirmed its end of stream, as lines say them.
    fn unconfirmed_named(&self) -> Vec<String> {
        self.eos_named.iter().filter(|id| !self.confirmed_named.contains(id)).map(|&id| self.who(id)).collect()
    }

    /// Its end of stream went out to a subscriber that ends at one (one to wait for).
    fn eos_awaited(&self) -> bool {
        self.eos_at.is_some_and(|at| at.awaiting > 0) || !self.eos_named.is_empty()
    }

    /// A subscription event of the end-of-stream wait: `subscribe` (1) or withdraw (0) `prefix`.
    /// Confirmations are subscriptions (their withdrawal follows at once, and a connection that
    /// ends withdraws them too: never taken for one).
    fn eos_event(&mut self, subscribe: bool, prefix: &[u8]) {
        if prefix == wire::AWAITS_EOS {
            self.awaiting = if subscribe { self.awaiting + 1 } else { self.awaiting.saturating_sub(1) };
        } else if let Some(id) = wire::awaiting_id(prefix) {
            let at = self.awaiting_named.iter().position(|&(held, _)| held == id);
            match (subscribe, at) {
                (true, Some(i)) => self.awaiting_named[i].1 += 1,
                (true, None) => self.awaiting_named.push((id, 1)),
                (false, Some(i)) if self.awaiting_named[i].1 > 1 => self.awaiting_named[i].1 -= 1,
                (false, Some(i)) => {
                    self.awaiting_named.swap_remove(i);
                    self.left_named.push(id);
                }
                (false, None) => {}
            }
        } else if subscribe && wire::confirms_eos(prefix, self.publisher_id, self.session_id) {
            self.took += 1;
        } else if let Some(id) = wire::confirming_id(prefix, self.publisher_id, self.session_id).filter(|_| subscribe) {
            self.took_named += 1;
            if !self.confirmed_named.contains(&id) {
                self.confirmed_named.push(id);
            }
        }
    }

    /// A subscriber took the control topic after the end of stream was last sent: it is sent
    /// again. Still true after a try ([`Publisher::resend_eos`]) only when a full pipe held the
    /// resend back: the shard's "resend pending".
    fn eos_resend_due(&self) -> bool {
        self.eos_at.is_some_and(|at| self.control_joins > at.control_joins)
    }

    /// Whether a lossy message a full pipe refused goes to the shard's other subscribers
    /// ([`PublisherAgent::pass_over`](agent::PublisherAgent)): more than one subscriber, on more
    /// than one connection. One connection is one pipe however many subscribers it carries (a
    /// proxy, `mdsub lvc` or `mdsub tap`, forwards each one's subscription): there is no other
    /// pipe to reach, and libzmq would skip that one in silence after it, its later drops and
    /// the end of stream gone uncounted; it is dropped and counted, as with one subscriber.
    ///
    /// `connections` are those whose handshake completed, whether or not they subscribed: the
    /// replay cannot know which did, since libzmq's XPUB hands a subscription over with its
    /// connection's metadata (`Peer-Address`, the peer's IP alone; a `User-Id` only from a ZAP
    /// handler, which answers none), never the connection itself. So a proxy beside a
    /// connection that subscribed to nothing (a probe, a SUB that has not subscribed yet)
    /// passes over: after that first counted drop, libzmq skips the proxy's pipe in silence
    /// until it drains, and those messages are missing from `dropped_at_hwm` (the subscribers
    /// behind the proxy count them as gaps). docs/COMMANDS.md (`--lossy`) says so.
    fn passes_over(&self) -> bool {
        self.subscribers > 1 && self.connections > 1
    }

    /// Whether its end of stream is to go again at `now_ns` for a subscriber whose full pipe a
    /// lossy message went past ([`Shard::passed_over`]): libzmq skips that pipe, in silence,
    /// until its reader has drained it to the low-water mark, so the end of stream sent
    /// meanwhile never reached it. Every [`EOS_REPEAT_EVERY`] while a subscriber that ends at
    /// one has not confirmed it (a repeat counts once: the engine's `on_end_of_stream`).
    fn eos_repeat_due(&self, now_ns: u64) -> bool {
        self.eos_repeat_in(now_ns) == Some(0)
    }

    /// How long until its end of stream is to go again ([`Shard::eos_repeat_due`]), ns; None:
    /// not to go again.
    fn eos_repeat_in(&self, now_ns: u64) -> Option<u64> {
        let next_ns = self.eos_repeated_ns.saturating_add(EOS_REPEAT_EVERY.as_nanos() as u64);
        (self.passed_over && self.eos_waiting() > 0).then(|| next_ns.saturating_sub(now_ns))
    }
}

/// One topic's frame of the generated feed, patched per message: built by
/// [`Publisher::generated_templates`].
struct TopicFrame {
    shard: usize,
    topic_len: usize,
    frame: Vec<u8>,
    /// The topic's last sequence sent in this session.
    topic_seq: u64,
}

/// Does a subscription to `prefix` take the control topic (a prefix of `CONTROL_TOPIC` and its
/// NUL)? No allocation: it is asked at every drain round of a flat-out run (tests/alloc.rs).
fn takes_control(prefix: &[u8]) -> bool {
    prefix.len() <= CONTROL_TOPIC.len() + 1 && CONTROL_TOPIC.iter().chain(b"\0").zip(prefix).all(|(a, b)| a == b)
}

/// The subscribers a shard has: the subscriptions open that take the control topic (each mdsub
/// subscriber makes one), once a connection completed its ZMTP handshake (`handshaken`; None
/// when the socket has no handshake watch), none before. A peer whose bytes libzmq reads as
/// ZMTP 1.0 (random bytes do) is ended in its handshake ([`crate::zmqx::refuse_zmtp1`]); were
/// it not, libzmq would make up a subscription to everything for it. Subscriptions are not capped by
/// connections: libzmq does not tie one to the other, and one connection of a proxy (`mdsub lvc`,
/// any XSUB) carries the subscriptions of every subscriber behind it (capping them made a replay
/// behind an LVC wait for ever for its second subscriber). So one peer that subscribes several
/// prefixes of the control topic still counts several times. A proxy's own subscription to
/// everything, marked [`wire::PROXY_OWN`] (an LVC keeping its cache warm), is taken off before:
/// a replay behind an LVC waits for the subscribers behind it, not for the LVC alone.
pub fn subscribers_of(subscriptions: usize, handshaken: Option<usize>) -> usize {
    match handshaken {
        Some(0) => 0,
        _ => subscriptions,
    }
}

/// One XPUB per shard, bound and ready to publish.
pub struct Publisher {
    shards: Vec<Shard>,
    /// A run is under way: subscribers joining or leaving are said.
    sending: bool,
    /// When the subscription events were last drained.
    drained_at: Instant,
    buf: Vec<u8>,
    lossless: bool,
    /// `--peer-timeout` is set: a connection whose data stays unacknowledged that long is ended.
    pub(super) peer_timeout_set: bool,
    /// Where a file replay is (its market time and bytes read), for progress displays.
    position: Arc<FilePosition>,
    /// What the last DBN run reports: its market time span and skipped records.
    market_span_ns: Option<(u64, u64)>,
    skipped_by_rtype: BTreeMap<String, u64>,
    ts_recv_backwards: u64,
    symbol_mappings_dropped: u64,
    /// Damaged input files of the last run, by reason.
    refused: BTreeMap<String, u64>,
    /// The context's ZAP handler when `access` needs one (dropped with the
    /// publisher, before its caller drops the context).
    zap: Option<ZapService>,
    /// Snails on purpose, and what they did in the last run.
    faults: FaultPlan,
    dropped_on_purpose: u64,
    restarts: u64,
    paused: Duration,
    /// What the last run's pacer achieved at a fixed rate ([`Schedule::achieved_msgs_per_sec`](schedule::Schedule::achieved_msgs_per_sec)).
    achieved_msgs_per_sec: Option<f64>,
    /// The last run's turns and the clock at the first and the last ([`Schedule::turns_mono_ns`](schedule::Schedule::turns_mono_ns)).
    turns_mono_ns: Option<(u64, u64, u64)>,
    /// Say what the input refuses (record types not replayed, damage) as it is met; off, it is
    /// only counted (a benchmark's later runs of the same file).
    say_refusals: bool,
    /// One sending thread per shard.
    thread_per_shard: bool,
    /// The part of the generated feed this publisher sends: shard `.0` of `.1`
    /// (`(0, 1)`: all of it; a per-shard thread sends one part).
    part: (usize, usize),
    /// The idle strategy of the sending threads.
    idle: IdleStrategy,
    /// How long the end of stream waits for its confirmation ([`Publisher::set_eos_wait`]).
    eos_wait: Duration,
}

impl Publisher {
    /// Make and bind one XPUB per endpoint.
    pub fn bind(ctx: &zmq::Context, cfg: &PublisherConfig) -> Result<Self, ReplayError> {
        if cfg.endpoints.is_empty() {
            return Err(ReplayError::Config("at least one endpoint is needed".into()));
        }
        check_publisher_ids(cfg.publisher_id_base, cfg.endpoints.len()).map_err(ReplayError::Config)?;
        let mut seed = SplitMix64::new(crate::clock::realtime_ns() ^ (std::process::id() as u64) << 32);
        let zap = Some(ZapService::start(ctx, "replay", &cfg.access).map_err(|e| ReplayError::Config(e.to_string()))?);
        let mut shards = Vec::with_capacity(cfg.endpoints.len());
        for (i, ep) in cfg.endpoints.iter().enumerate() {
            crate::zmqx::check_endpoint(ep).map_err(ReplayError::Config)?;
            let mut s = ctx.socket(zmq::XPUB).map_err(zerr("creating the XPUB"))?;
            s.set_sndhwm(cfg.sndhwm_msgs).map_err(zerr("setting SNDHWM"))?;
            crate::zmqx::bound_subscriptions(&s).map_err(zerr("setting MAXMSGSIZE"))?;
            s.set_xpub_verbose(true).map_err(zerr("setting XPUB_VERBOSE"))?;
            // Every unsubscription too, not only a topic's last: the subscriber count (and the
            // "a subscriber left" line) stays true with several subscribers on a shard.
            crate::zmqx::set_xpub_verboser(&mut s, true).map_err(zerr("setting XPUB_VERBOSER"))?;
            // Lossy too: a lossy XPUB would drop at the HWM in silence and
            // take the pipe out of its active set until the reader drains it,
            // so a control frame sent then (the end of stream) is dropped
            // although the send says it went. With NODROP a full pipe says
            // EAGAIN: lossless waits; lossy counts the message and sends it
            // lossy to the shard's other subscribers, or with one drops it
            // (PublisherAgent::pass_over).
            crate::zmqx::set_xpub_nodrop(&mut s, true).map_err(zerr("setting XPUB_NODROP"))?;
            s.set_sndtimeo(100).map_err(zerr("setting SNDTIMEO"))?;
            s.set_linger(2000).map_err(zerr("setting LINGER"))?;
            // Before the bind: libzmq gives each accepted connection the listener's options.
            let maxrt = i32::try_from(cfg.peer_timeout.as_millis()).unwrap_or(i32::MAX);
            crate::zmqx::set_tcp_maxrt(&mut s, maxrt).map_err(zerr("setting TCP_MAXRT"))?;
            let handshaken = cfg.access.secure(ctx, &mut s, zap.as_ref()).map_err(|e| match e {
                SecureError::Options(source) => zerr("setting the access options")(source),
                SecureError::Watch(e) => ReplayError::Config(e.to_string()),
            })?;
            let endpoint = crate::zmqx::bind_resolved(&s, ep).map_err(|e| zerr(crate::zmqx::binding(ep, e))(e))?;
            // In range: checked above.
            let publisher_id = cfg.publisher_id_base.saturating_add(i as u32);
            shards.push(Shard::new(s, endpoint, publisher_id, seed.next_u64(), handshaken));
        }
        Ok(Publisher {
            shards,
            sending: false,
            drained_at: Instant::now(),
            buf: Vec::with_capacity(1024),
            lossless: cfg.lossless,
            peer_timeout_set: !cfg.peer_timeout.is_zero(),
            position: Arc::new(FilePosition::default()),
            market_span_ns: None,
            skipped_by_rtype: BTreeMap::new(),
            ts_recv_backwards: 0,
            symbol_mappings_dropped: 0,
            refused: BTreeMap::new(),
            zap,
            faults: FaultPlan::default(),
            dropped_on_purpose: 0,
            restarts: 0,
            paused: Duration::ZERO,
            achieved_msgs_per_sec: None,
            turns_mono_ns: None,
            say_refusals: true,
            thread_per_shard: cfg.thread_per_shard,
            part: (0, 1),
            idle: DEFAULT_IDLE,
            eos_wait: DEFAULT_EOS_WAIT,
        })
    }

    /// What the ZAP handler has decided about subscribers, and the peers refused in their
    /// handshake (None only for a shard's own thread's publisher).
    pub fn access_counters(&self) -> Option<Arc<ZapCounters>> {
        self.zap.as_ref().map(ZapService::counters)
    }

    /// Say what the input refuses (DBN record types not replayed, damage) when it is met
    /// (`true`, the default), or only count it in the run's numbers (`false`: a benchmark's
    /// later runs of a file whose refusals its first run said).
    pub fn say_refusals(&mut self, say: bool) {
        self.say_refusals = say;
    }

    /// The idle strategy of the sending threads (default [`DEFAULT_IDLE`]): what a paced
    /// publisher does between its turns (it never waits past a turn) and while a lossless
    /// pipe is full.
    pub fn set_idle(&mut self, idle: IdleStrategy) {
        self.idle = idle;
    }

    /// How long a run, after its end of stream, keeps its endpoints for the subscribers that end
    /// at one (an mdsub engine's shard: it subscribes [`wire::AWAITS_EOS`]) to confirm it
    /// ([`wire::TOOK_EOS`]; default [`DEFAULT_EOS_WAIT`]). A subscriber that takes
    /// the control topic in that time (a reconnect, whose old connection may have swallowed the
    /// first) is sent the end of stream again; what is not confirmed in time is said and kept in
    /// [`ReplayStats::eos_unconfirmed`]. A stop request during the wait ends it at once; one
    /// before it (a run stopped while sending) leaves it [`EOS_AFTER_STOP`] at most, as it
    /// leaves the end of stream to go out. Zero waits for nothing and sends nothing again.
    /// Subscribers to everything alone (a tap, a plain SUB) are not waited for.
    pub fn set_eos_wait(&mut self, wait: Duration) {
        self.eos_wait = wait;
    }

    /// Put snails on purpose into the next runs: a pause, dropped messages,
    /// a restart mid-stream ([`FaultPlan`]).
    pub fn set_faults(&mut self, plan: FaultPlan) -> Result<(), ReplayError> {
        plan.check().map_err(ReplayError::Config)?;
        self.faults = plan;
        Ok(())
    }

    /// Where a file replay is, for a progress display: the replayed market time (receive time
    /// of the DBN record being sent) between the files' first record and their metadata's end,
    /// and the bytes read of their sizes ([`FilePosition::extent`]). Stored by the sending
    /// thread as it loads each message; reset by each [`Publisher::run`].
    pub fn position(&self) -> Arc<FilePosition> {
        self.position.clone()
    }

    /// The bound endpoints, one per shard, ports resolved.
    pub fn endpoints(&self) -> Vec<String> {
        self.shards.iter().map(|s| s.endpoint.clone()).collect()
    }

    /// Read pending subscription events; count subscriptions that receive the
    /// control topic (each mdsub subscriber makes exactly one such), and the subscribers by
    /// [`subscribers_of`] them and the connections that completed their handshake.
    /// While a run is under way (`self.sending`), a subscriber that leaves or joins is said
    /// on stderr: what is sent while a shard has none reaches no one.
    fn drain_subscriptions(&mut self) -> Result<(), ReplayError> {
        self.drained_at = Instant::now();
        let say = self.sending;
        // A shard's own thread (--thread-per-shard) holds one shard: its number is its part's.
        let first = self.part.0;
        for (k, sh) in self.shards.iter_mut().enumerate() {
            let k = first + k;
            let mut ev = zmq::Message::new();
            while sh.socket.recv(&mut ev, zmq::DONTWAIT).is_ok() {
                let named = match ev.split_first() {
                    Some((1, topic)) if takes_control(topic) => {
                        sh.subscriptions += 1;
                        sh.control_joins += 1;
                        None
                    }
                    Some((0, topic)) if takes_control(topic) => {
                        sh.subscriptions = sh.subscriptions.saturating_sub(1);
                        None
                    }
                    Some((1, wire::PROXY_OWN)) => {
                        sh.proxies += 1;
                        if !std::mem::replace(&mut sh.proxy_said, true) {
                            crate::diag!(
                                "replay: shard{k}: a proxy subscribed to everything for itself (mdsub lvc, keeping its \
                                 cache warm): it is not counted as a subscriber; the subscribers behind it are, as \
                                 their subscriptions come through it"
                            );
                        }
                        None
                    }
                    Some((0, wire::PROXY_OWN)) => {
                        sh.proxies = sh.proxies.saturating_sub(1);
                        None
                    }
                    Some((kind @ (0 | 1), p)) => {
                        sh.eos_event(*kind == 1, p);
                        wire::awaiting_id(p).filter(|_| *kind == 1)
                    }
                    _ => None,
                };
                // Where it came from: the subscription carries its connection's metadata.
                if let Some((id, peer)) = named.and_then(|id| Some((id, ev.gets("Peer-Address")?.to_string()))) {
                    sh.heard_from(id, &peer);
                }
            }
            let left = std::mem::take(&mut sh.left_named);
            let handshaken = sh.handshaken.as_ref().map(|h| usize::try_from(h.now()).unwrap_or(usize::MAX));
            let now = subscribers_of(sh.subscriptions.saturating_sub(sh.proxies), handshaken);
            let heard = subscribers_of(sh.subscriptions, handshaken) > 0;
            let connections = handshaken.unwrap_or(0);
            if say && now > sh.subscribers {
                crate::diag!("replay: shard{k}: a subscriber joined ({now} now)");
            } else if say && now < sh.subscribers {
                let none = match (now, heard) {
                    (0, false) => ": what it sends now reaches no one",
                    (0, true) => ": what it sends now reaches a proxy alone (an LVC's cache)",
                    _ => "",
                };
                // The subscribers that named themselves and have no connection left: which ones.
                let who = left.iter().map(|&id| sh.who(id)).collect::<Vec<_>>().join(", ");
                let who = if who.is_empty() { who } else { format!(": {who}") };
                crate::diag!("replay: shard{k}: a subscriber left ({now} remain){who}{none}");
            } else if say && connections < sh.connections {
                // A proxy (any XSUB) forwards each subscribe but an unsubscribe only when the
                // last subscriber of that prefix behind it left: its subscribers leaving never
                // lower the count. A connection closing is what this side sees of them.
                crate::diag!(
                    "replay: shard{k}: a subscriber's connection closed ({connections} open; subscribers behind a \
                     proxy are counted as they join, not as they leave)"
                );
            }
            sh.subscribers = now;
            sh.heard = heard;
            sh.connections = connections;
        }
        Ok(())
    }

    /// The shards with fewer than `per_shard` subscribers as last drained, each with how many
    /// it has (`shard0 tcp://127.0.0.1:5556: 0 of 1`).
    pub fn short_of_subscribers(&self, per_shard: usize) -> Vec<String> {
        let first = self.part.0;
        (self.shards.iter().enumerate())
            .filter(|(_, s)| s.subscribers < per_shard)
            .map(|(k, s)| format!("shard{} {}: {} of {per_shard}", first + k, s.endpoint, s.subscribers))
            .collect()
    }

    /// The result of a replay stopped before it sent anything (Ctrl-C while it waited for its
    /// subscribers): nothing sent, marked interrupted, what its endpoints refused.
    pub fn stopped_before_sending(&self) -> ReplayStats {
        self.stats(Instant::now(), true)
    }

    /// Wait until every shard has `per_shard` subscribers (the handshake).
    pub fn wait_for_subscribers(&mut self, per_shard: usize, timeout: Duration) -> Result<(), ReplayError> {
        self.wait_for_subscribers_or_stop(per_shard, timeout, &StopFlag::new())
    }

    /// [`Publisher::wait_for_subscribers`] that gives up with [`ReplayError::Interrupted`]
    /// as soon as `stop` is set (Ctrl-C while nobody has subscribed yet).
    pub fn wait_for_subscribers_or_stop(
        &mut self,
        per_shard: usize,
        timeout: Duration,
        stop: &StopFlag,
    ) -> Result<(), ReplayError> {
        let start = Instant::now();
        let mut said_waiting = false;
        loop {
            self.drain_subscriptions()?;
            if let Some(sh) = self.shards.iter().find(|s| s.subscribers < per_shard) {
                if stop.is_stopped() {
                    return Err(ReplayError::Interrupted);
                }
                // Nothing was said between `waiting for N subscriber(s)` and the timeout (30 s
                // by default): after 5 s, once, which shards still lack subscribers.
                if !said_waiting && start.elapsed() >= WAITING_SAID_AFTER && start.elapsed() < timeout {
                    said_waiting = true;
                    crate::diag!(
                        "replay: still waiting for subscribers after {} ({}); gives up after {} (--wait-timeout)",
                        crate::diag::human_duration_of(WAITING_SAID_AFTER),
                        self.short_of_subscribers(per_shard).join(", "),
                        crate::diag::human_duration_of(timeout)
                    );
                }
                if start.elapsed() >= timeout {
                    return Err(ReplayError::NoSubscribers {
                        endpoint: sh.endpoint.clone(),
                        expected: per_shard,
                        seen: sh.subscribers,
                        waited_ms: timeout.as_millis() as u64,
                    });
                }
                let mut items: Vec<zmq::PollItem> =
                    self.shards.iter().map(|s| s.socket.as_poll_item(zmq::POLLIN)).collect();
                match zmq::poll(&mut items, 20) {
                    // A signal (Ctrl-C) landed on this thread: look at `stop` and go on.
                    Ok(_) | Err(zmq::Error::EINTR) => {}
                    Err(e) => return Err(zerr("waiting for subscribers")(e)),
                }
            } else {
                return Ok(());
            }
        }
    }

    /// One encoded data frame per generated topic, carrying its shard's publisher and current
    /// session and `payload`: the generated feed's messages differ from them only in the
    /// sequences, the send time and the payload's counter, which [`patch_generated`] writes
    /// per message (as a publisher of prebuilt frames does).
    fn generated_templates(&self, gen: &Generator, payload: &[u8]) -> Vec<TopicFrame> {
        let shards = self.shards.len();
        gen.topics()
            .iter()
            .map(|t| {
                let t = t.as_bytes();
                let k = shard_of(t, shards);
                let sh = &self.shards[k];
                let h = Header {
                    kind: Kind::Data,
                    flags: 0,
                    publisher_id: sh.publisher_id,
                    session_id: sh.session_id,
                    stream_seq: 0,
                    topic_seq: 0,
                    send_time_ns: 0,
                };
                TopicFrame { shard: k, topic_len: t.len(), frame: wire::encode(t, &h, payload), topic_seq: 0 }
            })
            .collect()
    }

    fn encode_control(&mut self, k: usize, kind: Kind) {
        let sh = &self.shards[k];
        let h = Header {
            kind,
            flags: 0,
            publisher_id: sh.publisher_id,
            session_id: sh.session_id,
            stream_seq: sh.stream_seq,
            topic_seq: 0,
            send_time_ns: crate::clock::realtime_ns(),
        };
        let payload = sh.data_sent.to_le_bytes();
        self.buf.resize(wire::frame_len(CONTROL_TOPIC, 8), 0);
        wire::encode_into(&mut self.buf, CONTROL_TOPIC, &h, &payload);
    }

    /// Send shard `k`'s end of stream again (its count as when it first went), without waiting,
    /// for a subscriber that took the control topic after it went: false when a pipe is full
    /// (to try again).
    fn resend_eos(&mut self, k: usize) -> Result<bool, ReplayError> {
        let sent = self.send_eos_again(k)?;
        if sent {
            let sh = &mut self.shards[k];
            if let Some(at) = &mut sh.eos_at {
                at.control_joins = sh.control_joins;
            }
            sh.eos_resent += 1;
        }
        Ok(sent)
    }

    /// Send shard `k`'s end of stream again for a subscriber a lossy message went past
    /// ([`Shard::eos_repeat_due`]), without waiting; the next try is [`EOS_REPEAT_EVERY`] on,
    /// sent or not.
    fn repeat_eos(&mut self, k: usize, now_ns: u64) -> Result<(), ReplayError> {
        self.shards[k].eos_repeated_ns = now_ns;
        self.send_eos_again(k).map(|_| ())
    }

    /// Send shard `k`'s end of stream (its count as when it first went) without waiting: false
    /// when a pipe is full.
    fn send_eos_again(&mut self, k: usize) -> Result<bool, ReplayError> {
        self.encode_control(k, Kind::EndOfStream);
        let sh = &mut self.shards[k];
        match send_bytes(&mut sh.socket, &self.buf, zmq::DONTWAIT) {
            Ok(()) => Ok(true),
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => Ok(false),
            Err(e) => Err(sh.send_error(e)),
        }
    }

    /// Drain the subscription events, then send a heartbeat on every shard (skipped on a
    /// shard whose pipe is full).
    fn heartbeat_once(&mut self) -> Result<(), ReplayError> {
        self.drain_subscriptions()?;
        for k in 0..self.shards.len() {
            self.encode_control(k, Kind::Heartbeat);
            let sh = &mut self.shards[k];
            match send_bytes(&mut sh.socket, &self.buf, zmq::DONTWAIT) {
                Ok(()) | Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(sh.send_error(e)),
            }
        }
        Ok(())
    }

    fn stats(&self, start: Instant, interrupted: bool) -> ReplayStats {
        let sent_per_shard: Vec<u64> = self.shards.iter().map(|s| s.sent).collect();
        let dropped_at_hwm_per_shard: Vec<u64> = self.shards.iter().map(|s| s.dropped_at_hwm).collect();
        ReplayStats {
            sent_total: sent_per_shard.iter().sum(),
            sent_per_shard,
            dropped_at_hwm: dropped_at_hwm_per_shard.iter().sum(),
            dropped_at_hwm_per_shard,
            blocked_s_per_shard: self.shards.iter().map(|s| s.blocked_ns as f64 / 1e9).collect(),
            sent_with_no_subscriber: self.shards.iter().map(|s| s.sent_unheard).sum(),
            elapsed_s: start.elapsed().as_secs_f64(),
            // Set by the run, from its schedules.
            send_span_s: None,
            msgs_per_sec: 0.0,
            interrupted,
            eos_missed: Vec::new(),
            eos_unconfirmed: Vec::new(),
            eos_resent: self.shards.iter().map(|s| s.eos_resent).sum(),
            // Set by the run, from its sending threads.
            eos_wait_s: 0.0,
            cpu_ns: 0,
            market_span_ns: self.market_span_ns,
            skipped_by_rtype: self.skipped_by_rtype.clone(),
            ts_recv_backwards: self.ts_recv_backwards,
            symbol_mappings_dropped: self.symbol_mappings_dropped,
            refused: self.refused.clone(),
            subscribers_refused: (self.access_counters().map(|c| c.by_reason()).unwrap_or_default().into_iter())
                .map(|(reason, n)| (reason.to_string(), n))
                .collect(),
            subscribers_ledger_forgotten: self
                .access_counters()
                .map_or(0, |c| c.ledger_forgotten.load(Ordering::Relaxed)),
            // Set by the run, which knows its pacing.
            offered_msgs_per_sec: None,
            achieved_msgs_per_sec: None,
            dropped_on_purpose: self.dropped_on_purpose,
            restarts: self.restarts,
            paused_s: self.paused.as_secs_f64(),
        }
    }

    /// Replay `source` under `pacing` and `limits`, then send end of stream, on sending
    /// threads of their own: one [`PublisherAgent`] started by
    /// [`Runner::start`](crate::agent::Runner::start) (`replay`), or one per shard with
    /// `thread_per_shard` (`replayK`, each sending its shard's part of the generated feed: its
    /// topics, their share of `limits.max_msgs` and of a fixed rate). The calling thread
    /// waits: `progress` is called about every 5 ms with the messages scheduled so far, once
    /// more when the schedule is done (before the end of stream), and at the end.
    pub fn run(
        &mut self,
        source: &Source,
        pacing: Pacing,
        limits: Limits,
        stop: &StopFlag,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ReplayStats, ReplayError> {
        let threaded = self.thread_per_shard && self.shards.len() > 1;
        (self.dropped_on_purpose, self.restarts, self.paused) = (0, 0, Duration::ZERO);
        self.achieved_msgs_per_sec = None;
        self.market_span_ns = None;
        self.position.reset();
        self.skipped_by_rtype.clear();
        self.ts_recv_backwards = 0;
        self.symbol_mappings_dropped = 0;
        self.refused.clear();
        for sh in &mut self.shards {
            (sh.eos_at, sh.eos_resent, sh.passed_over) = (None, 0, false);
        }
        match source {
            _ if threaded && self.faults != FaultPlan::default() => {
                return Err(ReplayError::Config(
                    "snails on purpose (--pause-at, --drop-every, --restart-at) need one sending thread: leave out --thread-per-shard".into(),
                ))
            }
            Source::Capture { .. } | Source::Dbn { .. } if threaded => {
                return Err(ReplayError::Config(
                    "one thread per shard needs the generated feed (a file is read in order by one thread)".into(),
                ))
            }
            Source::Capture { restamp: false, .. } if self.faults.restart_at.is_some() => {
                return Err(ReplayError::Config(RESTART_NEEDS_FRESH_SEQUENCES.into()))
            }
            Source::Generator(_) if matches!(pacing, Pacing::Recorded { .. }) => {
                return Err(ReplayError::Config("recorded timing needs a capture or DBN file".into()))
            }
            _ if matches!(pacing, Pacing::Recorded { speed } if !(speed > 0.0 && speed.is_finite())) => {
                return Err(ReplayError::Config("the replay speed must be a positive number".into()))
            }
            Source::Prebuilt(_) if pacing != Pacing::FlatOut => {
                return Err(ReplayError::Config("the prebuilt reference publisher only runs flat out".into()))
            }
            _ => {}
        }
        let start = Instant::now();
        // The parts: (shards, part, limits, pacing) of each sending thread.
        let n = self.shards.len();
        let mut parts = Vec::new();
        if threaded {
            let gen = match source {
                Source::Generator(g) | Source::Prebuilt(g) => g,
                _ => unreachable!("refused above"),
            };
            let mut left = limits.max_msgs;
            for (k, shard) in std::mem::take(&mut self.shards).into_iter().enumerate() {
                let share = Generator::share(gen, k, n);
                let max_msgs = match left {
                    Some(m) if k + 1 == n => Some(m),
                    Some(m) => {
                        let mine = ((limits.max_msgs.unwrap_or(0) as f64 * share).round() as u64).min(m);
                        left = Some(m - mine);
                        Some(mine)
                    }
                    None => None,
                };
                // `--rate` is the total: each thread sends its shard's share of it.
                let pacing = match pacing {
                    Pacing::Rate { msgs_per_sec, burst } => {
                        Pacing::Rate { msgs_per_sec: ((msgs_per_sec as f64 * share).round() as u64).max(1), burst }
                    }
                    other => other,
                };
                parts.push((format!("replay{k}"), vec![shard], (k, n), Limits { max_msgs, ..limits }, pacing));
            }
        } else {
            parts.push(("replay".to_string(), std::mem::take(&mut self.shards), (0, 1), limits, pacing));
        }
        type Started = (AgentHandle<PublisherAgent>, Arc<AtomicU64>, Arc<AtomicU64>);
        let mut agents: Vec<Started> = Vec::with_capacity(parts.len());
        let mut failed = None;
        for (role, shards, part, limits, pacing) in parts {
            let one = self.part_publisher(shards, part);
            let counter = Arc::new(AtomicU64::new(0));
            let started = PublisherAgent::new(role, one, source, pacing, limits, stop.clone(), counter.clone())
                .and_then(|a| {
                    let done = a.schedule_done.clone();
                    // The runner's own stop flag: a stop request is the agent's to see, so
                    // that it still ends its stream.
                    crate::agent::Runner::start(crate::agent::RunSpec::unpinned(self.idle), StopFlag::new(), a)
                        .map(|h| (h, counter, done))
                        .map_err(|e| ReplayError::Config(e.to_string()))
                });
            match started {
                Ok(a) => agents.push(a),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_some() {
            // The others are told to stop (they end their streams) and joined below.
            stop.stop();
        }
        // Progress until every schedule is done, then once more with the final count and no
        // more: a caller timing its last call (a capacity trial) times the schedule, not the end
        // of stream after it.
        let mut said_done = false;
        let scheduled = |agents: &[Started]| -> u64 { agents.iter().map(|(_, c, _)| c.load(Ordering::Relaxed)).sum() };
        while !agents.iter().all(|(h, _, _)| h.is_finished()) {
            if !said_done {
                let done = agents.iter().all(|(_, _, d)| d.load(Ordering::Acquire) != 0);
                progress(scheduled(&agents));
                said_done = done;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (mut interrupted, mut cpu_ns, mut missed, mut unconfirmed) = (false, 0, Vec::new(), Vec::new());
        let mut eos_waited_ns = 0;
        // Each thread's share of the rate adds up to the whole: so do the rates they achieved.
        // The rate they sent at is over their one span, first send to last.
        let mut achieved = Some(0.0);
        let mut turns = Vec::with_capacity(agents.len());
        let mut total = 0;
        for (handle, _, _) in agents {
            let agent_cpu = handle.stats().cpu_ns;
            match handle.join() {
                Ok(a) => {
                    cpu_ns += agent_cpu;
                    interrupted |= a.interrupted;
                    missed.extend(a.eos_missed.iter().cloned());
                    unconfirmed.extend(a.eos_unconfirmed.iter().cloned());
                    eos_waited_ns = eos_waited_ns.max(a.eos_waited_ns);
                    total += a.scheduled();
                    let one = a.p;
                    self.shards.extend(one.shards);
                    self.dropped_on_purpose += one.dropped_on_purpose;
                    self.restarts += one.restarts;
                    self.paused += one.paused;
                    achieved = achieved.zip(one.achieved_msgs_per_sec).map(|(a, b)| a + b);
                    turns.extend(one.turns_mono_ns);
                    self.market_span_ns = self.market_span_ns.or(one.market_span_ns);
                    self.skipped_by_rtype.extend(one.skipped_by_rtype);
                    self.ts_recv_backwards += one.ts_recv_backwards;
                    self.symbol_mappings_dropped += one.symbol_mappings_dropped;
                    for (reason, k) in one.refused {
                        *self.refused.entry(reason).or_default() += k;
                    }
                }
                Err(e) => failed = failed.or(Some(ReplayError::Config(e.to_string()))),
            }
        }
        if !said_done {
            progress(total);
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let mut stats = self.stats(start, interrupted);
        stats.cpu_ns = cpu_ns;
        let span = send_span(&turns);
        stats.send_span_s = span.map(|(_, ns)| ns as f64 / 1e9);
        stats.msgs_per_sec = match span {
            Some((turns, ns)) => (turns - 1) as f64 * 1e9 / ns as f64,
            None => stats.sent_total as f64 / stats.elapsed_s.max(1e-9),
        };
        stats.offered_msgs_per_sec = offered_rate(pacing);
        stats.achieved_msgs_per_sec = achieved.filter(|_| !interrupted && offered_rate(pacing).is_some());
        stats.eos_missed = missed;
        stats.eos_unconfirmed = unconfirmed;
        stats.eos_wait_s = eos_waited_ns as f64 / 1e9;
        if !stats.eos_missed.is_empty() && !interrupted {
            return Err(ReplayError::EndOfStreamMissed(Box::new(stats)));
        }
        Ok(stats)
    }

    /// A publisher of `shards` (part `part` of the generated feed) for one sending thread,
    /// with this one's settings.
    fn part_publisher(&self, shards: Vec<Shard>, part: (usize, usize)) -> Publisher {
        Publisher {
            shards,
            sending: true,
            drained_at: Instant::now(),
            buf: Vec::with_capacity(1024),
            lossless: self.lossless,
            peer_timeout_set: self.peer_timeout_set,
            position: self.position.clone(),
            market_span_ns: None,
            skipped_by_rtype: BTreeMap::new(),
            ts_recv_backwards: 0,
            symbol_mappings_dropped: 0,
            refused: BTreeMap::new(),
            zap: None,
            faults: self.faults,
            dropped_on_purpose: 0,
            restarts: 0,
            paused: Duration::ZERO,
            achieved_msgs_per_sec: None,
            turns_mono_ns: None,
            say_refusals: self.say_refusals,
            thread_per_shard: false,
            part,
            idle: self.idle,
            eos_wait: self.eos_wait,
        }
    }
}

/// Shard k's publisher id is `base + k`: refused when the last shard's would pass `u32::MAX`
/// (it would wrap to 0, another publisher's id, in silence).
pub fn check_publisher_ids(base: u32, shards: usize) -> Result<(), String> {
    let last = u64::from(base) + shards.saturating_sub(1) as u64;
    if last > u64::from(u32::MAX) {
        return Err(format!(
            "publisher id {base} with {shards} shards needs ids {base}..={last}, past the 32-bit range \
             (0..={}): give an id of at most {}",
            u32::MAX,
            (u64::from(u32::MAX) + 1).saturating_sub(shards as u64)
        ));
    }
    Ok(())
}

/// The sending threads' turns and clock readings at their first and last
/// ([`Schedule::turns_mono_ns`](schedule::Schedule::turns_mono_ns)) as one: all their turns, and
/// the time from the earliest first to the latest last, ns; None before two turns a clock
/// reading apart.
fn send_span(threads: &[(u64, u64, u64)]) -> Option<(u64, u64)> {
    let turns: u64 = threads.iter().map(|t| t.0).sum();
    let first = threads.iter().map(|t| t.1).min()?;
    let last = threads.iter().map(|t| t.2).max()?;
    let span_ns = last.saturating_sub(first);
    (turns >= 2 && span_ns > 0).then_some((turns, span_ns))
}

/// The fixed rate `pacing` offers, msg/s (None flat out or at a recorded pace).
fn offered_rate(pacing: Pacing) -> Option<u64> {
    match pacing {
        Pacing::Rate { msgs_per_sec, .. } => Some(msgs_per_sec),
        _ => None,
    }
}

/// Where a damaged file's replay ends, by the damage's reason: a cut-off file ends there; after
/// a damaged record (length, flags, checksum) nothing can be trusted, though bytes follow.
fn stops_here(reason: &str) -> &'static str {
    if reason == "truncated_tail" {
        "the file ends here"
    } else {
        "replay of this file stops here: nothing after a damaged record can be trusted"
    }
}

/// A recorded gap of `ns` at `speed` times the recorded pace.
fn scale_ns(ns: u64, speed: f64) -> u64 {
    if speed == 1.0 {
        ns
    } else {
        (ns as f64 / speed) as u64
    }
}

/// Make a generated topic's frame (from [`Publisher::generated_templates`]) the message
/// numbered `counter`: its sequences, its send time, and the counter in the payload's first
/// bytes ([`Generator::payload`]'s rule).
#[inline]
fn patch_generated(
    frame: &mut [u8],
    topic_len: usize,
    stream_seq: u64,
    topic_seq: u64,
    send_time_ns: u64,
    counter: u64,
) {
    wire::patch_sequences(frame, topic_len, stream_seq, topic_seq, send_time_ns);
    let at = topic_len + 1 + wire::HEADER_LEN;
    match frame.get_mut(at..at + 8) {
        // The usual case, a fixed 8-byte store (no call to memcpy).
        Some(p) => p.copy_from_slice(&counter.to_le_bytes()),
        None => {
            if let Some(p) = frame.get_mut(at..) {
                let n = p.len();
                p.copy_from_slice(&counter.to_le_bytes()[..n]);
            }
        }
    }
}

/// The header of the next data frame of shard `sh`'s stream.
#[inline]
fn next_data_header(sh: &mut Shard, topic_seq: u64, send_time_ns: u64) -> Header {
    sh.stream_seq += 1;
    Header {
        kind: Kind::Data,
        flags: 0,
        publisher_id: sh.publisher_id,
        session_id: sh.session_id,
        stream_seq: sh.stream_seq,
        topic_seq,
        send_time_ns,
    }
}

/// Encode the next data frame of shard `sh`'s stream into `buf`.
fn encode_data(sh: &mut Shard, buf: &mut Vec<u8>, topic: &[u8], topic_seq: u64, send_time_ns: u64, payload: &[u8]) {
    let h = next_data_header(sh, topic_seq, send_time_ns);
    buf.resize(wire::frame_len(topic, payload.len()), 0);
    wire::encode_into(buf, topic, &h, payload);
}

/// How long a shard may take to accept its end of stream.
pub const EOS_TIMEOUT: Duration = Duration::from_secs(10);

/// After a stop request (Ctrl-C while sending), how long a shard may take to accept its end of
/// stream, and how long (within `--eos-wait`) its subscribers then have to confirm it.
pub const EOS_AFTER_STOP: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscription takes the control topic when it is a prefix of it and its NUL.
    #[test]
    fn a_subscription_takes_the_control_topic_when_it_is_a_prefix_of_it() {
        for (prefix, takes) in [
            (&b""[..], true),
            (&b"_md"[..], true),
            (&b"_mdsub"[..], true),
            (&b"_mdsub\0"[..], true),
            (&b"_mdsub\0x"[..], false),
            (&b"_mdsux"[..], false),
            (&b"ES"[..], false),
        ] {
            assert_eq!(takes_control(prefix), takes, "{prefix:?}");
        }
    }

    /// A shard of publisher 7, session 9, on an unbound XPUB of `ctx` (its end-of-stream
    /// bookkeeping is all that is asked of it).
    fn shard(ctx: &zmq::Context) -> Shard {
        Shard::new(ctx.socket(zmq::XPUB).expect("xpub"), "tcp://h:1".into(), 7, 9, None)
    }

    /// The subscriptions an engine's shard named `id` makes on one connection (bare, then named).
    fn engine_awaits(sh: &mut Shard, subscribe: bool, id: u64) {
        sh.eos_event(subscribe, wire::AWAITS_EOS);
        sh.eos_event(subscribe, &wire::awaits_eos_as(id));
    }

    /// Its confirmation of session 9 (named, then bare).
    fn engine_confirms(sh: &mut Shard, id: u64) {
        sh.eos_event(true, &wire::took_eos_as(7, 9, id));
        sh.eos_event(true, &wire::took_eos(7, 9));
    }

    #[test]
    fn a_named_subscriber_on_two_connections_is_waited_for_once_and_settled_by_its_confirmation() {
        let ctx = zmq::Context::new();
        let mut sh = shard(&ctx);
        // Its first connection died without a close (still open here), it reconnected.
        engine_awaits(&mut sh, true, 41);
        engine_awaits(&mut sh, true, 41);
        sh.eos_went();
        assert!(sh.eos_awaited());
        assert_eq!(sh.eos_waiting(), 1, "one subscriber, on two connections");
        // Another session's confirmation, and a withdrawal, settle nothing.
        sh.eos_event(true, &wire::took_eos_as(7, 8, 41));
        sh.eos_event(false, &wire::took_eos_as(7, 9, 41));
        assert_eq!(sh.eos_waiting(), 1);
        engine_confirms(&mut sh, 41);
        assert_eq!(sh.eos_waiting(), 0, "its live connection's confirmation stands for both");
        // The dead connection going later changes nothing.
        engine_awaits(&mut sh, false, 41);
        assert_eq!(sh.eos_waiting(), 0);
        // A bare confirmation of its reading's end, named, settles it too (next run).
        sh.eos_went();
        assert_eq!(sh.eos_waiting(), 1);
        sh.eos_event(true, &wire::stopped_awaiting_as(41));
        sh.eos_event(true, wire::TOOK_EOS);
        assert_eq!(sh.eos_waiting(), 0);
    }

    /// Which subscriber left, or did not confirm, is said by where it subscribed from (its
    /// latest connection's) and its id; one that never said where is said by its id.
    #[test]
    fn a_named_subscriber_is_said_by_its_address_when_it_leaves_and_when_it_does_not_confirm() {
        let ctx = zmq::Context::new();
        let mut sh = shard(&ctx);
        engine_awaits(&mut sh, true, 0x41);
        sh.heard_from(0x41, "10.0.0.6");
        engine_awaits(&mut sh, true, 0x41);
        sh.heard_from(0x41, "10.0.0.7");
        engine_awaits(&mut sh, true, 0x5);
        sh.eos_went();
        engine_confirms(&mut sh, 0x5);
        assert_eq!(sh.unconfirmed_named(), ["10.0.0.7 (subscriber 0000000000000041)"]);
        // Its first connection ending leaves it one: it has not left.
        engine_awaits(&mut sh, false, 0x41);
        assert!(sh.left_named.is_empty());
        engine_awaits(&mut sh, false, 0x41);
        assert_eq!(sh.left_named, [0x41]);
        assert_eq!(sh.who(0x5), "subscriber 0000000000000005");
    }

    #[test]
    fn addresses_of_subscribers_under_ever_new_ids_are_bounded_and_the_held_ones_kept() {
        // Before: every id's address was kept for the replay's life, and looked up one by one.
        let ctx = zmq::Context::new();
        let mut sh = shard(&ctx);
        engine_awaits(&mut sh, true, 7);
        sh.heard_from(7, "10.0.0.7");
        for id in 100..100 + 3 * NAMED_FROM_MAX as u64 {
            engine_awaits(&mut sh, true, id);
            sh.heard_from(id, "10.0.0.66");
            engine_awaits(&mut sh, false, id);
            sh.left_named.clear(); // said by the drain
        }
        assert!(sh.named_from.len() <= NAMED_FROM_MAX, "{}", sh.named_from.len());
        assert_eq!(sh.who(7), "10.0.0.7 (subscriber 0000000000000007)", "the one still held keeps its address");
    }

    #[test]
    fn older_subscribers_beside_named_ones_are_counted_and_settled_by_the_bare_forms_as_before() {
        let ctx = zmq::Context::new();
        let mut sh = shard(&ctx);
        // Two older engines (bare forms only) and a named one.
        sh.eos_event(true, wire::AWAITS_EOS);
        sh.eos_event(true, wire::AWAITS_EOS);
        engine_awaits(&mut sh, true, 5);
        sh.eos_went();
        assert_eq!(sh.eos_waiting(), 3);
        // The named one's bare confirmation is its own, not an older engine's.
        engine_confirms(&mut sh, 5);
        assert_eq!(sh.eos_waiting(), 2);
        // A named confirmation again (a resend it counted again) settles no one else.
        engine_confirms(&mut sh, 5);
        assert_eq!(sh.eos_waiting(), 2);
        sh.eos_event(true, &wire::took_eos(7, 9));
        assert_eq!(sh.eos_waiting(), 1);
        // An older engine's connection that ends confirms nothing (it may have swallowed it).
        sh.eos_event(false, wire::AWAITS_EOS);
        assert_eq!(sh.eos_waiting(), 1);
        sh.eos_event(true, wire::TOOK_EOS);
        assert_eq!(sh.eos_waiting(), 0);
        // Nobody awaiting: nothing waited for.
        let mut none = shard(&ctx);
        none.eos_went();
        assert!(!none.eos_awaited() && none.eos_waiting() == 0);
    }

    #[test]
    fn an_unconfirmed_shard_lists_a_pending_resend_only_when_there_is_one() {
        let entry = |resend_pending| EosUnconfirmed {
            shard: 1,
            endpoint: "tcp://h:1".into(),
            waiting: 2,
            subscribers: Vec::new(),
            resend_pending,
        };
        let json = |e: EosUnconfirmed| serde_json::to_value(e).expect("json");
        assert_eq!(json(entry(false)), serde_json::json!({"shard": 1, "endpoint": "tcp://h:1", "waiting": 2}));
        assert_eq!(
            json(entry(true)),
            serde_json::json!({"shard": 1, "endpoint": "tcp://h:1", "waiting": 2, "resend_pending": true})
        );
    }

    /// The sending threads' spans make one, from the earliest first send to the latest last,
    /// over all their turns: the rate over it is what the summary line divides.
    #[test]
    fn the_threads_send_over_one_span() {
        assert_eq!(send_span(&[]), None);
        assert_eq!(send_span(&[(1, 50, 50)]), None, "one turn spans nothing");
        assert_eq!(send_span(&[(3, 50, 50)]), None, "three turns on one clock reading (flat out)");
        assert_eq!(send_span(&[(3, 100, 300)]), Some((3, 200)));
        // Two threads, the second starting later and ending later: 1 + 4 turns over 100..900.
        assert_eq!(send_span(&[(1, 100, 100), (4, 200, 900)]), Some((5, 800)));
        assert_eq!(send_span(&[(10, 100, 500), (10, 120, 480)]), Some((20, 400)));
    }

    /// A template patched per message is the frame encoding that message from scratch would
    /// give, byte for byte, for payloads shorter and longer than the 8-byte counter.
    #[test]
    fn a_patched_template_is_the_frame_encoded_from_scratch() {
        for payload_bytes in [0, 3, 8, 100] {
            let mut gen = Generator::new(&GeneratorConfig { payload_bytes, ..Default::default() });
            let h = |stream_seq, topic_seq, send_time_ns| Header {
                kind: Kind::Data,
                flags: 0,
                publisher_id: 7,
                session_id: 0xfeed,
                stream_seq,
                topic_seq,
                send_time_ns,
            };
            let mut template = wire::encode(b"ESH6", &h(0, 0, 0), gen.payload(0));
            for (i, (s, t, ns)) in
                [(1u64, 1u64, 5u64), (2, 9, 1 << 40), (u64::MAX, 3, u64::MAX)].into_iter().enumerate()
            {
                let counter = 0x0102_0304_0506_0708u64.wrapping_mul(i as u64 + 1);
                patch_generated(&mut template, 4, s, t, ns, counter);
                let fresh = wire::encode(b"ESH6", &h(s, t, ns), gen.payload(counter));
                assert_eq!(template, fresh, "payload {payload_bytes} B, message {i}");
            }
        }
    }
}
