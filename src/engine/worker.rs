//! The worker agent (`workerN`): PULLs batches (or single frames) from the
//! readers and runs a [`WorkerCore`] on each message. The core is the
//! per-message logic without sockets: it runs the [`Handler`], records
//! per-stage latency (the end time is read after each message, or, for a
//! handler that does nothing per message, is the batch's take time), applies
//! the snail's guard where messages are handled, and ships its histograms to
//! the metrics collector once per report period over a crossbeam channel
//! (never blocking on it). With `handoff = "inline"` a shard's reader owns a
//! core and runs it itself (no worker thread, no inproc hop).
//!
//! Histograms are kept per shard (a batch's header says which shard's reader built
//! it, and a frame handed over on its own comes behind a stamp of its shard and
//! receive time, [`super::batch::stamp`]) and double-buffered: the core sends its filled set and goes
//! on with an empty spare; the collector adds the set up, resets it and hands
//! it back. So shipping copies and allocates nothing, and when the collector
//! is behind the core keeps accumulating and ships later (nothing is lost).
//!
//! The wire and total stages are counted per message into a [`StageTally`] per shard (plain
//! counts in the histograms' layout; recording into a histogram cost ~60 instructions a
//! value, perf37) and added into the shard's set before every shipping: whatever reads a set,
//! the collector, its interval logs and the final report, sees every message in it.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender, TrySendError};
use crossbeam::utils::CachePadded;

use super::batch::{self, BatchIter};
use super::handler::{Handler, REFUSAL_REASONS};
use crate::agent::{Agent, AgentError, Step, StopFlag};
use crate::clock::{self, Clock, Realtime};
use crate::metrics::collector::WorkerReport;
use crate::metrics::tally::StageTally;
use crate::metrics::{latency_ns, StageHistograms};
use crate::snail::{Action, Guard};
use crate::wire::{self, FrameView};

/// Live counters of one worker (or of a reader's inline core).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub handled: CachePadded<AtomicU64>,
    /// Bytes of the frames handled.
    pub handled_bytes: AtomicU64,
    /// Hand-off messages that were not valid batches, and handed-off frames that did not decode
    /// again (a bug if ever non-zero: the reader checked them).
    pub malformed: AtomicU64,
    /// Messages handed to this core that its resting guard skipped (policy `rest`): dropped on
    /// purpose, so counted as lost, never as left unhandled at a stop.
    pub rested: AtomicU64,
    /// Metric intervals that could not be shipped (collector gone).
    pub metrics_dropped: AtomicU64,
    /// Intervals shipped later because the collector was behind.
    pub metrics_deferred: AtomicU64,
    /// When the last message was handled (ns since the epoch; 0 before any).
    pub last_done_ns: AtomicU64,
    /// What the handler refused, by reason ([`REFUSAL_REASONS`]), as of the last report period.
    pub refused: [AtomicU64; REFUSAL_REASONS.len()],
}

/// Where a core's histograms go: the collector's channel, the channel that
/// hands emptied sets back, and the metrics interval (a live setting).
pub struct MetricsLink {
    pub reports: Sender<WorkerReport>,
    pub spares: Receiver<Vec<StageHistograms>>,
    pub interval_ns: Arc<AtomicU64>,
}

/// The per-message logic of a worker, without sockets: handler, latency
/// stages, the snail's guard (optional: an inline core's shard is judged by
/// its reader's checks) and the double-buffered shipping of histograms.
/// Driven with `(frame, recv_ns, take_ns)` per message and `now_ns` per
/// round; it reads its clock `C` only for a handler's end time.
pub struct WorkerCore<C: Clock = Realtime> {
    index: usize,
    /// Who says the handler's refusal lines: `workerN`, or the reader that runs the core inline.
    site: String,
    clock: C,
    handler: Box<dyn Handler>,
    /// The handler takes time per message (its end time is read after it).
    timed: bool,
    /// One set per shard, without the wire and total stages in `tallies` yet.
    stages: Vec<StageHistograms>,
    /// Per shard, the wire and total stages since the last shipping: added into `stages` by
    /// [`WorkerCore::fold_tallies`] before they go (their counts out of bounds are in `stages`).
    tallies: Vec<StageTally>,
    shards: usize,
    /// The slot of the messages being handled.
    slot: usize,
    /// Messages of one round share their queue time: recorded per run of equal values.
    queue_run: (i64, u64),
    link: MetricsLink,
    spare: Option<Vec<StageHistograms>>,
    last_done_ns: u64,
    last_report_ns: u64,
    handled: u64,
    handled_bytes: u64,
    /// Handled since the last [`WorkerCore::end_round`].
    round_msgs: u64,
    /// Skipped by the resting guard so far.
    rested: u64,
    counters: Arc<WorkerCounters>,
    /// The snail's lag check where messages are handled (the handler is behind).
    guard: Option<Guard>,
    croaked: bool,
}

