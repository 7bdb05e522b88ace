//! `rebuild` recomputes rows from the stored records, keeping ids.

use diesel::prelude::*;
use metrics_aggregator::schema::daily_metrics;
use metrics_aggregator::{DateRange, RebuildReport, apply, read, rebuild};
use metrics_events::SessionType::{Agent, Team};
use metrics_test_support::TestDatabase;

use crate::support::{
    assert_rendered, day, run, session, snapshot, stored_and_rendered, table, with_model,
    with_usage, with_user,
};

#[test]
fn rebuild_repairs_drifted_rows_and_keeps_their_ids() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = [
        with_user(session("e1", "2025-07-01T09:00:00Z", "s1", Team), "u1"),
        with_model(
            with_usage(
                run("e2", "2025-07-01T10:00:00Z", "r1", "s1", Team),
                5,
                6,
                "0.25",
            ),
            "gpt-4o",
            Some("OpenAI"),
        ),
        with_usage(
            run("e3", "2025-07-02T10:00:00Z", "r2", "s2", Agent),
            7,
            8,
            "0.5",
        ),
    ];
    apply(&mut conn, t, &events).unwrap();
    let good = snapshot(&mut conn, "agno_metrics");
    let ids: Vec<_> = read(&mut conn, "agno_metrics", DateRange::default())
        .unwrap()
        .rows
        .iter()
        .map(|r| r.id)
        .collect();

    // Damage one row, and delete the other.
    diesel::update(daily_metrics::table.filter(daily_metrics::date.eq(day("2025-07-01"))))
        .set((
            daily_metrics::team_runs_count.eq(42),
            daily_metrics::model_metrics.eq(serde_json::json!([])),
        ))
        .execute(&mut conn)
        .unwrap();
    diesel::delete(daily_metrics::table.filter(daily_metrics::date.eq(day("2025-07-02"))))
        .execute(&mut conn)
        .unwrap();

    let report = rebuild(
        &mut conn,
        t,
        DateRange {
            start: Some(day("2025-07-01")),
            end: Some(day("2025-07-02")),
        },
    )
    .unwrap();
    assert_eq!(
        report,
        RebuildReport {
            rows_written: 2,
            rows_deleted: 0,
            ..RebuildReport::default()
        }
    );
    assert_eq!(snapshot(&mut conn, "agno_metrics"), good);
    let rows = read(&mut conn, "agno_metrics", DateRange::default())
        .unwrap()
        .rows;
    assert_eq!(rows[0].id, ids[0], "the surviving row keeps its id");
    // The repaired rows are rendered anew, from their repaired values.
    assert_rendered(&mut conn, "agno_metrics");

    // Consistent rows are left alone.
    let report = rebuild(&mut conn, t, DateRange::default()).unwrap();
    assert_eq!(report, RebuildReport::default());
}

#[test]
fn rebuild_outside_the_range_touches_nothing() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    apply(
        &mut conn,
        t,
        &[run("e1", "2025-07-01T10:00:00Z", "r1", "s1", Agent)],
    )
    .unwrap();
    diesel::update(daily_metrics::table)
        .set(daily_metrics::agent_runs_count.eq(9))
        .execute(&mut conn)
        .unwrap();
    let report = rebuild(
        &mut conn,
        t,
        DateRange {
            start: Some(day("2025-07-02")),
            end: None,
        },
    )
    .unwrap();
    assert_eq!(report, RebuildReport::default());
    assert_eq!(snapshot(&mut conn, "agno_metrics")[0].runs, [9, 0, 0]);
}

/// Rows written before the `rendered` column existed have none: a read of them says so (and the
/// service renders them itself), and the next rebuild renders them without changing anything
/// else.
#[test]
fn rows_without_rendered_json_are_rendered_by_the_next_rebuild() {
    use metrics_aggregator::schema::user_daily_metrics;
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events: Vec<_> = (1..=3)
        .map(|d| {
            with_user(
                run(
                    &format!("e{d}"),
                    &format!("2025-07-0{d}T12:00:00Z"),
                    &format!("r{d}"),
                    "s",
                    Agent,
                ),
                &format!("u{}", d % 2),
            )
        })
        .collect();
    apply(&mut conn, t, &events).unwrap();
    assert_rendered(&mut conn, "agno_metrics");
    let before = snapshot(&mut conn, "agno_metrics");

    diesel::update(daily_metrics::table.filter(daily_metrics::date.eq(day("2025-07-02"))))
        .set(daily_metrics::rendered.eq(None::<String>))
        .execute(&mut conn)
        .unwrap();
    diesel::update(user_daily_metrics::table)
        .set(user_daily_metrics::rendered.eq(None::<String>))
        .execute(&mut conn)
        .unwrap();
    for (stored, _) in stored_and_rendered(&mut conn, "agno_metrics") {
        assert_eq!(stored, None, "a read with an unrendered row says so");
    }

    let report = rebuild(&mut conn, t, DateRange::default()).unwrap();
    assert_eq!(report, RebuildReport::default(), "no value changed");
    assert_rendered(&mut conn, "agno_metrics");
    assert_eq!(snapshot(&mut conn, "agno_metrics"), before);
}
