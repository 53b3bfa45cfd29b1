//! The `book` handler allocates nothing in the steady state for known
//! instruments: with a counting global allocator, a second pass over the same
//! MBO events (after a clear) grows no book, order map or level vector.
//! Its own test binary, so no other test's allocations are counted.

use std::sync::atomic::Ordering::Relaxed;

use dbn::{MboMsg, RecordRef};
use mdsub::engine::handler::{BookHandler, Handler};
use mdsub::wire::{self, Header};

mod common;

use common::alloc::{Counting, ALLOCS};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn frame(topic: &str, seq: u64, m: &MboMsg) -> Vec<u8> {
    wire::encode(topic.as_bytes(), &Header::data(seq, 0), RecordRef::from(m).as_ref())
}

fn mbo(id: u32, order_id: u64, action: u8, side: u8, price: i64, size: u32) -> MboMsg {
    mdsub::feed::mbo_synth::mbo(id, 0, order_id, action, side, price, size)
}

#[test]
fn second_pass_over_known_instruments_allocates_nothing() {
    // Per instrument: 600 adds over 30 price levels a side, then partial and
    // whole cancels, modifies (price and size), fills and trades.
    let mut events = Vec::new();
    // Order i rests on the bid when i is even, else on the ask, 1..=30 ticks from the mid.
    let side_of = |i: u64| if i.is_multiple_of(2) { b'B' } else { b'A' };
    let price_of = |i: u64| {
        let ticks = 1 + (i % 30) as i64;
        1_000_000_000 + if i.is_multiple_of(2) { -ticks } else { ticks } * 1_000_000
    };
    for id in 1..=8u32 {
        let base = id as u64 * 1_000_000;
        for i in 0..600u64 {
            events.push(mbo(id, base + i, b'A', side_of(i), price_of(i), 10));
        }
        for i in (0..600u64).step_by(3) {
            let (side, price) = (side_of(i), price_of(i));
            events.push(mbo(id, base + i, b'C', side, price, 4));
            let j = i + 1;
            let away = if side_of(j) == b'B' { -7 } else { 7 };
            events.push(mbo(id, base + j, b'M', side_of(j), price_of(j) + away, 3));
            events.push(mbo(id, base + i, b'F', side, price, 1));
            events.push(mbo(id, base + i, b'C', side, price, 6));
            events.push(mbo(id, 0, b'T', b'N', price, 1));
        }
    }
    let frames: Vec<Vec<u8>> =
        events.iter().enumerate().map(|(i, m)| frame(&format!("SYM{}", m.hd.instrument_id), i as u64 + 1, m)).collect();
    let clears: Vec<Vec<u8>> =
        (1..=8u32).map(|id| frame(&format!("SYM{id}"), 1, &mbo(id, 0, b'R', b'N', 0, 0))).collect();
    let mut h = BookHandler::default();
    let run = |h: &mut BookHandler| {
        for f in &frames {
            h.on_message(&wire::decode(f).expect("frame"));
        }
    };
    let start = ALLOCS.load(Relaxed);
    run(&mut h);
    assert!(ALLOCS.load(Relaxed) > start, "the first pass grows the books (the counter counts)");
    let levels_first = h.levels(1, 3);
    for f in &clears {
        h.on_message(&wire::decode(f).expect("frame"));
    }
    let before = ALLOCS.load(Relaxed);
    run(&mut h);
    let allocs = ALLOCS.load(Relaxed) - before;
    assert_eq!(h.levels(1, 3), levels_first, "the second pass rebuilds the same book");
    assert!(levels_first.is_some_and(|(b, a)| b >= 10 && a >= 10), "real books: {levels_first:?}");
    assert_eq!(h.anomalies().unknown_order + h.anomalies().crossed, 0);
    assert_eq!(allocs, 0, "allocations in the steady state over {} events", frames.len());
}
