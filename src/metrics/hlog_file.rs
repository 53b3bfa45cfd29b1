//! The interval log as a file an engine can write for days (`--hlog FILE` with
//! `--hlog-rotate-every`, `--hlog-rotate-bytes`, `--hlog-keep`): [`HlogFile`] closes FILE and
//! starts a new one when it is due, keeps the newest closed files and removes older ones, and
//! follows an external logrotate.
//!
//! A rotation happens only between intervals (as one ends, after it was written and flushed),
//! so every interval is in exactly one file, and each file is a whole interval log: its own
//! header, whose `StartTime`/`BaseTime` is its first interval's start. The closed file is
//! named by that start, in UTC: `run.hlog` → `run.20261206T170000.002Z.hlog` (the stamp
//! before the extension), so `ls` lists a log's closed files oldest first, before FILE, and
//! the name says which hour a file holds. FILE is always the file being written, and always
//! locked ([`Claimed::rotate`]): another run given it is refused throughout.
//!
//! An external logrotate is followed without a signal: as each interval starts the engine
//! looks at FILE, and when it was moved or removed (`create`, or the default rename) a new FILE
//! is claimed and started, and when it was emptied (`copytruncate`) it is started again from
//! its header. (SIGHUP ends the engine, as Ctrl-C does: give logrotate no `postrotate` signal.)
//!
//! A rotation, removal or follow that fails is one error for the collector to count
//! ([`Note::Error`]; the run's `write_errors`) and the engine goes on writing the file it has;
//! a failed rotation is tried again at the next bound (the next multiple of the age, or once
//! the file grew by the size again), not every interval.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::hlog::{HlogError, HlogWriter};
use crate::outfile::Claimed;

/// How many closed files `--hlog-keep` keeps by default (a day of hourly files).
pub const DEFAULT_KEEP: usize = 24;

/// When FILE is closed and how many closed files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Close FILE as the first interval ends at or after each multiple of this (UTC, since the
    /// Unix epoch: `1h` turns over on the hour).
    pub every: Option<Duration>,
    /// Close FILE as the first interval ends at which it holds this many bytes or more.
    pub bytes: Option<u64>,
    /// Closed files kept; older ones are removed, oldest first.
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation { every: None, bytes: None, keep: DEFAULT_KEEP }
    }
}

impl Rotation {
    /// Whether FILE is ever closed.
    pub fn is_on(&self) -> bool {
        self.every.is_some() || self.bytes.is_some()
    }

    /// The first multiple of `every` after `ns` (wall ns), if rotating by age.
    fn next_bound_ns(&self, ns: u64) -> Option<u64> {
        let every = u64::try_from(self.every?.as_nanos()).unwrap_or(u64::MAX).max(1);
        Some((ns / every).saturating_add(1).saturating_mul(every))
    }
}

/// Something a step of [`HlogFile`] has to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A closed file was removed (`--hlog-keep`), said at level info.
    Removed(String),
    /// FILE was closed or started anew, said at level debug.
    Started(String),
    /// A rotation, removal or follow failed: counted as a write error.
    Error(String),
}

/// The interval log being written, with its rotation.
pub struct HlogFile {
    claimed: Claimed,
    writer: HlogWriter<BufWriter<File>>,
    comment: String,
    rotation: Rotation,
    /// Wall ns of this file's start (its `StartTime`).
    start_ns: u64,
    /// Rotate as an interval ends at or after this (wall ns), if by age.
    due_ns: Option<u64>,
    /// Rotate once the file holds this many bytes, if by size.
    due_bytes: Option<u64>,
    /// Bytes of this file flushed to it (0 until its first flush): a file shorter than that was
    /// emptied by someone else.
    flushed: u64,
}

