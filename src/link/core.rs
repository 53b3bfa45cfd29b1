//! The socket-free half of link watching: libzmq socket-monitor events in,
//! decisions and counters out, driven by `now_ns`.
//!
//! What libzmq 4.3.5 does on a connecting socket, and what this core reads
//! from it (`session_base.cpp`, `stream_engine_base.cpp`):
//!
//! - a connection error or timeout (the peer went away, the path broke):
//!   `DISCONNECTED`, then the session reconnects by itself and the connecter
//!   announces `CONNECT_RETRIED` at once (the retry timer is armed as the
//!   session restarts). The link is [`Reason::Disconnected`]; nothing to do.
//! - a protocol error (a message over `ZMQ_MAXMSGSIZE`, a malformed ZMTP
//!   stream, a failed security handshake): `DISCONNECTED` (after
//!   `HANDSHAKE_FAILED_PROTOCOL`/`_AUTH` for handshake failures) and then
//!   nothing: the session terminates and the socket never reconnects. No
//!   event names the oversized message; the missing retry is the sign.
//!   After [`RETRY_GRACE_NS`] without a `CONNECT_RETRIED` the core decides
//!   [`Decision::Reestablish`] (the shell disconnects and connects again)
//!   and the link is counted as [`Reason::ProtocolError`] (or the handshake
//!   failure that preceded it).
//!
//! Each attempt is judged a grace after its own last event, also when the outage was counted
//! long before: libzmq reads `HANDSHAKE_FAILED`, then `DISCONNECTED`, then (when it retries)
//! `CONNECT_RETRIED`, and a watch may read them in two services; judged at the first, a failed
//! handshake was taken for a protocol error and a retried one for one libzmq gave up on.
//!
//! **Re-establishing backs off.** A link that libzmq gives up on again and again (a key the
//! server does not allow, a peer that sends oversized frames all the time) would otherwise be
//! re-established a few times a second forever. The first re-establishment after a link was
//! up for [`STABLE_AFTER_NS`] (or the first ever) is at once; each further one waits twice as
//! long as the one before, from [`BACKOFF_MIN_NS`] up to [`BACKOFF_MAX_NS`]. Every loss is
//! still counted.
//!
//! Each loss is counted once per endpoint and reason, with one
//! [`Decision::Lost`] for the log; the next `HANDSHAKE_SUCCEEDED` is a
//! [`Decision::Up`] (a reconnect, with how long the link was down).
//!
//! **The end of a stream is not a loss.** A publisher closes its end right after its end of
//! stream; the owner calls [`Links::end_of_stream`] once it has every end of stream it waits
//! for. Every link up then, or closed within the grace before it, shows `ended`: whether
//! the publisher's close was read before the owner finished is a race, and the state does not
//! depend on it. From then on a disconnect is the stream's end (still `ended`, nothing counted
//! or said), and a plain disconnect counted within the grace before it (the monitor event can be
//! read before the end-of-stream message it follows) is taken back: [`Links::end_of_stream`]
//! returns those links, so a shell that holds its `disconnected` lines for the grace
//! ([`Decision::Lost`] says which) drops them unsaid.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How long after a `DISCONNECTED` libzmq has to show it reconnects (its
/// `CONNECT_RETRIED` follows within microseconds on the same I/O thread).
pub const RETRY_GRACE_NS: u64 = 250_000_000;

/// How long a link may stay unreached (libzmq retrying a connect nobody answers) before
/// [`Decision::NotUp`] says so, once.
pub const NOT_UP_AFTER_NS: u64 = 5_000_000_000;

/// How long detail-less handshake failures that libzmq retries are held for an attempt that
/// says more (a mechanism mismatch) before they are counted as `handshake_failed`.
pub const NO_DETAIL_HOLD_NS: u64 = 1_000_000_000;

/// How long a link that was up may stay lost before [`Decision::StillLost`] says so (a loss is
/// said once, when it happens; a link that never comes back was said no more).
pub const STILL_LOST_AFTER_NS: u64 = 5_000_000_000;

/// While a link stays lost, [`Decision::StillLost`] is said again this often.
pub const STILL_LOST_EVERY_NS: u64 = 60_000_000_000;

/// The wait before the second re-establishment in a row; it doubles with each further one.
pub const BACKOFF_MIN_NS: u64 = 100_000_000;

/// The longest wait between two re-establishments of one link.
pub const BACKOFF_MAX_NS: u64 = 30_000_000_000;

/// A link up for this long before it is lost again starts the back-off over (re-established at
/// once). Short: the back-off is for links that fail their handshake or are cut as soon as they
/// are up; a feed that carries data for a second and then sends one bad frame is re-established
/// at once each time, as before there was a back-off.
pub const STABLE_AFTER_NS: u64 = 1_000_000_000;

/// One socket-monitor event, as far as links care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// TCP connection made (the ZMTP handshake follows).
    Connected,
    /// libzmq armed its reconnect timer (a connect failed or a link was lost).
    ConnectRetried,
    /// The connection is gone.
    Disconnected,
    /// ZMTP handshake done: messages flow.
    HandshakeSucceeded,
    /// The handshake failed: no detail (the connection broke during it),
    /// a protocol error, or authentication refused.
    HandshakeFailed(Failure),
    /// libzmq could not accept a connection on a bound endpoint: the `accept()` errno
    /// ([`crate::wire::handshake::AcceptFailure`]).
    AcceptFailed(i32),
    /// Anything else (closed, delayed, accepted on a bound endpoint...).
    Other,
}

/// Kinds of handshake failure libzmq reports (the one classifier: [`Failure::of_event`]).
pub use crate::wire::handshake::HandshakeFailure as Failure;
use crate::wire::handshake::Side;

/// Why a link was lost, as counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Connection lost; libzmq reconnects by itself.
    Disconnected,
    /// Dropped by libzmq for a protocol error (an oversized message or a
    /// malformed stream) with no reconnect: mdsub re-established it.
    ProtocolError,
    /// The handshake broke off (libzmq retries).
    HandshakeFailed,
    /// The peer spoke bad ZMTP during the handshake (no libzmq retry).
    HandshakeFailedProtocol,
    /// The peer's greeting names another security mechanism: CURVE on one side only (no
    /// libzmq retry).
    HandshakeFailedMechanism,
    /// Security handshake refused (no libzmq retry).
    HandshakeFailedAuth,
    /// The handshake failed without a reason from libzmq, and libzmq gave up (with CURVE: a
    /// server key that is not the server's, or a server that does not speak CURVE).
    HandshakeFailedNoDetail,
}

impl Reason {
    /// Counter name.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Disconnected => "disconnected",
            Reason::ProtocolError => "protocol_error",
            Reason::HandshakeFailed => "handshake_failed",
            Reason::HandshakeFailedProtocol => "handshake_failed_protocol",
            Reason::HandshakeFailedMechanism => "handshake_failed_mechanism",
            Reason::HandshakeFailedAuth => "handshake_failed_auth",
            Reason::HandshakeFailedNoDetail => "handshake_failed_no_detail",
        }
    }

    /// What it means, for the log line, on a socket that presents CURVE keys (`curve`) or
    /// not: the hints about keys are for the first only. A failed handshake libzmq gave up on
    /// is said from the one table of handshake failures ([`Failure::explain`]).
    pub fn explain(self, curve: bool) -> &'static str {
        match (self, curve) {
            (Reason::Disconnected, _) => "connection lost; libzmq reconnects",
            (Reason::ProtocolError, _) => {
                "dropped by libzmq for a protocol error (a message over the maximum message size, \
                 or a malformed stream) and not reconnected by it; mdsub re-establishes the link \
                 (backing off to once every 30 s while it keeps failing)"
            }
            // A keyless link at a server that demands CURVE: whichever end reads the other's
            // greeting first is libzmq's timing; when the server does, it hangs up and this side
            // sees a handshake with no detail at every attempt, never the mismatch.
            (Reason::HandshakeFailed, false) => {
                "handshake broke off; libzmq retries (one that breaks off at every attempt is most \
                 often a server that demands CURVE, which hangs up on this side's greeting without \
                 keys: give --server-key (the server's NAME.pub) and --curve-key (this side's \
                 NAME.key), or a peer that is no ZeroMQ peer)"
            }
            (Reason::HandshakeFailed, true) => {
                "handshake broke off; libzmq retries (with CURVE, one that breaks off at every \
                 attempt is most often a --server-key that is not the server's public key, so the \
                 server cannot read this side's HELLO and closes, or a server that does not speak \
                 CURVE and closed before this side read its greeting)"
            }
            (Reason::HandshakeFailedProtocol, _) => Failure::Protocol.explain(Side::Client, curve),
            (Reason::HandshakeFailedMechanism, _) => Failure::MechanismMismatch.explain(Side::Client, curve),
            (Reason::HandshakeFailedAuth, _) => Failure::Auth.explain(Side::Client, curve),
            (Reason::HandshakeFailedNoDetail, _) => Failure::NoDetail.explain(Side::Client, curve),
        }
    }
}

