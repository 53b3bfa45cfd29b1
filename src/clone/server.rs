//! The clone server agent (Clone pattern model 6 + Binary Star).
//!
//! Snapshot ROUTER at P, PUB at P+1,
//! collector SUB at P+2, Binary Star heartbeats at P+3. This is the shell: it moves frames
//! between the sockets and [`ServerCore`] (the protocol: pending list, takeover, passive re-sync,
//! TTL expiry, HUGZ, durability), runs the update log, and reads the clock once per step (and
//! around a write to the data directory, whose length it tells the core). The log's fsync runs on
//! the syncer's thread ([`super::syncer`]) and a compaction's snapshot write, like a full snapshot
//! of the map (from a copy frozen in O(1)), on the compactor's ([`super::compactor`]), never on
//! this one. A passive's re-sync writes the active's snapshot to
//! the data directory entry by entry as it arrives, and the compactor puts it in place.

use std::time::Duration;

use super::bstar::{BStarError, State};
use super::compactor::{CompactorLink, Done, Job};
use super::kvmsg::{self, decode_request, recv_frames, KvMsg, FRAME_SLACK_BYTES, KTHXBAI, STATUS_REP};
use super::map::KvMap;
use super::persist::{PersistError, Record, Store};
use super::server_core::{Action, Event, ServerCore, SnapshotCut, SNAPSHOT_STALL_MS};
use super::syncer::{LogSync, SyncerLink};
use crate::agent::{Agent, AgentError, Step};
use crate::diag::{human_duration, human_ms};
use crate::security::{ClientKeys, ServerAccess, ZapCounters, ZapHandler};

pub use super::server_core::{
    Counters, PairConfig, ServerConfig, DEFAULT_HUGZ_INTERVAL_MS, INTERVAL_RANGE_MS, MAX_PROPS_BYTES,
};

/// Messages handled per socket per unit of work (then timers get a turn).
const BATCH_MSGS: usize = 4096;
/// How many times its largest limit an update's frame may be and still be read, so that an
/// update over a limit is counted and said by reason; libzmq drops a longer one (with the
/// connection that sent it) before the server sees it. A bound, not "any size": libzmq
/// allocates a frame's whole declared size as its header arrives.
const OVERSIZE_READ_FACTOR: usize = 4;

/// Largest frame read from a peer whose largest accepted part is `largest` bytes: up to
/// [`OVERSIZE_READ_FACTOR`] times it (at most the log's largest record, unless `largest` is
/// more), plus [`FRAME_SLACK_BYTES`].
fn update_frame_bound(largest: usize) -> usize {
    largest
        .saturating_mul(OVERSIZE_READ_FACTOR)
        .min(largest.max(super::persist::MAX_RECORD_BYTES))
        .saturating_add(FRAME_SLACK_BYTES)
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
    /// The log's syncer thread could not start.
    #[error(transparent)]
    Syncer(#[from] AgentError),
}

fn zerr(context: impl Into<String>) -> impl FnOnce(zmq::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Zmq { context, source }
}

/// A SUB of one half of a pair to its peer, as errors and link lines name it.
struct PeerLink<'a> {
    /// In errors: `state subscriber`, `peer subscriber`.
    what: &'a str,
    /// The watched link's name.
    link: &'a str,
    /// The peer's endpoint it connects to.
    endpoint: &'a str,
}

/// A SUB to the peer (its state publisher or its update publisher): everything subscribed,
/// messages up to `max_msg_bytes`, `rcvhwm_msgs` if given (libzmq's default if not), no linger,
/// the peer's keys (both halves share one pair), watched from before it connects (a peer already
/// up completes its handshake at once). The caller says what the watch reports.
fn peer_subscriber(
    ctx: &zmq::Context,
    peer: PeerLink<'_>,
    max_msg_bytes: i64,
    rcvhwm_msgs: Option<i32>,
    peer_keys: Option<&ClientKeys>,
) -> Result<(zmq::Socket, crate::link::LinkWatch), ServerError> {
    let PeerLink { what, link, endpoint } = peer;
    let mut sub = ctx.socket(zmq::SUB).map_err(zerr(format!("creating the {what}")))?;
    sub.set_subscribe(b"").map_err(zerr(format!("subscribing the {what}")))?;
    if let Some(hwm) = rcvhwm_msgs {
        sub.set_rcvhwm(hwm).map_err(zerr(format!("setting the {what}'s HWM")))?;
    }
    sub.set_maxmsgsize(max_msg_bytes).map_err(zerr(format!("setting the {what}'s max message size")))?;
    sub.set_linger(0).map_err(zerr("setting linger"))?;
    ClientKeys::apply_if(peer_keys, &sub).map_err(zerr(format!("setting the peer's keys on the {what}")))?;
    let watch = crate::link::LinkWatch::attach(ctx, &mut sub, link, std::slice::from_ref(&endpoint.to_string()))
        .map_err(zerr(format!("monitoring the {what}")))?
        .ok_or_else(|| ServerError::Config(format!("no endpoint to watch for the {what}")))?
        .keys_by(crate::link::KeyFlags::SameCurveKey);
    sub.connect(endpoint).map_err(zerr(format!("connecting the {what} to {endpoint}")))?;
    Ok((sub, watch))
}

/// The Binary Star sockets of one half of a pair.
struct Pair {
    statepub: zmq::Socket,
    statesub: zmq::Socket,
    /// The watch on `statesub`'s link to the peer's P+3: libzmq does not reconnect our
    /// connecting SUB after a protocol error (a frame over its 4 KiB limit), so without it one
    /// bad frame would silence the peer's heartbeats for good. A loss is said with its reason
    /// and counted (STATUS `state_link_*`), and the link connected again.
    state_links: crate::link::LinkWatch,
    peer_sub: zmq::Socket,
    /// The watch on `peer_sub`'s link: a sync starts only once our subscription is on its way;
    /// a loss is logged and counted, a link libzmq gave up on connected again.
    peer_links: crate::link::LinkWatch,
    peer_snapshot: String,
    /// The passive re-sync's snapshot request to the peer.
    sync: Option<zmq::Socket>,
}

