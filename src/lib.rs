//! # mdsub — a high-throughput market-data subscriber engine on ZeroMQ
//!
//! mdsub turns the advanced publish/subscribe patterns of the ZeroMQ guide
//! (chapter 5) into one measured product. This page is the map.
//!
//! ```text
//!  feed (generator | capture file | DBN files)
//!    │  replay: paced or flat out, stamps sequences + intended send time
//!    ▼
//!  XPUB per shard ══ TCP ══►  engine: shard k = zmq context (I/O thread pinned) + SUB reader agent
//!                                       decode → sequence checks → snail checks → route
//!                                       └─► inproc PUSH, adaptive batches ──► worker agents (PULL → Handler)
//!                                                                              └─► histograms → metrics collector → report
//! ```
//!
//! | module | role | guide pattern |
//! |---|---|---|
//! | [`wire`] | the market-data frame (zero-copy decode) and the capture file | |
//! | [`feed`] | synthetic feed generator, topic → shard split, DBN files merged by receive time | |
//! | [`replay`] | paced publisher, one XPUB per shard, lossless mode, end of stream | |
//! | [`engine`] | shards, SUB reader agents, inproc batch hand-off, worker agents, handlers | Black Box (high-speed subscriber) |
//! | [`engine::sequence`] | gap / duplicate / restart checks per publisher session and topic | (Suicidal Snail's gap half) |
//! | [`snail`] | lag (OK/WARN/SNAIL) and silence (STOP) verdicts on every message at readers and workers; croak, warn, rest or off; the monitor PUB | Suicidal Snail |
//! | [`metrics`] | per-stage HdrHistograms and the run report | |
//! | [`profile`] | TOML tuning profiles, validated before start | |
//! | [`bench`](mod@bench) | end-to-end benchmarks (engine vs baseline, LVC, clone), one stamp and result shape | |
//! | [`agent`] | every long-running thread is an agent; one runner names, pins and idles them | (Aeron's agent model) |
//! | [`diag`](mod@diag) | diagnostics that never stop the process; refusals counted by reason and said at a bounded rate; exit counters (stderr, or `--json` on stdout) | |
//! | [`outfile`] | output files a run writes, claimed under an exclusive lock (a second run writing one is refused) | |
//! | [`host`] | this host: its name and the cores this process may run on | |
//! | [`nic`] | this host's interfaces: what a shard's `interface` or an endpoint's source names here, and whether one is down | |
//! | [`clock`] | the one place time is read: realtime (the wire), monotonic (schedules), thread CPU, a manual clock for tests | |
//! | [`proxy`] | the one XSUB ⇄ XPUB proxy shell; the LVC and the tap are hooks on it | |
//! | [`link`] | watched links: a socket monitor on every connect-out socket; losses counted and logged, links libzmq gives up on re-established | |
//! | [`lvc`] | `mdsub lvc`: XSUB ⇄ XPUB (verbose) proxy answering each new subscription with the cached last value of every matching topic | Last Value Cache |
//! | [`tap`] | `mdsub tap`: XSUB ⇄ XPUB proxy with a capture side that prints, filters, counts or records the traffic (never stalling the flow) | Espresso (pub-sub tracing) |
//! | [`security`] | CURVE key files, server access policies (CURVE key and address allow-lists), the ZAP handler agent | (ZAP, RFC 27) |
//! | [`endpoint`] | an endpoint's text: a tcp endpoint's parts, the one spelling of a publisher (string-only, for cores too) | |
//! | [`zmqx`] | the few libzmq options the `zmq` crate does not expose, behind a safe face | |
//! | [`clone`] | shared key-value store: `mdsub clone-server`, `clone::Client`, `mdsub clone-client` | Clone (model 6, CHP) + Binary Star |
//! | [`clone::kvmsg`] | CHP wire codec: five-frame kvmsg and snapshot requests | Clone (kvmsg) |
//! | [`clone::map`] | socket-free map with TTLs and subtrees, driven by `now_ns` | Clone |
//! | [`clone::bstar`] | socket-free Binary Star state machine | Binary Star |
//! | [`clone::persist`] | `--data-dir`: update log + snapshots, corrupt-tail reporting | (beyond the guide) |
//! | [`clone::server`] | the clone server agent (ROUTER/PUB/SUB, pending list, takeover) | Clone + Binary Star |
//! | [`clone::client`] | the client agent ("clone class") and its application API | Clone |
//! | [`cli`] | the `mdsub` command line: every clap definition, one vocabulary, thin drivers | |
//!
//! ## Quick start
//!
//! ```text
//! cargo run --release -- demo     # generated feed → replay → engine → report
//! cargo test --release            # the test suite
//! ```
//!
//! and the proxies, for example:
//!
//! ```text
//! mdsub lvc --frontend bind:tcp://*:5556 --backend bind:tcp://*:5557   # last value cache
//! mdsub tap --frontend bind:tcp://*:5556 --backend bind:tcp://*:5557   # print what passes
//! ```
//!
//! Wire formats are specified in `docs/WIRE.md`; measured numbers and how to
//! reproduce them are in `benches/README.md`.

pub mod agent;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod clone;
pub mod diag;
pub mod endpoint;
pub mod engine;
pub mod feed;
pub mod host;
pub mod infile;
pub mod link;
pub mod lvc;
pub mod metrics;
pub mod nic;
pub mod outfile;
pub mod profile;
pub mod proxy;
pub mod replay;
pub mod security;
pub mod snail;
pub mod tap;
pub mod wire;
pub mod zmqx;

/// Run the lib test `name` again, alone, in a child process with `env` set to `1` (the test's
/// child part: what this process cannot watch or must not do, e.g. read its own stderr, lower its
/// own limits), and wait for its end, 30 s at most (then ended by its pid): its exit status
/// (`None` when it took longer), stdout and stderr.
#[cfg(test)]
pub(crate) fn rerun_test_in_child(name: &str, env: &str) -> (Option<std::process::ExitStatus>, String, String) {
    use std::io::Read as _;
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the child");
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20)); // polling the child's exit, bounded above
    };
    let (mut out, mut err) = (String::new(), String::new());
    let _ = child.stdout.take().expect("stdout").read_to_string(&mut out);
    let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
    (status, out, err)
}

/// A fresh, empty folder for a unit test, `$TMPDIR/mdsub-{name}-{pid}` (what a former run left
/// there is removed first).
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mdsub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("a test folder");
    d
}
