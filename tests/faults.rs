//! Seeded fault injection (issue 13): a TCP relay (`common::relay`) between
//! two mdsub parts cuts the link mid-stream; the parts reconnect and account
//! exactly for what the cut cost. Replay → engine: the engine reports the
//! loss and the reconnect, and its loss is exactly what never arrived.
//! Clone server → client: the client re-syncs and ends with every key. A
//! connection that dies without a close (a black hole) swallows the replay's
//! end of stream: the engine's reconnect is sent it again.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::relay::{BlackHole, Faults, Relay, RelayStats};
use common::{json, lines_of, mdsub, rest_lines, start_replay, u, wait_line, wait_until, LineProc, Proc};
use mdsub::clone::client::{Client, ClientConfig};
use mdsub::wire::{self, Kind};

/// The seed every relay here uses; a failure names it (change it to explore).
const SEED: u64 = 0x13_2026;

fn addr_of(endpoint: &str) -> SocketAddr {
    endpoint.trim_start_matches("tcp://").parse().unwrap_or_else(|e| panic!("{endpoint}: {e}"))
}

/// A one-shard replay of `count` messages at `rate` msg/s, and a relay with
/// `faults` in front of it (subscribers connect to `relay.endpoint()`).
fn replay_through(count: u64, rate: u64, faults: Faults) -> (LineProc, Relay) {
    let (count, rate) = (count.to_string(), rate.to_string());
    let (replay, eps) = start_replay("replay", 1, &["--count", &count, "--rate", &rate]);
    let relay = Relay::start(addr_of(&eps[0]), faults);
    (replay, relay)
}

/// [`replay_through`] into an engine (`--json` and `engine_args`), both ending well: the
/// engine's report and what the relay did.
fn engine_through(count: u64, rate: u64, faults: Faults, engine_args: &[&str]) -> (serde_json::Value, RelayStats) {
    let (replay, relay) = replay_through(count, rate, faults);
    let engine = common::engine_json(&[&relay.endpoint()], engine_args);
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    let stats = relay.stats();
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
    (json(&out), stats)
}

#[test]
fn relay_plans_are_a_function_of_the_seed() {
    let f = Faults { seed: SEED, cut: Some((1_000..2_000, 1)), corrupt: Some((10..20, 1)), ..Faults::default() };
    assert_eq!(f.plan(0), f.plan(0));
    let p = f.plan(0);
    assert!(p.cut_at.is_some_and(|c| (1_000..2_000).contains(&c)), "{p:?}");
    assert!(p.corrupt_at.is_some_and(|c| (10..20).contains(&c)), "{p:?}");
    assert_eq!(f.plan(1).cut_at, None, "only the first connection is cut");
    let other = Faults { seed: SEED + 1, ..f.clone() };
    assert_ne!(other.plan(0), p, "another seed, another plan");
}

#[test]
fn replay_to_engine_cut_mid_stream_reconnects_with_exact_accounting() {
    const COUNT: u64 = 200_000;
    // Cut the first connection somewhere in its first 2–6 MB (of ~20 MB).
    let faults = Faults { seed: SEED, cut: Some((2_000_000..6_000_000, 1)), ..Faults::default() };
    let (replay, relay) = replay_through(COUNT, 100_000, faults);
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "90s", "--endpoint", &relay.endpoint(), "--expect-eos", "1"]);
    let mut engine = LineProc::spawn("engine", cmd.stderr(Stdio::piped()));
    let err = lines_of(engine.proc.child.stderr.take().unwrap_or_else(|| panic!("stderr piped")));
    let lost = wait_line(&err, Duration::from_secs(30), "the engine's loss line", |l| l.contains(" lost ("));
    assert!(lost.contains(&relay.endpoint()) && lost.contains("(disconnected)"), "seed {SEED:#x}: {lost}");
    let up = wait_line(&err, Duration::from_secs(30), "the engine's reconnect line", |l| l.contains(" up again after"));
    assert!(up.contains("(reconnect 1)"), "{up}");
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    let (delivered, lost) = (u(&r, "delivered"), u(&r, "lost"));
    assert_eq!(u(&r, "sent"), COUNT, "{r}");
    assert!(lost > 0 && delivered > 0, "the cut cost something and traffic went on: seed {SEED:#x}: {r}");
    assert_eq!(delivered + lost, COUNT, "exact accounting: {r}");
    assert_eq!(u(&r, "gaps"), lost, "every lost message is a gap by sequence: {r}");
    assert_eq!(u(&r, "duplicates"), 0, "{r}");
    let link = &r["shards"][0]["links"][0];
    // The cut, and only the cut: the replay leaving after its end of stream
    // is the stream's end (the link ends `ended`), not a second loss.
    assert_eq!(u(&link["lost"], "disconnected"), 1, "{link}");
    assert_eq!(link["state"], "ended", "{link}");
    assert_eq!((u(link, "reconnects"), u(link, "reestablished")), (1, 0), "libzmq reconnects by itself: {link}");
    assert_eq!(relay.stats().cuts, 1);
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
}

/// Messages of a replay behind a black hole.
const HOLE_COUNT: u64 = 400;

