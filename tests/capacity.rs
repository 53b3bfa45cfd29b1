//! `mdsub capacity`: short real searches (tiny holds, one run per trial, a
//! time cap) through the binary: a known limit found, every output written
//! and checked by readers mdsub did not write (roxmltree for the SVG,
//! `mdsub profile check` and a real engine run for the winner), a publisher
//! that cannot keep up reported as such, and an external publisher process.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{json, mdsub, run_within, start_replay, wait_until, LineProc};
use serde_json::Value;

/// The flags every test's search shares: tiny trials, one run each, a cap.
const SHORT: [&str; 10] =
    ["--warmup", "200ms", "--hold", "300ms", "--runs", "1", "--tolerance", "10%", "--max-duration", "90s"];

fn capacity(out: &Path, extra: &[&str]) -> Value {
    capacity_with(out, &SHORT, extra)
}

/// [`capacity`] with `settings` instead of [`SHORT`].
fn capacity_with(out: &Path, settings: &[&str], extra: &[&str]) -> Value {
    let mut cmd = mdsub();
    cmd.args(["capacity", "--json", "--out"]).arg(out).args(settings).args(extra);
    let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(150));
    assert_eq!(code, Some(0), "mdsub capacity failed: {stderr}");
    // With --json the trials show on stderr (progress without a terminal), stdout is the object.
    assert!(stderr.contains(" msg/s  achieved "), "a line per trial on stderr: {stderr}");
    json(&stdout)
}

/// Capacity trials measure the box: one at a time, so the tests of this file
/// do not take each other's cores (cargo runs a file's tests in parallel).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn config<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["configurations"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no configuration `{name}` in {v}"))
}

fn knee(c: &Value) -> u64 {
    c["outcome"]["knee"].as_u64().unwrap_or_else(|| panic!("no knee: {c}"))
}

fn trials(c: &Value) -> &Vec<Value> {
    c["trials"].as_array().expect("trials")
}

/// The result shape every benchmark has (`runs`, `medians`, `ratios`), checked against
/// capacity's own `configurations` and `winner`: every trial is a run, in the order made; each
/// configuration with a knee has a median, the knee trial's figures; each knee over the
/// winner's is a ratio. Before, summary.json had none of the three.
fn assert_common_shape(v: &Value) {
    let runs = v["runs"].as_array().unwrap_or_else(|| panic!("runs: {v}"));
    let medians = v["medians"].as_array().unwrap_or_else(|| panic!("medians: {v}"));
    let ratios = v["ratios"].as_array().unwrap_or_else(|| panic!("ratios: {v}"));
    let configs = v["configurations"].as_array().expect("configurations");
    // The runs: every configuration's trials, in order, with the same figures.
    let made: Vec<(&Value, &Value)> = configs.iter().flat_map(|c| trials(c).iter().map(move |t| (c, t))).collect();
    assert_eq!(runs.len(), made.len(), "a run per trial: {v}");
    for (r, (c, t)) in runs.iter().zip(&made) {
        assert_eq!(r["subscriber"], c["name"], "{r}");
        assert_eq!((&r["offered_msgs_per_sec"], &r["achieved_msgs_per_sec"]), (&t["offered"], &t["achieved"]), "{r}");
        assert_eq!((&r["purpose"], &r["runs"], &r["lost"]), (&t["purpose"], &t["runs"], &t["lost"]), "{r}");
        let pass = t["verdict"]["result"] == "pass";
        assert_eq!((r["pass"].as_bool(), &r["verdict"]), (Some(pass), &t["verdict"]["result"]), "{r}");
        assert_eq!(r.get("why").is_some(), !pass, "a failure says why: {r}");
        for p in ["p50_ns", "p99_ns", "p999_ns", "max_ns"] {
            assert!(r[p].is_u64(), "{p}: {r}");
        }
    }
    // The medians: one per configuration with a knee, its knee trial's figures.
    let with_knee: Vec<&Value> = configs.iter().filter(|c| c["outcome"]["knee"].is_u64()).collect();
    assert_eq!(medians.len(), with_knee.len(), "{v}");
    for (m, c) in medians.iter().zip(&with_knee) {
        assert_eq!((&m["subscriber"], &m["msgs_per_sec"]), (&c["name"], &c["outcome"]["knee"]), "{m}");
        let at = runs
            .iter()
            .rev()
            .find(|r| {
                r["subscriber"] == m["subscriber"]
                    && r["offered_msgs_per_sec"] == m["msgs_per_sec"]
                    && r["pass"] == true
            })
            .unwrap_or_else(|| panic!("a passing run at the knee for {m}"));
        for f in ["achieved_msgs_per_sec", "p50_ns", "p99_ns", "p999_ns", "max_ns", "runs"] {
            assert_eq!(m[f], at[f], "{f}: median {m} against run {at}");
        }
    }
    // The ratios: each knee over the winner's, named `CONFIG / WINNER`.
    match v["winner"].as_str() {
        None => assert!(ratios.is_empty(), "no winner, no ratios: {v}"),
        Some(w) => {
            let knee_of =
                |name: &str| medians.iter().find(|m| m["subscriber"] == name).and_then(|m| m["msgs_per_sec"].as_f64());
            let best = knee_of(w).expect("the winner has a knee");
            assert_eq!(ratios.len(), medians.len(), "{v}");
            for (pair, m) in ratios.iter().zip(medians) {
                let name = m["subscriber"].as_str().expect("name");
                assert_eq!(pair[0].as_str(), Some(format!("{name} / {w}").as_str()), "{pair}");
                let want = knee_of(name).expect("knee") / best;
                assert!(pair[1].as_f64().is_some_and(|r| (r - want).abs() < 1e-12), "{pair}: {want}");
            }
        }
    }
}

