//! Agents and their runner: every long-running mdsub thread is an [`Agent`]
//! (Aeron's agent model). A [`Runner`] owns the thread: it names it, pins it
//! to a core, loops `do_work`, and applies the [`IdleStrategy`] when an agent
//! reports no work. Agents never spawn, sleep or pin themselves, so the same
//! agent can be driven by hand on a test thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What one call to [`Agent::do_work`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Processed this many items (0 means idle: the runner applies its idle strategy).
    Worked(usize),
    /// The agent has finished its job (end of stream, stop request seen).
    Finished,
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

    /// Wait up to `timeout` for work to arrive. Agents with a socket override
    /// this with a poll so that an idle agent wakes at once on traffic; the
    /// default sleeps.
    fn idle_wait(&mut self, timeout: Duration) {
        std::thread::sleep(timeout);
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
}

/// Per-thread idle state for the strategy (how many idle rounds in a row).
struct Idler {
    strategy: IdleStrategy,
    idle_rounds: u32,
}

impl Idler {
    fn idle<A: Agent + ?Sized>(&mut self, agent: &mut A) {
        match self.strategy {
            IdleStrategy::Spin => std::hint::spin_loop(),
            IdleStrategy::Yield => std::thread::yield_now(),
            IdleStrategy::Block { wait_us } => agent.idle_wait(Duration::from_micros(wait_us)),
            IdleStrategy::Backoff { max_wait_us } => {
                self.idle_rounds = self.idle_rounds.saturating_add(1);
                if self.idle_rounds <= 10 {
                    for _ in 0..(1u32 << self.idle_rounds.min(6)) {
                        std::hint::spin_loop();
                    }
                } else if self.idle_rounds <= 20 {
                    std::thread::yield_now();
                } else {
                    agent.idle_wait(Duration::from_micros(max_wait_us));
                }
            }
        }
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

/// Drive `agent` on the current thread until it finishes, fails, or `stop` is set.
pub fn run_agent<A: Agent + ?Sized>(agent: &mut A, idle: IdleStrategy, stop: &StopFlag) -> Result<(), AgentError> {
    let mut idler = Idler { strategy: idle, idle_rounds: 0 };
    let result = loop {
        if stop.is_stopped() {
            break Ok(());
        }
        match agent.do_work() {
            Ok(Step::Worked(0)) => idler.idle(agent),
            Ok(Step::Worked(_)) => idler.reset(),
            Ok(Step::Finished) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    agent.on_close();
    result
}

/// Spawns, names and pins agent threads.
pub struct Runner;

impl Runner {
    /// Spawn `agent` on a new thread named after its role, pinned per `spec`.
    /// The agent is built *on* the new thread by `make`, so sockets it creates
    /// (and libzmq I/O threads started by them) inherit the pinning. If the
    /// agent fails or panics, `stop` is set so the threads that depend on it
    /// stop too instead of waiting for it forever.
    pub fn spawn<A, F>(
        name: &str,
        spec: RunSpec,
        stop: StopFlag,
        make: F,
    ) -> std::io::Result<JoinHandle<Result<(), AgentError>>>
    where
        A: Agent + 'static,
        F: FnOnce() -> Result<A, AgentError> + Send + 'static,
    {
        let role = name.to_string();
        std::thread::Builder::new().name(role.clone()).spawn(move || {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if let Some(core) = spec.core {
                    pin_current_thread(core).map_err(|message| AgentError::Fatal { role: role.clone(), message })?;
                }
                let mut agent = make()?;
                run_agent(&mut agent, spec.idle, &stop)
            }));
            let result = run.unwrap_or_else(|_| Err(AgentError::Fatal { role, message: "panicked".into() }));
            if result.is_err() {
                stop.stop();
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Countdown {
        left: usize,
        idles: usize,
    }

    impl Agent for Countdown {
        fn role(&self) -> &str {
            "countdown"
        }
        fn do_work(&mut self) -> Result<Step, AgentError> {
            if self.left == 0 {
                return Ok(Step::Finished);
            }
            self.left -= 1;
            Ok(Step::Worked(self.left % 2))
        }
        fn idle_wait(&mut self, _timeout: Duration) {
            self.idles += 1;
        }
    }

    #[test]
    fn runs_until_finished_and_idles_through_agent() {
        let mut a = Countdown { left: 100, idles: 0 };
        run_agent(&mut a, IdleStrategy::Block { wait_us: 1 }, &StopFlag::new()).expect("runs");
        assert_eq!(a.left, 0);
        assert_eq!(a.idles, 50, "every idle step goes through idle_wait");
    }

    #[test]
    fn stop_flag_stops_before_work() {
        let stop = StopFlag::new();
        stop.stop();
        let mut a = Countdown { left: 10, idles: 0 };
        run_agent(&mut a, IdleStrategy::Spin, &stop).expect("runs");
        assert_eq!(a.left, 10);
    }

    #[test]
    fn pinning_to_missing_core_is_an_error() {
        let err = pin_current_thread(100_000).expect_err("no such core");
        assert!(err.contains("100000"), "{err}");
    }

    #[test]
    fn a_failing_agent_stops_the_others() {
        let stop = StopFlag::new();
        let h = Runner::spawn("failing", RunSpec { core: None, idle: IdleStrategy::Spin }, stop.clone(), || {
            Err::<Countdown, _>(AgentError::Fatal { role: "failing".into(), message: "no".into() })
        })
        .expect("spawn");
        assert!(h.join().expect("joined").is_err());
        assert!(stop.is_stopped());
        let stop = StopFlag::new();
        let h = Runner::spawn("panicking", RunSpec { core: None, idle: IdleStrategy::Spin }, stop.clone(), || {
            if stop_never() {
                return Ok(Countdown { left: 0, idles: 0 });
            }
            panic!("agent construction panicked")
        })
        .expect("spawn");
        assert!(h.join().expect("joined").is_err());
        assert!(stop.is_stopped());
    }

    fn stop_never() -> bool {
        std::env::var_os("MDSUB_NEVER_SET_THIS").is_some()
    }

    #[test]
    fn idle_names_parse() {
        assert_eq!(IdleStrategy::from_name("spin"), Some(IdleStrategy::Spin));
        assert!(IdleStrategy::from_name("nap").is_none());
    }
}
