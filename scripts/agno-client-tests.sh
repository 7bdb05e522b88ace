#!/usr/bin/env bash
# Agno's own client as the judge (agentos-compat.md): runs tests/agno_client with pytest, in a
# virtualenv under target/ made from the pinned tests/agno_client/requirements.txt (remade when
# the pins change). The suite starts target/debug/metrics-ingest and metrics-query itself (build
# them first: scripts/test.sh does), on free loopback ports, with a database, exchange and queue
# of its own on TEST_DATABASE_URL's server and TEST_AMQP_URL's broker.
#
# Needs: python3 with venv and pip (Debian: python3-venv), psql, PostgreSQL and RabbitMQ
# (scripts/services.sh). Extra arguments go to pytest.
#
#   scripts/agno-client-tests.sh
#   scripts/agno-client-tests.sh -k refresh -x
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS=tests/agno_client/requirements.txt
VENV=target/agno-client-venv
BIN_DIR=${METRICS_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1 && [ "$(id -u)" = 0 ] &&
    command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi

stamp=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/pytest ]] || [[ $(cat "$VENV/.requirements" 2>/dev/null) != "$stamp" ]] ||
    ! "$VENV/bin/python" -c 'pass' >/dev/null 2>&1; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS"
    echo "$stamp" >"$VENV/.requirements"
fi

for binary in metrics-ingest metrics-query; do
    if [[ ! -x $BIN_DIR/$binary ]]; then
        echo "agno-client-tests: $BIN_DIR/$binary is missing: cargo build --bins first" >&2
        exit 1
    fi
done
METRICS_BIN_DIR=$(cd "$BIN_DIR" && pwd)
export METRICS_BIN_DIR

cd tests/agno_client
# No __pycache__ or .pytest_cache left in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "../../$VENV/bin/pytest" -p no:cacheprovider -q "$@"
