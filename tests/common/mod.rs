//! Shared helpers for integration tests: deadlines, the built binary, child
//! processes ended by pid, their output as lines with deadlines; [`proxy`]
//! for the tests of the proxies (LVC, tap).
#![allow(dead_code)]

pub mod alloc;

pub mod help;

pub mod proxy;

pub mod relay;

pub mod testbed;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Poll `cond` until it is true or `deadline` passes; panics naming `what`.
pub fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out after {deadline:?} waiting for {what}");
}

/// The `mdsub` binary cargo built for this test run.
pub fn mdsub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mdsub"))
}

/// `mdsub replay` on an ephemeral port of 127.0.0.1 that sends at once, waiting for no subscriber:
/// the start of a test's replay command line, its own flags after it.
pub const LONE_REPLAY: [&str; 5] = ["replay", "--endpoint", "tcp://127.0.0.1:*", "--subscribers", "0"];

/// A child process that is killed (by pid) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc { child, name: name.to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal by pid (e.g. libc SIGINT = 2, SIGKILL = 9).
    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
    }

    /// Wait for exit up to `deadline`; panics naming the process if it does not exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let tail = self.stderr_tail(40);
                    panic!(
                        "{} (pid {}) did not exit within {deadline:?}; the end of its stderr:\n{tail}",
                        self.name,
                        self.pid()
                    );
                }
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }
}

impl Proc {
    /// The last `lines` lines of its stderr, if it was piped and the process is gone (what a
    /// test that gave up on it shows, so a hang in CI says where it was).
    fn stderr_tail(&mut self, lines: usize) -> String {
        use std::io::Read;
        let mut err = String::new();
        match self.child.stderr.take() {
            Some(mut e) => {
                let _ = e.read_to_string(&mut err);
            }
            None => return "(not piped)".into(),
        }
        let all: Vec<&str> = err.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The first of `n` consecutive free TCP ports on 127.0.0.1 (for tools that take a port base,
/// like the clone server's P, P+1, P+2). Prefer binding `tcp://127.0.0.1:*` where possible.
///
/// The block lies below the kernel's ephemeral range, in 10000-19999 (`unserved_port_block`
/// keeps to 20000-29999): a connecting socket's local port comes from the ephemeral range, so a
/// port there can be taken by a libzmq connect that races the server's bind, even the very port
/// it connects to (a TCP self-connect: the link fails with `protocol_error` and the server cannot
/// bind; a Binary Star pair in CI never settled that way). Blocks are handed out in turn from a
/// cursor seeded by the pid, so two tests of one binary never get the same block.
pub fn free_port_block(n: u16) -> u16 {
    use std::sync::atomic::AtomicU32;
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|lo| lo.parse::<u32>().ok()))
        .unwrap_or(32_768);
    assert!(ephemeral_lo >= 20_000, "the ephemeral port range starts at {ephemeral_lo}, inside the tests' 10000-19999");
    port_block(n, 10_000..20_000, &HANDED_OUT)
}

/// The first of `n` consecutive ports nothing listens on, outside the kernel's ephemeral range
/// (so libzmq's retries cannot connect a socket to itself), for endpoints nobody serves (or that
/// the test serves later itself). Handed out in turn like [`free_port_block`]'s, in 20000-29999.
///
/// Before, every call took the first free port from 20000 with a listening probe: two tests of
/// one binary (or of two test runs on one host) got the same "unserved" port, and the one's
/// probe listened on it for a moment, long enough on a loaded host for the other's engine to
/// connect there and lose the connection, so it never said its link was not up (3 of 5 runs of
/// `an_endpoint_nobody_serves_is_said_not_silently_waited_on` with a prober on 20000).
pub fn unserved_port_block(n: u16) -> u16 {
    static HANDED_OUT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    port_block(n, 20_000..30_000, &HANDED_OUT)
}

/// `n` consecutive ports of `range` that can be bound on 127.0.0.1, from a cursor (`handed_out`)
/// seeded by the pid, so two tests of one binary never get the same block.
fn port_block(n: u16, range: std::ops::Range<u32>, handed_out: &std::sync::atomic::AtomicU32) -> u16 {
    let n32 = u32::from(n.max(1));
    let span = range.end - range.start;
    let seed = std::process::id().wrapping_mul(97) % span;
    for _ in 0..span / n32 {
        let base = range.start + (seed + handed_out.fetch_add(n32, std::sync::atomic::Ordering::Relaxed)) % span;
        if base + n32 > range.end {
            continue;
        }
        let base = base as u16;
        if (0..n).all(|i| bindable(base + i)) {
            return base;
        }
    }
    panic!("no block of {n} free ports in {}-{}", range.start, range.end - 1);
}

/// Whether 127.0.0.1:`port` can be bound: a TCP socket is bound there (without SO_REUSEADDR, so
/// any socket bound there, listening or not, refuses it) and closed without listening. A probe
/// that listened (`TcpListener::bind`) served the port for that moment: a connect from another
/// test to a port it took for unserved could land there.
fn bindable(port: u16) -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, owned (and closed) by `OwnedFd`; the address outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let _owned = OwnedFd::from_raw_fd(fd);
        libc::bind(fd, &addr as *const libc::sockaddr_in as *const libc::sockaddr, len) == 0
    }
}

