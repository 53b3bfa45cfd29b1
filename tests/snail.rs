//! The Suicidal Snail end to end, with real processes over TCP loopback: a
//! slow worker behind a lossless replay croaks (exit code 3, one scream on
//! stderr, the same scream on the monitor PUB); `warn` keeps going and
//! counts; a healthy run does not croak; a lag spike shorter than the grace
//! does not croak and a longer one does; a constant clock offset croaks
//! unless skew-tolerant; silence without heartbeats is STOP; gaps are
//! counted exactly with and without a topic filter; a restart is a restart.
//!
//! Feeds with a precise shape (spikes, offsets, drops, restarts, silence)
//! come from a small publisher in this test that writes the wire format itself.

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::*;
use mdsub::wire::{self, Header, Kind, CONTROL_TOPIC};

const CROAK: i32 = mdsub::snail::EXIT_CODE_CROAK;
const MS: i64 = 1_000_000;

/// A child with stdout and stderr read line by line on threads.
struct Child2 {
    proc: Proc,
    out: Receiver<String>,
    err: Receiver<String>,
}

fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Child2 {
    fn spawn(name: &str, cmd: &mut Command) -> Child2 {
        let mut proc = Proc::spawn(name, cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
        let out = lines_of(proc.child.stdout.take().expect("stdout"));
        let err = lines_of(proc.child.stderr.take().expect("stderr"));
        Child2 { proc, out, err }
    }

    /// The first stderr line starting with `prefix`, within `deadline`.
    fn stderr_line(&self, prefix: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            match self.err.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(_) => panic!("{}: no stderr line starting with {prefix:?} within {deadline:?}", self.proc.name),
            }
        }
    }

    /// Wait for exit; (exit code, stdout, stderr not read yet).
    fn finish(mut self, deadline: Duration) -> (Option<i32>, String, String) {
        let status = self.proc.wait_exit(deadline);
        let drain = |r: &Receiver<String>| {
            let mut s = String::new();
            while let Ok(l) = r.recv_timeout(Duration::from_secs(2)) {
                s.push_str(&l);
                s.push('\n');
            }
            s
        };
        (status.code(), drain(&self.out), drain(&self.err))
    }
}

fn engine(endpoint: &str, extra: &[&str]) -> Child2 {
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "60s", "--endpoint", endpoint]);
    cmd.args(extra);
    Child2::spawn("engine", &mut cmd)
}

/// The snail site `role` in a JSON report.
fn site<'a>(r: &'a serde_json::Value, role: &str) -> &'a serde_json::Value {
    r["snail"]["sites"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["role"] == role))
        .unwrap_or_else(|| panic!("no snail site {role} in {r}"))
}

/// A publisher of hand-made frames with exact sequences and stamps.
struct TestPub {
    _ctx: zmq::Context,
    sock: zmq::Socket,
    endpoint: String,
    publisher_id: u32,
    session_id: u64,
    stream_seq: u64,
    topic_seq: HashMap<Vec<u8>, u64>,
    data_sent: u64,
}

impl TestPub {
    fn bind() -> TestPub {
        let ctx = zmq::Context::new();
        let mut sock = ctx.socket(zmq::XPUB).expect("xpub");
        sock.set_sndhwm(0).expect("unlimited sndhwm");
        mdsub::zmqx::set_xpub_nodrop(&mut sock, true).expect("nodrop");
        sock.set_linger(5_000).expect("linger");
        sock.bind("tcp://127.0.0.1:*").expect("bind");
        let endpoint = sock.get_last_endpoint().expect("endpoint").expect("utf8");
        TestPub {
            _ctx: ctx,
            sock,
            endpoint,
            publisher_id: 5,
            session_id: 1,
            stream_seq: 0,
            topic_seq: HashMap::new(),
            data_sent: 0,
        }
    }

    /// Handshake: the engine's first subscription arrives.
    fn wait_subscribed(&self) {
        self.sock.set_rcvtimeo(20_000).expect("rcvtimeo");
        let sub = self.sock.recv_bytes(0).expect("the engine subscribed within 20 s");
        assert_eq!(sub.first(), Some(&1u8));
    }

    fn header(&self, kind: Kind, topic_seq: u64, send_time_ns: u64) -> Header {
        Header {
            kind,
            flags: 0,
            publisher_id: self.publisher_id,
            session_id: self.session_id,
            stream_seq: self.stream_seq,
            topic_seq,
            send_time_ns,
        }
    }

    /// Next data frame on `topic`, stamped `offset_ns` before now; sent
    /// unless `drop` (then only its sequences are used up).
    fn data(&mut self, topic: &[u8], offset_ns: i64, drop: bool) {
        self.stream_seq += 1;
        let ts = self.topic_seq.entry(topic.to_vec()).or_insert(0);
        *ts += 1;
        let ts = *ts;
        if drop {
            return;
        }
        let send = (mdsub::clock::realtime_ns() as i64 - offset_ns) as u64;
        let frame = wire::encode(topic, &self.header(Kind::Data, ts, send), b"payload");
        self.sock.send(frame, 0).expect("send data");
        self.data_sent += 1;
    }

