//! `mdsub tap` over real sockets with a real process: recording reads back
//! byte-identical, filters pick what is shown/recorded without changing the
//! flow, subscription events are shown, `--stats` counts per topic.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::proxy::*;
use common::wait_line;
use mdsub::wire::capture::CaptureReader;

const DEADLINE: Duration = Duration::from_secs(5);

fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mdsub-tap-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// Every message in a capture file, as frames, probes left out.
fn read_capture(path: &Path) -> Vec<Vec<Vec<u8>>> {
    let mut r = CaptureReader::open(path).expect("capture file opens");
    let mut out = Vec::new();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    while let Some(rec) = r.next_record().expect("intact capture") {
        cur.push(rec.frame.to_vec());
        if !rec.more {
            let m = std::mem::take(&mut cur);
            if !is_probe(&m, None) {
                out.push(m);
            }
        }
    }
    assert!(cur.is_empty(), "capture ends inside a multipart message");
    out
}

fn traffic() -> Vec<Vec<Vec<u8>>> {
    vec![
        vec![frame("ESH6", 1, 1, b"bid 5000.25")],
        vec![b"F001".to_vec(), b"Save Roger".to_vec()],
        vec![frame("ESH66", 2, 1, &[0u8, 255, 7, 0])],
        vec![b"F002".to_vec(), b"".to_vec(), vec![0u8, 1, 2, 3]],
        vec![frame("NQZ5", 3, 1, b"")],
        vec![frame("CLF6", 4, 1, b"x")],
        vec![b"NQ1".to_vec(), b"foreign nq".to_vec()],
    ]
}

#[test]
fn recording_reads_back_byte_identical_and_subscriptions_are_shown() {
    let path = temp_file("live.cap");
    let mut tap = start("tap", &["--record", path.to_str().expect("utf-8 path")]);
    let ctx = zmq::Context::new();
    let publisher = publisher(&ctx, &tap.frontend);
    let sub = subscriber(&ctx, &tap.backend, &[b""]);
    wait_line(&tap.stdout, DEADLINE, "the subscribe event", |l| l == "subscribe prefix=\"\"");
    handshake(&publisher, &sub);

    let sent = traffic();
    for m in &sent {
        publisher.send_multipart(m.clone(), 0).expect("publish");
    }
    publisher.send(frame(PROBE, 0, 0, b"end"), 0).expect("probe");
    let got = until_probe(&sub, DEADLINE, Some(b"end"));
    assert_eq!(got, sent, "the subscriber gets everything through the tap");

    wait_line(&tap.stdout, DEADLINE, "the decoded ESH6 line", |l| {
        l.starts_with("msg topic=ESH6 kind=data pub=7 session=5eed seq=1 topic_seq=1 lag_us=") && l.ends_with("size=64")
    });
    wait_line(&tap.stdout, DEADLINE, "the foreign F001 line", |l| {
        l == "msg foreign topic=\"F001\" frames=2 size=14 hex=53 61 76 65 20 52 6f 67 65 72"
    });
    sub.set_unsubscribe(b"").expect("unsubscribe");
    wait_line(&tap.stdout, DEADLINE, "the unsubscribe event", |l| l == "unsubscribe prefix=\"\"");

    let (_, err) = stop(&mut tap);
    assert!(err.iter().any(|l| l.starts_with("tap: stopped:") && l.contains("dropped=0")), "{err:?}");
    assert_eq!(read_capture(&path), sent, "capture = published, byte for byte, MORE flags kept");
}

#[test]
fn filters_choose_what_is_shown_and_recorded_not_what_passes() {
    let path = temp_file("filtered.cap");
    let mut tap = start(
        "tap",
        &["--subscribe-all", "--filter", "ESH6\\0", "--filter", "NQ", "--record", path.to_str().expect("utf-8 path")],
    );
    let ctx = zmq::Context::new();
    let publisher = publisher(&ctx, &tap.frontend);
    let sub = subscriber(&ctx, &tap.backend, &[b""]);
    handshake(&publisher, &sub);

    let sent = traffic();
    for m in &sent {
        publisher.send_multipart(m.clone(), 0).expect("publish");
    }
    publisher.send(frame(PROBE, 0, 0, b"end"), 0).expect("probe");
    assert_eq!(until_probe(&sub, DEADLINE, Some(b"end")), sent, "forwarding is not filtered");

    let (out, _) = stop(&mut tap);
    let want: Vec<Vec<Vec<u8>>> = vec![sent[0].clone(), sent[4].clone(), sent[6].clone()];
    assert_eq!(read_capture(&path), want, "only ESH6 exactly, NQZ5 and NQ1 recorded");
    let shown: Vec<&String> = out.iter().filter(|l| l.starts_with("msg ")).collect();
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert!(shown[0].starts_with("msg topic=ESH6 "), "{shown:?}");
    assert!(shown[1].starts_with("msg topic=NQZ5 "), "{shown:?}");
    assert!(shown[2].starts_with("msg foreign topic=\"NQ1\""), "{shown:?}");
}

#[test]
fn stats_counts_per_topic() {
    let mut tap = start("tap", &["--stats", "--subscribe-all"]);
    let ctx = zmq::Context::new();
    let publisher = publisher(&ctx, &tap.frontend);
    let sub = subscriber(&ctx, &tap.backend, &[b""]);
    handshake(&publisher, &sub);
    for i in 0..5 {
        publisher.send(frame("ESH6", i + 1, i + 1, b""), 0).expect("publish");
    }
    publisher.send(frame(PROBE, 0, 0, b"end"), 0).expect("probe");
    until_probe(&sub, DEADLINE, Some(b"end"));
    wait_line(&tap.stdout, Duration::from_secs(3), "a stats line counting ESH6", |l| l == "  \"ESH6\" 5");
    let (out, _) = stop(&mut tap);
    assert!(!out.iter().any(|l| l.starts_with("msg ")), "--stats prints no per-message lines");
}

#[test]
fn a_record_file_it_cannot_create_is_one_line_naming_the_flag() {
    // Before: `could not create the capture file X: i/o error while creating the capture file: …`.
    let (code, _out, err) = common::run_within(
        "tap",
        common::mdsub().args([
            "tap",
            "--frontend",
            "connect:tcp://127.0.0.1:1",
            "--backend",
            "bind:tcp://127.0.0.1:*",
            "--record",
            "/nonexistent-dir/x.mdcap",
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.contains("--record /nonexistent-dir/x.mdcap"), "{line}");
    assert_eq!(line.matches("capture file").count(), 1, "said once: {line}");
    assert_eq!(line.matches("No such file or directory").count(), 1, "{line}");
}
