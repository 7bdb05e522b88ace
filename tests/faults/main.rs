//! Fault injection: the whole pipeline on a PostgreSQL server and a RabbitMQ node of its own,
//! which it crashes and restarts while two `metrics-ingest` replicas (which it SIGKILLs, again
//! and again) drain what two `metrics-loadgen` processes publish: at least 100,000 events with
//! redeliveries, re-sent runs, shuffled (out-of-order) times and poison messages, as single events
//! and as batches.
//!
//! At the end the rows must equal the rows computed in memory from the distinct valid events,
//! and the dead-letter queue must hold exactly the poison messages (each at least once: a replica
//! killed between a dead letter's confirm and the original's acknowledgement dead-letters that
//! message again, so copies are counted and reported, never a different message).
//!
//! ```sh
//! cargo build --workspace --bins
//! cargo test -p metrics-e2e --test faults -- --nocapture            # 100,000 events
//! METRICS_FAULTS_EVENTS=400000 cargo test -p metrics-e2e --test faults -- --nocapture
//! ```
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "the test fails loudly and prints the figures it measured"
)]

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use diesel::{Connection, PgConnection};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection as AmqpConnection, ConnectionProperties};
use metrics_events::{Decoded, Event, Limits, decode_message};
use metrics_publisher::OutgoingMessage;
use metrics_publisher::traffic::{Summary, Traffic, TrafficOptions, generate};
use metrics_test_support::private::{PrivatePostgres, PrivateRabbit};
use metrics_test_support::process::{IngestTarget, Service, binary};
use metrics_test_support::rows::{Day, reference, try_snapshot};

mod crash_loop;
mod outage;

/// One test at a time: each runs servers, replicas and load of its own, and on a small machine
/// they would mostly measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest a single exchange with the broker (a connection, a declare, a get, a close) may
/// take in the suite's own helpers: a broker that stops answering fails the test with the step
/// it was in, never hangs it.
const BROKER_STEP: Duration = Duration::from_secs(60);

/// Awaits `future`, at most [`BROKER_STEP`]; panics naming `what` when it takes longer.
async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BROKER_STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {BROKER_STEP:?}"))
}

/// Opens a connection to the broker for the suite's helpers, bounded by [`BROKER_STEP`].
async fn connect(amqp_url: &str) -> AmqpConnection {
    bounded(
        "connecting to RabbitMQ",
        AmqpConnection::connect(amqp_url, ConnectionProperties::default()),
    )
    .await
    .unwrap()
}

/// Closes a helper's connection; one that does not close in time is left to drop.
async fn close(connection: &AmqpConnection) {
    let _ = tokio::time::timeout(BROKER_STEP, connection.close(0, "done".into())).await;
}

const TABLE: &str = "agno_metrics";
const EXCHANGE: &str = "agentos.events";
const QUEUE: &str = "metrics.faults";

/// What the suite does to the system while the streams flow.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL an ingest replica and start a new one at once.
    KillReplica(usize),
    /// SIGKILL the RabbitMQ node; while it is down, SIGKILL a replica too; restart after 1 s.
    CrashRabbit { kill_replica: usize },
    /// Stop PostgreSQL in `immediate` mode; while it is down, SIGKILL a replica too; restart
    /// after 2 s.
    CrashPostgres { kill_replica: usize },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KillReplica(index) => write!(f, "SIGKILL ingest replica {}", index + 1),
            Self::CrashRabbit { kill_replica } => write!(
                f,
                "crash RabbitMQ, SIGKILL ingest replica {} while the broker is down, restart the broker",
                kill_replica + 1
            ),
            Self::CrashPostgres { kill_replica } => write!(
                f,
                "crash PostgreSQL, SIGKILL ingest replica {} while the database is down, restart the database",
                kill_replica + 1
            ),
        }
    }
}

/// One `metrics-loadgen` stream: its options, passed on its command line and used here to
/// compute what it sends.
struct Stream {
    options: TrafficOptions,
    rate: u64,
}

impl Stream {
    fn traffic(&self) -> Traffic {
        generate(&self.options)
    }

