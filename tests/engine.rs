//! The end-to-end path with real processes over TCP loopback: replay →
//! engine delivers a known feed exactly once and in per-topic order (with a
//! hand-off to workers, and inline on the readers); bad frames in a live feed
//! are counted by reason; shards split the feed.

mod common;

use std::time::Duration;

use common::*;
use mdsub::wire::capture::CaptureWriter;
use mdsub::wire::{self, Header, Kind};

/// The report `r` of a complete `--handler verify` run of `n` messages:
/// each delivered once, every topic in order, each with its latency.
fn every_message_once_in_topic_order(r: &serde_json::Value, n: u64) {
    assert_eq!(u(r, "sent"), n, "{r}");
    assert_eq!(u(r, "delivered"), n, "{r}");
    assert_eq!(u(r, "lost"), 0, "{r}");
    assert_eq!((u(r, "gaps"), u(r, "duplicates")), (0, 0), "{r}");
    assert_eq!(r["interrupted"], false, "{r}");
    assert_eq!(u(&r["handler"], "verified"), n, "every topic in order: {r}");
    assert_eq!((u(&r["handler"], "out_of_order"), u(&r["handler"], "skipped")), (0, 0), "{r}");
    assert_eq!(u(&r["latency"]["total"], "count"), n, "{r}");
}

#[test]
fn replay_to_engine_delivers_every_message_once_in_topic_order() {
    let (replay, eps) = start_replay("replay", 1, &["--count", "60000", "--rate", "0", "--symbols", "50"]);
    let engine = engine_json(&[&eps[0]], &["--workers", "2", "--handler", "verify"]);
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    every_message_once_in_topic_order(&json(&out), 60_000);
    let (status, out) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
    assert!(out.contains("sent 60000 messages"), "{out}");
}

#[test]
fn inline_readers_run_the_handler_and_deliver_every_message_once_in_topic_order() {
    let (replay, eps) = start_replay("replay", 2, &["--count", "60000", "--rate", "0", "--symbols", "50"]);
    let engine = engine_json(&[&eps[0], &eps[1]], &["--handoff", "inline", "--workers", "2", "--handler", "verify"]);
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    every_message_once_in_topic_order(&r, 60_000);
    assert!(u(&r["latency"]["wire"], "p50_ns") > 0, "{r}");
    // Per shard: what it accepted is what its reader handled, with its latency.
    for k in 0..2 {
        let s = &r["shards"][k];
        assert_eq!(s["shard"], format!("shard{k}"), "{r}");
        assert!(u(s, "msgs") > 0 && u(s, "msgs") == u(s, "delivered"), "{s}");
        assert_eq!(u(&s["latency"]["total"], "count"), u(s, "delivered"), "{s}");
        // The shard's own threads set its ceiling: no worker is in its path.
        let by = s["ceiling"]["thread"].as_str().unwrap_or("");
        assert!(by.starts_with(&format!("shard{k}-")), "{s}");
    }
    // No worker threads: each reader carries its handler's CPU.
    let threads: Vec<&str> =
        r["threads"].as_array().expect("threads").iter().filter_map(|t| t["thread"].as_str()).collect();
    assert!(threads.contains(&"shard0-reader") && threads.contains(&"shard1-reader"), "{threads:?}");
    assert!(!threads.iter().any(|t| t.starts_with("worker")), "{threads:?}");
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
}

