//! The `mdsub clone-server`, `clone-client` command lines (Clone pattern faces).
//!
//! The arguments (clap) and the thin drivers that call the clone library; `clone-bench` is in [`super::bench`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::args::{
    parse_bind_endpoint, parse_bytes_usize, parse_clone_bind, parse_clone_server, parse_connect_endpoint, parse_count,
    parse_count_nonzero, parse_duration, parse_duration_nonzero, parse_hwm, parse_ms_in, parse_whole_ms, whole_ms,
    Endpoint, Idle,
};
use super::security::{ClientKeyArgs, ServerAccessArgs};
use crate::agent::{RunSpec, Runner, StopFlag};
use crate::clone::bstar::Role;
use crate::clone::client::{AckState, ChangeKind, Client, ClientConfig, ClientError};
use crate::clone::kvmsg::{show, Uuid};
use crate::clone::map::MAX_TTL_S;
use crate::clone::server::{PairConfig, Server, ServerConfig, INTERVAL_RANGE_MS};
use crate::link::{LinkStats, Reason};
use crate::security::ClientKeys;

/// `mdsub clone-server`: serve a CHP key-value store, alone or as half of a Binary Star pair.
///
/// Ports: P snapshot (ROUTER, ICANHAZ?), P+1 updates (PUB, KVPUB/HUGZ), P+2 collector (SUB,
/// KVSET), and in a pair P+3 Binary Star state (PUB).
#[derive(Args, Debug, Clone)]
#[command(after_help = "With --curve-key, both halves of a Binary Star pair use the same key file (each \
connects to the other as a CURVE client with it); clients give its NAME.pub as --server-key. See docs/SECURITY.md.")]
pub struct ServerArgs {
    /// Base endpoint to bind, `bind:tcp://HOST:P` or `tcp://HOST:P` (P..P+3 are used; HOST may be *).
    #[arg(long, value_parser = parse_clone_bind, default_value = "tcp://127.0.0.1:5556", value_name = "[bind:]tcp://HOST:P")]
    pub endpoint: Endpoint,
    /// Run as the primary of a pair (needs --peer).
    #[arg(long, conflicts_with = "backup", requires = "peer")]
    pub primary: bool,
    /// Run as the backup of a pair (needs --peer).
    #[arg(long, requires = "peer")]
    pub backup: bool,
    /// The other server's base endpoint, `connect:tcp://HOST:P2` or `tcp://HOST:P2`.
    #[arg(long, value_parser = parse_clone_server, value_name = "[connect:]tcp://HOST:P2")]
    pub peer: Option<Endpoint>,
    /// The other server's Binary Star state endpoint (default: its P2+3).
    #[arg(long, value_parser = parse_connect_endpoint, value_name = "[connect:]EP")]
    pub peer_state: Option<Endpoint>,
    /// Our Binary Star state endpoint to bind (default: HOST:P+3).
    #[arg(long, value_parser = parse_bind_endpoint, value_name = "[bind:]EP")]
    pub state_endpoint: Option<Endpoint>,
    /// Keep an update log and snapshots here; the map survives restarts.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Binary Star heartbeat interval (e.g. 1s); the peer is dead after two missed.
    #[arg(long, value_parser = parse_interval, default_value = "1s", value_name = "DURATION")]
    pub heartbeat_interval: Duration,
    /// Publish HUGZ when nothing was published for this long (e.g. 1s).
    #[arg(long, value_parser = parse_interval, default_value = "1s", value_name = "DURATION")]
    pub hugz_interval: Duration,
    /// Longest key accepted (longer updates are counted and dropped); at least 1.
    #[arg(long, value_parser = parse_key_bytes, default_value = "1Ki", value_name = "BYTES")]
    pub max_key_bytes: usize,
    /// Longest value accepted; at least 1.
    #[arg(long, value_parser = parse_value_bytes, default_value = "1Mi", value_name = "BYTES")]
    pub max_value_bytes: usize,
    /// Snapshot messages queued to one client at most (memory bound of the snapshot port); a
    /// client that stops reading at the bound for 100 ms has its snapshot abandoned (counted in
    /// STATUS as snapshots_abandoned; it asks again). At least 1 (libzmq reads 0 as no limit).
    #[arg(long, value_parser = parse_bound_hwm, default_value = "1M", value_name = "COUNT")]
    pub snapshot_hwm_msgs: i32,
    /// Idle strategy of the server thread.
    #[arg(long, value_enum, default_value_t = Idle::Block)]
    pub idle: Idle,
    // CURVE and address allow-lists. Both halves of a pair use the same
    // --curve-key file (each is the other's client): said in the after-help.
    #[command(flatten)]
    pub access: ServerAccessArgs,
    /// Print no progress: no `ready on` line, state changes, snapshot fetches and re-syncs
    /// done, snapshots written or `stopped` line. Errors and warnings are still said: refusals,
    /// updates and HUGZ that could not be published (each said as what it is), a passive server
    /// that fell behind its active peer (a gap in its sequence, a HUGZ ahead, its snapshot
    /// request unanswered) and re-syncs, the data directory's failures. All but the update log's
    /// repeat as refusals do: the first at once, then a summary every 10s and what went unsaid
    /// at the stop, with the totals of failed publishes and re-syncs (the log's failed writes
    /// and fsyncs: the first 10, then every 1000th, with the count).
    #[arg(long, short)]
    pub quiet: bool,
}

