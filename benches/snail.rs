//! What the Suicidal Snail costs per message: the lag detector alone, the
//! guard (detector + policy + counters) on a healthy feed, and the reader's
//! whole per-frame path (decode + sequence checks + routing) with and without
//! the guard, on the same 10 000 frames; and one clock read, for comparison
//! (the checks add none: they use the receive / handler-end time the reader
//! and worker read anyway). `snail_clock` prices the alternative the issue
//! names: the guard with a clock read of its own per message, or one per
//! batch of 64 (a worker's drain round).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mdsub::engine::reader::{Checks, Routing};
use mdsub::snail::lag::LagDetector;
use mdsub::snail::{Guard, Site, SnailBoard, SnailConfig};
use mdsub::wire::{self, Header};

const N: usize = 10_000;
const T0: u64 = 1_700_000_000_000_000_000;

/// Frames sent 10 µs apart, received 50–80 µs later (a healthy feed).
fn feed() -> Vec<(Vec<u8>, u64)> {
    let topics = mdsub::feed::symbol_names(100);
    (0..N)
        .map(|i| {
            let send = T0 + i as u64 * 10_000;
            let h = Header {
                publisher_id: 1,
                session_id: 7,
                topic_seq: i as u64 / 100 + 1,
                ..Header::data(i as u64 + 1, send)
            };
            (wire::encode(topics[i % 100].as_bytes(), &h, &[7u8; 100]), send + 50_000 + (i as u64 * 7919) % 30_000)
        })
        .collect()
}

fn guard() -> Guard {
    let board = SnailBoard::new(SnailConfig::default(), vec![Site { role: "shard0-reader".into(), shard: Some(0) }]);
    Guard::new(board, 0, None)
}

fn bench(c: &mut Criterion) {
    let fs = feed();
    let headers: Vec<(Header, u64)> =
        fs.iter().map(|(f, now)| (wire::decode(f).expect("valid frame").header, *now)).collect();

    let mut g = c.benchmark_group("snail");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("lag_observe_10k", |b| {
        b.iter_batched_ref(
            || LagDetector::new(&SnailConfig::default()),
            |d| headers.iter().map(|(h, now)| d.observe(h.send_time_ns, h.stream_seq, *now) as u64).sum::<u64>(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("guard_on_message_10k", |b| {
        b.iter_batched_ref(
            guard,
            |g| {
                headers
                    .iter()
                    .filter(|(h, now)| g.on_message(h, b"ESH6", *now) != mdsub::snail::Action::Continue)
                    .count()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("reader_checks");
    g.throughput(Throughput::Elements(N as u64));
    for (name, with_guard) in [("checks_off_10k", false), ("checks_on_10k", true)] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    let c = Checks::new(Routing::ByTopic, 2, true);
                    if with_guard {
                        c.with_guard(guard())
                    } else {
                        c
                    }
                },
                |checks| fs.iter().filter(|(f, now)| checks.check(f, *now).is_some()).count(),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    // The guard judging at a clock read of its own: per message, or per batch
    // of 64. Stamps are rebased on the real clock at each setup (max lag 1 h,
    // so the verdict stays OK and the path is the one a healthy feed takes).
    let mut g = c.benchmark_group("snail_clock");
    g.throughput(Throughput::Elements(N as u64));
    let live = || {
        let cfg = SnailConfig { max_lag_ns: 3_600_000_000_000, ..SnailConfig::default() };
        let board = SnailBoard::new(cfg, vec![Site { role: "worker0".into(), shard: Some(0) }]);
        let base = mdsub::clock::realtime_ns() - 1_000_000;
        let hs: Vec<Header> = headers
            .iter()
            .map(|(h, _)| Header { send_time_ns: h.send_time_ns - T0 + base - N as u64 * 10_000, ..*h })
            .collect();
        (Guard::new(board, 0, None), hs)
    };
    g.bench_function("guard_clock_per_message_10k", |b| {
        b.iter_batched_ref(
            live,
            |(g, hs)| {
                hs.iter()
                    .filter(|h| g.on_message(h, b"ESH6", mdsub::clock::realtime_ns()) != mdsub::snail::Action::Continue)
                    .count()
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("guard_clock_per_batch64_10k", |b| {
        b.iter_batched_ref(
            live,
            |(g, hs)| {
                let mut n = 0;
                for batch in hs.chunks(64) {
                    let now = mdsub::clock::realtime_ns();
                    n += batch
                        .iter()
                        .filter(|h| g.on_message(h, b"ESH6", now) != mdsub::snail::Action::Continue)
                        .count();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("clock");
    g.throughput(Throughput::Elements(1));
    g.bench_function("realtime_ns", |b| b.iter(|| black_box(mdsub::clock::realtime_ns())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
