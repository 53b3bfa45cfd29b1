//! The shard's SUB reader agent (`shardK-reader`): drains the SUB socket,
//! decodes and checks every frame, and hands data to workers over inproc
//! PUSH, batched adaptively (whatever the SUB already holds, up to
//! `batch_max`; it never waits to fill a batch), or with the `inline`
//! hand-off runs the shard's [`WorkerCore`] on each accepted frame itself.
//! The clock is read once per drain round, and again only for a frame sent
//! after that read ([`clock::PassStamp`]): the frames of one round share their
//! receive time until one was sent after it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::utils::CachePadded;

use super::batch;
use super::sequence::SequenceTracker;
use super::worker::WorkerCore;
use crate::agent::{Agent, AgentError, Step, StopFlag};
use crate::clock;
use crate::diag::{Refusals, SUMMARY_INTERVAL_NS};
use crate::metrics::collector::ShardLoss;
use crate::snail::{Action, Guard};
use crate::wire::{self, topic_hash, FrameView, Kind, DROP_REASONS, DROP_REASON_NAMES};
use crate::zmqx::frame::{send_bytes, Frame};
use crate::zmqx::pool::{BufferPool, IdleTrim, Lease};

/// Most idle hand-off buffers a reader keeps (each about `batch_max` × 256 bytes).
const MAX_IDLE_BUFFERS: usize = 1024;

/// Idle hand-off buffers none of which was needed for this long are freed (all but
/// [`IDLE_BUFFERS_SPARE_PER_WORKER`] a worker): a deep back-pressure episode does not keep
/// its buffers (up to 1024, ~16 MB a reader) for the rest of the run, and
/// episodes closer together than this keep theirs rather than make them again each time.
pub const IDLE_BUFFERS_WINDOW_NS: u64 = 30_000_000_000;

/// Idle hand-off buffers kept spare a worker when the rest are freed.
pub const IDLE_BUFFERS_SPARE_PER_WORKER: usize = 2;

/// The pool's idle count is sampled once every this many busy rounds, and when idle at most
/// once every [`IDLE_SAMPLE_NS`].
const IDLE_SAMPLE_ROUNDS: u32 = 1024;
const IDLE_SAMPLE_NS: u64 = 1_000_000;

/// How data frames are handed to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandOff {
    /// Everything drained in one round goes as one message per worker.
    Batch,
    /// Each received `zmq::Message` is moved to its worker as is, behind a stamp of its shard
    /// and receive time ([`batch::stamp`]: a part of its own, so the frame is not copied).
    PerMessage,
    /// No hand-off: the shard's reader runs the handler itself (Aeron's
    /// shared threading mode); needs one worker per shard.
    Inline,
}

impl HandOff {
    /// The name in profiles and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            HandOff::Batch => "batch",
            HandOff::PerMessage => "per-message",
            HandOff::Inline => "inline",
        }
    }
}

/// How a data frame picks its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// By topic hash: one topic always goes to one worker, so its order is kept.
    ByTopic,
    /// Round-robin per message: even load, no per-topic order across workers.
    RoundRobin,
}

impl Routing {
    /// Its name in a profile and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Routing::ByTopic => "by-topic",
            Routing::RoundRobin => "round-robin",
        }
    }
}

/// Live counters of one shard, written by its reader only (single writer,
/// relaxed stores once per drain round), read by anyone.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub received: CachePadded<AtomicU64>,
    /// Data frames handed to workers.
    pub forwarded: CachePadded<AtomicU64>,
    pub gaps: AtomicU64,
    pub duplicates: AtomicU64,
    /// Frames that arrived after a later one of their topic (dropped, not lost).
    pub reordered: AtomicU64,
    pub restarts: AtomicU64,
    /// Publisher ids two publishers share ([`super::sequence::SequenceTotals::id_conflicts`]).
    pub id_conflicts: AtomicU64,
    /// Malformed frames by [`wire::DecodeError::reason`].
    pub bad: [AtomicU64; DROP_REASONS],
    /// Dropped by the sequence checks as implausible jumps / over state limits (publishers
    /// live, topics) / after their session ended and was forgotten
    /// ([`super::sequence::SequenceTotals`]).
    pub implausible: AtomicU64,
    pub over_limit_publishers: AtomicU64,
    pub over_limit_topics: AtomicU64,
    pub after_end: AtomicU64,
    /// Of `over_limit_publishers`, the data frames: no end-of-stream count covers them, so
    /// they are lost on top of what the counts say ([`super::sequence::SequenceTotals::over_limit_data`]).
    pub over_limit_data: AtomicU64,
    /// Distinct publisher sessions whose end of stream arrived, and the sum of
    /// the `sent` counts they carried.
    pub eos_sessions: AtomicU64,
    pub eos_sent: AtomicU64,
    /// Sessions ended by a restart without an end of stream, and what they
    /// sent by their last arrived stream sequence
    /// ([`super::sequence::SequenceTotals::unended_sent`]).
    pub unended_sessions: AtomicU64,
    pub unended_sent: AtomicU64,
    /// Sessions forgotten as vanished (nothing heard of their publisher for
    /// `--forget-silent-after`), and those of them heard again after that
    /// ([`super::sequence::SequenceTotals::vanished`]).
    pub vanished: AtomicU64,
    pub vanished_back: AtomicU64,
    /// Messages that arrived beyond what the ends of stream say were sent (a publisher's count
    /// is wrong: loss unknown), as of the last end of stream after which no session of the
    /// shard was open, and at the end (the report's `beyond_sent`).
    pub beyond_sent: AtomicU64,
    /// What the reader's sequence tracker holds now: publishers (live ones, and the last
    /// [`super::sequence::ENDED_KEPT`] that ended) and topics across their sessions
    /// ([`SequenceTracker::publishers`], [`SequenceTracker::topics`]). Gauges: what grows here
    /// all day is publishers that went without an end of stream under ids never heard again.
    pub publishers_held: AtomicU64,
    pub topics_held: AtomicU64,
    /// Messages sent before the first live frame of each session this shard saw
    /// ([`super::sequence::SequenceTotals::before_first`]).
    pub before_first: AtomicU64,
    /// Whose were the last gap, the last restart (its new session) and the last end of stream
    /// (with the `sent` it carried) ([`SequenceTracker::last_gap_at`] and the like): the
    /// collector's loss and session lines name them. A publisher and its session are separate
    /// stores: a reading may pair them wrongly only when two of a kind came in one round.
    pub last_gap_publisher: AtomicU32,
    pub last_gap_session: AtomicU64,
    pub last_restart_publisher: AtomicU32,
    pub last_restart_session: AtomicU64,
    pub last_eos_publisher: AtomicU32,
    pub last_eos_session: AtomicU64,
    pub last_eos_sent: AtomicU64,
    /// Receive time of the first data message handed to workers (0 before any): the start of
    /// the span the engine's rate is measured over (n messages span n − 1 intervals).
    pub first_recv_ns: AtomicU64,
    /// The shard takes every topic (loss can be computed from end-of-stream counts).
    pub full_subscription: std::sync::atomic::AtomicBool,
    /// Silences: no frame at all (not even a heartbeat) for [`SILENCE_AFTER_NS`]
    /// after the first frame; the longest one so far (ns, including one in progress).
    pub silences: AtomicU64,
    pub longest_silence_ns: AtomicU64,
    /// Data bytes (whole frames) handed to workers.
    pub forwarded_bytes: AtomicU64,
    /// Lag of the shard: receive time minus the publisher's intended send
    /// time, of the last data frame and the largest seen (ns).
    pub last_lag_ns: AtomicU64,
    pub max_lag_ns: AtomicU64,
    /// Hand-off buffers the reader made ([`crate::zmqx::pool::BufferPool::made`]):
    /// the most batches it ever had in flight at once (and those made again after idle ones
    /// were freed), not a count per message.
    pub handoff_buffers: AtomicU64,
    /// Of those, idle ones it freed again ([`crate::zmqx::pool::BufferPool::freed`]): none of
    /// them was needed for [`IDLE_BUFFERS_WINDOW_NS`]. Made minus freed is what it holds.
    pub handoff_buffers_freed: AtomicU64,
    /// Publisher connections accepted on the SUB's bound endpoints (handshakes), and those that
    /// ended: libzmq gives no cause, so each may be a publisher that closed or went away, or a
    /// message over `max_msg_bytes`, which libzmq drops with the connection (and what was
    /// queued behind it) with no event of its own ([`crate::link::LinkWatch::accepted`]).
    pub publisher_connects: AtomicU64,
    pub publisher_disconnects: AtomicU64,
    /// Connections accepted there that libzmq refused in their handshake (no ZeroMQ peer, a port
    /// check, another security mechanism): not publisher disconnects.
    pub publisher_refused: AtomicU64,
    /// Times libzmq could not accept a connection there (`accept()` failed, most often out of
    /// descriptors): attempts, not peers ([`crate::link::Accepted::accept_failed`]).
    pub accept_failed: AtomicU64,
    /// Handshake outcomes there not remembered, the handshake ledger being full: how many of
    /// the three counts above are off ([`crate::link::Accepted::ledger_forgotten`]).
    pub handshake_ledger_forgotten: AtomicU64,
}

impl ShardCounters {
    /// Data messages this shard's publishers sent, as far as is known
    /// ([`super::sequence::SequenceTotals::sent`]).
    pub fn sent(&self) -> u64 {
        self.eos_sent.load(Relaxed).saturating_add(self.unended_sent.load(Relaxed))
    }

    /// Its gaps, restarts and ends of stream, and whose the last of each were: what the
    /// collector says of them as an interval ends.
    pub fn loss(&self) -> ShardLoss {
        ShardLoss {
            gaps: self.gaps.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            eos_sessions: self.eos_sessions.load(Relaxed),
            last_gap: (self.last_gap_publisher.load(Relaxed), self.last_gap_session.load(Relaxed)),
            last_restart: (self.last_restart_publisher.load(Relaxed), self.last_restart_session.load(Relaxed)),
            last_eos: (
                self.last_eos_publisher.load(Relaxed),
                self.last_eos_session.load(Relaxed),
                self.last_eos_sent.load(Relaxed),
            ),
        }
    }
}

/// A shard is silent after this long without any frame: publishers send a
/// heartbeat after 1 s without data, so a live path never goes 1.5 s quiet.
pub const SILENCE_AFTER_NS: u64 = 1_500_000_000;

/// A change in a shard's silence, for the reader to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// No frame since `since_ns` (the last frame's receive time).
    Began { since_ns: u64 },
    /// Frames again after `lasted_ns` of silence.
    Ended { lasted_ns: u64 },
}

/// What a shard waits for, besides its `expect_eos` ends of stream, before its stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndWait {
    /// Nothing more: `--expect-eos N` says how many ends of stream are the end.
    Count,
    /// No publisher session it saw still open ([`Checks::any_open`]): a shard that connects,
    /// with no `--expect-eos`. One endpoint is one publisher only when nothing stands between:
    /// behind a proxy (`mdsub lvc`, any XSUB/XPUB) it carries every publisher of the proxy. A
    /// session forgotten as vanished (`--forget-silent-after`) is no longer open: the stream can
    /// end without it, its messages counted as unended.
    EverySession,
    /// That, and an end of stream for each publisher connected to its bound endpoints now
    /// (`publisher_connects` less `publisher_disconnects`): a shard that binds, with no
    /// `--expect-eos` (publishers connect to it, so their number is not one per endpoint, and
    /// one connected whose first frame has not come yet is not missed).
    EveryPublisher,
}

