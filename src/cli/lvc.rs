//! `mdsub lvc`: the Last Value Cache proxy's command line.

use clap::Args;

use super::args::{parse_bytes, parse_bytes_usize, parse_count, parse_count_usize, parse_duration};
use super::proxy::ProxyArgs;
use crate::agent::{AgentError, StopFlag};
use crate::diag::ExitCounters;
use crate::lvc::answer::AnswerLimits;
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
    A side that connects to this proxy's own other side (--backend connect:EP at its bound\n\
    --frontend EP, or the reverse) is refused: it would loop. A loop through another proxy, or\n\
    through another of this host's addresses, cannot be seen.\n\
    A subscription is a prefix: it is answered at once, to that subscriber only, with the cached\n\
    last value of every topic that starts with it, in topic order, as ONE multipart message (the\n\
    cached messages' frames back to back; mdsub frames re-sent from the cache carry FROM_CACHE).\n\
    Answers are bounded: a re-subscription within --coalesce-window gets none (coalesced=),\n\
    except one per prefix for each subscriber connection made within it (joiner_answers=), and\n\
    --answer-msgs / --answer-bytes per second cap them (truncated=, suppressed_msgs=).\n\
    Control frames (topic _mdsub: heartbeats, ends of stream) pass live but are never cached nor\n\
    answered, and take no --max-topics slot (control=).\n\
    SIGINT/SIGTERM stop it cleanly; the counters are printed on exit, on stderr as\n  \
    lvc: stopped: messages_in=N ...\n\
    like every diagnostic (refusals: the first of each reason at once, then a summary every 10 s),\n\
    or with --json as one JSON object on stdout. See docs/LVC-TAP.md.")]
#[command(mut_arg("hwm_msgs", |a| a.help(
    "SNDHWM and RCVHWM of both proxy sockets, in messages (0 = unlimited). High by default so that a \
     burst waits in the proxy's queues before it pushes back on the publishers (--delivery lossless) \
     or is dropped (lossy), and an answer (one message, however wide its prefix) seldom meets a full \
     queue: one that does is not sent (send_failures=)"
)))]
pub struct LvcArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Most topics cached (data topics: control frames are never cached); further new topics
    /// pass through uncached (counted, logged). 0
    /// caches nothing (unlike --hwm-msgs and the answer budgets, 0 is no cache, not no limit).
    #[arg(long, value_parser = parse_count_usize, default_value = "100k", value_name = "COUNT")]
    pub max_topics: usize,
    /// Most bytes cached (keys plus message buffers); 0 caches nothing, as --max-topics 0.
    #[arg(long, value_parser = parse_bytes_usize, default_value = "256Mi", value_name = "BYTES")]
    pub max_bytes: usize,
    /// A subscribe to a prefix unsubscribed less than this long ago gets no answer
    /// (subscription churn; counted as coalesced), unless a subscriber connection made within
    /// it has not had that prefix answered yet (a new joiner: counted as joiner_answers).
    /// 0s turns coalescing off.
    #[arg(long, value_parser = parse_duration, default_value = "500ms", value_name = "DURATION")]
    pub coalesce_window: std::time::Duration,
    /// Answer budget: most cached messages sent in answers per second (burst: one second's
    /// worth); the rest of an answer is left out and counted (suppressed_msgs=). 0 = no limit.
    #[arg(long, value_parser = parse_count, default_value = "200k", value_name = "COUNT")]
    pub answer_msgs: u64,
    /// Answer budget: most bytes sent in answers per second (as --answer-msgs). 0 = no limit.
    #[arg(long, value_parser = parse_bytes, default_value = "64Mi", value_name = "BYTES")]
    pub answer_bytes: u64,
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
            answers: AnswerLimits {
                coalesce_window_ns: u64::try_from(self.coalesce_window.as_nanos()).unwrap_or(u64::MAX),
                msgs_per_s: self.answer_msgs,
                bytes_per_s: self.answer_bytes,
            },
        }
    }
}

/// Run `mdsub lvc` until SIGINT/SIGTERM. Its run is under way once its sockets are bound and
/// connected ([`super::run_under_way`]), not before.
pub fn run(args: &LvcArgs, stop: &StopFlag) -> Result<LvcReport, AgentError> {
    crate::lvc::run(args.to_config(), stop, ExitCounters::json(args.json), super::run_under_way)
}
