//! The stamp every benchmark result carries: machine, cores, CPU model, libzmq version, commit and date.

use serde::Serialize;

/// Where and what a benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub libzmq: String,
    /// Which optional libzmq capabilities this build has (`zmq_has`), e.g. `draft curve ipc`.
    pub libzmq_has: String,
    pub mdsub_commit: String,
    pub date_utc: String,
}

impl Machine {
    /// Describe this host and build, now.
    pub fn here() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let (a, b, c) = zmq::version();
        Machine {
            cores: crate::host::cores().len(),
            cpu,
            libzmq: format!("{a}.{b}.{c}"),
            libzmq_has: libzmq_capabilities()
                .iter()
                .filter(|(_, has)| *has)
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(" "),
            mdsub_commit: env!("MDSUB_COMMIT").to_string(),
            date_utc: utc_now(),
        }
    }
}

/// The optional capabilities libzmq reports through `zmq_has`, each with
/// whether this build has it. mdsub's own build (the workspace's `zmq-sys`)
/// has `draft` and `curve`; `ipc` and `tipc` depend on the platform.
pub fn libzmq_capabilities() -> [(&'static str, bool); 6] {
    ["draft", "curve", "ipc", "tipc", "pgm", "gssapi"].map(|name| (name, zmq::has(name).unwrap_or(false)))
}

fn utc_now() -> String {
    let secs = (crate::clock::realtime_ns() / 1_000_000_000) as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: gmtime_r writes into the tm we own.
    if unsafe { libc::gmtime_r(&secs, &mut tm) }.is_null() {
        return "unknown".into();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

impl std::fmt::Display for Machine {
    /// One line: `commit C  DATE  N cores (CPU)  libzmq V`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "commit {}  {}  {} cores ({})  libzmq {} ({})",
            self.mdsub_commit, self.date_utc, self.cores, self.cpu, self.libzmq, self.libzmq_has
        )
    }
}