impl EndWait {
    /// The wait of a shard: `expect_eos` is `--expect-eos` (None: not given), `binds` whether
    /// the shard binds an endpoint publishers connect to.
    pub fn of_shard(expect_eos: Option<usize>, binds: bool) -> Self {
        match (expect_eos, binds) {
            (Some(_), _) => EndWait::Count,
            (None, false) => EndWait::EverySession,
            (None, true) => EndWait::EveryPublisher,
        }
    }

    /// Whether the stream ended, once the `expect_eos` ends of stream came: `open`, a
    /// session seen is still open; `eos`, the sessions whose end of stream came; `connected`,
    /// publishers connected to the shard's bound endpoints now.
    pub fn ended(self, open: bool, eos: u64, connected: u64) -> bool {
        match self {
            EndWait::Count => true,
            EndWait::EverySession => !open,
            EndWait::EveryPublisher => !open && eos >= connected,
        }
    }
}

/// Reader settings.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub shard: usize,
    /// The sources (interfaces or their addresses) the shard's endpoints connect from
    /// (`tcp://SOURCE:0;HOST:PORT`): a silence says when one of them is down or gone.
    pub sources: Vec<String>,
    pub batch_max: usize,
    pub handoff: HandOff,
    pub routing: Routing,
    /// [`Routing::ByTopic`] routes a DBN record by its instrument ([`Checks::by_instrument`]):
    /// the handler keeps books, whose instrument must stay on one worker when its topic changes.
    pub by_instrument: bool,
    /// Workers' inproc endpoints, in worker order.
    pub worker_endpoints: Vec<String>,
    /// End of stream after this many publishers said so (0: run until stopped).
    pub expect_eos: usize,
    /// A publisher of which nothing was heard for this long is forgotten as vanished (0:
    /// never; [`SequenceTracker::sweep`]).
    pub forget_silent_after_ns: u64,
    /// The shard's subscriber id in the end-of-stream wait ([`wire::awaits_eos_as`], which the
    /// SUB holds when `expect_eos` > 0): its confirmations name it.
    pub eos_id: u64,
    /// What the shard waits for besides `expect_eos` ends of stream.
    pub end_wait: EndWait,
    /// The shard subscribes to every topic (stream gaps are then real loss).
    pub full_subscription: bool,
    /// Hand-off queue depth per worker, in hand-off messages (batches).
    pub handoff_hwm_msgs: i32,
}

/// The per-frame checks and routing of a reader (socket-free): decode,
/// sequence checks, the snail's lag and silence checks (with a [`Guard`]),
/// routing.
pub struct Checks {
    guard: Option<Guard>,
    croaked: bool,
    tracker: SequenceTracker,
    routing: Routing,
    /// By-topic routing hashes a DBN record's venue and instrument instead of its topic.
    by_instrument: bool,
    workers: usize,
    rr: usize,
    received: u64,
    forwarded: u64,
    bad: [u64; DROP_REASONS],
    first_recv_ns: u64,
    last_recv_ns: u64,
    forwarded_bytes: u64,
    last_lag_ns: u64,
    max_lag_ns: u64,
    silent: bool,
    silences: u64,
    longest_silence_ns: u64,
    /// A silence that ended in `check`, not yet said by [`Checks::silence`].
    ended_silence_ns: Option<u64>,
    /// The reader's runs (its frames and its [`Checks::silence`] calls), to tell a self-stall:
    /// silence is judged from the resumption, as the snail's is, not across a pause of the
    /// reader itself.
    cadence: crate::snail::Cadence,
    /// The last frame was an end of stream and no other session is open: quiet from
    /// here on is expected, not a silence (as the snail's STOP is disarmed), until
    /// another frame arrives.
    quiet_by_right: bool,
    /// Messages that arrived beyond what the ends of stream say were sent ([`Checks::beyond_sent`]),
    /// as of the last end of stream after which no session was open, or the end.
    beyond_sent: u64,
    /// Refused frames by reason, and the line due to be said ([`Checks::take_refusal_line`]).
    refusals: Refusals,
    refusal_line: Option<String>,
    /// The tracker's implausible / over-limit / after-end drops already counted as refusals.
    refused_implausible: u64,
    refused_over_publishers: u64,
    refused_over_topics: u64,
    refused_after_end: u64,
    /// Lines of vanished sessions said in the current interval (from its start), and those
    /// left unsaid in it ([`Checks::vanished_lines`]).
    vanished_window: (u64, usize),
    vanished_unsaid: u64,
}

// The tracker judges a publisher's silence across a pause of the reader as the snail does.
const _: () = assert!(super::sequence::READER_PAUSE_NS == crate::snail::SELF_STALL_NS);

/// Lines a reader says per [`SUMMARY_INTERVAL_NS`] of publisher sessions forgotten as
/// vanished; the rest are counted and said as one.
pub const VANISHED_LINES_PER_INTERVAL: usize = 5;

impl Checks {
    pub fn new(routing: Routing, workers: usize, full_subscription: bool) -> Self {
        Checks {
            guard: None,
            croaked: false,
            tracker: SequenceTracker::new(full_subscription),
            routing,
            by_instrument: false,
            workers: workers.max(1),
            rr: 0,
            received: 0,
            forwarded: 0,
            bad: [0; DROP_REASONS],
            first_recv_ns: 0,
            last_recv_ns: 0,
            forwarded_bytes: 0,
            last_lag_ns: 0,
            max_lag_ns: 0,
            silent: false,
            silences: 0,
            longest_silence_ns: 0,
            ended_silence_ns: None,
            cadence: crate::snail::Cadence::default(),
            quiet_by_right: false,
            beyond_sent: 0,
            refusals: Refusals::new("reader", SUMMARY_INTERVAL_NS),
            refusal_line: None,
            refused_implausible: 0,
            refused_over_publishers: 0,
            refused_over_topics: 0,
            refused_after_end: 0,
            vanished_window: (0, 0),
            vanished_unsaid: 0,
        }
    }

    /// Forget a publisher of which nothing was heard for `ns` as vanished (0: never;
    /// [`SequenceTracker::sweep`]).
    pub fn with_forget_silent_after(mut self, ns: u64) -> Self {
        self.tracker = std::mem::replace(&mut self.tracker, SequenceTracker::new(true)).with_forget_silent_after(ns);
        self
    }

    /// The reader's round ended at `now_ns` (read after its frames): publishers silent for the
    /// bound are forgotten as vanished ([`SequenceTracker::sweep`]: bounded work, at most every
    /// 10 ms). True: one was (the counters to publish changed).
    pub fn sweep(&mut self, now_ns: u64) -> bool {
        self.tracker.sweep(now_ns)
    }

    /// The socket has seen `ended` of its connections end so far and has `open` open now: a
    /// silent publisher is forgotten only after one ended, or another was heard on its one
    /// connection ([`SequenceTracker::connections`]).
    pub fn connections(&mut self, ended: u64, open: u64) {
        self.tracker.connections(ended, open);
    }

    /// The lines to say of sessions forgotten as vanished, as of `now_ns`: one each, up to
    /// [`VANISHED_LINES_PER_INTERVAL`] per [`SUMMARY_INTERVAL_NS`]; the rest as one line with
    /// their count when the interval is over, or at the end (`end`). Empty (no allocation)
    /// when there is nothing to say.
    pub fn vanished_lines(&mut self, now_ns: u64, end: bool) -> Vec<String> {
        let mut lines = Vec::new();
        let over = now_ns.saturating_sub(self.vanished_window.0) >= SUMMARY_INTERVAL_NS;
        if (over || end) && self.vanished_unsaid > 0 {
            lines.push(format!(
                "{} more publisher session(s) vanished in the last {} (nothing heard from them for \
                 --forget-silent-after): forgotten, counted as unended (the report's vanished)",
                std::mem::take(&mut self.vanished_unsaid),
                crate::diag::human_duration(SUMMARY_INTERVAL_NS)
            ));
        }
        if over {
            self.vanished_window = (now_ns, 0);
        }
        while let Some((v, more)) = self.tracker.take_vanished() {
            self.vanished_unsaid += more;
            if self.vanished_window.1 < VANISHED_LINES_PER_INTERVAL {
                self.vanished_window.1 += 1;
                lines.push(v.to_string());
            } else {
                self.vanished_unsaid += 1;
            }
        }
        if end && self.vanished_unsaid > 0 {
            lines.extend(self.vanished_lines(now_ns, true));
        }
        lines
    }

    /// By-topic routing of a data frame whose payload is a DBN record (one the book handler takes
    /// as one: [`wire::dbn::not_a_record`]) goes by the record's publisher id and instrument id
    /// (its header's bytes 2 to 7), not by its topic: a replay names a record by its instrument's
    /// symbol when it was received, so an instrument renamed mid-file changes topic, and by topic
    /// its later records could go to another worker (its book split in two). Other frames go by
    /// topic. For the `book` handler.
    pub fn by_instrument(mut self, on: bool) -> Self {
        self.by_instrument = on;
        self
    }

    /// The hash a by-topic route takes: the DBN record's venue and instrument when
    /// [`Checks::by_instrument`] and the payload is a DBN record, else the topic's.
    #[inline]
    fn route_hash(&self, view: &FrameView<'_>) -> u64 {
        if self.by_instrument && wire::dbn::not_a_record(view.payload).is_none() {
            // A record has its whole header (16 bytes): bytes 2 to 7 are there.
            topic_hash(&view.payload[2..8])
        } else {
            topic_hash(view.topic)
        }
    }

    /// Name the site in refusal lines (the reader's role, e.g. `shard0-reader`).
    pub fn with_site(mut self, site: &str) -> Self {
        self.refusals = Refusals::new(site, SUMMARY_INTERVAL_NS);
        self
    }

    /// A frame was refused: count it under `reason`; the first of a reason (and then a summary
    /// per interval) becomes a line to say. Off the hot path: only refused frames get here.
    #[cold]
    fn refused(&mut self, reason: &'static str, detail: &dyn std::fmt::Display, now_ns: u64) {
        if let Some(l) = self.refusals.refuse(reason, detail, now_ns) {
            self.refusal_line = Some(l);
        }
    }

    /// A frame the sequence checks did not accept: a duplicate (not a refusal), or an
    /// implausible jump, over a state limit or after its session was forgotten (refusals,
    /// counted by the tracker too). Over a limit, the first line of each limit names it and
    /// whose frame it was ([`super::sequence::OverLimit`]).
    #[cold]
    fn not_accepted(&mut self, now_ns: u64) {
        let t = self.tracker.totals();
        if t.implausible > self.refused_implausible {
            self.refused_implausible = t.implausible;
            self.refused("implausible_sequence", &"a stream or topic sequence jumped implausibly far", now_ns);
        }
        let cause = self.tracker.over_limit_cause();
        if t.over_limit_publishers > self.refused_over_publishers {
            self.refused_over_publishers = t.over_limit_publishers;
            self.refused("over_limit_publishers", &cause, now_ns);
        }
        if t.over_limit_topics > self.refused_over_topics {
            self.refused_over_topics = t.over_limit_topics;
            self.refused("over_limit_topics", &cause, now_ns);
        }
        if t.after_end > self.refused_after_end {
            self.refused_after_end = t.after_end;
            self.refused(
                "after_end",
                &"a frame of a publisher session that had ended (its end of stream heard) and was forgotten \
                  to make room, or that vanished (--forget-silent-after) and was forgotten, from before the \
                  forget: too late to tell a duplicate from a late frame",
                now_ns,
            );
        }
    }

    /// The refusal line due to be said (the first of a reason, or a summary), once.
    pub fn take_refusal_line(&mut self) -> Option<String> {
        self.refusal_line.take()
    }

