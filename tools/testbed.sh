#!/usr/bin/env bash
# Two network paths on one machine, for proving "a NIC per shard" and for
# breaking a path on purpose. Needs root (network namespaces), iproute2, and
# nftables for `loss`.
#
#   tools/testbed.sh up NAME            build testbed NAME; prints KEY=VALUE lines
#   tools/testbed.sh down NAME          remove it (idempotent; safe after a half-built `up`)
#   tools/testbed.sh run NAME -- CMD…   up, run CMD with the KEY=VALUE lines in its
#                                       environment, down on exit (trap), CMD's status
#   tools/testbed.sh flap NAME A|B SECS take path A or B down for SECS, then up again
#   tools/testbed.sh loss NAME A|B PCT  drop PCT % of the packets the publisher sends on
#                                       path A or B (nftables `numgen random`); 0 removes it
#   tools/testbed.sh bytes NAME         rx/tx byte counters of the subscriber's two NICs
#
# Layout (everything lives in the two namespaces NAME-s and NAME-p that `up`
# creates; nothing is added to the host's own namespace, so addresses and
# interface names cannot collide with the host or with another testbed):
#
#   NAME-s (subscriber)                        NAME-p (publisher)
#   nicA 10.91.1.2/24  ── veth ──  pubA 10.91.1.1/24
#   nicB 10.91.2.2/24  ── veth ──  pubB 10.91.2.1/24
#                                              lo   10.91.9.1/32  (the feed address)
#
# The feed address is reachable over both paths, as on a host whose two NICs
# both reach the exchange: the main table sends 10.91.9.0/24 over nicA, and a
# source rule (`ip rule from 10.91.2.2 lookup 102`) sends traffic whose source
# is nicB's address over nicB. So a connection leaves through nicB only if the
# engine binds its source to nicB (`interface = "nicB"` in a profile, i.e.
# libzmq's `tcp://nicB;10.91.9.1:PORT`), which is what tests/nic.rs checks.
set -euo pipefail

SUB_A=10.91.1.2 PUB_A=10.91.1.1
SUB_B=10.91.2.2 PUB_B=10.91.2.1
FEED=10.91.9.1

die() { echo "testbed: $*" >&2; exit 2; }
need_root() { [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces)"; }
need() { command -v "$1" >/dev/null 2>&1 || die "needs $1 (Debian package $2)"; }
check_name() {
    [[ ${1:-} =~ ^[A-Za-z0-9_.-]{1,40}$ ]] || die "NAME must be 1-40 of [A-Za-z0-9_.-], got '${1:-}'"
}

down() {
    local name=$1
    # Deleting a namespace deletes its veth ends, their peers, addresses,
    # routes, rules and nftables tables with it.
    for ns in "$name-s" "$name-p"; do
        if ip netns list | awk '{print $1}' | grep -qxF "$ns"; then
            # Processes still inside would keep the namespace alive: end them by pid.
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            ip netns del "$ns" || true
        fi
    done
}

up() {
    local name=$1 s="$1-s" p="$1-p"
    # A failure half way removes whatever was made.
    trap 'down "$name"' ERR
    down "$name"
    ip netns add "$s"
    ip netns add "$p"
    ip -n "$s" link set lo up
    ip -n "$p" link set lo up
    # Both ends are created directly inside their namespaces.
    ip link add nicA netns "$s" type veth peer name pubA netns "$p"
    ip link add nicB netns "$s" type veth peer name pubB netns "$p"
    ip -n "$s" addr add "$SUB_A/24" dev nicA
    ip -n "$s" addr add "$SUB_B/24" dev nicB
    ip -n "$p" addr add "$PUB_A/24" dev pubA
    ip -n "$p" addr add "$PUB_B/24" dev pubB
    ip -n "$p" addr add "$FEED/32" dev lo
    for l in nicA nicB; do ip -n "$s" link set "$l" up; done
    for l in pubA pubB; do ip -n "$p" link set "$l" up; done
    # Replies to the feed address come back over the path they left by.
    for ns in "$s" "$p"; do
        ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    done
    routes "$name"
    trap - ERR
    env_lines "$name"
}

# The subscriber's routes to the feed (again after a flap: a link going down
# takes its routes with it).
routes() {
    local s="$1-s"
    ip -n "$s" route replace 10.91.9.0/24 via "$PUB_A" dev nicA
    ip -n "$s" route replace 10.91.9.0/24 via "$PUB_A" dev nicA table 101
    ip -n "$s" route replace 10.91.9.0/24 via "$PUB_B" dev nicB table 102
    ip -n "$s" rule list | grep -q "from $SUB_A lookup 101" || ip -n "$s" rule add from "$SUB_A" lookup 101
    ip -n "$s" rule list | grep -q "from $SUB_B lookup 102" || ip -n "$s" rule add from "$SUB_B" lookup 102
}

env_lines() {
    local name=$1
    echo "TESTBED_SUB_NS=$name-s"
    echo "TESTBED_PUB_NS=$name-p"
    echo "TESTBED_NIC_A=nicA"
    echo "TESTBED_NIC_B=nicB"
    echo "TESTBED_SUB_A=$SUB_A"
    echo "TESTBED_SUB_B=$SUB_B"
    echo "TESTBED_FEED=$FEED"
}

path_ifaces() {
    case $1 in
        A) echo "nicA pubA" ;;
        B) echo "nicB pubB" ;;
        *) die "path must be A or B, got '$1'" ;;
    esac
}

