//! The text of a ZeroMQ endpoint: a tcp endpoint's parts (`tcp://[SOURCE;]HOST:PORT`) and the
//! one spelling of the publisher it reaches. String-only (no socket, no lookup), so the cores
//! ([`crate::link::core`]) and profile checks use it alike; checking an endpoint's shape is
//! [`crate::zmqx::check_endpoint`].

/// The parts of a tcp endpoint, `tcp://[SOURCE;]HOST:PORT`: the source (with its port) if it
/// names one, and `HOST:PORT`; None for another transport.
pub fn tcp_parts(endpoint: &str) -> Option<(Option<&str>, &str)> {
    let rest = endpoint.strip_prefix("tcp://")?;
    Some(match rest.rsplit_once(';') {
        Some((source, target)) => (Some(source), target),
        None => (None, rest),
    })
}

/// The host of `HOST:PORT` (an IPv6 address without its brackets).
pub fn host_of(host_port: &str) -> &str {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// The publisher `endpoint` reaches, in one spelling, to tell whether two endpoints are the
/// same publisher: a tcp endpoint's `HOST:PORT` without its source (two sources to one
/// `HOST:PORT` reach one publisher), an address in its canonical form, a name in lower case
/// (a name and its address are not matched: that would take a DNS lookup); other transports
/// as written.
pub fn publisher_of(endpoint: &str) -> String {
    let Some((_, target)) = tcp_parts(endpoint) else { return endpoint.to_string() };
    let port = target.rsplit_once(':').map_or("", |(_, p)| p);
    let port = port.parse::<u16>().map_or_else(|_| port.to_string(), |p| p.to_string());
    let host = host_of(target);
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    };
    format!("tcp://{host}:{port}")
}

/// Whether binding `a` and `b` in one process takes one address twice, so the second bind
/// fails (`Address already in use`) or, on ipc, takes the path from the first (libzmq removes
/// the file it finds there): tcp endpoints on one port whose hosts are the same or either is
/// every interface (`*`, `0.0.0.0`, `[::]`), a port `*` or `0` (any free one) never; other
/// transports when written alike. The one check of the engine's binds and replay's endpoints.
pub fn binds_clash(a: &str, b: &str) -> bool {
    let parts = |ep: &str| {
        let canonical = publisher_of(ep);
        let (host, port) = canonical.strip_prefix("tcp://")?.rsplit_once(':')?;
        Some((host.to_string(), port.to_string()))
    };
    match (parts(a), parts(b)) {
        (Some((ha, pa)), Some((hb, pb))) => {
            let any = |h: &str| matches!(h, "*" | "0.0.0.0" | "[::]");
            pa == pb && pa != "*" && pa != "0" && (ha == hb || any(&ha) || any(&hb))
        }
        (None, None) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_binds_clash_on_one_address() {
        for (a, b) in [
            ("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5556"),
            ("tcp://127.0.0.1:5556", "tcp://127.0.0.1:05556"),
            ("tcp://*:5556", "tcp://127.0.0.1:5556"),
            ("tcp://10.0.0.1:7", "tcp://0.0.0.0:7"),
            ("tcp://[::1]:7", "tcp://[0::1]:7"),
            ("tcp://Host:7", "tcp://host:7"),
            ("ipc:///tmp/md", "ipc:///tmp/md"),
        ] {
            assert!(binds_clash(a, b) && binds_clash(b, a), "{a} {b}");
        }
        for (a, b) in [
            ("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557"),
            ("tcp://127.0.0.1:*", "tcp://127.0.0.1:*"),
            ("tcp://127.0.0.1:0", "tcp://127.0.0.1:0"),
            ("tcp://127.0.0.1:7", "tcp://127.0.0.2:7"),
            ("ipc:///tmp/a", "ipc:///tmp/b"),
            ("ipc:///tmp/a", "tcp://127.0.0.1:7"),
        ] {
            assert!(!binds_clash(a, b), "{a} {b}");
        }
    }

    #[test]
    fn one_publisher_has_one_spelling() {
        assert_eq!(tcp_parts("tcp://nicA:0;10.0.0.1:5556"), Some((Some("nicA:0"), "10.0.0.1:5556")));
        assert_eq!(tcp_parts("tcp://10.0.0.1:5556"), Some((None, "10.0.0.1:5556")));
        assert_eq!(tcp_parts("ipc:///tmp/x"), None);
        assert_eq!(host_of("[fe80::1]:0"), "fe80::1");
        assert_eq!(host_of("nicA:0"), "nicA");
        let one = publisher_of("tcp://10.0.0.1:5556");
        // Two sources to one HOST:PORT are one publisher; so are two spellings of one address.
        for same in ["tcp://10.91.1.2:0;10.0.0.1:5556", "tcp://nicB:0;10.0.0.1:05556"] {
            assert_eq!(publisher_of(same), one, "{same}");
        }
        assert_eq!(publisher_of("tcp://[0:0::1]:5"), publisher_of("tcp://[::1]:5"));
        assert_eq!(publisher_of("tcp://Feed.Example:5"), publisher_of("tcp://feed.example:5"));
        assert_ne!(publisher_of("tcp://10.0.0.1:5557"), one);
        assert_eq!(publisher_of("ipc:///tmp/x"), "ipc:///tmp/x");
    }
}
