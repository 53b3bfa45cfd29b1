//! Tuning profiles (TOML, in `tuning/`): shards, cores, workers, routing,
//! HWMs. A profile is checked before anything starts, and every mistake is
//! one error that names the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::IdleStrategy;
use crate::engine::handler::HandlerSpec;
use crate::engine::reader::{HandOff, Routing};
use crate::engine::{defaults, EngineConfig, Keepalive, ShardConfig};
use crate::snail::{self, Policy, SkewMode, SnailConfig};

use crate::nic::{check_connect, check_interface, interface_down, with_source};

/// Errors loading or checking a profile.
/// The endpoints a shard's publishers are reached on (inproc is refused there: the publisher
/// is another process), as an endpoint's transport fault states them.
const PUBLISHER_FORMS: &str = "tcp://HOST:PORT or ipc://PATH";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("profile {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("profile field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ProfileError {
    ProfileError::Invalid { field: field.into(), message: message.into() }
}

/// Most shards, and most workers, a profile may have: each is a pinned thread with its own
/// sockets and latency histograms (`--workers 100000` took 1.5 GB and every file descriptor
/// before it failed).
pub const MAX_THREADS_OF_A_KIND: usize = 256;

/// One shard of a profile (the default: no endpoint, no filter, nothing pinned).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShardProfile {
    /// Publisher endpoints to connect (`tcp://host:port`). The demo and bench
    /// replace them with their own publisher's.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Endpoints the shard binds, for publishers that connect to it (`tcp://ADDR:PORT`;
    /// `--endpoint bind:EP`). Each publisher connection that ends there is counted and said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<String>,
    /// Local interface name (`eth1`) or IPv4 address to connect from: the shard's NIC.
    #[serde(default)]
    pub interface: Option<String>,
    /// Topic prefixes to subscribe; empty = everything.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Core of this shard's libzmq I/O thread.
    #[serde(default)]
    pub io_core: Option<usize>,
    /// Core of this shard's SUB reader thread.
    #[serde(default)]
    pub reader_core: Option<usize>,
}

/// One worker of a profile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct WorkerProfile {
    #[serde(default)]
    pub core: Option<usize>,
}

fn default_batch_max() -> usize {
    defaults::BATCH_MAX
}
fn default_rcvhwm() -> i32 {
    defaults::RCVHWM_MSGS
}
fn default_max_msg_bytes() -> i64 {
    defaults::MAX_MSG_BYTES
}
fn default_handoff_hwm() -> i32 {
    defaults::HANDOFF_HWM_MSGS
}
fn default_interval_ms() -> u64 {
    defaults::METRICS_INTERVAL_MS
}
fn default_forget_silent_after_ms() -> u64 {
    defaults::FORGET_SILENT_AFTER_MS
}

/// The snail's section of a profile (`[snail]`): lag and silence checks
/// and what their verdicts do (docs/SNAIL.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnailProfile {
    /// `croak` (scream, stop, exit 3), `warn` (log and count), `rest` (skip the backlog, rejoin live) or `off`.
    pub policy: Policy,
    /// Lag above which a message is late.
    pub max_lag_ms: u64,
    /// How long the lag must stay above `max_lag_ms` to be a snail.
    pub grace_ms: u64,
    /// Lag rising through this whole window is a warning.
    pub window_ms: u64,
    /// No frame and no heartbeat for this long is STOP (0: not judged).
    pub silence_ms: u64,
    /// `synchronised` (publisher and subscriber share a clock) or `skew-tolerant`.
    pub skew: SkewMode,
    /// Skew-tolerant mode: lag is judged against the lowest seen over this long.
    pub skew_window_ms: u64,
    /// At most one warn line per reader or worker this often.
    pub warn_every_ms: u64,
    /// Policy `rest`: how long a snail skips everything before it rejoins live.
    pub rest_ms: u64,
    /// Endpoint to bind the monitor PUB on (screams and state), e.g. `tcp://*:5570`.
    pub monitor: Option<String>,
}

impl Default for SnailProfile {
    fn default() -> Self {
        use snail::defaults as d;
        SnailProfile {
            policy: Policy::Croak,
            max_lag_ms: d::MAX_LAG_MS,
            grace_ms: d::GRACE_MS,
            window_ms: d::WINDOW_MS,
            silence_ms: d::SILENCE_MS,
            skew: SkewMode::Synchronised,
            skew_window_ms: d::SKEW_WINDOW_MS,
            warn_every_ms: d::WARN_EVERY_MS,
            rest_ms: d::REST_MS,
            monitor: None,
        }
    }
}

impl SnailProfile {
    /// The engine's snail settings, in ns.
    pub fn config(&self) -> SnailConfig {
        const MS: u64 = 1_000_000;
        SnailConfig {
            policy: self.policy,
            max_lag_ns: self.max_lag_ms.saturating_mul(MS),
            grace_ns: self.grace_ms.saturating_mul(MS),
            window_ns: self.window_ms.saturating_mul(MS),
            silence_ns: self.silence_ms.saturating_mul(MS),
            skew: self.skew,
            skew_window_ns: self.skew_window_ms.saturating_mul(MS),
            warn_every_ns: self.warn_every_ms.saturating_mul(MS),
            rest_ns: self.rest_ms.saturating_mul(MS),
        }
    }

    fn validate(&self) -> Result<(), ProfileError> {
        if self.window_ms == 0 {
            return Err(invalid("snail.window_ms", "must be at least 1"));
        }
        // The same bounds as the flags and the live settings (`snail_max_lag`, `snail_grace`).
        for (f, v, range) in [
            ("snail.max_lag_ms", self.max_lag_ms, snail::defaults::MAX_LAG_RANGE_MS),
            ("snail.grace_ms", self.grace_ms, snail::defaults::GRACE_RANGE_MS),
        ] {
            if !range.contains(&v) {
                return Err(invalid(f, format!("{v} is out of range: give {} to {}", range.start(), range.end())));
            }
        }
        if self.skew == SkewMode::Tolerant && self.skew_window_ms <= self.grace_ms {
            return Err(invalid(
                "snail.skew_window_ms",
                format!(
                    "{} must be longer than grace_ms ({}) to catch lag that grows",
                    self.skew_window_ms, self.grace_ms
                ),
            ));
        }
        if let Some(ep) = &self.monitor {
            crate::zmqx::check_endpoint(ep).map_err(|m| invalid("snail.monitor", m))?;
        }
        Ok(())
    }
}