#[test]
fn inline_with_more_workers_than_shards_fails_fast_in_one_line() {
    // Nothing listens there: the layout is refused before anything connects. The flags set it,
    // so they are named and it is a refused flag (exit 2), not `--profile builtin: profile
    // field `handoff`` (exit 1).
    let started = std::time::Instant::now();
    let (code, out, err) = run_within(
        "engine",
        mdsub().args(["engine", "--endpoint", "tcp://127.0.0.1:1", "--handoff", "inline", "--workers", "2"]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: --handoff inline with --workers 2: "), "{err}");
    for part in ["one worker per shard", "(1 shard(s), 2 worker(s))", "give --workers 1, or --handoff batch"] {
        assert!(first.contains(part), "{part:?} in {err}");
    }
    assert!(!err.contains("--profile"), "{err}");
    assert!(out.is_empty(), "{out}");
}

#[test]
fn bench_measures_the_inline_engine_beside_the_others_against_the_same_baseline() {
    let args = ["bench", "--count", "100k", "--runs", "1", "--handoff", "all", "--json"];
    let r = mdsub_json(&args, Duration::from_secs(180));
    let runs = r["runs"].as_array().expect("runs");
    let names: Vec<&str> = runs.iter().filter_map(|x| x["subscriber"].as_str()).collect();
    assert_eq!(names, ["baseline", "engine/batch", "engine/per-message", "engine/inline"], "{r}");
    for run in runs {
        assert_eq!(run["delivered"].as_u64(), Some(100_000), "{run}");
        assert_eq!(run["lost"].as_u64(), Some(0), "{run}");
    }
    let inline = r["medians"].as_array().expect("medians").iter().find(|m| m["subscriber"] == "engine/inline");
    let inline = inline.unwrap_or_else(|| panic!("no engine/inline medians: {r}"));
    let threads = inline["threads"].as_object().expect("threads");
    assert!(threads.contains_key("shard0-reader") && !threads.keys().any(|t| t.starts_with("worker")), "{inline}");
    assert!(inline["cpu_ns_per_msg"].as_f64() > Some(0.0), "{inline}");
    let ratio = r["ratios"].as_array().expect("ratios").iter().find(|x| x[0] == "engine/inline");
    let ratio = ratio.unwrap_or_else(|| panic!("no engine/inline ratio: {r}"));
    assert!(ratio[1][4].as_f64() > Some(0.0), "a CPU ratio against the baseline: {ratio}");
}

/// `bench --outputs-dir newout` used to run the whole baseline, then fail on the first engine run
/// with `--hlog newout/bench.hlog: No such file or directory`. The folder is made like
/// capacity's `--out`; one that cannot be made, or files another run holds, fail before any run,
/// naming `--outputs-dir`.
#[test]
fn bench_makes_its_outputs_dir_and_refuses_one_it_cannot_write_before_any_run() {
    let dir = temp_dir("bench-outputs");
    let out = dir.join("new").join("out");
    let bench = |outputs: &std::path::Path| {
        let mut cmd = mdsub();
        cmd.args(["bench", "--count", "20k", "--runs", "1", "--handoff", "batch", "--json", "--outputs-dir"]);
        run_within("bench", cmd.arg(outputs), Duration::from_secs(120))
    };
    // Held by "another run": this test's own lock on the file (flock locks are per open file).
    std::fs::create_dir_all(&out).expect("the folder");
    let held = std::fs::File::create(out.join("bench.hgrm")).expect("a file to hold");
    held.try_lock().expect("this test's lock");
    let (code, stdout, err) = bench(&out);
    assert_eq!(code, Some(1), "{stdout}{err}");
    assert!(stdout.is_empty(), "no run: {stdout}");
    let hgrm = out.join("bench.hgrm");
    let holder = format!("--outputs-dir {}: process {} (", hgrm.display(), std::process::id());
    assert!(err.contains(&holder) && err.contains("is writing this file"), "this test named: {err}");
    drop(held);
    std::fs::remove_dir_all(dir.join("new")).expect("clean");
    // Not there yet: made, and written.
    let (code, stdout, err) = bench(&out);
    assert_eq!(code, Some(0), "{err}");
    let r = json(&stdout);
    let names: Vec<&str> =
        r["runs"].as_array().expect("runs").iter().filter_map(|x| x["subscriber"].as_str()).collect();
    assert_eq!(names, ["baseline", "engine/batch+outputs", "engine/batch"], "{r}");
    let hlog = std::fs::read_to_string(out.join("bench.hlog")).expect("the interval log");
    assert!(hlog.starts_with("#[mdsub engine "), "{hlog}");
    assert!(std::fs::read_to_string(&hgrm).is_ok_and(|t| t.contains("Total count    =        20000]")), "the spectrum");
    // A folder that cannot be made (its parent is a file): refused at once.
    let blocked = dir.join("file").join("out");
    std::fs::write(dir.join("file"), b"").expect("a file in the way");
    let (code, stdout, err) = bench(&blocked);
    assert_eq!(code, Some(1), "{stdout}{err}");
    assert!(stdout.is_empty(), "no run: {stdout}");
    assert!(err.contains(&format!("--outputs-dir {}: creating it: Not a directory", blocked.display())), "{err}");
    // A file where the folder should be: said as such (it was "creating it: File exists").
    let (code, stdout, err) = bench(&dir.join("file"));
    assert_eq!(code, Some(1), "{stdout}{err}");
    assert!(err.contains("--outputs-dir") && err.contains("not a directory"), "{err}");
}

#[test]
fn two_shards_split_the_feed_and_deliver_all() {
    let (replay, eps) = start_replay("replay", 2, &["--count", "30000", "--rate", "0", "--symbols", "40"]);
    let engine = engine_json(&[&eps[0], &eps[1]], &["--handler", "verify"]);
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    assert_eq!(u(&r, "sent"), 30_000);
    assert_eq!(u(&r, "delivered"), 30_000);
    assert_eq!(u(&r["handler"], "verified"), 30_000);
    let (_, out) = replay.finish(Duration::from_secs(30));
    // Both shards carried part of the feed.
    let per_shard = out.split("per shard [").nth(1).expect("per-shard counts");
    let counts: Vec<u64> =
        per_shard.trim_end_matches([']', '\n']).split(", ").map(|n| n.parse().expect("count")).collect();
    assert_eq!(counts.iter().sum::<u64>(), 30_000);
    assert!(counts.iter().all(|&c| c > 1000), "{counts:?}");
}

/// Per-message hand-off from two shards: each frame goes to its worker behind its shard and
/// receive time, so the shards' rows hold their messages and the queue stage is measured.
/// Before, both shards said `delivered 0` and latency 0, all 40 000 went to an `unattributed`
/// row (`unknown (no messages)`), queue read 1 ns at every percentile and wire equalled total.
#[test]
fn per_message_hand_off_from_two_shards_keeps_each_shards_messages_and_stages() {
    let (replay, eps) = start_replay("replay", 2, &["--count", "20000", "--rate", "20k", "--symbols", "40"]);
    let engine = engine_json(&[&eps[0], &eps[1]], &["--handoff", "per-message", "--workers", "2"]);
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    assert_eq!((u(&r, "sent"), u(&r, "delivered")), (20_000, 20_000), "{r}");
    let shards = r["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2, "one row per shard, no unattributed one: {r}");
    for s in shards {
        assert!(u(s, "delivered") > 0 && u(s, "delivered") == u(s, "msgs"), "{s}");
        for stage in ["wire", "queue", "total"] {
            assert_eq!(u(&s["latency"][stage], "count"), u(s, "delivered"), "{stage}: {s}");
        }
        assert!(s["ceiling"].is_object(), "{s}");
    }
    let lat = &r["latency"];
    assert!(u(&lat["queue"], "max_ns") > 1, "the queue stage is measured: {lat}");
    assert!(u(&lat["wire"], "p50_ns") < u(&lat["total"], "p50_ns"), "wire ends at the receive: {lat}");
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
}

/// Two workers sharing one shard round-robin each take half its messages: the shard saturates
/// the busier one at twice the rate its cost per message alone gives. Before, the ceiling was
/// that cost alone (`0.05 M msg/s, set by worker0 at 21469 ns/msg` with 30k msg/s carried and
/// each worker 32 % busy).
#[test]
fn the_ceiling_counts_each_workers_share_of_the_shards_messages() {
    // 100 µs of work a message outweighs the reader's wake-ups at this rate (tens of µs a
    // message on a loaded 2-core host); the snail is off so a busy host cannot stop the run.
    let (replay, eps) = start_replay("replay", 1, &["--count", "2000", "--rate", "2k", "--symbols", "40"]);
    let engine = engine_json(
        &[&eps[0]],
        &[
            "--workers",
            "2",
            "--routing",
            "round-robin",
            "--handler",
            "work:100000",
            "--idle",
            "block",
            "--snail",
            "off",
        ],
    );
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    let c = &r["shards"][0]["ceiling"];
    let by = c["thread"].as_str().unwrap_or("");
    assert!(by.starts_with("worker"), "100 µs of work a message sets it: {c}");
    let (cost, share, rate) = (c["cpu_ns_per_msg"].as_f64(), c["share"].as_f64(), c["msgs_per_sec"].as_f64());
    let (Some(cost), Some(share), Some(rate)) = (cost, share, rate) else { panic!("a ceiling: {c}") };
    assert!((0.45..=0.55).contains(&share), "round-robin: half each: {c}");
    assert!((rate * cost * share / 1e9 - 1.0).abs() < 1e-6, "{c}");
    assert!(rate > 1.5e9 / cost, "above one worker's own rate: {c}");
    let t = r["threads"].as_array().expect("threads").iter().find(|t| t["thread"] == by).expect("its account");
    assert_eq!(t["cpu_ns_per_msg"].as_f64(), Some(cost), "{t}");
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
}

/// A data frame's header: `publisher_id`'s `session_id` at stream and topic
/// sequence `seq`, stamped `seq` ns.
fn data_header(publisher_id: u32, session_id: u64, seq: u64) -> Header {
    Header { kind: Kind::Data, flags: 0, publisher_id, session_id, stream_seq: seq, topic_seq: seq, send_time_ns: seq }
}

/// One example of every malformation, as a publisher would send it.
fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    let good = wire::encode(b"JUNK", &data_header(99, 1, 1), b"payload");
    let mut version = good.clone();
    version[5] = 77;
    let mut kind = good.clone();
    kind[6] = 42;
    let mut length = good.clone();
    length.push(0);
    vec![
        ("missing_nul", b"no terminator at all".to_vec()),
        ("empty_topic", [&b"\0"[..], &good[5..]].concat()),
        ("bad_topic", [&b"sp ace"[..], &good[4..]].concat()),
        ("short", b"JUNK\0tiny".to_vec()),
        ("unknown_version", version),
        ("unknown_kind", kind),
        ("length_mismatch", length),
    ]
}

#[test]
fn garbage_in_a_live_feed_is_counted_by_reason_and_the_run_completes() {
    // A second publisher that sends garbage into the same shard.
    let ctx = zmq::Context::new();
    let junk = ctx.socket(zmq::XPUB).expect("xpub");
    junk.bind("tcp://127.0.0.1:*").expect("bind");
    let junk_ep = junk.get_last_endpoint().expect("endpoint").expect("utf8");
    let (replay, eps) = start_replay("replay", 1, &["--count", "40000", "--rate", "20000"]);
    // The junk publisher never ends its stream: wait for the replay's only.
    let engine = engine_json(&[&format!("{},{}", eps[0], junk_ep)], &["--handler", "verify", "--expect-eos", "1"]);
    // Handshake: the engine's subscription reaches the junk publisher.
    junk.set_rcvtimeo(20_000).expect("rcvtimeo");
    let sub = junk.recv_bytes(0).expect("engine subscribed to the junk publisher within 20 s");
    assert_eq!(sub.first(), Some(&1u8));
    let cases = garbage();
    for (i, (_, frame)) in cases.iter().enumerate() {
        for _ in 0..=i {
            junk.send(&frame[..], 0).expect("send garbage");
        }
    }
    let (status, out) = engine.finish(Duration::from_secs(90));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    for (i, (reason, _)) in cases.iter().enumerate() {
        assert_eq!(u(&r["bad_frames"], reason), i as u64 + 1, "reason {reason}: {}", r["bad_frames"]);
    }
    assert_eq!(u(&r, "sent"), 40_000);
    assert_eq!(u(&r, "delivered"), 40_000, "{r}");
    assert_eq!(u(&r, "lost"), 0);
    assert_eq!(u(&r["handler"], "verified"), 40_000);
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
}

/// `mdsub engine` on a port nobody publishes on (it runs until a signal), once it says it is
/// connecting (its signal handler is in place by then); its stderr lines keep coming on `stderr`.
fn idle_engine() -> LineProc {
    let port = free_port_block(1);
    let mut cmd = mdsub();
    cmd.args(["engine", "--expect-eos", "0", "--endpoint", &format!("tcp://127.0.0.1:{port}")]);
    let engine = LineProc::spawn_with_stderr("engine", &mut cmd);
    let err = engine.stderr.as_ref().expect("stderr lines");
    let line = err.recv_timeout(Duration::from_secs(20)).expect("engine started within 20 s");
    assert!(line.starts_with("shard0: connecting to"), "{line}");
    engine
}

#[test]
fn engine_stops_cleanly_on_sigint_with_a_report() {
    let engine = idle_engine();
    engine.proc.signal(2);
    let (status, out) = engine.finish(Duration::from_secs(20));
    assert!(status.success(), "{out}");
    assert!(out.contains("(interrupted)"), "report says it was interrupted: {out}");
    assert!(out.contains("delivered    0"), "{out}");
}

#[test]
fn two_sigterms_close_together_are_one_clean_stop() {
    // GNU `timeout` sends SIGTERM to the process and then to its process group: two
    // signals microseconds apart. They are one request to stop, not "stop, then end now".
    let mut engine = idle_engine();
    let err = engine.stderr.take().expect("stderr lines");
    // One `kill` sends both, back to back, as `timeout` does. Two signals that close often merge
    // into one delivery, and an idle engine's clean stop is quicker than any spacing a test could
    // rely on, so this checks the binary's wiring (one clean stop, the report, exit 0); the rule
    // itself, which the old code lacked, is cli::on_signal's unit test.
    let pid = engine.proc.pid().to_string();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid, &pid]).status().expect("kill");
    assert!(sent.success());
    let (status, out) = engine.finish(Duration::from_secs(20));
    let err = rest_lines(&err, Duration::from_secs(20));
    assert!(status.success(), "exit {status:?}; stderr: {err:?}; stdout: {out}");
    assert!(out.contains("(interrupted)"), "the report, marked interrupted: {out}");
    assert!(!err.iter().any(|l| l.contains("mdsub: interrupted")), "{err:?}");
}

