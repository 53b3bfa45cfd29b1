//! Helpers for the proxy tests (LVC, tap, pipeline): start a proxy process
//! and read its endpoints back, a publisher handshake through the proxy, mdsub frames.

use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mdsub::wire::{encode, Header, Kind};

use super::{lines_of, mdsub, wait_line, Proc};

/// A proxy process (`mdsub lvc` / `mdsub tap`) and its output.
pub struct Proxy {
    pub proc: Proc,
    pub frontend: String,
    pub backend: String,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
}

/// Every line still to come until the stream closes (the process exited).
pub fn rest_lines(rx: &Receiver<String>, deadline: Duration) -> Vec<String> {
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

/// Start `mdsub <tool>` bound to two wildcard ports; reads the endpoints back.
pub fn start(tool: &str, extra: &[&str]) -> Proxy {
    start_with(tool, "bind:tcp://127.0.0.1:*", "bind:tcp://127.0.0.1:*", extra)
}

/// Start `mdsub <tool>` with these `--frontend`/`--backend` values; reads the
/// endpoints in effect back from its startup lines.
pub fn start_with(tool: &str, frontend: &str, backend: &str, extra: &[&str]) -> Proxy {
    let mut cmd = mdsub();
    cmd.arg(tool)
        .args(["--frontend", frontend, "--backend", backend])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(tool, &mut cmd);
    let stdout = lines_of(proc.child.stdout.take().expect("stdout piped"));
    let stderr = lines_of(proc.child.stderr.take().expect("stderr piped"));
    let endpoint = |side: &str| {
        let tag = format!("{tool}: {side} ");
        // With --json, stdout is kept for the one JSON object at the end.
        let rx = if extra.contains(&"--json") { &stderr } else { &stdout };
        let line = wait_line(rx, Duration::from_secs(10), &format!("the {side} endpoint"), |l| l.starts_with(&tag));
        line.rsplit(' ').next().unwrap_or_default().to_string()
    };
    let frontend = endpoint("frontend");
    let backend = endpoint("backend");
    Proxy { proc, frontend, backend, stdout, stderr }
}

/// Stop a proxy with SIGINT; returns its remaining stdout and stderr lines.
pub fn stop(p: &mut Proxy) -> (Vec<String>, Vec<String>) {
    p.proc.signal(2);
    let status = p.proc.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{} exited with {status}", p.proc.name);
    (rest_lines(&p.stdout, Duration::from_secs(5)), rest_lines(&p.stderr, Duration::from_secs(5)))
}

/// An mdsub data frame.
pub fn frame(topic: &str, stream_seq: u64, topic_seq: u64, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        kind: Kind::Data,
        flags: 0,
        publisher_id: 7,
        session_id: 0x5eed,
        stream_seq,
        topic_seq,
        send_time_ns: mdsub::wire::now_ns(),
    };
    encode(topic.as_bytes(), &h, payload)
}

pub const PROBE: &str = "_probe";

/// A PUB connected to `endpoint` with a high SNDHWM (a burst must not drop).
pub fn publisher(ctx: &zmq::Context, endpoint: &str) -> zmq::Socket {
    let s = ctx.socket(zmq::PUB).expect("pub");
    s.set_sndhwm(100_000).expect("sndhwm");
    s.set_linger(0).expect("linger");
    s.connect(endpoint).expect("pub connects");
    s
}

/// A SUB connected to `endpoint` with a receive timeout, subscribed to `prefixes`.
pub fn subscriber(ctx: &zmq::Context, endpoint: &str, prefixes: &[&[u8]]) -> zmq::Socket {
    let s = ctx.socket(zmq::SUB).expect("sub");
    s.set_rcvhwm(100_000).expect("rcvhwm");
    s.set_linger(0).expect("linger");
    s.set_rcvtimeo(100).expect("rcvtimeo");
    s.connect(endpoint).expect("sub connects");
    for p in prefixes {
        s.set_subscribe(p).expect("subscribe");
    }
    s
}

/// Receive one whole message within `deadline`.
pub fn recv_within(sub: &zmq::Socket, deadline: Duration, what: &str) -> Vec<Vec<u8>> {
    let end = Instant::now() + deadline;
    loop {
        match sub.recv_multipart(0) {
            Ok(m) => return m,
            Err(zmq::Error::EAGAIN) if Instant::now() < end => {}
            Err(e) => panic!("no message within {deadline:?} while waiting for {what}: {e}"),
        }
    }
}

/// Handshake without sleeping: publish probe frames until `sub` (subscribed
/// to the probe topic through the proxy) receives one, so the whole path is up.
pub fn handshake(publisher: &zmq::Socket, sub: &zmq::Socket) {
    let end = Instant::now() + Duration::from_secs(10);
    let mut seq = 0;
    loop {
        seq += 1;
        publisher.send(frame(PROBE, 0, seq, b"handshake"), 0).expect("probe");
        if let Ok(m) = sub.recv_multipart(0) {
            if is_probe(&m, None) {
                return;
            }
        }
        assert!(Instant::now() < end, "path through the proxy did not come up within 10 s");
    }
}

/// Whether `m` is a probe frame (with this payload, if given).
pub fn is_probe(m: &[Vec<u8>], marker: Option<&[u8]>) -> bool {
    match m {
        [only] => match mdsub::wire::decode(only) {
            Ok(v) => v.topic == PROBE.as_bytes() && marker.is_none_or(|mk| v.payload == mk),
            Err(_) => false,
        },
        _ => false,
    }
}

/// Drain `sub` until a probe (with `marker`, if given) arrives; returns the
/// messages before it, other probes left out.
pub fn until_probe(sub: &zmq::Socket, deadline: Duration, marker: Option<&[u8]>) -> Vec<Vec<Vec<u8>>> {
    let mut got = Vec::new();
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let m = recv_within(sub, left, "the probe that ends a batch");
        if is_probe(&m, marker) {
            return got;
        }
        if !is_probe(&m, None) {
            got.push(m);
        }
    }
}

/// The value of `name=` in a counters line.
pub fn counter(line: &str, name: &str) -> u64 {
    let tag = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&tag))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no counter {name} in {line}"))
}
