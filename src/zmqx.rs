//! The few libzmq features the `zmq` crate (0.10) does not expose, behind a
//! safe face, plus endpoint helpers shared by every socket owner.

use std::os::raw::{c_int, c_void};

pub mod frame;
pub mod heap;
pub mod pool;

/// libzmq socket option numbers (zmq.h, 4.3.x) that have no setter in the crate.
const ZMQ_XPUB_NODROP: c_int = 69;
const ZMQ_XPUB_VERBOSER: c_int = 78;
const ZMQ_XPUB_MANUAL: c_int = 71;
const ZMQ_TCP_MAXRT: c_int = 80;
/// Draft API (libzmq built with it: the workspace's zmq-sys).
const ZMQ_XPUB_MANUAL_LAST_VALUE: c_int = 98;

fn set_int_option(socket: &mut zmq::Socket, option: c_int, value: c_int) -> zmq::Result<()> {
    // SAFETY: the socket pointer is valid for the socket's lifetime, the option
    // value is a plain int of the size we pass, and libzmq copies it.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            option,
            &value as *const c_int as *const c_void,
            std::mem::size_of::<c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: zmq_errno only reads thread-local errno.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

/// ZMQ_XPUB_NODROP: an XPUB that would drop at the HWM returns EAGAIN instead,
/// so a publisher can wait and send again (lossless back-pressure).
pub fn set_xpub_nodrop(socket: &mut zmq::Socket, on: bool) -> zmq::Result<()> {
    set_int_option(socket, ZMQ_XPUB_NODROP, on as c_int)
}

/// ZMQ_TCP_MAXRT: each TCP connection of the socket made after this is ended once data it
/// sent stays unacknowledged for `ms` milliseconds (Linux `TCP_USER_TIMEOUT`); 0: the kernel's
/// retransmission limit.
pub fn set_tcp_maxrt(socket: &mut zmq::Socket, ms: i32) -> zmq::Result<()> {
    set_int_option(socket, ZMQ_TCP_MAXRT, ms)
}

/// ZMQ_XPUB_VERBOSER: like ZMQ_XPUB_VERBOSE (every subscribe is passed up,
/// duplicates included) and also every unsubscribe, so a proxy that forwards
/// them upstream keeps its XSUB's per-prefix counts balanced.
pub fn set_xpub_verboser(socket: &mut zmq::Socket, on: bool) -> zmq::Result<()> {
    set_int_option(socket, ZMQ_XPUB_VERBOSER, on as c_int)
}

/// ZMQ_XPUB_MANUAL on an XPUB: subscriptions reach the owner (every one,
/// duplicates included) and are applied only when it calls `set_subscribe` /
/// `set_unsubscribe` right after reading them; libzmq applies them to the
/// subscriber they came from (its `_last_pipe`, set by the read).
pub fn set_xpub_manual(socket: &mut zmq::Socket) -> zmq::Result<()> {
    set_int_option(socket, ZMQ_XPUB_MANUAL, 1)
}

/// Send `frames` as one message to the subscriber whose (un)subscription was
/// read last, and to nobody else, without blocking (an XPUB in manual mode,
/// [`set_xpub_manual`]). Frames are copied into the message.
///
/// How, in libzmq 4.3.5 (`src/xpub.cpp`): with ZMQ_XPUB_MANUAL_LAST_VALUE on,
/// the first message sent after a read is matched against the last reader's
/// pipe only, and that send clears it. So this switches last-value on, sends
/// the one message, and switches it off again (`MANUAL_LAST_VALUE` 0 turns
/// manual off too, so `MANUAL` 1 turns it back on): live traffic sent later
/// always goes to every matching subscriber, even when a read was not
/// followed by an answer. `setsockopt` does not process the socket's
/// commands, so no subscription is read between the three calls.
pub fn send_to_last_subscriber(socket: &mut zmq::Socket, frames: &mut [frame::Frame]) -> zmq::Result<()> {
    set_int_option(socket, ZMQ_XPUB_MANUAL_LAST_VALUE, 1)?;
    let mut next = 0;
    let mut sent = frame::send_frames_from(socket, frames, &mut next);
    if sent.is_err() && next > 0 {
        // Never seen: the HWM counts whole messages (pipe.cpp), so once the
        // first frame is queued the rest fit. Were it to happen, finish the
        // message (a blocking send) rather than leave it open for the next.
        let n = frames.len();
        sent = frames[next..]
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, f)| f.send(socket, if next + i + 1 < n { zmq::SNDMORE } else { 0 }));
    }
    let off = set_int_option(socket, ZMQ_XPUB_MANUAL_LAST_VALUE, 0);
    let manual = set_int_option(socket, ZMQ_XPUB_MANUAL, 1);
    sent.and(off).and(manual)
}

