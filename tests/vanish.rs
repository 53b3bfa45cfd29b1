//! A host that vanishes without a close (powered off, cable pulled), proved on real network
//! paths: two network namespaces joined by veth pairs (tools/testbed.sh), and, mid-stream,
//! nftables drops every packet into and out of one of them but on its loopback
//! ([`Testbed::vanish`]): its peers hear nothing more, no FIN and no RST, and what they send is
//! never acknowledged. tests/faults.rs has the same faults from an in-process black hole relay;
//! here the kernel's TCP sees them as on a real network. Needs root (CI runs as root), `ip` and
//! `nft`; without them each test says why it skipped.

mod common;

use std::time::{Duration, Instant};

use common::testbed::{have, skip, Testbed, FEED, SUB_A};
use common::{json, rest_lines, wait_line, wait_until, LineProc, Proc};
use mdsub::clone::client::{Client, ClientConfig};

/// A testbed with `nft` to make a host vanish, or why not.
fn bed(test: &str) -> Option<Testbed> {
    if !have("nft") {
        skip(test, "needs `nft` (Debian package nftables; tools/ci-setup.sh installs it)");
        return None;
    }
    Testbed::up(test)
}

/// `mdsub engine --json` in `ns` on `endpoint` or a profile (`args`), its stdout and stderr as
/// lines; 60 s at most.
fn engine_in(tb: &Testbed, ns: &str, name: &str, args: &[&str]) -> LineProc {
    let mut all = vec!["engine", "--json", "--max-duration", "60s"];
    all.extend_from_slice(args);
    LineProc::spawn_with_stderr(name, &mut tb.mdsub(ns, &all))
}

/// Wait until the subscriber namespace received `bytes` more on nicA: the stream flows.
fn traffic_on_path_a(tb: &Testbed, bytes: u64) {
    let (a0, _) = tb.rx_bytes();
    wait_until(Duration::from_secs(30), "traffic on nicA", || tb.rx_bytes().0 > a0 + bytes);
}

/// An exited `--json` process's report, and every stderr line it wrote.
fn report_of(p: LineProc, deadline: Duration) -> (serde_json::Value, Vec<String>) {
    let err = p.stderr.as_ref().map(|rx| rest_lines(rx, deadline)).unwrap_or_default();
    let name = p.proc.name.clone();
    let (status, out) = p.finish(deadline);
    assert!(status.success(), "{name} failed ({status}): {err:?}");
    (json(&out), err)
}

