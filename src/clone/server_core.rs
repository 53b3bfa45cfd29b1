//! Socket-free core of the clone server (Clone model 6 + Binary Star): `(event, now_ns) → actions`,
//! like [`BStar`].
//!
//! It owns the map, the sequence, UUID de-duplication and re-publishing, the passive server's
//! pending list and its re-sync from the active peer, takeover (pending-list replay), TTL
//! expiry, HUGZ, and the durability rule. It never touches a socket, a file or a clock: the
//! shell ([`super::server`]) turns each frame into an [`Event`], passes `now_ns`, and carries
//! out the [`Action`]s in order.
//!
//! **Durability** (with a data directory): an update is appended to the log
//! ([`Action::Append`]); it is applied and published (its acknowledgement) only after the shell
//! has flushed the log ([`Action::FlushLog`] answered by [`Event::LogFlushed`]). The shell runs
//! the actions in order and reports a failed append or flush at once ([`Event::LogFailed`],
//! after rolling the log back to its last flush). On the active server every update of the
//! unflushed batch is then neither applied, published nor acknowledged, its UUID is forgotten
//! so the client's re-send counts as new, and its sequence is given back (the published
//! sequence stays contiguous); appends of the batch already asked for are skipped
//! ([`Action::SkipAppends`]). The batch's expiry deletes (their keys already left the map) are
//! published again under new sequences at the next tick; a re-publish in it leaves the entry's
//! sequence untouched and its UUID free to be re-published at the next re-send. The failure is
//! counted in `log_failures`.
//!
//! A passive server applies what the active one published (and acknowledged) whether or not its
//! own log took it: when that log fails, its disk copy lacks updates it holds in memory. It is
//! then *not durable* (`STATUS` `durable=no`): it stops appending, and writes a full snapshot
//! ([`Action::WriteSnapshot`]) as soon as the disk takes one. Taking over before that, it writes
//! the snapshot first, and refuses client updates (`refused_not_durable`, said) and holds its
//! pending list until the snapshot is on disk.
//!
//! **fsync** ([`Action::SyncLog`], once per `fsync_interval_ms`) runs off the serving thread (the
//! shell's syncer, [`super::syncer`]) and is answered by [`Event::LogSynced`] (or
//! [`Event::NothingToSync`]); the next is asked for only once the last is answered. Nothing waits
//! for it: an update is acknowledged once its record is flushed to the OS. A sync slower than the
//! interval (a machine crash in that time loses more than one interval of updates) is counted
//! (`slow_syncs`, the longest in `longest_sync_ms`) and said with its length; a failed one is counted
//! (`sync_failures`) and said, and the next interval tries again.
//!
//! **Disk time on the serving thread** (a log flush, a snapshot write, the shell's
//! [`ServerCore::disk_waited`]): when the Binary Star machine finds the loop did not run for longer
//! than the peer waits, and most of that time was spent there, it is said as a slow disk
//! (`disk_stalls`), not a pause of the process (`pauses`); either way the machine holds as after a
//! pause, since the peer heard no heartbeat meanwhile.
//!
//! **Snapshot writes** (compaction, a passive re-sync, a disk that fell behind) are answered by
//! [`Event::SnapshotWritten`] or [`Event::SnapshotFailed`]. A compaction ([`Action::Compact`])
//! writes the snapshot from the data directory's files off the serving thread and is answered
//! later; one is in flight at a time, and a full snapshot of the map ([`Action::WriteSnapshot`],
//! for a disk behind, which the files do not hold) waits for it; it is written off the serving
//! thread too, from the map frozen when it is asked for: the appends asked for after it follow
//! that snapshot (held by the shell until the log moves aside), and it is put in place by an
//! [`Action::Compact`] as a re-sync's ([`Event::SnapshotWritten`]). The data directory is whole
//! once it is, unless it fell behind again meanwhile (then another follows). A failed one is counted
//! (`snapshot_failures`), said like a refusal (the first at once, then a summary per interval),
//! and retried after a back-off that doubles from [`SNAPSHOT_RETRY_MIN_NS`] up to
//! [`SNAPSHOT_RETRY_MAX_NS`]. The compactor's answers ([`Event::CompactionDone`]) are counted
//! apart too (`compactions`, `compaction_failures`, `last_compaction_ms`, `last_compaction_error`).
//!
//! **A passive's re-sync** writes no map at its end: each entry of the active's snapshot is
//! handed to the shell as it is applied ([`Action::StreamPeerEntry`], written to the data
//! directory as it arrives), and its KTHXBAI ends that file ([`Action::PeerSnapshotEnd`]: the log
//! moves aside, a fresh one takes what follows). The shell answers [`Event::PeerSnapshotWritten`],
//! and the snapshot is put in place off the serving thread like a compaction ([`Action::Compact`],
//! before any other snapshot write); until then the file is not fsynced, and after a machine crash
//! the data directory alone may recover only the files before the re-sync (a process crash rolls
//! it forward: `persist`), so the server is not durable (`durable=no`): taking over meanwhile, it
//! acknowledges nothing new (client updates refused as `not_durable`, its pending list held) until
//! it is. When the file could not be written ([`Event::PeerSnapshotUnwritten`]) the data directory
//! is behind and a full snapshot of the map is written instead (files kept aside first, if asked,
//! by the compactor once no compaction is in flight: [`Action::KeepAside`], answered by
//! [`Event::KeptAside`]).
//!
//! **Refusals**: every input the core drops (an update, request, heartbeat or peer message that
//! does not decode or validate, a peer snapshot entry it cannot apply) is counted by reason in a
//! [`Refusals`] and said through [`Action::Log`] (the first of each reason at once, then a summary
//! per interval, whatever `verbose` says); `STATUS?` shows the counts as `refused_REASON=N`.
//! The same rule, in [`Refusals`] of their own, says what is not input refused but is an error or
//! a warning all the same, `verbose` or not: a failed snapshot write, a publish the shell could
//! not send ([`Event::PublishFailed`], `publish_failures`; a HUGZ said as such, and counted in
//! `hugz_failures` too: no update was missed), a passive server that fell behind
//! its active peer (a gap, a HUGZ ahead) and re-syncs. At the stop ([`Event::Stopping`]) what
//! went unsaid is said, and the totals of failed publishes (updates, HUGZ) and of re-syncs.
//! A peer's `ttl` in the guide's reference servers' absolute form is made relative
//! ([`normalize_peer_ttl`]) using the wall clock the shell gives ([`ServerCore::set_wall_ms`]).

use std::collections::VecDeque;
use std::path::PathBuf;

use super::bstar::{BStar, BStarError, Event as BEvent, Pause, Role, State};
use super::kvmsg::{self, KvMsg, Limits, Request, Uuid, HUGZ, KTHXBAI};
use super::map::{normalize_peer_ttl, ttl_ns, wire_ttl_s, KvMap, RecentUuids};
use super::persist::{self, Record};
use crate::diag::{human_duration, human_ms, Refusals, SUMMARY_INTERVAL_NS};

/// How long sending a snapshot may wait on a client whose queue is at the snapshot HWM before
/// the snapshot is abandoned.
pub const SNAPSHOT_STALL_MS: i32 = 100;

/// A passive server drops pending updates older than this while the active peer is alive (the
/// active peer would have published them long ago; e.g. updates without a UUID cannot be matched).
pub const PENDING_MAX_AGE_NS: u64 = 10_000_000_000;
/// Most updates a passive server holds in its pending list (the oldest is dropped first).
pub const PENDING_MAX: usize = 1_000_000;
/// Silence from the peer's snapshot port after which a passive server retries its sync.
pub const PEER_SYNC_TIMEOUT_NS: u64 = 3_000_000_000;
/// UUIDs remembered as already re-published once (see `republish_if_current`).
const REPUBLISHED_UUIDS: usize = 65_536;

/// First wait before a failed snapshot write is tried again (doubling after each failure).
pub const SNAPSHOT_RETRY_MIN_NS: u64 = 1_000_000_000;
/// Longest wait between tries of a failing snapshot write.
pub const SNAPSHOT_RETRY_MAX_NS: u64 = 60_000_000_000;

/// Longest properties frame (`name=value\n` text) accepted in an update.
pub const MAX_PROPS_BYTES: usize = 64 << 10;

/// Accepted heartbeat, HUGZ and fsync intervals: below 10 ms a peer or client is declared dead
/// by scheduling noise; above a minute failover is too slow to be of use.
pub const INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// A server's HUGZ interval unless told otherwise (`--hugz-interval`): it publishes HUGZ when
/// nothing was published for this long, so a client's silence must be longer.
pub const DEFAULT_HUGZ_INTERVAL_MS: u64 = 1000;

/// Binary Star settings of one half of a pair.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// `--primary` or `--backup`.
    pub role: Role,
    /// The peer's base endpoint `tcp://host:P2` (its snapshot port; PUB at P2+1).
    pub peer: String,
    /// The peer's Binary Star state endpoint (default `tcp://host:P2+3`).
    pub peer_state: String,
    /// Our state endpoint to bind (default `tcp://<bind>:P+3`).
    pub state_bind: String,
    /// Heartbeat interval (the peer is dead after two missed).
    pub heartbeat_ms: u64,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Interface to bind (`127.0.0.1`, `*`, an address).
    pub bind_host: String,
    /// Base port P (snapshot); P+1 publisher, P+2 collector.
    pub port: u16,
    /// Binary Star pair, or `None` for a standalone server (always active).
    pub pair: Option<PairConfig>,
    /// Directory for the update log and snapshots.
    pub data_dir: Option<PathBuf>,
    /// HUGZ when nothing was published for this long.
    pub hugz_interval_ms: u64,
    /// fsync the log at most this often.
    pub fsync_interval_ms: u64,
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Longest value accepted.
    pub max_value_bytes: usize,
    /// Publisher send high-water mark (messages per subscriber).
    pub pub_hwm_msgs: i32,
    /// Collector receive high-water mark.
    pub collector_hwm_msgs: i32,
    /// Snapshot messages queued to one client at most (the snapshot ROUTER's SNDHWM, with
    /// ROUTER_MANDATORY): a client that does not read while this many wait, for
    /// [`SNAPSHOT_STALL_MS`], has its snapshot abandoned (counted in `snapshots_abandoned`,
    /// logged); it asks again after its snapshot timeout, like after a lost reply.
    pub snapshot_hwm_msgs: i32,
    /// UUIDs remembered for de-duplication.
    pub recent_uuids: usize,
    /// Print state changes and problems to stderr.
    pub verbose: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind_host: "127.0.0.1".into(),
            port: 5556,
            pair: None,
            data_dir: None,
            hugz_interval_ms: DEFAULT_HUGZ_INTERVAL_MS,
            fsync_interval_ms: 1000,
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            pub_hwm_msgs: 1_000_000,
            collector_hwm_msgs: 1_000_000,
            snapshot_hwm_msgs: 1_000_000,
            recent_uuids: 1 << 18,
            verbose: true,
        }
    }
}

impl ServerConfig {
    /// Check the limits: the reason (naming the `mdsub clone-server` flag) when they are unusable.
    pub fn check(&self) -> Result<(), String> {
        let in_range = |flag: &str, ms: u64| {
            if INTERVAL_RANGE_MS.contains(&ms) {
                Ok(())
            } else {
                Err(format!(
                    "{flag} {} is out of range: give {} to {}",
                    human_ms(ms),
                    human_ms(*INTERVAL_RANGE_MS.start()),
                    human_ms(*INTERVAL_RANGE_MS.end())
                ))
            }
        };
        if let Some(p) = &self.pair {
            in_range("--heartbeat-interval", p.heartbeat_ms)?;
        }
        in_range("--hugz-interval", self.hugz_interval_ms)?;
        in_range("the fsync interval", self.fsync_interval_ms)?;
        let record = self
            .max_key_bytes
            .checked_add(self.max_value_bytes)
            .and_then(|n| n.checked_add(MAX_PROPS_BYTES + persist::RECORD_FIXED_BYTES));
        if record.is_none_or(|n| n > persist::MAX_RECORD_BYTES) {
            let room = persist::MAX_RECORD_BYTES - MAX_PROPS_BYTES - persist::RECORD_FIXED_BYTES;
            return Err(format!(
                "--max-key-bytes {} + --max-value-bytes {} exceed what one log record can hold: \
                 the two together must be at most {room} bytes",
                self.max_key_bytes, self.max_value_bytes
            ));
        }
        Ok(())
    }
}

/// Input to the core.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A Binary Star heartbeat from the peer (`None`: it did not parse).
    PeerState(Option<State>),
    /// A message from the peer's publisher (`Err`: it did not decode).
    Replicated(Result<KvMsg, ()>),
    /// Our subscriber to the peer's publisher connected (true) or lost its link (false).
    PeerLink(bool),
    /// A reply to our snapshot request to the peer (`Err`: it did not decode).
    PeerSnapshot(Result<KvMsg, ()>),
    /// Check the passive re-sync: time out a silent one, start one when needed.
    PeerSyncCheck,
    /// The shell could not open the snapshot request to the peer (retried on the next check).
    PeerSyncFailed,
    /// A request on the snapshot port from `identity` (`Err`: malformed).
    Request {
        /// The ROUTER identity to answer.
        identity: Vec<u8>,
        /// What was asked.
        request: Result<Request, ()>,
    },
    /// A snapshot asked for by [`Action::SendSnapshot`] went out completely.
    SnapshotSent,
    /// A snapshot asked for by [`Action::SendSnapshot`] did not all go out, and why.
    SnapshotCut(SnapshotCut),
    /// An update from the collector (`Err`: it did not decode).
    Update(Result<KvMsg, ()>),
    /// End of a batch: write and publish what waits.
    Flush,
    /// Time passed: heartbeats, pending-list ageing, TTL expiry, HUGZ, fsync.
    Tick,
    /// The log flush asked for by [`Action::FlushLog`] succeeded.
    LogFlushed,
    /// The fsync asked for by [`Action::SyncLog`] is done (on the syncer's thread).
    LogSynced {
        /// How long it took.
        took_ns: u64,
        /// Why it failed, if it did (the records stay to be synced by the next one).
        error: Option<String>,
    },
    /// The fsync asked for by [`Action::SyncLog`] had nothing to do: no record since the last.
    NothingToSync,
    /// The append with `token` (or, for `None`, the flush) failed; the shell has rolled back
    /// the log records not yet flushed.
    LogFailed {
        /// The failed [`Action::Append`]'s token; `None` for a failed flush.
        token: Option<u64>,
        /// What went wrong, for the report.
        error: String,
    },
    /// The log has grown well past the map: a snapshot (compaction) is due.
    LogLarge,
    /// [`Action::PeerSnapshotEnd`] done: the active's snapshot is complete in the data directory,
    /// and the log restarted after it; it waits to be put in place ([`Action::Compact`]).
    PeerSnapshotWritten,
    /// [`Action::PeerSnapshotEnd`] failed: the active's snapshot could not be written as it
    /// arrived (nothing changed in the data directory); a full snapshot of the map is due.
    PeerSnapshotUnwritten {
        /// What went wrong, for the report.
        error: String,
    },
    /// The compactor answered an [`Action::Compact`]: it took `took_ns`, and failed with
    /// `error` (else the snapshot is on disk).
    CompactionDone {
        /// How long it took (the compactor's clock).
        took_ns: u64,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// The compactor answered an [`Action::KeepAside`] (its copies, or why there are none, are
    /// said by the shell): the map's snapshot that replaces the files can be written now.
    KeptAside,
    /// The snapshot asked for by [`Action::WriteSnapshot`] is on disk and the log restarted after
    /// it; it waits to be put in place. `lost`: why the appends held meanwhile could not be
    /// written to the new log (the data directory is behind the map again).
    SnapshotWritten {
        /// Why the held appends were lost, if they were.
        lost: Option<String>,
    },
    /// The snapshot asked for by [`Action::WriteSnapshot`] failed (its temp file removed).
    SnapshotFailed {
        /// What went wrong, for the report.
        error: String,
    },
    /// The publisher could not send the message of an [`Action::Publish`] (subscribers miss it
    /// until their next snapshot): counted (`publish_failures`) and said like a refusal, whatever
    /// `verbose` says; a HUGZ as such (`hugz_failures` too).
    PublishFailed {
        /// The message's sequence.
        sequence: u64,
        /// It was a HUGZ (no update missed), not an update or an expiry's delete: the
        /// action's `hugz`, not its key (a key `HUGZ` from a peer's snapshot is an update's).
        hugz: bool,
        /// What went wrong, for the line.
        error: String,
    },
    /// The server stops: what went unsaid is said (the summaries due at the end of a run), and
    /// the totals of failed publishes and of a passive's re-syncs.
    Stopping,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `msg` on the publisher; when `apply_at_ns` is set, then hand it back with
    /// [`ServerCore::published`] (a client update is applied once published: no copy).
    Publish {
        /// The KVPUB.
        msg: KvMsg,
        /// Apply it to the map at this time after sending.
        apply_at_ns: Option<u64>,
        /// It is a HUGZ: a failed send is told as such ([`Event::PublishFailed`]'s `hugz`,
        /// counted in `hugz_failures`). Said by the core from what it publishes, not from the
        /// key: a map entry keyed `HUGZ` (a peer's snapshot can hold one) expires as the delete
        /// of a key, whose failed send subscribers miss.
        hugz: bool,
    },
    /// Send our Binary Star state to the peer.
    Heartbeat(State),
    /// Answer `STATUS?` with `text`.
    Reply {
        /// The ROUTER identity.
        identity: Vec<u8>,
        /// The status text.
        text: String,
    },
    /// Send the snapshot of `subtree` ([`ServerCore::map`], then KTHXBAI with
    /// [`ServerCore::sequence`]), then report [`Event::SnapshotSent`].
    SendSnapshot {
        /// The ROUTER identity.
        identity: Vec<u8>,
        /// The subtree asked for.
        subtree: Vec<u8>,
    },
    /// Open a snapshot request (`ICANHAZ?` for everything) to the peer, and (with a data
    /// directory) start writing its entries to disk.
    RequestPeerSnapshot,
    /// An entry of the peer's snapshot, applied: write it to the data directory's re-sync file
    /// (no `ttl` property; nothing is answered, a failure is told at [`Action::PeerSnapshotEnd`]).
    StreamPeerEntry {
        /// The entry.
        msg: KvMsg,
        /// Milliseconds from now until it expires (wall-clock deadline = now + this).
        expires_in_ms: Option<u64>,
    },
    /// The peer's snapshot ended at `sequence`: complete its file, restart the log after it, and
    /// report [`Event::PeerSnapshotWritten`] or [`Event::PeerSnapshotUnwritten`] at once (before
    /// the appends that follow). `keep_aside`: the files it replaces hold updates the active
    /// lacks, to be copied aside before it is put in place.
    PeerSnapshotEnd {
        /// The snapshot's sequence (its KTHXBAI's).
        sequence: u64,
        /// Copy the files it replaces aside first.
        keep_aside: bool,
    },
    /// Close the snapshot request to the peer (and drop a re-sync file not ended).
    EndPeerSnapshot,
    /// Append `msg` (no `ttl` property) to the log; on failure roll the log back and report
    /// [`Event::LogFailed`] with `token` at once.
    Append {
        /// Identifies the append in a failure report.
        token: u64,
        /// The update.
        msg: KvMsg,
        /// Milliseconds from now until it expires (wall-clock deadline = now + this).
        expires_in_ms: Option<u64>,
    },
    /// Hand the appended records to the OS, then report [`Event::LogFlushed`] or
    /// [`Event::LogFailed`] (`token: None`).
    FlushLog,
    /// Do not write the appends asked for so far that have not run yet (tokens up to
    /// `through`): their batch was lost with a failed append or flush.
    SkipAppends {
        /// The last token to skip.
        through: u64,
    },
    /// fsync the log off the serving thread, then report [`Event::LogSynced`] (or
    /// [`Event::NothingToSync`]). Never asked for again before that answer.
    SyncLog,
    /// Copy the data directory's snapshot and logs aside (`snapshot.behind-<unix s>`,
    /// `log.behind-<unix s>`, …) off the serving thread (the log flushed first; the compactor
    /// copies and fsyncs them), say where, then report [`Event::KeptAside`]: they hold updates
    /// the active peer's map, which is about to replace them, lacks. Asked before the
    /// [`Action::WriteSnapshot`] that replaces them, which waits for that answer; never while a
    /// compaction is in flight (the compactor may be removing `log.prev`), and none starts
    /// before the answer. With the re-sync's file written, [`Action::Compact`]'s switch makes
    /// the copies instead.
    KeepAside,
    /// Replace the data directory's snapshot with the map, off the serving thread: freeze the map
    /// (at the sequence now), hold the appends that follow, and have the compactor write the
    /// frozen copy; when it is written, move the log aside and start a fresh one with the held
    /// records, then report [`Event::SnapshotWritten`] (the snapshot then waits to be put in
    /// place by [`Action::Compact`], as a re-sync's), or [`Event::SnapshotFailed`]. The appends
    /// asked for meanwhile follow the frozen map. Never asked for again before that answer.
    WriteSnapshot,
    /// Compact the data directory without the map: move the log aside and go on in a new one
    /// (on the serving thread, in time independent of the map's size), and fold the old segment
    /// into the snapshot off the serving thread; or, after [`Event::PeerSnapshotWritten`], put
    /// the re-sync's snapshot in place off the serving thread. Report
    /// [`Event::CompactionDone`] when that is done (or at once, when the move fails). Never asked
    /// for again before that answer.
    Compact,
    /// Print this line (prefixed with the role) on stderr.
    Log(String),
}

/// Why a snapshot did not all go out (each counted and said as what it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotCut {
    /// The client's queue stayed at the snapshot HWM for [`SNAPSHOT_STALL_MS`] (`EAGAIN`): it
    /// did not read; it asks again after its snapshot timeout.
    QueueFull,
    /// The client was gone (`EHOSTUNREACH` under ROUTER_MANDATORY): it left before its reply, or
    /// during it. Nothing to do: a client that comes back asks again.
    ClientGone,
    /// Any other send error (the context ending at shutdown, an interrupted call), said as it is.
    Failed(String),
}

/// Why a durable server's data directory alone does not recover its map (`durable=no`): an
/// active one refuses client updates as `not_durable` until it does, and says which of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDurable {
    /// It lacks updates held in memory (a passive's log failed, a re-sync's file could not be
    /// written) until a full snapshot of the map is written.
    Behind,
    /// A re-sync's snapshot is written but not in place: after a machine crash the directory
    /// alone may recover only the files before that re-sync.
    ResyncNotInPlace,
    /// The full snapshot of the map (written because the directory was behind) is on disk but
    /// not in place yet.
    MapSnapshotNotInPlace,
}

/// Whose snapshot is written but not in place yet ([`ServerCore::not_durable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// A re-sync's, the active's map as it arrived ([`Action::PeerSnapshotEnd`]).
    Resync,
    /// The map's, written because the directory was behind ([`Action::WriteSnapshot`]).
    Map,
}

