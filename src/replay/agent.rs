//! The replay publisher's agent shell: [`PublisherAgent`] owns one part of a
//! [`Publisher`]'s sockets (all shards, or one with a thread per shard), a
//! cursor on the source (generator, prebuilt frames, capture file, DBN
//! merge), the [`Schedule`] and the faults, and implements
//! [`Agent`](crate::agent::Agent): [`Publisher::run`] starts one per sending
//! thread through [`Runner::start`](crate::agent::Runner::start), which names,
//! pins and idles it and counts its work and CPU time.
//!
//! `do_work` sends a bounded batch of what is due; nothing due yet is
//! `Worked(0)` (the runner's idle strategy then calls `idle_wait`, which naps
//! until the next turn at most, so pacing keeps its accuracy whatever the
//! strategy's longest wait); a lossless send that would block is `Blocked`
//! (the message is kept and `blocked_wait` waits in its own send: an XPUB
//! reports room always, so polling for it cannot wait); after the last
//! message every shard gets its end of stream, then the agent finishes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::faults::{Due, Faults};
use super::schedule::{Schedule, Turn};
use super::{
    encode_data, patch_generated, scale_ns, shard_of, stops_here, Pacing, Publisher, ReplayError, TopicFrame,
    EOS_AFTER_STOP, EOS_TIMEOUT,
};
use crate::agent::{Agent, AgentError, Step};
use crate::clock::monotonic_ns;
use crate::feed::dbn_source::DbnMerge;
use crate::feed::{Generator, GeneratorConfig};
use crate::wire::capture::CaptureReader;
use crate::wire::{self, Kind};
use crate::zmqx::frame::send_bytes;

/// A paced publisher that waits drains its subscription events at least this often (besides
/// every 1 Ki messages): what it sends after a subscriber left is counted from within this.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// A recorded gap longer than this (at the replay's speed) is said when the replay waits for it:
/// a jump in the recorded clock would otherwise leave the replay silent for as long.
const LONG_GAP_NS: u64 = 60_000_000_000;

/// A shard that a lossless subscriber has held back this long is said (and again when it moves).
const HELD_SAID_AFTER_NS: u64 = 1_000_000_000;

/// Messages one `do_work` sends at most (flat out the clock is read once a batch, as it was
/// every 64 messages before).
const BATCH: usize = 64;

/// Where the next message comes from.
enum Cursor {
    Generator {
        gen: Generator,
        payload: Vec<u8>,
        frames: Vec<TopicFrame>,
        /// The frame of the message being sent.
        slot: usize,
    },
    Prebuilt {
        frames: Vec<TopicFrame>,
    },
    Capture {
        path: PathBuf,
        reader: CaptureReader<std::io::BufReader<std::fs::File>>,
        restamp: bool,
        topic_seq: HashMap<Vec<u8>, u64>,
        first_recv_ns: Option<u64>,
        /// The frames of the message loaded (`n_parts` of them; 0: none loaded yet).
        parts: Vec<Vec<u8>>,
        n_parts: usize,
        recv_ns: u64,
        /// Frames of a message being read (a message is sent only when whole).
        used: usize,
    },
    Dbn(Box<DbnCursor>),
}

/// A DBN merge and the record loaded from it (copied, so it can wait for its turn).
struct DbnCursor {
    merge: DbnMerge,
    /// Per topic: (topic sequence, shard).
    slots: Vec<(u64, usize)>,
    slot_of_topic: HashMap<Vec<u8>, usize>,
    slot_of_id: HashMap<u32, usize>,
    span: Option<(u64, u64)>,
    base_ns: Option<u64>,
    loaded: bool,
    ts_ns: u64,
    instrument_id: u32,
    topic: Vec<u8>,
    bytes: Vec<u8>,
    said_rtypes: Vec<u8>,
    said_damage: usize,
    said_backwards: bool,
    said_mappings_dropped: bool,
}

/// Where the frame of the message being sent is.
#[derive(Debug, Clone, Copy)]
enum FrameAt {
    /// A generated topic's template.
    Template(usize),
    /// The publisher's buffer (a DBN record, a control frame).
    Buf,
    /// A capture message's frames, from this one.
    Part(usize),
}

/// A message (or end of stream) started and not yet wholly sent.
#[derive(Debug, Clone, Copy)]
struct Pending {
    shard: usize,
    at: FrameAt,
    /// Frames in the message (1 but for a captured multipart message).
    n_parts: usize,
    /// Data messages it counts as (0 or 1); None: an end of stream.
    data: Option<u64>,
    /// It took a stream sequence of its shard (given back if it is never sent).
    seq: bool,
}

enum Push {
    Done,
    Full,
}

/// A shard whose full pipe (a lossless subscriber that does not read) holds the pending message
/// or end of stream back.
#[derive(Debug, Clone, Copy)]
struct Held {
    shard: usize,
    /// When its send first found the pipe full (mono ns).
    since_ns: u64,
    /// The hold was said: its end is said too.
    said: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Sending,
    /// Sending end of stream from this shard on, each with its deadline (mono ns).
    Ending {
        shard: usize,
        deadline_ns: u64,
    },
    /// Every shard's end of stream is out: waiting until then (mono ns) for the subscribers that
    /// end at one to confirm it ([`Publisher::set_eos_wait`](super::Publisher::set_eos_wait)).
    /// `after_stop`: a stop request came before the wait (the run was stopped while sending),
    /// which it does not end: its deadline is [`EOS_AFTER_STOP`] at most.
    Confirming {
        since_ns: u64,
        deadline_ns: u64,
        after_stop: bool,
    },
    Done,
}

/// One sending thread of a replay.
pub struct PublisherAgent {
    role: String,
    pub(super) p: Publisher,
    cursor: Cursor,
    schedule: Option<Schedule>,
    faults: Faults,
    pacing: Pacing,
    duration_ns: Option<u64>,
    max_msgs: u64,
    stop: crate::agent::StopFlag,
    /// Index of the next message (every message the source yields, sent or left out).
    i: u64,
    /// What the faults plan for message `i`, once asked.
    due: Option<Due>,
    pending: Option<Pending>,
    /// A stall under way: when it started and ends (mono ns).
    stall: Option<(u64, u64)>,
    /// When the next turn is due (mono ns; 0: not waiting for one).
    next_due_ns: u64,
    phase: Phase,
    /// Messages that were pending when `blocked_wait` sent them (counted by the next `do_work`).
    sent_in_wait: usize,
    /// An error met in a wait, for the next `do_work` to return.
    error: Option<ReplayError>,
    /// A shard holding the pending message back, if one is.
    held: Option<Held>,
    /// A lossy data message is being sent past a full pipe ([`Self::pass_over`]): a refusal
    /// now drops it as with one subscriber, without trying again.
    passing_over: bool,
    pub(super) interrupted: bool,
    /// Shards that could not take their end of stream in time (`shardK ENDPOINT`).
    pub(super) eos_missed: Vec<String>,
    /// Shards whose end of stream went out but was not confirmed in time.
    pub(super) eos_unconfirmed: Vec<super::EosUnconfirmed>,
    /// How long the end of stream waited for its confirmation, ns.
    pub(super) eos_waited_ns: u64,
    /// Recorded pace: the previous message's recorded offset (unscaled), and the index + 1 of
    /// the message whose long wait was said.
    prev_offset_ns: u64,
    said_gap_of: u64,
    /// Messages scheduled so far, for the progress display.
    progress: Arc<AtomicU64>,
    /// Set when the schedule is done (before the end of stream), mono ns.
    pub(super) schedule_done: Arc<AtomicU64>,
}

