//! The clone server agent (Clone pattern model 6 + Binary Star).
//!
//! Snapshot ROUTER at P, PUB at P+1,
//! collector SUB at P+2, Binary Star heartbeats at P+3; TTL expiry, HUGZ, pending list, takeover,
//! and optional durability. The logic it composes ([`KvMap`], [`BStar`]) is socket-free.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use super::bstar::{BStar, BStarError, Event, Role, State};
use super::kvmsg::{self, decode_request, recv_frames, KvMsg, Request, HUGZ, KTHXBAI, STATUS_REP};
use super::map::{mono_now_ns, ttl_ns, wall_now_ms, KvMap, RecentUuids};
use super::persist::{self, PersistError, Record, Store};
use crate::agent::{Agent, AgentError, Step};

/// Messages handled per socket per unit of work (then timers get a turn).
const BATCH_MSGS: usize = 4096;
/// A passive server drops pending updates older than this while the active peer is alive (the
/// active peer would have published them long ago; e.g. updates without a UUID cannot be matched).
const PENDING_MAX_AGE_NS: u64 = 10_000_000_000;
/// Silence from the peer's snapshot port after which a passive server retries its sync.
const PEER_SYNC_TIMEOUT_NS: u64 = 3_000_000_000;
/// Bytes allowed above the configured limits in one frame received from the network.
const FRAME_SLACK_BYTES: usize = 4096;
/// UUIDs remembered as already re-published once (see `republish_if_current`).
const REPUBLISHED_UUIDS: usize = 65_536;

/// Longest properties frame (`name=value\n` text) accepted in an update.
pub const MAX_PROPS_BYTES: usize = 64 << 10;

/// Accepted heartbeat, HUGZ and fsync intervals: below 10 ms a peer or client is declared dead
/// by scheduling noise; above a minute failover is too slow to be of use.
pub const INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// Binary Star settings of one half of a pair.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// `--primary` or `--backup`.
    pub role: Role,
    /// The peer's base endpoint `tcp://host:P2` (its snapshot port; PUB at P2+1).
    pub peer: String,
    /// The peer's Binary Star state endpoint (default `tcp://host:P2+3`).
    pub peer_state: String,
    /// Our state endpoint to bind (default `tcp://<bind>:P+3`).
    pub state_bind: String,
    /// Heartbeat interval (the peer is dead after two missed).
    pub heartbeat_ms: u64,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Interface to bind (`127.0.0.1`, `*`, an address).
    pub bind_host: String,
    /// Base port P (snapshot); P+1 publisher, P+2 collector.
    pub port: u16,
    /// Binary Star pair, or `None` for a standalone server (always active).
    pub pair: Option<PairConfig>,
    /// Directory for the update log and snapshots.
    pub data_dir: Option<PathBuf>,
    /// HUGZ when nothing was published for this long.
    pub hugz_interval_ms: u64,
    /// fsync the log at most this often.
    pub fsync_interval_ms: u64,
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Longest value accepted.
    pub max_value_bytes: usize,
    /// Publisher send high-water mark (messages per subscriber).
    pub pub_hwm_msgs: i32,
    /// Collector receive high-water mark.
    pub collector_hwm_msgs: i32,
    /// UUIDs remembered for de-duplication.
    pub recent_uuids: usize,
    /// Print state changes and problems to stderr.
    pub verbose: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind_host: "127.0.0.1".into(),
            port: 5556,
            pair: None,
            data_dir: None,
            hugz_interval_ms: 1000,
            fsync_interval_ms: 1000,
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            pub_hwm_msgs: 1_000_000,
            collector_hwm_msgs: 1_000_000,
            recent_uuids: 1 << 18,
            verbose: true,
        }
    }
}

impl ServerConfig {
    /// Check the limits: the reason (naming the `mdsub clone-server` flag) when they are unusable.
    pub fn check(&self) -> Result<(), String> {
        let in_range = |flag: &str, ms: u64| {
            if INTERVAL_RANGE_MS.contains(&ms) {
                Ok(())
            } else {
                Err(format!(
                    "{flag} {ms} is out of range: give {}..={} ms",
                    INTERVAL_RANGE_MS.start(),
                    INTERVAL_RANGE_MS.end()
                ))
            }
        };
        if let Some(p) = &self.pair {
            in_range("--heartbeat-ms", p.heartbeat_ms)?;
        }
        in_range("--hugz-ms", self.hugz_interval_ms)?;
        in_range("fsync interval (ms)", self.fsync_interval_ms)?;
        let record = self
            .max_key_bytes
            .checked_add(self.max_value_bytes)
            .and_then(|n| n.checked_add(MAX_PROPS_BYTES + persist::RECORD_FIXED_BYTES));
        if record.is_none_or(|n| n > persist::MAX_RECORD_BYTES) {
            let room = persist::MAX_RECORD_BYTES - MAX_PROPS_BYTES - persist::RECORD_FIXED_BYTES;
            return Err(format!(
                "--max-key-bytes {} + --max-value-bytes {} exceed what one log record can hold: \
                 the two together must be at most {room} bytes",
                self.max_key_bytes, self.max_value_bytes
            ));
        }
        Ok(())
    }
}

