//! Bodies are, byte for byte, what the renderer writes from the decoded rows, whether read whole
//! or (long and open ranges) row by row and streamed.

use diesel::RunQueryDsl;
use metrics_aggregator::DateRange;
use metrics_events::SessionType::{Agent, Team, Workflow};
use metrics_query::routes::metrics::render;
use metrics_test_support::TestDatabase;

use crate::support::{TestApp, by, run, session, settings, usage, write};

fn body(page: &metrics_aggregator::MetricsPage) -> String {
    String::from_utf8(render(page).unwrap()).unwrap()
}

#[actix_web::test]
async fn bodies_are_byte_for_byte_the_renderers_for_all_users_and_each_user() {
    let db = TestDatabase::migrated();
    write(
        &db,
        "agno_metrics",
        &[
            session("s1", "2025-07-29T10:00:00Z", Agent, Some("alice")),
            by(
                run(
                    "r1",
                    "s1",
                    "2025-07-29T10:05:00Z",
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
                    "2025-07-30T09:00:00Z",
                    Agent,
                    Some(("q\"uote\\back\u{1}ctl/é😀", "")),
                    usage(1, "1200.00"),
                ),
                Some("bob\u{7f}"),
            ),
            session("s2", "2025-07-30T10:00:00Z", Team, None),
            by(
                run(
                    "r3",
                    "s2",
                    "2025-07-31T11:00:00Z",
                    Team,
                    None,
                    usage(10, "0.0000001"),
                ),
                None,
            ),
            session("s3", "2025-08-01T10:00:00Z", Workflow, Some("carol")),
        ],
    );
    // Costs and models at the edges of their rendering, set by hand; a hand edit leaves the rows
    // without rendered JSON (the service renders them itself), until they are rendered again.
    let mut conn = db.connect();
    diesel::sql_query(
        "UPDATE daily_metrics SET cost = CASE date \
             WHEN '2025-07-29' THEN 1234567890123456789012.5 \
             WHEN '2025-07-30' THEN 0.000001 \
             WHEN '2025-07-31' THEN 340000000000000000000000.5 \
             ELSE 0 END, \
         model_metrics = CASE WHEN date = '2025-08-01' THEN \
             '[{\"model_id\":\"a\\u001fb\",\"model_provider\":\"\\t\\n\\\"\",\"count\":12345678901}]' \
             ELSE model_metrics END, rendered = NULL",
    )
    .execute(&mut conn)
    .unwrap();
    assert_bodies(&db, &mut conn).await;
    // Rendered and stored: the same bytes, joined by the database (a new service, so that no
    // cached body answers).
    let table =
        metrics_aggregator::register_table(&mut conn, &"agno_metrics".parse().unwrap()).unwrap();
    metrics_aggregator::render_unrendered(&mut conn, table, DateRange::default()).unwrap();
    let unrendered: i64 = diesel::dsl::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM daily_metrics WHERE rendered IS NULL) \
         + (SELECT count(*) FROM user_daily_metrics WHERE rendered IS NULL)",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(unrendered, 0);
    assert_bodies(&db, &mut conn).await;
}

/// Every body of a few ranges, all users' and each user's, is what the renderer writes from the
/// decoded rows.
async fn assert_bodies(db: &TestDatabase, conn: &mut diesel::PgConnection) {
    let app = TestApp::spawn(settings(db.url()));
    for (query, range) in [
        ("", DateRange::default()),
        (
            "starting_date=2025-07-30&ending_date=2025-08-01",
            DateRange {
                start: chrono::NaiveDate::from_ymd_opt(2025, 7, 30),
                end: chrono::NaiveDate::from_ymd_opt(2025, 8, 1),
            },
        ),
        (
            "starting_date=2025-01-01&ending_date=2025-01-31",
            DateRange {
                start: chrono::NaiveDate::from_ymd_opt(2025, 1, 1),
                end: chrono::NaiveDate::from_ymd_opt(2025, 1, 31),
            },
        ),
    ] {
        let expected = body(&metrics_aggregator::read(conn, "agno_metrics", range).unwrap());
        for _ in 0..2 {
            let reply = app.get(&format!("/metrics?{query}"), &[]).await;
            assert_eq!(reply.status.as_u16(), 200);
            assert_eq!(String::from_utf8(reply.body).unwrap(), expected, "{query}");
        }
        for user in ["alice", "bob\u{7f}", "carol", "", "nobody"] {
            let expected =
                body(&metrics_aggregator::read_user(conn, "agno_metrics", user, range).unwrap());
            let user_id = serde_urlencoded::to_string([("user_id", user)]).unwrap();
            let reply = app.get(&format!("/metrics?{query}&{user_id}"), &[]).await;
            assert_eq!(reply.status.as_u16(), 200);
            assert_eq!(
                String::from_utf8(reply.body).unwrap(),
                expected,
                "{query} {user:?}"
            );
        }
    }
    app.stop().await;
}

