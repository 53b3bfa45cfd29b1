//! The one vocabulary of the `mdsub` command line: value parsers for endpoints, durations, counts and idle strategies.
//!
//! Every command spells these values the same way (STYLE.md item 9):
//!
//! - an endpoint is `bind:EP` or `connect:EP`; a bare `EP` takes the
//!   command's natural default (replay binds, the engine connects, …); a
//!   socket that attaches one way only has a parser that refuses the other
//!   (`parse_bind_endpoint`, `parse_connect_endpoint`, the clone store's
//!   tcp-only ones), and each error states only the forms its flag takes;
//! - a duration always carries its unit: `250us`, `500ms`, `5s`, `2m`, `1h`;
//! - a count may use `_` and the suffixes `k` (thousand) and `M` (million):
//!   `100k`, `2M`, `1_000_000`;
//! - a size in bytes is a count or takes the binary suffixes `Ki`, `Mi`, `Gi`:
//!   `64k` (64 000), `1Mi` (1 048 576);
//! - an idle strategy is one of `spin`, `yield`, `backoff`, `block`.
//!
//! clap puts the flag's name in front of each error these parsers return, so
//! a bad value reads as one line: the flag, the value, the accepted forms. A
//! value that starts with `-` (`--workers -1`, `--hold -1s`) reaches the
//! parser too, for every flag of every command
//! ([`parsed_values_take_a_leading_hyphen`](super::parsed_values_take_a_leading_hyphen)).

use std::time::Duration;

use crate::agent::IdleStrategy;
use crate::zmqx::{endpoint_transport, Attach, Transport};

/// What an `EP` is, in the forms an endpoint error states.
const EP_LIKE: &str = "with EP like tcp://127.0.0.1:5556 or ipc:///tmp/md";
/// The accepted duration forms, as every duration error states them.
pub const DURATION_FORMS: &str = "a number with a unit: ns, us (or µs), ms, s, m or h (e.g. 500ms, 5s, 2m)";
/// The accepted size forms, as every `--*-bytes` error states them.
pub const BYTES_FORMS: &str =
    "a whole number of bytes, optionally with k or M (10^3, 10^6) or Ki, Mi or Gi (2^10, 2^20, 2^30), e.g. 64k, 1Mi";
/// The accepted count forms, as every count error states them.
pub const COUNT_FORMS: &str = "a whole number, optionally with k or M (e.g. 100000, 100k, 2M)";

/// Which way a socket attaches to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Bind,
    Connect,
}

impl How {
    fn word(self) -> &'static str {
        match self {
            How::Bind => "bind",
            How::Connect => "connect",
        }
    }
}

/// An endpoint as written on the command line: `bind:EP`, `connect:EP` or bare `EP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `None` for a bare endpoint: the command's default applies.
    pub how: Option<How>,
    /// The ZeroMQ endpoint, checked for a known transport and an address.
    pub endpoint: String,
}

impl Endpoint {
    /// Bind or connect, a bare endpoint taking `default`.
    pub fn attach(&self, default: How) -> Attach {
        match self.how.unwrap_or(default) {
            How::Bind => Attach::Bind(self.endpoint.clone()),
            How::Connect => Attach::Connect(self.endpoint.clone()),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.how {
            Some(h) => write!(f, "{}:{}", h.word(), self.endpoint),
            None => f.write_str(&self.endpoint),
        }
    }
}

/// What an endpoint flag takes: the ways its socket attaches and the transports its peer
/// can use. Each flag's parser is one of these, so its errors name only the forms it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndpointRule {
    /// `None`: `bind:EP`, `connect:EP` or `EP`; `Some(how)`: the socket only attaches `how`.
    only: Option<How>,
    /// A clone store's endpoint: tcp only (its ports follow the given one).
    clone_store: bool,
    /// How a bare `EP` attaches when `only` is `None` (the flag's default).
    bare: How,
}

impl EndpointRule {
    /// The accepted forms, as this flag's errors state them.
    fn forms(self) -> String {
        match (self.only, self.clone_store) {
            (None, _) => format!("bind:EP, connect:EP or EP, {EP_LIKE}"),
            (Some(how), false) => format!("{}:EP or EP, {EP_LIKE}", how.word()),
            (Some(how), true) => format!("{}:tcp://HOST:P or tcp://HOST:P", how.word()),
        }
    }

