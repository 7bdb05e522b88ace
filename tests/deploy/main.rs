//! The deployment files' own rules, which no schema expresses: Compose ports on 127.0.0.1,
//! healthchecks and start order; Kubernetes labels, probes on the admin port, requests and
//! limits, non-root read-only containers, Secrets referenced and never committed; the alert
//! rules' labels and annotations; the Grafana dashboard's layout and data source; the Prometheus
//! Operator objects. What each service's configuration, defaults and metrics say is checked
//! beside them (`crates/ingest/tests/deploy.rs`, `crates/query/tests/deploy.rs`).
//!
//! Needs no service. `scripts/validate-deploy.sh` runs the external linters and these tests.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on files it cannot read"
)]

use std::collections::BTreeSet;

use metrics_test_support::deploy::{
    self, Object, Problems, base_with_monitoring, compose, config_maps, containers, env_value,
    items, kustomization, kustomizations, monitoring_expressions, path, program_of, scalar,
    series_names, text, yaml, yaml_documents,
};
use serde_json::{Value, json};

/// The rabbitmq_prometheus plugin's per-object queue series the monitoring files may read.
const RABBITMQ_SERIES: [&str; 4] = [
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers",
];

/// The prefixes of the two services' series; each service's crate checks its own names.
const SERVICE_PREFIXES: [&str; 2] = ["metrics_ingest_", "metrics_query_"];

#[test]
fn compose_binds_loopback_checks_health_and_orders_the_start() {
    let document = compose();
    let services = document.get("services").unwrap();
    let mut problems = Problems::default();
    for name in ["postgres", "rabbitmq", "migrate", "ingest", "query"] {
        if services.get(name).is_none() {
            problems.add("docker-compose.yml", format!("service `{name}` is missing"));
        }
    }
    for (name, service) in services.as_object().unwrap() {
        let place = format!("docker-compose.yml: service {name}");
        for port in items(service, "ports") {
            let host = match port {
                Value::Object(_) => text(port, "host_ip").to_owned(),
                other => scalar(other),
            };
            if !host.starts_with("127.0.0.1:") && host != "127.0.0.1" {
                problems.add(&place, format!("port {port} is not bound to 127.0.0.1"));
            }
        }
        let healthcheck = service.get("healthcheck");
        if healthcheck.is_none() {
            problems.add(&place, "has no healthcheck");
        }
        if let Some(depends) = service.get("depends_on").and_then(Value::as_object) {
            for (dependency, condition) in depends {
                if condition.get("condition").is_none() {
                    problems.add(&place, format!("depends_on {dependency} has no condition"));
                }
            }
        }
        if program_of(service.get("command")).is_some()
            && let Some(healthcheck) = healthcheck
            && healthcheck.get("disable") != Some(&json!(true))
            && !items(healthcheck, "test").contains(&json!("healthcheck"))
        {
            problems.add(
                &place,
                "its healthcheck is not the binary's `healthcheck` subcommand",
            );
        }
    }
    for name in ["ingest", "query"] {
        let condition = services
            .pointer(&format!("/{name}/depends_on/migrate/condition"))
            .and_then(Value::as_str);
        if condition != Some("service_completed_successfully") {
            problems.add(
                "docker-compose.yml",
                format!("{name} does not wait for migrate to complete successfully"),
            );
        }
    }
    problems.assert_none();
}

