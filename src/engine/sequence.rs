//! Sequence checks on every data frame (a socket-free core): restarts, gaps
//! and duplicates per publisher session and per topic.
//!
//! Rules (see docs/WIRE.md): a publisher is `publisher_id`; a new
//! `session_id` from it is a restart and resets its state. Per topic, a jump
//! of `topic_seq` is a gap, and a `topic_seq` at or below the last accepted is
//! dropped: as *reordered* when it is one of the last [`REORDER_WINDOW`]
//! sequences that had not arrived (it was counted missing, so the gap count
//! goes down by one: it came late, it was not lost), otherwise as a
//! *duplicate* (this is how values re-sent by a last-value cache are removed).
//! Stream gaps (`stream_seq`) are counted only when the subscriber takes every
//! topic (with topic filters the stream sequence jumps by design) and never
//! for frames flagged `FROM_CACHE`, which keep their old sequences. A cached value is judged in
//! its own session, whichever session of its publisher that is (a cache holds each topic's last
//! value: one from before a restart, or of the next session before its first live frame), kept
//! beside the current one when new: it takes no session's place, and its live frame, or the
//! value again, is a duplicate.
//!
//! Nothing a publisher sends can overflow the arithmetic or grow the state
//! without bound: a jump of more than [`MAX_SEQ_JUMP`] is dropped as
//! implausible, and publishers and topics beyond [`MAX_PUBLISHERS`],
//! [`MAX_TOPICS_PER_SESSION`] and the tracker's topic budget ([`MAX_TRACKED_TOPICS`] across
//! all its sessions) are dropped as over the limit, each counted.
//!
//! The limits bound what is live, not what was ever seen: a publisher whose every session
//! ended (its end of stream heard, or replaced by a restart and counted) gives its place and
//! its topics back when a new publisher or topic needs them, and only its session ids are
//! remembered ([`FORGOTTEN_KEPT`] of them), so that a late frame of one is counted as
//! `after_end`, not taken for a new publisher. Sessions and publishers are found through
//! maps beside their lists: a frame's cost does not grow with how many came and went.
//!
//! A publisher that went away without an end of stream (killed, its host gone) and whose id
//! is never heard again would stay held, with its topics, for the rest of the run. One of
//! which nothing at all (no data, no heartbeat, no end of stream) was heard for the tracker's
//! bound ([`SequenceTracker::with_forget_silent_after`], `--forget-silent-after`) is *vanished*:
//! [`SequenceTracker::sweep`], on the reader's round (never per message), closes its open
//! sessions as [`SequenceTracker::close`] would (unended, to their last arrived message),
//! counts them ([`SequenceTotals::vanished`]) and forgets it. A frame of such a session that
//! comes later (a link that was down for that long) takes it up again where it was
//! ([`SequenceTotals::vanished_back`]): its unended count is taken back, so nothing is counted
//! twice, and a data frame at or before the position it was forgotten at is `after_end`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use crate::wire::{Header, FLAG_FROM_CACHE};

/// Largest believable forward jump of a sequence within one session.
pub const MAX_SEQ_JUMP: u64 = 1 << 32;
/// Most publisher ids one reader tracks at once (each with up to [`MAX_SESSIONS_PER_ID`]
/// sessions). One whose sessions all ended gives its place back to a new one.
pub const MAX_PUBLISHERS: usize = 1024;
/// Sessions of publishers that ended and were forgotten (to make room), remembered by id only:
/// a frame of one that comes after that is dropped and counted
/// ([`SequenceTotals::after_end`]), not taken for a new publisher. Past this many, the oldest
/// is forgotten for good (about 100 KiB).
pub const FORGOTTEN_KEPT: usize = 4096;
/// Publishers whose sessions all ended that stay held, with their sessions and topics, so that a
/// late frame of one is still judged (a duplicate dropped, a reordered frame told apart). Past
/// this many, the one that ended longest ago is forgotten at once (its session ids kept in
/// [`FORGOTTEN_KEPT`]: a late frame of it is then dropped and counted as `after_end`), not when
/// a new publisher or topic next needs room: an engine whose publishers come and go under new
/// ids (a new id per start, each session with its own topics) otherwise held every ended one's
/// topics up to [`MAX_TRACKED_TOPICS`] (about 620 MiB), and grew towards that all day.
pub const ENDED_KEPT: usize = 16;
/// Publishers [`SequenceTracker::sweep`] looks at per call at most: a sweep's cost is bounded
/// whatever the tracker holds ([`MAX_PUBLISHERS`] are looked at in 16 sweeps).
const SWEEP_PUBLISHERS: usize = 64;
/// How often [`SequenceTracker::sweep`] looks (at most), and how often it notes the time
/// against the frame count (a sixty-fourth of the bound, at least this): a session is
/// forgotten no sooner than the bound after its last frame, and at most that much later.
const SWEEP_EVERY_MIN_NS: u64 = 10_000_000;
const SWEEP_EVERY_MAX_NS: u64 = 100_000_000;
/// A reader that did not sweep for this long paused (a stall, or blocked behind its workers):
/// the snail's self-stall (`snail::SELF_STALL_NS`, the same; a core imports no snail).
pub const READER_PAUSE_NS: u64 = 1_000_000_000;
/// A frame judged up to this long after a connection end was noted is taken as from before it
/// ([`SequenceTracker::connections_ended`]): the last frames of a killed publisher may still be
/// queued, unread, when its connection's end is seen.
const CONNECTION_END_SLACK_NS: u64 = 1_000_000_000;
/// Sessions forgotten as vanished whose lines are waiting for the reader
/// ([`SequenceTracker::take_vanished`]); past this many only the count grows.
const VANISHED_NOTES_KEPT: usize = 64;
/// Up to this many sessions, a frame's session is found by a scan (as fast as a map's hash
/// for one or two publishers); past it, through the map.
const SCAN_MAX: usize = 8;
/// Most topics tracked per publisher session.
pub const MAX_TOPICS_PER_SESSION: usize = 1 << 20;
/// Most topics one tracker (one reader) holds across all its sessions: 4 Mi, so that one
/// publisher id's every kept session ([`MAX_SESSIONS_PER_ID`], a session it replaced keeps its
/// topics until it ends or makes room) fits at [`MAX_TOPICS_PER_SESSION`] each. Without it the
/// bound was [`MAX_PUBLISHERS`] × [`MAX_SESSIONS_PER_ID`] × [`MAX_TOPICS_PER_SESSION`], 4 Gi
/// topics: none at all.
///
/// One topic costs its key (in the allocator's size class: 16 B for up to 16 topic bytes, 256 B
/// for the longest, 255-byte, topic), its bucket (the boxed key, 16 B, and its sequence state,
/// 16 B) and a control byte, times the table's 8/7 to 16/7 buckets a topic (hashbrown fills a
/// table to 7/8, then doubles it), and for a while the tables it outgrew, which the allocator
/// keeps. Measured as resident memory with the binary's allocator (mimalloc) after 1 Mi topics
/// of one session (its table just under half full, the worst case): 147 B a topic of 9 bytes,
/// 155 B one of 24, 329 B one of 255. So a tracker holds at most about 1.3 GiB (4 Mi topics of
/// 255 bytes), about 620 MiB for topics of up to 24 bytes (symbols are shorter). A topic past
/// the budget is dropped and counted in [`SequenceTotals::over_limit`] (the reader says it as
/// `over_limit`); a session that ends and is replaced, or makes room, gives its topics back.
pub const MAX_TRACKED_TOPICS: usize = MAX_SESSIONS_PER_ID * MAX_TOPICS_PER_SESSION;

/// How far back (in topic sequences) a late frame is still told apart from a
/// duplicate: one bit per sequence in a `u64`.
pub const REORDER_WINDOW: u64 = 64;

/// The hasher of the engine's in-process hash maps (topics, order ids, instrument ids): a word
/// at a time, one folded multiply (the 128-bit product's halves XORed) per 8 bytes, so a
/// 6-byte topic with its length prefix costs two multiplies where FNV-1a's byte loop cost
/// fourteen dependent ones. Like FNV it is not keyed: a publisher that chose colliding topics
/// could slow a map down, as with FNV before it; nothing depends on its values across builds
/// or hosts (the stable topic → shard function is [`crate::wire::topic_hash`]).
/// Inputs of different lengths are told apart by the length prefix `Hash for [u8]` writes.
#[derive(Clone, Copy)]
pub struct WordHasher(u64);

/// The golden-ratio constant, odd: the multiplier of [`WordHasher`]'s fold and its start.
const WORD_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

impl Default for WordHasher {
    #[inline]
    fn default() -> Self {
        WordHasher(WORD_MUL)
    }
}

impl WordHasher {
    /// Mix the word `w` into the state.
    #[inline]
    fn fold(&mut self, w: u64) {
        let p = u128::from(self.0 ^ w) * u128::from(WORD_MUL);
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
}

/// The little-endian word of `b`'s first 8 bytes (`b` has at least 8).
#[inline]
fn word8(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// A word of the last 0 to 8 bytes of an input, each of them in it (for 4 to 8, two 4-byte
/// reads that overlap), without a loop or a copy.
#[inline]
pub(crate) fn tail_word(b: &[u8]) -> u64 {
    let n = b.len();
    match n {
        0 => 0,
        1..=3 => u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16,
        _ => {
            let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
            u64::from(lo) | u64::from(hi) << 32
        }
    }
}

impl Hasher for WordHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while rest.len() > 8 {
            self.fold(word8(rest));
            rest = &rest[8..];
        }
        self.fold(tail_word(rest));
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.fold(u64::from(n));
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.fold(n);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.fold(n as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Per topic: the last accepted sequence, and which of the [`REORDER_WINDOW`]
/// sequences up to it have arrived (bit k: `last − k`), or were never counted
/// missing (before a late join, or skipped by a cached value).
#[derive(Debug, Clone, Copy)]
struct TopicSeq {
    last: u64,
    seen: u64,
}

impl TopicSeq {
    /// Move to `seq` (> last); `counted`: the sequences skipped were counted missing.
    #[inline]
    fn advance(&mut self, seq: u64, counted: bool) {
        let skipped_seen = if counted { 0 } else { u64::MAX };
        self.seen = match seq.saturating_sub(self.last) {
            0 => self.seen | 1,
            d if d >= REORDER_WINDOW => skipped_seen | 1,
            d => (self.seen << d) | (skipped_seen >> (64 - d)) | 1,
        };
        self.last = seq;
    }
}

/// A session's topics: a table of [`TopicEntry`] found by [`topic_hash`] and [`same_topic`], so
/// that a frame hashes its topic once (looked up, and inserted when new, with that hash) and a
/// short topic is compared a word at a time rather than through a call to libc's `bcmp`.
type TopicMap = hashbrown::HashTable<TopicEntry>;

/// One topic of a session: its name and its sequence state.
#[derive(Debug)]
struct TopicEntry {
    topic: Box<[u8]>,
    seq: TopicSeq,
}

/// The hash of `topic` in a [`TopicMap`] ([`WordHasher`], as the map of `Box<[u8]>` keys had).
#[inline]
fn topic_hash(topic: &[u8]) -> u64 {
    BuildHasherDefault::<WordHasher>::default().hash_one(topic)
}

/// Whether two topics are the same bytes: up to 16 bytes by two word reads each (every byte
/// read, as [`tail_word`] and [`word8`] do), longer ones by the slices' own comparison.
#[inline]
fn same_topic(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    n == b.len()
        && match n {
            0..=8 => tail_word(a) == tail_word(b),
            9..=16 => word8(a) == word8(b) && word8(&a[n - 8..]) == word8(&b[n - 8..]),
            _ => a == b,
        }
}

/// Publisher id and session id to the session's index, or publisher id to the publisher's.
type IndexMap<K> = HashMap<K, usize, BuildHasherDefault<WordHasher>>;

/// What the checks decided about one data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Deliver it (false: a duplicate, implausible, or over a limit).
    pub accept: bool,
    /// Messages missing just before this one.
    pub missed: u64,
    /// This frame started a new session of a known publisher.
    pub restart: bool,
}

#[derive(Debug)]
struct Session {
    publisher_id: u32,
    session_id: u64,
    /// Highest stream sequence seen (0 before any).
    last_stream_seq: u64,
    /// The session was seen from its first message.
    from_start: bool,
    topics: TopicMap,
    eos_seen: bool,
    /// Its end of stream came before any data of its own, live or a cache's values of it, and no
    /// cache's value of it came since: it speaks for other sessions' frames
    /// ([`Session::speaks_for_its_id`]).
    ended_without_data: bool,
    /// A live frame (not from a cache) of this session arrived.
    live_seen: bool,
    /// Frames of it are judged as they come: it is its publisher's current
    /// session (or, for an id two publishers share, one of its live ones).
    /// False: a later session replaced it.
    current: bool,
    /// What replacing it counted, taken back if it turns out alive.
    replaced: Option<Replaced>,
    /// When a frame of it last came ([`SequenceTracker::tick`]): the least
    /// recently heard session of a publisher makes room for a new one.
    heard: u64,
    /// When its last heartbeat came (same clock; 0: none): it is alive, though it sends no
    /// data ([`SequenceTracker::sweep`]). Apart from `heard`, which says where its data is.
    beat: u64,
    /// Taken up again after it was forgotten as vanished ([`SequenceTracker::resume`]): a
    /// topic new to it may have been sent before, so it counts nothing missing before its
    /// first sequence (as a late join does).
    resumed: bool,
    /// Counted as unended when the subscriber closed ([`SequenceTracker::close`]).
    closed_unended: bool,
    /// The stream positions of cached values (`FROM_CACHE`, new to their topic) accepted past
    /// its last live frame, or before its first, least first: they arrived, so a later live
    /// frame (or its end of stream) that passes over them does not count them missing, in
    /// `gaps` or in `before_first` (a last-value cache that restarted, or a late join through
    /// one), and a live frame at one of them is that value again. Positions, not a count: a
    /// cache answers ahead of the live stream, and what it holds past a live frame is not what
    /// that frame skipped.
    cached_ahead: BinaryHeap<Reverse<u64>>,
    /// The stream sequence of its first live frame (0: none yet), and whether what it sent
    /// before that went into [`SequenceTotals::before_first`].
    first_live_seq: u64,
    before_counted: bool,
}

/// Why a frame has no session to be judged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// A new publisher, with [`MAX_PUBLISHERS`] live ones held.
    OverLimit,
    /// Its session ended and was forgotten ([`SequenceTracker::forgotten`]).
    AfterEnd,
}

/// Where a session forgotten as vanished was ([`SequenceTracker::sweep`]), to take it up
/// again there if a frame of it comes ([`SequenceTracker::resume`]).
#[derive(Debug, Clone, Copy)]
struct Resume {
    last_stream_seq: u64,
    from_start: bool,
    first_live_seq: u64,
    before_counted: bool,
    /// What it was counted in `unended_*` with, if it was.
    unended_sent: Option<u64>,
    /// Its publisher's sessions that ended by a restart, not counted when it vanished (none of
    /// its open sessions was seen from its first message, as at the close): its own end of
    /// stream, once taken up again, counts them ([`PublisherState::pending_unended`]).
    pending: (u64, u64),
    /// Its publisher id was shared ([`PublisherState::shared`]): a new session of the id later
    /// is another publisher's, no restart.
    shared: bool,
    /// A later session of its publisher came since ([`SequenceTracker::restart_after_vanishing`]):
    /// it ended, and is not taken up again (its frames and its end of stream are `after_end`).
    restarted: bool,
    /// Not vanished: open, it made room for a later session of its id (one two or more
    /// publishers share, [`SequenceTracker::push_session`]), and was counted as the close counts
    /// it. Taken up again, it is not counted in [`SequenceTotals::vanished_back`].
    evicted: bool,
}

impl Resume {
    /// Where open session `s` was as it is forgotten (vanished): `counted`, whether it is in
    /// `unended_*`; `shared`, whether its publisher id is.
    fn of(s: &Session, counted: bool, shared: bool) -> Self {
        Resume {
            last_stream_seq: s.last_stream_seq,
            from_start: s.from_start,
            first_live_seq: s.first_live_seq,
            before_counted: s.before_counted,
            unended_sent: counted.then_some(s.last_stream_seq),
            pending: (0, 0),
            shared,
            restarted: false,
            evicted: false,
        }
    }

    /// Held as vanished, to be taken up again: not ended by a later session.
    fn resumable(r: &Option<Resume>) -> bool {
        r.is_some_and(|r| !r.restarted)
    }
}

/// A session forgotten as vanished: whose, what it held, and what it was counted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vanished {
    pub publisher_id: u32,
    pub session_id: u64,
    /// Its last arrived stream sequence, and whether that went into `unended_*` (it was seen
    /// from its first message: what it sent before is not this subscriber's to count).
    pub last_stream_seq: u64,
    pub counted: bool,
    /// Topics it gave back.
    pub topics: usize,
    /// The bound: nothing of it was heard for at least this long.
    pub silent_ns: u64,
    /// What besides its silence said it was gone ([`SequenceTracker::connections`]).
    pub since: VanishedSince,
}

/// What besides its silence said a publisher forgotten as vanished was gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VanishedSince {
    /// Nothing: the tracker was told nothing of its socket's connections.
    Silence,
    /// A publisher connection of the shard ended since it was last heard (killed, or its host
    /// gone).
    ConnectionEnded,
    /// Another publisher was heard well inside its silence on the shard's one open connection:
    /// the two share it (a proxy's, which outlives the publishers behind it), and that
    /// connection was not held back.
    OtherHeard,
}

impl std::fmt::Display for Vanished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "publisher {} session {:016x} vanished: nothing heard from it (no data, no heartbeat, no end of \
             stream) for {}{}; forgotten, its {} topic(s) released, ",
            self.publisher_id,
            self.session_id,
            crate::diag::human_duration(self.silent_ns),
            match self.since {
                VanishedSince::Silence => "",
                VanishedSince::ConnectionEnded =>
                    ", and a publisher connection of this shard ended since (killed, or its host gone)",
                VanishedSince::OtherHeard =>
                    ", while another publisher was heard since on this shard's one connection (a proxy's, \
                     which outlives the publishers behind it)",
            },
            self.topics
        )?;
        if self.counted {
            write!(f, "counted as unended to its last arrived message (stream sequence {})", self.last_stream_seq)?;
        } else {
            write!(f, "not counted as unended (not seen from its first message)")?;
        }
        write!(f, "; a later frame of it takes it up again (--forget-silent-after sets the bound)")
    }
}

/// What a session's replacement by a later one counted.
#[derive(Debug, Clone, Copy)]
struct Replaced {
    /// A live frame of a later session replaced it: it has ended.
    live: bool,
    /// It ended without an end of stream and was counted as unended with
    /// this many messages sent.
    unended_sent: Option<u64>,
    /// That count already went into the totals (see [`PublisherState::pending_unended`]).
    unended_in_totals: bool,
}

/// Per publisher id.
#[derive(Debug)]
struct PublisherState {
    publisher_id: u32,
    /// Earlier sessions of this publisher that a live frame of a later one
    /// ended without an end of stream: how many, and what they sent by their
    /// last arrived sequence. Counted in the totals only when this publisher
    /// itself then ends a session it sent data in with an end of stream, so
    /// that an end of stream that speaks for frames of other sessions (a
    /// verbatim capture replay's) never counts them twice.
    pending_unended: (u64, u64),
    /// A session it had replaced came back: two publishers send under this
    /// id. Its sessions are then tracked side by side, none replacing another.
    shared: bool,
    /// Sessions of this id that made room for later ones (the last [`EVICTED_KEPT`]):
    /// one of them heard live again is a publisher that never went away, so the
    /// id is shared even when more publishers share it than sessions are kept.
    evicted: Vec<u64>,
    /// The session ids of its sessions held (their indices through
    /// [`SequenceTracker::index`]): at most [`MAX_SESSIONS_PER_ID`].
    sessions: Vec<u64>,
    /// In [`SequenceTracker::ended`] (once: the queue holds each id at most once).
    queued: bool,
}

/// Session ids remembered per publisher id after they made room ([`PublisherState::evicted`]).
const EVICTED_KEPT: usize = 16;

/// Sessions of one publisher id kept at once: its current one and those it
/// replaced (so one that comes back is recognised), or, for an id two or
/// more publishers share, their live sessions side by side.
pub const MAX_SESSIONS_PER_ID: usize = 4;

/// Two (or more) publishers send under one publisher id: a session it had
/// replaced came back. Said once per id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdConflict {
    pub publisher_id: u32,
    /// The session that came back, and the one that had replaced it.
    pub sessions: (u64, u64),
}

/// Why a frame was dropped over a limit, and whose: the detail of the reader's first line of
/// each kind ([`SequenceTracker::over_limit_cause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverLimit {
    #[default]
    None,
    /// A frame of a new publisher id while [`MAX_PUBLISHERS`] publishers were live (none of
    /// them had ended every session, so none could give its place back).
    Publishers { publisher_id: u32, live: usize },
    /// A new topic of a session past [`MAX_TOPICS_PER_SESSION`] (`session: true`) or the
    /// tracker's topic budget held by live sessions (`max` of them).
    Topics { publisher_id: u32, session_id: u64, session: bool, max: usize },
}

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            OverLimit::None => write!(f, "nothing over a limit"),
            OverLimit::Publishers { publisher_id, live } => write!(
                f,
                "publisher {publisher_id}: {live} publishers are live, the most one reader tracks \
                 (MAX_PUBLISHERS); a publisher gives its place back once every session of it ended, \
                 and until one does the frames of new ones are dropped (counted; their data in `lost`)"
            ),
            OverLimit::Topics { publisher_id, session_id, session: true, max } => write!(
                f,
                "a new topic of publisher {publisher_id} session {session_id:016x}: the session holds \
                 {max} topics, the most one session may (MAX_TOPICS_PER_SESSION); its new topics are dropped"
            ),
            OverLimit::Topics { publisher_id, session_id, session: false, max } => write!(
                f,
                "a new topic of publisher {publisher_id} session {session_id:016x}: live sessions hold \
                 {max} topics, the most one reader may (MAX_TRACKED_TOPICS); new topics are dropped \
                 until sessions end"
            ),
        }
    }
}

impl std::fmt::Display for IdConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "publisher {} alternates between sessions {:016x} and {:016x}: two publishers share one id? \
             give each its own --publisher-id; their sessions are tracked side by side from now on, \
             and new sessions of this id are not counted as restarts",
            self.publisher_id, self.sessions.0, self.sessions.1
        )
    }
}

impl Session {
    /// Whether `h` is a frame of this session (its publisher id and session id).
    #[inline]
    fn is_of(&self, h: &Header) -> bool {
        self.publisher_id == h.publisher_id && self.session_id == h.session_id
    }

    fn new(h: &Header, heard: u64) -> Self {
        Session {
            publisher_id: h.publisher_id,
            session_id: h.session_id,
            last_stream_seq: 0,
            from_start: h.stream_seq <= 1,
            topics: TopicMap::default(),
            eos_seen: false,
            ended_without_data: false,
            live_seen: false,
            current: true,
            replaced: None,
            heard,
            beat: 0,
            resumed: false,
            closed_unended: false,
            cached_ahead: BinaryHeap::new(),
            first_live_seq: 0,
            before_counted: false,
        }
    }

    /// How many of the stream positions below `end` a cached value filled
    /// ([`Session::cached_ahead`]), taken out: a live frame or the end of stream passed them.
    #[inline]
    fn cached_below(&mut self, end: u64) -> u64 {
        let mut n = 0;
        while self.cached_ahead.peek().is_some_and(|&Reverse(p)| p < end) {
            self.cached_ahead.pop();
            n += 1;
        }
        n
    }

    /// Of `n` stream positions below `end` that a live frame or the end of stream passed over,
    /// those no cached value filled ([`Session::cached_below`], taken out whatever `n`).
    #[inline]
    fn not_cached(&mut self, n: u64, end: u64) -> u64 {
        n - self.cached_below(end).min(n)
    }

    /// Whether a cached value was at stream position `p` (taken out), with every position below
    /// it taken out already ([`Session::cached_below`]).
    fn cached_at(&mut self, p: u64) -> bool {
        let here = self.cached_ahead.peek() == Some(&Reverse(p));
        if here {
            self.cached_ahead.pop();
        }
        here
    }

    /// Open: current, heard live, no end of stream of its own, and none that speaks for it
    /// ([`Session::speaks_for_its_id`], or a spokesman's of any id) heard after its last frame
    /// (`spoken`, when the last such was heard).
    fn open_unless_spoken_for(&self, spoken: u64) -> bool {
        self.current && self.live_seen && !self.eos_seen && spoken <= self.heard
    }

