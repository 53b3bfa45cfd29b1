//! How long the clone server's snapshot rewrite of a map of N keys (100-byte values) takes, the
//! way the server does it: the full write of the map (on the serving thread: a data dir behind;
//! a passive's re-sync did it too before it wrote the active's snapshot as it arrived), a
//! compaction (the serving thread's part, moving the log aside, and the fold off that thread),
//! and a passive's re-sync (the entries written as they arrive, in the server's batches of
//! 16384, its end on the serving thread, and the switch off that thread). docs/CLONE.md,
//! "Durability", quotes its figures.
//!
//! `cargo run --release --example snapshot_time -- 1000000 /tmp/snap` (N, a scratch directory,
//! emptied first).
use std::time::Instant;

use mdsub::clone::kvmsg::{KvMsg, TTL_PROP};
use mdsub::clone::map::KvMap;
use mdsub::clone::persist::{compact_prev, switch_to_peer_snapshot, Record, Store};

/// The server's allocator (src/main.rs): with glibc's, the first 64 KiB allocation after a
/// million small frees (the map's copy below) consolidates them all, a quarter of a second.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/mdsub-snapshot-time".into()));
    let _ = std::fs::remove_dir_all(&dir);
    let msg = |i: u64, round: u64| {
        let mut m = KvMsg::new(format!("/md/key/{i:09}"), round * n + i + 1, vec![b'v'; 100]);
        m.uuid = Some([1; 16]);
        m
    };
    let mut map = KvMap::new();
    for i in 0..n {
        map.apply_owned(msg(i, 0), 0).expect("no ttl");
    }
    let (mut store, _) = Store::open(&dir).expect("data dir");
    let t = Instant::now();
    let recs = map.iter().map(|(k, e)| {
        let mut m = KvMap::to_msg(k, e, 0);
        m.remove_prop(TTL_PROP);
        Record { msg: m, expires_at_unix_ms: None }
    });
    store.write_snapshot(n, recs).expect("snapshot");
    let full = ms(t);
    let t = Instant::now();
    drop(map.clone());
    let clone = ms(t);
    // A compaction is due once the log holds twice the map.
    for round in 1..=2 {
        for i in 0..n {
            store.append(&Record { msg: msg(i, round), expires_at_unix_ms: None }).expect("append");
        }
    }
    // The server's syncer fsyncs the log once a second: its dirty pages stay few (a burst of
    // hundreds of MB left dirty would have the kernel throttle the next write, whatever it is).
    store.sync().expect("sync");
    let t = Instant::now();
    store.rotate().expect("rotate");
    let rotate = ms(t);
    let t = Instant::now();
    let done = compact_prev(&dir, 0).expect("compaction");
    let fold = ms(t);
    let bytes = std::fs::metadata(dir.join("snapshot")).map(|m| m.len()).unwrap_or(0);
    // A re-sync: each entry as the core hands it over (a copy without `ttl`), then its end.
    let t = Instant::now();
    store.begin_peer_snapshot();
    let (mut batch, mut worst_batch) = (Instant::now(), 0f64);
    for (i, (k, e)) in map.iter().enumerate() {
        let mut m = KvMap::to_msg(k, e, 0);
        m.remove_prop(TTL_PROP);
        store.peer_snapshot_entry(&Record { msg: m, expires_at_unix_ms: None });
        if i % 16_384 == 16_383 {
            worst_batch = worst_batch.max(ms(batch));
            batch = Instant::now();
        }
    }
    let stream = ms(t);
    let t = Instant::now();
    store.end_peer_snapshot(n, false).expect("the re-sync's snapshot");
    let end = ms(t);
    let t = Instant::now();
    switch_to_peer_snapshot(&dir, false).expect("switch");
    store.switched();
    let switch = ms(t);
    println!(
        "keys={n} snapshot_bytes={bytes} full_write_ms={full:.1} map_clone_ms={clone:.1} \
         compaction_serving_thread_ms={rotate:.3} compaction_fold_ms={fold:.1} ({done:?}) \
         resync_stream_ms={stream:.1} (worst batch of 16384 entries {worst_batch:.1} ms) \
         resync_end_serving_thread_ms={end:.3} resync_switch_ms={switch:.1}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
