#!/usr/bin/env bash
# Benchmark of metrics-query's GET /metrics (BENCHMARKS.md, "metrics-query").
#
# `xtask stack` (the tests' fixtures) seeds a scratch database with 400 days of rows through the
# aggregator and starts the release service on loopback ports it binds and reports; inside it,
# this script saves the 365-day response, starts the HTTP ceiling (the same bytes from memory,
# same server and workers), then runs wrk at 32 connections against the 30-day and 365-day
# ranges and the ceiling, and prints requests/s, p50, p99 and the service's peak RSS.
#
# Needs: PostgreSQL at TEST_DATABASE_URL's server (default loopback, user postgres; BENCH_SERVER_URL,
# the server's URL without a database, is still honoured), wrk (installed from the distribution's
# packages when missing), curl. Loopback only; each wrk run lasts DURATION.
#
#   scripts/bench-query.sh            # DURATION=10s CONNECTIONS=32 THREADS=2
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PROFILE=${PROFILE:-release}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$CARGO_TARGET_DIR/$PROFILE
. scripts/bench-lib.sh

if [[ ${1:-} == --in-stack ]]; then
    WORK=$(mktemp -d)
    CEILING_PID=
    trap 'stop_ceiling; rm -rf "$WORK"' EXIT
    today=$(date -u +%F)
    d30=$(date -u -d "$today - 30 days" +%F)
    d365=$(date -u -d "$today - 365 days" +%F)
    yesterday=$(date -u -d "$today - 1 day" +%F)
    Q30="/metrics?starting_date=$d30&ending_date=$yesterday"
    Q365="/metrics?starting_date=$d365&ending_date=$yesterday"
    curl -sf "http://$STACK_API$Q365" >"$WORK/365.json"
    curl -sf "http://$STACK_API$Q30" >"$WORK/30.json"
    start_ceiling "$WORK/365.json"

    echo "30-day body: $(wc -c <"$WORK/30.json") bytes, 365-day body: $(wc -c <"$WORK/365.json") bytes"
    echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $(nproc) cores"
    echo
    echo "| request | requests/s | p50 | p99 |"
    echo "| --- | --- | --- | --- |"
    run "GET /metrics, 30 days" "http://$STACK_API$Q30"
    run "GET /metrics, 365 days" "http://$STACK_API$Q365"
    run "ceiling: same 365-day bytes from memory" "http://$CEILING/metrics"
    echo
    echo "metrics-query peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$STACK_QUERY_PID/status")"
    exit 0
fi

build_for_bench
exec "$BIN/xtask" stack --query --seed-days 400 "${QUIET_SERVICE[@]}" -- "$0" --in-stack
