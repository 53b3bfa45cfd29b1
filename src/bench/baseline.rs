//! The benchmark baseline: a plain single-thread SUB reader on the same
//! libzmq and settings as the engine, doing only what any correct subscriber
//! must (decode, sequence checks, latency timestamp) and no hand-off; with
//! a handler, it runs the same handler as the engine's workers inline.

use std::time::{Duration, Instant};

use crate::agent::{Agent, AgentError, AgentStats, Runner, Step};
use crate::clock;
use crate::engine::handler::{Handler, HandlerSpec};
use crate::engine::sequence::SequenceTracker;
use crate::metrics::{latency_ns, RunReport, SequenceCounts, StageHistograms, ThreadAccount};
use crate::security::ClientKeys;
use crate::wire::{self, Kind, DROP_REASONS, DROP_REASON_NAMES};

/// The baseline subscriber agent (`baseline`): connected and subscribed;
/// run it with the [`Runner`], then [`Baseline::report`].
pub struct Baseline {
    _ctx: zmq::Context,
    sub: zmq::Socket,
    expect_eos: usize,
    msg: zmq::Message,
    tracker: SequenceTracker,
    stages: StageHistograms,
    bad: [u64; DROP_REASONS],
    delivered: u64,
    bytes: u64,
    eos: usize,
    first_ns: u64,
    last_ns: u64,
    start: Instant,
    timeout: Duration,
    timed_out: bool,
    handler: Option<Box<dyn Handler>>,
    /// Most frames per drain round (one clock read each, as the engine's reader: and again for
    /// a frame sent after it).
    batch_max: usize,
    stamp: clock::PassStamp,
    /// Linux thread ids of its context's libzmq threads (named `baseline-io`).
    io_tids: Vec<u32>,
}

/// The name of the baseline's libzmq I/O thread (and its reaper).
pub const IO_THREAD: &str = "baseline-io";

impl Baseline {
    /// Connect to every endpoint (presenting `keys` to publishers that demand
    /// CURVE) and subscribe to everything; the run ends after every
    /// publisher's end of stream, or after `timeout`.
    /// Its context is made on a thread named [`IO_THREAD`], so libzmq's
    /// I/O thread carries that name and its CPU time can be counted: a plain
    /// SUB costs its own thread plus that one, like the engine's shards.
    pub fn connect(
        endpoints: &[String],
        rcvhwm_msgs: i32,
        keys: Option<&ClientKeys>,
        timeout: Duration,
    ) -> anyhow::Result<Baseline> {
        let before = clock::task_ids_named(IO_THREAD);
        let eps = endpoints.to_vec();
        let keys = keys.cloned();
        let (ctx, sub) = Runner::task(IO_THREAD, None, move || -> zmq::Result<(zmq::Context, zmq::Socket)> {
            let ctx = zmq::Context::new();
            let sub = ctx.socket(zmq::SUB)?;
            sub.set_rcvhwm(rcvhwm_msgs)?;
            sub.set_linger(0)?;
            ClientKeys::apply_if(keys.as_ref(), &sub)?;
            sub.set_subscribe(b"")?;
            for ep in &eps {
                sub.connect(ep)?;
            }
            Ok((ctx, sub))
        })?
        .join()??;
        let io_tids = clock::task_ids_named(IO_THREAD).into_iter().filter(|t| !before.contains(t)).collect();
        Ok(Baseline {
            _ctx: ctx,
            sub,
            expect_eos: endpoints.len(),
            msg: zmq::Message::new(),
            tracker: SequenceTracker::new(true),
            stages: StageHistograms::default(),
            bad: [0; DROP_REASONS],
            delivered: 0,
            bytes: 0,
            eos: 0,
            first_ns: 0,
            last_ns: 0,
            start: Instant::now(),
            timeout,
            timed_out: false,
            handler: None,
            batch_max: crate::engine::defaults::BATCH_MAX,
            stamp: clock::PassStamp::default(),
            io_tids,
        })
    }

    /// Drain at most `batch_max` frames per round (the engine's setting), reading the clock once each.
    pub fn with_batch_max(mut self, batch_max: usize) -> Self {
        self.batch_max = batch_max.max(1);
        self
    }

    /// Run `spec`'s handler on every accepted message, inline (latency then
    /// ends when it finished, as in the engine's workers).
    pub fn with_handler(mut self, spec: HandlerSpec) -> Self {
        self.handler = (spec != HandlerSpec::Latency).then(|| spec.build());
        self
    }

    /// Check and count the frame in `msg`, stamped as the engine's reader stamps it.
    #[inline]
    fn on_frame(&mut self) {
        let decoded = wire::decode(&self.msg);
        let recv_ns = self.stamp.of(decoded.as_ref().map_or(0, |v| v.header.send_time_ns), &clock::Realtime);
        match decoded {
            Err(e) => self.bad[e.reason()] += 1,
            Ok(v) => match v.header.kind {
                Kind::Data => {
                    if self.tracker.on_data(&v.header, v.topic).accept {
                        if self.first_ns == 0 {
                            self.first_ns = recv_ns;
                        }
                        let lat = latency_ns(v.header.send_time_ns, recv_ns);
                        let (total, done_ns) = match self.handler.as_mut() {
                            Some(h) => {
                                h.on_message(&v);
                                let done_ns = clock::realtime_ns();
                                (latency_ns(v.header.send_time_ns, done_ns), done_ns)
                            }
                            None => (lat, recv_ns),
                        };
                        // No queue stage: the baseline has no hand-off.
                        self.stages.record_wire_total(lat, total);
                        // As the engine's span ends: when the last message was handled.
                        self.last_ns = done_ns;
                        self.delivered += 1;
                        self.bytes += self.msg.len() as u64;
                    }
                }
                _ if v.header.flags & wire::FLAG_FROM_CACHE != 0 => {}
                Kind::Heartbeat => {}
                Kind::EndOfStream => {
                    let sent = v.payload.try_into().map(u64::from_le_bytes).unwrap_or(v.header.stream_seq);
                    self.eos += self.tracker.on_end_of_stream(&v.header, sent) as usize;
                }
            },
        }
    }

