#!/usr/bin/env bash
# Benchmark of metrics-query's GET /metrics (BENCHMARKS.md, "metrics-query").
#
# Seeds a scratch database with 400 days of rows through the aggregator, starts the release
# service on loopback, saves its 365-day response, starts the HTTP ceiling (the same bytes from
# memory, same server and workers), then runs wrk at 32 connections against the 30-day and
# 365-day ranges and the ceiling, and prints requests/s, p50, p99 and the service's peak RSS.
#
# Needs: PostgreSQL reachable at BENCH_DATABASE_URL's server (default loopback, user postgres),
# wrk (installed from the distribution's packages when missing), curl, psql. Loopback only; each
# wrk run lasts DURATION.
#
#   scripts/bench-query.sh            # DURATION=10s CONNECTIONS=32 THREADS=2
set -euo pipefail

cd "$(dirname "$0")/.."
command -v wrk >/dev/null 2>&1 || { . scripts/services.sh >/dev/null; apt_install wrk; }
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
SERVER=${BENCH_SERVER_URL:-postgres://postgres@127.0.0.1:5432}
DB=metrics_bench_query
URL="$SERVER/$DB"
API=127.0.0.1:7787
ADMIN=127.0.0.1:7788
CEILING=127.0.0.1:7789
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release -q -p metrics-query --bin metrics-query --example ceiling --example seed
BIN=$CARGO_TARGET_DIR/release

psql -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
"$BIN/examples/seed" --url "$URL" --days 400 >/dev/null

METRICS_DATABASE__URL=$URL METRICS_HTTP__LISTEN=$API METRICS_ADMIN__LISTEN=$ADMIN \
    METRICS_LOG__LEVEL=warn "$BIN/metrics-query" >"$WORK/service.log" 2>&1 &
SERVICE=$!
PIDS+=("$SERVICE")
for _ in $(seq 100); do
    curl -sf "http://$ADMIN/readyz" >/dev/null && break
    sleep 0.1
done
curl -sf "http://$ADMIN/readyz" >/dev/null

today=$(date -u +%F)
d30=$(date -u -d "$today - 30 days" +%F)
d365=$(date -u -d "$today - 365 days" +%F)
yesterday=$(date -u -d "$today - 1 day" +%F)
Q30="/metrics?starting_date=$d30&ending_date=$yesterday"
Q365="/metrics?starting_date=$d365&ending_date=$yesterday"
curl -sf "http://$API$Q365" >"$WORK/365.json"
curl -sf "http://$API$Q30" >"$WORK/30.json"

"$BIN/examples/ceiling" --body "$WORK/365.json" --listen "$CEILING" >/dev/null 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do
    curl -sf "http://$CEILING/metrics" >/dev/null && break
    sleep 0.1
done

run() { # label url
    local out
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$2")
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
    printf '| %s | %s | %s | %s |%s\n' "$1" "$rps" "$p50" "$p99" "${errors:+ $errors}"
}

echo "30-day body: $(wc -c <"$WORK/30.json") bytes, 365-day body: $(wc -c <"$WORK/365.json") bytes"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $(nproc) cores"
echo
echo "| request | requests/s | p50 | p99 |"
echo "| --- | --- | --- | --- |"
run "GET /metrics, 30 days" "http://$API$Q30"
run "GET /metrics, 365 days" "http://$API$Q365"
run "ceiling: same 365-day bytes from memory" "http://$CEILING/metrics"
echo
echo "metrics-query peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$SERVICE/status")"
