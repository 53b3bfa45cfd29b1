//! `mdsub lvc-bench`: throughput through the Last Value Cache proxy vs a plain proxy and direct PUB→SUB.
//!
//! Three paths in every run, lossless (every SNDHWM and RCVHWM set explicitly
//! to more than the messages sent): PUB → SUB direct; PUB → plain libzmq
//! proxy (`zmq_proxy_steerable`, XSUB/XPUB with the LVC's socket options, no
//! cache) → SUB; and PUB → LVC (the guide's Last Value Cache, chapter 5) →
//! SUB. The ratios LVC / plain proxy (the cache's own cost) and plain proxy /
//! direct (the hop's cost) are reported per run and as medians.
//!
//! The LVC caches every topic sent ([`cache_limits`]: its default limits, raised to hold them), so
//! the cache measured is one that caches every message. A stop request (Ctrl-C) ends the
//! measurement under way; the result is then of the whole runs before it ([`Completed`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::{Agent, AgentError, AgentStats, IdleStrategy, RunSpec, Runner, Step, StopFlag};
use serde::Serialize;

use crate::bench::median;
use crate::bench::result::{Completed, Results};
use crate::bench::stamp::Machine;
use crate::diag::Lines;
use crate::lvc::cache::CacheLimits;
use crate::lvc::LvcConfig;
use crate::proxy::ProxyConfig;
use crate::wire::{encode, frame_len, Header, Kind, HEADER_LEN};
use crate::zmqx::{self, bind_resolved, Attach};

/// What `mdsub lvc-bench` measures: messages/s through the LVC vs a plain
/// proxy and direct PUB→SUB (TCP loopback).
#[derive(Debug, Clone)]
pub struct LvcBenchConfig {
    /// Messages per measurement.
    pub messages: u64,
    /// Payload bytes per message (the frame adds the topic, a NUL and the header).
    pub payload_bytes: usize,
    /// Distinct topics, cycled.
    pub topics: usize,
    /// Runs (each measures direct, then a plain proxy, then the LVC); medians are reported.
    pub runs: usize,
    /// Give up on a measurement after this long (reported as loss).
    pub timeout: Duration,
    /// Idle strategy of the LVC thread.
    pub idle: IdleStrategy,
}

impl LvcBenchConfig {
    /// Whether this comparison may run: payloads up to [`crate::feed::MAX_PAYLOAD_BYTES`] (replay's
    /// bound), topics up to [`crate::feed::MAX_SYMBOLS`], and their frames, one per topic (built
    /// before each measurement), within [`crate::feed::MAX_FRAME_BYTES`]: a generated feed's bounds.
    /// The error names the setting by its flag (`--payload-bytes 268435456: …`).
    pub fn check(&self) -> Result<(), String> {
        crate::feed::check_payload_bytes(self.payload_bytes)
            .map_err(|e| format!("--payload-bytes {}: {e}", self.payload_bytes))?;
        crate::feed::check_symbols(self.topics).map_err(|e| format!("--symbols {}: {e}", self.topics))?;
        crate::feed::check_frame_bytes(self.topics, self.payload_bytes)
            .map_err(|e| format!("--symbols, --payload-bytes: {e}"))
    }

    /// The longest frame a measurement sends: the proxies' `max_msg_bytes` lets it through (at
    /// least 1 MiB, as before), so every accepted payload is measured, not dropped.
    fn max_frame_bytes(&self) -> usize {
        frame_len(topic_name(self.topics.max(1) - 1).as_bytes(), self.payload_bytes)
    }
}

/// The LVC's cache limits for the bench: the default ones (`mdsub lvc`'s), raised where they
/// would not hold every topic sent (and the probe) with its value. Before, `--symbols 200k` passed
/// the default 100k topics: half the topics went through uncached (a `cache_full` line among the
/// run lines), and the bench measured a cache that was not caching.
pub fn cache_limits(args: &LvcBenchConfig) -> CacheLimits {
    let d = CacheLimits::default();
    let topics = args.topics.max(1) + 1; // and the probe's
                                         // A cached value's footprint: its key (the topic and its NUL) twice, its one frame, and
                                         // one frame end (`lvc::cache`); twice that for the allocator's rounding.
    let key = topic_name(args.topics.max(1) - 1).len() + 1;
    let each = 2 * key + args.max_frame_bytes() + std::mem::size_of::<u32>();
    CacheLimits {
        max_topics: d.max_topics.max(topics),
        max_bytes: d.max_bytes.max(topics.saturating_mul(each).saturating_mul(2)),
    }
}