impl Switch {
    fn not_durable(self) -> NotDurable {
        match self {
            Switch::Resync => NotDurable::ResyncNotInPlace,
            Switch::Map => NotDurable::MapSnapshotNotInPlace,
        }
    }

    /// What a take-over line calls it.
    fn what(self) -> &'static str {
        match self {
            Switch::Resync => "the re-sync's snapshot",
            Switch::Map => "the snapshot of the map",
        }
    }
}

impl NotDurable {
    /// Its name in STATUS (`durable_why=NAME`).
    pub fn name(self) -> &'static str {
        match self {
            NotDurable::Behind => "behind",
            NotDurable::ResyncNotInPlace => "resync_not_in_place",
            NotDurable::MapSnapshotNotInPlace => "map_snapshot_not_in_place",
        }
    }

    /// What a refused update says of it.
    pub fn words(self) -> &'static str {
        match self {
            NotDurable::Behind => {
                "the data directory lacks updates held in memory until a full snapshot of the map is written"
            }
            NotDurable::ResyncNotInPlace => {
                "the data directory holds the files before the last re-sync until its snapshot is put in place"
            }
            NotDurable::MapSnapshotNotInPlace => {
                "the snapshot of the map is written to the data directory but not put in place yet"
            }
        }
    }
}

/// Counters reported by `STATUS?`.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Snapshot-port requests that were not ICANHAZ?/STATUS?.
    pub malformed_requests: u64,
    /// Updates that failed to decode or validate (size limits, bad TTL, bad frames).
    pub malformed_updates: u64,
    /// Updates dropped because their UUID was already applied.
    pub duplicates: u64,
    /// Snapshot requests refused by Binary Star.
    pub rejected_votes: u64,
    /// Snapshots served.
    pub snapshots: u64,
    /// Snapshots abandoned: the client did not read while its queue was at the snapshot HWM.
    pub snapshots_abandoned: u64,
    /// Snapshots cut short because their client was gone (it left before or while it was sent).
    pub snapshots_client_gone: u64,
    /// Snapshots cut short by any other send error.
    pub snapshot_send_errors: u64,
    /// KVPUB messages published (updates and expiry deletes; HUGZ apart, in `hugz`).
    pub published: u64,
    /// HUGZ published.
    pub hugz: u64,
    /// Snapshot writes that failed (retried with back-off).
    pub snapshot_failures: u64,
    /// Messages the publisher could not send (updates, expiry deletes, HUGZ; each counted in
    /// `published` or `hugz` too): subscribers miss the updates and deletes among them until
    /// their next snapshot (the HUGZ among them are `hugz_failures`).
    pub publish_failures: u64,
    /// Of `publish_failures`, the HUGZ: no update missed, but a client that hears nothing for
    /// its silence limit takes the server for dead and fails over.
    pub hugz_failures: u64,
    /// Keys expired.
    pub expired: u64,
    /// Peer heartbeats that did not parse.
    pub malformed_heartbeats: u64,
    /// Pending updates dropped (too old or list full).
    pub pending_dropped: u64,
    /// Update-log appends or flushes that failed (disk full, I/O error): on the active server
    /// the updates they carried were neither applied, published nor acknowledged; on a passive
    /// one its disk copy fell behind (see the module doc).
    pub log_failures: u64,
    /// Entries of the peer's snapshot that could not be applied (counted and logged, not stored).
    pub peer_entries_refused: u64,
    /// Peer `ttl`s in the reference servers' absolute form, made relative.
    pub absolute_ttls: u64,
    /// Times this server found it had not run for longer than its peer waits (SIGSTOP, a VM
    /// pause): see [`BStar::observe`].
    pub pauses: u64,
    /// Times the loop did not run for longer than the peer waits because it was mostly inside a
    /// data directory write (a slow disk): held as after a pause, said as a slow disk.
    pub disk_stalls: u64,
    /// fsyncs of the log done (on the syncer's thread).
    pub syncs: u64,
    /// fsyncs that took longer than the fsync interval (the bound on what a machine crash loses).
    pub slow_syncs: u64,
    /// The longest fsync, in ms.
    pub longest_sync_ms: u64,
    /// fsyncs that failed (the next interval tries again).
    pub sync_failures: u64,
    /// Snapshots the compactor wrote off the serving thread (log folds, re-syncs put in place).
    pub compactions: u64,
    /// Of them, those that failed (retried with back-off).
    pub compaction_failures: u64,
    /// How long the last one took, in ms (0 before the first).
    pub last_compaction_ms: u64,
}

/// What waits in the outbox for the update log's flush.
#[derive(Debug)]
enum Outgoing {
    /// A HUGZ: published only (no log record), counted apart from updates.
    Hugz(KvMsg),
    /// The delete of a key that expired (already gone from the map): lost with a failed log
    /// write, it is published again under a new sequence.
    Expiry(KvMsg),
    /// A key's current value re-published under a new sequence for a re-sending client: the
    /// entry takes that sequence once it is published.
    Republish(KvMsg),
    /// A client's update: apply to the map at `now_ns`, then publish (its acknowledgement).
    Update(KvMsg, u64),
}

impl Outgoing {
    fn msg(&self) -> &KvMsg {
        match self {
            Outgoing::Hugz(m) | Outgoing::Expiry(m) | Outgoing::Republish(m) | Outgoing::Update(m, _) => m,
        }
    }
}

struct PeerSync {
    deadline_ns: u64,
    map: KvMap,
    queued: Vec<KvMsg>,
}

struct Pair {
    bstar: BStar,
    peer_connected: bool,
    peer_snapshot: String,
    sync: Option<PeerSync>,
    synced: bool,
    pending: VecDeque<(u64, KvMsg)>,
}

/// The clone server's protocol logic.
pub struct ServerCore {
    role: &'static str,
    hugz_ns: u64,
    fsync_ns: u64,
    limits: Limits,
    verbose: bool,
    /// With a data directory: updates wait for the log (see the module doc).
    durable: bool,
    pair: Option<Pair>,
    map: KvMap,
    sequence: u64,
    recent: RecentUuids,
    /// Applied UUIDs already re-published once for a re-sending client.
    republished: RecentUuids,
    counters: Counters,
    last_pub_ns: u64,
    last_fsync_ns: u64,
    /// An [`Action::SyncLog`] is not answered yet.
    sync_in_flight: bool,
    /// Time the serving thread spent in data directory writes since the clock last moved on
    /// ([`ServerCore::disk_waited`]): what explains a gap the Binary Star machine sees.
    disk_wait_ns: u64,
    /// The latest `now_ns` seen.
    last_now_ns: u64,
    /// Appends issued so far (the last one's token).
    appends: u64,
    /// Appended since the last flush.
    wrote: bool,
    /// The data directory lacks updates held in memory (a passive's log failed): no appends,
    /// no client updates applied, until a full snapshot is written.
    disk_behind: bool,
    /// A snapshot write is due (compaction, re-sync, a disk behind), once the back-off allows.
    snapshot_wanted: bool,
    /// The snapshot due must be of the map ([`Action::WriteSnapshot`]): the data directory's
    /// files do not hold it (a re-sync replaced the map, or a passive's log failed).
    full_snapshot_wanted: bool,
    /// An [`Action::Compact`] is not answered yet.
    compacting: bool,
    /// That [`Action::Compact`] puts a re-sync's snapshot in place.
    compacting_switch: bool,
    /// A snapshot is written but not in place yet, and whose: the data directory alone would
    /// recover the files before it (see the module doc). One field, so which snapshot waits
    /// cannot outlive its wait (two flags did: the map's mark stayed when a late answer to a
    /// re-sync's end cleared the wait, and the next re-sync's wait was said as the map's).
    switch: Option<Switch>,
    /// An [`Action::WriteSnapshot`] is not answered yet: the map was frozen (keys, sequence), and
    /// the appends after it are asked for again (they follow that snapshot).
    full_in_flight: Option<(usize, u64)>,
    /// Times the data directory fell behind the map; `frozen_gen`: its value at the freeze. A
    /// full snapshot makes the directory whole only if it did not fall behind again meanwhile.
    behind_gen: u64,
    frozen_gen: u64,
    /// An [`Action::KeepAside`] is not answered yet: the compactor is copying the files, so a
    /// re-sync that ends meanwhile moves no log (its map is written whole after the copies).
    keeping_aside: bool,
    /// Copy the data directory's files aside before the next full snapshot of the map replaces
    /// them ([`Action::KeepAside`]; the re-sync file could not be written).
    keep_aside_wanted: bool,
    /// Why the last failed compaction failed.
    last_compaction_error: Option<String>,
    /// No snapshot write before this (after a failed one).
    snapshot_retry_at_ns: u64,
    /// The current back-off (0 after a success).
    snapshot_backoff_ns: u64,
    /// Failed snapshot writes, said like refusals.
    snapshot_said: Refusals,
    /// Failed publishes of updates and expiry deletes, said like refusals (the total again at
    /// the stop).
    publish_said: Refusals,
    /// Failed HUGZ publishes, said apart (no update missed) by the same rule.
    hugz_said: Refusals,
    /// A passive that fell behind the active (a gap in its sequence, a HUGZ ahead) and
    /// re-syncs, or whose request for the active's snapshot went unanswered: a warning, said
    /// like refusals whatever `verbose` says.
    resync_said: Refusals,
    /// Waiting for the flush: a failed append or flush loses the whole batch (see `log_failed`).
    outbox: Vec<Outgoing>,
    /// The sequence when the current step began ([`ServerCore::on_event`]): a fatal error drops
    /// what the step sequenced after it, and keeps what earlier steps did ([`ServerCore::fatal`]).
    step_sequence: u64,
    /// Expired keys whose delete was lost with a failed log write: published again (a new
    /// sequence) at the next tick, unless the key holds a value by then.
    expiries_lost: Vec<Vec<u8>>,
    /// Wall clock (ms since the epoch) of this step, given by the shell: for peers' absolute `ttl`s.
    wall_ms: u64,
    refusals: Refusals,
}

impl ServerCore {
    /// A core for `cfg` (checked by the caller) at `now_ns`: PRIMARY/BACKUP in a pair, else
    /// active. `durable`: a data directory holds the log.
    pub fn new(cfg: &ServerConfig, durable: bool, now_ns: u64) -> Self {
        let pair = cfg.pair.as_ref().map(|pc| Pair {
            bstar: BStar::new(pc.role, pc.heartbeat_ms.saturating_mul(1_000_000), now_ns),
            peer_connected: false,
            peer_snapshot: super::endpoints(&pc.peer).map(|[s, _, _]| s).unwrap_or_else(|_| pc.peer.clone()),
            sync: None,
            synced: false,
            pending: VecDeque::new(),
        });
        let role = match &cfg.pair {
            None => "standalone",
            Some(p) if p.role == Role::Primary => "primary",
            Some(_) => "backup",
        };
        ServerCore {
            role,
            hugz_ns: cfg.hugz_interval_ms.saturating_mul(1_000_000),
            fsync_ns: cfg.fsync_interval_ms.saturating_mul(1_000_000),
            limits: Limits { max_key_bytes: cfg.max_key_bytes, max_value_bytes: cfg.max_value_bytes },
            verbose: cfg.verbose,
            durable,
            pair,
            map: KvMap::new(),
            sequence: 0,
            recent: RecentUuids::new(cfg.recent_uuids),
            republished: RecentUuids::new(REPUBLISHED_UUIDS),
            counters: Counters::default(),
            last_pub_ns: now_ns,
            last_fsync_ns: now_ns,
            sync_in_flight: false,
            disk_wait_ns: 0,
            last_now_ns: now_ns,
            appends: 0,
            wrote: false,
            disk_behind: false,
            snapshot_wanted: false,
            full_snapshot_wanted: false,
            compacting: false,
            compacting_switch: false,
            full_in_flight: None,
            behind_gen: 0,
            frozen_gen: 0,
            switch: None,
            keep_aside_wanted: false,
            keeping_aside: false,
            last_compaction_error: None,
            snapshot_retry_at_ns: 0,
            snapshot_backoff_ns: 0,
            snapshot_said: Refusals::new(role, SUMMARY_INTERVAL_NS).said_as(format!("{role}: snapshot not written")),
            publish_said: Refusals::new(role, SUMMARY_INTERVAL_NS).said_as(format!("{role}: update not published")),
            hugz_said: Refusals::new(role, SUMMARY_INTERVAL_NS).said_as(format!("{role}: HUGZ not published")),
            resync_said: Refusals::new(role, SUMMARY_INTERVAL_NS).said_as("passive: behind the active, re-syncing"),
            outbox: Vec::new(),
            step_sequence: 0,
            expiries_lost: Vec::new(),
            wall_ms: 0,
            refusals: Refusals::new(role, SUMMARY_INTERVAL_NS),
        }
    }

    /// The wall clock now (ms since the Unix epoch), read by the shell once per step: a peer's
    /// absolute `ttl` is measured against it.
    pub fn set_wall_ms(&mut self, wall_ms: u64) {
        self.wall_ms = wall_ms;
    }

    /// Refusals by reason so far.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Count a refused input under `reason` and say what is due.
    #[cold]
    fn refuse(&mut self, reason: &'static str, detail: &dyn std::fmt::Display, now_ns: u64, out: &mut Vec<Action>) {
        if let Some(l) = self.refusals.refuse(reason, detail, now_ns) {
            out.push(Action::Log(l));
        }
    }

    /// Make a peer's `ttl` relative (the reference servers' absolute form); `false`: refused
    /// (counted and said under `reason`).
    fn peer_ttl(&mut self, msg: &mut KvMsg, reason: &'static str, now_ns: u64, out: &mut Vec<Action>) -> bool {
        match normalize_peer_ttl(msg, self.wall_ms) {
            Ok(rewritten) => {
                self.counters.absolute_ttls += rewritten as u64;
                true
            }
            Err(e) => {
                let key = String::from_utf8_lossy(&msg.key).into_owned();
                self.refuse(reason, &format_args!("key {key}: {e}"), now_ns, out);
                false
            }
        }
    }

    /// Load what the data directory recovered (snapshot entries, then log records, in order) at
    /// wall time `wall_ms` / monotonic `now_ns`. A record whose wall-clock deadline has passed
    /// deletes its key (it expired while the server was down, so any earlier value is gone too).
    pub fn recover(&mut self, records: Vec<Record>, sequence: u64, wall_ms: u64, now_ns: u64) {
        for r in records {
            if let Some(u) = r.msg.uuid {
                self.recent.insert(u);
            }
            let mut msg = r.msg;
            let exp = match r.expires_at_unix_ms {
                Some(t) if t <= wall_ms => {
                    msg.body.clear(); // expired: a delete
                    None
                }
                Some(t) => Some(now_ns.saturating_add(t.saturating_sub(wall_ms).saturating_mul(1_000_000))),
                None => None,
            };
            let key = std::mem::take(&mut msg.key);
            self.map.put(key, &msg, exp);
        }
        self.sequence = sequence;
    }

    /// Handle one event at `now_ns`, appending what to do to `out`. An error is fatal (Binary
    /// Star found both servers in the same state): of this step's work `out` then holds only
    /// lines, those the core queued on the way to it (a pause noticed, a hold ended), for the
    /// shell to say before it stops (updates a hold's end or a takeover replayed in this step
    /// are neither logged nor published: the active peer publishes them under its own
    /// sequences); what earlier steps logged and left waiting in the outbox is flushed and
    /// published by the actions that follow those lines, before the shell stops
    /// (`ServerCore::fatal`).
    pub fn on_event(&mut self, event: Event, now_ns: u64, out: &mut Vec<Action>) -> Result<(), BStarError> {
        self.step_sequence = self.sequence;
        self.observe_clock(now_ns, out);
        match event {
            Event::PeerState(Some(s)) => {
                self.bstar_event(BEvent::Peer(s), now_ns, out)?;
            }
            Event::PeerState(None) => {
                self.counters.malformed_heartbeats += 1;
                self.refuse("malformed_heartbeat", &"a Binary Star state that is not 1-4", now_ns, out);
            }
            Event::Replicated(Ok(m)) => self.on_replicated(m, now_ns, out),
            Event::Replicated(Err(())) => {
                self.counters.malformed_updates += 1;
                self.refuse(
                    "malformed_peer_update",
                    &"a message from the peer's publisher that is not a kvmsg",
                    now_ns,
                    out,
                );
            }
            Event::PeerLink(up) => {
                if let Some(p) = self.pair.as_mut() {
                    p.peer_connected = up;
                }
            }
            Event::PeerSnapshot(m) => self.on_peer_snapshot(m, now_ns, out),
            Event::PeerSyncCheck => self.peer_sync_check(now_ns, out),
            Event::PeerSyncFailed => {
                if let Some(p) = self.pair.as_mut() {
                    p.sync = None;
                }
            }
            Event::Request { identity, request } => match request {
                Ok(Request::Status) => out.push(Action::Reply { identity, text: self.status_text() }),
                Ok(Request::Snapshot { subtree }) => {
                    if self.bstar_event(BEvent::ClientRequest, now_ns, out)? {
                        // A snapshot acknowledges what it holds: write the log first.
                        self.flush(out);
                        out.push(Action::SendSnapshot { identity, subtree });
                    } else {
                        self.counters.rejected_votes += 1;
                    }
                }
                Err(()) => {
                    self.counters.malformed_requests += 1;
                    self.refuse(
                        "malformed_request",
                        &"a snapshot-port request that is not ICANHAZ?/STATUS?",
                        now_ns,
                        out,
                    );
                }
            },
            Event::SnapshotSent => self.counters.snapshots += 1,
            Event::SnapshotCut(cut) => self.snapshot_cut(cut, out),
            Event::Update(Ok(m)) => self.on_collector(m, now_ns, out),
            Event::Update(Err(())) => {
                self.counters.malformed_updates += 1;
                self.refuse("malformed_update", &"a collector message that is not a kvmsg", now_ns, out);
            }
            Event::Flush => self.flush(out),
            Event::Tick => self.timers(now_ns, out),
            Event::LogFlushed => {
                self.wrote = false;
                self.publish_outbox(out);
            }
            Event::LogFailed { token, error } => self.log_failed(token, &error, out),
            Event::LogSynced { took_ns, error } => self.log_synced(took_ns, error, out),
            Event::NothingToSync => self.sync_in_flight = false,
            Event::LogLarge => self.want_snapshot(now_ns, out),
            Event::PeerSnapshotWritten => {
                // The re-sync's snapshot is put in place by the compactor (copies aside included).
                self.keep_aside_wanted = false;
                self.want_snapshot(now_ns, out);
            }
            Event::PeerSnapshotUnwritten { error } => self.peer_snapshot_unwritten(&error, now_ns, out),
            Event::CompactionDone { took_ns, error } => self.compaction_done(took_ns, error, now_ns, out),
            Event::KeptAside => {
                (self.compacting, self.keeping_aside) = (false, false);
                self.maybe_snapshot(now_ns, out);
            }
            Event::SnapshotWritten { lost } => self.map_snapshot_written(lost, now_ns, out),
            Event::SnapshotFailed { error } => self.snapshot_failed(&error, now_ns, out),
            Event::PublishFailed { sequence, hugz, error } => self.publish_failed(sequence, hugz, &error, now_ns, out),
            Event::Stopping => self.stopping(out),
        }
        Ok(())
    }

    /// A published update handed back by the shell ([`Action::Publish`] with `apply_at_ns`).
    pub fn published(&mut self, msg: KvMsg, at_ns: u64) {
        if self.map.apply_owned(msg, at_ns).is_err() {
            self.counters.malformed_updates += 1;
        }
    }

    /// The map and the Binary Star machine apart, so a shell sending a long snapshot from the
    /// map can keep heartbeats going ([`BStar::heartbeat_due`]) meanwhile.
    pub fn snapshot_view(&mut self) -> (&KvMap, Option<&mut BStar>) {
        (&self.map, self.pair.as_mut().map(|p| &mut p.bstar))
    }

