//! The `mdsub clone-server`, `clone-client` command lines (Clone pattern faces).
//!
//! The `mdsub clone-server`, `mdsub clone-client` and
//! `mdsub clone-bench` arguments (clap) and the thin drivers that call the library.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::agent::{IdleStrategy, RunSpec, Runner, StopFlag};
use crate::clone::bstar::Role;
use crate::clone::client::{ChangeKind, Client, ClientConfig};
use crate::clone::kvmsg::show;
use crate::clone::server::{PairConfig, Server, ServerConfig};

/// `mdsub clone-server`: serve a CHP key-value store, alone or as half of a Binary Star pair.
///
/// Ports: P snapshot (ROUTER, ICANHAZ?), P+1 updates (PUB, KVPUB/HUGZ), P+2 collector (SUB,
/// KVSET), and in a pair P+3 Binary Star state (PUB).
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base port P (P..P+3 are used).
    #[arg(long, short, default_value_t = 5556)]
    pub port: u16,
    /// Interface to bind: 127.0.0.1, * (all), or an address.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Run as the primary of a pair (needs --peer).
    #[arg(long, conflicts_with = "backup", requires = "peer")]
    pub primary: bool,
    /// Run as the backup of a pair (needs --peer).
    #[arg(long, requires = "peer")]
    pub backup: bool,
    /// The other server's base endpoint, tcp://host:P2 (its state endpoint defaults to P2+3).
    #[arg(long)]
    pub peer: Option<String>,
    /// The other server's Binary Star state endpoint (default tcp://host:P2+3).
    #[arg(long)]
    pub peer_state: Option<String>,
    /// Our Binary Star state port to bind (default P+3).
    #[arg(long)]
    pub state_port: Option<u16>,
    /// Keep an update log and snapshots here; the map survives restarts.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Binary Star heartbeat interval; the peer is dead after two missed.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Publish HUGZ when nothing was published for this long.
    #[arg(long, default_value_t = 1000)]
    pub hugz_ms: u64,
    /// Longest key accepted (longer updates are counted and dropped).
    #[arg(long, default_value_t = 1024)]
    pub max_key_bytes: usize,
    /// Longest value accepted.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_value_bytes: usize,
    /// Do not print state changes.
    #[arg(long, short)]
    pub quiet: bool,
}

impl ServerArgs {
    /// The library configuration these arguments describe.
    pub fn to_config(&self) -> anyhow::Result<ServerConfig> {
        let pair = match (&self.peer, self.primary, self.backup) {
            (None, false, false) => None,
            (None, _, _) => bail!("--primary/--backup need --peer tcp://host:P2"),
            (Some(_), false, false) => bail!("--peer needs --primary or --backup"),
            (Some(peer), primary, _) => {
                let [snap, _, _] = crate::clone::endpoints(peer).map_err(anyhow::Error::msg)?;
                let peer_state = match &self.peer_state {
                    Some(s) => s.clone(),
                    None => {
                        let (host, port) = snap.rsplit_once(':').context("peer endpoint has no port")?;
                        let p: u16 = port.parse().context("peer port")?;
                        format!("{host}:{}", p + 3)
                    }
                };
                crate::zmqx::check_endpoint(&peer_state).map_err(anyhow::Error::msg)?;
                let state_port = self.state_port.unwrap_or(self.port.saturating_add(3));
                Some(PairConfig {
                    role: if primary { Role::Primary } else { Role::Backup },
                    peer: peer.clone(),
                    peer_state,
                    state_bind: format!("tcp://{}:{state_port}", self.bind),
                    heartbeat_ms: self.heartbeat_ms,
                })
            }
        };
        let cfg = ServerConfig {
            bind_host: self.bind.clone(),
            port: self.port,
            pair,
            data_dir: self.data_dir.clone(),
            hugz_interval_ms: self.hugz_ms,
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            verbose: !self.quiet,
            ..ServerConfig::default()
        };
        cfg.check().map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }
}

/// Run a server until `stop` is set (the binary's SIGINT/SIGTERM handler).
pub fn run_server(args: &ServerArgs, stop: &StopFlag) -> anyhow::Result<()> {
    let cfg = args.to_config()?;
    let stop = stop.clone();
    let handle = Runner::spawn(
        "clone-server",
        RunSpec { core: None, idle: IdleStrategy::Block { wait_us: 100_000 } },
        stop,
        move || {
            Server::new(cfg)
                .map_err(|e| crate::agent::AgentError::Fatal { role: "clone-server".into(), message: e.to_string() })
        },
    )
    .context("spawning the clone server thread")?;
    match handle.join() {
        Ok(r) => r.context("clone server stopped"),
        Err(_) => bail!("clone server thread panicked"),
    }
}

