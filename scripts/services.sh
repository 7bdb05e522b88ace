#!/usr/bin/env bash
# Makes sure the PostgreSQL and RabbitMQ that the tests use are answering, and exports their
# URLs. Source it (`. scripts/services.sh`) or run it.
#
# - TEST_DATABASE_URL (default postgres://postgres:postgres@127.0.0.1:5432/postgres) and
#   TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f) are used as they are when they
#   answer.
# - Otherwise, with a Docker engine, `docker compose up --wait postgres rabbitmq` starts the
#   project's own.
# - Otherwise, on a Debian-like machine as root, PostgreSQL and RabbitMQ are installed from the
#   distribution's packages (when missing) and started.
# A service that still does not answer is an error, never a silent skip.
# The fault-injection suite (`cargo test -p metrics-e2e --test faults`) also runs a private
# PostgreSQL server and RabbitMQ node of its own, so their server programs (initdb, pg_ctl,
# rabbitmq-server) are installed from the distribution's packages when missing, and so are
# Chromium and its WebDriver (chromium, chromium-driver) for the dashboard's browser test. With
# TEST_TOOLS=0 (scripts/up.sh, which runs no tests) neither is installed.

set -euo pipefail

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export TEST_AMQP_URL="${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

say() { printf 'services: %s\n' "$*" >&2; }

# host and port of a URL (scheme://[user[:pass]@]host[:port]/...).
host_port() {
  local rest=${1#*://}
  rest=${rest%%/*}
  rest=${rest##*@}
  local host=${rest%%:*} port=${rest##*:}
  [ "$port" = "$rest" ] && port=$2
  printf '%s %s\n' "$host" "$port"
}

answers() { # host port
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

postgres_answers() {
  if command -v psql >/dev/null 2>&1; then
    psql "$TEST_DATABASE_URL" -qAtc 'SELECT 1' >/dev/null 2>&1
  else
    local host port
    read -r host port < <(host_port "$TEST_DATABASE_URL" 5432)
    answers "$host" "$port"
  fi
}

rabbitmq_answers() {
  local host port
  read -r host port < <(host_port "$TEST_AMQP_URL" 5672)
  answers "$host" "$port"
}

wait_for() { # name check seconds
  local name=$1 check=$2 deadline=$((SECONDS + $3))
  until "$check"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$name does not answer at its test URL; see README, 'Running the tests'"
      return 1
    fi
    sleep 1
  done
}

start_with_docker() {
  command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 || return 1
  say "starting PostgreSQL and RabbitMQ with docker compose"
  docker compose up --detach --wait postgres rabbitmq
}

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "cannot install $* (needs root and apt-get): install it, or set TEST_DATABASE_URL / TEST_AMQP_URL"
    return 1
  fi
  if [ -z "${apt_updated:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

start_postgres_from_packages() {
  command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
  local version
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
  say "starting the distribution's PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for PostgreSQL postgres_answers_local 30
  # The tests connect over TCP as postgres with the password of TEST_DATABASE_URL's default.
  su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
}

postgres_answers_local() { su postgres -c "psql -qAtc 'SELECT 1'" >/dev/null 2>&1; }

start_rabbitmq_from_packages() {
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  say "starting the distribution's RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || true
}

ensure_build_deps() {
  # diesel links libpq: its headers and unversioned library come with libpq-dev.
  if ! pkg-config --exists libpq 2>/dev/null; then
    apt_install libpq-dev pkg-config
  fi
}

has_initdb() {
  [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ] && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null 2>&1
}

ensure_server_programs() {
  has_initdb || apt_install postgresql
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 ||
    apt_install rabbitmq-server
}

ensure_browser() {
  if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ] || [ ! -x "${CHROMEDRIVER:-/usr/bin/chromedriver}" ]; then
    apt_install chromium chromium-driver
  fi
}

ensure_services() {
  ensure_build_deps
  if [ "${TEST_TOOLS:-1}" != 0 ]; then
    ensure_server_programs
    ensure_browser
  fi
  if postgres_answers && rabbitmq_answers; then
    return 0
  fi
  if ! start_with_docker; then
    postgres_answers || start_postgres_from_packages
    rabbitmq_answers || start_rabbitmq_from_packages
  fi
  wait_for PostgreSQL postgres_answers 60
  wait_for RabbitMQ rabbitmq_answers 120
}

ensure_services
say "PostgreSQL at $(host_port "$TEST_DATABASE_URL" 5432 | tr ' ' :), RabbitMQ at $(host_port "$TEST_AMQP_URL" 5672 | tr ' ' :)"