    /// `active`, `passive`, `primary`, `backup` (a standalone server is always `active`).
    pub fn state_name(&self) -> &'static str {
        match &self.pair {
            None => "active",
            Some(p) => p.bstar.state().name(),
        }
    }

    /// Serving clients (standalone, or ACTIVE in a pair and not held after a pause).
    pub fn is_active(&self) -> bool {
        self.pair.as_ref().is_none_or(|p| p.bstar.state() == State::Active && !p.bstar.held())
    }

    /// A passive re-sync from the peer is under way.
    pub fn peer_syncing(&self) -> bool {
        self.pair.as_ref().is_some_and(|p| p.sync.is_some())
    }

    /// The longest key and value accepted, stated on every snapshot's KTHXBAI.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How often HUGZ are published when nothing else is, ms (stated on every snapshot's
    /// KTHXBAI).
    pub fn hugz_interval_ms(&self) -> u64 {
        self.hugz_ns / 1_000_000
    }

    /// Current sequence (highest published or replicated).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The map.
    pub fn map(&self) -> &KvMap {
        &self.map
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The data directory holds everything in memory: `None` without one, `Some(false)` while
    /// a passive's failed log left it behind and no snapshot has made it whole yet.
    pub fn durable(&self) -> Option<bool> {
        self.durable.then_some(self.disk_whole())
    }

    /// The data directory alone recovers everything in memory (or there is none): not behind
    /// after a failed log write, no re-sync's snapshot waiting to be put in place.
    fn disk_whole(&self) -> bool {
        !self.disk_behind && self.switch.is_none()
    }

    /// Why the data directory alone does not recover the map (`durable=no`), if it does not: what
    /// a refused client update and STATUS (`durable_why=`) say.
    pub fn not_durable(&self) -> Option<NotDurable> {
        if !self.durable {
            None
        } else if self.disk_behind {
            Some(NotDurable::Behind)
        } else {
            self.switch.map(Switch::not_durable)
        }
    }

    /// Updates held in the pending list (passive).
    pub fn pending(&self) -> usize {
        self.pair.as_ref().map_or(0, |p| p.pending.len())
    }

    /// A snapshot did not all go out: counted by why, and said (at the 1st, 2nd, 4th, … time
    /// for each why) as what it is. Before, a client that closed before its reply was counted
    /// and said as one that did not read while its queue was full.
    fn snapshot_cut(&mut self, cut: SnapshotCut, out: &mut Vec<Action>) {
        let c = &mut self.counters;
        let (n, line) = match cut {
            SnapshotCut::QueueFull => {
                c.snapshots_abandoned += 1;
                let n = c.snapshots_abandoned;
                let line = format!(
                    "snapshot abandoned: a client did not read it while its queue was full \
                     (snapshots_abandoned={n}; it will ask again)"
                );
                (n, line)
            }
            SnapshotCut::ClientGone => {
                c.snapshots_client_gone += 1;
                let n = c.snapshots_client_gone;
                (n, format!("snapshot not sent in full: its client went away first (snapshots_client_gone={n})"))
            }
            SnapshotCut::Failed(e) => {
                c.snapshot_send_errors += 1;
                let n = c.snapshot_send_errors;
                (n, format!("snapshot not sent in full: {e} (snapshot_send_errors={n})"))
            }
        };
        if n.is_power_of_two() {
            out.push(Action::Log(line));
        }
    }

    /// The `STATUS?` reply.
    pub fn status_text(&self) -> String {
        let c = &self.counters;
        format!(
            "state={}\nrole={}\nsequence={}\nkeys={}\npending={}\nmalformed_requests={}\n\
             malformed_updates={}\nmalformed_heartbeats={}\nduplicates={}\nrejected_votes={}\nsnapshots={}\n\
             published={}\nhugz={}\nexpired={}\npending_dropped={}\nlog_failures={}\n\
             snapshot_failures={}\npublish_failures={}\nhugz_failures={}\ndurable={}\ndurable_why={}\npeer_entries_refused={}\nabsolute_ttls={}\nsnapshots_abandoned={}\n\
             snapshots_client_gone={}\nsnapshot_send_errors={}\npauses={}\ndisk_stalls={}\nsyncs={}\nslow_syncs={}\nlongest_sync_ms={}\nsync_failures={}\n\
             compactions={}\ncompaction_failures={}\nlast_compaction_ms={}\nlast_compaction_error={}\n{}",
            self.state_name(),
            self.role,
            self.sequence,
            self.map.len(),
            self.pending(),
            c.malformed_requests,
            c.malformed_updates,
            c.malformed_heartbeats,
            c.duplicates,
            c.rejected_votes,
            c.snapshots,
            c.published,
            c.hugz,
            c.expired,
            c.pending_dropped,
            c.log_failures,
            c.snapshot_failures,
            c.publish_failures,
            c.hugz_failures,
            match self.durable() {
                None => "off",
                Some(true) => "yes",
                Some(false) => "no",
            },
            self.not_durable().map_or("", NotDurable::name),
            c.peer_entries_refused,
            c.absolute_ttls,
            c.snapshots_abandoned,
            c.snapshots_client_gone,
            c.snapshot_send_errors,
            c.pauses,
            c.disk_stalls,
            c.syncs,
            c.slow_syncs,
            c.longest_sync_ms,
            c.sync_failures,
            c.compactions,
            c.compaction_failures,
            c.last_compaction_ms,
            self.last_compaction_error.as_deref().unwrap_or("").replace('\n', " "),
            self.refusals.counts().map(|(r, n)| format!("refused_{r}={n}\n")).collect::<String>()
        )
    }

    fn log(&self, out: &mut Vec<Action>, msg: std::fmt::Arguments) {
        if self.verbose {
            out.push(Action::Log(msg.to_string()));
        }
    }

    /// Append `msg` to the update log (no data dir: nothing to do).
    fn persist(&mut self, msg: &KvMsg, expires_at_ns: Option<u64>, now_ns: u64, out: &mut Vec<Action>) {
        // Behind: the snapshot that makes the disk whole holds it; once the map is frozen for
        // that snapshot, what follows goes to the log after it (unless it fell behind again).
        let after_freeze = self.full_in_flight.is_some() && self.frozen_gen == self.behind_gen;
        if !self.durable || (self.disk_behind && !after_freeze) {
            return;
        }
        let mut m = msg.clone();
        m.remove_prop(kvmsg::TTL_PROP);
        self.appends += 1;
        self.wrote = true;
        out.push(Action::Append {
            token: self.appends,
            msg: m,
            expires_in_ms: expires_at_ns.map(|t| t.saturating_sub(now_ns) / 1_000_000 + 1),
        });
    }

    /// A log append or flush failed and the shell rolled back every record not yet flushed;
    /// the appends already asked for are skipped. Active: the whole unflushed batch is lost (not
    /// published, the clients' re-sends count as new) and its sequences are given back; its
    /// expiry deletes are published again at the next tick, and its re-publishes may be asked
    /// for again (the entry keeps its sequence until one is published); so too when held after
    /// a pause (not serving, but its outbox holds what it sequenced before). Passive: what it
    /// lost was replicated, already applied and acknowledged by the active server, so its disk
    /// copy is now behind until a full snapshot (see the module doc).
    fn log_failed(&mut self, token: Option<u64>, error: &str, out: &mut Vec<Action>) {
        self.counters.log_failures += 1;
        let n = self.counters.log_failures;
        self.wrote = false;
        if token.is_none_or(|k| k < self.appends) {
            out.push(Action::SkipAppends { through: self.appends });
        }
        // The state, not `is_active`: a held active takes no replicated updates, and its outbox
        // (appended before the pause) is lost with the batch, never published.
        if self.pair.as_ref().is_some_and(|p| p.bstar.state() != State::Active) {
            self.fall_behind();
            self.snapshot_wanted = true;
            self.full_snapshot_wanted = true;
            if n <= 10 || n.is_multiple_of(1000) {
                out.push(Action::Log(format!(
                    "update log write failed ({n} so far): the data directory now lacks replicated updates \
                     held in memory (the active server acknowledged them); not durable (STATUS durable=no) \
                     until a full snapshot is written, tried with back-off: {error}"
                )));
            }
            return;
        }
        let mut first_lost = None::<u64>;
        let (mut lost, mut republishes) = (0u64, 0u64);
        let expiries_before = self.expiries_lost.len();
        for o in std::mem::take(&mut self.outbox) {
            let m = match o {
                Outgoing::Update(m, _) => {
                    lost += 1;
                    if let Some(u) = m.uuid {
                        self.recent.remove(&u);
                    }
                    m
                }
                Outgoing::Expiry(m) => {
                    self.expiries_lost.push(m.key.clone());
                    m
                }
                Outgoing::Republish(m) => {
                    // Not published: the client's next re-send is answered, not dropped.
                    republishes += 1;
                    if let Some(u) = m.uuid {
                        self.republished.remove(&u);
                    }
                    m
                }
                Outgoing::Hugz(_) => continue,
            };
            first_lost = Some(first_lost.map_or(m.sequence, |f| f.min(m.sequence)));
        }
        if let Some(f) = first_lost {
            // Nothing after it was published: the next update takes its sequence.
            self.sequence = self.sequence.min(f.saturating_sub(1));
        }
        let expiries = self.expiries_lost.len() - expiries_before;
        if n <= 10 || n.is_multiple_of(1000) {
            out.push(Action::Log(format!(
                "update log write failed ({n} so far): {lost} updates not acknowledged (neither applied nor \
                 published; clients re-send them), {expiries} expiry deletes to publish again at the next \
                 tick, {republishes} re-publishes not sent (answered at the next re-send): {error}"
            )));
        }
    }

    /// The shell spent `ns` in a data directory write on the serving thread (a log flush, a
    /// snapshot write): a gap the Binary Star machine sees next is said as a slow disk when this
    /// explains most of it.
    pub fn disk_waited(&mut self, ns: u64) {
        self.disk_wait_ns = self.disk_wait_ns.saturating_add(ns);
    }

    /// The fsync is done: count it, and say one slower than the interval (or failed).
    fn log_synced(&mut self, took_ns: u64, error: Option<String>, out: &mut Vec<Action>) {
        self.sync_in_flight = false;
        let c = &mut self.counters;
        if let Some(e) = error {
            c.sync_failures += 1;
            let n = c.sync_failures;
            if n <= 10 || n.is_multiple_of(1000) {
                out.push(Action::Log(format!(
                    "update log fsync failed ({n} so far; tried again in {}): {e}; acknowledged updates are \
                     in the OS, safe from a crash of this process, not yet from a crash of the machine",
                    human_duration(self.fsync_ns)
                )));
            }
            return;
        }
        c.syncs += 1;
        c.longest_sync_ms = c.longest_sync_ms.max(took_ns / 1_000_000);
        if took_ns > self.fsync_ns {
            c.slow_syncs += 1;
            let n = c.slow_syncs;
            if n <= 10 || n.is_multiple_of(100) {
                out.push(Action::Log(format!(
                    "slow disk: an fsync of the update log took {}, longer than its {} interval, so a \
                     machine crash meanwhile could lose that long of acknowledged updates; the server kept \
                     serving (slow_syncs={n}, longest_sync_ms={})",
                    human_duration(took_ns),
                    human_duration(self.fsync_ns),
                    c.longest_sync_ms
                )));
            }
        }
    }

    /// Ask for a compaction (now, or when the back-off after a failed one has passed).
    fn want_snapshot(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        self.snapshot_wanted = true;
        self.maybe_snapshot(now_ns, out);
    }

    /// Ask for a snapshot of the map, which the data directory's files do not hold.
    fn want_full_snapshot(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        self.full_snapshot_wanted = true;
        self.want_snapshot(now_ns, out);
    }

    /// Write the wanted snapshot if the back-off allows and no compaction is in flight: first
    /// the log (the outbox's updates are then applied, so the snapshot holds every update
    /// acknowledged before it). A snapshot of the map when one is wanted, else a compaction.
    fn maybe_snapshot(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        if !self.durable || !self.snapshot_wanted || self.compacting || now_ns < self.snapshot_retry_at_ns {
            return;
        }
        self.snapshot_wanted = false;
        self.flush(out);
        if self.switch.is_some() {
            // The re-sync's snapshot first; a full snapshot still wanted follows it.
            self.snapshot_wanted = self.full_snapshot_wanted;
            (self.compacting, self.compacting_switch) = (true, true);
            out.push(Action::Compact);
        } else if self.full_snapshot_wanted && self.keep_aside_wanted {
            // The copies first, by the compactor (fsynced copies as large as the files: seconds at
            // 1M keys, on the serving thread before): no compaction is in flight to remove
            // `log.prev` under them, and none starts until they are answered; the map's snapshot
            // is written then ([`Event::KeptAside`]). Before, they were made on the serving thread.
            // Nothing is appended meanwhile: the data directory is behind (see `persist`).
            (self.keep_aside_wanted, self.keeping_aside) = (false, true);
            (self.compacting, self.snapshot_wanted) = (true, true);
            out.push(Action::KeepAside);
        } else if self.full_snapshot_wanted {
            // The map is frozen now (the shell's copy shares its nodes); the compactor writes it.
            self.compacting = true;
            self.full_in_flight = Some((self.map.len(), self.sequence));
            self.frozen_gen = self.behind_gen;
            out.push(Action::WriteSnapshot);
        } else {
            (self.compacting, self.compacting_switch) = (true, false);
            out.push(Action::Compact);
        }
    }

    /// The compactor answered: count it, then go on as for any snapshot write.
    fn compaction_done(&mut self, took_ns: u64, error: Option<String>, now_ns: u64, out: &mut Vec<Action>) {
        let c = &mut self.counters;
        c.last_compaction_ms = took_ns / 1_000_000;
        match error {
            None => {
                c.compactions += 1;
                self.snapshot_written(now_ns, out);
            }
            Some(e) => {
                c.compaction_failures += 1;
                self.last_compaction_error = Some(e.clone());
                self.snapshot_failed(&e, now_ns, out);
            }
        }
    }

    /// The re-sync file could not be written: the data directory is behind the map (its files
    /// are those before the re-sync) until a full snapshot of it is written.
    fn peer_snapshot_unwritten(&mut self, error: &str, now_ns: u64, out: &mut Vec<Action>) {
        self.switch = None;
        self.fall_behind();
        // The updates queued during the sync were asked to be appended after the file's end (to
        // the log that was to follow it): with no such log they would go after the files before
        // the re-sync, a mix a start would read as one state. The full snapshot holds them.
        out.push(Action::SkipAppends { through: self.appends });
        out.push(Action::Log(format!(
            "passive: the active's snapshot could not be written to the data directory as it arrived ({error}); \
             not durable (STATUS durable=no) until a full snapshot of the map is written"
        )));
        self.want_full_snapshot(now_ns, out);
    }

    /// The data directory fell behind the map (a passive's log failed, a re-sync's file could not
    /// be written): no appends until a full snapshot of the map is written.
    fn fall_behind(&mut self) {
        self.disk_behind = true;
        self.behind_gen += 1;
    }

    /// The compactor answered an [`Action::Compact`] (a compaction, or a snapshot put in place).
    fn snapshot_written(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        self.snapshot_backoff_ns = 0;
        self.snapshot_retry_at_ns = 0;
        self.compacting = false;
        if std::mem::take(&mut self.compacting_switch) {
            let placed = self.switch.take();
            if self.disk_behind {
                // Behind meanwhile (a log failed, or a late answer said the re-sync's file was
                // not written, which ended the wait): not durable, said when it fell behind.
            } else if placed == Some(Switch::Map) {
                out.push(Action::Log(
                    "data directory whole again: the snapshot of the map is in place (durable=yes)".into(),
                ));
            } else {
                self.log(out, format_args!("passive: the re-sync's snapshot is in place (durable=yes)"));
            }
            self.whole_again(now_ns, out);
        }
        // From the files: a snapshot of the map still wanted is written next.
        self.maybe_snapshot(now_ns, out);
    }

    /// The map frozen for [`Action::WriteSnapshot`] is on disk and the log restarted after it
    /// (with the appends held meanwhile, unless `lost` says why not): it is put in place off the
    /// serving thread next, as a re-sync's; the data directory is whole once it is, unless it
    /// fell behind again meanwhile (then another full snapshot follows).
    fn map_snapshot_written(&mut self, lost: Option<String>, now_ns: u64, out: &mut Vec<Action>) {
        let (keys, sequence) = self.full_in_flight.take().unwrap_or_default();
        self.compacting = false;
        self.snapshot_backoff_ns = 0;
        self.snapshot_retry_at_ns = 0;
        self.switch = Some(Switch::Map);
        if let Some(e) = lost {
            self.fall_behind();
            out.push(Action::Log(format!(
                "the snapshot of the map ({keys} keys at sequence {sequence}) was written, but not the updates \
                 that followed it to the new log: {e}; not durable (STATUS durable=no) until another full \
                 snapshot is written"
            )));
        } else if self.frozen_gen == self.behind_gen {
            self.disk_behind = false;
            self.full_snapshot_wanted = false;
            self.log(
                out,
                format_args!("snapshot of the map ({keys} keys at sequence {sequence}) written off the serving thread"),
            );
        }
        self.want_snapshot(now_ns, out);
    }

    /// The data directory may have just become whole: an active server applies the pending list
    /// it held meanwhile.
    fn whole_again(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        if self.disk_whole() && self.is_active() {
            self.replay_pending(now_ns, out);
        }
    }

    fn snapshot_failed(&mut self, error: &str, now_ns: u64, out: &mut Vec<Action>) {
        self.compacting = false;
        self.full_in_flight = None;
        self.compacting_switch = false;
        self.counters.snapshot_failures += 1;
        self.snapshot_backoff_ns =
            self.snapshot_backoff_ns.saturating_mul(2).clamp(SNAPSHOT_RETRY_MIN_NS, SNAPSHOT_RETRY_MAX_NS);
        self.snapshot_retry_at_ns = now_ns.saturating_add(self.snapshot_backoff_ns);
        self.snapshot_wanted = true;
        let detail = format_args!(
            "{error}; tried again after a back-off doubling from {} s to at most {} s (STATUS snapshot_failures)",
            SNAPSHOT_RETRY_MIN_NS / 1_000_000_000,
            SNAPSHOT_RETRY_MAX_NS / 1_000_000_000
        );
        if let Some(l) = self.snapshot_said.refuse("write_failed", &detail, now_ns) {
            out.push(Action::Log(l));
        }
    }

    /// The publisher could not send message `sequence`: counted, and said like a refusal (the
    /// first at once, then a summary per interval, the total at the stop), whatever `verbose`
    /// says: an error, not progress. A HUGZ is said as what it is, apart: no update was missed.
    /// Before, it was said as `update not published`, `subscribers miss it`.
    #[cold]
    fn publish_failed(&mut self, sequence: u64, hugz: bool, error: &str, now_ns: u64, out: &mut Vec<Action>) {
        self.counters.publish_failures += 1;
        let said = if hugz {
            self.counters.hugz_failures += 1;
            let detail = format_args!(
                "sequence {sequence}: {error}; no update missed, but a client that hears nothing from this server \
                 for its silence limit fails over (STATUS hugz_failures)"
            );
            self.hugz_said.refuse("send_failed", &detail, now_ns)
        } else {
            let detail = format_args!(
                "sequence {sequence}: {error}; subscribers miss it until their next snapshot (STATUS publish_failures)"
            );
            self.publish_said.refuse("send_failed", &detail, now_ns)
        };
        out.extend(said.map(Action::Log));
    }

    /// The end of the run: what went unsaid of the refusals and failures, and the totals of
    /// failed publishes (updates, HUGZ) and of a passive's re-syncs however recent the last
    /// line (how often it fell behind, said at the stop whatever a summary said before).
    fn stopping(&mut self, out: &mut Vec<Action>) {
        let unsaid = [&mut self.refusals, &mut self.snapshot_said].map(Refusals::flush);
        let totals = [&mut self.publish_said, &mut self.hugz_said, &mut self.resync_said].map(Refusals::end);
        out.extend(unsaid.into_iter().chain(totals).flatten().map(Action::Log));
    }

    /// Publish `o` (not a client's update); with a data dir it waits in the outbox until its
    /// log record is written.
    fn publish(&mut self, o: Outgoing, now_ns: u64, out: &mut Vec<Action>) {
        self.last_pub_ns = now_ns;
        if self.durable {
            self.outbox.push(o);
            return;
        }
        self.send(o, out);
    }

    /// Hand the log records written so far to the OS, then publish the outbox: a KVPUB is a
    /// client's acknowledgement, so it goes out only once a process crash can no longer lose
    /// the update (append → flush → publish, once per batch).
    fn flush(&mut self, out: &mut Vec<Action>) {
        if self.durable && self.wrote {
            out.push(Action::FlushLog); // continues at Event::LogFlushed
            return;
        }
        self.publish_outbox(out);
    }

    fn publish_outbox(&mut self, out: &mut Vec<Action>) {
        for o in std::mem::take(&mut self.outbox) {
            self.send(o, out);
        }
    }

    /// Publish `o` now (its log record, if any, is flushed); HUGZ are counted apart.
    fn send(&mut self, o: Outgoing, out: &mut Vec<Action>) {
        out.push(match o {
            Outgoing::Hugz(msg) => {
                self.counters.hugz += 1;
                Action::Publish { msg, apply_at_ns: None, hugz: true }
            }
            Outgoing::Expiry(msg) => {
                self.counters.published += 1;
                Action::Publish { msg, apply_at_ns: None, hugz: false }
            }
            Outgoing::Republish(msg) => {
                self.map.set_sequence(&msg.key, msg.sequence);
                self.counters.published += 1;
                Action::Publish { msg, apply_at_ns: None, hugz: false }
            }
            Outgoing::Update(msg, at) => {
                self.counters.published += 1;
                Action::Publish { msg, apply_at_ns: Some(at), hugz: false }
            }
        });
    }

    /// Validate a client update; the reason (a counter name, and the words) when it is refused.
    fn validate(&self, msg: &KvMsg) -> Result<(), (&'static str, String)> {
        if msg.key.is_empty() {
            return Err(("empty_key", "empty key".into()));
        }
        self.limits.check(&msg.key, &msg.body)?;
        if msg.key == HUGZ || msg.key == KTHXBAI {
            return Err(("reserved_key", "reserved key".into()));
        }
        wire_ttl_s(msg).map_err(|e| ("bad_ttl", e.to_string()))?;
        let props = kvmsg::encode_props(&msg.props).map_err(|e| ("bad_properties", e.to_string()))?;
        if props.len() > MAX_PROPS_BYTES {
            return Err(("bad_properties", format!("properties of {} bytes > {MAX_PROPS_BYTES}", props.len())));
        }
        Ok(())
    }

    /// Active: sequence, store, publish and persist one client update (deduplicated by UUID).
    /// The update was validated (TTL parses), so storing it cannot fail.
    fn apply_update(&mut self, mut msg: KvMsg, now_ns: u64, out: &mut Vec<Action>) {
        if let Some(u) = msg.uuid {
            if !self.recent.insert(u) {
                self.counters.duplicates += 1;
                self.republish_if_current(&msg, u, now_ns, out);
                return;
            }
        }
        self.sequence = self.sequence.saturating_add(1);
        msg.sequence = self.sequence;
        if self.durable {
            // Log first; applied and published (the acknowledgement) only once the log record
            // is flushed, never if it failed.
            let exp = ttl_ns(&msg).ok().flatten().map(|t| now_ns.saturating_add(t));
            self.persist(&msg, exp, now_ns, out);
            self.last_pub_ns = now_ns;
            self.outbox.push(Outgoing::Update(msg, now_ns));
            return;
        }
        self.last_pub_ns = now_ns;
        self.counters.published += 1;
        out.push(Action::Publish { msg, apply_at_ns: Some(now_ns), hugz: false });
    }

    /// A client re-sent an update we already applied (it missed our KVPUB, e.g. because its
    /// subscription was not in place yet). If the key still holds exactly that update, publish the
    /// current state again under a new sequence: it changes nothing and acknowledges the client.
    /// If the key has moved on, a newer update exists and re-publishing would be stale: drop it.
    /// Each UUID is re-published at most once (a client whose subscription cannot see the key
    /// would otherwise have every re-send published again under a new sequence); a client that
    /// misses that once finds its UUID in the snapshot of its next re-sync.
    fn republish_if_current(&mut self, msg: &KvMsg, u: Uuid, now_ns: u64, out: &mut Vec<Action>) {
        let current = match self.map.get(&msg.key) {
            Some(e) if e.uuid == Some(u) => Some(KvMap::to_msg(&msg.key, e, now_ns)),
            None if msg.body.is_empty() => Some(msg.clone()),
            _ => None,
        };
        if current.is_some() && !self.republished.insert(u) {
            return;
        }
        if let Some(mut m) = current {
            self.sequence = self.sequence.saturating_add(1);
            m.sequence = self.sequence;
            m.uuid = Some(u);
            let exp = self.map.get(&m.key).and_then(|e| e.expires_at_ns);
            self.persist(&m, exp, now_ns, out);
            self.publish(Outgoing::Republish(m), now_ns, out);
        }
    }

    /// Passive: apply an update the active server published.
    fn apply_replicated(&mut self, mut msg: KvMsg, now_ns: u64, out: &mut Vec<Action>) {
        if msg.sequence <= self.sequence {
            return;
        }
        if !self.peer_ttl(&mut msg, "peer_update_bad_ttl", now_ns, out) {
            // Not stored; the sequence still moves on, so the passive does not re-sync for it.
            self.counters.malformed_updates += 1;
            self.sequence = msg.sequence;
            return;
        }
        self.sequence = msg.sequence;
        if let Some(u) = msg.uuid {
            self.recent.insert(u);
            if let Some(p) = self.pair.as_mut() {
                if let Some(i) = p.pending.iter().position(|(_, m)| m.uuid == Some(u)) {
                    p.pending.remove(i);
                }
            }
        }
        if self.durable {
            let exp = ttl_ns(&msg).ok().flatten().map(|t| now_ns.saturating_add(t));
            self.persist(&msg, exp, now_ns, out);
        }
        // peer_ttl checked the TTL, the only thing apply can refuse; should it still, it is said.
        if let Err(e) = self.map.apply_owned(msg, now_ns) {
            self.counters.malformed_updates += 1;
            self.refuse("peer_update_bad_ttl", &e, now_ns, out);
        }
    }

    fn on_collector(&mut self, msg: KvMsg, now_ns: u64, out: &mut Vec<Action>) {
        if let Err((reason, words)) = self.validate(&msg) {
            self.counters.malformed_updates += 1;
            self.refuse(reason, &format_args!("update refused: {words}"), now_ns, out);
            return;
        }
        if self.is_active() {
            if !self.disk_whole() {
                // It could not be made durable: not acknowledged; the client re-sends it.
                let why = self.not_durable().map_or("", NotDurable::words);
                self.refuse("not_durable", &format_args!("update refused: {why} (STATUS durable=no)"), now_ns, out);
                return;
            }
            self.apply_update(msg, now_ns, out);
            return;
        }
        // Not active: hold it until the active server publishes it (or we take over).
        if msg.uuid.is_some_and(|u| self.recent.contains(&u)) {
            return;
        }
        if let Some(p) = self.pair.as_mut() {
            if msg.uuid.is_some() && p.pending.iter().any(|(_, m)| m.uuid == msg.uuid) {
                return; // a re-send of an update we already hold
            }
            if p.pending.len() >= PENDING_MAX {
                p.pending.pop_front();
                self.counters.pending_dropped += 1;
            }
            p.pending.push_back((now_ns, msg));
        }
    }

    /// A message from the active peer's publisher (we are not active).
    fn on_replicated(&mut self, msg: KvMsg, now_ns: u64, out: &mut Vec<Action>) {
        if self.pair.as_ref().is_none_or(|p| p.bstar.state() == State::Active) {
            return; // held after a pause too: a peer that took over makes us passive first
        }
        let sequence = self.sequence;
        let Some(p) = self.pair.as_mut() else { return };
        if msg.key == HUGZ {
            // HUGZ carries the active's sequence: if it is ahead of us while we think we are in
            // step, we lost updates.
            if p.synced && p.sync.is_none() && msg.sequence > sequence {
                p.synced = false;
                let detail =
                    format_args!("the active's HUGZ is at sequence {}, this server at {sequence}", msg.sequence);
                out.extend(self.resync_said.refuse("hugz_ahead", &detail, now_ns).map(Action::Log));
            }
            return;
        }
        if let Some(sync) = p.sync.as_mut() {
            sync.queued.push(msg);
        } else if p.synced {
            if msg.sequence > sequence.saturating_add(1) {
                // The active server's sequence is contiguous: we missed updates (HWM, a
                // reconnect). Fetch a fresh snapshot rather than drift.
                p.synced = false;
                let detail = format_args!("sequence {sequence} -> {}: the updates between were missed", msg.sequence);
                out.extend(self.resync_said.refuse("gap", &detail, now_ns).map(Action::Log));
                return;
            }
            self.apply_replicated(msg, now_ns, out);
        }
    }

    /// Passive and not yet in step with the active server: time out a silent sync, or start one
    /// once our subscription to the peer is on its way.
    fn peer_sync_check(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        let verbose = self.verbose;
        let Some(p) = self.pair.as_mut() else { return };
        if p.bstar.state() != State::Passive || p.synced || (p.sync.is_none() && !p.peer_connected) {
            return;
        }
        match &p.sync {
            Some(sync) => {
                if now_ns > sync.deadline_ns {
                    p.sync = None;
                    out.push(Action::EndPeerSnapshot);
                    // An error, said whatever --quiet says (before, it hid it): this server is
                    // not in step with the active one, and will not be until a snapshot comes.
                    // Said like a refusal: a silent peer fails every try, one per 3 s.
                    let detail = format_args!(
                        "the active peer sent no snapshot within {}, asking again: this server is not in step with \
                         it until one comes",
                        crate::diag::human_duration(PEER_SYNC_TIMEOUT_NS)
                    );
                    out.extend(self.resync_said.refuse("no_snapshot", &detail, now_ns).map(Action::Log));
                }
            }
            None => {
                p.sync = Some(PeerSync {
                    deadline_ns: now_ns.saturating_add(PEER_SYNC_TIMEOUT_NS),
                    map: KvMap::new(),
                    queued: Vec::new(),
                });
                out.push(Action::RequestPeerSnapshot);
                if verbose {
                    out.push(Action::Log(format!("passive: fetching a snapshot from {}", p.peer_snapshot)));
                }
            }
        }
    }

    fn on_peer_snapshot(&mut self, m: Result<KvMsg, ()>, now_ns: u64, out: &mut Vec<Action>) {
        let Some(sync) = self.pair.as_mut().and_then(|p| p.sync.as_mut()) else { return };
        sync.deadline_ns = now_ns.saturating_add(PEER_SYNC_TIMEOUT_NS);
        let Ok(mut m) = m else {
            self.counters.peer_entries_refused += 1;
            self.refuse("peer_snapshot_malformed", &"a peer snapshot message that is not a kvmsg", now_ns, out);
            return;
        };
        if m.key != KTHXBAI {
            if m.body.is_empty() {
                return;
            }
            // An entry we cannot apply is counted and said, never dropped silently.
            if !self.peer_ttl(&mut m, "peer_snapshot_bad_ttl", now_ns, out) {
                self.counters.peer_entries_refused += 1;
                return;
            }
            let ttl = match ttl_ns(&m) {
                Ok(ttl) => ttl,
                Err(e) => {
                    self.counters.peer_entries_refused += 1;
                    self.refuse("peer_snapshot_bad_ttl", &e, now_ns, out);
                    return;
                }
            };
            if self.durable {
                // Written to disk as it arrives: the end of the re-sync has no map to write.
                let mut msg = m.clone();
                msg.remove_prop(kvmsg::TTL_PROP);
                out.push(Action::StreamPeerEntry { msg, expires_in_ms: ttl.map(|t| t / 1_000_000 + 1) });
            }
            let Some(sync) = self.pair.as_mut().and_then(|p| p.sync.as_mut()) else { return };
            if let Err(e) = sync.map.apply_owned(m, now_ns) {
                self.counters.peer_entries_refused += 1;
                self.refuse("peer_snapshot_bad_ttl", &e, now_ns, out);
            }
            return;
        }
        let Some(p) = self.pair.as_mut() else { return };
        let Some(sync) = p.sync.take() else { return };
        p.synced = true;
        let keep_aside = self.durable && m.sequence < self.sequence;
        if self.durable && (self.switch.is_some() || self.keeping_aside || self.full_in_flight.is_some()) {
            // An earlier re-sync's snapshot is not in place yet (its file is still in use, this
            // one was not written), the compactor is copying the files aside (moving the log
            // now could cut a copy short), or writing the map to that file: that goes first,
            // then the map is written whole.
            (self.disk_behind, self.behind_gen) = (true, self.behind_gen + 1);
            self.keep_aside_wanted |= keep_aside;
            self.full_snapshot_wanted = true;
            self.snapshot_wanted = true;
        } else if self.durable {
            // Before the appends of the updates queued meanwhile: they go to the log that follows
            // it. Until it is in place the data directory recovers the files before the re-sync.
            self.switch = Some(Switch::Resync);
            self.disk_behind = false;
            self.keep_aside_wanted = keep_aside;
            out.push(Action::PeerSnapshotEnd { sequence: m.sequence, keep_aside });
        }
        out.push(Action::EndPeerSnapshot);
        if m.sequence < self.sequence {
            // We hold updates the active lacks (a data dir newer than the active's, e.g. the
            // backup's after it served while the primary was down): never replaced unsaid.
            let (theirs, ours) = (m.sequence, self.sequence);
            out.push(Action::Log(format!(
                "passive: the active peer's snapshot is at sequence {theirs}, behind this server's {ours}: \
                 the {} updates after it held here (sequences {}..={ours}) are replaced by the active's map{}",
                ours - theirs,
                theirs + 1,
                if self.durable {
                    "; the data directory's files are kept aside first (to serve them, docs/CLONE.md, \
                     \"A data directory newer than the active's\")"
                } else {
                    " (no data directory: they are gone)"
                }
            )));
        }
        self.map = sync.map;
        self.sequence = m.sequence;
        for (_, e) in self.map.iter() {
            if let Some(u) = e.uuid {
                self.recent.insert(u);
            }
        }
        let recent = &self.recent;
        p.pending.retain(|(_, m)| !m.uuid.is_some_and(|u| recent.contains(&u)));
        for q in sync.queued {
            self.apply_replicated(q, now_ns, out);
        }
        self.log(out, format_args!("passive: in sync with {} keys at sequence {}", self.map.len(), self.sequence));
    }

    fn on_transition(&mut self, from: State, to: State, now_ns: u64, out: &mut Vec<Action>) {
        self.log(out, format_args!("state {} -> {}", from.name(), to.name()));
        let Some(p) = self.pair.as_mut() else { return };
        p.bstar.heartbeat_now();
        match to {
            State::Active => {
                if p.sync.take().is_some() {
                    out.push(Action::EndPeerSnapshot);
                }
                let held = p.pending.len();
                if self.disk_behind {
                    out.push(Action::Log(format!(
                        "taking over with a data directory that lacks updates held in memory: writing a \
                         full snapshot first; until it is written, client updates are refused \
                         (refused_not_durable) and the {held} pending ones held"
                    )));
                    self.want_full_snapshot(now_ns, out);
                } else if let Some(switch) = self.switch {
                    let what = switch.what();
                    out.push(Action::Log(format!(
                        "taking over while {what} is put in place: until it is, client updates are \
                         refused (refused_not_durable) and the {held} pending ones held"
                    )));
                } else {
                    self.replay_pending(now_ns, out);
                }
                self.last_pub_ns = 0; // HUGZ at once so clients see us
            }
            State::Passive => p.synced = false,
            _ => {}
        }
    }

    /// Active (and durable, or without a data dir): apply the pending list held as passive, and
    /// flush the log, so that the updates are published in this step, as they are without a data
    /// dir. Left in the outbox for the shell's next flush, they were dropped by a fatal error at
    /// the next heartbeat of the same batch after their appends had run (the stop's flush wrote
    /// them to the log, never published); [`ServerCore::fatal`] now keeps what an earlier step
    /// left in the outbox, and publishes it.
    fn replay_pending(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        let Some(p) = self.pair.as_mut() else { return };
        let pending: Vec<KvMsg> = p.pending.drain(..).map(|(_, m)| m).collect();
        let n = pending.len();
        for m in pending {
            self.apply_update(m, now_ns, out);
        }
        self.flush(out);
        self.log(out, format_args!("applied {n} pending updates on takeover, sequence {}", self.sequence));
    }

    /// Let the Binary Star machine see the time first ([`BStar::observe`]), and say what it
    /// noticed: a pause of this process (held if ACTIVE), or the end of a hold without the peer
    /// taking over (the updates held meanwhile are applied, HUGZ at once).
    fn observe_clock(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        // Disk time counts against the gap it ends: kept while the clock stands still (a log
        // result is fed back at the step's time), dropped once it moves on.
        let disk_ns = self.disk_wait_ns;
        if now_ns > self.last_now_ns {
            self.last_now_ns = now_ns;
            self.disk_wait_ns = 0;
        }
        let Some(p) = self.pair.as_mut() else { return };
        p.bstar.observe(now_ns);
        let timeout = human_duration(p.bstar.ns_to_expiry(now_ns));
        match p.bstar.take_pause() {
            None => {}
            Some(Pause::Resumed { gap_ns, state }) => {
                let then = if state == State::Active {
                    format!(
                        "the peer may have taken over: held (no heartbeat, no client served, updates kept \
                         pending) until it says it is active, then passive and re-synced from it, or for \
                         {timeout}, then active again"
                    )
                } else {
                    format!("a client's vote is taken only once the peer has been silent {timeout} from now")
                };
                // Mostly inside a write to the data directory: a slow disk, not a stopped process.
                let why = if disk_ns.saturating_mul(2) >= gap_ns {
                    self.counters.disk_stalls += 1;
                    format!(
                        "{} of it writing to the data directory (a slow disk, not a pause: STATUS disk_stalls)",
                        human_duration(disk_ns)
                    )
                } else {
                    self.counters.pauses += 1;
                    "SIGSTOP, a VM pause".to_string()
                };
                out.push(Action::Log(format!(
                    "binary star: this server did not run for {}, longer than its peer waits for a heartbeat \
                     ({why}); {then}",
                    human_duration(gap_ns)
                )));
            }
            Some(Pause::HoldOver) => {
                out.push(Action::Log(
                    "binary star: the peer did not say it is active after the pause: active again".into(),
                ));
                if self.disk_whole() {
                    self.replay_pending(now_ns, out); // else once the snapshot is written
                }
                self.last_pub_ns = 0; // HUGZ at once so clients see us
            }
        }
    }

    fn bstar_event(&mut self, ev: BEvent, now_ns: u64, out: &mut Vec<Action>) -> Result<bool, BStarError> {
        let Some(p) = self.pair.as_mut() else { return Ok(true) };
        let o = match p.bstar.on_event(ev, now_ns) {
            Ok(o) => o,
            Err(e) => return Err(self.fatal(e, out)),
        };
        if o.transition == Some((State::Active, State::Passive)) {
            out.push(Action::Log(format!(
                "binary star: the peer took over while this server did not run: passive now, re-syncing from \
                 it ({} updates held meanwhile stay pending until it publishes them)",
                p.pending.len()
            )));
        }
        if let Some((from, to)) = o.transition {
            self.on_transition(from, to, now_ns, out);
        }
        Ok(o.accepted)
    }

    /// Binary Star found both servers in the same state (`e`): the shell stops. Only this
    /// step's own work is dropped: of `out`, the lines stay (what led to it: a pause, a hold's
    /// end) and the rest goes, and so do the outbox entries this step sequenced. What a hold's
    /// end or a takeover replayed from the pending list here (sequenced, not yet logged or
    /// published) is neither: in a split brain the peer is active and publishes those updates
    /// (clients send to both) under its own sequences, which this server's would contradict to
    /// its subscribers; and its log would keep updates nobody was told of, that a restart
    /// (passive, re-synced from the peer) would take for updates the active lacks and keep aside.
    ///
    /// What earlier steps did came before the error and is kept, as if the heartbeat had come
    /// in the next batch: their appends were carried out by the shell, so a client's update
    /// waiting in the outbox for the batch's flush is flushed and published (its KVPUB, the
    /// client's acknowledgement) by the actions queued after the lines, before the shell sees
    /// the error and closes its sockets. Before, the outbox was cleared: the stop's flush
    /// wrote such an update to the log, never published nor acknowledged; before session 36,
    /// the stop's flush published it after the error instead, with the fatal step's replayed
    /// updates.
    #[cold]
    fn fatal(&mut self, e: BStarError, out: &mut Vec<Action>) -> BStarError {
        // Sequences only grow within a step (a failed log write gives them back in its own
        // step): this step's are those above the one it began at, and the stop's `stopped at
        // sequence N` names the last one published or logged.
        let before = self.step_sequence;
        self.sequence = self.sequence.min(before);
        // A publish of an earlier step's entry can be in `out` (a flush with nothing to write
        // published the outbox in this step): it stays, as that entry would.
        out.retain(|a| match a {
            Action::Log(_) => true,
            Action::Publish { msg, .. } => msg.sequence <= before,
            _ => false,
        });
        self.outbox.retain(|o| o.msg().sequence <= before);
        if !self.outbox.is_empty() {
            self.flush(out);
        }
        e
    }

    /// Sequence, log and publish the delete of `key`, which expired.
    fn publish_delete(&mut self, key: Vec<u8>, now_ns: u64, out: &mut Vec<Action>) {
        self.sequence = self.sequence.saturating_add(1);
        let del = KvMsg::new(key, self.sequence, Vec::new());
        self.persist(&del, None, now_ns, out);
        self.publish(Outgoing::Expiry(del), now_ns, out);
    }

    fn timers(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        if let Some(l) = self.refusals.due(now_ns) {
            out.push(Action::Log(l));
        }
        for said in [&mut self.snapshot_said, &mut self.publish_said, &mut self.hugz_said, &mut self.resync_said] {
            if let Some(l) = said.due(now_ns) {
                out.push(Action::Log(l));
            }
        }
        if let Some(p) = self.pair.as_mut() {
            if let Some(s) = p.bstar.heartbeat_due(now_ns) {
                out.push(Action::Heartbeat(s));
            }
            let alive = !p.bstar.peer_expired(now_ns);
            while alive && p.pending.front().is_some_and(|(t, _)| now_ns.saturating_sub(*t) > PENDING_MAX_AGE_NS) {
                p.pending.pop_front();
                self.counters.pending_dropped += 1;
            }
        }
        if self.is_active() {
            // Deletes lost with a failed log write first (the key expired then, so it was
            // counted then); a key that holds a value again needs none.
            for key in std::mem::take(&mut self.expiries_lost) {
                if self.map.get(&key).is_none() {
                    self.publish_delete(key, now_ns, out);
                }
            }
            if self.map.next_expiry_ns().is_some_and(|t| t <= now_ns) {
                for (key, _entry) in self.map.expire(now_ns) {
                    self.publish_delete(key, now_ns, out);
                    self.counters.expired += 1;
                }
            }
            if now_ns.saturating_sub(self.last_pub_ns) >= self.hugz_ns {
                self.publish(Outgoing::Hugz(KvMsg::new(HUGZ, self.sequence, Vec::new())), now_ns, out);
            }
        }
        if self.durable {
            self.flush(out);
            self.maybe_snapshot(now_ns, out);
            // One in flight at a time: a sync slower than the interval is said when it is done.
            if !self.sync_in_flight && now_ns.saturating_sub(self.last_fsync_ns) >= self.fsync_ns {
                out.push(Action::SyncLog);
                self.sync_in_flight = true;
                self.last_fsync_ns = now_ns;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const HEARTBEAT_MS: u64 = 100;

    fn uuid(n: u8) -> Uuid {
        [n; 16]
    }

    fn upd(key: &str, body: &str, n: u8) -> KvMsg {
        let mut m = KvMsg::new(key, 0, body);
        m.uuid = Some(uuid(n));
        m
    }

    fn cfg(role: Option<Role>) -> ServerConfig {
        ServerConfig {
            pair: role.map(|role| PairConfig {
                role,
                peer: "tcp://127.0.0.1:7000".into(),
                peer_state: "tcp://127.0.0.1:7003".into(),
                state_bind: "tcp://127.0.0.1:6003".into(),
                heartbeat_ms: HEARTBEAT_MS,
            }),
            hugz_interval_ms: 1000,
            fsync_interval_ms: 1000,
            verbose: false,
            ..ServerConfig::default()
        }
    }

    /// A core on a manual clock with a shell stand-in: it runs the actions the way
    /// `server::Server` does (published updates handed back, log results fed back at once)
    /// and records them. `fail_appends` / `fail_flush` make the log fail.
    struct Rig {
        core: ServerCore,
        clock: ManualClock,
        fail_appends: bool,
        fail_flush: bool,
        fail_snapshot: bool,
        /// Every [`Action::Publish`] fails, answered [`Event::PublishFailed`] (as the shell does).
        fail_publish: bool,
        /// Appends up to this token are skipped (`Action::SkipAppends`).
        skip_through: u64,
        /// When each snapshot write was tried.
        snapshot_writes: Vec<u64>,
        /// [`Action::Compact`] is left unanswered (a compaction in flight) and counted here.
        hold_compactions: bool,
        compactions_held: u32,
        /// [`Action::KeepAside`] is left unanswered (the compactor still copying); else it is
        /// answered [`Event::KeptAside`] at once (and kept in `other`).
        hold_keep_aside: bool,
        /// [`Action::PeerSnapshotEnd`] is answered [`Event::PeerSnapshotUnwritten`].
        fail_peer_stream: bool,
        /// [`Action::PeerSnapshotEnd`] is left unanswered (the test answers it later) and counted.
        hold_peer_end: bool,
        peer_ends_held: u32,
        /// Entries written by [`Action::StreamPeerEntry`].
        streamed: Vec<KvMsg>,
        published: Vec<KvMsg>,
        appended: Vec<KvMsg>,
        other: Vec<Action>,
        logs: Vec<String>,
    }

    impl Rig {
        fn new(cfg: ServerConfig, durable: bool) -> Self {
            let clock = ManualClock::new(1_000_000_000);
            Rig {
                core: ServerCore::new(&cfg, durable, clock.now_ns()),
                clock,
                fail_appends: false,
                fail_flush: false,
                fail_snapshot: false,
                fail_publish: false,
                skip_through: 0,
                snapshot_writes: Vec::new(),
                hold_compactions: false,
                compactions_held: 0,
                hold_keep_aside: false,
                fail_peer_stream: false,
                hold_peer_end: false,
                peer_ends_held: 0,
                streamed: Vec::new(),
                published: Vec::new(),
                appended: Vec::new(),
                other: Vec::new(),
                logs: Vec::new(),
            }
        }

        fn on(&mut self, ev: Event) {
            let out = self.actions(ev);
            self.run(out);
        }

        /// Feed `ev` now; the actions it asks for, not run yet (a test looks at them first).
        fn actions(&mut self, ev: Event) -> Vec<Action> {
            let now = self.clock.now_ns();
            let mut out = Vec::new();
            self.core.on_event(ev, now, &mut out).expect("no binary star error");
            out
        }

        fn run(&mut self, actions: Vec<Action>) {
            let now = self.clock.now_ns();
            for a in actions {
                let reply = match a {
                    Action::Publish { msg, apply_at_ns, hugz } => {
                        self.published.push(msg.clone());
                        let failed = self.fail_publish.then(|| Event::PublishFailed {
                            sequence: msg.sequence,
                            hugz,
                            error: "zmq send: ETERM".into(),
                        });
                        if let Some(at) = apply_at_ns {
                            self.core.published(msg, at);
                        }
                        failed
                    }
                    Action::SkipAppends { through } => {
                        self.skip_through = through;
                        None
                    }
                    Action::Append { token, .. } if token <= self.skip_through => None,
                    Action::Append { token, msg, .. } if self.fail_appends => {
                        let _ = msg;
                        Some(Event::LogFailed { token: Some(token), error: "disk full".into() })
                    }
                    Action::Append { msg, .. } => {
                        self.appended.push(msg);
                        None
                    }
                    Action::FlushLog if self.fail_flush => Some(Event::LogFailed { token: None, error: "EIO".into() }),
                    Action::FlushLog => Some(Event::LogFlushed),
                    Action::Compact if self.hold_compactions => {
                        self.compactions_held += 1;
                        None
                    }
                    Action::WriteSnapshot => {
                        self.snapshot_writes.push(now);
                        Some(if self.fail_snapshot {
                            Event::SnapshotFailed { error: "snapshot.tmp: No space left on device".into() }
                        } else {
                            Event::SnapshotWritten { lost: None }
                        })
                    }
                    Action::Compact => {
                        self.snapshot_writes.push(now);
                        let error = self.fail_snapshot.then(|| "snapshot.tmp: No space left on device".to_string());
                        Some(Event::CompactionDone { took_ns: 7_000_000, error })
                    }
                    Action::StreamPeerEntry { msg, .. } => {
                        self.streamed.push(msg);
                        None
                    }
                    Action::KeepAside => {
                        self.other.push(Action::KeepAside);
                        (!self.hold_keep_aside).then_some(Event::KeptAside)
                    }
                    Action::PeerSnapshotEnd { .. } if self.hold_peer_end => {
                        self.peer_ends_held += 1;
                        None
                    }
                    Action::PeerSnapshotEnd { .. } if self.fail_peer_stream => {
                        Some(Event::PeerSnapshotUnwritten { error: "snapshot.peer: No space left on device".into() })
                    }
                    Action::PeerSnapshotEnd { .. } => Some(Event::PeerSnapshotWritten),
                    Action::Log(l) => {
                        self.logs.push(l);
                        None
                    }
                    other => {
                        self.other.push(other);
                        None
                    }
                };
                if let Some(ev) = reply {
                    let mut more = Vec::new();
                    self.core.on_event(ev, now, &mut more).expect("no binary star error");
                    self.run(more);
                }
            }
        }

        /// Let `ms` pass the way a running server does: a tick every quarter heartbeat (a longer
        /// gap between steps is a pause of the process, see `BStar::observe`).
        fn tick_for(&mut self, ms: u64) {
            let step = HEARTBEAT_MS / 4;
            for _ in 0..ms.div_ceil(step) {
                self.clock.advance_ms(step);
                self.on(Event::Tick);
            }
        }

        /// An update of `key` to `body` (the client's sequence `seq`) and the log's flush: the
        /// keys published, with their sequences ([`Rig::keys_published`]).
        fn put(&mut self, key: &str, body: &str, seq: u8) -> Vec<(String, u64)> {
            self.on(Event::Update(Ok(upd(key, body, seq))));
            self.on(Event::Flush);
            self.keys_published()
        }

        /// A durable passive's log fails on a replicated update (sequence 11), and the full
        /// snapshot of the map it then writes fails too: behind, tried again after the back-off.
        /// The rig goes on failing appends and snapshots until told otherwise.
        fn behind_with_snapshots_failing(&mut self) {
            (self.fail_appends, self.fail_snapshot) = (true, true);
            let mut m = upd("/r", "v", 100);
            m.sequence = 11;
            self.on(Event::Replicated(Ok(m)));
            self.on(Event::Flush);
            self.on(Event::Tick);
        }

        /// The peer falls silent while `snapshot` (as the take-over line names it) waits to be
        /// put in place: asked by a client, this passive takes over and says what it waits for,
        /// and an update from a client is refused as not durable, counted once.
        fn take_over_before_the_snapshot_is_in_place(&mut self, snapshot: &str) {
            self.on(Event::PeerState(None));
            self.tick_for(3 * HEARTBEAT_MS);
            self.on(Event::Request { identity: b"c".to_vec(), request: Ok(Request::Snapshot { subtree: Vec::new() }) });
            assert_eq!(self.state(), "active");
            let says = format!("taking over while {snapshot} is put in place");
            assert!(self.logs.iter().any(|l| l.contains(&says)), "{says}: {:?}", self.logs);
            self.keys_published();
            assert!(self.put("/c", "1", 9).iter().all(|(k, _)| k == "HUGZ"), "refused while not durable");
            assert_eq!(self.core.refusals().count("not_durable"), 1);
        }

        fn keys_published(&mut self) -> Vec<(String, u64)> {
            std::mem::take(&mut self.published)
                .into_iter()
                .map(|m| (String::from_utf8_lossy(&m.key).into_owned(), m.sequence))
                .collect()
        }

        fn other(&mut self) -> Vec<Action> {
            std::mem::take(&mut self.other)
        }

        fn state(&self) -> &'static str {
            self.core.state_name()
        }

        /// A backup that heard an ACTIVE primary: PASSIVE.
        fn passive_backup() -> Rig {
            let mut r = Rig::new(cfg(Some(Role::Backup)), false);
            r.on(Event::PeerState(Some(State::Active)));
            assert_eq!(r.state(), "passive");
            r
        }

        /// Make a passive backup fetch and finish a snapshot with `entries` at `seq`.
        fn sync_passive(&mut self, entries: &[(&str, u64, &str, Option<u8>)], seq: u64) {
            self.on(Event::PeerLink(true));
            self.on(Event::PeerSyncCheck);
            assert_eq!(self.other(), vec![Action::RequestPeerSnapshot]);
            for (k, s, v, u) in entries {
                let mut m = KvMsg::new(*k, *s, *v);
                m.uuid = u.map(uuid);
                self.on(Event::PeerSnapshot(Ok(m)));
            }
            self.on(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, seq, ""))));
            let mut other = self.other();
            other.retain(|a| !matches!(a, Action::PeerSnapshotEnd { .. }));
            assert_eq!(other, vec![Action::EndPeerSnapshot]);
            assert!(!self.core.peer_syncing());
        }
    }

    #[test]
    fn standalone_sequences_publishes_and_applies_and_republishes_a_resend_once() {
        let mut r = Rig::new(cfg(None), false);
        assert_eq!(r.state(), "active");
        r.on(Event::Update(Ok(upd("/a", "1", 1))));
        r.on(Event::Update(Ok(upd("/b", "2", 2))));
        assert_eq!(r.keys_published(), vec![("/a".into(), 1), ("/b".into(), 2)]);
        assert_eq!(r.core.map().get(b"/a").map(|e| e.body.clone()), Some(b"1".to_vec()));
        // A client re-sends /a (it missed the KVPUB): re-published once under a new sequence.
        r.on(Event::Update(Ok(upd("/a", "1", 1))));
        r.on(Event::Update(Ok(upd("/a", "1", 1))));
        assert_eq!(r.keys_published(), vec![("/a".into(), 3)]);
        assert_eq!(r.core.counters().duplicates, 2);
        assert_eq!(r.core.map().get(b"/a").map(|e| e.sequence), Some(3));
        // A re-send of an update since overwritten is stale: dropped.
        r.on(Event::Update(Ok(upd("/b", "3", 3))));
        r.on(Event::Update(Ok(upd("/b", "2", 2))));
        assert_eq!(r.keys_published(), vec![("/b".into(), 4)]);
        // Refused: empty key, reserved key, bad TTLs (not whole seconds in digits), undecodable.
        let ttl = |t: &str, i: u8| {
            let mut m = upd("/c", "x", 9 + i);
            m.set_prop(kvmsg::TTL_PROP, t);
            m
        };
        let bad_ttls = ["soon", "1.5", " 5", "5 ", "+5"].iter().zip(0..).map(|(t, i)| ttl(t, i));
        for m in [upd("", "x", 5), upd("HUGZ", "x", 6)].into_iter().chain(bad_ttls) {
            r.on(Event::Update(Ok(m)));
        }
        r.on(Event::Update(Err(())));
        assert_eq!(r.core.counters().malformed_updates, 8);
        assert_eq!(r.core.refusals().count("bad_ttl"), 5);
        assert!(r.keys_published().is_empty());
        assert_eq!(r.core.sequence(), 4);
    }

    #[test]
    fn ttl_expiry_publishes_a_delete_and_hugz_fills_silence() {
        let mut r = Rig::new(cfg(None), false);
        let mut m = upd("/eph", "x", 1);
        m.set_prop(kvmsg::TTL_PROP, "1");
        r.on(Event::Update(Ok(m)));
        r.keys_published();
        r.clock.advance_ms(999);
        r.on(Event::Tick);
        assert!(r.keys_published().is_empty(), "not yet expired, and HUGZ waits a full interval");
        r.clock.advance_ms(2);
        r.on(Event::Tick);
        assert_eq!(r.keys_published(), vec![("/eph".into(), 2)], "the expiry delete, no HUGZ right after it");
        assert!(r.core.map().get(b"/eph").is_none());
        assert_eq!(r.core.counters().expired, 1);
        r.clock.advance_ms(1000);
        r.on(Event::Tick);
        assert_eq!(r.keys_published(), vec![("HUGZ".into(), 2)], "HUGZ carries the current sequence");
    }

    #[test]
    fn peer_snapshot_entries_in_the_absolute_ttl_form_are_kept_and_unparsable_ones_counted() {
        let mut r = Rig::passive_backup();
        let wall_ms = 1_796_000_000_000;
        r.core.set_wall_ms(wall_ms);
        r.on(Event::PeerLink(true));
        r.on(Event::PeerSyncCheck);
        assert_eq!(r.other(), vec![Action::RequestPeerSnapshot]);
        let entry = |k: &str, ttl: &str| {
            let mut m = KvMsg::new(k, 3, "v");
            m.set_prop(kvmsg::TTL_PROP, ttl);
            m
        };
        // clonesrv6 stores `ttl` as zclock_time() + ttl * 1000 and sends it so in snapshots.
        r.on(Event::PeerSnapshot(Ok(entry("/abs", &(wall_ms + 60_000).to_string()))));
        r.on(Event::PeerSnapshot(Ok(entry("/rel", "30"))));
        r.on(Event::PeerSnapshot(Ok(entry("/bad", "soon"))));
        r.on(Event::PeerSnapshot(Err(())));
        let said = std::mem::take(&mut r.logs);
        assert!(
            said.iter().any(|l| l.contains("refused (peer_snapshot_bad_ttl)") && l.contains("/bad")),
            "the first refusal is said: {said:?}"
        );
        r.on(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 5, ""))));
        assert_eq!(r.other(), vec![Action::EndPeerSnapshot]);
        let now = r.clock.now_ns();
        let left = |k: &str| r.core.map().get(k.as_bytes()).and_then(|e| e.expires_at_ns).map(|t| t - now);
        assert_eq!(left("/abs"), Some(60_000_000_000), "absolute deadline made relative");
        assert_eq!(left("/rel"), Some(30_000_000_000));
        assert!(r.core.map().get(b"/bad").is_none());
        let c = r.core.counters();
        assert_eq!((c.peer_entries_refused, c.absolute_ttls), (2, 1));
        assert_eq!(r.core.refusals().count("peer_snapshot_bad_ttl"), 1);
        assert_eq!(r.core.refusals().count("peer_snapshot_malformed"), 1);
        let status = r.core.status_text();
        assert!(
            status.contains("peer_entries_refused=2\n") && status.contains("refused_peer_snapshot_bad_ttl=1\n"),
            "{status}"
        );
    }

    #[test]
    fn a_snapshot_cut_short_is_counted_and_said_as_what_cut_it() {
        // Before: any send error was `snapshots_abandoned`, said as "did not read it while its
        // queue was full … it will ask again", for clients that had simply left (5 DEALERs
        // that sent ICANHAZ? and closed at once, against a server with room for 1M messages).
        let mut r = Rig::new(cfg(None), false);
        for _ in 0..3 {
            r.on(Event::SnapshotCut(SnapshotCut::ClientGone));
        }
        r.on(Event::SnapshotCut(SnapshotCut::QueueFull));
        r.on(Event::SnapshotCut(SnapshotCut::Failed("zmq send: Interrupted system call".into())));
        let c = r.core.counters();
        assert_eq!((c.snapshots_client_gone, c.snapshots_abandoned, c.snapshot_send_errors), (3, 1, 1));
        let said = std::mem::take(&mut r.logs);
        let gone: Vec<&String> = said.iter().filter(|l| l.contains("went away")).collect();
        assert_eq!(gone.len(), 2, "the 1st and 2nd, not the 3rd: {said:?}");
        assert!(gone.iter().all(|l| !l.contains("queue was full")), "{said:?}");
        assert!(said.iter().any(|l| l.contains("queue was full") && l.contains("snapshots_abandoned=1")), "{said:?}");
        assert!(said.iter().any(|l| l.contains("Interrupted system call (snapshot_send_errors=1)")), "{said:?}");
        let status = r.core.status_text();
        for k in ["snapshots_abandoned=1\n", "snapshots_client_gone=3\n", "snapshot_send_errors=1\n"] {
            assert!(status.contains(k), "{k} in {status}");
        }
    }

    #[test]
    fn passive_holds_updates_and_replays_the_pending_list_on_takeover() {
        let mut r = Rig::passive_backup();
        r.sync_passive(&[], 10);
        // Clients send to both servers: the passive holds them.
        r.on(Event::Update(Ok(upd("/a", "1", 1))));
        r.on(Event::Update(Ok(upd("/b", "2", 2))));
        r.on(Event::Update(Ok(upd("/c", "3", 3))));
        r.on(Event::Update(Ok(upd("/b", "2", 2)))); // a re-send: held once
        assert_eq!(r.core.pending(), 3);
        assert!(r.keys_published().is_empty(), "a passive server never publishes");
        // The active publishes /a: it leaves the pending list and is applied here.
        let mut a = upd("/a", "1", 1);
        a.sequence = 11;
        r.on(Event::Replicated(Ok(a)));
        assert_eq!(r.core.pending(), 2);
        assert_eq!(r.core.sequence(), 11);
        // A client vote while the active is alive is refused ...
        r.on(Event::Request { identity: b"c".to_vec(), request: Ok(Request::Snapshot { subtree: Vec::new() }) });
        assert_eq!(r.state(), "passive");
        assert_eq!(r.core.counters().rejected_votes, 1);
        // ... once the active has been silent for two heartbeats, it makes us take over.
        r.clock.advance_ms(2 * HEARTBEAT_MS + 1);
        r.on(Event::Tick);
        r.keys_published();
        r.other();
        r.on(Event::Request { identity: b"c".to_vec(), request: Ok(Request::Snapshot { subtree: Vec::new() }) });
        assert_eq!(r.state(), "active");
        assert_eq!(r.keys_published(), vec![("/b".into(), 12), ("/c".into(), 13)], "pending replayed in order");
        assert_eq!(r.core.pending(), 0);
        assert_eq!(r.other(), vec![Action::SendSnapshot { identity: b"c".to_vec(), subtree: Vec::new() }]);
        assert_eq!(r.core.map().len(), 3);
        // HUGZ at once so clients see the new active.
        r.on(Event::Tick);
        let p = r.keys_published();
        assert_eq!(p, vec![("HUGZ".into(), 13)]);
        assert!(r.other().contains(&Action::Heartbeat(State::Active)));
    }

    /// A primary that heard its backup: ACTIVE, with `/a` published, running for a heartbeat.
    fn active_primary() -> Rig {
        active_primary_on(false)
    }

    /// [`active_primary`], with a data directory when `durable`.
    fn active_primary_on(durable: bool) -> Rig {
        let mut r = Rig::new(cfg(Some(Role::Primary)), durable);
        r.on(Event::PeerState(Some(State::Backup)));
        assert_eq!(r.state(), "active");
        r.on(Event::Update(Ok(upd("/a", "1", 1))));
        r.tick_for(HEARTBEAT_MS);
        assert_eq!(r.keys_published()[0], ("/a".into(), 1), "then HUGZ, as after every takeover");
        assert!(r.other().contains(&Action::Heartbeat(State::Active)));
        r
    }

    /// [`active_primary_on`] paused 5 s ([`resume_after`]), its peer's PASSIVE heartbeat heard,
    /// a quarter heartbeat before its hold (two heartbeats) ends.
    fn near_its_hold_end(durable: bool) -> Rig {
        let mut r = active_primary_on(durable);
        resume_after(&mut r, 5000);
        r.on(Event::PeerState(Some(State::Passive)));
        r.tick_for(2 * HEARTBEAT_MS - HEARTBEAT_MS / 4);
        r
    }

    /// Resume `r` after a pause of `ms` (SIGSTOP): the loop's first step is the tick whose
    /// heartbeat is overdue, before libzmq has handed over what the peer sent meanwhile.
    fn resume_after(r: &mut Rig, ms: u64) {
        r.clock.advance_ms(ms);
        r.on(Event::Tick);
        let heartbeats: Vec<Action> = r.other().into_iter().filter(|a| matches!(a, Action::Heartbeat(_))).collect();
        assert!(heartbeats.is_empty(), "held: no overdue heartbeat: {heartbeats:?}");
        assert!(r.logs.iter().any(|l| l.contains(&format!("did not run for {}", human_ms(ms)))), "said: {:?}", r.logs);
        assert_eq!(r.core.counters().pauses, 1);
        assert!(r.core.status_text().contains("pauses=1\n"));
        // Held: a client's update waits in the pending list, a vote is refused, no HUGZ.
        r.on(Event::Update(Ok(upd("/b", "2", 2))));
        r.on(Event::Request { identity: b"c".to_vec(), request: Ok(Request::Snapshot { subtree: Vec::new() }) });
        r.on(Event::Flush);
        assert!(r.keys_published().is_empty(), "nothing published while held");
        assert_eq!((r.core.pending(), r.core.counters().rejected_votes), (1, 1));
        assert!(r.other().is_empty(), "no snapshot served while held");
    }

    #[test]
    fn a_paused_active_steps_down_when_the_peer_took_over_and_resyncs_from_it() {
        // Issue bstar15-3: SIGSTOP of the active for 5 s under load stopped both servers (split
        // brain): resumed, it sent its overdue ACTIVE heartbeat before reading the backup's.
        let mut r = active_primary();
        resume_after(&mut r, 5000);
        // The backup's ACTIVE heartbeat, queued while we were stopped: a step down, no error.
        r.on(Event::PeerState(Some(State::Active)));
        assert_eq!(r.state(), "passive");
        assert!(r.logs.iter().any(|l| l.contains("the peer took over while this server did not run")), "{:?}", r.logs);
        r.on(Event::Tick);
        assert!(r.other().contains(&Action::Heartbeat(State::Passive)), "the peer hears PASSIVE at once");
        r.on(Event::PeerLink(true));
        r.on(Event::PeerSyncCheck);
        assert_eq!(r.other(), vec![Action::RequestPeerSnapshot], "re-syncs from the new active");
        // The new active publishes the update held here: it leaves the pending list.
        let mut b = upd("/b", "2", 2);
        b.sequence = 3;
        r.on(Event::PeerSnapshot(Ok(b)));
        r.on(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 3, ""))));
        assert_eq!((r.core.pending(), r.core.sequence()), (0, 3));
        assert!(r.keys_published().is_empty(), "a passive server never publishes");
    }

    #[test]
    fn a_gap_spent_writing_to_the_data_directory_is_said_as_a_slow_disk_not_a_pause() {
        // Soak review 18: a 16 s stall inside a disk call on the serving thread was said as
        // `did not run for 16317 ms … (SIGSTOP, a VM pause)` and counted in `pauses`.
        let mut r = active_primary();
        // The step at this time wrote a snapshot that took 3 s (told to the core after the
        // write, its answer fed at the step's time: the clock has not moved yet).
        r.core.disk_waited(2_900_000_000);
        r.on(Event::NothingToSync);
        r.clock.advance_ms(3000);
        r.on(Event::Tick);
        let said = r.logs.iter().find(|l| l.contains("did not run for 3s,")).expect("said");
        assert!(said.contains("(2900ms of it writing to the data directory (a slow disk, not a pause"), "{said}");
        assert_eq!((r.core.counters().pauses, r.core.counters().disk_stalls), (0, 1));
        assert!(r.core.status_text().contains("pauses=0\ndisk_stalls=1\n"));
        // Held all the same: the peer heard no heartbeat for that long.
        assert!(!r.other().iter().any(|a| matches!(a, Action::Heartbeat(_))));
        assert!(!r.core.is_active());
        // Disk time from before the clock moved on does not explain a later gap: a real pause
        // (SIGSTOP) after it is said and counted as one.
        r.on(Event::PeerState(Some(State::Passive)));
        r.tick_for(3 * HEARTBEAT_MS);
        assert!(r.core.is_active());
        r.core.disk_waited(10_000_000);
        r.on(Event::Flush);
        r.clock.advance_ms(1);
        r.on(Event::Tick);
        r.logs.clear();
        r.clock.advance_ms(2000);
        r.on(Event::Tick);
        assert!(r.logs.iter().any(|l| l.contains("did not run for 2s,") && l.contains("(SIGSTOP, a VM pause)")));
        assert_eq!((r.core.counters().pauses, r.core.counters().disk_stalls), (1, 1));
    }

    #[test]
    fn one_fsync_in_flight_and_a_slow_or_failed_one_is_counted_and_said() {
        let mut r = Rig::new(cfg(None), true);
        let syncs_asked = |r: &mut Rig| r.other().iter().filter(|a| **a == Action::SyncLog).count();
        assert_eq!(r.put("/a", "1", 1), vec![("/a".into(), 1)], "acknowledged before any fsync");
        r.clock.advance_ms(1000);
        r.on(Event::Tick);
        assert_eq!(syncs_asked(&mut r), 1);
        // The sync takes 5 s on the syncer's thread: the server keeps serving, and asks for no
        // second one meanwhile; updates are acknowledged as they come.
        for i in 0..20u8 {
            r.clock.advance_ms(250);
            r.on(Event::Update(Ok(upd(&format!("/k{i}"), "v", 10 + i))));
            r.on(Event::Flush);
            r.on(Event::Tick);
        }
        assert_eq!(syncs_asked(&mut r), 0, "one in flight at a time");
        assert_eq!(r.keys_published().iter().filter(|(k, _)| k.starts_with("/k")).count(), 20);
        r.on(Event::LogSynced { took_ns: 5_000_000_000, error: None });
        let said = r.logs.iter().find(|l| l.contains("slow disk")).expect("a slow sync is said");
        assert!(said.contains("took 5s, longer than its 1s interval"), "{said}");
        let c = r.core.counters().clone();
        assert_eq!((c.syncs, c.slow_syncs, c.longest_sync_ms, c.sync_failures), (1, 1, 5000, 0));
        assert!(r.core.status_text().contains("syncs=1\nslow_syncs=1\nlongest_sync_ms=5000\nsync_failures=0\n"));
        // Overdue: the next is asked for at the next tick.
        r.on(Event::Tick);
        assert_eq!(syncs_asked(&mut r), 1);
        r.on(Event::LogSynced { took_ns: 2_000_000, error: Some("DIR/log: EIO while fsyncing".into()) });
        assert!(r.logs.iter().any(|l| l.contains("update log fsync failed (1 so far") && l.contains("EIO")));
        r.clock.advance_ms(1000);
        r.on(Event::Tick);
        assert_eq!(syncs_asked(&mut r), 1, "tried again at the next interval");
        r.on(Event::NothingToSync);
        let c = r.core.counters().clone();
        assert_eq!((c.syncs, c.slow_syncs, c.sync_failures), (1, 1, 1));
        r.clock.advance_ms(1000);
        r.on(Event::Tick);
        assert_eq!(syncs_asked(&mut r), 1);
    }

    #[test]
    fn a_paused_active_whose_peer_stayed_passive_serves_again_after_one_timeout() {
        // The backup's PASSIVE heartbeats (queued, or new): still held for the peer's timeout,
        // as an ACTIVE one may follow.
        let mut r = near_its_hold_end(false);
        assert!(r.keys_published().is_empty());
        assert!(!r.other().iter().any(|a| matches!(a, Action::Heartbeat(_))));
        r.tick_for(HEARTBEAT_MS / 4);
        assert_eq!(r.state(), "active");
        assert!(r.logs.iter().any(|l| l.contains("active again")), "{:?}", r.logs);
        // The update held meanwhile is applied and published, HUGZ at once, ACTIVE heartbeat.
        assert_eq!(r.keys_published(), vec![("/b".into(), 2), ("HUGZ".into(), 2)]);
        assert!(r.other().contains(&Action::Heartbeat(State::Active)));
    }

    #[test]
    fn a_fatal_error_keeps_the_lines_that_led_to_it_and_publishes_nothing_after_it() {
        // A paused active's hold ends (the peer did not say ACTIVE): it is active again and
        // replays the update held meanwhile; in the same step the peer's ACTIVE heartbeat comes:
        // split brain, the server stops. Before, the shell dropped every action of that step
        // unrun (the line that says why it was active too), and at its stop the durable one
        // published the replayed update, which was never logged, from its outbox.
        for durable in [false, true] {
            let mut r = near_its_hold_end(durable);
            r.logs.clear();
            r.clock.advance_ms(HEARTBEAT_MS / 4);
            let mut out = Vec::new();
            let e = r.core.on_event(Event::PeerState(Some(State::Active)), r.clock.now_ns(), &mut out);
            assert!(matches!(e, Err(BStarError::DualActive)), "durable={durable}: {e:?}");
            let said = "binary star: the peer did not say it is active after the pause: active again";
            assert_eq!(out, vec![Action::Log(said.into())], "durable={durable}: the line only");
            // The shell's stop (`Server::on_close`): the log flushed, what went unsaid said.
            r.on(Event::Flush);
            r.on(Event::Stopping);
            assert!(r.keys_published().is_empty(), "durable={durable}: nothing published after it");
            assert!(r.appended.iter().all(|m| m.key != b"/b"), "durable={durable}: nor logged");
            // The stop's line (`stopped at sequence N`) names the last sequence published, not
            // that of the replayed update dropped (2).
            assert_eq!(r.core.sequence(), 1, "durable={durable}: the sequence of /a");
        }
    }

    /// The hold ends at one heartbeat (PASSIVE: the peer did not take over) and the next, in the
    /// same batch of the shell's (no flush between: `Server::drain_peer`), is ACTIVE: split
    /// brain. What the hold's end replayed was logged by then (its appends ran at its step):
    /// published at that step too, before the error, as a server without a data dir does. Before,
    /// it waited in the outbox for a flush, the error dropped the outbox, and the stop's flush
    /// wrote it to the log: logged and never published, what a restart takes for updates the
    /// active lacks.
    #[test]
    fn what_a_hold_replayed_a_step_before_a_fatal_error_is_logged_and_published_or_neither() {
        for durable in [false, true] {
            let mut r = near_its_hold_end(durable);
            r.clock.advance_ms(HEARTBEAT_MS / 4);
            r.on(Event::PeerState(Some(State::Passive)));
            assert!(r.logs.iter().any(|l| l.contains("active again")), "durable={durable}: {:?}", r.logs);
            let mut out = Vec::new();
            let e = r.core.on_event(Event::PeerState(Some(State::Active)), r.clock.now_ns(), &mut out);
            assert!(matches!(e, Err(BStarError::DualActive)), "durable={durable}: {e:?}");
            r.run(out);
            // The shell's stop (`Server::on_close`).
            r.on(Event::Flush);
            r.on(Event::Stopping);
            let published = r.keys_published().iter().any(|(k, _)| k == "/b");
            let logged = r.appended.iter().any(|m| m.key == b"/b");
            assert!(published, "durable={durable}: published at the hold's end, before the error (logged: {logged})");
            assert_eq!(logged, durable, "durable={durable}: logged with a data dir");
        }
    }

    /// A split brain's step, its actions run as the shell does (`Server::handle`: its lines,
    /// then what follows them), then the shell's stop (`Server::on_close`: a flush, what went
    /// unsaid): the error, and the lines said of that step.
    fn split_brain_then_stop(r: &mut Rig) -> Vec<String> {
        let mut out = Vec::new();
        let e = r.core.on_event(Event::PeerState(Some(State::Active)), r.clock.now_ns(), &mut out);
        assert!(matches!(e, Err(BStarError::DualActive)), "{e:?}");
        let said = out.iter().filter_map(|a| if let Action::Log(l) = a { Some(l.clone()) } else { None }).collect();
        r.run(out);
        r.on(Event::Flush);
        r.on(Event::Stopping);
        said
    }

    /// A client's update in one step, the active peer's heartbeat (split brain) in the next of
    /// the same batch, before the batch's flush: the update came before the error, so it is
    /// logged and published (its KVPUB, the client's acknowledgement), as if the heartbeat had
    /// come in the next batch, and the stop's `stopped at sequence N` names it. Before, the
    /// error dropped the outbox and the stop's flush wrote the update to the log: logged, never
    /// published nor acknowledged.
    #[test]
    fn an_update_of_the_step_before_a_fatal_error_is_logged_and_published() {
        for durable in [false, true] {
            let mut r = active_primary_on(durable);
            r.keys_published();
            r.clock.advance_ms(1);
            r.on(Event::Update(Ok(upd("/c", "3", 3))));
            let published_at_once = !r.keys_published().is_empty();
            assert_eq!(published_at_once, !durable, "durable={durable}: with a data dir it waits for the flush");
            split_brain_then_stop(&mut r);
            let c: Vec<_> = r.keys_published().into_iter().filter(|(k, _)| k != "HUGZ").collect();
            if durable {
                assert_eq!(c, vec![("/c".into(), 2)], "durable={durable}: published, with its sequence");
            }
            assert_eq!(r.appended.iter().any(|m| m.key == b"/c"), durable, "durable={durable}: logged with a data dir");
            assert_eq!(r.core.map().get(b"/c").map(|e| e.sequence), Some(2), "durable={durable}: applied");
            assert_eq!(r.core.sequence(), 2, "durable={durable}: the stop's sequence names it");
        }
    }

    /// [`an_update_of_the_step_before_a_fatal_error_is_logged_and_published`], where the fatal
    /// step also ends a hold and replays the update held meanwhile: that one, the step's own,
    /// is dropped (neither logged nor published: the peer publishes it), the earlier step's
    /// update is published, and the sequence goes back to it.
    #[test]
    fn a_fatal_step_drops_what_it_replayed_and_keeps_what_earlier_steps_logged() {
        for durable in [false, true] {
            let mut r = active_primary_on(durable);
            r.keys_published();
            r.logs.clear();
            // No tick nor flush from here on (a tick flushes): the update waits in the outbox.
            r.clock.advance_ms(1);
            r.on(Event::Update(Ok(upd("/c", "3", 3))));
            // Paused 5 s: the next step notices it and holds; a client's update is kept pending.
            r.clock.advance_ms(5000);
            r.on(Event::Update(Ok(upd("/b", "2", 2))));
            assert!(r.logs.iter().any(|l| l.contains("did not run for 5s")), "durable={durable}: {:?}", r.logs);
            assert_eq!(r.core.pending(), 1, "durable={durable}");
            r.on(Event::PeerState(Some(State::Passive)));
            // The hold ends at the next step, whose heartbeat is the peer's ACTIVE: split brain.
            r.clock.advance_ms(2 * HEARTBEAT_MS);
            let said = split_brain_then_stop(&mut r);
            assert!(said.iter().any(|l| l.contains("active again")), "durable={durable}: {said:?}");
            let keys: Vec<_> = r.keys_published().into_iter().filter(|(k, _)| k != "HUGZ").collect();
            assert_eq!(keys, vec![("/c".into(), 2)], "durable={durable}: the earlier step's update only");
            assert!(r.appended.iter().all(|m| m.key != b"/b"), "durable={durable}: the replayed one not logged");
            assert_eq!(r.appended.iter().any(|m| m.key == b"/c"), durable, "durable={durable}");
            assert!(r.core.map().get(b"/b").is_none(), "durable={durable}: the replayed one not applied");
            assert_eq!(r.core.sequence(), 2, "durable={durable}: back to before the replayed update");
        }
    }

    /// An active server's update waits in the outbox for the batch's flush; the next step
    /// notices a pause and holds (not serving: `is_active` is false, yet it is the active, with
    /// an outbox); the batch's log flush fails, and the shell rolls the update's record back.
    /// The update must not be published at a later flush (its KVPUB would acknowledge what the
    /// disk lost). Before, a failed log write while held took the passive's branch, which keeps
    /// the outbox, and the next flush (the stop's one, or the batch's after a fatal error)
    /// published it.
    #[test]
    fn a_failed_flush_while_held_after_a_pause_publishes_nothing_it_lost() {
        let mut r = active_primary_on(true);
        r.keys_published();
        r.clock.advance_ms(1);
        r.on(Event::Update(Ok(upd("/c", "3", 3))));
        r.clock.advance_ms(5000);
        r.on(Event::Update(Ok(upd("/b", "2", 2))));
        assert_eq!(r.core.pending(), 1, "held");
        r.fail_flush = true;
        r.logs.clear();
        r.on(Event::Flush);
        assert!(r.logs.iter().any(|l| l.contains("update log write failed")), "{:?}", r.logs);
        r.fail_flush = false;
        r.on(Event::Flush);
        r.on(Event::Stopping);
        let keys: Vec<_> = r.keys_published().into_iter().filter(|(k, _)| k != "HUGZ").collect();
        assert!(keys.is_empty(), "the lost update acknowledged: {keys:?}");
        assert!(r.core.map().get(b"/c").is_none(), "the lost update applied");
        assert_eq!(r.core.sequence(), 1, "its sequence given back");
    }
    #[test]
    fn a_passive_whose_data_is_newer_than_the_actives_snapshot_says_so_and_keeps_its_files_first() {
        // Issue bstar15-2: the backup recovered 44 keys at sequence 44, synced to the active's
        // snapshot at 39, and said only `passive: in sync with 39 keys at sequence 39`.
        let now = 1_000_000_000;
        let recovered: Vec<Record> = (1..=44u64)
            .map(|i| Record { msg: KvMsg::new(format!("/k{i}"), i, "v"), expires_at_unix_ms: None })
            .collect();
        for durable in [true, false] {
            let mut r = Rig::new(cfg(Some(Role::Backup)), durable);
            r.core.recover(recovered.clone(), 44, 0, now);
            r.on(Event::PeerState(Some(State::Active)));
            r.on(Event::PeerLink(true));
            r.on(Event::PeerSyncCheck);
            assert_eq!(r.other(), vec![Action::RequestPeerSnapshot]);
            for i in 1..=39u64 {
                r.on(Event::PeerSnapshot(Ok(KvMsg::new(format!("/k{i}"), i, "v"))));
            }
            let mut out = Vec::new();
            r.core.on_event(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 39, ""))), now, &mut out).expect("ok");
            let said: Vec<&String> =
                out.iter().filter_map(|a| if let Action::Log(l) = a { Some(l) } else { None }).collect();
            assert!(
                said.iter().any(|l| l.contains("at sequence 39, behind this server's 44")
                    && l.contains("the 5 updates after it held here (sequences 40..=44)")),
                "said loudly, whatever --quiet says: {said:?}"
            );
            let end = out.iter().position(|a| matches!(a, Action::PeerSnapshotEnd { .. }));
            if durable {
                // The compactor copies the files aside before it puts the snapshot in place.
                let want = Action::PeerSnapshotEnd { sequence: 39, keep_aside: true };
                assert_eq!(end.map(|i| &out[i]), Some(&want), "{out:?}");
            } else {
                assert_eq!(end, None, "{out:?}");
                assert!(!out.contains(&Action::KeepAside), "{out:?}");
                assert!(said.iter().any(|l| l.contains("no data directory: they are gone")), "{said:?}");
            }
            assert_eq!((r.core.sequence(), r.core.map().len()), (39, 39), "the active's map is followed");
        }
        // A passive behind the active (the usual case) replaces its map without a word.
        let mut r = durable_passive();
        r.logs.clear();
        r.on(Event::Replicated(Ok(KvMsg::new(HUGZ, 12, ""))));
        r.on(Event::PeerSyncCheck);
        r.other();
        let out = r.actions(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 12, ""))));
        assert!(out.contains(&Action::PeerSnapshotEnd { sequence: 12, keep_aside: false }), "{out:?}");
        assert!(r.logs.iter().all(|l| !l.contains("behind this server's")), "{:?}", r.logs);
    }

    #[test]
    fn passive_resyncs_on_a_gap_a_hugz_ahead_or_a_silent_snapshot() {
        let mut r = Rig::passive_backup();
        r.sync_passive(&[("/x", 5, "old", Some(7))], 5);
        assert_eq!(r.core.map().len(), 1);
        // A pending update the snapshot already holds is dropped at the sync.
        r.on(Event::Update(Ok(upd("/y", "1", 8))));
        // In step: contiguous replication applies.
        let mut m = KvMsg::new("/y", 6, "1");
        m.uuid = Some(uuid(8));
        r.on(Event::Replicated(Ok(m)));
        assert_eq!((r.core.sequence(), r.core.pending()), (6, 0));
        // HUGZ at our sequence: nothing to do; ahead of us: re-sync.
        r.on(Event::Replicated(Ok(KvMsg::new(HUGZ, 6, ""))));
        r.on(Event::PeerSyncCheck);
        assert!(r.other().is_empty());
        r.on(Event::Replicated(Ok(KvMsg::new(HUGZ, 8, ""))));
        r.on(Event::PeerSyncCheck);
        assert_eq!(r.other(), vec![Action::RequestPeerSnapshot]);
        // Updates during the sync are queued and applied after it.
        r.on(Event::Replicated(Ok(KvMsg::new("/z", 9, "q"))));
        r.on(Event::PeerSnapshot(Ok(KvMsg::new("/x", 5, "old"))));
        r.on(Event::PeerSnapshot(Ok(KvMsg::new("/y", 7, "2"))));
        r.on(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 8, ""))));
        assert_eq!(r.core.sequence(), 9);
        assert_eq!(r.core.map().get(b"/y").map(|e| e.body.clone()), Some(b"2".to_vec()));
        assert!(r.core.map().get(b"/z").is_some());
        r.other();
        // A gap in the active's sequence: re-sync.
        r.on(Event::Replicated(Ok(KvMsg::new("/w", 11, "gap"))));
        assert!(r.core.map().get(b"/w").is_none());
        r.on(Event::PeerSyncCheck);
        assert_eq!(r.other(), vec![Action::RequestPeerSnapshot]);
        // The peer does not answer: the request times out and is retried.
        r.clock.advance_ns(PEER_SYNC_TIMEOUT_NS);
        r.on(Event::PeerSyncCheck);
        assert!(r.other().is_empty(), "not before the timeout");
        r.clock.advance_ms(1);
        r.on(Event::PeerSyncCheck);
        assert_eq!(r.other(), vec![Action::EndPeerSnapshot]);
        // An error, said by a quiet core too (`--quiet` silences progress only; before, it hid it).
        assert!(!r.core.verbose, "the rig's core is quiet");
        let said = "passive: behind the active, re-syncing (no_snapshot): the active peer sent no snapshot within 3s, \
                    asking again: this server is not in step";
        assert!(r.logs.iter().any(|l| l.starts_with(said)), "{:?}", r.logs);
        r.on(Event::PeerSyncCheck);
        assert_eq!(r.other(), vec![Action::RequestPeerSnapshot]);
    }

    /// An active peer that never answers the passive's snapshot request: the line follows the
    /// refusals' rule (`--help` and docs/COMMANDS.md promise it for what repeats), the first at
    /// once, then one summary per interval and what went unsaid at the stop. Before, it was said
    /// at every 3 s try: 20 lines a minute, for as long as the peer stayed silent.
    #[test]
    fn a_peer_that_sends_no_snapshot_is_said_at_once_then_summarised() {
        let mut r = Rig::passive_backup();
        r.on(Event::PeerLink(true));
        let said = |r: &mut Rig| -> Vec<String> {
            std::mem::take(&mut r.logs)
                .into_iter()
                .filter(|l| l.contains("no snapshot") || l.contains("no_snapshot"))
                .collect()
        };
        // Three tries within 10 s, none answered.
        for _ in 0..3 {
            r.on(Event::PeerSyncCheck);
            assert_eq!(r.other(), vec![Action::RequestPeerSnapshot]);
            r.clock.advance_ns(PEER_SYNC_TIMEOUT_NS + 1_000_000);
            r.on(Event::PeerSyncCheck);
            assert_eq!(r.other(), vec![Action::EndPeerSnapshot]);
        }
        assert_eq!(
            said(&mut r),
            vec![
                "passive: behind the active, re-syncing (no_snapshot): the active peer sent no snapshot within 3s, \
                 asking again: this server is not in step with it until one comes (the first; more are counted and \
                 summarised every 10s)"
            ]
        );
        r.tick_for(5_000);
        let l = said(&mut r);
        assert_eq!(l.len(), 1, "one summary: {l:?}");
        assert!(l[0].starts_with("passive: behind the active, re-syncing in the last "), "{l:?}");
        assert!(l[0].ends_with(": no_snapshot=2 (totals: no_snapshot=3)"), "{l:?}");
        r.on(Event::PeerSyncCheck);
        r.clock.advance_ns(PEER_SYNC_TIMEOUT_NS + 1_000_000);
        r.on(Event::PeerSyncCheck);
        assert_eq!(said(&mut r), Vec::<String>::new());
        r.on(Event::Stopping);
        assert_eq!(
            said(&mut r),
            vec!["passive: behind the active, re-syncing since the last line: no_snapshot=1 (totals: no_snapshot=4)"]
        );
    }

    /// A failed publish is said by the core like a refusal, by a quiet core too (`--quiet`
    /// silences progress only): the first at once, a summary within the interval, the total at
    /// the stop; counted in STATUS. Before, the shell said the 1st, 10th, 100th, … (a rule of its
    /// own, with no summary in time: the 11th to 99th of a minute went unsaid until the 100th).
    #[test]
    fn a_failed_publish_is_said_at_once_then_summarised_and_totalled_at_the_stop() {
        let mut r = Rig::new(cfg(None), false);
        assert!(!r.core.verbose, "the rig's core is quiet");
        r.fail_publish = true;
        let said = |r: &mut Rig| -> Vec<String> {
            std::mem::take(&mut r.logs).into_iter().filter(|l| l.contains("not published")).collect()
        };
        r.put("/a", "1", 1);
        assert_eq!(
            said(&mut r),
            vec![
                "standalone: update not published (send_failed): sequence 1: zmq send: ETERM; subscribers miss it \
                 until their next snapshot (STATUS publish_failures) (the first; more are counted and summarised \
                 every 10s)"
            ]
        );
        // 99 more within the interval: counted, not said.
        for i in 0..99u8 {
            r.clock.advance_ms(100);
            r.put(&format!("/b{i}"), "1", 2 + i);
            r.on(Event::Tick);
        }
        assert_eq!(said(&mut r), Vec::<String>::new());
        // The interval since the first has passed: one summary, at the next tick.
        r.clock.advance_ms(100);
        r.on(Event::Tick);
        assert_eq!(
            said(&mut r),
            vec!["standalone: update not published in the last 10s: send_failed=99 (totals: send_failed=100)"]
        );
        // One more, just after: said at the stop, with the total.
        r.put("/c", "1", 200);
        assert_eq!(said(&mut r), Vec::<String>::new());
        r.on(Event::Stopping);
        assert_eq!(
            said(&mut r),
            vec!["standalone: update not published since the last line: send_failed=1 (totals: send_failed=101)"]
        );
        // Counted: every publish tried, and those that failed; the updates are applied all the same.
        let c = r.core.counters();
        assert_eq!((c.published, c.publish_failures, r.core.map().len()), (101, 101, 101));
        assert!(r.core.status_text().contains("\npublish_failures=101\n"));
        // A stop with nothing unsaid still says the total; none failed, nothing.
        r.on(Event::Stopping);
        assert_eq!(said(&mut r), vec!["standalone: update not published in all: send_failed=101"]);
        let mut ok = Rig::new(cfg(None), false);
        ok.put("/a", "1", 1);
        ok.on(Event::Stopping);
        assert!(ok.logs.is_empty(), "{:?}", ok.logs);
    }

    /// A HUGZ the publisher could not send is said as a HUGZ (no update missed), apart from the
    /// updates, by the same rule, and counted in STATUS `hugz_failures` besides
    /// `publish_failures`. Before, it was said as `update not published`, `subscribers miss it
    /// until their next snapshot`, and STATUS could not tell it from a lost update.
    #[test]
    fn a_failed_hugz_is_said_as_a_hugz_not_an_update_and_counted_apart() {
        let mut r = Rig::new(cfg(None), false);
        r.fail_publish = true;
        r.clock.advance_ms(1000);
        r.on(Event::Tick);
        assert_eq!(r.keys_published(), vec![("HUGZ".into(), 0)]);
        assert_eq!(
            std::mem::take(&mut r.logs),
            vec![
                "standalone: HUGZ not published (send_failed): sequence 0: zmq send: ETERM; no update missed, but \
                 a client that hears nothing from this server for its silence limit fails over (STATUS \
                 hugz_failures) (the first; more are counted and summarised every 10s)"
            ]
        );
        // Two more HUGZ, counted, not said yet; then an update, said as one.
        for _ in 0..2 {
            r.clock.advance_ms(1000);
            r.on(Event::Tick);
        }
        assert_eq!(r.put("/a", "1", 1), vec![("HUGZ".into(), 0), ("HUGZ".into(), 0), ("/a".into(), 1)]);
        let said = std::mem::take(&mut r.logs);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].starts_with("standalone: update not published (send_failed): sequence 1: "), "{said:?}");
        let c = r.core.counters();
        assert_eq!((c.hugz, c.hugz_failures, c.published, c.publish_failures), (3, 3, 1, 4));
        let status = r.core.status_text();
        assert!(status.contains("\npublish_failures=4\nhugz_failures=3\n"), "{status}");
        // At the stop, each total apart.
        r.on(Event::Stopping);
        assert_eq!(
            std::mem::take(&mut r.logs),
            vec![
                "standalone: update not published in all: send_failed=1",
                "standalone: HUGZ not published since the last line: send_failed=2 (totals: send_failed=3)"
            ]
        );
    }

    /// A key `HUGZ` is refused from clients, but a peer's snapshot entry keyed so is kept (with
    /// its TTL): once active, its expiry publishes its delete, keyed `HUGZ`. A failed send of it
    /// is an update's (subscribers miss a delete), not a HUGZ's. Before, the shell told it by the
    /// key: counted in `hugz_failures` and said as `no update missed`.
    #[test]
    fn a_failed_delete_of_a_key_named_hugz_is_an_updates_failure_not_a_hugz() {
        let mut r = Rig::passive_backup();
        r.on(Event::PeerLink(true));
        r.on(Event::PeerSyncCheck);
        assert_eq!(r.other(), vec![Action::RequestPeerSnapshot]);
        let mut m = KvMsg::new(HUGZ, 3, "v");
        m.set_prop(kvmsg::TTL_PROP, "1");
        r.on(Event::PeerSnapshot(Ok(m)));
        r.on(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 5, ""))));
        assert!(r.core.map().get(HUGZ).is_some(), "kept from the peer's snapshot");
        // The peer falls silent; a client's vote makes this server take over.
        r.tick_for(3 * HEARTBEAT_MS);
        r.on(Event::Request { identity: b"c".to_vec(), request: Ok(Request::Snapshot { subtree: Vec::new() }) });
        assert_eq!(r.state(), "active");
        r.fail_publish = true;
        r.logs.clear();
        r.tick_for(1000);
        let c = r.core.counters().clone();
        assert_eq!(c.expired, 1, "the key expired");
        assert!(c.hugz >= 1, "HUGZ published meanwhile");
        assert_eq!((c.publish_failures, c.hugz_failures), (c.hugz + 1, c.hugz), "the delete is not a HUGZ");
        assert!(
            r.logs
                .iter()
                .any(|l| l.contains("update not published (send_failed)") && l.contains("subscribers miss it")),
            "{:?}",
            r.logs
        );
    }

    /// A passive that finds itself behind the active (a gap in the sequence, a HUGZ ahead) says
    /// so whatever `verbose` says, the first of each at once, then a summary per interval.
    /// Before, a quiet backup (`--quiet`) re-synced without a word.
    #[test]
    fn a_passive_behind_the_active_says_so_quiet_or_not_first_at_once_then_summarised() {
        let mut r = Rig::passive_backup();
        assert!(!r.core.verbose, "the rig's core is quiet");
        r.sync_passive(&[("/x", 5, "old", None)], 5);
        r.logs.clear();
        let resync = |r: &mut Rig, seq: u64| {
            r.on(Event::PeerSyncCheck);
            assert_eq!(r.other(), vec![Action::RequestPeerSnapshot]);
            r.on(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, seq, ""))));
            r.other();
        };
        let said = |r: &mut Rig| -> Vec<String> {
            std::mem::take(&mut r.logs).into_iter().filter(|l| l.contains("re-syncing")).collect()
        };
        r.on(Event::Replicated(Ok(KvMsg::new("/w", 7, "gap"))));
        assert_eq!(
            said(&mut r),
            vec![
                "passive: behind the active, re-syncing (gap): sequence 5 -> 7: the updates between were missed \
                 (the first; more are counted and summarised every 10s)"
            ]
        );
        resync(&mut r, 7);
        // Again, soon after: counted, not said; a HUGZ ahead is the first of its reason.
        r.on(Event::Replicated(Ok(KvMsg::new("/w", 9, "gap"))));
        assert_eq!(said(&mut r), Vec::<String>::new());
        resync(&mut r, 9);
        r.on(Event::Replicated(Ok(KvMsg::new(HUGZ, 12, ""))));
        let l = said(&mut r);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(l[0].starts_with("passive: behind the active, re-syncing (hugz_ahead): the active's HUGZ is at sequence 12, this server at 9"), "{l:?}");
        resync(&mut r, 12);
        r.on(Event::Replicated(Ok(KvMsg::new("/w", 14, "gap"))));
        r.tick_for(10_000);
        assert_eq!(
            said(&mut r),
            vec!["passive: behind the active, re-syncing in the last 10s: gap=2 (totals: gap=3 hugz_ahead=1)"]
        );
    }

    #[test]
    fn passive_waits_for_its_link_to_the_peer_before_syncing_and_drops_old_pending() {
        let mut r = Rig::passive_backup();
        r.on(Event::PeerSyncCheck);
        assert!(r.other().is_empty(), "no snapshot request before the subscription is on its way");
        r.on(Event::Update(Ok(KvMsg::new("/no-uuid", 0, "x"))));
        assert_eq!(r.core.pending(), 1);
        // Ageing applies only while the active is alive (it keeps sending heartbeats).
        for _ in 0..(PENDING_MAX_AGE_NS / 1_000_000 / HEARTBEAT_MS) {
            r.clock.advance_ms(HEARTBEAT_MS);
            r.on(Event::PeerState(Some(State::Active)));
            r.on(Event::Tick);
        }
        assert_eq!(r.core.pending(), 1, "kept until strictly older than the limit");
        r.clock.advance_ms(1);
        r.on(Event::Tick);
        assert_eq!((r.core.pending(), r.core.counters().pending_dropped), (0, 1));
    }

    #[test]
    fn durable_update_is_published_only_after_the_log_is_flushed() {
        let mut r = Rig::new(cfg(None), true);
        let mut out = Vec::new();
        let now = r.clock.now_ns();
        r.core.on_event(Event::Update(Ok(upd("/a", "1", 1))), now, &mut out).expect("ok");
        assert!(matches!(&out[..], [Action::Append { token: 1, .. }]), "{out:?}");
        assert!(r.core.map().get(b"/a").is_none(), "not applied before the flush");
        out.clear();
        r.core.on_event(Event::Flush, now, &mut out).expect("ok");
        assert_eq!(out, vec![Action::FlushLog]);
        out.clear();
        r.core.on_event(Event::LogFlushed, now, &mut out).expect("ok");
        assert!(matches!(&out[..], [Action::Publish { apply_at_ns: Some(_), .. }]), "{out:?}");
        // A TTL goes to the log as a deadline, not as the property.
        let mut m = upd("/t", "x", 2);
        m.set_prop(kvmsg::TTL_PROP, "5");
        out.clear();
        r.core.on_event(Event::Update(Ok(m)), now, &mut out).expect("ok");
        match &out[..] {
            [Action::Append { msg, expires_in_ms, .. }] => {
                assert_eq!(msg.prop(kvmsg::TTL_PROP), None);
                assert_eq!(*expires_in_ms, Some(5001));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_append_or_flush_is_neither_applied_published_nor_acknowledged() {
        let mut r = Rig::new(cfg(None), true);
        assert_eq!(r.put("/ok", "1", 1), vec![("/ok".into(), 1)]);
        // The disk fills: the append fails.
        r.fail_appends = true;
        assert!(r.put("/lost", "2", 2).is_empty());
        assert!(r.core.map().get(b"/lost").is_none());
        assert_eq!(r.core.counters().log_failures, 1);
        assert_eq!(r.core.sequence(), 1, "the failed update's sequence is reused");
        // The client's re-send is taken as new once the disk has room again.
        r.fail_appends = false;
        assert_eq!(r.put("/lost", "2", 2), vec![("/lost".into(), 2)]);
        assert_eq!(r.core.counters().duplicates, 0);
        // A failed flush loses the whole batch.
        r.fail_flush = true;
        r.on(Event::Update(Ok(upd("/f1", "x", 3))));
        r.on(Event::Update(Ok(upd("/f2", "y", 4))));
        r.on(Event::Flush);
        assert!(r.keys_published().is_empty());
        assert!(r.core.map().get(b"/f1").is_none() && r.core.map().get(b"/f2").is_none());
        assert_eq!(r.core.counters().log_failures, 2);
        r.fail_flush = false;
        assert_eq!(r.put("/f1", "x", 3).len(), 1, "the re-send is new, not a duplicate");
        assert!(r.core.status_text().contains("log_failures=2\n"));
    }

    #[test]
    fn a_failed_append_in_a_takeover_batch_loses_the_batch_and_gives_its_sequences_back() {
        // Takeover replays the pending list as one batch of appends; the second fails.
        let mut r = Rig::new(cfg(Some(Role::Backup)), true);
        r.on(Event::PeerState(Some(State::Active)));
        for (k, n) in [("/p1", 1), ("/p2", 2), ("/p3", 3)] {
            r.on(Event::Update(Ok(upd(k, "v", n))));
        }
        r.clock.advance_ms(2 * HEARTBEAT_MS + 1);
        let mut out = Vec::new();
        let now = r.clock.now_ns();
        r.core
            .on_event(
                Event::Request { identity: b"c".to_vec(), request: Ok(Request::Snapshot { subtree: vec![] }) },
                now,
                &mut out,
            )
            .expect("ok");
        let tokens: Vec<u64> = out
            .iter()
            .filter_map(|a| match a {
                Action::Append { token, .. } => Some(*token),
                _ => None,
            })
            .collect();
        assert_eq!(tokens, vec![1, 2, 3]);
        assert!(matches!(out.last(), Some(Action::SendSnapshot { .. })));
        // The shell: append 1 ok, append 2 fails (rolling back 1 too): append 3, already asked
        // for, must not be written, or /p3 would sit in the log under a sequence given back.
        let mut more = Vec::new();
        r.core.on_event(Event::LogFailed { token: Some(2), error: "ENOSPC".into() }, now, &mut more).expect("ok");
        assert_eq!(more.first(), Some(&Action::SkipAppends { through: 3 }), "{more:?}");
        assert!(
            more.iter().any(|a| matches!(a, Action::Log(l) if l.contains("3 updates not acknowledged"))),
            "{more:?}"
        );
        more.clear();
        r.core.on_event(Event::LogFlushed, now, &mut more).expect("ok");
        assert!(!more.iter().any(|a| matches!(a, Action::Publish { .. })), "nothing of the batch published: {more:?}");
        assert_eq!(r.core.counters().log_failures, 1);
        assert_eq!(r.core.sequence(), 0, "the lost batch's sequences are given back");
        // The clients' re-sends are new, and numbered on from the last published sequence.
        assert_eq!(r.put("/p3", "v", 3), vec![("/p3".into(), 1)]);
    }

    #[test]
    fn a_failed_flush_gives_its_sequences_back_so_the_published_ones_stay_contiguous() {
        let mut r = Rig::new(cfg(None), true);
        for (k, n) in [("/a", 1), ("/b", 2)] {
            r.on(Event::Update(Ok(upd(k, "v", n))));
            r.on(Event::Flush);
        }
        assert_eq!(r.keys_published(), vec![("/a".into(), 1), ("/b".into(), 2)]);
        // A full disk: batches of updates fail at the flush, again and again.
        r.fail_flush = true;
        for batch in 0..5u8 {
            for i in 0..3 {
                r.on(Event::Update(Ok(upd(&format!("/x{batch}{i}"), "v", 10 + batch * 3 + i))));
            }
            r.on(Event::Flush);
        }
        assert_eq!(r.core.counters().log_failures, 5);
        assert!(r.keys_published().is_empty());
        let status = r.core.status_text();
        assert!(status.contains("sequence=2\n") && status.contains("keys=2\n"), "{status}");
        r.fail_flush = false;
        assert_eq!(r.put("/c", "v", 99), vec![("/c".into(), 3)], "the next update follows 2 with 3");
    }

    #[test]
    fn expiry_deletes_lost_with_a_failed_flush_are_published_again_at_the_next_tick() {
        // Before: the keys left the map at once, their deletes were dropped with the failed
        // batch and never sent again: clients and the passive kept them until a re-sync.
        let mut r = Rig::new(cfg(None), true);
        for (k, n) in [("/t1", 1), ("/t2", 2)] {
            let mut m = upd(k, "x", n);
            m.set_prop(kvmsg::TTL_PROP, "1");
            r.on(Event::Update(Ok(m)));
        }
        r.on(Event::Flush);
        assert_eq!(r.keys_published(), vec![("/t1".into(), 1), ("/t2".into(), 2)]);
        r.fail_flush = true;
        r.clock.advance_ms(1001);
        r.on(Event::Tick);
        assert!(r.keys_published().is_empty(), "the batch with both deletes failed");
        assert!(r.core.map().get(b"/t1").is_none() && r.core.map().get(b"/t2").is_none());
        assert_eq!((r.core.counters().expired, r.core.counters().log_failures, r.core.sequence()), (2, 1, 2));
        assert!(
            r.logs.iter().any(|l| l.contains("2 expiry deletes to publish again at the next tick")),
            "{:?}",
            r.logs
        );
        // The disk has room again; a client sets /t2 anew before the next tick: it needs no delete.
        r.fail_flush = false;
        assert_eq!(r.put("/t2", "back", 3), vec![("/t2".into(), 3)]);
        r.appended.clear();
        r.on(Event::Tick);
        let deletes: Vec<KvMsg> = std::mem::take(&mut r.published).into_iter().filter(|m| m.key != HUGZ).collect();
        assert_eq!(deletes.len(), 1, "{deletes:?}");
        assert_eq!((&deletes[0].key[..], deletes[0].sequence, deletes[0].body.is_empty()), (&b"/t1"[..], 4, true));
        assert_eq!(r.appended, deletes, "logged before it is published");
        assert_eq!(r.core.counters().expired, 2, "counted once, when the key expired");
        assert_eq!(r.core.map().get(b"/t2").map(|e| e.body.clone()), Some(b"back".to_vec()));
        r.on(Event::Tick);
        assert!(r.published.iter().all(|m| m.key == HUGZ), "sent once: {:?}", r.published);
    }

    #[test]
    fn a_republish_lost_with_a_failed_flush_keeps_the_entry_sequence_and_answers_the_next_resend() {
        // Before: the entry took the re-publish's sequence before the flush (then given back and
        // taken by another key's update), and the UUID stayed marked re-published, so the
        // client's next re-send was dropped without a word.
        let mut r = Rig::new(cfg(None), true);
        assert_eq!(r.put("/a", "1", 1), vec![("/a".into(), 1)]);
        r.fail_flush = true;
        // The client missed its KVPUB: it re-sends.
        assert!(r.put("/a", "1", 1).is_empty());
        assert!(r.logs.iter().any(|l| l.contains("1 re-publishes not sent")), "{:?}", r.logs);
        assert_eq!(r.core.map().get(b"/a").map(|e| e.sequence), Some(1), "not published: the old sequence");
        r.fail_flush = false;
        assert_eq!(r.put("/b", "2", 2), vec![("/b".into(), 2)]);
        assert_eq!(r.core.map().get(b"/a").map(|e| e.sequence), Some(1), "no two keys at sequence 2");
        // The client re-sends again: answered this time.
        assert_eq!(r.put("/a", "1", 1), vec![("/a".into(), 3)]);
        assert_eq!(r.core.map().get(b"/a").map(|e| e.sequence), Some(3));
        assert_eq!(r.core.counters().duplicates, 2);
    }

    /// A passive backup (durable) in step with the active at sequence 10.
    fn durable_passive() -> Rig {
        let mut r = Rig::new(cfg(Some(Role::Backup)), true);
        r.on(Event::PeerState(Some(State::Active)));
        r.sync_passive(&[("/old", 10, "v", Some(200))], 10);
        assert_eq!(r.snapshot_writes.len(), 1, "a re-synced passive writes its snapshot");
        r.snapshot_writes.clear();
        r
    }

    /// A durable backup, passive, its sync started: the peer's snapshot request is open.
    fn durable_passive_syncing() -> Rig {
        let mut r = Rig::new(cfg(Some(Role::Backup)), true);
        r.on(Event::PeerState(Some(State::Active)));
        r.on(Event::PeerLink(true));
        r.on(Event::PeerSyncCheck);
        assert_eq!(r.other(), vec![Action::RequestPeerSnapshot]);
        r
    }

    #[test]
    fn a_resync_writes_its_snapshot_as_it_arrives_and_puts_it_in_place_off_the_serving_thread() {
        // Before: the KTHXBAI asked for a full snapshot of the map (Action::WriteSnapshot), written
        // on the serving thread: about 0.3-0.5 s at 1M keys with no heartbeat, HUGZ or publish.
        let mut r = durable_passive_syncing();
        r.hold_compactions = true;
        let mut ttl = KvMsg::new("/t", 4, "v");
        ttl.set_prop(kvmsg::TTL_PROP, "30");
        for m in [KvMsg::new("/a", 2, "x"), KvMsg::new("/b", 3, "y"), ttl] {
            r.on(Event::PeerSnapshot(Ok(m)));
        }
        let streamed: Vec<_> = r.streamed.iter().map(|m| (m.key.clone(), m.prop(kvmsg::TTL_PROP).is_none())).collect();
        assert_eq!(streamed, vec![(b"/a".to_vec(), true), (b"/b".to_vec(), true), (b"/t".to_vec(), true)]);
        // A replicated update while the snapshot arrives is queued, then applied after it.
        let mut q = KvMsg::new("/q", 5, "z");
        q.uuid = Some(uuid(5));
        r.on(Event::Replicated(Ok(q)));
        let out = r.actions(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 4, ""))));
        let end = out.iter().position(|a| *a == Action::PeerSnapshotEnd { sequence: 4, keep_aside: false });
        let append = out.iter().position(|a| matches!(a, Action::Append { .. }));
        assert!(end.is_some() && end < append, "the log restarts before the queued update's append: {out:?}");
        assert!(!out.contains(&Action::WriteSnapshot), "no map written on the serving thread: {out:?}");
        r.run(out);
        assert!(r.snapshot_writes.is_empty());
        assert_eq!(r.compactions_held, 1, "put in place by the compactor");
        assert_eq!(r.appended.iter().map(|m| m.sequence).collect::<Vec<_>>(), vec![5]);
        assert_eq!(r.core.durable(), Some(false), "the data dir alone still holds the files before the re-sync");
        assert_eq!(r.core.not_durable(), Some(NotDurable::ResyncNotInPlace));
        assert!(r.core.status_text().contains("durable=no\ndurable_why=resync_not_in_place\n"));
        // Taking over meanwhile: nothing is acknowledged until the snapshot is in place.
        r.take_over_before_the_snapshot_is_in_place("the re-sync's snapshot");
        assert!(r.logs.iter().any(|l| l.contains("until its snapshot is put in place")), "{:?}", r.logs);
        // A large log meanwhile asks for nothing more: one job in flight.
        r.on(Event::LogLarge);
        assert_eq!(r.compactions_held, 1);
        // In place: durable, and the re-sent update is applied.
        r.on(Event::CompactionDone { took_ns: 12_000_000, error: None });
        assert_eq!(r.core.durable(), Some(true));
        assert_eq!(r.keys_published().iter().filter(|(k, _)| k == "/c").count(), 0, "refused, not held");
        assert_eq!(r.put("/c", "1", 9), vec![("/c".into(), 6)]);
        let c = r.core.counters();
        assert_eq!((c.compactions, c.last_compaction_ms), (1, 12));
        // The large log then gets its compaction.
        assert_eq!(r.compactions_held, 2);
    }

    #[test]
    fn a_second_resync_before_the_first_is_in_place_writes_the_map_after_it() {
        let mut r = durable_passive_syncing();
        r.hold_compactions = true;
        r.on(Event::PeerSnapshot(Ok(KvMsg::new("/a", 2, "x"))));
        r.on(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 2, ""))));
        assert_eq!(r.compactions_held, 1, "the first re-sync's switch in flight");
        // A gap: the passive re-syncs while that switch runs (its file is in use).
        r.on(Event::Replicated(Ok(KvMsg::new("/g", 9, "gap"))));
        r.on(Event::PeerSyncCheck);
        r.other();
        r.on(Event::PeerSnapshot(Ok(KvMsg::new("/a", 8, "y"))));
        let out = r.actions(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 8, ""))));
        assert!(!out.iter().any(|a| matches!(a, Action::PeerSnapshotEnd { .. })), "{out:?}");
        r.run(out);
        assert_eq!(r.core.durable(), Some(false));
        assert!(r.snapshot_writes.is_empty(), "not before the first switch is answered");
        // The first switch lands: then the map is written whole.
        r.on(Event::CompactionDone { took_ns: 1, error: None });
        assert_eq!(r.snapshot_writes.len(), 1);
        // Written off the serving thread, it is put in place by the compactor, as a re-sync's.
        assert_eq!(r.core.durable(), Some(false), "not before it is in place");
        r.on(Event::CompactionDone { took_ns: 1, error: None });
        assert_eq!(r.core.durable(), Some(true));
    }

    /// A durable backup that recovered `/k1`..`/k8` at 8, passive, a compaction in flight, its
    /// sync under way with the active's first entry (`/k1`) in.
    fn passive_ahead_syncing_while_compacting() -> Rig {
        let now = 1_000_000_000;
        let recovered: Vec<Record> = (1..=8u64)
            .map(|i| Record { msg: KvMsg::new(format!("/k{i}"), i, "v"), expires_at_unix_ms: None })
            .collect();
        let mut r = Rig::new(cfg(Some(Role::Backup)), true);
        r.core.recover(recovered, 8, 0, now);
        r.on(Event::PeerState(Some(State::Active)));
        r.hold_compactions = true;
        r.on(Event::LogLarge);
        assert_eq!(r.compactions_held, 1, "a compaction in flight");
        r.on(Event::PeerLink(true));
        r.on(Event::PeerSyncCheck);
        r.other();
        r.on(Event::PeerSnapshot(Ok(KvMsg::new("/k1", 1, "v"))));
        r
    }

    #[test]
    fn a_resync_whose_file_failed_writes_the_map_keeping_its_files_aside_only_between_compactions() {
        // Issue (clone23-3): the copies aside were made on the serving thread while the compactor
        // could be removing `log.prev`: a copy that failed, or one that missed the segment. And
        // (clone25-2) they were still made on the serving thread (fsynced copies as large as the
        // files): now asked of the compactor, the map written once it answers.
        let mut r = passive_ahead_syncing_while_compacting();
        r.fail_peer_stream = true;
        r.hold_keep_aside = true;
        r.on(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 5, ""))));
        assert!(
            r.logs.iter().any(|l| l.contains("could not be written to the data directory as it arrived")),
            "{:?}",
            r.logs
        );
        assert_eq!(r.core.durable(), Some(false));
        let other = r.other();
        assert!(!other.contains(&Action::KeepAside), "not while the compaction runs: {other:?}");
        assert!(r.snapshot_writes.is_empty(), "the map waits for the compaction");
        // The compaction is answered: the files are kept aside, then the map written.
        let out = r.actions(Event::CompactionDone { took_ns: 1, error: None });
        assert!(out.contains(&Action::KeepAside), "{out:?}");
        assert!(!out.contains(&Action::WriteSnapshot), "the map waits for the copies: {out:?}");
        r.run(out);
        assert!(r.snapshot_writes.is_empty(), "not before the compactor answers");
        assert_eq!(r.core.durable(), Some(false));
        // Nothing else runs on the compactor meanwhile (a compaction would race the copies).
        r.on(Event::LogLarge);
        assert!(r.snapshot_writes.is_empty() && r.compactions_held == 1, "{:?}", r.snapshot_writes);
        // A re-sync that ends meanwhile moves no log under the copies: its map is written whole
        // after them.
        r.on(Event::Replicated(Ok(KvMsg::new(HUGZ, 9, ""))));
        r.on(Event::PeerSyncCheck);
        assert!(r.other().contains(&Action::RequestPeerSnapshot));
        r.on(Event::PeerSnapshot(Ok(KvMsg::new("/k1", 1, "v"))));
        let out = r.actions(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 9, ""))));
        assert!(!out.iter().any(|a| matches!(a, Action::PeerSnapshotEnd { .. })), "{out:?}");
        r.run(out);
        assert!(r.snapshot_writes.is_empty());
        // The copies are answered: then the map is written, once.
        r.on(Event::KeptAside);
        assert_eq!(r.snapshot_writes.len(), 1);
        // Written off the serving thread, it is put in place by the compactor, as a re-sync's.
        assert_eq!(r.core.durable(), Some(false), "not before it is in place");
        r.on(Event::CompactionDone { took_ns: 1, error: None });
        assert_eq!(r.core.durable(), Some(true));
        r.other();
        // Kept once: a later full snapshot keeps nothing aside.
        r.on(Event::PeerSnapshotUnwritten { error: "again".into() });
        assert!(!r.other().contains(&Action::KeepAside));
    }

    #[test]
    fn a_resync_whose_file_failed_appends_its_queued_updates_to_no_log_before_it() {
        // Before: the updates queued while the active's snapshot arrived were appended to the
        // log of the files before the re-sync (no fresh log followed the unwritten file): until
        // the full snapshot was written (a compaction in flight, a full disk), a start read the
        // old files with the active's later updates over them, a state neither side ever held.
        let mut r = passive_ahead_syncing_while_compacting();
        let mut q = KvMsg::new("/q", 6, "queued");
        q.uuid = Some(uuid(6));
        r.on(Event::Replicated(Ok(q)));
        r.fail_peer_stream = true;
        r.on(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, 5, ""))));
        assert_eq!(r.core.sequence(), 6, "the queued update is applied");
        assert!(r.appended.is_empty(), "not appended after the files before the re-sync: {:?}", r.appended);
        // The compaction lands: the map, the queued update in it, is written whole.
        r.on(Event::CompactionDone { took_ns: 1, error: None });
        assert_eq!(r.snapshot_writes.len(), 1);
        // Written off the serving thread, it is put in place by the compactor, as a re-sync's.
        assert_eq!(r.core.durable(), Some(false), "not before it is in place");
        r.on(Event::CompactionDone { took_ns: 1, error: None });
        assert_eq!(r.core.durable(), Some(true));
        // What follows is appended again.
        r.on(Event::Replicated(Ok(KvMsg::new("/r", 7, "later"))));
        r.on(Event::Tick);
        assert_eq!(r.appended.iter().map(|m| m.sequence).collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn compactions_are_counted_in_status_with_the_last_length_and_error() {
        let mut r = Rig::new(cfg(None), true);
        assert!(r
            .core
            .status_text()
            .contains("compactions=0\ncompaction_failures=0\nlast_compaction_ms=0\nlast_compaction_error=\n"));
        r.fail_snapshot = true;
        r.on(Event::LogLarge);
        let st = r.core.status_text();
        assert!(st.contains("compactions=0\ncompaction_failures=1\nlast_compaction_ms=7\n"), "{st}");
        assert!(st.contains("last_compaction_error=snapshot.tmp: No space left on device\n"), "{st}");
        r.fail_snapshot = false;
        r.clock.advance_ms(1_000);
        r.on(Event::Tick); // the retry after the back-off
        let st = r.core.status_text();
        assert!(st.contains("compactions=1\ncompaction_failures=1\n"), "{st}");
        assert!(st.contains("last_compaction_error=snapshot.tmp"), "the last error stays said: {st}");
        // An error of several lines stays one STATUS line.
        r.on(Event::CompactionDone { took_ns: 0, error: Some("a\nb".into()) });
        assert!(r.core.status_text().contains("last_compaction_error=a b\n"));
    }

    #[test]
    fn while_the_maps_snapshot_is_put_in_place_a_refused_update_says_so_not_a_resync() {
        // Before: the refusal (and the take-over line) said "the files before the last re-sync"
        // when the snapshot waiting to be put in place was the map's, written for a disk behind.
        let mut r = durable_passive();
        assert_eq!((r.core.not_durable(), r.core.durable()), (None, Some(true)));
        assert!(r.core.status_text().contains("durable=yes\ndurable_why=\n"));
        // The passive's log fails: behind until a full snapshot of the map is written.
        r.behind_with_snapshots_failing();
        assert_eq!(r.snapshot_writes.len(), 1, "the full snapshot tried, and failed");
        assert_eq!(r.core.not_durable(), Some(NotDurable::Behind));
        assert!(r.core.status_text().contains("durable=no\ndurable_why=behind\n"));
        // The map's snapshot is written after the back-off; putting it in place is held.
        (r.fail_appends, r.fail_snapshot, r.hold_compactions) = (false, false, true);
        r.tick_for(1500);
        assert_eq!((r.snapshot_writes.len(), r.compactions_held), (2, 1), "written, then put in place");
        assert_eq!(r.core.durable(), Some(false), "not in place yet");
        assert_eq!(r.core.not_durable(), Some(NotDurable::MapSnapshotNotInPlace));
        let st = r.core.status_text();
        assert!(st.contains("durable=no\ndurable_why=map_snapshot_not_in_place\n"), "{st}");
        // Taking over meanwhile: it says which snapshot it waits for, and a refused update too.
        r.logs.clear();
        r.take_over_before_the_snapshot_is_in_place("the snapshot of the map");
        let refused: Vec<_> = r.logs.iter().filter(|l| l.contains("refused (not_durable)")).collect();
        assert_eq!(refused.len(), 1, "{:?}", r.logs);
        assert!(refused[0].contains(NotDurable::MapSnapshotNotInPlace.words()), "{refused:?}");
        assert!(!refused[0].contains("re-sync"), "{refused:?}");
        // In place: durable, the reason gone, the re-sent update applied.
        r.hold_compactions = false;
        r.on(Event::CompactionDone { took_ns: 1_000_000, error: None });
        assert_eq!((r.core.not_durable(), r.core.durable()), (None, Some(true)));
        assert!(r.core.status_text().contains("durable=yes\ndurable_why=\n"));
        assert_eq!(r.put("/c", "1", 9).into_iter().filter(|(k, _)| k == "/c").count(), 1);
    }

    /// A passive re-syncs: the active's HUGZ is ahead of it, it fetches the snapshot, and the
    /// snapshot ends at `seq` (its end answered by the rig, or held).
    fn resync_to(r: &mut Rig, seq: u64) {
        r.on(Event::Replicated(Ok(KvMsg::new(HUGZ, seq, ""))));
        r.on(Event::PeerSyncCheck);
        assert!(r.other().contains(&Action::RequestPeerSnapshot));
        r.on(Event::PeerSnapshot(Ok(KvMsg::new("/old", 10, "v"))));
        r.on(Event::PeerSnapshot(Ok(KvMsg::new(KTHXBAI, seq, ""))));
        assert_eq!(r.core.sequence(), seq);
    }

    #[test]
    fn which_snapshot_waits_is_the_last_ones_even_when_a_resyncs_end_is_answered_late() {
        // Before: two flags (a snapshot waits; it is the map's). A late answer to a re-sync's end
        // (after the map's snapshot was written) cleared the wait but left the map's mark, so the
        // next re-sync's wait was said as the map's (STATUS durable_why, a refused update, the
        // take-over line). Now one field says which snapshot waits; a late answer cannot split it.
        let mut r = durable_passive();
        // The passive's log fails and its full snapshot fails too: behind, retried after 1 s.
        r.behind_with_snapshots_failing();
        assert_eq!(r.core.not_durable(), Some(NotDurable::Behind));
        // A re-sync ends; the shell does not answer its end at once.
        (r.fail_appends, r.fail_snapshot, r.hold_peer_end, r.hold_compactions) = (false, false, true, true);
        resync_to(&mut r, 20);
        assert_eq!(r.peer_ends_held, 1);
        assert_eq!(r.core.not_durable(), Some(NotDurable::ResyncNotInPlace));
        // Meanwhile the re-sync's snapshot is put in place, then the map's written (still wanted).
        r.tick_for(1500);
        assert_eq!(r.compactions_held, 1);
        r.on(Event::CompactionDone { took_ns: 1, error: None });
        assert_eq!((r.compactions_held, r.snapshot_writes.len()), (2, 2), "the map's written, held in place");
        assert_eq!(r.core.not_durable(), Some(NotDurable::MapSnapshotNotInPlace));
        // The re-sync's end is answered now, late: its file was not written. Behind again.
        r.on(Event::PeerSnapshotUnwritten { error: "snapshot.peer: No space left on device".into() });
        assert_eq!(r.core.not_durable(), Some(NotDurable::Behind));
        // Putting the map's snapshot in place fails; before the retry, another re-sync ends.
        r.on(Event::CompactionDone { took_ns: 1, error: Some("rename: EIO".into()) });
        r.hold_peer_end = false;
        resync_to(&mut r, 30);
        assert_eq!(r.core.not_durable(), Some(NotDurable::ResyncNotInPlace), "the re-sync's snapshot waits");
        let st = r.core.status_text();
        assert!(st.contains("durable=no\ndurable_why=resync_not_in_place\n"), "{st}");
        // Its snapshot in place: durable.
        r.hold_compactions = false;
        r.tick_for(1500);
        assert_eq!((r.core.not_durable(), r.core.durable()), (None, Some(true)));
    }

    #[test]
    fn a_snapshot_put_in_place_after_its_wait_ended_says_no_durable_yes_while_not_durable() {
        // The map's snapshot is being put in place when a late answer to a re-sync's end says its
        // file was not written (behind again). Before, the compactor's answer then said "the
        // re-sync's snapshot is in place (durable=yes)": the wrong snapshot, and not durable.
        let mut r = durable_passive();
        r.behind_with_snapshots_failing();
        (r.fail_appends, r.fail_snapshot, r.hold_peer_end, r.hold_compactions) = (false, false, true, true);
        resync_to(&mut r, 20);
        r.tick_for(1500);
        r.on(Event::CompactionDone { took_ns: 1, error: None });
        assert_eq!(r.core.not_durable(), Some(NotDurable::MapSnapshotNotInPlace));
        r.on(Event::PeerSnapshotUnwritten { error: "snapshot.peer: No space left on device".into() });
        assert_eq!(r.core.not_durable(), Some(NotDurable::Behind));
        (r.core.verbose, r.logs) = (true, Vec::new());
        r.on(Event::CompactionDone { took_ns: 1, error: None });
        assert_ne!(r.core.durable(), Some(true), "a full snapshot of the map is still to be put in place");
        assert!(!r.logs.iter().any(|l| l.contains("durable=yes")), "{:?}", r.logs);
    }

    #[test]
    fn a_passive_whose_log_fails_is_not_durable_until_a_snapshot_and_takes_over_snapshot_first() {
        let mut r = durable_passive();
        // The passive's disk fills: replicated updates (acknowledged by the active) are applied
        // to memory all the same, and the disk copy is known to be behind.
        r.fail_appends = true;
        r.fail_snapshot = true;
        for i in 0..3u8 {
            let mut m = upd(&format!("/r{i}"), "v", 100 + i);
            m.sequence = 11 + u64::from(i);
            r.on(Event::Replicated(Ok(m)));
            r.on(Event::Flush);
        }
        assert_eq!((r.core.map().len(), r.core.sequence()), (4, 13));
        assert_eq!(r.core.counters().log_failures, 1, "behind: no more appends after the first failure");
        assert_eq!(r.appended.len(), 0);
        let said = std::mem::take(&mut r.logs);
        assert!(said.iter().all(|l| !l.contains("not acknowledged")), "the active acknowledged them: {said:?}");
        assert!(said.iter().any(|l| l.contains("durable=no")), "{said:?}");
        assert_eq!(r.core.durable(), Some(false));
        assert!(r.core.status_text().contains("durable=no\n"));
        // It tries to make its disk whole with a full snapshot, with back-off.
        r.on(Event::Tick);
        assert_eq!(r.snapshot_writes.len(), 1);
        assert_eq!(r.core.counters().snapshot_failures, 1);
        r.clock.advance_ms(999);
        r.on(Event::Tick);
        assert_eq!(r.snapshot_writes.len(), 1, "not before the back-off");
        // Clients send to both servers; then the active dies and a client vote makes us active.
        r.on(Event::Update(Ok(upd("/p", "1", 1))));
        r.clock.advance_ms(2 * HEARTBEAT_MS + 1);
        r.on(Event::Tick);
        r.on(Event::Request { identity: b"c".to_vec(), request: Ok(Request::Snapshot { subtree: Vec::new() }) });
        assert_eq!(r.state(), "active");
        assert_eq!(r.snapshot_writes.len(), 2, "taking over writes the snapshot first");
        // The snapshot still fails: no client update is applied or acknowledged, and it says so.
        assert!(r.put("/n", "2", 2).iter().all(|(k, _)| k == "HUGZ"), "nothing acknowledged while not durable");
        assert_eq!((r.core.pending(), r.core.sequence()), (1, 13), "the pending update is held");
        assert_eq!(r.core.refusals().count("not_durable"), 1);
        assert!(r.logs.iter().any(|l| l.contains("refused (not_durable)")), "{:?}", r.logs);
        // The disk has room again: the next try writes the snapshot, then the pending update
        // is applied, and client updates are taken again.
        r.fail_snapshot = false;
        r.fail_appends = false;
        r.tick_for(2000);
        assert_eq!(r.core.durable(), Some(true));
        let updates = |r: &mut Rig| r.keys_published().into_iter().filter(|(k, _)| k != "HUGZ").collect::<Vec<_>>();
        assert_eq!(updates(&mut r), vec![("/p".into(), 14)]);
        r.on(Event::Update(Ok(upd("/n", "2", 2))));
        r.on(Event::Flush);
        assert_eq!(updates(&mut r), vec![("/n".into(), 15)]);
        assert_eq!(r.appended.len(), 2, "appends again once whole");
    }

    #[test]
    fn a_compaction_runs_one_at_a_time_and_a_snapshot_of_the_map_waits_for_it() {
        let mut r = durable_passive();
        r.hold_compactions = true;
        // The log is large: a compaction from the files, not a write of the map.
        r.on(Event::LogLarge);
        assert_eq!((r.compactions_held, r.snapshot_writes.len()), (1, 0));
        // The shell says the log is large at every step: one compaction in flight at a time.
        for _ in 0..10 {
            r.on(Event::LogLarge);
            r.tick_for(HEARTBEAT_MS);
        }
        assert_eq!(r.compactions_held, 1, "one in flight");
        // The passive's log fails meanwhile: only a snapshot of the map makes its disk whole,
        // and none is written while the compaction writes the snapshot file.
        r.fail_appends = true;
        let mut m = upd("/r", "v", 100);
        m.sequence = 11;
        r.on(Event::Replicated(Ok(m)));
        r.on(Event::Flush);
        r.fail_appends = false;
        r.tick_for(2 * HEARTBEAT_MS);
        assert_eq!((r.core.durable(), r.snapshot_writes.len()), (Some(false), 0), "it waits for the compaction");
        // The compaction is done: it does not make the disk whole; the map's snapshot follows.
        r.on(Event::CompactionDone { took_ns: 1, error: None });
        assert_eq!(r.snapshot_writes.len(), 1);
        // Written (off the serving thread), it is put in place by the compactor, as a re-sync's.
        assert_eq!(r.compactions_held, 2, "the switch");
        assert_eq!(r.core.durable(), Some(false), "not before it is in place");
        r.on(Event::CompactionDone { took_ns: 1, error: None });
        assert_eq!(r.core.durable(), Some(true));
        assert!(r.logs.iter().any(|l| l.contains("data directory whole again")), "{:?}", r.logs);
        // A failed compaction is counted, backed off and tried again (as a compaction).
        r.on(Event::LogLarge);
        assert_eq!(r.compactions_held, 3);
        r.on(Event::SnapshotFailed { error: "DIR/snapshot.tmp: No space left on device".into() });
        assert_eq!(r.core.counters().snapshot_failures, 1);
        r.on(Event::Tick);
        assert_eq!(r.compactions_held, 3, "not before the back-off");
        r.tick_for(1000 + HEARTBEAT_MS);
        assert_eq!((r.compactions_held, r.snapshot_writes.len()), (4, 1));
    }

    #[test]
    fn a_failing_snapshot_write_backs_off_to_a_bound_and_is_said_like_a_refusal() {
        let mut r = Rig::new(cfg(None), true);
        r.on(Event::Update(Ok(upd("/a", "1", 1))));
        r.on(Event::Flush);
        r.fail_snapshot = true;
        // The shell says the log is large at every step (10 per second) for ten minutes.
        for _ in 0..6000 {
            r.on(Event::LogLarge);
            r.on(Event::Tick);
            r.clock.advance_ms(100);
        }
        let tries = &r.snapshot_writes;
        let gaps: Vec<u64> = tries.windows(2).map(|w| (w[1] - w[0]) / 1_000_000_000).collect();
        // 1, 2, 4, ... 32 s, then at most 60 s: 6 doublings and 60 s steps over 10 minutes.
        assert_eq!(&gaps[..6], &[1, 2, 4, 8, 16, 32], "{gaps:?}");
        assert!(gaps[6..].iter().all(|&g| g == 60), "{gaps:?}");
        assert!(tries.len() < 20, "{} tries in 10 minutes", tries.len());
        assert_eq!(r.core.counters().snapshot_failures, tries.len() as u64);
        assert!(r.core.status_text().contains(&format!("snapshot_failures={}\n", tries.len())));
        // Said: the first at once, then summaries (at most one per 10 s), not one line per try.
        let said: Vec<&String> = r.logs.iter().filter(|l| l.contains("snapshot not written")).collect();
        assert!(said[0].contains("(write_failed): snapshot.tmp: No space left on device"), "{said:?}");
        assert!(said.len() <= tries.len() && said.len() > 1, "{said:?}");
        // Room again: the next try succeeds and the back-off starts over.
        r.fail_snapshot = false;
        r.clock.advance_ms(60_000);
        r.on(Event::Tick);
        let n = r.snapshot_writes.len();
        r.on(Event::LogLarge);
        assert_eq!(r.snapshot_writes.len(), n + 1, "no back-off after a success");
    }

    #[test]
    fn published_counts_updates_and_expiry_deletes_and_hugz_apart() {
        let mut r = Rig::new(cfg(None), false);
        r.on(Event::Update(Ok(upd("/a", "1", 1))));
        for _ in 0..5 {
            r.clock.advance_ms(1000);
            r.on(Event::Tick);
        }
        assert_eq!(r.keys_published().iter().filter(|(k, _)| k == "HUGZ").count(), 5);
        let c = r.core.counters();
        assert_eq!((c.published, c.hugz), (1, 5));
        let status = r.core.status_text();
        assert!(status.contains("published=1\nhugz=5\n"), "{status}");
    }

    #[test]
    fn status_counts_requests_and_heartbeats() {
        let mut r = Rig::new(cfg(Some(Role::Primary)), false);
        r.on(Event::PeerState(None));
        r.on(Event::Request { identity: b"x".to_vec(), request: Err(()) });
        r.on(Event::Request { identity: b"x".to_vec(), request: Ok(Request::Status) });
        match &r.other()[..] {
            [Action::Reply { identity, text }] => {
                assert_eq!(identity, b"x");
                assert!(text.starts_with("state=primary\nrole=primary\n"), "{text}");
                assert!(text.contains("malformed_requests=1\n") && text.contains("malformed_heartbeats=1\n"));
            }
            other => panic!("{other:?}"),
        }
        // Two primaries: fatal.
        let mut out = Vec::new();
        assert!(r.core.on_event(Event::PeerState(Some(State::Primary)), r.clock.now_ns(), &mut out).is_err());
    }

    #[test]
    fn recovery_treats_an_expired_record_as_a_delete() {
        let rec = |key: &str, seq, body: &str, expires_at_unix_ms| Record {
            msg: KvMsg::new(key, seq, body),
            expires_at_unix_ms,
        };
        let mut core = ServerCore::new(&cfg(None), true, 0);
        let wall_ms = 1_000_000;
        let records = vec![
            rec("/a", 1, "v1", None),                    // A=v1
            rec("/a", 2, "v2", Some(wall_ms - 10_000)),  // then A=v2 ttl=10, expired while down
            rec("/b", 3, "", Some(wall_ms - 5)),         // a delete carrying a past deadline
            rec("/c", 4, "live", Some(wall_ms + 2_000)), // still 2 s to live
        ];
        core.recover(records, 4, wall_ms, 7);
        let map = core.map();
        assert!(map.get(b"/a").is_none(), "the expired v2 must not bring v1 back");
        assert!(map.get(b"/b").is_none());
        assert_eq!(map.get(b"/c").and_then(|e| e.expires_at_ns), Some(7 + 2_000_000_000));
        assert_eq!(map.len(), 1);
        assert_eq!(core.sequence(), 4);
    }

    #[test]
    fn limits_that_overflow_a_log_record_are_refused() {
        assert!(ServerConfig::default().check().is_ok());
        let cfg = ServerConfig { max_value_bytes: persist::MAX_RECORD_BYTES, ..ServerConfig::default() };
        let err = cfg.check().expect_err("a value as large as a record cannot fit with its key");
        assert!(err.contains("--max-value-bytes"), "{err}");
        let cfg = ServerConfig { max_key_bytes: usize::MAX, ..ServerConfig::default() };
        assert!(cfg.check().expect_err("overflow").contains("--max-key-bytes"));
        let room = persist::MAX_RECORD_BYTES - MAX_PROPS_BYTES - persist::RECORD_FIXED_BYTES;
        let cfg = ServerConfig { max_key_bytes: 1024, max_value_bytes: room - 1024, ..ServerConfig::default() };
        assert!(cfg.check().is_ok(), "the largest limits that fit are accepted");
    }

    #[test]
    fn intervals_out_of_range_are_refused_naming_the_flag() {
        let pair = |heartbeat_ms| PairConfig {
            role: Role::Primary,
            peer: "tcp://127.0.0.1:5566".into(),
            peer_state: "tcp://127.0.0.1:5569".into(),
            state_bind: "tcp://127.0.0.1:5559".into(),
            heartbeat_ms,
        };
        for ms in [0, 9, 60_001, u64::MAX] {
            let cfg = ServerConfig { pair: Some(pair(ms)), ..ServerConfig::default() };
            let e = cfg.check().expect_err("out of range");
            assert!(e.contains("--heartbeat-interval ") && e.ends_with(" is out of range: give 10ms to 60s"), "{e}");
            let cfg = ServerConfig { hugz_interval_ms: ms, ..ServerConfig::default() };
            assert!(cfg.check().expect_err("out of range").contains("--hugz-interval "), "{ms}");
        }
        let cfg = ServerConfig { pair: Some(pair(10)), hugz_interval_ms: 60_000, ..ServerConfig::default() };
        assert!(cfg.check().is_ok());
    }
}
