//! The byte budget (`batch.memory_bytes`): whatever the prefetch count asked for, the bodies the
//! service holds at once never pass the budget, and every message still counts.

use metrics_ingest::consumer::prefetch;
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
async fn held_bodies_never_pass_the_byte_budget_whatever_the_prefetch() {
    const MAX_BODY: usize = 64 * 1024;
    const BUDGET: usize = 4 * MAX_BODY;
    const MESSAGES: usize = 40;
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    // A prefetch count and batch that would take every message at once (40 bodies of 60 KB, ten
    // times the budget), and a batch wait long enough for all of them to arrive.
    settings.amqp.prefetch = 1000;
    settings.batch.size = 500;
    settings.batch.wait_ms = 300;
    settings.limits.max_body_bytes = MAX_BODY;
    settings.batch.memory_bytes = BUDGET;
    assert_eq!(prefetch(&settings), 4);
    declare(&broker, &settings).await;

    let bodies: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|n| {
            let event = run_completed(&format!("e{n}"), &format!("r{n}"), "s1", "alice", day(0), 1);
            padded(event, 60_000)
        })
        .collect();
    // Over the body limit: dead-lettered as it arrives, intact.
    let oversized = padded(
        run_completed("big", "rbig", "s1", "alice", day(0), 1),
        MAX_BODY + 1,
    );
    broker
        .publish_all(
            "agentos.run",
            bodies
                .iter()
                .take(20)
                .chain(std::iter::once(&oversized))
                .chain(bodies.iter().skip(20))
                .map(Vec::as_slice),
        )
        .await;

    let service = Running::start(settings).await;
    wait_for_rows(
        &database,
        &[DaySummary {
            date: day(0),
            agent_runs: MESSAGES as i64,
            agent_sessions: 1,
            users: 1,
            input_tokens: MESSAGES as i64,
            output_tokens: MESSAGES as i64,
            model_runs: MESSAGES as i64,
        }],
    )
    .await;
    let dead = dead_letters(&broker, 1).await;
    assert_eq!(
        dead,
        vec![(
            format!(
                "message body of {} bytes is over the limit of {MAX_BODY} bytes",
                MAX_BODY + 1
            ),
            oversized
        )]
    );
    eventually(DEADLINE, || async {
        let seen = (
            service.metrics.counted(Outcome::Applied),
            service.metrics.counted(Outcome::DeadLettered),
            service.metrics.held_bytes(),
        );
        if seen == (MESSAGES as u64, 1, 0) {
            Ok(())
        } else {
            Err(seen)
        }
    })
    .await;

    // Several bodies were held at once, never more than the budget.
    let most = usize::try_from(service.metrics.held_bytes_max()).unwrap();
    assert!(most >= 2 * 60_000, "{most}");
    assert!(most <= BUDGET, "{most} bytes held at once, over {BUDGET}");
    service.stop().await;
    assert_eq!(broker.ready_count(broker.queue()).await, 0);
    broker.cleanup().await;
}
