//! `mdsub tap`: the guide's Espresso pattern (chapter 5, pub-sub tracing) as an operator's tool.
//!
//! An XSUB ⇄ XPUB proxy whose capture side prints, filters, counts or records
//! the traffic without ever stalling the flow.
//!
//! - [`proxy`]: the proxy agent; copies go to the sink through a bounded
//!   crossbeam channel with `try_send`: when it is full the copy is dropped and
//!   counted, the proxy keeps forwarding.
//! - [`sink`]: the printer / stats / recorder agent.
//!
//! Exact commands and the drop policy are in `docs/LVC-TAP.md`.

pub mod proxy;
pub mod sink;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::agent::{AgentError, IdleStrategy, RunSpec, Runner, StopFlag};
use crate::tap::proxy::{parse_prefix, Filter, TapConfig, TapProxy, TapProxyReport};
use crate::tap::sink::{Show, TapSink, TapSinkReport};
use crate::wire::capture::{CaptureError, CaptureWriter};
use crate::zmqx::Attach;

/// Errors of the tap subsystem.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("bad --filter: {0}")]
    BadFilter(String),
    #[error("unknown idle strategy `{0}` (expected spin, yield, backoff or block)")]
    BadIdle(String),
    #[error("--queue-msgs must be at least 1")]
    BadQueue,
    #[error("could not create the capture file {path}: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: CaptureError,
    },
    #[error("could not start the {role} thread: {source}")]
    Thread {
        role: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the {role} thread panicked")]
    Panicked { role: &'static str },
}

/// `mdsub tap`: a tracing proxy (Espresso) between publishers and subscribers.
///
/// Endpoints are written `bind:ENDPOINT` or `connect:ENDPOINT` (repeatable);
/// each endpoint in effect is printed on startup as
/// `tap: frontend bound tcp://127.0.0.1:PORT`. By default every message and
/// every (un)subscription is printed, one line each. SIGINT/SIGTERM stop it
/// and print its counters (drops included) on stderr.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Endpoints: write each side as bind:ENDPOINT or connect:ENDPOINT, e.g.\n  \
    mdsub tap --frontend connect:tcp://10.0.0.5:5556 --backend bind:tcp://*:5557 --filter 'ESH6\\0'\n\
    Every endpoint in effect is printed on startup, one line each: tap: frontend bound tcp://...\n\
    Copies go to the printer/recorder through a bounded queue (--queue-msgs); when it is full they\n\
    are dropped and counted, the proxy keeps forwarding. SIGINT/SIGTERM stop it; counters (drops\n\
    included) go to stderr. See docs/LVC-TAP.md.")]
pub struct TapArgs {
    /// Publisher side (XSUB): bind:ENDPOINT or connect:ENDPOINT (repeatable).
    #[arg(long, required = true, value_name = "bind|connect:ENDPOINT")]
    pub frontend: Vec<Attach>,
    /// Subscriber side (XPUB, verbose): bind:ENDPOINT or connect:ENDPOINT (repeatable).
    #[arg(long, required = true, value_name = "bind|connect:ENDPOINT")]
    pub backend: Vec<Attach>,
    /// Show/record only messages whose first frame starts with PREFIX
    /// (repeatable; escapes \0, \xNN, \\ — `ESH6\0` is exactly topic ESH6).
    /// Does not change what the proxy forwards.
    #[arg(long, value_name = "PREFIX")]
    pub filter: Vec<String>,
    /// Print only message counts per topic, refreshed once a second.
    #[arg(long, conflicts_with = "quiet")]
    pub stats: bool,
    /// Print nothing per message (useful with --record).
    #[arg(long)]
    pub quiet: bool,
    /// Record the (filtered) messages to this capture file, frames verbatim
    /// with the MORE flag; `mdsub replay --from FILE` replays it.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Subscribe upstream to everything, so the tap sees traffic even when no
    /// subscriber asked for it (subscribers still get only what they subscribe to).
    #[arg(long)]
    pub subscribe_all: bool,
    /// Capacity of the proxy → sink queue, messages; when full, copies are dropped (counted).
    #[arg(long, default_value_t = 65_536)]
    pub queue_msgs: usize,
    /// SNDHWM and RCVHWM of both proxy sockets, messages (0 = unlimited).
    #[arg(long, default_value_t = 100_000)]
    pub hwm_msgs: i32,
    /// Largest message accepted from the publishers, bytes (ZMQ_MAXMSGSIZE:
    /// a larger one drops that publisher's connection, as libzmq does).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_msg_bytes: i64,
    /// Idle strategy of both threads: spin, yield, backoff or block.
    #[arg(long, default_value = "backoff")]
    pub idle: String,
}

/// Counters of one tap run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapReport {
    pub proxy: TapProxyReport,
    pub sink: TapSinkReport,
}