impl HlogFile {
    /// Start the interval log on a claimed file at `start_ns` (wall): its header, with `comment`.
    pub fn open(claimed: Claimed, start_ns: u64, comment: String, rotation: Rotation) -> Result<Self, HlogError> {
        let writer = start(&claimed, start_ns, &comment)?;
        Ok(HlogFile {
            due_ns: rotation.next_bound_ns(start_ns),
            due_bytes: rotation.bytes,
            claimed,
            writer,
            comment,
            rotation,
            start_ns,
            flushed: 0,
        })
    }

    /// Flush what was written to the file.
    pub fn flush(&mut self) -> Result<(), HlogError> {
        self.writer.flush()?;
        self.flushed = self.writer.written();
        Ok(())
    }

    /// FILE.
    pub fn path(&self) -> &Path {
        self.claimed.path()
    }

    /// Where the intervals are written.
    pub fn writer(&mut self) -> &mut HlogWriter<BufWriter<File>> {
        &mut self.writer
    }

    /// Before the interval starting at `start_ns` (wall) is written: when an external
    /// logrotate moved FILE away, claim a new FILE and start it; when it emptied FILE, start
    /// it again from the header. Devices and FIFOs are written as they are.
    pub fn follow(&mut self, start_ns: u64) -> Option<Note> {
        if !self.claimed.is_regular() {
            return None;
        }
        let named = match self.claimed.still_named() {
            Ok(named) => named,
            Err(e) => return Some(Note::Error(format!("{}: looking at it: {e}", self.path().display()))),
        };
        let (claimed, how) = if !named {
            match self.claimed.again() {
                Ok(c) => (c, "was moved or removed (an external logrotate?)"),
                Err(e) => {
                    return Some(Note::Error(format!(
                        "{e} (it was moved away or replaced; this run goes on writing the file it had)"
                    )))
                }
            }
        } else if self.flushed > 0 && self.claimed.file_len().is_ok_and(|n| n == 0) {
            (self.claimed.clone(), "was emptied (an external logrotate's copytruncate?)")
        } else {
            return None;
        };
        let path = self.path().display().to_string();
        match self.restart(claimed, start_ns) {
            Ok(()) => Some(Note::Started(format!("{path} {how}: started it anew"))),
            Err(e) => Some(Note::Error(format!("{path} {how}; starting it anew: {e}"))),
        }
    }

    /// After the interval ending at `end_ns` (wall) was written and flushed: when the file is
    /// due, close it under its start's name and start FILE anew, then remove the closed files
    /// beyond `keep`, oldest first. Its notes, in order.
    pub fn rotate_if_due(&mut self, end_ns: u64) -> Vec<Note> {
        let by_age = self.due_ns.is_some_and(|due| end_ns >= due);
        let by_size = self.due_bytes.is_some_and(|due| self.writer.written() >= due);
        if !(by_age || by_size) || !self.claimed.is_regular() {
            return Vec::new();
        }
        let closed = closed_name(self.path(), self.start_ns);
        let rotated = self.claimed.rotate(&closed).map_err(|e| e.to_string()).and_then(|fresh| {
            // FILE is the new, empty file now: a failed header is said like a failed write, and
            // the next interval's follow sees FILE still empty and starts it again.
            self.restart(fresh, end_ns).map_err(|e| format!("{}: {e}", self.path().display()))
        });
        let mut notes = Vec::new();
        match rotated {
            Ok(()) => {
                notes.push(Note::Started(format!("closed {} as {}", self.path().display(), closed.display())));
                notes.extend(self.prune());
            }
            Err(e) => {
                notes.push(Note::Error(format!(
                    "rotating to {}: {e} (this run goes on writing {}; tried again at the next bound)",
                    closed.display(),
                    self.path().display()
                )));
                // Tried again at the next bound, not every interval.
                self.due_ns = self.rotation.next_bound_ns(end_ns);
                self.due_bytes = self.rotation.bytes.map(|b| self.writer.written().saturating_add(b));
            }
        }
        notes
    }