/// A one-shard replay of [`HOLE_COUNT`] messages at 200 msg/s (`--json`, `--eos-wait eos_wait`)
/// behind a [`BlackHole`] that closes the engine's side after 4 KiB, swallows the rest, and lets
/// the engine's reconnect through once `until` went into the hole; an engine through it, ended
/// by its end of stream (its whole count accounted for): the engine's report, the hole (open until
/// dropped) and the replay.
fn engine_through_a_black_hole(eos_wait: &str, until: Vec<u8>) -> (serde_json::Value, BlackHole, LineProc) {
    let count = HOLE_COUNT.to_string();
    let (replay, eps) =
        start_replay("replay", 1, &["--count", &count, "--rate", "200", "--json", "--eos-wait", eos_wait]);
    let hole = BlackHole::start(addr_of(&eps[0]), 4_096, until);
    let mut cmd = mdsub();
    // The snail warns: the silence while the stream goes into the hole is the fault itself.
    cmd.args(["engine", "--json", "--max-duration", "30s", "--snail", "warn", "--endpoint", &hole.endpoint()]);
    let mut engine = LineProc::spawn("engine", cmd.stderr(Stdio::piped()));
    let engine_err = lines_of(engine.proc.child.stderr.take().unwrap_or_else(|| panic!("stderr piped")));
    let (status, out) = engine.finish(Duration::from_secs(60));
    let engine_said = rest_lines(&engine_err, Duration::from_secs(5));
    let r = json(&out);
    assert!(status.success(), "engine failed: {out} {engine_said:?}");
    assert_eq!(r["time_limit"], false, "the end of stream came, not --max-duration: {engine_said:?}");
    assert_eq!((u(&r, "sent"), u(&r, "unended_sessions")), (HOLE_COUNT, 0), "its end of stream counted: {r}");
    (r, hole, replay)
}

/// A `--json` replay's exit, a success: its JSON and what it said on stderr.
fn replay_exit(replay: LineProc) -> (serde_json::Value, Vec<String>) {
    let err = replay.stderr.as_ref().expect("stderr piped");
    let said = rest_lines(err, Duration::from_secs(20));
    let (status, rest) = replay.finish(Duration::from_secs(10));
    assert!(status.success(), "{said:?}");
    (json(&rest), said)
}

#[test]
fn an_end_of_stream_a_dead_connection_swallowed_reaches_the_engine_after_its_reconnect() {
    // Before: the replay sent its last messages and its end of stream into a connection whose
    // other end was gone (a path down longer than the engine's TCP keepalive), then exited; the
    // engine reconnected to nothing and waited for ever (here: until --max-duration, its
    // report's time_limit). Now the replay keeps its endpoint until the engine, which holds
    // the end-of-stream wait's subscription, leaves, and sends the end of stream again to the
    // engine's reconnect. The black hole closes the engine's side after 4 KiB and swallows the
    // rest of the replay's stream, and holds the reconnect until the end of stream is in it.
    let eos = [wire::CONTROL_TOPIC, b"\0", &[wire::VERSION, Kind::EndOfStream as u8]].concat();
    let (r, hole, replay) = engine_through_a_black_hole("30s", eos);
    let stats = hole.stats();
    assert!(
        stats.seen && stats.relayed >= 2,
        "the end of stream went into the hole, the engine reconnected: {stats:?}"
    );
    let (delivered, lost) = (u(&r, "delivered"), u(&r, "lost"));
    assert!(delivered > 0 && lost > 0, "what the hole swallowed is lost: {r}");
    assert_eq!(delivered + lost, HOLE_COUNT, "exact accounting: {r}");
    let (s, said) = replay_exit(replay);
    assert!(u(&s, "eos_resent") >= 1, "sent again to the reconnect: {s}");
    assert!(s.get("eos_unconfirmed").is_none(), "the engine left: confirmed: {s}");
    assert!(s["eos_wait_s"].as_f64().is_some_and(|w| w > 0.0 && w < 20.0), "{s}");
    assert!(said.iter().any(|l| l.contains("sent it again")), "the resend is said: {said:?}");
}

#[test]
fn a_reconnect_beside_a_connection_dead_without_a_close_confirms_the_end_of_stream_at_once() {
    // Before: the engine's first connection died without a close as far as the replay could
    // tell (a host gone: no FIN, no RST; here a black hole that keeps reading the replay's side),
    // the engine reconnected before the end of stream, and both connections held the
    // end-of-stream wait's subscription when it went out. Only the live one confirmed, so the
    // replay waited its whole --eos-wait and said a subscriber had not confirmed. Now the
    // engine's subscriptions name it (one id per shard) and its confirmation settles every
    // connection of it. The hole cuts the engine's side after 4 KiB and lets its reconnect
    // through as soon as the replay's next data frame goes into the dead connection.
    let data = [b"\0".as_slice(), &[wire::VERSION, Kind::Data as u8]].concat();
    let (_, hole, replay) = engine_through_a_black_hole("15s", data);
    let stats = hole.stats();
    assert!(stats.seen && stats.relayed >= 2, "the engine reconnected before the end of stream: {stats:?}");
    let (s, said) = replay_exit(replay);
    // Both connections held the wait when the end of stream went out: the reconnect came
    // before it (no resend), while the dead one still counted as a subscriber.
    assert!(said.iter().any(|l| l.contains("a subscriber joined (2 now)")), "{said:?}");
    assert!(s.get("eos_resent").is_none(), "the reconnect came before the end of stream: {s}");
    assert!(s.get("eos_unconfirmed").is_none(), "the engine confirmed on its live connection: {s} {said:?}");
    assert!(!said.iter().any(|l| l.contains("not confirmed")), "{said:?}");
    assert!(s["eos_wait_s"].as_f64().is_some_and(|w| w < 5.0), "no wait for the dead connection: {s}");
    // The dead connection was open on the replay's side until here.
    drop(hole);
}

