//! `mdsub top`: a terminal dashboard of every engine that publishes status in
//! the clone store (`/mdsub/status/<engine-id>/…`): per shard msgs/s,
//! p50/p99/p99.9/max of the last interval (`-` for an interval without messages, `≥60s`
//! where latencies above 60 s were recorded as 60 s, `<0s` where latencies below 0 were
//! recorded as 1 ns), a sparkline of p99, gaps, publisher
//! connections ended on a bound shard, its reader's self-stalls and the snail verdict; per
//! engine the busiest agent, what its handlers refused and its longest self-stall, and the
//! settings in force (those changed since start marked) and the values it refused for them
//! (`refused/NAME`). Both views judge an engine by one rule ([`EngineView::freshness`]): a last
//! status that says the engine `ended` (a croak, an error) is `ended` with how long ago (this
//! host's wall clock against the `updated_ns` the engine's host wrote in it, as for staleness)
//! and that cause; else one
//! older than [`STALE_INTERVALS`] of its intervals is `stale` with its age; either way its rates
//! are not shown as current. A status deleted while `top` watches (expired, or the engine exited)
//! is `gone`, which only the live view can see: `--once` reads the store once, and an expired
//! status is no longer in it. `--once` prints one plain-text frame for scripts. Both fit 100
//! columns.
//!
//! The model ([`Top`]) is socket-free: it takes the store's changes and
//! renders text or a ratatui frame; the command only feeds it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use super::args::{parse_clone_server, parse_duration_nonzero, Endpoint, Idle};
use super::store_servers;
use crate::agent::StopFlag;
use crate::clone::client::{Change, Client, ClientConfig};
use crate::metrics::{human_latency, OutOfBounds};

/// Where every engine's status lives.
pub const STATUS_ROOT: &str = "/mdsub/status/";
/// p99 values kept per shard for the sparkline.
pub const HISTORY: usize = 60;
/// An engine's status older than this many of its intervals is stale: it publishes one every
/// interval, and its keys expire after [`crate::metrics::store::TTL_INTERVALS`] (at least 1 s).
pub const STALE_INTERVALS: f64 = 2.0;

/// `mdsub top`.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// Clone store server, `[connect:]tcp://HOST:P`; twice for a Binary Star pair.
    #[arg(long, value_parser = parse_clone_server, default_value = "tcp://127.0.0.1:5556", value_name = "[connect:]tcp://HOST:P")]
    pub store: Vec<Endpoint>,
    /// Print one plain-text frame and exit (for scripts). An engine that ended by a croak or an
    /// error, or whose run failed (it exited 1), shows as `ended AGE ago: CAUSE` until its last
    /// status expires, a minute after it ended (AGE: this host's clock against the time the
    /// engine's host wrote in that status, as for `stale`); one whose last status is
    /// older than two of its intervals shows as `stale AGE` (killed, hung or cut off from the
    /// store); neither's rates and percentiles are shown. One whose status already expired (three
    /// intervals, at least 1 s) is no longer in the store, so --once cannot show it: the live view
    /// shows `gone` for one that expires while it watches. Each engine's settings in force
    /// (`(changed)` since start) and refused values follow its line.
    #[arg(long)]
    pub once: bool,
    /// Give up when no server answers within this (e.g. 10s).
    #[arg(long, value_parser = parse_duration_nonzero, default_value = "10s", value_name = "DURATION")]
    pub timeout: Duration,
    /// Idle strategy of the store client's agent thread.
    #[arg(long, value_enum, default_value_t = Idle::Block)]
    pub idle: Idle,
}

/// One shard as the last status said, with its p99 history.
#[derive(Debug, Default, Clone)]
pub struct ShardView {
    pub status: Value,
    pub p99_history: VecDeque<u64>,
    last_interval: Option<u64>,
}

/// One engine.
#[derive(Debug, Default, Clone)]
pub struct EngineView {
    pub status: Value,
    pub shards: BTreeMap<usize, ShardView>,
    /// Why the engine refused the last value offered for a setting, by setting
    /// (`/mdsub/status/ID/refused/NAME`, text as the engine wrote it).
    pub refused: BTreeMap<String, String>,
    /// Its status expired (or it exited).
    pub gone: bool,
}

/// How current an engine's status is, by the one rule both views use ([`EngineView::freshness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Its last status is at most [`STALE_INTERVALS`] of its intervals old (or says no time).
    Current,
    /// Older than that: the engine stopped publishing (killed, hung, cut off from the store) and
    /// its status has not expired yet. `age_ns`: this host's clock now minus the status's
    /// `updated_ns` (the engine host's clock).
    Stale { age_ns: u64 },
    /// Its last status says the engine ended (a croak, an error: its `ended` says how) and has
    /// not expired yet. `age_ns`: how long ago, as [`Freshness::Stale`]'s (this host's clock now
    /// minus the last status's `updated_ns`, the engine host's clock, written as it ended); None
    /// when the status says no time or one ahead of this host's clock (the clocks disagree).
    Ended { age_ns: Option<u64> },
    /// Its status was deleted while `top` watched: it expired or the engine exited.
    Gone,
}

impl EngineView {
    /// Whether the status is current at `now_unix_ns` (this host's wall clock): ended when it says
    /// so (`ended`, whatever its age), else stale once it is older than [`STALE_INTERVALS`] of the
    /// interval it says (`interval_ms`), by its `updated_ns`. A status that says neither cannot be
    /// judged and counts as current; one whose time is ahead of this host's clock (the clocks
    /// disagree) is not stale.
    pub fn freshness(&self, now_unix_ns: u64) -> Freshness {
        if self.gone {
            return Freshness::Gone;
        }
        if self.status["ended"].is_string() {
            let age_ns = self.status["updated_ns"].as_u64().and_then(|t| now_unix_ns.checked_sub(t));
            return Freshness::Ended { age_ns };
        }
        let (Some(updated_ns), Some(interval_ms)) =
            (self.status["updated_ns"].as_u64(), self.status["interval_ms"].as_f64())
        else {
            return Freshness::Current;
        };
        let age_ns = now_unix_ns.saturating_sub(updated_ns);
        match interval_ms * 1e6 * STALE_INTERVALS {
            limit_ns if limit_ns.is_finite() && limit_ns > 0.0 && age_ns as f64 > limit_ns => {
                Freshness::Stale { age_ns }
            }
            _ => Freshness::Current,
        }
    }
}

/// How rows are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    #[default]
    Engine,
    Rate,
    P99,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Engine => Sort::Rate,
            Sort::Rate => Sort::P99,
            Sort::P99 => Sort::Engine,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sort::Engine => "engine",
            Sort::Rate => "msgs/s",
            Sort::P99 => "p99",
        }
    }
}