/// The server agent: the shell around [`ServerCore`].
pub struct Server {
    cfg: ServerConfig,
    ctx: zmq::Context,
    /// ZAP handler of this server's context, when access is controlled
    /// (served in this agent's own loop).
    zap: Option<ZapHandler>,
    /// How this server connects to its peer when CURVE is on (the pair
    /// shares one server key pair).
    peer_keys: Option<ClientKeys>,
    snapshot: zmq::Socket,
    publisher: zmq::Socket,
    collector: zmq::Socket,
    pair: Option<Pair>,
    core: ServerCore,
    store: Option<Store>,
    /// The thread that fsyncs the log (with a data directory).
    syncer: Option<SyncerLink>,
    /// The thread that writes a compaction's snapshot (with a data directory).
    compactor: Option<CompactorLink>,
    /// Wall clock (ms since the epoch) of this step, for the log's TTL deadlines.
    wall_ms: u64,
    /// Appends up to this token are not written ([`Action::SkipAppends`]).
    skip_appends_through: u64,
    actions: Vec<Action>,
    frames: Vec<zmq::Message>,
}

fn log(verbose: bool, msg: std::fmt::Arguments) {
    if verbose {
        crate::diag!("clone-server: {msg}");
    }
}

impl Server {
    /// Bind the sockets, recover the data directory, and start in PRIMARY/BACKUP (pair) or active.
    pub fn new(cfg: ServerConfig) -> Result<Server, ServerError> {
        Server::new_secured(cfg, ServerAccess::default())
    }

    /// [`Server::new`] under an access policy (`docs/SECURITY.md`): every
    /// port a client or the peer reaches (snapshot, publisher, collector,
    /// Binary Star state) asks the ZAP handler about each new peer, and with
    /// CURVE demands the server's key. Both halves of a pair use the same key
    /// pair, so clients trust one public key and each half trusts its peer.
    pub fn new_secured(cfg: ServerConfig, access: ServerAccess) -> Result<Server, ServerError> {
        Server::with_log_sync(cfg, access, super::syncer::sync_data())
    }

    /// [`Server::new_secured`] whose syncer makes the log durable with `sync` (a server uses
    /// [`super::syncer::sync_data`]; a test, a sync that takes as long as it says).
    pub fn with_log_sync(cfg: ServerConfig, mut access: ServerAccess, sync: LogSync) -> Result<Server, ServerError> {
        cfg.check().map_err(ServerError::Config)?;
        let ctx = zmq::Context::new();
        let peer_keys = access.curve.as_mut().map(|(pair, allowed)| {
            if !allowed.is_empty() {
                allowed.insert(pair.public);
            }
            ClientKeys { client: pair.clone(), server_public: pair.public }
        });
        let mut zap = Some(
            ZapHandler::for_access(&ctx, "clone-server", &access).map_err(|e| ServerError::Config(e.to_string()))?,
        );
        // Each server socket gets the policy and is watched for peers libzmq refuses in their
        // handshake (before ZAP is asked), counted and said with ZAP's refusals.
        let mut secure = |socket: &mut zmq::Socket| {
            access.secure(&ctx, socket, zap.as_mut()).map_err(|e| ServerError::Config(e.to_string()))
        };
        let host = cfg.bind_host.clone();
        let p = cfg.port;
        if p > u16::MAX - 3 {
            return Err(ServerError::Config(format!("port {p} leaves no room for P+1..P+3")));
        }
        // Largest frame accepted from the network (libzmq drops the connection of a peer that
        // sends more, unseen: docs/REFUSALS.md): a few times an update's biggest part, so an
        // update over a limit is counted; a request's subtree is a key (longer than any key the
        // server holds, it is answered with an empty snapshot), plus slack.
        let update_frame_bytes = cfg.max_value_bytes.max(cfg.max_key_bytes).max(MAX_PROPS_BYTES);
        let update_max = i64::try_from(update_frame_bound(update_frame_bytes)).unwrap_or(i64::MAX);
        let request_max = i64::try_from(cfg.max_key_bytes.saturating_add(FRAME_SLACK_BYTES)).unwrap_or(i64::MAX);
        let mut snapshot = ctx.socket(zmq::ROUTER).map_err(zerr("creating the snapshot socket"))?;
        snapshot.set_maxmsgsize(request_max).map_err(zerr("setting snapshot max message size"))?;
        // Bounded: a client that does not read its snapshot holds at most this many messages
        // here; at the bound a send waits SNAPSHOT_STALL_MS, then the snapshot is abandoned.
        snapshot.set_sndhwm(cfg.snapshot_hwm_msgs).map_err(zerr("setting snapshot HWM"))?;
        snapshot.set_router_mandatory(true).map_err(zerr("setting ROUTER_MANDATORY"))?;
        snapshot.set_sndtimeo(SNAPSHOT_STALL_MS).map_err(zerr("setting the snapshot send timeout"))?;
        snapshot.set_linger(0).map_err(zerr("setting linger"))?;
        secure(&mut snapshot)?;
        let ep = format!("tcp://{host}:{p}");
        crate::zmqx::bind_resolved(&snapshot, &ep)
            .map_err(|e| zerr(crate::zmqx::binding(format_args!("snapshot {ep}"), e))(e))?;
        let mut publisher = ctx.socket(zmq::PUB).map_err(zerr("creating the publisher"))?;
        publisher.set_sndhwm(cfg.pub_hwm_msgs).map_err(zerr("setting publisher HWM"))?;
        publisher.set_linger(100).map_err(zerr("setting linger"))?;
        crate::zmqx::bound_subscriptions(&publisher).map_err(zerr("setting publisher max message size"))?;
        secure(&mut publisher)?;
        let ep = format!("tcp://{host}:{}", p + 1);
        crate::zmqx::bind_resolved(&publisher, &ep)
            .map_err(|e| zerr(crate::zmqx::binding(format_args!("publisher {ep}"), e))(e))?;
        let mut collector = ctx.socket(zmq::SUB).map_err(zerr("creating the collector"))?;
        collector.set_rcvhwm(cfg.collector_hwm_msgs).map_err(zerr("setting collector HWM"))?;
        collector.set_maxmsgsize(update_max).map_err(zerr("setting collector max message size"))?;
        collector.set_subscribe(b"").map_err(zerr("subscribing the collector"))?;
        collector.set_linger(0).map_err(zerr("setting linger"))?;
        secure(&mut collector)?;
        let ep = format!("tcp://{host}:{}", p + 2);
        crate::zmqx::bind_resolved(&collector, &ep)
            .map_err(|e| zerr(crate::zmqx::binding(format_args!("collector {ep}"), e))(e))?;
        let now = crate::clock::monotonic_ns();
        let pair = match &cfg.pair {
            None => None,
            Some(pc) => {
                let mut statepub = ctx.socket(zmq::PUB).map_err(zerr("creating the state publisher"))?;
                statepub.set_linger(0).map_err(zerr("setting linger"))?;
                crate::zmqx::bound_subscriptions(&statepub)
                    .map_err(zerr("setting the state publisher's max message size"))?;
                secure(&mut statepub)?;
                crate::zmqx::bind_resolved(&statepub, &pc.state_bind)
                    .map_err(|e| zerr(crate::zmqx::binding(format_args!("state {}", pc.state_bind), e))(e))?;
                let (statesub, state_links) = peer_subscriber(
                    &ctx,
                    PeerLink { what: "state subscriber", link: "clone-server peer state", endpoint: &pc.peer_state },
                    FRAME_SLACK_BYTES as i64,
                    None,
                    peer_keys.as_ref(),
                )?;
                // A peer that goes away or is not up is said by the peer link's lines.
                let state_links = state_links.saying_only_what_libzmq_gives_up();
                let [peer_snapshot, peer_pub, _] = super::endpoints(&pc.peer).map_err(ServerError::Config)?;
                let (peer_sub, peer_links) = peer_subscriber(
                    &ctx,
                    PeerLink { what: "peer subscriber", link: "clone-server peer", endpoint: &peer_pub },
                    update_max,
                    Some(cfg.collector_hwm_msgs),
                    peer_keys.as_ref(),
                )?;
                let peer_links = peer_links.following_updowns();
                Some(Pair { statepub, statesub, state_links, peer_sub, peer_links, peer_snapshot, sync: None })
            }
        };
        let mut server = Server {
            core: ServerCore::new(&cfg, cfg.data_dir.is_some(), now),
            ctx,
            zap,
            peer_keys,
            snapshot,
            publisher,
            collector,
            pair,
            store: None,
            syncer: None,
            compactor: None,
            wall_ms: 0,
            skip_appends_through: 0,
            actions: Vec::new(),
            frames: Vec::new(),
            cfg,
        };
        if let Some(dir) = server.cfg.data_dir.clone() {
            let (store, rec) = Store::open(&dir)?;
            server.core.recover(rec.records, rec.sequence, crate::clock::realtime_ns() / 1_000_000, now);
            for e in &rec.tail_errors {
                crate::diag!("clone-server: data dir: stopped reading at {e}; everything before it was recovered");
            }
            if let Some(said) = &rec.resync_settled {
                crate::diag!("clone-server: data dir: {said}");
            }
            if let Some((tmp, bytes)) = &rec.temp_removed {
                crate::diag!(
                    "clone-server: data dir: removed {} ({bytes} bytes): a snapshot a stop or a crash left \
                     unfinished; the files it was to replace were recovered",
                    tmp.display()
                );
            }
            for copy in &rec.corrupt_copies {
                crate::diag!(
                    "clone-server: data dir: the damaged file was copied to {} before it was cut to what was recovered",
                    copy.display()
                );
            }
            log(
                server.cfg.verbose,
                format_args!(
                    "recovered {} keys at sequence {} from {}",
                    server.core.map().len(),
                    server.core.sequence(),
                    dir.display()
                ),
            );
            server.syncer = Some(SyncerLink::start(dir.join("log"), store.log_handle()?, sync)?);
            server.compactor = Some(CompactorLink::start(dir.clone())?);
            server.store = Some(store);
        }
        Ok(server)
    }

