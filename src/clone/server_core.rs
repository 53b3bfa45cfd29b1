//! Socket-free core of the clone server (Clone model 6 + Binary Star): `(event, now_ns) → actions`,
//! like [`BStar`].
//!
//! It owns the map, the sequence, UUID de-duplication and re-publishing, the passive server's
//! pending list and its re-sync from the active peer, takeover (pending-list replay), TTL
//! expiry, HUGZ, and the durability rule. It never touches a socket, a file or a clock: the
//! shell ([`super::server`]) turns each frame into an [`Event`], passes `now_ns`, and carries
//! out the [`Action`]s in order.
//!
//! **Durability** (with a data directory): an update is appended to the log
//! ([`Action::Append`]); it is applied and published (its acknowledgement) only after the shell
//! has flushed the log ([`Action::FlushLog`] answered by [`Event::LogFlushed`]). The shell runs
//! the actions in order and reports a failed append or flush at once ([`Event::LogFailed`],
//! after rolling the log back): every update waiting on the lost records is then neither
//! applied, published nor acknowledged, its UUID is forgotten so the client's re-send counts as
//! new, and the failure is counted in `log_failures`.

use std::collections::VecDeque;

use super::bstar::{BStar, BStarError, Event as BEvent, Role, State};
use super::kvmsg::{self, KvMsg, Request, Uuid, HUGZ, KTHXBAI};
use super::map::{ttl_ns, KvMap, RecentUuids};
use super::persist::Record;
use super::server::{ServerConfig, MAX_PROPS_BYTES};

/// A passive server drops pending updates older than this while the active peer is alive (the
/// active peer would have published them long ago; e.g. updates without a UUID cannot be matched).
pub const PENDING_MAX_AGE_NS: u64 = 10_000_000_000;
/// Most updates a passive server holds in its pending list (the oldest is dropped first).
pub const PENDING_MAX: usize = 1_000_000;
/// Silence from the peer's snapshot port after which a passive server retries its sync.
pub const PEER_SYNC_TIMEOUT_NS: u64 = 3_000_000_000;
/// UUIDs remembered as already re-published once (see `republish_if_current`).
const REPUBLISHED_UUIDS: usize = 65_536;

/// Input to the core.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A Binary Star heartbeat from the peer (`None`: it did not parse).
    PeerState(Option<State>),
    /// A message from the peer's publisher (`Err`: it did not decode).
    Replicated(Result<KvMsg, ()>),
    /// Our subscriber to the peer's publisher connected (true) or lost its link (false).
    PeerLink(bool),
    /// A reply to our snapshot request to the peer (`Err`: it did not decode).
    PeerSnapshot(Result<KvMsg, ()>),
    /// Check the passive re-sync: time out a silent one, start one when needed.
    PeerSyncCheck,
    /// The shell could not open the snapshot request to the peer (retried on the next check).
    PeerSyncFailed,
    /// A request on the snapshot port from `identity` (`Err`: malformed).
    Request {
        /// The ROUTER identity to answer.
        identity: Vec<u8>,
        /// What was asked.
        request: Result<Request, ()>,
    },
    /// A snapshot asked for by [`Action::SendSnapshot`] went out completely.
    SnapshotSent,
    /// An update from the collector (`Err`: it did not decode).
    Update(Result<KvMsg, ()>),
    /// End of a batch: write and publish what waits.
    Flush,
    /// Time passed: heartbeats, pending-list ageing, TTL expiry, HUGZ, fsync.
    Tick,
    /// The log flush asked for by [`Action::FlushLog`] succeeded.
    LogFlushed,
    /// The append with `token` (or, for `None`, the flush) failed; the shell has rolled back
    /// the log records not yet flushed.
    LogFailed {
        /// The failed [`Action::Append`]'s token; `None` for a failed flush.
        token: Option<u64>,
        /// What went wrong, for the report.
        error: String,
    },
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `msg` on the publisher; when `apply_at_ns` is set, then hand it back with
    /// [`ServerCore::published`] (a client update is applied once published: no copy).
    Publish {
        /// The KVPUB.
        msg: KvMsg,
        /// Apply it to the map at this time after sending.
        apply_at_ns: Option<u64>,
    },
    /// Send our Binary Star state to the peer.
    Heartbeat(State),
    /// Answer `STATUS?` with `text`.
    Reply {
        /// The ROUTER identity.
        identity: Vec<u8>,
        /// The status text.
        text: String,
    },
    /// Send the snapshot of `subtree` ([`ServerCore::map`], then KTHXBAI with
    /// [`ServerCore::sequence`]), then report [`Event::SnapshotSent`].
    SendSnapshot {
        /// The ROUTER identity.
        identity: Vec<u8>,
        /// The subtree asked for.
        subtree: Vec<u8>,
    },
    /// Open a snapshot request (`ICANHAZ?` for everything) to the peer.
    RequestPeerSnapshot,
    /// Close the snapshot request to the peer.
    EndPeerSnapshot,
    /// Append `msg` (no `ttl` property) to the log; on failure roll the log back and report
    /// [`Event::LogFailed`] with `token` at once.
    Append {
        /// Identifies the append in a failure report.
        token: u64,
        /// The update.
        msg: KvMsg,
        /// Milliseconds from now until it expires (wall-clock deadline = now + this).
        expires_in_ms: Option<u64>,
    },
    /// Hand the appended records to the OS, then report [`Event::LogFlushed`] or
    /// [`Event::LogFailed`] (`token: None`).
    FlushLog,
    /// fsync the log (failures are reported, not fatal).
    SyncLog,
    /// Replace the data directory's snapshot with the map (after a passive re-sync).
    WriteSnapshot,
    /// Print this line (prefixed with the role) on stderr.
    Log(String),
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
#[derive(Debug)]
enum Outgoing {
    /// Publish only (HUGZ, expiry deletes, re-published current values).
    Publish(KvMsg),
    /// A client's update: apply to the map at `now_ns`, then publish (its acknowledgement).
    Update(KvMsg, u64),
}

