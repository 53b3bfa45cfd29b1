//! End-to-end benchmarks: every measured comparison `mdsub` runs, each beside a baseline from the same run.
//!
//! | module | role |
//! |---|---|
//! | [`run`] | one measured run: in-process publisher → engine or baseline |
//! | [`baseline`] | the plain single-thread SUB reader the engine is compared against |
//! | [`engine`] | `mdsub bench`: the engine's variants vs the baseline on one feed, medians and ratios |
//! | [`lvc`] | `mdsub lvc-bench`: throughput through the LVC vs a plain proxy and direct PUB→SUB |
//! | [`stamp`] | the machine/commit/date stamp on every result |
//! | [`result`] | the one result shape (`--json`, `--save`) every benchmark above prints |
//! | [`clone`](mod@clone) | `mdsub clone-bench`: update throughput, snapshot and failover times |
//! | [`capacity`] | `mdsub capacity`: the highest rate inside a latency budget, per configuration |
//!
//! Criterion micro-benchmarks stay in `benches/`.

pub mod baseline;
pub mod capacity;
pub mod clone;
pub mod engine;
pub mod lvc;
pub mod result;
pub mod run;
pub mod stamp;

/// The median of `v`: the middle value of the sorted values, or for an even count the mean of
/// the two middle ones (`T::default()` when empty). The one median every benchmark reports; a
/// table of medians takes each column's own (a row is not one run's).
pub fn median<T: Middle>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    match (v.get(n.wrapping_sub(1) / 2), v.get(n / 2)) {
        (Some(&lo), Some(&hi)) => lo.mean_with(hi),
        _ => T::default(),
    }
}

/// What [`median`] takes: ordered values with a mean of two (no overflow).
pub trait Middle: Copy + PartialOrd + Default {
    /// The mean of `self` and `other`.
    fn mean_with(self, other: Self) -> Self;
}

impl Middle for f64 {
    fn mean_with(self, other: f64) -> f64 {
        self.midpoint(other)
    }
}

impl Middle for u64 {
    /// Rounded down (nanoseconds, message rates: half of one is below what is measured).
    fn mean_with(self, other: u64) -> u64 {
        self.midpoint(other)
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_takes_the_middle_of_the_sorted_runs() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5u64, 1, 3]), 3);
        assert_eq!(median(vec![7.5]), 7.5);
        assert_eq!(median(Vec::<f64>::new()), 0.0);
        assert_eq!(median(Vec::<u64>::new()), 0);
    }

    /// An even count's median is the mean of the two middle values. Before, it was the upper
    /// one, so `bench --runs 2` showed run 2's throughput beside run 1's CPU and p50 as if they
    /// were one run's, and neither was a median.
    #[test]
    fn an_even_counts_median_is_the_mean_of_the_two_middle_values() {
        assert_eq!(median(vec![1.0, 2.0]), 1.5);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![4u64, 1, 3, 2]), 2); // 2.5 rounded down
        assert_eq!(median(vec![100u64, 300]), 200);
        // No overflow at the top of the range.
        assert_eq!(median(vec![u64::MAX, u64::MAX - 2]), u64::MAX - 1);
        assert_eq!(median(vec![f64::MAX, f64::MAX]), f64::MAX);
    }
}