#[test]
fn clone_client_cut_from_its_server_resyncs_and_loses_nothing() {
    const KEYS: usize = 3_000;
    let p = common::free_port_block(3);
    let mut server = Proc::spawn(
        "clone-server",
        mdsub().args(["clone-server", "--quiet", "--endpoint", &format!("tcp://127.0.0.1:{p}")]),
    );
    wait_until(Duration::from_secs(10), "the clone server to answer", || {
        mdsub::clone::server_status(&format!("tcp://127.0.0.1:{p}"), Duration::from_millis(300)).is_ok()
    });
    // Three relays on Q..Q+2 for the server's P..P+2; the publisher link
    // (Q+1) is cut once, somewhere in the updates.
    let q = common::free_port_block(3);
    let relays: Vec<Relay> = (0..3u16)
        .map(|i| {
            let cut = (i == 1).then_some((20_000..60_000, 1));
            let faults = Faults { seed: SEED, cut, ..Faults::default() };
            let listen: SocketAddr = format!("127.0.0.1:{}", q + i).parse().expect("addr");
            Relay::start_on(listen, format!("127.0.0.1:{}", p + i).parse().expect("addr"), faults)
        })
        .collect();
    let relayed =
        Client::start(ClientConfig { servers: vec![format!("tcp://127.0.0.1:{q}")], ..ClientConfig::default() })
            .expect("relayed client starts");
    relayed.wait_synced(Duration::from_secs(10)).expect("relayed client synced");
    let writer =
        Client::start(ClientConfig { servers: vec![format!("tcp://127.0.0.1:{p}")], ..ClientConfig::default() })
            .expect("writer starts");
    writer.wait_synced(Duration::from_secs(10)).expect("writer synced");
    let mut last = None;
    for i in 0..KEYS {
        last = Some(writer.set(format!("/k/{i:05}"), format!("value {i} {}", "x".repeat(40)), None).expect("set"));
    }
    writer.wait_acked(last.expect("a set"), Duration::from_secs(20)).expect("last set acknowledged");
    wait_until(Duration::from_secs(20), "the writer's sets to be acknowledged", || {
        writer.status().map(|s| s.unacked == 0).unwrap_or(false)
    });
    wait_until(Duration::from_secs(30), "the relayed client to hold every key again", || {
        relayed.status().map(|s| s.synced && s.keys == KEYS).unwrap_or(false)
    });
    assert_eq!(relays[1].stats().cuts, 1, "seed {SEED:#x}: the publisher link was cut");
    assert_eq!(relayed.dump("").expect("dump"), writer.dump("").expect("dump"), "nothing lost");
    let s = relayed.status().expect("status");
    assert!(s.resyncs >= 1, "the dropped link made it re-sync: {s:?}");
    let sub_link = s.links.iter().find(|l| l.endpoint == format!("tcp://127.0.0.1:{}", q + 1)).expect("sub link");
    assert_eq!(sub_link.lost.get("disconnected"), Some(&1), "{sub_link}");
    assert_eq!(sub_link.lost_total(), 1, "one loss: {sub_link}");
    assert_eq!(sub_link.reconnects, 1, "{sub_link}");
    drop((relayed, writer));
    server.signal(15);
    server.wait_exit(Duration::from_secs(10));
}

#[test]
fn replay_to_engine_through_a_stalling_delaying_relay_loses_nothing() {
    const COUNT: u64 = 50_000;
    // A 400 ms stall somewhere in the first 1–3 MB (of ~5 MB), and up to
    // 200 µs before every chunk: the stream is late, not broken.
    let faults = Faults {
        seed: SEED,
        delay_max_us: 200,
        stall: Some((1_000_000..3_000_000, Duration::from_millis(400))),
        ..Faults::default()
    };
    let (r, s) = engine_through(COUNT, 50_000, faults, &["--handler", "verify"]);
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "lost")), (COUNT, COUNT, 0), "seed {SEED:#x}: {r}");
    assert_eq!(u(&r["handler"], "verified"), COUNT, "{r}");
    let link = &r["shards"][0]["links"][0];
    assert_eq!((u(link, "connects"), u(link, "reconnects")), (1, 0), "a stall is not a loss: {link}");
    assert_eq!((s.stalls, s.cuts, s.connections), (1, 0, 1), "{s:?}");
}