    /// The refusal summary line due at `now_ns` (refusals went unsaid for an interval), if any;
    /// at the end of a run (`end`), whatever went unsaid.
    pub fn refusal_summary(&mut self, now_ns: u64, end: bool) -> Option<String> {
        if end {
            self.refusals.flush()
        } else {
            self.refusals.due(now_ns)
        }
    }

    /// Refusals by reason so far.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Judge lag and silence with `guard` (the snail's checks for this shard).
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// True once the snail croaked on this shard (the shell stops the engine).
    pub fn croaked(&self) -> bool {
        self.croaked
    }

    /// Check for silence at `now_ns` (when nothing was read, or the hand-off is blocked).
    pub fn check_silence(&mut self, now_ns: u64) {
        if let Some(g) = &mut self.guard {
            self.croaked |= g.check_silence(now_ns) == Action::Croak;
        }
    }

    /// The reader closes: the snail's lines not said yet are said ([`Guard::close`]).
    pub fn close(&mut self) {
        if let Some(g) = &mut self.guard {
            g.close();
        }
    }

    /// Decode and check one frame received at `recv_ns`; `Some(worker)` if it
    /// is data to deliver.
    #[inline]
    pub fn check(&mut self, frame: &[u8], recv_ns: u64) -> Option<usize> {
        self.check_decoded(frame, &wire::decode(frame), recv_ns).map(|(w, _)| w)
    }

    /// [`Checks::check`] for `frame` decoded already (`decoded`: [`wire::decode`]'s
    /// answer), so its receive time can follow its send time ([`clock::PassStamp`]); also
    /// gives the decoded frame to deliver. The view is borrowed, not moved: it is read where
    /// `decode` wrote it (moving its 80 bytes in and out cost ~45 instructions a frame).
    #[inline]
    pub fn check_decoded<'v, 'a>(
        &mut self,
        frame: &'a [u8],
        decoded: &'v Result<FrameView<'a>, wire::DecodeError>,
        recv_ns: u64,
    ) -> Option<(usize, &'v FrameView<'a>)> {
        if self.silent {
            self.silent = false;
            let lasted = recv_ns.saturating_sub(self.last_recv_ns);
            self.longest_silence_ns = self.longest_silence_ns.max(lasted);
            self.ended_silence_ns = Some(lasted);
        }
        self.last_recv_ns = recv_ns;
        self.quiet_by_right = false;
        self.received += 1;
        let view = match decoded {
            Ok(v) => v,
            Err(e) => {
                self.bad[e.reason()] += 1;
                self.refused(DROP_REASON_NAMES[e.reason()], e, recv_ns);
                if let Some(g) = &mut self.guard {
                    // Not heard, but the reader ran: a long run of refused frames is no self-stall.
                    g.ran(recv_ns);
                }
                return None;
            }
        };
        if let Some(g) = &mut self.guard {
            g.heard(recv_ns);
        }
        match view.header.kind {
            Kind::Data => {
                if !self.tracker.on_data(&view.header, view.topic).accept {
                    self.not_accepted(recv_ns);
                    return None;
                }
                // Values re-sent from a cache keep their old send times: not lag.
                if view.header.flags & wire::FLAG_FROM_CACHE == 0 {
                    if let Some(g) = &mut self.guard {
                        if g.on_message(&view.header, view.topic, recv_ns) == Action::Croak {
                            // The engine stops at this frame: it is not handed on (nor in the
                            // workers' latency figures), but it arrived and its sequence counts
                            // in what was sent, so it is counted as accepted (then not handled),
                            // not lost; its lag is the shard's, as the scream says.
                            self.croaked = true;
                            self.count_accepted(frame, recv_ns);
                            self.note_lag(recv_ns, view.header.send_time_ns);
                            return None;
                        }
                        // Policy `rest`: this shard drops its backlog.
                        if g.skip(&view.header, recv_ns) {
                            return None;
                        }
                    }
                }
                self.count_accepted(frame, recv_ns);
                self.note_lag(recv_ns, view.header.send_time_ns);
                let w = match self.routing {
                    _ if self.workers == 1 => 0,
                    Routing::ByTopic => (self.route_hash(view) % self.workers as u64) as usize,
                    Routing::RoundRobin => {
                        self.rr = (self.rr + 1) % self.workers;
                        self.rr
                    }
                };
                Some((w, view))
            }
            // A cache (LVC) may re-send a publisher's control frames: only live ones count.
            _ if view.header.flags & wire::FLAG_FROM_CACHE != 0 => None,
            Kind::Heartbeat => {
                // Its publisher is alive, though quiet: not to be forgotten as vanished.
                self.tracker.on_heartbeat(&view.header);
                None
            }
            Kind::EndOfStream => {
                let sent = match view.payload.try_into() {
                    Ok(b) => u64::from_le_bytes(b),
                    Err(_) => view.header.stream_seq,
                };
                if !self.tracker.on_end_of_stream(&view.header, sent) {
                    // A repeat, or over the publishers limit (a refusal).
                    self.not_accepted(recv_ns);
                }
                // Quiet is expected only when no other publisher of the shard is still open
                // (`--endpoint EP1,EP2`: one's end says nothing of the other's stall).
                self.quiet_by_right = !self.tracker.any_open();
                if self.quiet_by_right {
                    // Every session ended: what they said they sent covers what arrived. Not
                    // while one is open, whose messages arrived but are in no count yet.
                    self.beyond_sent = self.beyond_sent().unwrap_or(0);
                }
                if let (Some(g), true) = (&mut self.guard, self.quiet_by_right) {
                    g.ended();
                }
                None
            }
        }
    }

    /// A data frame the sequence checks accepted: it arrived, so it counts against what was sent
    /// (`forwarded`; the workers' `delivered` or, when the engine stopped first, not handled).
    #[inline]
    fn count_accepted(&mut self, frame: &[u8], recv_ns: u64) {
        if self.forwarded == 0 {
            self.first_recv_ns = recv_ns;
        }
        self.forwarded += 1;
        self.forwarded_bytes += frame.len() as u64;
    }

    /// The shard's lag: receive time minus the intended send time.
    #[inline]
    fn note_lag(&mut self, recv_ns: u64, send_time_ns: u64) {
        self.last_lag_ns = recv_ns.saturating_sub(send_time_ns);
        self.max_lag_ns = self.max_lag_ns.max(self.last_lag_ns);
    }

    /// Whether the shard's silence began (nothing for [`SILENCE_AFTER_NS`]
    /// since the last frame, as of `now_ns`) or ended (in a `check` since the
    /// last call); each change is returned once. Quiet after an end of stream
    /// is no silence (until the next frame).
    pub fn silence(&mut self, now_ns: u64) -> Option<Silence> {
        // The reader ran at its last frame (told here, not per frame) and now.
        self.cadence.ran_before(self.last_recv_ns);
        self.cadence.ran(now_ns);
        if let Some(lasted_ns) = self.ended_silence_ns.take() {
            return Some(Silence::Ended { lasted_ns });
        }
        if self.silent || self.received == 0 || self.quiet_by_right {
            if self.silent {
                self.longest_silence_ns = self.longest_silence_ns.max(now_ns.saturating_sub(self.last_recv_ns));
            }
            return None;
        }
        if now_ns.saturating_sub(self.last_recv_ns.max(self.cadence.resumed_ns())) >= SILENCE_AFTER_NS {
            self.silent = true;
            self.silences += 1;
            return Some(Silence::Began { since_ns: self.last_recv_ns });
        }
        None
    }

    /// A publisher id found shared by two publishers since the last call (said once per id).
    pub fn take_id_conflict(&mut self) -> Option<super::sequence::IdConflict> {
        self.tracker.take_id_conflict()
    }

    /// Distinct publisher sessions whose end of stream was seen.
    pub fn eos_sessions(&self) -> u64 {
        self.tracker.totals().eos_sessions
    }

    /// Whether a publisher session seen has not ended ([`SequenceTracker::any_open`]).
    pub fn any_open(&self) -> bool {
        self.tracker.any_open()
    }

    /// The shard's reading ends: the sessions still open count as unended
    /// ([`SequenceTracker::close`]), and an end-of-stream count that is short of what arrived
    /// is returned as the line that says it.
    pub fn end(&mut self, shard: &str) -> Option<String> {
        self.tracker.close();
        let excess = self.beyond_sent();
        self.beyond_sent = excess.unwrap_or(0);
        Some(crate::metrics::beyond_sent_line(shard, self.tracker.totals().sent(), excess?))
    }

    /// Messages that arrived (accepted, or dropped for order) beyond what the ends of stream
    /// and the unended sessions say were sent, if any: a publisher's count is wrong, and loss is
    /// unknown. Only once a session was heard to an end (its end of stream, or counted without one
    /// at the close), where every topic is taken (through a filter,
    /// what was sent is not all for this shard).
    fn beyond_sent(&self) -> Option<u64> {
        let t = self.tracker.totals();
        if !self.tracker.full_subscription() || t.eos_sessions.saturating_add(t.unended_sessions) == 0 {
            return None;
        }
        crate::metrics::loss_of(t.sent(), self.forwarded, t.reordered).err()
    }

    /// Store the counters into the shared atomics.
    pub fn publish(&mut self, c: &ShardCounters) {
        let t = self.tracker.totals();
        c.received.store(self.received, Relaxed);
        c.forwarded.store(self.forwarded, Relaxed);
        let totals = [
            (&c.gaps, t.gaps),
            (&c.duplicates, t.duplicates),
            (&c.reordered, t.reordered),
            (&c.restarts, t.restarts),
            (&c.id_conflicts, t.id_conflicts),
            (&c.implausible, t.implausible),
            (&c.over_limit_publishers, t.over_limit_publishers),
            (&c.over_limit_topics, t.over_limit_topics),
            (&c.over_limit_data, t.over_limit_data),
            (&c.after_end, t.after_end),
            (&c.eos_sessions, t.eos_sessions),
            (&c.eos_sent, t.eos_sent),
            (&c.before_first, t.before_first),
            (&c.unended_sessions, t.unended_sessions),
            (&c.unended_sent, t.unended_sent),
            (&c.vanished, t.vanished),
            (&c.vanished_back, t.vanished_back),
            (&c.beyond_sent, self.beyond_sent),
            (&c.publishers_held, self.tracker.publishers() as u64),
            (&c.topics_held, self.tracker.topics() as u64),
        ];
        let (gap, restart, eos) =
            (self.tracker.last_gap_at(), self.tracker.last_restart_at(), self.tracker.last_eos_at());
        let whose = [
            (&c.last_gap_session, gap.1),
            (&c.last_restart_session, restart.1),
            (&c.last_eos_session, eos.1),
            (&c.last_eos_sent, eos.2),
        ];
        for (a, v) in totals.into_iter().chain(whose).chain(c.bad.iter().zip(self.bad)) {
            a.store(v, Relaxed);
        }
        c.last_gap_publisher.store(gap.0, Relaxed);
        c.last_restart_publisher.store(restart.0, Relaxed);
        c.last_eos_publisher.store(eos.0, Relaxed);
        c.first_recv_ns.store(self.first_recv_ns, Relaxed);
        c.full_subscription.store(self.tracker.full_subscription(), Relaxed);
        if let Some(g) = &mut self.guard {
            // Live settings are taken up here, once per batch or idle round.
            g.refresh();
            g.publish();
        }
        c.silences.store(self.silences, Relaxed);
        c.longest_silence_ns.store(self.longest_silence_ns, Relaxed);
        c.forwarded_bytes.store(self.forwarded_bytes, Relaxed);
        c.last_lag_ns.store(self.last_lag_ns, Relaxed);
        c.max_lag_ns.store(self.max_lag_ns, Relaxed);
    }
}

