//! Durability for the clone server's `--data-dir`: update log plus snapshots (beyond the guide).
//!
//! An append-only update log plus periodic
//! snapshots in `--data-dir`, recovered at start. A truncated or corrupt file (a tail, a bad
//! record, a header cut short) is reported with its offset and reason, and everything before the
//! damage is recovered; before the log is cut there, or the snapshot rewritten with what was
//! recovered, the damaged file is copied aside to `log.corrupt-<unix_s>` or
//! `snapshot.corrupt-<unix_s>`. A file that is not ours (a wrong magic) stops the start.
//!
//! Files: `snapshot` (written to `snapshot.tmp`, fsynced, renamed, directory fsynced) and `log`
//! (records appended after the snapshot); during a compaction also `log.prev`, the log segment
//! the compaction folds into the next snapshot ([`Store::rotate`], [`compact_prev`]); during a
//! passive's re-sync also `snapshot.peer` (the active's snapshot, written as it arrives) and, once
//! it is complete, its end `snapshot.peer.end` and `log.old` (the log of the files it replaces)
//! until [`switch_to_peer_snapshot`] puts it in place (a full snapshot of the map goes through
//! `snapshot.peer` and `log.old` the same way, written off the serving thread:
//! [`Store::begin_full_snapshot`]). Each file starts with an 8-byte magic; each record is
//! `len u32 LE · crc32 u32 LE · payload` where the payload is `sequence u64 · expires_at_unix_ms u64
//! (0 = none) · uuid_len u8 · uuid · key_len u32 · key · props_len u32 · props · body_len u32 · body`
//! (integers little-endian; props in CHP `name=value\n` text; an empty body is a delete).
//!
//! **fsync choice**: the server hands records to the OS (flushes the user-space buffer) after each
//! batch of updates and *before* it publishes them (a KVPUB is the client's acknowledgement), and
//! asks for an `fsync` once per `fsync_interval` (1 s by default) and on clean stop. So a crash of
//! the *process* (kill -9) loses no acknowledged update; a crash of the *machine* (power, kernel)
//! can lose up to the last second of updates, or the length of an fsync that took longer (said and
//! counted, see [`super::syncer`]). The periodic fsync runs on the server's syncer thread
//! ([`Store::log_handle`], [`Store::take_unsynced`]), never on the serving one.
//! Clients that re-send un-acknowledged updates after a failover cover part of that window.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::kvmsg::{decode_props, encode_props, EncodeError, KvMsg};

const LOG_MAGIC: &[u8; 8] = b"MDCLLOG1";
const SNAP_MAGIC: &[u8; 8] = b"MDCLSNP1";
/// The log segment a compaction folds into the snapshot: the log as it was when the compaction
/// started ([`Store::rotate`]); new records go to a fresh `log` meanwhile.
pub const PREV_LOG: &str = "log.prev";
/// A passive's re-sync: the active's snapshot, written as it arrives
/// ([`Store::begin_peer_snapshot`]); renamed to `snapshot` by [`switch_to_peer_snapshot`]. A start
/// that finds it removes it: the re-sync did not end, and the files before it stand.
pub const PEER_SNAPSHOT: &str = "snapshot.peer";
/// The log of the files a re-sync replaces, moved aside once the active's snapshot is complete
/// ([`Store::end_peer_snapshot`]); new records go to a fresh `log`, which follows that snapshot. A
/// start that finds it with `snapshot.peer` puts it back (the re-sync's snapshot was not in place);
/// without, removes it and `log.prev` (it was).
pub const OLD_LOG: &str = "log.old";
/// The end of a re-sync's `snapshot.peer`, written when it is complete ([`Store::end_peer_snapshot`],
/// before the log moves to `log.old`): its sequence, the length and CRC-32 of its records, and
/// whether the files it replaces are to be kept aside. A start that finds `snapshot.peer` and
/// `log.old` puts the re-sync in place when the file matches it (a crash before the switch rolls
/// forward, keeping the log that followed the snapshot); else it recovers the files before it.
pub const PEER_END: &str = "snapshot.peer.end";
/// The magic of [`PEER_END`].
const PEER_END_MAGIC: &[u8; 8] = b"MDCLPEN1";
/// Bytes of [`PEER_END`]: magic, sequence, records' length, their CRC-32, keep-aside flag, and
/// the CRC-32 of all that.
const PEER_END_BYTES: usize = 8 + 8 + 8 + 4 + 1 + 4;
/// Largest record accepted when reading (guards against a corrupt length). The server refuses a
/// configuration whose key and value limits could produce a larger record (see
/// [`RECORD_FIXED_BYTES`]).
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// Bytes of a record payload besides key, properties and body (sequence, deadline, uuid length,
/// uuid, three part lengths).
pub const RECORD_FIXED_BYTES: usize = 8 + 8 + 1 + 16 + 3 * 4;
/// Bytes of the smallest record payload: no uuid, empty key, properties and body.
const MIN_RECORD_BYTES: usize = RECORD_FIXED_BYTES - 16;

/// Persistence errors, with the file and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// An I/O call failed.
    #[error("{path}: {source} while {context}")]
    Io {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A file that is not ours (wrong magic).
    #[error("{path}: not an mdsub clone {what} file (bad magic)")]
    BadMagic { path: PathBuf, what: &'static str },
    /// The data directory named is something else (a file).
    #[error("{path}: not a directory (--data-dir names the directory for the update log and snapshots)")]
    NotADirectory { path: PathBuf },
    /// A FIFO, device, socket or directory where the data directory keeps one of its files:
    /// opening a FIFO waits for its other end, so it is refused before anything waits.
    #[error("{path}: it is {what}; the clone server keeps its log, snapshots and lock in --data-dir as regular files")]
    NotRegular { path: PathBuf, what: &'static str },
    /// A compaction found the snapshot or the log segment it folds damaged: it stops, and leaves
    /// the files as they are (the next start reports the damage and recovers what is before it).
    #[error("{0}; the compaction stopped and left the files as they are")]
    Damaged(TailError),
    /// Another server holds the data directory's lock: it is using the directory now.
    #[error(
        "{path}: another clone server is using this data directory (it holds {path}/lock); give each server \
         its own --data-dir"
    )]
    InUse { path: PathBuf },
    /// A record whose properties the file format's `name=value` lines cannot hold: not written
    /// (never silently without them). Every path into the map refuses such properties
    /// (a client's update as `bad_properties`, a peer's as malformed): seeing this is a bug.
    #[error(
        "the update of key `{key}` was not written to the data directory: {source} (a property name or value \
         with a line break, or a name that is empty or holds `=`)"
    )]
    Unencodable {
        key: String,
        #[source]
        source: EncodeError,
    },
}

/// Where reading a file stopped early, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailError {
    /// The file.
    pub path: PathBuf,
    /// Byte offset of the first record not recovered.
    pub offset: u64,
    /// What was wrong there.
    pub reason: String,
}

impl std::fmt::Display for TailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at offset {}: {}", self.path.display(), self.offset, self.reason)
    }
}

/// One persisted update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The update (sequence, key, uuid, props without `ttl`, body).
    pub msg: KvMsg,
    /// Wall-clock deadline in ms since the epoch, if the value has a TTL.
    pub expires_at_unix_ms: Option<u64>,
}

/// What [`Store::open`] recovered.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Records in order (snapshot entries, then log records newer than the snapshot).
    pub records: Vec<Record>,
    /// Highest sequence seen.
    pub sequence: u64,
    /// Where reading the snapshot or the log stopped early (what came before was recovered).
    pub tail_errors: Vec<TailError>,
    /// Where damaged files were copied before they were cut or rewritten
    /// (`log.corrupt-<unix_s>`, `snapshot.corrupt-<unix_s>`).
    pub corrupt_copies: Vec<PathBuf>,
    /// What the start settled of a re-sync a stop or a crash interrupted, to be said.
    pub resync_settled: Option<String>,
    /// A snapshot's temp file a stop or a crash left unfinished (never renamed into place, so
    /// never part of the recovered state), removed at start, and its size in bytes: to be said.
    pub temp_removed: Option<(PathBuf, u64)>,
}

/// A passive's re-sync being written: the active's snapshot, record by record.
struct PeerStream {
    /// The file, or why writing it failed (the re-sync then needs a full snapshot of the map).
    out: Result<BufWriter<File>, String>,
    /// One record's bytes (reused).
    buf: Vec<u8>,
    /// This stream created `snapshot.peer` (not one an earlier re-sync's switch still waits on).
    opened: bool,
    /// CRC-32 of the records written so far (after the 16-byte header), for [`PEER_END`].
    crc: crc32fast::Hasher,
    /// Their length in bytes.
    len: u64,
}

/// The open data directory.
pub struct Store {
    dir: PathBuf,
    /// `DIR/lock`, held (`flock(LOCK_EX)`) while the store is open: two servers writing one
    /// directory would each overwrite the other's snapshot and log. The kernel drops the lock
    /// with the last handle, however the process ends, so a crash leaves no stale lock.
    _lock: File,
    log: BufWriter<File>,
    log_records: u64,
    /// Records handed to the OS (or buffered) since the last fsync was asked for.
    dirty: bool,
    /// Length of the log once its last successful flush reached the OS: what
    /// [`Store::rollback`] cuts back to.
    good_len: u64,
    /// `log.prev` is there: a compaction has not folded it into the snapshot yet.
    prev: bool,
    /// A passive's re-sync under way: the active's snapshot written to `snapshot.peer`.
    peer: Option<PeerStream>,
    /// `snapshot.peer` is complete, the old log is `log.old` and appends go to a fresh `log`:
    /// [`switch_to_peer_snapshot`] has not put it in place yet.
    switching: bool,
    /// The files the re-sync replaces are copied aside first (a data dir newer than the active's).
    keep_aside: bool,
    /// A full snapshot of the map is being written off the serving thread
    /// ([`Store::begin_full_snapshot`]): the records appended since it was frozen, encoded and
    /// held here until [`Store::end_full_snapshot`] writes them to the log that follows it.
    held: Option<Vec<u8>>,
    /// [`Store::log_records`] when the records began to be held.
    held_from: u64,
    /// Records past [`HELD_MAX_BYTES`] arrived while the map was written: the held ones were
    /// dropped, and the data directory falls behind again when the snapshot ends.
    held_over: bool,
    /// Test seam: a multi-step write stops at this step as a crash there would (no clean-up).
    #[cfg(test)]
    crash_at: Option<&'static str>,
}

/// The most the updates that arrive while the map's snapshot is written take in memory
/// ([`Store::begin_full_snapshot`]); past it they are dropped and the data directory is written
/// whole again after (a disk slow enough to hold a snapshot that long is no place to grow them).
#[cfg(not(test))]
const HELD_MAX_BYTES: usize = 256 << 20;
#[cfg(test)]
const HELD_MAX_BYTES: usize = 4 << 10;

fn io_err<'a>(path: &'a Path, context: &'static str) -> impl FnOnce(std::io::Error) -> PersistError + 'a {
    move |source| PersistError::Io { path: path.to_path_buf(), context, source }
}

/// CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320): `crc32fast`'s, the same checksum as the
/// byte-table loop that wrote the files before (a compaction reads and checks every record of the
/// snapshot and the log segment, hundreds of MB at 1M keys).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Encode one record (length, crc, payload) onto `out`; nothing when its properties cannot be
/// encoded ([`PersistError::Unencodable`]). Before, they were written as none, silently.
pub fn encode_record(rec: &Record, out: &mut Vec<u8>) -> Result<(), PersistError> {
    let props = encode_props(&rec.msg.props).map_err(|source| PersistError::Unencodable {
        key: String::from_utf8_lossy(&rec.msg.key).into_owned(),
        source,
    })?;
    let mut p = Vec::with_capacity(32 + rec.msg.key.len() + props.len() + rec.msg.body.len());
    p.extend_from_slice(&rec.msg.sequence.to_le_bytes());
    p.extend_from_slice(&rec.expires_at_unix_ms.unwrap_or(0).to_le_bytes());
    match rec.msg.uuid {
        Some(u) => {
            p.push(16);
            p.extend_from_slice(&u);
        }
        None => p.push(0),
    }
    for part in [&rec.msg.key[..], &props[..], &rec.msg.body[..]] {
        p.extend_from_slice(&(part.len() as u32).to_le_bytes());
        p.extend_from_slice(part);
    }
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&p).to_le_bytes());
    out.extend_from_slice(&p);
    Ok(())
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("payload too short ({} bytes left, need {n})", self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "short u64".to_string())?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| "short u32".to_string())?))
    }
    fn part(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn decode_payload(p: &[u8]) -> Result<Record, String> {
    let mut c = Cursor(p);
    let sequence = c.u64()?;
    let exp = c.u64()?;
    let uuid = match c.take(1)?[0] {
        0 => None,
        16 => Some(<[u8; 16]>::try_from(c.take(16)?).map_err(|_| "short uuid".to_string())?),
        n => return Err(format!("uuid length {n}")),
    };
    let key = c.part()?.to_vec();
    let props = decode_props(c.part()?).map_err(|e| format!("properties: {e}"))?;
    let body = c.part()?.to_vec();
    if !c.0.is_empty() {
        return Err(format!("{} trailing bytes in record", c.0.len()));
    }
    Ok(Record { msg: KvMsg { key, sequence, uuid, props, body }, expires_at_unix_ms: (exp != 0).then_some(exp) })
}

/// Reads a file's records one at a time (the whole file is never in memory), checking each: its
/// length within bounds, its checksum, its payload.
struct RecordReader<R> {
    r: R,
    /// The offset in the file of the next record.
    at: u64,
    /// One payload (reused).
    buf: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    /// Read from `r`, whose next byte is at offset `at` of its file.
    fn new(r: R, at: u64) -> Self {
        RecordReader { r, at, buf: Vec::new() }
    }

    /// The next record and its offset; `None` at the end of the file; `Err` where it stops
    /// early ([`RecordReader::at`] stays there: what is before it is good). An I/O error is the
    /// outer one.
    fn next(&mut self) -> std::io::Result<Result<Option<(u64, Record)>, Damage>> {
        let at = self.at;
        let mut head = [0u8; 8];
        let n = crate::infile::read_full(&mut self.r, &mut head)?;
        if n == 0 {
            return Ok(Ok(None));
        }
        if n < 8 {
            return Ok(Err((at, format!("truncated record header ({n} bytes)"))));
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD_BYTES {
            return Ok(Err((at, format!("record length {len} exceeds the limit"))));
        }
        if len < MIN_RECORD_BYTES {
            // Zeros (a file grown by a write past its end) would otherwise pass the checksum:
            // the CRC-32 of nothing is 0.
            let reason = format!("record length {len} is below the smallest record ({MIN_RECORD_BYTES} bytes)");
            return Ok(Err((at, reason)));
        }
        // Grown as bytes come: a corrupt length at the end of a short file allocates nothing.
        self.buf.clear();
        (&mut self.r).take(len as u64).read_to_end(&mut self.buf)?;
        if self.buf.len() < len {
            return Ok(Err((at, format!("truncated record: {} of {len} payload bytes", self.buf.len()))));
        }
        if crc32(&self.buf) != crc {
            return Ok(Err((at, "checksum mismatch".to_string())));
        }
        let rec = match decode_payload(&self.buf) {
            Ok(r) => r,
            Err(reason) => return Ok(Err((at, reason))),
        };
        self.at += 8 + len as u64;
        Ok(Ok(Some((at, rec))))
    }

    /// Every record to the end or to the damage: the records, the offset just past the last
    /// good one, and the damage.
    fn read_all(mut self) -> std::io::Result<(Vec<Record>, u64, Option<Damage>)> {
        let mut out = Vec::new();
        loop {
            match self.next()? {
                Ok(Some((_, r))) => out.push(r),
                Ok(None) => return Ok((out, self.at, None)),
                Err(d) => return Ok((out, self.at, Some(d))),
            }
        }
    }
}

/// Decode the records in `data` (after the magic, which starts at `base` in the file). Returns the
/// records, the offset just past the last good record, and the reason reading stopped early.
pub fn decode_records(data: &[u8], base: u64) -> (Vec<Record>, u64, Option<(u64, String)>) {
    RecordReader::new(data, base).read_all().unwrap_or_else(|e| (Vec::new(), base, Some((base, e.to_string()))))
}

/// A data-dir file as opened.
enum FileRead<B> {
    /// There is none.
    Absent,
    /// Its bytes after the 8-byte magic.
    Body(B),
    /// It ends inside its magic: it holds this many bytes (0 to 7), all of them the magic's.
    CutMagic(usize),
}

/// What is at `meta`'s path when it is not a regular file.
fn not_regular(meta: &std::fs::Metadata) -> Option<&'static str> {
    match meta {
        m if m.is_file() => None,
        m if m.is_dir() => Some("a directory"),
        _ => Some("not a regular file (a FIFO, socket or device)"),
    }
}

/// Open the data directory's file `path` as `opts` says, non-blocking, and refuse anything but
/// a regular file ([`PersistError::NotRegular`]): a blocking open of a FIFO placed there waits
/// for a reader or a writer for ever, and the server with it. (`O_NONBLOCK` stays on the
/// handle: on a regular file it changes nothing.) The rule of [`crate::infile`] and
/// [`crate::outfile`], for the server's own files.
fn open_regular(path: &Path, opts: &mut OpenOptions, context: &'static str) -> Result<File, PersistError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let refused = |what| PersistError::NotRegular { path: path.to_path_buf(), what };
    let file = opts.custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| match e.raw_os_error() {
        // Opened for writing, a FIFO with no reader says ENXIO; a directory says EISDIR.
        Some(libc::ENXIO) => refused("not a regular file (a FIFO, socket or device)"),
        Some(libc::EISDIR) => refused("a directory"),
        _ => io_err(path, context)(e),
    })?;
    match not_regular(&file.metadata().map_err(io_err(path, context))?) {
        Some(what) => Err(refused(what)),
        None => Ok(file),
    }
}

/// Open the data-dir file `path` and read past its magic (`what` names the file in an error).
fn open_file(path: &Path, magic: &[u8; 8], what: &'static str) -> Result<FileRead<BufReader<File>>, PersistError> {
    let f = match open_regular(path, OpenOptions::new().read(true), "opening") {
        Ok(f) => f,
        Err(PersistError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileRead::Absent)
        }
        Err(e) => return Err(e),
    };
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut head = [0u8; 8];
    let n = crate::infile::read_full(&mut r, &mut head).map_err(io_err(path, "reading"))?;
    if n < 8 && magic.starts_with(&head[..n]) {
        return Ok(FileRead::CutMagic(n));
    }
    if n < 8 || &head != magic {
        return Err(PersistError::BadMagic { path: path.to_path_buf(), what });
    }
    Ok(FileRead::Body(r))
}

/// The reason for a file that ends inside its header of `header` bytes after `len` bytes.
fn cut_header(len: usize, header: usize, what: &str) -> String {
    format!("truncated header: the file ends after {len} of its {header} header bytes ({what})")
}

/// Damage found in a file: the offset it starts at, and what it is.
type Damage = (u64, String);

/// The snapshot at `path` opened: its sequence, a reader of its records, or the damage in its
/// header (any, even a file that ends inside its 16-byte header: a snapshot is only ever
/// written whole). No file: sequence 0, no records.
fn open_snapshot(path: &Path) -> Result<(u64, Option<FileRecords>, Option<Damage>), PersistError> {
    let cut = |n: usize| Some((n as u64, cut_header(n, 16, "magic and sequence")));
    Ok(match open_file(path, SNAP_MAGIC, "snapshot")? {
        FileRead::Absent => (0, None, None),
        FileRead::CutMagic(n) => (0, None, cut(n)),
        FileRead::Body(mut r) => {
            let mut seq = [0u8; 8];
            match crate::infile::read_full(&mut r, &mut seq).map_err(io_err(path, "reading"))? {
                8 => (u64::from_le_bytes(seq), Some(RecordReader::new(r, 16)), None),
                n => (0, None, cut(8 + n)),
            }
        }
    })
}

/// The snapshot at `path` as read: its sequence, its good records, and the damage found
/// ([`open_snapshot`]).
fn read_snapshot(path: &Path) -> Result<(u64, Vec<Record>, Option<Damage>), PersistError> {
    let (sequence, reader, damage) = open_snapshot(path)?;
    let Some(reader) = reader else { return Ok((sequence, Vec::new(), damage)) };
    let (records, _, damage) = reader.read_all().map_err(io_err(path, "reading"))?;
    Ok((sequence, records, damage))
}

/// A log (`log` or `log.prev`) as read: its good records, the offset they end at (a damaged
/// tail is cut there), and the damage found.
struct LogRead {
    records: Vec<Record>,
    good_end: u64,
    damage: Option<Damage>,
}

/// Records read from a data-dir file.
type FileRecords = RecordReader<BufReader<File>>;

/// The log at `path` opened: a reader of its records (`None`: it holds only its header, or not
/// even that: a file created and not yet given its header, a crash in between, holds nothing and
/// is not damaged), or the damage in its header; `None` when there is no file.
fn open_log(path: &Path) -> Result<Option<Result<Option<FileRecords>, Damage>>, PersistError> {
    Ok(match open_file(path, LOG_MAGIC, "log")? {
        FileRead::Absent => None,
        FileRead::CutMagic(0) => Some(Ok(None)),
        FileRead::CutMagic(n) => Some(Err((n as u64, cut_header(n, 8, "magic")))),
        FileRead::Body(r) => Some(Ok(Some(RecordReader::new(r, 8)))),
    })
}

/// Read the log at `path`; `None` when there is none ([`open_log`]).
fn read_log(path: &Path) -> Result<Option<LogRead>, PersistError> {
    let (records, good_end, damage) = match open_log(path)? {
        None => return Ok(None),
        Some(Err(damage)) => (Vec::new(), 8, Some(damage)),
        Some(Ok(None)) => (Vec::new(), 8, None),
        Some(Ok(Some(reader))) => reader.read_all().map_err(io_err(path, "reading"))?,
    };
    Ok(Some(LogRead { records, good_end, damage }))
}

/// Add to `records` those of `later` (a log read after the snapshot at `after`) past `after`,
/// raising `sequence` to the highest: what a start and a compaction both keep of a log.
fn append_after(records: &mut Vec<Record>, sequence: &mut u64, later: Vec<Record>, after: u64) {
    for r in later.into_iter().filter(|r| r.msg.sequence > after) {
        *sequence = (*sequence).max(r.msg.sequence);
        records.push(r);
    }
}

/// Copy `DIR/NAME` to `DIR/AS.TAG-<unix seconds>` (`.1`, `.2`, … added if that is taken): a damaged
/// file before it is cut or rewritten (`corrupt`), so what is after the damage can still be looked
/// at (or salvaged) by hand; files a re-sync replaces (`behind`).
fn copy_aside(dir: &Path, name: &str, as_name: &str, tag: &str) -> Result<PathBuf, PersistError> {
    let secs = crate::clock::realtime_ns() / 1_000_000_000;
    let mut copy = dir.join(format!("{as_name}.{tag}-{secs}"));
    let mut k = 1;
    while copy.exists() {
        copy = dir.join(format!("{as_name}.{tag}-{secs}.{k}"));
        k += 1;
    }
    let what = match (as_name.starts_with("log"), tag) {
        (true, "corrupt") => "copying the damaged log aside",
        (_, "corrupt") => "copying the damaged snapshot aside",
        (true, _) => "copying the log aside",
        _ => "copying the snapshot aside",
    };
    std::fs::copy(dir.join(name), &copy).map_err(io_err(&copy, what))?;
    // Durable before the original is cut, rewritten or removed: a re-sync removes the files it
    // replaces right after (`behind`: the only copy of updates the active lacks), and a start
    // rewrites a damaged one. Before, a machine crash could leave the copy empty and the
    // original gone.
    File::open(&copy).and_then(|f| f.sync_all()).map_err(io_err(&copy, "fsyncing the copy"))?;
    fsync_dir(dir);
    Ok(copy)
}

/// Copy the files a start would recover now (`snapshot`, `log.prev`, and `log`, or `log.old`
/// during a re-sync's switch) to `NAME.behind-<unix s>`, those there are: kept before a re-sync
/// replaces a directory newer than the active peer's map. Returns the copies.
pub fn keep_files_aside(dir: &Path) -> Result<Vec<PathBuf>, PersistError> {
    let switching = dir.join(PEER_SNAPSHOT).exists() && dir.join(OLD_LOG).exists();
    let log = if switching { OLD_LOG } else { "log" };
    let mut copies = Vec::new();
    for (name, as_name) in [("snapshot", "snapshot"), (PREV_LOG, PREV_LOG), (log, "log")] {
        if dir.join(name).exists() {
            copies.push(copy_aside(dir, name, as_name, "behind")?);
        }
    }
    Ok(copies)
}

/// Write a snapshot file of `records` at `sequence` atomically (temp file, fsync, rename,
/// directory fsync). On failure the temp file is removed (a disk that is full stays no fuller).
fn write_snapshot_file(dir: &Path, sequence: u64, records: impl Iterator<Item = Record>) -> Result<(), PersistError> {
    write_snapshot_from(dir, sequence, records.map(Ok))
}

/// [`write_snapshot_file`] of records read as they are written: the first error stops it (the
/// temp file removed, the snapshot untouched).
fn write_snapshot_from(
    dir: &Path,
    sequence: u64,
    records: impl Iterator<Item = Result<Record, PersistError>>,
) -> Result<(), PersistError> {
    let tmp = dir.join("snapshot.tmp");
    let path = dir.join("snapshot");
    let written = write_tmp_snapshot(&tmp, sequence, records)
        .and_then(|_| std::fs::rename(&tmp, &path).map_err(io_err(&path, "renaming the snapshot into place")));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    fsync_dir(dir);
    Ok(())
}

/// Write a snapshot file of `records` at `sequence` to `tmp` and fsync it; the length and CRC-32
/// of its records (the bytes after its 16-byte header, as [`PEER_END`] states them).
fn write_tmp_snapshot(
    tmp: &Path,
    sequence: u64,
    records: impl Iterator<Item = Result<Record, PersistError>>,
) -> Result<(u64, u32), PersistError> {
    let f = open_regular(tmp, OpenOptions::new().write(true).create(true).truncate(true), "creating")?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut buf = Vec::with_capacity(1 << 16);
    let (mut crc, mut len) = (crc32fast::Hasher::new(), 0u64);
    buf.extend_from_slice(SNAP_MAGIC);
    buf.extend_from_slice(&sequence.to_le_bytes());
    for r in records {
        let at = buf.len();
        encode_record(&r?, &mut buf)?;
        crc.update(&buf[at..]);
        len += (buf.len() - at) as u64;
        if buf.len() >= 1 << 16 {
            w.write_all(&buf).map_err(io_err(tmp, "writing"))?;
            buf.clear();
        }
    }
    w.write_all(&buf).map_err(io_err(tmp, "writing"))?;
    w.flush().map_err(io_err(tmp, "flushing"))?;
    w.get_ref().sync_all().map_err(io_err(tmp, "fsyncing"))?;
    Ok((len, crc.finalize()))
}

/// The compactor's part of a full snapshot of the map ([`Store::begin_full_snapshot`]): write
/// `records` (a frozen copy of the map at `sequence`) to `snapshot.peer`, fsync it, and write its
/// end ([`PEER_END`]), so that once the serving thread has moved the log aside
/// ([`Store::end_full_snapshot`]) a start puts it in place with the log that follows it, as for
/// a re-sync. It touches no file the serving thread writes. On a failure `snapshot.peer` and its
/// end are removed: nothing changed. The number of records written.
pub fn write_map_snapshot(
    dir: &Path,
    sequence: u64,
    records: impl Iterator<Item = Record>,
) -> Result<u64, PersistError> {
    let (peer, end) = (dir.join(PEER_SNAPSHOT), dir.join(PEER_END));
    // No earlier end may stand for this file (a start would take it for a complete one).
    remove_if_there(&end, "removing an earlier re-sync's end")?;
    let mut keys = 0u64;
    let written = write_tmp_snapshot(&peer, sequence, records.inspect(|_| keys += 1).map(Ok)).and_then(|(len, crc)| {
        PeerEnd { sequence, len, crc, keep_aside: false }.write(dir)?;
        fsync_dir(dir);
        Ok(keys)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&end);
        let _ = std::fs::remove_file(&peer);
    }
    written
}

