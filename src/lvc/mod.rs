//! `mdsub lvc`: the guide's Last Value Cache proxy (chapter 5), XSUB ⇄ XPUB with a cache.
//!
//! XSUB toward the publishers, XPUB (verbose) toward the subscribers,
//! answering every new subscription with the cached last value of each
//! matching topic.
//!
//! - [`cache`]: the socket-free cache core (prefix lookups, limits).
//! - [`answer`]: the socket-free answer policy (coalescing, budget).
//! - [`proxy`]: the LVC's hooks on the shared proxy shell ([`crate::proxy`]).
//!
//! Behaviour notes (duplicates, foreign traffic, limits) are in `docs/LVC-TAP.md`.

pub mod answer;
pub mod cache;
pub mod proxy;

use crate::agent::{AgentError, StopFlag};
use crate::diag::ExitCounters;
use crate::lvc::answer::AnswerLimits;
use crate::lvc::cache::CacheLimits;
use crate::lvc::proxy::{LvcHooks, LvcReport};
use crate::proxy::{ProxyConfig, ProxyShell};

/// What `mdsub lvc` runs: the proxy shell's settings and the cache limits.
#[derive(Debug, Clone)]
pub struct LvcConfig {
    pub proxy: ProxyConfig,
    /// Most topics and bytes cached; further new topics pass through uncached (counted, logged).
    pub limits: CacheLimits,
    /// How answers to subscriptions are bounded (coalescing, budget).
    pub answers: AnswerLimits,
}

/// The LVC agent: the proxy shell with the LVC's hooks, subscribed upstream
/// to everything so the cache is warm before the first subscriber.
pub fn new_proxy(ctx: &zmq::Context, config: &LvcConfig) -> Result<ProxyShell<LvcHooks>, AgentError> {
    ProxyShell::new(ctx, &config.proxy, true, LvcHooks::new(config.limits, config.answers))
}

/// Run the LVC until SIGINT/SIGTERM; prints the endpoints on startup and the
/// counters on exit (the way `exit` says), and returns them. `under_way` is called once the
/// sockets are made and attached, before the endpoints are printed: from there `stop` ends the
/// run with its counters (the command line marks its run under way there).
pub fn run(
    config: LvcConfig,
    stop: &StopFlag,
    exit: ExitCounters,
    under_way: impl FnOnce(),
) -> Result<LvcReport, AgentError> {
    let ctx = zmq::Context::new();
    let proxy = new_proxy(&ctx, &config)?;
    under_way();
    proxy.print_endpoints("lvc", exit);
    let links = proxy.links();
    // `stop` is set by the binary's SIGINT/SIGTERM handler.
    let (report, result) = proxy.run(config.proxy.idle, stop.clone());
    exit.print("lvc", &report);
    if let Some(l) = links.summary() {
        crate::diag!("lvc: links: {l}");
    }
    result.map(|()| report)
}
