//! Watched links: no connection mdsub makes dies silently (issue 13).
//!
//! Every socket that connects out (the engine shards' SUBs, the LVC's and
//! the tap's frontends and backends when they connect, the clone client's
//! sockets) gets a [`LinkWatch`]: libzmq's socket monitor
//! (`zmq_socket_monitor`, over inproc to a PAIR the watch owns), read by the
//! agent that owns the socket ([`LinkWatch::service`], cheap enough to call
//! from its loop; [`LinkWatch::due`] rations it). The events go to the
//! socket-free [`core::Links`]; its decisions are acted on here: each loss is
//! logged once on stderr with the endpoint and the reason, a link libzmq will
//! not reconnect (a protocol error such as a message over the maximum size)
//! is disconnected and connected again, and the counters are published on a
//! [`LinkBoard`] for the report, `--json` and status.
//!
//! Losses follow the rule for repeated lines ([`crate::diag::Refusals`], one per link): the
//! first of each reason is said at once with what it means, later ones are counted and
//! summarised every 10 s (and what is left at the end when the watch is dropped); the
//! `re-established` and `up again` lines of a loss are said only when the loss itself was.
//! A link that libzmq gives up on again and again is re-established with a back-off
//! ([`core`]), so neither the peer nor the log is flooded.
//!
//! A plain `disconnected` loss is said after the grace ([`core::RETRY_GRACE_NS`]), or at once
//! when the link comes back or the watch is dropped: an owner that reaches its end of stream
//! meanwhile ([`LinkWatch::end_of_stream`]) takes it back unsaid, since a publisher closing
//! after its end of stream is not a loss (its monitor event can be read before the
//! end-of-stream message it follows).
//!
//! A link that went down too recently for the grace to have decided anything when its owner
//! stops ([`LinkWatch::finish`], or the drop) is counted then, so a summary never says `down`
//! with no loss.
//!
//! **Connections accepted on a bound endpoint** are no links of the watch (the peer connects,
//! and reconnects, by itself), but a watch on a socket that binds sees them too: each completed
//! handshake and each end is counted ([`LinkWatch::accepted`]), and an owner that wants each end
//! said ([`LinkWatch::saying_accepted_ends`]) has it said by the rule for repeated lines. libzmq
//! 4.3.5 gives the same `DISCONNECTED` event, and nothing else, whether the peer closed or
//! libzmq dropped the connection for a message over `ZMQ_MAXMSGSIZE` (with what was queued
//! behind it): the cause is not known, and the line says so. The watch reads libzmq's version 2
//! monitor events ([`crate::zmqx::monitor_v2`]), which name each connection's local and remote
//! address, so each accepted connection is told from the others ([`Accepts`]): a peer refused
//! in its handshake (a ZMTP 1.0 peer, random bytes, another security mechanism) is a refusal
//! whether or not a publisher is connected meanwhile, never a publisher's end. (Version 1 named
//! only the bound endpoint: with a publisher connected, such a peer's end was counted in
//! `publisher_disconnects` and said as a publisher's.) A link's events name its endpoint as
//! their remote address, as version 1's did.

pub mod core;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::diag::{Refusals, SUMMARY_INTERVAL_NS};
use crate::wire::handshake::AcceptFailure;

pub use self::core::{Decision, Event, Failure, KeyFlags, LinkStats, Links, NotUp, Reason, RETRY_GRACE_NS};

/// The monitor events a watch asks for, in version 2 ([`crate::zmqx::monitor_v2`]): each names
/// its connection's two ends, so the connections accepted on a bound endpoint are told apart.
const EVENTS: u64 = (zmq_sys::ZMQ_EVENT_CONNECTED
    | zmq_sys::ZMQ_EVENT_CONNECT_RETRIED
    | zmq_sys::ZMQ_EVENT_DISCONNECTED
    | zmq_sys::ZMQ_EVENT_HANDSHAKE_SUCCEEDED
    | zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
    | zmq_sys::ZMQ_EVENT_ACCEPT_FAILED) as u64;

/// Calls to [`LinkWatch::due`] between two services (a busy owner looks at
/// its links every this many rounds; an idle one on every wait).
pub const SERVICE_EVERY_ROUNDS: u32 = 1024;

/// Longest time between two services of an owner that gives the time ([`LinkWatch::due_at`]):
/// one blocked on a full peer waits up to its idle strategy's wait each round, so rounds alone
/// let a link's loss or a refusal wait 1024 waits (1 s and more) to be seen.
pub const SERVICE_EVERY_NS: u64 = 10_000_000;

/// Socket-free: when a busy owner next services its link watch: every
/// [`SERVICE_EVERY_ROUNDS`] rounds, and, for an owner that gives the time, once
/// [`SERVICE_EVERY_NS`] has passed since the last service.
#[derive(Debug, Default)]
pub struct ServiceCadence {
    rounds: u32,
    last_ns: u64,
}

impl ServiceCadence {
    /// One round: true once every [`SERVICE_EVERY_ROUNDS`] calls.
    #[inline]
    pub fn due(&mut self) -> bool {
        self.rounds += 1;
        self.rounds >= SERVICE_EVERY_ROUNDS
    }

    /// One round at `now_ns`: [`ServiceCadence::due`], or [`SERVICE_EVERY_NS`] since the last
    /// service.
    #[inline]
    pub fn due_at(&mut self, now_ns: u64) -> bool {
        self.due() || now_ns.saturating_sub(self.last_ns) >= SERVICE_EVERY_NS
    }

    /// The watch was serviced at `now_ns`.
    pub fn serviced(&mut self, now_ns: u64) {
        (self.rounds, self.last_ns) = (0, now_ns);
    }
}

/// Most events taken per service: at least half the monitor queue's 2000 (libzmq's pipe
/// low-water mark), so that one service releases an I/O thread blocked on a full queue (libzmq
/// sends each event with a blocking send from the thread that has it; docs/ARCHITECTURE.md,
/// "The link watch's queue"). Reading an event costs about a microsecond; a service reads this
/// many only after a burst (a port scan, a descriptor shortage's `accept_failed` spin).
const EVENTS_PER_SERVICE: usize = 1024;

/// Connections accepted on a socket's bound endpoints, counted by its watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Handshakes completed.
    pub connects: u64,
    /// Connections that ended after their handshake (closed by the peer, broken, or dropped by
    /// libzmq: it does not say which).
    pub disconnects: u64,
    /// Connections whose handshake libzmq failed (a peer that is no ZeroMQ peer, a port scan,
    /// another security mechanism): refusals, said by the rule for repeated lines, not publisher
    /// disconnects (their `DISCONNECTED` follows and is not counted there).
    pub refused: u64,
    /// Times libzmq could not accept a connection there (`accept()` failed: most often EMFILE,
    /// out of descriptors): attempts, not peers, since libzmq tries again at once while the cause
    /// holds ([`AcceptFailure`]); said by the rule for repeated lines, under `accept_failed`.
    pub accept_failed: u64,
    /// Handshake outcomes not remembered because the handshake ledger was full
    /// ([`crate::security::HandshakeLedger::forgotten`]): how many of the counts above are off
    /// (such a connection is neither counted in `connects` nor `disconnects`, and its end is
    /// counted in `refused` when the owner says each end). 0 unless the ledger filled.
    pub ledger_forgotten: u64,
}

