//! `mdsub tap`: the Espresso tracing proxy's command line.

use std::path::PathBuf;

use clap::Args;

use super::args::parse_count_nonzero_usize;
use super::proxy::ProxyArgs;
use crate::agent::StopFlag;
use crate::diag::ExitCounters;
use crate::tap::sink::Show;
use crate::tap::{TapError, TapReport, TapRunConfig};

/// A `--filter` prefix: its escapes are checked as it is parsed, kept as written.
fn parse_filter(s: &str) -> Result<String, String> {
    crate::tap::proxy::parse_prefix(s).map(|_| s.to_string())
}

/// `mdsub tap`: a tracing proxy (Espresso) between publishers and subscribers.
///
/// Endpoints are written `bind:EP`, `connect:EP` or a bare `EP` (which binds),
/// repeatable; each endpoint in effect is printed on startup as
/// `tap: frontend bound tcp://127.0.0.1:PORT`. By default every message and
/// every (un)subscription is printed, one line each (with `--json`, one JSON
/// record each). SIGINT/SIGTERM stop it and print its counters (drops
/// included) on stderr (with `--json`, as the last record on stdout).
#[derive(Args, Debug, Clone)]
#[command(after_help = "Endpoints: write each side as bind:EP, connect:EP or EP (a bare EP binds), e.g.\n  \
    mdsub tap --frontend connect:tcp://10.0.0.5:5556 --backend tcp://*:5557 --filter 'ESH6\\0'\n\
    Every endpoint in effect is printed on startup, one line each: tap: frontend bound tcp://...\n\
    A side that connects to this proxy's own other side (--backend connect:EP at its bound\n\
    --frontend EP, or the reverse) is refused: it would loop. A loop through another proxy, or\n\
    through another of this host's addresses, cannot be seen.\n\
    Copies go to the printer/recorder through a bounded queue (--queue-msgs); when it is full they\n\
    are dropped and counted, the proxy keeps forwarding. SIGINT/SIGTERM stop it; counters (drops\n\
    included) go to stderr as tap: stopped: k=v ...\n\
    With --json stdout is JSON Lines, one object a line and nothing else: a record per message\n\
    ({...,\"seq\":1,...,\"topic\":\"ESH6\",\"type\":\"msg\"}) and per (un)subscription, or per --stats\n\
    refresh, then the counters as the last line ({\"stopped\":\"tap\",...}); the endpoint lines go to\n\
    stderr. See docs/LVC-TAP.md.")]
#[command(mut_arg("hwm_msgs", |a| a.help(
    "SNDHWM and RCVHWM of both proxy sockets, in messages (0 = unlimited). High by default so that a \
     burst waits in the proxy's queues before it pushes back on the publishers (--delivery lossless) \
     or is dropped (lossy)"
)))]
pub struct TapArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Show/record only messages whose first frame starts with PREFIX
    /// (repeatable; escapes \0, \xNN, \\ — `ESH6\0` is exactly topic ESH6).
    /// Does not change what the proxy forwards.
    #[arg(long, value_parser = parse_filter, value_name = "PREFIX")]
    pub filter: Vec<String>,
    /// Print only message counts per topic, refreshed once a second: the first
    /// 10000 distinct topics seen, each by name; later new ones count together
    /// under `(other)`, so a feed whose topics keep changing holds the tap's
    /// memory at that.
    #[arg(long, conflicts_with = "quiet")]
    pub stats: bool,
    /// Print nothing per message (useful with --record).
    #[arg(long, short)]
    pub quiet: bool,
    /// Record the (filtered) messages to this capture file, frames verbatim
    /// with the MORE flag; `mdsub replay --from FILE` replays it (byte for byte;
    /// with --filter the file says so, and the replay renumbers its messages, as
    /// --restamp: their sequences skip what the filter left out). Messages the
    /// tap drops while the recorder is behind (--queue-msgs) are marked in the
    /// file where they fell, with their count (record_missed= on exit); a
    /// replay says how many and renumbers likewise. The file ends with an end
    /// record at a clean exit: a killed tap's reads as not closed. The file is
    /// locked while recording: a second tap given it is refused. An earlier
    /// tap's capture in FILE is kept, not emptied: closed under FILE's name
    /// stamped with its start (day.20261206T170000.002Z.cap), and said; a FILE
    /// that is not a capture is refused and left as it was.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Subscribe upstream to everything, so the tap sees traffic even when no
    /// subscriber asked for it (subscribers still get only what they subscribe to).
    #[arg(long)]
    pub subscribe_all: bool,
    /// Capacity of the proxy → sink queue, messages (at least 1); when full, copies are dropped
    /// (counted).
    #[arg(long, value_parser = parse_count_nonzero_usize, default_value = "64k", value_name = "COUNT")]
    pub queue_msgs: usize,
    /// Make stdout JSON Lines: one JSON record per message and (un)subscription (per refresh
    /// with --stats, none with --quiet), then the exit counters as the last line (default:
    /// text lines, and the counters on stderr). Endpoint lines go to stderr.
    #[arg(long)]
    pub json: bool,
}

impl TapArgs {
    /// The library configuration these arguments describe.
    pub fn to_config(&self) -> TapRunConfig {
        TapRunConfig {
            proxy: self.proxy.to_config(),
            filter: self.filter.clone(),
            show: if self.stats {
                Show::Stats
            } else if self.quiet {
                Show::Nothing
            } else {
                Show::Lines
            },
            record: self.record.clone(),
            subscribe_all: self.subscribe_all,
            queue_msgs: self.queue_msgs,
        }
    }
}

/// Run `mdsub tap` until SIGINT/SIGTERM. Its run is under way once `--record` is claimed and
/// its sockets are bound and connected ([`super::run_under_way`]), not before.
pub fn run(args: &TapArgs, stop: &StopFlag) -> Result<TapReport, TapError> {
    crate::tap::run(args.to_config(), stop, ExitCounters::json(args.json), super::run_under_way)
}

/// A `--record` file that stopped being written is not a successful run: the recording is
/// incomplete (the cause was said when it stopped; the counters say `record_errors`).
pub fn recorded_whole(args: &TapArgs, report: &TapReport) -> anyhow::Result<()> {
    match &args.record {
        Some(path) if report.sink.record_errors > 0 => {
            anyhow::bail!("tap: the recording {} is incomplete: writing it failed (said above)", path.display())
        }
        _ => Ok(()),
    }
}
