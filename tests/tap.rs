//! `mdsub tap` over real sockets with a real process: recording reads back
//! byte-identical, filters pick what is shown/recorded without changing the
//! flow, subscription events are shown, `--stats` counts per topic.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::proxy::*;
use common::wait_line;
use mdsub::wire::capture::CaptureReader;

const DEADLINE: Duration = Duration::from_secs(5);

/// `name` in a fresh scratch directory of its own (removed when the test is done).
fn temp_file(name: &str) -> (common::TempDir, PathBuf) {
    let dir = common::temp_dir(&format!("tap-{name}"));
    let p = dir.join(name);
    (dir, p)
}

/// Every message in a capture file, as frames, probes left out.
fn read_capture(path: &Path) -> Vec<Vec<Vec<u8>>> {
    let mut r = CaptureReader::open(path).expect("capture file opens");
    let mut out = Vec::new();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    while let Some(rec) = r.next_record().expect("intact capture") {
        cur.push(rec.frame.to_vec());
        if !rec.more {
            let m = std::mem::take(&mut cur);
            if !is_probe(&m, None) {
                out.push(m);
            }
        }
    }
    assert!(cur.is_empty(), "capture ends inside a multipart message");
    out
}

fn traffic() -> Vec<Vec<Vec<u8>>> {
    vec![
        vec![frame("ESH6", 1, 1, b"bid 5000.25")],
        vec![b"F001".to_vec(), b"Save Roger".to_vec()],
        vec![frame("ESH66", 2, 1, &[0u8, 255, 7, 0])],
        vec![b"F002".to_vec(), b"".to_vec(), vec![0u8, 1, 2, 3]],
        vec![frame("NQZ5", 3, 1, b"")],
        vec![frame("CLF6", 4, 1, b"x")],
        vec![b"NQ1".to_vec(), b"foreign nq".to_vec()],
    ]
}

/// Publish `msgs` through `tap` to a subscriber of everything, then a probe, and wait (up to
/// `deadline`) for the probe; returns what the subscriber got before it and the two sockets
/// (alive until the caller drops them).
fn publish_through(tap: &Proxy, msgs: &[Vec<Vec<u8>>], deadline: Duration) -> (Vec<Vec<Vec<u8>>>, [zmq::Socket; 2]) {
    let ctx = zmq::Context::new();
    let publisher = publisher(&ctx, &tap.frontend);
    let sub = subscriber(&ctx, &tap.backend, &[b""]);
    handshake(&publisher, &sub);
    for m in msgs {
        publisher.send_multipart(m.clone(), 0).expect("publish");
    }
    publisher.send(frame(PROBE, 0, 0, b"end"), 0).expect("probe");
    let got = until_probe(&sub, deadline, Some(b"end"));
    (got, [publisher, sub])
}

/// Publish [`traffic`] through `tap` to a subscriber of everything and check it all came
/// through; returns what was sent and the two sockets (alive until the caller drops them).
fn traffic_through(tap: &Proxy) -> (Vec<Vec<Vec<u8>>>, [zmq::Socket; 2]) {
    let sent = traffic();
    let (got, sockets) = publish_through(tap, &sent, DEADLINE);
    assert_eq!(got, sent, "the subscriber gets everything through the tap");
    (sent, sockets)
}

/// Stop `tap` (cleanly) and check its exit counters say `counter` is 0 and its capture at
/// `path` reads back as `sent`, byte for byte, MORE flags kept.
fn stop_and_read_back(tap: &mut Proxy, counter: &str, path: &Path, sent: &[Vec<Vec<u8>>]) {
    let (_, err) = stop(tap);
    let last = stopped_line("tap", &err);
    assert_eq!(common::proxy::counter(last, counter), 0, "{last}");
    assert_eq!(read_capture(path), sent, "the capture = what was published");
}

