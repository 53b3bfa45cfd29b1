//! The `/metrics` HTTP server agent (`metrics-http`): answers Prometheus'
//! scrapes with the text exposition, off the data path.
//!
//! A small HTTP/1.x server written here rather than taken from a crate: it
//! serves one GET per connection, and the usual small servers (tiny_http and
//! others) start their own acceptor and worker threads, which mdsub leaves to
//! its one runner. Its sockets are non-blocking and polled together on the
//! agent's one thread, so a slow client never holds another's scrape:
//!
//! - each connection has [`REQUEST_DEADLINE`] from its accept to send its whole
//!   request and take the whole answer; past it, it is answered 408 (if it will
//!   take that) and closed, counted as `request_timeout`;
//! - at most [`MAX_CONNECTIONS`] are open at once: one more closes the oldest,
//!   counted as `too_many_connections`;
//! - the agent never waits on one client, so a stop is honoured within its idle
//!   wait (100 ms in the engine) whatever clients do;
//! - when `accept()` fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
//!   ENOMEM), the waiting connection stays queued and the listener readable: the listener
//!   is left alone for [`ACCEPT_PAUSE`] ([`AcceptPause`]) instead of being tried again at
//!   once, which spun the thread; the open connections are served meanwhile. Each failure is
//!   counted (`accept_errors`) and said by the rule for repeated lines.
//!
//! Its own counts ([`HttpCounters`]: served, refused, timed out, evicted, accept errors) are
//! live atomics, and every `/metrics` page ends with them (`mdsub_metrics_http_*_total`,
//! [`prom::http`]).
//!
//! With an [`HttpAccess`] (`--metrics-allow-addr`, `--metrics-token-file`),
//! a request from outside the address allow-list is answered 403 and one
//! without the bearer token 401; each refusal is counted
//! ([`HttpAccessCounters`]) and said on stderr with the peer's address and
//! mechanism by a [`RefusalLog`] (the first of each reason at once, then a
//! summary per 10 s), as are the connections closed unanswered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, AgentError, Step};
use crate::clock::monotonic_ns;
use crate::diag::RefusalLog;
use crate::security::{HttpAccess, HttpRefusal};

use super::prom;

/// Longest a connection may take, from its accept, to send its whole request and take the whole answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Largest request head accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Most connections open at once; one more closes the oldest.
pub const MAX_CONNECTIONS: usize = 16;
/// How long the listener is left alone after `accept()` failed (out of descriptors or memory).
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Connections taken from the listener per round, so a flood of them does not starve the open ones;
/// no more than are kept open, so none accepted in a round is closed unread in that round.
const ACCEPTS_PER_ROUND: usize = MAX_CONNECTIONS;

/// What to answer `GET /metrics` with (called once per scrape).
pub type Render = Box<dyn FnMut() -> String + Send>;

/// Requests refused by the access policy (live, readable by anyone).
#[derive(Debug, Default)]
pub struct HttpAccessCounters {
    /// From an address outside the allow-list.
    pub refused_address: AtomicU64,
    /// Without the bearer token, or with another one.
    pub refused_token: AtomicU64,
}

impl HttpAccessCounters {
    pub fn refused(&self) -> u64 {
        self.refused_address.load(Relaxed) + self.refused_token.load(Relaxed)
    }
}

/// The server's own counts: live (written by its thread, read by every scrape and by anyone).
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Requests answered 200 (a scrape counts itself: it is counted before its page is rendered).
    pub served: AtomicU64,
    /// Requests answered 4xx: malformed, wrong path or method, or refused by the access policy.
    pub refused: AtomicU64,
    /// Connections closed unanswered past [`REQUEST_DEADLINE`] (`request_timeout`).
    pub timed_out: AtomicU64,
    /// Connections closed unanswered, the oldest when one more than [`MAX_CONNECTIONS`] came
    /// (`too_many_connections`).
    pub evicted: AtomicU64,
    /// Times `accept()` failed for want of descriptors or memory (or for no reason it gives
    /// for one connection alone): each paused the listener for [`ACCEPT_PAUSE`].
    pub accept_errors: AtomicU64,
}