impl<C: Clock> WorkerCore<C> {
    /// Core number `index` (its histograms go back to it by that number) of an
    /// engine of `shards` shards; `now_ns` starts its report period.
    pub fn new(
        index: usize,
        shards: usize,
        mut handler: Box<dyn Handler>,
        link: MetricsLink,
        counters: Arc<WorkerCounters>,
        guard: Option<Guard>,
        clock: C,
    ) -> Self {
        let now_ns = clock.now_ns();
        // Nothing refused yet: this only sets the time the first round's refusals are counted at.
        let _ = handler.refusal_lines(now_ns, false);
        WorkerCore {
            index,
            site: format!("worker{index}"),
            timed: handler.takes_time(),
            handler,
            clock,
            stages: crate::metrics::shard_sets(shards),
            tallies: (0..shards).map(|_| StageTally::default()).collect(),
            shards,
            slot: 0,
            queue_run: (0, 0),
            link,
            spare: Some(crate::metrics::shard_sets(shards)),
            last_done_ns: 0,
            last_report_ns: now_ns,
            handled: 0,
            handled_bytes: 0,
            round_msgs: 0,
            rested: 0,
            counters,
            guard,
            croaked: false,
        }
    }

    /// The messages handled next came from shard `shard` (as their hand-off says; one out of
    /// range is counted as the last shard's). Once per hand-off, so histograms and a scream
    /// name the shard.
    #[inline]
    pub fn serving(&mut self, shard: usize) {
        self.end_batch();
        self.slot = shard.min(self.shards.saturating_sub(1));
        if self.shards > 1 {
            if let Some(g) = &mut self.guard {
                g.serving(Some(self.slot));
            }
        }
    }

    /// Handle one frame received at `recv_ns` and taken from the hand-off at
    /// `take_ns`: its bytes, or 0 if it was not handled (not a frame, skipped
    /// by a resting guard, or the core croaked).
    #[inline]
    pub fn handle(&mut self, frame: &[u8], recv_ns: u64, take_ns: u64) -> usize {
        // The reader checked this frame already: one that does not decode here is a hand-off
        // fault, counted with the malformed hand-offs.
        match wire::decode(frame) {
            Ok(view) => self.handle_view(&view, frame.len(), recv_ns, take_ns),
            Err(_) => {
                self.counters.malformed.fetch_add(1, Relaxed);
                0
            }
        }
    }

    /// [`WorkerCore::handle`] for a frame of a batch, whose topic (its first `topic_len`
    /// bytes) the reader checked already: decoded without a second search for the NUL
    /// ([`wire::decode_checked_topic`]).
    #[inline]
    pub fn handle_batched(&mut self, frame: &[u8], topic_len: usize, recv_ns: u64, take_ns: u64) -> usize {
        match wire::decode_checked_topic(frame, topic_len) {
            Ok(view) => self.handle_view(&view, frame.len(), recv_ns, take_ns),
            Err(_) => {
                self.counters.malformed.fetch_add(1, Relaxed);
                0
            }
        }
    }

