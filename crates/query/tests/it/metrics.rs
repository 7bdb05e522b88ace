//! `GET /metrics` 200 responses: shapes, order, ranges, selection of database and table.

use chrono::SecondsFormat;
use metrics_events::SessionType::{Agent, Team};
use metrics_test_support::TestDatabase;
use serde_json::{Value, json};

use crate::support::{TestApp, database, run, session, settings, stored, usage, write};

fn two_days(db: &TestDatabase, table: &str) {
    write(
        db,
        table,
        &[
            session("s1", "2025-07-30T10:00:00Z", Agent, Some("user-1")),
            run(
                "r1",
                "s1",
                "2025-07-30T10:05:00Z",
                Agent,
                Some(("gpt-4o", "OpenAI")),
                usage(100, "0.5"),
            ),
            session("s2", "2025-07-31T23:59:59.999Z", Team, Some("user-2")),
            run(
                "r2",
                "s2",
                "2025-07-31T00:00:00Z",
                Team,
                Some(("gpt-4o", "OpenAI")),
                usage(10, "0.25"),
            ),
            run(
                "r3",
                "s2",
                "2025-07-31T08:00:00Z",
                Team,
                Some(("claude", "Anthropic")),
                usage(20, "0.125"),
            ),
            run(
                "r4",
                "s2",
                "2025-07-31T09:00:00Z",
                Team,
                Some(("gpt-4o", "OpenAI")),
                usage(1, "0"),
            ),
        ],
    );
}

/// The expected body of `two_days`, with the ids and stamps the aggregator chose.
fn two_days_body(db: &TestDatabase, table: &str, days: &[usize]) -> Value {
    let page = stored(db, table);
    let rows = [
        json!({
            "id": page.rows[0].id.to_string(),
            "agent_runs_count": 1, "agent_sessions_count": 1,
            "team_runs_count": 0, "team_sessions_count": 0,
            "workflow_runs_count": 0, "workflow_sessions_count": 0,
            "users_count": 1,
            "token_metrics": {
                "input_tokens": 100, "output_tokens": 101, "total_tokens": 102,
                "audio_tokens": 103, "input_audio_tokens": 104, "output_audio_tokens": 105,
                "cached_tokens": 106, "cache_write_tokens": 107, "reasoning_tokens": 108,
                "audio_total_tokens": 103, "audio_input_tokens": 104, "audio_output_tokens": 105,
                "cache_read_tokens": 106, "cost": 0.5
            },
            "model_metrics": [{"model_id": "gpt-4o", "model_provider": "OpenAI", "count": 1}],
            "date": "2025-07-30T00:00:00Z",
            "created_at": page.rows[0].created_at.timestamp(),
            "updated_at": page.rows[0].updated_at.timestamp(),
        }),
        json!({
            "id": page.rows[1].id.to_string(),
            "agent_runs_count": 0, "agent_sessions_count": 0,
            "team_runs_count": 3, "team_sessions_count": 1,
            "workflow_runs_count": 0, "workflow_sessions_count": 0,
            "users_count": 2,
            "token_metrics": {
                "input_tokens": 31, "output_tokens": 34, "total_tokens": 37,
                "audio_tokens": 40, "input_audio_tokens": 43, "output_audio_tokens": 46,
                "cached_tokens": 49, "cache_write_tokens": 52, "reasoning_tokens": 55,
                "audio_total_tokens": 40, "audio_input_tokens": 43, "audio_output_tokens": 46,
                "cache_read_tokens": 49, "cost": 0.375
            },
            "model_metrics": [
                {"model_id": "gpt-4o", "model_provider": "OpenAI", "count": 2},
                {"model_id": "claude", "model_provider": "Anthropic", "count": 1}
            ],
            "date": "2025-07-31T00:00:00Z",
            "created_at": page.rows[1].created_at.timestamp(),
            "updated_at": page.rows[1].updated_at.timestamp(),
        }),
    ];
    let updated_at = page
        .updated_at
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({
        "metrics": days.iter().map(|day| rows[*day].clone()).collect::<Vec<_>>(),
        "updated_at": updated_at,
    })
}

