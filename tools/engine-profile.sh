#!/usr/bin/env bash
# Per-thread costs of `mdsub engine` fed by `mdsub replay` (flat out, 100-byte
# payloads, lossless), the engine alone under the tool, the replay run
# natively in its own process. Used for "Cheaper batch hand-off" in
# benches/README.md.
#
# Usage: tools/engine-profile.sh callgrind|stat MDSUB HANDOFF COUNT OUTDIR
#   callgrind  valgrind --tool=callgrind --separate-threads=yes: one file per
#              thread (OUTDIR/cg.PID-NN); user-space instructions, deterministic
#              under load. Read one with `callgrind_annotate [--inclusive=yes] FILE`;
#              each thread's file is named by its role (reader, worker, io,
#              other) with its instructions per message delivered. The snail's
#              lag limit is raised to an hour and the replay waits up to 10 min
#              for the end of stream to be taken: under valgrind the engine runs
#              ~50x slower, would croak, and is still reading when the replay's
#              default 10 s wait ends (the run then delivers only part of COUNT).
#   stat       perf stat --per-thread: page faults, the system calls of the hand-off
#              (write/read of the eventfd signals, poll, sched_yield, madvise,
#              mprotect) and task-clock per thread (root, or perf_event_paranoid ≤ 1).
# HANDOFF: batch | inline | per-message. Needs python3 (a free port, the summary).
set -euo pipefail
[ $# -eq 5 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
mode="$1" mdsub="$2" handoff="$3" count="$4" out="$5"
mkdir -p "$out"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
engine_args=(engine --endpoint "connect:tcp://127.0.0.1:$port" --handoff "$handoff" --json)
replay() { "$mdsub" replay --endpoint "bind:tcp://127.0.0.1:$port" --count "$count" --json "$@" >"$out/replay.json" 2>"$out/replay.err"; }
case "$mode" in
  callgrind)
    replay --eos-wait 10m &
    pub=$!
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out/cg.%p" \
      "$mdsub" "${engine_args[@]}" --max-lag 1h --grace 1h >"$out/engine.json" 2>"$out/engine.err"
    wait "$pub"
    delivered=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["delivered"])' "$out/engine.json")
    [ "$delivered" -gt 0 ] || { echo "nothing delivered (see $out/engine.err)" >&2; exit 1; }
    for f in "$out"/cg.*-*; do
      n=$(grep -m1 '^summary' "$f" | awk '{print $2}')
      [ "$n" -gt 1000000 ] || continue
      role=other
      if grep -q 'ReaderAgent::try_flush' "$f"; then role=reader
      elif grep -q 'WorkerCore<C>::handle_view\|WorkerCore<C>::end_round' "$f"; then role=worker
      elif grep -q 'stream_engine_base' "$f"; then role=io
      fi
      echo "$(basename "$f") $role $n instructions, $((n / delivered)) per message delivered"
    done
    ;;
  stat)
    ev=page-faults,task-clock
    for s in write read poll sched_yield madvise mprotect; do ev="$ev,syscalls:sys_enter_$s"; done
    "$mdsub" "${engine_args[@]}" >"$out/engine.json" 2>"$out/engine.err" &
    eng=$!
    # The replay waits for its subscriber; perf attaches before it starts sending.
    sleep 0.3
    perf stat --per-thread -p "$eng" -e "$ev" -o "$out/stat" &
    st=$!
    sleep 0.3
    replay
    wait "$eng"
    kill -INT "$st"
    wait "$st" || true
    grep -E 'shard|worker' "$out/stat" | awk '$2 + 0 > 0' | sed 's/#.*//'
    ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print("delivered", d["delivered"], " ".join("%s=%.0f" % (t["thread"], t["cpu_ns_per_msg"]) for t in d["threads"]), "(CPU ns/msg)")
' "$out/engine.json"
