//! Agents and their runner: every long-running mdsub thread is an [`Agent`]
//! (Aeron's agent model), and [`Runner`] is the only code that starts
//! threads. The runner names the thread after [`Agent::role`], pins it, loops
//! [`Agent::do_work`], applies the [`IdleStrategy`] when the agent reports no
//! work (with real microsecond waits), waits out back-pressure when the agent
//! reports [`Step::Blocked`], catches panics, and keeps per-agent
//! [`AgentCounters`]: work done, idle rounds, time idle, time blocked on
//! back-pressure, and the thread's own CPU time. Agents never spawn, sleep or
//! pin themselves, so the same agent can be driven by hand ([`run_agent`]) on
//! a test thread.
//!
//! Short one-shot jobs that must run on a named, pinned thread of their own
//! (making a shard's ZeroMQ context so its I/O thread inherits the pinning, a
//! benchmark's load generator) go through [`Runner::task`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::clock;

/// What one call to [`Agent::do_work`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Processed this many items (0 means idle: the runner applies its idle strategy).
    Worked(usize),
    /// Processed this many items, then an output was full (back-pressure):
    /// the runner waits in [`Agent::blocked_wait`] and counts the time.
    Blocked(usize),
    /// Processed this many items in its last round, then finished its job
    /// (end of stream, stop request seen).
    Finished(usize),
}

/// Errors an agent can stop with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A ZeroMQ call failed.
    #[error("{role}: zmq error while {context}: {source}")]
    Zmq {
        role: String,
        context: &'static str,
        #[source]
        source: zmq::Error,
    },
    /// The OS would not start the thread.
    #[error("{role}: cannot start its thread: {source}")]
    Spawn {
        role: String,
        #[source]
        source: std::io::Error,
    },
    /// Any other fatal condition, with a message a person can act on.
    #[error("{role}: {message}")]
    Fatal { role: String, message: String },
}

/// One thread's worth of work with a role name.
pub trait Agent: Send {
    /// Role name; becomes the thread name (keep it ≤ 15 bytes for Linux).
    fn role(&self) -> &str;

    /// Do one bounded unit of work without blocking for long.
    fn do_work(&mut self) -> Result<Step, AgentError>;

    /// Wait up to `timeout` for input to arrive. Agents with a socket override
    /// this with a wait on it (`zmqx::wait_ready`) so that an idle agent wakes
    /// at once on traffic; the default sleeps.
    fn idle_wait(&mut self, timeout: Duration) {
        std::thread::sleep(timeout);
    }

    /// Wait up to `timeout` for a full output to take more (after
    /// [`Step::Blocked`]); the default is [`Agent::idle_wait`].
    fn blocked_wait(&mut self, timeout: Duration) {
        self.idle_wait(timeout);
    }

    /// Called once when the runner stops the agent (normal end, stop flag or error).
    fn on_close(&mut self) {}
}

/// What a runner does when its agent reports no work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum IdleStrategy {
    /// Busy-spin (lowest latency; needs a dedicated core).
    Spin,
    /// `yield_now` between polls.
    Yield,
    /// Spin, then yield, then block in `idle_wait` for up to `max_wait_us`
    /// (crossbeam's escalation). The default: right for a shared 2-core box.
    Backoff { max_wait_us: u64 },
    /// Block in `idle_wait` for up to `wait_us` at once.
    Block { wait_us: u64 },
}

impl Default for IdleStrategy {
    fn default() -> Self {
        IdleStrategy::Backoff { max_wait_us: 1000 }
    }
}

impl IdleStrategy {
    /// The names accepted by [`IdleStrategy::from_name`].
    pub const NAMES: &'static str = "spin, yield, backoff, block";

    /// Parse a name as used on the command line: `spin`, `yield`, `backoff`, `block`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "spin" => Some(IdleStrategy::Spin),
            "yield" => Some(IdleStrategy::Yield),
            "backoff" => Some(IdleStrategy::default()),
            "block" => Some(IdleStrategy::Block { wait_us: 100_000 }),
            _ => None,
        }
    }

    /// The name [`IdleStrategy::from_name`] reads as this strategy's kind (`--idle` takes it);
    /// a `backoff` or `block` with another wait than that name's reads back as the name's.
    pub fn name(&self) -> &'static str {
        match self {
            IdleStrategy::Spin => "spin",
            IdleStrategy::Yield => "yield",
            IdleStrategy::Backoff { .. } => "backoff",
            IdleStrategy::Block { .. } => "block",
        }
    }

    /// The longest single wait this strategy makes (None: it never blocks).
    pub fn max_wait(&self) -> Option<Duration> {
        match *self {
            IdleStrategy::Spin | IdleStrategy::Yield => None,
            IdleStrategy::Backoff { max_wait_us } => Some(Duration::from_micros(max_wait_us)),
            IdleStrategy::Block { wait_us } => Some(Duration::from_micros(wait_us)),
        }
    }
}

