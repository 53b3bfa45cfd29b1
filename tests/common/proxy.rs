//! Helpers for the proxy tests (LVC, tap, pipeline): start a proxy process
//! and read its endpoints back, a publisher handshake through the proxy, mdsub frames.

use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mdsub::wire::{encode, Header, Kind};

pub use super::rest_lines;
use super::{lines_of, mdsub, wait_line, Proc};

/// A proxy process (`mdsub lvc` / `mdsub tap`) and its output.
pub struct Proxy {
    pub proc: Proc,
    pub frontend: String,
    pub backend: String,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
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

/// Bytes libzmq takes for ZMTP 1.0 (a first byte that is not 0xFF, as random bytes or a stray
/// client send): an empty identity, then one-frame messages of `bodies` (length byte, flags, body).
pub fn zmtp1_bytes(bodies: &[&[u8]]) -> Vec<u8> {
    let mut bytes = vec![0x01, 0x00];
    for body in bodies {
        bytes.extend_from_slice(&[body.len() as u8 + 1, 0x00]);
        bytes.extend_from_slice(body);
    }
    bytes
}

/// Read `raw` until its peer ends the connection (EOF or a reset), at most 10 s: false when it
/// did not.
pub fn ended_within_10s(raw: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let _ = raw.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 64];
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match raw.read(&mut buf) {
            Ok(0) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Ok(_) if Instant::now() < end => {}
            _ => return false,
        }
    }
}

/// Stop a proxy with SIGINT; returns its remaining stdout and stderr lines.
pub fn stop(p: &mut Proxy) -> (Vec<String>, Vec<String>) {
    let (status, out, err) = interrupt(p);
    assert!(status.success(), "{} exited with {status}", p.proc.name);
    (out, err)
}

/// SIGINT to a proxy, whatever way it then exits: its exit status and remaining stdout and
/// stderr lines.
pub fn interrupt(p: &mut Proxy) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
    p.proc.signal(2);
    let status = p.proc.wait_exit(Duration::from_secs(10));
    (status, rest_lines(&p.stdout, Duration::from_secs(5)), rest_lines(&p.stderr, Duration::from_secs(5)))
}

/// The `TOOL: stopped: …` line of counters a proxy prints on exit, from its stderr `err`.
pub fn stopped_line<'a>(tool: &str, err: &'a [String]) -> &'a str {
    let head = format!("{tool}: stopped:");
    err.iter().find(|l| l.starts_with(&head)).unwrap_or_else(|| panic!("no `{head}` counters on exit: {err:?}"))
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
        send_time_ns: mdsub::clock::realtime_ns(),
    };
    encode(topic.as_bytes(), &h, payload)
}

