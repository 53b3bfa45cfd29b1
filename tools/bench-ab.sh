#!/usr/bin/env bash
# Engine vs the in-process SUB baseline, CPU ns per message (every thread),
# for one or more mdsub binaries interleaved round by round, so that a change
# in the box's load hits every binary alike. Each line is one `mdsub bench`
# (medians of its 5 runs) with the load average when it started; the last
# lines are the medians over the rounds per binary. Used for issue 9 item 4
# (benches/README.md, "Cheaper per message, after perf3").
#
# Usage: tools/bench-ab.sh ROUNDS BINARY...   e.g.
#   cp target/release/mdsub /tmp/mdsub-new; git stash; cargo build --release; cp target/release/mdsub /tmp/mdsub-old
#   tools/bench-ab.sh 8 /tmp/mdsub-old /tmp/mdsub-new
# Extra `mdsub bench` flags go in BENCH_ARGS (default: --count 1M --runs 5 --handoff batch).
set -euo pipefail
rounds="${1:?usage: tools/bench-ab.sh ROUNDS BINARY...}"
shift
[ $# -ge 1 ] || { echo "usage: tools/bench-ab.sh ROUNDS BINARY..." >&2; exit 2; }
args="${BENCH_ARGS:---count 1M --runs 5 --handoff batch}"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for r in $(seq 1 "$rounds"); do
  for b in "$@"; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    # shellcheck disable=SC2086
    out=$("$b" bench $args 2>&1)
    base=$(echo "$out" | grep -E '^  baseline +[0-9.]+ M msg' | tail -1 | sed -E 's/.*cpu +([0-9]+) ns.*/\1/')
    eng=$(echo "$out" | grep -E '^  engine/batch +[0-9.]+ M msg' | tail -1 | sed -E 's/.*cpu +([0-9]+) ns.*/\1/')
    ratio=$(echo "$out" | grep -E 'CPU ns/msg [0-9.]+x' | tail -1 | sed -E 's/.*CPU ns\/msg ([0-9.]+)x.*/\1/')
    threads=$(echo "$out" | grep 'per thread' | tail -1 | sed 's/.*ns\/msg: //')
    lost=$(echo "$out" | grep -E '^  (baseline|engine/batch) +[0-9.]+ M msg' | tail -2 | grep -cv 'lost       0' || true)
    line="round $r  $b  load $load  baseline $base  engine $eng  ratio $ratio  runs with loss $lost  [$threads]"
    echo "$line"
    echo "$line" >> "$results"
  done
done
echo "medians over $rounds rounds:"
python3 - "$results" "$@" <<'EOF'
import re, statistics, sys
lines = open(sys.argv[1]).read().splitlines()
for b in sys.argv[2:]:
    rows = [l for l in lines if l.split()[2] == b]
    num = lambda key: statistics.median(float(re.search(key + r' ([0-9.]+)', l).group(1)) for l in rows)
    per = {}
    for l in rows:
        for part in l.split('[', 1)[1].rstrip(']').split(','):
            name, v = part.strip().rsplit(' ', 1)
            per.setdefault(name, []).append(int(v))
    threads = ', '.join(f'{k} {statistics.median(v):g}' for k, v in sorted(per.items()))
    print(f'  {b}: baseline {num("baseline"):g}  engine {num("engine"):g}  ratio {num("ratio"):.2f}  [{threads}]')
EOF
