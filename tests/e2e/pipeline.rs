//! Events published over AMQP show up in `GET /metrics`, exactly once, and both services stop
//! cleanly on SIGTERM.

use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics_events::{Event, EventKind, RunCompleted, SessionCreated, SessionType, Tokens, Usage};
use metrics_publisher::{EVENT_CONTENT_TYPE, OutgoingMessage, Publisher, PublisherOptions};
use metrics_test_support::{TestBroker, TestDatabase, eventually};
use serde_json::{Value, json};

use metrics_test_support::process::{KEY, Service};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn created(id: &str, time: &str, session: &str, session_type: SessionType, user: &str) -> Event {
    Event {
        source: "agno://e2e".to_owned(),
        id: id.to_owned(),
        time: at(time),
        kind: EventKind::SessionCreated(SessionCreated {
            session_id: session.to_owned(),
            session_type,
            user_id: Some(user.to_owned()),
        }),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one line per event reads best in the scenario"
)]
fn run(
    id: &str,
    time: &str,
    session: &str,
    session_type: SessionType,
    user: &str,
    model: Option<(&str, &str)>,
    tokens: (i64, i64),
    cost: &str,
) -> Event {
    Event {
        source: "agno://e2e".to_owned(),
        id: id.to_owned(),
        time: at(time),
        kind: EventKind::RunCompleted(RunCompleted {
            run_id: format!("run-{id}"),
            session_id: session.to_owned(),
            session_type,
            user_id: Some(user.to_owned()),
            parent_run_id: None,
            model: model.map(|(m, _)| m.to_owned()),
            model_provider: model.map(|(_, p)| p.to_owned()),
            usage: Usage {
                tokens: Tokens {
                    input_tokens: tokens.0,
                    output_tokens: tokens.1,
                    total_tokens: tokens.0 + tokens.1,
                    cached_tokens: 3,
                    ..Tokens::default()
                },
                cost: cost.parse().unwrap(),
            },
        }),
    }
}

/// Replaces what differs between runs (ids and timestamps) after checking its format.
fn normalize(mut body: Value) -> Value {
    let updated_at = body["updated_at"].as_str().unwrap().to_owned();
    assert!(
        DateTime::parse_from_rfc3339(&updated_at).is_ok() && updated_at.ends_with('Z'),
        "updated_at {updated_at}"
    );
    body["updated_at"] = json!("<rfc3339>");
    for row in body["metrics"].as_array_mut().unwrap() {
        assert!(uuid::Uuid::parse_str(row["id"].as_str().unwrap()).is_ok());
        assert!(row["created_at"].as_i64().unwrap() > 1_700_000_000);
        assert!(row["updated_at"].as_i64().unwrap() >= row["created_at"].as_i64().unwrap());
        row["id"] = json!("<uuid>");
        row["created_at"] = json!("<unix>");
        row["updated_at"] = json!("<unix>");
    }
    body
}