/// A byte of the ZMTP greeting's mechanism name (offsets 12..16, `NULL`)
/// flipped on the first connection: libzmq fails the handshake as a protocol
/// error (a mechanism it does not speak: `ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH`)
/// and would never retry; the link watch counts it by its reason and connects
/// again, and the stream arrives whole.
#[test]
fn replay_to_engine_with_a_corrupted_handshake_is_reestablished_and_loses_nothing() {
    const COUNT: u64 = 20_000;
    let faults = Faults { seed: SEED, corrupt: Some((12..16, 1)), ..Faults::default() };
    let (r, relayed) = engine_through(COUNT, 50_000, faults, &[]);
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "lost")), (COUNT, COUNT, 0), "seed {SEED:#x}: {r}");
    let link = &r["shards"][0]["links"][0];
    // libzmq reads a mechanism name it does not speak as a mechanism mismatch.
    assert_eq!(u(&link["lost"], "handshake_failed_mechanism"), 1, "{link}");
    assert_eq!((u(link, "reestablished"), u(link, "reconnects")), (1, 1), "{link}");
    assert_eq!(relayed.corrupted, 1);
}

/// `--drop-every` with `--restart-at`: the session that never sent its end of stream (restarted
/// away) and the one that did count the messages left out on purpose alike. Before, the ended
/// session's end of stream left them out of its count while the unended one counted by its last
/// sequence, so `lost` held the first session's drops and not the second's (lost 200, gaps 400).
#[test]
fn drops_on_purpose_count_alike_in_a_session_that_ended_and_one_restarted_away() {
    let feed = ["--rate", "20k", "--count", "40k", "--restart-at", "20k", "--drop-every", "100", "--json"];
    let (replay, eps) = start_replay("replay", 1, &feed);
    let engine = common::engine_json(&eps, &[]);
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    let (status, rest) = replay.finish(Duration::from_secs(30));
    assert!(status.success(), "{rest}");
    let s = json(&rest);
    let left_out = u(&s, "dropped_on_purpose");
    assert_eq!((u(&s, "sent_total"), left_out, u(&s, "restarts")), (39_600, 400, 1), "{s}");
    // Every message numbered: 20 000 in each session, 200 of each left out.
    assert_eq!((u(&r, "unended_sessions"), u(&r, "unended_sent")), (1, 20_000), "{r}");
    assert_eq!(u(&r, "sent"), 40_000, "the ended session counts 20 000 too: {r}");
    assert_eq!((u(&r, "delivered"), u(&r, "restarts"), u(&r, "duplicates")), (39_600, 1, 0), "{r}");
    assert_eq!(u(&r, "gaps"), left_out, "{r}");
    assert_eq!(u(&r, "lost"), left_out, "both sessions' drops, not one's: {r}");
    assert_eq!(u(&r, "delivered") + u(&r, "lost"), u(&r, "sent"), "{r}");
}

/// Loss, a restart and an end of stream are said on stderr at the default log level, loss in
/// one line per metrics interval with new gaps (their new gaps add up to the report's). Before,
/// the same run said only `connecting` and `engine id`: gaps were said at `debug` alone.
#[test]
fn loss_restarts_and_ends_of_stream_are_said_on_stderr() {
    let feed = ["--rate", "20k", "--count", "40k", "--restart-at", "20k", "--drop-every", "100", "--json"];
    let (replay, eps) = start_replay("replay", 1, &feed);
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "90s", "--endpoint", &eps[0]]);
    let mut engine = LineProc::spawn_with_stderr("engine", &mut cmd);
    let stderr = engine.stderr.take().expect("stderr piped");
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    let (status, rest) = replay.finish(Duration::from_secs(30));
    assert!(status.success(), "{rest}");
    let said: Vec<String> = std::iter::from_fn(|| stderr.recv_timeout(Duration::from_secs(2)).ok()).collect();
    let loss: Vec<&String> = said.iter().filter(|l| l.starts_with("warn: loss: ")).collect();
    let new: u64 = loss
        .iter()
        .map(|l| l["warn: loss: ".len()..].split(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0))
        .sum();
    assert_eq!(new, u(&r, "gaps"), "the lines' new gaps add up to the report's: {said:#?}");
    assert_eq!(u(&r, "gaps"), 400, "{r}");
    let last = loss.last().expect("a loss line");
    assert!(
        last.contains("shard0: ")
            && last.contains(", the last in publisher 0 session ")
            && last.ends_with("total 400)"),
        "{said:#?}"
    );
    assert!(
        said.iter().any(|l| l.starts_with("info: shard0: publisher sessions (restart): publisher 0 session ")),
        "{said:#?}"
    );
    assert!(
        said.iter().any(|l| l
            .starts_with("info: shard0: publisher sessions (end_of_stream): end of stream from publisher 0 session ")
            && l.contains(": it sent 20000")),
        "{said:#?}"
    );
}

/// Shard 0's series `name` on the `/metrics` page at `addr` (`HOST:PORT`); None when the page
/// cannot be read or lacks it.
fn shard0_metric(addr: &str, name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut page = String::new();
    conn.read_to_string(&mut page).ok()?;
    let prefix = format!("{name}{{");
    let line = page.lines().find(|l| l.starts_with(&prefix) && l.contains("shard=\"0\""))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// `mdsub engine --json` on `endpoint` (one shard) with `/metrics` on an ephemeral port, shipped
/// every 100 ms; the engine and the metrics address.
fn watched_engine(endpoint: &str) -> (LineProc, String) {
    watched_engine_with(endpoint, &[])
}

/// [`watched_engine`] with `extra` flags.
fn watched_engine_with(endpoint: &str, extra: &[&str]) -> (LineProc, String) {
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "90s", "--snail", "off", "--endpoint", endpoint]);
    cmd.args(extra);
    cmd.args(["--metrics-listen", "127.0.0.1:0", "--metrics-interval", "100ms"]);
    let engine = LineProc::spawn_with_stderr("engine", &mut cmd);
    let url = engine.said_after("metrics: ");
    (engine, url.trim_start_matches("http://").trim_end_matches("/metrics").to_string())
}

