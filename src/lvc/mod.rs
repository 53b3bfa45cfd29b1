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
    #[error("unknown idle strategy `{0}` (expected spin, yield, backoff or block)")]
    BadIdle(String),
    #[error("could not start the {role} thread: {source}")]
    Thread {
        role: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the {role} thread panicked")]
    Panicked { role: &'static str },
}

/// `mdsub lvc`: a last-value-caching proxy between publishers and subscribers.
///
/// Each endpoint is written `bind:ENDPOINT` or `connect:ENDPOINT`, for
/// example `--frontend connect:tcp://10.0.0.5:5556 --backend bind:tcp://*:5557`;
/// repeat an option to attach a side to several endpoints. With
/// `bind:tcp://127.0.0.1:*` the port is chosen by the OS; each endpoint in
/// effect is printed on startup as `lvc: frontend bound tcp://127.0.0.1:PORT`.
/// SIGINT/SIGTERM stop it cleanly and print its counters.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Endpoints: write each side as bind:ENDPOINT or connect:ENDPOINT, e.g.\n  \
    mdsub lvc --frontend connect:tcp://10.0.0.5:5556 --backend bind:tcp://*:5557\n\
    Repeat an option to attach a side to several endpoints. With bind:tcp://127.0.0.1:* the OS picks\n\
    the port; every endpoint in effect is printed on startup, one line each:\n  \
    lvc: frontend bound tcp://127.0.0.1:PORT\n\
    A subscription is a prefix: it is answered at once with the cached last value of every topic\n\
    that starts with it, in topic order (mdsub frames re-sent from the cache carry FROM_CACHE).\n\
    SIGINT/SIGTERM stop it cleanly; the counters are printed on exit. See docs/LVC-TAP.md.")]
pub struct LvcArgs {
    /// Publisher side (XSUB): bind:ENDPOINT or connect:ENDPOINT (repeatable).
    #[arg(long, required = true, value_name = "bind|connect:ENDPOINT")]
    pub frontend: Vec<Attach>,
    /// Subscriber side (XPUB, verbose): bind:ENDPOINT or connect:ENDPOINT (repeatable).
    #[arg(long, required = true, value_name = "bind|connect:ENDPOINT")]
    pub backend: Vec<Attach>,
    /// Most topics cached; further new topics pass through uncached (counted, logged).
    #[arg(long, default_value_t = 100_000)]
    pub max_topics: usize,
    /// Most bytes cached (keys plus message buffers).
    #[arg(long, default_value_t = 256 << 20)]
    pub max_bytes: usize,
    /// SNDHWM and RCVHWM of both sockets, in messages (0 = unlimited). High by
    /// default so that answering a wide prefix does not drop at the HWM.
    #[arg(long, default_value_t = 100_000)]
    pub hwm_msgs: i32,
    /// Largest message accepted from the publishers, bytes (ZMQ_MAXMSGSIZE:
    /// a larger one drops that publisher's connection, as libzmq does).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_msg_bytes: i64,
    /// Idle strategy of the proxy thread: spin, yield, backoff or block.
    #[arg(long, default_value = "backoff")]
    pub idle: String,
}

/// Run the LVC until SIGINT/SIGTERM; prints the endpoints on startup and the
/// counters on exit, and returns them.
pub fn run(args: LvcArgs, stop: &StopFlag) -> Result<LvcReport, LvcError> {
    let idle = IdleStrategy::from_name(&args.idle).ok_or_else(|| LvcError::BadIdle(args.idle.clone()))?;
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