/// Where a profile [`Profile::load`] gave came from: `builtin` or `auto`, made here (no file to
/// edit or rename it in), or a TOML file. Decided by the `--profile` word, not by the profile's
/// name: a file's profile may be named `auto-4core` or `builtin-2core`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Builtin,
    Auto,
    File,
}

impl Origin {
    /// Where `--profile SPEC` comes from: the words `builtin` and `auto`, else a file.
    pub fn of(spec: &str) -> Origin {
        match spec {
            "builtin" => Origin::Builtin,
            "auto" => Origin::Auto,
            _ => Origin::File,
        }
    }

    /// The `--profile` word of a profile made here (`builtin`, `auto`); None for a file's.
    pub fn made_by(self) -> Option<&'static str> {
        match self {
            Origin::Builtin => Some("builtin"),
            Origin::Auto => Some("auto"),
            Origin::File => None,
        }
    }
}

/// A tuning profile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// What reports and stamps call it [default: the file's name without `.toml`].
    #[serde(default)]
    pub name: String,
    /// Let two threads share a core (needed on hosts with few cores).
    #[serde(default)]
    pub allow_shared_cores: bool,
    /// At least one (`[[shards]]`): the check says so when there is none.
    #[serde(default)]
    pub shards: Vec<ShardProfile>,
    /// At least one (`[[workers]]`, empty for an unpinned worker).
    #[serde(default)]
    pub workers: Vec<WorkerProfile>,
    #[serde(default = "Profile::default_routing")]
    pub routing: Routing,
    #[serde(default = "Profile::default_handoff")]
    pub handoff: HandOff,
    /// Most messages a reader drains into one hand-off round (1..=4096).
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    #[serde(default = "default_rcvhwm")]
    pub rcvhwm_msgs: i32,
    /// Largest frame a shard accepts (bytes); larger ones drop the connection.
    #[serde(default = "default_max_msg_bytes")]
    pub max_msg_bytes: i64,
    /// Hand-off queue depth per worker, in hand-off messages (batches).
    #[serde(default = "default_handoff_hwm")]
    pub handoff_hwm_msgs: i32,
    /// `spin`, `yield`, `backoff` or `block`.
    #[serde(default = "Profile::default_idle")]
    pub idle: String,
    #[serde(default = "Profile::default_handler")]
    pub handler: HandlerSpec,
    #[serde(default = "default_interval_ms")]
    pub metrics_interval_ms: u64,
    /// A publisher of which nothing (no data, no heartbeat, no end of stream) was heard for
    /// this long is forgotten as vanished, its topics released and its open session counted as
    /// unended (0: never; `--forget-silent-after`).
    #[serde(default = "default_forget_silent_after_ms")]
    pub forget_silent_after_ms: u64,
    /// The snail's thresholds and policy.
    #[serde(default)]
    pub snail: SnailProfile,
    /// TCP keepalive on every shard's SUB (`[keepalive]`): how soon a dead path ends a
    /// connection.
    #[serde(default)]
    pub keepalive: Keepalive,
    /// Keys and allow-lists (docs/SECURITY.md); nothing by default.
    #[serde(default)]
    pub security: SecurityProfile,
}

/// The engine's access settings (`[security]`): CURVE keys for the feed,
/// who may subscribe to the monitor PUB, who may scrape `/metrics`. Relative
/// paths are taken from the profile file's directory ([`Profile::load`]); the
/// files are read when the profile is checked for this host and when the engine
/// starts; the same-named flags override each field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityProfile {
    /// This engine's key file (`mdsub keygen`'s NAME.key), presented by every
    /// shard's SUB to publishers that demand CURVE (with `server_key`).
    pub curve_key: Option<PathBuf>,
    /// The publishers' public key file (NAME.pub).
    pub server_key: Option<PathBuf>,
    /// The monitor PUB demands CURVE with this secret key file.
    pub monitor_curve_key: Option<PathBuf>,
    /// With `monitor_curve_key`: only these client public keys (files or directories of `.pub`).
    pub monitor_curve_allow: Vec<PathBuf>,
    /// Only these source addresses may subscribe to the monitor (`10.0.0.0/8`, `127.0.0.1`).
    pub monitor_allow_addr: Vec<String>,
    /// Only these source addresses may scrape `/metrics`.
    pub metrics_allow_addr: Vec<String>,
    /// `/metrics` demands `Authorization: Bearer TOKEN`, TOKEN being this file's content.
    pub metrics_token_file: Option<PathBuf>,
}

impl SecurityProfile {
    /// Take relative paths from `dir` (the profile file's directory), so a profile names the
    /// same files from whatever directory the engine is started in.
    fn resolve_from(&mut self, dir: &Path) {
        let single =
            [&mut self.curve_key, &mut self.server_key, &mut self.monitor_curve_key, &mut self.metrics_token_file];
        for p in single.into_iter().flatten().chain(self.monitor_curve_allow.iter_mut()) {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }

    /// Read every file the section names as the engine will (`mdsub profile check` then
    /// refuses what the engine would): the key pairs (a secret key file whose public key is
    /// its secret's), the public keys, the allow-list (a directory needs a NAME.pub) and the
    /// bearer token.
    fn check_files(&self) -> Result<(), ProfileError> {
        use crate::security::{load_public, load_public_keys, HttpAccess, Keypair};
        fn said(field: &'static str) -> impl Fn(crate::security::SecurityError) -> ProfileError {
            move |e| {
                let mut message = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    message = format!("{message}: {c}");
                    cause = c.source();
                }
                invalid(field, message)
            }
        }
        for (field, key) in
            [("security.curve_key", &self.curve_key), ("security.monitor_curve_key", &self.monitor_curve_key)]
        {
            if let Some(path) = key {
                Keypair::load(path).map_err(said(field))?;
            }
        }
        if let Some(path) = &self.server_key {
            load_public(path).map_err(said("security.server_key"))?;
        }
        load_public_keys(&self.monitor_curve_allow).map_err(said("security.monitor_curve_allow"))?;
        if let Some(path) = &self.metrics_token_file {
            HttpAccess::read_token(path).map_err(said("security.metrics_token_file"))?;
        }
        Ok(())
    }