    fn control(&mut self, kind: Kind) {
        let h = self.header(kind, 0, mdsub::clock::realtime_ns());
        let frame = wire::encode(CONTROL_TOPIC, &h, &self.data_sent.to_le_bytes());
        self.sock.send(frame, 0).expect("send control");
    }

    /// One data frame per ms for `d`, each `offset_ns` late.
    fn stream_for(&mut self, d: Duration, offset_ns: i64) {
        let end = Instant::now() + d;
        let mut next = Instant::now();
        while Instant::now() < end {
            self.data(b"ESH6", offset_ns, false);
            next += Duration::from_millis(1);
            if let Some(w) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
        }
    }

    /// Start a new session (a publisher restart).
    fn restart(&mut self) {
        self.session_id += 1;
        self.stream_seq = 0;
        self.topic_seq.clear();
        self.data_sent = 0;
    }
}

#[test]
fn slow_worker_croaks_with_exit_code_and_scream_on_stderr_and_monitor() {
    // The replay waits for two subscribers: the engine and, once the monitor
    // is seen to work, this test (a handshake on both sides, no sleeps).
    let (replay, eps) = start_replay(
        "replay",
        1,
        &["--rate", "100k", "--duration", "20s", "--subscribers", "2", "--wait-timeout", "20s"],
    );
    let e = engine(
        &eps[0],
        &["--handler", "work:200000", "--max-lag", "200ms", "--grace", "300ms", "--monitor", "bind:tcp://127.0.0.1:*"],
    );
    let monitor_ep = e.stderr_line("monitor: bound ", Duration::from_secs(20)).rsplit(' ').next().unwrap().to_string();
    let ctx = zmq::Context::new();
    let mon = ctx.socket(zmq::SUB).expect("sub");
    mon.set_subscribe(b"snail.").expect("subscribe");
    mon.set_rcvtimeo(20_000).expect("rcvtimeo");
    mon.connect(&monitor_ep).expect("connect monitor");
    let first = mon.recv_multipart(0).expect("a state message from the monitor within 20 s");
    assert_eq!(first[0], b"snail.state");
    let state = json(std::str::from_utf8(&first[1]).expect("utf8"));
    assert_eq!(state["verdict"], "OK", "{state}");
    // Now let the replay start.
    let go = ctx.socket(zmq::SUB).expect("sub");
    go.set_subscribe(&[CONTROL_TOPIC, b"\0"].concat()).expect("subscribe");
    go.connect(&eps[0]).expect("connect replay");

    let started = Instant::now();
    let (code, out, err) = e.finish(Duration::from_secs(30));
    let took = started.elapsed();
    assert_eq!(code, Some(CROAK), "exit code; stderr: {err}");
    assert!(took < Duration::from_secs(15), "croaked after {took:?}");
    let scream = err.lines().find(|l| l.starts_with("mdsub: croak: ")).unwrap_or_else(|| panic!("no scream: {err}"));
    for part in ["SNAIL on shard0", "publisher 0", "lag ", "max_lag 200.00ms", "grace 300.00ms", "last good seq"] {
        assert!(scream.contains(part), "{part:?} in {scream}");
    }
    assert_eq!(err.lines().filter(|l| l.starts_with("mdsub: croak")).count(), 1, "one scream: {err}");
    // The report still comes out, with the verdict.
    let r = json(&out);
    assert_eq!(r["snail"]["verdict"], "SNAIL", "{r}");
    assert!(r["snail"]["croaked"]["lag_ns"].as_u64().unwrap_or(0) > 200_000_000, "{r}");
    // The croak ended it, not a stop request: before, the report said `(interrupted)`.
    assert_eq!(r["interrupted"], false, "{r}");
    // The slow worker's backlog at the croak is said, not lost from the count: every accepted
    // message is delivered or not handled.
    let accepted: u64 = r["shards"].as_array().expect("shards").iter().map(|s| s["msgs"].as_u64().unwrap_or(0)).sum();
    let (delivered, not_handled) = (r["delivered"].as_u64().unwrap_or(0), r["not_handled"].as_u64().unwrap_or(0));
    assert!(not_handled > 0, "a backlog behind a 200 µs handler at 100k msg/s: {r}");
    assert_eq!(accepted, delivered + not_handled, "{r}");
    // The same scream on the monitor (state messages may come before it).
    let end = Instant::now() + Duration::from_secs(10);
    let on_monitor = loop {
        assert!(Instant::now() < end, "no snail.snail message on the monitor");
        let m = mon.recv_multipart(0).expect("monitor message");
        if m[0] == b"snail.snail" {
            break json(std::str::from_utf8(&m[1]).expect("utf8"));
        }
    };
    assert_eq!(on_monitor["verdict"], "SNAIL");
    assert_eq!(on_monitor["policy"], "croak");
    assert_eq!(on_monitor["shard"], 0);
    assert_eq!(on_monitor["max_lag_ns"], 200_000_000u64);
    assert_eq!(on_monitor, r["snail"]["croaked"], "the monitor's scream is the report's");
    drop(replay);
}

