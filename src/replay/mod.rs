//! `mdsub replay`: publishes a feed (synthetic generator, capture file or
//! Databento DBN files merged by receive time) on
//! one PUB endpoint per shard, paced at a fixed rate or flat out, stamping
//! each frame's *intended* send time and sequences, then ends each shard's
//! stream with an end-of-stream frame.
//!
//! The publisher is an XPUB (so it can see subscriptions and wait for them: a
//! real handshake, not a sleep). SNDHWM is always set explicitly. In lossless
//! mode ZMQ_XPUB_NODROP makes a full pipe push back on the publisher instead
//! of dropping (PERF-ANCHORS: a default-HWM publisher flat out delivers only
//! ~0.74 M msg/s of 100 B and drops the rest, so benchmarks would measure it).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::StopFlag;
use crate::feed::dbn_source::{DbnMerge, DbnSourceError};
use crate::feed::{shard_of, Generator, GeneratorConfig, SplitMix64};
use crate::security::{SecureError, ServerAccess, ZapCounters, ZapService};
use crate::wire::capture::{CaptureError, CaptureReader};
use crate::wire::{self, Header, Kind, CONTROL_TOPIC};
use crate::zmqx::frame::send_bytes;

pub mod faults;
pub mod schedule;
use faults::{FaultPlan, Faults};
use schedule::{Schedule, Turn};

/// Errors of a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("zmq error while {context}: {source}")]
    Zmq {
        context: String,
        #[source]
        source: zmq::Error,
    },
    #[error("no subscriber reached {endpoint} within {waited_ms} ms (expected {expected}, saw {seen})")]
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
}

impl ReplayError {
    /// True when `e`, under any context, is a wait that Ctrl-C (or SIGTERM) ended
    /// ([`ReplayError::Interrupted`]).
    pub fn is_interrupted(e: &anyhow::Error) -> bool {
        matches!(e.downcast_ref::<ReplayError>(), Some(ReplayError::Interrupted))
    }
}

fn zerr(context: impl Into<String>) -> impl FnOnce(zmq::Error) -> ReplayError {
    let context = context.into();
    move |source| ReplayError::Zmq { context, source }
}

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
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            endpoints: vec!["tcp://127.0.0.1:*".into()],
            sndhwm_msgs: 100_000,
            lossless: true,
            publisher_id_base: 0,
            access: ServerAccess::default(),
            thread_per_shard: false,
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

/// What one source's run is paced, bounded, stopped and reported by (the
/// parameters of [`Publisher::run`] the generator, capture and DBN loops share).
struct Run<'a> {
    pacing: Pacing,
    limits: Limits,
    stop: &'a StopFlag,
    progress: &'a mut dyn FnMut(u64),
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
    pub elapsed_s: f64,
    /// Of the messages sent, those a lossy publisher (`--lossy`) dropped at
    /// its SNDHWM, per shard and in all: they never left this process (the
    /// engine counts them as lost, by sequence and from the end-of-stream
    /// count). Not [`dropped_on_purpose`](Self::dropped_on_purpose).
    pub dropped_at_hwm_per_shard: Vec<u64>,
    pub dropped_at_hwm: u64,
    /// Of the messages sent, those sent while their shard had no subscriber: they reached no
    /// one (a subscriber left mid-run, or none was awaited). Subscribers are seen by their
    /// subscription to the control topic (every mdsub subscriber, and any that takes
    /// everything), checked every 1 Ki messages and at least every 10 ms while a paced publisher waits.
    pub sent_with_no_subscriber: u64,
    /// True when stopped by a stop request before its source or limits ended.
    pub interrupted: bool,
    /// CPU time of the sending thread(s) (not libzmq's I/O threads), ns.
    pub cpu_ns: u64,
    /// DBN sources: receive time of the first and last record sent (ns since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub market_span_ns: Option<(u64, u64)>,
    /// DBN sources: records not replayed (control and unknown types), by record type.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_by_rtype: BTreeMap<String, u64>,
    /// Damaged input files, by reason (`truncated_tail`, `bad_record`): a file is replayed up
    /// to its first damage and ends there (the damage was said on stderr when met).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub refused: BTreeMap<String, u64>,
    /// Subscribers' connections the data endpoints refused, by reason (`address_not_allowed`,
    /// `key_not_allowed`, `handshake_failed_*`: docs/REFUSALS.md), each reason said on stderr
    /// when first met; with or without an access policy (a peer that is not ZeroMQ).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subscribers_refused: BTreeMap<String, u64>,
    /// A fixed rate (`--rate`): the rate offered and what the publisher achieved, msg/s (its
    /// turns after the first per second from the first to the last; the schedule's turns,
    /// messages dropped on purpose included). None flat out or at a recorded pace (and the
    /// achieved rate of a run cut short by a stop request, or of fewer than two messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_msgs_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub achieved_msgs_per_sec: Option<f64>,
    /// Snails on purpose ([`FaultPlan`]): messages left out (`--drop-every`:
    /// never sent, their sequences used up, so not in `sent_total`), new
    /// sessions started, and time spent stalled.
    pub dropped_on_purpose: u64,
    pub restarts: u64,
    pub paused_s: f64,
}

/// The highest fixed rate a pacer takes, msg/s: one message a nanosecond, the resolution of its
/// schedule (no ZeroMQ socket sends within two orders of magnitude of it; the command line refuses
/// more, `cli::args::parse_rate`, and so does a trial server).
pub const MAX_RATE_MSGS_PER_SEC: u64 = 1_000_000_000;

/// A fixed rate counts as achieved from this share of it up (`mdsub capacity`'s rule too, its
/// `Sla::min_achieved_ratio`): a publisher that kept its schedule achieves the rate or more.
pub const MIN_ACHIEVED_RATIO: f64 = 0.95;

