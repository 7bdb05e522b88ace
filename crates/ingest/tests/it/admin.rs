//! The admin listener: probes and Prometheus text.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_ingest::admin::probe;
use metrics_test_support::{TestBroker, TestDatabase, eventually};

use crate::support::{DEADLINE, Running, settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_report_liveness_readiness_and_metrics() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    let service = Running::start(settings.clone()).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], service.admin_port));
    let wait = Duration::from_secs(5);

    assert_eq!(
        probe(addr, "/livez", wait).await.unwrap(),
        (200, "ok\n".to_owned())
    );
    eventually(DEADLINE, || async {
        match probe(addr, "/readyz", wait).await {
            Ok((200, body)) => Ok(body),
            other => Err(other),
        }
    })
    .await;
    settings.admin.listen = addr.to_string();
    metrics_ingest::healthcheck(&settings).await.unwrap();

    let (status, text) = probe(addr, "/metrics", wait).await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "metrics_ingest_deliveries_total{outcome=\"applied\"} 0",
        "metrics_ingest_deliveries_total{outcome=\"dead_lettered\"} 0",
        "metrics_ingest_deliveries_total{outcome=\"retried\"} 0",
        "metrics_ingest_batch_events_bucket",
        "metrics_ingest_apply_duration_seconds_bucket",
        "metrics_ingest_reconnects_total{dependency=\"amqp\"} 0",
        "metrics_ingest_ready 1",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert_eq!(probe(addr, "/nope", wait).await.unwrap().0, 404);
    service.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_false_while_the_broker_is_unreachable() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    // A closed port on loopback: connecting fails at once, again and again.
    settings.amqp.url = "amqp://guest:guest@127.0.0.1:1/%2f".to_owned().into();
    let service = Running::start(settings).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], service.admin_port));
    let wait = Duration::from_secs(5);
    assert_eq!(probe(addr, "/livez", wait).await.unwrap().0, 200);
    assert_eq!(
        probe(addr, "/readyz", wait).await.unwrap(),
        (503, "not ready: no usable AMQP channel\n".to_owned())
    );
    service.stop().await;
    broker.cleanup().await;
}