/// What the shell should do or say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Link `link` was lost for `reason` (log once).
    Lost { link: usize, reason: Reason },
    /// Disconnect and connect `link` again: libzmq will not.
    Reestablish { link: usize },
    /// Link `link` is up again after `down_ns` (its `reconnects`-th reconnect).
    Up { link: usize, down_ns: u64, reconnects: u64 },
    /// Link `link` was never up: libzmq has retried its connect for `for_ns` (said once, after
    /// [`NOT_UP_AFTER_NS`]; nobody serves the endpoint, or a firewall drops the attempts).
    NotUp { link: usize, for_ns: u64, attempts: u64 },
    /// Link `link`, lost for `reason` (the last loss counted), is still not back after `for_ns`
    /// (said [`STILL_LOST_AFTER_NS`] after the loss, then every [`STILL_LOST_EVERY_NS`]).
    StillLost { link: usize, for_ns: u64, reason: Reason },
}

/// A link that did not come up within [`NOT_UP_AFTER_NS`], held for an owner that says
/// it itself (`LinkWatch::hold_not_up`; the clone client's core says one line per server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotUp {
    pub endpoint: String,
    pub for_ns: u64,
    pub attempts: u64,
    /// Why, when the shell knows (a name that does not resolve): said instead of the attempts and
    /// "nothing answers there".
    pub cause: Option<String>,
}

impl NotUp {
    /// The line a watch says for it: `NAME: link EP not up after 5s (N connection attempts):
    /// nothing answers there; …`, or with its cause, `NAME: link EP not up after 5s: CAUSE; …`.
    pub fn line(&self, name: &str) -> String {
        let (ep, after) = (&self.endpoint, whole_seconds(self.for_ns));
        match &self.cause {
            Some(why) => format!("{name}: link {ep} not up after {after}: {why}; libzmq keeps trying"),
            None => format!(
                "{name}: link {ep} not up after {after} ({} connection attempts): nothing answers there; libzmq \
                 keeps trying",
                self.attempts
            ),
        }
    }
}

/// A while of a link's (`5s`, `65s`, `1m`): whole seconds, as the duration flags take them
/// ([`crate::diag::human_duration`]); a line said when a threshold passed needs no finer.
pub fn whole_seconds(ns: u64) -> String {
    crate::diag::human_duration(ns - ns % 1_000_000_000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connecting (first time, or retrying): not yet up.
    Connecting,
    Up,
    /// Disconnected (down since `since_ns`), waiting to see whether libzmq
    /// retries; `counted`: this outage was already counted (a failed attempt
    /// to come back). The grace runs from `at_ns`, this attempt's last event: an outage
    /// counted long ago must not cut short the wait for the `DISCONNECTED` that follows a
    /// failed handshake (read then alone, it was taken for a protocol error).
    Down {
        since_ns: u64,
        at_ns: u64,
        failure: Option<Failure>,
        counted: bool,
    },
    /// A handshake failed with no detail and libzmq retries (down since `since_ns`, retried at
    /// `at_ns`): a later attempt decides what to count. A keyed client at a plain server reads
    /// detail-less failures first (the server closes before its greeting is read) and
    /// `MECHANISM_MISMATCH` at a later attempt; judged at once, it was said as a broken-off
    /// handshake (a wrong `--server-key`) before the right line. Counted `handshake_failed` when
    /// an attempt comes up, when none comes within the grace, or when the attempts still fail
    /// without detail [`NO_DETAIL_HOLD_NS`] after the first.
    Retrying {
        since_ns: u64,
        at_ns: u64,
    },
    /// Lost for `reason` since `since_ns`; libzmq or mdsub is reconnecting.
    Lost {
        since_ns: u64,
    },
    /// The stream ended: every end of stream the owner waits for arrived while the link was up,
    /// or its publisher closed just before (within the grace) or after it; nothing was lost.
    Ended,
}

/// One watched endpoint's counters, as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// The endpoint as configured.
    pub endpoint: String,
    /// `up`, `connecting`, `down`, or `ended` (every end of stream its owner waits for arrived
    /// while it was up; the publisher may have closed since: that is no loss).
    pub state: String,
    /// Handshakes completed (the first connect included).
    pub connects: u64,
    /// Times the link came back after being lost.
    pub reconnects: u64,
    /// Times mdsub disconnected and connected it again (libzmq would not).
    pub reestablished: u64,
    /// Reconnect attempts libzmq announced (every retry interval while the peer is away).
    pub retries: u64,
    /// Losses by reason (`disconnected`, `protocol_error`, `handshake_failed*`).
    pub lost: BTreeMap<String, u64>,
    /// How long it has been in `state` (ns), as of when the counters were read
    /// ([`LinkStats::at`]; 0 in a status from an engine that does not say it).
    #[serde(default)]
    pub for_ns: u64,
    /// Time it was not up (ns): connecting (the first time too) or down, the spell it is in now
    /// included, as of when the counters were read; `ended` is not down.
    #[serde(default)]
    pub down_ns: u64,
    /// When it entered `state` (the owner's monotonic clock, ns): the base of `for_ns`, never
    /// published (another process's clock means nothing).
    #[serde(skip)]
    pub since_ns: u64,
}

impl LinkStats {
    /// These counters as of `now_ns` (the owner's monotonic clock): `for_ns` and `down_ns` with
    /// the spell the link is in now up to then.
    pub fn at(&self, now_ns: u64) -> LinkStats {
        let for_ns = now_ns.saturating_sub(self.since_ns);
        let down_now = if self.is_down() { for_ns } else { 0 };
        LinkStats { for_ns, down_ns: self.down_ns.saturating_add(down_now), ..self.clone() }
    }

    /// Not up and not ended: connecting or down.
    pub fn is_down(&self) -> bool {
        self.state != "up" && self.state != "ended"
    }

    /// All losses, every reason.
    pub fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }
}

impl std::fmt::Display for LinkStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} connects={} reconnects={} reestablished={} retries={}",
            self.endpoint, self.state, self.connects, self.reconnects, self.reestablished, self.retries
        )?;
        for (reason, n) in &self.lost {
            write!(f, " {reason}={n}")?;
        }
        Ok(())
    }
}

struct Link {
    /// As configured.
    endpoint: String,
    /// The forms libzmq may name it by in events (`tcp://IP:PORT`).
    aliases: Vec<String>,
    state: State,
    /// The reason of the last loss counted.
    last_reason: Option<Reason>,
    /// When libzmq first retried a connect that never came up, and whether that was said.
    first_retry_ns: Option<u64>,
    said_not_up: bool,
    /// The wait before the next re-establishment (0: at once).
    backoff_ns: u64,
    /// A re-establishment waiting for its back-off: when it is due.
    reestablish_at: Option<u64>,
    /// When the link last came up (its handshake), while it is up.
    up_since_ns: Option<u64>,
    /// While it is lost: when [`Decision::StillLost`] is due.
    still_lost_at: Option<u64>,
    stats: LinkStats,
}

/// The links of one socket: events in, decisions out.
pub struct Links {
    links: Vec<Link>,
    grace_ns: u64,
    /// Every end of stream the owner waits for has arrived: a disconnect is the stream's end.
    ended: bool,
}

impl Links {
    /// Watch `endpoints` (each with the names libzmq may use for it in events,
    /// see [`aliases`]), all connecting as of `now_ns`.
    pub fn new(endpoints: Vec<(String, Vec<String>)>, grace_ns: u64, now_ns: u64) -> Self {
        let links = endpoints
            .into_iter()
            .map(|(endpoint, aliases)| Link {
                stats: LinkStats {
                    endpoint: endpoint.clone(),
                    state: "connecting".into(),
                    since_ns: now_ns,
                    ..LinkStats::default()
                },
                endpoint,
                aliases,
                state: State::Connecting,
                last_reason: None,
                first_retry_ns: None,
                said_not_up: false,
                backoff_ns: 0,
                reestablish_at: None,
                up_since_ns: None,
                still_lost_at: None,
            })
            .collect();
        Links { links, grace_ns, ended: false }
    }

