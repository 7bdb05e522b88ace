#!/usr/bin/env bash
# The test command of the README: brings up PostgreSQL and RabbitMQ when they do not answer
# (scripts/services.sh), then runs the whole test suite against them (the Rust workspace, then the
# Python client through scripts/pytest.sh) and closes with one line that adds up every test
# binary and the pytest run: `tests: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
# The end-to-end tests start the service binaries as processes: build them first.
cargo build --workspace --bins --locked
mkdir -p target
log=target/test-output.log
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
# The Python client (clients/python): ruff, mypy and its pytest suite against the same services
# and the binaries built above.
rm -f target/pytest-output.log
scripts/pytest.sh || status=$?
# cargo's `test result:` lines, and pytest's closing `N passed, N failed, N errors` line.
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "%d %d\n", passed, failed }' "$log" >target/test-counts.txt
awk '/^(=+ )?[0-9]+ [a-z]+.* in [0-9.]+s/ {
       for (i = 2; i <= NF; i++) {
         if ($i ~ /^passed/) passed += $(i - 1)
         if ($i ~ /^(failed|errors?)/) failed += $(i - 1)
       }
     }
     END { printf "%d %d\n", passed, failed }' target/pytest-output.log 2>/dev/null >>target/test-counts.txt ||
  echo "0 1" >>target/test-counts.txt
awk '{ passed += $1; failed += $2 }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' target/test-counts.txt |
  tee target/test-summary.txt
exit "$status"