#[test]
fn warn_policy_keeps_running_and_counts() {
    let (replay, eps) = start_replay("replay", 1, &["--rate", "20k", "--count", "6000"]);
    let e = engine(&eps[0], &["--handler", "work:200000", "--snail", "warn", "--max-lag", "100ms", "--grace", "100ms"]);
    let (code, out, err) = e.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    let r = json(&out);
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "lost")), (6000, 6000, 0), "{r}");
    let w = site(&r, "worker0");
    assert!(u(w, "snails") >= 1, "the slow worker was judged a snail: {w}");
    assert_eq!(u(w, "checked"), 6000);
    assert!(r["snail"]["croaked"].is_null());
    assert!(err.contains("mdsub: snail: SNAIL on shard0 (worker0)"), "a warn line: {err}");
    replay.finish(Duration::from_secs(20));
}

#[test]
fn healthy_run_at_the_default_rate_does_not_croak() {
    let (replay, eps) = start_replay("replay", 1, &["--rate", "100k", "--count", "150k"]);
    let (code, out, err) = engine(&eps[0], &[]).finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    let r = json(&out);
    assert_eq!(u(&r, "delivered"), 150_000);
    for role in ["shard0-reader", "worker0"] {
        let s = site(&r, role);
        assert_eq!((u(s, "snails"), u(s, "stops"), u(s, "checked")), (0, 0, 150_000), "{s}");
    }
    replay.finish(Duration::from_secs(20));
}

/// A feed on time, then `spike` of frames 500 ms late, then on time again.
fn spike_run(spike: Duration) -> (Option<i32>, String, String) {
    let mut p = TestPub::bind();
    let e = engine(&p.endpoint, &["--max-lag", "100ms", "--grace", "400ms"]);
    p.wait_subscribed();
    p.stream_for(Duration::from_millis(100), 0);
    p.stream_for(spike, 500 * MS);
    p.stream_for(Duration::from_millis(100), 0);
    p.control(Kind::EndOfStream);
    e.finish(Duration::from_secs(30))
}

#[test]
fn a_lag_spike_shorter_than_the_grace_does_not_croak_and_a_longer_one_does() {
    let (code, out, err) = spike_run(Duration::from_millis(150));
    assert_eq!(code, Some(0), "150 ms above max lag, grace 400 ms: {err}");
    let r = json(&out);
    assert_eq!(r["snail"]["verdict"], "OK", "{r}");
    assert!(u(site(&r, "shard0-reader"), "max_lag_ns") >= 500_000_000, "the spike was seen: {r}");

    let (code, out, err) = spike_run(Duration::from_millis(1_000));
    assert_eq!(code, Some(CROAK), "{err}");
    assert!(err.contains("mdsub: croak: SNAIL on shard0 ("), "{err}");
    assert!(err.contains("publisher 5 topic ESH6: lag 5"), "{err}");
    // Nothing was dropped on the way: the frame the snail croaked on arrived, so it is not
    // handled, never lost (before, a croak at the reader said `lost 1` with no gap).
    let r = json(&out);
    assert_eq!((u(&r, "lost"), u(&r, "gaps")), (0, 0), "{r}");
    assert_eq!(u(&r, "sent"), u(&r, "delivered") + u(&r, "not_handled"), "{r}");
}

fn offset_run(extra: &[&str]) -> (Option<i32>, String, String) {
    let mut p = TestPub::bind();
    let mut args = vec!["--max-lag", "1s", "--grace", "500ms"];
    args.extend_from_slice(extra);
    let e = engine(&p.endpoint, &args);
    p.wait_subscribed();
    // The publisher's clock runs 2 s behind the engine's.
    p.stream_for(Duration::from_millis(1_200), 2_000 * MS);
    p.control(Kind::EndOfStream);
    e.finish(Duration::from_secs(30))
}

#[test]
fn a_constant_clock_offset_croaks_when_synchronised_but_not_when_skew_tolerant() {
    let (code, _, err) = offset_run(&[]);
    assert_eq!(code, Some(CROAK), "{err}");
    assert!(err.contains("mdsub: croak: SNAIL"), "{err}");
    let (code, out, err) = offset_run(&["--skew", "skew-tolerant", "--skew-window", "10s"]);
    assert_eq!(code, Some(0), "{err}");
    let r = json(&out);
    assert_eq!(r["snail"]["skew"], "skew-tolerant");
    assert_eq!(r["snail"]["verdict"], "OK", "{r}");
}

