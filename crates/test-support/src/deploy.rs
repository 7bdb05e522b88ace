//! Reading the deployment files (`docker-compose.yml`, `deploy/`) for the tests that compare
//! them with the code's own constants: each service's crate checks its configuration keys,
//! defaults and metric names there (`crates/*/tests/deploy.rs`), and `metrics-e2e`'s `deploy`
//! test checks the rules no schema expresses. `scripts/validate-deploy.sh` runs the external
//! linters (schemas, kustomize, promtool, hadolint, shellcheck) and these tests.
//!
//! Kubernetes manifests are rendered with `kustomize build` or `kubectl kustomize` (kustomize v4
//! or newer) when one is installed; `KUSTOMIZE` names the command, and `KUSTOMIZE=` (empty)
//! forces the fallback without either: each resource file of a kustomization on its own, and
//! every path it names checked to exist.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The workspace root (the folder of `docker-compose.yml`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A path under the workspace root.
pub fn path(relative: &str) -> PathBuf {
    root().join(relative)
}

/// The YAML documents of a file, as JSON values (merge keys applied; empty documents left out).
pub fn yaml_documents(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|err| panic!("reading {}: {err}", file.display()));
    yaml_documents_of(&text, &file.display().to_string())
}

fn yaml_documents_of(text: &str, name: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let mut value: serde_norway::Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|err| panic!("parsing {name}: {err}"));
        value
            .apply_merge()
            .unwrap_or_else(|err| panic!("merging keys in {name}: {err}"));
        if value.is_null() {
            continue;
        }
        documents.push(
            serde_json::to_value(&value)
                .unwrap_or_else(|err| panic!("{name} has a key that is no string: {err}")),
        );
    }
    documents
}

/// The one YAML document of a file.
pub fn yaml(file: &Path) -> Value {
    let mut documents = yaml_documents(file);
    assert_eq!(documents.len(), 1, "{} holds one document", file.display());
    documents.remove(0)
}

/// A JSON file.
pub fn json(file: &Path) -> Value {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|err| panic!("reading {}: {err}", file.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("parsing {}: {err}", file.display()))
}

/// A service's embedded defaults (its `config/default.toml`), parsed.
pub fn defaults(toml_text: &str) -> toml::Table {
    toml_text.parse().unwrap()
}

/// Every `METRICS_*` variable that names a key (a table or a value) of the defaults.
pub fn config_keys(toml_text: &str) -> BTreeSet<String> {
    fn walk(table: &toml::Table, path: &mut Vec<String>, keys: &mut BTreeSet<String>) {
        for (key, value) in table {
            path.push(key.clone());
            keys.insert(format!("METRICS_{}", path.join("__").to_uppercase()));
            if let toml::Value::Table(inner) = value {
                walk(inner, path, keys);
            }
            path.pop();
        }
    }
    let mut keys = BTreeSet::new();
    walk(&defaults(toml_text), &mut Vec::new(), &mut keys);
    keys
}

/// A value of the defaults by its path (`["shutdown", "timeout_ms"]`).
pub fn default_value(toml_text: &str, key: &[&str]) -> toml::Value {
    let mut value = toml::Value::Table(defaults(toml_text));
    for part in key {
        value = value
            .get(part)
            .unwrap_or_else(|| panic!("the defaults have no key {}", key.join(".")))
            .clone();
    }
    value
}

/// Failures gathered by a check, reported together.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records one failure at `place`.
    pub fn add(&mut self, place: impl std::fmt::Display, message: impl std::fmt::Display) {
        self.0.push(format!("{place}: {message}"));
    }

    /// The failures so far.
    pub fn list(&self) -> &[String] {
        &self.0
    }

    /// Panics with every failure, if any.
    pub fn assert_none(&self) {
        if !self.0.is_empty() {
            let mut message = format!("{} problem(s) in the deployment files:", self.0.len());
            for line in &self.0 {
                let _ = write!(message, "\n  {line}");
            }
            panic!("{message}");
        }
    }
}

/// `docker-compose.yml`.
pub fn compose() -> Value {
    yaml(&path("docker-compose.yml"))
}

