//! The clone stack: a CHP key-value store served by a Binary Star pair (Clone pattern, model 6).
//!
//! The guide's Clone pattern, model 6, and its Clustered Hashmap Protocol: an
//! eventually consistent key-value store shared by many clients, served by a Binary Star pair.
//!
//! | module | role |
//! |---|---|
//! | [`kvmsg`] | CHP wire codec (five-frame kvmsg, snapshot requests) |
//! | [`map`] | socket-free map with TTLs and subtrees, recent-UUID set |
//! | [`bstar`] | socket-free Binary Star state machine |
//! | [`persist`] | append-only log + snapshots for `--data-dir` |
//! | [`compactor`] | the server's compaction (snapshot rewrite) on a thread of its own |
//! | [`server_core`] | socket-free server core: pending list, takeover, passive re-sync, TTLs, HUGZ, durability |
//! | [`server`] | the server agent (the shell around [`server_core`]: snapshot ROUTER, PUB, collector SUB, Binary Star sockets, the log) |
//! | [`client_core`] | socket-free client core: phases, failover, re-sync, acks and re-sends |
//! | [`client`] | the client agent (the shell around [`client_core`]) and its application API (`Client`) |

pub mod bstar;
pub mod client;
pub mod client_core;
pub mod compactor;
pub mod kvmsg;
pub mod map;
pub mod persist;
pub mod server;
pub mod server_core;
pub mod syncer;

/// Derive the three CHP endpoints (snapshot P, publisher P+1, collector P+2) from `tcp://host:P`.
pub fn endpoints(base: &str) -> Result<[String; 3], String> {
    crate::zmqx::check_endpoint(base)?;
    let (host, port) = base.rsplit_once(':').ok_or_else(|| format!("server `{base}` has no port"))?;
    let p: u16 =
        port.parse().map_err(|_| format!("server `{base}` needs a numeric port P (P+1 and P+2 are used too)"))?;
    if p > u16::MAX - 3 {
        return Err(format!("server `{base}`: port {p} leaves no room for P+1..P+3"));
    }
    Ok([format!("{host}:{p}"), format!("{host}:{}", p + 1), format!("{host}:{}", p + 2)])
}

/// Ask one server for its status (mdsub extension; not a Binary Star vote).
pub fn server_status(base: &str, timeout: std::time::Duration) -> anyhow::Result<String> {
    server_status_secured(base, timeout, None)
}

/// [`server_status`] of a server that demands CURVE: the request presents `keys`.
pub fn server_status_secured(
    base: &str,
    timeout: std::time::Duration,
    keys: Option<&crate::security::ClientKeys>,
) -> anyhow::Result<String> {
    server_status_or_stop(base, timeout, keys, &crate::agent::StopFlag::new())
}

/// How often a wait for a STATUS reply looks at its stop flag.
const STATUS_STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// [`server_status_secured`] that gives up as soon as `stop` is set (Ctrl-C or SIGTERM while
/// the server has not answered) with [`client::ClientError::Interrupted`]. A signal that
/// interrupts the wait (`EINTR`) is no answer and no error: the wait goes on unless `stop` is set.
pub fn server_status_or_stop(
    base: &str,
    timeout: std::time::Duration,
    keys: Option<&crate::security::ClientKeys>,
    stop: &crate::agent::StopFlag,
) -> anyhow::Result<String> {
    let [snap, _, _] = endpoints(base).map_err(anyhow::Error::msg)?;
    let ctx = zmq::Context::new();
    let d = ctx.socket(zmq::DEALER)?;
    d.set_linger(0)?;
    crate::security::ClientKeys::apply_if(keys, &d)?;
    d.connect(&snap)?;
    d.send(kvmsg::STATUS_REQ, 0)?;
    let end = std::time::Instant::now() + timeout;
    loop {
        if stop.is_stopped() {
            return Err(client::ClientError::Interrupted.into());
        }
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            anyhow::bail!("{base}: no STATUS reply within {}", crate::diag::human_duration_of(timeout));
        }
        let slice = i64::try_from(left.min(STATUS_STOP_CHECK).as_millis()).unwrap_or(i64::MAX).max(1);
        match d.poll(zmq::POLLIN, slice) {
            Ok(0) | Err(zmq::Error::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let frames = d.recv_multipart(0)?;
    match frames.as_slice() {
        [k, text] if k.as_slice() == kvmsg::STATUS_REP => Ok(String::from_utf8_lossy(text).into_owned()),
        _ => anyhow::bail!("{base}: malformed STATUS reply"),
    }
}