    /// Write a header on `claimed` (emptied first) as of `start_ns` and make it the file.
    fn restart(&mut self, claimed: Claimed, start_ns: u64) -> Result<(), HlogError> {
        self.writer = start(&claimed, start_ns, &self.comment)?;
        self.claimed = claimed;
        self.start_ns = start_ns;
        self.flushed = 0;
        self.due_ns = self.rotation.next_bound_ns(start_ns);
        self.due_bytes = self.rotation.bytes;
        Ok(())
    }

    /// Remove closed files of FILE beyond `keep`, oldest first: one note per removal.
    fn prune(&self) -> Vec<Note> {
        let closed = match closed_files(self.path()) {
            Ok(c) => c,
            Err(e) => {
                return vec![Note::Error(format!(
                    "listing the closed files of {} (--hlog-keep): {e}",
                    self.path().display()
                ))]
            }
        };
        let surplus = closed.len().saturating_sub(self.rotation.keep);
        closed[..surplus]
            .iter()
            .map(|old| match std::fs::remove_file(old) {
                Ok(()) => Note::Removed(format!(
                    "removed {}, the oldest closed interval log beyond --hlog-keep {}",
                    old.display(),
                    self.rotation.keep
                )),
                Err(e) => Note::Error(format!("removing {} (--hlog-keep {}): {e}", old.display(), self.rotation.keep)),
            })
            .collect()
    }
}

/// A header written (into the buffer) on `claimed`, emptied first.
fn start(claimed: &Claimed, start_ns: u64, comment: &str) -> Result<HlogWriter<BufWriter<File>>, HlogError> {
    let f = claimed.rewrite().map_err(|source| HlogError::Io { what: "the interval log header", source })?;
    // Flushed with the first interval: a file that cannot be written (`/dev/full`) fails the
    // interval's write, counted, not the engine's start.
    HlogWriter::new(BufWriter::new(f), start_ns, comment)
}

/// `NAME.STAMP.EXT` beside `path` (`NAME.STAMP` when it has no extension): STAMP is `start_ns`
/// in UTC, `20261206T170000.002Z`.
pub fn closed_name(path: &Path, start_ns: u64) -> PathBuf {
    let stamp: String = crate::clock::utc_iso8601(start_ns).chars().filter(|c| !matches!(c, '-' | ':')).collect();
    let (stem, ext) = split_name(path);
    path.with_file_name(match ext {
        Some(ext) => format!("{stem}.{stamp}.{ext}"),
        None => format!("{stem}.{stamp}"),
    })
}

/// A file name's stem and extension, as [`closed_name`] puts the stamp between them.
fn split_name(path: &Path) -> (String, Option<String>) {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    (stem, path.extension().map(|e| e.to_string_lossy().into_owned()))
}

/// Whether `s` is a stamp [`closed_name`] writes: `YYYYMMDDTHHMMSS.mmmZ`.
fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 20 && digits(0..8) && b[8] == b'T' && digits(9..15) && b[15] == b'.' && digits(16..19) && b[19] == b'Z'
}

