//! The `/metrics` HTTP server agent (`metrics-http`): answers Prometheus'
//! scrapes with the text exposition, off the data path.
//!
//! A small synchronous HTTP/1.x server written here rather than taken from a
//! crate: it serves one GET per connection, and the usual small servers
//! (tiny_http and others) start their own acceptor and worker threads, which
//! mdsub leaves to its one runner. Each request is read with a deadline, so a
//! client that stalls holds the agent at most [`IO_TIMEOUT`].
//!
//! With an [`HttpAccess`] (`--metrics-allow-addr`, `--metrics-token-file`),
//! a request from outside the address allow-list is answered 403 and one
//! without the bearer token 401; each refusal is counted
//! ([`HttpAccessCounters`]) and said on stderr with the peer's address and
//! mechanism by a [`RefusalLog`] (the first of each reason at once, then a summary per 10 s).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, AgentError, Step};
use crate::diag::RefusalLog;
use crate::security::{HttpAccess, HttpRefusal};

/// Longest a request may take to arrive, or a response to be taken.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head accepted.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

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

/// The server agent.
pub struct MetricsServer {
    listener: TcpListener,
    render: Render,
    access: HttpAccess,
    access_counters: Arc<HttpAccessCounters>,
    /// The access policy's refusals, said by reason.
    refusals: RefusalLog,
    /// Requests answered, and requests refused (malformed, wrong path or
    /// method, or by the access policy).
    pub served: u64,
    pub refused: u64,
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
            refusals: RefusalLog::new("metrics-http"),
            served: 0,
            refused: 0,
        })
    }

    /// Serve only the requests `access` allows.
    pub fn with_access(mut self, access: HttpAccess) -> Self {
        self.access = access;
        self
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
        self.refusals.refuse(why.reason(), &detail, crate::clock::monotonic_ns());
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn answer(&mut self, mut conn: TcpStream, peer: SocketAddr) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        let complete = loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                break true;
            }
            if head.len() > MAX_REQUEST_BYTES {
                break false;
            }
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        };
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = path.split('?').next().unwrap_or("");
        let authorization = String::from_utf8_lossy(&head)
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
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", (self.render)())
        } else if path == "/" {
            ("200 OK", "text/plain", "mdsub engine: metrics at /metrics\n".to_string())
        } else {
            ("404 Not Found", "text/plain", "not found; metrics are at /metrics\n".to_string())
        };
        if status.starts_with("200") {
            self.served += 1;
        } else {
            self.refused += 1;
        }
        let body = if method == "HEAD" { "" } else { body.as_str() };
        let challenge = if status.starts_with("401") { "WWW-Authenticate: Bearer realm=\"mdsub\"\r\n" } else { "" };
        let head = format!(
            "HTTP/1.1 {status}\r\n{challenge}Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(body.as_bytes()));
    }
}

impl Agent for MetricsServer {
    fn role(&self) -> &str {
        "metrics-http"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let mut n = 0;
        loop {
            match self.listener.accept() {
                Ok((conn, peer)) => {
                    self.answer(conn, peer);
                    n += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // A burst of refusals is summarised without waiting for the next request.
                    self.refusals.tick(crate::clock::monotonic_ns());
                    return Ok(Step::Worked(n));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A connection that failed before it was taken (reset) or a
                // short lack of descriptors: not fatal to the server.
                Err(_) => return Ok(Step::Worked(n)),
            }
        }
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let mut fds = [libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe {
            libc::poll(fds.as_mut_ptr(), 1, ms);
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

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let server =
            MetricsServer::bind("127.0.0.1:0".parse().expect("addr"), Box::new(|| "m 1\n".to_string())).expect("bind");
        let addr = server.local_addr().expect("addr");
        let stop = StopFlag::new();
        let h = Runner::start(RunSpec::unpinned(IdleStrategy::Block { wait_us: 50_000 }), stop.clone(), server)
            .expect("start");
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nm 1\n"), "{ok}");
        assert!(ok.contains("Content-Length: 4\r\n"), "{ok}");
        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(addr, b"GET /metr").starts_with("HTTP/1.1 400"), "a request cut short is refused");
        stop.stop();
        let s = h.join().expect("joins");
        assert_eq!((s.served, s.refused), (1, 3));
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
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\nauthorization: Bearer tok\r\n\r\n").ends_with("m 1\n"));
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer tak\r\n\r\n").starts_with("HTTP/1.1 401"));
        stop.stop();
        let s = h.join().expect("joins");
        assert_eq!((s.served, counters.refused_token.load(Relaxed), counters.refused_address.load(Relaxed)), (1, 2, 0));
    }
}