#[test]
fn a_subscribers_host_vanishing_mid_replay_is_left_named_and_the_other_subscriber_ends_at_once() {
    // Before: the vanished engine's connection stayed open on the replay's side, sent data
    // unacknowledged, for the kernel's ~15 minutes of retransmissions; its pipe filled and the
    // lossless replay waited on it, and so did every other subscriber: the live engine heard
    // nothing more (its snail croaked after 5 s of silence) and no end of stream came (still so
    // by default). With --peer-timeout the replay ends a connection whose data stays
    // unacknowledged that long and says which subscriber left; its end of stream then waits for the subscribers still there (the docs'
    // rule: those holding the wait when it goes out), so the live engine ends at once.
    let test = "a_subscribers_host_vanishing_mid_replay_is_left_named_and_the_other_subscriber_ends_at_once";
    let Some(tb) = bed(test) else { return };
    let n = 60_000u64;
    let port = 5701;
    let ep = format!("tcp://{FEED}:{port}");
    // 6 s at 10k msg/s, lossless, a small HWM so the dead pipe fills at once; a long --eos-wait,
    // so waiting for the vanished subscriber would show.
    let replay = tb.replay(
        port,
        &[
            "--count",
            "60000",
            "--rate",
            "10k",
            "--subscribers",
            "2",
            "--sndhwm-msgs",
            "1000",
            "--peer-timeout",
            "2s",
            "--eos-wait",
            "20s",
        ],
    );
    // The engine that stays: on the replay's host (over its loopback); the one that vanishes:
    // across path A. The silence while the replay is held is the fault itself: the snail warns.
    let stays = engine_in(&tb, &tb.pub_ns.clone(), "engine (stays)", &["--endpoint", &ep, "--snail", "warn"]);
    let mut gone = engine_in(&tb, &tb.sub_ns.clone(), "engine (vanishes)", &["--endpoint", &ep]);
    traffic_on_path_a(&tb, 300_000);
    tb.vanish(&tb.sub_ns);
    let vanished = Instant::now();
    let (r, said) = report_of(replay, Duration::from_secs(40));
    let took = vanished.elapsed();
    eprintln!("the replay ended {took:?} after the engine's host vanished: {r}\n{said:?}");
    assert!(tb.vanished_packets(&tb.sub_ns) > 0, "the vanished host dropped nothing");
    assert_eq!(r["sent_total"], n, "{r}");
    // Held by the dead pipe until the kernel gave up on its connection, not for ever.
    let blocked = r["blocked_s_per_shard"][0].as_f64().expect("blocked_s");
    assert!(blocked > 0.5 && blocked < 10.0, "held {blocked} s by the dead subscriber: {r}");
    // Gone before the end of stream went out: not waited for, and nothing unconfirmed.
    assert!(r.get("eos_unconfirmed").is_none(), "{r}");
    assert!(r["eos_wait_s"].as_f64().is_some_and(|w| w < 5.0), "no wait for the vanished one: {r}");
    // Said once, by where it subscribed from and its id.
    let left: Vec<&String> = said.iter().filter(|l| l.contains("a subscriber left")).collect();
    assert_eq!(left.len(), 1, "{said:?}");
    assert!(left[0].contains(&format!("(1 remain): {SUB_A} (subscriber ")), "{}", left[0]);
    let (s, err) = report_of(stays, Duration::from_secs(30));
    let s0 = &s["shards"][0];
    assert_eq!((s0["msgs"].as_u64(), s0["lost"].as_u64()), (Some(n), Some(0)), "lossless, all of it: {s} {err:?}");
    assert_eq!(s["time_limit"], false, "ended by its end of stream: {s}");
    gone.proc.signal(9);
    gone.proc.wait_exit(Duration::from_secs(10));
}

#[test]
fn a_subscriber_vanished_as_the_end_of_stream_goes_is_waited_for_up_to_eos_wait_and_named_once() {
    // Before: `not confirmed by 1 subscriber(s)`, not which. The vanished engine's connection
    // still stands on the replay's side when the end of stream goes out (its --peer-timeout is
    // far off): it holds the wait, which the docs bound by --eos-wait, and the replay names it.
    let test = "a_subscriber_vanished_as_the_end_of_stream_goes_is_waited_for_up_to_eos_wait_and_named_once";
    let Some(tb) = bed(test) else { return };
    let port = 5741;
    let ep = format!("tcp://{FEED}:{port}");
    let replay = tb.replay(
        port,
        &["--count", "30000", "--rate", "10k", "--subscribers", "2", "--peer-timeout", "60s", "--eos-wait", "2s"],
    );
    let stays = engine_in(&tb, &tb.pub_ns.clone(), "engine (stays)", &["--endpoint", &ep]);
    let mut gone = engine_in(&tb, &tb.sub_ns.clone(), "engine (vanishes)", &["--endpoint", &ep]);
    traffic_on_path_a(&tb, 300_000);
    tb.vanish(&tb.sub_ns);
    let (r, said) = report_of(replay, Duration::from_secs(30));
    eprintln!("{r}\n{said:?}");
    let waited = r["eos_wait_s"].as_f64().expect("eos_wait_s");
    assert!((2.0..4.0).contains(&waited), "the whole --eos-wait, and no more: {r}");
    let unconfirmed = &r["eos_unconfirmed"][0];
    assert_eq!(unconfirmed["waiting"], 1, "{r}");
    let named = unconfirmed["subscribers"][0].as_str().expect("the subscriber named");
    assert!(named.starts_with(&format!("{SUB_A} (subscriber ")), "{r}");
    let lines: Vec<&String> = said.iter().filter(|l| l.contains("not confirmed")).collect();
    assert_eq!(lines.len(), 1, "said once: {said:?}");
    assert!(lines[0].contains(&format!("not confirmed by 1 subscriber(s) that end at one ({named})")), "{}", lines[0]);
    let (s, err) = report_of(stays, Duration::from_secs(30));
    assert_eq!((s["shards"][0]["msgs"].as_u64(), s["time_limit"].as_bool()), (Some(30_000), Some(false)), "{err:?}");
    gone.proc.signal(9);
    gone.proc.wait_exit(Duration::from_secs(10));
}

