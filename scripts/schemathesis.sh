#!/usr/bin/env bash
# The HTTP contract under attack (issue 6, docs/reliability.md): schemathesis against a running
# metrics-query with the contract's OpenAPI document, once open and once with a security key.
#
# Installs schemathesis (pinned) into target/reliability-venv with `python3 -m venv` and pip
# when it is missing, builds metrics-query and the `seed` example, seeds a throwaway database
# (the same fixture as scripts/bench-query.sh) with SEED_DAYS days of rows ending yesterday,
# starts the service on free loopback ports (port 0, read back from its log), runs
# schemathesis twice (bounded by MAX_EXAMPLES per phase and MAX_TIME seconds per run), then stops
# the service and drops the database. Exits non-zero when either run finds a failure.
#
# Needs: python3 with venv and pip (Debian: python3-venv), psql, curl, a Rust toolchain, and
# PostgreSQL at SCHEMATHESIS_SERVER_URL (default postgres://postgres@127.0.0.1:5432, the server
# only: the script creates and drops its own database there).
#
#   scripts/schemathesis.sh                      # MAX_EXAMPLES=50 MAX_TIME=60 SEED=1
#   MAX_TIME=15 scripts/schemathesis.sh          # the bounded CI form
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
MAX_EXAMPLES=${MAX_EXAMPLES:-50}
MAX_TIME=${MAX_TIME:-60}
SEED=${SEED:-1}
SEED_DAYS=${SEED_DAYS:-5}
SCHEMATHESIS_VERSION=4.32.5
SERVER=${SCHEMATHESIS_SERVER_URL:-postgres://postgres@127.0.0.1:5432}
DB=metrics_schemathesis_$$
URL="$SERVER/$DB"
VENV=target/reliability-venv
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d)
SERVICE=
cleanup() {
    if [[ -n $SERVICE ]]; then
        kill "$SERVICE" 2>/dev/null || true
        wait "$SERVICE" 2>/dev/null || true
    fi
    psql -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ ! -x $VENV/bin/schemathesis ]] ||
    [[ $("$VENV/bin/schemathesis" --version) != *"$SCHEMATHESIS_VERSION"* ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build -q -p metrics-query --bin metrics-query --example seed
BIN=$CARGO_TARGET_DIR/debug

psql -q "$SERVER/postgres" -c "CREATE DATABASE $DB" >/dev/null
"$BIN/examples/seed" --url "$URL" --days "$SEED_DAYS" >/dev/null

# Where schemathesis' defaults and metrics-api.md differ, the contract wins.
cat >"$WORK/schemathesis.toml" <<'TOML'
# A schema-valid range whose start is after its end is 400 "Invalid date range"
# (metrics-api.md, Request); unknown db_id and table are the 404 schemathesis already allows.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "404"]
TOML

# Without a key the API is open by contract (metrics-api.md, Authentication): the open service is
# attacked with the contract minus its security requirement, so no check expects a 401 from it.
"$VENV/bin/python" - docs/metrics-openapi.yaml "$WORK/open-openapi.json" <<'PY'
import json, sys, yaml
schema = yaml.safe_load(open(sys.argv[1]))
schema.pop("security", None)
for operations in schema["paths"].values():
    for operation in operations.values():
        operation.pop("security", None)
json.dump(schema, open(sys.argv[2], "w"))
PY

# start_service [security key]: starts metrics-query on free loopback ports, sets API.
start_service() {
    OS_SECURITY_KEY=${1:-} METRICS_DATABASE__URL=$URL \
        METRICS_HTTP__LISTEN=127.0.0.1:0 METRICS_ADMIN__LISTEN=127.0.0.1:0 METRICS_HTTP__WORKERS=2 \
        METRICS_LOG__LEVEL=info METRICS_LOG__FORMAT=json \
        "$BIN/metrics-query" >"$WORK/service.log" 2>&1 &
    SERVICE=$!
    local listening=
    for _ in $(seq 100); do
        listening=$(grep -m1 '"metrics-query listening"' "$WORK/service.log" || true)
        [[ -n $listening ]] && break
        sleep 0.1
    done
    if [[ -z $listening ]]; then
        echo "metrics-query did not start:" >&2
        cat "$WORK/service.log" >&2
        exit 1
    fi
    API=127.0.0.1:$(grep -o '"http.port":[0-9]*' <<<"$listening" | cut -d: -f2)
    local admin
    admin=127.0.0.1:$(grep -o '"admin.port":[0-9]*' <<<"$listening" | cut -d: -f2)
    for _ in $(seq 100); do
        curl -sf "http://$admin/readyz" >/dev/null && return
        sleep 0.1
    done
    echo "metrics-query did not become ready" >&2
    exit 1
}

stop_service() {
    kill "$SERVICE"
    wait "$SERVICE" || true
    SERVICE=
}

# attack <label> <schema> [arguments]: one bounded run against $API; its status in RESULTS.
RESULTS=()
FAILED=0
attack() {
    local label=$1 schema=$2 status=0
    shift 2
    echo "== schemathesis: $label"
    # From the scratch folder, where schemathesis leaves its `.schemathesis` cache.
    (cd "$WORK" && "$ROOT/$VENV/bin/schemathesis" --config-file schemathesis.toml run "$schema" \
        --url "http://$API" --checks all --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" \
        --seed "$SEED" --workers 1 --continue-on-failure "$@") | tee "$WORK/$label.out" || status=$?
    RESULTS+=("$label: $(grep -E '^ +[0-9]+ generated' "$WORK/$label.out" | sed 's/^ *//') (exit $status)")
    if [[ $status -ne 0 ]]; then FAILED=1; fi
}

start_service
attack open "$WORK/open-openapi.json"
stop_service

KEY=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
start_service "$KEY"
attack keyed "$ROOT/docs/metrics-openapi.yaml" --header "Authorization: Bearer $KEY"
stop_service

echo
printf '%s\n' "${RESULTS[@]}"
exit "$FAILED"
