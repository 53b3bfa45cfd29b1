//! A worker's wire and total latencies counted per message into plain arrays laid out as the
//! histograms' buckets, added into its [`StageHistograms`] when it hands them over (perf37).
//!
//! Recording into a `Histogram` (`record_n_inner`, not inlined) computes the bucket from the
//! histogram's fields and keeps its minimum, maximum and total on every value: ~60
//! instructions a value, two values a message. A [`StageTally`] computes the same index from
//! constants (our histograms' bounds are fixed: 1 ns to [`MAX_TRACKABLE_NS`], 3 significant
//! digits) and adds 1 there; [`StageTally::fold_into`] adds the counts to the histograms
//! through their public `record_n` once a report period, one call per entry holding a count
//! (the minimum, maximum and mean then come out as recording each value would have made them:
//! a histogram's `min`/`max` are its entry's bounds, its mean is of its counts).
//!
//! The layout mirrors hdrhistogram 7's (`index_for`): with 2048 sub-buckets (3 digits), value
//! `v` is in bucket `b = 53 - lzcnt(v | 2047)` at index `(b << 10) + (v >> b)`. Tests hold it
//! to the crate's own indexing at every index and to direct recording on random values.

use hdrhistogram::Histogram;

use super::{OutOfBounds, StageHistograms, MAX_TRACKABLE_NS};

/// Log2 of the sub-buckets per bucket past the first (1024, for 3 significant digits).
const HALF_COUNT_MAGNITUDE: u32 = 10;

/// The sub-bucket mask of 3 significant digits from 1 ns: values up to it are bucket 0.
const SUB_BUCKET_MASK: u64 = (1 << (HALF_COUNT_MAGNITUDE + 1)) - 1;

/// Leading zeros of the largest value of bucket 0 (64 − 11).
const LEADING_ZERO_BASE: u32 = SUB_BUCKET_MASK.leading_zeros();

/// Entries of a histogram from 1 ns to [`MAX_TRACKABLE_NS`] at 3 digits: 26 buckets of 1024
/// and the lower half of the first (`Histogram::distinct_values`; a test holds them equal).
pub const ENTRIES: usize = (buckets_to_cover(MAX_TRACKABLE_NS) + 1) << HALF_COUNT_MAGNITUDE;

/// Entries per block of [`StageTally`]'s touched mask (one bucket's worth).
const BLOCK: usize = 1 << HALF_COUNT_MAGNITUDE;

/// How many buckets hold values up to `high` (hdrhistogram's `buckets_to_cover`).
const fn buckets_to_cover(high: u64) -> usize {
    let (mut untrackable, mut n) = (SUB_BUCKET_MASK + 1, 1);
    while untrackable <= high {
        untrackable <<= 1;
        n += 1;
    }
    n
}

/// The histogram's index of `ns` (at most [`MAX_TRACKABLE_NS`]).
#[inline(always)]
pub fn index_of(ns: u64) -> usize {
    let bucket = LEADING_ZERO_BASE - (ns | SUB_BUCKET_MASK).leading_zeros();
    ((bucket << HALF_COUNT_MAGNITUDE) as usize) + (ns >> bucket) as usize
}

/// The lowest value at index `i` (hdrhistogram's `value_for`).
pub fn value_of(i: usize) -> u64 {
    if i < 2 * BLOCK {
        i as u64
    } else {
        let bucket = (i >> HALF_COUNT_MAGNITUDE) - 1;
        (((i & (BLOCK - 1)) + BLOCK) as u64) << bucket
    }
}

/// One stage's counts since the last fold, by histogram index, and which blocks of
/// [`BLOCK`] entries hold any (so a fold reads those, not all [`ENTRIES`]).
#[derive(Debug)]
struct Counts {
    at: Box<[u64; ENTRIES]>,
    touched: u32,
}

impl Counts {
    fn new() -> Self {
        let at = vec![0u64; ENTRIES].into_boxed_slice().try_into().expect("ENTRIES long");
        Counts { at, touched: 0 }
    }

    /// Count `ns` (within the histograms' bounds).
    #[inline(always)]
    fn add(&mut self, ns: u64) {
        let i = index_of(ns);
        self.at[i] += 1;
        self.touched |= 1 << (i >> HALF_COUNT_MAGNITUDE);
    }

