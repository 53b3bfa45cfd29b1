//! The few libzmq features the `zmq` crate (0.10) does not expose, behind a
//! safe face, plus endpoint helpers shared by every socket owner.

use std::os::raw::{c_int, c_void};

/// libzmq socket option numbers (zmq.h, 4.3.x) that have no setter in the crate.
const ZMQ_XPUB_NODROP: c_int = 69;

fn set_int_option(socket: &mut zmq::Socket, option: c_int, value: c_int) -> zmq::Result<()> {
    // SAFETY: the socket pointer is valid for the socket's lifetime, the option
    // value is a plain int of the size we pass, and libzmq copies it.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            option,
            &value as *const c_int as *const c_void,
            std::mem::size_of::<c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: zmq_errno only reads thread-local errno.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

/// ZMQ_XPUB_NODROP: an XPUB that would drop at the HWM returns EAGAIN instead,
/// so a publisher can wait and send again (lossless back-pressure).
pub fn set_xpub_nodrop(socket: &mut zmq::Socket, on: bool) -> zmq::Result<()> {
    set_int_option(socket, ZMQ_XPUB_NODROP, on as c_int)
}

/// Bind `socket` to `endpoint` and return the endpoint actually bound (so
/// `tcp://127.0.0.1:*` comes back with its port).
pub fn bind_resolved(socket: &zmq::Socket, endpoint: &str) -> zmq::Result<String> {
    socket.bind(endpoint)?;
    match socket.get_last_endpoint()? {
        Ok(s) => Ok(s),
        Err(_) => Ok(endpoint.to_string()),
    }
}

/// Check the shape of a ZeroMQ endpoint (`tcp://host:port`, `ipc://path`,
/// `inproc://name`); returns a human reason when it is malformed.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| {
        format!("endpoint `{endpoint}` has no transport (expected tcp://host:port, ipc://path or inproc://name)")
    })?;
    match scheme {
        "tcp" => {
            // tcp://[source;]host:port
            let target = rest.rsplit(';').next().unwrap_or(rest);
            let (host, port) = target.rsplit_once(':').ok_or_else(|| format!("endpoint `{endpoint}` has no port"))?;
            if host.is_empty() {
                return Err(format!("endpoint `{endpoint}` has no host"));
            }
            if port != "*" && port.parse::<u16>().is_err() {
                return Err(format!("endpoint `{endpoint}` has a bad port `{port}`"));
            }
            Ok(())
        }
        "ipc" | "inproc" if !rest.is_empty() => Ok(()),
        "ipc" | "inproc" => Err(format!("endpoint `{endpoint}` has an empty name")),
        other => Err(format!("endpoint `{endpoint}` uses unsupported transport `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodrop_sets_on_xpub_and_fails_on_sub() {
        let ctx = zmq::Context::new();
        let mut xpub = ctx.socket(zmq::XPUB).expect("xpub");
        set_xpub_nodrop(&mut xpub, true).expect("xpub takes NODROP");
        let mut sub = ctx.socket(zmq::SUB).expect("sub");
        assert!(set_xpub_nodrop(&mut sub, true).is_err(), "SUB rejects an XPUB option");
    }

    #[test]
    fn bind_resolves_wildcard_port() {
        let ctx = zmq::Context::new();
        let s = ctx.socket(zmq::PUB).expect("pub");
        let ep = bind_resolved(&s, "tcp://127.0.0.1:*").expect("bind");
        assert!(ep.starts_with("tcp://127.0.0.1:") && !ep.ends_with('*'), "{ep}");
    }

    #[test]
    fn endpoint_shapes() {
        assert!(check_endpoint("tcp://127.0.0.1:5556").is_ok());
        assert!(check_endpoint("tcp://eth0;10.0.0.1:5556").is_ok());
        assert!(check_endpoint("tcp://127.0.0.1:*").is_ok());
        assert!(check_endpoint("inproc://x").is_ok());
        assert!(check_endpoint("127.0.0.1:5556").is_err());
        assert!(check_endpoint("tcp://127.0.0.1:99999").is_err());
        assert!(check_endpoint("tcp://127.0.0.1").is_err());
        assert!(check_endpoint("udp://x:1").is_err());
    }
}
