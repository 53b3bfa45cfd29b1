#!/usr/bin/env bash
# `mdsub replay` flat out against the plain C libzmq publisher of the shared
# anchors (`cpub`: XPUB + XPUB_NODROP, SNDHWM 100 000, pre-built mdsub frames,
# clock read every 64 messages), each feeding the plain C SUB (`csub`) in a
# separate process, interleaved round by round so that a change in the box's
# load hits both alike. Per publisher: the rate the C SUB saw (first to last
# frame) and the publisher process's CPU (user + sys, every thread including
# libzmq's I/O thread) per message. Issue 9 item 5 (benches/README.md).
#
# Usage: tools/pub-vs-c.sh [ROUNDS] [COUNT]     (defaults 10 rounds, 2000000 messages)
# MDSUB = the mdsub binary (default target/release/mdsub); BIN = where the anchors'
# build.sh put cpub/csub (default: built into a temporary directory now).
# Extra `mdsub replay` flags go in REPLAY_ARGS (e.g. "--zipf 0" for round-robin-like topics).
set -euo pipefail
rounds="${1:-10}"
count="${2:-2000000}"
NAME=pub-vs-c
# shellcheck source=tools/anchors-common.sh
. "$(dirname "$(readlink -f "$0")")/anchors-common.sh"

# One publisher run: the C SUB's rate and the publisher's CPU ns/msg, appended
# to $results as "who rate cpu" (not run in a subshell, so a failure ends the script).
run() {
  local who="$1" p t out cpu err="$tmp/$1.err"
  p=$(port)
  t="$tmp/time"
  if [ "$who" = c ]; then
    /usr/bin/time -o "$t" -f "%U %S" "$bin/cpub" "tcp://127.0.0.1:$p" "$count" >/dev/null 2>"$err" &
  else
    # shellcheck disable=SC2086
    /usr/bin/time -o "$t" -f "%U %S" "$mdsub" replay --endpoint "tcp://127.0.0.1:$p" --rate 0 \
      --count "$count" --wait-timeout 10s ${REPLAY_ARGS:-} >/dev/null 2>"$err" &
  fi
  local pid=$!
  echo "$pid" >"$tmp/pid"
  out=$(timeout 60 "$bin/csub" "tcp://127.0.0.1:$p") || { echo "pub-vs-c: the C SUB failed behind $who:" >&2; cat "$err" >&2; exit 1; }
  wait "$pid" || { echo "pub-vs-c: $who exited with an error:" >&2; cat "$err" >&2; exit 1; }
  rm -f "$tmp/pid"
  cpu=$(awk -v n="$count" '{ printf "%.0f", ($1 + $2) * 1e9 / n }' "$t")
  rate=$(echo "$out" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
if d["received"] != int(sys.argv[1]):
    sys.exit("pub-vs-c: the C SUB received %d of %s" % (d["received"], sys.argv[1]))
print(d["rate"])' "$count")
  echo "$who $rate $cpu" >> "$results"
}

for r in $(seq 1 "$rounds"); do
  # Alternate who goes first.
  if [ $((r % 2)) -eq 1 ]; then round_runs "$r" c replay; else round_runs "$r" replay c; fi
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
c = [r for r in rows if r[0] == "c"]
m = [r for r in rows if r[0] == "replay"]
med = lambda xs: statistics.median(xs)
rc, rm = med([int(r[1]) for r in c]), med([int(r[1]) for r in m])
cc, cm = med([int(r[2]) for r in c]), med([int(r[2]) for r in m])
# Per-round ratios (the two runs of a round share the box's load).
thr = [int(b[1]) / int(a[1]) for a, b in zip(c, m)]
cpu = [int(b[2]) / int(a[2]) for a, b in zip(c, m)]
print(f"medians over {len(c)} rounds: C publisher {rc/1e6:.2f} M msg/s, cpu {cc:.0f} ns/msg; "
      f"mdsub replay {rm/1e6:.2f} M msg/s, cpu {cm:.0f} ns/msg")
print(f"replay / C publisher, per round: throughput median {med(thr):.2f}x "
      f"(range {min(thr):.2f}-{max(thr):.2f}), CPU median {med(cpu):.2f}x (range {min(cpu):.2f}-{max(cpu):.2f})")
EOF
