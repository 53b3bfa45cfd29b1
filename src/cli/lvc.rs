//! `mdsub lvc`: the Last Value Cache proxy's command line.

use clap::Args;

use super::args::parse_count_usize;
use super::proxy::ProxyArgs;
use crate::agent::{AgentError, StopFlag};
use crate::diag::ExitCounters;
use crate::lvc::cache::CacheLimits;
use crate::lvc::proxy::LvcReport;
use crate::lvc::LvcConfig;

/// `mdsub lvc`: a last-value-caching proxy between publishers and subscribers.
///
/// Each endpoint is written `bind:EP`, `connect:EP` or a bare `EP` (which
/// binds), for example `--frontend connect:tcp://10.0.0.5:5556 --backend
/// tcp://*:5557`; repeat an option to attach a side to several endpoints.
/// With `tcp://127.0.0.1:*` the port is chosen by the OS; each endpoint in
/// effect is printed on startup as `lvc: frontend bound tcp://127.0.0.1:PORT`.
/// SIGINT/SIGTERM stop it cleanly and print its counters (stderr; `--json`: stdout).
#[derive(Args, Debug, Clone)]
#[command(after_help = "Endpoints: write each side as bind:EP, connect:EP or EP (a bare EP binds), e.g.\n  \
    mdsub lvc --frontend connect:tcp://10.0.0.5:5556 --backend tcp://*:5557\n\
    Repeat an option to attach a side to several endpoints. With tcp://127.0.0.1:* the OS picks\n\
    the port; every endpoint in effect is printed on startup, one line each:\n  \
    lvc: frontend bound tcp://127.0.0.1:PORT\n\
    A subscription is a prefix: it is answered at once with the cached last value of every topic\n\
    that starts with it, in topic order (mdsub frames re-sent from the cache carry FROM_CACHE).\n\
    SIGINT/SIGTERM stop it cleanly; the counters are printed on exit, on stderr as\n  \
    lvc: stopped: messages_in=N ...\n\
    like every diagnostic (refusals: the first of each reason at once, then a summary every 10 s),\n\
    or with --json as one JSON object on stdout. See docs/LVC-TAP.md.")]
pub struct LvcArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Most topics cached; further new topics pass through uncached (counted, logged).
    #[arg(long, value_parser = parse_count_usize, default_value = "100k", value_name = "COUNT")]
    pub max_topics: usize,
    /// Most bytes cached (keys plus message buffers).
    #[arg(long, value_parser = parse_count_usize, default_value = "268435456", value_name = "BYTES")]
    pub max_bytes: usize,
    /// Print the exit counters as one JSON object on stdout (default: a line on stderr).
    #[arg(long)]
    pub json: bool,
}

impl LvcArgs {
    /// The library configuration these arguments describe.
    pub fn to_config(&self) -> LvcConfig {
        LvcConfig {
            proxy: self.proxy.to_config(),
            limits: CacheLimits { max_topics: self.max_topics, max_bytes: self.max_bytes },
        }
    }
}

/// Run `mdsub lvc` until SIGINT/SIGTERM.
pub fn run(args: &LvcArgs, stop: &StopFlag) -> Result<LvcReport, AgentError> {
    crate::lvc::run(args.to_config(), stop, ExitCounters::json(args.json))
}
