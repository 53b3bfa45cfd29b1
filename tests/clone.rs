//! Clone stack (CHP + Binary Star): real server processes, ephemeral ports, deadlines on every
//! wait, processes killed by pid; plus an independent minimal CHP peer written from the spec on
//! the raw `zmq` crate (it does not use mdsub's codec) to prove interop in both directions.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port_block, lines_of, mdsub, run_within, wait_line, wait_until, LineProc, Proc};
use mdsub::clone::client::{AckState, ChangeKind, Client, ClientConfig, ClientError};
use mdsub::clone::kvmsg::Uuid;

fn ep(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

fn server(name: &str, port: u16, extra: &[&str]) -> Proc {
    let mut cmd = mdsub();
    cmd.arg("clone-server").arg("--endpoint").arg(ep(port)).arg("--quiet");
    cmd.args(extra);
    Proc::spawn(name, &mut cmd)
}

/// [`server`] with its stderr lines on a channel (the refusal lines are read from it).
fn server_said(name: &str, port: u16, extra: &[&str]) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let mut cmd = mdsub();
    cmd.arg("clone-server").arg("--endpoint").arg(ep(port)).arg("--quiet").args(extra);
    let mut p = Proc::spawn(name, cmd.stderr(std::process::Stdio::piped()));
    let err = lines_of(p.child.stderr.take().expect("stderr piped"));
    (p, err)
}

/// A standalone server on a fresh port block: its base port and process.
fn standalone() -> (u16, Proc) {
    let p = free_port_block(3);
    (p, server("server", p, &[]))
}

fn primary(port: u16, peer: u16, extra: &[&str]) -> Proc {
    let peer = ep(peer);
    let mut args = vec!["--primary", "--peer", peer.as_str()];
    args.extend_from_slice(extra);
    server("primary", port, &args)
}

fn backup(port: u16, peer: u16, extra: &[&str]) -> Proc {
    let peer = ep(peer);
    let mut args = vec!["--backup", "--peer", peer.as_str()];
    args.extend_from_slice(extra);
    server("backup", port, &args)
}

/// The server's STATUS? reply as a map, or an empty map when it does not answer.
fn status(port: u16) -> BTreeMap<String, String> {
    match mdsub::clone::server_status(&ep(port), Duration::from_millis(300)) {
        Ok(text) => {
            text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
        }
        Err(_) => BTreeMap::new(),
    }
}

/// A Binary Star pair on fresh ports, up and settled: the primary ACTIVE and
/// the backup PASSIVE. Returns `(primary port, primary, backup port, backup)`.
fn settled_pair() -> (u16, Proc, u16, Proc) {
    let pp = free_port_block(4);
    let bp = free_port_block(4);
    let prim = primary(pp, bp, &[]);
    let back = backup(bp, pp, &[]);
    wait_settled(pp, bp);
    (pp, prim, bp, back)
}

/// The primary on `pp` active and the backup on `bp` passive, within 10 s each.
fn wait_settled(pp: u16, bp: u16) {
    wait_state(pp, "active", Duration::from_secs(10));
    wait_state(bp, "passive", Duration::from_secs(10));
}

fn wait_state(port: u16, state: &str, deadline: Duration) {
    wait_until(deadline, &format!("server :{port} to be {state}"), || {
        status(port).get("state").map(String::as_str) == Some(state)
    });
}

fn client(servers: &[u16], subtree: &str) -> Client {
    Client::start(ClientConfig {
        servers: servers.iter().map(|p| ep(*p)).collect(),
        subtree: subtree.into(),
        ..ClientConfig::default()
    })
    .expect("client starts")
}

/// A client of `servers` for `subtree` that has its snapshot (5 s at most).
fn synced(servers: &[u16], subtree: &str) -> Client {
    let c = client(servers, subtree);
    c.wait_synced(Duration::from_secs(5)).expect("client synced");
    c
}

/// Wait until `last` and every set before it are acknowledged (5 s each at
/// most): acknowledging the last set does not acknowledge the others (a PUB
/// drops what it sends before the collector's subscription arrives; the client
/// re-sends those).
fn wait_all_acked(c: &Client, last: Uuid) {
    c.wait_acked(last, Duration::from_secs(5)).expect("acked");
    wait_until(Duration::from_secs(5), "every set to be acknowledged", || c.status().expect("status").unacked == 0);
}

/// Set `{prefix}0` … `{prefix}{n-1}` to `value` and wait until every set is acknowledged.
fn set_all_acked(c: &Client, prefix: &str, n: usize, value: &str) {
    let last = (0..n).map(|i| c.set(format!("{prefix}{i}"), value, None).expect("set")).last();
    wait_all_acked(c, last.expect("n > 0"));
}

fn dump(c: &Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    c.dump(Vec::new()).expect("dump")
}

/// A fresh client's view of one server (a snapshot).
fn snapshot_of(port: u16) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = synced(&[port], "");
    dump(&c)
}

#[test]
fn late_joiner_converges_and_sequences_strictly_increase() {
    let (p, _s) = standalone();
    let a = synced(&[p], "");
    let seen = a.watch("/").expect("watch");
    let mut last = None;
    for i in 0..200 {
        last = Some(a.set(format!("/k/{i:03}"), format!("v{i}"), None).expect("set"));
    }
    wait_all_acked(&a, last.expect("set"));
    let b = synced(&[p], "");
    assert_eq!(dump(&b).len(), 200, "snapshot carries every key");
    for i in 0..50 {
        last = Some(a.set(format!("/k/{i:03}"), format!("w{i}"), None).expect("set"));
    }
    a.del("/k/199").expect("del");
    a.wait_acked(last.expect("set"), Duration::from_secs(5)).expect("acked");
    wait_until(Duration::from_secs(5), "late joiner to converge with the writer", || dump(&a) == dump(&b));
    assert_eq!(b.get("/k/000").expect("get"), Some(b"w0".to_vec()));
    assert_eq!(b.get("/k/199").expect("get"), None);
    // KVPUB sequences as the writer saw them: strictly increasing, one per update.
    let live: Vec<u64> = seen.try_iter().filter(|c| c.kind == ChangeKind::Live).map(|c| c.sequence).collect();
    assert!(live.len() >= 250, "saw {} live updates", live.len());
    assert!(live.windows(2).all(|w| w[0] < w[1]), "sequences strictly increase");
}

#[test]
fn subtrees_are_isolated() {
    let (p, _s) = standalone();
    let writer = synced(&[p], "");
    let md = synced(&[p], "/md/");
    let changes = md.watch("").expect("watch");
    writer.set("/md/status/e1", "up", None).expect("set");
    writer.set("/other/x", "1", None).expect("set");
    let last = writer.set("/md/status/e2", "up", None).expect("set");
    writer.wait_acked(last, Duration::from_secs(5)).expect("acked");
    wait_until(Duration::from_secs(5), "subtree client to see both /md/ keys", || dump(&md).len() == 2);
    assert!(dump(&md).iter().all(|(k, _)| k.starts_with(b"/md/")));
    assert!(changes.try_iter().all(|c| c.key.starts_with(b"/md/")), "watch only sees the subtree");
    // A snapshot of a subtree only carries the subtree.
    let late = synced(&[p], "/other/");
    assert_eq!(dump(&late), vec![(b"/other/x".to_vec(), b"1".to_vec())]);
}

#[test]
fn ttl_expiry_deletes_on_every_client() {
    let (p, _s) = standalone();
    let a = synced(&[p], "");
    let b = synced(&[p], "");
    let deletes = b.watch("/tmp/").expect("watch");
    let u = a.set("/tmp/session", "alive", Some(1)).expect("set");
    a.set("/keep", "1", None).expect("set");
    a.wait_acked(u, Duration::from_secs(5)).expect("acked");
    wait_until(Duration::from_secs(3), "b to see the ephemeral key", || b.get("/tmp/session").ok().flatten().is_some());
    let t0 = Instant::now();
    wait_until(Duration::from_secs(4), "the ephemeral key to expire on both clients", || {
        a.get("/tmp/session").ok().flatten().is_none() && b.get("/tmp/session").ok().flatten().is_none()
    });
    assert!(t0.elapsed() < Duration::from_millis(2500));
    assert!(deletes.try_iter().any(|c| c.value.is_none() && c.kind == ChangeKind::Live));
    assert_eq!(a.get("/keep").expect("get"), Some(b"1".to_vec()));
    assert_eq!(status(p).get("expired").map(String::as_str), Some("1"));
}

#[test]
fn kill_active_while_clients_set_every_client_fails_over_and_all_converge() {
    let (pp, mut prim, bp, _back) = settled_pair();
    let clients: Vec<Arc<Client>> = (0..3).map(|_| Arc::new(client(&[pp, bp], ""))).collect();
    for c in &clients {
        c.wait_synced(Duration::from_secs(5)).expect("synced");
    }
    let running = Arc::new(AtomicBool::new(true));
    let setters: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(ci, c)| {
            let c = Arc::clone(c);
            let running = Arc::clone(&running);
            std::thread::spawn(move || {
                let mut n = 0u32;
                while running.load(Ordering::Relaxed) {
                    c.set(format!("/c{ci}/{n:05}"), format!("{ci}-{n}"), None).expect("set");
                    n += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                n
            })
        })
        .collect();
    let live = |c: &Client| c.status().expect("status").live_updates;
    wait_until(Duration::from_secs(10), "every client to see its first sets published", || {
        clients.iter().all(|c| live(c) >= 50)
    });
    prim.signal(9);
    prim.wait_exit(Duration::from_secs(5));
    let killed_at = Instant::now();
    // Keep setting through the failover, and a while after it.
    wait_until(Duration::from_secs(15), "every client to fail over while setting", || {
        clients.iter().all(|c| c.status().expect("status").failovers >= 1)
    });
    let after: Vec<u64> = clients.iter().map(|c| live(c)).collect();
    wait_until(Duration::from_secs(10), "sets to be published by the new active server", || {
        clients.iter().zip(&after).all(|(c, n)| c.status().expect("status").synced && live(c) >= n + 50)
    });
    running.store(false, Ordering::Relaxed);
    let counts: Vec<u32> = setters.into_iter().map(|h| h.join().expect("setter")).collect();
    wait_state(bp, "active", Duration::from_secs(5));
    let expected: usize = counts.iter().map(|n| *n as usize).sum();
    wait_until(Duration::from_secs(15), "every client to fail over and converge", || {
        clients.iter().all(|c| {
            let s = c.status().expect("status");
            s.synced && s.failovers >= 1 && s.unacked == 0 && s.keys == expected
        })
    });
    let reference = dump(&clients[0]);
    for c in &clients[1..] {
        assert_eq!(dump(c), reference, "clients hold identical maps");
    }
    assert_eq!(snapshot_of(bp), reference, "the surviving server holds the same map");
    for (ci, n) in counts.iter().enumerate() {
        for i in 0..*n {
            let k = format!("/c{ci}/{i:05}").into_bytes();
            let v = format!("{ci}-{i}").into_bytes();
            assert!(reference.binary_search(&(k, v)).is_ok(), "update /c{ci}/{i:05} survived");
        }
    }
    eprintln!("failover test: {expected} updates, converged {:?} after the kill", killed_at.elapsed());
}

#[test]
fn restarted_primary_rejoins_as_passive_and_can_take_over_again() {
    let (pp, mut prim, bp, mut back) = settled_pair();
    let c = synced(&[pp, bp], "");
    set_all_acked(&c, "/r/", 20, "x");
    prim.signal(9);
    prim.wait_exit(Duration::from_secs(5));
    // The client notices the silence, votes for the backup, which takes over.
    wait_state(bp, "active", Duration::from_secs(8));
    let u = c.set("/r/after", "y", None).expect("set");
    c.wait_acked(u, Duration::from_secs(8)).expect("acked by the backup");
    let _prim2 = primary(pp, bp, &[]);
    wait_state(pp, "passive", Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "the rejoined primary to hold the map", || {
        status(pp).get("keys").map(String::as_str) == Some("21")
    });
    let u = c.set("/r/late", "z", None).expect("set");
    c.wait_acked(u, Duration::from_secs(5)).expect("acked");
    wait_until(Duration::from_secs(5), "the passive primary to follow live updates", || {
        status(pp).get("keys").map(String::as_str) == Some("22")
    });
    // Now the backup dies and the primary takes over again, with the whole map.
    back.signal(9);
    back.wait_exit(Duration::from_secs(5));
    wait_state(pp, "active", Duration::from_secs(8));
    assert_eq!(snapshot_of(pp).len(), 22);
}

#[test]
fn data_dir_keeps_the_map_across_a_restart_of_both_servers() {
    let dir = common::temp_dir("clone-test");
    let (dp, db) = (dir.join("p"), dir.join("b"));
    let (dp, db) = (dp.to_str().expect("utf8"), db.to_str().expect("utf8"));
    let pp = free_port_block(4);
    let bp = free_port_block(4);
    let expected = {
        let mut prim = primary(pp, bp, &["--data-dir", dp]);
        let mut back = backup(bp, pp, &["--data-dir", db]);
        wait_settled(pp, bp);
        let c = synced(&[pp, bp], "");
        for i in 0..100 {
            c.set(format!("/d/{i:03}"), format!("{i}"), None).expect("set");
        }
        c.del("/d/050").expect("del");
        let u = c.set("/d/000", "changed", None).expect("set");
        wait_all_acked(&c, u);
        wait_until(Duration::from_secs(5), "backup to replicate", || {
            status(bp).get("keys").map(String::as_str) == Some("99")
        });
        let expected = dump(&c);
        // One stops cleanly, the other is killed.
        prim.signal(15);
        prim.wait_exit(Duration::from_secs(5));
        back.signal(9);
        back.wait_exit(Duration::from_secs(5));
        expected
    };
    assert_eq!(expected.len(), 99);
    let _prim = primary(pp, bp, &["--data-dir", dp]);
    let _back = backup(bp, pp, &["--data-dir", db]);
    wait_state(pp, "active", Duration::from_secs(10));
    assert_eq!(snapshot_of(pp), expected, "primary recovered the map");
    wait_state(bp, "passive", Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "backup to hold the map", || {
        status(bp).get("keys").map(String::as_str) == Some("99")
    });
}