/// [`HttpCounters`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpCounts {
    pub served: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub evicted: u64,
    pub accept_errors: u64,
    /// Of the refused, those the access policy refused ([`HttpAccessCounters`]): by address,
    /// and for want of the bearer token.
    pub access_refused_address: u64,
    pub access_refused_token: u64,
}

impl HttpCounters {
    /// Every count, now, with the access policy's refusals `access`.
    pub fn snapshot(&self, access: &HttpAccessCounters) -> HttpCounts {
        HttpCounts {
            served: self.served.load(Relaxed),
            refused: self.refused.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            access_refused_address: access.refused_address.load(Relaxed),
            access_refused_token: access.refused_token.load(Relaxed),
        }
    }

    /// Add one to `counter` (the server's thread is its only writer).
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// When the listener is tried: a socket-free rule taking `now_ns`. After a failed `accept()`
/// the connection it could not take is still queued, so the listener stays readable: trying it
/// again at once would spin. It is left alone for [`ACCEPT_PAUSE`], then tried again.
#[derive(Debug, Default)]
pub struct AcceptPause {
    until_ns: Option<u64>,
}

impl AcceptPause {
    /// `accept()` failed at `now_ns`: leave the listener alone for [`ACCEPT_PAUSE`].
    pub fn failed(&mut self, now_ns: u64) {
        self.until_ns = Some(now_ns.saturating_add(ACCEPT_PAUSE.as_nanos() as u64));
    }

    /// Whether to try the listener at `now_ns` (and to poll it): no pause, or the pause is over.
    pub fn accepting(&mut self, now_ns: u64) -> bool {
        match self.until_ns {
            Some(until) if now_ns < until => false,
            _ => {
                self.until_ns = None;
                true
            }
        }
    }

    /// How long the pause still lasts at `now_ns` (None: not paused), to bound the idle wait.
    pub fn left_ns(&self, now_ns: u64) -> Option<u64> {
        self.until_ns.map(|until| until.saturating_sub(now_ns))
    }
}

/// What a failed `accept()` means for the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptFailure {
    /// Nothing waiting.
    Empty,
    /// Interrupted: try again.
    Again,
    /// That one connection failed before it was taken (reset, or a network error Linux passes
    /// on from it): the next may be fine.
    ThisOne,
    /// The server cannot take any now (`reason`): pause the listener.
    Pause(&'static str),
}

impl AcceptFailure {
    fn of(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match (e.kind(), e.raw_os_error()) {
            (K::WouldBlock, _) => AcceptFailure::Empty,
            (K::Interrupted, _) => AcceptFailure::Again,
            (_, Some(libc::EMFILE | libc::ENFILE)) => AcceptFailure::Pause("out_of_descriptors"),
            (_, Some(libc::ENOBUFS | libc::ENOMEM)) => AcceptFailure::Pause("out_of_memory"),
            // accept(2), Linux: pending network errors of the new connection come back from
            // accept(); treat them like EAGAIN (retry).
            (K::ConnectionAborted | K::ConnectionReset, _)
            | (
                _,
                Some(
                    libc::EPROTO
                    | libc::ENETDOWN
                    | libc::ENOPROTOOPT
                    | libc::EHOSTDOWN
                    | libc::ENONET
                    | libc::EHOSTUNREACH
                    | libc::EOPNOTSUPP
                    | libc::ENETUNREACH
                    | libc::EPERM,
                ),
            ) => AcceptFailure::ThisOne,
            _ => AcceptFailure::Pause("accept_failed"),
        }
    }
}

/// One open connection.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    opened_ns: u64,
    /// The request so far.
    head: Vec<u8>,
    /// The answer, once the request is in, and how much of it was written.
    answer: Option<(Vec<u8>, usize)>,
}

/// The server agent.
pub struct MetricsServer {
    listener: TcpListener,
    render: Render,
    access: HttpAccess,
    access_counters: Arc<HttpAccessCounters>,
    counters: Arc<HttpCounters>,
    /// The engine's id, labelling the server's own samples on the page.
    engine_id: String,
    /// Refusals (the access policy's, and connections closed unanswered), said by reason.
    refusals: RefusalLog,
    /// Failed accepts, said by reason (`metrics-http: cannot accept connections (REASON): …`).
    accept_failures: RefusalLog,
    pause: AcceptPause,
    conns: Vec<Conn>,
    /// The descriptors of the last idle wait (kept to reuse their room).
    pollfds: Vec<libc::pollfd>,
}

