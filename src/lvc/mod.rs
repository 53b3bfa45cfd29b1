//! `mdsub lvc`: the guide's Last Value Cache proxy (chapter 5), XSUB ⇄ XPUB with a cache.
//!
//! XSUB toward the publishers, XPUB (verbose) toward the subscribers,
//! answering every new subscription with the cached last value of each
//! matching topic.
//!
//! - [`cache`]: the socket-free cache core (prefix lookups, limits).
//! - [`proxy`]: the agent that owns the sockets.
//!
//! Behaviour notes (duplicates, foreign traffic, limits) are in `docs/LVC-TAP.md`.

pub mod cache;
pub mod proxy;

use std::sync::{Arc, Mutex};

use crate::agent::{AgentError, IdleStrategy, RunSpec, Runner, StopFlag};
use crate::lvc::cache::CacheLimits;
use crate::lvc::proxy::{LvcConfig, LvcProxy, LvcReport};
use crate::zmqx::Attach;

/// Errors of the LVC subsystem.
#[derive(Debug, thiserror::Error)]
pub enum LvcError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("could not start the {role} thread: {source}")]
    Thread {
        role: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the {role} thread panicked")]
    Panicked { role: &'static str },
}

/// What `mdsub lvc` runs: the proxy's endpoints, cache limits and thread settings.
#[derive(Debug, Clone)]
pub struct LvcRunConfig {
    /// Publisher side (XSUB).
    pub frontend: Vec<Attach>,
    /// Subscriber side (XPUB, verbose).
    pub backend: Vec<Attach>,
    /// Most topics cached; further new topics pass through uncached (counted, logged).
    pub max_topics: usize,
    /// Most bytes cached (keys plus message buffers).
    pub max_bytes: usize,
    /// SNDHWM and RCVHWM of both sockets, in messages (0 = unlimited).
    pub hwm_msgs: i32,
    /// Largest message accepted from the publishers, bytes (ZMQ_MAXMSGSIZE).
    pub max_msg_bytes: i64,
    /// Idle strategy of the proxy thread.
    pub idle: IdleStrategy,
}

/// Run the LVC until SIGINT/SIGTERM; prints the endpoints on startup and the
/// counters on exit, and returns them.
pub fn run(args: LvcRunConfig, stop: &StopFlag) -> Result<LvcReport, LvcError> {
    let idle = args.idle;
    let config = LvcConfig {
        frontend: args.frontend,
        backend: args.backend,
        limits: CacheLimits { max_topics: args.max_topics, max_bytes: args.max_bytes },
        hwm_msgs: args.hwm_msgs,
        max_msg_bytes: args.max_msg_bytes,
    };
    let ctx = zmq::Context::new();
    let shared = Arc::new(Mutex::new(LvcReport::default()));
    let proxy = LvcProxy::new(&ctx, &config, shared.clone())?;
    for (side, verb, ep) in &proxy.endpoints {
        println!("lvc: {side} {verb} {ep}");
    }
    // `stop` is set by the binary's SIGINT/SIGTERM handler.
    let stop = stop.clone();
    let handle = Runner::spawn("lvc-proxy", RunSpec { core: None, idle }, stop, move || Ok(proxy))
        .map_err(|source| LvcError::Thread { role: "lvc-proxy", source })?;
    let result = handle.join().map_err(|_| LvcError::Panicked { role: "lvc-proxy" })?;
    let report = *shared.lock().unwrap_or_else(|p| p.into_inner());
    println!("lvc: stopped: {report}");
    result?;
    Ok(report)
}
