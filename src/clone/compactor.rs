//! The clone server's compactor: the snapshot rewrite of a compaction, off the serving thread.
//!
//! A compaction rewrote the whole map into `snapshot` on the server's one thread: about 1.3 s at
//! 1M keys of 100-byte values on the development machine (170 MB, most of it the write and its
//! fsync), growing with the map, during which the server sent no Binary Star heartbeat (its peer
//! waits two heartbeats, 2 s by default), no HUGZ (clients fail over after `--silence`, 2 s) and
//! published nothing. Now the serving thread only moves the log aside
//! ([`super::persist::Store::rotate`], a rename and a new file, whatever the map's size) and
//! asks this agent, on a thread of its own (through [`crate::agent::Runner`], by [`AskLink`]), to fold the old segment into
//! the snapshot ([`super::persist::compact_prev`]), which reads only files. The answer
//! ([`Compaction`]) is fed to the server's core, which counts and says a failure like any failed
//! snapshot write. At most one compaction is in flight: the core asks for the next only once
//! this one is answered.
//!
//! It also puts a passive's re-sync in place ([`Job::Switch`], [`super::persist::switch_to_peer_snapshot`]):
//! the serving thread wrote the active's snapshot to `snapshot.peer` as it arrived and started a
//! fresh log at its end; this agent copies the old files aside when asked, fsyncs it and renames
//! it to `snapshot`. Its asks are done in order, so that never runs while a compaction does, nor
//! a compaction's `log.prev` disappears under the copies.
//!
//! It writes a full snapshot of the map ([`Job::WriteMap`], [`super::persist::write_map_snapshot`]:
//! a data directory behind the map), from a frozen copy the serving thread took in O(1)
//! ([`super::map::KvMap::freeze`]) while that thread goes on serving, and appends after it held
//! ([`super::persist::Store::begin_full_snapshot`]). Written on the serving thread before, it
//! held the server 0.6-1.3 s at 1M keys of 100-byte values.
//!
//! And it copies the data directory's files aside before a full snapshot of the map replaces
//! them ([`Job::KeepAside`], [`super::persist::keep_files_aside`]; a re-sync to an active behind
//! them whose file could not be written): copies as large as the files, each fsynced, which held
//! the serving thread for as long before.

use std::path::PathBuf;

use super::kvmsg::TTL_PROP;
use super::map::{FrozenMap, KvMap};
use super::persist::{
    compact_prev, keep_files_aside, switch_to_peer_snapshot, write_map_snapshot, Compacted, Record, Switched,
};
use crate::agent::{AgentError, AskHandler, AskLink};

/// What the server asks of its compactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Fold `DIR/log.prev` into `DIR/snapshot`, at the wall clock of the ask (ms since the
    /// epoch: values whose deadline passed by then are left out).
    Compact {
        /// The wall clock of the ask.
        wall_ms: u64,
    },
    /// Put a re-sync's `snapshot.peer` in place, copying the files it replaces aside first if
    /// `keep_aside`.
    Switch {
        /// Copy the old files aside first.
        keep_aside: bool,
    },
    /// Copy the files a start would recover now aside (`NAME.behind-<unix s>`), before a full
    /// snapshot of the map replaces them (the serving thread flushed the log first and appends
    /// nothing meanwhile).
    KeepAside,
    /// Write `map` (frozen at `sequence`, at the monotonic `now_ns` and the wall clock `wall_ms`
    /// of the freeze, for its TTL deadlines) to `snapshot.peer` with its end
    /// ([`write_map_snapshot`]).
    WriteMap {
        /// The frozen map.
        map: FrozenMap,
        /// Its sequence.
        sequence: u64,
        /// The monotonic clock of the freeze (the map's deadlines are on it).
        now_ns: u64,
        /// The wall clock of the freeze (ms since the epoch), for the file's deadlines.
        wall_ms: u64,
    },
}

/// The records of a frozen map, as the data directory keeps them: its `ttl`s as wall-clock
/// deadlines (`now_ns` and `wall_ms`: the clocks of the freeze).
fn map_records(map: &FrozenMap, now_ns: u64, wall_ms: u64) -> impl Iterator<Item = Record> + '_ {
    map.iter().map(move |(k, e)| {
        let mut m = KvMap::to_msg(k, e, now_ns);
        m.remove_prop(TTL_PROP);
        Record {
            msg: m,
            expires_at_unix_ms: e.expires_at_ns.map(|t| wall_ms + t.saturating_sub(now_ns) / 1_000_000 + 1),
        }
    })
}

/// What a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// A compaction: what it wrote (`None`: there was no segment to fold).
    Compacted(Option<Compacted>),
    /// A re-sync's snapshot is in place.
    Switched(Switched),
    /// The files were copied aside (the copies), or why they could not be (the snapshot that
    /// replaces them goes on: the active's map is the one followed).
    KeptAside(Result<Vec<PathBuf>, String>),
    /// The frozen map is in `snapshot.peer` with its end: this many keys.
    MapWritten(u64),
}

/// One job done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// How long it took (the compactor's clock).
    pub took_ns: u64,
    /// What it did, or why it failed.
    pub result: Result<Done, String>,
}

/// The agent's work: does each [`Job`] it is asked, in order, and answers.
pub struct Compactor {
    dir: PathBuf,
}

impl AskHandler for Compactor {
    type Ask = Job;
    type Answer = Compaction;

    fn role(&self) -> &str {
        "clone-compactor"
    }

    fn handle(&mut self, job: Job) -> Option<Compaction> {
        let t0 = crate::clock::monotonic_ns();
        let result = match job {
            Job::Compact { wall_ms } => compact_prev(&self.dir, wall_ms).map(Done::Compacted),
            Job::Switch { keep_aside } => switch_to_peer_snapshot(&self.dir, keep_aside).map(Done::Switched),
            Job::KeepAside => Ok(Done::KeptAside(keep_files_aside(&self.dir).map_err(|e| e.to_string()))),
            Job::WriteMap { map, sequence, now_ns, wall_ms } => {
                write_map_snapshot(&self.dir, sequence, map_records(&map, now_ns, wall_ms)).map(Done::MapWritten)
            }
        }
        .map_err(|e| e.to_string());
        let took_ns = crate::clock::monotonic_ns().saturating_sub(t0);
        Some(Compaction { took_ns, result })
    }
}

/// The server's end of its compactor.
pub struct CompactorLink(AskLink<Compactor>);

impl CompactorLink {
    /// Start the compactor of the data directory `dir` on its own thread.
    pub fn start(dir: PathBuf) -> Result<CompactorLink, AgentError> {
        let names = ("clone-server", "the data directory's compactor");
        AskLink::start(names, Compactor { dir }).map(CompactorLink)
    }

    /// Ask for one job (never blocks). An error when the compactor is gone, with why it stopped.
    pub fn ask(&mut self, job: Job) -> Result<(), AgentError> {
        self.0.send(job)
    }

    /// The next answer, if one has come (never blocks).
    pub fn answer(&mut self) -> Result<Option<Compaction>, AgentError> {
        self.0.answer()
    }

    /// Stop the compactor once the compaction in flight (if any) is done, and wait for it; its
    /// last answer, if one was still unread. (Not waiting would be safe too: a start finishes
    /// an interrupted compaction.)
    pub fn close(&mut self) -> Option<Compaction> {
        self.0.close()
    }
}