    fn spawn(&self, amqp_url: &str) -> Reaped {
        let o = &self.options;
        let child = Command::new(binary("metrics-loadgen"))
            .args(["--url", amqp_url, "--exchange", EXCHANGE, "--json"])
            .args(["--sessions", &o.sessions.to_string()])
            .args(["--max-runs", &o.max_runs_per_session.to_string()])
            .args(["--users", &o.users.to_string()])
            .args(["--days", &o.days.to_string()])
            .args(["--start", &o.start.date_naive().to_string()])
            .args(["--batch", &o.batch.to_string()])
            .args(["--rate", &self.rate.to_string()])
            .args(["--duplicates", &o.duplicates.to_string()])
            .args(["--resent-runs", &o.resent_runs.to_string()])
            .args(["--poison", &o.poison.to_string()])
            .args(["--seed", &o.seed.to_string()])
            .args(["--source", &o.source])
            .args(o.shuffle.then_some("--shuffle"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Reaped(child)
    }
}

/// A child process that is killed and reaped when dropped, so that a failing test leaves none
/// behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The valid events and the poison bodies of some traffic, by decoding every message the way
/// ingest does.
fn split(messages: &[OutgoingMessage], events: &mut Vec<Event>, poison: &mut BTreeSet<Vec<u8>>) {
    for message in messages {
        match decode_message(&message.body, &Limits::default()) {
            Ok(decoded) if !decoded.is_batch && decoded.events.iter().any(Result::is_err) => {
                poison.insert(message.body.clone());
            }
            Ok(decoded) => {
                for element in decoded.events {
                    match element {
                        Ok(Decoded::Event(event)) => events.push(event),
                        other => panic!("loadgen's traffic holds a bad batch element: {other:?}"),
                    }
                }
            }
            Err(_) => {
                poison.insert(message.body.clone());
            }
        }
    }
}

/// Every message of the dead-letter queue `<queue>.dead`: body and whether it carries the
/// reason header.
async fn drain_dead_letters(amqp_url: &str, queue: &str) -> Vec<(Vec<u8>, bool)> {
    let connection = connect(amqp_url).await;
    let channel = bounded("opening a channel", connection.create_channel())
        .await
        .unwrap();
    let mut letters = Vec::new();
    while let Some(message) = bounded(
        "getting a dead letter",
        channel.basic_get(
            format!("{queue}.dead").as_str().into(),
            BasicGetOptions::default(),
        ),
    )
    .await
    .unwrap()
    {
        let has_reason = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get("x-metrics-error"))
            .is_some_and(
                |value| matches!(value, AMQPValue::LongString(text) if !text.as_bytes().is_empty()),
            );
        letters.push((message.delivery.data.clone(), has_reason));
        bounded(
            "acknowledging a dead letter",
            message.delivery.ack(BasicAckOptions::default()),
        )
        .await
        .unwrap();
    }
    close(&connection).await;
    letters
}

/// Messages ready in `queue`, and its consumers (a passive declare).
async fn queue_state(amqp_url: &str, queue: &str) -> (u32, u32) {
    let connection = connect(amqp_url).await;
    let channel = bounded("opening a channel", connection.create_channel())
        .await
        .unwrap();
    let declared = bounded(
        "declaring the queue passively",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    close(&connection).await;
    (declared.message_count(), declared.consumer_count())
}

/// Messages ready in `queue`.
async fn ready_in_queue(amqp_url: &str, queue: &str) -> u32 {
    queue_state(amqp_url, queue).await.0
}

/// Publishes `messages` persistently to `exchange`, with publisher confirms, as a careful
/// producer does: what the broker refuses (a quorum queue just after a restart, before it has a
/// leader) is published again. Once this returns, the broker holds every message on disk.
async fn publish(amqp_url: &str, exchange: &str, messages: &[OutgoingMessage]) {
    let connection = connect(amqp_url).await;
    let channel = bounded("opening a channel", connection.create_channel())
        .await
        .unwrap();
    bounded(
        "enabling publisher confirms",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    let mut pending: Vec<&OutgoingMessage> = messages.iter().collect();
    for attempt in 1.. {
        let mut confirms = Vec::with_capacity(pending.len());
        for message in &pending {
            let properties = BasicProperties::default()
                .with_content_type(message.content_type.into())
                .with_delivery_mode(2);
            confirms.push(
                channel
                    .basic_publish(
                        exchange.into(),
                        message.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &message.body,
                        properties,
                    )
                    .await
                    .unwrap(),
            );
        }
        let mut refused = Vec::new();
        for (message, confirm) in pending.iter().zip(confirms) {
            // Bounded: a broker whose queue never recovers fails the test, never hangs it.
            let confirmation = tokio::time::timeout(Duration::from_secs(60), confirm)
                .await
                .unwrap_or_else(|_| panic!("the broker did not confirm a message within 60 s"))
                .unwrap();
            let acked = confirmation.is_ack();
            assert!(
                confirmation.take_message().is_none(),
                "a message was unroutable: is the queue declared?"
            );
            if !acked {
                refused.push(*message);
            }
        }
        if refused.is_empty() {
            break;
        }
        assert!(
            attempt < 100,
            "the broker still refuses {} messages",
            refused.len()
        );
        pending = refused;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    close(&connection).await;
}

/// `metrics-ingest migrate` on `database_url`.
fn migrate(database_url: &str) {
    let migrate = Command::new(binary("metrics-ingest"))
        .arg("migrate")
        .env("METRICS_DATABASE__URL", database_url)
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
}

/// The table's rows, or `None` while the database is unreachable or the table not yet there.
fn rows(database_url: &str) -> Option<Vec<Day>> {
    let mut conn = PgConnection::establish(database_url).ok()?;
    try_snapshot(&mut conn, TABLE).ok()
}

fn first_difference(actual: &[Day], expected: &[Day]) -> String {
    if actual.len() != expected.len() {
        return format!("{} days, expected {}", actual.len(), expected.len());
    }
    actual
        .iter()
        .zip(expected)
        .find(|(a, e)| a != e)
        .map_or_else(String::new, |(a, e)| format!("{a:?}\n  expected {e:?}"))
}

/// Waits until the rows equal `expected`, at most `deadline`. The rows may stop short of it:
/// then, once they have not changed for 20 s with the queue empty, nothing more will come, so it
/// fails at once, naming the first day that differs.
async fn converge(
    database_url: &str,
    expected: &[Day],
    amqp_url: &str,
    queue: &str,
    deadline: Duration,
) {
    let until = Instant::now() + deadline;
    let mut seen: Option<(Vec<Day>, Instant)> = None;
    loop {
        let last = match rows(database_url) {
            Some(actual) if actual == expected => return,
            Some(actual) => {
                let difference = first_difference(&actual, expected);
                match &seen {
                    Some((before, since)) if *before == actual => {
                        if since.elapsed() > Duration::from_secs(20)
                            && ready_in_queue(amqp_url, queue).await == 0
                        {
                            panic!(
                                "the rows stopped short of the reference (unchanged for 20 s, \
                                 queue empty): {difference}"
                            );
                        }
                    }
                    _ => seen = Some((actual, Instant::now())),
                }
                difference
            }
            None => "the database is unreachable".to_owned(),
        };
        assert!(
            Instant::now() < until,
            "the rows did not converge within {deadline:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that the dead letters are exactly the poison set, each with its reason in
/// `x-metrics-error` (a message the broker dead-lettered itself, at its delivery limit, has
/// none); returns how many extra copies there were.
fn check_dead_letters(letters: &[(Vec<u8>, bool)], poison: &BTreeSet<Vec<u8>>) -> usize {
    let bodies: BTreeSet<Vec<u8>> = letters.iter().map(|(body, _)| body.clone()).collect();
    let strays: Vec<String> = bodies
        .difference(poison)
        .map(|body| String::from_utf8_lossy(body).into_owned())
        .take(3)
        .collect();
    assert!(
        strays.is_empty(),
        "{} dead letters that are not poison, such as {strays:?}",
        bodies.difference(poison).count()
    );
    assert!(
        letters.iter().all(|(_, has_reason)| *has_reason),
        "a dead letter without x-metrics-error"
    );
    let missing = poison.difference(&bodies).count();
    assert_eq!(missing, 0, "{missing} poison messages not dead-lettered");
    letters.len() - bodies.len()
}

fn events_target() -> usize {
    std::env::var("METRICS_FAULTS_EVENTS")
        .ok()
        .map(|value| value.parse().unwrap())
        .unwrap_or(100_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_counted_twice_through_crashes_and_restarts() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // About four distinct events per session (one `session.created`, one to five runs); a
    // quarter of the sessions go out as single events, the rest in batches of 25.
    let sessions = events_target().div_ceil(4);
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let stream = |seed: u64, sessions: usize, batch: usize, rate: u64| Stream {
        options: TrafficOptions {
            sessions,
            max_runs_per_session: 5,
            users: 500,
            start,
            days: 30,
            source: "agno://metrics-faults".to_owned(),
            batch,
            duplicates: 0.05,
            resent_runs: 0.05,
            shuffle: true,
            poison: 0.005,
            seed,
        },
        rate,
    };
    // Publishing lasts about 34 s whatever the size, so that every fault lands in the flow.
    let rate = u64::try_from(events_target() / 34).unwrap().max(100);
    let streams = [
        stream(61, sessions / 4, 1, rate / 4),
        stream(62, sessions - sessions / 4, 25, rate - rate / 4),
    ];
    let mut valid = Vec::new();
    let mut poison = BTreeSet::new();
    let mut summaries: Vec<Summary> = Vec::new();
    for stream in &streams {
        let traffic = stream.traffic();
        split(&traffic.messages, &mut valid, &mut poison);
        summaries.push(traffic.summary);
    }
    let expected = reference(&valid);
    let events_sent: usize = summaries.iter().map(|s| s.events_sent).sum();
    let distinct: usize = summaries.iter().map(|s| s.distinct_events).sum();
    assert!(events_sent >= events_target(), "{events_sent} events");

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
    let settings = [
        ("METRICS_BACKOFF__MAX_MS", "2000"),
        ("METRICS_DATABASE__TABLE", TABLE),
    ];
    let mut replicas = [
        Service::ingest_at(&target, &settings),
        Service::ingest_at(&target, &settings),
    ];
    for replica in &mut replicas {
        replica.ready().await;
    }
    let set_up = started.elapsed();

    // Publish, and inject the faults while the streams flow.
    let publishing = Instant::now();
    let mut loadgens: Vec<Reaped> = streams.iter().map(|s| s.spawn(&rabbit.url())).collect();
    let at = |seconds: u64| publishing + Duration::from_secs(seconds);
    let plan = [
        (at(3), Fault::KillReplica(0)),
        (at(6), Fault::KillReplica(1)),
        (at(9), Fault::CrashRabbit { kill_replica: 0 }),
        (at(18), Fault::KillReplica(1)),
        (at(21), Fault::CrashPostgres { kill_replica: 1 }),
        (at(25), Fault::KillReplica(0)),
        (at(28), Fault::KillReplica(1)),
        (at(31), Fault::KillReplica(0)),
    ];
    let restart = |replica: &mut Service| {
        replica.kill();
        *replica = Service::ingest_at(&target, &settings);
    };
    for (when, fault) in plan {
        tokio::time::sleep_until(when.into()).await;
        println!(
            "faults: {:5.1} s  {fault}",
            publishing.elapsed().as_secs_f64()
        );
        match fault {
            Fault::KillReplica(index) => restart(&mut replicas[index]),
            Fault::CrashRabbit { kill_replica } => {
                rabbit.crash();
                restart(&mut replicas[kill_replica]);
                tokio::time::sleep(Duration::from_secs(1)).await;
                rabbit.start_again().await;
            }
            Fault::CrashPostgres { kill_replica } => {
                postgres.crash();
                // Long enough for the replicas to hold batches they cannot write.
                tokio::time::sleep(Duration::from_secs(1)).await;
                restart(&mut replicas[kill_replica]);
                tokio::time::sleep(Duration::from_secs(1)).await;
                postgres.start_again();
            }
        }
    }
    for Reaped(loadgen) in &mut loadgens {
        // Publishing lasts about 34 s; a producer still running long after is stuck.
        let until = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(status) = loadgen.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= until {
                let _ = loadgen.kill();
                let _ = loadgen.wait();
                panic!("metrics-loadgen was still publishing 180 s after it started");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut stderr = String::new();
        if let Some(mut err) = loadgen.stderr.take() {
            std::io::Read::read_to_string(&mut err, &mut stderr).unwrap();
        }
        assert!(status.success(), "metrics-loadgen failed: {stderr}");
    }
    let published = publishing.elapsed();

    converge(
        &database_url,
        &expected,
        &rabbit.url(),
        QUEUE,
        Duration::from_secs(180),
    )
    .await;
    let converged = publishing.elapsed() - published;

    for replica in &mut replicas {
        replica.stop(Duration::from_secs(30));
    }
    assert_eq!(
        ready_in_queue(&rabbit.url(), QUEUE).await,
        0,
        "messages left over"
    );
    assert_eq!(rows(&database_url).unwrap(), expected);

    let letters = drain_dead_letters(&rabbit.url(), QUEUE).await;
    let copies = check_dead_letters(&letters, &poison);

    let runs: i64 = expected
        .iter()
        .map(|day| day.runs.iter().sum::<i64>())
        .sum();
    let sessions: i64 = expected
        .iter()
        .map(|day| day.sessions.iter().sum::<i64>())
        .sum();
    println!(
        "faults: {events_sent} events published ({distinct} distinct, {} poison messages), \
         {} days, {runs} runs, {sessions} sessions",
        poison.len(),
        expected.len(),
    );
    // Every step of the plan kills one replica; two of them also crash a server.
    let crashes = |server: fn(&Fault) -> bool| plan.iter().filter(|(_, f)| server(f)).count();
    let broker = crashes(|f| matches!(f, Fault::CrashRabbit { .. }));
    let database = crashes(|f| matches!(f, Fault::CrashPostgres { .. }));
    println!(
        "faults: injected {} faults (SIGKILL of an ingest replica x{}, crash of PostgreSQL x{database}, \
         crash of RabbitMQ x{broker}), 2 ingest replicas at all times but while one restarts",
        plan.len() + broker + database,
        plan.len(),
    );
    println!(
        "faults: set-up {:.1} s, publishing {:.1} s, converged {:.1} s after the last publish; \
         rows equal the reference; dead-letter queue: {} poison messages, {copies} extra copies",
        set_up.as_secs_f64(),
        published.as_secs_f64(),
        converged.as_secs_f64(),
        poison.len()
    );
}
