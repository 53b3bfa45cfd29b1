#!/usr/bin/env bash
# Compares libzmq builds under the same plain C programs: the shared anchors'
# `cpub` (XPUB + XPUB_NODROP, SNDHWM 100 000, flat out) feeding `csub` (plain
# SUB, counts frames), each linked against a different libzmq (Debian's shared
# libzmq5, mdsub's static build, a variant). Rounds are interleaved (every
# build once per round, the order rotated each round) so that the box's load
# hits all alike; per build it prints the medians over the rounds of the
# publisher process's and the subscriber process's CPU (user + sys, all threads
# including libzmq's I/O thread) per message, and the rate the SUB saw.
#
# Usage: tools/zmq-ab.sh ROUNDS COUNT DIR...
#   each DIR holds a cpub and a csub (same arguments as the anchors'; a
#   wrapper that execs e.g. `mdsub replay` or `mdsub engine` works too); its
#   name is the build's label.
# PIN="P S" runs the publisher on CPU P and the subscriber on CPU S (taskset):
# fewer migrations, steadier figures on a shared box.
# Link the anchors against mdsub's libzmq with tools/zmq-anchors-link.sh.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,17p' "$0" >&2; exit 2; }
rounds="$1"
count="$2"
shift 2
for d in "$@"; do
  [ -x "$d/cpub" ] && [ -x "$d/csub" ] || { echo "zmq-ab: no cpub/csub in $d" >&2; exit 2; }
done
pin_pub=()
pin_sub=()
if [ -n "${PIN:-}" ]; then
  read -r pub_cpu sub_cpu <<<"$PIN"
  pin_pub=(taskset -c "$pub_cpu")
  pin_sub=(taskset -c "$sub_cpu")
fi
tmp=$(mktemp -d)
trap 'kill "$(cat "$tmp/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$tmp"' EXIT

# One run of build $1 in round $2: appends "label pub_ns sub_ns rate" to $tmp/results.
run() {
  local d="$1" r="$2" p label out pid pub sub rate
  label=$(basename "$d")
  # A port nothing listens on (the box is shared with other benchmarks).
  p=$((30000 + RANDOM % 20000))
  while ss -Htln "sport = :$p" | grep -q .; do p=$((30000 + RANDOM % 20000)); done
  /usr/bin/time -o "$tmp/pt" -f "%U %S" "${pin_pub[@]}" "$d/cpub" "tcp://127.0.0.1:$p" "$count" >/dev/null 2>"$tmp/perr" &
  pid=$!
  echo "$pid" >"$tmp/pid"
  out=$(timeout 120 /usr/bin/time -o "$tmp/st" -f "%U %S" "${pin_sub[@]}" "$d/csub" "tcp://127.0.0.1:$p") ||
    { echo "zmq-ab: csub failed under $label:" >&2; cat "$tmp/perr" >&2; exit 1; }
  wait "$pid" || { echo "zmq-ab: cpub failed under $label:" >&2; cat "$tmp/perr" >&2; exit 1; }
  rm -f "$tmp/pid"
  pub=$(awk -v n="$count" '{ printf "%.0f", ($1 + $2) * 1e9 / n }' "$tmp/pt")
  sub=$(awk -v n="$count" '{ printf "%.0f", ($1 + $2) * 1e9 / n }' "$tmp/st")
  rate=$(echo "$out" | sed -n 's/.*"rate":\([0-9]*\).*/\1/p')
  rate=${rate:-0} # a SUB that prints no "rate" (e.g. mdsub engine)
  echo "$label $pub $sub $rate" >>"$tmp/results"
  printf 'round %2d  load %5s  %-14s pub %4s ns/msg  sub %4s ns/msg  %9s msg/s\n' \
    "$r" "$(cut -d' ' -f1 /proc/loadavg)" "$label" "$pub" "$sub" "$rate"
}

n=$#
for ((r = 1; r <= rounds; r++)); do
  for ((i = 0; i < n; i++)); do
    k=$(((i + r - 1) % n + 1))
    run "${!k}" "$r"
  done
done

echo "medians over $rounds rounds of $count messages (CPU ns/msg; pub+sub = the sum of the medians):"
python3 - "$tmp/results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, pub, sub, rate = line.split()
    rows.setdefault(label, []).append((int(pub), int(sub), int(rate or 0)))
for label, rs in rows.items():
    pub = statistics.median(r[0] for r in rs)
    sub = statistics.median(r[1] for r in rs)
    rate = statistics.median(r[2] for r in rs)
    print(f"{label:14s} pub {pub:6.0f}  sub {sub:6.0f}  pub+sub {pub + sub:6.0f}  rate {rate / 1e6:5.2f} M msg/s")
EOF
