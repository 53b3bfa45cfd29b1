#!/usr/bin/env bash
# Runs the benchmark set recorded in benches/README.md and keeps every result
# as JSON under out/bench-<commit>-<time>/ (each file is stamped inside with
# machine, commit and settings).
usage() {
  cat <<'EOF'
Usage: [MDSUB=PATH] tools/bench.sh [RUNS]

Runs the benchmark set of benches/README.md, RUNS times each (default 5; medians are
reported), and keeps every result as JSON (and the printed lines) under
out/bench-<commit>-<time>/, <commit> being the one the binary reports (`mdsub info`).

  MDSUB=PATH   the mdsub binary to measure (e.g. an older build to compare against);
               default: build this tree (`cargo build --release`) and use target/release/mdsub
EOF
}
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then usage; exit 0; fi
if [[ $# -gt 1 || ($# -eq 1 && ! "$1" =~ ^[1-9][0-9]*$) ]]; then usage >&2; exit 2; fi
repeats="${1:-5}"
if [[ -n "${MDSUB:-}" ]]; then
  [[ -x "$MDSUB" && -f "$MDSUB" ]] || { echo "tools/bench.sh: MDSUB=$MDSUB is not an executable file" >&2; exit 2; }
  bin=$(realpath "$MDSUB") # relative to where it was given, before the cd below
fi
cd "$(dirname "$0")/.."
if [[ -z "${MDSUB:-}" ]]; then
  cargo build --release --quiet
  bin=target/release/mdsub
fi
commit=$("$bin" info 2>/dev/null | sed -n 's/^mdsub .* (commit \(.*\))$/\1/p' || true)
commit=${commit:-unknown}
dir="out/bench-${commit}-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$dir"
echo "binary $bin (commit $commit); results in $dir"

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