/// The state `records` (in the order they were written) leave: the last value of each key, in
/// key order, without deletes (an empty body) and values whose wall-clock deadline is at or
/// before `wall_ms` (recovery deletes those too).
fn merge(records: impl IntoIterator<Item = Record>, wall_ms: u64) -> Vec<Record> {
    let mut state = std::collections::BTreeMap::new();
    for r in records {
        if r.msg.body.is_empty() || r.expires_at_unix_ms.is_some_and(|t| t <= wall_ms) {
            state.remove(&r.msg.key);
        } else {
            state.insert(r.msg.key.clone(), r);
        }
    }
    state.into_values().collect()
}

/// What [`compact_prev`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Keys in the new snapshot.
    pub keys: u64,
    /// Its sequence.
    pub sequence: u64,
}

/// A compaction that found `path` damaged.
fn damaged(path: &Path, (offset, reason): Damage) -> PersistError {
    PersistError::Damaged(TailError { path: path.to_path_buf(), offset, reason })
}

/// Fold `DIR/log.prev` into `DIR/snapshot` ([`Store::rotate`] left it there): fsync the segment
/// and the directory, merge the snapshot's records with the segment's later ones, write the
/// result as the snapshot at the segment's last sequence (temp file, fsync, rename, directory
/// fsync), then remove the segment. `None` when there is no segment.
///
/// It reads only files: the serving thread goes on appending to the new `log` meanwhile, every
/// record of which is past the segment's sequences. A crash at any point leaves files a start
/// recovers whole: before the rename, the old snapshot and the segment are there; after it, the
/// segment's records are at or below the new snapshot's sequence and skipped ([`Store::open`]
/// folds a segment it finds the same way). Damage in either file stops it
/// ([`PersistError::Damaged`]): nothing is dropped at run time.
///
/// **Memory**: neither file is held. The segment is read once for an index of its keys (the
/// offset of each key's last record after the snapshot's sequence); the snapshot, written in key
/// order, is then read a record at a time and merged with the index in key order, each key's
/// segment record read again at its offset, and each record written out as it comes. A
/// snapshot not in key order (one a re-sync wrote in the order a peer sent it: the guide's
/// servers send their hash table's) is merged in memory instead.
pub fn compact_prev(dir: &Path, wall_ms: u64) -> Result<Option<Compacted>, PersistError> {
    let prev = dir.join(PREV_LOG);
    let snap = dir.join("snapshot");
    let segment = match open_log(&prev)? {
        None => return Ok(None),
        Some(Err(d)) => return Err(damaged(&prev, d)),
        Some(Ok(segment)) => segment,
    };
    let (snap_seq, snapshot, damage) = open_snapshot(&snap)?;
    if let Some(d) = damage {
        return Err(damaged(&snap, d));
    }
    // As a start reads them: the segment's records after the snapshot's sequence, the last of
    // each key winning.
    let mut index = std::collections::BTreeMap::new();
    let mut sequence = snap_seq;
    if let Some(mut segment) = segment {
        while let Some((at, r)) = segment.next().map_err(io_err(&prev, "reading"))?.map_err(|d| damaged(&prev, d))? {
            if r.msg.sequence > snap_seq {
                sequence = sequence.max(r.msg.sequence);
                index.insert(r.msg.key, at);
            }
        }
    }
    // The segment's last records may not be fsynced yet (the syncer follows the new log): they
    // are made durable before a snapshot that stands in for them replaces the old one.
    let segment = File::open(&prev).map_err(io_err(&prev, "opening"))?;
    segment.sync_data().map_err(io_err(&prev, "fsyncing"))?;
    fsync_dir(dir);
    let mut merged = Merge {
        snapshot,
        snap_path: &snap,
        next_snap: None,
        last_key: None,
        index: index.into_iter().peekable(),
        segment: RecordReader::new(ReadAt { file: segment, pos: 0 }, 0),
        seg_path: &prev,
        wall_ms,
        written: 0,
        unsorted: false,
    };
    let keys = match write_snapshot_from(dir, sequence, &mut merged) {
        Ok(()) => merged.written,
        Err(_) if merged.unsorted => {
            drop(merged);
            let (seq, records) = read_both(&snap, &prev)?;
            let state = merge(records, wall_ms);
            let keys = state.len() as u64;
            write_snapshot_file(dir, seq, state.into_iter())?;
            keys
        }
        Err(e) => return Err(e),
    };
    std::fs::remove_file(&prev).map_err(io_err(&prev, "removing the compacted log segment"))?;
    fsync_dir(dir);
    Ok(Some(Compacted { keys, sequence }))
}

/// The snapshot's records and the segment's after its sequence, in the order a start reads them,
/// and the highest sequence: a compaction's merge in memory.
fn read_both(snap: &Path, prev: &Path) -> Result<(u64, Vec<Record>), PersistError> {
    let (mut sequence, mut records, damage) = read_snapshot(snap)?;
    if let Some(d) = damage {
        return Err(damaged(snap, d));
    }
    let later = read_log(prev)?.unwrap_or(LogRead { records: Vec::new(), good_end: 8, damage: None });
    if let Some(d) = later.damage {
        return Err(damaged(prev, d));
    }
    let snap_seq = sequence;
    append_after(&mut records, &mut sequence, later.records, snap_seq);
    Ok((sequence, records))
}

/// Reads a file from `pos` on, by `pread` (no seek, no shared position).
struct ReadAt {
    file: File,
    pos: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A compaction's merge, streamed ([`compact_prev`]): the snapshot's records in key order and
/// the segment's index (each key's last record, by offset), the segment's winning; deletes and
/// values whose deadline passed are left out, as [`merge`] does.
struct Merge<'a> {
    snapshot: Option<FileRecords>,
    snap_path: &'a Path,
    /// The snapshot's record not yet merged.
    next_snap: Option<Record>,
    /// The key of the snapshot's last record read (its keys must increase).
    last_key: Option<Vec<u8>>,
    index: std::iter::Peekable<std::collections::btree_map::IntoIter<Vec<u8>, u64>>,
    segment: RecordReader<ReadAt>,
    seg_path: &'a Path,
    wall_ms: u64,
    /// Records merged so far.
    written: u64,
    /// The snapshot's keys do not increase: the merge stopped, to be done in memory.
    unsorted: bool,
}

impl Merge<'_> {
    /// The snapshot's next record, checked to come after the one before in key order.
    fn snapshot_next(&mut self) -> Result<Option<Record>, PersistError> {
        let Some(reader) = self.snapshot.as_mut() else { return Ok(None) };
        let Some((_, r)) =
            reader.next().map_err(io_err(self.snap_path, "reading"))?.map_err(|d| damaged(self.snap_path, d))?
        else {
            self.snapshot = None;
            return Ok(None);
        };
        if self.last_key.as_ref().is_some_and(|k| r.msg.key <= *k) {
            self.unsorted = true;
            let source = std::io::Error::other("its records are not in key order");
            return Err(PersistError::Io { path: self.snap_path.to_path_buf(), context: "merging", source });
        }
        let last = self.last_key.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(&r.msg.key);
        Ok(Some(r))
    }

    /// The segment's record at `at` (read and checked again).
    fn segment_at(&mut self, at: u64) -> Result<Record, PersistError> {
        (self.segment.r.pos, self.segment.at) = (at, at);
        match self.segment.next().map_err(io_err(self.seg_path, "reading"))? {
            Ok(Some((_, r))) => Ok(r),
            Ok(None) => Err(damaged(self.seg_path, (at, "the file ends before a record it held".into()))),
            Err(d) => Err(damaged(self.seg_path, d)),
        }
    }

    /// The next record of the merged state.
    fn step(&mut self) -> Result<Option<Record>, PersistError> {
        loop {
            if self.next_snap.is_none() {
                self.next_snap = self.snapshot_next()?;
            }
            let from_segment = match (&self.next_snap, self.index.peek()) {
                (None, None) => return Ok(None),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(s), Some((key, _))) => s.msg.key >= *key,
            };
            let rec = if from_segment {
                let Some((key, at)) = self.index.next() else { return Ok(None) };
                if self.next_snap.as_ref().is_some_and(|s| s.msg.key == key) {
                    self.next_snap = None; // the segment's later value wins
                }
                self.segment_at(at)?
            } else {
                match self.next_snap.take() {
                    Some(r) => r,
                    None => return Ok(None),
                }
            };
            if rec.msg.body.is_empty() || rec.expires_at_unix_ms.is_some_and(|t| t <= self.wall_ms) {
                continue;
            }
            self.written += 1;
            return Ok(Some(rec));
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<Record, PersistError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

/// A complete `snapshot.peer`'s end ([`PEER_END`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerEnd {
    /// The snapshot's sequence (in its header too).
    sequence: u64,
    /// Bytes of its records, after the 16-byte header.
    len: u64,
    /// CRC-32 of those bytes.
    crc: u32,
    /// The files it replaces are to be copied aside first.
    keep_aside: bool,
}

impl PeerEnd {
    /// Write it to `DIR/snapshot.peer.end` (to the OS; no fsync: a machine crash that loses it
    /// rolls the re-sync back, as before there was one).
    fn write(&self, dir: &Path) -> Result<(), PersistError> {
        let mut b = Vec::with_capacity(PEER_END_BYTES);
        b.extend_from_slice(PEER_END_MAGIC);
        b.extend_from_slice(&self.sequence.to_le_bytes());
        b.extend_from_slice(&self.len.to_le_bytes());
        b.extend_from_slice(&self.crc.to_le_bytes());
        b.push(self.keep_aside as u8);
        b.extend_from_slice(&crc32(&b).to_le_bytes());
        let path = dir.join(PEER_END);
        std::fs::write(&path, b).map_err(io_err(&path, "writing the re-sync's end"))
    }

    /// The end in `DIR`, if there is one that is whole and matches `snapshot.peer` (its length,
    /// its sequence, and the CRC-32 of its records, read through once): the re-sync's snapshot
    /// reached the disk complete. `None` for anything else (no end, a torn one, a file that does
    /// not match it, one that cannot be read): the re-sync is then rolled back.
    fn matching(dir: &Path) -> Option<PeerEnd> {
        let b = std::fs::read(dir.join(PEER_END)).ok()?;
        if b.len() != PEER_END_BYTES || &b[..8] != PEER_END_MAGIC {
            return None;
        }
        let (body, sum) = b.split_at(PEER_END_BYTES - 4);
        if crc32(body).to_le_bytes() != sum {
            return None;
        }
        let u64_at = |i: usize| b.get(i..i + 8).and_then(|x| x.try_into().ok()).map(u64::from_le_bytes);
        let crc = b.get(24..28).and_then(|x| x.try_into().ok()).map(u32::from_le_bytes)?;
        let end = PeerEnd { sequence: u64_at(8)?, len: u64_at(16)?, crc, keep_aside: b[28] != 0 };
        let mut f = File::open(dir.join(PEER_SNAPSHOT)).ok()?;
        if f.metadata().ok()?.len() != 16 + end.len {
            return None;
        }
        let mut header = [0u8; 16];
        f.read_exact(&mut header).ok()?;
        if &header[..8] != SNAP_MAGIC || header[8..] != end.sequence.to_le_bytes() {
            return None;
        }
        let (mut hasher, mut buf) = (crc32fast::Hasher::new(), vec![0u8; 1 << 20]);
        loop {
            match crate::infile::read_full(&mut f, &mut buf).ok()? {
                0 => break,
                n => hasher.update(&buf[..n]),
            }
        }
        (hasher.finalize() == end.crc).then_some(end)
    }
}

/// What [`switch_to_peer_snapshot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// The files the re-sync replaced, copied aside when asked (`NAME.behind-<unix s>`), or why
    /// they could not be (the switch went on: the active's map is the one followed).
    pub copies: Result<Vec<PathBuf>, String>,
}

/// Put a passive's re-sync in place ([`Store::end_peer_snapshot`] left `snapshot.peer` complete
/// and the old log at `log.old`): copy the files it replaces aside if `keep_aside`, fsync
/// `snapshot.peer` and rename it to `snapshot` (directory fsynced), then remove `log.prev` and
/// `log.old`. It touches no file the serving thread writes (that one appends to the fresh `log`,
/// whose records all follow the active's snapshot).
///
/// A crash at any point leaves files a start recovers whole: before the rename, `snapshot.peer`
/// is there and the start removes it and puts `log.old` back (the files before the re-sync);
/// after it, the start removes `log.prev` and `log.old` (the new snapshot and the fresh log). Run
/// again after a failure it goes on where that one stopped.
pub fn switch_to_peer_snapshot(dir: &Path, keep_aside: bool) -> Result<Switched, PersistError> {
    let peer = dir.join(PEER_SNAPSHOT);
    let mut copies = Ok(Vec::new());
    if peer.exists() {
        if keep_aside {
            copies = keep_files_aside(dir).map_err(|e| e.to_string());
        }
        File::open(&peer).and_then(|f| f.sync_all()).map_err(io_err(&peer, "fsyncing the re-sync's snapshot"))?;
        let snap = dir.join("snapshot");
        std::fs::rename(&peer, &snap).map_err(io_err(&snap, "putting the re-sync's snapshot in place"))?;
        fsync_dir(dir);
    }
    for name in [PREV_LOG, OLD_LOG] {
        remove_if_there(&dir.join(name), "removing a log the re-sync replaced")?;
    }
    remove_if_there(&dir.join(PEER_END), "removing the re-sync's end")?;
    fsync_dir(dir);
    Ok(Switched { copies })
}

/// Remove `path`; one that is not there is no error.
fn remove_if_there(path: &Path, context: &'static str) -> Result<(), PersistError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path, context)(e)),
        _ => Ok(()),
    }
}

