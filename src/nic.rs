//! This host's NICs: what a shard's `interface` and an endpoint's source name here, checked
//! before anything starts (docs/NIC.md), and whether one is down now (the engine's reader says
//! so for a silent link). Interfaces are read with `getifaddrs`, in the network namespace the
//! engine runs in. A primitive (it imports nothing of mdsub's but the endpoint text):
//! profiles check with it and the engine asks it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::endpoint::{host_of, tcp_parts};

/// Why an IPv6 address never connects: said with every refusal of one.
const IPV4_ONLY: &str = "mdsub connects over IPv4 only (its sockets leave libzmq's ZMQ_IPV6 off, \
                         so libzmq cannot resolve an IPv6 address and the link never comes up)";

/// One address of one of this host's interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub name: String,
    /// None for an interface without an address (listed once).
    pub addr: Option<IpAddr>,
    /// Administratively up (`ip link set NAME up`).
    pub up: bool,
    /// Up with its link working (a carrier: `LOWER_UP`).
    pub running: bool,
}

/// `tcp://host:port` connected from `iface`: libzmq's `tcp://source:0;host:port`
/// (the source needs a port, 0 = any; without one libzmq's connect succeeds
/// and its background resolution fails, so the socket never connects). An
/// interface name is resolved here to its IPv4 address: libzmq would resolve it
/// only in that background connect, where a missing interface fails the same
/// silent way; [`check_interface`] and [`check_connect`] say why before anything starts. An
/// interface with no source here (not on this host: `profile show` of another host's
/// profile), or an endpoint that names its own source, is left as it is.
pub fn with_source(endpoint: &str, iface: &str) -> String {
    let source = match iface.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Some(ip),
        Ok(IpAddr::V6(_)) => None,
        Err(_) => interface_address(iface),
    };
    match (source, tcp_parts(endpoint)) {
        (Some(source), Some((None, target))) => format!("tcp://{source}:0;{target}"),
        _ => endpoint.to_string(),
    }
}

/// The address a connection from interface `name` takes as its source: its first IPv4
/// address (mdsub connects over IPv4 only).
pub fn interface_address(name: &str) -> Option<Ipv4Addr> {
    interfaces().into_iter().filter(|i| i.name == name).find_map(|i| match i.addr {
        Some(IpAddr::V4(v4)) => Some(v4),
        _ => None,
    })
}

