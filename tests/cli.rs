//! The command line as a person meets it: errors say their cause once, bad
//! flags and values get one clear line and a non-zero exit.

mod common;

use std::time::Duration;

use common::{mdsub, run_within};

const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn a_missing_profile_is_named_once_with_its_cause_once() {
    let (code, _out, err) =
        run_within("engine", mdsub().args(["engine", "--profile", "/no/such/profile.toml"]), DEADLINE);
    assert_eq!(code, Some(1), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].contains("/no/such/profile.toml"), "names the file: {err}");
    assert_eq!(lines[0].matches("No such file or directory").count(), 1, "cause said once: {err}");
}

#[test]
fn an_unknown_flag_is_refused_with_usage() {
    let (code, _out, err) = run_within("engine", mdsub().args(["engine", "--no-such-flag"]), DEADLINE);
    assert_eq!(code, Some(2), "clap's usage error code; stderr: {err}");
    assert!(err.contains("--no-such-flag"), "names the flag: {err}");
}

#[test]
fn a_duration_without_a_unit_is_refused_naming_the_value() {
    let (code, _out, err) = run_within("demo", mdsub().args(["demo", "--duration", "5"]), DEADLINE);
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("'5'"), "names the value: {err}");
}
