//! The binary's other commands and its refusal of bad settings.

use std::process::Command;

use metrics_test_support::TestDatabase;

fn ingest() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_metrics-ingest"));
    // Only the variables a test sets reach the binary's configuration.
    for (key, _) in std::env::vars() {
        if key.starts_with("METRICS_") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn migrate_applies_the_migrations_and_exits() {
    let database = TestDatabase::empty();
    let output = ingest()
        .arg("migrate")
        .env("METRICS_DATABASE__URL", database.url())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let mut conn = database.connect();
    let page = metrics_aggregator::read(&mut conn, "agno_metrics", Default::default()).unwrap();
    assert_eq!(page, metrics_aggregator::MetricsPage::default());
    // A second run finds nothing to do and succeeds too.
    let again = ingest()
        .arg("migrate")
        .env("METRICS_DATABASE__URL", database.url())
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
}

#[test]
fn invalid_settings_fail_at_start_naming_the_key() {
    let output = ingest()
        .env("METRICS_AMQP__PREFETCH", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`amqp.prefetch`"), "{stderr}");
}

#[test]
fn a_log_filter_that_does_not_parse_stops_the_start() {
    // Neither falls back to another filter: the service exits naming the source at fault.
    let output = ingest()
        .arg("migrate")
        .env("RUST_LOG", "metrics_ingest=[")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`RUST_LOG` is not a log filter"),
        "{stderr}"
    );
    let output = ingest()
        .arg("migrate")
        .env_remove("RUST_LOG")
        .env("METRICS_LOG__LEVEL", "metrics_ingest=[")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`log.level`"), "{stderr}");
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    // A port just bound and released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let status = ingest()
        .arg("healthcheck")
        .env("METRICS_ADMIN__LISTEN", format!("127.0.0.1:{port}"))
        .env("METRICS_LOG__LEVEL", "off")
        .status()
        .unwrap();
    assert!(!status.success());
}
