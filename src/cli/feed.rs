//! The synthetic feed and publisher flags shared by `mdsub demo`, `replay` and `bench`.

use std::time::Duration;

use clap::Args;

use super::args::{
    parse_bytes_usize, parse_count_nonzero, parse_count_nonzero_usize, parse_duration_nonzero, parse_hwm, parse_rate,
    parse_whole_up_to,
};
use crate::feed::{Generator, GeneratorConfig};
use crate::replay::{Limits, Pacing};
use crate::wire;

/// The synthetic feed and its pacing.
#[derive(Args, Debug, Clone)]
pub struct FeedArgs {
    /// Offered rate in messages per second (e.g. 100k; at most 1000M); 0 = flat out. Default:
    /// 100k for demo, flat out for replay and bench. A rate the publisher cannot reach is said
    /// with what it achieved; --duration still ends the run on time.
    #[arg(long, value_parser = parse_rate, value_name = "COUNT")]
    pub rate: Option<u64>,
    /// Stop after this long (e.g. 5s, 500ms): time elapsed, also when a --rate is out of reach (a
    /// publisher behind its schedule gets a tenth more, at most 1 s, to send what was due).
    /// Default without --count: 3s for demo, 10s for a replay of the generated feed, 2M
    /// messages for bench.
    #[arg(long, value_parser = parse_duration_nonzero, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Stop after this many messages (e.g. 2M; at least 1).
    #[arg(long, value_parser = parse_count_nonzero, value_name = "COUNT")]
    pub count: Option<u64>,
    // True of replay; demo and bench, which feed the engine, say its bound instead
    // (`payload_into_the_engine`).
    /// Payload bytes per message, up to 16Mi (the frame adds the topic, a NUL and the header).
    #[arg(long, value_parser = parse_payload_bytes, default_value = "100", value_name = "BYTES")]
    pub payload_bytes: usize,
    /// Number of symbols (topics), Zipf-popular: 1 to 1048576, and their frames (one per
    /// symbol, built before sending) within 256 MiB.
    #[arg(long, value_parser = parse_symbols, default_value = "100", value_name = "COUNT")]
    pub symbols: usize,
    /// Zipf exponent of symbol popularity (0 = uniform).
    #[arg(long, value_parser = parse_zipf, default_value = "1", value_name = "EXPONENT")]
    pub zipf: f64,
    /// Send in bursts of this many messages sharing one intended send time, at a fixed --rate
    /// (demo's default rate is one; replay and bench refuse --burst flat out, where there are none).
    #[arg(long, value_parser = parse_count_nonzero, default_value = "1", value_name = "COUNT")]
    pub burst: u64,
    /// Generator seed (same seed, same feed).
    #[arg(long, value_parser = parse_seed, default_value = "42", value_name = "SEED")]
    pub seed: u64,
}

/// `--zipf`: a finite exponent, 0 or more (`nan` and `-1` are refused, not fed to the generator).
fn parse_zipf(s: &str) -> Result<f64, String> {
    // Whatever does not parse is refused by the same words as a negative exponent.
    crate::feed::check_zipf(s.trim().parse::<f64>().unwrap_or(f64::NAN))
}

/// `--symbols`: a count from 1 to [`crate::feed::MAX_SYMBOLS`].
pub(crate) fn parse_symbols(s: &str) -> Result<usize, String> {
    crate::feed::check_symbols(parse_count_nonzero_usize(s)?)
}

/// `--payload-bytes`: a size up to [`crate::feed::MAX_PAYLOAD_BYTES`].
pub(crate) fn parse_payload_bytes(s: &str) -> Result<usize, String> {
    crate::feed::check_payload_bytes(parse_bytes_usize(s)?)
}

/// The `--payload-bytes` help of the commands that feed the engine (demo, bench, capacity):
/// their bound is not [`crate::feed::MAX_PAYLOAD_BYTES`] but the profile's `max_msg_bytes`
/// less the frame's topic, NUL and header ([`check_frames_fit`]), said here for the builtin
/// profile and the default `--symbols`.
pub(crate) fn payload_into_the_engine(arg: clap::Arg) -> clap::Arg {
    let max_msg_bytes = crate::engine::defaults::MAX_MSG_BYTES;
    let feed = GeneratorConfig::default();
    let topic = crate::feed::symbol_names(feed.symbols).iter().map(String::len).max().unwrap_or(0);
    let bound = (max_msg_bytes as u64).saturating_sub(wire::frame_len(&vec![b'x'; topic], 0) as u64);
    arg.help(format!(
        "Payload bytes per message: its frame (topic, a NUL, the {}-byte header, the payload) must fit the \
         profile's max_msg_bytes, so at most {bound} with the builtin profile ({}Mi) and {} symbols (less \
         with longer topics); a larger size is refused",
        wire::HEADER_LEN,
        max_msg_bytes >> 20,
        feed.symbols,
    ))
}

