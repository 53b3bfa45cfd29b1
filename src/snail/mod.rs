//! The Suicidal Snail (the guide's slow-subscriber detection): every message's
//! lag is judged where it is read (the shard's reader: the wire is behind)
//! and where it is handled (the worker: the handler is behind), silence is
//! judged on the reader, and a [`Policy`] decides what a bad verdict does:
//! croak (scream and stop the engine), warn (log and count), rest (skip the
//! backlog and rejoin live), or nothing.
//!
//! Layers, as everywhere in mdsub:
//! - cores, socket-free and clock-free, taking `(header, now_ns)`:
//!   [`lag::LagDetector`] (OK / WARN / SNAIL over a window, Burrow-style, with
//!   a grace so a short spike is not a snail, and a skew-tolerant mode) and
//!   [`Silence`] (STOP: no frame and no heartbeat for `silence_ns`);
//! - [`Guard`]: one per reader or worker, applies the policy, keeps the
//!   site's counters, builds the [`Scream`] (allocation only on a verdict
//!   change, never per message);
//! - [`SnailBoard`]: the shared, readable state of every site (plain atomics,
//!   for reports and metrics exporters) and the croak slot the engine reads;
//! - [`monitor`]: the engine's monitor PUB, which publishes every scream and
//!   a periodic state message (frame format in `docs/SNAIL.md`).
//!
//! Sequence gaps, duplicates and restarts (the snail's other half) are judged
//! by [`crate::engine::sequence`] on the reader and reported beside the verdicts.

pub mod lag;
pub mod monitor;

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};

use crossbeam::channel::Sender;
use serde::{Deserialize, Serialize};

use crate::diag::human_ns;
use crate::diag::{Refusals, SUMMARY_INTERVAL_NS};
use crate::wire::Header;
use lag::LagDetector;

/// Exit code of `mdsub engine` / `mdsub demo` when a snail croaked.
pub const EXIT_CODE_CROAK: i32 = 3;

/// The snail's defaults, in one place (profiles, CLI and `SnailConfig::default`).
pub mod defaults {
    /// Lag above which a message is late (the guide's example: 1 s).
    pub const MAX_LAG_MS: u64 = 1_000;
    /// How long the lag must stay above `max_lag` to be a snail.
    pub const GRACE_MS: u64 = 1_000;
    /// The warn window: lag rising through all of it is a warning.
    pub const WINDOW_MS: u64 = 2_000;
    /// No frame and no heartbeat for this long is STOP (replay heartbeats every second when idle).
    pub const SILENCE_MS: u64 = 5_000;
    /// Skew-tolerant mode: lag is judged against the lowest seen over this long.
    pub const SKEW_WINDOW_MS: u64 = 30_000;
    /// At most one warn log line per site this often.
    pub const WARN_EVERY_MS: u64 = 1_000;
    /// Policy `rest`: how long a snail skips everything before it rejoins (Aeron's resting timeout).
    pub const REST_MS: u64 = 10_000;
    /// The monitor publishes the state of every site this often.
    pub const STATE_EVERY_MS: u64 = 250;
    /// The max lag a snail may be given (flag, profile and live setting alike).
    pub const MAX_LAG_RANGE_MS: std::ops::RangeInclusive<u64> = 1..=3_600_000;
    /// The grace a snail may be given (flag, profile and live setting alike).
    pub const GRACE_RANGE_MS: std::ops::RangeInclusive<u64> = 0..=3_600_000;
}

const MS: u64 = 1_000_000;

/// What a verdict does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// SNAIL or STOP: scream on stderr and the monitor, stop the engine,
    /// exit with [`EXIT_CODE_CROAK`] (the guide's pattern). WARN is logged.
    #[default]
    Croak,
    /// Log (rate-limited), count, publish on the monitor, keep going.
    Warn,
    /// SNAIL: Aeron's untethered subscription. The site drops its backlog:
    /// it skips every message for `rest_ns`, then skips those still later
    /// than `max_lag_ns` until one is live, and rejoins there. Skipped
    /// messages are counted. STOP is logged and counted as under `warn`.
    Rest,
    /// No checks at all (for measuring what they cost).
    Off,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Croak => "croak",
            Policy::Warn => "warn",
            Policy::Rest => "rest",
            Policy::Off => "off",
        }
    }

    /// The policy stored as `p as u8` (unknown values: croak, the default).
    pub fn from_u8(v: u8) -> Policy {
        match v {
            1 => Policy::Warn,
            2 => Policy::Rest,
            3 => Policy::Off,
            _ => Policy::Croak,
        }
    }

    pub fn from_name(s: &str) -> Option<Policy> {
        match s {
            "croak" => Some(Policy::Croak),
            "warn" => Some(Policy::Warn),
            "rest" => Some(Policy::Rest),
            "off" => Some(Policy::Off),
            _ => None,
        }
    }
}

/// How publisher and subscriber clocks relate (see [`lag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SkewMode {
    /// One clock (one host, or PTP/NTP): lag = now − send time.
    #[default]
    Synchronised,
    /// Lag relative to the lowest seen over `skew_window_ns`.
    #[serde(rename = "skew-tolerant")]
    Tolerant,
}

impl SkewMode {
    /// The name in profiles and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SkewMode::Synchronised => "synchronised",
            SkewMode::Tolerant => "skew-tolerant",
        }
    }
}

/// A verdict, worst last (so `max` picks the worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
#[repr(u8)]
pub enum Verdict {
    #[default]
    Ok = 0,
    /// Lag rose through the whole window.
    Warn = 1,
    /// Lag above `max_lag` for longer than the grace.
    Snail = 2,
    /// No frame and no heartbeat for `silence` (we are stuck, or the publisher is gone).
    Stop = 3,
}

impl Verdict {
    pub fn from_u8(v: u8) -> Verdict {
        match v {
            1 => Verdict::Warn,
            2 => Verdict::Snail,
            3 => Verdict::Stop,
            _ => Verdict::Ok,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Warn => "WARN",
            Verdict::Snail => "SNAIL",
            Verdict::Stop => "STOP",
        }
    }
}

/// The worst verdict over a stretch of time, for a view that samples the verdict once an
/// interval (the status line, the store's status, `top`): a SNAIL shorter than the interval is
/// over when the view looks, but it turned, and the turn counts say so.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorstSince {
    /// WARN, SNAIL and STOP turns counted at the last look.
    turns: [u64; 3],
    /// The verdict in force at the last look.
    verdict: Verdict,
}

impl WorstSince {
    /// The worst verdict since the last call: the one in force then, the one in force `now`,
    /// and any a site turned to meanwhile (`turns`: its WARN, SNAIL and STOP turns so far).
    pub fn next(&mut self, now: Verdict, turns: [u64; 3]) -> Verdict {
        let turned = [Verdict::Warn, Verdict::Snail, Verdict::Stop]
            .into_iter()
            .zip(turns.iter().zip(self.turns))
            .filter(|(_, (now, then))| *now > then)
            .map(|(v, _)| v);
        let worst = turned.fold(self.verdict.max(now), Verdict::max);
        *self = WorstSince { turns, verdict: now };
        worst
    }
}

/// The WARN, SNAIL and STOP turns of `sites`, summed.
pub fn turns<'a>(sites: impl IntoIterator<Item = &'a SiteReport>) -> [u64; 3] {
    sites.into_iter().fold([0; 3], |[w, s, t], x| [w + x.warns, s + x.snails, t + x.stops])
}

/// The snail's settings (a profile's `[snail]`, resolved to ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnailConfig {
    pub policy: Policy,
    pub max_lag_ns: u64,
    pub grace_ns: u64,
    pub window_ns: u64,
    /// 0: silence is not judged.
    pub silence_ns: u64,
    pub skew: SkewMode,
    pub skew_window_ns: u64,
    pub warn_every_ns: u64,
    /// Policy `rest`: how long to skip everything after a SNAIL.
    pub rest_ns: u64,
}