/// Live counters of one agent, written by its runner thread only (relaxed
/// stores), read by anyone (reports, `/metrics`).
#[derive(Debug, Default)]
pub struct AgentCounters {
    /// Items processed (the sum of what `do_work` reported).
    pub work: CachePadded<AtomicU64>,
    /// Calls to `do_work` that found nothing to do.
    pub idle_rounds: AtomicU64,
    /// Time spent waiting in `idle_wait` (spins and yields are not timed).
    pub idle_ns: AtomicU64,
    /// Times `do_work` reported back-pressure, and the time spent waiting it out.
    pub blocked_rounds: AtomicU64,
    pub blocked_ns: AtomicU64,
    /// CPU time of the agent's thread (sampled: every 256 working rounds,
    /// before each wait and at the end).
    pub cpu_ns: AtomicU64,
    /// Monotonic start and end of the run loop (end 0 while running).
    pub started_ns: AtomicU64,
    pub ended_ns: AtomicU64,
    /// The CPU and wall time of the last metrics interval ([`AgentCounters::mark_interval`]).
    interval: Mutex<IntervalMark>,
}

/// Where the last metrics interval ended for one agent, and what it took.
#[derive(Debug, Default, Clone, Copy)]
struct IntervalMark {
    /// When the last interval ended (monotonic ns; 0: none has yet) and the CPU time then.
    at_ns: u64,
    cpu_ns: u64,
    /// The last interval's CPU time and wall time (None before the first interval ends).
    last: Option<(u64, u64)>,
}

/// A copy of one agent's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    pub role: String,
    pub work: u64,
    pub idle_rounds: u64,
    pub idle_ns: u64,
    pub blocked_rounds: u64,
    pub blocked_ns: u64,
    pub cpu_ns: u64,
    /// Wall time the run loop has run so far (or ran).
    pub wall_ns: u64,
    /// Share of the last metrics interval the thread was on a CPU (None: no interval has ended
    /// since it started, or nothing marks its intervals). Live only: the end report has the run's.
    #[serde(skip)]
    pub interval_busy: Option<f64>,
}

impl AgentStats {
    /// CPU ns per item of work (0 with no work).
    pub fn cpu_ns_per_item(&self) -> f64 {
        if self.work == 0 {
            0.0
        } else {
            self.cpu_ns as f64 / self.work as f64
        }
    }

    /// Share of the wall time the thread was on a CPU.
    pub fn busy_fraction(&self) -> f64 {
        if self.wall_ns == 0 {
            0.0
        } else {
            (self.cpu_ns as f64 / self.wall_ns as f64).min(1.0)
        }
    }

    /// Share of the last metrics interval the thread was on a CPU, as the rates beside it are
    /// per interval: before the first interval ends, the share of the run so far.
    pub fn recent_busy(&self) -> f64 {
        self.interval_busy.unwrap_or_else(|| self.busy_fraction())
    }
}

impl AgentCounters {
    /// A consistent-enough copy (each field is read once, relaxed).
    pub fn snapshot(&self, role: &str) -> AgentStats {
        let started = self.started_ns.load(Relaxed);
        let ended = self.ended_ns.load(Relaxed);
        let end = if ended > 0 { ended } else { clock::monotonic_ns() };
        AgentStats {
            role: role.to_string(),
            work: self.work.load(Relaxed),
            idle_rounds: self.idle_rounds.load(Relaxed),
            idle_ns: self.idle_ns.load(Relaxed),
            blocked_rounds: self.blocked_rounds.load(Relaxed),
            blocked_ns: self.blocked_ns.load(Relaxed),
            cpu_ns: self.cpu_ns.load(Relaxed),
            wall_ns: if started > 0 { end.saturating_sub(started) } else { 0 },
            interval_busy: self.interval.lock().ok().and_then(|m| m.last).map(|(cpu, wall)| {
                if wall == 0 {
                    0.0
                } else {
                    (cpu as f64 / wall as f64).min(1.0)
                }
            }),
        }
    }