/// The dashboard's model.
#[derive(Debug, Default)]
pub struct Top {
    pub engines: BTreeMap<String, EngineView>,
    pub selected: usize,
    pub sort: Sort,
    /// Status values that were not JSON (or not under a key of the status's shape): ignored,
    /// counted and said under the table, the engine's last good status kept. An engine's
    /// `refused/NAME` values are text by design: not counted.
    pub malformed: u64,
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// A text field of a status for the screen: escaped (a hostile store's value cannot drive the
/// terminal) and cut when long, `-` when absent.
fn text(v: &Value, k: &str) -> String {
    v[k].as_str().map_or_else(|| "-".into(), |s| crate::diag::quoted(s).into_owned())
}

/// How much of an engine's own sentence (how it ended, why it refused a value) the screen shows:
/// a snail's scream is about 200 characters.
const SENTENCE_CHARS: usize = 400;

/// How long ago an engine ended, for the screen: whole seconds (`12s`), minutes and seconds
/// from a minute (`1m05s`: a status is kept [`crate::metrics::store::ENDED_TTL_S`] at least,
/// longer for a long interval).
fn ago(age_ns: u64) -> String {
    match age_ns / 1_000_000_000 {
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// How an ended engine's status says it ended, for the screen (escaped, bounded).
fn ended(v: &Value) -> String {
    v["ended"].as_str().map_or_else(|| "-".into(), |s| crate::diag::quoted_up_to(s, SENTENCE_CHARS).into_owned())
}

/// A refusal for the screen: `NAME=VALUE (WHY)` from the engine's `` `VALUE` refused: WHY ``,
/// else `NAME (TEXT)` (an unknown setting's, a value that is not UTF-8).
fn refusal(name: &str, why: &str) -> String {
    let name = crate::diag::quoted(name);
    let split = why.strip_prefix('`').and_then(|rest| rest.split_once("` refused: "));
    match split {
        Some((value, reason)) => {
            format!("{name}={} ({})", crate::diag::quoted(value), crate::diag::quoted_up_to(reason, SENTENCE_CHARS))
        }
        None => format!("{name} ({})", crate::diag::quoted_up_to(why, SENTENCE_CHARS)),
    }
}

/// The snail column: the worst verdict since the status before (`snail_worst`, so a SNAIL
/// shorter than the interval shows), or the verdict now from an engine that does not say it.
fn snail(v: &Value) -> String {
    if v["snail_worst"].is_string() {
        text(v, "snail_worst")
    } else {
        text(v, "snail")
    }
}

/// A rate for the screen: whole messages a second; `?` for one no engine can have sent (not
/// finite, negative, 10^12 or more), which would print as hundreds of digits.
fn rate(v: &Value) -> String {
    match v["msgs_per_s"].as_f64().unwrap_or(0.0) {
        r if (0.0..1e12).contains(&r) => fit(r.round() as u64, 7),
        _ => "?".into(),
    }
}

/// A count in at most `width` characters (at least 4): whole while it fits, else to three
/// figures with a unit (`123k`, `1.2M`, `45G`): a column never pushes its row out of line.
fn fit(n: u64, width: usize) -> String {
    let whole = n.to_string();
    if whole.len() <= width {
        return whole;
    }
    let mut v = n as f64;
    for unit in ["k", "M", "G", "T", "P", "E"] {
        v /= 1000.0;
        if v >= 999.5 {
            // Shown rounded it would be 1000 of this unit: the next one.
            continue;
        }
        // Three figures where they fit, fewer where not (rounded as shown: 9.996 is 10.0).
        let decimals = if v < 9.995 {
            2
        } else if v < 99.95 {
            1
        } else {
            0
        };
        for d in (0..=decimals).rev() {
            let shown = format!("{v:.d$}{unit}");
            if shown.len() <= width {
                return shown;
            }
        }
    }
    "?".into()
}

/// The busiest agent's share for the screen (`87%`), None when the status has none; `?` for one
/// no agent can have (not finite, negative, above 100 times its interval), like [`rate`].
fn busy_share(v: &Value) -> Option<String> {
    v["busiest_busy"].as_f64().map(|b| match b {
        b if (0.0..=100.0).contains(&b) => format!("{:.0}%", b * 100.0),
        _ => "?".into(),
    })
}

/// A percentile of the status `v` for people: `-` when the interval had no message (the
/// status says `null`), `≥60s` for latencies recorded as 60 s, `<0s` for those below 0
/// recorded as 1 ns (send times ahead of the engine's clock).
fn latency(v: &Value, k: &str) -> String {
    let count = |k: &str| v[k].as_u64().unwrap_or(0);
    let b = OutOfBounds { clamped: count("clamped"), ahead: count("ahead"), ahead_max_ns: 0 };
    v[k].as_u64().map_or_else(|| "-".to_string(), |ns| human_latency(ns, b))
}

/// The LINK column of a shard's status `v`: `up` (every link it connects up), `DOWN` (none up:
/// connecting or down, so its feed is cut), `UP/ALL` (some down), `end` (its streams ended),
/// `-` (it connects nowhere: bound endpoints only, or an engine that does not say).
fn links_cell(v: &Value) -> String {
    let links = v["links"].as_array().map_or(&[][..], Vec::as_slice);
    let state = |l: &Value| l["state"].as_str().unwrap_or("").to_string();
    let up = links.iter().filter(|l| state(l) == "up").count();
    let ended = links.iter().filter(|l| state(l) == "ended").count();
    match (links.len(), links.len() - up - ended) {
        (0, _) => "-".into(),
        (_, 0) if up == 0 => "end".into(),
        (_, 0) => "up".into(),
        (_, down) if down == links.len() => "DOWN".into(),
        (n, _) => format!("{up}/{n}"),
    }
}

/// Each link of `links` (a status's list) that is not up nor ended, as `WHO ENDPOINT STATE FOR`
/// (`shard0 tcp://lvc:5556 down 9.10s`), escaped: what the engine note says of them.
fn links_down(who: &str, links: &Value) -> Vec<String> {
    let links = links.as_array().map_or(&[][..], Vec::as_slice);
    links
        .iter()
        .filter(|l| !matches!(l["state"].as_str(), Some("up" | "ended")))
        .map(|l| {
            let state = text(l, "state");
            let since = l["for_ns"].as_u64().map(|ns| format!(" {}", crate::diag::human_ns(ns))).unwrap_or_default();
            format!("{who} {} {state}{since}", text(l, "endpoint"))
        })
        .collect()
}

impl Top {
    /// Take one change under [`STATUS_ROOT`].
    pub fn apply(&mut self, c: &Change) {
        let Some(rest) = c.key.strip_prefix(STATUS_ROOT.as_bytes()) else { return };
        let rest = String::from_utf8_lossy(rest);
        let Some((id, what)) = rest.split_once('/') else { return };
        // Why the engine refused a setting's value: text, not JSON.
        if let Some(name) = what.strip_prefix("refused/") {
            let e = self.engines.entry(crate::diag::quoted(id).into_owned()).or_default();
            match &c.value {
                Some(why) => e.refused.insert(name.to_string(), String::from_utf8_lossy(why).into_owned()),
                None => e.refused.remove(name),
            };
            return;
        }
        let value = match c.value.as_ref().map(|v| serde_json::from_slice::<Value>(v)) {
            Some(Err(_)) => {
                self.malformed += 1;
                return;
            }
            v => v.and_then(Result::ok),
        };
        // The id as the screen may show it (escaped, cut when long).
        let e = self.engines.entry(crate::diag::quoted(id).into_owned()).or_default();
        match (what, value) {
            ("engine", Some(v)) => {
                e.status = v;
                e.gone = false;
            }
            ("engine", None) => e.gone = true,
            (s, v) if s.starts_with("shard") => {
                let Ok(k) = s["shard".len()..].parse::<usize>() else {
                    self.malformed += 1;
                    return;
                };
                match v {
                    Some(v) => {
                        let sh = e.shards.entry(k).or_default();
                        let interval = v["intervals"].as_u64();
                        if interval != sh.last_interval {
                            sh.p99_history.push_back(u(&v, "p99_ns"));
                            if sh.p99_history.len() > HISTORY {
                                sh.p99_history.pop_front();
                            }
                            sh.last_interval = interval;
                        }
                        sh.status = v;
                    }
                    None => {
                        e.shards.remove(&k);
                    }
                }
            }
            _ => {}
        }
    }

    /// Engine ids in display order.
    pub fn order(&self) -> Vec<&String> {
        let mut ids: Vec<&String> = self.engines.keys().collect();
        let rate = |id: &String| -> f64 {
            let rates = self.engines[id].shards.values().map(|s| s.status["msgs_per_s"].as_f64().unwrap_or(0.0));
            rates.filter(|r| r.is_finite()).sum()
        };
        let p99 = |id: &String| -> u64 {
            self.engines[id].shards.values().map(|s| u(&s.status, "p99_ns")).max().unwrap_or(0)
        };
        match self.sort {
            Sort::Engine => {}
            Sort::Rate => ids.sort_by(|a, b| rate(b).total_cmp(&rate(a))),
            Sort::P99 => ids.sort_by_key(|id| std::cmp::Reverse(p99(id))),
        }
        ids
    }

    /// Engine `id`'s shard rows at `now_unix_ns` (ENGINE SHARD MSG/S P50 P99 P99.9 MAX GAPS
    /// DISCONN STALLS SNAIL LINK; DISCONN: publisher connections that ended on a bound shard,
    /// STALLS: its reader's self-stalls, SNAIL: the shard's worst verdict over the interval,
    /// LINK: its links to its publishers, [`links_cell`]), none for an engine gone or without
    /// shards. A stale or ended engine's rows say `stale` or `ended` for the rate and `-` for
    /// the interval's percentiles, verdict and links (none of them is current); its counters are
    /// those of its last status.
    fn shard_rows(&self, id: &str, now_unix_ns: u64) -> Vec<[String; 12]> {
        let Some(e) = self.engines.get(id) else { return Vec::new() };
        let past = match e.freshness(now_unix_ns) {
            Freshness::Gone => return Vec::new(),
            Freshness::Stale { .. } => Some("stale"),
            Freshness::Ended { .. } => Some("ended"),
            Freshness::Current => None,
        };
        let stale = past.is_some();
        let rows = e.shards.iter().map(|(k, s)| {
            let st = &s.status;
            let interval = |v: String| if stale { "-".to_string() } else { v };
            [
                id.to_string(),
                format!("shard{k}"),
                past.map_or_else(|| rate(st), String::from),
                interval(latency(st, "p50_ns")),
                interval(latency(st, "p99_ns")),
                interval(latency(st, "p999_ns")),
                interval(latency(st, "max_ns")),
                fit(u(st, "gaps"), 5),
                fit(u(st, "publisher_disconnects"), 4),
                fit(u(st, "self_stalls"), 5),
                interval(if st["snail"].is_string() { snail(st) } else { snail(&e.status) }),
                interval(links_cell(st)),
            ]
        });
        rows.collect()
    }

    /// What engine `id` says as a whole at `now_unix_ns`: `gone` (with how it ended, if its last
    /// status said); or `ended AGE ago: CAUSE` or `stale AGE (status due every INTERVAL)` and the counts
    /// of its last status; or its busiest agent, what its handlers refused (by agent and reason,
    /// those above 0) and its longest self-stall if it had one.
    pub fn engine_note(&self, id: &str, now_unix_ns: u64) -> String {
        let Some(e) = self.engines.get(id) else { return String::new() };
        let st = &e.status;
        let mut note = match e.freshness(now_unix_ns) {
            Freshness::Gone if st["ended"].is_string() => return format!("gone (ended: {})", ended(st)),
            Freshness::Gone => return "gone".into(),
            // How it ended says what its last verdict was; its share was of an interval past.
            Freshness::Ended { age_ns: Some(age_ns) } => format!("ended {} ago: {}", ago(age_ns), ended(st)),
            Freshness::Ended { age_ns: None } => format!("ended: {}", ended(st)),
            // Its busiest agent's share and verdict were of an interval long past: not shown.
            Freshness::Stale { age_ns } => {
                let interval_ns = (st["interval_ms"].as_f64().unwrap_or(0.0) * 1e6) as u64;
                format!(
                    "stale {} (status due every {})",
                    crate::diag::human_ns(age_ns),
                    crate::diag::human_ns(interval_ns)
                )
            }
            Freshness::Current => {
                let mut note = match (st["busiest_agent"].as_str(), busy_share(st)) {
                    (Some(_), Some(b)) => format!("busiest {} {b}", text(st, "busiest_agent")),
                    _ => "busiest -".into(),
                };
                if e.shards.is_empty() {
                    note.push_str(&format!(", snail {}", snail(st)));
                }
                // Its links that are not up, with how long (a cut feed shows first as 0 msg/s).
                let mut down: Vec<String> =
                    e.shards.iter().flat_map(|(k, s)| links_down(&format!("shard{k}"), &s.status["links"])).collect();
                down.extend(links_down("store", &st["store_links"]));
                if !down.is_empty() {
                    note.push_str(&format!(", link {}", down.join(", link ")));
                }
                note
            }
        };
        let refused = u(st, "handler_refused_total");
        note.push_str(&format!(", handler refused {refused}"));
        if refused > 0 {
            let by: Vec<String> = st["handler_refused"]
                .as_object()
                .into_iter()
                .flatten()
                .flat_map(|(agent, reasons)| {
                    let reasons = reasons.as_object().into_iter().flatten();
                    reasons.filter_map(move |(r, n)| {
                        let (agent, r) = (crate::diag::quoted(agent), crate::diag::quoted(r));
                        n.as_u64().filter(|&n| n > 0).map(|n| format!("{agent} {r} {n}"))
                    })
                })
                .collect();
            // An engine that gives no breakdown (an older one): no empty `()`.
            if !by.is_empty() {
                note.push_str(&format!(" ({})", by.join(", ")));
            }
        }
        // Frames its readers dropped (malformed, implausible, over a limit): the reasons are in
        // its report and on its stderr.
        let bad: u64 = e.shards.values().map(|s| u(&s.status, "bad_frames")).fold(0, u64::saturating_add);
        if bad > 0 {
            note.push_str(&format!(", bad frames {bad}"));
        }
        if u(st, "self_stalls") > 0 {
            note.push_str(&format!(", longest self-stall {}", crate::diag::human_ns(u(st, "longest_self_stall_ns"))));
        }
        note
    }

    /// Engine `id`'s live settings as its last status says (`settings: NAME=VALUE, …`, `(changed)`
    /// after one whose value in force is not its value at start) and the values it refused
    /// (`refused: NAME=VALUE (WHY), …`), `; ` between; empty for an engine gone or that says
    /// neither.
    pub fn settings_note(&self, id: &str) -> String {
        let Some(e) = self.engines.get(id).filter(|e| !e.gone) else { return String::new() };
        let st = &e.status;
        let changed: Vec<&str> =
            st["settings_changed"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let settings: Vec<String> = (st["settings"].as_object().into_iter().flatten())
            .map(|(name, v)| {
                let value = v.as_str().map_or_else(|| "?".into(), crate::diag::quoted);
                let mark = if changed.contains(&name.as_str()) { " (changed)" } else { "" };
                format!("{}={value}{mark}", crate::diag::quoted(name))
            })
            .collect();
        let refused: Vec<String> = e.refused.iter().map(|(name, why)| refusal(name, why)).collect();
        let mut parts = Vec::new();
        if !settings.is_empty() {
            parts.push(format!("settings: {}", settings.join(", ")));
        }
        if !refused.is_empty() {
            parts.push(format!("refused: {}", refused.join(", ")));
        }
        parts.join("; ")
    }

    /// The live view's rows at `now_unix_ns`: a shard's columns, then the engine's handler
    /// refusals (REF) and busiest agent's share (BUSY: `stale` or `ended` for an engine whose
    /// status is stale or says it ended, its age or cause in the title); an engine gone or
    /// without shards is one row, `gone` or its share last.
    pub fn rows(&self, now_unix_ns: u64) -> Vec<[String; 14]> {
        let mut rows = Vec::new();
        for id in self.order() {
            let e = &self.engines[id];
            let freshness = e.freshness(now_unix_ns);
            let refused = match freshness {
                Freshness::Gone => String::new(),
                _ => u(&e.status, "handler_refused_total").to_string(),
            };
            let busy = match (freshness, busy_share(&e.status)) {
                (Freshness::Gone, _) => "gone".to_string(),
                (Freshness::Stale { .. }, _) => "stale".to_string(),
                (Freshness::Ended { .. }, _) => "ended".to_string(),
                (Freshness::Current, Some(b)) => b,
                (Freshness::Current, None) => "-".into(),
            };
            let shard_rows = self.shard_rows(id, now_unix_ns);
            if shard_rows.is_empty() {
                let mut r: [String; 14] = Default::default();
                r[0] = id.clone();
                r[1] = "-".into();
                r[10] = if freshness == Freshness::Current { snail(&e.status) } else { "-".into() };
                r[11] = "-".into();
                r[12] = refused;
                r[13] = busy;
                rows.push(r);
                continue;
            }
            for r in shard_rows {
                let [a, b, c, d, e, f, g, h, i, j, k, l] = r;
                rows.push([a, b, c, d, e, f, g, h, i, j, k, l, refused.clone(), busy.clone()]);
            }
        }
        rows
    }

    /// One plain-text frame at `now_unix_ns` (at most 100 columns for engine ids of up to 16
    /// characters): each engine's shard rows, then its line as a whole (`engine` in the SHARD
    /// column), then its settings and refusals (indented under that line).
    pub fn render_text(&self, now_unix_ns: u64) -> String {
        let mut s = String::new();
        let head =
            ["ENGINE", "SHARD", "MSG/S", "P50", "P99", "P99.9", "MAX", "GAPS", "DISCONN", "STALLS", "SNAIL", "LINK"];
        let line = |r: &[String]| {
            format!(
                "{:<16} {:<7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>5} {:>7} {:>6} {:<5} {}\n",
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]
            )
        };
        s.push_str(&line(&head.map(String::from)));
        let order = self.order();
        if order.is_empty() {
            s.push_str("(no engine publishes status in this store)\n");
        }
        for id in order {
            for r in self.shard_rows(id, now_unix_ns) {
                s.push_str(&line(&r));
            }
            let mut lead = format!("{id:<16} {:<7} ", "engine");
            let width = TEXT_COLUMNS.saturating_sub(lead.chars().count());
            for part in wrap_list(&self.engine_note(id, now_unix_ns), width) {
                s.push_str(&format!("{lead}{part}\n"));
                lead = " ".repeat(lead.chars().count());
            }
            let settings = self.settings_note(id);
            if !settings.is_empty() {
                for part in wrap_list(&settings, width) {
                    s.push_str(&format!("{lead}{part}\n"));
                }
            }
        }
        if self.malformed > 0 {
            s.push_str(&format!(
                "({} status values in the store were not an engine's status: ignored)\n",
                self.malformed
            ));
        }
        s
    }
}

/// The width `--once` keeps to.
pub const TEXT_COLUMNS: usize = 100;

/// `list` (items separated by `, `) in lines of at most `width` characters, broken after a
/// separator (its `,` ends the line); an item longer than `width` is broken at its spaces, its
/// words filling the line it starts on (a word longer than `width` has a line of its own).
fn wrap_list(list: &str, width: usize) -> Vec<String> {
    let len = |s: &str| s.chars().count();
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    let items: Vec<&str> = list.split(", ").collect();
    for (i, item) in items.iter().enumerate() {
        // With room for the `,` that ends the line if an item follows.
        let comma = usize::from(i + 1 < items.len());
        let sep = if current.is_empty() { 0 } else { 2 };
        if len(&current) + sep + len(item) + comma <= width {
            if sep > 0 {
                current.push_str(", ");
            }
            current.push_str(item);
            continue;
        }
        if len(item) + comma <= width {
            // On a line of its own (the current one is not empty: the item would fit there).
            lines.push(format!("{current},"));
            current = item.to_string();
            continue;
        }
        // Longer than a line: its words fill this line and the next.
        if !current.is_empty() {
            current.push(',');
        }
        let words: Vec<&str> = item.split(' ').collect();
        for (j, word) in words.iter().enumerate() {
            let end = if j + 1 == words.len() { comma } else { 0 };
            if !current.is_empty() && len(&current) + 1 + len(word) + end > width {
                lines.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
    }
    lines.push(current);
    lines
}

/// Run `mdsub top`.
pub fn top(args: &TopArgs, stop: &StopFlag) -> anyhow::Result<()> {
    let servers = store_servers(&args.store)?;
    // The dashboard needs a terminal: without one, say so now, not after reaching the store.
    let tty = if args.once {
        None
    } else {
        Some(Tty::open().map_err(|e| {
            anyhow::anyhow!("no terminal to draw the dashboard on (/dev/tty: {e}); --once prints one plain-text frame")
        })?)
    };
    super::run_under_way();
    let client = Client::start_with(
        ClientConfig {
            servers: servers.clone(),
            subtree: STATUS_ROOT.into(),
            // A plain frame (--once) may say on stderr why the store does not answer (`not up
            // after 5 s`); the full-screen view keeps stderr off its screen.
            log_links: args.once,
            name: "top".into(),
            // top speaks no CURVE: its link lines must not ask for key flags it has not.
            key_flags: crate::link::KeyFlags::NoKeys,
            ..ClientConfig::default()
        },
        args.idle.strategy(),
    )?;
    super::clone::wait_synced(&client, &servers, (None, false), args.timeout, stop)?;
    let changes = client.watch(STATUS_ROOT.as_bytes())?;
    let mut model = Top::default();
    // The watch starts with every current key.
    while let Ok(c) = changes.recv_timeout(Duration::from_millis(200)) {
        model.apply(&c);
    }
    match tty {
        Some(tty) => interactive(&mut model, &changes, stop, tty),
        None => {
            crate::out!("{}", model.render_text(crate::clock::realtime_ns()));
            Ok(())
        }
    }
}

fn interactive(
    model: &mut Top,
    changes: &crossbeam::channel::Receiver<Change>,
    stop: &StopFlag,
    tty: Tty,
) -> anyhow::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
    let mut terminal = ratatui::try_init().context("starting the terminal view")?;
    let result = (|| -> anyhow::Result<()> {
        let mut last_draw = Instant::now() - Duration::from_secs(1);
        let mut dirty = true;
        while !stop.is_stopped() {
            while let Ok(c) = changes.try_recv() {
                model.apply(&c);
                dirty = true;
            }
            if dirty || last_draw.elapsed() > Duration::from_secs(1) {
                // Redrawn at least once a second: an engine whose status stops coming turns stale.
                terminal.draw(|f| draw(f, model, crate::clock::realtime_ns()))?;
                last_draw = Instant::now();
                dirty = false;
            }
            let input = match tty.wait_input(Duration::from_millis(100)) {
                Ok(input) => input,
                // Nobody is watching any more: end quietly.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                Err(e) => return Err(e.into()),
            };
            if input && event::poll(Duration::ZERO)? {
                if let Event::Key(k) = event::read()? {
                    if k.kind != KeyEventKind::Press {
                        continue;
                    }
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => break,
                        KeyCode::Char('c') if k.modifiers.contains(event::KeyModifiers::CONTROL) => break,
                        KeyCode::Char('s') => model.sort = model.sort.next(),
                        KeyCode::Down | KeyCode::Char('j') => {
                            model.selected = (model.selected + 1).min(model.engines.len().saturating_sub(1))
                        }
                        KeyCode::Up | KeyCode::Char('k') => model.selected = model.selected.saturating_sub(1),
                        _ => {}
                    }
                    dirty = true;
                }
            }
        }
        Ok(())
    })();
    // A hung-up terminal cannot be restored; that is no error of the view's.
    let _ = ratatui::try_restore();
    result
}

/// The terminal the view reads keys from, watched for a hang-up: crossterm
/// 0.28 reads a hung-up terminal in an endless loop (its `read() == 0` is not
/// an end), so a `top` whose tmux or ssh went away would spin at full CPU and
/// never see SIGTERM. Waiting on the terminal here first ends the view instead.
struct Tty {
    fd: std::os::fd::RawFd,
    _owned: Option<std::fs::File>,
}

impl Tty {
    /// The same terminal crossterm reads: stdin when it is one, else `/dev/tty`.
    fn open() -> std::io::Result<Tty> {
        use std::os::fd::AsRawFd;
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(0) } == 1 {
            return Ok(Tty { fd: 0, _owned: None });
        }
        let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty")?;
        Ok(Tty { fd: f.as_raw_fd(), _owned: Some(f) })
    }

    /// Wait up to `timeout` for input: `Ok(true)` when there is some, an
    /// error when the terminal has hung up.
    fn wait_input(&self, timeout: Duration) -> std::io::Result<bool> {
        let mut p = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
        }
        if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the terminal hung up"));
        }
        Ok(p.revents & libc::POLLIN != 0)
    }
}