impl Default for SnailConfig {
    fn default() -> Self {
        SnailConfig {
            policy: Policy::default(),
            max_lag_ns: defaults::MAX_LAG_MS * MS,
            grace_ns: defaults::GRACE_MS * MS,
            window_ns: defaults::WINDOW_MS * MS,
            silence_ns: defaults::SILENCE_MS * MS,
            skew: SkewMode::default(),
            skew_window_ns: defaults::SKEW_WINDOW_MS * MS,
            warn_every_ns: defaults::WARN_EVERY_MS * MS,
            rest_ns: defaults::REST_MS * MS,
        }
    }
}

/// A gap this long between two calls of the shell into the silence judge
/// ([`Silence::ran`]) is a self-stall: the subscriber itself did not run (its
/// process stopped with SIGSTOP, its VM or host paused, its thread starved,
/// or with `handoff = "inline"` one handler call held the reader that long),
/// so it cannot say whether the publisher was silent meanwhile.
///
/// Why 1 s: a reader calls in at least once per round (on every frame heard,
/// and after every idle or blocked wait), and the longest wait of any idle
/// strategy is `block`'s 100 ms (`backoff`, the default: 1 ms), so 1 s is ten
/// of the longest waits and a thousand of the default's. It is also a fifth of
/// the default silence (5 s): a stall shorter than it cannot, with the
/// publisher's heartbeat every second, make a STOP on its own.
/// (`engine::reader`'s tests check it against every idle strategy.)
pub const SELF_STALL_NS: u64 = 1_000_000_000;

/// A shell's calls into a core, to tell a self-stall: two calls at least [`SELF_STALL_NS`]
/// apart mean the shell itself did not run between them, so nothing can be judged of what
/// it did not hear meanwhile. Served by the snail's [`Silence`] and the reader's own silence
/// line (`engine::reader::Checks`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cadence {
    /// The shell's last call (0: none yet, or its cadence is not known).
    last_ran_ns: u64,
    /// When the last self-stall ended (0: none): quiet is judged from here at the earliest.
    resumed_ns: u64,
}

impl Cadence {
    /// The shell ran at `now_ns`. `Some(gap)` when the gap since its last call makes this the
    /// end of a self-stall (the resumption is then `now_ns`).
    #[inline]
    pub fn ran(&mut self, now_ns: u64) -> Option<u64> {
        let gap = now_ns.saturating_sub(self.last_ran_ns);
        let known = self.last_ran_ns != 0;
        self.last_ran_ns = now_ns;
        if !known || gap < SELF_STALL_NS {
            return None;
        }
        self.resumed_ns = now_ns;
        Some(gap)
    }

    /// The shell also ran at `t_ns`, told later (the reader's last frame, not told per frame):
    /// the last run moves up to it, if later; no stall is judged.
    #[inline]
    pub fn ran_before(&mut self, t_ns: u64) {
        self.last_ran_ns = self.last_ran_ns.max(t_ns);
    }

    /// The shell stopped calling at its cadence: the next call starts it again, no stall.
    pub fn forget(&mut self) {
        self.last_ran_ns = 0;
    }

    /// When the last self-stall ended (0: none).
    pub fn resumed_ns(&self) -> u64 {
        self.resumed_ns
    }
}

/// The silence detector (a socket-free core): STOP when nothing at all (no
/// data, no heartbeat) was heard for `silence_ns`. Armed by the first frame,
/// disarmed by an end of stream (a publisher that said goodbye is quiet by
/// right) until the next frame.
///
/// Silence is judged only over time the subscriber itself ran: the shell says
/// when it runs ([`Silence::ran`]), and after a self-stall (a gap of at least
/// [`SELF_STALL_NS`] between two calls) the quiet is counted from the
/// resumption, not from the last frame heard before the stall.
#[derive(Debug, Clone)]
pub struct Silence {
    silence_ns: u64,
    last_heard_ns: u64,
    armed: bool,
    /// The shell's calls: quiet is judged from the end of its last self-stall at the earliest.
    cadence: Cadence,
    self_stalls: u64,
    longest_self_stall_ns: u64,
}

impl Silence {
    pub fn new(silence_ns: u64) -> Self {
        Silence {
            silence_ns,
            last_heard_ns: 0,
            armed: false,
            cadence: Cadence::default(),
            self_stalls: 0,
            longest_self_stall_ns: 0,
        }
    }

    /// The shell ran at `now_ns` (it calls this with every frame heard and every
    /// silence check). `Some(gap)` when the gap since its last call makes this the
    /// end of a self-stall: counted, and silence is judged from `now_ns` on.
    #[inline]
    pub fn ran(&mut self, now_ns: u64) -> Option<u64> {
        let gap = self.cadence.ran(now_ns)?;
        self.self_stalls += 1;
        self.longest_self_stall_ns = self.longest_self_stall_ns.max(gap);
        Some(gap)
    }

    /// The shell stopped calling at its cadence (the checks were off): the next
    /// call starts it again and is no stall.
    pub fn forget_cadence(&mut self) {
        self.cadence.forget();
    }

    /// Something arrived at `now_ns`.
    #[inline]
    pub fn heard(&mut self, now_ns: u64) {
        self.last_heard_ns = now_ns;
        self.armed = self.silence_ns > 0;
    }

    /// An end of stream arrived: quiet from here on is expected.
    pub fn ended(&mut self) {
        self.armed = false;
    }

    /// How long it has been silent at `now_ns`, if that is a STOP: since the
    /// last frame heard, or since the end of the last self-stall if later.
    pub fn check(&self, now_ns: u64) -> Option<u64> {
        let quiet = now_ns.saturating_sub(self.last_heard_ns.max(self.cadence.resumed_ns()));
        (self.armed && quiet >= self.silence_ns).then_some(quiet)
    }

    /// Self-stalls so far, and the longest (ns).
    pub fn self_stalls(&self) -> (u64, u64) {
        (self.self_stalls, self.longest_self_stall_ns)
    }
}

/// The live state of one site (a reader or a worker): single writer (its
/// agent, once per round), read by anyone. Plain atomics, so a metrics
/// exporter can read them without knowing the snail.
#[derive(Debug, Default)]
pub struct SiteState {
    /// The current [`Verdict`] as its `u8`.
    pub verdict: AtomicU8,
    /// Messages judged.
    pub checked: AtomicU64,
    /// Lag of the last message judged, ns.
    pub last_lag_ns: AtomicU64,
    /// Highest lag judged, ns.
    pub max_lag_ns: AtomicU64,
    /// Times the verdict turned WARN, SNAIL, STOP.
    pub warns: AtomicU64,
    pub snails: AtomicU64,
    pub stops: AtomicU64,
    /// Policy `rest`: rests taken, and messages skipped by them.
    pub rests: AtomicU64,
    pub skipped: AtomicU64,
    /// Self-stalls of the site (readers: [`SELF_STALL_NS`] or more without
    /// running), and the longest, ns.
    pub self_stalls: AtomicU64,
    pub longest_self_stall_ns: AtomicU64,
}

/// Where a site sits: its role name and shard (None: a worker serving several shards).
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub role: String,
    pub shard: Option<usize>,
}

/// The settings that can change while the engine runs (live settings from
/// the clone store): each site's guard takes them up at its next publish
/// (once per batch or idle round), never per message.
#[derive(Debug, Default)]
pub struct LiveSnail {
    /// Bumped on every change; a guard compares it with what it last took.
    version: AtomicU64,
    max_lag_ns: AtomicU64,
    grace_ns: AtomicU64,
    policy: AtomicU8,
}

/// Every site's state, the settings, and the croak slot.
#[derive(Debug)]
pub struct SnailBoard {
    /// The settings at start; [`SnailBoard::current`] has the live ones.
    pub config: SnailConfig,
    pub sites: Vec<(Site, SiteState)>,
    live: LiveSnail,
    croak: Mutex<Option<Scream>>,
}

impl SnailBoard {
    pub fn new(config: SnailConfig, sites: Vec<Site>) -> Arc<SnailBoard> {
        let live = LiveSnail::default();
        live.max_lag_ns.store(config.max_lag_ns, Relaxed);
        live.grace_ns.store(config.grace_ns, Relaxed);
        live.policy.store(config.policy as u8, Relaxed);
        Arc::new(SnailBoard {
            config,
            sites: sites.into_iter().map(|s| (s, SiteState::default())).collect(),
            live,
            croak: Mutex::new(None),
        })
    }

