//! Bad input of every kind in `events.md` is dead-lettered with its reason, alone, while the
//! valid traffic around it is counted.

use metrics_events::{Limits, decode_message};
use metrics_ingest::consumer::error_chain;
use metrics_ingest::telemetry::Outcome;
use metrics_test_support::{TestBroker, TestDatabase, eventually};
use serde_json::{Value, json};

use crate::support::{
    DEADLINE, DaySummary, Running, body, day, dead_letters, declare, run_completed, settings,
    wait_for_rows,
};

/// The dead letters a body must produce: (body, `x-metrics-error`), as the contract's decoder
/// words the reasons.
fn expected_dead_letters(message: &[u8], limits: &Limits) -> Vec<(String, String)> {
    match decode_message(message, limits) {
        Err(err) => vec![(
            String::from_utf8_lossy(message).into_owned(),
            error_chain(&err),
        )],
        Ok(decoded) => {
            let elements: Option<Vec<Value>> = decoded
                .is_batch
                .then(|| serde_json::from_slice(message).unwrap());
            decoded
                .events
                .iter()
                .enumerate()
                .filter_map(|(index, event)| {
                    let err = event.as_ref().err()?;
                    let body = match &elements {
                        Some(items) => serde_json::to_string(&items[index]).unwrap(),
                        None => String::from_utf8_lossy(message).into_owned(),
                    };
                    Some((body, err.to_string()))
                })
                .collect()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_is_dead_lettered_with_its_reason() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    settings.limits.max_body_bytes = 4096;
    settings.limits.max_batch_events = 5;
    let limits = settings.limits();
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;

    let valid = |n: usize| {
        run_completed(
            &format!("ok{n}"),
            &format!("run{n}"),
            "s1",
            "alice",
            day(0),
            1,
        )
    };
    let with = |path: &[&str], value: Value| {
        let mut event = run_completed("bad", "bad-run", "s1", "alice", day(0), 1);
        let mut target = &mut event;
        for key in &path[..path.len() - 1] {
            target = &mut target[*key];
        }
        target[path[path.len() - 1]] = value;
        event
    };
    let mut missing_source = valid(100);
    missing_source.as_object_mut().unwrap().remove("source");
    let poison: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"42".to_vec(),
        body(&missing_source),
        body(&with(&["data", "metrics", "input_tokens"], json!("ten"))),
        body(&with(&["data", "metrics", "output_tokens"], json!(-3))),
        body(&with(&["time"], json!("yesterday"))),
        body(&with(&["time"], json!("1999-12-31T23:00:00Z"))),
        body(&with(&["data", "run_id"], json!("r".repeat(300)))),
        body(&with(&["data", "session_id"], json!(""))),
        body(&with(&["data", "session_type"], json!("crew"))),
        body(&with(&["specversion"], json!("0.3"))),
        body(&with(&["data", "note"], json!("x".repeat(5000)))),
        body(&json!((0..6).map(|n| valid(200 + n)).collect::<Vec<_>>())),
        body(&json!([
            valid(300),
            with(&["data", "metrics", "input_tokens"], json!(-1)),
            valid(301),
            json!("not an event"),
        ])),
    ];
    let mut expected: Vec<(String, String)> = poison
        .iter()
        .flat_map(|message| expected_dead_letters(message, &limits))
        .collect();
    assert_eq!(
        expected.len(),
        15,
        "every poison body yields its dead letters: {expected:#?}"
    );

    // Valid traffic interleaved with the poison.
    for (n, message) in poison.iter().enumerate() {
        broker
            .publish("agentos.run.completed", &body(&valid(n)))
            .await;
        broker.publish("agentos.run.completed", message).await;
    }

    let mut received: Vec<(String, String)> = dead_letters(&broker, expected.len())
        .await
        .into_iter()
        .map(|(reason, body)| (String::from_utf8_lossy(&body).into_owned(), reason))
        .collect();
    expected.sort();
    received.sort();
    assert_eq!(received, expected);

    // 14 single valid events, plus 300 and 301 from the mixed batch.
    wait_for_rows(
        &database,
        &[DaySummary {
            date: day(0),
            agent_runs: 16,
            agent_sessions: 1,
            users: 1,
            input_tokens: 16,
            output_tokens: 16,
            model_runs: 16,
        }],
    )
    .await;
    eventually(DEADLINE, || async {
        let seen = (
            service.metrics.counted(Outcome::Applied),
            service.metrics.counted(Outcome::DeadLettered),
        );
        if seen == (16, 15) { Ok(()) } else { Err(seen) }
    })
    .await;
    service.stop().await;
    assert_eq!(broker.ready_count(broker.queue()).await, 0);
    broker.cleanup().await;
}

/// A dead letter no queue takes (its queue was deleted) is returned by the broker (`mandatory`)
/// and is an error: the original stays unacknowledged, the next session declares the topology
/// again, and the dead letter lands, body intact, instead of being dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_dead_letter_is_published_again_once_its_queue_is_back() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let settings = settings(&database, &broker);
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], service.admin_port));
    eventually(DEADLINE, || async {
        match metrics_ingest::admin::probe(admin, "/readyz", DEADLINE).await {
            Ok((200, _)) => Ok(()),
            other => Err(other),
        }
    })
    .await;

    broker
        .channel()
        .queue_delete(
            broker.dead_letter_queue().as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    broker.publish("agentos.run.completed", b"{not json").await;

    eventually(DEADLINE, || async {
        let seen = service.metrics.counted(Outcome::DeadLettered);
        if seen == 1 { Ok(()) } else { Err(seen) }
    })
    .await;
    let received = dead_letters(&broker, 1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].1, b"{not json");
    let text = service.metrics.encode().unwrap();
    assert!(
        !text.contains("metrics_ingest_reconnects_total{dependency=\"amqp\"} 0"),
        "the session was not restarted:\n{text}"
    );
    service.stop().await;
    assert_eq!(broker.ready_count(broker.queue()).await, 0);
    broker.cleanup().await;
}