/// Wait until shard 0 received at least `frames` frames and its workers handled every message
/// it handed on, the same two looks in a row (100 ms of metrics interval apart at least): the
/// engine is idle, nothing left in its hand-off, so a stop leaves nothing unhandled.
fn wait_idle_after(addr: &str, frames: u64) {
    let mut last = None;
    wait_until(Duration::from_secs(60), "the engine to read and handle what arrived", || {
        let now = (
            shard0_metric(addr, "mdsub_shard_received_total"),
            shard0_metric(addr, "mdsub_shard_forwarded_total"),
            shard0_metric(addr, "mdsub_shard_delivered_total"),
        );
        let steady = matches!(now, (Some(r), Some(f), Some(d)) if r >= frames && f == d) && last == Some(now);
        last = Some(now);
        if !steady {
            std::thread::sleep(Duration::from_millis(150));
        }
        steady
    });
}

/// The publisher is killed (SIGKILL) mid-stream, so no end of stream ever comes, and the engine
/// is stopped with Ctrl-C. Its session is counted to its last arrived message (`unended_*`), so
/// `sent` and `lost` are known up to there (the gaps before it are loss; what it sent after it
/// is not known) and the report says so. Before, `sent unknown` and `lost unknown: end of stream
/// not seen on every shard`, with the session's count in `unended_sent` all the same.
#[test]
fn a_publisher_killed_mid_stream_leaves_sent_and_lost_known_to_its_last_arrived_message() {
    let feed = ["--count", "10M", "--rate", "50k", "--drop-every", "100"];
    let (replay, eps) = start_replay("replay", 1, &feed);
    let (engine, addr) = watched_engine(&eps[0]);
    wait_until(Duration::from_secs(60), "the engine to receive 20 000 frames", || {
        shard0_metric(&addr, "mdsub_shard_received_total").is_some_and(|n| n >= 20_000)
    });
    let mut replay = replay.proc;
    replay.signal(9);
    replay.wait_exit(Duration::from_secs(10));
    wait_idle_after(&addr, 20_000);
    let r = engine.interrupt_for_report(Duration::from_secs(30));
    assert_eq!(r["interrupted"], true, "{r}");
    assert_eq!((u(&r, "unended_sessions"), u(&r, "beyond_sent")), (1, 0), "{r}");
    let (sent, delivered, lost) = (u(&r, "sent"), u(&r, "delivered"), u(&r, "lost"));
    assert_eq!(sent, u(&r, "unended_sent"), "the session's last arrived sequence: {r}");
    assert_eq!(u(&r, "not_handled"), 0, "the engine was idle at the stop: {r}");
    assert_eq!(delivered + lost, sent, "the report adds up: {r}");
    // One in a hundred left out: loss up to the last arrived message, by sequence.
    assert!(lost >= 200 && lost == u(&r, "gaps"), "{r}");
    let basis = r["loss_basis"].as_str().unwrap_or_default();
    assert_eq!(
        basis, "1 session without an end of stream counted to its last arrived message (sent after it: unknown)",
        "{r}"
    );
    let shard = &r["shards"][0];
    assert_eq!((u(shard, "sent"), u(shard, "lost")), (sent, lost), "{shard}");
    assert_eq!(shard["loss_basis"], basis, "{shard}");
}

/// The publisher is killed (SIGKILL) mid-stream and its id is never heard again: after
/// `--forget-silent-after` of nothing from it, the engine forgets it (the gauges of what its
/// tracker holds go back to 0), says so once on stderr, counts it (`vanished`, on /metrics and in
/// the report), and its session counts once, as unended to its last arrived message: the stop
/// that ends the run counts nothing again, and the report adds up. Before, it was held with its
/// topics for the rest of the run (and the flag did not exist).
#[test]
fn a_publisher_killed_and_never_heard_again_is_forgotten_after_the_bound_and_counted_once() {
    let feed = ["--count", "10M", "--rate", "20k", "--drop-every", "100"];
    let (replay, eps) = start_replay("replay", 1, &feed);
    let (mut engine, addr) = watched_engine_with(&eps[0], &["--forget-silent-after", "2s"]);
    let err = engine.stderr.take().expect("stderr piped");
    wait_until(Duration::from_secs(60), "the engine to receive 5 000 frames", || {
        shard0_metric(&addr, "mdsub_shard_received_total").is_some_and(|n| n >= 5_000)
    });
    let held = |name| shard0_metric(&addr, name).unwrap_or(u64::MAX);
    assert!(held("mdsub_shard_topics_held") > 0 && held("mdsub_shard_publishers_held") == 1);
    let mut replay = replay.proc;
    replay.signal(9);
    replay.wait_exit(Duration::from_secs(10));
    let line = wait_line(&err, Duration::from_secs(30), "the vanished publisher said", |l| {
        l.contains("vanished: nothing heard from it (no data, no heartbeat, no end of stream) for 2s")
    });
    assert!(line.contains("shard0-reader: publisher ") && line.contains("counted as unended"), "{line}");
    wait_until(Duration::from_secs(30), "the tracker to give its publisher and topics back", || {
        (
            held("mdsub_shard_publishers_held"),
            held("mdsub_shard_topics_held"),
            held("mdsub_shard_vanished_sessions_total"),
        ) == (0, 0, 1)
    });
    wait_idle_after(&addr, 5_000);
    let r = engine.interrupt_for_report(Duration::from_secs(30));
    let more: Vec<String> =
        rest_lines(&err, Duration::from_secs(5)).into_iter().filter(|l| l.contains("vanished")).collect();
    assert!(more.is_empty(), "said once: {more:?}");
    assert_eq!((u(&r, "vanished"), u(&r, "vanished_back"), u(&r, "unended_sessions")), (1, 0, 1), "{r}");
    let (sent, delivered, lost) = (u(&r, "sent"), u(&r, "delivered"), u(&r, "lost"));
    assert_eq!((sent, u(&r, "not_handled"), u(&r, "beyond_sent")), (u(&r, "unended_sent"), 0, 0), "{r}");
    assert_eq!(delivered + lost, sent, "the report adds up, its session counted once: {r}");
    assert!(lost >= 50 && lost == u(&r, "gaps"), "{r}");
}

