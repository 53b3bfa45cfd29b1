//! Pinning is verified, not assumed: after the engine starts, every named
//! thread's allowed CPUs are read back from the OS (/proc/self/task).
//! (Its own test binary: it inspects every thread of the process.)

mod common;

use std::time::Duration;

use mdsub::agent::StopFlag;
use mdsub::engine::{Engine, EngineConfig, ShardConfig};

/// (thread name, Cpus_allowed_list) of every thread in this process.
fn threads() -> Vec<(String, String)> {
    threads_of("self")
}

/// (thread name, Cpus_allowed_list) of every thread of process `pid` (`self`: this one).
fn threads_of(pid: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for e in tasks {
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
    let cores = mdsub::host::cores();
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
    // A thread is named when it is spawned and pins itself once it runs: its CPUs are read
    // until they are the wanted ones (10 s at most), then compared.
    let find = |name: &str, want: usize| {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let cpus = threads().into_iter().find(|(n, _)| n == name).map(|(_, c)| c);
            if cpus.as_deref() == Some(want.to_string().as_str()) || std::time::Instant::now() >= end {
                return cpus.unwrap_or_else(|| panic!("thread {name} not found: {:?}", threads()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert_eq!(find("shard0-reader", b), b.to_string());
    assert_eq!(find("worker0", a), a.to_string());
    // libzmq's I/O (and reaper) threads of the shard's context inherited the
    // I/O core and the name of the thread that made the first socket.
    assert_eq!(find("shard0-io", a), a.to_string());
    let io: Vec<_> = threads().into_iter().filter(|(n, _)| n == "shard0-io").collect();
    assert_eq!(io.len(), 2, "I/O thread and reaper: {io:?}");
    assert!(io.iter().all(|(_, c)| *c == a.to_string()), "{io:?}");
    assert!(threads().iter().filter(|(n, _)| n == "worker0").count() == 1, "{:?}", threads());
    stop.stop();
    let report = engine.join(Some(Duration::from_secs(10))).expect("joins");
    assert!(report.interrupted);
}

#[test]
fn endpoint_flags_keep_each_profile_shards_cores() {
    // Before: with --endpoint, every shard took shard 0's settings and shards after the first
    // lost their cores without a word.
    let cores = mdsub::host::cores();
    let (Some(&a), Some(&b)) = (cores.first(), cores.last()) else { return };
    if a == b {
        eprintln!("SKIPPED endpoint_flags_keep_each_profile_shards_cores: needs two cores");
        return;
    }
    let dir = common::temp_dir("pinning-flags");
    let profile = dir.join("two.toml");
    let shards = format!(
        "name = \"two\"\nallow_shared_cores = true\n[[shards]]\nio_core = {a}\nreader_core = {a}\n\
         [[shards]]\nio_core = {b}\nreader_core = {b}\n[[workers]]\ncore = {a}\n"
    );
    std::fs::write(&profile, shards).expect("write");
    let port = common::unserved_port_block(2);
    let mut cmd = common::mdsub();
    cmd.args(["engine", "--max-duration", "60s", "--expect-eos", "0", "--profile"]).arg(&profile);
    for p in [port, port + 1] {
        cmd.args(["--endpoint", &format!("tcp://127.0.0.1:{p}")]);
    }
    let mut engine =
        common::Proc::spawn("engine", cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()));
    let pid = engine.pid().to_string();
    let want = [("shard0-reader", a), ("shard0-io", a), ("shard1-reader", b), ("shard1-io", b)];
    // A thread is named when it is spawned and pins itself once it runs: the CPUs are read
    // until every wanted thread is there on its core (20 s at most), then compared.
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let seen = threads_of(&pid);
        let pinned = want.iter().all(|(name, core)| seen.iter().any(|(n, c)| n == name && *c == core.to_string()));
        if pinned || std::time::Instant::now() >= end {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for (name, core) in want {
        let (_, cpus) = seen.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not found: {seen:?}"));
        assert_eq!(*cpus, core.to_string(), "{name} runs where the profile's shard says: {seen:?}");
    }
    engine.signal(2);
    engine.wait_exit(Duration::from_secs(20));
}