    /// The grace a loss waits for a retry (and a held `disconnected` line for an end of stream).
    pub fn grace_ns(&self) -> u64 {
        self.grace_ns
    }

    /// Every end of stream the owner waits for arrived at `now_ns`: a link up now shows `ended`,
    /// and from now on a disconnect is its stream's end (still `ended`, not a loss, nothing to
    /// say or re-establish). A link counted `disconnected` within the grace before now and not
    /// back since is taken back (`ended`, the count undone): those links are returned, so their
    /// held lines go unsaid.
    pub fn end_of_stream(&mut self, now_ns: u64) -> Vec<usize> {
        self.ended = true;
        let mut taken_back = Vec::new();
        for (i, l) in self.links.iter_mut().enumerate() {
            match l.state {
                State::Up | State::Down { counted: false, .. } => l.state = State::Ended,
                State::Lost { since_ns }
                    if l.last_reason == Some(Reason::Disconnected)
                        && now_ns.saturating_sub(since_ns) <= self.grace_ns =>
                {
                    if let Some(n) = l.stats.lost.get_mut(Reason::Disconnected.name()) {
                        *n -= 1;
                        if *n == 0 {
                            l.stats.lost.remove(Reason::Disconnected.name());
                        }
                    }
                    l.last_reason = None;
                    l.state = State::Ended;
                    taken_back.push(i);
                }
                _ => {}
            }
            Self::publish_state(l, now_ns);
        }
        taken_back
    }

    /// Which link an event's endpoint names (None: not one of ours, e.g. a
    /// connection accepted on an endpoint the same socket binds).
    pub fn find(&self, endpoint: &str) -> Option<usize> {
        self.links.iter().position(|l| l.endpoint == endpoint || l.aliases.iter().any(|a| a == endpoint))
    }

    /// The endpoint of link `link` as configured.
    pub fn endpoint(&self, link: usize) -> &str {
        &self.links[link].endpoint
    }

    /// Take one event for `endpoint` at `now_ns`; decisions go to `out`.
    pub fn on_event(&mut self, event: Event, endpoint: &str, now_ns: u64, out: &mut Vec<Decision>) {
        let Some(i) = self.find(endpoint) else { return };
        let ended = self.ended;
        let l = &mut self.links[i];
        // A handshake read after the end of stream (an owner reads its monitor between rounds)
        // is counted below, and its link ends as if it had been read before.
        if ended && event != Event::HandshakeSucceeded {
            // After the end of stream: the peer closing (and libzmq retrying) is not a loss.
            if matches!(event, Event::Disconnected | Event::HandshakeFailed(_)) && l.state == State::Up {
                l.state = State::Ended;
            }
            if let State::Down { counted: false, .. } = l.state {
                l.state = State::Ended;
            }
            if event == Event::ConnectRetried {
                l.stats.retries += 1;
            }
            Self::publish_state(l, now_ns);
            return;
        }
        if matches!(event, Event::Disconnected | Event::HandshakeFailed(_)) {
            // A link that stayed up a while starts the back-off over.
            if let Some(up) = l.up_since_ns.take() {
                if now_ns.saturating_sub(up) >= STABLE_AFTER_NS {
                    l.backoff_ns = 0;
                }
            }
        }
        match event {
            Event::HandshakeSucceeded => {
                if let State::Retrying { since_ns, .. } = l.state {
                    // The next attempt came up: the one before only broke off.
                    Self::lose(l, i, Reason::HandshakeFailed, since_ns, out);
                }
                l.stats.connects += 1;
                l.still_lost_at = None;
                l.up_since_ns = Some(now_ns);
                l.reestablish_at = None;
                if let State::Lost { since_ns } = l.state {
                    l.stats.reconnects += 1;
                    out.push(Decision::Up {
                        link: i,
                        down_ns: now_ns.saturating_sub(since_ns),
                        reconnects: l.stats.reconnects,
                    });
                }
                // A handshake read after the end of stream (the one the stream came through, or
                // a link's return from a loss): the stream ended on it, as on one up at the end.
                l.state = if ended { State::Ended } else { State::Up };
            }
            Event::HandshakeFailed(kind) => {
                // DISCONNECTED follows; keep the detail for it (a held detail-less failure stays
                // held, with its start, until an attempt says more or the hold ends).
                l.state = Self::down(l.state, Some(kind), now_ns);
            }
            Event::Disconnected => {
                let failure = match l.state {
                    State::Down { failure, .. } => failure,
                    State::Retrying { since_ns, .. } => {
                        Self::lose(l, i, Reason::HandshakeFailed, since_ns, out);
                        None
                    }
                    _ => None,
                };
                l.state = Self::down(l.state, failure, now_ns);
            }
            Event::ConnectRetried => {
                l.stats.retries += 1;
                match l.state {
                    State::Connecting if !l.said_not_up => {
                        let first = *l.first_retry_ns.get_or_insert(now_ns);
                        if now_ns.saturating_sub(first) >= NOT_UP_AFTER_NS {
                            l.said_not_up = true;
                            out.push(Decision::NotUp {
                                link: i,
                                for_ns: now_ns.saturating_sub(first),
                                attempts: l.stats.retries,
                            });
                        }
                    }
                    State::Down { since_ns, counted: true, .. } => l.state = State::Lost { since_ns },
                    State::Down { since_ns, failure: Some(Failure::NoDetail), counted: false, .. } => {
                        l.state = State::Retrying { since_ns, at_ns: now_ns };
                    }
                    State::Down { since_ns, failure, counted: false, .. } => {
                        let reason = match failure {
                            None => Reason::Disconnected,
                            Some(_) => Reason::HandshakeFailed,
                        };
                        Self::lose(l, i, reason, since_ns, out);
                    }
                    _ => {}
                }
            }
            Event::Connected | Event::AcceptFailed(_) | Event::Other => {}
        }
        Self::publish_state(l, now_ns);
    }