fn token_metrics(input: i64, output: i64, cached: i64, cost: f64) -> Value {
    json!({
        "input_tokens": input, "output_tokens": output, "total_tokens": input + output,
        "audio_tokens": 0, "input_audio_tokens": 0, "output_audio_tokens": 0,
        "cached_tokens": cached, "cache_write_tokens": 0, "reasoning_tokens": 0,
        "audio_total_tokens": 0, "audio_input_tokens": 0, "audio_output_tokens": 0,
        "cache_read_tokens": cached, "cost": cost,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_show_up_in_get_metrics_once_and_both_services_stop_on_sigterm() {
    let db = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut ingest = Service::ingest(&db, &broker);
    let mut query = Service::query(&db);
    ingest.ready().await;
    query.ready().await;

    use SessionType::{Agent, Team, Workflow};
    let gpt = Some(("gpt-4o", "OpenAI"));
    let claude = Some(("claude-sonnet-4", "Anthropic"));
    let events = [
        created("c1", "2025-07-31T10:00:00Z", "s1", Agent, "alice"),
        run(
            "r1",
            "2025-07-31T10:01:00Z",
            "s1",
            Agent,
            "alice",
            gpt,
            (100, 40),
            "0.25",
        ),
        run(
            "r2",
            "2025-07-31T10:02:00+02:00",
            "s1",
            Agent,
            "alice",
            gpt,
            (50, 10),
            "0.5",
        ),
        created("c2", "2025-07-31T12:00:00Z", "s2", Team, "bob"),
        run(
            "r3",
            "2025-07-31T12:01:00Z",
            "s2",
            Team,
            "bob",
            claude,
            (7, 3),
            "0.125",
        ),
        run(
            "r4",
            "2025-08-01T09:00:00Z",
            "s3",
            Workflow,
            "alice",
            None,
            (1, 1),
            "0",
        ),
    ];
    let publisher = Publisher::connect(
        broker.url(),
        PublisherOptions {
            exchange: broker.exchange().to_owned(),
            ..PublisherOptions::default()
        },
    )
    .await
    .unwrap();
    // Single events, then a batch that repeats two of them, an event of a type this version does
    // not read, and a poison message.
    let mut messages: Vec<OutgoingMessage> = events
        .iter()
        .map(|event| OutgoingMessage::event(event).unwrap())
        .collect();
    messages.push(OutgoingMessage::batch([&events[1], &events[0]]).unwrap());
    messages.push(OutgoingMessage::raw(
        "agentos.tool.called",
        EVENT_CONTENT_TYPE,
        json!({"specversion": "1.0", "id": "t1", "source": "agno://e2e",
               "type": "agentos.tool.called", "time": "2025-07-31T10:00:00Z", "data": {}})
        .to_string(),
    ));
    messages.push(OutgoingMessage::raw(
        "agentos.run.completed",
        EVENT_CONTENT_TYPE,
        "{\"specversion\": \"1.0\", \"id\": \"bad\"",
    ));
    publisher.publish_all(&messages).await.unwrap();
    publisher.close().await;

    let expected = json!({
        "metrics": [
            {
                "id": "<uuid>",
                "agent_runs_count": 2, "agent_sessions_count": 1,
                "team_runs_count": 1, "team_sessions_count": 1,
                "workflow_runs_count": 0, "workflow_sessions_count": 0,
                "users_count": 2,
                "token_metrics": token_metrics(157, 53, 9, 0.875),
                "model_metrics": [
                    {"model_id": "gpt-4o", "model_provider": "OpenAI", "count": 2},
                    {"model_id": "claude-sonnet-4", "model_provider": "Anthropic", "count": 1},
                ],
                "date": "2025-07-31T00:00:00Z",
                "created_at": "<unix>", "updated_at": "<unix>",
            },
            {
                "id": "<uuid>",
                "agent_runs_count": 0, "agent_sessions_count": 0,
                "team_runs_count": 0, "team_sessions_count": 0,
                "workflow_runs_count": 1, "workflow_sessions_count": 1,
                "users_count": 1,
                "token_metrics": token_metrics(1, 1, 3, 0.0),
                "model_metrics": [],
                "date": "2025-08-01T00:00:00Z",
                "created_at": "<unix>", "updated_at": "<unix>",
            },
        ],
        "updated_at": "<rfc3339>",
    });

    let client = reqwest::Client::new();
    let api = format!("http://{}/metrics", query.http.unwrap());
    let range = format!("{api}?starting_date=2025-07-31&ending_date=2025-08-01");
    let body = eventually(Duration::from_secs(30), || async {
        let response = client
            .get(&range)
            .bearer_auth(KEY)
            .send()
            .await
            .map_err(|err| err.to_string())?;
        let body: Value = response.json().await.map_err(|err| err.to_string())?;
        if body["metrics"].as_array().map(Vec::len) == Some(2) {
            let normalized = normalize(body);
            if normalized == expected {
                return Ok(normalized);
            }
            return Err(format!("not yet: {normalized}"));
        }
        Err(format!("not yet: {body}"))
    })
    .await;
    assert_eq!(body, expected);

    // The API requires the key.
    let response = client.get(&api).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"detail": "Authorization header required", "error_code": "UNAUTHENTICATED"})
    );

    // The poison message went to the dead-letter queue with its reason.
    let dead = eventually(Duration::from_secs(10), || async {
        broker
            .get(&broker.dead_letter_queue())
            .await
            .ok_or("no dead letter yet")
    })
    .await;
    assert_eq!(dead.body, b"{\"specversion\": \"1.0\", \"id\": \"bad\"");
    assert!(
        dead.header("x-metrics-error")
            .is_some_and(|reason| reason.starts_with("message body is not valid JSON")),
        "{:?}",
        dead.header("x-metrics-error")
    );

    ingest.stop(Duration::from_secs(20));
    query.stop(Duration::from_secs(20));
    broker.cleanup().await;
}