#[test]
fn malformed_input_is_counted_and_answered_with_nothing() {
    let p = free_port_block(3);
    let (_s, said) = server_said("server", p, &["--max-key-bytes", "16", "--max-value-bytes", "64"]);
    let ctx = zmq::Context::new();
    let req = ctx.socket(zmq::DEALER).expect("dealer");
    req.set_linger(0).expect("linger");
    req.connect(&format!("tcp://127.0.0.1:{p}")).expect("connect");
    req.send_multipart([&b"GIMME"[..], b"x"], 0).expect("send");
    req.send_multipart([&b"ICANHAZ?"[..], b"a", b"b"], 0).expect("send");
    let coll = raw_collector(&ctx, p);
    wait_until(Duration::from_secs(5), "malformed requests to be counted", || {
        status(p).get("malformed_requests").map(String::as_str) == Some("2")
    });
    assert_eq!(req.poll(zmq::POLLIN, 200).expect("poll"), 0, "no reply to garbage");
    let seq = 0u64.to_be_bytes();
    let bad: Vec<Vec<Vec<u8>>> = vec![
        vec![b"/k".to_vec()],                                                              // one frame
        vec![b"/k".to_vec(), b"123".to_vec(), vec![], vec![], b"v".to_vec()],              // short sequence
        vec![b"/k".to_vec(), seq.to_vec(), b"xyz".to_vec(), vec![], b"v".to_vec()],        // bad uuid
        vec![b"/k".to_vec(), seq.to_vec(), vec![], b"junk".to_vec(), b"v".to_vec()],       // bad props
        vec![vec![b'k'; 17], seq.to_vec(), vec![], vec![], b"v".to_vec()],                 // key too long
        vec![b"/k".to_vec(), seq.to_vec(), vec![], vec![], vec![b'v'; 65]],                // value too long
        vec![b"/k".to_vec(), seq.to_vec(), vec![], b"ttl=soon\n".to_vec(), b"v".to_vec()], // bad ttl
    ];
    wait_until(Duration::from_secs(5), "malformed updates to be counted", || {
        for m in &bad {
            coll.send_multipart(m, 0).expect("send");
        }
        status(p).get("malformed_updates").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) >= 7
    });
    let s = status(p);
    assert_eq!(s.get("keys").map(String::as_str), Some("0"));
    assert_eq!(s.get("state").map(String::as_str), Some("active"), "still serving");
    // Every reason is said on stderr (the first of each at once), even with --quiet, and counted.
    let mut reasons = vec!["malformed_request", "malformed_update", "key_too_long", "value_too_long", "bad_ttl"];
    while !reasons.is_empty() {
        let l = wait_line(&said, Duration::from_secs(5), &format!("refusal lines for {reasons:?}"), |l| {
            l.starts_with("clone-server: standalone: refused (")
        });
        reasons.retain(|r| !l.contains(&format!("refused ({r})")));
    }
    for r in ["malformed_request", "key_too_long", "value_too_long", "bad_ttl"] {
        assert!(s.get(&format!("refused_{r}")).is_some_and(|n| n != "0"), "refused_{r} in STATUS: {s:?}");
    }
}

/// An independent primary written from the guide (Binary Star heartbeats as the state digit,
/// CHP snapshot on a ROUTER) that answers the backup's snapshot request like clonesrv6 does: a
/// client's `ttl` stored as an absolute deadline in ms since the epoch (with `entries` None it
/// takes the request and never answers). Once it has answered one, it publishes `publish` (CHP
/// frames), if given, every 100 ms. It heartbeats ACTIVE until `stop` is set, then goes silent
/// (dies). `served` counts the snapshot requests it took.
fn reference_primary(
    pp: u16,
    bp: u16,
    entries: Option<Vec<Vec<Vec<u8>>>>,
    publish: Option<Vec<Vec<u8>>>,
    served: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let ctx = zmq::Context::new();
        let router = ctx.socket(zmq::ROUTER).expect("router");
        let publisher = ctx.socket(zmq::PUB).expect("pub");
        let collector = ctx.socket(zmq::SUB).expect("sub");
        let statepub = ctx.socket(zmq::PUB).expect("statepub");
        let statesub = ctx.socket(zmq::SUB).expect("statesub");
        for s in [&router, &publisher, &collector, &statepub, &statesub] {
            s.set_linger(0).expect("linger");
        }
        router.bind(&ep(pp)).expect("bind snapshot");
        publisher.bind(&ep(pp + 1)).expect("bind publisher");
        collector.set_subscribe(b"").expect("subscribe");
        collector.bind(&ep(pp + 2)).expect("bind collector");
        statepub.bind(&ep(pp + 3)).expect("bind state");
        statesub.set_subscribe(b"").expect("subscribe");
        statesub.connect(&ep(bp + 3)).expect("connect peer state");
        let mut answered = false;
        let mut last_beat = Instant::now() - Duration::from_secs(1);
        let end = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            if last_beat.elapsed() >= Duration::from_millis(100) {
                statepub.send(&b"3"[..], 0).expect("heartbeat ACTIVE"); // STATE_ACTIVE
                if let (true, Some(m)) = (answered, &publish) {
                    publisher.send_multipart(m, 0).expect("publish");
                }
                last_beat = Instant::now();
            }
            while statesub.recv_bytes(zmq::DONTWAIT).is_ok() {}
            if router.poll(zmq::POLLIN, 20).expect("poll") == 0 {
                continue;
            }
            let f = router.recv_multipart(0).expect("recv");
            if f.len() != 3 || f[1] != b"ICANHAZ?" {
                continue;
            }
            served.fetch_add(1, Ordering::Relaxed);
            let Some(entries) = &entries else { continue };
            answered = true;
            for e in entries {
                let mut m = vec![f[0].clone()];
                m.extend(e.iter().cloned());
                router.send_multipart(m, 0).expect("kvsync");
            }
            let mut m = vec![f[0].clone()];
            m.extend(chp_frames(b"KTHXBAI", 3, b"", b"", &f[2]));
            router.send_multipart(m, 0).expect("kthxbai");
        }
        served.load(Ordering::Relaxed)
    })
}

/// `--quiet` silences progress only: a passive backup whose active peer takes its snapshot
/// request and never answers says so (and asks again), quiet or not. Before, `--quiet` hid it
/// with the progress lines: the backup stayed out of step without a word.
#[test]
fn a_quiet_backup_says_its_active_peer_sent_no_snapshot() {
    let pp = free_port_block(4);
    let bp = free_port_block(4);
    let stop = Arc::new(AtomicBool::new(false));
    let prim = reference_primary(pp, bp, None, None, Arc::default(), stop.clone());
    let peer = ep(pp);
    let (back, said) = server_said("backup", bp, &["--backup", "--peer", &peer, "--heartbeat-interval", "200ms"]);
    // Its request waits 3 s for an answer.
    let l = wait_line(&said, Duration::from_secs(20), "the no-snapshot line", |l| l.contains("no snapshot"));
    let want = "clone-server: passive: behind the active, re-syncing (no_snapshot): the active peer sent no snapshot \
                within 3s, asking again: this server is not in step with it until one comes (the first; more are \
                counted and summarised every 10s)";
    assert_eq!(l, want);
    drop(back);
    stop.store(true, Ordering::Relaxed);
    assert!(prim.join().expect("reference primary") >= 1, "the backup asked for a snapshot");
}

/// `--quiet` silences progress only: a passive backup that finds a gap in its active peer's
/// sequence (it missed updates) says so at once, and re-syncs; repeated gaps are counted and
/// summarised, and at the stop it says how often in all. Before, `--quiet` hid every one.
#[test]
fn a_quiet_backup_says_it_fell_behind_its_active_peer_and_how_often_at_the_stop() {
    let pp = free_port_block(4);
    let bp = free_port_block(4);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU32::new(0));
    // Its snapshot ends at sequence 3; then it publishes sequence 5: 4 never comes.
    let gap = chp_frames(b"/ref/gap", 5, b"", b"", b"v");
    let prim = reference_primary(pp, bp, Some(Vec::new()), Some(gap), served.clone(), stop.clone());
    let peer = ep(pp);
    let (mut back, said) = server_said("backup", bp, &["--backup", "--peer", &peer, "--heartbeat-interval", "200ms"]);
    let l = wait_line(&said, Duration::from_secs(20), "the gap line", |l| l.contains("re-syncing"));
    let want = "clone-server: passive: behind the active, re-syncing (gap): sequence 3 -> 5: the updates between \
                were missed (the first; more are counted and summarised every 10s)";
    assert_eq!(l, want);
    // Each re-sync takes a snapshot and meets the gap again: two more, counted, not said yet.
    wait_until(Duration::from_secs(10), "two more re-syncs", || served.load(Ordering::Relaxed) >= 3);
    // Told to stop, it says how often in all, in the stop's own words: what went unsaid since
    // the last line with the totals, or (a summary every 10 s said it all, on a slow box) the
    // totals alone. A 10 s summary does not stand in for it: before, the test took one for it.
    back.signal(2);
    back.wait_exit(Duration::from_secs(30));
    let end = Instant::now() + Duration::from_secs(10);
    let mut rest = Vec::new();
    while let Ok(l) = said.recv_timeout(end.saturating_duration_since(Instant::now())) {
        rest.push(l); // until its stderr closes
    }
    let head = "clone-server: passive: behind the active, re-syncing";
    let stop_line: Vec<&str> = rest
        .iter()
        .filter_map(|l| {
            let l = l.strip_prefix(head)?;
            l.strip_prefix(" since the last line: ")
                .and_then(|l| l.split_once("(totals: "))
                .map(|(_, t)| t)
                .or(l.strip_prefix(" in all: "))
        })
        .collect();
    assert_eq!(stop_line.len(), 1, "the stop's line, once: {rest:?}");
    let gaps =
        stop_line[0].split([' ', ')']).find_map(|kv| kv.strip_prefix("gap=")).and_then(|n| n.parse::<u64>().ok());
    assert!(gaps.is_some_and(|n| n >= 2), "the total of gaps, at least the first two: {rest:?}");
    drop(back);
    stop.store(true, Ordering::Relaxed);
    prim.join().expect("reference primary");
}

#[test]
fn a_peer_snapshot_entry_in_the_reference_absolute_ttl_form_survives_failover() {
    let pp = free_port_block(4);
    let bp = free_port_block(4);
    let wall_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    let abs = format!("ttl={}\n", wall_ms + 60_000); // clonesrv6: zclock_time() + ttl * 1000
    let entries = vec![
        chp_frames(b"/ref/abs", 1, b"", abs.as_bytes(), b"kept"),
        chp_frames(b"/ref/plain", 2, b"", b"", b"plain"),
        chp_frames(b"/ref/bad", 3, b"", b"ttl=whenever\n", b"lost"),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let prim = reference_primary(pp, bp, Some(entries), None, Arc::default(), stop.clone());
    let peer = ep(pp);
    let (_back, said) = server_said("backup", bp, &["--backup", "--peer", &peer, "--heartbeat-interval", "200ms"]);
    wait_until(Duration::from_secs(10), "the backup to sync from the reference primary", || {
        let s = status(bp);
        s.get("state").map(String::as_str) == Some("passive") && s.get("keys").map(String::as_str) == Some("2")
    });
    let s = status(bp);
    assert_eq!(s.get("peer_entries_refused").map(String::as_str), Some("1"), "{s:?}");
    assert_eq!(s.get("absolute_ttls").map(String::as_str), Some("1"), "{s:?}");
    let l =
        wait_line(&said, Duration::from_secs(5), "the refusal line", |l| l.contains("refused (peer_snapshot_bad_ttl)"));
    assert!(l.contains("/ref/bad") && l.contains("whenever"), "says which key and why: {l}");

    // The primary dies; a client's vote makes the backup take over, and its snapshot still
    // holds the entry, with the time it had left (not gone, not forever).
    stop.store(true, Ordering::Relaxed);
    assert!(prim.join().expect("reference primary") >= 1, "the backup asked for a snapshot");
    let ctx = zmq::Context::new();
    let dealer = ctx.socket(zmq::DEALER).expect("dealer");
    dealer.set_linger(0).expect("linger");
    dealer.connect(&ep(bp)).expect("connect");
    let mut snap = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    'vote: while Instant::now() < end {
        dealer.send_multipart([&b"ICANHAZ?"[..], b"/ref/"], 0).expect("icanhaz");
        while dealer.poll(zmq::POLLIN, 300).expect("poll") > 0 {
            let f = dealer.recv_multipart(0).expect("recv");
            if f[0] == b"KTHXBAI" {
                break 'vote;
            }
            snap.push(f);
        }
    }
    assert_eq!(status(bp).get("state").map(String::as_str), Some("active"), "the backup took over");
    let keys: Vec<&[u8]> = snap.iter().map(|f| f[0].as_slice()).collect();
    assert_eq!(keys, vec![&b"/ref/abs"[..], b"/ref/plain"], "the absolute-ttl entry survived, the bad one was refused");
    let props = String::from_utf8(snap[0][3].clone()).expect("props");
    let ttl: u64 = props.lines().find_map(|l| l.strip_prefix("ttl=")).and_then(|v| v.parse().ok()).expect("a ttl");
    assert!((45..=60).contains(&ttl), "about 60 s left, relative: ttl={ttl}");
}

