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
//! locked ([`Claimed::rotate`]): another run given it is refused throughout. (On a file system
//! without hard links a rotation renames instead, and FILE is missing for a moment between the
//! two renames: said once.)
//!
//! A run never loses an earlier run's FILE ([`claim_keeping_previous`]): before it writes, an
//! interval log found there is closed as a rotation closes it, by its own start, rotation on or
//! not; anything else there is refused, left as it was.
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
use std::path::Path;
use std::time::Duration;

use super::hlog::{HlogError, HlogWriter};
use crate::outfile::{closed_files, closed_name, judge_earlier, Claimed, Closing, Earlier, Judged, KeepError, Locked};

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
    /// Something a run's operator is told once, at level info: an earlier run's FILE kept, or
    /// rotations made by renames on a file system without hard links.
    Said(String),
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
    /// Whether a rotation by renames (no hard links) was said already.
    said_renames: bool,
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
            said_renames: false,
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
        let rotated = self.claimed.rotate(&closed).map_err(|e| e.to_string()).and_then(|(fresh, how)| {
            // FILE is the new, empty file now: a failed header is said like a failed write, and
            // the next interval's follow sees FILE still empty and starts it again.
            self.restart(fresh, end_ns).map(|()| how).map_err(|e| format!("{}: {e}", self.path().display()))
        });
        let mut notes = Vec::new();
        match rotated {
            Ok(how) => {
                notes.push(Note::Started(format!("closed {} as {}", self.path().display(), closed.display())));
                if how == Closing::Renamed && !self.said_renames {
                    self.said_renames = true;
                    notes.push(Note::Said(format!(
                        "{}: this file system has no hard links, so each rotation renames the file to its closed \
                         name and then the new file to {0}: {0} is missing for a moment between the two renames \
                         (no interval is lost)",
                        self.path().display()
                    )));
                }
                notes.extend(prune(self.path(), self.rotation.keep));
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
}

/// Interval timestamps at or above this many seconds are since the epoch, not since a base
/// time (HdrHistogram's readers take a year as that bound).
const ABSOLUTE_S: f64 = 365.0 * 24.0 * 3600.0;

/// Claim `--hlog FILE` for a run without losing what an earlier run left in it
/// ([`crate::outfile::claim_keeping`]). FILE holding an interval log with intervals (the earlier run's open file,
/// rotated or not) is closed as a rotation closes it: kept under [`closed_name`] by its own start
/// (its `StartTime`, else its `BaseTime`, else its first interval's time, else the file's
/// modification time), never over a file already there, and a new FILE is claimed in its place.
/// An empty FILE, or one holding only a header or blank lines (no interval to lose), is emptied.
/// Anything else, not an interval log, is refused and left as it was: put under a closed name it
/// would be removed by `--hlog-keep` later. With rotation on, the closed files beyond `keep` are
/// removed then (the kept one counts). Its notes: the keep and the removals.
pub fn claim_keeping_previous(locked: Locked, rotation: &Rotation) -> Result<(Claimed, Vec<Note>), KeepError> {
    claim_judged(judge_previous(locked)?, rotation)
}

/// Judge what an earlier run left in `--hlog FILE`, changing nothing yet
/// ([`claim_keeping_previous`] is this, then [`claim_judged`]).
pub fn judge_previous(locked: Locked) -> Result<Judged, KeepError> {
    judge_earlier(locked, "an HdrHistogram interval log", |head, whole| {
        Ok(match previous_log(head, whole)? {
            Some(start_s) => Earlier::Keep(start_s.and_then(secs_to_ns)),
            None => Earlier::Nothing,
        })
    })
}

/// Claim a judged `--hlog FILE` ([`judge_previous`]): keep or empty it, then, with rotation on,
/// remove the closed files beyond `keep` (the kept one counts). Its notes: the keep and the
/// removals.
pub fn claim_judged(judged: Judged, rotation: &Rotation) -> Result<(Claimed, Vec<Note>), KeepError> {
    let path = judged.path().to_path_buf();
    let (claimed, kept) = judged.claim()?;
    let mut notes: Vec<Note> = kept.into_iter().map(Note::Said).collect();
    if rotation.is_on() {
        notes.extend(prune(&path, rotation.keep));
    }
    Ok((claimed, notes))
}

/// What an earlier run left in FILE, judged by its first bytes (`whole`: all of them):
/// `Ok(Some(start))` for an interval log with intervals, with its start in seconds since the epoch
/// when it says (`StartTime`, else `BaseTime`, else its first interval's time when that is
/// absolute); `Ok(None)` for a header with no interval after it, or blank lines only; `Err(why)` for
/// anything else.
fn previous_log(head: &[u8], whole: bool) -> Result<Option<Option<f64>>, String> {
    let text = String::from_utf8_lossy(head);
    if whole && text.trim().is_empty() {
        // Blank lines only (an `echo > FILE`): nothing to lose, emptied as an empty FILE is.
        return Ok(None);
    }
    let (mut header, mut start, mut base) = (false, None, None);
    for (n, raw) in text.split_inclusive('\n').enumerate() {
        let line = raw.trim_end_matches(['\n', '\r']);
        if let Some(r) = line.strip_prefix("#[StartTime: ") {
            (start, header) = (leading_secs(r), true);
        } else if let Some(r) = line.strip_prefix("#[BaseTime: ") {
            (base, header) = (leading_secs(r), true);
        } else if line.starts_with("#[Histogram log format version") || line.starts_with("\"StartTimestamp\"") {
            header = true;
        } else if !line.starts_with('#') && !line.is_empty() {
            return match interval_time(line) {
                Some(t) => Ok(Some(start.or(base).or((t >= ABSOLUTE_S).then_some(t)))),
                // A last line cut short: by this read (keep the file), or by the end of the run
                // that wrote it (no whole interval in it: nothing to keep).
                None if header && !raw.ends_with('\n') => Ok((!whole).then_some(start.or(base))),
                None => {
                    let shown: String = line.chars().take(40).collect();
                    Err(format!("line {} is neither a comment nor an interval: {shown:?}", n + 1))
                }
            };
        }
    }
    if header {
        // Comments to the end of what was read: with more of the file unread, intervals may
        // follow (a header alone is nothing to lose only when it is all the file holds).
        Ok((!whole).then_some(start.or(base)))
    } else {
        Err("no interval log header in it".into())
    }
}

/// Seconds since the epoch as ns, to the ms (as a log's header states them); `None` past what
/// ns in a `u64` hold (year 2554: not a time, a header in other units).
fn secs_to_ns(s: f64) -> Option<u64> {
    let ms = (s * 1e3).round();
    (ms < (u64::MAX / 1_000_000) as f64).then(|| ms as u64 * 1_000_000)
}

/// The seconds a `#[StartTime: …]` or `#[BaseTime: …]` header starts with.
fn leading_secs(rest: &str) -> Option<f64> {
    rest.split_whitespace().next()?.parse().ok().filter(|s: &f64| s.is_finite() && *s > 0.0)
}

/// The start time of an interval line, `[Tag=T,]start,length,max,histogram`.
fn interval_time(line: &str) -> Option<f64> {
    let rest = match line.strip_prefix("Tag=") {
        Some(r) => r.split_once(',')?.1,
        None => line,
    };
    let mut fields = rest.splitn(4, ',');
    let t: f64 = fields.next()?.parse().ok()?;
    for _ in 0..2 {
        fields.next()?.parse::<f64>().ok()?;
    }
    fields.next().filter(|h| !h.is_empty())?;
    (t.is_finite() && t >= 0.0).then_some(t)
}

/// Remove closed files of `path` beyond `keep`, oldest first: one note per removal.
fn prune(path: &Path, keep: usize) -> Vec<Note> {
    let closed = match closed_files(path) {
        Ok(c) => c,
        Err(e) => {
            return vec![Note::Error(format!("listing the closed files of {} (--hlog-keep): {e}", path.display()))]
        }
    };
    let surplus = closed.len().saturating_sub(keep);
    closed[..surplus]
        .iter()
        .map(|old| match std::fs::remove_file(old) {
            Ok(()) => Note::Removed(format!(
                "removed {}, the oldest closed interval log beyond --hlog-keep {keep}",
                old.display()
            )),
            Err(e) => Note::Error(format!("removing {} (--hlog-keep {keep}): {e}", old.display())),
        })
        .collect()
}

/// A header written (into the buffer) on `claimed`, emptied first.
fn start(claimed: &Claimed, start_ns: u64, comment: &str) -> Result<HlogWriter<BufWriter<File>>, HlogError> {
    let f = claimed.rewrite().map_err(|source| HlogError::Io { what: "the interval log header", source })?;
    // Flushed with the first interval: a file that cannot be written (`/dev/full`) fails the
    // interval's write, counted, not the engine's start.
    HlogWriter::new(BufWriter::new(f), start_ns, comment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
    /// An interval log with one interval, as the engine writes it, started at `start_ns`.
    fn a_log(start_ns: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = HlogWriter::new(&mut out, start_ns, "an earlier run").expect("header");
        let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        h.record(1_000).expect("record");
        w.write("shard0.total", start_ns, start_ns + 1_000_000_000, &h).expect("interval");
        w.flush().expect("flush");
        drop(w);
        out
    }

    fn lock(path: &Path) -> Locked {
        crate::outfile::lock_all(&[("--hlog", path)]).expect("locked").remove(0)
    }

    /// An earlier run's FILE is kept under its start's closed name and a new FILE claimed, said
    /// once, and counted in keep-N; one with a header only is emptied (nothing to lose); anything
    /// else is refused and left as it was; a closed name taken is refused, nothing replaced.
    #[test]
    fn an_earlier_runs_log_is_kept_by_its_start_and_anything_else_is_refused() {
        let _no_fork = crate::test_forks::no_fork();
        let d = crate::test_dir("hlog-file-previous");
        let path = d.join("p.hlog");
        let t = 1_796_576_400_002_000_000u64;
        let earlier = a_log(t);
        std::fs::write(&path, &earlier).expect("write");
        let older = closed_name(&path, t - 3_600_000_000_000);
        std::fs::write(&older, a_log(t - 3_600_000_000_000)).expect("write");
        let rotation = Rotation { every: Some(Duration::from_secs(3600)), bytes: None, keep: 1 };
        let (claimed, notes) = claim_keeping_previous(lock(&path), &rotation).expect("claimed");
        let kept = d.join("p.20261206T170000.002Z.hlog");
        assert!(
            matches!(&notes[..], [Note::Said(k), Note::Removed(r)]
                if k.contains(&format!("({} bytes, from 2026-12-06T17:00:00.002Z) as {}", earlier.len(), kept.display()))
                    && r.contains(&*older.to_string_lossy())),
            "{notes:?}"
        );
        assert_eq!(std::fs::read(&kept).expect("kept"), earlier, "kept as it was");
        assert_eq!(std::fs::metadata(&path).expect("FILE").len(), 0, "a new FILE");
        assert!(Claimed::claim("--hlog", &path).is_err(), "the new FILE is locked");
        drop(claimed);

        // A header only: emptied, nothing kept (without rotation: nothing removed either).
        let mut header_only = Vec::new();
        HlogWriter::new(&mut header_only, t, "no interval").and_then(|mut w| w.flush()).expect("header");
        std::fs::write(&path, &header_only).expect("write");
        let (_c, notes) = claim_keeping_previous(lock(&path), &Rotation::default()).expect("claimed");
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(std::fs::metadata(&path).expect("FILE").len(), 0);
        assert_eq!(closed_files(&path).expect("listed"), vec![kept.clone()]);
        drop(_c);

        // Blank lines only: nothing to lose, emptied as a header only is.
        std::fs::write(&path, b"\n \r\n").expect("write");
        let (_c, notes) = claim_keeping_previous(lock(&path), &Rotation::default()).expect("claimed");
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(std::fs::metadata(&path).expect("FILE").len(), 0);
        drop(_c);

        // Not an interval log: refused, left as it was, nothing closed.
        for (other, why) in [
            (&b"#!/bin/sh\necho hello\n"[..], "line 2 is neither a comment nor an interval: \"echo hello\""),
            (&b"# only comments\n"[..], "no interval log header in it"),
            (&b"\x00\x01\x02binary"[..], "line 1 is neither"),
        ] {
            std::fs::write(&path, other).expect("write");
            let e = claim_keeping_previous(lock(&path), &rotation).expect_err("refused");
            assert!(matches!(e, KeepError::NotOurs { .. }), "{e}");
            let said = e.to_string();
            assert!(said.contains(why) && said.ends_with("move the file away or give another path"), "{said}");
            assert_eq!(std::fs::read(&path).expect("read"), other, "left as it was");
            assert_eq!(closed_files(&path).expect("listed"), vec![kept.clone()]);
        }

        // Its closed name taken by another file: refused, both left as they were.
        std::fs::write(&path, &earlier).expect("write");
        std::fs::write(&kept, b"someone else's").expect("write");
        let e = claim_keeping_previous(lock(&path), &rotation).expect_err("the name is taken");
        assert!(matches!(e, KeepError::Keep { .. }) && e.to_string().contains("File exists"), "{e}");
        assert_eq!(std::fs::read(&path).expect("read"), earlier);
        assert_eq!(std::fs::read(&kept).expect("read"), b"someone else's");
        // A run that ended between a rotation's link and rename left FILE linked as its closed
        // name already: that is no conflict, and a new FILE is claimed.
        std::fs::remove_file(&kept).expect("remove");
        std::fs::hard_link(&path, &kept).expect("link");
        let (_c, notes) = claim_keeping_previous(lock(&path), &Rotation::default()).expect("claimed");
        assert!(matches!(&notes[..], [Note::Said(_)]), "{notes:?}");
        assert_eq!(std::fs::read(&kept).expect("kept"), earlier);
        assert_eq!(std::fs::metadata(&path).expect("FILE").len(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An earlier run's FILE is kept past what its first read holds: a header, then more comment
    /// lines than 64 KiB, then intervals. Before, it was judged a header alone and emptied.
    #[test]
    fn an_earlier_log_with_a_long_preamble_is_kept() {
        let d = crate::test_dir("hlog-file-previous-long");
        let path = d.join("e.hlog");
        let t = 1_796_576_400_002_000_000u64;
        let log = a_log(t);
        let at = log.windows(4).position(|w| w == b"Tag=").expect("an interval line");
        let mut long = log[..at].to_vec();
        while long.len() <= crate::outfile::HEAD_BYTES as usize {
            long.extend_from_slice(b"#[a comment line another tool writes before its first interval]\n");
        }
        long.extend_from_slice(&log[at..]);
        std::fs::write(&path, &long).expect("write");
        let (_c, notes) = claim_keeping_previous(lock(&path), &Rotation::default()).expect("claimed");
        assert!(matches!(&notes[..], [Note::Said(k)] if k.contains("kept an earlier run's")), "{notes:?}");
        assert_eq!(std::fs::read(closed_name(&path, t)).expect("kept"), long, "kept as it was");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An earlier run's FILE is kept under the name its own rotation gives it, so a run that
    /// ended between a rotation's link and rename leaves one closed file, not two. Before, a
    /// start 0.5 ms or more past a ms was named a ms later, from its rounded `StartTime`.
    #[test]
    fn an_earlier_log_is_kept_under_the_name_its_rotation_gives_it() {
        let _no_fork = crate::test_forks::no_fork();
        let d = crate::test_dir("hlog-file-previous-name");
        let path = d.join("e.hlog");
        // A run rotating at a start 0.7 ms past a ms linked its file as its closed name and ended.
        let t2 = 1_796_580_000_002_700_000u64;
        let rotation = Rotation { every: Some(Duration::from_secs(3600)), bytes: None, keep: 10 };
        let mut f =
            HlogFile::open(Claimed::claim("--hlog", &path).expect("claimed"), t2, "r".into(), rotation).expect("open");
        let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        h.record(7).expect("record");
        f.writer().write("x", t2, t2 + 1_000_000_000, &h).expect("write");
        f.flush().expect("flush");
        let linked = closed_name(&path, t2);
        std::fs::hard_link(&path, &linked).expect("the rotation's link");
        let written = std::fs::read(&path).expect("FILE");
        drop(f);
        let (_c, notes) = claim_keeping_previous(lock(&path), &rotation).expect("claimed");
        assert!(matches!(&notes[..], [Note::Said(k)] if k.contains(&*linked.to_string_lossy())), "{notes:?}");
        assert_eq!(closed_files(&path).expect("listed"), vec![linked.clone()], "one name");
        assert_eq!(std::fs::read(&linked).expect("kept"), written);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A `StartTime` in no time's units (ms, not s) names an earlier run's FILE by the file's
    /// time. Before, its ns wrapped past `u64` (a panic with overflow checks).
    #[test]
    fn an_earlier_log_whose_start_is_no_time_is_named_by_the_files_time() {
        let d = crate::test_dir("hlog-file-previous-ms");
        let path = d.join("e.hlog");
        let rotation = Rotation::default();
        let t3 = 1_796_583_600_002_000_000u64;
        std::fs::write(
            &path,
            b"#[StartTime: 1796576400002.000 (seconds since epoch)]\n\"StartTimestamp\",\"Interval_Length\",\
              \"Interval_Max\",\"Interval_Compressed_Histogram\"\n0.000,1.000,0.001,HISTFAAAAB\n",
        )
        .expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::UNIX_EPOCH + Duration::from_nanos(t3)))
            .expect("its time");
        let (_c, notes) = claim_keeping_previous(lock(&path), &rotation).expect("claimed");
        assert!(matches!(&notes[..], [Note::Said(k)] if k.contains("from 2026-12-06T19:00:00.002Z")), "{notes:?}");
        assert!(closed_name(&path, t3).exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A second run that opened FILE as the first run was keeping it, and locked it once the
    /// first let go (FILE is the first run's new file by then), is refused as busy, nothing
    /// touched. Before: "the file was replaced while it was being claimed", with nothing to do.
    #[test]
    fn a_run_that_locked_the_file_another_run_just_kept_is_refused_as_busy() {
        let d = crate::test_dir("hlog-file-previous-race");
        let path = d.join("r.hlog");
        let t = 1_796_576_400_002_000_000u64;
        std::fs::write(&path, a_log(t)).expect("write");
        let late = lock(&path);
        // What the first run did between the second's open and lock: FILE linked as its closed
        // name, a new FILE claimed beside it and renamed over it.
        std::fs::hard_link(&path, closed_name(&path, t)).expect("link");
        let next = d.join(".r.hlog.next");
        let first = Claimed::claim("--hlog", &next).expect("the first run's new FILE");
        std::fs::rename(&next, &path).expect("rename");
        let e = claim_keeping_previous(late, &Rotation::default()).expect_err("refused");
        assert!(matches!(e, KeepError::File(crate::outfile::OutFileError::Busy { .. })), "{e}");
        assert!(e.to_string().ends_with("give another path or let that run end"), "{e}");
        assert_eq!(std::fs::read(closed_name(&path, t)).expect("kept"), a_log(t), "the kept file as it was");
        assert_eq!(std::fs::metadata(&path).expect("FILE").len(), 0, "the first run's new FILE as it was");
        drop(first);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// On a file system without hard links (here `link` made to fail with `EPERM`, as vfat's
    /// does) a rotation renames: the closed file holds every interval, FILE is a new locked log,
    /// the renames are said once; a closed name taken is never replaced and leaves all as it
    /// was. Keeping an earlier run's FILE works the same way. Before, every rotation failed.
    #[test]
    fn without_hard_links_a_rotation_renames_and_loses_nothing() {
        crate::outfile::NO_HARD_LINKS.with(|n| n.set(true));
        let d = crate::test_dir("hlog-file-nolinks");
        let path = d.join("n.hlog");
        let t = 1_796_576_400_000_000_000u64;
        std::fs::write(&path, a_log(t - 5_000_000_000)).expect("an earlier run's FILE");
        let rotation = Rotation { every: Some(Duration::from_secs(1)), bytes: None, keep: 10 };
        let (claimed, notes) = claim_keeping_previous(lock(&path), &rotation).expect("kept by renames");
        assert!(matches!(&notes[..], [Note::Said(k)] if k.contains("kept an earlier run's")), "{notes:?}");
        let mut f = HlogFile::open(claimed, t, "test".into(), rotation).expect("open");
        let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        h.record(7).expect("record");
        f.writer().write("x", t, t + 1_000_000_000, &h).expect("write");
        f.flush().expect("flush");
        let written = std::fs::read(&path).expect("FILE");
        let notes = f.rotate_if_due(t + 1_000_000_000);
        let said: Vec<&Note> = notes.iter().filter(|n| matches!(n, Note::Said(_))).collect();
        assert!(matches!(&notes[0], Note::Started(s) if s.contains("closed")), "{notes:?}");
        assert!(
            matches!(&said[..], [Note::Said(s)] if s.contains("no hard links") && s.contains("missing for a moment")),
            "{notes:?}"
        );
        assert_eq!(std::fs::read(closed_name(&path, t)).expect("closed"), written, "every interval kept");
        f.flush().expect("flush");
        assert!(std::fs::read_to_string(&path).expect("FILE").contains("#[StartTime: "), "a new FILE");
        assert!(Claimed::claim("--hlog", &path).is_err(), "the new FILE is locked");
        assert!(!d.join(".n.hlog.next").exists());
        // The next rotation: said no more.
        f.writer().write("x", t + 1_000_000_000, t + 2_000_000_000, &h).expect("write");
        f.flush().expect("flush");
        let notes = f.rotate_if_due(t + 2_000_000_000);
        assert!(matches!(&notes[..], [Note::Started(_)]), "said once: {notes:?}");
        // Its closed name taken: not replaced, one error, FILE as it was and still written.
        f.writer().write("x", t + 2_000_000_000, t + 3_000_000_000, &h).expect("write");
        f.flush().expect("flush");
        let taken = closed_name(&path, t + 2_000_000_000);
        std::fs::write(&taken, b"not ours").expect("write");
        let before = std::fs::read(&path).expect("FILE");
        let notes = f.rotate_if_due(t + 3_000_000_000);
        assert!(matches!(&notes[..], [Note::Error(e)] if e.contains("File exists")), "{notes:?}");
        assert_eq!(std::fs::read(&taken).expect("read"), b"not ours");
        assert_eq!(std::fs::read(&path).expect("FILE"), before);
        assert!(!d.join(".n.hlog.next").exists(), "nothing left half-made");
        assert!(Claimed::claim("--hlog", &path).is_err(), "FILE is still locked");
        assert_eq!(closed_files(&path).expect("listed").len(), 4, "the kept, two closed, the one not ours");
        crate::outfile::NO_HARD_LINKS.with(|n| n.set(false));
        let _ = std::fs::remove_dir_all(&d);
    }
}