/// The closed files of `path` in its folder (names [`closed_name`] makes), oldest first.
pub fn closed_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (stem, ext) = split_name(path);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let rest = match &ext {
            Some(ext) => name.strip_suffix(ext.as_str()).and_then(|r| r.strip_suffix('.')),
            None => Some(name),
        };
        let stamp = rest.and_then(|r| r.strip_prefix(stem.as_str())).and_then(|r| r.strip_prefix('.'));
        if stamp.is_some_and(is_stamp) {
            found.push(path.with_file_name(name));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_names_sort_in_time_order_before_the_file_and_only_they_are_found() {
        let d = crate::test_dir("hlog-file-names");
        let path = d.join("run.hlog");
        // 2026-12-06T17:00:00.002Z, then 9.998 s later, then past midnight.
        let t = 1_796_576_400_002_000_000u64;
        let names: Vec<PathBuf> =
            [t, t + 9_998_000_000, t + 25_200_000_000_000].map(|ns| closed_name(&path, ns)).into();
        assert_eq!(names[0], d.join("run.20261206T170000.002Z.hlog"));
        assert_eq!(names[2], d.join("run.20261207T000000.002Z.hlog"));
        for n in names.iter().rev() {
            std::fs::write(n, b"").expect("write");
        }
        for other in ["run.hlog", "run.x.hlog", "run.20261206T170000.002Z.hgrm", "other.20261206T170000.002Z.hlog"] {
            std::fs::write(d.join(other), b"").expect("write");
        }
        assert_eq!(closed_files(&path).expect("listed"), names);
        assert!(
            names.iter().all(|n| n.file_name() < path.file_name()),
            "ls lists FILE after its closed files: {names:?}"
        );
        assert_eq!(closed_name(&d.join("plain"), t), d.join("plain.20261206T170000.002Z"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn age_bounds_are_multiples_of_the_duration() {
        let r = Rotation { every: Some(Duration::from_secs(3600)), ..Default::default() };
        let h = 3_600_000_000_000u64;
        assert_eq!(r.next_bound_ns(5 * h + 1), Some(6 * h));
        assert_eq!(r.next_bound_ns(6 * h), Some(7 * h), "a file started on the bound runs to the next");
        assert_eq!(Rotation::default().next_bound_ns(5 * h), None);
    }

    /// Keep-N: a rotation keeps the newest `keep` closed files and removes the older ones, one
    /// note each, oldest first; a rotation whose closed name is taken changes nothing, is one
    /// error, and is not tried again before the next bound.
    #[test]
    fn a_rotation_keeps_the_newest_closed_files_and_never_overwrites_one() {
        let d = crate::test_dir("hlog-file-keep");
        let path = d.join("k.hlog");
        let t = 1_796_576_400_000_000_000u64;
        let old: Vec<PathBuf> = (1..=3).map(|i| closed_name(&path, t - i * 1_000_000_000)).collect();
        for o in &old {
            std::fs::write(o, b"older").expect("write");
        }
        let claimed = Claimed::claim("--hlog", &path).expect("claimed");
        let rotation = Rotation { every: Some(Duration::from_secs(1)), bytes: None, keep: 2 };
        let mut f = HlogFile::open(claimed, t, "test".into(), rotation).expect("open");
        assert!(f.rotate_if_due(t + 999_000_000).is_empty(), "not due before the next second");
        let notes = f.rotate_if_due(t + 1_000_000_000);
        assert!(matches!(&notes[0], Note::Started(s) if s.contains("closed")), "{notes:?}");
        let removed: Vec<&Note> = notes.iter().filter(|n| matches!(n, Note::Removed(_))).collect();
        assert_eq!(removed.len(), 2, "{notes:?}");
        assert!(matches!(removed[0], Note::Removed(s) if s.contains(&*old[2].to_string_lossy())), "oldest first");
        assert!(!old[2].exists() && !old[1].exists() && old[0].exists());
        let first = closed_name(&path, t);
        assert!(std::fs::read_to_string(&first).expect("closed").contains("#[StartTime: "));
        assert_eq!(closed_files(&path).expect("listed"), vec![old[0].clone(), first]);
        // The next closed name taken: nothing replaced, one error, FILE still written.
        let taken = closed_name(&path, t + 1_000_000_000);
        std::fs::write(&taken, b"not ours").expect("write");
        let notes = f.rotate_if_due(t + 2_000_000_000);
        assert!(matches!(&notes[..], [Note::Error(e)] if e.contains("File exists")), "{notes:?}");
        assert_eq!(std::fs::read(&taken).expect("read"), b"not ours");
        assert!(f.rotate_if_due(t + 2_500_000_000).is_empty(), "not tried again before the next bound");
        assert!(Claimed::claim("--hlog", &path).is_err(), "FILE is still locked");
        let _ = std::fs::remove_dir_all(&d);
    }
}
