//! Peak resident memory of metrics-ingest, with its default settings, draining a pre-filled
//! queue of each of three message shapes.
//!
//! ```text
//! cargo bench -p metrics-ingest --bench memory
//! ```
//!
//! The traffic is `metrics-publisher`'s generator (`metrics_publisher::traffic`): single-event
//! messages, batch messages of 100 events, and single events padded (an ignored `data.note`) to
//! 1 MiB, the largest body accepted (`limits.max_body_bytes`). For each shape the queue is filled
//! first, then the `metrics-ingest` binary (built with this profile, which is `release` plus line
//! tables) drains it into a fresh database with only the connection settings overridden; its
//! peak resident memory is the kernel's high-water mark, `VmHWM` in `/proc/<pid>/status`, read
//! once every run is counted. The binary runs with `MALLOC_MMAP_THRESHOLD_=131072`, as the
//! container image sets it. RabbitMQ and PostgreSQL come from `TEST_AMQP_URL` and
//! `TEST_DATABASE_URL` (loopback by default); `MEMORY_SESSIONS` scales the traffic.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark binary reports on stdout and fails loudly"
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use metrics_ingest::Settings;
use metrics_ingest::topology::Topology;
use metrics_publisher::OutgoingMessage;
use metrics_publisher::traffic::{TrafficOptions, generate};
use metrics_test_support::{TestBroker, TestDatabase, process};
use serde_json::{Value, json};

/// The longest a drain may take before the benchmark gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// A message shape: its name and how many events each message carries (0: one event padded to
/// the largest body).
const SHAPES: [(&str, usize); 3] = [
    ("single events", 1),
    ("batches of 100 events", 100),
    ("1 MiB single events", 0),
];

/// `message` (one event) padded with an ignored `data.note` to exactly `size` bytes.
fn padded(message: &OutgoingMessage, size: usize) -> Vec<u8> {
    let mut event: Value = serde_json::from_slice(&message.body).unwrap();
    event["data"]["note"] = json!("");
    let base = serde_json::to_vec(&event).unwrap().len();
    event["data"]["note"] = json!("x".repeat(size - base));
    let body = serde_json::to_vec(&event).unwrap();
    assert_eq!(body.len(), size);
    body
}

/// The binary, with its defaults and the `amqp` variables, drains its queue into `database` until `runs` are
/// counted; returns the time and the peak RSS in KiB.
fn drain(amqp: &[(&str, String); 3], database: &TestDatabase, runs: i64) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_metrics-ingest"))
        .env("METRICS_DATABASE__URL", database.url())
        .envs(amqp.iter().map(|(key, value)| (key, value)))
        .env("METRICS_ADMIN__LISTEN", "127.0.0.1:0")
        .env("METRICS_LOG__LEVEL", "warn")
        // As the container image sets it (deploy/Dockerfile, docs/ingest.md "Memory").
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while database.runs_counted("agno_metrics") < runs {
        assert!(
            started.elapsed() < DRAIN_LIMIT,
            "metrics-ingest did not drain in time"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    let peak = process::peak_rss_kib(child.id()).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (elapsed, peak)
}

#[tokio::main]
async fn main() {
    let sessions: usize = std::env::var("MEMORY_SESSIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10_000);
    let defaults = Settings::load(None).unwrap();
    println!(
        "metrics-ingest peak RSS, default settings (batch.memory_bytes {}, prefetch {}), {sessions} sessions of traffic",
        defaults.batch.memory_bytes,
        metrics_ingest::consumer::prefetch(&defaults),
    );
    println!();
    println!("| messages | events | bytes | drain time | peak RSS |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, per_message) in SHAPES {
        // The 1 MiB shape moves a megabyte per event: a 200th of the sessions (about 200
        // messages, eight times the prefetch window) is plenty.
        let traffic = generate(&TrafficOptions {
            sessions: if per_message == 0 {
                sessions / 200
            } else {
                sessions
            },
            batch: per_message.max(1),
            ..TrafficOptions::default()
        });
        let runs = i64::try_from(traffic.summary.runs.iter().sum::<u64>()).unwrap();
        let bodies: Vec<Vec<u8>> = traffic
            .messages
            .iter()
            .map(|message| {
                if per_message == 0 {
                    padded(message, defaults.limits.max_body_bytes)
                } else {
                    message.body.clone()
                }
            })
            .collect();
        let bytes: usize = bodies.iter().map(Vec::len).sum();

        let broker = TestBroker::new().await;
        let mut amqp_settings = defaults.amqp.clone();
        amqp_settings.exchange = broker.exchange().to_owned();
        amqp_settings.queue = broker.queue().to_owned();
        Topology::from_settings(&amqp_settings)
            .declare(broker.channel())
            .await
            .unwrap();
        for window in bodies.chunks(200) {
            broker
                .publish_all("agentos.bench", window.iter().map(Vec::as_slice))
                .await;
        }

        let database = TestDatabase::migrated();
        let amqp = [
            ("METRICS_AMQP__URL", broker.url().to_owned()),
            ("METRICS_AMQP__EXCHANGE", broker.exchange().to_owned()),
            ("METRICS_AMQP__QUEUE", broker.queue().to_owned()),
        ];
        let (elapsed, peak_kib) =
            tokio::task::spawn_blocking(move || drain(&amqp, &database, runs))
                .await
                .unwrap();
        println!(
            "| {} × {name} | {} | {:.1} MiB | {:.1} s | {:.1} MiB |",
            bodies.len(),
            traffic.summary.events_sent,
            bytes as f64 / 1_048_576.0,
            elapsed.as_secs_f64(),
            peak_kib as f64 / 1024.0,
        );
        broker.cleanup().await;
    }
}
