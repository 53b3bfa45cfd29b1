//! `mdsub replay`: the paced publisher's command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::args::{
    parse_bind_endpoint, parse_count, parse_count_usize, parse_duration, parse_whole_up_to, Endpoint, Idle,
};
use super::feed::{FeedArgs, PublisherArgs};
use super::progress::RunBar;
use super::security::ServerAccessArgs;
use super::{position_bar_on, progress_target};

use crate::agent::StopFlag;
use crate::feed::dbn_source::{detect, FileKind};
use crate::replay::faults::FaultPlan;
use crate::replay::{Pacing, Publisher, PublisherConfig, Source};
use crate::wire::capture::Holes;

/// `--publisher-id`: a 32-bit unsigned id.
fn parse_publisher_id(s: &str) -> Result<u32, String> {
    parse_whole_up_to(s, u32::MAX.into()).map(|n| n as u32)
}

/// `--drop-every N`: a count of at least 2 (1 would leave out everything).
fn parse_drop_every(s: &str) -> Result<u64, String> {
    match parse_count(s)? {
        n if n < 2 => Err("N must be at least 2".into()),
        n => Ok(n),
    }
}

/// `--restart-at N`: N at least 1 (before: 0 was taken, a "restart" before anything was sent,
/// whose first session carried nothing and never ended).
fn parse_restart_at(s: &str) -> Result<u64, String> {
    match parse_count(s)? {
        0 => Err("at least 1: a restart at 0, before the first message, is no restart (the first session would \
                  send nothing)"
            .into()),
        n => Ok(n),
    }
}

/// A replay speed: a multiple of the recorded pace, or flat out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    Times(f64),
    Max,
}

impl Speed {
    /// The pacing this speed means.
    pub fn pacing(self) -> Pacing {
        match self {
            Speed::Times(speed) => Pacing::Recorded { speed },
            Speed::Max => Pacing::FlatOut,
        }
    }
}

/// The slowest `--speed`: `1e-300x` was taken and never sent a message.
pub const MIN_SPEED: f64 = 0.001;

/// Parse `1x`, `10x`, `0.5x` or `max`.
pub fn parse_speed(s: &str) -> Result<Speed, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("max") {
        return Ok(Speed::Max);
    }
    match t.strip_suffix(['x', 'X']).map(str::parse::<f64>) {
        Some(Ok(v)) if (MIN_SPEED..).contains(&v) && v.is_finite() => Ok(Speed::Times(v)),
        Some(Ok(v)) if v > 0.0 && v.is_finite() => {
            Err(format!("slower than {MIN_SPEED}x (a thousandth of the recorded pace)"))
        }
        _ => Err("not a speed; accepted: 1x, 10x, 0.5x (a multiple of the recorded pace) or max".into()),
    }
}

/// What a replayed capture says of itself: what it misses, whether it was recorded through a
/// filter, and whether its mdsub data frames go out renumbered for either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureFacts {
    pub holes: Holes,
    pub filtered: bool,
    pub renumbered: bool,
}

impl CaptureFacts {
    /// The summary's `capture` object (`--json`).
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "missing": self.holes.missing,
            "closed": self.holes.closed,
            "filtered": self.filtered,
            "renumbered": self.renumbered,
        })
    }
}

/// The replay source for `--from` files: one capture, or DBN files to merge, and for a capture
/// what it says of itself. A capture that misses messages (its hole marks) or was recorded
/// through a filter is renumbered as with `restamp` (said once) unless `keep_seq`.
/// `needs_data`: a benchmark's, which counts what the engine delivers: a capture needs an
/// mdsub data frame, not only something to replay.
pub fn file_source(
    from: &[PathBuf],
    restamp: bool,
    keep_seq: bool,
    needs_data: bool,
) -> anyhow::Result<(Source, Option<CaptureFacts>)> {
    use anyhow::Context as _;
    // The same file twice (`--from day/*.dbn --from day/a.dbn`) was merged with itself: every
    // record sent twice with fresh sequences, so no subscriber could tell (a book saw each order
    // added twice). Told apart by what the paths name, however spelled.
    let mut seen: Vec<(PathBuf, &PathBuf)> = Vec::with_capacity(from.len());
    for p in from {
        let Ok(real) = std::fs::canonicalize(p) else { continue };
        if let Some((_, first)) = seen.iter().find(|(r, _)| *r == real) {
            return Err(super::UsageError(format!(
                "--from {}: the same file as --from {}: it would be replayed twice; give each file once",
                p.display(),
                first.display()
            ))
            .into());
        }
        seen.push((real, p));
    }
    let mut kinds = Vec::with_capacity(from.len());
    for p in from {
        if std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == 0) {
            anyhow::bail!("{}: empty file (0 bytes): nothing to replay", p.display());
        }
        match detect(p).with_context(|| format!("--from {}", p.display()))? {
            Some(k) => kinds.push(k),
            None => anyhow::bail!("{}: neither an mdsub capture nor DBN data (plain or zstd)", p.display()),
        }
    }
    if kinds.iter().all(|k| *k != FileKind::Capture) {
        // Each file's metadata is checked now, before anything binds or waits for subscribers,
        // and that the files hold a record to replay.
        let mut merge = crate::feed::dbn_source::DbnMerge::open(from).map_err(|e| anyhow::anyhow!("DBN input {e}"))?;
        if merge.next_record().is_none() {
            let names: Vec<String> = from.iter().map(|p| p.display().to_string()).collect();
            if let Some(e) = merge.damage().first() {
                anyhow::bail!("DBN input {e}: nothing before it to replay");
            }
            let skipped: Vec<String> = merge.skipped().iter().map(|(rt, n)| format!("rtype 0x{rt:02x}: {n}")).collect();
            anyhow::bail!(
                "{}: no records to replay ({})",
                names.join(", "),
                if skipped.is_empty() {
                    "metadata only".to_string()
                } else {
                    format!("only records of types not replayed, {}", skipped.join(", "))
                }
            );
        }
        return Ok((Source::Dbn { paths: from.to_vec() }, None));
    }
    match from {
        [one] => {
            let filtered = check_capture(one, needs_data)?;
            let holes = Holes::of(one).map_err(|e| anyhow::anyhow!("capture file {}: {e}", one.display()))?;
            let renumber = !keep_seq && (filtered || holes.missing > 0);
            if holes.missing > 0 {
                crate::diag!("{}", holes_note(one, &holes, restamp, keep_seq));
            } else if holes.closed == Some(false) {
                crate::diag!(
                    "note: capture file {} has no end record (its tap was killed, or its writing failed): messages \
                     after its last record may be missing, and nothing in it says how many",
                    one.display()
                );
            }
            if filtered && !restamp && !keep_seq {
                // Byte for byte, the stream sequences would skip what the filter left out, and a
                // subscriber taking every topic counts each skip as a gap (`loss:` lines for
                // messages that were never in the file).
                crate::diag!(
                    "note: capture file {} was recorded through a filter (`mdsub tap --filter`): the messages it \
                     left out are not in it, and its mdsub frames' sequences skip them, which a subscriber would \
                     count as loss; they go out renumbered and timed from now, as with --restamp",
                    one.display()
                );
            }
            let facts = CaptureFacts { holes, filtered, renumbered: restamp || renumber };
            Ok((Source::Capture { path: one.clone(), restamp: restamp || renumber }, Some(facts)))
        }
        _ => anyhow::bail!("only DBN files can be merged: give one capture file at a time"),
    }
}