#[test]
fn a_late_join_is_said_as_such_in_the_loss() {
    // The replay's first subscriber is this test's SUB; the engine comes after 1 000 messages,
    // so what was sent before it joined is part of `lost` and said as `before_first`.
    // 4 s of feed: room for a debug engine on a loaded box to start and join well before the end.
    let (replay, eps) = start_replay("replay", 1, &["--rate", "5k", "--count", "20k", "--subscribers", "1"]);
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).expect("sub");
    sub.set_subscribe(b"").expect("subscribe");
    sub.set_rcvtimeo(20_000).expect("timeout");
    sub.connect(&eps[0]).expect("connect");
    let mut seen = 0;
    while seen < 1_000 {
        sub.recv_bytes(0).expect("the replay sends within 20 s");
        seen += 1;
    }
    let engine = engine_json(&eps, &["--handler", "verify"]);
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "{out}");
    let r = json(&out);
    assert_eq!(u(&r, "sent"), 20_000, "{r}");
    let (lost, before) = (u(&r, "lost"), u(&r, "before_first"));
    assert!(before >= 1_000, "at least the 1 000 the test read went before the engine joined: {r}");
    assert_eq!(lost, before, "on loopback all the loss is the late join: {r}");
    assert_eq!(u(&r, "gaps"), 0, "{r}");
    assert_eq!(u(&r["shards"][0], "before_first"), before, "{r}");
    drop(sub);
    replay.finish(Duration::from_secs(20));
}

