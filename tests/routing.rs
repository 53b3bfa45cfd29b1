//! Routing to workers, with real processes over TCP loopback: by topic keeps
//! every topic's order across 4 workers under a flat-out feed; round-robin
//! spreads the messages evenly over 4 workers.

mod common;

use std::time::Duration;

use common::*;

fn engine_to_end(ep: &str, extra: &[&str]) -> serde_json::Value {
    let mut cmd = mdsub();
    cmd.args(["engine", "--json", "--max-duration", "90s", "--endpoint", ep, "--workers", "4"]).args(extra);
    let engine = LineProc::spawn("engine", &mut cmd);
    let (status, out) = engine.finish(Duration::from_secs(100));
    assert!(status.success(), "engine failed: {out}");
    json(&out)
}

/// Messages each worker handled, from the report's per-thread accounts.
fn per_worker(r: &serde_json::Value) -> Vec<u64> {
    let threads = r["threads"].as_array().expect("threads");
    let w: Vec<u64> = threads
        .iter()
        .filter(|t| t["thread"].as_str().is_some_and(|n| n.starts_with("worker")))
        .map(|t| t["msgs"].as_u64().expect("msgs"))
        .collect();
    assert_eq!(w.len(), 4, "{r}");
    w
}

#[test]
fn by_topic_keeps_each_topics_order_across_four_workers_under_load() {
    let n = 200_000u64;
    let (replay, eps) = start_replay("replay", 1, &["--count", "200000", "--rate", "0", "--symbols", "64"]);
    let r = engine_to_end(&eps[0], &["--routing", "by-topic", "--handler", "verify"]);
    let _ = replay.finish(Duration::from_secs(30));
    assert_eq!(r["delivered"], n, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["handler"]["verified"], n, "every message followed its topic's previous one: {r}");
    assert_eq!(r["handler"]["out_of_order"], 0, "{r}");
    let w = per_worker(&r);
    assert_eq!(w.iter().sum::<u64>(), n);
    assert!(w.iter().all(|&m| m > 0), "64 topics reach all 4 workers: {w:?}");
}

#[test]
fn round_robin_spreads_messages_evenly_over_four_workers() {
    let n = 200_000u64;
    let (replay, eps) =
        start_replay("replay", 1, &["--count", "200000", "--rate", "0", "--symbols", "5", "--zipf", "2"]);
    // Five Zipf-skewed topics: by topic, one worker would get most of the
    // feed; round-robin must not care.
    let r = engine_to_end(&eps[0], &["--routing", "round-robin"]);
    let _ = replay.finish(Duration::from_secs(30));
    assert_eq!(r["delivered"], n, "{r}");
    let w = per_worker(&r);
    assert_eq!(w.iter().sum::<u64>(), n);
    // One reader deals messages in turn: every worker gets n/4, give or take one.
    assert!(w.iter().all(|&m| m.abs_diff(n / 4) <= 1), "uneven: {w:?}");
}

#[test]
fn bench_compares_shards_and_routing_in_one_run() {
    let args =
        ["bench", "--count", "20k", "--runs", "1", "--handoff", "batch", "--compare", "shards,routing", "--json"];
    let r = mdsub_json(&args, Duration::from_secs(180));
    let names: Vec<&str> =
        r["runs"].as_array().expect("runs").iter().filter_map(|x| x["subscriber"].as_str()).collect();
    assert_eq!(
        names,
        ["baseline", "engine/batch", "engine/1-shard", "engine/2-shards", "engine/by-topic", "engine/round-robin"]
    );
    for run in r["runs"].as_array().expect("runs") {
        assert_eq!(run["delivered"], 20_000, "{run}");
        assert_eq!(run["lost"], 0, "{run}");
    }
    let two = &r["runs"][3];
    assert_eq!(two["shards"].as_array().expect("shards").len(), 2, "{two}");
    assert!(two["shards"].as_array().expect("shards").iter().all(|s| s["msgs"].as_u64() > Some(0)), "{two}");
    let cmp = r["comparisons"].as_array().expect("comparisons");
    assert_eq!(cmp[0][0], "2 shards / 1 shard");
    assert_eq!(cmp[1][0], "round-robin / by-topic");
    for c in cmp {
        assert!(c[1][0].as_f64().expect("throughput ratio") > 0.0, "{c}");
        assert!(c[1][1].as_f64().expect("CPU ratio") > 0.0, "{c}");
    }
}