/// The rules for one rendered kustomization (or its files, without kustomize).
fn kubernetes_rules(objects: &[Object], problems: &mut Problems) {
    let maps = config_maps(objects);
    for object in objects {
        let place = object.place();
        if object.kind() == "Secret" && !object.file.ends_with("secret.example.yaml") {
            problems.add(
                &place,
                "a Secret is committed; reference it instead (secret.example.yaml)",
            );
        }
        if !has_app_labels(&object.value) {
            problems.add(&place, "has no app.kubernetes.io/* labels");
        }
        if !matches!(object.kind(), "Deployment" | "Job") {
            continue;
        }
        let pod = object.pod().unwrap();
        for container in containers(pod) {
            let place = format!("{place} container {}", text(container, "name"));
            if program_of(container.get("command")).is_none() {
                problems.add(&place, "runs neither metrics-ingest nor metrics-query");
                continue;
            }
            for source in items(container, "envFrom") {
                if let Some(name) = source.pointer("/configMapRef/name").and_then(Value::as_str)
                    && !maps.iter().any(|(map, _)| map == name)
                {
                    problems.add(
                        &place,
                        format!("envFrom names ConfigMap {name}, which is not rendered"),
                    );
                }
                if source.get("secretRef").is_some() {
                    problems.add(
                        &place,
                        "envFrom a whole Secret: name each key with secretKeyRef",
                    );
                }
            }
            for entry in items(container, "env") {
                if let Some(secret) = entry.pointer("/valueFrom/secretKeyRef")
                    && text(secret, "name") != "agentos-metrics"
                {
                    problems.add(
                        &place,
                        format!(
                            "{} comes from Secret {}, not agentos-metrics",
                            text(entry, "name"),
                            text(secret, "name")
                        ),
                    );
                }
            }
            for part in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    if container
                        .pointer(&format!("/resources/{part}/{resource}"))
                        .is_none()
                    {
                        problems.add(&place, format!("no {resource} in resources.{part}"));
                    }
                }
            }
            let yes = Some(&json!(true));
            if container.pointer("/securityContext/runAsNonRoot") != yes
                && pod.pointer("/securityContext/runAsNonRoot") != yes
            {
                problems.add(&place, "may run as root (runAsNonRoot)");
            }
            if container.pointer("/securityContext/readOnlyRootFilesystem") != yes {
                problems.add(
                    &place,
                    "root filesystem is writable (readOnlyRootFilesystem)",
                );
            }
            if container.pointer("/securityContext/allowPrivilegeEscalation") != Some(&json!(false))
            {
                problems.add(&place, "allowPrivilegeEscalation is not false");
            }
            if object.kind() != "Deployment" {
                continue;
            }
            let admin = items(container, "ports")
                .iter()
                .find(|port| text(port, "name") == "admin")
                .and_then(|port| port.get("containerPort"))
                .and_then(Value::as_u64);
            let Some(admin) = admin else {
                problems.add(&place, "has no container port named admin");
                continue;
            };
            if let Some(listen) = env_value(container, &maps, "METRICS_ADMIN__LISTEN")
                && !listen.ends_with(&format!(":{admin}"))
            {
                problems.add(
                    &place,
                    format!("admin port {admin} differs from METRICS_ADMIN__LISTEN {listen}"),
                );
            }
            for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
                let get = container
                    .pointer(&format!("/{probe}/httpGet"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let port = get.get("port");
                if text(&get, "path") != path
                    || !(port == Some(&json!("admin")) || port == Some(&json!(admin)))
                {
                    problems.add(
                        &place,
                        format!("{probe} is not GET {path} on the admin port"),
                    );
                }
            }
        }
    }
}

#[test]
fn kubernetes_manifests_probe_limit_and_lock_down_every_container() {
    if deploy::kustomize_command().is_none() {
        eprintln!(
            "note: neither kustomize nor kubectl with kustomize v4+ is installed: each manifest \
             file is checked on its own, and overlay patches only for their paths"
        );
    }
    let mut problems = Problems::default();
    for dir in kustomizations() {
        let rendered = kustomization(&dir);
        for missing in &rendered.missing {
            problems.add(&dir, format!("names {missing}, which does not exist"));
        }
        assert!(!rendered.objects.is_empty(), "{dir} renders no object");
        kubernetes_rules(&rendered.objects, &mut problems);
    }
    // The example Secret is the one Secret in the tree, and it only names keys.
    let example = "deploy/k8s/secret.example.yaml";
    for value in yaml_documents(&path(example)) {
        let object = Object {
            file: example.to_owned(),
            value,
        };
        assert_eq!(
            object.kind(),
            "Secret",
            "{example} holds the example Secret"
        );
    }
    problems.assert_none();
}