// libzmq functions zmq-sys 0.12 does not re-export (the draft API's monitor it does not
// declare); the library mdsub links (the workspace's zmq-sys build) has them.
extern "C" {
    fn zmq_curve_public(
        z85_public_key: *mut std::os::raw::c_char,
        z85_secret_key: *const std::os::raw::c_char,
    ) -> c_int;
    /// Draft API (4.3.5, built in): a socket monitor whose events carry both ends' addresses.
    fn zmq_socket_monitor_versioned(
        s: *mut c_void,
        addr: *const std::os::raw::c_char,
        events: u64,
        event_version: c_int,
        kind: c_int,
    ) -> c_int;
}

/// The CURVE public key of `secret` (libzmq's `zmq_curve_public`, libsodium's scalar
/// multiplication): what a key file's `public-key` must be for its `secret-key`. None when
/// this libzmq has no CURVE.
pub fn curve_public(secret: &[u8; 32]) -> Option<[u8; 32]> {
    let secret_z85 = std::ffi::CString::new(zmq::z85_encode(secret).ok()?).ok()?;
    let mut public_z85 = [0 as std::os::raw::c_char; 41];
    // SAFETY: libzmq reads 40 Z85 characters and a NUL from the secret and writes 40 and a NUL
    // into the public buffer, which has room for them.
    let rc = unsafe { zmq_curve_public(public_z85.as_mut_ptr(), secret_z85.as_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: libzmq wrote a NUL-terminated string into the buffer.
    let text = unsafe { std::ffi::CStr::from_ptr(public_z85.as_ptr()) };
    zmq::z85_decode(text.to_str().ok()?).ok()?.try_into().ok()
}

/// Start a version 2 socket monitor on `socket` (libzmq's draft
/// `zmq_socket_monitor_versioned`): `events` go to a PAIR bound at `inproc` as
/// `[event u64][value count u64][values u64…][local address][remote address]`,
/// so a server socket's events name the peer ([`MonitorEventV2`]).
pub fn monitor_v2(socket: &mut zmq::Socket, inproc: &str, events: u64) -> zmq::Result<()> {
    let addr = std::ffi::CString::new(inproc).map_err(|_| zmq::Error::EINVAL)?;
    // SAFETY: the socket pointer is valid for the socket's lifetime; libzmq copies the address.
    let rc = unsafe { zmq_socket_monitor_versioned(socket.as_mut_ptr(), addr.as_ptr(), events, 2, zmq::PAIR as c_int) };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: zmq_errno only reads thread-local errno.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

/// One version 2 monitor event ([`monitor_v2`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorEventV2 {
    pub event: u64,
    /// The first value (a handshake failure's protocol error code, a ZAP status code).
    pub value: Option<u64>,
    pub local: String,
    pub remote: String,
}

impl MonitorEventV2 {
    /// Parse the frames of one event; None when they are not one (nothing trusted blindly).
    pub fn parse(frames: &[zmq::Message]) -> Option<MonitorEventV2> {
        let word = |m: &zmq::Message| <[u8; 8]>::try_from(&m[..]).ok().map(u64::from_ne_bytes);
        let (head, rest) = frames.split_first()?;
        let (count, rest) = rest.split_first()?;
        let count = usize::try_from(word(count)?).ok()?;
        if rest.len() != count.checked_add(2)? {
            return None;
        }
        let text = |m: &zmq::Message| String::from_utf8_lossy(m).into_owned();
        Some(MonitorEventV2 {
            event: word(head)?,
            value: rest[..count].first().and_then(word),
            local: text(&rest[count]),
            remote: text(&rest[count + 1]),
        })
    }
}

/// How a socket attaches to an endpoint; shown as the command line writes it
/// (`bind:tcp://127.0.0.1:*`, `connect:tcp://host:5556`), which `cli::args` parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    Bind(String),
    Connect(String),
}

impl std::fmt::Display for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attach::Bind(e) => write!(f, "bind:{e}"),
            Attach::Connect(e) => write!(f, "connect:{e}"),
        }
    }
}

