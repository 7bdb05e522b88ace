//! Drain rate of metrics-ingest on a pre-filled queue, next to its two limits, and its peak
//! memory while draining.
//!
//! ```text
//! cargo bench -p metrics-ingest --bench drain
//! ```
//!
//! For single-event messages and for batch messages of 100 events (200,000 events each, by
//! default; `DRAIN_EVENTS` overrides), on loopback RabbitMQ (`TEST_AMQP_URL`) and PostgreSQL
//! (`TEST_DATABASE_URL`), it measures in one run:
//!
//! 1. a bare lapin consumer that only acknowledges (each delivery on its own), on a quorum queue
//!    declared exactly like the service's, with the service's prefetch (`consumer::prefetch`);
//! 2. `apply` alone on the same events (decoded beforehand), in transactions of the service's
//!    batch size, on a fresh database;
//! 3. the `metrics-ingest` binary (built with this profile) draining the same queue contents
//!    into a fresh database, timed from its start until every event is counted; its peak
//!    resident memory is its `VmHWM` from `/proc`. The time includes the process's start.
//!
//! Settings come from the defaults and `METRICS_*` variables. The last column, decoding alone, is
//! the cost of `decode_message` on one core, which the service pays on top of `apply`.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary reports on stdout and fails loudly"
)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use metrics_aggregator::TableName;
use metrics_events::{Event, EventKind, Limits, decode_message};
use metrics_ingest::Settings;
use metrics_ingest::topology::Topology;
use metrics_publisher::traffic::{self, TrafficOptions};
use metrics_test_support::{TestBroker, TestDatabase, process};
use secrecy::ExposeSecret;

/// The longest any phase may take before the benchmark gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(600);

/// About `events` events of `metrics-publisher`'s synthetic traffic (`traffic::events`, seed 1):
/// `events / 4` sessions of 1 to 5 runs (3 on average), 500 users, 30 days from 2025-01-01.
fn stream(events: usize) -> Vec<Event> {
    traffic::events(&TrafficOptions {
        sessions: events / 4,
        users: 500,
        start: DateTime::<Utc>::from_timestamp(1_735_689_600, 0).unwrap(),
        days: 30,
        source: "agno://bench".to_owned(),
        seed: 1,
        ..TrafficOptions::default()
    })
}

fn bodies(events: &[Event], per_message: usize) -> Vec<Vec<u8>> {
    if per_message == 1 {
        events
            .iter()
            .map(|event| serde_json::to_vec(&metrics_events::encode(event).unwrap()).unwrap())
            .collect()
    } else {
        events
            .chunks(per_message)
            .map(|chunk| serde_json::to_vec(&metrics_events::encode_batch(chunk).unwrap()).unwrap())
            .collect()
    }
}

fn settings(database: &TestDatabase, broker: &TestBroker) -> Settings {
    let mut settings = Settings::load(None).unwrap();
    settings.database.url = database.url().to_owned().into();
    settings.amqp.url = broker.url().to_owned().into();
    settings.amqp.exchange = broker.exchange().to_owned();
    settings.amqp.queue = broker.queue().to_owned();
    settings.admin.listen = "127.0.0.1:0".to_owned();
    settings
}

async fn fill(broker: &TestBroker, bodies: &[Vec<u8>]) {
    for window in bodies.chunks(2000) {
        broker
            .publish_all("agentos.bench", window.iter().map(Vec::as_slice))
            .await;
    }
}