    /// Check the section; with `files`, read the files it names too ([`SecurityProfile::check_files`]).
    fn validate(&self, files: bool) -> Result<(), ProfileError> {
        if self.curve_key.is_some() != self.server_key.is_some() {
            return Err(invalid("security.curve_key", "curve_key and server_key go together (the feed's CURVE)"));
        }
        if self.monitor_curve_key.is_none() && !self.monitor_curve_allow.is_empty() {
            return Err(invalid("security.monitor_curve_allow", "needs monitor_curve_key"));
        }
        for (field, addrs) in [
            ("security.monitor_allow_addr", &self.monitor_allow_addr),
            ("security.metrics_allow_addr", &self.metrics_allow_addr),
        ] {
            for a in addrs {
                a.parse::<crate::security::AddrBlock>().map_err(|e| invalid(field, e.to_string()))?;
            }
        }
        if files {
            self.check_files()?;
        }
        Ok(())
    }
}

impl Profile {
    fn default_routing() -> Routing {
        Routing::ByTopic
    }
    fn default_handoff() -> HandOff {
        HandOff::Batch
    }
    fn default_idle() -> String {
        "backoff".into()
    }
    fn default_handler() -> HandlerSpec {
        HandlerSpec::Latency
    }

    /// The built-in profile of `mdsub demo`: one shard, one worker, nothing
    /// pinned. On a 2-core host the publisher, its I/O thread, the engine's
    /// I/O thread, reader and worker share two cores; pinning them would only
    /// stop the OS from spreading that load (see benches/README.md).
    pub fn builtin() -> Profile {
        Profile {
            name: "builtin-2core".into(),
            allow_shared_cores: true,
            shards: vec![ShardProfile::default()],
            workers: vec![WorkerProfile::default()],
            routing: Routing::ByTopic,
            handoff: HandOff::Batch,
            batch_max: default_batch_max(),
            rcvhwm_msgs: default_rcvhwm(),
            max_msg_bytes: default_max_msg_bytes(),
            handoff_hwm_msgs: default_handoff_hwm(),
            idle: "backoff".into(),
            handler: HandlerSpec::Latency,
            metrics_interval_ms: default_interval_ms(),
            forget_silent_after_ms: default_forget_silent_after_ms(),
            snail: SnailProfile::default(),
            keepalive: Keepalive::default(),
            security: SecurityProfile::default(),
        }
    }

    /// Derive a profile from the host's cores (`host`, their ids): when there
    /// are more than `2 * shards + workers`, every thread gets a core of its own
    /// (I/O and reader per shard, then workers), leaving the first core to the
    /// OS and the publisher; with fewer, nothing is pinned.
    pub fn auto(host: &[usize], shards: usize, workers: usize) -> Profile {
        let mut p = Profile::builtin();
        p.name = format!("auto-{}core", host.len());
        let shards = shards.max(1);
        let workers = workers.max(1);
        p.shards = vec![ShardProfile::default(); shards];
        p.workers = vec![WorkerProfile::default(); workers];
        if host.len() > 2 * shards + workers {
            p.allow_shared_cores = false;
            let mut next = host.iter().copied().skip(1);
            for s in &mut p.shards {
                s.io_core = next.next();
                s.reader_core = next.next();
            }
            for w in &mut p.workers {
                w.core = next.next();
            }
        }
        p
    }

    /// Parse TOML; `path` is for the error message, and names a profile without a `name`
    /// (`tuning/fast.toml`: `fast`).
    pub fn from_toml(text: &str, path: &str) -> Result<Profile, ProfileError> {
        let mut p: Profile = toml::from_str(text).map_err(|e| {
            // The parser's own text is a multi-line excerpt with a caret; one line says the place
            // and the reason.
            let reason = e.message().trim().replace('\n', "; ");
            let message = match e.span() {
                Some(span) => {
                    let before = &text.as_bytes()[..span.start.min(text.len())];
                    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
                    // The line itself names the key a type error is about.
                    let said: String = text.lines().nth(line - 1).unwrap_or("").trim().chars().take(80).collect();
                    let said = if said.is_empty() { String::new() } else { format!(" (`{said}`)") };
                    format!("line {line}, column {column}{said}: {reason}")
                }
                None => reason,
            };
            ProfileError::Parse { path: path.into(), message }
        })?;
        if p.name.is_empty() {
            let stem = Path::new(path).file_stem().map(|s| s.to_string_lossy().into_owned());
            p.name = stem.filter(|s| !s.is_empty()).unwrap_or_else(|| "unnamed".into());
        }
        Ok(p)
    }