/// The note on a capture that misses messages, said once before it is replayed: how many, why,
/// and what the replay does about their sequences.
fn holes_note(path: &Path, holes: &Holes, restamp: bool, keep_seq: bool) -> String {
    let open = if holes.closed == Some(false) {
        "; it has no end record either (its tap was killed, or its writing failed): messages after its last \
         record may be missing too"
    } else {
        ""
    };
    let then = if keep_seq {
        "--keep-seq: its mdsub frames go out byte for byte, their sequences skipping the missing ones, which a \
         subscriber counts as loss"
    } else if restamp {
        "its mdsub frames go out renumbered, so a subscriber counts no loss for them"
    } else {
        "its mdsub frames' sequences skip them, which a subscriber would count as loss; they go out renumbered \
         and timed from now, as with --restamp (--keep-seq sends them byte for byte)"
    };
    format!(
        "note: capture file {} misses {} message(s) that passed its tap: the tap dropped their copies while its \
         recorder was behind (or they were too large to record), and the file marks each hole{open}; {then}",
        path.display(),
        holes.missing
    )
}

/// Check a capture before anything binds or waits for subscribers: its header, and that a
/// message to replay follows it. A replay sends every message but a recorded control frame
/// ([`crate::replay::is_recorded_control`]: it sends its own), foreign and bad frames as
/// recorded; with `needs_data` (a benchmark, which counts what the engine delivers) an mdsub
/// data frame must follow. A capture without one is refused with what its records are.
/// Whether it was recorded through a filter ([`crate::wire::capture::HEADER_FILTERED`]).
fn check_capture(path: &Path, needs_data: bool) -> anyhow::Result<bool> {
    use crate::wire::{self, DecodeError, Kind};
    let name = path.display();
    let mut reader =
        crate::wire::capture::CaptureReader::open(path).map_err(|e| anyhow::anyhow!("capture file {name}: {e}"))?;
    let filtered = reader.filtered();
    let (mut control, mut foreign, mut multipart) = (0u64, 0u64, 0u64);
    let mut refused: BTreeMap<&str, u64> = BTreeMap::new();
    let mut in_multipart = false;
    loop {
        let r = match reader.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) if needs_data => anyhow::bail!("capture file {name}: {e}: no mdsub data frame before it to measure"),
            Err(e) => anyhow::bail!("capture file {name}: {e}: nothing before it to replay"),
        };
        let part_of_multipart = r.more || in_multipart;
        in_multipart = r.more;
        let kind =
            if part_of_multipart { Err(None) } else { wire::decode(r.frame).map(|v| v.header.kind).map_err(Some) };
        match kind {
            Ok(Kind::Data) => return Ok(filtered),
            Ok(_) => control += 1,
            _ if !needs_data => return Ok(filtered),
            Err(None) => multipart += 1,
            Err(Some(DecodeError::MissingNul)) => foreign += 1,
            Err(Some(e)) => {
                *refused.entry(wire::DROP_REASON_NAMES.get(e.reason()).copied().unwrap_or("bad")).or_default() += 1
            }
        }
    }
    let n = reader.records();
    if n == 0 {
        anyhow::bail!("capture file {name}: no messages to replay (a header only)");
    }
    if !needs_data {
        anyhow::bail!(
            "capture file {name}: no messages to replay ({n} records, all recorded control frames: a replay sends its own)"
        );
    }
    let mut kinds = Vec::new();
    if control > 0 {
        kinds.push(format!("{control} recorded control frames (a replay sends its own)"));
    }
    if foreign > 0 {
        kinds.push(format!("{foreign} foreign frames (no mdsub header)"));
    }
    if multipart > 0 {
        kinds.push(format!("{multipart} frames of foreign multipart messages"));
    }
    if !refused.is_empty() {
        let by: Vec<String> = refused.iter().map(|(r, k)| format!("{r}={k}")).collect();
        kinds.push(format!("{} frames the wire decoder refuses ({})", refused.values().sum::<u64>(), by.join(" ")));
    }
    anyhow::bail!(
        "capture file {name}: no mdsub data frames to measure ({n} records: {}): a benchmark counts what the engine \
         delivers, mdsub data frames only",
        kinds.join(", ")
    )
}