/// What one monitor event of a connection accepted on a bound endpoint came to
/// ([`Accepts::on_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptedStep {
    /// Nothing to count or say.
    None,
    /// A connection completed its handshake (counted in `connects`).
    Joined,
    /// A connection that had completed its handshake ended (counted in `disconnects`).
    Left,
    /// libzmq refused a connection in its handshake (counted in `refused`).
    Refused(crate::security::Refusal),
}

/// Socket-free: the connections accepted on a socket's bound endpoints, each told from the
/// others by its two ends (version 2 monitor events name both; version 1's named only the bound
/// endpoint, so the end of a peer refused in its handshake was counted as a publisher's end
/// whenever a publisher was connected, and as a refusal when none was). Which connections have
/// completed their handshake is the [`crate::security::HandshakeLedger`]'s to remember.
#[derive(Debug, Default)]
pub struct Accepts {
    ledger: crate::security::HandshakeLedger,
    /// The owner says each end ([`LinkWatch::saying_accepted_ends`]): a connection that hangs up
    /// in its handshake is a refusal. Elsewhere (a subscriber-facing socket whose ends are not
    /// said) it is a subscriber torn down as it joins, and refuses nothing.
    pub ends_said: bool,
    pub counts: Accepted,
}

impl Accepts {
    /// Take one monitor event of an accepted connection (`ACCEPT_FAILED` is counted apart).
    pub fn on_event(&mut self, e: &crate::zmqx::MonitorEventV2) -> AcceptedStep {
        use crate::security::{PeerChange, Refusal};
        let (refusal, change) = self.ledger.step(e);
        self.counts.ledger_forgotten = self.ledger.forgotten();
        match change {
            PeerChange::Joined => {
                self.counts.connects += 1;
                return AcceptedStep::Joined;
            }
            PeerChange::Left => {
                self.counts.disconnects += 1;
                return AcceptedStep::Left;
            }
            PeerChange::None => {}
        }
        let Some(refusal) = refusal else { return AcceptedStep::None };
        // No detail, or an end with no handshake event before it (libzmq 4.3.5 ends a ZMTP 1.0
        // peer, random bytes, with none): the peer hung up or broke the handshake.
        let hung_up = refusal == Refusal::HandshakeNoDetail || e.event == u64::from(zmq_sys::ZMQ_EVENT_DISCONNECTED);
        if hung_up && !self.ends_said {
            return AcceptedStep::None;
        }
        self.counts.refused += 1;
        AcceptedStep::Refused(refusal)
    }
}

/// A socket's link counters, shared with whoever reports them.
#[derive(Debug, Clone, Default)]
pub struct LinkBoard(Arc<Mutex<Vec<LinkStats>>>);

impl LinkBoard {
    /// Every watched endpoint's counters now (how long each has been in its state, and its time
    /// not up, up to now).
    pub fn snapshot(&self) -> Vec<LinkStats> {
        let now = crate::clock::monotonic_ns();
        let at = |v: &Vec<LinkStats>| v.iter().map(|l| l.at(now)).collect();
        self.0.lock().map(|v| at(&v)).unwrap_or_else(|p| at(&p.into_inner()))
    }

    fn set(&self, stats: Vec<LinkStats>) {
        match self.0.lock() {
            Ok(mut v) => *v = stats,
            Err(p) => *p.into_inner() = stats,
        }
    }
}

/// One line per link, for exit summaries: `ENDPOINT up connects=1 ...`.
pub fn summary(links: &[LinkStats]) -> String {
    links.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("; ")
}

/// What happened to a followed socket's connections ([`LinkWatch::take_changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChange {
    /// A handshake completed: messages flow.
    Up,
    /// A connection was lost.
    Down,
    /// libzmq armed its reconnect timer: a connect attempt failed (nothing accepts connections
    /// there), or, right after a [`LinkChange::Down`], the reconnecting began.
    Retried,
}

/// The watch on one socket's connect endpoints.
pub struct LinkWatch {
    /// Who owns the socket, for log lines (`shard0`, `lvc frontend`).
    name: String,
    monitor: zmq::Socket,
    links: Links,
    board: LinkBoard,
    frames: Vec<zmq::Message>,
    out: Vec<Decision>,
    cadence: ServiceCadence,
    /// Raw ups (handshake done), downs (disconnected) and, with [`LinkWatch::following_changes`],
    /// retries since the last [`LinkWatch::take_updowns`] / [`LinkWatch::take_changes`], kept only
    /// for an owner whose core follows them ([`LinkWatch::following_updowns`]): nobody else
    /// empties the list.
    changes: Vec<LinkChange>,
    follow: bool,
    /// Keep [`LinkChange::Retried`] too.
    follow_retries: bool,
    /// Say losses and returns on stderr (the counters are kept either way).
    log: bool,
    /// Connections of the socket that ended (`DISCONNECTED`: a link's or one accepted on a
    /// bound endpoint, whatever the cause), as of the last [`LinkWatch::service`].
    ended: u64,
    /// The socket presents CURVE keys (set before the watch is attached): loss lines hint at
    /// keys only then.
    curve: bool,
    /// What the owner's flags can do about CURVE on this socket: the hints name only those.
    keys: KeyFlags,
    /// Say only the losses libzmq gives up on ([`LinkWatch::saying_only_what_libzmq_gives_up`]).
    only_given_up: bool,
    /// `disconnected` lines held for the grace: (say at, link).
    held: Vec<(u64, usize)>,
    /// Links not up, held for the owner to say ([`LinkWatch::hold_not_up`]); None: said here.
    not_ups: Option<Vec<NotUp>>,
    /// Per link: its losses, said by the rule for repeated lines.
    losses: Vec<Refusals>,
    /// Per link: the last loss was said in a line (its `re-established`/`up again` lines follow).
    said: Vec<bool>,
    /// The connections accepted on the socket's bound endpoints, told apart by their two ends.
    accepts: Accepts,
    /// With [`LinkWatch::saying_accepted_ends`]: the ends of accepted connections, said by the
    /// rule for repeated lines, and what each may mean.
    accepted_ends: Option<(Refusals, String)>,
    /// The refused accepted connections, said by the rule for repeated lines.
    accepted_refused: Refusals,
    /// With [`LinkWatch::awaiting_publishers`]: the bound endpoints while no publisher has
    /// connected to them.
    awaiting: Option<Awaiting>,
}