/// A [`TestPub`] and an engine with `extra` flags on it, fed one frame per
/// ms for 50 ms.
fn engine_fed_50ms(extra: &[&str]) -> (TestPub, Child2) {
    let mut p = TestPub::bind();
    let e = engine(&p.endpoint, extra);
    p.wait_subscribed();
    p.stream_for(Duration::from_millis(50), 0);
    (p, e)
}

#[test]
fn silence_without_heartbeats_is_stop_and_heartbeats_keep_it_alive() {
    // Heartbeats every 100 ms for 1 s: the publisher is quiet, not gone.
    let (mut p, e) = engine_fed_50ms(&["--silence", "500ms"]);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        p.control(Kind::Heartbeat);
    }
    p.stream_for(Duration::from_millis(50), 0);
    p.control(Kind::EndOfStream);
    let (code, out, err) = e.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(u(site(&json(&out), "shard0-reader"), "stops"), 0);

    // Nothing at all after a few frames: STOP.
    let (_p, e) = engine_fed_50ms(&["--silence", "500ms"]);
    let (code, out, err) = e.finish(Duration::from_secs(30));
    assert_eq!(code, Some(CROAK), "{err}");
    assert!(err.contains("mdsub: croak: STOP on shard0 (shard0-reader): nothing heard for"), "{err}");
    assert_eq!(json(&out)["snail"]["verdict"], "STOP");
}

/// An engine fed 50 ms of frames by a [`TestPub`], with `--silence 1s` and a monitor this
/// test reads; returned once the monitor says the reader heard them (silence is armed).
fn engine_heard_with_monitor() -> (TestPub, Child2, zmq::Socket, zmq::Context) {
    let mut p = TestPub::bind();
    let e = engine(&p.endpoint, &["--silence", "1s", "--monitor", "bind:tcp://127.0.0.1:*"]);
    let monitor_ep = e.stderr_line("monitor: bound ", Duration::from_secs(20)).rsplit(' ').next().unwrap().to_string();
    let ctx = zmq::Context::new();
    let mon = ctx.socket(zmq::SUB).expect("sub");
    mon.set_subscribe(b"snail.state").expect("subscribe");
    mon.connect(&monitor_ep).expect("connect monitor");
    p.wait_subscribed();
    p.stream_for(Duration::from_millis(50), 0);
    reader_state(&mon, "the reader judged a frame", |r| u(r, "checked") > 0);
    (p, e, mon, ctx)
}

/// The monitor's state of `shard0-reader` once `pred` holds of it (within 20 s).
fn reader_state(mon: &zmq::Socket, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "monitor: {what}: not within 20 s");
        mon.set_rcvtimeo(left.as_millis().max(1) as i32).expect("rcvtimeo");
        let Ok(m) = mon.recv_multipart(0) else { continue };
        // The state message is the report's `snail` object.
        let state = serde_json::json!({ "snail": json(std::str::from_utf8(&m[1]).expect("utf8")) });
        let reader = site(&state, "shard0-reader").clone();
        if pred(&reader) {
            return reader;
        }
    }
}

/// The engine itself stopped (SIGSTOP) for longer than `--silence` while its publisher
/// heartbeats on: a self-stall, not a silence (in CI a VM paused for 8 s made two engines
/// croak `STOP ... nothing heard for 8.34s` at their resumption). Counted, said once, on
/// the monitor and in the report; the engine runs on to its end of stream.
#[test]
fn a_pause_of_the_engine_itself_is_a_self_stall_not_a_silence() {
    let (mut p, e, mon, _ctx) = engine_heard_with_monitor();
    e.proc.signal(libc::SIGSTOP);
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(100));
        p.control(Kind::Heartbeat);
    }
    e.proc.signal(libc::SIGCONT);
    let reader = reader_state(&mon, "a self-stall", |r| u(r, "self_stalls") >= 1);
    assert!(u(&reader, "longest_self_stall_ns") >= 2_000_000_000, "{reader}");
    p.stream_for(Duration::from_millis(50), 0);
    p.control(Kind::EndOfStream);
    let (code, out, err) = e.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "no croak: {err}");
    let r = json(&out);
    let reader = site(&r, "shard0-reader");
    assert_eq!((u(reader, "stops"), u(reader, "self_stalls")), (0, 1), "{reader}");
    let said: Vec<&str> = err.lines().filter(|l| l.contains("stalled")).collect();
    assert!(
        said.len() == 1 && said[0].starts_with("mdsub: snail: shard0-reader stalled (self_stall): did not run for "),
        "said once: {err}"
    );
}

/// A real silence after a self-stall still croaks, `--silence` after the resumption:
/// the publisher is quiet during the stop and after it.
#[test]
fn a_silence_after_the_engine_resumes_croaks_once_silence_has_passed_since_the_resumption() {
    let (_p, e, _mon, _ctx) = engine_heard_with_monitor();
    e.proc.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2_500));
    e.proc.signal(libc::SIGCONT);
    let resumed = Instant::now();
    let (code, out, err) = e.finish(Duration::from_secs(30));
    let took = resumed.elapsed();
    assert_eq!(code, Some(CROAK), "{err}");
    // The engine resumed a little before `resumed` was read (kill(1) returned after it):
    // 900 ms, not 1 s. Judged across the stop, it croaked at once.
    assert!(took >= Duration::from_millis(900), "croaked {took:?} after the resumption: {err}");
    assert!(err.contains("mdsub: croak: STOP on shard0 (shard0-reader): nothing heard for 1."), "{err}");
    let r = json(&out);
    assert_eq!(u(site(&r, "shard0-reader"), "self_stalls"), 1, "{r}");
}