    fn parse(self, s: &str) -> Result<Endpoint, String> {
        let s = s.trim();
        let (how, endpoint) = if let Some(e) = s.strip_prefix("bind:") {
            (Some(How::Bind), e)
        } else if let Some(e) = s.strip_prefix("connect:") {
            (Some(How::Connect), e)
        } else {
            (None, s)
        };
        let forms = self.forms();
        if let (Some(h), Some(only)) = (how, self.only) {
            if h != only {
                return Err(format!("this socket can only {}; accepted: {forms}", only.word()));
            }
        }
        let transport = endpoint_transport(endpoint).map_err(|why| format!("{why}; accepted: {forms}"))?;
        // What libzmq's connect refuses only when the engine starts (`Invalid argument`).
        if how.or(self.only).unwrap_or(self.bare) == How::Connect {
            if let Some(why) = crate::zmqx::connect_problem(endpoint) {
                let bind = if self.only.is_none() && how.is_none() { "; to bind, write bind:EP" } else { "" };
                return Err(format!("{why}{bind}"));
            }
        }
        match transport {
            Transport::Tcp => {}
            Transport::Ipc | Transport::Inproc if self.clone_store => {
                return Err(format!("a clone store is reached over tcp only; accepted: {forms}"))
            }
            Transport::Ipc => {}
            // Only sockets of one process meet on inproc, and no command binds and connects the
            // same endpoint: its peer would be another process, and the link would never come up.
            Transport::Inproc => {
                return Err("an inproc endpoint reaches only sockets inside this process, and the peer of this \
                            socket is another process; use ipc:///tmp/NAME or tcp://HOST:PORT"
                    .into())
            }
        }
        Ok(Endpoint { how, endpoint: endpoint.to_string() })
    }
}

/// Parse `bind:EP`, `connect:EP` or a bare `EP` (a socket that attaches either way; a bare
/// one binds, as the proxies' sides do).
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    EndpointRule { only: None, clone_store: false, bare: How::Bind }.parse(s)
}

/// Parse `bind:EP` or a bare `EP`, for a socket that only binds: `connect:` is refused.
pub fn parse_bind_endpoint(s: &str) -> Result<Endpoint, String> {
    EndpointRule { only: Some(How::Bind), clone_store: false, bare: How::Bind }.parse(s)
}

/// Parse `connect:EP` or a bare `EP`, for a socket that only connects: `bind:` is refused.
pub fn parse_connect_endpoint(s: &str) -> Result<Endpoint, String> {
    EndpointRule { only: Some(How::Connect), clone_store: false, bare: How::Connect }.parse(s)
}

/// Parse a clone server's base endpoint to bind: `bind:tcp://HOST:P` or `tcp://HOST:P`.
pub fn parse_clone_bind(s: &str) -> Result<Endpoint, String> {
    EndpointRule { only: Some(How::Bind), clone_store: true, bare: How::Bind }.parse(s)
}

/// Parse a clone server to reach (`--store`, `--peer`): `connect:tcp://HOST:P` or
/// `tcp://HOST:P`.
pub fn parse_clone_server(s: &str) -> Result<Endpoint, String> {
    EndpointRule { only: Some(How::Connect), clone_store: true, bare: How::Connect }.parse(s)
}

/// `parse` applied to `part` of the flag value `whole` (one item of a list, one side of
/// `KEY=VALUE`): clap shows the whole value, so an error names the part only when it is not
/// the whole.
pub fn in_part<T>(whole: &str, part: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<T, String> {
    parse(part).map_err(|e| if part.trim() == whole.trim() { e } else { format!("`{}`: {e}", part.trim()) })
}

/// Parse a comma-separated list of endpoints for a socket that binds some and connects to
/// others (`bind:EP1,connect:EP2`), each as [`parse_endpoint`] but a bare one connecting (the
/// engine's `--endpoint`).
pub fn parse_endpoint_list(s: &str) -> Result<Vec<Endpoint>, String> {
    let rule = EndpointRule { only: None, clone_store: false, bare: How::Connect };
    let list: Vec<Endpoint> = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| in_part(s, e, |e| rule.parse(e)))
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        let forms = rule.forms();
        return Err(format!("no endpoint given; accepted: {forms}, several joined by commas"));
    }
    Ok(list)
}

