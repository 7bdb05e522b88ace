//! Migrations go up, down and up again on a scratch database.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use metrics_aggregator::{migrate, revert_all};
use metrics_test_support::TestDatabase;

/// The migrations in `crates/aggregator/migrations`.
const MIGRATIONS: usize = 7;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn tables(conn: &mut PgConnection) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS count FROM pg_tables WHERE schemaname = 'public' \
         AND tablename IN ('metrics_tables', 'daily_metrics', 'runs', 'sessions', 'day_users', \
         'user_daily_metrics', 'metrics_refreshes')",
    )
    .get_result::<Count>(conn)
    .unwrap()
    .count
}

#[test]
fn migrations_go_up_down_and_up_again() {
    let db = TestDatabase::empty();
    let mut conn = db.connect();
    assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS);
    assert_eq!(tables(&mut conn), 7);
    assert_eq!(
        migrate(&mut conn).unwrap(),
        0,
        "a second run has nothing to do"
    );
    assert_eq!(revert_all(&mut conn).unwrap(), MIGRATIONS);
    assert_eq!(tables(&mut conn), 0);
    assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS);
    assert_eq!(tables(&mut conn), 7);
}

#[test]
fn replicas_migrating_at_once_run_each_migration_once() {
    let db = TestDatabase::empty();
    let applied: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| migrate(&mut db.connect()).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(applied.iter().sum::<usize>(), MIGRATIONS);
}

/// Rows counted by the first release carry no user: upgrading fills the per-user table from them
/// exactly as a rebuild of the migrated records would, so a rebuild afterwards changes nothing
/// and per-user rows add up to the all-users rows from the first write on.
#[test]
fn upgrading_fills_per_user_rows_as_a_rebuild_would() {
    let db = TestDatabase::empty();
    let mut conn = db.connect();
    conn.batch_execute(include_str!(
        "../../migrations/2026-11-28-000000_create_metrics/up.sql"
    ))
    .unwrap();
    conn.batch_execute(
        "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, \
         run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
         INSERT INTO __diesel_schema_migrations (version) VALUES ('20261128000000'); \
         INSERT INTO metrics_tables (name) VALUES ('agno_metrics'); \
         INSERT INTO daily_metrics (table_id, date, agent_runs_count, agent_sessions_count, \
             users_count, input_tokens, total_tokens, cost, model_metrics) VALUES \
             (1, '2025-01-01', 2, 1, 1, 10, 10, 1.5, \
              '[{\"model_id\": \"m\", \"model_provider\": \"\", \"count\": 1}]'), \
             (1, '2025-01-02', 0, 0, 1, 0, 0, 0, '[]'); \
         INSERT INTO runs VALUES \
             (1, 'r1', '2025-01-01', '2025-01-01T10:00:00Z', 's', 'e1', 's1', 'agent', 'm', '', \
              10, 0, 10, 0, 0, 0, 0, 0, 0, 1), \
             (1, 'r2', '2025-01-01', '2025-01-01T11:00:00Z', 's', 'e2', 's1', 'agent', NULL, NULL, \
              0, 0, 0, 0, 0, 0, 0, 0, 0, 0.5); \
         INSERT INTO sessions VALUES \
             (1, 's1', '2025-01-01', '2025-01-01T09:00:00Z', 'agent', false, '2025-01-01T09:00:00Z'); \
         INSERT INTO day_users VALUES (1, '2025-01-01', 'u1'), (1, '2025-01-02', 'u2');",
    )
    .unwrap();

    assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS - 1);
    let by_user = crate::support::user_snapshot(&mut conn, "agno_metrics");
    let all = crate::support::snapshot(&mut conn, "agno_metrics");
    let mut no_user = all[0].clone();
    no_user.users = 0;
    let active = |date: &str| {
        let mut day = crate::support::Day::empty(crate::support::day(date));
        day.users = 1;
        vec![day]
    };
    assert_eq!(by_user[""], vec![no_user]);
    assert_eq!(by_user["u1"], active("2025-01-01"));
    assert_eq!(by_user["u2"], active("2025-01-02"));
    assert_eq!(by_user.len(), 3);
    let t = crate::support::table(&mut conn, "agno_metrics");
    let report = metrics_aggregator::rebuild(&mut conn, t, Default::default()).unwrap();
    assert_eq!(report, Default::default());
}
