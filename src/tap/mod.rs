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

/// What `mdsub tap` runs: the proxy's endpoints, the capture side and thread settings.
#[derive(Debug, Clone)]
pub struct TapRunConfig {
    /// Publisher side (XSUB).
    pub frontend: Vec<Attach>,
    /// Subscriber side (XPUB, verbose).
    pub backend: Vec<Attach>,
    /// Show/record only messages whose first frame starts with one of these
    /// (escapes \0, \xNN, \\); does not change what the proxy forwards.
    pub filter: Vec<String>,
    /// What to print per message.
    pub show: Show,
    /// Record the (filtered) messages to this capture file.
    pub record: Option<PathBuf>,
    /// Subscribe upstream to everything, so the tap sees traffic nobody asked for.
    pub subscribe_all: bool,
    /// Capacity of the proxy → sink queue, messages; when full, copies are dropped (counted).
    pub queue_msgs: usize,
    /// SNDHWM and RCVHWM of both proxy sockets, messages (0 = unlimited).
    pub hwm_msgs: i32,
    /// Largest message accepted from the publishers, bytes (ZMQ_MAXMSGSIZE).
    pub max_msg_bytes: i64,
    /// Idle strategy of both threads.
    pub idle: IdleStrategy,
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
pub fn run(args: TapRunConfig, stop: &StopFlag) -> Result<TapReport, TapError> {
    let idle = args.idle;
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
    let show = args.show;
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