/// The service binary a command runs (`metrics-ingest` or `metrics-query`), by its words.
pub fn program_of(command: Option<&Value>) -> Option<&'static str> {
    let words = command?.as_array()?;
    words.iter().find_map(|word| {
        let word = word.as_str()?;
        match word.rsplit('/').next()? {
            "metrics-ingest" => Some("metrics-ingest"),
            "metrics-query" => Some("metrics-query"),
            _ => None,
        }
    })
}

/// A string field of a JSON object, or "".
pub fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The entries of an array field, or none.
pub fn items<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The keys of an object field, or none.
pub fn keys(value: &Value, key: &str) -> BTreeSet<String> {
    value
        .get(key)
        .and_then(Value::as_object)
        .map(|map| map.keys().cloned().collect())
        .unwrap_or_default()
}

/// One Kubernetes object and the file it came from.
#[derive(Debug, Clone)]
pub struct Object {
    /// The file (rendered output or manifest).
    pub file: String,
    /// The object.
    pub value: Value,
}

impl Object {
    /// `kind`.
    pub fn kind(&self) -> &str {
        text(&self.value, "kind")
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// `file: Kind/name`, for messages.
    pub fn place(&self) -> String {
        format!("{}: {}/{}", self.file, self.kind(), self.name())
    }

    /// The pod template's spec of a Deployment or Job.
    pub fn pod(&self) -> Option<&Value> {
        self.value.pointer("/spec/template/spec")
    }
}

/// The objects of one kustomization, and the files that were missing (fallback only).
#[derive(Debug)]
pub struct Rendered {
    /// The kustomization's folder, relative to the root.
    pub dir: String,
    /// Its objects.
    pub objects: Vec<Object>,
    /// Paths it names that do not exist (checked without kustomize only).
    pub missing: Vec<String>,
}

/// The command that renders a kustomization folder, or `None` without kustomize.
pub fn kustomize_command() -> Option<Vec<String>> {
    if let Ok(command) = std::env::var("KUSTOMIZE") {
        let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        return (!words.is_empty()).then_some(words);
    }
    let answers = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
    };
    if answers("kustomize", &["version"]).is_some() {
        return Some(vec!["kustomize".into(), "build".into()]);
    }
    // Older kubectl releases embed kustomize v2, which lacks `labels` and `patches`.
    let version = answers("kubectl", &["version", "--client"])?;
    let major = version
        .lines()
        .find_map(|line| line.strip_prefix("Kustomize Version: v"))?
        .split('.')
        .next()?
        .parse::<u32>()
        .ok()?;
    (major >= 4).then(|| vec!["kubectl".into(), "kustomize".into()])
}

/// Renders (or, without kustomize, reads file by file) the kustomization in `dir` (relative to
/// the root).
pub fn kustomization(dir: &str) -> Rendered {
    let folder = path(dir);
    match kustomize_command() {
        Some(command) => Rendered {
            dir: dir.to_owned(),
            objects: render(&command, &folder, &format!("{dir} (rendered)")),
            missing: Vec::new(),
        },
        None => files_of(dir),
    }
}