    /// Say `clone-server: ready on HOST:P (snapshot), …` (when verbose): its sockets are bound
    /// and its data directory recovered. Said by the caller once its run is under way, so a
    /// person (or a test) who reads it and presses Ctrl-C gets the server's clean stop.
    pub fn say_ready(&self) {
        let (host, p) = (&self.cfg.bind_host, self.cfg.port);
        log(
            self.cfg.verbose,
            format_args!(
                "ready on {host}:{p} (snapshot), :{} (publisher), :{} (collector), state {}",
                p + 1,
                p + 2,
                self.core.state_name()
            ),
        );
    }

    /// The ZAP handler's counts (accepted, refused by reason), when access is controlled.
    pub fn access_counters(&self) -> Option<std::sync::Arc<ZapCounters>> {
        self.zap.as_ref().map(|z| z.counters())
    }

    /// Current sequence (highest published or replicated).
    pub fn sequence(&self) -> u64 {
        self.core.sequence()
    }

    /// The map (for tests and benchmarks driving the agent by hand).
    pub fn map(&self) -> &KvMap {
        self.core.map()
    }

    fn zmq_err(&self, context: &'static str, source: zmq::Error) -> AgentError {
        AgentError::Zmq { role: "clone-server".into(), context, source }
    }

    /// Hand `event` to the core and carry out what it asks, in order.
    fn step(&mut self, event: Event, now_ns: u64) -> Result<(), AgentError> {
        let mut actions = std::mem::take(&mut self.actions);
        let ran = self.handle(event, now_ns, &mut actions);
        actions.clear();
        self.actions = actions; // reused: no allocation per message
        ran
    }

    /// Hand `event` to the core and carry out `actions`, what it asks. After a fatal error they
    /// are the lines that led to it ([`ServerCore::on_event`]), then the flush and publishes of
    /// what earlier steps logged (their updates are acknowledged): carried out before the error
    /// is returned, so before the sockets close. Before, the lines were dropped unsaid: a
    /// passive that found itself paused, then passive with its peer, stopped on `binary star:
    /// peer is passive while we are passive` without the pause that explains it.
    fn handle(&mut self, event: Event, now_ns: u64, actions: &mut Vec<Action>) -> Result<(), AgentError> {
        let r = self.core.on_event(event, now_ns, actions);
        self.run(actions, now_ns)?;
        r.map_err(fatal)
    }