    /// End a metrics interval at `now_ns` (monotonic): the CPU time the thread took since the
    /// interval before ended (or since it started) over the wall time between them is its busy
    /// share until the next ([`AgentStats::interval_busy`]). Called by whoever closes intervals
    /// (the engine's collector), off the agent's thread; an agent not started yet is skipped.
    pub fn mark_interval(&self, now_ns: u64) {
        let started = self.started_ns.load(Relaxed);
        if started == 0 {
            return;
        }
        let cpu = self.cpu_ns.load(Relaxed);
        let Ok(mut m) = self.interval.lock() else { return };
        // The first interval is taken from the run loop's start (the thread's CPU time before
        // it is the runner's few microseconds of setting up).
        let (from_ns, from_cpu) = if m.at_ns > 0 { (m.at_ns, m.cpu_ns) } else { (started, 0) };
        m.last = Some((cpu.saturating_sub(from_cpu), now_ns.saturating_sub(from_ns)));
        m.at_ns = now_ns;
        m.cpu_ns = cpu;
    }
}

/// The agents whose busy share is taken over each metrics interval: the engine lists them, the
/// collector marks them as it closes an interval ([`AgentCounters::mark_interval`]).
#[derive(Debug, Default)]
pub struct IntervalMarks(Mutex<Vec<Arc<AgentCounters>>>);

impl IntervalMarks {
    /// Take `counters`' busy share per interval from the next interval's end on.
    pub fn watch(&self, counters: Arc<AgentCounters>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(counters);
        }
    }

    /// End the interval at `now_ns` for every agent watched.
    pub fn mark(&self, now_ns: u64) {
        if let Ok(v) = self.0.lock() {
            for c in v.iter() {
                c.mark_interval(now_ns);
            }
        }
    }
}

/// The runner's side of the counters: plain locals, stored to the shared
/// atomics as they change (one relaxed store each, on the agent's own lines).
struct Tally<'a> {
    shared: &'a AgentCounters,
    work: u64,
    idle_rounds: u64,
    idle_ns: u64,
    blocked_rounds: u64,
    blocked_ns: u64,
    since_cpu_sample: u32,
}

impl<'a> Tally<'a> {
    fn new(shared: &'a AgentCounters) -> Self {
        shared.started_ns.store(clock::monotonic_ns(), Relaxed);
        shared.ended_ns.store(0, Relaxed);
        Tally {
            shared,
            work: shared.work.load(Relaxed),
            idle_rounds: shared.idle_rounds.load(Relaxed),
            idle_ns: shared.idle_ns.load(Relaxed),
            blocked_rounds: shared.blocked_rounds.load(Relaxed),
            blocked_ns: shared.blocked_ns.load(Relaxed),
            since_cpu_sample: 0,
        }
    }

    #[inline]
    fn worked(&mut self, n: usize) {
        self.work += n as u64;
        self.shared.work.store(self.work, Relaxed);
        self.since_cpu_sample += 1;
        if self.since_cpu_sample >= 256 {
            self.sample_cpu();
        }
    }

    fn sample_cpu(&mut self) {
        self.since_cpu_sample = 0;
        self.shared.cpu_ns.store(clock::thread_cpu_ns(), Relaxed);
    }

    /// Run `wait`, timing it into idle or blocked time.
    fn timed(&mut self, blocked: bool, wait: impl FnOnce()) {
        self.sample_cpu();
        let t0 = clock::monotonic_ns();
        wait();
        let dt = clock::monotonic_ns().saturating_sub(t0);
        if blocked {
            self.blocked_ns += dt;
            self.shared.blocked_ns.store(self.blocked_ns, Relaxed);
        } else {
            self.idle_ns += dt;
            self.shared.idle_ns.store(self.idle_ns, Relaxed);
        }
    }

    fn end(&mut self) {
        self.sample_cpu();
        self.shared.ended_ns.store(clock::monotonic_ns(), Relaxed);
    }
}

/// Per-thread idle state for the strategy (how many idle rounds in a row).
struct Idler {
    strategy: IdleStrategy,
    idle_rounds: u32,
}

impl Idler {
    fn idle<A: Agent + ?Sized>(&mut self, agent: &mut A, tally: &mut Tally) {
        tally.idle_rounds += 1;
        tally.shared.idle_rounds.store(tally.idle_rounds, Relaxed);
        match self.strategy {
            IdleStrategy::Spin => std::hint::spin_loop(),
            IdleStrategy::Yield => std::thread::yield_now(),
            IdleStrategy::Block { wait_us } => tally.timed(false, || agent.idle_wait(Duration::from_micros(wait_us))),
            IdleStrategy::Backoff { max_wait_us } => {
                self.idle_rounds = self.idle_rounds.saturating_add(1);
                if self.idle_rounds <= 10 {
                    for _ in 0..(1u32 << self.idle_rounds.min(6)) {
                        std::hint::spin_loop();
                    }
                } else if self.idle_rounds <= 20 {
                    std::thread::yield_now();
                } else {
                    tally.timed(false, || agent.idle_wait(Duration::from_micros(max_wait_us)));
                }
            }
        }
    }

