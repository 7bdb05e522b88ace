//! Failures mid-stream: a killed process, competing instances, lost broker and database
//! connections. Totals stay exact because nothing is acknowledged before it is committed and
//! `apply` is idempotent.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use metrics_test_support::{TestBroker, TestDatabase, eventually};

use crate::support::{
    DEADLINE, Proxy, Running, declare, environment, runs_counted, settings, wait_for_rows, workload,
};

fn spawn_ingest(settings: &metrics_ingest::Settings) -> Child {
    Command::new(env!("CARGO_BIN_EXE_metrics-ingest"))
        .arg("run")
        .envs(environment(settings))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting metrics-ingest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_restarted_counts_exactly() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    // Small batches, so the stream is still flowing when the process is killed.
    settings.batch.size = 10;
    settings.amqp.prefetch = 50;
    declare(&broker, &settings).await;
    let (bodies, expected) = workload(4000);
    broker
        .publish_all("agentos.run.completed", bodies.iter().map(Vec::as_slice))
        .await;

    let mut first = spawn_ingest(&settings);
    eventually(DEADLINE, || async {
        let runs = runs_counted(&database).await;
        if runs > 0 { Ok(()) } else { Err(runs) }
    })
    .await;
    first.kill().unwrap(); // SIGKILL: no draining, unacknowledged deliveries return to the queue
    first.wait().unwrap();
    let at_kill = runs_counted(&database).await;
    eprintln!("killed with {at_kill} of 4000 runs counted");

    let mut second = spawn_ingest(&settings);
    wait_for_rows(&database, &expected).await;
    eventually(DEADLINE, || async {
        let ready = broker.ready_count(broker.queue()).await;
        if ready == 0 { Ok(()) } else { Err(ready) }
    })
    .await;

    // SIGTERM: a clean exit with status 0.
    let status = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || second.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "metrics-ingest exited with {exit}");
    wait_for_rows(&database, &expected).await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_queue_count_exactly() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    settings.batch.size = 25;
    settings.amqp.prefetch = 100;
    declare(&broker, &settings).await;
    let first = Running::start(settings.clone()).await;
    let second = Running::start(settings).await;

    let (bodies, expected) = workload(3000);
    broker
        .publish_all("agentos.run.completed", bodies.iter().map(Vec::as_slice))
        .await;
    // The same events again: redeliveries land on either instance and count once.
    broker
        .publish_all(
            "agentos.run.completed",
            bodies.iter().take(500).map(Vec::as_slice),
        )
        .await;
    wait_for_rows(&database, &expected).await;
    eventually(DEADLINE, || async {
        let settled = [&first, &second]
            .iter()
            .map(|service| {
                service
                    .metrics
                    .counted(metrics_ingest::telemetry::Outcome::Applied)
                    + service
                        .metrics
                        .counted(metrics_ingest::telemetry::Outcome::Duplicate)
            })
            .sum::<u64>();
        if settled == 3500 {
            Ok(())
        } else {
            Err(settled)
        }
    })
    .await;
    first.stop().await;
    second.stop().await;
    assert_eq!(broker.ready_count(broker.queue()).await, 0);
    broker.cleanup().await;
}

