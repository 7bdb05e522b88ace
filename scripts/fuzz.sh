#!/usr/bin/env bash
# Fuzzes event decoding and the query parameters with cargo fuzz (libFuzzer), each target for
# FUZZ_SECONDS (default 60), starting from the committed seeds in fuzz/seeds/<target> plus the
# corpus of earlier runs in fuzz/corpus/<target>. A panic, a failed assertion, a leak of memory
# past RSS_LIMIT_MB (default 1024) or an allocation past MALLOC_LIMIT_MB (default 256) fails the
# run and leaves the input in fuzz/artifacts/<target>. Prints each target's executions.
#
# Installs cargo-fuzz when missing. The stable toolchain takes cargo fuzz's -Z flags with
# RUSTC_BOOTSTRAP=1; no sanitizer (-s none): every crate here forbids `unsafe`.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
RSS_LIMIT_MB=${RSS_LIMIT_MB:-1024}
MALLOC_LIMIT_MB=${MALLOC_LIMIT_MB:-256}
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build -s none

status=0
for target in decode_message query_parameters; do
  case $target in
    decode_message) max_len=8192 ;;
    query_parameters) max_len=4096 ;;
  esac
  mkdir -p "corpus/$target"
  log=$(mktemp)
  if cargo fuzz run -s none "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -rss_limit_mb="$RSS_LIMIT_MB" \
    -malloc_limit_mb="$MALLOC_LIMIT_MB" -max_len="$max_len" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    tail -n 40 "$log" >&2
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  peak=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | tr -dc 0-9)
  echo "fuzz: $target $result: ${runs:-?} executions in ${FUZZ_SECONDS} s, coverage ${cov:-?} edges, peak RSS ${peak:-?} MB"
  rm -f "$log"
done
exit "$status"