    fn blocked<A: Agent + ?Sized>(&mut self, agent: &mut A, tally: &mut Tally) {
        tally.blocked_rounds += 1;
        tally.shared.blocked_rounds.store(tally.blocked_rounds, Relaxed);
        let strategy = self.strategy;
        tally.timed(true, || match strategy.max_wait() {
            None if strategy == IdleStrategy::Spin => std::hint::spin_loop(),
            None => std::thread::yield_now(),
            Some(d) => agent.blocked_wait(d),
        });
    }

    fn reset(&mut self) {
        self.idle_rounds = 0;
    }
}

/// How to run one agent.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Core to pin the thread to (`None`: leave it to the OS).
    pub core: Option<usize>,
    /// What to do when the agent is idle.
    pub idle: IdleStrategy,
}

impl RunSpec {
    /// Unpinned, with `idle`.
    pub fn unpinned(idle: IdleStrategy) -> Self {
        RunSpec { core: None, idle }
    }
}

/// Shared stop flag: set it and every runner using it stops its agent after the
/// current unit of work.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Pin the calling thread to `core`. Errors name the core.
pub fn pin_current_thread(core: usize) -> Result<(), String> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let id =
        ids.into_iter().find(|c| c.id == core).ok_or_else(|| format!("core {core} does not exist on this host"))?;
    if core_affinity::set_for_current(id) {
        Ok(())
    } else {
        Err(format!("the OS refused to pin this thread to core {core}"))
    }
}

/// Drive `agent` on the current thread until it finishes, fails, or `stop` is
/// set, keeping `counters`.
pub fn run_agent<A: Agent + ?Sized>(
    agent: &mut A,
    idle: IdleStrategy,
    stop: &StopFlag,
    counters: &AgentCounters,
) -> Result<(), AgentError> {
    let mut idler = Idler { strategy: idle, idle_rounds: 0 };
    let mut tally = Tally::new(counters);
    let result = loop {
        if stop.is_stopped() {
            break Ok(());
        }
        match agent.do_work() {
            Ok(Step::Worked(0)) => idler.idle(agent, &mut tally),
            Ok(Step::Worked(n)) => {
                idler.reset();
                tally.worked(n);
            }
            Ok(Step::Blocked(n)) => {
                idler.reset();
                if n > 0 {
                    tally.worked(n);
                }
                idler.blocked(agent, &mut tally);
            }
            Ok(Step::Finished(n)) => {
                if n > 0 {
                    tally.worked(n);
                }
                break Ok(());
            }
            Err(e) => break Err(e),
        }
    };
    agent.on_close();
    tally.end();
    result
}

/// Every agent started by a [`Runner`] in this process, for reports and
/// `/metrics` (entries of finished agents are pruned as they are found).
static REGISTRY: Mutex<Vec<(String, Weak<AgentCounters>)>> = Mutex::new(Vec::new());

fn register(role: &str, counters: &Arc<AgentCounters>) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.retain(|(_, w)| w.strong_count() > 0);
        r.push((role.to_string(), Arc::downgrade(counters)));
    }
}

/// What a panic said, for the error message.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A channel as an agent's input: `next` hands out what has arrived, and
/// `wait` (for [`Agent::idle_wait`]) blocks on the channel itself, so the wait
/// ends the moment an item arrives; that item is kept for the next `next`.
pub struct Inbox<T> {
    rx: crossbeam::channel::Receiver<T>,
    held: Option<T>,
    closed: bool,
}

impl<T> Inbox<T> {
    pub fn new(rx: crossbeam::channel::Receiver<T>) -> Self {
        Inbox { rx, held: None, closed: false }
    }

    /// Every sender is gone and everything sent has been handed out (seen by `next`).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Wait up to `timeout` for an item; a closed channel returns at once
    /// (the next `next` sees it).
    pub fn wait(&mut self, timeout: Duration) {
        if self.held.is_none() {
            self.held = self.rx.recv_timeout(timeout).ok();
        }
    }
}

/// Never blocks: `None` when nothing is there now (more may come later;
/// [`Inbox::is_closed`] says when nothing will).
impl<T> Iterator for Inbox<T> {
    type Item = T;

