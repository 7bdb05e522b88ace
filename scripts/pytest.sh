#!/usr/bin/env bash
# The Python client (clients/python, package agentos-metrics): lint, types and tests.
#
#   scripts/pytest.sh [pytest arguments]
#
# - Creates the virtualenv target/python-venv from scripts/requirements.txt (every
#   package pinned; scripts/python-venv.sh, shared with the other scripts), and
#   creates it again when that file or the Python interpreter changes;
# - installs the package into it (pip install ./clients/python, no network for the build:
#   the pinned build backend is already in the virtualenv);
# - runs ruff check, ruff format --check, mypy (strict, on the package) and pytest (not with
#   LINT_ONLY=1, which .ci/run uses to fail early).
#
# The tests use the real RabbitMQ and PostgreSQL (TEST_AMQP_URL, TEST_DATABASE_URL; run
# scripts/services.sh first, or let scripts/test.sh do it), the metrics-ingest and metrics-query
# binaries of target/debug (`cargo build --bins` first; METRICS_BIN_DIR points elsewhere) and
# rabbitmq-server for a private node. PYTHON names the interpreter (default python3, 3.11+).
# scripts/test.sh adds the pytest summary line to its total.

set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/python-venv.sh
ensure_python_venv
VENV=$PYTHON_VENV

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --no-build-isolation --force-reinstall ./clients/python

# Caches and bytecode under target/, never in the source tree.
export PYTHONPYCACHEPREFIX="$PWD/target/python-cache/pycache"
export RUFF_CACHE_DIR="$PWD/target/python-cache/ruff"
export MYPY_CACHE_DIR="$PWD/target/python-cache/mypy"

status=0
cd clients/python
echo "== ruff check"
../../"$VENV"/bin/ruff check . || status=1
echo "== ruff format --check"
../../"$VENV"/bin/ruff format --check . || status=1
echo "== mypy --strict (package)"
../../"$VENV"/bin/mypy || status=1
if [ -n "${LINT_ONLY:-}" ]; then
  exit "$status"
fi
echo "== pytest"
../../"$VENV"/bin/python -m pytest -p no:cacheprovider "$@" ||
  status=1
exit "$status"