/// `mdsub clone-client`: look into a clone store (a person's tool).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server base endpoint tcp://host:P; give it twice for a Binary Star pair.
    #[arg(long, short, default_value = "tcp://127.0.0.1:5556")]
    pub server: Vec<String>,
    /// Fail over after this long without an update or HUGZ.
    #[arg(long, default_value_t = 2000)]
    pub silence_ms: u64,
    /// Give up when no server answers within this.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// What to do.
    #[command(subcommand)]
    pub cmd: ClientCmd,
}

/// `mdsub clone-client` actions.
#[derive(Subcommand, Debug, Clone)]
pub enum ClientCmd {
    /// Set KEY to VALUE and wait until the server has published it.
    Set {
        /// The key, e.g. /md/status/engine1.
        key: String,
        /// The value (an empty string deletes).
        value: String,
        /// Make the value ephemeral: the server deletes it after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Print the value of KEY (exit status 1 when absent).
    Get {
        /// The key.
        key: String,
    },
    /// Delete KEY and wait until the server has published the delete.
    Del {
        /// The key.
        key: String,
    },
    /// Print every key=value under SUBTREE (default: all), sorted by key.
    Dump {
        /// Key prefix, e.g. /md/.
        #[arg(default_value = "")]
        subtree: String,
    },
    /// Print current keys under SUBTREE, then every change as it happens, until Ctrl-C.
    Watch {
        /// Key prefix, e.g. /md/status/.
        #[arg(default_value = "")]
        subtree: String,
        /// Stop after this many live changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print each server's STATUS? reply (mdsub extension: state, sequence, keys, counters).
    Status,
}

/// Run one `clone-client` action.
/// Run one client command; `stop` (the binary's SIGINT/SIGTERM handler) ends `watch`.
pub fn run_client(args: &ClientArgs, stop: &StopFlag) -> anyhow::Result<i32> {
    let timeout = Duration::from_millis(args.timeout_ms);
    if let ClientCmd::Status = args.cmd {
        for s in &args.server {
            match crate::clone::server_status(s, timeout.min(Duration::from_secs(2))) {
                Ok(text) => println!("# {s}\n{text}"),
                Err(e) => println!("# {s}\nerror={e}\n"),
            }
        }
        return Ok(0);
    }
    let subtree = match &args.cmd {
        ClientCmd::Dump { subtree } | ClientCmd::Watch { subtree, .. } => subtree.clone(),
        _ => String::new(),
    };
    let client = Client::start(ClientConfig {
        servers: args.server.clone(),
        subtree,
        silence_ms: args.silence_ms,
        ..ClientConfig::default()
    })?;
    client.wait_synced(timeout).context("connecting to the clone servers")?;
    let out = std::io::stdout();
    match &args.cmd {
        ClientCmd::Set { key, value, ttl } => {
            let u = client.set(key.as_bytes(), value.as_bytes(), *ttl)?;
            client.wait_acked(u, timeout)?;
        }
        ClientCmd::Del { key } => {
            let u = client.del(key.as_bytes())?;
            client.wait_acked(u, timeout)?;
        }
        ClientCmd::Get { key } => match client.get(key.as_bytes())? {
            Some(v) => println!("{}", show(&v)),
            None => return Ok(1),
        },
        ClientCmd::Dump { subtree } => {
            let mut o = out.lock();
            for (k, v) in client.dump(subtree.as_bytes())? {
                writeln!(o, "{}={}", show(&k), show(&v))?;
            }
        }
        ClientCmd::Watch { subtree, count } => {
            let rx = client.watch(subtree.as_bytes())?;
            let mut live = 0u64;
            while !stop.is_stopped() && count.is_none_or(|c| live < c) {
                let Ok(c) = rx.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let kind = match c.kind {
                    ChangeKind::Initial => "initial",
                    ChangeKind::Live => "live",
                    ChangeKind::Resync => "resync",
                    ChangeKind::Local => "local",
                };
                if c.kind != ChangeKind::Initial {
                    live += 1;
                }
                let mut o = out.lock();
                match c.value {
                    Some(v) => writeln!(o, "{kind} {} {}={}", c.sequence, show(&c.key), show(&v))?,
                    None => writeln!(o, "{kind} {} {} deleted", c.sequence, show(&c.key))?,
                }
                o.flush()?;
            }
        }
        ClientCmd::Status => {}
    }
    Ok(0)
}