impl Attach {
    /// Bind or connect `socket`; returns the endpoint in effect (a bound
    /// wildcard port comes back resolved).
    pub fn apply(&self, socket: &zmq::Socket) -> zmq::Result<String> {
        match self {
            Attach::Bind(e) => bind_resolved(socket, e),
            Attach::Connect(e) => socket.connect(e).map(|()| e.clone()),
        }
    }

    /// `bound` or `connecting to` (libzmq connects in the background), for startup lines.
    pub fn verb(&self) -> &'static str {
        match self {
            Attach::Bind(_) => "bound",
            Attach::Connect(_) => "connecting to",
        }
    }
}

/// One frame as a whole-message receive fills it: the `zmq` crate's [`zmq::Message`] or
/// [`frame::Frame`] (libzmq's own message, which a failed send leaves intact).
trait RecvFrame: Sized {
    /// An empty frame to receive into.
    fn empty() -> Self;
    /// Whether another frame of the same message follows (after a receive).
    fn more(&self) -> bool;
}

impl RecvFrame for zmq::Message {
    fn empty() -> Self {
        zmq::Message::new()
    }
    fn more(&self) -> bool {
        self.get_more()
    }
}

/// Receive one whole message into `frames` (cleared first, capacity kept), `recv` taking one
/// frame with the flags given: the first without blocking, the rest as they come (the frames of
/// one message arrive together, so that does not wait). `Ok(false)`: nothing waiting (EAGAIN) or
/// interrupted by a signal (EINTR) before the first frame.
fn recv_whole<F: RecvFrame>(
    frames: &mut Vec<F>,
    mut recv: impl FnMut(&mut F, i32) -> zmq::Result<()>,
) -> zmq::Result<bool> {
    frames.clear();
    let mut first = F::empty();
    match recv(&mut first, zmq::DONTWAIT) {
        Ok(()) => {}
        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => return Ok(false),
        Err(e) => return Err(e),
    }
    let mut more = first.more();
    frames.push(first);
    while more {
        let mut next = F::empty();
        loop {
            match recv(&mut next, 0) {
                Err(zmq::Error::EINTR) => continue,
                other => break other?,
            }
        }
        more = next.more();
        frames.push(next);
    }
    Ok(true)
}

/// Receive one whole message (all its frames) into `frames` (cleared first,
/// capacity kept) without blocking for the first frame. `Ok(false)`: nothing
/// waiting (EAGAIN) or interrupted by a signal (EINTR).
pub fn recv_message(socket: &zmq::Socket, frames: &mut Vec<zmq::Message>) -> zmq::Result<bool> {
    recv_whole(frames, |m, flags| socket.recv(m, flags))
}

/// Send one frame. XPUB, PUB and XSUB sends do not block (they drop at the
/// HWM unless ZMQ_XPUB_NODROP), so a signal cannot interrupt them in practice.
pub fn send_frame(socket: &zmq::Socket, frame: zmq::Message, more: bool) -> zmq::Result<()> {
    socket.send(frame, if more { zmq::SNDMORE } else { 0 })
}

/// Send all of `frames` as one message (moves them out, capacity kept).
pub fn send_message(socket: &zmq::Socket, frames: &mut Vec<zmq::Message>) -> zmq::Result<()> {
    let n = frames.len();
    for (i, f) in frames.drain(..).enumerate() {
        send_frame(socket, f, i + 1 < n)?;
    }
    Ok(())
}

/// Largest message a publishing socket (PUB, XPUB) mdsub binds or connects takes from its
/// subscribers, who send subscriptions ([`bound_subscriptions`]).
pub const MAX_SUBSCRIPTION_BYTES: i64 = 64 << 10;

/// Bound what a publishing socket (PUB, XPUB) takes from its subscribers, their subscriptions,
/// to [`MAX_SUBSCRIPTION_BYTES`] a message: a longer one ends that subscriber's connection, as
/// ZMQ_MAXMSGSIZE does. Without it libzmq takes a subscription of any length and keeps it in its
/// subscription trie, a node of some 40 bytes per byte: one peer's 500 MB subscription, sent
/// before any access check of mdsub's (none is asked of a plain socket), grew a replay and a clone
/// server past 20 GB of memory until the kernel's OOM killer ended them. (Only inbound messages
/// are bounded: what the socket publishes is not.)
pub fn bound_subscriptions(socket: &zmq::Socket) -> Result<(), zmq::Error> {
    socket.set_maxmsgsize(MAX_SUBSCRIPTION_BYTES)
}