/// Every address of every interface of the calling process's network namespace, from
/// `getifaddrs` (an interface without an address appears once with `None`). Unlike
/// `/sys/class/net`, which shows the namespace sysfs was mounted in, this is always the
/// namespace the engine connects from.
pub fn interfaces() -> Vec<IfAddr> {
    let mut out: Vec<IfAddr> = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and then free
    // with freeifaddrs; every pointer is checked for null before use, and a
    // sockaddr is cast by its family to the matching type.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_name.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            let addr = if ifa.ifa_addr.is_null() {
                None
            } else {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                    }
                    _ => None,
                }
            };
            let flags = ifa.ifa_flags;
            let up = flags & libc::IFF_UP as u32 != 0;
            let running = flags & libc::IFF_RUNNING as u32 != 0;
            if addr.is_some() || !out.iter().any(|i| i.name == name) {
                out.push(IfAddr { name, addr, up, running });
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// An IPv6 address as said in a refusal: `fe80::1 (link-local)`.
fn said_v6(ip: Ipv6Addr) -> String {
    if ip.segments()[0] & 0xffc0 == 0xfe80 {
        format!("{ip} (link-local)")
    } else {
        ip.to_string()
    }
}

/// What a shard's `interface` (or an endpoint's source) names: an interface with an IPv4
/// address, or an IPv4 address of this host; otherwise the one-line reason and fix.
pub fn check_interface(iface: &str) -> Result<IpAddr, String> {
    // `fe80::1%eth1`: an address with its scope.
    let address = iface.split_once('%').map_or(iface, |(a, _)| a);
    if let Ok(ip) = address.parse::<IpAddr>() {
        if let IpAddr::V6(v6) = ip {
            return Err(format!("{} is an IPv6 address: {IPV4_ONLY}", said_v6(v6)));
        }
        return match std::net::TcpListener::bind((ip, 0)) {
            Ok(_) => Ok(ip),
            Err(e) => {
                Err(format!("address {ip} is not one of this host's ({e}); name a local address or an interface"))
            }
        };
    }
    let all = interfaces();
    let mine: Vec<&IfAddr> = all.iter().filter(|i| i.name == iface).collect();
    if let Some(v4) = mine.iter().find_map(|i| match i.addr {
        Some(IpAddr::V4(v4)) => Some(v4),
        _ => None,
    }) {
        return Ok(IpAddr::V4(v4));
    }
    if !mine.is_empty() {
        let v6: Vec<String> = mine
            .iter()
            .filter_map(|i| match i.addr {
                Some(IpAddr::V6(v6)) => Some(said_v6(v6)),
                _ => None,
            })
            .collect();
        return Err(if v6.is_empty() {
            format!("interface `{iface}` has no IP address to connect from; give it one (ip addr add) or name another")
        } else {
            format!(
                "interface `{iface}` has no IPv4 address, only {}: {IPV4_ONLY}; give it an IPv4 address (ip addr \
                 add) or name another",
                v6.join(", ")
            )
        });
    }
    // getifaddrs lists an interface once per address: name each once, in its order.
    let mut names: Vec<&str> = Vec::new();
    for i in &all {
        if !names.contains(&i.name.as_str()) {
            names.push(&i.name);
        }
    }
    Err(format!("no interface `{iface}` on this host; use one of {} or an address", names.join(", ")))
}

/// True when `iface` names an interface with an IPv4 address or a local IPv4 address.
pub fn interface_exists(iface: &str) -> bool {
    check_interface(iface).is_ok()
}

/// What keeps a connection to `endpoint` from ever coming up that can be seen before it
/// starts: a source of another address family than the publisher's, an IPv6 address (mdsub
/// connects over IPv4), and, when `this_host` (the host that runs the engine), a source that
/// is no interface or address of it. libzmq takes all of these at `zmq_connect` and fails in
/// its background connect, where nothing is said.
pub fn check_connect(endpoint: &str, this_host: bool) -> Result<(), String> {
    let Some((source, target)) = tcp_parts(endpoint) else { return Ok(()) };
    let address = |host_port: &str| {
        let host = host_of(host_port);
        host.split_once('%').map_or(host, |(a, _)| a).parse::<IpAddr>().ok()
    };
    let (from, to) = (source.and_then(address), address(target));
    if let (Some(from), Some(to)) = (from, to) {
        if from.is_ipv4() != to.is_ipv4() {
            let family = |ip: IpAddr| if ip.is_ipv4() { "an IPv4" } else { "an IPv6" };
            return Err(format!(
                "the source {from} is {} address and the publisher's {to} {} one: a connection cannot go from \
                 one address family to the other; {IPV4_ONLY}",
                family(from),
                family(to)
            ));
        }
    }
    if let Some(IpAddr::V6(v6)) = [to, from].into_iter().flatten().find(IpAddr::is_ipv6) {
        return Err(format!("{} is an IPv6 address: {IPV4_ONLY}", said_v6(v6)));
    }
    match source.map(host_of) {
        Some(host) if this_host && host != "*" => {
            check_interface(host).map(drop).map_err(|m| format!("its source `{host}`: {m}"))
        }
        _ => Ok(()),
    }
}

/// Why a connection from `source` (an interface name or one of its addresses) cannot leave
/// this host now: its interface is down, or up without a link. None when it is up, or when
/// `source` names no interface (the checks say that).
pub fn interface_down(source: &str) -> Option<String> {
    let all = interfaces();
    let ip = source.parse::<IpAddr>().ok();
    let name = &all.iter().find(|i| i.name == source || (ip.is_some() && i.addr == ip))?.name;
    let (up, running) =
        all.iter().filter(|i| i.name == *name).fold((false, false), |(u, r), i| (u || i.up, r || i.running));
    if !up {
        Some(format!("interface {name} is down"))
    } else if !running {
        Some(format!("interface {name} is up but has no link (no carrier)"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_interface_applies_as_source() {
        assert!(interface_exists("lo"));
        assert!(interface_exists("127.0.0.1"));
        assert_eq!(with_source("tcp://10.0.0.1:5", "lo"), "tcp://127.0.0.1:0;10.0.0.1:5");
        assert_eq!(with_source("tcp://10.0.0.1:5", "10.0.0.2"), "tcp://10.0.0.2:0;10.0.0.1:5");
        assert_eq!(interface_address("lo"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(interface_down("lo"), None, "lo is up");
        assert_eq!(interface_down("127.0.0.1"), None, "found by its address");
    }

    #[test]
    fn ipv6_is_refused_with_why() {
        // Before: `::1` was taken as a source, and libzmq (ZMQ_IPV6 off) never connected.
        assert_eq!(with_source("tcp://10.0.0.1:5", "::1"), "tcp://10.0.0.1:5", "no IPv6 source");
        for v6 in ["::1", "fe80::1", "fe80::1%lo"] {
            let why = check_interface(v6).expect_err(v6);
            assert!(why.contains("is an IPv6 address: mdsub connects over IPv4 only"), "{v6}: {why}");
        }
        assert!(check_interface("fe80::1").is_err_and(|m| m.starts_with("fe80::1 (link-local)")));
        // A source of one family to a publisher of the other.
        let why = check_connect("tcp://[fe80::1]:0;127.0.0.1:5556", false).expect_err("mismatch");
        assert!(
            why.starts_with("the source fe80::1 is an IPv6 address and the publisher's 127.0.0.1 an IPv4 one"),
            "{why}"
        );
        assert!(check_connect("tcp://[::1]:5556", false).is_err_and(|m| m.starts_with("::1 is an IPv6 address")));
        assert!(check_connect("tcp://127.0.0.1:0;127.0.0.1:5556", true).is_ok());
        assert!(check_connect("ipc:///tmp/x", true).is_ok());
    }

    #[test]
    fn an_endpoints_source_is_looked_up_on_this_host_only() {
        // Before: taken by zmq_connect and said 5 s later as "nothing answers there".
        let why = check_connect("tcp://nosuchnic7:0;127.0.0.1:5556", true).expect_err("no such interface");
        assert!(why.starts_with("its source `nosuchnic7`: no interface `nosuchnic7` on this host"), "{why}");
        let why = check_connect("tcp://192.0.2.77:0;127.0.0.1:5556", true).expect_err("not this host's");
        assert!(why.starts_with("its source `192.0.2.77`: address 192.0.2.77 is not one of this host's"), "{why}");
        assert!(check_connect("tcp://nosuchnic7:0;127.0.0.1:5556", false).is_ok(), "another host's");
        assert!(check_connect("tcp://lo:0;127.0.0.1:5556", true).is_ok());
    }
}