/// Clone server errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A socket could not be set up.
    #[error("zmq error while {context}: {source}")]
    Zmq {
        context: String,
        #[source]
        source: zmq::Error,
    },
    /// The data directory failed.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// Binary Star found both servers in the same state.
    #[error("binary star: {0}")]
    BStar(#[from] BStarError),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

fn zerr(context: impl Into<String>) -> impl FnOnce(zmq::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Zmq { context, source }
}

/// Counters reported by `STATUS?`.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Snapshot-port requests that were not ICANHAZ?/STATUS?.
    pub malformed_requests: u64,
    /// Updates that failed to decode or validate (size limits, bad TTL, bad frames).
    pub malformed_updates: u64,
    /// Updates dropped because their UUID was already applied.
    pub duplicates: u64,
    /// Snapshot requests refused by Binary Star.
    pub rejected_votes: u64,
    /// Snapshots served.
    pub snapshots: u64,
    /// KVPUB messages published (updates and expiry deletes).
    pub published: u64,
    /// Keys expired.
    pub expired: u64,
    /// Peer heartbeats that did not parse.
    pub malformed_heartbeats: u64,
    /// Pending updates dropped (too old or list full).
    pub pending_dropped: u64,
    /// Update-log appends or flushes that failed (disk full, I/O error): the
    /// updates they carried were neither applied, published nor acknowledged.
    pub log_failures: u64,
}

/// What waits in the outbox for the update log's flush.
enum Outgoing {
    /// Publish only (HUGZ, expiry deletes, re-published current values).
    Publish(KvMsg),
    /// A client's update: apply to the map at `now_ns`, then publish (its acknowledgement).
    Update(KvMsg, u64),
}

struct PeerSync {
    dealer: zmq::Socket,
    deadline_ns: u64,
    map: KvMap,
    queued: Vec<KvMsg>,
}

struct Pair {
    bstar: BStar,
    statepub: zmq::Socket,
    statesub: zmq::Socket,
    peer_sub: zmq::Socket,
    /// Socket monitor of `peer_sub`: a sync starts only once our subscription is on its way.
    peer_mon: zmq::Socket,
    peer_connected: bool,
    peer_snapshot: String,
    sync: Option<PeerSync>,
    synced: bool,
    pending: VecDeque<(u64, KvMsg)>,
}

/// The server agent.
pub struct Server {
    cfg: ServerConfig,
    ctx: zmq::Context,
    snapshot: zmq::Socket,
    publisher: zmq::Socket,
    collector: zmq::Socket,
    pair: Option<Pair>,
    map: KvMap,
    sequence: u64,
    recent: RecentUuids,
    /// Applied UUIDs already re-published once for a re-sending client.
    republished: RecentUuids,
    store: Option<Store>,
    last_fsync_ns: u64,
    last_pub_ns: u64,
    counters: Counters,
    frames: Vec<zmq::Message>,
    wrote: bool,
    /// With a data dir: updates applied but not yet published, held until their log records
    /// have been handed to the OS (see [`Server::flush_outbox`]).
    outbox: Vec<Outgoing>,
}

fn log(verbose: bool, msg: std::fmt::Arguments) {
    if verbose {
        eprintln!("clone-server: {msg}");
    }
}

