#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, idempotently:
# Debian packages and Python packages for independent checks. Called by
# .ci/run; safe to run by hand (as root) any number of times. Without root it
# says what it would install and leaves it to the tests to skip (each skip
# says why).
set -euo pipefail

# Debian packages: one line per package with the reason.
DEB_PACKAGES=(
    prometheus   # tests/dashboards.rs: a real Prometheus scrapes the engine's /metrics (tools/prometheus.sh); promtool checks the page
    tmux         # tests/dashboards.rs: drives `mdsub top`'s interactive view and captures the pane
    iproute2   # tools/testbed.sh (tests/nic.rs): network namespaces and veth pairs, one NIC per shard
    nftables   # tools/testbed.sh loss: random packet loss on a path (`numgen random`; no netem in CI's kernel); tests/cli.rs: a namespace whose loopback drops SYNs
    python3    # tools/soak.sh + tools/soak.py (tests/soak.rs): samples RSS/CPU/p99 and draws the SVG (standard library only)
)
# Python packages for independent readers/peers: one line per package with the reason.
PIP_PACKAGES=(
    hdrhistogram       # tests/dashboards.rs: reads the engine's .hlog with HdrHistogram's Python log reader
    prometheus_client  # tests/dashboards.rs: parses /metrics with Prometheus' own text-format parser
)

missing_debs=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing_debs+=("$p")
done
if ((${#missing_debs[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "ci-setup: installing Debian packages: ${missing_debs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}" >/dev/null
    else
        echo "ci-setup: not root; would install: ${missing_debs[*]}"
    fi
fi

missing_pips=()
for p in "${PIP_PACKAGES[@]}"; do
    python3 -c "import importlib.metadata as m; m.version('${p%%=*}')" >/dev/null 2>&1 || missing_pips+=("$p")
done
if ((${#missing_pips[@]})); then
    echo "ci-setup: installing Python packages: ${missing_pips[*]}"
    python3 -m pip install -q "${missing_pips[@]}"
fi
