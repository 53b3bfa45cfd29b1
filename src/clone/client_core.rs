//! Socket-free core of the clone client (Clone model 6's "clone class" plus mdsub's acks):
//! `(event, now_ns) → actions`, like [`super::bstar::BStar`].
//!
//! It owns the local map, the phase (initial → syncing → live), which server is in use, the
//! un-acknowledged sets and their re-sends, and the silence / restart / dropped-link rules that
//! make the client re-sync or fail over. It never touches a socket or reads a clock: the shell
//! ([`super::client`]) turns each frame, link event and application command into an [`Event`],
//! passes `now_ns`, and carries out the [`Action`]s (send an update to the collectors, ask a
//! server for a snapshot, change the subscription, say a line). Watchers are crossbeam channels
//! the core writes to directly (memory, not I/O).
//!
//! It also decides the client's "not up" lines ([`Event::PublisherNotUp`],
//! [`Event::CollectorNotUp`]): a server that answers on neither of the two links the client
//! connects (its publisher, its collector) is said once in one line naming both, and a link
//! whose other half is up is said alone.

use std::collections::{BTreeMap, VecDeque};

use crossbeam::channel::{Sender, TrySendError};

use super::kvmsg::{KvMsg, Limits, Uuid, FRAME_SLACK_BYTES, HUGZ, KTHXBAI};
use super::map::{RecentUuids, UuidSet};
use crate::link::core::NotUp;

/// After a (re-)sync, un-acknowledged sets are re-sent this often ...
pub const FAST_RESEND_NS: u64 = 250_000_000;
/// ... for this long.
pub const FAST_RESEND_WINDOW_NS: u64 = 3_000_000_000;
/// A set still unacknowledged after this long is forgotten (counted as abandoned): the server
/// drops a re-sent UUID whose key has since been overwritten, so no echo will ever come.
pub const GIVE_UP_NS: u64 = 30_000_000_000;
/// Outcomes (acknowledged, abandoned, untracked) remembered per kind for [`ClientCore::ack_state`].
const REMEMBERED_OUTCOMES: usize = 65_536;
/// Re-sends per tick at most (the rest wait for the next tick).
const RESEND_BUDGET: usize = 1000;
/// How long a collector's "not up" waits for its server's line before it is said alone.
pub const HOLD_NOT_UP_NS: u64 = 1_000_000_000;

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
    /// Say lost and returning links on stderr (off for a full-screen user
    /// such as `mdsub top`; they are counted in the status either way).
    pub log_links: bool,
    /// Who the agent's stderr lines say they are from (`clone-client`; the engine's status
    /// agent says `store`, so a line about its store reads as the engine's).
    pub name: String,
    /// What the command's flags can do about CURVE on the client's sockets, for the hints of its
    /// link lines (`top` and the engine's `--store` have no key flags).
    pub key_flags: crate::link::KeyFlags,
    /// Commands (sets, gets, …) queued from the application to the agent at most; at the bound
    /// a call fails at once with `ClientError::Busy` (counted in `Client::commands_refused`).
    pub command_queue_msgs: usize,
    /// Changes queued to one watcher at most; a watcher that falls this far behind (or whose
    /// initial entries do not fit) is cut off: its receiver ends after what it holds, and
    /// `watchers_cut` counts it (watch again to start from the current state).
    pub watch_queue_msgs: usize,
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
            log_links: true,
            name: "clone-client".into(),
            key_flags: crate::link::KeyFlags::ServerAndCurveKey,
            command_queue_msgs: 65_536,
            watch_queue_msgs: 1_000_000,
        }
    }
}

/// Where a set stands, as far as this client knows (see [`Client::ack_state`](crate::clone::client::Client::ack_state)).
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
    /// Never sent: its key or value is longer than the server in use accepts (the limits it
    /// states on its snapshot's KTHXBAI), so the server would drop it and never publish it.
    Refused,
}

impl AckState {
    /// The state in words: `acknowledged`, `pending`, `abandoned (…)`, …
    pub fn describe(self) -> &'static str {
        match self {
            AckState::Acked => "acknowledged",
            AckState::Pending => "pending",
            AckState::Abandoned => {
                "abandoned (not seen on the publisher within 30 s of re-sending, or pushed out by max_unacked)"
            }
            AckState::Untracked => {
                "untracked (a key outside this client's subtree: its echo never reaches this client)"
            }
            AckState::Unknown => "unknown to this client",
            AckState::Refused => {
                "refused (its key or value is longer than the server accepts: never sent; see ClientStatus::limits)"
            }
        }
    }
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
    /// Failovers: syncs with another server than the one that served this client last (a
    /// change of the server it is served by). Hunting for a server that answers is [`hops`].
    ///
    /// [`hops`]: ClientStatus::hops
    pub failovers: u64,
    /// Moves to the next configured server while looking for one that answers: the one in use
    /// fell silent, did not answer a snapshot request, or its subscriber did not connect (with
    /// one server, a retry of it). Hops without a failover: no server answered, or the same
    /// one came back.
    pub hops: u64,
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
    /// The agent's watched links (its subscribers and its update publisher),
    /// filled in by the shell: losses by reason, reconnects.
    pub links: Vec<crate::link::LinkStats>,
    /// Watchers cut off because their queue was full (`watch_queue_msgs`).
    pub watchers_cut: u64,
    /// Sets refused before sending ([`AckState::Refused`]): longer than [`ClientStatus::limits`].
    pub refused: u64,
    /// The longest key and value the server in use accepts, as its last snapshot stated them
    /// (`None` before the first snapshot, or from a server that does not state them).
    pub limits: Option<Limits>,
    /// How often the server in use publishes HUGZ when quiet, ms, as its last snapshot stated it
    /// (`None` before the first snapshot, or from a server that does not state it).
    pub hugz_interval_ms: Option<u64>,
    /// How long the server in use may be silent before it is left, ms: the configured silence,
    /// or twice `hugz_interval_ms` where that is not below it.
    pub silence_ms: u64,
}

/// Input to the core.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The application sets a key (the update carries its UUID; an empty body deletes).
    Set(KvMsg),
    /// The application changes the subtree (re-syncs).
    Subtree(Vec<u8>),
    /// The subscriber to `server`'s publisher completed its handshake (`up`) or lost its link.
    Link {
        /// Index into the configured servers.
        server: usize,
        /// Connected (true) or disconnected (false).
        up: bool,
    },
    /// libzmq announced a reconnect of the subscriber to `server`'s publisher: a connect attempt
    /// failed (nothing accepts connections there), or, right after a loss, reconnecting began.
    Retried {
        /// Index into the configured servers.
        server: usize,
    },
    /// A message from the current server's publisher (`Err`: it did not decode).
    Published(Result<KvMsg, ()>),
    /// A reply to our snapshot request (`Err`: it did not decode).
    Snapshot(Result<KvMsg, ()>),
    /// The link from the client's publisher to `server`'s collector has completed a handshake
    /// (the shell may say so more than once).
    CollectorUp {
        /// Index into the configured servers.
        server: usize,
    },
    /// The link to `server`'s publisher has not come up ([`crate::link::core::NOT_UP_AFTER_NS`]).
    PublisherNotUp {
        /// Index into the configured servers.
        server: usize,
        /// The link, how long and how many attempts.
        not_up: NotUp,
    },
    /// A link from the client's publisher to a collector has not come up.
    CollectorNotUp(NotUp),
    /// Time passed: check timers (start a sync, silence, snapshot deadline, re-sends, a held
    /// "not up" line).
    Tick,
    /// The agent stops: a "not up" line still held is said now, so nothing is left unsaid.
    Closing,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this update to the collectors of every configured server.
    SendUpdate(KvMsg),
    /// Drop what queued on `server`'s subscriber, then send it `ICANHAZ? subtree` on a fresh
    /// snapshot socket (replacing any earlier request).
    RequestSnapshot {
        /// Index into the configured servers.
        server: usize,
        /// The subtree to ask for: the client's, or its first [`FRAME_SLACK_BYTES`] when it is
        /// longer (what every mdsub server reads; entries are kept by the whole subtree).
        subtree: Vec<u8>,
    },
    /// The snapshot request is over (done or abandoned): close its socket.
    EndSnapshot,
    /// Unsubscribe every server's subscriber from `old` and subscribe it to `new`.
    Resubscribe {
        /// The previous subtree.
        old: Vec<u8>,
        /// The new subtree.
        new: Vec<u8>,
    },
    /// Say this line on stderr (only when the client's links are not quiet): a change of the
    /// server that serves the client, and why; a server or link not up.
    Say(String),
}

