//! Failures mid-stream: a killed process, competing instances, lost broker and database
//! connections. Totals stay exact because nothing is acknowledged before it is committed and
//! `apply` is idempotent.

use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use metrics_test_support::process::{IngestTarget, Service};
use metrics_test_support::{TestBroker, TestDatabase, eventually};

use crate::support::{
    DEADLINE, Proxy, Running, declare, environment, runs_counted, settings, wait_for_rows, workload,
};

/// How long a whole stream may take to be counted by the binary: generous, since it only ends
/// the wait early when the machine is slow; a stream that stops counting fails sooner.
const STREAM_DEADLINE: Duration = Duration::from_secs(120);

/// `metrics-ingest run` as a child process with `settings`; killed when dropped, so a failing
/// test leaves no process behind.
fn spawn_ingest(settings: &metrics_ingest::Settings) -> Service {
    use secrecy::ExposeSecret;
    let target = IngestTarget {
        database_url: settings.database.url.expose_secret().to_owned(),
        amqp_url: settings.amqp.url.expose_secret().to_owned(),
        exchange: settings.amqp.exchange.clone(),
        queue: settings.amqp.queue.clone(),
    };
    let environment = environment(settings);
    // The log level stays the default: the ports are found in the `info` line that reports them.
    let variables: Vec<(&str, &str)> = environment
        .iter()
        .filter(|(key, _)| key != "METRICS_LOG__LEVEL")
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    Service::ingest_at(&target, &variables)
}

/// Holds `EXCLUSIVE` locks on every table of the test database while it lives: reads pass,
/// every write waits.
struct WritesBlocked(diesel::PgConnection);

impl WritesBlocked {
    async fn on(database: &TestDatabase) -> Self {
        let url = database.url().to_owned();
        tokio::task::spawn_blocking(move || {
            use diesel::Connection;
            let mut conn = diesel::PgConnection::establish(&url).unwrap();
            metrics_test_support::block_writes(&mut conn);
            Self(conn)
        })
        .await
        .unwrap()
    }
}

impl Drop for WritesBlocked {
    fn drop(&mut self) {
        let _ = self.0.batch_execute("ROLLBACK");
    }
}

/// Connections of the test database waiting for a lock.
async fn waiting_for_a_lock(database: &TestDatabase) -> i64 {
    let url = database.url().to_owned();
    let name = database.name().to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::{Connection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Waiting {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            waiting: i64,
        }
        let mut conn = diesel::PgConnection::establish(&url).unwrap();
        diesel::sql_query(
            "SELECT count(*) AS waiting FROM pg_stat_activity \
             WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Waiting>(&mut conn)
        .unwrap()
        .waiting
    })
    .await
    .unwrap()
}

/// SIGKILL while a batch is being written: some runs counted, the replica's batch hanging in
/// the database (its tables locked by the test), more deliveries held unacknowledged and more
/// published after the kill. Every step waits on observable state (runs counted, a connection
/// waiting for a lock), never on a sleep, so the kill lands mid-batch however slow the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_restarted_counts_exactly() {
    killed_mid_stream_and_restarted(false).await;
}

/// The same with the inbox: the kill also leaves events staged but not applied, which the
/// restarted process applies with the redeliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_restarted_with_the_inbox_counts_exactly() {
    killed_mid_stream_and_restarted(true).await;
}

async fn killed_mid_stream_and_restarted(inbox: bool) {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    // Small batches, so the stream is still flowing when the process is killed.
    settings.batch.size = 10;
    settings.amqp.prefetch = 50;
    settings.inbox.enabled = inbox;
    declare(&broker, &settings).await;
    let (bodies, expected) = workload(4000);
    let (before, during, after) = (&bodies[..1500], &bodies[1500..3000], &bodies[3000..]);
    broker
        .publish_all("agentos.run.completed", before.iter().map(Vec::as_slice))
        .await;

    let mut first = spawn_ingest(&settings);
    eventually(STREAM_DEADLINE, || async {
        let runs = runs_counted(&database).await;
        if runs > 0 { Ok(()) } else { Err(runs) }
    })
    .await;
    // Writes wait from now on; with more traffic behind, the replica's next batch hangs in the
    // database with deliveries unacknowledged.
    let blocked = WritesBlocked::on(&database).await;
    broker
        .publish_all("agentos.run.completed", during.iter().map(Vec::as_slice))
        .await;
    eventually(STREAM_DEADLINE, || async {
        let waiting = waiting_for_a_lock(&database).await;
        if waiting > 0 { Ok(()) } else { Err(waiting) }
    })
    .await;
    // SIGKILL: no draining; the transaction dies with the connection and the unacknowledged
    // deliveries return to the queue.
    first.kill();
    drop(blocked);
    // Whatever the killed replica's hanging write does now (its server backend aborts when it
    // finds the client gone), its deliveries were never acknowledged and come back.
    let at_kill = runs_counted(&database).await;
    assert!(
        (1..4000).contains(&at_kill),
        "{at_kill} runs counted at the kill"
    );
    eprintln!("killed mid-batch with {at_kill} of 4000 runs counted");
    broker
        .publish_all("agentos.run.completed", after.iter().map(Vec::as_slice))
        .await;

    let mut second = spawn_ingest(&settings);
    eventually(STREAM_DEADLINE, || async {
        let rows = crate::support::rows(&database).await;
        if rows == expected { Ok(()) } else { Err(rows) }
    })
    .await;
    eventually(DEADLINE, || async {
        let ready = broker.ready_count(broker.queue()).await;
        if ready == 0 { Ok(()) } else { Err(ready) }
    })
    .await;
    // SIGTERM: a clean exit with status 0.
    tokio::task::spawn_blocking(move || second.stop(DEADLINE))
        .await
        .unwrap();
    wait_for_rows(&database, &expected).await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_queue_count_exactly() {
    two_instances_on_one_queue(false).await;
}

/// The same with the inbox: two appliers take turns on the staged events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_queue_with_the_inbox_count_exactly() {
    two_instances_on_one_queue(true).await;
}

async fn two_instances_on_one_queue(inbox: bool) {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    settings.batch.size = 25;
    settings.amqp.prefetch = 100;
    settings.inbox.enabled = inbox;
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