    /// The next item if one is there (never blocks).
    fn next(&mut self) -> Option<T> {
        if let Some(item) = self.held.take() {
            return Some(item);
        }
        match self.rx.try_recv() {
            Ok(item) => Some(item),
            Err(crossbeam::channel::TryRecvError::Empty) => None,
            Err(crossbeam::channel::TryRecvError::Disconnected) => {
                self.closed = true;
                None
            }
        }
    }
}

/// The one place mdsub starts threads.
pub struct Runner;

impl Runner {
    /// Start `agent` on a new thread named after its role, pinned per `spec`.
    /// If the agent fails or panics, `stop` is set so the agents that depend
    /// on it stop too instead of waiting for it forever. The handle gives the
    /// agent back when it ends, so its owner can read its final state.
    pub fn start<A: Agent + 'static>(spec: RunSpec, stop: StopFlag, agent: A) -> Result<AgentHandle<A>, AgentError> {
        let role = agent.role().to_string();
        let counters = Arc::new(AgentCounters::default());
        register(&role, &counters);
        let (c, r) = (counters.clone(), role.clone());
        let join = std::thread::Builder::new()
            .name(role.clone())
            .spawn(move || {
                let mut agent = agent;
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if let Some(core) = spec.core {
                        pin_current_thread(core).map_err(|message| AgentError::Fatal { role: r.clone(), message })?;
                    }
                    run_agent(&mut agent, spec.idle, &stop, &c)
                }));
                let result = match run {
                    Ok(Ok(())) => Ok(agent),
                    Ok(Err(e)) => Err(e),
                    Err(p) => Err(AgentError::Fatal { role: r, message: format!("panicked: {}", panic_text(&*p)) }),
                };
                if result.is_err() {
                    stop.stop();
                }
                result
            })
            .map_err(|source| AgentError::Spawn { role: role.clone(), source })?;
        Ok(AgentHandle { role, counters, join })
    }

    /// Run a one-shot job `f` on a new thread named `name`, pinned to `core`:
    /// for what must happen on a thread of its own (a shard's ZeroMQ context
    /// is made on a thread pinned to its I/O core, so libzmq's I/O thread
    /// inherits name and CPU mask) or a benchmark's load generator.
    pub fn task<T, F>(name: &str, core: Option<usize>, f: F) -> Result<TaskHandle<T>, AgentError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let role = name.to_string();
        let r = role.clone();
        let join = std::thread::Builder::new()
            .name(role.clone())
            .spawn(move || {
                if let Some(core) = core {
                    pin_current_thread(core).map_err(|message| AgentError::Fatal { role: r, message })?;
                }
                Ok(f())
            })
            .map_err(|source| AgentError::Spawn { role: role.clone(), source })?;
        Ok(TaskHandle { role, join })
    }

    /// Counters of every agent still alive in this process.
    pub fn agents() -> Vec<AgentStats> {
        let Ok(r) = REGISTRY.lock() else { return Vec::new() };
        r.iter().filter_map(|(role, w)| w.upgrade().map(|c| c.snapshot(role))).collect()
    }
}

/// Join a runner thread; a panic that escaped becomes an error naming the role.
fn join_thread<T>(role: String, join: JoinHandle<Result<T, AgentError>>) -> Result<T, AgentError> {
    join.join().unwrap_or_else(|p| Err(AgentError::Fatal { role, message: format!("panicked: {}", panic_text(&*p)) }))
}

/// A running agent.
pub struct AgentHandle<A> {
    role: String,
    counters: Arc<AgentCounters>,
    join: JoinHandle<Result<A, AgentError>>,
}

impl<A> AgentHandle<A> {
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The agent's live counters.
    pub fn counters(&self) -> &Arc<AgentCounters> {
        &self.counters
    }

    /// A copy of the counters now.
    pub fn stats(&self) -> AgentStats {
        self.counters.snapshot(&self.role)
    }

    /// The thread has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Wait for the agent to end; the agent back, or why it failed.
    pub fn join(self) -> Result<A, AgentError> {
        join_thread(self.role, self.join)
    }
}

/// A running one-shot job.
pub struct TaskHandle<T> {
    role: String,
    join: JoinHandle<Result<T, AgentError>>,
}

impl<T> TaskHandle<T> {
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Wait for the job; its result, or why it could not run.
    pub fn join(self) -> Result<T, AgentError> {
        join_thread(self.role, self.join)
    }
}