struct PeerSync {
    deadline_ns: u64,
    map: KvMap,
    queued: Vec<KvMsg>,
}

struct Pair {
    bstar: BStar,
    peer_connected: bool,
    peer_snapshot: String,
    sync: Option<PeerSync>,
    synced: bool,
    pending: VecDeque<(u64, KvMsg)>,
}

/// The clone server's protocol logic.
pub struct ServerCore {
    role: &'static str,
    hugz_ns: u64,
    fsync_ns: u64,
    max_key_bytes: usize,
    max_value_bytes: usize,
    verbose: bool,
    /// With a data directory: updates wait for the log (see the module doc).
    durable: bool,
    pair: Option<Pair>,
    map: KvMap,
    sequence: u64,
    recent: RecentUuids,
    /// Applied UUIDs already re-published once for a re-sending client.
    republished: RecentUuids,
    counters: Counters,
    last_pub_ns: u64,
    last_fsync_ns: u64,
    /// Appends issued so far (the last one's token).
    appends: u64,
    /// Appended since the last flush.
    wrote: bool,
    /// The last client update appended: (token, sequence), to give the sequence back if it fails.
    last_update_append: Option<(u64, u64)>,
    /// Waiting for the flush, each tagged with the appends issued when it was queued: a failed
    /// append `k` loses every record up to `k`, so the entries tagged `<= k` go with it.
    outbox: Vec<(u64, Outgoing)>,
}

impl ServerCore {
    /// A core for `cfg` (checked by the caller) at `now_ns`: PRIMARY/BACKUP in a pair, else
    /// active. `durable`: a data directory holds the log.
    pub fn new(cfg: &ServerConfig, durable: bool, now_ns: u64) -> Self {
        let pair = cfg.pair.as_ref().map(|pc| Pair {
            bstar: BStar::new(pc.role, pc.heartbeat_ms.saturating_mul(1_000_000), now_ns),
            peer_connected: false,
            peer_snapshot: super::endpoints(&pc.peer).map(|[s, _, _]| s).unwrap_or_else(|_| pc.peer.clone()),
            sync: None,
            synced: false,
            pending: VecDeque::new(),
        });
        ServerCore {
            role: match &cfg.pair {
                None => "standalone",
                Some(p) if p.role == Role::Primary => "primary",
                Some(_) => "backup",
            },
            hugz_ns: cfg.hugz_interval_ms.saturating_mul(1_000_000),
            fsync_ns: cfg.fsync_interval_ms.saturating_mul(1_000_000),
            max_key_bytes: cfg.max_key_bytes,
            max_value_bytes: cfg.max_value_bytes,
            verbose: cfg.verbose,
            durable,
            pair,
            map: KvMap::new(),
            sequence: 0,
            recent: RecentUuids::new(cfg.recent_uuids),
            republished: RecentUuids::new(REPUBLISHED_UUIDS),
            counters: Counters::default(),
            last_pub_ns: now_ns,
            last_fsync_ns: now_ns,
            appends: 0,
            wrote: false,
            last_update_append: None,
            outbox: Vec::new(),
        }
    }

