//! Hostile input through the real binaries: valid JSON that is plausible in production must
//! never stop the pipeline, lose a body or change a key. Every hostile message is dead-lettered
//! with its original bytes and its reason, the valid events published after it are counted,
//! sums stay exact, and nothing is left unacknowledged.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use metrics_events::{Limits, decode_message};
use metrics_test_support::process::{KEY, Service};
use metrics_test_support::{TestBroker, TestDatabase, eventually};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);

/// Valid events are counted on this day.
const VALID_DAY: &str = "2025-03-01";
/// Two runs whose input tokens cannot be summed.
const OVERFLOW_DAY: &str = "2025-03-02";
/// Two runs whose cost sum is past the range of a double.
const COST_DAY: &str = "2025-03-03";

fn run(id: &str, day: &str, input_tokens: u64, cost: f64) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "agno://hostile",
        "type": "agentos.run.completed",
        "time": format!("{day}T12:00:00Z"),
        "data": {
            "run_id": format!("run-{id}"),
            "session_id": format!("session-{id}"),
            "session_type": "agent",
            "user_id": "alice",
            "parent_run_id": "parent",
            "model": "gpt-4o",
            "model_provider": "OpenAI",
            "metrics": {"input_tokens": input_tokens, "output_tokens": 1, "cost": cost}
        }
    })
}

fn session(id: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "agno://hostile",
        "type": "agentos.session.created",
        "time": format!("{VALID_DAY}T08:00:00Z"),
        "data": {"session_id": format!("session-{id}"), "session_type": "agent",
                 "user_id": "alice", "agent_id": "agent"}
    })
}

/// `event` with `\u0000` inserted into the string at `path`.
fn with_nul(mut event: Value, path: &[&str]) -> Value {
    let mut target = &mut event;
    for key in path {
        target = &mut target[*key];
    }
    let text = target.as_str().unwrap_or("x").to_owned();
    *target = json!(format!("{text}\u{0}"));
    event
}

