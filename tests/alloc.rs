//! The hot path does not allocate: with a counting global allocator, a
//! steady-state window of many messages through the engine (reader, batch
//! hand-off, worker, histograms; and inline, the reader running the
//! worker's core itself) and the publisher makes (almost) no Rust heap
//! allocations. libzmq's own C allocations are outside Rust's allocator and
//! not counted; the engine's part is libzmq's small header per batch (the
//! batch itself is a pooled buffer, sent without a copy). The pool grows only
//! when more batches than ever before are in flight at once (two allocations
//! per buffer): that is bounded by the hand-off queues, not by messages, and
//! is counted apart.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use mdsub::agent::StopFlag;
use mdsub::engine::reader::HandOff;
use mdsub::engine::{Engine, EngineConfig, ShardConfig};
use mdsub::feed::GeneratorConfig;
use mdsub::replay::{Limits, Pacing, Publisher, PublisherConfig, Source};

mod common;

use common::alloc::{Counting, ALLOCS};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_makes_no_allocation_per_message() {
    // One after the other in this one binary: batch to two workers, then inline.
    steady_state(HandOff::Batch, 2);
    steady_state(HandOff::Inline, 1);
}

fn steady_state(handoff: HandOff, workers: usize) {
    let ctx = zmq::Context::new();
    let mut publisher = Publisher::bind(&ctx, &PublisherConfig::default()).expect("publisher");
    let eps = publisher.endpoints();
    let cfg = EngineConfig {
        shards: vec![ShardConfig { endpoints: eps, ..Default::default() }],
        worker_cores: vec![None; workers],
        handoff,
        expect_eos_per_shard: Some(0),
        // Ship histograms often, so the window covers many metric intervals.
        metrics_interval: Duration::from_millis(10),
        ..EngineConfig::default()
    };
    let stop = StopFlag::new();
    let engine = Engine::start(&cfg, stop.clone()).expect("engine");
    publisher.wait_for_subscribers(1, Duration::from_secs(10)).expect("handshake");
    let gen = GeneratorConfig { symbols: 20, zipf_s: 0.0, ..Default::default() };
    // Warm-up: every topic seen, every buffer grown.
    let warm = 50_000u64;
    let steady = 300_000u64;
    let limits = |n| Limits { max_msgs: Some(n), duration: None };
    let never = StopFlag::new();
    // The generator restarts its topic sequences each run: run both windows in
    // one replay and sample the counter from the progress callback instead.
    let mut at_warm = None;
    let mut at_end = 0;
    let total = warm + steady;
    let mut progress = |n: u64| {
        if n >= warm && at_warm.is_none() {
            at_warm = Some((n, ALLOCS.load(Relaxed), engine.handoff_buffers()));
        }
        if n == total {
            at_end = ALLOCS.load(Relaxed);
        }
    };
    publisher.run(&Source::Generator(gen), Pacing::FlatOut, limits(total), &never, &mut progress).expect("replay");
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while engine.delivered() < total {
        assert!(std::time::Instant::now() < end, "engine delivered only {} of {total}", engine.delivered());
        std::thread::sleep(Duration::from_millis(10));
    }
    let after_delivery = ALLOCS.load(Relaxed);
    let (warm_n, warm_allocs, warm_buffers) = at_warm.expect("warm-up sampled");
    let msgs = total - warm_n;
    // Hand-off buffers made in the window: the pool reached a new depth.
    let grown = engine.handoff_buffers() - warm_buffers;
    let allocs = (after_delivery - warm_allocs).saturating_sub(2 * grown);
    eprintln!(
        "{handoff:?}: {} allocations over {msgs} messages (publisher end-of-run bookkeeping included: {}): \
         {grown} hand-off buffers added (two allocations each), {allocs} others",
        after_delivery - warm_allocs,
        after_delivery - at_end
    );
    assert!(msgs >= 250_000);
    // Zero per message: a handful of fixed costs, not one per message or batch.
    assert!(allocs < 64, "{handoff:?}: {allocs} Rust heap allocations over {msgs} steady-state messages");
    // The pool grows with the batches in flight at most: both ends of every worker's queue.
    let queues = workers as u64 * (2 * cfg.handoff_hwm_msgs as u64 + 2);
    assert!(grown <= queues, "{handoff:?}: {grown} hand-off buffers made, more than the {queues} the queues hold");
    stop.stop();
    let _ = engine.join(Some(Duration::from_secs(10)));
}