#[test]
fn finds_a_known_limit_and_writes_every_output() {
    let _one = serial();
    let dir = common::temp_dir("capacity-limit");
    // One worker at 20 µs of work per message can take at most 50k msg/s.
    // p50 over budget is what an engine past its ceiling shows first: the
    // backlog grows through the whole hold. The budget is well above what the
    // scheduler alone keeps a worker waiting on a loaded 2-core host: with a
    // 10 ms p50 and two `yes` and other tests running, trials at 99 msg/s
    // failed (p50 10.8 ms at 1562 msg/s) and the knees were the scheduler's.
    // Three runs a trial, judged by their medians: a run whose worker a build's link step
    // starved for its whole hold (p50 368 ms at 17812 msg/s between passes at 16484 and 18750)
    // is outvoted, where alone it failed the knee's confirmation.
    let settings =
        ["--warmup", "200ms", "--hold", "300ms", "--runs", "3", "--tolerance", "10%", "--max-duration", "120s"];
    let v = capacity_with(
        &dir,
        &settings,
        &["--vary", "handler=work:20000,latency", "--sla", "p50=50ms", "--start-rate", "25k", "--max-rate", "100k"],
    );
    let work = config(&v, "builtin-2core handler=work:20000");
    let none = config(&v, "builtin-2core handler=latency");
    // The knee passed its own confirmation at 0.95x, or the search says it could not confirm
    // one. Which is the box's: on a 2-core host shared with builds the worker's share of a core
    // moves from trial to trial (a build's link step starts, another test's engine ends), so a
    // trial at 0.95x a pass can fail; then the search reopens below it twice and ends
    // `unconfirmed` after the third failed confirmation.
    let confirms: Vec<&Value> = trials(work).iter().filter(|t| t["purpose"] == "confirm").collect();
    match work["outcome"]["ending"].as_str() {
        Some("confirmed") => {
            let confirmed = work["outcome"]["confirmed_at"].as_u64().expect("a confirmation passed");
            assert_eq!(confirmed, (knee(work) as f64 * 0.95) as u64);
            assert!(confirms.iter().any(|t| t["offered"] == confirmed && t["verdict"]["result"] == "pass"), "{work}");
        }
        Some("unconfirmed") => {
            assert!(work["outcome"]["confirmed_at"].is_null(), "{work}");
            assert_eq!(confirms.len(), 3, "the confirmation and two reopenings: {work}");
            assert!(confirms.iter().all(|t| t["verdict"]["result"] != "pass"), "{work}");
        }
        other => panic!("ended {other:?}, neither confirmed nor unconfirmed: {work}"),
    }
    assert!(v["publisher"].as_str().expect("publisher").contains("sharing this host"));

    // Every output, in one folder named with the date, host and commit.
    let folder = PathBuf::from(v["folder"].as_str().expect("folder"));
    assert!(folder.starts_with(&dir));
    let commit = v["machine"]["mdsub_commit"].as_str().expect("commit");
    assert!(
        folder.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(&commit.replace('+', "-"))),
        "{folder:?}"
    );
    for f in ["summary.json", "summary.md", "capacity.svg", "winner.toml"] {
        assert!(folder.join(f).is_file(), "{f} written");
    }
    for c in [work, none] {
        let hash = c["profile_hash"].as_str().expect("hash");
        for t in trials(c) {
            let files = t["files"].as_array().expect("files");
            assert_eq!((files.len(), t["runs"].as_u64()), (6, Some(3)), "an .hlog and an .hgrm per run: {t}");
            for f in files {
                let name = f.as_str().expect("name");
                assert!(name.contains(&format!("-{}mps-", t["offered"])) && name.contains(hash), "{name}");
                let text = std::fs::read_to_string(folder.join(name)).expect("trial file");
                if name.ends_with(".hlog") {
                    assert!(text.contains("#[Histogram log format version 1.3]") && text.contains("Tag=shard0.total,"));
                } else {
                    assert!(text.contains("#[Max     =") && text.contains("Total count"), "{name}: {text}");
                }
            }
        }
    }
    let md = std::fs::read_to_string(folder.join("summary.md")).expect("summary.md");
    let best = v["winner"].as_str().expect("a winner");
    assert!(md.contains(&format!("| {best} (winner) |")), "{md}");
    // Trials by purpose in words, as the JSON has them (not Rust's `Bracket`).
    assert!(md.contains(" | bracket | ") && !md.contains("Bracket"), "{md}");
    let saved = summary_json(&folder);
    assert_eq!(saved["winner"], v["winner"]);
    // The stamp every benchmark's result carries (bench, lvc-bench, clone-bench): kind, machine, settings.
    assert_eq!(saved["kind"], "capacity", "{saved}");
    assert_eq!(saved["machine"]["mdsub_commit"], v["machine"]["mdsub_commit"]);
    assert!(saved["settings"]["sla"].is_string(), "{saved}");
    assert!(saved.get("error").is_none(), "a whole result has no error: {saved}");
    assert_common_shape(&saved);
    assert_eq!(saved["runs"], v["runs"], "--json and summary.json agree");
    assert!(saved["runs"].as_array().is_some_and(|r| r.iter().any(|r| r["pass"] == false)), "a failed trial: {saved}");
    assert_eq!(saved["medians"].as_array().map(Vec::len), Some(2), "{saved}");

    // The plot: valid SVG, one series per configuration and percentile.
    let svg = std::fs::read_to_string(folder.join("capacity.svg")).expect("svg");
    let doc = roxmltree::Document::parse(&svg).expect("capacity.svg is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect();
    let lines = doc.descendants().filter(|n| n.has_tag_name("polyline")).count();
    for c in ["builtin-2core handler=work:20000", "builtin-2core handler=latency"] {
        for p in ["p50", "p99", "p99.9", "max"] {
            let label = format!("{c} · {p}");
            assert_eq!(texts.iter().filter(|t| **t == label).count(), 1, "one legend entry `{label}`: {texts:?}");
        }
        assert!(texts.iter().any(|t| t.starts_with(&format!("{c} knee "))), "knee marked for {c}");
    }
    assert!(texts.iter().any(|t| t == "SLA p50 50.00ms"), "the SLA line: {texts:?}");
    assert!(lines >= 2 * 4 + 2, "a line per series, knee and SLA: {lines}");

    // The winner: a profile that `mdsub profile check` accepts and the engine runs.
    let winner = folder.join("winner.toml");
    let text = std::fs::read_to_string(&winner).expect("winner.toml");
    for head in ["# Knee: ", "# SLA: p50 <= 50.00ms", "# Machine: ", &format!("# Commit: {commit}")] {
        assert!(text.contains(head), "winner header has `{head}`: {text}");
    }
    let w = winner.to_str().expect("utf8 path");
    let (code, out, err) = run_within("profile check", mdsub().args(["profile", "check", w]), Duration::from_secs(20));
    assert_eq!(code, Some(0), "profile check: {out}{err}");
    let (replay, eps) = start_replay("replay", 1, &["--count", "2000", "--rate", "20k"]);
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "60s", "--profile", w, "--endpoint", &eps[0]]);
    let engine = LineProc::spawn_with_stderr("engine", &mut cmd);
    // It says the profile it runs (before, nothing did: a user could not tell the winner was applied).
    let said = engine.said_after("profile ");
    let name = text.lines().find_map(|l| l.strip_prefix("name = ")).map(|n| n.trim_matches('"')).expect("a name");
    assert!(said.starts_with(&format!("{name} (--profile {w}): 1 shard(s), ")), "{said}");
    let (status, out) = engine.finish(Duration::from_secs(60));
    assert!(status.success(), "engine with the winner: {out}");
    let report = json(&out);
    assert_eq!((report["delivered"].as_u64(), report["lost"].as_u64()), (Some(2000), Some(0)), "{report}");
    let _ = replay.finish(Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
    // The limit, last: every output above is checked whatever the box's load
    // did to the knees. 20 µs a message caps the worker at 50k msg/s; past its
    // ceiling c, at f x c, the backlog's latency grows as (f - 1) x t, so the
    // hold's p50 (t about 200 ms of warm-up + 150 ms) passes 50 ms from
    // f = 1 + 0.05 / 0.35: a knee at or above 50k x that (57142) is a wrong
    // search. How far below it the knee falls is the box's speed (on a 2-core
    // host shared with busy builds the worker gets a fraction of a core: 23k
    // was seen), which is a benchmark's business, not a test's; the floor (the
    // lowest rate the search offers) only says a limit was found, not 0.
    let (k_work, k_none) = (knee(work), knee(none));
    assert!((100..57_142).contains(&k_work), "knee with 20 µs of work: {k_work} msg/s: {work}");
    // The knee is the engine's: a trial above it failed the SLA (not a publisher short of the rate).
    assert!(
        trials(work).iter().any(|t| t["offered"].as_u64() > Some(k_work) && t["verdict"]["result"] == "fail"),
        "a trial above the knee failed for the engine: {work}"
    );
    assert!(k_none > k_work, "no work: knee {k_none} should be above {k_work}");
}

/// The flags of a one-trial search that passes: one rate, a lenient SLA.
const ONE_TRIAL: [&str; 6] = ["--start-rate", "1000", "--max-rate", "1000", "--sla", "p50=1s"];

/// `YYYYmmddTHHMMSS` of now + `offset_s` (UTC), as a results folder's name starts.
fn utc_stamp(offset_s: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_s);
    format!("{:04}{:02}{:02}T{:02}{:02}{:02}", t.year(), t.month() as u8, t.day(), t.hour(), t.minute(), t.second())
}

/// Two runs started in one second used the same DATE-HOST-COMMIT folder: the first said its
/// winner was written there, but the files held the second's. A run whose folder name is taken
/// makes `NAME-2` (and says so); the folder that was there is left alone.
#[test]
fn a_results_folder_that_exists_is_not_shared() {
    let _one = serial();
    let dir = common::temp_dir("capacity-taken");
    // A first run tells the folder name's HOST-COMMIT part.
    let first = capacity(&dir.join("first"), &ONE_TRIAL);
    let name = PathBuf::from(first["folder"].as_str().expect("folder"));
    let name = name.file_name().and_then(|n| n.to_str()).expect("a folder name").to_string();
    let rest = &name[name.find('Z').expect("DATEZ-HOST-COMMIT")..];
    // Every name the next run can take in the coming minute is taken (another run's).
    let out = dir.join("second");
    for s in -1..60 {
        std::fs::create_dir_all(out.join(format!("{}{rest}", utc_stamp(s)))).expect("a taken folder");
    }
    let mut cmd = mdsub();
    cmd.args(["capacity", "--json", "--out"]).arg(&out).args(SHORT).args(ONE_TRIAL);
    let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(150));
    assert_eq!(code, Some(0), "{stderr}");
    let v = json(&stdout);
    let folder = PathBuf::from(v["folder"].as_str().expect("folder"));
    let taken = PathBuf::from(folder.to_str().expect("utf8").strip_suffix("-2").expect("NAME-2"));
    assert!(taken.is_dir(), "{taken:?}");
    assert!(
        stderr.contains(&format!(
            "capacity: {} exists (another run started in the same second): this run's results go to {}",
            taken.display(),
            folder.display()
        )),
        "said which: {stderr}"
    );
    assert_eq!(std::fs::read_dir(&taken).map(|d| d.count()).ok(), Some(0), "the taken folder is left alone");
    assert!(folder.join("winner.toml").is_file() && folder.join("summary.json").is_file());
    let saved = summary_json(&folder);
    assert_eq!(saved["folder"], v["folder"]);
}

/// `winner: none` exited 0, like a search with a winner: a script could not tell them apart.
#[test]
fn no_configuration_passing_is_exit_status_5_with_the_results_written() {
    let _one = serial();
    let dir = common::temp_dir("capacity-none");
    let mut cmd = mdsub();
    // 300, 150, then 100 msg/s (the lowest rate, tried itself: before, the search stopped when
    // the next half, 75, fell below it) fail a budget no engine meets.
    cmd.args(["capacity", "--out"]).arg(&dir).args(SHORT).args(["--sla", "p50=1us", "--start-rate", "300"]);
    let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(150));
    assert_eq!(code, Some(5), "{stdout}{stderr}");
    assert!(stdout.contains("\nwinner: none (no configuration passed)\n"), "{stdout}");
    let folder = stdout.lines().find_map(|l| l.strip_prefix("results: ")).expect("the results line");
    let folder = PathBuf::from(folder.split(" (").next().expect("the folder"));
    let (saved, _) = assert_no_winner(&folder, "no-pass", "no configuration passed");
    assert_common_shape(&saved);
    assert_eq!(saved["medians"], serde_json::json!([]), "no knee, no median: {saved}");
    let offered: Vec<u64> =
        saved["runs"].as_array().expect("runs").iter().filter_map(|r| r["offered_msgs_per_sec"].as_u64()).collect();
    assert_eq!(offered, [300, 150, 100], "{saved}");
}

/// A capacity run on a tiny tmpfs with `options`, its output dir the tmpfs itself, searching
/// from 1000 msg/s with a budget every trial passes. None (the test skips, saying why) when a
/// tmpfs cannot be mounted.
fn capacity_on_tmpfs(
    test: &str,
    options: &str,
    extra: &[&str],
) -> Option<(common::Tmpfs, Option<i32>, String, String)> {
    let fs = common::Tmpfs::mount_or_skip(test, options)?;
    let mut cmd = mdsub();
    cmd.args(["capacity", "--out"]).arg(&fs.dir).args(SHORT).args(["--start-rate", "1000", "--sla", "p50=1s"]);
    let (code, stdout, stderr) = run_within("capacity", cmd.args(extra), Duration::from_secs(150));
    Some((fs, code, stdout, stderr))
}