/// True once a `mdsub capacity --out dir` results folder holds an interval log: a trial's
/// engine is up.
pub fn has_trial_hlog(dir: &std::path::Path) -> bool {
    !trial_hlogs(dir).is_empty()
}

/// The trials' interval logs in a capacity results folder `dir` (in its run folders).
pub fn trial_hlogs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let runs = std::fs::read_dir(dir).into_iter().flatten().flatten();
    let files = runs.flat_map(|run| std::fs::read_dir(run.path()).into_iter().flatten().flatten());
    files.map(|f| f.path()).filter(|p| p.extension().is_some_and(|e| e == "hlog")).collect()
}

/// How many interval lines the HdrHistogram log at `path` holds so far (0 if unreadable).
pub fn hlog_intervals(path: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // An interval line: `Tag=NAME,start,length,max,histogram` (or without the tag).
    text.lines().filter(|l| l.starts_with("Tag=") || l.starts_with(|c: char| c.is_ascii_digit())).count()
}

/// The lines of `r` (a child's stdout or stderr) on a channel, read by a
/// thread of their own, so every read can have a deadline.
pub fn lines_of<R: std::io::Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Next line matching `pred` within `deadline`; panics naming `what`.
pub fn wait_line(rx: &Receiver<String>, deadline: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return line,
            Ok(_) => {}
            Err(_) => panic!("timed out after {deadline:?} waiting for a line with {what}"),
        }
    }
}

/// A child whose stdout lines arrive on a channel (so reads have deadlines).
pub struct LineProc {
    pub proc: Proc,
    pub lines: Receiver<String>,
    /// Stderr's lines, when spawned by [`LineProc::spawn_with_stderr`].
    pub stderr: Option<Receiver<String>>,
}

impl LineProc {
    /// Spawn with stdout piped into `lines`; stderr goes to the test's stderr.
    pub fn spawn(name: &str, cmd: &mut Command) -> LineProc {
        let mut proc = Proc::spawn(name, cmd.stdout(Stdio::piped()));
        let out = proc.child.stdout.take().expect("piped stdout");
        LineProc { proc, lines: lines_of(out), stderr: None }
    }

    /// [`LineProc::spawn`] with stderr's lines on `stderr` too.
    pub fn spawn_with_stderr(name: &str, cmd: &mut Command) -> LineProc {
        let mut p = LineProc::spawn(name, cmd.stderr(Stdio::piped()));
        p.stderr = p.proc.child.stderr.take().map(lines_of);
        p
    }

    /// The next line that starts with `prefix`, within `deadline`.
    pub fn line_starting(&self, prefix: &str, deadline: Duration) -> String {
        let what = format!("{}: a line starting with {prefix:?}", self.proc.name);
        wait_line(&self.lines, deadline, &what, |l| l.starts_with(prefix))
    }

