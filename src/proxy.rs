//! The one XSUB ⇄ XPUB proxy shell (guide, chapter 5); the LVC and the tap are hooks on it.
//!
//! [`ProxyShell`] owns the two sockets and moves messages: publishers (XSUB)
//! → subscribers (XPUB) and subscriptions back the other way, a batch of each
//! per [`Agent::do_work`], subscriptions first. What a part does on top of
//! forwarding is a [`ProxyHooks`] value: the LVC caches every message and
//! answers subscriptions from the cache (`lvc::proxy::LvcHooks`), the tap
//! copies what passes to its sink (`tap::proxy::TapHooks`). The shell is
//! generic over its hooks, so each part's hot path is one monomorphised loop
//! with no dynamic dispatch, as cheap as a hand-written proxy.
//!
//! The shell reads the monotonic clock once per step and hands it to every
//! hook it calls (the cores' `(event, now_ns)` shape, so the hooks run on a
//! manual clock in tests), and ticks the hooks at the start of every step,
//! traffic or not ([`ProxyHooks::on_tick`]): what is due (a refusal summary)
//! is said on time, not at the next message or at exit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agent::{Agent, AgentError, IdleStrategy, RunSpec, Runner, Step, StopFlag};
use crate::clock;
use crate::diag::ExitCounters;
use crate::link::{KeyFlags, LinkBoard, LinkStats, LinkWatch};
use crate::wire;
use crate::zmqx::frame::{recv_frames, send_frames_from, Frame};
use crate::zmqx::{self, Attach};

/// Messages handled per direction in one `do_work`.
pub const BATCH_MSGS: usize = 256;

/// Cached messages looked at for answers per `do_work` before live traffic
/// gets its batch (answered, coalesced or suppressed alike: each costs a
/// look-up): subscriptions are read until the round's count reaches this (an
/// answer is never split), so a flood of subscriptions interleaves with live data.
pub const ANSWER_MSGS_PER_ROUND: u64 = 4_096;

/// What the proxy does when a subscriber's queue is full (its XPUB runs
/// with ZMQ_XPUB_NODROP either way, so a full queue is seen, never hidden).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Wait: stop reading the publishers until the message is taken
    /// (back-pressure upstream, like a lossless replay). Nothing is lost.
    #[default]
    Lossless,
    /// Drop the message (for every subscriber it was meant for) and count it
    /// in `dropped_full`; live traffic never waits for a slow subscriber.
    Lossy,
}

impl Delivery {
    pub fn name(self) -> &'static str {
        match self {
            Delivery::Lossless => "lossless",
            Delivery::Lossy => "lossy",
        }
    }
}

/// What every proxy is told at start: endpoints, socket limits, idle strategy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Publisher side (XSUB).
    pub frontend: Vec<Attach>,
    /// Subscriber side (XPUB, verbose).
    pub backend: Vec<Attach>,
    /// SNDHWM and RCVHWM of both sockets, messages (0 = unlimited).
    pub hwm_msgs: i32,
    /// Largest message accepted from the publishers, bytes (ZMQ_MAXMSGSIZE).
    pub max_msg_bytes: i64,
    /// Idle strategy of the proxy's thread(s).
    pub idle: IdleStrategy,
    /// Lossless (back-pressure) or lossy (counted drops) toward the subscribers.
    pub delivery: Delivery,
}