#[test]
fn recording_reads_back_byte_identical_and_subscriptions_are_shown() {
    let (_dir, path) = temp_file("live.cap");
    let mut tap = start("tap", &["--record", path.to_str().expect("utf-8 path")]);
    let (sent, [_publisher, sub]) = traffic_through(&tap);
    wait_line(&tap.stdout, DEADLINE, "the subscribe event", |l| l == "subscribe prefix=\"\"");
    wait_line(&tap.stdout, DEADLINE, "the decoded ESH6 line", |l| {
        l.starts_with("msg topic=ESH6 kind=data pub=7 session=5eed seq=1 topic_seq=1 lag_us=") && l.ends_with("size=64")
    });
    wait_line(&tap.stdout, DEADLINE, "the foreign F001 line", |l| {
        l == "msg foreign topic=\"F001\" frames=2 size=14 hex=53 61 76 65 20 52 6f 67 65 72"
    });
    sub.set_unsubscribe(b"").expect("unsubscribe");
    wait_line(&tap.stdout, DEADLINE, "the unsubscribe event", |l| l == "unsubscribe prefix=\"\"");

    stop_and_read_back(&mut tap, "dropped", &path, &sent);
    assert!(!CaptureReader::open(&path).expect("opens").filtered(), "no filter: a replay sends it byte for byte");
}

/// A tap started to record `file`, run until it exits (it is expected to be refused at once):
/// its exit code, stdout and stderr.
fn a_tap_recording(file: &str) -> (Option<i32>, String, String) {
    common::run_within(
        "tap",
        common::mdsub()
            .args(["tap", "--frontend", "bind:tcp://127.0.0.1:*", "--backend", "bind:tcp://127.0.0.1:*"])
            .args(["--quiet", "--record", file]),
        Duration::from_secs(20),
    )
}

/// Two taps given one `--record` file used to write it together (the second truncated the
/// first's capture under it), both exiting 0. The second is refused before it starts, naming the
/// file; the first records on and its capture reads back whole.
#[test]
fn a_record_file_another_tap_writes_is_refused() {
    let (_dir, path) = temp_file("same.mdcap");
    let file = path.to_str().expect("utf-8 path");
    let mut first = start("tap", &["--quiet", "--subscribe-all", "--record", file]);
    let (code, out, err) = a_tap_recording(file);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(
        err.trim(),
        format!(
            "mdsub: error: tap: --record {file}: process {} (mdsub) is writing this file (it holds the file's lock); \
             give another path or let that run end",
            first.proc.pid()
        ),
        "one line naming the first tap, and no endpoint bound: the tap did not start"
    );
    let (sent, _sockets) = traffic_through(&first);
    stop_and_read_back(&mut first, "record_errors", &path, &sent);
}

#[test]
fn filters_choose_what_is_shown_and_recorded_not_what_passes() {
    let (_dir, path) = temp_file("filtered.cap");
    let mut tap = start(
        "tap",
        &["--subscribe-all", "--filter", "ESH6\\0", "--filter", "NQ", "--record", path.to_str().expect("utf-8 path")],
    );
    // Forwarding is not filtered: everything comes through.
    let (sent, _sockets) = traffic_through(&tap);

    let (out, _) = stop(&mut tap);
    let want: Vec<Vec<Vec<u8>>> = vec![sent[0].clone(), sent[4].clone(), sent[6].clone()];
    assert_eq!(read_capture(&path), want, "only ESH6 exactly, NQZ5 and NQ1 recorded");
    assert!(CaptureReader::open(&path).expect("opens").filtered(), "the header says a filter chose what is in it");
    let shown: Vec<&String> = out.iter().filter(|l| l.starts_with("msg ")).collect();
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert!(shown[0].starts_with("msg topic=ESH6 "), "{shown:?}");
    assert!(shown[1].starts_with("msg topic=NQZ5 "), "{shown:?}");
    assert!(shown[2].starts_with("msg foreign topic=\"NQ1\""), "{shown:?}");
}

/// Publish five ESH6 frames through `tap` and see them through; returns the sockets.
fn five_esh6_through(tap: &Proxy) -> [zmq::Socket; 2] {
    let five: Vec<Vec<Vec<u8>>> = (0..5).map(|i| vec![frame("ESH6", i + 1, i + 1, b"")]).collect();
    publish_through(tap, &five, DEADLINE).1
}

