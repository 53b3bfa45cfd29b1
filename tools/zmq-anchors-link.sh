#!/usr/bin/env bash
# Links the shared anchors' C `cpub` and `csub` against the libzmq that
# zmq-sys built (static, with its libsodium) rather than Debian's shared
# libzmq5, into OUT, for tools/zmq-ab.sh.
#
# Usage: tools/zmq-anchors-link.sh OUT [TARGET_PROFILE_DIR]
#   TARGET_PROFILE_DIR defaults to target/release (run `cargo build --release`
#   first); the newest zmq-sys build there is used.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,8p' "$0" >&2; exit 2; }
out="$1"
dir="${2:-target/release}"
anchors="$(dirname "$(readlink -f "$0")")/../../shared/anchors"
[ -f "$anchors/cpub.c" ] || { echo "zmq-anchors-link: no anchors at $anchors" >&2; exit 2; }
# shellcheck disable=SC2012
zmq=$(ls -t "$dir"/build/zmq-sys-*/out/lib/libzmq.a 2>/dev/null | head -1)
# shellcheck disable=SC2012
sodium=$(ls -t "$dir"/build/libsodium-sys-stable-*/out/installed/lib/libsodium.a 2>/dev/null | head -1)
[ -n "$zmq" ] && [ -n "$sodium" ] ||
  { echo "zmq-anchors-link: no libzmq.a/libsodium.a under $dir/build (cargo build first)" >&2; exit 2; }
include="$(dirname "$(dirname "$zmq")")/source/include"
mkdir -p "$out"
obj=$(mktemp -d)
trap 'rm -rf "$obj"' EXIT
for p in cpub csub; do
  gcc -O2 -c -o "$obj/$p.o" -I "$include" "$anchors/$p.c"
  g++ -o "$out/$p" "$obj/$p.o" "$zmq" "$sodium" -lpthread
done
echo "linked cpub, csub in $out against $zmq"