#[test]
fn clone_client_cli_set_get_del_dump() {
    let (p, _s) = standalone();
    let srv = ep(p);
    let run = |args: &[&str]| {
        let out = mdsub().arg("clone-client").arg("--store").arg(&srv).args(args).output().expect("clone-client runs");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(run(&["set", "/cli/a", "1"]).0, Some(0));
    assert_eq!(run(&["set", "/cli/b", "x=y"]).0, Some(0));
    assert_eq!(run(&["set", "/z", "2"]).0, Some(0));
    assert_eq!(run(&["get", "/cli/b"]), (Some(0), "x=y\n".to_string()));
    assert_eq!(run(&["dump", "/cli/"]).1, "/cli/a=1\n/cli/b=x=y\n");
    assert_eq!(run(&["del", "/cli/a"]).0, Some(0));
    assert_eq!(run(&["get", "/cli/a"]).0, Some(1));
    let help = mdsub().args(["clone-client", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for word in ["set", "get", "del", "dump", "watch"] {
        assert!(help.contains(word), "--help explains {word}: {help}");
    }
}

#[test]
fn clone_client_set_over_the_servers_limits_is_refused_at_once() {
    // Before: the server dropped it (counted there) and `set` waited out its whole --timeout.
    let p = free_port_block(3);
    let _s = server("server", p, &["--max-key-bytes", "16", "--max-value-bytes", "8"]);
    let srv = ep(p);
    let run = |args: &[&str]| {
        let mut cmd = mdsub();
        cmd.args(["clone-client", "--store", &srv, "--timeout", "60s"]).args(args);
        run_within("clone-client", &mut cmd, Duration::from_secs(30))
    };
    let cases: [(&[&str], &str); 3] = [
        (&["set", "/a/key/of/17/byte", "v"], "key of 17 bytes > max-key-bytes 16"),
        (&["set", "/k", "123456789"], "value of 9 bytes > max-value-bytes 8"),
        (&["del", "/a/key/of/17/byte"], "key of 17 bytes > max-key-bytes 16"),
    ];
    for (args, says) in cases {
        let (code, _out, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: a refused value, at once: {err}");
        assert!(err.contains(says) && err.contains("nothing was sent"), "{args:?}: {err}");
        // One line, prefixed like every error (before: `error: …` and clap's usage block).
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with(&format!("mdsub: error: {says}: the server {srv} does not accept it")), "{err}");
    }
    assert_eq!(run(&["set", "/a/key/of/16/byt", "12345678"]).0, Some(0), "at the limits it goes through");
    // Refused by the client, not dropped by the server: nothing over the limits reached it.
    let st = status(p);
    assert_eq!(st.get("keys").map(String::as_str), Some("1"), "{st:?}");
    assert!(!st.keys().any(|k| k.starts_with("refused_")), "the server refused nothing: {st:?}");
}

#[test]
fn clone_client_subtree_longer_than_the_servers_keys_is_refused_not_timed_out() {
    // Before: a 70000-byte subtree was over the snapshot port's frame limit: libzmq dropped the
    // request with its connection, and `dump` said `no clone server answered … timed out` (4).
    let (p, _s) = standalone();
    let srv = ep(p);
    let long = "a".repeat(70_000);
    for (cmd, len) in [("dump", 70_000), ("watch", 70_000), ("dump", 1025)] {
        let mut c = mdsub();
        c.args(["clone-client", "--store", &srv, "--timeout", "60s", cmd, &long[..len]]);
        let (code, out, err) = run_within("clone-client", &mut c, Duration::from_secs(20));
        assert_eq!(code, Some(2), "{cmd} of {len} bytes: {out}{err}");
        assert_eq!(
            err.trim_end(),
            format!(
                "mdsub: error: subtree of {len} bytes > max-key-bytes 1024: the server {srv} holds no key that \
                 long, so none can be under it"
            )
        );
        assert!(out.is_empty(), "{out}");
    }
    let mut c = mdsub();
    c.args(["clone-client", "--store", &srv, "--timeout", "10s", "dump", &long[..1024]]);
    assert_eq!(run_within("clone-client", &mut c, Duration::from_secs(20)).0, Some(0), "at the limit: an empty dump");
    assert_eq!(status(p).get("state").map(String::as_str), Some("active"));
}

#[test]
fn clone_client_exit_codes_tell_an_absent_key_from_no_server() {
    // Before: `get` exited 1 both for a key that is not there and for no server answering.
    let (p, _s) = standalone();
    let (live, dead) = (ep(p), ep(common::unserved_port_block(3)));
    let table: [(&str, &[&str], i32, &str, &str); 7] = [
        // server, command, exit status, stdout, stderr holds
        (&live, &["set", "/here", "v"], 0, "", ""),
        (&live, &["get", "/here"], 0, "v\n", ""),
        (&live, &["get", "/absent"], 1, "", ""),
        (&dead, &["get", "/here"], 4, "", "mdsub: error: no clone server answered (tcp://"),
        (&dead, &["set", "/here", "w"], 4, "", "no clone server answered"),
        (&dead, &["status"], 4, "error=", "no clone server answered"),
        (&live, &["status"], 0, "state=active", ""),
    ];
    for (srv, args, code, out, err) in table {
        let mut cmd = mdsub();
        cmd.args(["clone-client", "--store", srv, "--timeout", "1s"]).args(args);
        let (got, stdout, stderr) = run_within("clone-client", &mut cmd, Duration::from_secs(30));
        assert_eq!(got, Some(code), "{args:?} at {srv}: {stdout}{stderr}");
        assert!(if out.is_empty() { stdout.is_empty() } else { stdout.contains(out) }, "{args:?}: {stdout}");
        assert!(if err.is_empty() { stderr.is_empty() } else { stderr.contains(err) }, "{args:?}: {stderr}");
    }
    let help = mdsub().args(["clone-client", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("4 no server answered within --timeout"), "--help says the exit statuses: {help}");
}

#[test]
fn clone_client_status_exits_non_zero_when_a_server_does_not_answer() {
    // Before: `error=… no STATUS reply` on stdout, and exit status 0.
    let (p, _s) = standalone();
    let dead = format!("tcp://127.0.0.1:{}", free_port_block(3));
    let out = mdsub()
        .args(["clone-client", "--store", &ep(p), "--store", &dead, "--timeout", "1s", "status"])
        .output()
        .expect("clone-client runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("state=") && stdout.contains(&format!("error={dead}")), "both servers shown: {stdout}");
    // --timeout is each server's wait (it was capped at 2 s whatever --timeout said).
    assert!(stdout.contains("no STATUS reply within 1s"), "{stdout}");
    // Issue bstar15-5: it said `1 of 2 clone server(s) did not answer STATUS`, not which one.
    assert_eq!(
        stderr.trim(),
        format!("mdsub: error: 1 of 2 clone servers did not answer STATUS: {dead}: no STATUS reply within 1s"),
        "{stderr}"
    );
    let live = mdsub().args(["clone-client", "--store", &ep(p), "status"]).output().expect("runs");
    assert_eq!(live.status.code(), Some(0), "{}", String::from_utf8_lossy(&live.stderr));
}

#[test]
fn sigterm_ends_clone_client_status_while_a_server_does_not_answer() {
    // Two TCP listeners that accept and never answer: `status` waits on the first. Before, a
    // SIGTERM printed `error=Interrupted system call` for it and went on to wait for the second.
    let silent: Vec<std::net::TcpListener> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("listener")).collect();
    let eps: Vec<String> = silent.iter().map(|l| ep(l.local_addr().expect("addr").port())).collect();
    let mut cmd = mdsub();
    cmd.args(["clone-client", "--store", &eps[0], "--store", &eps[1], "--timeout", "60s", "status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut client = Proc::spawn("clone-client status", &mut cmd);
    let out = lines_of(client.child.stdout.take().expect("stdout piped"));
    let err = lines_of(client.child.stderr.take().expect("stderr piped"));
    silent[0].set_nonblocking(true).expect("nonblocking");
    let mut held = Vec::new();
    wait_until(Duration::from_secs(10), "clone-client to connect to the first server", || {
        silent[0].accept().map(|(c, _)| held.push(c)).is_ok()
    });
    client.signal(15);
    let status = client.wait_exit(Duration::from_secs(5));
    let said: Vec<String> = std::iter::from_fn(|| err.recv_timeout(Duration::from_secs(2)).ok()).collect();
    let printed: Vec<String> = std::iter::from_fn(|| out.recv_timeout(Duration::from_millis(200)).ok()).collect();
    assert_eq!(status.code(), Some(130), "stdout {printed:?}, stderr {said:?}");
    assert_eq!(said, vec!["mdsub: interrupted".to_string()]);
    assert!(!printed.iter().any(|l| l.starts_with("error=")), "no server error for a stop: {printed:?}");
}

// ---------------------------------------------------------------------------------------------
// Interop: an independent minimal CHP peer written from the spec (rfc.zeromq.org/spec/12) on the
// raw zmq crate. It builds and parses frames itself; nothing from mdsub::clone is used.
// ---------------------------------------------------------------------------------------------

/// Spec: frame 0 key, frame 1 sequence (8 bytes, network order), frame 2 UUID, frame 3 properties,
/// frame 4 body.
/// A raw CHP client's PUB, connected to the collector of the server at base port `port` (P+2).
fn raw_collector(ctx: &zmq::Context, port: u16) -> zmq::Socket {
    let coll = ctx.socket(zmq::PUB).expect("pub");
    coll.set_linger(0).expect("linger");
    coll.connect(&format!("tcp://127.0.0.1:{}", port + 2)).expect("connect");
    coll
}

/// Send `frames` to the collector of the server at `port` from a raw CHP client, again and
/// again (the PUB drops what it sends before the connection is up), until `done`.
fn resend_until(port: u16, frames: &[Vec<u8>], what: &str, mut done: impl FnMut() -> bool) {
    let ctx = zmq::Context::new();
    let coll = raw_collector(&ctx, port);
    wait_until(Duration::from_secs(5), what, || {
        coll.send_multipart(frames, 0).expect("send");
        done()
    });
}

/// A raw CHP server's sockets at base port `port`: the snapshot ROUTER (P), the publisher PUB
/// (P+1) and the collector SUB (P+2), subscribed to everything.
fn raw_server(ctx: &zmq::Context, port: u16) -> (zmq::Socket, zmq::Socket, zmq::Socket) {
    let router = ctx.socket(zmq::ROUTER).expect("router");
    let publisher = ctx.socket(zmq::PUB).expect("pub");
    let collector = ctx.socket(zmq::SUB).expect("sub");
    for s in [&router, &publisher, &collector] {
        s.set_linger(0).expect("linger");
    }
    router.bind(&ep(port)).expect("bind snapshot");
    publisher.bind(&ep(port + 1)).expect("bind publisher");
    collector.set_subscribe(b"").expect("subscribe");
    collector.bind(&ep(port + 2)).expect("bind collector");
    (router, publisher, collector)
}

/// Wait (10 s at most) until `sub` (subscribed to `key`'s subtree) hears a probe update of `key`
/// that the raw CHP client's PUB `coll` sends: the subscription and the collector's link are
/// then both up. A fresh UUID per attempt: the server re-publishes a repeated UUID only once, so
/// a repeated probe could go unseen while the SUB connects.
fn wait_probe_published(coll: &zmq::Socket, sub: &zmq::Socket, key: &[u8]) {
    let mut attempt = 0u32;
    wait_until(Duration::from_secs(10), "the probe to be published", || {
        attempt += 1;
        let mut uuid = *b"probe-uuid-00000";
        uuid[12..].copy_from_slice(&attempt.to_be_bytes());
        coll.send_multipart(chp_frames(key, 0, &uuid, b"", b"p"), 0).expect("send");
        sub.poll(zmq::POLLIN, 50).expect("poll") > 0
    });
}

fn chp_frames(key: &[u8], seq: u64, uuid: &[u8], props: &[u8], body: &[u8]) -> Vec<Vec<u8>> {
    vec![key.to_vec(), seq.to_be_bytes().to_vec(), uuid.to_vec(), props.to_vec(), body.to_vec()]
}

fn chp_seq(frame: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&frame[..8]);
    u64::from_be_bytes(b)
}

#[test]
fn independent_chp_client_interoperates_with_mdsub_server() {
    let (p, _s) = standalone();
    let seeder = client(&[p], "");
    let u = seeder.set("/spec/seed", "s", Some(60)).expect("set");
    seeder.wait_acked(u, Duration::from_secs(5)).expect("acked");

    let ctx = zmq::Context::new();
    let snapshot = ctx.socket(zmq::DEALER).expect("dealer");
    let subscriber = ctx.socket(zmq::SUB).expect("sub");
    let publisher = ctx.socket(zmq::PUB).expect("pub");
    for s in [&snapshot, &subscriber, &publisher] {
        s.set_linger(0).expect("linger");
    }
    subscriber.set_subscribe(b"/spec/").expect("subscribe");
    subscriber.set_subscribe(b"HUGZ").expect("subscribe");
    subscriber.connect(&format!("tcp://127.0.0.1:{}", p + 1)).expect("connect");
    publisher.connect(&format!("tcp://127.0.0.1:{}", p + 2)).expect("connect");
    snapshot.connect(&format!("tcp://127.0.0.1:{p}")).expect("connect");
    // Spec: ICANHAZ command: frame 0 "ICANHAZ?", frame 1 subtree.
    snapshot.send_multipart([&b"ICANHAZ?"[..], b"/spec/"], 0).expect("icanhaz");
    let mut snap = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    let kthxbai_seq = loop {
        assert!(Instant::now() < end, "snapshot within 5 s");
        if snapshot.poll(zmq::POLLIN, 100).expect("poll") == 0 {
            continue;
        }
        let f = snapshot.recv_multipart(0).expect("recv");
        assert_eq!(f.len(), 5, "KVSYNC/KTHXBAI are five frames");
        assert_eq!(f[1].len(), 8);
        if f[0] == b"KTHXBAI" {
            assert_eq!(f[4], b"/spec/", "KTHXBAI carries the subtree");
            // mdsub's extensions: the server's limits and HUGZ interval, as ordinary
            // `name=value` properties.
            let props = String::from_utf8(f[3].clone()).expect("props are text");
            let lines: Vec<&str> = props.lines().collect();
            assert_eq!(lines, ["max-key-bytes=1024", "max-value-bytes=1048576", "hugz-interval-ms=1000"], "{props:?}");
            break chp_seq(&f[1]);
        }
        snap.push(f);
    };
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0][0], b"/spec/seed");
    assert_eq!(snap[0][4], b"s");
    assert!(kthxbai_seq >= 1);
    let props = String::from_utf8(snap[0][3].clone()).expect("props are text");
    assert!(props.lines().any(|l| l.starts_with("ttl=")), "ttl is a property: {props}");
    // Spec: KVSET: key, sequence (ignored), UUID, properties, body. Send until the server
    // publishes it (the PUB→SUB connection may still be forming).
    let uuid = *b"0123456789abcdef";
    let got = {
        let mut got = None;
        let end = Instant::now() + Duration::from_secs(5);
        while got.is_none() && Instant::now() < end {
            publisher
                .send_multipart(chp_frames(b"/spec/mine", 0, &uuid, b"origin=spec\n", b"hello"), 0)
                .expect("kvset");
            while subscriber.poll(zmq::POLLIN, 100).expect("poll") > 0 {
                let f = subscriber.recv_multipart(0).expect("recv");
                assert_eq!(f.len(), 5);
                if f[0] == b"/spec/mine" {
                    got = Some(f);
                }
            }
        }
        got.expect("KVPUB of our update within 5 s")
    };
    assert!(chp_seq(&got[1]) > kthxbai_seq, "KVPUB sequence follows the snapshot");
    assert_eq!(got[2], uuid.to_vec(), "UUID preserved");
    assert_eq!(got[3], b"origin=spec\n", "properties preserved");
    assert_eq!(got[4], b"hello");
    // HUGZ arrives when idle.
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        assert!(Instant::now() < end, "HUGZ within 3 s");
        if subscriber.poll(zmq::POLLIN, 100).expect("poll") > 0 {
            let f = subscriber.recv_multipart(0).expect("recv");
            if f[0] == b"HUGZ" {
                assert_eq!(f.len(), 5);
                break;
            }
        }
    }
    // mdsub's own client sees the spec client's update.
    wait_until(Duration::from_secs(5), "mdsub client to see the spec client's update", || {
        seeder.get("/spec/mine").ok().flatten() == Some(b"hello".to_vec())
    });
}

#[test]
fn mdsub_client_interoperates_with_independent_chp_server() {
    let p = free_port_block(3);
    let ctx = zmq::Context::new();
    let (router, publisher, collector) = raw_server(&ctx, p);
    let mut seq = 41u64;
    let c = client(&[p], "/s/");
    let stop = Instant::now() + Duration::from_secs(10);
    let mut received = Vec::new();
    let mut sent_initial = false;
    let mut served = false;
    let mut last_hugz = Instant::now();
    let mut step = 0;
    while Instant::now() < stop && step < 3 {
        let mut items = [router.as_poll_item(zmq::POLLIN), collector.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 50).expect("poll");
        if items[0].is_readable() {
            let f = router.recv_multipart(0).expect("recv");
            assert_eq!(f.len(), 3, "identity + ICANHAZ? + subtree");
            assert_eq!(f[1], b"ICANHAZ?");
            assert_eq!(f[2], b"/s/");
            // A spec server answers KVSYNC entries (we add a UUID and a property) then KTHXBAI.
            let id = f[0].clone();
            let mut m = vec![id.clone()];
            m.extend(chp_frames(b"/s/one", 7, b"fedcba9876543210", b"a=b=c\n", b"1"));
            router.send_multipart(m, 0).expect("send");
            let mut m = vec![id];
            m.extend(chp_frames(b"KTHXBAI", seq, b"", b"", b"/s/"));
            router.send_multipart(m, 0).expect("send");
            served = true;
        }
        if items[1].is_readable() {
            let f = collector.recv_multipart(0).expect("recv");
            assert_eq!(f.len(), 5, "KVSET is five frames");
            assert_eq!(f[2].len(), 16, "every update carries a UUID");
            seq += 1;
            // Republish as KVPUB with our sequence, like a spec server.
            publisher.send_multipart(chp_frames(&f[0], seq, &f[2], &f[3], &f[4]), 0).expect("publish");
            received.push(f);
        }
        if last_hugz.elapsed() > Duration::from_millis(300) {
            // HUGZ with a sequence frame (tolerated), plus an update outside the subtree.
            publisher.send_multipart(chp_frames(b"HUGZ", seq, b"", b"", b""), 0).expect("hugz");
            last_hugz = Instant::now();
        }
        if served && !sent_initial && c.status().expect("status").synced {
            assert_eq!(c.get("/s/one").expect("get"), Some(b"1".to_vec()), "snapshot entry stored");
            c.set("/s/two", "2", Some(5)).expect("set");
            sent_initial = true;
            step = 1;
        }
        if step == 1 && c.get("/s/two").expect("get").is_some() && c.status().expect("status").unacked == 0 {
            // A server-originated update (new sequence) reaches the client.
            seq += 1;
            publisher.send_multipart(chp_frames(b"/s/three", seq, b"", b"", b"3"), 0).expect("pub");
            step = 2;
        }
        if step == 2 && c.get("/s/three").expect("get").is_some() {
            step = 3;
        }
    }
    assert_eq!(step, 3, "client synced, set acknowledged, live update applied");
    let kvset = &received[0];
    assert_eq!(kvset[0], b"/s/two");
    assert_eq!(kvset[1].len(), 8);
    assert_eq!(kvset[3], b"ttl=5\n");
    assert_eq!(kvset[4], b"2");
    assert_eq!(c.status().expect("status").sequence, seq);
}

#[test]
fn corrupt_log_tail_is_reported_and_the_rest_recovered() {
    use std::io::Read;
    let dir = common::temp_dir("clone-tail");
    let d = dir.to_str().expect("utf8");
    let p = free_port_block(3);
    {
        let mut s = server("server", p, &["--data-dir", d]);
        let c = synced(&[p], "");
        set_all_acked(&c, "/t/", 10, "v");
        s.signal(15);
        s.wait_exit(Duration::from_secs(5));
    }
    // A torn write at the end of the log.
    let log = dir.join("log");
    let good_len = std::fs::metadata(&log).expect("log exists").len();
    let mut bytes = std::fs::read(&log).expect("read");
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&log, &bytes).expect("write");
    let mut cmd = mdsub();
    cmd.args(["clone-server", "--quiet", "--endpoint", &ep(p), "--data-dir", d]).stderr(std::process::Stdio::piped());
    let mut s = Proc::spawn("server", &mut cmd);
    wait_until(Duration::from_secs(5), "the restarted server to recover 10 keys", || {
        status(p).get("keys").map(String::as_str) == Some("10")
    });
    s.signal(9);
    s.wait_exit(Duration::from_secs(5));
    let mut err = String::new();
    s.child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
    assert!(
        err.contains(&format!("offset {good_len}")) && err.contains("truncated"),
        "stderr names the offset and the reason: {err}"
    );
}

#[test]
fn a_snapshot_cut_inside_its_header_is_said_and_kept_and_the_server_starts() {
    // Before: a 12-byte snapshot was recovered as an empty map, without a word.
    let dir = common::temp_dir("clone-snapcut");
    let d = dir.to_str().expect("utf8");
    let p = free_port_block(3);
    std::fs::write(dir.join("snapshot"), b"MDCLSNP1\x07\0\0\0").expect("a cut snapshot");
    let (_s, said) = server_said("server", p, &["--data-dir", d]);
    wait_line(&said, Duration::from_secs(5), "the damage said", |l| {
        l.contains("snapshot at offset 12: truncated header: the file ends after 12 of its 16 header bytes")
    });
    wait_line(&said, Duration::from_secs(5), "the copy said", |l| l.contains("snapshot.corrupt-"));
    wait_until(Duration::from_secs(5), "the server to serve", || status(p).contains_key("state"));
    let copies: Vec<_> = std::fs::read_dir(&dir)
        .expect("data dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot.corrupt-"))
        .collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(std::fs::read(copies[0].path()).expect("copy"), b"MDCLSNP1\x07\0\0\0");
    assert_eq!(std::fs::metadata(dir.join("snapshot")).expect("snapshot").len(), 16, "rewritten whole");
}

