//! PostgreSQL and RabbitMQ down at the same time, with traffic published before, between and
//! after, and a replica restarted while both are gone.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use metrics_publisher::traffic::{TrafficOptions, generate};
use metrics_test_support::private::{PrivatePostgres, PrivateRabbit};
use metrics_test_support::process::{IngestTarget, Service};
use metrics_test_support::rows::reference;

use crate::{
    EXCHANGE, QUEUE, TABLE, check_dead_letters, converge, drain_dead_letters, migrate, publish,
    queue_state, split,
};

/// How long the rows may take to catch up after the last outage ends.
const CATCH_UP: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_servers_down_at_once_loses_nothing() {
    let _serial = crate::SERIAL.lock().await;
    let started = Instant::now();
    let traffic = generate(&TrafficOptions {
        sessions: 600,
        max_runs_per_session: 4,
        users: 50,
        start: Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap(),
        days: 10,
        source: "agno://metrics-faults-outage".to_owned(),
        batch: 5,
        duplicates: 0.05,
        resent_runs: 0.05,
        shuffle: true,
        poison: 0.03,
        seed: 73,
    });
    // Four parts: before the outage, while only the database is down, while only the broker is
    // up again, and after.
    let part = traffic.messages.len().div_ceil(4);
    let parts: Vec<_> = traffic.messages.chunks(part).collect();
    assert_eq!(parts.len(), 4);
    // The rows expected once the first `n` parts are counted.
    let mut valid = Vec::new();
    let mut poison = BTreeSet::new();
    let expected: Vec<_> = parts
        .iter()
        .map(|messages| {
            split(messages, &mut valid, &mut poison);
            reference(&valid)
        })
        .collect();

    let postgres = PrivatePostgres::start();
    let mut rabbit = PrivateRabbit::start().await;
    let database_url = postgres.create_database("metrics");
    migrate(&database_url);
    let target = IngestTarget {
        database_url: database_url.clone(),
        amqp_url: rabbit.url(),
        exchange: EXCHANGE.to_owned(),
        queue: QUEUE.to_owned(),
    };
    // A prefetch above a part's message count (the default byte budget caps it at 24), so that
    // ingest holds a whole part unacknowledged when the broker is killed.
    let settings = [
        ("METRICS_AMQP__PREFETCH", "1000"),
        ("METRICS_LIMITS__MAX_BODY_BYTES", "65536"),
        ("METRICS_BATCH__MEMORY_BYTES", "67108864"),
        ("METRICS_BACKOFF__MAX_MS", "1000"),
        ("METRICS_DATABASE__TABLE", TABLE),
    ];
    let mut ingest = Service::ingest_at(&target, &settings);
    ingest.ready().await;
    // Ingest has declared the queues; a clean restart writes the broker's registry of its quorum
    // queues to disk, which the SIGKILL below must not be able to lose (`PrivateRabbit::stop`).
    rabbit.stop().await;
    rabbit.start_again().await;
    let url = rabbit.url();
    let set_up = started.elapsed();

    let outages = Instant::now();
    publish(&url, EXCHANGE, parts[0]).await;
    converge(&database_url, &expected[0], &url, QUEUE, CATCH_UP).await;

    // The database goes first, while ingest holds deliveries it cannot write; then the broker.
    // While both are down the replica is SIGKILLed and a new one started. The broker comes back
    // first and takes traffic, then the database.
    postgres.crash();
    publish(&url, EXCHANGE, parts[1]).await;
    // Ingest has taken every message of the part (fewer than the prefetch), unacknowledged.
    metrics_test_support::eventually(Duration::from_secs(30), || async {
        match queue_state(&url, QUEUE).await {
            (0, _) => Ok(()),
            state => Err(state),
        }
    })
    .await;
    rabbit.crash();
    println!("faults: both servers down (the database first); replica SIGKILLed and restarted");
    ingest.kill();
    ingest = Service::ingest_at(&target, &settings);
    rabbit.start_again().await;
    publish(&url, EXCHANGE, parts[2]).await;
    postgres.start_again();
    publish(&url, EXCHANGE, parts[3]).await;
    converge(&database_url, &expected[3], &url, QUEUE, CATCH_UP).await;
    let outage = outages.elapsed();
    // Nothing is left behind: no delivery held by a dead session, no duplicate to count.
    metrics_test_support::eventually(Duration::from_secs(30), || async {
        match queue_state(&url, QUEUE).await {
            (0, _) => Ok(()),
            state => Err(state),
        }
    })
    .await;

    ingest.stop(Duration::from_secs(30));
    let letters = drain_dead_letters(&url, QUEUE).await;
    let copies = check_dead_letters(&letters, &poison);
    println!(
        "faults: both servers down at once: {} messages ({} valid events, {} poison), set-up \
         {:.1} s, outage and catching up {:.1} s; rows equal the reference; dead-letter queue: \
         {} poison messages, {copies} extra copies",
        traffic.messages.len(),
        valid.len(),
        poison.len(),
        set_up.as_secs_f64(),
        outage.as_secs_f64(),
        poison.len(),
    );
}
