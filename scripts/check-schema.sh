#!/usr/bin/env bash
# Regenerates crates/aggregator/src/schema.rs from the migrations on a scratch database and fails
# when it differs from the committed file (it is generated: never edit it by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TEST_DATABASE_URL:=postgres://postgres:postgres@127.0.0.1:5432/postgres}"

if ! command -v diesel >/dev/null 2>&1; then
  cargo install diesel_cli --version 2.3.14 --no-default-features --features postgres --locked
fi

scratch="metrics_schema_check_$$"
base=${TEST_DATABASE_URL%/*}
query=""
case "$TEST_DATABASE_URL" in *\?*) query="?${TEST_DATABASE_URL#*\?}" ;; esac
url="$base/$scratch$query"
psql "$TEST_DATABASE_URL" -qc "CREATE DATABASE $scratch"
trap 'psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $scratch WITH (FORCE)"' EXIT

diesel migration run --database-url "$url" >/dev/null
if ! git diff --exit-code -- crates/aggregator/src/schema.rs; then
  echo "schema.rs is out of date with the migrations: commit the regenerated file" >&2
  exit 1
fi
echo "schema.rs matches the migrations"