#[test]
fn clone_client_cli_watch_prints_current_then_live_changes() {
    let (p, _s) = standalone();
    let srv = ep(p);
    let c = synced(&[p], "");
    let u = c.set("/w/a", "1", None).expect("set");
    c.wait_acked(u, Duration::from_secs(5)).expect("acked");
    let seq_a = c.status().expect("status").sequence;
    let mut cmd = mdsub();
    cmd.args(["clone-client", "--store", &srv, "watch", "/w/", "--count", "2"]);
    let w = LineProc::spawn("watch", &mut cmd);
    let first = w.line_starting("", Duration::from_secs(10));
    assert_eq!(first, format!("initial {seq_a} /w/a=1"), "current value first");
    c.set("/w/b", "2", None).expect("set");
    c.del("/w/a").expect("del");
    let b = w.line_starting("", Duration::from_secs(10));
    let a = w.line_starting("", Duration::from_secs(10));
    assert!(b.starts_with("live ") && b.ends_with(" /w/b=2"), "{b}");
    assert!(a.starts_with("live ") && a.ends_with(" /w/a deleted"), "{a}");
    let (exit, rest) = w.finish(Duration::from_secs(5));
    assert!(exit.success(), "watch --count 2 exits cleanly");
    assert!(rest.is_empty(), "nothing after the two live changes: {rest}");
}

/// Issue bstar15-6: `watch`'s exit counter `live=` counted the changes a re-sync found too.
/// A standalone server restarted without its map makes the watch re-sync (its key deleted
/// there is a `resync` change); a set after it is `live`. The exit line counts them apart.
#[test]
fn clone_client_watch_counts_live_and_resync_changes_apart() {
    let (p, mut s) = standalone();
    let c = synced(&[p], "");
    set_all_acked(&c, "/w/a", 1, "1");
    drop(c);
    let mut cmd = mdsub();
    cmd.args(["clone-client", "--store", &ep(p), "watch", "/w/"]);
    let w = LineProc::spawn_with_stderr("watch", &mut cmd);
    assert!(w.line_starting("", Duration::from_secs(10)).ends_with(" /w/a0=1"));
    s.signal(9);
    s.wait_exit(Duration::from_secs(5));
    // Same port, no data dir: /w/a0 is gone there, so the watch's re-sync deletes it.
    let _again = server("server-again", p, &[]);
    let gone = w.line_starting("resync ", Duration::from_secs(20));
    assert!(gone.ends_with(" /w/a0 deleted"), "{gone}");
    let c = synced(&[p], "");
    set_all_acked(&c, "/w/b", 1, "2");
    let b = w.line_starting("", Duration::from_secs(10));
    assert!(b.starts_with("live ") && b.ends_with(" /w/b0=2"), "{b}");
    w.proc.signal(15);
    let err = w.stderr.as_ref().expect("stderr piped");
    let line = wait_line(err, Duration::from_secs(10), "the exit counters", |l| l.contains("stopped:"));
    assert!(line.contains(" live=1 ") && line.contains(" resync_changes=1 "), "{line}");
}

/// A server run with a HUGZ interval above a client's `--silence` was left by the client
/// whenever it had nothing to publish (hops over and over, every one a re-sync), though it
/// was alive. The server states its interval in its snapshot; the client waits twice that.
#[test]
fn a_client_keeps_a_quiet_server_whose_hugz_are_slower_than_its_silence() {
    let p = free_port_block(3);
    let _s = server("server", p, &["--hugz-interval", "1500ms"]);
    let mut cmd = mdsub();
    cmd.args(["clone-client", "--store", &ep(p), "--silence", "1200ms", "watch", "/quiet/"]);
    let w = LineProc::spawn_with_stderr("watch", &mut cmd);
    let err = w.stderr.as_ref().expect("stderr piped");
    let said = wait_line(err, Duration::from_secs(10), "the silence line", |l| l.contains("publishes HUGZ every"));
    assert!(
        said.contains(&format!("{} publishes HUGZ every 1500ms", ep(p)))
            && said.ends_with("left after 3s of silence instead"),
        "{said}"
    );
    // Nothing is published: only HUGZ, every 1.5 s, reach the client for 4 s (more than
    // three of its configured silences, one of what it now allows).
    std::thread::sleep(Duration::from_secs(4));
    w.proc.signal(15);
    let line = wait_line(err, Duration::from_secs(10), "the exit counters", |l| l.contains("stopped:"));
    assert!(line.contains(" failovers=0 hops=0 resyncs=0 "), "{line}");
}

#[test]
fn lone_primary_serves_once_its_peer_has_been_silent() {
    let pp = free_port_block(4);
    let absent = free_port_block(4);
    let _prim = primary(pp, absent, &["--heartbeat-interval", "300ms"]);
    let c = client(&[pp], "");
    let t0 = Instant::now();
    c.wait_synced(Duration::from_secs(5)).expect("a lone primary takes the client's vote");
    assert!(t0.elapsed() >= Duration::from_millis(500), "not before the peer expired");
    let u = c.set("/alone", "1", None).expect("set");
    c.wait_acked(u, Duration::from_secs(5)).expect("published");
    assert_eq!(status(pp).get("state").map(String::as_str), Some("active"));
}

#[test]
fn passive_holds_pending_updates_and_publishes_them_on_takeover() {
    let (_pp, mut prim, bp, _back) = settled_pair();
    // A raw CHP client that reaches only the backup's collector (its link to the primary is
    // "lost"): the passive backup must hold the update, not apply or publish it.
    let kvset = chp_frames(b"/pending/x", 0, b"pending-uuid-016", b"", b"held");
    resend_until(bp, &kvset, "the passive backup to hold the update as pending", || {
        status(bp).get("pending").map(String::as_str) == Some("1")
    });
    assert_eq!(status(bp).get("keys").map(String::as_str), Some("0"), "not applied while passive");
    prim.signal(9);
    prim.wait_exit(Duration::from_secs(5));
    // A client that asks the backup is the vote; the backup takes over and applies the pending list.
    let c = client(&[bp], "");
    c.wait_synced(Duration::from_secs(8)).expect("backup takes over");
    wait_until(Duration::from_secs(5), "the pending update to be published", || {
        c.get("/pending/x").ok().flatten() == Some(b"held".to_vec())
    });
    assert_eq!(status(bp).get("pending").map(String::as_str), Some("0"));
}