    /// Look at the time: a link down for longer than the grace with no retry
    /// from libzmq is counted and re-established (at once, or when its back-off is over).
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Decision>) {
        for (i, l) in self.links.iter_mut().enumerate() {
            if let State::Retrying { since_ns, at_ns } = l.state {
                if now_ns.saturating_sub(at_ns) >= self.grace_ns || now_ns.saturating_sub(since_ns) >= NO_DETAIL_HOLD_NS
                {
                    // No attempt said more: a broken-off handshake libzmq retries.
                    Self::lose(l, i, Reason::HandshakeFailed, since_ns, out);
                    Self::publish_state(l, now_ns);
                }
            }
            if let Some(at) = l.still_lost_at {
                match (l.state, l.last_reason) {
                    (State::Lost { since_ns } | State::Down { since_ns, counted: true, .. }, Some(reason))
                        if now_ns >= at =>
                    {
                        l.still_lost_at = Some(now_ns.saturating_add(STILL_LOST_EVERY_NS));
                        out.push(Decision::StillLost { link: i, for_ns: now_ns.saturating_sub(since_ns), reason });
                    }
                    (State::Lost { .. } | State::Down { counted: true, .. }, _) => {}
                    _ => l.still_lost_at = None,
                }
            }
            if let State::Down { since_ns, at_ns, failure, .. } = l.state {
                if now_ns.saturating_sub(at_ns) >= self.grace_ns {
                    let reason = match failure {
                        Some(Failure::Protocol | Failure::Crypto) => Reason::HandshakeFailedProtocol,
                        Some(Failure::MechanismMismatch) => Reason::HandshakeFailedMechanism,
                        Some(Failure::Auth) => Reason::HandshakeFailedAuth,
                        Some(Failure::NoDetail) => Reason::HandshakeFailedNoDetail,
                        None => Reason::ProtocolError,
                    };
                    Self::lose(l, i, reason, since_ns, out);
                    l.reestablish_at = Some(now_ns.saturating_add(l.backoff_ns));
                    Self::publish_state(l, now_ns);
                }
            }
            if let Some(at) = l.reestablish_at {
                match l.state {
                    State::Lost { .. } if now_ns >= at => {
                        l.reestablish_at = None;
                        l.stats.reestablished += 1;
                        l.backoff_ns = l.backoff_ns.saturating_mul(2).clamp(BACKOFF_MIN_NS, BACKOFF_MAX_NS);
                        out.push(Decision::Reestablish { link: i });
                    }
                    State::Lost { .. } | State::Down { .. } | State::Retrying { .. } => {}
                    // Up again or ended: nothing left to re-establish.
                    State::Up | State::Connecting | State::Ended => l.reestablish_at = None,
                }
            }
        }
    }

    /// The owner stops: a link that went down within the grace and is not counted yet (libzmq
    /// had not shown whether it retries) is counted now, so no summary says `down` with no
    /// loss: a plain disconnect as `disconnected` (whether libzmq would have reconnected no
    /// longer matters), a failed handshake under its kind (`handshake_failed` when libzmq gave
    /// no detail). Its [`Decision::Lost`] goes to `out`, to be said.
    pub fn finish(&mut self, out: &mut Vec<Decision>) {
        // A retrying or down link is lost now: its published state (`down`) stays as it is.
        for (i, l) in self.links.iter_mut().enumerate() {
            if let State::Retrying { since_ns, .. } = l.state {
                Self::lose(l, i, Reason::HandshakeFailed, since_ns, out);
            }
            if let State::Down { since_ns, failure, counted: false, .. } = l.state {
                let reason = match failure {
                    None => Reason::Disconnected,
                    Some(Failure::NoDetail) => Reason::HandshakeFailed,
                    Some(Failure::Protocol | Failure::Crypto) => Reason::HandshakeFailedProtocol,
                    Some(Failure::MechanismMismatch) => Reason::HandshakeFailedMechanism,
                    Some(Failure::Auth) => Reason::HandshakeFailedAuth,
                };
                Self::lose(l, i, reason, since_ns, out);
                l.reestablish_at = None;
            }
            // Nothing more to say once the owner stops.
            l.still_lost_at = None;
        }
    }

    /// The owner could not connect `link` again (its `connect` failed): try again after the
    /// link's next back-off step, rather than leave it lost with nothing scheduled.
    pub fn retry_later(&mut self, link: usize, now_ns: u64) {
        let l = &mut self.links[link];
        if let State::Lost { .. } = l.state {
            l.reestablish_at = Some(now_ns.saturating_add(l.backoff_ns.max(BACKOFF_MIN_NS)));
        }
    }

    /// True while some link waits for the grace to pass or for its back-off (the shell then
    /// calls [`Links::tick`] soon, even without events).
    pub fn pending(&self) -> bool {
        self.links.iter().any(|l| {
            // A still-lost line needs no tick of its own: libzmq announces each retry, and a link
            // it gave up on waits for its re-establishment.
            matches!(l.state, State::Down { .. } | State::Retrying { .. }) || l.reestablish_at.is_some()
        })
    }

    /// The state after a disconnect or failed handshake in state `was`: an
    /// outage already counted stays counted, with its start.
    fn down(was: State, failure: Option<Failure>, now_ns: u64) -> State {
        match was {
            State::Lost { since_ns } => State::Down { since_ns, at_ns: now_ns, failure, counted: true },
            State::Down { since_ns, counted, .. } => State::Down { since_ns, at_ns: now_ns, failure, counted },
            State::Retrying { since_ns, .. } => State::Down { since_ns, at_ns: now_ns, failure, counted: false },
            State::Up | State::Connecting | State::Ended => {
                State::Down { since_ns: now_ns, at_ns: now_ns, failure, counted: false }
            }
        }
    }

    fn lose(l: &mut Link, i: usize, reason: Reason, since_ns: u64, out: &mut Vec<Decision>) {
        *l.stats.lost.entry(reason.name().to_string()).or_insert(0) += 1;
        l.last_reason = Some(reason);
        l.still_lost_at.get_or_insert(since_ns.saturating_add(STILL_LOST_AFTER_NS));
        l.state = State::Lost { since_ns };
        out.push(Decision::Lost { link: i, reason });
    }

    /// Publish the link's state at `now_ns`: a new one starts its `since_ns`, and the spell not
    /// up that it ends is added to `down_ns`.
    fn publish_state(l: &mut Link, now_ns: u64) {
        let s = match l.state {
            State::Up => "up",
            State::Connecting => "connecting",
            State::Down { .. } | State::Retrying { .. } | State::Lost { .. } => "down",
            State::Ended => "ended",
        };
        if l.stats.state != s {
            if l.stats.is_down() {
                l.stats.down_ns = l.stats.down_ns.saturating_add(now_ns.saturating_sub(l.stats.since_ns));
            }
            l.stats.state = s.to_string();
            l.stats.since_ns = now_ns;
        }
    }

    /// Links connected now (up, or up with every end of stream in: their connection may stay).
    pub fn connected(&self) -> u64 {
        self.links.iter().filter(|l| matches!(l.state, State::Up | State::Ended)).count() as u64
    }

    /// Every link's counters now.
    pub fn stats(&self) -> Vec<LinkStats> {
        self.links.iter().map(|l| l.stats.clone()).collect()
    }
}

/// The names libzmq may give a connect endpoint in its events: the endpoint
/// itself, and for `tcp://[SRC;]HOST:PORT` the `tcp://IP:PORT` of each
/// address `resolved` gives for `HOST:PORT` (the shell passes the resolver's
/// answer, so this stays I/O-free).
pub fn aliases(endpoint: &str, resolved: &[std::net::SocketAddr]) -> Vec<String> {
    let mut out = vec![endpoint.to_string()];
    if let Some(target) = tcp_target(endpoint) {
        out.push(format!("tcp://{target}"));
        for a in resolved {
            out.push(format!("tcp://{a}"));
        }
    }
    out.dedup();
    out
}

/// The `HOST:PORT` part of a tcp endpoint, for the shell to resolve.
pub fn tcp_target(endpoint: &str) -> Option<&str> {
    crate::endpoint::tcp_parts(endpoint).map(|(_, target)| target)
}

/// What the command that owns a watched socket lets a person do about CURVE on it, so that a
/// loss line names only flags the command has (`LinkWatch::keys_by`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyFlags {
    /// `--server-key` and `--curve-key` give this socket its keys (the engine's feeds,
    /// `clone-client`): [`Reason::explain`] as it is.
    #[default]
    ServerAndCurveKey,
    /// No flag gives this socket keys: the command does not speak CURVE on it (`top`, `lvc`,
    /// `tap`, the engine's `--store`).
    NoKeys,
    /// Each half of a Binary Star pair connects to the other with its own `--curve-key` as the
    /// server's key: both halves must be given the same one (`clone-server` has no `--server-key`).
    SameCurveKey,
}

