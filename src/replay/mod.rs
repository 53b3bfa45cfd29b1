//! `mdsub replay`: publishes a feed (synthetic generator or capture file) on
//! one PUB endpoint per shard, paced at a fixed rate or flat out, stamping
//! each frame's *intended* send time and sequences, then ends each shard's
//! stream with an end-of-stream frame.
//!
//! The publisher is an XPUB (so it can see subscriptions and wait for them: a
//! real handshake, not a sleep). SNDHWM is always set explicitly. In lossless
//! mode ZMQ_XPUB_NODROP makes a full pipe push back on the publisher instead
//! of dropping (PERF-ANCHORS: a default-HWM publisher flat out delivers only
//! ~0.74 M msg/s of 100 B and drops the rest, so benchmarks would measure it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::feed::{shard_of, Generator, GeneratorConfig, SplitMix64};
use crate::wire::capture::{CaptureError, CaptureReader};
use crate::wire::{self, Header, Kind};

/// Topic of heartbeat and end-of-stream frames (see docs/WIRE.md).
pub const CONTROL_TOPIC: &[u8] = b"_mdsub";

/// Errors of a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("zmq error while {context}: {source}")]
    Zmq {
        context: String,
        #[source]
        source: zmq::Error,
    },
    #[error("no subscriber reached {endpoint} within {waited_ms} ms (expected {expected}, saw {seen})")]
    NoSubscribers { endpoint: String, expected: usize, seen: usize, waited_ms: u64 },
    #[error("capture file {path}: {source}")]
    Capture {
        path: PathBuf,
        #[source]
        source: CaptureError,
    },
    #[error("bad replay setting: {0}")]
    Config(String),
}

fn zerr(context: impl Into<String>) -> impl FnOnce(zmq::Error) -> ReplayError {
    let context = context.into();
    move |source| ReplayError::Zmq { context, source }
}

/// Publisher settings.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// One bind endpoint per shard (`tcp://127.0.0.1:*` picks a free port).
    pub endpoints: Vec<String>,
    /// Send high-water mark per subscriber pipe, in messages.
    pub sndhwm_msgs: i32,
    /// Back-pressure instead of drops (XPUB_NODROP).
    pub lossless: bool,
    /// Added to the shard index to make each shard's publisher id.
    pub publisher_id_base: u32,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            endpoints: vec!["tcp://127.0.0.1:*".into()],
            sndhwm_msgs: 100_000,
            lossless: true,
            publisher_id_base: 0,
        }
    }
}

/// How to pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// As fast as the publisher can send (send time = the moment of encoding).
    FlatOut,
    /// A fixed total rate in messages per second, in bursts of `burst` sharing one intended time.
    Rate { msgs_per_sec: u64, burst: u64 },
    /// Captures only: keep the recorded gaps between receive times.
    Recorded,
}

/// What to replay, and for how long.
#[derive(Debug, Clone)]
pub enum Source {
    Generator(GeneratorConfig),
    /// Frames sent as recorded; with `restamp`, mdsub data frames get fresh
    /// sequences and intended send times (needed to measure latency).
    Capture {
        path: PathBuf,
        restamp: bool,
    },
}

/// Limits of one replay run (the first reached ends it).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_msgs: Option<u64>,
    pub duration: Option<Duration>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplayStats {
    /// Data messages sent, per shard.
    pub sent_per_shard: Vec<u64>,
    pub sent_total: u64,
    pub elapsed_s: f64,
    /// True when stopped by a stop request before its source or limits ended.
    pub interrupted: bool,
}

struct Shard {
    socket: zmq::Socket,
    endpoint: String,
    publisher_id: u32,
    session_id: u64,
    stream_seq: u64,
    sent: u64,
    subscribers: usize,
}

/// One XPUB per shard, bound and ready to publish.
pub struct Publisher {
    shards: Vec<Shard>,
    buf: Vec<u8>,
}

