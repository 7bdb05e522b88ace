//! `POST /metrics/refresh` and `GET /metrics/refresh/status` (`agentos-compat.md`).

use std::time::Duration;

use diesel::prelude::*;
use metrics_aggregator::schema::daily_metrics;
use metrics_events::SessionType::Agent;
use metrics_test_support::{TestDatabase, eventually};
use serde_json::{Value, json};

use crate::support::{TestApp, by, error, run, settings, usage, write};

fn events(db: &TestDatabase) {
    write(
        db,
        "agno_metrics",
        &[
            by(
                run(
                    "r1",
                    "s1",
                    "2025-07-30T10:00:00Z",
                    Agent,
                    None,
                    usage(1, "0.5"),
                ),
                Some("alice"),
            ),
            by(
                run(
                    "r2",
                    "s2",
                    "2025-07-31T10:00:00Z",
                    Agent,
                    None,
                    usage(2, "0.25"),
                ),
                None,
            ),
        ],
    );
}

fn runs(rows: &Value) -> Vec<(Value, Value)> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| (r["date"].clone(), r["agent_runs_count"].clone()))
        .collect()
}

#[actix_web::test]
async fn a_refresh_recounts_the_rows_and_returns_them() {
    let db = TestDatabase::migrated();
    events(&db);
    diesel::update(daily_metrics::table)
        .set(daily_metrics::agent_runs_count.eq(40))
        .execute(&mut db.connect())
        .unwrap();
    let app = TestApp::spawn(settings(db.url()));
    assert_eq!(
        runs(&app.get("/metrics", &[]).await.json()["metrics"]),
        [
            (json!("2025-07-30T00:00:00Z"), json!(40)),
            (json!("2025-07-31T00:00:00Z"), json!(40))
        ]
    );

    let reply = app.post("/metrics/refresh", &[]).await;
    assert_eq!(reply.status.as_u16(), 200);
    let rows = reply.json();
    assert_eq!(
        runs(&rows),
        [
            (json!("2025-07-30T00:00:00Z"), json!(1)),
            (json!("2025-07-31T00:00:00Z"), json!(1))
        ]
    );
    // The rows are GET /metrics's, and its cache does not serve the drifted page again.
    assert_eq!(app.get("/metrics", &[]).await.json()["metrics"], rows);

    let mine = app
        .post("/metrics/refresh?user_id=alice&background=false", &[])
        .await;
    assert_eq!(
        (mine.status.as_u16(), runs(&mine.json())),
        (200, vec![(json!("2025-07-30T00:00:00Z"), json!(1))])
    );
    assert_eq!(
        app.get("/metrics?user_id=alice", &[]).await.json()["metrics"],
        mine.json()
    );

    let status = app.get("/metrics/refresh/status", &[]).await.json();
    assert_eq!(
        (&status["status"], &status["error"]),
        (&json!("completed"), &Value::Null)
    );
    for key in ["started_at", "finished_at"] {
        let at = status[key].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok() && at.ends_with('Z'),
            "{key}: {at}"
        );
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_background_refresh_answers_202_and_completes() {
    let db = TestDatabase::migrated();
    events(&db);
    let app = TestApp::spawn(settings(db.url()));
    assert_eq!(
        app.get("/metrics/refresh/status", &[]).await.status_json(),
        (
            200,
            json!({"status": "idle", "started_at": null, "finished_at": null, "error": null})
        )
    );
    assert_eq!(
        app.post("/metrics/refresh?background=true", &[])
            .await
            .status_json(),
        (
            202,
            json!({"status": "started", "message": "Metrics refresh started in background"})
        )
    );
    let status = eventually(Duration::from_secs(20), || async {
        let status = app.get("/metrics/refresh/status", &[]).await.json();
        if status["status"] == "completed" {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert_eq!(status["error"], Value::Null);
    app.stop().await;
}

#[actix_web::test]
async fn a_refresh_while_one_runs_is_already_running() {
    let db = TestDatabase::migrated();
    events(&db);
    let app = TestApp::spawn(settings(db.url()));
    // Another process's refresh of the table holds the lock.
    let mut other = metrics_aggregator::connect_one(db.url()).unwrap();
    assert!(
        metrics_aggregator::start_refresh(&mut other, &"agno_metrics".parse().unwrap())
            .unwrap()
            .is_some()
    );
    let already = json!({
        "status": "already_running",
        "message": "A metrics refresh is already in progress for this database"
    });
    assert_eq!(
        app.post("/metrics/refresh", &[]).await.status_json(),
        (200, already.clone())
    );
    assert_eq!(
        app.post("/metrics/refresh?background=true", &[])
            .await
            .status_json(),
        (202, already)
    );
    let status = app.get("/metrics/refresh/status", &[]).await.json();
    assert_eq!(
        (&status["status"], &status["finished_at"]),
        (&json!("running"), &Value::Null)
    );

    // Its worker dies: the refresh is failed, not running for ever.
    drop(other);
    let status = eventually(Duration::from_secs(10), || async {
        let status = app.get("/metrics/refresh/status", &[]).await.json();
        if status["status"] == "failed" {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert_eq!(status["error"], json!(metrics_aggregator::WORKER_GONE));
    assert!(status["finished_at"].is_string());
    assert_eq!(app.post("/metrics/refresh", &[]).await.status.as_u16(), 200);
    app.stop().await;
}

#[actix_web::test]
async fn refresh_parameters_are_checked() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    for value in ["yes", "1", "True", ""] {
        assert_eq!(
            app.post(&format!("/metrics/refresh?background={value}"), &[])
                .await
                .status_json(),
            (
                422,
                error(
                    "Invalid background: expected true or false",
                    "VALIDATION_ERROR"
                )
            ),
            "{value:?}"
        );
    }
    assert_eq!(
        app.post(
            &format!("/metrics/refresh?user_id={}", "u".repeat(257)),
            &[]
        )
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
    assert_eq!(
        app.post("/metrics/refresh?db_id=nope", &[])
            .await
            .status_json(),
        (404, error("Database with id 'nope' not found", "NOT_FOUND"))
    );
    assert_eq!(
        app.get("/metrics/refresh/status?table=nope", &[])
            .await
            .status_json(),
        (
            404,
            error("Table 'nope' not found in database 'default'", "NOT_FOUND")
        )
    );
    let wrong_method = app.get("/metrics/refresh", &[]).await;
    assert_eq!(wrong_method.status.as_u16(), 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    assert_eq!(
        app.post("/metrics/refresh/status", &[])
            .await
            .status
            .as_u16(),
        405
    );
    // An empty table refreshes to no rows.
    assert_eq!(
        app.post("/metrics/refresh", &[]).await.status_json(),
        (200, json!([]))
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_refresh_for_a_user_id_with_a_nul_character_returns_no_rows() {
    let db = TestDatabase::migrated();
    events(&db);
    let app = TestApp::spawn(settings(db.url()));
    assert_eq!(
        app.post("/metrics/refresh?user_id=alice%00", &[])
            .await
            .status_json(),
        (200, json!([]))
    );
    assert_eq!(
        app.get("/metrics/refresh/status", &[])
            .await
            .status_json()
            .1["status"],
        "completed"
    );
    app.stop().await;
}
