//! `tools/soak.sh` itself, for a few seconds: both paths (replay → engine, replay → LVC →
//! engine) run, are sampled every second and plotted, and the lossless publisher loses nothing.

mod common;

use std::process::Command;
use std::time::Duration;

use common::run_within;

#[test]
fn soak_script_samples_both_paths_and_plots_them() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: python3 is not installed (tools/ci-setup.sh installs it)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("mdsub-soak-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/soak.sh");
    let mut cmd = Command::new("bash");
    cmd.args([script, "--duration", "4s", "--interval", "1s", "--rate", "20k", "--path", "both"])
        .arg("--out")
        .arg(&dir)
        .args(["--bin", env!("CARGO_BIN_EXE_mdsub")]);
    let (code, out, err) = run_within("soak.sh", &mut cmd, Duration::from_secs(60));
    let text = out + &err;
    assert_eq!(code, Some(0), "soak.sh failed: {text}");
    let tsv = std::fs::read_to_string(dir.join("soak.tsv")).expect("soak.tsv");
    let rows: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows[0][..7], ["path", "t_s", "rss_kib", "cpu_pct", "msgs_per_s", "p99_ms", "gaps"]);
    for path in ["direct", "lvc"] {
        let mine: Vec<&Vec<&str>> = rows.iter().filter(|r| r[0] == path).collect();
        assert!(mine.len() >= 2, "{path}: a sample per second: {tsv}");
        assert!(mine.iter().all(|r| r[2].parse::<u64>().is_ok_and(|kib| kib > 1000)), "{path}: RSS sampled: {tsv}");
        assert!(mine.iter().any(|r| r[4].parse::<f64>().is_ok_and(|m| m > 1000.0)), "{path}: traffic flowed: {tsv}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{path}-engine.json"))).expect("report"))
                .expect("engine JSON");
        assert_eq!(report["sent"], 80_000, "{path}: 4 s at 20k: {report}");
        assert_eq!(report["lost"], 0, "{path}: a lossless publisher loses nothing: {report}");
        assert!(text.contains(&format!("soak: {path}: samples")), "{path}: summary line: {text}");
    }
    let svg = std::fs::read_to_string(dir.join("soak.svg")).expect("soak.svg");
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() >= 8, "4 panels × 2 paths: {svg}");
    let _ = std::fs::remove_dir_all(&dir);
}