/// `--seed`: any 64-bit unsigned number.
fn parse_seed(s: &str) -> Result<u64, String> {
    parse_whole_up_to(s, u64::MAX)
}

impl FeedArgs {
    /// The generated feed these flags give, refused (a usage error) when it cannot be built
    /// ([`GeneratorConfig::check`]: too many symbols for their payloads).
    pub(crate) fn generator(&self) -> anyhow::Result<GeneratorConfig> {
        let g = GeneratorConfig {
            symbols: self.symbols.max(1),
            zipf_s: self.zipf,
            payload_bytes: self.payload_bytes,
            seed: self.seed,
        };
        g.check().map_err(|e| super::UsageError(format!("--symbols, --payload-bytes: {e}")))?;
        Ok(g)
    }
    /// [`check_frames_fit`] for this feed.
    pub(crate) fn check_fits(&self, max_msg_bytes: i64) -> anyhow::Result<()> {
        check_frames_fit(&self.generator()?, max_msg_bytes)
    }

    pub(crate) fn pacing(&self, default_rate: Option<u64>) -> Pacing {
        match self.rate.or(default_rate) {
            None | Some(0) => Pacing::FlatOut,
            Some(r) => Pacing::Rate { msgs_per_sec: r, burst: self.burst.max(1) },
        }
    }
    pub(crate) fn limits(&self, default_duration: Option<Duration>) -> Limits {
        let duration = if self.count.is_some() { self.duration } else { self.duration.or(default_duration) };
        Limits { max_msgs: self.count, duration }
    }
}

/// Refuse a generated feed whose frames an engine with `max_msg_bytes` (libzmq's
/// ZMQ_MAXMSGSIZE) would refuse: each such frame drops the link instead of arriving, so a
/// run would deliver nothing and never end (demo, bench, capacity).
pub(crate) fn check_frames_fit(feed: &GeneratorConfig, max_msg_bytes: i64) -> anyhow::Result<()> {
    let gen = Generator::new(feed);
    let topic = gen.topics().iter().map(String::len).max().unwrap_or(0);
    let frame = wire::frame_len(&vec![b'x'; topic], feed.payload_bytes);
    if max_msg_bytes >= 0 && frame as u64 > max_msg_bytes as u64 {
        anyhow::bail!(super::UsageError(format!(
            "--payload-bytes {}: frames of up to {frame} bytes (topic, NUL, {}-byte header, payload) are over \
             the engine's max_msg_bytes ({max_msg_bytes}), which would drop the link at each one; send less \
             or raise max_msg_bytes in a profile",
            feed.payload_bytes,
            wire::HEADER_LEN
        )));
    }
    Ok(())
}

/// The publisher's socket settings.
#[derive(Args, Debug, Clone)]
pub struct PublisherArgs {
    /// Publisher send high-water mark per subscriber, in messages (e.g. 100k).
    #[arg(long, value_parser = parse_hwm, default_value = "100k", value_name = "COUNT")]
    pub sndhwm_msgs: i32,
    /// Drop a message for a subscriber whose queue is at the HWM instead of
    /// pushing back; the others still get it. Each message a full queue refused
    /// is counted (`dropped_at_hwm` in the replay's numbers: messages at least one
    /// subscriber missed; with several on their own connections, the full one
    /// then misses more until it drains, which it counts as lost; several behind
    /// one proxy share one queue, dropped for all as with one, unless another
    /// connection is open, even one that subscribed to nothing: libzmq does not
    /// say which connection a subscription came from, so the proxy's later drops
    /// are then missing from the count, and its subscribers count them as gaps)
    /// and the end of stream is always delivered (sent waiting for room, and
    /// again to a subscriber it passed over).
    #[arg(long)]
    pub lossy: bool,
    /// With several shards (endpoints), send each shard's part of the
    /// generated feed from a thread of its own, with a libzmq I/O thread per
    /// shard (not with --from files).
    #[arg(long)]
    pub thread_per_shard: bool,
}