#[test]
fn alert_rules_have_severity_and_annotations_and_read_known_series() {
    let file = "deploy/monitoring/alerts.yaml";
    let alerts = yaml(&path(file));
    let mut problems = Problems::default();
    for group in items(&alerts, "groups") {
        for rule in items(group, "rules") {
            let Some(name) = rule.get("alert").and_then(Value::as_str) else {
                continue;
            };
            let place = format!("{file}: {name}");
            let severity = rule.pointer("/labels/severity").and_then(Value::as_str);
            if !matches!(severity, Some("critical" | "warning" | "info")) {
                problems.add(&place, "has no severity label (critical, warning or info)");
            }
            for key in ["summary", "description"] {
                let annotation = rule
                    .pointer(&format!("/annotations/{key}"))
                    .and_then(Value::as_str);
                if annotation.is_none_or(str::is_empty) {
                    problems.add(&place, format!("has no {key} annotation"));
                }
            }
        }
    }
    // Every name is a service's (checked by the service's crate) or the broker plugin's.
    for expression in monitoring_expressions() {
        for name in series_names(&expression.expr) {
            let known = RABBITMQ_SERIES.contains(&name.as_str())
                || SERVICE_PREFIXES
                    .iter()
                    .any(|prefix| name.starts_with(prefix));
            if !known {
                problems.add(
                    &expression.place,
                    format!(
                        "{name} is no series of the services (their telemetry's Metrics) nor of \
                         the rabbitmq_prometheus per-object queue series"
                    ),
                );
            }
        }
    }
    problems.assert_none();
}

/// Where the dashboard's queries are written as recording rules, for `promtool check rules`
/// (`scripts/validate-deploy.sh` sets it).
const DASHBOARD_QUERIES: &str = "DASHBOARD_QUERIES_OUT";

#[test]
fn dashboard_layout_data_source_and_variables() {
    let file = "deploy/monitoring/grafana/agentos-metrics.json";
    let document = deploy::json(&path(file));
    let mut problems = Problems::default();
    for key in ["uid", "title", "panels", "schemaVersion"] {
        if document.get(key).is_none() {
            problems.add(file, format!("has no `{key}`"));
        }
    }
    let datasource = items(document.get("templating").unwrap_or(&Value::Null), "list")
        .iter()
        .find(|variable| text(variable, "name") == "datasource");
    if datasource.map(|variable| text(variable, "query")) != Some("prometheus") {
        problems.add(file, "has no `datasource` variable of type prometheus");
    }
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [i64; 4])> = Vec::new();
    let mut rules = Vec::new();
    for panel in items(&document, "panels") {
        let id = panel.get("id").map(scalar).unwrap_or_default();
        let place = format!("{file}: panel {id} {:?}", text(panel, "title"));
        if !ids.insert(id.clone()) {
            problems.add(&place, "repeats a panel id");
        }
        let grid = ["x", "y", "w", "h"].map(|key| {
            panel
                .pointer(&format!("/gridPos/{key}"))
                .and_then(Value::as_i64)
        });
        let [Some(x), Some(y), Some(w), Some(h)] = grid else {
            problems.add(&place, "has no whole gridPos");
            continue;
        };
        if x < 0 || w < 1 || x + w > 24 {
            problems.add(&place, "is outside the 24 grid columns");
        }
        for (other_place, [ox, oy, ow, oh]) in &boxes {
            if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                problems.add(&place, format!("overlaps {other_place}"));
            }
        }
        boxes.push((place.clone(), [x, y, w, h]));
        if text(panel, "type") == "row" {
            continue;
        }
        if panel.get("datasource") != Some(&json!({"type": "prometheus", "uid": "${datasource}"})) {
            problems.add(&place, "does not read the ${datasource} variable");
        }
        let targets = items(panel, "targets");
        if targets.is_empty() {
            problems.add(&place, "has no query");
        }
        for target in targets {
            let mut expr = text(target, "expr").to_owned();
            for (variable, value) in deploy::GRAFANA_VARIABLES {
                expr = expr.replace(variable, value);
            }
            if expr.contains('$') {
                problems.add(
                    &place,
                    format!("query uses an unknown variable: {}", text(target, "expr")),
                );
                continue;
            }
            rules.push(json!({
                "record": format!("dashboard:panel_{id}_{}", text(target, "refId")),
                "expr": expr,
            }));
        }
    }
    if let Some(out) = std::env::var_os(DASHBOARD_QUERIES) {
        let document = json!({"groups": [{"name": "dashboard", "rules": rules}]});
        std::fs::write(&out, serde_norway::to_string(&document).unwrap()).unwrap();
    }
    problems.assert_none();
}