    /// [`WorkerCore::handle`] for a frame of `len` bytes decoded already.
    #[inline(always)]
    pub fn handle_view(&mut self, view: &FrameView<'_>, len: usize, recv_ns: u64, take_ns: u64) -> usize {
        if self.croaked {
            return 0;
        }
        // Policy `rest`: a resting worker drops its backlog (judged at the take time).
        if let Some(g) = &mut self.guard {
            if g.skip(&view.header, take_ns) {
                self.rested += 1;
                return 0;
            }
        }
        self.handler.on_message(view);
        // A handler that does nothing ends when its message was taken.
        let done = if self.timed { self.clock.now_ns() } else { take_ns };
        self.last_done_ns = done;
        // The snail judges the lag at the handler's end, with the clock read just made.
        if view.header.flags & wire::FLAG_FROM_CACHE == 0 {
            if let Some(g) = &mut self.guard {
                self.croaked |= g.on_message(&view.header, view.topic, done) == Action::Croak;
            }
        }
        let stages = &mut self.stages[self.slot];
        // A send time ahead of this host's clock makes wire and total negative: counted (ahead).
        self.tallies[self.slot].record_since_sent(&mut stages.out_of_bounds, view.header.send_time_ns, recv_ns, done);
        stages.bytes += len as u64;
        let queue_ns = latency_ns(recv_ns, take_ns);
        if queue_ns != self.queue_run.0 {
            stages.record_queue_n(self.queue_run.0, self.queue_run.1);
            self.queue_run = (queue_ns, 0);
        }
        self.queue_run.1 += 1;
        self.round_msgs += 1;
        self.handled_bytes += len as u64;
        len
    }

    /// Record the queue stage of the messages handled since the last call.
    #[inline]
    pub fn end_batch(&mut self) {
        let (queue_ns, n) = std::mem::take(&mut self.queue_run);
        if let Some(stages) = self.stages.get_mut(self.slot) {
            stages.record_queue_n(queue_ns, n);
        }
    }

    /// True once the guard croaked (the shell stops the engine).
    pub fn croaked(&self) -> bool {
        self.croaked
    }

    /// Say the handler's refusal lines as `site` (the role of the thread that runs the core).
    pub fn said_by(mut self, site: &str) -> Self {
        self.site = site.to_string();
        self
    }

    /// Say the handler's refusal lines due at `now_ns` (`end`: whatever went unsaid).
    fn say_refusals(&mut self, now_ns: u64, end: bool) {
        for l in self.handler.refusal_lines(now_ns, end) {
            crate::diag!("{}: {l}", self.site);
        }
    }

    /// End a round of the shell at `now_ns`: store the counters, say the
    /// handler's refusal lines that are due, take up live settings and publish
    /// the guard's state, and ship the histograms when a
    /// report period has passed. Returns the messages handled in the round.
    pub fn end_round(&mut self, now_ns: u64) -> u64 {
        self.end_batch();
        let n = std::mem::take(&mut self.round_msgs);
        if n > 0 {
            self.handled += n;
            self.counters.handled.store(self.handled, Relaxed);
            self.counters.handled_bytes.store(self.handled_bytes, Relaxed);
            self.counters.last_done_ns.store(self.last_done_ns, Relaxed);
        }
        if self.rested > 0 {
            self.counters.rested.store(self.rested, Relaxed);
        }
        self.say_refusals(now_ns, false);
        if let Some(g) = &mut self.guard {
            g.refresh();
            if n > 0 || g.resting() {
                g.publish();
            }
        }
        if self.croaked {
            return n;
        }
        if now_ns.saturating_sub(self.last_report_ns) >= report_period_ns(self.link.interval_ns.load(Relaxed)) {
            self.publish_refusals();
            self.ship(false);
            self.last_report_ns = now_ns;
        }
        n
    }

    /// The final report: counters, the guard's state, and the histograms with
    /// the handler's counters and summary (blocks until the collector takes it).
    pub fn close(&mut self) {
        self.end_round(0);
        self.say_refusals(0, true);
        self.publish_refusals();
        if let Some(g) = &self.guard {
            g.publish();
        }
        self.ship(true);
    }

    /// Store what the handler refused, by reason, into the live counters (once per report
    /// period: a read of its refusal counts, no allocation).
    fn publish_refusals(&self) {
        let Some(refusals) = self.handler.refusals() else { return };
        for (reason, n) in refusals.counts() {
            if let Some(i) = REFUSAL_REASONS.iter().position(|r| *r == reason) {
                self.counters.refused[i].store(n, Relaxed);
            }
        }
    }

