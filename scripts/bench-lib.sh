# shellcheck shell=bash
# What scripts/bench-query.sh and scripts/bench-query-users.sh share; sourced, with DURATION,
# CONNECTIONS, THREADS, PROFILE, BIN and CARGO_TARGET_DIR set.

if [[ -n ${BENCH_SERVER_URL:-} ]]; then
    export TEST_DATABASE_URL=$BENCH_SERVER_URL/postgres
fi

# The service reaches PostgreSQL as in the compose stack: plain TCP. Without an `sslmode`, libpq
# prefers TLS whenever the server offers it (Debian's PostgreSQL does, with its own certificate),
# and encrypting every row on loopback took about an eighth of the machine's CPU under per-user
# reads. BENCH_SSLMODE=prefer measures that; a URL that names an `sslmode` keeps it.
BENCH_SSLMODE=${BENCH_SSLMODE:-disable}
TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
case $TEST_DATABASE_URL in
*sslmode=*) ;;
*\?*) TEST_DATABASE_URL="$TEST_DATABASE_URL&sslmode=$BENCH_SSLMODE" ;;
*) TEST_DATABASE_URL="$TEST_DATABASE_URL?sslmode=$BENCH_SSLMODE" ;;
esac
export TEST_DATABASE_URL

# The service with its defaults, logging warnings only, except its startup line, which carries
# the ports it bound (`xtask stack` reads them).
# shellcheck disable=SC2034 # used by the scripts that source this file
QUIET_SERVICE=(--setting METRICS_HTTP__WORKERS=0
    --setting 'METRICS_LOG__LEVEL=warn,metrics_query::startup=info')

# Builds the binaries, xtask and the examples the benchmarks use, and installs wrk if missing.
build_for_bench() {
    command -v wrk >/dev/null 2>&1 || {
        . scripts/services.sh >/dev/null
        apt_install wrk
    }
    local profile_args=()
    [[ $PROFILE == release ]] && profile_args=(--release)
    cargo build "${profile_args[@]}" -q --locked --workspace --bins --example ceiling \
        --example seed
}

# start_ceiling BODY: the HTTP ceiling (the `ceiling` example) serving BODY on a loopback port
# it binds and reports; sets CEILING (host:port) and CEILING_PID.
start_ceiling() {
    local out
    out=$(mktemp)
    "$BIN/examples/ceiling" --body "$1" --listen 127.0.0.1:0 >"$out" 2>&1 &
    CEILING_PID=$!
    CEILING=
    for _ in $(seq 100); do
        CEILING=$(sed -n 's/^listening on //p' "$out")
        [[ -n $CEILING ]] && curl -sf "http://$CEILING/metrics" >/dev/null && break
        sleep 0.1
    done
    rm -f "$out"
    [[ -n $CEILING ]] || {
        echo "the ceiling did not start" >&2
        exit 1
    }
}

stop_ceiling() {
    if [[ -n ${CEILING_PID:-} ]]; then
        kill "$CEILING_PID" 2>/dev/null || true
        wait "$CEILING_PID" 2>/dev/null || true
    fi
}

# run LABEL URL [wrk arguments]: one wrk run as a table row.
run() {
    local label=$1 url=$2 out
    shift 2
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url")
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
    printf '| %s | %s | %s | %s |%s\n' "$label" "$rps" "$p50" "$p99" "${errors:+ $errors}"
}

# in_stack_begin: inside `xtask stack`, a scratch folder WORK (removed on exit, with any ceiling
# still running) and the query strings of the last 30 and 365 whole days, Q30 and Q365.
in_stack_begin() {
    WORK=$(mktemp -d)
    CEILING_PID=
    trap 'stop_ceiling; rm -rf "$WORK"' EXIT
    local today yesterday
    today=$(date -u +%F)
    yesterday=$(date -u -d "$today - 1 day" +%F)
    # shellcheck disable=SC2034 # used by the scripts that source this file
    Q30="/metrics?starting_date=$(date -u -d "$today - 30 days" +%F)&ending_date=$yesterday"
    # shellcheck disable=SC2034
    Q365="/metrics?starting_date=$(date -u -d "$today - 365 days" +%F)&ending_date=$yesterday"
}

# table_head: wrk's settings, then the head of the results table.
table_head() {
    echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $(nproc) cores"
    echo
    echo "| request | requests/s | p50 | p99 |"
    echo "| --- | --- | --- | --- |"
}

# ceiling_run LABEL BODY: one table row of the ceiling serving the file BODY from memory.
ceiling_run() {
    start_ceiling "$2"
    run "$1" "http://$CEILING/metrics"
    stop_ceiling
    CEILING_PID=
}

# peak_rss: metrics-query's peak resident memory in the stack so far.
peak_rss() {
    echo
    echo "metrics-query peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$STACK_QUERY_PID/status")"
}