/// The base with the monitoring component applied, as an overlay that opts in would have it;
/// without kustomize, the component's files and the base's Services.
pub fn base_with_monitoring() -> Rendered {
    let dir = "deploy/k8s/base + components/monitoring";
    let Some(command) = kustomize_command() else {
        let mut objects = Vec::new();
        for pattern in [
            "deploy/k8s/components/monitoring/servicemonitor.yaml",
            "deploy/k8s/components/monitoring/prometheusrule.yaml",
            "deploy/k8s/base/ingest-service.yaml",
            "deploy/k8s/base/query-service.yaml",
        ] {
            objects.extend(objects_of(pattern));
        }
        return Rendered {
            dir: dir.to_owned(),
            objects,
            missing: Vec::new(),
        };
    };
    // kustomize takes relative paths only: a kustomization in a scratch folder of the target
    // directory, pointing back into the tree.
    let scratch = std::env::temp_dir().join(format!(
        "metrics-deploy-monitoring-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&scratch).unwrap();
    let scratch = scratch.canonicalize().unwrap();
    let back = relative(&scratch, &root());
    std::fs::write(
        scratch.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  \
             - {back}/deploy/k8s/base\ncomponents:\n  - {back}/deploy/k8s/components/monitoring\n"
        ),
    )
    .unwrap();
    let objects = render(&command, &scratch, &format!("{dir} (rendered)"));
    let _ = std::fs::remove_dir_all(&scratch);
    Rendered {
        dir: dir.to_owned(),
        objects,
        missing: Vec::new(),
    }
}

fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_owned(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|part| part.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

fn render(command: &[String], folder: &Path, name: &str) -> Vec<Object> {
    let output = Command::new(&command[0])
        .args(&command[1..])
        .arg(folder)
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err}", command.join(" ")));
    assert!(
        output.status.success(),
        "{} {} failed:\n{}",
        command.join(" "),
        folder.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    yaml_documents_of(&String::from_utf8_lossy(&output.stdout), name)
        .into_iter()
        .map(|value| Object {
            file: name.to_owned(),
            value,
        })
        .collect()
}

fn objects_of(relative_file: &str) -> Vec<Object> {
    yaml_documents(&path(relative_file))
        .into_iter()
        .map(|value| Object {
            file: relative_file.to_owned(),
            value,
        })
        .collect()
}

fn files_of(dir: &str) -> Rendered {
    let folder = path(dir);
    let kustomization = yaml(&folder.join("kustomization.yaml"));
    let mut objects = Vec::new();
    let mut missing = Vec::new();
    for entry in items(&kustomization, "resources") {
        let entry = entry.as_str().unwrap_or_default();
        let target = folder.join(entry);
        let shown = format!("{dir}/{entry}");
        if target.is_dir() {
            if !target.join("kustomization.yaml").exists() {
                missing.push(format!("{shown}/kustomization.yaml"));
            }
        } else if target.exists() {
            objects.extend(objects_of(&shown));
        } else {
            missing.push(shown);
        }
    }
    for patch in items(&kustomization, "patches") {
        let file = text(patch, "path");
        if !file.is_empty() && !folder.join(file).exists() {
            missing.push(format!("{dir}/{file}"));
        }
    }
    Rendered {
        dir: dir.to_owned(),
        objects,
        missing,
    }
}

/// Every kustomization the project ships: the base and each overlay (relative folders).
pub fn kustomizations() -> Vec<String> {
    let mut dirs = vec!["deploy/k8s/base".to_owned()];
    let mut overlays: Vec<String> = std::fs::read_dir(path("deploy/k8s/overlays"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("kustomization.yaml").exists())
        .map(|entry| {
            format!(
                "deploy/k8s/overlays/{}",
                entry.file_name().to_string_lossy()
            )
        })
        .collect();
    overlays.sort();
    dirs.extend(overlays);
    dirs
}

/// The init containers and containers of a pod spec.
pub fn containers(pod: &Value) -> Vec<&Value> {
    items(pod, "initContainers")
        .iter()
        .chain(items(pod, "containers"))
        .collect()
}

/// The data of every ConfigMap among `objects`, by name.
pub fn config_maps(objects: &[Object]) -> Vec<(String, Value)> {
    objects
        .iter()
        .filter(|object| object.kind() == "ConfigMap")
        .map(|object| {
            (
                object.name().to_owned(),
                object.value.get("data").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// The environment variables a container sets: its own and those of the ConfigMaps it takes
/// whole (`envFrom`).
pub fn env_names(container: &Value, maps: &[(String, Value)]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = items(container, "env")
        .iter()
        .map(|entry| text(entry, "name").to_owned())
        .collect();
    for source in items(container, "envFrom") {
        if let Some(name) = source.pointer("/configMapRef/name").and_then(Value::as_str)
            && let Some((_, data)) = maps.iter().find(|(map, _)| map == name)
        {
            names.extend(
                data.as_object()
                    .into_iter()
                    .flat_map(|map| map.keys().cloned()),
            );
        }
    }
    names
}

/// The value a container gets for `name`, from its `env` or a ConfigMap it takes whole.
pub fn env_value(container: &Value, maps: &[(String, Value)], name: &str) -> Option<String> {
    for entry in items(container, "env") {
        if text(entry, "name") == name
            && let Some(value) = entry.get("value")
        {
            return Some(scalar(value));
        }
    }
    for source in items(container, "envFrom") {
        let Some(map) = source.pointer("/configMapRef/name").and_then(Value::as_str) else {
            continue;
        };
        if let Some((_, data)) = maps.iter().find(|(candidate, _)| candidate == map)
            && let Some(value) = data.get(name)
        {
            return Some(scalar(value));
        }
    }
    None
}

/// A scalar as text (`"30000"` and `30000` alike).
pub fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The Grafana variables of the dashboard's queries, and what stands in for them when the
/// queries are parsed by promtool.
pub const GRAFANA_VARIABLES: [(&str, &str); 3] = [
    ("$__rate_interval", "5m"),
    ("$__interval", "1m"),
    ("$queue", "metrics.ingest"),
];

/// One PromQL expression of the monitoring files and where it is.
#[derive(Debug, Clone)]
pub struct Expression {
    /// File and rule or panel.
    pub place: String,
    /// The expression, Grafana variables replaced.
    pub expr: String,
}

/// The alert and recording rules' expressions (`deploy/monitoring/alerts.yaml`) and the
/// dashboard's queries (`deploy/monitoring/grafana/agentos-metrics.json`).
pub fn monitoring_expressions() -> Vec<Expression> {
    let mut found = Vec::new();
    let alerts = yaml(&path("deploy/monitoring/alerts.yaml"));
    for group in items(&alerts, "groups") {
        for rule in items(group, "rules") {
            let name = rule
                .get("alert")
                .or_else(|| rule.get("record"))
                .map(scalar)
                .unwrap_or_default();
            found.push(Expression {
                place: format!("deploy/monitoring/alerts.yaml: {name}"),
                expr: text(rule, "expr").to_owned(),
            });
        }
    }
    let dashboard = json(&path("deploy/monitoring/grafana/agentos-metrics.json"));
    for panel in items(&dashboard, "panels") {
        for target in items(panel, "targets") {
            let mut expr = text(target, "expr").to_owned();
            for (variable, value) in GRAFANA_VARIABLES {
                expr = expr.replace(variable, value);
            }
            found.push(Expression {
                place: format!(
                    "deploy/monitoring/grafana/agentos-metrics.json: panel {} {:?}",
                    panel.get("id").map(scalar).unwrap_or_default(),
                    text(panel, "title")
                ),
                expr,
            });
        }
    }
    found
}

/// The metric names (`metrics_*`, `rabbitmq_*`) a PromQL expression reads: quoted strings,
/// label matchers and ranges are no names and are left out first.
pub fn series_names(expr: &str) -> BTreeSet<String> {
    let mut bare = String::new();
    let mut closing: Option<char> = None;
    for c in expr.chars() {
        match closing {
            Some(end) if c == end => closing = None,
            Some(_) => {}
            None => match c {
                '"' => closing = Some('"'),
                '{' => closing = Some('}'),
                '[' => closing = Some(']'),
                other => bare.push(other),
            },
        }
    }
    bare.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| {
            (word.starts_with("metrics_") || word.starts_with("rabbitmq_"))
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

/// Every series name a Prometheus text exposition defines (its `# TYPE` lines), with the
/// suffixes the exposition adds (`_total`, `_bucket`, `_sum`, `_count`).
pub fn exposed_series(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.split_whitespace().next()
        {
            for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Checks that every series named `<prefix>*` in the monitoring files is one of `exposed`.
pub fn check_series(prefix: &str, exposed: &BTreeSet<String>, service: &str) -> Problems {
    let mut problems = Problems::default();
    for Expression { place, expr } in monitoring_expressions() {
        for name in series_names(&expr) {
            if name.starts_with(prefix) && !exposed.contains(&name) {
                problems.add(
                    &place,
                    format!("{name} is no series of {service} (its telemetry's Metrics)"),
                );
            }
        }
    }
    problems
}

/// Checks that every environment variable Compose and the Kubernetes manifests give the
/// containers that run `program` is one the program reads: a `METRICS_*` key of its defaults
/// (`known`, from [`config_keys`]) or one of `extra`.
pub fn check_environment(program: &str, known: &BTreeSet<String>, extra: &[&str]) -> Problems {
    let mut problems = Problems::default();
    let mut check = |place: &str, names: BTreeSet<String>| {
        for name in names {
            if !known.contains(&name) && !extra.contains(&name.as_str()) {
                problems.add(
                    place,
                    format!("{name} is no configuration key of {program} (its defaults)"),
                );
            }
        }
    };
    let document = compose();
    if let Some(services) = document.get("services").and_then(Value::as_object) {
        for (name, service) in services {
            if program_of(service.get("command")) == Some(program) {
                check(
                    &format!("docker-compose.yml: service {name}"),
                    keys(service, "environment"),
                );
            }
        }
    }
    for dir in kustomizations() {
        let rendered = kustomization(&dir);
        let maps = config_maps(&rendered.objects);
        for object in &rendered.objects {
            let Some(pod) = object.pod() else { continue };
            for container in containers(pod) {
                if program_of(container.get("command")) == Some(program) {
                    check(
                        &format!("{} container {}", object.place(), text(container, "name")),
                        env_names(container, &maps),
                    );
                }
            }
        }
    }
    problems
}

/// Checks that every Kubernetes Deployment running `program` gives its pods longer than the
/// preStop pause plus the drain: the setting `variable` (a ConfigMap's or the container's
/// value) or else `default_ms`.
pub fn check_grace_period(program: &str, variable: &str, default_ms: u64) -> Problems {
    let mut problems = Problems::default();
    for dir in kustomizations() {
        let rendered = kustomization(&dir);
        let maps = config_maps(&rendered.objects);
        for object in &rendered.objects {
            if object.kind() != "Deployment" {
                continue;
            }
            let Some(pod) = object.pod() else { continue };
            for container in containers(pod) {
                if program_of(container.get("command")) != Some(program) {
                    continue;
                }
                let place = format!("{} container {}", object.place(), text(container, "name"));
                let drain_ms = match env_value(container, &maps, variable) {
                    Some(value) => value.parse::<u64>().unwrap_or_else(|_| {
                        problems.add(&place, format!("{variable} {value:?} is no number"));
                        default_ms
                    }),
                    None => default_ms,
                };
                let drain = drain_ms as f64 / 1000.0;
                let pause = container
                    .pointer("/lifecycle/preStop/exec/command")
                    .and_then(Value::as_array)
                    .filter(|words| words.first() == Some(&Value::from("sleep")))
                    .and_then(|words| words.last())
                    .map_or(0.0, |seconds| scalar(seconds).parse::<f64>().unwrap_or(0.0));
                let grace = pod
                    .get("terminationGracePeriodSeconds")
                    .and_then(Value::as_f64)
                    .unwrap_or(30.0);
                if grace <= drain + pause {
                    problems.add(
                        &place,
                        format!(
                            "terminationGracePeriodSeconds {grace} is not longer than the \
                             preStop pause ({pause} s) plus the drain ({variable}, {drain} s)"
                        ),
                    );
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_names_skip_labels_strings_and_ranges() {
        let names = series_names(
            r#"sum(rate(metrics_query_requests_total{route="/metrics_x"}[5m])) / on() rabbitmq_queue_messages{queue="$q"} > bool metrics_ingest_ready"#,
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [
                "metrics_ingest_ready",
                "metrics_query_requests_total",
                "rabbitmq_queue_messages"
            ]
        );
    }

    #[test]
    fn config_keys_name_tables_and_values() {
        let keys = config_keys("[http]\nlisten = \"x\"\n[http.tls]\ncert = \"\"\n");
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            [
                "METRICS_HTTP",
                "METRICS_HTTP__LISTEN",
                "METRICS_HTTP__TLS",
                "METRICS_HTTP__TLS__CERT"
            ]
        );
    }

    #[test]
    fn relative_paths_climb_then_descend() {
        assert_eq!(relative(Path::new("/a/b/c"), Path::new("/a/d")), "../../d");
        assert_eq!(relative(Path::new("/a"), Path::new("/a")), ".");
    }
}
