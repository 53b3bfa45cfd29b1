//! Clocks: the one place mdsub reads time. Cores never read a clock; their
//! shells call [`realtime_ns`] or [`monotonic_ns`] (or a [`Clock`]) once per
//! step and pass `now_ns` in, so a test drives them with a [`ManualClock`]
//! (or a [`SteppingClock`], which moves on every read). A reader's drain pass
//! stamps its frames with one read, and more only for frames sent after it
//! ([`PassStamp`]).
//!
//! Two sources, each for one purpose:
//! - **realtime** (`CLOCK_REALTIME`, ns since the Unix epoch) is the clock of
//!   the wire: a frame's intended send time, receive times, capture records,
//!   latency. Publisher and subscriber must share it (one host, or PTP/NTP).
//! - **monotonic** (`CLOCK_MONOTONIC`) is the clock of schedules and
//!   timeouts: the pacer, TTLs, heartbeats, the metrics intervals and the
//!   status they pace, a handler's synthetic work. A wall-clock step neither
//!   stalls nor bursts them.
//!
//! Both go through the vDSO (no system call, ~20 ns). [`thread_cpu_ns`] is
//! the calling thread's own CPU time (a real system call; the runner samples
//! it, not the hot path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[inline]
fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; the clock ids
    // used here exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// Nanoseconds since the Unix epoch (`CLOCK_REALTIME`): the clock of
/// `send_time_ns` and of every latency.
#[inline]
pub fn realtime_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