/// A socket's bound endpoints that no publisher has connected to yet: said once after
/// [`core::NOT_UP_AFTER_NS`], as a link that is not up is, and again when one comes if it was.
struct Awaiting {
    endpoints: Vec<String>,
    since_ns: u64,
    said: bool,
}

static WATCHES: AtomicUsize = AtomicUsize::new(0);

impl LinkWatch {
    /// Start monitoring `socket` (made on `ctx`) for `endpoints`, the ones
    /// it connects to; call before connecting so no event is missed, and after setting the
    /// socket's CURVE keys, if any (its loss lines hint at keys only then). None when there
    /// is nothing to watch.
    pub fn attach(
        ctx: &zmq::Context,
        socket: &mut zmq::Socket,
        name: &str,
        endpoints: &[String],
    ) -> zmq::Result<Option<LinkWatch>> {
        if endpoints.is_empty() {
            return Ok(None);
        }
        Self::attach_always(ctx, socket, name, endpoints).map(Some)
    }

    /// [`LinkWatch::attach`], even with no endpoint to watch: for an owner that follows the
    /// socket's handshakes (every connection accepted on a bound endpoint included) through
    /// [`LinkWatch::take_updowns`].
    pub fn attach_always(
        ctx: &zmq::Context,
        socket: &mut zmq::Socket,
        name: &str,
        endpoints: &[String],
    ) -> zmq::Result<LinkWatch> {
        let inproc = format!("inproc://mdsub-links-{}-{}", std::process::id(), WATCHES.fetch_add(1, Ordering::Relaxed));
        crate::zmqx::monitor_v2(socket, &inproc, EVENTS)?;
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.set_linger(0)?;
        monitor.connect(&inproc)?;
        let watched = endpoints
            .iter()
            .map(|ep| {
                let resolved: Vec<std::net::SocketAddr> = core::tcp_target(ep)
                    .and_then(|t| std::net::ToSocketAddrs::to_socket_addrs(t).ok())
                    .map(|a| a.collect())
                    .unwrap_or_default();
                (ep.clone(), core::aliases(ep, &resolved))
            })
            .collect();
        let losses = endpoints
            .iter()
            .map(|ep| Refusals::new(name, SUMMARY_INTERVAL_NS).said_as(format!("{name}: link {ep} lost")))
            .collect();
        let links = Links::new(watched, RETRY_GRACE_NS, crate::clock::monotonic_ns());
        let curve = socket.get_mechanism().is_ok_and(|m| m == zmq::Mechanism::ZMQ_CURVE);
        let board = LinkBoard::default();
        board.set(links.stats());
        Ok(LinkWatch {
            name: name.to_string(),
            monitor,
            links,
            board,
            // Event, value count, one value, local and remote address.
            frames: Vec::with_capacity(5),
            out: Vec::new(),
            cadence: ServiceCadence::default(),
            changes: Vec::new(),
            follow: false,
            follow_retries: false,
            log: true,
            ended: 0,
            curve,
            keys: KeyFlags::default(),
            only_given_up: false,
            held: Vec::new(),
            not_ups: None,
            losses,
            said: vec![false; endpoints.len()],
            accepts: Accepts::default(),
            accepted_ends: None,
            accepted_refused: Refusals::new(name, SUMMARY_INTERVAL_NS).said_as(format!("{name}: refused a connection")),
            awaiting: None,
        })
    }

    /// Publishers connect to `bound`, the socket's bound endpoints (as bound, ports resolved):
    /// when none has completed a handshake [`core::NOT_UP_AFTER_NS`] from now, say so once
    /// (`shard0: no publisher has connected to bound EP in 5s; still waiting …`), and when one
    /// does after that, say that too. A connecting endpoint says `not up after 5s`; a bound
    /// one said nothing, however long no publisher came.
    pub fn awaiting_publishers(&mut self, bound: &[String]) {
        if !bound.is_empty() && self.accepts.counts.connects == 0 {
            let since_ns = crate::clock::monotonic_ns();
            self.awaiting = Some(Awaiting { endpoints: bound.to_vec(), since_ns, said: false });
        }
    }

    /// A publisher completed its handshake on bound `endpoint`, ending the wait `w` of the
    /// socket `name`: said when the wait was.
    fn publisher_came(name: &str, w: Awaiting, endpoint: &str, now: u64) {
        if w.said {
            let after = crate::diag::human_duration(now.saturating_sub(w.since_ns));
            crate::diag!("{name}: a publisher connected to {endpoint} after {after}");
        }
    }

    /// Say, once, that no publisher has connected to the bound endpoints for
    /// [`core::NOT_UP_AFTER_NS`].
    fn say_awaiting(&mut self, now: u64) {
        let Some(w) = self.awaiting.as_mut().filter(|w| !w.said) else { return };
        if now.saturating_sub(w.since_ns) < core::NOT_UP_AFTER_NS || !self.log {
            return;
        }
        w.said = true;
        crate::diag!(
            "{}: no publisher has connected to bound {} in {}; still waiting (said again when one does)",
            self.name,
            w.endpoints.join(" or "),
            crate::diag::human_duration(core::NOT_UP_AFTER_NS)
        );
    }

    /// Keep the ups and downs for [`LinkWatch::take_updowns`] (an owner whose core follows
    /// them, and which takes them every round).
    pub fn following_updowns(mut self) -> Self {
        self.follow = true;
        self
    }

    /// [`LinkWatch::following_updowns`], with each reconnect attempt libzmq announces
    /// ([`LinkChange::Retried`]) too, for [`LinkWatch::take_changes`]: an owner that wants to
    /// know when nothing accepts connections at a peer it waits for.
    pub fn following_changes(mut self) -> Self {
        self.follow = true;
        self.follow_retries = true;
        self
    }

    /// Say each end of a connection accepted on a bound endpoint, by the rule for repeated lines:
    /// `HEAD (disconnected): ENDPOINT: EXPLAIN (the first; …)`, then a summary every 10 s.
    pub fn saying_accepted_ends(mut self, head: String, explain: String) -> Self {
        self.accepted_ends = Some((Refusals::new(&self.name, SUMMARY_INTERVAL_NS).said_as(head), explain));
        self.accepts.ends_said = true;
        self
    }

    /// [`LinkWatch::saying_accepted_ends`] for a socket that publishers connect to, whose largest
    /// message is `max_msg_bytes`, set by `limit` (the flag or profile field that names it): each
    /// end is said as `HEAD (disconnected): ENDPOINT: libzmq gives no cause: …` with what it may
    /// mean, the same words wherever publishers connect (a proxy's frontend, an engine shard).
    pub fn saying_publisher_ends(self, head: String, limit: &str, max_msg_bytes: i64) -> Self {
        let explain = format!(
            "libzmq gives no cause: the publisher closed or went away, or it sent a message over \
             {limit} ({max_msg_bytes} bytes), which libzmq drops with the connection and what was queued \
             behind it (a PUB publisher then reconnects by itself); counted in publisher_disconnects"
        );
        self.saying_accepted_ends(head, explain)
    }

