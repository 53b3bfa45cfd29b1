//! Micro costs of the wire format: frame encode, zero-copy decode, the
//! reader's checks (decode + sequence tracking + routing), capture records.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mdsub::engine::reader::{Checks, Routing};
use mdsub::engine::sequence::SequenceTracker;
use mdsub::wire::capture::{CaptureReader, CaptureWriter};
use mdsub::wire::{self, Header, Kind};

fn header(seq: u64) -> Header {
    Header {
        kind: Kind::Data,
        flags: 0,
        publisher_id: 1,
        session_id: 7,
        stream_seq: seq,
        topic_seq: seq,
        send_time_ns: seq,
    }
}

fn frames(n: usize) -> Vec<Vec<u8>> {
    let topics = mdsub::feed::symbol_names(100);
    (0..n).map(|i| wire::encode(topics[i % 100].as_bytes(), &header(i as u64 / 100 + 1), &[7u8; 100])).collect()
}

fn bench(c: &mut Criterion) {
    let payload = [7u8; 100];
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    let mut buf = vec![0u8; wire::frame_len(b"ESH6", payload.len())];
    g.bench_function("encode_100B", |b| {
        b.iter(|| wire::encode_into(black_box(&mut buf), b"ESH6", &header(1), &payload))
    });
    let f = wire::encode(b"ESH6", &header(1), &payload);
    g.bench_function("decode_100B", |b| b.iter(|| wire::decode(black_box(&f)).map(|v| v.header.stream_seq)));
    g.bench_function("decode_garbage", |b| b.iter(|| wire::decode(black_box(b"no nul in this frame at all........"))));
    g.bench_function("decode_checked_topic_100B", |b| {
        b.iter(|| wire::decode_checked_topic(black_box(&f), black_box(4)).map(|v| v.header.stream_seq))
    });
    g.finish();

    // A worker's walk over one hand-off batch of 64 frames (100 symbols), decoding each: as it
    // did before the records carried their topic lengths (a full decode), and as it does now.
    let (mut batch, mut stamp) = (Vec::new(), 0);
    for f in frames(64) {
        let topic_len = wire::decode(&f).map(|v| v.topic.len()).unwrap_or(0);
        mdsub::engine::batch::push(&mut batch, &mut stamp, 0, 1, topic_len, &f);
    }
    let mut g = c.benchmark_group("batch_walk_64");
    g.throughput(Throughput::Elements(64));
    let walk = |checked: bool| {
        let it = mdsub::engine::batch::BatchIter::new(black_box(&batch)).into_iter().flatten();
        it.map(|(_, n, f)| if checked { wire::decode_checked_topic(f, n) } else { wire::decode(f) })
            .filter_map(|v| v.ok())
            .map(|v| v.header.stream_seq)
            .sum::<u64>()
    };
    g.bench_function("decode", |b| b.iter(|| walk(false)));
    g.bench_function("decode_checked_topic", |b| b.iter(|| walk(true)));
    g.finish();

    let fs = frames(10_000);
    let mut g = c.benchmark_group("reader_checks");
    g.throughput(Throughput::Elements(fs.len() as u64));
    g.bench_function("decode_track_route_10k", |b| {
        b.iter_batched(
            || Checks::new(Routing::ByTopic, 2, true),
            |mut checks| {
                let mut n = 0;
                for f in &fs {
                    n += checks.check(f, 1).is_some() as usize;
                }
                n
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();

    // The tracker's per-frame cost with one live publisher, alone or after 1000 others each
    // sent a frame and ended (review 18: a scan of every publisher ever seen, 134 -> 956 ns a
    // frame in the reader), and with two live publishers interleaved.
    let topics = mdsub::feed::symbol_names(100);
    let mut g = c.benchmark_group("sequence_tracker");
    g.throughput(Throughput::Elements(10_000));
    for (name, ended, live) in [("one_publisher", 0u32, 1u32), ("after_1000_ended", 1000, 1), ("two_publishers", 0, 2)]
    {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut t = SequenceTracker::new(true);
                    for id in 0..ended {
                        let h = Header { publisher_id: 100 + id, session_id: u64::from(id), ..header(1) };
                        t.on_data(&h, b"X");
                        t.on_end_of_stream(&Header { kind: Kind::EndOfStream, topic_seq: 0, ..h }, 1);
                    }
                    t
                },
                |mut t| {
                    let mut n = 0;
                    for i in 0..10_000u64 {
                        let h = Header { publisher_id: 1 + (i % u64::from(live)) as u32, ..header(i / 100 + 1) };
                        let h = Header { stream_seq: i / u64::from(live) + 1, ..h };
                        n += t.on_data(black_box(&h), topics[(i % 100) as usize].as_bytes()).accept as usize;
                    }
                    n
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("capture");
    g.throughput(Throughput::Elements(fs.len() as u64));
    g.bench_function("write_10k_records", |b| {
        b.iter(|| {
            let mut w = CaptureWriter::new(Vec::with_capacity(2 << 20)).expect("header");
            for f in &fs {
                w.write_frame(f, false, 1).expect("write");
            }
            w.into_inner().expect("flush").len()
        })
    });
    let mut w = CaptureWriter::new(Vec::new()).expect("header");
    for f in &fs {
        w.write_frame(f, false, 1).expect("write");
    }
    let file = w.into_inner().expect("flush");
    g.bench_function("read_10k_records", |b| {
        b.iter(|| {
            let mut r = CaptureReader::new(&file[..]).expect("header");
            let mut n = 0;
            while let Ok(Some(rec)) = r.next_record() {
                n += rec.frame.len();
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