/// `--max-key-bytes`: a server whose longest key is 0 bytes could store no key.
fn parse_key_bytes(s: &str) -> Result<usize, String> {
    match parse_bytes_usize(s)? {
        0 => Err("at least 1: a server that accepts no key byte can store no key".into()),
        n => Ok(n),
    }
}

/// `--max-value-bytes`: a server whose longest value is 0 bytes could store no value (an
/// empty value is a delete): every `set` was refused, only deletes went through.
fn parse_value_bytes(s: &str) -> Result<usize, String> {
    match parse_bytes_usize(s)? {
        0 => Err("at least 1: a server that accepts no value byte can store no value (an empty one deletes)".into()),
        n => Ok(n),
    }
}

/// `watch --count`: 0 printed nothing, not even the current entries, and ended with exit 0.
fn parse_watch_count(s: &str) -> Result<u64, String> {
    match parse_count_nonzero(s) {
        Err(e) if parse_count(s) == Ok(0) => Err(format!("{e} (`dump` prints the current entries and ends)")),
        r => r,
    }
}

/// `--snapshot-hwm-msgs`: a bound, so at least 1 (libzmq reads an HWM of 0 as "no limit",
/// which would remove the snapshot port's memory bound).
fn parse_bound_hwm(s: &str) -> Result<i32, String> {
    match parse_hwm(s)? {
        0 => Err("at least 1: an HWM of 0 is libzmq's \"no limit\", not a bound".into()),
        n => Ok(n),
    }
}

/// An interval flag: whole milliseconds inside the range the server accepts.
fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_ms_in(s, INTERVAL_RANGE_MS)
}

impl ServerArgs {
    /// The library configuration these arguments describe.
    pub fn to_config(&self) -> anyhow::Result<ServerConfig> {
        let base = &self.endpoint.endpoint;
        let (host, port) = base
            .strip_prefix("tcp://")
            .and_then(|hp| hp.rsplit_once(':'))
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| {
                super::UsageError(format!(
                    "--endpoint `{base}`: the clone server needs tcp://HOST:P with a numeric port P (it uses P..P+3)"
                ))
            })?;
        if port > u16::MAX - 3 {
            bail!(super::UsageError(format!(
                "--endpoint `{base}`: the clone server uses ports P..P+3, so P can be at most {}",
                u16::MAX - 3
            )));
        }
        // Port 0 bound each of the four sockets to a port of the OS's choosing (and the server
        // said `ready on HOST:0 (snapshot), :1 (publisher), :2 (collector)`): no client finds
        // P+1 and P+2 from P then.
        if port == 0 {
            bail!(super::UsageError(format!(
                "--endpoint `{base}`: port 0 (any port) cannot be a clone server's base: clients find its \
                 publisher and collector at P+1 and P+2; give a port P from 1 to {}",
                u16::MAX - 3
            )));
        }
        let heartbeat_ms = whole_ms(self.heartbeat_interval);
        let hugz_interval_ms = whole_ms(self.hugz_interval);
        let pair = match (&self.peer, self.primary, self.backup) {
            // A lone server has no Binary Star state socket: these were taken and ignored.
            (None, false, false) if self.state_endpoint.is_some() || self.peer_state.is_some() => {
                let flag = if self.state_endpoint.is_some() { "--state-endpoint" } else { "--peer-state" };
                bail!(super::UsageError(format!(
                    "{flag} is for a Binary Star pair: give --primary or --backup with --peer too, or leave it out"
                )))
            }
            (None, false, false) => None,
            (None, _, _) => bail!(super::UsageError("--primary/--backup need --peer tcp://HOST:P2".into())),
            (Some(_), false, false) => bail!(super::UsageError(
                "--peer needs --primary or --backup: which half of the pair this server is".into()
            )),
            (Some(peer), primary, _) => {
                let peer = peer.endpoint.clone();
                let [snap, _, _] =
                    crate::clone::endpoints(&peer).map_err(|e| super::UsageError(format!("--peer: {e}")))?;
                let peer_state = match &self.peer_state {
                    Some(s) => s.endpoint.clone(),
                    None => {
                        let (host, port) = snap.rsplit_once(':').context("peer endpoint has no port")?;
                        let p: u16 = port.parse().context("peer port")?;
                        format!("{host}:{}", p + 3)
                    }
                };
                let state_bind = match &self.state_endpoint {
                    Some(s) => s.endpoint.clone(),
                    None => format!("tcp://{host}:{}", port + 3),
                };
                Some(PairConfig {
                    role: if primary { Role::Primary } else { Role::Backup },
                    peer,
                    peer_state,
                    state_bind,
                    heartbeat_ms,
                })
            }
        };
        let cfg = ServerConfig {
            bind_host: host.to_string(),
            port,
            pair,
            data_dir: self.data_dir.clone(),
            hugz_interval_ms,
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            snapshot_hwm_msgs: self.snapshot_hwm_msgs,
            verbose: !self.quiet,
            ..ServerConfig::default()
        };
        // Limits that cannot go together (a log record too small for both) are a usage error.
        cfg.check().map_err(super::UsageError)?;
        Ok(cfg)
    }
}

