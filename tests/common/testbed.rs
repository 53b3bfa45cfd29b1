//! Two hosts on one machine (tools/testbed.sh: network namespaces joined by veth pairs), for
//! the tests of real network paths: a NIC per shard and faults on a path (tests/nic.rs), a host
//! that vanishes without a close (tests/vanish.rs). Needs root (CI runs as root); without it,
//! or without `ip`, [`Testbed::up`] says why the test skipped.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{LineProc, Proc};

pub const TESTBED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/testbed.sh");

/// The publisher namespace's feed address (on its loopback, reached over either path).
pub const FEED: &str = "10.91.9.1";

/// The subscriber namespace's address on path A (`nicA`).
pub const SUB_A: &str = "10.91.1.2";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// One testbed (two namespaces), removed when dropped.
pub struct Testbed {
    pub name: String,
    pub sub_ns: String,
    pub pub_ns: String,
    pub dir: std::path::PathBuf,
}

pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Testbed {
    /// Build a testbed with a name unique to this process and test, or say
    /// why not (and return None).
    pub fn up(test: &str) -> Option<Testbed> {
        // SAFETY: geteuid only reads the process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            skip(test, "needs root for network namespaces (CI runs as root)");
            return None;
        }
        if !have("ip") {
            skip(test, "needs `ip` (Debian package iproute2; tools/ci-setup.sh installs it)");
            return None;
        }
        let name = format!("mdsnic{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(TESTBED).args(["up", &name]).output().expect("running tools/testbed.sh");
        if !out.status.success() {
            skip(test, &format!("tools/testbed.sh up failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            return None;
        }
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Some(Testbed { sub_ns: format!("{name}-s"), pub_ns: format!("{name}-p"), name, dir })
    }

    /// `mdsub ARGS` inside namespace `ns` (`ip netns exec` execs it: the pid is mdsub's).
    pub fn mdsub(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_mdsub")]).args(args);
        c
    }

    /// A replay publisher in the publisher namespace on the feed address; returns once bound.
    pub fn replay(&self, port: u16, args: &[&str]) -> LineProc {
        let ep = format!("tcp://{FEED}:{port}");
        let mut all = vec!["replay", "--endpoint", &ep, "--json"];
        all.extend_from_slice(args);
        let p = LineProc::spawn_with_stderr(&format!("replay:{port}"), &mut self.mdsub(&self.pub_ns.clone(), &all));
        super::bound_endpoints(&p, 1);
        p
    }

    /// A profile with one shard per (port, interface), written to the temp dir.
    pub fn profile(&self, shards: &[(u16, &str)], extra: &str) -> String {
        let mut t = format!("name = \"testbed\"\nallow_shared_cores = true\nhandler = \"verify\"\n{extra}\n");
        for (port, nic) in shards {
            t += &format!("[[shards]]\nendpoints = [\"tcp://{FEED}:{port}\"]\ninterface = \"{nic}\"\n");
        }
        t += "[[workers]]\n";
        let path = self.dir.join("profile.toml");
        std::fs::write(&path, t).expect("writing the profile");
        path.to_string_lossy().into_owned()
    }

    /// Start the engine in the subscriber namespace (ended by the caller).
    pub fn engine(&self, profile: &str) -> Proc {
        self.engine_flags(profile, &[])
    }

    /// [`Testbed::engine`] with more flags.
    pub fn engine_flags(&self, profile: &str, flags: &[&str]) -> Proc {
        Proc::spawn(
            "engine",
            self.mdsub(&self.sub_ns, &["engine", "--profile", profile, "--json"])
                .args(flags)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    }

    /// `tools/testbed.sh ARGS`, which must succeed.
    pub fn tool(&self, args: &[&str]) {
        let out = Command::new(TESTBED).args(args).output().expect("running tools/testbed.sh");
        assert!(out.status.success(), "testbed.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Bytes received on the subscriber's nicA and nicB.
    pub fn rx_bytes(&self) -> (u64, u64) {
        let read = |nic: &str| -> u64 {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.sub_ns, "cat", &format!("/sys/class/net/{nic}/statistics/rx_bytes")])
                .output()
                .expect("reading counters");
            String::from_utf8_lossy(&out.stdout).trim().parse().expect("a byte count")
        };
        (read("nicA"), read("nicB"))
    }

    /// `ns`'s host vanishes, as one powered off or whose cable is pulled: from now on every
    /// packet into or out of it but on its loopback is dropped (nftables), so its peers hear
    /// nothing more, no FIN and no RST, and what they send is never answered. Until
    /// [`Testbed::reappear`].
    pub fn vanish(&self, ns: &str) {
        self.nft(
            ns,
            "table inet mdsub_vanish {
                chain in { type filter hook input priority 0; policy accept; iifname != \"lo\" counter drop; }
                chain out { type filter hook output priority 0; policy accept; oifname != \"lo\" counter drop; }
            }",
        );
    }

    /// `ns`'s host is back on the network: what [`Testbed::vanish`] dropped passes again.
    pub fn reappear(&self, ns: &str) {
        self.nft(ns, "delete table inet mdsub_vanish");
    }

    /// Packets dropped in `ns` since it vanished, both ways.
    pub fn vanished_packets(&self, ns: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "list", "table", "inet", "mdsub_vanish"])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("counter packets ").skip(1).filter_map(|t| t.split_whitespace().next()?.parse::<u64>().ok()).sum()
    }

    fn nft(&self, ns: &str, script: &str) {
        let mut nft = Command::new("ip");
        nft.args(["netns", "exec", ns, "nft", "-f", "-"]);
        let (code, _, err) =
            super::run_fed_within("nft", &mut nft, script.as_bytes(), std::time::Duration::from_secs(20));
        assert_eq!(code, Some(0), "nft in {ns}: {err}");
    }

    /// Run `f` in namespace `ns`, on a thread of its own that entered it (a network namespace is
    /// a thread's): what it starts there (a library client's threads and sockets, libzmq's I/O
    /// threads) stays there.
    pub fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                // SAFETY: setns moves the calling thread alone into the namespace the open file names.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "entering {ns}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the thread in the namespace")
        })
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = Command::new(TESTBED).args(["down", &self.name]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