#[test]
fn random_garbage_on_every_port_never_stops_a_server() {
    let (pp, _prim, bp, _back) = settled_pair();
    let ctx = zmq::Context::new();
    let mut socks = Vec::new();
    for port in [pp, bp] {
        let d = ctx.socket(zmq::DEALER).expect("dealer");
        d.connect(&format!("tcp://127.0.0.1:{port}")).expect("connect");
        socks.push(d);
        let c = ctx.socket(zmq::PUB).expect("pub");
        c.connect(&format!("tcp://127.0.0.1:{}", port + 2)).expect("connect");
        socks.push(c);
    }
    // Garbage reaches each server's snapshot port and collector the way clients reach them.
    // (The heartbeat and peer-update sockets only connect to the peer; their malformed input is
    // counted the same way and is covered by the unit tests of the decoders.)
    for s in &socks {
        s.set_linger(0).expect("linger");
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let end = Instant::now() + Duration::from_millis(1500);
    let mut sent = 0;
    while Instant::now() < end {
        for s in &socks {
            let frames = (next() % 7) as usize;
            let msg: Vec<Vec<u8>> = (0..frames.max(1))
                .map(|_| {
                    let len = (next() % 40) as usize;
                    let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    if next() % 4 == 0 && !v.is_empty() {
                        v.truncate(8); // sometimes a plausible sequence-sized frame
                    }
                    v
                })
                .collect();
            let _ = s.send_multipart(msg, zmq::DONTWAIT);
            sent += 1;
        }
        if sent % 400 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(sent > 100);
    // Both still serve their roles, and counted what they refused. A loaded box may let a
    // STATUS? request time out (an empty map): the wait keeps the last answer of each server and
    // asks again until the deadline; the assertions come after the wait, on those answers.
    let malformed = |s: &BTreeMap<String, String>| {
        ["malformed_requests", "malformed_updates"].iter().filter_map(|k| s.get(*k)?.parse::<u64>().ok()).sum::<u64>()
    };
    let (mut sp, mut sb) = (BTreeMap::new(), BTreeMap::new());
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let (p, b) = (status(pp), status(bp));
        if !p.is_empty() {
            sp = p;
        }
        if !b.is_empty() {
            sb = b;
        }
        let settled = |s: &BTreeMap<String, String>, state: &str| {
            malformed(s) > 0 && s.get("state").map(String::as_str) == Some(state)
        };
        if settled(&sp, "active") && settled(&sb, "passive") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (s, state) in [(&sp, "active"), (&sb, "passive")] {
        for k in ["malformed_requests", "malformed_updates", "malformed_heartbeats", "pending_dropped"] {
            assert!(s.contains_key(k), "STATUS reports {k}: {s:?}");
        }
        assert!(malformed(s) > 0, "the garbage is counted: {s:?}");
        assert_eq!(s.get("state").map(String::as_str), Some(state), "still serving its role: {s:?}");
    }
    let c = synced(&[pp, bp], "");
    let u = c.set("/after/garbage", "ok", None).expect("set");
    c.wait_acked(u, Duration::from_secs(5)).expect("acked");
}

#[test]
fn set_outside_the_subtree_is_not_tracked_and_a_resent_uuid_is_republished_once() {
    let (p, _s) = standalone();
    let md = synced(&[p], "/md/");
    let u = md.set("/other/x", "1", None).expect("set");
    assert_eq!(md.ack_state(u).expect("state"), AckState::Untracked);
    assert!(!md.is_acked(u).expect("is_acked"), "untracked is not acknowledged");
    assert!(matches!(md.wait_acked(u, Duration::from_secs(5)), Err(ClientError::NotAcked(AckState::Untracked))));
    assert_eq!(md.status().expect("status").unacked, 0, "not re-sent");
    assert_eq!(md.ack_state([7; 16]).expect("state"), AckState::Unknown);
    let inside = md.set("/md/y", "2", None).expect("set");
    md.wait_acked(inside, Duration::from_secs(5)).expect("a set inside the subtree is acknowledged");
    assert_eq!(md.ack_state(inside).expect("state"), AckState::Acked);
    let seq0: u64 = status(p).get("sequence").and_then(|v| v.parse().ok()).expect("sequence");
    // A raw CHP client re-sends one KVSET (same UUID) many times: the server applies it once and
    // re-publishes it at most once more, not once per re-send.
    let kvset = chp_frames(b"/dup/k", 0, b"dup-uuid-0000016", b"", b"v");
    resend_until(p, &kvset, "the server to see five re-sends", || {
        status(p).get("duplicates").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) >= 5
    });
    let seq: u64 = status(p).get("sequence").and_then(|v| v.parse().ok()).expect("sequence");
    assert_eq!(seq, seq0 + 2, "applied once, re-published once");
}

#[test]
fn client_resyncs_after_a_standalone_server_restarts_with_a_lower_sequence() {
    let (p, mut s) = standalone();
    let stays = synced(&[p], "");
    let mut last = None;
    for i in 0..20 {
        last = Some(stays.set(format!("/before/{i}"), "x", None).expect("set"));
    }
    stays.wait_acked(last.expect("set"), Duration::from_secs(5)).expect("acked");
    assert!(stays.status().expect("status").sequence >= 20);
    s.signal(9);
    s.wait_exit(Duration::from_secs(5));
    // Same port, no data dir: the new server's sequence starts again at 0.
    let _s2 = server("server-again", p, &[]);
    let writer = synced(&[p], "");
    let u = writer.set("/after", "y", None).expect("set");
    writer.wait_acked(u, Duration::from_secs(5)).expect("acked");
    wait_until(Duration::from_secs(10), "the client that stayed up to see the new server's updates", || {
        stays.get("/after").ok().flatten() == Some(b"y".to_vec())
    });
    let st = stays.status().expect("status");
    // One server: the restart is a re-sync (its link dropped) or a hunt that found it again
    // (hops), never a failover.
    assert!(st.resyncs >= 1 || st.hops >= 1, "{st:?}");
    assert_eq!(st.failovers, 0, "{st:?}");
    assert_eq!(dump(&stays), dump(&writer), "converged on the new server's map");
}

#[test]
fn server_refuses_unusable_limits_intervals_and_a_second_primary() {
    let p = free_port_block(4);
    let peer = ep(free_port_block(4));
    // Issue bstar15-4: limits that do not fit together, and --peer without a role, exited 1.
    let cases: [(&[&str], &str); 9] = [
        (&["--max-value-bytes", "67108864"], "--max-value-bytes"),
        (&["--max-value-bytes", "64Mi", "--max-key-bytes", "1Mi"], "--max-key-bytes"),
        (&["--peer", peer.as_str()], "--primary or --backup"),
        (&["--hugz-interval", "0ms"], "--hugz-interval"),
        (&["--hugz-interval", "1000"], "--hugz-interval"),
        (&["--primary", "--peer", peer.as_str(), "--heartbeat-interval", "0s"], "--heartbeat-interval"),
        (
            &["--primary", "--peer", peer.as_str(), "--heartbeat-interval", "18446744073709551615ms"],
            "--heartbeat-interval",
        ),
        (&["--endpoint", "tcp://127.0.0.1:*"], "--endpoint"),
        (&["--endpoint", "connect:tcp://127.0.0.1:5556"], "--endpoint"),
    ];
    for (args, flag) in cases {
        let mut cmd = mdsub();
        cmd.args(["clone-server", "--quiet", "--endpoint", &ep(p)]).args(args);
        let (code, _, err) = run_within("server", &mut cmd, Duration::from_secs(10));
        assert_eq!(code, Some(2), "{args:?} refused as a usage error: {err}");
        assert!(err.contains(flag), "{args:?}: error names {flag}: {err}");
    }
    // Two servers both started with --primary stop with a clear error instead of waiting (the
    // first to hear the other stops; the other may then be left alone, as a lone primary).
    let (a, b) = (free_port_block(4), free_port_block(4));
    let mut procs: Vec<Proc> = [(a, b), (b, a)]
        .iter()
        .map(|(port, peer)| {
            let mut cmd = mdsub();
            cmd.args(["clone-server", "--quiet", "--endpoint", &ep(*port), "--primary", "--peer", &ep(*peer)]);
            cmd.args(["--heartbeat-interval", "100ms"]).stderr(std::process::Stdio::piped());
            Proc::spawn("primary", &mut cmd)
        })
        .collect();
    let mut stopped = None;
    wait_until(Duration::from_secs(10), "one of two --primary servers to stop", || {
        stopped = procs.iter_mut().position(|p| matches!(p.child.try_wait(), Ok(Some(_))));
        stopped.is_some()
    });
    let p = &mut procs[stopped.expect("stopped")];
    assert!(!p.wait_exit(Duration::from_secs(1)).success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut p.child.stderr.take().expect("stderr"), &mut err).expect("stderr");
    assert!(err.contains("primary too") && err.contains("--backup"), "{err}");
}

#[test]
fn an_update_a_few_times_over_the_value_limit_is_counted_not_dropped_unseen() {
    // Before: the collector read frames only up to the limit plus 4 KiB, so a 3 MiB value under
    // the default 1 MiB limit made libzmq drop it (and its connection) before the server saw it:
    // not counted, not said. Up to four times the limit is now read, refused and counted.
    let p = free_port_block(3);
    let (_s, said) = server_said("server", p, &[]);
    let big = chp_frames(b"/big", 0, b"", b"", &vec![b'v'; 3 << 20]);
    resend_until(p, &big, "the 3 MiB update to be counted as value_too_long", || {
        status(p).get("refused_value_too_long").is_some_and(|n| n != "0")
    });
    wait_line(&said, Duration::from_secs(5), "the refusal said", |l| {
        l.contains("refused (value_too_long)") && l.contains("value of 3145728 bytes > max-value-bytes 1048576")
    });
    assert_eq!(status(p).get("keys").map(String::as_str), Some("0"));
}

#[test]
fn oversized_frames_are_refused_by_libzmq_before_they_are_read() {
    let p = free_port_block(3);
    let _s = server("server", p, &["--max-key-bytes", "16", "--max-value-bytes", "64"]);
    let ctx = zmq::Context::new();
    let coll = ctx.socket(zmq::PUB).expect("pub");
    coll.set_linger(0).expect("linger");
    let mon_ep = "inproc://oversized-monitor";
    let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32 | zmq::SocketEvent::DISCONNECTED as i32;
    coll.monitor(mon_ep, events).expect("monitor");
    let mon = ctx.socket(zmq::PAIR).expect("pair");
    mon.connect(mon_ep).expect("connect monitor");
    coll.connect(&format!("tcp://127.0.0.1:{}", p + 2)).expect("connect");
    let next_event = |deadline: Duration| -> Option<u16> {
        if mon.poll(zmq::POLLIN, deadline.as_millis() as i64).expect("poll") == 0 {
            return None;
        }
        let f = mon.recv_multipart(0).expect("event");
        f.first().filter(|f| f.len() >= 2).map(|f| u16::from_ne_bytes([f[0], f[1]]))
    };
    assert_eq!(next_event(Duration::from_secs(5)), Some(zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16));
    // A 1 MiB value: over what the collector reads (four times the largest part it accepts,
    // here the 64 KiB of properties, plus slack), so libzmq drops the connection instead of
    // buffering it, before the server sees it (docs/REFUSALS.md).
    let big = chp_frames(b"/big", 0, b"", b"", &vec![b'v'; 1 << 20]);
    let end = Instant::now() + Duration::from_secs(5);
    let mut dropped = false;
    while !dropped && Instant::now() < end {
        coll.send_multipart(&big, 0).expect("send");
        dropped = next_event(Duration::from_millis(100)) == Some(zmq::SocketEvent::DISCONNECTED as u16);
    }
    assert!(dropped, "the server dropped the connection that sent an oversized frame");
    let s = status(p);
    assert_eq!(s.get("state").map(String::as_str), Some("active"), "still serving");
    assert_eq!(s.get("keys").map(String::as_str), Some("0"));
}

/// Guards the order append → flush → publish. The window the old order left open (publish, then
/// flush at the end of the same unit of work) is microseconds, so this does not reliably catch
/// that order; it catches a KVPUB that goes out with its record still in the user-space buffer.
#[test]
fn an_update_is_in_the_log_before_it_is_published() {
    let dir = common::temp_dir("clone-order");
    let p = free_port_block(3);
    let _s = server("server", p, &["--data-dir", dir.to_str().expect("utf8")]);
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).expect("sub");
    let coll = ctx.socket(zmq::PUB).expect("pub");
    for s in [&sub, &coll] {
        s.set_linger(0).expect("linger");
    }
    sub.set_subscribe(b"/burst/").expect("subscribe");
    sub.connect(&format!("tcp://127.0.0.1:{}", p + 1)).expect("connect");
    coll.connect(&format!("tcp://127.0.0.1:{}", p + 2)).expect("connect");
    wait_probe_published(&coll, &sub, b"/burst/probe");
    while sub.poll(zmq::POLLIN, 200).expect("poll") > 0 {
        sub.recv_multipart(0).expect("recv");
    }
    // A burst, so the server is still busy with later updates when it publishes earlier ones.
    let n = 3000u32;
    for i in 0..n {
        let mut uuid = [0u8; 16];
        uuid[..4].copy_from_slice(&i.to_be_bytes());
        coll.send_multipart(chp_frames(format!("/burst/{i:05}").as_bytes(), 0, &uuid, b"", &[b'v'; 64]), 0)
            .expect("send");
    }
    let log = dir.join("log");
    for checked in 0..20 {
        assert!(sub.poll(zmq::POLLIN, 5000).expect("poll") > 0, "KVPUB {checked} within 5 s");
        let f = sub.recv_multipart(0).expect("recv");
        // At the moment a client sees the KVPUB (its acknowledgement), the record is in the log
        // (handed to the OS, so a kill -9 of the server cannot lose it).
        let data = std::fs::read(&log).expect("log");
        let (records, _, _) = mdsub::clone::persist::decode_records(&data[8..], 8);
        assert!(
            records.iter().any(|r| r.msg.uuid.is_some_and(|u| u[..] == f[2][..])),
            "KVPUB {} published before its log record was written",
            String::from_utf8_lossy(&f[0])
        );
    }
}

/// docs/CLONE.md: an acknowledged update survives a crash. So when the log cannot be written
/// (here: its file system is full) the server must neither acknowledge nor publish the update;
/// it counts the failure and keeps serving what it has. Once space is back, the client's
/// re-send goes through.
#[test]
fn a_failed_log_write_is_neither_published_nor_acknowledged() {
    let Some(fs) = common::Tmpfs::mount_or_skip("a_failed_log_write_is_neither_published_nor_acknowledged", "size=64k")
    else {
        return;
    };
    let data = fs.dir.join("data");
    let p = free_port_block(3);
    let _s = server("server", p, &["--data-dir", data.to_str().expect("utf8")]);
    let writer = synced(&[p], "");
    let watcher = synced(&[p], "");
    let old = writer.set("/old/a", "1", None).expect("set");
    writer.wait_acked(old, Duration::from_secs(5)).expect("a set is acknowledged while the disk has room");
    wait_until(Duration::from_secs(5), "the watcher to see /old/a", || watcher.get("/old/a").ok().flatten().is_some());
    let changes = watcher.watch("/new/").expect("watch");
    let filler = fs.fill();
    // Bigger than a page, so it cannot fit in the slack of the log's last page.
    let big = vec![b'x'; 16 << 10];
    let u = writer.set("/new/big", big.clone(), None).expect("set");
    // Through at least one re-send (resend_after_ms is 2 s): never acknowledged, never published.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert_eq!(
            writer.ack_state(u).expect("ack state"),
            AckState::Pending,
            "a set whose log write failed was acknowledged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        changes.try_iter().all(|c| c.kind == ChangeKind::Initial),
        "a set whose log write failed was published to a watcher"
    );
    assert_eq!(watcher.get("/new/big").expect("get"), None);
    let failures = status(p).get("log_failures").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    assert!(failures >= 1, "the failed log writes are counted in the status (log_failures={failures})");
    // Reads still work: the server is active, older keys are served, the failed one is not.
    let s = status(p);
    assert_eq!(s.get("state").map(String::as_str), Some("active"), "still serving: {s:?}");
    assert_eq!(snapshot_of(p), vec![(b"/old/a".to_vec(), b"1".to_vec())]);
    assert_eq!(writer.dump("/old/").expect("dump"), vec![(b"/old/a".to_vec(), b"1".to_vec())]);
    // Room again: the client's next re-send is applied, published and acknowledged.
    std::fs::remove_file(&filler).expect("remove the filler");
    writer.wait_acked(u, Duration::from_secs(10)).expect("acknowledged once the log can be written");
    wait_until(Duration::from_secs(5), "the watcher to see /new/big", || {
        watcher.get("/new/big").ok().flatten().as_deref() == Some(&big[..])
    });
}

/// docs/CLONE.md: a passive server whose own log fails still applies what the active one
/// acknowledged, so its disk copy falls behind: it says so (`durable=no`, not "not
/// acknowledged"), and on taking over it acknowledges no new update until a full snapshot has
/// made its disk whole. Then a kill -9 and a restart on its own data directory lose nothing
/// acknowledged (before: the updates its log missed were gone).
#[test]
fn a_passive_whose_log_fails_takes_over_only_once_its_disk_is_whole() {
    let test = "a_passive_whose_log_fails_takes_over_only_once_its_disk_is_whole";
    let Some(fs) = common::Tmpfs::mount_or_skip(test, "size=256k") else { return };
    let pdir = common::temp_dir("clone-passive-full-primary");
    let bdir = fs.dir.join("backup");
    let (pp, bp) = (free_port_block(4), free_port_block(4));
    let mut prim = primary(pp, bp, &["--data-dir", pdir.to_str().expect("utf8")]);
    let (mut back, said) = {
        let peer = ep(pp);
        let args = ["--backup", "--peer", &peer, "--data-dir", bdir.to_str().expect("utf8")];
        let mut cmd = mdsub();
        cmd.arg("clone-server").arg("--endpoint").arg(ep(bp)).args(args);
        let mut p = Proc::spawn("backup", cmd.stderr(std::process::Stdio::piped()));
        let err = lines_of(p.child.stderr.take().expect("stderr piped"));
        (p, err)
    };
    wait_settled(pp, bp);
    let c = synced(&[pp, bp], "");
    set_all_acked(&c, "/first/", 1, "x");
    wait_until(Duration::from_secs(10), "the backup to hold /first/0", || {
        status(bp).get("keys").map(String::as_str) == Some("1")
    });
    let filler = fs.fill();
    let value = "v".repeat(3000);
    set_all_acked(&c, "/acked/", 30, &value);
    wait_until(Duration::from_secs(10), "the backup to apply all 30 in memory", || {
        status(bp).get("keys").map(String::as_str) == Some("31")
    });
    let s = status(bp);
    assert_eq!(s.get("durable").map(String::as_str), Some("no"), "its disk is behind: {s:?}");
    assert!(s.get("log_failures").is_some_and(|n| n != "0"), "{s:?}");
    let line = wait_line(&said, Duration::from_secs(5), "the log failure line", |l| l.contains("log write failed"));
    assert!(!line.contains("not acknowledged"), "the active acknowledged these: {line}");
    // The active dies; a set makes the backup take over, but it cannot write its snapshot.
    prim.signal(libc::SIGKILL);
    prim.wait_exit(Duration::from_secs(5));
    let after = c.set("/after", "y", None).expect("set");
    wait_state(bp, "active", Duration::from_secs(15));
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert_eq!(c.ack_state(after).expect("ack"), AckState::Pending, "acknowledged while not durable");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(bp).get("durable").map(String::as_str), Some("no"));
    // Room again: the snapshot is written (after its back-off), then the set is acknowledged.
    std::fs::remove_file(&filler).expect("remove the filler");
    wait_until(Duration::from_secs(40), "the backup's disk to be whole", || {
        status(bp).get("durable").map(String::as_str) == Some("yes")
    });
    c.wait_acked(after, Duration::from_secs(10)).expect("acknowledged once durable");
    // kill -9 and restart on its own data directory: everything acknowledged is there.
    back.signal(libc::SIGKILL);
    back.wait_exit(Duration::from_secs(5));
    let again = server("again", bp, &["--data-dir", bdir.to_str().expect("utf8")]);
    wait_state(bp, "active", Duration::from_secs(10));
    assert_eq!(status(bp).get("keys").map(String::as_str), Some("32"), "{:?}", status(bp));
    drop(again);
}