/// Parse a duration with its unit: `250us`, `500ms`, `5s`, `1.5s`, `2m`, `1h`; also `µs` and
/// `ns`, so that every duration a message says ([`crate::diag::human_duration`], `41.2µs`) is
/// one a flag takes.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic() || MICRO.contains(&c)).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let Ok(v) = num.trim().parse::<f64>() else {
        return Err(format!("not a duration; accepted: {DURATION_FORMS}"));
    };
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("no unit; accepted: {DURATION_FORMS}")),
        _ if num.trim().is_empty() => return Err(format!("not a duration; accepted: {DURATION_FORMS}")),
        _ => return Err(format!("unknown unit `{unit}`; accepted: {DURATION_FORMS}")),
    };
    if v < 0.0 {
        Err(format!("negative: a duration is 0 or more; accepted: {DURATION_FORMS}"))
    } else if (v * scale) <= crate::clock::MAX_DURATION_S as f64 {
        Ok(Duration::from_secs_f64(v * scale))
    } else {
        Err(format!("out of range: at most {}s", crate::clock::MAX_DURATION_S))
    }
}

/// The micro sign (`µ`, what [`crate::diag::human_ns`] writes) and the Greek mu (`μ`) that
/// looks the same: either begins `µs`.
const MICRO: [char; 2] = ['\u{b5}', '\u{3bc}'];

/// Parse a count: `100000`, `100k`, `2M`, `1.5M`, `1_000_000`.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let (num, scale) = match t.chars().last() {
        Some('k') | Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        _ => (&t[..], 1.0),
    };
    let bad = || format!("not a count; accepted: {COUNT_FORMS}");
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    if scale == 1.0 {
        return num.parse::<u64>().map_err(|e| match e.kind() {
            std::num::IntErrorKind::PosOverflow => too_large(),
            _ => bad(),
        });
    }
    let v = num.parse::<f64>().map_err(|_| bad())? * scale;
    if v.fract() != 0.0 {
        return Err(bad());
    }
    if v >= u64::MAX as f64 {
        return Err(too_large());
    }
    Ok(v as u64)
}

/// A count or size of the right form past what 64 bits hold: said as such, not as "not a
/// count" (`18446744073709551616`).
fn too_large() -> String {
    format!("too large: at most {}", u64::MAX)
}

/// [`parse_count`] into a `usize`.
pub fn parse_count_usize(s: &str) -> Result<usize, String> {
    count_to_usize(parse_count(s)?)
}

/// A parsed count as a `usize`.
fn count_to_usize(n: u64) -> Result<usize, String> {
    usize::try_from(n).map_err(|_| format!("too large; accepted: {COUNT_FORMS}"))
}

