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

/// The median of `v` (the upper one of an even count; `T::default()` when empty), the one
/// median every benchmark reports.
pub fn median<T: Copy + PartialOrd + Default>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_takes_the_middle_of_the_sorted_runs() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4u64, 1, 3, 2]), 3);
        assert_eq!(super::median(Vec::<f64>::new()), 0.0);
    }
}
