//! The response cache learns of committed changes through `LISTEN`/`NOTIFY`: a cache hit asks
//! the database nothing, a change is seen as soon as its notification is in, and a lost listener
//! costs only the round trips it saved until it is back.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use metrics_events::SessionType::Agent;
use metrics_query::listener::APPLICATION_NAME;
use metrics_test_support::TestDatabase;

use crate::support::{TestApp, session, settings, write};

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// The process id of the service's listening connection once it listens (idle after `LISTEN`
/// or a check), other than `except`.
async fn listening(db: &TestDatabase, except: Option<i32>) -> i32 {
    let mut conn = db.connect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<Pid> = diesel::sql_query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 \
             AND state = 'idle' AND query IN ('LISTEN metrics_changed', '')",
        )
        .bind::<Text, _>(db.name())
        .bind::<Text, _>(APPLICATION_NAME)
        .load(&mut conn)
        .unwrap();
        if let Some(found) = found.iter().find(|found| Some(found.pid) != except) {
            return found.pid;
        }
        assert!(Instant::now() < deadline, "the service never listened");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds every table a read looks at locked against readers while `body` runs: a request that
/// asked the database anything would wait for the lock.
async fn with_tables_locked<T>(db: &TestDatabase, body: impl Future<Output = T>) -> T {
    let mut lock = db.connect();
    lock.batch_execute(
        "BEGIN; LOCK TABLE daily_metrics, user_daily_metrics, metrics_tables \
         IN ACCESS EXCLUSIVE MODE",
    )
    .unwrap();
    let value = body.await;
    lock.batch_execute("ROLLBACK").unwrap();
    value
}

/// The body of `GET /metrics` once `ready` holds for it, within two seconds: a notification
/// reaches the service a moment after the commit, and a request in that moment is answered as
/// of just before the change.
async fn fresh(app: &TestApp, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let body = app.get("/metrics", &[]).await.json();
        if ready(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never fresh: {body}");
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sessions(body: &serde_json::Value) -> Vec<i64> {
    body["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["agent_sessions_count"].as_i64().unwrap())
        .collect()
}

#[actix_web::test]
async fn cache_hits_ask_the_database_nothing_and_changes_are_seen_once_notified() {
    let db = TestDatabase::migrated();
    write(
        &db,
        "agno_metrics",
        &[session("s1", "2025-07-30T10:00:00Z", Agent, None)],
    );
    let mut settings = settings(db.url());
    settings.cache.max_age = Duration::from_secs(3600);
    let app = TestApp::spawn(settings);
    let first = app.get("/metrics", &[]).await.json();
    assert_eq!(sessions(&first), [1]);
    listening(&db, None).await;
    // Served once after listening started (tagged with the listener's version), then from
    // memory alone: with the tables locked, any query would wait out the request timeout.
    assert_eq!(app.get("/metrics", &[]).await.json(), first);
    let started = Instant::now();
    let replies = with_tables_locked(&db, async {
        let mut replies = Vec::new();
        for path in ["/metrics", "/metrics", "/metrics/"] {
            replies.push(app.get(path, &[]).await.status_json());
        }
        replies
    })
    .await;
    for reply in replies {
        assert_eq!(reply, (200, first.clone()));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    for (n, day) in [(2, "2025-07-30"), (1, "2025-07-31")] {
        write(
            &db,
            "agno_metrics",
            &[session(
                &format!("s-{day}"),
                &format!("{day}T12:00:00Z"),
                Agent,
                None,
            )],
        );
        fresh(&app, |body| sessions(body).last() == Some(&n)).await;
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_killed_listener_leaves_reads_exact_and_comes_back() {
    let db = TestDatabase::migrated();
    write(
        &db,
        "agno_metrics",
        &[session("s0", "2025-07-01T10:00:00Z", Agent, None)],
    );
    let mut settings = settings(db.url());
    settings.cache.max_age = Duration::from_secs(3600);
    let app = TestApp::spawn(settings);
    assert_eq!(sessions(&app.get("/metrics", &[]).await.json()), [1]);
    let before = listening(&db, None).await;

    let mut conn = db.connect();
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<Integer, _>(before)
        .execute(&mut conn)
        .unwrap();
    // Whether the service noticed yet or not, and whether it listens again or not: each write
    // is seen by the next read.
    for day in 2..=6 {
        write(
            &db,
            "agno_metrics",
            &[session(
                &format!("s{day}"),
                &format!("2025-07-0{day}T10:00:00Z"),
                Agent,
                None,
            )],
        );
        fresh(&app, |body| sessions(body).len() == day).await;
    }

    let after = listening(&db, Some(before)).await;
    assert_ne!(after, before);
    write(
        &db,
        "agno_metrics",
        &[session("s7", "2025-07-07T10:00:00Z", Agent, None)],
    );
    let body = fresh(&app, |body| sessions(body).len() == 7).await;
    // And hits ask nothing again (once the notification is in and a read has confirmed the
    // entry under the version it moved to).
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.get("/metrics", &[]).await.json(), body);
    let reply = with_tables_locked(&db, app.get("/metrics", &[])).await;
    assert_eq!(reply.status_json(), (200, body));
    app.stop().await;
}