    /// [`LinkWatch::saying_accepted_ends`] for a socket that subscribers connect to (a proxy's
    /// backend), whose largest message from a subscriber is `max_msg_bytes`: each end is said as
    /// `HEAD (disconnected): ENDPOINT: libzmq gives no cause: …`, and, as where publishers
    /// connect, a connection that ends in its handshake is a refusal (a subscriber torn down as
    /// it joins reads the same as a peer that is no ZeroMQ peer: libzmq says no more).
    pub fn saying_subscriber_ends(self, head: String, max_msg_bytes: i64) -> Self {
        let explain = format!(
            "libzmq gives no cause: the subscriber closed or went away, or it sent a message over \
             {max_msg_bytes} bytes (a subscription longer than a proxy takes), which libzmq drops with \
             the connection; counted in subscriber_disconnects"
        );
        self.saying_accepted_ends(head, explain)
    }

    /// Connections accepted on the socket's bound endpoints so far.
    pub fn accepted(&self) -> Accepted {
        self.accepts.counts
    }

    /// What the owner's flags can do about CURVE on this socket (`--server-key` and
    /// `--curve-key` unless told otherwise): its loss lines hint only at those.
    pub fn keys_by(mut self, keys: KeyFlags) -> Self {
        self.keys = keys;
        self
    }

