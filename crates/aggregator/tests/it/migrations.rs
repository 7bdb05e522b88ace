//! Migrations go up, down and up again on a scratch database.

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use metrics_aggregator::{migrate, revert_all};
use metrics_test_support::TestDatabase;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn tables(conn: &mut PgConnection) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS count FROM pg_tables WHERE schemaname = 'public' \
         AND tablename IN ('metrics_tables', 'daily_metrics', 'runs', 'sessions', 'day_users')",
    )
    .get_result::<Count>(conn)
    .unwrap()
    .count
}

#[test]
fn migrations_go_up_down_and_up_again() {
    let db = TestDatabase::empty();
    let mut conn = db.connect();
    assert_eq!(migrate(&mut conn).unwrap(), 1);
    assert_eq!(tables(&mut conn), 5);
    assert_eq!(
        migrate(&mut conn).unwrap(),
        0,
        "a second run has nothing to do"
    );
    assert_eq!(revert_all(&mut conn).unwrap(), 1);
    assert_eq!(tables(&mut conn), 0);
    assert_eq!(migrate(&mut conn).unwrap(), 1);
    assert_eq!(tables(&mut conn), 5);
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
    assert_eq!(applied.iter().sum::<usize>(), 1);
}