/// Run a server until `stop` is set (the binary's SIGINT/SIGTERM handler).
pub fn run_server(args: &ServerArgs, stop: &StopFlag) -> anyhow::Result<()> {
    let cfg = args.to_config()?;
    let access = args.access.to_access()?;
    // Built here, so a port in use or a bad data directory is said before any thread starts;
    // the error names the role (`clone-server: …`) as the runner's errors do.
    let server =
        Server::new_secured(cfg, access).map_err(|e| anyhow::anyhow!("clone-server: {e}; the server stopped"))?;
    // Bound, its data directory recovered: from here the first Ctrl-C stops it cleanly.
    super::run_under_way();
    server.say_ready();
    let handle = Runner::start(RunSpec::unpinned(args.idle.strategy()), stop.clone(), server)?;
    handle.join().map(drop).map_err(|e| anyhow::anyhow!("{e}; the server stopped"))
}

/// `mdsub clone-client`: look into a clone store (a person's tool).
#[derive(Args, Debug, Clone)]
#[command(
    next_help_heading = "Options of clone-client (before the action or after it)",
    mut_arg("curve_key", |a| a.global(true).requires(clap::builder::Resettable::Reset)),
    mut_arg("server_key", |a| a.global(true).requires(clap::builder::Resettable::Reset)),
    after_help = "The options of clone-client go before the action or after it, the action's own (set --ttl, \
watch --count) after it: mdsub clone-client --store tcp://HOST:P set KEY VALUE --ttl 10s, or mdsub clone-client \
set KEY VALUE --ttl 10s --store tcp://HOST:P. One given on both sides of the action is refused.\n\
Exit status: 0 done; 1 `get`: the key is absent (no error line), `status`: one of two servers \
did not answer, or any other error; 2 a refused flag or value (a key or value longer than the server accepts); \
4 no server answered within --timeout (none running there, or none accepting this client's keys); 130 interrupted (Ctrl-C).")]
pub struct ClientArgs {
    /// Clone store server, `[connect:]tcp://HOST:P`; twice for a Binary Star pair (as `engine
    /// --store` and `top --store`).
    #[arg(long, global = true, value_parser = parse_clone_server, default_value = "tcp://127.0.0.1:5556", value_name = "[connect:]tcp://HOST:P")]
    pub store: Vec<Endpoint>,
    /// The old spelling of --store, refused with the new one's name (clap would suggest
    /// --server-key, another thing).
    #[arg(long = "server", global = true, hide = true, value_parser = renamed_to_store, value_name = "ENDPOINT",
          num_args = 0..=1, default_missing_value = "")]
    pub old_server: Option<String>,
    /// Fail over after this long without an update or HUGZ (e.g. 2s; whole milliseconds, more
    /// than 0). A quiet server sends HUGZ once a second by default (its --hugz-interval): a
    /// silence not above that takes a live, quiet server for dead between heartbeats and fails
    /// over again and again, so one up to 1s is warned of; a server that states a longer
    /// interval in its snapshot (mdsub's do) is given twice its interval instead, said once.
    #[arg(long, global = true, value_parser = parse_silence, default_value = "2s", value_name = "DURATION")]
    pub silence: Duration,
    /// Give up when no server answers within this (e.g. 10s).
    #[arg(long, global = true, value_parser = parse_duration_nonzero, default_value = "10s", value_name = "DURATION")]
    pub timeout: Duration,
    #[command(flatten)]
    pub keys: ClientKeyArgs,
    /// Idle strategy of the client's agent thread.
    #[arg(long, global = true, value_enum, default_value_t = Idle::Block)]
    pub idle: Idle,
    /// What to do.
    #[command(subcommand)]
    pub cmd: ClientCmd,
}