/// Flags of `replay` and `bench` that mean nothing with `--from` files, each with why: given
/// with `--from` they are refused (a [`super::UsageError`], exit 2) rather than ignored in
/// silence. (`--publisher-id` is not one: a DBN record goes out as this publisher's frame, and a
/// capture's with `--restamp`; byte for byte, it is the id of the replay's own heartbeats and end
/// of stream. Nor is `--burst` at a fixed `--rate`, whose schedule a file keeps as well.)
const GENERATOR_ONLY: [(&str, &str, &str); 5] = [
    ("symbols", "--symbols", "it sets the generated feed's topics; a file's messages keep their own"),
    ("payload_bytes", "--payload-bytes", "it sets the generated feed's payload size; a file's messages keep theirs"),
    (
        "zipf",
        "--zipf",
        "it sets how often each of the generated feed's topics comes; a file's messages come as recorded",
    ),
    ("seed", "--seed", "it picks the generated feed; a file's messages are what it holds"),
    (
        "thread_per_shard",
        "--thread-per-shard",
        "it needs the generated feed, split by shard (a file is read in order by one thread)",
    ),
];

/// Flags of `replay` that a trial server (`--serve-trials`) does not use, each with why: each
/// trial's feed, rate and duration come from the capacity run, and its publisher is the plain
/// lossy one that run measures against.
const NOT_SERVED: [(&str, &str, &str); 22] = {
    const LENGTH: &str = "each trial lasts what the capacity run asks; the server runs until that run ends";
    const FEED: &str = "each trial's feed is the one the capacity run asks for";
    const ACCESS: &str = "a trial server serves no access rules (CURVE, addresses): run it on a trusted network";
    const FAULT: &str = "faults are put into a replay's stream, not into capacity trials";
    [
        ("duration", "--duration", LENGTH),
        ("count", "--count", LENGTH),
        ("symbols", "--symbols", FEED),
        ("payload_bytes", "--payload-bytes", FEED),
        ("zipf", "--zipf", FEED),
        ("seed", "--seed", FEED),
        ("burst", "--burst", "trials send one message per intended send time"),
        ("lossy", "--lossy", "a trial server always publishes lossy, as capacity's own publisher does"),
        ("thread_per_shard", "--thread-per-shard", "a trial server publishes from one thread"),
        ("curve_key", "--curve-key", ACCESS),
        ("curve_allow", "--curve-allow", ACCESS),
        ("allow_addr", "--allow-addr", ACCESS),
        ("publisher_id", "--publisher-id", "trials publish as publisher 0"),
        ("subscribers", "--subscribers", "each trial waits for the capacity run's engine, which it names"),
        ("wait_timeout", "--wait-timeout", "each trial waits for the capacity run's engine as long as that run says"),
        (
            "eos_wait",
            "--eos-wait",
            "each trial's end of stream waits for the capacity run's engine as a replay's does by default",
        ),
        ("pause_at", "--pause-at", FAULT),
        ("drop_every", "--drop-every", FAULT),
        ("restart_at", "--restart-at", FAULT),
        ("idle", "--idle", "a trial's sending thread naps between its turns (block)"),
        ("peer_timeout", "--peer-timeout", "a trial server publishes lossy: no subscriber holds it, dead or alive"),
        ("json", "--json", "a trial server prints one line per trial; the capacity run keeps the numbers"),
    ]
};

/// Refuse a flag given with `--from` that only shapes the generated feed (`GENERATOR_ONLY`),
/// `--burst` without a fixed `--rate` (flat out or at a file's pace there are no bursts), and a
/// flag `replay --serve-trials` does not use (`NOT_SERVED`), each in one line naming the flag and
/// why. `m` is the command's matches: whether a flag was typed, not its default.
pub fn refuse_generator_flags(m: &clap::ArgMatches) -> anyhow::Result<()> {
    use clap::parser::ValueSource;
    let typed =
        |id: &str| m.try_contains_id(id).unwrap_or(false) && m.value_source(id) == Some(ValueSource::CommandLine);
    let usage = |line: String| anyhow::Error::new(super::UsageError(line));
    if m.try_contains_id("from").is_err() {
        // Not `replay` or `bench` (demo's default --rate makes its bursts real).
        return Ok(());
    }
    if typed("serve_trials") {
        if let Some((_, flag, why)) = NOT_SERVED.iter().find(|(id, _, _)| typed(id)) {
            return Err(usage(format!("{flag} with --serve-trials: {why}")));
        }
    }
    let fixed_rate = m.try_get_one::<u64>("rate").ok().flatten().is_some_and(|r| *r > 0);
    if !typed("from") {
        if typed("burst") && !fixed_rate && !typed("serve_trials") {
            return Err(usage(
                "--burst without --rate N: bursts share one intended send time at a fixed rate; flat out \
                 there are none"
                    .into(),
            ));
        }
        return Ok(());
    }
    let refuse = |flag: &str, why: &str| usage(format!("{flag} with --from: {why}"));
    for (id, flag, why) in GENERATOR_ONLY {
        if typed(id) {
            return Err(refuse(flag, why));
        }
    }
    if typed("serve_trials") {
        return Err(refuse(
            "--serve-trials",
            "a trial server publishes the generated feed each capacity trial asks for, not a file",
        ));
    }
    if typed("burst") && !fixed_rate {
        return Err(refuse(
            "--burst",
            "bursts share one intended send time at a fixed --rate N; without one a file replays flat out or \
             at its recorded pace (--speed), in no bursts",
        ));
    }
    Ok(())
}

