//! The Espresso tap's hooks on the proxy shell (guide, chapter 5): forwarding plus a capture side.
//!
//! Copies go to the sink over a bounded channel with `try_send`; the proxy
//! never waits for the sink.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam::channel::{Sender, TrySendError};

use crate::diag::RefusalLog;
use crate::proxy::{Downstream, FromSubscriber, ProxyHooks, ShellCounters};
use crate::zmqx::frame::Frame;

/// What the proxy hands to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// A message from the publishers, every frame, as received; `missed_before`: copies of
    /// messages dropped since the one before that reached the sink (a recording marks the hole).
    Message { frames: Vec<Vec<u8>>, recv_ns: u64, missed_before: u64 },
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
                    .ok_or("\\x needs two hex digits")?;
                out.push(hex);
                i += 4;
            }
            _ => return Err("unknown escape (use \\0, \\xNN or \\\\)".into()),
        }
    }
    Ok(out)
}

/// Counters of the proxy side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapProxyReport {
    /// The proxy shell's counters: messages forwarded each way, those too long to forward
    /// upstream, delivery drops and waits, failed sends, the bound frontend's publisher
    /// connections.
    pub shell: ShellCounters,
    /// Copies handed to the sink.
    pub captured: u64,
    /// Copies dropped because the sink's queue was full (or the sink had stopped).
    pub dropped: u64,
    /// Of them, copies of messages (the rest are (un)subscriptions): a recording misses these.
    pub dropped_messages: u64,
}

/// The tap on the proxy shell: the filter and the sink's queue.
pub struct TapHooks {
    filter: Filter,
    tx: Sender<Captured>,
    captured: u64,
    dropped: u64,
    /// Copies of messages dropped, shared with the sink: at its end, those after the last
    /// message it took are the recording's last hole.
    dropped_messages: Arc<AtomicU64>,
    /// Copies of messages dropped since the last one that reached the sink: the next carries it.
    missed: u64,
    /// Copies dropped, by reason, said at a bounded rate (the proxy never waits for the sink).
    refusals: RefusalLog,
}

impl TapHooks {
    /// Copies of what passes (filtered, for messages) go to `tx`.
    pub fn new(filter: Filter, tx: Sender<Captured>) -> Self {
        TapHooks {
            filter,
            tx,
            captured: 0,
            dropped: 0,
            dropped_messages: Arc::default(),
            missed: 0,
            refusals: RefusalLog::new("tap"),
        }
    }

    /// The count of message copies dropped, as it goes (the sink reads it at its end).
    pub fn dropped_messages(&self) -> Arc<AtomicU64> {
        self.dropped_messages.clone()
    }

    fn capture(&mut self, mut item: Captured, now_ns: u64) {
        let message = matches!(item, Captured::Message { .. });
        if let Captured::Message { missed_before, .. } = &mut item {
            *missed_before = self.missed;
        }
        let sent = self.tx.try_send(item);
        match (&sent, message) {
            (Ok(()), true) => self.missed = 0,
            (Err(_), true) => {
                self.missed += 1;
                self.dropped_messages.fetch_add(1, Ordering::Release);
            }
            _ => {}
        }
        match sent {
            Ok(()) => self.captured += 1,
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                let detail = "the printer/recorder is behind: the copy is dropped (the proxy keeps forwarding)";
                self.refusals.refuse("queue_full", &detail, now_ns);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped += 1;
                self.refusals.refuse("sink_stopped", &"the printer/recorder has stopped: the copy is dropped", now_ns);
            }
        }
    }
}

impl ProxyHooks for TapHooks {
    type Report = TapProxyReport;