    /// The settings in force now (the start settings with the live ones applied).
    pub fn current(&self) -> SnailConfig {
        SnailConfig {
            max_lag_ns: self.live.max_lag_ns.load(Relaxed),
            grace_ns: self.live.grace_ns.load(Relaxed),
            policy: Policy::from_u8(self.live.policy.load(Relaxed)),
            ..self.config
        }
    }

    fn version(&self) -> u64 {
        self.live.version.load(Acquire)
    }

    /// Change `max_lag` while running (a live setting).
    pub fn set_max_lag_ns(&self, ns: u64) {
        self.live.max_lag_ns.store(ns, Relaxed);
        self.live.version.fetch_add(1, Release);
    }

    /// Change `grace` while running.
    pub fn set_grace_ns(&self, ns: u64) {
        self.live.grace_ns.store(ns, Relaxed);
        self.live.version.fetch_add(1, Release);
    }

    /// Change the policy while running.
    pub fn set_policy(&self, p: Policy) {
        self.live.policy.store(p as u8, Relaxed);
        self.live.version.fetch_add(1, Release);
    }

    /// Record a croak (the first one wins).
    fn set_croak(&self, s: &Scream) {
        if let Ok(mut slot) = self.croak.lock() {
            slot.get_or_insert_with(|| s.clone());
        }
    }

    /// The croak, if a site croaked.
    pub fn croak(&self) -> Option<Scream> {
        self.croak.lock().ok().and_then(|s| s.clone())
    }

    /// The worst verdict of any site now.
    pub fn worst(&self) -> Verdict {
        self.sites.iter().map(|(_, s)| Verdict::from_u8(s.verdict.load(Relaxed))).max().unwrap_or_default()
    }

    /// A snapshot for reports and the monitor's state message.
    pub fn report(&self) -> SnailReport {
        let c = &self.current();
        let mut r = SnailReport {
            policy: c.policy,
            skew: c.skew,
            max_lag_ms: c.max_lag_ns / MS,
            grace_ms: c.grace_ns / MS,
            silence_ms: c.silence_ns / MS,
            verdict: self.worst(),
            croaked: self.croak(),
            shards: Vec::new(),
            sites: self
                .sites
                .iter()
                .map(|(site, s)| SiteReport {
                    role: site.role.clone(),
                    shard: site.shard,
                    verdict: Verdict::from_u8(s.verdict.load(Relaxed)),
                    checked: s.checked.load(Relaxed),
                    last_lag_ns: s.last_lag_ns.load(Relaxed),
                    max_lag_ns: s.max_lag_ns.load(Relaxed),
                    warns: s.warns.load(Relaxed),
                    snails: s.snails.load(Relaxed),
                    stops: s.stops.load(Relaxed),
                    rests: s.rests.load(Relaxed),
                    skipped: s.skipped.load(Relaxed),
                    self_stalls: s.self_stalls.load(Relaxed),
                    longest_self_stall_ns: s.longest_self_stall_ns.load(Relaxed),
                })
                .collect(),
        };
        r.shards = shard_verdicts(&r.sites, r.croaked.as_ref());
        r
    }
}

/// The snail's part of a run report (and of the monitor's state message).
#[derive(Debug, Clone, Serialize, Default)]
pub struct SnailReport {
    pub policy: Policy,
    pub skew: SkewMode,
    pub max_lag_ms: u64,
    pub grace_ms: u64,
    pub silence_ms: u64,
    /// The worst verdict of any site at the end.
    pub verdict: Verdict,
    pub croaked: Option<Scream>,
    /// The verdict per shard: the worst of its reader and of the workers that
    /// serve only it, and of the croak when it named the shard.
    pub shards: Vec<ShardVerdict>,
    pub sites: Vec<SiteReport>,
}

/// One shard's verdict in a [`SnailReport`].
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ShardVerdict {
    pub shard: usize,
    pub verdict: Verdict,
}

/// The verdict per shard from the sites' verdicts and the croak.
fn shard_verdicts(sites: &[SiteReport], croaked: Option<&Scream>) -> Vec<ShardVerdict> {
    let n = sites.iter().filter_map(|s| s.shard).map(|k| k + 1).max().unwrap_or(0);
    let mut v = vec![Verdict::Ok; n];
    for (k, s) in sites.iter().filter_map(|s| s.shard.map(|k| (k, s))) {
        v[k] = v[k].max(s.verdict);
    }
    if let Some((k, c)) = croaked.and_then(|c| c.shard.map(|k| (k, c))).filter(|(k, _)| *k < n) {
        v[k] = v[k].max(c.verdict);
    }
    v.into_iter().enumerate().map(|(shard, verdict)| ShardVerdict { shard, verdict }).collect()
}

/// One site in a [`SnailReport`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct SiteReport {
    pub role: String,
    pub shard: Option<usize>,
    pub verdict: Verdict,
    pub checked: u64,
    pub last_lag_ns: u64,
    pub max_lag_ns: u64,
    pub warns: u64,
    pub snails: u64,
    pub stops: u64,
    pub rests: u64,
    pub skipped: u64,
    /// Times the site itself did not run for [`SELF_STALL_NS`] or more (a
    /// reader: silence is not judged across them), and the longest, ns.
    pub self_stalls: u64,
    pub longest_self_stall_ns: u64,
}

impl SnailReport {
    /// Lines for the human report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  snail        {}   (policy {}, max lag {}, grace {}, silence {}, {})",
            self.verdict.name(),
            self.policy.name(),
            human_ns(self.max_lag_ms * MS),
            human_ns(self.grace_ms * MS),
            human_ns(self.silence_ms * MS),
            match self.skew {
                SkewMode::Synchronised => "clocks synchronised",
                SkewMode::Tolerant => "skew-tolerant",
            }
        );
        if !self.shards.is_empty() {
            let per: Vec<String> =
                self.shards.iter().map(|v| format!("shard{} {}", v.shard, v.verdict.name())).collect();
            let _ = writeln!(s, "    per shard      {}", per.join(", "));
        }
        for site in &self.sites {
            let _ = writeln!(
                s,
                "    {:<14} {:<5} lag last {:>9} max {:>9}   warns {} snails {} stops {}{}{}",
                site.role,
                site.verdict.name(),
                human_ns(site.last_lag_ns),
                human_ns(site.max_lag_ns),
                site.warns,
                site.snails,
                site.stops,
                if site.rests > 0 { format!(" rests {} skipped {}", site.rests, site.skipped) } else { String::new() },
                match site.self_stalls {
                    0 => String::new(),
                    n => format!(" self-stalls {n} (longest {})", human_ns(site.longest_self_stall_ns)),
                }
            );
        }
        if let Some(c) = &self.croaked {
            let _ = writeln!(s, "  croaked      {c}");
        }
        s
    }
}

/// What a verdict change said: the scream line (Display) and the monitor's message (JSON).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Scream {
    pub verdict: Verdict,
    pub policy: Policy,
    /// The site that judged: `shard0-reader`, `worker1`.
    pub site: String,
    pub shard: Option<usize>,
    pub publisher_id: Option<u32>,
    pub topic: Option<String>,
    /// Lag of the message that tipped the verdict, ns.
    pub lag_ns: u64,
    pub max_lag_ns: u64,
    /// How long the lag had been above `max_lag_ns`, ns.
    pub above_for_ns: u64,
    pub grace_ns: u64,
    /// STOP: how long nothing was heard, ns.
    pub silent_for_ns: Option<u64>,
    /// Stream sequence of the last message that arrived within `max_lag_ns`.
    pub last_good_seq: u64,
    /// When (ns since the Unix epoch, the site's clock).
    pub at_ns: u64,
}

