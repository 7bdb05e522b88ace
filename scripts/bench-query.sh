#!/usr/bin/env bash
# Benchmark of metrics-query's GET /metrics (BENCHMARKS.md, "metrics-query").
#
# `xtask stack` (the tests' fixtures) seeds a scratch database with 400 days of rows through the
# aggregator and starts the release service on loopback ports it binds and reports; inside it,
# this script saves the 30-day and 365-day responses, then runs wrk at 32 connections against
# each range and, after each, against the HTTP ceiling serving those same bytes from memory (the
# same server and workers), and prints requests/s, p50, p99 and the service's peak RSS.
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
    in_stack_begin
    curl -sf "http://$STACK_API$Q365" >"$WORK/365.json"
    curl -sf "http://$STACK_API$Q30" >"$WORK/30.json"

    echo "30-day body: $(wc -c <"$WORK/30.json") bytes, 365-day body: $(wc -c <"$WORK/365.json") bytes"
    table_head
    run "GET /metrics, 30 days" "http://$STACK_API$Q30"
    ceiling_run "ceiling: same 30-day bytes from memory" "$WORK/30.json"
    run "GET /metrics, 365 days" "http://$STACK_API$Q365"
    ceiling_run "ceiling: same 365-day bytes from memory" "$WORK/365.json"
    peak_rss
    exit 0
fi

build_for_bench
exec "$BIN/xtask" stack --query --seed-days 400 "${QUIET_SERVICE[@]}" -- "$0" --in-stack