/// The command a stopped run printed to carry on (`carry on: COMMAND`).
fn carry_on_line(stdout: &str) -> &str {
    stdout.lines().find_map(|l| l.strip_prefix("carry on: ")).unwrap_or_else(|| panic!("no carry-on line: {stdout}"))
}

/// A run of two configurations stopped in the first (by the time cap) said `carry on with
/// --start-rate N`: one rate for every configuration, where only the stopped one should carry
/// on from N. It prints a command that, run as printed (by a shell: the name has a space and an
/// `=`), searches that one from N (`--start-rate NAME=N`, its earlier one replaced), and the
/// others from the first run's start.
#[test]
fn the_carry_on_command_runs_as_printed_each_configuration_from_its_own_rate() {
    let _one = serial();
    let dir = common::temp_dir("capacity-carry-on");
    let settings = ["--warmup", "100ms", "--hold", "200ms", "--runs", "1", "--max-duration", "1s"];
    let name = "builtin-2core handler=latency";
    // Its own start (1500) above every other's (1000): where it carries on from is its own.
    let own = format!("{name}=1500");
    let search =
        ["--vary", "handler=latency,work:1000", "--start-rate", &own, "--start-rate", "1000", "--sla", "p50=1s"];
    let mut cmd = mdsub();
    cmd.args(["capacity", "--out"]).arg(&dir).args(settings).args(search);
    let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(5), "capped: {stdout}{stderr}");
    assert!(stdout.contains(&format!("from 1000 msg/s (`{name}` from 1500), ")), "{stdout}");
    let first = only_folder(&dir);
    let saved = summary_json(&first);
    let from = config(&saved, name)["carry_on_from"].as_u64().unwrap_or_else(|| panic!("stopped: {saved}"));
    assert!(from >= 1500, "{saved}");
    let command = carry_on_line(&stdout);
    assert!(command.ends_with(&format!(" --sla p50=1s --start-rate '{name}={from}'")), "{command}");
    assert_eq!(command.matches(&format!("'{name}=")).count(), 1, "its earlier start replaced: {command}");
    assert!(command.contains(" --start-rate 1000 "), "the others' start kept: {command}");
    assert_eq!(saved["carry_on"].as_str(), Some(command), "{saved}");
    // As printed, through a shell (exec: the deadline ends mdsub itself).
    let mut again = std::process::Command::new("sh");
    again.arg("-c").arg(format!("exec {command}"));
    let (code, stdout, stderr) = run_within("capacity carried on", &mut again, Duration::from_secs(60));
    assert_eq!(code, Some(5), "capped again: {stdout}{stderr}");
    assert!(stdout.contains(&format!("from 1000 msg/s (`{name}` from {from}), ")), "{stdout}");
    let second = second_folder(&dir, &first);
    let carried = summary_json(&second);
    assert_eq!(carried["settings"]["start_rates"], serde_json::json!({ name: from }), "{carried}");
    let offered = trials(config(&carried, name))[0]["offered"].as_u64();
    assert_eq!(offered, Some(from), "searched from where it stopped: {carried}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--failed-at 4000 --max-rate 1000`: a failure above the maximum bounds nothing the search
/// may offer (it ends with the maximum passed, or below it). Before, summary.json's
/// `lowest_fail`, `failed_above` and `bracket_above` were 4000, a rate no trial was at, and
/// summary.md called it "a failure above the knee". Now no field takes it; `known_failure` keeps
/// it, saying it is above the maximum, and so does summary.md.
#[test]
fn a_known_failure_above_the_maximum_rate_is_no_failure_of_the_run() {
    let _one = serial();
    let dir = common::temp_dir("capacity-failed-above-max");
    let v = capacity(&dir, &[&ONE_TRIAL[..], &["--failed-at", "4000"]].concat());
    let c = config(&v, "builtin-2core");
    let o = &c["outcome"];
    for field in ["lowest_fail", "failed_above", "bracket_above"] {
        assert_ne!(o[field].as_u64(), Some(4000), "{field}: {o}");
    }
    assert_eq!(o["known_failure"], serde_json::json!({ "rate": 4000, "above_max_rate": 1000 }), "{o}");
    let folder = PathBuf::from(v["folder"].as_str().expect("folder"));
    let md = std::fs::read_to_string(folder.join("summary.md")).expect("summary.md");
    assert!(
        md.contains(
            "`builtin-2core`: 4000 msg/s failed in the run carried on (--failed-at): above --max-rate 1000, it bounds \
             nothing here"
        ),
        "{md}"
    );
    assert!(!md.contains("a failure above the knee"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The one results folder a capacity run made in `out`.
fn only_folder(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> =
        std::fs::read_dir(out).expect("the out dir").flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The results folder a second capacity run made in `out`, beside `first`.
fn second_folder(out: &Path, first: &Path) -> PathBuf {
    let mut dirs = std::fs::read_dir(out).expect("the out dir").flatten().map(|e| e.path());
    dirs.find(|p| p.is_dir() && p != first).expect("the second run's folder")
}

/// A results folder's summary.json.
fn summary_json(folder: &Path) -> Value {
    json(&std::fs::read_to_string(folder.join("summary.json")).expect("summary.json"))
}

/// The results in `folder` name no winner: summary.json's `no_winner` is `kind`, summary.md says
/// `- winner: none ({why})`, and no winner.toml is written. Returns summary.json and summary.md.
fn assert_no_winner(folder: &Path, kind: &str, why: &str) -> (Value, String) {
    let saved = summary_json(folder);
    assert_eq!((saved["winner"].is_null(), saved["no_winner"].as_str()), (true, Some(kind)), "{saved}");
    let md = std::fs::read_to_string(folder.join("summary.md")).expect("summary.md");
    assert!(md.contains(&format!("- winner: none ({why})\n")), "{md}");
    assert!(!folder.join("winner.toml").exists(), "no winner written");
    (saved, md)
}

/// On a full disk (here: out of inodes, so exactly the second trial fails) a search exited 1
/// with no summary of the trials it had finished. The summary keeps them where the disk lets
/// it, the error says where, or that the trials printed are all that is left, and the cause
/// (`No space left on device`) is said once.
#[test]
fn a_full_disk_part_way_keeps_what_it_can_of_the_finished_trials() {
    let _one = serial();
    let test = "a_full_disk_part_way_keeps_what_it_can_of_the_finished_trials";
    // The root, the results folder, the first trial's .hlog and .hgrm: then the second trial's
    // .hgrm (its .hlog, forgotten, gives summary.json its inode), or its .hlog, has none.
    for (inodes, kept) in [(5, "summary.json"), (4, "nothing")] {
        let Some((fs, code, stdout, stderr)) = capacity_on_tmpfs(test, &format!("size=4m,nr_inodes={inodes}"), &[])
        else {
            return;
        };
        assert_eq!(code, Some(1), "{stdout}{stderr}");
        assert_eq!(stderr.matches("No space left on device").count(), 1, "the cause once: {stderr}");
        let folder = only_folder(&fs.dir);
        let error = stderr.lines().last().unwrap_or_default();
        let file = if inodes == 5 { "hgrm" } else { "hlog" };
        // The first trial (1000 msg/s) passes on an idle box; a starved one may fall short of
        // it (`rate not achieved`), and the search halves: the second trial, and the rate the
        // carry-on command starts from, follow from what the first said (its line on stdout).
        let first = stdout.lines().find(|l| l.contains(" msg/s  achieved ")).unwrap_or_default();
        let (second, carry_from) = if first.ends_with("  pass") { (2000, 1000) } else { (500, 500) };
        let cause = format!("configuration `builtin-2core`, {second} msg/s, run 1: ");
        // The command that carries on: this one, from the rate that passed (or half the one
        // that did not).
        let carry_on = format!(
            "(carry on: {} capacity --out {} {} --sla p50=1s --start-rate {carry_from})",
            env!("CARGO_BIN_EXE_mdsub"),
            fs.dir.display(),
            SHORT.join(" ")
        );
        let head = match kept {
            "summary.json" => format!(
                "mdsub: error: capacity: stopped after 1 finished trial(s) {carry_on}, summarised in {} (summary.md \
                 could not be written either): {cause}",
                folder.join("summary.json").display()
            ),
            _ => format!(
                "mdsub: error: capacity: stopped after 1 finished trial(s) {carry_on}: no summary could be written in \
                 {} either, so the trials printed above are all that is left: {cause}",
                folder.display()
            ),
        };
        assert!(error.starts_with(&head) && error.contains("mps-run1-"), "{inodes} inodes: {error}");
        assert!(error.contains(&format!(".{file}")), "the file that could not be made: {error}");
        assert_eq!(stdout.matches(" msg/s  achieved ").count(), 1, "the finished trial, on stdout: {stdout}");
        let names: Vec<String> = std::fs::read_dir(&folder)
            .expect("the folder")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n.starts_with("builtin-2core-1000mps-run1-")), "trial 1's files: {names:?}");
        let failed = format!("-{second}mps-");
        assert!(!names.iter().any(|n| n.contains(&failed)), "the failed trial's are forgotten: {names:?}");
        if kept == "summary.json" {
            let saved = summary_json(&folder);
            assert_eq!(saved["no_winner"], "failed", "{saved}");
            assert!(saved["error"].as_str().is_some_and(|f| f.contains("No space left")), "{saved}");
            assert!(saved["settings"].get("failed").is_none(), "the cause is said once, in `error`: {saved}");
            let c = config(&saved, "builtin-2core");
            assert_eq!((trials(c).len(), c["outcome"]["ending"].as_str()), (1, Some("failed")), "{c}");
        } else {
            assert!(!names.iter().any(|n| n.starts_with("summary")), "{names:?}");
        }
    }
}

/// The operator's run: the disk filled while a trial's engine wrote its interval log. The
/// collector said `metrics: writing the interval log: No space left …`, then the run's error
/// said it again for the .hgrm. One line now, naming the interval log.
#[test]
fn a_disk_that_fills_during_a_trial_is_said_once() {
    let _one = serial();
    let test = "a_disk_that_fills_during_a_trial_is_said_once";
    let Some(fs) = common::Tmpfs::mount_or_skip(test, "size=64k") else { return };
    // One page left: the log's header fits, its intervals (every 50 ms for a second) do not.
    let filler = fs.fill();
    let f = std::fs::OpenOptions::new().write(true).open(&filler).expect("the filler");
    let len = f.metadata().expect("its size").len();
    f.set_len(len.saturating_sub(4096)).expect("a page back");
    let mut cmd = mdsub();
    let settings =
        ["--warmup", "200ms", "--hold", "1s", "--runs", "1", "--max-duration", "90s", "--start-rate", "1000"];
    cmd.args(["capacity", "--out"]).arg(&fs.dir).args(settings);
    let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(150));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.matches("No space left on device").count(), 1, "the cause once: {stderr}");
    let error = stderr.lines().last().unwrap_or_default();
    assert!(error.starts_with("mdsub: error: capacity: configuration `builtin-2core`, 1000 msg/s, run 1: "), "{error}");
    assert!(error.contains(".hlog") && error.contains("the interval log"), "{error}");
    let left: Vec<_> = std::fs::read_dir(&fs.dir).expect("the tmpfs").flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, ["filler"], "no trial finished: no results folder");
}

