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
            (Side::Server, Protocol, _) => "it broke the ZMTP handshake (is it a ZeroMQ peer?)",
            // The two ends read each other's greeting at once: a client without keys that reads
            // this server's CURVE greeting first hangs up before this end reads its own.
            (Side::Server, NoDetail, true) => {
                "it ended the connection during the handshake (a client without CURVE keys that read \
                 this server's CURVE greeting first, a port check, or a peer that gave up)"
            }
            (Side::Server, NoDetail, false) => {
                "it ended the connection during the handshake (a port check, or a peer that gave up)"
            }
            (Side::Server, Auth, _) => "its ZAP handler refused it",
        }
    }
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
}