    /// Load what the data directory recovered (snapshot entries, then log records, in order) at
    /// wall time `wall_ms` / monotonic `now_ns`. A record whose wall-clock deadline has passed
    /// deletes its key (it expired while the server was down, so any earlier value is gone too).
    pub fn recover(&mut self, records: Vec<Record>, sequence: u64, wall_ms: u64, now_ns: u64) {
        for r in records {
            if let Some(u) = r.msg.uuid {
                self.recent.insert(u);
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
            self.map.put(key, &msg, exp);
        }
        self.sequence = sequence;
    }

    /// Handle one event at `now_ns`, appending what to do to `out`. An error is fatal (Binary
    /// Star found both servers in the same state).
    pub fn on_event(&mut self, event: Event, now_ns: u64, out: &mut Vec<Action>) -> Result<(), BStarError> {
        match event {
            Event::PeerState(Some(s)) => {
                self.bstar_event(BEvent::Peer(s), now_ns, out)?;
            }
            Event::PeerState(None) => self.counters.malformed_heartbeats += 1,
            Event::Replicated(Ok(m)) => self.on_replicated(m, now_ns, out),
            Event::Replicated(Err(())) => {}
            Event::PeerLink(up) => {
                if let Some(p) = self.pair.as_mut() {
                    p.peer_connected = up;
                }
            }
            Event::PeerSnapshot(m) => self.on_peer_snapshot(m, now_ns, out),
            Event::PeerSyncCheck => self.peer_sync_check(now_ns, out),
            Event::PeerSyncFailed => {
                if let Some(p) = self.pair.as_mut() {
                    p.sync = None;
                }
            }
            Event::Request { identity, request } => match request {
                Ok(Request::Status) => out.push(Action::Reply { identity, text: self.status_text() }),
                Ok(Request::Snapshot { subtree }) => {
                    if self.bstar_event(BEvent::ClientRequest, now_ns, out)? {
                        // A snapshot acknowledges what it holds: write the log first.
                        self.flush(out);
                        out.push(Action::SendSnapshot { identity, subtree });
                    } else {
                        self.counters.rejected_votes += 1;
                    }
                }
                Err(()) => self.counters.malformed_requests += 1,
            },
            Event::SnapshotSent => self.counters.snapshots += 1,
            Event::Update(Ok(m)) => self.on_collector(m, now_ns, out),
            Event::Update(Err(())) => self.counters.malformed_updates += 1,
            Event::Flush => self.flush(out),
            Event::Tick => self.timers(now_ns, out),
            Event::LogFlushed => {
                self.wrote = false;
                self.publish_outbox(out);
            }
            Event::LogFailed { token, error } => self.log_failed(token, &error, out),
        }
        Ok(())
    }

    /// A published update handed back by the shell ([`Action::Publish`] with `apply_at_ns`).
    pub fn published(&mut self, msg: KvMsg, at_ns: u64) {
        if self.map.apply_owned(msg, at_ns).is_err() {
            self.counters.malformed_updates += 1;
        }
    }

    /// The map and the Binary Star machine apart, so a shell sending a long snapshot from the
    /// map can keep heartbeats going ([`BStar::heartbeat_due`]) meanwhile.
    pub fn snapshot_view(&mut self) -> (&KvMap, Option<&mut BStar>) {
        (&self.map, self.pair.as_mut().map(|p| &mut p.bstar))
    }

    /// `active`, `passive`, `primary`, `backup` (a standalone server is always `active`).
    pub fn state_name(&self) -> &'static str {
        match &self.pair {
            None => "active",
            Some(p) => p.bstar.state().name(),
        }
    }

    /// Serving clients (standalone, or ACTIVE in a pair).
    pub fn is_active(&self) -> bool {
        self.pair.as_ref().is_none_or(|p| p.bstar.state() == State::Active)
    }

    /// A passive re-sync from the peer is under way.
    pub fn peer_syncing(&self) -> bool {
        self.pair.as_ref().is_some_and(|p| p.sync.is_some())
    }

