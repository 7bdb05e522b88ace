//! The deployment files against metrics-query's own constants: the configuration keys and the
//! drain of its defaults, the series it exposes (`metrics_test_support::deploy`;
//! `scripts/validate-deploy.sh` runs these with the linters).

use std::time::Duration;

use metrics_query::config::{AGENTOS_VARIABLES, DEFAULT_TOML};
use metrics_query::telemetry::Metrics;
use metrics_test_support::deploy::{
    check_environment, check_grace_period, check_series, config_keys, default_value, exposed_series,
};

const PROGRAM: &str = "metrics-query";

#[test]
fn compose_and_kubernetes_set_only_configuration_keys() {
    let extra = AGENTOS_VARIABLES.map(|(variable, _)| variable);
    check_environment(PROGRAM, &config_keys(DEFAULT_TOML), &extra).assert_none();
}

#[test]
fn kubernetes_grace_period_outlasts_the_drain() {
    let default_ms = default_value(DEFAULT_TOML, &["http", "shutdown_timeout_ms"])
        .as_integer()
        .unwrap();
    check_grace_period(
        PROGRAM,
        "METRICS_HTTP__SHUTDOWN_TIMEOUT_MS",
        u64::try_from(default_ms).unwrap(),
    )
    .assert_none();
}

#[test]
fn monitoring_reads_only_series_the_service_exposes() {
    // A family shows in the exposition once it has a labelled child: one observation each.
    let metrics = Metrics::default();
    metrics.observe_request("/metrics", 200, Duration::from_millis(3));
    metrics.observe_cache("hit");
    metrics.observe_pool("default", 2, 1, 4);
    let exposed = exposed_series(&metrics.encode().unwrap());
    assert!(
        exposed.contains("metrics_query_requests_total"),
        "{exposed:?}"
    );
    check_series("metrics_query_", &exposed, PROGRAM).assert_none();
}