pub struct ReaderAgent {
    role: String,
    stop: StopFlag,
    cfg: ReaderConfig,
    sub: zmq::Socket,
    pushes: Vec<zmq::Socket>,
    /// Each worker's batch being built, in a buffer of `pool` (boxed: a lease
    /// travels as its box through libzmq and back, never re-allocated).
    #[allow(clippy::vec_box)]
    staging: Vec<Box<Lease>>,
    /// The receive time of each batch's last record ([`batch::push`]).
    staged_ns: Vec<u64>,
    /// The receive time of the frames of a drain pass, and the clock it reads.
    stamp: clock::PassStamp,
    clock: Box<dyn clock::Clock>,
    /// Each worker's batch that met a full queue, kept to send again first.
    unsent: Vec<Option<Frame>>,
    /// The hand-off buffers: a batch goes out without a copy and its buffer
    /// comes back when the worker is done with it.
    pool: BufferPool,
    /// Buffers `pool` had made at the last look (a change: the pool grew).
    pool_made: u64,
    /// When `pool`'s idle buffers are freed, and busy rounds since it last sampled.
    idle_trim: IdleTrim,
    rounds_unsampled: u32,
    last_sample_ns: u64,
    msg: zmq::Message,
    /// A received message waiting for room on its worker's PUSH (per-message hand-off): the
    /// worker, the frame's receive time, the frame.
    pending: Option<(usize, u64, zmq::Message)>,
    checks: Checks,
    /// `handoff = "inline"`: the core this reader runs the handler with.
    inline: Option<WorkerCore>,
    counters: Arc<ShardCounters>,
    /// Ended by end of stream (not by a stop request or an error).
    finished: bool,
    /// Unless [`EndWait::Count`]: the end-of-stream count last looked at, and whether a
    /// session was open then ([`ReaderAgent::all_ended`]).
    open_at_eos: (u64, bool),
    /// Ends of stream counted as of the last look, and those counted since that are still to
    /// confirm ([`ReaderAgent::send_confirmations`]): publisher and session.
    eos_told: u64,
    took: Vec<(u32, u64)>,
    /// The SUB's watched links, serviced between rounds, never per message.
    links: Option<crate::link::LinkWatch>,
}

/// Subscribe `prefix` and withdraw it at once: what a publisher reading its subscriptions sees
/// as a message ([`wire::TOOK_EOS`]).
fn confirm(sub: &zmq::Socket, prefix: &[u8]) -> zmq::Result<()> {
    sub.set_subscribe(prefix)?;
    sub.set_unsubscribe(prefix)
}

fn zerr<'a>(role: &'a str, context: &'static str) -> impl FnOnce(zmq::Error) -> AgentError + 'a {
    move |source| AgentError::Zmq { role: role.to_string(), context, source }
}

impl ReaderAgent {
    /// Wrap a connected, subscribed SUB; connect PUSH sockets (in the fan-out
    /// context `fanout`) to every worker, or with `handoff = "inline"` run
    /// `inline`, the shard's worker core, on this thread. `stop` bounds the
    /// final hand-off of end markers in `on_close`.
    pub fn new(
        cfg: ReaderConfig,
        sub: zmq::Socket,
        fanout: &zmq::Context,
        inline: Option<WorkerCore>,
        counters: Arc<ShardCounters>,
        stop: StopFlag,
    ) -> Result<Self, AgentError> {
        let role = format!("shard{}-reader", cfg.shard);
        if (cfg.handoff == HandOff::Inline) != inline.is_some() {
            let message = "an inline hand-off needs the shard's worker core (and only it does)".into();
            return Err(AgentError::Fatal { role, message });
        }
        let mut pushes = Vec::with_capacity(cfg.worker_endpoints.len());
        for ep in cfg.worker_endpoints.iter().filter(|_| inline.is_none()) {
            let p = fanout.socket(zmq::PUSH).map_err(zerr(&role, "creating a PUSH"))?;
            p.set_sndhwm(cfg.handoff_hwm_msgs).map_err(zerr(&role, "setting the hand-off SNDHWM"))?;
            p.set_linger(-1).map_err(zerr(&role, "setting LINGER"))?;
            p.connect(ep).map_err(zerr(&role, "connecting to a worker"))?;
            pushes.push(p);
        }
        if pushes.is_empty() && inline.is_none() {
            return Err(AgentError::Fatal { role, message: "no workers to hand off to".into() });
        }
        // Idle buffers kept: as many as could be in flight (both ends of every
        // worker's queue), within reason; beyond that they are freed on return.
        let hwm = usize::try_from(cfg.handoff_hwm_msgs).unwrap_or(1000).max(1);
        let slots = (pushes.len() * (2 * hwm + 2)).min(MAX_IDLE_BUFFERS);
        let pool = BufferPool::new(slots, cfg.batch_max * 256 + batch::HEADER_BYTES);
        let staging = (0..pushes.len()).map(|_| pool.take()).collect();
        counters.handoff_buffers.store(pool.made(), Relaxed);
        let idle_trim = IdleTrim::new(IDLE_BUFFERS_WINDOW_NS, IDLE_BUFFERS_SPARE_PER_WORKER * pushes.len());
        let unsent = (0..pushes.len()).map(|_| None).collect();
        let checks = Checks::new(cfg.routing, pushes.len(), cfg.full_subscription)
            .by_instrument(cfg.by_instrument)
            .with_site(&role)
            .with_forget_silent_after(cfg.forget_silent_after_ns);
        let inline = inline.map(|core| core.said_by(&role));
        Ok(ReaderAgent {
            role,
            stop,
            cfg,
            sub,
            staged_ns: vec![0; pushes.len()],
            pushes,
            staging,
            stamp: clock::PassStamp::default(),
            clock: Box::new(clock::Realtime),
            unsent,
            pool_made: pool.made(),
            idle_trim,
            rounds_unsampled: 0,
            last_sample_ns: 0,
            pool,
            msg: zmq::Message::new(),
            pending: None,
            checks,
            inline,
            counters,
            finished: false,
            open_at_eos: (0, false),
            eos_told: 0,
            took: Vec::with_capacity(4),
            links: None,
        })
    }

    /// Why a silence began, as far as this host can tell: a source interface of the shard that
    /// is down or gone (a NIC pulled mid-run), else the path or the publisher.
    fn why_silent(&self) -> String {
        let down: Vec<String> = self
            .cfg
            .sources
            .iter()
            .filter_map(|s| match crate::nic::interface_down(s) {
                Some(why) => Some(why),
                None if !crate::nic::interface_exists(s) => Some(format!("interface {s} is gone")),
                None => None,
            })
            .collect();
        if down.is_empty() {
            "path or publisher down".into()
        } else {
            down.join(", ")
        }
    }

    /// Service `links` (the SUB's monitor) from this agent's loop.
    pub fn with_links(mut self, links: Option<crate::link::LinkWatch>) -> Self {
        if let Some(w) = &links {
            self.checks.connections(w.connections_ended(), w.connections_open());
        }
        self.links = links;
        self
    }

    /// Look at the SUB's links when due (every so many rounds, and on every wait), and publish
    /// the publisher connections its bound endpoints accepted.
    fn service_links(&mut self, now: bool) {
        if let Some(w) = &mut self.links {
            if now || w.due() {
                w.service(&self.sub);
                self.checks.connections(w.connections_ended(), w.connections_open());
                let a = w.accepted();
                self.counters.publisher_connects.store(a.connects, Relaxed);
                self.counters.publisher_disconnects.store(a.disconnects, Relaxed);
                self.counters.publisher_refused.store(a.refused, Relaxed);
                self.counters.accept_failed.store(a.accept_failed, Relaxed);
                self.counters.handshake_ledger_forgotten.store(a.ledger_forgotten, Relaxed);
            }
        }
    }

    /// Whether every publisher the shard waits for ended ([`ReaderConfig::end_wait`]): no
    /// session open ([`Checks::any_open`]), and with [`EndWait::EveryPublisher`] an end of
    /// stream for each publisher connected now. The sessions are looked at again on a new end
    /// of stream and in idle rounds (`idle`), not per message.
    fn all_ended(&mut self, idle: bool) -> bool {
        let wait = self.cfg.end_wait;
        if wait == EndWait::Count {
            return true;
        }
        let eos = self.checks.eos_sessions();
        if self.open_at_eos.0 != eos && wait == EndWait::EveryPublisher {
            // A publisher that connected just now is counted too.
            self.service_links(true);
        }
        if self.open_at_eos.0 != eos || idle {
            self.open_at_eos = (eos, self.checks.any_open());
        }
        let a = self.links.as_ref().map(|w| w.accepted()).unwrap_or_default();
        wait.ended(self.open_at_eos.1, eos, a.connects.saturating_sub(a.disconnects))
    }

    /// Confirm to the publishers the ends of stream counted in this round (a shard that ends
    /// at ends of stream: it subscribed [`wire::AWAITS_EOS`]): each is a subscription to
    /// [`wire::took_eos`] of its session, made and withdrawn at once, which every publisher of
    /// the shard sees and the one whose session it names counts (`mdsub replay` waits for it).
    fn send_confirmations(&mut self) -> Result<(), AgentError> {
        while let Some((publisher_id, session_id)) = self.took.pop() {
            // Named first: a publisher that reads the named form counts the bare one that
            // follows it as this subscriber's (an older one reads the bare one alone).
            confirm(&self.sub, &wire::took_eos_as(publisher_id, session_id, self.cfg.eos_id))
                .and_then(|()| confirm(&self.sub, &wire::took_eos(publisher_id, session_id)))
                .map_err(zerr(&self.role, "confirming an end of stream"))?;
        }
        Ok(())
    }