impl Server {
    /// Bind the sockets, recover the data directory, and start in PRIMARY/BACKUP (pair) or active.
    pub fn new(cfg: ServerConfig) -> Result<Server, ServerError> {
        cfg.check().map_err(ServerError::Config)?;
        let ctx = zmq::Context::new();
        let host = cfg.bind_host.clone();
        let p = cfg.port;
        if p > u16::MAX - 3 {
            return Err(ServerError::Config(format!("port {p} leaves no room for P+1..P+3")));
        }
        // Largest frame accepted from the network (libzmq drops the connection of a peer that
        // sends more): an update's biggest part plus slack; a request's subtree is a key.
        let update_frame_bytes = cfg.max_value_bytes.max(cfg.max_key_bytes).max(MAX_PROPS_BYTES);
        let update_max = i64::try_from(update_frame_bytes.saturating_add(FRAME_SLACK_BYTES)).unwrap_or(i64::MAX);
        let request_max = i64::try_from(cfg.max_key_bytes.saturating_add(FRAME_SLACK_BYTES)).unwrap_or(i64::MAX);
        let snapshot = ctx.socket(zmq::ROUTER).map_err(zerr("creating the snapshot socket"))?;
        snapshot.set_maxmsgsize(request_max).map_err(zerr("setting snapshot max message size"))?;
        snapshot.set_sndhwm(0).map_err(zerr("setting snapshot HWM"))?;
        snapshot.set_linger(0).map_err(zerr("setting linger"))?;
        let ep = format!("tcp://{host}:{p}");
        snapshot.bind(&ep).map_err(zerr(format!("binding snapshot {ep}")))?;
        let publisher = ctx.socket(zmq::PUB).map_err(zerr("creating the publisher"))?;
        publisher.set_sndhwm(cfg.pub_hwm_msgs).map_err(zerr("setting publisher HWM"))?;
        publisher.set_linger(100).map_err(zerr("setting linger"))?;
        let ep = format!("tcp://{host}:{}", p + 1);
        publisher.bind(&ep).map_err(zerr(format!("binding publisher {ep}")))?;
        let collector = ctx.socket(zmq::SUB).map_err(zerr("creating the collector"))?;
        collector.set_rcvhwm(cfg.collector_hwm_msgs).map_err(zerr("setting collector HWM"))?;
        collector.set_maxmsgsize(update_max).map_err(zerr("setting collector max message size"))?;
        collector.set_subscribe(b"").map_err(zerr("subscribing the collector"))?;
        collector.set_linger(0).map_err(zerr("setting linger"))?;
        let ep = format!("tcp://{host}:{}", p + 2);
        collector.bind(&ep).map_err(zerr(format!("binding collector {ep}")))?;
        let now = mono_now_ns();
        let pair = match &cfg.pair {
            None => None,
            Some(pc) => {
                let statepub = ctx.socket(zmq::PUB).map_err(zerr("creating the state publisher"))?;
                statepub.set_linger(0).map_err(zerr("setting linger"))?;
                statepub.bind(&pc.state_bind).map_err(zerr(format!("binding state {}", pc.state_bind)))?;
                let statesub = ctx.socket(zmq::SUB).map_err(zerr("creating the state subscriber"))?;
                statesub.set_subscribe(b"").map_err(zerr("subscribing state"))?;
                statesub.set_maxmsgsize(FRAME_SLACK_BYTES as i64).map_err(zerr("setting state max message size"))?;
                statesub.set_linger(0).map_err(zerr("setting linger"))?;
                statesub.connect(&pc.peer_state).map_err(zerr(format!("connecting peer state {}", pc.peer_state)))?;
                let [peer_snapshot, peer_pub, _] = super::endpoints(&pc.peer).map_err(ServerError::Config)?;
                let peer_sub = ctx.socket(zmq::SUB).map_err(zerr("creating the peer subscriber"))?;
                peer_sub.set_subscribe(b"").map_err(zerr("subscribing peer"))?;
                peer_sub.set_rcvhwm(cfg.collector_hwm_msgs).map_err(zerr("setting HWM"))?;
                peer_sub.set_maxmsgsize(update_max).map_err(zerr("setting peer max message size"))?;
                peer_sub.set_linger(0).map_err(zerr("setting linger"))?;
                let mon_ep = format!("inproc://clone-server-peer-mon-{}", std::process::id());
                let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32 | zmq::SocketEvent::DISCONNECTED as i32;
                peer_sub.monitor(&mon_ep, events).map_err(zerr("monitoring the peer subscriber"))?;
                let peer_mon = ctx.socket(zmq::PAIR).map_err(zerr("creating a monitor socket"))?;
                peer_mon.set_linger(0).map_err(zerr("setting linger"))?;
                peer_mon.connect(&mon_ep).map_err(zerr("connecting a monitor socket"))?;
                peer_sub.connect(&peer_pub).map_err(zerr(format!("connecting peer publisher {peer_pub}")))?;
                Some(Pair {
                    bstar: BStar::new(pc.role, pc.heartbeat_ms.saturating_mul(1_000_000), now),
                    statepub,
                    statesub,
                    peer_sub,
                    peer_mon,
                    peer_connected: false,
                    peer_snapshot,
                    sync: None,
                    synced: false,
                    pending: VecDeque::new(),
                })
            }
        };
        let mut server = Server {
            recent: RecentUuids::new(cfg.recent_uuids),
            republished: RecentUuids::new(REPUBLISHED_UUIDS),
            ctx,
            snapshot,
            publisher,
            collector,
            pair,
            map: KvMap::new(),
            sequence: 0,
            store: None,
            last_fsync_ns: now,
            last_pub_ns: now,
            counters: Counters::default(),
            frames: Vec::new(),
            wrote: false,
            outbox: Vec::new(),
            cfg,
        };
        if let Some(dir) = server.cfg.data_dir.clone() {
            let (store, rec) = Store::open(&dir)?;
            recover_records(&mut server.map, &mut server.recent, rec.records, wall_now_ms(), now);
            server.sequence = rec.sequence;
            for e in &rec.tail_errors {
                eprintln!("clone-server: data dir: stopped reading at {e}; everything before it was recovered");
            }
            if let Some(copy) = &rec.corrupt_log_copy {
                eprintln!(
                    "clone-server: data dir: the damaged log was copied to {} before its bad tail was cut",
                    copy.display()
                );
            }
            log(
                server.cfg.verbose,
                format_args!(
                    "recovered {} keys at sequence {} from {}",
                    server.map.len(),
                    server.sequence,
                    dir.display()
                ),
            );
            server.store = Some(store);
        }
        log(
            server.cfg.verbose,
            format_args!(
                "ready on {host}:{p} (snapshot), :{} (publisher), :{} (collector), state {}",
                p + 1,
                p + 2,
                server.state_name()
            ),
        );
        Ok(server)
    }

