//! Every error of the API in the contract's `{"detail", "error_code"}` shape.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use metrics_events::SessionType::Agent;
use metrics_test_support::proxy::Proxy;
use metrics_test_support::{TestDatabase, eventually};

use crate::support::{TestApp, error, session, settings, write};

const DATE_FORMAT: &str = "expected a date in YYYY-MM-DD format";

#[actix_web::test]
async fn malformed_dates_are_validation_errors_naming_the_parameter() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    for (query, parameter) in [
        ("starting_date=2024-13-01", "starting_date"),
        ("starting_date=20240101", "starting_date"),
        ("starting_date=yesterday", "starting_date"),
        ("starting_date=", "starting_date"),
        ("ending_date=2024-01-01T12:00:00", "ending_date"),
        ("ending_date=2024-02-30", "ending_date"),
        ("starting_date=2024-01-01&ending_date=%00", "ending_date"),
    ] {
        let reply = app.get(&format!("/metrics?{query}"), &[]).await;
        assert_eq!(
            reply.status_json(),
            (
                422,
                error(
                    &format!("Invalid {parameter}: {DATE_FORMAT}"),
                    "VALIDATION_ERROR"
                )
            ),
            "{query}"
        );
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_repeated_parameter_is_a_validation_error() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    let reply = app
        .get(
            "/metrics?starting_date=2024-01-01&starting_date=2024-01-02",
            &[],
        )
        .await;
    assert_eq!(
        reply.status_json(),
        (
            422,
            error(
                "Invalid query string: duplicate field `starting_date`",
                "VALIDATION_ERROR"
            )
        )
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_reversed_range_is_a_bad_request() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    let reply = app
        .get(
            "/metrics?starting_date=2024-02-02&ending_date=2024-02-01",
            &[],
        )
        .await;
    assert_eq!(
        reply.status_json(),
        (
            400,
            error(
                "Invalid date range: starting_date 2024-02-02 is after ending_date 2024-02-01",
                "BAD_REQUEST"
            )
        )
    );
    app.stop().await;
}

#[actix_web::test]
async fn unknown_databases_and_tables_are_not_found() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    let cases = [
        ("/metrics?db_id=nope", "Database with id 'nope' not found"),
        (
            "/metrics?table=nope",
            "Table 'nope' not found in database 'default'",
        ),
        (
            "/metrics?db_id=default&table=",
            "Table '' not found in database 'default'",
        ),
    ];
    for (path, detail) in cases {
        assert_eq!(
            app.get(path, &[]).await.status_json(),
            (404, error(detail, "NOT_FOUND")),
            "{path}"
        );
    }
    app.stop().await;
}

#[actix_web::test]
async fn sql_in_table_or_db_id_is_only_ever_an_unknown_name() {
    let db = TestDatabase::migrated();
    write(
        &db,
        "agno_metrics",
        &[session("s1", "2025-07-30T10:00:00Z", Agent, None)],
    );
    let app = TestApp::spawn(settings(db.url()));

    let table = "agno_metrics; DROP TABLE daily_metrics; --";
    let db_id = "default' OR '1'='1";
    let reply = app
        .get(
            "/metrics?table=agno_metrics%3B%20DROP%20TABLE%20daily_metrics%3B%20--",
            &[],
        )
        .await;
    assert_eq!(
        reply.status_json(),
        (
            404,
            error(
                &format!("Table '{table}' not found in database 'default'"),
                "NOT_FOUND"
            )
        )
    );
    let reply = app
        .get("/metrics?db_id=default%27%20OR%20%271%27%3D%271", &[])
        .await;
    assert_eq!(
        reply.status_json(),
        (
            404,
            error(
                &format!("Database with id '{db_id}' not found"),
                "NOT_FOUND"
            )
        )
    );
    // A huge name is quoted back cut at 128 characters.
    let long = "%C3%A9".repeat(300);
    let reply = app.get(&format!("/metrics?table={long}"), &[]).await;
    assert_eq!(
        reply.status_json(),
        (
            404,
            error(
                &format!(
                    "Table '{}…' not found in database 'default'",
                    "é".repeat(128)
                ),
                "NOT_FOUND"
            )
        )
    );
    // The data is untouched.
    let reply = app.get("/metrics", &[]).await;
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(reply.json()["metrics"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[actix_web::test]
async fn unknown_names_are_quoted_back_cut_at_128_characters() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));
    let cut = |name: &str| format!("{}…", name.chars().take(128).collect::<String>());
    for (name, encoded) in [
        ("é".repeat(300), "%C3%A9".repeat(300)),
        ("d".repeat(129), "d".repeat(129)),
    ] {
        let reply = app.get(&format!("/metrics?db_id={encoded}"), &[]).await;
        assert_eq!(
            reply.status_json(),
            (
                404,
                error(
                    &format!("Database with id '{}' not found", cut(&name)),
                    "NOT_FOUND"
                )
            )
        );
        let reply = app.get(&format!("/metrics?table={encoded}"), &[]).await;
        assert_eq!(
            reply.status_json(),
            (
                404,
                error(
                    &format!("Table '{}' not found in database 'default'", cut(&name)),
                    "NOT_FOUND"
                )
            )
        );
    }
    // At 128 characters a name is quoted whole.
    let whole = "d".repeat(128);
    let reply = app.get(&format!("/metrics?db_id={whole}"), &[]).await;
    assert_eq!(
        reply.status_json(),
        (
            404,
            error(
                &format!("Database with id '{whole}' not found"),
                "NOT_FOUND"
            )
        )
    );
    app.stop().await;
}