#[test]
fn filtered_subscription_delivers_its_topics_and_says_loss_is_unknown() {
    let (replay, eps) = start_replay("replay", 1, &["--count", "20000", "--rate", "0", "--symbols", "80"]);
    let engine = engine_json(&[&eps[0]], &["--subscribe", "ES", "--subscribe", "CL", "--handler", "verify"]);
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "{out}");
    let r = json(&out);
    assert_eq!(u(&r, "sent"), 20_000, "the publisher's count, all topics: {r}");
    let delivered = u(&r, "delivered");
    assert!(delivered > 0 && delivered < 20_000, "only ES* and CL*: {r}");
    assert!(r["lost"].is_null(), "loss through a filter is not sent - delivered: {r}");
    assert!(r["loss_basis"].as_str().unwrap_or("").contains("filtered"), "{r}");
    assert_eq!(u(&r, "gaps"), 0, "no gaps by topic sequence");
    assert_eq!(u(&r["handler"], "verified"), delivered);
    replay.finish(Duration::from_secs(20));
}

#[test]
fn two_publishers_on_one_shard_are_kept_apart() {
    let (a, ea) = start_replay("replay-a", 1, &["--count", "15000", "--rate", "0", "--publisher-id", "10"]);
    let (b, eb) = start_replay("replay-b", 1, &["--count", "25000", "--rate", "0", "--publisher-id", "20"]);
    let engine = engine_json(&[&format!("{},{}", ea[0], eb[0])], &["--handler", "verify"]);
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "{out}");
    let r = json(&out);
    assert_eq!(u(&r, "sent"), 40_000, "both ends of stream awaited: {r}");
    assert_eq!(u(&r, "delivered"), 40_000);
    assert_eq!(u(&r, "lost"), 0);
    assert_eq!(u(&r, "restarts"), 0, "two publishers are not one restarting: {r}");
    assert_eq!(u(&r, "duplicates"), 0);
    a.finish(Duration::from_secs(20));
    b.finish(Duration::from_secs(20));
}

/// Two publishers sharing one publisher id (the default) on one shard: not
/// thousands of restarts and a false loss, but one id conflict, said once on
/// stderr, with loss still counted exactly (each session by itself).
#[test]
fn two_publishers_sharing_one_id_are_said_once_and_counted_exactly() {
    let paced = ["--rate", "20k", "--symbols", "20"];
    let (a, ea) = start_replay("replay-a", 1, &[&["--count", "10000"][..], &paced].concat());
    let (b, eb) = start_replay("replay-b", 1, &[&["--count", "15000"][..], &paced].concat());
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "60s", "--endpoint", &format!("{},{}", ea[0], eb[0])]);
    let mut engine = LineProc::spawn_with_stderr("engine", &mut cmd);
    let stderr = engine.stderr.take().expect("stderr lines");
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "{out}");
    let r = json(&out);
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "lost")), (25_000, 25_000, 0), "{r}");
    assert_eq!((u(&r, "gaps"), u(&r, "duplicates"), u(&r, "before_first")), (0, 0, 0), "{r}");
    // The second session's first frame counted as a restart until the first came back; a
    // counter does not go back (it is live on /metrics), and the id conflict says why.
    assert!(u(&r, "restarts") <= 1, "not thousands of restarts: {r}");
    assert_eq!(u(&r, "id_conflicts"), 1, "{r}");
    let said: Vec<String> = std::iter::from_fn(|| stderr.recv_timeout(Duration::from_secs(2)).ok())
        .filter(|l| l.contains("alternates between sessions"))
        .collect();
    assert_eq!(said.len(), 1, "said once: {said:?}");
    assert!(said[0].contains("publisher 0 ") && said[0].contains("--publisher-id"), "{said:?}");
    a.finish(Duration::from_secs(20));
    b.finish(Duration::from_secs(20));
}