/// The longest duration any setting may give (10^12 s, some 31 700 years: "until stopped"),
/// so that now plus it never overflows a clock or an `Instant`.
pub const MAX_DURATION_S: u64 = 1_000_000_000_000;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for ns since the epoch (UTC, proleptic Gregorian).
pub fn utc_iso8601(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Nanoseconds since an arbitrary start (`CLOCK_MONOTONIC`): the clock of
/// schedules, timeouts and TTLs.
#[inline]
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// CPU time the calling thread has used, in ns (`CLOCK_THREAD_CPUTIME_ID`).
#[inline]
pub fn thread_cpu_ns() -> u64 {
    read(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time another thread of this process (by Linux thread id) has used,
/// in ns, from `/proc/self/task/TID/schedstat` (brought up to date at
/// scheduler ticks and switches, so up to a tick behind for a thread that is
/// running); None if the thread is gone or the kernel keeps no schedstat. For threads mdsub does not start itself
/// (libzmq's I/O threads), whose clock id it cannot ask for.
pub fn task_cpu_ns(tid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Linux thread ids of this process's threads named `name` (as `top -H` shows them).
///
/// A walk of `/proc/self/task` is not a snapshot: when a thread listed
/// before the walk's position exits mid-walk, the kernel resumes by index and
/// can skip a live thread. So the walk is repeated until one adds nothing new
/// (at least twice, at most four times) and the ids found are merged.
pub fn task_ids_named(name: &str) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    for walk in 0..TASK_WALKS {
        let before = ids.len();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else { break };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
            if !ids.contains(&tid) && std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
            {
                ids.push(tid);
            }
        }
        if walk > 0 && ids.len() == before {
            break;
        }
    }
    ids.sort_unstable();
    ids
}

/// How many walks of `/proc/self/task` [`task_ids_named`] makes at most.
const TASK_WALKS: usize = 4;

/// A source of `now_ns` that a shell can be given, so a test can swap it.
pub trait Clock: Send + Sync {
    /// Now, in ns, on this clock's scale.
    fn now_ns(&self) -> u64;
}

/// A shared clock (a test keeps a handle on the one it gave a shell).
impl<C: Clock + ?Sized> Clock for Arc<C> {
    #[inline]
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// `CLOCK_REALTIME`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Realtime;

impl Clock for Realtime {
    #[inline]
    fn now_ns(&self) -> u64 {
        realtime_ns()
    }
}

/// `CLOCK_MONOTONIC`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Monotonic;

impl Clock for Monotonic {
    #[inline]
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
}

/// The receive time of the frames of one drain pass: the clock is read at the pass's first
/// frame, not per frame (a read is ~20 ns, a reader spends ~95 ns a frame), and read again
/// for a frame whose send time is after the stamp (one taken later in the pass, or after its
/// reader was preempted mid-pass), which then stamps it and the frames after it. So a frame is
/// never received before it was sent, on this host's clock, and its latency stages add up
/// (wire + queue = total). A send time still after the fresh read is ahead of this host's
/// clock (skew between hosts, or a clock stepped back): every such frame reads the clock again,
/// and the latency stages count it as `ahead`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStamp {
    ns: u64,
}

impl PassStamp {
    /// A new pass: its first frame reads the clock.
    #[inline]
    pub fn start(&mut self) {
        self.ns = 0;
    }

    /// The receive time of a frame sent at `send_ns` (0 for one whose send time is not known, a
    /// frame that does not decode): the pass's stamp, read from `clock` first when the pass has
    /// none yet or the frame was sent after it.
    #[inline]
    pub fn of<C: Clock + ?Sized>(&mut self, send_ns: u64, clock: &C) -> u64 {
        if self.ns == 0 || send_ns > self.ns {
            self.ns = clock.now_ns();
        }
        self.ns
    }

    /// The pass's latest stamp (0 before its first frame).
    #[inline]
    pub fn ns(&self) -> u64 {
        self.ns
    }
}

/// A clock that moves only when told to: for tests of cores and shells.
/// Clones share one time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ns)))
    }

    /// Move forward by `ns`; returns the new time.
    pub fn advance_ns(&self, ns: u64) -> u64 {
        self.0.fetch_add(ns, Ordering::AcqRel).saturating_add(ns)
    }

    /// Move forward by `ms` milliseconds; returns the new time.
    pub fn advance_ms(&self, ms: u64) -> u64 {
        self.advance_ns(ms.saturating_mul(1_000_000))
    }

    /// Set the time (may go backwards, to test clock steps).
    pub fn set_ns(&self, ns: u64) {
        self.0.store(ns, Ordering::Release);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A clock that moves `step_ns` after every read, and counts its reads: for tests of a shell
/// whose work between two reads takes time (a reader's drain pass).
#[derive(Debug)]
pub struct SteppingClock {
    next_ns: AtomicU64,
    step_ns: u64,
    reads: AtomicU64,
}

impl SteppingClock {
    /// A clock whose first read says `start_ns`.
    pub fn new(start_ns: u64, step_ns: u64) -> Self {
        SteppingClock { next_ns: AtomicU64::new(start_ns), step_ns, reads: AtomicU64::new(0) }
    }

    /// Reads so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Acquire)
    }
}

impl Clock for SteppingClock {
    fn now_ns(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::AcqRel);
        self.next_ns.fetch_add(self.step_ns, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_in_utc() {
        assert_eq!(utc_iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_iso8601(1_796_185_377_123_000_000), "2026-12-02T04:22:57.123Z");
        assert_eq!(utc_iso8601(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
        // 2026-12-05T17:40:01.123456789Z: `date -u -d @1796492401`; the last ns a u64 holds.
        assert_eq!(utc_iso8601(1_796_492_401_123_456_789), "2026-12-05T17:40:01.123Z");
        assert_eq!(utc_iso8601(u64::MAX), "2554-07-21T23:34:33.709Z");
    }

    use super::*;

    /// This thread's Linux id as `/proc` numbers it, or None when `/proc` is
    /// another pid namespace's (a sandbox that shares the host's `/proc`): then
    /// no `/proc/self/task` path names a thread of ours and per-thread CPU time
    /// cannot be read.
    fn proc_tid_of_this_thread() -> Option<u32> {
        let link = std::fs::read_link("/proc/thread-self").ok()?;
        let tid: u32 = link.file_name()?.to_str()?.parse().ok()?;
        // SAFETY: gettid has no preconditions.
        let own = unsafe { libc::gettid() } as u32;
        (tid == own).then_some(tid)
    }

    #[test]
    fn monotonic_never_goes_back_and_realtime_is_after_2020() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
        assert!(realtime_ns() > 1_577_836_800_000_000_000, "realtime is ns since the epoch");
    }

    #[test]
    fn thread_cpu_time_grows_with_work() {
        let before = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_ns() > before);
    }

    #[test]
    fn another_threads_cpu_time_by_its_name() {
        let Some(tid) = proc_tid_of_this_thread() else {
            eprintln!("skipped: /proc belongs to another pid namespace, so it names none of our threads");
            return;
        };
        let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).expect("comm of a live thread");
        let name = name.trim_end();
        assert!(task_ids_named(name).contains(&tid), "{name}: {:?}", task_ids_named(name));
        let a = task_cpu_ns(tid).expect("schedstat of a live thread");
        // The kernel folds a running thread's time into schedstat at
        // scheduler ticks: work until it moves, within a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut x = 0u64;
        while task_cpu_ns(tid).expect("schedstat") <= a {
            assert!(std::time::Instant::now() < deadline, "schedstat did not move in 5 s of work");
            for i in 0..200_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        assert_eq!(task_cpu_ns(u32::MAX), None);
    }

    #[test]
    fn a_pass_reads_the_clock_once_and_again_only_for_a_frame_sent_after_its_stamp() {
        let t0 = 1_700_000_000_000_000_000;
        let clock = SteppingClock::new(t0, 1_000);
        let mut s = PassStamp::default();
        s.start();
        assert_eq!(s.ns(), 0);
        // The first frame reads the clock; frames sent before the stamp share it.
        assert_eq!(s.of(t0 - 500, &clock), t0);
        assert_eq!(s.of(t0, &clock), t0, "sent at the stamp: received at it");
        assert_eq!(s.of(0, &clock), t0, "a frame whose send time is not known");
        // Sent after the stamp (the pass went on meanwhile): read again, and that stamps the
        // frames after it too. Before: it was stamped t0, received 300 ns before it was sent.
        assert_eq!(s.of(t0 + 300, &clock), t0 + 1_000);
        assert_eq!(s.of(t0 + 200, &clock), t0 + 1_000);
        assert_eq!(clock.reads(), 2, "two reads in all");
        // Ahead of this clock even after a read: every such frame reads it again.
        assert_eq!(s.of(t0 + 30_000_000_000, &clock), t0 + 2_000);
        assert_eq!(s.of(t0 + 30_000_000_000, &clock), t0 + 3_000);
        // The next pass reads it at its first frame.
        s.start();
        assert_eq!(s.of(1, &clock), t0 + 4_000);
    }

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = ManualClock::new(1_000);
        let d = c.clone();
        assert_eq!(c.now_ns(), 1_000);
        assert_eq!(d.advance_ms(2), 2_001_000);
        assert_eq!(c.now_ns(), 2_001_000);
        c.set_ns(5);
        assert_eq!(d.now_ns(), 5);
    }
}
