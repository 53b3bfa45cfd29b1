//! `mdsub lvc-bench`: throughput through the Last Value Cache proxy vs a plain proxy and direct PUB→SUB.
//!
//! Three paths in every run, lossless (every SNDHWM and RCVHWM set explicitly
//! to more than the messages sent): PUB → SUB direct; PUB → plain libzmq
//! proxy (`zmq_proxy_steerable`, XSUB/XPUB with the LVC's socket options, no
//! cache) → SUB; and PUB → LVC (the guide's Last Value Cache, chapter 5) →
//! SUB. The ratios LVC / plain proxy (the cache's own cost) and plain proxy /
//! direct (the hop's cost) are reported per run and as medians.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent::{Agent, AgentError, AgentStats, IdleStrategy, RunSpec, Runner, Step, StopFlag};
use crate::bench::median;
use crate::lvc::cache::CacheLimits;
use crate::lvc::proxy::LvcReport;
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
            let topic = format!("B{i:05}");
            encode(topic.as_bytes(), &bench_header(Kind::Data), &vec![0x5a; payload_bytes])
        })
        .collect()
}

/// Publish `messages` frames on `publisher` once `ready` is set (after probes),
/// while a SUB on `sub_endpoint` counts them. The publisher comes back (None if its
/// thread failed), so a proxy in between can stop before it closes: a publisher gone
/// first is a lost link in the proxy's log.
fn measure(
    publisher: zmq::Socket,
    sub_ctx: &zmq::Context,
    sub_endpoint: &str,
    hwm: i32,
    args: &LvcBenchConfig,
) -> Result<(Measurement, Option<zmq::Socket>), AgentError> {
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
    let pub_thread = Runner::task("bench-pub", None, move || -> zmq::Result<zmq::Socket> {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !ready_p.load(Ordering::Acquire) && Instant::now() < give_up {
            publisher.send(&probe[..], 0)?;
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Ok(mut s) = start_p.lock() {
            *s = Some(Instant::now());
        }
        for i in 0..messages {
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
    while delivered < messages && Instant::now() < deadline {
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
    Ok((Measurement { sent: messages, delivered, elapsed: last.saturating_duration_since(started) }, publisher))
}

fn make_pub(ctx: &zmq::Context, hwm: i32) -> Result<(zmq::Socket, String), AgentError> {
    let p = ctx.socket(zmq::PUB).map_err(berr("making the PUB"))?;
    p.set_sndhwm(hwm).map_err(berr("setting SNDHWM"))?;
    let ep = bind_resolved(&p, "tcp://127.0.0.1:*").map_err(berr("binding the PUB"))?;
    Ok((p, ep))
}

fn direct(args: &LvcBenchConfig, hwm: i32) -> Result<Measurement, AgentError> {
    let (pub_ctx, sub_ctx) = (zmq::Context::new(), zmq::Context::new());
    let (p, ep) = make_pub(&pub_ctx, hwm)?;
    measure(p, &sub_ctx, &ep, hwm, args).map(|(m, _)| m)
}

fn via_lvc(args: &LvcBenchConfig, hwm: i32) -> Result<(Measurement, LvcReport, AgentStats), AgentError> {
    let (pub_ctx, lvc_ctx, sub_ctx) = (zmq::Context::new(), zmq::Context::new(), zmq::Context::new());
    let (p, ep) = make_pub(&pub_ctx, hwm)?;
    let config = LvcConfig {
        proxy: ProxyConfig {
            frontend: vec![Attach::Connect(ep)],
            backend: vec![Attach::Bind("tcp://127.0.0.1:*".into())],
            hwm_msgs: hwm,
            max_msg_bytes: 1 << 20,
            idle: args.idle,
            delivery: crate::proxy::Delivery::Lossless,
        },
        limits: CacheLimits::default(),
        answers: crate::lvc::answer::AnswerLimits::default(),
    };
    let proxy = crate::lvc::new_proxy(&lvc_ctx, &config)?;
    let back = proxy.endpoint("backend").unwrap_or_default().to_string();
    let stop = StopFlag::new();
    let handle = Runner::start(RunSpec { core: None, idle: args.idle }, stop.clone(), proxy)?;
    let counters = handle.counters().clone();
    let m = measure(p, &sub_ctx, &back, hwm, args);
    stop.stop();
    let proxy = handle.join()?;
    let stats = counters.snapshot("lvc-proxy");
    let (m, _publisher) = m?; // closed only now, after the proxy
    Ok((m, proxy.report(), stats))
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

fn via_plain_proxy(args: &LvcBenchConfig, hwm: i32) -> Result<Measurement, AgentError> {
    let (pub_ctx, proxy_ctx, sub_ctx) = (zmq::Context::new(), zmq::Context::new(), zmq::Context::new());
    let (p, ep) = make_pub(&pub_ctx, hwm)?;
    let zmqx::ProxySockets { frontend, backend, endpoints } = zmqx::proxy_sockets(&proxy_ctx, hwm, 1 << 20)
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
    let m = measure(p, &sub_ctx, &back, hwm, args);
    // Ends the proxy whether or not the measurement succeeded.
    let sent = steer.send("TERMINATE", 0).map_err(berr("stopping the plain proxy"));
    let joined = handle.join();
    sent?;
    joined?;
    m.map(|(m, _publisher)| m)
}

/// Run the comparison and print one line per measurement and the medians.
pub fn run(args: LvcBenchConfig) -> Result<(), AgentError> {
    let frame_bytes = frame_len(b"B00000", args.payload_bytes);
    let hwm = i32::try_from(args.messages.saturating_add(10_000)).unwrap_or(i32::MAX);
    crate::outln!("lvc-bench  {}", crate::bench::stamp::Machine::here());
    crate::outln!(
        "lvc-bench: {} messages of {}-byte payloads ({frame_bytes}-byte frames: {} topics, header {HEADER_LEN} B), \
         TCP loopback, SNDHWM=RCVHWM={hwm} on every socket (lossless), {} runs of direct, plain proxy, lvc",
        args.messages,
        args.payload_bytes,
        args.topics,
        args.runs
    );
    let (mut d, mut p, mut l, mut lp, mut pd, mut cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=args.runs.max(1) {
        let md = direct(&args, hwm)?;
        let mp = via_plain_proxy(&args, hwm)?;
        let (ml, report, stats) = via_lvc(&args, hwm)?;
        let lvc_plain = ml.msgs_per_s() / mp.msgs_per_s().max(1e-9);
        let plain_direct = mp.msgs_per_s() / md.msgs_per_s().max(1e-9);
        crate::outln!(
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
            report.topics,
            stats.cpu_ns_per_item()
        );
        if md.delivered < md.sent || mp.delivered < mp.sent || ml.delivered < ml.sent {
            crate::outln!("run {run}: LOSS — this run is not a result");
            continue;
        }
        d.push(md.msgs_per_s());
        p.push(mp.msgs_per_s());
        l.push(ml.msgs_per_s());
        lp.push(lvc_plain);
        pd.push(plain_direct);
        cpu.push(stats.cpu_ns_per_item());
    }
    // The median is of the runs that are results; with none there is no result to give.
    if d.is_empty() {
        return Err(AgentError::Fatal {
            role: "medians".into(),
            message: format!(
                "none of the {} run(s) is a result: every one lost messages (see the LOSS lines); \
                 no median is given (a --timeout too short for --count gives up on measurements)",
                args.runs.max(1)
            ),
        });
    }
    let left_out = args.runs.max(1) - d.len();
    if left_out > 0 {
        crate::outln!("{left_out} run(s) with loss left out of the medians");
    }
    crate::outln!(
        "median: direct {:.3} M msg/s, plain proxy {:.3} M msg/s, lvc {:.3} M msg/s, \
         lvc/plain {:.2}, plain/direct {:.2} (medians of per-run ratios), lvc thread {:.0} CPU ns/msg",
        median(d) / 1e6,
        median(p) / 1e6,
        median(l) / 1e6,
        median(lp),
        median(pd),
        median(cpu)
    );
    Ok(())
}