#[test]
fn monitoring_component_selects_the_services_and_carries_the_alerts() {
    let alerts_file = "deploy/monitoring/alerts.yaml";
    let groups = yaml(&path(alerts_file)).get("groups").cloned().unwrap();
    let rendered = base_with_monitoring();
    let place = rendered.dir.clone();
    let objects = &rendered.objects;
    let services: Vec<&Object> = objects.iter().filter(|o| o.kind() == "Service").collect();
    let mut problems = Problems::default();
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        if !objects.iter().any(|object| object.kind() == kind) {
            problems.add(&place, format!("no {kind}"));
        }
    }
    let mut monitored = BTreeSet::new();
    for object in objects {
        let at = object.place();
        if matches!(object.kind(), "ServiceMonitor" | "PrometheusRule") {
            if text(&object.value, "apiVersion") != "monitoring.coreos.com/v1" {
                problems.add(&at, "is not monitoring.coreos.com/v1");
            }
            if !has_app_labels(&object.value) {
                problems.add(&at, "has no app.kubernetes.io/* labels");
            }
        }
        if object.kind() == "PrometheusRule"
            && object.value.pointer("/spec/groups") != Some(&groups)
        {
            problems.add(
                &at,
                format!("its groups differ from {alerts_file}: copy them again"),
            );
        }
        if object.kind() != "ServiceMonitor" {
            continue;
        }
        let selector = object
            .value
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let matched: Vec<&&Object> = services
            .iter()
            .filter(|service| {
                !selector.is_empty()
                    && selector.iter().all(|(key, value)| {
                        service
                            .value
                            .pointer("/metadata/labels")
                            .and_then(|l| l.get(key))
                            == Some(value)
                    })
            })
            .collect();
        if matched.is_empty() {
            problems.add(&at, format!("selects no Service ({selector:?})"));
        }
        for endpoint in object
            .value
            .pointer("/spec/endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let port = text(endpoint, "port");
            for service in &matched {
                let ports: BTreeSet<&str> = service
                    .value
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| text(p, "name"))
                    .collect();
                if !ports.contains(port) {
                    problems.add(
                        &at,
                        format!("port {port} is no port of Service {}", service.name()),
                    );
                }
                let scraped = endpoint
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("/metrics");
                if port != "admin" || scraped != "/metrics" {
                    problems.add(&at, "does not scrape /metrics on the admin port");
                }
            }
        }
        monitored.extend(matched.iter().map(|service| service.name().to_owned()));
    }
    for name in ["metrics-ingest", "metrics-query"] {
        if !services.is_empty() && !monitored.contains(name) {
            problems.add(&place, format!("no ServiceMonitor selects Service {name}"));
        }
    }
    problems.assert_none();
}

/// Whether a Kubernetes object carries at least one `app.kubernetes.io/*` label.
fn has_app_labels(object: &Value) -> bool {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .is_some_and(|labels| {
            labels
                .keys()
                .any(|key| key.starts_with("app.kubernetes.io/"))
        })
}
