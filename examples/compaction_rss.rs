//! The memory a compaction's fold takes (`compact_prev`), alone in its process, for a peak RSS
//! measured from outside: `prepare` writes a data dir of N keys (100-byte values) whose log
//! holds two more rounds of updates, moved aside to `log.prev` as a compaction starts; `fold`
//! folds it (each run of `fold` needs a fresh `prepare`). docs/CLONE.md, "Durability", quotes it.
//!
//! ```sh
//! cargo run --release --example compaction_rss -- prepare 1000000 /tmp/fold
//! /usr/bin/time -v target/release/examples/compaction_rss fold /tmp/fold   # "Maximum resident set size"
//! ```
use std::time::Instant;

use mdsub::clone::kvmsg::KvMsg;
use mdsub::clone::persist::{compact_prev, Record, Store};

/// The server's allocator (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["prepare", n, dir] => prepare(n.parse().expect("N keys"), dir.as_ref()),
        ["fold", dir] => {
            let t = Instant::now();
            let done = compact_prev(dir.as_ref(), 0).expect("fold");
            println!("fold_ms={:.1} ({done:?})", t.elapsed().as_secs_f64() * 1e3);
        }
        _ => eprintln!("usage: compaction_rss prepare N DIR | fold DIR"),
    }
}

fn prepare(n: u64, dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dir);
    let rec = |i: u64, round: u64| {
        let mut m = KvMsg::new(format!("/md/key/{i:09}"), round * n + i + 1, vec![b'v'; 100]);
        m.uuid = Some([1; 16]);
        Record { msg: m, expires_at_unix_ms: None }
    };
    let (mut store, _) = Store::open(dir).expect("data dir");
    store.write_snapshot(n, (0..n).map(|i| rec(i, 0))).expect("snapshot");
    for round in 1..=2 {
        for i in 0..n {
            store.append(&rec(i, round)).expect("append");
        }
    }
    store.sync().expect("sync");
    store.rotate().expect("rotate");
    println!("prepared {n} keys and a log.prev of {} records in {}", 2 * n, dir.display());
}