#[actix_web::test]
async fn rows_come_ascending_by_date_with_every_contract_field() {
    let db = TestDatabase::migrated();
    two_days(&db, "agno_metrics");
    let app = TestApp::spawn(settings(db.url()));

    let reply = app.get("/metrics", &[]).await;

    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.status_json(),
        (200, two_days_body(&db, "agno_metrics", &[0, 1]))
    );
    // The dates and the table-wide stamp are strings of exactly these shapes.
    let body = reply.json();
    let updated_at = body["updated_at"].as_str().unwrap();
    assert_eq!(
        updated_at.len(),
        "2025-07-31T20:29:01Z".len(),
        "{updated_at}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn the_range_is_inclusive_and_updated_at_stays_table_wide() {
    let db = TestDatabase::migrated();
    two_days(&db, "agno_metrics");
    let app = TestApp::spawn(settings(db.url()));

    for (query, days) in [
        ("?starting_date=2025-07-30&ending_date=2025-07-30", vec![0]),
        ("?starting_date=2025-07-31&ending_date=2025-07-31", vec![1]),
        ("?starting_date=2025-07-31", vec![1]),
        ("?ending_date=2025-07-30", vec![0]),
        (
            "?starting_date=2025-07-30T00:00:00Z&ending_date=2025-07-31",
            vec![0, 1],
        ),
        ("?starting_date=2025-08-01", vec![]),
    ] {
        let reply = app.get(&format!("/metrics{query}"), &[]).await;
        assert_eq!(
            reply.status_json(),
            (200, two_days_body(&db, "agno_metrics", &days)),
            "{query}"
        );
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_trailing_slash_and_unknown_parameters_change_nothing() {
    let db = TestDatabase::migrated();
    two_days(&db, "agno_metrics");
    let app = TestApp::spawn(settings(db.url()));

    let expected = (200, two_days_body(&db, "agno_metrics", &[0, 1]));
    assert_eq!(app.get("/metrics/", &[]).await.status_json(), expected);
    assert_eq!(
        app.get("/metrics?limit=3&foo=bar", &[]).await.status_json(),
        expected
    );
    app.stop().await;
}

#[actix_web::test]
async fn an_empty_table_has_no_rows_and_a_null_updated_at() {
    let db = TestDatabase::migrated();
    // Registered but never written, and never registered: both read as empty.
    write(&db, "agno_metrics", &[]);
    let mut settings = settings(db.url());
    settings.databases[0].tables = vec!["agno_metrics".parse().unwrap(), "other".parse().unwrap()];
    let app = TestApp::spawn(settings);

    for path in ["/metrics", "/metrics?table=other"] {
        let reply = app.get(path, &[]).await;
        assert_eq!(
            reply.status_json(),
            (200, json!({"metrics": [], "updated_at": null})),
            "{path}"
        );
    }
    app.stop().await;
}

#[actix_web::test]
async fn table_and_db_id_select_among_the_configured_ones() {
    let db = TestDatabase::migrated();
    let other_db = TestDatabase::migrated();
    two_days(&db, "staging");
    two_days(&other_db, "agno_metrics");
    write(
        &db,
        "agno_metrics",
        &[session("s9", "2025-07-30T10:00:00Z", Agent, None)],
    );
    let mut settings = settings(db.url());
    settings.databases[0].tables =
        vec!["agno_metrics".parse().unwrap(), "staging".parse().unwrap()];
    settings
        .databases
        .push(database("eu", other_db.url(), &["agno_metrics"]));
    let app = TestApp::spawn(settings);

    let staging = two_days_body(&db, "staging", &[0, 1]);
    assert_eq!(
        app.get("/metrics?table=staging", &[]).await.status_json(),
        (200, staging.clone())
    );
    assert_eq!(
        app.get("/metrics?db_id=default&table=staging", &[])
            .await
            .status_json(),
        (200, staging)
    );
    let eu = two_days_body(&other_db, "agno_metrics", &[0, 1]);
    assert_eq!(
        app.get("/metrics?db_id=eu", &[]).await.status_json(),
        (200, eu)
    );
    let default = app.get("/metrics", &[]).await.json();
    assert_eq!(default["metrics"].as_array().unwrap().len(), 1);
    assert_eq!(default["metrics"][0]["agent_sessions_count"], 1);
    app.stop().await;
}

#[actix_web::test]
async fn a_year_of_rows_is_served_by_range() {
    let db = TestDatabase::migrated();
    let start = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let events: Vec<_> = (0..430)
        .map(|day| {
            let date = start + chrono::Days::new(day);
            run(
                &format!("r{day}"),
                &format!("s{day}"),
                &format!("{date}T12:00:00Z"),
                Agent,
                Some(("gpt-4o", "OpenAI")),
                usage(i64::try_from(day).unwrap(), "0.001"),
            )
        })
        .collect();
    write(&db, "agno_metrics", &events);
    let app = TestApp::spawn(settings(db.url()));

    let reply = app
        .get(
            "/metrics?starting_date=2024-03-01&ending_date=2025-02-28",
            &[],
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200);
    let body = reply.json();
    let dates: Vec<&str> = body["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["date"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..365)
        .map(|day| {
            let date =
                chrono::NaiveDate::from_ymd_opt(2024, 3, 1).unwrap() + chrono::Days::new(day);
            format!("{date}T00:00:00Z")
        })
        .collect();
    assert_eq!(dates, expected);
    // Day 60 of the data is 2024-03-01: its counts start at 60.
    assert_eq!(body["metrics"][0]["token_metrics"]["input_tokens"], 60);
    assert_eq!(body["metrics"][364]["token_metrics"]["input_tokens"], 424);
    app.stop().await;
}

#[actix_web::test]
async fn a_write_is_visible_to_the_next_request_despite_the_cache() {
    let db = TestDatabase::migrated();
    two_days(&db, "agno_metrics");
    let mut settings = settings(db.url());
    settings.cache.max_age = std::time::Duration::from_secs(3600);
    let app = TestApp::spawn(settings);
    let before = two_days_body(&db, "agno_metrics", &[0, 1]);
    assert_eq!(
        app.get("/metrics", &[]).await.status_json(),
        (200, before.clone())
    );
    assert_eq!(app.get("/metrics", &[]).await.status_json(), (200, before));

    write(
        &db,
        "agno_metrics",
        &[session("s7", "2025-07-31T12:00:00Z", Agent, Some("user-7"))],
    );

    let after = app.get("/metrics", &[]).await.json();
    assert_eq!(after["metrics"][1]["agent_sessions_count"], 1);
    assert_eq!(after["metrics"][1]["users_count"], 3);
    assert_eq!(
        after["updated_at"],
        json!(
            stored(&db, "agno_metrics")
                .updated_at
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    );
    app.stop().await;
}

#[actix_web::test]
async fn concurrent_requests_share_stamp_reads_and_all_get_the_rows() {
    let db = TestDatabase::migrated();
    two_days(&db, "agno_metrics");
    let app = TestApp::spawn(settings(db.url()));
    let expected = (200, two_days_body(&db, "agno_metrics", &[0, 1]));

    let replies = futures_util::future::join_all((0..24).map(|n| {
        let path = if n % 2 == 0 {
            "/metrics"
        } else {
            "/metrics?ending_date=2025-07-31"
        };
        app.get(path, &[])
    }))
    .await;

    for reply in replies {
        assert_eq!(reply.status_json(), expected);
    }
    app.stop().await;
}
