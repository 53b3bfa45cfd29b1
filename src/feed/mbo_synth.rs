//! Synthetic Databento MBO order-book streams: the one generator behind the
//! `gen_mbo` example (files for `mdsub bench --from`), the DBN replay tests
//! and the book handler's tests.
//!
//! Each instrument keeps a book of resting orders near its mid price; a step
//! adds an order (on either side) or acts on a resting one: a full or partial
//! cancel, a modify that moves the price and the size, a fill, or a trade.
//! Deterministic for a seed, so fixtures and files can be reproduced.

use dbn::{rtype, FlagSet, MboMsg, RecordHeader};

use super::SplitMix64;

/// One MBO record: instrument `instrument_id`, received at `ts_recv` (sent by
/// the venue 1 µs before), with DBN's last-record-of-event flag.
pub fn mbo(instrument_id: u32, ts_recv: u64, order_id: u64, action: u8, side: u8, price: i64, size: u32) -> MboMsg {
    MboMsg {
        hd: RecordHeader::new::<MboMsg>(rtype::MBO, 1, instrument_id, ts_recv.saturating_sub(1_000)),
        order_id,
        price,
        size,
        flags: FlagSet::new(0x80),
        channel_id: 0,
        action: action as std::ffi::c_char,
        side: side as std::ffi::c_char,
        ts_recv,
        ts_in_delta: 0,
        sequence: order_id as u32,
    }
}

/// The receive time of record `n` of `records` spread evenly over `span_ns` from `t0`: in
/// `[t0, t0 + span_ns)` whatever the count, as a Databento file's records are in the span its
/// metadata gives (a replay refuses a record outside it as damage). Non-decreasing in `n`.
pub fn spread_ts(t0: u64, span_ns: u64, records: u64, n: u64) -> u64 {
    t0 + (u128::from(n) * u128::from(span_ns) / u128::from(records.max(1))) as u64
}

/// Order-book activity over `instruments` instruments with ids
/// `first_id..first_id + instruments`.
#[derive(Debug, Clone)]
pub struct MboBooks {
    first_id: u32,
    /// Resting orders per instrument: (order id, side, price, size).
    live: Vec<Vec<(u64, u8, i64, u32)>>,
    next_order: u64,
    rng: SplitMix64,
}

impl MboBooks {
    pub fn new(instruments: usize, first_id: u32, seed: u64) -> Self {
        MboBooks { first_id, live: vec![Vec::new(); instruments.max(1)], next_order: 1, rng: SplitMix64::new(seed) }
    }

    pub fn instruments(&self) -> usize {
        self.live.len()
    }

    /// The next event of instrument `k` (`0..instruments`), received at `ts_recv`.
    pub fn next_for(&mut self, k: usize, ts_recv: u64) -> MboMsg {
        let x = self.rng.next_u64();
        let id = self.first_id + k as u32;
        let book = &mut self.live[k];
        let r = (x >> 8) % 10;
        if book.len() < 4 || r < 4 {
            let side = if (x >> 20) & 1 == 0 { b'B' } else { b'A' };
            let mid = 100_000_000_000i64 + k as i64 * 1_000_000_000;
            let tick = 10_000_000i64 * (1 + ((x >> 24) % 8) as i64);
            let price = if side == b'B' { mid - tick } else { mid + tick };
            let size = 1 + ((x >> 32) % 50) as u32;
            let oid = self.next_order;
            self.next_order += 1;
            book.push((oid, side, price, size));
            return mbo(id, ts_recv, oid, b'A', side, price, size);
        }
        let j = ((x >> 36) as usize) % book.len();
        let (oid, side, price, size) = book[j];
        match r {
            4..=5 => {
                book.swap_remove(j);
                mbo(id, ts_recv, oid, b'C', side, price, size)
            }
            6 if size > 1 => {
                book[j].3 = size - 1;
                mbo(id, ts_recv, oid, b'C', side, price, 1)
            }
            7 => {
                let np = if side == b'B' { price - 10_000_000 } else { price + 10_000_000 };
                book[j] = (oid, side, np, size + 1);
                mbo(id, ts_recv, oid, b'M', side, np, size + 1)
            }
            8 => mbo(id, ts_recv, oid, b'F', side, price, 1),
            _ => mbo(id, ts_recv, 0, b'T', b'N', price, 1),
        }
    }

    /// `n` events over the instruments chosen uniformly, received from `t0`
    /// every `step` ns.
    pub fn feed(&mut self, n: usize, t0: u64, step: u64) -> Vec<MboMsg> {
        (0..n)
            .map(|i| {
                let k = (self.rng.next_u64() % self.live.len() as u64) as usize;
                self.next_for(k, t0 + i as u64 * step)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_cancels_only_resting_orders() {
        let a = MboBooks::new(3, 101, 9).feed(5_000, 1_000_000, 10);
        let b = MboBooks::new(3, 101, 9).feed(5_000, 1_000_000, 10);
        assert_eq!(a, b);
        let mut resting = std::collections::HashSet::new();
        for m in &a {
            match m.action as u8 {
                b'A' => assert!(resting.insert(m.order_id)),
                b'C' | b'M' | b'F' => assert!(resting.contains(&m.order_id), "{m:?}"),
                b'T' => assert_eq!(m.order_id, 0),
                other => panic!("unexpected action {other}"),
            }
        }
        assert!(a.windows(2).all(|w| w[0].ts_recv < w[1].ts_recv));
        assert!(a.iter().all(|m| (101..104).contains(&m.hd.instrument_id)));
    }

    /// `gen_mbo` wrote record n at `t0 + n * (span / records) + 500`: with 2.5M records over 1 s
    /// the last was received 100 ns after the metadata's end, and the replay refused the file
    /// it wrote as damaged (`bad_record`, exit 1). Every record is inside the span now.
    #[test]
    fn spread_receive_times_stay_inside_the_span_whatever_the_count() {
        let t0 = 1_700_000_000_000_000_000;
        for (records, span_ns) in [(2_500_000, 1_000_000_000), (1_000_000, 10_000_000_000), (7, 3), (5_000, 1_000)] {
            let last = spread_ts(t0, span_ns, records, records - 1);
            assert!(last < t0 + span_ns, "{records} over {span_ns} ns: the last at {last}");
            assert_eq!(spread_ts(t0, span_ns, records, 0), t0);
            let mid = spread_ts(t0, span_ns, records, records / 2);
            assert!(t0 <= mid && mid <= last);
        }
        let ts: Vec<u64> = (0..1_000).map(|n| spread_ts(t0, 10_000, 1_000, n)).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "distinct when the span allows");
    }
}