impl MetricsServer {
    /// Bind `addr` (port 0 picks a free port; [`MetricsServer::local_addr`] says which).
    pub fn bind(addr: SocketAddr, render: Render) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(MetricsServer {
            listener,
            render,
            access: HttpAccess::default(),
            access_counters: Arc::default(),
            counters: Arc::default(),
            engine_id: String::new(),
            refusals: RefusalLog::new("metrics-http"),
            accept_failures: RefusalLog::new("metrics-http").said_as("metrics-http: cannot accept connections"),
            pause: AcceptPause::default(),
            conns: Vec::with_capacity(MAX_CONNECTIONS),
            pollfds: Vec::with_capacity(MAX_CONNECTIONS + 1),
        })
    }

    /// Serve only the requests `access` allows.
    pub fn with_access(mut self, access: HttpAccess) -> Self {
        self.access = access;
        self
    }

    /// Label the server's own samples on the page `engine="ID"`, as the engine's are.
    pub fn with_engine_id(mut self, engine_id: &str) -> Self {
        self.engine_id = engine_id.to_string();
        self
    }

    /// The server's live counts (also on every `/metrics` page).
    pub fn counters(&self) -> Arc<HttpCounters> {
        self.counters.clone()
    }

    /// The live counts of requests the access policy refused.
    pub fn access_counters(&self) -> Arc<HttpAccessCounters> {
        self.access_counters.clone()
    }

    /// Count and (rate-limited) say a refusal.
    fn refuse(&mut self, peer: SocketAddr, why: HttpRefusal) {
        let c = &self.access_counters;
        match why {
            HttpRefusal::Address => &c.refused_address,
            HttpRefusal::NoToken | HttpRefusal::WrongToken => &c.refused_token,
        }
        .fetch_add(1, Relaxed);
        let mechanism = if why == HttpRefusal::Address { "http" } else { "http bearer" };
        let detail = format_args!("{} ({mechanism}): {}", peer.ip(), why.as_str());
        self.refusals.refuse(why.reason(), &detail, monotonic_ns());
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Take the connections waiting on the listener; over [`MAX_CONNECTIONS`], the oldest open one is closed.
    /// Nothing while the listener is paused ([`AcceptPause`]).
    fn accept(&mut self, now_ns: u64) -> usize {
        let mut n = 0;
        if !self.pause.accepting(now_ns) {
            return n;
        }
        while n < ACCEPTS_PER_ROUND {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    n += 1;
                    if stream.set_nonblocking(true).is_err() {
                        continue; // not served: a blocking read would hold every other client
                    }
                    if self.conns.len() >= MAX_CONNECTIONS {
                        self.evict_oldest(now_ns);
                    }
                    self.conns.push(Conn { stream, peer, opened_ns: now_ns, head: Vec::new(), answer: None });
                }
                Err(e) => match AcceptFailure::of(&e) {
                    AcceptFailure::Empty => break,
                    AcceptFailure::Again => {}
                    AcceptFailure::ThisOne => n += 1,
                    AcceptFailure::Pause(reason) => {
                        HttpCounters::bump(&self.counters.accept_errors);
                        self.pause.failed(now_ns);
                        let detail = format_args!(
                            "{e}; the listener rests {}, the connections open are served meanwhile ({} now)",
                            crate::diag::human_duration_of(ACCEPT_PAUSE),
                            self.conns.len()
                        );
                        self.accept_failures.refuse(reason, &detail, now_ns);
                        break;
                    }
                },
            }
        }
        n
    }

    fn evict_oldest(&mut self, now_ns: u64) {
        // `conns` is in accept order (pushed, and kept in order by `retain_mut`): the first is the oldest.
        if self.conns.is_empty() {
            return;
        }
        let c = self.conns.remove(0);
        HttpCounters::bump(&self.counters.evicted);
        let detail = format_args!(
            "{}: closed unanswered after {} ({} bytes of request), the oldest of {} open connections \
             when another came",
            c.peer.ip(),
            crate::diag::human_duration(now_ns.saturating_sub(c.opened_ns)),
            c.head.len(),
            MAX_CONNECTIONS
        );
        self.refusals.refuse("too_many_connections", &detail, now_ns);
        close_unanswered(c, "503 Service Unavailable");
    }

    /// Read what `c` sent and write what it takes; true when `c` is done with (answered,
    /// gone, or past its deadline). Adds the steps taken to `n`.
    fn step(&mut self, c: &mut Conn, now_ns: u64, n: &mut usize) -> bool {
        if c.answer.is_none() {
            let mut buf = [0u8; 1024];
            let request = loop {
                if head_complete(&c.head) {
                    break Some(true);
                }
                if c.head.len() > MAX_REQUEST_BYTES {
                    break Some(false);
                }
                match c.stream.read(&mut buf) {
                    Ok(0) => break Some(false), // cut short
                    Ok(m) => {
                        c.head.extend_from_slice(&buf[..m]);
                        *n += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break None,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break Some(false), // reset: answered 400, which it will not take
                }
            };
            if let Some(complete) = request {
                c.answer = Some((self.respond(&c.head, complete, c.peer), 0));
            }
        }
        if let Some((bytes, written)) = &mut c.answer {
            while *written < bytes.len() {
                match c.stream.write(&bytes[*written..]) {
                    Ok(0) => return true,
                    Ok(m) => {
                        *written += m;
                        *n += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return true, // gone
                }
            }
            if *written == bytes.len() {
                return true; // answered: dropping the stream closes it
            }
        }
        if now_ns.saturating_sub(c.opened_ns) >= REQUEST_DEADLINE.as_nanos() as u64 {
            HttpCounters::bump(&self.counters.timed_out);
            let what = match &c.answer {
                None => format!("no whole request ({} bytes came)", c.head.len()),
                Some((bytes, written)) => format!("the answer not taken ({written} of {} bytes)", bytes.len()),
            };
            let detail =
                format_args!("{}: {what} within {}", c.peer.ip(), crate::diag::human_duration_of(REQUEST_DEADLINE));
            self.refusals.refuse("request_timeout", &detail, now_ns);
            if c.answer.is_none() {
                let _ = c.stream.write(&unanswered("408 Request Timeout"));
            }
            return true;
        }
        false
    }

    /// The whole answer to the request `head` (`complete`: it ended with its blank line).
    fn respond(&mut self, head: &[u8], complete: bool, peer: SocketAddr) -> Vec<u8> {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = path.split('?').next().unwrap_or("");
        let authorization = String::from_utf8_lossy(head)
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("authorization")))
            .map(|(_, v)| v.trim().to_string());
        let verdict = if complete { self.access.decide(peer.ip(), authorization.as_deref()) } else { Ok(()) };
        let (status, ctype, body) = if !complete {
            ("400 Bad Request", "text/plain", "incomplete or oversized request\n".to_string())
        } else if let Err(why) = verdict {
            self.refuse(peer, why);
            match why {
                HttpRefusal::Address => ("403 Forbidden", "text/plain", "forbidden\n".to_string()),
                _ => ("401 Unauthorized", "text/plain", "unauthorized: send Authorization: Bearer TOKEN\n".to_string()),
            }
        } else if method != "GET" && method != "HEAD" {
            ("405 Method Not Allowed", "text/plain", "only GET\n".to_string())
        } else if path == "/metrics" {
            // Counted first, so the page it gets counts it.
            HttpCounters::bump(&self.counters.served);
            let mut page = (self.render)();
            prom::http(&mut page, &self.engine_id, &self.counters.snapshot(&self.access_counters));
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", page)
        } else if path == "/" {
            ("200 OK", "text/plain", "mdsub engine: metrics at /metrics\n".to_string())
        } else {
            ("404 Not Found", "text/plain", "not found; metrics are at /metrics\n".to_string())
        };
        if !status.starts_with("200") {
            HttpCounters::bump(&self.counters.refused);
        } else if path != "/metrics" {
            HttpCounters::bump(&self.counters.served);
        }
        // HEAD: the headers GET would have, its Content-Length too (RFC 9110 9.3.2), no body.
        let length = body.len();
        let body = if method == "HEAD" { "" } else { body.as_str() };
        let challenge = if status.starts_with("401") { "WWW-Authenticate: Bearer realm=\"mdsub\"\r\n" } else { "" };
        let mut out = format!(
            "HTTP/1.1 {status}\r\n{challenge}Content-Type: {ctype}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// True when `head` holds a whole request head (ended by its blank line).
fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// The answer to a connection closed before its request was answered.
fn unanswered(status: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Close `c`, telling it `status` if it takes that at once and nothing of an answer went out.
fn close_unanswered(mut c: Conn, status: &str) {
    if c.answer.as_ref().is_none_or(|(_, written)| *written == 0) {
        let _ = c.stream.write(&unanswered(status));
    }
}

impl Agent for MetricsServer {
    fn role(&self) -> &str {
        "metrics-http"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let now_ns = monotonic_ns();
        let mut n = self.accept(now_ns);
        let mut conns = std::mem::take(&mut self.conns);
        conns.retain_mut(|c| !self.step(c, now_ns, &mut n));
        self.conns = conns;
        // A burst of refusals is summarised without waiting for the next request.
        self.refusals.tick(now_ns);
        self.accept_failures.tick(now_ns);
        Ok(Step::Worked(n))
    }

    /// Wait for a connection (unless the listener is paused: then for the pause's end), a
    /// request's bytes, room for an answer, or the next deadline.
    fn idle_wait(&mut self, timeout: Duration) {
        let now_ns = monotonic_ns();
        let deadline = REQUEST_DEADLINE.as_nanos() as u64;
        let next_ns = self
            .conns
            .iter()
            .map(|c| (c.opened_ns + deadline).saturating_sub(now_ns))
            .chain(self.pause.left_ns(now_ns))
            .min();
        let wait_ns = next_ns.map_or(timeout.as_nanos() as u64, |d| d.min(timeout.as_nanos() as u64));
        let ms = wait_ns.div_ceil(1_000_000).min(i32::MAX as u64) as i32;
        self.pollfds.clear();
        if self.pause.left_ns(now_ns).is_none_or(|left| left == 0) {
            self.pollfds.push(libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        for c in &self.conns {
            let events = if c.answer.is_some() { libc::POLLOUT } else { libc::POLLIN };
            self.pollfds.push(libc::pollfd { fd: c.stream.as_raw_fd(), events, revents: 0 });
        }
        // SAFETY: `pollfds` holds valid pollfds for the duration of the call.
        unsafe {
            libc::poll(self.pollfds.as_mut_ptr(), self.pollfds.len() as libc::nfds_t, ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{IdleStrategy, RunSpec, Runner, StopFlag};

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        c.write_all(request).expect("send");
        c.shutdown(std::net::Shutdown::Write).expect("half-close");
        let mut out = String::new();
        c.read_to_string(&mut out).expect("read");
        out
    }

    /// A server run as the engine runs it (idle waits of up to 100 ms).
    fn start() -> (SocketAddr, StopFlag, crate::agent::AgentHandle<MetricsServer>) {
        let server =
            MetricsServer::bind("127.0.0.1:0".parse().expect("addr"), Box::new(|| "m 1\n".to_string())).expect("bind");
        let addr = server.local_addr().expect("addr");
        let stop = StopFlag::new();
        let h = Runner::start(RunSpec::unpinned(IdleStrategy::Block { wait_us: 100_000 }), stop.clone(), server)
            .expect("start");
        (addr, stop, h)
    }

    /// A slowloris: a request line, then one header byte every 100 ms for `hold` (on a thread
    /// of its own; it stops early when the server closes), then silence with the connection open.
    fn slow_client(addr: SocketAddr, hold: Duration) -> TcpStream {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"GET /metrics HTTP/1.1\r\n").expect("request line");
        let mut w = c.try_clone().expect("clone");
        // Started by the runner like every other thread (detached: its handle is dropped).
        let _ = Runner::task("slowloris", None, move || {
            let end = std::time::Instant::now() + hold;
            while std::time::Instant::now() < end && w.write_all(b"X").is_ok() {
                std::thread::sleep(Duration::from_millis(100)); // the client's pace, not a handshake
            }
        })
        .expect("start the slow client");
        c
    }

    #[test]
    fn a_slow_client_holds_no_other_scrape_and_is_closed_at_its_deadline() {
        // Before, the one connection being read held every other: a client sending a byte at a
        // time held each scrape behind it for as long as it went on.
        let (addr, stop, h) = start();
        let t0 = std::time::Instant::now();
        let mut slow = slow_client(addr, Duration::from_millis(1500));
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.contains("\r\n\r\nm 1\n"), "{ok}");
        assert!(t0.elapsed() < Duration::from_millis(1000), "served at once, not after the slow client");
        // The slow client is answered 408 and closed once its request has taken REQUEST_DEADLINE.
        slow.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut said = String::new();
        slow.read_to_string(&mut said).expect("closed within 5 s");
        assert!(said.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{said}");
        assert!(t0.elapsed() >= REQUEST_DEADLINE && t0.elapsed() < REQUEST_DEADLINE * 2, "{:?}", t0.elapsed());
        // Counted at once, on the page itself (before, only in the agent's fields after its stop).
        let page = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        for line in [
            "# TYPE mdsub_metrics_http_timed_out_total counter\nmdsub_metrics_http_timed_out_total{engine=\"\"} 1\n",
            "# TYPE mdsub_metrics_http_served_total counter\nmdsub_metrics_http_served_total{engine=\"\"} 2\n",
            "mdsub_metrics_http_evicted_total{engine=\"\"} 0\n",
        ] {
            assert!(page.contains(line), "{line} in {page}");
        }
        stop.stop();
        let s = h.join().expect("joins").counters().snapshot(&HttpAccessCounters::default());
        assert_eq!((s.served, s.timed_out, s.evicted), (2, 1, 0));
    }

    #[test]
    fn head_says_the_length_get_would_send_and_sends_no_body() {
        // Before, HEAD said `Content-Length: 0`: a client checking the page's size by HEAD read 0.
        let (addr, stop, h) = start();
        for path in ["/", "/nowhere"] {
            let got = get(addr, format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes());
            let head = get(addr, format!("HEAD {path} HTTP/1.1\r\n\r\n").as_bytes());
            let (get_head, get_body) = got.split_once("\r\n\r\n").expect("a GET answer has a head");
            assert!(get_head.contains(&format!("Content-Length: {}\r\n", get_body.len())), "{got}");
            assert_eq!(head, format!("{get_head}\r\n\r\n"), "HEAD: GET's head, no body");
        }
        stop.stop();
        h.join().expect("joins");
    }

    #[test]
    fn a_failed_accept_pauses_the_listener_for_its_pause_only() {
        let ms = 1_000_000;
        let mut p = AcceptPause::default();
        assert!(p.accepting(0) && p.left_ns(0).is_none(), "not paused to begin with");
        p.failed(10 * ms);
        assert_eq!(p.left_ns(10 * ms), Some(100 * ms));
        assert!(!p.accepting(10 * ms) && !p.accepting(109 * ms), "paused for ACCEPT_PAUSE");
        assert_eq!(p.left_ns(60 * ms), Some(50 * ms), "the idle wait ends with the pause");
        assert!(p.accepting(110 * ms) && p.left_ns(110 * ms).is_none(), "then tried again");
        let of = |errno| AcceptFailure::of(&std::io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::EAGAIN), AcceptFailure::Empty);
        assert_eq!(of(libc::EINTR), AcceptFailure::Again);
        assert_eq!(of(libc::EMFILE), AcceptFailure::Pause("out_of_descriptors"));
        assert_eq!(of(libc::ENFILE), AcceptFailure::Pause("out_of_descriptors"));
        assert_eq!(of(libc::ENOBUFS), AcceptFailure::Pause("out_of_memory"));
        assert_eq!(of(libc::ECONNABORTED), AcceptFailure::ThisOne, "that connection only");
        assert_eq!(of(libc::ENETUNREACH), AcceptFailure::ThisOne, "Linux passes its errors on: retry");
        assert_eq!(of(libc::EBADF), AcceptFailure::Pause("accept_failed"), "anything else pauses, never spins");
    }

    /// Set in the child process of [`out_of_descriptors_the_listener_is_paused_and_the_open_are_served`].
    const EMFILE_CHILD: &str = "MDSUB_TEST_EMFILE_CHILD";

    /// Ask `c` (connected, nothing sent yet) for `/metrics`; the whole answer.
    fn ask(c: &mut TcpStream) -> String {
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").expect("send");
        let mut out = String::new();
        c.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn out_of_descriptors_the_listener_is_paused_and_the_open_are_served() {
        // RLIMIT_NOFILE is the process's: lowered here it would starve every other test, so
        // this runs itself again, alone, in a child process, which asserts; this side checks
        // that the child ran it and passed.
        if std::env::var_os(EMFILE_CHILD).is_some() {
            return out_of_descriptors_in_this_process();
        }
        let name = "metrics::http::tests::out_of_descriptors_the_listener_is_paused_and_the_open_are_served";
        let (status, out, err) = crate::test_forks::rerun_test_in_child(name, EMFILE_CHILD);
        assert!(status.is_some_and(|s| s.success()), "the child failed or took 30 s ({status:?}):\n{out}\n{err}");
        assert!(out.contains("test result: ok. 1 passed"), "the child ran the test:\n{out}\n{err}");
        // Said once at once, then summed up at the end (every 10 s in a longer run).
        let said: Vec<&str> =
            err.lines().filter(|l| l.starts_with("metrics-http: cannot accept connections")).collect();
        assert_eq!(said.len(), 2, "{err}");
        assert!(
            said[0].starts_with(
                "metrics-http: cannot accept connections (out_of_descriptors): Too many open files (os error 24); \
                 the listener rests 100ms, the connections open are served meanwhile (1 now) (the first;"
            ),
            "{err}"
        );
        assert!(said[1].contains(" since the last line: out_of_descriptors="), "{err}");
    }

    /// The child's part: one descriptor left, two connections waiting; the server takes the
    /// first and cannot take the second (EMFILE) until the first is done with.
    fn out_of_descriptors_in_this_process() {
        let server =
            MetricsServer::bind("127.0.0.1:0".parse().expect("addr"), Box::new(|| "m 1\n".to_string())).expect("bind");
        let (addr, counters) = (server.local_addr().expect("addr"), server.counters());
        let mut first = TcpStream::connect(addr).expect("connect");
        let mut second = TcpStream::connect(addr).expect("connect");
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: a valid rlimit to fill, then to read.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            limit.rlim_cur = limit.rlim_cur.min(256);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
        let mut held = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => held.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("opening /dev/null: {e}"),
            }
        }
        held.pop();
        let stop = StopFlag::new();
        let h = Runner::start(RunSpec::unpinned(IdleStrategy::Block { wait_us: 100_000 }), stop.clone(), server)
            .expect("start");
        // A window in which the second connection cannot be taken (the first holds the last
        // descriptor and sends nothing yet): the measurement, not a handshake.
        std::thread::sleep(Duration::from_millis(500));
        let rounds = h.stats().idle_rounds;
        // Before, every round tried the accept again at once: 210 362 rounds in 500 ms, one core
        // busy, nothing counted or said. Now it is tried once per ACCEPT_PAUSE, each failure counted.
        assert!(rounds <= 20, "{rounds} rounds in 500 ms: the accept loop spins");
        let failed = counters.accept_errors.load(Relaxed);
        assert!((3..=8).contains(&failed), "{failed} accept errors in 500 ms, with a 100 ms pause");
        // The open connection is served meanwhile, its page counting the errors so far; done
        // with, its descriptor takes the second, within a pause.
        let page = ask(&mut first);
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(!page.contains("mdsub_metrics_http_accept_errors_total{engine=\"\"} 0\n"), "{page}");
        assert!(page.contains("# TYPE mdsub_metrics_http_accept_errors_total counter\n"), "{page}");
        drop(first);
        let t0 = std::time::Instant::now();
        let page = ask(&mut second);
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(t0.elapsed() < ACCEPT_PAUSE * 3, "taken within a pause: {:?}", t0.elapsed());
        stop.stop();
        let s = h.join().expect("joins").counters().snapshot(&HttpAccessCounters::default());
        assert_eq!(s.served, 2);
        drop(held);
    }

    #[test]
    fn a_stop_is_honoured_while_a_slow_client_holds() {
        // Before, a stop waited for the client being read: the engine's SIGTERM had no effect
        // until the slow client stopped.
        let (addr, stop, h) = start();
        let _slow = slow_client(addr, Duration::from_secs(30));
        // Served after the slow client's accept (the listener hands them out in order).
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        let t0 = std::time::Instant::now();
        stop.stop();
        while !h.is_finished() {
            assert!(t0.elapsed() < Duration::from_millis(500), "stopped within 500 ms");
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = h.join().expect("joins").counters().snapshot(&HttpAccessCounters::default());
        assert_eq!(s.served, 1);
    }

    #[test]
    fn over_the_connection_bound_the_oldest_are_closed_and_a_scrape_is_served() {
        // Before, 20 connections that sent nothing held a scrape behind them for 2 s each.
        let (addr, stop, h) = start();
        let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).expect("connect")).collect();
        let t0 = std::time::Instant::now();
        let page = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(t0.elapsed() < Duration::from_millis(1000), "served at once");
        // Its own accept closed the oldest: the page it got counts them.
        let evicted = format!("\nmdsub_metrics_http_evicted_total{{engine=\"\"}} {}\n", 20 + 1 - MAX_CONNECTIONS);
        assert!(page.contains(&evicted), "{evicted} in {page}");
        // The oldest, in the order they came, were told why and closed.
        for (k, mut old) in idle.iter().take(20 + 1 - MAX_CONNECTIONS).enumerate() {
            old.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut said = String::new();
            old.read_to_string(&mut said).expect("closed");
            assert!(said.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "connection {k}: {said}");
        }
        stop.stop();
        let s = h.join().expect("joins").counters().snapshot(&HttpAccessCounters::default());
        assert_eq!((s.served, s.evicted), (1, (20 + 1 - MAX_CONNECTIONS) as u64));
    }

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let (addr, stop, h) = start();
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let (head, body) = ok.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{ok}");
        // What the render gave, then the server's own counters.
        assert!(body.starts_with("m 1\n# HELP mdsub_metrics_http_served_total "), "{ok}");
        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(addr, b"GET /metr").starts_with("HTTP/1.1 400"), "a request cut short is refused");
        let page = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(page.contains("\nmdsub_metrics_http_refused_total{engine=\"\"} 3\n"), "{page}");
        assert!(page.contains("\nmdsub_metrics_http_served_total{engine=\"\"} 2\n"), "{page}");
        stop.stop();
        let s = h.join().expect("joins").counters().snapshot(&HttpAccessCounters::default());
        assert_eq!((s.served, s.refused), (2, 3));
    }

    #[test]
    fn a_token_is_demanded_and_refusals_are_counted() {
        let access = HttpAccess { allow_addrs: vec![], token: Some(b"tok".to_vec()) };
        let server = MetricsServer::bind("127.0.0.1:0".parse().expect("addr"), Box::new(|| "m 1\n".to_string()))
            .expect("bind")
            .with_access(access);
        let (addr, counters) = (server.local_addr().expect("addr"), server.access_counters());
        let stop = StopFlag::new();
        let h = Runner::start(RunSpec::unpinned(IdleStrategy::Block { wait_us: 50_000 }), stop.clone(), server)
            .expect("start");
        let no = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(no.starts_with("HTTP/1.1 401") && no.contains("WWW-Authenticate: Bearer"), "{no}");
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\nauthorization: Bearer tok\r\n\r\n").contains("\r\n\r\nm 1\n"));
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer tak\r\n\r\n").starts_with("HTTP/1.1 401"));
        stop.stop();
        let s = h.join().expect("joins").counters().snapshot(&HttpAccessCounters::default());
        assert_eq!((s.served, counters.refused_token.load(Relaxed), counters.refused_address.load(Relaxed)), (1, 2, 0));
    }
}
