//! Replay from capture files and the CLI's handling of bad input, with real
//! processes: a capture replays byte for byte (multipart foreign traffic
//! included); a damaged capture sends its intact prefix and names the
//! offset, the record and the reason, counted in the replay's numbers; bad
//! flags, profiles and endpoints give one clear error.

mod common;

use std::time::Duration;

use common::*;
use mdsub::wire::capture::{CaptureReader, CaptureWriter};
use mdsub::wire::{self, Header, Kind};

/// One frame of a message and whether more frames of it follow.
type Part = (Vec<u8>, bool);

/// A capture of 200 mdsub frames, 5 foreign `[topic][body]` messages and 3
/// foreign single frames; returns it as (frame, more) records.
fn write_capture(path: &std::path::Path) -> Vec<Part> {
    let mut records = Vec::new();
    for i in 1..=200u64 {
        let h = data_header(i, 1_000 + i);
        records.push((wire::encode(format!("CAP{}", i % 7).as_bytes(), &h, &i.to_le_bytes()), false));
        if i % 40 == 0 {
            records.push((format!("guide.topic.{i}").into_bytes(), true));
            records.push((format!("body {i}").into_bytes(), false));
        }
        if i % 70 == 0 {
            records.push((format!("plainforeign{i} with no header").into_bytes(), false));
        }
    }
    let mut w = CaptureWriter::create(path).expect("create capture");
    for (i, (f, more)) in records.iter().enumerate() {
        w.write_frame(f, *more, 5_000 + i as u64).expect("write");
    }
    w.flush().expect("flush");
    records
}

/// The `i`-th data frame's header of the test captures' one publisher (one topic's view).
fn data_header(i: u64, send_time_ns: u64) -> Header {
    Header { kind: Kind::Data, flags: 0, publisher_id: 3, session_id: 77, stream_seq: i, topic_seq: i, send_time_ns }
}

/// A capture at `path` of data frames of `topic`, each `(i, recv_ns)`: the `i`-th frame of
/// [`data_header`] (body `i`), recorded as received at `recv_ns`. Not flushed: more may follow.
fn data_capture(
    path: &std::path::Path,
    topic: &[u8],
    frames: impl IntoIterator<Item = (u64, u64)>,
) -> CaptureWriter<std::io::BufWriter<std::fs::File>> {
    let mut w = CaptureWriter::create(path).expect("create capture");
    for (i, recv_ns) in frames {
        w.write_frame(&wire::encode(topic, &data_header(i, i), &i.to_le_bytes()), false, recv_ns).expect("write");
    }
    w
}

/// Receive every frame until an end-of-stream frame, with deadline.
fn receive_until_eos(sub: &zmq::Socket) -> Vec<Part> {
    let mut got = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < end, "no end of stream within 30 s; got {} frames", got.len());
        let Ok(f) = sub.recv_bytes(0) else { continue };
        let more = sub.get_rcvmore().expect("rcvmore");
        if let Ok(v) = wire::decode(&f) {
            if v.header.kind == Kind::EndOfStream {
                return got;
            }
        }
        got.push((f, more));
    }
}

/// `mdsub replay` on one ephemeral 127.0.0.1 endpoint, then `args`, its stderr read apart (in
/// `stderr`): the replay and the endpoint it bound, which it says on stdout without `--json`
/// (where [`bound_endpoints`] would not look with stderr piped).
fn replay_on_one_endpoint(name: &str, args: &[&str]) -> (LineProc, String) {
    let mut cmd = mdsub();
    cmd.args(["replay", "--endpoint", "tcp://127.0.0.1:*"]).args(args);
    let p = LineProc::spawn_with_stderr(name, &mut cmd);
    let ep = p.line_starting("bound shard0 ", Duration::from_secs(20)).rsplit(' ').next().expect("EP").to_string();
    (p, ep)
}

fn subscriber(ep: &str) -> (zmq::Context, zmq::Socket) {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).expect("sub");
    sub.set_rcvtimeo(200).expect("rcvtimeo");
    sub.set_subscribe(b"").expect("subscribe");
    sub.connect(ep).expect("connect");
    (ctx, sub)
}

/// Write the test capture to `in.mdcap` in a fresh temp dir `name` and
/// replay it flat out on one shard: the dir, the records written, the replay
/// and its endpoints.
fn replay_a_capture(name: &str) -> (common::TempDir, Vec<Part>, LineProc, Vec<String>) {
    let dir = temp_dir(name);
    let path = dir.join("in.mdcap");
    let records = write_capture(&path);
    let (replay, eps) = start_replay("replay", 1, &["--from", path.to_str().expect("utf8"), "--rate", "0"]);
    (dir, records, replay, eps)
}