fn draw(f: &mut ratatui::Frame, model: &Top, now_unix_ns: u64) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Block, Borders, Paragraph, Row, Sparkline, Table};
    let [title, settings, table, spark, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(6),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let order = model.order();
    let selected_id = order.get(model.selected).cloned();
    // The selected engine as a whole: busiest agent, handler refusals by reason, longest self-stall.
    let mut note = selected_id.map(|id| format!(" · {id}: {}", model.engine_note(id, now_unix_ns))).unwrap_or_default();
    if model.malformed > 0 {
        note.push_str(&format!(" · {} malformed status values ignored", model.malformed));
    }
    f.render_widget(
        Paragraph::new(format!("mdsub top: {} engine(s), sorted by {}{note}", model.engines.len(), model.sort.name())),
        title,
    );
    // The selected engine's settings in force and refused values (cut at the screen's edge).
    f.render_widget(Paragraph::new(selected_id.map(|id| model.settings_note(id)).unwrap_or_default()), settings);
    let rows = model.rows(now_unix_ns).into_iter().map(|r| {
        let mut style = Style::default();
        // A shard whose links are not all up stands out (its rate alone reads as a quiet feed).
        if r[11] == "DOWN" || r[11].contains('/') {
            style = style.fg(ratatui::style::Color::Red).add_modifier(Modifier::BOLD);
        }
        if Some(&r[0]) == selected_id {
            style = style.add_modifier(Modifier::REVERSED);
        }
        Row::new(r).style(style)
    });
    // Each column's head and width (the last takes what is left, at least 4): 100 columns with
    // the spacing.
    const COLUMNS: [(&str, u16); 14] = [
        ("ENGINE", 10),
        ("SHARD", 6),
        ("MSG/S", 7),
        ("P50", 8),
        ("P99", 8),
        ("P99.9", 8),
        ("MAX", 8),
        ("GAPS", 5),
        ("DISC", 4),
        ("STALL", 5),
        ("SNAIL", 5),
        ("LINK", 4),
        ("REF", 4),
        ("BUSY", 4),
    ];
    let widths =
        COLUMNS.iter().enumerate().map(
            |(i, &(_, w))| {
                if i + 1 == COLUMNS.len() {
                    Constraint::Min(w)
                } else {
                    Constraint::Length(w)
                }
            },
        );
    let head = Row::new(COLUMNS.map(|(name, _)| name)).style(Style::default().add_modifier(Modifier::BOLD));
    f.render_widget(Table::new(rows, widths).header(head).column_spacing(1), table);
    // The selected engine's first shard's p99 over the last intervals.
    let (label, data): (String, Vec<u64>) = selected_id
        .and_then(|id| {
            let e = &model.engines[id];
            e.shards.iter().next().map(|(k, s)| (format!("{id} shard{k} p99"), s.p99_history.iter().copied().collect()))
        })
        .unwrap_or_else(|| ("p99".into(), Vec::new()));
    f.render_widget(Sparkline::default().block(Block::default().borders(Borders::ALL).title(label)).data(&data), spark);
    f.render_widget(Paragraph::new("q quit  ↑/↓ engine  s sort"), help);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clone::client::ChangeKind;

    /// The wall clock the views are drawn at (statuses without `updated_ns` are current at any).
    const NOW: u64 = 1_800_000_000_000_000_000;

    fn change(key: &str, value: Option<&str>) -> Change {
        Change {
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
            sequence: 1,
            kind: ChangeKind::Live,
        }
    }

    #[test]
    fn a_hostile_store_cannot_drive_the_terminal_or_hide_what_it_sent() {
        // Before: an escape sequence in a key cleared the operator's screen, a status that was
        // not JSON marked its engine `gone` uncounted, and 1e308 msg/s printed 309 digits.
        let mut t = Top::default();
        let evil = "/mdsub/status/\u{1b}[2J\u{1b}[31mEVIL/";
        t.apply(&change(
            &format!("{evil}engine"),
            Some(r#"{"snail":"OK\u001b[2J","busiest_agent":"w\nx","busiest_busy":0.1}"#),
        ));
        t.apply(&change(&format!("{evil}shard0"), Some(r#"{"msgs_per_s":1e308,"intervals":1}"#)));
        t.apply(&change("/mdsub/status/e1/engine", Some("{}")));
        t.apply(&change("/mdsub/status/e1/engine", Some("not json")));
        t.apply(&change("/mdsub/status/e1/shardX", Some("{}")));
        let text = t.render_text(NOW);
        assert!(!text.contains('\u{1b}'), "no raw escape reaches the screen: {text:?}");
        assert!(text.contains("\\u{1b}[2J\\u{1b}[31mEVIL"), "the id shown escaped: {text}");
        assert!(text.contains("busiest w\\nx 10%"), "{text}");
        assert!(text.lines().any(|l| l.contains(" shard0 ") && l.contains("       ? ")), "{text}");
        t.apply(&change("/mdsub/status/e1/engine", Some(r#"{"busiest_agent":"worker0","busiest_busy":1e308}"#)));
        assert!(t.engine_note("e1", NOW).starts_with("busiest worker0 ?,"), "{}", t.engine_note("e1", NOW));
        assert_eq!(t.malformed, 2);
        assert!(!t.engines["e1"].gone, "a malformed value is not an engine gone");
        assert!(text.contains("(2 status values in the store were not an engine's status: ignored)"), "{text}");
    }

    #[test]
    fn shows_shards_keeps_p99_history_and_marks_gone_engines() {
        let mut t = Top::default();
        t.apply(&change("/mdsub/status/e1/engine", Some(r#"{"busiest_agent":"worker0","busiest_busy":0.5}"#)));
        for i in 1..=3u64 {
            let v = format!(
                r#"{{"msgs_per_s":1000,"p50_ns":1000,"p99_ns":{},"p999_ns":5000,"max_ns":9000,"gaps":0,"intervals":{i}}}"#,
                i * 1000
            );
            t.apply(&change("/mdsub/status/e1/shard0", Some(&v)));
            t.apply(&change("/mdsub/status/e1/shard1", Some(&v)));
        }
        t.apply(&change("/mdsub/status/e1/shard1", Some(r#"{"p99_ns":1,"intervals":3}"#)));
        t.apply(&change("/mdsub/status/e2/engine", Some("{}")));
        t.apply(&change("/mdsub/status/e2/engine", None));
        t.apply(&change("/elsewhere/x", Some("{}")));
        let text = t.render_text(NOW);
        assert!(
            text.contains(
                "e1               shard0     1000    1.0µs    3.0µs    5.0µs    9.0µs     0       0      0 -     -\n"
            ),
            "{text}"
        );
        assert!(text.contains("e1               shard1"), "{text}");
        assert!(text.contains("e1               engine  busiest worker0 50%, handler refused 0\n"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("e2 ") && l.ends_with("gone")), "{text}");
        assert_eq!(t.engines["e1"].shards[&0].p99_history, [1000, 2000, 3000]);
        t.sort = Sort::P99;
        assert_eq!(t.order()[0], "e1");
        // Latencies above 60 s are recorded as 60 s: their percentiles are floors.
        let old = r#"{"msgs_per_s":10,"p50_ns":1000,"p99_ns":60030000000,"p999_ns":60030000000,"max_ns":60030000000,"gaps":0,"intervals":4,"clamped":2}"#;
        t.apply(&change("/mdsub/status/e3/shard0", Some(old)));
        let row = t.render_text(NOW).lines().find(|l| l.starts_with("e3 ")).expect("e3's row").to_string();
        assert!(row.contains("   1.0µs     ≥60s     ≥60s     ≥60s "), "{row}");
        // Send times ahead of the engine's clock are recorded as 1 ns: not a 1 ns latency.
        let ahead =
            r#"{"msgs_per_s":10,"p50_ns":1,"p99_ns":1,"p999_ns":1,"max_ns":1,"gaps":0,"intervals":4,"ahead":10}"#;
        t.apply(&change("/mdsub/status/e3/shard0", Some(ahead)));
        let row = t.render_text(NOW).lines().find(|l| l.starts_with("e3 ")).expect("e3's row").to_string();
        assert!(row.contains("      <0s      <0s      <0s      <0s "), "{row}");
        // An idle interval: no latency, not 0ns.
        let idle =
            r#"{"msgs_per_s":0,"p50_ns":null,"p99_ns":null,"p999_ns":null,"max_ns":null,"gaps":0,"intervals":5}"#;
        t.apply(&change("/mdsub/status/e3/shard0", Some(idle)));
        let row = t.render_text(NOW).lines().find(|l| l.starts_with("e3 ")).expect("e3's row").to_string();
        assert!(row.contains("        0        -        -        -        - "), "{row}");
        assert_eq!(t.engines["e1"].shards[&1].p99_history.len(), 3, "same interval: no new point");
    }

    /// The SNAIL column is the shard's own verdict, the worst over the interval: a SNAIL over by
    /// the time the status was published still shows. Before, every row showed the engine's
    /// verdict at that instant, and a 2.5 s SNAIL under `--snail warn` never reached `top`.
    #[test]
    fn the_snail_column_is_the_shards_worst_verdict_over_the_interval() {
        let mut t = Top::default();
        t.apply(&change("/mdsub/status/e1/engine", Some(r#"{"snail":"OK","snail_worst":"SNAIL"}"#)));
        t.apply(&change("/mdsub/status/e1/shard0", Some(r#"{"intervals":1,"snail":"OK","snail_worst":"SNAIL"}"#)));
        t.apply(&change("/mdsub/status/e1/shard1", Some(r#"{"intervals":1,"snail":"OK","snail_worst":"OK"}"#)));
        t.apply(&change("/mdsub/status/e2/engine", Some(r#"{"snail":"WARN"}"#)));
        t.apply(&change("/mdsub/status/e2/shard0", Some(r#"{"intervals":1}"#)));
        let rows = t.rows(NOW);
        let snail: Vec<(&str, &str, &str)> = rows.iter().map(|r| (&r[0][..], &r[1][..], &r[10][..])).collect();
        assert_eq!(
            snail,
            [("e1", "shard0", "SNAIL"), ("e1", "shard1", "OK"), ("e2", "shard0", "WARN")],
            "an engine that says no shard verdict: its own"
        );
    }

    /// Frames a reader dropped (a publisher over its limit, say) show in the engine's note,
    /// summed over its shards; before, `top` showed nothing of them.
    #[test]
    fn shows_bad_frames_in_the_engine_note() {
        let mut t = Top::default();
        t.apply(&change("/mdsub/status/e1/engine", Some(r#"{"busiest_agent":"worker0","busiest_busy":0.5}"#)));
        for (k, bad) in [(0, 534459), (1, 2)] {
            let shard = format!(r#"{{"msgs_per_s":10,"p50_ns":1000,"gaps":0,"intervals":1,"bad_frames":{bad}}}"#);
            t.apply(&change(&format!("/mdsub/status/e1/shard{k}"), Some(&shard)));
        }
        assert_eq!(t.engine_note("e1", NOW), "busiest worker0 50%, handler refused 0, bad frames 534461");
    }

    /// A publisher that keeps reconnecting to a bound shard, a reader that stalled and a handler
    /// refusing orders show in both views: per shard DISCONN and STALLS, per engine the handler's
    /// refusals by agent and reason and the longest self-stall. Before, none reached `top`.
    #[test]
    fn shows_publisher_disconnects_self_stalls_and_handler_refusals() {
        let mut t = Top::default();
        let engine = r#"{"busiest_agent":"shard0-reader","busiest_busy":1.0,"snail":"WARN","self_stalls":1,
            "longest_self_stall_ns":2340000000,"handler_refused_total":3,
            "handler_refused":{"shard0-reader":{"orders_full":0,"levels_full":3}}}"#;
        t.apply(&change("/mdsub/status/engine-with-a-long/engine", Some(engine)));
        let shard = r#"{"msgs_per_s":123456,"p50_ns":123450000,"p99_ns":999990000,"p999_ns":59990000000,
            "max_ns":60030000000,"clamped":1,"gaps":123456,"publisher_connects":3,"publisher_disconnects":2,
            "self_stalls":1,"intervals":1}"#;
        t.apply(&change("/mdsub/status/engine-with-a-long/shard0", Some(shard)));
        let text = t.render_text(NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ENGINE           SHARD     MSG/S      P50      P99    P99.9      MAX  GAPS DISCONN STALLS SNAIL LINK"
        );
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row[1..],
            ["shard0", "123456", "123.45ms", "999.99ms", "59.99s", "≥60s", "123k", "2", "1", "WARN", "-"]
        );
        assert_eq!(
            lines[2..],
            [
                "engine-with-a-long engine  busiest shard0-reader 100%,",
                "                           handler refused 3 (shard0-reader levels_full 3), longest self-stall 2.34s",
            ]
        );
        let live = t.rows(NOW);
        assert_eq!(live[0][8..], ["2", "1", "WARN", "-", "3", "100%"]);
        // An engine id of up to 16 characters: 100 columns at most.
        t.engines = [("engine-id-16char".to_string(), t.engines["engine-with-a-long"].clone())].into();
        let text = t.render_text(NOW);
        assert!(text.lines().all(|l| l.chars().count() <= TEXT_COLUMNS), "{text}");
        assert_eq!(text.lines().count(), 4, "{text}");
        assert_eq!(wrap_list("a, bb, c", 4), ["a,", "bb,", "c"]);
        assert_eq!(wrap_list("a, bb, c", 5), ["a,", "bb, c"]);
        assert_eq!(wrap_list("a, bb, c", 6), ["a, bb,", "c"]);
        t.apply(&change("/mdsub/status/engine-id-16char/engine", None));
        assert_eq!(t.rows(NOW)[0][12..], ["", "gone"]);
        assert!(t.render_text(NOW).ends_with("engine-id-16char engine  gone\n"));
    }

    /// Counts past their column's width are cut to three figures with a unit, never wider.
    #[test]
    fn counts_fit_their_columns() {
        let cases = [
            (99_999, 5, "99999"),
            (123_456, 5, "123k"),
            (999_999, 5, "1.00M"),
            (1_234_567, 5, "1.23M"),
            (1_234_567, 4, "1.2M"),
            (12_345_678, 5, "12.3M"),
            (987_654_321, 5, "988M"),
            (12_345_678, 7, "12.3M"),
            (9_999_999, 7, "9999999"),
            (u64::MAX, 5, "18.4E"),
        ];
        for (n, width, shown) in cases {
            assert_eq!(fit(n, width), shown, "{n} in {width}");
        }
        for n in (0..64).map(|b| 1u64 << b).chain((0..20).map(|e| 10u64.pow(e) - 1)) {
            for width in 4..=8 {
                assert!(fit(n, width).len() <= width, "{n} in {width}: {}", fit(n, width));
            }
        }
    }

    /// A shard whose links to its publishers are down says so in its LINK column, and the
    /// engine's line names each link not up (the store's too) with how long. Before, an LVC
    /// outage showed only as 0 msg/s and rising gaps.
    #[test]
    fn links_not_up_show_in_the_link_column_and_the_engine_line() {
        let mut t = Top::default();
        let engine = r#"{"busiest_agent":"shard0-reader","busiest_busy":0.01,
            "store_links":[{"endpoint":"tcp://store:5557","state":"up","for_ns":5000000000}]}"#;
        t.apply(&change("/mdsub/status/e1/engine", Some(engine)));
        let link = |ep: &str, state: &str, for_ns: u64| {
            format!(r#"{{"endpoint":"{ep}","state":"{state}","for_ns":{for_ns},"down_ns":{for_ns}}}"#)
        };
        let shard = |links: &[String]| format!(r#"{{"msgs_per_s":0,"intervals":1,"links":[{}]}}"#, links.join(","));
        t.apply(&change("/mdsub/status/e1/shard0", Some(&shard(&[link("tcp://lvc:5556", "down", 9_100_000_000)]))));
        let both = [link("tcp://a:1", "up", 1), link("tcp://b:2", "connecting", 3_000_000_000)];
        t.apply(&change("/mdsub/status/e1/shard1", Some(&shard(&both))));
        t.apply(&change("/mdsub/status/e1/shard2", Some(&shard(&[link("tcp://a:1", "up", 1)]))));
        // A bound shard, or an engine that does not say: no links.
        t.apply(&change("/mdsub/status/e1/shard3", Some(r#"{"msgs_per_s":5,"intervals":1}"#)));
        let text = t.render_text(NOW);
        let link_col = |shard: &str| {
            let row = text.lines().find(|l| l.split_whitespace().nth(1) == Some(shard)).expect("row");
            row.split_whitespace().last().unwrap_or_default().to_string()
        };
        assert_eq!(
            ["shard0", "shard1", "shard2", "shard3"].map(link_col),
            ["DOWN", "1/2", "up", "-"].map(String::from),
            "{text}"
        );
        let note = t.engine_note("e1", NOW);
        assert!(
            note.contains(", link shard0 tcp://lvc:5556 down 9.10s, link shard1 tcp://b:2 connecting 3.00s,"),
            "{note}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= TEXT_COLUMNS), "{text}");
        assert_eq!(t.rows(NOW).iter().map(|r| r[11].as_str()).collect::<Vec<_>>(), ["DOWN", "1/2", "up", "-"]);
        // The store link down too; and a stale engine's links are of the past: not shown.
        let engine = r#"{"store_links":[{"endpoint":"tcp://store:5557","state":"down","for_ns":2000000000}]}"#;
        t.apply(&change("/mdsub/status/e1/engine", Some(engine)));
        let note = t.engine_note("e1", NOW);
        assert!(note.contains(", link store tcp://store:5557 down 2.00s,"), "{note}");
        let stale = r#"{"updated_ns":1,"interval_ms":1000}"#;
        t.apply(&change("/mdsub/status/e1/engine", Some(stale)));
        assert!(!t.engine_note("e1", NOW).contains("link"), "{}", t.engine_note("e1", NOW));
        assert_eq!(t.rows(NOW)[0][11], "-");
    }

    /// One rule for both views: an engine whose last status is older than two of its intervals
    /// is stale, with its age, and none of its rates or percentiles shows as current; one whose
    /// status was deleted is gone. Before, `--once` showed a killed engine's last rate as live
    /// until its status expired, and the live view said nothing until then either.
    #[test]
    fn an_engine_whose_status_stopped_coming_is_stale_in_both_views() {
        let mut t = Top::default();
        let at = |age_ms: i64| (NOW as i64 - age_ms * 1_000_000) as u64;
        let engine = |age_ms: i64| {
            format!(
                r#"{{"interval_ms":1000.0,"updated_ns":{},"busiest_agent":"worker0","busiest_busy":0.5,"handler_refused_total":2}}"#,
                at(age_ms)
            )
        };
        let shard = r#"{"msgs_per_s":1999,"p50_ns":1000,"p99_ns":3000,"p999_ns":5000,"max_ns":9000,"gaps":4,"intervals":7,"snail":"OK"}"#;
        t.apply(&change("/mdsub/status/e3/engine", Some(&engine(1_900))));
        t.apply(&change("/mdsub/status/e3/shard0", Some(shard)));
        assert_eq!(t.engines["e3"].freshness(NOW), Freshness::Current, "within two intervals");
        let text = t.render_text(NOW);
        assert!(text.contains("e3               shard0     1999    1.0µs    3.0µs"), "{text}");
        assert_eq!(t.rows(NOW)[0][13], "50%");

        t.apply(&change("/mdsub/status/e3/engine", Some(&engine(2_500))));
        assert_eq!(t.engines["e3"].freshness(NOW), Freshness::Stale { age_ns: 2_500_000_000 });
        let text = t.render_text(NOW);
        assert!(
            text.contains(
                "e3               shard0    stale        -        -        -        -     4       0      0 -     -\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("e3               engine  stale 2.50s (status due every 1.00s), handler refused 2\n"),
            "{text}"
        );
        assert!(!text.contains("1999") && !text.contains("busiest"), "no rate or share as current: {text}");
        let live = t.rows(NOW);
        assert_eq!(
            (&live[0][2][..], &live[0][4][..], &live[0][12][..], &live[0][13][..]),
            ("stale", "-", "2", "stale")
        );
        assert!(t.engine_note("e3", NOW).starts_with("stale 2.50s"), "the live view's title says its age");

        // A time ahead of this host's clock (the hosts disagree), or none: not judged stale.
        t.apply(&change("/mdsub/status/e3/engine", Some(&engine(-60_000))));
        assert_eq!(t.engines["e3"].freshness(NOW), Freshness::Current);
        t.apply(&change("/mdsub/status/e3/engine", Some(r#"{"interval_ms":1000.0}"#)));
        assert_eq!(t.engines["e3"].freshness(NOW), Freshness::Current);
        t.apply(&change("/mdsub/status/e3/engine", None));
        assert_eq!(t.engines["e3"].freshness(NOW), Freshness::Gone);
        assert!(t.render_text(NOW).ends_with("e3               engine  gone\n"));
    }

    /// An engine that ended by a croak leaves a last status saying how: both views show it
    /// ended with that cause, by the one rule, none of its rates as current; when it expires
    /// the live view says `gone` with the cause. Before, the engine deleted its status as on a
    /// clean exit and vanished from `top` without a word.
    #[test]
    fn an_engine_that_ended_by_a_croak_shows_ended_with_its_cause_in_both_views() {
        let mut t = Top::default();
        let cause = "the snail croaked: SNAIL on shard0 (shard0-reader): publisher 0 topic HGF6: lag 3.01s \
                     (max_lag 1.00s, above it for 2.01s, grace 1.00s); last good seq 8392; policy croak";
        // Older than two intervals too: ended says more than stale.
        let engine = format!(
            r#"{{"interval_ms":1000.0,"updated_ns":{},"busiest_agent":"worker0","busiest_busy":0.5,"snail":"SNAIL","ended":"{cause}"}}"#,
            NOW - 5_000_000_000
        );
        t.apply(&change("/mdsub/status/croaked-e1/engine", Some(&engine)));
        let shard = r#"{"msgs_per_s":1999,"p50_ns":1000,"p99_ns":3000,"p999_ns":5000,"max_ns":9000,"gaps":4,"intervals":7,"snail":"SNAIL"}"#;
        t.apply(&change("/mdsub/status/croaked-e1/shard0", Some(shard)));
        assert_eq!(t.engines["croaked-e1"].freshness(NOW), Freshness::Ended { age_ns: Some(5_000_000_000) });
        let text = t.render_text(NOW);
        assert!(
            text.contains(
                "croaked-e1       shard0    ended        -        -        -        -     4       0      0 -     -\n"
            ),
            "{text}"
        );
        let note: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("croaked-e1       engine  ")).collect();
        let joined = note.iter().map(|l| l[25..].trim_end()).collect::<Vec<_>>().join(" ");
        assert!(joined.starts_with(&format!("ended 5s ago: {cause}, handler refused 0")), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= TEXT_COLUMNS), "fits 100 columns: {text}");
        assert!(!text.contains("1999") && !text.contains("busiest"), "no rate or share as current: {text}");
        let live = t.rows(NOW);
        assert_eq!((&live[0][2][..], &live[0][10][..], &live[0][13][..]), ("ended", "-", "ended"));
        // The live view's title says it too, and the age counts on with the clock.
        assert!(t.engine_note("croaked-e1", NOW).starts_with("ended 5s ago: the snail croaked: SNAIL on shard0"));
        let later = NOW + 60_500_000_000;
        assert!(t.engine_note("croaked-e1", later).starts_with("ended 1m05s ago: the snail croaked"));
        // A status that says no time, or one ahead of this host's clock: no age.
        assert_eq!(t.engines["croaked-e1"].freshness(NOW - 6_000_000_000), Freshness::Ended { age_ns: None });
        assert!(t.engine_note("croaked-e1", NOW - 6_000_000_000).starts_with("ended: the snail croaked"));
        // Its keys expire while the live view watches: gone, and how it ended.
        t.apply(&change("/mdsub/status/croaked-e1/engine", None));
        t.apply(&change("/mdsub/status/croaked-e1/shard0", None));
        assert!(t.engine_note("croaked-e1", NOW).starts_with("gone (ended: the snail croaked: SNAIL"));
        assert_eq!(t.rows(NOW)[0][13], "gone");
    }

    /// The engine's `refused/NAME` keys are its own (text by design), not junk: shown with the
    /// settings in force, those changed since start marked. Before, `top` counted each as a
    /// malformed status value and showed no setting at all.
    #[test]
    fn settings_in_force_and_refused_values_are_shown_not_counted_as_malformed() {
        let mut t = Top::default();
        let engine = r#"{"busiest_agent":"worker0","busiest_busy":0.5,"settings":{"log_level":"info",
            "metrics_interval":"2s","snail_grace":"1s","snail_max_lag":"1s","snail_policy":"warn"},
            "settings_changed":["metrics_interval","snail_policy"]}"#;
        t.apply(&change("/mdsub/status/e1/engine", Some(engine)));
        t.apply(&change("/mdsub/status/e1/refused/snail_grace", Some("`fast` refused: not a duration (e.g. 300ms)")));
        t.apply(&change("/mdsub/status/e1/refused/colour", Some("unknown setting `colour` (known: log_level, …)")));
        t.apply(&change("/mdsub/status/e1/refused/log_level", Some("`\u{1b}[2J` refused: not a log level")));
        assert_eq!(t.malformed, 0, "the engine's refusals are not malformed");
        assert_eq!(
            t.settings_note("e1"),
            "settings: log_level=info, metrics_interval=2s (changed), snail_grace=1s, snail_max_lag=1s, \
             snail_policy=warn (changed); refused: colour (unknown setting `colour` (known: log_level, …)), \
             log_level=\\u{1b}[2J (not a log level), snail_grace=fast (not a duration (e.g. 300ms))"
        );
        let text = t.render_text(NOW);
        assert!(!text.contains("not an engine's status"), "{text}");
        assert!(!text.contains('\u{1b}'), "no raw escape reaches the screen: {text:?}");
        assert!(text.lines().all(|l| l.chars().count() <= TEXT_COLUMNS), "fits 100 columns: {text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "e1               engine  busiest worker0 50%, snail -, handler refused 0");
        assert!(
            lines[2].starts_with("                         settings: log_level=info, metrics_interval=2s (changed),")
        );
        // A refusal withdrawn (a good value applied, or the setting deleted) leaves the view.
        t.apply(&change("/mdsub/status/e1/refused/snail_grace", None));
        t.apply(&change("/mdsub/status/e1/refused/colour", None));
        t.apply(&change("/mdsub/status/e1/refused/log_level", None));
        assert!(!t.settings_note("e1").contains("refused"), "{}", t.settings_note("e1"));
        // An engine that says no settings (an older one): no line.
        t.apply(&change("/mdsub/status/e2/engine", Some("{}")));
        assert_eq!(t.settings_note("e2"), "");
    }

    #[test]
    fn a_list_item_longer_than_a_line_is_broken_at_its_spaces() {
        assert_eq!(wrap_list("a, bb cc dd, e", 5), ["a, bb", "cc", "dd, e"]);
        assert_eq!(wrap_list("aaaa, bb cc dd", 7), ["aaaa,", "bb cc", "dd"]);
        assert_eq!(wrap_list("abcdefgh, i", 4), ["abcdefgh,", "i"], "a word longer than a line stays whole");
    }
}