/// `mdsub clone-client` actions.
#[derive(Subcommand, Debug, Clone)]
pub enum ClientCmd {
    /// Set KEY to VALUE and wait until the server has published it. A key or value longer than
    /// the server accepts (its --max-key-bytes / --max-value-bytes, stated in its snapshot) is
    /// refused at once, exit status 2.
    Set {
        /// The key, e.g. /md/status/engine1.
        #[arg(value_parser = parse_key)]
        key: String,
        /// The value (an empty string deletes).
        value: String,
        /// Make the value ephemeral: the server deletes it after this long (whole seconds, e.g. 10s;
        /// at most 365 days, the server's bound).
        #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
        ttl: Option<u64>,
    },
    /// Print the value of KEY (exit status 1 when absent, 4 when no server answers).
    Get {
        /// The key.
        key: String,
    },
    /// Delete KEY and wait until the server has published the delete.
    Del {
        /// The key.
        #[arg(value_parser = parse_key)]
        key: String,
    },
    /// Print every key=value under SUBTREE (default: all), sorted by key. A SUBTREE longer than
    /// the server's --max-key-bytes (stated in its snapshot) is refused, exit status 2.
    Dump {
        /// Key prefix, e.g. /md/.
        #[arg(default_value = "")]
        subtree: String,
    },
    /// Print current keys under SUBTREE, then every change as it happens, until Ctrl-C (or
    /// --count); then the exit counters on stderr (`clone-client: stopped: live=…
    /// resync_changes=… malformed=… failovers=… hops=…`: live changes, and changes a re-sync
    /// found, apart). A SUBTREE longer than the server's --max-key-bytes is refused, exit status 2.
    Watch {
        /// Key prefix, e.g. /md/status/.
        #[arg(default_value = "")]
        subtree: String,
        /// Stop after this many changes (live or found by a re-sync; the initial entries do not
        /// count); at least 1 (`dump` prints the current entries and ends).
        #[arg(long, value_parser = parse_watch_count, value_name = "COUNT")]
        count: Option<u64>,
    },
    /// Print each server's STATUS? reply (mdsub extension: state, sequence, keys, counters); exit
    /// status 1 when one of two does not answer, 4 when none does.
    Status,
}

/// `clone-client --server`, renamed `--store` (the name `engine` and `top` give the clone
/// store they reach): refused, naming the new spelling.
fn renamed_to_store(_: &str) -> Result<String, String> {
    Err("--server is now --store (a clone store's servers, as engine and top call them): give --store".into())
}

/// A client's `--silence` (clone-client, clone-bench): whole milliseconds (the client's
/// setting), more than 0. Before, 0 was taken: every server was dead at once, and the client
/// failed over until its `--timeout` and blamed the servers (`no clone server answered`).
pub(crate) fn parse_silence(s: &str) -> Result<Duration, String> {
    match parse_whole_ms(s)? {
        d if d.is_zero() => Err("must be more than 0: with no silence allowed every server is dead at once, and \
                                 the client fails over for ever"
            .into()),
        d => Ok(d),
    }
}

/// The warning for a `--silence` not above the servers' default HUGZ interval (said at start,
/// before any server has stated its own), None for a longer one.
pub(crate) fn silence_warning(silence: Duration) -> Option<String> {
    let hugz = Duration::from_millis(crate::clone::server::DEFAULT_HUGZ_INTERVAL_MS);
    (silence <= hugz).then(|| {
        format!(
            "warning: --silence {} is not above a server's default HUGZ interval ({}): a live server with \
             nothing to publish is taken for dead between its heartbeats (failovers, hops); give more than \
             the servers' --hugz-interval",
            crate::diag::human_duration_of(silence),
            crate::diag::human_duration_of(hugz)
        )
    })
}