/// The publisher is killed (SIGKILL) mid-stream, forgotten as vanished after
/// `--forget-silent-after`, then started again on its endpoint under the same publisher id (a
/// new session): that is its restart, counted in the report, its shard and on /metrics, and said
/// as one; the vanished session stays counted once as unended (nothing taken back, nothing
/// counted twice) and the report adds up. Before, the new session was taken for a new
/// publisher's: `restarts` 0.
#[test]
fn a_publisher_restarted_under_its_id_after_it_vanished_is_counted_as_a_restart() {
    let (replay, eps) = start_replay("replay (first)", 1, &["--count", "10M", "--rate", "20k", "--drop-every", "100"]);
    let (mut engine, addr) = watched_engine_with(&eps[0], &["--forget-silent-after", "2s"]);
    let err = engine.stderr.take().expect("stderr piped");
    wait_until(Duration::from_secs(60), "the engine to receive 5 000 frames", || {
        shard0_metric(&addr, "mdsub_shard_received_total").is_some_and(|n| n >= 5_000)
    });
    let mut replay = replay.proc;
    replay.signal(9);
    replay.wait_exit(Duration::from_secs(10));
    wait_line(&err, Duration::from_secs(30), "the vanished publisher said", |l| {
        l.contains("vanished: nothing heard from it (no data, no heartbeat, no end of stream) for 2s")
    });
    // The same publisher again (id 0, the replay's default), on the same endpoint: a new session.
    let n = 30_000u64;
    let mut cmd = mdsub();
    cmd.args(["replay", "--endpoint", &eps[0], "--count", "30000", "--rate", "10k", "--drop-every", "100"]);
    let again = LineProc::spawn("replay (again)", &mut cmd);
    common::bound_endpoints(&again, 1);
    wait_until(Duration::from_secs(30), "the restart on /metrics", || {
        shard0_metric(&addr, "mdsub_shard_restarts_total") == Some(1)
    });
    // Its end of stream ends the run: the vanished session is not waited for.
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    let (status, rest) = again.finish(Duration::from_secs(30));
    assert!(status.success(), "{rest}");
    let said = rest_lines(&err, Duration::from_secs(5));
    assert!(
        said.iter().any(|l| l.starts_with("info: shard0: publisher sessions (restart): publisher 0 session ")),
        "{said:#?}"
    );
    assert_eq!((u(&r, "restarts"), u(&r["shards"][0], "restarts")), (1, 1), "{r}");
    assert_eq!((u(&r, "vanished"), u(&r, "vanished_back"), u(&r, "unended_sessions")), (1, 0, 1), "{r}");
    let (sent, delivered, lost) = (u(&r, "sent"), u(&r, "delivered"), u(&r, "lost"));
    assert_eq!(sent, u(&r, "unended_sent") + n, "the vanished session once, the new one by its end of stream: {r}");
    assert_eq!((delivered + lost, u(&r, "not_handled")), (sent, 0), "the report adds up: {r}");
    assert!(lost >= 50 + 300 && lost == u(&r, "gaps"), "{r}");
    assert_eq!(r["bad_frames"]["after_end"], 0, "{r}");
}