impl std::fmt::Display for Scream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shard = self.shard.map(|k| format!("shard{k}")).unwrap_or_else(|| "a shard".into());
        write!(f, "{} on {shard} ({})", self.verdict.name(), self.site)?;
        if let Some(p) = self.publisher_id {
            write!(f, ": publisher {p}")?;
        }
        if let Some(t) = &self.topic {
            write!(f, " topic {t}")?;
        }
        match self.silent_for_ns {
            Some(q) => write!(f, ": nothing heard for {} (silence {})", human_ns(q), human_ns(self.grace_ns))?,
            None => write!(
                f,
                ": lag {} (max_lag {}, above it for {}, grace {})",
                human_ns(self.lag_ns),
                human_ns(self.max_lag_ns),
                human_ns(self.above_for_ns),
                human_ns(self.grace_ns)
            )?,
        }
        // 0: no message of this site was within max_lag (a stall from the first message on).
        match self.last_good_seq {
            0 => write!(f, "; no message was within max_lag; policy {}", self.policy.name()),
            seq => write!(f, "; last good seq {seq}; policy {}", self.policy.name()),
        }
    }
}

/// ` (N verdict changes not said since the last line)` when N > 0.
struct Unsaid(u64);

impl std::fmt::Display for Unsaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} verdict change(s) not said since the last line)"),
        }
    }
}

/// What the shell must do after a message or an idle check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Stop the engine: a croak was recorded on the board.
    Croak,
}

/// The policy shell around the detectors for one site: one per reader or
/// worker, driven with `(header, now_ns)`; allocation-free except when the
/// verdict changes (a scream is built then).
pub struct Guard {
    index: usize,
    /// The shard of the messages being judged: the site's own, or for a
    /// worker serving several shards the one its current batch came from.
    shard: Option<usize>,
    board: Arc<SnailBoard>,
    cfg: SnailConfig,
    lag: LagDetector,
    silence: Silence,
    verdict: Verdict,
    monitor: Option<Sender<Scream>>,
    next_log_ns: u64,
    checked: u64,
    max_lag_ns: u64,
    warns: u64,
    snails: u64,
    stops: u64,
    /// Policy `rest`: skip everything before this (0: not resting).
    rest_until_ns: u64,
    /// Skew floor when the rest began (skew-tolerant mode judges the backlog against it).
    rest_floor_ns: i64,
    rests: u64,
    skipped: u64,
    /// The board's live-settings version this guard last took up.
    seen_version: u64,
    /// The verdict the last line on stderr said (OK before any): a site said
    /// to be a snail is said to be OK again, once, when it is.
    said: Verdict,
    /// Verdict changes not said since the last line (the line rate limit).
    unsaid_changes: u64,
    /// When the last episode that was not OK began (the lag went above the
    /// limit, or the verdict left OK), and the highest lag judged since.
    left_ok_ns: u64,
    episode_max_lag_ns: u64,
    /// The episode held a STOP: when the silence it judged began (the last frame heard before
    /// it), and when the STOP was judged. 0: no STOP since it left OK. An OK-again line after a
    /// STOP says how long the site was silent, not only how long since the verdict.
    silent_from_ns: u64,
    stop_ns: u64,
    /// Where lines go: stderr ([`crate::diag::line`]); a test collects them.
    say: fn(std::fmt::Arguments<'_>),
    /// Not OK, or not said as it is: messages judged without a change are
    /// looked at more closely ([`Guard::watch`]).
    watching: bool,
    /// Self-stalls said as repeated lines are: the first at once, then a summary per
    /// [`crate::diag::SUMMARY_INTERVAL_NS`] ([`Refusals`] with its own head).
    stall_lines: Refusals,
}

impl Guard {
    /// The guard of site `index` on `board`; screams also go to `monitor`.
    pub fn new(board: Arc<SnailBoard>, index: usize, monitor: Option<Sender<Scream>>) -> Guard {
        let cfg = board.config;
        let site = board.sites[index].0.role.clone();
        Guard {
            index,
            shard: board.sites[index].0.shard,
            lag: LagDetector::new(&cfg),
            silence: Silence::new(cfg.silence_ns),
            board,
            cfg,
            verdict: Verdict::Ok,
            monitor,
            next_log_ns: 0,
            checked: 0,
            max_lag_ns: 0,
            warns: 0,
            snails: 0,
            stops: 0,
            rest_until_ns: 0,
            rest_floor_ns: 0,
            rests: 0,
            skipped: 0,
            seen_version: 0,
            said: Verdict::Ok,
            unsaid_changes: 0,
            left_ok_ns: 0,
            episode_max_lag_ns: 0,
            silent_from_ns: 0,
            stop_ns: 0,
            say: crate::diag::line,
            watching: false,
            stall_lines: Refusals::new(site.clone(), SUMMARY_INTERVAL_NS)
                .said_as(format!("mdsub: snail: {site} stalled")),
        }
    }

    /// Take up live settings changed on the board since the last call (the
    /// shells call this with [`Guard::publish`]: once per batch or idle
    /// round). One atomic load when nothing changed.
    pub fn refresh(&mut self) {
        let v = self.board.version();
        if v == self.seen_version {
            return;
        }
        self.seen_version = v;
        let now = self.board.current();
        if self.cfg.policy == Policy::Off && now.policy != Policy::Off {
            // Off, the shell's calls were not watched: no cadence to hold the next one to.
            self.silence.forget_cadence();
        }
        self.cfg.max_lag_ns = now.max_lag_ns;
        self.cfg.grace_ns = now.grace_ns;
        self.cfg.policy = now.policy;
        self.lag.set_limits(now.max_lag_ns, now.grace_ns);
    }

    /// Policy `rest`: true if this message is to be skipped (the site is
    /// resting, or rejoining and the message is still older than `max_lag`).
    /// One compare when not resting.
    #[inline]
    pub fn skip(&mut self, h: &Header, now_ns: u64) -> bool {
        if self.rest_until_ns == 0 {
            return false;
        }
        self.skip_resting(h, now_ns)
    }

    /// True while resting or rejoining (policy `rest`).
    pub fn resting(&self) -> bool {
        self.rest_until_ns != 0
    }

    fn skip_resting(&mut self, h: &Header, now_ns: u64) -> bool {
        let lag = (now_ns as i64).wrapping_sub(h.send_time_ns as i64).saturating_sub(self.rest_floor_ns);
        if now_ns < self.rest_until_ns || lag > self.cfg.max_lag_ns as i64 {
            self.skipped += 1;
            return true;
        }
        // Live again: rejoin here with a fresh history.
        self.rest_until_ns = 0;
        self.lag.reset();
        self.verdict = Verdict::Ok;
        // Said OK again at a message once the line limit allows.
        self.watching = self.said != Verdict::Ok;
        self.publish();
        false
    }

    /// A worker serving several shards: the messages judged next came from
    /// `shard` (None: not known, a frame handed over on its own). Once per
    /// hand-off, so a scream names the shard.
    #[inline]
    pub fn serving(&mut self, shard: Option<usize>) {
        self.shard = shard;
    }

    /// True when the checks are off.
    #[inline]
    pub fn off(&self) -> bool {
        self.cfg.policy == Policy::Off
    }

    /// Judge one data message (`topic` only used for a scream). Inlined always: a call of its
    /// own in the engine's reader and worker before, each time (perf36); a change of verdict
    /// is the call (`Guard::change`, cold).
    #[inline(always)]
    pub fn on_message(&mut self, h: &Header, topic: &[u8], now_ns: u64) -> Action {
        if self.off() {
            return Action::Continue;
        }
        self.checked += 1;
        let v = self.lag.observe(h.send_time_ns, h.stream_seq, now_ns);
        let lag = self.lag.last_lag_ns();
        self.max_lag_ns = self.max_lag_ns.max(lag);
        if v == self.verdict {
            // One test while OK and said so: the common case.
            if self.watching {
                self.watch(v, h, topic, now_ns);
            }
            return Action::Continue;
        }
        self.change(v, Some((h, topic)), None, now_ns)
    }

    /// A message judged with no change of verdict while not OK, or not said
    /// as it is: the episode's highest lag, and a change held back by the
    /// line rate limit said once it may be (so stderr does not stay on OK of
    /// a site that is not).
    #[cold]
    fn watch(&mut self, v: Verdict, h: &Header, topic: &[u8], now_ns: u64) {
        self.episode_max_lag_ns = self.episode_max_lag_ns.max(self.lag.last_lag_ns());
        if v != self.said && now_ns >= self.next_log_ns {
            let scream = self.scream(v, Some((h, topic)), None, now_ns);
            self.log(&scream, now_ns);
        }
    }