/// Two publishers misconfigured with one `--publisher-id` behind one proxy (`mdsub lvc`), the
/// first done well before the second: the first one's end of stream ends its own session only.
/// The engine (one endpoint, so one end of stream expected, and every session it saw waited for)
/// waits for the second's, and `sent` is both counts. Before, that end of stream spoke for the
/// second's frames before it (as a verbatim capture replay's does): the shard ended at once, the
/// second's session neither open nor counted, and `sent` fell short of what arrived. (Connected
/// to each replay's own endpoint the engine expects two ends of stream, and was right before.)
#[test]
fn one_of_two_publishers_sharing_an_id_ending_first_does_not_end_the_other() {
    let (a, ea) = start_replay("replay-a", 1, &["--count", "2000", "--rate", "4k", "--publisher-id", "5"]);
    let (b, eb) = start_replay("replay-b", 1, &["--count", "600", "--rate", "300", "--publisher-id", "5"]);
    let lvc = common::proxy::start_with(
        "lvc",
        &format!("connect:{}", ea[0]),
        "bind:tcp://127.0.0.1:*",
        &["--frontend", &format!("connect:{}", eb[0])],
    );
    let engine = engine_json(&[&lvc.backend], &["--handler", "verify"]);
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "{out}");
    let r = json(&out);
    assert_eq!(u(&r, "id_conflicts"), 1, "the two alternated: {r}");
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "lost")), (2_600, 2_600, 0), "{r}");
    assert_eq!((u(&r, "gaps"), u(&r, "before_first"), u(&r, "unended_sessions")), (0, 0, 0), "{r}");
    assert!(a.finish(Duration::from_secs(20)).0.success());
    assert!(b.finish(Duration::from_secs(20)).0.success());
    let mut lvc = lvc.proc;
    lvc.signal(15);
    lvc.wait_exit(Duration::from_secs(10));
}

/// A capture replayed verbatim: the recorded publisher 0 session's frames,
/// then the replay's own end of stream (publisher 0, a session of its own,
/// never seen live). That end is no restart of the recorded session.
#[test]
fn a_verbatim_capture_replay_is_no_restart() {
    let dir = temp_dir("engine-verbatim"); // removed when the test ends
    let path = dir.join("cap.mdcap");
    let recorded = (1..=500u64).map(|i| wire::encode(b"CAP", &data_header(0, 77, i), &[]));
    let mut w = CaptureWriter::create(&path).expect("create capture");
    recorded.enumerate().for_each(|(i, f)| w.write_frame(&f, false, i as u64).expect("write"));
    w.flush().expect("flush");
    let (replay, eps) = start_replay("replay", 1, &["--from", path.to_str().expect("utf8"), "--rate", "0"]);
    let engine = engine_json(&[&eps[0]], &[]);
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "{out}");
    let r = json(&out);
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "lost")), (500, 500, 0), "{r}");
    assert_eq!((u(&r, "restarts"), u(&r, "gaps"), u(&r, "id_conflicts")), (0, 0, 0), "{r}");
    replay.finish(Duration::from_secs(20));
}

#[test]
fn sigint_under_full_load_ends_engine_and_replay_promptly() {
    let (replay, eps) = start_replay("replay", 1, &["--count", "50M", "--rate", "0"]);
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--endpoint", &eps[0], "--handler", "work:2000"]);
    let engine = LineProc::spawn("engine", &mut cmd);
    // The replay starts once the engine subscribed; the engine (2 µs of work
    // per message) is then under full back-pressure. The condition under
    // test: its worker has been busy for a while (its own CPU time says so).
    let pid = engine.proc.pid();
    wait_until(Duration::from_secs(20), "worker0 to have done 200 ms of work", || {
        thread_cpu_ms(pid, "worker0").is_some_and(|ms| ms >= 200)
    });
    engine.proc.signal(2);
    let (status, out) = engine.finish(Duration::from_secs(15));
    assert!(status.success(), "{out}");
    let r = json(&out);
    assert_eq!(r["interrupted"], true);
    assert_eq!(r["time_limit"], false, "a signal, not the time limit: {r}");
    assert!(u(&r, "delivered") > 0, "{r}");
    // Every accepted message is delivered or said not handled (before, the hand-off's backlog
    // at the stop was in no counter).
    let accepted: u64 = r["shards"].as_array().expect("shards").iter().map(|s| s["msgs"].as_u64().unwrap_or(0)).sum();
    assert_eq!(accepted, u(&r, "delivered") + u(&r, "not_handled"), "{r}");
    replay.proc.signal(2);
    let (status, out) = replay.finish(Duration::from_secs(15));
    assert!(status.success(), "{out}");
    assert!(out.contains("(interrupted)"), "{out}");
}

/// Messages of the slow-handler runs below, and the handler: 5 ms a message, so the feed (at
/// 50k msg/s, some 30 ms) is read long before its handling ends (7.5 s of backlog).
const BACKLOG_MSGS: u64 = 1_500;
const SLOW_HANDLER: &str = "work:5000000";