    /// Judge this shard's lag and silence with `guard`.
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.checks = std::mem::replace(&mut self.checks, Checks::new(self.cfg.routing, 1, true)).with_guard(guard);
        self
    }

    /// The snail croaked: stop the engine (the board holds the scream).
    fn croak(&mut self, n: usize) -> Result<Step, AgentError> {
        self.checks.publish(&self.counters);
        self.stop.stop();
        Ok(Step::Worked(n.max(1)))
    }

    /// Try to hand everything staged (and a pending message) to the workers
    /// without blocking. Returns false while some worker's queue is full
    /// (what could not go stays staged, in order).
    fn try_flush(&mut self) -> Result<bool, AgentError> {
        if let Some((w, recv_ns, m)) = self.pending.take() {
            // The shard and receive time go first, in a part of their own (a very small message,
            // not allocated), so the frame itself is moved as received. The stamp's send is the
            // test for room: zmq consumes a message even on EAGAIN, but the stamp is only bytes,
            // and the high-water mark counts whole messages, so once the stamp is taken the
            // frame's part is too (one call into libzmq, not a POLLOUT query and a send).
            let push = &mut self.pushes[w];
            let stamp = batch::stamp(self.cfg.shard as u16, recv_ns);
            match send_bytes(push, &stamp, zmq::DONTWAIT | zmq::SNDMORE) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {
                    self.pending = Some((w, recv_ns, m));
                    return Ok(false);
                }
                Err(e) => return Err(zerr(&self.role, "handing off to a worker")(e)),
            }
            push.send(m, zmq::DONTWAIT).map_err(zerr(&self.role, "handing off to a worker"))?;
        }
        for w in 0..self.staging.len() {
            if self.unsent[w].is_none() {
                if self.staging[w].is_empty() {
                    continue;
                }
                let batch = std::mem::replace(&mut self.staging[w], self.pool.take());
                let made = self.pool.made();
                if made != self.pool_made {
                    self.pool_made = made;
                    self.idle_trim.grew();
                    self.counters.handoff_buffers.store(made, Relaxed);
                }
                self.unsent[w] = Some(BufferPool::message(batch));
            }
            let Some(frame) = &mut self.unsent[w] else { continue };
            // A failed send leaves the frame (and its buffer) as it was.
            match frame.send(&mut self.pushes[w], zmq::DONTWAIT) {
                Ok(()) => self.unsent[w] = None,
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => return Ok(false),
                Err(e) => return Err(zerr(&self.role, "handing off to a worker")(e)),
            }
        }
        Ok(true)
    }

    /// Sample the pool's idle buffers at `now_ns` and free those [`IdleTrim`] says were not
    /// needed (between rounds: once every [`IDLE_SAMPLE_ROUNDS`] busy ones, and when idle).
    fn trim_idle_buffers(&mut self, now_ns: u64) {
        self.rounds_unsampled = 0;
        self.last_sample_ns = now_ns;
        let n = self.idle_trim.observe(self.pool.idle(), now_ns);
        if n > 0 && self.pool.trim(n) > 0 {
            self.counters.handoff_buffers_freed.store(self.pool.freed(), Relaxed);
        }
    }

    /// Something is staged or unsent for a worker.
    fn staged(&self) -> bool {
        self.blocked_push().is_some()
    }

    /// The first hand-off socket with something staged or unsent for it (full, when a flush
    /// has just failed), if any.
    fn blocked_push(&self) -> Option<&zmq::Socket> {
        if let Some((w, _, _)) = &self.pending {
            return Some(&self.pushes[*w]);
        }
        (0..self.pushes.len())
            .find(|&w| self.unsent[w].is_some() || !self.staging[w].is_empty())
            .map(|w| &self.pushes[w])
    }

    /// Flush, waiting while workers are full, until done or `stop` is set.
    fn flush_blocking(&mut self) -> bool {
        loop {
            match self.try_flush() {
                Ok(true) => return true,
                Ok(false) if !self.stop.is_stopped() => {
                    if let Some(p) = self.blocked_push() {
                        let _ = crate::zmqx::wait_ready(p, zmq::POLLOUT, Duration::from_millis(10));
                    }
                }
                _ => return false,
            }
        }
    }
}

impl Agent for ReaderAgent {
    fn role(&self) -> &str {
        &self.role
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        self.service_links(false);
        // Back-pressure: nothing more is read until the workers took what is
        // staged, so the SUB's queue fills and TCP pushes back on the publisher.
        if self.staged() && !self.try_flush()? {
            // Stuck behind the workers: nothing is being read.
            self.checks.check_silence(self.clock.now_ns());
            if self.checks.croaked() {
                return self.croak(0);
            }
            return Ok(Step::Blocked(0));
        }
        let mut n = 0;
        // One clock read per drain round, not per frame (it was ~10 % of the reader's CPU per
        // message): the frames of the round share the time read at its first frame, and the
        // clock is read again only for a frame sent after that time, which stamps it and the
        // frames after it (clock::PassStamp). A full round of `batch_max` frames (64) takes
        // some 6 µs of the reader's CPU (~95 ns a frame, `mdsub bench` on a 2-core VM), and
        // any length of wall time if the thread is preempted mid-round: a frame sent before
        // the stamp but taken that much later counts the difference in its queue stage, not
        // its wire stage (their sum, the total, is exact).
        self.stamp.start();
        while n < self.cfg.batch_max {
            match self.sub.recv(&mut self.msg, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(zerr(&self.role, "receiving from the SUB")(e)),
            }
            n += 1;
            let frame: &[u8] = &self.msg;
            let decoded = wire::decode(frame);
            let recv_ns = self.stamp.of(decoded.as_ref().map_or(0, |v| v.header.send_time_ns), &*self.clock);
            let Some((w, view)) = self.checks.check_decoded(frame, &decoded, recv_ns) else {
                if self.cfg.expect_eos > 0 && self.checks.eos_sessions() != self.eos_told {
                    // This frame was an end of stream, counted now (a repeat is not): its session
                    // is confirmed after the round.
                    self.eos_told = self.checks.eos_sessions();
                    if let Ok(v) = &decoded {
                        self.took.push((v.header.publisher_id, v.header.session_id));
                    }
                }
                if let Some(l) = self.checks.take_refusal_line() {
                    crate::diag!("{l}");
                }
                if self.checks.croaked() {
                    break;
                }
                continue;
            };
            if self.checks.croaked() {
                break;
            }
            match self.cfg.handoff {
                // Handled here and now: nothing queued, so the queue stage is 0.
                HandOff::Inline => {
                    if let Some(core) = &mut self.inline {
                        core.handle_view(view, frame.len(), recv_ns, recv_ns);
                    }
                }
                HandOff::Batch => batch::push(
                    &mut self.staging[w],
                    &mut self.staged_ns[w],
                    self.cfg.shard as u16,
                    recv_ns,
                    view.topic.len(),
                    frame,
                ),
                HandOff::PerMessage => {
                    let m = std::mem::replace(&mut self.msg, zmq::Message::new());
                    self.pending = Some((w, recv_ns, m));
                    if !self.try_flush()? {
                        break;
                    }
                }
            }
        }
        while let Some(c) = self.checks.take_id_conflict() {
            crate::diag!("{}: {c}", self.role);
        }
        if !self.took.is_empty() {
            self.send_confirmations()?;
        }
        let round_ns = if n == 0 {
            let now = self.clock.now_ns();
            self.checks.check_silence(now);
            if let Some(l) = self.checks.refusal_summary(now, false) {
                crate::diag!("{l}");
            }
            // The count of vanished sessions left unsaid in an interval, once it is over.
            for l in self.checks.vanished_lines(now, false) {
                crate::diag!("{}: {l}", self.role);
            }
            if now.saturating_sub(self.last_sample_ns) >= IDLE_SAMPLE_NS {
                self.trim_idle_buffers(now);
            }
            now
        } else {
            let last = self.stamp.ns();
            self.rounds_unsampled += 1;
            if self.rounds_unsampled >= IDLE_SAMPLE_ROUNDS {
                self.trim_idle_buffers(last);
            }
            last
        };
        if let Some(core) = &mut self.inline {
            // The round's time (its last stamp, or now when idle) is close
            // enough for the report period (≥ 1 ms).
            core.end_round(round_ns);
        }
        // Publishers silent past the bound are forgotten here, once per round, never per frame
        // (the round's time was read after the frames of the rounds before it).
        if self.checks.sweep(round_ns) {
            for l in self.checks.vanished_lines(round_ns, false) {
                crate::diag!("{}: {l}", self.role);
            }
            self.checks.publish(&self.counters);
        }
        if self.checks.croaked() {
            return self.croak(n);
        }
        let flushed = n == 0 || self.try_flush()?;
        // Silence is looked at only when the SUB is empty or a round ends
        // (one clock read), and said on stderr as it begins and ends.
        if n == 0 || self.checks.ended_silence_ns.is_some() {
            if let Some(change) = self.checks.silence(self.clock.now_ns()) {
                match change {
                    Silence::Began { .. } => crate::diag!(
                        "{}: silent: no frame for {} (heartbeats stopped: {})",
                        self.role,
                        crate::diag::human_ns(SILENCE_AFTER_NS),
                        self.why_silent()
                    ),
                    Silence::Ended { lasted_ns } => {
                        crate::diag!(
                            "{}: frames again after {} of silence",
                            self.role,
                            crate::diag::human_ns(lasted_ns)
                        )
                    }
                }
                self.checks.publish(&self.counters);
            }
        }
        if n > 0 {
            self.checks.publish(&self.counters);
        }
        if !flushed {
            return Ok(Step::Blocked(n));
        }
        if self.cfg.expect_eos > 0 && self.checks.eos_sessions() >= self.cfg.expect_eos as u64 && self.all_ended(n == 0)
        {
            self.finished = true;
            // The publishers close after their ends of stream: that is not a lost link.
            if let Some(w) = &mut self.links {
                w.end_of_stream();
            }
            return Ok(Step::Finished(n));
        }
        Ok(Step::Worked(n))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        self.service_links(true);
        let _ = crate::zmqx::wait_ready(&self.sub, zmq::POLLIN, timeout);
    }

    fn blocked_wait(&mut self, timeout: Duration) {
        if let Some(p) = self.blocked_push() {
            let _ = crate::zmqx::wait_ready(p, zmq::POLLOUT, timeout);
        }
    }

