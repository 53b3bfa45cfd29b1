#!/usr/bin/env bash
# Long run: replay -> engine (and replay -> LVC -> engine) at a fixed rate for a set time,
# sampling the engine's RSS, CPU, msgs/s, p99 per interval and loss (gaps) to a TSV file,
# then plotting it as an SVG (tools/soak.py, standard library only).
#
#   tools/soak.sh [--duration 10m] [--rate 50k] [--interval 10s] [--path direct|lvc|both]
#                 [--out DIR] [--bin PATH] [--payload-bytes N]
#
# Writes DIR/soak.tsv (one line per interval per path), DIR/soak.svg, and per path the
# engine's JSON report (DIR/PATH-engine.json: sent, delivered, lost), the replay's
# (DIR/PATH-replay.json) and the stderr of every process (DIR/PATH-*.err). Prints a summary:
# RSS at the first sample after warm-up and at the end, loss, p99 per interval (min/median/max).
# The publisher is lossless (XPUB_NODROP), so any loss the engine reports is a fault.
set -euo pipefail

duration=10m rate=50k interval=10s path=both out="" payload=100
bin="$(cd "$(dirname "$0")/.." && pwd)/target/release/mdsub"
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --interval) interval=$2; shift 2 ;;
        --path) path=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --payload-bytes) payload=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$path" in direct) paths=(direct) ;; lvc) paths=(lvc) ;; both) paths=(direct lvc) ;;
    *) echo "soak.sh: --path is direct, lvc or both" >&2; exit 2 ;; esac
[ -x "$bin" ] || { echo "soak.sh: no mdsub binary at $bin (cargo build --release, or --bin)" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
[ -n "$out" ] || out=$(mktemp -d /tmp/mdsub-soak.XXXXXX)
mkdir -p "$out"
secs() { # 10m, 30s, 2h, 500ms -> seconds (float)
    python3 -c "import re,sys; m=re.fullmatch(r'([0-9.]+)(ms|s|m|h)',sys.argv[1]) or sys.exit('soak.sh: bad duration '+sys.argv[1]); print(float(m[1])*{'ms':.001,'s':1,'m':60,'h':3600}[m[2]])" "$1"
}
dur_s=$(secs "$duration"); int_s=$(secs "$interval")
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
tsv="$out/soak.tsv"
: > "$tsv"
echo "soak: $("$bin" info 2>/dev/null | sed -n 1p) on $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "soak: paths ${paths[*]}, $duration each at $rate msg/s, ${payload}-byte payloads, sampled every $interval -> $out"
for p in "${paths[@]}"; do
    pub=$(port) met=$(port)
    # Replay counts subscriptions that reach it: through the LVC, the engine's, forwarded (the
    # LVC's own subscribe-all is marked as no subscriber); so it starts once the engine is there.
    engine_ep=$pub extra=() subs=1
    if [ "$p" = lvc ]; then
        back=$(port)
        "$bin" lvc --frontend "connect:tcp://127.0.0.1:$pub" --backend "bind:tcp://127.0.0.1:$back" \
            >"$out/$p-lvc.out" 2>"$out/$p-lvc.err" &
        lvc_pid=$!; pids+=("$lvc_pid"); extra=(--lvc-pid "$lvc_pid")
        engine_ep=$back
    fi
    # The engine ends at the publisher's end of stream; --max-duration is the safety net.
    "$bin" engine --endpoint "connect:tcp://127.0.0.1:$engine_ep" --metrics-listen "127.0.0.1:$met" \
        --metrics-interval "$interval" --max-duration "$(python3 -c "print(int($dur_s + 120))")s" --json \
        >"$out/$p-engine.json" 2>"$out/$p-engine.err" &
    engine_pid=$!; pids+=("$engine_pid")
    # Replay waits for its one subscriber (the engine, directly or through the LVC) before sending.
    "$bin" replay --endpoint "bind:tcp://127.0.0.1:$pub" --rate "$rate" --duration "$duration" \
        --payload-bytes "$payload" --subscribers "$subs" --json >"$out/$p-replay.json" 2>"$out/$p-replay.err" &
    replay_pid=$!; pids+=("$replay_pid")
    python3 "$here/soak.py" sample --pid "$engine_pid" --metrics "http://127.0.0.1:$met/metrics" \
        --interval "$int_s" --path "$p" --out "$tsv" "${extra[@]}" &
    sampler=$!
    wait "$replay_pid" || echo "soak: $p: replay exited with $?" >&2
    wait "$engine_pid" || echo "soak: $p: engine exited with $? (see $out/$p-engine.err)" >&2
    wait "$sampler" || true
    [ "$p" = lvc ] && { kill -INT "$lvc_pid" 2>/dev/null || true; wait "$lvc_pid" || true; }
done
python3 "$here/soak.py" plot --in "$tsv" --out "$out/soak.svg" \
    --title "mdsub soak: ${paths[*]}, $duration at $rate msg/s, every $interval"
python3 - "$tsv" "$out" "${paths[@]}" <<'EOF'
import json, statistics, sys
tsv, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [l.rstrip("\n").split("\t") for l in open(tsv)]
hdr = rows[0]
for p in paths:
    rs = [dict(zip(hdr, r)) for r in rows[1:] if r[0] == p]
    try:
        rep = json.load(open(f"{out}/{p}-engine.json"))
        sent, lost = rep.get("sent"), rep.get("lost")
    except (OSError, ValueError):
        sent = lost = "?"
    if len(rs) < 3:
        print(f"soak: {p}: only {len(rs)} samples"); continue
    warm = rs[min(2, len(rs) - 1)]  # after two intervals of warm-up
    p99 = sorted(float(r["p99_ms"]) for r in rs[1:])
    r0, r1 = int(warm["rss_kib"]), int(rs[-1]["rss_kib"])
    print(f"soak: {p}: samples {len(rs)}, RSS after warm-up {r0} KiB, at end {r1} KiB ({100 * (r1 - r0) / r0:+.1f} %), "
          f"sent {sent}, lost {lost}, gaps {rs[-1]['gaps']}, p99 per interval min {p99[0]:.2f} "
          f"median {statistics.median(p99):.2f} max {p99[-1]:.2f} ms, CPU median "
          f"{statistics.median(float(r['cpu_pct']) for r in rs[1:]):.0f} %")
EOF
echo "soak: samples $tsv, plot $out/soak.svg"