    /// Load `path`, or `builtin` / `auto` by name ([`Origin::of`]); a file's relative
    /// `[security]` paths are taken from its directory.
    pub fn load(path: &str) -> Result<Profile, ProfileError> {
        match Origin::of(path) {
            Origin::Builtin => return Ok(Profile::builtin()),
            Origin::Auto => return Ok(Profile::auto(&crate::host::cores(), 1, 1)),
            Origin::File => {}
        }
        // A regular file only: a FIFO's open would wait for a writer (crate::infile).
        let read = |source| ProfileError::Read { path: path.into(), source };
        let mut text = String::new();
        crate::infile::open(Path::new(path), "a profile is a TOML file")
            .and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut text))
            .map_err(read)?;
        let mut p = Profile::from_toml(&text, path)?;
        p.security.resolve_from(Path::new(path).parent().unwrap_or(Path::new("")));
        Ok(p)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Why this profile's `book` handler would build wrong books, if it would: round-robin routing
    /// over several workers hands each worker every few records of an instrument, so each builds
    /// part of every book (an add on one worker, its cancel on another: both books wrong, each
    /// reported). By-topic routing, or one worker, keeps an instrument on one worker.
    pub fn split_books(&self) -> Option<String> {
        let split = self.handler == HandlerSpec::Book
            && self.routing == Routing::RoundRobin
            && self.workers.len() > 1
            && self.handoff != HandOff::Inline;
        split.then(|| {
            format!(
                "the book handler with round-robin routing over {} workers would build wrong books: each worker \
                 gets every few records of an instrument (an order's add on one, its cancel on another), so \
                 every book is split between them; use routing by-topic (each instrument on one worker)",
                self.workers.len()
            )
        })
    }

    /// Check everything that can be checked before starting.
    pub fn validate(&self, host: &[usize]) -> Result<(), ProfileError> {
        self.validate_for(host, true)
    }

    /// [`Profile::validate`] against a host with cores `host`. `this_host`: `host` is this
    /// process's cores (a core outside them may be outside its CPU mask), and interfaces,
    /// endpoints' sources and the files `[security]` names (key files, allow-lists, the token)
    /// are looked up (they can be only on the host that will run the engine).
    pub fn validate_for(&self, host: &[usize], this_host: bool) -> Result<(), ProfileError> {
        // The name is one line of every report (capacity's summary.md and carry-on command): a
        // newline in it broke them.
        if let Some(c) = self.name.chars().find(|c| c.is_control()) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} has a control character ({c:?}): the name is one line in every report; give one without \
                     (the file's name is the name when the profile gives none)",
                    self.name
                ),
            ));
        }
        if self.shards.is_empty() {
            return Err(invalid("shards", "at least one shard is needed; add a [[shards]] table"));
        }
        if self.workers.is_empty() {
            return Err(invalid("workers", "at least one worker is needed; add a [[workers]] table"));
        }
        for (f, n) in [("shards", self.shards.len()), ("workers", self.workers.len())] {
            if n > MAX_THREADS_OF_A_KIND {
                return Err(invalid(
                    f,
                    format!(
                        "{n} is too many: at most {MAX_THREADS_OF_A_KIND} (each is a pinned thread with its own \
                         sockets and latency histograms)"
                    ),
                ));
            }
        }
        for (k, s) in self.shards.iter().enumerate() {
            if let Some(p) = s.subscribe.iter().find(|p| p.len() > crate::zmqx::MAX_PREFIX_BYTES) {
                return Err(invalid(
                    format!("shards[{k}].subscribe"),
                    format!(
                        "a prefix of {} bytes: at most {} (topics are at most {} bytes; libzmq's SUB cannot \
                         take a very long prefix safely)",
                        p.len(),
                        crate::zmqx::MAX_PREFIX_BYTES,
                        crate::wire::MAX_TOPIC_LEN
                    ),
                ));
            }
        }
        for (k, s) in self.shards.iter().enumerate() {
            // Before: `subscribe = ["\u0000"]` passed, and the shard delivered nothing.
            if let Some((p, why)) =
                s.subscribe.iter().find_map(|p| crate::wire::prefix_problem(p.as_bytes()).map(|w| (p, w)))
            {
                return Err(invalid(
                    format!("shards[{k}].subscribe"),
                    format!("no frame can start with the prefix `{}`: {why}", crate::diag::quoted(p)),
                ));
            }
        }
        if self.handoff == HandOff::Inline && self.workers.len() != self.shards.len() {
            return Err(invalid("handoff", crate::engine::inline_layout_error(self.shards.len(), self.workers.len())));
        }
        if let Some(why) = self.split_books() {
            return Err(invalid("routing", why));
        }
        if !(1..=4096).contains(&self.batch_max) {
            return Err(invalid("batch_max", format!("{} is outside 1..=4096", self.batch_max)));
        }
        for (f, v) in [("rcvhwm_msgs", self.rcvhwm_msgs), ("handoff_hwm_msgs", self.handoff_hwm_msgs)] {
            if v < 0 {
                return Err(invalid(f, format!("{v} is negative (0 means no limit)")));
            }
        }
        if self.max_msg_bytes < 64 {
            return Err(invalid("max_msg_bytes", format!("{} is too small for a frame", self.max_msg_bytes)));
        }
        // A batch record says its frame's length in 32 bits: a larger frame would be cut short.
        let most = crate::engine::batch::MAX_FRAME_BYTES;
        if self.max_msg_bytes as u64 > most as u64 {
            return Err(invalid(
                "max_msg_bytes",
                format!("{} is above {most}, the largest frame a batch hand-off carries", self.max_msg_bytes),
            ));
        }
        if IdleStrategy::from_name(&self.idle).is_none() {
            return Err(invalid("idle", format!("`{}` is not one of spin, yield, backoff, block", self.idle)));
        }
        // The same range as --metrics-interval and the live setting.
        let range = crate::engine::defaults::METRICS_INTERVAL_RANGE_MS;
        if !range.contains(&self.metrics_interval_ms) {
            return Err(invalid(
                "metrics_interval_ms",
                format!("{} is out of range: give {} to {}", self.metrics_interval_ms, range.start(), range.end()),
            ));
        }
        if let Some(why) = crate::engine::defaults::forget_silent_after_problem(self.forget_silent_after_ms) {
            return Err(invalid("forget_silent_after_ms", why));
        }
        self.snail.validate()?;
        if let Some((field, why)) = self.keepalive.problem() {
            return Err(invalid(format!("keepalive.{field}"), why));
        }
        self.security.validate(this_host)?;
        let mut used: Vec<(usize, String)> = Vec::new();
        let mut claim = |core: Option<usize>, field: String| -> Result<(), ProfileError> {
            let Some(c) = core else { return Ok(()) };
            if !host.contains(&c) {
                let cores = core_list(host);
                return Err(invalid(
                    field,
                    if this_host && online_cores().contains(&c) {
                        format!(
                            "core {c} is outside this process's CPU mask (taskset, a cpuset or a container limits \
                             it to {cores}); use one of {cores}, run it with core {c} in its mask, or remove the field"
                        )
                    } else if this_host {
                        format!("core {c} does not exist on this host; use one of {cores} or remove the field")
                    } else {
                        format!(
                            "core {c} is not one of the host's cores ({cores}); use one of them or remove the field"
                        )
                    },
                ));
            }
            if let Some((_, other)) = used.iter().find(|(u, _)| *u == c) {
                if !self.allow_shared_cores {
                    return Err(invalid(
                        field,
                        format!("core {c} is already given to `{other}` (set allow_shared_cores = true to share)"),
                    ));
                }
            }
            used.push((c, field));
            Ok(())
        };
        // (publisher, its shard, its endpoint as written) of the endpoints checked so far.
        let mut publishers: Vec<(String, usize, &String)> = Vec::new();
        // (its shard, its endpoint as written) of the binds checked so far.
        let mut bound: Vec<(usize, &String)> = Vec::new();
        for (i, s) in self.shards.iter().enumerate() {
            claim(s.io_core, format!("shards[{i}].io_core"))?;
            claim(s.reader_core, format!("shards[{i}].reader_core"))?;
            for (j, ep) in s.binds.iter().enumerate() {
                let field = format!("shards[{i}].binds[{j}]");
                crate::zmqx::check_endpoint_as(ep, PUBLISHER_FORMS).map_err(|m| invalid(&field, m))?;
                if let Some((k, first)) = bound.iter().find(|(_, b)| crate::endpoint::binds_clash(b, ep)) {
                    let (what, own) = if ep.starts_with("tcp://") { ("port", "a port") } else { ("path", "a path") };
                    return Err(invalid(
                        field,
                        format!(
                            "`{ep}` takes the {what} shard {k} binds already (`{first}`): the engine could not \
                             start (address in use); give each shard {own} of its own"
                        ),
                    ));
                }
                bound.push((i, ep));
                let Some((host, port)) = crate::endpoint::publisher_of(ep)
                    .strip_prefix("tcp://")
                    .and_then(|t| t.rsplit_once(':'))
                    .map(|(h, p)| (h.to_string(), p.to_string()))
                else {
                    continue;
                };
                let any = |h: &str| matches!(h, "*" | "0.0.0.0" | "[::]");
                if let Some(iface) = &s.interface {
                    if any(&host) {
                        return Err(invalid(
                            field,
                            format!(
                                "`{ep}` listens on every interface, and the shard's `interface` is `{iface}` (it \
                                 sets the source of the shard's connections only): bind {iface}'s address, \
                                 tcp://ADDR:{port}"
                            ),
                        ));
                    }
                }
            }
            for (j, ep) in s.endpoints.iter().enumerate() {
                let field = format!("shards[{i}].endpoints[{j}]");
                crate::zmqx::check_endpoint_as(ep, PUBLISHER_FORMS).map_err(|m| {
                    invalid(&field, format!("{m}; write tcp://HOST:PORT (the NIC to connect from goes in `interface`)"))
                })?;
                // What libzmq's connect refuses only when the engine starts (`Invalid argument`).
                if let Some(why) = crate::zmqx::connect_problem(ep) {
                    return Err(invalid(&field, format!("endpoint `{ep}`: {why}; a bind goes in `binds`")));
                }
                if s.interface.is_some() && !ep.starts_with("tcp://") {
                    return Err(invalid(
                        format!("shards[{i}].interface"),
                        "an interface applies to tcp:// endpoints only",
                    ));
                }
                // Two sources to one HOST:PORT are still one publisher.
                let publisher = crate::endpoint::publisher_of(ep);
                if let Some((_, k, first)) = publishers.iter().find(|(p, _, _)| *p == publisher) {
                    return Err(invalid(
                        field,
                        format!(
                            "`{ep}` is the publisher shard {k} connects to already (`{first}`): the same \
                             publisher twice sends every message twice and its end of stream is awaited twice; \
                             give each publisher once"
                        ),
                    ));
                }
                if let (Some(iface), Some((Some(source), _))) = (&s.interface, crate::endpoint::tcp_parts(ep)) {
                    return Err(invalid(
                        &field,
                        format!(
                            "`{ep}` names its own source (`{source}`), and the shard's `interface` is `{iface}`: \
                             a connection has one source; drop one of them"
                        ),
                    ));
                }
                publishers.push((publisher, i, ep));
                check_connect(ep, this_host).map_err(|m| invalid(&field, format!("`{ep}`: {m}")))?;
            }
            if let Some(iface) = s.interface.as_ref().filter(|_| this_host) {
                check_interface(iface).map_err(|m| invalid(format!("shards[{i}].interface"), m))?;
            }
        }
        // Inline: the shard's reader runs the handler, so a worker's core is unused.
        if self.handoff != HandOff::Inline {
            for (i, w) in self.workers.iter().enumerate() {
                claim(w.core, format!("workers[{i}].core"))?;
            }
        }
        Ok(())
    }

    /// What an engine runs with this profile, in a line: `2 shard(s) (pinned), 1 worker(s),
    /// handoff batch, routing by-topic, idle backoff, handler latency`. An engine says it at its
    /// start, so that a user can see the profile (a capacity run's winner) was the one applied.
    pub fn summary(&self) -> String {
        let pinned = self.shards.iter().any(|s| s.io_core.is_some() || s.reader_core.is_some())
            || self.workers.iter().any(|w| w.core.is_some());
        let routing = self.routing.name();
        format!(
            "{} shard(s){}, {} worker(s), handoff {}, routing {routing}, idle {}, handler {}",
            self.shards.len(),
            if pinned { " (pinned)" } else { "" },
            self.workers.len(),
            self.handoff.name(),
            self.idle,
            self.handler
        )
    }

    /// Each shard's interface (its `interface`, or the source an endpoint of it names) that
    /// is down or without a link now: (shard, why). Not a refusal: an interface may come up
    /// later (a boot, a flap), and libzmq keeps trying to connect until it does.
    pub fn interfaces_down(&self) -> Vec<(usize, String)> {
        let mut out: Vec<(usize, String)> = Vec::new();
        for (k, s) in self.shards.iter().enumerate() {
            let named = s.endpoints.iter().filter_map(|e| crate::endpoint::tcp_parts(e).and_then(|(source, _)| source));
            let sources = s
                .interface
                .iter()
                .filter(|_| !s.endpoints.is_empty())
                .map(String::as_str)
                .chain(named.map(crate::endpoint::host_of));
            for source in sources {
                if let Some(why) = interface_down(source).filter(|w| !out.iter().any(|(j, o)| *j == k && o == w)) {
                    out.push((k, why));
                }
            }
        }
        out
    }

    /// What `mdsub engine` refuses when no `--endpoint` replaces the
    /// profile's endpoints: a shard with none (`profile check` says the same).
    pub fn check_endpoints(&self) -> Result<(), ProfileError> {
        for (i, s) in self.shards.iter().enumerate() {
            if s.endpoints.is_empty() && s.binds.is_empty() {
                return Err(invalid(
                    format!("shards[{i}].endpoints"),
                    "empty: every shard needs an endpoint; list the publisher's tcp://HOST:PORT here \
                     (or one to bind in `binds`) or give the engine --endpoint (it replaces every shard's)",
                ));
            }
            // The publisher is another process: an inproc endpoint, connected or bound, never comes up.
            let inproc = |eps: &[String], field: &str| {
                eps.iter().position(|e| e.starts_with("inproc://")).map(|j| format!("shards[{i}].{field}[{j}]"))
            };
            if let Some(field) = inproc(&s.endpoints, "endpoints").or_else(|| inproc(&s.binds, "binds")) {
                return Err(invalid(
                    field,
                    "an inproc endpoint reaches only sockets inside the engine's process, and the \
                     publisher is another process; use ipc:///tmp/NAME or tcp://HOST:PORT",
                ));
            }
        }
        Ok(())
    }

    /// This profile with `n` shards: shard k is the profile's shard k where it has one (its
    /// interface, cores and subscriptions), and a shard beyond them is the default (unpinned,
    /// from the interface the routing table picks, subscribed to everything). The one rule of
    /// `engine --endpoint` given N times, `bench --compare shards` and `capacity --vary shards`.
    pub fn with_shards(&self, n: usize) -> Profile {
        let mut p = self.clone();
        p.shards.resize_with(n, ShardProfile::default);
        p
    }

    /// Resolve into an engine configuration. `endpoints`, if given, replaces
    /// each shard's endpoints (one per shard, from an in-process publisher).
    pub fn engine_config(&self, endpoints: Option<&[String]>) -> EngineConfig {
        let shards = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let eps: Vec<String> = match endpoints {
                    Some(e) => e.get(i).cloned().into_iter().collect(),
                    None => s.endpoints.clone(),
                };
                let eps = match &s.interface {
                    Some(iface) => eps.iter().map(|e| with_source(e, iface)).collect(),
                    None => eps,
                };
                ShardConfig {
                    endpoints: eps,
                    // An in-process publisher's endpoints replace the shard's binds too.
                    binds: if endpoints.is_some() { vec![] } else { s.binds.clone() },
                    subscribe: s.subscribe.clone(),
                    io_core: s.io_core,
                    reader_core: s.reader_core,
                }
            })
            .collect();
        EngineConfig {
            shards,
            worker_cores: self.workers.iter().map(|w| w.core).collect(),
            routing: self.routing,
            handoff: self.handoff,
            batch_max: self.batch_max,
            rcvhwm_msgs: self.rcvhwm_msgs,
            max_msg_bytes: self.max_msg_bytes,
            handoff_hwm_msgs: self.handoff_hwm_msgs,
            idle: IdleStrategy::from_name(&self.idle).unwrap_or_default(),
            handler: self.handler,
            metrics_interval: std::time::Duration::from_millis(self.metrics_interval_ms),
            forget_silent_after: std::time::Duration::from_millis(self.forget_silent_after_ms),
            expect_eos_per_shard: None,
            snail: self.snail.config(),
            monitor: self.snail.monitor.clone(),
            keepalive: self.keepalive,
            ..EngineConfig::default()
        }
    }
}