#[test]
fn a_client_that_does_not_read_its_snapshot_is_bounded_and_counted() {
    let p = free_port_block(3);
    let _s = server("server", p, &["--snapshot-hwm-msgs", "10", "--max-value-bytes", "70000"]);
    // 800 values of 64 KiB: 50 MiB, far more than the socket buffers between us hold.
    let c = synced(&[p], "");
    let big = vec![b'x'; 64 * 1024];
    let last = (0..800).map(|i| c.set(format!("/big/{i:04}"), big.clone(), None).expect("set")).last();
    wait_all_acked(&c, last.expect("uuid"));
    let ctx = zmq::Context::new();
    let stuck = ctx.socket(zmq::DEALER).expect("dealer");
    stuck.set_linger(0).expect("linger");
    stuck.set_rcvhwm(1).expect("rcvhwm");
    stuck.set_rcvbuf(4096).expect("rcvbuf");
    stuck.connect(&ep(p)).expect("connect");
    stuck.send_multipart([&b"ICANHAZ?"[..], b""], 0).expect("icanhaz");
    // It never reads: the server's queue to it reaches the bound and the snapshot is abandoned.
    wait_until(Duration::from_secs(20), "the stuck snapshot to be abandoned", || {
        status(p).get("snapshots_abandoned").is_some_and(|n| n != "0")
    });
    // Everyone else is served in full.
    let other = synced(&[p], "/big/");
    assert_eq!(other.dump(Vec::new()).expect("dump").len(), 800);
    assert_eq!(status(p).get("state").map(String::as_str), Some("active"));
}

#[test]
fn a_client_that_leaves_before_its_snapshot_is_counted_as_gone_not_as_a_full_queue() {
    // Before: 5 DEALERs that sent ICANHAZ? and closed at once, against a server holding 20 keys
    // with room for 1M messages each, were counted in snapshots_abandoned and said as clients
    // that "did not read it while its queue was full": ROUTER_MANDATORY's EHOSTUNREACH (the peer
    // is gone) was taken for EAGAIN (its queue stayed full).
    let (p, _s) = standalone();
    let c = synced(&[p], "");
    set_all_acked(&c, "/k/", 20, "v");
    let ctx = zmq::Context::new();
    let gone = |s: &BTreeMap<String, String>| s.get("snapshots_client_gone").and_then(|n| n.parse::<u64>().ok());
    // Whether a reply finds its client gone is libzmq's timing: a few rounds make it near certain.
    for round in 0..50 {
        let dealers: Vec<zmq::Socket> = (0..5)
            .map(|_| {
                let d = ctx.socket(zmq::DEALER).expect("dealer");
                d.set_linger(1000).expect("linger"); // the request still goes out after close
                d.connect(&ep(p)).expect("connect");
                d.send_multipart([&b"ICANHAZ?"[..], b""], 0).expect("icanhaz");
                d
            })
            .collect();
        drop(dealers);
        let st = status(p);
        assert_eq!(st.get("snapshots_abandoned").map(String::as_str), Some("0"), "round {round}: {st:?}");
        if gone(&st).is_some_and(|n| n > 0) {
            return;
        }
    }
    // Every reply may yet have beaten its client's close (then each was sent in full).
    let st = status(p);
    assert!(gone(&st).is_some(), "STATUS reports snapshots_client_gone: {st:?}");
    assert_eq!(st.get("snapshots_abandoned").map(String::as_str), Some("0"), "{st:?}");
}

#[test]
fn ctrl_c_ends_a_set_the_server_never_acknowledges() {
    // A raw CHP server (not mdsub's) that serves an empty snapshot and takes updates on its
    // collector but never publishes them: `clone-client set` waits for the acknowledgement up to
    // --timeout. Ctrl-C ends that wait at once (before, the first one was ignored until --timeout).
    let p = free_port_block(3);
    let stop = Arc::new(AtomicBool::new(false));
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let ctx = zmq::Context::new();
            let (router, _publisher, collector) = raw_server(&ctx, p);
            let end = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let mut items = [router.as_poll_item(zmq::POLLIN), collector.as_poll_item(zmq::POLLIN)];
                zmq::poll(&mut items, 20).expect("poll");
                if items[0].is_readable() {
                    let f = router.recv_multipart(0).expect("recv");
                    if f.len() == 3 && f[1] == b"ICANHAZ?" {
                        let mut m = vec![f[0].clone()];
                        m.extend(chp_frames(b"KTHXBAI", 0, b"", b"", &f[2]));
                        router.send_multipart(m, 0).expect("kthxbai");
                    }
                }
                if items[1].is_readable() {
                    let f = collector.recv_multipart(0).expect("recv");
                    let _ = got_tx.send(f[0].clone());
                }
            }
        })
    };
    let mut cmd = mdsub();
    cmd.args(["clone-client", "--store", &ep(p), "--timeout", "60s", "set", "/k", "v"])
        .stderr(std::process::Stdio::piped());
    let mut client = Proc::spawn("clone-client", &mut cmd);
    let err = lines_of(client.child.stderr.take().expect("stderr piped"));
    // The update reached the collector: the client is now waiting for its acknowledgement.
    let key = got_rx.recv_timeout(Duration::from_secs(20)).expect("the update reached the collector within 20 s");
    assert_eq!(key, b"/k");
    client.signal(2);
    let status = client.wait_exit(Duration::from_secs(5));
    let said: Vec<String> = std::iter::from_fn(|| err.recv_timeout(Duration::from_secs(2)).ok()).collect();
    stop.store(true, Ordering::Relaxed);
    server.join().expect("raw server");
    assert_eq!(status.code(), Some(130), "stderr: {said:?}");
    assert!(said.iter().any(|l| l == "mdsub: interrupted"), "says it was interrupted: {said:?}");
}

#[test]
fn a_data_dir_that_is_a_file_is_refused_in_one_line() {
    // Before: `clone server stopped: clone-server: FILE: File exists (os error 17) while creating
    // the data directory`.
    let dir = common::temp_dir("clone-datadir-file");
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"x").expect("write file");
    let p = free_port_block(3);
    let file_arg = file.to_str().expect("utf-8 path");
    let (code, _out, err) = run_within(
        "clone-server",
        mdsub().args(["clone-server", "--endpoint", &ep(p), "--data-dir", file_arg]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(err.matches("clone-server").count(), 1, "the role said once: {err}");
    assert!(!err.contains("os error"), "{err}");
}

/// Issue bstar15-1: two servers given one --data-dir both started, each acknowledged its sets,
/// and after a restart only the second's keys were there. The second is refused in one line
/// naming the directory (exit 1); the first keeps it and its keys.
#[test]
fn a_data_dir_in_use_by_another_server_is_refused_in_one_line() {
    let dir = common::temp_dir("clone-datadir-shared");
    let dd = dir.join("same");
    let dd = dd.to_str().expect("utf-8 path");
    let (p1, p2) = (free_port_block(3), free_port_block(3));
    let _first = server("first", p1, &["--data-dir", dd]);
    let c = synced(&[p1], "");
    set_all_acked(&c, "/first/", 3, "v");
    let (code, _out, err) = run_within(
        "second clone-server",
        mdsub().args(["clone-server", "--endpoint", &ep(p2), "--data-dir", dd]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].contains(dd) && lines[0].contains("another clone server is using this data directory"), "{err}");
    assert_eq!(status(p2), BTreeMap::new(), "the second does not serve");
    set_all_acked(&c, "/first/later", 1, "v");
    assert_eq!(status(p1).get("keys").map(String::as_str), Some("4"), "the first keeps serving");
}

/// Issue bstar15-2: a backup whose data dir is newer than the active's (it served while the
/// primary was down) recovered 44 keys at sequence 44, synced to the restarted primary's
/// snapshot at 39, and said only `passive: in sync with 39 keys at sequence 39`: 5 acknowledged
/// updates gone. It says so with the counts, keeps its files aside first, and they serve the
/// newer map again (the recovery docs/CLONE.md gives).
#[test]
fn a_backup_newer_than_the_active_says_so_and_keeps_its_files_aside() {
    let dir = common::temp_dir("clone-backup-newer");
    let (da, db) = (dir.join("a"), dir.join("b"));
    let (da_s, db_s) = (da.to_str().expect("utf8"), db.to_str().expect("utf8"));
    let (pp, bp) = (free_port_block(4), free_port_block(4));
    let hb = ["--heartbeat-interval", "100ms"];
    let mut prim = primary(pp, bp, &["--data-dir", da_s, hb[0], hb[1]]);
    let mut back = backup(bp, pp, &["--data-dir", db_s, hb[0], hb[1]]);
    wait_settled(pp, bp);
    let c = synced(&[pp, bp], "");
    set_all_acked(&c, "/k/old", 4, "v");
    wait_until(Duration::from_secs(5), "the backup to replicate", || {
        status(bp).get("keys").map(String::as_str) == Some("4")
    });
    // The primary dies; the backup takes over on the client's vote and acknowledges 5 more.
    prim.signal(9);
    prim.wait_exit(Duration::from_secs(5));
    set_all_acked(&c, "/k/new", 5, "v");
    let newer = status(bp);
    assert_eq!(newer.get("keys").map(String::as_str), Some("9"));
    let newer_seq: u64 = newer.get("sequence").and_then(|s| s.parse().ok()).expect("sequence");
    drop(c);
    back.signal(9);
    back.wait_exit(Duration::from_secs(5));
    // Both restart: the primary serves its older map, the backup follows it.
    let _prim = primary(pp, bp, &["--data-dir", da_s, hb[0], hb[1]]);
    wait_state(pp, "primary", Duration::from_secs(10));
    let (back, err) = server_said("backup", bp, &["--backup", "--peer", &ep(pp), "--data-dir", db_s, hb[0], hb[1]]);
    let mut all = Vec::new();
    let line = said_until(&err, &mut all, Duration::from_secs(20), "behind this server's");
    let theirs: u64 = status(pp).get("sequence").and_then(|s| s.parse().ok()).expect("sequence");
    assert!(
        line.contains(&format!(
            "at sequence {theirs}, behind this server's {newer_seq}: the {} updates",
            newer_seq - theirs
        )),
        "{line}"
    );
    let kept = said_until(&err, &mut all, Duration::from_secs(10), "kept aside as");
    assert!(kept.contains(db_s), "names the directory: {kept}");
    wait_until(Duration::from_secs(10), "the backup to follow the active", || {
        status(bp).get("keys").map(String::as_str) == Some("4")
    });
    drop(back);
    // The copies hold the newer map: moved into a directory of their own, they serve it.
    let restored = dir.join("restored");
    std::fs::create_dir_all(&restored).expect("mkdir");
    for entry in std::fs::read_dir(&db).expect("data dir") {
        let name = entry.expect("entry").file_name().into_string().expect("utf8");
        for file in ["snapshot", "log"] {
            if name.starts_with(&format!("{file}.behind-")) {
                std::fs::copy(db.join(&name), restored.join(file)).expect("copy");
            }
        }
    }
    let sp = free_port_block(3);
    let _alone = server("restored", sp, &["--data-dir", restored.to_str().expect("utf8")]);
    let keys: Vec<String> =
        snapshot_of(sp).into_iter().map(|(k, _)| String::from_utf8_lossy(&k).into_owned()).collect();
    assert_eq!(keys.len(), 9, "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("/k/new")), "{keys:?}");
}

/// Pids of the processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid …: the fields after the last ')'.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            ppid == Some(parent)
        })
        .collect()
}