    /// Carry out `actions`; a log result is fed back to the core at once, and what it asks
    /// then is carried out before the rest (the core relies on that order).
    fn run(&mut self, actions: &mut Vec<Action>, now_ns: u64) -> Result<(), AgentError> {
        for a in actions.drain(..) {
            let reply = match a {
                Action::Publish { msg, apply_at_ns, hugz } => {
                    // A failure is told to the core, which counts it and says what is due.
                    let failed = msg.send(&self.publisher, None).err().map(|e| Event::PublishFailed {
                        sequence: msg.sequence,
                        hugz,
                        error: e.to_string(),
                    });
                    if let Some(at) = apply_at_ns {
                        self.core.published(msg, at);
                    }
                    failed
                }
                Action::Heartbeat(s) => {
                    if let Some(p) = &self.pair {
                        let _ = p.statepub.send(s.to_wire(), zmq::DONTWAIT);
                    }
                    None
                }
                Action::Reply { identity, mut text } => {
                    if let Some(p) = &self.pair {
                        link_status(&mut text, "state_link", &p.state_links);
                        link_status(&mut text, "peer_link", &p.peer_links);
                    }
                    if let Some(z) = &self.zap {
                        text.push_str(&z.counters().status_lines());
                    }
                    let _ = self.snapshot.send(&identity[..], zmq::SNDMORE);
                    let _ = self.snapshot.send(STATUS_REP, zmq::SNDMORE);
                    let _ = self.snapshot.send(text.as_bytes(), 0);
                    None
                }
                Action::SendSnapshot { identity, subtree } => {
                    Some(match self.serve_snapshot(&identity, &subtree, now_ns) {
                        Ok(()) => Event::SnapshotSent,
                        Err(cut) => Event::SnapshotCut(cut),
                    })
                }
                Action::RequestPeerSnapshot => {
                    let opened = self.open_peer_sync()?;
                    if let (true, Some(store)) = (opened, self.store.as_mut()) {
                        store.begin_peer_snapshot();
                    }
                    (!opened).then_some(Event::PeerSyncFailed)
                }
                Action::StreamPeerEntry { msg, expires_in_ms } => {
                    let rec = Record { msg, expires_at_unix_ms: expires_in_ms.map(|ms| self.wall_ms + ms) };
                    if let Some(store) = self.store.as_mut() {
                        store.peer_snapshot_entry(&rec);
                    }
                    None
                }
                Action::PeerSnapshotEnd { sequence, keep_aside } => Some(self.end_peer_snapshot(sequence, keep_aside)?),
                Action::EndPeerSnapshot => {
                    if let Some(p) = self.pair.as_mut() {
                        p.sync = None;
                    }
                    if let Some(store) = self.store.as_mut() {
                        store.abandon_peer_snapshot();
                    }
                    None
                }
                Action::SkipAppends { through } => {
                    self.skip_appends_through = through;
                    None
                }
                Action::Append { token, .. } if token <= self.skip_appends_through => None,
                Action::Append { token, msg, expires_in_ms } => {
                    let rec = Record { msg, expires_at_unix_ms: expires_in_ms.map(|ms| self.wall_ms + ms) };
                    let r = self.store.as_mut().map(|s| s.append(&rec));
                    self.log_result(r, Some(token))
                }
                Action::FlushLog => {
                    let r = self.on_disk(|s| s.flush());
                    self.log_result(r, None).or(Some(Event::LogFlushed))
                }
                Action::SyncLog => {
                    let unsynced = self.store.as_mut().is_some_and(|s| s.take_unsynced());
                    match self.syncer.as_mut() {
                        // Asked of the syncer; its answer is fed to the core in a later step.
                        Some(syncer) if unsynced => {
                            syncer.ask()?;
                            None
                        }
                        _ => Some(Event::NothingToSync),
                    }
                }
                Action::KeepAside => self.keep_aside()?,
                Action::WriteSnapshot => self.start_full_snapshot(now_ns)?,
                Action::Compact => self.start_compaction()?,
                Action::Log(text) => {
                    crate::diag!("clone-server: {text}");
                    None
                }
            };
            if let Some(ev) = reply {
                self.handle(ev, now_ns, &mut Vec::new())?;
            }
        }
        Ok(())
    }

    /// A failed append or flush: roll the log back (dropping every record not yet flushed) and
    /// tell the core. `None` when it went well.
    fn log_result(&mut self, r: Option<Result<(), PersistError>>, token: Option<u64>) -> Option<Event> {
        let Some(Err(e)) = r else { return None };
        if let Some(Err(e)) = self.store.as_mut().map(|s| s.rollback()) {
            crate::diag!("clone-server: {e}");
        }
        Some(Event::LogFailed { token, error: e.to_string() })
    }

    /// Open the passive re-sync's snapshot request to the peer; false when it could not connect.
    fn open_peer_sync(&mut self) -> Result<bool, AgentError> {
        let Some(p) = self.pair.as_mut() else { return Ok(false) };
        let dealer = self.ctx.socket(zmq::DEALER).map_err(|e| AgentError::Zmq {
            role: "clone-server".into(),
            context: "creating the sync socket",
            source: e,
        })?;
        let _ = dealer.set_linger(0);
        let _ = dealer.set_rcvhwm(0);
        if ClientKeys::apply_if(self.peer_keys.as_ref(), &dealer).is_err() {
            return Ok(false);
        }
        if dealer.connect(&p.peer_snapshot).is_err() {
            return Ok(false);
        }
        let _ = dealer.send(kvmsg::ICANHAZ, zmq::SNDMORE | zmq::DONTWAIT);
        let _ = dealer.send(&b""[..], zmq::DONTWAIT);
        p.sync = Some(dealer);
        Ok(true)
    }

    /// Run `f` on the store, timed: the time this thread spent in the data directory is told to
    /// the core ([`ServerCore::disk_waited`]), so a slow disk is not taken for a pause.
    fn on_disk<T>(&mut self, f: impl FnOnce(&mut Store) -> T) -> Option<T> {
        let store = self.store.as_mut()?;
        let t0 = crate::clock::monotonic_ns();
        let r = f(store);
        self.core.disk_waited(crate::clock::monotonic_ns().saturating_sub(t0));
        Some(r)
    }

    /// Feed the syncer's answers to the core.
    fn take_syncs(&mut self, now_ns: u64) -> Result<usize, AgentError> {
        let mut n = 0;
        while let Some(s) = self.syncer.as_mut().map(|l| l.answer()).transpose()?.flatten() {
            if s.error.is_some() {
                if let Some(store) = self.store.as_mut() {
                    store.mark_unsynced();
                }
            }
            self.step(Event::LogSynced { took_ns: s.took_ns, error: s.error }, now_ns)?;
            n += 1;
        }
        Ok(n)
    }

    /// Point the syncer (if any) at `handle`, the log that took the old one's place.
    fn sync_new_log(&mut self, handle: std::fs::File) -> Result<(), AgentError> {
        match self.syncer.as_mut() {
            Some(syncer) => syncer.follow(handle),
            None => Ok(()),
        }
    }