/// Ends every connection of the test database but the caller's.
async fn terminate_connections(database: &TestDatabase) -> usize {
    let url = database.url().to_owned();
    let name = database.name().to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::{Connection, RunQueryDsl};
        let mut conn = diesel::PgConnection::establish(&url).unwrap();
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind::<diesel::sql_types::Text, _>(name)
        .execute(&mut conn)
        .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_database_connections_lose_nothing() {
    let database = TestDatabase::migrated();
    let broker = Arc::new(TestBroker::new().await);
    let mut settings = settings(&database, &broker);
    settings.batch.size = 20;
    settings.amqp.prefetch = 100;
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;

    let (bodies, expected) = workload(3000);
    let publisher = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            for chunk in bodies.chunks(300) {
                broker
                    .publish_all("agentos.run.completed", chunk.iter().map(Vec::as_slice))
                    .await;
            }
        })
    };
    // Drop the service's connections each time it makes progress, five times over.
    let mut seen = 0;
    let mut terminated = 0;
    for _ in 0..5 {
        seen = eventually(DEADLINE, || async {
            let runs = runs_counted(&database).await;
            if runs > seen || runs == 3000 {
                Ok(runs)
            } else {
                Err(runs)
            }
        })
        .await;
        terminated += terminate_connections(&database).await;
    }
    eprintln!("terminated {terminated} connections");
    publisher.await.unwrap();
    wait_for_rows(&database, &expected).await;
    // The first termination came mid-stream: a write failed and was retried, not lost.
    assert!(
        service
            .metrics
            .counted(metrics_ingest::telemetry::Outcome::Retried)
            > 0
    );
    service.stop().await;
    assert_eq!(broker.ready_count(broker.queue()).await, 0);
    Arc::into_inner(broker).unwrap().cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connection_lost_mid_stream_reconnects_and_loses_nothing() {
    let database = TestDatabase::migrated();
    let broker = Arc::new(TestBroker::new().await);
    let mut settings = settings(&database, &broker);
    settings.batch.size = 20;
    settings.amqp.prefetch = 100;
    let mut url = url::Url::parse(broker.url()).unwrap();
    let proxy = Proxy::start(url.socket_addrs(|| Some(5672)).unwrap()[0]).await;
    url.set_port(Some(proxy.port)).unwrap();
    settings.amqp.url = String::from(url).into();
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;

    let (bodies, expected) = workload(3000);
    broker
        .publish_all("agentos.run.completed", bodies.iter().map(Vec::as_slice))
        .await;
    // Cut the service's broker connection each time it makes progress, three times over.
    let mut seen = 0;
    for _ in 0..3 {
        seen = eventually(DEADLINE, || async {
            let runs = runs_counted(&database).await;
            if runs > seen || runs == 3000 {
                Ok(runs)
            } else {
                Err(runs)
            }
        })
        .await;
        proxy.cut();
    }
    wait_for_rows(&database, &expected).await;
    eventually(DEADLINE, || async {
        let ready = broker.ready_count(broker.queue()).await;
        if ready == 0 { Ok(()) } else { Err(ready) }
    })
    .await;
    let text = service.metrics.encode().unwrap();
    assert!(
        !text.contains("metrics_ingest_reconnects_total{dependency=\"amqp\"} 0"),
        "{text}"
    );
    service.stop().await;
    Arc::into_inner(broker).unwrap().cleanup().await;
}

/// A broker connection that goes silent without closing (a proxy that stops forwarding) is found
/// by the AMQP heartbeat within two heartbeats; the service reconnects and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_connection_is_found_and_replaced() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    settings.amqp.heartbeat_s = 1;
    let mut url = url::Url::parse(broker.url()).unwrap();
    let proxy = Proxy::start(url.socket_addrs(|| Some(5672)).unwrap()[0]).await;
    url.set_port(Some(proxy.port)).unwrap();
    settings.amqp.url = String::from(url).into();
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;

    let (bodies, expected) = workload(200);
    let (first, second) = bodies.split_at(100);
    broker
        .publish_all("agentos.run.completed", first.iter().map(Vec::as_slice))
        .await;
    eventually(DEADLINE, || async {
        let runs = runs_counted(&database).await;
        if runs == 100 { Ok(()) } else { Err(runs) }
    })
    .await;
    proxy.freeze();
    broker
        .publish_all("agentos.run.completed", second.iter().map(Vec::as_slice))
        .await;
    wait_for_rows(&database, &expected).await;
    service.stop().await;
    broker.cleanup().await;
}

/// A database connection that goes silent without closing is given up on after the write
/// deadline; the batch is retried on a new connection and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_connection_is_found_and_replaced() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    settings.database.connect_timeout_ms = 1000;
    settings.database.statement_timeout_ms = 1000;
    settings.database.tcp_timeout_ms = 1000;
    let mut url = url::Url::parse(database.url()).unwrap();
    let proxy = Proxy::start(url.socket_addrs(|| Some(5432)).unwrap()[0]).await;
    url.set_port(Some(proxy.port)).unwrap();
    settings.database.url = String::from(url).into();
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;

    let (bodies, expected) = workload(200);
    let (first, second) = bodies.split_at(100);
    broker
        .publish_all("agentos.run.completed", first.iter().map(Vec::as_slice))
        .await;
    eventually(DEADLINE, || async {
        let runs = runs_counted(&database).await;
        if runs == 100 { Ok(()) } else { Err(runs) }
    })
    .await;
    proxy.freeze();
    broker
        .publish_all("agentos.run.completed", second.iter().map(Vec::as_slice))
        .await;
    wait_for_rows(&database, &expected).await;
    service.stop().await;
    broker.cleanup().await;
}
