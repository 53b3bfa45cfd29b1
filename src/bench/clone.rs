//! Clone stack benchmarks behind `mdsub clone-bench` (Clone pattern, measured).
//!
//! Update throughput from the
//! collector through the server to a subscribed client, snapshot time for a large map, and
//! failover time from the primary's death to a client receiving live updates again.
//!
//! Each run measures every variant once, in turn (the baseline beside the measurements it is
//! compared with). A stop request (Ctrl-C) ends the measurement under way; the result is then of
//! the whole runs before it ([`Completed`]).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::agent::{AgentHandle, IdleStrategy, RunSpec, Runner, StopFlag};
use crate::bench::median;
use crate::bench::result::{Completed, Results};
use crate::bench::stamp::Machine;
use crate::clone::client::{ChangeKind, Client, ClientConfig};
use crate::clone::kvmsg::{recv_frames, KvMsg, HUGZ};
use crate::clone::server::{Server, ServerConfig};
use crate::diag::Lines;

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
    /// Idle strategy of every agent the benchmark starts: the in-process clone servers and
    /// `clone::Client`s, and the failover runs' `clone-server` processes (`--idle` by
    /// [`IdleStrategy::name`]).
    pub idle: IdleStrategy,
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
    fn start(idle: IdleStrategy) -> anyhow::Result<Self> {
        let port = free_port_block(3)?;
        let stop = StopFlag::new();
        let cfg = ServerConfig { port, verbose: false, ..ServerConfig::default() };
        let server = Server::new(cfg)?;
        let handle = Runner::start(RunSpec::unpinned(idle), stop.clone(), server)?;
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
///
/// Run on a feeder thread, it keeps its socket open until the measuring side sends on `held` or
/// drops it (it counted every update, gave up, or was stopped), then closes it without
/// lingering: the socket never lingers. A socket closed with updates still queued and an
/// unbounded linger made the context's end wait for ever once their receiver was gone (Ctrl-C in
/// the middle of a measurement, a server that died: clone-bench never exited); the snapshot
/// measurement's feed closed its socket so until it held one too.
fn feed(
    ctx: &zmq::Context,
    port: u16,
    n: u64,
    key_space: u64,
    prefix: &str,
    held: std::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let s = ctx.socket(zmq::XPUB)?;
    s.set_sndhwm(0)?;
    s.set_linger(0)?;
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
    let _ = held.recv();
    Ok(())
}

/// What a measurement says when `stop` (Ctrl-C) ended it: it is then no measurement.
fn interrupted() -> anyhow::Error {
    anyhow::anyhow!("interrupted")
}

/// Receive and decode updates (HUGZ aside) on `sub` until `n` have come; the time from the
/// first to the n-th. Gives up after 120 s (loss), naming `who`, or when `stop` is set.
fn count_updates(sub: &zmq::Socket, n: u64, who: &str, stop: &StopFlag) -> anyhow::Result<Duration> {
    let mut frames = Vec::new();
    let mut got = 0u64;
    let mut start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while got < n {
        if Instant::now() > deadline {
            bail!("{who} got {got} of {n} updates within 120 s (loss?)");
        }
        if stop.is_stopped() {
            return Err(interrupted());
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
fn throughput_once(n: u64, client: bool, idle: IdleStrategy, stop: &StopFlag) -> anyhow::Result<f64> {
    let server = InProcServer::start(idle)?;
    let ctx = zmq::Context::new();
    let feeder_ctx = ctx.clone();
    let port = server.port;
    let deadline = Instant::now() + Duration::from_secs(120);
    // (updates timed, time): a clone::Client is polled for its count, so its clock starts at the
    // first poll that sees updates and only those counted after it are timed (all of them from
    // the feed's start when most came before that poll); the raw SUB times from its first update.
    let (timed, elapsed) = if client {
        let c = Client::start_with(
            ClientConfig {
                servers: vec![server.base()],
                subtree: "/t/".into(),
                sub_hwm_msgs: 0,
                ..ClientConfig::default()
            },
            idle,
        )?;
        c.wait_synced_or_stop(Duration::from_secs(10), stop)?;
        let fed_at = Instant::now();
        let (release, held) = std::sync::mpsc::channel();
        let feeder = Runner::task("bench-feeder", None, move || feed(&feeder_ctx, port, n, 10_000, "/t/", held))?;
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
            if stop.is_stopped() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(release);
        feeder.join()??;
        if stop.is_stopped() {
            return Err(interrupted());
        }
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
        let (release, held) = std::sync::mpsc::channel();
        let feeder = Runner::task("bench-feeder", None, move || feed(&feeder_ctx, port, n, 10_000, "/t/", held))?;
        let t = count_updates(&sub, n, "raw subscriber", stop);
        drop(release);
        feeder.join()??;
        (n, t?)
    };
    Ok(timed as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// Baseline in the same run: the same five-frame KVSETs from the feeder straight into a raw SUB
/// that decodes them (one hop, no server). The server path is two such hops plus the server.
fn baseline_once(n: u64, stop: &StopFlag) -> anyhow::Result<f64> {
    let port = free_port_block(3)?;
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_rcvhwm(0)?;
    sub.set_subscribe(b"")?;
    // The feeder connects its PUB to port+2, so bind the SUB there.
    sub.bind(&format!("tcp://127.0.0.1:{}", port + 2))?;
    let feeder_ctx = ctx.clone();
    let (release, held) = std::sync::mpsc::channel();
    let feeder = Runner::task("bench-feeder", None, move || feed(&feeder_ctx, port, n, 10_000, "/t/", held))?;
    let t = count_updates(&sub, n, "baseline subscriber", stop);
    drop(release);
    feeder.join()??;
    let t = t?;
    Ok(n as f64 / t.as_secs_f64().max(1e-9))
}

/// Seconds for a `clone::Client` to receive and store a snapshot of `keys` keys.
fn snapshot_once(keys: u64, idle: IdleStrategy, stop: &StopFlag) -> anyhow::Result<f64> {
    let server = InProcServer::start(idle)?;
    let ctx = zmq::Context::new();
    let (feeder_ctx, port) = (ctx.clone(), server.port);
    let (release, held) = std::sync::mpsc::channel();
    let feeder = Runner::task("bench-feeder", None, move || feed(&feeder_ctx, port, keys, keys, "/s/", held))?;
    let end = Instant::now() + Duration::from_secs(120);
    let filled = loop {
        let st = match crate::clone::server_status(&server.base(), Duration::from_secs(5)) {
            Ok(st) => st,
            Err(e) => break Err(e),
        };
        if st.lines().any(|l| l == format!("keys={keys}")) {
            break Ok(());
        }
        if Instant::now() > end {
            break Err(anyhow::anyhow!("server did not reach {keys} keys: {st}"));
        }
        if stop.is_stopped() {
            break Err(interrupted());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Every update arrived, or none will be waited for: the feeder closes without lingering.
    drop(release);
    feeder.join()??;
    filled?;
    let start = Instant::now();
    let client = Client::start_with(
        ClientConfig {
            servers: vec![server.base()],
            silence_ms: 10_000,
            snapshot_retry_ms: 10_000,
            ..ClientConfig::default()
        },
        idle,
    )?;
    let s = client.wait_synced_or_stop(Duration::from_secs(60), stop)?;
    let t = start.elapsed().as_secs_f64();
    if s.keys as u64 != keys {
        bail!("snapshot carried {} keys, expected {keys}", s.keys);
    }
    Ok(t)
}

/// Seconds from kill -9 of the active primary to a client receiving a live update from the backup.
fn failover_once(silence_ms: u64, idle: IdleStrategy, stop: &StopFlag) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("finding the mdsub binary")?;
    let pp = free_port_block(4)?;
    let bp = free_port_block(4)?;
    let spawn = |port: u16, role: &str, peer: u16| {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["clone-server", "--quiet", "--endpoint", &format!("tcp://127.0.0.1:{port}"), role, "--peer"])
            .arg(format!("tcp://127.0.0.1:{peer}"))
            .args(["--idle", idle.name()])
            .stdin(std::process::Stdio::null());
        // The servers end with this process however it ends (a second Ctrl-C or SIGTERM ends
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
                if stop.is_stopped() {
                    return Err(interrupted());
                }
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
        let writer = Client::start_with(cfg.clone(), idle)?;
        let watcher = Client::start_with(cfg, idle)?;
        writer.wait_synced_or_stop(Duration::from_secs(5), stop)?;
        watcher.wait_synced_or_stop(Duration::from_secs(5), stop)?;
        let rx = watcher.watch("/f/")?;
        let setter_stop = StopFlag::new();
        let s2 = setter_stop.clone();
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
        let seen = (0..100).any(|_| {
            stop.is_stopped() || rx.recv_timeout(Duration::from_millis(100)).is_ok_and(|c| c.kind == ChangeKind::Live)
        });
        if stop.is_stopped() || !seen {
            setter_stop.stop();
            let _ = setter.join();
            if stop.is_stopped() {
                return Err(interrupted());
            }
            bail!("the watcher saw no live update from the primary within 10 s");
        }
        let _ = prim.kill();
        let killed = Instant::now();
        let _ = prim.wait();
        while rx.try_recv().is_ok() {}
        let deadline = killed + Duration::from_secs(20);
        let mut t = None;
        while Instant::now() < deadline && !stop.is_stopped() {
            if let Ok(c) = rx.recv_timeout(Duration::from_millis(50)) {
                // Live updates after the kill that the dead primary cannot have sent.
                if c.kind == ChangeKind::Live && watcher.status()?.failovers >= 1 {
                    t = Some(killed.elapsed().as_secs_f64());
                    break;
                }
            }
        }
        setter_stop.stop();
        let _ = setter.join();
        if stop.is_stopped() {
            return Err(interrupted());
        }
        t.context("no live update within 20 s of the kill")
    })();
    let _ = prim.kill();
    let _ = back.kill();
    let _ = prim.wait();
    let _ = back.wait();
    result
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct CloneRun {
    /// The run it belongs to, from 1.
    pub run: usize,
    /// What was measured: `baseline` (feeder → raw SUB, no server), `raw-subscriber` (through
    /// the server to a SUB that decodes every KVPUB), `clone-client` (to a `clone::Client` that
    /// stores them), `clone-client/snapshot`, `clone-client/failover`.
    pub subscriber: &'static str,
    /// The throughput variants: updates per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_sec: Option<f64>,
    /// Snapshot and failover: seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Why this measurement gave no figure (loss, a timeout, a server that did not come up):
    /// the benchmark stops there and the result carries `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One variant's median over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct CloneMedians {
    pub subscriber: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// `mdsub clone-bench`'s result: the common envelope with one run entry per measurement, medians
/// per variant and the throughput ratios `raw-subscriber / baseline` and `clone-client / baseline`
/// (from the medians); `interrupted` and `runs_completed` added.
pub type CloneResult = Results<CloneRun, CloneMedians, f64, Completed>;

/// The variants, in the order measured: (name, figure is a rate (else seconds)).
const VARIANTS: [(&str, bool); 5] = [
    ("baseline", true),
    ("raw-subscriber", true),
    ("clone-client", true),
    ("clone-client/snapshot", false),
    ("clone-client/failover", false),
];

impl CloneResult {
    /// Keep one measurement of `subscriber` in run `run`: its figure, or why it has none (then
    /// also the result's `error`). The figure comes back, so the benchmark stops at a failure.
    fn record(&mut self, subscriber: &'static str, run: usize, m: anyhow::Result<f64>) -> Option<f64> {
        let rate = VARIANTS.iter().any(|(v, rate)| *v == subscriber && *rate);
        let (figure, error) = match m {
            Ok(x) => (Some(x), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        if let Some(e) = &error {
            self.error = Some(format!("{subscriber} run {run}: {e}"));
        }
        self.runs.push(CloneRun {
            run,
            subscriber,
            msgs_per_sec: figure.filter(|_| rate),
            seconds: figure.filter(|_| !rate),
            error,
        });
        figure
    }

    /// Measure `subscriber` in run `run` ([`record`](Self::record)) unless `stop` came before the
    /// measurement ended: one it cut short is no measurement (None, nothing kept).
    fn measure(
        &mut self,
        subscriber: &'static str,
        run: usize,
        stop: &StopFlag,
        m: impl FnOnce() -> anyhow::Result<f64>,
    ) -> Option<f64> {
        if stop.is_stopped() {
            return None;
        }
        let m = m();
        if stop.is_stopped() {
            return None;
        }
        self.record(subscriber, run, m)
    }
}

/// Run the clone benchmarks: one line per measurement and the medians said through `lines`, the
/// whole as the result. A measurement that fails ends the benchmark; the result then carries its
/// run with the error, and `error`. `stop` (Ctrl-C) ends it early: the result is then of the whole
/// runs before it (`interrupted`, `runs_completed`; the measurements of the run it cut are left
/// out), and `None` when no run was whole.
pub fn run(args: &CloneBenchConfig, lines: Lines, stop: &StopFlag) -> anyhow::Result<Option<CloneResult>> {
    let runs = args.runs.max(1);
    let machine = Machine::here();
    lines.say(format_args!("clone-bench  {machine}"));
    lines.say(format_args!(
        "clone-bench: {runs} run(s) each; updates {} (16-byte values, 10k keys), snapshot {} keys, silence {}, \
         idle {}",
        args.updates,
        args.keys,
        crate::diag::human_ms(args.silence_ms),
        args.idle.name()
    ));
    let settings = serde_json::json!({
        "runs": runs,
        "updates": args.updates,
        "value_bytes": 16,
        "update_keys": 10_000,
        "snapshot_keys": args.keys,
        "failover": !args.skip_failover,
        "silence_ms": args.silence_ms,
        "idle": args.idle,
        "transport": "tcp loopback",
    });
    let mut result = CloneResult {
        kind: "clone-bench",
        machine,
        settings,
        runs: Vec::new(),
        medians: Vec::new(),
        ratios: Vec::new(),
        extra: Completed::of(0, runs),
        error: None,
    };
    let mut completed = 0;
    'runs: for i in 1..=runs {
        let Some(b) = result.measure("baseline", i, stop, || baseline_once(args.updates, stop)) else { break 'runs };
        lines.say(format_args!("  baseline run {i}: feeder -> raw SUB, no server: {b:.0} updates/s"));
        let Some(r) =
            result.measure("raw-subscriber", i, stop, || throughput_once(args.updates, false, args.idle, stop))
        else {
            break 'runs;
        };
        let Some(c) = result.measure("clone-client", i, stop, || throughput_once(args.updates, true, args.idle, stop))
        else {
            break 'runs;
        };
        lines.say(format_args!(
            "  throughput run {i}: raw CHP subscriber {r:.0} updates/s, clone::Client {c:.0} updates/s"
        ));
        let Some(t) = result.measure("clone-client/snapshot", i, stop, || snapshot_once(args.keys, args.idle, stop))
        else {
            break 'runs;
        };
        lines.say(format_args!("  snapshot run {i}: {t:.3} s for {} keys", args.keys));
        if !args.skip_failover {
            let failover = || failover_once(args.silence_ms, args.idle, stop);
            let Some(t) = result.measure("clone-client/failover", i, stop, failover) else { break 'runs };
            lines.say(format_args!("  failover run {i}: {t:.3} s from kill -9 to the next live update"));
        }
        completed = i;
    }
    if result.error.is_some() {
        // A failed measurement ended it, not a stop: no result, whatever came before.
        result.extra = Completed { interrupted: false, runs_completed: completed };
        return Ok(Some(result));
    }
    if completed == 0 {
        return Ok(None);
    }
    // Every variant's median, and so the ratios, are of the same whole runs.
    let measured = result.runs.len();
    result.runs.retain(|r| r.run <= completed);
    result.extra = Completed::of(completed, runs);
    if let Some(line) = result.extra.said(runs, measured - result.runs.len()) {
        lines.say(format_args!("{line}"));
    }
    for (subscriber, rate) in VARIANTS {
        let of = |r: &CloneRun| if rate { r.msgs_per_sec } else { r.seconds };
        let figures: Vec<f64> = result.runs.iter().filter(|r| r.subscriber == subscriber).filter_map(of).collect();
        if figures.is_empty() {
            continue; // failover with --skip-failover
        }
        let m = median(figures);
        result.medians.push(CloneMedians {
            subscriber,
            msgs_per_sec: rate.then_some(m),
            seconds: (!rate).then_some(m),
        });
    }
    let med = |v: &str| result.medians.iter().find(|m| m.subscriber == v).and_then(|m| m.msgs_per_sec.or(m.seconds));
    let (base, raw, cli) =
        (med("baseline").unwrap_or(0.0), med("raw-subscriber").unwrap_or(0.0), med("clone-client").unwrap_or(0.0));
    lines.say(format_args!("median: baseline (one hop, no server) {base:.0} updates/s"));
    lines.say(format_args!("median: raw subscriber {raw:.0} updates/s"));
    lines.say(format_args!("median: clone::Client {cli:.0} updates/s"));
    if let Some(t) = med("clone-client/snapshot") {
        lines.say(format_args!("median: snapshot of {} keys {t:.3} s", args.keys));
    }
    if let Some(t) = med("clone-client/failover") {
        lines.say(format_args!("median: failover {t:.3} s"));
    }
    let ratio = |a: f64| if base > 0.0 { a / base } else { f64::NAN };
    result.ratios =
        vec![("raw-subscriber / baseline".into(), ratio(raw)), ("clone-client / baseline".into(), ratio(cli))];
    lines.say(format_args!(
        "ratios to the baseline: raw subscriber {:.2}, clone::Client {:.2}",
        ratio(raw),
        ratio(cli)
    ));
    Ok(Some(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_whose_receiver_died_does_not_hold_the_context_at_its_end() {
        // Before: the snapshot measurement fed with an unbounded linger, so updates queued for a
        // server that was gone (or a Ctrl-C before they were read) held the context's end for ever.
        // The ports are found free by binding and dropping listeners: a child forked meanwhile by
        // a test beside this one would hold them until its exec.
        let _no_fork = crate::test_forks::no_fork();
        let port = free_port_block(3).expect("ports");
        let peer_ctx = zmq::Context::new();
        let peer = peer_ctx.socket(zmq::SUB).expect("sub");
        peer.set_subscribe(b"").expect("subscribe");
        peer.set_rcvhwm(1).expect("hwm");
        peer.set_linger(0).expect("linger");
        peer.bind(&format!("tcp://127.0.0.1:{}", port + 2)).expect("bind");
        let ctx = zmq::Context::new();
        let feeder_ctx = ctx.clone();
        let (release, held) = std::sync::mpsc::channel();
        let (fed_tx, fed_rx) = std::sync::mpsc::channel();
        let feeder = Runner::task("bench-feeder", None, move || {
            let r = feed(&feeder_ctx, port, 200_000, 200_000, "/s/", held);
            let _ = fed_tx.send(());
            r
        })
        .expect("feeder");
        // The receiver reads one update (the feed is under way) and dies: most of the rest stay
        // queued in the feeder.
        peer.set_rcvtimeo(10_000).expect("timeout");
        peer.recv_bytes(0).expect("the feed started");
        drop(peer);
        drop(peer_ctx);
        drop(release);
        fed_rx.recv_timeout(Duration::from_secs(20)).expect("the feeder returned");
        feeder.join().expect("joined").expect("fed");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let _end = Runner::task("ctx-end", None, move || {
            drop(ctx);
            let _ = done_tx.send(());
        })
        .expect("task");
        done_rx.recv_timeout(Duration::from_secs(10)).expect("the context ended within 10 s");
    }

    #[test]
    fn a_failed_measurement_is_a_run_with_its_error_and_no_result() {
        let mut r = CloneResult {
            kind: "clone-bench",
            machine: Machine::here(),
            settings: serde_json::json!({}),
            runs: Vec::new(),
            medians: Vec::new(),
            ratios: Vec::new(),
            extra: Completed::of(1, 1),
            error: None,
        };
        assert_eq!(r.record("baseline", 1, Ok(5.0)), Some(5.0));
        assert_eq!(r.record("clone-client/snapshot", 1, Ok(0.5)), Some(0.5));
        let lost = Err(anyhow::anyhow!("raw subscriber got 7 of 10 updates within 120 s (loss?)"));
        assert_eq!(r.record("raw-subscriber", 1, lost), None);
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["runs"][0], serde_json::json!({"run": 1, "subscriber": "baseline", "msgs_per_sec": 5.0}));
        assert_eq!(v["runs"][1], serde_json::json!({"run": 1, "subscriber": "clone-client/snapshot", "seconds": 0.5}));
        assert_eq!(
            v["runs"][2],
            serde_json::json!({"run": 1, "subscriber": "raw-subscriber",
                "error": "raw subscriber got 7 of 10 updates within 120 s (loss?)"})
        );
        assert_eq!(v["error"], "raw-subscriber run 1: raw subscriber got 7 of 10 updates within 120 s (loss?)");
        // Not a result: the command's error, and an earlier --save file is left as it was.
        let dir = std::env::temp_dir().join(format!("mdsub-clone-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("clone.json");
        std::fs::write(&path, b"earlier").expect("earlier");
        let save = crate::bench::result::SaveFile::create(&path).expect("save");
        let e = r.finish(false, Some(save)).expect_err("no result");
        assert!(e.to_string().starts_with("raw-subscriber run 1: raw subscriber got 7"), "{e}");
        assert_eq!(std::fs::read(&path).expect("kept"), b"earlier");
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 1, "no partial file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
