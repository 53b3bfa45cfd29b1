//! libzmq's heap stays resident: glibc malloc is told at process start
//! (`zmqx::heap::keep_freed_memory`, called first thing in `main`) to keep what
//! libzmq's I/O threads allocate and other threads free. An I/O thread's minor
//! page faults are then the first touch of its high-water mark, not a fault per
//! page each time a backlog builds again.

mod common;

use std::time::Duration;

use common::*;

/// The engine binary end to end: 3M messages flat out through a shard whose
/// queue holds 20 000 (the high-water mark of what the I/O thread's arena
/// holds: ~2 100 pages). Under glibc's defaults the I/O thread took 13–30k
/// faults per 3M messages here (release), growing with the run; kept, ~2 100
/// whatever the count. The bound is per message, about 2× from both. (A debug
/// build's slower reader drains less in bursts: its defaults stay under the
/// bound too, so the release suite is where this test bites.)
#[test]
fn engine_io_thread_faults_stay_at_its_high_water_mark() {
    if cfg!(debug_assertions) {
        eprintln!(
            "SKIPPED engine_io_thread_faults_stay_at_its_high_water_mark: a debug build stays under the bound \
             with glibc's defaults too, so only the release suite (the README's test command) can catch a regression"
        );
        return;
    }
    const MSGS: u64 = 3_000_000;
    let dir = temp_dir("heap");
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/default-2core.toml"))
        .expect("tuning/default-2core.toml");
    assert!(base.contains("rcvhwm_msgs = 100000"), "the profile this test edits changed: {base}");
    let profile = dir.join("hwm20k.toml");
    std::fs::write(&profile, base.replace("rcvhwm_msgs = 100000", "rcvhwm_msgs = 20000")).expect("profile");
    let count = MSGS.to_string();
    let (replay, eps) = start_replay("replay", 1, &["--count", &count, "--rate", "0"]);
    let profile = profile.to_str().expect("utf-8 temp path");
    let engine = engine_json(&[&eps[0]], &["--profile", profile, "--handoff", "batch"]);
    let (status, out) = engine.finish(Duration::from_secs(120));
    assert!(status.success(), "engine failed: {out}");
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
    let r = json(&out);
    assert_eq!((u(&r, "delivered"), u(&r, "lost")), (MSGS, 0), "{r}");
    let threads = r["threads"].as_array().expect("threads");
    let io = threads.iter().find(|t| t["thread"] == "shard0-io").unwrap_or_else(|| panic!("no shard0-io: {r}"));
    let faults = u(io, "minor_faults");
    assert!(faults > 0, "the I/O thread touched memory: {io}");
    // ~0.7 per 1000 messages kept; 4–10 per 1000 under glibc's defaults (release).
    assert!(faults * 1000 < MSGS * 3 / 2, "{faults} minor faults on the I/O thread for {MSGS} messages: {io}");
    // Readers and workers have no /proc count in the report.
    let reader = threads.iter().find(|t| t["thread"] == "shard0-reader").expect("reader");
    assert!(reader.get("minor_faults").is_none(), "{reader}");
    let _ = std::fs::remove_dir_all(&dir);
}
