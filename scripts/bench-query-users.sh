#!/usr/bin/env bash
# Benchmark of per-user reads (the performance goal of agentos-compat.md and issue 10):
# `GET /metrics?user_id=...` over 365 days for 1,000 distinct users in random order, where the
# response cache (a few dozen entries) cannot help, next to the HTTP ceiling in the same run.
#
# `xtask stack` (the tests' fixtures) seeds a scratch database with 400 days through the
# aggregator (the `seed` example), then gives each of USERS users (user-0001 ...) a per-user row
# on every day, a copy of that day's all-users row (three models), in SQL, and starts the
# release service on loopback with its defaults (xtask renders the rows' JSON, as a refresh
# would). Inside it, this script saves one user's 365-day
# body for the ceiling (the `ceiling` example: the same server, workers and middleware, the
# bytes from memory), runs wrk with a Lua script that picks a random user per request, then wrk
# against the ceiling, then the same reads again with the rows' rendered JSON cleared.
#
# Needs: PostgreSQL at TEST_DATABASE_URL's server (default loopback, user postgres; BENCH_SERVER_URL,
# the server's URL without a database, is still honoured), wrk (installed from the distribution's
# packages when missing), curl. Loopback only; each wrk run lasts DURATION.
#
#   scripts/bench-query-users.sh      # DURATION=10s CONNECTIONS=32 THREADS=2 USERS=1000
#   PROFILE=debug scripts/bench-query-users.sh   # a quick look with the debug build
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
USERS=${USERS:-1000}
PROFILE=${PROFILE:-release}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$CARGO_TARGET_DIR/$PROFILE
. scripts/bench-lib.sh

if [[ ${1:-} == --in-stack ]]; then
    in_stack_begin
    curl -sf "http://$STACK_API$Q365&user_id=user-0001" >"$WORK/user.json"
    rows=$(grep -o '"date"' "$WORK/user.json" | wc -l)
    [[ $rows -eq 365 ]] || {
        echo "user-0001 has $rows rows over 365 days, not 365" >&2
        exit 1
    }

    cat >"$WORK/users.lua" <<LUA
math.randomseed(42)
request = function()
  local path = string.format("$Q365&user_id=user-%04d", math.random(1, $USERS))
  return wrk.format("GET", path)
end
LUA

    echo "one user's 365-day body: $(wc -c <"$WORK/user.json") bytes; $USERS users"
    table_head
    run "GET /metrics?user_id=<random of $USERS>, 365 days" "http://$STACK_API" -s "$WORK/users.lua"
    ceiling_run "ceiling: one user's 365-day bytes from memory" "$WORK/user.json"
    # The same reads of rows without their rendered JSON (as rows written before the column
    # existed): the service decodes and renders each row itself.
    psql -q "$STACK_DATABASE_URL" -c "UPDATE user_daily_metrics SET rendered = NULL" \
        -c "VACUUM ANALYZE user_daily_metrics"
    run "the same, rows not rendered (decoded and rendered per read)" "http://$STACK_API" \
        -s "$WORK/users.lua"
    peak_rss
    exit 0
fi

build_for_bench
SQL=$(mktemp)
trap 'rm -f "$SQL"' EXIT
cat >"$SQL" <<SQL
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
"$BIN/xtask" stack --query --seed-days 400 --sql "$SQL" "${QUIET_SERVICE[@]}" -- "$0" --in-stack
