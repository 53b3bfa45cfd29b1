//! The clone client agent and its application API (the guide's "clone class", Clone model 6).
//!
//! A background agent thread that
//! keeps a local copy of the shared map (or one subtree of it) in step with a Binary Star server
//! pair, and the small application API ([`Client`]) that talks to it through a pipe (a crossbeam
//! command channel plus an inproc doorbell so the agent's zmq poll wakes at once).
//!
//! Sync: subscribe first, then `ICANHAZ?`; updates that arrive during the snapshot are queued and
//! those at or below the snapshot's sequence dropped. Failover: when the current server is silent
//! (no update and no HUGZ) for `silence_ms`, or does not answer a snapshot request within
//! `snapshot_retry_ms`, the agent moves to the next server and re-syncs.
//!
//! **Un-acknowledged updates** (beyond the guide): every `set` carries a fresh UUID and is sent to
//! the collectors of *all* configured servers (as clone.c does, so a passive server can hold it in
//! its pending list). The agent remembers each set until it sees it come back on the publisher with
//! the same UUID. After every (re-)sync it re-sends those the snapshot does not already contain,
//! and while live it re-sends any still unacknowledged after `resend_after_ms`. Servers drop a
//! UUID they have already applied, so a re-send never applies twice; this is what makes "every
//! update sent during a failover survives" (within the 30 s a set is re-sent; see [`AckState`]).
//! A set to a key outside the subtree is sent once and not tracked: its echo never arrives.
//!
//! **Server restarts** (beyond the guide): a sequence lower than the last one read from the
//! current server's publisher, or a dropped connection to it, makes the agent fetch a fresh
//! snapshot from that server (a restarted server may start again below our sequence).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TryRecvError, TrySendError};

use super::kvmsg::{recv_frames, KvMsg, Uuid, HUGZ, ICANHAZ, KTHXBAI, TTL_PROP};
use super::map::{mono_now_ns, RecentUuids, UuidSet};
use crate::agent::{Agent, AgentError, IdleStrategy, RunSpec, Runner, Step, StopFlag};

const BATCH_MSGS: usize = 4096;
/// After a (re-)sync, un-acknowledged sets are re-sent this often ...
const FAST_RESEND_NS: u64 = 250_000_000;
/// ... for this long.
const FAST_RESEND_WINDOW_NS: u64 = 3_000_000_000;
/// A set still unacknowledged after this long is forgotten (counted as abandoned): the server
/// drops a re-sent UUID whose key has since been overwritten, so no echo will ever come.
const GIVE_UP_NS: u64 = 30_000_000_000;
/// Outcomes (acknowledged, abandoned, untracked) remembered per kind for [`Client::ack_state`].
const REMEMBERED_OUTCOMES: usize = 65_536;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Up to two servers as base endpoints `tcp://host:P` (P snapshot, P+1 publisher, P+2 collector).
    pub servers: Vec<String>,
    /// Only keys starting with this are kept (empty: all).
    pub subtree: String,
    /// Fail over after this long without an update or HUGZ.
    pub silence_ms: u64,
    /// Try the next server when a snapshot request gets no first reply within this.
    pub snapshot_retry_ms: u64,
    /// Re-send a set not yet seen on the publisher after this long.
    pub resend_after_ms: u64,
    /// Most un-acknowledged sets remembered (oldest forgotten first).
    pub max_unacked: usize,
    /// Subscriber receive high-water mark.
    pub sub_hwm_msgs: i32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            servers: Vec::new(),
            subtree: String::new(),
            silence_ms: 2000,
            snapshot_retry_ms: 500,
            resend_after_ms: 2000,
            max_unacked: 100_000,
            sub_hwm_msgs: 1_000_000,
        }
    }
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad configuration (endpoints, server count).
    #[error("{0}")]
    Config(String),
    /// A socket could not be set up.
    #[error("zmq error while {context}: {source}")]
    Zmq {
        context: &'static str,
        #[source]
        source: zmq::Error,
    },
    /// The agent thread has stopped.
    #[error("the clone agent has stopped")]
    Stopped,
    /// A wait ran out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: &'static str, after: Duration },
    /// A key the store cannot carry.
    #[error("{0}")]
    BadUpdate(String),
    /// The update will never be acknowledged to this client (see [`AckState`]).
    #[error("the update will not be acknowledged: it is {0:?}")]
    NotAcked(AckState),
}

