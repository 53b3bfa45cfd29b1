//! libzmq's failed handshakes, as its socket monitor reports them: the one classifier of a
//! failure's event and protocol-error code, and the one table of what each kind means to a
//! person, at the side that connected (a link, `link::Reason`) and at the server that refused
//! it (`security::Refusal`). Numbers only: no socket, so the cores use it too.

/// How a ZMTP handshake failed, from the monitor's event and its value (libzmq 4.3.5,
/// `ZMQ_EVENT_HANDSHAKE_FAILED_*` and `ZMQ_PROTOCOL_ERROR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The connection ended during the handshake with no reason from libzmq.
    NoDetail,
    /// The peer broke the ZMTP handshake otherwise (not a ZeroMQ peer, a bad greeting).
    Protocol,
    /// A protocol failure whose code is `ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH`: the
    /// peer's greeting names another security mechanism (CURVE against NULL, either way).
    MechanismMismatch,
    /// A protocol failure whose code says the CURVE handshake did not decrypt
    /// (`..._ZMTP_CRYPTOGRAPHIC`, `..._ZMTP_KEY_EXCHANGE`): most often a wrong server key.
    Crypto,
    /// Refused by the server's ZAP handler (`HANDSHAKE_FAILED_AUTH`).
    Auth,
}

/// Which end of the handshake reads the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The socket that connected: mdsub re-establishes the link while it fails.
    Client,
    /// The server socket that refused the peer.
    Server,
}

impl HandshakeFailure {
    /// The failure a monitor event says, if it says one: `event` is a `ZMQ_EVENT_*`, `value`
    /// its value (a protocol error's code).
    pub fn of_event(event: u64, value: Option<u64>) -> Option<HandshakeFailure> {
        let code = value.and_then(|v| u32::try_from(v).ok());
        Some(match u32::try_from(event).ok()? {
            zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL => HandshakeFailure::NoDetail,
            zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH => HandshakeFailure::Auth,
            zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL => match code {
                Some(zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) => HandshakeFailure::MechanismMismatch,
                Some(
                    zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC | zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE,
                ) => HandshakeFailure::Crypto,
                _ => HandshakeFailure::Protocol,
            },
            _ => return None,
        })
    }