    /// Its end of stream came before any data of it (live or a cache's values of it), and no
    /// data of it (live or cached) came since: it speaks for the other sessions of its publisher id heard
    /// before it (a verbatim capture replay ends the recorded sessions with an end of stream of
    /// its own, under the recorded id). The end of a session that sent data (one known here only
    /// from a cache's values of it too) ends that session only: under an id two publishers
    /// share, the other's sessions go on, and their frames are in no count of its. For an id one
    /// publisher has, nothing else changes: its one current session is the one a live end of
    /// stream ends (one it replaced heard live again says the id is shared,
    /// [`SequenceTracker::revive`]).
    fn speaks_for_its_id(&self) -> bool {
        self.ended_without_data && !self.live_seen
    }

    /// Without an end of stream, and seen live from its first message (what
    /// a session sent before a subscriber joined, or a session known only
    /// from a cache, is not this subscriber's to count).
    fn counts_unended(&self) -> bool {
        !self.eos_seen && self.from_start && self.last_stream_seq > 0
    }
}

/// Totals across all sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequenceTotals {
    /// Data frames accepted for delivery.
    pub accepted: u64,
    /// Messages missing (not arrived, or not yet: a reordered frame takes one off).
    pub gaps: u64,
    /// Dropped: a topic sequence already delivered.
    pub duplicates: u64,
    /// Dropped: arrived after a later frame of its topic (it was counted in `gaps`
    /// when the later one came, and is taken off again).
    pub reordered: u64,
    pub restarts: u64,
    /// Dropped: a sequence jumped further than [`MAX_SEQ_JUMP`].
    pub implausible: u64,
    /// Dropped: beyond [`MAX_PUBLISHERS`], [`MAX_TOPICS_PER_SESSION`] or the tracker's topic
    /// budget ([`MAX_TRACKED_TOPICS`]): `over_limit_publishers` + `over_limit_topics`.
    pub over_limit: u64,
    /// Of `over_limit`: frames (data and ends of stream) of publishers past [`MAX_PUBLISHERS`]
    /// live ones, and of them the data frames: no end-of-stream count covers them (their
    /// publisher's was dropped too), so loss counts them on top of what the counts say.
    pub over_limit_publishers: u64,
    pub over_limit_data: u64,
    /// Of `over_limit`: data frames of a new topic past a session's or the tracker's topic
    /// limit (their session's end-of-stream count covers them: loss sees them).
    pub over_limit_topics: u64,
    /// Dropped: a frame of a session that ended and was forgotten (its publisher made room for
    /// a new one) came after that: too late to tell a duplicate from a late frame.
    pub after_end: u64,
    /// Distinct sessions whose end of stream was seen.
    pub eos_sessions: u64,
    /// Sum of the `sent` counts those ends of stream carried.
    pub eos_sent: u64,
    /// Sessions seen from their first message that ended without an end of
    /// stream (a live frame of a new session of the same publisher arrived:
    /// it restarted), once that publisher ended a later session with its own
    /// end of stream; and, when the subscriber closes ([`SequenceTracker::close`]),
    /// the sessions still open then (with the restarted ones of their publishers). Not
    /// counted: a session an end of stream speaks for, heard after its last frame: one of a
    /// session that sent no data of its own, as a verbatim capture replay's, of its publisher
    /// id or (every topic taken) of any id. Under an id two publishers share, one's end of
    /// stream ends its own session only.
    pub unended_sessions: u64,
    /// What those sessions sent, by the highest stream sequence that arrived
    /// from each: a floor, since what one sent after its last arrived message
    /// is not known.
    pub unended_sent: u64,
    /// Messages sessions sent before the first of their live frames this subscriber saw: a
    /// session first seen live at stream sequence N > 1 sent N − 1 before it. A late join (the
    /// subscriber came after the publisher began), or loss at the very start: sequence numbers
    /// cannot tell the two apart, so `lost` keeps them and the report says how many they are.
    /// Counted for a full subscription only, and for a first position within [`MAX_SEQ_JUMP`].
    pub before_first: u64,
    /// Publisher ids two (or more) publishers were found to share: a session
    /// the id had replaced came back. Their sessions are then tracked side
    /// by side (gaps, duplicates and ends of stream per session, so loss stays
    /// exact), and a new session of such an id is not counted as a restart.
    pub id_conflicts: u64,
    /// Sessions forgotten as vanished ([`SequenceTracker::sweep`]): open (no end of stream),
    /// and nothing heard of them, nor of any session of their publisher id, for the tracker's
    /// bound. Each is counted in `unended_*` as the close counts one still open (when seen
    /// from its start), and its topics are given back.
    pub vanished: u64,
    /// Of `vanished`, those a frame came from afterwards (data, a heartbeat or the end of
    /// stream): taken up again where they were, their `unended_*` count taken back.
    pub vanished_back: u64,
}

impl SequenceTotals {
    /// Data messages the publishers sent, as far as is known: the counts of
    /// their ends of stream, plus the sessions without one by their last
    /// arrived sequence.
    pub fn sent(&self) -> u64 {
        self.eos_sent.saturating_add(self.unended_sent)
    }
}

/// Tracks every publisher session a reader sees.
#[derive(Debug)]
pub struct SequenceTracker {
    sessions: Vec<Session>,
    publishers: Vec<PublisherState>,
    full_subscription: bool,
    totals: SequenceTotals,
    /// Frames judged so far: the clock of [`Session::heard`].
    tick: u64,
    /// Ids found shared, not yet taken by [`SequenceTracker::take_id_conflict`] (at most
    /// one per publisher id, so bounded by [`MAX_PUBLISHERS`]).
    conflicts: Vec<IdConflict>,
    /// Topics held across all sessions, and the most it may hold ([`MAX_TRACKED_TOPICS`]).
    topics: usize,
    max_topics: usize,
    /// The most publishers held at once ([`MAX_PUBLISHERS`]; fewer in tests).
    max_publishers: usize,
    /// When ([`Session::heard`]'s clock) the last end of stream of a session that sent no data
    /// of its own came, on a full subscription: it speaks for the frames of other sessions (a
    /// verbatim capture replay's), whatever their publisher id. 0: none.
    spokesman_heard: u64,
    /// `(publisher_id, session_id)` → index in `sessions`, and publisher id → index in
    /// `publishers`: lookups that do not grow with the publishers kept.
    index: IndexMap<(u32, u64)>,
    publisher_index: IndexMap<u32>,
    /// The session of the last frame (an index into `sessions`, checked before use).
    last: usize,
    /// Publishers whose sessions all ended, oldest first: they give their place (and their
    /// topics) back when a new publisher or topic needs it, or once more than [`ENDED_KEPT`]
    /// ended. An id heard again since is skipped when its turn comes.
    ended: VecDeque<u32>,
    /// Sessions of publishers forgotten after they ended ([`FORGOTTEN_KEPT`]), oldest first,
    /// and the same as a set.
    forgotten: VecDeque<(u32, u64)>,
    /// The same as a map: None for one that ended, where a vanished one was
    /// ([`SequenceTracker::sweep`]).
    forgotten_set: HashMap<(u32, u64), Option<Resume>, BuildHasherDefault<WordHasher>>,
    /// Per publisher id, how many of its sessions `forgotten_set` holds as vanished (with where
    /// they were): a new session of such an id is its restart ([`SequenceTracker::restart_after_vanishing`]).
    vanished_ids: IndexMap<u32>,
    /// A publisher nothing was heard of for this long is forgotten as vanished (0: never).
    forget_after_ns: u64,
    /// When [`SequenceTracker::sweep`] looks next; where in `publishers` it goes on.
    next_sweep_ns: u64,
    sweep_at: usize,
    /// `(now_ns, tick)` noted by the sweeps, oldest first, back to the bound: a session last
    /// heard at or before `tick` was last heard before `now_ns`. How a frame's count tells the
    /// time without a clock read per frame.
    checkpoints: VecDeque<(u64, u64)>,
    /// The frame count at the last call of [`SequenceTracker::sweep`]: every frame up to it
    /// was judged before the next call's time was read.
    swept_tick: u64,
    /// The time of the last call of [`SequenceTracker::sweep`].
    swept_ns: u64,
    /// Connections of the reader's socket that ended so far ([`SequenceTracker::connections_ended`];
    /// None: not told, silence alone judges); a new end noted since the last sweep; when the
    /// sweep noted the last one (0: none); and the frame count up to which frames were judged
    /// before it (or within [`CONNECTION_END_SLACK_NS`] after it).
    connections_ended: Option<u64>,
    /// Connections of the reader's socket open now ([`SequenceTracker::connections`]).
    connections_open: u64,
    connection_end_new: bool,
    connection_end_ns: u64,
    connection_end_tick: u64,
    /// Sessions forgotten as vanished not yet taken by [`SequenceTracker::take_vanished`], and
    /// how many more there were past [`VANISHED_NOTES_KEPT`].
    vanished_notes: VecDeque<Vanished>,
    vanished_unnoted: u64,
    /// The last frame dropped over a limit: what and whose.
    over_limit_cause: OverLimit,
    /// Whose were the last gap, the last restart (the new session) and the last end of stream
    /// counted (with the `sent` it carried): what the engine's loss and session lines name.
    last_gap_at: (u32, u64),
    last_restart_at: (u32, u64),
    last_eos_at: (u32, u64, u64),
}

impl SequenceTracker {
    /// `full_subscription`: the subscriber takes every topic of its publishers,
    /// so stream sequence gaps are real loss. Holds up to [`MAX_TRACKED_TOPICS`] topics.
    pub fn new(full_subscription: bool) -> Self {
        Self::with_max_topics(full_subscription, MAX_TRACKED_TOPICS)
    }

    /// [`SequenceTracker::new`] holding at most `max_topics` topics across all its sessions.
    pub fn with_max_topics(full_subscription: bool, max_topics: usize) -> Self {
        SequenceTracker {
            sessions: Vec::new(),
            publishers: Vec::new(),
            full_subscription,
            totals: SequenceTotals::default(),
            tick: 0,
            conflicts: Vec::new(),
            topics: 0,
            max_topics,
            max_publishers: MAX_PUBLISHERS,
            spokesman_heard: 0,
            index: IndexMap::default(),
            publisher_index: IndexMap::default(),
            last: 0,
            ended: VecDeque::new(),
            forgotten: VecDeque::new(),
            forgotten_set: HashMap::default(),
            vanished_ids: IndexMap::default(),
            forget_after_ns: 0,
            next_sweep_ns: 0,
            sweep_at: 0,
            checkpoints: VecDeque::new(),
            swept_tick: 0,
            swept_ns: 0,
            connections_ended: None,
            connections_open: 0,
            connection_end_new: false,
            connection_end_ns: 0,
            connection_end_tick: 0,
            vanished_notes: VecDeque::new(),
            vanished_unnoted: 0,
            over_limit_cause: OverLimit::None,
            last_gap_at: (0, 0),
            last_restart_at: (0, 0),
            last_eos_at: (0, 0, 0),
        }
    }

    /// Forget a publisher of which nothing was heard for `ns` as vanished
    /// ([`SequenceTracker::sweep`]); 0: never. Never through a topic filter: a live publisher's
    /// data on the topics it leaves out does not come here, and it heartbeats only when it sends
    /// nothing at all, so its silence here says nothing (forgetting it would say a live
    /// publisher vanished, and lose the gaps of its topics across the silence).
    pub fn with_forget_silent_after(mut self, ns: u64) -> Self {
        self.forget_after_ns = if self.full_subscription { ns } else { 0 };
        self
    }

    /// The reader's socket has seen `ended` of its connections end so far, and has `open` of
    /// them open now (its links', and those accepted on its bound endpoints:
    /// [`crate::link::LinkWatch::connections_ended`], [`crate::link::LinkWatch::connections_open`]).
    /// Once told, [`SequenceTracker::sweep`] forgets a silent publisher only if, besides, a
    /// connection ended after it was last heard, or, while the socket has one connection open,
    /// another publisher was heard well inside its silence (from a quarter of the bound after
    /// its last frame to a quarter of the bound ago). A publisher killed, or whose host went,
    /// ends its connection (at once, or by the keepalive); one alive and connected but held back (a
    /// lossless publisher waiting on another subscriber's full pipe sends nothing, heartbeats
    /// neither) does not, and saying it vanished would be false. Behind a proxy, whose
    /// connection outlives the publishers behind it, a dead one's connection never ends; but
    /// it shares that one connection with the others behind the proxy, and one of them heard
    /// while it was silent shows the connection was not held. Several connections open (publishers
    /// connected directly): another's frames say nothing of this one's, which may be held back
    /// while that one flows.
    pub fn connections(&mut self, ended: u64, open: u64) {
        let before = self.connections_ended.replace(ended);
        if before.map_or(ended > 0, |b| b != ended) {
            self.connection_end_new = true;
        }
        self.connections_open = open;
    }

    /// `(publisher_id, session_id)` of the session of the last gap counted ((0, 0) before any).
    pub fn last_gap_at(&self) -> (u32, u64) {
        self.last_gap_at
    }

    /// `(publisher_id, session_id)` of the new session of the last restart ((0, 0) before any).
    pub fn last_restart_at(&self) -> (u32, u64) {
        self.last_restart_at
    }

    /// `(publisher_id, session_id, sent)` of the last end of stream counted ((0, 0, 0) before any).
    pub fn last_eos_at(&self) -> (u32, u64, u64) {
        self.last_eos_at
    }

    /// Publishers held: live ones, and ended ones not yet made room for.
    pub fn publishers(&self) -> usize {
        self.publishers.len()
    }

    /// The last frame dropped over a limit: which limit and whose ([`OverLimit::None`] before any).
    pub fn over_limit_cause(&self) -> OverLimit {
        self.over_limit_cause
    }

    /// Topics held across all sessions (at most the budget [`SequenceTracker::with_max_topics`] set).
    pub fn topics(&self) -> usize {
        self.topics
    }

    /// The index of `h`'s own session, if known: the last frame's (inlined: most frames are of
    /// the last frame's session), a scan of a few, or the map.
    #[inline(always)]
    fn find(&self, h: &Header) -> Option<usize> {
        if self.sessions.get(self.last).is_some_and(|s| s.is_of(h)) {
            return Some(self.last);
        }
        self.find_not_last(h)
    }

    /// [`SequenceTracker::find`] past the last frame's session, which is not `h`'s.
    fn find_not_last(&self, h: &Header) -> Option<usize> {
        let is = |s: &Session| s.is_of(h);
        if self.sessions.len() <= SCAN_MAX {
            return self.sessions.iter().position(is);
        }
        self.index.get(&(h.publisher_id, h.session_id)).copied()
    }

    /// The index of publisher `id`'s state, if held.
    #[inline]
    fn publisher_of(&self, id: u32) -> Option<usize> {
        self.publisher_index.get(&id).copied()
    }

    /// The indices of publisher `p`'s sessions.
    fn sessions_of(&self, p: usize) -> Vec<usize> {
        let id = self.publishers[p].publisher_id;
        self.publishers[p].sessions.iter().filter_map(|&sid| self.index.get(&(id, sid)).copied()).collect()
    }

    /// Whether publisher `id` holds a current session heard live (it collects nothing).
    fn has_live_current(&self, id: u32) -> bool {
        self.publisher_of(id).is_some_and(|p| {
            self.publishers[p].sessions.iter().any(|&sid| {
                self.index.get(&(id, sid)).is_some_and(|&i| self.sessions[i].current && self.sessions[i].live_seen)
            })
        })
    }

    /// The state of publisher `id`, made on first sight (an ended publisher making room when
    /// [`MAX_PUBLISHERS`] are held); None when all those held are live.
    fn publisher(&mut self, id: u32) -> Option<usize> {
        if let Some(p) = self.publisher_of(id) {
            return Some(p);
        }
        while self.publishers.len() >= self.max_publishers {
            if !self.forget_one_ended(id) {
                self.over_limit_cause = OverLimit::Publishers { publisher_id: id, live: self.publishers.len() };
                return None;
            }
        }
        self.publishers.push(PublisherState {
            publisher_id: id,
            pending_unended: (0, 0),
            shared: false,
            evicted: Vec::new(),
            sessions: Vec::new(),
            queued: false,
        });
        self.publisher_index.insert(id, self.publishers.len() - 1);
        Some(self.publishers.len() - 1)
    }

    /// Whether every session publisher `p` holds has ended (its end of stream heard, or a live
    /// frame of a later one replaced it), with what its sessions without an end of stream sent
    /// in the totals: it can be forgotten without a count changing.
    fn all_ended(&self, p: usize) -> bool {
        let st = &self.publishers[p];
        st.pending_unended == (0, 0)
            && self.sessions_of(p).into_iter().all(|i| {
                let s = &self.sessions[i];
                // One kept beside the current ones and never heard live (known from a cache)
                // has nothing to count.
                s.eos_seen
                    || (!s.current && !s.live_seen)
                    || s.replaced.is_some_and(|r| r.live && (r.unended_sent.is_none() || r.unended_in_totals))
            })
    }

    /// After an end of stream of publisher `p`: if every session of it ended, it may give its
    /// place back ([`SequenceTracker::ended`]).
    /// Past [`ENDED_KEPT`] such publishers, the one that ended longest ago is forgotten now.
    fn note_if_ended(&mut self, p: usize) {
        if !self.publishers[p].queued && self.all_ended(p) {
            let id = self.publishers[p].publisher_id;
            self.publishers[p].queued = true;
            self.ended.push_back(id);
            // The queue may hold ids heard again since they ended: forget_one_ended drops
            // those as it goes, and says false when none is left to forget.
            while self.ended.len() > ENDED_KEPT && self.forget_one_ended(id) {}
        }
    }

    /// Forget the publisher that ended longest ago (not `keep`), its sessions' ids kept in
    /// [`SequenceTracker::forgotten`]: its place and its topics come back. False: none ended.
    fn forget_one_ended(&mut self, keep: u32) -> bool {
        // Each id queued is looked at once at most: `keep` goes back to the end of the queue.
        for _ in 0..self.ended.len() {
            let Some(id) = self.ended.pop_front() else { break };
            let Some(p) = self.publisher_of(id) else { continue };
            if id == keep {
                self.ended.push_back(id);
                continue;
            }
            self.publishers[p].queued = false;
            // Heard again since it ended (a new session): it is queued again when that ends.
            if !self.all_ended(p) {
                continue;
            }
            self.forget_publisher(p, |_| None);
            return true;
        }
        false
    }

    /// Forget publisher `p` and its sessions (their topics back to the budget). The ids of
    /// those heard live or ended are remembered ([`SequenceTracker::forgotten`]), with where
    /// `resume` says one was, to take it up again (None: a frame of it is `after_end`).
    fn forget_publisher(&mut self, p: usize, resume: impl Fn(&Session) -> Option<Resume>) {
        let id = self.publishers[p].publisher_id;
        for sid in std::mem::take(&mut self.publishers[p].sessions) {
            if let Some(i) = self.index.get(&(id, sid)).copied() {
                // One known from a cache only is not remembered: a live frame of it, if
                // one comes, is of a session this subscriber never saw end.
                let s = &self.sessions[i];
                if s.live_seen || s.eos_seen {
                    self.remember_forgotten((id, sid), resume(s));
                }
                self.remove_session(i);
            }
        }
        self.publisher_index.remove(&id);
        self.publishers.swap_remove(p);
        if let Some(moved) = self.publishers.get(p) {
            self.publisher_index.insert(moved.publisher_id, p);
        }
    }

    /// Remember the ids of a session forgotten ([`FORGOTTEN_KEPT`] of them), and where it was
    /// if it vanished.
    fn remember_forgotten(&mut self, key: (u32, u64), resume: Option<Resume>) {
        if self.forgotten.len() == FORGOTTEN_KEPT {
            if let Some(old) = self.forgotten.pop_front() {
                self.forget_key(old);
            }
        }
        if Resume::resumable(&resume) {
            *self.vanished_ids.entry(key.0).or_insert(0) += 1;
        }
        match self.forgotten_set.insert(key, resume) {
            None => self.forgotten.push_back(key),
            Some(r) if Resume::resumable(&r) => self.unvanish_id(key.0),
            Some(_) => {}
        }
    }

    /// Take session `key` out of the forgotten ones' map (the queue is the caller's).
    fn forget_key(&mut self, key: (u32, u64)) {
        if self.forgotten_set.remove(&key).is_some_and(|r| Resume::resumable(&r)) {
            self.unvanish_id(key.0);
        }
    }

