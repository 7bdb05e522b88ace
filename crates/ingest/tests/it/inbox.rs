//! The inbox (`inbox.enabled`): deliveries acknowledged once their events are staged, the events
//! applied later by the applier; each counted once, a refused one dead-lettered as received.

use diesel::RunQueryDsl;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use metrics_ingest::consumer::ERROR_HEADER;
use metrics_ingest::telemetry::Outcome;
use metrics_test_support::{TestBroker, TestDatabase, eventually};
use serde_json::json;

use crate::support::{
    DEADLINE, DaySummary, Running, body, day, dead_letters, declare, run_completed, settings,
    wait_for_rows, workload,
};

/// Rows left in the inbox, staged or refused.
async fn inbox_rows(database: &TestDatabase) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let mut conn = database.connect();
    tokio::task::spawn_blocking(move || {
        diesel::sql_query("SELECT count(*) AS count FROM inbox")
            .get_result::<Count>(&mut conn)
            .unwrap()
            .count
    })
    .await
    .unwrap()
}

/// A run of 2^63 - 1 input tokens on day 5: a second one on that day overflows its sum.
fn overflowing(id: &str, run_id: &str) -> serde_json::Value {
    let mut event = run_completed(id, run_id, "s-over", "zed", day(5), i64::MAX);
    event["data"]["metrics"]["output_tokens"] = json!(0);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_events_count_once_and_a_refused_one_is_dead_lettered_as_received() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    settings.inbox.enabled = true;
    settings.inbox.direct_events = 100;
    settings.inbox.apply_events = 50;
    settings.inbox.poll_ms = 50;
    // Batches of one delivery are full as soon as they start: every batch is staged.
    settings.batch.size = 1;
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;

    let (bodies, mut expected) = workload(300);
    // Every tenth message twice: counted once.
    for body in bodies.iter().chain(bodies.iter().step_by(10)) {
        broker.publish("agentos.run.completed", body).await;
    }
    broker
        .publish("agentos.run.completed", &body(&overflowing("o1", "ro1")))
        .await;
    // The second overflowing run is refused once its delivery is long acknowledged; the other
    // event of its batch counts.
    let refused = body(&overflowing("o2", "ro2"));
    // Not even an output token: the day's total is already 2^63 - 1.
    let mut no_tokens = run_completed("o3", "ro3", "s-over", "zed", day(5), 0);
    no_tokens["data"]["metrics"]["output_tokens"] = json!(0);
    let batch = format!(
        "[{},{}]",
        String::from_utf8(refused.clone()).unwrap(),
        String::from_utf8(body(&no_tokens)).unwrap()
    );
    let mut headers = FieldTable::default();
    headers.insert("x-trace".into(), AMQPValue::LongString("t-1".into()));
    broker
        .publish_with(
            "agentos.batch",
            batch.as_bytes(),
            BasicProperties::default()
                .with_message_id("m-1".into())
                .with_headers(headers),
        )
        .await;
    expected.push(DaySummary {
        date: day(5),
        agent_runs: 2,
        agent_sessions: 1,
        users: 1,
        input_tokens: i64::MAX,
        output_tokens: 0,
        model_runs: 2,
    });

    wait_for_rows(&database, &expected).await;
    // Its dead letter carries its element's bytes, its delivery's properties and the reason.
    let dead_queue = broker.dead_letter_queue();
    eventually(DEADLINE, || async {
        match broker.ready_count(&dead_queue).await {
            1 => Ok(()),
            ready => Err(ready),
        }
    })
    .await;
    let letter = broker.get(&dead_queue).await.unwrap();
    assert_eq!(letter.body, refused);
    assert_eq!(letter.routing_key, "agentos.batch");
    assert_eq!(
        letter.header(ERROR_HEADER).unwrap(),
        format!(
            "event `o2`: could not be counted: writing the batch: a daily token sum of {} \
             overflows a 64-bit count",
            day(5)
        )
    );
    assert_eq!(letter.header("x-trace").as_deref(), Some("t-1"));
    assert_eq!(
        letter
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some("m-1")
    );
    assert_eq!(
        letter
            .properties
            .content_type()
            .as_ref()
            .map(|kind| kind.as_str()),
        Some("application/cloudevents+json")
    );
    eventually(DEADLINE, || async {
        match inbox_rows(&database).await {
            0 => Ok(()),
            left => Err(left),
        }
    })
    .await;
    // A batch of `inbox.direct_events` events or more is applied at once, never staged.
    let large: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            run_completed(
                &format!("big{i}"),
                &format!("rbig{i}"),
                "s-big",
                "yan",
                day(6),
                1,
            )
        })
        .collect();
    broker
        .publish("agentos.batch", &body(&serde_json::Value::Array(large)))
        .await;
    expected.push(DaySummary {
        date: day(6),
        agent_runs: 100,
        agent_sessions: 1,
        users: 1,
        input_tokens: 100,
        output_tokens: 100,
        model_runs: 100,
    });
    wait_for_rows(&database, &expected).await;
    let metrics = &service.metrics;
    assert_eq!(metrics.counted(Outcome::Staged), 300 + 30 + 3);
    assert_eq!(metrics.counted(Outcome::Applied), 300 + 2 + 100);
    assert_eq!(metrics.counted(Outcome::Duplicate), 30);
    assert_eq!(metrics.counted(Outcome::DeadLettered), 1);
    service.stop().await;
    broker.cleanup().await;
}

