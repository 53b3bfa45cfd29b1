//! libzmq's heap: glibc malloc told once, at process start, to keep the memory
//! libzmq's I/O threads allocate and other threads free, instead of handing it
//! back to the kernel and faulting it in again; and a thread's minor page faults.
//!
//! Rust code allocates from mimalloc (the binary's global allocator); libzmq
//! (C++, linked statically) allocates from glibc. A libzmq I/O thread receives
//! into ~18 KiB decoder buffers (`in_batch_size` 8 KiB of data plus the
//! reference counts of the zero-copy messages cut from it) taken from its own
//! glibc arena, and the thread that receives the last message of a buffer frees
//! it, into that arena. With glibc's defaults (trim threshold 128 KiB, raised
//! with the dynamic mmap threshold; top pad 128 KiB), when a backlog drains
//! the freeing thread trims the arena's top (`madvise(MADV_DONTNEED)`), and when
//! the next backlog builds the I/O thread grows it again (`mprotect`) and takes
//! a minor page fault on every 4 KiB page it touches, 1–2 µs each on a VM:
//! 6–21k faults per 2M messages flat out, more the longer the run
//! (benches/README.md, "libzmq's heap").
//!
//! [`keep_freed_memory`] sets glibc's `M_TRIM_THRESHOLD` and `M_TOP_PAD` with
//! `mallopt(3)`: an arena's top is not given back below [`TRIM_THRESHOLD_BYTES`]
//! and grows [`TOP_PAD_BYTES`] at a time (address space; pages are resident
//! only once touched). What an arena keeps is its high-water mark, which the
//! sockets' high-water marks bound (`rcvhwm_msgs` messages queued per shard),
//! so memory stays bounded; it is not handed back after a burst. Setting either
//! also stops glibc's dynamic mmap threshold: allocations of
//! [`MMAP_THRESHOLD_BYTES`] or more (set too, to say it) keep their own mapping,
//! returned when freed, so a rare large message does not grow an arena.
//!
//! An operator's own choice wins: a parameter set in the environment
//! (`GLIBC_TUNABLES=glibc.malloc.trim_threshold=…`, or the older
//! `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`, `MALLOC_MMAP_THRESHOLD_`) is
//! left as glibc read it at start; [`keep_freed_memory`] sets only the others.

use std::os::raw::c_int;

/// glibc gives an arena's free top back to the kernel only above this (default 128 KiB).
pub const TRIM_THRESHOLD_BYTES: usize = 256 << 20;
/// How much more than asked an arena grows by, and keeps when it trims (default 128 KiB).
pub const TOP_PAD_BYTES: usize = 64 << 20;
/// Allocations of this size or more get their own mapping (glibc's default, fixed).
pub const MMAP_THRESHOLD_BYTES: usize = 128 << 10;

/// A `mallopt` glibc refused: which parameter, and the value.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("glibc refused mallopt({param}, {value})")]
pub struct MalloptRefused {
    pub param: &'static str,
    pub value: usize,
}

/// The three parameters, as `mallopt` names them, with their tunable and
/// their older environment variable.
const PARAMS: [(c_int, &str, &str, &str, usize); 3] = [
    (
        libc::M_MMAP_THRESHOLD,
        "M_MMAP_THRESHOLD",
        "glibc.malloc.mmap_threshold",
        "MALLOC_MMAP_THRESHOLD_",
        MMAP_THRESHOLD_BYTES,
    ),
    (libc::M_TOP_PAD, "M_TOP_PAD", "glibc.malloc.top_pad", "MALLOC_TOP_PAD_", TOP_PAD_BYTES),
    (
        libc::M_TRIM_THRESHOLD,
        "M_TRIM_THRESHOLD",
        "glibc.malloc.trim_threshold",
        "MALLOC_TRIM_THRESHOLD_",
        TRIM_THRESHOLD_BYTES,
    ),
];