/// [`parse_count`] of something that must happen at least once (`--runs`, `--count`,
/// `--symbols`, `--burst`): 0 is refused rather than taken as 1 or run as nothing.
pub fn parse_count_nonzero(s: &str) -> Result<u64, String> {
    match parse_count(s)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A rate in messages per second (`--rate`, capacity's rates): a count up to
/// [`MAX_RATE_MSGS_PER_SEC`](crate::replay::MAX_RATE_MSGS_PER_SEC), one message a nanosecond.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let max = crate::replay::MAX_RATE_MSGS_PER_SEC;
    let too_fast =
        || format!("at most {}M msg/s: one message a nanosecond, the finest the pacer schedules", max / 1_000_000);
    match parse_count(s) {
        // A rate past 64 bits is past this bound too: said as this one (it named 2^64 - 1).
        Err(e) if e == too_large() => Err(too_fast()),
        Err(e) => Err(e),
        Ok(r) if r > max => Err(too_fast()),
        Ok(r) => Ok(r),
    }
}

/// A duration of something that must take time (`--hold`, `--timeout`): 0 is refused.
pub fn parse_duration_nonzero(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

/// A duration in whole milliseconds (settings kept in ms): a finer one is refused, not cut.
pub fn parse_whole_ms(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !d.as_nanos().is_multiple_of(1_000_000) {
        return Err("this setting is whole milliseconds (e.g. 1ms, 250ms, 2s)".into());
    }
    Ok(d)
}

/// A duration in whole milliseconds ([`parse_whole_ms`]), or `off` (also `0s`): never, as a
/// zero duration. A bare `0` is refused as every duration without its unit is (it was taken).
pub fn parse_whole_ms_or_off(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "off" => Ok(Duration::ZERO),
        t => parse_whole_ms(t).map_err(|e| format!("{e}; or off (never)")),
    }
}

/// The milliseconds of `d` (a duration [`parse_whole_ms`] or [`parse_ms_in`] accepted, so
/// nothing is cut), for settings kept in milliseconds.
pub fn whole_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration inside `range_ms` (milliseconds, both ends included), whole milliseconds.
pub fn parse_ms_in(s: &str, range_ms: std::ops::RangeInclusive<u64>) -> Result<Duration, String> {
    let d = parse_whole_ms(s)?;
    if !range_ms.contains(&whole_ms(d)) {
        let (from, to) = (crate::diag::human_ms(*range_ms.start()), crate::diag::human_ms(*range_ms.end()));
        return Err(format!("out of range: give {from} to {to}"));
    }
    Ok(d)
}

/// [`parse_count_nonzero`] into a `usize`.
pub fn parse_count_nonzero_usize(s: &str) -> Result<usize, String> {
    count_to_usize(parse_count_nonzero(s)?)
}

/// A number of engine threads of one kind (`--workers`, `--shards`): 1 to
/// [`MAX_THREADS_OF_A_KIND`](crate::profile::MAX_THREADS_OF_A_KIND), as a profile allows.
pub fn parse_thread_count(s: &str) -> Result<usize, String> {
    let max = crate::profile::MAX_THREADS_OF_A_KIND;
    match parse_count_nonzero_usize(s)? {
        n if n > max => Err(format!(
            "too many: at most {max} (each is a pinned thread with its own sockets and latency histograms)"
        )),
        n => Ok(n),
    }
}

/// A whole number from 0 to `max`, written plainly (`--seed`, `--publisher-id`): a negative
/// one (`-1`) is refused with the accepted range.
pub fn parse_whole_up_to(s: &str, max: u64) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("not a whole number from 0 to {max}")),
    }
}

/// [`parse_count`] into a HWM (`i32`, as libzmq takes it; 0 = unlimited).
pub fn parse_hwm(s: &str) -> Result<i32, String> {
    let n = parse_count(s)?;
    i32::try_from(n).map_err(|_| format!("too large: a HWM is at most {} messages", i32::MAX))
}

/// Parse a size in bytes (every `--*-bytes` flag): a count (`100`, `64k`, `2M`: powers of ten)
/// or binary units `Ki`, `Mi`, `Gi` (`1Mi` = 1 048 576), so a power-of-two default reads as one.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("not a size in bytes; accepted: {BYTES_FORMS}");
    let t = s.trim().replace('_', "");
    let binary = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)];
    let Some((num, unit)) = binary.iter().find_map(|(suffix, unit)| t.strip_suffix(suffix).map(|n| (n, *unit))) else {
        return parse_count(&t).map_err(|e| if e.starts_with("too large") { e } else { bad() });
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let v = num.parse::<f64>().map_err(|_| bad())? * unit as f64;
    if v.fract() != 0.0 {
        return Err(bad());
    }
    if v >= u64::MAX as f64 {
        return Err(too_large());
    }
    Ok(v as u64)
}

/// [`parse_bytes`] into a `usize`.
pub fn parse_bytes_usize(s: &str) -> Result<usize, String> {
    usize::try_from(parse_bytes(s)?).map_err(|_| format!("too large; accepted: {BYTES_FORMS}"))
}

/// [`parse_bytes`] into a byte limit as libzmq's `ZMQ_MAXMSGSIZE` takes it.
pub fn parse_bytes_i64(s: &str) -> Result<i64, String> {
    i64::try_from(parse_bytes(s)?).map_err(|_| format!("too large; accepted: {BYTES_FORMS}"))
}

