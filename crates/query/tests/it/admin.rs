//! The admin listener: probes, Prometheus text, the healthcheck client, and draining.

use std::time::Duration;

use metrics_query::admin::healthcheck;
use metrics_test_support::TestDatabase;
use serde_json::json;

use metrics_events::SessionType::Agent;

use crate::support::{TestApp, session, settings, write};

#[actix_web::test]
async fn probes_report_live_and_ready() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    assert_eq!(
        app.admin_get("/livez").await.status_json(),
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        app.admin_get("/readyz").await.status_json(),
        (200, json!({"status": "ready"}))
    );
    app.stop().await;
}

#[actix_web::test]
async fn readiness_fails_while_the_database_is_down_but_liveness_holds() {
    let mut settings = settings("postgres://postgres@127.0.0.1:1/nowhere");
    settings.http.request_timeout = Duration::from_millis(300);
    let app = TestApp::spawn(settings);

    assert_eq!(app.admin_get("/livez").await.status.as_u16(), 200);
    assert_eq!(
        app.admin_get("/readyz").await.status_json(),
        (
            503,
            json!({"status": "unavailable", "databases": ["default"]})
        )
    );
    app.stop().await;
}

#[actix_web::test]
async fn prometheus_counts_requests_by_route_and_status_and_shows_the_pool() {
    let db = TestDatabase::migrated();
    let mut settings = settings(db.url());
    // The second request hits the cache however slow the machine is.
    settings.cache.max_age = Duration::from_secs(3600);
    let app = TestApp::spawn(settings);
    write(
        &db,
        "agno_metrics",
        &[session("s1", "2025-07-30T10:00:00Z", Agent, None)],
    );
    app.get("/metrics", &[]).await;
    app.get("/metrics", &[]).await;
    app.get("/metrics/?starting_date=bad", &[]).await;
    app.get("/nowhere", &[]).await;

    let reply = app.admin_get("/metrics").await;
    assert_eq!(reply.status.as_u16(), 200);
    let text = String::from_utf8(reply.body).unwrap();
    for line in [
        r#"metrics_query_requests_total{route="/metrics",status="200"} 2"#,
        r#"metrics_query_requests_total{route="/metrics",status="422"} 1"#,
        r#"metrics_query_requests_total{route="unmatched",status="404"} 1"#,
        r#"metrics_query_request_duration_seconds_count{route="/metrics",status="200"} 2"#,
        r#"metrics_query_cache_lookups_total{outcome="miss"} 1"#,
        r#"metrics_query_cache_lookups_total{outcome="hit"} 1"#,
        r#"metrics_query_pool_max_connections{database="default"} 2"#,
        r#"metrics_query_pool_connections{database="default",state="in_use"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }
    app.stop().await;
}

#[actix_web::test]
async fn healthcheck_succeeds_when_ready_and_fails_otherwise() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let port: u16 = app.admin.rsplit(':').next().unwrap().parse().unwrap();
    let address = format!("0.0.0.0:{port}").parse().unwrap();

    let check = actix_web::web::block(move || healthcheck(address, Duration::from_secs(5)));
    check.await.unwrap().unwrap();
    app.stop().await;

    let check = actix_web::web::block(move || healthcheck(address, Duration::from_secs(5)));
    assert!(check.await.unwrap().is_err());
}

#[actix_web::test]
async fn stopping_drains_and_returns() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let api = app.api.clone();
    let client = app.client.clone();
    assert_eq!(app.get("/metrics", &[]).await.status.as_u16(), 200);

    app.stop().await;
    assert!(client.get(format!("{api}/metrics")).send().await.is_err());
}
