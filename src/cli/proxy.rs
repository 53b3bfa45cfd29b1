//! The flags every XSUB ⇄ XPUB proxy command shares (`mdsub lvc`, `mdsub tap`).

use clap::Args;

use super::args::{parse_bytes_i64, parse_endpoint, parse_hwm, Endpoint, How, Idle};
use crate::proxy::{Delivery, ProxyConfig};

/// `--delivery`: what the proxy does when a subscriber's queue is full.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryArg {
    /// Wait for the subscriber (back-pressure to the publishers, ZMQ_XPUB_NODROP): nothing is lost;
    /// right when every subscriber is your own and keeps up on average.
    Lossless,
    /// Drop the message for the subscribers it was meant for and count it (dropped_full=):
    /// a slow subscriber never holds back the others or the publishers.
    Lossy,
}

impl DeliveryArg {
    pub fn delivery(self) -> Delivery {
        match self {
            DeliveryArg::Lossless => Delivery::Lossless,
            DeliveryArg::Lossy => Delivery::Lossy,
        }
    }
}

/// Endpoints, socket limits and idle strategy of a proxy (flattened into its command).
#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Publisher side (XSUB): bind:EP, connect:EP or EP (binds); repeatable.
    #[arg(long, required = true, value_parser = parse_endpoint, value_name = "[bind:|connect:]EP")]
    pub frontend: Vec<Endpoint>,
    /// Subscriber side (XPUB, verbose): bind:EP, connect:EP or EP (binds); repeatable.
    #[arg(long, required = true, value_parser = parse_endpoint, value_name = "[bind:|connect:]EP")]
    pub backend: Vec<Endpoint>,
    /// SNDHWM and RCVHWM of both proxy sockets, in messages (0 = unlimited).
    // `lvc` and `tap` each say why the default is high, in their own words (`mut_arg`).
    #[arg(long, value_parser = parse_hwm, default_value = "100k", value_name = "COUNT")]
    pub hwm_msgs: i32,
    /// Largest message accepted from the publishers, bytes (ZMQ_MAXMSGSIZE:
    /// a larger one drops that publisher's connection, as libzmq does; on a
    /// side that connects, libzmq would not reconnect: mdsub logs it, counts
    /// it in the exit line's `links` and connects again; on a side that binds,
    /// libzmq says only that the connection ended: mdsub logs each end and
    /// counts it in `publisher_disconnects=`).
    #[arg(long, value_parser = parse_max_msg_bytes, default_value = "1Mi", value_name = "BYTES")]
    pub max_msg_bytes: i64,
    /// Idle strategy of the proxy's threads.
    #[arg(long, value_enum, default_value_t = Idle::Backoff)]
    pub idle: Idle,
    /// When a subscriber's queue (--hwm-msgs) is full: `lossless` waits and pushes back on the
    /// publishers (blocked= counts the waits); `lossy` drops the message and counts it
    /// (dropped_full=). Both counters are in the exit line.
    #[arg(long, value_enum, default_value_t = DeliveryArg::Lossless)]
    pub delivery: DeliveryArg,
}

/// `--max-msg-bytes`: at least 1. libzmq reads 0 as "only empty messages", so every publisher
/// was dropped at its first message (a connecting side then re-established again and again, said
/// as a protocol error of the link, never as this flag).
fn parse_max_msg_bytes(s: &str) -> Result<i64, String> {
    match parse_bytes_i64(s)? {
        0 => Err("at least 1: with 0 libzmq drops every publisher at its first message".into()),
        n => Ok(n),
    }
}