/// The source as a cursor for this part.
/// A file's extent is put in the publisher's [`FilePosition`](super::FilePosition): its
/// market end (DBN metadata) and its size in bytes.
fn cursor(p: &Publisher, source: &super::Source) -> Result<Cursor, ReplayError> {
    Ok(match source {
        super::Source::Generator(cfg) => generator_cursor(p, cfg, false),
        super::Source::Prebuilt(cfg) => generator_cursor(p, cfg, true),
        super::Source::Capture { path, restamp } => Cursor::Capture {
            reader: {
                let reader = CaptureReader::open(path)
                    .map_err(|source| ReplayError::Capture { path: path.to_path_buf(), source })?;
                p.position.set_extent(None, reader.file_len().unwrap_or(0), reader.offset(), 0);
                reader
            },
            path: path.clone(),
            restamp: *restamp,
            topic_seq: HashMap::new(),
            first_recv_ns: None,
            parts: Vec::new(),
            n_parts: 0,
            recv_ns: 0,
            used: 0,
        },
        super::Source::Dbn { paths } => Cursor::Dbn(Box::new(DbnCursor {
            merge: {
                let merge = DbnMerge::open(paths).map_err(ReplayError::Dbn)?;
                p.position.set_extent(
                    merge.market_end_ns(),
                    merge.bytes_total(),
                    merge.bytes_read(),
                    merge.bytes_ahead(),
                );
                merge
            },
            slots: Vec::new(),
            slot_of_topic: HashMap::new(),
            slot_of_id: HashMap::new(),
            span: None,
            base_ns: None,
            loaded: false,
            ts_ns: 0,
            instrument_id: 0,
            topic: Vec::new(),
            bytes: Vec::new(),
            said_rtypes: Vec::new(),
            said_damage: 0,
            said_backwards: false,
            said_mappings_dropped: false,
        })),
    })
}

fn generator_cursor(p: &Publisher, cfg: &GeneratorConfig, prebuilt: bool) -> Cursor {
    let mut gen = Generator::for_shard(cfg, p.part.0, p.part.1);
    if prebuilt {
        // One frame per topic, built once; per message only the stream and topic sequences
        // and the send time are written into it.
        let payload = vec![b'x'; cfg.payload_bytes];
        return Cursor::Prebuilt { frames: p.generated_templates(&gen, &payload) };
    }
    let payload = gen.payload(0).to_vec();
    let frames = p.generated_templates(&gen, &payload);
    Cursor::Generator { gen, payload, frames, slot: 0 }
}

