#!/usr/bin/env bash
# Run a real Prometheus (Debian's `prometheus` package, installed by
# tools/ci-setup.sh) that scrapes mdsub engines' /metrics.
#
#   tools/prometheus.sh --target HOST:PORT [--target …] [--listen 127.0.0.1:9090]
#                       [--dir DIR] [--scrape-interval 1s] [--credentials-file FILE]
#
# Writes DIR/prometheus.yml (job `mdsub`) and keeps its database in DIR/data
# (DIR defaults to a new temporary directory), then execs Prometheus in the
# foreground, so its pid is this script's pid: stop it with kill PID or Ctrl-C.
# --credentials-file sends `Authorization: Bearer <the file's content>` with
# every scrape (for engines run with --metrics-token-file; docs/SECURITY.md).
# Query it at http://LISTEN/ (e.g. histogram_quantile(0.99,
# sum by (shard, le) (rate(mdsub_latency_seconds_bucket{stage="total"}[1m])))).
# tests/dashboards.rs uses this script; tools/grafana-mdsub.json is a dashboard
# for the same metrics.
set -euo pipefail

targets=()
listen=127.0.0.1:9090
dir=
interval=1s
credentials=
while (($#)); do
    case $1 in
        --target) targets+=("$2"); shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --scrape-interval) interval=$2; shift 2 ;;
        --credentials-file) credentials=$(realpath "$2"); shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "prometheus.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ((${#targets[@]} == 0)); then
    echo "prometheus.sh: give at least one --target HOST:PORT (an engine's --metrics-listen)" >&2
    exit 2
fi
if ! command -v prometheus >/dev/null; then
    echo "prometheus.sh: no prometheus on PATH (Debian: apt-get install prometheus; tools/ci-setup.sh does)" >&2
    exit 3
fi
dir=${dir:-$(mktemp -d -t mdsub-prometheus.XXXXXX)}
mkdir -p "$dir/data"
{
    echo "global:"
    echo "  scrape_interval: $interval"
    echo "  evaluation_interval: $interval"
    echo "scrape_configs:"
    echo "  - job_name: mdsub"
    echo "    scrape_interval: $interval"
    echo "    scrape_timeout: $interval"
    if [[ -n $credentials ]]; then
        echo "    authorization:"
        echo "      credentials_file: '$credentials'"
    fi
    echo "    static_configs:"
    echo "      - targets:"
    for t in "${targets[@]}"; do
        echo "          - '$t'"
    done
} >"$dir/prometheus.yml"
echo "prometheus.sh: config $dir/prometheus.yml, data $dir/data, UI http://$listen/" >&2
exec prometheus \
    --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/data" \
    --web.listen-address="$listen" \
    --log.level=warn