/// A message from a subscriber (the XPUB side), as libzmq hands it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromSubscriber<'a> {
    /// One frame `\x01prefix`.
    Subscribe(&'a [u8]),
    /// One frame `\x00prefix`.
    Unsubscribe(&'a [u8]),
    /// Anything else: multipart, empty, or another first byte.
    Other,
}

impl<'a> FromSubscriber<'a> {
    /// Classify the frames of one message from the XPUB.
    pub fn classify<F: std::ops::Deref<Target = [u8]>>(frames: &'a [F]) -> Self {
        match frames {
            [only] => match only.split_first() {
                Some((1, prefix)) => FromSubscriber::Subscribe(prefix),
                Some((0, prefix)) => FromSubscriber::Unsubscribe(prefix),
                _ => FromSubscriber::Other,
            },
            _ => FromSubscriber::Other,
        }
    }
}

/// The shell's own counters; the hooks add theirs in their report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShellCounters {
    /// Messages, frames and bytes received from the publishers.
    pub messages_in: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Messages sent on to the subscribers.
    pub forwarded_down: u64,
    /// Messages from subscribers sent on to the publishers.
    pub forwarded_up: u64,
    /// Messages from subscribers the hooks kept from the publishers, and the repeats of the
    /// end-of-stream wait's subscription and withdrawal that one stands for (`passes_eos_wait`).
    pub not_forwarded: u64,
    /// Messages from subscribers with a frame over [`zmqx::MAX_PREFIX_BYTES`]
    /// (+1 for the subscribe byte): kept from the publishers (the hooks still see them).
    pub too_long_up: u64,
    /// Live messages dropped because a subscriber's queue was full (lossy delivery).
    pub dropped_full: u64,
    /// Times live forwarding waited for a full subscriber queue (lossless delivery).
    pub blocked: u64,
    /// Sends that failed for another reason (message lost), answers included.
    pub send_failures: u64,
    /// Publisher connections accepted on the frontend's bound endpoints (handshakes), and those
    /// that ended: libzmq gives no cause, so each may be a publisher that closed or went away,
    /// or a message over `max_msg_bytes`, which libzmq drops with the connection (and what was
    /// queued behind it) with no event of its own. Each end is said by the rule for repeated lines.
    pub publisher_connects: u64,
    pub publisher_disconnects: u64,
    /// Connections accepted there that libzmq refused in their handshake (no ZeroMQ peer, a port
    /// check, another security mechanism): not publisher disconnects.
    pub publisher_refused: u64,
    /// The same on the backend's bound endpoints: subscriber connections accepted (handshakes),
    /// those that ended (closed, or dropped by libzmq for a message over the backend's largest,
    /// with no cause given), and those libzmq refused in their handshake (no ZeroMQ peer, a
    /// socket type that cannot talk to an XPUB, a ZMTP 1.0/2.0 peer, a peer silent past the
    /// handshake's time, a port check).
    pub subscriber_connects: u64,
    pub subscriber_disconnects: u64,
    pub subscriber_refused: u64,
    /// Times libzmq could not accept a connection on either side's bound endpoints (`accept()`
    /// failed, most often out of descriptors): attempts, not peers, since libzmq retries at once.
    pub accept_failed: u64,
    /// Handshake outcomes on either side's bound endpoints not remembered because the handshake
    /// ledger was full ([`crate::link::Accepted::ledger_forgotten`]): by how many the connects,
    /// disconnects and refusals above are off. 0 unless it filled.
    pub handshake_ledger_forgotten: u64,
}

impl ShellCounters {
    /// The delivery and connection counters as the LVC's and the tap's exit lines say them:
    /// `dropped_full=… blocked=… send_failures=… publisher_connects=… publisher_disconnects=…
    /// publisher_refused=… subscriber_connects=… subscriber_disconnects=… subscriber_refused=…
    /// accept_failed=…`, and `handshake_ledger_forgotten=…` once the handshake ledger filled.
    pub fn delivery_fields(&self) -> String {
        let forgotten = match self.handshake_ledger_forgotten {
            0 => String::new(),
            n => format!(" handshake_ledger_forgotten={n}"),
        };
        format!(
            "dropped_full={} blocked={} send_failures={} publisher_connects={} publisher_disconnects={} \
             publisher_refused={} subscriber_connects={} subscriber_disconnects={} subscriber_refused={} \
             accept_failed={}{forgotten}",
            self.dropped_full,
            self.blocked,
            self.send_failures,
            self.publisher_connects,
            self.publisher_disconnects,
            self.publisher_refused,
            self.subscriber_connects,
            self.subscriber_disconnects,
            self.subscriber_refused,
            self.accept_failed
        )
    }
}

/// The subscriber side as the hooks see it, while they handle one message
/// from a subscriber: apply its subscription (manual XPUB), answer it alone.
pub struct Downstream<'a> {
    socket: &'a mut zmq::Socket,
    send_failures: &'a mut u64,
    /// Cached messages looked at this round (the shell's interleaving bound).
    round_msgs: &'a mut u64,
}

impl Downstream<'_> {
    /// Apply a subscription just read, for the subscriber it came from (an
    /// XPUB in manual mode, see [`ProxyHooks::manual_subscriptions`]).
    /// A failure is counted in `send_failures`.
    pub fn apply(&mut self, subscribe: bool, prefix: &[u8]) {
        let r = if subscribe { self.socket.set_subscribe(prefix) } else { self.socket.set_unsubscribe(prefix) };
        if r.is_err() {
            *self.send_failures += 1;
        }
    }

    /// Count `msgs` cached messages looked at for an answer (sent or not)
    /// toward the round's bound, [`ANSWER_MSGS_PER_ROUND`].
    pub fn count_work(&mut self, msgs: u64) {
        *self.round_msgs += msgs;
    }

    /// Send `frames` as one message to the subscriber whose subscription was
    /// just read, and to nobody else (`zmqx::send_to_last_subscriber`).
    /// An error (counted in `send_failures`) says why it could not be queued.
    pub fn answer(&mut self, frames: &mut [Frame]) -> Result<(), zmq::Error> {
        let sent = zmqx::send_to_last_subscriber(self.socket, frames);
        if sent.is_err() {
            *self.send_failures += 1;
        }
        sent
    }
}

/// What a proxy does on top of forwarding. Called on the proxy's thread, once
/// per message: keep it allocation-free where the part allows. `now_ns` is the
/// shell's monotonic clock, read once per step.
pub trait ProxyHooks: Send {
    /// What the part reports at the end (its counters and the shell's).
    type Report: Copy + Default + Send + 'static;

