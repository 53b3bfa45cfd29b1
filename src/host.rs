//! This host, as the kernel reports it: its name and the cores this process may run on.
//! A primitive (it imports nothing of mdsub's): profiles, the engine's report and the
//! benchmarks' stamp all ask here.

/// This host's name (the kernel's), if it has one.
pub fn name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
}

/// The host's core ids: those this process may run on (its CPU mask).
pub fn cores() -> Vec<usize> {
    core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_runs_on_some_core_of_a_named_host() {
        assert!(!super::cores().is_empty(), "no core in this process's CPU mask");
        assert!(super::name().is_some_and(|n| !n.is_empty() && n == n.trim()), "{:?}", super::name());
    }
}
