//! `GET /metrics?user_id=U` (`agentos-compat.md`): one user's rows, the no-user rows, the
//! parameter's limit, and the cache keeping users apart.

use metrics_aggregator::DateRange;
use metrics_events::SessionType::{Agent, Team};
use metrics_test_support::TestDatabase;
use serde_json::{Value, json};

use crate::support::{TestApp, by, error, run, session, settings, usage, write};

fn events(db: &TestDatabase) {
    write(
        db,
        "agno_metrics",
        &[
            session("s1", "2025-07-30T10:00:00Z", Agent, Some("alice")),
            by(
                run(
                    "r1",
                    "s1",
                    "2025-07-30T10:05:00Z",
                    Agent,
                    Some(("gpt-4o", "OpenAI")),
                    usage(100, "0.5"),
                ),
                Some("alice"),
            ),
            by(
                run(
                    "r2",
                    "s1",
                    "2025-07-31T09:00:00Z",
                    Agent,
                    None,
                    usage(1, "0.25"),
                ),
                Some("bob"),
            ),
            session("s2", "2025-07-31T10:00:00Z", Team, None),
            by(
                run(
                    "r3",
                    "s2",
                    "2025-07-31T11:00:00Z",
                    Team,
                    Some(("claude", "Anthropic")),
                    usage(10, "0.125"),
                ),
                None,
            ),
        ],
    );
}

/// The stored per-user rows of `user`, to learn their ids and stamps.
fn stored_user(db: &TestDatabase, user: &str) -> metrics_aggregator::MetricsPage {
    metrics_aggregator::read_user(
        &mut db.connect(),
        "agno_metrics",
        user,
        DateRange::default(),
    )
    .unwrap()
}

fn tokens(base: i64, cost: f64) -> Value {
    json!({
        "input_tokens": base, "output_tokens": base + 1, "total_tokens": base + 2,
        "audio_tokens": base + 3, "input_audio_tokens": base + 4, "output_audio_tokens": base + 5,
        "cached_tokens": base + 6, "cache_write_tokens": base + 7, "reasoning_tokens": base + 8,
        "audio_total_tokens": base + 3, "audio_input_tokens": base + 4,
        "audio_output_tokens": base + 5, "cache_read_tokens": base + 6, "cost": cost
    })
}

#[actix_web::test]
async fn a_user_id_returns_that_users_rows_only() {
    let db = TestDatabase::migrated();
    events(&db);
    let app = TestApp::spawn(settings(db.url()));
    let all = crate::support::stored(&db, "agno_metrics");
    let alice = stored_user(&db, "alice");
    let updated_at = all
        .updated_at
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    let reply = app.get("/metrics?user_id=alice", &[]).await;
    let row = &alice.rows[0];
    assert_eq!(
        reply.status_json(),
        (
            200,
            json!({
                "metrics": [{
                    "id": row.id.to_string(),
                    "agent_runs_count": 1, "agent_sessions_count": 1,
                    "team_runs_count": 0, "team_sessions_count": 0,
                    "workflow_runs_count": 0, "workflow_sessions_count": 0,
                    "users_count": 1,
                    "token_metrics": tokens(100, 0.5),
                    "model_metrics": [{"model_id": "gpt-4o", "model_provider": "OpenAI", "count": 1}],
                    "date": "2025-07-30T00:00:00Z",
                    "created_at": row.created_at.timestamp(),
                    "updated_at": row.updated_at.timestamp(),
                }],
                "updated_at": updated_at,
            })
        )
    );
    assert_ne!(
        row.id, all.rows[0].id,
        "a per-user row has an id of its own"
    );

    // Bob ran on the 31st in alice's session: his run, not the session.
    let bob = app.get("/metrics?user_id=bob", &[]).await.json();
    let counts: Vec<_> = bob["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["date"].clone(),
                r["agent_runs_count"].clone(),
                r["agent_sessions_count"].clone(),
                r["users_count"].clone(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [(json!("2025-07-31T00:00:00Z"), json!(1), json!(0), json!(1))]
    );

    // An empty user_id: the events without a user.
    let none = app.get("/metrics?user_id=", &[]).await.json();
    let rows = none["metrics"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            &rows[0]["team_runs_count"],
            &rows[0]["team_sessions_count"],
            &rows[0]["users_count"]
        ),
        (&json!(1), &json!(1), &json!(0))
    );

    // A user without events: no rows, the table's latest change still given.
    assert_eq!(
        app.get("/metrics?user_id=nobody&starting_date=2025-07-01", &[])
            .await
            .status_json(),
        (200, json!({"metrics": [], "updated_at": updated_at}))
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_user_id_longer_than_256_characters_is_a_validation_error() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let long = "u".repeat(257);
    assert_eq!(
        app.get(&format!("/metrics?user_id={long}"), &[])
            .await
            .status_json(),
        (
            422,
            error(
                "Invalid user_id: at most 256 characters",
                "VALIDATION_ERROR"
            )
        )
    );
    let limit = "u".repeat(256);
    assert_eq!(
        app.get(&format!("/metrics?user_id={limit}"), &[])
            .await
            .status
            .as_u16(),
        200
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_user_id_with_a_nul_character_reads_no_rows() {
    let db = TestDatabase::migrated();
    events(&db);
    let app = TestApp::spawn(settings(db.url()));
    let stamp = stored_user(&db, "alice").updated_at.unwrap();
    for user in ["%00", "alice%00", "%00alice"] {
        let (status, body) = app
            .get(&format!("/metrics?user_id={user}"), &[])
            .await
            .status_json();
        assert_eq!(status, 200, "{user}: {body}");
        assert_eq!(body["metrics"], json!([]), "{user}");
        assert_eq!(
            body["updated_at"],
            json!(stamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            "{user}"
        );
    }
    app.stop().await;
}

#[actix_web::test]
async fn cached_pages_of_users_stay_apart_and_follow_new_events() {
    let db = TestDatabase::migrated();
    events(&db);
    let app = TestApp::spawn(settings(db.url()));
    let runs = |body: Value| -> Vec<Value> {
        body["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["agent_runs_count"].clone())
            .collect()
    };
    for _ in 0..2 {
        assert_eq!(
            runs(app.get("/metrics?user_id=alice", &[]).await.json()),
            [json!(1)]
        );
        assert_eq!(
            runs(app.get("/metrics?user_id=bob", &[]).await.json()),
            [json!(1)]
        );
        assert_eq!(
            runs(app.get("/metrics", &[]).await.json()),
            [json!(1), json!(1)]
        );
    }
    write(
        &db,
        "agno_metrics",
        &[by(
            run(
                "r9",
                "s1",
                "2025-07-30T12:00:00Z",
                Agent,
                None,
                usage(0, "0"),
            ),
            Some("alice"),
        )],
    );
    assert_eq!(
        runs(app.get("/metrics?user_id=alice", &[]).await.json()),
        [json!(2)]
    );
    assert_eq!(
        runs(app.get("/metrics?user_id=bob", &[]).await.json()),
        [json!(1)]
    );
    app.stop().await;
}
