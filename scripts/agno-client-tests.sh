#!/usr/bin/env bash
# Agno's own client as the judge (agentos-compat.md): runs tests/agno_client with pytest, in the
# project's one virtualenv, target/python-venv, made from the pinned
# scripts/requirements.txt (scripts/python-venv.sh; remade when the pins change). The suite starts target/debug/metrics-ingest and metrics-query itself (build
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

BIN_DIR=${METRICS_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}

. scripts/python-venv.sh
ensure_python_venv
VENV=$PYTHON_VENV

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
exec "../../$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