    /// Add the counts into `h` and clear them.
    fn fold_into(&mut self, h: &mut Histogram<u64>) {
        let mut blocks = std::mem::take(&mut self.touched);
        while blocks != 0 {
            let first = blocks.trailing_zeros() as usize * BLOCK;
            blocks &= blocks - 1;
            for (i, n) in self.at[first..first + BLOCK].iter_mut().enumerate() {
                if *n > 0 {
                    // The lowest value of the index: within the bounds, so never clamped.
                    h.saturating_record_n(value_of(first + i), std::mem::take(n));
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.touched == 0
    }
}

/// The wire and total latencies of one shard's messages on a worker since it last handed its
/// histograms over, counted as its [`StageHistograms`] would hold them. Its counts out of
/// bounds go into the histograms' set at once ([`StageTally::record_since_sent`]); the rest
/// with [`StageTally::fold_into`], which whoever hands the set over calls first. Allocated
/// once (2 × [`ENTRIES`] counts, 432 KiB); never allocates after.
#[derive(Debug)]
pub struct StageTally {
    wire: Counts,
    total: Counts,
}

impl Default for StageTally {
    fn default() -> Self {
        StageTally { wire: Counts::new(), total: Counts::new() }
    }
}

impl StageTally {
    /// [`StageHistograms::record_since_sent`] into these counts, the counts out of bounds
    /// into `out_of_bounds` (those of the set this is folded into).
    #[inline(always)]
    pub fn record_since_sent(
        &mut self,
        out_of_bounds: &mut [OutOfBounds; 3],
        sent_ns: u64,
        recv_ns: u64,
        done_ns: u64,
    ) {
        let [w, _, t] = out_of_bounds;
        self.wire.add(w.bound_between(sent_ns, recv_ns));
        self.total.add(t.bound_between(sent_ns, done_ns));
    }

    /// Add the counts into `into`'s wire and total histograms and clear them. Reads the blocks
    /// of 1024 entries that hold a count (at most 27 a stage), records one `record_n` per
    /// entry that holds one.
    pub fn fold_into(&mut self, into: &mut StageHistograms) {
        self.wire.fold_into(&mut into.wire);
        self.total.fold_into(&mut into.total);
    }

    /// Nothing counted since the last fold.
    pub fn is_empty(&self) -> bool {
        self.wire.is_empty() && self.total.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::latency_ns;
    use proptest::prelude::*;

    /// Every index of our histograms holds the value `value_of` says, in the crate's own
    /// iteration (one item per index), and `index_of` of it is the index; the layout's size is
    /// the histograms'.
    #[test]
    fn the_layout_is_the_histograms_at_every_index() {
        let mut h = super::super::new_histogram();
        assert_eq!(h.distinct_values(), ENTRIES);
        assert_eq!(ENTRIES, 27_648);
        for i in 1..ENTRIES {
            assert_eq!(index_of(value_of(i)), i, "index {i}");
            assert_eq!(h.lowest_equivalent(value_of(i)), value_of(i), "index {i}");
            h.record_n(value_of(i), i as u64).expect("in bounds");
        }
        for (i, v) in h.iter_all().enumerate() {
            assert_eq!(v.count_at_value(), i as u64, "index {i}");
            assert_eq!(h.lowest_equivalent(v.value_iterated_to()), value_of(i), "index {i}");
        }
        assert_eq!(index_of(MAX_TRACKABLE_NS), 27_388);
        assert_eq!(index_of(0), 0);
    }

    /// A latency from `sent`: one of the edges, or any value.
    fn latency() -> impl Strategy<Value = i64> {
        let m = MAX_TRACKABLE_NS as i64;
        let edge = prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(m),
            Just(m + 1),
            Just(m - 1),
            Just(i64::MIN),
            Just(i64::MAX),
            // Either side of every bucket's edge (2048 · 2^k).
            (0u32..26, -2i64..=1).prop_map(|(k, d)| (2048i64 << k) + d),
        ];
        prop_oneof![edge, 0..=m, -1_000_000i64..=1_000_000, any::<i64>()]
    }

    /// Send, receive and done times with the latencies `wire` and `total` from a send time
    /// in the middle of `u64` (so both signs fit).
    fn times(wire: i64, total: i64) -> (u64, u64, u64) {
        let sent = 1u64 << 63;
        (sent, sent.wrapping_add_signed(wire), sent.wrapping_add_signed(total))
    }

    proptest! {
        /// Counting through a tally and folding (once or several times, into a set already
        /// holding counts) gives the histograms and out-of-bounds counts that recording each
        /// message directly does: the same count at every index, min, max, len, mean to the bit.
        #[test]
        fn a_folded_tally_is_recording_each_value(
            lats in proptest::collection::vec((latency(), latency()), 0..200),
            folds in proptest::collection::vec(0usize..200, 0..4),
            before in proptest::collection::vec(1u64..=MAX_TRACKABLE_NS, 0..3),
        ) {
            let (mut direct, mut folded, mut tally) =
                (StageHistograms::default(), StageHistograms::default(), StageTally::default());
            for &v in &before {
                direct.record_wire_total(v as i64, v as i64);
                folded.record_wire_total(v as i64, v as i64);
            }
            for (k, &(w, t)) in lats.iter().enumerate() {
                let (sent, recv, done) = times(w, t);
                prop_assert_eq!((latency_ns(sent, recv), latency_ns(sent, done)), (w, t));
                direct.record_wire_total(w, t);
                tally.record_since_sent(&mut folded.out_of_bounds, sent, recv, done);
                if folds.contains(&k) {
                    tally.fold_into(&mut folded);
                    prop_assert!(tally.is_empty());
                }
            }
            tally.fold_into(&mut folded);
            prop_assert!(tally.is_empty());
            prop_assert_eq!(folded.out_of_bounds, direct.out_of_bounds);
            for (a, b) in [(&folded.wire, &direct.wire), (&folded.total, &direct.total)] {
                prop_assert_eq!(a, b);
                prop_assert_eq!(a.iter_all().map(|v| v.count_at_value()).collect::<Vec<_>>(),
                    b.iter_all().map(|v| v.count_at_value()).collect::<Vec<_>>());
                prop_assert_eq!((a.min(), a.max(), a.min_nz(), a.len()), (b.min(), b.max(), b.min_nz(), b.len()));
                prop_assert_eq!(a.mean().to_bits(), b.mean().to_bits());
                prop_assert_eq!(a.value_at_quantile(0.99), b.value_at_quantile(0.99));
            }
            // A tally folded again adds nothing.
            let again = folded.clone();
            tally.fold_into(&mut folded);
            prop_assert_eq!(&folded.wire, &again.wire);
        }

        /// `index_of` is the crate's index: the lowest value of its index is the histogram's
        /// lowest equivalent of the value, for any value within the bounds.
        #[test]
        fn index_of_any_value_is_the_histograms(ns in prop_oneof![0..=MAX_TRACKABLE_NS, 0u64..100_000]) {
            let h = super::super::new_histogram();
            prop_assert_eq!(value_of(index_of(ns)), h.lowest_equivalent(ns));
        }
    }
}