    fn on_close(&mut self) {
        if self.cfg.expect_eos > 0 {
            // Its reading ends. Ended by a stop or a croak, it confirms, bare, that it waits for
            // no end of stream any more (ended by its ends of stream, it confirmed each). An
            // error here is a context already ending, whose close of the SUB withdraws every
            // subscription anyway.
            let _ = self.send_confirmations();
            if !self.finished {
                let _ = confirm(&self.sub, &wire::stopped_awaiting_as(self.cfg.eos_id));
                let _ = confirm(&self.sub, wire::TOOK_EOS);
            }
            let _ = self.sub.set_unsubscribe(&wire::awaits_eos_as(self.cfg.eos_id));
            let _ = self.sub.set_unsubscribe(wire::AWAITS_EOS);
        }
        // The last events (a reconnect just before the end) reach the report.
        self.service_links(true);
        if let Some(l) = self.checks.refusal_summary(0, true) {
            crate::diag!("{l}");
        }
        for l in self.checks.vanished_lines(0, true) {
            crate::diag!("{}: {l}", self.role);
        }
        if let Some(l) = self.checks.end(&format!("shard{}", self.cfg.shard)) {
            crate::diag!("{l}");
        }
        self.checks.close();
        let flushed = self.flush_blocking();
        self.checks.publish(&self.counters);
        if let Some(core) = &mut self.inline {
            core.close();
        }
        // End markers (an empty message to every worker, after all batches)
        // on a normal finish; when stopped, workers stop on the flag.
        if self.finished && flushed {
            for w in 0..self.pushes.len() {
                self.staging[w].clear();
                self.unsent[w] = None;
                self.pending = None;
                // An empty staged buffer is not sent by try_flush: send the
                // marker itself, waiting for room while not stopped.
                loop {
                    match self.pushes[w].send(&b""[..], zmq::DONTWAIT) {
                        Ok(()) => break,
                        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) if !self.stop.is_stopped() => {
                            let _ = crate::zmqx::wait_ready(&self.pushes[w], zmq::POLLOUT, Duration::from_millis(10));
                        }
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Header;

    fn frame(seq: u64, kind: Kind) -> Vec<u8> {
        frame_sent_at(seq, kind, 1000)
    }

    /// [`frame`] with its intended send time.
    fn frame_sent_at(seq: u64, kind: Kind, send_time_ns: u64) -> Vec<u8> {
        let h =
            Header { kind, flags: 0, publisher_id: 1, session_id: 7, stream_seq: seq, topic_seq: seq, send_time_ns };
        wire::encode(b"AAPL", &h, &[0u8; 16])
    }

    /// A data frame of topic `topic` and `payload`: publisher 1, session 7, stream sequence `seq`.
    fn data_frame(seq: u64, topic: &[u8], payload: &[u8]) -> Vec<u8> {
        let h = Header {
            kind: Kind::Data,
            flags: 0,
            publisher_id: 1,
            session_id: 7,
            stream_seq: seq,
            topic_seq: 1,
            send_time_ns: 1000,
        };
        wire::encode(topic, &h, payload)
    }

    /// A frame of `kind` from publisher `id`'s session `session` at stream sequence `seq`
    /// (`FROM_CACHE` when `cached`); an end of stream says `seq` were sent.
    fn frame_of(id: u32, session: u64, seq: u64, kind: Kind, cached: bool) -> Vec<u8> {
        let flags = if cached { wire::FLAG_FROM_CACHE } else { 0 };
        let h = Header {
            kind,
            flags,
            publisher_id: id,
            session_id: session,
            stream_seq: seq,
            topic_seq: seq,
            send_time_ns: 1,
        };
        match kind {
            Kind::Data => wire::encode(b"ES", &h, &[0u8; 8]),
            _ => wire::encode(wire::CONTROL_TOPIC, &Header { topic_seq: 0, ..h }, &seq.to_le_bytes()),
        }
    }

    /// Publishers killed without an end of stream are forgotten at the reader's sweep once
    /// silent for the bound: each said in one line, five per interval, the rest as one line
    /// with their count when the interval is over; counted and published (the gauges back to
    /// what is left). One that heartbeats is kept, and its heartbeats are no data.
    #[test]
    fn vanished_publishers_are_said_once_each_and_past_a_few_as_a_count() {
        const BOUND_NS: u64 = 1_000_000_000;
        let mut c = Checks::new(Routing::ByTopic, 1, true).with_forget_silent_after(BOUND_NS);
        let t0 = 1_000_000_000_000;
        c.sweep(t0);
        for id in 1..=9 {
            assert!(c.check(&frame_of(id, 10 * u64::from(id), 1, Kind::Data, false), t0).is_some());
        }
        let (mut now, mut lines) = (t0, Vec::new());
        while now < t0 + 3 * BOUND_NS {
            now += 10_000_000;
            if now % 500_000_000 == 0 {
                assert!(c.check(&frame_of(9, 90, 1, Kind::Heartbeat, false), now).is_none());
            }
            c.sweep(now);
            lines.extend(c.vanished_lines(now, false));
        }
        assert_eq!(lines.len(), VANISHED_LINES_PER_INTERVAL, "{lines:?}");
        assert!(
            lines.iter().all(|l| l.contains("vanished: nothing heard from it") && l.contains("for 1s")),
            "{lines:?}"
        );
        let counters = ShardCounters::default();
        c.publish(&counters);
        let held = (counters.publishers_held.load(Relaxed), counters.topics_held.load(Relaxed));
        assert_eq!((counters.vanished.load(Relaxed), counters.unended_sessions.load(Relaxed), held), (8, 8, (1, 1)));
        assert_eq!((counters.forwarded.load(Relaxed), counters.vanished_back.load(Relaxed)), (9, 0));
        // The other three as one line, once the interval is over; then nothing more.
        let later = c.vanished_lines(now + SUMMARY_INTERVAL_NS, false);
        assert_eq!(later.len(), 1, "{later:?}");
        assert!(later[0].starts_with("3 more publisher session(s) vanished in the last 10s"), "{later:?}");
        assert!(c.vanished_lines(now + 2 * SUMMARY_INTERVAL_NS, true).is_empty());
    }

    /// A shard that connects, with no `--expect-eos`, waits for every session it saw: behind a
    /// proxy one endpoint carries two publishers, and the first one's end of stream is not the
    /// end while the second still sends. Before, only a shard that binds waited for them
    /// (a connected one ended on one end of stream per endpoint). A session seen only from a
    /// cache (an older session a last-value cache still holds) or replaced by a restart is no
    /// open session; one joined late is (its end of stream is still to come).
    #[test]
    fn a_connected_shard_waits_for_every_session_it_saw() {
        assert_eq!(EndWait::of_shard(None, false), EndWait::EverySession);
        assert_eq!(EndWait::of_shard(None, true), EndWait::EveryPublisher);
        assert_eq!(EndWait::of_shard(Some(1), false), EndWait::Count);
        assert_eq!(EndWait::of_shard(Some(0), true), EndWait::Count);
        let wait = EndWait::of_shard(None, false);
        let mut c = Checks::new(Routing::ByTopic, 1, true);
        let ended = |c: &Checks| wait.ended(c.any_open(), c.eos_sessions(), 0);
        // The cache's values of publisher 3's older session, then publisher 1 from its start,
        // publisher 2 joined late (from stream sequence 40), publisher 4 restarting.
        for seq in 1..=5 {
            assert!(c.check(&frame_of(3, 30, seq, Kind::Data, true), 1).is_some());
        }
        for seq in 1..=10 {
            c.check(&frame_of(1, 10, seq, Kind::Data, false), 2);
            c.check(&frame_of(2, 20, 39 + seq, Kind::Data, false), 2);
        }
        c.check(&frame_of(4, 40, 1, Kind::Data, false), 2);
        c.check(&frame_of(4, 41, 1, Kind::Data, false), 2);
        c.check(&frame_of(4, 41, 1, Kind::EndOfStream, false), 2);
        c.check(&frame_of(1, 10, 10, Kind::EndOfStream, false), 3);
        assert_eq!(c.eos_sessions(), 2);
        assert!(!ended(&c), "publisher 2 still sends");
        assert!(EndWait::Count.ended(c.any_open(), c.eos_sessions(), 0), "--expect-eos N: N ends are the end");
        // A cached end of stream is no end: only a live one.
        c.check(&frame_of(2, 20, 49, Kind::EndOfStream, true), 4);
        assert!(!ended(&c), "a cached end of stream");
        c.check(&frame_of(2, 20, 49, Kind::EndOfStream, false), 4);
        assert!(ended(&c), "every session seen ended (the cached one and the restarted one were not open)");
        // A shard that binds also waits for every publisher connected to it.
        assert!(!EndWait::EveryPublisher.ended(false, 3, 4));
        assert!(EndWait::EveryPublisher.ended(false, 3, 3));
        assert!(!EndWait::EveryPublisher.ended(true, 3, 3));
    }

    /// A replay sends its end of stream again to a subscriber that took the control topic after
    /// it went out (a reconnect: the first may have gone into the dead connection with the
    /// messages before it), and to every subscriber of the shard with it: heard once or three
    /// times, it counts once, and so does the tail that the dead connection swallowed (30 gaps,
    /// not 60 or 90); the shard's stream ends at the first.
    #[test]
    fn an_end_of_stream_sent_again_after_a_reconnect_counts_once() {
        for heard in 1..=3 {
            let mut c = Checks::new(Routing::ByTopic, 1, true);
            let counters = ShardCounters::default();
            for seq in 1..=20 {
                assert!(c.check(&frame_of(1, 10, seq, Kind::Data, false), seq).is_some());
            }
            // 21..=50 were lost with the connection; the end of stream says 50 were sent.
            for k in 0..heard {
                c.check(&frame_of(1, 10, 50, Kind::EndOfStream, false), 100 + k);
                assert!(!c.any_open(), "heard {heard}: the session ended at the first");
            }
            c.publish(&counters);
            let read = |a: &AtomicU64| a.load(Relaxed);
            assert_eq!(
                (read(&counters.eos_sessions), read(&counters.eos_sent), read(&counters.gaps)),
                (1, 50, 30),
                "heard {heard} times"
            );
            assert!(EndWait::of_shard(None, false).ended(c.any_open(), c.eos_sessions(), 0));
        }
    }

    /// `beyond_sent` (an end of stream claiming fewer than arrived) is live in the shard's
    /// counters (for `/metrics` and the store's status), not only in the report at the end; and
    /// not while another session is open, whose messages arrived but are in no count yet.
    #[test]
    fn beyond_sent_is_published_once_no_session_is_open() {
        let mut c = Checks::new(Routing::ByTopic, 1, true);
        let counters = ShardCounters::default();
        for seq in 1..=10 {
            c.check(&frame_of(1, 10, seq, Kind::Data, false), 1);
        }
        for seq in 1..=4 {
            c.check(&frame_of(2, 20, seq, Kind::Data, false), 1);
        }
        // Publisher 1 says 10, as arrived; publisher 2 still sends: nothing beyond.
        c.check(&frame_of(1, 10, 10, Kind::EndOfStream, false), 2);
        c.publish(&counters);
        assert_eq!(counters.beyond_sent.load(Relaxed), 0, "publisher 2's 4 are not beyond what was sent");
        // Publisher 2's end of stream says 2 were sent; 4 arrived.
        let h = Header {
            kind: Kind::EndOfStream,
            flags: 0,
            publisher_id: 2,
            session_id: 20,
            stream_seq: 4,
            topic_seq: 0,
            send_time_ns: 1,
        };
        c.check(&wire::encode(wire::CONTROL_TOPIC, &h, &2u64.to_le_bytes()), 3);
        c.publish(&counters);
        assert_eq!(counters.beyond_sent.load(Relaxed), 2);
        let line = c.end("shard0").expect("said at the end");
        assert!(line.contains("say 12 message(s) were sent, but 14 arrived"), "{line}");
        c.publish(&counters);
        assert_eq!(counters.beyond_sent.load(Relaxed), 2, "the end's figure, the report's");
    }

    /// The reader's idle rounds after `from` up to `to`: a silence check every 100 ms (an idle
    /// reader checks at least that often: the longest idle wait), and what they said.
    fn idle(c: &mut Checks, from: u64, to: u64) -> Vec<Silence> {
        let mut said = Vec::new();
        let mut t = from;
        while t < to {
            t = (t + 100_000_000).min(to);
            said.extend(c.silence(t));
        }
        said
    }

    /// The book handler's by-topic routing goes by a DBN record's venue and instrument: an
    /// instrument renamed mid-file (another topic) stays on its worker. By topic, the rename
    /// moved it to the other worker (its book split in two); a payload too short for a DBN
    /// record still goes by topic.
    #[test]
    fn by_instrument_routing_keeps_a_renamed_instrument_on_its_worker() {
        let by_topic = |t: &[u8]| topic_hash(t) % 2;
        let old: &[u8] = b"HHH";
        let renamed = (0..64).map(|k| format!("III{k}").into_bytes()).find(|t| by_topic(t) != by_topic(old));
        let renamed = renamed.expect("a topic the other worker takes");
        // A DBN record header (length in 4-byte words, rtype, publisher id 1, instrument 41).
        let mut rec = vec![0u8; 56];
        rec[..8].copy_from_slice(&[14, dbn::rtype::MBO, 1, 0, 41, 0, 0, 0]);
        let f = data_frame;
        let mut books = Checks::new(Routing::ByTopic, 2, true).by_instrument(true);
        let mut topics = Checks::new(Routing::ByTopic, 2, true);
        let (a, b) = (f(1, old, &rec), f(2, &renamed, &rec));
        assert_eq!(books.check(&a, 1), books.check(&b, 2), "one worker for instrument 41");
        assert_ne!(topics.check(&a, 1), topics.check(&b, 2), "by topic: two");
        let mut short = Checks::new(Routing::ByTopic, 2, true).by_instrument(true);
        let (a, b) = (f(1, old, &rec[..8]), f(2, &renamed, &rec[..8]));
        assert_ne!(short.check(&a, 1), short.check(&b, 2), "not a DBN record: by topic");
    }

    /// With by-instrument routing on, a frame whose payload is not a DBN record goes by its topic,
    /// as the docs say, however long it is. Before, any payload of 16 bytes or more went by its
    /// bytes 2 to 7: every topic of a text feed with one prefix went to one worker.
    #[test]
    fn by_instrument_routing_routes_other_payloads_by_topic() {
        let payload = b"price=101.25 size=7 side=bid".as_slice();
        let f = |seq: u64, topic: &[u8]| data_frame(seq, topic, payload);
        let mut books = Checks::new(Routing::ByTopic, 4, true).by_instrument(true);
        let mut topics = Checks::new(Routing::ByTopic, 4, true);
        let frames: Vec<Vec<u8>> = (0..32u64).map(|k| f(k + 1, format!("T{k}").as_bytes())).collect();
        let by_books: Vec<_> = frames.iter().enumerate().map(|(k, fr)| books.check(fr, k as u64 + 1)).collect();
        let by_topics: Vec<_> = frames.iter().enumerate().map(|(k, fr)| topics.check(fr, k as u64 + 1)).collect();
        assert!(by_topics.iter().any(|w| *w != by_topics[0]), "the topics take several workers: {by_topics:?}");
        assert_eq!(by_books, by_topics);
    }

    #[test]
    fn silence_begins_after_the_limit_and_ends_with_the_next_frame() {
        let mut c = Checks::new(Routing::ByTopic, 2, true);
        let t0 = 10 * SILENCE_AFTER_NS;
        assert_eq!(idle(&mut c, 0, t0 - 1), vec![], "no silence before the first frame");
        assert!(c.check(&frame(1, Kind::Data), t0).is_some());
        assert_eq!(idle(&mut c, t0, t0 + SILENCE_AFTER_NS - 1), vec![]);
        assert_eq!(c.silence(t0 + SILENCE_AFTER_NS), Some(Silence::Began { since_ns: t0 }));
        assert_eq!(idle(&mut c, t0 + SILENCE_AFTER_NS, t0 + 3 * SILENCE_AFTER_NS), vec![], "said once");
        // A heartbeat ends it too: any frame is a sign of life.
        assert!(c.check(&frame(1, Kind::Heartbeat), t0 + 3 * SILENCE_AFTER_NS).is_none());
        assert_eq!(c.silence(t0 + 3 * SILENCE_AFTER_NS), Some(Silence::Ended { lasted_ns: 3 * SILENCE_AFTER_NS }));
        assert_eq!(c.silence(t0 + 3 * SILENCE_AFTER_NS + 1), None);
        let counters = ShardCounters::default();
        c.publish(&counters);
        assert_eq!(counters.silences.load(Relaxed), 1);
        assert_eq!(counters.longest_silence_ns.load(Relaxed), 3 * SILENCE_AFTER_NS);
        assert_eq!(counters.forwarded_bytes.load(Relaxed), frame(1, Kind::Data).len() as u64);
        assert_eq!(counters.last_lag_ns.load(Relaxed), t0 - 1000, "lag: received minus intended send time");
        assert_eq!(counters.max_lag_ns.load(Relaxed), t0 - 1000);
    }

    #[test]
    fn a_pause_of_the_reader_itself_is_no_silence_until_the_limit_has_passed_since_it_resumed() {
        // Before: a reader paused 8 s (SIGSTOP, a VM pause) said `silent: no frame for 1.5s` at
        // once when it resumed, and `frames again after 8s of silence` at the next heartbeat.
        let mut c = Checks::new(Routing::ByTopic, 1, true);
        let t0 = 10 * SILENCE_AFTER_NS;
        assert!(c.check(&frame(1, Kind::Data), t0).is_some());
        assert_eq!(idle(&mut c, t0, t0 + 500_000_000), vec![]);
        let resumed = t0 + 8_000_000_000;
        assert_eq!(c.silence(resumed), None, "the reader did not run: it cannot tell a silence");
        assert_eq!(idle(&mut c, resumed, resumed + SILENCE_AFTER_NS - 1), vec![]);
        // Still nothing from the publisher: a silence now.
        assert_eq!(c.silence(resumed + SILENCE_AFTER_NS), Some(Silence::Began { since_ns: t0 }));
        let counters = ShardCounters::default();
        c.publish(&counters);
        assert_eq!(counters.silences.load(Relaxed), 1);
        // A frame read after the pause, no silence in between: none said at all.
        let mut c = Checks::new(Routing::ByTopic, 1, true);
        assert!(c.check(&frame(1, Kind::Data), t0).is_some());
        assert_eq!(c.silence(resumed), None);
        assert!(c.check(&frame(2, Kind::Heartbeat), resumed + 1).is_none());
        assert_eq!(idle(&mut c, resumed + 1, resumed + 1_000_000_000), vec![]);
        c.publish(&counters);
        assert_eq!(counters.silences.load(Relaxed), 0);
    }

    #[test]
    fn quiet_after_an_end_of_stream_is_no_silence_until_the_next_frame() {
        let mut c = Checks::new(Routing::ByTopic, 1, true);
        let t0 = 1_000_000_000;
        assert!(c.check(&frame(1, Kind::Data), t0).is_some());
        assert!(c.check(&frame(1, Kind::EndOfStream), t0 + 1).is_none());
        assert_eq!(
            idle(&mut c, t0 + 1, t0 + 10 * SILENCE_AFTER_NS),
            vec![],
            "a publisher that said goodbye is quiet by right"
        );
        // A new frame (a publisher back) arms it again.
        let t1 = t0 + 20 * SILENCE_AFTER_NS;
        assert!(c.check(&frame(1, Kind::Heartbeat), t1).is_none());
        assert_eq!(idle(&mut c, t1, t1 + SILENCE_AFTER_NS - 1), vec![]);
        assert_eq!(c.silence(t1 + SILENCE_AFTER_NS), Some(Silence::Began { since_ns: t1 }));
        assert_eq!(idle(&mut c, t1 + SILENCE_AFTER_NS, t1 + 2 * SILENCE_AFTER_NS), vec![]);
        let counters = ShardCounters::default();
        c.publish(&counters);
        assert_eq!(counters.silences.load(Relaxed), 1);
        assert_eq!(
            counters.longest_silence_ns.load(Relaxed),
            2 * SILENCE_AFTER_NS,
            "the quiet after the end is not in it"
        );
    }

    /// Two publishers on one shard (`--endpoint EP1,EP2`): one's end of stream says nothing of
    /// the other, whose stall is a silence.
    #[test]
    fn one_publishers_end_of_stream_leaves_the_others_silence_said() {
        let mut c = Checks::new(Routing::ByTopic, 1, true);
        let other = |seq, kind| {
            let h = Header {
                kind,
                flags: 0,
                publisher_id: 2,
                session_id: 9,
                stream_seq: seq,
                topic_seq: seq,
                send_time_ns: 1000,
            };
            wire::encode(b"MSFT", &h, &[0u8; 16])
        };
        let t0 = 1_000_000_000;
        assert!(c.check(&frame(1, Kind::Data), t0).is_some());
        assert!(c.check(&other(1, Kind::Data), t0 + 1).is_some());
        assert!(c.check(&frame(1, Kind::EndOfStream), t0 + 2).is_none());
        assert_eq!(idle(&mut c, t0 + 2, t0 + 1 + SILENCE_AFTER_NS), vec![]);
        assert_eq!(
            c.silence(t0 + 2 + SILENCE_AFTER_NS),
            Some(Silence::Began { since_ns: t0 + 2 }),
            "the other is open"
        );
        // The other's end ends that silence; with both ended, quiet is by right.
        assert!(c.check(&other(1, Kind::EndOfStream), t0 + 3 * SILENCE_AFTER_NS).is_none());
        assert!(matches!(c.silence(t0 + 3 * SILENCE_AFTER_NS), Some(Silence::Ended { .. })));
        assert_eq!(c.silence(t0 + 10 * SILENCE_AFTER_NS), None);
    }

    /// The frame a reader's snail croaks on is not handed on (the engine stops
    /// there), but it arrived: counted as accepted (so not handled, never lost:
    /// before, a croak at the reader made the report's `lost` 1 with no gap),
    /// while its lag is the shard's (`lag_max_ms`), as in the scream.
    #[test]
    fn the_frame_a_reader_croaks_on_is_not_forwarded_but_its_lag_is_the_shards() {
        use crate::snail::{Policy, Site, SnailBoard, SnailConfig};
        let ms = 1_000_000;
        let cfg = SnailConfig { policy: Policy::Croak, max_lag_ns: 100 * ms, grace_ns: 200 * ms, ..Default::default() };
        let board = SnailBoard::new(cfg, vec![Site { role: "shard0-reader".into(), shard: Some(0) }]);
        let mut c = Checks::new(Routing::ByTopic, 1, true).with_guard(Guard::new(board.clone(), 0, None));
        let t0 = 1_700_000_000_000_000_000;
        let data = |seq: u64, send_time_ns: u64| frame_sent_at(seq, Kind::Data, send_time_ns);
        assert!(c.check(&data(1, t0 - ms), t0).is_some());
        // Stopped for 3 s: the next frame is 3 s late, above the limit for 2.9 s.
        let t1 = t0 + 3_000 * ms;
        assert!(c.check(&data(2, t0), t1).is_none(), "the engine stops here");
        assert!(c.croaked());
        assert!(board.croak().is_some_and(|s| s.lag_ns == 3_000 * ms));
        let counters = ShardCounters::default();
        c.publish(&counters);
        assert_eq!(counters.forwarded.load(Relaxed), 2, "it arrived: accepted, then not handled");
        assert_eq!(counters.max_lag_ns.load(Relaxed), 3_000 * ms, "the shard's lag, as the scream says");
    }

    /// The self-stall threshold holds for every idle strategy: ten of its longest wait or more
    /// between two calls of an idle reader into its guard.
    #[test]
    fn a_self_stall_is_at_least_ten_of_the_longest_idle_waits() {
        let longest = crate::agent::IdleStrategy::NAMES
            .split(", ")
            .filter_map(crate::agent::IdleStrategy::from_name)
            .filter_map(|s| s.max_wait())
            .max()
            .expect("a strategy that waits");
        assert!(crate::snail::SELF_STALL_NS >= (10 * longest).as_nanos() as u64, "longest wait {longest:?}");
    }

    /// Refused frames are not heard, but a reader reading them runs: a long run of them
    /// is no self-stall, and the silence it is (nothing valid heard) is a STOP as before.
    #[test]
    fn a_run_of_refused_frames_is_silence_not_a_self_stall() {
        use crate::snail::{Policy, Site, SnailBoard, SnailConfig};
        let ms = 1_000_000;
        let cfg = SnailConfig { policy: Policy::Croak, silence_ns: 1_000 * ms, ..Default::default() };
        let board = SnailBoard::new(cfg, vec![Site { role: "shard0-reader".into(), shard: Some(0) }]);
        let mut c = Checks::new(Routing::ByTopic, 1, true).with_guard(Guard::new(board.clone(), 0, None));
        let t0 = 1_700_000_000_000_000_000;
        assert!(c.check(&frame_sent_at(1, Kind::Data, t0), t0).is_some());
        let mut t = t0;
        for _ in 0..300 {
            t += 10 * ms;
            assert!(c.check(b"no nul", t).is_none());
        }
        c.check_silence(t + ms);
        assert!(c.croaked(), "3 s without a valid frame: STOP");
        c.publish(&ShardCounters::default());
        assert_eq!(board.report().sites[0].self_stalls, 0);
    }

    #[test]
    fn refused_frames_are_counted_by_reason_and_the_first_of_each_is_said() {
        let mut c = Checks::new(Routing::ByTopic, 1, true).with_site("shard0-reader");
        let t0 = 1_000_000_000;
        assert!(c.check(b"no nul", t0).is_none());
        let l = c.take_refusal_line().expect("the first is said");
        assert!(l.starts_with("shard0-reader: refused (missing_nul): no NUL"), "{l}");
        assert!(c.check(b"still no nul", t0 + 1).is_none());
        assert_eq!(c.take_refusal_line(), None, "counted, said later in a summary");
        assert!(c.check(b"T\0short", t0 + 2).is_none());
        assert!(c.take_refusal_line().expect("another reason").contains("(short)"));
        // A sequence that jumps implausibly far is refused too.
        assert!(c.check(&frame(1, Kind::Data), t0 + 3).is_some());
        assert!(c.check(&frame(u64::MAX / 2, Kind::Data), t0 + 4).is_none());
        assert!(c.take_refusal_line().expect("implausible").contains("(implausible_sequence)"));
        assert_eq!(c.refusal_summary(t0 + 5, false), None, "no interval yet");
        let s = c.refusal_summary(t0 + SUMMARY_INTERVAL_NS, false).expect("summary due");
        assert!(s.contains("missing_nul=1 (totals: missing_nul=2 short=1 implausible_sequence=1)"), "{s}");
        assert_eq!((c.refusals().count("missing_nul"), c.refusals().total()), (2, 4));
    }

    const T0: u64 = 1_700_000_000_000_000_000;

    /// Shard 0's reader handing off to the one worker at `worker`, `batch_max` frames a drain
    /// round, subscribed to everything, with no end of stream awaited and no publisher
    /// forgotten: what the reader tests do not vary.
    fn test_config(worker: &str, batch_max: usize, handoff: HandOff) -> ReaderConfig {
        ReaderConfig {
            sources: Vec::new(),
            shard: 0,
            batch_max,
            handoff,
            routing: Routing::ByTopic,
            by_instrument: false,
            worker_endpoints: vec![worker.to_string()],
            expect_eos: 0,
            eos_id: 0,
            end_wait: EndWait::Count,
            forget_silent_after_ns: 0,
            full_subscription: true,
            handoff_hwm_msgs: 4,
        }
    }

    /// A reader of `handoff` (to the returned PULL, a worker's; with `reports`, inline: a worker
    /// core of its own shipping there, and the PULL takes nothing) on a SUB fed by the returned
    /// PUB, whose clock reads `T0` first and moves 1 µs on every read: what it reads are its
    /// stamps.
    fn stamped_reader(
        ctx: &zmq::Context,
        name: &str,
        handoff: HandOff,
        reports: Option<crossbeam::channel::Sender<crate::metrics::collector::WorkerReport>>,
    ) -> (zmq::Socket, zmq::Socket, ReaderAgent, Arc<clock::SteppingClock>) {
        let worker = ctx.socket(zmq::PULL).expect("pull");
        worker.bind(&format!("inproc://{name}-worker")).expect("bind");
        let feed = ctx.socket(zmq::PUB).expect("pub");
        feed.bind(&format!("inproc://{name}-feed")).expect("bind");
        let sub = ctx.socket(zmq::SUB).expect("sub");
        sub.connect(&format!("inproc://{name}-feed")).expect("connect");
        sub.set_subscribe(b"").expect("subscribe");
        // Heartbeats until one arrives: the subscription has reached the PUB.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut seq = 1;
        while sub.recv_bytes(zmq::DONTWAIT).is_err() {
            assert!(std::time::Instant::now() < end, "the subscription never reached the PUB");
            feed.send(frame(seq, Kind::Heartbeat), 0).expect("send");
            seq += 1;
            let _ = crate::zmqx::wait_ready(&sub, zmq::POLLIN, Duration::from_millis(10));
        }
        while sub.recv_bytes(zmq::DONTWAIT).is_ok() {}
        let cfg = test_config(&format!("inproc://{name}-worker"), 64, handoff);
        let inline = reports.map(|tx| {
            let (_spares, spare_rx) = crossbeam::channel::bounded(1);
            let link = crate::engine::worker::MetricsLink {
                reports: tx,
                spares: spare_rx,
                interval_ns: Arc::new(AtomicU64::new(1_000_000_000)),
            };
            let handler = crate::engine::handler::HandlerSpec::Latency.build();
            WorkerCore::new(0, 1, handler, link, Default::default(), None, clock::Realtime)
        });
        let counters = Arc::new(ShardCounters::default());
        let mut r = ReaderAgent::new(cfg, sub, ctx, inline, counters, StopFlag::new()).expect("reader");
        let clock = Arc::new(clock::SteppingClock::new(T0, 1_000));
        r.clock = Box::new(clock.clone());
        (feed, worker, r, clock)
    }

    /// Three frames read in one pass: the first sent before the pass's stamp, the second after
    /// it (the clock is read again: T0 + 1 µs), the third after the first stamp but before the
    /// second. Before: all three were stamped T0, the second and third received before they
    /// were sent (their wire latency read as 1 ns, their queue stage longer than their total).
    const SENT: [u64; 3] = [T0 - 500, T0 + 800, T0 + 900];
    const STAMPED: [u64; 3] = [T0, T0 + 1_000, T0 + 1_000];

    #[test]
    fn a_frame_sent_after_the_passs_stamp_is_stamped_again_in_its_batch() {
        let ctx = zmq::Context::new();
        let (feed, worker, mut r, clock) = stamped_reader(&ctx, "stamp-batch", HandOff::Batch, None);
        for (seq, sent) in (1..).zip(SENT) {
            feed.send(frame_sent_at(seq, Kind::Data, sent), 0).expect("send");
        }
        assert!(matches!(r.do_work().expect("work"), Step::Worked(3)), "one pass reads all three");
        assert_eq!(clock.reads(), 2, "one read for the pass, one for the frame sent after it");
        assert_eq!(crate::zmqx::wait_ready(&worker, zmq::POLLIN, Duration::from_secs(10)).ok(), Some(true));
        let msg = worker.recv_bytes(zmq::DONTWAIT).expect("one batch");
        let got: Vec<(u64, u64)> = batch::BatchIter::new(&msg)
            .expect("a batch")
            .map(|(recv_ns, n, f)| {
                let view = wire::decode_checked_topic(f, n).expect("a frame");
                (view.header.send_time_ns, recv_ns)
            })
            .collect();
        assert_eq!(got, SENT.into_iter().zip(STAMPED).collect::<Vec<_>>());
        assert!(got.iter().all(|(sent, recv)| recv >= sent), "never received before it was sent: {got:?}");
    }

    /// Per-message, each frame goes as received behind a stamp of its shard and receive time.
    /// Before, the frame went alone: the worker used its take time as the receive time (wire
    /// held the queue time, queue read 1 ns) and, with several shards, knew no shard.
    #[test]
    fn a_frame_handed_off_on_its_own_carries_its_shard_and_receive_time() {
        let ctx = zmq::Context::new();
        let (feed, worker, mut r, _clock) = stamped_reader(&ctx, "stamp-per-message", HandOff::PerMessage, None);
        let frames: Vec<Vec<u8>> = (1..).zip(SENT).map(|(seq, sent)| frame_sent_at(seq, Kind::Data, sent)).collect();
        for f in &frames {
            feed.send(f, 0).expect("send");
        }
        assert!(matches!(r.do_work().expect("work"), Step::Worked(3)));
        for (f, stamped) in frames.iter().zip(STAMPED) {
            assert_eq!(crate::zmqx::wait_ready(&worker, zmq::POLLIN, Duration::from_secs(10)).ok(), Some(true));
            let parts = worker.recv_multipart(zmq::DONTWAIT).expect("a hand-off");
            assert_eq!(parts.len(), 2, "a stamp, then the frame");
            assert_eq!(batch::read_stamp(&parts[0]), Some((0, stamped)));
            assert_eq!(&parts[1], f, "the frame as received");
        }
    }

    #[test]
    fn an_inline_reader_hands_its_core_the_stamp_read_again() {
        let ctx = zmq::Context::new();
        let (tx, reports) = crossbeam::channel::bounded(4);
        let (feed, _worker, mut r, _clock) = stamped_reader(&ctx, "stamp-inline", HandOff::Inline, Some(tx));
        for (seq, sent) in (1..).zip(SENT) {
            feed.send(frame_sent_at(seq, Kind::Data, sent), 0).expect("send");
        }
        assert!(matches!(r.do_work().expect("work"), Step::Worked(3)));
        r.on_close();
        let report = reports.try_recv().expect("the core's final report");
        let s = &report.stages[0];
        assert_eq!(s.count(), 3);
        // Wire: 500, 200 and 100 ns (before: 500, then 1 ns twice, the floor).
        assert!(s.wire.equivalent(s.wire.min(), 100) && s.wire.equivalent(s.wire.max(), 500), "{:?}", s.wire);
        assert!(s.total.equivalent(s.total.min(), 100), "the latency handler ends at the take, the receive");
    }

    #[test]
    fn a_reader_frees_the_idle_buffers_a_back_pressure_episode_left() {
        let ctx = zmq::Context::new();
        let feed = ctx.socket(zmq::PUB).expect("pub");
        feed.bind("inproc://reader-trim-feed").expect("bind");
        let sub = ctx.socket(zmq::SUB).expect("sub");
        sub.connect("inproc://reader-trim-feed").expect("connect");
        sub.set_subscribe(b"").expect("subscribe");
        let worker = ctx.socket(zmq::PULL).expect("pull");
        worker.set_rcvhwm(2).expect("hwm");
        worker.bind("inproc://reader-trim-worker").expect("bind");
        let cfg = test_config("inproc://reader-trim-worker", 1, HandOff::Batch);
        let counters = Arc::new(ShardCounters::default());
        let mut r = ReaderAgent::new(cfg, sub, &ctx, None, counters.clone(), StopFlag::new()).expect("reader");
        // Every sample ends a window (the reader's own is 30 s), 2 kept spare.
        r.idle_trim = IdleTrim::new(0, 2);
        // The episode: one frame a batch, and the worker takes none, until the reader is blocked.
        let made = |c: &ShardCounters| c.handoff_buffers.load(Relaxed);
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut seq = 1;
        while !matches!(r.do_work().expect("work"), Step::Blocked(_)) {
            assert!(std::time::Instant::now() < end, "never blocked");
            feed.send(frame(seq, Kind::Data), 0).expect("send");
            seq += 1;
            r.idle_wait(Duration::from_millis(10));
        }
        let grown = made(&counters);
        assert!(grown >= 4, "the pool grew with the queue: {grown} buffers");
        // The worker catches up: every batch received, every buffer back in the pool.
        let mut msg = zmq::Message::new();
        loop {
            while worker.recv(&mut msg, zmq::DONTWAIT).is_ok() {}
            // Nothing read, nothing left to send (a flush at the round's start sends one more).
            if matches!(r.do_work().expect("work"), Step::Worked(0)) && !r.staged() {
                if worker.recv(&mut msg, zmq::DONTWAIT).is_err() {
                    break;
                }
                continue;
            }
            assert!(std::time::Instant::now() < end, "the reader never caught up");
            let _ = crate::zmqx::wait_ready(&worker, zmq::POLLIN, Duration::from_millis(10));
        }
        drop(msg);
        let in_use = 1; // the batch being built
        wait_idle(&r, grown as usize - in_use);
        // Idle rounds (a sample at most once a millisecond): the first sample's window saw the
        // pool grow and frees nothing, a later one all idle buffers but 2.
        let freed = |c: &ShardCounters| c.handoff_buffers_freed.load(Relaxed);
        for _ in 0..5 {
            std::thread::sleep(Duration::from_nanos(IDLE_SAMPLE_NS + 100_000));
            assert!(matches!(r.do_work().expect("work"), Step::Worked(0)));
        }
        assert_eq!(freed(&counters), grown - in_use as u64 - 2);
        assert_eq!(r.pool.idle(), 2);
        assert_eq!(made(&counters), grown, "nothing made meanwhile");
    }

    /// Wait (bounded) for `n` buffers back in `r`'s pool: idle there, or already freed by an idle
    /// sample during the catch-up (on a loaded box it can take longer than a sample's 1 ms).
    fn wait_idle(r: &ReaderAgent, n: usize) {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let back = || r.pool.idle() + r.pool.freed() as usize;
        while back() < n {
            assert!(std::time::Instant::now() < end, "{} of {n} buffers back", back());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
