//! The reader → worker hand-off over inproc PUSH/PULL, the engine's deciding
//! cost: each message as its own libzmq message, against batches built the
//! engine's way (`engine::batch`), for the same 100-byte frames.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mdsub::engine::batch::{self, BatchIter};
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

criterion_group!(benches, bench);
criterion_main!(benches);