/// Core ids as ranges: `0-3,6`.
pub fn core_list(cores: &[usize]) -> String {
    let mut sorted = cores.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        out.push(if j == i { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    if out.is_empty() {
        "(none)".into()
    } else {
        out.join(",")
    }
}

/// The cores the kernel has online (`/sys/devices/system/cpu/online`), this process's CPU
/// mask or not; empty when that cannot be read.
pub fn online_cores() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    text.trim().split(',').filter_map(|part| parse_core_range(part.trim()).ok()).flatten().collect()
}

/// One part of a core list: a core (`3`) or a range of them (`0-7`).
pub fn parse_core_range(part: &str) -> Result<std::ops::RangeInclusive<usize>, String> {
    let bad = || "not a core or a range of cores (e.g. 0-7 or 0,2,4-7)".to_string();
    match part.split_once('-') {
        Some((a, b)) => {
            let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if a > b || b - a > 4096 {
                return Err(bad());
            }
            Ok(a..=b)
        }
        None => part.parse().map(|c| c..=c).map_err(|_| bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped 2-core profile's TOML with `section` added at the end.
    fn default_2core_with(section: &str) -> String {
        include_str!("../tuning/default-2core.toml").to_string() + "\n" + section
    }

    /// [`default_2core_with`] parsed and valid on a 2-core host.
    fn valid_2core_with(section: &str) -> Profile {
        let p = Profile::from_toml(&default_2core_with(section), "s.toml").expect("parses");
        p.validate(&[0, 1]).expect("valid");
        p
    }

    #[test]
    fn with_shards_keeps_each_profile_shard_and_adds_unpinned_ones() {
        let mut p = Profile::builtin();
        p.shards = vec![
            ShardProfile {
                interface: Some("eth1".into()),
                subscribe: vec!["A".into()],
                io_core: Some(0),
                reader_core: Some(1),
                ..Default::default()
            },
            ShardProfile {
                interface: Some("eth2".into()),
                io_core: Some(2),
                reader_core: Some(3),
                ..Default::default()
            },
        ];
        let three = p.with_shards(3);
        // Shard 1 keeps its own NIC and cores (it used to be a copy of shard 0, unpinned).
        assert_eq!(three.shards[..2], p.shards[..]);
        assert_eq!(three.shards[2], ShardProfile::default(), "beyond the profile: unpinned, everything");
        assert_eq!(p.with_shards(1).shards, p.shards[..1]);
        assert_eq!((three.workers, three.name), (p.workers.clone(), p.name.clone()), "only the shards change");
    }

    fn err_field(p: &Profile, host: &[usize]) -> String {
        match p.validate(host) {
            Err(ProfileError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn a_publisher_endpoint_offers_only_what_a_shard_takes_and_a_connect_needs_host_and_port() {
        let message = |p: &Profile| match p.validate(&[0, 1]) {
            Err(ProfileError::Invalid { field, message }) => format!("{field}: {message}"),
            other => panic!("expected an invalid field, got {other:?}"),
        };
        // Before: `(expected tcp://host:port, ipc://path or inproc://name)`, and inproc is refused.
        let mut p = Profile::builtin();
        p.shards[0].binds = vec!["foo".into()];
        assert_eq!(
            message(&p),
            "shards[0].binds[0]: endpoint `foo`: no transport (expected tcp://HOST:PORT or ipc://PATH)"
        );
        // Before: passed, and the engine failed at start with `Invalid argument`.
        let mut p = Profile::builtin();
        p.shards[0].endpoints = vec!["tcp://*:5556".into()];
        assert_eq!(
            message(&p),
            "shards[0].endpoints[0]: endpoint `tcp://*:5556`: a connect endpoint needs a host: `*` (every interface) \
             is for binding; a bind goes in `binds`"
        );
    }

    #[test]
    fn builtin_and_auto_validate() {
        Profile::builtin().validate(&[0, 1]).expect("builtin fits 2 cores");
        Profile::auto(&[0, 1], 1, 1).validate(&[0, 1]).expect("auto on 2 cores");
        let big = Profile::auto(&(0..8).collect::<Vec<_>>(), 2, 2);
        big.validate(&(0..8).collect::<Vec<_>>()).expect("auto on 8 cores");
        assert_eq!(big.shards[1].reader_core, Some(4));
        assert!(!big.allow_shared_cores);
        // A cpuset with holes: only the ids that exist are used.
        let holes = [2, 3, 5, 7, 11, 13];
        let p = Profile::auto(&holes, 1, 2);
        p.validate(&holes).expect("auto within a cpuset");
        assert_eq!((p.shards[0].io_core, p.shards[0].reader_core, p.workers[1].core), (Some(3), Some(5), Some(11)));
    }

    /// A batch record says its frame's length in 32 bits, `u32::MAX` its restamp: before, a
    /// `max_msg_bytes` of 4 GiB or more passed, and a frame that long reached `batch::push`,
    /// whose length field (`len as u32`) cut it short (or made it a restamp) in a release build.
    #[test]
    fn max_msg_bytes_is_held_to_what_a_batch_record_can_say() {
        let most = crate::engine::batch::MAX_FRAME_BYTES as i64;
        let mut p = Profile::builtin();
        p.max_msg_bytes = most;
        p.validate(&[0, 1]).expect("the largest frame a record holds");
        for over in [most + 1, 1 << 32, i64::MAX] {
            p.max_msg_bytes = over;
            match p.validate(&[0, 1]) {
                Err(ProfileError::Invalid { field, message }) => {
                    assert_eq!(field, "max_msg_bytes");
                    assert_eq!(message, format!("{over} is above {most}, the largest frame a batch hand-off carries"));
                }
                other => panic!("{over}: expected max_msg_bytes refused, got {other:?}"),
            }
        }
    }

    #[test]
    fn mistakes_name_their_field() {
        let mut p = Profile::builtin();
        p.shards[0].io_core = Some(7);
        assert_eq!(err_field(&p, &[0, 1]), "shards[0].io_core");

        let mut p = Profile::builtin();
        p.allow_shared_cores = false;
        p.shards[0].reader_core = Some(1);
        p.workers[0].core = Some(1);
        assert_eq!(err_field(&p, &[0, 1]), "workers[0].core");
        // Inline runs the handler on the reader: the worker's core is unused, not a clash.
        p.handoff = HandOff::Inline;
        p.validate(&[0, 1]).expect("an inline worker's core is not claimed");

        let mut p = Profile::builtin();
        p.shards[0].endpoints = vec!["tcp://127.0.0.1".into()];
        assert_eq!(err_field(&p, &[0, 1]), "shards[0].endpoints[0]");

        let mut p = Profile::builtin();
        p.shards[0].interface = Some("nosuchnic0".into());
        assert_eq!(err_field(&p, &[0, 1]), "shards[0].interface");

        let mut p = Profile::builtin();
        p.idle = "nap".into();
        assert_eq!(err_field(&p, &[0, 1]), "idle");

        // Bounds found by the hostile-input audit: --workers 100000 ate 1.5 GB and every file
        // descriptor; a 60 KB prefix overflows libzmq's recursive subscription trie.
        let mut p = Profile::builtin();
        p.workers = vec![p.workers[0].clone(); MAX_THREADS_OF_A_KIND + 1];
        assert_eq!(err_field(&p, &[0, 1]), "workers");
        p.workers.truncate(MAX_THREADS_OF_A_KIND);
        p.validate(&[0, 1]).expect("the bound itself is fine");
        let mut p = Profile::builtin();
        p.shards[0].subscribe = vec!["ES".into(), "H".repeat(crate::zmqx::MAX_PREFIX_BYTES + 1)];
        assert_eq!(err_field(&p, &[0, 1]), "shards[0].subscribe");
        p.shards[0].subscribe.pop();
        p.validate(&[0, 1]).expect("a short prefix is fine");
        for (prefix, says) in [("\0", "it starts with a NUL"), ("ES H", "the byte 0x20"), ("ES\0X", "after its NUL")] {
            p.shards[0].subscribe = vec!["ES".into(), prefix.into()];
            let e = p.validate(&[0, 1]).expect_err(prefix).to_string();
            assert!(e.contains("shards[0].subscribe") && e.contains(says), "{prefix:?}: {e}");
        }
        p.shards[0].subscribe = vec!["ESH6\0".into()];
        p.validate(&[0, 1]).expect("a prefix ending in a NUL selects one topic");
    }

    #[test]
    fn toml_round_trip_and_unknown_field() {
        let p = Profile::builtin();
        assert_eq!(Profile::from_toml(&p.to_toml(), "x").expect("parses"), p);
        let bad = p.to_toml().replace("batch_max", "batch_maxx");
        match Profile::from_toml(&bad, "t.toml") {
            Err(ProfileError::Parse { message, .. }) => assert!(message.contains("batch_maxx"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn snail_section_parses_resolves_and_names_bad_fields() {
        let p = valid_2core_with(
            "[snail]\npolicy = \"warn\"\nmax_lag_ms = 200\nskew = \"skew-tolerant\"\nmonitor = \"tcp://127.0.0.1:5570\"\n",
        );
        let cfg = p.engine_config(None);
        assert_eq!(
            (cfg.snail.policy, cfg.snail.max_lag_ns, cfg.snail.skew),
            (Policy::Warn, 200_000_000, SkewMode::Tolerant)
        );
        assert_eq!(cfg.snail.grace_ns, snail::defaults::GRACE_MS * 1_000_000, "unset fields keep their defaults");
        assert_eq!(cfg.monitor.as_deref(), Some("tcp://127.0.0.1:5570"));
        assert_eq!(Profile::from_toml(&p.to_toml(), "x").expect("round trip"), p);

        let mut p = Profile::builtin();
        p.snail.skew = SkewMode::Tolerant;
        p.snail.skew_window_ms = p.snail.grace_ms;
        assert_eq!(err_field(&p, &[0, 1]), "snail.skew_window_ms");
        let mut p = Profile::builtin();
        p.snail.monitor = Some("tcp://nowhere".into());
        assert_eq!(err_field(&p, &[0, 1]), "snail.monitor");
        let mut p = Profile::builtin();
        p.snail.max_lag_ms = 0;
        assert_eq!(err_field(&p, &[0, 1]), "snail.max_lag_ms");
        // The live settings' bounds (1h), not only the flags'.
        let mut p = Profile::builtin();
        p.snail.max_lag_ms = 3_600_001;
        assert_eq!(err_field(&p, &[0, 1]), "snail.max_lag_ms");
        let mut p = Profile::builtin();
        p.snail.grace_ms = 3_600_001;
        assert_eq!(err_field(&p, &[0, 1]), "snail.grace_ms");
        let bad = default_2core_with("[snail]\npolicy = \"scream\"\n");
        assert!(matches!(Profile::from_toml(&bad, "b.toml"), Err(ProfileError::Parse { .. })));
    }

    #[test]
    fn keepalive_section_parses_resolves_and_names_bad_fields() {
        // Before: 2 s, 1 s and 3 probes were constants; a WAN feed that must ride out a longer
        // outage on the same connection, or a desk that must hear of a dead path sooner, could
        // not set them.
        let cfg = Profile::builtin().engine_config(None);
        assert_eq!(cfg.keepalive, Keepalive { enabled: true, idle_s: 2, interval_s: 1, probes: 3 });
        let p = valid_2core_with(
            "[keepalive]
idle_s = 30
probes = 5
",
        );
        let cfg = p.engine_config(None);
        assert_eq!(cfg.keepalive, Keepalive { enabled: true, idle_s: 30, interval_s: 1, probes: 5 });
        assert_eq!(Profile::from_toml(&p.to_toml(), "x").expect("round trip"), p);
        assert!(
            !valid_2core_with(
                "[keepalive]
enabled = false
"
            )
            .engine_config(None)
            .keepalive
            .enabled
        );
        for (field, bad) in
            [("idle_s", 0), ("idle_s", Keepalive::MAX_S + 1), ("interval_s", 0), ("probes", 0), ("probes", 128)]
        {
            let p = Profile::from_toml(&default_2core_with(&format!("[keepalive]\n{field} = {bad}\n")), "k.toml")
                .expect("parses");
            assert_eq!(err_field(&p, &[0, 1]), format!("keepalive.{field}"), "{field} = {bad}");
        }
        let bad = default_2core_with("[keepalive]\nidle_ms = 2000\n");
        assert!(matches!(Profile::from_toml(&bad, "b.toml"), Err(ProfileError::Parse { .. })), "unknown field");
    }

    #[test]
    fn security_section_parses_and_names_bad_fields() {
        let section =
            "[security]\ncurve_key = \"k/e.key\"\nserver_key = \"k/f.pub\"\nmetrics_allow_addr = [\"10.0.0.0/8\"]\n";
        let p = Profile::from_toml(&default_2core_with(section), "s.toml").expect("parses");
        p.validate_for(&[0, 1], false).expect("valid when its files are not looked at (another host's)");
        assert_eq!(err_field(&p, &[0, 1]), "security.curve_key", "on this host, k/e.key is read: there is none");
        assert_eq!(p.security.server_key.as_deref(), Some(Path::new("k/f.pub")));
        assert_eq!(Profile::from_toml(&p.to_toml(), "x").expect("round trip"), p);
        let mut p = Profile::builtin();
        p.security.monitor_allow_addr = vec!["10.0.0.0/40".into()];
        assert_eq!(err_field(&p, &[0, 1]), "security.monitor_allow_addr");
        let mut p = Profile::builtin();
        p.security.curve_key = Some("k/e.key".into());
        assert_eq!(err_field(&p, &[0, 1]), "security.curve_key", "a client key without the server's");
        let mut p = Profile::builtin();
        p.security.monitor_curve_allow = vec!["k/ops".into()];
        assert_eq!(err_field(&p, &[0, 1]), "security.monitor_curve_allow");
    }

    #[test]
    fn security_files_are_read_from_the_profiles_directory_and_checked() {
        use crate::security::Keypair;
        let dir = std::env::temp_dir().join(format!("mdsub-profile-keys-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("keys/ops")).expect("dirs");
        let pair = Keypair::generate().expect("this build has CURVE");
        pair.write(&dir.join("keys"), "engine1").expect("engine1");
        pair.write(&dir.join("keys/ops"), "ops").expect("ops");
        std::fs::write(dir.join("keys/garbage.key"), "not a key\n").expect("garbage");
        std::fs::create_dir_all(dir.join("keys/empty")).expect("empty");
        let profile = |name: &str, security: &str| {
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, default_2core_with(&format!("[security]\n{security}"))).expect("profile");
            Profile::load(path.to_str().expect("utf8")).expect("loads")
        };
        // Relative to the profile's directory, whatever the working directory is.
        let good = "curve_key = \"keys/engine1.key\"\nserver_key = \"keys/engine1.pub\"\n\
                    monitor_curve_key = \"keys/engine1.key\"\nmonitor_curve_allow = [\"keys/ops\"]\n";
        let p = profile("good", good);
        assert_eq!(p.security.curve_key, Some(dir.join("keys/engine1.key")));
        assert_eq!(p.security.monitor_curve_allow, [dir.join("keys/ops")]);
        p.validate(&[0, 1]).expect("its files are good");
        let absolute =
            format!("curve_key = \"{}\"\nserver_key = \"keys/engine1.pub\"\n", dir.join("keys/engine1.key").display());
        assert_eq!(profile("abs", &absolute).security.curve_key, Some(dir.join("keys/engine1.key")), "kept as it is");
        for (security, field, says) in [
            (
                "curve_key = \"keys/garbage.key\"\nserver_key = \"keys/engine1.pub\"",
                "security.curve_key",
                "no public-key line",
            ),
            (
                "curve_key = \"keys/engine1.pub\"\nserver_key = \"keys/engine1.pub\"",
                "security.curve_key",
                "no secret-key line (is this a .pub file?",
            ),
            ("curve_key = \"keys/engine1.key\"\nserver_key = \"keys/none.pub\"", "security.server_key", "No such file"),
            (
                "monitor_curve_key = \"keys/engine1.key\"\nmonitor_curve_allow = [\"keys/empty\"]",
                "security.monitor_curve_allow",
                "no NAME.pub in it",
            ),
            ("metrics_token_file = \"keys/none.token\"", "security.metrics_token_file", "No such file"),
        ] {
            match profile("bad", security).validate(&[0, 1]) {
                Err(ProfileError::Invalid { field: f, message }) => {
                    assert_eq!(f, field, "{security}: {message}");
                    assert!(message.contains(says), "{security}: {message}");
                }
                other => panic!("{security}: expected {field} refused, got {other:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn shipped_profiles_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning");
        let mut n = 0;
        for e in std::fs::read_dir(dir).expect("tuning/ exists") {
            let path = e.expect("entry").path();
            if path.extension().is_some_and(|x| x == "toml") {
                Profile::load(path.to_str().expect("utf8")).expect("shipped profile parses");
                n += 1;
            }
        }
        assert!(n > 0);
    }
}