    /// [`Action::PeerSnapshotEnd`]: complete the re-sync's file and restart the log after it
    /// (timed like [`Server::on_disk`]; a rename and a new file, whatever the map's size), and
    /// point the syncer at the new log; or say why there is no such file.
    fn end_peer_snapshot(&mut self, sequence: u64, keep_aside: bool) -> Result<Event, AgentError> {
        let ended = self.on_disk(|s| s.end_peer_snapshot(sequence, keep_aside));
        Ok(match ended {
            None => Event::PeerSnapshotUnwritten { error: "no data directory".into() },
            Some(Err(error)) => Event::PeerSnapshotUnwritten { error },
            Some(Ok(handle)) => {
                self.sync_new_log(handle)?;
                Event::PeerSnapshotWritten
            }
        })
    }

    /// [`Action::Compact`]: move the log aside here (timed like [`Server::on_disk`]; a rename and
    /// a new file, whatever the map's size), point the syncer at the new log, and ask the
    /// compactor to fold the old segment into the snapshot; or, with a re-sync's snapshot
    /// waiting, ask it to put that in place (the log flushed first). Its answer comes in a later
    /// step ([`Server::take_compactions`]). `Some` when it could not start.
    fn start_compaction(&mut self) -> Result<Option<Event>, AgentError> {
        let failed = |e: PersistError| Ok(Some(Event::CompactionDone { took_ns: 0, error: Some(e.to_string()) }));
        if let Some(keep_aside) = self.store.as_ref().and_then(|s| s.switch_pending()) {
            if let Some(Err(e)) = self.on_disk(|s| s.flush()) {
                return failed(e);
            }
            return match self.compactor.as_mut() {
                Some(c) => c.ask(Job::Switch { keep_aside }).map(|()| None),
                None => Ok(Some(Event::CompactionDone { took_ns: 0, error: Some("no compactor".into()) })),
            };
        }
        match self.on_disk(|s| s.rotate()) {
            None => return Ok(Some(Event::CompactionDone { took_ns: 0, error: None })),
            Some(Err(e)) => return failed(e),
            Some(Ok(None)) => {} // an earlier segment is folded first
            Some(Ok(Some(handle))) => self.sync_new_log(handle)?,
        }
        match self.compactor.as_mut() {
            Some(c) => c.ask(Job::Compact { wall_ms: self.wall_ms }).map(|()| None),
            None => Ok(Some(Event::CompactionDone { took_ns: 0, error: None })),
        }
    }

    /// [`Action::WriteSnapshot`]: freeze the map (an O(1) copy sharing its nodes,
    /// [`KvMap::freeze`]), hold the appends from here on ([`Store::begin_full_snapshot`]), and ask
    /// the compactor to write the frozen copy; its answer comes in a later step
    /// ([`Server::end_full_snapshot`]). Before, the map was written here: 0.6-1.3 s at 1M keys of
    /// 100-byte values without a HUGZ, a heartbeat, a snapshot or a STATUS served. `Some` when it
    /// could not start.
    fn start_full_snapshot(&mut self, now_ns: u64) -> Result<Option<Event>, AgentError> {
        let failed = |error: String| Ok(Some(Event::SnapshotFailed { error }));
        match self.on_disk(|s| s.begin_full_snapshot()) {
            None => return failed("no data directory".into()),
            Some(Err(e)) => return failed(e.to_string()),
            Some(Ok(())) => {}
        }
        let job = Job::WriteMap {
            map: self.core.map().freeze(),
            sequence: self.core.sequence(),
            now_ns,
            wall_ms: self.wall_ms,
        };
        match self.compactor.as_mut() {
            Some(c) => c.ask(job).map(|()| None),
            None => {
                if let Some(store) = self.store.as_mut() {
                    store.abandon_full_snapshot();
                }
                failed("no compactor".into())
            }
        }
    }

    /// The compactor wrote the frozen map ([`Server::start_full_snapshot`]): move the log aside
    /// and start a fresh one with the appends held meanwhile (timed like [`Server::on_disk`]; a
    /// rename, a new file and the held records, whatever the map's size), point the syncer at
    /// it, and tell the core (which has the snapshot put in place next, off this thread).
    fn end_full_snapshot(&mut self, keys: u64, took_ns: u64) -> Result<Event, AgentError> {
        Ok(match self.on_disk(|s| s.end_full_snapshot()) {
            None => Event::SnapshotFailed { error: "no data directory".into() },
            Some(Err(e)) => Event::SnapshotFailed { error: e.to_string() },
            Some(Ok((handle, lost))) => {
                self.sync_new_log(handle)?;
                log(
                    self.cfg.verbose,
                    format_args!(
                        "snapshot of the map: {keys} keys written in {}, off the serving thread",
                        human_duration(took_ns)
                    ),
                );
                Event::SnapshotWritten { lost: lost.map(|e| e.to_string()) }
            }
        })
    }

    /// [`Action::KeepAside`]: flush the log here, then ask the compactor for the copies (its
    /// answer comes in a later step, [`Server::take_compactions`]). `Some` when it could not ask.
    fn keep_aside(&mut self) -> Result<Option<Event>, AgentError> {
        if let Some(Err(e)) = self.on_disk(|s| s.flush()) {
            self.say_kept_aside(Err(e.to_string()));
            return Ok(Some(Event::KeptAside));
        }
        match self.compactor.as_mut() {
            Some(c) => c.ask(Job::KeepAside).map(|()| None),
            None => Ok(Some(Event::KeptAside)),
        }
    }

    /// Say where the files a re-sync replaces were kept aside, or why they could not be.
    fn say_kept_aside(&self, copies: Result<Vec<std::path::PathBuf>, String>) {
        let dir = self.cfg.data_dir.clone().unwrap_or_default();
        let dir = dir.display();
        match copies {
            Ok(copies) if copies.is_empty() => {}
            Ok(copies) => {
                let copies: Vec<String> = copies.iter().map(|c| c.display().to_string()).collect();
                crate::diag!(
                    "clone-server: data dir: {dir}: kept aside as {} before the active's snapshot replaces it",
                    copies.join(" and ")
                );
            }
            Err(e) => crate::diag!(
                "clone-server: data dir: {dir}: could not keep its files aside ({e}); the active's snapshot \
                 replaces them"
            ),
        }
    }

