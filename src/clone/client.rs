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
//! `snapshot_retry_ms`, the agent moves to the next server and re-syncs; a server that refuses
//! connections is left at once when the other may answer. The server that serves next is said
//! once on stderr, with why the one before was left (unless `log_links` is off).
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TryRecvError, TrySendError};

pub use super::client_core::{AckState, Change, ChangeKind, ClientConfig, ClientStatus, KeyValue};
use super::client_core::{Action, ClientCore, Event, PhaseKind};
use super::kvmsg::{recv_frames, KvMsg, Uuid, HUGZ, ICANHAZ, TTL_PROP};
use crate::agent::{Agent, AgentCounters, AgentError, AgentHandle, IdleStrategy, RunSpec, Runner, Step, StopFlag};
use crate::diag::RefusalLog;
use crate::link::{LinkChange, LinkWatch};
use crate::security::ClientKeys;

/// Messages read from one socket per unit of work (then timers get a turn).
const BATCH_MSGS: usize = 4096;

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
    /// A wait was given up because the caller was asked to stop.
    #[error("interrupted")]
    Interrupted,
    /// A wait ran out.
    #[error("timed out after {} waiting for {what}", crate::diag::human_duration_of(*after))]
    Timeout { what: &'static str, after: Duration },
    /// A key the store cannot carry.
    #[error("{0}")]
    BadUpdate(String),
    /// The update will never be acknowledged to this client (see [`AckState`]).
    #[error("the update will not be acknowledged: it is {}", .0.describe())]
    NotAcked(AckState),
    /// The command queue to the agent is full (`command_queue_msgs`): the call was refused,
    /// not queued (counted in [`Client::commands_refused`]); the agent is behind, try later.
    #[error("the clone agent is {queued} commands behind (the command queue is full)")]
    Busy { queued: usize },
}