    /// One vanished session of publisher `id` is no longer held as vanished.
    fn unvanish_id(&mut self, id: u32) {
        if let Some(n) = self.vanished_ids.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.vanished_ids.remove(&id);
            }
        }
    }

    /// A live data frame of a new session (`session`) of publisher `p`, which replaced no live
    /// one: if another session of that id vanished ([`SequenceTracker::sweep`]) and was not heard since,
    /// its publisher restarted, as it would have been counted had it not been forgotten
    /// ([`SequenceTracker::replace_current`]). The vanished session is ended by it (a frame of
    /// it is `after_end` from now on), its unended count stays as the forget made it (counted
    /// once), and the sessions its publisher ended by restarting before, not counted then, are
    /// the new session's publisher's to count again ([`PublisherState::pending_unended`]). Not
    /// for an id two publishers shared: a new session of it is no restart. True: restarted.
    #[cold]
    fn restart_after_vanishing(&mut self, p: usize, session: u64) -> bool {
        let id = self.publishers[p].publisher_id;
        if !self.vanished_ids.contains_key(&id) {
            return false;
        }
        let vanished: Vec<((u32, u64), Resume)> = self
            .forgotten
            .iter()
            .filter(|k| k.0 == id && k.1 != session)
            .filter_map(|k| self.forgotten_set.get(k).copied().flatten().filter(|r| !r.restarted).map(|r| (*k, r)))
            .collect();
        if vanished.is_empty() {
            return false;
        }
        if vanished.iter().any(|(_, r)| r.shared) {
            self.publishers[p].shared = true;
            return false;
        }
        for (key, r) in vanished {
            self.forgotten_set.insert(key, Some(Resume { restarted: true, ..r }));
            self.unvanish_id(id);
            self.add_pending(p, r.pending);
        }
        self.totals.restarts += 1;
        true
    }

    /// Whether `h`'s session was forgotten: `Some(None)` after it ended, `Some(Some(_))` after
    /// it vanished, with where it was.
    fn was_forgotten(&self, h: &Header) -> Option<Option<Resume>> {
        if self.forgotten_set.is_empty() {
            return None;
        }
        self.forgotten_set.get(&(h.publisher_id, h.session_id)).copied()
    }

    /// Remove session `i` (its topics back to the budget), keeping the maps true.
    fn remove_session(&mut self, i: usize) -> Session {
        let gone = self.sessions.swap_remove(i);
        self.topics -= gone.topics.len();
        let key = (gone.publisher_id, gone.session_id);
        self.index.remove(&key);
        if let Some(moved) = self.sessions.get(i) {
            self.index.insert((moved.publisher_id, moved.session_id), i);
        }
        if let Some(p) = self.publisher_of(gone.publisher_id) {
            self.publishers[p].sessions.retain(|&s| s != gone.session_id);
        }
        gone
    }

    /// Topics for a new one: ended publishers (not `keep`) give theirs back until the tracker
    /// holds fewer than its budget. False: live sessions hold it all.
    fn make_topic_room(&mut self, keep: u32) -> bool {
        while self.topics >= self.max_topics {
            if !self.forget_one_ended(keep) {
                return false;
            }
        }
        true
    }

    /// A session of publisher `p` takes over: its current one is replaced.
    /// Returns whether that was a restart (the replaced session had been
    /// live; one known only from cached values did not restart). `live`: a
    /// live data frame takes over, so the replaced session has really ended.
    /// A live one (`session`, not held as vanished itself) of a publisher id whose last session
    /// vanished is its restart too ([`SequenceTracker::restart_after_vanishing`]).
    fn replace_current(&mut self, p: usize, live: bool, session: u64) -> bool {
        let mut restarted = false;
        for i in self.sessions_of(p) {
            let s = &mut self.sessions[i];
            if !s.current {
                continue;
            }
            s.current = false;
            let unended_sent = (live && s.counts_unended()).then_some(s.last_stream_seq);
            if let Some(n) = unended_sent {
                let pending = &mut self.publishers[p].pending_unended;
                *pending = (pending.0 + 1, pending.1.saturating_add(n));
            }
            s.replaced = Some(Replaced { live, unended_sent, unended_in_totals: false });
            restarted |= s.live_seen;
            if s.eos_seen {
                // Ended: no frame of it is to come, so its topics are not needed.
                self.topics -= std::mem::take(&mut s.topics).len();
            }
        }
        self.totals.restarts += restarted as u64;
        if live && !restarted {
            restarted = self.restart_after_vanishing(p, session);
        }
        restarted
    }

    /// A new session of `h`'s publisher: `(index, restarted)`, or None when a
    /// new publisher would exceed [`MAX_PUBLISHERS`]. `live` as for
    /// [`SequenceTracker::replace_current`].
    fn admit(&mut self, h: &Header, live: bool) -> Option<(usize, bool)> {
        let p = self.publisher(h.publisher_id)?;
        if live && self.publishers[p].evicted.contains(&h.session_id) {
            self.mark_shared(p, h.session_id);
        }
        let restarted = !self.publishers[p].shared && self.replace_current(p, live, h.session_id);
        Some((self.push_session(p, h, true), restarted))
    }

    /// Add a session for `h` (of publisher `p`), making room among its
    /// publisher's ([`MAX_SESSIONS_PER_ID`]); returns its index. One still open that makes room
    /// (all are current: an id two or more publishers share, one of which restarted, or more
    /// publishers than sessions kept) is counted as the close counts it, to its last arrived
    /// message, and kept as a vanished one is ([`SequenceTracker::resume`] takes it up again
    /// by its next frame, its count taken back): else its messages were in no count.
    fn push_session(&mut self, p: usize, h: &Header, current: bool) -> usize {
        if self.publishers[p].sessions.len() >= MAX_SESSIONS_PER_ID {
            // Room: the least recently heard, a replaced one before a current one.
            let mine = self.sessions_of(p);
            let oldest = mine.iter().copied().min_by_key(|&i| (self.sessions[i].current, self.sessions[i].heard));
            if let Some(i) = oldest {
                let open = self.sessions[i].open_unless_spoken_for(self.spoken_for(&mine));
                let counted = open && (self.sessions[i].closed_unended || self.sessions[i].counts_unended());
                if open {
                    self.count_unended(i);
                }
                // Its topics go with it, and back to the budget. One never heard live (known
                // from a cache) heard live later is no sign of a second publisher.
                let gone = self.remove_session(i);
                if open {
                    let r = Resume { evicted: true, ..Resume::of(&gone, counted, self.publishers[p].shared) };
                    self.remember_forgotten((gone.publisher_id, gone.session_id), Some(r));
                }
                if gone.live_seen {
                    let evicted = &mut self.publishers[p].evicted;
                    if evicted.len() == EVICTED_KEPT {
                        evicted.remove(0);
                    }
                    evicted.push(gone.session_id);
                }
            }
        }
        self.sessions.push(Session { current, ..Session::new(h, self.tick) });
        let i = self.sessions.len() - 1;
        self.index.insert((h.publisher_id, h.session_id), i);
        self.publishers[p].sessions.push(h.session_id);
        i
    }

    /// A frame (live data; an end of stream of one never replaced) of session `i`, which is not
    /// current: `(i, restarted)`. One that a later session replaced is alive
    /// after all: two publishers share its id. Its replacement's unended count is
    /// taken back, the id is said once, and from now on its sessions are tracked
    /// side by side (a replaced session's late end of stream is no such sign:
    /// [`SequenceTracker::end_session`]). The restart the replacement counted stays counted:
    /// `restarts` is a counter, live on /metrics, and a counter that went back would read as
    /// a reset there; `id_conflicts` says what it was. One that never was current
    /// (known from a cache's values, or from its end of stream) takes over.
    fn revive(&mut self, i: usize, live: bool) -> (usize, bool) {
        let Some(p) = self.publisher_of(self.sessions[i].publisher_id) else {
            return (i, false);
        };
        let restarted = match self.sessions[i].replaced.take() {
            Some(r) => {
                self.take_back_unended(p, r);
                self.mark_shared(p, self.sessions[i].session_id);
                false
            }
            None => {
                let session = self.sessions[i].session_id;
                !self.publishers[p].shared && self.replace_current(p, live, session)
            }
        };
        self.sessions[i].current = true;
        (i, restarted)
    }

    /// What replacing one of publisher `p`'s sessions counted as unended (`r`) is taken back: it
    /// did not end unended (it came back, or its end of stream came late).
    fn take_back_unended(&mut self, p: usize, r: Replaced) {
        if let Some(n) = r.unended_sent {
            if r.unended_in_totals {
                self.totals.unended_sessions = self.totals.unended_sessions.saturating_sub(1);
                self.totals.unended_sent = self.totals.unended_sent.saturating_sub(n);
            } else {
                let pending = &mut self.publishers[p].pending_unended;
                *pending = (pending.0.saturating_sub(1), pending.1.saturating_sub(n));
            }
        }
    }

    /// Publisher `p`'s id is shared (session `back` came back beside its current one):
    /// counted and said once per id.
    fn mark_shared(&mut self, p: usize, back: u64) {
        if !self.publishers[p].shared {
            let id = self.publishers[p].publisher_id;
            self.publishers[p].shared = true;
            self.totals.id_conflicts += 1;
            let current = self.sessions_of(p).into_iter().find(|&i| self.sessions[i].current);
            let current = current.map_or(0, |i| self.sessions[i].session_id);
            self.conflicts.push(IdConflict { publisher_id: id, sessions: (back, current) });
        }
    }

    /// The session of `h`: `(index, restarted)`, or why it has none: a new publisher would
    /// exceed [`MAX_PUBLISHERS`] live ones, or the session ended and was forgotten. `live`: `h`
    /// is a live data frame.
    ///
    /// The common case, a session held and current, is answered here, inlined in
    /// [`SequenceTracker::on_data`]: the rest ([`SequenceTracker::session_found`]) is a call of
    /// its own. The whole function was too large to inline, and its call with its `find` call
    /// cost 68 instructions a frame in the engine's reader (callgrind, perf34; now ~29).
    #[inline]
    fn session(&mut self, h: &Header, live: bool) -> Result<(usize, bool), Refused> {
        self.tick += 1;
        let found = self.find(h);
        match found {
            Some(i) if self.sessions[i].current => {
                self.sessions[i].heard = self.tick;
                self.last = i;
                Ok((i, false))
            }
            _ => self.session_found(h, live, found),
        }
    }

    /// [`SequenceTracker::session`] past its common case (`tick` counted already): `found`,
    /// [`SequenceTracker::find`]'s answer, is a session not current, or none (a current one
    /// never comes here: it would be revived).
    #[inline(never)]
    fn session_found(&mut self, h: &Header, live: bool, found: Option<usize>) -> Result<(usize, bool), Refused> {
        // Its only caller answered a current session itself.
        debug_assert!(found.is_none_or(|i| !self.sessions[i].current), "a session not current, or none");
        let (i, restarted) = match found {
            Some(i) => self.revive(i, live),
            None => match self.was_forgotten(h) {
                // Vanished, and this data frame is past where it was: taken up again.
                Some(Some(r)) if live && h.stream_seq > r.last_stream_seq => {
                    self.resume(h, r).ok_or(Refused::AfterEnd)?
                }
                Some(_) => return Err(Refused::AfterEnd),
                None => self.admit(h, live).ok_or(Refused::OverLimit)?,
            },
        };
        self.sessions[i].heard = self.tick;
        self.last = i;
        if restarted {
            self.last_restart_at = (h.publisher_id, h.session_id);
        }
        Ok((i, restarted))
    }

    /// The session a cached value `h` (`FROM_CACHE`) is judged in: its own, whichever it is. A
    /// cache holds each topic's last value, of whatever session of its publisher sent it: one
    /// before a restart (a topic not updated since), or the next one, answered before its first
    /// live frame. So a cached value changes no session's place: it counts no restart and no id
    /// conflict, and makes no session current nor replaces one. A session not held yet is kept
    /// beside its publisher's (not current, as [`SequenceTracker::end_session`] keeps one), with
    /// the value's topic sequence, so that its live frame, or the value again, is known as a
    /// duplicate; when a live frame of it comes, it takes over ([`SequenceTracker::revive`]).
    /// None: the value is delivered unjudged, as its topic's last value: its session ended and a
    /// later one replaced it, which gave its topics back (it may be a message delivered live as
    /// well), or every session its publisher id keeps is current (an id shared by that many
    /// publishers: a cached value makes none of theirs room).
    fn cached_session(&mut self, h: &Header) -> Result<Option<usize>, Refused> {
        self.tick += 1;
        let i = match self.find(h) {
            Some(i) => {
                let s = &mut self.sessions[i];
                if !s.current && s.eos_seen && s.replaced.is_some() {
                    return Ok(None);
                }
                // A value of it says it sent data: ended before its values came, it speaks for no
                // other session of its id ([`Session::speaks_for_its_id`]), as its live data says.
                s.ended_without_data = false;
                i
            }
            None if self.was_forgotten(h).is_some() => return Err(Refused::AfterEnd),
            None => {
                let p = self.publisher(h.publisher_id).ok_or(Refused::OverLimit)?;
                let full = self.publishers[p].sessions.len() >= MAX_SESSIONS_PER_ID;
                if full && self.sessions_of(p).into_iter().all(|i| self.sessions[i].current) {
                    return Ok(None);
                }
                self.push_session(p, h, false)
            }
        };
        self.sessions[i].heard = self.tick;
        self.last = i;
        Ok(Some(i))
    }

    /// The session of an end of stream `h`, or None over [`MAX_PUBLISHERS`].
    /// The end of a session never seen live replaces no session of its
    /// publisher (no restart: a verbatim capture replay ends its stream of
    /// recorded frames with one of its own, under the recorded publisher id);
    /// it is kept beside them, so that a repeat counts once. The end of a
    /// session that a later one replaced came late (its publisher restarted, and the old
    /// session's end of stream arrived behind the new one's data): it ends that session, whose
    /// unended count is taken back (its end of stream counts it), and says nothing of a second
    /// publisher under the id (only its live data would, [`SequenceTracker::revive`]).
    fn end_session(&mut self, h: &Header) -> Option<usize> {
        match self.find(h) {
            Some(i) => {
                self.tick += 1;
                self.sessions[i].heard = self.tick;
                if let Some(r) = self.sessions[i].replaced {
                    let p = self.publisher_of(h.publisher_id)?;
                    if !self.sessions[i].eos_seen {
                        self.take_back_unended(p, r);
                        // Counted by its end of stream now, not to its last arrived message;
                        // still replaced, so a live frame of it after all says the id is shared.
                        self.sessions[i].replaced = Some(Replaced { unended_sent: None, ..r });
                        // Ended: no frame of it is to come, so its topics are not needed.
                        self.topics -= std::mem::take(&mut self.sessions[i].topics).len();
                    }
                }
                return Some(i);
            }
            None if !self.has_live_current(h.publisher_id) => return self.session(h, false).ok().map(|(i, _)| i),
            None => {}
        }
        // Beside the current session, which stays current (a live frame of
        // this one would take over, as [`SequenceTracker::revive`] says).
        self.tick += 1;
        let p = self.publisher(h.publisher_id)?;
        Some(self.push_session(p, h, false))
    }

    /// Whether a session heard live has not ended: no end of stream of it, nor one that speaks
    /// for it heard after its last frame: one of a session that sent no data of its own, of its
    /// publisher id or (every topic taken) of any id (a verbatim capture replay ends the
    /// recorded sessions with an end of stream of its own). Another publisher of the shard may
    /// still be sending after one's end of stream, under its own id or one it shares. A scan of
    /// the kept sessions, for an end of stream, not per message.
    pub fn any_open(&self) -> bool {
        self.open_sessions().next().is_some()
    }

    /// The indices of the sessions [`SequenceTracker::any_open`] finds open.
    fn open_sessions(&self) -> impl Iterator<Item = usize> + '_ {
        // Per id, when its last end of stream was heard: one pass, not one per session (up to
        // MAX_PUBLISHERS x MAX_SESSIONS_PER_ID of them).
        let mut last_end: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        for e in self.sessions.iter().filter(|e| e.speaks_for_its_id()) {
            let t = last_end.entry(e.publisher_id).or_insert(0);
            *t = (*t).max(e.heard);
        }
        let spokesman = self.spokesman_heard;
        self.sessions.iter().enumerate().filter_map(move |(i, s)| {
            let spoken = spokesman.max(last_end.get(&s.publisher_id).copied().unwrap_or(0));
            s.open_unless_spoken_for(spoken).then_some(i)
        })
    }

    /// Count session `i`, open at the close or as it vanished, as unended by its last arrived
    /// sequence, if it was seen from its first message and is not counted yet. True: counted now.
    fn count_unended(&mut self, i: usize) -> bool {
        let s = &mut self.sessions[i];
        if s.closed_unended || !s.counts_unended() {
            return false;
        }
        s.closed_unended = true;
        self.totals.unended_sessions += 1;
        self.totals.unended_sent = self.totals.unended_sent.saturating_add(s.last_stream_seq);
        true
    }

    /// The subscriber closes: the sessions still open (no end of stream of theirs, nor one that
    /// speaks for them, [`SequenceTracker::any_open`]) ended without one as far as it can know.
    /// Each seen from its first message counts as unended by its last arrived sequence (a
    /// floor), with the sessions its publisher ended by restarting, so that `sent` covers every
    /// message delivered: a second publisher of a bound endpoint still sending when the first
    /// one's end of stream ended the run, or one that never sent its end of stream. A second
    /// call counts nothing again.
    pub fn close(&mut self) {
        let open: Vec<usize> = self.open_sessions().collect();
        for i in open {
            if self.count_unended(i) {
                self.fold_pending(self.sessions[i].publisher_id);
            }
        }
    }

    /// Add `n` sessions that ended by a restart, `sent` messages in all, to publisher `p`'s
    /// [`PublisherState::pending_unended`].
    fn add_pending(&mut self, p: usize, (n, sent): (u64, u64)) {
        let pending = &mut self.publishers[p].pending_unended;
        *pending = (pending.0 + n, pending.1.saturating_add(sent));
    }

    /// Publisher `id`'s sessions that ended by a restart without an end of stream go into
    /// the totals (its own end of stream, or the subscriber's close, says they are its).
    fn fold_pending(&mut self, id: u32) {
        let Some(p) = self.publisher_of(id) else { return };
        let (n, sent) = std::mem::take(&mut self.publishers[p].pending_unended);
        self.totals.unended_sessions += n;
        self.totals.unended_sent = self.totals.unended_sent.saturating_add(sent);
        for i in self.sessions_of(p) {
            if let Some(r) = self.sessions[i].replaced.as_mut() {
                r.unended_in_totals = true;
            }
        }
    }

    /// A heartbeat of `h`'s session: it is alive though it sends no data, so it is not
    /// forgotten as vanished ([`SequenceTracker::sweep`]). One of a session forgotten as
    /// vanished takes it up again; one of a session not held holds nothing (its data will).
    pub fn on_heartbeat(&mut self, h: &Header) {
        self.tick += 1;
        let i = match self.find(h) {
            Some(i) => Some(i),
            None => match self.was_forgotten(h) {
                Some(Some(r)) => self.resume(h, r).map(|(i, _)| i),
                _ => None,
            },
        };
        if let Some(i) = i {
            self.sessions[i].beat = self.tick;
        }
    }

    /// Take up again session `h`, forgotten as vanished at `r`, now that a live frame of it
    /// came: its `unended_*` count is taken back (it did not end; its end of stream or the
    /// close counts it), and it goes on from its last stream position, so the stream gap
    /// across its silence is counted and nothing before it is counted again. None (it stays
    /// forgotten, its frames `after_end`): its publisher started another session since (that
    /// one ended it; not for an id two publishers share, where a live session of it may be the
    /// other publisher's: it is taken up beside that one, as it was held), or a new publisher
    /// would be over the limit.
    #[cold]
    fn resume(&mut self, h: &Header, r: Resume) -> Option<(usize, bool)> {
        // Under an id two publishers share, another live session of it is no restart of this one.
        if r.restarted || (!r.shared && self.has_live_current(h.publisher_id)) {
            return None;
        }
        if r.shared {
            // Still shared: it replaces none of the id's sessions, nor they it.
            let p = self.publisher(h.publisher_id)?;
            self.publishers[p].shared = true;
        }
        let (i, restarted) = self.admit(h, true)?;
        let key = (h.publisher_id, h.session_id);
        self.forget_key(key);
        self.forgotten.retain(|&k| k != key);
        if let Some(n) = r.unended_sent {
            self.totals.unended_sessions = self.totals.unended_sessions.saturating_sub(1);
            self.totals.unended_sent = self.totals.unended_sent.saturating_sub(n);
        }
        self.totals.vanished_back += u64::from(!r.evicted);
        if let Some(p) = self.publisher_of(h.publisher_id) {
            self.add_pending(p, r.pending);
        }
        let s = &mut self.sessions[i];
        s.last_stream_seq = r.last_stream_seq;
        s.from_start = r.from_start;
        s.first_live_seq = r.first_live_seq;
        s.before_counted = r.before_counted;
        s.live_seen = true;
        s.resumed = true;
        Some((i, restarted))
    }

    /// Look for publishers of which nothing was heard (no data, heartbeat or end of stream of
    /// any session of theirs) for the bound ([`SequenceTracker::with_forget_silent_after`]), as
    /// of `now_ns`, read after the frames judged before the previous call. Each one's open
    /// sessions are closed as vanished (counted as [`SequenceTracker::close`] counts one, in
    /// [`SequenceTotals::vanished`], noted for [`SequenceTracker::take_vanished`]) and it is
    /// forgotten with its topics. Called every round of the reader, never per message: it
    /// looks at most every hundredth of a second and at 64 publishers then.
    /// The time of a frame is its count, noted against the clock at the sweeps (no clock read
    /// per frame): a publisher is forgotten no sooner than the bound after its last frame, and
    /// at most a sixty-fourth of the bound (at least 10 ms) and a few sweeps later. Only time
    /// the reader ran is judged: after a second or more without a call (a stall of the reader,
    /// or a back-pressure episode, when frames may wait unread in its queue) silence counts
    /// from the resumption. True: one was forgotten (what the reader publishes changed).
    pub fn sweep(&mut self, now_ns: u64) -> bool {
        let judged = std::mem::replace(&mut self.swept_tick, self.tick);
        let swept_ns = std::mem::replace(&mut self.swept_ns, now_ns);
        let end_recent = |at: u64, now: u64| at != 0 && now.saturating_sub(at) <= CONNECTION_END_SLACK_NS;
        if std::mem::take(&mut self.connection_end_new) {
            self.connection_end_ns = now_ns.max(1);
        }
        if now_ns.saturating_sub(swept_ns) >= READER_PAUSE_NS {
            // The reader did not run (a stall, or blocked behind its workers): frames may be
            // waiting in its queue, so silence is judged from its resumption, as the snail's is,
            // and so is the slack after a connection end noted just before.
            self.checkpoints.clear();
            if end_recent(self.connection_end_ns, swept_ns) {
                self.connection_end_ns = now_ns.max(1);
            }
        }
        if end_recent(self.connection_end_ns, now_ns) {
            // Frames judged so far came before the end, or were queued behind it.
            self.connection_end_tick = self.tick;
        }
        if self.forget_after_ns == 0 || now_ns < self.next_sweep_ns {
            return false;
        }
        let every = (self.forget_after_ns / 64).max(SWEEP_EVERY_MIN_NS);
        self.next_sweep_ns = now_ns.saturating_add(every.min(SWEEP_EVERY_MAX_NS));
        if self.checkpoints.back().is_none_or(|&(t, _)| now_ns.saturating_sub(t) >= every) {
            self.checkpoints.push_back((now_ns, judged));
        }
        let Some(cut_ns) = now_ns.checked_sub(self.forget_after_ns) else { return false };
        while self.checkpoints.get(1).is_some_and(|&(t, _)| t <= cut_ns) {
            self.checkpoints.pop_front();
        }
        let Some(&(before_ns, before)) = self.checkpoints.front().filter(|&&(t, _)| t <= cut_ns) else {
            return false;
        };
        let told = self.connections_ended.is_some();
        let others_heard = told && self.connections_open <= 1 && self.heard_mid_bound(before_ns, now_ns);
        let mut forgot = false;
        for _ in 0..SWEEP_PUBLISHERS.min(self.publishers.len()) {
            if self.sweep_at >= self.publishers.len() {
                self.sweep_at = 0;
            }
            let p = self.sweep_at;
            let last = self.sessions_of(p).into_iter().map(|i| self.sessions[i].heard.max(self.sessions[i].beat)).max();
            let last = last.unwrap_or(0);
            // Heard before the bound, and (when connections are known) before one ended, or
            // others were heard on the one connection open while it was silent.
            let since = if last > before {
                None
            } else if !told {
                Some(VanishedSince::Silence)
            } else if last <= self.connection_end_tick {
                Some(VanishedSince::ConnectionEnded)
            } else if others_heard {
                Some(VanishedSince::OtherHeard)
            } else {
                None
            };
            if let Some(since) = since {
                // Its place is taken by the last publisher: looked at next.
                self.vanish(p, since);
                forgot = true;
            } else {
                self.sweep_at += 1;
            }
        }
        forgot
    }

    /// Whether frames were judged well inside the bound that a publisher last heard by the
    /// checkpoint at `before_ns` was silent through: after a quarter of it past `before_ns`,
    /// and before a quarter of it back from `now_ns` (to a checkpoint's precision). Those were
    /// other publishers': on a connection they share, it was not held back. Not at its edges:
    /// a connection held back as a whole (a lossless proxy waiting on another subscriber)
    /// silences all its publishers at once, their last frames a moment apart, and when it
    /// resumes one's frames may come a moment before another's.
    fn heard_mid_bound(&self, before_ns: u64, now_ns: u64) -> bool {
        let margin = self.forget_after_ns / 4;
        let from = before_ns.saturating_add(margin);
        let to = now_ns.saturating_sub(margin);
        let lo = self.checkpoints.iter().find(|&&(t, _)| t >= from).map(|&(_, k)| k);
        let hi = self.checkpoints.iter().rev().find(|&&(t, _)| t <= to).map(|&(_, k)| k);
        matches!((lo, hi), (Some(lo), Some(hi)) if hi > lo)
    }

    /// When the last end of stream that speaks for sessions `mine` (of one publisher id) heard
    /// before it was heard: one without data of its own of their id, or a spokesman's of any id
    /// ([`SequenceTracker::open_sessions`]).
    fn spoken_for(&self, mine: &[usize]) -> u64 {
        let last_end =
            mine.iter().filter(|&&i| self.sessions[i].speaks_for_its_id()).map(|&i| self.sessions[i].heard).max();
        self.spokesman_heard.max(last_end.unwrap_or(0))
    }

    /// Forget publisher `p`, silent for the bound: its open sessions (as
    /// [`SequenceTracker::close`] finds them) are vanished, counted as the close counts them.
    #[cold]
    fn vanish(&mut self, p: usize, since: VanishedSince) {
        let id = self.publishers[p].publisher_id;
        let mine = self.sessions_of(p);
        let spoken = self.spoken_for(&mine);
        let mut resumes: Vec<(u64, Resume)> = Vec::new();
        let mut counted_any = false;
        for i in mine {
            if !self.sessions[i].open_unless_spoken_for(spoken) {
                continue;
            }
            // Counted now, or by a close already (taken back together if it comes back).
            let counted = self.sessions[i].closed_unended || self.sessions[i].counts_unended();
            counted_any |= self.count_unended(i);
            let s = &self.sessions[i];
            let r = Resume::of(s, counted, self.publishers[p].shared);
            resumes.push((s.session_id, r));
            self.totals.vanished += 1;
            let note = Vanished {
                publisher_id: id,
                session_id: s.session_id,
                last_stream_seq: s.last_stream_seq,
                counted,
                topics: s.topics.len(),
                silent_ns: self.forget_after_ns,
                since,
            };
            if self.vanished_notes.len() < VANISHED_NOTES_KEPT {
                self.vanished_notes.push_back(note);
            } else {
                self.vanished_unnoted += 1;
            }
        }
        if counted_any {
            // Its sessions that ended by a restart are its to count, as at the close.
            self.fold_pending(id);
        } else if let Some((_, r)) = resumes.first_mut() {
            // Not counted now, as at the close; kept with a session taken up again if one is.
            r.pending = std::mem::take(&mut self.publishers[p].pending_unended);
        }
        self.ended.retain(|&e| e != id);
        self.forget_publisher(p, |s| resumes.iter().find(|(sid, _)| *sid == s.session_id).map(|&(_, r)| r));
    }

    /// The next session forgotten as vanished not yet taken, to say; and how many more were
    /// past what is kept to say (64), taken with the last one.
    pub fn take_vanished(&mut self) -> Option<(Vanished, u64)> {
        let v = self.vanished_notes.pop_front()?;
        let more = if self.vanished_notes.is_empty() { std::mem::take(&mut self.vanished_unnoted) } else { 0 };
        Some((v, more))
    }

    /// Publisher id found shared by two publishers since the last call (said once per id).
    pub fn take_id_conflict(&mut self) -> Option<IdConflict> {
        (!self.conflicts.is_empty()).then(|| self.conflicts.remove(0))
    }

    /// A new topic of `h`'s session dropped: past the session's limit (`session`) or the
    /// tracker's budget.
    #[cold]
    fn over_topics(&mut self, h: &Header, session: bool, restart: bool) -> Verdict {
        let max = if session { MAX_TOPICS_PER_SESSION } else { self.max_topics };
        self.over_limit_cause =
            OverLimit::Topics { publisher_id: h.publisher_id, session_id: h.session_id, session, max };
        self.totals.over_limit_topics += 1;
        self.reject(|t| &mut t.over_limit, restart)
    }

    /// A live frame of session `i` dropped as a value its topic has (where every topic is
    /// taken). Behind the live stream it is a duplicate. Ahead of it, its topic's value came from
    /// a cache: the live stream passed its position. The positions it skipped are missing, less
    /// those cached values filled, and its own is missing too unless a cached value was this
    /// message (a cache's newer value of the topic replaced it: it was not delivered).
    fn dropped_ahead(&mut self, i: usize, h: &Header) {
        let s = &mut self.sessions[i];
        if h.stream_seq <= s.last_stream_seq {
            return;
        }
        let counts = s.last_stream_seq > 0 || s.from_start;
        let skipped = if counts { h.stream_seq - s.last_stream_seq - 1 } else { 0 };
        let mut missed = s.not_cached(skipped, h.stream_seq);
        if !s.cached_at(h.stream_seq) && (counts || s.before_counted) {
            missed += 1;
        }
        s.last_stream_seq = h.stream_seq;
        self.count_gaps(h, missed);
    }

    /// `n` positions of `h`'s session counted missing (its last gap, if any).
    #[inline]
    fn count_gaps(&mut self, h: &Header, n: u64) {
        if n > 0 {
            self.last_gap_at = (h.publisher_id, h.session_id);
            self.totals.gaps = self.totals.gaps.saturating_add(n);
        }
    }

    /// A message of session `i` at stream position `p` that was counted missing arrived after
    /// all (late, or as a cached value behind the live stream): taken off the part it was
    /// counted in, `before_first` when it is before the session's first live frame (where every
    /// topic is taken, and if that was counted), else `gaps`.
    fn arrived_behind(&mut self, i: usize, p: u64) {
        let s = &self.sessions[i];
        let part = if self.full_subscription && p < s.first_live_seq {
            if !s.before_counted {
                return;
            }
            &mut self.totals.before_first
        } else {
            &mut self.totals.gaps
        };
        *part = part.saturating_sub(1);
    }

    fn reject(&mut self, counter: fn(&mut SequenceTotals) -> &mut u64, restart: bool) -> Verdict {
        *counter(&mut self.totals) += 1;
        Verdict { accept: false, missed: 0, restart }
    }

    /// Check one data frame. Allocates only for a topic seen for the first time.
    #[inline]
    pub fn on_data(&mut self, h: &Header, topic: &[u8]) -> Verdict {
        let from_cache = h.flags & FLAG_FROM_CACHE != 0;
        let found = if from_cache {
            match self.cached_session(h) {
                Ok(Some(i)) => Ok((i, false)),
                Ok(None) => {
                    // Unjudged ([`SequenceTracker::cached_session`]): the topic's last value.
                    self.totals.accepted += 1;
                    return Verdict { accept: true, missed: 0, restart: false };
                }
                Err(why) => Err(why),
            }
        } else {
            self.session(h, true)
        };
        let (mut i, restart) = match found {
            Ok(found) => found,
            Err(Refused::AfterEnd) => return self.reject(|t| &mut t.after_end, false),
            Err(Refused::OverLimit) => {
                self.totals.over_limit_data += 1;
                self.totals.over_limit_publishers += 1;
                return self.reject(|t| &mut t.over_limit, false);
            }
        };
        // The topic's hash, once: its lookup and, when it is new, its insertion.
        let hash = topic_hash(topic);
        let same = |e: &TopicEntry| same_topic(&e.topic, topic);
        if self.topics >= self.max_topics && self.sessions[i].topics.find(hash, same).is_none() {
            // A new topic with the budget held: ended publishers give theirs back, if any.
            if !self.make_topic_room(h.publisher_id) {
                return self.over_topics(h, false, restart);
            }
            match self.find(h) {
                Some(moved) => i = moved,
                None => return self.over_topics(h, false, restart),
            }
        }
        let full = self.full_subscription;
        let s = &mut self.sessions[i];
        // What the session sent before its first live frame here: only where every topic is
        // taken (through a filter the stream sequence jumps by design), and only a believable
        // position (a first frame claiming 2^60 sent is not counted as 2^60 messages). Not for
        // an id seen shared: more publishers than it keeps sessions for push each other out,
        // and each coming back would count its whole stream again.
        if !from_cache && !s.live_seen {
            // Seen from its start only if its first live frame is its first message (a session
            // known first from a cache's values, one of them its message 1, was not).
            s.from_start = h.stream_seq <= 1;
            s.first_live_seq = h.stream_seq;
            // What arrived of it as cached values before this frame was not lost.
            let before = s.not_cached(h.stream_seq.saturating_sub(1), h.stream_seq);
            if full
                && h.stream_seq <= MAX_SEQ_JUMP
                && !self.publisher_index.get(&h.publisher_id).is_some_and(|&p| self.publishers[p].shared)
            {
                s.before_counted = true;
                self.totals.before_first = self.totals.before_first.saturating_add(before);
            }
        }
        s.live_seen |= !from_cache;
        // A live frame's stream sequence must be believable before anything changes.
        if !from_cache && s.last_stream_seq > 0 && h.stream_seq > s.last_stream_seq.saturating_add(MAX_SEQ_JUMP) {
            return self.reject(|t| &mut t.implausible, restart);
        }
        let mut missed = 0;
        // Whether the stream sequence counts this session's gaps (full subscription).
        let stream_counts = s.last_stream_seq > 0 || s.from_start;
        match s.topics.find_mut(hash, same) {
            Some(TopicEntry { seq: ts, .. }) => {
                if h.topic_seq <= ts.last {
                    let back = ts.last - h.topic_seq;
                    if back < REORDER_WINDOW && ts.seen & (1 << back) == 0 {
                        ts.seen |= 1 << back;
                        self.arrived_behind(i, h.stream_seq);
                        return self.reject(|t| &mut t.reordered, restart);
                    }
                    if full && !from_cache {
                        self.dropped_ahead(i, h);
                    }
                    return self.reject(|t| &mut t.duplicates, restart);
                }
                if h.topic_seq - ts.last > MAX_SEQ_JUMP {
                    return self.reject(|t| &mut t.implausible, restart);
                }
                if !full && !from_cache {
                    missed = h.topic_seq - ts.last - 1;
                }
                ts.advance(h.topic_seq, !from_cache && (!full || stream_counts));
            }
            None => {
                if h.topic_seq > MAX_SEQ_JUMP && s.from_start {
                    return self.reject(|t| &mut t.implausible, restart);
                }
                if s.topics.len() >= MAX_TOPICS_PER_SESSION {
                    return self.over_topics(h, true, restart);
                }
                // Of a session taken up again, a topic new here may have been sent before.
                let from_first = s.from_start && !s.resumed;
                if !full && !from_cache && from_first {
                    missed = h.topic_seq.saturating_sub(1);
                }
                // Bit 0 stands for sequence 0, which no publisher sends.
                let mut ts = TopicSeq { last: 0, seen: 1 };
                ts.advance(h.topic_seq, !from_cache && from_first);
                s.topics.insert_unique(hash, TopicEntry { topic: topic.into(), seq: ts }, |e| topic_hash(&e.topic));
                self.topics += 1;
            }
        }
        // Behind the live stream (a live frame that came after a later one of another topic, or
        // after the end of stream; a cached value): its position was counted missing already.
        let mut behind = false;
        if !from_cache {
            let next = s.last_stream_seq.saturating_add(1);
            if full && h.stream_seq > next && (s.last_stream_seq > 0 || s.from_start) {
                missed = h.stream_seq - next;
            }
            behind = full && s.last_stream_seq > 0 && h.stream_seq <= s.last_stream_seq;
            missed = s.not_cached(missed, h.stream_seq);
            s.last_stream_seq = s.last_stream_seq.max(h.stream_seq);
        } else if full {
            // A cached value new to its topic arrived: its stream position is not lost.
            if s.live_seen && h.stream_seq <= s.last_stream_seq {
                behind = stream_counts;
            } else {
                // Ahead of it: not counted when a live frame or the end of stream passes it.
                s.cached_ahead.push(Reverse(h.stream_seq));
            }
        }
        if behind {
            self.arrived_behind(i, h.stream_seq);
        }
        self.totals.accepted += 1;
        self.count_gaps(h, missed);
        Verdict { accept: true, missed, restart }
    }

    /// An end of stream from `h`'s session, which sent `sent` data messages.
    /// Counts messages lost at the tail as gaps. Returns false if this session's
    /// end was already seen (a repeat changes nothing).
    pub fn on_end_of_stream(&mut self, h: &Header, sent: u64) -> bool {
        match self.was_forgotten(h) {
            // Its end was heard already: a repeat counts nothing.
            Some(None) => return false,
            // Vanished, and ending now after all: taken up again, then ended as any is. Not
            // taken up (its publisher restarted since, or over the limit): too late, dropped and
            // counted, its count already in `unended_*` (a floor).
            Some(Some(r)) => {
                let taken_up = self.resume(h, r).is_some();
                if !taken_up {
                    self.totals.after_end += 1;
                    return false;
                }
            }
            None => {}
        }
        let Some(i) = self.end_session(h) else {
            self.totals.over_limit += 1;
            self.totals.over_limit_publishers += 1;
            return false;
        };
        let full = self.full_subscription;
        let s = &mut self.sessions[i];
        if s.eos_seen {
            return false;
        }
        s.eos_seen = true;
        // No data of its own, live or cached (a session known only from a cache's values sent
        // those): it speaks for other sessions' frames.
        s.ended_without_data = s.last_stream_seq == 0 && s.topics.is_empty();
        if full && s.ended_without_data {
            // Of any id, where every topic is taken (through a filter a session's data may all
            // be filtered out).
            self.spokesman_heard = s.heard;
        }
        // This publisher's own end, of a session it sent data in: its earlier
        // sessions that ended without one are its to count.
        if s.last_stream_seq > 0 {
            self.fold_pending(h.publisher_id);
        }
        let s = &mut self.sessions[i];
        // The tail of a session that arrived live (of one of which no live frame arrived,
        // nothing is counted missing: it is in neither part of `lost`).
        if full && s.live_seen && h.stream_seq <= s.last_stream_seq.saturating_add(MAX_SEQ_JUMP) {
            let passed = h.stream_seq.saturating_sub(s.last_stream_seq);
            let tail = s.not_cached(passed, h.stream_seq.saturating_add(1));
            s.last_stream_seq = s.last_stream_seq.max(h.stream_seq);
            self.count_gaps(h, tail);
        }
        self.totals.eos_sessions += 1;
        self.totals.eos_sent = self.totals.eos_sent.saturating_add(sent);
        self.last_eos_at = (h.publisher_id, h.session_id, sent);
        if let Some(p) = self.publisher_of(h.publisher_id) {
            self.note_if_ended(p);
        }
        true
    }

    pub fn totals(&self) -> SequenceTotals {
        self.totals
    }

    /// True when stream gaps count as loss (no topic filter).
    pub fn full_subscription(&self) -> bool {
        self.full_subscription
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Kind;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::ops::RangeInclusive;

    fn h(publisher_id: u32, session_id: u64, stream_seq: u64, topic_seq: u64) -> Header {
        Header { kind: Kind::Data, flags: 0, publisher_id, session_id, stream_seq, topic_seq, send_time_ns: 0 }
    }

    /// The topic table's comparison agrees with the slices' own for every length up to 40: equal
    /// topics are the same, and a change of any one byte, or of the length, tells them apart.
    #[test]
    fn same_topic_sees_every_byte() {
        for len in 0..=40usize {
            let a: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37).wrapping_add(1)).collect();
            assert!(same_topic(&a, &a.clone()), "len {len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x40;
                assert!(!same_topic(&a, &b), "len {len}, byte {at} changed");
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!same_topic(&a, &longer) && !same_topic(&longer, &a), "len {len} and {}", len + 1);
        }
    }

    /// The map hasher reads every byte of a key (each byte value in each position of keys of
    /// every length up to 24 changes the hash), and spreads topics, order ids and instrument ids
    /// over a table's low bits (its bucket) and top 7 bits (hashbrown's tag) about as a random
    /// function would.
    #[test]
    fn word_hasher_sees_every_byte_and_spreads_keys() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let build = BuildHasherDefault::<WordHasher>::default();
        for len in 0..=24usize {
            let base = vec![b'A'; len];
            let h0 = build.hash_one(&base[..]);
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut k = base.clone();
                    k[pos] = b;
                    assert_eq!(build.hash_one(&k[..]) == h0, b == b'A', "len {len}, byte {b} at {pos}");
                }
            }
            // Lengths apart: a key and the same key with a NUL more.
            assert_ne!(build.hash_one(&base[..]), build.hash_one(&[&base[..], &[0u8]].concat()[..]));
        }
        let spread = |hashes: Vec<u64>| {
            let n = hashes.len();
            let distinct: std::collections::HashSet<u64> = hashes.iter().copied().collect();
            assert_eq!(distinct.len(), n, "no two keys hash alike");
            // 1024 buckets by the low bits, 128 tags by the top 7: no bucket or tag holds more than
            // twice its share (a random function stays well inside that at these counts).
            for (what, slots, index) in [
                ("bucket", 1024usize, Box::new(|h: u64| (h & 1023) as usize) as Box<dyn Fn(u64) -> usize>),
                ("tag", 128, Box::new(|h: u64| (h >> 57) as usize)),
            ] {
                let mut counts = vec![0usize; slots];
                for &h in &hashes {
                    counts[index(h)] += 1;
                }
                let most = counts.iter().copied().max().unwrap_or(0);
                assert!(most <= 2 * n / slots + 8, "{what}: {most} of {n} keys in one of {slots}");
            }
        };
        let topics = crate::feed::symbol_names(20_000);
        spread(topics.iter().map(|t| build.hash_one(t.as_bytes())).collect());
        spread((0..20_000u64).map(|id| build.hash_one(id)).collect());
        spread((0..20_000u64).map(|id| build.hash_one(id << 32)).collect());
        spread((0..20_000u32).map(|id| build.hash_one(id)).collect());
    }

    /// Data frames `seqs` of a session of `publisher_id`, each its stream's and its topic's
    /// sequence number.
    fn feed(t: &mut SequenceTracker, publisher_id: u32, session_id: u64, seqs: RangeInclusive<u64>, topic: &[u8]) {
        for s in seqs {
            t.on_data(&h(publisher_id, session_id, s, s), topic);
        }
    }

    /// [`h`] as a last-value cache re-sends it (`FLAG_FROM_CACHE`).
    fn cached(publisher_id: u32, session_id: u64, stream_seq: u64, topic_seq: u64) -> Header {
        Header { flags: FLAG_FROM_CACHE, ..h(publisher_id, session_id, stream_seq, topic_seq) }
    }

    #[test]
    fn what_a_session_sent_before_its_first_live_frame_is_counted_once() {
        let mut t = SequenceTracker::new(true);
        // Publisher 1 seen from its start; publisher 2 first seen at stream sequence 101.
        t.on_data(&h(1, 10, 1, 1), b"A");
        t.on_data(&h(2, 20, 101, 1), b"B");
        t.on_data(&h(2, 20, 102, 2), b"B");
        assert_eq!(t.totals().before_first, 100);
        assert_eq!(t.totals().gaps, 0, "not a gap: nothing before was this subscriber's to see");
        // Publisher 3 first known from a cache, then live at 50: 49 sent before its first live
        // frame, one of them (7) arrived as a cached value: 48 not seen.
        t.on_data(&cached(3, 30, 7, 7), b"C");
        t.on_data(&h(3, 30, 50, 8), b"C");
        assert_eq!(t.totals().before_first, 148);
        // A restart of publisher 1 from its start adds nothing; one that joins at 5 adds 4.
        t.on_data(&h(1, 11, 1, 1), b"A");
        t.on_data(&h(2, 21, 5, 1), b"B");
        assert_eq!(t.totals().before_first, 152);
        // A first position past MAX_SEQ_JUMP is not believed as a count.
        t.on_data(&h(4, 40, u64::MAX, 1), b"D");
        assert_eq!(t.totals().before_first, 152);
        // Through a topic filter the stream sequence jumps by design: nothing counted.
        let mut f = SequenceTracker::new(false);
        f.on_data(&h(1, 10, 500, 1), b"A");
        assert_eq!(f.totals().before_first, 0);
    }

    /// Stream position `p` of a feed of [`TOPICS`] topics taken in turn: its header and topic.
    fn at(p: u64, from_cache: bool) -> (Header, [u8; 1]) {
        let hd = h(1, 9, p, (p - 1) / TOPICS + 1);
        let hd = if from_cache { Header { flags: FLAG_FROM_CACHE, ..hd } } else { hd };
        (hd, [b'A' + (p % TOPICS) as u8])
    }
    const TOPICS: u64 = 10;

    /// A last-value cache's answer as of stream position `c`: each topic's last value.
    fn answer(t: &mut SequenceTracker, c: u64) {
        for p in c.saturating_sub(TOPICS - 1).max(1)..=c {
            let (hd, topic) = at(p, true);
            t.on_data(&hd, &topic);
        }
    }

    /// The loss a report computes (sent less what arrived) is the positions counted missing:
    /// gaps by sequence plus what was sent before the first message seen.
    fn parts_add_up(t: &SequenceTracker, sent: u64) -> Result<(), String> {
        let tot = t.totals();
        let lost = sent - tot.accepted - tot.reordered;
        match tot.gaps + tot.before_first == lost {
            true => Ok(()),
            false => Err(format!("lost {lost} ≠ gaps {} + before_first {}: {tot:?}", tot.gaps, tot.before_first)),
        }
    }

    /// Values a last-value cache re-sends arrive: they are not counted missing too. An LVC
    /// restarted mid-run (its new answer holds values the subscriber had not had live) made the
    /// report's parts exceed the whole: `lost 12168 (gaps by sequence: 12226 …)` with 5 sent
    /// before the first message, the 63 cached values counted both as arrived and as gaps.
    #[test]
    fn values_from_a_cache_are_not_counted_missing() {
        let live = |t: &mut SequenceTracker, ps: RangeInclusive<u64>| {
            for p in ps {
                let (hd, topic) = at(p, false);
                assert!(t.on_data(&hd, &topic).accept, "live {p}");
            }
        };
        // The LVC dies after 100 and comes back at 150: its answer holds 141..=150, live goes on
        // from 151. 50 missing, 10 of them arrived from the cache.
        let mut t = SequenceTracker::new(true);
        live(&mut t, 1..=100);
        answer(&mut t, 150);
        live(&mut t, 151..=200);
        t.on_end_of_stream(&h(1, 9, 200, 0), 200);
        assert_eq!((t.totals().accepted, t.totals().gaps, t.totals().before_first), (160, 40, 0));
        assert_eq!(parts_add_up(&t, 200), Ok(()));

        // Live frames in flight behind the answer (145..=150 come live too: duplicates of the
        // cached values, dropped), and the tail lost.
        let mut t = SequenceTracker::new(true);
        live(&mut t, 1..=100);
        answer(&mut t, 150);
        for p in 145..=150 {
            let (hd, topic) = at(p, false);
            assert!(!t.on_data(&hd, &topic).accept, "{p}: its topic's cached value is as new");
        }
        live(&mut t, 151..=190);
        t.on_end_of_stream(&h(1, 9, 200, 0), 200);
        assert_eq!(parts_add_up(&t, 200), Ok(()));
        assert_eq!(t.totals().gaps, 200 - 100 - 10 - 40, "{:?}", t.totals());

        // A late join through a cache: the answer (91..=100, and a value 1 first, as for a topic
        // not updated since) comes first, live from 101. 100 sent before the first live
        // message, 11 of them arrived: 89; no gap (it read 100 gaps and 100 before the first
        // when the answer's first value was message 1: the session taken as seen from its start).
        let mut t = SequenceTracker::new(true);
        let (hd, topic) = at(1, true);
        t.on_data(&hd, &topic);
        answer(&mut t, 100);
        live(&mut t, 101..=200);
        t.on_end_of_stream(&h(1, 9, 200, 0), 200);
        let tot = t.totals();
        assert_eq!((tot.accepted, tot.gaps, tot.before_first), (111, 0, 89), "{tot:?}");
        assert_eq!(parts_add_up(&t, 200), Ok(()));

        // A late join through a cache that answers ahead of the live stream (its answer holds
        // 11..=20, the live frames from 15 on were in flight): the live 15..=20 are its values
        // again. 1..=14 sent before the first live frame, 11..=14 of them cached: 10. It read 6
        // (the answer's 20 taken off what came before 15), and 9 with nothing live before 20.
        let mut t = SequenceTracker::new(true);
        answer(&mut t, 20);
        live(&mut t, 21..=30);
        let mut t2 = SequenceTracker::new(true);
        answer(&mut t2, 20);
        for p in 15..=20 {
            let (hd, topic) = at(p, false);
            assert!(!t2.on_data(&hd, &topic).accept, "{p}: had from the cache");
        }
        live(&mut t2, 21..=30);
        for (t, first) in [(t, 21), (t2, 15)] {
            let tot = t.totals();
            assert_eq!(
                (tot.accepted, tot.gaps, tot.before_first),
                (20, 0, first - 1 - (first - 11).min(10)),
                "{tot:?}"
            );
            assert_eq!(parts_add_up(&t, 30), Ok(()));
        }
        let mut t = SequenceTracker::new(true);
        answer(&mut t, 20);
        let (hd, topic) = at(20, false);
        assert!(!t.on_data(&hd, &topic).accept);
        t.on_end_of_stream(&h(1, 9, 20, 0), 20);
        assert_eq!((t.totals().gaps, t.totals().before_first), (0, 10), "{:?}", t.totals());

        // A live frame older than its topic's cached value (the answer holds 16..=25, live 12 is
        // topic C's value before 22) is dropped, not delivered: its position is missing too.
        let mut t = SequenceTracker::new(true);
        live(&mut t, 1..=10);
        answer(&mut t, 25);
        let (hd, topic) = at(12, false);
        assert!(!t.on_data(&hd, &topic).accept, "topic C has 22");
        assert_eq!(t.totals().gaps, 2, "11 skipped, 12 not delivered");
        live(&mut t, 26..=30);
        assert_eq!(t.totals().gaps, 5, "11..=15: 16..=25 came from the cache");
        assert_eq!(parts_add_up(&t, 30), Ok(()));

        // A hole behind the live stream filled by a cached value (its live frame was lost).
        let mut t = SequenceTracker::new(true);
        live(&mut t, 1..=10);
        live(&mut t, 12..=20);
        assert_eq!(t.totals().gaps, 1);
        let (hd, topic) = at(11, true);
        assert!(t.on_data(&hd, &topic).accept);
        assert_eq!(t.totals().gaps, 0);
        assert_eq!(parts_add_up(&t, 20), Ok(()));
    }

    proptest! {
        /// Whatever a live stream lost and whenever a cache answered (holding values up to a
        /// point at or past what arrived live), lost = gaps + before_first. Its last message
        /// arrives live (a session of which no live frame arrived is in neither part).
        #[test]
        fn lost_is_gaps_plus_before_first_with_cached_values(
            n in 20u64..200,
            kept in proptest::collection::vec(proptest::bool::weighted(0.8), 200),
            answers in proptest::collection::vec((1u64..200, 0u64..30), 0..4),
        ) {
            let mut t = SequenceTracker::new(true);
            for p in 1..=n {
                for &(_, ahead) in answers.iter().filter(|(at_p, _)| *at_p == p) {
                    answer(&mut t, (p - 1 + ahead).min(n));
                }
                if kept[p as usize - 1] || p == n {
                    let (hd, topic) = at(p, false);
                    t.on_data(&hd, &topic);
                }
            }
            t.on_end_of_stream(&h(1, 9, n, 0), n);
            prop_assert_eq!(parts_add_up(&t, n), Ok(()));
        }
    }

    /// A model of what publishers sent and how it reached one subscriber, to check the tracker
    /// against: every message is a stream position of a session; it arrives live (once, twice,
    /// late within the reorder window or beyond it, or not at all), from a last-value cache's
    /// answer (each topic's last value as of a point behind or ahead of the live stream, before
    /// the first live frame or mid-stream; after a restart, values of the session before), or
    /// not at all; a session may be joined late, or seen only through a cache.
    mod model {
        use super::*;

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Msg {
            pub publisher: u32,
            pub session: u64,
            pub pos: u64,
            pub topic: u8,
            pub topic_seq: u64,
        }

        #[derive(Debug, Clone, Copy)]
        pub enum Ev {
            Live(Msg),
            Cached(Msg),
            /// A cached value of another session of its publisher (the one before a restart).
            Foreign(Msg),
            Eos {
                publisher: u32,
                session: u64,
                last: u64,
            },
        }

        /// One publisher session as drawn: its length, each position's topic and fate, whether
        /// its end of stream comes, where the subscriber's live stream of it begins, and when a
        /// cache answers (before live position k, as of position k − 1 + offset).
        #[derive(Debug, Clone)]
        pub struct SessionPlan {
            pub n: u64,
            pub topics: Vec<u8>,
            pub fates: Vec<u8>,
            pub delays: Vec<u8>,
            pub eos: bool,
            pub join: u64,
            pub cache_only: bool,
            pub answers: Vec<(u64, i64)>,
        }

        pub const TOPICS: u8 = 4;
        /// Whether a cache's answer holds values of the sessions before a restart (on: a value of
        /// the next session that a cache gives before that session's first live frame, its
        /// publisher live in the one before, was delivered unjudged and its live frame again,
        /// and one of the session before, when no live frame came, likewise; found by this test
        /// at 50000 cases).
        const CROSS_SESSION: bool = true;
        const MAX_N: u64 = 120;

        pub fn session_plan() -> impl Strategy<Value = SessionPlan> {
            (
                1u64..=MAX_N,
                proptest::collection::vec(0u8..TOPICS, MAX_N as usize),
                proptest::collection::vec(any::<u8>(), MAX_N as usize),
                proptest::collection::vec(any::<u8>(), MAX_N as usize),
                proptest::bool::weighted(0.8),
                prop_oneof![3 => Just(1u64), 1 => 1u64..=MAX_N],
                proptest::bool::weighted(0.06),
                proptest::collection::vec((0u64..=MAX_N, -40i64..30), 0..3),
            )
                .prop_map(|(n, topics, fates, delays, eos, join, cache_only, answers)| SessionPlan {
                    n,
                    topics,
                    fates,
                    delays,
                    eos,
                    join: join.min(n),
                    cache_only,
                    answers,
                })
        }

        /// The frames one publisher's sessions (one after the other) put on the subscriber's
        /// wire, in the order they arrive.
        pub fn frames(publisher: u32, plans: &[SessionPlan]) -> Vec<Ev> {
            // The cache's last value of each topic, whatever its session.
            let mut lvc: [Option<Msg>; TOPICS as usize] = [None; TOPICS as usize];
            let mut out = Vec::new();
            for (k, sp) in plans.iter().enumerate() {
                let session = u64::from(publisher) << 8 | (k as u64 + 1);
                let mut next_seq = [0u64; TOPICS as usize];
                let msgs: Vec<Msg> = (1..=sp.n)
                    .map(|pos| {
                        let topic = sp.topics[pos as usize - 1];
                        next_seq[topic as usize] += 1;
                        Msg { publisher, session, pos, topic, topic_seq: next_seq[topic as usize] }
                    })
                    .collect();
                let mut keyed: Vec<(u64, Ev)> = Vec::new();
                let last_key = (sp.n + 1) * 4 + 1;
                if !sp.cache_only {
                    for m in &msgs[sp.join as usize - 1..] {
                        let (p, f, d) =
                            (m.pos, sp.fates[m.pos as usize - 1] % 100, u64::from(sp.delays[m.pos as usize - 1]));
                        match f {
                            0..=7 => {}
                            8..=11 => {
                                keyed.push((p * 4, Ev::Live(*m)));
                                keyed.push((((p + 1 + d % 100) * 4 + 2).min(last_key), Ev::Live(*m)));
                            }
                            12..=17 => keyed.push((((p + 1 + d % 12) * 4 + 1).min(last_key), Ev::Live(*m))),
                            18..=20 => {
                                keyed.push((((p + REORDER_WINDOW + d % 60) * 4 + 1).min(last_key), Ev::Live(*m)))
                            }
                            _ => keyed.push((p * 4, Ev::Live(*m))),
                        }
                    }
                }
                if sp.eos {
                    keyed.push((sp.n * 4 + 3, Ev::Eos { publisher, session, last: sp.n }));
                }
                for &(at, offset) in &sp.answers {
                    let at = at % (sp.n + 1) + 1;
                    let upto = (at as i64 - 1 + offset).clamp(0, sp.n as i64) as usize;
                    let mut values = lvc;
                    for m in &msgs[..upto] {
                        values[m.topic as usize] = Some(*m);
                    }
                    for m in values.into_iter().flatten() {
                        let ev = if m.session == session { Ev::Cached(m) } else { Ev::Foreign(m) };
                        keyed.push((at * 4 - 1, ev));
                    }
                }
                keyed.sort_by_key(|&(key, _)| key);
                out.extend(keyed.into_iter().map(|(_, ev)| ev));
                for m in &msgs {
                    lvc[m.topic as usize] = Some(*m);
                }
                if !CROSS_SESSION {
                    lvc = [None; TOPICS as usize];
                }
            }
            out
        }

        /// What the model knows of one session after the run.
        #[derive(Debug, Default)]
        pub struct Seen {
            pub n: u64,
            /// Positions delivered (accepted), and dropped as reordered (arrived late).
            pub delivered: HashSet<u64>,
            pub reordered: HashSet<u64>,
            /// The first live frame judged of it (a position), and whether its end of stream came.
            pub first_live: Option<u64>,
            pub eos: bool,
            /// Its end of stream came before any live frame of it.
            pub eos_before_live: bool,
            /// The highest position of a live frame of it judged.
            pub last_live: u64,
            /// The topic sequence last delivered per topic.
            pub last_topic_seq: HashMap<u8, u64>,
        }
    }

    /// A live frame that comes behind the live stream and is delivered (after a later message of
    /// another topic, or after the end of stream) arrived: its position, counted missing when the
    /// stream passed it, is taken off `gaps`, or off `before_first` when it is before the first
    /// live frame. It stayed counted (CI-style: the model-based proptest's first find: lost 47 ≠
    /// gaps 1 + before_first 47 with the last message late after the end of stream). And an end
    /// of stream of a session of which nothing arrived live counts nothing missing, whatever the
    /// order of a cache's answer (it counted the whole stream as gaps when the answer's first
    /// value was message 1, nothing otherwise).
    #[test]
    fn a_late_frame_delivered_behind_the_stream_is_taken_off_the_part_it_was_counted_in() {
        // 1 A1, 2 B1, 3 A2 arrive 1, 3, 2; 4 B2 after the end of stream.
        let mut t = SequenceTracker::new(true);
        assert!(t.on_data(&h(1, 9, 1, 1), b"A").accept);
        assert_eq!(t.on_data(&h(1, 9, 3, 2), b"A").missed, 1);
        assert!(t.on_data(&h(1, 9, 2, 1), b"B").accept, "B's first message");
        assert_eq!(t.totals().gaps, 0, "2 arrived");
        assert!(t.on_end_of_stream(&h(1, 9, 4, 0), 4));
        assert_eq!(t.totals().gaps, 1);
        assert!(t.on_data(&h(1, 9, 4, 2), b"B").accept);
        assert_eq!((t.totals().gaps, t.totals().accepted), (0, 4));
        assert_eq!(parts_add_up(&t, 4), Ok(()));
        // First live at 10 (A), then 5 (B) late: 8 sent before the first live frame not seen.
        let mut t = SequenceTracker::new(true);
        assert!(t.on_data(&h(1, 9, 10, 4), b"A").accept);
        assert!(t.on_data(&h(1, 9, 5, 1), b"B").accept);
        assert!(t.on_end_of_stream(&h(1, 9, 10, 0), 10));
        assert_eq!((t.totals().before_first, t.totals().gaps), (8, 0));
        assert_eq!(parts_add_up(&t, 10), Ok(()));
        // Nothing live: its cached values arrived, the rest is in neither part, in any order.
        for order in [[1, 7], [7, 1]] {
            let mut t = SequenceTracker::new(true);
            for p in order {
                assert!(t.on_data(&cached(1, 9, p, p), if p == 1 { b"A" } else { b"B" }).accept);
            }
            assert!(t.on_end_of_stream(&h(1, 9, 10, 0), 10));
            assert_eq!((t.totals().gaps, t.totals().before_first), (0, 0), "{order:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// The model-based check of the loss breakdown: whatever was lost, duplicated, reordered
        /// (within the reorder window or beyond it), re-sent by a cache (ahead of the live stream
        /// or behind it, before the first live frame or mid-stream, values of an earlier session
        /// too), whatever the restarts, late joins and ends of stream of one or two publishers:
        /// a message is delivered at most once, each topic's in order; a message dropped as
        /// reordered was never delivered nor dropped so before; and where every topic is taken,
        /// every position a session sent is delivered, reordered or counted missing exactly
        /// once: lost = sent − accepted − reordered = gaps + before_first, `before_first`
        /// being the positions before each session's first live frame that did not arrive.
        /// Outside the identity by design (the model says which): a session of which no live
        /// frame arrived (what it sent is in neither part), and one joined late that never
        /// ended (not this subscriber's to count in `sent`).
        #[test]
        fn loss_breakdown_matches_a_model_of_what_was_sent(
            publishers in proptest::collection::vec(proptest::collection::vec(model::session_plan(), 1..=3), 1..=2),
            interleave in proptest::collection::vec(any::<bool>(), 0..512),
            full in proptest::bool::weighted(0.85),
        ) {
            use model::{Ev, Msg, Seen};
            let mut streams: Vec<std::vec::IntoIter<Ev>> = publishers
                .iter()
                .enumerate()
                .map(|(i, plans)| model::frames(i as u32 + 1, plans).into_iter())
                .collect();
            let mut seen: HashMap<(u32, u64), Seen> = HashMap::new();
            for (i, plans) in publishers.iter().enumerate() {
                for (k, sp) in plans.iter().enumerate() {
                    let session = u64::from(i as u32 + 1) << 8 | (k as u64 + 1);
                    seen.insert((i as u32 + 1, session), Seen { n: sp.n, ..Seen::default() });
                }
            }
            let mut t = SequenceTracker::new(full);
            // Whether a cached value of another session than the one it came in was delivered.
            let mut out_of_session = false;
            let mut bits = interleave.into_iter();
            let mut events = Vec::new();
            // The publishers' frames interleaved as the bits say, each publisher's in its order.
            loop {
                let pick = usize::from(streams.len() > 1 && bits.next().unwrap_or(false));
                match streams[pick].next().or_else(|| streams.iter_mut().find_map(Iterator::next)) {
                    Some(ev) => events.push(ev),
                    None => break,
                }
            }
            for ev in events {
                let before = t.totals();
                match ev {
                    Ev::Eos { publisher, session, last } => {
                        let hd = Header { kind: Kind::EndOfStream, topic_seq: 0, ..h(publisher, session, last, 0) };
                        t.on_end_of_stream(&hd, last);
                        if let Some(s) = seen.get_mut(&(publisher, session)) {
                            s.eos = true;
                            s.eos_before_live |= s.first_live.is_none();
                        }
                        continue;
                    }
                    Ev::Live(m) | Ev::Cached(m) | Ev::Foreign(m) => {
                        let live = matches!(ev, Ev::Live(_));
                        let hd = h(m.publisher, m.session, m.pos, m.topic_seq);
                        let hd = if live { hd } else { Header { flags: FLAG_FROM_CACHE, ..hd } };
                        let v = t.on_data(&hd, &[b'A' + m.topic]);
                        let after = t.totals();
                        let s = seen.get_mut(&(m.publisher, m.session)).expect("a session the model drew");
                        if live && s.first_live.is_none() {
                            s.first_live = Some(m.pos);
                        }
                        if live {
                            s.last_live = s.last_live.max(m.pos);
                        }
                        if matches!(ev, Ev::Foreign(_)) && s.eos {
                            // By design: a cached value of a session that ended (its end of stream
                            // came) before its publisher restarted is delivered as its topic's
                            // last value, unjudged and in no session's count: its topics were given
                            // back at the restart (it may have been delivered live before).
                            out_of_session |= v.accept;
                            continue;
                        }
                        let Msg { pos, topic, topic_seq, .. } = m;
                        prop_assert_eq!(v.accept, after.accepted == before.accepted + 1, "{:?}: {:?} {:?}", ev, before, after);
                        if v.accept {
                            prop_assert!(!s.delivered.contains(&pos) && !s.reordered.contains(&pos), "{:?} delivered twice", ev);
                            s.delivered.insert(pos);
                            let last = s.last_topic_seq.entry(topic).or_insert(0);
                            prop_assert!(topic_seq > *last, "{:?}: its topic had {} delivered", ev, last);
                            *last = topic_seq;
                        } else if after.reordered > before.reordered {
                            prop_assert!(!s.delivered.contains(&pos) && !s.reordered.contains(&pos), "{:?} reordered but it arrived before", ev);
                            s.reordered.insert(pos);
                        } else {
                            prop_assert_eq!(after.duplicates, before.duplicates + 1, "{:?}: dropped as what? {:?}", ev, after);
                        }
                    }
                }
            }
            t.close();
            let tot = t.totals();
            let (mut eos_sent, mut before_first) = (0, 0);
            // Outside the identity by design.
            let mut nothing_live = out_of_session;
            let mut joined_unended = false;
            for s in seen.values() {
                if s.eos {
                    eos_sent += s.n;
                }
                match s.first_live {
                    None => nothing_live |= s.eos || !s.delivered.is_empty(),
                    Some(first) => {
                        nothing_live |= s.eos_before_live;
                        joined_unended |= first > 1 && !s.eos;
                        // Without an end of stream it counts in `sent` up to its last live frame
                        // (a floor): cached values past that are beyond it.
                        joined_unended |= !s.eos && s.delivered.iter().any(|&p| p > s.last_live);
                        before_first +=
                            (1..first).filter(|p| !s.delivered.contains(p) && !s.reordered.contains(p)).count() as u64;
                    }
                }
            }
            prop_assert_eq!(tot.eos_sent, eos_sent);
            if !full {
                // Through a topic filter the stream sequence jumps by design: no part is counted.
                prop_assert_eq!(tot.before_first, 0);
                return Ok(());
            }
            let arrived = tot.accepted + tot.reordered;
            if nothing_live || joined_unended {
                return Ok(());
            }
            prop_assert!(arrived <= tot.sent(), "beyond_sent: {:?}", tot);
            prop_assert_eq!(tot.before_first, before_first, "{:?}", tot);
            prop_assert_eq!(tot.sent() - arrived, tot.gaps + tot.before_first, "lost ≠ gaps + before_first: {:?}", tot);
        }
    }

    #[test]
    fn in_order_stream_has_no_gaps() {
        let mut t = SequenceTracker::new(true);
        for i in 1..=100 {
            let topic: &[u8] = if i % 2 == 0 { b"A" } else { b"B" };
            let v = t.on_data(&h(1, 9, i, i.div_ceil(2)), topic);
            assert_eq!(v, Verdict { accept: true, missed: 0, restart: false });
        }
        let tot = t.totals();
        assert_eq!((tot.accepted, tot.gaps, tot.duplicates, tot.restarts), (100, 0, 0, 0));
    }

    #[test]
    fn stream_gap_and_tail_loss() {
        let mut t = SequenceTracker::new(true);
        t.on_data(&h(1, 9, 1, 1), b"A");
        assert_eq!(t.on_data(&h(1, 9, 5, 2), b"A").missed, 3);
        assert!(t.on_end_of_stream(&h(1, 9, 7, 0), 7));
        assert!(!t.on_end_of_stream(&h(1, 9, 7, 0), 7), "a repeated end of stream is not counted twice");
        let tot = t.totals();
        assert_eq!((tot.gaps, tot.eos_sessions, tot.eos_sent, tot.accepted), (5, 1, 7, 2));
    }

    /// A restarted publisher's old session never sends its end of stream:
    /// what it sent counts by its last arrived sequence, so `sent` covers
    /// both sessions and loss before that sequence stays visible.
    #[test]
    fn a_session_ended_by_a_restart_counts_by_its_last_sequence() {
        let mut t = SequenceTracker::new(true);
        for (s, ts) in [(1, 1), (2, 2), (4, 3), (5, 4)] {
            t.on_data(&h(1, 9, s, ts), b"A");
        }
        let open = t.totals();
        assert_eq!((open.unended_sessions, open.sent()), (0, 0), "open, not ended: not counted");
        for s in 1..=3 {
            assert_eq!(t.on_data(&h(1, 10, s, s), b"A").restart, s == 1);
        }
        assert_eq!(t.totals().unended_sessions, 0, "counted at the publisher's own end of stream");
        assert!(t.on_end_of_stream(&h(1, 10, 3, 0), 3));
        let tot = t.totals();
        assert_eq!((tot.eos_sessions, tot.eos_sent, tot.unended_sessions, tot.unended_sent), (1, 3, 1, 5));
        assert_eq!((tot.sent(), tot.accepted, tot.gaps, tot.restarts), (8, 7, 1, 1));
    }

    /// Two publishers on one shard: the first ends its stream while the second is still
    /// sending. The second is open (a bound shard waits for it); when the subscriber closes
    /// before its end of stream, it counts as unended by its last arrived sequence, with the
    /// session its publisher ended by restarting, so that `sent` covers every message accepted.
    #[test]
    fn close_counts_the_sessions_still_open_as_unended() {
        let mut t = SequenceTracker::new(true);
        feed(&mut t, 1, 11, 1..=10, b"A");
        feed(&mut t, 2, 21, 1..=3, b"B");
        // Publisher 2 restarts: session 21 ended without an end of stream.
        feed(&mut t, 2, 22, 1..=4, b"B");
        assert!(t.on_end_of_stream(&h(1, 11, 10, 0), 10));
        assert!(t.any_open(), "publisher 2 still sends: the first's end of stream is not its");
        assert_eq!(t.totals().sent(), 10, "not counted while open");
        t.close();
        let tot = t.totals();
        assert_eq!((tot.unended_sessions, tot.unended_sent, tot.sent(), tot.accepted), (2, 7, 17, 17), "{tot:?}");
        t.close();
        assert_eq!(t.totals(), tot, "a second close counts nothing again");

        // Seen only after it began (a late join): what it sent is not this subscriber's to count.
        let mut t = SequenceTracker::new(true);
        t.on_data(&h(1, 11, 50, 50), b"A");
        t.close();
        assert_eq!(t.totals().unended_sessions, 0);
    }

    /// An end of stream of a session that sent no data of its own speaks for the frames of
    /// others, whatever their publisher id (a verbatim capture replay's, under its own
    /// `--publisher-id`): they are not open after it, nor counted again at close.
    #[test]
    fn an_end_of_stream_without_data_of_its_own_speaks_for_every_session_before_it() {
        let mut t = SequenceTracker::new(true);
        feed(&mut t, 4, 9, 1..=5, b"A");
        assert!(t.on_end_of_stream(&h(0, 77, 5, 0), 5));
        assert!(!t.any_open());
        t.close();
        let tot = t.totals();
        assert_eq!((tot.sent(), tot.unended_sessions, tot.accepted), (5, 0, 5), "{tot:?}");
        // A session heard after it is open again.
        t.on_data(&h(4, 9, 6, 6), b"A");
        assert!(t.any_open());
        // Through a topic filter a session's data may all be filtered out: its end speaks for none.
        let mut f = SequenceTracker::new(false);
        f.on_data(&h(4, 9, 1, 1), b"A");
        assert!(f.on_end_of_stream(&h(5, 50, 8, 0), 8));
        assert!(f.any_open());
    }

    /// A verbatim capture replay: the recorded publisher restarted, and the
    /// replay's own end of stream (another publisher) counts every frame.
    /// The recorded sessions are not counted on top of it; nor is a session
    /// replaced by a cached frame of an older one.
    #[test]
    fn another_publishers_end_of_stream_or_a_cached_frame_never_counts_a_session_twice() {
        let mut t = SequenceTracker::new(true);
        feed(&mut t, 1, 9, 1..=5, b"A");
        feed(&mut t, 1, 10, 1..=3, b"A");
        assert!(t.on_end_of_stream(&h(2, 77, 8, 0), 8));
        let tot = t.totals();
        assert_eq!((tot.sent(), tot.unended_sessions, tot.accepted), (8, 0, 8), "{tot:?}");

        let mut t = SequenceTracker::new(true);
        feed(&mut t, 1, 10, 1..=4, b"A");
        assert!(t.on_data(&cached(1, 9, 7, 7), b"B").accept, "an older session's cached value is delivered");
        assert_eq!(t.on_data(&h(1, 10, 5, 5), b"A").missed, 0, "the live session went on untouched");
        assert!(t.on_end_of_stream(&h(1, 10, 5, 0), 5));
        let tot = t.totals();
        assert_eq!(
            (tot.sent(), tot.unended_sessions, tot.restarts, tot.gaps, tot.accepted),
            (5, 0, 0, 0, 6),
            "{tot:?}"
        );

        // A cache holding values of two sessions, in any order, then the
        // live one: no restart, no id conflict.
        let mut t = SequenceTracker::new(true);
        assert!(t.on_data(&cached(1, 9, 40, 7), b"B").accept);
        assert!(t.on_data(&cached(1, 10, 3, 3), b"A").accept);
        assert!(t.on_data(&cached(1, 9, 41, 8), b"C").accept);
        assert!(t.on_data(&h(1, 10, 4, 4), b"A").accept);
        let tot = t.totals();
        assert_eq!((tot.restarts, tot.id_conflicts, tot.accepted, tot.gaps), (0, 0, 4, 0), "{tot:?}");

        // Joining through a cache: values of the old session, then the live
        // new one. Not a restart this subscriber saw.
        let mut t = SequenceTracker::new(true);
        assert!(t.on_data(&cached(1, 9, 40, 7), b"B").accept);
        let v = t.on_data(&h(1, 10, 1, 1), b"A");
        assert!(v.accept && !v.restart, "{v:?}");
        assert_eq!(t.totals().restarts, 0);
    }

    /// A cache holds each topic's last value, whatever session of its publisher sent it: a
    /// message is delivered once, however the cache's values and the live frames of two sessions
    /// come, and no restart nor id conflict is counted because of a cached value (the model test
    /// `loss_breakdown_matches_a_model_of_what_was_sent` found the first two with a cache holding
    /// values of another session).
    #[test]
    fn a_cached_value_of_another_session_is_delivered_once() {
        // The next session's value, before its first live frame, its publisher live in the one
        // before: delivered, and recorded, so that its live frame (and the value again) are
        // duplicates. It was delivered unjudged, and its live frame again.
        let mut t = SequenceTracker::new(true);
        feed(&mut t, 1, 9, 1..=3, b"A");
        assert!(t.on_data(&cached(1, 10, 2, 1), b"B").accept, "the next session's value");
        assert!(!t.on_data(&cached(1, 10, 2, 1), b"B").accept, "the same value again");
        assert_eq!(t.totals().restarts, 0, "a cached value is no restart");
        assert_eq!(t.on_data(&h(1, 9, 4, 4), b"A").missed, 0, "the live session went on untouched");
        let v = t.on_data(&h(1, 10, 1, 1), b"A");
        assert!(v.accept && v.restart, "its first live frame is the restart: {v:?}");
        assert!(!t.on_data(&h(1, 10, 2, 1), b"B").accept, "the live copy of the cached value");
        assert!(t.on_data(&h(1, 10, 3, 2), b"A").accept);
        assert!(t.on_end_of_stream(&h(1, 10, 3, 0), 3));
        let tot = t.totals();
        assert_eq!(
            (tot.accepted, tot.duplicates, tot.restarts, tot.id_conflicts, tot.gaps, tot.before_first),
            (7, 2, 1, 0, 0, 0),
            "{tot:?}"
        );

        // No live frame at all: answers holding values of two sessions, the end of stream of the
        // later one between them. The second answer re-delivered the value of the later session
        // (the first answer's went unjudged once the value of the session before had taken its
        // place), and the end of stream counted an id conflict.
        let mut t = SequenceTracker::new(true);
        let answer = [(10, 1, 1, b"A"), (9, 2, 1, b"B"), (10, 2, 1, b"C")];
        for (session, pos, seq, topic) in answer {
            assert!(t.on_data(&cached(1, session, pos, seq), topic).accept, "{session} {pos}");
        }
        assert!(t.on_end_of_stream(&h(1, 10, 2, 0), 2));
        for (session, pos, seq, topic) in answer {
            assert!(!t.on_data(&cached(1, session, pos, seq), topic).accept, "{session} {pos} again");
        }
        let tot = t.totals();
        assert_eq!((tot.accepted, tot.duplicates, tot.restarts, tot.id_conflicts), (3, 3, 0, 0), "{tot:?}");
    }

    /// Two (then three) publishers under one id, interleaved: not thousands
    /// of restarts and a false loss, but one id conflict, said once, and
    /// their sessions tracked side by side so that every count stays exact.
    #[test]
    fn publishers_sharing_an_id_are_tracked_side_by_side_and_said_once() {
        for full in [true, false] {
            let mut t = SequenceTracker::new(full);
            // A (session 7) sends 1..=200, B (session 8) 1..=300, interleaved
            // 1:1 and then B alone; B joins when A is at 50.
            let (mut a, mut b) = (0u64, 0u64);
            while a < 200 || b < 300 {
                if a < 200 {
                    a += 1;
                    assert!(t.on_data(&h(0, 7, a, a), b"A").accept);
                }
                if a > 50 && b < 300 {
                    b += 1;
                    assert!(t.on_data(&h(0, 8, b, b), b"B").accept);
                }
            }
            assert!(t.on_end_of_stream(&h(0, 7, 200, 0), 200));
            assert!(t.on_end_of_stream(&h(0, 8, 300, 0), 300));
            assert!(!t.on_end_of_stream(&h(0, 7, 200, 0), 200), "a repeated end of stream counts once");
            let tot = t.totals();
            assert_eq!(
                (tot.accepted, tot.gaps, tot.duplicates, tot.restarts, tot.before_first),
                (500, 0, 0, 1, 0),
                "full={full}: B's first frame was a restart until A came back; a counter does not go back: {tot:?}"
            );
            assert_eq!((tot.id_conflicts, tot.sent(), tot.unended_sessions), (1, 500, 0), "full={full}: {tot:?}");
            assert_eq!(t.take_id_conflict(), Some(IdConflict { publisher_id: 0, sessions: (7, 8) }));
            assert_eq!(t.take_id_conflict(), None, "said once");
            // Loss is still seen, per session.
            t.on_data(&h(0, 9, 1, 1), b"C");
            t.on_data(&h(0, 7, 202, 201), b"A");
            assert_eq!(t.totals().restarts, 1, "a new session of a shared id is not a restart");
            assert_eq!(t.take_id_conflict(), None);
        }

        // More publishers under one id than it keeps sessions for: they push each other out,
        // but what each sent before is not counted again every time it comes back.
        let mut t = SequenceTracker::new(true);
        for seq in 1..=50 {
            for session in 1..=(MAX_SESSIONS_PER_ID as u64 + 2) {
                t.on_data(&h(6, session, seq, seq), b"A");
            }
        }
        let tot = t.totals();
        assert_eq!((tot.before_first, tot.id_conflicts, tot.gaps), (0, 1, 0), "{tot:?}");
        assert!(tot.restarts < MAX_SESSIONS_PER_ID as u64 + 2, "the restarts before the id was seen shared: {tot:?}");

        // Three publishers rotating under one id.
        let mut t = SequenceTracker::new(true);
        for seq in 1..=100 {
            for session in [1, 2, 3] {
                assert!(t.on_data(&h(5, session, seq, seq), b"A").accept);
            }
        }
        let tot = t.totals();
        // Sessions 2 and 3 each replaced the one before (2 restarts) until session 1 came back.
        assert_eq!((tot.accepted, tot.gaps, tot.duplicates, tot.restarts), (300, 0, 0, 2), "{tot:?}");
        assert_eq!(tot.id_conflicts, 1);
        assert!(t.take_id_conflict().is_some());

        // Two ids found shared before anyone asks (one reader round): both are said.
        let mut t = SequenceTracker::new(true);
        for id in [1, 2] {
            for (session, seq) in [(10, 1), (11, 1), (10, 2)] {
                t.on_data(&h(id, session, seq, seq), b"A");
            }
        }
        let said: Vec<u32> = std::iter::from_fn(|| t.take_id_conflict()).map(|c| c.publisher_id).collect();
        assert_eq!(said, [1, 2]);
    }

    /// A tracker (`full` subscription or not) that heard sessions 7 and 8 of publisher 0
    /// alternate frame by frame from their starts, 20 each: the id is seen shared.
    fn alternating(full: bool) -> SequenceTracker {
        let mut t = SequenceTracker::new(full);
        for seq in 1..=20 {
            t.on_data(&h(0, 7, seq, seq), b"A");
            t.on_data(&h(0, 8, seq, seq), b"B");
        }
        t
    }

    /// Two publishers under one id, interleaved: the end of stream of one ends its own session
    /// only. The other goes on (open: a shard without `--expect-eos` waits for it) and ends by
    /// its own, or, if it never does, counts as unended at the close; whichever ends first, full
    /// or through a filter. Before, the first one's end of stream spoke for the other's frames
    /// before it (the rule for a capture replay's end of stream): the other was not open, and
    /// not counted at the close, so `sent` fell short of what arrived.
    #[test]
    fn an_end_of_stream_of_a_shared_id_ends_only_its_own_session() {
        for full in [true, false] {
            for first in [7u64, 8] {
                for other_ends in [true, false] {
                    let case = format!("full={full} first={first} other_ends={other_ends}");
                    let other = 15 - first;
                    let mut t = alternating(full);
                    assert_eq!(t.totals().id_conflicts, 1, "{case}");
                    assert!(t.on_end_of_stream(&h(0, first, 20, 0), 20));
                    assert!(t.any_open(), "{case}: the other publisher goes on");
                    let mut other_sent = 20;
                    if other_ends {
                        feed(&mut t, 0, other, 21..=30, if other == 7 { b"A" } else { b"B" });
                        assert!(t.any_open(), "{case}");
                        assert!(t.on_end_of_stream(&h(0, other, 30, 0), 30));
                        assert!(!t.any_open(), "{case}: both ended");
                        other_sent = 30;
                    }
                    t.close();
                    let tot = t.totals();
                    let unended = u64::from(!other_ends);
                    assert_eq!(
                        (tot.sent(), tot.accepted, tot.gaps, tot.unended_sessions, tot.eos_sessions),
                        (20 + other_sent, 20 + other_sent, 0, unended, 2 - unended),
                        "{case}: {tot:?}"
                    );
                }
            }

            // One of them restarts (session 9) under the shared id: nothing tells that from a
            // third publisher, so its old session stays open, and counts as unended (to its last
            // arrived message, a floor) at the close, when the two others ended by their own.
            let mut t = alternating(full);
            for seq in 1..=5 {
                assert!(!t.on_data(&h(0, 9, seq, seq), b"A").restart, "full={full}: a new session of a shared id");
                t.on_data(&h(0, 8, 20 + seq, 20 + seq), b"B");
            }
            assert!(t.on_end_of_stream(&h(0, 8, 25, 0), 25));
            assert!(t.on_end_of_stream(&h(0, 9, 5, 0), 5));
            assert!(t.any_open(), "full={full}: session 7 never ended as far as the subscriber knows");
            t.close();
            let tot = t.totals();
            assert_eq!(
                (tot.sent(), tot.accepted, tot.unended_sessions, tot.unended_sent, tot.eos_sent),
                (50, 50, 1, 20, 30),
                "full={full}: {tot:?}"
            );

            // A capture of that shared id replayed verbatim: its own end of stream (a session
            // that sent no data of its own, under the recorded id) still ends every recorded
            // session, through a filter too, and counts them once.
            let mut t = alternating(full);
            assert!(t.on_end_of_stream(&h(0, 77, 40, 0), 40));
            assert!(!t.any_open(), "full={full}: the replay's end of stream speaks for what it replayed");
            t.close();
            let tot = t.totals();
            assert_eq!((tot.sent(), tot.accepted, tot.unended_sessions), (40, 40, 0), "full={full}: {tot:?}");
        }
    }

    /// A verbatim capture replay ends the recorded frames (publisher 1,
    /// session 9) with its own end of stream under the same publisher id and
    /// a session of its own, never seen live: that is no restart of the
    /// recorded session, and it counts every frame once.
    #[test]
    fn an_end_of_stream_of_a_session_never_seen_live_is_no_restart() {
        let mut t = SequenceTracker::new(true);
        feed(&mut t, 1, 9, 1..=5, b"A");
        assert!(t.any_open(), "session 9 sends");
        assert!(t.on_end_of_stream(&h(1, 77, 6, 0), 5));
        assert!(!t.any_open(), "the replay's end of stream ends what it replayed: quiet is by right");
        assert!(!t.on_end_of_stream(&h(1, 77, 6, 0), 5), "a repeat counts once");
        let tot = t.totals();
        assert_eq!((tot.restarts, tot.sent(), tot.accepted, tot.gaps, tot.eos_sessions), (0, 5, 5, 0, 1), "{tot:?}");
        // The recorded session goes on as it was: no restart, no gap.
        let v = t.on_data(&h(1, 9, 6, 6), b"A");
        assert_eq!(v, Verdict { accept: true, missed: 0, restart: false });
        assert!(t.any_open(), "heard again after that end of stream");
        // A recorded restart is still one.
        assert!(t.on_data(&h(1, 10, 1, 1), b"A").restart);
        assert_eq!(t.totals().restarts, 1);
        assert_eq!(t.take_id_conflict(), None);
    }

    /// A publisher restarted (session 9, then 10) and its old session's end of stream arrived
    /// behind the new one's data (it took another path, or a proxy held it): before, that said
    /// the id was shared (`id_conflicts` 1, the old session taken up again beside the new one).
    /// It is the old session's end: no conflict, the restart stays one, the totals exact, and the
    /// id still one publisher's (its next session is a restart too), whenever the sweeps come.
    #[test]
    fn a_late_end_of_stream_of_a_restarted_session_is_no_shared_id() {
        for full in [true, false] {
            let (mut t, clock) = forgetting(FORGET_NS);
            feed(&mut t, 1, 9, 1..=5, b"A");
            t.sweep(clock.advance_ms(100));
            assert!(t.on_data(&h(1, 10, 1, 1), b"A").restart, "full={full}");
            feed(&mut t, 1, 10, 2..=3, b"A");
            t.sweep(clock.advance_ms(100));
            // Session 9 sent 6: its last message was lost, and its end of stream says so.
            assert!(t.on_end_of_stream(&h(1, 9, 6, 0), 6), "full={full}");
            assert!(!t.on_end_of_stream(&h(1, 9, 6, 0), 6), "full={full}: a repeat counts once");
            t.sweep(clock.advance_ms(100));
            let tot = t.totals();
            assert_eq!((tot.id_conflicts, tot.restarts), (0, 1), "full={full}: {tot:?}");
            assert_eq!(t.take_id_conflict(), None, "full={full}");
            assert!(t.any_open(), "full={full}: session 10 goes on");
            assert!(t.on_end_of_stream(&h(1, 10, 3, 0), 3));
            assert!(!t.any_open(), "full={full}");
            t.close();
            let tot = t.totals();
            assert_eq!(
                (tot.sent(), tot.accepted, tot.unended_sessions, tot.eos_sessions, tot.eos_sent),
                (9, 8, 0, 2, 9),
                "full={full}: each session counted once, by its end of stream: {tot:?}"
            );
            if full {
                assert_eq!(tot.gaps, 1, "session 9's last message: {tot:?}");
            }
            // Still one publisher's id: its next session is its restart, not a second publisher.
            assert!(t.on_data(&h(1, 11, 1, 1), b"A").restart, "full={full}");
            assert_eq!(t.totals().id_conflicts, 0, "full={full}");
        }
        // A live frame of the replaced session still says the id is shared.
        let mut t = SequenceTracker::new(true);
        feed(&mut t, 1, 9, 1..=5, b"A");
        feed(&mut t, 1, 10, 1..=3, b"A");
        t.on_data(&h(1, 9, 6, 6), b"A");
        assert_eq!(t.totals().id_conflicts, 1);
    }

    /// A session known here only from a cache's values of it (the subscriber joined through a
    /// last-value cache as it ended) sent data: its end of stream ends it only. Before, it spoke
    /// as a capture replay's does, for every session of its id heard before it and, every topic
    /// taken, of any id: another publisher still sending was taken as ended (`any_open` false: a
    /// shard ends there) and not counted at the close.
    #[test]
    fn an_end_of_stream_of_a_session_known_from_a_cache_speaks_for_no_other() {
        for full in [true, false] {
            let mut t = SequenceTracker::new(full);
            feed(&mut t, 4, 9, 1..=5, b"A");
            // Publisher 1, session 20: two values from the cache, then its end of stream.
            assert!(t.on_data(&cached(1, 20, 7, 3), b"B").accept);
            assert!(t.on_data(&cached(1, 20, 8, 2), b"C").accept);
            assert!(t.on_end_of_stream(&h(1, 20, 8, 0), 8));
            assert!(t.any_open(), "full={full}: publisher 4 goes on");
            t.close();
            let tot = t.totals();
            assert_eq!(
                (tot.unended_sessions, tot.unended_sent, tot.eos_sent, tot.sent()),
                (1, 5, 8, 13),
                "full={full}: publisher 4 counted at the close: {tot:?}"
            );
            // Its own id's sessions too: one of publisher 1 heard live before stays open.
            let mut t = SequenceTracker::new(full);
            feed(&mut t, 1, 9, 1..=5, b"A");
            t.on_data(&cached(1, 20, 7, 3), b"B");
            assert!(t.on_end_of_stream(&h(1, 20, 8, 0), 8));
            assert!(t.any_open(), "full={full}: session 9 never ended");
        }
    }

    /// Review of the above: a session whose end of stream came first and a cache's values of it
    /// after (the subscriber joined through a last-value cache as the session ended: the cache's
    /// answer behind the live end of stream). At its end it is one of no data, as a capture
    /// replay's is, and speaks for its id's sessions heard before it; its values then say it sent
    /// data. Before, it went on speaking, and each value of it, heard later, spoke for the
    /// sessions of its id heard since: another publisher of the id, still sending, was taken as
    /// ended (`any_open` false: a shard ends there) and not counted at the close.
    #[test]
    fn a_cache_s_values_after_an_end_of_stream_say_its_session_sent_data() {
        for full in [true, false] {
            let mut t = SequenceTracker::new(full);
            // Publisher 1 (session 9) sending; the id's session 20 ends before any data of it.
            feed(&mut t, 1, 9, 1..=5, b"A");
            assert!(t.on_end_of_stream(&h(1, 20, 8, 0), 8));
            assert!(!t.any_open(), "full={full}: a data-less end speaks for its id (a replay's)");
            feed(&mut t, 1, 9, 6..=7, b"A");
            assert!(t.any_open(), "full={full}: session 9 heard after it");
            // The cache's values of session 20 arrive.
            assert!(t.on_data(&cached(1, 20, 7, 3), b"B").accept);
            assert!(t.on_data(&cached(1, 20, 8, 2), b"C").accept);
            assert!(t.any_open(), "full={full}: session 9 goes on");
            t.close();
            let tot = t.totals();
            assert_eq!(
                (tot.unended_sessions, tot.unended_sent, tot.eos_sent, tot.accepted),
                (1, 7, 8, 9),
                "full={full}: session 9 counted at the close: {tot:?}"
            );
        }
    }

    #[test]
    fn duplicate_by_topic_is_dropped_even_from_cache() {
        let mut t = SequenceTracker::new(true);
        t.on_data(&h(1, 9, 1, 1), b"A");
        t.on_data(&h(1, 9, 2, 2), b"A");
        assert!(!t.on_data(&cached(1, 9, 1, 1), b"A").accept);
        assert!(!t.on_data(&h(1, 9, 2, 2), b"A").accept);
        assert_eq!(t.totals().duplicates, 2);
        assert_eq!(t.totals().gaps, 0);
    }

    #[test]
    fn reordered_frames_are_counted_apart_from_duplicates_and_taken_off_the_gaps() {
        for full in [true, false] {
            let mut t = SequenceTracker::new(full);
            // Topic A: 1 2 4 5 3 (3 late), then 3 again (now a duplicate), 5 again.
            for (ss, ts) in [(1, 1), (2, 2), (4, 4), (5, 5)] {
                assert!(t.on_data(&h(1, 9, ss, ts), b"A").accept);
            }
            assert_eq!(t.totals().gaps, 1, "full={full}: 3 is missing so far");
            assert!(!t.on_data(&h(1, 9, 3, 3), b"A").accept, "a late frame is dropped");
            assert!(!t.on_data(&h(1, 9, 3, 3), b"A").accept);
            assert!(!t.on_data(&h(1, 9, 5, 5), b"A").accept);
            // Topic B: 10 frames, 1..=10 with 2, 3 and 7 late (after 10), 9 lost.
            for ts in [1, 4, 5, 6, 8, 10] {
                assert!(t.on_data(&h(1, 9, 5 + ts, ts), b"B").accept);
            }
            for ts in [7, 2, 3] {
                assert!(!t.on_data(&h(1, 9, 5 + ts, ts), b"B").accept);
            }
            let tot = t.totals();
            assert_eq!((tot.reordered, tot.duplicates, tot.gaps), (4, 2, 1), "full={full}: {tot:?}");
        }
    }

    #[test]
    fn a_frame_later_than_the_reorder_window_is_a_duplicate() {
        let mut t = SequenceTracker::new(false);
        t.on_data(&h(1, 9, 1, 1), b"A");
        t.on_data(&h(1, 9, 2 + REORDER_WINDOW, 2 + REORDER_WINDOW), b"A");
        assert_eq!(t.totals().gaps, REORDER_WINDOW);
        assert!(!t.on_data(&h(1, 9, 2, 2), b"A").accept, "64 behind: outside the window");
        assert!(!t.on_data(&h(1, 9, 3, 3), b"A").accept, "63 behind: inside");
        let tot = t.totals();
        assert_eq!((tot.duplicates, tot.reordered, tot.gaps), (1, 1, REORDER_WINDOW - 1));
    }

    #[test]
    fn frames_before_a_late_join_or_a_cached_value_are_not_reordered() {
        // Joined at stream 50: earlier frames were never counted missing.
        let mut t = SequenceTracker::new(false);
        t.on_data(&h(1, 9, 50, 20), b"A");
        assert!(!t.on_data(&h(1, 9, 49, 19), b"A").accept);
        // A cached value at 30, then live 31: 21..29 were not counted either.
        t.on_data(&cached(1, 9, 60, 30), b"A");
        t.on_data(&h(1, 9, 61, 31), b"A");
        assert!(!t.on_data(&h(1, 9, 55, 25), b"A").accept);
        let tot = t.totals();
        assert_eq!((tot.duplicates, tot.reordered, tot.gaps), (2, 0, 0), "{tot:?}");
    }

    #[test]
    fn late_joiner_with_cached_values_counts_no_gap() {
        let mut t = SequenceTracker::new(true);
        assert!(t.on_data(&cached(1, 9, 40, 7), b"A").accept);
        assert!(t.on_data(&cached(1, 9, 12, 3), b"B").accept);
        assert_eq!(t.on_data(&h(1, 9, 50, 8), b"A").missed, 0, "first live frame sets the base");
        assert_eq!(t.on_data(&h(1, 9, 51, 4), b"B").missed, 0);
        assert_eq!(t.totals().gaps, 0);
    }

    #[test]
    fn restart_is_not_a_gap() {
        let mut t = SequenceTracker::new(true);
        t.on_data(&h(1, 9, 1, 1), b"A");
        t.on_data(&h(1, 9, 2, 2), b"A");
        let v = t.on_data(&h(1, 10, 1, 1), b"A");
        assert!(v.accept && v.restart && v.missed == 0);
        assert_eq!(t.totals().restarts, 1);
        assert_eq!(t.totals().gaps, 0);
    }

    #[test]
    fn filtered_subscription_uses_topic_sequences() {
        let mut t = SequenceTracker::new(false);
        t.on_data(&h(1, 9, 1, 1), b"A");
        assert_eq!(t.on_data(&h(1, 9, 10, 2), b"A").missed, 0, "stream jumps are other topics");
        assert_eq!(t.on_data(&h(1, 9, 20, 5), b"A").missed, 2);
        assert!(t.on_end_of_stream(&h(1, 9, 30, 0), 30));
        assert_eq!(t.totals().gaps, 2, "no tail loss through a filter");
    }

    #[test]
    fn hostile_sequences_are_dropped_not_believed() {
        let mut t = SequenceTracker::new(true);
        t.on_data(&h(1, 9, 1, 1), b"A");
        assert!(!t.on_data(&h(1, 9, u64::MAX, 2), b"A").accept);
        assert!(!t.on_data(&h(1, 9, 2, u64::MAX), b"A").accept);
        assert_eq!(t.totals().implausible, 2);
        assert!(t.on_data(&h(1, 9, 2, 2), b"A").accept, "the topic is not poisoned");
        assert_eq!(t.totals().gaps, 0);
    }

    #[test]
    fn publishers_beyond_the_limit_are_dropped() {
        let mut t = SequenceTracker::new(true);
        for p in 0..MAX_PUBLISHERS as u32 + 10 {
            t.on_data(&h(p, 1, 1, 1), b"A");
        }
        assert_eq!(t.totals().over_limit, 10);
        assert_eq!(t.totals().accepted, MAX_PUBLISHERS as u64);
    }

    /// Topics held by the sessions kept, counted afresh.
    fn held(t: &SequenceTracker) -> usize {
        t.sessions.iter().map(|s| s.topics.len()).sum()
    }

    /// The maps beside the lists say what the lists hold: every session and publisher is
    /// found at its index, and each publisher's session ids are exactly its sessions.
    fn maps_agree(t: &SequenceTracker) -> Result<(), String> {
        if t.index.len() != t.sessions.len() || t.publisher_index.len() != t.publishers.len() {
            return Err(format!("{} / {} indexed", t.index.len(), t.publisher_index.len()));
        }
        for (i, s) in t.sessions.iter().enumerate() {
            if t.index.get(&(s.publisher_id, s.session_id)) != Some(&i) {
                return Err(format!("session {i} not found at its index"));
            }
            let p = t.publisher_of(s.publisher_id).ok_or("a session without its publisher")?;
            if !t.publishers[p].sessions.contains(&s.session_id) {
                return Err(format!("session {i} not in its publisher's list"));
            }
        }
        for (p, st) in t.publishers.iter().enumerate() {
            if t.publisher_index.get(&st.publisher_id) != Some(&p) || st.sessions.len() > MAX_SESSIONS_PER_ID {
                return Err(format!("publisher {p}"));
            }
        }
        if t.publishers.len() > t.max_publishers || t.forgotten.len() != t.forgotten_set.len() {
            return Err("over the bounds".into());
        }
        let mut vanished: HashMap<u32, usize> = HashMap::new();
        for (k, _) in t.forgotten_set.iter().filter(|(_, r)| Resume::resumable(r)) {
            *vanished.entry(k.0).or_insert(0) += 1;
        }
        if vanished.len() != t.vanished_ids.len() || vanished.iter().any(|(id, n)| t.vanished_ids.get(id) != Some(n)) {
            return Err(format!("vanished ids {:?}, held as vanished {vanished:?}", t.vanished_ids));
        }
        Ok(())
    }

    /// The reviewer's churn: thousands of publishers, each one session of one frame and its end
    /// of stream. Before, the 1025th was dropped for good (`over_limit`) and every frame paid a
    /// scan of all that ever came. Now an ended publisher gives its place back, every count
    /// stays as it was, and a late frame of a forgotten session is counted, not taken for new.
    #[test]
    fn thousands_of_ended_publishers_give_their_places_back() {
        let n = 5 * MAX_PUBLISHERS as u32;
        let mut t = SequenceTracker::new(true);
        for id in 0..n {
            assert!(t.on_data(&h(id, 1000 + u64::from(id), 1, 1), format!("T{}", id % 50).as_bytes()).accept, "{id}");
            assert!(t.on_end_of_stream(&h(id, 1000 + u64::from(id), 1, 0), 1));
        }
        let tot = t.totals();
        assert_eq!((tot.accepted, tot.eos_sessions, tot.eos_sent, tot.over_limit, tot.gaps), (5120, 5120, 5120, 0, 0));
        assert!(t.publishers() <= MAX_PUBLISHERS);
        assert!(t.topics() <= MAX_PUBLISHERS, "ended publishers' topics went back with them");
        assert!(!t.any_open());
        maps_agree(&t).unwrap();
        // A new publisher is taken, and its loss seen.
        assert!(t.on_data(&h(n, 1, 1, 1), b"NEW").accept);
        assert_eq!(t.on_data(&h(n, 1, 3, 2), b"NEW").missed, 1);
        // The last to end is still held: a late frame of it is judged (a duplicate).
        assert!(!t.on_data(&h(n - 1, 1000 + u64::from(n - 1), 1, 1), format!("T{}", (n - 1) % 50).as_bytes()).accept);
        assert_eq!(t.totals().duplicates, 1);
        // A forgotten one: dropped and counted as after its end, not a new publisher; its end
        // of stream again counts nothing.
        assert!(!t.on_data(&h(n - 4000, 1000 + u64::from(n - 4000), 1, 1), b"T0").accept);
        assert!(!t.on_end_of_stream(&h(n - 4000, 1000 + u64::from(n - 4000), 1, 0), 1));
        let tot = t.totals();
        assert_eq!((tot.after_end, tot.eos_sessions, tot.before_first, tot.restarts), (1, 5120, 0, 0), "{tot:?}");
        maps_agree(&t).unwrap();
    }

    /// Publishers that come and go under new ids (the churn soak's publisher restarted under a
    /// new id every few seconds, each session with thousands of topics): only the last
    /// [`ENDED_KEPT`] to end stay held with their topics. Before, every ended one was held until
    /// a new publisher or topic needed room, so the topics held (and the engine's memory) grew
    /// with each publisher that came and went, up to MAX_TRACKED_TOPICS.
    #[test]
    fn publishers_that_came_and_went_are_not_held_past_the_last_few() {
        const TOPICS: u64 = 100;
        let mut t = SequenceTracker::new(true);
        for id in 0..(4 * ENDED_KEPT) as u32 {
            for seq in 1..=TOPICS {
                assert!(t.on_data(&h(id, 7, seq, 1), format!("T{id}.{seq}").as_bytes()).accept);
            }
            assert!(t.on_end_of_stream(&h(id, 7, TOPICS, 0), TOPICS));
            assert!(t.publishers() <= ENDED_KEPT, "{id}: {} publishers held", t.publishers());
            assert_eq!(t.topics(), held(&t));
            assert!(t.topics() <= ENDED_KEPT * TOPICS as usize, "{id}: {} topics held", t.topics());
        }
        let tot = t.totals();
        let n = 4 * ENDED_KEPT as u64;
        assert_eq!((tot.accepted, tot.eos_sessions, tot.eos_sent, tot.gaps), (n * TOPICS, n, n * TOPICS, 0));
        // The last to end is still held: a late frame of it is judged (a duplicate); one of a
        // forgotten one is dropped and counted as after its end.
        let last = n as u32 - 1;
        assert!(!t.on_data(&h(last, 7, 1, 1), format!("T{last}.1").as_bytes()).accept);
        assert!(!t.on_data(&h(0, 7, 1, 1), b"T0.1").accept);
        let tot = t.totals();
        assert_eq!((tot.duplicates, tot.after_end, tot.over_limit), (1, 1, 0), "{tot:?}");
        // A live publisher is never forgotten for the ended ones: one that keeps sending while
        // others come and go is still judged (its gap seen).
        assert!(t.on_data(&h(9999, 1, 1, 1), b"LIVE").accept);
        for id in 10_000..10_000 + 2 * ENDED_KEPT as u32 {
            assert!(t.on_data(&h(id, 7, 1, 1), b"X").accept);
            assert!(t.on_end_of_stream(&h(id, 7, 1, 0), 1));
        }
        assert_eq!(t.on_data(&h(9999, 1, 3, 2), b"LIVE").missed, 1);
        maps_agree(&t).unwrap();
    }

    /// The bound of the vanished-publisher tests, and a heartbeat's frame.
    const FORGET_NS: u64 = 60_000_000_000;
    fn hb(publisher_id: u32, session_id: u64, stream_seq: u64) -> Header {
        Header { kind: Kind::Heartbeat, topic_seq: 0, ..h(publisher_id, session_id, stream_seq, 0) }
    }

    /// A tracker that forgets after `bound_ns` (0: never), swept once, and its clock.
    fn forgetting(bound_ns: u64) -> (SequenceTracker, crate::clock::ManualClock) {
        use crate::clock::Clock;
        let clock = crate::clock::ManualClock::new(5_000_000_000);
        let mut t = SequenceTracker::new(true).with_forget_silent_after(bound_ns);
        t.sweep(clock.now_ns());
        (t, clock)
    }

    /// [`sweep_for`] `for_ns`: when the tracker first held no publisher, if it did.
    fn sweep_until_none_held(t: &mut SequenceTracker, clock: &crate::clock::ManualClock, for_ns: u64) -> Option<u64> {
        let mut forgotten_at = None;
        sweep_for(t, clock, for_ns, |t, now| {
            if forgotten_at.is_none() && t.publishers() == 0 {
                forgotten_at = Some(now);
            }
        });
        forgotten_at
    }

    /// Sweep `t` every 100 ms of `clock` for `for_ns`, `each` told the time after each sweep.
    fn sweep_for(
        t: &mut SequenceTracker,
        clock: &crate::clock::ManualClock,
        for_ns: u64,
        mut each: impl FnMut(&mut SequenceTracker, u64),
    ) {
        use crate::clock::Clock;
        let until = clock.now_ns() + for_ns;
        while clock.now_ns() < until {
            let now = clock.advance_ms(100);
            t.sweep(now);
            each(t, now);
        }
    }

    /// A publisher killed without an end of stream, its id never heard again, is forgotten as
    /// vanished once nothing of it was heard for the bound, not before (and not much after):
    /// its topics and its place come back, its session counts as unended to its last arrived
    /// message once, with its restarted session, as the close would count them, and is said once.
    /// Before, it was held with its topics for the rest of the run.
    #[test]
    fn a_publisher_silent_for_the_bound_is_forgotten_as_vanished_not_before() {
        use crate::clock::Clock;
        let (mut t, clock) = forgetting(FORGET_NS);
        // Session 9 sends 3 and restarts as session 10, which sends 1..=10 less 4 (a gap).
        for seq in 1..=3 {
            assert!(t.on_data(&h(1, 9, seq, seq), b"A").accept);
        }
        for seq in (1..=10).filter(|&s| s != 4) {
            assert!(t.on_data(&h(1, 10, seq, seq), if seq % 2 == 0 { b"A" } else { b"B" }).accept);
        }
        let last_ns = clock.now_ns();
        assert_eq!((t.publishers(), t.topics()), (1, 3));
        let forgotten_at = sweep_until_none_held(&mut t, &clock, FORGET_NS + FORGET_NS / 8);
        let at = forgotten_at.expect("forgotten within an eighth of the bound after it");
        assert!(at - last_ns >= FORGET_NS, "forgotten {} ns after its last frame", at - last_ns);
        assert_eq!((t.publishers(), t.topics(), held(&t)), (0, 0, 0));
        let tot = t.totals();
        // Both sessions unended (3 and 10 sent), the gap of 4 counted once: sent 13, 12 arrived.
        assert_eq!((tot.vanished, tot.vanished_back, tot.unended_sessions, tot.unended_sent), (1, 0, 2, 13));
        assert_eq!((tot.accepted, tot.gaps, tot.sent()), (12, 1, 13));
        let (said, more) = t.take_vanished().expect("said");
        assert_eq!(
            (said.publisher_id, said.session_id, said.last_stream_seq, said.counted, more),
            (1, 10, 10, true, 0)
        );
        assert!(said.to_string().contains("publisher 1 session 000000000000000a vanished"), "{said}");
        assert!(t.take_vanished().is_none(), "said once");
        // The close counts nothing again, nor does a later sweep.
        t.close();
        sweep_for(&mut t, &clock, FORGET_NS, |_, _| {});
        assert_eq!(t.totals(), tot);
        maps_agree(&t).unwrap();
    }

    /// A quiet market's publisher sends no data but heartbeats (after 1 s without data): it is
    /// never forgotten while it does, however long, while one beside it that went silent is.
    #[test]
    fn a_publisher_that_heartbeats_while_idle_is_never_forgotten() {
        let (mut t, clock) = forgetting(FORGET_NS);
        assert!(t.on_data(&h(1, 10, 1, 1), b"QUIET").accept);
        assert!(t.on_data(&h(2, 20, 1, 1), b"GONE").accept);
        let mut beats = 0;
        sweep_for(&mut t, &clock, 5 * FORGET_NS, |t, now| {
            if now % 1_000_000_000 == 0 {
                t.on_heartbeat(&hb(1, 10, 1));
                beats += 1;
            }
        });
        assert!(beats >= 5 * FORGET_NS / 1_000_000_000 - 1, "{beats} heartbeats");
        assert_eq!((t.publishers(), t.topics()), (1, 1), "the heartbeating one is held, the silent one is not");
        let tot = t.totals();
        assert_eq!((tot.vanished, tot.unended_sessions, tot.unended_sent), (1, 1, 1));
        assert_eq!(t.take_vanished().map(|(v, _)| v.publisher_id), Some(2));
        // Its data goes on in its session: no restart, no gap, its topic still known.
        assert_eq!(t.on_data(&h(1, 10, 2, 2), b"QUIET"), Verdict { accept: true, missed: 0, restart: false });
        assert!(!t.on_data(&h(1, 10, 2, 2), b"QUIET").accept, "a duplicate still");
        maps_agree(&t).unwrap();
    }

    /// A frame of a vanished session that comes later (a link down for longer than the bound)
    /// takes it up where it was: its unended count is taken back, the gap across the silence
    /// is counted, and its end of stream then counts what it sent once. A frame from before it
    /// was forgotten is `after_end`; one of a session whose publisher started another since is
    /// too (that one ended it); a heartbeat takes one up as data does.
    #[test]
    fn a_frame_of_a_vanished_session_takes_it_up_again_where_it_was() {
        let (mut t, clock) = forgetting(FORGET_NS);
        for seq in 1..=10 {
            assert!(t.on_data(&h(1, 10, seq, seq), b"A").accept);
            assert!(t.on_data(&h(2, 20, seq, seq), b"B").accept);
            assert!(t.on_data(&h(3, 30, seq, seq), b"C").accept);
        }
        sweep_for(&mut t, &clock, FORGET_NS + FORGET_NS / 8, |_, _| {});
        let tot = t.totals();
        assert_eq!((t.publishers(), tot.vanished, tot.unended_sessions, tot.unended_sent), (0, 3, 3, 30));
        // Late, from before it was forgotten: too late to judge.
        assert!(!t.on_data(&h(1, 10, 9, 9), b"A").accept);
        assert_eq!(t.totals().after_end, 1);
        // Past it: taken up again; 11 went missing meanwhile.
        assert_eq!(t.on_data(&h(1, 10, 12, 12), b"A"), Verdict { accept: true, missed: 1, restart: false });
        assert!(!t.on_data(&h(1, 10, 12, 12), b"A").accept, "its topic known again: a duplicate");
        assert!(t.on_end_of_stream(&h(1, 10, 12, 0), 12));
        let tot = t.totals();
        assert_eq!((tot.vanished_back, tot.unended_sessions, tot.unended_sent), (1, 2, 20));
        assert_eq!((tot.eos_sessions, tot.eos_sent, tot.gaps, tot.restarts), (1, 12, 1, 0));
        // Sent 12 + 10 + 10, arrived 11 + 10 + 10: the one gap.
        assert_eq!((tot.sent(), tot.accepted), (32, 31));
        // Publisher 2 restarted (session 21) after its session 20 vanished: 20 stays ended.
        assert!(t.on_data(&h(2, 21, 1, 1), b"B").accept);
        assert!(!t.on_data(&h(2, 20, 11, 11), b"B").accept);
        assert!(!t.on_end_of_stream(&h(2, 20, 11, 0), 11), "its end of stream too: counted unended already");
        assert_eq!((t.totals().after_end, t.totals().eos_sessions), (3, 1));
        // Publisher 3's heartbeat takes its session up; its end of stream counts it once.
        t.on_heartbeat(&hb(3, 30, 10));
        assert_eq!((t.totals().vanished_back, t.totals().unended_sessions), (2, 1));
        assert!(t.on_end_of_stream(&h(3, 30, 10, 0), 10));
        assert!(!t.on_end_of_stream(&h(3, 30, 10, 0), 10), "a repeat counts nothing");
        let tot = t.totals();
        assert_eq!((tot.eos_sessions, tot.eos_sent, tot.unended_sessions, tot.unended_sent), (2, 22, 1, 10));
        t.close();
        let tot = t.totals();
        // Publisher 2's new session counts at the close; nothing twice: sent 12 + 10 + 10 + 1.
        assert_eq!((tot.unended_sessions, tot.sent(), tot.accepted, tot.gaps), (2, 33, 32, 1));
        maps_agree(&t).unwrap();
    }

    /// A publisher restarted (session 10 by 11) and the first frames of its new session were
    /// lost (not seen from its first message: not counted unended), then nothing came of it
    /// for the bound: it vanished. Taken up again later and ended by its end of stream, its
    /// restarted session counts as unended, as it would had it never vanished. Before, that
    /// count was dropped when it vanished: what it sent was out of `sent`, less than arrived.
    #[test]
    fn a_vanished_session_taken_up_again_still_counts_the_sessions_its_publisher_restarted() {
        let (mut t, clock) = forgetting(FORGET_NS);
        for seq in 1..=3 {
            assert!(t.on_data(&h(1, 10, seq, seq), b"A").accept);
        }
        assert!(t.on_data(&h(1, 11, 3, 1), b"A").restart);
        sweep_for(&mut t, &clock, FORGET_NS + FORGET_NS / 8, |_, _| {});
        let tot = t.totals();
        assert_eq!((t.publishers(), tot.vanished, tot.unended_sessions), (0, 1, 0));
        assert!(t.on_data(&h(1, 11, 4, 2), b"A").accept);
        assert!(t.on_end_of_stream(&h(1, 11, 4, 0), 4));
        let tot = t.totals();
        assert_eq!((tot.vanished_back, tot.unended_sessions, tot.unended_sent, tot.eos_sent), (1, 1, 3, 4));
        // Sent 3 + 4, arrived 3 + 2: the two before session 11's first frame seen.
        assert_eq!((tot.sent(), tot.accepted, tot.before_first, tot.gaps), (7, 5, 2, 0));
        t.close();
        assert_eq!(t.totals(), tot);
        maps_agree(&t).unwrap();
    }

    /// A live frame of the last frame's session when that session is not current (known only
    /// from a cached value of it, its publisher's next session) takes the revive path past
    /// [`SequenceTracker::session`]'s inlined common case (perf34): it takes over, a restart
    /// counted and said, and each session's later frames are judged in their own session.
    /// Checked failing with the inlined case made to answer any session `find` finds.
    #[test]
    fn a_live_frame_of_the_last_frames_session_not_current_revives_it() {
        let mut t = SequenceTracker::new(true);
        feed(&mut t, 1, 10, 1..=3, b"A");
        // Session 11's value, before its first live frame: held beside 10, not current, and
        // the last frame's session now.
        assert!(t.on_data(&cached(1, 11, 2, 1), b"B").accept);
        assert_eq!(t.totals().restarts, 0, "a cached value counts no restart");
        let v = t.on_data(&h(1, 11, 3, 2), b"B");
        assert_eq!(v, Verdict { accept: true, missed: 0, restart: true }, "it takes over: a restart");
        assert_eq!((t.totals().restarts, t.last_restart_at()), (1, (1, 11)));
        // Current now: its next frame takes the common case, in sequence; and its value again
        // is a duplicate.
        assert_eq!(t.on_data(&h(1, 11, 4, 3), b"B"), Verdict { accept: true, missed: 0, restart: false });
        assert!(!t.on_data(&h(1, 11, 3, 2), b"B").accept, "a duplicate");
        assert_eq!((t.totals().restarts, t.totals().gaps), (1, 0));
        maps_agree(&t).unwrap();
    }

    /// A publisher killed (session 10 forgotten as vanished) and started again under its id
    /// (session 11): that is its restart, counted as one held all along counts it (`restarts`,
    /// the verdict, whose), and the vanished session stays counted once as unended: the new
    /// session's end of stream or the close counts it no second time, and a late frame of it is
    /// `after_end`. Before, the new session was a new publisher's: no restart.
    #[test]
    fn a_new_session_under_the_id_of_a_vanished_one_is_its_restart_counted_once() {
        let (mut t, clock) = forgetting(FORGET_NS);
        for seq in 1..=5 {
            assert!(t.on_data(&h(1, 10, seq, seq), b"A").accept);
        }
        sweep_for(&mut t, &clock, FORGET_NS + FORGET_NS / 8, |_, _| {});
        let tot = t.totals();
        assert_eq!((t.publishers(), tot.vanished, tot.unended_sessions, tot.unended_sent), (0, 1, 1, 5));
        let v = t.on_data(&h(1, 11, 1, 1), b"A");
        assert_eq!(v, Verdict { accept: true, missed: 0, restart: true }, "the new session is its restart");
        assert_eq!((t.totals().restarts, t.last_restart_at()), (1, (1, 11)));
        assert!(t.on_data(&h(1, 11, 2, 2), b"B").accept);
        assert!(t.on_end_of_stream(&h(1, 11, 2, 0), 2));
        // The old session's frame after that: ended by the restart, too late to judge.
        assert!(!t.on_data(&h(1, 10, 6, 6), b"A").accept);
        t.close();
        let tot = t.totals();
        assert_eq!(
            (tot.restarts, tot.vanished, tot.vanished_back, tot.unended_sessions, tot.unended_sent, tot.eos_sent),
            (1, 1, 0, 1, 5, 2),
            "{tot:?}"
        );
        assert_eq!((tot.sent(), tot.accepted, tot.after_end, tot.gaps), (7, 7, 1, 0), "{tot:?}");
        // Its vanishing and its restart each said once; the tracker's maps true.
        assert!(t.take_vanished().is_some() && t.take_vanished().is_none());
        maps_agree(&t).unwrap();
    }

    /// The same restart, the vanished session late-joined (not counted as unended when it
    /// vanished, as at the close) after its publisher had restarted once already (session 9,
    /// ended by 10 with 3 sent): session 11's end of stream counts session 9 as a publisher held
    /// all along would have (at its restart's end of stream), so `sent` covers what arrived.
    /// Before, session 9's count went with the vanished session and was lost: 3 arrived more
    /// than were sent.
    #[test]
    fn a_restart_after_a_vanishing_keeps_the_sessions_its_publisher_restarted_before() {
        let run = |vanish: bool| {
            let (mut t, clock) = forgetting(FORGET_NS);
            for seq in 1..=3 {
                assert!(t.on_data(&h(1, 9, seq, seq), b"A").accept);
            }
            // Session 10 seen from its stream sequence 5 (its first four not arrived).
            assert!(t.on_data(&h(1, 10, 5, 1), b"A").restart);
            if vanish {
                sweep_for(&mut t, &clock, FORGET_NS + FORGET_NS / 8, |_, _| {});
                assert_eq!((t.publishers(), t.totals().vanished, t.totals().unended_sessions), (0, 1, 0));
            }
            assert!(t.on_data(&h(1, 11, 1, 1), b"A").restart);
            assert!(t.on_data(&h(1, 11, 2, 2), b"A").accept);
            assert!(t.on_end_of_stream(&h(1, 11, 2, 0), 2));
            t.close();
            let tot = t.totals();
            (tot.restarts, tot.unended_sessions, tot.unended_sent, tot.eos_sent, tot.sent(), tot.accepted)
        };
        let held = run(false);
        assert_eq!(held, (2, 1, 3, 2, 5, 6), "held all along: session 9 counted at 11's end of stream");
        assert_eq!(run(true), held, "vanished in between: counted alike");
    }

    /// Review of the restart rule: the same frames, with a forget as vanished in between or
    /// held all along, give the same totals (sent, its parts, what arrived, gaps, restarts),
    /// whatever comes after the forget: a restart then the stop; a late frame of the vanished
    /// session, a restart, its end of stream, the stop; a late-joined session restarted away,
    /// vanished, restarted again, the stop. And `sent` is what arrived and was missed where
    /// every session was seen from its start, held all along or forgotten in between. An id two
    /// publishers share too: a new session of it after they alternated; one ends while the
    /// other goes on, then the other ends; one ends and the other never does; one restarts, the
    /// other ends, then the restarted one. There an end of stream ends its own session only
    /// (before, it spoke for the other publisher's sessions of its id, as a capture replay's
    /// does, and `sent` fell short of what arrived, held all along), and a session of the id
    /// forgotten as vanished is taken up again by its frame though another of its id is live
    /// (before, that live one was taken for its restart, and the frame dropped as `after_end`).
    #[test]
    fn a_forget_in_between_changes_no_total_in_any_order() {
        type Step = (u32, u64, u64, bool);
        // (publisher, session, stream sequence, end of stream); the forget comes after `at`.
        let orders: [(&[Step], usize); 7] = [
            (&[(1, 10, 1, false), (1, 10, 2, false), (1, 10, 3, false), (1, 11, 1, false), (1, 11, 2, false)], 3),
            (&[(1, 10, 1, false), (1, 10, 2, false), (1, 10, 4, false), (1, 11, 1, false), (1, 11, 2, true)], 2),
            (&[(1, 9, 1, false), (1, 9, 2, false), (1, 10, 5, false), (1, 11, 1, false), (1, 11, 3, false)], 3),
            (&[(1, 10, 1, false), (1, 11, 1, false), (1, 10, 2, false), (1, 12, 1, false), (1, 12, 2, true)], 3),
            (
                &[
                    (1, 10, 1, false),
                    (1, 11, 1, false),
                    (1, 10, 2, false),
                    (1, 11, 2, false),
                    (1, 10, 3, true),
                    (1, 11, 3, false),
                    (1, 11, 5, true),
                ],
                5,
            ),
            (&[(1, 10, 1, false), (1, 11, 1, false), (1, 11, 2, false), (1, 10, 2, false), (1, 11, 3, true)], 4),
            (
                &[
                    (1, 10, 1, false),
                    (1, 11, 1, false),
                    (1, 10, 2, false),
                    (1, 12, 1, false),
                    (1, 12, 2, false),
                    (1, 11, 2, false),
                    (1, 11, 3, true),
                    (1, 12, 3, true),
                ],
                5,
            ),
        ];
        // Review of the late end of stream of a restarted publisher's old session (it ends that
        // session, no id shared): its orders, the forget tried after every step. The old
        // session's end after the new one's data; after a repeat of it; a restart whose old
        // session joined late (its end counts what it sent); and a second restart. Where the
        // forget comes before the late end (after its session's last data: `too_late`), that end
        // is dropped as `after_end` (its publisher restarted since it vanished) and the session
        // counts only as the close counts it, by its last arrived message (a floor: `sent` and
        // `gaps` fall short of held all along's); a limit left, said in the review's report.
        type Late = (&'static [Step], &'static [usize]);
        let late: [Late; 4] = [
            (
                &[
                    (1, 10, 1, false),
                    (1, 10, 2, false),
                    (1, 11, 1, false),
                    (1, 11, 2, false),
                    (1, 10, 3, true),
                    (1, 11, 3, true),
                ],
                &[2, 3, 4],
            ),
            (
                &[
                    (1, 10, 1, false),
                    (1, 11, 1, false),
                    (1, 10, 2, true),
                    (1, 10, 2, true),
                    (1, 11, 2, false),
                    (1, 11, 3, true),
                ],
                &[1, 2],
            ),
            (
                &[
                    (1, 10, 3, false),
                    (1, 10, 4, false),
                    (1, 11, 1, false),
                    (1, 10, 5, true),
                    (1, 11, 2, false),
                    (1, 11, 2, true),
                ],
                &[2, 3],
            ),
            (
                &[
                    (1, 10, 1, false),
                    (1, 11, 1, false),
                    (1, 12, 1, false),
                    (1, 10, 2, true),
                    (1, 11, 2, true),
                    (1, 12, 2, true),
                ],
                &[1, 2, 3, 4],
            ),
        ];
        let late = late
            .into_iter()
            .flat_map(|(steps, too_late)| (1..steps.len()).map(move |at| (steps, at, too_late.contains(&at))));
        let orders = orders.iter().map(|&(steps, at)| (steps, at, false)).chain(late);
        for (n, (steps, at, too_late)) in orders.enumerate() {
            let run = |forget: bool| {
                let (mut t, clock) = forgetting(FORGET_NS);
                for (k, &(id, session, seq, eos)) in steps.iter().enumerate() {
                    if k == at && forget {
                        sweep_for(&mut t, &clock, FORGET_NS + FORGET_NS / 8, |_, _| {});
                        assert_eq!(t.publishers(), 0, "order {n}: forgotten");
                    }
                    if eos {
                        t.on_end_of_stream(&h(id, session, seq, 0), seq);
                    } else {
                        t.on_data(&h(id, session, seq, seq), b"A");
                    }
                }
                t.close();
                maps_agree(&t).unwrap();
                let x = t.totals();
                (
                    x.sent(),
                    x.eos_sent,
                    x.unended_sessions,
                    x.unended_sent,
                    x.accepted,
                    x.gaps,
                    x.restarts,
                    x.before_first,
                )
            };
            let (forgot, held) = (run(true), run(false));
            // Not where a session was joined late: what it sent is not this subscriber's to count.
            if n != 2 && steps[0].2 == 1 {
                assert_eq!(forgot.0, forgot.4 + forgot.5, "order {n}: sent is what arrived and was missed");
                assert_eq!(held.0, held.4 + held.5, "order {n}: so held all along");
            }
            if too_late {
                assert!(
                    forgot.0 < held.0 && (forgot.4, forgot.6) == (held.4, held.6),
                    "order {n} (forget after step {at}): a floor, {forgot:?} against {held:?}"
                );
                continue;
            }
            assert_eq!(forgot, held, "order {n} (forget after step {at}): with a forget, and held all along");
        }
    }

    /// Review of the restart rule's memory: a churn of publishers under new ids, each killed
    /// and forgotten as vanished, never heard again. Where each vanished session is kept (to
    /// take it up again, or to know its restart) is bounded by [`FORGOTTEN_KEPT`], and so is
    /// the count per id of those held as vanished: it does not grow with the ids seen.
    #[test]
    fn the_vanished_sessions_kept_per_id_stay_bounded_under_a_churn_of_new_ids() {
        let (mut t, clock) = forgetting(FORGET_NS);
        let mut id = 0u32;
        for _ in 0..(FORGOTTEN_KEPT / 500 + 2) {
            for _ in 0..500 {
                id += 1;
                assert!(t.on_data(&h(id, u64::from(id), 1, 1), b"A").accept);
            }
            sweep_for(&mut t, &clock, 2 * FORGET_NS, |_, _| {});
            assert_eq!(t.publishers(), 0);
        }
        assert_eq!(t.totals().vanished, u64::from(id));
        assert!(u64::from(id) > FORGOTTEN_KEPT as u64);
        assert_eq!((t.forgotten.len(), t.vanished_ids.len()), (FORGOTTEN_KEPT, FORGOTTEN_KEPT));
        maps_agree(&t).unwrap();
    }

    /// An id two publishers shared, forgotten as vanished: a new session of it later is
    /// another publisher's (as while it was held), no restart.
    #[test]
    fn a_new_session_of_a_shared_id_that_vanished_is_no_restart() {
        let (mut t, clock) = forgetting(FORGET_NS);
        assert!(t.on_data(&h(1, 10, 1, 1), b"A").accept);
        assert!(t.on_data(&h(1, 11, 1, 1), b"A").restart);
        assert!(t.on_data(&h(1, 10, 2, 2), b"A").accept);
        assert_eq!((t.totals().id_conflicts, t.totals().restarts), (1, 1));
        sweep_for(&mut t, &clock, FORGET_NS + FORGET_NS / 8, |_, _| {});
        assert_eq!((t.publishers(), t.totals().vanished), (0, 2));
        let v = t.on_data(&h(1, 12, 1, 1), b"A");
        assert!(v.accept && !v.restart, "{v:?}");
        assert_eq!(t.totals().restarts, 1);
        maps_agree(&t).unwrap();
    }

    /// Where the tracker is told of its socket's connections, silence alone forgets nobody: a
    /// publisher alive but held back (a lossless replay waiting on another subscriber's full
    /// pipe) sends nothing, heartbeats neither, and keeps its connection up. One is forgotten
    /// once a connection ended after it was last heard, its last frames judged just after the
    /// end was seen (they were queued behind it) included, and the line says so.
    #[test]
    fn a_silent_publisher_is_forgotten_only_after_a_connection_ended() {
        use crate::clock::Clock;
        let (mut t, clock) = forgetting(FORGET_NS);
        t.connections(0, 1);
        assert!(t.on_data(&h(1, 10, 1, 1), b"A").accept);
        sweep_for(&mut t, &clock, 3 * FORGET_NS, |_, _| {});
        assert_eq!((t.publishers(), t.totals().vanished), (1, 0), "silent, its connection up: held");
        // A frame (the hold ends), then its connection ends and its last frame is read after.
        assert!(t.on_data(&h(1, 10, 2, 2), b"A").accept);
        t.connections(1, 0);
        t.sweep(clock.advance_ms(100));
        assert!(t.on_data(&h(1, 10, 3, 3), b"A").accept);
        let last_ns = clock.now_ns();
        let at = sweep_until_none_held(&mut t, &clock, FORGET_NS + FORGET_NS / 8).expect("forgotten");
        assert!(at - last_ns >= FORGET_NS, "{} ns after its last frame", at - last_ns);
        let tot = t.totals();
        assert_eq!((tot.vanished, tot.unended_sessions, tot.unended_sent), (1, 1, 3));
        let (said, _) = t.take_vanished().expect("said");
        assert_eq!(said.since, VanishedSince::ConnectionEnded);
        assert!(said.to_string().contains("a publisher connection of this shard ended since"), "{said}");
        // Another publisher heard after that end, silent since: held until another ends.
        assert!(t.on_data(&h(2, 20, 1, 1), b"A").accept);
        sweep_for(&mut t, &clock, 3 * FORGET_NS, |_, _| {});
        assert_eq!((t.publishers(), t.totals().vanished), (1, 1));
        t.connections(2, 0);
        assert!(sweep_until_none_held(&mut t, &clock, FORGET_NS).is_some());
        assert_eq!(t.totals().vanished, 2);
    }

    /// Behind a proxy the engine has one connection, which outlives the publishers behind it:
    /// none ends when one of them is killed. One silent for the bound while another was heard
    /// after it on that one connection (its data, or its heartbeats when quiet) is forgotten,
    /// and the line says why; the last one heard stays until another is heard after it (a churn
    /// of publishers under new ids keeps one held, not all) or a connection ends. Before, none
    /// was forgotten while the proxy's connection stayed up.
    #[test]
    fn a_silent_publisher_behind_a_proxy_is_forgotten_once_another_is_heard_after_it() {
        use crate::clock::Clock;
        let (mut t, clock) = forgetting(FORGET_NS);
        t.connections(0, 1);
        assert!(t.on_data(&h(1, 10, 1, 1), b"A").accept);
        assert!(t.on_data(&h(2, 20, 1, 1), b"B").accept);
        let last_ns = clock.now_ns();
        // Publisher 1 killed; publisher 2 goes on, quiet: a heartbeat every second.
        let mut beats = 0;
        let mut forgotten_at = None;
        sweep_for(&mut t, &clock, 3 * FORGET_NS, |t, now| {
            if now % 1_000_000_000 < 100_000_000 {
                beats += 1;
                t.on_heartbeat(&hb(2, 20, 1));
            }
            if forgotten_at.is_none() && t.publishers() == 1 {
                forgotten_at = Some(now);
            }
        });
        assert!(beats >= 2);
        let at = forgotten_at.expect("publisher 1 forgotten");
        assert!(at - last_ns >= FORGET_NS && at - last_ns <= FORGET_NS + FORGET_NS / 4, "{} ns", at - last_ns);
        let (said, _) = t.take_vanished().expect("said");
        assert_eq!((said.publisher_id, said.since), (1, VanishedSince::OtherHeard));
        assert!(
            said.to_string().contains("another publisher was heard since on this shard's one connection"),
            "{said}"
        );
        assert_eq!((t.publishers(), t.totals().vanished, t.totals().unended_sessions), (1, 1, 1));
        // Publisher 2 killed too, the last heard: held, nothing heard after it.
        sweep_for(&mut t, &clock, 3 * FORGET_NS, |_, _| {});
        assert_eq!((t.publishers(), t.totals().vanished), (1, 1), "the last one heard stays");
        // Publisher 3 (a restart under a new id) heard: publisher 2 goes after the bound.
        assert!(t.on_data(&h(3, 30, 1, 1), b"C").accept);
        sweep_for(&mut t, &clock, FORGET_NS / 2, |_, _| {});
        assert!(t.take_vanished().is_some_and(|(v, _)| v.publisher_id == 2 && v.since == VanishedSince::OtherHeard));
        assert_eq!((t.publishers(), t.totals().vanished), (1, 2));
        maps_agree(&t).unwrap();
    }

    /// A proxy held back as a whole (a lossless one waiting on another subscriber that stopped
    /// reading) silences every publisher behind it at once: none is heard after another for
    /// long, so none is forgotten, however long the hold; nor when it resumes and one's frames
    /// come a moment before another's. (Judged by "another heard after it" alone, all but the
    /// last heard were said vanished.)
    #[test]
    fn a_proxy_held_back_as_a_whole_forgets_none_of_its_publishers() {
        let (mut t, clock) = forgetting(FORGET_NS);
        t.connections(0, 1);
        let mut seq = 0;
        sweep_for(&mut t, &clock, FORGET_NS / 2, |t, _| {
            seq += 1;
            assert!(t.on_data(&h(1, 10, seq, seq), b"A").accept);
            assert!(t.on_data(&h(2, 20, seq, seq), b"B").accept);
        });
        // The hold: nothing at all for three bounds.
        sweep_for(&mut t, &clock, 3 * FORGET_NS, |_, _| {});
        assert_eq!((t.publishers(), t.totals().vanished), (2, 0), "held as a whole: none forgotten");
        // It resumes: publisher 2's frames a sweep before publisher 1's.
        for _ in 0..3 {
            seq += 1;
            assert!(t.on_data(&h(2, 20, seq, seq), b"B").accept);
            sweep_for(&mut t, &clock, 100_000_000, |_, _| {});
        }
        assert!(t.on_data(&h(1, 10, seq, seq), b"A").accept);
        assert_eq!((t.publishers(), t.totals().vanished), (2, 0), "resumed: none forgotten");
        assert!(t.take_vanished().is_none());
    }

    /// The other side: a publisher held back (a lossless replay waiting on another subscriber's
    /// full pipe) keeps its connection up and is silent as a killed one is. Alone on its
    /// connection, nothing else is heard after it: held. Beside another publisher connected
    /// directly (two connections open), that one's frames say nothing of this one's connection,
    /// which may be held while the other flows: held too. Only once one connection is left open
    /// does another publisher heard after it show it is gone.
    #[test]
    fn a_silent_publisher_is_held_while_its_own_connection_may_be_held_back() {
        let (mut t, clock) = forgetting(FORGET_NS);
        t.connections(0, 1);
        assert!(t.on_data(&h(1, 10, 1, 1), b"A").accept);
        sweep_for(&mut t, &clock, 3 * FORGET_NS, |_, _| {});
        assert_eq!((t.publishers(), t.totals().vanished), (1, 0), "alone on its connection: held");
        // A second publisher on its own connection: it flows while publisher 1 stays silent.
        t.connections(0, 2);
        let mut seq = 0;
        sweep_for(&mut t, &clock, 3 * FORGET_NS, |t, _| {
            seq += 1;
            assert!(t.on_data(&h(2, 20, seq, seq), b"B").accept);
        });
        assert_eq!((t.publishers(), t.totals().vanished), (2, 0), "two connections open: held");
        assert!(t.take_vanished().is_none());
        // Its connection... no end seen, but one connection open now (the two share it).
        t.connections(0, 1);
        sweep_for(&mut t, &clock, FORGET_NS / 2, |t, _| {
            seq += 1;
            assert!(t.on_data(&h(2, 20, seq, seq), b"B").accept);
        });
        assert!(t.take_vanished().is_some_and(|(v, _)| v.publisher_id == 1 && v.since == VanishedSince::OtherHeard));
        assert_eq!((t.publishers(), t.totals().vanished), (1, 1));
        maps_agree(&t).unwrap();
    }

    /// A reader that did not run (a stall, or blocked behind its workers) may have frames of a
    /// publisher waiting unread: silence is judged from its resumption, not across the pause.
    #[test]
    fn a_pause_of_the_reader_is_no_silence_of_its_publishers() {
        let (mut t, clock) = forgetting(FORGET_NS);
        assert!(t.on_data(&h(1, 10, 1, 1), b"A").accept);
        sweep_for(&mut t, &clock, FORGET_NS / 2, |_, _| {});
        // No sweep for twice the bound, then one as the reader resumes: nothing is forgotten.
        let resumed = clock.advance_ns(2 * FORGET_NS);
        t.sweep(resumed);
        assert_eq!(t.publishers(), 1);
        let forgotten_at = sweep_until_none_held(&mut t, &clock, FORGET_NS + FORGET_NS / 8);
        let at = forgotten_at.expect("forgotten once silent for the bound after the resumption");
        assert!(at - resumed >= FORGET_NS, "forgotten {} ns after the resumption", at - resumed);
    }

    /// Through a topic filter a live publisher's data on the other topics never comes, and it
    /// heartbeats only when it sends nothing at all: however long nothing of it comes, it is not
    /// forgotten, and a gap of its topic across that silence is counted. Before, it was said
    /// vanished, and its topic taken up again after the silence counted no gap.
    #[test]
    fn a_publisher_heard_through_a_topic_filter_is_never_forgotten() {
        use crate::clock::Clock;
        let clock = crate::clock::ManualClock::new(5_000_000_000);
        let mut t = SequenceTracker::new(false).with_forget_silent_after(FORGET_NS);
        t.sweep(clock.now_ns());
        assert!(t.on_data(&h(1, 10, 7, 5), b"A").accept);
        sweep_for(&mut t, &clock, 3 * FORGET_NS, |_, _| {});
        assert_eq!((t.publishers(), t.topics(), t.totals().vanished), (1, 1, 0));
        assert!(t.take_vanished().is_none());
        assert_eq!(t.on_data(&h(1, 10, 900, 8), b"A"), Verdict { accept: true, missed: 2, restart: false });
    }

    /// Off (0), nothing is forgotten, however long it is silent.
    #[test]
    fn a_tracker_without_a_bound_forgets_nobody() {
        let (mut t, clock) = forgetting(0);
        assert!(t.on_data(&h(1, 10, 1, 1), b"A").accept);
        sweep_for(&mut t, &clock, 3 * FORGET_NS, |_, _| {});
        assert_eq!((t.publishers(), t.topics(), t.totals().vanished), (1, 1, 0));
    }

    /// Live publishers hold their places: past MAX_PUBLISHERS live ones, a new one is dropped,
    /// counted by limit with its data apart (no end-of-stream count covers it), and the cause
    /// names the limit and the id. A publisher whose old session ended by a restart (counted at
    /// its own end of stream) and whose new one ended has ended as a whole.
    #[test]
    fn over_the_publisher_limit_is_counted_by_limit_and_cause() {
        let mut t = SequenceTracker::new(true);
        // Publisher 0 restarts (session 1 unended, 3 sent), then ends session 2.
        for s in 1..=3 {
            t.on_data(&h(0, 1, s, s), b"A");
        }
        t.on_data(&h(0, 2, 1, 1), b"A");
        assert!(t.on_end_of_stream(&h(0, 2, 1, 0), 1));
        for id in 1..MAX_PUBLISHERS as u32 {
            assert!(t.on_data(&h(id, 7, 1, 1), b"A").accept);
        }
        // Publisher 0 ended: it makes room for one more.
        assert!(t.on_data(&h(5000, 7, 1, 1), b"A").accept);
        assert_eq!(t.over_limit_cause(), OverLimit::None);
        // The rest are live: the next is over the limit.
        assert!(!t.on_data(&h(5001, 7, 1, 1), b"A").accept);
        assert!(!t.on_data(&h(5001, 7, 2, 2), b"A").accept);
        assert!(!t.on_end_of_stream(&h(5001, 7, 2, 0), 2));
        assert!(t.on_data(&h(1, 7, 2, 2), b"A").accept, "the publishers held go on");
        let tot = t.totals();
        assert_eq!(
            (tot.over_limit, tot.over_limit_publishers, tot.over_limit_data, tot.over_limit_topics),
            (3, 3, 2, 0),
            "{tot:?}"
        );
        assert_eq!((tot.unended_sessions, tot.unended_sent, tot.eos_sent), (1, 3, 1), "folded before it went");
        assert_eq!(t.over_limit_cause(), OverLimit::Publishers { publisher_id: 5001, live: MAX_PUBLISHERS });
        let said = t.over_limit_cause().to_string();
        assert!(said.starts_with("publisher 5001: 1024 publishers are live"), "{said}");
        // One of them ends: the next new one is taken.
        assert!(t.on_end_of_stream(&h(7, 7, 1, 0), 1));
        assert!(t.on_data(&h(5002, 7, 1, 1), b"A").accept);
        maps_agree(&t).unwrap();
    }

    /// The topic budget bounds the topics of live sessions: ended publishers give theirs back
    /// when a new topic needs them; past it the cause names the limit and the session.
    #[test]
    fn ended_publishers_give_their_topics_back_to_the_budget() {
        let mut t = SequenceTracker::with_max_topics(true, 4);
        for id in 0..4 {
            assert!(t.on_data(&h(id, 9, 1, 1), b"A").accept);
        }
        assert!(!t.on_data(&h(9, 9, 1, 1), b"A").accept, "all four live");
        assert_eq!(t.over_limit_cause(), OverLimit::Topics { publisher_id: 9, session_id: 9, session: false, max: 4 });
        assert!(t.on_end_of_stream(&h(2, 9, 1, 0), 1));
        assert!(t.on_data(&h(9, 9, 2, 2), b"B").accept, "publisher 2 ended: its topic came back");
        assert!(!t.on_data(&h(9, 9, 3, 1), b"C").accept);
        let tot = t.totals();
        assert_eq!((tot.over_limit, tot.over_limit_topics, tot.over_limit_publishers), (2, 2, 0), "{tot:?}");
        assert_eq!((t.topics(), held(&t)), (4, 4));
        maps_agree(&t).unwrap();
    }

    /// The tracker's topic budget holds across publishers and sessions: a new topic past it is
    /// dropped as over the limit while the topics held go on being checked, and a session that
    /// ended and was replaced, or that made room for a later one, gives its topics back.
    #[test]
    fn topics_past_the_trackers_budget_are_dropped_and_sessions_that_go_give_theirs_back() {
        let mut t = SequenceTracker::with_max_topics(false, 3);
        assert!(t.on_data(&h(1, 9, 1, 1), b"A").accept);
        assert!(t.on_data(&h(1, 9, 2, 1), b"B").accept);
        assert!(t.on_data(&h(2, 20, 1, 1), b"C").accept);
        assert!(!t.on_data(&h(2, 20, 2, 1), b"D").accept, "a fourth topic is past the budget");
        assert!(!t.on_data(&h(3, 30, 1, 1), b"A").accept, "so is another publisher's first");
        assert_eq!((t.totals().over_limit, t.topics(), held(&t)), (2, 3, 3));
        // The topics held still update, and their loss is still seen.
        assert_eq!(t.on_data(&h(1, 9, 3, 3), b"A"), Verdict { accept: true, missed: 1, restart: false });
        assert!(!t.on_data(&h(1, 9, 3, 3), b"A").accept, "a duplicate is still one");
        assert_eq!(t.totals().duplicates, 1);
        // Publisher 1 ends its session and restarts: the ended session's two topics come back.
        assert!(t.on_end_of_stream(&h(1, 9, 3, 0), 3));
        assert!(t.on_data(&h(1, 10, 1, 1), b"D").restart);
        assert!(t.on_data(&h(1, 10, 2, 1), b"E").accept);
        assert!(!t.on_data(&h(1, 10, 3, 1), b"F").accept, "full again");
        assert_eq!((t.totals().over_limit, t.topics(), held(&t)), (3, 3, 3));

        // Sessions replaced without an end of stream keep their topics until they make room.
        let n = MAX_SESSIONS_PER_ID;
        let mut t = SequenceTracker::with_max_topics(false, n);
        for session in 1..=n as u64 {
            assert!(t.on_data(&h(5, session, 1, 1), b"A").accept);
        }
        assert!(!t.on_data(&h(5, n as u64, 2, 1), b"B").accept, "the replaced sessions hold the budget");
        assert!(t.on_data(&h(5, n as u64 + 1, 1, 1), b"A").accept, "the oldest made room and gave its topic back");
        assert_eq!((t.totals().over_limit, t.topics(), held(&t)), (1, n, n));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_sequence(frames in proptest::collection::vec(
            (0u32..4, 0u64..3, any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>(), 0u8..3), 0..200),
            full: bool, max_topics in 1usize..8)
        {
            let mut t = SequenceTracker::new(full);
            let mut small = SequenceTracker::with_max_topics(full, max_topics);
            // Two publishers at most: ended ones are forgotten to make room.
            let mut few = SequenceTracker::with_max_topics(full, max_topics);
            few.max_publishers = 2;
            for (p, s, ss, ts, cache, eos, topic) in frames {
                let mut hd = h(p, s, ss, ts);
                if cache { hd.flags = FLAG_FROM_CACHE; }
                for t in [&mut t, &mut small, &mut few] {
                    if eos { t.on_end_of_stream(&hd, ss); } else { t.on_data(&hd, &[b'A' + topic]); }
                }
                prop_assert_eq!(small.topics(), held(&small), "the count of topics held is exact");
                prop_assert!(small.topics() <= max_topics);
                prop_assert_eq!(few.topics(), held(&few));
                prop_assert!(few.topics() <= max_topics);
                for t in [&t, &small, &few] {
                    prop_assert_eq!(maps_agree(t), Ok(()));
                }
                let tot = few.totals();
                prop_assert_eq!(tot.over_limit, tot.over_limit_publishers + tot.over_limit_topics);
            }
            let tot = t.totals();
            prop_assert!(tot.accepted <= 200);
            prop_assert_eq!(t.topics(), held(&t));
        }
    }

    /// Under an id two publishers share, one restarting (no restart there: its old sessions
    /// stay open) past the sessions kept per id: the open session that makes room is counted as
    /// the close counts it (to its last arrived message), not dropped from every count. Before,
    /// it went uncounted: `sent` 35 where 55 arrived, and loss unknown for a count that was not
    /// wrong. One that comes back is taken up where it was, its count taken back: its end of
    /// stream counts it once.
    #[test]
    fn an_open_session_making_room_under_a_shared_id_is_still_counted() {
        for back in [false, true] {
            let mut t = alternating(true);
            feed(&mut t, 0, 9, 1..=5, b"A");
            feed(&mut t, 0, 10, 1..=5, b"A");
            // The fifth session of the id: session 7 (least recently heard) makes room.
            feed(&mut t, 0, 11, 1..=5, b"A");
            let mut arrived = 55;
            if back {
                // Session 7 again (session 8 makes room), then the end of stream of each.
                feed(&mut t, 0, 7, 21..=25, b"A");
                assert!(t.on_end_of_stream(&h(0, 7, 25, 0), 25));
                arrived += 5;
            }
            assert!(t.on_end_of_stream(&h(0, 8, 20, 0), 20));
            assert!(t.on_end_of_stream(&h(0, 11, 5, 0), 5));
            t.close();
            maps_agree(&t).unwrap();
            let tot = t.totals();
            assert_eq!(
                (tot.sent(), tot.accepted, tot.gaps, tot.unended_sessions, tot.vanished, tot.vanished_back),
                (arrived, arrived, 0, 2 + u64::from(!back), 0, 0),
                "back={back}: {tot:?}"
            );
        }
    }
}
