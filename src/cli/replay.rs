//! `mdsub replay`: the paced publisher's command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::args::{parse_count_usize, parse_duration, parse_endpoint, Endpoint, How};
use super::feed::{FeedArgs, PublisherArgs};
use super::{expected_msgs, progress_bar};
use crate::agent::StopFlag;
use crate::replay::{Pacing, Publisher, PublisherConfig, Source};

/// `mdsub replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Endpoint to bind, `bind:EP` or `EP`, one per shard (repeat the flag for more shards).
    #[arg(long, value_parser = parse_endpoint, default_value = "tcp://127.0.0.1:5556", value_name = "[bind:]EP")]
    pub endpoint: Vec<Endpoint>,
    /// Replay a capture file (from `mdsub tap --record`) instead of generating.
    #[arg(long = "from")]
    pub from: Option<PathBuf>,
    /// With --from: give mdsub data frames this publisher's own sequences and
    /// fresh intended send times (so latency is measured from now); without it
    /// frames go out byte for byte, keeping their recorded publisher, session
    /// and send time.
    #[arg(long, requires = "from")]
    pub restamp: bool,
    /// With --from: keep the recorded gaps between frames instead of --rate.
    #[arg(long, requires = "from")]
    pub recorded_timing: bool,
    #[command(flatten)]
    pub feed: FeedArgs,
    #[command(flatten)]
    pub publisher: PublisherArgs,
    /// Publisher id of shard 0 (shard k uses ID+k). Give every publisher that
    /// feeds the same subscriber its own range: sessions of one id are taken
    /// for restarts of one publisher.
    #[arg(long, default_value_t = 0)]
    pub publisher_id: u32,
    /// Subscribers to wait for on every shard before sending (0: do not wait).
    #[arg(long, value_parser = parse_count_usize, default_value = "1", value_name = "COUNT")]
    pub subscribers: usize,
    /// Give up if the subscribers have not connected by then (e.g. 30s).
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    pub wait_timeout: Duration,
    /// Print the replay's numbers as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `mdsub replay`: bind, wait for subscribers, publish.
pub fn replay(args: &ReplayArgs, stop: &StopFlag) -> anyhow::Result<()> {
    let endpoints = Endpoint::all_only(&args.endpoint, How::Bind, "--endpoint")?;
    let cfg = PublisherConfig {
        endpoints,
        sndhwm_msgs: args.publisher.sndhwm_msgs,
        lossless: !args.publisher.lossy,
        publisher_id_base: args.publisher_id,
    };
    let ctx = zmq::Context::new();
    let mut publisher = Publisher::bind(&ctx, &cfg)?;
    for (k, ep) in publisher.endpoints().iter().enumerate() {
        println!("bound shard{k} {ep}");
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    if args.subscribers > 0 {
        eprintln!("waiting for {} subscriber(s) per shard…", args.subscribers);
        publisher.wait_for_subscribers(args.subscribers, args.wait_timeout)?;
    }
    let source = match &args.from {
        Some(path) => Source::Capture { path: path.clone(), restamp: args.restamp },
        None => Source::Generator(args.feed.generator()),
    };
    let pacing = if args.recorded_timing { Pacing::Recorded } else { args.feed.pacing(None) };
    let limits = args.feed.limits(if args.from.is_some() { None } else { Some(Duration::from_secs(10)) });
    let pb = progress_bar(expected_msgs(pacing, limits), "replay");
    let stats = publisher.run(&source, pacing, limits, stop, &mut |n| pb.set_position(n))?;
    pb.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!(
            "sent {} messages in {:.3} s ({:.0} msg/s){}; per shard {:?}",
            stats.sent_total,
            stats.elapsed_s,
            stats.sent_total as f64 / stats.elapsed_s.max(1e-9),
            if stats.interrupted { " (interrupted)" } else { "" },
            stats.sent_per_shard
        );
    }
    Ok(())
}