    fn state_name(&self) -> &'static str {
        match &self.pair {
            None => "active",
            Some(p) => p.bstar.state().name(),
        }
    }

    fn is_active(&self) -> bool {
        self.pair.as_ref().is_none_or(|p| p.bstar.state() == State::Active)
    }

    /// Current sequence (highest published or replicated).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The map (for tests and benchmarks driving the agent by hand).
    pub fn map(&self) -> &KvMap {
        &self.map
    }

    /// Append `msg` to the update log (no data dir: nothing to do). False when
    /// the append failed: counted and reported, and the caller must not
    /// acknowledge the update.
    fn persist(&mut self, msg: &KvMsg, expires_at_ns: Option<u64>, now_ns: u64) -> bool {
        let Some(store) = self.store.as_mut() else { return true };
        let mut m = msg.clone();
        m.remove_prop(kvmsg::TTL_PROP);
        let expires_at_unix_ms = expires_at_ns.map(|t| wall_now_ms() + t.saturating_sub(now_ns) / 1_000_000 + 1);
        match store.append(&Record { msg: m, expires_at_unix_ms }) {
            Ok(()) => {
                self.wrote = true;
                true
            }
            Err(e) => {
                self.log_failed(&e.to_string());
                false
            }
        }
    }

    /// Count a failed log write and say so on stderr (the first ten, then
    /// every thousandth, so a full disk does not flood the terminal).
    fn log_failed(&mut self, what: &str) {
        self.counters.log_failures += 1;
        self.wrote = false;
        if let Some(Err(e)) = self.store.as_mut().map(|s| s.rollback()) {
            eprintln!("clone-server: {e}");
        }
        // The rollback dropped every record not yet flushed: what waited on
        // them is not published, and the clients' re-sends count as new.
        for o in std::mem::take(&mut self.outbox) {
            if let Outgoing::Update(m, _) = o {
                if let Some(u) = m.uuid {
                    self.recent.remove(&u);
                }
            }
        }
        let n = self.counters.log_failures;
        if n <= 10 || n.is_multiple_of(1000) {
            eprintln!("clone-server: update log write failed ({n} so far), update not acknowledged: {what}");
        }
    }

    /// Publish `msg`; with a data dir it waits in the outbox until its log record is written.
    fn publish(&mut self, msg: &KvMsg, now_ns: u64) {
        self.last_pub_ns = now_ns;
        if self.store.is_some() {
            self.outbox.push(Outgoing::Publish(msg.clone()));
            return;
        }
        self.send_pub(msg);
    }

    fn send_pub(&mut self, msg: &KvMsg) {
        match msg.send(&self.publisher, None) {
            Ok(()) => self.counters.published += 1,
            Err(e) => log(self.cfg.verbose, format_args!("publish failed: {e}")),
        }
    }

    /// Hand the log records written so far to the OS, then publish the outbox: a KVPUB is a
    /// client's acknowledgement, so it goes out only once a process crash can no longer lose
    /// the update (append → flush → publish, once per batch).
    /// If the flush fails, nothing in the outbox is applied or published: the
    /// clients' updates stay un-acknowledged (they re-send them), and their
    /// UUIDs are forgotten so the re-sends are taken as new.
    fn flush_outbox(&mut self) {
        if let Some(store) = self.store.as_mut() {
            if self.wrote {
                let flushed = store.flush();
                self.wrote = false;
                if let Err(e) = flushed {
                    self.log_failed(&e.to_string());
                    return;
                }
            }
        }
        if self.outbox.is_empty() {
            return;
        }
        let mut outbox = std::mem::take(&mut self.outbox);
        for o in outbox.drain(..) {
            match o {
                Outgoing::Publish(m) => self.send_pub(&m),
                Outgoing::Update(m, now_ns) => {
                    self.send_pub(&m);
                    if self.map.apply_owned(m, now_ns).is_err() {
                        self.counters.malformed_updates += 1;
                    }
                }
            }
        }
        self.outbox = outbox;
    }

    /// Validate a client update; the reason when it is refused.
    fn validate(&self, msg: &KvMsg) -> Result<(), String> {
        if msg.key.is_empty() {
            return Err("empty key".into());
        }
        if msg.key.len() > self.cfg.max_key_bytes {
            return Err(format!("key of {} bytes > {}", msg.key.len(), self.cfg.max_key_bytes));
        }
        if msg.body.len() > self.cfg.max_value_bytes {
            return Err(format!("value of {} bytes > {}", msg.body.len(), self.cfg.max_value_bytes));
        }
        if msg.key == HUGZ || msg.key == KTHXBAI {
            return Err("reserved key".into());
        }
        ttl_ns(msg).map_err(|e| e.to_string())?;
        let props = kvmsg::encode_props(&msg.props).map_err(|e| e.to_string())?;
        if props.len() > MAX_PROPS_BYTES {
            return Err(format!("properties of {} bytes > {MAX_PROPS_BYTES}", props.len()));
        }
        Ok(())
    }

    /// Active: sequence, store, publish and persist one client update (deduplicated by UUID).
    /// The update was validated (TTL parses), so storing it cannot fail.
    fn apply_update(&mut self, mut msg: KvMsg, now_ns: u64) {
        if let Some(u) = msg.uuid {
            if !self.recent.insert(u) {
                self.counters.duplicates += 1;
                self.republish_if_current(&msg, u, now_ns);
                return;
            }
        }
        self.sequence = self.sequence.saturating_add(1);
        msg.sequence = self.sequence;
        if self.store.is_some() {
            // Log first; applied and published (the acknowledgement) only once
            // the log record is flushed (flush_outbox), never if it failed.
            let exp = ttl_ns(&msg).ok().flatten().map(|t| now_ns.saturating_add(t));
            if !self.persist(&msg, exp, now_ns) {
                self.sequence -= 1;
                if let Some(u) = msg.uuid {
                    self.recent.remove(&u);
                }
                return;
            }
            self.last_pub_ns = now_ns;
            self.outbox.push(Outgoing::Update(msg, now_ns));
            return;
        }
        self.publish(&msg, now_ns);
        if self.map.apply_owned(msg, now_ns).is_err() {
            self.counters.malformed_updates += 1;
        }
    }

    /// A client re-sent an update we already applied (it missed our KVPUB, e.g. because its
    /// subscription was not in place yet). If the key still holds exactly that update, publish the
    /// current state again under a new sequence: it changes nothing and acknowledges the client.
    /// If the key has moved on, a newer update exists and re-publishing would be stale: drop it.
    /// Each UUID is re-published at most once (a client whose subscription cannot see the key
    /// would otherwise have every re-send published again under a new sequence); a client that
    /// misses that once finds its UUID in the snapshot of its next re-sync.
    fn republish_if_current(&mut self, msg: &KvMsg, u: kvmsg::Uuid, now_ns: u64) {
        let current = match self.map.get(&msg.key) {
            Some(e) if e.uuid == Some(u) => Some(KvMap::to_msg(&msg.key, e, now_ns)),
            None if msg.body.is_empty() => Some(msg.clone()),
            _ => None,
        };
        if current.is_some() && !self.republished.insert(u) {
            return;
        }
        if let Some(mut m) = current {
            self.sequence = self.sequence.saturating_add(1);
            m.sequence = self.sequence;
            m.uuid = Some(u);
            self.publish(&m, now_ns);
            self.map.set_sequence(&m.key, m.sequence);
            let exp = self.map.get(&m.key).and_then(|e| e.expires_at_ns);
            self.persist(&m, exp, now_ns);
        }
    }

    /// Passive: apply an update the active server published.
    fn apply_replicated(&mut self, msg: KvMsg, now_ns: u64) {
        if msg.sequence <= self.sequence {
            return;
        }
        self.sequence = msg.sequence;
        if let Some(u) = msg.uuid {
            self.recent.insert(u);
            if let Some(p) = self.pair.as_mut() {
                if let Some(i) = p.pending.iter().position(|(_, m)| m.uuid == Some(u)) {
                    p.pending.remove(i);
                }
            }
        }
        if self.store.is_some() {
            let exp = ttl_ns(&msg).ok().flatten().map(|t| now_ns.saturating_add(t));
            self.persist(&msg, exp, now_ns);
        }
        if self.map.apply_owned(msg, now_ns).is_err() {
            self.counters.malformed_updates += 1;
        }
    }

    fn on_collector(&mut self, msg: KvMsg, now_ns: u64) {
        if let Err(reason) = self.validate(&msg) {
            self.counters.malformed_updates += 1;
            log(self.cfg.verbose && self.counters.malformed_updates <= 10, format_args!("update refused: {reason}"));
            return;
        }
        if self.is_active() {
            self.apply_update(msg, now_ns);
            return;
        }
        // Not active: hold it until the active server publishes it (or we take over).
        if msg.uuid.is_some_and(|u| self.recent.contains(&u)) {
            return;
        }
        if let Some(p) = self.pair.as_mut() {
            if msg.uuid.is_some() && p.pending.iter().any(|(_, m)| m.uuid == msg.uuid) {
                return; // a re-send of an update we already hold
            }
            if p.pending.len() >= 1_000_000 {
                p.pending.pop_front();
                self.counters.pending_dropped += 1;
            }
            p.pending.push_back((now_ns, msg));
        }
    }

    fn on_transition(&mut self, from: State, to: State, now_ns: u64) {
        log(self.cfg.verbose, format_args!("state {} -> {}", from.name(), to.name()));
        let Some(p) = self.pair.as_mut() else { return };
        p.bstar.heartbeat_now();
        match to {
            State::Active => {
                p.sync = None;
                let pending: Vec<KvMsg> = p.pending.drain(..).map(|(_, m)| m).collect();
                let n = pending.len();
                for m in pending {
                    self.apply_update(m, now_ns);
                }
                log(
                    self.cfg.verbose,
                    format_args!("applied {n} pending updates on takeover, sequence {}", self.sequence),
                );
                self.last_pub_ns = 0; // HUGZ at once so clients see us
            }
            State::Passive => p.synced = false,
            _ => {}
        }
    }

    fn bstar_event(&mut self, ev: Event, now_ns: u64) -> Result<bool, AgentError> {
        let Some(p) = self.pair.as_mut() else { return Ok(true) };
        match p.bstar.on_event(ev, now_ns) {
            Ok(o) => {
                if let Some((from, to)) = o.transition {
                    self.on_transition(from, to, now_ns);
                }
                Ok(o.accepted)
            }
            Err(e) => Err(AgentError::Fatal {
                role: "clone-server".into(),
                message: format!("binary star: {e}; stopping as the guide's bstar does"),
            }),
        }
    }

    fn serve_snapshot(&mut self, identity: &[u8], subtree: &[u8], now_ns: u64) {
        let mut sent_ok = true;
        for (i, (k, e)) in self.map.subtree(subtree).enumerate() {
            // A large snapshot takes a while: keep the Binary Star heartbeat going meanwhile so
            // the peer does not take us for dead.
            if i % 65_536 == 65_535 {
                if let Some(p) = self.pair.as_mut() {
                    if let Some(st) = p.bstar.heartbeat_due(mono_now_ns()) {
                        let _ = p.statepub.send(st.to_wire(), zmq::DONTWAIT);
                    }
                }
            }
            let r = if e.expires_at_ns.is_none() && e.props.is_empty() {
                send_entry_plain(&self.snapshot, identity, k, e)
            } else {
                KvMap::to_msg(k, e, now_ns).send(&self.snapshot, Some(identity)).map_err(|_| zmq::Error::EINVAL)
            };
            if r.is_err() {
                sent_ok = false;
                break;
            }
        }
        let mut end = KvMsg::new(KTHXBAI, self.sequence, subtree.to_vec());
        end.uuid = None;
        if sent_ok && end.send(&self.snapshot, Some(identity)).is_ok() {
            self.counters.snapshots += 1;
        }
    }

    fn status_text(&self) -> String {
        let c = &self.counters;
        let role = match &self.cfg.pair {
            None => "standalone",
            Some(p) if p.role == Role::Primary => "primary",
            Some(_) => "backup",
        };
        let pending = self.pair.as_ref().map_or(0, |p| p.pending.len());
        format!(
            "state={}\nrole={role}\nsequence={}\nkeys={}\npending={pending}\nmalformed_requests={}\n\
             malformed_updates={}\nmalformed_heartbeats={}\nduplicates={}\nrejected_votes={}\nsnapshots={}\n\
             published={}\nexpired={}\npending_dropped={}\nlog_failures={}\n",
            self.state_name(),
            self.sequence,
            self.map.len(),
            c.malformed_requests,
            c.malformed_updates,
            c.malformed_heartbeats,
            c.duplicates,
            c.rejected_votes,
            c.snapshots,
            c.published,
            c.expired,
            c.pending_dropped,
            c.log_failures
        )
    }

    fn drain_snapshot(&mut self, now_ns: u64) -> Result<usize, AgentError> {
        let mut n = 0;
        while n < 16 {
            let count = match recv_frames(&self.snapshot, &mut self.frames, zmq::DONTWAIT) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err(self.zmq_err("receiving a snapshot request", e)),
            };
            n += 1;
            if !(2..=kvmsg::MAX_FRAMES).contains(&count) {
                self.counters.malformed_requests += 1;
                continue;
            }
            let identity = self.frames[0].to_vec();
            let req = {
                let args: Vec<&[u8]> = self.frames[1..count].iter().map(|m| &m[..]).collect();
                decode_request(&args)
            };
            match req {
                Ok(Request::Status) => {
                    let text = self.status_text();
                    let _ = self.snapshot.send(&identity[..], zmq::SNDMORE);
                    let _ = self.snapshot.send(STATUS_REP, zmq::SNDMORE);
                    let _ = self.snapshot.send(text.as_bytes(), 0);
                }
                Ok(Request::Snapshot { subtree }) => {
                    if self.bstar_event(Event::ClientRequest, now_ns)? {
                        // A snapshot acknowledges what it holds: write the log first.
                        self.flush_outbox();
                        self.serve_snapshot(&identity, &subtree, now_ns);
                    } else {
                        self.counters.rejected_votes += 1;
                    }
                }
                Err(_) => self.counters.malformed_requests += 1,
            }
        }
        Ok(n)
    }

    fn zmq_err(&self, context: &'static str, source: zmq::Error) -> AgentError {
        AgentError::Zmq { role: "clone-server".into(), context, source }
    }

    /// Receive one kvmsg from `which` socket (0 collector, 1 peer subscriber).
    fn recv_kv(&mut self, which: u8) -> Result<Option<Result<KvMsg, ()>>, AgentError> {
        let sock = match (which, self.pair.as_ref()) {
            (0, _) => &self.collector,
            (_, Some(p)) => &p.peer_sub,
            _ => return Ok(None),
        };
        match recv_frames(sock, &mut self.frames, zmq::DONTWAIT) {
            Ok(None) => Ok(None),
            Ok(Some(count)) if count > kvmsg::MAX_FRAMES => Ok(Some(Err(()))),
            Ok(Some(count)) => Ok(Some(KvMsg::decode_messages(&self.frames[..count]).map_err(|_| ()))),
            Err(e) => Err(self.zmq_err("receiving an update", e)),
        }
    }

    fn drain_collector(&mut self, now_ns: u64) -> Result<usize, AgentError> {
        let mut n = 0;
        while n < BATCH_MSGS {
            match self.recv_kv(0)? {
                None => break,
                Some(Ok(m)) => self.on_collector(m, now_ns),
                Some(Err(())) => self.counters.malformed_updates += 1,
            }
            n += 1;
        }
        self.flush_outbox();
        Ok(n)
    }

    fn drain_peer(&mut self, now_ns: u64) -> Result<usize, AgentError> {
        let mut n = 0;
        // Heartbeats.
        loop {
            let Some(p) = self.pair.as_ref() else { return Ok(0) };
            let frame = match p.statesub.recv_bytes(zmq::DONTWAIT) {
                Ok(f) => f,
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => return Err(self.zmq_err("receiving a peer heartbeat", e)),
            };
            while p.statesub.get_rcvmore().unwrap_or(false) {
                let _ = p.statesub.recv_bytes(0);
            }
            n += 1;
            match State::from_wire(&frame) {
                Some(s) => {
                    self.bstar_event(Event::Peer(s), now_ns)?;
                }
                None => self.counters.malformed_heartbeats += 1,
            }
        }
        // Updates published by the peer.
        while n < BATCH_MSGS {
            let msg = match self.recv_kv(1)? {
                None => break,
                Some(Err(())) => {
                    n += 1;
                    continue;
                }
                Some(Ok(m)) => m,
            };
            n += 1;
            if self.is_active() {
                continue;
            }
            if msg.key == HUGZ {
                // HUGZ carries the active's sequence: if it is ahead of us while we think we
                // are in step, we lost updates.
                if let Some(p) = self.pair.as_mut() {
                    if p.synced && p.sync.is_none() && msg.sequence > self.sequence {
                        log(
                            self.cfg.verbose,
                            format_args!("passive: behind ({} < {}), re-syncing", self.sequence, msg.sequence),
                        );
                        p.synced = false;
                    }
                }
                continue;
            }
            let Some(p) = self.pair.as_mut() else { break };
            if let Some(sync) = p.sync.as_mut() {
                sync.queued.push(msg);
            } else if p.synced {
                if msg.sequence > self.sequence.saturating_add(1) {
                    // The active server's sequence is contiguous: we missed updates (HWM, a
                    // reconnect). Fetch a fresh snapshot rather than drift.
                    log(
                        self.cfg.verbose,
                        format_args!("passive: gap {} -> {}, re-syncing", self.sequence, msg.sequence),
                    );
                    p.synced = false;
                    continue;
                }
                self.apply_replicated(msg, now_ns);
            }
        }
        n += self.drive_sync(now_ns)?;
        Ok(n)
    }

    /// Passive and not yet in step with the active server: fetch its snapshot.
    fn drive_sync(&mut self, now_ns: u64) -> Result<usize, AgentError> {
        let verbose = self.cfg.verbose;
        let Some(p) = self.pair.as_mut() else { return Ok(0) };
        while let Ok(frames) = p.peer_mon.recv_multipart(zmq::DONTWAIT) {
            if let Some(f) = frames.first().filter(|f| f.len() >= 2) {
                let event = u16::from_ne_bytes([f[0], f[1]]);
                if event == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16 {
                    p.peer_connected = true;
                } else if event == zmq::SocketEvent::DISCONNECTED as u16 {
                    p.peer_connected = false;
                }
            }
        }
        if p.bstar.state() != State::Passive || p.synced || (p.sync.is_none() && !p.peer_connected) {
            return Ok(0);
        }
        if p.sync.is_none() {
            let dealer = self.ctx.socket(zmq::DEALER).map_err(|e| AgentError::Zmq {
                role: "clone-server".into(),
                context: "creating the sync socket",
                source: e,
            })?;
            let _ = dealer.set_linger(0);
            let _ = dealer.set_rcvhwm(0);
            if dealer.connect(&p.peer_snapshot).is_err() {
                return Ok(0);
            }
            let _ = dealer.send(kvmsg::ICANHAZ, zmq::SNDMORE | zmq::DONTWAIT);
            let _ = dealer.send(&b""[..], zmq::DONTWAIT);
            p.sync = Some(PeerSync {
                dealer,
                deadline_ns: now_ns + PEER_SYNC_TIMEOUT_NS,
                map: KvMap::new(),
                queued: Vec::new(),
            });
            log(verbose, format_args!("passive: fetching a snapshot from {}", p.peer_snapshot));
        }
        let mut n = 0;
        let mut done: Option<u64> = None;
        if let Some(sync) = p.sync.as_mut() {
            while n < BATCH_MSGS * 4 {
                let count = match recv_frames(&sync.dealer, &mut self.frames, zmq::DONTWAIT) {
                    Ok(Some(c)) => c,
                    _ => break,
                };
                n += 1;
                sync.deadline_ns = now_ns + PEER_SYNC_TIMEOUT_NS;
                let Ok(m) = KvMsg::decode_messages(&self.frames[..count.min(kvmsg::MAX_FRAMES)]) else {
                    continue;
                };
                if m.key == KTHXBAI {
                    done = Some(m.sequence);
                    break;
                }
                if !m.body.is_empty() {
                    let _ = sync.map.apply(&m, now_ns);
                }
            }
            if done.is_none() && now_ns > sync.deadline_ns {
                log(verbose, format_args!("passive: peer snapshot timed out, retrying"));
                p.sync = None;
            }
        }
        if let Some(seq) = done {
            let Some(sync) = p.sync.take() else { return Ok(n) };
            p.synced = true;
            self.map = sync.map;
            self.sequence = seq;
            let uuids: Vec<_> = self.map.iter().filter_map(|(_, e)| e.uuid).collect();
            for u in uuids {
                self.recent.insert(u);
            }
            if let Some(p) = self.pair.as_mut() {
                let recent = &self.recent;
                p.pending.retain(|(_, m)| !m.uuid.is_some_and(|u| recent.contains(&u)));
            }
            for m in sync.queued {
                self.apply_replicated(m, now_ns);
            }
            self.rewrite_store(now_ns);
            log(verbose, format_args!("passive: in sync with {} keys at sequence {}", self.map.len(), self.sequence));
        }
        Ok(n)
    }

    fn rewrite_store(&mut self, now_ns: u64) {
        let Some(store) = self.store.as_mut() else { return };
        let wall = wall_now_ms();
        let recs = self.map.iter().map(|(k, e)| {
            let mut m = KvMap::to_msg(k, e, now_ns);
            m.remove_prop(kvmsg::TTL_PROP);
            Record {
                msg: m,
                expires_at_unix_ms: e.expires_at_ns.map(|t| wall + t.saturating_sub(now_ns) / 1_000_000 + 1),
            }
        });
        if let Err(e) = store.write_snapshot(self.sequence, recs) {
            eprintln!("clone-server: {e}");
        }
    }

    fn timers(&mut self, now_ns: u64) -> usize {
        let mut n = 0;
        if let Some(p) = self.pair.as_mut() {
            if let Some(s) = p.bstar.heartbeat_due(now_ns) {
                let _ = p.statepub.send(s.to_wire(), zmq::DONTWAIT);
            }
            let alive = !p.bstar.peer_expired(now_ns);
            while alive && p.pending.front().is_some_and(|(t, _)| now_ns.saturating_sub(*t) > PENDING_MAX_AGE_NS) {
                p.pending.pop_front();
                self.counters.pending_dropped += 1;
            }
        }
        if self.is_active() {
            if self.map.next_expiry_ns().is_some_and(|t| t <= now_ns) {
                for (key, _entry) in self.map.expire(now_ns) {
                    self.sequence = self.sequence.saturating_add(1);
                    let del = KvMsg::new(key, self.sequence, Vec::new());
                    self.publish(&del, now_ns);
                    self.persist(&del, None, now_ns);
                    self.counters.expired += 1;
                    n += 1;
                }
            }
            if now_ns.saturating_sub(self.last_pub_ns) >= self.cfg.hugz_interval_ms.saturating_mul(1_000_000) {
                let hugz = KvMsg::new(HUGZ, self.sequence, Vec::new());
                self.publish(&hugz, now_ns);
            }
        }
        if let Some(store) = self.store.as_mut() {
            if self.wrote {
                if let Err(e) = store.flush() {
                    eprintln!("clone-server: {e}");
                }
                self.wrote = false;
            }
            if now_ns.saturating_sub(self.last_fsync_ns) >= self.cfg.fsync_interval_ms.saturating_mul(1_000_000) {
                if let Err(e) = store.sync() {
                    eprintln!("clone-server: {e}");
                }
                self.last_fsync_ns = now_ns;
            }
            if store.log_records() > (2 * self.map.len() as u64).max(100_000) {
                self.rewrite_store(now_ns);
            }
        }
        n
    }
}