impl Publisher {
    /// Make and bind one XPUB per endpoint.
    pub fn bind(ctx: &zmq::Context, cfg: &PublisherConfig) -> Result<Self, ReplayError> {
        if cfg.endpoints.is_empty() {
            return Err(ReplayError::Config("at least one endpoint is needed".into()));
        }
        let mut seed = SplitMix64::new(wire::now_ns() ^ (std::process::id() as u64) << 32);
        let mut shards = Vec::with_capacity(cfg.endpoints.len());
        for (i, ep) in cfg.endpoints.iter().enumerate() {
            crate::zmqx::check_endpoint(ep).map_err(ReplayError::Config)?;
            let mut s = ctx.socket(zmq::XPUB).map_err(zerr("creating the XPUB"))?;
            s.set_sndhwm(cfg.sndhwm_msgs).map_err(zerr("setting SNDHWM"))?;
            s.set_xpub_verbose(true).map_err(zerr("setting XPUB_VERBOSE"))?;
            if cfg.lossless {
                crate::zmqx::set_xpub_nodrop(&mut s, true).map_err(zerr("setting XPUB_NODROP"))?;
            }
            s.set_sndtimeo(100).map_err(zerr("setting SNDTIMEO"))?;
            s.set_linger(2000).map_err(zerr("setting LINGER"))?;
            let endpoint = crate::zmqx::bind_resolved(&s, ep).map_err(zerr(format!("binding {ep}")))?;
            shards.push(Shard {
                socket: s,
                endpoint,
                publisher_id: cfg.publisher_id_base + i as u32,
                session_id: seed.next_u64(),
                stream_seq: 0,
                sent: 0,
                subscribers: 0,
            });
        }
        Ok(Publisher { shards, buf: Vec::with_capacity(1024) })
    }

    /// The bound endpoints, one per shard, ports resolved.
    pub fn endpoints(&self) -> Vec<String> {
        self.shards.iter().map(|s| s.endpoint.clone()).collect()
    }