/// The agent could not be built or started: its sockets, or its thread.
impl From<AgentError> for ClientError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Zmq { context, source, .. } => ClientError::Zmq { context, source },
            other => ClientError::Config(other.to_string()),
        }
    }
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
    handle: Option<AgentHandle<ClientAgent>>,
    seed: u64,
    counter: AtomicU64,
    /// Calls refused because the command queue was full.
    refused: AtomicU64,
    watch_queue_msgs: usize,
    /// The agent's link counters (its subscribers', then its update publisher's), read here
    /// without asking the agent.
    boards: Vec<crate::link::LinkBoard>,
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
    /// Validate the servers, start the agent thread (idle strategy `block`: a background client
    /// costs no CPU while the store is quiet), and return at once (syncing happens in the
    /// background; see [`Client::wait_synced`]).
    pub fn start(cfg: ClientConfig) -> Result<Client, ClientError> {
        Client::start_with(cfg, IdleStrategy::Block { wait_us: 100_000 })
    }

    /// [`Client::start`] with the agent thread's idle strategy (`--idle`).
    pub fn start_with(cfg: ClientConfig, idle: IdleStrategy) -> Result<Client, ClientError> {
        Client::start_secured(cfg, idle, None)
    }

    /// [`Client::start_with`] for servers that demand CURVE (`docs/SECURITY.md`):
    /// every socket to a server (snapshot, publisher, collector) presents `keys`.
    pub fn start_secured(
        cfg: ClientConfig,
        idle: IdleStrategy,
        keys: Option<ClientKeys>,
    ) -> Result<Client, ClientError> {
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
        let (tx, rx) = channel::bounded(cfg.command_queue_msgs.max(1));
        let watch_queue_msgs = cfg.watch_queue_msgs.max(1);
        let stop = StopFlag::new();
        let agent = ClientAgent::new(cfg, keys, ctx.clone(), pull, rx).map_err(ClientError::from)?;
        let boards = agent.servers.iter().map(|s| &s.links).chain(agent.publisher_links.as_ref()).map(|w| w.board());
        let boards = boards.collect();
        let handle = Runner::start(RunSpec::unpinned(idle), stop.clone(), agent).map_err(ClientError::from)?;
        Ok(Client {
            tx,
            bell: Mutex::new(push),
            stop,
            handle: Some(handle),
            seed: random_seed(),
            counter: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            watch_queue_msgs,
            boards,
            _ctx: ctx,
        })
    }

    /// Where its links to the servers are published (state, losses by reason, time not up):
    /// what [`Client::status`] says of them, read without asking the agent (by a scrape, on any
    /// thread, after the client has moved to one).
    pub fn link_boards(&self) -> Vec<crate::link::LinkBoard> {
        self.boards.clone()
    }

    /// Calls refused with [`ClientError::Busy`] so far (the command queue was full).
    pub fn commands_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn send(&self, cmd: Cmd) -> Result<(), ClientError> {
        offer(&self.tx, cmd, &self.refused)?;
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
    /// The receiver holds at most `watch_queue_msgs` changes: a watcher that falls that far behind
    /// is cut off (the receiver ends after what it holds; `ClientStatus::watchers_cut` counts it).
    pub fn watch(&self, prefix: impl Into<Vec<u8>>) -> Result<Receiver<Change>, ClientError> {
        let (tx, rx) = channel::bounded(self.watch_queue_msgs);
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
        self.wait_synced_or_stop(deadline, &StopFlag::new())
    }

    /// [`Client::wait_synced`] that gives up with [`ClientError::Interrupted`] as soon as
    /// `stop` is set (Ctrl-C while no server answers).
    pub fn wait_synced_or_stop(&self, deadline: Duration, stop: &StopFlag) -> Result<ClientStatus, ClientError> {
        let every = Duration::from_millis(10);
        poll_until(deadline, every, stop, "a snapshot from a clone server", || {
            let s = self.status()?;
            Ok(s.synced.then_some(s))
        })
    }

    /// Wait until the server has published the update with `uuid`; fails at once with
    /// [`ClientError::NotAcked`] when it is abandoned, untracked or unknown.
    pub fn wait_acked(&self, uuid: Uuid, deadline: Duration) -> Result<(), ClientError> {
        self.wait_acked_or_stop(uuid, deadline, &StopFlag::new())
    }

    /// [`Client::wait_acked`] that gives up with [`ClientError::Interrupted`] as soon as
    /// `stop` is set (Ctrl-C while the server has not published the update).
    pub fn wait_acked_or_stop(&self, uuid: Uuid, deadline: Duration, stop: &StopFlag) -> Result<(), ClientError> {
        poll_until(deadline, Duration::from_millis(5), stop, "the server to publish the update", || {
            match self.ack_state(uuid)? {
                AckState::Acked => Ok(Some(())),
                AckState::Pending => Ok(None),
                other => Err(ClientError::NotAcked(other)),
            }
        })
    }

    /// Its agent's role and live counters (None once stopped), for a report's thread table: they
    /// keep counting until the agent ends and then hold its last.
    pub fn agent_counters(&self) -> Option<(String, Arc<AgentCounters>)> {
        self.handle.as_ref().map(|h| (h.role().to_string(), h.counters().clone()))
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
    /// The server's collector (P+2) and snapshot (P) endpoints.
    collector_ep: String,
    snapshot_ep: String,
    sub: zmq::Socket,
    /// The watch on `sub`'s link: tells the core when its connection is up
    /// or lost, counts and logs losses, re-establishes what libzmq drops.
    links: LinkWatch,
}

/// Queue `cmd` for the agent without waiting: a full queue refuses it (counted in `refused`).
fn offer(tx: &Sender<Cmd>, cmd: Cmd, refused: &AtomicU64) -> Result<(), ClientError> {
    match tx.try_send(cmd) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => {
            refused.fetch_add(1, Ordering::Relaxed);
            Err(ClientError::Busy { queued: tx.len() })
        }
        Err(TrySendError::Disconnected(_)) => Err(ClientError::Stopped),
    }
}

/// The shell around [`ClientCore`]: moves frames and link events between the sockets and the
/// core, reads the clock once per round, carries out the core's actions (sends, snapshot
/// requests, subscriptions, lines to say), and answers the application's commands.
struct ClientAgent {
    core: ClientCore,
    ctx: zmq::Context,
    /// CURVE keys presented to the servers, if they demand them.
    keys: Option<ClientKeys>,
    servers: Vec<ServerConn>,
    publisher: zmq::Socket,
    /// The watch on the publisher's links to the collectors.
    publisher_links: Option<LinkWatch>,
    bell: zmq::Socket,
    rx: Receiver<Cmd>,
    /// The snapshot request under way (`Action::RequestSnapshot` .. `Action::EndSnapshot`).
    dealer: Option<zmq::Socket>,
    actions: Vec<Action>,
    frames: Vec<zmq::Message>,
    /// Messages from a server that do not decode: counted (`ClientStatus::malformed`) and said.
    refusals: RefusalLog,
}

fn agent_err(context: &'static str) -> impl FnOnce(zmq::Error) -> AgentError {
    move |source| AgentError::Zmq { role: "clone-client".into(), context, source }
}

