//! Espresso tap proxy agent (guide, chapter 5): XSUB ⇄ XPUB forwarding plus a capture side.
//!
//! Copies go to the sink over a bounded channel with `try_send`; the proxy
//! never waits for the sink.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::{Sender, TrySendError};

use crate::agent::{Agent, AgentError, Step};
use crate::wire::now_ns;
use crate::zmqx::{self, recv_message, send_message, Attach};

/// Messages handled per direction in one `do_work`.
pub const BATCH_MSGS: usize = 256;

/// What the proxy hands to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// A message from the publishers, every frame, as received.
    Message { frames: Vec<Vec<u8>>, recv_ns: u64 },
    /// A subscribe (`true`) or unsubscribe from a subscriber.
    Subscription { subscribe: bool, prefix: Vec<u8>, recv_ns: u64 },
}

/// Which messages are captured: those whose first frame starts with one of
/// the prefixes (all when there are none). Forwarding is never filtered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    prefixes: Vec<Vec<u8>>,
}

impl Filter {
    pub fn new(prefixes: Vec<Vec<u8>>) -> Self {
        Filter { prefixes }
    }

    pub fn matches(&self, first_frame: &[u8]) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| first_frame.starts_with(p))
    }
}

/// Parse a filter written on the command line: `\0`, `\xNN` and `\\` are
/// escapes (so `ESH6\0` means exactly topic ESH6 for mdsub frames).
pub fn parse_prefix(text: &str) -> Result<Vec<u8>, String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'0') => {
                out.push(0);
                i += 2;
            }
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = b
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("`{text}`: \\x needs two hex digits"))?;
                out.push(hex);
                i += 4;
            }
            _ => return Err(format!("`{text}`: unknown escape (use \\0, \\xNN or \\\\)")),
        }
    }
    Ok(out)
}

/// Counters of the proxy side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapProxyReport {
    /// Messages forwarded publishers → subscribers.
    pub forwarded_down: u64,
    /// Messages forwarded subscribers → publishers (subscriptions and others).
    pub forwarded_up: u64,
    /// Copies handed to the sink.
    pub captured: u64,
    /// Copies dropped because the sink's queue was full (or the sink had stopped).
    pub dropped: u64,
    /// Sends that failed (message lost in the proxy).
    pub send_failures: u64,
}

/// Proxy configuration.
#[derive(Debug, Clone)]
pub struct TapConfig {
    pub frontend: Vec<Attach>,
    pub backend: Vec<Attach>,
    pub filter: Filter,
    /// Subscribe upstream to everything, so the tap sees traffic no subscriber asked for.
    pub subscribe_all: bool,
    /// SNDHWM and RCVHWM of both sockets, messages.
    pub hwm_msgs: i32,
    /// Largest message accepted from the publishers (ZMQ_MAXMSGSIZE).
    pub max_msg_bytes: i64,
}

/// The proxy agent.
pub struct TapProxy {
    frontend: zmq::Socket,
    backend: zmq::Socket,
    filter: Filter,
    tx: Sender<Captured>,
    frames: Vec<zmq::Message>,
    report: TapProxyReport,
    shared: Arc<Mutex<TapProxyReport>>,
    /// Endpoints in effect as `(side, verb, endpoint)`.
    pub endpoints: Vec<(&'static str, &'static str, String)>,
}

fn zerr(context: &'static str) -> impl FnOnce(zmq::Error) -> AgentError {
    move |source| AgentError::Zmq { role: "tap".into(), context, source }
}

impl TapProxy {
    pub fn new(
        ctx: &zmq::Context,
        config: &TapConfig,
        tx: Sender<Captured>,
        shared: Arc<Mutex<TapProxyReport>>,
    ) -> Result<Self, AgentError> {
        let zmqx::ProxySockets { frontend, backend, endpoints } =
            zmqx::proxy_sockets(ctx, &config.frontend, &config.backend, config.hwm_msgs, config.max_msg_bytes)
                .map_err(|(context, source)| AgentError::Zmq { role: "tap".into(), context, source })?;
        if config.subscribe_all {
            frontend.send(&[1u8][..], 0).map_err(zerr("subscribing upstream"))?;
        }
        Ok(TapProxy {
            frontend,
            backend,
            filter: config.filter.clone(),
            tx,
            frames: Vec::with_capacity(8),
            report: TapProxyReport::default(),
            shared,
            endpoints,
        })
    }

    fn capture(&mut self, item: Captured) {
        match self.tx.try_send(item) {
            Ok(()) => self.report.captured += 1,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.report.dropped += 1,
        }
    }

    fn publish(&self) {
        if let Ok(mut s) = self.shared.lock() {
            *s = self.report;
        }
    }
}