impl std::fmt::Display for TapReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p, s) = (&self.proxy, &self.sink);
        write!(
            f,
            "forwarded_down={} forwarded_up={} captured={} dropped={} send_failures={} \
             shown_messages={} subscriptions={} unsubscriptions={} recorded_frames={} record_errors={} \
             record_skipped_too_large={}",
            p.forwarded_down,
            p.forwarded_up,
            p.captured,
            p.dropped,
            p.send_failures,
            s.messages,
            s.subscriptions,
            s.unsubscriptions,
            s.recorded_frames,
            s.record_errors,
            s.record_skipped_too_large
        )
    }
}

/// Run the tap until SIGINT/SIGTERM; returns its counters.
pub fn run(args: TapArgs, stop: &StopFlag) -> Result<TapReport, TapError> {
    let idle = IdleStrategy::from_name(&args.idle).ok_or_else(|| TapError::BadIdle(args.idle.clone()))?;
    if args.queue_msgs == 0 {
        return Err(TapError::BadQueue);
    }
    let prefixes =
        args.filter.iter().map(|f| parse_prefix(f)).collect::<Result<Vec<_>, _>>().map_err(TapError::BadFilter)?;
    let recorder = match &args.record {
        Some(path) => {
            Some(CaptureWriter::create(path).map_err(|source| TapError::Record { path: path.clone(), source })?)
        }
        None => None,
    };
    let show = if args.stats {
        Show::Stats
    } else if args.quiet {
        Show::Nothing
    } else {
        Show::Lines
    };
    let config = TapConfig {
        frontend: args.frontend,
        backend: args.backend,
        filter: Filter::new(prefixes),
        subscribe_all: args.subscribe_all,
        hwm_msgs: args.hwm_msgs,
        max_msg_bytes: args.max_msg_bytes,
    };
    let ctx = zmq::Context::new();
    let (tx, rx) = crossbeam::channel::bounded(args.queue_msgs);
    let proxy_report = Arc::new(Mutex::new(TapProxyReport::default()));
    let sink_report = Arc::new(Mutex::new(TapSinkReport::default()));
    let proxy = TapProxy::new(&ctx, &config, tx, proxy_report.clone())?;
    for (side, verb, ep) in &proxy.endpoints {
        println!("tap: {side} {verb} {ep}");
    }
    let sink = TapSink::new(rx, show, recorder, sink_report.clone());

    // `stop` is set by the binary's SIGINT/SIGTERM handler.
    let stop = stop.clone();
    let spec = RunSpec { core: None, idle };
    // The sink stops by itself once the proxy is gone and the queue is drained.
    let sink_handle = Runner::spawn("tap-sink", spec.clone(), StopFlag::new(), move || Ok(sink))
        .map_err(|source| TapError::Thread { role: "tap-sink", source })?;
    let proxy_handle = match Runner::spawn("tap-proxy", spec, stop, move || Ok(proxy)) {
        Ok(h) => h,
        Err(source) => {
            // The proxy (and the queue's sender) is gone: the sink drains,
            // flushes the recording and ends; wait for it before reporting.
            let _ = sink_handle.join();
            return Err(TapError::Thread { role: "tap-proxy", source });
        }
    };
    let proxy_result = proxy_handle.join().map_err(|_| TapError::Panicked { role: "tap-proxy" })?;
    let sink_result = sink_handle.join().map_err(|_| TapError::Panicked { role: "tap-sink" })?;
    let report = TapReport {
        proxy: *proxy_report.lock().unwrap_or_else(|p| p.into_inner()),
        sink: *sink_report.lock().unwrap_or_else(|p| p.into_inner()),
    };
    eprintln!("tap: stopped: {report}");
    proxy_result?;
    sink_result?;
    Ok(report)
}