    /// Thread role (`lvc-proxy`, `tap-proxy`).
    fn role(&self) -> &'static str;

    /// Whether the XPUB runs in manual mode (ZMQ_XPUB_MANUAL): the hooks
    /// apply every (un)subscription with [`Downstream::apply`] and may answer
    /// the subscriber alone with [`Downstream::answer`] (the LVC).
    fn manual_subscriptions(&self) -> bool {
        false
    }

    /// Whether the proxy's own subscription to everything (`subscribe_all` of
    /// [`ProxyShell::new`]) makes it a subscriber in a publisher's count (`mdsub replay
    /// --subscribers`): the tap's, which records or shows what passes, does. The LVC's, which only
    /// keeps its cache warm, does not: the shell marks it with [`wire::PROXY_OWN`], so that a
    /// replay waits for the subscribers behind the proxy, not for the proxy alone.
    fn own_subscription_counts(&self) -> bool {
        true
    }

    /// Whether the hooks follow subscriber connections ([`ProxyHooks::on_subscriber_joined`]):
    /// the shell then monitors the subscriber side even where it only binds.
    fn follows_joins(&self) -> bool {
        false
    }

    /// A subscriber connection completed its handshake (its subscriptions follow). With
    /// [`ProxyHooks::follows_joins`], called for every one seen before a subscription is
    /// handed to [`ProxyHooks::on_subscriber_message`] (libzmq reports the handshake before it
    /// reads that connection's subscriptions).
    fn on_subscriber_joined(&mut self, _now_ns: u64) {}

    /// A message from the publishers, before the shell forwards it to the subscribers.
    fn on_upstream_message(&mut self, frames: &[Frame], now_ns: u64);

    /// A message from a subscriber (`msg` classifies `frames`), before the
    /// shell forwards it to the publishers; `down` answers the subscribers.
    /// Returns whether the shell forwards it (counted in `not_forwarded` if not); by default
    /// every message goes on, as through a plain XSUB/XPUB proxy.
    fn on_subscriber_message(
        &mut self,
        _msg: FromSubscriber<'_>,
        _frames: &[Frame],
        _down: &mut Downstream<'_>,
        _now_ns: u64,
    ) -> bool {
        true
    }

    /// The start of every step, with or without traffic (an idle proxy steps after each idle
    /// wait: 100 ms at most with `--idle block`): say what has come due, such as a refusal
    /// summary whose interval is up.
    fn on_tick(&mut self, _now_ns: u64) {}

    /// The part's report, given the shell's counters.
    fn report(&self, shell: &ShellCounters) -> Self::Report;
}

/// The proxy agent: two sockets, a frame buffer, the hooks.
pub struct ProxyShell<H: ProxyHooks> {
    frontend: zmq::Socket,
    backend: zmq::Socket,
    frames: Vec<Frame>,
    /// A live message not yet (fully) taken by the XPUB: frames from `next` on
    /// are still to send (lossless delivery, or the rest of a started message).
    pending: Vec<Frame>,
    pending_next: usize,
    delivery: Delivery,
    counters: ShellCounters,
    hooks: H,
    /// Written when the agent closes, so the report survives a failed run.
    report: Arc<Mutex<H::Report>>,
    /// Endpoints in effect, frontend then backend, as `(side, verb, endpoint)`.
    pub endpoints: Vec<(&'static str, &'static str, String)>,
    /// The watched links of each side that connects (frontend, backend); the backend's also
    /// when the hooks follow subscriber joins.
    links: [Option<LinkWatch>; 2],
    /// Handshakes read from the watches, taken after each service (reused).
    updowns: Vec<bool>,
    /// Subscribers behind the proxy that hold [`wire::AWAITS_EOS`] ([`passes_eos_wait`]).
    eos_waits: u64,
}

/// Whether a subscriber's `msg` goes on to the publishers as far as the end-of-stream wait is
/// concerned, with `waits` the subscribers behind the proxy that hold [`wire::AWAITS_EOS`]: its
/// subscription goes up for the first of them and its withdrawal for the last, so a publisher
/// sees one such subscriber on the proxy's connection while any waits, and none once all left
/// (the first confirmation through the proxy, [`wire::TOOK_EOS`], then confirms the end of
/// stream reached it). Forwarded one by one, the XSUB passes every subscription but a withdrawal
/// only when its last one goes: of two subscribers, one that left before the end of stream still
/// counted upstream, and a replay waited its whole `--eos-wait` for its confirmation. Anything
/// else passes (confirmations each; the forms naming a subscriber, [`wire::awaits_eos_as`], each
/// too: a replay waits for each named subscriber behind the proxy by its name).
fn passes_eos_wait(waits: &mut u64, msg: FromSubscriber<'_>) -> bool {
    match msg {
        FromSubscriber::Subscribe(p) if p == wire::AWAITS_EOS => {
            *waits += 1;
            *waits == 1
        }
        FromSubscriber::Unsubscribe(p) if p == wire::AWAITS_EOS => match *waits {
            0 => false,
            n => {
                *waits = n - 1;
                n == 1
            }
        },
        _ => true,
    }
}