flap() {
    local name=$1 path=$2 secs=$3 ifs
    ifs=$(path_ifaces "$path")
    set -- $ifs
    [[ $secs =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "SECS must be a number, got '$secs'"
    ip -n "$name-p" link set "$2" down
    sleep "$secs"
    ip -n "$name-p" link set "$2" up
    routes "$name"
}

loss() {
    local name=$1 path=$2 pct=$3 ifs table=mdsub_loss p="$1-p"
    need nft nftables
    ifs=$(path_ifaces "$path")
    set -- $ifs
    [[ $pct =~ ^[0-9]+$ ]] && ((pct <= 100)) || die "PCT must be 0..100, got '$pct'"
    ip netns exec "$p" nft delete table inet "$table-$path" 2>/dev/null || true
    ((pct == 0)) && return 0
    # numgen random mod 100 < PCT: PCT % of the TCP segments carrying payload
    # from the publisher leave no trace on the wire (TCP retransmits them).
    ip netns exec "$p" nft -f - <<EOF
table inet $table-$path {
    chain out {
        type filter hook output priority 0; policy accept;
        oifname "$2" tcp sport != 0 meta length > 100 numgen random mod 100 < $pct counter drop
    }
}
EOF
}

bytes() {
    local s="$1-s"
    for l in nicA nicB; do
        printf '%s rx=%s tx=%s\n' "$l" \
            "$(ip netns exec "$s" cat "/sys/class/net/$l/statistics/rx_bytes")" \
            "$(ip netns exec "$s" cat "/sys/class/net/$l/statistics/tx_bytes")"
    done
}

cmd=${1:-}
shift || true
case $cmd in
    up)
        need_root; need ip iproute2; check_name "${1:-}"
        up "$1"
        ;;
    down)
        need_root; need ip iproute2; check_name "${1:-}"
        down "$1"
        ;;
    run)
        need_root; need ip iproute2; check_name "${1:-}"
        name=$1
        shift
        [[ ${1:-} == -- ]] && shift
        (($#)) || die "run needs a command after --"
        trap 'down "$name"' EXIT
        trap 'exit 130' INT TERM
        while IFS= read -r kv; do export "${kv?}"; done < <(up "$name")
        status=0
        "$@" || status=$?
        exit "$status"
        ;;
    flap)
        need_root; check_name "${1:-}"
        (($# == 3)) || die "usage: flap NAME A|B SECS"
        flap "$@"
        ;;
    loss)
        need_root; check_name "${1:-}"
        (($# == 3)) || die "usage: loss NAME A|B PCT"
        loss "$@"
        ;;
    bytes)
        need_root; check_name "${1:-}"
        bytes "$1"
        ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        [[ $cmd == -h || $cmd == --help || $cmd == help ]] || exit 2
        ;;
esac