/// Longest subscription prefix mdsub hands to a libzmq socket that keeps a subscription trie
/// (XSUB, SUB): a proxy's forwarding from its subscribers to its publishers, an engine
/// profile's `subscribe` prefixes, the clone client's subscription to its subtree. The hazard
/// is libzmq's `trie_t` (4.3.5), which adds and removes a prefix by recursing once per byte:
/// a 40 KB subscription, undone when its subscriber left, overflowed a proxy thread's 2 MiB
/// agent stack and aborted the process (`thread 'tap-proxy' has overflowed its stack`, exit 134:
/// the length the hostile-input audit found it at, with the tap and the LVC). Topics are at most [`crate::wire::MAX_TOPIC_LEN`] bytes, so a
/// longer prefix can match no more than its first few hundred bytes do; 4 KiB keeps the
/// recursion a tenth of the length that overflowed.
pub const MAX_PREFIX_BYTES: usize = 4 << 10;

/// The two sockets of a pub-sub proxy (the LVC, the tap).
pub struct ProxySockets {
    /// XSUB toward the publishers.
    pub frontend: zmq::Socket,
    /// XPUB toward the subscribers, VERBOSE and VERBOSER: every subscribe and
    /// unsubscribe reaches the proxy, so it can answer and forward each.
    pub backend: zmq::Socket,
    /// Endpoints in effect, frontend then backend, as `(side, verb, endpoint)`
    /// (empty until [`ProxySockets::attach`]).
    pub endpoints: Vec<(&'static str, &'static str, String)>,
}

/// Make a proxy's sockets with SNDHWM = RCVHWM = `hwm_msgs`, LINGER 0, and
/// ZMQ_MAXMSGSIZE `max_msg_bytes` toward the publishers
/// ([`MAX_SUBSCRIPTION_BYTES`] toward the subscribers, who only send
/// subscriptions); not attached yet, so a link monitor can be put on a side
/// before it connects ([`ProxySockets::attach`] then). An error names what was being done.
pub fn proxy_sockets(
    ctx: &zmq::Context,
    hwm_msgs: i32,
    max_msg_bytes: i64,
) -> Result<ProxySockets, (String, zmq::Error)> {
    let ctxt = |what: &str| {
        let what = what.to_string();
        move |e| (what, e)
    };
    let front = ctx.socket(zmq::XSUB).map_err(ctxt("making the XSUB"))?;
    let mut back = ctx.socket(zmq::XPUB).map_err(ctxt("making the XPUB"))?;
    for s in [&front, &back] {
        s.set_sndhwm(hwm_msgs).map_err(ctxt("setting SNDHWM"))?;
        s.set_rcvhwm(hwm_msgs).map_err(ctxt("setting RCVHWM"))?;
        s.set_linger(0).map_err(ctxt("setting LINGER"))?;
    }
    front.set_maxmsgsize(max_msg_bytes).map_err(ctxt("setting MAXMSGSIZE"))?;
    bound_subscriptions(&back).map_err(ctxt("setting MAXMSGSIZE"))?;
    back.set_xpub_verbose(true).map_err(ctxt("setting XPUB_VERBOSE"))?;
    set_xpub_verboser(&mut back, true).map_err(ctxt("setting XPUB_VERBOSER"))?;
    Ok(ProxySockets { frontend: front, backend: back, endpoints: Vec::new() })
}

impl ProxySockets {
    /// Bind or connect each side to its endpoints, recording each in effect in `endpoints`.
    pub fn attach(&mut self, frontend: &[Attach], backend: &[Attach]) -> Result<(), (String, zmq::Error)> {
        for (side, socket, attaches) in [("frontend", &self.frontend, frontend), ("backend", &self.backend, backend)] {
            for a in attaches {
                let attached =
                    a.apply(socket).map_err(|e| (format!("attaching the {side} to {a}{}", bind_hint(e)), e))?;
                self.endpoints.push((side, a.verb(), attached));
            }
        }
        Ok(())
    }
}

/// What a bind's error means when libzmq's words mislead: `ENODEV` ("No such device") is an
/// address no interface of this host has (or a name that does not resolve to one). Empty
/// otherwise; meant to follow the endpoint in a message.
pub fn bind_hint(e: zmq::Error) -> &'static str {
    match e {
        zmq::Error::ENODEV => " (no interface of this host has that address: bind takes one of this host's addresses, an interface name or *)",
        _ => "",
    }
}