/// Where a set stands, as far as this client knows (see [`Client::ack_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckState {
    /// The server published it: seen on the publisher with its UUID, or found in a snapshot.
    Acked,
    /// Sent and not yet seen; still being re-sent.
    Pending,
    /// Given up unacknowledged: not seen within 30 s of re-sending, or pushed out of the
    /// un-acknowledged list by `max_unacked`. It may or may not have been applied.
    Abandoned,
    /// Sent once to a key outside this client's subtree: the server's echo never reaches this
    /// client, so the set is neither tracked nor re-sent.
    Untracked,
    /// Not a set this client remembers (made elsewhere, or its outcome forgotten: the last
    /// 65 536 outcomes of each kind are kept).
    Unknown,
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// How a change came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Current content when the watch started.
    Initial,
    /// A live update from the server.
    Live,
    /// A difference found when a (re-)sync replaced the map.
    Resync,
    /// This client's own set, applied locally before the server confirms it.
    Local,
}

/// One change to a watched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// New value, `None` when deleted.
    pub value: Option<Vec<u8>>,
    /// Server sequence (0 for local changes).
    pub sequence: u64,
    /// Why it changed.
    pub kind: ChangeKind,
}

/// What the agent is doing.
#[derive(Debug, Clone, Default)]
pub struct ClientStatus {
    /// In step with a server (snapshot received, live).
    pub synced: bool,
    /// The server in use.
    pub server: Option<String>,
    /// Highest sequence applied.
    pub sequence: u64,
    /// Keys held.
    pub keys: usize,
    /// Server switches (silence or unanswered snapshot requests).
    pub failovers: u64,
    /// Completed snapshots.
    pub syncs: u64,
    /// Sets not yet seen on the publisher.
    pub unacked: usize,
    /// Messages that did not decode.
    pub malformed: u64,
    /// Live updates applied.
    pub live_updates: u64,
    /// Sets given up unacknowledged: after 30 s of re-sending, or evicted by `max_unacked`.
    pub abandoned: u64,
    /// Sets to keys outside the subtree (sent once, not tracked).
    pub untracked: u64,
    /// Re-syncs with the same server after it restarted (its sequence went backwards) or our
    /// connection to it dropped.
    pub resyncs: u64,
}

enum Cmd {
    Set(KvMsg),
    Get(Vec<u8>, Sender<Option<Vec<u8>>>),
    Dump(Vec<u8>, Sender<Vec<KeyValue>>),
    Watch(Vec<u8>, Sender<Change>),
    Status(Sender<ClientStatus>),
    Acked(Uuid, Sender<AckState>),
    Subtree(Vec<u8>),
}

/// The application's handle on a clone agent. Dropping it stops the agent.
pub struct Client {
    tx: Sender<Cmd>,
    bell: Mutex<zmq::Socket>,
    stop: StopFlag,
    handle: Option<JoinHandle<Result<(), AgentError>>>,
    seed: u64,
    counter: AtomicU64,
    _ctx: zmq::Context,
}

fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok() {
        return u64::from_le_bytes(b);
    }
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

static CLIENT_IDS: AtomicU64 = AtomicU64::new(0);

impl Client {
    /// Validate the servers, start the agent thread, and return at once (syncing happens in the
    /// background; see [`Client::wait_synced`]).
    pub fn start(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.servers.is_empty() || cfg.servers.len() > 2 {
            return Err(ClientError::Config(format!(
                "a clone client takes one or two servers, got {}",
                cfg.servers.len()
            )));
        }
        for s in &cfg.servers {
            super::endpoints(s).map_err(ClientError::Config)?;
        }
        let ctx = zmq::Context::new();
        let name = format!("inproc://clone-bell-{}-{}", std::process::id(), CLIENT_IDS.fetch_add(1, Ordering::Relaxed));
        let zerr = |context| move |source| ClientError::Zmq { context, source };
        let pull = ctx.socket(zmq::PULL).map_err(zerr("creating the doorbell"))?;
        pull.bind(&name).map_err(zerr("binding the doorbell"))?;
        let push = ctx.socket(zmq::PUSH).map_err(zerr("creating the doorbell"))?;
        push.set_linger(0).map_err(zerr("setting linger"))?;
        push.set_sndhwm(16).map_err(zerr("setting doorbell HWM"))?;
        push.connect(&name).map_err(zerr("connecting the doorbell"))?;
        let (tx, rx) = channel::unbounded();
        let stop = StopFlag::new();
        let agent_ctx = ctx.clone();
        let handle = Runner::spawn(
            "clone-client",
            RunSpec { core: None, idle: IdleStrategy::Block { wait_us: 100_000 } },
            stop.clone(),
            move || ClientAgent::new(cfg, agent_ctx, pull, rx),
        )
        .map_err(|e| ClientError::Config(format!("spawning the clone agent: {e}")))?;
        Ok(Client {
            tx,
            bell: Mutex::new(push),
            stop,
            handle: Some(handle),
            seed: random_seed(),
            counter: AtomicU64::new(0),
            _ctx: ctx,
        })
    }