/// `mdsub replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Endpoint to bind, `bind:EP` or `EP`, one per shard (repeat the flag for more shards).
    #[arg(long, value_parser = parse_bind_endpoint, default_value = "tcp://127.0.0.1:5556", value_name = "[bind:]EP")]
    pub endpoint: Vec<Endpoint>,
    /// Replay a file instead of generating: a capture (from `mdsub tap
    /// --record`), or Databento DBN data (`.dbn` or `.dbn.zst`, DBN versions
    /// 1-3; detected from the first bytes). Several DBN files (repeat the
    /// flag, or list them) are merged by receive time. Each DBN record is one
    /// frame: topic = the instrument's symbol from the file's symbology (its
    /// id when there is none), payload = the record's bytes. Without --speed
    /// or --rate a file replays flat out. A damaged file is replayed up to the
    /// damage, which is said with its byte offset and record number and counted
    /// (`refused`: truncated_tail, bad_record, e.g. a DBN record whose length is
    /// not its type's, or whose receive time is outside the span its metadata
    /// gives); the exit status is then 1. A DBN record received before the one
    /// ahead of it in its file is sent, counted (ts_recv_backwards) and the
    /// first said: the file is corrupted or not in order. A file with nothing to replay
    /// is refused before anything binds. The generated feed's flags (--symbols,
    /// --payload-bytes, --zipf, --seed, --thread-per-shard, --serve-trials, and
    /// --burst without --rate N) are refused with it. On a terminal (not with
    /// --json) a bar says how far the replay is (by --count or --duration when
    /// one ends it first), in market time from the first
    /// record to the end the DBN metadata gives (the latest of merged files),
    /// held within what the bytes read of the files' sizes say (that end is the
    /// query's, often past the data's: the bytes then give the figure), else in
    /// bytes read alone (a capture, a DBN file without an end; compressed bytes
    /// of a .dbn.zst), with the time left at the pace chosen.
    #[arg(long = "from", num_args = 1.., value_name = "FILE")]
    pub from: Vec<PathBuf>,
    /// With --from: give mdsub data frames this publisher's own sequences and
    /// fresh intended send times (so latency is measured from now); without it
    /// frames go out byte for byte, keeping their recorded publisher, session
    /// and send time. A capture recorded through `mdsub tap --filter` is
    /// renumbered all the same (said once): its sequences skip what the filter
    /// left out, which a subscriber would count as loss; so is one that misses
    /// messages its tap dropped while its recorder was behind (the file marks
    /// each hole; how many is said once, and in --json's `capture`).
    #[arg(long, requires = "from")]
    pub restamp: bool,
    /// With --from: send a capture's mdsub frames byte for byte even when it was
    /// recorded through a filter or misses messages its tap dropped (to study
    /// the holes: a subscriber then counts them as lost).
    #[arg(long, requires = "from", conflicts_with = "restamp")]
    pub keep_seq: bool,
    /// With --from: keep the recorded gaps between frames (same as --speed 1x).
    #[arg(long, requires = "from", conflicts_with = "speed")]
    pub recorded_timing: bool,
    /// With --from: replay at a multiple of the recorded pace (`1x` keeps the
    /// recorded gaps, `10x` is ten times faster, `0.5x` half as fast), or
    /// `max` (flat out). Frames go out on the recorded receive times, shifted to
    /// now and divided by the speed; a capture's frames keep their recorded send
    /// times unless --restamp (DBN records are always timed from now).
    #[arg(long, requires = "from", conflicts_with = "rate", value_parser = parse_speed, value_name = "Nx|max")]
    pub speed: Option<Speed>,
    #[command(flatten)]
    pub feed: FeedArgs,
    #[command(flatten)]
    pub publisher: PublisherArgs,
    #[command(flatten)]
    pub access: ServerAccessArgs,
    /// Publisher id of shard 0 (shard k uses ID+k). Give every publisher that
    /// feeds the same subscriber its own range: sessions of one id are taken
    /// for restarts of one publisher. A capture replayed byte for byte (no
    /// --restamp) keeps its recorded publisher in its data frames: the id is
    /// then that of the replay's own heartbeats and end of stream.
    #[arg(long, value_parser = parse_publisher_id, default_value = "0", value_name = "ID")]
    pub publisher_id: u32,
    /// Subscribers to wait for on every shard before sending (0: do not wait). A shard counts the
    /// subscriptions to the control topic (one per mdsub subscriber, several through one proxy
    /// connection) once a connection completed its ZeroMQ handshake (random bytes alone are none).
    /// `mdsub lvc`'s own subscription to everything (its cache) is no subscriber: behind an LVC,
    /// N engines are N subscribers (a tap's own, with --subscribe-all, counts as one).
    #[arg(long, value_parser = parse_count_usize, default_value = "1", value_name = "COUNT")]
    pub subscribers: usize,
    /// Give up if the subscribers have not connected by then (e.g. 30s).
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    pub wait_timeout: Duration,
    /// After the end of stream, keep the endpoints up to this long until every subscriber that
    /// ends at one (an `mdsub engine` shard, directly or behind `mdsub lvc`/`tap`) confirmed it
    /// arrived; an engine counts once however many of its connections hold the wait (an old one
    /// dead without a close beside its reconnect). One that takes the control topic meanwhile (a reconnect after its connection
    /// died, with the end of stream in it) is sent it again. Shards still unconfirmed at the end
    /// are said and listed (`eos_unconfirmed`; `resend_pending` when a full lossless pipe held
    /// that resend back: a subscriber far behind needs a longer wait); Ctrl-C ends the wait at
    /// once (a run stopped
    /// by Ctrl-C while sending waits 1s at most, as its end of stream does). Subscribers to
    /// everything alone (a tap, a plain SUB) are not waited for. 0s: no wait, nothing sent again.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub eos_wait: Duration,
    /// End a subscriber's connection when data sent on it stays unacknowledged this long (e.g.
    /// 10s): a subscriber's host gone without a close (powered off, cable pulled, path down for
    /// good) then no longer holds a lossless replay, and every other subscriber with it, for the
    /// kernel's ~15 minutes of retransmissions; the subscriber it was is said as it leaves. Linux
    /// (5.11 and later) ends a subscriber that stopped reading for that long alike (its window
    /// closed), which a lossless replay otherwise waits for. Give more than the outages and stalls
    /// a subscriber should ride out; 0s (the default): the kernel's limits.
    #[arg(long, value_parser = parse_duration, default_value = "0s", value_name = "DURATION")]
    pub peer_timeout: Duration,
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Idle strategy of the sending thread(s) (one agent each): what a paced replay does
    /// between its turns, never waiting past one, and while a lossless pipe is full. `block`
    /// (the default) naps until the next turn and waits in the full pipe's send.
    #[arg(long, value_enum, default_value_t = Idle::Block)]
    pub idle: Idle,
    /// Print the replay's numbers as JSON.
    #[arg(long)]
    pub json: bool,
    /// Serve `mdsub capacity --publisher connect:EP` instead of replaying
    /// once: bind this control endpoint (`bind:tcp://*:5599`) and publish each
    /// trial's rate for its duration on --endpoint (generated feed), until
    /// the capacity run ends. With --rate, never send faster than that (a
    /// load generator that cannot keep up: its trials are "rate not achieved").
    /// The flags a trial does not use (the feed's, --duration, --count, faults,
    /// --lossy, --publisher-id, --curve-key and --allow-addr: no access rules
    /// are served, --idle, --json) are refused with it.
    #[arg(long, value_parser = parse_bind_endpoint, value_name = "[bind:]EP")]
    pub serve_trials: Option<Endpoint>,
}

