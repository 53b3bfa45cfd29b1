//! Clone stack benchmarks behind `mdsub clone-bench` (Clone pattern, measured).
//!
//! Update throughput from the
//! collector through the server to a subscribed client, snapshot time for a large map, and
//! failover time from the primary's death to a client receiving live updates again.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::agent::{AgentHandle, IdleStrategy, RunSpec, Runner, StopFlag};
use crate::bench::median;
use crate::clone::client::{ChangeKind, Client, ClientConfig};
use crate::clone::kvmsg::{recv_frames, KvMsg, HUGZ};
use crate::clone::server::{Server, ServerConfig};

/// What `mdsub clone-bench` measures.
#[derive(Debug, Clone)]
pub struct CloneBenchConfig {
    /// Updates sent through the server for the throughput runs.
    pub updates: u64,
    /// Keys in the map for the snapshot runs.
    pub keys: u64,
    /// Runs of each measurement (the median is reported).
    pub runs: usize,
    /// Skip the failover runs (they start server processes).
    pub skip_failover: bool,
    /// Client silence before failover, for the failover runs.
    pub silence_ms: u64,
}

fn free_port_block(n: u16) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = l.local_addr()?.port();
        drop(l);
        if base.checked_add(n).is_none() {
            continue;
        }
        if (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no block of {n} free ports")
}

struct InProcServer {
    stop: StopFlag,
    handle: Option<AgentHandle<Server>>,
    port: u16,
}

impl InProcServer {
    fn start() -> anyhow::Result<Self> {
        let port = free_port_block(3)?;
        let stop = StopFlag::new();
        let cfg = ServerConfig { port, verbose: false, ..ServerConfig::default() };
        let server = Server::new(cfg)?;
        let handle = Runner::start(
            RunSpec { core: None, idle: IdleStrategy::Block { wait_us: 100_000 } },
            stop.clone(),
            server,
        )?;
        Ok(InProcServer { stop, handle: Some(handle), port })
    }