/// `mdsub engine --json` with the slow handler and `--handoff handoff` on a replay of
/// [`BACKLOG_MSGS`] at 50k msg/s, once it says it is connecting (its signal handler is in place
/// by then); the replay, and when the engine was started.
fn slow_engine(handoff: &str, extra: &[&str]) -> (LineProc, LineProc, std::time::Instant) {
    let count = BACKLOG_MSGS.to_string();
    let (replay, eps) = start_replay("replay", 1, &["--count", &count, "--rate", "50k"]);
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--endpoint", &eps[0], "--handler", SLOW_HANDLER, "--snail", "off"]);
    cmd.args(["--handoff", handoff]).args(extra);
    let started = std::time::Instant::now();
    let engine = LineProc::spawn_with_stderr("engine", &mut cmd);
    let err = engine.stderr.as_ref().expect("stderr lines");
    wait_line(err, Duration::from_secs(20), "shard0: connecting to", |l| l.starts_with("shard0: connecting to"));
    (replay, engine, started)
}

/// The report of an engine stopped (by Ctrl-C, or by its time limit) `since`: it exits 0 within
/// `within`, marked interrupted, and by the time limit or not.
fn stopped_report(
    engine: LineProc,
    since: std::time::Instant,
    within: Duration,
    time_limit: bool,
    handoff: &str,
) -> serde_json::Value {
    let (status, out) = engine.finish(Duration::from_secs(30));
    let took = since.elapsed();
    assert!(status.success(), "{handoff}: {out}");
    assert!(took < within, "{handoff}: ended {took:?} after the stop (time limit: {time_limit})");
    let r = json(&out);
    assert_eq!((&r["interrupted"], &r["time_limit"]), (&true.into(), &time_limit.into()), "{handoff}: {r}");
    r
}

/// The report of a run stopped with a backlog: every accepted message delivered or said not
/// handled, none of them lost (they arrived), and the loss known (the end of stream was read).
fn stopped_with_a_backlog(r: &serde_json::Value) {
    let accepted: u64 = r["shards"].as_array().expect("shards").iter().map(|s| u(s, "msgs")).sum();
    assert_eq!((u(r, "sent"), accepted), (BACKLOG_MSGS, BACKLOG_MSGS), "the end of stream was read: {r}");
    assert!(u(r, "delivered") < BACKLOG_MSGS && u(r, "not_handled") > 0, "the backlog was cut: {r}");
    assert_eq!(accepted, u(r, "delivered") + u(r, "not_handled"), "{r}");
    assert_eq!(u(r, "lost"), 0, "left unhandled at the stop is no loss: {r}");
}

/// Ctrl-C once the readers saw the end of stream and ended, while the workers still have seconds
/// of backlog: the engine stops within one hand-off's handling and says it was interrupted.
/// Before, the readers' end ended the wait: the workers ran through their whole backlog (the
/// report not marked interrupted, what was left counted as lost).
#[test]
fn sigint_during_a_slow_handlers_backlog_after_the_end_of_stream_stops_promptly() {
    for handoff in ["batch", "per-message"] {
        let (replay, engine, _) = slow_engine(handoff, &["--max-duration", "60s"]);
        let pid = engine.proc.pid();
        // The condition under test: the worker is at work (its CPU time says so: by then the
        // reader has long been running, and named) and the reader has finished (the end of
        // stream read, every message handed off). Looked at too early, a reader thread not yet
        // named looked finished.
        wait_until(Duration::from_secs(20), "worker0 at work and shard0-reader finished", || {
            thread_cpu_ms(pid, "worker0").is_some_and(|ms| ms >= 100) && thread_cpu_ms(pid, "shard0-reader").is_none()
        });
        assert!(thread_cpu_ms(pid, "worker0").is_some(), "{handoff}: the worker is still handling its backlog");
        let signalled = std::time::Instant::now();
        engine.proc.signal(2);
        // A batch of at most 64 messages of 5 ms is 320 ms; the whole backlog was 7.5 s.
        let r = stopped_report(engine, signalled, Duration::from_secs(3), false, handoff);
        stopped_with_a_backlog(&r);
        let (status, _) = replay.finish(Duration::from_secs(20));
        assert!(status.success(), "{handoff}");
    }
}

/// `--max-duration` holds whatever the engine is doing: reading, or (batch and per-message
/// hand-offs) handling a backlog after its readers ended. It stopped 7 s past the deadline.
#[test]
fn max_duration_stops_a_slow_handlers_backlog_at_the_deadline() {
    for handoff in ["batch", "per-message", "inline"] {
        let (replay, engine, started) = slow_engine(handoff, &["--max-duration", "1s"]);
        let r = stopped_report(engine, started, Duration::from_secs(5), true, handoff);
        if handoff == "inline" {
            // The reader handles each frame as it reads it: the rest waits unread, not accepted.
            assert!(u(&r, "delivered") < BACKLOG_MSGS, "{r}");
            assert_eq!(u(&r, "not_handled"), 0, "{r}");
        } else {
            stopped_with_a_backlog(&r);
        }
        let (status, _) = replay.finish(Duration::from_secs(20));
        assert!(status.success(), "{handoff}");
    }
}

/// Data frame `seq` (stream and topic sequence alike) of `publisher_id`'s session `session_id`.
fn data_frame(publisher_id: u32, session_id: u64, seq: u64) -> Vec<u8> {
    let h = Header { send_time_ns: mdsub::clock::realtime_ns(), ..data_header(publisher_id, session_id, seq) };
    wire::encode(b"ES", &h, b"abcd")
}

/// The end of stream of that session after stream sequence `last_seq`, saying it sent `sent`.
fn end_frame(publisher_id: u32, session_id: u64, last_seq: u64, sent: u64) -> Vec<u8> {
    let h = Header {
        kind: Kind::EndOfStream,
        topic_seq: 0,
        send_time_ns: mdsub::clock::realtime_ns(),
        ..data_header(publisher_id, session_id, last_seq)
    };
    wire::encode(wire::CONTROL_TOPIC, &h, &sent.to_le_bytes())
}