impl PublisherAgent {
    /// An agent named `role` that replays `source` on `p`'s shards.
    pub(super) fn new(
        role: String,
        p: Publisher,
        source: &super::Source,
        pacing: Pacing,
        limits: super::Limits,
        stop: crate::agent::StopFlag,
        progress: Arc<AtomicU64>,
    ) -> Result<Self, ReplayError> {
        let cursor = cursor(&p, source)?;
        let faults = Faults::new(p.faults);
        Ok(PublisherAgent {
            role,
            p,
            cursor,
            schedule: None,
            faults,
            pacing,
            duration_ns: limits.duration.map(|d| d.as_nanos().min(u64::MAX as u128) as u64),
            max_msgs: limits.max_msgs.unwrap_or(u64::MAX),
            stop,
            i: 0,
            due: None,
            pending: None,
            stall: None,
            next_due_ns: 0,
            phase: Phase::Sending,
            sent_in_wait: 0,
            error: None,
            held: None,
            passing_over: false,
            interrupted: false,
            eos_missed: Vec::new(),
            eos_unconfirmed: Vec::new(),
            eos_waited_ns: 0,
            prev_offset_ns: 0,
            said_gap_of: 0,
            progress,
            schedule_done: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Messages scheduled so far.
    pub(super) fn scheduled(&self) -> u64 {
        self.i
    }

    fn zmq_error(&self, e: ReplayError) -> AgentError {
        AgentError::Fatal { role: self.role.clone(), message: e.to_string() }
    }

    /// Send what is pending, without waiting (`block_ms` None) or waiting up to that long in
    /// the send. A lossy publisher's data message whose pipe is full is dropped and counted.
    fn push(&mut self, block_ms: Option<i32>) -> Result<Push, ReplayError> {
        let Some(pd) = self.pending.take() else { return Ok(Push::Done) };
        self.push_this(pd, block_ms)
    }

    /// [`Self::push`] of `pd`, kept as the pending message only when not sent whole (a full
    /// pipe, an error). Passed by value: a message written to `self.pending` and read back at
    /// once cost the send loop about 6 ns a message (a store-forwarding stall, seen with perf).
    #[inline]
    fn push_this(&mut self, mut pd: Pending, block_ms: Option<i32>) -> Result<Push, ReplayError> {
        if let Some(ms) = block_ms {
            let sh = &mut self.p.shards[pd.shard];
            sh.socket.set_sndtimeo(ms).map_err(|source| ReplayError::Zmq {
                context: format!("setting SNDTIMEO on {}", sh.endpoint),
                source,
            })?;
        }
        loop {
            let (part, frame): (usize, &[u8]) = match pd.at {
                FrameAt::Template(slot) => match &self.cursor {
                    Cursor::Generator { frames, .. } | Cursor::Prebuilt { frames } => (0, &frames[slot].frame),
                    _ => (0, &self.p.buf),
                },
                FrameAt::Buf => (0, &self.p.buf),
                FrameAt::Part(k) => match &self.cursor {
                    Cursor::Capture { parts, .. } => (k, &parts[k]),
                    _ => (0, &self.p.buf),
                },
            };
            let more = part + 1 < pd.n_parts;
            // Lossy drops a data message whole: only its first frame may be refused.
            let lossy_first = !self.p.lossless && part == 0 && pd.data.is_some();
            let wait = block_ms.is_some() && !lossy_first;
            let flags = if wait { 0 } else { zmq::DONTWAIT } | if more { zmq::SNDMORE } else { 0 };
            let sh = &mut self.p.shards[pd.shard];
            match send_bytes(&mut sh.socket, frame, flags) {
                Ok(()) if more => pd.at = FrameAt::Part(part + 1),
                Ok(()) => break,
                Err(e) => return self.not_sent(pd, e, lossy_first),
            }
        }
        self.sent_whole(pd);
        Ok(Push::Done)
    }

    /// [`Self::push_this`] of a generated message (one frame, one data message) from the send
    /// loop, without waiting: the loop's common case, sent straight from its template so that
    /// it inlines there (the general push, a call per message through its matches on where
    /// the frame is, cost the flat-out loop about 6 ns a message, seen with perf). Anything
    /// else takes the general push.
    #[inline(always)]
    fn push_now(&mut self, pd: Pending) -> Result<Push, ReplayError> {
        let frame = match (&self.cursor, pd.at) {
            (Cursor::Generator { frames, .. } | Cursor::Prebuilt { frames }, FrameAt::Template(slot))
                if pd.n_parts == 1 =>
            {
                &frames[slot].frame
            }
            _ => return self.push_this(pd, None),
        };
        let sh = &mut self.p.shards[pd.shard];
        match send_bytes(&mut sh.socket, frame, zmq::DONTWAIT) {
            Ok(()) => {
                self.sent_whole(pd);
                Ok(Push::Done)
            }
            Err(e) => {
                let lossy_first = !self.p.lossless && pd.data.is_some();
                self.not_sent(pd, e, lossy_first)
            }
        }
    }

    /// `pd` went out whole: counted, and the next message (or shard's end of stream) is up.
    #[inline(always)]
    fn sent_whole(&mut self, pd: Pending) {
        if self.held.is_some() {
            self.release_held(true);
        }
        match pd.data {
            Some(data) => {
                self.p.shards[pd.shard].count_sent(data);
                self.advance();
            }
            None => {
                self.p.shards[pd.shard].eos_went();
                self.next_eos_shard();
            }
        }
    }

    /// A frame of `pd` was refused with `e`: a lossy publisher's data message refused at its
    /// first frame (`lossy_first`) for a full pipe goes to the shard's other subscribers
    /// ([`Self::pass_over`]) or, with one subscriber or one connection, is dropped; counted
    /// either way (its
    /// sequences are spent). Else a full pipe keeps it pending, and an error is returned (it is
    /// kept too).
    #[cold]
    fn not_sent(&mut self, pd: Pending, e: zmq::Error, lossy_first: bool) -> Result<Push, ReplayError> {
        let sh = &mut self.p.shards[pd.shard];
        match e {
            zmq::Error::EAGAIN if lossy_first && sh.passes_over() && !self.passing_over => self.pass_over(pd),
            zmq::Error::EAGAIN if lossy_first => {
                sh.dropped_at_hwm += 1;
                self.sent_whole(pd);
                Ok(Push::Done)
            }
            zmq::Error::EAGAIN | zmq::Error::EINTR => {
                self.pending = Some(pd);
                self.on_full(pd.shard, pd.data.is_none());
                Ok(Push::Full)
            }
            e => {
                let e = sh.send_error(e);
                self.pending = Some(pd);
                Err(e)
            }
        }
    }

    /// A lossy data message `pd` that a full pipe refused, on a shard with more than one
    /// subscriber on more than one connection ([`Shard::passes_over`](super::Shard)): sent with
    /// the XPUB lossy for this message alone, so libzmq writes it to every
    /// subscriber whose pipe has room and drops it for the full ones, as a lossy PUB does per
    /// subscriber (with NODROP, libzmq refuses a message for all of them while any one's pipe
    /// is full: one subscriber that stopped reading starved the others). Counted in
    /// `dropped_at_hwm`, and the shard marked [`passed_over`](super::Shard::passed_over).
    ///
    /// libzmq (4.3.5, `xpub_t::xsend`, `dist_t`) reads XPUB_NODROP at each send; a pipe that
    /// refuses a message's first frame leaves the matching set for its later frames (the
    /// message stays whole for each subscriber) and libzmq's sending set until its reader has
    /// drained it to the low-water mark: until then the sends skip it with no refusal to count.
    /// With one subscriber, or one connection (a proxy carrying several subscribers' subscriptions,
    /// one pipe), that would make every later drop, and the end of stream, vanish uncounted: it
    /// is dropped there as before ([`Self::not_sent`]).
    #[cold]
    fn pass_over(&mut self, pd: Pending) -> Result<Push, ReplayError> {
        let nodrop = |sh: &mut super::Shard, on: bool| {
            crate::zmqx::set_xpub_nodrop(&mut sh.socket, on).map_err(|source| ReplayError::Zmq {
                context: format!("setting XPUB_NODROP on {}", sh.endpoint),
                source,
            })
        };
        let sh = &mut self.p.shards[pd.shard];
        let dropped = sh.dropped_at_hwm;
        nodrop(sh, false)?;
        self.passing_over = true;
        // Lossy, no frame is refused for a full pipe: the message goes whole, or an error (a
        // refusal all the same is a drop, counted by `not_sent`).
        let sent = self.push_this(pd, None);
        self.passing_over = false;
        let sh = &mut self.p.shards[pd.shard];
        let restored = nodrop(sh, true);
        if matches!(sent, Ok(Push::Done)) && sh.dropped_at_hwm == dropped {
            sh.dropped_at_hwm += 1;
            sh.passed_over = true;
        }
        restored?;
        sent
    }

    /// Shard `shard`'s pipe is full (`eos`: for its end of stream): a hold starts, or goes on.
    /// One that has lasted [`HELD_SAID_AFTER_NS`] is said once, naming the shard, its endpoint
    /// and what ends the wait (an end of stream's with its deadline): a pipe full for a moment,
    /// as every flat-out run's last messages and end of stream meet while a reading subscriber
    /// drains them, is not said (it was, at once, for the end of stream: a false alarm in each
    /// run of `mdsub bench`).
    #[cold]
    fn on_full(&mut self, shard: usize, eos: bool) {
        let now = monotonic_ns();
        if self.held.is_some_and(|h| h.shard != shard) {
            self.release_held(false);
        }
        let held = *self.held.get_or_insert(Held { shard, since_ns: now, said: false });
        if !held_is_said(held, now) {
            return;
        }
        self.held = Some(Held { said: true, ..held });
        let sh = &self.p.shards[shard];
        let k = self.p.part.0 + shard;
        if eos {
            let left = match self.phase {
                Phase::Ending { deadline_ns, .. } => deadline_ns.saturating_sub(now),
                _ => 0,
            };
            crate::diag!(
                "replay: shard{k} {}: the end of stream waits for a lossless subscriber whose pipe is full (it \
                 stopped reading?), up to {} more; then the shard is named as not ended",
                sh.endpoint,
                crate::diag::human_duration(left)
            );
            return;
        }
        let ends = match self.schedule.as_ref().and_then(Schedule::stop_at_ns) {
            Some(stop) => {
                let left = crate::diag::human_duration(stop.saturating_sub(now));
                format!("the duration's end (in {left}) or Ctrl-C end the wait")
            }
            None => "Ctrl-C ends the wait".to_string(),
        };
        // A host gone without a close looks the same from here, and holds until the kernel gives
        // up on the connection unless --peer-timeout ends it sooner.
        let gone = if self.p.peer_timeout_set {
            ""
        } else {
            "; or its host is gone, which holds it for the kernel's ~15 min unless --peer-timeout ends it sooner"
        };
        crate::diag!(
            "replay: shard{k} {}: held back for {} by a lossless subscriber whose pipe is full (it stopped \
             reading?{gone}): sending waits at message {}; {ends}",
            sh.endpoint,
            crate::diag::human_duration(now.saturating_sub(held.since_ns)),
            self.i + 1
        );
    }

    /// The hold ends: its time is counted on its shard, and when it was said, its end is said
    /// (`moved`: the message went; else it was given up, which its own line says).
    #[cold]
    fn release_held(&mut self, moved: bool) {
        let Some(held) = self.held.take() else { return };
        let ns = monotonic_ns().saturating_sub(held.since_ns);
        let sh = &mut self.p.shards[held.shard];
        sh.blocked_ns = sh.blocked_ns.saturating_add(ns);
        if held.said && moved {
            let what = if matches!(self.phase, Phase::Ending { .. }) {
                "the end of stream went"
            } else {
                "sending moves again"
            };
            crate::diag!(
                "replay: shard{} {}: {what} after {} held back by a lossless subscriber",
                self.p.part.0 + held.shard,
                sh.endpoint,
                crate::diag::human_duration(ns)
            );
        }
    }

    /// Message `i` is done with (sent, dropped, or left out on purpose).
    #[inline]
    fn advance(&mut self) {
        self.i += 1;
        self.due = None;
        match &mut self.cursor {
            Cursor::Capture { n_parts, .. } => *n_parts = 0,
            Cursor::Dbn(d) => d.loaded = false,
            _ => {}
        }
    }

    /// Load message `i` from the source (a file's next whole message or record); false at
    /// its end (or its first damage, counted and said).
    fn load(&mut self) -> Result<bool, ReplayError> {
        match &mut self.cursor {
            Cursor::Generator { frames, .. } | Cursor::Prebuilt { frames } => Ok(!frames.is_empty()),
            Cursor::Capture { path, reader, parts, n_parts, recv_ns, used, .. } => {
                while *n_parts == 0 {
                    let rec = match reader.next_record() {
                        Err(e) => match e.damage_reason() {
                            Some(reason) => {
                                if self.p.say_refusals {
                                    crate::diag!(
                                        "replay: refused ({reason}): capture file {}: {e} (record {}; the {} records \
                                         before it were replayed{}, {})",
                                        path.display(),
                                        reader.records() + 1,
                                        reader.records(),
                                        if *used > 0 {
                                            ", except the first frames of the message it is part of"
                                        } else {
                                            ""
                                        },
                                        stops_here(reason)
                                    );
                                }
                                *self.p.refused.entry(reason.to_string()).or_default() += 1;
                                return Ok(false);
                            }
                            None => return Err(ReplayError::Capture { path: path.clone(), source: e }),
                        },
                        Ok(None) if *used > 0 => {
                            // A clean end of file inside a multipart message (its last record
                            // says more frames follow): the message is not whole, so it is not
                            // sent, and that is damage like a cut-off record.
                            let reason = "truncated_tail";
                            if self.p.say_refusals {
                                let last = reader.records();
                                let first = last + 1 - *used as u64;
                                crate::diag!(
                                    "replay: refused ({reason}): capture file {}: it ends inside a multipart \
                                     message, after {} of its frames (records {first}-{last}, the last with more \
                                     to follow; the {} records before them were replayed, not this message, {})",
                                    path.display(),
                                    *used,
                                    first - 1,
                                    stops_here(reason)
                                );
                            }
                            *self.p.refused.entry(reason.to_string()).or_default() += 1;
                            *used = 0;
                            return Ok(false);
                        }
                        Ok(None) => return Ok(false),
                        Ok(Some(r)) => r,
                    };
                    if *used == parts.len() {
                        parts.push(Vec::new());
                    }
                    parts[*used].clear();
                    parts[*used].extend_from_slice(rec.frame);
                    *used += 1;
                    if rec.more {
                        continue;
                    }
                    let n = std::mem::take(used);
                    // A recorded control frame is skipped: this replay sends its own.
                    let control = n == 1 && super::is_recorded_control(&parts[0]);
                    if !control {
                        *n_parts = n;
                        *recv_ns = rec.recv_ns;
                    }
                    self.p.position.at_bytes(reader.offset(), 0);
                }
                Ok(true)
            }
            Cursor::Dbn(d) => {
                if d.loaded {
                    return Ok(true);
                }
                if d.merge.skipped().len() != d.said_rtypes.len()
                    || d.merge.damage().len() != d.said_damage
                    || (!d.said_backwards && d.merge.backwards().0 > 0)
                    || (!d.said_mappings_dropped && d.merge.symbol_mappings_dropped().0 > 0)
                {
                    say_dbn_refusals(self.p.say_refusals, d);
                }
                let Some(rec) = d.merge.next_record() else {
                    // Read to the end: no read-ahead left, the bytes say whole.
                    self.p.position.at_bytes(d.merge.bytes_read(), d.merge.bytes_ahead());
                    return Ok(false);
                };
                d.ts_ns = rec.ts_recv_ns;
                d.instrument_id = rec.instrument_id;
                d.topic.clear();
                d.topic.extend_from_slice(rec.topic);
                d.bytes.clear();
                d.bytes.extend_from_slice(rec.bytes);
                d.loaded = true;
                d.base_ns.get_or_insert(d.ts_ns);
                self.p.position.at_record(d.ts_ns);
                self.p.position.at_bytes(d.merge.bytes_read(), d.merge.bytes_ahead());
                Ok(true)
            }
        }
    }

    /// The recorded offset of the loaded message from the source's first (files).
    fn recorded_offset(&mut self) -> u64 {
        match &mut self.cursor {
            Cursor::Capture { first_recv_ns, recv_ns, .. } => {
                recv_ns.saturating_sub(*first_recv_ns.get_or_insert(*recv_ns))
            }
            Cursor::Dbn(d) => d.ts_ns.saturating_sub(d.base_ns.unwrap_or(d.ts_ns)),
            _ => 0,
        }
    }

    /// Start new sessions on every shard (a restart on purpose); the source's sequences start over.
    fn restart(&mut self) {
        self.p.restarts += 1;
        let mut seed = crate::feed::SplitMix64::new(crate::clock::realtime_ns() ^ self.p.restarts.rotate_left(32));
        for sh in &mut self.p.shards {
            let old = sh.session_id;
            while sh.session_id == old {
                sh.session_id = seed.next_u64();
            }
            sh.stream_seq = 0;
            sh.data_sent = 0;
        }
        match &mut self.cursor {
            Cursor::Generator { gen, payload, frames, .. } => *frames = self.p.generated_templates(gen, payload),
            Cursor::Capture { topic_seq, .. } => topic_seq.clear(),
            Cursor::Dbn(d) => d.slots.iter_mut().for_each(|s| s.0 = 0),
            Cursor::Prebuilt { .. } => {}
        }
    }

    /// Make the loaded message the one sent at `send_time_ns` (its sequences are spent): what
    /// to push, or None when the source has no message for it.
    fn encode(&mut self, send_time_ns: u64) -> Option<Pending> {
        let shards = self.p.shards.len();
        match &mut self.cursor {
            Cursor::Generator { gen, frames, slot, .. } => {
                *slot = gen.next_topic();
                let tf = frames.get_mut(*slot)?;
                tf.topic_seq += 1;
                let sh = &mut self.p.shards[tf.shard];
                sh.stream_seq += 1;
                patch_generated(&mut tf.frame, tf.topic_len, sh.stream_seq, tf.topic_seq, send_time_ns, self.i);
                Some(Pending { shard: tf.shard, at: FrameAt::Template(*slot), n_parts: 1, data: Some(1), seq: true })
            }
            Cursor::Prebuilt { frames } => {
                let slot = (self.i % frames.len() as u64) as usize;
                let tf = &mut frames[slot];
                let sh = &mut self.p.shards[tf.shard];
                sh.stream_seq += 1;
                tf.topic_seq += 1;
                wire::patch_sequences(&mut tf.frame, tf.topic_len, sh.stream_seq, tf.topic_seq, send_time_ns);
                Some(Pending { shard: tf.shard, at: FrameAt::Template(slot), n_parts: 1, data: Some(1), seq: true })
            }
            Cursor::Capture { restamp, topic_seq, parts, n_parts, .. } => {
                let view = if *n_parts == 1 { wire::decode(&parts[0]).ok() } else { None };
                let k = match view {
                    // Verbatim mdsub frames keep their publisher's stream whole on one shard
                    // (its stream sequence would show false gaps if split).
                    Some(v) if !*restamp => {
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
                let is_data = view.is_some();
                if *restamp {
                    if let Some(v) = view {
                        let seq = match topic_seq.get_mut(v.topic) {
                            Some(s) => s,
                            None => topic_seq.entry(v.topic.to_vec()).or_insert(0),
                        };
                        *seq += 1;
                        let s = *seq;
                        // Encode from the borrowed view into the buffer, then swap it in.
                        encode_data(&mut self.p.shards[k], &mut self.p.buf, v.topic, s, send_time_ns, v.payload);
                        std::mem::swap(&mut parts[0], &mut self.p.buf);
                    }
                }
                Some(Pending {
                    shard: k,
                    at: FrameAt::Part(0),
                    n_parts: *n_parts,
                    data: Some(is_data as u64),
                    seq: *restamp && is_data,
                })
            }
            Cursor::Dbn(d) => {
                let d = &mut **d;
                let slot = *d.slot_of_id.entry(d.instrument_id).or_insert_with(|| {
                    *d.slot_of_topic.entry(d.topic.clone()).or_insert_with(|| {
                        d.slots.push((0, shard_of(&d.topic, shards)));
                        d.slots.len() - 1
                    })
                });
                let entry = &mut d.slots[slot];
                entry.0 += 1;
                let (seq, k) = *entry;
                encode_data(&mut self.p.shards[k], &mut self.p.buf, &d.topic, seq, send_time_ns, &d.bytes);
                let ts = d.ts_ns;
                d.span = Some(d.span.map_or((ts, ts), |(first, last)| (first, last.max(ts))));
                Some(Pending { shard: k, at: FrameAt::Buf, n_parts: 1, data: Some(1), seq: true })
            }
        }
    }

    /// Send what is due, up to [`BATCH`] messages.
    fn send_batch(&mut self) -> Result<Step, ReplayError> {
        let mut n = std::mem::take(&mut self.sent_in_wait);
        if self.pending.is_some() {
            match self.push(None)? {
                Push::Full => {
                    // A lossless subscriber holds the message back: a stop request, or the
                    // duration's end (time elapsed, whatever the pace), gives it up.
                    let (stopped, now) = (self.stop.is_stopped(), monotonic_ns());
                    let over = self.schedule.as_ref().is_some_and(|s| s.is_over(now));
                    if (stopped || over) && self.abandon_pending() {
                        self.interrupted |= stopped;
                        if let Some(s) = self.schedule.as_mut() {
                            s.gave_up(now);
                        }
                        if over && !stopped {
                            self.say_held_back();
                        }
                        self.finish_schedule();
                        return Ok(Step::Worked(n));
                    }
                    return Ok(Step::Blocked(n));
                }
                Push::Done => n += 1,
            }
        }
        if self.stop.is_stopped() {
            self.interrupted = true;
            self.finish_schedule();
            return Ok(Step::Worked(n));
        }
        let now = monotonic_ns();
        if self.schedule.is_none() {
            // The schedule starts with the first turn, on the sending thread. SAFETY:
            // PR_SET_TIMERSLACK only changes this thread's timer slack (so the naps until a turn
            // are accurate).
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
            self.schedule = Some(Schedule::new(self.pacing, self.duration_ns, now, crate::clock::realtime_ns()));
        }
        self.next_due_ns = 0;
        for _ in 0..BATCH {
            if self.i >= self.max_msgs {
                self.finish_schedule();
                break;
            }
            if let Some((started, until)) = self.stall {
                if now < until {
                    // The duration ends a stall too.
                    let Some(schedule) = self.schedule.as_ref() else { break };
                    if schedule.is_over(now) {
                        self.finish_schedule();
                        break;
                    }
                    self.next_due_ns = schedule.stop_at_ns().map_or(until, |stop| until.min(stop));
                    break;
                }
                let paused = now.saturating_sub(started);
                self.p.paused += Duration::from_nanos(paused);
                if let Some(s) = self.schedule.as_mut() {
                    s.paused(paused);
                }
                self.stall = None;
            }
            if !self.load()? {
                self.finish_schedule();
                break;
            }
            if self.due.is_none() {
                // Every 1 Ki messages: progress, and a subscriber that left is said while the
                // run goes on.
                if self.i & 0x3ff == 0 {
                    self.progress.store(self.i, Ordering::Relaxed);
                    self.p.drain_subscriptions()?;
                }
                let due = self.faults.due(self.i).unwrap_or_default();
                self.due = Some(due);
                if due.restart {
                    self.restart();
                }
                if let Some(d) = due.pause {
                    // Stall: send nothing, not even heartbeats, while the schedule runs on.
                    self.stall = Some((now, now.saturating_add(d.as_nanos().min(u64::MAX as u128) as u64)));
                    if let Some(s) = self.schedule.as_mut() {
                        s.restamp();
                    }
                    continue;
                }
            }
            let (offset, recorded) = match self.pacing {
                Pacing::Recorded { speed } => {
                    let recorded = self.recorded_offset();
                    (Some(scale_ns(recorded, speed)), recorded)
                }
                _ => (None, 0),
            };
            let Some(schedule) = self.schedule.as_mut() else { break };
            let turn = match offset {
                Some(o) => schedule.turn_at(o, now),
                None => schedule.turn(self.i, now),
            };
            let send_time_ns = match turn {
                Turn::Send(t) => t,
                Turn::Over => {
                    self.finish_schedule();
                    break;
                }
                Turn::Wait(left) => {
                    self.next_due_ns = now.saturating_add(left);
                    if let Pacing::Recorded { speed } = self.pacing {
                        self.say_long_gap(recorded, speed, left);
                    }
                    self.on_wait(now)?;
                    break;
                }
            };
            self.prev_offset_ns = recorded;
            let Some(pending) = self.encode(send_time_ns) else {
                self.finish_schedule();
                break;
            };
            if self.due.is_some_and(|d| d.drop) {
                // The message's sequence numbers are used up: the gap is the drop. It counts in
                // its shard's end of stream like every message numbered (docs/WIRE.md), so an
                // ended session counts it as a session that never ended does (by its last
                // sequence): lost, with the gap.
                self.p.dropped_on_purpose += 1;
                self.p.shards[pending.shard].data_sent += pending.data.unwrap_or(0);
                self.advance();
                continue;
            }
            match self.push_now(pending)? {
                Push::Full => return Ok(Step::Blocked(n)),
                Push::Done => n += 1,
            }
        }
        self.progress.store(self.i, Ordering::Relaxed);
        Ok(Step::Worked(n))
    }

    /// Give up the pending message (a stop request, or the duration's end while a lossless
    /// subscriber holds it back): its stream sequence is given back, so the end of stream does
    /// not count it lost at the tail (it never left). False, and kept, when part of it was sent
    /// (a multipart message's later frames always fit: libzmq counts a message against the HWM
    /// by its last frame, so they go out on the next push).
    fn abandon_pending(&mut self) -> bool {
        let Some(pd) = self.pending else { return true };
        if matches!(pd.at, FrameAt::Part(k) if k > 0) {
            return false;
        }
        if pd.seq {
            let sh = &mut self.p.shards[pd.shard];
            sh.stream_seq = sh.stream_seq.saturating_sub(1);
        }
        self.pending = None;
        self.release_held(false);
        true
    }

    /// Say that the duration ended while a lossless subscriber held the publisher back.
    fn say_held_back(&self) {
        crate::diag!(
            "replay: the duration is over while a lossless subscriber holds the publisher back (its pipe is \
             full): sending stops at message {}, the end of stream follows (each shard waits at most {} for it)",
            self.i + 1,
            crate::diag::human_duration_of(EOS_TIMEOUT)
        );
    }

    /// At a recorded pace, the loaded message is due `left` ns from now: a gap from the one
    /// before longer than [`LONG_GAP_NS`] at this speed (a jump in the recorded clock, a
    /// capture of two sessions) is said once, with its place and the wait, instead of a
    /// silent wait (a stop request or the duration's end still ends it).
    fn say_long_gap(&mut self, recorded_ns: u64, speed: f64, left: u64) {
        let gap = recorded_ns.saturating_sub(self.prev_offset_ns);
        if self.i == 0 || self.said_gap_of == self.i + 1 || scale_ns(gap, speed) <= LONG_GAP_NS {
            return;
        }
        self.said_gap_of = self.i + 1;
        let place = match &self.cursor {
            Cursor::Capture { path, reader, .. } => {
                format!("capture file {}, record {}", path.display(), reader.records())
            }
            Cursor::Dbn(d) => format!("DBN record with receive time {} ns", d.ts_ns),
            _ => String::new(),
        };
        crate::diag!(
            "replay: message {} ({place}) is recorded {} after the one before: at {speed}x the replay waits {} \
             for it (a jump in the recorded clock?); --duration or Ctrl-C end the wait",
            self.i + 1,
            crate::diag::human_duration(gap),
            crate::diag::human_duration(left)
        );
    }

    /// Waiting for a turn at `now`: heartbeat when it is time (which drains the subscription
    /// events too), else drain them if [`DRAIN_EVERY`] has passed, so a subscriber that left is
    /// seen, and what is sent after it is counted, within about that long at any pace.
    fn on_wait(&mut self, now: u64) -> Result<(), ReplayError> {
        let heartbeat = self.schedule.as_mut().is_some_and(|s| s.heartbeat_due(now));
        if heartbeat {
            self.p.heartbeat_once()
        } else if self.p.drained_at.elapsed() >= DRAIN_EVERY {
            self.p.drain_subscriptions()
        } else {
            Ok(())
        }
    }

    /// The schedule is done (its end, the limits, the source's end, or a stop request): what
    /// it achieved is kept, and the end of stream follows.
    fn finish_schedule(&mut self) {
        if self.phase != Phase::Sending {
            return;
        }
        self.p.achieved_msgs_per_sec = self.schedule.as_ref().and_then(Schedule::achieved_msgs_per_sec);
        self.p.turns_mono_ns = self.schedule.as_ref().and_then(Schedule::turns_mono_ns);
        if let Some((started, _)) = self.stall.take() {
            self.p.paused += Duration::from_nanos(monotonic_ns().saturating_sub(started));
        }
        self.progress.store(self.i, Ordering::Relaxed);
        self.schedule_done.store(monotonic_ns().max(1), Ordering::Release);
        if let Cursor::Dbn(d) = &mut self.cursor {
            say_dbn_refusals(self.p.say_refusals, d);
            self.p.ts_recv_backwards = d.merge.backwards().0;
            self.p.symbol_mappings_dropped = d.merge.symbol_mappings_dropped().0;
            self.p.skipped_by_rtype = d.merge.skipped().iter().map(|(rt, n)| (format!("0x{rt:02x}"), *n)).collect();
            self.p.market_span_ns = d.span;
            for e in d.merge.take_damage() {
                if let Some(reason) = e.damage_reason() {
                    *self.p.refused.entry(reason.to_string()).or_default() += 1;
                }
            }
        }
        self.phase = Phase::Ending { shard: 0, deadline_ns: 0 };
    }

    /// End of stream on the next shard (its own deadline starts).
    fn next_eos_shard(&mut self) {
        if let Phase::Ending { shard, .. } = self.phase {
            self.phase = Phase::Ending { shard: shard + 1, deadline_ns: 0 };
        }
    }

    /// The pending message is an end of stream: the subscription events are read right before
    /// each try (a held-back one's blocked send runs the socket's commands in between), so the
    /// count its wait starts from (`Shard::eos_went`) is of the subscribers it goes to. Read once
    /// before the first shard's alone, a later shard's subscriber that left while an earlier
    /// shard's end of stream was held back by a full pipe (up to [`EOS_TIMEOUT`]) was still
    /// waited for, and said not to have confirmed. Not after the send: a confirmation that came
    /// at once would be taken for the count's.
    fn drain_before_eos(&mut self) -> Result<(), ReplayError> {
        if self.pending.is_some_and(|p| p.data.is_none()) {
            self.p.drain_subscriptions()?;
        }
        Ok(())
    }

    /// Send end of stream on every shard: payload = mdsub data frames numbered in its session
    /// (u64 LE): sent, dropped at the SNDHWM, or left out on purpose.
    /// Sent lossless even by a lossy publisher, waiting at most [`EOS_TIMEOUT`] per shard (1 s
    /// after a stop request); a shard that cannot take it in time is counted in `eos_missed`.
    fn end_step(&mut self) -> Result<Step, ReplayError> {
        let n = std::mem::take(&mut self.sent_in_wait);
        loop {
            let Phase::Ending { shard, deadline_ns } = self.phase else { return Ok(Step::Finished(n)) };
            if shard == 0 && deadline_ns == 0 && self.pending.is_none() {
                // A subscriber that left during a flat-out run (no wait drained the
                // subscriptions) is said now.
                self.p.drain_subscriptions()?;
                self.p.sending = false;
            }
            if shard >= self.p.shards.len() {
                if self.p.eos_wait.is_zero() {
                    self.phase = Phase::Done;
                    return Ok(Step::Finished(n));
                }
                // A run stopped while sending leaves its subscribers a moment to confirm (its
                // end of stream went out just now), as it left the end of stream a moment to go.
                let after_stop = self.stop.is_stopped();
                let wait = if after_stop { self.p.eos_wait.min(EOS_AFTER_STOP) } else { self.p.eos_wait };
                let (wait, now) = (wait.as_nanos().min(u64::MAX as u128) as u64, monotonic_ns());
                let deadline_ns = now.saturating_add(wait);
                self.phase = Phase::Confirming { since_ns: now, deadline_ns, after_stop };
                // Looked at now: with nobody to wait for, the run ends without a nap first.
                return Ok(match self.confirm_step(now, deadline_ns, after_stop)? {
                    Step::Finished(k) => Step::Finished(n + k),
                    Step::Worked(k) => Step::Worked(n + k),
                    Step::Blocked(k) => Step::Blocked(n + k),
                });
            }
            let now = monotonic_ns();
            if deadline_ns == 0 {
                let wait = if self.stop.is_stopped() { EOS_AFTER_STOP } else { EOS_TIMEOUT };
                self.phase = Phase::Ending { shard, deadline_ns: now + wait.as_nanos() as u64 };
                self.p.encode_control(shard, Kind::EndOfStream);
                self.pending = Some(Pending { shard, at: FrameAt::Buf, n_parts: 1, data: None, seq: false });
            }
            self.drain_before_eos()?;
            match self.push(None)? {
                Push::Done => {}
                Push::Full if now >= deadline_ns && deadline_ns != 0 => {
                    self.pending = None;
                    self.release_held(false);
                    let sh = &self.p.shards[shard];
                    self.eos_missed.push(format!("shard{} {}", self.p.part.0 + shard, sh.endpoint));
                    self.next_eos_shard();
                }
                Push::Full => return Ok(Step::Blocked(n)),
            }
        }
    }
}

impl PublisherAgent {
    /// Wait for the subscribers that end at an end of stream to confirm it, until `deadline_ns`
    /// or a stop request (one that came before the wait, `after_stop`, does not end it): the
    /// subscription events are read, a shard where a subscriber took the control topic since
    /// its end of stream went out (a reconnect) sends it again, and the agent finishes once no
    /// shard waits; what is still waited for then is said and kept.
    fn confirm_step(&mut self, since_ns: u64, deadline_ns: u64, after_stop: bool) -> Result<Step, ReplayError> {
        self.p.drain_subscriptions()?;
        let first = self.p.part.0;
        let mut n = 0;
        for k in 0..self.p.shards.len() {
            // The first resend of a shard is said; the others are summed when the wait ends
            // (a subscriber that reconnects over and over would flood stderr, a line each).
            if !(self.p.shards[k].eos_resend_due() && self.p.resend_eos(k)?) {
                continue;
            }
            n += 1;
            if self.p.shards[k].eos_resent == 1 {
                crate::diag!(
                    "replay: shard{} {}: a subscriber took the control topic after the end of stream went out (a \
                     reconnect?): sent it again (further resends are counted, eos_resent)",
                    first + k,
                    self.p.shards[k].endpoint
                );
            }
        }
        let now = monotonic_ns();
        for k in 0..self.p.shards.len() {
            if self.p.shards[k].eos_repeat_due(now) {
                self.p.repeat_eos(k, now)?;
            }
        }
        let waiting = |sh: &super::Shard| sh.eos_waiting() > 0;
        // Nothing waited for (no such subscriber when the ends of stream went out): no wait.
        let awaited = self.p.shards.iter().any(super::Shard::eos_awaited);
        self.eos_waited_ns = if awaited { now.saturating_sub(since_ns) } else { 0 };
        if !self.p.shards.iter().any(waiting) {
            self.say_resends();
            self.phase = Phase::Done;
            return Ok(Step::Finished(n));
        }
        let stopped = !after_stop && self.stop.is_stopped();
        if !stopped && now < deadline_ns {
            return Ok(Step::Worked(n));
        }
        for (k, sh) in self.p.shards.iter().enumerate().filter(|(_, sh)| waiting(sh)) {
            let shard = first + k;
            let left = sh.eos_waiting();
            let ended = if stopped {
                "a stop request ended the wait".to_string()
            } else if after_stop {
                let wait = crate::diag::human_duration(deadline_ns.saturating_sub(since_ns));
                format!("within {wait} (a run stopped while sending waits no longer)")
            } else {
                format!("after {} (--eos-wait)", crate::diag::human_duration_of(self.p.eos_wait))
            };
            // A resend held back by a full pipe until now: the reconnected subscriber never got
            // it, and a lossless subscriber on the shard is far behind (or stopped reading).
            let resend_pending = sh.eos_resend_due();
            let why = if resend_pending {
                "; it was to go again to a subscriber that took the control topic after it went (a reconnect?), \
                 but a full pipe held the resend back until then: a lossless subscriber is far behind (a longer \
                 --eos-wait lets it catch up) or stopped reading; they may not have it"
            } else {
                "; they may not have it (a connection dead without a close, a subscriber still behind or killed)"
            };
            // Which ones, of those that named themselves (an older engine or a proxy does not).
            let subscribers = sh.unconfirmed_named();
            let named = if subscribers.is_empty() { String::new() } else { format!(" ({})", subscribers.join(", ")) };
            crate::diag!(
                "replay: shard{shard} {}: the end of stream is not confirmed by {left} subscriber(s) that end at \
                 one{named}, {ended}{why}, and may not know their loss",
                sh.endpoint
            );
            let endpoint = sh.endpoint.clone();
            let unconfirmed = super::EosUnconfirmed { shard, endpoint, waiting: left, subscribers, resend_pending };
            self.eos_unconfirmed.push(unconfirmed);
        }
        self.say_resends();
        self.phase = Phase::Done;
        Ok(Step::Finished(n))
    }

    /// Once the wait ends: each shard that sent its end of stream again more than once (only the
    /// first was said), with how often.
    fn say_resends(&self) {
        let first = self.p.part.0;
        for (k, sh) in self.p.shards.iter().enumerate().filter(|(_, sh)| sh.eos_resent > 1) {
            crate::diag!(
                "replay: shard{} {}: sent the end of stream again {} times in all, once for each subscriber that \
                 took the control topic after it went out (reconnects)",
                first + k,
                sh.endpoint,
                sh.eos_resent
            );
        }
    }
}

impl Agent for PublisherAgent {
    fn role(&self) -> &str {
        &self.role
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        if let Some(e) = self.error.take() {
            return Err(self.zmq_error(e));
        }
        let step = match self.phase {
            Phase::Sending => self.send_batch(),
            Phase::Ending { .. } => self.end_step(),
            Phase::Confirming { since_ns, deadline_ns, after_stop } => {
                self.confirm_step(since_ns, deadline_ns, after_stop)
            }
            Phase::Done => Ok(Step::Finished(0)),
        };
        step.map_err(|e| self.zmq_error(e))
    }

    /// Nap until the next turn (or the stall's end), at most `timeout`: about 2 µs before
    /// it, spinning the rest, so the turn is taken on time whatever the idle strategy.
    fn idle_wait(&mut self, timeout: Duration) {
        if let Phase::Confirming { deadline_ns, .. } = self.phase {
            // Until a subscription event, the wait's end, or (a resend that found a pipe full)
            // a short while.
            let resend = self.p.shards.iter().any(super::Shard::eos_resend_due);
            let now = monotonic_ns();
            let mut wait = timeout.min(Duration::from_nanos(deadline_ns.saturating_sub(now)));
            if resend {
                wait = wait.min(Duration::from_millis(1));
            }
            // A repeat for a subscriber a lossy message went past: at its turn.
            if let Some(next_ns) = self.p.shards.iter().filter_map(|sh| sh.eos_repeat_in(now)).min() {
                wait = wait.min(Duration::from_nanos(next_ns.max(1_000_000)));
            }
            let _ = crate::zmqx::wait_any(self.p.shards.iter().map(|s| &s.socket), zmq::POLLIN, wait);
            return;
        }
        let left = self.next_due_ns.saturating_sub(monotonic_ns());
        let left = left.min(timeout.as_nanos().min(u64::MAX as u128) as u64);
        if left > 4_000 {
            std::thread::sleep(Duration::from_nanos(left - 2_000));
        } else {
            std::hint::spin_loop();
        }
    }

    /// Wait in the pending message's own send, up to `timeout` (at least 1 ms, libzmq's unit),
    /// and never past the end of stream's deadline or the duration's end.
    fn blocked_wait(&mut self, timeout: Duration) {
        let mut ms = timeout.as_millis().clamp(1, 100) as i32;
        let until = match self.phase {
            Phase::Ending { deadline_ns, .. } => Some(deadline_ns),
            _ => self.schedule.as_ref().and_then(Schedule::stop_at_ns),
        };
        if let Some(until) = until {
            let left_ms = until.saturating_sub(monotonic_ns()) / 1_000_000;
            ms = ms.min(left_ms.clamp(1, i32::MAX as u64) as i32);
        }
        let was = self.pending.and_then(|p| p.data);
        if let Err(e) = self.drain_before_eos() {
            self.error = Some(e);
            return;
        }
        match self.push(Some(ms)) {
            Ok(Push::Done) if was.is_some() => self.sent_in_wait += 1,
            Ok(_) => {}
            Err(e) => self.error = Some(e),
        }
    }
}

/// Is a hold (`held`, at `now_ns`) to be said now? Once, when it has lasted
/// [`HELD_SAID_AFTER_NS`]: data and the end of stream alike.
fn held_is_said(held: Held, now_ns: u64) -> bool {
    !held.said && now_ns.saturating_sub(held.since_ns) >= HELD_SAID_AFTER_NS
}

/// Say (stderr) each record type not replayed, each damaged file and the first record received
/// before the one ahead of it in its file, and the first instrument id with more symbol mappings
/// than are kept, the first time they are met (unless told not to:
/// [`Publisher::say_refusals`]); the counts are in the run's stats
/// (`skipped_by_rtype`, `ts_recv_backwards`, `symbol_mappings_dropped`) and its summary line.
fn say_dbn_refusals(say: bool, d: &mut DbnCursor) {
    let (merge, said_rtypes, said_damage) = (&d.merge, &mut d.said_rtypes, &mut d.said_damage);
    if let (false, (_, Some(first))) = (d.said_backwards, merge.backwards()) {
        d.said_backwards = true;
        if say {
            crate::diag!(
                "replay: {first}: a historical DBN file is in receive-time order, so the file is corrupted \
                 (a .dbn.zst written without a zstd checksum hands corrupted bytes on), or it was not \
                 written in that order (a live recording mixing schemas may not be); sent as it is, and \
                 every such record counted (ts_recv_backwards); said once"
            );
        }
    }
    if let (false, (_, Some(full))) = (d.said_mappings_dropped, merge.symbol_mappings_dropped()) {
        d.said_mappings_dropped = true;
        if say {
            crate::diag!(
                "replay: refused (symbol_mappings_full): {}; later mappings past a cap ({}) are dropped and \
                 counted (symbol_mappings_dropped), and their ids' records are named from the ones kept; said once",
                full.text(),
                crate::feed::dbn_source::symbol_mapping_caps()
            );
        }
    }
    for rt in merge.skipped().keys() {
        if !said_rtypes.contains(rt) {
            said_rtypes.push(*rt);
            if say {
                crate::diag!(
                    "replay: refused (unreplayed_rtype): {} records (rtype 0x{rt:02x}) are not replayed (skipped and \
                     counted){}",
                    dbn::RType::try_from(*rt).map_or("unknown", |t| t.as_str()),
                    if *rt == dbn::rtype::SYMBOL_MAPPING {
                        "; the symbols they give name the topics of the records they map"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    for e in merge.damage().iter().skip(*said_damage).filter(|_| say) {
        let reason = e.damage_reason().unwrap_or("bad_record");
        // `the other files go on` was said of a file replayed alone too.
        let others = if merge.files() > 1 { ", the other files go on" } else { "" };
        crate::diag!("replay: refused ({reason}): {e}; {}{others}", stops_here(reason));
    }
    *said_damage = merge.damage().len();
}