/// Snails on purpose: faults put into the stream, so the subscriber's
/// Suicidal Snail checks can be shown and tested (docs/SNAIL.md).
#[derive(Args, Debug, Default)]
pub struct FaultArgs {
    /// Stall once this many messages have been scheduled: send nothing, not
    /// even heartbeats, for --pause-for. At a fixed --rate the schedule runs
    /// on, so the messages due meanwhile go out late (a stalled publisher:
    /// the subscriber sees their lag); flat out only the silence shows.
    #[arg(long, value_parser = parse_count, value_name = "COUNT", requires = "pause_for")]
    pub pause_at: Option<u64>,
    /// How long the --pause-at stall lasts (e.g. 2s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "pause_at")]
    pub pause_for: Option<Duration>,
    /// Leave out one message in every N (N >= 2; the middle one of each block
    /// of N): its sequences are used up, so subscribers count a gap, and a loss
    /// (the end of stream counts every message numbered). 100 over
    /// --count 100k leaves out exactly 1000, none first or last.
    #[arg(long, value_parser = parse_drop_every, value_name = "COUNT")]
    pub drop_every: Option<u64>,
    /// Start a new session on every shard once this many messages have been
    /// scheduled (new session id, sequences from 1, no end of stream for the
    /// old one: a restarted publisher). Subscribers count a restart, not a gap.
    /// At least 1: a restart before the first message would leave the first session empty.
    #[arg(long, value_parser = parse_restart_at, value_name = "COUNT")]
    pub restart_at: Option<u64>,
}

impl FaultArgs {
    /// The plan these flags give.
    pub fn plan(&self) -> FaultPlan {
        FaultPlan { pause: self.pause_at.zip(self.pause_for), drop_every: self.drop_every, restart_at: self.restart_at }
    }

    /// The fault a run of `count` messages never reaches, said as its refusal. Before, such a
    /// run went through without the fault and said nothing: a test of a subscriber's stall,
    /// restart or gap handling that tested nothing.
    pub fn beyond(&self, count: u64) -> Option<String> {
        let never = |flag: &str, at: u64, what: &str| {
            format!("{flag} {at} with --count {count}: {what}, and the run ends after {count}: it would never happen")
        };
        if let Some(at) = self.pause_at.filter(|&at| at >= count) {
            return Some(never("--pause-at", at, &format!("the stall comes after {at} messages")));
        }
        if let Some(at) = self.restart_at.filter(|&at| at >= count) {
            return Some(never("--restart-at", at, &format!("the new session starts after {at} messages")));
        }
        let first = self.drop_every.map(|n| (n, n.div_ceil(2))).filter(|&(_, first)| first > count);
        first.map(|(n, first)| never("--drop-every", n, &format!("the first message it leaves out is number {first}")))
    }
}