    /// Keep quiet on stderr (a full-screen owner); the counters still count.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.log = !quiet;
        self
    }

    /// Say only the losses libzmq does not reconnect by itself (and their re-establishment);
    /// a plain disconnect, a broken-off handshake and "not up" are counted, not said: for a
    /// second link to a peer whose first link says those already (the clone server's state
    /// link beside its peer link).
    pub fn saying_only_what_libzmq_gives_up(mut self) -> Self {
        self.only_given_up = true;
        self
    }

    /// Leave "not up" to the owner: [`LinkWatch::take_not_ups`] hands each over instead of the
    /// watch saying it (an owner with several sockets to one peer says it once for the peer).
    pub fn hold_not_up(mut self) -> Self {
        self.not_ups = Some(Vec::new());
        self
    }

    /// The links found not up since the last call, when [`LinkWatch::hold_not_up`] (and not quiet).
    pub fn take_not_ups(&mut self, out: &mut Vec<NotUp>) {
        if let Some(held) = self.not_ups.as_mut() {
            out.append(held);
        }
    }

    /// True once `endpoint`'s link has completed a handshake.
    pub fn has_been_up(&self, endpoint: &str) -> bool {
        self.links.stats().iter().any(|l| l.endpoint == endpoint && l.connects > 0)
    }

    /// The counters, shared.
    pub fn board(&self) -> LinkBoard {
        self.board.clone()
    }

    /// The monitor socket (readable when an event waits), for an owner's wait.
    pub fn socket(&self) -> &zmq::Socket {
        &self.monitor
    }

    /// True once every [`SERVICE_EVERY_ROUNDS`] calls: a busy owner calls this
    /// each round and [`LinkWatch::service`] when it says so.
    #[inline]
    pub fn due(&mut self) -> bool {
        self.cadence.due()
    }

    /// [`LinkWatch::due`] for an owner that gives the time (`now_ns`, monotonic): also true once
    /// [`SERVICE_EVERY_NS`] has passed since the last [`LinkWatch::service`], so an owner blocked
    /// on a full peer (slow rounds) still sees its links' changes within that.
    #[inline]
    pub fn due_at(&mut self, now_ns: u64) -> bool {
        self.cadence.due_at(now_ns)
    }

    /// Take the monitor's events, act on the decisions (log, re-establish
    /// `socket`'s link) and publish the counters. Never blocks. Returns
    /// how many events it read.
    pub fn service(&mut self, socket: &zmq::Socket) -> usize {
        let now = crate::clock::monotonic_ns();
        self.cadence.serviced(now);
        let mut seen = 0;
        while seen < EVENTS_PER_SERVICE {
            match crate::zmqx::recv_message(&self.monitor, &mut self.frames) {
                Ok(true) => {}
                Ok(false) | Err(_) => break,
            }
            seen += 1;
            let Some(e) = crate::zmqx::MonitorEventV2::parse(&self.frames) else { continue };
            let event = event_of(&e);
            if event == Event::Disconnected {
                self.ended += 1;
            }
            match event {
                Event::HandshakeSucceeded if self.follow => self.changes.push(LinkChange::Up),
                Event::Disconnected if self.follow => self.changes.push(LinkChange::Down),
                Event::ConnectRetried if self.follow_retries => self.changes.push(LinkChange::Retried),
                _ => {}
            }
            if let Event::AcceptFailed(errno) = event {
                // Never a link's: accepting is a bound endpoint's. Said like a refusal, with
                // the descriptor limit when that is the cause.
                self.accepts.counts.accept_failed += 1;
                if self.log {
                    let explain = AcceptFailure { errno }.explain(crate::wire::handshake::nofile_limit());
                    let detail = format_args!("{}: {explain}", e.local);
                    if let Some(line) = self.accepted_refused.refuse(AcceptFailure::REASON, &detail, now) {
                        crate::diag!("{line}");
                    }
                }
            } else if self.links.find(&e.remote).is_none() {
                // A connection accepted on an endpoint the socket binds: its remote end is the
                // peer's, so each connection is told from the others.
                self.on_accepted(&e, now);
            }
            // A link's events name its endpoint as their remote end (as version 1's did).
            self.links.on_event(event, &e.remote, now, &mut self.out);
        }
        let accepted_unsaid =
            self.accepted_ends.as_ref().is_some_and(|(said, _)| said.unsaid()) || self.accepted_refused.unsaid();
        let awaiting_unsaid = self.awaiting.as_ref().is_some_and(|w| !w.said);
        if seen == 0
            && !self.links.pending()
            && self.held.is_empty()
            && !self.losses.iter().any(Refusals::unsaid)
            && !accepted_unsaid
            && !awaiting_unsaid
        {
            return 0;
        }
        self.say_awaiting(now);
        self.links.tick(now, &mut self.out);
        for d in std::mem::take(&mut self.out) {
            self.act(socket, d, now);
        }
        while let Some(&(at, link)) = self.held.first() {
            if at > now {
                break;
            }
            self.held.remove(0);
            self.say_lost(link, Reason::Disconnected, now);
        }
        let accepted =
            self.accepted_ends.as_mut().map(|(said, _)| said).into_iter().chain([&mut self.accepted_refused]);
        for losses in self.losses.iter_mut().chain(accepted) {
            if let Some(line) = losses.due(now) {
                crate::diag!("{line}");
            }
        }
        self.board.set(self.links.stats());
        seen
    }

    /// [`LinkWatch::service`] until every event waiting has been read (a service reads at most
    /// 64): for an owner that must have seen every handshake so far.
    pub fn drain(&mut self, socket: &zmq::Socket) {
        while self.service(socket) == EVENTS_PER_SERVICE {}
    }

    /// The owner stops: a link that went down too recently for libzmq to have shown whether it
    /// retries is counted and said now ([`Links::finish`]) and the board shows it, so the
    /// summary never says `down` with no loss. Also done when the watch is dropped.
    pub fn finish(&mut self) {
        let now = crate::clock::monotonic_ns();
        self.links.finish(&mut self.out);
        for d in std::mem::take(&mut self.out) {
            if let Decision::Lost { link, reason } = d {
                self.say_lost(link, reason, now);
            }
        }
        self.board.set(self.links.stats());
    }

    /// Every end of stream the owner waits for has arrived: from now on a disconnect is the
    /// stream's end (a link up shows `ended`; nothing is counted or said), and a
    /// `disconnected` loss within the grace before it is taken back unsaid.
    pub fn end_of_stream(&mut self) {
        let now = crate::clock::monotonic_ns();
        for link in self.links.end_of_stream(now) {
            self.held.retain(|&(_, l)| l != link);
        }
        self.board.set(self.links.stats());
    }

    /// Connections of the socket that ended so far (a link's, or one accepted on a bound
    /// endpoint), as of the last [`LinkWatch::service`]: a publisher killed or whose host went
    /// (its connection ended by the keepalive) ends one; one alive but sending nothing does not.
    pub fn connections_ended(&self) -> u64 {
        self.ended
    }

    /// Connections of the socket open now, as of the last [`LinkWatch::service`]: its links that
    /// are up, and connections accepted on its bound endpoints whose handshake completed and
    /// that have not ended. One alone, with several publishers heard on it, is a proxy's (or
    /// another forwarder's) whose publishers share it.
    pub fn connections_open(&self) -> u64 {
        let a = self.accepts.counts;
        self.links.connected() + a.connects.saturating_sub(a.disconnects)
    }

    /// Every up (`true`: a handshake completed) and down (`false`: a
    /// connection lost) seen by [`LinkWatch::service`] since the last call, in order.
    pub fn take_updowns(&mut self, out: &mut Vec<bool>) {
        out.extend(self.changes.drain(..).filter_map(|c| match c {
            LinkChange::Up => Some(true),
            LinkChange::Down => Some(false),
            LinkChange::Retried => None,
        }));
    }

    /// Every change seen by [`LinkWatch::service`] since the last call, in order (with
    /// [`LinkWatch::following_changes`]).
    pub fn take_changes(&mut self, out: &mut Vec<LinkChange>) {
        out.append(&mut self.changes);
    }

    /// One event of a connection accepted on a bound endpoint: counted ([`Accepts`]), and a
    /// publisher's arrival, an end (when the owner says them) or a refusal said.
    fn on_accepted(&mut self, e: &crate::zmqx::MonitorEventV2, now: u64) {
        let peer = e.remote.strip_prefix("tcp://").unwrap_or(&e.remote);
        let step = self.accepts.on_event(e);
        if let (Some(line), true) = (self.accepts.ledger.take_full_line(), self.log) {
            crate::diag!("{}: {line}", self.name);
        }
        match step {
            AcceptedStep::None => {}
            AcceptedStep::Joined => {
                if let Some(w) = self.awaiting.take() {
                    Self::publisher_came(&self.name, w, &e.local, now);
                }
            }
            AcceptedStep::Left => {
                if let (Some((said, explain)), true) = (&mut self.accepted_ends, self.log) {
                    if let Some(line) =
                        said.refuse("disconnected", &format_args!("{peer} at {}: {explain}", e.local), now)
                    {
                        crate::diag!("{line}");
                    }
                }
            }
            AcceptedStep::Refused(refusal) if self.log => {
                let detail = crate::security::HandshakeRefused::of(refusal, e).detail(self.curve);
                if let Some(line) = self.accepted_refused.refuse(refusal.reason(), &detail, now) {
                    crate::diag!("{line}");
                }
            }
            AcceptedStep::Refused(_) => {}
        }
    }

    /// Count a loss for the log; say it when the rule for repeated lines says so.
    fn say_lost(&mut self, link: usize, reason: Reason, now: u64) {
        let retried = matches!(reason, Reason::Disconnected | Reason::HandshakeFailed);
        if self.log && !(self.only_given_up && retried) {
            let line = self.losses[link].refuse(reason.name(), &self.keys.explain(reason, self.curve), now);
            self.said[link] = line.is_some();
            if let Some(line) = line {
                crate::diag!("{line}");
            }
        } else {
            self.said[link] = false;
        }
    }

    fn act(&mut self, socket: &zmq::Socket, decision: Decision, now: u64) {
        match decision {
            Decision::Lost { link, reason: Reason::Disconnected } => {
                self.held.push((now.saturating_add(self.links.grace_ns()), link));
            }
            Decision::Up { link, .. } if self.held.iter().any(|&(_, l)| l == link) => {
                // Back before the held line was due: say the loss first, then the return.
                self.held.retain(|&(_, l)| l != link);
                self.say_lost(link, Reason::Disconnected, now);
                self.act(socket, decision, now);
            }
            Decision::Lost { .. } | Decision::Up { .. } | Decision::NotUp { .. } | Decision::StillLost { .. }
                if !self.log => {}
            Decision::NotUp { .. } | Decision::StillLost { .. } if self.only_given_up => {}
            Decision::StillLost { link, for_ns, reason } => {
                let (ep, stats) = (self.links.endpoint(link), &self.links.stats()[link]);
                let how = match reason {
                    Reason::Disconnected | Reason::HandshakeFailed => {
                        format!("libzmq keeps reconnecting ({} attempts so far)", stats.retries)
                    }
                    _ => format!(
                        "mdsub keeps re-establishing it, backing off to once every 30 s ({} times so far)",
                        stats.reestablished
                    ),
                };
                crate::diag!(
                    "{}: link {ep} still lost after {} ({}): {how}; said again every {} while it stays lost",
                    self.name,
                    core::whole_seconds(for_ns),
                    reason.name(),
                    core::whole_seconds(core::STILL_LOST_EVERY_NS)
                );
                // Its return is said too.
                self.said[link] = true;
            }
            Decision::NotUp { link, for_ns, attempts } => {
                // A name that does not resolve is why nothing answers: said instead, here or by
                // the owner that holds the line (the clone client's server line).
                let endpoint = self.links.endpoint(link).to_string();
                let cause = crate::host::unresolved(&endpoint);
                let not_up = NotUp { endpoint, for_ns, attempts, cause };
                match self.not_ups.as_mut() {
                    Some(held) => held.push(not_up),
                    None => crate::diag!("{}", not_up.line(&self.name)),
                }
            }
            Decision::Lost { link, reason } => self.say_lost(link, reason, now),
            Decision::Reestablish { link } => {
                let ep = self.links.endpoint(link).to_string();
                // ENOENT when libzmq already forgot it: connect is what matters.
                let _ = socket.disconnect(&ep);
                match socket.connect(&ep) {
                    Ok(()) if self.log && self.said[link] => {
                        crate::diag!("{}: link {ep} re-established (disconnected and connected again)", self.name)
                    }
                    Ok(()) => {}
                    Err(e) => {
                        crate::diag!("{}: link {ep}: connecting again failed: {e}; trying again later", self.name);
                        self.links.retry_later(link, now);
                    }
                }
            }
            Decision::Up { link, .. } if !self.said[link] => {}
            Decision::Up { link, down_ns, reconnects } => {
                crate::diag!(
                    "{}: link {} up again after {} down (reconnect {reconnects})",
                    self.name,
                    self.links.endpoint(link),
                    crate::diag::human_duration(down_ns)
                );
            }
        }
    }
}