/// A consumer that only acknowledges, each delivery on its own, until `messages` arrived.
async fn bare_consumer(broker: &TestBroker, settings: &Settings, messages: usize) -> Duration {
    let connection =
        lapin::Connection::connect(broker.url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(
            metrics_ingest::consumer::prefetch(settings),
            BasicQosOptions::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(
            broker.queue().into(),
            "bench-bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = 0;
    while received < messages {
        let delivery = tokio::time::timeout(PHASE_LIMIT, consumer.next())
            .await
            .expect("the bare consumer stalled")
            .unwrap()
            .unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        received += 1;
    }
    let elapsed = started.elapsed();
    connection.close(200, "done".into()).await.unwrap();
    elapsed
}

/// `apply` alone: the same events, in transactions of `batch` events, on a fresh database.
fn apply_alone(events: Vec<Event>, batch: usize) -> Duration {
    let database = TestDatabase::migrated();
    let mut conn = database.connect();
    let table = metrics_aggregator::register_table(&mut conn, &TableName::default()).unwrap();
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        metrics_aggregator::apply(&mut conn, table, chunk).unwrap();
    }
    started.elapsed()
}

/// The ingest binary drains the queue into `database`; returns the time and peak RSS.
fn ingest(settings: &Settings, database: &TestDatabase, runs: i64) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_metrics-ingest"))
        .env("METRICS_DATABASE__URL", database.url())
        .env("METRICS_AMQP__URL", settings.amqp.url.expose_secret())
        .env("METRICS_AMQP__EXCHANGE", &settings.amqp.exchange)
        .env("METRICS_AMQP__QUEUE", &settings.amqp.queue)
        .env("METRICS_AMQP__PREFETCH", settings.amqp.prefetch.to_string())
        .env("METRICS_BATCH__SIZE", settings.batch.size.to_string())
        .env(
            "METRICS_BATCH__MAX_EVENTS",
            settings.batch.max_events.to_string(),
        )
        .env("METRICS_BATCH__WAIT_MS", settings.batch.wait_ms.to_string())
        .env("METRICS_INBOX__ENABLED", settings.inbox.enabled.to_string())
        .env(
            "METRICS_INBOX__APPLY_EVENTS",
            settings.inbox.apply_events.to_string(),
        )
        .env("METRICS_INBOX__WAIT_MS", settings.inbox.wait_ms.to_string())
        .env("METRICS_ADMIN__LISTEN", "127.0.0.1:0")
        .env("METRICS_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut peak = 0;
    loop {
        peak = peak.max(process::peak_rss_kib(child.id()).unwrap_or(0));
        if database.runs_counted("agno_metrics") >= runs {
            break;
        }
        assert!(
            started.elapsed() < PHASE_LIMIT,
            "metrics-ingest did not drain in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    peak = peak.max(process::peak_rss_kib(child.id()).unwrap_or(0));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (elapsed, peak)
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("DRAIN_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(200_000);
    let events = stream(total);
    let runs = events
        .iter()
        .filter(|event| matches!(event.kind, EventKind::RunCompleted(_)))
        .count();
    let runs = i64::try_from(runs).unwrap();
    println!("drain benchmark: {} events", events.len());
    println!();
    println!(
        "| messages | bare consumer (acks only) | `apply` alone | metrics-ingest | ingest / slower limit | peak RSS | decoding alone (one core) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for per_message in [1, 100] {
        let bodies = bodies(&events, per_message);
        let broker = TestBroker::new().await;
        let mut settings = settings(&TestDatabase::empty(), &broker);
        Topology::from_settings(&settings.amqp)
            .declare(broker.channel())
            .await
            .unwrap();
        broker
            .channel()
            .queue_purge(broker.queue().into(), QueuePurgeOptions::default())
            .await
            .unwrap();

        fill(&broker, &bodies).await;
        let bare = bare_consumer(&broker, &settings, bodies.len()).await;

        let decoding = Instant::now();
        let decoded: Vec<Event> = bodies
            .iter()
            .flat_map(|body| decode_message(body, &Limits::default()).unwrap().events)
            .filter_map(|event| match event {
                Ok(metrics_events::Decoded::Event(event)) => Some(event),
                _ => None,
            })
            .collect();
        let decode = decoding.elapsed();
        let batch = settings.batch.max_events.min(
            settings
                .batch
                .size
                .min(usize::from(metrics_ingest::consumer::prefetch(&settings)))
                * per_message,
        );
        let apply = tokio::task::spawn_blocking(move || apply_alone(decoded, batch))
            .await
            .unwrap();

        fill(&broker, &bodies).await;
        let database = Arc::new(TestDatabase::migrated());
        settings.database.url = database.url().to_owned().into();
        let (drain, peak_kib) = {
            let database = Arc::clone(&database);
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || ingest(&settings, &database, runs))
                .await
                .unwrap()
        };

        let bare_events = rate(events.len(), bare);
        let apply_events = rate(events.len(), apply);
        let ingest_events = rate(events.len(), drain);
        println!(
            "| {per_message} event(s) per message, {} messages (prefetch {}, batch {} deliveries) | {:.0} msg/s = {:.0} events/s ({:.1} s) | {:.0} events/s ({:.1} s) | {:.0} events/s ({:.1} s) | {:.0}% | {:.1} MiB | {:.0} events/s |",
            bodies.len(),
            metrics_ingest::consumer::prefetch(&settings),
            settings.batch.size,
            rate(bodies.len(), bare),
            bare_events,
            bare.as_secs_f64(),
            apply_events,
            apply.as_secs_f64(),
            ingest_events,
            drain.as_secs_f64(),
            100.0 * ingest_events / bare_events.min(apply_events),
            peak_kib as f64 / 1024.0,
            rate(events.len(), decode),
        );
        broker.cleanup().await;
    }
}
