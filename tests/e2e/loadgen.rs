//! `metrics-loadgen` fills a running system with a week of messy traffic (redeliveries, re-sent
//! runs, shuffled order, poison messages), and `GET /metrics` adds up to exactly what it says it
//! sent, while the dead-letter queue holds exactly the poison messages.

use std::process::Command;
use std::time::Duration;

use metrics_test_support::{TestBroker, TestDatabase, eventually};
use serde_json::Value;

use metrics_test_support::process::{KEY, Service, binary};

/// Sums the rows of a `GET /metrics` body into the loadgen summary's shape.
fn totals(body: &Value) -> Value {
    let rows = body["metrics"].as_array().cloned().unwrap_or_default();
    let sum = |key: &str| {
        rows.iter()
            .map(|row| row[key].as_i64().unwrap())
            .sum::<i64>()
    };
    let tokens = |key: &str| {
        rows.iter()
            .map(|row| row["token_metrics"][key].as_i64().unwrap())
            .sum::<i64>()
    };
    serde_json::json!({
        "sessions": [sum("agent_sessions_count"), sum("team_sessions_count"), sum("workflow_sessions_count")],
        "runs": [sum("agent_runs_count"), sum("team_runs_count"), sum("workflow_runs_count")],
        "input_tokens": tokens("input_tokens"),
        "output_tokens": tokens("output_tokens"),
        "total_tokens": tokens("total_tokens"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_of_loadgen_traffic_adds_up_in_get_metrics() {
    let db = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut ingest = Service::ingest(&db, &broker);
    let mut query = Service::query(&db);
    ingest.ready().await;
    query.ready().await;

    let output = Command::new(binary("metrics-loadgen"))
        .args([
            "--url",
            broker.url(),
            "--exchange",
            broker.exchange(),
            "--sessions",
            "400",
            "--days",
            "7",
            "--start",
            "2025-07-01",
            "--batch",
            "7",
            "--duplicates",
            "0.1",
            "--resent-runs",
            "0.1",
            "--shuffle",
            "--poison",
            "0.05",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "metrics-loadgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = serde_json::json!({
        "sessions": summary["sessions"],
        "runs": summary["runs"],
        "input_tokens": summary["input_tokens"],
        "output_tokens": summary["output_tokens"],
        "total_tokens": summary["total_tokens"],
    });
    assert!(summary["poison_messages"].as_u64().unwrap() > 0);
    assert!(summary["redeliveries"].as_u64().unwrap() > 0);

    let client = reqwest::Client::new();
    let url = format!(
        "http://{}/metrics?starting_date=2025-06-30&ending_date=2025-07-31",
        query.http.unwrap()
    );
    let body = eventually(Duration::from_secs(60), || async {
        let body: Value = client
            .get(&url)
            .bearer_auth(KEY)
            .send()
            .await
            .map_err(|err| err.to_string())?
            .json()
            .await
            .map_err(|err| err.to_string())?;
        if totals(&body) == expected {
            Ok(body)
        } else {
            Err(format!("{} != {expected}", totals(&body)))
        }
    })
    .await;
    let days = body["metrics"].as_array().unwrap().len();
    assert!((7..=9).contains(&days), "{days} days");

    let dead = eventually(Duration::from_secs(30), || async {
        let count = broker.ready_count(&broker.dead_letter_queue()).await;
        if u64::from(count) == summary["poison_messages"].as_u64().unwrap() {
            Ok(count)
        } else {
            Err(count)
        }
    })
    .await;
    assert_eq!(
        u64::from(dead),
        summary["poison_messages"].as_u64().unwrap()
    );

    ingest.stop(Duration::from_secs(20));
    query.stop(Duration::from_secs(20));
    broker.cleanup().await;
}