/// Replay recovered records (snapshot entries, then log records, in order) into `map` at wall
/// time `wall_ms` / monotonic `now_ns`. A record whose wall-clock deadline has passed deletes its
/// key (it expired while the server was down, so any earlier value of the key is gone too).
fn recover_records(map: &mut KvMap, recent: &mut RecentUuids, records: Vec<Record>, wall_ms: u64, now_ns: u64) {
    for r in records {
        if let Some(u) = r.msg.uuid {
            recent.insert(u);
        }
        let mut msg = r.msg;
        let exp = match r.expires_at_unix_ms {
            Some(t) if t <= wall_ms => {
                msg.body.clear(); // expired: a delete
                None
            }
            Some(t) => Some(now_ns.saturating_add(t.saturating_sub(wall_ms).saturating_mul(1_000_000))),
            None => None,
        };
        let key = std::mem::take(&mut msg.key);
        map.put(key, &msg, exp);
    }
}

/// Send one KVSYNC straight from a stored entry without properties or TTL (no copy of the entry).
fn send_entry_plain(sock: &zmq::Socket, identity: &[u8], key: &[u8], e: &super::map::Entry) -> zmq::Result<()> {
    sock.send(identity, zmq::SNDMORE)?;
    sock.send(key, zmq::SNDMORE)?;
    sock.send(&e.sequence.to_be_bytes()[..], zmq::SNDMORE)?;
    match &e.uuid {
        Some(u) => sock.send(&u[..], zmq::SNDMORE)?,
        None => sock.send(&b""[..], zmq::SNDMORE)?,
    }
    sock.send(&b""[..], zmq::SNDMORE)?;
    sock.send(&e.body[..], 0)
}