#[test]
fn clone_bench_ended_by_sigterm_leaves_no_server_behind() {
    // clone-bench starts a Binary Star pair of clone-server processes for each failover run.
    // SIGTERM in its first run ends clone-bench with nothing to show (130), its servers with it;
    // before, its servers lived on (parent 1, ports held).
    let mut cmd = mdsub();
    // `--idle yield`: the servers it starts run with it too (before, `--idle` was refused).
    cmd.args(["clone-bench", "--updates", "1k", "--keys", "1k", "--runs", "1", "--silence", "30s", "--idle", "yield"]);
    let mut bench = Proc::spawn("clone-bench", cmd.stdout(std::process::Stdio::null()));
    let pid = bench.pid();
    let mut servers = Vec::new();
    wait_until(Duration::from_secs(60), "clone-bench to start its two servers", || {
        servers = children_of(pid);
        servers.len() >= 2
    });
    for s in &servers {
        let args = std::fs::read(format!("/proc/{s}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = args.split(|&b| b == 0).collect();
        assert!(
            args.windows(2).any(|w| w == [&b"--idle"[..], &b"yield"[..]]),
            "server {s} runs with the bench's --idle: {:?}",
            String::from_utf8_lossy(&args.join(&b' '))
        );
    }
    bench.signal(15);
    let status = bench.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    wait_until(Duration::from_secs(10), "the servers to end with clone-bench", || {
        servers.iter().all(|s| {
            let state = std::fs::read_to_string(format!("/proc/{s}/stat")).unwrap_or_default();
            // Gone, or a zombie nobody reaps yet (its parent is init now).
            state.is_empty() || state.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    });
}

#[test]
fn a_dead_clone_server_is_said_not_up_once_naming_both_its_ports() {
    // Before: one "not up" line for the client's subscriber (P+1) and another for its
    // collector link (P+2), for one server that is not running.
    let p_base = common::unserved_port_block(3);
    let srv = format!("tcp://127.0.0.1:{p_base}");
    let mut cmd = mdsub();
    cmd.args(["clone-client", "--store", &srv, "--timeout", "60s", "get", "/k"]);
    let mut p = Proc::spawn("clone-client", cmd.stderr(std::process::Stdio::piped()));
    let err = lines_of(p.child.stderr.take().expect("piped stderr"));
    // Said 5 s after the first attempt; a loaded box services the monitors late.
    let first = wait_line(&err, Duration::from_secs(30), "a 'not up' line", |l| l.contains("not up after"));
    // Ctrl-C: the client says on its way out whatever it still held, so every line is in.
    p.signal(2);
    let status = p.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "interrupted");
    let rest: Vec<String> = err.iter().collect();
    let said: Vec<&str> = std::iter::once(first.as_str())
        .chain(rest.iter().map(String::as_str).filter(|l| l.contains("not up after")))
        .collect();
    assert_eq!(said.len(), 1, "one line for one server: {said:?} {rest:?}");
    for port in [p_base, p_base + 1, p_base + 2] {
        assert!(said[0].contains(&format!("127.0.0.1:{port}")), "names {port}: {}", said[0]);
    }
    assert!(said[0].contains("nothing answers there"), "{}", said[0]);
}

#[test]
fn clone_bench_json_is_one_stamped_object_with_the_update_rates_and_snapshot_time() {
    // Before, clone-bench had no --json: its result was only text lines, unstamped for a plot.
    let args = ["clone-bench", "--updates", "2k", "--keys", "2k", "--runs", "1", "--skip-failover", "--json"];
    let (code, out, err) = run_within("clone-bench", mdsub().args(args), Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    let r = common::bench_result("clone-bench", &out);
    assert_eq!((r["settings"]["updates"].as_u64(), r["settings"]["snapshot_keys"].as_u64()), (Some(2000), Some(2000)));
    assert_eq!(r["settings"]["failover"], false, "{r}");
    let names: Vec<&str> =
        r["runs"].as_array().expect("runs").iter().filter_map(|x| x["subscriber"].as_str()).collect();
    assert_eq!(names, ["baseline", "raw-subscriber", "clone-client", "clone-client/snapshot"], "{r}");
    assert!(r["runs"].as_array().expect("runs").iter().all(|x| x.get("error").is_none()), "{r}");
    let rate = |s: &str| common::medians_of(&r, s)["msgs_per_sec"].as_f64().unwrap_or_else(|| panic!("{s}: {r}"));
    let (base, raw, client) = (rate("baseline"), rate("raw-subscriber"), rate("clone-client"));
    assert!(base > 0.0 && raw > 0.0 && client > 0.0, "{r}");
    let snapshot_s = common::medians_of(&r, "clone-client/snapshot")["seconds"].as_f64();
    assert!(snapshot_s.is_some_and(|s| s > 0.0 && s < 60.0), "{r}");
    assert!((common::ratio(&r, "clone-client / baseline") - client / base).abs() < 1e-9, "{r}");
    assert!((common::ratio(&r, "raw-subscriber / baseline") - raw / base).abs() < 1e-9, "{r}");
    assert!(r.get("error").is_none(), "{r}");
    // The human lines went to stderr.
    assert!(err.contains("median: snapshot of 2000 keys"), "{err}");
    // The agents' idle strategy is a setting: the default, a background client's `block`.
    assert_eq!(r["settings"]["idle"]["kind"], "block", "{r}");
}

#[test]
fn clone_bench_interrupted_after_a_whole_run_reports_and_saves_its_whole_runs() {
    // Before, a SIGINT after run 1 threw it away: `mdsub: interrupted`, exit 130, no medians, no
    // --save file (and it measured every baseline run first, so no run was whole until the
    // last variant's first run). Now each run measures every variant in turn, and clone-bench
    // keeps its whole runs as bench does: their medians and ratios, marked, printed, saved, exit 0.
    let dir = common::temp_dir("clone-bench-interrupted");
    let save = dir.join("clone.json");
    let runs = 1000;
    let mut cmd = mdsub();
    cmd.args(["clone-bench", "--updates", "2k", "--keys", "2k", "--skip-failover", "--json", "--save"])
        .arg(&save)
        .args(["--runs", &runs.to_string()]);
    let mut p = LineProc::spawn_with_stderr("clone-bench", &mut cmd);
    let err = p.stderr.take().expect("stderr");
    // Run 1 is whole once its last measurement (the snapshot, with --skip-failover) is said.
    let (mut said, end) = (Vec::new(), Instant::now() + Duration::from_secs(60));
    while !said.last().is_some_and(|l: &String| l.starts_with("  snapshot run 1: ")) {
        match err.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) => said.push(l),
            Err(e) => panic!("no `snapshot run 1` line within 60 s ({e}): {said:?}"),
        }
    }
    p.proc.signal(2);
    let (status, out) = p.finish(Duration::from_secs(60));
    said.extend(common::rest_lines(&err, Duration::from_secs(5)));
    let (r, done) = common::interrupted_result("clone-bench", status, &out, &said, &save, runs);
    // Each variant once per whole run, none of the run the signal cut.
    let measured = r["runs"].as_array().expect("runs");
    let variants = ["baseline", "raw-subscriber", "clone-client", "clone-client/snapshot"];
    assert_eq!(measured.len(), variants.len() * done, "{r}");
    for v in variants {
        assert_eq!(measured.iter().filter(|m| m["subscriber"] == v).count(), done, "{v}: {r}");
        assert!(common::medians_of(&r, v).is_object(), "{v}: {r}");
    }
    assert!(common::ratio(&r, "clone-client / baseline") > 0.0, "{r}");
    assert!(said.iter().any(|l| l.starts_with("median: snapshot of 2000 keys")), "{said:?}");
}

#[test]
fn clone_bench_runs_its_agents_with_the_idle_strategy_given() {
    // Before, clone-bench had no --idle (its servers and clients always blocked 100 ms at a
    // time); with `spin` every agent spins, and the run still completes on a shared box.
    let args = [
        "clone-bench",
        "--updates",
        "2k",
        "--keys",
        "2k",
        "--runs",
        "1",
        "--skip-failover",
        "--idle",
        "spin",
        "--json",
    ];
    let (code, out, err) = run_within("clone-bench", mdsub().args(args), Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    let r = common::bench_result("clone-bench", &out);
    assert_eq!(r["settings"]["idle"], serde_json::json!({"kind": "spin"}), "{r}");
    assert!(err.contains(", idle spin"), "said with the settings: {err}");
    assert!(r.get("error").is_none(), "{r}");
    let names: Vec<&str> =
        r["medians"].as_array().expect("medians").iter().filter_map(|x| x["subscriber"].as_str()).collect();
    assert_eq!(names, ["baseline", "raw-subscriber", "clone-client", "clone-client/snapshot"], "{r}");
}

/// Issue bstar13-1: one frame over the 4 KiB limit on the Binary Star state link made libzmq
/// drop the backup's connecting SUB for good (it does not reconnect after a protocol error):
/// no heartbeat was heard again, nothing was said, and a client vote later made the backup
/// active beside a healthy primary. The link is watched: the loss is said with its reason and
/// counted in STATUS, and the link is connected again, so the next frame is read.
#[test]
fn an_oversized_frame_on_the_state_link_is_said_counted_and_the_link_comes_back() {
    let ctx = zmq::Context::new();
    // The "peer's" state publisher, in the test's hands: an XPUB shows each subscription, so
    // the test knows when the backup's SUB is connected (again) without sleeping.
    let state = common::watching_xpub(&ctx);
    state.set_rcvtimeo(10_000).expect("rcvtimeo");
    let state_ep = mdsub::zmqx::bind_resolved(&state, "tcp://127.0.0.1:*").expect("bind");
    let bp = free_port_block(4);
    let peer = ep(common::unserved_port_block(4));
    let (mut back, err) = server_said("backup", bp, &["--backup", "--peer", &peer, "--peer-state", &state_ep]);
    assert_eq!(state.recv_bytes(0).expect("the backup subscribes"), b"\x01");
    state.send(&b"x"[..], 0).expect("send");
    wait_until(Duration::from_secs(10), "the first malformed heartbeat to be counted", || {
        status(bp).get("malformed_heartbeats").map(String::as_str) == Some("1")
    });
    state.send(vec![b'4'; 5000], 0).expect("send oversized");
    let lost = wait_line(&err, Duration::from_secs(10), "the state link's loss", |l| l.contains("lost"));
    assert!(
        lost.contains("clone-server peer state: link") && lost.contains(&state_ep) && lost.contains("protocol_error"),
        "names the link, its endpoint and the reason: {lost}"
    );
    // Its subscription comes again with the new connection (`\x01`). The dropped one's end
    // (`\x00`) may come before it or not at all: a verbose XPUB says an unsubscribe only when no
    // other pipe holds the topic, and the new pipe can be attached before the old one's end is
    // processed (CI saw the subscribe first).
    let again = (0..2).map(|_| state.recv_bytes(0).expect("the backup subscribes again")).find(|m| m == b"\x01");
    assert!(again.is_some(), "re-established: a new subscription");
    state.send(&b"x"[..], 0).expect("send");
    wait_until(Duration::from_secs(10), "the next heartbeat to be read", || {
        status(bp).get("malformed_heartbeats").map(String::as_str) == Some("2")
    });
    let st = status(bp);
    assert_eq!(st.get("state_link").map(String::as_str), Some("up"), "{st:?}");
    assert_eq!(st.get("state_link_lost_protocol_error").map(String::as_str), Some("1"), "{st:?}");
    assert_eq!(st.get("state_link_reestablished").map(String::as_str), Some("1"), "{st:?}");
    // A peer that goes away is counted on the state link but said by the peer link's lines
    // alone (one dead peer, not two lines for it).
    drop(state);
    wait_until(Duration::from_secs(10), "the plain loss to be counted", || {
        status(bp).get("state_link_lost_disconnected").map(String::as_str) == Some("1")
    });
    back.signal(15);
    back.wait_exit(Duration::from_secs(10));
    let rest = common::rest_lines(&err, Duration::from_secs(2));
    assert!(!rest.iter().any(|l| l.contains("lost (disconnected)")), "{rest:?}");
}

/// The lines `rx` brings, each kept in `all`, until one matches `pred` (within `deadline`).
fn said_until(rx: &std::sync::mpsc::Receiver<String>, all: &mut Vec<String>, deadline: Duration, pred: &str) -> String {
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                all.push(line.clone());
                if line.contains(pred) {
                    return line;
                }
            }
            Err(_) => panic!("no line with {pred:?} within {deadline:?}; said: {all:?}"),
        }
    }
}

/// Issue bstar15-3 (bstar13-2's split brain, which it replaces): a 5 s SIGSTOP of the active
/// server under load stopped BOTH servers in 2 of 6 runs: resumed, the frozen one sent its
/// overdue ACTIVE heartbeat before libzmq handed it the survivor's, so the survivor heard it
/// first and stopped (`split brain`), then so did it. A server that finds it did not run for
/// longer than its peer waits is held: it reads what the peer says first, and steps down. Each
/// server in turn is frozen (SIGSTOP by pid) while a client keeps setting, until the other has
/// taken over on the client's vote, then thawed (SIGCONT): the survivor keeps serving, the
/// thawed one comes back passive, re-syncs, and neither stops.
#[test]
fn a_paused_active_comes_back_passive_and_the_survivor_keeps_serving() {
    let pp = free_port_block(4);
    let bp = free_port_block(4);
    let hb = ["--heartbeat-interval", "100ms"];
    let (prim, prim_err) = server_said("primary", pp, &["--primary", "--peer", &ep(bp), hb[0], hb[1]]);
    let (back, back_err) = server_said("backup", bp, &["--backup", "--peer", &ep(pp), hb[0], hb[1]]);
    let mut procs = [prim, back];
    let errs = [prim_err, back_err];
    let mut said: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    wait_settled(pp, bp);
    let c = Client::start(ClientConfig {
        servers: vec![ep(pp), ep(bp)],
        subtree: "/load/".into(),
        silence_ms: 500,
        ..ClientConfig::default()
    })
    .expect("client starts");
    c.wait_synced(Duration::from_secs(5)).expect("synced");
    let mut n = 0u64;
    let mut load = |c: &Client| {
        n += 1;
        c.set(format!("/load/{}", n % 50), n.to_string(), None).expect("set")
    };
    // The primary first (frozen 0, survivor 1), then the backup that took over from it.
    for (frozen, survivor) in [(0usize, 1usize), (1, 0)] {
        let ports = [pp, bp];
        procs[frozen].signal(19); // SIGSTOP
        let t0 = Instant::now();
        wait_until(Duration::from_secs(10), "the survivor to take over on the client's vote", || {
            load(&c);
            status(ports[survivor]).get("state").map(String::as_str) == Some("active")
        });
        // Frozen 1.5 s in all, well past the peer's 200 ms, under load.
        while t0.elapsed() < Duration::from_millis(1500) {
            load(&c);
            std::thread::sleep(Duration::from_millis(20)); // pacing the load, not a handshake
        }
        procs[frozen].signal(18); // SIGCONT
        said_until(&errs[frozen], &mut said[frozen], Duration::from_secs(10), "did not run for");
        said_until(&errs[frozen], &mut said[frozen], Duration::from_secs(10), "the peer took over");
        wait_state(ports[frozen], "passive", Duration::from_secs(10));
        for p in procs.iter_mut() {
            assert!(matches!(p.child.try_wait(), Ok(None)), "{} stopped: {said:?}", p.name);
        }
        assert_eq!(status(ports[survivor]).get("state").map(String::as_str), Some("active"));
        // The survivor serves, and the thawed one follows it.
        let u = load(&c);
        c.wait_acked(u, Duration::from_secs(10)).expect("the survivor acknowledges");
        wait_until(Duration::from_secs(10), "the thawed server to replicate the survivor's map", || {
            let (a, b) = (status(pp), status(bp));
            a.contains_key("sequence") && a.get("sequence") == b.get("sequence") && a.get("keys") == b.get("keys")
        });
        assert_eq!(status(ports[frozen]).get("pauses").map(String::as_str), Some("1"));
    }
    for (rx, all) in errs.iter().zip(said.iter_mut()) {
        all.extend(rx.try_iter());
        assert!(all.iter().all(|l| !l.contains("split brain")), "{all:?}");
    }
}

/// Issue bstar13-3: with the primary dead, every one-shot `clone-client set` naming both servers
/// waited out the retry time (500 ms) on the dead one before asking the backup, and nothing said
/// why. A server that refuses connections is left at once, and the command says once which
/// server served it and why the first did not.
#[test]
fn a_one_shot_set_past_a_dead_primary_says_who_served_it_without_waiting() {
    let (pp, mut prim, bp, _back) = settled_pair();
    prim.signal(9);
    prim.wait_exit(Duration::from_secs(5));
    let run = |value: &str| {
        let mut cmd = mdsub();
        cmd.args(["clone-client", "--store", &ep(pp), "--store", &ep(bp), "--timeout", "10s"]);
        cmd.args(["set", "/failover/k", value]);
        let t0 = Instant::now();
        let (code, out, err) = run_within("clone-client", &mut cmd, Duration::from_secs(30));
        assert_eq!(code, Some(0), "{out}{err}");
        (t0.elapsed(), err)
    };
    // The first set is the vote that makes the backup active.
    run("1");
    let (took, err) = run("2");
    let said: Vec<&str> = err.lines().collect();
    assert_eq!(said.len(), 1, "one line: {said:?}");
    assert!(
        said[0].contains(&format!("served by {}", ep(bp)))
            && said[0].contains(&format!("{} refuses connections", ep(pp))),
        "{}",
        said[0]
    );
    eprintln!("a set past the dead primary took {took:?}");
}

