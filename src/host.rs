//! This host, as the kernel reports it: its name, the cores this process may run on, and
//! whether a name resolves here. A primitive (it imports nothing of mdsub's but the endpoint
//! text): profiles, the engine's report, link lines and the benchmarks' stamp all ask here.

/// This host's name (the kernel's), if it has one.
pub fn name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
}

/// The host's core ids: those this process may run on (its CPU mask).
pub fn cores() -> Vec<usize> {
    core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect()
}

/// Why the host a tcp `endpoint` connects to does not resolve here (`the name H does not
/// resolve: …`), or None: it resolves, it is an address, or the endpoint is no tcp one. A
/// lookup (the resolver's own timeouts): for a link that never came up, not per attempt.
pub fn unresolved(endpoint: &str) -> Option<String> {
    use std::net::ToSocketAddrs as _;
    let (_, target) = crate::endpoint::tcp_parts(endpoint)?;
    let host = crate::endpoint::host_of(target);
    if host == "*" || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    match (host, 0).to_socket_addrs().map(|addrs| addrs.count()) {
        Ok(0) => Some(format!("the name {host} resolves to no address")),
        Ok(_) => None,
        Err(e) => Some(format!("the name {host} does not resolve: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_that_does_not_resolve_is_said_and_addresses_are_not_looked_up() {
        // `.invalid` never resolves (RFC 2606), with or without a resolver to ask.
        let why = super::unresolved("tcp://nohost.invalid:5556").expect("unresolved");
        assert!(why.starts_with("the name nohost.invalid "), "{why}");
        for ok in ["tcp://127.0.0.1:5556", "tcp://*:5556", "tcp://[::1]:5556", "tcp://localhost:5556", "ipc:///x"] {
            assert_eq!(super::unresolved(ok), None, "{ok}");
        }
        assert!(super::unresolved("tcp://127.0.0.1:0;nohost.invalid:5556").is_some(), "the target, not the source");
    }

    #[test]
    fn this_process_runs_on_some_core_of_a_named_host() {
        assert!(!super::cores().is_empty(), "no core in this process's CPU mask");
        assert!(super::name().is_some_and(|n| !n.is_empty() && n == n.trim()), "{:?}", super::name());
    }
}
