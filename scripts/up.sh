#!/usr/bin/env bash
# The whole system in one command, with or without Docker: PostgreSQL and RabbitMQ (started the
# way the tests start them, by scripts/services.sh, when they do not answer), the binaries, the
# migrations, then metrics-ingest and metrics-query in the foreground with their logs interleaved
# and labelled. Ctrl-C or SIGTERM stops both services cleanly and exits 0; the data stays.
#
#   scripts/up.sh              # release build; API and dashboard on 7777, admin ports 7778, 9091
#   scripts/up.sh --demo       # and, once both are ready, publish a week of traffic with
#                              # metrics-loadgen so the dashboard has something to show
#
# Environment (all optional):
#   METRICS_DATABASE__URL   the services' database, created when missing
#                           (postgres://postgres:postgres@127.0.0.1:5432/metrics)
#   METRICS_AMQP__URL       RabbitMQ (amqp://guest:guest@127.0.0.1:5672/%2f)
#   METRICS_*               any other setting, passed to both services as it is (README), except
#                           the listen addresses, which come from:
#   BIND_ADDRESS (127.0.0.1), API_PORT (7777), QUERY_ADMIN_PORT (7778), INGEST_ADMIN_PORT (9091)
#   PROFILE                 release (default) or debug (builds faster, runs slower)
#   DEMO_SESSIONS           sessions --demo publishes over the last seven days (2000)
set -euo pipefail
cd "$(dirname "$0")/.."

demo=0
for arg in "$@"; do
  case $arg in
    --demo) demo=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "up: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

export METRICS_DATABASE__URL="${METRICS_DATABASE__URL:-postgres://postgres:postgres@127.0.0.1:5432/metrics}"
export METRICS_AMQP__URL="${METRICS_AMQP__URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
BIND_ADDRESS=${BIND_ADDRESS:-127.0.0.1}
API_PORT=${API_PORT:-7777}
QUERY_ADMIN_PORT=${QUERY_ADMIN_PORT:-7778}
INGEST_ADMIN_PORT=${INGEST_ADMIN_PORT:-9091}
PROFILE=${PROFILE:-release}
DEMO_SESSIONS=${DEMO_SESSIONS:-2000}
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE

# (scripts/services.sh, sourced below, has its own `say`.)
tell() { printf 'up: %s\n' "$*" >&2; }
# A URL with its password masked, for the console.
masked() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# The database's name and the server's maintenance database, for scripts/services.sh.
database=${METRICS_DATABASE__URL##*/}
database=${database%%\?*}
export TEST_DATABASE_URL="${METRICS_DATABASE__URL%/*}/postgres"
export TEST_AMQP_URL="$METRICS_AMQP__URL"
# Running the system needs none of the programs only the tests use (scripts/services.sh).
export TEST_TOOLS=0

stop_requested=0
trap 'stop_requested=1' INT TERM
PIDS=()
WORK=$(mktemp -d)
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
stop_if_requested() {
  if [ "$stop_requested" = 1 ]; then
    tell "stopped before the services started"
    exit 0
  fi
}

. scripts/services.sh

if [ "$PROFILE" = release ]; then
  profile_args=(--release)
elif [ "$PROFILE" = debug ]; then
  profile_args=()
else
  tell "PROFILE is release or debug, not $PROFILE"
  exit 2
fi
tell "building the binaries ($PROFILE)"
# The same build as scripts/test.sh's, so a test build is reused as it is.
cargo build "${profile_args[@]}" --locked --workspace --bins
stop_if_requested

# metrics-ingest migrate needs the database to exist.
if ! command -v psql >/dev/null 2>&1; then
  apt_install postgresql-client || tell "no psql: create the database $database yourself if missing"
fi
if command -v psql >/dev/null 2>&1 &&
  [ "$(psql "$TEST_DATABASE_URL" -qAt -v name="$database" <<<"SELECT 1 FROM pg_database WHERE datname = :'name'")" != 1 ]; then
  tell "creating the database $database"
  psql "$TEST_DATABASE_URL" -q -v ON_ERROR_STOP=1 -v name="$database" <<<'CREATE DATABASE :"name"' >/dev/null
fi
tell "applying the migrations to $(masked "$METRICS_DATABASE__URL")"
"$BIN/metrics-ingest" migrate 2>&1 | awk '{ print "migrate| " $0; fflush() }'
stop_if_requested

# Each program's output goes through a FIFO to a labeller that prefixes every line with the
# program's name: the services' own PIDs are then the ones to signal and wait for. Background
# jobs of a script ignore SIGINT, so the labellers print to the end after a Ctrl-C.
labelled() { # label command...
  local label=$1 fifo
  shift
  fifo="$WORK/$label"
  mkfifo "$fifo"
  awk -v label="$(printf '%-7s| ' "$label")" '{ print label $0; fflush() }' <"$fifo" &
  LABELLERS+=($!)
  "$@" >"$fifo" 2>&1 &
  PIDS+=($!)
}
LABELLERS=()
METRICS_ADMIN__LISTEN="$BIND_ADDRESS:$INGEST_ADMIN_PORT" labelled ingest "$BIN/metrics-ingest" run
INGEST=$!
METRICS_HTTP__LISTEN="$BIND_ADDRESS:$API_PORT" METRICS_ADMIN__LISTEN="$BIND_ADDRESS:$QUERY_ADMIN_PORT" \
  labelled query "$BIN/metrics-query"
QUERY=$!
SERVICES=("$INGEST" "$QUERY")

running() { kill -0 "$1" 2>/dev/null; }

# Stops both services (SIGTERM: they drain and exit 0) and the labellers; exits 0 when both
# stopped cleanly.
stop_all() { # [status]: 1 when stopping for a failure
  local status=${1:-0} pid code
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${SERVICES[@]}"; do
    code=0
    wait "$pid" || code=$?
    if [ "$code" != 0 ]; then
      tell "$([ "$pid" = "$INGEST" ] && echo metrics-ingest || echo metrics-query) exited with $code"
      status=1
    fi
  done
  for pid in "${PIDS[@]}" "${LABELLERS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  # A service exits 0 only when it was told to stop (a signal, which a Ctrl-C sends the services
  # too): then the stop is a clean one even if this script's own trap did not see it.
  [ "$status" = 0 ] && tell "both services stopped; the data stays in $database and RabbitMQ"
  exit "$status"
}

ready() { curl -fs -o /dev/null "http://$1/readyz"; }
for admin in "$BIND_ADDRESS:$INGEST_ADMIN_PORT" "$BIND_ADDRESS:$QUERY_ADMIN_PORT"; do
  deadline=$((SECONDS + 60))
  until ready "$admin"; do
    [ "$stop_requested" = 1 ] && stop_all
    if ! running "$INGEST" || ! running "$QUERY" || [ "$SECONDS" -ge "$deadline" ]; then
      tell "a service did not become ready (http://$admin/readyz); stopping"
      stop_all 1
    fi
    sleep 0.2
  done
done

cat >&2 <<EOF

  AgentOS Metrics is up
    dashboard      http://$BIND_ADDRESS:$API_PORT/dashboard
    API            http://$BIND_ADDRESS:$API_PORT/metrics   (contract: /openapi.json)
    query admin    http://$BIND_ADDRESS:$QUERY_ADMIN_PORT/readyz   Prometheus: /metrics
    ingest admin   http://$BIND_ADDRESS:$INGEST_ADMIN_PORT/readyz   Prometheus: /metrics
    publish to     $(masked "$METRICS_AMQP__URL"), exchange ${METRICS_AMQP__EXCHANGE:-agentos.events}
    database       $(masked "$METRICS_DATABASE__URL")
  Ctrl-C stops both services; the data stays.

EOF

if [ "$demo" = 1 ]; then
  labelled demo "$BIN/metrics-loadgen" --sessions "$DEMO_SESSIONS" --days 7 --users 60 \
    --duplicates 0.02 --resent-runs 0.01 --shuffle --poison 0.001
  DEMO=$!
  wait "$DEMO" || [ "$stop_requested" = 1 ] || tell "the demo traffic was not all published"
fi

# Until a signal, or until a service exits by itself.
while [ "$stop_requested" != 1 ] && running "$INGEST" && running "$QUERY"; do
  wait -n "${SERVICES[@]}" || true
done
stop_all