/// Is a line shard 0's link to the feed's `port`, then `what` (`lost`, `up again`)? The shard
/// connects from nicA's address: `shard0: link tcp://10.91.1.2:0;10.91.9.1:PORT lost …`.
fn shard0_link(port: u16, what: &'static str) -> impl Fn(&str) -> bool {
    move |l| l.starts_with("shard0: link ") && l.contains(&format!("{FEED}:{port} {what}"))
}

#[test]
fn a_publishers_host_vanishing_is_said_lost_within_the_keepalive_and_back_when_it_returns() {
    let test = "a_publishers_host_vanishing_is_said_lost_within_the_keepalive_and_back_when_it_returns";
    let Some(tb) = bed(test) else { return };
    let n = 80_000u64;
    let port = 5711;
    // 8 s at 10k msg/s, lossy: the publisher keeps publishing through the outage, and what its
    // subscriber missed meanwhile is lost, counted by sequence.
    let replay = tb.replay(port, &["--count", "80000", "--rate", "10k", "--lossy", "--sndhwm-msgs", "1000"]);
    // The engine's dead-path detector: TCP keepalive, 1 s idle then 2 probes 1 s apart (3 s).
    let keepalive = "[keepalive]\nidle_s = 1\ninterval_s = 1\nprobes = 2\n";
    let profile = tb.profile(&[(port, "nicA")], &format!("[snail]\npolicy = \"warn\"\n{keepalive}"));
    let engine = engine_in(&tb, &tb.sub_ns.clone(), "engine", &["--profile", &profile]);
    traffic_on_path_a(&tb, 300_000);
    tb.vanish(&tb.pub_ns);
    let vanished = Instant::now();
    let err = engine.stderr.as_ref().expect("stderr piped");
    let link = |what: &'static str| shard0_link(port, what);
    let lost = wait_line(err, Duration::from_secs(15), "the link lost", link("lost"));
    let lost_after = vanished.elapsed();
    eprintln!("{lost_after:?} after the publisher's host vanished: {lost}");
    assert!(lost.contains("lost (disconnected)"), "{lost}");
    // The keepalive's 3 s, less nothing (its idle counts from the last packet, at the vanishing),
    // plus the watch's grace and a loaded machine's slack.
    assert!(lost_after >= Duration::from_millis(2500), "before the keepalive could tell: {lost_after:?}");
    assert!(lost_after <= Duration::from_millis(5500), "later than the keepalive's 3 s: {lost_after:?}");
    tb.reappear(&tb.pub_ns);
    let back = wait_line(err, Duration::from_secs(30), "the link back", link("up again"));
    eprintln!("{back}");
    assert!(back.contains("(reconnect 1)"), "{back}");
    let (r, said) = report_of(engine, Duration::from_secs(60));
    let (rs, _) = report_of(replay, Duration::from_secs(30));
    let s0 = &r["shards"][0];
    let (msgs, lost) = (s0["msgs"].as_u64().expect("msgs"), s0["lost"].as_u64().expect("lost is known"));
    eprintln!("{lost} of {n} lost across the outage, in {} gap(s)", s0["gaps"]);
    assert_eq!((s0["sent"].as_u64(), rs["sent_total"].as_u64()), (Some(n), Some(n)), "{r}");
    assert!(lost > 0, "3 s and more at 10k msg/s cannot all be in the pipes: {r}");
    assert_eq!(msgs + lost, n, "every message delivered or counted lost: {r}");
    assert!(s0["gaps"].as_u64().is_some_and(|g| g >= 1), "{r}");
    assert_eq!(r["lost"], lost, "{r}");
    assert_eq!(s0["restarts"], 0, "a vanished host is no publisher restart: {r}");
    let l0 = &s0["links"][0];
    assert_eq!((l0["lost"]["disconnected"].as_u64(), l0["reconnects"].as_u64()), (Some(1), Some(1)), "{l0}");
    assert_eq!(said.iter().filter(|l| link("lost")(l.as_str())).count(), 0, "said once: {said:?}");
}