/// Work an [`AskLink`] does on a thread of its own (an fsync, a snapshot rewrite: work its
/// owner must not wait for): each ask in the order it was made, and its answer, if it has one.
pub trait AskHandler: Send + 'static {
    type Ask: Send + 'static;
    type Answer: Send + 'static;

    /// Role name of its thread (see [`Agent::role`]).
    fn role(&self) -> &str;

    /// Do one ask; what to answer, if anything.
    fn handle(&mut self, ask: Self::Ask) -> Option<Self::Answer>;
}

/// The agent an [`AskLink`] runs: one ask a step, blocking on its asks between them (an ask
/// wakes it at once); finished once every ask is done and the owner has closed the link.
pub struct AskAgent<H: AskHandler> {
    handler: H,
    asks: Inbox<H::Ask>,
    answers: crossbeam::channel::Sender<H::Answer>,
}

impl<H: AskHandler> Agent for AskAgent<H> {
    fn role(&self) -> &str {
        self.handler.role()
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        match self.asks.next() {
            Some(ask) => {
                if let Some(answer) = self.handler.handle(ask) {
                    // The owner gone (it stops by closing the asks): nothing to tell.
                    let _ = self.answers.send(answer);
                }
                Ok(Step::Worked(1))
            }
            None if self.asks.is_closed() => Ok(Step::Finished(0)),
            None => Ok(Step::Worked(0)),
        }
    }

    fn idle_wait(&mut self, timeout: Duration) {
        self.asks.wait(timeout);
    }
}

/// The owner's end of an [`AskHandler`] running on its own thread: asks out and answers in,
/// never blocking, and why the agent stopped when it is found gone.
pub struct AskLink<H: AskHandler> {
    asks: Option<crossbeam::channel::Sender<H::Ask>>,
    answers: crossbeam::channel::Receiver<H::Answer>,
    handle: Option<AgentHandle<AskAgent<H>>>,
    stop: StopFlag,
    /// Who owns it and what the agent is, for the error when it is gone: (`clone-server`,
    /// `the update log's syncer`).
    names: (&'static str, &'static str),
}

impl<H: AskHandler> AskLink<H> {
    /// Start `handler` on a thread of its own (through [`Runner`], unpinned). `names`: the
    /// owner's role and what the agent is, for the error when it is gone.
    pub fn start(names: (&'static str, &'static str), handler: H) -> Result<Self, AgentError> {
        let (ask_tx, ask_rx) = crossbeam::channel::unbounded();
        let (ans_tx, ans_rx) = crossbeam::channel::unbounded();
        let stop = StopFlag::new();
        let spec = RunSpec::unpinned(IdleStrategy::Block { wait_us: 100_000 });
        let agent = AskAgent { handler, asks: Inbox::new(ask_rx), answers: ans_tx };
        let handle = Runner::start(spec, stop.clone(), agent)?;
        Ok(AskLink { asks: Some(ask_tx), answers: ans_rx, handle: Some(handle), stop, names })
    }

    /// Hand the agent one ask (never blocks). An error when it is gone, with why it stopped.
    pub fn send(&mut self, ask: H::Ask) -> Result<(), AgentError> {
        if self.asks.as_ref().is_some_and(|tx| tx.send(ask).is_ok()) {
            return Ok(());
        }
        Err(self.why_gone())
    }

    /// The next answer, if one has come (never blocks). An error when the agent stopped
    /// without being told to.
    pub fn answer(&mut self) -> Result<Option<H::Answer>, AgentError> {
        match self.answers.try_recv() {
            Ok(a) => Ok(Some(a)),
            Err(crossbeam::channel::TryRecvError::Empty) => Ok(None),
            Err(crossbeam::channel::TryRecvError::Disconnected) => Err(self.why_gone()),
        }
    }

    fn why_gone(&mut self) -> AgentError {
        let why = match self.handle.take().map(|h| h.join()) {
            Some(Err(e)) => e.to_string(),
            Some(Ok(_)) => "it ended".to_string(),
            None => "it was stopped".to_string(),
        };
        let (owner, what) = self.names;
        AgentError::Fatal { role: owner.into(), message: format!("{what} stopped: {why}") }
    }

    /// Stop the agent once the ask in flight (if any) is done (it finishes once it has seen
    /// every ask), and wait for it; its last answer, if one was still unread.
    pub fn close(&mut self) -> Option<H::Answer> {
        self.asks = None;
        if let Some(h) = self.handle.take() {
            if let Err(e) = h.join() {
                crate::diag!("{}: {e}", self.names.0);
            }
        }
        self.stop.stop();
        self.answers.try_iter().last()
    }
}