/// Subscribe (or unsubscribe) `sub` to `subtree` and to HUGZ. A subtree is subscribed by at most
/// its first [`MAX_PREFIX_BYTES`](crate::zmqx::MAX_PREFIX_BYTES): libzmq's SUB removes a
/// prefix by recursing once per byte, and the core keeps updates by the whole subtree anyway.
fn subscribe(sub: &zmq::Socket, subtree: &[u8], on: bool) -> zmq::Result<()> {
    let subtree = &subtree[..subtree.len().min(crate::zmqx::MAX_PREFIX_BYTES)];
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
    fn new(
        cfg: ClientConfig,
        keys: Option<ClientKeys>,
        ctx: zmq::Context,
        bell: zmq::Socket,
        rx: Receiver<Cmd>,
    ) -> Result<Self, AgentError> {
        let secure = |socket: &zmq::Socket| ClientKeys::apply_if(keys.as_ref(), socket);
        let mut publisher = ctx.socket(zmq::PUB).map_err(agent_err("creating the update publisher"))?;
        secure(&publisher).map_err(agent_err("setting CURVE keys"))?;
        publisher.set_sndhwm(100_000).map_err(agent_err("setting HWM"))?;
        publisher.set_linger(200).map_err(agent_err("setting linger"))?;
        crate::zmqx::bound_subscriptions(&publisher).map_err(agent_err("setting max message size"))?;
        let subtree = cfg.subtree.as_bytes();
        let mut servers = Vec::new();
        let collectors: Vec<String> =
            cfg.servers.iter().filter_map(|b| super::endpoints(b).ok()).map(|[_, _, coll]| coll).collect();
        let quiet = !cfg.log_links;
        // "Not up" is said by the agent, once per server for both of its links.
        let publisher_links = LinkWatch::attach(&ctx, &mut publisher, &format!("{} collectors", cfg.name), &collectors)
            .map_err(agent_err("monitoring the update publisher"))?
            .map(|w| w.quiet(quiet).keys_by(cfg.key_flags).hold_not_up());
        for base in &cfg.servers {
            let [snap, pubep, coll] =
                super::endpoints(base).map_err(|message| AgentError::Fatal { role: "clone-client".into(), message })?;
            publisher.connect(&coll).map_err(agent_err("connecting to a collector"))?;
            let mut sub = ctx.socket(zmq::SUB).map_err(agent_err("creating a subscriber"))?;
            sub.set_rcvhwm(cfg.sub_hwm_msgs).map_err(agent_err("setting HWM"))?;
            sub.set_linger(0).map_err(agent_err("setting linger"))?;
            secure(&sub).map_err(agent_err("setting CURVE keys"))?;
            subscribe(&sub, subtree, true).map_err(agent_err("subscribing"))?;
            let links = LinkWatch::attach(&ctx, &mut sub, &cfg.name, std::slice::from_ref(&pubep))
                .map_err(agent_err("monitoring a subscriber"))?
                .ok_or_else(|| AgentError::Fatal {
                    role: "clone-client".into(),
                    message: "no endpoint to watch".into(),
                })?
                .following_changes()
                .quiet(quiet)
                .keys_by(cfg.key_flags)
                .hold_not_up();
            sub.connect(&pubep).map_err(agent_err("connecting to a publisher"))?;
            servers.push(ServerConn { collector_ep: coll, snapshot_ep: snap, sub, links });
        }
        Ok(ClientAgent {
            refusals: RefusalLog::new(&cfg.name),
            core: ClientCore::new(cfg),
            ctx,
            keys,
            servers,
            publisher,
            publisher_links,
            bell,
            rx,
            dealer: None,
            actions: Vec::new(),
            frames: Vec::new(),
        })
    }

    /// Hand `event` to the core and carry out what it asks.
    fn step(&mut self, event: Event, now_ns: u64) -> Result<(), AgentError> {
        self.core.on_event(event, now_ns, &mut self.actions);
        let mut actions = std::mem::take(&mut self.actions);
        for a in actions.drain(..) {
            match a {
                Action::SendUpdate(m) => {
                    let _ = m.send(&self.publisher, None);
                }
                Action::RequestSnapshot { server, subtree } => self.request_snapshot(server, &subtree)?,
                Action::EndSnapshot => self.dealer = None,
                Action::Resubscribe { old, new } => {
                    for s in &self.servers {
                        let _ = subscribe(&s.sub, &old, false);
                        let _ = subscribe(&s.sub, &new, true);
                    }
                }
                Action::Say(line) => crate::diag!("{line}"),
            }
        }
        self.actions = actions;
        Ok(())
    }

    fn request_snapshot(&mut self, server: usize, subtree: &[u8]) -> Result<(), AgentError> {
        // Discard what queued up on this subscriber while we were not reading it.
        let sub = &self.servers[server].sub;
        for _ in 0..1_000_000 {
            match recv_frames(sub, &mut self.frames, zmq::DONTWAIT) {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let dealer = self.ctx.socket(zmq::DEALER).map_err(agent_err("creating a snapshot socket"))?;
        dealer.set_linger(0).map_err(agent_err("setting linger"))?;
        dealer.set_rcvhwm(0).map_err(agent_err("setting HWM"))?;
        ClientKeys::apply_if(self.keys.as_ref(), &dealer).map_err(agent_err("setting CURVE keys"))?;
        dealer.connect(&self.servers[server].snapshot_ep).map_err(agent_err("connecting to a snapshot port"))?;
        let _ = dealer.send(ICANHAZ, zmq::SNDMORE | zmq::DONTWAIT);
        let _ = dealer.send(subtree, zmq::DONTWAIT);
        self.dealer = Some(dealer);
        Ok(())
    }

    fn on_cmd(&mut self, cmd: Cmd, now_ns: u64) -> Result<(), AgentError> {
        match cmd {
            Cmd::Set(msg) => self.step(Event::Set(msg), now_ns)?,
            Cmd::Subtree(st) => self.step(Event::Subtree(st), now_ns)?,
            Cmd::Get(key, tx) => {
                let _ = tx.send(self.core.get(&key).map(|v| v.to_vec()));
            }
            Cmd::Dump(prefix, tx) => {
                let _ = tx.send(self.core.dump(&prefix));
            }
            Cmd::Watch(prefix, tx) => self.core.watch(prefix, tx),
            Cmd::Status(tx) => {
                let mut status = self.core.status();
                let watches = self.servers.iter().map(|s| &s.links).chain(self.publisher_links.as_ref());
                status.links = watches.flat_map(|w| w.board().snapshot()).collect();
                let _ = tx.send(status);
            }
            Cmd::Acked(u, tx) => {
                let _ = tx.send(self.core.ack_state(&u));
            }
        }
        Ok(())
    }

    /// Feed the connection events of every socket's monitor to the core: each subscriber's link
    /// to its server's publisher, and the publisher's links to the collectors.
    fn drain_monitors(&mut self, now_ns: u64) -> Result<usize, AgentError> {
        let mut n = 0;
        let mut links = Vec::new();
        let mut not_ups = Vec::new();
        let mut collectors_up = Vec::new();
        if let Some(w) = &mut self.publisher_links {
            if w.service(&self.publisher) > 0 {
                let up = |(i, s): (usize, &ServerConn)| w.has_been_up(&s.collector_ep).then_some(i);
                collectors_up.extend(self.servers.iter().enumerate().filter_map(up));
            }
            w.take_not_ups(&mut not_ups);
        }
        for server in collectors_up {
            self.step(Event::CollectorUp { server }, now_ns)?;
        }
        for not_up in not_ups.drain(..) {
            self.step(Event::CollectorNotUp(not_up), now_ns)?;
        }
        for i in 0..self.servers.len() {
            let s = &mut self.servers[i];
            n += s.links.service(&s.sub);
            s.links.take_changes(&mut links);
            s.links.take_not_ups(&mut not_ups);
            for not_up in not_ups.drain(..) {
                self.step(Event::PublisherNotUp { server: i, not_up }, now_ns)?;
            }
            for change in links.drain(..) {
                let ev = match change {
                    LinkChange::Up => Event::Link { server: i, up: true },
                    LinkChange::Down => Event::Link { server: i, up: false },
                    LinkChange::Retried => Event::Retried { server: i },
                };
                self.step(ev, now_ns)?;
            }
        }
        Ok(n)
    }

    /// Read up to `max` messages from `sock` (the current subscriber or the snapshot socket)
    /// into the core while it stays in `phase`.
    fn drain(&mut self, from_dealer: bool, max: usize, phase: PhaseKind, now_ns: u64) -> Result<usize, AgentError> {
        let mut n = 0;
        while n < max && self.core.phase() == phase {
            let sock = if from_dealer {
                match &self.dealer {
                    Some(d) => d,
                    None => break,
                }
            } else {
                &self.servers[self.core.current()].sub
            };
            let count = match recv_frames(sock, &mut self.frames, zmq::DONTWAIT) {
                Ok(Some(c)) => c,
                _ => break,
            };
            n += 1;
            let m = KvMsg::decode_messages(&self.frames[..count.min(self.frames.len())]).map_err(|e| {
                let from = if from_dealer { "snapshot" } else { "publisher" };
                self.refusals.refuse("malformed_kvmsg", &format_args!("from the {from}: {e}"), now_ns);
            });
            let ev = if from_dealer { Event::Snapshot(m) } else { Event::Published(m) };
            self.step(ev, now_ns)?;
        }
        Ok(n)
    }
}

impl Agent for ClientAgent {
    fn role(&self) -> &str {
        "clone-client"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let now = crate::clock::monotonic_ns();
        let mut n = 0;
        while self.bell.recv_bytes(zmq::DONTWAIT).is_ok() {}
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => {
                    self.on_cmd(cmd, now)?;
                    n += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(Step::Finished(0)),
            }
        }
        n += self.drain_monitors(now)?;
        // Drop what the other server publishes (it is passive or we are not using it).
        let cur = self.core.current();
        for (i, s) in self.servers.iter().enumerate() {
            if i != cur {
                for _ in 0..BATCH_MSGS {
                    match recv_frames(&s.sub, &mut self.frames, zmq::DONTWAIT) {
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
            }
        }
        match self.core.phase() {
            PhaseKind::Initial => {
                self.step(Event::Tick, now)?;
                if self.core.phase() == PhaseKind::Syncing {
                    n += 1;
                }
            }
            PhaseKind::Syncing => {
                n += self.drain(false, BATCH_MSGS, PhaseKind::Syncing, now)?;
                n += self.drain(true, BATCH_MSGS * 16, PhaseKind::Syncing, now)?;
                if self.core.phase() == PhaseKind::Syncing {
                    self.step(Event::Tick, now)?;
                }
            }
            PhaseKind::Live => {
                n += self.drain(false, BATCH_MSGS, PhaseKind::Live, now)?;
                if self.core.phase() == PhaseKind::Live {
                    self.step(Event::Tick, now)?;
                }
            }
        }
        Ok(Step::Worked(n))
    }

    /// A collector still held for its server's line is said alone: nothing is left unsaid.
    fn on_close(&mut self) {
        if let Err(e) = self.step(Event::Closing, crate::clock::monotonic_ns()) {
            crate::diag!("{e}");
        }
    }

    /// Wait on the doorbell, the current server's subscriber and monitor and any snapshot
    /// request, for as long as the runner's idle strategy says (to the microsecond,
    /// [`crate::zmqx::wait_any`]).
    fn idle_wait(&mut self, timeout: Duration) {
        let cur = &self.servers[self.core.current()];
        let sockets = [&self.bell, &cur.sub, cur.links.socket()].into_iter().chain(&self.dealer);
        let _ = crate::zmqx::wait_any(sockets, zmq::POLLIN, timeout);
    }
}

/// Ask `check` every `every` until it gives a value or fails; [`ClientError::Interrupted`] as
/// soon as `stop` is set, [`ClientError::Timeout`] (waiting for `what`) after `deadline`.
fn poll_until<T>(
    deadline: Duration,
    every: Duration,
    stop: &StopFlag,
    what: &'static str,
    mut check: impl FnMut() -> Result<Option<T>, ClientError>,
) -> Result<T, ClientError> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if stop.is_stopped() {
            return Err(ClientError::Interrupted);
        }
        if Instant::now() >= end {
            return Err(ClientError::Timeout { what, after: deadline });
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_words_not_debug_output() {
        let t = ClientError::Timeout { what: "the snapshot", after: Duration::from_millis(500) };
        assert_eq!(t.to_string(), "timed out after 500ms waiting for the snapshot");
        let n = ClientError::NotAcked(AckState::Untracked).to_string();
        assert!(n.starts_with("the update will not be acknowledged: it is untracked ("), "{n}");
    }

    #[test]
    fn a_full_command_queue_refuses_and_counts_and_a_gone_agent_is_stopped() {
        let (tx, rx) = channel::bounded(2);
        let refused = AtomicU64::new(0);
        let set = || Cmd::Set(KvMsg::new("/k", 0, "v"));
        assert!(offer(&tx, set(), &refused).is_ok());
        assert!(offer(&tx, set(), &refused).is_ok());
        assert!(matches!(offer(&tx, set(), &refused), Err(ClientError::Busy { queued: 2 })));
        assert_eq!(refused.load(Ordering::Relaxed), 1);
        assert_eq!(rx.len(), 2, "what was queued stays queued; nothing silently lost");
        drop(rx);
        assert!(matches!(offer(&tx, set(), &refused), Err(ClientError::Stopped)));
        assert_eq!(refused.load(Ordering::Relaxed), 1);
    }
}
