//! `mdsub lvc` and `mdsub tap` in front of a deliberately slow subscriber,
//! fed flat out by a lossless publisher (an XPUB with ZMQ_XPUB_NODROP, as in
//! issue 13's finding): with `--delivery lossless` (the default) every message
//! arrives, in order; with `--delivery lossy` every message the proxy could
//! not queue is counted, exactly: sent = received + dropped_full.
//!
//! 2 M messages per case, the count of the finding (about 30 s for
//! the four cases in parallel in release on the 2-core box);
//! `MDSUB_DELIVERY_MSGS=200000` runs a quick tenth.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{counter, frame, start, stop, Proxy, PROBE};
use mdsub::wire::decode;

const PAYLOAD: [u8; 512] = [7; 512];

fn messages() -> u64 {
    std::env::var("MDSUB_DELIVERY_MSGS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000)
}

/// What the slow subscriber saw.
#[derive(Default)]
struct Seen {
    data: AtomicU64,
    /// Data messages whose sequence was not the one after the previous.
    out_of_order: AtomicU64,
    markers: AtomicU64,
    /// Highest marker number seen.
    last_marker: AtomicU64,
}

struct Run {
    data_sent: u64,
    markers_sent: u64,
    data_received: u64,
    markers_received: u64,
    out_of_order: u64,
    counters: String,
}

fn run(tool: &str, delivery: &str) -> Run {
    let n = messages();
    let mut extra = vec!["--delivery", delivery, "--hwm-msgs", "1000"];
    if tool == "tap" {
        extra.extend(["--subscribe-all", "--quiet"]);
    }
    let mut proxy: Proxy = start(tool, &extra);
    let ctx = zmq::Context::new();
    let mut publisher = ctx.socket(zmq::XPUB).expect("xpub");
    mdsub::zmqx::set_xpub_nodrop(&mut publisher, true).expect("nodrop");
    publisher.set_sndhwm(1000).expect("sndhwm");
    publisher.set_linger(0).expect("linger");
    publisher.connect(&proxy.frontend).expect("connect");

    // The slow subscriber: subscriptions in this order, so that once a probe
    // arrives the data and marker subscriptions are in effect.
    let sub = ctx.socket(zmq::SUB).expect("sub");
    sub.set_rcvhwm(1000).expect("rcvhwm");
    sub.set_linger(0).expect("linger");
    sub.set_rcvtimeo(100).expect("rcvtimeo");
    sub.connect(&proxy.backend).expect("connect");
    for p in [&b"D\0"[..], b"M\0", b"_probe\0"] {
        sub.set_subscribe(p).expect("subscribe");
    }
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        publisher.send(frame(PROBE, 0, 0, b"handshake"), zmq::DONTWAIT).ok();
        if sub.recv_bytes(0).is_ok_and(|m| m.starts_with(b"_probe\0")) {
            break;
        }
        assert!(Instant::now() < end, "path through {tool} did not come up");
    }

    let seen = Arc::new(Seen::default());
    let stop_reading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, stop2) = (seen.clone(), stop_reading.clone());
    let reader = std::thread::spawn(move || {
        let mut next = 1;
        let mut since_pause = 0;
        while !stop2.load(Ordering::Acquire) {
            let Ok(m) = sub.recv_bytes(0) else { continue };
            // Deliberately slow: a millisecond's pause every 100 messages.
            since_pause += 1;
            if since_pause == 100 {
                since_pause = 0;
                std::thread::sleep(Duration::from_millis(1));
            }
            let Ok(v) = decode(&m) else { continue };
            match v.topic {
                b"D" => {
                    if v.header.stream_seq != next {
                        s2.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    next = v.header.stream_seq + 1;
                    s2.data.fetch_add(1, Ordering::Relaxed);
                }
                b"M" => {
                    s2.markers.fetch_add(1, Ordering::Relaxed);
                    s2.last_marker.fetch_max(v.header.stream_seq, Ordering::AcqRel);
                }
                _ => {}
            }
        }
    });

    // Flat out, lossless toward the proxy (a blocking send on a NODROP XPUB).
    let t0 = Instant::now();
    for seq in 1..=n {
        publisher.send(frame("D", seq, seq, &PAYLOAD), 0).expect("publish");
    }
    // Markers until the subscriber has seen the last one sent: then every
    // message before it has been received or dropped, and none is in flight.
    let mut markers_sent = 0;
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        markers_sent += 1;
        publisher.send(frame("M", markers_sent, markers_sent, b"end"), 0).expect("marker");
        let wait = Instant::now() + Duration::from_millis(300);
        while Instant::now() < wait && seen.last_marker.load(Ordering::Acquire) < markers_sent {
            std::thread::sleep(Duration::from_millis(5));
        }
        if seen.last_marker.load(Ordering::Acquire) == markers_sent {
            break;
        }
        assert!(Instant::now() < end, "the subscriber never saw the end marker through {tool}");
    }
    eprintln!("{tool} --delivery {delivery}: {n} messages in {:?}", t0.elapsed());
    stop_reading.store(true, Ordering::Release);
    reader.join().expect("reader");

    let (out, err) = stop(&mut proxy);
    let tag = format!("{tool}: stopped:");
    let counters = out.iter().chain(err.iter()).find(|l| l.starts_with(&tag)).expect("counters on exit").clone();
    Run {
        data_sent: n,
        markers_sent,
        data_received: seen.data.load(Ordering::Acquire),
        markers_received: seen.markers.load(Ordering::Acquire),
        out_of_order: seen.out_of_order.load(Ordering::Acquire),
        counters,
    }
}

fn assert_lossless(tool: &str) {
    let r = run(tool, "lossless");
    assert_eq!(r.data_received, r.data_sent, "every message arrived: {}", r.counters);
    assert_eq!(r.out_of_order, 0, "in order, no gap: {}", r.counters);
    assert_eq!(r.markers_received, r.markers_sent, "{}", r.counters);
    assert_eq!(counter(&r.counters, "dropped_full"), 0, "{}", r.counters);
    assert!(counter(&r.counters, "blocked") > 0, "the slow subscriber pushed back: {}", r.counters);
}

fn assert_lossy_counts_exactly(tool: &str) {
    let r = run(tool, "lossy");
    let dropped = counter(&r.counters, "dropped_full");
    assert!(dropped > 0, "a subscriber this slow makes a lossy proxy drop: {}", r.counters);
    assert_eq!(
        r.data_sent + r.markers_sent,
        r.data_received + r.markers_received + dropped,
        "sent = received + counted drops: {}",
        r.counters
    );
    assert_eq!(counter(&r.counters, "send_failures"), 0, "{}", r.counters);
}

#[test]
fn lvc_lossless_delivers_everything_to_a_slow_subscriber() {
    assert_lossless("lvc");
}

#[test]
fn lvc_lossy_counts_every_message_it_could_not_queue() {
    assert_lossy_counts_exactly("lvc");
}

#[test]
fn tap_lossless_delivers_everything_to_a_slow_subscriber() {
    assert_lossless("tap");
}

#[test]
fn tap_lossy_counts_every_message_it_could_not_queue() {
    assert_lossy_counts_exactly("tap");
}