#[test]
fn a_publisher_short_of_the_rate_is_not_the_knee() {
    let _one = serial();
    let dir = common::temp_dir("capacity-rna");
    // This publisher never sends faster than 15k msg/s; the engine takes far more.
    let v = capacity(
        &dir,
        &["--publisher-max-rate", "15k", "--sla", "p50=50ms", "--start-rate", "10k", "--max-rate", "40k"],
    );
    let c = config(&v, "builtin-2core");
    let o = &c["outcome"];
    assert_eq!(o["ending"], "publisher-limited", "{c}");
    assert!(o["lowest_fail"].is_null(), "no engine failure: {c}");
    // Where the publisher first fell short is the box's: its cap makes every rate above
    // 15k / 0.95 unreachable, but on a 2-core host shared with builds it can fall short below
    // the cap too (14250 offered, 12966 achieved, with two `yes` and other tests running), and
    // saying so is right. What is certain: the knee is below the lowest rate it fell short at,
    // and no rate above the cap was reached.
    let rna_at = o["rate_not_achieved_at"].as_u64().unwrap_or_else(|| panic!("a rate not achieved: {c}"));
    assert!(knee(c) < rna_at, "the knee is below the publisher's shortfall: {c}");
    assert!(knee(c) <= 15_000, "the knee is a rate the publisher reached: {c}");
    let rna: Vec<&Value> = trials(c).iter().filter(|t| t["verdict"]["result"] == "rate-not-achieved").collect();
    assert!(!rna.is_empty());
    for t in rna {
        let (offered, achieved) = (t["offered"].as_f64().expect("offered"), t["achieved"].as_f64().expect("achieved"));
        assert!(achieved < 0.95 * offered && achieved < 15_500.0, "{t}");
    }
    for t in trials(c).iter().filter(|t| t["offered"].as_f64().is_some_and(|r| 0.95 * r > 15_500.0)) {
        assert_eq!(t["verdict"]["result"], "rate-not-achieved", "above the publisher's cap: {t}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_external_publisher_drives_the_trials() {
    let _one = serial();
    let dir = common::temp_dir("capacity-remote");
    let (server, control) = trial_server();
    let control = format!("connect:{control}");
    let v = capacity(&dir, &["--publisher", &control, "--sla", "p50=50ms", "--start-rate", "5k", "--max-rate", "10k"]);
    let c = config(&v, "builtin-2core");
    assert_eq!((c["outcome"]["ending"].as_str(), knee(c)), (Some("above-max-rate"), 10_000), "{c}");
    assert!(v["publisher"].as_str().is_some_and(|p| p.contains("another process")), "{v}");
    let served = server.line_starting("trial 2: sent ", Duration::from_secs(10));
    assert!(served.contains("msg/s"), "{served}");
    // The capacity run said goodbye: the server ends by itself.
    let (status, rest) = server.finish(Duration::from_secs(20));
    assert!(status.success() && rest.contains("served 2 trial(s)"), "{rest}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A trial server killed mid-trial ends the run at once, exit 1, saying why: its answer cannot
/// come once the connection closed (a REQ never sends its request again). It was waited for 30 s
/// more, then said `no answer from the publisher to publish within 32200ms`.
#[test]
fn a_trial_server_killed_mid_trial_ends_the_run_at_once() {
    let _one = serial();
    let dir = common::temp_dir("capacity-remote-killed");
    let (server, control) = trial_server();
    let publisher = format!("connect:{control}");
    let mut cmd = mdsub();
    cmd.args(["capacity", "--out"]).arg(&dir).args(["--warmup", "200ms", "--hold", "2s", "--runs", "1"]);
    cmd.args(["--max-duration", "90s", "--start-rate", "1k", "--publisher", &publisher]);
    let mut cap = LineProc::spawn_with_stderr("capacity", &mut cmd);
    let err = cap.stderr.take().expect("stderr");
    // Said once the server took the trial's `go`: the capacity run now waits for its answer.
    server.line_starting("trial 1: waiting for the engine to subscribe", Duration::from_secs(30));
    server.proc.signal(9);
    let killed = std::time::Instant::now();
    let (status, _) = cap.finish(Duration::from_secs(60));
    let waited = killed.elapsed();
    let said: Vec<String> = err.try_iter().collect();
    assert_eq!(status.code(), Some(1), "an error: {said:?}");
    assert!(waited < Duration::from_secs(15), "ended at once, not 30 s later: {waited:?}: {said:?}");
    let line = said.iter().find(|l| l.starts_with("mdsub: error: ")).unwrap_or_else(|| panic!("{said:?}"));
    assert!(
        line.contains(&format!(
            "the connection to the publisher at {control} closed before its answer to publish came"
        )) && line.contains("start `mdsub replay --serve-trials` there again"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_ends_the_search_as_interrupted_not_capped() {
    let _one = serial();
    let dir = common::temp_dir("capacity-int");
    let mut cmd = mdsub();
    // A warm-up long enough that the signal lands in it: the first interval in the trial's
    // .hlog comes one metrics interval (1 s) into the run. Three runs: the stop in the first
    // starts no other.
    let settings = ["--warmup", "4s", "--hold", "300ms", "--runs", "3", "--max-duration", "90s"];
    cmd.args(["capacity", "--json", "--out"]).arg(&dir).args(settings);
    let mut p = LineProc::spawn_with_stderr("capacity", &mut cmd);
    let err = p.stderr.take().expect("stderr");
    // A trial is measuring once its interval log has an interval.
    let measuring = || common::trial_hlogs(&dir).iter().any(|f| common::hlog_intervals(f) > 0);
    wait_until(Duration::from_secs(60), "the first trial's first interval", measuring);
    p.proc.signal(2);
    let (status, stdout) = p.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "results so far are written");
    let v = json(&stdout);
    let c = config(&v, "builtin-2core");
    assert_eq!(c["outcome"]["ending"], "interrupted", "not the time cap: {c}");
    // Before, the trial the signal cut short was shown (with --json on stderr) with its
    // warm-up's numbers and a verdict, although the results leave it out.
    let said: Vec<String> = std::iter::from_fn(|| err.recv_timeout(Duration::from_secs(2)).ok()).collect();
    let shown = said.iter().filter(|l| l.contains(" msg/s  achieved ")).count();
    assert_eq!(shown, trials(c).len(), "every trial shown is a trial kept: {said:?}");
    // Before, the run after the stopped one started anyway, and its engine, still in its
    // handshake when the publisher closed, said `shard0: link … lost (handshake_failed)`.
    assert!(!said.iter().any(|l| l.contains(" lost (")), "a stop is no lost link: {said:?}");
    assert_eq!(v["settings"]["interrupted"], true, "{}", v["settings"]);
    assert_eq!(v["settings"]["capped"], false, "{}", v["settings"]);
    // Stopped in its first trial: no winner, said as an interruption (exit 0 above), not as
    // `no configuration passed` (which is exit 5).
    assert_eq!((v["winner"].is_null(), v["no_winner"].as_str()), (true, Some("interrupted")), "{v}");
    let folder = PathBuf::from(v["folder"].as_str().expect("folder"));
    let why = "interrupted before every configuration's knee was found: `builtin-2core` was not searched (0 trials)";
    assert_no_winner(&folder, "interrupted", why);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_trial_server_stops_quietly_on_ctrl_c() {
    // Before: `mdsub: error: waiting for a request: Interrupted system call`, exit 1.
    let (mut server, _) = trial_server();
    let err = server.stderr.take().expect("stderr");
    server.proc.signal(2);
    let (status, rest) = server.finish(Duration::from_secs(20));
    let said: Vec<String> = std::iter::from_fn(|| err.recv_timeout(Duration::from_secs(2)).ok()).collect();
    assert_eq!(status.code(), Some(0), "stderr: {said:?}");
    assert!(rest.contains("served 0 trial(s)"), "{rest}");
    assert!(said.iter().all(|l| !l.contains("error")), "{said:?}");
}

#[test]
fn a_trial_server_waiting_for_the_engine_stops_at_once_on_ctrl_c() {
    // Before, a trial server told to go waited out its 10 s for the engine's subscription
    // whatever the signal.
    let (server, control) = trial_server();
    // This test is the capacity side, and its engine never subscribes.
    let ctx = zmq::Context::new();
    let req = control_socket(&ctx, &control);
    let prepare =
        r#"{"op":"prepare","rate":1000,"duration_ms":1000,"payload_bytes":100,"symbols":10,"seed":1,"shards":1}"#;
    let answer = ask(&req, &[prepare.as_bytes()]);
    assert!(answer["endpoints"].is_array(), "{answer}");
    req.send(r#"{"op":"go"}"#, 0).expect("go");
    // It answers `go` only when the trial is over; it says when it starts waiting.
    server.line_starting("trial 1: waiting for the engine to subscribe", Duration::from_secs(20));
    stops_at_once_mid_trial(server, 2, "not the 10 s wait");
}

/// Signal a trial server mid-trial: it ends within 5 s (`why` otherwise), exit 0, the trial counted.
fn stops_at_once_mid_trial(server: LineProc, signal: i32, why: &str) {
    let started = std::time::Instant::now();
    server.proc.signal(signal);
    let (status, out) = server.finish(Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(5), "{why}");
    assert_eq!(status.code(), Some(0));
    assert!(out.contains("served 1 trial(s)"), "the trial under way, ended: {out}");
}

/// A trial server of an older mdsub answers `send_s` by another measure of the rate its
/// publisher achieved (from its thread's start to the end it saw, which read a loaded host's
/// publisher short): its `prepare` answer names no measure, and the run refuses it before any
/// trial, exit 1, saying what to do. Before, its trials were judged beside this mdsub's as if
/// measured alike. The server here is a process of its own (this test's binary, run as
/// [`older_trial_server`]) that answers as the older one did, on real sockets: by the refusal it
/// has bound a data endpoint, and the run's `bye` must reach it so that it ends and frees the
/// port (it waits 60 s for it, then exits 3).
#[test]
fn a_trial_server_of_another_measure_is_refused_before_any_trial() {
    if std::env::var_os(OLDER_SERVER).is_some() {
        older_trial_server();
    }
    let name = "a_trial_server_of_another_measure_is_refused_before_any_trial";
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"));
    child.args([name, "--exact", "--nocapture", "--test-threads=1"]).env(OLDER_SERVER, "1");
    let old = LineProc::spawn("older trial server", &mut child);
    // Its first line follows libtest's `test NAME ... ` on the same line.
    let older_said = |what: &str, deadline| {
        let line = common::wait_line(&old.lines, deadline, what, |l| l.contains(what));
        line.split(what).nth(1).unwrap_or_default().to_string()
    };
    let control = older_said("older server: control ", Duration::from_secs(30));
    let dir = common::temp_dir("capacity-old-server");
    let publisher = format!("connect:{control}");
    let mut cmd = mdsub();
    cmd.args(["capacity", "--out"]).arg(&dir).args(SHORT).args(ONE_TRIAL).args(["--publisher", &publisher]);
    let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let said = format!(
        "the trial server at {control} says no measure (an older mdsub) for the rate its publisher achieved, where \
         this mdsub's is `pacer`"
    );
    assert!(
        stderr.contains(&said) && stderr.contains("run `mdsub replay --serve-trials` of this mdsub's there"),
        "{stderr}"
    );
    assert!(!stdout.contains(" msg/s  achieved "), "no trial was judged: {stdout}");
    // It had bound its data endpoint for the refused trial; told `bye`, it ends by itself (not
    // at its 60 s deadline, exit 3), and the port is free again.
    let bound = older_said("older server: bound ", Duration::from_secs(5));
    let (status, rest) = old.finish(Duration::from_secs(30));
    assert!(status.success(), "the older server was never told to end ({status}): {rest}");
    assert!(rest.contains("older server: asked bye") && !rest.contains("asked go"), "{rest}");
    let port: u16 = bound.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{bound}"));
    wait_until(Duration::from_secs(10), "the data port free again", || {
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Set in the environment of the process [`older_trial_server`] runs in.
const OLDER_SERVER: &str = "MDSUB_TEST_OLDER_TRIAL_SERVER";

/// A trial server as an older mdsub's answered (no `achieved` measure), in a process of its own:
/// says its control endpoint, binds a data endpoint at `prepare` (said), answers `{}` to anything
/// else (each op said), and ends at `bye`, exit 0; after 60 s without one, exit 3.
fn older_trial_server() -> ! {
    let ctx = zmq::Context::new();
    let rep = ctx.socket(zmq::REP).expect("rep");
    rep.set_linger(0).expect("linger");
    rep.bind("tcp://127.0.0.1:*").expect("bind");
    println!("older server: control {}", rep.get_last_endpoint().expect("endpoint").expect("utf-8"));
    let mut data = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if rep.poll(zmq::POLLIN, 100).expect("poll") == 0 {
            continue;
        }
        let req = json(&rep.recv_string(0).expect("a request").expect("utf-8"));
        let op = req["op"].as_str().unwrap_or_default().to_string();
        println!("older server: asked {op}");
        let answer = match op.as_str() {
            "prepare" => {
                let pub_ = ctx.socket(zmq::PUB).expect("pub");
                pub_.set_linger(0).expect("linger");
                pub_.bind("tcp://127.0.0.1:*").expect("bind the data endpoint");
                let ep = pub_.get_last_endpoint().expect("endpoint").expect("utf-8");
                println!("older server: bound {ep}");
                data = Some(pub_);
                serde_json::json!({ "endpoints": [ep] })
            }
            _ => serde_json::json!({}),
        };
        rep.send(answer.to_string().as_bytes(), 0).expect("answer");
        if op == "bye" {
            drop(data);
            std::process::exit(0);
        }
    }
    std::process::exit(3)
}

#[test]
fn a_publisher_nobody_serves_is_said_early_and_ctrl_c_ends_the_wait() {
    // Before, `--publisher connect:EP` with nothing at EP said nothing for 30 s and ignored Ctrl-C.
    let port = common::unserved_port_block(1);
    let dir = common::temp_dir("capacity-nobody");
    let control = format!("connect:tcp://127.0.0.1:{port}");
    let mut cmd = mdsub();
    cmd.args(["capacity", "--json", "--out"]).arg(&dir).args(SHORT).args(["--publisher", &control]);
    let mut p = LineProc::spawn_with_stderr("capacity", &mut cmd);
    let err = p.stderr.take().expect("stderr");
    let said = common::wait_line(&err, Duration::from_secs(15), "not up", |l| l.contains("not up after"));
    assert!(said.contains(&format!("tcp://127.0.0.1:{port}")) && said.contains("nothing answers there"), "{said}");
    let started = std::time::Instant::now();
    p.proc.signal(2);
    let (status, out) = p.finish(Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(5), "not the 30 s wait");
    assert_eq!(status.code(), Some(0), "the (empty) results are written");
    let v = json(&out);
    assert_eq!(v["settings"]["interrupted"], true, "{}", v["settings"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_search_that_fails_before_its_first_trial_leaves_no_results_folder() {
    // Before: an empty DATE-HOST-COMMIT folder (here with the failed run's .hlog in it), made
    // up front, stayed behind. The engine cannot start: its monitor's port is taken.
    let _one = serial();
    let dir = common::temp_dir("capacity-fails-first");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let port = taken.local_addr().expect("its address").port();
    let (code, builtin, err) =
        run_within("profile", mdsub().args(["profile", "show", "builtin"]), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    let profile = dir.join("monitor-taken.toml");
    let text = builtin.replacen("[snail]\n", &format!("[snail]\nmonitor = \"tcp://127.0.0.1:{port}\"\n"), 1);
    assert_ne!(text, builtin, "the profile has a [snail] table: {builtin}");
    std::fs::write(&profile, text).expect("write the profile");
    let out = dir.join("results");
    let mut cmd = mdsub();
    cmd.args(["capacity", "--profile"]).arg(&profile).arg("--out").arg(&out).args(SHORT);
    let (code, stdout, err) = run_within("capacity", &mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stdout}{err}");
    assert!(err.contains("starting the engine") && err.contains("Address already in use"), "{err}");
    assert!(
        !out.exists(),
        "no results folder, nor the --out it was made in: {:?}",
        std::fs::read_dir(&out).map(|d| d.count())
    );
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_time_cap_shorter_than_one_trial_is_refused_up_front() {
    // Before: 0 trials, exit 0 at once, `capped: the time cap ended the search`.
    let dir = common::temp_dir("capacity-short-cap");
    let out = dir.to_str().expect("utf8 path");
    let mut cmd = mdsub();
    cmd.args(["capacity", "--max-duration", "3s", "--runs", "3", "--warmup", "500ms", "--hold", "2s", "--out", out]);
    let (code, stdout, err) = run_within("capacity", &mut cmd, Duration::from_secs(30));
    assert_eq!(code, Some(2), "{stdout}{err}");
    assert!(
        err.contains(
            "--max-duration 3s is shorter than one trial: 3 run(s) x (500ms warm-up + 2s hold + 300ms to start) = 8.4s; \
             give --max-duration 9s or more"
        ),
        "{err}"
    );
    assert!(err.contains("Usage: mdsub capacity"), "said like clap's refusals: {err}");
    assert!(stdout.is_empty(), "nothing run: {stdout}");
    assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0), 0, "no results folder");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A trial server on ephemeral ports, its stderr's lines kept; returns it and its control endpoint.
fn trial_server() -> (LineProc, String) {
    let mut cmd = mdsub();
    cmd.args(["replay", "--endpoint", "tcp://127.0.0.1:*", "--serve-trials", "bind:tcp://127.0.0.1:*"]);
    let server = LineProc::spawn_with_stderr("replay --serve-trials", &mut cmd);
    let line = server.line_starting("serving capacity trials on ", Duration::from_secs(20));
    let control = line.rsplit(' ').next().expect("endpoint").to_string();
    (server, control)
}

/// A REQ socket connected to `control`, every answer within 20 s.
fn control_socket(ctx: &zmq::Context, control: &str) -> zmq::Socket {
    let req = ctx.socket(zmq::REQ).expect("req");
    req.set_linger(0).expect("linger");
    req.set_rcvtimeo(20_000).expect("rcvtimeo");
    req.connect(control).expect("connect");
    req
}

/// Send `frames` as one request and return the answer as JSON.
fn ask(req: &zmq::Socket, frames: &[&[u8]]) -> Value {
    req.send_multipart(frames, 0).expect("send");
    json(&req.recv_string(0).expect("an answer within 20 s").expect("utf-8"))
}

#[test]
fn a_trial_server_answers_a_bad_request_and_serves_on() {
    // Before, a request of two frames got no answer and ended the server: `answering:
    // Operation cannot be accomplished in current state`, exit 1.
    let (server, control) = trial_server();
    let ctx = zmq::Context::new();
    let req = control_socket(&ctx, &control);
    let a = ask(&req, &[b"a", b"b"]);
    assert!(a["error"].as_str().is_some_and(|e| e.contains("one frame") && e.contains("had 2 frames")), "{a}");
    let a = ask(&req, &[b"[1]"]);
    assert!(a["error"].as_str().is_some_and(|e| e.contains("not a JSON request")), "{a}");
    let a = ask(&req, &[br#"{"op":"dance"}"#]);
    assert!(a["error"].as_str().is_some_and(|e| e.contains("unknown op `dance`")), "{a}");
    // Still serving: a good request is answered.
    let a = ask(&req, &[br#"{"op":"go"}"#]);
    assert_eq!(a["error"], "go before prepare", "{a}");
    let err = server.stderr.as_ref().expect("stderr");
    let said = common::wait_line(err, Duration::from_secs(10), "the refusal", |l| l.contains("multipart_request"));
    assert!(said.starts_with("serve-trials: refused (multipart_request): ") && said.contains("had 2 frames"), "{said}");
    assert_eq!(ask(&req, &[br#"{"op":"bye"}"#]), serde_json::json!({}));
    let (status, rest) = server.finish(Duration::from_secs(20));
    assert!(status.success() && rest.contains("served 0 trial(s)"), "{rest}");
}

#[test]
fn a_trial_server_refuses_a_trial_out_of_range_and_stops_at_once_while_sending() {
    // Before, `prepare` took any size: symbols 10^12 or payload_bytes 10^13, then `go`, grew the
    // server to gigabytes with no answer, and the first SIGTERM was not seen.
    let (mut server, control) = trial_server();
    let ctx = zmq::Context::new();
    let req = control_socket(&ctx, &control);
    let prepare = |fields: &str| -> Value {
        let base =
            r#""op":"prepare","rate":1000,"duration_ms":1000,"payload_bytes":100,"symbols":10,"seed":1,"shards":1"#;
        // A later key wins in serde_json's map: `fields` overrides the base.
        ask(&req, &[format!("{{{base},{fields}}}").as_bytes()])
    };
    let refused = [
        (r#""symbols":1000000000000"#, "`symbols` 1000000000000: too many: at most 1048576 symbols"),
        (r#""payload_bytes":10000000000000"#, "`payload_bytes` 10000000000000: too large: at most 16777216 bytes"),
        (r#""symbols":1048576,"payload_bytes":1000"#, "MiB of frames"),
        (r#""zipf":-1"#, "`zipf` -1: not a Zipf exponent"),
        (r#""symbols":0"#, "`symbols` 0: must be at least 1"),
        (r#""shards":0"#, "`shards` 0: not a whole number from 1 to 256"),
        (r#""shards":257"#, "`shards` 257: not a whole number from 1 to 256"),
        (r#""duration_ms":0"#, "`duration_ms` 0: not a whole number from 1 to"),
        (r#""duration_ms":1e300"#, "`duration_ms` 1e+300: not a whole number"),
        (r#""rate":0"#, "`rate` 0: not a whole number from 1 to"),
        (r#""seed":-1"#, "`seed` -1: not a whole number from 0 to 18446744073709551615"),
    ];
    for (fields, why) in refused {
        let a = prepare(fields);
        assert!(a["error"].as_str().is_some_and(|e| e.contains(why)), "{fields}: {a}");
    }
    let err = server.stderr.take().expect("stderr");
    let said = common::wait_line(&err, Duration::from_secs(10), "the refusal", |l| l.contains("(bad_trial)"));
    assert!(said.starts_with("serve-trials: refused (bad_trial): `symbols` 1000000000000: too many"), "{said}");
    // The largest feed there is, sent to a subscriber of this test's: a stop is seen at once.
    let a = prepare(r#""symbols":1048576,"payload_bytes":100,"duration_ms":60000"#);
    // It names the measure of the rate achieved that its answers give (an older server did not).
    assert_eq!(a["achieved"], "pacer", "{a}");
    let ep = a["endpoints"][0].as_str().unwrap_or_else(|| panic!("endpoints: {a}")).to_string();
    let sub = ctx.socket(zmq::SUB).expect("sub");
    sub.set_linger(0).expect("linger");
    sub.set_rcvtimeo(20_000).expect("rcvtimeo");
    sub.set_subscribe(b"").expect("subscribe");
    sub.connect(&ep).expect("connect");
    req.send(r#"{"op":"go"}"#, 0).expect("go");
    sub.recv_bytes(0).expect("the trial sends within 20 s");
    stops_at_once_mid_trial(server, 15, "stopped mid-trial, not after its 60 s");
}

/// The audit's run: one trial passed, then the time cap came; it said `knee 10000 msg/s …
/// capped`, `winner: builtin-2core`, wrote winner.toml and exited 0, though nothing above 10000
/// had failed: 10000 was only a lower bound. A lower bound is no knee: no winner, exit 5.
#[test]
fn a_time_cap_before_any_failure_is_a_lower_bound_not_a_winner() {
    let _one = serial();
    // Each trial passes a budget any engine meets at these rates and offers its rate for 1.1 s,
    // 1.4 s as the cap counts it: the first trial sends for 1.1 s, so a second one never fits.
    // The schedule is long enough that a publisher starved on a loaded 2-core box, its last
    // send 40 ms late, still achieves 96 % of 1000 msg/s (a pass needs 95 %).
    let settings = ["--warmup", "100ms", "--hold", "1s", "--runs", "1", "--max-duration", "2400ms"];
    // It may still fall short (before, with a 0.6 s schedule: 939 achieved once in 3 loaded
    // runs): then a rate did not pass before the cap, and what the run says follows from that
    // (summary.json's verdict). The run is made again, at most 3 times, for one whose trial
    // passed; none that did is a failure: a regression that made every rate read short passed
    // this test before, on the branch for a trial that fell short.
    let mut short = Vec::new();
    for attempt in 1..=3 {
        let dir = common::temp_dir(&format!("capacity-lower-bound-{attempt}"));
        let mut cmd = mdsub();
        cmd.args(["capacity", "--out"]).arg(&dir).args(settings).args(["--start-rate", "1000", "--sla", "p50=1s"]);
        let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(60));
        assert_eq!(code, Some(5), "{stdout}{stderr}");
        let folder = only_folder(&dir);
        let saved = summary_json(&folder);
        let c = config(&saved, "builtin-2core");
        assert_eq!(trials(c).len(), 1, "one trial fits in the cap: {c}");
        let o = &c["outcome"];
        let trial = &trials(c)[0];
        if trial["verdict"]["result"] != "pass" {
            // Nothing passed: no knee, no lower bound, and the carry-on starts below the rate.
            assert_eq!(
                (o["ending"].as_str(), o["knee"].as_u64(), o["at_least"].as_u64()),
                (Some("capped"), None, None),
                "{c}"
            );
            let why = "the time cap came before every configuration's knee was found: `builtin-2core` had found no \
                       passing rate yet (1000 msg/s did not pass)";
            assert!(stdout.contains(&format!("\nwinner: none ({why})\n")), "{stdout}");
            let command = carry_on_line(&stdout);
            assert!(command.ends_with(" --sla p50=1s --start-rate 500"), "half the rate: {command}");
            assert_no_winner(&folder, "capped", why);
            eprintln!("attempt {attempt}: the trial did not pass: {}", trial["verdict"]);
            short.push(format!("attempt {attempt}: achieved {}, {}", trial["achieved"], trial["verdict"]));
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        let highest = 1000;
        assert_eq!(
            (o["ending"].as_str(), o["knee"].as_u64(), o["at_least"].as_u64()),
            (Some("capped"), None, Some(highest))
        );
        let line = format!("at least {highest} msg/s (no failing rate found before the cap)");
        assert!(stdout.contains(&format!("  builtin-2core                {line}  p50 -")), "{stdout}");
        let why = format!(
            "the time cap came before every configuration's knee was found: `builtin-2core` has only a lower bound: \
             at least {highest} msg/s, nothing above it failed"
        );
        assert!(stdout.contains(&format!("\nwinner: none ({why})\n")), "{stdout}");
        assert!(stdout.contains(&format!("carry on from {highest} msg/s\n")), "{stdout}");
        let command = carry_on_line(&stdout);
        assert!(command.ends_with(&format!(" --sla p50=1s --start-rate {highest}")), "the start replaced: {command}");
        let (_, md) = assert_no_winner(&folder, "capped", &why);
        assert!(md.contains(&format!("| builtin-2core | {line} |")), "{md}");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    panic!(
        "no run of 3 had its trial at 1000 msg/s pass a p50 budget of 1 s, so the lower bound was never checked (a \
         publisher that keeps 1000 msg/s for 1.1 s achieves it even on a loaded box): {}",
        short.join("; ")
    );
}

/// A trial run's .hlog and its verdict agree. Its warm-up intervals are tagged `warmup.*` and a
/// comment says where the warm-up ends (read whole, the log disagreed with the .hgrm: p99 6.23 ms
/// against 1.99 ms); the warm-up ends at an interval's end, so the intervals not tagged hold
/// exactly the hold: read back by the Python `hdrhistogram` package they count the .hgrm's
/// messages and give the summary's percentiles. The interval the warm-up ended in mixed the two,
/// tagged as the hold: p99 7.34 ms read from the hold's intervals, 305 µs in the summary (a pass).
#[test]
fn a_trials_hlog_holds_exactly_the_hold_its_summary_judged() {
    let _one = serial();
    let dir = common::temp_dir("capacity-warmup");
    let v = capacity(&dir, &["--start-rate", "20k", "--max-rate", "20k", "--sla", "p50=1s"]);
    let folder = PathBuf::from(v["folder"].as_str().expect("folder"));
    let t = &trials(config(&v, "builtin-2core"))[0];
    let file = |ext: &str| {
        let f = t["files"].as_array().expect("files").iter().filter_map(Value::as_str).find(|f| f.ends_with(ext));
        folder.join(f.expect("the run's file"))
    };
    let (hlog, hgrm) = (file(".hlog"), file(".hgrm"));
    let text = std::fs::read_to_string(&hlog).expect("the .hlog");
    let end = text.lines().find(|l| l.starts_with("#[Warm-up end: ")).unwrap_or_else(|| panic!("said: {text}"));
    assert!(text.contains("\nTag=warmup.shard0.total,") && text.contains("\nTag=shard0.total,"), "{text}");
    assert!(!end.contains("inside the next interval"), "the warm-up ends at an interval's end: {end}");
    let held = hgrm_count(&hgrm);
    // `… its N messages are not in …`.
    let warm = end.split(" messages are not in the run's .hgrm").next().and_then(|s| s.rsplit(' ').next());
    let warm: u64 = warm.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("the warm-up's count: {end}"));
    let Some(read) = common::hlog_read_back(&hlog) else { return };
    let tag = |tag: &str| read["tags"].get(tag).unwrap_or_else(|| panic!("tag {tag}: {read}"));
    let count = |t: &str| tag(t)["count"].as_u64().unwrap_or_else(|| panic!("tag {t}: {read}"));
    assert_eq!(count("warmup.shard0.total"), warm, "{end}: {read}");
    assert_eq!(count("shard0.total"), held, "the hold's tags are the .hgrm's messages: {end}: {read}");
    // The summary's percentiles, by the same rank rule (ceil(q N)), from the hold's intervals.
    let judged: Vec<(String, u64)> = t["latency_ns"]
        .as_array()
        .expect("latency_ns")
        .iter()
        .filter(|qv| qv[0].as_f64().is_some_and(|q| q < 1.0))
        .map(|qv| (qv[0].to_string(), qv[1].as_u64().expect("ns")))
        .collect();
    assert!(judged.len() >= 3, "p50, p99 and p99.9 in the summary: {t}");
    for (q, ns) in judged {
        let from_log = tag("shard0.total")["ceil_ranks"][&q].as_u64().unwrap_or_else(|| panic!("q {q}: {read}"));
        assert_eq!(from_log, ns, "q {q}: the hold's intervals read back against the summary: {t}");
    }
}

/// The messages a .hgrm spectrum counts (its `Total count` line).
fn hgrm_count(path: &std::path::Path) -> u64 {
    let spectrum = std::fs::read_to_string(path).expect("the .hgrm");
    spectrum
        .split("Total count    =")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("the .hgrm's count: {spectrum}"))
}

/// The hold is the hold: the .hgrm (and the summary) count no message the schedule sent in the
/// warm-up. The warm-up's clock started before the engine had subscribed and was read from a
/// collector that had not yet heard of the workers' last reports, so the hold took warm-up
/// messages: 66269 in a 1 s hold at 60000 msg/s, 6500 or more here in a 300 ms one at 20000.
#[test]
fn a_trials_hold_counts_none_of_its_warm_up() {
    let _one = serial();
    let dir = common::temp_dir("capacity-hold-count");
    let v = capacity(&dir, &["--start-rate", "20k", "--max-rate", "20k", "--sla", "p50=1s"]);
    let folder = PathBuf::from(v["folder"].as_str().expect("folder"));
    let t = &trials(config(&v, "builtin-2core"))[0];
    assert_eq!(t["lost"], 0, "a trial without loss: {t}");
    let hgrm = t["files"].as_array().expect("files").iter().filter_map(Value::as_str).find(|f| f.ends_with(".hgrm"));
    let held = hgrm_count(&folder.join(hgrm.expect("the run's .hgrm")));
    // 20000 msg/s for 300 ms, less what the engine handled before the warm-up's count was seen
    // reached; the schedule's one message at its end may fall on either side.
    assert!(held <= 6000 + 1, "the hold counted {held} messages, the schedule sent 6000 in it: {t}");
    assert!(held >= 3000, "the hold lost no more than a little of its start: {held}: {t}");
}

/// A grid flag that would be overridden is refused before any trial, exit 2, no folder: `--vary
/// workers=1 --vary workers=2` searched one configuration, `builtin-2core workers=1 workers=2`,
/// with 2 workers; `--handler verify` beside `--vary handler=…` was replaced by the grid's
/// (`--idle`, new, is refused beside `--vary idle` alike).
#[test]
fn a_grid_setting_given_twice_is_refused() {
    let dir = common::temp_dir("capacity-vary-twice");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--vary", "workers=1", "--vary", "idle=block", "--vary", "workers=2"],
            "error: capacity: --vary workers given twice (workers=1 and workers=2): one --vary per setting, every value in \
             it: --vary workers=1,2\n",
        ),
        (
            &["--handler", "verify", "--vary", "handler=latency,work:1000"],
            "error: capacity: --handler verify and --vary handler=latency,work:1000: one gives every configuration's handler, \
             the other varies it; give one (--vary handler=verify,latency,work:1000 to compare them)\n",
        ),
        (
            &["--idle", "spin", "--vary", "idle=block,backoff"],
            "error: capacity: --idle spin and --vary idle=block,backoff: one gives every configuration's idle strategy, \
             the other varies it; give one (--vary idle=spin,block,backoff to compare them)\n",
        ),
    ];
    for (flags, said) in cases {
        let mut cmd = mdsub();
        cmd.args(["capacity", "--out"]).arg(&dir).args(["--warmup", "200ms", "--hold", "300ms", "--runs", "1"]);
        cmd.args(["--max-duration", "1s"]).args(flags);
        let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(60));
        assert_eq!(code, Some(2), "{flags:?}: refused as a flag: {stdout}{stderr}");
        assert!(stderr.starts_with(said), "{flags:?}: said once: {stderr}");
        assert!(!dir.exists() || std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none()), "no folder");
    }
}

/// `--start-rate 0` ran: `from 0 msg/s`, a note about a 10000 s hold, then 100 msg/s offered.
#[test]
fn a_start_rate_below_the_lowest_offered_is_refused() {
    let dir = common::temp_dir("capacity-rate-0");
    for (flag, value) in [("--start-rate", "<[NAME=]COUNT>"), ("--max-rate", "<COUNT>")] {
        let mut cmd = mdsub();
        cmd.args(["capacity", flag, "0", "--out"]).arg(&dir).args(SHORT);
        let (code, stdout, err) = run_within("capacity", &mut cmd, Duration::from_secs(20));
        assert_eq!(code, Some(2), "{stdout}{err}");
        assert!(
            err.contains(&format!("'{flag} {value}': at least 100 msg/s, the lowest rate the search offers")),
            "{err}"
        );
        assert!(stdout.is_empty(), "nothing run: {stdout}");
    }
    assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).ok(), Some(0), "no results folder");
}

/// `--out FILE` said `creating FILE/DATE-HOST-COMMIT: File exists`.
#[test]
fn an_out_that_is_a_file_is_said_as_one() {
    let dir = common::temp_dir("capacity-out-file");
    let file = dir.join("results");
    std::fs::write(&file, b"not a folder").expect("a file");
    let mut cmd = mdsub();
    cmd.args(["capacity", "--out"]).arg(&file).args(SHORT);
    let (code, stdout, err) = run_within("capacity", &mut cmd, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{stdout}{err}");
    assert!(
        err.contains(&format!("--out {}: not a directory (the results folder is made in it)", file.display())),
        "{err}"
    );
    assert!(!err.contains("File exists") && stdout.is_empty(), "{stdout}{err}");
}

/// The reviewer's run, with the time cap: two configurations, the first searched to its knee,
/// the second never started. It said `winner: builtin-2core` and wrote winner.toml, though the
/// configuration it never measured may have been the better one.
#[test]
fn a_configuration_the_time_cap_left_unsearched_keeps_the_winner_from_being_named() {
    let _one = serial();
    let dir = common::temp_dir("capacity-unsearched");
    let mut cmd = mdsub();
    // A trial counts 0.7 s against the cap and takes at least 0.4 s: the first configuration's
    // one trial (its maximum rate, passed) runs, the second's would end after the 1 s cap.
    let settings = ["--warmup", "100ms", "--hold", "300ms", "--runs", "1", "--max-duration", "1s"];
    cmd.args(["capacity", "--out"]).arg(&dir).args(settings).args(ONE_TRIAL).args(["--vary", "idle=block,backoff"]);
    let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(5), "no winner: {stdout}{stderr}");
    let why = "the time cap came before every configuration's knee was found: `builtin-2core idle=backoff` was \
               not searched (0 trials)";
    assert!(stdout.contains(&format!("\nwinner: none ({why})\n")), "{stdout}");
    let folder = only_folder(&dir);
    assert!(
        stdout.contains(&format!(
            "\nresults: {} (summary.md, summary.json, capacity.svg, 2 .hlog/.hgrm of 1 trial(s))\n",
            folder.display()
        )),
        "{stdout}"
    );
    let (saved, _) = assert_no_winner(&folder, "capped", why);
    let detail = saved["no_winner_detail"].as_str();
    assert_eq!(detail, Some("`builtin-2core idle=backoff` was not searched (0 trials)"), "{saved}");
    let searched = config(&saved, "builtin-2core idle=block");
    assert_eq!((knee(searched), searched["outcome"]["narrowed"].as_bool()), (1000, Some(true)), "{searched}");
    assert_eq!(trials(config(&saved, "builtin-2core idle=backoff")).len(), 0);
    assert_common_shape(&saved);
}

/// The reviewer's run: Ctrl-C while the knee was being narrowed (7500 passed, 8750 failed,
/// 17 % apart against the 5 % tolerance) said `winner: builtin-2core` and wrote winner.toml.
/// Here the bracket is 1000 passed, 2000 not achieved (this publisher sends at most 1500
/// msg/s); the signal lands in the bisection's warm-up. No winner, and where to carry on.
#[test]
fn ctrl_c_while_a_knee_is_narrowed_names_no_winner_and_where_to_carry_on() {
    let _one = serial();
    let dir = common::temp_dir("capacity-narrowing");
    let mut cmd = mdsub();
    let settings = ["--warmup", "3s", "--hold", "300ms", "--runs", "1", "--max-duration", "90s"];
    let search = ["--start-rate", "1000", "--publisher-max-rate", "1500", "--sla", "p50=1s"];
    cmd.args(["capacity", "--out"]).arg(&dir).args(settings).args(search);
    let mut p = LineProc::spawn_with_stderr("capacity", &mut cmd);
    let err = p.stderr.take().expect("stderr");
    // The third trial (the bisection's) is in its warm-up once its interval log has an interval.
    let third = || {
        let logs = common::trial_hlogs(&dir);
        logs.len() == 3 && logs.iter().all(|f| common::hlog_intervals(f) > 0)
    };
    wait_until(Duration::from_secs(60), "the third trial's first interval", third);
    p.proc.signal(2);
    let (status, stdout) = p.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "results so far are written");
    let said: Vec<String> = std::iter::from_fn(|| err.recv_timeout(Duration::from_secs(1)).ok()).collect();
    let folder = only_folder(&dir);
    let why = "`builtin-2core`'s knee was not narrowed: 1000 msg/s passed, 2000 did not (100% apart; the \
               tolerance is 5%)";
    let none = format!("interrupted before every configuration's knee was found: {why}");
    let (saved, md) = assert_no_winner(&folder, "interrupted", &none);
    let c = config(&saved, "builtin-2core");
    let verdicts: Vec<(u64, &str)> = trials(c)
        .iter()
        .map(|t| (t["offered"].as_u64().unwrap_or(0), t["verdict"]["result"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(verdicts, [(1000, "pass"), (2000, "rate-not-achieved")], "{c}");
    let o = &c["outcome"];
    assert_eq!(
        (o["ending"].as_str(), knee(c), o["narrowed"].as_bool()),
        (Some("interrupted"), 1000, Some(false)),
        "{c}"
    );
    assert!(stdout.contains(&format!("\nwinner: none ({none})\n")), "{stdout}{said:?}");
    assert!(stdout.contains("\n    stopped before its knee was found: carry on from 1000 msg/s\n"), "{stdout}");
    let command = carry_on_line(&stdout);
    assert!(command.ends_with(" --sla p50=1s --start-rate 1000"), "{command}");
    assert_eq!(saved["carry_on"].as_str(), Some(command), "{saved}");
    assert_eq!((saved["no_winner_detail"].as_str(), c["carry_on_from"].as_u64()), (Some(why), Some(1000)), "{saved}");
    assert!(
        md.contains(&format!(
            "- `builtin-2core` stopped before its knee was found: carry on from 1000 msg/s\n- carry on: `{command}`\n"
        )),
        "{md}"
    );
    assert!(!stdout.contains("winner.toml"), "{stdout}");
}

/// The carry-on command of a run stopped with one configuration's search finished: before, it
/// re-ran that search too (and, with the other configuration not started, no carry-on was printed
/// at all). Now it takes the finished search from the stopped run's folder (`--take-finished-from
/// FOLDER`, its files copied) and searches only what is left.
#[test]
fn the_carry_on_command_searches_only_what_is_left() {
    let _one = serial();
    let dir = common::temp_dir("capacity-left");
    let settings = ["--warmup", "100ms", "--runs", "1", "--max-duration", "1s"];
    let mut cmd = mdsub();
    cmd.args(["capacity", "--out"]).arg(&dir).args(settings).args(["--hold", "300ms"]).args(ONE_TRIAL);
    cmd.args(["--vary", "idle=block,backoff"]);
    let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(5), "capped: {stdout}{stderr}");
    let first = only_folder(&dir);
    let command = carry_on_line(&stdout).to_string();
    assert!(
        command.ends_with(&format!(" --vary idle=block,backoff --take-finished-from {}", first.display())),
        "{command}"
    );
    assert_eq!(summary_json(&first)["carry_on"].as_str(), Some(command.as_str()));
    let mut again = std::process::Command::new("sh");
    again.arg("-c").arg(format!("exec {command}"));
    let (_, stdout, stderr) = run_within("capacity carried on", &mut again, Duration::from_secs(60));
    let taken = format!(
        // The knee says what was achieved beside it when that fell short of the offered rate (load).
        "taken from {} (finished there, not searched again): `builtin-2core idle=block` (knee 1000 msg/s",
        first.display()
    );
    assert!(stdout.contains(&taken), "{stdout}{stderr}");
    let searched: Vec<&str> = stdout.lines().filter(|l| l.contains(" msg/s  achieved ")).collect();
    assert!(searched.len() == 1 && searched[0].contains("idle=backoff"), "only what was left: {stdout}");
    assert!(!stdout.contains("carry on: "), "nothing left: {stdout}");
    let second = second_folder(&dir, &first);
    let saved = summary_json(&second);
    let block = config(&saved, "builtin-2core idle=block");
    assert_eq!(block["taken_from"].as_str(), first.to_str(), "{block}");
    assert_eq!(knee(block), 1000);
    for f in trials(block).iter().flat_map(|t| t["files"].as_array().expect("files")) {
        assert!(second.join(f.as_str().expect("a file")).is_file(), "copied: {f}");
    }
    assert_eq!(trials(config(&saved, "builtin-2core idle=backoff")).len(), 1, "{saved}");
    assert_eq!(saved["runs"].as_array().map(Vec::len), Some(2), "both searches' trials: {saved}");
    assert_common_shape(&saved);
    // Results measured otherwise are not taken.
    let mut other = mdsub();
    other.args(["capacity", "--out"]).arg(&dir).args(settings).args(["--hold", "400ms"]).args(ONE_TRIAL);
    other.args(["--vary", "idle=block,backoff", "--take-finished-from"]).arg(&first);
    let (code, stdout, stderr) = run_within("capacity other hold", &mut other, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("its trials were measured with hold_s 0.3, this run's with 0.4"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `--out` that is not UTF-8 was rendered lossily into the carry-on command (which then named
/// another folder) and summary.json: refused before any trial, with no folder made.
#[test]
fn an_argument_that_is_not_utf8_is_refused_up_front() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = common::temp_dir("capacity-utf8");
    let out = dir.join(std::ffi::OsStr::from_bytes(b"res\xffults"));
    let mut cmd = mdsub();
    cmd.args(["capacity", "--out"]).arg(&out).args(SHORT).args(ONE_TRIAL);
    let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("{:?} is not UTF-8", out.as_os_str())), "{stderr}");
    assert!(!out.exists(), "no folder");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A profile named with a newline broke the lines that name it (the knee table, summary.md's
/// table, `--start-rate NAME=RATE` in the carry-on command): refused before any trial.
#[test]
fn a_profile_name_with_a_newline_is_refused() {
    let dir = common::temp_dir("capacity-newline");
    let text = std::fs::read_to_string("tuning/pinned-2core.toml").expect("the profile");
    let profile = dir.join("two.toml");
    std::fs::write(&profile, text.replace("name = \"pinned-2core\"", "name = \"two\\nlines\"")).expect("written");
    let mut cmd = mdsub();
    cmd.args(["capacity", "--out"]).arg(dir.join("out")).args(SHORT).args(ONE_TRIAL).arg("--profile").arg(&profile);
    let (code, stdout, stderr) = run_within("capacity", &mut cmd, Duration::from_secs(60));
    assert_ne!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains(r#"`name`: "two\nlines" has a control character ('\n')"#), "{stderr}");
    assert!(!dir.join("out").exists(), "no trial ran: {stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
