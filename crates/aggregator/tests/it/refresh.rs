//! Refreshes: the recount, the one-at-a-time lock, and the state kept in the database,
//! including a refresh whose worker died.

use diesel::prelude::*;
use metrics_aggregator::schema::{daily_metrics, user_daily_metrics};
use metrics_aggregator::{
    RefreshState, TableName, WORKER_GONE, apply, connect_one, finish_refresh, refresh_status,
    start_refresh,
};
use metrics_events::SessionType::Agent;
use metrics_test_support::TestDatabase;

use crate::support::*;

fn name() -> TableName {
    "agno_metrics".parse().unwrap()
}

#[test]
fn a_table_never_refreshed_is_idle() {
    let db = TestDatabase::migrated();
    let status = refresh_status(&mut db.connect(), "agno_metrics").unwrap();
    assert_eq!(status.state, RefreshState::Idle);
    assert_eq!(
        (status.started_at, status.finished_at, status.error),
        (None, None, None)
    );
}

#[test]
fn a_refresh_recounts_every_row_and_records_completed() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = [
        with_user(run("e1", "2025-07-01T10:00:00Z", "r1", "s1", Agent), "u1"),
        run("e2", "2025-07-02T10:00:00Z", "r2", "s2", Agent),
    ];
    apply(&mut conn, t, &events).unwrap();
    diesel::update(daily_metrics::table)
        .set(daily_metrics::agent_runs_count.eq(7))
        .execute(&mut conn)
        .unwrap();
    diesel::delete(user_daily_metrics::table)
        .execute(&mut conn)
        .unwrap();

    let mut worker = connect_one(db.url()).unwrap();
    let claimed = start_refresh(&mut worker, &name()).unwrap().unwrap();
    assert_eq!(claimed, t);
    let running = refresh_status(&mut conn, "agno_metrics").unwrap();
    assert_eq!(running.state, RefreshState::Running);
    assert!(running.started_at.is_some() && running.finished_at.is_none());

    finish_refresh(&mut worker, claimed).unwrap();
    assert_eq!(snapshot(&mut conn, "agno_metrics"), reference(&events));
    assert_eq!(
        user_snapshot(&mut conn, "agno_metrics"),
        reference_by_user(&events)
    );
    let done = refresh_status(&mut conn, "agno_metrics").unwrap();
    assert_eq!(done.state, RefreshState::Completed);
    assert_eq!(done.started_at, running.started_at);
    assert!(done.finished_at >= done.started_at);
    assert_eq!(done.error, None);
}

#[test]
fn a_second_refresh_does_not_start_while_one_runs() {
    let db = TestDatabase::migrated();
    let mut first = connect_one(db.url()).unwrap();
    let mut second = connect_one(db.url()).unwrap();
    let claimed = start_refresh(&mut first, &name()).unwrap().unwrap();
    assert_eq!(start_refresh(&mut second, &name()).unwrap(), None);
    // Another table is not held up.
    assert!(
        start_refresh(&mut second, &"other_metrics".parse().unwrap())
            .unwrap()
            .is_some()
    );
    finish_refresh(&mut first, claimed).unwrap();
    let again = start_refresh(&mut second, &name()).unwrap();
    assert_eq!(again, Some(claimed));
}

#[test]
fn a_refresh_whose_worker_died_reads_failed_and_frees_the_table() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let mut worker = connect_one(db.url()).unwrap();
    start_refresh(&mut worker, &name()).unwrap().unwrap();
    assert_eq!(
        refresh_status(&mut conn, "agno_metrics").unwrap().state,
        RefreshState::Running
    );
    // The worker's session ends without finishing, as when its process is killed.
    drop(worker);
    // The server ends the session (and its locks) a moment after the socket closes: poll,
    // bounded.
    let status = (0..200)
        .find_map(|_| {
            let status = refresh_status(&mut conn, "agno_metrics").unwrap();
            if status.state == RefreshState::Failed {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            None
        })
        .expect("the refresh still reads running 10 s after its worker's connection closed");
    assert_eq!(status.error.as_deref(), Some(WORKER_GONE));
    assert!(status.finished_at.is_some());
    // Recorded: it stays failed, and a new refresh may start.
    assert_eq!(refresh_status(&mut conn, "agno_metrics").unwrap(), status);
    let mut next = connect_one(db.url()).unwrap();
    let claimed = start_refresh(&mut next, &name()).unwrap().unwrap();
    finish_refresh(&mut next, claimed).unwrap();
    assert_eq!(
        refresh_status(&mut conn, "agno_metrics").unwrap().state,
        RefreshState::Completed
    );
}

#[test]
fn appliers_running_during_a_refresh_lose_nothing() {
    let db = TestDatabase::migrated();
    let t = table(&mut db.connect(), "agno_metrics");
    let events: Vec<_> = (0..400)
        .map(|i| {
            with_user(
                run(
                    &format!("e{i}"),
                    &format!("2025-07-0{}T{:02}:00:00Z", 1 + i % 5, i % 24),
                    &format!("r{i}"),
                    &format!("s{}", i % 40),
                    Agent,
                ),
                &format!("u{}", i % 6),
            )
        })
        .collect();
    let url = db.url().to_owned();
    let batches = events.clone();
    let applier = std::thread::spawn(move || {
        let mut conn = connect_one(&url).unwrap();
        for batch in batches.chunks(10) {
            apply(&mut conn, t, batch).unwrap();
        }
    });
    let mut worker = connect_one(db.url()).unwrap();
    for _ in 0..5 {
        let claimed = start_refresh(&mut worker, &name()).unwrap().unwrap();
        finish_refresh(&mut worker, claimed).unwrap();
    }
    applier.join().unwrap();
    let mut conn = db.connect();
    assert_eq!(snapshot(&mut conn, "agno_metrics"), reference(&events));
    assert_eq!(
        user_snapshot(&mut conn, "agno_metrics"),
        reference_by_user(&events)
    );
}