/// Every stdout line parsed as JSON (a line that is not is a failure), split into the records
/// and the last line, which must be the exit counters.
fn json_lines(out: &[String]) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut records: Vec<serde_json::Value> = out
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}")))
        .collect();
    let last = records.pop().expect("some output");
    assert_eq!(last["stopped"], "tap", "the counters come last: {last}");
    (last, records)
}

#[test]
fn stats_counts_per_topic() {
    let mut tap = start("tap", &["--stats", "--subscribe-all"]);
    let _sockets = five_esh6_through(&tap);
    wait_line(&tap.stdout, Duration::from_secs(3), "a stats line counting ESH6", |l| l == "  \"ESH6\" 5");
    let (out, _) = stop(&mut tap);
    assert!(!out.iter().any(|l| l.starts_with("msg ")), "--stats prints no per-message lines");
}

#[test]
fn a_record_file_it_cannot_create_is_one_line_naming_the_flag() {
    // Before: `could not create the capture file X: i/o error while creating the capture file: …`.
    let (code, _out, err) = common::run_within(
        "tap",
        common::mdsub().args([
            "tap",
            "--frontend",
            "connect:tcp://127.0.0.1:1",
            "--backend",
            "bind:tcp://127.0.0.1:*",
            "--record",
            "/nonexistent-dir/x.mdcap",
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.contains("--record /nonexistent-dir/x.mdcap"), "{line}");
    assert_eq!(line.matches("capture file").count(), 1, "said once: {line}");
    assert_eq!(line.matches("No such file or directory").count(), 1, "{line}");
}

#[test]
fn json_makes_stdout_json_lines_ending_with_the_counters() {
    // Without --quiet: every message and subscription is a record, the counters the last line.
    let mut tap = start("tap", &["--json"]);
    let _sockets = traffic_through(&tap);

    // (`start` read the endpoint lines from stderr: with --json they are not on stdout.)
    let (out, _) = stop(&mut tap);
    let (last, records) = json_lines(&out);
    assert_eq!(last["dropped"], 0, "{last}");
    let msgs: Vec<&serde_json::Value> = records.iter().filter(|r| r["type"] == "msg").collect();
    assert_eq!(last["matched_messages"], msgs.len(), "one record per message shown: {last}");
    assert!(records.iter().all(|r| ["msg", "subscribe"].contains(&r["type"].as_str().unwrap_or("?"))), "{records:?}");
    assert!(records.iter().any(|r| r["type"] == "subscribe" && r["prefix"] == ""), "{records:?}");
    let ours: Vec<&&serde_json::Value> = msgs.iter().filter(|r| r["topic"] != PROBE).collect();
    let topics: Vec<&str> = ours.iter().map(|r| r["topic"].as_str().unwrap_or("?")).collect();
    assert_eq!(topics, ["ESH6", "F001", "ESH66", "F002", "NQZ5", "CLF6", "NQ1"]);
    let esh6 = ours[0];
    assert_eq!(
        (&esh6["format"], &esh6["kind"], &esh6["pub"], &esh6["session"], &esh6["seq"], &esh6["size"]),
        (&"mdsub".into(), &"data".into(), &7.into(), &"5eed".into(), &1.into(), &64.into()),
        "{esh6}"
    );
    let f001 = ours[1];
    assert_eq!(
        (&f001["format"], &f001["frames"], &f001["hex"]),
        (&"foreign".into(), &2.into(), &"53 61 76 65 20 52 6f 67 65 72".into()),
        "{f001}"
    );
}

#[test]
fn json_with_stats_is_one_record_per_refresh() {
    let mut tap = start("tap", &["--stats", "--json", "--subscribe-all"]);
    let _sockets = five_esh6_through(&tap);
    let (out, _) = stop(&mut tap);
    let (_, stats) = json_lines(&out);
    assert!(!stats.is_empty() && stats.iter().all(|r| r["type"] == "stats"), "{stats:?}");
    // The last refresh (printed at exit) counts everything.
    assert_eq!(stats[stats.len() - 1]["counts"]["ESH6"], 5, "{stats:?}");
}

#[test]
fn a_subscription_too_long_for_libzmq_is_kept_from_the_publishers() {
    // Before, a 60 000-byte subscription, undone upstream (libzmq's XSUB recurses once per
    // byte to remove it), overflowed the proxy thread's stack and aborted the tap.
    let last = long_subscription_through("tap", &["--quiet"], 60_000);
    assert_eq!(counter(&last, "too_long_up"), 2, "the subscribe and the unsubscribe: {last}");
    let last = long_subscription_through("tap", &["--quiet"], 4096);
    assert_eq!(counter(&last, "too_long_up"), 0, "a 4 KiB prefix still passes: {last}");
}

#[test]
fn a_recording_that_cannot_be_written_fails_the_run() {
    // Before, `--record /dev/full` said `recording stopped` and counted record_errors=1, but
    // the tap exited 0 as if the recording were whole.
    if !common::dev_full_or_skip("a_recording_that_cannot_be_written_fails_the_run") {
        return;
    }
    let mut tap = start("tap", &["--quiet", "--record", "/dev/full"]);
    let _sockets = traffic_through(&tap);
    let (status, _, err) = interrupt(&mut tap);
    assert_eq!(status.code(), Some(1), "{err:?}");
    let last = stopped_line("tap", &err);
    assert_eq!(common::proxy::counter(last, "record_errors"), 1, "{last}");
    assert!(err.iter().any(|l| l.contains("the recording /dev/full is incomplete")), "{err:?}");
}

#[test]
fn a_frame_the_wire_decoder_refuses_is_shown_with_why_and_counted() {
    // Before: `msg foreign topic="VER9\x00\x09…"`, the whole frame taken as the topic, no reason.
    let mut tap = start("tap", &[]);
    let mut msgs: Vec<Vec<Vec<u8>>> = bad_frames("VER9", 1).into_iter().map(|f| vec![f]).collect();
    msgs.push(vec![b"10001 23 45".to_vec()]); // a foreign frame without a NUL
    let _sockets = publish_through(&tap, &msgs, DEADLINE);
    let line = |why: &'static str, said: &'static str| {
        wait_line(&tap.stdout, DEADLINE, why, move |l| {
            l.starts_with(&format!("msg bad topic=\"VER9\" reason={why} size=")) && l.ends_with(said)
        })
    };
    let v = line("unknown_version", " (bad frame: unknown wire version 9)");
    assert!(v.contains(" hex=09 01 00 00 "), "the header shown from its first byte: {v}");
    line("unknown_kind", " (bad frame: unknown kind 7)");
    line("length_mismatch", " (bad frame: payload length 3 in header but 4 bytes follow)");
    wait_line(&tap.stdout, DEADLINE, "the foreign frame", |l| l.starts_with("msg foreign topic=\"10001 23 45\""));
    let (_, err) = stop(&mut tap);
    let last = stopped_line("tap", &err);
    assert_eq!(common::proxy::counter(last, "bad_frames"), 3, "{last}");
    assert!(
        err.iter().any(|l| l.starts_with("tap: bad frame (unknown_version): topic \"VER9\": unknown wire version 9")),
        "the first of each reason said: {err:?}"
    );
}

#[test]
fn a_recording_on_a_full_disk_keeps_whole_messages_and_counts_what_reached_the_file() {
    // Before, on a 64 KiB tmpfs: recorded_frames=379 but the file held 378 records and a torn one.
    let test = "a_recording_on_a_full_disk_keeps_whole_messages_and_counts_what_reached_the_file";
    let Some(fs) = common::Tmpfs::mount_or_skip(test, "size=64k") else { return };
    let path = fs.dir.join("feed.cap");
    let mut tap = start("tap", &["--quiet", "--subscribe-all", "--record", path.to_str().expect("utf-8 path")]);
    // ~ 190 KiB of records: the disk fills part way.
    let msgs: Vec<Vec<Vec<u8>>> = (1..=2_000).map(|i| vec![frame("ESH6", i, i, &[b'x'; 100])]).collect();
    let _sockets = publish_through(&tap, &msgs, Duration::from_secs(20));
    let (status, _, err) = interrupt(&mut tap);
    assert_eq!(status.code(), Some(1), "an incomplete recording fails the run: {err:?}");
    let last = stopped_line("tap", &err);
    let c = |name| common::proxy::counter(last, name);

    // The file is whole records, to its end, and exactly as many as counted.
    let mut r = CaptureReader::open(&path).expect("capture file opens");
    let mut records = 0u64;
    while let Some(rec) = r.next_record().unwrap_or_else(|e| panic!("no torn tail: {e} ({last})")) {
        assert!(!rec.more);
        records += 1;
    }
    assert!(records > 0, "{last}");
    assert_eq!(c("recorded_frames"), records, "{last}");
    assert_eq!(c("recorded_messages"), records, "{last}");
    assert_eq!(c("recorded_messages") + c("record_lost"), c("matched_messages"), "every message counted once: {last}");
    assert_eq!(c("record_errors"), 1, "{last}");
    let said: Vec<&String> = err.iter().filter(|l| l.starts_with("tap: recording stopped: ")).collect();
    assert_eq!(said.len(), 1, "said once: {err:?}");
    assert!(said[0].contains(&format!("holds {records} whole messages")), "{}", said[0]);
    assert!(said[0].contains("No space left on device"), "the cause: {}", said[0]);
}

#[test]
fn a_bound_frontend_no_publisher_reached_is_said_and_so_is_the_publisher_that_comes() {
    // Before, the tap said nothing however long no publisher came (an engine's bound shard says it).
    common::proxy::says_when_no_publisher_came("tap", &["--quiet"]);
}

/// A capture recorded through `--filter` replayed into an engine: the recorded stream sequences
/// skip what the filter left out, which the engine said as `warn: loss:` lines (one gap per
/// message left out) while its report said `lost 0`. The tap flags the capture as filtered, and
/// the replay renumbers it (as `--restamp` does), saying why once: no gap, no loss line.
#[test]
fn a_capture_recorded_through_a_filter_replays_without_false_loss() {
    let (dir, path) = temp_file("filtered-then-replayed.cap");
    let cap = path.to_str().expect("utf-8 path");
    let mut tap = start("tap", &["--quiet", "--subscribe-all", "--filter", "ESH6\\0", "--record", cap]);
    // One publisher's stream of two topics taking turns: the filter keeps every other message.
    let msgs: Vec<Vec<Vec<u8>>> = (1..=100u64)
        .map(|i| vec![frame(if i % 2 == 1 { "ESH6" } else { "NQZ5" }, i, i.div_ceil(2), &i.to_le_bytes())])
        .collect();
    let (got, _sockets) = publish_through(&tap, &msgs, DEADLINE);
    assert_eq!(got.len(), 100, "everything passes the tap");
    stop(&mut tap);
    assert_eq!(read_capture(&path).len(), 50, "the ESH6 half is recorded");

    let (r, said, replay_said, _) = replay_into_an_engine(cap);
    assert_eq!((common::u(&r, "sent"), common::u(&r, "delivered")), (50, 50), "{r}");
    assert_eq!(
        (common::u(&r, "lost"), common::u(&r, "gaps")),
        (0, 0),
        "no gap where the filter left a message out: {r}"
    );
    let loss: Vec<&String> = said.iter().filter(|l| l.contains("loss:")).collect();
    assert!(loss.is_empty(), "no loss line for what is not loss: {loss:?}");
    let notes: Vec<&String> = replay_said.iter().filter(|l| l.contains("recorded through a filter")).collect();
    assert_eq!(notes.len(), 1, "said once: {replay_said:?}");
    assert!(notes[0].contains("renumbered") && notes[0].contains("--restamp"), "{}", notes[0]);
    drop(dir);
}

/// Replay the capture `cap` (`--json`, flat out) into a real engine (`--json`) and wait for
/// both: the engine's numbers and its stderr, then the replay's stderr (what it said before its
/// endpoint included) and its numbers. Both must exit 0.
fn replay_into_an_engine(cap: &str) -> (serde_json::Value, Vec<String>, Vec<String>, serde_json::Value) {
    let mut cmd = common::mdsub();
    cmd.args(["replay", "--json", "--endpoint", "tcp://127.0.0.1:*", "--from", cap, "--rate", "0"]);
    let replay = common::LineProc::spawn_with_stderr("replay", &mut cmd);
    let replay_err = replay.stderr.as_ref().expect("stderr piped");
    // What it says before its endpoint is kept: its notes on the capture come first.
    let mut replay_said = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let ep = loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        let line = replay_err.recv_timeout(left).unwrap_or_else(|e| panic!("no `bound shard0` line: {e}"));
        if let Some(ep) = line.strip_prefix("bound shard0 ") {
            break ep.to_string();
        }
        replay_said.push(line);
    };
    let mut cmd = common::mdsub();
    cmd.args(["engine", "--json", "--max-duration", "60s", "--endpoint", &ep]);
    let mut engine = common::LineProc::spawn_with_stderr("engine", &mut cmd);
    let err = engine.stderr.take().expect("stderr piped");
    let (status, out) = engine.finish(Duration::from_secs(60));
    let said = common::rest_lines(&err, Duration::from_secs(10));
    assert!(status.success(), "{out} {said:?}");
    replay_said.extend(common::rest_lines(replay_err, Duration::from_secs(30)));
    let (status, replay_out) = replay.finish(Duration::from_secs(20));
    assert!(status.success(), "{replay_said:?}");
    (common::json(&out), said, replay_said, common::json(&replay_out))
}

/// Publish a burst of `n` mdsub frames of one publisher's stream (sequences 1..=n) through a tap
/// whose recorder's queue holds one copy (`--queue-msgs 1`), so it falls behind and the tap drops
/// copies: the capture has holes. Everything is forwarded all the same.
fn burst_through_a_tap_that_drops(n: u64, cap: &str) -> Proxy {
    let tap = start("tap", &["--quiet", "--subscribe-all", "--queue-msgs", "1", "--record", cap]);
    let msgs: Vec<Vec<Vec<u8>>> = (1..=n).map(|i| vec![frame("ESH6", i, i, &[7u8; 200])]).collect();
    let (got, _sockets) = publish_through(&tap, &msgs, Duration::from_secs(20));
    assert_eq!(got.len() as u64, n, "everything passes the tap: it never waits for its recorder");
    tap
}

/// The `note:` lines of a replay that say what a capture misses.
fn misses_notes(said: &[String]) -> Vec<&String> {
    said.iter().filter(|l| l.starts_with("note: capture file") && l.contains(" misses ")).collect()
}

/// A tap whose recorder falls behind drops copies: the messages the publisher sent and the file
/// lacks. Before, a replay of that capture sent its sequences byte for byte, and the engine said a
/// `loss:` line and counted `lost` for each hole: loss the replay did not cause. Now the capture
/// marks each hole with its count and ends with their total; the tap's exit line counts the same
/// (`record_missed` = `dropped_messages`); the replay says once how many messages the capture
/// misses and why, carries it in `--json`, and renumbers what it sends: the engine counts no loss.
#[test]
fn a_capture_with_holes_replays_without_false_loss_and_says_what_the_tap_missed() {
    let (dir, path) = temp_file("holes.cap");
    let cap = path.to_str().expect("utf-8 path");
    let mut tap = burst_through_a_tap_that_drops(20_000, cap);
    let (_, err) = stop(&mut tap);
    let last = stopped_line("tap", &err);
    let (dropped, dropped_messages, record_lost, record_missed, recorded) = (
        common::proxy::counter(last, "dropped"),
        common::proxy::counter(last, "dropped_messages"),
        common::proxy::counter(last, "record_lost"),
        common::proxy::counter(last, "record_missed"),
        common::proxy::counter(last, "recorded_messages"),
    );
    assert!(dropped_messages > 0, "the recorder fell behind: {last}");
    // `dropped` also counts (un)subscription copies, which a capture never holds: at most the
    // subscriber's one subscribe and one unsubscribe here (a loaded box may drop those too).
    assert!(
        (dropped_messages..=dropped_messages + 2).contains(&dropped),
        "dropped counts messages and subscription copies: {last}"
    );
    assert_eq!(record_missed, dropped_messages + record_lost, "the capture counts what the tap dropped: {last}");
    let said: Vec<&String> = err.iter().filter(|l| l.contains("misses") && l.starts_with("tap: the capture")).collect();
    assert_eq!(said.len(), 1, "said once at exit: {err:?}");
    assert!(said[0].contains(&format!("misses {record_missed} message(s)")), "{}", said[0]);
    let holes = mdsub::wire::capture::Holes::of(&path).expect("holes");
    assert_eq!(holes, mdsub::wire::capture::Holes { missing: record_missed, closed: Some(true) });
    assert_eq!(read_capture(&path).len() as u64 + count_probes(&path), recorded);

    let (r, said, replay_said, replay) = replay_into_an_engine(cap);
    assert_eq!(common::u(&r, "delivered"), recorded, "every recorded message arrives: {r}");
    assert_eq!(common::u(&replay, "sent_total"), recorded, "{replay}");
    assert_eq!((common::u(&r, "lost"), common::u(&r, "gaps")), (0, 0), "no loss where the tap dropped: {r}");
    let loss: Vec<&String> = said.iter().filter(|l| l.contains("loss:")).collect();
    assert!(loss.is_empty(), "no loss line for what the replay did not lose: {loss:?}");
    let notes = misses_notes(&replay_said);
    assert_eq!(notes.len(), 1, "said once: {replay_said:?}");
    assert!(notes[0].contains(&format!("misses {} message(s) that passed its tap", dropped + record_lost)));
    assert!(notes[0].contains("renumbered") && notes[0].contains("--keep-seq"), "{}", notes[0]);
    assert_eq!(
        replay["capture"],
        serde_json::json!({"missing": dropped + record_lost, "closed": true, "filtered": false, "renumbered": true}),
        "{replay}"
    );
    drop(dir);
}

/// Probes (the helpers' handshake and end markers) recorded in the capture at `path`.
fn count_probes(path: &Path) -> u64 {
    let mut r = CaptureReader::open(path).expect("capture file opens");
    let mut n = 0;
    while let Some(rec) = r.next_record().expect("intact capture") {
        n += u64::from(!rec.more && is_probe(&[rec.frame.to_vec()], None));
    }
    n
}

/// A tap killed (SIGKILL) while it records leaves no end record: its capture reads as not
/// closed, not as whole, and the holes its marks gave before the kill are known. Replayed, it
/// says both, and the engine counts no loss; cut inside its last record, it is the damage it
/// was before (`truncated_tail`, exit 1), its holes still said.
#[test]
fn a_killed_taps_capture_replays_with_its_holes_known_and_reads_as_not_closed() {
    use mdsub::wire::capture::Holes;
    let (dir, path) = temp_file("killed.cap");
    let cap = path.to_str().expect("utf-8 path");
    let mut tap = burst_through_a_tap_that_drops(20_000, cap);
    // The recording is flushed 5 ms after its oldest record: wait until its marks are on disk
    // and it stops growing, then kill it.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = (0, Holes::default());
    loop {
        let now = (std::fs::metadata(&path).expect("capture").len(), Holes::of(&path).expect("holes"));
        if now.1.missing > 0 && now == last {
            break;
        }
        assert!(std::time::Instant::now() < end, "the capture's marks reached the file: {now:?}");
        last = now;
        std::thread::sleep(Duration::from_millis(200));
    }
    tap.proc.signal(9);
    let _ = tap.proc.wait_exit(Duration::from_secs(10));
    let holes = Holes::of(&path).expect("holes");
    assert_eq!(holes.closed, Some(false), "a killed tap's capture does not claim to be whole");
    assert_eq!(holes.missing, last.1.missing);

    let (r, said, replay_said, replay) = replay_into_an_engine(cap);
    assert_eq!((common::u(&r, "lost"), common::u(&r, "gaps")), (0, 0), "{r}");
    assert!(!said.iter().any(|l| l.contains("loss:")), "{said:?}");
    assert_eq!(common::u(&r, "delivered"), common::u(&replay, "sent_total"), "{r} {replay}");
    let notes = misses_notes(&replay_said);
    assert_eq!(notes.len(), 1, "{replay_said:?}");
    assert!(notes[0].contains(&format!("misses {} message(s)", holes.missing)), "{}", notes[0]);
    assert!(notes[0].contains("no end record") && notes[0].contains("killed"), "{}", notes[0]);
    assert_eq!(replay["capture"]["closed"], false, "{replay}");

    // Cut inside its last record: the truncation is said and counted as before, the holes too.
    let bytes = std::fs::read(&path).expect("read");
    let cut = dir.join("cut.cap");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).expect("write");
    let (code, out, err) = common::run_within(
        "replay",
        common::mdsub()
            .args(["replay", "--json", "--endpoint", "tcp://127.0.0.1:*", "--rate", "0", "--subscribers", "0"])
            .args(["--eos-wait", "0s", "--from", cut.to_str().expect("utf-8 path")]),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1), "damaged input: {err}");
    let v = common::json(&out);
    assert_eq!(v["refused"]["truncated_tail"], 1, "{v}");
    assert_eq!(v["capture"]["missing"], holes.missing, "{v}");
    assert!(err.lines().any(|l| l.starts_with("replay: refused (truncated_tail): ")), "{err}");
    drop(dir);
}

