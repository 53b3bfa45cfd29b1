//! # mdsub — a high-throughput market-data subscriber engine on ZeroMQ
//!
//! mdsub turns the advanced publish/subscribe patterns of the ZeroMQ guide
//! (chapter 5) into one measured product. This page is the map.
//!
//! | module | role | guide pattern |
//! |---|---|---|
//! | [`agent`] | every long-running thread is an agent; one runner names, pins and idles them | (Aeron's agent model) |
//! | [`zmqx`] | the few libzmq options the `zmq` crate does not expose, behind a safe face | |
//!
//! ## Quick start
//!
//! ```text
//! cargo run --release -- demo     # generated feed → replay → engine → report
//! cargo test --release            # the test suite
//! ```

pub mod agent;
pub mod baseline;
pub mod cli;
pub mod engine;
pub mod feed;
pub mod metrics;
pub mod profile;
pub mod replay;
pub mod run;
pub mod wire;
pub mod zmqx;
