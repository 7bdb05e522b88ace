#!/usr/bin/env bash
# The test command of the README: brings up PostgreSQL and RabbitMQ when they do not answer
# (scripts/services.sh), then runs the whole test suite against them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
# The end-to-end tests start the service binaries as processes: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
