//! `mdsub profile check` / `show`: a good profile prints resolved; each kind
//! of mistake is one line naming the field and the fix, exit status 1.

mod common;

use std::time::Duration;

use common::{mdsub, run_within};

const TWO_NIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/two-nic-8-core.toml");

fn check(args: &[&str]) -> (Option<i32>, String, String) {
    let mut c = mdsub();
    c.arg("profile").args(args);
    run_within("mdsub profile", &mut c, Duration::from_secs(30))
}

#[test]
fn the_two_nic_profile_checks_for_an_8_core_host_and_resolves() {
    let (code, out, err) = check(&["check", TWO_NIC, "--cores", "0-7"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok for cores 0-7"), "{out}");
    assert!(out.contains("interfaces and [security] files not checked"), "{out}");
    for line in ["shard0-io       core 1", "shard1-reader   core 4", "worker2         core 7"] {
        assert!(out.contains(line), "missing `{line}`: {out}");
    }
}

/// `mdsub profile check` of `text` written to `file` in `dir`.
fn check_text(dir: &std::path::Path, file: &str, text: &str) -> (Option<i32>, String, String) {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write");
    check(&["check", path.to_str().expect("utf8")])
}

/// A profile with `body` replacing the default shard and worker tables.
fn write_profile(dir: &std::path::Path, name: &str, body: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("name = \"{name}\"\nallow_shared_cores = false\n{body}")).expect("write");
    path.to_string_lossy().into_owned()
}

#[test]
fn each_mistake_is_one_line_naming_the_field_and_the_fix() {
    let dir = common::temp_dir("profile-test");
    let ep = "endpoints = [\"tcp://127.0.0.1:5556\"]";
    let cases = [
        ("no-such-core", format!("[[shards]]\n{ep}\nio_core = 4096\n[[workers]]\n"), "shards[0].io_core", "use one of"),
        (
            "core-twice",
            format!("[[shards]]\n{ep}\nreader_core = 0\n[[workers]]\ncore = 0\n"),
            "workers[0].core",
            "allow_shared_cores = true",
        ),
        (
            "no-such-nic",
            format!("[[shards]]\n{ep}\ninterface = \"nosuchnic9\"\n[[workers]]\n"),
            "shards[0].interface",
            "use one of",
        ),
        (
            "bad-endpoint",
            "[[shards]]\nendpoints = [\"tcp://127.0.0.1\"]\n[[workers]]\n".to_string(),
            "shards[0].endpoints[0]",
            "write tcp://HOST:PORT",
        ),
        ("zero-workers", format!("workers = []\n[[shards]]\n{ep}\n"), "workers", "add a [[workers]] table"),
        (
            "inline-two-workers",
            format!("handoff = \"inline\"\n[[shards]]\n{ep}\n[[workers]]\n[[workers]]\n"),
            "handoff",
            "one worker per shard (1 shard(s), 2 worker(s)): give 1 [[workers]] table(s)",
        ),
        (
            // Passed with 1 while --metrics-interval refused anything under 10ms (audit).
            "metrics-interval-1ms",
            format!("metrics_interval_ms = 1\n[[shards]]\n{ep}\n[[workers]]\n"),
            "metrics_interval_ms",
            "1 is out of range: give 10 to 3600000",
        ),
    ];
    for (name, body, field, fix) in cases {
        let path = write_profile(&dir, name, &body);
        let (code, out, err) = check(&["check", &path]);
        assert_eq!(code, Some(1), "{name}: {out}{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: one line: {err}");
        assert!(lines[0].contains(&format!("`{field}`")), "{name}: names {field}: {err}");
        assert!(lines[0].contains(fix), "{name}: says the fix ({fix}): {err}");
        assert!(out.is_empty(), "{name}: nothing printed as resolved: {out}");
    }
}

#[test]
fn an_interface_resolves_to_its_address_as_the_source() {
    let (_dir, path) =
        temp_profile("nic", "[[shards]]\nendpoints = [\"tcp://127.0.0.1:5556\"]\ninterface = \"lo\"\n[[workers]]\n");
    let (code, out, err) = check(&["check", &path]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("shard0  tcp://127.0.0.1:0;127.0.0.1:5556"), "{out}");
}

#[test]
fn show_auto_says_what_it_derived_and_why() {
    let (code, out, err) = check(&["show", "auto", "--shards", "2", "--workers", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("# host cores: "), "{out}");
    assert!(out.contains("2 shard(s) x (I/O thread + reader) + 2 worker(s) = 6 engine threads"), "{out}");
    assert!(out.contains("nothing is pinned") || out.contains("a core of its own"), "{out}");
    assert!(out.contains("name = \"auto-"), "{out}");
}

#[test]
fn a_file_that_is_not_toml_says_the_line_and_column_in_one_line() {
    // Before: the parser's multi-line excerpt flattened, `TOML parse error at line 1, column 9
    // | 1 | garbage [[[ |         ^ expected …`.
    let dir = common::temp_dir("profile-syntax");
    let (code, _out, err) = check_text(&dir, "broken.toml", "name = \"x\"\ngarbage [[[\n");
    assert_eq!(code, Some(1), "{err}");
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.contains("broken.toml is not valid: line 2, column 9 (`garbage [[[`): expected"), "{line}");
    assert!(!line.contains('|') && !line.contains('^'), "no flattened excerpt: {line}");
}

#[test]
fn engine_and_demo_name_the_profile_a_mistake_is_in() {
    // Before: `profile field `shards[0].io_core`: …` without saying which --profile.
    let (_dir, p) =
        temp_profile("wrong-core", "[[shards]]\nendpoints = [\"tcp://127.0.0.1:1\"]\nio_core = 999\n[[workers]]\n");
    for cmd in ["engine", "demo"] {
        let (code, _out, err) = run_within(cmd, mdsub().args([cmd, "--profile", &p]), Duration::from_secs(30));
        assert_eq!(code, Some(1), "{cmd}: {err}");
        assert!(
            err.trim().starts_with(&format!("mdsub: error: --profile {p}: profile field `shards[0].io_core`")),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn profile_show_of_a_word_that_is_no_file_says_what_show_takes() {
    let (code, _out, err) = run_within("profile", mdsub().args(["profile", "show", "nosuch"]), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("auto, builtin or a TOML file"), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "the cause said once: {err}");
}

/// A profile named `name` with `body`, in a fresh temporary folder: (the folder, the file).
fn temp_profile(name: &str, body: &str) -> (common::TempDir, String) {
    let dir = common::temp_dir(&format!("profile-{name}"));
    let path = write_profile(&dir, name, body);
    (dir, path)
}

#[test]
fn a_shard_without_endpoints_is_ok_only_with_endpoint_and_the_engine_says_why() {
    // Before: `ok for cores …` while `mdsub engine --profile` refused the same file.
    let (_dir, p) = temp_profile("no-endpoints", "[[shards]]\nendpoints = []\n[[workers]]\n");
    let (code, out, err) = check(&["check", &p]);
    assert_eq!(code, Some(0), "{err}");
    let first = out.lines().next().unwrap_or_default();
    let said =
        "only with --endpoint: without it the engine refuses the profile (profile field `shards[0].endpoints`: empty";
    assert!(first.contains(said), "{first}");
    let (code, _out, err) = run_within(
        "engine",
        mdsub().args(["engine", "--profile", &p, "--max-duration", "5s"]),
        Duration::from_secs(30),
    );
    // No endpoint from the flags or the profile: a missing flag, exit 2 with the usage.
    assert_eq!(code, Some(2), "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "error: no endpoint: give --endpoint EP (once per shard), or a --profile FILE whose shards list endpoints \
             (profile {p} lists none)"
        )
    );
    assert!(err.contains("Usage: mdsub engine"), "{err}");
}

#[test]
fn an_unknown_interface_names_each_interface_once() {
    // Before: `use one of lo, ifb0, ifb1, eth0, lo, eth0, lo, eth0` (once per address family).
    let nic = "[[shards]]\nendpoints = [\"tcp://127.0.0.1:5556\"]\ninterface = \"nosuchnic9\"\n[[workers]]\n";
    let (_dir, p) = temp_profile("nic-names", nic);
    let (code, _out, err) = check(&["check", &p]);
    assert_eq!(code, Some(1), "{err}");
    let names = err.split("use one of ").nth(1).and_then(|t| t.split(" or an address").next()).expect(&err);
    let names: Vec<&str> = names.split(", ").collect();
    assert!(names.contains(&"lo"), "{err}");
    for (i, n) in names.iter().enumerate() {
        assert!(!names[..i].contains(n), "`{n}` named twice: {err}");
    }
}

#[test]
fn an_inproc_endpoint_in_a_profile_is_refused_by_the_engine_and_profile_check_says_so() {
    // Before: `mdsub engine --profile` with an inproc shard endpoint ran silently, never linked.
    let (_dir, p) = temp_profile("inproc", "[[shards]]\nendpoints = [\"inproc://x\"]\n[[workers]]\n");
    let said = "profile field `shards[0].endpoints[0]`: an inproc endpoint reaches only sockets inside the \
                engine's process, and the publisher is another process; use ipc:///tmp/NAME or tcp://HOST:PORT";
    let (code, out, err) = check(&["check", &p]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.lines().next().unwrap_or_default().contains(said), "{out}");
    let (code, _out, err) = run_within(
        "engine",
        mdsub().args(["engine", "--profile", &p, "--max-duration", "5s"]),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim(), format!("mdsub: error: --profile {p}: {said}"));
}

#[test]
fn profile_show_says_when_this_host_could_not_run_the_profile() {
    // Before: shown as if fine (cores this host lacks, an interface it lacks dropped without a
    // word), while `profile check` refused it; and `--shards` on a file was ignored.
    let body = "[[shards]]\nendpoints = [\"tcp://10.9.9.9:5601\"]\ninterface = \"nosuchnic0\"\n\
                io_core = 4095\n[[workers]]\n";
    let (_dir, path) = temp_profile("far", body);
    let (code, out, err) = check(&["show", &path]);
    assert_eq!(code, Some(0), "shown all the same: {err}");
    assert!(out.starts_with("# not runnable on this host: ") && out.contains("4095"), "{out}");
    assert!(out.contains("interface `nosuchnic0` is not on this host"), "{out}");
    let (code, _out, err) = check(&["show", "builtin", "--shards", "3"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--shards shapes `auto` only (`profile show auto --shards N`)"), "{err}");
    // The usage is `profile show`'s, where the flag is (it was `profile`'s, which has none).
    assert!(err.contains("Usage: mdsub profile show "), "{err}");
    let (code, _out, err) = check(&["show", "builtin", "--workers", "2"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--workers shapes `auto` only") && err.contains("Usage: mdsub profile show "), "{err}");
}

#[test]
fn profile_check_reads_the_security_files_from_the_profiles_directory_as_the_engine_does() {
    // Before: `profile check` passed a [security] section whose curve_key was garbage or a
    // .pub file, and relative paths were taken from the working directory: a profile checked
    // in one directory named other files (or none) when the engine started in another.
    let dir = common::temp_dir("profile-security");
    let keys = dir.join("keys");
    for name in ["engine1", "feed"] {
        let (code, _, err) =
            run_within("keygen", mdsub().args(["keygen", name, "--dir"]).arg(&keys), Duration::from_secs(20));
        assert_eq!(code, Some(0), "{err}");
    }
    std::fs::write(keys.join("garbage.key"), "garbage\n").expect("garbage");
    let shard =
        "[[shards]]\nendpoints = [\"tcp://127.0.0.1:1\"]\n[[workers]]\n[security]\nserver_key = \"keys/feed.pub\"\n";
    let profile = |name: &str, key: &str| write_profile(&dir, name, &format!("{shard}curve_key = \"{key}\"\n"));
    let elsewhere = std::env::temp_dir();
    let good = profile("good", "keys/engine1.key");
    let (code, out, err) = run_within(
        "profile",
        mdsub().args(["profile", "check", &good]).current_dir(&elsewhere),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "relative to the profile, from another directory: {err}");
    assert!(out.contains(&format!("curve_key = \"{}\"", keys.join("engine1.key").display())), "shown resolved: {out}");
    for (name, key, says) in [
        ("garbage", "keys/garbage.key", "no public-key line"),
        ("public", "keys/engine1.pub", "no secret-key line"),
        ("missing", "keys/none.key", "No such file"),
    ] {
        let p = profile(name, key);
        for cmd in [&["profile", "check"][..], &["engine", "--expect-eos", "0", "--profile"][..]] {
            let (code, _, err) =
                run_within("mdsub", mdsub().args(cmd).arg(&p).current_dir(&elsewhere), Duration::from_secs(20));
            assert_eq!(code, Some(1), "{cmd:?} {name}: {err}");
            let field = "profile field `security.curve_key`: ";
            assert!(
                err.contains(field) && err.contains(&keys.join(key.trim_start_matches("keys/")).display().to_string()),
                "{cmd:?} {name}: {err}"
            );
            assert!(err.contains(says), "{cmd:?} {name}: {err}");
        }
    }
}

/// `mdsub engine ARGS` to its end (a few seconds at most): (exit code, stderr).
fn engine(args: &[&str]) -> (Option<i32>, String) {
    let mut c = mdsub();
    c.arg("engine").args(args).args(["--max-duration", "3s"]);
    let (code, _out, err) = run_within("engine", &mut c, Duration::from_secs(30));
    (code, err)
}

#[test]
fn the_same_publisher_twice_is_refused_by_profile_check_and_the_engine() {
    // Before: two shards on one endpoint ran, `sent 2000` for 1000 sent and every message
    // handled twice; one endpoint twice in a shard waited forever for a second end of stream.
    let port = common::unserved_port_block(1);
    let ep = format!("tcp://127.0.0.1:{port}");
    // Another source to the same HOST:PORT, and another spelling of it, are the same publisher.
    let via_lo = format!("tcp://127.0.0.1:0;127.0.0.1:{:05}", port);
    let cases = [
        ("two-shards", format!("[[shards]]\nendpoints = [\"{ep}\"]\n[[shards]]\nendpoints = [\"{ep}\"]\n"), 1, 0),
        ("one-shard", format!("[[shards]]\nendpoints = [\"{ep}\", \"{ep}\"]\n"), 0, 1),
        ("two-sources", format!("[[shards]]\nendpoints = [\"{ep}\"]\n[[shards]]\nendpoints = [\"{via_lo}\"]\n"), 1, 0),
    ];
    for (name, shards, k, j) in cases {
        let (dir, p) = temp_profile(name, &format!("{shards}[[workers]]\n"));
        let (code, out, err) = check(&["check", &p]);
        assert_eq!(code, Some(1), "{name}: {out}{err}");
        assert!(err.contains(&format!("profile field `shards[{k}].endpoints[{j}]`")), "{name}: {err}");
        assert!(err.contains("the publisher shard 0 connects to already"), "{name}: {err}");
        let (code, err) = engine(&["--profile", &p]);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains("give each publisher once"), "{name}: {err}");
        drop(dir);
    }
    for flags in [vec!["--endpoint", &ep, "--endpoint", &ep], vec!["--endpoint", &format!("{ep},{ep}")]] {
        let (code, err) = engine(&flags);
        assert_eq!(code, Some(2), "{flags:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with(&format!("error: --endpoint: `{ep}` is the publisher shard 0 connects")), "{err}");
    }
}

#[test]
fn an_endpoints_source_that_is_not_on_this_host_is_refused_before_anything_starts() {
    // Before: the engine ran, and 5 s later said "nothing answers there" (the wrong cause).
    let target = format!("127.0.0.1:{}", common::unserved_port_block(1));
    for (source, why) in [
        ("nosuchnic8", "its source `nosuchnic8`: no interface `nosuchnic8` on this host; use one of"),
        ("192.0.2.78", "its source `192.0.2.78`: address 192.0.2.78 is not one of this host's"),
    ] {
        let ep = format!("tcp://{source}:0;{target}");
        let (code, err) = engine(&["--endpoint", &ep]);
        assert_eq!(code, Some(2), "{ep}: {err}");
        assert!(err.starts_with(&format!("error: --endpoint: `{ep}`: {why}")), "{ep}: {err}");
        let (dir, p) = temp_profile("source", &format!("[[shards]]\nendpoints = [\"{ep}\"]\n[[workers]]\n"));
        let (code, _out, err) = check(&["check", &p]);
        assert_eq!(code, Some(1), "{ep}: {err}");
        assert!(err.contains(&format!("`shards[0].endpoints[0]`: `{ep}`: {why}")), "{ep}: {err}");
        // Another host's profile: its interfaces are looked up there.
        let (code, _out, err) = check(&["check", &p, "--cores", "0-1"]);
        assert_eq!(code, Some(0), "{ep}: {err}");
        drop(dir);
    }
    // A source of the other address family (an IPv6 link-local for an IPv4 publisher).
    let ep = format!("tcp://[fe80::1]:0;{target}");
    let (code, err) = engine(&["--endpoint", &ep]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the source fe80::1 is an IPv6 address and the publisher's 127.0.0.1 an IPv4 one"), "{err}");
}

#[test]
fn an_interface_and_an_endpoint_that_names_its_own_source_are_refused_together() {
    // Before: `interface` was silently ignored for an endpoint with a source.
    let ep = format!("tcp://127.0.0.1:0;127.0.0.1:{}", common::unserved_port_block(1));
    let (dir, p) = temp_profile(
        "source-and-nic",
        &format!("[[shards]]\nendpoints = [\"{ep}\"]\ninterface = \"lo\"\n[[workers]]\n"),
    );
    let said = "names its own source (`127.0.0.1:0`), and the shard's `interface` is `lo`";
    let (code, _out, err) = check(&["check", &p]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("`shards[0].endpoints[0]`: `{ep}` {said}")), "{err}");
    // The same from --endpoint with a profile whose shard has an interface.
    let (idir, ip) = temp_profile("lo", "[[shards]]\ninterface = \"lo\"\n[[workers]]\n");
    let (code, err) = engine(&["--profile", &ip, "--endpoint", &ep]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with(&format!("error: --endpoint: `{ep}` {said}")), "{err}");
    drop((dir, idir));
}

#[test]
fn a_profile_without_a_name_takes_its_files() {
    // Before: `missing field `name`` at line 1, column 1, and no page said it was needed.
    let dir = common::temp_dir("profile-unnamed");
    let one = "[[shards]]\nendpoints = [\"tcp://127.0.0.1:5556\"]\n[[workers]]\n";
    let (code, out, err) = check_text(&dir, "fast-feed.toml", one);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("name = \"fast-feed\""), "{out}");
    // An empty file: the first thing missing is a shard, said as such.
    let (code, _out, err) = check_text(&dir, "fast-feed.toml", "");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("profile field `shards`: at least one shard is needed; add a [[shards]] table"), "{err}");
}

#[test]
fn a_core_outside_the_cpu_mask_is_said_as_such() {
    // Before: under `taskset -c 0`, `core 1 does not exist on this host`.
    let test = "a_core_outside_the_cpu_mask_is_said_as_such";
    let cores = mdsub::host::cores();
    let (Some(&first), Some(&last)) = (cores.first(), cores.last()) else { return };
    if first == last {
        eprintln!("SKIPPED {test}: needs two cores (this process may run on core {first} only)");
        return;
    }
    let (dir, p) = temp_profile(
        "masked",
        &format!("[[shards]]\nendpoints = [\"tcp://127.0.0.1:5556\"]\nio_core = {last}\n[[workers]]\n"),
    );
    let mut c = std::process::Command::new("taskset");
    c.args(["-c", &first.to_string(), env!("CARGO_BIN_EXE_mdsub"), "profile", "check", &p]);
    let (code, _out, err) = run_within("taskset", &mut c, Duration::from_secs(30));
    if code == Some(127) || err.contains("No such file") {
        eprintln!("SKIPPED {test}: needs taskset (Debian package util-linux)");
        return;
    }
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("core {last} is outside this process's CPU mask (taskset, a cpuset or a container")),
        "{err}"
    );
    drop(dir);
}

#[test]
fn binds_that_cannot_work_are_refused_by_profile_check() {
    // Before: two shards binding one port passed the check and the engine then failed with
    // "Address already in use" (blaming another process); `interface` beside a bind on every
    // interface passed, the check said the interface was not on this host, and the shard
    // listened on every NIC.
    let port = common::unserved_port_block(1);
    let cases = [
        (
            format!("[[shards]]\nbinds = [\"tcp://*:{port}\"]\n[[shards]]\nbinds = [\"tcp://127.0.0.1:{port}\"]\n"),
            "shards[1].binds[0]",
            format!("takes the port shard 0 binds already (`tcp://*:{port}`)"),
        ),
        (
            format!("[[shards]]\nbinds = [\"tcp://*:{port}\"]\ninterface = \"lo\"\n"),
            "shards[0].binds[0]",
            "listens on every interface, and the shard's `interface` is `lo`".to_string(),
        ),
    ];
    for (shards, field, says) in cases {
        let (dir, p) = temp_profile("binds", &format!("{shards}[[workers]]\n"));
        let (code, out, err) = check(&["check", &p]);
        assert_eq!(code, Some(1), "{out}{err}");
        assert!(err.contains(&format!("profile field `{field}`")) && err.contains(&says), "{err}");
        drop(dir);
    }
    // Two ports of their own, and lo's address beside `interface`, are fine.
    let shards = format!(
        "[[shards]]\nbinds = [\"tcp://127.0.0.1:{port}\"]\ninterface = \"lo\"\n[[shards]]\nbinds = [\"tcp://*:{}\"]\n",
        port + 1
    );
    let (dir, p) = temp_profile("binds-ok", &format!("{shards}[[workers]]\n"));
    let (code, out, err) = check(&["check", &p]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("is not on this host"), "a binds-only shard has no source to show: {out}");
    drop(dir);
}
