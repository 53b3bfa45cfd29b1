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
pub mod clone;
pub mod zmqx;
