//! Lib tests that start processes, kept apart from lib tests a process started beside them
//! would break (built for tests only).
//!
//! A child process holds a copy of every descriptor of this process from its fork to its exec
//! (every one is close-on-exec: gone once it runs exec). A file lock is the open file's, so one
//! a test beside it just dropped is still held for that moment, and a test that takes it again
//! is refused now and then. [`spawn`] starts a child with [`FORKS`] held to write; a test whose
//! assertion such a moment could break (it drops a file lock, an output's claim or a clone
//! store's data dir, and takes it again, or checks which process holds one) holds it to read
//! for its whole run ([`no_fork`]). One lock for the whole lib test binary: any test may fork
//! beside any other.

use std::process::{Child, Command};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

/// Held to write while a test starts a child ([`spawn`]), to read by the tests a fork beside
/// them would break ([`no_fork`]).
static FORKS: RwLock<()> = RwLock::new(());

/// [`FORKS`] to read, for a test's whole run: no process is started meanwhile. Taken once per
/// test (a second read behind a waiting writer would wait for ever).
pub(crate) fn no_fork() -> RwLockReadGuard<'static, ()> {
    FORKS.read().unwrap_or_else(PoisonError::into_inner)
}

/// `cmd.spawn()`, with [`FORKS`] held to write for the spawn alone: std's spawn returns once the
/// child has run exec (or failed to), when its copies of this process's descriptors are closed.
pub(crate) fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let _forking = FORKS.write().unwrap_or_else(PoisonError::into_inner);
    cmd.spawn()
}
