//! Pinning is verified, not assumed: after the engine starts, every named
//! thread's allowed CPUs are read back from the OS (/proc/self/task).
//! (Its own test binary: it inspects every thread of the process.)

use std::time::Duration;

use mdsub::agent::StopFlag;
use mdsub::engine::{Engine, EngineConfig, ShardConfig};

/// (thread name, Cpus_allowed_list) of every thread in this process.
fn threads() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").expect("proc") {
        let dir = e.expect("entry").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim().to_string();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        out.push((comm, cpus));
    }
    out
}

#[test]
fn reader_worker_and_io_threads_run_where_the_profile_says() {
    let cores = mdsub::profile::host_cores();
    let (a, b) = (cores[0], *cores.last().expect("a core"));
    let cfg = EngineConfig {
        shards: vec![ShardConfig {
            // Nothing listens here: the engine runs idle until stopped.
            endpoints: vec!["tcp://127.0.0.1:9".into()],
            subscribe: vec![],
            io_core: Some(a),
            reader_core: Some(b),
            ..Default::default()
        }],
        worker_cores: vec![Some(a)],
        expect_eos_per_shard: Some(0),
        ..EngineConfig::default()
    };
    let stop = StopFlag::new();
    let engine = Engine::start(&cfg, stop.clone()).expect("engine starts");
    let find = |name: &str| {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((_, cpus)) = threads().into_iter().find(|(n, _)| n == name) {
                return cpus;
            }
            assert!(std::time::Instant::now() < end, "thread {name} not found: {:?}", threads());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert_eq!(find("shard0-reader"), b.to_string());
    assert_eq!(find("worker0"), a.to_string());
    // libzmq's I/O (and reaper) threads of the shard's context inherited the
    // I/O core and the name of the thread that made the first socket.
    assert_eq!(find("shard0-io"), a.to_string());
    let io: Vec<_> = threads().into_iter().filter(|(n, _)| n == "shard0-io").collect();
    assert_eq!(io.len(), 2, "I/O thread and reaper: {io:?}");
    assert!(io.iter().all(|(_, c)| *c == a.to_string()), "{io:?}");
    assert!(threads().iter().filter(|(n, _)| n == "worker0").count() == 1, "{:?}", threads());
    stop.stop();
    let report = engine.join(Some(Duration::from_secs(10))).expect("joins");
    assert!(report.interrupted);
}