    /// Anything (data, heartbeat, end of stream) arrived at `now_ns`: for the silence check.
    #[inline]
    pub fn heard(&mut self, now_ns: u64) {
        self.ran(now_ns);
        self.silence.heard(now_ns);
    }

    /// The shell ran at `now_ns` without hearing anything or checking for silence (a
    /// frame refused before it could be heard): keeps the self-stall judge's cadence.
    /// [`Guard::heard`] and [`Guard::check_silence`] do this themselves.
    #[inline]
    pub fn ran(&mut self, now_ns: u64) {
        if self.off() {
            return;
        }
        if let Some(gap) = self.silence.ran(now_ns) {
            self.self_stalled(gap, now_ns);
        }
    }

    /// The site did not run for `gap_ns` up to `now_ns`: say so (at a bounded rate).
    #[cold]
    fn self_stalled(&mut self, gap_ns: u64, now_ns: u64) {
        let detail = format_args!(
            "did not run for {} (this process, its VM or its host paused or starved it); \
             silence is judged from its resumption, not across the stall",
            human_ns(gap_ns)
        );
        if let Some(l) = self.stall_lines.refuse("self_stall", &detail, now_ns) {
            (self.say)(format_args!("{l}"));
        }
        self.publish();
    }

    /// Say what is unsaid of the self-stalls (a summary, however recent): the shell
    /// calls this when it closes.
    pub fn close(&mut self) {
        if let Some(l) = self.stall_lines.flush() {
            (self.say)(format_args!("{l}"));
        }
    }

    /// An end of stream arrived: silence from here on is expected.
    pub fn ended(&mut self) {
        self.silence.ended();
    }

    /// Check for silence (the shell calls this when it had nothing to read or was blocked).
    pub fn check_silence(&mut self, now_ns: u64) -> Action {
        if self.off() {
            return Action::Continue;
        }
        self.ran(now_ns);
        if self.stall_lines.unsaid() {
            if let Some(l) = self.stall_lines.due(now_ns) {
                (self.say)(format_args!("{l}"));
            }
        }
        if self.verdict == Verdict::Stop {
            // A STOP held back by the line rate limit is said once it may be.
            if self.said != Verdict::Stop && now_ns >= self.next_log_ns {
                let scream = self.scream(Verdict::Stop, None, self.silence.check(now_ns), now_ns);
                self.log(&scream, now_ns);
            }
            return Action::Continue;
        }
        match self.silence.check(now_ns) {
            Some(quiet) => self.change(Verdict::Stop, None, Some(quiet), now_ns),
            None => Action::Continue,
        }
    }

    /// A change of verdict to `v`, of a message or of silence (`quiet`): said, and acted on.
    #[cold]
    #[inline(never)]
    fn change(&mut self, v: Verdict, msg: Option<(&Header, &[u8])>, quiet: Option<u64>, now_ns: u64) -> Action {
        if self.verdict == Verdict::Ok {
            // Since the lag went above the limit (a rising-lag WARN: now).
            self.left_ok_ns = now_ns.saturating_sub(self.lag.above_for_ns(now_ns));
            self.episode_max_lag_ns = 0;
            self.silent_from_ns = 0;
            self.stop_ns = 0;
        }
        if let (Verdict::Stop, Some(q)) = (v, quiet) {
            self.silent_from_ns = now_ns.saturating_sub(q).max(1);
            self.stop_ns = now_ns;
        }
        self.episode_max_lag_ns = self.episode_max_lag_ns.max(self.lag.last_lag_ns());
        self.verdict = v;
        match v {
            Verdict::Ok => {}
            Verdict::Warn => self.warns += 1,
            Verdict::Snail => self.snails += 1,
            Verdict::Stop => self.stops += 1,
        }
        let scream = self.scream(v, msg, quiet, now_ns);
        let action = self.changed(scream, now_ns);
        self.watching = self.verdict != Verdict::Ok || self.said != self.verdict;
        action
    }

    /// What verdict `v` says now (`msg`: the message judged; `quiet`: a silence).
    fn scream(&self, v: Verdict, msg: Option<(&Header, &[u8])>, quiet: Option<u64>, now_ns: u64) -> Scream {
        let (site, _) = &self.board.sites[self.index];
        Scream {
            verdict: v,
            policy: self.cfg.policy,
            site: site.role.clone(),
            shard: self.shard,
            publisher_id: msg.map(|(h, _)| h.publisher_id),
            topic: msg.map(|(_, t)| String::from_utf8_lossy(t).into_owned()),
            lag_ns: self.lag.last_lag_ns(),
            max_lag_ns: self.cfg.max_lag_ns,
            above_for_ns: self.lag.above_for_ns(now_ns),
            grace_ns: if quiet.is_some() { self.cfg.silence_ns } else { self.cfg.grace_ns },
            silent_for_ns: quiet,
            last_good_seq: self.lag.last_good_seq(),
            at_ns: now_ns,
        }
    }

    /// Say a verdict change on stderr. Lines that are not OK: at most one per
    /// `warn_every_ns` (changes in between are counted, and said in the next
    /// line). OK again: once after each line that said otherwise, so each
    /// episode said has its end said too and the last line is the truth.
    fn log(&mut self, scream: &Scream, now_ns: u64) {
        self.say_line(scream, now_ns);
        self.watching = self.verdict != Verdict::Ok || self.said != self.verdict;
    }

    fn say_line(&mut self, scream: &Scream, now_ns: u64) {
        if scream.verdict == Verdict::Ok {
            if self.said != Verdict::Ok {
                self.said = Verdict::Ok;
                let shard = scream.shard.map(|k| format!("shard{k}")).unwrap_or_else(|| "a shard".into());
                let unsaid = Unsaid(std::mem::take(&mut self.unsaid_changes));
                let (lag, max_lag) = (human_ns(scream.lag_ns), human_ns(self.episode_max_lag_ns));
                if self.silent_from_ns != 0 {
                    // A STOP: the silence is what it was about, from the last frame heard before
                    // it (the STOP itself came `silence` later).
                    (self.say)(format_args!(
                        "mdsub: snail: OK again on {shard} ({}): frames again after {} of silence, {} after the \
                         STOP (lag {lag}, max lag {max_lag} since it left OK){unsaid}",
                        scream.site,
                        human_ns(now_ns.saturating_sub(self.silent_from_ns)),
                        human_ns(now_ns.saturating_sub(self.stop_ns)),
                    ));
                } else {
                    (self.say)(format_args!(
                        "mdsub: snail: OK again on {shard} ({}) after {} (lag {lag}, max lag {max_lag} since it left \
                         OK){unsaid}",
                        scream.site,
                        human_ns(now_ns.saturating_sub(self.left_ok_ns)),
                    ));
                }
            } else {
                self.unsaid_changes += 1;
            }
            return;
        }
        if now_ns < self.next_log_ns {
            self.unsaid_changes += 1;
            return;
        }
        self.next_log_ns = now_ns.saturating_add(self.cfg.warn_every_ns);
        self.said = scream.verdict;
        (self.say)(format_args!("mdsub: snail: {scream}{}", Unsaid(std::mem::take(&mut self.unsaid_changes))));
    }

    /// Record a verdict change: the monitor, the board, the policy's action, stderr.
    fn changed(&mut self, scream: Scream, now_ns: u64) -> Action {
        let v = scream.verdict;
        if let Some(m) = &self.monitor {
            // Never blocks; a full monitor queue loses the message (the board keeps the state).
            let _ = m.try_send(scream.clone());
        }
        self.publish();
        let croak = self.cfg.policy == Policy::Croak && v >= Verdict::Snail;
        if croak {
            // The shell says the croak's scream.
            self.said = v;
            self.board.set_croak(&scream);
            return Action::Croak;
        }
        if self.cfg.policy == Policy::Rest && v == Verdict::Snail {
            self.rests += 1;
            self.rest_until_ns = now_ns.saturating_add(self.cfg.rest_ns).max(1);
            self.rest_floor_ns = match self.cfg.skew {
                SkewMode::Synchronised => 0,
                SkewMode::Tolerant => self.lag.floor_ns(),
            };
            self.publish();
        }
        self.log(&scream, now_ns);
        Action::Continue
    }