    fn role(&self) -> &'static str {
        "tap-proxy"
    }

    /// Copy the message to the sink, stamped with the wall clock (its lag is the receive time
    /// minus the send time in its header).
    fn on_upstream_message(&mut self, frames: &[Frame], now_ns: u64) {
        if self.filter.matches(frames.first().map_or(&[][..], |f| &f[..])) {
            let item = Captured::Message {
                frames: frames.iter().map(|f| f.to_vec()).collect(),
                recv_ns: crate::clock::realtime_ns(),
                missed_before: 0,
            };
            self.capture(item, now_ns);
        }
    }

    /// Copy (un)subscriptions to the sink; everything is forwarded.
    fn on_subscriber_message(
        &mut self,
        msg: FromSubscriber<'_>,
        _: &[Frame],
        _: &mut Downstream<'_>,
        now_ns: u64,
    ) -> bool {
        let (subscribe, prefix) = match msg {
            FromSubscriber::Subscribe(p) => (true, p),
            FromSubscriber::Unsubscribe(p) => (false, p),
            FromSubscriber::Other => return true,
        };
        self.capture(
            Captured::Subscription { subscribe, prefix: prefix.to_vec(), recv_ns: crate::clock::realtime_ns() },
            now_ns,
        );
        true
    }

    /// Copies dropped since the last line are summarised when the interval is up, even
    /// when no more traffic comes to say them.
    fn on_tick(&mut self, now_ns: u64) {
        self.refusals.tick(now_ns);
    }

    fn report(&self, shell: &ShellCounters) -> TapProxyReport {
        TapProxyReport {
            shell: *shell,
            captured: self.captured,
            dropped: self.dropped,
            dropped_messages: self.dropped_messages.load(Ordering::Acquire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Agent, IdleStrategy};
    use crate::proxy::{ProxyConfig, ProxyShell};
    use crate::zmqx::Attach;
    use std::time::Duration;

    /// A full sink queue drops copies (counted) and never stops forwarding.
    #[test]
    fn full_queue_drops_copies_and_keeps_forwarding() {
        let ctx = zmq::Context::new();
        let config = ProxyConfig {
            frontend: vec![Attach::Bind("inproc://tap-front".into())],
            backend: vec![Attach::Bind("inproc://tap-back".into())],
            hwm_msgs: 10_000,
            max_msg_bytes: 1 << 20,
            idle: IdleStrategy::default(),
            delivery: crate::proxy::Delivery::Lossy,
        };
        let (tx, rx) = crossbeam::channel::bounded(1);
        let mut proxy = ProxyShell::new(&ctx, &config, true, TapHooks::new(Filter::default(), tx)).expect("proxy");
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
        let before = proxy.report();
        for i in 0..100u32 {
            publisher.send(&i.to_le_bytes()[..], 0).expect("send");
        }
        let mut forwarded = 0;
        for _ in 0..1000 {
            proxy.do_work().expect("work");
            forwarded = proxy.report().shell.forwarded_down - before.shell.forwarded_down;
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
        let after = proxy.report();
        assert_eq!(after.captured - before.captured, 1, "queue holds one");
        assert_eq!(after.dropped - before.dropped, 99, "the rest dropped, counted");
    }

    #[test]
    fn copies_dropped_since_the_last_line_are_summarised_on_the_tick_with_no_more_traffic() {
        // Before, drops counted after the first were said only with the next drop or at exit.
        use crate::clock::ManualClock;
        use crate::diag::SUMMARY_INTERVAL_NS;
        let clock = ManualClock::new(1_000 * SUMMARY_INTERVAL_NS);
        let (tx, _rx) = crossbeam::channel::bounded(1);
        let mut tap = TapHooks::new(Filter::default(), tx);
        let m = [Frame::copy_of(b"x")];
        for _ in 0..3 {
            tap.on_upstream_message(&m, clock.advance_ns(1));
        }
        assert_eq!((tap.captured, tap.dropped), (1, 2), "the queue holds one");
        assert!(tap.refusals.counts().unsaid(), "the first drop said at once, the second counted");
        tap.on_tick(clock.advance_ns(SUMMARY_INTERVAL_NS - 2));
        assert!(tap.refusals.counts().unsaid(), "not before the interval is up");
        tap.on_tick(clock.advance_ns(1));
        assert!(!tap.refusals.counts().unsaid(), "said on the tick, with no message since");
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
