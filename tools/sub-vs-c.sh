#!/usr/bin/env bash
# `mdsub engine` against the plain C SUB of the shared anchors (`csub`: counts
# frames, no decode, no checks, no latency), each fed by the anchors' C
# publisher (`cpub`, lossless, pre-built frames) in a separate process,
# interleaved round by round. Per subscriber: its rate (first to last frame)
# and its process CPU (user + sys, every thread including libzmq's I/O
# thread) per message. The engine runs with the hand-offs in HANDOFFS
# (default "batch inline"). Issue 9 item 4 (benches/README.md). The anchors'
# own measure.sh still spells `mdsub engine --connect`, which is now
# `--endpoint connect:EP`.
#
# Usage: tools/sub-vs-c.sh [ROUNDS] [COUNT]     (defaults 5 rounds, 2000000 messages)
# MDSUB = the mdsub binary (default target/release/mdsub); BIN = where the anchors'
# build.sh put cpub/csub (default: built into a temporary directory now).
set -euo pipefail
rounds="${1:-5}"
count="${2:-2000000}"
handoffs="${HANDOFFS:-batch inline}"
NAME=sub-vs-c
# shellcheck source=tools/anchors-common.sh
. "$(dirname "$(readlink -f "$0")")/anchors-common.sh"

# One subscriber run, appended to $results as "who rate cpu_ns_per_msg" (not run
# in a subshell, so a failure ends the script and the trap ends the publisher).
run() {
  local who="$1" p t out
  p=$(port)
  t="$tmp/time"
  "$bin/cpub" "tcp://127.0.0.1:$p" "$count" 2>/dev/null &
  local pub=$!
  echo "$pub" >"$tmp/pid"
  if [ "$who" = c ]; then
    out=$(/usr/bin/time -o "$t" -f "%U %S" timeout 60 "$bin/csub" "tcp://127.0.0.1:$p" |
      python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["received"], d["rate"])') ||
      { echo "sub-vs-c: the C SUB failed" >&2; exit 1; }
  else
    out=$(/usr/bin/time -o "$t" -f "%U %S" timeout 60 "$mdsub" engine --endpoint "connect:tcp://127.0.0.1:$p" \
      --handoff "$who" --json 2>"$tmp/engine.err" |
      python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["delivered"], int(d["msgs_per_sec"]))' 2>/dev/null) ||
      { echo "sub-vs-c: engine --handoff $who failed:" >&2; cat "$tmp/engine.err" >&2; exit 1; }
  fi
  wait "$pub" || { echo "sub-vs-c: the C publisher failed" >&2; exit 1; }
  rm -f "$tmp/pid"
  read -r got rate <<<"$out"
  [ "$got" = "$count" ] || { echo "sub-vs-c: $who received $got of $count" >&2; exit 1; }
  echo "$who $rate $(awk -v n="$count" '{ printf "%.0f", ($1 + $2) * 1e9 / n }' "$t")" >> "$results"
}

for r in $(seq 1 "$rounds"); do
  # shellcheck disable=SC2086
  round_runs "$r" c $handoffs
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
whos = list(dict.fromkeys(r[0] for r in rows))
c = [r for r in rows if r[0] == "c"]
for w in whos:
    m = [r for r in rows if r[0] == w]
    line = f"{w:8} median {statistics.median(int(r[1]) for r in m) / 1e6:.2f} M msg/s, cpu {statistics.median(int(r[2]) for r in m):.0f} ns/msg"
    if w != "c":
        cpu = [int(b[2]) / int(a[2]) for a, b in zip(c, m)]
        line += f"; engine / C SUB CPU per round: median {statistics.median(cpu):.2f}x (range {min(cpu):.2f}-{max(cpu):.2f})"
    print(line)
EOF