    /// The verdict now.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Store the counters into the board (the shell calls this once per round).
    pub fn publish(&self) {
        let s = &self.board.sites[self.index].1;
        s.verdict.store(self.verdict as u8, Relaxed);
        s.checked.store(self.checked, Relaxed);
        s.last_lag_ns.store(self.lag.last_lag_ns(), Relaxed);
        s.max_lag_ns.store(self.max_lag_ns, Relaxed);
        s.warns.store(self.warns, Relaxed);
        s.snails.store(self.snails, Relaxed);
        s.stops.store(self.stops, Relaxed);
        s.rests.store(self.rests, Relaxed);
        s.skipped.store(self.skipped, Relaxed);
        let (stalls, longest_ns) = self.silence.self_stalls();
        s.self_stalls.store(stalls, Relaxed);
        s.longest_self_stall_ns.store(longest_ns, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_since_the_last_look_keeps_a_turn_that_is_over_by_then() {
        let mut w = WorstSince::default();
        assert_eq!(w.next(Verdict::Ok, [0, 0, 0]), Verdict::Ok);
        assert_eq!(w.next(Verdict::Ok, [1, 1, 0]), Verdict::Snail, "turned WARN then SNAIL, OK again by now");
        assert_eq!(w.next(Verdict::Ok, [1, 1, 0]), Verdict::Ok, "nothing turned since");
        assert_eq!(w.next(Verdict::Warn, [2, 1, 0]), Verdict::Warn, "WARN now");
        assert_eq!(w.next(Verdict::Ok, [2, 1, 0]), Verdict::Warn, "WARN at the last look, OK now");
        assert_eq!(w.next(Verdict::Ok, [2, 1, 1]), Verdict::Stop);
    }
    use crate::clock::{Clock, ManualClock};
    use crate::wire::Kind;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn header(seq: u64, send_time_ns: u64) -> Header {
        Header {
            kind: Kind::Data,
            flags: 0,
            publisher_id: 7,
            session_id: 1,
            stream_seq: seq,
            topic_seq: seq,
            send_time_ns,
        }
    }

    fn board(policy: Policy) -> Arc<SnailBoard> {
        let cfg = SnailConfig {
            policy,
            max_lag_ns: 100 * MS,
            grace_ns: 200 * MS,
            silence_ns: 1_000 * MS,
            ..SnailConfig::default()
        };
        SnailBoard::new(cfg, vec![Site { role: "shard0-reader".into(), shard: Some(0) }])
    }

    /// A board under `policy`, the guard of its one site and a test clock at T0.
    fn guarded(policy: Policy) -> (Arc<SnailBoard>, Guard, ManualClock) {
        let b = board(policy);
        (b.clone(), Guard::new(b, 0, None), ManualClock::new(T0))
    }

    #[test]
    fn a_croak_with_no_message_in_time_says_so_not_seq_0() {
        // Late from the first message: there is no last good sequence (it read `last good seq 0`).
        let (b, mut g, clock) = guarded(Policy::Croak);
        let mut seq = 0;
        while seq < 1_000 {
            let now = clock.advance_ms(1);
            seq += 1;
            if g.on_message(&header(seq, now - 300 * MS), b"ESH6", now) == Action::Croak {
                break;
            }
        }
        let line = b.croak().expect("a croak").to_string();
        assert!(line.contains("; no message was within max_lag; policy croak"), "{line}");
        assert!(!line.contains("last good seq"), "{line}");
    }

    #[test]
    fn croak_policy_records_one_scream_naming_the_cause() {
        let b = board(Policy::Croak);
        let (tx, rx) = crossbeam::channel::bounded(8);
        let mut g = Guard::new(b.clone(), 0, Some(tx));
        let clock = ManualClock::new(T0);
        let mut action = Action::Continue;
        let mut seq = 0;
        for lag_ms in [1u64; 10].into_iter().chain([300; 400]) {
            let now = clock.advance_ms(1);
            seq += 1;
            action = g.on_message(&header(seq, now - lag_ms * MS), b"ESH6", now);
            if action == Action::Croak {
                break;
            }
        }
        assert_eq!(action, Action::Croak);
        let c = b.croak().expect("a croak on the board");
        assert_eq!((c.verdict, c.publisher_id, c.last_good_seq), (Verdict::Snail, Some(7), 10));
        let line = c.to_string();
        for part in ["SNAIL on shard0 (shard0-reader)", "publisher 7", "topic ESH6", "lag 300.00ms", "max_lag 100.00ms"]
        {
            assert!(line.contains(part), "{part:?} in {line}");
        }
        let on_monitor: Vec<Scream> = rx.try_iter().collect();
        assert_eq!(on_monitor.last(), Some(&c));
        assert_eq!(b.report().sites[0].snails, 1);
        assert_eq!(b.worst(), Verdict::Snail);
    }

    #[test]
    fn live_settings_are_taken_up_at_the_next_refresh_not_before() {
        let b = board(Policy::Warn);
        let mut g = Guard::new(b.clone(), 0, None);
        let clock = ManualClock::new(T0);
        let mut seq = 0;
        let mut feed = |g: &mut Guard, n: usize, lag_ms: u64| {
            for _ in 0..n {
                let now = clock.advance_ms(1);
                seq += 1;
                g.on_message(&header(seq, now - lag_ms * MS), b"A", now);
            }
        };
        // 50 ms of lag is healthy under max_lag 100 ms.
        feed(&mut g, 300, 50);
        g.publish();
        assert_eq!(b.report().sites[0].snails, 0);
        // Lower max_lag to 10 ms: nothing changes until the guard refreshes.
        b.set_max_lag_ns(10 * MS);
        b.set_grace_ns(20 * MS);
        assert_eq!(b.current().max_lag_ns, 10 * MS);
        feed(&mut g, 100, 50);
        g.publish();
        assert_eq!(b.report().sites[0].snails, 0, "not taken up before refresh");
        g.refresh();
        feed(&mut g, 100, 50);
        g.publish();
        let r = b.report();
        assert_eq!((r.sites[0].snails, r.max_lag_ms, r.grace_ms), (1, 10, 20), "taken up: 50 ms is now a snail");
        // The policy is live too: off stops judging.
        b.set_policy(Policy::Off);
        g.refresh();
        assert!(g.off());
        assert_eq!(b.report().policy, Policy::Off);
    }

    #[test]
    fn warn_policy_counts_and_keeps_going() {
        let (b, mut g, clock) = guarded(Policy::Warn);
        for (i, lag_ms) in [300u64; 300].into_iter().chain([1; 10]).chain([300; 300]).enumerate() {
            let now = clock.advance_ms(1);
            assert_eq!(g.on_message(&header(i as u64 + 1, now - lag_ms * MS), b"A", now), Action::Continue);
        }
        g.publish();
        let r = b.report();
        assert_eq!((r.sites[0].snails, r.sites[0].checked), (2, 610));
        assert!(b.croak().is_none());
    }

    thread_local! {
        static SAID: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// A guard's lines, collected on this test's thread instead of stderr.
    fn collect(args: std::fmt::Arguments<'_>) {
        SAID.with(|s| s.borrow_mut().push(args.to_string()));
    }

    fn said() -> Vec<String> {
        SAID.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }

    #[test]
    fn a_snail_said_under_warn_is_said_ok_again_once_and_a_flapping_one_within_the_rate_limit() {
        let (_b, mut g, clock) = guarded(Policy::Warn);
        g.say = collect;
        let mut seq = 0;
        let mut feed = |g: &mut Guard, lags_ms: &[(u64, usize)]| {
            for &(lag_ms, n) in lags_ms {
                for _ in 0..n {
                    seq += 1;
                    let now = clock.advance_ms(1);
                    g.on_message(&header(seq, now - lag_ms * MS), b"A", now);
                }
            }
        };
        // Max lag 100 ms, grace 200 ms: 400 ms at 300 ms lag is a snail, then OK.
        feed(&mut g, &[(1, 10), (300, 400), (1, 10)]);
        let lines = said();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("mdsub: snail: SNAIL on shard0 (shard0-reader)"), "{lines:?}");
        assert!(
            lines[1].starts_with("mdsub: snail: OK again on shard0 (shard0-reader) after 401.00ms")
                && lines[1].contains("max lag 300.00ms since it left OK"),
            "{lines:?}"
        );
        assert_eq!(g.verdict(), Verdict::Ok);
        // Flapping faster than the line rate limit (1 s): the first SNAIL
        // within it is held back and said when it may be (the last line is
        // the truth); what went unsaid is counted in the next line.
        feed(&mut g, &[(300, 250), (1, 5)]);
        feed(&mut g, &[(300, 250), (1, 5)]);
        assert_eq!(said(), Vec::<String>::new(), "within a second of the last SNAIL line: held back");
        feed(&mut g, &[(300, 600)]);
        let lines = said();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("mdsub: snail: SNAIL on shard0") && lines[0].contains("not said since"),
            "{lines:?}"
        );
        feed(&mut g, &[(1, 5)]);
        let lines = said();
        assert!(lines.len() == 1 && lines[0].contains("OK again"), "{lines:?}");
    }

    /// After a STOP, the OK-again line says how long the site was silent (from its last frame
    /// heard), and how long after the STOP the frames came. It said only the time since the
    /// STOP verdict (`after 2.50s` for 3.50 s of silence), which is `silence` short of it.
    #[test]
    fn ok_again_after_a_stop_says_how_long_the_silence_lasted() {
        let (_b, mut g, clock) = guarded(Policy::Warn);
        g.say = collect;
        for seq in 1..=10 {
            let now = clock.advance_ms(1);
            g.heard(now);
            g.on_message(&header(seq, now - MS), b"A", now);
        }
        // Silent from here: STOP once `silence` (1 s) has passed, judged at 1.5 s.
        for _ in 0..15 {
            g.check_silence(clock.advance_ms(100));
        }
        assert_eq!(g.verdict(), Verdict::Stop);
        let lines = said();
        assert!(lines.len() == 1 && lines[0].starts_with("mdsub: snail: STOP on shard0"), "{lines:?}");
        // Frames again 3.5 s after the last one, 2.5 s after the STOP.
        for _ in 0..20 {
            g.check_silence(clock.advance_ms(100));
        }
        let now = clock.now_ns();
        g.heard(now);
        g.on_message(&header(11, now - MS), b"A", now);
        assert_eq!(g.verdict(), Verdict::Ok);
        let lines = said();
        assert_eq!(
            lines,
            ["mdsub: snail: OK again on shard0 (shard0-reader): frames again after 3.50s of silence, 2.50s after \
              the STOP (lag 1.00ms, max lag 1.00ms since it left OK)"],
        );
        // A later episode of lag alone says the time since its lag went above max_lag, as before.
        let mut seq = 11;
        for lag_ms in [300; 400].into_iter().chain([1; 5]) {
            seq += 1;
            let now = clock.advance_ms(1);
            g.heard(now);
            g.on_message(&header(seq, now - lag_ms * MS), b"A", now);
        }
        let lines = said();
        assert!(
            lines.len() == 2 && lines[1].starts_with("mdsub: snail: OK again on shard0 (shard0-reader) after 4"),
            "{lines:?}"
        );
    }

    #[test]
    fn silence_is_stop_after_the_first_frame_and_not_after_end_of_stream() {
        let (b, mut g, clock) = guarded(Policy::Croak);
        assert_eq!(g.check_silence(clock.advance_ms(5_000)), Action::Continue, "not armed before any frame");
        g.heard(clock.advance_ms(1));
        assert_eq!(g.check_silence(clock.advance_ms(999)), Action::Continue);
        assert_eq!(g.check_silence(clock.advance_ms(1)), Action::Croak);
        let c = b.croak().expect("croaked");
        assert_eq!((c.verdict, c.silent_for_ns), (Verdict::Stop, Some(1_000 * MS)));
        assert!(c.to_string().contains("nothing heard for 1.00s"), "{c}");

        let b = board(Policy::Croak);
        let mut g = Guard::new(b.clone(), 0, None);
        g.heard(clock.advance_ms(1));
        g.ended();
        assert_eq!(g.check_silence(clock.advance_ms(10_000)), Action::Continue);
    }

    #[test]
    fn the_silence_core_counts_a_gap_between_calls_of_a_second_or_more_as_a_self_stall() {
        let mut s = Silence::new(1_000 * MS);
        assert_eq!(s.ran(T0), None, "the first call starts the cadence");
        assert_eq!(s.ran(T0 + SELF_STALL_NS - 1), None);
        let t = T0 + 2 * SELF_STALL_NS - 1;
        assert_eq!(s.ran(t), Some(SELF_STALL_NS));
        assert_eq!(s.ran(t + 3 * SELF_STALL_NS), Some(3 * SELF_STALL_NS));
        assert_eq!(s.self_stalls(), (2, 3 * SELF_STALL_NS));
        s.forget_cadence();
        assert_eq!(s.ran(t + 60 * SELF_STALL_NS), None, "no cadence known: no stall");
    }

    /// Calls every `step_ms` for `for_ms` (an idle reader checking for silence):
    /// the last action.
    fn idle(g: &mut Guard, clock: &ManualClock, step_ms: u64, for_ms: u64) -> Action {
        let mut action = Action::Continue;
        for _ in 0..for_ms / step_ms {
            action = g.check_silence(clock.advance_ms(step_ms));
            if action == Action::Croak {
                break;
            }
        }
        action
    }

    #[test]
    fn a_stall_of_the_subscriber_itself_is_no_silence_but_silence_after_it_croaks() {
        // Silence 1 s. The reader hears a frame, idles (a check every 1 ms), then
        // does not run for 8 s (a VM pause) while the publisher is quiet too.
        let (b, mut g, clock) = guarded(Policy::Croak);
        g.say = collect;
        g.heard(clock.advance_ms(1));
        assert_eq!(idle(&mut g, &clock, 1, 500), Action::Continue);
        assert_eq!(g.check_silence(clock.advance_ms(8_000)), Action::Continue, "no STOP at the resumption");
        let lines = said();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("mdsub: snail: shard0-reader stalled (self_stall): did not run for 8.00s")
                && lines[0].contains("silence is judged from its resumption"),
            "{lines:?}"
        );
        g.publish();
        let site = &b.report().sites[0];
        assert_eq!((site.self_stalls, site.longest_self_stall_ns, site.stops), (1, 8_000 * MS, 0));
        assert!(b.report().render().contains("self-stalls 1 (longest 8.00s)"), "{}", b.report().render());
        // Nothing heard after the resumption either: STOP once `silence` has passed since it.
        assert_eq!(idle(&mut g, &clock, 1, 999), Action::Continue);
        assert_eq!(g.check_silence(clock.advance_ms(1)), Action::Croak);
        let c = b.croak().expect("croaked");
        assert_eq!((c.verdict, c.silent_for_ns), (Verdict::Stop, Some(1_000 * MS)), "judged from the resumption");
    }