    /// Per-thread accounts of the run: the baseline's own thread (from its
    /// runner's counters, `agent`) and its libzmq I/O thread, per delivered
    /// message. Call before the baseline is dropped (its I/O thread ends with it).
    pub fn threads(&self, agent: &AgentStats) -> Vec<ThreadAccount> {
        let io: u64 = self.io_tids.iter().filter_map(|&t| clock::task_cpu_ns(t)).sum();
        vec![
            ThreadAccount::new(&agent.role, self.delivered, agent.cpu_ns, agent.wall_ns, agent.blocked_ns),
            ThreadAccount::new(IO_THREAD, self.delivered, io, agent.wall_ns, 0),
        ]
    }

    /// The report of the run (call after the agent ended).
    pub fn report(&self) -> RunReport {
        let interrupted = self.timed_out || self.eos < self.expect_eos;
        let (first_ns, last_ns) = (self.first_ns, self.last_ns);
        // From the first data message received to the last one handled, like the engine.
        let span_ns = last_ns.saturating_sub(first_ns);
        let secs = if span_ns > 0 { span_ns as f64 / 1e9 } else { self.start.elapsed().as_secs_f64() };
        let secs = secs.max(1e-9);
        // The sessions still open counted by their last sequence at close (`on_close`).
        let t = self.tracker.totals();
        // Complete when every publisher's end of stream arrived; the baseline
        // takes every topic.
        let complete = !interrupted && t.eos_sessions >= self.expect_eos as u64;
        let sent = (t.eos_sessions > 0).then_some(t.sent());
        // A message dropped for order arrived late: not lost.
        let loss = crate::metrics::loss_of(t.sent(), t.accepted, t.reordered);
        let beyond_sent = loss.err().filter(|_| t.eos_sessions > 0).unwrap_or(0);
        let lost = complete.then(|| loss.ok()).flatten();
        let loss_basis = match (complete, beyond_sent) {
            (true, 0) => "end-of-stream counts".to_string(),
            (true, n) => crate::metrics::beyond_sent_basis(t.sent(), n),
            (false, _) => "unknown: end of stream not seen".to_string(),
        };
        let msgs_per_sec = crate::metrics::span_rate(self.delivered, span_ns, secs);
        let mean_bytes = if self.delivered > 0 { self.bytes as f64 / self.delivered as f64 } else { 0.0 };
        let mut latency = self.stages.summary();
        latency.remove("queue");
        RunReport {
            subscriber: "baseline".into(),
            duration_s: secs,
            sent,
            unended_sessions: t.unended_sessions,
            unended_sent: t.unended_sent,
            delivered: self.delivered,
            lost,
            beyond_sent,
            loss_basis,
            counts: SequenceCounts {
                before_first: t.before_first,
                gaps: t.gaps,
                duplicates: t.duplicates,
                reordered: t.reordered,
                restarts: t.restarts,
                id_conflicts: t.id_conflicts,
                vanished: t.vanished,
                vanished_back: t.vanished_back,
                bad_frames: (0..DROP_REASONS).map(|r| (DROP_REASON_NAMES[r].to_string(), self.bad[r])).collect(),
            },
            msgs_per_sec,
            mb_per_sec: msgs_per_sec * mean_bytes / 1e6,
            latency,
            interrupted,
            metrics_dropped: 0,
            handoff_malformed: 0,
            handler: self
                .handler
                .as_ref()
                .map(|h| h.counters().into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                .unwrap_or_default(),
            handler_summary: self.handler.as_ref().map(|h| h.summary()).unwrap_or_default(),
            agents: Vec::new(),
            snail: None,
            ..Default::default()
        }
    }
}

impl Agent for Baseline {
    fn role(&self) -> &str {
        "baseline"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        if self.eos >= self.expect_eos {
            return Ok(Step::Finished(0));
        }
        let mut n = 0;
        // One clock read per drain round (and one more per frame sent after it), as the
        // engine's reader does: the baseline pays what the engine pays for its timestamps.
        self.stamp.start();
        while n < self.batch_max {
            match self.sub.recv(&mut self.msg, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(source) => return Err(AgentError::Zmq { role: "baseline".into(), context: "receiving", source }),
            }
            n += 1;
            self.on_frame();
        }
        if n == 0 && self.start.elapsed() > self.timeout {
            self.timed_out = true;
            return Ok(Step::Finished(0));
        }
        Ok(Step::Worked(n))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let _ = crate::zmqx::wait_ready(&self.sub, zmq::POLLIN, timeout);
    }

    /// The sessions still open count as unended by their last sequence, as the engine's
    /// readers count them ([`SequenceTracker::close`]).
    fn on_close(&mut self) {
        self.tracker.close();
    }
}