/// The idle strategy of a command's agents, by name.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Busy-spin (lowest latency; needs a dedicated core).
    Spin,
    /// Yield the core between polls.
    Yield,
    /// Spin, then yield, then block briefly (right for a shared box).
    Backoff,
    /// Block until work arrives (up to 100 ms at a time).
    Block,
}

/// An idle strategy by the words `--idle` takes, for a value given elsewhere (`capacity --vary idle=…`).
pub fn parse_idle(s: &str) -> Result<Idle, String> {
    <Idle as clap::ValueEnum>::from_str(s, false)
        .map_err(|_| "not an idle strategy (spin, yield, backoff or block)".to_string())
}

impl Idle {
    /// The name a tuning profile uses for it.
    pub fn name(self) -> &'static str {
        match self {
            Idle::Spin => "spin",
            Idle::Yield => "yield",
            Idle::Backoff => "backoff",
            Idle::Block => "block",
        }
    }

    /// The runner's strategy for it.
    pub fn strategy(self) -> IdleStrategy {
        IdleStrategy::from_name(self.name()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Probe {
        #[arg(long, value_parser = parse_endpoint)]
        endpoint: Option<Endpoint>,
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        #[arg(long, value_parser = parse_count)]
        count: Option<u64>,
        #[arg(long, value_parser = parse_hwm)]
        hwm_msgs: Option<i32>,
        #[arg(long, value_enum)]
        idle: Option<Idle>,
    }

    /// The error clap prints for `--flag value`, as one string.
    fn error(flag: &str, value: &str) -> String {
        let e = Probe::try_parse_from(["probe", flag, value]).expect_err("refused");
        e.to_string()
    }

    #[test]
    fn a_duration_that_may_be_off_takes_off_and_zero_as_never() {
        assert_eq!(parse_whole_ms_or_off("off"), Ok(Duration::ZERO));
        assert_eq!(parse_whole_ms_or_off("0s"), Ok(Duration::ZERO));
        assert!(parse_whole_ms_or_off("0").unwrap_err().starts_with("no unit; accepted: "));
        assert_eq!(parse_whole_ms_or_off("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_whole_ms_or_off("5").unwrap_err().starts_with("no unit; accepted: "));
        assert!(parse_whole_ms_or_off("never").unwrap_err().ends_with("; or off (never)"));
    }

    #[test]
    fn durations_carry_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        // What the messages say reads back: `41.2µs` (micro sign or Greek mu), `800ns`.
        assert_eq!(parse_duration("41.2\u{b5}s"), Ok(Duration::from_nanos(41_200)));
        assert_eq!(parse_duration("41.2\u{3bc}s"), Ok(Duration::from_nanos(41_200)));
        assert_eq!(parse_duration("800ns"), Ok(Duration::from_nanos(800)));
        for ns in
            [0, 800, 41_200, 1_500_000, 250_000_000, 9_000_000_000, 120_000_000_000, 900_000_000_000, 3_600_000_000_000]
        {
            let said = crate::diag::human_duration(ns);
            assert_eq!(parse_duration(&said), Ok(Duration::from_nanos(ns)), "{said}");
        }
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["5", "", "soon", "5x", "-1s", "s", "1e300s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} refused");
        }
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        // A number too large is said as such, not as "not a duration".
        assert!(parse_duration("18446744073709551615s").unwrap_err().starts_with("out of range"));
        // Before: a negative one was "not a duration", and the bound itself "out of range: at
        // most" the bound.
        assert!(parse_duration("-5s").unwrap_err().starts_with("negative: a duration is 0 or more; accepted:"));
        let max = crate::clock::MAX_DURATION_S;
        assert_eq!(parse_duration(&format!("{max}s")), Ok(Duration::from_secs(max)));
        assert_eq!(parse_duration(&format!("{}s", max + 1)), Err(format!("out of range: at most {max}s")));
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit `x`"));
    }

    #[test]
    fn a_bad_duration_names_the_flag_and_the_forms() {
        let e = error("--timeout", "10");
        assert!(e.contains("--timeout"), "{e}");
        assert!(e.contains("500ms, 5s, 2m"), "{e}");
        assert_eq!(
            e.trim().lines().next().map(|l| l.contains("--timeout") && l.contains("no unit")),
            Some(true),
            "{e}"
        );
    }

    #[test]
    fn counts_take_k_and_m() {
        assert_eq!(parse_count("100000"), Ok(100_000));
        assert_eq!(parse_count("100k"), Ok(100_000));
        assert_eq!(parse_count("2M"), Ok(2_000_000));
        assert_eq!(parse_count("1.5M"), Ok(1_500_000));
        assert_eq!(parse_count("1_000_000"), Ok(1_000_000));
        assert_eq!(parse_count("0"), Ok(0));
        for bad in ["", "k", "-1", "1.5", "0.0001k", "2m", "two", "1e6", "99999999999999999999"] {
            assert!(parse_count(bad).is_err(), "{bad:?} refused");
        }
        // A count of the right form past 64 bits is too large, not "not a count" (before).
        let too_large = format!("too large: at most {}", u64::MAX);
        assert_eq!(parse_count("18446744073709551615"), Ok(u64::MAX));
        for big in ["18446744073709551616", "99999999999999999999", "18446744073709552M", "99999999999999999999k"] {
            assert_eq!(parse_count(big), Err(too_large.clone()), "{big}");
            assert_eq!(parse_bytes(big), Err(too_large.clone()), "{big}");
        }
        assert_eq!(parse_bytes("17179869184Gi"), Err(too_large.clone()));
        assert!(parse_count("1.5.5").is_err_and(|e| e.starts_with("not a count")));
        assert_eq!(parse_rate("1000M"), Ok(1_000_000_000));
        assert_eq!(parse_rate("0"), Ok(0));
        // Past 64 bits too: it named 2^64 - 1 as the bound of a rate (`--rate 99999999999999999999`).
        for absurd in ["1001M", "18446744073709551615", "99999999999999999999", "99999999999999999999k"] {
            assert!(parse_rate(absurd).is_err_and(|e| e.starts_with("at most 1000M msg/s")), "{absurd}");
        }
        assert_eq!(parse_count_nonzero("2"), Ok(2));
        assert!(parse_count_nonzero("0").unwrap_err().contains("at least 1"));
        assert!(parse_count_nonzero_usize("0k").is_err());
        assert_eq!(parse_thread_count("256"), Ok(256));
        assert!(parse_thread_count("257").is_err_and(|e| e.starts_with("too many: at most 256")));
        assert!(parse_thread_count("0").is_err_and(|e| e.contains("at least 1")));
        assert_eq!(parse_hwm("100k"), Ok(100_000));
        assert!(parse_hwm("3000M").unwrap_err().contains("at most"));
    }

    #[test]
    fn a_bad_count_names_the_flag_and_the_forms() {
        let e = error("--count", "lots");
        assert!(e.contains("--count") && e.contains("100k, 2M"), "{e}");
        let e = error("--hwm-msgs", "1.5");
        assert!(e.contains("--hwm-msgs") && e.contains("100k, 2M"), "{e}");
    }

    #[test]
    fn sizes_take_counts_and_binary_units() {
        let sizes = [
            ("100", 100),
            ("64k", 64_000),
            ("2M", 2_000_000),
            ("1Ki", 1_024),
            ("1Mi", 1_048_576),
            ("64Mi", 67_108_864),
            ("256Mi", 268_435_456),
            ("1.5Ki", 1_536),
            ("1_024Ki", 1_048_576),
            ("2Gi", 2 << 30),
        ];
        for (given, bytes) in sizes {
            assert_eq!(parse_bytes(given), Ok(bytes), "{given}");
            assert_eq!(parse_bytes_usize(given).map(|b| b as u64), Ok(bytes), "{given}");
            assert_eq!(parse_bytes_i64(given).map(|b| b as u64), Ok(bytes), "{given}");
        }
        for bad in ["", "Mi", "1MiB", "1mi", "0.3Ki", "-1Ki", "lots"] {
            let e = parse_bytes(bad).expect_err(bad);
            assert!(e.contains("not a size in bytes") && e.contains("Ki, Mi or Gi"), "{bad}: {e}");
        }
    }

    #[test]
    fn endpoints_say_bind_or_connect_or_take_the_default() {
        let b = parse_endpoint("bind:tcp://127.0.0.1:*").expect("bind");
        assert_eq!(b.how, Some(How::Bind));
        assert_eq!(b.attach(How::Connect), Attach::Bind("tcp://127.0.0.1:*".into()));
        let c = parse_endpoint("connect:ipc:///tmp/x").expect("connect");
        assert_eq!(c.attach(How::Bind), Attach::Connect("ipc:///tmp/x".into()));
        let bare = parse_endpoint("tcp://10.0.0.5:5556").expect("bare");
        assert_eq!(bare.how, None);
        assert_eq!(bare.attach(How::Connect), Attach::Connect("tcp://10.0.0.5:5556".into()));
        assert_eq!(bare.attach(How::Bind), Attach::Bind("tcp://10.0.0.5:5556".into()));
        assert_eq!(bare.to_string(), "tcp://10.0.0.5:5556");
        assert_eq!(c.to_string(), "connect:ipc:///tmp/x");
        for bad in ["", "listen:tcp://127.0.0.1:5", "bind:nope", "tcp://127.0.0.1", "127.0.0.1:5556"] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} refused");
        }
        let list = parse_endpoint_list("connect:tcp://a:1, tcp://b:2").expect("list");
        assert_eq!(list.len(), 2);
        assert!(
            parse_endpoint_list(",").is_err_and(|e| e.starts_with("no endpoint given; accepted: bind:EP, connect:EP"))
        );
        let mixed = parse_endpoint_list("bind:tcp://a:1, tcp://b:2").expect("a list binding one, connecting one");
        assert_eq!((mixed[0].how, mixed[1].how), (Some(How::Bind), None));
    }

    #[test]
    fn a_connect_endpoint_libzmq_would_refuse_at_start_is_refused_here() {
        // Before: these passed the parser, and the engine failed at start with exit 1, `zmq
        // error while connecting to …: Invalid argument`.
        let port = "a connect endpoint needs a port: `*` (any port) is for binding";
        let port0 = "a connect endpoint needs a port above 0: port 0 (any port) is for binding";
        let host = "a connect endpoint needs a host: `*` (every interface) is for binding";
        for (given, says) in [
            ("tcp://127.0.0.1:*", format!("{port}; to bind, write bind:EP")),
            ("tcp://*:5556", format!("{host}; to bind, write bind:EP")),
            // Before: accepted, and the engine connected to port 0 for ever.
            ("tcp://127.0.0.1:0", format!("{port0}; to bind, write bind:EP")),
            ("tcp://eth0:0;127.0.0.1:00", format!("{port0}; to bind, write bind:EP")),
            ("connect:tcp://[::1]:0", port0.to_string()),
            ("connect:tcp://*:5556", host.to_string()),
            ("tcp://a:1,tcp://*:2", format!("`tcp://*:2`: {host}; to bind, write bind:EP")),
            (
                "tcp://münchen.de:5556",
                "the host `münchen.de` holds `ü`, outside ASCII, which libzmq does not take in a name: give its \
                 ASCII (punycode) form, xn--…, or an address; to bind, write bind:EP"
                    .to_string(),
            ),
            ("tcp://a b:1", "the host `a b` holds ` `: libzmq takes letters, digits, `.`, `-` and `_` in a name; to bind, write bind:EP".to_string()),
            ("tcp://-x:1", "the host `-x` must start with a letter or a digit (libzmq refuses it on a connect); to bind, write bind:EP".to_string()),
        ] {
            assert_eq!(parse_endpoint_list(given), Err(says), "{given}");
        }
        assert!(parse_clone_server("tcp://*:5556").is_err_and(|e| e.starts_with(host)));
        assert!(parse_connect_endpoint("tcp://127.0.0.1:*").is_err_and(|e| e == port));
        // What libzmq's connect takes, and every bind, stays accepted.
        for ok in ["tcp://127.0.0.1:5556", "tcp://[::1]:5556", "tcp://eth0:0;10.0.0.1:5556", "tcp://my_host-1.lan:1"] {
            assert!(parse_endpoint_list(ok).is_ok(), "{ok}");
        }
        assert!(parse_clone_server("tcp://127.0.0.1:0").is_err_and(|e| e == port0));
        for ok in ["bind:tcp://*:5556", "bind:tcp://127.0.0.1:*", "bind:tcp://127.0.0.1:0"] {
            assert!(parse_endpoint_list(ok).is_ok(), "{ok}");
        }
        assert!(parse_endpoint("tcp://*:5556").is_ok(), "a proxy's bare endpoint binds");
        assert!(parse_bind_endpoint("tcp://127.0.0.1:*").is_ok());
    }

    #[test]
    fn whole_millisecond_durations_and_ranges() {
        assert_eq!(parse_whole_ms("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_whole_ms("1.5ms").is_err_and(|e| e.contains("whole milliseconds")));
        assert_eq!(parse_ms_in("10ms", 10..=3_600_000), Ok(Duration::from_millis(10)));
        assert_eq!(parse_ms_in("1h", 10..=3_600_000), Ok(Duration::from_secs(3600)));
        let e = parse_ms_in("9ms", 10..=60_000).expect_err("below");
        assert_eq!(e, "out of range: give 10ms to 60s");
        assert!(parse_ms_in("2h", 10..=3_600_000).is_err_and(|e| e.ends_with("10ms to 1h")));
    }

    #[test]
    fn a_one_way_socket_refuses_the_other_way() {
        let e = parse_bind_endpoint("connect:tcp://127.0.0.1:5556").expect_err("refused");
        assert_eq!(
            e,
            "this socket can only bind; accepted: bind:EP or EP, with EP like tcp://127.0.0.1:5556 or ipc:///tmp/md"
        );
        let e = parse_connect_endpoint("bind:tcp://127.0.0.1:5556").expect_err("refused");
        assert!(e.starts_with("this socket can only connect; accepted: connect:EP or EP,"), "{e}");
        assert_eq!(
            parse_bind_endpoint("tcp://127.0.0.1:5556").map(|e| e.endpoint).as_deref(),
            Ok("tcp://127.0.0.1:5556")
        );
        assert_eq!(parse_connect_endpoint("connect:ipc:///x").map(|e| e.how), Ok(Some(How::Connect)));
    }

    #[test]
    fn each_endpoint_flag_names_only_the_forms_it_takes() {
        // Before: every endpoint flag said `no transport (expected tcp://host:port, ipc://path or
        // inproc://name); accepted: bind:EP, connect:EP or EP`, forms most of them refuse.
        type Parser = fn(&str) -> Result<Endpoint, String>;
        let cases: [(Parser, &str); 5] = [
            (parse_endpoint, "accepted: bind:EP, connect:EP or EP, with EP like"),
            (parse_bind_endpoint, "accepted: bind:EP or EP, with EP like"),
            (parse_connect_endpoint, "accepted: connect:EP or EP, with EP like"),
            (parse_clone_bind, "accepted: bind:tcp://HOST:P or tcp://HOST:P"),
            (parse_clone_server, "accepted: connect:tcp://HOST:P or tcp://HOST:P"),
        ];
        for (parse, forms) in cases {
            for bad in ["foo", "tcp://127.0.0.1", "udp://x:1", "tcp://:1"] {
                let e = parse(bad).expect_err(bad);
                assert!(e.contains(forms), "{bad}: {e}");
                assert!(!e.contains("inproc"), "{bad}: {e}");
            }
        }
        assert!(
            parse_clone_server("ipc:///tmp/x").is_err_and(|e| e.starts_with("a clone store is reached over tcp only"))
        );
        assert!(parse_clone_bind("inproc://x").is_err_and(|e| e.starts_with("a clone store is reached over tcp only")));
        assert!(parse_clone_server("bind:tcp://127.0.0.1:1").is_err_and(|e| e.contains("can only connect")));
        assert!(parse_bind_endpoint("inproc://x").is_err_and(|e| e.starts_with("an inproc endpoint reaches only")));
        assert_eq!(
            parse_endpoint("foo").expect_err("foo"),
            format!("no transport; accepted: bind:EP, connect:EP or EP, {EP_LIKE}")
        );
    }

    #[test]
    fn idle_names_match_the_runner() {
        assert_eq!(Idle::Spin.strategy(), IdleStrategy::Spin);
        assert_eq!(Idle::Backoff.strategy(), IdleStrategy::default());
        let e = error("--idle", "nap");
        assert!(e.contains("--idle") && e.contains("spin") && e.contains("block"), "{e}");
    }
}