    fn send(&self, cmd: Cmd) -> Result<(), ClientError> {
        self.tx.send(cmd).map_err(|_| ClientError::Stopped)?;
        if let Ok(bell) = self.bell.lock() {
            let _ = bell.send(&b""[..], zmq::DONTWAIT);
        }
        Ok(())
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Cmd) -> Result<T, ClientError> {
        let (tx, rx) = channel::bounded(1);
        self.send(make(tx))?;
        rx.recv_timeout(Duration::from_secs(10)).map_err(|e| match e {
            channel::RecvTimeoutError::Timeout => {
                ClientError::Timeout { what: "the clone agent to answer", after: Duration::from_secs(10) }
            }
            channel::RecvTimeoutError::Disconnected => ClientError::Stopped,
        })
    }

    /// A fresh UUID: 8 random bytes per client, then a counter.
    fn next_uuid(&self) -> Uuid {
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&self.seed.to_be_bytes());
        u[8..].copy_from_slice(&self.counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        u
    }

    /// Set `key` to `value` (empty deletes), ephemeral when `ttl_s` is given. Returns the update's
    /// UUID (see [`Client::is_acked`]).
    pub fn set(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        ttl_s: Option<u64>,
    ) -> Result<Uuid, ClientError> {
        let mut msg = KvMsg::new(key, 0, value);
        if msg.key.is_empty() {
            return Err(ClientError::BadUpdate("empty key".into()));
        }
        if let Some(t) = ttl_s {
            msg.set_prop(TTL_PROP, t.to_string());
        }
        let uuid = self.next_uuid();
        msg.uuid = Some(uuid);
        self.send(Cmd::Set(msg))?;
        Ok(uuid)
    }

    /// Delete `key`.
    pub fn del(&self, key: impl Into<Vec<u8>>) -> Result<Uuid, ClientError> {
        self.set(key, Vec::new(), None)
    }

    /// The local value of `key`.
    pub fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, ClientError> {
        let key = key.into();
        self.ask(|tx| Cmd::Get(key, tx))
    }

    /// Every local key/value under `prefix`, in key order.
    pub fn dump(&self, prefix: impl Into<Vec<u8>>) -> Result<Vec<KeyValue>, ClientError> {
        let prefix = prefix.into();
        self.ask(|tx| Cmd::Dump(prefix, tx))
    }

    /// A stream of changes under `prefix`: first the current entries ([`ChangeKind::Initial`]),
    /// then every change. Drop the receiver to stop watching.
    pub fn watch(&self, prefix: impl Into<Vec<u8>>) -> Result<Receiver<Change>, ClientError> {
        let (tx, rx) = channel::unbounded();
        self.send(Cmd::Watch(prefix.into(), tx))?;
        Ok(rx)
    }

    /// Change the subtree (re-syncs).
    pub fn set_subtree(&self, subtree: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        self.send(Cmd::Subtree(subtree.into()))
    }

    /// The agent's status.
    pub fn status(&self) -> Result<ClientStatus, ClientError> {
        self.ask(Cmd::Status)
    }

    /// Has the update with `uuid` come back from the server? Only a real acknowledgement counts
    /// (see [`Client::ack_state`] for the other outcomes).
    pub fn is_acked(&self, uuid: Uuid) -> Result<bool, ClientError> {
        Ok(self.ack_state(uuid)? == AckState::Acked)
    }

    /// Where the update with `uuid` stands.
    pub fn ack_state(&self, uuid: Uuid) -> Result<AckState, ClientError> {
        self.ask(|tx| Cmd::Acked(uuid, tx))
    }

