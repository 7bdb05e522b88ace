//! Valid traffic: single and batch messages become exact rows; repeats count once.

use metrics_ingest::telemetry::Outcome;
use metrics_test_support::{TestBroker, TestDatabase, eventually};
use serde_json::json;

use crate::support::{
    DEADLINE, DaySummary, Running, body, day, declare, run_completed, session_created, settings,
    wait_for_rows,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_batch_messages_become_exact_rows() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let settings = settings(&database, &broker);
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;

    broker
        .publish(
            "agentos.session.created",
            &body(&session_created("e1", "s1", "alice", day(0))),
        )
        .await;
    broker
        .publish(
            "agentos.run.completed",
            &body(&run_completed("e2", "r1", "s1", "alice", day(0), 10)),
        )
        .await;
    broker
        .publish(
            "agentos.run.completed",
            &body(&run_completed("e3", "r2", "s2", "bob", day(1), 5)),
        )
        .await;
    let batch = json!([
        run_completed("e4", "r3", "s1", "alice", day(0), 7),
        run_completed("e5", "r4", "s3", "carol", day(0), 1),
        session_created("e6", "s4", "dave", day(1)),
        run_completed("e7", "r5", "s4", "dave", day(1), 100),
    ]);
    broker.publish("agentos.batch", &body(&batch)).await;

    wait_for_rows(
        &database,
        &[
            DaySummary {
                date: day(0),
                agent_runs: 3,
                agent_sessions: 2,
                users: 2,
                input_tokens: 18,
                output_tokens: 3,
                model_runs: 3,
            },
            DaySummary {
                date: day(1),
                agent_runs: 2,
                agent_sessions: 2,
                users: 2,
                input_tokens: 105,
                output_tokens: 2,
                model_runs: 2,
            },
        ],
    )
    .await;
    eventually(DEADLINE, || async {
        let applied = service.metrics.counted(Outcome::Applied);
        if applied == 7 { Ok(()) } else { Err(applied) }
    })
    .await;
    assert_eq!(service.metrics.counted(Outcome::DeadLettered), 0);
    service.stop().await;
    assert_eq!(broker.ready_count(broker.queue()).await, 0);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_and_resent_runs_count_once() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let settings = settings(&database, &broker);
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;

    let run = body(&run_completed("e1", "r1", "s1", "alice", day(0), 10));
    // The same event delivered three times, and the same run re-sent under a new event id.
    broker.publish("agentos.run.completed", &run).await;
    broker.publish("agentos.run.completed", &run).await;
    broker
        .publish(
            "agentos.batch",
            &body(&json!([run_completed(
                "e1",
                "r1",
                "s1",
                "alice",
                day(0),
                10
            )])),
        )
        .await;
    broker
        .publish(
            "agentos.run.completed",
            &body(&run_completed("e2", "r1", "s1", "alice", day(0), 10)),
        )
        .await;
    // An event of a type this version does not read is acknowledged and ignored.
    broker
        .publish(
            "agentos.tool.called",
            &body(&json!({
                "specversion": "1.0", "id": "e3", "source": "agno://ingest-tests",
                "type": "agentos.tool.called", "time": "2025-03-01T10:00:00Z", "data": {}
            })),
        )
        .await;

    eventually(DEADLINE, || async {
        let seen = (
            service.metrics.counted(Outcome::Applied),
            service.metrics.counted(Outcome::Duplicate),
            service.metrics.counted(Outcome::Ignored),
        );
        if seen == (1, 3, 1) { Ok(()) } else { Err(seen) }
    })
    .await;
    wait_for_rows(
        &database,
        &[DaySummary {
            date: day(0),
            agent_runs: 1,
            agent_sessions: 1,
            users: 1,
            input_tokens: 10,
            output_tokens: 1,
            model_runs: 1,
        }],
    )
    .await;
    service.stop().await;
    assert_eq!(broker.ready_count(broker.queue()).await, 0);
    broker.cleanup().await;
}
