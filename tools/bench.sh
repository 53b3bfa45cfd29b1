#!/usr/bin/env bash
# Runs the benchmark set recorded in benches/README.md and keeps every result
# as JSON under out/bench-<commit>-<time>/ (each file is stamped inside with
# machine, commit and settings). Usage: tools/bench.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
repeats="${1:-5}"
cargo build --release --quiet
bin=target/release/mdsub
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
dir="out/bench-${commit}-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$dir"
echo "results in $dir"

run() { # name, args...
  local name=$1; shift
  echo "== $name: mdsub bench $*"
  "$bin" bench "$@" --runs "$repeats" --save "$dir/$name.json" | tee "$dir/$name.txt"
}

# Lossless throughput, flat out, 100-byte payloads.
run throughput-100B --count 2M --payload-bytes 100
# CPU per message (every thread, libzmq's I/O threads included), layouts and
# publishers, each against its baseline in the same runs (issue 9).
run layouts-publishers --count 500k --handoff batch --compare publishers,shards,routing
# Latency at a fixed rate well inside capacity.
run latency-100k --rate 100k --duration 5s --payload-bytes 100
echo "done: $dir"
