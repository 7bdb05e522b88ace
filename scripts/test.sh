#!/usr/bin/env bash
# The test command of the README: brings up PostgreSQL and RabbitMQ when they do not answer
# (scripts/services.sh), then runs the whole test suite against them (the Rust tests, the Python
# client through scripts/pytest.sh, and Agno's own client against the binaries through
# scripts/agno-client-tests.sh) and closes with one line that adds up every test binary and both
# pytest runs: `tests: N passed, N failed`.
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
scripts/pytest.sh 2>&1 | tee -a "$log" || status=$?
# Agno's own Python client against the built binaries (tests/agno_client).
scripts/agno-client-tests.sh 2>&1 | tee -a "$log" || status=$?
# cargo's `test result:` lines, and each pytest run's closing "N passed, M failed in ..." line.
awk '/^test result:/ { passed += $4; failed += $6 }
     /^(=+ )?[0-9]+ (passed|failed|errors?)[ ,]/ {
         for (i = 2; i <= NF; i++) {
             word = $i; sub(/,$/, "", word)
             if (word == "passed") passed += $(i - 1)
             if (word == "failed" || word == "errors" || word == "error") failed += $(i - 1)
         }
     }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log" | tee target/test-summary.txt
exit "$status"
