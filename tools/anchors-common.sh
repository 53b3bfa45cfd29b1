# Sourced by tools/pub-vs-c.sh and tools/sub-vs-c.sh (set NAME first): the
# mdsub binary, the anchors' C programs (built now unless BIN names them), a
# scratch directory whose "pid" file names the process in flight (ended on any
# exit), port() and $results.
mdsub="${MDSUB:-target/release/mdsub}"
anchors="$(dirname "$(readlink -f "$0")")/../../shared/anchors"
tmp=$(mktemp -d)
trap 'kill "$(cat "$tmp/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$tmp"' EXIT
bin="${BIN:-}"
if [ -z "$bin" ]; then
  [ -x "$anchors/build.sh" ] || { echo "$NAME: no anchors at $anchors (set BIN to built cpub/csub)" >&2; exit 2; }
  bin="$tmp/bin"
  "$anchors/build.sh" "$bin" >/dev/null
fi
[ -x "$mdsub" ] || { echo "$NAME: no mdsub binary at $mdsub (cargo build --release, or set MDSUB)" >&2; exit 2; }
port() { echo $((30000 + RANDOM % 20000)); }
results="$tmp/results"

# Round $1: the script's run() for each of the rest, a line each.
round_runs() {
  local r="$1" load who rate cpu
  shift
  load=$(cut -d' ' -f1 /proc/loadavg)
  for who in "$@"; do
    run "$who"
    read -r _ rate cpu < <(tail -1 "$results")
    printf 'round %2d  load %5s  %-7s %9s msg/s  cpu %4s ns/msg\n' "$r" "$load" "$who" "$rate" "$cpu"
  done
}