#[test]
fn capture_replays_byte_identical_and_records_back_identical() {
    let (dir, records, replay, eps) = replay_a_capture("replay");
    let (_ctx, sub) = subscriber(&eps[0]);
    let got = receive_until_eos(&sub);
    assert_eq!(got.len(), records.len());
    assert!(got == records, "every frame and its MORE flag is byte-identical");
    // And a recording of what arrived reads back identical.
    let out = dir.join("out.mdcap");
    let mut w = CaptureWriter::create(&out).expect("create");
    for (f, more) in &got {
        w.write_frame(f, *more, 0).expect("write");
    }
    w.flush().expect("flush");
    let mut r = CaptureReader::open(&out).expect("open");
    let mut back = Vec::new();
    while let Some(rec) = r.next_record().expect("intact") {
        back.push((rec.frame.to_vec(), rec.more));
    }
    assert!(back == records);
    let (status, _) = replay.finish(Duration::from_secs(20));
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_capture_sends_the_intact_prefix_and_names_the_offset() {
    let dir = temp_dir("trunc");
    let path = dir.join("cut.mdcap");
    let records = write_capture(&path);
    let len = std::fs::metadata(&path).expect("meta").len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    f.set_len(len - 3).expect("truncate");
    let (mut p, ep) = replay_on_one_endpoint("replay", &["--rate", "0", "--from", path.to_str().expect("utf8")]);
    let (_ctx, sub) = subscriber(&ep);
    let got = receive_until_eos(&sub);
    // The last message is multipart [topic][body] and its body is damaged:
    // every message before it arrives, and no half of it.
    assert_eq!(got.len(), records.len() - 2, "all but the damaged last message");
    assert!(got[..] == records[..records.len() - 2]);
    let status = p.proc.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let err = rest_lines(p.stderr.as_ref().expect("stderr"), Duration::from_secs(20)).join("\n");
    assert!(err.contains("truncated at byte offset"), "{err}");
    assert!(err.contains("cut.mdcap"), "error names the file: {err}");
    // Byte for byte, the frames keep their recorded send times: said once, with the way out.
    let note = "with their recorded send times, so a subscriber's lag includes the capture's age; --restamp";
    assert_eq!(err.matches(note).count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Replay `path` (no subscriber awaited) with `--json`: exit code, the JSON numbers (Null when
/// none were printed) and stderr.
fn replay_json(path: &std::path::Path) -> (Option<i32>, serde_json::Value, String) {
    let p = path.to_str().expect("utf8");
    let args = ["--json", "--from", p];
    let (code, out, err) = run_within("replay", mdsub().args(LONE_REPLAY).args(args), Duration::from_secs(60));
    assert!(!err.contains("panicked"), "{err}");
    // The whole of stdout is the one JSON object (the endpoints go to stderr), or nothing.
    let v = if out.trim().is_empty() { serde_json::Value::Null } else { json(&out) };
    (code, v, err)
}

/// A capture whose tap was killed before it dropped anything has no hole marks and no end
/// record. Before, its replay said nothing of it (only `--json`'s `capture.closed` was false):
/// the note on a capture that misses messages came only with a mark. Now the replay says once
/// that the file was not closed, so messages after its last record may be missing; a closed
/// capture gets no such note.
#[test]
fn a_capture_without_its_end_record_and_without_marks_is_said_not_to_be_closed() {
    let dir = temp_dir("replay-not-closed");
    let open = dir.join("open.mdcap");
    let mut w = data_capture(&open, b"CAP", (1..=5).map(|i| (i, i)));
    w.flush().expect("flush");
    drop(w);
    let closed = dir.join("closed.mdcap");
    data_capture(&closed, b"CAP", (1..=5).map(|i| (i, i))).finish(6).expect("closed");
    let says = |l: &&str| l.starts_with("note: capture file") && l.contains("has no end record");
    let (code, v, err) = replay_json(&open);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        v["capture"],
        serde_json::json!({"missing": 0, "closed": false, "filtered": false, "renumbered": false})
    );
    let said: Vec<&str> = err.lines().filter(says).collect();
    assert_eq!(said.len(), 1, "said once: {err}");
    assert!(said[0].contains("open.mdcap") && said[0].contains("after its last record may be missing"), "{err}");
    let (code, v, err) = replay_json(&closed);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["capture"]["closed"], true, "{v}");
    assert!(!err.lines().any(|l| says(&l)), "a closed capture: no note: {err}");
}

/// Damage after the header ends the file at the damage: what came before is replayed, the
/// damage is said once with its reason, byte offset and record number, counted under the reason
/// in the numbers (`--json`: `refused`), and the exit status is 1. A file that is not a capture
/// at all (empty, wrong magic, unknown version) is refused before anything binds.
#[test]
fn damaged_captures_are_refused_by_reason_with_the_place() {
    use mdsub::wire::capture::{FILE_HEADER_LEN, RECORD_HEADER_LEN};
    let dir = temp_dir("damage");
    let whole = dir.join("whole.mdcap");
    let records = write_capture(&whole);
    let bytes = std::fs::read(&whole).expect("read");
    let offset_of =
        |i: usize| FILE_HEADER_LEN + records[..i].iter().map(|(f, _)| RECORD_HEADER_LEN + f.len()).sum::<usize>();
    // Messages (data and foreign) whose last frame is before record `i`.
    let msgs_before = |i: usize| records[..i].iter().filter(|(_, more)| !more).count() as u64;

    // A bad record in the middle: one byte of record 101's frame flipped (its checksum fails).
    let mid = 100;
    assert!(!records[mid - 1].1, "record 100 ends a message");
    let mut bad = bytes.clone();
    bad[offset_of(mid) + RECORD_HEADER_LEN + 2] ^= 0x40;
    let path = dir.join("middle.mdcap");
    std::fs::write(&path, &bad).expect("write");
    let (code, v, err) = replay_json(&path);
    assert_eq!(code, Some(1), "damaged input: exit 1; {err}");
    assert_eq!(v["refused"]["bad_record"], 1, "counted under its reason: {v}");
    assert_eq!(v["sent_total"].as_u64(), Some(msgs_before(mid)), "everything before the damage: {v}");
    let said: Vec<&str> = err.lines().filter(|l| l.starts_with("replay: refused (bad_record): ")).collect();
    assert_eq!(said.len(), 1, "said once: {err}");
    let want =
        format!("damaged record at byte offset {}: its checksum does not match (record {}", offset_of(mid), mid + 1);
    assert!(said[0].contains(&want) && said[0].contains("middle.mdcap"), "file, offset, record, reason: {err}");
    // Not truncation: bytes follow the damaged record (before: `…, the file ends here)`).
    assert!(
        said[0].ends_with("replay of this file stops here: nothing after a damaged record can be trusted)"),
        "{err}"
    );

    // A truncated tail: the last record cut short.
    let last = records.len() - 1;
    let path = dir.join("tail.mdcap");
    std::fs::write(&path, &bytes[..bytes.len() - 2]).expect("write");
    let (code, v, err) = replay_json(&path);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(v["refused"]["truncated_tail"], 1, "{v}");
    assert_eq!(v["sent_total"].as_u64(), Some(msgs_before(last - 1)), "all but the cut message [topic][body]: {v}");
    let want = format!("truncated at byte offset {}: record body (record {}", offset_of(last), last + 1);
    let said = |l: &str| l.starts_with("replay: refused (truncated_tail): ") && l.contains(&want);
    assert!(err.lines().any(|l| said(l) && l.ends_with(", the file ends here)")), "{err}");

    // Not a capture at all: one error line, refused before anything binds.
    let mut wrong_magic = bytes.clone();
    wrong_magic[..8].copy_from_slice(b"NOTACAPT");
    let mut bad_version = bytes.clone();
    bad_version[8] = 7;
    for (name, content, says) in [
        ("empty.mdcap", Vec::new(), "empty file (0 bytes)"),
        ("magic.mdcap", wrong_magic, "neither an mdsub capture nor DBN data"),
        ("version.mdcap", bad_version, "capture format version 7 is not supported"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &content).expect("write");
        let (code, v, err) = replay_json(&path);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert_eq!(v, serde_json::Value::Null, "{name}: nothing replayed, no numbers");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: one line: {err}");
        assert!(lines[0].contains(name) && lines[0].contains(says), "{name}: says `{says}`: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mdsub replay` with no subscriber and `args`, which must succeed within 60 s: its stdout.
fn lone_replay(args: &[&str]) -> String {
    let (code, out, err) = run_within("replay", mdsub().args(LONE_REPLAY).args(args), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    out
}

fn run_err(args: &[&str]) -> (Option<i32>, String) {
    let (code, _, err) = run_within("mdsub", mdsub().args(args), Duration::from_secs(60));
    assert!(!err.contains("panicked"), "mdsub {args:?} panicked: {err}");
    assert_eq!(err.trim().lines().filter(|l| l.contains("error")).count(), 1, "one error line: {err}");
    (code, err)
}

#[test]
fn verbatim_capture_replay_into_the_engine_accounts_every_message() {
    let (dir, records, replay, eps) = replay_a_capture("capeng");
    let data = records.iter().filter(|(f, _)| wire::decode(f).is_ok()).count() as u64;
    let engine = engine_json(&eps, &[]);
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "{out}");
    let r = json(&out);
    // Recorded frames keep their publisher and session; the replay's end of
    // stream counts the mdsub data frames it sent; foreign frames are bad frames.
    assert_eq!(r["sent"].as_u64(), Some(data), "{r}");
    assert_eq!(r["delivered"].as_u64(), Some(data), "{r}");
    assert_eq!(r["lost"].as_u64(), Some(0), "{r}");
    assert_eq!(r["gaps"].as_u64(), Some(0));
    let foreign = (records.len() as u64) - data;
    let bad: u64 = r["bad_frames"].as_object().expect("bad frames").values().filter_map(|v| v.as_u64()).sum();
    assert_eq!(bad, foreign, "every foreign frame is counted, none silently: {r}");
    let (status, _) = replay.finish(Duration::from_secs(20));
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_gets_one_clear_error_not_a_panic() {
    let (code, err) = run_err(&["engine", "--no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--no-such-flag"), "{err}");

    let (code, err) = run_err(&["replay", "--endpoint", "tcp://127.0.0.1", "--count", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--endpoint") && err.contains("no port") && err.contains("bind:EP"), "{err}");

    let (code, err) = run_err(&["replay", "--endpoint", "connect:tcp://127.0.0.1:5556", "--count", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--endpoint") && err.contains("can only bind"), "{err}");

    // (The engine's shards may bind now; a clone store is only connected to.)
    let (code, err) = run_err(&["top", "--once", "--store", "bind:tcp://127.0.0.1:5556"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--store") && err.contains("can only connect"), "{err}");

    let (code, err) =
        run_err(&["replay", "--endpoint", "tcp://127.0.0.1:*", "--subscribers", "1", "--wait-timeout", "300ms"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no subscriber reached"), "{err}");

    let (code, err) =
        run_err(&["replay", "--endpoint", "tcp://127.0.0.1:*", "--from", "/nonexistent/x.mdcap", "--subscribers", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--from /nonexistent/x.mdcap: No such file or directory"), "{err}");

    let dir = temp_dir("prof");
    let prof = dir.join("bad.toml");
    std::fs::write(
        &prof,
        "name = \"x\"\n[[shards]]\nendpoints = [\"tcp://127.0.0.1:1\"]\nio_core = 999\n[[workers]]\n",
    )
    .expect("write");
    let (code, err) = run_err(&["engine", "--profile", prof.to_str().expect("utf8")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("shards[0].io_core") && err.contains("999"), "{err}");
    std::fs::write(&prof, "name = \"x\"\nshards = 3\n").expect("write");
    let (code, err) = run_err(&["engine", "--profile", prof.to_str().expect("utf8")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("bad.toml") && err.contains("shards"), "{err}");
    let (code, err) = run_err(&["demo", "--duration", "soon"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--duration") && err.contains("not a duration") && err.contains("500ms"), "{err}");
    let (code, err) = run_err(&["demo", "--duration", "5"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--duration") && err.contains("no unit"), "{err}");
    let (code, err) = run_err(&["demo", "--count", "lots"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--count") && err.contains("100k, 2M"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bind that fails says which endpoint, for which socket, and what libzmq's error means
/// where its words mislead (`No such device` for an address this host does not have).
#[test]
fn a_failed_bind_names_the_endpoint_and_what_the_error_means() {
    let (code, err) = run_err(&["replay", "--endpoint", "tcp://256.1.1.1:5000", "--count", "1"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tcp://256.1.1.1:5000") && err.contains("no interface of this host has that address"),
        "{err}"
    );
    // A port in use, on a proxy side and on the engine's monitor PUB: the endpoint is named.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let ep = format!("tcp://127.0.0.1:{}", taken.local_addr().expect("addr").port());
    let front = format!("bind:{ep}");
    let (code, err) = run_err(&["tap", "--frontend", &front, "--backend", "bind:tcp://127.0.0.1:*"]);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("attaching the frontend to {front}")) && err.contains("in use"), "{err}");
    assert_eq!(err.matches("mdsub").count(), 1, "the program's name once: {err}");
    let (code, err) = run_err(&["engine", "--endpoint", "tcp://127.0.0.1:1", "--monitor", &ep, "--max-duration", "5s"]);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("binding the monitor PUB to {ep}")) && err.contains("in use"), "{err}");
    // The clone server takes P..P+3: a P near the top is refused as such, not as "not numeric".
    let (code, err) = run_err(&["clone-server", "--endpoint", "tcp://127.0.0.1:65534"]);
    assert_eq!(code, Some(2), "a refused flag value: {err}");
    assert!(err.contains("P can be at most 65532") && !err.contains("numeric"), "{err}");
    // A name that does not resolve: before, only replay and the proxies said what ENODEV means
    // there; the engine, the clone server and the trial server said "No such device" alone.
    let unresolved = "tcp://nonexistent.invalid:23457";
    let engine_bind = format!("bind:{unresolved}");
    for args in [
        &["engine", "--endpoint", &engine_bind, "--max-duration", "5s"][..],
        &["clone-server", "--endpoint", unresolved],
        &["replay", "--serve-trials", unresolved],
    ] {
        let (code, err) = run_err(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains("nonexistent.invalid") && err.contains("no interface of this host has that address"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn demo_reports_zero_loss_as_json() {
    let r = mdsub_json(&["demo", "--duration", "1s", "--rate", "20000", "--json"], Duration::from_secs(60));
    assert_eq!(r["sent"].as_u64(), Some(20_000), "{r}");
    assert_eq!(r["delivered"].as_u64(), Some(20_000));
    assert_eq!(r["lost"].as_u64(), Some(0));
    assert!(r["latency"]["total"]["p99_ns"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn bench_prints_engine_and_baseline_with_ratios() {
    let r = mdsub_json(&["bench", "--count", "20k", "--runs", "1", "--json"], Duration::from_secs(120));
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3, "baseline, engine/batch, engine/per-message");
    for run in runs {
        assert_eq!(run["delivered"].as_u64(), Some(20_000), "{run}");
        assert_eq!(run["lost"].as_u64(), Some(0));
    }
    let ratios = r["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 2);
    assert!(ratios[0][1][0].as_f64().expect("throughput ratio") > 0.0);
    assert_eq!(r["machine"]["cores"].as_u64(), Some(mdsub::host::cores().len() as u64));
    // CPU per message counts libzmq's I/O threads on both sides, and the
    // engine/baseline CPU ratio is reported.
    let meds = r["medians"].as_array().expect("medians");
    for m in meds {
        let io = m["threads"].as_object().expect("threads").keys().filter(|k| k.ends_with("-io")).count();
        assert!(io >= 1, "an I/O thread is counted: {m}");
        assert!(m["cpu_ns_per_msg"].as_f64() > m["app_cpu_ns_per_msg"].as_f64(), "{m}");
    }
    assert!(ratios[0][1][4].as_f64().expect("CPU ratio") > 0.0);
}

#[test]
fn bench_compares_the_replay_with_a_prebuilt_publisher_and_a_thread_per_shard() {
    let args = ["bench", "--count", "20k", "--runs", "1", "--handoff", "batch", "--compare", "publishers", "--json"];
    let r = mdsub_json(&args, Duration::from_secs(120));
    let runs = r["runs"].as_array().expect("runs");
    let names: Vec<&str> = runs.iter().filter_map(|x| x["subscriber"].as_str()).collect();
    assert_eq!(names, ["baseline", "engine/batch", "baseline/prebuilt-pub", "baseline/2-pub-threads"]);
    // Every publisher's frames pass the baseline's sequence checks whole:
    // the prebuilt frames' patched sequences and the per-shard threads'
    // streams (two publisher ids, each ended by its own end of stream).
    for run in runs {
        assert_eq!(run["delivered"].as_u64(), Some(20_000), "{run}");
        assert_eq!(run["lost"].as_u64(), Some(0), "{run}");
        assert_eq!(run["gaps"].as_u64(), Some(0), "{run}");
        assert_eq!(run["duplicates"].as_u64(), Some(0), "{run}");
    }
    let pubs = r["publisher_runs"].as_array().expect("publisher_runs");
    assert_eq!(pubs.len(), 4);
    assert!(pubs.iter().all(|p| p["send_cpu_ns_per_msg"].as_f64() > Some(0.0)), "{pubs:?}");
    let cmp = r["publisher_comparisons"].as_array().expect("publisher_comparisons");
    let what: Vec<&str> = cmp.iter().filter_map(|c| c[0].as_str()).collect();
    assert_eq!(what, ["replay / prebuilt publisher", "2 replay threads / 1"]);
}

#[test]
fn thread_per_shard_sends_the_total_rate_not_the_rate_per_shard() {
    // Before, each shard's thread paced itself at the whole --rate: two shards sent twice it.
    let args = [
        "replay",
        "--endpoint",
        "tcp://127.0.0.1:*",
        "--endpoint",
        "tcp://127.0.0.1:*",
        "--thread-per-shard",
        "--subscribers",
        "0",
        "--rate",
        "4k",
        "--count",
        "2k",
        "--json",
    ];
    let (code, out, err) = run_within("replay", mdsub().args(args), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    let s = json(&out);
    assert_eq!(u(&s, "sent_total"), 2_000, "{s}");
    // 2 000 at 4 000 msg/s in total take 0.5 s; at 4 000 per shard they took 0.25 s. A busy
    // box only makes it slower, so the lower bound holds under any load.
    let elapsed = s["elapsed_s"].as_f64().expect("elapsed_s");
    assert!(elapsed >= 0.4, "2k messages at 4k msg/s in total took {elapsed:.3} s: {s}");
    // The threads' achieved rates add up to the rate offered in all.
    assert_eq!(u(&s, "offered_msgs_per_sec"), 4_000, "{s}");
    let achieved = s["achieved_msgs_per_sec"].as_f64().expect("achieved_msgs_per_sec");
    assert!(achieved >= 0.95 * 4_000.0, "{s}");
}

/// `--duration` is time elapsed, whatever the rate: a rate the publisher cannot reach ends the
/// run on time, said with what was achieved (before, the end was the schedule's: `--rate 20M
/// --duration 1s` ran 7.6 s and sent 20 M messages, rc 0, and `--rate 18446744073709551615
/// --duration 2s` never ended). A rate past one message a nanosecond is refused at parse.
#[test]
fn a_rate_out_of_reach_ends_at_the_duration_and_says_what_was_achieved() {
    let args = ["--duration", "1s"];
    let started = std::time::Instant::now();
    let (code, out, err) =
        run_within("replay", mdsub().args(LONE_REPLAY).args(args).args(["--rate", "1000M"]), Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{err}");
    assert!(took < Duration::from_secs(15), "a 1 s replay took {took:?}: {out}");
    let line = out.lines().find(|l| l.starts_with("sent ")).expect("the summary");
    let secs: f64 = line
        .split(" s in all")
        .next()
        .and_then(|r| r.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("its time: {line}"));
    assert!((0.9..3.0).contains(&secs), "the run ends at its duration: {line}");
    assert!(out.contains("rate not achieved: offered 1000000000 msg/s, achieved "), "{out}");
    // --json carries both rates.
    let json_args = ["--rate", "1000M", "--duration", "300ms", "--json"];
    let s = json(&lone_replay(&json_args));
    assert_eq!(u(&s, "offered_msgs_per_sec"), 1_000_000_000, "{s}");
    let achieved = s["achieved_msgs_per_sec"].as_f64().expect("achieved_msgs_per_sec");
    assert!(achieved > 0.0 && achieved < 0.95e9, "{s}");
    for absurd in ["18446744073709551615", "1001M"] {
        let (code, err) = run_err(&["replay", "--subscribers", "0", "--duration", "1s", "--rate", absurd]);
        assert_eq!(code, Some(2), "{absurd}: {err}");
        assert!(err.contains("--rate") && err.contains("at most 1000M msg/s"), "{absurd}: {err}");
    }
}

#[test]
fn replay_json_names_its_two_kinds_of_drop_apart() {
    // Before, the object had `dropped` (--drop-every, on purpose) beside `dropped_total` (a
    // lossy publisher's drops at the SNDHWM): two counts a reader could not tell apart.
    let s = json(&lone_replay(&["--json", "--count", "2k", "--rate", "0", "--drop-every", "100"]));
    // Dropped on purpose are never sent; nothing met a full pipe (lossless, and no subscriber).
    assert_eq!((u(&s, "sent_total"), u(&s, "dropped_on_purpose")), (1_980, 20), "{s}");
    assert_eq!(u(&s, "dropped_at_hwm"), 0, "{s}");
    assert_eq!(s["dropped_at_hwm_per_shard"], serde_json::json!([0]), "{s}");
    for gone in ["dropped", "dropped_total", "dropped_per_shard"] {
        assert!(s.get(gone).is_none(), "{gone} is gone: {s}");
    }
}

/// `--lossy` drops at the HWM, counts every drop, and still delivers its end
/// of stream (it used to be lost after the pipe hit the HWM, and the engine
/// waited forever): the engine's loss is exactly the replay's drop count.
#[test]
fn lossy_replay_counts_its_drops_and_always_ends_the_stream() {
    let (replay, eps) =
        start_replay("replay", 1, &["--count", "300000", "--rate", "0", "--lossy", "--sndhwm-msgs", "100", "--json"]);
    // A slow handler: the engine's queues fill and the replay drops.
    let engine = engine_json(&eps, &["--handler", "work:5000", "--snail", "off"]);
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    assert!(!r["interrupted"].as_bool().unwrap_or(true), "ended by the end of stream, not the deadline: {r}");
    let (status, rest) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
    let s = json(&rest);
    let dropped = u(&s, "dropped_at_hwm");
    assert_eq!(s["dropped_at_hwm_per_shard"], serde_json::json!([dropped]), "{s}");
    assert_eq!(u(&s, "dropped_on_purpose"), 0, "no --drop-every: {s}");
    assert_eq!(u(&s, "sent_with_no_subscriber"), 0, "the engine stayed to the end: {s}");
    assert_eq!(u(&s, "sent_total"), 300_000);
    assert!(dropped > 0, "a 5 µs handler behind a flat-out replay makes it drop: {s}");
    assert_eq!(u(&r, "sent"), 300_000, "{r}");
    assert_eq!(u(&r, "lost"), dropped, "the engine's loss is the replay's drop count: {r}");
    assert_eq!(u(&r, "gaps"), dropped, "{r}");
    assert_eq!(u(&r, "delivered"), 300_000 - dropped, "{r}");
}

/// `mdsub engine --json` on `ep` that ends at its end of stream or after `max_duration`,
/// `extra` flags after.
fn engine_until(ep: &str, max_duration: &str, extra: &[&str]) -> LineProc {
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", max_duration, "--endpoint", ep]);
    cmd.args(extra);
    LineProc::spawn("engine", &mut cmd)
}

/// A lossy replay drops per subscriber, as a lossy PUB does: one subscriber that stops reading
/// no longer starves the others, and it still gets its end of stream once it reads again.
#[test]
fn a_lossy_replay_drops_for_the_subscriber_that_stopped_reading_alone() {
    // Before, libzmq's XPUB with NODROP refused a message for every subscriber while any one's
    // pipe was full, and the lossy replay dropped it: an engine under `kill -STOP` made the
    // reading engine beside it lose nearly everything after its pipe filled (and the end of
    // stream, held back for all, reached neither: the reading engine ran to --max-duration).
    // 1000 B messages at 20k msg/s: the stopped engine's socket buffers fill within a second;
    // a 1k SNDHWM leaves the reading one 50 ms of slack on a busy machine (100 was 5 ms: it
    // lost up to 1.5% of its own at moments it did not read).
    let args = ["--rate", "20k", "--count", "60k", "--payload-bytes", "1000", "--lossy", "--sndhwm-msgs", "1k"];
    let (replay, eps) =
        start_replay("replay", 1, &[&args[..], &["--subscribers", "2", "--eos-wait", "20s", "--json"]].concat());
    let reading = engine_until(&eps[0], "30s", &[]);
    // Resumed, it reads messages seconds old: no snail verdict, its end of stream is the point.
    let stopped = engine_until(&eps[0], "60s", &["--snail", "off"]);
    let err = replay.stderr.as_ref().expect("stderr piped");
    wait_line(err, Duration::from_secs(20), "the replay sending", |l| l.contains("subscribed: sending"));
    stopped.proc.signal(libc::SIGSTOP);
    let (status, out) = reading.finish(Duration::from_secs(40));
    // Read again: the end of stream, sent again while it is not confirmed, reaches it once it
    // has drained its pipe (libzmq skips a pipe a lossy message went past until then).
    stopped.proc.signal(libc::SIGCONT);
    let r = json(&out);
    assert!(status.success(), "the reading engine failed: {out}");
    let lost = u(&r, "lost");
    assert!(!r["interrupted"].as_bool().unwrap_or(true), "the reading engine ended at its end of stream: {r}");
    assert_eq!(u(&r, "sent"), 60_000, "{r}");
    assert!(lost <= 3_000, "the reading engine lost {lost} of 60000 (at most 5% expected): {r}");
    let (status, out) = stopped.finish(Duration::from_secs(60));
    let b = json(&out);
    assert!(status.success(), "the stopped engine failed: {out}");
    assert!(!b["interrupted"].as_bool().unwrap_or(true), "the stopped engine had its end of stream too: {b}");
    assert_eq!(u(&b, "sent"), 60_000, "{b}");
    assert_eq!(u(&b, "delivered") + u(&b, "lost"), 60_000, "{b}");
    assert!(u(&b, "lost") > 10_000, "stopped, it missed most of the run: {b}");
    let (status, rest) = replay.finish(Duration::from_secs(30));
    assert!(status.success(), "{rest}");
    let s = json(&rest);
    assert_eq!(u(&s, "sent_total"), 60_000, "{s}");
    // Counted: at least one message a full pipe refused (later ones the stopped engine missed
    // while libzmq skipped its pipe are its own count, `lost`).
    let dropped = u(&s, "dropped_at_hwm");
    assert!(dropped >= 1 && dropped <= u(&b, "lost"), "{s}");
    assert!(s.get("eos_unconfirmed").is_none() && s.get("eos_missed").is_none(), "{s}");
}

/// A lossy replay whose one connection carries two subscribers (a proxy such as `mdsub lvc`
/// forwards each subscriber's subscription to the control topic; here one peer subscribes twice)
/// counts every message that connection's full pipe refused and ends its stream, as with one
/// subscriber. Before, two subscriptions were taken for two pipes: the first refused message
/// was sent lossy to "the others", there were none, and libzmq then skipped that one pipe in
/// silence until its reader drained it: every later drop went uncounted (1 counted), and the
/// end of stream, sent while it was skipped, was lost.
#[test]
fn a_lossy_replay_whose_one_connection_carries_two_subscribers_counts_every_drop() {
    use mdsub::feed::GeneratorConfig;
    use mdsub::replay::{Limits, Pacing, Publisher, PublisherConfig, Source};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const N: u64 = 200_000;
    let ctx = zmq::Context::new();
    let cfg = PublisherConfig { lossless: false, sndhwm_msgs: 100, ..Default::default() };
    let mut publisher = Publisher::bind(&ctx, &cfg).expect("publisher");
    publisher.set_eos_wait(Duration::ZERO);
    let ep = publisher.endpoints()[0].clone();
    let sub = ctx.socket(zmq::SUB).expect("sub");
    sub.set_rcvhwm(100).expect("rcvhwm");
    sub.set_rcvbuf(4096).expect("rcvbuf");
    sub.set_rcvtimeo(200).expect("rcvtimeo");
    sub.connect(&ep).expect("connect");
    sub.set_subscribe(b"").expect("subscribe");
    sub.set_subscribe(wire::CONTROL_TOPIC).expect("subscribe");
    publisher.wait_for_subscribers(2, Duration::from_secs(20)).expect("two subscriptions, one connection");
    // It reads nothing until every message was scheduled, then all there is to its end of stream.
    let go = Arc::new(AtomicBool::new(false));
    let reader = {
        let go = go.clone();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(60);
            while !go.load(Ordering::Acquire) && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            let until = std::time::Instant::now() + Duration::from_secs(30);
            let (mut data, mut eos) = (0u64, false);
            while !eos && std::time::Instant::now() < until {
                let Ok(f) = sub.recv_bytes(0) else { continue };
                match wire::decode(&f).map(|v| v.header.kind) {
                    Ok(Kind::Data) => data += 1,
                    Ok(Kind::EndOfStream) => eos = true,
                    _ => {}
                }
            }
            (data, eos)
        })
    };
    let gen = GeneratorConfig { symbols: 20, zipf_s: 0.0, payload_bytes: 100, seed: 1 };
    let limits = Limits { max_msgs: Some(N), duration: None };
    let never = mdsub::agent::StopFlag::new();
    let stats = publisher
        .run(&Source::Generator(gen), Pacing::FlatOut, limits, &never, &mut |n| {
            if n >= N {
                go.store(true, Ordering::Release);
            }
        })
        .expect("replay");
    go.store(true, Ordering::Release);
    let (data, eos) = reader.join().expect("reader");
    assert_eq!(stats.sent_total, N, "{stats:?}");
    assert!(eos, "the end of stream reached the connection ({data} data messages did, {stats:?})");
    assert_eq!(data + stats.dropped_at_hwm, N, "each message arrived or was counted dropped: {stats:?}");
}

#[test]
fn a_subscriber_that_leaves_mid_run_is_said() {
    // Before, the replay went on sending to no one and said nothing.
    // Two subscribers: each leave is said with the right count (libzmq passes only a topic's
    // last unsubscription unless the XPUB is VERBOSER).
    let (mut replay, ep) =
        replay_on_one_endpoint("replay", &["--rate", "1k", "--duration", "60s", "--subscribers", "2"]);
    let err = replay.stderr.take().expect("stderr");
    let (ctx1, sub1) = subscriber(&ep);
    let (ctx2, sub2) = subscriber(&ep);
    wait_line(&err, Duration::from_secs(20), "the replay sending", |l| l.contains("subscribed: sending"));
    drop(sub1);
    drop(ctx1);
    let left = wait_line(&err, Duration::from_secs(20), "the first leave said", |l| l.contains("subscriber left"));
    assert!(left.contains("shard0") && left.contains("(1 remain)") && !left.contains("reaches no one"), "{left}");
    drop(sub2);
    drop(ctx2);
    let left = wait_line(&err, Duration::from_secs(20), "the second leave said", |l| l.contains("subscriber left"));
    assert!(left.contains("shard0") && left.contains("0 remain") && left.contains("reaches no one"), "{left}");
    replay.proc.signal(2);
    let (status, _) = replay.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_connection_that_closes_without_lowering_the_subscribers_is_said() {
    // Behind a proxy (any XSUB: `mdsub lvc`) a subscriber's unsubscribe is forwarded only when
    // the last one of that prefix left, so replay's count never fell and nothing was said. What
    // it does see is a connection closing: here a peer whose subscription does not take the
    // control topic (so it is no subscriber by count) leaves beside a subscriber that stays.
    let (mut replay, ep) =
        replay_on_one_endpoint("replay", &["--rate", "1k", "--duration", "60s", "--subscribers", "1"]);
    let err = replay.stderr.take().expect("stderr");
    let (ctx1, sub1) = subscriber(&ep);
    wait_line(&err, Duration::from_secs(20), "the replay sending", |l| l.contains("subscribed: sending"));
    let ctx2 = zmq::Context::new();
    let other = ctx2.socket(zmq::SUB).expect("sub");
    other.monitor("inproc://other-handshake", zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32).expect("monitor");
    let watch = ctx2.socket(zmq::PAIR).expect("pair");
    watch.set_rcvtimeo(20_000).expect("rcvtimeo");
    watch.connect("inproc://other-handshake").expect("watch");
    other.set_subscribe(b"ZZZ").expect("subscribe");
    other.connect(&ep).expect("connect");
    watch.recv_multipart(0).expect("the other peer's handshake within 20 s");
    // The replay's side counts the connection on its own watch: 100 messages more (0.1 s at
    // 1k msg/s, each read within the deadline) give it many drain rounds to do so.
    for _ in 0..100 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sub1.recv_bytes(0).is_err() {
            assert!(std::time::Instant::now() < deadline, "the replay stopped sending");
        }
    }
    drop(watch);
    drop(other);
    drop(ctx2);
    let closed =
        wait_line(&err, Duration::from_secs(20), "the closed connection said", |l| l.contains("connection closed"));
    assert!(closed.contains("shard0") && closed.contains("(1 open;"), "{closed}");
    drop(sub1);
    drop(ctx1);
    let left = wait_line(&err, Duration::from_secs(20), "the leave said", |l| l.contains("subscriber left"));
    assert!(left.contains("0 remain") && left.contains("reaches no one"), "{left}");
    replay.proc.signal(2);
    let (status, _) = replay.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn what_is_sent_with_no_subscriber_is_counted() {
    // Before, a replay that did not wait (`--subscribers 0`) or whose subscribers left said so
    // on stderr, but its summary counted every message as sent.
    for json_out in [false, true] {
        let mut cmd = mdsub();
        cmd.args(LONE_REPLAY).args(["--count", "5k", "--rate", "0"]);
        if json_out {
            cmd.arg("--json");
        }
        let (code, out, err) = run_within("replay", &mut cmd, Duration::from_secs(30));
        assert_eq!(code, Some(0), "{err}");
        if json_out {
            let s = json(&out);
            assert_eq!(u(&s, "sent_total"), 5_000, "{s}");
            assert_eq!(u(&s, "sent_with_no_subscriber"), 5_000, "{s}");
        } else {
            assert!(
                out.lines()
                    .any(|l| l == "5000 of them were sent while their shard had no mdsub subscriber (none took the control topic): they reached no one"),
                "{out}"
            );
        }
    }
}

#[test]
fn a_subscriber_that_leaves_a_file_replay_is_said_while_it_runs() {
    // Before, a file's replay drained the subscription events only on an idle turn (1 s
    // without a send) or at its end: at 1 k msg/s a leave was said 30 s late.
    let dir = temp_dir("replay-file-leave");
    let path = dir.join("long.mdcap");
    data_capture(&path, b"LONG", (1..=30_000).map(|i| (i, i))).flush().expect("flush");
    let from = path.to_str().expect("utf8");
    let (mut replay, ep) = replay_on_one_endpoint("replay", &["--rate", "1k", "--subscribers", "1", "--from", from]);
    let err = replay.stderr.take().expect("stderr");
    let (ctx, sub) = subscriber(&ep);
    wait_line(&err, Duration::from_secs(20), "the replay sending", |l| l.contains("subscribed: sending"));
    drop(sub);
    drop(ctx);
    // 1 Ki messages at 1 k msg/s: about a second.
    let left = wait_line(&err, Duration::from_secs(10), "the leave said", |l| l.contains("subscriber left"));
    assert!(left.contains("shard0") && left.contains("reaches no one"), "{left}");
    replay.proc.signal(2);
    let (status, _) = replay.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A capture of `n` frames of one topic, `gap_ns` apart in recorded (receive) time.
fn paced_capture(dir: &std::path::Path, n: u64, gap_ns: u64) -> std::path::PathBuf {
    let path = dir.join("paced.mdcap");
    data_capture(&path, b"PACE", (1..=n).map(|i| (i, i * gap_ns))).flush().expect("flush");
    path
}

#[test]
fn what_a_recorded_pace_replay_sends_after_its_subscriber_left_is_counted() {
    // Before, a file replayed at its recorded pace drained the subscription events only every
    // 1 Ki messages: a 400-message capture whose subscriber left after 40 said the leave at the
    // end but counted `sent_with_no_subscriber` 0.
    let dir = temp_dir("replay-recorded-leave");
    let path = paced_capture(&dir, 400, 5_000_000);
    let path = path.to_str().expect("utf8");
    let (replay, eps) = start_replay("replay", 1, &["--from", path, "--speed", "1x", "--subscribers", "1", "--json"]);
    let (ctx, sub) = subscriber(&eps[0]);
    let mut data = 0;
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while data < 40 {
        assert!(std::time::Instant::now() < end, "40 data frames within 20 s; got {data}");
        if let Ok(f) = sub.recv_bytes(0) {
            data += wire::decode(&f).is_ok_and(|v| v.header.kind == Kind::Data) as u64;
        }
    }
    drop(sub);
    drop(ctx);
    let (status, out) = replay.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{out}");
    let s = json(&out);
    assert_eq!(u(&s, "sent_total"), 400, "{s}");
    // 360 were sent after the 40th arrived; a few were in flight when it left, and the leave
    // is seen within 10 ms (two messages at this pace) of libzmq reporting it.
    let unheard = u(&s, "sent_with_no_subscriber");
    assert!((300..=360).contains(&unheard), "sent with no subscriber: {unheard} of the 360 after it left: {s}");
}

#[test]
fn a_recorded_pace_capture_heartbeats_through_a_long_gap() {
    // Before, only DBN files heartbeated through a recorded gap: a capture that paused for 2.5 s
    // sent nothing, and a subscriber's snail took the silence for a dead publisher.
    let dir = temp_dir("replay-recorded-gap");
    let path = paced_capture(&dir, 2, 2_500_000_000);
    let path = path.to_str().expect("utf8");
    let (replay, eps) = start_replay("replay", 1, &["--from", path, "--speed", "1x", "--subscribers", "1"]);
    let (_ctx, sub) = subscriber(&eps[0]);
    let mut kinds = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while kinds.iter().filter(|k| **k == Kind::Data).count() < 2 {
        assert!(std::time::Instant::now() < end, "both data frames within 20 s; got {kinds:?}");
        if let Ok(f) = sub.recv_bytes(0) {
            if let Ok(v) = wire::decode(&f) {
                kinds.push(v.header.kind);
            }
        }
    }
    let first = kinds.iter().position(|k| *k == Kind::Data).expect("a data frame");
    assert!(
        kinds[first + 1..].contains(&Kind::Heartbeat),
        "a heartbeat between the two data frames 2.5 s apart: {kinds:?}"
    );
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
}

/// A lossless replay whose subscriber stops reading, on a 1k SNDHWM at 200k msg/s, `extra`
/// flags after: the replay (`--json`), its endpoint, and the subscriber that never reads.
fn replay_into_a_stalled_subscriber(extra: &[&str]) -> (LineProc, zmq::Context, zmq::Socket) {
    let mut args = vec!["--rate", "200k", "--sndhwm-msgs", "1k", "--json"];
    args.extend_from_slice(extra);
    let (replay, eps) = start_replay("replay", 1, &args);
    let (ctx, sub) = subscriber(&eps[0]);
    sub.set_rcvhwm(1_000).expect("rcvhwm");
    (replay, ctx, sub)
}

#[test]
fn the_duration_ends_a_replay_whose_lossless_subscriber_stopped_reading() {
    // Before, `--rate 200k --duration 1s` into a subscriber that stopped reading (an engine
    // under `kill -STOP`) ran on until the subscriber read again: the send blocked without a
    // deadline. Now the duration (and its tenth) ends it, the end of stream is tried with its
    // own deadline (10 s), and the summary comes before the error naming the shard.
    let (replay, _ctx, _sub) = replay_into_a_stalled_subscriber(&["--duration", "1s"]);
    let err = replay.stderr.as_ref().expect("stderr piped");
    let t0 = std::time::Instant::now();
    let said = wait_line(err, Duration::from_secs(10), "the duration's end", |l| l.starts_with("replay: the duration"));
    assert!(said.contains("a lossless subscriber holds the publisher back"), "{said}");
    let took = t0.elapsed();
    // Before, the end of stream's 10 s wait went by in silence: it is said once it has been
    // held 1 s (as data is), with the shard and how long it may take yet.
    let eos =
        wait_line(err, Duration::from_secs(4), "the end of stream's wait", |l| l.contains("the end of stream waits"));
    assert!(eos.starts_with("replay: shard0 tcp://127.0.0.1:"), "{eos}");
    let more: f64 = eos
        .split("up to ")
        .nth(1)
        .and_then(|r| mdsub::cli::args::parse_duration(r.split(' ').next()?).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or_else(|| panic!("the deadline: {eos}"));
    assert!((8.0..=9.0).contains(&more), "said after 1 s of the 10 s wait: {eos}");
    let rest = rest_lines(err, Duration::from_secs(20));
    let (status, out) = replay.finish(Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "the duration (1 s and its tenth) ended the blocked send: {took:?}");
    assert_eq!(status.code(), Some(1), "the end of stream could not be sent: an error; {rest:?}");
    let s = json(&out);
    let sent = u(&s, "sent_total");
    assert!(sent > 0 && sent < 200_000, "some sent, not all that was due: {s}");
    assert_eq!(s["eos_missed"].as_array().map(Vec::len), Some(1), "{s}");
    // Held back, the publisher did not achieve the rate, and says so.
    let achieved = s["achieved_msgs_per_sec"].as_f64().expect("achieved");
    assert!(achieved < 0.95 * 200_000.0, "held back from the first second on: {s}");
    let error: Vec<&String> = rest.iter().filter(|l| l.starts_with("mdsub: error: ")).collect();
    assert_eq!(error.len(), 1, "{rest:?}");
    assert!(error[0].contains("shard0 tcp://127.0.0.1:") && error[0].contains("could not take the end of stream"));
}

#[test]
fn a_flat_out_replay_into_a_reading_subscriber_raises_no_false_alarm() {
    // Before, every flat-out run whose subscriber read on said `replay: shard0 …: the end of
    // stream waits for a lossless subscriber whose pipe is full (it stopped reading?), up to
    // 10.0 s more` then `… the end of stream went after 0.0 s`: its end of stream met the pipe
    // full of the run's last messages for a moment, and that was said at once (8 such lines in
    // one `mdsub bench`). Now a hold is said once it has lasted 1 s, data and end of stream
    // alike (a subscriber that stopped reading still gets it: the test above). Three runs: the
    // old code said it in about 4 runs of 5 of this one.
    for run in 1..=3 {
        let args = ["--rate", "0", "--count", "50k", "--sndhwm-msgs", "1k", "--json"];
        let (replay, eps) = start_replay("replay", 1, &args);
        let (_ctx, sub) = subscriber(&eps[0]);
        // A reader a little slower than the publisher (it naps 2 ms every 500 frames): the pipe
        // is full whenever the publisher sends, the end of stream too, each time for a moment.
        let (mut data, end) = (0u64, std::time::Instant::now() + Duration::from_secs(60));
        loop {
            assert!(std::time::Instant::now() < end, "run {run}: no end of stream within 60 s; got {data} frames");
            let Ok(f) = sub.recv_bytes(0) else { continue };
            match wire::decode(&f).map(|v| v.header.kind) {
                Ok(Kind::EndOfStream) => break,
                Ok(Kind::Data) => {
                    data += 1;
                    if data % 500 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                _ => {}
            }
        }
        assert_eq!(data, 50_000, "run {run}: every message arrived before the end of stream");
        let err = replay.stderr.as_ref().expect("stderr piped");
        let said = rest_lines(err, Duration::from_secs(20));
        let (status, out) = replay.finish(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "run {run}: {said:?}");
        let alarms: Vec<&String> =
            said.iter().filter(|l| l.contains("held back") || l.contains("the end of stream waits")).collect();
        assert!(alarms.is_empty(), "run {run}: no hold was said: {alarms:?}");
        // The pipe was full for moments all the same: counted, not said.
        let s = json(&out);
        assert!(s["blocked_s_per_shard"][0].as_f64().is_some_and(|b| b > 0.0), "run {run}: never full: {s}");
    }
}

#[test]
fn a_subscriber_to_everything_is_not_waited_for_after_the_end_of_stream() {
    // The end of stream waits (--eos-wait) for the subscribers that end at one and confirm it
    // (an engine's shard); a plain SUB taking everything, as a tap or a pyzmq script does, never
    // confirms nor leaves on its own: the replay does not wait for it, though it stays
    // subscribed after the end of stream, and nothing is sent again to it.
    let args = ["--count", "200", "--rate", "0", "--json", "--eos-wait", "30s"];
    let (mut replay, eps) = start_replay("replay", 1, &args);
    let (_ctx, sub) = subscriber(&eps[0]);
    assert_eq!(receive_until_eos(&sub).len(), 200);
    let t0 = std::time::Instant::now();
    let status = replay.proc.wait_exit(Duration::from_secs(40));
    let took = t0.elapsed();
    let (_, out) = replay.finish(Duration::from_secs(5));
    assert!(status.success(), "{out}");
    assert!(took < Duration::from_secs(15), "not waited for: the replay ended {took:?} after its end of stream");
    let s = json(&out);
    assert!(s.get("eos_unconfirmed").is_none() && s.get("eos_resent").is_none(), "{s}");
    // Not even an idle period (before: 0.1 s, the sending thread's nap before its first look).
    assert_eq!(s["eos_wait_s"].as_f64(), Some(0.0), "nobody was waited for: {s}");
}

/// A SUB on `ep` that takes everything and holds the end-of-stream wait's subscription, as an
/// engine's shard does, but never confirms: what a subscriber whose end of stream was lost
/// looks like to the replay.
fn waiting_subscriber(ep: &str) -> (zmq::Context, zmq::Socket) {
    let (ctx, sub) = subscriber(ep);
    sub.set_subscribe(wire::AWAITS_EOS).expect("subscribe");
    (ctx, sub)
}

#[test]
fn an_end_of_stream_left_unconfirmed_is_said_and_listed_and_ctrl_c_ends_the_wait() {
    // Before: the replay exited as soon as its end of stream was in the pipe, whoever had it.
    // Now it waits --eos-wait for the subscribers that end at one to confirm it; one that never
    // does is said once when the wait ends, and listed in the JSON, and the exit status stays 0
    // (the end of stream went out). Ctrl-C ends the wait at once.
    for ctrl_c in [false, true] {
        let wait = if ctrl_c { "60s" } else { "1s" };
        let args = ["--count", "100", "--rate", "0", "--json", "--eos-wait", wait];
        let (mut replay, eps) = start_replay("replay", 1, &args);
        let (_ctx, sub) = waiting_subscriber(&eps[0]);
        assert_eq!(receive_until_eos(&sub).len(), 100);
        let t0 = std::time::Instant::now();
        if ctrl_c {
            // Still waiting a while after the end of stream: no exit of its own.
            std::thread::sleep(Duration::from_millis(500));
            assert!(replay.proc.child.try_wait().expect("try_wait").is_none(), "it waits for the confirmation");
            replay.proc.signal(2);
        }
        let status = replay.proc.wait_exit(Duration::from_secs(20));
        let took = t0.elapsed();
        let err = replay.stderr.take().expect("stderr piped");
        let said = rest_lines(&err, Duration::from_secs(10));
        let (_, out) = replay.finish(Duration::from_secs(5));
        assert!(status.success(), "ctrl_c={ctrl_c}: {said:?}");
        assert!(took < Duration::from_secs(5), "ctrl_c={ctrl_c}: ended {took:?} after the end of stream");
        let unconfirmed: Vec<&String> =
            said.iter().filter(|l| l.contains("the end of stream is not confirmed")).collect();
        assert_eq!(unconfirmed.len(), 1, "said once: {said:?}");
        let why = if ctrl_c { "a stop request ended the wait" } else { "after 1s (--eos-wait)" };
        assert!(
            unconfirmed[0].starts_with("replay: shard0 tcp://127.0.0.1:") && unconfirmed[0].contains(why),
            "{said:?}"
        );
        let s = json(&out);
        let listed = &s["eos_unconfirmed"];
        assert_eq!(listed.as_array().map(Vec::len), Some(1), "{s}");
        assert_eq!(listed[0], serde_json::json!({"shard": 0, "endpoint": eps[0], "waiting": 1}), "{s}");
        assert_eq!(s["interrupted"], false, "the run itself ended: {s}");
    }
}

/// A replay's exit (20 s at most): its status, its stdout after what was read, its stderr lines.
fn exit_of(mut replay: LineProc) -> (std::process::ExitStatus, String, Vec<String>) {
    let status = replay.proc.wait_exit(Duration::from_secs(20));
    let err = replay.stderr.take().expect("stderr piped");
    let said = rest_lines(&err, Duration::from_secs(10));
    let (_, out) = replay.finish(Duration::from_secs(5));
    (status, out, said)
}

#[test]
fn resends_to_subscribers_that_keep_joining_are_said_once_and_summed() {
    // Before: each resend of the end of stream (a subscriber that took the control topic after
    // it went out) was a line of its own: one that reconnects over and over flooded stderr (10k
    // lines in 3 s). Now the first is said, and the whole count once the wait ends.
    const JOINS: u64 = 5;
    let args = ["--count", "100", "--rate", "0", "--json", "--eos-wait", "3s"];
    let (replay, eps) = start_replay("replay", 1, &args);
    // Never confirms: the replay waits its --eos-wait, resending to every new subscriber.
    let (_ctx, sub) = waiting_subscriber(&eps[0]);
    assert_eq!(receive_until_eos(&sub).len(), 100);
    for _ in 0..JOINS {
        // A new subscriber to everything, after the end of stream went out: a reconnect, as
        // the replay sees it. The end of stream is sent again, and it gets it.
        let (_c, late) = subscriber(&eps[0]);
        end_of_stream_of(&late);
    }
    let (status, out, said) = exit_of(replay);
    assert!(status.success(), "{said:?}");
    let s = json(&out);
    assert_eq!(s["eos_resent"].as_u64(), Some(JOINS), "{s}");
    let again: Vec<&String> = said.iter().filter(|l| l.contains("sent it again")).collect();
    assert_eq!(again.len(), 1, "the first resend alone is said: {said:?}");
    let summed: Vec<&String> = said.iter().filter(|l| l.contains("sent the end of stream again")).collect();
    assert_eq!(summed.len(), 1, "{said:?}");
    assert!(summed[0].contains(&format!("again {JOINS} times in all")), "{said:?}");
}

/// The header of the end of stream `sub` receives (30 s at most), what came before it dropped.
fn end_of_stream_of(sub: &zmq::Socket) -> Header {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < end, "no end of stream within 30 s");
        let Ok(f) = sub.recv_bytes(0) else { continue };
        if let Ok(v) = wire::decode(&f) {
            if v.header.kind == Kind::EndOfStream {
                return v.header;
            }
        }
    }
}

#[test]
fn a_ctrl_c_while_sending_leaves_the_subscribers_a_moment_to_confirm_the_end_of_stream() {
    // Before: a replay stopped by Ctrl-C while it sent ended its wait for the confirmations at
    // its first look, one idle period (100 ms at most) after its end of stream went out: a
    // subscriber that confirmed a moment later (here 300 ms; an engine's shard a few ms behind
    // its neighbours did it to 3 runs of 5 of a 3-shard replay) was said not to have it (`not
    // confirmed …, a stop request ended the wait; they may not have it`) and listed in
    // eos_unconfirmed. Now a stop request before the wait leaves it 1 s, as it leaves the end
    // of stream 1 s to go out; a Ctrl-C during the wait still ends it at once.
    let args = ["--count", "1M", "--rate", "1000", "--json", "--eos-wait", "30s"];
    let (replay, eps) = start_replay("replay", 1, &args);
    let (_ctx, sub) = waiting_subscriber(&eps[0]);
    let first = std::time::Instant::now() + Duration::from_secs(30);
    while sub.recv_bytes(0).is_err() {
        assert!(std::time::Instant::now() < first, "no message within 30 s");
    }
    replay.proc.signal(2);
    let eos = end_of_stream_of(&sub);
    std::thread::sleep(Duration::from_millis(300));
    let took = wire::took_eos(eos.publisher_id, eos.session_id);
    sub.set_subscribe(&took).expect("confirm");
    sub.set_unsubscribe(&took).expect("confirm");
    let (status, out, said) = exit_of(replay);
    assert!(status.success(), "{said:?}");
    let s = json(&out);
    assert_eq!(s["interrupted"], true, "{s}");
    assert!(!said.iter().any(|l| l.contains("not confirmed")), "it was confirmed: {said:?}");
    assert!(s.get("eos_unconfirmed").is_none(), "{s}");
    assert!(s["eos_wait_s"].as_f64().is_some_and(|w| (0.25..1.0).contains(&w)), "waited for it: {s}");
}

/// The replay's stderr line saying that a lossless subscriber has held shard0 back for 1 s,
/// within `deadline`.
fn held_back_line(err: &std::sync::mpsc::Receiver<String>, deadline: Duration) -> String {
    wait_line(err, deadline, "the held-back line", |l| {
        l.starts_with("replay: shard0 ") && l.contains(": held back for ")
    })
}

#[test]
fn ctrl_c_ends_a_replay_blocked_by_its_lossless_subscriber_promptly() {
    let (replay, _ctx, _sub) = replay_into_a_stalled_subscriber(&["--duration", "60s"]);
    let err = replay.stderr.as_ref().expect("stderr piped");
    // The send has been blocked for 1 s when the replay says so.
    held_back_line(err, Duration::from_secs(15));
    let t0 = std::time::Instant::now();
    replay.proc.signal(2);
    let (_status, out) = replay.finish(Duration::from_secs(10));
    // The blocked send ends at once, the end of stream waits 1 s after a stop request.
    assert!(t0.elapsed() < Duration::from_secs(4), "ended {:?} after Ctrl-C", t0.elapsed());
    let s = json(&out);
    assert_eq!(s["interrupted"], true, "{s}");
    assert_eq!(s["eos_missed"].as_array().map(Vec::len), Some(1), "said, not an error after a stop: {s}");
}

#[test]
fn a_replay_held_back_by_its_lossless_subscriber_says_so_and_says_when_it_moves_again() {
    // Before, `--count` (or a long `--duration`) into a subscriber that stopped reading stalled
    // in silence: nothing was said until the duration ended, and with `--count` never.
    let (replay, _ctx, sub) = replay_into_a_stalled_subscriber(&["--count", "2M"]);
    let err = replay.stderr.as_ref().expect("stderr piped");
    let t0 = std::time::Instant::now();
    let held = held_back_line(err, Duration::from_secs(15));
    let ep = held.split(' ').nth(2).unwrap_or_default().trim_end_matches(':').to_string();
    assert!(ep.starts_with("tcp://127.0.0.1:"), "names the shard's endpoint: {held}");
    assert!(held.contains("held back for 1.") && held.contains("Ctrl-C ends the wait"), "{held}");
    // A vanished host looks the same from the replay: the line says what ends that sooner.
    assert!(held.contains("its host is gone") && held.contains("--peer-timeout"), "{held}");
    // The subscriber reads again (to the end of stream): the replay says it moves.
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let reading = reading.clone();
        std::thread::spawn(move || {
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(f) = sub.recv_bytes(0) {
                    if wire::decode(&f).is_ok_and(|v| v.header.kind == Kind::EndOfStream) {
                        break;
                    }
                }
            }
        })
    };
    let moved = wait_line(err, Duration::from_secs(10), "the moves-again line", |l| l.starts_with("replay: shard0 "));
    assert!(moved.starts_with(&format!("replay: shard0 {ep}: sending moves again after ")), "{moved}");
    let held_s: f64 = moved
        .split("after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| mdsub::cli::args::parse_duration(n).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or_else(|| panic!("how long: {moved}"));
    assert!(held_s >= 1.0 && held_s < t0.elapsed().as_secs_f64() + 1.0, "{moved}");
    replay.proc.signal(2);
    let (status, out) = replay.finish(Duration::from_secs(10));
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    reader.join().expect("reader");
    assert_eq!(status.code(), Some(0), "{out}");
    // The time held back is in the summary, per shard.
    let s = json(&out);
    let blocked = s["blocked_s_per_shard"][0].as_f64().unwrap_or_else(|| panic!("blocked_s_per_shard: {s}"));
    assert!(blocked >= held_s - 0.05, "the hold said ({held_s} s) is counted: {s}");
}

#[test]
fn a_capture_that_ends_inside_a_multipart_message_is_refused_as_cut_off() {
    // Before, a clean end of file after a record with the MORE flag lost that message with no
    // count and no line: `sent 5 messages`, exit 0.
    let dir = temp_dir("replay-eof-more");
    let path = dir.join("more.mdcap");
    let mut w = data_capture(&path, b"CAP", (1..=5).map(|i| (i, i)));
    w.write_frame(b"guide.topic", true, 6).expect("write");
    w.write_frame(b"middle part", true, 7).expect("write");
    w.flush().expect("flush");
    drop(w);
    let (code, v, err) = replay_json(&path);
    assert_eq!(code, Some(1), "damaged input: exit 1; {err}");
    assert_eq!(v["refused"]["truncated_tail"], 1, "{v}");
    assert_eq!(v["sent_total"], 5, "the whole messages before it: {v}");
    let said: Vec<&str> = err.lines().filter(|l| l.starts_with("replay: refused (truncated_tail): ")).collect();
    assert_eq!(said.len(), 1, "said once: {err}");
    assert!(
        said[0].contains("more.mdcap")
            && said[0].contains("ends inside a multipart message")
            && said[0].contains("records 6-7"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_capture_of_foreign_or_bad_frames_replays_and_one_of_control_frames_is_refused_as_such() {
    // Before, a capture of 20 `hello world N` frames, or of frames of wire version 9, was
    // refused as `20 records, all recorded control frames`, while the replay sends such frames
    // (a capture mixing them with data frames sent every one): the check and the replay now
    // share one rule (review 19).
    let dir = temp_dir("replay-foreign-only");
    let foreign = dir.join("foreign.mdcap");
    let mut w = CaptureWriter::create(&foreign).expect("create capture");
    for i in 0..20u64 {
        w.write_frame(format!("hello world {i}").as_bytes(), false, 1_000 + i).expect("write");
    }
    w.flush().expect("flush");
    drop(w);
    let (code, v, err) = replay_json(&foreign);
    assert_eq!(code, Some(0), "foreign frames replay: {err}");
    assert_eq!(v["sent_total"], 20, "every frame sent: {v}");
    let badver = dir.join("badver.mdcap");
    let mut w = CaptureWriter::create(&badver).expect("create capture");
    for i in 1..=10u64 {
        let mut f = wire::encode(b"ES", &data_header(i, i), &i.to_le_bytes());
        f[3] = 9; // the version byte, after `ES` and the NUL
        assert!(wire::decode(&f).is_err(), "not an mdsub frame of this version");
        w.write_frame(&f, false, 1_000 + i).expect("write");
    }
    w.flush().expect("flush");
    drop(w);
    let (code, v, err) = replay_json(&badver);
    assert_eq!(code, Some(0), "frames of another wire version replay as recorded: {err}");
    assert_eq!(v["sent_total"], 10, "{v}");
    // A benchmark counts what the engine delivers, mdsub data frames only: such a capture is
    // no benchmark input, refused with what its records are (before, with the same wrong reason).
    for (path, kinds) in [
        (&foreign, "20 records: 20 foreign frames (no mdsub header)"),
        (&badver, "10 records: 10 frames the wire decoder refuses (unknown_version=10)"),
    ] {
        let args = ["bench", "--runs", "1", "--from", path.to_str().expect("utf8")];
        let (code, out, err) = run_within("bench", mdsub().args(args), Duration::from_secs(60));
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(&format!("no mdsub data frames to measure ({kinds})")), "{err}");
        assert!(out.is_empty(), "refused before the runs: {out}");
    }
    // Recorded control frames alone: nothing to replay, and that is the reason said.
    let control = dir.join("control.mdcap");
    let mut w = CaptureWriter::create(&control).expect("create capture");
    for (i, kind) in [Kind::Heartbeat, Kind::Heartbeat, Kind::EndOfStream].into_iter().enumerate() {
        let h = Header { kind, ..data_header(0, 5) };
        w.write_frame(&wire::encode(wire::CONTROL_TOPIC, &h, &0u64.to_le_bytes()), false, i as u64).expect("write");
    }
    w.flush().expect("flush");
    drop(w);
    let (code, _v, err) = replay_json(&control);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no messages to replay (3 records, all recorded control frames: a replay sends its own)"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pause_on_purpose_is_not_taken_for_a_rate_not_achieved() {
    // Before: `rate not achieved: offered 10000 msg/s, achieved 4999 msg/s (50%); the publisher
    // could not send faster`, for a 1.5 s pause it was told to make.
    let args = ["--rate", "10k", "--count", "10k", "--pause-at", "5k", "--pause-for", "1500ms", "--json"];
    let s = json(&lone_replay(&args));
    assert!((1.5..2.0).contains(&s["paused_s"].as_f64().expect("paused_s")), "{s}");
    let achieved = s["achieved_msgs_per_sec"].as_f64().expect("achieved");
    assert!(achieved >= 9_500.0, "the pause is left out of the achieved rate: {s}");
}

#[test]
fn a_run_too_short_to_measure_a_rate_is_not_said_to_miss_it() {
    // Before, `demo --count 10` said `demo: publisher: rate not achieved: offered 100000 msg/s,
    // achieved 57210 msg/s (57%)`: 10 messages due over 90 µs, one late wake-up was most of it.
    // A replay's 10 at 10M msg/s are due over 0.9 µs, less than one send takes.
    let out = lone_replay(&["--rate", "10M", "--count", "10"]);
    assert!(out.starts_with("bound shard0 ") && out.contains("sent 10 messages"), "{out}");
    assert!(!out.contains("rate not achieved"), "{out}");
    let (code, _out, err) = run_within("demo", mdsub().args(["demo", "--count", "10"]), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("rate not achieved"), "{err}");
}

#[test]
fn the_summary_rate_counts_the_intervals_between_messages() {
    // Before, `--rate 1 --count 2` said `sent 2 messages in 1.000 s (2 msg/s)`: n messages over
    // the time from the first to the last, which spans n-1 intervals.
    let args = ["--rate", "10", "--count", "3"];
    let out = lone_replay(&args);
    let line = out.lines().find(|l| l.starts_with("sent 3 messages; ")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(" from the first to the last (10 msg/s); "), "3 messages 100 ms apart: {line}");
    // The rate is over the seconds beside it (before, `sent 300 messages in 0.005 s (1291616
    // msg/s)`: the seconds were the whole run's), and the whole run is said apart.
    let span: f64 = line
        .split("; ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the span: {line}"));
    assert!((0.19..0.3).contains(&span), "two intervals of 100 ms: {line}");
    assert!(line.contains(" s in all, with set-up and end of stream; per shard [3]"), "{line}");
    // --json: the same figures.
    let json_args = ["--rate", "10", "--count", "3", "--json"];
    let s = json(&lone_replay(&json_args));
    let (span, rate, all) = (s["send_span_s"].as_f64(), s["msgs_per_sec"].as_f64(), s["elapsed_s"].as_f64());
    let (span, rate, all) = (span.expect("send_span_s"), rate.expect("msgs_per_sec"), all.expect("elapsed_s"));
    assert!((2.0 / span / rate - 1.0).abs() < 1e-9, "the rate is 2 intervals over send_span_s: {s}");
    assert!(all >= span, "{s}");
}

#[test]
fn a_publisher_id_range_past_32_bits_is_refused() {
    // Before, shard 1 of `--publisher-id 4294967295` silently took id 0.
    let two = ["replay", "--endpoint", "tcp://127.0.0.1:*", "--endpoint", "tcp://127.0.0.1:*"];
    let (code, out, err) = run_within(
        "replay",
        mdsub().args(two).args(["--publisher-id", "4294967295", "--subscribers", "0", "--count", "2"]),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(2), "a usage error: {out} {err}");
    assert!(
        err.contains("--publisher-id") && err.contains("32-bit range") && err.contains("at most 4294967294"),
        "{err}"
    );
    assert!(!out.contains("bound shard"), "refused before binding: {out}");
    let (code, _, err) = run_within(
        "replay",
        mdsub().args(two).args(["--publisher-id", "4294967294", "--subscribers", "0", "--count", "2", "--rate", "0"]),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "the last id in range: {err}");
}

#[test]
fn a_jump_in_the_recorded_clock_is_said_and_ctrl_c_or_the_duration_ends_the_wait() {
    // Before, a record timed 10^18 ns after the one before left `--speed 1x` waiting in silence.
    let dir = temp_dir("replay-jump");
    let path = dir.join("jump.mdcap");
    data_capture(&path, b"JMP", [(1, 1_000), (2, 1_000 + 1_000_000_000_000_000_000)]).flush().expect("flush");
    let p = path.to_str().expect("utf8");
    let (replay, _) = start_replay("replay", 1, &["--from", p, "--speed", "1x", "--subscribers", "0", "--json"]);
    let err = replay.stderr.as_ref().expect("stderr piped");
    let said = wait_line(err, Duration::from_secs(10), "the long gap", |l| l.starts_with("replay: message 2 "));
    assert!(
        said.contains("jump.mdcap, record 2")
            && said.contains(" 277777.8h after the one before")
            && said.contains("Ctrl-C"),
        "{said}"
    );
    let t0 = std::time::Instant::now();
    replay.proc.signal(2);
    let (_, out) = replay.finish(Duration::from_secs(10));
    assert!(t0.elapsed() < Duration::from_secs(4), "Ctrl-C ended the wait: {:?}", t0.elapsed());
    let s = json(&out);
    assert_eq!((u(&s, "sent_total"), &s["interrupted"]), (1, &serde_json::Value::Bool(true)), "{s}");
    // With a duration, the record past its end is not waited for.
    let args = ["--json"];
    let (code, out, err) = run_within(
        "replay",
        mdsub().args(LONE_REPLAY).args(args).args(["--from", p, "--speed", "1x", "--duration", "1s"]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(u(&json(&out), "sent_total"), 1, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The most threads named `name` process `pid` had at once, sampled every 5 ms until it exits
/// or `deadline` passes.
fn most_threads_named(pid: u32, name: &str, deadline: Duration) -> usize {
    let end = std::time::Instant::now() + deadline;
    let mut most = 0;
    while std::time::Instant::now() < end {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { break };
        let n = tasks
            .flatten()
            .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
            .count();
        most = most.max(n);
        std::thread::sleep(Duration::from_millis(5));
    }
    most
}

#[test]
fn a_benchmark_sends_on_one_replay_thread_not_two() {
    // Before, `bench` and `capacity` wrapped the publisher's run in a task named `replay` that
    // only waited for the `replay` agent: two threads of one name, one of them idle.
    let mut cmd = mdsub();
    cmd.args(["bench", "--count", "50M", "--runs", "1", "--rate", "200k"]);
    let p = LineProc::spawn_with_stderr("bench", &mut cmd);
    wait_until(Duration::from_secs(30), "the bench's publisher thread", || {
        thread_cpu_ms(p.proc.pid(), "replay").is_some()
    });
    assert_eq!(most_threads_named(p.proc.pid(), "replay", Duration::from_secs(1)), 1, "bench");
    p.proc.signal(2);
    let _ = p.finish(Duration::from_secs(15));
    let dir = temp_dir("replay-threads-capacity");
    let mut cmd = mdsub();
    cmd.args(["capacity", "--warmup", "200ms", "--hold", "300ms", "--runs", "1", "--max-duration", "6s", "--out"]);
    let p = LineProc::spawn_with_stderr("capacity", cmd.arg(&dir));
    wait_until(Duration::from_secs(30), "the trial's publisher thread", || {
        thread_cpu_ms(p.proc.pid(), "replay").is_some()
    });
    assert_eq!(most_threads_named(p.proc.pid(), "replay", Duration::from_secs(1)), 1, "capacity");
    p.proc.signal(2);
    let _ = p.finish(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Before: random bytes satisfied a replay's wait for subscribers. libzmq reads bytes whose
/// first is not 0xFF as ZMTP 1.0 and makes up a subscription to everything for such a peer,
/// which was counted as a subscriber (`subscribed: sending`, then most of the run
/// `sent_with_no_subscriber`). Subscriptions now count only once a connection completed its
/// handshake (`replay::subscribers_of`).
#[test]
fn random_bytes_are_no_subscriber() {
    use std::io::Write;
    let extra = ["--subscribers", "1", "--rate", "1k", "--duration", "1s", "--json"];
    let (p, eps) = start_replay("replay", 1, &extra);
    let err = p.stderr.as_ref().expect("stderr piped");
    let addr = eps[0].trim_start_matches("tcp://");
    {
        let mut raw = std::net::TcpStream::connect(addr).expect("raw connect");
        let bytes: Vec<u8> = (1..=4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1).collect();
        assert_ne!(bytes[0], 0xFF, "read as ZMTP 1.0");
        let _ = raw.write_all(&bytes);
    }
    wait_line(err, Duration::from_secs(20), "the random bytes refused", |l| {
        l.starts_with("replay-zap: refused (handshake_failed_")
    });
    // Nothing to wait for: a replay that counts right says nothing until a real subscriber.
    let end = std::time::Instant::now() + Duration::from_secs(2);
    let mut early = Vec::new();
    while let Ok(l) = err.recv_timeout(end.saturating_duration_since(std::time::Instant::now())) {
        early.push(l);
    }
    assert!(!early.iter().any(|l| l == "subscribed: sending"), "random bytes counted as a subscriber: {early:?}");
    let (_ctx, sub) = subscriber(&eps[0]);
    wait_line(err, Duration::from_secs(20), "the wait's end", |l| l == "subscribed: sending");
    while sub.recv_bytes(0).is_ok() {}
    let (status, out) = p.finish(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let s = json(&out);
    assert_eq!(u(&s, "sent_with_no_subscriber"), 0, "{s}");
}

#[test]
fn a_capture_replay_is_placed_by_the_bytes_read_of_its_size() {
    // A capture's records carry times, but its span is not known up front: its bytes are.
    use mdsub::replay::progress::{estimate, Extent};
    use mdsub::replay::{Limits, Pacing, Publisher, PublisherConfig, Source};
    let dir = temp_dir("replay-position");
    let path = dir.join("c.cap");
    let mut w = CaptureWriter::create(&path).expect("create capture");
    // 100 frames 3 ms apart: 0.3 s at the recorded pace.
    for i in 1..=100u64 {
        let frame = wire::encode(b"POS", &data_header(i, 1_000 + i), &[0u8; 200]);
        w.write_frame(&frame, false, 1_000_000_000 + i * 3_000_000).expect("write");
    }
    w.flush().expect("flush");
    let size = std::fs::metadata(&path).expect("stat").len();
    let ctx = zmq::Context::new();
    let mut publisher = Publisher::bind(&ctx, &PublisherConfig::default()).expect("publisher");
    let position = publisher.position();
    let mut seen = Vec::new();
    let source = Source::Capture { path, restamp: true };
    let limits = Limits { max_msgs: None, duration: None };
    let never = mdsub::agent::StopFlag::new();
    publisher
        .run(&source, Pacing::Recorded { speed: 1.0 }, limits, &never, &mut |_| seen.extend(position.extent()))
        .expect("replay");
    seen.extend(position.extent());
    assert!(seen.len() >= 10, "sampled about every 5 ms: {seen:?}");
    let fractions: Vec<f64> = seen
        .iter()
        .map(|e| {
            assert!(matches!(e, Extent::Bytes { total, .. } if *total == size), "by bytes of the file's size: {e:?}");
            estimate(*e, 1.0, Some(1.0)).expect("a size").fraction
        })
        .collect();
    assert!(fractions[0] < 0.5, "{fractions:?}");
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "never backwards: {fractions:?}");
    assert_eq!(fractions.last(), Some(&1.0), "the whole file at its end: {fractions:?}");
    assert_eq!(position.market_ns(), None, "a capture has no market time");
}

/// A replay short of subscribers said nothing between `waiting for 2 subscriber(s) per shard…`
/// and its --wait-timeout (30 s by default), then `no subscriber reached EP … (expected 2,
/// saw 1)`, though one had. It now says after 5 s which shards are short, and how many came.
#[test]
fn a_replay_short_of_subscribers_says_so_after_5_s_and_names_how_many_came() {
    let (p, ep) =
        replay_on_one_endpoint("replay-short", &["--subscribers", "2", "--count", "10", "--wait-timeout", "12s"]);
    let eps = [ep];
    let engine = engine_json(&eps, &["--expect-eos", "0"]);
    // Its durations as the flags take them (before: `after 5 s`, `after 12000 ms`, `within
    // 12000 ms`: two wordings, neither of them one --wait-timeout takes).
    let waiting = p.said_after("replay: still waiting for subscribers after 5s (");
    assert!(
        waiting.starts_with(&format!("shard0 {}: ", eps[0]))
            && waiting.ends_with(" of 2); gives up after 12s (--wait-timeout)"),
        "{waiting}"
    );
    let failed = p.said_after("mdsub: error: ");
    assert_eq!(failed, format!("only 1 of 2 subscribers reached {} within 12s", eps[0]));
    let (status, _) = p.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{status}");
    drop(engine);
}

/// The replay's sockets on `port` (its side of each connection to it), by `ss`.
fn connections_on(port: &str) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-tnH", &format!("( sport = :{port} )")])
        .output()
        .unwrap_or_else(|e| panic!("running ss: {e}"));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_later_shards_subscriber_that_left_while_an_earlier_end_of_stream_was_held_back_is_not_waited_for() {
    // Before: the subscription events were read once, before shard0's end of stream; shard1's
    // subscriber that ends at one, gone while shard0's end of stream was held back by a full
    // pipe, was still counted on shard1 when its end of stream went: waited for, then said not
    // to have confirmed it (`not confirmed by 1 subscriber(s)`, listed in eos_unconfirmed).
    // Now each shard's events are read right before its end of stream goes.
    let args = ["--rate", "200k", "--sndhwm-msgs", "1k", "--duration", "1s", "--json", "--eos-wait", "3s"];
    let (replay, eps) = start_replay("replay", 2, &args);
    // Shard0's subscriber never reads until told: it holds the end of stream back.
    let (_ctx0, sub0) = subscriber(&eps[0]);
    sub0.set_rcvhwm(1_000).expect("rcvhwm");
    // Shard1's ends at an end of stream, reads on, and leaves when told.
    let leave = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (leave, ep) = (leave.clone(), eps[1].clone());
        std::thread::spawn(move || {
            let (ctx, sub) = waiting_subscriber(&ep);
            while !leave.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sub.recv_bytes(0);
            }
            sub.set_linger(0).expect("linger");
            drop(sub);
            drop(ctx);
        })
    };
    let err = replay.stderr.as_ref().expect("stderr piped");
    let held = wait_line(err, Duration::from_secs(15), "shard0's end of stream held", |l| {
        l.contains("the end of stream waits")
    });
    assert!(held.starts_with("replay: shard0 "), "{held}");
    leave.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().expect("reader");
    // The replay closed its side of shard1's connection: it has the subscriber's leaving.
    let port = eps[1].rsplit(':').next().expect("port").to_string();
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while connections_on(&port) > 0 {
        assert!(std::time::Instant::now() < end, "the replay kept shard1's connection 5 s after it closed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // libzmq's socket learns of a closed connection through a round trip of commands with its
    // I/O thread (run while the held-back send waits); nothing outside shows when it is done,
    // so it is given 500 ms, some hundred times what it takes.
    std::thread::sleep(Duration::from_millis(500));
    // Shard0's subscriber reads again: its end of stream goes, then shard1's.
    end_of_stream_of(&sub0);
    let said = rest_lines(err, Duration::from_secs(15));
    let (status, out) = replay.finish(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{said:?}");
    assert!(!said.iter().any(|l| l.contains("not confirmed")), "nobody left to confirm: {said:?}");
    let s = json(&out);
    assert!(s.get("eos_unconfirmed").is_none() && s.get("eos_missed").is_none(), "{s}");
    assert_eq!(s["eos_wait_s"].as_f64(), Some(0.0), "nobody was waited for: {s}");
}

#[test]
fn a_restart_in_a_capture_replayed_byte_for_byte_names_the_way_that_works() {
    // Before: "add --restamp" also with --keep-seq, which --restamp conflicts with, and only
    // once the subscribers had come (exit 1): now at once, as a usage error.
    // No subscriber is waited for here: the test would time out if the refusal came after.
    let dir = temp_dir("restart-keep-seq");
    let cap = dir.join("in.mdcap");
    write_capture(&cap);
    let cap = cap.to_str().expect("utf-8 path");
    for extra in [&[][..], &["--keep-seq"][..]] {
        let mut args = vec!["replay", "--endpoint", "tcp://127.0.0.1:*", "--wait-timeout", "20s"];
        args.extend_from_slice(&["--from", cap, "--restart-at", "50"]);
        args.extend_from_slice(extra);
        let (code, err) = run_err(&args);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains("--restart-at: a restart mid-stream needs fresh sequences: replay the capture with --restamp (without --keep-seq"), "{extra:?}: {err}");
    }
}