    /// Wait until the agent is synced with a server.
    pub fn wait_synced(&self, deadline: Duration) -> Result<ClientStatus, ClientError> {
        let end = Instant::now() + deadline;
        loop {
            let s = self.status()?;
            if s.synced {
                return Ok(s);
            }
            if Instant::now() >= end {
                return Err(ClientError::Timeout { what: "a snapshot from a clone server", after: deadline });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until the server has published the update with `uuid`; fails at once with
    /// [`ClientError::NotAcked`] when it is abandoned, untracked or unknown.
    pub fn wait_acked(&self, uuid: Uuid, deadline: Duration) -> Result<(), ClientError> {
        let end = Instant::now() + deadline;
        loop {
            match self.ack_state(uuid)? {
                AckState::Acked => return Ok(()),
                AckState::Pending => {}
                other => return Err(ClientError::NotAcked(other)),
            }
            if Instant::now() >= end {
                return Err(ClientError::Timeout { what: "the server to publish the update", after: deadline });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop the agent and wait for its thread.
    pub fn stop(&mut self) {
        self.stop.stop();
        if let Ok(bell) = self.bell.lock() {
            let _ = bell.send(&b""[..], zmq::DONTWAIT);
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop();
    }
}

struct ServerConn {
    base: String,
    snapshot_ep: String,
    sub: zmq::Socket,
    /// Socket monitor of `sub` (inproc PAIR): tells when its connection is up.
    monitor: zmq::Socket,
    /// `sub` has completed its handshake, so its subscription is on its way to the server.
    connected: bool,
    /// `sub` lost its connection since we last synced from this server (updates may be lost).
    dropped: bool,
    /// Sequence of the last update or HUGZ read from `sub` since the last sync. A server's
    /// publisher stream never goes backwards, so a lower one means the server restarted.
    last_seq: u64,
}

struct Syncing {
    dealer: zmq::Socket,
    deadline_ns: u64,
    /// Snapshot entries as they arrive (in key order); bulk-built into a map at KTHXBAI.
    entries: Vec<(Vec<u8>, CEntry)>,
    queued: Vec<KvMsg>,
}

enum Phase {
    Initial,
    Syncing(Box<Syncing>),
    Live,
}

#[derive(Debug, Clone)]
struct CEntry {
    sequence: u64,
    uuid: Option<Uuid>,
    body: Vec<u8>,
}

struct Unacked {
    uuid: Uuid,
    msg: KvMsg,
    first_sent_ns: u64,
    sent_ns: u64,
}

struct ClientAgent {
    cfg: ClientConfig,
    ctx: zmq::Context,
    servers: Vec<ServerConn>,
    publisher: zmq::Socket,
    bell: zmq::Socket,
    rx: Receiver<Cmd>,
    cur: usize,
    phase: Phase,
    subtree: Vec<u8>,
    map: BTreeMap<Vec<u8>, CEntry>,
    sequence: u64,
    last_msg_ns: u64,
    unacked: VecDeque<Unacked>,
    unacked_ids: UuidSet,
    acked: RecentUuids,
    abandoned: RecentUuids,
    untracked: RecentUuids,
    watchers: Vec<(Vec<u8>, Sender<Change>)>,
    status: ClientStatus,
    ever_synced: bool,
    synced_at_ns: u64,
    initial_since_ns: Option<u64>,
    /// `read_sub` saw the current server's sequence go backwards.
    restarted: bool,
    frames: Vec<zmq::Message>,
}

fn agent_err(context: &'static str) -> impl FnOnce(zmq::Error) -> AgentError {
    move |source| AgentError::Zmq { role: "clone-client".into(), context, source }
}

fn subscribe(sub: &zmq::Socket, subtree: &[u8], on: bool) -> zmq::Result<()> {
    let f = |p: &[u8]| {
        if on {
            sub.set_subscribe(p)
        } else {
            sub.set_unsubscribe(p)
        }
    };
    f(subtree)?;
    if !subtree.is_empty() && !HUGZ.starts_with(subtree) {
        f(HUGZ)?;
    }
    Ok(())
}

impl ClientAgent {
    fn new(cfg: ClientConfig, ctx: zmq::Context, bell: zmq::Socket, rx: Receiver<Cmd>) -> Result<Self, AgentError> {
        let publisher = ctx.socket(zmq::PUB).map_err(agent_err("creating the update publisher"))?;
        publisher.set_sndhwm(100_000).map_err(agent_err("setting HWM"))?;
        publisher.set_linger(200).map_err(agent_err("setting linger"))?;
        let subtree = cfg.subtree.as_bytes().to_vec();
        let mut servers = Vec::new();
        for base in &cfg.servers {
            let [snap, pubep, coll] =
                super::endpoints(base).map_err(|message| AgentError::Fatal { role: "clone-client".into(), message })?;
            publisher.connect(&coll).map_err(agent_err("connecting to a collector"))?;
            let sub = ctx.socket(zmq::SUB).map_err(agent_err("creating a subscriber"))?;
            sub.set_rcvhwm(cfg.sub_hwm_msgs).map_err(agent_err("setting HWM"))?;
            sub.set_linger(0).map_err(agent_err("setting linger"))?;
            subscribe(&sub, &subtree, true).map_err(agent_err("subscribing"))?;
            let mon_ep =
                format!("inproc://clone-mon-{}-{}", std::process::id(), CLIENT_IDS.fetch_add(1, Ordering::Relaxed));
            let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32 | zmq::SocketEvent::DISCONNECTED as i32;
            sub.monitor(&mon_ep, events).map_err(agent_err("monitoring a subscriber"))?;
            let monitor = ctx.socket(zmq::PAIR).map_err(agent_err("creating a monitor socket"))?;
            monitor.set_linger(0).map_err(agent_err("setting linger"))?;
            monitor.connect(&mon_ep).map_err(agent_err("connecting a monitor socket"))?;
            sub.connect(&pubep).map_err(agent_err("connecting to a publisher"))?;
            servers.push(ServerConn {
                base: base.clone(),
                snapshot_ep: snap,
                sub,
                monitor,
                connected: false,
                dropped: false,
                last_seq: 0,
            });
        }
        Ok(ClientAgent {
            cfg,
            ctx,
            servers,
            publisher,
            bell,
            rx,
            cur: 0,
            phase: Phase::Initial,
            subtree,
            map: BTreeMap::new(),
            sequence: 0,
            last_msg_ns: 0,
            unacked: VecDeque::new(),
            unacked_ids: UuidSet::default(),
            acked: RecentUuids::new(REMEMBERED_OUTCOMES),
            abandoned: RecentUuids::new(REMEMBERED_OUTCOMES),
            untracked: RecentUuids::new(REMEMBERED_OUTCOMES),
            watchers: Vec::new(),
            status: ClientStatus::default(),
            ever_synced: false,
            synced_at_ns: 0,
            initial_since_ns: None,
            restarted: false,
            frames: Vec::new(),
        })
    }

    fn notify(&mut self, key: &[u8], value: Option<&[u8]>, sequence: u64, kind: ChangeKind) {
        if self.watchers.is_empty() {
            return;
        }
        self.watchers.retain(|(prefix, tx)| {
            if !key.starts_with(prefix) {
                return true;
            }
            let c = Change { key: key.to_vec(), value: value.map(|v| v.to_vec()), sequence, kind };
            !matches!(tx.try_send(c), Err(TrySendError::Disconnected(_)))
        });
    }

    fn store(&mut self, msg: &KvMsg, kind: ChangeKind) {
        self.store_owned(msg.clone(), kind);
    }

    fn store_owned(&mut self, msg: KvMsg, kind: ChangeKind) {
        if msg.body.is_empty() {
            if self.map.remove(&msg.key).is_some() || kind == ChangeKind::Local {
                self.notify(&msg.key, None, msg.sequence, kind);
            }
        } else {
            if !self.watchers.is_empty() {
                self.notify(&msg.key, Some(&msg.body), msg.sequence, kind);
            }
            self.map.insert(msg.key, CEntry { sequence: msg.sequence, uuid: msg.uuid, body: msg.body });
        }
    }

    fn send_update(&self, msg: &KvMsg) {
        let _ = msg.send(&self.publisher, None);
    }

    fn on_cmd(&mut self, cmd: Cmd, now_ns: u64) {
        match cmd {
            Cmd::Set(msg) => {
                self.send_update(&msg);
                let Some(u) = msg.uuid else { return };
                if !msg.key.starts_with(&self.subtree) {
                    // Our subscription never delivers its echo: it cannot be acknowledged, so
                    // re-sending it would only make the server publish it again and again.
                    self.untrack(u);
                    return;
                }
                self.store(&msg, ChangeKind::Local);
                self.unacked_ids.insert(u);
                self.unacked.push_back(Unacked { uuid: u, msg, first_sent_ns: now_ns, sent_ns: now_ns });
                while self.unacked.len() > self.cfg.max_unacked {
                    if let Some(old) = self.unacked.pop_front() {
                        self.abandon(old.uuid);
                    }
                }
            }
            Cmd::Get(key, tx) => {
                let _ = tx.send(self.map.get(&key).map(|e| e.body.clone()));
            }
            Cmd::Dump(prefix, tx) => {
                let v = self
                    .map
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, e)| (k.clone(), e.body.clone()))
                    .collect();
                let _ = tx.send(v);
            }
            Cmd::Watch(prefix, tx) => {
                for (k, e) in self.map.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
                    let _ = tx.send(Change {
                        key: k.clone(),
                        value: Some(e.body.clone()),
                        sequence: e.sequence,
                        kind: ChangeKind::Initial,
                    });
                }
                self.watchers.push((prefix, tx));
            }
            Cmd::Status(tx) => {
                let mut s = self.status.clone();
                s.synced = matches!(self.phase, Phase::Live);
                s.server = Some(self.servers[self.cur].base.clone());
                s.sequence = self.sequence;
                s.keys = self.map.len();
                s.unacked = self.unacked_ids.len();
                let _ = tx.send(s);
            }
            Cmd::Acked(u, tx) => {
                let _ = tx.send(self.ack_state(&u));
            }
            Cmd::Subtree(st) => {
                for s in &self.servers {
                    let _ = subscribe(&s.sub, &self.subtree, false);
                    let _ = subscribe(&s.sub, &st, true);
                }
                self.subtree = st;
                self.phase = Phase::Initial;
            }
        }
    }

    fn ack_state(&self, u: &Uuid) -> AckState {
        if self.unacked_ids.contains(u) {
            AckState::Pending
        } else if self.acked.contains(u) {
            AckState::Acked
        } else if self.abandoned.contains(u) {
            AckState::Abandoned
        } else if self.untracked.contains(u) {
            AckState::Untracked
        } else {
            AckState::Unknown
        }
    }

    /// The server published (or holds) the set `u`.
    fn ack(&mut self, u: Uuid) {
        if self.unacked_ids.remove(&u) {
            self.acked.insert(u);
        }
    }

    /// Stop tracking the pending set `u` (given up or evicted).
    fn abandon(&mut self, u: Uuid) {
        if self.unacked_ids.remove(&u) {
            self.abandoned.insert(u);
            self.status.abandoned += 1;
        }
    }

    /// Record that `u` is outside our subtree and will not be tracked.
    fn untrack(&mut self, u: Uuid) {
        self.unacked_ids.remove(&u);
        self.untracked.insert(u);
        self.status.untracked += 1;
    }

    /// Track each subscriber's connection from its socket monitor.
    fn drain_monitors(&mut self) -> usize {
        let mut n = 0;
        for s in &mut self.servers {
            while let Ok(frames) = s.monitor.recv_multipart(zmq::DONTWAIT) {
                n += 1;
                let Some(f) = frames.first().filter(|f| f.len() >= 2) else {
                    continue;
                };
                let event = u16::from_ne_bytes([f[0], f[1]]);
                if event == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16 {
                    s.connected = true;
                } else if event == zmq::SocketEvent::DISCONNECTED as u16 {
                    s.connected = false;
                    s.dropped = true;
                }
            }
        }
        n
    }

    /// The current server restarted or we lost our connection to it: updates may have been
    /// missed, or its sequence may have started again lower than ours. Fetch a fresh snapshot.
    fn resync(&mut self) {
        self.status.resyncs += 1;
        self.phase = Phase::Initial;
    }

    fn failover(&mut self) {
        self.status.failovers += 1;
        self.cur = (self.cur + 1) % self.servers.len();
        self.phase = Phase::Initial;
    }

    fn start_sync(&mut self, now_ns: u64) -> Result<(), AgentError> {
        self.servers[self.cur].dropped = false;
        self.servers[self.cur].last_seq = 0;
        // Discard what queued up on this subscriber while we were not reading it.
        let sub = &self.servers[self.cur].sub;
        for _ in 0..1_000_000 {
            match recv_frames(sub, &mut self.frames, zmq::DONTWAIT) {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let dealer = self.ctx.socket(zmq::DEALER).map_err(agent_err("creating a snapshot socket"))?;
        dealer.set_linger(0).map_err(agent_err("setting linger"))?;
        dealer.set_rcvhwm(0).map_err(agent_err("setting HWM"))?;
        dealer.connect(&self.servers[self.cur].snapshot_ep).map_err(agent_err("connecting to a snapshot port"))?;
        let _ = dealer.send(ICANHAZ, zmq::SNDMORE | zmq::DONTWAIT);
        let _ = dealer.send(&self.subtree[..], zmq::DONTWAIT);
        self.phase = Phase::Syncing(Box::new(Syncing {
            dealer,
            deadline_ns: now_ns.saturating_add(self.cfg.snapshot_retry_ms.saturating_mul(1_000_000)),
            entries: Vec::new(),
            queued: Vec::new(),
        }));
        Ok(())
    }

    /// Read the current server's publisher: `Some(msg)` for an update under our subtree. Sets
    /// `restarted` when the server's sequence went backwards.
    fn read_sub(&mut self, now_ns: u64) -> Option<Option<KvMsg>> {
        let conn = &mut self.servers[self.cur];
        match recv_frames(&conn.sub, &mut self.frames, zmq::DONTWAIT) {
            Ok(Some(count)) => {
                self.last_msg_ns = now_ns;
                let decoded = KvMsg::decode_messages(&self.frames[..count.min(self.frames.len())]);
                if let Ok(m) = &decoded {
                    if m.sequence < conn.last_seq {
                        self.restarted = true;
                    }
                    conn.last_seq = m.sequence;
                }
                match decoded {
                    Ok(m) if m.key == HUGZ => Some(None),
                    Ok(m) if m.key.starts_with(&self.subtree) => Some(Some(m)),
                    Ok(_) => Some(None),
                    Err(_) => {
                        self.status.malformed += 1;
                        Some(None)
                    }
                }
            }
            _ => None,
        }
    }

    fn sync_step(&mut self, now_ns: u64) -> usize {
        let mut n = 0;
        while n < BATCH_MSGS && !self.restarted {
            match self.read_sub(now_ns) {
                None => break,
                Some(Some(m)) => {
                    if let Phase::Syncing(s) = &mut self.phase {
                        s.queued.push(m);
                    }
                }
                Some(None) => {}
            }
            n += 1;
        }
        if std::mem::take(&mut self.restarted) {
            self.resync();
            return n;
        }
        let Phase::Syncing(s) = &mut self.phase else { return n };
        let mut done = None;
        while n < BATCH_MSGS * 16 {
            let count = match recv_frames(&s.dealer, &mut self.frames, zmq::DONTWAIT) {
                Ok(Some(c)) => c,
                _ => break,
            };
            n += 1;
            s.deadline_ns = now_ns.saturating_add(self.cfg.silence_ms.saturating_mul(1_000_000));
            let m = match KvMsg::decode_messages(&self.frames[..count.min(self.frames.len())]) {
                Ok(m) => m,
                Err(_) => {
                    self.status.malformed += 1;
                    continue;
                }
            };
            if m.key == KTHXBAI {
                done = Some(m.sequence);
                break;
            }
            if !m.body.is_empty() && m.key.starts_with(&self.subtree) {
                s.entries.push((m.key, CEntry { sequence: m.sequence, uuid: m.uuid, body: m.body }));
            }
        }
        if let Some(seq) = done {
            if let Phase::Syncing(s) = std::mem::replace(&mut self.phase, Phase::Live) {
                self.finish_sync(*s, seq, now_ns);
            }
        } else if now_ns > s.deadline_ns {
            self.failover();
        }
        n
    }

    fn finish_sync(&mut self, s: Syncing, seq: u64, now_ns: u64) {
        // BTreeMap's bulk build (sorted input; on a duplicate key the last entry wins).
        let old = std::mem::replace(&mut self.map, s.entries.into_iter().collect());
        self.sequence = seq;
        self.last_msg_ns = now_ns;
        self.status.syncs += 1;
        self.synced_at_ns = now_ns;
        if !self.watchers.is_empty() {
            let kind = if self.ever_synced { ChangeKind::Resync } else { ChangeKind::Initial };
            let mut changes = Vec::new();
            for (k, e) in &self.map {
                if old.get(k).map(|o| &o.body) != Some(&e.body) {
                    changes.push((k.clone(), Some(e.body.clone()), e.sequence));
                }
            }
            for k in old.keys() {
                if !self.map.contains_key(k) {
                    changes.push((k.clone(), None, seq));
                }
            }
            for (k, v, q) in changes {
                self.notify(&k, v.as_deref(), q, kind);
            }
        }
        self.ever_synced = true;
        for m in s.queued {
            self.apply_live(m);
        }
        // Re-send what the server has not confirmed; forget what the snapshot already holds.
        let pending: Vec<KvMsg> =
            self.unacked.iter().filter(|u| self.unacked_ids.contains(&u.uuid)).map(|u| u.msg.clone()).collect();
        for m in pending {
            let u = m.uuid.unwrap_or_default();
            if self.map.get(&m.key).is_some_and(|e| e.uuid == Some(u)) {
                self.ack(u);
                continue;
            }
            if !m.key.starts_with(&self.subtree) {
                // The subtree changed since the set: it can no longer be acknowledged here.
                self.untrack(u);
                continue;
            }
            self.send_update(&m);
            self.store(&m, ChangeKind::Local);
        }
        for u in self.unacked.iter_mut() {
            u.sent_ns = now_ns;
        }
        self.unacked.retain(|u| self.unacked_ids.contains(&u.uuid));
    }

    fn apply_live(&mut self, m: KvMsg) {
        if m.sequence <= self.sequence {
            return;
        }
        self.sequence = m.sequence;
        if let Some(u) = m.uuid {
            self.ack(u);
        }
        self.status.live_updates += 1;
        self.store_owned(m, ChangeKind::Live);
    }

    fn live_step(&mut self, now_ns: u64) -> usize {
        let mut n = 0;
        while n < BATCH_MSGS {
            match self.read_sub(now_ns) {
                None => break,
                Some(_) if self.restarted => break,
                Some(Some(m)) => self.apply_live(m),
                Some(None) => {}
            }
            n += 1;
        }
        if std::mem::take(&mut self.restarted) || self.servers[self.cur].dropped {
            self.resync();
            return n;
        }
        if now_ns.saturating_sub(self.last_msg_ns) > self.cfg.silence_ms.saturating_mul(1_000_000) {
            self.failover();
            return n;
        }
        // Re-send sets the server has not published after resend_after_ms; in the first seconds
        // after a (re-)sync, every 250 ms (the collector connection may still be forming, and a
        // PUB drops what it sends before the server's subscription arrives).
        let fast = now_ns.saturating_sub(self.synced_at_ns) < FAST_RESEND_WINDOW_NS;
        let resend_ns = if fast {
            FAST_RESEND_NS.min(self.cfg.resend_after_ms.saturating_mul(1_000_000))
        } else {
            self.cfg.resend_after_ms.saturating_mul(1_000_000)
        };
        let mut budget = 1000;
        while budget > 0 {
            let Some(front) = self.unacked.front() else { break };
            if !self.unacked_ids.contains(&front.uuid) {
                self.unacked.pop_front();
                continue;
            }
            if front.sent_ns.saturating_add(resend_ns) > now_ns {
                break;
            }
            if let Some(mut u) = self.unacked.pop_front() {
                if now_ns.saturating_sub(u.first_sent_ns) > GIVE_UP_NS {
                    // Most likely a newer update to the key won on the server, so ours will never
                    // come back; but it may also never have reached a server.
                    self.abandon(u.uuid);
                    continue;
                }
                self.send_update(&u.msg);
                u.sent_ns = now_ns;
                self.unacked.push_back(u);
            }
            budget -= 1;
        }
        n
    }
}

impl Agent for ClientAgent {
    fn role(&self) -> &str {
        "clone-client"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let now = mono_now_ns();
        let mut n = 0;
        while self.bell.recv_bytes(zmq::DONTWAIT).is_ok() {}
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => {
                    self.on_cmd(cmd, now);
                    n += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(Step::Finished),
            }
        }
        n += self.drain_monitors();
        // Drop what the other server publishes (it is passive or we are not using it).
        for i in 0..self.servers.len() {
            if i != self.cur {
                for _ in 0..BATCH_MSGS {
                    match recv_frames(&self.servers[i].sub, &mut self.frames, zmq::DONTWAIT) {
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
            }
        }
        match self.phase {
            Phase::Initial => {
                // Ask for the snapshot only once our subscription is on its way, so no update
                // published after the snapshot can slip past us (the guide's clone has that race).
                if self.servers[self.cur].connected {
                    self.initial_since_ns = None;
                    self.start_sync(now)?;
                    n += 1;
                } else {
                    let since = *self.initial_since_ns.get_or_insert(now);
                    if now.saturating_sub(since) > self.cfg.snapshot_retry_ms.saturating_mul(1_000_000) {
                        self.initial_since_ns = None;
                        self.failover();
                    }
                }
            }
            Phase::Syncing(_) => n += self.sync_step(now),
            Phase::Live => n += self.live_step(now),
        }
        Ok(Step::Worked(n))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let ms = timeout.as_millis().min(100) as i64;
        let mut items = vec![
            self.bell.as_poll_item(zmq::POLLIN),
            self.servers[self.cur].sub.as_poll_item(zmq::POLLIN),
            self.servers[self.cur].monitor.as_poll_item(zmq::POLLIN),
        ];
        if let Phase::Syncing(s) = &self.phase {
            items.push(s.dealer.as_poll_item(zmq::POLLIN));
        }
        let _ = zmq::poll(&mut items, ms);
    }
}