/// At a start, settle a passive's re-sync (or a full snapshot of the map, written the same way:
/// [`Store::write_snapshot`]) that a stop or a crash interrupted, before anything is read:
/// - `snapshot.peer` and `log.old` there, and the file matches its end ([`PEER_END`]): the
///   re-sync was complete and only its switch was pending; it is put in place now
///   ([`switch_to_peer_snapshot`], the old files copied aside first when that was asked), so the
///   log that followed it (the updates the active published after its snapshot) is kept. When
///   the copies fail, it is rolled back instead: those files may hold updates the active lacks.
/// - `snapshot.peer` there otherwise (no end, or one the file does not match: it did not reach
///   the disk whole before a machine crash): it was not put in place, so `log.old` (if any) goes
///   back to `log` and `snapshot.peer` is removed.
/// - `log.old` alone: the snapshot was in place, so `log.prev` and `log.old` go.
///
/// What was done, to be said.
fn settle_resync(dir: &Path) -> Result<Option<String>, PersistError> {
    let (peer, old, log, end) = (dir.join(PEER_SNAPSHOT), dir.join(OLD_LOG), dir.join("log"), dir.join(PEER_END));
    let said = if peer.exists() {
        let complete = if old.exists() { PeerEnd::matching(dir) } else { None };
        let copies = match complete {
            Some(e) if e.keep_aside => Some(keep_files_aside(dir).map_err(|e| e.to_string())),
            _ => None,
        };
        if let (Some(e), None | Some(Ok(_))) = (complete, &copies) {
            switch_to_peer_snapshot(dir, false)?;
            let kept = match copies {
                Some(Ok(c)) if !c.is_empty() => {
                    let c: Vec<String> = c.iter().map(|c| c.display().to_string()).collect();
                    format!("; the files it replaced were kept aside as {}", c.join(" and "))
                }
                _ => String::new(),
            };
            return Ok(Some(format!(
                "{}: a re-sync's snapshot at sequence {} was complete but not yet in place when the server \
                 stopped: it was put in place, with the log of the updates that followed it{kept}",
                peer.display(),
                e.sequence
            )));
        }
        // `log.old` back first: a crash after it still finds `snapshot.peer`, the same case.
        if old.exists() {
            std::fs::rename(&old, &log).map_err(io_err(&log, "putting back the log a re-sync replaced"))?;
        }
        std::fs::remove_file(&peer).map_err(io_err(&peer, "removing a re-sync's unfinished snapshot"))?;
        remove_if_there(&end, "removing a re-sync's end")?;
        let why = match copies {
            Some(Err(e)) => format!(" (it was complete, but the files it replaces could not be kept aside first: {e})"),
            _ => String::new(),
        };
        format!(
            "{}: a snapshot that was not in place when the server stopped (a re-sync's, or the map's written \
             whole) was removed{why}; the files before it were recovered (a passive fetches the active \
             peer's map again)",
            peer.display()
        )
    } else if old.exists() {
        // Its records are from before the re-sync: one left behind would be read as a
        // compaction's segment over the active's snapshot. Before, a failed removal was ignored.
        remove_if_there(&dir.join(PREV_LOG), "removing a log segment a re-sync replaced")?;
        std::fs::remove_file(&old).map_err(io_err(&old, "removing a log a re-sync replaced"))?;
        remove_if_there(&end, "removing a re-sync's end")?;
        format!(
            "{}: the log a snapshot replaced (a re-sync's, or the map's written whole) was removed; the snapshot \
             was in place when the server stopped",
            old.display()
        )
    } else {
        // A re-sync's end left after its switch (a crash before its removal): nothing to say.
        remove_if_there(&end, "removing a re-sync's end")?;
        return Ok(None);
    };
    fsync_dir(dir);
    Ok(Some(said))
}

/// At a start, remove `snapshot.tmp` if a stop or a crash left one (a compaction's or a full
/// snapshot's, never renamed into place): it can be as large as the map, and nothing reads it.
/// Before, it stayed until the next snapshot was written. Its path and size, to be said.
fn remove_temp_snapshot(dir: &Path) -> Result<Option<(PathBuf, u64)>, PersistError> {
    let tmp = dir.join("snapshot.tmp");
    let len = match std::fs::metadata(&tmp) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&tmp, "reading a leftover temp snapshot's size")(e)),
    };
    std::fs::remove_file(&tmp).map_err(io_err(&tmp, "removing a leftover temp snapshot"))?;
    Ok(Some((tmp, len)))
}

