//! Reading rows for `GET /metrics`.

use metrics_aggregator::{DateRange, apply, read};
use metrics_events::SessionType::Agent;
use metrics_test_support::TestDatabase;

use crate::support::{day, run, table};

#[test]
fn a_range_is_inclusive_ascending_and_updated_at_is_table_wide() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events: Vec<_> = [5, 1, 3, 2, 4]
        .into_iter()
        .map(|d| {
            run(
                &format!("e{d}"),
                &format!("2025-07-0{d}T12:00:00Z"),
                &format!("r{d}"),
                "s",
                Agent,
            )
        })
        .collect();
    for event in &events {
        apply(&mut conn, t, std::slice::from_ref(event)).unwrap();
    }
    let all = read(&mut conn, "agno_metrics", DateRange::default()).unwrap();
    let latest = all.rows.iter().map(|r| r.updated_at).max();
    assert_eq!(all.updated_at, latest);

    let page = read(
        &mut conn,
        "agno_metrics",
        DateRange {
            start: Some(day("2025-07-02")),
            end: Some(day("2025-07-04")),
        },
    )
    .unwrap();
    let dates: Vec<_> = page.rows.iter().map(|r| r.date).collect();
    assert_eq!(
        dates,
        vec![day("2025-07-02"), day("2025-07-03"), day("2025-07-04")]
    );
    assert_eq!(page.updated_at, latest);

    let outside = read(
        &mut conn,
        "agno_metrics",
        DateRange {
            start: Some(day("2026-01-01")),
            end: None,
        },
    )
    .unwrap();
    assert_eq!((outside.rows.len(), outside.updated_at), (0, latest));
}

#[test]
fn a_table_never_written_reads_empty() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let page = read(&mut conn, "nobody_writes_here", DateRange::default()).unwrap();
    assert_eq!((page.rows, page.updated_at), (vec![], None));
    let _ = table(&mut conn, "registered_but_empty");
    let page = read(&mut conn, "registered_but_empty", DateRange::default()).unwrap();
    assert_eq!((page.rows, page.updated_at), (vec![], None));
}

#[test]
fn a_days_row_keeps_its_id_and_created_at_as_it_changes() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    apply(
        &mut conn,
        t,
        &[run("e1", "2025-07-01T01:00:00Z", "r1", "s", Agent)],
    )
    .unwrap();
    let first = read(&mut conn, "agno_metrics", DateRange::default())
        .unwrap()
        .rows;
    apply(
        &mut conn,
        t,
        &[run("e2", "2025-07-01T02:00:00Z", "r2", "s", Agent)],
    )
    .unwrap();
    let second = read(&mut conn, "agno_metrics", DateRange::default())
        .unwrap()
        .rows;
    assert_eq!(
        (
            second[0].id,
            second[0].created_at,
            second[0].agent_runs_count
        ),
        (first[0].id, first[0].created_at, 2)
    );
    assert!(
        second[0].updated_at > first[0].updated_at,
        "every change moves updated_at on"
    );
}