    /// The rest of the next stderr line that starts with `prefix`, within 20 s: what a startup
    /// line such as `shard0: bound EP` or `metrics: URL` names. Needs
    /// [`LineProc::spawn_with_stderr`].
    pub fn said_after(&self, prefix: &str) -> String {
        let err = self.stderr.as_ref().unwrap_or_else(|| panic!("{}: stderr not piped", self.proc.name));
        let what = format!("{}: a stderr line starting with {prefix:?}", self.proc.name);
        let line = wait_line(err, Duration::from_secs(20), &what, |l| l.starts_with(prefix));
        line[prefix.len()..].to_string()
    }

    /// Stop it with SIGINT, as an operator does, and return its `--json` report: it must exit
    /// cleanly (0) within `deadline` and print one JSON object.
    pub fn interrupt_for_report(self, deadline: Duration) -> serde_json::Value {
        self.proc.signal(2);
        let name = self.proc.name.clone();
        let (status, out) = self.finish(deadline);
        assert!(status.success(), "{name} failed on SIGINT ({status}): {out}");
        json(&out)
    }

    /// Wait for exit and return everything it printed after what was read.
    pub fn finish(mut self, deadline: Duration) -> (std::process::ExitStatus, String) {
        let status = self.proc.wait_exit(deadline);
        let mut rest = String::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            rest.push_str(&l);
            rest.push('\n');
        }
        (status, rest)
    }
}

/// Start `mdsub replay` bound to ephemeral ports; returns it and its endpoints.
pub fn start_replay(name: &str, shards: usize, extra: &[&str]) -> (LineProc, Vec<String>) {
    let mut cmd = mdsub();
    cmd.arg("replay");
    for _ in 0..shards {
        cmd.args(["--endpoint", "tcp://127.0.0.1:*"]);
    }
    cmd.args(extra);
    let p = if extra.contains(&"--json") {
        LineProc::spawn_with_stderr(name, &mut cmd)
    } else {
        LineProc::spawn(name, &mut cmd)
    };
    let eps = bound_endpoints(&p, shards);
    (p, eps)
}

/// The `bound shardK EP` lines of a replay: on stdout, or on stderr with `--json` (whose
/// stdout is the one JSON object at the end; `p` then has `stderr` lines).
pub fn bound_endpoints(p: &LineProc, shards: usize) -> Vec<String> {
    let rx = p.stderr.as_ref().unwrap_or(&p.lines);
    (0..shards)
        .map(|k| {
            let prefix = format!("bound shard{k} ");
            let what = format!("{}: a line starting with {prefix:?}", p.proc.name);
            wait_line(rx, Duration::from_secs(20), &what, |l| l.starts_with(&prefix))
                .rsplit(' ')
                .next()
                .expect("endpoint")
                .to_string()
        })
        .collect()
}

/// Start `mdsub engine --json` (90 s at most) on `endpoints`, one
/// `--endpoint` each, with `extra` flags after them.
pub fn engine_json<S: AsRef<str>>(endpoints: &[S], extra: &[&str]) -> LineProc {
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "90s"]);
    for e in endpoints {
        cmd.args(["--endpoint", e.as_ref()]);
    }
    cmd.args(extra);
    LineProc::spawn("engine", &mut cmd)
}

/// The unsigned field `k` of a JSON object; panics naming it when missing.
pub fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("field {k} missing in {v}"))
}

/// A fresh, empty directory `mdsub-{name}-{pid}` under the system temp dir.
pub fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("mdsub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    TempDir(d)
}

/// A test's scratch directory, removed with everything in it when the test is done with it
/// (also when it panics, so a failed run does not leave its files in /tmp either).
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True when `/dev/full` (where every write fails with ENOSPC) exists; otherwise says
/// `SKIPPED {test}: …` and the test returns.
pub fn dev_full_or_skip(test: &str) -> bool {
    let there = std::path::Path::new("/dev/full").exists();
    if !there {
        eprintln!("SKIPPED {test}: no /dev/full to make a write fail");
    }
    there
}