/// The context of a failed bind, `binding WHAT`, with what `e` means there when libzmq's
/// own words do not say it ([`bind_hint`]): every bind of a name or address names it so.
pub fn binding(what: impl std::fmt::Display, e: zmq::Error) -> String {
    format!("binding {what}{}", bind_hint(e))
}

/// The ZAP domain of a server socket under no access policy ([`refuse_zmtp1`]). A context's
/// ZAP handler, where one runs (another socket of it has a policy), lets every peer of this
/// domain in.
pub const OPEN_ZAP_DOMAIN: &str = "mdsub-open";

/// Make `socket`, a server socket about to bind, end connections whose first bytes libzmq
/// takes for ZMTP 1.0 (libzmq 2.x; random bytes are, whenever their first is not 0xFF): without a
/// ZAP domain libzmq 4.3.5 accepts such a peer with no handshake and reads whatever it sends as
/// messages, so a port scanner or a stray client at a bound frontend put garbage into a proxy's
/// stream (an LVC cached it as a topic, a tap forwarded it) and a made-up subscription to
/// everything into a publisher. With a domain, libzmq ends a ZMTP 1.0 connection in its
/// handshake (a protocol error: counted as `handshake_failed_protocol` where the socket's
/// handshakes are watched) and asks the context's ZAP handler about the others only if one is
/// bound (a domain does not make ZAP compulsory: `ZMQ_ZAP_ENFORCE_DOMAIN` is off). A socket
/// that already has a domain (an access policy's) keeps it. ZMTP 2.0 and 3.x peers are not
/// touched.
pub fn refuse_zmtp1(socket: &zmq::Socket) -> zmq::Result<()> {
    if matches!(socket.get_zap_domain()?, Ok(d) if d.is_empty()) {
        socket.set_zap_domain(OPEN_ZAP_DOMAIN)?;
    }
    Ok(())
}

/// Bind `socket` to `endpoint` and return the endpoint actually bound (so
/// `tcp://127.0.0.1:*` comes back with its port). The socket refuses ZMTP 1.0 peers first
/// ([`refuse_zmtp1`]).
pub fn bind_resolved(socket: &zmq::Socket, endpoint: &str) -> zmq::Result<String> {
    refuse_zmtp1(socket)?;
    socket.bind(endpoint)?;
    match socket.get_last_endpoint()? {
        Ok(s) => Ok(s),
        Err(_) => Ok(endpoint.to_string()),
    }
}

/// Check the shape of a ZeroMQ endpoint (`tcp://host:port`, `ipc://path`,
/// `inproc://name`); returns a human reason, naming the endpoint, when it is malformed.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    check_endpoint_as(endpoint, "tcp://host:port, ipc://path or inproc://name")
}

/// [`check_endpoint`] for an endpoint that takes only `forms`, as a transport fault states them
/// (a publisher's endpoint: `tcp://HOST:PORT or ipc://PATH`, inproc being refused there).
pub fn check_endpoint_as(endpoint: &str, forms: &str) -> Result<(), String> {
    endpoint_transport(endpoint).map(drop).map_err(|why| match why {
        EndpointProblem::Shape(_) => format!("endpoint `{endpoint}`: {why}"),
        _ => format!("endpoint `{endpoint}`: {why} (expected {forms})"),
    })
}

