#!/usr/bin/env bash
# Soak: GET /metrics under wrk (64 connections) while metrics-ingest drains a steady stream from
# metrics-loadgen, with the release binaries on loopback. Prints wrk's totals (errors and non-2xx
# must be zero), the resident memory of both services sampled every 5 s (it must stay flat), and
# checks that every published event was counted.
#
#   scripts/soak.sh                   # DURATION=60 (s) CONNECTIONS=64 RATE=500 (events/s)
#   PROFILE=debug DURATION=10 scripts/soak.sh     # the bounded form CI runs, on the test build
#
# The database, the broker names and both services come from `xtask stack` (the tests' fixtures:
# a throwaway database and exchange/queue pair, services on ports they bind and report),
# removed at the end. Needs PostgreSQL and RabbitMQ (scripts/services.sh sees to them) and wrk,
# installed from the distribution's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-60}
CONNECTIONS=${CONNECTIONS:-64}
RATE=${RATE:-500}
PROFILE=${PROFILE:-release}
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE

# The second half: runs inside `xtask stack`, with the stack's coordinates in STACK_*.
if [ "${1:-}" = --in-stack ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  rss() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
  (
    for _ in $(seq 1 $((DURATION / 5 + 1))); do
      printf '%s ingest %s MiB, query %s MiB\n' "$(date +%T)" "$(rss "$STACK_INGEST_PID")" \
        "$(rss "$STACK_QUERY_PID")"
      sleep 5
    done
  ) >"$WORK/rss.log" &
  SAMPLER=$!

  # Sessions of 1 to 5 runs average 4 events: enough sessions to publish at RATE for DURATION.
  SESSIONS=$((RATE * DURATION / 4))
  "$BIN/metrics-loadgen" --url "$STACK_AMQP_URL" --exchange "$STACK_EXCHANGE" \
    --sessions "$SESSIONS" --days 30 --rate "$RATE" --duplicates 0.02 --shuffle --json \
    >"$WORK/loadgen.json" 2>/dev/null &
  LOADGEN=$!

  wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    "http://$STACK_API/metrics?starting_date=2000-01-01&ending_date=2999-12-31" | tee "$WORK/wrk.txt"
  wait "$LOADGEN"
  wait "$SAMPLER" || true
  echo "== resident memory (every 5 s)"
  cat "$WORK/rss.log"

  expected=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(sum(s["runs"]))' \
    "$WORK/loadgen.json")
  counted=0
  for _ in $(seq 1 120); do
    counted=$(curl -fs "http://$STACK_API/metrics" | python3 -c 'import json,sys; b=json.load(sys.stdin); print(sum(r["agent_runs_count"]+r["team_runs_count"]+r["workflow_runs_count"] for r in b["metrics"]))')
    [ "$counted" = "$expected" ] && break
    sleep 0.5
  done
  echo "== runs published $expected, counted $counted"
  if grep -qE "Non-2xx|Socket errors" "$WORK/wrk.txt"; then
    echo "soak: wrk saw errors" >&2
    exit 1
  fi
  [ "$counted" = "$expected" ] || {
    echo "soak: not every run was counted" >&2
    exit 1
  }
  echo "soak: no errors, every run counted"
  exit 0
fi

. scripts/services.sh >/dev/null
command -v wrk >/dev/null 2>&1 || apt_install wrk
if [ "$PROFILE" = release ]; then
  cargo build --release -q --locked --workspace --bins
else
  cargo build -q --locked --workspace --bins
fi
exec "$BIN/xtask" stack --ingest --query -- "$0" --in-stack