/// Staged only while the deliveries come faster than batches are written: a batch that fills up
/// is staged, one whose wait passed first is applied at once (one transaction, not two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batches_are_staged_and_the_others_applied_at_once() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    settings.inbox.enabled = true;
    settings.inbox.poll_ms = 50;
    settings.amqp.prefetch = 24;
    settings.batch.size = 12;
    // Long enough for a queued backlog to fill every batch, whatever the machine's load.
    settings.batch.wait_ms = 2000;
    declare(&broker, &settings).await;
    let (bodies, expected) = workload(27);
    // A backlog before the start: two batches of 12, both full.
    broker
        .publish_all(
            "agentos.run.completed",
            bodies[..24].iter().map(Vec::as_slice),
        )
        .await;
    let service = Running::start(settings).await;
    let metrics = &service.metrics;
    eventually(DEADLINE, || async {
        match metrics.counted(Outcome::Applied) {
            24 => Ok(()),
            applied => Err(applied),
        }
    })
    .await;
    assert_eq!(metrics.counted(Outcome::Staged), 24);
    // Three more: their batch's wait passes before it fills.
    broker
        .publish_all(
            "agentos.run.completed",
            bodies[24..].iter().map(Vec::as_slice),
        )
        .await;
    wait_for_rows(&database, &expected).await;
    assert_eq!(metrics.counted(Outcome::Staged), 24);
    assert_eq!(metrics.counted(Outcome::Applied), 27);
    assert_eq!(metrics.counted(Outcome::Duplicate), 0);
    assert_eq!(inbox_rows(&database).await, 0);
    service.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_stopped_process_left_in_the_inbox_is_applied_even_with_the_inbox_off() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    settings.inbox.enabled = false;
    declare(&broker, &settings).await;
    let (bodies, expected) = workload(40);
    {
        let mut conn = database.connect();
        let table = metrics_aggregator::register_table(
            &mut conn,
            &metrics_aggregator::TableName::default(),
        )
        .unwrap();
        let properties = serde_json::to_vec(&BasicProperties::default()).unwrap();
        let staged: Vec<metrics_aggregator::Staged<'_>> = bodies
            .iter()
            .map(|body| metrics_aggregator::Staged {
                event: body,
                element: false,
                routing_key: "agentos.run.completed",
                properties: &properties,
            })
            .collect();
        metrics_aggregator::stage(&mut conn, table, &staged).unwrap();
        // And one refused for good before the process stopped, its dead letter not yet out.
        diesel::sql_query(
            "INSERT INTO inbox (table_id, event, element, routing_key, properties, refused) \
             VALUES ($1, 'left', false, 'agentos.run.completed', '\\x7b7d', 'refused earlier')",
        )
        .bind::<diesel::sql_types::Integer, _>(table.get())
        .execute(&mut conn)
        .unwrap();
    }

    let service = Running::start(settings).await;
    wait_for_rows(&database, &expected).await;
    assert_eq!(
        dead_letters(&broker, 1).await,
        vec![("refused earlier".to_owned(), b"left".to_vec())]
    );
    eventually(DEADLINE, || async {
        match inbox_rows(&database).await {
            0 => Ok(()),
            left => Err(left),
        }
    })
    .await;
    assert_eq!(service.metrics.counted(Outcome::Applied), 40);
    service.stop().await;
    broker.cleanup().await;
}