/// An end of stream disarms the reader's silence line and count, as it
/// disarms STOP: an engine that runs on after it (`--expect-eos 0`) says no
/// silence in the quiet that follows; the next frame arms it again.
#[test]
fn quiet_after_an_end_of_stream_is_no_silence_until_a_frame_arrives() {
    let (mut p, e) = engine_fed_50ms(&["--expect-eos", "0"]);
    p.control(Kind::EndOfStream);
    // Quiet for longer than the reader's silence limit (1.5 s), by right.
    let end = Instant::now() + Duration::from_millis(2_500);
    let mut said = Vec::new();
    while let Ok(l) = e.err.recv_timeout(end.saturating_duration_since(Instant::now())) {
        said.push(l);
    }
    assert!(!said.iter().any(|l| l.contains("silent")), "no silence after an end of stream: {said:?}");
    // The publisher back (a new session), then quiet without an end: a silence.
    p.restart();
    p.stream_for(Duration::from_millis(50), 0);
    let l = e.stderr_line("shard0-reader: silent: no frame for", Duration::from_secs(10));
    assert!(l.contains("heartbeats stopped"), "{l}");
    e.proc.signal(2);
    let (code, out, err) = e.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    let r = json(&out);
    let shard = &r["shards"][0];
    assert_eq!(u(shard, "silences"), 1, "only the quiet without an end of stream: {shard}");
}

/// 100 000 messages over 10 topics with every 100th (stream_seq ≡ 50 mod
/// 100) dropped at the publisher: exactly 1 000 missing.
fn gap_run(extra: &[&str]) -> serde_json::Value {
    let mut p = TestPub::bind();
    let e = engine(&p.endpoint, extra);
    p.wait_subscribed();
    let topics: Vec<Vec<u8>> = (0..10).map(|t| format!("SYM{t}").into_bytes()).collect();
    for i in 1..=100_000u64 {
        p.data(&topics[(i % 10) as usize], 0, i % 100 == 50);
    }
    p.control(Kind::EndOfStream);
    let (code, out, err) = e.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    json(&out)
}

#[test]
fn every_hundredth_dropped_is_exactly_1000_missing_with_and_without_a_topic_filter() {
    let r = gap_run(&[]);
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "gaps"), u(&r, "lost")), (99_000, 99_000, 1_000, 0), "{r}");
    // Through a filter (every topic starts with SYM) the per-topic sequences count.
    let r = gap_run(&["--subscribe", "SYM"]);
    assert_eq!((u(&r, "delivered"), u(&r, "gaps"), u(&r, "duplicates")), (99_000, 1_000, 0), "{r}");
}

#[test]
fn a_restart_mid_stream_is_a_restart_not_a_gap() {
    let mut p = TestPub::bind();
    let e = engine(&p.endpoint, &[]);
    p.wait_subscribed();
    for _ in 0..1_000 {
        p.data(b"ESH6", 0, false);
    }
    p.restart();
    for _ in 0..500 {
        p.data(b"ESH6", 0, false);
    }
    p.control(Kind::EndOfStream);
    let (code, out, err) = e.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    let r = json(&out);
    assert_eq!((u(&r, "delivered"), u(&r, "restarts"), u(&r, "gaps"), u(&r, "duplicates")), (1_500, 1, 0, 0), "{r}");
}