/// Issue bstar13-3: a `watch` (and the engine's store link) said only `link …:P+1 lost` when the
/// active server died, never which server served it next; `failovers=1` showed only in the exit
/// line. It says the failover as it happens.
#[test]
fn a_watch_says_which_server_serves_it_after_a_failover() {
    let pp = free_port_block(4);
    let bp = free_port_block(4);
    let hb = ["--heartbeat-interval", "200ms"];
    let mut prim = primary(pp, bp, &hb);
    let _back = backup(bp, pp, &hb);
    wait_settled(pp, bp);
    let c = synced(&[pp], "");
    set_all_acked(&c, "/w/", 1, "v");
    let mut cmd = mdsub();
    cmd.args(["clone-client", "--store", &ep(pp), "--store", &ep(bp), "--silence", "1s", "watch", "/w/"]);
    let watch = LineProc::spawn_with_stderr("watch", &mut cmd);
    watch.line_starting("initial", Duration::from_secs(10));
    prim.signal(9);
    prim.wait_exit(Duration::from_secs(5));
    let err = watch.stderr.as_ref().expect("stderr piped");
    let line = wait_line(err, Duration::from_secs(20), "the failover line", |l| l.contains("failover 1:"));
    assert!(
        line.contains(&format!("failover 1: now served by {}", ep(bp))) && line.contains(&ep(pp)),
        "names the new server and the one left: {line}"
    );
}

/// Issue bstar13-3: `--store` naming only a passive server waited out `--timeout` and said
/// `no clone server answered`, though that server answers STATUS: it says that it is passive
/// and that no active server answered, and that no server served a snapshot (not that none
/// answered: that one did).
#[test]
fn a_client_of_the_passive_server_alone_is_told_it_is_passive() {
    let (_pp, _prim, bp, _back) = settled_pair();
    let mut cmd = mdsub();
    cmd.args(["clone-client", "--store", &ep(bp), "--timeout", "1s", "get", "/k"]);
    let (code, out, err) = run_within("clone-client", &mut cmd, Duration::from_secs(30));
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(err.contains(&format!("no clone server served a snapshot ({}) within 1s", ep(bp))), "{err}");
    assert!(!err.contains("no clone server answered"), "{err}");
    assert!(err.contains(&format!("{} answers as passive", ep(bp))), "{err}");
    assert!(err.contains("no active server answered"), "{err}");
}

/// A fsync of the update log that takes 3 s (a busy disk; here a sync the test holds) must not
/// stop the serving thread. Before, the fsync ran inline: for its whole length the active server
/// sent no HUGZ and no heartbeat, answered no STATUS or snapshot request, acknowledged no update,
/// then took its own stall for a pause of the process (`did not run for … (SIGSTOP, a VM pause)`)
/// and held itself two heartbeats more. Now the syncer thread runs it: everything keeps going,
/// and the slow sync is counted and said once it is done.
#[test]
fn a_slow_log_fsync_does_not_stop_the_server() {
    use mdsub::agent::{IdleStrategy, RunSpec, Runner, StopFlag};
    use mdsub::clone::bstar::Role;
    use mdsub::clone::server::{PairConfig, Server, ServerConfig};

    const HELD: Duration = Duration::from_secs(3);
    let dir = common::temp_dir("clone-slow-sync");
    let (pp, bp) = (free_port_block(4), free_port_block(4));
    let _back = backup(bp, pp, &["--heartbeat-interval", "100ms"]);
    let cfg = ServerConfig {
        port: pp,
        pair: Some(PairConfig {
            role: Role::Primary,
            peer: ep(bp),
            peer_state: ep(bp + 3),
            state_bind: ep(pp + 3),
            heartbeat_ms: 100,
        }),
        data_dir: Some(dir.to_path_buf()),
        hugz_interval_ms: 100,
        fsync_interval_ms: 10,
        verbose: false,
        ..ServerConfig::default()
    };
    // The first sync with records to make durable is held until the test lets it go.
    let (entered_tx, entered) = crossbeam::channel::bounded::<()>(1);
    let (release, released) = crossbeam::channel::bounded::<()>(1);
    let mut first = true;
    let sync: mdsub::clone::syncer::LogSync = Box::new(move |f: &std::fs::File| {
        if std::mem::take(&mut first) {
            let _ = entered_tx.send(());
            let _ = released.recv_timeout(Duration::from_secs(30));
        }
        f.sync_data()
    });
    let server = Server::with_log_sync(cfg, Default::default(), sync).expect("primary starts");
    let stop = StopFlag::new();
    let handle = Runner::start(RunSpec::unpinned(IdleStrategy::default()), stop.clone(), server).expect("runs");
    wait_state(pp, "active", Duration::from_secs(10));
    wait_state(bp, "passive", Duration::from_secs(10));

    let ctx = zmq::Context::new();
    // What a client's --silence watches: any KVPUB or HUGZ.
    let feed = ctx.socket(zmq::SUB).expect("sub");
    feed.set_linger(0).expect("linger");
    feed.set_subscribe(b"").expect("subscribe");
    feed.connect(&ep(pp + 1)).expect("connect");
    let c = synced(&[pp, bp], "/slow/");
    let u = c.set("/slow/first", "1", None).expect("set");
    c.wait_acked(u, Duration::from_secs(5)).expect("acknowledged");
    entered.recv_timeout(Duration::from_secs(10)).expect("the server asked for a sync of its log");

    // While the sync is held: the feed keeps going (updates, HUGZ when idle), STATUS is answered, snapshots are served,
    // updates are acknowledged, and the backup does not take over.
    let end = Instant::now() + HELD;
    let (mut heard, mut longest_gap, mut last) = (0u32, Duration::ZERO, Instant::now());
    let mut k = 0;
    while Instant::now() < end {
        if feed.poll(zmq::POLLIN, 0).expect("poll") > 0 {
            feed.recv_multipart(0).expect("recv");
            heard += 1;
            longest_gap = longest_gap.max(last.elapsed());
            last = Instant::now();
            continue;
        }
        let st = status(pp);
        assert_eq!(st.get("state").map(String::as_str), Some("active"), "STATUS answered while the sync is held");
        assert_eq!(st.get("syncs").map(String::as_str), Some("0"), "the sync is still held");
        assert_eq!(status(bp).get("state").map(String::as_str), Some("passive"), "the backup did not take over");
        k += 1;
        let u = c.set(format!("/slow/{k}"), "v", None).expect("set");
        c.wait_acked(u, Duration::from_secs(1)).expect("an update is acknowledged within 1 s while the sync is held");
        assert_eq!(snapshot_of(pp).len(), k + 1, "a snapshot is served while the sync is held");
    }
    longest_gap = longest_gap.max(last.elapsed());
    assert!(heard >= 10 && longest_gap < Duration::from_secs(1), "heard {heard}, longest silence {longest_gap:?}");

    release.send(()).expect("let the sync go");
    wait_until(Duration::from_secs(5), "the slow sync to be counted", || {
        status(pp).get("slow_syncs").map(String::as_str) == Some("1")
    });
    let st = status(pp);
    let longest: u64 = st.get("longest_sync_ms").and_then(|v| v.parse().ok()).expect("longest_sync_ms");
    assert!(longest >= HELD.as_millis() as u64, "longest_sync_ms={longest}");
    for key in ["pauses", "disk_stalls", "sync_failures"] {
        assert_eq!(st.get(key).map(String::as_str), Some("0"), "{key}: {st:?}");
    }
    assert_eq!(st.get("state").map(String::as_str), Some("active"));
    drop(c);
    stop.stop();
    handle.join().expect("the primary stops cleanly");
}

/// docs/CLONE.md, "Durability": a compaction's snapshot is written off the serving thread while
/// the server goes on logging to a new log segment, and an acknowledged update survives a crash
/// at any point of it. The server is killed (SIGKILL) while the old segment `log.prev` is still
/// there (the compaction in flight) under a stream of updates; restarted on the same data
/// directory it holds every update a subscriber saw published (its acknowledgement), the ones
/// logged after the switch-over too.
/// Send `rounds` updates of each of `keys` keys `/c/NNNNNN` (100-byte values `rR-NNNNNN-vvv…`,
/// round R) to the server at base port `port`, from a raw CHP client's PUB that never drops (a
/// PUB at its HWM would), once a subscriber to `/c/` on the server's publisher hears its probe.
/// Returns the context (keep it) and that subscriber, unread.
/// The collector socket is returned too: with a linger of 0, closing it would discard every
/// update still queued behind a server slower than the test (a loaded CI host), and the log
/// would then never reach the compaction size.
fn flood_updates(port: u16, keys: u32, rounds: u32) -> (zmq::Context, zmq::Socket, zmq::Socket) {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).expect("sub");
    sub.set_linger(0).expect("linger");
    sub.set_rcvhwm(0).expect("hwm");
    sub.set_subscribe(b"/c/").expect("subscribe");
    sub.connect(&format!("tcp://127.0.0.1:{}", port + 1)).expect("connect");
    let coll = ctx.socket(zmq::PUB).expect("pub");
    coll.set_linger(0).expect("linger");
    coll.set_sndhwm(0).expect("hwm");
    coll.connect(&format!("tcp://127.0.0.1:{}", port + 2)).expect("connect");
    wait_probe_published(&coll, &sub, b"/c/probe");
    let value = |round: u32, i: u32| format!("r{round}-{i:06}-{}", "v".repeat(88)).into_bytes();
    for round in 0..rounds {
        for i in 0..keys {
            let mut uuid = [0u8; 16];
            uuid[..4].copy_from_slice(&round.to_be_bytes());
            uuid[4..8].copy_from_slice(&i.to_be_bytes());
            let key = format!("/c/{i:06}");
            coll.send_multipart(chp_frames(key.as_bytes(), 0, &uuid, b"", &value(round, i)), 0).expect("send");
        }
    }
    (ctx, coll, sub)
}

/// One counter of the server's STATUS (0 when it is not there).
fn status_count(port: u16, name: &str) -> u64 {
    status(port).get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn compactions_are_counted_in_status_with_the_last_length_and_error() {
    // Before: a compaction was said only by a verbose `compacted: …` line; a failed one only in
    // `snapshot_failures`, with a passive's re-sync and a data dir behind.
    let dir = common::temp_dir("clone-compact-status");
    let d = dir.to_str().expect("utf8");
    let p = free_port_block(3);
    let _s = server("server", p, &["--data-dir", d]);
    wait_until(Duration::from_secs(10), "STATUS to count compactions", || {
        let st = status(p);
        st.get("compactions").map(String::as_str) == Some("0") && st.contains_key("last_compaction_error")
    });
    // The compactor cannot create its temp file: a directory stands in its place.
    std::fs::create_dir_all(dir.join("snapshot.tmp").join("in-the-way")).expect("mkdir");
    // 150k updates of 50k keys: the log passes 100k records (twice the map), a compaction is due.
    let (_ctx, _coll, _sub) = flood_updates(p, 50_000, 3);
    wait_until(Duration::from_secs(60), "a compaction to fail", || status_count(p, "compaction_failures") > 0);
    let st = status(p);
    let error = st.get("last_compaction_error").cloned().unwrap_or_default();
    assert!(error.contains("snapshot.tmp") && error.contains("a directory"), "{st:?}");
    assert_eq!(st.get("compactions").map(String::as_str), Some("0"), "{st:?}");
    assert!(dir.join("log.prev").exists(), "the segment is kept for the next try");
    // The way cleared, the next try (after a back-off of a second or two) succeeds.
    std::fs::remove_dir_all(dir.join("snapshot.tmp")).expect("rm");
    wait_until(Duration::from_secs(30), "the compaction to succeed", || status_count(p, "compactions") > 0);
    let st = status(p);
    assert!(st.get("last_compaction_ms").and_then(|v| v.parse::<u64>().ok()).is_some(), "{st:?}");
    assert!(status_count(p, "compaction_failures") >= 1);
    assert!(
        st.get("last_compaction_error").is_some_and(|e| e.contains("snapshot.tmp")),
        "the last error stays: {st:?}"
    );
    assert!(!dir.join("log.prev").exists(), "folded");
}

#[test]
fn a_kill_in_the_middle_of_a_compaction_loses_no_acknowledged_update() {
    const KEYS: u32 = 50_000;
    // 400k updates: the log passes 100k records (twice the map) three times, so three
    // compactions for this thread to catch one of while `log.prev` exists (one compaction, over
    // in tens of ms, was missed now and then by a thread the loaded suite left unscheduled).
    const ROUNDS: u32 = 8;
    let dir = common::temp_dir("clone-compact-kill");
    let d = dir.to_str().expect("utf8");
    let p = free_port_block(3);
    let mut s = server("server", p, &["--data-dir", d]);
    let (_ctx, coll, sub) = flood_updates(p, KEYS, ROUNDS);
    // What the subscriber sees published, key -> the latest round; until `log.prev` shows. A
    // pass takes at most 4096 updates, so `log.prev` is looked for every few ms: draining until
    // the queue was empty, on a loaded machine where the server published as fast as this thread
    // read, looked for it only after both compactions were over (the suite's run failed, `no
    // compaction within 60 s`, while the test alone passed in 2 s). What is left queued is read
    // after the kill.
    let mut acked: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let take = |sub: &zmq::Socket, acked: &mut BTreeMap<Vec<u8>, u32>| {
        for _ in 0..4096 {
            let Ok(f) = sub.recv_multipart(zmq::DONTWAIT) else { break };
            if f.len() == 5 && f[4].first() == Some(&b'r') {
                let round =
                    f[4][1..].iter().take_while(|b| b.is_ascii_digit()).fold(0u32, |r, b| r * 10 + u32::from(b - b'0'));
                let e = acked.entry(f[0].clone()).or_insert(round);
                *e = (*e).max(round);
            }
        }
    };
    let prev = dir.join("log.prev");
    let end = Instant::now() + Duration::from_secs(60);
    while !prev.exists() {
        let rounds = acked.values().max().map_or(0, |r| r + 1);
        assert!(
            Instant::now() < end,
            "no compaction caught within 60 s ({} keys, {rounds} rounds seen published, {} compactions counted)",
            acked.len(),
            status_count(p, "compactions")
        );
        take(&sub, &mut acked);
        sub.poll(zmq::POLLIN, 1).expect("poll");
    }
    s.signal(9);
    s.wait_exit(Duration::from_secs(10));
    // The updates still queued toward the killed server (linger 0) go with their socket: kept,
    // libzmq would deliver them to the restarted server, which could start another compaction
    // and show a new `log.prev` to the check below (it failed so once).
    drop(coll);
    // Everything published before the kill is in the subscriber's queue by now or never will be.
    while sub.poll(zmq::POLLIN, 300).expect("poll") > 0 {
        take(&sub, &mut acked);
    }
    let seen = acked.len();
    assert!(seen > 0);
    let _s = server("server", p, &["--data-dir", d]);
    let recovered: BTreeMap<Vec<u8>, Vec<u8>> = snapshot_of(p).into_iter().collect();
    assert!(!prev.exists(), "the start finished the compaction");
    for (key, round) in &acked {
        let got = recovered.get(key).unwrap_or_else(|| panic!("{} lost", String::from_utf8_lossy(key)));
        let got_round =
            got[1..].iter().take_while(|b| b.is_ascii_digit()).fold(0u32, |r, b| r * 10 + u32::from(b - b'0'));
        assert!(
            got_round >= *round,
            "{}: round {got_round} recovered, {round} acknowledged",
            String::from_utf8_lossy(key)
        );
    }
    eprintln!("compaction kill: {seen} keys acknowledged, all recovered ({} keys)", recovered.len());
}