    /// Read pending subscription events; count subscriptions that receive the
    /// control topic (each mdsub subscriber makes exactly one such).
    fn drain_subscriptions(&mut self) -> Result<(), ReplayError> {
        for sh in &mut self.shards {
            while let Ok(ev) = sh.socket.recv_bytes(zmq::DONTWAIT) {
                if let Some((&kind, topic)) = ev.split_first() {
                    let ctl = [CONTROL_TOPIC, b"\0"].concat();
                    if ctl.starts_with(topic) {
                        if kind == 1 {
                            sh.subscribers += 1;
                        } else if kind == 0 {
                            sh.subscribers = sh.subscribers.saturating_sub(1);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Wait until every shard has `per_shard` subscribers (the handshake).
    pub fn wait_for_subscribers(&mut self, per_shard: usize, timeout: Duration) -> Result<(), ReplayError> {
        let start = Instant::now();
        loop {
            self.drain_subscriptions()?;
            if let Some(sh) = self.shards.iter().find(|s| s.subscribers < per_shard) {
                if start.elapsed() >= timeout {
                    return Err(ReplayError::NoSubscribers {
                        endpoint: sh.endpoint.clone(),
                        expected: per_shard,
                        seen: sh.subscribers,
                        waited_ms: timeout.as_millis() as u64,
                    });
                }
                let mut items: Vec<zmq::PollItem> =
                    self.shards.iter().map(|s| s.socket.as_poll_item(zmq::POLLIN)).collect();
                zmq::poll(&mut items, 20).map_err(zerr("waiting for subscribers"))?;
            } else {
                return Ok(());
            }
        }
    }

    /// Send `self.buf` (or `frame`) on shard `k`, retrying while a lossless
    /// pipe is full. Returns false if stopped while waiting.
    fn send_on(
        &mut self,
        k: usize,
        frame: Option<&[u8]>,
        more: bool,
        stop: &crate::agent::StopFlag,
    ) -> Result<bool, ReplayError> {
        let data: &[u8] = frame.unwrap_or(&self.buf);
        let flags = if more { zmq::SNDMORE } else { 0 };
        loop {
            match self.shards[k].socket.send(data, flags) {
                Ok(()) => return Ok(true),
                Err(zmq::Error::EAGAIN) => {
                    if stop.is_stopped() {
                        return Ok(false);
                    }
                }
                Err(zmq::Error::EINTR) => {}
                Err(e) => {
                    return Err(ReplayError::Zmq {
                        context: format!("sending on {}", self.shards[k].endpoint),
                        source: e,
                    })
                }
            }
        }
    }

    fn encode_data(&mut self, k: usize, topic: &[u8], topic_seq: u64, send_time_ns: u64, payload: &[u8]) {
        let sh = &mut self.shards[k];
        sh.stream_seq += 1;
        let h = Header {
            kind: Kind::Data,
            flags: 0,
            publisher_id: sh.publisher_id,
            session_id: sh.session_id,
            stream_seq: sh.stream_seq,
            topic_seq,
            send_time_ns,
        };
        self.buf.resize(wire::frame_len(topic, payload.len()), 0);
        wire::encode_into(&mut self.buf, topic, &h, payload);
    }

    fn encode_control(&mut self, k: usize, kind: Kind) {
        let sh = &self.shards[k];
        let h = Header {
            kind,
            flags: 0,
            publisher_id: sh.publisher_id,
            session_id: sh.session_id,
            stream_seq: sh.stream_seq,
            topic_seq: 0,
            send_time_ns: wire::now_ns(),
        };
        let payload = sh.sent.to_le_bytes();
        self.buf.resize(wire::frame_len(CONTROL_TOPIC, 8), 0);
        wire::encode_into(&mut self.buf, CONTROL_TOPIC, &h, &payload);
    }

    /// Send a heartbeat on every shard.
    pub fn heartbeat(&mut self, stop: &crate::agent::StopFlag) -> Result<(), ReplayError> {
        self.drain_subscriptions()?;
        for k in 0..self.shards.len() {
            self.encode_control(k, Kind::Heartbeat);
            self.send_on(k, None, false, stop)?;
        }
        Ok(())
    }

    /// Send end of stream on every shard (payload: data frames sent, u64 LE).
    pub fn end_of_stream(&mut self) -> Result<(), ReplayError> {
        let never = crate::agent::StopFlag::new();
        for k in 0..self.shards.len() {
            self.encode_control(k, Kind::EndOfStream);
            self.send_on(k, None, false, &never)?;
        }
        Ok(())
    }

    fn stats(&self, start: Instant, interrupted: bool) -> ReplayStats {
        let sent_per_shard: Vec<u64> = self.shards.iter().map(|s| s.sent).collect();
        ReplayStats {
            sent_total: sent_per_shard.iter().sum(),
            sent_per_shard,
            elapsed_s: start.elapsed().as_secs_f64(),
            interrupted,
        }
    }

    /// Replay `source` under `pacing` and `limits`, then send end of stream.
    /// `progress` is called about every 64 Ki messages with the count so far.
    pub fn run(
        &mut self,
        source: &Source,
        pacing: Pacing,
        limits: Limits,
        stop: &crate::agent::StopFlag,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ReplayStats, ReplayError> {
        let start = Instant::now();
        let interrupted = match source {
            Source::Generator(g) => {
                if pacing == Pacing::Recorded {
                    return Err(ReplayError::Config("recorded timing needs a capture file".into()));
                }
                self.run_generator(g, pacing, limits, stop, progress)?
            }
            Source::Capture { path, restamp } => {
                match self.run_capture(path, *restamp, pacing, limits, stop, progress) {
                    Ok(i) => i,
                    // A damaged capture: everything before the damage was
                    // sent; end the stream so subscribers finish, then report.
                    Err(e @ ReplayError::Capture { .. }) => {
                        self.end_of_stream()?;
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        self.end_of_stream()?;
        Ok(self.stats(start, interrupted))
    }

    fn run_generator(
        &mut self,
        cfg: &GeneratorConfig,
        pacing: Pacing,
        limits: Limits,
        stop: &crate::agent::StopFlag,
        progress: &mut dyn FnMut(u64),
    ) -> Result<bool, ReplayError> {
        let mut gen = Generator::new(cfg);
        let shards = self.shards.len();
        let topics: Vec<Vec<u8>> = gen.topics().iter().map(|t| t.as_bytes().to_vec()).collect();
        let shard_of_topic: Vec<usize> = topics.iter().map(|t| shard_of(t, shards)).collect();
        let mut topic_seq = vec![0u64; topics.len()];
        let mut pacer = Pacer::new(pacing, limits.duration);
        let max = limits.max_msgs.unwrap_or(u64::MAX);
        let mut i = 0u64;
        while i < max {
            if i & 0xffff == 0 {
                progress(i);
                if stop.is_stopped() {
                    return Ok(true);
                }
            }
            let Some(send_time_ns) = pacer.wait_turn(i, |idle| idle.then(|| self.heartbeat(stop)).transpose())? else {
                break;
            };
            let t = gen.next_topic();
            let k = shard_of_topic[t];
            topic_seq[t] += 1;
            let payload = gen.payload(i);
            self.encode_data(k, &topics[t], topic_seq[t], send_time_ns, payload);
            if !self.send_on(k, None, false, stop)? {
                return Ok(true);
            }
            self.shards[k].sent += 1;
            i += 1;
        }
        progress(i);
        Ok(false)
    }

    fn run_capture(
        &mut self,
        path: &std::path::Path,
        restamp: bool,
        pacing: Pacing,
        limits: Limits,
        stop: &crate::agent::StopFlag,
        progress: &mut dyn FnMut(u64),
    ) -> Result<bool, ReplayError> {
        let cap = |source| ReplayError::Capture { path: path.to_path_buf(), source };
        let mut reader = CaptureReader::open(path).map_err(cap)?;
        let shards = self.shards.len();
        let mut topic_seq: std::collections::HashMap<Vec<u8>, u64> = Default::default();
        let mut pacer = Pacer::new(pacing, limits.duration);
        let max = limits.max_msgs.unwrap_or(u64::MAX);
        let mut first_recv_ns: Option<u64> = None;
        let mut msgs = 0u64;
        // Frames of the message being read; a message is sent only when whole,
        // so a capture damaged inside a multipart message sends no half of it.
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut used = 0usize;
        while msgs < max {
            let recv_ns = match reader.next_record().map_err(cap)? {
                Some(rec) => {
                    if used == parts.len() {
                        parts.push(Vec::new());
                    }
                    parts[used].clear();
                    parts[used].extend_from_slice(rec.frame);
                    used += 1;
                    if rec.more {
                        continue;
                    }
                    rec.recv_ns
                }
                None => break,
            };
            if msgs & 0xffff == 0 {
                progress(msgs);
                if stop.is_stopped() {
                    return Ok(true);
                }
            }
            let base = *first_recv_ns.get_or_insert(recv_ns);
            let intended = match pacing {
                Pacing::Recorded => pacer.wait_until_offset(recv_ns.saturating_sub(base)),
                _ => pacer.wait_turn(msgs, |idle| idle.then(|| self.heartbeat(stop)).transpose())?,
            };
            let Some(intended) = intended else { break };
            let first = &parts[0];
            let topic = wire::split_topic(first).map(|(t, _)| t).unwrap_or(first);
            let k = shard_of(topic, shards);
            if restamp && used == 1 {
                if let Ok(view) = wire::decode(&parts[0]) {
                    if view.header.kind == Kind::Data {
                        let (topic, payload) = (view.topic.to_vec(), view.payload.to_vec());
                        let seq = topic_seq.entry(topic.clone()).or_insert(0);
                        *seq += 1;
                        let s = *seq;
                        self.encode_data(k, &topic, s, intended, &payload);
                        parts[0].clear();
                        parts[0].extend_from_slice(&self.buf);
                    }
                }
            }
            for (n, frame) in parts[..used].iter().enumerate() {
                if !self.send_on(k, Some(frame), n + 1 < used, stop)? {
                    return Ok(true);
                }
            }
            used = 0;
            self.shards[k].sent += 1;
            msgs += 1;
        }
        progress(msgs);
        Ok(false)
    }
}

/// Schedules intended send times and waits for them smoothly (PERF-ANCHORS: a
/// pacer that oversleeps its deadlines bursts and causes loss). The thread's
/// timer slack is set to 1 ns so short sleeps are accurate; it sleeps until
/// ~2 µs before each deadline and spins the rest, so a paced publisher leaves
/// its core to the subscriber instead of spinning through every gap.
pub struct Pacer {
    pacing: Pacing,
    start_ns: u64,
    end_ns: Option<u64>,
    last_send_ns: u64,
}

/// Heartbeat when the schedule leaves the publisher idle this long.
const HEARTBEAT_AFTER_NS: u64 = 1_000_000_000;

impl Pacer {
    pub fn new(pacing: Pacing, duration: Option<Duration>) -> Self {
        // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        let start_ns = wire::now_ns();
        Pacer { pacing, start_ns, end_ns: duration.map(|d| start_ns + d.as_nanos() as u64), last_send_ns: start_ns }
    }

    /// Intended send time of message `i`, or None when the duration is over.
    /// `on_idle(true)` is called while waiting more than a second (heartbeats).
    pub fn wait_turn<E>(
        &mut self,
        i: u64,
        mut on_idle: impl FnMut(bool) -> Result<Option<()>, E>,
    ) -> Result<Option<u64>, E> {
        let intended = match self.pacing {
            Pacing::FlatOut | Pacing::Recorded => wire::now_ns(),
            Pacing::Rate { msgs_per_sec, burst } => {
                let burst = burst.max(1);
                let group = i / burst * burst;
                self.start_ns + (group as u128 * 1_000_000_000u128 / msgs_per_sec.max(1) as u128) as u64
            }
        };
        if self.end_ns.is_some_and(|end| intended >= end) {
            return Ok(None);
        }
        loop {
            let now = wire::now_ns();
            if now >= intended {
                break;
            }
            if now - self.last_send_ns > HEARTBEAT_AFTER_NS {
                on_idle(true)?;
                self.last_send_ns = now;
            }
            Self::nap(intended - now);
        }
        self.last_send_ns = intended;
        Ok(Some(intended))
    }

    /// For recorded timing: wait until `offset_ns` after the start.
    pub fn wait_until_offset(&mut self, offset_ns: u64) -> Option<u64> {
        let intended = self.start_ns + offset_ns;
        if self.end_ns.is_some_and(|end| intended >= end) {
            return None;
        }
        loop {
            let now = wire::now_ns();
            if now >= intended {
                return Some(intended);
            }
            Self::nap(intended - now);
        }
    }

    #[inline]
    fn nap(left_ns: u64) {
        if left_ns > 4_000 {
            std::thread::sleep(Duration::from_nanos(left_ns.min(HEARTBEAT_AFTER_NS / 2) - 2_000));
        } else {
            std::hint::spin_loop();
        }
    }
}