#[test]
fn rest_policy_skips_the_backlog_and_recovers() {
    // A 5 000 msg/s worker under 100 000 msg/s for 2 s: without skipping it
    // would need 40 s to get through; resting, it drops its backlog and ends
    // with the feed.
    let (replay, eps) = start_replay("replay", 1, &["--rate", "100k", "--count", "200k"]);
    let started = Instant::now();
    let e = engine(
        &eps[0],
        &["--handler", "work:200000", "--snail", "rest", "--max-lag", "100ms", "--grace", "100ms", "--rest", "200ms"],
    );
    let (code, out, err) = e.finish(Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{err}");
    assert!(took < Duration::from_secs(20), "recovered and finished with the feed, took {took:?}");
    let r = json(&out);
    let sites = r["snail"]["sites"].as_array().expect("sites");
    let rests: u64 = sites.iter().map(|s| u(s, "rests")).sum();
    let skipped: u64 = sites.iter().map(|s| u(s, "skipped")).sum();
    assert!(rests >= 1 && skipped > 0, "{r}");
    assert_eq!(u(&r, "sent"), 200_000);
    assert_eq!(u(&r, "gaps"), 0, "skipping is not loss on the wire: {r}");
    assert_eq!(u(&r, "delivered") + skipped, 200_000, "every message was handled or skipped: {r}");
    // Skipped on purpose is lost to the handler; `not_handled` is only what a stop leaves (none
    // here: the run ended at its end of stream). A worker's skips were in both before.
    assert_eq!((u(&r, "lost"), u(&r, "not_handled")), (skipped, 0), "{r}");
    assert!(r["snail"]["croaked"].is_null());
    assert!(err.contains("policy rest"), "the rest is logged: {err}");
    replay.finish(Duration::from_secs(20));
}

// Snails on purpose from `mdsub replay` itself (--pause-at/--pause-for,
// --drop-every, --restart-at): the same verdicts from the real publisher.

/// Run `mdsub replay --json` with `replay` into an engine with `engine_args`;
/// (engine exit code, engine report or stdout, engine stderr, replay JSON or None).
fn replay_run(replay: &[&str], engine_args: &[&str]) -> (Option<i32>, String, String, Option<serde_json::Value>) {
    let mut args = vec!["--json", "--payload-bytes", "32"];
    args.extend_from_slice(replay);
    let (rp, eps) = start_replay("replay", 1, &args);
    let e = engine(&eps[0], engine_args);
    let (code, out, err) = e.finish(Duration::from_secs(60));
    let (status, rest) = rp.finish(Duration::from_secs(20));
    let stats = status.success().then(|| json(&rest));
    (code, out, err, stats)
}

#[test]
fn a_replay_pause_shorter_than_the_grace_does_not_croak_and_a_longer_one_does() {
    // 10 k msg/s, stalled after 5 000 for the pause; max lag 100 ms, grace
    // 400 ms: the messages due in the pause are overdue for (pause − 100 ms).
    let snail = ["--max-lag", "100ms", "--grace", "400ms"];
    let rate = ["--rate", "10k", "--count", "15k", "--pause-at", "5k"];
    let (code, out, err, stats) = replay_run(&[&rate[..], &["--pause-for", "250ms"]].concat(), &snail);
    assert_eq!(code, Some(0), "a 250 ms pause: {err}");
    let r = json(&out);
    assert_eq!(r["snail"]["verdict"], "OK", "{r}");
    assert_eq!(u(&r, "delivered"), 15_000);
    assert!(u(site(&r, "shard0-reader"), "max_lag_ns") >= 200_000_000, "the pause was seen as lag: {r}");
    let stats = stats.expect("the replay finished");
    assert!(stats["paused_s"].as_f64().unwrap_or(0.0) >= 0.25, "{stats}");

    let (code, _, err, _) = replay_run(&[&rate[..], &["--pause-for", "1500ms"]].concat(), &snail);
    assert_eq!(code, Some(CROAK), "a 1.5 s pause: {err}");
    let scream = err.lines().find(|l| l.starts_with("mdsub: croak: ")).unwrap_or_else(|| panic!("no scream: {err}"));
    assert!(scream.contains("SNAIL on shard0 ("), "{scream}");
    assert!(scream.contains("last good seq 5000;"), "the last message before the pause: {scream}");
}

/// Under `warn`, a site said to be a SNAIL is said to be OK again when it
/// is, once, after its SNAIL line: stderr ends with the truth.
#[test]
fn a_snail_under_warn_is_said_ok_again_when_it_recovers() {
    let (code, out, err, _) = replay_run(
        &["--rate", "2k", "--count", "5k", "--pause-at", "1k", "--pause-for", "1500ms"],
        &["--snail", "warn", "--max-lag", "100ms", "--grace", "400ms"],
    );
    assert_eq!(code, Some(0), "{err}");
    let r = json(&out);
    assert_eq!(r["snail"]["verdict"], "OK", "{r}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("mdsub: snail: ")).collect();
    let snails: Vec<&str> = lines.iter().copied().filter(|l| l.contains("SNAIL on shard0 (")).collect();
    assert!(!snails.is_empty(), "the pause was a snail: {err}");
    for role in ["shard0-reader", "worker0"] {
        let mine: Vec<&str> = lines.iter().copied().filter(|l| l.contains(&format!("shard0 ({role})"))).collect();
        if mine.is_empty() {
            continue;
        }
        let last = mine.last().expect("a line");
        assert!(last.starts_with(&format!("mdsub: snail: OK again on shard0 ({role}) after ")), "{role}: {mine:?}");
        assert_eq!(mine.iter().filter(|l| l.contains("OK again")).count(), 1, "once: {mine:?}");
        assert!(u(site(&r, role), "snails") >= 1, "{r}");
    }
}

#[test]
fn replay_drop_every_hundredth_of_100_000_is_exactly_1000_missing_with_and_without_a_topic_filter() {
    // Five topics, uniform, flat out; the filter takes each by prefix, so the
    // engine counts by topic sequence instead of stream sequence.
    let feed = ["--count", "100k", "--drop-every", "100", "--symbols", "5", "--zipf", "0"];
    let (code, out, err, stats) = replay_run(&feed, &[]);
    assert_eq!(code, Some(0), "{err}");
    let stats = stats.expect("the replay finished");
    assert_eq!((u(&stats, "sent_total"), u(&stats, "dropped_on_purpose")), (99_000, 1_000), "{stats}");
    let r = json(&out);
    // Left out, they were numbered: the end of stream counts them, and they are lost.
    assert_eq!(
        (u(&r, "sent"), u(&r, "delivered"), u(&r, "gaps"), u(&r, "lost")),
        (100_000, 99_000, 1_000, 1_000),
        "{r}"
    );
    assert_eq!((u(&r, "duplicates"), u(&r, "reordered"), u(&r, "restarts")), (0, 0, 0), "{r}");

    let filter =
        ["--subscribe", "ES", "--subscribe", "NQ", "--subscribe", "YM", "--subscribe", "RTY", "--subscribe", "ZN"];
    let (code, out, err, _) = replay_run(&feed, &filter);
    assert_eq!(code, Some(0), "{err}");
    let r = json(&out);
    assert!(r["loss_basis"].as_str().unwrap_or("").contains("filtered"), "counted by topic: {r}");
    assert_eq!((u(&r, "delivered"), u(&r, "gaps"), u(&r, "duplicates")), (99_000, 1_000, 0), "{r}");
}

#[test]
fn a_replay_restart_mid_stream_is_reported_as_a_restart_never_as_a_gap() {
    let (code, out, err, stats) = replay_run(&["--count", "30k", "--restart-at", "10k", "--symbols", "5"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(u(&stats.expect("the replay finished"), "restarts"), 1);
    let r = json(&out);
    assert_eq!(
        (u(&r, "delivered"), u(&r, "restarts"), u(&r, "gaps"), u(&r, "duplicates"), u(&r, "reordered")),
        (30_000, 1, 0, 0, 0),
        "{r}"
    );
    // The old session never sent its end of stream: it counts by its last
    // sequence, so `sent` covers both sessions and nothing is called lost.
    assert_eq!(
        (u(&r, "sent"), u(&r, "lost"), u(&r, "unended_sessions"), u(&r, "unended_sent")),
        (30_000, 0, 1, 10_000),
        "{r}"
    );
}

#[test]
fn a_worker_serving_two_shards_names_the_shard_in_its_scream() {
    let (replay, eps) = start_replay("replay", 2, &["--rate", "100k", "--duration", "20s"]);
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "60s", "--endpoint", &eps[0], "--endpoint", &eps[1]]);
    cmd.args(["--workers", "1", "--handler", "work:200000", "--max-lag", "200ms", "--grace", "300ms"]);
    let (code, out, err) = Child2::spawn("engine", &mut cmd).finish(Duration::from_secs(30));
    assert_eq!(code, Some(CROAK), "{err}");
    let scream = err.lines().find(|l| l.starts_with("mdsub: croak: ")).unwrap_or_else(|| panic!("no scream: {err}"));
    assert!(
        scream.starts_with("mdsub: croak: SNAIL on shard0 (worker0)")
            || scream.starts_with("mdsub: croak: SNAIL on shard1 (worker0)"),
        "{scream}"
    );
    let croaked = &json(&out)["snail"]["croaked"];
    assert!(croaked["shard"].as_u64().is_some_and(|k| k < 2), "{croaked}");
    drop(replay);
}

#[test]
fn a_slow_handler_run_inline_makes_its_reader_lag_and_the_reader_screams() {
    // Inline, the handler runs on the reader: a slow one stalls the SUB read,
    // the lag at receive grows, and the reader (the shard's only site) croaks.
    let (replay, eps) = start_replay("replay", 1, &["--rate", "100k", "--duration", "20s"]);
    let e =
        engine(&eps[0], &["--handoff", "inline", "--handler", "work:200000", "--max-lag", "200ms", "--grace", "300ms"]);
    let started = Instant::now();
    let (code, out, err) = e.finish(Duration::from_secs(30));
    assert_eq!(code, Some(CROAK), "exit code; stderr: {err}");
    assert!(started.elapsed() < Duration::from_secs(15), "croaked after {:?}", started.elapsed());
    let scream = err.lines().find(|l| l.starts_with("mdsub: croak: ")).unwrap_or_else(|| panic!("no scream: {err}"));
    assert!(scream.starts_with("mdsub: croak: SNAIL on shard0 (shard0-reader): publisher 0"), "{scream}");
    let r = json(&out);
    assert_eq!(r["snail"]["croaked"]["site"], "shard0-reader", "{r}");
    assert!(site(&r, "shard0-reader")["max_lag_ns"].as_u64().unwrap_or(0) > 200_000_000, "{r}");
    let sites: Vec<&str> =
        r["snail"]["sites"].as_array().expect("sites").iter().filter_map(|s| s["role"].as_str()).collect();
    assert_eq!(sites, ["shard0-reader"], "no worker site inline: {r}");
    // The handler ran on the reader: its CPU is the reader's, and no worker thread exists.
    let threads: Vec<&str> =
        r["threads"].as_array().expect("threads").iter().filter_map(|t| t["thread"].as_str()).collect();
    assert!(threads.contains(&"shard0-reader"), "{threads:?}");
    assert!(!threads.iter().any(|t| t.starts_with("worker")), "{threads:?}");
    assert!(u(&r, "delivered") > 0, "{r}");
    drop(replay);
}

#[test]
fn demo_reports_the_snails_verdict_per_shard_as_text_and_json() {
    let (code, out, err) =
        run_within("demo", mdsub().args(["demo", "--count", "20k", "--rate", "20k"]), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("    per shard      shard0 OK"), "{out}");
    // The README's snail: the demo croaks, and says which shard.
    let (code, out, err) = run_within(
        "demo",
        mdsub().args(["demo", "--json", "--handler", "work:200000", "--max-lag", "200ms", "--grace", "300ms"]),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(CROAK), "{err}");
    let r = json(&out);
    assert_eq!(r["snail"]["shards"], serde_json::json!([{"shard": 0, "verdict": "SNAIL"}]), "{r}");
    assert!(err.contains("mdsub: croak: SNAIL on shard0 ("), "{err}");
}

/// A snail flag combination the profile check refuses names the flags, not `--profile` (which
/// nobody typed): before, `mdsub demo --skew skew-tolerant --grace 40s` said `--profile
/// builtin: profile field `snail.skew_window_ms`: …` and exited 1. A profile file at fault is
/// still named.
#[test]
fn a_refused_snail_flag_combination_names_the_flags_not_the_profile() {
    let engine = ["engine", "--endpoint", "tcp://127.0.0.1:1"];
    for (cmd, flags, says, values) in [
        (
            &["demo"][..],
            &["--skew", "skew-tolerant", "--grace", "40s"][..],
            "--skew skew-tolerant with --grace 40s: ",
            "(skew window 30s, grace 40s)",
        ),
        (
            &engine[..],
            &["--skew", "skew-tolerant", "--skew-window", "1s", "--grace", "1s"][..],
            "--skew skew-tolerant with --skew-window 1s with --grace 1s: ",
            "(skew window 1s, grace 1s)",
        ),
    ] {
        let (code, _out, err) = run_within("mdsub", mdsub().args(cmd).args(flags), Duration::from_secs(20));
        assert_eq!(code, Some(2), "{cmd:?} {flags:?}: a refused flag, {err}");
        assert!(err.contains(says) && err.contains(values), "{cmd:?} {flags:?}: {err}");
        assert!(!err.contains("--profile") && !err.contains("profile field"), "{cmd:?} {flags:?}: {err}");
    }
    let dir = temp_dir("snail-profile-at-fault");
    let file = dir.join("p.toml");
    let profile = include_str!("../tuning/default-2core.toml").to_string()
        + "\n[snail]\nskew = \"skew-tolerant\"\nskew_window_ms = 500\n";
    std::fs::write(&file, profile).expect("write profile");
    let file = file.to_str().expect("utf8 path");
    let (code, _out, err) =
        run_within("mdsub", mdsub().args(["demo", "--profile", file, "--grace", "400ms"]), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("--profile {file}: profile field `snail.skew_window_ms`")), "{err}");
}

#[test]
fn a_snail_threshold_finer_than_a_millisecond_is_refused_naming_the_flag() {
    // Before: `--max-lag 500us` was cut to 0 ms and refused as "profile field
    // `snail.max_lag_ms`: must be at least 1"; `--grace 1.5ms` silently became 1 ms.
    for (flag, value, says) in [
        ("--max-lag", "500us", "invalid value '500us' for '--max-lag <DURATION>': this setting is whole milliseconds"),
        ("--grace", "1.5ms", "invalid value '1.5ms' for '--grace <DURATION>': this setting is whole milliseconds"),
        ("--max-lag", "0s", "invalid value '0s' for '--max-lag <DURATION>': out of range: give 1ms to 1h"),
        // Before: `--max-lag 2h` ran, though the live setting `snail_max_lag` refused over 1h.
        ("--max-lag", "2h", "invalid value '2h' for '--max-lag <DURATION>': out of range: give 1ms to 1h"),
        ("--grace", "61m", "invalid value '61m' for '--grace <DURATION>': out of range: give 0s to 1h"),
    ] {
        let (code, _out, err) = run_within(
            "engine",
            mdsub().args(["engine", "--endpoint", "tcp://127.0.0.1:1", flag, value]),
            Duration::from_secs(20),
        );
        assert_eq!(code, Some(2), "{flag} {value}: a refused value, {err}");
        assert!(err.contains(says) && !err.contains("profile field"), "{flag} {value}: {err}");
    }
}
