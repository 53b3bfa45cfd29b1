//! The worker agent (`workerN`): PULLs batches (or single frames) from the
//! readers, runs the [`Handler`] on each message and
//! records per-stage latency (the end time is read after each message, or,
//! for a handler that does nothing per message, is the batch's take time); ships its histograms to the metrics collector
//! once per interval over a crossbeam channel (never blocking on it).
//!
//! Histograms are kept per shard (the batch says which shard's reader built
//! it; frames handed over one by one from several shards go to an extra
//! `unattributed` slot) and double-buffered: the worker sends its filled set and goes
//! on with an empty spare; the collector adds the set up, resets it and hands
//! it back. So shipping copies and allocates nothing, and when the collector
//! is behind the worker keeps accumulating and ships later (nothing is lost).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender, TrySendError};
use crossbeam::utils::CachePadded;

use super::batch::BatchIter;
use super::handler::Handler;
use crate::agent::{Agent, AgentError, Step, StopFlag};
use crate::clock;
use crate::metrics::collector::WorkerReport;
use crate::metrics::StageHistograms;
use crate::snail::{Action, Guard};
use crate::wire;

/// Live counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub handled: CachePadded<AtomicU64>,
    /// Bytes of the frames handled.
    pub handled_bytes: AtomicU64,
    /// Hand-off messages that were not valid batches (a bug if ever non-zero).
    pub malformed: AtomicU64,
    /// Metric intervals that could not be shipped (collector gone).
    pub metrics_dropped: AtomicU64,
    /// Intervals shipped later because the collector was behind.
    pub metrics_deferred: AtomicU64,
    /// When the last message was handled (ns since the epoch; 0 before any).
    pub last_done_ns: AtomicU64,
}

pub struct WorkerAgent {
    role: String,
    index: usize,
    pull: zmq::Socket,
    msg: zmq::Message,
    handler: Box<dyn Handler>,
    /// One set per shard, then the unattributed slot.
    stages: Vec<StageHistograms>,
    readers: usize,
    ends_seen: usize,
    metrics: Sender<WorkerReport>,
    spare: Option<Vec<StageHistograms>>,
    spares: Receiver<Vec<StageHistograms>>,
    /// The metrics interval, shared with the collector (a live setting).
    interval_ns: Arc<AtomicU64>,
    last_done_ns: u64,
    last_report_ns: u64,
    handled: u64,
    handled_bytes: u64,
    counters: Arc<WorkerCounters>,
    /// The snail's lag check where messages are handled (the handler is behind).
    guard: Guard,
    croaked: bool,
    stop: StopFlag,
}