impl KeyFlags {
    /// What `reason` means on a socket that presents CURVE keys (`curve`) or not, said with the
    /// flags this owner has: [`Reason::explain`] names a client command's `--server-key` and
    /// `--curve-key`, and is said as it is where those are the flags.
    pub fn explain(self, reason: Reason, curve: bool) -> &'static str {
        match (self, reason, curve) {
            (KeyFlags::NoKeys, Reason::HandshakeFailedMechanism, _) => {
                "the peer uses another security mechanism: the server demands CURVE, and this command \
                 does not speak CURVE on this link (no flag gives it keys). That will not fix itself: \
                 connect it to a server without --curve-key. mdsub keeps re-establishing the link, \
                 backing off to once every 30 s"
            }
            (KeyFlags::SameCurveKey, Reason::HandshakeFailedMechanism, _) => {
                "the peer uses another security mechanism: one half of the Binary Star pair has \
                 --curve-key and the other has not. That will not fix itself: give both halves the \
                 same --curve-key (or neither). mdsub keeps re-establishing the link, backing off to \
                 once every 30 s"
            }
            (KeyFlags::NoKeys, Reason::HandshakeFailed, false) => {
                "handshake broke off; libzmq retries (one that breaks off at every attempt is most \
                 often a server that demands CURVE, which hangs up on this side's greeting without \
                 keys: this command does not speak CURVE on this link, so connect it to a server \
                 without --curve-key; or a peer that is no ZeroMQ peer)"
            }
            (KeyFlags::SameCurveKey, Reason::HandshakeFailed, false) => {
                "handshake broke off; libzmq retries (one that breaks off at every attempt is most \
                 often the other half of the pair given --curve-key and this half not: give both \
                 halves the same --curve-key, or neither)"
            }
            (KeyFlags::SameCurveKey, Reason::HandshakeFailed, true) => {
                "handshake broke off; libzmq retries (with CURVE, one that breaks off at every attempt \
                 is most often the two halves of the pair given different --curve-key files: each \
                 connects to the other with its own key as the server's, so both must use the same one)"
            }
            (KeyFlags::SameCurveKey, Reason::HandshakeFailedNoDetail, true) => {
                "the handshake failed and libzmq gave no reason and gave up (with CURVE, most often the \
                 two halves of the pair given different --curve-key files: both must use the same one); \
                 mdsub keeps re-establishing the link, backing off to once every 30 s"
            }
            (KeyFlags::SameCurveKey, Reason::HandshakeFailedAuth, true) => {
                "authentication refused: the other half's access rules (--curve-allow, --allow-addr) do \
                 not let this half in. That will not fix itself. mdsub keeps re-establishing the link, \
                 backing off to once every 30 s"
            }
            _ => reason.explain(curve),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "tcp://localhost:5556";
    const SEEN: &str = "tcp://127.0.0.1:5556";

    fn links() -> Links {
        let resolved: Vec<std::net::SocketAddr> = vec!["127.0.0.1:5556".parse().expect("addr")];
        Links::new(vec![(EP.to_string(), aliases(EP, &resolved))], RETRY_GRACE_NS, 0)
    }

    fn run(l: &mut Links, events: &[(Event, u64)]) -> Vec<Decision> {
        let mut out = Vec::new();
        for &(e, t) in events {
            l.on_event(e, SEEN, t, &mut out);
            l.tick(t, &mut out);
        }
        out
    }

    #[test]
    fn a_link_never_up_is_said_once_after_a_while() {
        let mut l = links();
        let s = 1_000_000_000;
        let retries: Vec<(Event, u64)> = (0..=80).map(|k| (Event::ConnectRetried, k * s / 10)).collect();
        let d = run(&mut l, &retries);
        assert_eq!(d, vec![Decision::NotUp { link: 0, for_ns: NOT_UP_AFTER_NS, attempts: 51 }]);
    }

    #[test]
    fn a_link_that_was_up_is_lost_not_never_up() {
        // A fresh link (nothing said yet) that comes up within the grace of its first retry,
        // then is lost and retried for far longer than NOT_UP_AFTER_NS: a loss, never "not up".
        let mut l = links();
        let s = 1_000_000_000;
        let d =
            run(&mut l, &[(Event::ConnectRetried, 0), (Event::HandshakeSucceeded, s), (Event::Disconnected, 2 * s)]);
        assert!(d.is_empty(), "{d:?}");
        let retries: Vec<(Event, u64)> = (0..=100).map(|k| (Event::ConnectRetried, 2 * s + k * s / 10)).collect();
        let d = run(&mut l, &retries);
        assert!(d.iter().all(|d| !matches!(d, Decision::NotUp { .. })), "{d:?}");
        assert!(d.iter().any(|d| matches!(d, Decision::Lost { .. })), "the loss is said: {d:?}");
    }

    #[test]
    fn time_not_up_and_time_in_the_state_are_kept_per_link() {
        // Before: the counters said `down` and how often, never since when nor for how long, so
        // /metrics and `top` could not tell a link down a second from one down an hour.
        let mut l = links();
        let s = 1_000_000_000;
        // Connecting from 0, up at 2 s: 2 s not up.
        run(&mut l, &[(Event::ConnectRetried, s), (Event::HandshakeSucceeded, 2 * s)]);
        let up = l.stats()[0].at(5 * s);
        assert_eq!((up.state.as_str(), up.for_ns, up.down_ns), ("up", 3 * s, 2 * s), "{up:?}");
        // Lost at 10 s, still down at 19 s: 2 s before and the 9 s of this spell.
        run(&mut l, &[(Event::Disconnected, 10 * s), (Event::ConnectRetried, 10 * s + 1)]);
        let down = l.stats()[0].at(19 * s);
        assert_eq!((down.state.as_str(), down.for_ns, down.down_ns), ("down", 9 * s, 11 * s), "{down:?}");
        // Back at 20 s: the spell is closed at 10 s; up for 1 s at 21 s.
        run(&mut l, &[(Event::HandshakeSucceeded, 20 * s)]);
        let back = l.stats()[0].at(21 * s);
        assert_eq!((back.state.as_str(), back.for_ns, back.down_ns, back.reconnects), ("up", s, 12 * s, 1));
        // Published as counters; the clock they were read by is not.
        let json = serde_json::to_value(&back).expect("json");
        assert_eq!((json["for_ns"].as_u64(), json["down_ns"].as_u64()), (Some(s), Some(12 * s)), "{json}");
        assert!(json.get("since_ns").is_none(), "{json}");
        // An older status without them still reads.
        let old: LinkStats = serde_json::from_str(r#"{"endpoint":"tcp://h:1","state":"up","connects":1,"reconnects":0,"reestablished":0,"retries":0,"lost":{}}"#).expect("old");
        assert_eq!((old.for_ns, old.down_ns), (0, 0));
    }

    #[test]
    fn first_connect_is_not_a_reconnect() {
        let mut l = links();
        let out = run(&mut l, &[(Event::ConnectRetried, 1), (Event::Connected, 2), (Event::HandshakeSucceeded, 3)]);
        assert!(out.is_empty(), "{out:?}");
        let s = &l.stats()[0];
        assert_eq!((s.state.as_str(), s.connects, s.reconnects, s.retries), ("up", 1, 0, 1));
        assert_eq!(s.lost_total(), 0);
    }

    #[test]
    fn a_lost_connection_that_libzmq_retries_is_counted_and_not_reestablished() {
        let mut l = links();
        let out = run(
            &mut l,
            &[
                (Event::HandshakeSucceeded, 0),
                (Event::Disconnected, 1_000),
                (Event::ConnectRetried, 1_010),
                (Event::ConnectRetried, 100_000_000),
            ],
        );
        assert_eq!(out, vec![Decision::Lost { link: 0, reason: Reason::Disconnected }]);
        let mut out = Vec::new();
        l.tick(10 * RETRY_GRACE_NS, &mut out);
        assert!(out.is_empty(), "libzmq retries: nothing to do, {out:?}");
        assert_eq!(l.stats()[0].state, "down");
        l.on_event(Event::HandshakeSucceeded, SEEN, 2_000_001_000, &mut out);
        assert_eq!(out, vec![Decision::Up { link: 0, down_ns: 2_000_000_000, reconnects: 1 }]);
        let s = &l.stats()[0];
        assert_eq!((s.connects, s.reconnects, s.reestablished, s.retries), (2, 1, 0, 2));
        assert_eq!(s.lost.get("disconnected"), Some(&1));
        assert_eq!(s.state, "up");
    }

    #[test]
    fn a_close_after_the_end_of_stream_is_not_a_loss() {
        // The end of stream first: `ended` at once, whether or not the publisher's close is read
        // before the owner finishes (the race that left one shard `up` and another `closed`).
        let mut l = links();
        let mut out = run(&mut l, &[(Event::HandshakeSucceeded, 0)]);
        assert!(l.end_of_stream(1_000).is_empty());
        assert_eq!(l.stats()[0].state, "ended", "the close not read yet");
        // Even the handshake can be read after the end of stream (the owner reads its monitor
        // between rounds): the link is `ended` all the same, not `up`.
        let mut late = links();
        assert!(late.end_of_stream(1_000).is_empty());
        late.on_event(Event::HandshakeSucceeded, SEEN, 1_010, &mut out);
        assert_eq!((late.stats()[0].state.as_str(), late.stats()[0].connects), ("ended", 1));
        for (e, t) in [(Event::Disconnected, 2_000), (Event::ConnectRetried, 2_010)] {
            l.on_event(e, SEEN, t, &mut out);
        }
        l.tick(10 * RETRY_GRACE_NS, &mut out);
        assert!(out.is_empty(), "{out:?}");
        let s = &l.stats()[0];
        assert_eq!((s.state.as_str(), s.lost_total(), s.reestablished), ("ended", 0, 0), "{s}");

        // The monitor's disconnect read just before the end of stream: taken back within the grace.
        let mut l = links();
        let out = run(
            &mut l,
            &[(Event::HandshakeSucceeded, 0), (Event::Disconnected, 1_000), (Event::ConnectRetried, 1_010)],
        );
        assert_eq!(out, vec![Decision::Lost { link: 0, reason: Reason::Disconnected }]);
        assert_eq!(l.end_of_stream(1_000 + RETRY_GRACE_NS), vec![0], "taken back");
        let s = &l.stats()[0];
        assert_eq!((s.state.as_str(), s.lost_total()), ("ended", 0), "{s}");

        // A loss longer ago than the grace was a loss: it stays counted.
        let mut l = links();
        run(&mut l, &[(Event::HandshakeSucceeded, 0), (Event::Disconnected, 1_000), (Event::ConnectRetried, 1_010)]);
        assert!(l.end_of_stream(2_000 + RETRY_GRACE_NS).is_empty());
        assert_eq!(l.stats()[0].lost.get("disconnected"), Some(&1));
        // Its reconnection read after the end of stream (the stream came through it): a
        // reconnect, and `ended` (it said `up`, so a run's end state still hung on the race).
        let mut out = Vec::new();
        l.on_event(Event::HandshakeSucceeded, SEEN, 3_000 + RETRY_GRACE_NS, &mut out);
        assert!(matches!(out[..], [Decision::Up { reconnects: 1, .. }]), "{out:?}");
        let s = &l.stats()[0];
        assert_eq!((s.state.as_str(), s.connects, s.reconnects), ("ended", 2, 1), "{s}");
    }

    #[test]
    fn a_link_down_when_the_owner_stops_is_counted_not_left_down_with_no_loss() {
        // The chain lvc → tap: the LVC stops, the tap's last service reads DISCONNECTED 1 ms
        // before the tap stops too, libzmq's CONNECT_RETRIED not read yet. The summary said
        // `down connects=1 … ` with no loss.
        let clock = crate::clock::ManualClock::new(0);
        use crate::clock::Clock;
        let mut l = links();
        let mut out = Vec::new();
        l.on_event(Event::HandshakeSucceeded, SEEN, clock.now_ns(), &mut out);
        clock.advance_ms(2_000);
        l.on_event(Event::Disconnected, SEEN, clock.now_ns(), &mut out);
        clock.advance_ms(1);
        l.tick(clock.now_ns(), &mut out);
        assert!(out.is_empty(), "inside the grace: {out:?}");
        l.finish(&mut out);
        assert_eq!(out, vec![Decision::Lost { link: 0, reason: Reason::Disconnected }]);
        let s = &l.stats()[0];
        assert_eq!((s.state.as_str(), s.lost.get("disconnected")), ("down", Some(&1)), "{s}");
        // Once only, and nothing left to decide.
        out.clear();
        l.finish(&mut out);
        l.tick(clock.now_ns() + 10 * RETRY_GRACE_NS, &mut out);
        assert!(out.is_empty() && !l.pending(), "{out:?}");
        assert_eq!(l.stats()[0].lost_total(), 1);

        // A failed handshake keeps its kind; a link up, or already counted, is left as it is.
        let mut l = links();
        run(&mut l, &[(Event::HandshakeFailed(Failure::Auth), 0), (Event::Disconnected, 0)]);
        l.finish(&mut out);
        assert_eq!(out, vec![Decision::Lost { link: 0, reason: Reason::HandshakeFailedAuth }]);
        for events in [
            &[(Event::HandshakeSucceeded, 0)][..],
            &[(Event::HandshakeSucceeded, 0), (Event::Disconnected, 1), (Event::ConnectRetried, 2)],
        ] {
            let mut l = links();
            run(&mut l, events);
            let before = l.stats();
            out.clear();
            l.finish(&mut out);
            assert!(out.is_empty(), "{out:?}");
            assert_eq!(l.stats(), before);
        }
    }

    #[test]
    fn a_disconnect_without_retry_is_a_protocol_error_and_reestablished_once() {
        let mut l = links();
        let mut out = run(&mut l, &[(Event::HandshakeSucceeded, 0), (Event::Disconnected, 1_000)]);
        assert!(out.is_empty(), "too early to tell: {out:?}");
        assert!(l.pending());
        l.tick(1_000 + RETRY_GRACE_NS - 1, &mut out);
        assert!(out.is_empty(), "still inside the grace: {out:?}");
        l.tick(1_000 + RETRY_GRACE_NS, &mut out);
        assert_eq!(
            out,
            vec![Decision::Lost { link: 0, reason: Reason::ProtocolError }, Decision::Reestablish { link: 0 }]
        );
        assert!(!l.pending());
        out.clear();
        l.tick(10 * RETRY_GRACE_NS, &mut out);
        assert!(out.is_empty(), "decided once: {out:?}");
        // The re-created connection comes up.
        l.on_event(Event::Connected, SEEN, 2 * RETRY_GRACE_NS, &mut out);
        l.on_event(Event::HandshakeSucceeded, SEEN, 2 * RETRY_GRACE_NS + 1_000, &mut out);
        assert_eq!(out, vec![Decision::Up { link: 0, down_ns: 2 * RETRY_GRACE_NS, reconnects: 1 }]);
        let s = &l.stats()[0];
        assert_eq!((s.reestablished, s.reconnects, s.lost_total()), (1, 1, 1));
        assert_eq!(s.lost.get("protocol_error"), Some(&1));
    }

    #[test]
    fn handshake_failures_keep_their_reason() {
        // A failure libzmq gives up on (no retry within the grace) is lost under its own reason:
        // a refused key, a broken handshake, and one without detail (a CURVE client given a
        // server key that is not the server's), never as an oversized message.
        for (failure, reason) in [
            (Failure::Auth, Reason::HandshakeFailedAuth),
            (Failure::Protocol, Reason::HandshakeFailedProtocol),
            (Failure::MechanismMismatch, Reason::HandshakeFailedMechanism),
            (Failure::NoDetail, Reason::HandshakeFailedNoDetail),
        ] {
            let mut l = links();
            let given_up =
                [(Event::HandshakeFailed(failure), 0), (Event::Disconnected, 0), (Event::Other, RETRY_GRACE_NS)];
            let out = run(&mut l, &given_up);
            assert_eq!(out, vec![Decision::Lost { link: 0, reason }, Decision::Reestablish { link: 0 }], "{failure:?}");
        }
        // A CURVE mismatch is named, with what to give (review 11: it was "the peer broke the
        // ZMTP handshake").
        assert_eq!(Reason::HandshakeFailedMechanism.name(), "handshake_failed_mechanism");
        for curve in [true, false] {
            let said = Reason::HandshakeFailedMechanism.explain(curve);
            assert!(said.starts_with("the peer uses another security mechanism"), "{said}");
        }
        assert!(Reason::HandshakeFailedMechanism.explain(false).contains("give --server-key"));
        assert!(Reason::HandshakeFailedMechanism.explain(true).contains("give the server --curve-key"));
        // Hints about keys only where keys are given (a plain link to a peer that is no ZeroMQ
        // peer was told `with CURVE, most often a --server-key …`).
        assert!(Reason::HandshakeFailedNoDetail.explain(true).contains("--server-key"));
        for r in [Reason::HandshakeFailedNoDetail, Reason::HandshakeFailedAuth, Reason::HandshakeFailedProtocol] {
            let said = r.explain(false);
            assert!(!said.contains("CURVE") && !said.contains("key"), "{r:?}: {said}");
        }
        // One libzmq retries is the plain handshake_failed, once no next attempt says more
        // within the grace.
        let mut l = links();
        let out = run(
            &mut l,
            &[
                (Event::HandshakeFailed(Failure::NoDetail), 0),
                (Event::Disconnected, 0),
                (Event::ConnectRetried, 5),
                (Event::ConnectRetried, 5 + RETRY_GRACE_NS - 1),
            ],
        );
        assert!(out.is_empty(), "held for the next attempt: {out:?}");
        assert_eq!(l.stats()[0].state, "down");
        let mut out = Vec::new();
        l.tick(5 + RETRY_GRACE_NS, &mut out);
        assert_eq!(out, vec![Decision::Lost { link: 0, reason: Reason::HandshakeFailed }]);
        assert_eq!(l.stats()[0].lost.get("handshake_failed"), Some(&1));
    }

    #[test]
    fn a_detail_less_failure_is_judged_by_the_next_attempt() {
        // A keyed engine at a plain replay: the first attempt breaks off with no detail (libzmq
        // retries), the next names the mechanism mismatch. It said `handshake_failed … most
        // often a --server-key that is not the server's` first and counted both.
        let mut l = links();
        let first = [
            (Event::Connected, 0),
            (Event::HandshakeFailed(Failure::NoDetail), 1),
            (Event::Disconnected, 1),
            (Event::ConnectRetried, 2),
        ];
        assert!(run(&mut l, &first).is_empty());
        let next = [
            (Event::Connected, 100_000_000),
            (Event::HandshakeFailed(Failure::MechanismMismatch), 100_000_001),
            (Event::Disconnected, 100_000_001),
            (Event::Other, 100_000_001 + RETRY_GRACE_NS),
        ];
        let out = run(&mut l, &next);
        assert_eq!(
            out,
            vec![
                Decision::Lost { link: 0, reason: Reason::HandshakeFailedMechanism },
                Decision::Reestablish { link: 0 }
            ]
        );
        let s = &l.stats()[0];
        assert_eq!((s.lost_total(), s.lost.get("handshake_failed_mechanism")), (1, Some(&1)), "{s}");

        // Detail-less again and again (an attempt every 100 ms): held until NO_DETAIL_HOLD_NS
        // after the first, then counted once for the outage; a mismatch read within it wins.
        for mismatch_at in [None, Some(700_000_000)] {
            let mut l = links();
            let mut out = run(&mut l, &first);
            let mut t = 100_000_000;
            while t < 2 * NO_DETAIL_HOLD_NS && out.is_empty() {
                let kind = match mismatch_at {
                    Some(m) if t == m => Failure::MechanismMismatch,
                    // libzmq gave up: no more attempts.
                    Some(m) if t > m => {
                        t += 100_000_000;
                        l.tick(t, &mut out);
                        continue;
                    }
                    _ => Failure::NoDetail,
                };
                for e in [Event::Connected, Event::HandshakeFailed(kind), Event::Disconnected] {
                    l.on_event(e, SEEN, t, &mut out);
                }
                if kind == Failure::NoDetail {
                    l.on_event(Event::ConnectRetried, SEEN, t + 1, &mut out);
                }
                l.tick(t + 1, &mut out);
                if out.is_empty() {
                    t += 100_000_000;
                    l.tick(t, &mut out);
                }
            }
            let (want, at) = match mismatch_at {
                None => (Reason::HandshakeFailed, NO_DETAIL_HOLD_NS),
                Some(m) => (Reason::HandshakeFailedMechanism, m + RETRY_GRACE_NS),
            };
            assert_eq!(out.first(), Some(&Decision::Lost { link: 0, reason: want }), "{out:?}");
            assert!((at..at + 100_000_000).contains(&t), "decided at {t}, want {at}");
            assert_eq!(l.stats()[0].lost_total(), 1, "{}", l.stats()[0]);
        }

        // The next attempt comes up: the first only broke off, and the link is back.
        let mut l = links();
        let mut out = run(&mut l, &first);
        l.on_event(Event::HandshakeSucceeded, SEEN, 1_000, &mut out);
        assert_eq!(
            out,
            vec![
                Decision::Lost { link: 0, reason: Reason::HandshakeFailed },
                Decision::Up { link: 0, down_ns: 999, reconnects: 1 }
            ]
        );

        // The owner stops while it waits: counted then.
        let mut l = links();
        let mut out = run(&mut l, &first);
        l.finish(&mut out);
        assert_eq!(out, vec![Decision::Lost { link: 0, reason: Reason::HandshakeFailed }]);
    }

    #[test]
    fn a_lost_link_that_stays_lost_is_said_again() {
        // kill -9 of the only store: `lost (disconnected)` once, then nothing for the rest of
        // the run. Now: `still lost` after STILL_LOST_AFTER_NS, then every STILL_LOST_EVERY_NS.
        let s = 1_000_000_000;
        let mut l = links();
        let mut out =
            run(&mut l, &[(Event::HandshakeSucceeded, 0), (Event::Disconnected, s), (Event::ConnectRetried, s + 1)]);
        assert_eq!(out, vec![Decision::Lost { link: 0, reason: Reason::Disconnected }]);
        out.clear();
        let mut t = s;
        while t < s + 200 * s {
            // libzmq retries every 100 ms and nothing answers.
            l.on_event(Event::ConnectRetried, SEEN, t, &mut out);
            l.tick(t, &mut out);
            t += s / 10;
        }
        let said: Vec<u64> = out
            .iter()
            .map(|d| match d {
                Decision::StillLost { for_ns, reason: Reason::Disconnected, .. } => *for_ns,
                other => panic!("only still-lost lines: {other:?}"),
            })
            .collect();
        let want = [
            STILL_LOST_AFTER_NS,
            STILL_LOST_AFTER_NS + STILL_LOST_EVERY_NS,
            STILL_LOST_AFTER_NS + 2 * STILL_LOST_EVERY_NS,
            STILL_LOST_AFTER_NS + 3 * STILL_LOST_EVERY_NS,
        ];
        assert_eq!(said.len(), want.len(), "{said:?}");
        for (got, want) in said.iter().zip(want) {
            assert!((want..want + s / 10).contains(got), "{said:?}");
        }
        assert_eq!(l.stats()[0].lost_total(), 1, "said again, counted once");
        // Back: the up line says for how long, and nothing more is due.
        out.clear();
        l.on_event(Event::HandshakeSucceeded, SEEN, t, &mut out);
        assert!(matches!(out[..], [Decision::Up { reconnects: 1, .. }]), "{out:?}");
        out.clear();
        l.tick(t + 10 * STILL_LOST_EVERY_NS, &mut out);
        assert!(out.is_empty() && !l.pending(), "{out:?}");

        // One given up on and re-established with a back-off (a refused key) is said again too;
        // a link back within STILL_LOST_AFTER_NS is not.
        let mut l = links();
        let auth = [Event::Connected, Event::HandshakeFailed(Failure::Auth), Event::Disconnected];
        failing_for(&mut l, &auth, 0, 10 * s);
        let mut out = Vec::new();
        // Said at 5 s (inside the run); next at 65 s.
        l.tick(64 * s, &mut out);
        assert!(!out.iter().any(|d| matches!(d, Decision::StillLost { .. })), "{out:?}");
        l.tick(66 * s, &mut out);
        assert!(
            out.iter().any(|d| matches!(d, Decision::StillLost { reason: Reason::HandshakeFailedAuth, .. })),
            "{out:?}"
        );
        let mut l = links();
        let mut out = run(
            &mut l,
            &[
                (Event::HandshakeSucceeded, 0),
                (Event::Disconnected, s),
                (Event::ConnectRetried, s + 1),
                (Event::HandshakeSucceeded, 2 * s),
            ],
        );
        l.tick(100 * s, &mut out);
        assert!(!out.iter().any(|d| matches!(d, Decision::StillLost { .. })), "{out:?}");
    }

    #[test]
    fn a_failed_handshake_read_apart_from_its_disconnect_keeps_its_reason() {
        // A link lost long ago and re-established: the next attempt's HANDSHAKE_FAILED is read,
        // the watch ticks, then its DISCONNECTED is read. The grace ran from the outage's start,
        // so the tick decided at once and the DISCONNECTED, alone, became `protocol_error` (a
        // keyless or wrong-key clone client's SUB said `protocol_error … (a message over the
        // maximum message size …)`).
        for (failure, reason) in [
            (Failure::Auth, Reason::HandshakeFailedAuth),
            (Failure::MechanismMismatch, Reason::HandshakeFailedMechanism),
        ] {
            let mut l = links();
            let first =
                [(Event::HandshakeFailed(failure), 0), (Event::Disconnected, 0), (Event::Other, RETRY_GRACE_NS)];
            assert_eq!(
                run(&mut l, &first),
                vec![Decision::Lost { link: 0, reason }, Decision::Reestablish { link: 0 }]
            );
            let t = 10 * RETRY_GRACE_NS;
            let mut out = Vec::new();
            l.on_event(Event::HandshakeFailed(failure), SEEN, t, &mut out);
            l.tick(t + 1_000, &mut out);
            assert!(out.is_empty(), "{failure:?}: nothing decided before the disconnect: {out:?}");
            l.on_event(Event::Disconnected, SEEN, t + 2_000, &mut out);
            l.tick(t + 2_000 + RETRY_GRACE_NS, &mut out);
            assert_eq!(out.first(), Some(&Decision::Lost { link: 0, reason }), "{failure:?}");
            let s = &l.stats()[0];
            assert_eq!((s.lost.get(reason.name()), s.lost.get("protocol_error")), (Some(&2), None), "{s}");
        }
    }

    #[test]
    fn failed_attempts_to_come_back_count_one_outage() {
        let mut l = links();
        let out = run(
            &mut l,
            &[
                (Event::HandshakeSucceeded, 0),
                (Event::Disconnected, 10),
                (Event::ConnectRetried, 11),
                // The path accepts TCP but the peer is still away: each attempt fails.
                (Event::Connected, 100),
                (Event::HandshakeFailed(Failure::NoDetail), 101),
                (Event::Disconnected, 101),
                (Event::ConnectRetried, 102),
                (Event::Connected, 200),
                (Event::HandshakeSucceeded, 1_010),
            ],
        );
        assert_eq!(
            out,
            vec![
                Decision::Lost { link: 0, reason: Reason::Disconnected },
                Decision::Up { link: 0, down_ns: 1_000, reconnects: 1 }
            ]
        );
        let s = &l.stats()[0];
        assert_eq!((s.lost_total(), s.reconnects, s.retries), (1, 1, 2));
    }

    /// Drive a link that libzmq gives up on at every attempt (`fail`: the events of one failed
    /// attempt, 1 ms after the connect) for `for_ns` from `start_ns`, ticking every 10 ms on a
    /// manual clock; the times of the re-establishments.
    fn failing_for(l: &mut Links, fail: &[Event], start_ns: u64, for_ns: u64) -> Vec<u64> {
        let clock = crate::clock::ManualClock::new(start_ns);
        use crate::clock::Clock;
        let mut at = Vec::new();
        let mut out = Vec::new();
        let mut next_fail = Some(start_ns);
        while clock.now_ns() < start_ns + for_ns {
            let now = clock.now_ns();
            if next_fail.is_some_and(|t| now >= t) {
                next_fail = None;
                for &e in fail {
                    l.on_event(e, SEEN, now, &mut out);
                }
            }
            l.tick(now, &mut out);
            for d in out.drain(..) {
                if let Decision::Reestablish { .. } = d {
                    at.push(now);
                    next_fail = Some(now + 1_000_000);
                }
            }
            clock.advance_ns(10_000_000);
        }
        at
    }

    #[test]
    fn repeated_reestablishment_backs_off_and_every_loss_is_counted() {
        // A key the server does not allow: every attempt fails its handshake, libzmq gives up.
        let mut l = links();
        let auth = [Event::Connected, Event::HandshakeFailed(Failure::Auth), Event::Disconnected];
        let s = 1_000_000_000;
        let at = failing_for(&mut l, &auth, 0, 120 * s);
        // The first at once (after the grace), then 100 ms, 200 ms, … doubling, capped at 30 s,
        // each after its attempt's failure is decided: a grace after its disconnect (libzmq's
        // retry, had it retried, would have come within it), the attempt failing at the tick
        // after its re-establishment.
        let waits: Vec<u64> = at.windows(2).map(|w| w[1] - w[0] - 10_000_000 - RETRY_GRACE_NS).collect();
        let want: Vec<u64> = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
            .iter()
            .map(|w| (w * 1e9) as u64)
            .take(waits.len())
            .collect();
        assert!(waits.len() >= 10, "{at:?}");
        // Each wait is rounded up to the 10 ms tick.
        for (got, want) in waits.iter().zip(&want) {
            assert!((*want..*want + 10_000_000).contains(got), "waits {waits:?}, want {want:?}");
        }
        let st = &l.stats()[0];
        assert_eq!(st.reestablished, at.len() as u64, "{st}");
        // Every failed attempt is a loss; the last waits for its back-off.
        assert_eq!(st.lost.get("handshake_failed_auth"), Some(&(at.len() as u64 + 1)), "every loss counted: {st}");
        assert!(l.pending(), "a re-establishment waits");
        assert!(at.len() < 15, "{} re-establishments in 120 s", at.len());

        // Up for a short while and cut again (oversized frames all the time): backs off too.
        let mut l = links();
        let cut = [Event::Connected, Event::HandshakeSucceeded, Event::Disconnected];
        let n = failing_for(&mut l, &cut, 0, 10 * s).len();
        assert!((5..=8).contains(&n), "{n} re-establishments in 10 s");
        // Up for longer than STABLE_AFTER_NS: the next loss is re-established at once again.
        let mut out = Vec::new();
        let t = 40 * s;
        l.on_event(Event::HandshakeSucceeded, SEEN, t, &mut out);
        l.on_event(Event::Disconnected, SEEN, t + STABLE_AFTER_NS, &mut out);
        l.tick(t + STABLE_AFTER_NS + RETRY_GRACE_NS, &mut out);
        assert_eq!(
            out,
            vec![
                Decision::Up { link: 0, down_ns: out_down(&out), reconnects: l.stats()[0].reconnects },
                Decision::Lost { link: 0, reason: Reason::ProtocolError },
                Decision::Reestablish { link: 0 }
            ]
        );
    }

    #[test]
    fn a_link_cut_every_few_seconds_is_re_established_at_once_every_time() {
        // A feed that sends an oversized frame every 3 s and is fine in between: up 3 s, cut,
        // again and again. Each loss comes after the link was up for longer than
        // STABLE_AFTER_NS, so none waits for a back-off.
        let mut l = links();
        let s = 1_000_000_000;
        let mut out = Vec::new();
        let mut t = 0;
        l.on_event(Event::Connected, SEEN, t, &mut out);
        l.on_event(Event::HandshakeSucceeded, SEEN, t, &mut out);
        for _ in 0..10 {
            t += 3 * s;
            out.clear();
            l.on_event(Event::Disconnected, SEEN, t, &mut out);
            t += RETRY_GRACE_NS;
            l.tick(t, &mut out);
            assert!(out.contains(&Decision::Reestablish { link: 0 }), "re-established at once: {out:?}");
            l.on_event(Event::Connected, SEEN, t + 1_000_000, &mut out);
            l.on_event(Event::HandshakeSucceeded, SEEN, t + 1_000_000, &mut out);
        }
        assert_eq!(l.stats()[0].reestablished, 10);
    }

    #[test]
    fn a_failed_connect_again_is_tried_again_later() {
        let mut l = links();
        let mut out = Vec::new();
        l.on_event(Event::HandshakeSucceeded, SEEN, 0, &mut out);
        l.on_event(Event::Disconnected, SEEN, 10, &mut out);
        l.tick(10 + RETRY_GRACE_NS, &mut out);
        assert!(out.contains(&Decision::Reestablish { link: 0 }), "{out:?}");
        // The owner's connect failed: another attempt is scheduled, one back-off step on.
        l.retry_later(0, 10 + RETRY_GRACE_NS);
        assert!(l.pending());
        out.clear();
        l.tick(10 + RETRY_GRACE_NS + BACKOFF_MIN_NS, &mut out);
        assert_eq!(out, vec![Decision::Reestablish { link: 0 }]);
    }

    fn out_down(out: &[Decision]) -> u64 {
        match out.first() {
            Some(Decision::Up { down_ns, .. }) => *down_ns,
            _ => 0,
        }
    }

    #[test]
    fn events_for_other_endpoints_are_ignored() {
        let mut l = links();
        let mut out = Vec::new();
        l.on_event(Event::Disconnected, "tcp://127.0.0.1:9999", 0, &mut out);
        l.tick(10 * RETRY_GRACE_NS, &mut out);
        assert!(out.is_empty() && !l.pending());
        assert_eq!(l.find(EP), Some(0));
        assert_eq!(l.find("tcp://localhost:5556"), Some(0));
    }

    #[test]
    fn aliases_cover_source_syntax_and_resolution() {
        let r: Vec<std::net::SocketAddr> = vec!["10.0.0.1:5556".parse().expect("addr")];
        let a = aliases("tcp://eth0:0;host:5556", &r);
        assert_eq!(a, vec!["tcp://eth0:0;host:5556", "tcp://host:5556", "tcp://10.0.0.1:5556"]);
        assert_eq!(tcp_target("tcp://eth0:0;host:5556"), Some("host:5556"));
        assert_eq!(tcp_target("ipc:///tmp/x"), None);
        assert_eq!(aliases("ipc:///tmp/x", &[]), vec!["ipc:///tmp/x"]);
    }
}
