//! Freshness: the time from a publisher confirm to the event being visible in `GET /metrics`,
//! at a steady rate, through the real release binaries.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p metrics-e2e --bench freshness -- [events per second] [seconds]
//! ```
//!
//! `METRICS_INBOX__*` variables are passed on to ingest (`metrics_test_support::process`):
//! `METRICS_INBOX__ENABLED=true` measures the inbox (docs/ingest.md).
//!
//! Defaults: 1,000 events per second for 60 seconds. Every event is a run of its own, so the
//! day's `agent_runs_count` is the number of events applied; ingest consumes one queue in
//! order, so event `n` is visible at the first poll that shows at least `n` runs. Polls run
//! every 5 ms, which bounds the error of each figure.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark binary reports on stdout and fails loudly"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use metrics_events::{Event, EventKind, RunCompleted, SessionType, Tokens, Usage};
use metrics_publisher::{OutgoingMessage, Publisher, PublisherOptions};
use metrics_test_support::process::{KEY, Service};
use metrics_test_support::{TestBroker, TestDatabase};
use serde_json::Value;
use tokio::sync::Mutex;

fn event(n: u64) -> Event {
    Event {
        source: "agno://freshness".to_owned(),
        id: format!("e{n}"),
        time: Utc.with_ymd_and_hms(2025, 7, 31, 12, 0, 0).unwrap(),
        kind: EventKind::RunCompleted(RunCompleted {
            run_id: format!("r{n}"),
            session_id: format!("s{}", n % 1000),
            session_type: SessionType::Agent,
            user_id: Some(format!("u{}", n % 100)),
            parent_run_id: None,
            model: Some("gpt-4o".to_owned()),
            model_provider: Some("OpenAI".to_owned()),
            usage: Usage {
                tokens: Tokens {
                    input_tokens: 100,
                    output_tokens: 20,
                    total_tokens: 120,
                    ..Tokens::default()
                },
                ..Usage::default()
            },
        }),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let rate = args.first().copied().unwrap_or(1000);
    let seconds = args.get(1).copied().unwrap_or(60);
    let total = rate * seconds;

    let db = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut ingest = Service::ingest(&db, &broker);
    let mut query = Service::query(&db);
    ingest.ready().await;
    query.ready().await;
    let publisher = Publisher::connect(
        broker.url(),
        PublisherOptions {
            exchange: broker.exchange().to_owned(),
            window: 64,
            ..PublisherOptions::default()
        },
    )
    .await
    .unwrap();

    // confirmed[n] is when event n's confirm arrived.
    let confirmed = Arc::new(Mutex::new(Vec::<Instant>::with_capacity(total as usize)));
    let publishing = {
        let confirmed = Arc::clone(&confirmed);
        tokio::spawn(async move {
            let started = Instant::now();
            // Slices of 10 ms worth of events, each confirmed before the next is due.
            let slice = (rate / 100).max(1);
            let mut n = 0;
            while n < total {
                let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let end = (n + slice).min(total);
                let messages: Vec<OutgoingMessage> = (n..end)
                    .map(|i| OutgoingMessage::event(&event(i)).unwrap())
                    .collect();
                publisher.publish_all(&messages).await.unwrap();
                let now = Instant::now();
                confirmed.lock().await.extend((n..end).map(|_| now));
                n = end;
            }
            publisher.close().await;
        })
    };

    let client = reqwest::Client::new();
    let url = format!("http://{}/metrics", query.http.unwrap());
    let mut visible_at: Vec<Instant> = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    while (visible_at.len() as u64) < total && Instant::now() < deadline {
        let response = client.get(&url).bearer_auth(KEY).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        let now = Instant::now();
        let runs = body["metrics"][0]["agent_runs_count"].as_u64().unwrap_or(0);
        while (visible_at.len() as u64) < runs {
            visible_at.push(now);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publishing.await.unwrap();
    assert_eq!(
        visible_at.len() as u64,
        total,
        "not every event became visible"
    );

    let confirmed = confirmed.lock().await;
    let mut freshness: Vec<Duration> = confirmed
        .iter()
        .zip(&visible_at)
        .map(|(confirm, visible)| visible.saturating_duration_since(*confirm))
        .collect();
    freshness.sort_unstable();
    println!(
        "freshness at {rate} events/s for {seconds} s ({total} events): p50 {:.1} ms, p99 {:.1} \
         ms, max {:.1} ms",
        percentile(&freshness, 0.50).as_secs_f64() * 1000.0,
        percentile(&freshness, 0.99).as_secs_f64() * 1000.0,
        freshness.last().unwrap().as_secs_f64() * 1000.0,
    );
    ingest.stop(Duration::from_secs(30));
    query.stop(Duration::from_secs(30));
    broker.cleanup().await;
}