    /// What it means, for the log line, read at `side` by a socket that uses CURVE (`curve`:
    /// a client that presents keys, a server that demands them) or not. At a client the link
    /// is one libzmq gave up on: mdsub keeps re-establishing it.
    pub fn explain(self, side: Side, curve: bool) -> &'static str {
        use HandshakeFailure::*;
        match (side, self, curve) {
            (Side::Client, Protocol | Crypto, _) => {
                "the peer broke the ZMTP handshake (is it a ZeroMQ peer?); libzmq gives up, mdsub \
                 re-establishes the link (backing off to once every 30 s while it keeps failing)"
            }
            (Side::Client, MechanismMismatch, true) => {
                "the peer uses another security mechanism: this side presents CURVE keys and the \
                 server does not speak CURVE. That will not fix itself: give the server --curve-key, \
                 or leave --curve-key and --server-key out here. mdsub keeps re-establishing the \
                 link, backing off to once every 30 s"
            }
            (Side::Client, MechanismMismatch, false) => {
                "the peer uses another security mechanism: the server demands CURVE and this side \
                 presents no keys. That will not fix itself: give --server-key (the server's NAME.pub) \
                 and --curve-key (this side's NAME.key). mdsub keeps re-establishing the link, backing \
                 off to once every 30 s"
            }
            (Side::Client, Auth, true) => {
                "authentication refused: the server does not allow this client's key (or the server key \
                 given is not the server's). That will not fix itself: give a key the server allows. mdsub \
                 keeps re-establishing the link, backing off to once every 30 s"
            }
            (Side::Client, Auth, false) => {
                "authentication refused: the server's access rules do not let this client in (its \
                 address is not on the server's allow-list). That will not fix itself. mdsub keeps \
                 re-establishing the link, backing off to once every 30 s"
            }
            (Side::Client, NoDetail, true) => {
                "the handshake failed and libzmq gave no reason and gave up (with CURVE, most often a \
                 --server-key that is not the server's public key, or a server without CURVE); mdsub \
                 re-establishes the link, backing off to once every 30 s while it keeps failing"
            }
            (Side::Client, NoDetail, false) => {
                "the handshake failed and libzmq gave no reason and gave up: the peer ended the \
                 connection during the handshake (most often it is no ZeroMQ peer); mdsub \
                 re-establishes the link, backing off to once every 30 s while it keeps failing"
            }
            (Side::Server, MechanismMismatch, true) => {
                "the client presents no CURVE keys and this server demands CURVE: it needs --server-key \
                 (this server's NAME.pub) and --curve-key"
            }
            (Side::Server, MechanismMismatch, false) => {
                "the client presents CURVE keys and this server does not demand CURVE: leave them out \
                 there, or give this server --curve-key"
            }
            (Side::Server, Crypto, _) => {
                "its CURVE handshake did not decrypt: most often its --server-key is not this server's \
                 public key (or its key file's public key is not its secret key's)"
            }
            (Side::Server, Protocol, _) => {
                "it broke the ZMTP handshake: it is no ZeroMQ peer, or its socket type cannot talk to \
                 this socket's (libzmq ends such a peer itself)"
            }
            // The two ends read each other's greeting at once: a client without keys that reads
            // this server's CURVE greeting first hangs up before this end reads its own.
            // A peer whose socket type this socket cannot talk to is not one of these: libzmq
            // ends it (mechanism.cpp, `check_socket_type`: EINVAL) with no handshake event at
            // all, only the connection's end, which `security::HandshakeLedger` counts under
            // `Protocol` (above).
            (Side::Server, NoDetail, true) => {
                "the connection ended during the handshake: a client without CURVE keys that read this \
                 server's CURVE greeting first, a port check, or a peer that gave up"
            }
            (Side::Server, NoDetail, false) => {
                "the connection ended during the handshake: a port check, or a peer that gave up"
            }
            (Side::Server, Auth, _) => "its ZAP handler refused it",
        }
    }
}

/// A connection libzmq could not accept on a bound endpoint (`ZMQ_EVENT_ACCEPT_FAILED`, its
/// value the `accept()` errno). libzmq 4.3.5 leaves the connection pending and tries again at
/// once (tcp_listener.cpp: "TODO: Handle specific errors like ENFILE/EMFILE"), so while the cause
/// holds its I/O thread spins and the monitor says this again and again: a count of attempts,
/// not of peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptFailure {
    pub errno: i32,
}

impl AcceptFailure {
    /// The reason it is counted and said under.
    pub const REASON: &'static str = "accept_failed";

    /// The failure a monitor event says, if it is one: `event` a `ZMQ_EVENT_*`, `value` its value.
    pub fn of_event(event: u64, value: Option<u64>) -> Option<AcceptFailure> {
        (event == u64::from(zmq_sys::ZMQ_EVENT_ACCEPT_FAILED))
            .then(|| AcceptFailure { errno: value.and_then(|v| i32::try_from(v).ok()).unwrap_or(0) })
    }

    /// What it means, for the log line, with this process's descriptor limit (`nofile`, the
    /// soft RLIMIT_NOFILE, when known).
    pub fn explain(self, nofile: Option<u64>) -> String {
        let name = errno_name(self.errno);
        let spin = "libzmq leaves the connection pending and tries again at once, so its I/O thread \
                    spins (a CPU) until the cause goes; the connections open are served on";
        match self.errno {
            libc::EMFILE => {
                let limit = nofile.map_or_else(|| "its limit".to_string(), |n| format!("its limit of {n}"));
                format!(
                    "accept() failed: {name}: this process has used up its file descriptors ({limit}, \
                     RLIMIT_NOFILE): {spin}. Raise the limit (`ulimit -n`, systemd's LimitNOFILE=) or \
                     find who holds so many connections open"
                )
            }
            libc::ENFILE => format!(
                "accept() failed: {name}: the system has used up its file descriptors (fs.file-max): {spin}. \
                 Raise fs.file-max or find who holds so many open"
            ),
            libc::ENOBUFS | libc::ENOMEM => format!("accept() failed: {name}: out of memory for sockets: {spin}"),
            _ => format!("accept() failed: {name}: {spin}"),
        }
    }
}