/// A lossless replay held back by another subscriber that stopped reading (a SUB that never
/// reads, its pipe full) sends nothing to the engine, heartbeats neither (libzmq refuses every
/// message while a matching pipe is full under XPUB_NODROP), for longer than the engine's
/// `--forget-silent-after`. Its connection to the engine stays up, so it is not said vanished:
/// once the other subscriber goes, the run goes on to its end of stream with nothing forgotten,
/// taken back or lost. Before, it was said vanished after 2 s of the hold and taken back when
/// it resumed (`vanished` 1, `vanished_back` 1): the counts exact, the line false.
#[test]
fn a_lossless_replay_held_back_by_another_subscriber_is_not_said_vanished() {
    let n = 100_000u64;
    let feed = ["--count", "100k", "--rate", "20k", "--subscribers", "2", "--sndhwm-msgs", "1000", "--json"];
    let (replay, eps) = start_replay("replay", 1, &feed);
    let (mut engine, addr) = watched_engine_with(&eps[0], &["--forget-silent-after", "2s"]);
    let err = engine.stderr.take().expect("stderr piped");
    // The other subscriber: takes everything (the control topic too, so the replay counts it)
    // and never reads; small buffers, so its pipe fills soon.
    let ctx = zmq::Context::new();
    let stuck = ctx.socket(zmq::SUB).expect("sub");
    stuck.set_rcvhwm(100).expect("rcvhwm");
    stuck.set_rcvbuf(4096).expect("rcvbuf");
    stuck.connect(&eps[0]).expect("connect");
    stuck.set_subscribe(b"").expect("subscribe");
    stuck.set_subscribe(wire::CONTROL_TOPIC).expect("subscribe");
    let replay_err = replay.stderr.as_ref().expect("replay stderr");
    wait_line(replay_err, Duration::from_secs(60), "the replay held back", |l| l.contains("held back for"));
    // The engine hears nothing for twice the bound and more: its count stands still that long.
    let received = || shard0_metric(&addr, "mdsub_shard_received_total");
    let mut still = (received(), std::time::Instant::now());
    wait_until(Duration::from_secs(60), "the engine to hear nothing for 4 s", || {
        let now = received();
        if now != still.0 {
            still = (now, std::time::Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
        still.1.elapsed() >= Duration::from_secs(4)
    });
    let held = |name| shard0_metric(&addr, name).unwrap_or(u64::MAX);
    assert_eq!((held("mdsub_shard_vanished_sessions_total"), held("mdsub_shard_publishers_held")), (0, 1));
    drop(stuck);
    drop(ctx);
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    let (status, rest) = replay.finish(Duration::from_secs(30));
    assert!(status.success(), "{rest}");
    let s = json(&rest);
    let blocked = s["blocked_s_per_shard"][0].as_f64().expect("blocked_s");
    assert!(blocked >= 4.0, "held longer than the bound: {s}");
    let said: Vec<String> =
        rest_lines(&err, Duration::from_secs(5)).into_iter().filter(|l| l.contains("vanished")).collect();
    assert!(said.is_empty(), "a publisher held back is not said vanished: {said:?}");
    assert_eq!((u(&r, "vanished"), u(&r, "vanished_back")), (0, 0), "{r}");
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "lost")), (n, n, 0), "lossless, all of it: {r}");
}

/// Two publishers behind one real `mdsub lvc`, the engine connected to the LVC alone: one is
/// killed (SIGKILL) mid-stream while the other goes on. The engine's one connection, the LVC's,
/// stays up, so no connection of the shard ends; but the other publisher is heard after the
/// killed one on that connection, so the killed one is forgotten as vanished after
/// `--forget-silent-after`, said once with why, counted once, and the other is held. Its end of
/// stream (Ctrl-C) ends the run, the vanished session not waited for, and the report adds up.
/// Before, a publisher behind a proxy was never forgotten while the proxy's connection stayed
/// up: churn behind a proxy grew without bound again.
#[test]
fn a_publisher_killed_behind_a_live_proxy_is_said_vanished_while_another_goes_on() {
    let feed = ["--count", "10M", "--rate", "10k", "--drop-every", "100"];
    let (killed, killed_eps) = start_replay("replay (killed)", 1, &feed);
    let mut on = feed.to_vec();
    on.extend(["--publisher-id", "1"]);
    let (going, going_eps) = start_replay("replay (going on)", 1, &on);
    let lvc = common::proxy::start_with(
        "lvc",
        &format!("connect:{}", killed_eps[0]),
        "bind:tcp://127.0.0.1:*",
        &["--frontend", &format!("connect:{}", going_eps[0])],
    );
    let (mut engine, addr) = watched_engine_with(&lvc.backend, &["--forget-silent-after", "2s"]);
    let err = engine.stderr.take().expect("stderr piped");
    wait_until(Duration::from_secs(60), "the engine to hold both publishers, 5 000 frames in", || {
        shard0_metric(&addr, "mdsub_shard_publishers_held") == Some(2)
            && shard0_metric(&addr, "mdsub_shard_received_total").is_some_and(|n| n >= 5_000)
    });
    let mut killed = killed.proc;
    killed.signal(9);
    killed.wait_exit(Duration::from_secs(10));
    let line =
        wait_line(&err, Duration::from_secs(30), "the killed publisher said vanished", |l| l.contains("vanished:"));
    assert!(line.contains("shard0-reader: publisher 0 session "), "the killed one, not the other: {line}");
    assert!(line.contains("for 2s, while another publisher was heard since on this shard's one connection"), "{line}");
    let held = |name| shard0_metric(&addr, name).unwrap_or(u64::MAX);
    wait_until(Duration::from_secs(30), "the tracker to give the killed one back", || {
        (held("mdsub_shard_publishers_held"), held("mdsub_shard_vanished_sessions_total")) == (1, 1)
    });
    // The other one's end of stream ends the run.
    going.proc.signal(2);
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    let (status, rest) = going.finish(Duration::from_secs(30));
    assert!(status.success(), "{rest}");
    let mut lvc = lvc.proc;
    lvc.signal(15);
    lvc.wait_exit(Duration::from_secs(10));
    let more: Vec<String> =
        rest_lines(&err, Duration::from_secs(5)).into_iter().filter(|l| l.contains("vanished")).collect();
    assert!(more.is_empty(), "said once: {more:?}");
    assert_eq!((u(&r, "vanished"), u(&r, "vanished_back"), u(&r, "unended_sessions")), (1, 0, 1), "{r}");
    assert_eq!(u(&r, "restarts"), 0, "{r}");
    let (sent, delivered, lost) = (u(&r, "sent"), u(&r, "delivered"), u(&r, "lost"));
    assert_eq!((delivered + lost, u(&r, "not_handled")), (sent, 0), "the report adds up: {r}");
    assert!(sent > u(&r, "unended_sent") && lost == u(&r, "gaps"), "{r}");
    assert_eq!(r["bad_frames"]["after_end"], 0, "{r}");
}

