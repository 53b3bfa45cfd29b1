//! # mdsub — a high-throughput market-data subscriber engine on ZeroMQ
//!
//! mdsub turns the advanced publish/subscribe patterns of the ZeroMQ guide
//! (chapter 5) into one measured product. This page is the map.
//!
//! | module | role | guide pattern |
//! |---|---|---|
//! | [`agent`] | every long-running thread is an agent; one runner names, pins and idles them | (Aeron's agent model) |
//! | [`lvc`] | `mdsub lvc`: XSUB ⇄ XPUB (verbose) proxy answering each new subscription with the cached last value of every matching topic | Last Value Cache |
//! | [`tap`] | `mdsub tap`: XSUB ⇄ XPUB proxy with a capture side that prints, filters, counts or records the traffic (never stalling the flow) | Espresso (pub-sub tracing) |
//! | [`zmqx`] | the few libzmq options the `zmq` crate does not expose, behind a safe face | |
//!
//! ## Quick start
//!
//! ```text
//! cargo run --release -- demo     # generated feed → replay → engine → report
//! cargo test --release            # the test suite
//! mdsub lvc --frontend bind:tcp://*:5556 --backend bind:tcp://*:5557   # last value cache
//! mdsub tap --frontend bind:tcp://*:5556 --backend bind:tcp://*:5557   # print what passes
//! ```

pub mod agent;
pub mod lvc;
pub mod tap;
pub mod wire;
pub mod zmqx;