    /// Add the wire and total stages counted since the last shipping into the sets (a read of
    /// the blocks of 1024 counts that hold any, a `record_n` per count; nothing allocated).
    fn fold_tallies(&mut self) {
        for (tally, stages) in self.tallies.iter_mut().zip(&mut self.stages) {
            tally.fold_into(stages);
        }
    }

    /// Ship the histograms recorded since the last report. `last`: the final report (blocks,
    /// carries the handler's counters).
    fn ship(&mut self, last: bool) {
        self.fold_tallies();
        if self.stages.iter().all(|s| s.count() == 0) && !last {
            return;
        }
        while let Ok(h) = self.link.spares.try_recv() {
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
            self.link.reports.send(report).err().map(|e| e.0)
        } else {
            match self.link.reports.try_send(report) {
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

/// How often a core ships its histograms to the collector, for a metrics
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

/// Most hand-offs (batches, or stamped frames handed over one by one) a worker takes in one round.
pub const HANDOFFS_PER_ROUND: usize = 64;

/// The worker thread: a PULL from every reader around a [`WorkerCore`]. It looks at the stop
/// flag before each hand-off, so a stop waits for one batch's handling at most.
pub struct WorkerAgent {
    role: String,
    pull: zmq::Socket,
    msg: zmq::Message,
    /// The frame part of a per-message hand-off (its stamp is in `msg`).
    frame: zmq::Message,
    core: WorkerCore,
    readers: usize,
    ends_seen: usize,
    stop: StopFlag,
}

impl WorkerAgent {
    /// Bind a PULL at `endpoint` in the fan-out context, for `readers` readers.
    pub fn new(
        fanout: &zmq::Context,
        endpoint: &str,
        handoff_hwm_msgs: i32,
        readers: usize,
        core: WorkerCore,
        stop: StopFlag,
    ) -> Result<Self, AgentError> {
        let role = format!("worker{}", core.index);
        let zerr = |context| {
            let role = role.clone();
            move |source| AgentError::Zmq { role, context, source }
        };
        let pull = fanout.socket(zmq::PULL).map_err(zerr("creating the PULL"))?;
        pull.set_rcvhwm(handoff_hwm_msgs).map_err(zerr("setting RCVHWM"))?;
        pull.bind(endpoint).map_err(zerr("binding the PULL"))?;
        Ok(WorkerAgent {
            role,
            pull,
            msg: zmq::Message::new(),
            frame: zmq::Message::new(),
            core,
            readers,
            ends_seen: 0,
            stop,
        })
    }
}

impl WorkerAgent {
    /// Take the next part of the hand-off being read from `pull` into `part` (here already:
    /// libzmq delivers a message whole); `context` says which part in an error.
    fn recv_next(
        pull: &zmq::Socket,
        part: &mut zmq::Message,
        role: &str,
        context: &'static str,
    ) -> Result<(), AgentError> {
        loop {
            match pull.recv(part, zmq::DONTWAIT) {
                Ok(()) => return Ok(()),
                Err(zmq::Error::EINTR) => continue,
                Err(source) => return Err(AgentError::Zmq { role: role.to_string(), context, source }),
            }
        }
    }
}

impl Agent for WorkerAgent {
    fn role(&self) -> &str {
        &self.role
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        for _ in 0..HANDOFFS_PER_ROUND {
            // A stop (Ctrl-C, a time limit, a croak elsewhere) is looked at before every
            // hand-off, not only between rounds: a round of 64 batches of 64 behind a slow
            // handler was seconds of work after the stop (one atomic load per hand-off). What
            // stays queued is the report's `not_handled`.
            if self.stop.is_stopped() {
                break;
            }
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
            if let Some(mut it) = BatchIter::new(bytes) {
                self.core.serving(usize::from(it.shard()));
                for (recv_ns, topic_len, frame) in &mut it {
                    self.core.handle_batched(frame, topic_len, recv_ns, take_ns);
                }
                if it.malformed() {
                    self.core.counters.malformed.fetch_add(1, Relaxed);
                }
            } else if let Some((shard, recv_ns)) = batch::read_stamp(bytes).filter(|_| self.msg.get_more()) {
                // A frame handed over on its own, as received, behind its stamp: the frame is
                // the message's next part, here already (libzmq delivers a message whole).
                Self::recv_next(&self.pull, &mut self.frame, &self.role, "receiving a hand-off's frame")?;
                self.core.serving(usize::from(shard));
                self.core.handle(&self.frame, recv_ns, take_ns);
            } else {
                // Neither a batch nor a stamped frame: a fault of the hand-off, counted; a part
                // after it is not taken for the next hand-off (each taken into `msg`, which then
                // tells whether more follow).
                self.core.counters.malformed.fetch_add(1, Relaxed);
                while self.msg.get_more() {
                    Self::recv_next(&self.pull, &mut self.msg, &self.role, "receiving a hand-off")?;
                }
            }
            if self.core.croaked() {
                break;
            }
        }
        let n = self.core.end_round(clock::realtime_ns()) as usize;
        if self.core.croaked() {
            // The board holds the scream; stopping is the engine's way out.
            self.stop.stop();
            return Ok(Step::Worked(n.max(1)));
        }
        if self.ends_seen >= self.readers {
            return Ok(Step::Finished(n));
        }
        Ok(Step::Worked(n))
    }

    fn idle_wait(&mut self, timeout: Duration) {
        let _ = crate::zmqx::wait_ready(&self.pull, zmq::POLLIN, timeout);
    }

    fn on_close(&mut self) {
        self.core.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::engine::handler::{HandlerLimits, HandlerSpec};
    use crate::snail::{Policy, Site, SnailBoard, SnailConfig, Verdict};
    use crate::wire::Header;
    use crossbeam::channel::{bounded, Receiver, Sender};

    const T0: u64 = 1_700_000_000_000_000_000;
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;

    fn frame(seq: u64, send_time_ns: u64) -> Vec<u8> {
        wire::encode(b"AAPL", &Header::data(seq, send_time_ns), &[0u8; 16])
    }

    /// A handler that takes `each_ns` of the manual clock per message.
    struct Slow(ManualClock, u64);

    impl Handler for Slow {
        fn on_message(&mut self, _: &FrameView<'_>) {
            self.0.advance_ns(self.1);
        }
    }

    struct Harness {
        clock: ManualClock,
        reports: Receiver<WorkerReport>,
        spares: Sender<Vec<StageHistograms>>,
        counters: Arc<WorkerCounters>,
    }

    /// A core of index 3 in a 2-shard engine with `handler`, a metrics interval
    /// of 100 ms (a report every 10 ms) and `guard`.
    fn core(handler: Option<Box<dyn Handler>>, guard: Option<Guard>) -> (WorkerCore<ManualClock>, Harness) {
        let clock = ManualClock::new(T0);
        let (tx, reports) = bounded(1);
        let (spares, spare_rx) = bounded(2);
        let link = MetricsLink { reports: tx, spares: spare_rx, interval_ns: Arc::new(AtomicU64::new(100 * MS)) };
        let counters = Arc::new(WorkerCounters::default());
        let handler = handler.unwrap_or_else(|| Box::new(Slow(clock.clone(), 5 * US)));
        let c = WorkerCore::new(3, 2, handler, link, counters.clone(), guard, clock.clone());
        (c, Harness { clock, reports, spares, counters })
    }

    #[test]
    fn stages_are_receive_take_and_handler_end_per_shard() {
        let (mut c, h) = core(None, None);
        c.serving(1);
        let (sent, recv, take) = (T0 - 30 * US, T0 - 20 * US, T0);
        for seq in 1..=3 {
            assert_eq!(c.handle(&frame(seq, sent), recv, take), frame(seq, sent).len());
        }
        assert_eq!(c.handle(b"not a frame", recv, take), 0, "refused, not handled");
        assert_eq!(c.end_round(h.clock.now_ns()), 3);
        assert_eq!(h.counters.handled.load(Relaxed), 3);
        assert_eq!(h.counters.last_done_ns.load(Relaxed), T0 + 15 * US, "the third ends 15 µs after the take");
        c.fold_tallies();
        let s = &c.stages[1];
        assert_eq!((s.wire.len(), s.queue.len(), s.total.len()), (3, 3, 3));
        assert_eq!(s.bytes, 3 * frame(1, sent).len() as u64);
        assert!(s.wire.equivalent(s.wire.max(), 10 * US), "wire = receive − send");
        assert!(s.queue.equivalent(s.queue.max(), 20 * US), "queue = take − receive");
        assert!(s.total.equivalent(s.total.min(), 35 * US) && s.total.equivalent(s.total.max(), 45 * US));
        assert_eq!((c.stages.len(), c.stages[0].count()), (2, 0), "a set per shard; only shard 1's");
    }

    /// A frame of a batch is handled as the same frame on its own is, with the topic length
    /// the reader found; a record whose length does not land on the topic's NUL is not handled.
    #[test]
    fn a_batched_frame_is_handled_with_the_readers_topic_length() {
        let (mut c, _h) = core(None, None);
        let f = frame(1, T0 - 30 * US);
        assert_eq!(c.handle_batched(&f, 4, T0 - 20 * US, T0), f.len());
        for wrong in [0, 3, 5, f.len(), 300] {
            assert_eq!(c.handle_batched(&f, wrong, T0 - 20 * US, T0), 0, "topic length {wrong}");
        }
        assert_eq!(c.counters.malformed.load(Relaxed), 5, "each not handled is counted");
        c.end_batch();
        c.fold_tallies();
        let s = &c.stages[0];
        assert_eq!((s.wire.len(), s.total.len(), s.bytes), (1, 1, f.len() as u64));
    }

    #[test]
    fn a_handler_that_takes_no_time_ends_at_the_take_and_reads_no_clock() {
        let (mut c, h) = core(Some(HandlerSpec::Latency.build()), None);
        c.serving(0);
        c.handle(&frame(1, T0 - 30 * US), T0 - 20 * US, T0 - 10 * US);
        c.end_round(T0);
        c.fold_tallies();
        assert_eq!(h.clock.now_ns(), T0);
        assert_eq!(h.counters.last_done_ns.load(Relaxed), T0 - 10 * US);
        assert!(c.stages[0].total.equivalent(c.stages[0].total.max(), 20 * US));
    }

    #[test]
    fn histograms_ship_once_a_period_double_buffered_and_nothing_is_lost_when_the_collector_lags() {
        let (mut c, h) = core(None, None);
        c.serving(0);
        c.handle(&frame(1, T0), T0, T0);
        c.end_round(h.clock.now_ns());
        assert!(h.reports.try_recv().is_err(), "not before a report period (10 ms)");
        let t = h.clock.advance_ms(10);
        c.end_round(t);
        let first = h.reports.try_recv().expect("shipped after a period");
        assert_eq!((first.worker, first.stages[0].count()), (3, 1));
        assert!(first.handler_counters.is_empty(), "handler counters only in the final report");
        // The spare went out with the report and none came back: keep counting.
        c.handle(&frame(2, T0), T0, T0);
        let t = h.clock.advance_ms(10);
        c.end_round(t);
        assert!(h.reports.try_recv().is_err());
        assert_eq!(h.counters.metrics_deferred.load(Relaxed), 1);
        c.handle(&frame(3, T0), T0, T0);
        // The collector hands the emptied set back: both messages go in the next report.
        let mut back = first.stages;
        back.iter_mut().for_each(StageHistograms::reset);
        h.spares.send(back).expect("spare");
        let t = h.clock.advance_ms(10);
        c.end_round(t);
        assert_eq!(h.reports.try_recv().expect("shipped").stages[0].count(), 2);
        c.close();
        assert_eq!(h.reports.try_recv().expect("final report").stages[0].count(), 0);
        assert_eq!(h.counters.metrics_dropped.load(Relaxed), 0);
        assert_eq!(h.counters.handled.load(Relaxed), 3);
    }

    #[test]
    fn the_final_report_carries_the_handlers_counters() {
        let (mut c, h) = core(Some(HandlerSpec::Verify.build()), None);
        c.serving(0);
        for seq in 1..=5 {
            c.handle(&frame(seq, T0), T0, T0);
        }
        c.close();
        let last = h.reports.try_recv().expect("final report");
        assert!(last.handler_counters.contains(&("verified", 5)), "{:?}", last.handler_counters);
        assert_eq!(last.stages[0].count(), 5);
    }

    /// A handler that notes when it is asked for its refusal lines.
    struct Asked(Arc<std::sync::Mutex<Vec<(u64, bool)>>>);

    impl Handler for Asked {
        fn on_message(&mut self, _: &FrameView<'_>) {}
        fn refusal_lines(&mut self, now_ns: u64, end: bool) -> Vec<String> {
            if let Ok(mut v) = self.0.lock() {
                v.push((now_ns, end));
            }
            vec![format!("handler asked: refused (test): at {now_ns}")]
        }
    }

    /// The handler's refusal lines are asked for once when the core is made (the time its
    /// first refusals are counted at), once per round, never per message, and at the close
    /// for what went unsaid; a bounded handler's refusals reach the final report.
    #[test]
    fn refusals_are_asked_for_once_a_round_and_counted_in_the_final_report() {
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut c, _h) = core(Some(Box::new(Asked(asked.clone()))), None);
        c.serving(0);
        for seq in 1..=3 {
            c.handle(&frame(seq, T0), T0, T0);
        }
        c.end_round(T0 + MS);
        c.close();
        assert_eq!(*asked.lock().expect("lock"), [(T0, false), (T0 + MS, false), (0, false), (0, true)]);

        let small = HandlerLimits { max_topics: 1, ..HandlerLimits::default() };
        let (mut c, h2) = core(Some(Box::new(crate::engine::handler::VerifyOrder::new(small))), None);
        c.serving(0);
        for (seq, topic) in [(1, &b"A"[..]), (2, b"B"), (3, b"A")] {
            c.handle(&wire::encode(topic, &Header::data(seq, T0), b""), T0, T0);
        }
        c.close();
        let last = h2.reports.try_recv().expect("final report");
        assert!(last.handler_counters.contains(&("refused_verify_full", 1)), "{:?}", last.handler_counters);
    }

    /// The metrics link's far ends, held so that the worker's reports have somewhere to go.
    type LinkEnds = (Receiver<WorkerReport>, Sender<Vec<StageHistograms>>);

    /// A worker agent pulling at `endpoint` for as many readers as `shards`, its core (index 0
    /// of `shards`) running `handler` on the wall clock with a metrics interval of 100 ms, and a
    /// PUSH connected to it.
    fn agent_on(
        endpoint: &str,
        shards: usize,
        handler: Box<dyn Handler>,
        stop: StopFlag,
    ) -> (WorkerAgent, zmq::Socket, LinkEnds) {
        let ctx = zmq::Context::new();
        let (tx, reports) = bounded(4);
        let (spares, spare_rx) = bounded(2);
        let link = MetricsLink { reports: tx, spares: spare_rx, interval_ns: Arc::new(AtomicU64::new(100 * MS)) };
        let c = WorkerCore::new(0, shards, handler, link, Arc::default(), None, Realtime);
        let w = WorkerAgent::new(&ctx, endpoint, 100, shards, c, stop).expect("worker");
        let push = ctx.socket(zmq::PUSH).expect("push");
        push.connect(endpoint).expect("connect");
        (w, push, (reports, spares))
    }

    /// A handler that sets the stop flag at its first message (a Ctrl-C while it works).
    struct StopsAtFirst(StopFlag);

    impl Handler for StopsAtFirst {
        fn on_message(&mut self, _: &FrameView<'_>) {
            self.0.stop();
        }
    }

    /// A stop mid-round ends the round after the hand-off being handled: before, a worker took
    /// up to 64 hand-offs of up to 64 frames (seconds behind a slow handler) before it looked.
    /// What stays queued is not handled (the report's `not_handled`), and no end marker was seen.
    #[test]
    fn a_worker_looks_at_the_stop_flag_before_each_hand_off() {
        let stop = StopFlag::new();
        let handler = Box::new(StopsAtFirst(stop.clone()));
        let (mut w, push, _link) = agent_on("inproc://stop-each-hand-off", 1, handler, stop);
        for b in 0..3u64 {
            let (mut batch, mut stamp) = (Vec::new(), 0);
            for seq in 1..=10 {
                let f = frame(b * 10 + seq, T0);
                crate::engine::batch::push(&mut batch, &mut stamp, 0, T0, 4, &f);
            }
            push.send(batch, 0).expect("send a batch");
        }
        push.send(&b""[..], 0).expect("send the end marker");
        assert!(matches!(w.do_work(), Ok(Step::Worked(10))), "one batch of 10 handled, then the stop seen");
        assert_eq!(w.core.counters.handled.load(Relaxed), 10);
        assert_eq!(w.ends_seen, 0, "the rest stays queued");
    }

    /// A frame handed over on its own behind its stamp is recorded in its shard's set, its wire
    /// stage up to the reader's receive time and its queue stage from there to the take. Before,
    /// with two shards it went to an `unattributed` set (the report's shards delivered 0), its
    /// wire stage ran to the take and its queue stage read 1 ns. A part that is neither a batch
    /// nor a stamp is a malformed hand-off, not a frame.
    #[test]
    fn a_stamped_frame_is_recorded_in_its_shard_with_its_receive_time() {
        let handler = HandlerSpec::Latency.build();
        let (mut w, mut push, (reports, _spares)) = agent_on("inproc://stamped-frame", 2, handler, StopFlag::new());
        let now = clock::realtime_ns();
        let (sent, recv) = (now - 10 * MS, now - 4 * MS);
        crate::zmqx::frame::send_bytes(&mut push, &batch::stamp(1, recv), zmq::SNDMORE).expect("stamp");
        push.send(frame(1, sent), 0).expect("frame");
        push.send(frame(2, sent), 0).expect("a frame alone");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while w.core.counters.malformed.load(Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "the hand-offs never arrived");
            w.do_work().expect("work");
        }
        assert_eq!(w.core.counters.handled.load(Relaxed), 1, "the stamped frame only");
        // A report period (10 ms) may pass before the frame is handled on a loaded machine: the
        // sets it was recorded in may have shipped.
        let shipped: Vec<WorkerReport> = reports.try_iter().collect();
        w.core.fold_tallies();
        let sets: Vec<&[StageHistograms]> = shipped.iter().map(|r| &r.stages[..]).chain([&w.core.stages[..]]).collect();
        let in_shard = |k: usize| sets.iter().map(|s| s[k].count()).sum::<u64>();
        assert_eq!((in_shard(0), in_shard(1)), (0, 1), "in shard 1's set");
        let s = sets.iter().map(|s| &s[1]).find(|s| s.count() == 1).expect("the set holding it");
        assert!(s.wire.equivalent(s.wire.max(), 6 * MS), "wire = receive − send: {}", s.wire.max());
        assert!(s.queue.max() >= 4 * MS - 10 * US, "queue = take − receive: {}", s.queue.max());
        assert!(s.total.max() >= s.wire.max() + s.queue.max() - 20 * US, "wire + queue = total");
    }

    #[test]
    fn a_guard_judges_lag_at_the_handlers_end_and_a_croak_stops_handling() {
        let cfg =
            SnailConfig { policy: Policy::Croak, max_lag_ns: 100 * MS, grace_ns: 200 * MS, ..SnailConfig::default() };
        let board = SnailBoard::new(cfg, vec![Site { role: "worker3".into(), shard: Some(0) }]);
        // The handler takes 1 ms of every message: lag grows 1 ms per message
        // from a feed whose send times stand still.
        let guard = Guard::new(board.clone(), 0, None);
        let (mut c, h) = core(None, Some(guard));
        c.handler = Box::new(Slow(h.clock.clone(), MS));
        c.serving(0);
        let mut handled = 0;
        for seq in 1..=1_000 {
            if c.handle(&frame(seq, T0), T0, T0) > 0 {
                handled += 1;
            }
            if c.croaked() {
                break;
            }
        }
        assert!(c.croaked(), "a handler falling behind croaks");
        // Lag passes 100 ms at message 100, then 200 ms of grace: ~300 messages.
        assert!((290..=310).contains(&handled), "croaked after {handled}");
        assert_eq!(c.handle(&frame(5_000, T0), T0, T0), 0, "nothing is handled after a croak");
        c.end_round(h.clock.now_ns());
        let scream = board.croak().expect("the scream is on the board");
        assert_eq!((scream.site.as_str(), scream.verdict), ("worker3", Verdict::Snail));
        assert_eq!(board.report().sites[0].checked, handled);
    }
}