impl ReplayStats {
    /// `(offered, achieved)` msg/s when a fixed rate was offered and the publisher achieved
    /// less than [`MIN_ACHIEVED_RATIO`] of it (it could not send faster, or a lossless
    /// subscriber held it back).
    pub fn rate_not_achieved(&self) -> Option<(u64, f64)> {
        match (self.offered_msgs_per_sec, self.achieved_msgs_per_sec) {
            (Some(offered), Some(achieved)) if achieved < MIN_ACHIEVED_RATIO * offered as f64 => {
                Some((offered, achieved))
            }
            _ => None,
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
}

struct Shard {
    socket: zmq::Socket,
    endpoint: String,
    publisher_id: u32,
    session_id: u64,
    stream_seq: u64,
    /// Messages sent (any kind).
    sent: u64,
    /// mdsub data frames sent (what the end of stream reports).
    data_sent: u64,
    /// Data messages dropped at the SNDHWM (lossy).
    dropped_at_hwm: u64,
    /// Subscribers as last drained (those whose subscriptions take the control topic).
    subscribers: usize,
    /// Data messages sent while `subscribers` was 0: they reached no one.
    sent_unheard: u64,
}

impl Shard {
    /// One message sent (or dropped by a lossy publisher: its sequences are
    /// spent), `data` of them data messages (the end-of-stream count).
    #[inline]
    fn count_sent(&mut self, data: u64) {
        self.sent += 1;
        self.data_sent += data;
        if self.subscribers == 0 {
            self.sent_unheard += data;
        }
    }

    fn send_error(&self, source: zmq::Error) -> ReplayError {
        ReplayError::Zmq { context: format!("sending on {}", self.endpoint), source }
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

/// What became of one data message.
enum Outcome {
    Sent,
    /// Lossy and the pipe was full: dropped (counted).
    Dropped,
    /// A stop request came while waiting for room.
    Stopped,
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
    /// Receive time of the record being sent (DBN sources), for progress displays.
    market_ns: Arc<AtomicU64>,
    /// What the last DBN run reports: its market time span and skipped records.
    market_span_ns: Option<(u64, u64)>,
    skipped_by_rtype: BTreeMap<String, u64>,
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
    /// What the last run's pacer achieved at a fixed rate ([`Pacer::achieved_msgs_per_sec`]).
    achieved_msgs_per_sec: Option<f64>,
    /// Say what the input refuses (record types not replayed, damage) as it is met; off, it is
    /// only counted (a benchmark's later runs of the same file).
    say_refusals: bool,
    /// One sending thread per shard.
    thread_per_shard: bool,
    /// The part of the generated feed this publisher sends: shard `.0` of `.1`
    /// (`(0, 1)`: all of it; a per-shard thread sends one part).
    part: (usize, usize),
}

impl Publisher {
    /// Make and bind one XPUB per endpoint.
    pub fn bind(ctx: &zmq::Context, cfg: &PublisherConfig) -> Result<Self, ReplayError> {
        if cfg.endpoints.is_empty() {
            return Err(ReplayError::Config("at least one endpoint is needed".into()));
        }
        let mut seed = SplitMix64::new(crate::clock::realtime_ns() ^ (std::process::id() as u64) << 32);
        let zap = Some(ZapService::start(ctx, "replay", &cfg.access).map_err(|e| ReplayError::Config(e.to_string()))?);
        let mut shards = Vec::with_capacity(cfg.endpoints.len());
        for (i, ep) in cfg.endpoints.iter().enumerate() {
            crate::zmqx::check_endpoint(ep).map_err(ReplayError::Config)?;
            let mut s = ctx.socket(zmq::XPUB).map_err(zerr("creating the XPUB"))?;
            s.set_sndhwm(cfg.sndhwm_msgs).map_err(zerr("setting SNDHWM"))?;
            s.set_xpub_verbose(true).map_err(zerr("setting XPUB_VERBOSE"))?;
            // Every unsubscription too, not only a topic's last: the subscriber count (and the
            // "a subscriber left" line) stays true with several subscribers on a shard.
            crate::zmqx::set_xpub_verboser(&mut s, true).map_err(zerr("setting XPUB_VERBOSER"))?;
            // Lossy too: a lossy XPUB would drop at the HWM in silence and
            // take the pipe out of its active set until the reader drains it,
            // so a control frame sent then (the end of stream) is dropped
            // although the send says it went. With NODROP a full pipe says
            // EAGAIN: lossless waits, lossy drops that message and counts it.
            crate::zmqx::set_xpub_nodrop(&mut s, true).map_err(zerr("setting XPUB_NODROP"))?;
            s.set_sndtimeo(100).map_err(zerr("setting SNDTIMEO"))?;
            s.set_linger(2000).map_err(zerr("setting LINGER"))?;
            cfg.access.secure(ctx, &mut s, zap.as_ref()).map_err(|e| match e {
                SecureError::Options(source) => zerr("setting the access options")(source),
                SecureError::Watch(e) => ReplayError::Config(e.to_string()),
            })?;
            let endpoint = crate::zmqx::bind_resolved(&s, ep)
                .map_err(|e| zerr(format!("binding {ep}{}", crate::zmqx::bind_hint(e)))(e))?;
            shards.push(Shard {
                socket: s,
                endpoint,
                publisher_id: cfg.publisher_id_base + i as u32,
                session_id: seed.next_u64(),
                stream_seq: 0,
                sent: 0,
                data_sent: 0,
                dropped_at_hwm: 0,
                sent_unheard: 0,
                subscribers: 0,
            });
        }
        Ok(Publisher {
            shards,
            sending: false,
            drained_at: Instant::now(),
            buf: Vec::with_capacity(1024),
            lossless: cfg.lossless,
            market_ns: Arc::new(AtomicU64::new(0)),
            market_span_ns: None,
            skipped_by_rtype: BTreeMap::new(),
            refused: BTreeMap::new(),
            zap,
            faults: FaultPlan::default(),
            dropped_on_purpose: 0,
            restarts: 0,
            paused: Duration::ZERO,
            achieved_msgs_per_sec: None,
            say_refusals: true,
            thread_per_shard: cfg.thread_per_shard,
            part: (0, 1),
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

    /// Put snails on purpose into the next runs: a pause, dropped messages,
    /// a restart mid-stream ([`FaultPlan`]).
    pub fn set_faults(&mut self, plan: FaultPlan) -> Result<(), ReplayError> {
        plan.check().map_err(ReplayError::Config)?;
        self.faults = plan;
        Ok(())
    }

    /// Apply what `due` says before a message: stall (the schedule runs on),
    /// then start new sessions. False if a stop was requested while stalled.
    fn apply_due(&mut self, due: faults::Due, pacer: &mut Pacer) -> bool {
        if let Some(d) = due.pause {
            let t = Instant::now();
            let stalled = pacer.stall(d);
            self.paused += t.elapsed();
            if !stalled {
                return false;
            }
        }
        if due.restart {
            self.restarts += 1;
            let mut seed = SplitMix64::new(crate::clock::realtime_ns() ^ self.restarts.rotate_left(32));
            for sh in &mut self.shards {
                let old = sh.session_id;
                while sh.session_id == old {
                    sh.session_id = seed.next_u64();
                }
                sh.stream_seq = 0;
                sh.data_sent = 0;
            }
        }
        true
    }

    /// The replayed market time (receive time of the DBN record being sent,
    /// ns since the epoch; 0 before the first or for other sources).
    pub fn market_clock(&self) -> Arc<AtomicU64> {
        self.market_ns.clone()
    }

    /// The bound endpoints, one per shard, ports resolved.
    pub fn endpoints(&self) -> Vec<String> {
        self.shards.iter().map(|s| s.endpoint.clone()).collect()
    }

    /// Read pending subscription events; count subscriptions that receive the
    /// control topic (each mdsub subscriber makes exactly one such).
    /// While a run is under way (`self.sending`), a subscriber that leaves or joins is said
    /// on stderr: what is sent while a shard has none reaches no one.
    fn drain_subscriptions(&mut self) -> Result<(), ReplayError> {
        self.drained_at = Instant::now();
        let say = self.sending;
        // A shard's own thread (--thread-per-shard) holds one shard: its number is its part's.
        let first = self.part.0;
        for (k, sh) in self.shards.iter_mut().enumerate() {
            let k = first + k;
            while let Ok(ev) = sh.socket.recv_bytes(zmq::DONTWAIT) {
                if let Some((&kind, topic)) = ev.split_first() {
                    let ctl = [CONTROL_TOPIC, b"\0"].concat();
                    if ctl.starts_with(topic) {
                        if kind == 1 {
                            sh.subscribers += 1;
                            if say {
                                crate::diag!("replay: shard{k}: a subscriber joined ({} now)", sh.subscribers);
                            }
                        } else if kind == 0 {
                            sh.subscribers = sh.subscribers.saturating_sub(1);
                            if say {
                                let none = if sh.subscribers == 0 { ": what it sends now reaches no one" } else { "" };
                                crate::diag!("replay: shard{k}: a subscriber left ({} remain){none}", sh.subscribers);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
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
        loop {
            self.drain_subscriptions()?;
            if let Some(sh) = self.shards.iter().find(|s| s.subscribers < per_shard) {
                if stop.is_stopped() {
                    return Err(ReplayError::Interrupted);
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

    /// Send `self.buf` (or `frame`) on shard `k`, retrying while a lossless
    /// pipe is full. Returns false if `stop` was set, or `deadline` passed,
    /// while waiting.
    fn send_on(
        &mut self,
        k: usize,
        frame: Option<&[u8]>,
        more: bool,
        stop: &StopFlag,
        deadline: Option<Instant>,
    ) -> Result<bool, ReplayError> {
        let data: &[u8] = frame.unwrap_or(&self.buf);
        send_retrying(&mut self.shards[k], data, more, stop, deadline)
    }

    /// Send a data message's first (or only) frame: lossless waits for room;
    /// lossy tries once without waiting and, if the pipe is full, drops the
    /// message and counts it.
    fn send_data(
        &mut self,
        k: usize,
        frame: Option<&[u8]>,
        more: bool,
        stop: &StopFlag,
    ) -> Result<Outcome, ReplayError> {
        if self.lossless {
            return Ok(if self.send_on(k, frame, more, stop, None)? { Outcome::Sent } else { Outcome::Stopped });
        }
        let data: &[u8] = frame.unwrap_or(&self.buf);
        try_once(&mut self.shards[k], data, more)
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

    /// Send a heartbeat on every shard (skipped on a shard whose pipe is full).
    /// The pacer is about to nap: heartbeat when it is time (which drains the subscription
    /// events too), else drain them if [`DRAIN_EVERY`] has passed, so a subscriber that left is
    /// seen, and what is sent after it is counted, within about that long at any pace.
    fn on_wait(&mut self, heartbeat_due: bool, stop: &StopFlag) -> Result<(), ReplayError> {
        if heartbeat_due {
            self.heartbeat(stop)
        } else if self.drained_at.elapsed() >= DRAIN_EVERY {
            self.drain_subscriptions()
        } else {
            Ok(())
        }
    }

    pub fn heartbeat(&mut self, stop: &StopFlag) -> Result<(), ReplayError> {
        self.drain_subscriptions()?;
        for k in 0..self.shards.len() {
            self.encode_control(k, Kind::Heartbeat);
            self.send_on(k, None, false, stop, Some(Instant::now()))?;
        }
        Ok(())
    }

    /// Send end of stream on every shard: payload = mdsub data frames sent on
    /// it (u64 LE). Sent lossless even by a lossy publisher, waiting at most
    /// `EOS_TIMEOUT` per shard (1 s after a stop request); returns how many
    /// shards could not take it.
    pub fn end_of_stream(&mut self, stop: &StopFlag) -> Result<usize, ReplayError> {
        let wait = if stop.is_stopped() { Duration::from_secs(1) } else { EOS_TIMEOUT };
        let never = StopFlag::new();
        let mut missed = 0;
        for k in 0..self.shards.len() {
            self.encode_control(k, Kind::EndOfStream);
            if !self.send_on(k, None, false, &never, Some(Instant::now() + wait))? {
                missed += 1;
            }
        }
        Ok(missed)
    }

    fn stats(&self, start: Instant, interrupted: bool) -> ReplayStats {
        let sent_per_shard: Vec<u64> = self.shards.iter().map(|s| s.sent).collect();
        let dropped_at_hwm_per_shard: Vec<u64> = self.shards.iter().map(|s| s.dropped_at_hwm).collect();
        ReplayStats {
            sent_total: sent_per_shard.iter().sum(),
            sent_per_shard,
            dropped_at_hwm: dropped_at_hwm_per_shard.iter().sum(),
            dropped_at_hwm_per_shard,
            sent_with_no_subscriber: self.shards.iter().map(|s| s.sent_unheard).sum(),
            elapsed_s: start.elapsed().as_secs_f64(),
            interrupted,
            cpu_ns: 0,
            market_span_ns: self.market_span_ns,
            skipped_by_rtype: self.skipped_by_rtype.clone(),
            refused: self.refused.clone(),
            subscribers_refused: (self.access_counters().map(|c| c.by_reason()).unwrap_or_default().into_iter())
                .map(|(reason, n)| (reason.to_string(), n))
                .collect(),
            // Set by the run, which knows its pacing.
            offered_msgs_per_sec: None,
            achieved_msgs_per_sec: None,
            dropped_on_purpose: self.dropped_on_purpose,
            restarts: self.restarts,
            paused_s: self.paused.as_secs_f64(),
        }
    }

    /// Replay `source` under `pacing` and `limits`, then send end of stream.
    /// `progress` is called every 1 Ki messages with the count so far.
    pub fn run(
        &mut self,
        source: &Source,
        pacing: Pacing,
        limits: Limits,
        stop: &StopFlag,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ReplayStats, ReplayError> {
        if self.thread_per_shard && self.shards.len() > 1 {
            return self.run_threaded(source, Run { pacing, limits, stop, progress });
        }
        let start = Instant::now();
        (self.dropped_on_purpose, self.restarts, self.paused) = (0, 0, Duration::ZERO);
        self.achieved_msgs_per_sec = None;
        if self.faults.restart_at.is_some() && matches!(source, Source::Capture { restamp: false, .. }) {
            return Err(ReplayError::Config(
                "a restart mid-stream needs fresh sequences: add --restamp to replay a capture".into(),
            ));
        }
        let cpu0 = crate::clock::thread_cpu_ns();
        self.sending = true;
        let result = match source {
            Source::Generator(_) if matches!(pacing, Pacing::Recorded { .. }) => {
                return Err(ReplayError::Config("recorded timing needs a capture or DBN file".into()))
            }
            _ if matches!(pacing, Pacing::Recorded { speed } if !(speed > 0.0 && speed.is_finite())) => {
                return Err(ReplayError::Config("the replay speed must be a positive number".into()))
            }
            Source::Generator(g) => self.run_generator(g, Run { pacing, limits, stop, progress }),
            Source::Capture { path, restamp } => {
                self.run_capture(path, *restamp, Run { pacing, limits, stop, progress })
            }
            Source::Dbn { paths } => self.run_dbn(paths, Run { pacing, limits, stop, progress }),
            Source::Prebuilt(_) if pacing != Pacing::FlatOut => {
                return Err(ReplayError::Config("the prebuilt reference publisher only runs flat out".into()))
            }
            Source::Prebuilt(g) => self.run_prebuilt(g, Run { pacing, limits, stop, progress }),
        };
        // A subscriber that left during a flat-out run (no idle turn drained the
        // subscriptions) is said now.
        self.drain_subscriptions()?;
        self.sending = false;
        // End the stream in every case, so subscribers finish: after a damaged
        // file everything before the damage was sent (the damage is in `refused`).
        let missed = self.end_of_stream(stop)?;
        let interrupted = result?;
        if missed > 0 && !interrupted {
            return Err(ReplayError::Config(format!(
                "{missed} shard(s) could not take the end of stream within {} s (a subscriber stopped reading)",
                EOS_TIMEOUT.as_secs()
            )));
        }
        let mut stats = self.stats(start, interrupted);
        stats.cpu_ns = crate::clock::thread_cpu_ns().saturating_sub(cpu0);
        stats.offered_msgs_per_sec = offered_rate(pacing);
        stats.achieved_msgs_per_sec = self.achieved_msgs_per_sec.filter(|_| !interrupted);
        Ok(stats)
    }

    /// [`Publisher::run`] with one thread per shard (`replayK`, started by the
    /// runner), each sending its shard's part of the generated feed (its
    /// topics, their share of `limits.max_msgs`) and its end of stream.
    fn run_threaded(&mut self, source: &Source, run: Run<'_>) -> Result<ReplayStats, ReplayError> {
        let Run { pacing, limits, stop, progress } = run;
        if self.faults != FaultPlan::default() {
            return Err(ReplayError::Config(
                "snails on purpose (--pause-at, --drop-every, --restart-at) need one sending thread: leave out --thread-per-shard".into(),
            ));
        }
        let gen = match source {
            Source::Generator(g) | Source::Prebuilt(g) => g,
            _ => {
                return Err(ReplayError::Config(
                    "one thread per shard needs the generated feed (a file is read in order by one thread)".into(),
                ))
            }
        };
        let start = Instant::now();
        let n = self.shards.len();
        let mut left = limits.max_msgs;
        let mut tasks = Vec::with_capacity(n);
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
            let mut one = Publisher {
                shards: vec![shard],
                sending: false,
                drained_at: Instant::now(),
                buf: Vec::with_capacity(1024),
                lossless: self.lossless,
                market_ns: Arc::new(AtomicU64::new(0)),
                market_span_ns: None,
                skipped_by_rtype: BTreeMap::new(),
                refused: BTreeMap::new(),
                zap: None,
                faults: FaultPlan::default(),
                dropped_on_purpose: 0,
                restarts: 0,
                paused: Duration::ZERO,
                achieved_msgs_per_sec: None,
                say_refusals: self.say_refusals,
                thread_per_shard: false,
                part: (k, n),
            };
            let sent = Arc::new(AtomicU64::new(0));
            let (source, stop, counter) = (source.clone(), stop.clone(), sent.clone());
            let lim = Limits { max_msgs, duration: limits.duration };
            let task = crate::agent::Runner::task(&format!("replay{k}"), None, move || {
                let r = one.run(&source, pacing, lim, &stop, &mut |i| counter.store(i, Ordering::Relaxed));
                (one, r)
            })
            .map_err(|e| ReplayError::Config(e.to_string()))?;
            tasks.push((task, sent));
        }
        while !tasks.iter().all(|(t, _)| t.is_finished()) {
            progress(tasks.iter().map(|(_, c)| c.load(Ordering::Relaxed)).sum());
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut first_err = None;
        let (mut interrupted, mut cpu_ns) = (false, 0);
        // Each thread's share of the rate adds up to the whole: so do the rates they achieved.
        let mut achieved = Some(0.0);
        for (task, _) in tasks {
            match task.join() {
                Ok((one, r)) => {
                    self.shards.extend(one.shards);
                    match r {
                        Ok(st) => {
                            interrupted |= st.interrupted;
                            cpu_ns += st.cpu_ns;
                            achieved = achieved.zip(st.achieved_msgs_per_sec).map(|(a, b)| a + b);
                        }
                        Err(e) => first_err = first_err.or(Some(e)),
                    }
                }
                Err(e) => first_err = first_err.or(Some(ReplayError::Config(e.to_string()))),
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let mut stats = self.stats(start, interrupted);
        stats.cpu_ns = cpu_ns;
        stats.offered_msgs_per_sec = offered_rate(pacing);
        stats.achieved_msgs_per_sec = achieved.filter(|_| !interrupted && offered_rate(pacing).is_some());
        progress(stats.sent_total);
        Ok(stats)
    }

    fn run_generator(&mut self, cfg: &GeneratorConfig, run: Run<'_>) -> Result<bool, ReplayError> {
        let Run { pacing, limits, stop, progress } = run;
        let mut gen = Generator::for_shard(cfg, self.part.0, self.part.1);
        if gen.topics().is_empty() {
            return Ok(stop.is_stopped());
        }
        let payload = gen.payload(0).to_vec();
        let mut frames = self.generated_templates(&gen, &payload);
        let lossless = self.lossless;
        let mut pacer = Pacer::new(pacing, limits.duration, stop.clone());
        let mut faults = Faults::new(self.faults);
        let max = limits.max_msgs.unwrap_or(u64::MAX);
        let mut i = 0u64;
        while i < max {
            // A blocked send and a paced wait look at `stop` themselves.
            if i & 63 == 0 {
                if checkpoint(i, stop, progress) {
                    return Ok(true);
                }
                // Every 1 Ki messages: a subscriber that left is said while the run goes on.
                if i & 0x3ff == 0 {
                    self.drain_subscriptions()?;
                }
            }
            let due = faults.due(i).unwrap_or_default();
            if !self.apply_due(due, &mut pacer) {
                return Ok(true);
            }
            if due.restart {
                frames = self.generated_templates(&gen, &payload);
            }
            let Some(send_time_ns) = pacer.wait_turn(i, |hb| self.on_wait(hb, stop))? else {
                break;
            };
            let Some(tf) = frames.get_mut(gen.next_topic()) else { break };
            tf.topic_seq += 1;
            let sh = &mut self.shards[tf.shard];
            sh.stream_seq += 1;
            if due.drop {
                // The message's sequence numbers are used up: the gap is the drop.
                self.dropped_on_purpose += 1;
                i += 1;
                continue;
            }
            let frame = &mut tf.frame;
            patch_generated(frame, tf.topic_len, sh.stream_seq, tf.topic_seq, send_time_ns, i);
            let outcome = if lossless {
                if send_retrying(sh, frame, false, stop, None)? {
                    Outcome::Sent
                } else {
                    Outcome::Stopped
                }
            } else {
                try_once(sh, frame, false)?
            };
            if let Outcome::Stopped = outcome {
                return Ok(true);
            }
            sh.count_sent(1);
            i += 1;
        }
        self.achieved_msgs_per_sec = pacer.achieved_msgs_per_sec();
        progress(i);
        Ok(stop.is_stopped())
    }

    fn run_prebuilt(&mut self, cfg: &GeneratorConfig, run: Run<'_>) -> Result<bool, ReplayError> {
        let Run { limits, stop, progress, .. } = run;
        let gen = Generator::for_shard(cfg, self.part.0, self.part.1);
        if gen.topics().is_empty() {
            return Ok(stop.is_stopped());
        }
        // One frame per topic, built once; per message only the stream and
        // topic sequences and the send time are written into it.
        let payload = vec![b'x'; cfg.payload_bytes];
        let mut frames = self.generated_templates(&gen, &payload);
        let start = Instant::now();
        let max = limits.max_msgs.unwrap_or(u64::MAX);
        let (mut now_ns, mut i) = (crate::clock::realtime_ns(), 0u64);
        while i < max {
            if i & 63 == 0 {
                if checkpoint(i, stop, progress) {
                    return Ok(true);
                }
                if limits.duration.is_some_and(|d| start.elapsed() >= d) {
                    break;
                }
                now_ns = crate::clock::realtime_ns();
            }
            let slot = (i % frames.len() as u64) as usize;
            let tf = &mut frames[slot];
            let sh = &mut self.shards[tf.shard];
            sh.stream_seq += 1;
            tf.topic_seq += 1;
            wire::patch_sequences(&mut tf.frame, tf.topic_len, sh.stream_seq, tf.topic_seq, now_ns);
            if !send_retrying(sh, &tf.frame, false, stop, None)? {
                return Ok(true);
            }
            sh.count_sent(1);
            i += 1;
        }
        progress(i);
        Ok(stop.is_stopped())
    }

    fn run_capture(&mut self, path: &std::path::Path, restamp: bool, run: Run<'_>) -> Result<bool, ReplayError> {
        let Run { pacing, limits, stop, progress } = run;
        let cap = |source| ReplayError::Capture { path: path.to_path_buf(), source };
        let mut reader = CaptureReader::open(path).map_err(cap)?;
        self.refused.clear();
        let shards = self.shards.len();
        let mut topic_seq: std::collections::HashMap<Vec<u8>, u64> = Default::default();
        let mut pacer = Pacer::new(pacing, limits.duration, stop.clone());
        let mut faults = Faults::new(self.faults);
        let max = limits.max_msgs.unwrap_or(u64::MAX);
        let mut first_recv_ns: Option<u64> = None;
        let mut msgs = 0u64;
        // Frames of the message being read; a message is sent only when whole,
        // so a capture damaged inside a multipart message sends no half of it.
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut used = 0usize;
        while msgs < max {
            let next = match reader.next_record() {
                Err(e) => match e.damage_reason() {
                    // Damage ends the file: what came before it was sent; counted and said.
                    Some(reason) => {
                        if self.say_refusals {
                            crate::diag!(
                                "replay: refused ({reason}): capture file {}: {e} (record {}; the {} records before \
                                 it were replayed{}, {})",
                                path.display(),
                                reader.records() + 1,
                                reader.records(),
                                if used > 0 { ", except the first frames of the message it is part of" } else { "" },
                                stops_here(reason)
                            );
                        }
                        *self.refused.entry(reason.to_string()).or_default() += 1;
                        break;
                    }
                    None => return Err(cap(e)),
                },
                Ok(r) => r,
            };
            let recv_ns = match next {
                Some(rec) => {
                    if used == parts.len() {
                        parts.push(Vec::new());
                    }
                    parts[used].clear();
                    parts[used].extend_from_slice(rec.frame);
                    used += 1;
                    if rec.more {
                        continue;
                    }
                    rec.recv_ns
                }
                None => break,
            };
            let n_parts = std::mem::take(&mut used);
            if stop.is_stopped() {
                return Ok(true);
            }
            // What the message is: an mdsub data frame (verbatim or to restamp),
            // a recorded control frame (skipped: this replay sends its own), or
            // foreign traffic.
            let view = if n_parts == 1 { wire::decode(&parts[0]).ok() } else { None };
            if view.is_some_and(|v| v.header.kind != Kind::Data) {
                continue;
            }
            // Below the control-frame skip, which leaves `msgs` as it is: once per 1 Ki messages.
            if msgs & 0x3ff == 0 {
                progress(msgs);
                // Every 1 Ki messages, as for the generated feed: a subscriber that left is said
                // while the run goes on, not only on an idle turn or at the end.
                self.drain_subscriptions()?;
            }
            let is_data = view.is_some();
            let due = faults.due(msgs).unwrap_or_default();
            if !self.apply_due(due, &mut pacer) {
                return Ok(true);
            }
            if due.restart {
                topic_seq.clear();
            }
            let base = *first_recv_ns.get_or_insert(recv_ns);
            let intended = match pacing {
                Pacing::Recorded { speed } => pacer
                    .wait_until_offset(scale_ns(recv_ns.saturating_sub(base), speed), |hb| self.on_wait(hb, stop))?,
                _ => pacer.wait_turn(msgs, |hb| self.on_wait(hb, stop))?,
            };
            let Some(intended) = intended else { break };
            let k = match view {
                // Verbatim mdsub frames keep their publisher's stream whole on
                // one shard (its stream sequence would show false gaps if split).
                Some(v) if !restamp => {
                    let mut key = [0u8; 12];
                    key[..4].copy_from_slice(&v.header.publisher_id.to_le_bytes());
                    key[4..].copy_from_slice(&v.header.session_id.to_le_bytes());
                    shard_of(&key, shards)
                }
                Some(v) => shard_of(v.topic, shards),
                None => {
                    let first = &parts[0];
                    shard_of(wire::split_topic(first).map(|(t, _)| t).unwrap_or(first), shards)
                }
            };
            if restamp {
                if let Some(v) = view {
                    let seq = match topic_seq.get_mut(v.topic) {
                        Some(s) => s,
                        None => topic_seq.entry(v.topic.to_vec()).or_insert(0),
                    };
                    *seq += 1;
                    let s = *seq;
                    // Encode from the borrowed view into self.buf, then swap it in.
                    encode_data(&mut self.shards[k], &mut self.buf, v.topic, s, intended, v.payload);
                    std::mem::swap(&mut parts[0], &mut self.buf);
                }
            }
            if due.drop {
                self.dropped_on_purpose += 1;
                msgs += 1;
                continue;
            }
            // Lossy drops a message whole: only its first frame may be refused.
            match self.send_data(k, Some(&parts[0]), n_parts > 1, stop)? {
                Outcome::Stopped => return Ok(true),
                Outcome::Dropped => {}
                Outcome::Sent => {
                    for (n, frame) in parts[..n_parts].iter().enumerate().skip(1) {
                        if !self.send_on(k, Some(frame), n + 1 < n_parts, stop, None)? {
                            return Ok(true);
                        }
                    }
                }
            }
            self.shards[k].count_sent(is_data as u64);
            msgs += 1;
        }
        self.achieved_msgs_per_sec = pacer.achieved_msgs_per_sec();
        progress(msgs);
        Ok(stop.is_stopped())
    }
}

impl Publisher {
    fn run_dbn(&mut self, paths: &[PathBuf], run: Run<'_>) -> Result<bool, ReplayError> {
        let Run { pacing, limits, stop, progress } = run;
        let mut merge = DbnMerge::open(paths).map_err(ReplayError::Dbn)?;
        self.refused.clear();
        let shards = self.shards.len();
        // Per topic: (topic sequence, shard). Instruments map to a topic slot
        // (two ids may share a symbol, e.g. across days of a multi-day file).
        let mut slots: Vec<(u64, usize)> = Vec::new();
        let mut slot_of_topic: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut slot_of_id: HashMap<u32, usize> = HashMap::new();
        let mut pacer = Pacer::new(pacing, limits.duration, stop.clone());
        let mut faults = Faults::new(self.faults);
        let max = limits.max_msgs.unwrap_or(u64::MAX);
        let mut span: Option<(u64, u64)> = None;
        let mut msgs = 0u64;
        let mut interrupted = false;
        // What was refused (record types not replayed, damage) is said as it is first met.
        let (mut said_rtypes, mut said_damage) = (Vec::new(), 0);
        while msgs < max {
            if msgs & 0x3ff == 0 {
                progress(msgs);
                // A subscriber that left is said while the run goes on (as for the generated feed).
                self.drain_subscriptions()?;
            }
            if stop.is_stopped() {
                interrupted = true;
                break;
            }
            if merge.skipped().len() != said_rtypes.len() || merge.damage().len() != said_damage {
                self.say_dbn_refusals(&merge, &mut said_rtypes, &mut said_damage);
            }
            let due = faults.due(msgs).unwrap_or_default();
            if !self.apply_due(due, &mut pacer) {
                interrupted = true;
                break;
            }
            if due.restart {
                slots.iter_mut().for_each(|s| s.0 = 0);
            }
            let Some(rec) = merge.next_record() else { break };
            let ts = rec.ts_recv_ns;
            let base = span.map_or(ts, |s| s.0);
            self.market_ns.store(ts, Ordering::Relaxed);
            let intended = match pacing {
                Pacing::Recorded { speed } => {
                    let rec_offset = scale_ns(ts.saturating_sub(base), speed);
                    // The record stays borrowed from `merge`: waiting only
                    // touches the publisher's sockets.
                    pacer.wait_until_offset(rec_offset, |hb| self.on_wait(hb, stop))?
                }
                _ => pacer.wait_turn(msgs, |hb| self.on_wait(hb, stop))?,
            };
            let Some(intended) = intended else {
                interrupted = stop.is_stopped();
                break;
            };
            let slot = *slot_of_id.entry(rec.instrument_id).or_insert_with(|| {
                *slot_of_topic.entry(rec.topic.to_vec()).or_insert_with(|| {
                    slots.push((0, shard_of(rec.topic, shards)));
                    slots.len() - 1
                })
            });
            let entry = &mut slots[slot];
            entry.0 += 1;
            let (seq, k) = *entry;
            encode_data(&mut self.shards[k], &mut self.buf, rec.topic, seq, intended, rec.bytes);
            if due.drop {
                self.dropped_on_purpose += 1;
                span = Some((base, ts.max(span.map_or(ts, |s| s.1))));
                msgs += 1;
                continue;
            }
            if let Outcome::Stopped = self.send_data(k, None, false, stop)? {
                interrupted = true;
                break;
            }
            self.shards[k].count_sent(1);
            span = Some((base, ts.max(span.map_or(ts, |s| s.1))));
            msgs += 1;
        }
        self.achieved_msgs_per_sec = pacer.achieved_msgs_per_sec();
        progress(msgs);
        self.say_dbn_refusals(&merge, &mut said_rtypes, &mut said_damage);
        self.skipped_by_rtype = merge.skipped().iter().map(|(rt, n)| (format!("0x{rt:02x}"), *n)).collect();
        self.market_span_ns = span;
        for e in merge.take_damage() {
            if let Some(reason) = e.damage_reason() {
                *self.refused.entry(reason.to_string()).or_default() += 1;
            }
        }
        Ok(interrupted || stop.is_stopped())
    }
}

impl Publisher {
    /// Say (stderr) each record type not replayed and each damaged file the first time they
    /// are met (unless told not to: [`Publisher::say_refusals`]); the counts per type are in
    /// the run's stats (`skipped_by_rtype`) and its summary line.
    fn say_dbn_refusals(&self, merge: &DbnMerge, said_rtypes: &mut Vec<u8>, said_damage: &mut usize) {
        for rt in merge.skipped().keys() {
            if !said_rtypes.contains(rt) {
                said_rtypes.push(*rt);
                if self.say_refusals {
                    crate::diag!(
                        "replay: refused (unreplayed_rtype): records of rtype 0x{rt:02x} are not replayed (skipped and counted)"
                    );
                }
            }
        }
        for e in merge.damage().iter().skip(*said_damage).filter(|_| self.say_refusals) {
            let reason = e.damage_reason().unwrap_or("bad_record");
            crate::diag!("replay: refused ({reason}): {e}; {}, the other files go on", stops_here(reason));
        }
        *said_damage = merge.damage().len();
    }
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

/// What a generated loop does every 64th message `i`: report progress every
/// 1 024 (a bar that moves twice a second at 2k msg/s; indicatif draws at most
/// 4 times a second), and say whether `stop` was set.
#[inline]
fn checkpoint(i: u64, stop: &StopFlag, progress: &mut dyn FnMut(u64)) -> bool {
    if i & 0x3ff == 0 {
        progress(i);
    }
    stop.is_stopped()
}

/// Send `data` on `sh` without waiting (lossy): a full pipe drops the
/// message, counted in the shard's `dropped_at_hwm`.
fn try_once(sh: &mut Shard, data: &[u8], more: bool) -> Result<Outcome, ReplayError> {
    let flags = zmq::DONTWAIT | if more { zmq::SNDMORE } else { 0 };
    loop {
        match send_bytes(&mut sh.socket, data, flags) {
            Ok(()) => return Ok(Outcome::Sent),
            Err(zmq::Error::EAGAIN) => {
                sh.dropped_at_hwm += 1;
                return Ok(Outcome::Dropped);
            }
            Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(sh.send_error(e)),
        }
    }
}

/// Send `data` on `sh`, retrying while a lossless pipe is full; false if
/// `stop` was set, or `deadline` passed, while waiting.
#[inline]
fn send_retrying(
    sh: &mut Shard,
    data: &[u8],
    more: bool,
    stop: &StopFlag,
    deadline: Option<Instant>,
) -> Result<bool, ReplayError> {
    let flags = if more { zmq::SNDMORE } else { 0 };
    loop {
        match send_bytes(&mut sh.socket, data, flags) {
            Ok(()) => return Ok(true),
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {
                if stop.is_stopped() || deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(sh.send_error(e)),
        }
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

/// CLOCK_MONOTONIC in ns (the pacer's schedule clock).
#[inline]
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// Waits for the [`Schedule`]'s turns smoothly on the calling thread (PERF-ANCHORS: a pacer
/// that oversleeps its deadlines bursts and causes loss). The thread's timer slack is set to
/// 1 ns so short sleeps are accurate; it sleeps until ~2 µs before each deadline and spins the
/// rest, so a paced publisher leaves its core to the subscriber instead of spinning through
/// every gap.
pub struct Pacer {
    schedule: Schedule,
    stop: StopFlag,
}

/// A paced publisher that waits drains its subscription events at least this often (besides
/// every 1 Ki messages): what it sends after a subscriber left is counted from within this.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

impl Pacer {
    pub fn new(pacing: Pacing, duration: Option<Duration>, stop: StopFlag) -> Self {
        // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        let duration_ns = duration.map(|d| d.as_nanos().min(u64::MAX as u128) as u64);
        Pacer { schedule: Schedule::new(pacing, duration_ns, mono_ns(), crate::clock::realtime_ns()), stop }
    }

    /// Intended send time (realtime ns) of message `i`, or None when the
    /// duration is over or a stop was requested. `on_idle` as for
    /// [`wait_until_offset`](Self::wait_until_offset), whenever the schedule makes it wait.
    pub fn wait_turn<E>(&mut self, i: u64, on_idle: impl FnMut(bool) -> Result<(), E>) -> Result<Option<u64>, E> {
        // Flat out the clock is read every 64 messages only (a read costs about as much as
        // encoding a frame), and so is the stop flag.
        if !self.schedule.needs_clock(i) {
            return Ok(match self.schedule.turn(i, 0) {
                Turn::Send(t) => Some(t),
                _ => None,
            });
        }
        if self.schedule.is_flat_out() && self.stop.is_stopped() {
            return Ok(None);
        }
        self.wait_for(|s, now| s.turn(i, now), on_idle)
    }

    /// Wait until `offset_ns` after the start (recorded timing): the intended send time
    /// (realtime ns), or None when the duration is over ([`Schedule::turn_at`]) or a stop was
    /// requested. Before each nap `on_idle` is called, with `true` once the publisher has sent
    /// nothing for a second (time for a heartbeat), else `false`.
    pub fn wait_until_offset<E>(
        &mut self,
        offset_ns: u64,
        on_idle: impl FnMut(bool) -> Result<(), E>,
    ) -> Result<Option<u64>, E> {
        self.wait_for(|s, now| s.turn_at(offset_ns, now), on_idle)
    }

    fn wait_for<E>(
        &mut self,
        mut turn: impl FnMut(&mut Schedule, u64) -> Turn,
        mut on_idle: impl FnMut(bool) -> Result<(), E>,
    ) -> Result<Option<u64>, E> {
        loop {
            let now = mono_ns();
            match turn(&mut self.schedule, now) {
                Turn::Send(t) => return Ok(Some(t)),
                Turn::Over => return Ok(None),
                Turn::Wait(_) if self.stop.is_stopped() => return Ok(None),
                Turn::Wait(_) => {
                    on_idle(self.schedule.heartbeat_due(now))?;
                    if let Turn::Wait(left) = turn(&mut self.schedule, mono_ns()) {
                        Self::nap(left);
                    }
                }
            }
        }
    }

    /// What the schedule achieved ([`Schedule::achieved_msgs_per_sec`]).
    pub fn achieved_msgs_per_sec(&self) -> Option<f64> {
        self.schedule.achieved_msgs_per_sec()
    }

    /// Stall for `d` (snails on purpose): send nothing, not even heartbeats,
    /// while the schedule runs on. False if a stop was requested meanwhile.
    pub fn stall(&mut self, d: Duration) -> bool {
        let end = Instant::now() + d;
        self.schedule.restamp();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            if self.stop.is_stopped() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }

    #[inline]
    fn nap(left_ns: u64) {
        if left_ns > 4_000 {
            // At most 100 ms at a time, so a stop request is seen quickly.
            std::thread::sleep(Duration::from_nanos(left_ns.min(100_000_000) - 2_000));
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