    #[test]
    fn a_backlog_read_after_a_stall_is_judged_on_its_real_lag() {
        // The stall ends with a frame (the publisher was fine): heard, no STOP, and
        // the lag of a message sent before the stall is what it is: a SNAIL.
        let (b, mut g, clock) = guarded(Policy::Croak);
        g.say = collect;
        let t = clock.advance_ms(1);
        g.heard(t);
        assert_eq!(g.on_message(&header(1, t), b"A", t), Action::Continue);
        let now = clock.advance_ms(8_000);
        g.heard(now);
        assert_eq!(g.check_silence(now), Action::Continue);
        assert_eq!(g.on_message(&header(2, t + MS), b"A", now), Action::Croak);
        let c = b.croak().expect("croaked");
        assert_eq!((c.verdict, c.lag_ns), (Verdict::Snail, 8_000 * MS - MS));
        g.publish();
        assert_eq!(b.report().sites[0].self_stalls, 1);
        assert_eq!(said().len(), 1, "the stall's line (the shell says the croak)");
    }

    #[test]
    fn without_a_stall_silence_is_judged_as_before_and_stalls_are_said_at_a_bounded_rate() {
        // Checks every 500 ms: under a second apart, so no stall; STOP at 1 s of quiet.
        let (b, mut g, clock) = guarded(Policy::Warn);
        g.say = collect;
        g.heard(clock.advance_ms(1));
        assert_eq!(g.check_silence(clock.advance_ms(500)), Action::Continue);
        assert_eq!(g.check_silence(clock.advance_ms(500)), Action::Continue);
        g.publish();
        let site = &b.report().sites[0];
        assert_eq!((site.self_stalls, site.stops), (0, 1), "a STOP, said under warn");
        assert_eq!(said().len(), 1);
        // Three stalls within 10 s: the first said at once, the others in one summary
        // once the interval has passed, and what is left at the close.
        for _ in 0..3 {
            g.check_silence(clock.advance_ms(2_000));
        }
        assert_eq!(said().len(), 1, "the first stall only");
        // Running at its cadence again: the summary comes 10 s after the first line.
        assert_eq!(idle(&mut g, &clock, 500, 5_500), Action::Continue);
        assert_eq!(said(), Vec::<String>::new(), "9.5 s after the first line");
        assert_eq!(idle(&mut g, &clock, 500, 500), Action::Continue);
        let lines = said();
        assert!(
            lines.len() == 1
                && lines[0].starts_with("mdsub: snail: shard0-reader stalled in the last 10s: self_stall=2"),
            "{lines:?}"
        );
        g.check_silence(clock.advance_ms(2_000));
        g.close();
        let lines = said();
        assert!(lines.len() == 1 && lines[0].ends_with("self_stall=1 (totals: self_stall=4)"), "{lines:?}");
        g.publish();
        assert_eq!(b.report().sites[0].self_stalls, 4);
    }