/// The proxies' `max_msg_bytes`: the longest frame, at least 1 MiB.
fn proxy_max_msg_bytes(args: &LvcBenchConfig) -> i64 {
    i64::try_from(args.max_frame_bytes()).unwrap_or(i64::MAX).max(1 << 20)
}

/// The topic of the `i`-th symbol: `B00000`, `B00001`, …
fn topic_name(i: usize) -> String {
    format!("B{i:05}")
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    pub sent: u64,
    pub delivered: u64,
    pub elapsed: Duration,
}

impl Measurement {
    pub fn msgs_per_s(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn berr(context: &'static str) -> impl FnOnce(zmq::Error) -> AgentError {
    move |source| AgentError::Zmq { role: "lvc-bench".into(), context, source }
}

const PROBE: &[u8] = b"_bench";

/// The header of every benchmark frame (the bench counts, it checks no sequence).
fn bench_header(kind: Kind) -> Header {
    Header { kind, flags: 0, publisher_id: 1, session_id: 1, stream_seq: 0, topic_seq: 0, send_time_ns: 0 }
}

fn frames(payload_bytes: usize, topics: usize) -> Vec<Vec<u8>> {
    (0..topics.max(1))
        .map(|i| {
            let topic = topic_name(i);
            encode(topic.as_bytes(), &bench_header(Kind::Data), &vec![0x5a; payload_bytes])
        })
        .collect()
}

/// The sockets of a measurement, kept open until a proxy in between has stopped: the publisher
/// (None if its thread failed) and the subscriber.
type Ends = (Option<zmq::Socket>, zmq::Socket);

/// Publish `messages` frames on `publisher` once `ready` is set (after probes),
/// while a SUB on `sub_endpoint` counts them. The publisher and the SUB come back, so a proxy in
/// between can stop before they close: a publisher gone first is a lost link in the proxy's
/// log, a subscriber gone first a `subscriber's connection … ended` line (said after every run
/// of the LVC before).
/// `stop` (Ctrl-C) ends it early, the publisher too (what it measured is then no measurement).
fn measure(
    publisher: zmq::Socket,
    sub_ctx: &zmq::Context,
    sub_endpoint: &str,
    hwm: i32,
    args: &LvcBenchConfig,
    stop: &StopFlag,
) -> Result<(Measurement, Ends), AgentError> {
    let sub = sub_ctx.socket(zmq::SUB).map_err(berr("making the SUB"))?;
    sub.set_rcvhwm(hwm).map_err(berr("setting RCVHWM"))?;
    sub.set_rcvtimeo(100).map_err(berr("setting RCVTIMEO"))?;
    sub.connect(sub_endpoint).map_err(berr("connecting the SUB"))?;
    sub.set_subscribe(b"").map_err(berr("subscribing"))?;
    let ready = Arc::new(AtomicBool::new(false));
    let start: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (ready_p, start_p) = (ready.clone(), start.clone());
    let fs = frames(args.payload_bytes, args.topics);
    let messages = args.messages;
    let probe = encode(PROBE, &bench_header(Kind::Heartbeat), b"");
    let pub_stop = stop.clone();
    let pub_thread = Runner::task("bench-pub", None, move || -> zmq::Result<zmq::Socket> {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !ready_p.load(Ordering::Acquire) && Instant::now() < give_up && !pub_stop.is_stopped() {
            publisher.send(&probe[..], 0)?;
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Ok(mut s) = start_p.lock() {
            *s = Some(Instant::now());
        }
        for i in 0..messages {
            if i % 4096 == 0 && pub_stop.is_stopped() {
                break;
            }
            let f = &fs[(i % fs.len() as u64) as usize];
            publisher.send(&f[..], 0)?;
        }
        // Keep the socket open until the subscriber is done (linger default).
        Ok(publisher)
    })?;

    let mut msg = zmq::Message::new();
    let mut delivered = 0u64;
    let mut last = Instant::now();
    let deadline = Instant::now() + args.timeout;
    while delivered < messages && Instant::now() < deadline && !stop.is_stopped() {
        match sub.recv(&mut msg, 0) {
            Ok(()) => {
                if msg.len() > PROBE.len() && msg.starts_with(PROBE) && msg[PROBE.len()] == 0 {
                    ready.store(true, Ordering::Release);
                } else {
                    delivered += 1;
                    last = Instant::now();
                }
            }
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(berr("receiving")(e)),
        }
    }
    ready.store(true, Ordering::Release);
    let publisher = pub_thread.join().ok().and_then(Result::ok);
    // The measurement is over: what did not arrive is counted lost. A publisher left with
    // frames for a connection still in its handshake (a measurement given up at once) would
    // otherwise hold its context's end for libzmq's 30 s handshake timeout.
    if let Some(p) = &publisher {
        let _ = p.set_linger(0);
    }
    let started = start.lock().ok().and_then(|s| *s).unwrap_or(last);
    let m = Measurement { sent: messages, delivered, elapsed: last.saturating_duration_since(started) };
    Ok((m, (publisher, sub)))
}

fn make_pub(ctx: &zmq::Context, hwm: i32) -> Result<(zmq::Socket, String), AgentError> {
    let p = ctx.socket(zmq::PUB).map_err(berr("making the PUB"))?;
    p.set_sndhwm(hwm).map_err(berr("setting SNDHWM"))?;
    let ep = bind_resolved(&p, "tcp://127.0.0.1:*").map_err(berr("binding the PUB"))?;
    Ok((p, ep))
}

fn direct(args: &LvcBenchConfig, hwm: i32, stop: &StopFlag) -> Result<Measurement, AgentError> {
    let (pub_ctx, sub_ctx) = (zmq::Context::new(), zmq::Context::new());
    let (p, ep) = make_pub(&pub_ctx, hwm)?;
    measure(p, &sub_ctx, &ep, hwm, args, stop).map(|(m, _)| m)
}

/// The LVC path: its measurement, the symbols' topics the LVC cached ([`symbol_topics`]) and
/// its thread's counters.
fn via_lvc(args: &LvcBenchConfig, hwm: i32, stop: &StopFlag) -> Result<(Measurement, u64, AgentStats), AgentError> {
    let (pub_ctx, lvc_ctx, sub_ctx) = (zmq::Context::new(), zmq::Context::new(), zmq::Context::new());
    let (p, ep) = make_pub(&pub_ctx, hwm)?;
    let config = LvcConfig {
        proxy: ProxyConfig {
            frontend: vec![Attach::Connect(ep)],
            backend: vec![Attach::Bind("tcp://127.0.0.1:*".into())],
            hwm_msgs: hwm,
            max_msg_bytes: proxy_max_msg_bytes(args),
            idle: args.idle,
            delivery: crate::proxy::Delivery::Lossless,
        },
        limits: cache_limits(args),
        answers: crate::lvc::answer::AnswerLimits::default(),
    };
    let proxy = crate::lvc::new_proxy(&lvc_ctx, &config)?;
    let back = proxy.endpoint("backend").unwrap_or_default().to_string();
    let proxy_stop = StopFlag::new();
    let handle = Runner::start(RunSpec { core: None, idle: args.idle }, proxy_stop.clone(), proxy)?;
    let counters = handle.counters().clone();
    let m = measure(p, &sub_ctx, &back, hwm, args, stop);
    proxy_stop.stop();
    let proxy = handle.join()?;
    let stats = counters.snapshot("lvc-proxy");
    let (m, _ends) = m?; // closed only now, after the proxy
    let probe_key = [PROBE, b"\0"].concat();
    let probe_cached = proxy.hooks().cache().get(&probe_key).is_some();
    Ok((m, symbol_topics(proxy.report().topics, probe_cached), stats))
}

/// The symbols' topics among `topics` cached: the bench's readiness probe (`_bench`), when the
/// cache holds it, is no symbol (before, `--symbols 1000` said `1001 cached topics`).
fn symbol_topics(topics: u64, probe_cached: bool) -> u64 {
    topics - u64::from(probe_cached && topics > 0)
}

/// The plain proxy baseline: libzmq's own `zmq_proxy_steerable` between an
/// XSUB and an XPUB made exactly as the LVC makes its sockets, no cache.
struct PlainProxy {
    frontend: zmq::Socket,
    backend: zmq::Socket,
    /// PAIR; `TERMINATE` from the bench ends the proxy.
    control: zmq::Socket,
}

impl Agent for PlainProxy {
    fn role(&self) -> &str {
        "plain-proxy"
    }

    /// Runs libzmq's proxy loop until `TERMINATE` arrives on the control
    /// socket: one blocking call by design, it is the baseline.
    fn do_work(&mut self) -> Result<Step, AgentError> {
        zmq::proxy_steerable(&mut self.frontend, &mut self.backend, &mut self.control).map_err(|source| {
            AgentError::Zmq { role: "plain-proxy".into(), context: "running zmq_proxy_steerable", source }
        })?;
        Ok(Step::Finished(0))
    }
}

fn via_plain_proxy(args: &LvcBenchConfig, hwm: i32, stop: &StopFlag) -> Result<Measurement, AgentError> {
    let (pub_ctx, proxy_ctx, sub_ctx) = (zmq::Context::new(), zmq::Context::new(), zmq::Context::new());
    let (p, ep) = make_pub(&pub_ctx, hwm)?;
    let zmqx::ProxySockets { frontend, backend, endpoints } =
        zmqx::proxy_sockets(&proxy_ctx, hwm, proxy_max_msg_bytes(args))
            .and_then(|mut s| s.attach(&[Attach::Connect(ep)], &[Attach::Bind("tcp://127.0.0.1:*".into())]).map(|()| s))
            .map_err(|(context, source)| AgentError::Fatal {
                role: "lvc-bench".into(),
                message: format!("zmq error while {context}: {source}"),
            })?;
    let back = endpoints.iter().find(|e| e.0 == "backend").map(|e| e.2.clone()).unwrap_or_default();
    let control = proxy_ctx.socket(zmq::PAIR).map_err(berr("making the control PAIR"))?;
    let steer = proxy_ctx.socket(zmq::PAIR).map_err(berr("making the steering PAIR"))?;
    let control_ep = format!("inproc://plain-proxy-control-{}", std::process::id());
    control.bind(&control_ep).map_err(berr("binding the control PAIR"))?;
    steer.connect(&control_ep).map_err(berr("connecting the steering PAIR"))?;
    let proxy = PlainProxy { frontend, backend, control };
    let spec = RunSpec { core: None, idle: IdleStrategy::Block { wait_us: 100_000 } };
    let handle = Runner::start(spec, StopFlag::new(), proxy)?;
    let m = measure(p, &sub_ctx, &back, hwm, args, stop);
    // Ends the proxy whether or not the measurement succeeded.
    let sent = steer.send("TERMINATE", 0).map_err(berr("stopping the plain proxy"));
    let joined = handle.join();
    sent?;
    joined?;
    m.map(|(m, _ends)| m)
}

/// One path's measurement in one run.
#[derive(Debug, Clone, Serialize)]
pub struct LvcRun {
    /// The run it belongs to, from 1.
    pub run: usize,
    /// The path measured: `direct`, `plain-proxy` or `lvc`.
    pub subscriber: &'static str,
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub msgs_per_sec: f64,
    pub elapsed_s: f64,
    /// `lvc`: CPU ns per message of the LVC's thread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ns_per_msg: Option<f64>,
    /// `lvc`: the symbols' topics in its cache at the end (the bench's readiness probe, which
    /// it caches too, left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_topics: Option<u64>,
    /// False when any path of this run lost messages (or timed out): the run is then no
    /// result, and none of its paths is in the medians.
    pub in_medians: bool,
}

/// One path's medians over the runs that are results.
#[derive(Debug, Clone, Serialize)]
pub struct LvcMedians {
    pub subscriber: &'static str,
    pub msgs_per_sec: f64,
    /// `lvc`: CPU ns per message of the LVC's thread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ns_per_msg: Option<f64>,
}

/// `mdsub lvc-bench`'s result: the common envelope with one run entry per path and run, medians
/// per path, and the ratios `lvc / plain-proxy` (the cache's own cost) and `plain-proxy / direct`
/// (the hop's), each the median of the per-run ratios; `interrupted` and `runs_completed` added.
pub type LvcResult = Results<LvcRun, LvcMedians, f64, Completed>;

/// Run the comparison: one line per run and the medians said through `lines`, the whole as
/// the result. With no run that is a result, the result carries `error` and no medians.
/// `stop` (Ctrl-C) ends it early: the result is then of the whole runs before it (`interrupted`,
/// `runs_completed`; the paths a cut run measured are left out), and `None` when no run was whole.
pub fn run(args: LvcBenchConfig, lines: Lines, stop: &StopFlag) -> Result<Option<LvcResult>, AgentError> {
    args.check().map_err(|message| AgentError::Fatal { role: "lvc-bench".into(), message })?;
    let frame_bytes = frame_len(b"B00000", args.payload_bytes);
    let hwm = i32::try_from(args.messages.saturating_add(10_000)).unwrap_or(i32::MAX);
    let machine = Machine::here();
    let runs = args.runs.max(1);
    lines.say(format_args!("lvc-bench  {machine}"));
    lines.say(format_args!(
        "lvc-bench: {} messages of {}-byte payloads ({frame_bytes}-byte frames: {} topics, header {HEADER_LEN} B), \
         TCP loopback, SNDHWM=RCVHWM={hwm} on every socket (lossless), {runs} run(s) of direct, plain proxy, lvc",
        args.messages, args.payload_bytes, args.topics,
    ));
    let limits = cache_limits(&args);
    let settings = serde_json::json!({
        "count": args.messages,
        "payload_bytes": args.payload_bytes,
        "frame_bytes": frame_bytes,
        "symbols": args.topics,
        "runs": runs,
        "timeout_s": args.timeout.as_secs_f64(),
        "idle": args.idle,
        "transport": "tcp loopback",
        "hwm_msgs": hwm,
        "publisher": "PUB, SNDHWM above the count (lossless)",
        "cache_max_topics": limits.max_topics,
        "cache_max_bytes": limits.max_bytes,
    });
    let mut all: Vec<LvcRun> = Vec::new();
    let (mut d, mut p, mut l, mut lp, mut pd, mut cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Whole runs measured; the paths the stop's run had measured before it (left out).
    let (mut completed, mut left_out) = (0, 0);
    for run in 1..=runs {
        // A path the stop cut short measured a part of its count: no measurement.
        if stop.is_stopped() {
            break;
        }
        let md = direct(&args, hwm, stop)?;
        if stop.is_stopped() {
            break;
        }
        let mp = via_plain_proxy(&args, hwm, stop)?;
        if stop.is_stopped() {
            left_out = 1;
            break;
        }
        let (ml, cached_topics, stats) = via_lvc(&args, hwm, stop)?;
        if stop.is_stopped() {
            left_out = 2;
            break;
        }
        completed = run;
        let lvc_plain = ml.msgs_per_s() / mp.msgs_per_s().max(1e-9);
        let plain_direct = mp.msgs_per_s() / md.msgs_per_s().max(1e-9);
        lines.say(format_args!(
            "run {run}: direct {:.3} M msg/s ({}/{}), plain proxy {:.3} M msg/s ({}/{}), lvc {:.3} M msg/s \
             ({}/{}, {} cached topics, lvc thread {:.0} CPU ns/msg); lvc/plain {lvc_plain:.2}, \
             plain/direct {plain_direct:.2}",
            md.msgs_per_s() / 1e6,
            md.delivered,
            md.sent,
            mp.msgs_per_s() / 1e6,
            mp.delivered,
            mp.sent,
            ml.msgs_per_s() / 1e6,
            ml.delivered,
            ml.sent,
            cached_topics,
            stats.cpu_ns_per_item()
        ));
        let whole = [md, mp, ml].iter().all(|m| m.delivered >= m.sent);
        for (subscriber, m) in [("direct", md), ("plain-proxy", mp), ("lvc", ml)] {
            let lvc = subscriber == "lvc";
            all.push(LvcRun {
                run,
                subscriber,
                sent: m.sent,
                delivered: m.delivered,
                lost: m.sent.saturating_sub(m.delivered),
                msgs_per_sec: m.msgs_per_s(),
                elapsed_s: m.elapsed.as_secs_f64(),
                cpu_ns_per_msg: lvc.then(|| stats.cpu_ns_per_item()),
                cached_topics: lvc.then_some(cached_topics),
                in_medians: whole,
            });
        }
        if !whole {
            lines.say(format_args!("run {run}: LOSS — this run is not a result"));
            continue;
        }
        d.push(md.msgs_per_s());
        p.push(mp.msgs_per_s());
        l.push(ml.msgs_per_s());
        lp.push(lvc_plain);
        pd.push(plain_direct);
        cpu.push(stats.cpu_ns_per_item());
    }
    if completed == 0 {
        return Ok(None);
    }
    let completed = Completed::of(completed, runs);
    let mut result = LvcResult {
        kind: "lvc-bench",
        machine,
        settings,
        runs: all,
        medians: Vec::new(),
        ratios: Vec::new(),
        extra: completed,
        error: None,
    };
    if let Some(line) = completed.said(runs, left_out) {
        lines.say(format_args!("{line}"));
    }
    let whole = completed.runs_completed;
    // The median is of the runs that are results; with none there is no result to give.
    if d.is_empty() {
        result.error = Some(format!(
            "none of the {whole} run(s) is a result: every one lost messages (see the LOSS lines); \
             no median is given (a --timeout too short for --count gives up on measurements)"
        ));
        return Ok(Some(result));
    }
    let with_loss = whole - d.len();
    if with_loss > 0 {
        lines.say(format_args!("{with_loss} run(s) with loss left out of the medians"));
    }
    let (d, p, l, lp, pd, cpu) = (median(d), median(p), median(l), median(lp), median(pd), median(cpu));
    lines.say(format_args!(
        "median: direct {:.3} M msg/s, plain proxy {:.3} M msg/s, lvc {:.3} M msg/s, \
         lvc/plain {lp:.2}, plain/direct {pd:.2} (medians of per-run ratios), lvc thread {cpu:.0} CPU ns/msg",
        d / 1e6,
        p / 1e6,
        l / 1e6,
    ));
    result.medians = vec![
        LvcMedians { subscriber: "direct", msgs_per_sec: d, cpu_ns_per_msg: None },
        LvcMedians { subscriber: "plain-proxy", msgs_per_sec: p, cpu_ns_per_msg: None },
        LvcMedians { subscriber: "lvc", msgs_per_sec: l, cpu_ns_per_msg: Some(cpu) },
    ];
    result.ratios = vec![("lvc / plain-proxy".into(), lp), ("plain-proxy / direct".into(), pd)];
    Ok(Some(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvc::cache::{LastValueCache, Update};

    fn config(topics: usize, payload_bytes: usize) -> LvcBenchConfig {
        LvcBenchConfig {
            messages: 1,
            payload_bytes,
            topics,
            runs: 1,
            timeout: Duration::from_secs(1),
            idle: IdleStrategy::default(),
        }
    }

    /// Every topic the bench sends, and its probe, is cached: past the default 100k topics
    /// too. Before, the LVC kept its default limits, and `--symbols 200k` left half the topics
    /// uncached (measured: 100000 cached topics, `cache_full=200001`).
    #[test]
    fn the_lvc_measured_caches_every_topic_sent() {
        assert_eq!(cache_limits(&config(1000, 100)), CacheLimits::default(), "the default where it holds them");
        let args = config(100_000, 100);
        let mut cache = LastValueCache::new(cache_limits(&args));
        let probe = encode(PROBE, &bench_header(Kind::Heartbeat), b"");
        assert_eq!(cache.update(&[&probe[..]]), Update::Inserted);
        for f in frames(args.payload_bytes, args.topics) {
            assert_eq!(cache.update(&[&f[..]]), Update::Inserted);
        }
        assert_eq!(cache.topics(), 100_001);
        // The largest topic count and the largest frames a check passes, by the arithmetic.
        for (topics, payload) in [(crate::feed::MAX_SYMBOLS, 192), (15, crate::feed::MAX_PAYLOAD_BYTES)] {
            let args = config(topics, payload);
            assert_eq!(args.check(), Ok(()), "{topics} × {payload}");
            let l = cache_limits(&args);
            assert!(l.max_topics > topics, "{topics}: {l:?}");
            let footprint = (topics + 1) * (2 * 9 + args.max_frame_bytes() + 4);
            assert!(l.max_bytes >= footprint, "{topics} × {payload}: {l:?} under {footprint}");
        }
    }
}