/// An XPUB standing in for a publisher the test holds: verbose (every subscription, a repeated
/// one too, comes up to `recv`, so the test sees each handshake finish without sleeping) and
/// with no linger. Bind or connect it, and set its HWMs and timeouts, as the test needs.
pub fn watching_xpub(ctx: &zmq::Context) -> zmq::Socket {
    let s = ctx.socket(zmq::XPUB).expect("xpub");
    s.set_xpub_verbose(true).expect("verbose");
    s.set_linger(0).expect("linger");
    s
}

/// A publisher the test holds ([`watching_xpub`], no send HWM), connected to the engine's bound
/// endpoint `ep` once the engine's subscription reached it (its handshake is done), within 20 s.
pub fn connected_publisher(ctx: &zmq::Context, ep: &str) -> zmq::Socket {
    let publ = watching_xpub(ctx);
    publ.set_sndhwm(0).expect("sndhwm");
    publ.set_rcvtimeo(20_000).expect("rcvtimeo");
    publ.connect(ep).expect("connect to the engine");
    assert_eq!(publ.recv_bytes(0).expect("the engine's subscription within 20 s").first(), Some(&1));
    publ
}

/// Run `mdsub ARGS` to success within `deadline` and parse the JSON it prints.
pub fn mdsub_json(args: &[&str], deadline: Duration) -> serde_json::Value {
    let (code, out, err) = run_within(args[0], mdsub().args(args), deadline);
    assert_eq!(code, Some(0), "mdsub {args:?} failed: {err}");
    json(&out)
}

/// A benchmark's `--json` result, all of stdout: one object of `kind`, stamped with the machine
/// (cores, libzmq, commit, date), its settings and the envelope every benchmark shares.
pub fn bench_result(kind: &str, stdout: &str) -> serde_json::Value {
    let r = json(stdout);
    assert_eq!(r["kind"], kind, "{r}");
    let m = &r["machine"];
    assert!(m["cores"].as_u64() > Some(0), "{m}");
    assert!(m["libzmq"].as_str().is_some_and(|v| v.starts_with("4.")), "{m}");
    assert!(m["mdsub_commit"].as_str().is_some_and(|c| !c.is_empty()), "{m}");
    assert!(m["date_utc"].as_str().is_some_and(|d| d.len() == 19 && d.starts_with("20")), "{m}");
    assert!(r["settings"].is_object(), "{r}");
    for list in ["runs", "medians", "ratios"] {
        assert!(r[list].is_array(), "{list}: {r}");
    }
    r
}

/// A bench command (`kind`: lvc-bench, clone-bench) ended by Ctrl-C after its first whole run of
/// `runs`: exit 0, its JSON result marked interrupted with 1 to runs-1 whole runs, no error, the
/// `--save` file holding that result, the line that says so on stderr (`said`) and no
/// `mdsub: interrupted`. Returns the result and its whole runs.
pub fn interrupted_result(
    kind: &str,
    status: std::process::ExitStatus,
    stdout: &str,
    said: &[String],
    save: &std::path::Path,
    runs: usize,
) -> (serde_json::Value, usize) {
    assert_eq!(status.code(), Some(0), "a result of the whole runs, exit 0; stderr: {said:?}");
    let r = bench_result(kind, stdout);
    assert_eq!(r["interrupted"], true, "{r}");
    let done = r["runs_completed"].as_u64().expect("runs_completed") as usize;
    assert!((1..runs).contains(&done), "stopped after run 1, before run {runs}: {done}");
    assert!(r.get("error").is_none(), "{r}");
    let saved = json(&std::fs::read_to_string(save).expect("--save file written"));
    assert_eq!(saved, r, "--save and --json hold the one result");
    let expected = format!("interrupted after {done} of {runs} runs");
    let line = said.iter().find(|l| l.starts_with(&expected)).unwrap_or_else(|| panic!("`{expected}` in {said:?}"));
    assert!(line.ends_with(&format!("the medians and ratios are of those {done}")), "{line}");
    assert!(!said.iter().any(|l| l == "mdsub: interrupted"), "{said:?}");
    (r, done)
}