    #[test]
    fn calls_while_the_checks_were_off_are_no_cadence_to_judge_a_stall_by() {
        let (b, mut g, clock) = guarded(Policy::Off);
        g.heard(clock.advance_ms(1));
        assert_eq!(g.check_silence(clock.advance_ms(60_000)), Action::Continue);
        b.set_policy(Policy::Croak);
        g.refresh();
        g.heard(clock.advance_ms(30_000));
        assert_eq!(g.check_silence(clock.advance_ms(1)), Action::Continue);
        g.publish();
        assert_eq!(b.report().sites[0].self_stalls, 0);
    }

    #[test]
    fn the_verdict_per_shard_is_the_worst_of_its_sites_and_of_a_croak_naming_it() {
        let site = |role: &str, shard, verdict| SiteReport {
            role: role.into(),
            shard,
            verdict,
            checked: 0,
            last_lag_ns: 0,
            max_lag_ns: 0,
            warns: 0,
            snails: 0,
            stops: 0,
            rests: 0,
            skipped: 0,
            self_stalls: 0,
            longest_self_stall_ns: 0,
        };
        let sites = [
            site("shard0-reader", Some(0), Verdict::Ok),
            site("shard1-reader", Some(1), Verdict::Warn),
            site("shard2-reader", Some(2), Verdict::Ok),
            site("worker0", Some(0), Verdict::Stop),
            site("worker1", None, Verdict::Snail),
        ];
        let v = |vs: Vec<ShardVerdict>| vs.into_iter().map(|v| v.verdict).collect::<Vec<_>>();
        assert_eq!(v(shard_verdicts(&sites, None)), [Verdict::Stop, Verdict::Warn, Verdict::Ok]);
        let (b, mut g, clock) = guarded(Policy::Croak);
        let now = clock.advance_ms(1);
        g.serving(Some(2));
        g.on_message(&header(1, now), b"A", now);
        // A stall of 1 s: overdue for 900 ms, grace 200 ms.
        let now = clock.advance_ms(1_000);
        assert_eq!(g.on_message(&header(2, now - 1_000 * MS), b"A", now), Action::Croak);
        let c = b.croak().expect("croaked");
        assert_eq!(v(shard_verdicts(&sites, Some(&c))), [Verdict::Stop, Verdict::Warn, Verdict::Snail]);
    }

    #[test]
    fn a_worker_serving_several_shards_names_the_shard_of_its_batch() {
        let b = SnailBoard::new(
            SnailConfig { max_lag_ns: 100 * MS, grace_ns: 0, ..Default::default() },
            vec![Site { role: "worker0".into(), shard: None }],
        );
        let clock = ManualClock::new(T0);
        let now = clock.advance_ms(1);
        let mut g = Guard::new(b.clone(), 0, None);
        g.serving(Some(1));
        assert_eq!(g.on_message(&header(1, now - 500 * MS), b"A", now), Action::Croak);
        let c = b.croak().expect("croaked");
        assert_eq!(c.shard, Some(1));
        assert!(c.to_string().starts_with("SNAIL on shard1 (worker0): "), "{c}");
        // A frame handed over on its own carries no shard.
        let b = SnailBoard::new(b.config, vec![Site { role: "worker0".into(), shard: None }]);
        let mut g = Guard::new(b.clone(), 0, None);
        g.serving(None);
        assert_eq!(g.on_message(&header(1, now - 500 * MS), b"A", now), Action::Croak);
        assert!(b.croak().expect("croaked").to_string().starts_with("SNAIL on a shard (worker0)"));
    }

    #[test]
    fn rest_policy_skips_the_backlog_then_rejoins_live() {
        let b = SnailBoard::new(
            SnailConfig {
                policy: Policy::Rest,
                max_lag_ns: 100 * MS,
                grace_ns: 200 * MS,
                rest_ns: 50 * MS,
                ..Default::default()
            },
            vec![Site { role: "worker0".into(), shard: Some(0) }],
        );
        let mut g = Guard::new(b.clone(), 0, None);
        let clock = ManualClock::new(T0);
        let mut seq = 0;
        let mut feed = |g: &mut Guard, lag_ms: u64| {
            let now = clock.advance_ms(1);
            seq += 1;
            let h = header(seq, now - lag_ms * MS);
            let skipped = g.skip(&h, now);
            if !skipped {
                assert_eq!(g.on_message(&h, b"A", now), Action::Continue);
            }
            skipped
        };
        // 201 ms at 300 ms of lag: a snail, and the rest starts.
        assert!((0..201).all(|_| !feed(&mut g, 300)));
        assert_eq!(g.verdict(), Verdict::Snail);
        // Resting: 50 ms of everything skipped, whatever its lag.
        assert!((0..49).all(|_| feed(&mut g, 1)), "skips while resting");
        // The rest is over: the backlog still later than max_lag is skipped.
        assert!((0..30).all(|_| feed(&mut g, 300)));
        // The first live message rejoins.
        assert!(!feed(&mut g, 5));
        assert_eq!(g.verdict(), Verdict::Ok);
        g.publish();
        let r = b.report();
        assert_eq!((r.sites[0].rests, r.sites[0].skipped, r.sites[0].snails), (1, 79, 1));
        assert!(b.croak().is_none());
    }

    #[test]
    fn off_policy_judges_nothing() {
        let (b, mut g, clock) = guarded(Policy::Off);
        g.heard(clock.now_ns());
        for i in 1..1000 {
            let now = clock.advance_ms(1);
            assert_eq!(g.on_message(&header(i, now - 10_000 * MS), b"A", now), Action::Continue);
        }
        assert_eq!(g.check_silence(clock.advance_ms(60_000)), Action::Continue);
        g.publish();
        assert_eq!(b.report().sites[0].checked, 0);
    }

    #[test]
    fn names_round_trip() {
        for p in [Policy::Croak, Policy::Warn, Policy::Rest, Policy::Off] {
            assert_eq!(Policy::from_name(p.name()), Some(p));
        }
        for v in [Verdict::Ok, Verdict::Warn, Verdict::Snail, Verdict::Stop] {
            assert_eq!(Verdict::from_u8(v as u8), v);
        }
    }
}