#[test]
fn a_clone_client_fails_over_within_its_silence_when_the_primarys_host_vanishes() {
    let test = "a_clone_client_fails_over_within_its_silence_when_the_primarys_host_vanishes";
    let Some(tb) = bed(test) else { return };
    // The primary on the publisher namespace's host; the backup and the client on the other.
    let (prim_ep, back_ep) = (format!("tcp://{FEED}:5721"), format!("tcp://{SUB_A}:5731"));
    let quick = ["--quiet", "--heartbeat-interval", "200ms", "--hugz-interval", "200ms"];
    let server = |ns: &str, name: &str, ep: &str, role: &str, peer: &str| {
        let mut args = vec!["clone-server", "--endpoint", ep, role, "--peer", peer];
        args.extend_from_slice(&quick);
        Proc::spawn(name, &mut tb.mdsub(ns, &args))
    };
    let _prim = server(&tb.pub_ns, "primary", &prim_ep, "--primary", &back_ep);
    let _back = server(&tb.sub_ns, "backup", &back_ep, "--backup", &prim_ep);
    let silence_ms = 600;
    // Everything the client does is done from the backup's host.
    tb.in_ns(&tb.sub_ns, || {
        let state = |ep: &str| {
            let reply = mdsub::clone::server_status(ep, Duration::from_millis(300)).unwrap_or_default();
            reply.lines().find_map(|l| l.strip_prefix("state=").map(str::to_string)).unwrap_or_default()
        };
        wait_until(Duration::from_secs(10), "the primary active", || state(&prim_ep) == "active");
        wait_until(Duration::from_secs(10), "the backup passive", || state(&back_ep) == "passive");
        let cfg = ClientConfig { servers: vec![prim_ep.clone(), back_ep.clone()], silence_ms, ..Default::default() };
        let c = Client::start(cfg).expect("client starts");
        c.wait_synced(Duration::from_secs(10)).expect("synced");
        let u = c.set("/v/before", "1", None).expect("set");
        c.wait_acked(u, Duration::from_secs(10)).expect("acknowledged by the primary");
        tb.vanish(&tb.pub_ns);
        let vanished = Instant::now();
        wait_until(Duration::from_secs(10), "the client to fail over", || c.status().expect("status").failovers >= 1);
        let after = vanished.elapsed();
        eprintln!("failed over {after:?} after the primary's host vanished (silence {silence_ms} ms)");
        // Its silence from the last HUGZ, heard at most one HUGZ interval before the vanishing;
        // and a loaded machine's slack.
        assert!(after <= Duration::from_millis(silence_ms + 1000), "{after:?}");
        let u = c.set("/v/after", "2", None).expect("set");
        c.wait_acked(u, Duration::from_secs(10)).expect("acknowledged after the failover");
        let s = c.status().expect("status");
        assert_eq!(s.server.as_deref(), Some(back_ep.as_str()), "served by the backup: {s:?}");
        assert_eq!(s.failovers, 1, "{s:?}");
        assert_eq!(state(&back_ep), "active");
        assert_eq!(c.dump(Vec::new()).expect("dump").len(), 2, "both sets held");
    });
}
