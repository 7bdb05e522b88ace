//! The deployment files against metrics-ingest's own constants: the configuration keys and the
//! drain of its defaults, the broker topology it declares, the series it exposes
//! (`metrics_test_support::deploy`; `scripts/validate-deploy.sh` runs these with the linters).

use metrics_ingest::config::DEFAULTS;
use metrics_ingest::telemetry::Metrics;
use metrics_ingest::topology::BINDING_KEY;
use metrics_test_support::deploy::{
    Problems, check_environment, check_grace_period, check_series, config_keys, default_value,
    exposed_series, items, json, path, text,
};
use serde_json::{Value, json};

const PROGRAM: &str = "metrics-ingest";

#[test]
fn compose_and_kubernetes_set_only_configuration_keys() {
    check_environment(PROGRAM, &config_keys(DEFAULTS), &[]).assert_none();
}

#[test]
fn kubernetes_grace_period_outlasts_the_drain() {
    let default_ms = default_value(DEFAULTS, &["shutdown", "timeout_ms"])
        .as_integer()
        .unwrap();
    check_grace_period(
        PROGRAM,
        "METRICS_SHUTDOWN__TIMEOUT_MS",
        u64::try_from(default_ms).unwrap(),
    )
    .assert_none();
}

#[test]
fn monitoring_reads_only_series_the_service_exposes() {
    let exposed = exposed_series(&Metrics::new().encode().unwrap());
    assert!(exposed.contains("metrics_ingest_ready"), "{exposed:?}");
    check_series("metrics_ingest_", &exposed, PROGRAM).assert_none();
}

/// The broker definitions declare exactly what metrics-ingest declares with its defaults:
/// other arguments would make the broker refuse the service's declarations.
#[test]
fn rabbitmq_definitions_are_the_declared_topology() {
    let file = "deploy/rabbitmq/definitions.json";
    let document = json(&path(file));
    let amqp = default_value(DEFAULTS, &["amqp"]);
    let exchange = amqp["exchange"].as_str().unwrap();
    let queue = amqp["queue"].as_str().unwrap();
    let limit = amqp["delivery_limit"].as_integer().unwrap();
    let dlx = format!("{queue}.dlx");
    let dead = format!("{queue}.dead");
    let mut problems = Problems::default();
    for (name, kind) in [(exchange, "topic"), (dlx.as_str(), "fanout")] {
        let found = items(&document, "exchanges")
            .iter()
            .find(|e| text(e, "name") == name);
        if !found.is_some_and(|e| text(e, "type") == kind && e["durable"] == json!(true)) {
            problems.add(
                file,
                format!("exchange {name} is not a durable {kind} exchange"),
            );
        }
    }
    let expected = [
        (
            queue,
            json!({"x-queue-type": "quorum", "x-delivery-limit": limit, "x-dead-letter-exchange": dlx}),
        ),
        (dead.as_str(), json!({"x-queue-type": "quorum"})),
    ];
    for (name, arguments) in expected {
        let found = items(&document, "queues")
            .iter()
            .find(|q| text(q, "name") == name);
        if !found.is_some_and(|q| q["durable"] == json!(true) && q["arguments"] == arguments) {
            problems.add(
                file,
                format!("queue {name} is not durable with exactly the arguments {arguments}"),
            );
        }
    }
    let bindings: Vec<(&str, &str, &str)> = items(&document, "bindings")
        .iter()
        .map(|b: &Value| {
            (
                text(b, "source"),
                text(b, "destination"),
                text(b, "routing_key"),
            )
        })
        .collect();
    for binding in [
        (exchange, queue, BINDING_KEY),
        (dlx.as_str(), dead.as_str(), ""),
    ] {
        if !bindings.contains(&binding) {
            problems.add(
                file,
                format!(
                    "binding {} -> {} ({:?}) is missing",
                    binding.0, binding.1, binding.2
                ),
            );
        }
    }
    problems.assert_none();
}