/// The soft limit on this process's file descriptors (RLIMIT_NOFILE), if it has one.
pub fn nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// An errno as its symbolic name and the system's words (`EMFILE (Too many open files)`).
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPERM => "EPERM",
        _ => return format!("errno {errno} ({})", std::io::Error::from_raw_os_error(errno)),
    };
    let words = std::io::Error::from_raw_os_error(errno).to_string();
    let words = words.split(" (os error").next().unwrap_or_default();
    format!("{name} ({words})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_event_and_code() {
        let protocol = zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL as u64;
        let code = |c: u32| Some(u64::from(c));
        let of = HandshakeFailure::of_event;
        assert_eq!(
            of(protocol, code(zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)),
            Some(HandshakeFailure::MechanismMismatch)
        );
        assert_eq!(of(protocol, code(zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)), Some(HandshakeFailure::Crypto));
        assert_eq!(of(protocol, code(zmq_sys::ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE)), Some(HandshakeFailure::Crypto));
        assert_eq!(of(protocol, None), Some(HandshakeFailure::Protocol));
        assert_eq!(of(protocol, Some(u64::MAX)), Some(HandshakeFailure::Protocol));
        let no_detail = zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL as u64;
        assert_eq!(of(no_detail, None), Some(HandshakeFailure::NoDetail));
        assert_eq!(of(zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH as u64, None), Some(HandshakeFailure::Auth));
        assert_eq!(of(zmq_sys::ZMQ_EVENT_CONNECTED as u64, None), None);
        assert_eq!(of(u64::MAX, None), None);
    }

    /// Before: a server's no-detail failure still named a socket-type mismatch, which libzmq
    /// ends with no handshake event (counted under `handshake_failed_protocol`, whose words
    /// name it): docs/REFUSALS.md and the text disagreed.
    #[test]
    fn a_socket_type_mismatch_is_named_under_protocol_not_no_detail() {
        use HandshakeFailure::*;
        for curve in [false, true] {
            let no_detail = NoDetail.explain(Side::Server, curve);
            assert!(!no_detail.contains("socket type"), "{no_detail}");
            assert!(no_detail.contains("a port check, or a peer that gave up"), "{no_detail}");
            assert!(Protocol.explain(Side::Server, curve).contains("its socket type cannot talk to"));
        }
        assert!(NoDetail.explain(Side::Server, true).contains("without CURVE keys"));
    }

    #[test]
    fn an_accept_out_of_descriptors_names_the_limit_and_the_spin() {
        let accept_failed = u64::from(zmq_sys::ZMQ_EVENT_ACCEPT_FAILED);
        let f = AcceptFailure::of_event(accept_failed, Some(libc::EMFILE as u64)).expect("an accept failure");
        let said = f.explain(Some(256));
        assert!(said.starts_with("accept() failed: EMFILE (Too many open files): this process"), "{said}");
        assert!(said.contains("its limit of 256, RLIMIT_NOFILE") && said.contains("I/O thread spins"), "{said}");
        let system = AcceptFailure { errno: libc::ENFILE }.explain(None);
        assert!(system.contains("ENFILE") && system.contains("fs.file-max"), "{system}");
        assert_eq!(AcceptFailure::of_event(u64::from(zmq_sys::ZMQ_EVENT_DISCONNECTED), Some(0)), None);
        assert!(nofile_limit().is_some_and(|n| n > 0));
    }
}