/// Take the data directory's lock (`DIR/lock`, created if missing), before anything in it is
/// read or written; [`PersistError::InUse`] when another process holds it.
fn lock_dir(dir: &Path) -> Result<File, PersistError> {
    let path = dir.join("lock");
    let file = open_regular(
        &path,
        OpenOptions::new().create(true).truncate(false).write(true),
        "opening the data directory's lock file",
    )?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(PersistError::InUse { path: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(PersistError::Io { path, context: "locking the data directory", source: e })
        }
    }
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Store {
    /// Open (creating) `dir`, recover its contents, and truncate a bad log tail so new records
    /// follow the last good one. A damaged file (cut short, a bad record) is reported in
    /// [`Recovered::tail_errors`], copied aside ([`Recovered::corrupt_copies`]), and then cut
    /// to what was recovered: the log to its last good record, the snapshot rewritten with its
    /// good records at its sequence (or at 0 when its header is cut). A file that is not ours
    /// (a wrong magic) is an error: nothing is touched.
    pub fn open(dir: &Path) -> Result<(Store, Recovered), PersistError> {
        if dir.exists() && !dir.is_dir() {
            return Err(PersistError::NotADirectory { path: dir.to_path_buf() });
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir, "creating the data directory"))?;
        let lock = lock_dir(dir)?;
        // Written at each snapshot, long after the start: anything but a file there is said now.
        for name in ["snapshot.tmp", PEER_SNAPSHOT, OLD_LOG, PEER_END] {
            let path = dir.join(name);
            if let Some(what) = std::fs::metadata(&path).ok().as_ref().and_then(not_regular) {
                return Err(PersistError::NotRegular { path, what });
            }
        }
        let resync_settled = settle_resync(dir)?;
        let temp_removed = remove_temp_snapshot(dir)?;
        let snap_path = dir.join("snapshot");
        let log_path = dir.join("log");
        let mut rec = Recovered { resync_settled, temp_removed, ..Recovered::default() };
        // A snapshot is only ever written whole (temp file, rename): any damage, even a file
        // that ends inside its 16-byte header, is said.
        let (sequence, records, snap_err) = read_snapshot(&snap_path)?;
        (rec.sequence, rec.records) = (sequence, records);
        // Both files are read before anything is written: one that is not ours stops here.
        let log_read = read_log(&log_path)?;
        if let Some((offset, reason)) = snap_err {
            rec.tail_errors.push(TailError { path: snap_path.clone(), offset, reason });
            // Kept before anything rewrites it; then it holds what was recovered, so the next
            // start reads it clean and the log (records after its sequence) still follows it.
            rec.corrupt_copies.push(copy_aside(dir, "snapshot", "snapshot", "corrupt")?);
            write_snapshot_file(dir, rec.sequence, rec.records.iter().cloned())?;
        }
        let snap_seq = rec.sequence;
        // A compaction's segment (it did not finish): its records come before the log's. Read
        // like the log; folded into the snapshot below.
        let prev_path = dir.join(PREV_LOG);
        let prev_read = read_log(&prev_path)?;
        let had_prev = prev_read.is_some();
        if let Some(prev) = prev_read {
            append_after(&mut rec.records, &mut rec.sequence, prev.records, snap_seq);
            if let Some((offset, reason)) = prev.damage {
                rec.tail_errors.push(TailError { path: prev_path.clone(), offset, reason });
                rec.corrupt_copies.push(copy_aside(dir, PREV_LOG, PREV_LOG, "corrupt")?);
            }
        }
        let mut good_end = 8u64;
        let mut log_damaged = false;
        if let Some(log) = log_read {
            good_end = log.good_end;
            append_after(&mut rec.records, &mut rec.sequence, log.records, snap_seq);
            if let Some((offset, reason)) = log.damage {
                rec.tail_errors.push(TailError { path: log_path.clone(), offset, reason });
                log_damaged = true;
            }
        }
        for r in &rec.records {
            rec.sequence = rec.sequence.max(r.msg.sequence);
        }
        if log_damaged {
            // Everything from the damage on is cut, valid records after a bad one too: keep the
            // damaged file so they can be looked at (or salvaged) by hand.
            rec.corrupt_copies.push(copy_aside(dir, "log", "log", "corrupt")?);
        }
        if had_prev {
            // Finish the compaction a stop or a crash interrupted: everything recovered becomes
            // the snapshot (at the highest sequence), then the segment and the log go.
            let wall_ms = crate::clock::realtime_ns() / 1_000_000;
            write_snapshot_file(dir, rec.sequence, merge(rec.records.iter().cloned(), wall_ms).into_iter())?;
            std::fs::remove_file(&prev_path).map_err(io_err(&prev_path, "removing the compacted log segment"))?;
            fsync_dir(dir);
            good_end = 8;
        }
        let mut file = open_regular(
            &log_path,
            OpenOptions::new().create(true).truncate(false).read(true).write(true),
            "opening the log",
        )?;
        let len = file.metadata().map_err(io_err(&log_path, "reading the log size"))?.len();
        if len < 8 {
            file.set_len(0).map_err(io_err(&log_path, "resetting the log"))?;
            file.write_all(LOG_MAGIC).map_err(io_err(&log_path, "writing the log header"))?;
            good_end = 8;
        } else if good_end < len {
            file.set_len(good_end).map_err(io_err(&log_path, "truncating a bad log tail"))?;
        }
        file.seek(SeekFrom::Start(good_end)).map_err(io_err(&log_path, "seeking the log"))?;
        let store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            log: BufWriter::with_capacity(1 << 16, file),
            log_records: 0,
            dirty: false,
            good_len: good_end,
            prev: false,
            peer: None,
            switching: false,
            keep_aside: false,
            held: None,
            held_from: 0,
            held_over: false,
            #[cfg(test)]
            crash_at: None,
        };
        Ok((store, rec))
    }

    /// A step of a multi-step write: under test, where [`Store::crash_at`] stops it as a crash
    /// there would (an error, and no clean-up); nothing otherwise.
    fn step_done(&self, step: &'static str) -> Result<(), PersistError> {
        #[cfg(test)]
        if self.crash_at == Some(step) {
            let source = std::io::Error::other(format!("a crash the test simulates after `{step}`"));
            return Err(PersistError::Io { path: self.dir.clone(), context: "a simulated crash", source });
        }
        let _ = step;
        Ok(())
    }

    /// Records appended since the last snapshot or [`Store::rotate`].
    pub fn log_records(&self) -> u64 {
        self.log_records
    }

    /// Start a compaction: flush the log, move it to `log.prev` and go on in a fresh `log` (its
    /// header only), all on the calling thread and in time independent of the map's size; the
    /// fold of `log.prev` into the snapshot ([`compact_prev`]) runs elsewhere. `None` when a
    /// segment is still there (an earlier compaction failed: it is folded first) or a re-sync's
    /// snapshot waits to be put in place ([`Store::switch_pending`]: that goes first); the log
    /// stays as it is. `Some`: a second handle on the new log, for the syncer (as
    /// [`Store::log_handle`]). On an error nothing changed.
    pub fn rotate(&mut self) -> Result<Option<File>, PersistError> {
        if self.prev || self.switching {
            return Ok(None);
        }
        let handle = self.fresh_log(PREV_LOG, "moving the log aside for a compaction")?;
        self.prev = true;
        Ok(Some(handle))
    }

    /// Flush the log, rename it to `aside` and go on in a fresh `log` (its header only); a second
    /// handle on the new log, for the syncer. On an error the old log is put back: nothing changed.
    fn fresh_log(&mut self, aside: &str, context: &'static str) -> Result<File, PersistError> {
        self.flush()?;
        let (log, moved) = (self.dir.join("log"), self.dir.join(aside));
        std::fs::rename(&log, &moved).map_err(io_err(&moved, context))?;
        let fresh = open_regular(
            &log,
            OpenOptions::new().create(true).truncate(true).read(true).write(true),
            "creating the new log",
        )
        .and_then(|mut f| f.write_all(LOG_MAGIC).map(|()| f).map_err(io_err(&log, "writing the log header")))
        .and_then(|f| {
            let handle = f.try_clone().map_err(io_err(&log, "opening a second handle on the log"))?;
            Ok((f, handle))
        });
        let (file, handle) = match fresh {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&log);
                let _ = std::fs::rename(&moved, &log);
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut self.log, BufWriter::with_capacity(1 << 16, file));
        drop(old.into_parts());
        self.good_len = LOG_MAGIC.len() as u64;
        self.log_records = 0;
        self.dirty = true;
        Ok(handle)
    }

    /// A passive's re-sync starts: write the active's snapshot to `snapshot.peer` as it arrives
    /// ([`Store::peer_snapshot_entry`]), on the serving thread a record at a time, so that the
    /// end of the re-sync ([`Store::end_peer_snapshot`]) has no map to write. A failure here or
    /// later is kept and told by [`Store::end_peer_snapshot`] (the map is then written whole).
    /// An earlier re-sync's file not ended is replaced.
    pub fn begin_peer_snapshot(&mut self) {
        let path = self.dir.join(PEER_SNAPSHOT);
        let out = if self.switching {
            Err(format!("{}: the previous re-sync's snapshot is not in place yet", path.display()))
        } else if self.held.is_some() {
            Err(format!("{}: a full snapshot of the map is being written to it", path.display()))
        } else {
            // An earlier re-sync's end, if a crash left one, must not be taken for this one's.
            remove_if_there(&self.dir.join(PEER_END), "removing an earlier re-sync's end")
                .and_then(|()| {
                    open_regular(&path, OpenOptions::new().create(true).truncate(true).write(true), "creating")
                })
                .and_then(|f| {
                    let mut w = BufWriter::with_capacity(1 << 20, f);
                    w.write_all(SNAP_MAGIC)
                        .and_then(|()| w.write_all(&0u64.to_le_bytes()))
                        .map_err(io_err(&path, "writing"))?;
                    Ok(w)
                })
                .map_err(|e| e.to_string())
        };
        let opened = out.is_ok();
        self.peer = Some(PeerStream { out, buf: Vec::new(), opened, crc: crc32fast::Hasher::new(), len: 0 });
    }

    /// One entry of the active's snapshot (a re-sync under way; else nothing): appended to
    /// `snapshot.peer` (buffered).
    pub fn peer_snapshot_entry(&mut self, rec: &Record) {
        let Some(p) = self.peer.as_mut() else { return };
        let Ok(w) = p.out.as_mut() else { return };
        p.buf.clear();
        let path = self.dir.join(PEER_SNAPSHOT);
        let written =
            encode_record(rec, &mut p.buf).and_then(|()| w.write_all(&p.buf).map_err(io_err(&path, "writing")));
        match written {
            Ok(()) => {
                p.crc.update(&p.buf);
                p.len += p.buf.len() as u64;
            }
            Err(e) => p.out = Err(e.to_string()),
        }
    }

    /// The active's snapshot ended at `sequence` (its KTHXBAI): complete `snapshot.peer` (its
    /// sequence, flushed to the OS), write its end ([`PEER_END`]: a start that finds the
    /// re-sync not in place then puts it in place when the file matches its end, instead of
    /// dropping the log that followed it), move the log aside to `log.old` and go on in a fresh `log`
    /// (as [`Store::rotate`]: time independent of the map's size), whose records follow the new
    /// snapshot. [`switch_to_peer_snapshot`] puts it in place, off the serving thread (copying
    /// the old files aside first if `keep_aside`); until then a start recovers the files before
    /// the re-sync. `Ok`: a second handle on the new log, for the syncer. `Err`: why there is no
    /// complete `snapshot.peer` (nothing changed; the map must be written whole).
    pub fn end_peer_snapshot(&mut self, sequence: u64, keep_aside: bool) -> Result<File, String> {
        use std::os::unix::fs::FileExt as _;
        let path = self.dir.join(PEER_SNAPSHOT);
        let stream = self.peer.take().ok_or_else(|| format!("{}: no re-sync was written", path.display()))?;
        let mut w = stream.out?;
        let end = PeerEnd { sequence, len: stream.len, crc: stream.crc.finalize(), keep_aside };
        let file = w
            .flush()
            .map_err(io_err(&path, "flushing"))
            .and_then(|()| {
                let (f, _) = w.into_parts();
                f.write_all_at(&sequence.to_le_bytes(), SNAP_MAGIC.len() as u64)
                    .map_err(io_err(&path, "writing the snapshot's sequence"))
            })
            .and_then(|()| end.write(&self.dir))
            .and_then(|()| self.fresh_log(OLD_LOG, "moving the log aside for a re-sync"));
        match file {
            Ok(handle) => {
                self.switching = true;
                self.keep_aside = keep_aside;
                Ok(handle)
            }
            Err(e) => {
                let _ = std::fs::remove_file(self.dir.join(PEER_END));
                let _ = std::fs::remove_file(&path);
                Err(e.to_string())
            }
        }
    }

    /// A re-sync ended without its snapshot (the sync timed out, this server took over): the
    /// file it wrote, if any, is removed (never one an earlier re-sync's switch waits on).
    pub fn abandon_peer_snapshot(&mut self) {
        // `opened`: the file is still this re-sync's (a full snapshot of the map takes it over:
        // [`Store::begin_full_snapshot`]; a switch waits only on an ended one, taken already).
        if self.peer.take().is_some_and(|p| p.opened) {
            let _ = std::fs::remove_file(self.dir.join(PEER_SNAPSHOT));
        }
    }

    /// A re-sync's snapshot waits to be put in place ([`switch_to_peer_snapshot`]): `Some`, with
    /// whether the old files are to be kept aside first.
    pub fn switch_pending(&self) -> Option<bool> {
        self.switching.then_some(self.keep_aside)
    }

    /// [`switch_to_peer_snapshot`] succeeded: the re-sync's snapshot is in place, `log.prev` and
    /// `log.old` are gone.
    pub fn switched(&mut self) {
        self.switching = false;
        self.keep_aside = false;
        self.prev = false;
    }

    /// The compaction [`Store::rotate`] started is done ([`compact_prev`] succeeded): there is
    /// no segment left.
    pub fn compacted(&mut self) {
        self.prev = false;
    }

    /// Append one record (buffered; see [`Store::flush`]).
    pub fn append(&mut self, rec: &Record) -> Result<(), PersistError> {
        if let Some(held) = self.held.as_mut() {
            // After the frozen map: to the log that follows its snapshot (see `held`), as long
            // as they fit; past that they are dropped ([`Store::end_full_snapshot`] says so).
            if !self.held_over {
                encode_record(rec, held)?;
                if held.len() > HELD_MAX_BYTES {
                    (*held, self.held_over) = (Vec::new(), true);
                }
            }
            self.log_records += 1;
            return Ok(());
        }
        let mut buf = Vec::new();
        encode_record(rec, &mut buf)?;
        self.log.write_all(&buf).map_err(io_err(&self.dir.join("log"), "appending"))?;
        self.log_records += 1;
        self.dirty = true;
        Ok(())
    }

    /// Hand buffered records to the OS (survives a process crash).
    pub fn flush(&mut self) -> Result<(), PersistError> {
        let path = self.dir.join("log");
        self.log.flush().map_err(io_err(&path, "flushing"))?;
        let at = self.log.get_mut().stream_position().map_err(io_err(&path, "reading the log position"))?;
        // Records reached the OS: the next fsync has something to do (records buffered when an
        // fsync was asked for are not lost to it).
        self.dirty |= at != self.good_len;
        self.good_len = at;
        Ok(())
    }

    /// After a failed append or flush: drop every record not yet flushed (their
    /// updates were not acknowledged) and cut the log back to its last flushed
    /// end, so a record torn by the failure cannot hide later ones at recovery.
    pub fn rollback(&mut self) -> Result<(), PersistError> {
        self.cut_back("cutting back a failed write")
    }

    /// Drop the buffered records and cut the log to `good_len`, where the next record goes. The
    /// cut never grows the file: that would leave zeros before the next record.
    fn cut_back(&mut self, context: &'static str) -> Result<(), PersistError> {
        let path = self.dir.join("log");
        let file = self.log.get_ref().try_clone().map_err(io_err(&path, "reopening the log"))?;
        let old = std::mem::replace(&mut self.log, BufWriter::with_capacity(1 << 16, file));
        drop(old.into_parts());
        let f = self.log.get_mut();
        let len = f.metadata().map_err(io_err(&path, "reading the log size"))?.len();
        self.good_len = self.good_len.min(len);
        f.set_len(self.good_len).map_err(io_err(&path, context))?;
        f.seek(SeekFrom::Start(self.good_len)).map_err(io_err(&path, "seeking the log"))?;
        Ok(())
    }

    /// A second handle on the log's file, for the syncer thread's `fdatasync`: the same open
    /// file, so a sync through it makes durable what this store flushed. The file is replaced by
    /// a fresh one at [`Store::rotate`], [`Store::end_peer_snapshot`] and
    /// [`Store::write_snapshot`]: the syncer is then pointed at the new one.
    pub fn log_handle(&self) -> Result<File, PersistError> {
        self.log.get_ref().try_clone().map_err(io_err(&self.dir.join("log"), "opening a second handle on the log"))
    }

    /// Whether records were written since the last call (or [`Store::sync`]): an fsync has
    /// something to make durable. The caller that gets `true` owns that fsync; if it fails, it
    /// calls [`Store::mark_unsynced`] so the next one is tried.
    pub fn take_unsynced(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// An fsync asked for after [`Store::take_unsynced`] failed: the next one must be tried.
    pub fn mark_unsynced(&mut self) {
        self.dirty = true;
    }

    /// Flush and fsync the log (survives a machine crash).
    pub fn sync(&mut self) -> Result<(), PersistError> {
        self.flush()?;
        if self.dirty {
            self.log.get_ref().sync_data().map_err(io_err(&self.dir.join("log"), "fsyncing"))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Start a full snapshot of the map, written off the serving thread: the caller freezes the
    /// map (at the sequence of the last record appended) and has [`write_map_snapshot`] write it
    /// to `snapshot.peer` elsewhere, while appends go on here, held in memory (they follow the
    /// frozen map; the log they would go to is about to be moved aside). Then
    /// [`Store::end_full_snapshot`] (or [`Store::abandon_full_snapshot`] when the write failed),
    /// then [`switch_to_peer_snapshot`] puts it in place. A crash at any point recovers whole, in
    /// this order: `snapshot.peer` fsynced with its end, the log moved to `log.old` (a fresh
    /// `log` taking the held records and what follows), the rename, the old logs removed. A
    /// start before the log moved removes `snapshot.peer` (the files before it); after, puts it
    /// in place with the fresh log (as a re-sync's, at [`Store::open`]).
    ///
    /// Before, the map was written on the serving thread (1M keys of 100-byte values: 0.6-1.3 s
    /// without a HUGZ, a heartbeat or a snapshot served).
    pub fn begin_full_snapshot(&mut self) -> Result<(), PersistError> {
        let peer = self.dir.join(PEER_SNAPSHOT);
        let busy = match (self.switching, self.held.is_some()) {
            // The server puts a re-sync's snapshot in place before it writes one of the map.
            (true, _) => "a re-sync's snapshot waits to be put in place; it goes first",
            (_, true) => "a full snapshot of the map is already being written",
            _ => "",
        };
        if !busy.is_empty() {
            let source = std::io::Error::other(busy);
            return Err(PersistError::Io { path: peer, context: "writing a snapshot", source });
        }
        // A re-sync whose snapshot is still arriving writes the same file: it cannot be ended
        // now (its end says so, and the map is written whole again after it). Its writer goes
        // first, its buffer with it, before the file is truncated for this one.
        // The file is this snapshot's from now on: the re-sync's end must not remove it
        // ([`Store::abandon_peer_snapshot`]; it did, under the compactor writing the map, and
        // the log moved aside after it was then dropped as if the snapshot were in place).
        if let Some(p) = self.peer.as_mut().filter(|p| p.opened) {
            if p.out.is_ok() {
                p.out = Err(format!("{}: a full snapshot of the map was written meanwhile", peer.display()));
            }
            p.opened = false;
        }
        self.flush()?;
        self.held = Some(Vec::new());
        self.held_from = self.log_records;
        self.held_over = false;
        Ok(())
    }

    /// A full snapshot of the map is being written ([`Store::begin_full_snapshot`]), not yet
    /// ended or abandoned.
    pub fn full_pending(&self) -> bool {
        self.held.is_some()
    }

    /// The full snapshot's write failed ([`write_map_snapshot`] removed its files): the records
    /// held since [`Store::begin_full_snapshot`] are dropped (the data directory stays behind the
    /// map; the next full snapshot holds them) and appends go to the log again.
    pub fn abandon_full_snapshot(&mut self) {
        if self.held.take().is_some() {
            self.log_records = self.held_from;
        }
        self.held_over = false;
    }

    /// The frozen map is complete in `snapshot.peer` with its end ([`write_map_snapshot`]): move
    /// the log aside to `log.old` and go on in a fresh `log` (as [`Store::rotate`]: time
    /// independent of the map's size) that starts with the records held since the freeze; the
    /// snapshot then waits to be put in place ([`Store::switch_pending`],
    /// [`switch_to_peer_snapshot`], off the serving thread). `Ok`: a second handle on the new log,
    /// for the syncer, and why the held records could not be written to it, if they could not
    /// (the log is then cut back to its header: the data directory is behind the map again, but
    /// the snapshot still goes in place). `Err`: the log could not be moved (the held records are
    /// dropped; nothing changed, as far as the put-back of the log could undo it).
    pub fn end_full_snapshot(&mut self) -> Result<(File, Option<PersistError>), PersistError> {
        let Some(held) = self.held.take() else {
            let source = std::io::Error::other("no full snapshot of the map was begun");
            return Err(PersistError::Io { path: self.dir.join(PEER_SNAPSHOT), context: "ending a snapshot", source });
        };
        let records = self.log_records - self.held_from;
        self.log_records = self.held_from;
        let handle = self.fresh_log(OLD_LOG, "moving the log aside for a snapshot")?;
        fsync_dir(&self.dir);
        (self.switching, self.keep_aside) = (true, false);
        let path = self.dir.join("log");
        let written = if std::mem::take(&mut self.held_over) {
            let why = format!(
                "{records} updates arrived while the map was written, more than the {} KiB held for the log \
                 after it; they were dropped",
                HELD_MAX_BYTES >> 10
            );
            Err(PersistError::Io { path: path.clone(), context: "holding updates", source: std::io::Error::other(why) })
        } else {
            self.log.write_all(&held).map_err(io_err(&path, "appending")).and_then(|()| self.flush())
        };
        let lost = match written {
            Ok(()) => {
                self.log_records = records;
                None
            }
            Err(e) => {
                if let Err(cut) = self.cut_back("cutting back a failed write") {
                    crate::diag!("clone-server: {cut}");
                }
                Some(e)
            }
        };
        Ok((handle, lost))
    }

    /// Write a snapshot of `records` at `sequence` (the map's, written whole) and restart the log
    /// after it, on the calling thread: [`Store::begin_full_snapshot`], [`write_map_snapshot`],
    /// [`Store::end_full_snapshot`] and [`switch_to_peer_snapshot`] in a row (the server runs
    /// the second and the last on its compactor). A crash at any point recovers the files before
    /// it or after it, never a mix: see [`Store::begin_full_snapshot`].
    ///
    /// Before the order was snapshot, log moved, rename, the snapshot was renamed into place and
    /// the log then cut in place: a crash between the two left both, and a start read the log's
    /// records past the snapshot's sequence over it. Those are none when the snapshot is the
    /// same history (its sequence is the highest), but a passive that re-synced to an active
    /// behind its files writes the active's map at a lower sequence: the old log's later records
    /// came back over it, a state neither server held.
    ///
    /// The log's file changes: point the syncer at [`Store::log_handle`] after it.
    pub fn write_snapshot<'a>(
        &mut self,
        sequence: u64,
        records: impl Iterator<Item = Record> + 'a,
    ) -> Result<(), PersistError> {
        self.begin_full_snapshot()?;
        if let Err(e) = write_map_snapshot(&self.dir, sequence, records) {
            self.abandon_full_snapshot();
            return Err(e);
        }
        self.step_done("written")?;
        let (_, lost) = self.end_full_snapshot()?;
        if let Some(e) = lost {
            return Err(e);
        }
        self.step_done("log-moved")?;
        switch_to_peer_snapshot(&self.dir, false)?;
        self.switched();
        self.step_done("renamed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mdsub-persist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn rec(key: &str, seq: u64, body: &str) -> Record {
        let mut msg = KvMsg::new(key, seq, body);
        msg.uuid = Some([seq as u8; 16]);
        msg.set_prop("src", "a=b");
        Record { msg, expires_at_unix_ms: seq.is_multiple_of(2).then_some(123) }
    }

    /// A fresh data dir and its open store, holding one flushed record `/a` (1).
    fn one_record(name: &str) -> (PathBuf, Store) {
        let d = tmpdir(name);
        let (mut s, _) = Store::open(&d).expect("open");
        s.append(&rec("/a", 1, "x")).expect("append");
        s.flush().expect("flush");
        (d, s)
    }

    #[test]
    fn a_data_dir_is_used_by_one_store_at_a_time() {
        let _no_fork = crate::test_forks::no_fork();
        let (d, s) = one_record("lock");
        // A second open (as a second server would do) is refused before it reads or writes.
        let e = Store::open(&d).err().expect("the directory is in use");
        assert!(matches!(&e, PersistError::InUse { path } if path == &d), "{e}");
        assert!(e.to_string().contains("another clone server is using this data directory"), "{e}");
        drop(s);
        let (_s, rec) = Store::open(&d).expect("free again once the first store is closed");
        assert_eq!(rec.sequence, 1, "the first store's record is there");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_snapshot_write_removes_its_file_and_keeps_the_log() {
        let (d, mut s) = one_record("snapfail");
        // `snapshot.peer` cannot be created: a directory stands in its place.
        std::fs::create_dir_all(d.join(PEER_SNAPSHOT).join("in-the-way")).expect("mkdir");
        let e = s.write_snapshot(1, vec![rec("/a", 1, "x")].into_iter()).expect_err("the write fails");
        assert!(e.to_string().contains(PEER_SNAPSHOT), "{e}");
        assert!(!d.join(PEER_END).exists(), "no end for a file that is not there");
        assert_eq!(s.log_records(), 1, "the log is kept: the snapshot did not replace it");
        assert!(!s.full_pending(), "appends go to the log again");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_snapshot_whose_rename_fails_stays_pending_and_a_start_puts_it_in_place_with_the_log_after_it() {
        let _no_fork = crate::test_forks::no_fork();
        // Session 25's note: a failed rename whose put-back of the log also failed left the store
        // appending to a fresh log that a start rolled back (it removed `log.old` with no
        // `snapshot.peer` beside it). Now nothing is put back: the snapshot is complete with its
        // end once the log moves, the rename is tried again, and a start rolls forward.
        let (d, mut s) = one_record("renamefail");
        std::fs::create_dir_all(d.join("snapshot").join("in-the-way")).expect("mkdir");
        let map = vec![rec("/a", 1, "x"), rec("/b", 2, "y")];
        let e = s.write_snapshot(2, map.clone().into_iter()).expect_err("rename fails");
        assert!(e.to_string().contains("putting the re-sync's snapshot in place"), "{e}");
        assert_eq!(s.switch_pending(), Some(false), "it waits to be put in place");
        // Appended after it (an acknowledged update), then a crash: nothing is lost.
        s.append(&rec("/c", 3, "z")).expect("append");
        s.flush().expect("flush");
        crash(s);
        std::fs::remove_dir_all(d.join("snapshot")).expect("rmdir");
        let want = merge(map.into_iter().chain([rec("/c", 3, "z")]), wall());
        assert_eq!(recovered_state(&d), (want, 3));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_snapshot_written_elsewhere_keeps_the_appends_made_meanwhile_at_any_crash() {
        let _no_fork = crate::test_forks::no_fork();
        // The serving thread appends while the compactor writes the frozen map: those records
        // follow it, held until the log moves aside, then the first of the fresh log.
        for point in ["frozen", "written", "log-moved", "placed"] {
            let name = format!("held-{point}");
            let (d, mut s) = compaction_case(&name);
            let before = recovered_state_of_open(&d, &mut s);
            let map = merge(before.0.clone(), wall());
            s.begin_full_snapshot().expect("begin");
            let after_freeze = rec("/held", before.1 + 1, "after the freeze");
            s.append(&after_freeze).expect("held");
            s.flush().expect("flush");
            assert!(s.full_pending());
            if point != "frozen" {
                assert_eq!(write_map_snapshot(&d, before.1, map.clone().into_iter()).expect("write"), map.len() as u64);
            }
            if ["log-moved", "placed"].contains(&point) {
                let (_, lost) = s.end_full_snapshot().expect("end");
                assert!(lost.is_none());
                assert_eq!(s.log_records(), 1, "the held record is the new log's first");
            }
            if point == "placed" {
                switch_to_peer_snapshot(&d, false).expect("switch");
                s.switched();
            }
            crash(s);
            let got = recovered_state(&d);
            let mut want = before.clone();
            if ["log-moved", "placed"].contains(&point) {
                want = (merge(map.into_iter().chain([after_freeze]), wall()), before.1 + 1);
            }
            assert_eq!(got, want, "{name}");
            for f in [PEER_SNAPSHOT, OLD_LOG, PREV_LOG, PEER_END] {
                assert!(!d.join(f).exists(), "{name}: {f} settled");
            }
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn a_resync_ended_while_the_maps_snapshot_is_written_leaves_that_snapshot_alone() {
        let _no_fork = crate::test_forks::no_fork();
        // Before: a re-sync open when the map's full snapshot began kept its claim on
        // `snapshot.peer`; its end (KTHXBAI, a timeout, a takeover) removed the file the
        // compactor wrote the map to, the log then moved to `log.old`, and the switch, finding no
        // snapshot, removed `log.old`: every record of the old log was gone, said durable.
        for removed_when in ["before the map is written", "after the map is written"] {
            let name = format!("resync-during-full-{}", removed_when.len());
            let (d, mut s) = compaction_case(&name);
            let before = recovered_state_of_open(&d, &mut s);
            let map = merge(before.0.clone(), wall());
            s.begin_peer_snapshot();
            s.peer_snapshot_entry(&rec("/from-the-active", 1, "half a re-sync"));
            s.begin_full_snapshot().expect("begin");
            if removed_when.starts_with("before") {
                s.abandon_peer_snapshot();
            }
            write_map_snapshot(&d, before.1, map.clone().into_iter()).expect("write");
            if removed_when.starts_with("after") {
                s.abandon_peer_snapshot();
            }
            assert!(d.join(PEER_SNAPSHOT).exists(), "{removed_when}: the map's snapshot stays");
            let (_, lost) = s.end_full_snapshot().expect("end");
            assert!(lost.is_none());
            switch_to_peer_snapshot(&d, false).expect("switch");
            s.switched();
            crash(s);
            assert_eq!(recovered_state(&d), (map, before.1), "{removed_when}");
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn updates_past_the_held_bound_while_the_map_is_written_are_dropped_and_said_lost() {
        let _no_fork = crate::test_forks::no_fork();
        // Before: every update that arrived while the compactor wrote the map was held in memory,
        // however many, for as long as a slow disk took. Past HELD_MAX_BYTES they are dropped,
        // the snapshot ends with them said lost (the server falls behind: another full snapshot),
        // and the data directory recovers the map as written.
        let (d, mut s) = compaction_case("held-over");
        let before = recovered_state_of_open(&d, &mut s);
        let map = merge(before.0.clone(), wall());
        s.begin_full_snapshot().expect("begin");
        let n = (HELD_MAX_BYTES / 100 + 10) as u64;
        for i in 1..=n {
            s.append(&rec(&format!("/held{i}"), before.1 + i, &"v".repeat(100))).expect("held");
        }
        assert!(s.held.as_ref().is_some_and(|h| h.len() <= HELD_MAX_BYTES), "bounded");
        write_map_snapshot(&d, before.1, map.clone().into_iter()).expect("write");
        let (_, lost) = s.end_full_snapshot().expect("end");
        let lost = lost.expect("said lost").to_string();
        assert!(lost.contains(&format!("{n} updates arrived while the map was written")), "{lost}");
        assert_eq!(s.log_records(), 0, "none of them reached the log");
        switch_to_peer_snapshot(&d, false).expect("switch");
        s.switched();
        // The next snapshot starts clean: what fits is held again.
        s.begin_full_snapshot().expect("begin again");
        s.append(&rec("/after", before.1 + n + 1, "fits")).expect("held");
        assert!(!s.held_over);
        s.abandon_full_snapshot();
        crash(s);
        assert_eq!(recovered_state(&d), (map, before.1));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_append_after_a_snapshot_keeps_the_later_acknowledged_updates() {
        let _no_fork = crate::test_forks::no_fork();
        // Before: the snapshot cut the log to its header but left the last flushed end at the
        // old length; the rollback after a failed append grew the log back with zeros, the
        // next records went after them, and recovery stopped at the zeros (offset 8): every
        // update acknowledged since the snapshot was lost.
        let d = tmpdir("snaproll");
        let (mut s, _) = Store::open(&d).expect("open");
        let before: Vec<Record> = (1..=50).map(|i| rec(&format!("/k{i}"), i, "value before the snapshot")).collect();
        for r in &before {
            s.append(r).expect("append");
        }
        s.flush().expect("flush");
        s.write_snapshot(50, before.clone().into_iter()).expect("snapshot");
        assert_eq!(std::fs::metadata(d.join("log")).expect("log").len(), 8, "the log is its header");
        // The next append fails (say ENOSPC): the shell rolls the log back.
        s.append(&rec("/lost", 51, "not acknowledged")).expect("buffered");
        s.rollback().expect("rollback");
        assert_eq!(std::fs::metadata(d.join("log")).expect("log").len(), 8, "cut to the header, not grown");
        // Later updates are appended, flushed and published (acknowledged); then kill -9.
        let acked = vec![rec("/a", 51, "x"), rec("/b", 52, "y")];
        for r in &acked {
            s.append(r).expect("append");
        }
        s.flush().expect("flush");
        // No clean stop: nothing more reaches the file. The kernel drops a killed process's
        // lock; this one is let go by hand, as the store is never closed.
        s._lock.unlock().expect("unlock");
        std::mem::forget(s);
        let (_s, r) = Store::open(&d).expect("restart");
        assert!(r.tail_errors.is_empty(), "{:?}", r.tail_errors);
        assert_eq!(r.records[50..], acked[..], "every acknowledged update since the snapshot");
        assert_eq!((r.records.len(), r.sequence), (52, 52));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// What a start recovers from `d`: its records in key order as the server's map holds
    /// them (last value per key, no deletes), and the sequence.
    fn recovered_state(d: &Path) -> (Vec<Record>, u64) {
        let (s, r) = Store::open(d).expect("open");
        assert!(r.tail_errors.is_empty(), "{:?}", r.tail_errors);
        drop(s);
        (merge(r.records, wall()), r.sequence)
    }

    /// The wall clock in ms (the test records' deadlines, 123 ms after the epoch, have passed).
    fn wall() -> u64 {
        crate::clock::realtime_ns() / 1_000_000
    }

    /// A data dir with a snapshot of `/k0`..`/k99` at 100, then a log of 100 more updates (half
    /// of them to the same keys, some deletes), all flushed: what a server had acknowledged.
    fn compaction_case(name: &str) -> (PathBuf, Store) {
        let d = tmpdir(name);
        let (mut s, _) = Store::open(&d).expect("open");
        let first: Vec<Record> = (0..100).map(|i| rec(&format!("/k{i}"), i + 1, "old")).collect();
        s.write_snapshot(100, first.into_iter()).expect("snapshot");
        for i in 0..100u64 {
            let body = if i % 10 == 3 { "" } else { "new" };
            s.append(&rec(&format!("/k{}", i * 2), 101 + i, body)).expect("append");
        }
        s.flush().expect("flush");
        (d, s)
    }

    #[test]
    fn a_compaction_folds_the_old_segment_while_new_records_go_to_the_new_log() {
        let _no_fork = crate::test_forks::no_fork();
        let (d, mut s) = compaction_case("compact");
        let before = recovered_state_of_open(&d, &mut s);
        let handle = s.rotate().expect("rotate").expect("a new log");
        assert!(d.join(PREV_LOG).exists());
        assert_eq!(std::fs::metadata(d.join("log")).expect("log").len(), 8, "the new log is its header");
        drop(handle);
        assert!(s.rotate().expect("again").is_none(), "no second segment while one is there");
        // The serving thread goes on: later updates land in the new log.
        s.append(&rec("/later", 201, "x")).expect("append");
        s.flush().expect("flush");
        let done = compact_prev(&d, wall()).expect("compact").expect("a segment was folded");
        s.compacted();
        assert_eq!(done.sequence, 200);
        assert!(!d.join(PREV_LOG).exists() && !d.join("snapshot.tmp").exists());
        assert_eq!(done.keys as usize, before.0.len());
        s._lock.unlock().expect("unlock");
        std::mem::forget(s); // a kill -9: no clean stop
        let (state, seq) = recovered_state(&d);
        let mut want = before.0.clone();
        want.push(rec("/later", 201, "x"));
        want.sort_by(|a, b| a.msg.key.cmp(&b.msg.key));
        assert_eq!((state, seq), (want, 201));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The state a start would recover from `d` now, read while `s` holds the lock.
    fn recovered_state_of_open(d: &Path, s: &mut Store) -> (Vec<Record>, u64) {
        s._lock.unlock().expect("unlock");
        let state = recovered_state(d);
        s._lock.lock().expect("lock again");
        state
    }

    #[test]
    fn a_crash_at_any_point_of_a_compaction_loses_no_acknowledged_update() {
        let _no_fork = crate::test_forks::no_fork();
        // Where a kill -9 can leave the files: after the rotation; with a temp snapshot half
        // written; after the new snapshot's rename, before the segment is removed.
        for point in ["rotated", "tmp", "renamed"] {
            let (d, mut s) = compaction_case(&format!("crash-{point}"));
            let (mut want, _) = recovered_state_of_open(&d, &mut s);
            s.rotate().expect("rotate").expect("a new log");
            s.append(&rec("/later", 201, "x")).expect("append");
            s.flush().expect("flush");
            match point {
                "rotated" => {}
                "tmp" => std::fs::write(d.join("snapshot.tmp"), b"MDCLSNP1\x05").expect("torn temp file"),
                _ => {
                    // The fold ran to its rename: put the old segment back as if not yet removed.
                    let seg = std::fs::read(d.join(PREV_LOG)).expect("segment");
                    compact_prev(&d, wall()).expect("compact");
                    std::fs::write(d.join(PREV_LOG), seg).expect("segment back");
                }
            }
            s._lock.unlock().expect("unlock");
            std::mem::forget(s);
            let (state, seq) = recovered_state(&d);
            want.push(rec("/later", 201, "x"));
            want.sort_by(|a, b| a.msg.key.cmp(&b.msg.key));
            assert_eq!((&state, seq), (&want, 201), "crash {point}");
            assert!(!d.join(PREV_LOG).exists(), "{point}: the start finished the compaction");
            assert_eq!(std::fs::metadata(d.join("log")).expect("log").len(), 8, "{point}: folded, log cut");
            // And the next start reads the same.
            assert_eq!(recovered_state(&d), (state, 201), "{point}");
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn a_crash_at_any_point_of_a_full_snapshot_recovers_the_files_before_it_or_after_it_never_a_mix() {
        let _no_fork = crate::test_forks::no_fork();
        // The map written whole at 152 (a passive re-synced to an active behind the old files'
        // 200 and could not write its snapshot as it arrived: the old log's records 153..=200 are
        // of another history, never to come back over it) or at 300 (the usual case). Before, a
        // crash between the snapshot's rename and the log's cut read the old log's records past
        // 152 over the new snapshot: a state that never was.
        for at in [152u64, 300] {
            for point in ["renamed", "written", "log-moved", "done"] {
                let name = format!("full-{at}-{point}");
                let (d, mut s) = compaction_case(&name);
                let before = recovered_state_of_open(&d, &mut s);
                let map = merge(peer_map(at), wall());
                let after = (map.clone(), at);
                s.crash_at = (point != "done").then_some(point);
                let r = s.write_snapshot(at, map.into_iter());
                assert_eq!(r.is_ok(), point == "done", "{name}: {r:?}");
                crash(s);
                let got = recovered_state(&d);
                // Once the log moved aside, `snapshot.peer` is complete with its end: a start puts
                // it in place (before, it was removed and the old log put back).
                let want = if point == "written" { &before } else { &after };
                assert_eq!((&got.0, got.1), (&want.0, want.1), "{name}");
                assert_eq!(recovered_state(&d), got, "{name}: the next start reads the same");
                for f in [PEER_SNAPSHOT, OLD_LOG, PREV_LOG, "snapshot.tmp"] {
                    assert!(!d.join(f).exists(), "{name}: {f} settled");
                }
                let _ = std::fs::remove_dir_all(&d);
            }
        }
    }

    /// A state as a start recovers it: the records in key order, and the sequence.
    type State = (Vec<Record>, u64);

    /// The active's map a re-sync fetches: `/p0`..`/p49` at sequence `at` (their own sequences
    /// below it).
    fn peer_map(at: u64) -> Vec<Record> {
        (0..50u64).map(|i| rec(&format!("/p{i:02}"), at - 50 + i, "peer")).collect()
    }

    /// A data dir as a passive finds it when its re-sync ends: `compaction_case`'s files (and a
    /// `log.prev` left by a compaction, if `with_prev`), the active's map at `at` written as it
    /// arrived, the log restarted after it and two updates that followed it appended there.
    /// The state before the re-sync and the one after, as a start would recover them. `keep_aside`:
    /// the old files are to be copied aside before they are replaced.
    fn resync_case(name: &str, at: u64, with_prev: bool, keep_aside: bool) -> (PathBuf, Store, State, State) {
        let (d, mut s) = compaction_case(name);
        if with_prev {
            s.rotate().expect("rotate").expect("a segment");
            s.append(&rec("/k7", 201, "after the rotation")).expect("append");
            s.flush().expect("flush");
        }
        let before = state_of_a_copy(&d);
        assert_eq!(d.join(PREV_LOG).exists(), with_prev);
        s.begin_peer_snapshot();
        for r in peer_map(at) {
            s.peer_snapshot_entry(&r);
        }
        let handle = s.end_peer_snapshot(at, keep_aside).expect("the re-sync's file is complete");
        drop(handle);
        let later = [rec("/p01", at + 1, "later"), rec("/q", at + 2, "later")];
        for r in &later {
            s.append(r).expect("append");
        }
        s.flush().expect("flush");
        let mut after = peer_map(at);
        after.extend(later);
        (d, s, before, (merge(after, wall()), at + 2))
    }

    /// What a start would recover from a copy of `d` now (`d` itself is left as it is: a start
    /// there would finish a compaction).
    fn state_of_a_copy(d: &Path) -> (Vec<Record>, u64) {
        let copy = tmpdir(&format!("copy-of-{}", d.file_name().and_then(|n| n.to_str()).unwrap_or("dir")));
        std::fs::create_dir_all(&copy).expect("mkdir");
        for e in std::fs::read_dir(d).expect("dir") {
            let name = e.expect("entry").file_name();
            if name != "lock" {
                std::fs::copy(d.join(&name), copy.join(&name)).expect("copy");
            }
        }
        let state = recovered_state(&copy);
        let _ = std::fs::remove_dir_all(&copy);
        state
    }

    /// Kill -9 `s`: no clean stop; the kernel drops the lock.
    fn crash(s: Store) {
        s._lock.unlock().expect("unlock");
        std::mem::forget(s);
    }

    #[test]
    fn a_crash_at_any_point_of_a_resync_recovers_the_files_before_it_or_after_it_never_a_mix() {
        let _no_fork = crate::test_forks::no_fork();
        // The active's map at 150 (behind the old files' 200: their records past it must not
        // come back over it) or at 300 (ahead, the usual case); with or without a `log.prev`.
        // A crash once the re-sync's file is complete and its end written rolls forward: the
        // updates that followed it in the fresh log are kept (before, they were dropped with
        // it: gone if the active was lost too). One whose file did not reach the disk whole (a
        // machine crash: it is not fsynced before the switch) rolls back, as before.
        for (at, with_prev) in [(150, false), (150, true), (300, false), (300, true)] {
            let points = [
                "streaming",
                "end-no-old",
                "no-end",
                "torn",
                "cut-at-a-record",
                "zeroed",
                "no-new-log",
                "ended",
                "renamed",
                "prev-removed",
                "switched",
            ];
            for point in points {
                let name = format!("resync-{at}-{with_prev}-{point}");
                let (d, mut s, before, after) = resync_case(&name, at, with_prev, false);
                let peer = d.join(PEER_SNAPSHOT);
                let len = std::fs::metadata(&peer).expect("peer").len();
                let cut = |to: u64| {
                    OpenOptions::new().write(true).open(&peer).and_then(|f| f.set_len(to)).expect("cut");
                };
                let peer_only = (merge(peer_map(at), wall()), at);
                let want = match point {
                    "streaming" => {
                        // The snapshot was still arriving: a new one began, nothing ended.
                        s.begin_peer_snapshot();
                        s.peer_snapshot_entry(&rec("/p00", 1, "x"));
                        let _ = std::fs::rename(d.join(OLD_LOG), d.join("log")); // as before its end
                        &before
                    }
                    "end-no-old" => {
                        // Between the end's write and the log's move.
                        std::fs::rename(d.join(OLD_LOG), d.join("log")).expect("as before the move");
                        &before
                    }
                    "no-end" => {
                        // A machine crash lost the end (written, not fsynced).
                        std::fs::remove_file(d.join(PEER_END)).expect("rm");
                        &before
                    }
                    // Or the file's tail, or its last blocks (zeros where they were).
                    "torn" => {
                        cut(len - 1);
                        &before
                    }
                    "cut-at-a-record" => {
                        let mut one = Vec::new();
                        encode_record(&peer_map(at)[49], &mut one).expect("encode");
                        cut(len - one.len() as u64);
                        &before
                    }
                    "zeroed" => {
                        use std::os::unix::fs::FileExt as _;
                        let f = OpenOptions::new().write(true).open(&peer).expect("open");
                        f.write_all_at(&[0u8; 8], len - 8).expect("zeros");
                        &before
                    }
                    "no-new-log" => {
                        // Between the old log's rename and the new one's creation.
                        std::fs::remove_file(d.join("log")).expect("rm");
                        &peer_only
                    }
                    "ended" => &after,
                    _ => {
                        std::fs::rename(&peer, d.join("snapshot")).expect("rename");
                        if point != "renamed" {
                            let _ = std::fs::remove_file(d.join(PREV_LOG));
                        }
                        if point == "switched" {
                            std::fs::remove_file(d.join(OLD_LOG)).expect("rm");
                        }
                        &after
                    }
                };
                crash(s);
                let (s2, r) = Store::open(&d).expect("open");
                assert!(r.tail_errors.is_empty(), "{name}: {:?}", r.tail_errors);
                let said = r.resync_settled.clone().unwrap_or_default();
                drop(s2);
                for f in [PEER_SNAPSHOT, OLD_LOG, PEER_END] {
                    assert!(!d.join(f).exists(), "{name}: {f} settled");
                }
                let got = recovered_state(&d);
                assert_eq!((&got.0, got.1), (&want.0, want.1), "{name}: recovered {said}");
                if point != "switched" {
                    assert!(said.contains("re-sync"), "{name}: said: {said}");
                }
                let rolled_forward = ["no-new-log", "ended"].contains(&point);
                assert_eq!(said.contains("was put in place"), rolled_forward, "{name}: said: {said}");
                let _ = std::fs::remove_dir_all(&d);
            }
        }
    }

    #[test]
    fn a_full_snapshot_while_a_resync_arrives_ends_that_resync_unwritten_and_stays_whole() {
        let _no_fork = crate::test_forks::no_fork();
        // Both go through `snapshot.peer`: the re-sync's writer must not write into the full
        // snapshot's file (renamed to `snapshot`) when it ends.
        let (d, mut s) = compaction_case("full-during-resync");
        s.begin_peer_snapshot();
        for r in peer_map(300) {
            s.peer_snapshot_entry(&r);
        }
        let map = merge(peer_map(400), wall());
        s.write_snapshot(400, map.clone().into_iter()).expect("full snapshot");
        s.peer_snapshot_entry(&rec("/late", 299, "x"));
        let e = s.end_peer_snapshot(300, false).expect_err("the re-sync's file was replaced");
        assert!(e.contains("a full snapshot of the map was written meanwhile"), "{e}");
        assert_eq!(s.switch_pending(), None);
        crash(s);
        assert_eq!(recovered_state(&d), (map, 400));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_crash_before_a_resyncs_switch_rolls_forward_keeping_the_old_files_aside_when_asked() {
        let _no_fork = crate::test_forks::no_fork();
        // The active's map behind this server's files: they are copied aside before the
        // start puts the re-sync in place, as the compactor would have.
        let (d, s, before, after) = resync_case("resync-forward-aside", 150, true, true);
        crash(s);
        let (s2, r) = Store::open(&d).expect("open");
        let said = r.resync_settled.clone().unwrap_or_default();
        drop(s2);
        assert!(said.contains("was put in place") && said.contains("kept aside as"), "{said}");
        assert_eq!(recovered_state(&d), after);
        let kept = tmpdir("resync-forward-kept");
        std::fs::create_dir_all(&kept).expect("mkdir");
        let mut n = 0;
        for e in std::fs::read_dir(&d).expect("dir") {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            let Some(as_name) =
                ["snapshot", PREV_LOG, "log"].into_iter().find(|n| name.starts_with(&format!("{n}.behind-")))
            else {
                continue;
            };
            std::fs::copy(d.join(&name), kept.join(as_name)).expect("copy");
            n += 1;
        }
        assert_eq!(n, 3, "snapshot, log.prev and log kept aside");
        assert_eq!(recovered_state(&kept), before);
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&kept);
    }

    #[test]
    fn a_resync_put_in_place_keeps_the_appends_after_it_and_the_old_files_aside_when_asked() {
        let _no_fork = crate::test_forks::no_fork();
        let (d, mut s, before, after) = resync_case("resync-switch", 150, true, false);
        assert_eq!(s.switch_pending(), Some(false));
        assert!(s.rotate().expect("no rotation").is_none(), "the switch goes first");
        let e = s.write_snapshot(1, std::iter::empty()).expect_err("the switch goes first");
        assert!(e.to_string().contains("re-sync"), "{e}");
        s.begin_peer_snapshot();
        let e = s.end_peer_snapshot(9, false).expect_err("a second re-sync waits for the first");
        assert!(e.contains("not in place yet"), "{e}");
        s.begin_peer_snapshot();
        s.abandon_peer_snapshot();
        assert!(d.join(PEER_SNAPSHOT).exists(), "the first one's file is kept");
        let done = switch_to_peer_snapshot(&d, true).expect("switch");
        let copies = done.copies.expect("copies");
        s.switched();
        assert_eq!(s.switch_pending(), None);
        for f in [PEER_SNAPSHOT, OLD_LOG, PREV_LOG] {
            assert!(!d.join(f).exists(), "{f} gone");
        }
        // Later updates follow in the same log.
        s.append(&rec("/r", 153, "x")).expect("append");
        s.flush().expect("flush");
        crash(s);
        let mut want = after.0.clone();
        want.push(rec("/r", 153, "x"));
        want.sort_by(|a, b| a.msg.key.cmp(&b.msg.key));
        assert_eq!(recovered_state(&d), (want, 153));
        // The copies are the files before the re-sync: put back as a data dir, they recover it.
        let names: Vec<String> = copies.iter().filter_map(|c| c.file_name()?.to_str().map(str::to_string)).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let kept = tmpdir("resync-kept");
        std::fs::create_dir_all(&kept).expect("mkdir");
        for (copy, name) in copies.iter().zip(&names) {
            let as_name = ["snapshot", PREV_LOG, "log"].into_iter().find(|n| name.starts_with(&format!("{n}.behind-")));
            std::fs::copy(copy, kept.join(as_name.expect("a known name"))).expect("copy");
        }
        assert_eq!(recovered_state(&kept), before);
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&kept);
    }

    #[test]
    fn a_resync_whose_file_failed_or_was_abandoned_changes_nothing() {
        let _no_fork = crate::test_forks::no_fork();
        let (d, mut s) = compaction_case("resync-abandon");
        let before = recovered_state_of_open(&d, &mut s);
        // Abandoned (a timeout, a takeover): the file goes.
        s.begin_peer_snapshot();
        s.peer_snapshot_entry(&rec("/p", 1, "x"));
        s.abandon_peer_snapshot();
        assert!(!d.join(PEER_SNAPSHOT).exists());
        let e = s.end_peer_snapshot(5, false).expect_err("nothing to end");
        assert!(e.contains("no re-sync was written"), "{e}");
        // Its file could not be created (a directory in the way): said at its end, nothing moved.
        std::fs::create_dir_all(d.join(PEER_SNAPSHOT).join("x")).expect("mkdir");
        s.begin_peer_snapshot();
        s.peer_snapshot_entry(&rec("/p", 1, "x"));
        let e = s.end_peer_snapshot(5, false).expect_err("not written");
        assert!(e.contains(PEER_SNAPSHOT), "{e}");
        assert!(!d.join(OLD_LOG).exists() && s.switch_pending().is_none());
        std::fs::remove_dir_all(d.join(PEER_SNAPSHOT)).expect("rm");
        assert_eq!(recovered_state_of_open(&d, &mut s), before);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_temp_snapshot_a_crash_left_is_removed_at_start_and_said() {
        let _no_fork = crate::test_forks::no_fork();
        // Before: a kill -9 while a snapshot was written left `snapshot.tmp` (up to the map's
        // size) until the next snapshot, and nothing said it.
        let (d, s) = one_record("tmp-leftover");
        crash(s);
        std::fs::write(d.join("snapshot.tmp"), b"MDCLSNP1\x05 half written").expect("torn temp file");
        let (s, r) = Store::open(&d).expect("restart");
        assert!(!d.join("snapshot.tmp").exists(), "removed at start");
        assert_eq!(r.temp_removed, Some((d.join("snapshot.tmp"), 22)));
        assert_eq!((r.records.len(), r.sequence), (1, 1), "the state is the log's, untouched");
        crash(s);
        let (_s, r) = Store::open(&d).expect("again");
        assert_eq!(r.temp_removed, None, "nothing to remove the next time");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_compaction_streams_a_sorted_snapshot_and_merges_an_unsorted_one_in_memory_to_the_same_state() {
        for sorted in [true, false] {
            let d = tmpdir(&format!("compact-merge-{sorted}"));
            let (mut s, _) = Store::open(&d).expect("open");
            let first: Vec<Record> = (0..60).map(|i| rec(&format!("/k{i:02}"), i + 1, "old")).collect();
            // A re-sync writes a snapshot in the order its peer sent it.
            let order: Vec<Record> = if sorted { first } else { first.into_iter().rev().collect() };
            s.write_snapshot(60, order.into_iter()).expect("snapshot");
            s.append(&rec("/k01", 5, "at or below the snapshot's sequence: skipped")).expect("append");
            for i in (0..60u64).step_by(3) {
                let body = if i % 5 == 0 { "" } else { "new" };
                s.append(&rec(&format!("/k{i:02}"), 61 + i, body)).expect("append");
            }
            for i in 0..10u64 {
                s.append(&rec(&format!("/n{i}"), 200 + i, "only in the segment")).expect("append");
            }
            s.append(&rec("/k03", 301, "the last of two")).expect("append");
            s.flush().expect("flush");
            s.rotate().expect("rotate").expect("a segment");
            let (seq, records) = read_both(&d.join("snapshot"), &d.join(PREV_LOG)).expect("read");
            let want = merge(records, wall());
            let done = compact_prev(&d, wall()).expect("compact").expect("folded");
            assert_eq!((done.keys as usize, done.sequence), (want.len(), seq), "sorted {sorted}");
            assert_eq!((done.sequence, want.iter().any(|r| r.msg.key == b"/k03")), (301, true));
            let (snap_seq, written, damage) = read_snapshot(&d.join("snapshot")).expect("snapshot");
            assert_eq!((snap_seq, damage), (301, None));
            assert_eq!(written, want, "sorted {sorted}: the state a start reads, in key order");
            s._lock.unlock().expect("unlock");
            drop(s);
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn a_damaged_segment_stops_the_compaction_and_keeps_the_files() {
        let (d, mut s) = compaction_case("compact-damaged");
        s.rotate().expect("rotate").expect("a new log");
        let mut seg = std::fs::read(d.join(PREV_LOG)).expect("segment");
        let n = seg.len();
        seg[n - 1] ^= 0xff;
        std::fs::write(d.join(PREV_LOG), &seg).expect("damage");
        let snap = std::fs::read(d.join("snapshot")).expect("snapshot");
        let e = compact_prev(&d, 0).expect_err("damaged");
        assert!(matches!(e, PersistError::Damaged(_)), "{e}");
        assert!(e.to_string().contains("checksum mismatch") && e.to_string().contains("left the files"), "{e}");
        assert_eq!(std::fs::read(d.join("snapshot")).expect("snapshot"), snap, "untouched");
        assert_eq!(std::fs::read(d.join(PREV_LOG)).expect("segment"), seg, "untouched");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_zero_length_record_is_damage_not_a_record() {
        // Zeros pass the checksum (the CRC-32 of nothing is 0): the length says they are no record.
        let (got, end, err) = decode_records(&[0u8; 64], 8);
        assert!(got.is_empty());
        assert_eq!(end, 8);
        let (offset, reason) = err.expect("reported");
        assert_eq!(offset, 8);
        assert!(reason.contains("record length 0 is below the smallest record (29 bytes)"), "{reason}");
        // The smallest record there is still decodes.
        let mut buf = Vec::new();
        encode_record(&Record { msg: KvMsg::new("", 1, ""), expires_at_unix_ms: None }, &mut buf).expect("encode");
        assert_eq!(buf.len(), 8 + MIN_RECORD_BYTES);
        let (got, _, err) = decode_records(&buf, 8);
        assert_eq!((got.len(), err), (1, None));
    }

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn log_and_snapshot_recover() {
        let _no_fork = crate::test_forks::no_fork();
        let d = tmpdir("rt");
        let (mut s, r) = Store::open(&d).expect("open");
        assert!(r.records.is_empty());
        s.append(&rec("/a", 1, "x")).expect("append");
        s.append(&rec("/b", 2, "y")).expect("append");
        s.write_snapshot(2, vec![rec("/a", 1, "x"), rec("/b", 2, "y")].into_iter()).expect("snapshot");
        s.append(&rec("/c", 3, "z")).expect("append");
        s.sync().expect("sync");
        drop(s);
        let (_s, r) = Store::open(&d).expect("reopen");
        assert_eq!(r.records, vec![rec("/a", 1, "x"), rec("/b", 2, "y"), rec("/c", 3, "z")]);
        assert_eq!(r.sequence, 3);
        assert!(r.tail_errors.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_tail_is_reported_and_the_rest_recovered() {
        let _no_fork = crate::test_forks::no_fork();
        let d = tmpdir("tail");
        let (mut s, _) = Store::open(&d).expect("open");
        for i in 1..=3 {
            s.append(&rec("/k", i, "v")).expect("append");
        }
        s.sync().expect("sync");
        drop(s);
        let log = d.join("log");
        let mut bytes = std::fs::read(&log).expect("read");
        let full = bytes.len();
        bytes.truncate(full - 3); // torn last write
        std::fs::write(&log, &bytes).expect("write");
        let (mut s, r) = Store::open(&d).expect("reopen");
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.tail_errors.len(), 1);
        assert!(r.tail_errors[0].reason.contains("truncated"), "{}", r.tail_errors[0]);
        let third_at = r.tail_errors[0].offset;
        // new appends go after the good records
        s.append(&rec("/k", 4, "w")).expect("append");
        s.sync().expect("sync");
        drop(s);
        // flip a byte inside record 1's payload: everything from there is dropped, reported
        let mut bytes = std::fs::read(&log).expect("read");
        bytes[20] ^= 0xff;
        std::fs::write(&log, &bytes).expect("write");
        let (_s, r) = Store::open(&d).expect("reopen");
        assert!(r.records.is_empty());
        assert_eq!(r.tail_errors[0].offset, 8);
        assert!(r.tail_errors[0].reason.contains("checksum"));
        assert!(third_at > 8);
        // The damaged log, with the valid records after the bad one, was kept aside.
        let copy = r.corrupt_copies.first().cloned().expect("a copy of the damaged log");
        assert!(copy.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("log.corrupt-")));
        assert_eq!(std::fs::read(&copy).expect("copy readable"), bytes);
        assert_eq!(std::fs::metadata(&log).expect("log").len(), 8, "the log itself was cut");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A data dir holding a snapshot of `/a`, `/b` at sequence 2 and a log record `/c` (3).
    fn snapshot_and_log(name: &str) -> (PathBuf, Vec<u8>) {
        let d = tmpdir(name);
        let (mut s, _) = Store::open(&d).expect("open");
        s.write_snapshot(2, vec![rec("/a", 1, "x"), rec("/b", 2, "y")].into_iter()).expect("snapshot");
        s.append(&rec("/c", 3, "z")).expect("append");
        s.sync().expect("sync");
        drop(s);
        let snap = std::fs::read(d.join("snapshot")).expect("snapshot");
        (d, snap)
    }

    /// The one `*.corrupt-*` copy of `name` in `d`, and its bytes.
    fn the_copy_of(d: &Path, name: &str, r: &Recovered) -> Vec<u8> {
        assert_eq!(r.corrupt_copies.len(), 1, "{:?}", r.corrupt_copies);
        let copy = &r.corrupt_copies[0];
        let prefix = format!("{name}.corrupt-");
        assert!(copy.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)), "{copy:?}");
        assert_eq!(copy.parent(), Some(d));
        std::fs::read(copy).expect("copy readable")
    }

    #[test]
    fn a_snapshot_cut_inside_its_header_is_said_kept_aside_and_rewritten() {
        let _no_fork = crate::test_forks::no_fork();
        // Before: 9-15 bytes (magic + part of the sequence) recovered as an empty map, silently.
        for cut in [0, 3, 8, 12, 15] {
            let (d, snap) = snapshot_and_log(&format!("snapcut{cut}"));
            std::fs::write(d.join("snapshot"), &snap[..cut]).expect("cut");
            let (_s, r) = Store::open(&d).expect("a damaged snapshot does not stop the start");
            assert_eq!(r.tail_errors.len(), 1, "cut at {cut}: {:?}", r.tail_errors);
            let e = &r.tail_errors[0];
            assert_eq!((e.path.clone(), e.offset), (d.join("snapshot"), cut as u64), "{e}");
            assert!(e.reason.contains("truncated header") && e.reason.contains("of its 16 header bytes"), "{e}");
            assert_eq!(the_copy_of(&d, "snapshot", &r), &snap[..cut], "the damaged file, as it was");
            // What the log holds after the snapshot is recovered; the snapshot's records are lost.
            assert_eq!(r.records, vec![rec("/c", 3, "z")]);
            drop(_s);
            let (_s, again) = Store::open(&d).expect("reopen");
            assert!(again.tail_errors.is_empty() && again.corrupt_copies.is_empty(), "{:?}", again.tail_errors);
            assert_eq!(again.records, vec![rec("/c", 3, "z")]);
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn a_snapshot_damaged_mid_file_is_kept_aside_before_it_is_rewritten() {
        let _no_fork = crate::test_forks::no_fork();
        // Before: reported, but not copied, so the next snapshot rewrite destroyed the evidence.
        let (d, mut snap) = snapshot_and_log("snapmid");
        let last = snap.len() - 1;
        snap[last] ^= 0xff; // the second record's checksum no longer matches
        std::fs::write(d.join("snapshot"), &snap).expect("damage");
        let (mut s, r) = Store::open(&d).expect("open");
        assert_eq!(r.tail_errors.len(), 1);
        assert!(r.tail_errors[0].reason.contains("checksum") && r.tail_errors[0].offset > 16, "{}", r.tail_errors[0]);
        assert_eq!(the_copy_of(&d, "snapshot", &r), snap);
        assert_eq!(r.records, vec![rec("/a", 1, "x"), rec("/c", 3, "z")]);
        assert_eq!(r.sequence, 3);
        // The snapshot now holds what was recovered from it (at its sequence): the log still follows.
        s.append(&rec("/d", 4, "w")).expect("append");
        s.sync().expect("sync");
        drop(s);
        let (_s, again) = Store::open(&d).expect("reopen");
        assert!(again.tail_errors.is_empty() && again.corrupt_copies.is_empty(), "{:?}", again.tail_errors);
        assert_eq!(again.records, vec![rec("/a", 1, "x"), rec("/c", 3, "z"), rec("/d", 4, "w")]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_log_cut_inside_its_header_is_truncated_not_bad_magic() {
        let _no_fork = crate::test_forks::no_fork();
        // Before: `not an mdsub clone log file (bad magic)`, and the server refused to start.
        let (d, _) = snapshot_and_log("logcut");
        std::fs::write(d.join("log"), &LOG_MAGIC[..5]).expect("cut");
        let (mut s, r) = Store::open(&d).expect("a cut log does not stop the start");
        assert_eq!(r.tail_errors.len(), 1);
        let e = &r.tail_errors[0];
        assert_eq!((e.path.clone(), e.offset), (d.join("log"), 5), "{e}");
        assert!(e.reason.contains("truncated header: the file ends after 5 of its 8 header bytes"), "{e}");
        assert_eq!(the_copy_of(&d, "log", &r), &LOG_MAGIC[..5]);
        assert_eq!(r.records, vec![rec("/a", 1, "x"), rec("/b", 2, "y")], "the snapshot is whole");
        s.append(&rec("/c", 3, "z")).expect("append after the reset header");
        s.sync().expect("sync");
        drop(s);
        let (s, again) = Store::open(&d).expect("reopen");
        assert!(again.tail_errors.is_empty());
        assert_eq!(again.records.len(), 3);
        drop(s); // its lock would refuse the opens below
                 // A file that is not ours stays an error, and nothing is touched.
        for (name, bytes) in [("log", &b"XXXXX"[..]), ("log", b"NOTMDSUBLOG"), ("snapshot", b"MDCLLOG1")] {
            let before = std::fs::read_dir(&d).expect("dir").count();
            std::fs::write(d.join(name), bytes).expect("write");
            let e = Store::open(&d).err().expect("refused");
            assert!(e.to_string().contains("bad magic"), "{name}: {e}");
            assert_eq!(std::fs::read(d.join(name)).expect("kept"), bytes);
            assert_eq!(std::fs::read_dir(&d).expect("dir").count(), before, "no copy made");
            std::fs::write(d.join(name), if name == "log" { &LOG_MAGIC[..] } else { &[] }).expect("restore");
            if name == "snapshot" {
                let _ = std::fs::remove_file(d.join(name));
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    proptest::proptest! {
        #[test]
        fn decoding_garbage_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_records(&data, 8);
        }

        #[test]
        fn records_round_trip(key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
                              seq in proptest::prelude::any::<u64>(),
                              uuid in proptest::option::of(proptest::prelude::any::<[u8; 16]>()),
                              body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
                              exp in proptest::option::of(1u64..)) {
            let mut msg = KvMsg::new(key, seq, body);
            msg.uuid = uuid;
            msg.set_prop("src", "x=y");
            let rec = Record { msg, expires_at_unix_ms: exp };
            let mut buf = Vec::new();
            encode_record(&rec, &mut buf).expect("encode");
            let (got, end, err) = decode_records(&buf, 8);
            proptest::prop_assert_eq!(got, vec![rec]);
            proptest::prop_assert_eq!(end, 8 + buf.len() as u64);
            proptest::prop_assert!(err.is_none());
            // Every strict prefix is reported, never a panic, never a wrong record.
            for cut in 1..buf.len() {
                let (got, _, err) = decode_records(&buf[..cut], 8);
                proptest::prop_assert!(got.is_empty() && err.is_some());
            }
        }
    }
}