/// What libzmq's connect refuses (`Invalid argument`, at start) in a tcp endpoint that
/// [`endpoint_transport`] takes, with the reason; `None` for one it takes or another transport.
/// A bind takes `*` for the host (every interface) and the port (any); a connect needs both,
/// and libzmq's connect takes a host of ASCII letters, digits, `.`, `-` and `_` only (an IPv6
/// address in brackets, a `%zone`), starting with a letter or a digit (its `socket_base.cpp`).
pub fn connect_problem(endpoint: &str) -> Option<EndpointProblem> {
    let (source, target) = crate::endpoint::tcp_parts(endpoint)?;
    let (host, port) = target.rsplit_once(':')?;
    let shape = |why: String| Some(EndpointProblem::Shape(why));
    if port == "*" {
        return shape("a connect endpoint needs a port: `*` (any port) is for binding".into());
    }
    // libzmq takes it and keeps trying a port nothing can listen on (a bind to 0 takes any).
    if port.parse::<u16>() == Ok(0) {
        return shape("a connect endpoint needs a port above 0: port 0 (any port) is for binding".into());
    }
    if host == "*" {
        return shape("a connect endpoint needs a host: `*` (every interface) is for binding".into());
    }
    let named =
        |part: &str| if source == Some(part) { format!("the source `{part}`") } else { format!("the host `{host}`") };
    for part in source.into_iter().chain([host]) {
        if let Some(c) = part.chars().find(|c| !c.is_ascii()) {
            return shape(format!(
                "{} holds `{c}`, outside ASCII, which libzmq does not take in a name: give its ASCII (punycode) \
                 form, xn--…, or an address",
                named(part)
            ));
        }
        if let Some(c) = part.chars().find(|c| !(c.is_ascii_alphanumeric() || ".-:%[]_*".contains(*c))) {
            return shape(format!(
                "{} holds `{c}`: libzmq takes letters, digits, `.`, `-` and `_` in a name",
                named(part)
            ));
        }
    }
    let first = source.unwrap_or(host);
    if !first.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '[' || c == ':') {
        return shape(format!("{} must start with a letter or a digit (libzmq refuses it on a connect)", named(first)));
    }
    None
}

/// A ZeroMQ transport mdsub takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ipc,
    Inproc,
}

/// What is wrong with an endpoint's shape. Its message does not name the endpoint (a caller
/// such as a command-line parser already shows the value) and, for the transport faults, does
/// not list the transports: a caller that takes fewer than all states its own list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointProblem {
    #[error("no transport")]
    NoTransport,
    #[error("the transport `{0}` is not supported")]
    UnknownTransport(String),
    /// The transport is known, the rest of the endpoint is not of its shape.
    #[error("{0}")]
    Shape(String),
}

/// The transport of a well-formed endpoint, or what is wrong with its shape.
pub fn endpoint_transport(endpoint: &str) -> Result<Transport, EndpointProblem> {
    let (scheme, rest) = endpoint.split_once("://").ok_or(EndpointProblem::NoTransport)?;
    let shape = |why: &str| EndpointProblem::Shape(why.to_string());
    match scheme {
        "tcp" => {
            let (source, target) = crate::endpoint::tcp_parts(endpoint).unwrap_or((None, rest));
            // libzmq wants the source with a port too (`0` = any); without
            // one its connect succeeds and silently never connects.
            if let Some(source) = source {
                match source.rsplit_once(':') {
                    Some((h, p)) if !h.is_empty() && (p == "*" || p.parse::<u16>().is_ok()) => {}
                    _ => return Err(shape(&format!("the source `{source}` needs a port (`{source}:0`)"))),
                }
            }
            if let (Some(source), "") = (source, target) {
                // `tcp://127.0.0.1:5556;`: a `;` ends a source, and nothing follows it.
                let port = source.rsplit_once(':').map_or(source, |(_, p)| p);
                return Err(shape(&format!(
                    "the port `{port};` is not a number (a `;` ends the source of tcp://SOURCE;HOST:PORT, and no \
                     HOST:PORT follows it)"
                )));
            }
            let (host, port) = target.rsplit_once(':').ok_or_else(|| shape("no port"))?;
            if host.is_empty() {
                return Err(shape("no host"));
            }
            if port != "*" && port.parse::<u16>().is_err() {
                return Err(shape(&if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                    format!("the port `{port}` is out of range (0 to 65535, or * to bind any)")
                } else {
                    format!("the port `{port}` is not a number (0 to 65535, or * to bind any)")
                }));
            }
            Ok(Transport::Tcp)
        }
        "ipc" | "inproc" if rest.is_empty() => Err(shape("an empty name")),
        "ipc" => Ok(Transport::Ipc),
        "inproc" => Ok(Transport::Inproc),
        other => Err(EndpointProblem::UnknownTransport(other.to_string())),
    }
}

/// Wait up to `timeout` until `socket` is ready for `events` (POLLIN and/or
/// POLLOUT), with microsecond resolution: `zmq_poll` rounds its timeout up to
/// whole milliseconds, which turns a 50 µs back-off into 1 ms. This does what
/// `zmq_poll` does inside, with `ppoll`'s nanosecond timeout: ask libzmq for
/// the socket's events (which also processes its pending commands), and if
/// it is not ready, sleep on its signalling fd (`ZMQ_FD`, readable when a
/// command such as "the pipe has data" arrives), then ask again. Returns
/// whether the socket became ready.
pub fn wait_ready(socket: &zmq::Socket, events: zmq::PollEvents, timeout: std::time::Duration) -> zmq::Result<bool> {
    wait_any([socket], events, timeout)
}

