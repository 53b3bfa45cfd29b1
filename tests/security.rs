//! Access control: CURVE key files from `mdsub keygen`, a CURVE server with
//! an allow-list of client keys, and a ZAP address allow-list, on real
//! sockets over loopback. Refusals are counted by the ZAP handler.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use std::process::Stdio;

use common::{free_port_block, lines_of, mdsub, run_within, temp_dir, wait_until, LineProc, Proc};
use mdsub::agent::{IdleStrategy, RunSpec, Runner, StopFlag};
use mdsub::security::{load_public_keys, ClientKeys, Keypair, ServerAccess, ZapAgent, ZapCounters};

const DEADLINE: Duration = Duration::from_secs(10);

fn keygen(dir: &Path, name: &str) -> Keypair {
    let (code, out, err) = run_within("keygen", mdsub().arg("keygen").arg(name).arg("--dir").arg(dir), DEADLINE);
    assert_eq!(code, Some(0), "keygen failed: {err}");
    assert!(out.contains("public-key "), "prints the public key: {out}");
    Keypair::load(&dir.join(format!("{name}.key"))).expect("keygen's .key loads")
}

/// A REP echo server under `access` (ZAP handler on its context), on an
/// ephemeral loopback port. Returns the endpoint, the ZAP counters and the
/// server's context and socket (kept alive by the caller).
fn echo_server(
    access: &ServerAccess,
    stop: &StopFlag,
) -> (String, std::sync::Arc<ZapCounters>, zmq::Context, zmq::Socket) {
    let ctx = zmq::Context::new();
    let (zap, counters) = ZapAgent::bind(&ctx, "zap", access.policy()).expect("ZAP handler binds");
    Runner::start(RunSpec::unpinned(IdleStrategy::Block { wait_us: 10_000 }), stop.clone(), zap).expect("zap agent");
    let rep = ctx.socket(zmq::REP).expect("rep");
    access.apply(&rep).expect("server options");
    rep.set_linger(0).expect("linger");
    rep.bind("tcp://127.0.0.1:*").expect("bind");
    let ep = rep.get_last_endpoint().expect("endpoint").expect("utf8 endpoint");
    (ep, counters, ctx, rep)
}

