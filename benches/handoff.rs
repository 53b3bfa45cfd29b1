//! The reader → worker hand-off over inproc PUSH/PULL, the engine's deciding
//! cost: each message as its own libzmq message, against batches built the
//! engine's way (`engine::batch`), for the same 100-byte frames. `tally` prices what the
//! worker does with each message's wire and total latencies (perf37): recorded into the
//! histograms directly, against counted into a `StageTally`; and the fold of a tally into the
//! histograms that it costs once a report period, for latencies over one bucket, over 4 (a
//! healthy feed's µs to ms) and over all 27 of a stage (the most it reads: 2 × 27 648 entries).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mdsub::engine::batch::{self, BatchIter};
use mdsub::metrics::tally::StageTally;
use mdsub::metrics::StageHistograms;
use mdsub::wire::{self, Header, Kind};

const MSGS: usize = 100_000;

fn frame() -> Vec<u8> {
    let h = Header {
        kind: Kind::Data,
        flags: 0,
        publisher_id: 1,
        session_id: 7,
        stream_seq: 1,
        topic_seq: 1,
        send_time_ns: 1,
    };
    wire::encode(b"ESH6", &h, &[7u8; 100])
}

/// Hand `MSGS` frames from this thread to a PULL thread in batches of
/// `batch` (1 = one libzmq message per frame); returns the elapsed time.
fn hand_off(ctx: &zmq::Context, endpoint: &str, batch: usize) -> Duration {
    let pull = ctx.socket(zmq::PULL).expect("pull");
    pull.bind(endpoint).expect("bind");
    let push = ctx.socket(zmq::PUSH).expect("push");
    push.set_sndhwm(1000).expect("hwm");
    push.connect(endpoint).expect("connect");
    let f = frame();
    let consumer = std::thread::spawn(move || {
        let mut msg = zmq::Message::new();
        let mut seen = 0;
        while seen < MSGS {
            pull.recv(&mut msg, 0).expect("recv");
            seen += match BatchIter::new(&msg) {
                Some(it) => it.map(|(_, n, f)| wire::decode_checked_topic(f, n).is_ok() as usize).sum(),
                None => wire::decode(&msg).is_ok() as usize,
            };
        }
    });
    let start = Instant::now();
    let (mut staging, mut stamp) = (Vec::with_capacity(batch * 200), 0);
    for i in 0..MSGS {
        if batch == 1 {
            push.send(&f[..], 0).expect("send");
        } else {
            batch::push(&mut staging, &mut stamp, 0, 0, 4, &f);
            if (i + 1) % batch == 0 || i + 1 == MSGS {
                push.send(&staging[..], 0).expect("send");
                staging.clear();
            }
        }
    }
    consumer.join().expect("consumer");
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let ctx = zmq::Context::new();
    let mut g = c.benchmark_group("inproc_handoff_100k");
    g.throughput(Throughput::Elements(MSGS as u64));
    g.sample_size(10);
    let mut n = 0;
    for batch in [1usize, 8, 64] {
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        n += 1;
                        hand_off(&ctx, &format!("inproc://handoff{n}"), batch)
                    })
                    .sum()
            })
        });
    }
    g.finish();
}

/// `n` (send, receive, done) times whose latencies spread over `buckets` buckets from 1 µs.
fn latencies(n: usize, buckets: u32) -> Vec<(u64, u64, u64)> {
    let sent = 1u64 << 62;
    (0..n as u64)
        .map(|i| {
            let wire = 1_000 + (i * 7_919) % (2_048u64 << buckets).saturating_sub(1_000).max(1);
            (sent, sent + wire, sent + wire + (i * 104_729) % (2_048u64 << buckets))
        })
        .collect()
}

fn tally(c: &mut Criterion) {
    let lat = latencies(MSGS, 4);
    let mut g = c.benchmark_group("tally");
    g.throughput(Throughput::Elements(MSGS as u64));
    g.bench_function("record_direct", |b| {
        let mut h = StageHistograms::default();
        b.iter(|| lat.iter().for_each(|&(s, r, d)| h.record_since_sent(s, r, d)))
    });
    g.bench_function("record_tally", |b| {
        let (mut h, mut t) = (StageHistograms::default(), StageTally::default());
        b.iter(|| lat.iter().for_each(|&(s, r, d)| t.record_since_sent(&mut h.out_of_bounds, s, r, d)))
    });
    g.finish();
    let mut g = c.benchmark_group("tally_fold");
    // Per fold: a report period's 10 000 messages counted, then folded (the count is timed too).
    for (name, buckets) in [("1_bucket", 0), ("4_buckets", 4), ("27_buckets", 26)] {
        let lat = latencies(10_000, buckets);
        let (mut h, mut t) = (StageHistograms::default(), StageTally::default());
        g.bench_function(name, |b| {
            b.iter(|| {
                lat.iter().for_each(|&(s, r, d)| t.record_since_sent(&mut h.out_of_bounds, s, r, d));
                t.fold_into(&mut h);
            })
        });
        g.bench_function(format!("{name}_count_only"), |b| {
            b.iter(|| lat.iter().for_each(|&(s, r, d)| t.record_since_sent(&mut h.out_of_bounds, s, r, d)));
            t.fold_into(&mut h);
        });
    }
    g.finish();
}

criterion_group!(benches, bench, tally);
criterion_main!(benches);
