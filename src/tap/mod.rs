//! `mdsub tap`: the guide's Espresso pattern (chapter 5, pub-sub tracing) as an operator's tool.
//!
//! An XSUB ⇄ XPUB proxy whose capture side prints, filters, counts or records
//! the traffic without ever stalling the flow.
//!
//! - [`proxy`]: the tap's hooks on the shared proxy shell ([`crate::proxy`]);
//!   copies go to the sink through a bounded crossbeam channel with
//!   `try_send`: when it is full the copy is dropped and counted, the proxy
//!   keeps forwarding.
//! - [`sink`]: the printer / stats / recorder agent.
//!
//! Exact commands and the drop policy are in `docs/LVC-TAP.md`.

pub mod proxy;
pub mod sink;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::agent::{AgentError, RunSpec, Runner, StopFlag};
use crate::diag::ExitCounters;
use crate::proxy::{ProxyConfig, ProxyShell};
use crate::tap::proxy::{parse_prefix, Filter, TapHooks, TapProxyReport};
use crate::tap::sink::{Recording, Show, TapSink, TapSinkReport};
use crate::wire::capture::CaptureError;

/// Errors of the tap subsystem.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("bad --filter: {0}")]
    BadFilter(String),
    #[error("--queue-msgs must be at least 1")]
    BadQueue,
    /// The cause is said in the message and not returned as `source()` (said once).
    #[error("--record {path}: {error}")]
    Record { path: PathBuf, error: CaptureError },
    /// The `--record` file is another process's (it holds the file's lock).
    #[error(transparent)]
    Claim(crate::outfile::OutFileError),
    /// The `--record` file holds something other than a capture, or an earlier capture could
    /// not be kept under its closed name: refused, left as it was.
    #[error(transparent)]
    Keep(crate::outfile::KeepError),
}

/// What `mdsub tap` runs: the proxy shell's settings and the capture side.
#[derive(Debug, Clone)]
pub struct TapRunConfig {
    pub proxy: ProxyConfig,
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
}

/// Counters of one tap run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapReport {
    pub proxy: TapProxyReport,
    pub sink: TapSinkReport,
}

impl std::fmt::Display for TapReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p, sh, s) = (&self.proxy, &self.proxy.shell, &self.sink);
        write!(
            f,
            "forwarded_down={} forwarded_up={} too_long_up={} captured={} dropped={} dropped_messages={} {} \
             matched_messages={} subscriptions={} unsubscriptions={} \
             recorded_frames={} record_errors={} record_skipped_too_large={} unprinted={} printed={} \
             recorded_messages={} record_lost={} record_missed={} bad_frames={}",
            sh.forwarded_down,
            sh.forwarded_up,
            sh.too_long_up,
            p.captured,
            p.dropped,
            p.dropped_messages,
            sh.delivery_fields(),
            s.messages,
            s.subscriptions,
            s.unsubscriptions,
            s.recorded_frames,
            s.record_errors,
            s.record_skipped_too_large,
            s.unprinted,
            s.printed,
            s.recorded_messages,
            s.record_lost,
            s.record_missed,
            s.bad_frames
        )
    }
}

/// Run the tap until SIGINT/SIGTERM; prints its counters on exit (the way `exit`
/// says) and returns them. `under_way` is called once the recording is claimed and the sockets
/// are made and attached, before the endpoints are printed: from there `stop` ends the run with
/// its counters (the command line marks its run under way there).
pub fn run(
    args: TapRunConfig,
    stop: &StopFlag,
    exit: ExitCounters,
    under_way: impl FnOnce(),
) -> Result<TapReport, TapError> {
    if args.queue_msgs == 0 {
        return Err(TapError::BadQueue);
    }
    let prefixes = args
        .filter
        .iter()
        .map(|f| parse_prefix(f).map_err(|e| TapError::BadFilter(format!("`{f}`: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    // A filter with an empty prefix passes everything: no message is left out of the recording.
    let filtered = !prefixes.is_empty() && prefixes.iter().all(|p| !p.is_empty());
    let recorder = match &args.record {
        Some(path) => {
            let (recording, kept) = Recording::create(path, filtered)?;
            if let Some(line) = kept {
                crate::diag!("tap: --record: {line}");
            }
            Some(recording)
        }
        None => None,
    };
    let ctx = zmq::Context::new();
    let (tx, rx) = crossbeam::channel::bounded(args.queue_msgs);
    let hooks = TapHooks::new(Filter::new(prefixes), tx);
    let dropped_messages = hooks.dropped_messages();
    let proxy = ProxyShell::new(&ctx, &args.proxy, args.subscribe_all, hooks)?;
    under_way();
    proxy.print_endpoints("tap", exit);
    let sink_report = Arc::new(Mutex::new(TapSinkReport::default()));
    let sink = TapSink::new(rx, args.show, exit == ExitCounters::Json, recorder, sink_report.clone())
        .missing_after(dropped_messages);

    // The sink stops by itself once the proxy is gone and the queue is drained.
    let sink_handle = Runner::start(RunSpec { core: None, idle: args.proxy.idle }, StopFlag::new(), sink)?;
    // `stop` is set by the binary's SIGINT/SIGTERM handler. If the proxy
    // fails to start, it (and the queue's sender) is gone all the same: the
    // sink drains, flushes the recording and ends.
    let links = proxy.links();
    let (proxy_report, proxy_result) = proxy.run(args.proxy.idle, stop.clone());
    let sink_result = sink_handle.join();
    let report = TapReport { proxy: proxy_report, sink: *sink_report.lock().unwrap_or_else(|p| p.into_inner()) };
    exit.print("tap", &report);
    if let Some(path) = args.record.as_ref().filter(|_| report.sink.record_missed + report.sink.record_lost > 0) {
        crate::diag!("tap: {}", missing_line(&path.display().to_string(), &report));
    }
    if let Some(l) = links.summary() {
        crate::diag!("tap: links: {l}");
    }
    proxy_result?;
    sink_result?;
    Ok(report)
}

/// What a recording misses, said once at the end: the messages its hole marks count (copies the
/// tap dropped because the recorder was behind, frames too large to record) and those lost when
/// writing it failed, which no mark counts (the file then has no end record: it reads as not
/// closed).
pub fn missing_line(path: &str, report: &TapReport) -> String {
    let (p, s) = (&report.proxy, &report.sink);
    let mut line = format!(
        "the capture {path} misses {} message(s) that passed the tap: {} marked where each hole is \
         (record_missed=: copies dropped before the recorder took them, dropped_messages={} in all, --queue-msgs \
         is the queue's room; and messages too large to record, record_skipped_too_large={})",
        s.record_missed + s.record_lost,
        s.record_missed,
        p.dropped_messages,
        s.record_skipped_too_large
    );
    if s.record_lost > 0 {
        line.push_str(&format!(
            ", and {} lost after its writing failed (record_lost=, with the copies dropped since): it has no end \
             record, so it reads as not closed",
            s.record_lost
        ));
    }
    line.push_str("; `mdsub replay --from` renumbers what it holds so a subscriber counts no false loss");
    line
}