    /// Feed the compactor's answers to the core.
    fn take_compactions(&mut self, now_ns: u64) -> Result<usize, AgentError> {
        let mut n = 0;
        while let Some(c) = self.compactor.as_mut().map(|l| l.answer()).transpose()?.flatten() {
            n += 1;
            let error = match c.result {
                Ok(Done::KeptAside(copies)) => {
                    self.say_kept_aside(copies);
                    self.step(Event::KeptAside, now_ns)?;
                    continue;
                }
                Ok(Done::Compacted(done)) => {
                    if let Some(store) = self.store.as_mut() {
                        store.compacted();
                    }
                    if let Some(d) = done {
                        log(
                            self.cfg.verbose,
                            format_args!(
                                "compacted: snapshot of {} keys at sequence {} written in {}, off the serving \
                                 thread",
                                d.keys,
                                d.sequence,
                                human_duration(c.took_ns)
                            ),
                        );
                    }
                    None
                }
                Ok(Done::MapWritten(keys)) => {
                    let ev = self.end_full_snapshot(keys, c.took_ns)?;
                    self.step(ev, now_ns)?;
                    continue;
                }
                Err(error) if self.store.as_ref().is_some_and(|s| s.full_pending()) => {
                    // The map's snapshot (a compaction is never in flight with it).
                    if let Some(store) = self.store.as_mut() {
                        store.abandon_full_snapshot();
                    }
                    self.step(Event::SnapshotFailed { error }, now_ns)?;
                    continue;
                }
                Ok(Done::Switched(done)) => {
                    if let Some(store) = self.store.as_mut() {
                        store.switched();
                    }
                    self.say_kept_aside(done.copies);
                    log(
                        self.cfg.verbose,
                        format_args!(
                            "re-sync: the active's snapshot put in place in {}, off the serving thread",
                            human_duration(c.took_ns)
                        ),
                    );
                    None
                }
                Err(error) => Some(error),
            };
            self.step(Event::CompactionDone { took_ns: c.took_ns, error }, now_ns)?;
        }
        Ok(n)
    }

    /// Send the snapshot of `subtree` and KTHXBAI; why not all of it went out, if it did not.
    fn serve_snapshot(&mut self, identity: &[u8], subtree: &[u8], now_ns: u64) -> Result<(), SnapshotCut> {
        let (map, mut bstar) = self.core.snapshot_view();
        for (i, (k, e)) in map.subtree(subtree).enumerate() {
            // A large snapshot takes a while: keep the Binary Star heartbeat going meanwhile so
            // the peer does not take us for dead.
            if i % 65_536 == 65_535 {
                if let (Some(b), Some(p)) = (bstar.as_mut(), self.pair.as_ref()) {
                    if let Some(st) = b.heartbeat_due(crate::clock::monotonic_ns()) {
                        let _ = p.statepub.send(st.to_wire(), zmq::DONTWAIT);
                    }
                }
            }
            if e.expires_at_ns.is_none() && e.props.is_empty() {
                send_entry_plain(&self.snapshot, identity, k, e).map_err(snapshot_cut)?;
            } else {
                KvMap::to_msg(k, e, now_ns).send(&self.snapshot, Some(identity)).map_err(send_cut)?;
            }
        }
        let mut end = KvMsg::new(KTHXBAI, self.core.sequence(), subtree.to_vec());
        // Our limits, so that mdsub's clients refuse an update we would drop at once.
        self.core.limits().stamp(&mut end);
        // And how often we say HUGZ, so that they can tell us quiet from us dead.
        kvmsg::stamp_hugz_interval(&mut end, self.core.hugz_interval_ms());
        end.send(&self.snapshot, Some(identity)).map_err(send_cut)
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
                self.step(Event::Request { identity: Vec::new(), request: Err(()) }, now_ns)?;
                continue;
            }
            let identity = self.frames[0].to_vec();
            let request = {
                let args: Vec<&[u8]> = self.frames[1..count].iter().map(|m| &m[..]).collect();
                decode_request(&args).map_err(|_| ())
            };
            self.step(Event::Request { identity, request }, now_ns)?;
        }
        Ok(n)
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
            let Some(m) = self.recv_kv(0)? else { break };
            self.step(Event::Update(m), now_ns)?;
            n += 1;
        }
        self.step(Event::Flush, now_ns)?;
        Ok(n)
    }

    fn drain_peer(&mut self, now_ns: u64) -> Result<usize, AgentError> {
        let mut n = 0;
        // Heartbeats, after their link's news (a link libzmq dropped is connected again).
        if let Some(p) = self.pair.as_mut() {
            p.state_links.service(&p.statesub);
        }
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
            self.step(Event::PeerState(State::from_wire(&frame)), now_ns)?;
        }
        // Updates published by the peer.
        while n < BATCH_MSGS {
            let Some(m) = self.recv_kv(1)? else { break };
            n += 1;
            self.step(Event::Replicated(m), now_ns)?;
        }
        n += self.drive_sync(now_ns)?;
        Ok(n)
    }

    /// Passive and not yet in step with the active server: feed the peer's snapshot to the core.
    fn drive_sync(&mut self, now_ns: u64) -> Result<usize, AgentError> {
        let mut n = 0;
        let mut links = Vec::new();
        if let Some(p) = self.pair.as_mut() {
            p.peer_links.service(&p.peer_sub);
            p.peer_links.take_updowns(&mut links);
        }
        for up in links {
            self.step(Event::PeerLink(up), now_ns)?;
        }
        while n < BATCH_MSGS * 4 && self.core.peer_syncing() {
            let Some(dealer) = self.pair.as_ref().and_then(|p| p.sync.as_ref()) else { break };
            let count = match recv_frames(dealer, &mut self.frames, zmq::DONTWAIT) {
                Ok(Some(c)) => c,
                _ => break,
            };
            n += 1;
            let m = KvMsg::decode_messages(&self.frames[..count.min(kvmsg::MAX_FRAMES)]).map_err(|_| ());
            self.step(Event::PeerSnapshot(m), now_ns)?;
        }
        self.step(Event::PeerSyncCheck, now_ns)?;
        Ok(n)
    }

    /// The compaction rule: rewrite the snapshot once the log holds twice the map (at least
    /// 100 000 records), so recovery reads little more than the map. The core writes it, or
    /// waits out the back-off after a failed one.
    fn compact_if_large(&mut self, now_ns: u64) -> Result<(), AgentError> {
        let map_len = self.core.map().len() as u64;
        if self.store.as_ref().is_some_and(|s| s.log_records() > (2 * map_len).max(100_000)) {
            self.step(Event::LogLarge, now_ns)?;
        }
        Ok(())
    }
}

/// Append a watched link's counters to a STATUS reply as `NAME=STATE`, `NAME_connects=N`,
/// `NAME_reconnects=N`, `NAME_reestablished=N` and `NAME_lost_REASON=N` per reason.
fn link_status(text: &mut String, name: &str, watch: &crate::link::LinkWatch) {
    use std::fmt::Write;
    for l in watch.board().snapshot() {
        let _ = write!(
            text,
            "{name}={}\n{name}_connects={}\n{name}_reconnects={}\n{name}_reestablished={}\n",
            l.state, l.connects, l.reconnects, l.reestablished
        );
        for (reason, n) in &l.lost {
            let _ = writeln!(text, "{name}_lost_{reason}={n}");
        }
    }
}

