//! Failures are classed by what PostgreSQL says they mean: the data's fault is permanent, the
//! server's or the network's is transient.

use std::sync::{Arc, Barrier};
use std::thread;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use metrics_aggregator::{ApplyError, apply};
use metrics_events::SessionType;
use metrics_test_support::TestDatabase;

use crate::support::{run, table};

fn failure(result: QueryResult<impl Sized>) -> ApplyError {
    match result {
        Ok(_) => panic!("the statement succeeded"),
        Err(error) => ApplyError::from(error),
    }
}

#[test]
fn data_exceptions_and_integrity_violations_are_permanent() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    for sql in [
        // 22003 numeric_value_out_of_range
        "SELECT 9223372036854775807::int8 + 1",
        "SELECT '1e400'::numeric::float8",
        // 22P02 invalid_text_representation
        "SELECT 'x'::int8",
        // 22012 division_by_zero
        "SELECT 1 / 0",
        // 22008 datetime_field_overflow
        "SELECT '2025-13-01'::date",
        // 22021 character_not_in_repertoire
        "SELECT convert_from('\\x6100'::bytea, 'UTF8')",
    ] {
        let error = failure(diesel::sql_query(sql).execute(&mut conn));
        assert!(!error.is_transient(), "{sql}: {error:?}");
    }
    conn.batch_execute("CREATE TABLE probe (k int PRIMARY KEY, v int NOT NULL CHECK (v >= 0))")
        .unwrap();
    conn.batch_execute("INSERT INTO probe VALUES (1, 1)")
        .unwrap();
    for sql in [
        // 23505 unique_violation, 23502 not_null_violation, 23514 check_violation
        "INSERT INTO probe VALUES (1, 1)",
        "INSERT INTO probe VALUES (2, NULL)",
        "INSERT INTO probe VALUES (3, -1)",
    ] {
        let error = failure(diesel::sql_query(sql).execute(&mut conn));
        assert!(!error.is_transient(), "{sql}: {error:?}");
    }
}

#[test]
fn an_event_postgresql_cannot_store_is_refused_for_good() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let poison = run(
        "e1",
        "2025-07-01T09:00:00Z",
        "r\u{0}1",
        "s1",
        SessionType::Agent,
    );
    let error = apply(&mut conn, t, &[poison]).unwrap_err();
    assert!(!error.is_transient(), "{error:?}");
}

#[test]
fn timeouts_deadlocks_and_serialization_failures_are_transient() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    conn.batch_execute(
        "CREATE TABLE probe (k int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO probe VALUES (1, 0), (2, 0)",
    )
    .unwrap();

    // 57014 query_canceled (class 57, operator intervention).
    let error = failure(conn.transaction(|conn| {
        conn.batch_execute("SET LOCAL statement_timeout = '10ms'")?;
        diesel::sql_query("SELECT pg_sleep(5)").execute(conn)
    }));
    assert!(error.is_transient(), "{error:?}");

    // 40001 serialization_failure: two serializable transactions that each read what the other
    // writes.
    let mut other = db.connect();
    conn.batch_execute(
        "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(v) FROM probe; \
         UPDATE probe SET v = v + 1 WHERE k = 1",
    )
    .unwrap();
    other
        .batch_execute(
            "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(v) FROM probe; \
             UPDATE probe SET v = v + 1 WHERE k = 2",
        )
        .unwrap();
    let errors: Vec<ApplyError> = [conn.batch_execute("COMMIT"), other.batch_execute("COMMIT")]
        .into_iter()
        .filter_map(Result::err)
        .map(ApplyError::from)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].is_transient(), "{errors:?}");

    // 40P01 deadlock_detected: two transactions that lock the same rows in opposite orders.
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = [(1, 2), (2, 1)]
        .into_iter()
        .map(|(first, second)| {
            let url = db.url().to_owned();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                conn.transaction(|conn| {
                    conn.batch_execute(&format!("UPDATE probe SET v = v + 1 WHERE k = {first}"))?;
                    barrier.wait();
                    conn.batch_execute(&format!("UPDATE probe SET v = v + 1 WHERE k = {second}"))
                })
            })
        })
        .collect();
    let errors: Vec<ApplyError> = workers
        .into_iter()
        .filter_map(|worker| worker.join().unwrap().err())
        .map(ApplyError::from)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].is_transient(), "{errors:?}");
}