/// A `[what, value]` ratio of a benchmark result, by name.
pub fn ratio(r: &serde_json::Value, what: &str) -> f64 {
    let found = r["ratios"].as_array().and_then(|a| a.iter().find(|x| x[0] == what));
    found.and_then(|x| x[1].as_f64()).unwrap_or_else(|| panic!("no ratio {what:?}: {r}"))
}

/// The medians entry of a benchmark result for `subscriber`.
pub fn medians_of<'a>(r: &'a serde_json::Value, subscriber: &str) -> &'a serde_json::Value {
    let found = r["medians"].as_array().and_then(|a| a.iter().find(|m| m["subscriber"] == subscriber));
    found.unwrap_or_else(|| panic!("no medians for {subscriber:?}: {r}"))
}

/// Parse JSON printed by a command.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Run `cmd` to completion within `deadline` (killed by pid otherwise);
/// returns (exit code, stdout, stderr).
pub fn run_within(name: &str, cmd: &mut Command, deadline: Duration) -> (Option<i32>, String, String) {
    outputs_within(Proc::spawn(name, cmd.stdout(Stdio::piped()).stderr(Stdio::piped())), deadline)
}

/// [`run_within`] with `input` written to the command's stdin (which is then closed): a tool
/// that reads what it checks or applies from stdin (`promtool check metrics`, `nft -f -`).
pub fn run_fed_within(
    name: &str,
    cmd: &mut Command,
    input: &[u8],
    deadline: Duration,
) -> (Option<i32>, String, String) {
    use std::io::Write;
    let piped = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = piped.spawn().unwrap_or_else(|e| panic!("spawning {name}: {e}"));
    let mut p = Proc { child, name: name.to_string() };
    let mut stdin = p.child.stdin.take().expect("piped stdin");
    stdin.write_all(input).unwrap_or_else(|e| panic!("feeding {name} its stdin: {e}"));
    drop(stdin);
    outputs_within(p, deadline)
}

/// Wait for `p` (its stdout and stderr piped) to exit within `deadline`, reading both
/// meanwhile: (exit code, stdout, stderr).
fn outputs_within(mut p: Proc, deadline: Duration) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut out = p.child.stdout.take().expect("stdout");
    let mut err = p.child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = p.wait_exit(deadline);
    (status.code(), o.join().unwrap_or_default(), e.join().unwrap_or_default())
}

/// tests/dashboards/check.py: the independent reader (in Python) of what mdsub writes for
/// other tools: an interval log, a /metrics scrape, a PromQL query.
pub const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboards/check.py");

/// Why the Python `modules` cannot be imported (python3 or one of them missing), or None.
pub fn python_missing(modules: &[&str]) -> Option<String> {
    for m in modules {
        match Command::new("python3").args(["-c", &format!("import {m}")]).output() {
            Err(e) => return Some(format!("python3 not runnable: {e}")),
            Ok(o) if !o.status.success() => {
                return Some(format!("python module `{m}` missing (tools/ci-setup.sh installs it)"))
            }
            Ok(_) => {}
        }
    }
    None
}

/// What [`CHECK`] prints for `args`, as JSON (it must succeed within 60 s).
pub fn python_json(args: &[&str]) -> serde_json::Value {
    let (code, out, err) =
        run_within("check.py", Command::new("python3").arg(CHECK).args(args), Duration::from_secs(60));
    assert_eq!(code, Some(0), "check.py {args:?} failed: {err}");
    json(&out)
}

/// The interval log at `hlog` as Python's `hdrh` reads it ([`CHECK`] `hlog`): the independent
/// read-back. None, said on stderr as skipped, where `hdrh` is missing.
pub fn hlog_read_back(hlog: &std::path::Path) -> Option<serde_json::Value> {
    if let Some(why) = python_missing(&["hdrh"]) {
        eprintln!("SKIPPED the independent .hlog read-back: {why}");
        return None;
    }
    Some(python_json(&["hlog", hlog.to_str().expect("a UTF-8 .hlog path")]))
}