impl<H: AskHandler> Drop for AskLink<H> {
    fn drop(&mut self) {
        self.asks = None;
        self.stop.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Countdown {
        left: usize,
        idles: usize,
        blocked_every: usize,
        blocked_waits: usize,
    }

    fn countdown(left: usize) -> Countdown {
        Countdown { left, idles: 0, blocked_every: 0, blocked_waits: 0 }
    }

    impl Agent for Countdown {
        fn role(&self) -> &str {
            "countdown"
        }
        fn do_work(&mut self) -> Result<Step, AgentError> {
            if self.left == 0 {
                return Ok(Step::Finished(0));
            }
            self.left -= 1;
            if self.blocked_every > 0 && self.left.is_multiple_of(self.blocked_every) {
                return Ok(Step::Blocked(1));
            }
            Ok(Step::Worked(self.left % 2))
        }
        fn idle_wait(&mut self, _timeout: Duration) {
            self.idles += 1;
        }
        fn blocked_wait(&mut self, timeout: Duration) {
            self.blocked_waits += 1;
            std::thread::sleep(timeout);
        }
    }

    /// A test agent: a role and what `do_work` does.
    struct FnAgent<F>(&'static str, F);

    impl<F: FnMut() -> Result<Step, AgentError> + Send> Agent for FnAgent<F> {
        fn role(&self) -> &str {
            self.0
        }
        fn do_work(&mut self) -> Result<Step, AgentError> {
            (self.1)()
        }
    }

    #[test]
    fn runs_until_finished_and_idles_through_agent() {
        let mut a = countdown(100);
        let c = AgentCounters::default();
        run_agent(&mut a, IdleStrategy::Block { wait_us: 1 }, &StopFlag::new(), &c).expect("runs");
        assert_eq!(a.left, 0);
        assert_eq!(a.idles, 50, "every idle step goes through idle_wait");
        let s = c.snapshot("countdown");
        assert_eq!((s.work, s.idle_rounds), (50, 50));
        assert!(s.cpu_ns > 0 && s.wall_ns > 0, "{s:?}");
    }

    #[test]
    fn the_items_of_the_finishing_round_are_counted() {
        // An agent whose last round both works and finishes (a reader draining the end of
        // stream): its items count, as a Worked round's do.
        let mut rounds = 0;
        let mut a = FnAgent("finisher", move || {
            rounds += 1;
            Ok(if rounds < 3 { Step::Worked(10) } else { Step::Finished(7) })
        });
        let c = AgentCounters::default();
        run_agent(&mut a, IdleStrategy::Spin, &StopFlag::new(), &c).expect("runs");
        assert_eq!(c.snapshot("finisher").work, 27);
    }

    #[test]
    fn back_pressure_is_waited_out_and_timed() {
        let mut a = countdown(10);
        a.blocked_every = 5;
        let c = AgentCounters::default();
        run_agent(&mut a, IdleStrategy::Block { wait_us: 200 }, &StopFlag::new(), &c).expect("runs");
        assert_eq!(a.blocked_waits, 2);
        let s = c.snapshot("countdown");
        assert_eq!(s.blocked_rounds, 2);
        assert!(s.blocked_ns >= 400_000, "two waits of 200 µs are counted: {s:?}");
    }

    #[test]
    fn busy_is_taken_over_the_last_interval_not_the_whole_run() {
        // Before: busy was CPU over the whole run's wall time, so a reader busy for its first
        // minutes still said 8 % two minutes after its feed stopped.
        let c = AgentCounters::default();
        c.mark_interval(5_000_000_000);
        assert_eq!(c.snapshot("r").interval_busy, None, "not started: nothing to mark");
        c.started_ns.store(1_000_000_000, Relaxed);
        c.ended_ns.store(1_000_000_000 + 1, Relaxed); // a fixed wall time for the run's share
        assert_eq!(c.snapshot("r").recent_busy(), 0.0, "no interval yet: the run's share so far");
        c.cpu_ns.store(500_000_000, Relaxed);
        c.mark_interval(2_000_000_000);
        assert_eq!(c.snapshot("r").interval_busy, Some(0.5), "the first interval runs from the start");
        c.cpu_ns.store(800_000_000, Relaxed);
        c.mark_interval(3_000_000_000);
        assert_eq!(c.snapshot("r").interval_busy, Some(0.3));
        c.mark_interval(4_000_000_000);
        c.ended_ns.store(4_000_000_000, Relaxed);
        let s = c.snapshot("r");
        assert_eq!((s.interval_busy, s.recent_busy()), (Some(0.0), 0.0), "idle interval: 0, whatever came before");
        assert!((s.busy_fraction() - 800.0 / 3000.0).abs() < 1e-9, "the run's share stays for the report");
        // Marked through the list the collector holds, and never above 1.
        let shared = Arc::new(AgentCounters::default());
        shared.started_ns.store(1, Relaxed);
        shared.cpu_ns.store(10, Relaxed);
        let marks = IntervalMarks::default();
        marks.watch(shared.clone());
        marks.mark(6);
        assert_eq!(shared.snapshot("w").interval_busy, Some(1.0));
    }

    #[test]
    fn stop_flag_stops_before_work() {
        let stop = StopFlag::new();
        stop.stop();
        let mut a = countdown(10);
        run_agent(&mut a, IdleStrategy::Spin, &stop, &AgentCounters::default()).expect("runs");
        assert_eq!(a.left, 10);
    }

    #[test]
    fn pinning_to_missing_core_is_an_error() {
        let err = pin_current_thread(100_000).expect_err("no such core");
        assert!(err.contains("100000"), "{err}");
    }

    #[test]
    fn the_thread_is_named_from_the_role_and_the_agent_comes_back() {
        let named = FnAgent("named-agent", || {
            assert_eq!(std::thread::current().name(), Some("named-agent"));
            Ok(Step::Finished(0))
        });
        let h = Runner::start(RunSpec::unpinned(IdleStrategy::Spin), StopFlag::new(), named).expect("start");
        assert_eq!(h.role(), "named-agent");
        let back = h.join().expect("joined");
        assert_eq!(back.role(), "named-agent");
    }

    #[test]
    fn a_failing_or_panicking_agent_stops_the_others() {
        for panics in [false, true] {
            let failing = FnAgent("failing", move || {
                if panics {
                    panic!("do_work panicked on purpose");
                }
                Err(AgentError::Fatal { role: "failing".into(), message: "no".into() })
            });
            let stop = StopFlag::new();
            let h = Runner::start(RunSpec::unpinned(IdleStrategy::Spin), stop.clone(), failing).expect("start");
            let err = h.join().err().expect("fails");
            assert!(stop.is_stopped());
            if panics {
                assert!(err.to_string().contains("do_work panicked on purpose"), "{err}");
            }
        }
    }

    #[test]
    fn tasks_run_on_a_named_thread_and_report_panics() {
        let name = Runner::task("a-task", None, || std::thread::current().name().map(str::to_string))
            .expect("start")
            .join()
            .expect("joined");
        assert_eq!(name.as_deref(), Some("a-task"));
        let err = Runner::task("a-task", None, || -> u8 { panic!("boom") }).expect("start").join();
        assert!(err.expect_err("fails").to_string().contains("boom"));
    }

    #[test]
    fn live_agents_are_listed() {
        let stop = StopFlag::new();
        let s = stop.clone();
        let waits =
            FnAgent("listed-agent", move || Ok(if s.is_stopped() { Step::Finished(0) } else { Step::Worked(0) }));
        let h = Runner::start(RunSpec::unpinned(IdleStrategy::Block { wait_us: 100 }), StopFlag::new(), waits)
            .expect("start");
        assert!(Runner::agents().iter().any(|a| a.role == "listed-agent"));
        stop.stop();
        h.join().expect("joined");
    }

    #[test]
    fn an_inbox_keeps_what_a_wait_caught_and_closes_when_drained() {
        let (tx, rx) = crossbeam::channel::bounded(4);
        let mut inbox = Inbox::new(rx);
        assert_eq!(inbox.next(), None);
        inbox.wait(Duration::from_micros(100));
        assert_eq!(inbox.next(), None, "nothing came");
        tx.send(1).expect("send");
        inbox.wait(Duration::from_secs(5));
        tx.send(2).expect("send");
        drop(tx);
        assert_eq!(inbox.next(), Some(1), "the item the wait caught comes first");
        assert!(!inbox.is_closed(), "not closed while items remain");
        assert_eq!(inbox.next(), Some(2));
        assert_eq!(inbox.next(), None);
        assert!(inbox.is_closed());
    }

    #[test]
    fn idle_names_parse() {
        assert_eq!(IdleStrategy::from_name("spin"), Some(IdleStrategy::Spin));
        assert!(IdleStrategy::from_name("nap").is_none());
        // The name reads back as the strategy it came from (clone-bench passes it to the
        // clone-server processes it starts).
        for name in IdleStrategy::NAMES.split(", ") {
            let idle = IdleStrategy::from_name(name).expect(name);
            assert_eq!((idle.name(), IdleStrategy::from_name(idle.name())), (name, Some(idle)));
        }
    }
}