/// `mdsub engine --json` on a bound endpoint (`extra` flags after it), and that endpoint.
fn bound_engine(extra: &[&str]) -> (LineProc, String) {
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "60s", "--endpoint", "bind:tcp://127.0.0.1:*"]);
    cmd.args(extra);
    let engine = LineProc::spawn_with_stderr("engine", &mut cmd);
    let ep = engine.said_after("shard0: bound ");
    (engine, ep)
}

/// A bound shard no publisher reaches for 5 s says so once (which shard, which endpoint, still
/// waiting), as a shard that connects says `not up after 5 s`; and says when one comes. Before,
/// a bound shard said nothing however long it waited.
#[test]
fn a_bound_shard_with_no_publisher_for_5_s_says_so_once_and_when_one_comes() {
    let started = std::time::Instant::now();
    let (mut engine, ep) = bound_engine(&["--expect-eos", "0"]);
    let err = engine.stderr.take().expect("stderr piped");
    let waiting = wait_line(&err, Duration::from_secs(30), "the shard's no-publisher line", |l| {
        l.starts_with("shard0: no publisher")
    });
    assert!(started.elapsed() >= Duration::from_secs(5), "said after 5 s: {waiting}");
    assert_eq!(
        waiting,
        format!("shard0: no publisher has connected to bound {ep} in 5s; still waiting (said again when one does)")
    );
    let ctx = zmq::Context::new();
    let _publisher = connected_publisher(&ctx, &ep);
    let came = wait_line(&err, Duration::from_secs(30), "the shard's publisher line", |l| {
        l.starts_with("shard0: a publisher connected")
    });
    assert!(came.starts_with(&format!("shard0: a publisher connected to {ep} after ")), "{came}");
    engine.proc.signal(2);
    let (status, out) = engine.finish(Duration::from_secs(30));
    assert!(status.success(), "{out}");
    let rest: Vec<String> = std::iter::from_fn(|| err.recv_timeout(Duration::from_secs(5)).ok()).collect();
    assert!(!rest.iter().any(|l| l.contains("no publisher has connected")), "said once: {rest:?}");
}

/// One publisher sends `frames` to a bound engine, which ends on its end of stream: the report,
/// and what the engine said on stderr.
fn one_publisher_run(frames: &[Vec<u8>]) -> (serde_json::Value, Vec<String>) {
    let (mut engine, ep) = bound_engine(&[]);
    let ctx = zmq::Context::new();
    let publ = connected_publisher(&ctx, &ep);
    for f in frames {
        publ.send(&f[..], 0).expect("send");
    }
    let err = engine.stderr.take().expect("stderr piped");
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "engine failed: {out}");
    // Until its stderr closes (the engine exited).
    let said = std::iter::from_fn(|| err.recv_timeout(Duration::from_secs(5)).ok()).collect();
    (json(&out), said)
}

/// The frames shard 0 of the engine serving `/metrics` at `addr` received, from `/metrics`;
/// None once the engine is gone.
fn shard0_received(addr: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut page = String::new();
    conn.read_to_string(&mut page).ok()?;
    let line = page.lines().find(|l| l.starts_with("mdsub_shard_received_total{") && l.contains("shard=\"0\""))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// The `/metrics` address of an engine started with `--metrics-listen 127.0.0.1:0`.
fn metrics_addr(engine: &LineProc) -> String {
    let metrics = engine.said_after("metrics: ");
    metrics.trim_start_matches("http://").trim_end_matches("/metrics").to_string()
}

/// Publisher A sends 100 and its end of stream, B 50; once the shard read those (151 frames,
/// or the engine is gone: it ended there), B sends 50 more and its end. Each through its own
/// socket (`a`, `b`), or both through one.
fn two_streams_across_the_first_end(a: &zmq::Socket, b: &zmq::Socket, metrics: &str) {
    for seq in 1..=100 {
        a.send(data_frame(1, 11, seq), 0).expect("send");
    }
    for seq in 1..=50 {
        b.send(data_frame(2, 22, seq), 0).expect("send");
    }
    a.send(end_frame(1, 11, 100, 100), 0).expect("send eos");
    wait_until(Duration::from_secs(30), "the shard to read the first end of stream", || {
        shard0_received(metrics).is_none_or(|n| n >= 151)
    });
    for seq in 51..=100 {
        b.send(data_frame(2, 22, seq), 0).expect("send");
    }
    b.send(end_frame(2, 22, 100, 100), 0).expect("send eos");
}

/// The engine's report once both streams of [`two_streams_across_the_first_end`] ended: every
/// message of both counted, and the engine ended on the second end of stream.
fn both_streams_counted(engine: LineProc) -> serde_json::Value {
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "lost")), (200, 200, 0), "{r}");
    assert_eq!((u(&r, "unended_sessions"), u(&r, "beyond_sent")), (0, 0), "{r}");
    assert_eq!(r["interrupted"], false, "it ended on the second end of stream: {r}");
    r
}

