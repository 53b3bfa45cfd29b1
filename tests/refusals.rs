//! Refusals and diagnostics, on real processes: every malformed frame the engine refuses is
//! counted by reason and said on stderr (the first of each reason at once); a closed stderr
//! does not stop the engine; exit counters go to stderr, or with `--json` to stdout.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::proxy::{start, stop};
use common::{mdsub, Proc};
use mdsub::wire::{encode, Header, Kind, HEADER_LEN, VERSION};

/// One malformed frame per drop reason of the wire format, then two good data frames and the
/// end of stream (so the engine ends by itself).
fn feed() -> Vec<Vec<u8>> {
    let good = |seq: u64| encode(b"T", &Header::data(seq, mdsub::wire::now_ns()), b"x");
    let mut bad_version = good(1);
    bad_version[2] = VERSION + 7; // the version byte follows "T\0"
    let mut bad_kind = good(1);
    bad_kind[3] = 0xEE;
    let mut long = good(1);
    long.push(0);
    let mut frames = vec![
        b"no nul at all".to_vec(), // missing_nul
        b"\0empty topic".to_vec(), // empty_topic
        b"a b\0".to_vec(),         // bad_topic
        b"T\0short".to_vec(),      // short
        bad_version,               // unknown_version
        bad_kind,                  // unknown_kind
        long,                      // length_mismatch
        b"no nul again".to_vec(),  // missing_nul again: counted, not said again
    ];
    frames.push(good(1));
    frames.push(good(2));
    let eos = Header { kind: Kind::EndOfStream, ..Header::data(2, mdsub::wire::now_ns()) };
    frames.push(encode(b"T", &eos, &2u64.to_le_bytes()));
    assert!(frames[3].len() < 2 + HEADER_LEN);
    frames
}

/// Publish `feed()` on an XPUB the engine connects to, once the engine has subscribed.
fn publish(ctx: &zmq::Context) -> (zmq::Socket, String) {
    let xpub = ctx.socket(zmq::XPUB).expect("xpub");
    xpub.set_linger(1000).expect("linger");
    xpub.bind("tcp://127.0.0.1:*").expect("bind");
    let ep = xpub.get_last_endpoint().expect("endpoint").expect("utf8");
    (xpub, ep)
}

fn send_when_subscribed(xpub: &zmq::Socket) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < end, "the engine did not subscribe within 20 s");
        if xpub.poll(zmq::POLLIN, 100).expect("poll") > 0 {
            let sub = xpub.recv_bytes(0).expect("subscription");
            if sub.first() == Some(&1) {
                break;
            }
        }
    }
    for f in feed() {
        xpub.send(&f[..], 0).expect("send");
    }
}

/// An engine (JSON report, stdout and stderr piped) on a fresh XPUB it connects to.
fn engine_on_xpub(ctx: &zmq::Context) -> (zmq::Socket, Proc) {
    let (xpub, ep) = publish(ctx);
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "30s", "--endpoint", &ep]);
    let p = Proc::spawn("engine", cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
    (xpub, p)
}

#[test]
fn every_refused_frame_is_counted_by_reason_and_the_first_of_each_is_said() {
    let ctx = zmq::Context::new();
    let (xpub, mut p) = engine_on_xpub(&ctx);
    let (mut out, mut err) = (p.child.stdout.take().expect("stdout"), p.child.stderr.take().expect("stderr"));
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    send_when_subscribed(&xpub);
    let status = p.wait_exit(Duration::from_secs(30));
    let mut report = String::new();
    out.read_to_string(&mut report).expect("stdout");
    let err = err_reader.join().expect("stderr reader");
    assert!(status.success(), "engine failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&report).expect("JSON report on stdout");
    let bad = &v["bad_frames"];
    for (reason, n) in [
        ("missing_nul", 2),
        ("empty_topic", 1),
        ("bad_topic", 1),
        ("short", 1),
        ("unknown_version", 1),
        ("unknown_kind", 1),
        ("length_mismatch", 1),
    ] {
        assert_eq!(bad[reason], n, "{reason} counted: {bad}");
        let said: Vec<&str> =
            err.lines().filter(|l| l.starts_with(&format!("shard0-reader: refused ({reason}): "))).collect();
        assert_eq!(said.len(), 1, "the first {reason} said once at once: {err}");
    }
    // What went unsaid is summarised by the end of the run.
    assert!(err.lines().any(|l| l.contains("refused since the last line: missing_nul=1")), "{err}");
    assert_eq!(v["delivered"], 2, "good frames still delivered: {report}");
}

#[test]
fn a_closed_stderr_does_not_stop_the_engine() {
    let ctx = zmq::Context::new();
    let (xpub, mut p) = engine_on_xpub(&ctx);
    // Close the read end at once: every write to stderr now fails (EPIPE).
    drop(p.child.stderr.take());
    let mut out = p.child.stdout.take().expect("stdout");
    send_when_subscribed(&xpub);
    let status = p.wait_exit(Duration::from_secs(30));
    let mut report = String::new();
    out.read_to_string(&mut report).expect("stdout");
    assert!(status.success(), "the engine ends normally with stderr closed: {status} {report}");
    let v: serde_json::Value = serde_json::from_str(&report).expect("JSON report");
    assert_eq!(v["delivered"], 2, "{report}");
    assert_eq!(v["bad_frames"]["missing_nul"], 2, "{report}");
}

#[test]
fn exit_counters_go_to_stderr_or_with_json_to_stdout() {
    for tool in ["lvc", "tap"] {
        let mut p = start(tool, &["--quiet"].iter().copied().filter(|_| tool == "tap").collect::<Vec<_>>());
        let (out, err) = stop(&mut p);
        let prefix = format!("{tool}: stopped: ");
        assert!(err.iter().any(|l| l.starts_with(&prefix)), "{tool}: counters on stderr: {err:?}");
        assert!(!out.iter().any(|l| l.contains("stopped")), "{tool}: nothing on stdout: {out:?}");

        let mut args = vec!["--json"];
        if tool == "tap" {
            args.push("--quiet");
        }
        let mut p = start(tool, &args);
        let (out, err) = stop(&mut p);
        assert!(!err.iter().any(|l| l.starts_with(&prefix)), "{tool} --json: not on stderr: {err:?}");
        let json = out.iter().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("{tool}: JSON on stdout: {out:?}"));
        let v: serde_json::Value = serde_json::from_str(json).expect("one JSON object");
        assert_eq!(v["stopped"], tool);
        assert!(v["forwarded_down"].is_u64() || v["messages_in"].is_u64(), "{tool}: counters are numbers: {v}");
    }
}
