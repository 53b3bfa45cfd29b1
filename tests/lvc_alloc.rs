//! The LVC cache update does not allocate in the steady state (known topics,
//! values no larger than before): counted with a counting global allocator.

use std::sync::atomic::Ordering;

use mdsub::lvc::cache::{CacheLimits, LastValueCache, Update};
use mdsub::wire::{encode, Header, Kind};

mod common;

use common::alloc::{Counting, ALLOCS};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_update_does_not_allocate() {
    let h = |seq| Header {
        kind: Kind::Data,
        flags: 0,
        publisher_id: 1,
        session_id: 2,
        stream_seq: seq,
        topic_seq: seq,
        send_time_ns: 0,
    };
    let frames: Vec<Vec<u8>> = (0..100u64).map(|i| encode(format!("T{i:03}").as_bytes(), &h(i), &[1; 40])).collect();
    let smaller: Vec<Vec<u8>> =
        (0..100u64).map(|i| encode(format!("T{i:03}").as_bytes(), &h(i + 100), &[2; 10])).collect();
    let foreign: [&[u8]; 2] = [b"F1", b"body"];
    let mut cache = LastValueCache::new(CacheLimits::default());
    for f in &frames {
        assert_eq!(cache.update(std::slice::from_ref(f)), Update::Inserted);
    }
    cache.update(&foreign);

    let before = ALLOCS.load(Ordering::Relaxed);
    for round in 0..10 {
        let set = if round % 2 == 0 { &smaller } else { &frames };
        for f in set {
            assert_eq!(cache.update(std::slice::from_ref(f)), Update::Replaced);
        }
        assert_eq!(cache.update(&foreign), Update::Replaced);
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "allocations in 2 010 steady-state updates");
}