/// A CHP `ttl` as a duration in whole seconds (the property's unit).
fn parse_ttl(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 || d.is_zero() || d.as_secs() > MAX_TTL_S {
        return Err(format!(
            "a ttl is a whole number of seconds from 1s to {MAX_TTL_S}s (8760h, the server's bound; e.g. 10s, 2m)"
        ));
    }
    Ok(d.as_secs())
}

/// No clone server answered within `--timeout`: an error of its own kind (`main` exits
/// [`super::EXIT_NO_SERVER`]), apart from a normal "absent" (`get`, exit 1).
#[derive(Debug, thiserror::Error)]
#[error(
    "no clone server {} ({servers}){}",
    if *standing_by { "served a snapshot" } else { "answered" },
    within.map(|d| format!(" within {}", crate::diag::human_duration_of(d))).unwrap_or_default()
)]
pub struct NoServer {
    /// The servers asked, as the command line named them.
    pub servers: String,
    /// How long they were waited for, when no other cause is known (a timed-out wait).
    pub within: Option<Duration>,
    /// A server answered STATUS as a Binary Star standby: it answered, but serves no snapshot
    /// (the cause names it), so the error does not say that nobody answered.
    pub standing_by: bool,
}

/// Wait up to `timeout` for `client`'s first snapshot; Ctrl-C ends the wait at once
/// ([`super::Interrupted`]). No snapshot in time is [`NoServer`] naming `servers` (exit
/// [`super::EXIT_NO_SERVER`]), with the cause behind it when one is known: the handshake refusal
/// when the client's links were refused ([`refused_handshake`]; `has_keys`: the command takes
/// `--curve-key` and `--server-key`), or the servers that answer STATUS as a Binary Star
/// standby ([`standing_by`], asked with `keys`), rather than the bare timeout.
pub(crate) fn wait_synced(
    client: &Client,
    servers: &[String],
    (keys, has_keys): (Option<&ClientKeys>, bool),
    timeout: Duration,
    stop: &StopFlag,
) -> anyhow::Result<()> {
    // The standby question comes out of the same budget: `--timeout 1s` ends in about 1 s
    // (asking each server for up to 1 s after the wait made it 1 s more per server).
    let ask = (timeout / 4).min(STANDBY_ASK);
    match client.wait_synced_or_stop(timeout - ask, stop) {
        Ok(_) => Ok(()),
        Err(ClientError::Timeout { .. }) => {
            let names = servers.join(", ");
            // A name that does not resolve here is why nothing answered (before, only the wait
            // was said: `no clone server answered (tcp://nohost:5556) within 10s`).
            if let Some(why) = unresolved(servers) {
                return Err(anyhow::Error::msg(why).context(NoServer {
                    servers: names,
                    within: None,
                    standing_by: false,
                }));
            }
            // The handshake refusal when there was one; a standby's state; else the wait is the
            // whole story.
            if let Some(why) = client.status().ok().and_then(|st| refused_handshake(&st.links, has_keys)) {
                return Err(anyhow::Error::msg(why).context(NoServer {
                    servers: names,
                    within: None,
                    standing_by: false,
                }));
            }
            match standing_by(servers, keys, ask, stop) {
                Some(why) => Err(anyhow::Error::msg(why).context(NoServer {
                    servers: names,
                    within: Some(timeout),
                    standing_by: true,
                })),
                None => Err(NoServer { servers: names, within: Some(timeout), standing_by: false }.into()),
            }
        }
        Err(e) => interrupted(Err(e)).context("connecting to the clone servers"),
    }
}

/// Why the names of `servers` that do not resolve here do not (`the name H does not resolve:
/// …`; each server named before its cause when two were given), or None when they all resolve.
fn unresolved(servers: &[String]) -> Option<String> {
    let why: Vec<(&String, String)> =
        servers.iter().filter_map(|s| crate::host::unresolved(s).map(|why| (s, why))).collect();
    match why.as_slice() {
        [] => None,
        [(_, why)] if servers.len() == 1 => Some(why.clone()),
        _ => Some(why.iter().map(|(s, why)| format!("{s}: {why}")).collect::<Vec<_>>().join("; ")),
    }
}