#[actix_web::test]
async fn unknown_routes_and_wrong_methods_use_the_error_shape() {
    let db = TestDatabase::migrated();
    let app = TestApp::spawn(settings(db.url()));

    for path in ["/nowhere", "/metric", "/metrics/extra", "/v1/metrics"] {
        let reply = app.get(path, &[]).await;
        assert_eq!(
            reply.status_json(),
            (404, error("Not found", "NOT_FOUND")),
            "{path}"
        );
    }
    for path in ["/metrics", "/metrics/", "/openapi.json"] {
        let response = app
            .client
            .post(format!("{}{path}", app.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405, "{path}");
        assert_eq!(response.headers().get("allow").unwrap(), "GET");
        let reply = app
            .client
            .delete(format!("{}{path}", app.api))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 405, "{path}");
    }
    let mut response = app
        .client
        .put(format!("{}/metrics", app.api))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, error("Method not allowed", "METHOD_NOT_ALLOWED"));
    app.stop().await;
}

#[actix_web::test]
async fn a_database_that_is_down_fails_within_the_timeout_without_leaking_the_cause() {
    let mut settings = settings("postgres://postgres:secret@127.0.0.1:1/nowhere");
    settings.http.request_timeout = Duration::from_millis(300);
    let app = TestApp::spawn(settings);

    let started = Instant::now();
    let reply = app.get("/metrics", &[]).await;
    assert_eq!(
        reply.status_json(),
        (
            500,
            error("Failed to retrieve metrics", "INTERNAL_SERVER_ERROR")
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_database_that_does_not_answer_fails_within_the_timeout() {
    let db = TestDatabase::migrated();
    write(
        &db,
        "agno_metrics",
        &[session("s1", "2025-07-30T10:00:00Z", Agent, None)],
    );
    let mut settings = settings(db.url());
    // Long enough that the read after the lock is released passes on a busy machine.
    settings.http.request_timeout = Duration::from_millis(1000);
    let app = TestApp::spawn(settings);
    // Hold a lock every read waits for, as a stuck database would.
    let mut locker = db.connect();
    locker
        .batch_execute("BEGIN; LOCK TABLE daily_metrics IN ACCESS EXCLUSIVE MODE;")
        .unwrap();

    let started = Instant::now();
    let reply = app.get("/metrics", &[]).await;
    assert_eq!(
        reply.status_json(),
        (
            500,
            error("Failed to retrieve metrics", "INTERNAL_SERVER_ERROR")
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    locker.batch_execute("ROLLBACK").unwrap();
    assert_eq!(app.get("/metrics", &[]).await.status.as_u16(), 200);
    app.stop().await;
}

/// A database connection that goes silent without closing (a network dropping its packets) fails
/// the requests on it within the request timeout instead of holding them, and is given up on:
/// later reads answer again, on new connections, without a restart.
#[actix_web::test]
async fn a_frozen_database_connection_fails_within_the_timeout_and_is_replaced() {
    let db = TestDatabase::migrated();
    write(
        &db,
        "agno_metrics",
        &[session("s1", "2025-07-30T10:00:00Z", Agent, None)],
    );
    let mut url = url::Url::parse(db.url()).unwrap();
    let proxy = Proxy::start(url.socket_addrs(|| Some(5432)).unwrap()[0]).await;
    url.set_port(Some(proxy.port)).unwrap();
    let mut settings = settings(url.as_str());
    settings.http.request_timeout = Duration::from_millis(1000);
    settings.tcp_timeout = Duration::from_millis(1000);
    settings.pool_size = 1;
    let app = TestApp::spawn(settings);
    // Each read names another range, so that the response cache cannot answer it.
    let read = |day: u32| {
        let app = &app;
        async move {
            app.get(
                &format!("/metrics?starting_date=2025-07-{day:02}&ending_date=2025-07-31"),
                &[],
            )
            .await
        }
    };
    assert_eq!(read(1).await.status.as_u16(), 200);
    // The pool's one connection and the listener's are open: the freeze catches every
    // connection the service has.
    eventually(Duration::from_secs(10), || async {
        match proxy.accepted() {
            2 => Ok(()),
            other => Err(other),
        }
    })
    .await;

    proxy.freeze();
    let started = Instant::now();
    let reply = read(2).await;
    assert!(
        matches!(reply.status.as_u16(), 200 | 500),
        "{}",
        reply.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a read waited {:?} on a frozen connection",
        started.elapsed()
    );

    let day = std::cell::Cell::new(3);
    eventually(Duration::from_secs(30), || async {
        let next = day.get();
        day.set(if next == 30 { 3 } else { next + 1 });
        let reply = read(next).await;
        let sessions = (reply.status.as_u16() == 200)
            .then(|| reply.json()["metrics"][0]["agent_sessions_count"].clone());
        if sessions == Some(serde_json::json!(1)) {
            Ok(())
        } else {
            Err(reply.status)
        }
    })
    .await;
    app.stop().await;
}
