#!/usr/bin/env bash
# Soak: GET /metrics under wrk (64 connections) while metrics-ingest drains a steady stream from
# metrics-loadgen, with the release binaries on loopback. Prints wrk's totals (errors and non-2xx
# must be zero), the resident memory of both services sampled every 5 s (it must stay flat), and
# checks that every published event was counted.
#
#   scripts/soak.sh                   # DURATION=60 (s) CONNECTIONS=64 RATE=500 (events/s)
#   PROFILE=debug DURATION=10 scripts/soak.sh     # the bounded form CI runs, on the test build
#
# Needs PostgreSQL and RabbitMQ on loopback and wrk: scripts/services.sh sees to the services,
# and wrk is installed from the distribution's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh >/dev/null
command -v wrk >/dev/null 2>&1 || apt_install wrk

DURATION=${DURATION:-60}
CONNECTIONS=${CONNECTIONS:-64}
RATE=${RATE:-500}
SUFFIX="soak_$$"
SERVER=${TEST_DATABASE_URL%/*}
URL="$SERVER/metrics_$SUFFIX"
QUEUE="metrics.$SUFFIX"
EXCHANGE="events.$SUFFIX"
# A virtual host of its own: deleting it at the end removes the exchanges and queues with it.
VHOST="metrics_$SUFFIX"
AMQP_URL="${TEST_AMQP_URL%/*}/$VHOST"
API=127.0.0.1:17877
QUERY_ADMIN=127.0.0.1:17878
INGEST_ADMIN=127.0.0.1:17879
PROFILE=${PROFILE:-release}
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS metrics_$SUFFIX WITH (FORCE)" >/dev/null 2>&1 || true
  rabbitmqctl delete_vhost "$VHOST" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$PROFILE" = release ]; then
  cargo build --release -q --workspace --bins
else
  cargo build -q --workspace --bins
fi
psql -q "$TEST_DATABASE_URL" -c "CREATE DATABASE metrics_$SUFFIX" >/dev/null
rabbitmqctl add_vhost "$VHOST" >/dev/null
rabbitmqctl set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null

export METRICS_DATABASE__URL="$URL" METRICS_AMQP__URL="$AMQP_URL"
export METRICS_AMQP__QUEUE="$QUEUE" METRICS_AMQP__EXCHANGE="$EXCHANGE"
"$BIN/metrics-ingest" migrate >/dev/null
METRICS_ADMIN__LISTEN=$INGEST_ADMIN "$BIN/metrics-ingest" run >"$WORK/ingest.log" 2>&1 &
PIDS+=($!); INGEST=$!
METRICS_HTTP__LISTEN=$API METRICS_ADMIN__LISTEN=$QUERY_ADMIN "$BIN/metrics-query" >"$WORK/query.log" 2>&1 &
PIDS+=($!); QUERY=$!
for admin in $INGEST_ADMIN $QUERY_ADMIN; do
  for _ in $(seq 1 100); do curl -fs "http://$admin/readyz" >/dev/null && break; sleep 0.2; done
done

rss() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
(
  for _ in $(seq 1 $((DURATION / 5 + 1))); do
    printf '%s ingest %s MiB, query %s MiB\n' "$(date +%T)" "$(rss "$INGEST")" "$(rss "$QUERY")"
    sleep 5
  done
) >"$WORK/rss.log" &
SAMPLER=$!

# Sessions of 1 to 5 runs average 4 events: enough sessions to publish at RATE for DURATION.
SESSIONS=$((RATE * DURATION / 4))
"$BIN/metrics-loadgen" --url "$AMQP_URL" --exchange "$EXCHANGE" --sessions "$SESSIONS" \
  --days 30 --rate "$RATE" --duplicates 0.02 --shuffle --json >"$WORK/loadgen.json" 2>/dev/null &
LOADGEN=$!

wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
  "http://$API/metrics?starting_date=2000-01-01&ending_date=2999-12-31" | tee "$WORK/wrk.txt"
wait "$LOADGEN"
wait "$SAMPLER" || true
echo "== resident memory (every 5 s)"
cat "$WORK/rss.log"

expected=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(sum(s["runs"]))' "$WORK/loadgen.json")
counted=0
for _ in $(seq 1 120); do
  counted=$(curl -fs "http://$API/metrics" | python3 -c 'import json,sys; b=json.load(sys.stdin); print(sum(r["agent_runs_count"]+r["team_runs_count"]+r["workflow_runs_count"] for r in b["metrics"]))')
  [ "$counted" = "$expected" ] && break
  sleep 0.5
done
echo "== runs published $expected, counted $counted"
if grep -qE "Non-2xx|Socket errors" "$WORK/wrk.txt"; then
  echo "soak: wrk saw errors" >&2
  exit 1
fi
[ "$counted" = "$expected" ] || { echo "soak: not every run was counted" >&2; exit 1; }
echo "soak: no errors, every run counted"