/// Which phase the client is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// Waiting to ask the current server for a snapshot.
    Initial,
    /// A snapshot request is under way.
    Syncing,
    /// In step with the current server.
    Live,
}

#[derive(Debug, Default)]
struct Link {
    /// The subscriber has completed its handshake, so its subscription is on its way.
    connected: bool,
    /// The subscriber lost its connection since we last synced from this server.
    dropped: bool,
    /// Sequence of the last message read from this server's publisher since the last sync. A
    /// server's publisher stream never goes backwards, so a lower one means it restarted.
    last_seq: u64,
    /// A connect attempt failed since the link was last up: nothing accepts connections there.
    unreachable: bool,
    /// The link was just lost: the next retry is libzmq starting to reconnect, no failed attempt.
    rearming: bool,
}

#[derive(Debug, Clone)]
struct CEntry {
    sequence: u64,
    uuid: Option<Uuid>,
    body: Vec<u8>,
}

struct Syncing {
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

struct Unacked {
    uuid: Uuid,
    msg: KvMsg,
    first_sent_ns: u64,
    sent_ns: u64,
}

/// The clone client's protocol logic.
pub struct ClientCore {
    cfg: ClientConfig,
    links: Vec<Link>,
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
    refused: RecentUuids,
    /// What the server in use accepts, from its last KTHXBAI.
    limits: Option<Limits>,
    /// How long silence lasts before the server in use is left, ms: `cfg.silence_ms`, or twice
    /// the server's HUGZ interval where its last KTHXBAI stated one not below that.
    silence_ms: u64,
    watchers: Vec<(Vec<u8>, Sender<Change>)>,
    status: ClientStatus,
    ever_synced: bool,
    /// The server whose snapshot we took last (a failover is a sync with another).
    served_by: Option<usize>,
    synced_at_ns: u64,
    initial_since_ns: Option<u64>,
    /// The first server left since the last sync, and why (said with the server that serves next).
    left: Option<(usize, String)>,
    not_up: NotUpLines,
}

impl ClientCore {
    /// A core for `cfg.servers` (the shell has checked there are one or two), starting with the
    /// first server, nothing synced.
    pub fn new(cfg: ClientConfig) -> Self {
        ClientCore {
            links: cfg.servers.iter().map(|_| Link::default()).collect(),
            subtree: cfg.subtree.as_bytes().to_vec(),
            cur: 0,
            phase: Phase::Initial,
            map: BTreeMap::new(),
            sequence: 0,
            last_msg_ns: 0,
            unacked: VecDeque::new(),
            unacked_ids: UuidSet::default(),
            acked: RecentUuids::new(REMEMBERED_OUTCOMES),
            abandoned: RecentUuids::new(REMEMBERED_OUTCOMES),
            untracked: RecentUuids::new(REMEMBERED_OUTCOMES),
            refused: RecentUuids::new(REMEMBERED_OUTCOMES),
            limits: None,
            silence_ms: cfg.silence_ms,
            watchers: Vec::new(),
            status: ClientStatus::default(),
            ever_synced: false,
            served_by: None,
            synced_at_ns: 0,
            initial_since_ns: None,
            left: None,
            not_up: NotUpLines::new(&cfg),
            cfg,
        }
    }

    /// Handle one event at `now_ns`, appending what to do to `out`.
    pub fn on_event(&mut self, event: Event, now_ns: u64, out: &mut Vec<Action>) {
        match event {
            Event::Set(msg) => self.on_set(msg, now_ns, out),
            Event::Subtree(st) => {
                let old = std::mem::replace(&mut self.subtree, st.clone());
                out.push(Action::Resubscribe { old, new: st });
                self.restart_sync(out);
            }
            Event::Link { server, up } => {
                if up {
                    self.not_up.publisher_up(server, out);
                }
                if let Some(l) = self.links.get_mut(server) {
                    l.connected = up;
                    l.dropped |= !up;
                    l.unreachable = false;
                    l.rearming = !up;
                }
            }
            Event::Retried { server } => {
                if let Some(l) = self.links.get_mut(server) {
                    l.unreachable |= !l.rearming && !l.connected;
                    l.rearming = false;
                }
            }
            Event::Published(m) => self.on_published(m, now_ns, out),
            Event::Snapshot(m) => self.on_snapshot(m, now_ns, out),
            Event::CollectorUp { server } => self.not_up.collector_up(server),
            Event::PublisherNotUp { server, not_up } => self.not_up.publisher_not_up(server, not_up, out),
            Event::CollectorNotUp(not_up) => self.not_up.collector_not_up(not_up, now_ns, out),
            Event::Tick => {
                self.not_up.tick(now_ns, out);
                self.tick(now_ns, out);
            }
            Event::Closing => self.not_up.say_held(|_| true, out),
        }
    }

    /// The phase.
    pub fn phase(&self) -> PhaseKind {
        match self.phase {
            Phase::Initial => PhaseKind::Initial,
            Phase::Syncing(_) => PhaseKind::Syncing,
            Phase::Live => PhaseKind::Live,
        }
    }

    /// Index of the server in use.
    pub fn current(&self) -> usize {
        self.cur
    }

    /// The subtree kept.
    pub fn subtree(&self) -> &[u8] {
        &self.subtree
    }

    /// The local value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|e| &e.body[..])
    }

    /// Every local key/value under `prefix`, in key order.
    pub fn dump(&self, prefix: &[u8]) -> Vec<KeyValue> {
        self.under(prefix).map(|(k, e)| (k.clone(), e.body.clone())).collect()
    }

