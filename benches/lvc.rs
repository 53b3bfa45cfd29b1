//! The LVC hot path (guide, chapter 5, "Last Value Caching"): the cost of one
//! cache update per message in the steady state (known topic, value replaced
//! in place), plus the prefix answer to a subscription, for comparison.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mdsub::lvc::cache::{CacheLimits, LastValueCache};
use mdsub::wire::{encode, Header};

fn frames(topics: usize) -> Vec<Vec<u8>> {
    (0..topics)
        .map(|i| {
            let h = Header { publisher_id: 1, session_id: 7, topic_seq: 1, ..Header::data(i as u64 + 1, 0) };
            // 100-byte frames, as in PERF-ANCHORS.md: 6-byte topic + NUL + 48 + 45.
            encode(format!("T{i:05}").as_bytes(), &h, &[0x5a; 45])
        })
        .collect()
}

fn update(c: &mut Criterion) {
    let mut g = c.benchmark_group("lvc_update");
    g.throughput(Throughput::Elements(1));
    for topics in [1usize, 1000, 100_000] {
        let fs = frames(topics);
        let mut cache = LastValueCache::new(CacheLimits { max_topics: topics, max_bytes: 1 << 30 });
        for f in &fs {
            cache.update(std::slice::from_ref(f));
        }
        let mut i = 0usize;
        g.bench_function(format!("replace_100B_{topics}_topics"), |b| {
            b.iter(|| {
                let f = &fs[i];
                i += 1;
                if i == fs.len() {
                    i = 0;
                }
                black_box(cache.update(std::slice::from_ref(f)))
            })
        });
    }
    let multipart: Vec<&[u8]> = vec![b"F00042", &[0x5a; 94]];
    let mut cache = LastValueCache::new(CacheLimits::default());
    cache.update(&multipart);
    g.bench_function("replace_foreign_2_frames", |b| b.iter(|| black_box(cache.update(black_box(&multipart)))));
    g.finish();
}

fn answer(c: &mut Criterion) {
    let fs = frames(1000);
    let mut cache = LastValueCache::new(CacheLimits::default());
    for f in &fs {
        cache.update(std::slice::from_ref(f));
    }
    let mut g = c.benchmark_group("lvc_answer");
    g.bench_function("exact_topic", |b| b.iter(|| black_box(cache.matching(black_box(b"T00500\0")).count())));
    g.bench_function("prefix_10_topics", |b| b.iter(|| black_box(cache.matching(black_box(b"T0050")).count())));
    g.bench_function("insert_new_topic", |b| {
        b.iter_batched(
            || LastValueCache::new(CacheLimits::default()),
            |mut fresh| black_box(fresh.update(std::slice::from_ref(&fs[0]))),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, update, answer);
criterion_main!(benches);
