//! End-to-end benchmarks: every measured comparison `mdsub` runs, each beside a baseline from the same run.
//!
//! | module | role |
//! |---|---|
//! | [`run`] | one measured run: in-process publisher → engine or baseline |
//! | [`baseline`] | the plain single-thread SUB reader the engine is compared against |
//! | [`lvc`] | `mdsub lvc-bench`: throughput through the LVC vs direct PUB→SUB |
//! | [`clone`](mod@clone) | `mdsub clone-bench`: update throughput, snapshot and failover times |
//!
//! Criterion micro-benchmarks stay in `benches/`.

pub mod baseline;
pub mod clone;
pub mod lvc;
pub mod run;