/// A tap restarted on the same `--record` file used to empty it at its start: the earlier
/// capture (hours of a feed, maybe its only copy) was gone. Now it is kept under its start's
/// name (`NAME.YYYYMMDDTHHMMSS.mmmZ.EXT`, from its header's time), byte for byte, every message
/// reading back, and one line says so; the file is the new tap's capture. A file that is not a
/// capture is refused in one line, before the tap starts, and left as it was.
#[test]
fn a_restarted_tap_keeps_the_earlier_capture_whole() {
    let (dir, path) = temp_file("day.cap");
    let file = path.to_str().expect("utf-8 path");
    let args = ["--quiet", "--subscribe-all", "--record", file];
    let mut first = start("tap", &args);
    let (sent, sockets) = traffic_through(&first);
    let (_, err) = stop(&mut first);
    drop(sockets);
    assert!(!err.iter().any(|l| l.contains("kept")), "nothing earlier to keep: {err:?}");
    let first_bytes = std::fs::read(&path).expect("the first capture");
    let created_ns = CaptureReader::open(&path).expect("opens").created_ns;

    let mut second = start("tap", &args);
    let later = vec![vec![b"F009".to_vec(), b"the second run".to_vec()]];
    let (got, sockets) = publish_through(&second, &later, DEADLINE);
    assert_eq!(got, later);
    let (_, err) = stop(&mut second);
    drop(sockets);
    let kept = mdsub::outfile::closed_name(&path, created_ns);
    assert_eq!(std::fs::read(&kept).expect("the first capture, kept"), first_bytes, "kept as it was");
    assert_eq!(read_capture(&kept), sent, "every message of the first run");
    assert_eq!(mdsub::wire::capture::Holes::of(&kept).expect("holes").closed, Some(true));
    assert_eq!(read_capture(&path), later, "the file is the second run's capture");
    let said: Vec<&String> = err.iter().filter(|l| l.contains("kept an earlier run's")).collect();
    assert_eq!(said.len(), 1, "one line: {err:?}");
    assert!(
        said[0].starts_with(&format!("tap: --record: kept an earlier run's {file} ({} bytes", first_bytes.len()))
            && said[0].ends_with(&format!(" as {}", kept.display())),
        "{said:?}"
    );

    // Not a capture: refused, left as it was, nothing made beside it.
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, b"meeting notes\n").expect("write");
    let notes_arg = notes.to_str().expect("utf-8 path");
    let (code, out, err) = a_tap_recording(notes_arg);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(
        err.trim(),
        format!(
            "mdsub: error: tap: --record {notes_arg}: holds 14 byte(s) that are not an mdsub capture (bad magic at \
             offset 0: it does not start with MDSUBCAP), which this run would write over; move the file away or \
             give another path"
        )
    );
    assert_eq!(std::fs::read(&notes).expect("read"), b"meeting notes\n", "left as it was");
    assert_eq!(std::fs::read_dir(&*dir).expect("dir").count(), 3, "day.cap, its kept capture, notes.txt");
}