    fn base(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

impl Drop for InProcServer {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Send `n` KVSETs (distinct UUIDs, keys cycling over `key_space`) to the collector at `port+2`,
/// once its subscription has arrived (an XPUB sees it: the handshake, no guessed sleep).
fn feed(ctx: &zmq::Context, port: u16, n: u64, key_space: u64, prefix: &str) -> anyhow::Result<()> {
    let s = ctx.socket(zmq::XPUB)?;
    s.set_sndhwm(0)?;
    s.set_linger(-1)?;
    s.set_rcvtimeo(10_000)?;
    s.connect(&format!("tcp://127.0.0.1:{}", port + 2))?;
    s.recv_bytes(0).context("the collector's subscription did not arrive within 10 s")?;
    let seq = 0u64.to_be_bytes();
    let value = [b'v'; 16];
    let mut key = String::with_capacity(32);
    for i in 0..n {
        key.clear();
        use std::fmt::Write;
        let _ = write!(key, "{prefix}{:07}", i % key_space);
        let mut uuid = [0u8; 16];
        uuid[8..].copy_from_slice(&(i + 1).to_be_bytes());
        s.send(key.as_bytes(), zmq::SNDMORE)?;
        s.send(&seq[..], zmq::SNDMORE)?;
        s.send(&uuid[..], zmq::SNDMORE)?;
        s.send(&b""[..], zmq::SNDMORE)?;
        s.send(&value[..], 0)?;
    }
    Ok(())
}

/// Receive and decode updates (HUGZ aside) on `sub` until `n` have come; the time from the
/// first to the n-th. Gives up after 120 s (loss), naming `who`.
fn count_updates(sub: &zmq::Socket, n: u64, who: &str) -> anyhow::Result<Duration> {
    let mut frames = Vec::new();
    let mut got = 0u64;
    let mut start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while got < n {
        if Instant::now() > deadline {
            bail!("{who} got {got} of {n} updates within 120 s (loss?)");
        }
        if sub.poll(zmq::POLLIN, 100)? == 0 {
            continue;
        }
        while let Some(c) = recv_frames(sub, &mut frames, zmq::DONTWAIT)? {
            if KvMsg::decode_messages(&frames[..c.min(frames.len())]).is_ok_and(|m| m.key != HUGZ) {
                if got == 0 {
                    start = Instant::now();
                }
                got += 1;
            }
        }
    }
    Ok(start.elapsed())
}

/// Updates/s from the collector through the server to a raw CHP subscriber that decodes every
/// KVPUB (`client == false`) or to a `clone::Client` that stores them (`client == true`). The clock
/// starts at the first update received and stops at the n-th.
fn throughput_once(n: u64, client: bool) -> anyhow::Result<f64> {
    let server = InProcServer::start()?;
    let ctx = zmq::Context::new();
    let feeder_ctx = ctx.clone();
    let port = server.port;
    let deadline = Instant::now() + Duration::from_secs(120);
    // (updates timed, time): a clone::Client is polled for its count, so its clock starts at the
    // first poll that sees updates and only those counted after it are timed (all of them from
    // the feed's start when most came before that poll); the raw SUB times from its first update.
    let (timed, elapsed) = if client {
        let c = Client::start(ClientConfig {
            servers: vec![server.base()],
            subtree: "/t/".into(),
            sub_hwm_msgs: 0,
            ..ClientConfig::default()
        })?;
        c.wait_synced(Duration::from_secs(10))?;
        let fed_at = Instant::now();
        let feeder = Runner::task("bench-feeder", None, move || feed(&feeder_ctx, port, n, 10_000, "/t/"))?;
        let mut start = None;
        loop {
            let s = c.status()?;
            if s.live_updates > 0 && start.is_none() {
                start = Some((Instant::now(), s.live_updates));
            }
            if s.live_updates >= n {
                break;
            }
            if Instant::now() > deadline {
                bail!("client got {} of {n} updates within 120 s", s.live_updates);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        feeder.join()??;
        let (t0, before) = start.unwrap_or((fed_at, 0));
        let timed = n - before.min(n);
        if timed < n / 2 {
            // Most had arrived before the first poll (a small --updates): all of them over the
            // time since the feed started instead, a little slow (the feeder's start) but not
            // the old figure of all of them over a fraction of their time.
            (n, fed_at.elapsed())
        } else {
            (timed, t0.elapsed())
        }
    } else {
        let sub = ctx.socket(zmq::SUB)?;
        sub.set_rcvhwm(0)?;
        sub.set_subscribe(b"/t/")?;
        sub.set_subscribe(HUGZ)?;
        sub.connect(&format!("tcp://127.0.0.1:{}", server.port + 1))?;
        // Handshake: the server's first HUGZ (one a second) proves the subscription is in place.
        if sub.poll(zmq::POLLIN, 5_000)? == 0 {
            bail!("no HUGZ from the server within 5 s");
        }
        let feeder = Runner::task("bench-feeder", None, move || feed(&feeder_ctx, port, n, 10_000, "/t/"))?;
        let t = count_updates(&sub, n, "raw subscriber");
        feeder.join()??;
        (n, t?)
    };
    Ok(timed as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// Baseline in the same run: the same five-frame KVSETs from the feeder straight into a raw SUB
/// that decodes them (one hop, no server). The server path is two such hops plus the server.
fn baseline_once(n: u64) -> anyhow::Result<f64> {
    let port = free_port_block(3)?;
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_rcvhwm(0)?;
    sub.set_subscribe(b"")?;
    // The feeder connects its PUB to port+2, so bind the SUB there.
    sub.bind(&format!("tcp://127.0.0.1:{}", port + 2))?;
    let feeder_ctx = ctx.clone();
    let feeder = Runner::task("bench-feeder", None, move || feed(&feeder_ctx, port, n, 10_000, "/t/"))?;
    let t = count_updates(&sub, n, "baseline subscriber");
    feeder.join()??;
    let t = t?;
    Ok(n as f64 / t.as_secs_f64().max(1e-9))
}

/// Seconds for a `clone::Client` to receive and store a snapshot of `keys` keys.
fn snapshot_once(keys: u64) -> anyhow::Result<f64> {
    let server = InProcServer::start()?;
    let ctx = zmq::Context::new();
    feed(&ctx, server.port, keys, keys, "/s/")?;
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let st = crate::clone::server_status(&server.base(), Duration::from_secs(5))?;
        if st.lines().any(|l| l == format!("keys={keys}")) {
            break;
        }
        if Instant::now() > end {
            bail!("server did not reach {keys} keys: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    let client = Client::start(ClientConfig {
        servers: vec![server.base()],
        silence_ms: 10_000,
        snapshot_retry_ms: 10_000,
        ..ClientConfig::default()
    })?;
    let s = client.wait_synced(Duration::from_secs(60))?;
    let t = start.elapsed().as_secs_f64();
    if s.keys as u64 != keys {
        bail!("snapshot carried {} keys, expected {keys}", s.keys);
    }
    Ok(t)
}

/// Seconds from kill -9 of the active primary to a client receiving a live update from the backup.
fn failover_once(silence_ms: u64) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("finding the mdsub binary")?;
    let pp = free_port_block(4)?;
    let bp = free_port_block(4)?;
    let spawn = |port: u16, role: &str, peer: u16| {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["clone-server", "--quiet", "--endpoint", &format!("tcp://127.0.0.1:{port}"), role, "--peer"])
            .arg(format!("tcp://127.0.0.1:{peer}"))
            .stdin(std::process::Stdio::null());
        // The servers end with this process however it ends (Ctrl-C or SIGTERM ends
        // clone-bench at once, before it could kill them): the kernel sends them SIGTERM
        // when the thread that started them exits.
        // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have gone before the prctl took effect.
                if libc::getppid() == 1 {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        cmd.spawn()
    };
    let mut prim = spawn(pp, "--primary", bp)?;
    let mut back = spawn(bp, "--backup", pp)?;
    let result = (|| -> anyhow::Result<f64> {
        let wait_state = |port: u16, state: &str| -> anyhow::Result<()> {
            let end = Instant::now() + Duration::from_secs(10);
            let base = format!("tcp://127.0.0.1:{port}");
            while Instant::now() < end {
                if let Ok(s) = crate::clone::server_status(&base, Duration::from_millis(300)) {
                    if s.lines().any(|l| l == format!("state={state}")) {
                        return Ok(());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            bail!("server :{port} did not become {state}")
        };
        wait_state(pp, "active")?;
        wait_state(bp, "passive")?;
        let cfg = ClientConfig {
            servers: vec![format!("tcp://127.0.0.1:{pp}"), format!("tcp://127.0.0.1:{bp}")],
            silence_ms,
            ..ClientConfig::default()
        };
        let writer = Client::start(cfg.clone())?;
        let watcher = Client::start(cfg)?;
        writer.wait_synced(Duration::from_secs(5))?;
        watcher.wait_synced(Duration::from_secs(5))?;
        let rx = watcher.watch("/f/")?;
        let stop = StopFlag::new();
        let s2 = stop.clone();
        let setter = Runner::task("bench-setter", None, move || {
            let mut i = 0u64;
            while !s2.is_stopped() {
                let _ = writer.set(format!("/f/{}", i % 100), i.to_string(), None);
                i += 1;
                // The setter's pace: one update per 10 ms, so a failover shows as a gap.
                std::thread::sleep(Duration::from_millis(10));
            }
        })?;
        // The path writer → primary → watcher works before the kill.
        let seen =
            (0..100).any(|_| rx.recv_timeout(Duration::from_millis(100)).is_ok_and(|c| c.kind == ChangeKind::Live));
        if !seen {
            stop.stop();
            let _ = setter.join();
            bail!("the watcher saw no live update from the primary within 10 s");
        }
        let _ = prim.kill();
        let killed = Instant::now();
        let _ = prim.wait();
        while rx.try_recv().is_ok() {}
        let deadline = killed + Duration::from_secs(20);
        let mut t = None;
        while Instant::now() < deadline {
            if let Ok(c) = rx.recv_timeout(Duration::from_millis(50)) {
                // Live updates after the kill that the dead primary cannot have sent.
                if c.kind == ChangeKind::Live && watcher.status()?.failovers >= 1 {
                    t = Some(killed.elapsed().as_secs_f64());
                    break;
                }
            }
        }
        stop.stop();
        let _ = setter.join();
        t.context("no live update within 20 s of the kill")
    })();
    let _ = prim.kill();
    let _ = back.kill();
    let _ = prim.wait();
    let _ = back.wait();
    result
}

/// Run the clone benchmarks and print the medians.
pub fn run(args: &CloneBenchConfig) -> anyhow::Result<()> {
    let runs = args.runs.max(1);
    crate::outln!("clone-bench  {}", crate::bench::stamp::Machine::here());
    crate::outln!(
        "clone-bench: {} runs each; updates {} (16-byte values, 10k keys), snapshot {} keys, silence {} ms",
        runs,
        args.updates,
        args.keys,
        args.silence_ms
    );
    let (mut base, mut raw, mut cli) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let b = baseline_once(args.updates)?;
        crate::outln!("  baseline run {i}: feeder -> raw SUB, no server: {:.0} updates/s", b);
        base.push(b);
    }
    for i in 0..runs {
        let r = throughput_once(args.updates, false)?;
        let c = throughput_once(args.updates, true)?;
        crate::outln!("  throughput run {i}: raw CHP subscriber {:.0} updates/s, clone::Client {:.0} updates/s", r, c);
        raw.push(r);
        cli.push(c);
    }
    let mut snaps = Vec::new();
    for i in 0..runs {
        let t = snapshot_once(args.keys)?;
        crate::outln!("  snapshot run {i}: {:.3} s for {} keys", t, args.keys);
        snaps.push(t);
    }
    let mut fos = Vec::new();
    if !args.skip_failover {
        for i in 0..runs {
            let t = failover_once(args.silence_ms)?;
            crate::outln!("  failover run {i}: {:.3} s from kill -9 to the next live update", t);
            fos.push(t);
        }
    }
    crate::outln!("median: baseline (one hop, no server) {:.0} updates/s", median(base));
    crate::outln!("median: raw subscriber {:.0} updates/s", median(raw));
    crate::outln!("median: clone::Client {:.0} updates/s", median(cli));
    crate::outln!("median: snapshot of {} keys {:.3} s", args.keys, median(snaps));
    if !fos.is_empty() {
        crate::outln!("median: failover {:.3} s", median(fos));
    }
    Ok(())
}