/// The most [`standing_by`] takes of a wait's `--timeout` (a quarter of it when less).
const STANDBY_ASK: Duration = Duration::from_secs(1);

/// The servers among `servers` that answer STATUS as a Binary Star standby (`passive`, or a
/// `backup` that has not been passive yet), as the cause of a snapshot nobody served: such a
/// server ignores a client's snapshot request while its active peer lives. None when none does.
/// All the questions together take at most `budget`, shared among the servers not yet asked.
fn standing_by(servers: &[String], keys: Option<&ClientKeys>, budget: Duration, stop: &StopFlag) -> Option<String> {
    let deadline = std::time::Instant::now() + budget;
    let mut said = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let share = deadline.saturating_duration_since(std::time::Instant::now()) / (servers.len() - i) as u32;
        if share.is_zero() {
            break;
        }
        let Ok(text) = crate::clone::server_status_or_stop(s, share, keys, stop) else { continue };
        match text.lines().find_map(|l| l.strip_prefix("state=")) {
            Some("passive") => said.push(format!(
                "{s} answers as passive: a Binary Star standby serves only once its active peer has been \
                 silent for two heartbeats and a client asks"
            )),
            Some("backup") => said.push(format!(
                "{s} answers as backup: a backup serves only after it has been passive (start its primary)"
            )),
            _ => {}
        }
    }
    (!said.is_empty()).then(|| {
        format!("{}; no active server answered: name the pair's active server too (--store twice)", said.join("; "))
    })
}

/// What the servers' refusal of a client's handshakes means, when its links were lost to one
/// that will not fix itself (the lines the link watch said, as one cause for the final error).
fn refused_handshake(links: &[LinkStats], has_keys: bool) -> Option<&'static str> {
    let lost = |r: Reason| links.iter().any(|l| l.lost.contains_key(r.name()));
    if !has_keys {
        return (lost(Reason::HandshakeFailedMechanism) || lost(Reason::HandshakeFailedNoDetail))
            .then_some("the server demands CURVE, which this command does not speak");
    }
    if lost(Reason::HandshakeFailedAuth) {
        Some(
            "authentication refused: the server does not allow this client's key (--curve-key), or \
             --server-key is not the server's public key",
        )
    } else if lost(Reason::HandshakeFailedMechanism) {
        Some(
            "the server uses another security mechanism: it demands CURVE (give --server-key and \
             --curve-key), or it does not speak CURVE (leave them out)",
        )
    } else if lost(Reason::HandshakeFailedNoDetail)
        || (lost(Reason::HandshakeFailed) && links.iter().all(|l| l.connects == 0))
    {
        // A server that cannot read the client's CURVE HELLO closes the connection: libzmq
        // retries, and no attempt ever gets through.
        Some(
            "every handshake broke off with no reason from libzmq (with CURVE, most often a \
             --server-key that is not the server's public key, so the server cannot read this \
             client's HELLO and closes, or a server that does not speak CURVE)",
        )
    } else {
        None
    }
}

/// Wait up to `timeout` for the server to publish update `u` (of `key` and `value`); Ctrl-C
/// ends the wait at once. An update longer than the server accepts (the limits its snapshot
/// stated) was refused by the client before sending: a refused value (exit 2), said at once
/// in one line (no usage: the command line was well formed).
fn wait_acked(
    client: &Client,
    u: Uuid,
    (key, value): (&[u8], &[u8]),
    timeout: Duration,
    stop: &StopFlag,
) -> anyhow::Result<()> {
    match client.wait_acked_or_stop(u, timeout, stop) {
        Err(ClientError::NotAcked(AckState::Refused)) => {
            let st = client.status()?;
            let why = st.limits.and_then(|l| l.check(key, value).err()).map(|(_, why)| why);
            bail!(super::RefusedValue(format!(
                "{}: the server {} does not accept it (its --max-key-bytes / --max-value-bytes); nothing was sent",
                why.as_deref().unwrap_or("longer than the server accepts"),
                st.server.as_deref().unwrap_or("in use")
            )))
        }
        r => interrupted(r),
    }
}

/// A client wait's result, [`ClientError::Interrupted`] as [`super::Interrupted`] (exit 130).
fn interrupted(r: Result<(), ClientError>) -> anyhow::Result<()> {
    match r {
        Err(ClientError::Interrupted) => Err(super::Interrupted.into()),
        r => Ok(r?),
    }
}

