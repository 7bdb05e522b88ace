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

/// A replica that makes no progress (here: its write waits on a lock the test holds) reports not
/// ready once a batch has waited `admin.stall_timeout_ms`, with the reason, and ready again once
/// the batch is settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_false_while_no_batch_is_settled_for_the_stall_timeout() {
    use diesel::{Connection, RunQueryDsl};

    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    settings.admin.stall_timeout_ms = 500;
    crate::support::declare(&broker, &settings).await;
    let service = Running::start(settings).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], service.admin_port));
    let wait = Duration::from_secs(5);
    eventually(DEADLINE, || async {
        match probe(addr, "/readyz", wait).await {
            Ok((200, body)) => Ok(body),
            other => Err(other),
        }
    })
    .await;

    // Hold every writer off the daily rows in an open transaction.
    let url = database.url().to_owned();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut conn = diesel::PgConnection::establish(&url).unwrap();
        conn.transaction(|conn| {
            diesel::sql_query("LOCK TABLE daily_metrics IN ACCESS EXCLUSIVE MODE").execute(conn)?;
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            diesel::QueryResult::Ok(())
        })
        .unwrap();
    });
    locked_rx.recv().unwrap();
    broker
        .publish(
            "agentos.run.completed",
            &crate::support::body(&crate::support::run_completed(
                "e1",
                "r1",
                "s1",
                "alice",
                crate::support::day(0),
                1,
            )),
        )
        .await;

    let (status, body) = eventually(DEADLINE, || async {
        match probe(addr, "/readyz", wait).await {
            Ok((503, body)) => Ok((503, body)),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready: no batch settled for ")
            && body.ends_with(" s: the batch in hand is still being written\n"),
        "{body}"
    );

    release_tx.send(()).unwrap();
    holder.join().unwrap();
    eventually(DEADLINE, || async {
        match probe(addr, "/readyz", wait).await {
            Ok((200, body)) => Ok(body),
            other => Err(other),
        }
    })
    .await;
    crate::support::wait_for_rows(
        &database,
        &[crate::support::DaySummary {
            date: crate::support::day(0),
            agent_runs: 1,
            agent_sessions: 1,
            users: 1,
            input_tokens: 1,
            output_tokens: 1,
            model_runs: 1,
        }],
    )
    .await;
    service.stop().await;
    broker.cleanup().await;
}