fn fatal(e: BStarError) -> AgentError {
    AgentError::Fatal {
        role: "clone-server".into(),
        // The command line adds that the server stopped.
        message: format!("binary star: {e}"),
    }
}

/// Why a snapshot send failed, from the snapshot ROUTER's error: with ROUTER_MANDATORY an
/// identity with no connection is EHOSTUNREACH (the client left), and a queue that stayed at its
/// HWM for the send timeout is EAGAIN.
fn snapshot_cut(e: zmq::Error) -> SnapshotCut {
    match e {
        zmq::Error::EHOSTUNREACH => SnapshotCut::ClientGone,
        zmq::Error::EAGAIN => SnapshotCut::QueueFull,
        e => SnapshotCut::Failed(format!("zmq send: {e}")),
    }
}

/// [`snapshot_cut`] for a kvmsg send (whose properties may also fail to encode).
fn send_cut(e: kvmsg::SendError) -> SnapshotCut {
    match e {
        kvmsg::SendError::Zmq(e) => snapshot_cut(e),
        e => SnapshotCut::Failed(e.to_string()),
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
        let now = crate::clock::monotonic_ns();
        // The wall clock: the log's TTL deadlines, and peers' absolute `ttl`s.
        self.wall_ms = crate::clock::realtime_ns() / 1_000_000;
        self.core.set_wall_ms(self.wall_ms);
        // Who may connect is settled before anything they send is read.
        let mut n = match self.zap.as_mut() {
            Some(z) => z.serve()?,
            None => 0,
        };
        // Peer heartbeats first: a client vote must be judged on the peer's latest news.
        n += self.drain_peer(now)?;
        n += self.drain_snapshot(now)?;
        n += self.drain_collector(now)?;
        n += self.take_syncs(now)?;
        n += self.take_compactions(now)?;
        let expired = self.core.counters().expired;
        self.step(Event::Tick, now)?;
        n += (self.core.counters().expired - expired) as usize;
        self.compact_if_large(now)?;
        self.step(Event::Flush, now)?;
        Ok(Step::Worked(n))
    }

    /// Wait on every socket that can bring work, for as long as the runner's idle strategy says
    /// (to the microsecond, [`crate::zmqx::wait_any`]).
    fn idle_wait(&mut self, timeout: Duration) {
        let zap = self.zap.iter().flat_map(|z| z.sockets());
        let pair = self.pair.iter().flat_map(|p| {
            [&p.statesub, p.state_links.socket(), &p.peer_sub, p.peer_links.socket()].into_iter().chain(&p.sync)
        });
        let sockets = [&self.snapshot, &self.collector].into_iter().chain(zap).chain(pair);
        let _ = crate::zmqx::wait_any(sockets, zmq::POLLIN, timeout);
    }

    fn on_close(&mut self) {
        let now = crate::clock::monotonic_ns();
        if let Err(e) = self.step(Event::Flush, now) {
            crate::diag!("clone-server: {e}");
        }
        // The sync in flight ends first (a slow disk holds the stop that long), then the last
        // one runs here: nothing else is left to serve.
        if let Some(last) = self.syncer.as_mut().and_then(|l| l.close()) {
            if let Err(e) = self.step(Event::LogSynced { took_ns: last.took_ns, error: last.error }, now) {
                crate::diag!("clone-server: {e}");
            }
        }
        // A compaction in flight is finished (a start would finish it otherwise). A full snapshot
        // of the map that was written is ended here (the log moved aside, the updates held since
        // its freeze written after it): a start puts it in place with them.
        if let Some(c) = self.compactor.as_mut().and_then(|l| l.close()) {
            match c.result {
                Ok(Done::MapWritten(_)) => match self.store.as_mut().map(|s| s.end_full_snapshot()) {
                    Some(Err(e)) | Some(Ok((_, Some(e)))) => {
                        crate::diag!("clone-server: snapshot of the map not ended at stop: {e}")
                    }
                    _ => {}
                },
                Err(e) => crate::diag!("clone-server: snapshot not written (compaction at stop): {e}"),
                Ok(_) => {}
            }
        }
        if let Some(store) = self.store.as_mut() {
            if let Err(e) = store.sync() {
                crate::diag!("clone-server: {e}");
            }
        }
        let c = self.core.counters();
        let disk = match self.store.is_some() {
            true => format!(
                "; log fsyncs: {} ({} slower than the {} interval, longest {}, {} failed); slow-disk stalls: {}",
                c.syncs,
                c.slow_syncs,
                human_ms(self.cfg.fsync_interval_ms),
                human_ms(c.longest_sync_ms),
                c.sync_failures,
                c.disk_stalls
            ),
            false => String::new(),
        };
        // What went unsaid (summaries not yet due, the total of failed publishes), quiet or not.
        if let Err(e) = self.step(Event::Stopping, now) {
            crate::diag!("clone-server: {e}");
        }
        log(
            self.cfg.verbose,
            format_args!("stopped at sequence {} with {} keys{disk}", self.core.sequence(), self.core.map().len()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of three free ports on 127.0.0.1.
    fn free_ports() -> u16 {
        for _ in 0..200 {
            let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else { continue };
            let Ok(base) = l.local_addr().map(|a| a.port()) else { continue };
            drop(l);
            if base < u16::MAX - 3 && (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
                return base;
            }
        }
        panic!("no block of 3 free ports");
    }

    /// The child of [`the_lines_that_led_to_a_fatal_error_are_said_before_it`]: set, it runs
    /// the server whose stderr the parent reads.
    const FATAL_CHILD: &str = "MDSUB_TEST_CLONE_SERVER_FATAL_CHILD";

    /// A backup passive behind its active peer does not run for 5 s (SIGSTOP), then hears its
    /// peer say PASSIVE: a fatal error. The pause the core noticed on the way is said first, then
    /// the error. Before, the shell dropped that step's actions unrun: the error stood alone. A
    /// child process (this test run again) so that its stderr, where the lines go, can be read.
    #[test]
    fn the_lines_that_led_to_a_fatal_error_are_said_before_it() {
        if std::env::var_os(FATAL_CHILD).is_some() {
            let (own, peer) = (free_ports(), free_ports());
            let pair = PairConfig {
                role: crate::clone::bstar::Role::Backup,
                peer: format!("tcp://127.0.0.1:{}", peer + 1),
                peer_state: format!("tcp://127.0.0.1:{}", peer + 2),
                state_bind: format!("tcp://127.0.0.1:{peer}"),
                heartbeat_ms: 100,
            };
            let cfg = ServerConfig { port: own, pair: Some(pair), ..ServerConfig::default() };
            let mut s = Server::new(cfg).expect("server");
            let t0 = crate::clock::monotonic_ns();
            s.step(Event::PeerState(Some(State::Active)), t0).expect("passive");
            assert_eq!(s.core.state_name(), "passive");
            let e = s.step(Event::PeerState(Some(State::Passive)), t0 + 5_000_000_000).expect_err("fatal");
            crate::diag!("{e}");
            return;
        }
        let name = "clone::server::tests::the_lines_that_led_to_a_fatal_error_are_said_before_it";
        let (status, out, err) = crate::test_forks::rerun_test_in_child(name, FATAL_CHILD);
        assert!(status.is_some_and(|s| s.success()), "the child failed or took 30 s ({status:?}):\n{out}\n{err}");
        assert!(out.contains("test result: ok. 1 passed"), "the child ran the test:\n{out}\n{err}");
        let at = |what: &str| err.lines().position(|l| l.contains(what));
        let pause = at("clone-server: binary star: this server did not run for 5s, longer than its peer waits");
        let fatal = at("clone-server: binary star: peer is passive while we are passive: nobody would serve");
        assert!(fatal.is_some(), "the error: {err}");
        assert!(pause.is_some() && pause < fatal, "the pause said before the error: {err}");
    }

    #[test]
    fn a_full_snapshot_of_the_map_is_written_off_the_serving_thread_and_recovered_with_what_followed() {
        let _no_fork = crate::test_forks::no_fork();
        // Before: the step that asked for it wrote the whole map (and fsynced it) on this thread:
        // `durable=yes` when it returned, after 0.6-1.3 s at 1M keys without a HUGZ or heartbeat.
        let dir = std::env::temp_dir().join(format!("mdsub-full-snapshot-off-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = ServerConfig { port: free_ports(), data_dir: Some(dir.clone()), ..ServerConfig::default() };
        let mut s = Server::new(cfg).expect("server");
        let wall = crate::clock::realtime_ns() / 1_000_000;
        let mut records: Vec<Record> = (0..20_000u64)
            .map(|i| Record { msg: KvMsg::new(format!("/k/{i:05}"), i + 1, "v"), expires_at_unix_ms: None })
            .collect();
        // A key that expires at once: its delete is published and logged while the map is written.
        records.push(Record { msg: KvMsg::new("/short", 20_001, "ttl"), expires_at_unix_ms: Some(wall + 1) });
        let now = crate::clock::monotonic_ns();
        s.core.recover(records, 20_001, wall, now);
        s.step(Event::PeerSnapshotUnwritten { error: "a test".into() }, now).expect("step");
        assert!(s.core.status_text().contains("durable=no\n"), "the map is not written on this thread");
        assert!(s.store.as_ref().is_some_and(|st| st.full_pending()), "it is being written elsewhere");
        std::thread::sleep(Duration::from_millis(2));
        s.step(Event::Tick, crate::clock::monotonic_ns()).expect("tick");
        assert!(s.core.map().get(b"/short").is_none(), "expired meanwhile");
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while !s.core.status_text().contains("durable=yes\n") {
            assert!(std::time::Instant::now() < end, "not durable within 60 s: {}", s.core.status_text());
            s.do_work().expect("step");
            s.idle_wait(Duration::from_millis(1));
        }
        let sequence = s.core.sequence();
        assert_eq!(sequence, 20_002, "the expiry's delete");
        // A crash (no clean stop): the data directory holds the map and the delete after it.
        drop(s);
        let (_store, r) = Store::open(&dir).expect("reopen");
        assert_eq!(r.sequence, sequence);
        let mut keys: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = std::collections::BTreeMap::new();
        for rec in r.records {
            match rec.msg.body.is_empty() {
                true => keys.remove(&rec.msg.key),
                false => keys.insert(rec.msg.key, rec.msg.body),
            };
        }
        assert_eq!(keys.len(), 20_000);
        assert!(!keys.contains_key(&b"/short"[..]), "its delete followed the snapshot");
        for f in ["snapshot.peer", "snapshot.peer.end", "log.old"] {
            assert!(!dir.join(f).exists(), "{f} settled");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// How long the serving thread stops when the data directory falls behind and the map is
    /// written whole: a standalone server on a real data directory holding `MDSUB_SNAP_KEYS`
    /// keys (1M by default) of 100-byte values is told its disk is behind, then its loop is run
    /// by hand until STATUS says `durable=yes`; the longest step is the pause (no HUGZ, no
    /// heartbeat, no snapshot, no STATUS meanwhile).
    /// `cargo test --release --lib full_snapshot_pause -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: writes hundreds of MB"]
    fn full_snapshot_pause() {
        let n: u64 = std::env::var("MDSUB_SNAP_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
        let dir = std::env::temp_dir().join(format!("mdsub-full-snapshot-pause-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg =
            ServerConfig { port: free_ports(), data_dir: Some(dir.clone()), verbose: false, ..ServerConfig::default() };
        let mut s = Server::new(cfg).expect("server");
        let records = (0..n)
            .map(|i| {
                let mut m = KvMsg::new(format!("/md/key/{i:09}"), i + 1, vec![b'v'; 100]);
                m.uuid = Some([1; 16]);
                Record { msg: m, expires_at_unix_ms: None }
            })
            .collect();
        let now = crate::clock::monotonic_ns();
        s.core.recover(records, n, crate::clock::realtime_ns() / 1_000_000, now);
        let t0 = std::time::Instant::now();
        let timed = |f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            f();
            t.elapsed()
        };
        let mut longest = timed(&mut || {
            s.step(Event::PeerSnapshotUnwritten { error: "measured".into() }, crate::clock::monotonic_ns())
                .expect("step");
        });
        let mut steps = 1u64;
        while !s.core.status_text().contains("durable=yes\n") {
            assert!(t0.elapsed() < Duration::from_secs(300), "not durable within 300 s");
            longest = longest.max(timed(&mut || {
                s.do_work().expect("step");
            }));
            steps += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        let total = t0.elapsed();
        eprintln!(
            "full snapshot of {n} keys: longest serving step {:.1} ms, durable again after {:.1} ms ({steps} steps)",
            longest.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