/// A proxy's watched links, by side, for its exit line.
#[derive(Debug, Clone, Default)]
pub struct ProxyLinks(Vec<(&'static str, LinkBoard)>);

impl ProxyLinks {
    /// `(side, link)` for every watched endpoint, now.
    pub fn snapshot(&self) -> Vec<(&'static str, LinkStats)> {
        self.0.iter().flat_map(|(side, b)| b.snapshot().into_iter().map(move |l| (*side, l))).collect()
    }

    /// One line for the exit counters (`frontend tcp://… up connects=1 …; …`), None with no links.
    pub fn summary(&self) -> Option<String> {
        let all = self.snapshot();
        (!all.is_empty()).then(|| all.iter().map(|(side, l)| format!("{side} {l}")).collect::<Vec<_>>().join("; "))
    }
}

/// Watch each side's connect endpoints (the sockets are made, not attached yet), and each side's
/// bound endpoints: the publisher connections accepted on the frontend and the subscriber
/// connections accepted on the backend, each refusal and each end said with its side.
fn watch_links(
    ctx: &zmq::Context,
    role: &'static str,
    config: &ProxyConfig,
    frontend: &mut zmq::Socket,
    backend: &mut zmq::Socket,
    follow_joins: bool,
) -> Result<[Option<LinkWatch>; 2], AgentError> {
    let connects = |a: &[Attach]| -> Vec<String> {
        a.iter()
            .filter_map(|a| match a {
                Attach::Connect(e) => Some(e.clone()),
                Attach::Bind(_) => None,
            })
            .collect()
    };
    let part = role.strip_suffix("-proxy").unwrap_or(role);
    let name = |side: &str| format!("{part} {side}");
    let watch = |s: &mut zmq::Socket, side: &str, eps: Vec<String>| {
        LinkWatch::attach(ctx, s, &name(side), &eps).map_err(zerr(role, "starting the link monitor"))
    };
    let front = if config.frontend.iter().any(|a| matches!(a, Attach::Bind(_))) {
        let head = format!("{role}: a publisher's connection to the frontend ended");
        LinkWatch::attach_always(ctx, frontend, &name("frontend"), &connects(&config.frontend))
            .map(|w| Some(w.saying_publisher_ends(head, "--max-msg-bytes", config.max_msg_bytes)))
            .map_err(zerr(role, "starting the link monitor"))?
    } else {
        watch(frontend, "frontend", connects(&config.frontend))?
    };
    let back_binds = config.backend.iter().any(|a| matches!(a, Attach::Bind(_)));
    let back = if follow_joins || back_binds {
        let head = format!("{role}: a subscriber's connection to the backend ended");
        LinkWatch::attach_always(ctx, backend, &name("backend"), &connects(&config.backend))
            .map(|w| if follow_joins { w.following_updowns() } else { w })
            .map(|w| if back_binds { w.saying_subscriber_ends(head, zmqx::MAX_SUBSCRIPTION_BYTES) } else { w })
            .map(Some)
            .map_err(zerr(role, "starting the link monitor"))?
    } else {
        watch(backend, "backend", connects(&config.backend))?
    };
    // Neither proxy has key flags: a loss line must not tell its user to give some.
    let plain = |w: Option<LinkWatch>| w.map(|w| w.keys_by(KeyFlags::NoKeys));
    Ok([plain(front), plain(back)])
}

/// The XPUB's delivery options, set once after [`zmqx::proxy_sockets`] (before it is attached):
/// ZMQ_XPUB_NODROP always (a full subscriber queue is EAGAIN, which the shell
/// waits on or counts, never a silent drop) and ZMQ_XPUB_MANUAL for hooks
/// that apply subscriptions themselves (the LVC). Before any subscriber has
/// been read: options take effect for subscriptions read after them.
fn set_delivery_options(backend: &mut zmq::Socket, manual: bool) -> Result<(), (&'static str, zmq::Error)> {
    zmqx::set_xpub_nodrop(backend, true).map_err(|e| ("setting XPUB_NODROP", e))?;
    if manual {
        zmqx::set_xpub_manual(backend).map_err(|e| ("setting XPUB_MANUAL (libzmq's draft API)", e))?;
    }
    Ok(())
}

fn zerr(role: &'static str, context: &'static str) -> impl FnOnce(zmq::Error) -> AgentError {
    move |source| AgentError::Zmq { role: role.into(), context, source }
}

impl<H: ProxyHooks> ProxyShell<H> {
    /// Make the sockets on `ctx` and attach them; with `subscribe_all`,
    /// subscribe upstream to everything (the LVC, so its cache is warm before
    /// the first subscriber; the tap with `--subscribe-all`).
    pub fn new(ctx: &zmq::Context, config: &ProxyConfig, subscribe_all: bool, hooks: H) -> Result<Self, AgentError> {
        let role = hooks.role();
        let fatal = |(context, source): (String, zmq::Error)| AgentError::Fatal {
            role: role.into(),
            message: format!("zmq error while {context}: {source}"),
        };
        let mut sockets = zmqx::proxy_sockets(ctx, config.hwm_msgs, config.max_msg_bytes).map_err(fatal)?;
        set_delivery_options(&mut sockets.backend, hooks.manual_subscriptions()).map_err(|(c, e)| zerr(role, c)(e))?;
        // Watched before connecting: a peer already listening completes the handshake within
        // microseconds, and a monitor attached after it would never see the link come up.
        let mut links =
            watch_links(ctx, role, config, &mut sockets.frontend, &mut sockets.backend, hooks.follows_joins())?;
        sockets.attach(&config.frontend, &config.backend).map_err(fatal)?;
        let zmqx::ProxySockets { frontend, backend, endpoints } = sockets;
        // No publisher at a bound frontend endpoint 5 s on is said, as an engine's shard says it
        // (`lvc frontend: no publisher has connected to bound EP in 5s; …`), and when one comes.
        if let Some(w) = links[0].as_mut() {
            // `endpoints` holds the frontend's attaches first, in order, as bound (ports resolved).
            let bound: Vec<String> = (config.frontend.iter().zip(&endpoints))
                .filter(|(a, _)| matches!(a, Attach::Bind(_)))
                .map(|(_, (_, _, ep))| ep.clone())
                .collect();
            w.awaiting_publishers(&bound);
        }
        if subscribe_all {
            if !hooks.own_subscription_counts() {
                // Before the `""` it marks: a publisher reading the two apart never counts the
                // proxy as a subscriber in between.
                let mark = [&[1u8][..], wire::PROXY_OWN].concat();
                frontend.send(mark, 0).map_err(zerr(role, "subscribing upstream"))?;
            }
            frontend.send(&[1u8][..], 0).map_err(zerr(role, "subscribing upstream"))?;
        }
        Ok(ProxyShell {
            frontend,
            backend,
            frames: Vec::with_capacity(8),
            pending: Vec::with_capacity(8),
            pending_next: 0,
            delivery: config.delivery,
            counters: ShellCounters::default(),
            hooks,
            report: Arc::default(),
            endpoints,
            links,
            updowns: Vec::new(),
            eos_waits: 0,
        })
    }

    /// The watched links (sides that connect), to read after the run.
    pub fn links(&self) -> ProxyLinks {
        let sides = ["frontend", "backend"];
        ProxyLinks(sides.iter().zip(&self.links).filter_map(|(s, w)| Some((*s, w.as_ref()?.board()))).collect())
    }

    /// Look at the links when due (every so many rounds or [`crate::link::SERVICE_EVERY_NS`],
    /// so a proxy blocked on a full backend still sees a publisher's loss; `at_once`: now).
    fn service_links(&mut self, at_once: bool, now_ns: u64) {
        let [front, back] = &mut self.links;
        for (w, socket) in [(front, &self.frontend), (back, &self.backend)] {
            if let Some(w) = w {
                if at_once || w.due_at(now_ns) {
                    w.service(socket);
                }
            }
        }
        if let Some(w) = &self.links[0] {
            let a = w.accepted();
            (self.counters.publisher_connects, self.counters.publisher_disconnects) = (a.connects, a.disconnects);
            self.counters.publisher_refused = a.refused;
        }
        if let Some(w) = &self.links[1] {
            let a = w.accepted();
            (self.counters.subscriber_connects, self.counters.subscriber_disconnects) = (a.connects, a.disconnects);
            self.counters.subscriber_refused = a.refused;
        }
        self.counters.accept_failed = self.links.iter().flatten().map(|w| w.accepted().accept_failed).sum();
        self.counters.handshake_ledger_forgotten =
            self.links.iter().flatten().map(|w| w.accepted().ledger_forgotten).sum();
        self.take_joins(now_ns);
    }

    /// Hand the subscriber side's handshakes to the hooks (a watch keeps them only when the
    /// hooks follow joins: [`LinkWatch::following_updowns`]).
    fn take_joins(&mut self, now_ns: u64) {
        if let Some(w) = &mut self.links[1] {
            w.take_updowns(&mut self.updowns);
            for _ in self.updowns.drain(..).filter(|&up| up) {
                self.hooks.on_subscriber_joined(now_ns);
            }
        }
    }

    /// Before a subscription is handled: every subscriber handshake so far to the hooks.
    fn catch_up_joins(&mut self, now_ns: u64) {
        if let Some(w) = &mut self.links[1] {
            w.drain(&self.backend);
            self.take_joins(now_ns);
        }
    }

    /// Print each endpoint in effect as `{name}: frontend bound tcp://...`,
    /// then the delivery mode as `{name}: delivery lossless (…)`: on stdout, or on stderr when
    /// stdout is kept for the one JSON object of `exit` ([`ExitCounters::Json`]).
    pub fn print_endpoints(&self, name: &str, exit: ExitCounters) {
        let say = |line: std::fmt::Arguments<'_>| match exit {
            ExitCounters::Text => crate::diag::out(format_args!("{line}\n")),
            ExitCounters::Json => crate::diag::line(line),
        };
        for (side, verb, ep) in &self.endpoints {
            say(format_args!("{name}: {side} {verb} {ep}"));
        }
        let what = match self.delivery {
            Delivery::Lossless => "a full subscriber queue pushes back on the publishers, nothing is dropped",
            Delivery::Lossy => "a message a full subscriber queue cannot take is dropped and counted (dropped_full)",
        };
        say(format_args!("{name}: delivery {} ({what})", self.delivery.name()));
    }

    /// The endpoint in effect on `side` (`frontend` or `backend`), the first if several.
    pub fn endpoint(&self, side: &str) -> Option<&str> {
        self.endpoints.iter().find(|e| e.0 == side).map(|e| e.2.as_str())
    }

    /// Send what is pending of the current live message. `Ok(true)` when it
    /// is all sent or dropped (lossy, counted), `Ok(false)` when the XPUB is
    /// full and delivery is lossless (or the message is half sent): try again later.
    fn flush_pending(&mut self) -> Result<bool, AgentError> {
        match send_frames_from(&mut self.backend, &mut self.pending, &mut self.pending_next) {
            Ok(()) => {
                self.counters.forwarded_down += 1;
                self.pending.clear();
                Ok(true)
            }
            Err(zmq::Error::EAGAIN) if self.delivery == Delivery::Lossy && self.pending_next == 0 => {
                self.counters.dropped_full += 1;
                self.pending.clear();
                Ok(true)
            }
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {
                if self.pending_next == 0 {
                    self.counters.blocked += 1;
                }
                Ok(false)
            }
            Err(_) => {
                self.counters.send_failures += 1;
                self.pending.clear();
                Ok(true)
            }
        }
    }

    /// The hooks, for their counters.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    /// The report so far.
    pub fn report(&self) -> H::Report {
        self.hooks.report(&self.counters)
    }

    /// Run on its own thread via the [`Runner`] until `stop` is set or it
    /// fails; the report comes back either way, with the run's outcome.
    pub fn run(self, idle: IdleStrategy, stop: StopFlag) -> (H::Report, Result<(), AgentError>)
    where
        H: 'static,
    {
        let slot = self.report.clone();
        let result = Runner::start(RunSpec { core: None, idle }, stop, self).and_then(|h| h.join()).map(drop);
        let report = *slot.lock().unwrap_or_else(|p| p.into_inner());
        (report, result)
    }
}

impl<H: ProxyHooks> Agent for ProxyShell<H> {
    fn role(&self) -> &str {
        self.hooks.role()
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let role = self.hooks.role();
        let now_ns = clock::monotonic_ns();
        self.hooks.on_tick(now_ns);
        self.service_links(false, now_ns);
        // A live message the XPUB has not taken yet goes first: nothing else
        // is read until it is (back-pressure: the XSUB's queue fills, TCP
        // pushes back on the publishers).
        if !self.pending.is_empty() && !self.flush_pending()? {
            return Ok(Step::Blocked(0));
        }
        let mut done = 0;
        // Subscriptions first: a joining subscriber is answered before more
        // live traffic, up to ANSWER_MSGS_PER_ROUND cached messages a round.
        let mut round_msgs = 0u64;
        let follow_joins = self.hooks.follows_joins();
        for _ in 0..BATCH_MSGS {
            if round_msgs >= ANSWER_MSGS_PER_ROUND {
                break;
            }
            if !recv_frames(&mut self.backend, &mut self.frames).map_err(zerr(role, "receiving a subscription"))? {
                break;
            }
            if follow_joins {
                // The handshake of the connection this came from was reported before it.
                self.catch_up_joins(now_ns);
            }
            let msg = FromSubscriber::classify(&self.frames);
            let mut down = Downstream {
                socket: &mut self.backend,
                send_failures: &mut self.counters.send_failures,
                round_msgs: &mut round_msgs,
            };
            let forward = self.hooks.on_subscriber_message(msg, &self.frames, &mut down, now_ns)
                && passes_eos_wait(&mut self.eos_waits, msg);
            if forward && self.frames.iter().any(|f| f.len() > zmqx::MAX_PREFIX_BYTES + 1) {
                self.counters.too_long_up += 1;
                if self.counters.too_long_up == 1 {
                    crate::diag!(
                        "{role}: a subscriber sent a subscription (or message) of {} bytes: not forwarded to the \
                         publishers, whose libzmq cannot take one over {} bytes safely (counted in too_long_up; \
                         said once)",
                        self.frames.iter().map(|f| f.len()).max().unwrap_or(0),
                        zmqx::MAX_PREFIX_BYTES
                    );
                }
            } else if forward {
                let mut next = 0;
                match send_frames_from(&mut self.frontend, &mut self.frames, &mut next) {
                    Ok(()) => self.counters.forwarded_up += 1,
                    Err(_) => self.counters.send_failures += 1,
                }
            } else {
                self.counters.not_forwarded += 1;
            }
            self.frames.clear();
            done += 1;
        }
        for _ in 0..BATCH_MSGS {
            if !recv_frames(&mut self.frontend, &mut self.frames).map_err(zerr(role, "receiving from publishers"))? {
                break;
            }
            self.counters.messages_in += 1;
            self.counters.frames_in += self.frames.len() as u64;
            self.counters.bytes_in += self.frames.iter().map(|f| f.len() as u64).sum::<u64>();
            self.hooks.on_upstream_message(&self.frames, now_ns);
            std::mem::swap(&mut self.frames, &mut self.pending);
            self.pending_next = 0;
            done += 1;
            if !self.flush_pending()? {
                return Ok(Step::Blocked(done));
            }
        }
        Ok(Step::Worked(done))
    }

    fn blocked_wait(&mut self, timeout: Duration) {
        // An XPUB is always "writable" to poll (libzmq's dist has_out), so
        // wait for a subscription (or the timeout) and try again.
        let _ = zmqx::wait_ready(&self.backend, zmq::POLLIN, timeout);
    }

    fn idle_wait(&mut self, timeout: Duration) {
        self.service_links(true, clock::monotonic_ns());
        // An error (a signal) just returns: the runner looks at its stop flag.
        let _ = zmqx::wait_any([&self.frontend, &self.backend], zmq::POLLIN, timeout);
    }

    fn on_close(&mut self) {
        self.service_links(true, clock::monotonic_ns());
        for w in self.links.iter_mut().flatten() {
            w.finish();
        }
        let r = self.report();
        if let Ok(mut slot) = self.report.lock() {
            *slot = r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(frames: &[&[u8]]) -> Vec<zmq::Message> {
        frames.iter().map(|f| zmq::Message::from(*f)).collect()
    }

    #[test]
    fn subscriber_messages_are_classified() {
        assert_eq!(FromSubscriber::classify(&msg(&[b"\x01ES"])), FromSubscriber::Subscribe(b"ES"));
        assert_eq!(FromSubscriber::classify(&msg(&[b"\x01"])), FromSubscriber::Subscribe(b""));
        assert_eq!(FromSubscriber::classify(&msg(&[b"\x00ES"])), FromSubscriber::Unsubscribe(b"ES"));
        assert_eq!(FromSubscriber::classify(&msg(&[b"\x02ES"])), FromSubscriber::Other);
        assert_eq!(FromSubscriber::classify(&msg(&[b""])), FromSubscriber::Other);
        assert_eq!(FromSubscriber::classify(&msg(&[b"\x01ES", b"more"])), FromSubscriber::Other, "multipart");
        assert_eq!(FromSubscriber::classify(&msg(&[])), FromSubscriber::Other);
    }

    /// Forwards everything, adds nothing: the shell alone.
    struct Plain;

    impl ProxyHooks for Plain {
        type Report = ShellCounters;
        fn role(&self) -> &'static str {
            "plain-proxy"
        }
        fn on_upstream_message(&mut self, _: &[Frame], _: u64) {}
        fn report(&self, shell: &ShellCounters) -> ShellCounters {
            *shell
        }
    }

    /// A side that connects to a peer already listening finishes its handshake within
    /// microseconds, on libzmq's I/O thread: the link must be watched from before the connect,
    /// or that handshake is never seen and the link shows `connecting connects=0` for the whole
    /// run (the tap in an lvc → tap → engine chain, 2 runs in 40). The peer receiving the
    /// proxy's subscription proves the handshake is done, and the monitor's event, sent before
    /// the subscription goes out, is then waiting: one service must see the link up.
    #[test]
    fn a_connecting_side_is_up_from_its_first_handshake() {
        let ctx = zmq::Context::new();
        let upstream = ctx.socket(zmq::XPUB).expect("xpub");
        upstream.set_xpub_verbose(true).expect("verbose");
        upstream.set_rcvtimeo(10_000).expect("rcvtimeo");
        let ep = zmqx::bind_resolved(&upstream, "tcp://127.0.0.1:*").expect("bind");
        for round in 0..10 {
            let config = ProxyConfig {
                frontend: vec![Attach::Connect(ep.clone())],
                // Many subscriber endpoints: binding them takes a few ms, far longer than the
                // frontend's handshake (the old order, connect first and watch after the binds,
                // then missed it in every round, not only under load).
                backend: (0..40).map(|_| Attach::Bind("tcp://127.0.0.1:*".into())).collect(),
                hwm_msgs: 1_000,
                max_msg_bytes: 1 << 20,
                idle: IdleStrategy::default(),
                delivery: Delivery::Lossless,
            };
            let mut shell = ProxyShell::new(&ctx, &config, true, Plain).expect("proxy");
            // (An unsubscribe of the previous round's proxy may come first.)
            while upstream.recv_bytes(0).expect("the proxy's subscription") != b"\x01" {}
            shell.service_links(true, clock::monotonic_ns());
            let links = shell.links().snapshot();
            let (side, link) = &links[0];
            assert_eq!(
                (*side, link.state.as_str(), link.connects, link.lost_total()),
                ("frontend", "up", 1, 0),
                "round {round}: {link}"
            );
            drop(shell);
        }
    }

    /// Two subscribers behind the proxy wait for an end of stream, then leave one after the
    /// other: upstream (a verbose XPUB, as a replay's) sees one such subscriber while either
    /// waits, and its withdrawal when the second leaves. Before, it saw two join and one leave
    /// (the XSUB passes a withdrawal only when its last one goes), so a replay upstream waited
    /// its whole `--eos-wait` for the confirmation of a subscriber long gone.
    #[test]
    fn subscribers_waiting_for_an_end_of_stream_show_upstream_as_one_while_any_waits() {
        let ctx = zmq::Context::new();
        let mut upstream = ctx.socket(zmq::XPUB).expect("xpub");
        upstream.set_xpub_verbose(true).expect("verbose");
        zmqx::set_xpub_verboser(&mut upstream, true).expect("verboser");
        let ep = zmqx::bind_resolved(&upstream, "tcp://127.0.0.1:*").expect("bind");
        let config = ProxyConfig {
            frontend: vec![Attach::Connect(ep)],
            backend: vec![Attach::Bind("tcp://127.0.0.1:*".into())],
            hwm_msgs: 1_000,
            max_msg_bytes: 1 << 20,
            idle: IdleStrategy::default(),
            delivery: Delivery::Lossless,
        };
        let mut shell = ProxyShell::new(&ctx, &config, false, Plain).expect("proxy");
        let back = shell.endpoint("backend").expect("bound").to_string();
        let [first, second]: [zmq::Socket; 2] = std::array::from_fn(|_| {
            let s = ctx.socket(zmq::SUB).expect("sub");
            s.connect(&back).expect("connect");
            s.set_subscribe(b"ES").expect("subscribe");
            s.set_subscribe(wire::AWAITS_EOS).expect("subscribe");
            s
        });
        // The proxy's steps until upstream has seen `until` (10 s at most); what it saw.
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut pump = |until: &[u8], times: usize, seen: &mut Vec<Vec<u8>>| {
            let end = std::time::Instant::now() + Duration::from_secs(10);
            while seen.iter().filter(|e| e.as_slice() == until).count() < times {
                assert!(std::time::Instant::now() < end, "upstream never saw {until:?} x{times}: {seen:?}");
                shell.do_work().expect("the proxy's step");
                while let Ok(ev) = upstream.recv_bytes(zmq::DONTWAIT) {
                    seen.push(ev);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let ev = |kind: u8, prefix: &[u8]| [&[kind][..], prefix].concat();
        let waits = |seen: &[Vec<u8>], kind: u8| seen.iter().filter(|e| **e == ev(kind, wire::AWAITS_EOS)).count();
        // Both subscribers' subscriptions were forwarded (each `ES` is, verbose).
        pump(&ev(1, b"ES"), 2, &mut seen);
        assert_eq!(waits(&seen, 1), 1, "one subscriber waiting, however many behind: {seen:?}");
        // The first leaves; a subscription after its withdrawal marks when that was read.
        first.set_unsubscribe(wire::AWAITS_EOS).expect("unsubscribe");
        first.set_subscribe(b"X0").expect("subscribe");
        pump(&ev(1, b"X0"), 1, &mut seen);
        assert_eq!(waits(&seen, 0), 0, "the second still waits: {seen:?}");
        // The second leaves by closing: its connection's end withdraws its subscriptions.
        drop(second);
        pump(&ev(0, wire::AWAITS_EOS), 1, &mut seen);
        assert_eq!((waits(&seen, 1), waits(&seen, 0)), (1, 1), "{seen:?}");
    }

    #[test]
    fn wait_any_returns_when_either_side_is_ready() {
        let ctx = zmq::Context::new();
        let (a_in, b_in) = (ctx.socket(zmq::PULL).expect("pull"), ctx.socket(zmq::PULL).expect("pull"));
        a_in.bind("inproc://wait-any-a").expect("bind");
        b_in.bind("inproc://wait-any-b").expect("bind");
        let b_out = ctx.socket(zmq::PUSH).expect("push");
        b_out.connect("inproc://wait-any-b").expect("connect");
        let ready = zmqx::wait_any([&a_in, &b_in], zmq::POLLIN, Duration::from_micros(300)).expect("wait");
        assert!(!ready, "nothing sent yet: the wait times out");
        b_out.send("x", 0).expect("send");
        let ready = zmqx::wait_any([&a_in, &b_in], zmq::POLLIN, Duration::from_secs(5)).expect("wait");
        assert!(ready, "the second socket's message ends the wait");
        assert_eq!(b_in.recv_bytes(zmq::DONTWAIT).expect("there"), b"x");
    }
}