/// Two publishers connect to one bound shard; the first ends its stream while the second still
/// sends. Before, the shard ended at the first end of stream (one per bound endpoint): the
/// second publisher's messages were in no count (`sent 100, delivered 150, lost 0`). Now a
/// shard that binds waits for the end of stream of every session it saw and of every publisher
/// connected, and the counts add up.
#[test]
fn a_bound_shard_waits_for_the_end_of_stream_of_every_publisher_connected_to_it() {
    let (engine, ep) = bound_engine(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics_addr(&engine);
    let ctx = zmq::Context::new();
    let (a, b) = (connected_publisher(&ctx, &ep), connected_publisher(&ctx, &ep));
    two_streams_across_the_first_end(&a, &b, &metrics);
    let r = both_streams_counted(engine);
    assert_eq!(u(&r["shards"][0], "publisher_connects"), 2, "{r}");
}

/// A shard that connects to a proxy's backend (here an XPUB the test holds, as `mdsub lvc`'s
/// is) gets two publishers through its one endpoint; the first ends its stream while the
/// second still sends. Before, a connected shard ended at one end of stream per endpoint:
/// `sent 150` (the second counted unended by its last arrived sequence), `delivered 150`, and
/// the second's last 50 in no count. Now, with no `--expect-eos`, it waits for the end of
/// stream of every session it saw, as a bound shard does.
#[test]
fn a_connected_shard_behind_a_proxy_waits_for_every_publisher_session_it_saw() {
    let ctx = zmq::Context::new();
    let (backend, engine) = engine_behind_a_backend(&ctx, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics_addr(&engine);
    two_streams_across_the_first_end(&backend, &backend, &metrics);
    both_streams_counted(engine);

    // With `--expect-eos 1` one end of stream is the end, as it says: the second publisher,
    // still sending then, counts by its last arrived sequence (a floor).
    let (backend, engine) = engine_behind_a_backend(&ctx, &["--expect-eos", "1"]);
    for seq in 1..=10 {
        backend.send(data_frame(1, 11, seq), 0).expect("send");
        backend.send(data_frame(2, 22, seq), 0).expect("send");
    }
    backend.send(end_frame(1, 11, 10, 10), 0).expect("send eos");
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "unended_sessions")), (20, 20, 1), "{r}");
}

/// A proxy's backend stand-in (an XPUB the test holds, bound to an ephemeral port) and an engine
/// (`--json`, and `extra`) connected to it, once the engine's subscription reached it (20 s).
fn engine_behind_a_backend(ctx: &zmq::Context, extra: &[&str]) -> (zmq::Socket, LineProc) {
    let backend = watching_xpub(ctx);
    backend.set_sndhwm(0).expect("sndhwm");
    backend.set_rcvtimeo(20_000).expect("rcvtimeo");
    backend.bind("tcp://127.0.0.1:*").expect("bind");
    let ep = backend.get_last_endpoint().expect("endpoint").expect("utf8");
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "60s", "--endpoint", &ep]).args(extra);
    let engine = LineProc::spawn_with_stderr("engine", &mut cmd);
    assert_eq!(backend.recv_bytes(0).expect("the engine's subscription within 20 s").first(), Some(&1));
    (backend, engine)
}

/// A publisher's end of stream says 5 were sent, and 10 arrived. Before, `sent 5, delivered 10,
/// lost 0`: the excess was hidden by a saturating subtraction. Now loss is unknown, and why is
/// said: on stderr, in `loss_basis` and as a count (`beyond_sent`).
#[test]
fn an_end_of_stream_claiming_fewer_than_arrived_leaves_loss_unknown_and_says_so() {
    let mut frames: Vec<Vec<u8>> = (1..=10).map(|seq| data_frame(3, 33, seq)).collect();
    frames.push(end_frame(3, 33, 10, 5));
    let (r, err) = one_publisher_run(&frames);
    assert_eq!((u(&r, "sent"), u(&r, "delivered")), (5, 10), "{r}");
    assert!(r["lost"].is_null(), "not a confident 0: {r}");
    assert_eq!(u(&r, "beyond_sent"), 5, "{r}");
    let basis = r["loss_basis"].as_str().unwrap_or_default();
    assert!(basis.starts_with("unknown") && basis.contains("count is wrong"), "{basis}");
    assert_eq!(u(&r["shards"][0], "beyond_sent"), 5, "{r}");
    assert!(r["shards"][0]["lost"].is_null(), "{r}");
    let said = err.iter().find(|l| l.contains("ends of stream say 5 message(s) were sent, but 10 arrived"));
    assert!(said.is_some_and(|l| l.starts_with("shard0: ")), "{err:?}");
}

/// Sequences 1 2 3 5 4 6: 4 came late and was dropped for order. Before, it was counted lost
/// (`lost 1`, `reordered dropped: 1`); it arrived, so it is not lost.
#[test]
fn a_reordered_message_arrived_and_is_not_lost() {
    let mut frames: Vec<Vec<u8>> = [1, 2, 3, 5, 4, 6].iter().map(|&seq| data_frame(7, 1, seq)).collect();
    frames.push(end_frame(7, 1, 6, 6));
    let (r, _) = one_publisher_run(&frames);
    assert_eq!((u(&r, "sent"), u(&r, "delivered"), u(&r, "reordered")), (6, 5, 1), "{r}");
    assert_eq!((u(&r, "lost"), u(&r, "gaps")), (0, 0), "{r}");
    assert_eq!(u(&r, "beyond_sent"), 0, "{r}");
    assert_eq!(u(&r["shards"][0], "lost"), 0, "{r}");
}

/// Four messages at 5 msg/s span three intervals, 0.6 s: the engine's rate is 5 msg/s. Before,
/// it divided the four messages by that span (6.7 msg/s; `--rate 1 --count 3` gave 1.5).
#[test]
fn the_engines_rate_counts_the_intervals_between_its_messages() {
    let (replay, eps) = start_replay("replay", 1, &["--count", "4", "--rate", "5"]);
    let engine = engine_json(&[&eps[0]], &[]);
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "engine failed: {out}");
    let r = json(&out);
    assert_eq!(u(&r, "delivered"), 4, "{r}");
    let rate = r["msgs_per_sec"].as_f64().unwrap_or_default();
    assert!((4.5..5.5).contains(&rate), "5 msg/s, not 4 messages / 3 intervals' time: {rate}");
    let (status, _) = replay.finish(Duration::from_secs(30));
    assert!(status.success());
}