/// A key a server would accept: not empty, not one of CHP's reserved keys (refused here, at
/// once, rather than waited on until `--timeout` while the server drops it).
fn parse_key(s: &str) -> Result<String, String> {
    let reserved = [crate::clone::kvmsg::HUGZ, crate::clone::kvmsg::KTHXBAI];
    if s.is_empty() {
        Err("an empty key: the server refuses it".into())
    } else if reserved.iter().any(|r| r == &s.as_bytes()) {
        Err("reserved by the protocol (CHP's heartbeat and end of snapshot): the server refuses it".into())
    } else {
        Ok(s.to_string())
    }
}

/// A key or value as one field of a `dump` or `watch` line: as stored when it is UTF-8 without
/// control characters; else escaped, control characters and backslashes as Rust writes them
/// (`\n`, `\u{1b}`, `\\`; bytes that are not UTF-8 as `\xNN`). Anyone who can reach the
/// collector writes keys and values: printed raw, a newline forged a line of its own (another
/// key, another change) and an escape sequence drove the operator's terminal. (`get` prints the
/// one value as stored, for scripts.)
fn line_field(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.contains(char::is_control) => s.into(),
        Ok(s) => s
            .chars()
            .map(|c| match c {
                '\\' => "\\\\".to_string(),
                c if c.is_control() => c.escape_debug().to_string(),
                c => c.to_string(),
            })
            .collect::<String>()
            .into(),
        Err(_) => show(bytes).into(),
    }
}