/// Three frames of `topic` the wire decoder refuses, in order: version 9, kind 7, and a
/// payload one byte longer than its header says (sequences from `first_seq`).
pub fn bad_frames(topic: &str, first_seq: u64) -> [Vec<u8>; 3] {
    let at = topic.len() + 1;
    let mut version = frame(topic, first_seq, first_seq, b"bad");
    version[at] = 9;
    let mut kind = frame(topic, first_seq + 1, first_seq + 1, b"bad");
    kind[at + 1] = 7;
    let mut length = frame(topic, first_seq + 2, first_seq + 2, b"bad");
    length.push(b'!');
    [version, kind, length]
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

/// A publisher at `p`'s frontend and a subscriber to everything at its backend, once a probe
/// has passed between them ([`handshake`]): the path through the proxy is up.
pub fn connected_path(ctx: &zmq::Context, p: &Proxy) -> (zmq::Socket, zmq::Socket) {
    let publ = publisher(ctx, &p.frontend);
    let sub = subscriber(ctx, &p.backend, &[b""]);
    handshake(&publ, &sub);
    (publ, sub)
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

/// A raw ZMTP 3.0 peer posing as an XSUB: it sends whatever bytes it likes
/// (libzmq's own XSUB would filter a stray unsubscribe before it left).
pub struct RawXsub {
    tcp: std::net::TcpStream,
}

impl RawXsub {
    pub fn connect(endpoint: &str) -> RawXsub {
        Self::connect_as(endpoint, "XSUB")
    }

    /// A raw ZMTP 3.0 peer whose READY names `socket_type` (`REQ`, `SUB`, …).
    pub fn connect_as(endpoint: &str, socket_type: &str) -> RawXsub {
        use std::io::{Read, Write};
        let addr = endpoint.trim_start_matches("tcp://");
        let mut tcp = std::net::TcpStream::connect(addr).expect("tcp connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 0];
        greeting.extend_from_slice(b"NULL");
        greeting.resize(64, 0);
        // As libzmq does: the signature first, the rest once the peer's came.
        let mut theirs = [0u8; 64];
        tcp.write_all(&greeting[..10]).expect("signature");
        tcp.read_exact(&mut theirs[..10]).expect("peer's signature");
        tcp.write_all(&greeting[10..]).expect("greeting");
        tcp.read_exact(&mut theirs[10..]).expect("peer's greeting");
        tcp.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let mut ready = vec![5u8];
        ready.extend_from_slice(b"READY");
        ready.push(11);
        ready.extend_from_slice(b"Socket-Type");
        ready.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
        ready.extend_from_slice(socket_type.as_bytes());
        let mut cmd = vec![0x04, ready.len() as u8];
        cmd.extend_from_slice(&ready);
        tcp.write_all(&cmd).expect("ready");
        RawXsub { tcp }
    }

    /// One single-frame message (a long frame where it needs one).
    pub fn send(&mut self, body: &[u8]) {
        use std::io::Write;
        let mut f = match u8::try_from(body.len()) {
            Ok(short) => vec![0x00, short],
            Err(_) => [&[0x02][..], &(body.len() as u64).to_be_bytes()].concat(),
        };
        f.extend_from_slice(body);
        self.tcp.write_all(&f).expect("frame");
    }

    /// The head of a one-frame message declaring `len` bytes, then `first` of them (a peer that
    /// may stop reading at the head: an error writing is the peer's end, not the test's).
    pub fn send_head_of(&mut self, len: u64, first: &[u8]) {
        use std::io::Write;
        let _ = self.tcp.write_all(&[&[0x02][..], &len.to_be_bytes(), first].concat());
    }

    /// True once the peer ends the connection (its close or reset), false if it is still open
    /// after `deadline` (what it sends meanwhile is skipped).
    pub fn ended_within(&mut self, deadline: Duration) -> bool {
        use std::io::Read;
        let end = Instant::now() + deadline;
        let mut chunk = [0u8; 4096];
        while Instant::now() < end {
            match self.tcp.read(&mut chunk) {
                Ok(0) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                _ => {}
            }
        }
        false
    }

    /// True once a message frame starting with `prefix` arrives (skips the
    /// peer's commands), false after `deadline`.
    pub fn wait_for(&mut self, prefix: &[u8], deadline: Duration) -> bool {
        use std::io::Read;
        let end = Instant::now() + deadline;
        let mut buf = Vec::new();
        while Instant::now() < end {
            let mut chunk = [0u8; 4096];
            match self.tcp.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => continue,
            }
            while let Some(&flags) = buf.first() {
                let (head, len) = if flags & 0x02 != 0 {
                    if buf.len() < 9 {
                        break;
                    }
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&buf[1..9]);
                    (9, u64::from_be_bytes(l) as usize)
                } else {
                    if buf.len() < 2 {
                        break;
                    }
                    (2, buf[1] as usize)
                };
                if buf.len() < head + len {
                    break;
                }
                let body: Vec<u8> = buf[head..head + len].to_vec();
                buf.drain(..head + len);
                if flags & 0x04 == 0 && body.starts_with(prefix) {
                    return true;
                }
            }
        }
        false
    }
}

/// A raw subscriber of `tool`'s backend subscribes a prefix of `len` bytes, unsubscribes it,
/// then subscribes the probe topic; once a probe reaches it through the proxy (so the proxy
/// handled all three, in order), the proxy is stopped. Returns its exit counters line.
pub fn long_subscription_through(tool: &str, extra: &[&str], len: usize) -> String {
    let mut p = start(tool, extra);
    let ctx = zmq::Context::new();
    let publisher = publisher(&ctx, &p.frontend);
    let mut raw = RawXsub::connect(&p.backend);
    let long: Vec<u8> = std::iter::once(1u8).chain(std::iter::repeat_n(b'H', len)).collect();
    raw.send(&long);
    let mut unsubscribe = long;
    unsubscribe[0] = 0;
    raw.send(&unsubscribe);
    raw.send(&[b"\x01", PROBE.as_bytes()].concat());
    let end = Instant::now() + Duration::from_secs(10);
    let mut seq = 0;
    loop {
        assert!(Instant::now() < end, "{tool}: the probe did not pass within 10 s (is it still running?)");
        seq += 1;
        publisher.send(frame(PROBE, 0, seq, b"p"), 0).expect("probe");
        if raw.wait_for(PROBE.as_bytes(), Duration::from_millis(100)) {
            break;
        }
    }
    let (_, err) = stop(&mut p);
    stopped_line(tool, &err).to_string()
}

/// `mdsub <tool>` with a bound frontend no publisher reaches says so on stderr after 5 s, in
/// the words an engine's bound shard uses (`TOOL frontend: no publisher has connected to bound
/// EP in 5s; still waiting (said again when one does)`), and says when one then connects.
pub fn says_when_no_publisher_came(tool: &str, extra: &[&str]) {
    let mut p = start(tool, extra);
    let t0 = Instant::now();
    let head = format!("{tool} frontend: ");
    let waiting = wait_line(&p.stderr, Duration::from_secs(15), "the no-publisher line", |l| l.starts_with(&head));
    assert_eq!(
        waiting,
        format!(
            "{head}no publisher has connected to bound {} in 5s; still waiting (said again when one does)",
            p.frontend
        )
    );
    assert!(t0.elapsed() >= Duration::from_secs(4), "said after 5 s, not {:?}", t0.elapsed());
    let ctx = zmq::Context::new();
    let _publisher = publisher(&ctx, &p.frontend);
    let came = wait_line(&p.stderr, Duration::from_secs(10), "the publisher line", |l| l.starts_with(&head));
    let said = format!("{head}a publisher connected to {} after ", p.frontend);
    assert!(came.starts_with(&said), "{came}");
    let (_, err) = stop(&mut p);
    assert!(!err.iter().any(|l| l.contains("no publisher has connected")), "said once: {err:?}");
}
