#!/usr/bin/env bash
# Benchmark of per-user reads (the performance goal of agentos-compat.md and issue 10):
# `GET /metrics?user_id=...` over 365 days for 1,000 distinct users in random order, where the
# response cache (a few dozen entries) cannot help, next to the HTTP ceiling in the same run.
#
# Seeds a scratch database with 400 days through the aggregator (the `seed` example), then gives
# each of USERS users (user-0001 ...) a per-user row on every day, a copy of that day's
# all-users row (three models), in SQL; starts the release service on loopback with its defaults;
# saves one user's 365-day body for the ceiling (the `ceiling` example: the same server, workers
# and middleware, the bytes from memory); runs wrk with a Lua script that picks a random user per
# request, then wrk against the ceiling.
#
# Needs: PostgreSQL at BENCH_SERVER_URL's server (default loopback, user postgres), wrk
# (installed from the distribution's packages when missing), curl, psql. Loopback only; each wrk
# run lasts DURATION.
#
#   scripts/bench-query-users.sh      # DURATION=10s CONNECTIONS=32 THREADS=2 USERS=1000
#   PROFILE=debug scripts/bench-query-users.sh   # a quick look with the debug build
set -euo pipefail

cd "$(dirname "$0")/.."
command -v wrk >/dev/null 2>&1 || { . scripts/services.sh >/dev/null; apt_install wrk; }
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
USERS=${USERS:-1000}
SERVER=${BENCH_SERVER_URL:-postgres://postgres@127.0.0.1:5432}
DB=metrics_bench_query_users
URL="$SERVER/$DB"
API=127.0.0.1:7797
ADMIN=127.0.0.1:7798
CEILING=127.0.0.1:7799
PROFILE=${PROFILE:-release}
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

if [[ $PROFILE == release ]]; then
    cargo build --release -q -p metrics-query --bin metrics-query --example ceiling --example seed
else
    cargo build -q -p metrics-query --bin metrics-query --example ceiling --example seed
fi
BIN=$CARGO_TARGET_DIR/$PROFILE

psql -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
"$BIN/examples/seed" --url "$URL" --days 400 >/dev/null
psql -q "$URL" -v ON_ERROR_STOP=1 >/dev/null <<SQL
INSERT INTO user_daily_metrics (
    table_id, user_id, date, agent_runs_count, agent_sessions_count, team_runs_count,
    team_sessions_count, workflow_runs_count, workflow_sessions_count, users_count,
    input_tokens, output_tokens, total_tokens, audio_tokens, input_audio_tokens,
    output_audio_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost,
    model_metrics, created_at, updated_at
)
SELECT d.table_id, format('user-%s', lpad(u::text, 4, '0')), d.date, d.agent_runs_count,
    d.agent_sessions_count, d.team_runs_count, d.team_sessions_count, d.workflow_runs_count,
    d.workflow_sessions_count, 1, d.input_tokens, d.output_tokens, d.total_tokens,
    d.audio_tokens, d.input_audio_tokens, d.output_audio_tokens, d.cached_tokens,
    d.cache_write_tokens, d.reasoning_tokens, d.cost, d.model_metrics, d.created_at,
    d.updated_at
FROM daily_metrics d CROSS JOIN generate_series(1, $USERS) AS u
ON CONFLICT DO NOTHING;
VACUUM ANALYZE;
SQL

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
d365=$(date -u -d "$today - 365 days" +%F)
yesterday=$(date -u -d "$today - 1 day" +%F)
Q365="/metrics?starting_date=$d365&ending_date=$yesterday"
curl -sf "http://$API$Q365&user_id=user-0001" >"$WORK/user.json"
rows=$(grep -o '"date"' "$WORK/user.json" | wc -l)
[[ $rows -eq 365 ]] || { echo "user-0001 has $rows rows over 365 days, not 365" >&2; exit 1; }

cat >"$WORK/users.lua" <<LUA
math.randomseed(42)
request = function()
  local path = string.format("$Q365&user_id=user-%04d", math.random(1, $USERS))
  return wrk.format("GET", path)
end
LUA

"$BIN/examples/ceiling" --body "$WORK/user.json" --listen "$CEILING" >/dev/null 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do
    curl -sf "http://$CEILING/metrics" >/dev/null && break
    sleep 0.1
done

run() { # label url [wrk arguments]
    local label=$1 url=$2 out
    shift 2
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url")
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
    printf '| %s | %s | %s | %s |%s\n' "$label" "$rps" "$p50" "$p99" "${errors:+ $errors}"
}

echo "one user's 365-day body: $(wc -c <"$WORK/user.json") bytes; $USERS users"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $(nproc) cores"
echo
echo "| request | requests/s | p50 | p99 |"
echo "| --- | --- | --- | --- |"
run "GET /metrics?user_id=<random of $USERS>, 365 days" "http://$API" -s "$WORK/users.lua"
run "ceiling: one user's 365-day bytes from memory" "http://$CEILING/metrics"
echo
echo "metrics-query peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$SERVICE/status")"