/// Run one client command; `stop` (the binary's SIGINT/SIGTERM handler) ends `watch`.
pub fn run_client(args: &ClientArgs, stop: &StopFlag) -> anyhow::Result<i32> {
    let timeout = args.timeout;
    let servers = super::store_servers(&args.store)?;
    let keys = args.keys.to_keys()?;
    // Said once, before anything is asked (`status` asks STATUS only, with no silence to judge).
    if let Some(w) = silence_warning(args.silence).filter(|_| !matches!(args.cmd, ClientCmd::Status)) {
        crate::diag!("clone-client: {w}");
    }
    super::run_under_way();
    if let ClientCmd::Status = args.cmd {
        // The servers that did not answer, each with why.
        let mut silent = Vec::new();
        for s in &servers {
            match crate::clone::server_status_or_stop(s, timeout, keys.as_ref(), stop) {
                Ok(text) => crate::outln!("# {s}\n{text}"),
                // A stop request ends the command, not just this server's wait (exit 130).
                Err(e) if matches!(e.downcast_ref::<ClientError>(), Some(ClientError::Interrupted)) => {
                    return Err(super::Interrupted.into())
                }
                Err(e) => {
                    crate::outln!("# {s}\nerror={e}\n");
                    let e = e.to_string();
                    silent.push(if e.starts_with(s.as_str()) { e } else { format!("{s}: {e}") });
                }
            }
        }
        // A script asking for the status learns from the exit code that a server is down, and
        // a person from the line which one.
        if silent.len() == servers.len() {
            anyhow::bail!(NoServer { servers: servers.join(", "), within: None, standing_by: false });
        }
        if !silent.is_empty() {
            anyhow::bail!(
                "{} of {} clone servers did not answer STATUS: {}",
                silent.len(),
                servers.len(),
                silent.join("; ")
            );
        }
        return Ok(0);
    }
    let subtree = match &args.cmd {
        ClientCmd::Dump { subtree } | ClientCmd::Watch { subtree, .. } => subtree.clone(),
        _ => String::new(),
    };
    let client = Client::start_secured(
        ClientConfig {
            servers: servers.clone(),
            subtree,
            silence_ms: args.silence.as_millis().try_into().unwrap_or(u64::MAX),
            ..ClientConfig::default()
        },
        args.idle.strategy(),
        keys.clone(),
    )?;
    wait_synced(&client, &servers, (keys.as_ref(), true), timeout, stop)?;
    if let (ClientCmd::Dump { subtree } | ClientCmd::Watch { subtree, .. }, Ok(st)) = (&args.cmd, client.status()) {
        // No key the server holds can be longer than its limit, so nothing can be under such a
        // subtree: refused like an over-long key for `set` (the client asked only its first
        // FRAME_SLACK_BYTES, which every mdsub server reads, and learnt the limit from the reply).
        if let Some(l) = st.limits.filter(|l| subtree.len() > l.max_key_bytes) {
            bail!(super::RefusedValue(format!(
                "subtree of {} bytes > max-key-bytes {}: the server {} holds no key that long, so none \
                 can be under it",
                subtree.len(),
                l.max_key_bytes,
                st.server.as_deref().unwrap_or("in use")
            )));
        }
    }
    match &args.cmd {
        ClientCmd::Set { key, value, ttl } => {
            let u = client.set(key.as_bytes(), value.as_bytes(), *ttl)?;
            wait_acked(&client, u, (key.as_bytes(), value.as_bytes()), timeout, stop)?;
        }
        ClientCmd::Del { key } => {
            let u = client.del(key.as_bytes())?;
            wait_acked(&client, u, (key.as_bytes(), b""), timeout, stop)?;
        }
        ClientCmd::Get { key } => match client.get(key.as_bytes())? {
            Some(v) => crate::outln!("{}", show(&v)),
            None => return Ok(1),
        },
        ClientCmd::Dump { subtree } => {
            for (k, v) in client.dump(subtree.as_bytes())? {
                crate::outln!("{}={}", line_field(&k), line_field(&v));
            }
        }
        ClientCmd::Watch { subtree, count } => {
            let rx = client.watch(subtree.as_bytes())?;
            // Changes after the initial entries, what --count counts; of them, the live ones and
            // those a re-sync found (a key that changed while the client was between servers)
            // are counted apart in the exit counters. (A watch sets nothing: no local changes.)
            let (mut changes, mut live, mut resync_changes) = (0u64, 0u64, 0u64);
            while !stop.is_stopped() && count.is_none_or(|c| changes < c) {
                let c = match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(c) => c,
                    Err(crossbeam::channel::RecvTimeoutError::Timeout) => continue,
                    Err(crossbeam::channel::RecvTimeoutError::Disconnected) => anyhow::bail!(
                        "the watch was cut off: it fell behind by the watch queue's bound (or the agent stopped); \
                         watch again to start from the current entries"
                    ),
                };
                let kind = match c.kind {
                    ChangeKind::Initial => "initial",
                    ChangeKind::Live => "live",
                    ChangeKind::Resync => "resync",
                    ChangeKind::Local => "local",
                };
                changes += u64::from(c.kind != ChangeKind::Initial);
                live += u64::from(c.kind == ChangeKind::Live);
                resync_changes += u64::from(c.kind == ChangeKind::Resync);
                match c.value {
                    Some(v) => crate::outln!("{kind} {} {}={}", c.sequence, line_field(&c.key), line_field(&v)),
                    None => crate::outln!("{kind} {} {} deleted", c.sequence, line_field(&c.key)),
                }
            }
            // The exit counters (stderr, like every diagnostic): what came in and what was refused.
            let st = client.status()?;
            crate::diag::ExitCounters::Text.print(
                "clone-client",
                &format_args!(
                    "live={live} resync_changes={resync_changes} malformed={} failovers={} hops={} resyncs={} \
                     watchers_cut={}",
                    st.malformed, st.failovers, st.hops, st.resyncs, st.watchers_cut
                ),
            );
        }
        ClientCmd::Status => {}
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_silence_is_more_than_zero_and_warned_of_up_to_the_hugz_interval() {
        // Before: `--silence 0s` was taken, and `get` failed over for its whole --timeout, then
        // blamed the server (exit 4).
        assert!(parse_silence("0s").is_err_and(|e| e.starts_with("must be more than 0")));
        assert!(parse_silence("1.5ms").is_err_and(|e| e.contains("whole milliseconds")));
        assert_eq!(parse_silence("100ms"), Ok(Duration::from_millis(100)));
        let w = silence_warning(Duration::from_millis(100)).expect("warned");
        assert!(w.starts_with("warning: --silence 100ms is not above a server's default HUGZ interval (1s)"), "{w}");
        assert!(silence_warning(Duration::from_secs(1)).is_some(), "the interval itself is no margin");
        assert_eq!(silence_warning(Duration::from_millis(1001)), None);
        assert_eq!(silence_warning(Duration::from_secs(2)), None, "the default is quiet");
    }

    #[test]
    fn the_server_flag_default_is_the_hugz_interval_the_client_knows() {
        use clap::Parser;
        #[derive(Parser)]
        struct Probe {
            #[command(flatten)]
            server: ServerArgs,
        }
        let p = Probe::try_parse_from(["probe"]).expect("defaults");
        assert_eq!(whole_ms(p.server.hugz_interval), crate::clone::server::DEFAULT_HUGZ_INTERVAL_MS);
    }
}
