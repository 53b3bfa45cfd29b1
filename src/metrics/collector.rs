//! The metrics collector agent (`metrics`): adds up the per-interval
//! histograms workers ship over a crossbeam channel and hands each emptied
//! set back to its worker (the double buffer: nothing is copied or allocated
//! per interval). It ends when every worker has dropped its sender.

use std::collections::BTreeMap;
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};

use super::StageHistograms;
use crate::agent::{Agent, AgentError, Inbox, Step};

/// What a worker sends to the collector.
pub struct WorkerReport {
    pub worker: usize,
    pub stages: StageHistograms,
    /// The handler's counters (final report only).
    pub handler_counters: Vec<(&'static str, u64)>,
    /// The handler's end-report lines (final report only).
    pub handler_summary: Vec<String>,
}

/// What the collector has added up.
#[derive(Default)]
pub struct Collected {
    pub stages: StageHistograms,
    pub handler: BTreeMap<String, u64>,
    /// The handlers' end-report lines, worker after worker.
    pub handler_summary: Vec<String>,
    /// Reports received.
    pub reports: u64,
}

/// The collector agent; [`Collector::into_collected`] after it ends.
pub struct Collector {
    inbox: Inbox<WorkerReport>,
    spares: Vec<Sender<StageHistograms>>,
    total: Collected,
}

impl Collector {
    /// Collect from `rx`; `spares[w]` hands emptied sets back to worker `w`.
    pub fn new(rx: Receiver<WorkerReport>, spares: Vec<Sender<StageHistograms>>) -> Self {
        Collector { inbox: Inbox::new(rx), spares, total: Collected::default() }
    }

    fn take(&mut self, mut r: WorkerReport) {
        self.total.stages.add(&r.stages);
        self.total.reports += 1;
        for (k, v) in r.handler_counters.drain(..) {
            *self.total.handler.entry(k.to_string()).or_default() += v;
        }
        self.total.handler_summary.append(&mut r.handler_summary);
        r.stages.reset();
        if let Some(back) = self.spares.get(r.worker) {
            // Full or gone: the worker allocates nothing more, it keeps counting.
            let _ = back.try_send(r.stages);
        }
    }

    pub fn into_collected(self) -> Collected {
        self.total
    }
}

impl Agent for Collector {
    fn role(&self) -> &str {
        "metrics"
    }

    fn do_work(&mut self) -> Result<Step, AgentError> {
        let mut n = 0;
        while let Some(r) = self.inbox.next() {
            self.take(r);
            n += 1;
        }
        Ok(if self.inbox.is_closed() { Step::Finished } else { Step::Worked(n) })
    }

    fn idle_wait(&mut self, timeout: Duration) {
        self.inbox.wait(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{run_agent, AgentCounters, IdleStrategy, StopFlag};

    #[test]
    fn adds_up_hands_sets_back_and_ends_when_workers_are_gone() {
        let (tx, rx) = crossbeam::channel::bounded(4);
        let (back_tx, back_rx) = crossbeam::channel::bounded(2);
        let mut c = Collector::new(rx, vec![back_tx]);
        for i in 0..3u64 {
            let mut stages = StageHistograms::default();
            stages.record(1_000 + i, 10, 2_000);
            tx.send(WorkerReport {
                worker: 0,
                stages,
                handler_counters: vec![("seen", 2)],
                handler_summary: Vec::new(),
            })
            .expect("send");
        }
        drop(tx);
        run_agent(&mut c, IdleStrategy::Block { wait_us: 1_000 }, &StopFlag::new(), &AgentCounters::default())
            .expect("runs");
        let total = c.into_collected();
        assert_eq!((total.stages.count(), total.reports), (3, 3));
        assert_eq!(total.handler.get("seen"), Some(&6));
        let back = back_rx.try_recv().expect("a set came back");
        assert_eq!(back.count(), 0, "emptied before it goes back");
    }
}