/// A database whose table has one session (so the table is registered) and `days` all-users
/// rows from `first` on, without rendered JSON, inserted directly.
fn days_of_rows(first: &str, days: u32) -> (TestDatabase, diesel::PgConnection) {
    let db = TestDatabase::migrated();
    write(
        &db,
        "agno_metrics",
        &[session("s1", "2025-07-29T10:00:00Z", Agent, Some("alice"))],
    );
    let mut conn = db.connect();
    diesel::sql_query(
        "INSERT INTO daily_metrics (table_id, date, agent_runs_count, cost, model_metrics) \
         SELECT id, $1::date + g, g, g * 0.001, \
             '[{\"model_id\":\"gpt-4o\",\"model_provider\":\"OpenAI\",\"count\":2}]' \
         FROM metrics_tables, generate_series(0, $2 - 1) AS g WHERE name = 'agno_metrics'",
    )
    .bind::<diesel::sql_types::Text, _>(first)
    .bind::<diesel::sql_types::Integer, _>(i32::try_from(days).unwrap())
    .execute(&mut conn)
    .unwrap();
    (db, conn)
}

#[actix_web::test]
async fn long_tables_stream_row_by_row_with_the_same_bytes() {
    // 3,000 days: about 2 MB, past the size from which a body is streamed.
    let (db, mut conn) = days_of_rows("2001-01-01", 3000);
    let expected =
        body(&metrics_aggregator::read(&mut conn, "agno_metrics", DateRange::default()).unwrap());
    assert!(expected.len() > 1 << 20, "{}", expected.len());
    let app = TestApp::spawn(settings(db.url()));

    for path in ["/metrics", "/metrics?starting_date=2001-01-01"] {
        let reply = app.get(path, &[]).await;
        assert_eq!(reply.status.as_u16(), 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("content-length"), None, "{path}: not streamed");
        assert_eq!(String::from_utf8(reply.body).unwrap(), expected, "{path}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_whole_read_larger_than_a_part_keeps_its_length_and_bytes() {
    // 400 days of about 600 bytes: a whole read (a bounded range) over several of the parts a
    // body is handed to the server in.
    let (db, mut conn) = days_of_rows("2020-01-01", 400);
    let range = DateRange {
        start: chrono::NaiveDate::from_ymd_opt(2020, 1, 1),
        end: chrono::NaiveDate::from_ymd_opt(2021, 12, 31),
    };
    let expected = body(&metrics_aggregator::read(&mut conn, "agno_metrics", range).unwrap());
    assert!(expected.len() > 3 * 64 * 1024, "{}", expected.len());
    let app = TestApp::spawn(settings(db.url()));

    // Twice: a miss, then the same body from the cache.
    for _ in 0..2 {
        let reply = app
            .get(
                "/metrics?starting_date=2020-01-01&ending_date=2021-12-31",
                &[],
            )
            .await;
        assert_eq!(reply.status.as_u16(), 200);
        assert_eq!(reply.header("transfer-encoding"), None);
        assert_eq!(
            reply.header("content-length"),
            Some(expected.len().to_string().as_str())
        );
        assert_eq!(String::from_utf8(reply.body).unwrap(), expected);
    }
    app.stop().await;
}