/// CPU time (user + system, in ms) the thread named `name` of process `pid`
/// has used so far; None while no such thread exists.
pub fn thread_cpu_ms(pid: u32, name: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(task_dir(pid, name)?.join("stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a constant of the running kernel.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1000 / hz)
}

/// The /proc directory of the thread of `pid` named `name` (its first, by task id order).
pub fn task_dir(pid: u32, name: &str) -> Option<std::path::PathBuf> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .flatten()
        .map(|t| t.path())
        .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|comm| comm.trim_end() == name))
}

/// Every line still to come until the stream closes (the process exited).
pub fn rest_lines(rx: &std::sync::mpsc::Receiver<String>, deadline: Duration) -> Vec<String> {
    let end = Instant::now() + deadline;
    let mut out = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => out.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return out,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("output did not close within {deadline:?}"),
        }
    }
}

/// A tmpfs a test mounts (needs root), unmounted and removed on drop, in every path: a small
/// disk to fill.
pub struct Tmpfs {
    pub dir: std::path::PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs with `options` (`size=64k`, `nr_inodes=5`), or `Err(reason)` when this
    /// process cannot (not root, no mount): the test then skips, saying why.
    pub fn mount(name: &str, options: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root, so a tmpfs cannot be mounted".into());
        }
        let dir = std::env::temp_dir().join(format!("mdsub-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir })
    }

    /// [`Tmpfs::mount`], or None after saying `SKIPPED {test}: why` when it cannot be mounted.
    pub fn mount_or_skip(test: &str, options: &str) -> Option<Tmpfs> {
        Tmpfs::mount(test, options).map_err(|why| eprintln!("SKIPPED {test}: {why}")).ok()
    }

    /// Write a file until the file system says it is full; returns its path.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
        let chunk = [0u8; 4096];
        let mut full = false;
        for _ in 0..100_000 {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling the tmpfs: {e}");
                full = true;
                break;
            }
        }
        assert!(full, "the tmpfs never filled up");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What `mdsub ARGS` showed on a terminal `columns` wide: its exit code and each line the
/// terminal was given, a redraw (`\r`, back to the line's start) starting a new one, without
/// escape sequences or trailing blanks. Run within `deadline` on the pseudo-terminal of
/// util-linux `script` with 24 rows (`stty cols` alone leaves 0 rows, a size the terminal crate
/// reads as none, and the width is then 80); None when `script` is missing, said on stderr as
/// `test` skipped.
pub fn on_a_terminal(
    test: &str,
    columns: u16,
    args: &[&str],
    deadline: Duration,
) -> Option<(Option<i32>, Vec<String>)> {
    if Command::new("script").arg("--version").stdout(Stdio::null()).status().is_err() {
        eprintln!("{test}: skipped: `script` (util-linux) is missing, and with it a terminal to draw on");
        return None;
    }
    // Single-quoted for the shell `script` runs the command in.
    let quoted = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let command: Vec<String> =
        std::iter::once(env!("CARGO_BIN_EXE_mdsub")).chain(args.iter().copied()).map(quoted).collect();
    let shell = format!("stty rows 24 cols {columns} && exec {}", command.join(" "));
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-f", "-c", &shell, "/dev/null"]).env("TERM", "xterm").env_remove("COLUMNS");
    let (code, out, _) = run_within(test, &mut cmd, deadline);
    Some((code, screen_lines(&out)))
}

/// The lines of what a terminal was given ([`on_a_terminal`]).
pub fn screen_lines(out: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for part in out.split(['\r', '\n']) {
        // Escape sequences (CSI: ESC [ parameters, a final letter) removed.
        let mut text = String::with_capacity(part.len());
        let mut chars = part.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' && chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                text.push(c);
            }
        }
        let text = text.trim_end();
        if !text.is_empty() {
            lines.push(text.to_string());
        }
    }
    lines
}