    /// Current sequence (highest published or replicated).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The map.
    pub fn map(&self) -> &KvMap {
        &self.map
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Updates held in the pending list (passive).
    pub fn pending(&self) -> usize {
        self.pair.as_ref().map_or(0, |p| p.pending.len())
    }

    /// The `STATUS?` reply.
    pub fn status_text(&self) -> String {
        let c = &self.counters;
        format!(
            "state={}\nrole={}\nsequence={}\nkeys={}\npending={}\nmalformed_requests={}\n\
             malformed_updates={}\nmalformed_heartbeats={}\nduplicates={}\nrejected_votes={}\nsnapshots={}\n\
             published={}\nexpired={}\npending_dropped={}\nlog_failures={}\n",
            self.state_name(),
            self.role,
            self.sequence,
            self.map.len(),
            self.pending(),
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

    fn log(&self, out: &mut Vec<Action>, msg: std::fmt::Arguments) {
        if self.verbose {
            out.push(Action::Log(msg.to_string()));
        }
    }

    /// Append `msg` to the update log (no data dir: nothing to do).
    fn persist(&mut self, msg: &KvMsg, expires_at_ns: Option<u64>, now_ns: u64, out: &mut Vec<Action>) -> u64 {
        if !self.durable {
            return 0;
        }
        let mut m = msg.clone();
        m.remove_prop(kvmsg::TTL_PROP);
        self.appends += 1;
        self.wrote = true;
        out.push(Action::Append {
            token: self.appends,
            msg: m,
            expires_in_ms: expires_at_ns.map(|t| t.saturating_sub(now_ns) / 1_000_000 + 1),
        });
        self.appends
    }

    /// A log append or flush failed and the shell rolled back every record not yet flushed:
    /// what waited on them is not published, and the clients' re-sends count as new.
    fn log_failed(&mut self, token: Option<u64>, error: &str, out: &mut Vec<Action>) {
        self.counters.log_failures += 1;
        let lost_up_to = token.unwrap_or(u64::MAX);
        self.wrote = token.is_some_and(|k| self.appends > k);
        if let (Some(k), Some((t, seq))) = (token, self.last_update_append) {
            if k == t && seq == self.sequence {
                self.sequence -= 1; // the failed update was the last one sequenced: reuse it
            }
        }
        let mut kept = Vec::with_capacity(self.outbox.len());
        for (tag, o) in std::mem::take(&mut self.outbox) {
            if tag > lost_up_to {
                kept.push((tag, o));
            } else if let Outgoing::Update(m, _) = o {
                if let Some(u) = m.uuid {
                    self.recent.remove(&u);
                }
            }
        }
        self.outbox = kept;
        let n = self.counters.log_failures;
        if n <= 10 || n.is_multiple_of(1000) {
            out.push(Action::Log(format!("update log write failed ({n} so far), update not acknowledged: {error}")));
        }
    }

    /// Publish `msg`; with a data dir it waits in the outbox until its log record is written.
    fn publish(&mut self, msg: KvMsg, now_ns: u64, out: &mut Vec<Action>) {
        self.last_pub_ns = now_ns;
        if self.durable {
            self.outbox.push((self.appends, Outgoing::Publish(msg)));
            return;
        }
        self.counters.published += 1;
        out.push(Action::Publish { msg, apply_at_ns: None });
    }

    /// Hand the log records written so far to the OS, then publish the outbox: a KVPUB is a
    /// client's acknowledgement, so it goes out only once a process crash can no longer lose
    /// the update (append → flush → publish, once per batch).
    fn flush(&mut self, out: &mut Vec<Action>) {
        if self.durable && self.wrote {
            out.push(Action::FlushLog); // continues at Event::LogFlushed
            return;
        }
        self.publish_outbox(out);
    }

    fn publish_outbox(&mut self, out: &mut Vec<Action>) {
        for (_, o) in self.outbox.drain(..) {
            self.counters.published += 1;
            out.push(match o {
                Outgoing::Publish(msg) => Action::Publish { msg, apply_at_ns: None },
                Outgoing::Update(msg, at) => Action::Publish { msg, apply_at_ns: Some(at) },
            });
        }
    }

    /// Validate a client update; the reason when it is refused.
    fn validate(&self, msg: &KvMsg) -> Result<(), String> {
        if msg.key.is_empty() {
            return Err("empty key".into());
        }
        if msg.key.len() > self.max_key_bytes {
            return Err(format!("key of {} bytes > {}", msg.key.len(), self.max_key_bytes));
        }
        if msg.body.len() > self.max_value_bytes {
            return Err(format!("value of {} bytes > {}", msg.body.len(), self.max_value_bytes));
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
    fn apply_update(&mut self, mut msg: KvMsg, now_ns: u64, out: &mut Vec<Action>) {
        if let Some(u) = msg.uuid {
            if !self.recent.insert(u) {
                self.counters.duplicates += 1;
                self.republish_if_current(&msg, u, now_ns, out);
                return;
            }
        }
        self.sequence = self.sequence.saturating_add(1);
        msg.sequence = self.sequence;
        if self.durable {
            // Log first; applied and published (the acknowledgement) only once the log record
            // is flushed, never if it failed.
            let exp = ttl_ns(&msg).ok().flatten().map(|t| now_ns.saturating_add(t));
            let token = self.persist(&msg, exp, now_ns, out);
            self.last_update_append = Some((token, self.sequence));
            self.last_pub_ns = now_ns;
            self.outbox.push((token, Outgoing::Update(msg, now_ns)));
            return;
        }
        self.last_pub_ns = now_ns;
        self.counters.published += 1;
        out.push(Action::Publish { msg, apply_at_ns: Some(now_ns) });
    }

    /// A client re-sent an update we already applied (it missed our KVPUB, e.g. because its
    /// subscription was not in place yet). If the key still holds exactly that update, publish the
    /// current state again under a new sequence: it changes nothing and acknowledges the client.
    /// If the key has moved on, a newer update exists and re-publishing would be stale: drop it.
    /// Each UUID is re-published at most once (a client whose subscription cannot see the key
    /// would otherwise have every re-send published again under a new sequence); a client that
    /// misses that once finds its UUID in the snapshot of its next re-sync.
    fn republish_if_current(&mut self, msg: &KvMsg, u: Uuid, now_ns: u64, out: &mut Vec<Action>) {
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
            self.map.set_sequence(&m.key, m.sequence);
            let exp = self.map.get(&m.key).and_then(|e| e.expires_at_ns);
            self.persist(&m, exp, now_ns, out);
            self.publish(m, now_ns, out);
        }
    }

    /// Passive: apply an update the active server published.
    fn apply_replicated(&mut self, msg: KvMsg, now_ns: u64, out: &mut Vec<Action>) {
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
        if self.durable {
            let exp = ttl_ns(&msg).ok().flatten().map(|t| now_ns.saturating_add(t));
            self.persist(&msg, exp, now_ns, out);
        }
        if self.map.apply_owned(msg, now_ns).is_err() {
            self.counters.malformed_updates += 1;
        }
    }

    fn on_collector(&mut self, msg: KvMsg, now_ns: u64, out: &mut Vec<Action>) {
        if let Err(reason) = self.validate(&msg) {
            self.counters.malformed_updates += 1;
            if self.counters.malformed_updates <= 10 {
                self.log(out, format_args!("update refused: {reason}"));
            }
            return;
        }
        if self.is_active() {
            self.apply_update(msg, now_ns, out);
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
            if p.pending.len() >= PENDING_MAX {
                p.pending.pop_front();
                self.counters.pending_dropped += 1;
            }
            p.pending.push_back((now_ns, msg));
        }
    }

    /// A message from the active peer's publisher (we are not active).
    fn on_replicated(&mut self, msg: KvMsg, now_ns: u64, out: &mut Vec<Action>) {
        if self.is_active() {
            return;
        }
        let sequence = self.sequence;
        let verbose = self.verbose;
        let Some(p) = self.pair.as_mut() else { return };
        if msg.key == HUGZ {
            // HUGZ carries the active's sequence: if it is ahead of us while we think we are in
            // step, we lost updates.
            if p.synced && p.sync.is_none() && msg.sequence > sequence {
                p.synced = false;
                if verbose {
                    out.push(Action::Log(format!("passive: behind ({sequence} < {}), re-syncing", msg.sequence)));
                }
            }
            return;
        }
        if let Some(sync) = p.sync.as_mut() {
            sync.queued.push(msg);
        } else if p.synced {
            if msg.sequence > sequence.saturating_add(1) {
                // The active server's sequence is contiguous: we missed updates (HWM, a
                // reconnect). Fetch a fresh snapshot rather than drift.
                p.synced = false;
                if verbose {
                    out.push(Action::Log(format!("passive: gap {sequence} -> {}, re-syncing", msg.sequence)));
                }
                return;
            }
            self.apply_replicated(msg, now_ns, out);
        }
    }

    /// Passive and not yet in step with the active server: time out a silent sync, or start one
    /// once our subscription to the peer is on its way.
    fn peer_sync_check(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        let verbose = self.verbose;
        let Some(p) = self.pair.as_mut() else { return };
        if p.bstar.state() != State::Passive || p.synced || (p.sync.is_none() && !p.peer_connected) {
            return;
        }
        match &p.sync {
            Some(sync) => {
                if now_ns > sync.deadline_ns {
                    p.sync = None;
                    out.push(Action::EndPeerSnapshot);
                    if verbose {
                        out.push(Action::Log("passive: peer snapshot timed out, retrying".into()));
                    }
                }
            }
            None => {
                p.sync = Some(PeerSync {
                    deadline_ns: now_ns.saturating_add(PEER_SYNC_TIMEOUT_NS),
                    map: KvMap::new(),
                    queued: Vec::new(),
                });
                out.push(Action::RequestPeerSnapshot);
                if verbose {
                    out.push(Action::Log(format!("passive: fetching a snapshot from {}", p.peer_snapshot)));
                }
            }
        }
    }

    fn on_peer_snapshot(&mut self, m: Result<KvMsg, ()>, now_ns: u64, out: &mut Vec<Action>) {
        let Some(sync) = self.pair.as_mut().and_then(|p| p.sync.as_mut()) else { return };
        sync.deadline_ns = now_ns.saturating_add(PEER_SYNC_TIMEOUT_NS);
        let Ok(m) = m else { return };
        if m.key != KTHXBAI {
            if !m.body.is_empty() {
                let _ = sync.map.apply(&m, now_ns);
            }
            return;
        }
        let Some(p) = self.pair.as_mut() else { return };
        let Some(sync) = p.sync.take() else { return };
        out.push(Action::EndPeerSnapshot);
        p.synced = true;
        self.map = sync.map;
        self.sequence = m.sequence;
        for (_, e) in self.map.iter() {
            if let Some(u) = e.uuid {
                self.recent.insert(u);
            }
        }
        let recent = &self.recent;
        p.pending.retain(|(_, m)| !m.uuid.is_some_and(|u| recent.contains(&u)));
        for q in sync.queued {
            self.apply_replicated(q, now_ns, out);
        }
        if self.durable {
            out.push(Action::WriteSnapshot);
        }
        self.log(out, format_args!("passive: in sync with {} keys at sequence {}", self.map.len(), self.sequence));
    }

    fn on_transition(&mut self, from: State, to: State, now_ns: u64, out: &mut Vec<Action>) {
        self.log(out, format_args!("state {} -> {}", from.name(), to.name()));
        let Some(p) = self.pair.as_mut() else { return };
        p.bstar.heartbeat_now();
        match to {
            State::Active => {
                if p.sync.take().is_some() {
                    out.push(Action::EndPeerSnapshot);
                }
                let pending: Vec<KvMsg> = p.pending.drain(..).map(|(_, m)| m).collect();
                let n = pending.len();
                for m in pending {
                    self.apply_update(m, now_ns, out);
                }
                self.log(out, format_args!("applied {n} pending updates on takeover, sequence {}", self.sequence));
                self.last_pub_ns = 0; // HUGZ at once so clients see us
            }
            State::Passive => p.synced = false,
            _ => {}
        }
    }

    fn bstar_event(&mut self, ev: BEvent, now_ns: u64, out: &mut Vec<Action>) -> Result<bool, BStarError> {
        let Some(p) = self.pair.as_mut() else { return Ok(true) };
        let o = p.bstar.on_event(ev, now_ns)?;
        if let Some((from, to)) = o.transition {
            self.on_transition(from, to, now_ns, out);
        }
        Ok(o.accepted)
    }

    fn timers(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        if let Some(p) = self.pair.as_mut() {
            if let Some(s) = p.bstar.heartbeat_due(now_ns) {
                out.push(Action::Heartbeat(s));
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
                    self.persist(&del, None, now_ns, out);
                    self.publish(del, now_ns, out);
                    self.counters.expired += 1;
                }
            }
            if now_ns.saturating_sub(self.last_pub_ns) >= self.hugz_ns {
                self.publish(KvMsg::new(HUGZ, self.sequence, Vec::new()), now_ns, out);
            }
        }
        if self.durable {
            self.flush(out);
            if now_ns.saturating_sub(self.last_fsync_ns) >= self.fsync_ns {
                out.push(Action::SyncLog);
                self.last_fsync_ns = now_ns;
            }
        }
    }
}
