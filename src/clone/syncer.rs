//! The clone server's log syncer: the `fdatasync` of the update log, off the serving thread.
//!
//! An `fdatasync` on a busy disk can take seconds (16 s was seen while builds wrote to the same
//! disk). Run on the server's one thread, it stopped everything else: no heartbeat to the peer,
//! no HUGZ, no snapshot served, no update acknowledged, and the Binary Star machine then took its
//! own stall for a pause of the process (`did not run for 16317 ms … (SIGSTOP, a VM pause)`) and
//! held the active server two heartbeats more. Clients with the default `--silence 2s` failed over.
//!
//! The durability promise does not need that thread: an update is acknowledged once its record is
//! handed to the OS (a process crash cannot lose it); the fsync only bounds what a *machine* crash
//! can lose. So the server hands each due sync to this agent over a channel ([`SyncerLink::ask`])
//! and keeps serving; the agent syncs its own handle on the log's file ([`super::persist::Store::log_handle`])
//! and reports how long it took and whether it failed ([`Synced`]), which the server's core counts
//! and says (a sync slower than the fsync interval broke that bound, and is said with its length).
//! At most one sync is in flight: the core asks for the next only once this one is answered.

use std::fs::File;
use std::path::PathBuf;

use crate::agent::{AgentError, AskHandler, AskLink};

/// How the syncer makes the log durable: [`sync_data`] in a server; a test injects one that
/// blocks until it lets it go (a disk that takes seconds to sync).
pub type LogSync = Box<dyn FnMut(&File) -> std::io::Result<()> + Send>;

/// The real sync: `fdatasync` of the log.
pub fn sync_data() -> LogSync {
    Box::new(|f: &File| f.sync_data())
}

/// One sync done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// How long it took (the syncer's clock, around the call).
    pub took_ns: u64,
    /// Why it failed (the file named), if it did.
    pub error: Option<String>,
}

/// What the server asks of its syncer.
pub enum Ask {
    /// Sync the log, and answer.
    Sync,
    /// The log was moved aside for a compaction ([`super::persist::Store::rotate`]): sync this
    /// handle on the new one from now on (the compaction makes the old one durable).
    Follow(File),
}

/// The agent's work: syncs the log each time it is asked, and answers.
pub struct Syncer {
    path: PathBuf,
    file: File,
    op: LogSync,
}

impl AskHandler for Syncer {
    type Ask = Ask;
    type Answer = Synced;

    fn role(&self) -> &str {
        "clone-syncer"
    }

    fn handle(&mut self, ask: Ask) -> Option<Synced> {
        match ask {
            Ask::Follow(file) => {
                self.file = file;
                None
            }
            Ask::Sync => {
                let t0 = crate::clock::monotonic_ns();
                let r = (self.op)(&self.file);
                let took_ns = crate::clock::monotonic_ns().saturating_sub(t0);
                let error = r.err().map(|e| format!("{}: {e} while fsyncing", self.path.display()));
                Some(Synced { took_ns, error })
            }
        }
    }
}

/// The server's end of its syncer: asks out, answers in, the running agent.
pub struct SyncerLink(AskLink<Syncer>);

impl SyncerLink {
    /// Start the syncer of the log at `path` (`file`: its handle) on its own thread (through
    /// [`crate::agent::Runner`]), syncing with `op`.
    pub fn start(path: PathBuf, file: File, op: LogSync) -> Result<SyncerLink, AgentError> {
        let names = ("clone-server", "the update log's syncer");
        AskLink::start(names, Syncer { path, file, op }).map(SyncerLink)
    }

    /// Ask for one sync (never blocks). An error when the syncer is gone, with why it stopped.
    pub fn ask(&mut self) -> Result<(), AgentError> {
        self.0.send(Ask::Sync)
    }

    /// Sync `file` from now on (the new log after [`super::persist::Store::rotate`]); asks made
    /// before are done on the old one.
    pub fn follow(&mut self, file: File) -> Result<(), AgentError> {
        self.0.send(Ask::Follow(file))
    }

    /// The next answer, if one has come (never blocks). An error when the syncer stopped
    /// without being told to.
    pub fn answer(&mut self) -> Result<Option<Synced>, AgentError> {
        self.0.answer()
    }

    /// Stop the syncer once the sync in flight (if any) is done, and wait for it; its last
    /// answer, if one was still unread.
    pub fn close(&mut self) -> Option<Synced> {
        self.0.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn log_file(name: &str) -> (PathBuf, File) {
        let path = crate::test_dir(&format!("syncer-{name}")).join("log");
        (path.clone(), File::create(&path).expect("file"))
    }

    /// Wait (bounded) for the syncer's answer.
    fn answer(link: &mut SyncerLink) -> Synced {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = link.answer().expect("alive") {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "no answer within 10 s");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_sync_is_answered_with_its_length_and_a_failure_with_the_file() {
        let (path, file) = log_file("answer");
        let mut calls = 0;
        let op: LogSync = Box::new(move |f: &File| {
            calls += 1;
            if calls == 2 {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            f.sync_data()
        });
        let mut link = SyncerLink::start(path.clone(), file, op).expect("start");
        link.ask().expect("ask");
        assert_eq!(answer(&mut link).error, None);
        link.ask().expect("ask");
        let e = answer(&mut link).error.expect("the second fails");
        assert!(e.starts_with(&format!("{}: ", path.display())) && e.ends_with("while fsyncing"), "{e}");
        assert_eq!(link.close(), None, "every answer was read");
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
    }

    #[test]
    fn close_waits_for_the_sync_in_flight() {
        let (path, file) = log_file("close");
        let (go_tx, go_rx) = crossbeam::channel::bounded::<()>(1);
        let op: LogSync = Box::new(move |_f: &File| {
            let _ = go_rx.recv_timeout(Duration::from_secs(10));
            Ok(())
        });
        let mut link = SyncerLink::start(path.clone(), file, op).expect("start");
        link.ask().expect("ask");
        go_tx.send(()).expect("let it go");
        let last = link.close().expect("the answer of the sync in flight");
        assert_eq!(last.error, None);
        assert!(link.ask().is_err(), "closed");
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
    }
}