impl Agent for Server {
    fn role(&self) -> &str {
        "clone-server"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let now = mono_now_ns();
        // Peer heartbeats first: a client vote must be judged on the peer's latest news.
        let mut n = self.drain_peer(now)?;
        n += self.drain_snapshot(now)?;
        n += self.drain_collector(now)?;
        n += self.timers(now);
        self.flush_outbox();
        Ok(Step::Worked(n))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let ms = timeout.as_millis().min(100) as i64;
        let mut items = vec![self.snapshot.as_poll_item(zmq::POLLIN), self.collector.as_poll_item(zmq::POLLIN)];
        if let Some(p) = &self.pair {
            items.push(p.statesub.as_poll_item(zmq::POLLIN));
            items.push(p.peer_sub.as_poll_item(zmq::POLLIN));
            items.push(p.peer_mon.as_poll_item(zmq::POLLIN));
            if let Some(s) = &p.sync {
                items.push(s.dealer.as_poll_item(zmq::POLLIN));
            }
        }
        let _ = zmq::poll(&mut items, ms);
    }

    fn on_close(&mut self) {
        self.flush_outbox();
        if let Some(store) = self.store.as_mut() {
            if let Err(e) = store.sync() {
                eprintln!("clone-server: {e}");
            }
        }
        log(self.cfg.verbose, format_args!("stopped at sequence {} with {} keys", self.sequence, self.map.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, seq: u64, body: &str, expires_at_unix_ms: Option<u64>) -> Record {
        Record { msg: KvMsg::new(key, seq, body), expires_at_unix_ms }
    }

    #[test]
    fn limits_that_overflow_a_log_record_are_refused() {
        assert!(ServerConfig::default().check().is_ok());
        let cfg = ServerConfig { max_value_bytes: persist::MAX_RECORD_BYTES, ..ServerConfig::default() };
        let err = cfg.check().expect_err("a value as large as a record cannot fit with its key");
        assert!(err.contains("--max-value-bytes"), "{err}");
        let cfg = ServerConfig { max_key_bytes: usize::MAX, ..ServerConfig::default() };
        assert!(cfg.check().expect_err("overflow").contains("--max-key-bytes"));
        let room = persist::MAX_RECORD_BYTES - MAX_PROPS_BYTES - persist::RECORD_FIXED_BYTES;
        let cfg = ServerConfig { max_key_bytes: 1024, max_value_bytes: room - 1024, ..ServerConfig::default() };
        assert!(cfg.check().is_ok(), "the largest limits that fit are accepted");
    }

    #[test]
    fn intervals_out_of_range_are_refused_naming_the_flag() {
        let pair = |heartbeat_ms| PairConfig {
            role: Role::Primary,
            peer: "tcp://127.0.0.1:5566".into(),
            peer_state: "tcp://127.0.0.1:5569".into(),
            state_bind: "tcp://127.0.0.1:5559".into(),
            heartbeat_ms,
        };
        for ms in [0, 9, 60_001, u64::MAX] {
            let cfg = ServerConfig { pair: Some(pair(ms)), ..ServerConfig::default() };
            assert!(cfg.check().expect_err("out of range").contains("--heartbeat-ms"), "{ms}");
            let cfg = ServerConfig { hugz_interval_ms: ms, ..ServerConfig::default() };
            assert!(cfg.check().expect_err("out of range").contains("--hugz-ms"), "{ms}");
        }
        let cfg = ServerConfig { pair: Some(pair(10)), hugz_interval_ms: 60_000, ..ServerConfig::default() };
        assert!(cfg.check().is_ok());
    }

    #[test]
    fn recovery_treats_an_expired_record_as_a_delete() {
        let mut map = KvMap::new();
        let mut recent = RecentUuids::new(16);
        let wall_ms = 1_000_000;
        let records = vec![
            rec("/a", 1, "v1", None),                    // A=v1
            rec("/a", 2, "v2", Some(wall_ms - 10_000)),  // then A=v2 ttl=10, expired while down
            rec("/b", 3, "", Some(wall_ms - 5)),         // a delete carrying a past deadline
            rec("/c", 4, "live", Some(wall_ms + 2_000)), // still 2 s to live
        ];
        recover_records(&mut map, &mut recent, records, wall_ms, 7);
        assert!(map.get(b"/a").is_none(), "the expired v2 must not bring v1 back");
        assert!(map.get(b"/b").is_none());
        assert_eq!(map.get(b"/c").and_then(|e| e.expires_at_ns), Some(7 + 2_000_000_000));
        assert_eq!(map.len(), 1);
    }
}