impl ProxyArgs {
    /// Refuse (a usage error, before anything binds) a proxy wired to itself: a frontend bound
    /// where its backend connects, or a backend bound where its frontend connects. Its XSUB and
    /// XPUB would be each other's peer: subscriptions and data go round the proxy. Only what is
    /// sure from the words is seen: the same endpoint, or a tcp port bound on every address
    /// (`*`, `0.0.0.0`) and connected to at a loopback address (`127.x.x.x`, `localhost`), or
    /// bound on 127.0.0.1 and connected to there (`localhost` for either). A loop through
    /// another proxy, or through this host's other addresses or names, cannot be seen here.
    pub fn check_loop(&self, command: &str) -> Result<(), super::UsageError> {
        let sides = [("--frontend", &self.frontend), ("--backend", &self.backend)];
        for (i, (bound_flag, bound)) in sides.iter().enumerate() {
            let (connect_flag, connects) = sides[1 - i];
            for b in bound.iter().filter(|e| e.how != Some(How::Connect)) {
                for c in connects.iter().filter(|e| e.how == Some(How::Connect)) {
                    if same_place(&b.endpoint, &c.endpoint) {
                        return Err(super::UsageError(format!(
                            "{bound_flag} {b} and {connect_flag} {c} are one endpoint: the {command} would \
                             connect to itself and its subscriptions and data would go round; give the \
                             {connect_flag} the endpoint of another server"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The proxy shell's configuration (a bare endpoint binds).
    pub fn to_config(&self) -> ProxyConfig {
        ProxyConfig {
            frontend: self.frontend.iter().map(|e| e.attach(How::Bind)).collect(),
            backend: self.backend.iter().map(|e| e.attach(How::Bind)).collect(),
            hwm_msgs: self.hwm_msgs,
            max_msg_bytes: self.max_msg_bytes,
            idle: self.idle.strategy(),
            delivery: self.delivery.delivery(),
        }
    }
}

/// A socket bound at `bound` surely accepts a connection to `connected`: the same endpoint, or
/// tcp on one numeric port with the bound host every address (`*`, `0.0.0.0`) and the connected
/// one a loopback address (`127.x.x.x`, `localhost`), or both 127.0.0.1 (`localhost`). One bound
/// on 127.0.0.1 alone is not reached at 127.0.0.2: another server may be bound there on the same
/// port (hosts played by loopback addresses). `false` when unsure.
fn same_place(bound: &str, connected: &str) -> bool {
    if bound == connected {
        return true;
    }
    let host_port = |e: &str| -> Option<(String, u16)> {
        let (host, port) = e.strip_prefix("tcp://")?.rsplit_once(':')?;
        Some((host.to_ascii_lowercase(), port.parse().ok()?))
    };
    let (Some((bhost, bport)), Some((chost, cport))) = (host_port(bound), host_port(connected)) else {
        return false;
    };
    let loopback = |h: &str| h == "localhost" || h.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback());
    let local = |h: &str| matches!(h, "127.0.0.1" | "localhost");
    bport == cport
        && match bhost.as_str() {
            "*" | "0.0.0.0" => loopback(&chost),
            h => local(h) && local(&chost),
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        proxy: ProxyArgs,
    }

    fn check(args: &[&str]) -> Result<(), String> {
        let cmd = Cmd::try_parse_from(std::iter::once("lvc").chain(args.iter().copied())).expect("parses");
        cmd.proxy.check_loop("lvc").map_err(|e| e.0)
    }

    /// Before: `mdsub lvc --frontend tcp://*:5556 --backend connect:tcp://127.0.0.1:5556` ran,
    /// its XPUB a peer of its own XSUB, subscriptions and data going round.
    #[test]
    fn a_proxy_wired_to_itself_is_refused_and_what_is_unsure_is_let_through() {
        // (frontend, backend, surely a loop)
        let cases = [
            ("tcp://*:5556", "connect:tcp://127.0.0.1:5556", true),
            ("bind:tcp://0.0.0.0:5556", "connect:tcp://localhost:5556", true),
            ("tcp://127.0.0.1:5556", "connect:tcp://127.0.0.1:5556", true),
            ("bind:tcp://localhost:5556", "connect:tcp://127.0.0.1:5556", true),
            ("tcp://*:5556", "connect:tcp://127.0.0.2:5556", true),
            // Bound on 127.0.0.1 alone: 127.0.0.2:5556 is another socket's (a valid setup).
            ("bind:tcp://localhost:5556", "connect:tcp://127.0.0.2:5556", false),
            ("tcp://127.0.0.1:5556", "connect:tcp://127.0.0.2:5556", false),
            ("connect:ipc:///tmp/x", "ipc:///tmp/x", true),
            ("tcp://*:5556", "tcp://*:5557", false),
            ("tcp://*:5556", "connect:tcp://127.0.0.1:5557", false),
            ("tcp://*:5556", "connect:tcp://10.0.0.5:5556", false),
            ("tcp://127.0.0.1:*", "connect:tcp://127.0.0.1:5556", false),
            ("tcp://10.0.0.5:5556", "connect:tcp://127.0.0.1:5556", false),
            ("connect:tcp://127.0.0.1:5556", "connect:tcp://127.0.0.1:5556", false),
            ("tcp://*:5556", "tcp://127.0.0.1:5556", false),
        ];
        for (front, back, loops) in cases {
            match check(&["--frontend", front, "--backend", back]) {
                Err(e) => assert!(loops && e.contains("are one endpoint") && e.contains("connect to itself"), "{e}"),
                Ok(()) => assert!(!loops, "{front} {back}: a loop let through"),
            }
        }
        let err = check(&["--frontend", "tcp://*:5556", "--backend", "connect:tcp://127.0.0.1:5556"]).unwrap_err();
        assert!(err.starts_with("--frontend tcp://*:5556 and --backend connect:tcp://127.0.0.1:5556 are one"), "{err}");
        assert!(err.ends_with("give the --backend the endpoint of another server"), "{err}");
    }
}