/// How many sockets [`wait_any`] keeps on the stack; more are waited on too, from the heap.
const WAIT_INLINE: usize = 8;

/// [`wait_ready`] for any number of sockets (a proxy's two sides, a ZAP handler and the
/// monitors it reads, a clone agent's sockets): returns as soon as any of them is ready for
/// `events`, or `false` after `timeout`. Up to eight sockets it does not allocate.
pub fn wait_any<'a>(
    sockets: impl IntoIterator<Item = &'a zmq::Socket>,
    events: zmq::PollEvents,
    timeout: std::time::Duration,
) -> zmq::Result<bool> {
    let deadline = crate::clock::monotonic_ns().saturating_add(timeout.as_nanos().min(u64::MAX as u128) as u64);
    let mut socks: smallvec::SmallVec<[&zmq::Socket; WAIT_INLINE]> = smallvec::SmallVec::new();
    let mut pfds: smallvec::SmallVec<[libc::pollfd; WAIT_INLINE]> = smallvec::SmallVec::new();
    for s in sockets {
        pfds.push(libc::pollfd { fd: s.get_fd()?, events: libc::POLLIN, revents: 0 });
        socks.push(s);
    }
    loop {
        for s in &socks {
            if s.get_events()?.intersects(events) {
                return Ok(true);
            }
        }
        let now = crate::clock::monotonic_ns();
        if now >= deadline {
            return Ok(false);
        }
        let left = deadline - now;
        let ts =
            libc::timespec { tv_sec: (left / 1_000_000_000) as libc::time_t, tv_nsec: (left % 1_000_000_000) as _ };
        // SAFETY: `pfds.len()` pollfds we own, a timespec we own, no signal mask.
        let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, &ts, std::ptr::null()) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(zmq::Error::from_raw(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` PAIR pairs over inproc: (the ends waited on, the ends sent from).
    fn pairs(ctx: &zmq::Context, count: usize) -> (Vec<zmq::Socket>, Vec<zmq::Socket>) {
        let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (0..count)
            .map(|i| {
                let ep = format!("inproc://wait-any-{n}-{i}");
                let a = ctx.socket(zmq::PAIR).expect("pair");
                a.bind(&ep).expect("bind");
                let b = ctx.socket(zmq::PAIR).expect("pair");
                b.connect(&ep).expect("connect");
                (a, b)
            })
            .unzip()
    }

    static PAIRS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    #[test]
    fn wait_any_sees_a_message_on_any_socket_past_the_eighth_too() {
        // Before: sockets past the fourth were not waited on (the ZAP handler's fifth monitor
        // was read up to its 100 ms block late, and a debug build panicked).
        let ctx = zmq::Context::new();
        let (waited, senders) = pairs(&ctx, 11);
        for last in [4, 10] {
            senders[last].send("x", 0).expect("send");
            let t0 = std::time::Instant::now();
            let ready = wait_any(&waited, zmq::POLLIN, std::time::Duration::from_secs(5)).expect("wait");
            assert!(ready, "a message on socket {last} is seen");
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(2),
                "at once, not at the timeout: {:?}",
                t0.elapsed()
            );
            waited[last].recv_bytes(0).expect("recv");
        }
        // Nothing waiting: a 300 µs wait ends near 300 µs, not at poll's whole millisecond
        // (the bound is loose for a shared machine: it fails on a wait that ignores the timeout).
        let t0 = std::time::Instant::now();
        assert!(!wait_any(&waited, zmq::POLLIN, std::time::Duration::from_micros(300)).expect("wait"));
        assert!(t0.elapsed() < std::time::Duration::from_millis(200), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_version_2_monitor_event_is_parsed_and_anything_else_refused() {
        let word = |n: u64| zmq::Message::from(&n.to_ne_bytes()[..]);
        let text = |t: &str| zmq::Message::from(t.as_bytes());
        let frames =
            [word(32768), word(1), word(285212673), text("tcp://127.0.0.1:5556"), text("tcp://127.0.0.1:40000")];
        let e = MonitorEventV2::parse(&frames).expect("an event");
        assert_eq!((e.event, e.value), (32768, Some(285212673)));
        assert_eq!((e.local.as_str(), e.remote.as_str()), ("tcp://127.0.0.1:5556", "tcp://127.0.0.1:40000"));
        // A count that does not match the frames, a short word, too few frames: none.
        let miscounted = [word(32768), word(2), word(0), text("a"), text("b")];
        assert_eq!(MonitorEventV2::parse(&miscounted), None);
        let short = [zmq::Message::from(&[1u8, 0][..]), word(0), text("a"), text("b")];
        assert_eq!(MonitorEventV2::parse(&short), None);
        assert_eq!(MonitorEventV2::parse(&frames[..2]), None);
        let huge = [word(32768), word(u64::MAX), text("a"), text("b")];
        assert_eq!(MonitorEventV2::parse(&huge), None);
    }

    #[test]
    fn nodrop_sets_on_xpub_and_fails_on_sub() {
        let ctx = zmq::Context::new();
        let mut xpub = ctx.socket(zmq::XPUB).expect("xpub");
        set_xpub_nodrop(&mut xpub, true).expect("xpub takes NODROP");
        let mut sub = ctx.socket(zmq::SUB).expect("sub");
        assert!(set_xpub_nodrop(&mut sub, true).is_err(), "SUB rejects an XPUB option");
    }

    #[test]
    fn bind_resolves_wildcard_port() {
        let ctx = zmq::Context::new();
        let s = ctx.socket(zmq::PUB).expect("pub");
        let ep = bind_resolved(&s, "tcp://127.0.0.1:*").expect("bind");
        assert!(ep.starts_with("tcp://127.0.0.1:") && !ep.ends_with('*'), "{ep}");
    }

    #[test]
    fn verboser_sets_on_xpub() {
        let ctx = zmq::Context::new();
        let mut xpub = ctx.socket(zmq::XPUB).expect("xpub");
        set_xpub_verboser(&mut xpub, true).expect("xpub takes VERBOSER");
    }

    #[test]
    fn endpoint_shapes() {
        assert!(check_endpoint("tcp://127.0.0.1:5556").is_ok());
        assert!(check_endpoint("tcp://eth0:0;10.0.0.1:5556").is_ok());
        assert!(check_endpoint("tcp://eth0;10.0.0.1:5556").is_err_and(|m| m.contains("`eth0:0`")));
        assert!(check_endpoint("tcp://127.0.0.1:*").is_ok());
        assert!(check_endpoint("inproc://x").is_ok());
        assert!(check_endpoint("127.0.0.1:5556").is_err());
        assert!(check_endpoint("tcp://127.0.0.1:99999").is_err());
        assert!(check_endpoint("tcp://127.0.0.1").is_err());
        assert!(check_endpoint("udp://x:1").is_err());
        // Before: `no port` for a port followed by a stray `;`, `a bad port` for the rest.
        assert_eq!(
            endpoint_transport("tcp://127.0.0.1:5556;").map_err(|e| e.to_string()),
            Err("the port `5556;` is not a number (a `;` ends the source of tcp://SOURCE;HOST:PORT, and no HOST:PORT \
                 follows it)"
                .into())
        );
        assert!(endpoint_transport("tcp://h:55x")
            .is_err_and(|e| e.to_string().starts_with("the port `55x` is not a number")));
        assert!(endpoint_transport("tcp://h:99999")
            .is_err_and(|e| e.to_string().starts_with("the port `99999` is out of range")));
        // The forms a transport fault offers are the caller's (a publisher takes no inproc).
        assert_eq!(
            check_endpoint_as("foo", "tcp://HOST:PORT or ipc://PATH"),
            Err("endpoint `foo`: no transport (expected tcp://HOST:PORT or ipc://PATH)".into())
        );
        // The transport faults: bare in the problem, with every transport's form in check_endpoint.
        assert_eq!(endpoint_transport("udp://x:1"), Err(EndpointProblem::UnknownTransport("udp".into())));
        assert_eq!(endpoint_transport("x:1"), Err(EndpointProblem::NoTransport));
        assert_eq!(endpoint_transport("ipc://"), Err(EndpointProblem::Shape("an empty name".into())));
        assert_eq!(endpoint_transport("ipc:///tmp/x"), Ok(Transport::Ipc));
        assert_eq!(endpoint_transport("inproc://x"), Ok(Transport::Inproc));
        assert_eq!(
            check_endpoint("x:1"),
            Err("endpoint `x:1`: no transport (expected tcp://host:port, ipc://path or inproc://name)".into())
        );
    }
}
