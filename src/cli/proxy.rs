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