/// Send "ping" from a REQ client and wait `wait` for the echo.
fn ping(endpoint: &str, keys: Option<&ClientKeys>, server: &zmq::Socket, wait: Duration) -> bool {
    let ctx = zmq::Context::new();
    let req = ctx.socket(zmq::REQ).expect("req");
    req.set_linger(0).expect("linger");
    if let Some(k) = keys {
        k.apply(&req).expect("client keys");
    }
    req.connect(endpoint).expect("connect");
    req.send("ping", 0).expect("queue ping");
    let end = std::time::Instant::now() + wait;
    while std::time::Instant::now() < end {
        if let Ok(msg) = server.recv_bytes(zmq::DONTWAIT) {
            server.send(msg, 0).expect("echo");
        }
        if let Ok(reply) = req.recv_bytes(zmq::DONTWAIT) {
            return reply == b"ping";
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn keygen_writes_libzmq_z85_keys_and_refuses_to_overwrite() {
    let dir = temp_dir("sec-keygen");
    let pair = keygen(&dir, "node");
    let public = std::fs::read_to_string(dir.join("node.pub")).unwrap();
    let z85 = public.lines().find_map(|l| l.trim().strip_prefix("public-key = ")).expect("public-key line");
    let z85 = z85.trim_matches('"');
    assert_eq!(z85.len(), 40, "Z85 of 32 bytes, as zmq_curve_keypair writes");
    assert_eq!(zmq::z85_decode(z85).unwrap(), pair.public.0.to_vec(), "libzmq's own Z85 decoder agrees");
    assert!(!public.contains("secret-key"), "the .pub file holds no secret");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("node.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret key file is private");
    let (code, _, err) = run_within("keygen", mdsub().args(["keygen", "node", "--dir"]).arg(&dir), DEADLINE);
    assert_eq!(code, Some(1));
    assert!(err.contains("refusing to overwrite"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn curve_server_serves_allowed_keys_and_counts_refused_ones() {
    let dir = temp_dir("sec-curve");
    let server = keygen(&dir, "server");
    let alice = keygen(&dir, "alice");
    let mallory = keygen(&dir, "mallory");
    let allowed = load_public_keys(&[dir.join("alice.pub")]).expect("allow-list");
    let access = ServerAccess { curve: Some((server.clone(), allowed)), allow_addrs: vec![] };
    let stop = StopFlag::new();
    let (ep, counters, _ctx, rep) = echo_server(&access, &stop);

    let alice_keys = ClientKeys { client: alice, server_public: server.public };
    assert!(ping(&ep, Some(&alice_keys), &rep, DEADLINE), "an allowed key is served");
    assert_eq!(counters.accepted.load(Relaxed), 1);

    let mallory_keys = ClientKeys { client: mallory, server_public: server.public };
    assert!(!ping(&ep, Some(&mallory_keys), &rep, Duration::from_millis(500)), "a key off the list is not served");
    wait_until(DEADLINE, "the refused key to be counted", || counters.refused_key.load(Relaxed) >= 1);

    // A client without CURVE fails libzmq's handshake before ZAP is asked.
    assert!(!ping(&ep, None, &rep, Duration::from_millis(300)), "a plain (NULL) client is not served");
    stop.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zap_address_allow_list_refuses_an_outsider() {
    let access = ServerAccess { curve: None, allow_addrs: vec!["127.0.0.1".parse().unwrap()] };
    let stop = StopFlag::new();
    let (ep, counters, _ctx, rep) = echo_server(&access, &stop);
    assert!(ping(&ep, None, &rep, DEADLINE), "127.0.0.1 is allowed");
    // Connect from a second loopback source address: `tcp://SRC;DST`.
    let port = ep.rsplit(':').next().expect("port");
    let outsider = format!("tcp://127.0.0.2:0;127.0.0.1:{port}");
    assert!(!ping(&outsider, None, &rep, Duration::from_millis(500)), "127.0.0.2 is not served");
    wait_until(DEADLINE, "the outsider to be counted", || counters.refused_address.load(Relaxed) >= 1);
    assert_eq!(counters.accepted.load(Relaxed), 1);
    stop.stop();
}

#[test]
fn info_reports_the_draft_api_and_curve() {
    let (code, out, err) = run_within("info", mdsub().arg("info"), DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("libzmq 4.3.5"), "the pinned libzmq: {out}");
    for cap in ["draft", "curve"] {
        let line =
            out.lines().find(|l| l.trim_start().starts_with(cap)).unwrap_or_else(|| panic!("no {cap} line: {out}"));
        assert!(line.trim_end().ends_with("yes"), "{cap} built in: {out}");
    }
}

fn ep(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

/// `mdsub clone-client` with `args` against `servers`; (exit code, stdout, stderr).
fn clone_client(servers: &[u16], keys: Option<(&Path, &Path)>, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = mdsub();
    cmd.arg("clone-client");
    for p in servers {
        cmd.arg("--server").arg(ep(*p));
    }
    if let Some((key, server)) = keys {
        cmd.arg("--curve-key").arg(key).arg("--server-key").arg(server);
    }
    cmd.args(["--timeout", "3s"]).args(args);
    run_within("clone-client", &mut cmd, Duration::from_secs(20))
}

fn status_state(port: u16, keys: &ClientKeys) -> Option<String> {
    let text = mdsub::clone::server_status_secured(&ep(port), Duration::from_millis(300), Some(keys)).ok()?;
    text.lines().find_map(|l| l.strip_prefix("state=")).map(str::to_string)
}

#[test]
fn a_curve_clone_pair_serves_only_allowed_clients_across_failover() {
    let dir = temp_dir("sec-clone");
    let server_key = keygen(&dir, "server");
    let alice = keygen(&dir, "alice");
    keygen(&dir, "mallory");
    let (pp, bp) = (free_port_block(4), free_port_block(4));
    let secured = |role: &str, port: u16, peer: u16| {
        let mut cmd = mdsub();
        cmd.arg("clone-server").arg("--endpoint").arg(ep(port)).arg(format!("--{role}")).arg("--peer").arg(ep(peer));
        cmd.arg("--curve-key").arg(dir.join("server.key")).arg("--curve-allow").arg(dir.join("alice.pub"));
        // Refusals are said on stderr: read those lines.
        let mut proc = Proc::spawn(role, cmd.stdout(Stdio::null()).stderr(Stdio::piped()));
        let err = proc.child.stderr.take().expect("piped stderr");
        LineProc { proc, lines: lines_of(err) }
    };
    let prim = secured("primary", pp, bp);
    let back = secured("backup", bp, pp);
    let keys = ClientKeys { client: alice, server_public: server_key.public };
    wait_until(DEADLINE, "the primary to be active (CURVE between the pair)", || {
        status_state(pp, &keys).as_deref() == Some("active")
    });
    wait_until(DEADLINE, "the backup to be passive", || status_state(bp, &keys).as_deref() == Some("passive"));

    let (alice_key, server_pub) = (dir.join("alice.key"), dir.join("server.pub"));
    let alice_keys = Some((alice_key.as_path(), server_pub.as_path()));
    let (code, _, err) = clone_client(&[pp, bp], alice_keys, &["set", "/k/one", "v1"]);
    assert_eq!(code, Some(0), "an allowed client sets: {err}");
    let (code, out, err) = clone_client(&[pp, bp], alice_keys, &["get", "/k/one"]);
    assert_eq!((code, out.trim()), (Some(0), "v1"), "an allowed client reads: {err}");

    let mallory_key = dir.join("mallory.key");
    let (code, out, _) = clone_client(&[pp], Some((mallory_key.as_path(), server_pub.as_path())), &["get", "/k/one"]);
    assert_ne!(code, Some(0), "a client key off the list cannot read (out: {out})");
    assert!(!out.contains("v1"));
    let (code, out, _) = clone_client(&[pp], None, &["set", "/k/one", "evil"]);
    assert_ne!(code, Some(0), "a client without keys cannot write (out: {out})");
    prim.line_starting("clone-server: refused 127.0.0.1 (CURVE): client key not allowed", DEADLINE);

    // Failover: the backup takes over and still serves only the allowed key.
    prim.proc.signal(9);
    let (code, _, err) = clone_client(&[pp, bp], alice_keys, &["set", "/k/two", "v2"]);
    assert_eq!(code, Some(0), "set after failover: {err}");
    let (code, out, err) = clone_client(&[bp], alice_keys, &["get", "/k/one"]);
    assert_eq!((code, out.trim()), (Some(0), "v1"), "the acknowledged update survived failover: {err}");
    let (code, _, _) = clone_client(&[bp], None, &["get", "/k/one"]);
    assert_ne!(code, Some(0), "the new active refuses a client without keys");
    drop(back);
    let _ = std::fs::remove_dir_all(&dir);
}
