//! # mdsub — a high-throughput market-data subscriber engine on ZeroMQ
//!
//! mdsub turns the advanced publish/subscribe patterns of the ZeroMQ guide
//! (chapter 5) into one measured product. This page is the map.
//!
//! | module | role | guide pattern |
//! |---|---|---|
//! | [`agent`] | every long-running thread is an agent; one runner names, pins and idles them | (Aeron's agent model) |
//! | [`zmqx`] | the few libzmq options the `zmq` crate does not expose, behind a safe face | |
//! | [`clone`] | shared key-value store: `mdsub clone-server`, `clone::Client`, `mdsub clone-client` | Clone (model 6, CHP) + Binary Star |
//! | [`clone::kvmsg`] | CHP wire codec: five-frame kvmsg and snapshot requests | Clone (kvmsg) |
//! | [`clone::map`] | socket-free map with TTLs and subtrees, driven by `now_ns` | Clone |
//! | [`clone::bstar`] | socket-free Binary Star state machine | Binary Star |
//! | [`clone::persist`] | `--data-dir`: update log + snapshots, corrupt-tail reporting | (beyond the guide) |
//! | [`clone::server`] | the clone server agent (ROUTER/PUB/SUB, pending list, takeover) | Clone + Binary Star |
//! | [`clone::client`] | the client agent ("clone class") and its application API | Clone |
//! | [`clone::cli`] | `clone-server` / `clone-client` arguments and drivers | |
//! | [`clone::bench`] | `mdsub clone-bench`: throughput, snapshot and failover times | |
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