/// Whether the operator set `tunable` (in `GLIBC_TUNABLES`'s colon-separated
/// `name=value` list) or the older variable `env_var` (looked up with `var`).
fn set_by_operator(tunables: Option<&str>, var: impl Fn(&str) -> bool, tunable: &str, env_var: &str) -> bool {
    let in_tunables =
        tunables.is_some_and(|t| t.split(':').any(|kv| kv.split_once('=').is_some_and(|(k, _)| k == tunable)));
    in_tunables || var(env_var)
}

/// Tells glibc malloc to keep freed memory for reuse (see the module doc),
/// leaving alone each parameter the operator set in the environment; returns
/// the names of those left alone. Call once at process start, before libzmq's
/// threads allocate; later calls set the same values again.
pub fn keep_freed_memory() -> Result<Vec<&'static str>, MalloptRefused> {
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    let mut left = Vec::new();
    let set = |param: c_int, name: &'static str, value: usize| {
        let v = c_int::try_from(value).map_err(|_| MalloptRefused { param: name, value })?;
        // SAFETY: mallopt only sets glibc malloc's tunables (under its own lock);
        // these parameters take any non-negative int.
        if unsafe { libc::mallopt(param, v) } == 1 {
            Ok(())
        } else {
            Err(MalloptRefused { param: name, value })
        }
    };
    for (param, name, tunable, env_var, value) in PARAMS {
        if set_by_operator(
            tunables.as_deref(),
            |v| std::env::var_os(v).is_some_and(|x| !x.is_empty()),
            tunable,
            env_var,
        ) {
            left.push(name);
        } else {
            set(param, name, value)?;
        }
    }
    Ok(left)
}

/// Minor page faults a thread of this process (by Linux thread id) has taken,
/// from `/proc/self/task/TID/stat` (field 10); None if the thread is gone.
pub fn task_minor_faults(tid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    minor_faults_of_stat(&stat)
}

/// Field 10 (`minflt`) of a `/proc/…/stat` line. The command name (field 2) is
/// in parentheses and may hold spaces and parentheses, so fields are counted
/// from the last `)`.
fn minor_faults_of_stat(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state (3), ppid, pgrp, session, tty_nr, tpgid, flags, minflt (10).
    rest.split_whitespace().nth(7)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_faults_are_field_ten_counted_after_the_name() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1234 0 0 0 5 6 0 0 20 0 1 0 100 0 0";
        assert_eq!(minor_faults_of_stat(line), Some(1234));
        assert_eq!(minor_faults_of_stat("4242 (x) S 1"), None);
        assert_eq!(minor_faults_of_stat("no name"), None);
    }

    #[test]
    fn a_live_thread_has_minor_faults_and_a_gone_one_none() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let before = task_minor_faults(tid).expect("stat of a live thread");
        // Touch fresh pages: each first write is a minor fault.
        let pages = 64;
        // SAFETY: an anonymous private mapping of `pages` pages, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        for i in 0..pages {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile((p as *mut u8).add(i * 4096), 1) };
        }
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, pages * 4096) };
        let after = task_minor_faults(tid).expect("stat of a live thread");
        assert!(after >= before + pages as u64, "{before} -> {after}");
        assert_eq!(task_minor_faults(u32::MAX), None);
    }

    #[test]
    fn glibc_takes_the_settings() {
        let left = keep_freed_memory().expect("glibc takes them");
        assert_eq!(keep_freed_memory(), Ok(left), "a second call sets the same values");
    }

    #[test]
    fn an_operators_own_setting_is_left_alone() {
        let none = |_: &str| false;
        let (t, e) = ("glibc.malloc.trim_threshold", "MALLOC_TRIM_THRESHOLD_");
        assert!(!set_by_operator(None, none, t, e));
        assert!(set_by_operator(Some("glibc.malloc.trim_threshold=1000"), none, t, e));
        assert!(set_by_operator(Some("glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0"), none, t, e));
        assert!(!set_by_operator(Some("glibc.malloc.trim_threshold_x=1:glibc.malloc.top_pad=1"), none, t, e));
        assert!(!set_by_operator(Some("garbage"), none, t, e));
        assert!(set_by_operator(None, |v| v == "MALLOC_TRIM_THRESHOLD_", t, e));
    }
}
