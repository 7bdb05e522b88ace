#!/usr/bin/env bash
# The test command of the README: brings up PostgreSQL and RabbitMQ when they do not answer
# (scripts/services.sh), then runs the whole test suite against them and closes with one line
# that adds up every test binary: `tests: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
# The end-to-end tests start the service binaries as processes: build them first.
cargo build --workspace --bins --locked
mkdir -p target
log=target/test-output.log
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log" | tee target/test-summary.txt
exit "$status"