/// Each `--endpoint` (a shard) and the `--serve-trials` control endpoint on an address of its
/// own ([`crate::endpoint::binds_clash`], the engine's check of its binds), so a duplicate is
/// named before any bind rather than said by libzmq as `Address already in use`.
fn distinct_binds(endpoints: &[String], control: Option<&str>) -> Result<(), String> {
    for (k, ep) in endpoints.iter().enumerate() {
        if let Some(j) = endpoints[..k].iter().position(|first| crate::endpoint::binds_clash(first, ep)) {
            return Err(format!(
                "--endpoint: `{ep}` takes the address shard {j} binds already (`{}`): each shard binds an \
                 address of its own",
                endpoints[j]
            ));
        }
        if let Some(c) = control.filter(|c| crate::endpoint::binds_clash(c, ep)) {
            return Err(format!("--serve-trials: `{c}` takes the address shard {k} binds (`{ep}`): give it its own"));
        }
    }
    Ok(())
}

/// Run `mdsub replay`: bind, wait for subscribers, publish.
pub fn replay(args: &ReplayArgs, stop: &StopFlag) -> anyhow::Result<()> {
    let endpoints: Vec<String> = args.endpoint.iter().map(|e| e.endpoint.clone()).collect();
    distinct_binds(&endpoints, args.serve_trials.as_ref().map(|c| c.endpoint.as_str())).map_err(super::UsageError)?;
    crate::replay::check_publisher_ids(args.publisher_id, endpoints.len())
        .map_err(|e| super::UsageError(format!("--publisher-id: {e}")))?;
    if let Some(why) = args.feed.count.and_then(|count| args.faults.beyond(count)) {
        anyhow::bail!(super::UsageError(why));
    }
    if args.subscribers > 0 && args.wait_timeout.is_zero() {
        anyhow::bail!(super::UsageError(format!(
            "--wait-timeout 0s with --subscribers {}: the replay would give up before any subscriber could \
             connect; give it time (e.g. 30s), or --subscribers 0 not to wait",
            args.subscribers
        )));
    }
    if let Some(control) = &args.serve_trials {
        let cfg = crate::bench::capacity::remote::ServeConfig {
            control: control.endpoint.clone(),
            endpoints,
            sndhwm_msgs: args.publisher.sndhwm_msgs,
            max_rate: args.feed.rate.filter(|r| *r > 0),
        };
        super::run_under_way();
        let n = crate::bench::capacity::remote::serve(&cfg, stop, &mut |line| crate::outln!("{line}"))?;
        crate::outln!("served {n} trial(s)");
        return Ok(());
    }
    let cfg = PublisherConfig {
        endpoints,
        sndhwm_msgs: args.publisher.sndhwm_msgs,
        lossless: !args.publisher.lossy,
        thread_per_shard: args.publisher.thread_per_shard,
        publisher_id_base: args.publisher_id,
        access: args.access.to_access()?,
        peer_timeout: args.peer_timeout,
    };
    let ctx = zmq::Context::new();
    if cfg.thread_per_shard {
        ctx.set_io_threads(cfg.endpoints.len() as i32)?;
    }
    let (source, capture) = if args.from.is_empty() {
        (Source::Generator(args.feed.generator()?), None)
    } else {
        file_source(&args.from, args.restamp, args.keep_seq, false)?
    };
    if matches!(source, Source::Capture { restamp: false, .. }) && args.faults.restart_at.is_some() {
        // Said before the wait for subscribers (before: after it, once they had come).
        let why = crate::replay::RESTART_NEEDS_FRESH_SEQUENCES;
        return Err(anyhow::Error::new(super::UsageError(format!("--restart-at: {why}"))));
    }
    if let Source::Capture { restamp: false, .. } = source {
        // A subscriber judges lag by the frames' send times: a capture's are as old as it is,
        // and an engine measuring a replay benchmark from them sees (and croaks on) that age.
        crate::diag!(
            "note: the capture's mdsub frames go out byte for byte with their recorded send times, so a \
             subscriber's lag includes the capture's age; --restamp times them from now"
        );
    }
    // The --from files and key files are read: from here a Ctrl-C is watched for.
    super::run_under_way();
    let mut publisher = Publisher::bind(&ctx, &cfg)?;
    publisher.set_faults(args.faults.plan())?;
    publisher.set_idle(args.idle.strategy());
    publisher.set_eos_wait(args.eos_wait);
    for (k, ep) in publisher.endpoints().iter().enumerate() {
        // With --json, stdout is the one JSON object at the end: the endpoints go to stderr.
        crate::diag::Lines { json: args.json }.say(format_args!("bound shard{k} {ep}"));
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    if args.subscribers > 0 {
        crate::diag!("waiting for {} subscriber(s) per shard…", args.subscribers);
        match publisher.wait_for_subscribers_or_stop(args.subscribers, args.wait_timeout, stop) {
            // A stop while waiting ends the run as one while sending does: its result so far
            // (nothing sent), marked interrupted, exit 0 (before: `mdsub: interrupted`, exit
            // 130, nothing on stdout, while a stop a moment later printed the result and exited 0).
            Err(crate::replay::ReplayError::Interrupted) => {
                crate::diag!(
                    "replay: interrupted while waiting for subscribers ({}): nothing was sent",
                    publisher.short_of_subscribers(args.subscribers).join(", ")
                );
                return summarize(args, &publisher.stopped_before_sending(), capture);
            }
            // Subscribers its access rules refused (ZAP, or libzmq's CURVE handshake) are named
            // by what was counted, not guessed at.
            Err(e @ crate::replay::ReplayError::NoSubscribers { .. }) => {
                let refused = publisher.access_counters().map(|c| c.by_reason()).unwrap_or_default();
                if refused.is_empty() {
                    return Err(e.into());
                }
                let said: Vec<String> = refused.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
                anyhow::bail!(
                    "{e}; this publisher refused subscribers' connections: {} (each reason said above with \
                     what it means)",
                    said.join(", ")
                )
            }
            r => r?,
        }
        crate::diag!("subscribed: sending");
    }
    let pacing = pacing_of(args);
    let limits = args.feed.limits(if args.from.is_empty() { Some(Duration::from_secs(10)) } else { None });
    // How far by the count, the duration or the files' position, whichever is further on.
    let mut bar = RunBar::new(position_bar_on(progress_target(args.json), "replay"), pacing, limits);
    let position = publisher.position();
    let run =
        publisher.run(&source, pacing, limits, stop, &mut |n| bar.show(n, &position, None, std::time::Instant::now()));
    bar.bar.pb.finish_and_clear();
    // A stream that could not be ended still gets its summary, then the error.
    let (stats, eos_error) = match run {
        Ok(stats) => (stats, None),
        Err(e) => match e.stats() {
            Some(stats) => (stats.clone(), Some(e)),
            None => return Err(e.into()),
        },
    };
    summarize(args, &stats, capture)?;
    if !stats.skipped_by_rtype.is_empty() {
        let list: Vec<String> = stats.skipped_by_rtype.iter().map(|(rt, n)| format!("rtype {rt}: {n}")).collect();
        crate::diag!("replay: skipped records of types not replayed: {}", list.join(", "));
    }
    if stats.symbol_mappings_dropped > 0 {
        crate::diag!(
            "replay: {} DBN symbol mappings were dropped ({}, the first said above); the records of their ids \
             were named from the mappings kept",
            stats.symbol_mappings_dropped,
            crate::feed::dbn_source::symbol_mapping_caps()
        );
    }
    if stats.ts_recv_backwards > 0 {
        crate::diag!(
            "replay: {} DBN records were received before the record ahead of them in their file (the first said \
             above): the file is corrupted or not in receive-time order; they were sent as they are",
            stats.ts_recv_backwards
        );
    }
    // Damaged input: what came before the damage was replayed and the stream ended, and the
    // exit status says the input was not whole.
    let damaged = (!stats.refused.is_empty()).then(|| {
        let list: Vec<String> = stats.refused.iter().map(|(r, n)| format!("{r}={n}")).collect();
        format!("replay: damaged input (refused: {}); what came before the damage was replayed", list.join(" "))
    });
    if let Some(e) = eos_error {
        if let Some(d) = damaged {
            crate::diag!("{d}");
        }
        return Err(e.into());
    }
    if let Some(d) = damaged {
        anyhow::bail!(d);
    }
    Ok(())
}

/// The summary's first line: what was sent, the time from the first send to the last with the
/// rate over it (the rate is that time's: divide), and the whole run's time, in which the
/// sending threads' start and the end of stream are too (`sent 300 messages in 0.005 s
/// (1291616 msg/s)` read as a contradiction: the rate was over 0.23 ms of sending).
fn sent_line(stats: &crate::replay::ReplayStats) -> String {
    let interrupted = if stats.interrupted { " (interrupted)" } else { "" };
    let all = format!("{} s in all, with set-up and end of stream", secs(stats.elapsed_s));
    let n = stats.sent_total;
    if n == 0 {
        return format!("sent 0 messages{interrupted}; per shard {:?}", stats.sent_per_shard);
    }
    let rate = match (stats.send_span_s, stats.dropped_on_purpose) {
        (Some(span), 0) => {
            format!("; {} s from the first to the last ({:.0} msg/s); {all}", secs(span), stats.msgs_per_sec)
        }
        (Some(span), d) => format!(
            "; {} s from the first to the last ({:.0} msg/s, the {d} left out on purpose counted); {all}",
            secs(span),
            stats.msgs_per_sec
        ),
        (None, _) => format!("; {all} ({:.0} msg/s over it)", stats.msgs_per_sec),
    };
    format!("sent {n} messages{rate}{interrupted}; per shard {:?}", stats.sent_per_shard)
}

/// Seconds with four significant digits at least (three decimals at least): a span of 231 µs
/// is `0.0002310`, not `0.000`, so a rate over it can be checked by dividing.
fn secs(s: f64) -> String {
    let decimals = if s > 0.0 && s.is_finite() { (3 - s.log10().floor() as i32).clamp(3, 12) } else { 3 };
    format!("{s:.*}", decimals as usize)
}

/// The pace the replay keeps: `--speed`, `--recorded-timing` (1x), else the feed's rate.
fn pacing_of(args: &ReplayArgs) -> Pacing {
    match (args.speed, args.recorded_timing) {
        (Some(s), _) => s.pacing(),
        (None, true) => Pacing::Recorded { speed: 1.0 },
        (None, false) => args.feed.pacing(None),
    }
}

/// The replay's summary on stdout: its numbers as JSON (`--json`), or in lines.
/// With a capture, `--json` carries what it says of itself (`capture`: missing, closed,
/// filtered, renumbered).
fn summarize(
    args: &ReplayArgs,
    stats: &crate::replay::ReplayStats,
    capture: Option<CaptureFacts>,
) -> anyhow::Result<()> {
    if args.json {
        let mut v = stats.to_json(pacing_of(args))?;
        if let (Some(o), Some(c)) = (v.as_object_mut(), capture) {
            o.insert("capture".into(), c.json());
        }
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        crate::outln!("{}", sent_line(stats));
        if let Some(note) = stats.schedule_note(pacing_of(args)) {
            crate::outln!("{note}");
        }
        if stats.interrupted && !stats.eos_missed.is_empty() {
            // Not an error after a stop request (its end of stream waits 1 s only): said.
            crate::outln!("end of stream not taken (a subscriber stopped reading) on: {}", stats.eos_missed.join(", "));
        }
        let blocked: f64 = stats.blocked_s_per_shard.iter().sum();
        if blocked >= 0.001 {
            crate::outln!(
                "held back {} by a lossless subscriber's full pipe; per shard {:?}",
                crate::diag::human_duration((blocked * 1e9) as u64),
                stats.blocked_s_per_shard.iter().map(|s| (s * 1e3).round() / 1e3).collect::<Vec<_>>()
            );
        }
        if stats.dropped_on_purpose + stats.restarts > 0 || stats.paused_s > 0.0 {
            crate::outln!(
                "on purpose: dropped {}, restarts {}, paused {}",
                stats.dropped_on_purpose,
                stats.restarts,
                crate::diag::human_duration((stats.paused_s * 1e9) as u64)
            );
        }
        if !stats.subscribers_refused.is_empty() {
            let said: Vec<String> = stats.subscribers_refused.iter().map(|(r, n)| format!("{r}={n}")).collect();
            crate::outln!(
                "refused {} subscriber connection(s): {} (each reason said on stderr with what it means)",
                stats.subscribers_refused.values().sum::<u64>(),
                said.join(", ")
            );
        }
        if stats.subscribers_ledger_forgotten > 0 {
            crate::outln!(
                "handshake_ledger_forgotten={}: the handshake ledger was full, so the subscriber connections \
                 refused and counted are off by as many",
                stats.subscribers_ledger_forgotten
            );
        }
        if stats.sent_with_no_subscriber > 0 {
            crate::outln!(
                "{} of them were sent while their shard had no mdsub subscriber (none took the control topic): \
                 they reached no one",
                stats.sent_with_no_subscriber
            );
        }
        if args.publisher.lossy {
            crate::outln!(
                "{} of them met a subscriber's full pipe and were dropped for it (--lossy: the others with room \
                 got them; a subscriber counts what it missed as lost); per shard {:?}",
                stats.dropped_at_hwm,
                stats.dropped_at_hwm_per_shard
            );
        }
        if let Some((first, last)) = stats.market_span_ns {
            crate::outln!(
                "market time {} to {} ({} recorded)",
                dbn::pretty::fmt_ts(first),
                dbn::pretty::fmt_ts(last),
                crate::diag::human_ns(last.saturating_sub(first))
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::ReplayStats;

    /// The number in `line` after `before` up to the next space.
    fn number_after(line: &str, before: &str) -> f64 {
        let rest = line.split(before).nth(1).unwrap_or_else(|| panic!("{before:?} in {line}"));
        rest.split([' ', ')']).next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a number: {line}"))
    }

    #[test]
    fn the_sent_line_gives_a_rate_its_own_seconds_divide_to() {
        // Before: `sent 300 messages in 0.005 s (1291616 msg/s)` (300 / 0.005 is 60 000): the
        // rate was over the 231 µs from the first send to the last, the seconds the whole run's.
        let stats = ReplayStats {
            sent_total: 300,
            sent_per_shard: vec![300],
            elapsed_s: 0.005_21,
            send_span_s: Some(299.0 / 1_291_616.0),
            msgs_per_sec: 1_291_616.0,
            ..Default::default()
        };
        let line = sent_line(&stats);
        assert_eq!(
            line,
            "sent 300 messages; 0.0002315 s from the first to the last (1291616 msg/s); 0.005210 s in all, with set-up \
             and end of stream; per shard [300]"
        );
        let (span, rate) = (number_after(&line, "; "), number_after(&line, "last ("));
        assert!(((300.0 - 1.0) / span / rate - 1.0).abs() < 1e-3, "divides: {line}");
        // Messages left out on purpose are in the rate (their turns were taken): said.
        let with_drops = ReplayStats { dropped_on_purpose: 20, send_span_s: Some(2.0), msgs_per_sec: 1_000.0, ..stats };
        let line = sent_line(&with_drops);
        assert!(
            line.contains("2.000 s from the first to the last (1000 msg/s, the 20 left out on purpose counted)"),
            "{line}"
        );
        // No span (one message): the rate is over the whole run, and says so.
        let one = ReplayStats {
            sent_total: 1,
            elapsed_s: 0.004,
            msgs_per_sec: 250.0,
            interrupted: true,
            ..Default::default()
        };
        assert_eq!(
            sent_line(&one),
            "sent 1 messages; 0.004000 s in all, with set-up and end of stream (250 msg/s over it) (interrupted); per shard []"
        );
    }

    #[test]
    fn seconds_keep_four_significant_digits() {
        assert_eq!(secs(12.3456), "12.346");
        assert_eq!(secs(0.5), "0.5000");
        assert_eq!(secs(0.021_1), "0.02110");
        assert_eq!(secs(0.000_231), "0.0002310");
        assert_eq!(secs(0.0), "0.000");
        assert_eq!(secs(f64::NAN), "NaN");
    }
}
