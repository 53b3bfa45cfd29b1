//! The proxies in a live data path, all real processes over loopback:
//! replay → LVC → engine, where late joiners get cached values from the LVC
//! and the engine (an existing subscriber of the same topics) receives none
//! of them: no duplicate, nothing lost or double-counted; and replay → tap
//! --record → replay, which is byte-identical.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{start_with, stop, subscriber};
use common::*;
use mdsub::wire::capture::CaptureReader;
use mdsub::wire::{self, Kind, FLAG_FROM_CACHE};

/// Wait for the first message on `sub` and tell whether any message within
/// `window` after it was flagged FROM_CACHE.
fn saw_cached_within(sub: &zmq::Socket, window: Duration) -> bool {
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Ok(f) = sub.recv_bytes(0) {
            if wire::decode(&f).is_ok_and(|v| v.header.flags & FLAG_FROM_CACHE != 0) {
                return true;
            }
        }
    }
    false
}

#[test]
fn engine_behind_the_lvc_sees_no_duplicate_from_late_joiners_and_loses_nothing() {
    let (replay, eps) = start_replay("replay", 1, &["--count", "30000", "--rate", "10000", "--subscribers", "1"]);
    let mut lvc = start_with("lvc", &format!("connect:{}", eps[0]), "bind:tcp://127.0.0.1:*", &[]);
    // The engine subscribes through the LVC: the replay's one subscriber (the handshake; the
    // LVC's own upstream subscription is none).
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "60s", "--handler", "verify", "--endpoint", &lvc.backend]);
    let engine = LineProc::spawn("engine", &mut cmd);
    // Late joiners while the feed is live: each subscription makes the LVC
    // answer with cached values, to that joiner only (ZMQ_XPUB_MANUAL_LAST_VALUE,
    // docs/LVC-TAP.md): the engine, subscribed to the same topics, gets none. They take `E…` topics only, so they
    // never count as one of the replay's two subscribers (it counts those
    // that receive its control topic): the engine is sure to be there first.
    let ctx = zmq::Context::new();
    let watcher = subscriber(&ctx, &lvc.backend, &[b"E"]);
    common::proxy::recv_within(&watcher, Duration::from_secs(20), "the feed to be live");
    let mut late = Vec::new();
    for _ in 0..3 {
        let s = subscriber(&ctx, &lvc.backend, &[b"E"]);
        assert!(saw_cached_within(&s, Duration::from_secs(10)), "a late joiner got cached values");
        late.push(s);
    }
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    assert_eq!(r["sent"].as_u64(), Some(30_000), "{r}");
    assert_eq!(r["delivered"].as_u64(), Some(30_000), "every message exactly once: {r}");
    assert_eq!(r["lost"].as_u64(), Some(0));
    assert_eq!(r["duplicates"].as_u64(), Some(0), "the late joiners' answers never reached the engine: {r}");
    assert_eq!(r["handler"]["verified"].as_u64(), Some(30_000), "per-topic order kept: {r}");
    assert_eq!(r["handler"]["out_of_order"].as_u64(), Some(0));
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
    stop(&mut lvc);
}

#[test]
fn tap_recording_of_a_live_replay_replays_byte_identical() {
    let dir = temp_dir("pipeline");
    let file = dir.join("live.mdcap");
    let (replay, eps) = start_replay("replay", 1, &["--count", "5000", "--rate", "0", "--symbols", "30"]);
    let mut tap = start_with(
        "tap",
        &format!("connect:{}", eps[0]),
        "bind:tcp://127.0.0.1:*",
        &["--subscribe-all", "--quiet", "--record", file.to_str().expect("utf8")],
    );
    let (status, out) = replay.finish(Duration::from_secs(30));
    assert!(status.success(), "{out}");
    // The tap has everything once the replay's end of stream is in the file.
    let records = || -> Vec<(Vec<u8>, bool)> {
        let Ok(mut r) = CaptureReader::open(&file) else { return vec![] };
        let mut v = Vec::new();
        while let Ok(Some(rec)) = r.next_record() {
            v.push((rec.frame.to_vec(), rec.more));
        }
        v
    };
    let is_eos = |f: &[u8]| wire::decode(f).is_ok_and(|v| v.header.kind == Kind::EndOfStream);
    // The recorder flushes at least once a second: wait until the end of
    // stream is in the file, then stop the tap.
    wait_until(Duration::from_secs(20), "the end of stream in the recording", || {
        records().iter().any(|(f, _)| is_eos(f))
    });
    let (_, err) = stop(&mut tap);
    let recorded = records();
    assert!(recorded.iter().any(|(f, _)| is_eos(f)), "the recording holds the end of stream; tap said {err:?}");
    let data: Vec<(Vec<u8>, bool)> =
        recorded.iter().filter(|(f, _)| wire::decode(f).is_ok_and(|v| v.header.kind == Kind::Data)).cloned().collect();
    assert_eq!(data.len(), 5000, "every data frame was recorded");
    // Replay the recording into a plain subscriber: the same bytes come back.
    let (replay2, eps2) = start_replay("replay2", 1, &["--from", file.to_str().expect("utf8"), "--rate", "0"]);
    let ctx = zmq::Context::new();
    let sub = subscriber(&ctx, &eps2[0], &[b""]);
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < end, "no end of stream within 30 s; got {}", got.len());
        let Ok(f) = sub.recv_bytes(0) else { continue };
        if is_eos(&f) {
            break;
        }
        let more = sub.get_rcvmore().expect("rcvmore");
        got.push((f, more));
    }
    assert!(got == data, "replayed frames are byte-identical to the recorded data frames");
    let (status, _) = replay2.finish(Duration::from_secs(20));
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