fn body(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// The dead letters the decoder's refusals of `message` must produce: (body, reason).
fn refused_at_decode(message: &[u8]) -> Vec<(Vec<u8>, String)> {
    match decode_message(message, &Limits::default()) {
        Err(err) => vec![(message.to_vec(), err.to_string())],
        Ok(decoded) => decoded
            .events
            .iter()
            .enumerate()
            .filter_map(|(index, event)| {
                let err = event.as_ref().err()?;
                Some((
                    decoded.element(message, index).unwrap().to_vec(),
                    err.to_string(),
                ))
            })
            .collect(),
    }
}

async fn get(client: &reqwest::Client, api: &str, day: &str, key: &str) -> (u16, String) {
    let response = client
        .get(format!("{api}?starting_date={day}&ending_date={day}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_dead_lettered_intact_and_everything_after_them_counts() {
    let db = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut ingest = Service::ingest(&db, &broker);
    let mut query = Service::query(&db);
    ingest.ready().await;
    query.ready().await;

    // A NUL in each string field, as single events.
    let mut hostile: Vec<Vec<u8>> = [
        &["id"][..],
        &["source"],
        &["type"],
        &["time"],
        &["data", "run_id"],
        &["data", "session_id"],
        &["data", "session_type"],
        &["data", "user_id"],
        &["data", "parent_run_id"],
        &["data", "model"],
        &["data", "model_provider"],
        &["data", "metrics", "note"],
    ]
    .iter()
    .enumerate()
    .map(|(n, path)| body(&with_nul(run(&format!("nul-{n}"), VALID_DAY, 1, 0.5), path)))
    .collect();
    for path in [
        &["data", "session_id"][..],
        &["data", "user_id"],
        &["data", "agent_id"],
    ] {
        hostile.push(body(&with_nul(session(&format!("nul-{}", path[1])), path)));
    }
    // In a batch: the element alone, as the producer wrote it (spacing and escapes kept).
    let nul_element = r#"{"specversion":"1.0", "id":"nul-batch","source":"agno://hostile","type":"agentos.run.completed","time":"2025-03-01T12:00:00Z","data":{"run_id":"r\u0000","session_id":"s","session_type":"agent"}}"#;
    hostile.push(
        format!(
            "[{}, {nul_element} ,{}]",
            run("batch-1", VALID_DAY, 1, 0.5),
            run("batch-2", VALID_DAY, 1, 0.5)
        )
        .into_bytes(),
    );
    // Larger than the body limit.
    let mut oversized = run("oversized", VALID_DAY, 1, 0.5);
    oversized["data"]["note"] = json!("x".repeat(Limits::default().max_body_bytes));
    hostile.push(body(&oversized));

    let mut expected: Vec<(Vec<u8>, String)> =
        hostile.iter().flat_map(|m| refused_at_decode(m)).collect();
    assert_eq!(expected.len(), 17, "{expected:?}");

    // Sums: the second run past 2^63 - 1 is refused by the aggregator; huge costs are summed.
    let overflowing = |id: &str| {
        let mut event = run(id, OVERFLOW_DAY, i64::MAX as u64, 0.0);
        event["data"]["metrics"]["output_tokens"] = json!(0);
        body(&event)
    };
    let first_overflow = overflowing("overflow-1");
    let second_overflow = overflowing("overflow-2");
    // A run of no tokens on that day still counts.
    let mut no_tokens = run("overflow-ok", OVERFLOW_DAY, 0, 0.0);
    no_tokens["data"]["metrics"]["output_tokens"] = json!(0);
    let overflow_batch = [second_overflow.clone(), body(&no_tokens)];
    hostile.push(first_overflow);
    hostile.push(
        format!(
            "[{}]",
            overflow_batch
                .iter()
                .map(|b| String::from_utf8(b.clone()).unwrap())
                .collect::<Vec<_>>()
                .join(",")
        )
        .into_bytes(),
    );
    expected.push((
        second_overflow,
        format!(
            "event `overflow-2`: could not be counted: writing the batch: a daily token sum of \
             {OVERFLOW_DAY} overflows a 64-bit count"
        ),
    ));
    hostile.push(body(&run("cost-1", COST_DAY, 1, 1.7e308)));
    hostile.push(body(&run("cost-2", COST_DAY, 1, 1.7e308)));

    for message in &hostile {
        broker.publish("agentos.run.completed", message).await;
    }
    // Huge headers: the dead letter must still fit in one frame (131,072 bytes by default).
    let huge_header_body = body(&with_nul(run("huge-headers", VALID_DAY, 1, 0.5), &["id"]));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-pad".into(),
        AMQPValue::LongString(LongString::from("p".repeat(129_000))),
    );
    headers.insert("x-trace".into(), AMQPValue::LongString("t-1".into()));
    broker
        .publish_with(
            "agentos.run.completed",
            &huge_header_body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await;
    expected.extend(refused_at_decode(&huge_header_body));

    // Fifty valid runs after all of it.
    for n in 0..50 {
        broker
            .publish(
                "agentos.run.completed",
                &body(&run(&format!("valid-{n}"), VALID_DAY, 1, 0.5)),
            )
            .await;
    }

    // Every hostile message in the dead-letter queue: its original bytes and its reason.
    let dead_queue = broker.dead_letter_queue();
    eventually(DEADLINE, || async {
        let ready = broker.ready_count(&dead_queue).await as usize;
        if ready >= expected.len() {
            Ok(())
        } else {
            Err(ready)
        }
    })
    .await;
    let mut received = Vec::new();
    while let Some(message) = broker.get(&dead_queue).await {
        if message.body == huge_header_body {
            assert_eq!(message.header("x-trace").as_deref(), Some("t-1"));
            assert_eq!(message.header("x-pad"), None);
            let dropped = message
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-metrics-dropped-headers").cloned());
            assert_eq!(dropped, Some(AMQPValue::LongLongInt(1)));
        }
        let reason = message.header("x-metrics-error").unwrap();
        received.push((message.body, reason));
    }
    expected.sort();
    received.sort();
    let shown = |letters: &[(Vec<u8>, String)]| -> Vec<(String, String)> {
        letters
            .iter()
            .map(|(body, reason)| {
                let body = String::from_utf8_lossy(body);
                (body.chars().take(300).collect(), reason.clone())
            })
            .collect()
    };
    assert_eq!(shown(&received), shown(&expected));
    assert_eq!(received, expected);

    // The valid events count: 50 runs and the batch's two valid elements, and the sums stay
    // exact, cost included.
    let client = reqwest::Client::new();
    let api = format!("http://{}/metrics", query.http.unwrap());
    let valid = eventually(DEADLINE, || async {
        let (status, text) = get(&client, &api, VALID_DAY, KEY).await;
        let body: Value = serde_json::from_str(&text).map_err(|err| err.to_string())?;
        let row = &body["metrics"][0];
        if status == 200 && row["agent_runs_count"] == json!(52) {
            Ok(row.clone())
        } else {
            Err(text)
        }
    })
    .await;
    assert_eq!(valid["agent_sessions_count"], json!(52));
    assert_eq!(valid["users_count"], json!(1));
    assert_eq!(valid["token_metrics"]["input_tokens"], json!(52));
    assert_eq!(valid["token_metrics"]["cost"], json!(26.0));

    let (_, text) = get(&client, &api, OVERFLOW_DAY, KEY).await;
    let overflow: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(overflow["metrics"][0]["agent_runs_count"], json!(2));
    assert_eq!(
        overflow["metrics"][0]["token_metrics"]["input_tokens"],
        json!(i64::MAX)
    );

    // 3.4e308 is past the largest double: a double would make it `null` or infinity.
    let (status, text) = get(&client, &api, COST_DAY, KEY).await;
    assert_eq!(status, 200);
    assert!(text.contains(r#""agent_runs_count":2,"#), "{text}");
    assert!(text.contains(r#""cost":3.4e308}"#), "{text}");

    // The pipeline is still ready, and after a clean stop nothing went back to the queue: every
    // delivery was acknowledged.
    ingest.ready_within(Duration::from_secs(5)).await;
    ingest.stop(Duration::from_secs(20));
    assert_eq!(broker.ready_count(broker.queue()).await, 0);
    query.stop(Duration::from_secs(20));
    broker.cleanup().await;
}

/// Configuration never coerces strings: a key that looks like a number is the key as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_key_that_looks_like_a_number_is_kept_as_written() {
    let db = TestDatabase::migrated();
    let client = reqwest::Client::new();
    for (key, coerced) in [("007", "7"), ("1e3", "1000")] {
        let mut query = Service::query_with(&db, &[("METRICS_AUTH__SECURITY_KEY", key)]);
        query.ready().await;
        let api = format!("http://{}/metrics", query.http.unwrap());
        assert_eq!(get(&client, &api, VALID_DAY, key).await.0, 200, "{key}");
        assert_eq!(get(&client, &api, VALID_DAY, coerced).await.0, 401, "{key}");
        query.stop(Duration::from_secs(20));
    }
}