    fn under<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a CEntry)> + 'a {
        self.map.range(prefix.to_vec()..).take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Start a watch: the current entries under `prefix` go to `tx` at once
    /// ([`ChangeKind::Initial`]), then every change.
    /// A bounded `tx` whose room runs out cuts the watcher off ([`ClientStatus::watchers_cut`]).
    pub fn watch(&mut self, prefix: Vec<u8>, tx: Sender<Change>) {
        let mut fits = true;
        for (k, e) in self.under(&prefix) {
            let c =
                Change { key: k.clone(), value: Some(e.body.clone()), sequence: e.sequence, kind: ChangeKind::Initial };
            match tx.try_send(c) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    fits = false;
                    break;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        if fits {
            self.watchers.push((prefix, tx));
        } else {
            self.status.watchers_cut += 1;
        }
    }

    /// The client's status.
    pub fn status(&self) -> ClientStatus {
        let mut s = self.status.clone();
        s.synced = matches!(self.phase, Phase::Live);
        s.server = self.cfg.servers.get(self.cur).cloned();
        s.sequence = self.sequence;
        s.keys = self.map.len();
        s.unacked = self.unacked_ids.len();
        s.limits = self.limits;
        s.silence_ms = self.silence_ms;
        s
    }

    /// Where the set with UUID `u` stands.
    pub fn ack_state(&self, u: &Uuid) -> AckState {
        if self.unacked_ids.contains(u) {
            AckState::Pending
        } else if self.acked.contains(u) {
            AckState::Acked
        } else if self.abandoned.contains(u) {
            AckState::Abandoned
        } else if self.untracked.contains(u) {
            AckState::Untracked
        } else if self.refused.contains(u) {
            AckState::Refused
        } else {
            AckState::Unknown
        }
    }

    fn on_set(&mut self, msg: KvMsg, now_ns: u64, out: &mut Vec<Action>) {
        if !self.fits(&msg) {
            // The server would drop it (counted there) and never publish it: refused here, at
            // once, instead of waited on and re-sent for 30 s.
            self.refuse(msg.uuid);
            return;
        }
        out.push(Action::SendUpdate(msg.clone()));
        let Some(u) = msg.uuid else { return };
        if !msg.key.starts_with(&self.subtree) {
            // Our subscription never delivers its echo: it cannot be acknowledged, so re-sending
            // it would only make the server publish it again and again.
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

    /// A message from the current server's publisher.
    fn on_published(&mut self, m: Result<KvMsg, ()>, now_ns: u64, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Initial) {
            return; // not reading: the backlog is dropped when the sync starts
        }
        self.last_msg_ns = now_ns;
        let m = match m {
            Ok(m) => m,
            Err(()) => {
                self.status.malformed += 1;
                return;
            }
        };
        let link = &mut self.links[self.cur];
        if m.sequence < link.last_seq {
            // The server restarted: its sequence may start again lower than ours, and updates
            // may have been missed. Fetch a fresh snapshot from it.
            self.status.resyncs += 1;
            self.restart_sync(out);
            return;
        }
        link.last_seq = m.sequence;
        if m.key == HUGZ || !m.key.starts_with(&self.subtree) {
            return;
        }
        match &mut self.phase {
            Phase::Syncing(s) => s.queued.push(m),
            Phase::Live => self.apply_live(m),
            Phase::Initial => {}
        }
    }

    /// A reply to our snapshot request.
    fn on_snapshot(&mut self, m: Result<KvMsg, ()>, now_ns: u64, out: &mut Vec<Action>) {
        let Phase::Syncing(s) = &mut self.phase else { return };
        s.deadline_ns = now_ns.saturating_add(self.cfg.silence_ms.saturating_mul(1_000_000));
        let m = match m {
            Ok(m) => m,
            Err(()) => {
                self.status.malformed += 1;
                return;
            }
        };
        if m.key == KTHXBAI {
            // The server's limits come with its snapshot (a server that does not state them
            // leaves nothing to check).
            self.limits = Limits::stated_by(&m);
            self.heed_hugz_interval(super::kvmsg::hugz_interval_stated_by(&m), out);
            if let Phase::Syncing(s) = std::mem::replace(&mut self.phase, Phase::Live) {
                out.push(Action::EndSnapshot);
                self.finish_sync(*s, m.sequence, now_ns, out);
            }
            return;
        }
        if !m.body.is_empty() && m.key.starts_with(&self.subtree) {
            s.entries.push((m.key, CEntry { sequence: m.sequence, uuid: m.uuid, body: m.body }));
        }
    }

    fn tick(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        match &self.phase {
            Phase::Initial => {
                // Ask for the snapshot only once our subscription is on its way, so no update
                // published after the snapshot can slip past us (the guide's clone has that race).
                if self.links[self.cur].connected {
                    self.initial_since_ns = None;
                    self.start_sync(now_ns, out);
                } else if self.links[self.cur].unreachable
                    && self.links.iter().enumerate().any(|(i, l)| i != self.cur && !l.unreachable)
                {
                    // Nothing accepts connections there and the other server may answer: no
                    // need to wait out the retry time (a one-shot command took 0.5 s longer).
                    self.initial_since_ns = None;
                    self.hop("refuses connections (nothing listens there)".into(), out);
                } else {
                    let since = *self.initial_since_ns.get_or_insert(now_ns);
                    if now_ns.saturating_sub(since) > self.cfg.snapshot_retry_ms.saturating_mul(1_000_000) {
                        self.initial_since_ns = None;
                        let why = format!(
                            "its publisher did not connect within {}",
                            crate::diag::human_ms(self.cfg.snapshot_retry_ms)
                        );
                        self.hop(why, out);
                    }
                }
            }
            Phase::Syncing(s) => {
                if now_ns > s.deadline_ns {
                    let why = if s.entries.is_empty() {
                        format!(
                            "did not answer a snapshot request within {} (a passive server ignores it while \
                             its active peer lives)",
                            crate::diag::human_ms(self.cfg.snapshot_retry_ms)
                        )
                    } else {
                        format!("stopped sending its snapshot for {}", crate::diag::human_ms(self.cfg.silence_ms))
                    };
                    self.hop(why, out);
                }
            }
            Phase::Live => self.live_timers(now_ns, out),
        }
    }

    fn restart_sync(&mut self, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Syncing(_)) {
            out.push(Action::EndSnapshot);
        }
        self.phase = Phase::Initial;
    }

    /// Move to the next server (hunting for one that answers); a failover only once another
    /// server than the last one serves us ([`Self::finish_sync`]).
    fn hop(&mut self, why: String, out: &mut Vec<Action>) {
        if self.links.len() > 1 && self.left.is_none() {
            self.left = Some((self.cur, why));
        }
        self.status.hops += 1;
        self.cur = (self.cur + 1) % self.links.len().max(1);
        self.restart_sync(out);
    }

    fn start_sync(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        let link = &mut self.links[self.cur];
        link.dropped = false;
        link.last_seq = 0;
        // A server reads a subtree only up to its key limit plus FRAME_SLACK_BYTES (libzmq
        // drops a longer request with the connection, unanswered): a longer subtree is asked
        // for by its first FRAME_SLACK_BYTES, and the entries are kept by the whole subtree.
        let asked = &self.subtree[..self.subtree.len().min(FRAME_SLACK_BYTES)];
        out.push(Action::RequestSnapshot { server: self.cur, subtree: asked.to_vec() });
        self.phase = Phase::Syncing(Box::new(Syncing {
            deadline_ns: now_ns.saturating_add(self.cfg.snapshot_retry_ms.saturating_mul(1_000_000)),
            entries: Vec::new(),
            queued: Vec::new(),
        }));
    }

    fn finish_sync(&mut self, s: Syncing, seq: u64, now_ns: u64, out: &mut Vec<Action>) {
        // BTreeMap's bulk build (sorted input; on a duplicate key the last entry wins).
        let old = std::mem::replace(&mut self.map, s.entries.into_iter().collect());
        self.sequence = seq;
        self.last_msg_ns = now_ns;
        self.status.syncs += 1;
        if self.served_by.is_some_and(|s| s != self.cur) {
            self.status.failovers += 1;
        }
        self.say_served(out);
        self.served_by = Some(self.cur);
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
            if !self.fits(&m) {
                // Made before we knew the limits (or this server's are tighter): never published.
                self.refuse(Some(u));
                continue;
            }
            self.store(&m, ChangeKind::Local);
            out.push(Action::SendUpdate(m));
        }
        for u in self.unacked.iter_mut() {
            u.sent_ns = now_ns;
        }
        self.unacked.retain(|u| self.unacked_ids.contains(&u.uuid));
    }

    /// The HUGZ interval the server in use stated (`None`: it did not): a server quiet for
    /// `silence_ms` is left, so a stated interval not below it would make the client leave a live
    /// server whenever nothing is published. The client then waits twice the interval instead,
    /// and says so when that changes.
    fn heed_hugz_interval(&mut self, stated_ms: Option<u64>, out: &mut Vec<Action>) {
        self.status.hugz_interval_ms = stated_ms;
        let silence_ms = match stated_ms {
            Some(h) if h >= self.cfg.silence_ms => h.saturating_mul(2),
            _ => self.cfg.silence_ms,
        };
        if silence_ms != self.silence_ms {
            let (name, server) = (&self.cfg.name, &self.cfg.servers[self.cur]);
            let human = crate::diag::human_ms;
            out.push(Action::Say(match stated_ms {
                Some(h) if silence_ms != self.cfg.silence_ms => format!(
                    "{name}: {server} publishes HUGZ every {} when quiet, not under the silence limit {}: it is \
                     left after {} of silence instead",
                    human(h),
                    human(self.cfg.silence_ms),
                    human(silence_ms)
                ),
                _ => format!("{name}: {server} is left after {} of silence again", human(silence_ms)),
            }));
            self.silence_ms = silence_ms;
        }
    }

    /// Served by another server than before (than the first configured, at the first sync):
    /// say which, once, and why the one before was left.
    fn say_served(&mut self, out: &mut Vec<Action>) {
        let left = self.left.take();
        let before = self.served_by.unwrap_or(0);
        if before == self.cur || !self.cfg.log_links {
            return;
        }
        let name = &self.cfg.name;
        let now = &self.cfg.servers[self.cur];
        let why = match left {
            Some((i, why)) if i == before => format!("{} {why}", self.cfg.servers[before]),
            _ => format!("{} did not serve", self.cfg.servers[before]),
        };
        out.push(Action::Say(match self.served_by {
            Some(_) => format!("{name}: failover {}: now served by {now}; {why}", self.status.failovers),
            None => format!("{name}: served by {now}; {why}"),
        }));
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

    fn live_timers(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        if self.links[self.cur].dropped {
            // Our link to the server dropped: updates may have been missed.
            self.status.resyncs += 1;
            self.restart_sync(out);
            return;
        }
        if now_ns.saturating_sub(self.last_msg_ns) > self.silence_ms.saturating_mul(1_000_000) {
            let why = format!("was silent for {} (no update, no HUGZ)", crate::diag::human_ms(self.silence_ms));
            self.hop(why, out);
            return;
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
        let mut budget = RESEND_BUDGET;
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
                out.push(Action::SendUpdate(u.msg.clone()));
                u.sent_ns = now_ns;
                self.unacked.push_back(u);
            }
            budget -= 1;
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

    /// True when the server in use accepts `msg`'s key and value (or has not said what it accepts).
    fn fits(&self, msg: &KvMsg) -> bool {
        self.limits.is_none_or(|l| l.check(&msg.key, &msg.body).is_ok())
    }

    /// Record that the set `u` was refused before sending ([`AckState::Refused`]).
    fn refuse(&mut self, u: Option<Uuid>) {
        self.status.refused += 1;
        if let Some(u) = u {
            self.unacked_ids.remove(&u);
            self.refused.insert(u);
        }
    }

    /// Record that `u` is outside our subtree and will not be tracked.
    fn untrack(&mut self, u: Uuid) {
        self.unacked_ids.remove(&u);
        self.untracked.insert(u);
        self.status.untracked += 1;
    }

    fn notify(&mut self, key: &[u8], value: Option<&[u8]>, sequence: u64, kind: ChangeKind) {
        if self.watchers.is_empty() {
            return;
        }
        let mut cut = 0;
        self.watchers.retain(|(prefix, tx)| {
            if !key.starts_with(prefix) {
                return true;
            }
            let c = Change { key: key.to_vec(), value: value.map(|v| v.to_vec()), sequence, kind };
            match tx.try_send(c) {
                Ok(()) => true,
                // A watcher that missed a change would hold a wrong view: cut it off (counted).
                Err(TrySendError::Full(_)) => {
                    cut += 1;
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
        self.status.watchers_cut += cut;
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
}

/// One configured server's two links the client connects, as the "not up" lines see them.
#[derive(Debug)]
struct ServerLinks {
    /// The server's base endpoint (`tcp://host:P`), its publisher (P+1) and collector (P+2).
    base: String,
    publisher: String,
    collector: String,
    /// The subscriber's link to the publisher has completed a handshake.
    publisher_up: bool,
    /// The publisher's link to the collector has completed a handshake.
    collector_up: bool,
    /// "Not up" was said for the server (its publisher and collector in one line).
    said: bool,
}

/// The client's "not up" lines: one per server for both of its links when neither came up,
/// one for a link alone when its other half is up.
///
/// A collector found not up while its server's publisher link has not come up either is held
/// for the server's line, and said alone if that link comes up, after [`HOLD_NOT_UP_NS`], or
/// when the client stops.
#[derive(Debug)]
struct NotUpLines {
    /// Who the lines are from ([`ClientConfig::name`]).
    name: String,
    /// Say them ([`ClientConfig::log_links`]); the state is kept either way.
    say: bool,
    servers: Vec<ServerLinks>,
    /// Collectors held for their server's line: (server, link, held since ns).
    held: Vec<(usize, NotUp, u64)>,
}

impl NotUpLines {
    fn new(cfg: &ClientConfig) -> Self {
        let servers = cfg
            .servers
            .iter()
            .map(|base| {
                // The shell has checked every base; one that does not parse names no link.
                let [_, publisher, collector] = super::endpoints(base).unwrap_or_default();
                ServerLinks {
                    base: base.clone(),
                    publisher,
                    collector,
                    publisher_up: false,
                    collector_up: false,
                    said: false,
                }
            })
            .collect();
        NotUpLines { name: cfg.name.clone(), say: cfg.log_links, servers, held: Vec::new() }
    }

    fn say(&self, line: String, out: &mut Vec<Action>) {
        if self.say {
            out.push(Action::Say(line));
        }
    }

    /// Server `i`'s publisher link came up: a collector held for its line is said alone.
    fn publisher_up(&mut self, i: usize, out: &mut Vec<Action>) {
        if let Some(s) = self.servers.get_mut(i) {
            s.publisher_up = true;
        }
        self.say_held(|&(server, ..)| server == i, out);
    }

    fn collector_up(&mut self, i: usize) {
        if let Some(s) = self.servers.get_mut(i) {
            s.collector_up = true;
        }
    }

    /// Server `i`'s publisher link is not up: the line for the server, naming its collector
    /// too when that is not up either (one dead server, one line). A collector held for this
    /// line that has come up since is not said at all.
    fn publisher_not_up(&mut self, i: usize, p: NotUp, out: &mut Vec<Action>) {
        self.held.retain(|h| h.0 != i);
        let Some(s) = self.servers.get_mut(i) else {
            let line = p.line(&self.name);
            return self.say(line, out);
        };
        if s.collector_up {
            let line = p.line(&self.name);
            return self.say(line, out);
        }
        s.said = true;
        let why = match &p.cause {
            Some(cause) => format!(": {cause}"),
            None => format!(" ({} connection attempts): nothing answers there", p.attempts),
        };
        let line = format!(
            "{}: server {} not up after {}{why} (its publisher {}, its collector {}); libzmq keeps trying",
            self.name,
            s.base,
            crate::link::core::whole_seconds(p.for_ns),
            s.publisher,
            s.collector
        );
        self.say(line, out);
    }

    /// A collector link is not up: said with its server's line (held until then) unless that
    /// server's publisher link is up, then alone.
    fn collector_not_up(&mut self, c: NotUp, now_ns: u64, out: &mut Vec<Action>) {
        let Some(i) = self.servers.iter().position(|s| s.collector == c.endpoint) else {
            return self.say(c.line(&format!("{} collectors", self.name)), out);
        };
        let s = &self.servers[i];
        if s.said {
            return;
        }
        if s.publisher_up {
            self.say(c.line(&format!("{} collectors", self.name)), out);
        } else {
            self.held.push((i, c, now_ns));
        }
    }

    /// A server whose publisher link neither comes up nor is found not up (it fails its
    /// handshake instead): its collector is said alone, not held for ever.
    fn tick(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        self.say_held(|&(_, _, since_ns)| now_ns.saturating_sub(since_ns) >= HOLD_NOT_UP_NS, out);
    }

    /// Say alone, and stop holding, the held collectors that `due` picks.
    fn say_held(&mut self, due: impl Fn(&(usize, NotUp, u64)) -> bool, out: &mut Vec<Action>) {
        if self.held.is_empty() {
            return;
        }
        let head = format!("{} collectors", self.name);
        let say = self.say;
        self.held.retain(|held| {
            let due = due(held);
            if due && say {
                out.push(Action::Say(held.1.line(&head)));
            }
            !due
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const MS: u64 = 1_000_000;

    fn cfg(servers: usize, subtree: &str) -> ClientConfig {
        ClientConfig {
            servers: (0..servers).map(|i| format!("tcp://127.0.0.1:{}", 6000 + 10 * i)).collect(),
            subtree: subtree.into(),
            silence_ms: 2000,
            snapshot_retry_ms: 500,
            resend_after_ms: 2000,
            ..ClientConfig::default()
        }
    }

    fn uuid(n: u8) -> Uuid {
        [n; 16]
    }

    fn set(key: &str, body: &str, n: u8) -> KvMsg {
        let mut m = KvMsg::new(key, 0, body);
        m.uuid = Some(uuid(n));
        m
    }

    fn published(key: &str, seq: u64, body: &str, u: Option<u8>) -> Event {
        let mut m = KvMsg::new(key, seq, body);
        m.uuid = u.map(uuid);
        Event::Published(Ok(m))
    }

    fn kthxbai(seq: u64) -> Event {
        Event::Snapshot(Ok(KvMsg::new(KTHXBAI, seq, "")))
    }

    /// A core driven by a manual clock, collecting its actions.
    struct Rig {
        core: ClientCore,
        clock: ManualClock,
        out: Vec<Action>,
    }

    impl Rig {
        fn new(cfg: ClientConfig) -> Self {
            Rig { core: ClientCore::new(cfg), clock: ManualClock::new(1_000 * MS), out: Vec::new() }
        }

        /// A rig already live on server 0, from an empty snapshot.
        fn live(cfg: ClientConfig) -> Self {
            let mut r = Rig::new(cfg);
            r.sync(0, &[], 0);
            r
        }

        /// Feed `ev` now; the actions it produced.
        fn on(&mut self, ev: Event) -> Vec<Action> {
            self.core.on_event(ev, self.clock.now_ns(), &mut self.out);
            std::mem::take(&mut self.out)
        }

        fn tick_after_ms(&mut self, ms: u64) -> Vec<Action> {
            self.clock.advance_ms(ms);
            self.on(Event::Tick)
        }

        /// Connect `server`, take its snapshot of `entries`, end at `seq`: live.
        fn sync(&mut self, server: usize, entries: &[(&str, u64, &str, Option<u8>)], seq: u64) -> Vec<Action> {
            self.on(Event::Link { server, up: true });
            let a = self.on(Event::Tick);
            assert_eq!(
                a,
                vec![Action::RequestSnapshot { server, subtree: self.core.subtree().to_vec() }],
                "a connected server is asked for its snapshot"
            );
            for (k, s, v, u) in entries {
                let mut m = KvMsg::new(*k, *s, *v);
                m.uuid = u.map(uuid);
                assert!(self.on(Event::Snapshot(Ok(m))).is_empty());
            }
            let a = self.on(kthxbai(seq));
            assert_eq!(self.core.phase(), PhaseKind::Live);
            assert_eq!(a.first(), Some(&Action::EndSnapshot));
            a[1..].to_vec()
        }
    }

    fn sent(actions: &[Action]) -> Vec<Vec<u8>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendUpdate(m) => Some(m.key.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn snapshot_waits_for_the_subscription_and_queued_updates_apply_after_it() {
        let mut r = Rig::new(cfg(1, ""));
        assert!(r.on(Event::Tick).is_empty(), "no snapshot request before the subscriber is connected");
        r.on(Event::Link { server: 0, up: true });
        assert_eq!(r.on(Event::Tick), vec![Action::RequestSnapshot { server: 0, subtree: Vec::new() }]);
        r.on(Event::Snapshot(Ok(KvMsg::new("/a", 3, "x"))));
        // Updates during the snapshot are queued; those at or below its sequence dropped.
        r.on(published("/a", 3, "x", None));
        r.on(published("/b", 5, "y", None));
        assert_eq!(r.core.get(b"/b"), None, "queued, not applied, while syncing");
        r.on(kthxbai(4));
        assert_eq!(r.core.get(b"/a"), Some(&b"x"[..]));
        assert_eq!(r.core.get(b"/b"), Some(&b"y"[..]));
        let s = r.core.status();
        assert!(s.synced);
        assert_eq!((s.sequence, s.keys, s.syncs, s.live_updates), (5, 2, 1, 1));
        r.on(Event::Published(Err(())));
        assert_eq!(r.core.status().malformed, 1);
    }

    #[test]
    fn ack_goes_from_pending_to_acked_when_the_echo_arrives() {
        let mut r = Rig::live(cfg(1, ""));
        let a = r.on(Event::Set(set("/k", "v", 1)));
        assert_eq!(sent(&a), vec![b"/k".to_vec()]);
        assert_eq!(r.core.ack_state(&uuid(1)), AckState::Pending);
        assert_eq!(r.core.get(b"/k"), Some(&b"v"[..]), "applied locally before the server confirms");
        assert_eq!(r.core.status().unacked, 1);
        r.on(published("/k", 1, "v", Some(1)));
        assert_eq!(r.core.ack_state(&uuid(1)), AckState::Acked);
        assert_eq!(r.core.status().unacked, 0);
        assert_eq!(r.core.ack_state(&uuid(9)), AckState::Unknown);
    }

    #[test]
    fn unacked_sets_are_resent_fast_after_a_sync_then_at_resend_after_then_abandoned() {
        let mut r = Rig::live(cfg(1, ""));
        r.on(Event::Set(set("/k", "v", 1)));
        assert!(sent(&r.tick_after_ms(200)).is_empty(), "not before 250 ms");
        assert_eq!(sent(&r.tick_after_ms(60)), vec![b"/k".to_vec()], "every 250 ms in the fast window");
        // Keep the server talking (HUGZ) so silence does not fail us over.
        r.clock.advance_ms(3000);
        r.on(published("HUGZ", 0, "", None));
        assert_eq!(sent(&r.on(Event::Tick)), vec![b"/k".to_vec()], "past the fast window: after resend_after");
        assert!(sent(&r.tick_after_ms(1000)).is_empty(), "slow re-sends wait resend_after_ms");
        for _ in 0..30 {
            r.clock.advance_ms(1000);
            r.on(published("HUGZ", 0, "", None));
            r.on(Event::Tick);
        }
        assert_eq!(r.core.ack_state(&uuid(1)), AckState::Abandoned, "given up after 30 s");
        assert_eq!(r.core.status().abandoned, 1);
    }

    /// Live on `server` from an empty snapshot whose KTHXBAI states `hugz_ms` (if any); the
    /// actions after the end of the snapshot.
    fn sync_stating(r: &mut Rig, server: usize, hugz_ms: Option<u64>) -> Vec<Action> {
        r.on(Event::Link { server, up: true });
        r.on(Event::Tick);
        let mut end = KvMsg::new(KTHXBAI, 1, "");
        if let Some(h) = hugz_ms {
            super::super::kvmsg::stamp_hugz_interval(&mut end, h);
        }
        let a = r.on(Event::Snapshot(Ok(end)));
        assert_eq!(r.core.phase(), PhaseKind::Live);
        a
    }

    #[test]
    fn a_server_stating_hugz_slower_than_the_silence_is_given_twice_its_interval() {
        // Before: a server run with --hugz-interval 5s was left by every client (silence 2s)
        // whenever nothing was published for 2 s, though it was alive: hops over and over.
        let mut r = Rig::new(cfg(2, ""));
        let a = sync_stating(&mut r, 0, Some(5000));
        let lines = said(&a);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("tcp://127.0.0.1:6000 publishes HUGZ every 5s")
                && lines[0].contains("silence limit 2s")
                && lines[0].ends_with("left after 10s of silence instead"),
            "{}",
            lines[0]
        );
        assert_eq!((r.core.status().hugz_interval_ms, r.core.status().silence_ms), (Some(5000), 10_000));
        // Quiet but alive: HUGZ every 5 s keeps it.
        for seq in 2..6 {
            r.clock.advance_ms(5000);
            r.on(published("HUGZ", seq, "", None));
            r.on(Event::Tick);
        }
        assert_eq!((r.core.current(), r.core.status().hops), (0, 0), "a live, quiet server is kept");
        // Dead: left after 10 s, not 5.
        r.tick_after_ms(9_999);
        assert_eq!(r.core.current(), 0);
        r.tick_after_ms(2);
        assert_eq!(r.core.current(), 1, "left after twice its interval");
        // The other server states nothing (another CHP implementation): the silence is the
        // configured one again, said once.
        let a = sync_stating(&mut r, 1, None);
        assert!(said(&a).iter().any(|l| l.ends_with("is left after 2s of silence again")), "{a:?}");
        assert_eq!((r.core.status().hugz_interval_ms, r.core.status().silence_ms), (None, 2000));
        r.tick_after_ms(2001);
        assert_eq!(r.core.current(), 0, "the configured silence applies to a server that states nothing");
    }

    #[test]
    fn a_server_stating_hugz_faster_than_the_silence_changes_nothing_and_says_nothing() {
        let mut r = Rig::new(cfg(1, ""));
        let a = sync_stating(&mut r, 0, Some(1000));
        assert!(said(&a).is_empty(), "{a:?}");
        assert_eq!((r.core.status().hugz_interval_ms, r.core.status().silence_ms), (Some(1000), 2000));
    }

    #[test]
    fn silence_fails_over_and_pending_sets_are_resent_to_the_new_server() {
        let mut r = Rig::new(cfg(2, ""));
        r.sync(0, &[("/old", 1, "o", None)], 1);
        r.on(Event::Set(set("/a", "1", 1)));
        r.on(Event::Set(set("/b", "2", 2)));
        r.on(published("/a", 2, "1", Some(1)));
        // HUGZ keeps the server alive ...
        r.clock.advance_ms(1500);
        r.on(published("HUGZ", 2, "", None));
        let a = r.tick_after_ms(1500);
        assert!(!a.iter().any(|a| matches!(a, Action::RequestSnapshot { .. })));
        assert_eq!(r.core.current(), 0);
        // ... silence past silence_ms switches to the other server.
        r.clock.advance_ms(600);
        r.on(Event::Tick);
        assert_eq!(r.core.current(), 1, "silent server abandoned");
        assert_eq!((r.core.status().hops, r.core.status().failovers), (1, 0), "not served by 1 yet");
        assert_eq!(r.core.phase(), PhaseKind::Initial);
        assert!(!r.core.status().synced);
        // The backup took over holding /a (acked) but not /b: /b is re-sent, /a is not.
        let a = r.sync(1, &[("/a", 2, "1", Some(1)), ("/old", 1, "o", None)], 2);
        assert_eq!(r.core.status().failovers, 1, "served by another server now");
        assert_eq!(sent(&a), vec![b"/b".to_vec()], "only the set the new server lacks is re-sent");
        assert_eq!(r.core.ack_state(&uuid(1)), AckState::Acked);
        assert_eq!(r.core.ack_state(&uuid(2)), AckState::Pending);
        assert_eq!(r.core.get(b"/b"), Some(&b"2"[..]), "the pending value stays visible locally");
        r.on(published("/b", 3, "2", Some(2)));
        assert_eq!(r.core.ack_state(&uuid(2)), AckState::Acked);
    }

    #[test]
    fn a_snapshot_found_in_the_new_servers_map_acks_the_set() {
        let mut r = Rig::live(cfg(2, ""));
        r.on(Event::Set(set("/a", "1", 7)));
        r.tick_after_ms(2001);
        assert_eq!(r.core.current(), 1);
        let a = r.sync(1, &[("/a", 1, "1", Some(7))], 1);
        assert!(sent(&a).is_empty());
        assert_eq!(r.core.ack_state(&uuid(7)), AckState::Acked);
    }

    #[test]
    fn unanswered_snapshot_request_and_unreachable_server_fail_over() {
        let mut r = Rig::new(cfg(2, ""));
        r.on(Event::Link { server: 0, up: true });
        assert!(matches!(r.on(Event::Tick)[..], [Action::RequestSnapshot { server: 0, .. }]));
        assert!(r.tick_after_ms(500).is_empty(), "deadline is snapshot_retry_ms");
        assert_eq!(r.tick_after_ms(1), vec![Action::EndSnapshot]);
        assert_eq!(r.core.current(), 1);
        // Server 1 never connects: after snapshot_retry_ms back to server 0.
        assert!(r.on(Event::Tick).is_empty());
        r.tick_after_ms(501);
        assert_eq!(r.core.current(), 0);
        assert_eq!((r.core.status().hops, r.core.status().failovers), (2, 0), "hunting, never served");
    }

    #[test]
    fn failovers_count_changes_of_the_serving_server_and_hops_count_the_hunt() {
        // Before: every hop while hunting was a failover (a dead lone server made hundreds).
        let mut r = Rig::new(cfg(2, ""));
        // The first server found is no failover, however long the hunt.
        r.on(Event::Link { server: 0, up: true });
        r.on(Event::Tick);
        r.tick_after_ms(501); // snapshot unanswered: on to server 1, which never connects
        r.tick_after_ms(1);
        r.tick_after_ms(501); // back to 0
        assert_eq!(r.core.current(), 0);
        r.sync(0, &[], 0);
        assert_eq!((r.core.status().hops, r.core.status().failovers), (2, 0));
        // Server 0 falls silent; the hunt passes server 1 (silent too) and comes back to 0:
        // still served by the same server, no failover.
        r.tick_after_ms(2001);
        r.tick_after_ms(1);
        r.tick_after_ms(501);
        assert_eq!(r.core.current(), 0);
        r.sync(0, &[], 0);
        assert_eq!((r.core.status().hops, r.core.status().failovers), (4, 0));
        // Silent again, and server 1 serves: one failover, one hop.
        r.tick_after_ms(2001);
        r.sync(1, &[], 0);
        assert_eq!((r.core.status().hops, r.core.status().failovers), (5, 1));
        // One server, never answering: hops without end, never a failover.
        let mut r = Rig::new(cfg(1, ""));
        for _ in 0..10 {
            r.tick_after_ms(1);
            r.tick_after_ms(501);
        }
        assert_eq!((r.core.status().hops, r.core.status().failovers), (10, 0));
    }

    /// Issue bstar13-3: a server that refuses connections is left at once when the other may
    /// answer (it was waited on for the retry time, 500 ms, on every one-shot command), and the
    /// server that serves next is said once, with why the first was left.
    #[test]
    fn a_refusing_server_is_left_at_once_and_the_server_in_use_is_said() {
        let mut r = Rig::new(cfg(2, ""));
        r.on(Event::Retried { server: 0 });
        r.on(Event::Tick);
        assert_eq!((r.core.current(), r.core.status().hops), (1, 1), "left without waiting");
        let a = r.sync(1, &[], 0);
        let said: Vec<&Action> = a.iter().filter(|a| matches!(a, Action::Say(_))).collect();
        assert_eq!(
            said,
            vec![&Action::Say(
                "clone-client: served by tcp://127.0.0.1:6010; tcp://127.0.0.1:6000 refuses connections \
                 (nothing listens there)"
                    .into()
            )]
        );
        // Server 1 falls silent and server 0 serves: the failover is said, with its cause.
        r.tick_after_ms(2001);
        let a = r.sync(0, &[], 0);
        assert!(
            a.contains(&Action::Say(
                "clone-client: failover 1: now served by tcp://127.0.0.1:6000; tcp://127.0.0.1:6010 was silent \
                 for 2s (no update, no HUGZ)"
                    .into()
            )),
            "{a:?}"
        );
        // A resync with the same server says nothing.
        r.on(Event::Link { server: 0, up: false });
        r.tick_after_ms(1);
        assert!(!r.sync(0, &[], 0).iter().any(|a| matches!(a, Action::Say(_))));
        // A client told not to say its links (`top --once`) says no server either.
        let mut r = Rig::new(ClientConfig { log_links: false, ..cfg(2, "") });
        r.on(Event::Retried { server: 0 });
        r.on(Event::Tick);
        assert_eq!(r.core.current(), 1);
        assert!(!r.sync(1, &[], 0).iter().any(|a| matches!(a, Action::Say(_))), "log_links off: nothing said");
        // The retry right after a loss is libzmq starting to reconnect, not a refusal; both
        // servers refusing: the retry time is waited, as before.
        let mut r = Rig::new(cfg(2, ""));
        r.on(Event::Link { server: 0, up: true });
        r.on(Event::Link { server: 0, up: false });
        r.on(Event::Retried { server: 0 });
        r.on(Event::Tick);
        assert_eq!(r.core.current(), 0, "a reconnect under way is waited for");
        r.on(Event::Retried { server: 1 });
        r.on(Event::Retried { server: 1 });
        r.on(Event::Retried { server: 0 });
        r.tick_after_ms(1);
        assert_eq!(r.core.current(), 0, "both refuse: no hopping to and fro");
        r.tick_after_ms(501);
        assert_eq!(r.core.current(), 1);
    }

    #[test]
    fn a_sequence_going_backwards_or_a_dropped_link_resyncs_with_the_same_server() {
        let mut r = Rig::new(cfg(1, ""));
        r.sync(0, &[], 10);
        r.on(published("/a", 11, "x", None));
        r.on(Event::Set(set("/mine", "m", 1)));
        // The server restarted without a data dir: it counts again from 1.
        assert!(r.on(published("HUGZ", 1, "", None)).is_empty());
        assert_eq!(r.core.phase(), PhaseKind::Initial);
        assert_eq!(r.core.status().resyncs, 1);
        assert_eq!(r.core.status().failovers, 0);
        r.on(published("/ignored", 99, "x", None));
        let a = r.sync(0, &[], 1);
        assert_eq!(r.core.get(b"/a"), None, "the restarted server's map replaces ours");
        assert_eq!(r.core.get(b"/ignored"), None, "nothing read between the restart and the sync");
        assert_eq!(sent(&a), vec![b"/mine".to_vec()], "the unacknowledged set goes to the restarted server");
        assert_eq!(r.core.status().sequence, 1);
        // A dropped link also resyncs (updates may have been lost while it was down).
        r.on(Event::Link { server: 0, up: false });
        r.on(Event::Tick);
        assert_eq!(r.core.phase(), PhaseKind::Initial);
        assert_eq!(r.core.status().resyncs, 2);
    }

    #[test]
    fn a_subtree_longer_than_any_server_reads_is_asked_for_by_its_head_and_kept_whole() {
        // Before: the whole subtree went out; over a server's key limit plus slack, libzmq
        // dropped the request with the connection, and the client timed out as if no server ran.
        let long = format!("/k/{}", "a".repeat(70_000));
        let mut r = Rig::new(cfg(1, &long));
        r.on(Event::Link { server: 0, up: true });
        let head = long.as_bytes()[..FRAME_SLACK_BYTES].to_vec();
        assert_eq!(r.on(Event::Tick), vec![Action::RequestSnapshot { server: 0, subtree: head.clone() }]);
        // Entries under the head but not the subtree are not kept.
        let under_head = String::from_utf8(head).expect("ascii") + "b";
        r.on(Event::Snapshot(Ok(KvMsg::new(under_head.as_str(), 1, "x"))));
        r.on(Event::Snapshot(Ok(KvMsg::new(format!("{long}/in").as_str(), 2, "y"))));
        let mut end = KvMsg::new(KTHXBAI, 2, "");
        Limits { max_key_bytes: 1024, max_value_bytes: 8 }.stamp(&mut end);
        r.on(Event::Snapshot(Ok(end)));
        assert_eq!(r.core.dump(b""), vec![(format!("{long}/in").into_bytes(), b"y".to_vec())]);
        // The limits came with it: the shell can tell the subtree is longer than any key.
        assert_eq!(r.core.status().limits.map(|l| l.max_key_bytes), Some(1024));
        // A subtree that fits is asked for whole.
        let mut r = Rig::new(cfg(1, "/x/"));
        r.on(Event::Link { server: 0, up: true });
        assert_eq!(r.on(Event::Tick), vec![Action::RequestSnapshot { server: 0, subtree: b"/x/".to_vec() }]);
    }

    #[test]
    fn subtree_filters_snapshot_and_live_and_sets_outside_are_untracked() {
        let mut r = Rig::new(cfg(1, "/x/"));
        r.on(Event::Link { server: 0, up: true });
        assert_eq!(r.on(Event::Tick), vec![Action::RequestSnapshot { server: 0, subtree: b"/x/".to_vec() }]);
        r.on(Event::Snapshot(Ok(KvMsg::new("/x/1", 1, "a"))));
        r.on(Event::Snapshot(Ok(KvMsg::new("/y/1", 2, "b"))));
        r.on(kthxbai(2));
        r.on(published("/y/2", 3, "c", None));
        r.on(published("/x/2", 4, "d", None));
        assert_eq!(r.core.dump(b""), vec![(b"/x/1".to_vec(), b"a".to_vec()), (b"/x/2".to_vec(), b"d".to_vec())]);
        let a = r.on(Event::Set(set("/y/3", "e", 1)));
        assert_eq!(sent(&a), vec![b"/y/3".to_vec()], "sent once");
        assert_eq!(r.core.ack_state(&uuid(1)), AckState::Untracked);
        assert_eq!(r.core.get(b"/y/3"), None);
        assert!(sent(&r.tick_after_ms(5000)).is_empty(), "never re-sent");
        // Changing the subtree resubscribes and re-syncs.
        r.on(published("HUGZ", 4, "", None));
        let a = r.on(Event::Subtree(b"/y/".to_vec()));
        assert_eq!(a, vec![Action::Resubscribe { old: b"/x/".to_vec(), new: b"/y/".to_vec() }]);
        assert_eq!(r.core.phase(), PhaseKind::Initial);
    }

    #[test]
    fn a_pending_set_outside_a_new_subtree_becomes_untracked_at_the_resync() {
        let mut r = Rig::live(cfg(1, "/x/"));
        r.on(Event::Set(set("/x/k", "v", 3)));
        r.on(Event::Subtree(b"/y/".to_vec()));
        let a = r.sync(0, &[], 0);
        assert!(sent(&a).is_empty());
        assert_eq!(r.core.ack_state(&uuid(3)), AckState::Untracked);
    }

    #[test]
    fn a_watcher_whose_bounded_queue_fills_is_cut_off_and_counted() {
        let mut r = Rig::new(cfg(1, ""));
        r.sync(0, &[("/w/a", 1, "1", None)], 1);
        let (tx, rx) = crossbeam::channel::bounded(3);
        r.core.watch(b"/w/".to_vec(), tx);
        r.on(published("/w/b", 2, "2", None));
        r.on(published("/w/c", 3, "3", None)); // the queue is now full (a, b, c)
        assert_eq!(r.core.status().watchers_cut, 0);
        r.on(published("/w/d", 4, "4", None)); // no room: cut off, never a silent gap
        assert_eq!(r.core.status().watchers_cut, 1);
        r.on(published("/w/e", 5, "5", None));
        let keys: Vec<Vec<u8>> = rx.try_iter().map(|c| c.key).collect();
        assert_eq!(keys, vec![b"/w/a".to_vec(), b"/w/b".to_vec(), b"/w/c".to_vec()]);
        assert!(rx.recv().is_err(), "the receiver ends after what it holds");
        // Initial entries that do not fit: cut off at once.
        let (tx, rx) = crossbeam::channel::bounded(2);
        r.core.watch(b"/w/".to_vec(), tx);
        assert_eq!(r.core.status().watchers_cut, 2);
        assert_eq!(rx.try_iter().count(), 2);
        assert!(rx.recv().is_err());
    }

    #[test]
    fn watchers_see_initial_local_live_and_resync_changes() {
        let mut r = Rig::new(cfg(1, ""));
        r.sync(0, &[("/w/a", 1, "1", None), ("/z", 2, "z", None)], 2);
        let (tx, rx) = crossbeam::channel::unbounded();
        r.core.watch(b"/w/".to_vec(), tx);
        r.on(Event::Set(set("/w/b", "2", 1)));
        r.on(published("/w/a", 3, "1b", None));
        r.on(published("/z", 4, "zz", None));
        r.on(published("HUGZ", 0, "", None)); // sequence backwards: re-sync
        r.sync(0, &[("/w/c", 1, "3", None)], 1);
        let got: Vec<(Vec<u8>, Option<Vec<u8>>, ChangeKind)> =
            rx.try_iter().map(|c| (c.key, c.value, c.kind)).collect();
        let k = |s: &str| s.as_bytes().to_vec();
        let v = |s: &str| Some(s.as_bytes().to_vec());
        assert_eq!(
            got,
            vec![
                (k("/w/a"), v("1"), ChangeKind::Initial),
                (k("/w/b"), v("2"), ChangeKind::Local),
                (k("/w/a"), v("1b"), ChangeKind::Live),
                (k("/w/c"), v("3"), ChangeKind::Resync),
                (k("/w/a"), None, ChangeKind::Resync),
                (k("/w/b"), None, ChangeKind::Resync),
                (k("/w/b"), v("2"), ChangeKind::Local),
            ]
        );
    }

    #[test]
    fn a_set_longer_than_the_servers_stated_limits_is_refused_at_once_and_never_sent() {
        let mut r = Rig::new(cfg(1, ""));
        // Made before the first snapshot: the limits are not known yet, so it waits for it.
        assert_eq!(sent(&r.on(Event::Set(set("/a-long-key", "v", 1)))), vec![b"/a-long-key".to_vec()]);
        r.on(Event::Link { server: 0, up: true });
        assert!(matches!(r.on(Event::Tick)[..], [Action::RequestSnapshot { server: 0, .. }]));
        let limits = Limits { max_key_bytes: 8, max_value_bytes: 4 };
        let mut end = KvMsg::new(KTHXBAI, 0, "");
        limits.stamp(&mut end);
        let a = r.on(Event::Snapshot(Ok(end)));
        assert!(sent(&a).is_empty(), "not re-sent to a server that would drop it: {a:?}");
        assert_eq!(r.core.ack_state(&uuid(1)), AckState::Refused);
        assert_eq!(r.core.get(b"/a-long-key"), None, "nor kept locally");
        // Live: a key or value over the limits is refused at once, never sent; one that fits is.
        assert!(sent(&r.on(Event::Set(set("/123456789", "v", 2)))).is_empty());
        assert!(sent(&r.on(Event::Set(set("/k", "12345", 3)))).is_empty());
        assert_eq!(sent(&r.on(Event::Set(set("/1234567", "1234", 4)))), vec![b"/1234567".to_vec()]);
        assert_eq!((r.core.ack_state(&uuid(2)), r.core.ack_state(&uuid(3))), (AckState::Refused, AckState::Refused));
        assert_eq!(r.core.ack_state(&uuid(4)), AckState::Pending);
        let st = r.core.status();
        assert_eq!((st.refused, st.unacked, st.limits), (3, 1, Some(limits)));
        assert!(sent(&r.tick_after_ms(300)).iter().all(|k| k == b"/1234567"), "refused sets are not re-sent");
        // A server that states no limits (another CHP implementation) leaves nothing to check.
        let mut r = Rig::live(cfg(1, ""));
        assert_eq!(r.core.status().limits, None);
        let long = "/k".repeat(2000);
        assert_eq!(sent(&r.on(Event::Set(set(&long, "v", 5)))), vec![long.into_bytes()]);
    }

    #[test]
    fn max_unacked_evicts_the_oldest_as_abandoned() {
        let mut r = Rig::live(ClientConfig { max_unacked: 2, ..cfg(1, "") });
        for n in 1..=3 {
            r.on(Event::Set(set(&format!("/k{n}"), "v", n)));
        }
        assert_eq!(r.core.ack_state(&uuid(1)), AckState::Abandoned);
        assert_eq!(r.core.ack_state(&uuid(3)), AckState::Pending);
        assert_eq!(r.core.status().unacked, 2);
    }

    /// The "not up" lines a rig's actions said.
    fn said(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Say(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    /// Server `i` of [`cfg`]: its publisher (P+1) and collector (P+2) endpoints.
    fn links_of(i: u64) -> (String, String) {
        let p = 6000 + 10 * i;
        (format!("tcp://127.0.0.1:{}", p + 1), format!("tcp://127.0.0.1:{}", p + 2))
    }

    fn not_up(endpoint: &str) -> NotUp {
        NotUp { endpoint: endpoint.into(), for_ns: 5_000 * MS, attempts: 51, cause: None }
    }

    /// The line for a link said alone: a collector's, or (with `clone-client`) a publisher's.
    fn alone(owner: &str, endpoint: &str) -> Vec<String> {
        vec![not_up(endpoint).line(owner)]
    }

    impl Rig {
        /// Nothing more is said about the links: not later, not when the client stops.
        fn says_nothing_more(&mut self) {
            assert!(said(&self.tick_after_ms(5000)).is_empty(), "said once");
            assert!(said(&self.on(Event::Closing)).is_empty(), "nothing left unsaid");
        }

        /// Feed a collector link not up; the lines said.
        fn collector_not_up(&mut self, collector: &str) -> Vec<String> {
            said(&self.on(Event::CollectorNotUp(not_up(collector))))
        }

        /// Feed server `server`'s publisher link not up; the lines said.
        fn publisher_not_up(&mut self, server: usize, publisher: &str) -> Vec<String> {
            said(&self.on(Event::PublisherNotUp { server, not_up: not_up(publisher) }))
        }
    }

    const SERVER0_NOT_UP: &str = "clone-client: server tcp://127.0.0.1:6000 not up after 5s (51 connection \
        attempts): nothing answers there (its publisher tcp://127.0.0.1:6001, its collector tcp://127.0.0.1:6002); \
        libzmq keeps trying";

    #[test]
    fn a_dead_server_is_said_not_up_once_naming_both_links() {
        let (publisher, collector) = links_of(0);
        // The collector is found not up first: held for the server's line, which names both.
        let mut r = Rig::new(cfg(2, ""));
        assert!(r.collector_not_up(&collector).is_empty(), "held");
        r.clock.advance_ms(300);
        assert_eq!(r.publisher_not_up(0, &publisher), [SERVER0_NOT_UP]);
        r.says_nothing_more();
        // The publisher is found not up first: the collector's later line is the server's too.
        let mut r = Rig::new(cfg(2, ""));
        assert_eq!(r.publisher_not_up(0, &publisher), [SERVER0_NOT_UP]);
        assert!(r.collector_not_up(&collector).is_empty());
        r.says_nothing_more();
    }

    #[test]
    fn a_link_whose_other_half_is_up_is_said_alone() {
        let (publisher, collector) = links_of(1);
        let collectors = "clone-client collectors";
        // The server's publisher link is up: its collector is said alone, at once.
        let mut r = Rig::new(cfg(2, ""));
        r.on(Event::Link { server: 1, up: true });
        assert_eq!(r.collector_not_up(&collector), alone(collectors, &collector));
        // Its collector link is up: its publisher is said alone.
        let mut r = Rig::new(cfg(2, ""));
        r.on(Event::CollectorUp { server: 1 });
        assert_eq!(r.publisher_not_up(1, &publisher), alone("clone-client", &publisher));
        // A collector held for its server's line whose publisher link then comes up: said alone
        // then, not later again.
        let mut r = Rig::new(cfg(2, ""));
        assert!(r.collector_not_up(&collector).is_empty());
        assert_eq!(said(&r.on(Event::Link { server: 1, up: true })), alone(collectors, &collector));
        r.says_nothing_more();
        // A collector held, then up before its server's line: the line names the publisher alone,
        // and the held collector is never said.
        let mut r = Rig::new(cfg(2, ""));
        r.collector_not_up(&collector);
        r.on(Event::CollectorUp { server: 1 });
        assert_eq!(r.publisher_not_up(1, &publisher), alone("clone-client", &publisher));
        r.says_nothing_more();
    }

    #[test]
    fn a_held_collector_is_said_alone_after_a_second_or_when_the_client_stops() {
        let (_, collector) = links_of(0);
        let line = alone("clone-client collectors", &collector);
        // Its server's publisher link neither comes up nor is found not up (it fails its
        // handshake instead): the collector is said alone HOLD_NOT_UP_NS after it was held.
        let mut r = Rig::new(cfg(1, ""));
        r.collector_not_up(&collector);
        assert!(said(&r.tick_after_ms(HOLD_NOT_UP_NS / MS - 1)).is_empty(), "held for a second");
        assert_eq!(said(&r.tick_after_ms(1)), line);
        r.says_nothing_more();
        // The client stops within the second: the held line is said on its way out.
        let mut r = Rig::new(cfg(1, ""));
        r.collector_not_up(&collector);
        assert_eq!(said(&r.on(Event::Closing)), line);
        // A collector of no configured server (cannot be, but is said rather than lost).
        let stray = not_up("tcp://127.0.0.1:7002");
        assert_eq!(
            said(&r.on(Event::CollectorNotUp(stray.clone()))),
            alone("clone-client collectors", &stray.endpoint)
        );
    }

    #[test]
    fn not_up_lines_carry_the_clients_name_and_are_quiet_with_its_links() {
        let (publisher, collector) = links_of(0);
        let mut r = Rig::new(ClientConfig { name: "store".into(), ..cfg(1, "") });
        let line = r.publisher_not_up(0, &publisher);
        assert_eq!(line, [SERVER0_NOT_UP.replacen("clone-client", "store", 1)]);
        let mut r = Rig::new(ClientConfig { log_links: false, ..cfg(1, "") });
        r.collector_not_up(&collector);
        assert!(said(&r.tick_after_ms(5000)).is_empty(), "log_links off: nothing said");
        assert!(r.publisher_not_up(0, &publisher).is_empty());
        assert!(said(&r.on(Event::Closing)).is_empty());
    }
}