impl Drop for LinkWatch {
    /// Held `disconnected` lines are said when the owner stops before they were due.
    /// So are the losses a summary has not covered yet, and a link down but not counted
    /// yet is counted ([`LinkWatch::finish`]).
    fn drop(&mut self) {
        self.finish();
        let now = crate::clock::monotonic_ns();
        for (_, link) in std::mem::take(&mut self.held) {
            self.say_lost(link, Reason::Disconnected, now);
        }
        let accepted =
            self.accepted_ends.as_mut().map(|(said, _)| said).into_iter().chain([&mut self.accepted_refused]);
        for losses in self.losses.iter_mut().chain(accepted) {
            if let Some(line) = losses.flush() {
                crate::diag!("{line}");
            }
        }
    }
}

/// What a version 2 monitor event is to a watch. A failed handshake's value is libzmq's
/// protocol error code, classified by [`Failure::of_event`].
fn event_of(e: &crate::zmqx::MonitorEventV2) -> Event {
    if let Some(failure) = Failure::of_event(e.event, e.value) {
        return Event::HandshakeFailed(failure);
    }
    if let Some(f) = AcceptFailure::of_event(e.event, e.value) {
        return Event::AcceptFailed(f.errno);
    }
    match u32::try_from(e.event) {
        Ok(zmq_sys::ZMQ_EVENT_CONNECTED) => Event::Connected,
        Ok(zmq_sys::ZMQ_EVENT_CONNECT_RETRIED) => Event::ConnectRetried,
        Ok(zmq_sys::ZMQ_EVENT_DISCONNECTED) => Event::Disconnected,
        Ok(zmq_sys::ZMQ_EVENT_HANDSHAKE_SUCCEEDED) => Event::HandshakeSucceeded,
        _ => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before: an owner serviced its watch every 1024 rounds only; a proxy blocked on a full
    /// backend waits 1 ms (backoff) each round, so a lost publisher was said a second late and
    /// more (10 s under a 10 ms block wait). Rounds 1 ms apart: serviced within 10 ms now.
    #[test]
    fn a_watch_is_due_by_time_as_well_as_by_rounds() {
        let mut c = ServiceCadence::default();
        let t0 = 5_000_000_000u64;
        c.serviced(t0);
        let mut now = t0;
        let mut rounds = 0u64;
        while !c.due_at(now) {
            now += 1_000_000;
            rounds += 1;
            assert!(rounds < 1024, "not due within 1024 rounds of 1 ms");
        }
        assert_eq!(now - t0, SERVICE_EVERY_NS, "due once 10 ms have passed, not before");
        c.serviced(now);
        assert!(!c.due_at(now + SERVICE_EVERY_NS - 1));
        // Fast rounds: due by count, as before (the owner that gives no time too).
        c.serviced(now);
        assert_eq!((1..=SERVICE_EVERY_ROUNDS).find(|_| c.due_at(now)), Some(SERVICE_EVERY_ROUNDS));
        let mut d = ServiceCadence::default();
        assert_eq!((1..=SERVICE_EVERY_ROUNDS).find(|_| d.due()), Some(SERVICE_EVERY_ROUNDS));
        d.serviced(0);
        assert!(!d.due(), "counting again after a service");
    }
    use std::time::{Duration, Instant};

    /// A hint names only flags its command has: none for a command without key flags, and
    /// `--curve-key` alone (the same on both halves) for a Binary Star pair.
    #[test]
    fn hints_name_only_the_owners_flags() {
        let reasons = [
            Reason::Disconnected,
            Reason::ProtocolError,
            Reason::HandshakeFailed,
            Reason::HandshakeFailedProtocol,
            Reason::HandshakeFailedMechanism,
            Reason::HandshakeFailedAuth,
            Reason::HandshakeFailedNoDetail,
        ];
        for r in reasons {
            for curve in [true, false] {
                assert_eq!(KeyFlags::ServerAndCurveKey.explain(r, curve), r.explain(curve));
                let plain = KeyFlags::NoKeys.explain(r, false);
                assert!(!plain.contains("--server-key") && !plain.contains("give --curve-key"), "{r:?}: {plain}");
                let pair = KeyFlags::SameCurveKey.explain(r, curve);
                assert!(!pair.contains("--server-key"), "{r:?} {curve}: {pair}");
            }
        }
        assert!(KeyFlags::NoKeys.explain(Reason::HandshakeFailedMechanism, false).contains("does not speak CURVE"));
        for curve in [true, false] {
            let said = KeyFlags::SameCurveKey.explain(Reason::HandshakeFailedMechanism, curve);
            assert!(said.contains("give both halves the same --curve-key"), "{said}");
        }
        assert!(KeyFlags::SameCurveKey.explain(Reason::HandshakeFailed, true).contains("both must use the same one"));
        // A keyless link whose handshake breaks off at every attempt: the server may demand CURVE
        // (it hangs up when it reads this side's greeting first), said with the owner's flags.
        let keyless = Reason::HandshakeFailed.explain(false);
        assert!(keyless.contains("a server that demands CURVE") && keyless.contains("give --server-key"), "{keyless}");
        let no_keys = KeyFlags::NoKeys.explain(Reason::HandshakeFailed, false);
        assert!(no_keys.contains("a server that demands CURVE") && no_keys.contains("does not speak CURVE"));
        let pair = KeyFlags::SameCurveKey.explain(Reason::HandshakeFailed, false);
        assert!(pair.contains("give both halves the same --curve-key"), "{pair}");
    }

    /// One version 2 event of the connection from `remote` to the bound `tcp://127.0.0.1:5556`.
    fn v2(event: u32, value: u64, remote: &str) -> crate::zmqx::MonitorEventV2 {
        crate::zmqx::MonitorEventV2 {
            event: u64::from(event),
            value: Some(value),
            local: "tcp://127.0.0.1:5556".into(),
            remote: format!("tcp://127.0.0.1:{remote}"),
        }
    }

    /// A publisher connected while a ZMTP 1.0 peer (ended with no handshake event) and a peer of
    /// another mechanism come and go: two refusals, no publisher's end, whatever the order. Read
    /// by the bound endpoint alone (version 1), the ZMTP 1.0 peer's end was the publisher's.
    #[test]
    fn refused_peers_are_told_from_a_publisher_by_their_remote_end() {
        use crate::security::Refusal;
        use zmq_sys::{
            ZMQ_EVENT_DISCONNECTED as GONE, ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL as NO_DETAIL,
            ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL as FAILED, ZMQ_EVENT_HANDSHAKE_SUCCEEDED as UP,
            ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH as MISMATCH,
        };
        let mut a = Accepts { ends_said: true, ..Accepts::default() };
        let steps: Vec<AcceptedStep> =
            [v2(UP, 0, "40001"), v2(FAILED, u64::from(MISMATCH), "40003"), v2(GONE, 0, "40002"), v2(GONE, 0, "40003")]
                .iter()
                .map(|e| a.on_event(e))
                .collect();
        assert_eq!(
            steps,
            [
                AcceptedStep::Joined,
                AcceptedStep::Refused(Refusal::HandshakeMechanism),
                AcceptedStep::Refused(Refusal::HandshakeProtocol),
                AcceptedStep::None,
            ]
        );
        let c = a.counts;
        assert_eq!((c.connects, c.disconnects, c.refused), (1, 0, 2), "{c:?}");
        // The publisher's own end is its end.
        assert_eq!(a.on_event(&v2(GONE, 0, "40001")), AcceptedStep::Left);
        assert_eq!(a.counts.disconnects, 1);
        // Where ends are not said (a subscriber-facing socket), a peer that hangs up in its
        // handshake refuses nothing; a peer of another mechanism is still refused.
        let mut quiet = Accepts::default();
        for e in [v2(NO_DETAIL, 0, "40004"), v2(GONE, 0, "40004"), v2(GONE, 0, "40005")] {
            assert_eq!(quiet.on_event(&e), AcceptedStep::None);
        }
        assert_eq!(
            quiet.on_event(&v2(FAILED, u64::from(MISMATCH), "40006")),
            AcceptedStep::Refused(Refusal::HandshakeMechanism)
        );
        assert_eq!((quiet.counts.refused, quiet.counts.disconnects), (1, 0));
    }

    /// Past the handshake ledger's bound the accepted counts are off, and that is counted with
    /// them (before: in one stderr line only).
    #[test]
    fn a_full_handshake_ledger_is_counted_with_the_accepted_counts() {
        use zmq_sys::{ZMQ_EVENT_DISCONNECTED as GONE, ZMQ_EVENT_HANDSHAKE_SUCCEEDED as UP};
        let mut a = Accepts {
            ledger: crate::security::HandshakeLedger::with_bound(1),
            ends_said: true,
            counts: Accepted::default(),
        };
        assert_eq!(a.on_event(&v2(UP, 0, "40001")), AcceptedStep::Joined);
        assert_eq!(a.on_event(&v2(UP, 0, "40002")), AcceptedStep::None, "not remembered");
        assert_eq!(a.counts.ledger_forgotten, 1);
        // Its end is then miscounted as a refusal: the count says by how many.
        assert!(matches!(a.on_event(&v2(GONE, 0, "40002")), AcceptedStep::Refused(_)));
        let c = a.counts;
        assert_eq!((c.connects, c.refused, c.ledger_forgotten), (1, 1, 1), "{c:?}");
    }

    /// libzmq sends monitor events with a blocking send from its I/O thread: with the watch's
    /// queue full (2000 events, the two sockets' default HWMs of 1000 added), the I/O thread
    /// waits until the watch has read half of it (the pipe's low-water mark), and every
    /// connection it serves stalls meanwhile: here a PUB's message to a SUB of the same context.
    /// One service must release it (it read 64 events, and 16 services were needed).
    #[test]
    fn one_service_releases_an_io_thread_blocked_on_a_full_monitor_queue() {
        let ctx = zmq::Context::new();
        let publ = ctx.socket(zmq::PUB).expect("pub");
        publ.set_linger(0).expect("linger");
        let data_ep = crate::zmqx::bind_resolved(&publ, "tcp://127.0.0.1:*").expect("bind");
        let sub = ctx.socket(zmq::SUB).expect("sub");
        sub.set_linger(0).expect("linger");
        sub.set_subscribe(b"").expect("subscribe");
        sub.connect(&data_ep).expect("connect");
        sub.set_rcvtimeo(100).expect("rcvtimeo");
        // The data path works: a message gets through within 10 s.
        let through = |within: Duration| {
            let end = Instant::now() + within;
            while Instant::now() < end {
                publ.send(&b"x"[..], 0).expect("send");
                if sub.recv_bytes(0).is_ok() {
                    return true;
                }
            }
            false
        };
        assert!(through(Duration::from_secs(10)), "the data path never worked");
        let mut sock = ctx.socket(zmq::XSUB).expect("xsub");
        sock.set_linger(0).expect("linger");
        let mut watch = LinkWatch::attach_always(&ctx, &mut sock, "test", &[]).expect("watch");
        watch.log = false;
        let ep = crate::zmqx::bind_resolved(&sock, "tcp://127.0.0.1:*").expect("bind");
        let addr: std::net::SocketAddr = ep.trim_start_matches("tcp://").parse().expect("addr");
        // Connections that hang up at once: two events each (no detail, disconnected), until the
        // queue is full and the data path stops. Past the block the rest wait in the listen
        // backlog, or time out.
        let mut made = 0;
        while through(Duration::from_millis(300)) {
            assert!(made < 4000, "{made} connections and the I/O thread never blocked");
            for _ in 0..100 {
                let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50));
            }
            made += 100;
        }
        while sub.recv_bytes(zmq::DONTWAIT).is_ok() {}
        assert!(!through(Duration::from_secs(1)), "the I/O thread was not blocked after {made} connections");
        watch.service(&sock);
        assert!(through(Duration::from_secs(10)), "one service did not release the I/O thread");
    }

    /// Service `watch` until `what` holds of its counters, at most 10 s.
    fn serve_until(watch: &mut LinkWatch, sub: &zmq::Socket, what: impl Fn(&LinkStats) -> bool) -> LinkStats {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            watch.service(sub);
            let s = watch.board().snapshot().remove(0);
            if what(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out; links now: {s}");
            let _ = crate::zmqx::wait_ready(watch.socket(), zmq::POLLIN, Duration::from_millis(20));
        }
    }

    /// A connection that hangs up before its handshake ends, on a bound endpoint: a refusal on
    /// a socket publishers connect to (its ends said), nothing on a subscriber-facing one (a
    /// subscriber torn down as it joins; it was said as "refused a connection" and broke a
    /// benchmark's one-line output).
    #[test]
    fn a_hang_up_mid_handshake_is_refused_only_where_publishers_connect() {
        use std::io::Read;
        let ctx = zmq::Context::new();
        for publisher_facing in [true, false] {
            let mut sock = ctx.socket(if publisher_facing { zmq::XSUB } else { zmq::XPUB }).expect("socket");
            sock.set_linger(0).expect("linger");
            let ep = crate::zmqx::bind_resolved(&sock, "tcp://127.0.0.1:*").expect("bind");
            let mut watch = LinkWatch::attach_always(&ctx, &mut sock, "test", &[]).expect("watch");
            if publisher_facing {
                watch = watch.saying_publisher_ends("test: ended".into(), "--max-msg-bytes", 1024);
            }
            watch.log = false;
            let addr = ep.trim_start_matches("tcp://");
            let mut raw = std::net::TcpStream::connect(addr).expect("raw connect");
            raw.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            raw.shutdown(std::net::Shutdown::Write).expect("hang up");
            // libzmq said the connection's end to the monitor before it closed its side.
            let mut rest = Vec::new();
            raw.read_to_end(&mut rest).expect("libzmq closes its side");
            let deadline = Instant::now() + Duration::from_secs(10);
            while watch.accepted().refused == 0 && publisher_facing {
                watch.service(&sock);
                assert!(Instant::now() < deadline, "no refusal counted");
                let _ = crate::zmqx::wait_ready(watch.socket(), zmq::POLLIN, Duration::from_millis(20));
            }
            watch.service(&sock);
            let a = watch.accepted();
            assert_eq!((a.refused, a.disconnects), (u64::from(publisher_facing), 0), "{publisher_facing}: {a:?}");
        }
    }

    /// A real SUB with a 1 KiB limit, a PUB sending 2 KiB: libzmq drops the
    /// link and does not reconnect; the watch sees it, re-establishes it and
    /// the next message arrives.
    #[test]
    fn an_oversized_message_is_seen_and_the_link_comes_back() {
        let ctx = zmq::Context::new();
        let publ = ctx.socket(zmq::XPUB).expect("xpub");
        publ.set_xpub_verbose(true).expect("verbose");
        let ep = crate::zmqx::bind_resolved(&publ, "tcp://127.0.0.1:*").expect("bind");
        let mut sub = ctx.socket(zmq::SUB).expect("sub");
        sub.set_maxmsgsize(1024).expect("maxmsgsize");
        sub.set_subscribe(b"").expect("subscribe");
        let mut watch =
            LinkWatch::attach(&ctx, &mut sub, "test", std::slice::from_ref(&ep)).expect("watch").expect("some");
        sub.connect(&ep).expect("connect");
        publ.set_rcvtimeo(10_000).expect("rcvtimeo");
        assert_eq!(publ.recv_bytes(0).expect("subscription"), b"\x01");
        serve_until(&mut watch, &sub, |s| s.state == "up");
        publ.send(vec![0u8; 2048], 0).expect("send oversized");
        let s = serve_until(&mut watch, &sub, |s| s.reconnects == 1);
        assert_eq!(s.lost.get("protocol_error"), Some(&1), "{s}");
        assert_eq!((s.reestablished, s.connects), (1, 2), "{s}");
        // The re-created connection subscribed again.
        assert_eq!(publ.recv_bytes(0).expect("subscription again"), b"\x01");
        publ.send(&b"after"[..], 0).expect("send");
        sub.set_rcvtimeo(10_000).expect("rcvtimeo");
        assert_eq!(sub.recv_bytes(0).expect("after"), b"after");
    }

    /// CURVE on one side only, either way round: libzmq's HANDSHAKE_FAILED_PROTOCOL carries
    /// ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, and the loss is named for it (it was
    /// `handshake_failed_protocol`: "the peer broke the ZMTP handshake").
    #[test]
    fn curve_on_one_side_only_is_a_mechanism_mismatch() {
        let server_keys = zmq::CurveKeyPair::new().expect("server keys");
        let client_keys = zmq::CurveKeyPair::new().expect("client keys");
        for curve_server in [true, false] {
            let ctx = zmq::Context::new();
            let publ = ctx.socket(zmq::PUB).expect("pub");
            publ.set_linger(0).expect("linger");
            if curve_server {
                publ.set_curve_server(true).expect("curve server");
                publ.set_curve_secretkey(&server_keys.secret_key).expect("secret key");
            }
            let ep = crate::zmqx::bind_resolved(&publ, "tcp://127.0.0.1:*").expect("bind");
            let mut sub = ctx.socket(zmq::SUB).expect("sub");
            sub.set_linger(0).expect("linger");
            if !curve_server {
                sub.set_curve_serverkey(&server_keys.public_key).expect("server key");
                sub.set_curve_publickey(&client_keys.public_key).expect("public key");
                sub.set_curve_secretkey(&client_keys.secret_key).expect("secret key");
            }
            let mut watch =
                LinkWatch::attach(&ctx, &mut sub, "test", std::slice::from_ref(&ep)).expect("watch").expect("some");
            watch.log = false;
            sub.connect(&ep).expect("connect");
            // Which end reads the other's greeting first is libzmq's timing: the one that does
            // names the mismatch and hangs up, and the other sees a handshake with no detail
            // (libzmq retries), at every attempt if it loses every race. Either is counted as
            // what it is, never as a protocol error.
            let s = serve_until(&mut watch, &sub, |s| {
                s.lost.contains_key("handshake_failed_mechanism") || s.lost.contains_key("handshake_failed")
            });
            assert_eq!(
                (s.connects, s.lost.get("handshake_failed_protocol")),
                (0, None),
                "curve server {curve_server}: {s}"
            );
        }
    }

    /// The peer closes its end: libzmq retries by itself and the watch only counts.
    #[test]
    fn a_peer_that_goes_away_and_comes_back_is_a_reconnect() {
        let ctx = zmq::Context::new();
        let publ = ctx.socket(zmq::PUB).expect("pub");
        let ep = crate::zmqx::bind_resolved(&publ, "tcp://127.0.0.1:*").expect("bind");
        let mut sub = ctx.socket(zmq::SUB).expect("sub");
        sub.set_reconnect_ivl(20).expect("ivl");
        let mut watch =
            LinkWatch::attach(&ctx, &mut sub, "test", std::slice::from_ref(&ep)).expect("watch").expect("some");
        sub.connect(&ep).expect("connect");
        serve_until(&mut watch, &sub, |s| s.state == "up");
        drop(publ);
        let s = serve_until(&mut watch, &sub, |s| s.lost_total() == 1);
        assert_eq!(s.lost.get("disconnected"), Some(&1), "{s}");
        let publ = ctx.socket(zmq::PUB).expect("pub");
        publ.bind(&ep).expect("bind the same port again");
        let s = serve_until(&mut watch, &sub, |s| s.reconnects == 1);
        assert_eq!((s.reestablished, s.state.as_str()), (0, "up"), "{s}");
    }
}
