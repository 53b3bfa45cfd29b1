//! The benchmark baseline: a plain single-thread SUB reader on the same
//! libzmq and settings as the engine, doing only what any correct subscriber
//! must (decode, sequence checks, latency timestamp) and no hand-off.

use std::time::{Duration, Instant};

use crate::agent::StopFlag;
use crate::engine::sequence::SequenceTracker;
use crate::metrics::{RunReport, StageHistograms};
use crate::wire::{self, Kind, DROP_REASONS, DROP_REASON_NAMES};

/// A baseline subscriber connected and subscribed, ready to run.
pub struct Baseline {
    _ctx: zmq::Context,
    sub: zmq::Socket,
    expect_eos: usize,
}

impl Baseline {
    /// Connect to every endpoint and subscribe to everything.
    pub fn connect(endpoints: &[String], rcvhwm_msgs: i32) -> zmq::Result<Baseline> {
        let ctx = zmq::Context::new();
        let sub = ctx.socket(zmq::SUB)?;
        sub.set_rcvhwm(rcvhwm_msgs)?;
        sub.set_linger(0)?;
        sub.set_rcvtimeo(100)?;
        sub.set_subscribe(b"")?;
        for ep in endpoints {
            sub.connect(ep)?;
        }
        Ok(Baseline { _ctx: ctx, sub, expect_eos: endpoints.len() })
    }

    /// Read until every publisher's end of stream, `stop`, or `timeout`.
    pub fn run(self, stop: &StopFlag, timeout: Duration) -> zmq::Result<RunReport> {
        let start = Instant::now();
        let mut msg = zmq::Message::new();
        let mut tracker = SequenceTracker::new(true);
        let mut stages = StageHistograms::default();
        let mut bad = [0u64; DROP_REASONS];
        let (mut delivered, mut bytes, mut eos) = (0u64, 0u64, 0usize);
        let (mut first_ns, mut last_ns) = (0u64, 0u64);
        let mut interrupted = false;
        while eos < self.expect_eos {
            if stop.is_stopped() || start.elapsed() > timeout {
                interrupted = true;
                break;
            }
            match self.sub.recv(&mut msg, 0) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(e),
            }
            let recv_ns = wire::now_ns();
            if first_ns == 0 {
                first_ns = recv_ns;
            }
            match wire::decode(&msg) {
                Err(e) => bad[e.reason()] += 1,
                Ok(v) => match v.header.kind {
                    Kind::Data => {
                        if tracker.on_data(&v.header, v.topic).accept {
                            let lat = recv_ns.saturating_sub(v.header.send_time_ns);
                            stages.record(lat, 0, lat);
                            last_ns = recv_ns;
                            delivered += 1;
                            bytes += msg.len() as u64;
                        }
                    }
                    _ if v.header.flags & wire::FLAG_FROM_CACHE != 0 => {}
                    Kind::Heartbeat => {}
                    Kind::EndOfStream => {
                        let sent = v.payload.try_into().map(u64::from_le_bytes).unwrap_or(v.header.stream_seq);
                        eos += tracker.on_end_of_stream(&v.header, sent) as usize;
                    }
                },
            }
        }
        // From the first frame to the last message, like the engine.
        let secs = if last_ns > first_ns { (last_ns - first_ns) as f64 / 1e9 } else { start.elapsed().as_secs_f64() };
        let secs = secs.max(1e-9);
        let t = tracker.totals();
        // Complete when every publisher's end of stream arrived (the loop's
        // exit condition); the baseline takes every topic.
        let complete = !interrupted && t.eos_sessions >= self.expect_eos as u64;
        let sent = (t.eos_sessions > 0).then_some(t.eos_sent);
        let lost = complete.then(|| t.eos_sent.saturating_sub(t.accepted));
        let mut latency = stages.summary();
        latency.remove("queue");
        Ok(RunReport {
            subscriber: "baseline".into(),
            duration_s: secs,
            sent,
            delivered,
            lost,
            loss_basis: if complete { "end-of-stream counts".into() } else { "unknown: end of stream not seen".into() },
            gaps: t.gaps,
            duplicates: t.duplicates,
            restarts: t.restarts,
            bad_frames: (0..DROP_REASONS).map(|r| (DROP_REASON_NAMES[r].to_string(), bad[r])).collect(),
            msgs_per_sec: delivered as f64 / secs,
            mb_per_sec: bytes as f64 / secs / 1e6,
            latency,
            interrupted,
            metrics_dropped: 0,
            handler: Default::default(),
        })
    }
}