impl Agent for TapProxy {
    fn role(&self) -> &str {
        "tap-proxy"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let mut done = 0;
        for _ in 0..BATCH_MSGS {
            if !recv_message(&self.backend, &mut self.frames).map_err(zerr("receiving a subscription"))? {
                break;
            }
            if let [only] = &self.frames[..] {
                if let Some((&kind @ (0 | 1), prefix)) = only.split_first() {
                    let item =
                        Captured::Subscription { subscribe: kind == 1, prefix: prefix.to_vec(), recv_ns: now_ns() };
                    self.capture(item);
                }
            }
            match send_message(&self.frontend, &mut self.frames) {
                Ok(()) => self.report.forwarded_up += 1,
                Err(_) => self.report.send_failures += 1,
            }
            done += 1;
        }
        for _ in 0..BATCH_MSGS {
            if !recv_message(&self.frontend, &mut self.frames).map_err(zerr("receiving from publishers"))? {
                break;
            }
            if self.filter.matches(self.frames.first().map_or(&[][..], |f| &f[..])) {
                let item =
                    Captured::Message { frames: self.frames.iter().map(|f| f.to_vec()).collect(), recv_ns: now_ns() };
                self.capture(item);
            }
            match send_message(&self.backend, &mut self.frames) {
                Ok(()) => self.report.forwarded_down += 1,
                Err(_) => self.report.send_failures += 1,
            }
            done += 1;
        }
        if done > 0 {
            self.publish();
        }
        Ok(Step::Worked(done))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let ms = timeout.as_millis().clamp(1, i64::MAX as u128) as i64;
        let mut items = [self.frontend.as_poll_item(zmq::POLLIN), self.backend.as_poll_item(zmq::POLLIN)];
        let _ = zmq::poll(&mut items, ms);
    }

    fn on_close(&mut self) {
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full sink queue drops copies (counted) and never stops forwarding.
    #[test]
    fn full_queue_drops_copies_and_keeps_forwarding() {
        let ctx = zmq::Context::new();
        let config = TapConfig {
            frontend: vec![Attach::Bind("inproc://tap-front".into())],
            backend: vec![Attach::Bind("inproc://tap-back".into())],
            filter: Filter::default(),
            subscribe_all: true,
            hwm_msgs: 10_000,
            max_msg_bytes: 1 << 20,
        };
        let (tx, rx) = crossbeam::channel::bounded(1);
        let mut proxy = TapProxy::new(&ctx, &config, tx, Arc::default()).expect("proxy");
        let publisher = ctx.socket(zmq::PUB).expect("pub");
        publisher.connect("inproc://tap-front").expect("connect");
        let sub = ctx.socket(zmq::SUB).expect("sub");
        sub.connect("inproc://tap-back").expect("connect");
        sub.set_subscribe(b"").expect("subscribe");
        // Handshake: publish until one message comes through.
        let mut through = false;
        for _ in 0..1000 {
            publisher.send("warm", 0).expect("send");
            proxy.do_work().expect("work");
            if sub.recv_bytes(zmq::DONTWAIT).is_ok() {
                through = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(through, "path came up");
        while rx.try_recv().is_ok() {}
        while sub.recv_bytes(zmq::DONTWAIT).is_ok() {}
        let before = proxy.report;
        for i in 0..100u32 {
            publisher.send(&i.to_le_bytes()[..], 0).expect("send");
        }
        let mut forwarded = 0;
        for _ in 0..1000 {
            proxy.do_work().expect("work");
            forwarded = proxy.report.forwarded_down - before.forwarded_down;
            if forwarded >= 100 {
                break;
            }
        }
        assert!(forwarded >= 100, "all forwarded although the sink never reads");
        let mut delivered = 0;
        while sub.recv_bytes(zmq::DONTWAIT).is_ok() {
            delivered += 1;
        }
        assert_eq!(delivered, 100);
        assert_eq!(proxy.report.captured - before.captured, 1, "queue holds one");
        assert_eq!(proxy.report.dropped - before.dropped, 99, "the rest dropped, counted");
    }

    #[test]
    fn prefixes_parse_with_escapes() {
        assert_eq!(parse_prefix("ESH6").as_deref(), Ok(&b"ESH6"[..]));
        assert_eq!(parse_prefix("ESH6\\0").as_deref(), Ok(&b"ESH6\0"[..]));
        assert_eq!(parse_prefix("a\\x41\\\\").as_deref(), Ok(&b"aA\\"[..]));
        assert!(parse_prefix("bad\\q").is_err());
        assert!(parse_prefix("bad\\x4").is_err());
    }

    #[test]
    fn filter_matches_prefixes_or_everything() {
        assert!(Filter::default().matches(b"anything"));
        let f = Filter::new(vec![b"ES".to_vec(), b"NQZ5\0".to_vec()]);
        assert!(f.matches(b"ESH6\0..."));
        assert!(f.matches(b"NQZ5\0..."));
        assert!(!f.matches(b"NQZ55\0..."));
        assert!(!f.matches(b""));
    }
}