impl WorkerAgent {
    /// Bind a PULL at `endpoint` in the fan-out context.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        fanout: &zmq::Context,
        endpoint: &str,
        handoff_hwm_msgs: i32,
        readers: usize,
        handler: Box<dyn Handler>,
        metrics: Sender<WorkerReport>,
        spares: Receiver<Vec<StageHistograms>>,
        interval_ns: Arc<AtomicU64>,
        counters: Arc<WorkerCounters>,
        guard: Guard,
        stop: StopFlag,
    ) -> Result<Self, AgentError> {
        let role = format!("worker{index}");
        let zerr = |context| {
            let role = role.clone();
            move |source| AgentError::Zmq { role, context, source }
        };
        let pull = fanout.socket(zmq::PULL).map_err(zerr("creating the PULL"))?;
        pull.set_rcvhwm(handoff_hwm_msgs).map_err(zerr("setting RCVHWM"))?;
        pull.bind(endpoint).map_err(zerr("binding the PULL"))?;
        Ok(WorkerAgent {
            role,
            index,
            pull,
            msg: zmq::Message::new(),
            handler,
            stages: crate::metrics::shard_sets(readers),
            readers,
            ends_seen: 0,
            metrics,
            spare: Some(crate::metrics::shard_sets(readers)),
            spares,
            interval_ns,
            last_done_ns: 0,
            last_report_ns: clock::realtime_ns(),
            handled: 0,
            handled_bytes: 0,
            counters,
            guard,
            croaked: false,
            stop,
        })
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn handle(
        handler: &mut dyn Handler,
        stages: &mut StageHistograms,
        last_done_ns: &mut u64,
        guard: &mut Guard,
        croaked: &mut bool,
        frame: &[u8],
        recv_ns: u64,
        take_ns: u64,
        timed: bool,
    ) -> usize {
        // The reader checked this frame already; the worker counts bytes handled.
        let Ok(view) = wire::decode(frame) else { return 0 };
        // Policy `rest`: a resting worker drops its backlog (judged at the batch's take time).
        if guard.skip(&view.header, take_ns) {
            return 0;
        }
        handler.on_message(&view);
        // A handler that does nothing ends when its message was taken.
        let done = if timed { clock::realtime_ns() } else { take_ns };
        *last_done_ns = done;
        // The snail judges the lag at the handler's end, with the clock read just made.
        if view.header.flags & wire::FLAG_FROM_CACHE == 0 {
            *croaked |= guard.on_message(&view.header, view.topic, done) == Action::Croak;
        }
        // The queue stage (take − receive) is recorded by the caller, once per run of equal values.
        let sent = view.header.send_time_ns;
        stages.record_wire_total(recv_ns.saturating_sub(sent), done.saturating_sub(sent));
        frame.len()
    }

    /// Ship the histograms recorded since the last report. `last`: the final report (blocks,
    /// carries the handler's counters).
    fn ship(&mut self, last: bool) {
        if self.stages.iter().all(|s| s.count() == 0) && !last {
            return;
        }
        while let Ok(h) = self.spares.try_recv() {
            self.spare = Some(h);
        }
        let handler_counters = if last { self.handler.counters() } else { Vec::new() };
        let handler_summary = if last { self.handler.summary() } else { Vec::new() };
        let stages = match self.spare.take() {
            Some(spare) => std::mem::replace(&mut self.stages, spare),
            None if last => std::mem::take(&mut self.stages),
            None => {
                // The collector has not handed a set back yet: keep counting.
                self.counters.metrics_deferred.fetch_add(1, Relaxed);
                return;
            }
        };
        let report = WorkerReport { worker: self.index, stages, handler_counters, handler_summary };
        let failed = if last {
            self.metrics.send(report).err().map(|e| e.0)
        } else {
            match self.metrics.try_send(report) {
                Ok(()) => None,
                Err(TrySendError::Full(r)) => {
                    // Take the filled set back and ship it next interval.
                    self.counters.metrics_deferred.fetch_add(1, Relaxed);
                    self.spare = Some(std::mem::replace(&mut self.stages, r.stages));
                    return;
                }
                Err(TrySendError::Disconnected(r)) => Some(r),
            }
        };
        if failed.is_some() {
            self.counters.metrics_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// How often a worker ships its histograms to the collector, for a metrics
/// interval of `interval_ns`: a tenth of it, between 1 ms and 100 ms.
///
/// The collector closes its intervals on its own clock. Were the workers to
/// report once per interval too, the two periods would slide past each other
/// and an interval would now and then hold no report (a p99 of 0 on
/// `/metrics`) and the next one two. Ten or more reports per interval put
/// every message in the interval it was handled in, give or take one report
/// period (≤ 10 % of the interval).
pub fn report_period_ns(interval_ns: u64) -> u64 {
    (interval_ns / 10).clamp(1_000_000, 100_000_000)
}

impl Agent for WorkerAgent {
    fn role(&self) -> &str {
        &self.role
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let mut n = 0;
        let mut bytes_done = 0;
        for _ in 0..64 {
            match self.pull.recv(&mut self.msg, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(source) => {
                    return Err(AgentError::Zmq { role: self.role.clone(), context: "receiving a hand-off", source })
                }
            }
            let take_ns = clock::realtime_ns();
            let bytes: &[u8] = &self.msg;
            if bytes.is_empty() {
                self.ends_seen += 1;
                continue;
            }
            let it = BatchIter::new(bytes);
            // The shard's slot; frames handed over one by one carry no shard:
            // with one reader it is shard 0, with several the unattributed slot.
            let slot = match &it {
                Some(it) => (it.shard() as usize).min(self.readers),
                None if self.readers == 1 => 0,
                None => self.readers,
            };
            if self.readers > 1 {
                // Name the shard in a scream (the unattributed slot: not known).
                self.guard.serving((slot < self.readers).then_some(slot));
            }
            let (handler, last_done) = (self.handler.as_mut(), &mut self.last_done_ns);
            let timed = handler.takes_time();
            let stages = &mut self.stages[slot];
            let (guard, croaked) = (&mut self.guard, &mut self.croaked);
            // Frames of one reader round share their receive time, so the queue
            // stage is one value per batch: recorded per run of equal values.
            let mut queue_run = (0u64, 0u64);
            let mut handle = |frame: &[u8], recv_ns: u64| {
                if *croaked {
                    return;
                }
                let b = Self::handle(handler, stages, last_done, guard, croaked, frame, recv_ns, take_ns, timed);
                if b > 0 {
                    let queue_ns = take_ns.saturating_sub(recv_ns);
                    if queue_ns != queue_run.0 {
                        stages.record_queue_n(queue_run.0, queue_run.1);
                        queue_run = (queue_ns, 0);
                    }
                    queue_run.1 += 1;
                }
                n += (b > 0) as usize;
                bytes_done += b;
                stages.bytes += b as u64;
            };
            match it {
                Some(mut it) => {
                    for (recv_ns, frame) in &mut it {
                        handle(frame, recv_ns);
                    }
                    if it.malformed() {
                        self.counters.malformed.fetch_add(1, Relaxed);
                    }
                }
                // A frame handed over as is: the reader's receive time is not
                // carried, so the wire stage includes the queue stage.
                None => handle(bytes, take_ns),
            }
            stages.record_queue_n(queue_run.0, queue_run.1);
            if self.croaked {
                break;
            }
        }
        if n > 0 {
            self.handled += n as u64;
            self.handled_bytes += bytes_done as u64;
            self.counters.handled.store(self.handled, Relaxed);
            self.counters.handled_bytes.store(self.handled_bytes, Relaxed);
            self.counters.last_done_ns.store(self.last_done_ns, Relaxed);
        }
        self.guard.refresh();
        if bytes_done > 0 || self.guard.resting() {
            self.guard.publish();
        }
        if self.croaked {
            // The board holds the scream; stopping is the engine's way out.
            self.stop.stop();
            return Ok(Step::Worked(n.max(1)));
        }
        let now = clock::realtime_ns();
        if now.saturating_sub(self.last_report_ns) >= report_period_ns(self.interval_ns.load(Relaxed)) {
            self.ship(false);
            self.last_report_ns = now;
        }
        if self.ends_seen >= self.readers {
            return Ok(Step::Finished);
        }
        Ok(Step::Worked(n))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let _ = crate::zmqx::wait_ready(&self.pull, zmq::POLLIN, timeout);
    }

    fn on_close(&mut self) {
        self.guard.publish();
        self.ship(true);
    }
}