/// One shard connects to a replay and binds an endpoint nobody connects to. The replay runs to
/// its end of stream; the shard still waits for the bound side, and the engine is stopped with
/// Ctrl-C. The connected endpoint's session is every one the shard needs (a bound endpoint may
/// have any number of publishers, none included): the loss is known, from the end of stream.
/// Before, two ends of stream were needed (one per endpoint): `lost unknown`.
#[test]
fn a_bound_endpoint_nobody_used_leaves_the_loss_known_from_the_connected_ones_end_of_stream() {
    let (replay, eps) = start_replay("replay", 1, &["--count", "5000", "--rate", "0", "--drop-every", "100"]);
    let (engine, addr) = watched_engine(&format!("{},bind:tcp://127.0.0.1:*", eps[0]));
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert!(status.success(), "the replay ran to its end of stream");
    // 4 950 data frames and the end of stream.
    wait_idle_after(&addr, 4_951);
    let r = engine.interrupt_for_report(Duration::from_secs(30));
    assert_eq!(r["interrupted"], true, "the shard waited on for its bound endpoint: {r}");
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "not_handled")), (5_000, 4_950, 0), "{r}");
    assert_eq!((u(&r, "lost"), u(&r, "gaps"), u(&r, "unended_sessions")), (50, 50, 0), "{r}");
    assert_eq!(r["loss_basis"], "end-of-stream counts", "{r}");
    let shard = &r["shards"][0];
    assert_eq!((u(shard, "lost"), u(shard, "publisher_connects")), (50, 0), "{shard}");
}

/// The soak's churn (review 18): one connection to a bound shard sends a publisher id per
/// session, each one frame and its end of stream, more ids than a reader tracks at once, then a
/// new publisher sends ten. Before, every id past `MAX_PUBLISHERS` was dropped for good as
/// `over_limit` (their ends of stream too, so the run never heard them all and `lost` read 0);
/// now an ended publisher gives its place back and every message is delivered and counted.
#[test]
fn a_churn_of_publishers_that_end_never_locks_new_ones_out() {
    use mdsub::engine::sequence::MAX_PUBLISHERS;
    use mdsub::wire::{encode, Header, Kind, CONTROL_TOPIC};
    let churn = MAX_PUBLISHERS as u32 + 200;
    let mut cmd = mdsub();
    let sessions = (churn + 1).to_string();
    cmd.args(["engine", "--json", "--max-duration", "60s", "--endpoint", "bind:tcp://127.0.0.1:*"]);
    cmd.args(["--expect-eos", &sessions]);
    let engine = LineProc::spawn_with_stderr("engine", &mut cmd);
    let ep = engine.said_after("shard0: bound ");
    let ctx = zmq::Context::new();
    let mut xpub = ctx.socket(zmq::XPUB).expect("xpub");
    mdsub::zmqx::set_xpub_nodrop(&mut xpub, true).expect("nodrop");
    xpub.set_sndhwm(0).expect("sndhwm");
    xpub.connect(&ep).expect("connect");
    // The engine takes every topic: its subscription to all of them is `[1]` alone.
    wait_until(Duration::from_secs(20), "the engine's subscription", || {
        xpub.poll(zmq::POLLIN, 100).expect("poll") > 0 && xpub.recv_bytes(0).expect("sub") == [1]
    });
    let now = mdsub::clock::realtime_ns;
    for id in 0..=churn {
        let frames = if id == churn { 10 } else { 1 };
        let session_id = 1000 + u64::from(id);
        let topic = format!("T{}", id % 50);
        for seq in 1..=frames {
            let h = Header { publisher_id: id, session_id, ..Header::data(seq, now()) };
            xpub.send(encode(topic.as_bytes(), &h, b"x"), 0).expect("send");
        }
        let eos = Header { kind: Kind::EndOfStream, publisher_id: id, session_id, ..Header::data(frames, now()) };
        xpub.send(encode(CONTROL_TOPIC, &eos, &frames.to_le_bytes()), 0).expect("eos");
    }
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    let sent = u64::from(churn) + 10;
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "lost")), (sent, sent, 0), "{r}");
    assert_eq!(r["interrupted"], false, "every end of stream heard: {r}");
    for reason in ["over_limit_publishers", "over_limit_topics", "after_end"] {
        assert_eq!(r["bad_frames"][reason], 0, "{reason}: {r}");
    }
}
