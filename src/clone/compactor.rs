//! The clone server's compactor: the snapshot rewrite of a compaction, off the serving thread.
//!
//! A compaction rewrote the whole map into `snapshot` on the server's one thread: about 1.3 s at
//! 1M keys of 100-byte values on the development machine (170 MB, most of it the write and its
//! fsync), growing with the map, during which the server sent no Binary Star heartbeat (its peer
//! waits two heartbeats, 2 s by default), no HUGZ (clients fail over after `--silence`, 2 s) and
//! published nothing. Now the serving thread only moves the log aside
//! ([`super::persist::Store::rotate`], a rename and a new file, whatever the map's size) and
//! asks this agent, on a thread of its own (through [`Runner`]), to fold the old segment into
//! the snapshot ([`super::persist::compact_prev`]), which reads only files. The answer
//! ([`Compaction`]) is fed to the server's core, which counts and says a failure like any failed
//! snapshot write. At most one compaction is in flight: the core asks for the next only once
//! this one is answered.

use std::path::PathBuf;
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};

use super::persist::{compact_prev, Compacted};
use crate::agent::{Agent, AgentError, AgentHandle, IdleStrategy, Inbox, RunSpec, Runner, Step, StopFlag};

/// One compaction done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// How long it took (the compactor's clock).
    pub took_ns: u64,
    /// What it wrote (`None`: there was no segment to fold), or why it failed.
    pub result: Result<Option<Compacted>, String>,
}

/// The agent: folds `DIR/log.prev` into `DIR/snapshot` each time it is asked (with the wall
/// clock of the ask, in ms since the epoch: values whose deadline passed by then are left out).
pub struct Compactor {
    dir: PathBuf,
    asks: Inbox<u64>,
    answers: Sender<Compaction>,
}

impl Agent for Compactor {
    fn role(&self) -> &str {
        "clone-compactor"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        match self.asks.next() {
            Some(wall_ms) => {
                let t0 = crate::clock::monotonic_ns();
                let result = compact_prev(&self.dir, wall_ms).map_err(|e| e.to_string());
                let took_ns = crate::clock::monotonic_ns().saturating_sub(t0);
                // The server gone (it stops by closing the asks): nothing to tell.
                let _ = self.answers.send(Compaction { took_ns, result });
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

/// The server's end of its compactor.
pub struct CompactorLink {
    asks: Option<Sender<u64>>,
    answers: Receiver<Compaction>,
    handle: Option<AgentHandle<Compactor>>,
    stop: StopFlag,
}

impl CompactorLink {
    /// Start the compactor of the data directory `dir` on its own thread.
    pub fn start(dir: PathBuf) -> Result<CompactorLink, AgentError> {
        let (ask_tx, ask_rx) = crossbeam::channel::unbounded();
        let (ans_tx, ans_rx) = crossbeam::channel::unbounded();
        let agent = Compactor { dir, asks: Inbox::new(ask_rx), answers: ans_tx };
        let stop = StopFlag::new();
        let spec = RunSpec::unpinned(IdleStrategy::Block { wait_us: 100_000 });
        let handle = Runner::start(spec, stop.clone(), agent)?;
        Ok(CompactorLink { asks: Some(ask_tx), answers: ans_rx, handle: Some(handle), stop })
    }

    /// Ask for one compaction at wall time `wall_ms` (never blocks). An error when the compactor
    /// is gone, with why it stopped.
    pub fn ask(&mut self, wall_ms: u64) -> Result<(), AgentError> {
        if self.asks.as_ref().is_some_and(|tx| tx.send(wall_ms).is_ok()) {
            return Ok(());
        }
        Err(self.why_gone())
    }

    /// The next answer, if one has come (never blocks).
    pub fn answer(&mut self) -> Result<Option<Compaction>, AgentError> {
        match self.answers.try_recv() {
            Ok(c) => Ok(Some(c)),
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
        AgentError::Fatal {
            role: "clone-server".into(),
            message: format!("the data directory's compactor stopped: {why}"),
        }
    }

    /// Stop the compactor once the compaction in flight (if any) is done, and wait for it; its
    /// last answer, if one was still unread. (Not waiting would be safe too: a start finishes
    /// an interrupted compaction.)
    pub fn close(&mut self) -> Option<Compaction> {
        self.asks = None;
        if let Some(h) = self.handle.take() {
            if let Err(e) = h.join() {
                crate::diag!("clone-server: {e}");
            }
        }
        self.stop.stop();
        self.answers.try_iter().last()
    }
}

impl Drop for CompactorLink {
    fn drop(&mut self) {
        self.asks = None;
        self.stop.stop();
    }
}
