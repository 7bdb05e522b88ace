//! The limits of `events.md` at their default values, through the real service: one past each
//! limit is dead-lettered with the reason in its header, the limit itself is counted, and a
//! hostile value cannot make the reason (an AMQP header) as large as the body.

use metrics_events::{Limits, decode_message};
use metrics_ingest::consumer::error_chain;
use metrics_ingest::telemetry::Outcome;
use metrics_test_support::{TestBroker, TestDatabase, eventually};
use serde_json::{Value, json};

use crate::support::{
    DEADLINE, DaySummary, Running, body, day, dead_letters, declare, run_completed, settings,
    wait_for_rows,
};

/// `event` with an ignored `data.note` that pads its body to exactly `size` bytes.
fn padded(mut event: Value, size: usize) -> Vec<u8> {
    event["data"]["note"] = json!("");
    let base = body(&event).len();
    event["data"]["note"] = json!("x".repeat(size - base));
    let padded = body(&event);
    assert_eq!(padded.len(), size);
    padded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_past_each_default_limit_is_dead_lettered_with_its_reason() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let settings = settings(&database, &broker);
    let limits = settings.limits();
    assert_eq!(limits, Limits::default());
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;

    let event =
        |n: usize| run_completed(&format!("e{n}"), &format!("r{n}"), "s1", "alice", day(0), 1);
    let batch = |len: usize| body(&json!((0..len).map(event).collect::<Vec<_>>()));
    let mut huge_session_type = event(5000);
    huge_session_type["id"] = json!("huge");
    huge_session_type["data"]["session_type"] = json!("x".repeat(500_000));
    let nested = "[".repeat(100_000) + &"]".repeat(100_000);
    let not_json = error_chain(&decode_message(nested.as_bytes(), &limits).unwrap_err());

    let counted = [batch(1000), padded(event(3000), limits.max_body_bytes)];
    let mut dead = vec![
        (
            "batch of 1001 events is over the limit of 1000 events".to_owned(),
            batch(1001),
        ),
        (
            "message body of 1048577 bytes is over the limit of 1048576 bytes".to_owned(),
            padded(event(4000), limits.max_body_bytes + 1),
        ),
        (
            format!(
                "event `huge`: field `data.session_type`: unknown variant `{}...",
                "x".repeat(512 - "unknown variant `".len())
            ),
            body(&huge_session_type),
        ),
        (not_json, nested.into_bytes()),
    ];
    for message in counted.iter().chain(dead.iter().map(|(_, body)| body)) {
        broker.publish("agentos.batch", message).await;
    }

    let mut received = dead_letters(&broker, dead.len()).await;
    dead.sort();
    received.sort();
    let reasons = |letters: &[(String, Vec<u8>)]| {
        letters
            .iter()
            .map(|(reason, body)| (reason.clone(), body.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(reasons(&received), reasons(&dead));
    assert!(
        received == dead,
        "dead letters keep their bodies byte for byte"
    );

    // The batch of exactly 1,000 events and the body of exactly 1 MiB count.
    wait_for_rows(
        &database,
        &[DaySummary {
            date: day(0),
            agent_runs: 1001,
            agent_sessions: 1,
            users: 1,
            input_tokens: 1001,
            output_tokens: 1001,
            model_runs: 1001,
        }],
    )
    .await;
    eventually(DEADLINE, || async {
        let seen = (
            service.metrics.counted(Outcome::Applied),
            service.metrics.counted(Outcome::DeadLettered),
        );
        if seen == (1001, 4) { Ok(()) } else { Err(seen) }
    })
    .await;
    service.stop().await;
    assert_eq!(broker.ready_count(broker.queue()).await, 0);
    broker.cleanup().await;
}
