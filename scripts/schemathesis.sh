#!/usr/bin/env bash
# The HTTP contract under attack (issue 6, docs/reliability.md): schemathesis against a running
# metrics-query with the contract's OpenAPI document, once open and once with a security key.
#
# Runs schemathesis from the project's one Python virtualenv (target/python-venv, pinned in
# scripts/requirements.txt, made by scripts/python-venv.sh when missing), builds the binaries and the `seed` example, then twice runs `xtask stack`
# (the tests' fixtures: a throwaway database on TEST_DATABASE_URL's server seeded with SEED_DAYS
# days of rows ending yesterday, metrics-query on loopback ports it binds and reports, all removed
# afterwards) around one bounded schemathesis run (MAX_EXAMPLES per phase, MAX_TIME seconds).
# Exits non-zero when either run finds a failure.
#
# Needs: python3 with venv and pip (Debian: python3-venv), a Rust toolchain, and PostgreSQL at
# TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres; the server only: each
# run creates and drops its own database there). SCHEMATHESIS_SERVER_URL, the server's URL
# without a database, is still honoured.
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
if [[ -n ${SCHEMATHESIS_SERVER_URL:-} ]]; then
    export TEST_DATABASE_URL=$SCHEMATHESIS_SERVER_URL/postgres
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$CARGO_TARGET_DIR/debug
VENV=target/python-venv

# The second half: one bounded run inside `xtask stack`, against STACK_API.
#   schemathesis.sh --in-stack <label> <work folder> <schema> [schemathesis arguments]
if [[ ${1:-} == --in-stack ]]; then
    label=$2 work=$3 schema=$4
    shift 4
    echo "== schemathesis: $label"
    # From the scratch folder, where schemathesis leaves its `.schemathesis` cache.
    cd "$work"
    exec "$ROOT/$VENV/bin/schemathesis" --config-file schemathesis.toml run "$schema" \
        --url "http://$STACK_API" --checks all --max-examples "$MAX_EXAMPLES" \
        --max-time "$MAX_TIME" --seed "$SEED" --workers 1 --continue-on-failure "$@"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

. scripts/python-venv.sh
ensure_python_venv
VENV=$PYTHON_VENV

# The test build (scripts/test.sh's), plus the seed example.
cargo build -q --locked --workspace --bins --example seed

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

# attack <label> <schema> [xtask stack options] -- [schemathesis arguments]: one bounded run;
# its status in RESULTS.
RESULTS=()
FAILED=0
attack() {
    local label=$1 schema=$2 status=0 options=()
    shift 2
    while [[ $1 != -- ]]; do
        options+=("$1")
        shift
    done
    shift
    "$BIN/xtask" stack --query --seed-days "$SEED_DAYS" --setting METRICS_LOG__LEVEL=info \
        "${options[@]}" -- "$0" --in-stack "$label" "$WORK" "$schema" "$@" |
        tee "$WORK/$label.out" || status=$?
    RESULTS+=("$label: $(grep -E '^ +[0-9]+ generated' "$WORK/$label.out" | sed 's/^ *//') (exit $status)")
    if [[ $status -ne 0 ]]; then FAILED=1; fi
}

attack open "$WORK/open-openapi.json" --
KEY=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
attack keyed "$ROOT/docs/metrics-openapi.yaml" --key "$KEY" -- \
    --header "Authorization: Bearer $KEY"

echo
printf '%s\n' "${RESULTS[@]}"
exit "$FAILED"
