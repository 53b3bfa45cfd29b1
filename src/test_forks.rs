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

/// Run the lib test `name` again, alone, in a child process with `env` set to `1` (the test's
/// child part: what this process cannot watch or must not do, e.g. read its own stderr, lower its
/// own limits), and wait for its end, 30 s at most (then ended by its pid): its exit status
/// (`None` when it took longer), stdout and stderr. The child writes them to files, read after
/// its end: a pipe would stop a child that writes more than the pipe holds (64 KiB) until the
/// kill, as nothing reads it meanwhile.
pub(crate) fn rerun_test_in_child(name: &str, env: &str) -> (Option<std::process::ExitStatus>, String, String) {
    let file = |stream: &str| std::env::temp_dir().join(format!("mdsub-test-{}-{name}.{stream}", std::process::id()));
    let (out_path, err_path) = (file("stdout"), file("stderr"));
    let create = |p: &std::path::Path| std::fs::File::create(p).expect("the child's output file");
    let mut child = spawn(
        std::process::Command::new(std::env::current_exe().expect("the test binary"))
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(env, "1")
            .stdout(create(&out_path))
            .stderr(create(&err_path)),
    )
    .expect("the child");
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20)); // polling the child's exit, bounded above
    };
    let take = |p: &std::path::Path| {
        let text = std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let _ = std::fs::remove_file(p);
        text
    };
    (status, take(&out_path), take(&err_path))
}
