//! Per-user rows (`agentos-compat.md`, `GET /metrics?user_id=U`): whose each run and session is,
//! exactness under repeats and late events, ids, and `rebuild`.

use std::collections::BTreeMap;

use diesel::prelude::*;
use metrics_aggregator::schema::user_daily_metrics;
use metrics_aggregator::{DateRange, RebuildReport, apply, read, read_user, rebuild};
use metrics_events::SessionType::{Agent, Team, Workflow};
use metrics_test_support::TestDatabase;

use crate::support::*;

fn user_rows(days: &[(&str, Vec<Day>)]) -> BTreeMap<String, Vec<Day>> {
    days.iter()
        .map(|(user, days)| ((*user).to_owned(), days.clone()))
        .collect()
}

fn day_with(date: &str, edit: impl FnOnce(&mut Day)) -> Day {
    let mut row = Day::empty(day(date));
    edit(&mut row);
    row
}

#[test]
fn runs_count_for_their_events_user_and_sessions_for_the_session_created_user() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = [
        with_user(session("e1", "2025-07-01T09:00:00Z", "s1", Team), "alice"),
        // A run of alice's session that names bob counts for bob; the session stays alice's.
        with_model(
            with_usage(
                with_user(run("e2", "2025-07-01T10:00:00Z", "r1", "s1", Team), "bob"),
                10,
                5,
                "0.5",
            ),
            "gpt-4o",
            Some("OpenAI"),
        ),
        // No session.created: the session is its earliest run's user's.
        with_usage(
            with_user(run("e3", "2025-07-01T11:00:00Z", "r2", "s2", Agent), "bob"),
            1,
            1,
            "0.25",
        ),
        with_user(
            run("e4", "2025-07-01T12:00:00Z", "r3", "s2", Agent),
            "alice",
        ),
        // Nobody's.
        run("e5", "2025-07-01T13:00:00Z", "r4", "s3", Workflow),
    ];
    apply(&mut conn, t, &events).unwrap();
    let expected = user_rows(&[
        (
            "",
            vec![day_with("2025-07-01", |d| {
                d.runs = [0, 0, 1];
                d.sessions = [0, 0, 1];
            })],
        ),
        (
            "alice",
            vec![day_with("2025-07-01", |d| {
                d.runs = [1, 0, 0];
                d.sessions = [0, 1, 0];
                d.users = 1;
            })],
        ),
        (
            "bob",
            vec![day_with("2025-07-01", |d| {
                d.runs = [1, 1, 0];
                d.sessions = [1, 0, 0];
                d.users = 1;
                d.tokens = [11, 6, 17, 2, 4, 6, 8, 10, 12];
                d.cost = "0.75".parse().unwrap();
                d.models = vec![model("gpt-4o", "OpenAI", 1)];
            })],
        ),
    ]);
    assert_eq!(user_snapshot(&mut conn, "agno_metrics"), expected);
    assert_eq!(expected, reference_by_user(&events));
    assert_eq!(snapshot(&mut conn, "agno_metrics")[0].users, 2);
}

#[test]
fn a_late_session_created_hands_the_session_to_its_user_and_day() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let run_event = with_user(run("e1", "2025-07-02T10:00:00Z", "r1", "s1", Agent), "bob");
    apply(&mut conn, t, std::slice::from_ref(&run_event)).unwrap();
    let bob_before = user_snapshot(&mut conn, "agno_metrics");
    assert_eq!(bob_before["bob"][0].sessions, [1, 0, 0]);

    // The session.created arrives last, a day earlier, naming alice and another type.
    let created = with_user(session("e2", "2025-07-01T09:00:00Z", "s1", Team), "alice");
    apply(&mut conn, t, std::slice::from_ref(&created)).unwrap();
    let expected = user_rows(&[
        (
            "alice",
            vec![day_with("2025-07-01", |d| {
                d.sessions = [0, 1, 0];
                d.users = 1;
            })],
        ),
        (
            "bob",
            vec![day_with("2025-07-02", |d| {
                d.runs = [1, 0, 0];
                d.users = 1;
            })],
        ),
    ]);
    assert_eq!(user_snapshot(&mut conn, "agno_metrics"), expected);
    assert_eq!(expected, reference_by_user(&[run_event, created]));
}

#[test]
fn a_session_counts_for_its_user_on_a_day_that_user_is_not_active() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    // The session starts with bob's run on the 1st; its session.created, later, names carol.
    let events = [
        with_user(run("e1", "2025-07-01T10:00:00Z", "r1", "s1", Agent), "bob"),
        with_user(session("e2", "2025-07-03T09:00:00Z", "s1", Agent), "carol"),
    ];
    for event in &events {
        apply(&mut conn, t, std::slice::from_ref(event)).unwrap();
    }
    let expected = user_rows(&[
        (
            "bob",
            vec![day_with("2025-07-01", |d| {
                d.runs = [1, 0, 0];
                d.users = 1;
            })],
        ),
        (
            "carol",
            vec![
                day_with("2025-07-01", |d| d.sessions = [1, 0, 0]),
                day_with("2025-07-03", |d| d.users = 1),
            ],
        ),
    ]);
    assert_eq!(user_snapshot(&mut conn, "agno_metrics"), expected);
    assert_eq!(expected, reference_by_user(&events));
}

#[test]
fn a_session_created_without_a_user_leaves_the_session_to_its_first_runs_user() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = [
        with_user(run("e1", "2025-07-01T11:00:00Z", "r1", "s1", Agent), "dave"),
        with_user(run("e2", "2025-07-01T10:30:00Z", "r2", "s1", Agent), "erin"),
        session("e3", "2025-07-01T10:00:00Z", "s1", Agent),
    ];
    apply(&mut conn, t, &events[..2]).unwrap();
    apply(&mut conn, t, &events[2..]).unwrap();
    let rows = user_snapshot(&mut conn, "agno_metrics");
    assert_eq!(rows["erin"][0].sessions, [1, 0, 0]);
    assert_eq!(rows["dave"][0].sessions, [0, 0, 0]);
    assert_eq!(rows[""][0].sessions, [0, 0, 0]);
    assert_eq!(rows, reference_by_user(&events));
}

#[test]
fn repeats_and_re_sent_runs_change_no_per_user_row_and_ids_are_stable() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let first = with_usage(
        with_user(run("e1", "2025-07-01T10:00:00Z", "r1", "s1", Agent), "u1"),
        10,
        5,
        "1",
    );
    apply(&mut conn, t, std::slice::from_ref(&first)).unwrap();
    let before = read_user(&mut conn, "agno_metrics", "u1", DateRange::default()).unwrap();
    let all_users = read(&mut conn, "agno_metrics", DateRange::default()).unwrap();
    assert_ne!(before.rows[0].id, all_users.rows[0].id);

    // The same event again, and the run re-sent later by another user: the run stays u1's, and
    // u2 is only active that day.
    let resent = with_user(run("e2", "2025-07-01T12:00:00Z", "r1", "s1", Agent), "u2");
    apply(&mut conn, t, &[first.clone(), resent.clone()]).unwrap();
    apply(&mut conn, t, &[first.clone(), resent.clone()]).unwrap();
    let after = read_user(&mut conn, "agno_metrics", "u1", DateRange::default()).unwrap();
    assert_eq!(
        after.rows, before.rows,
        "u1's row is untouched, id and stamps included"
    );
    let rows = user_snapshot(&mut conn, "agno_metrics");
    assert_eq!(rows, reference_by_user(&[first, resent]));
    assert_eq!(rows["u2"], vec![day_with("2025-07-01", |d| d.users = 1)]);
}

#[test]
fn an_earlier_copy_of_a_run_moves_it_to_that_copys_user() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let late = with_usage(
        with_user(run("e1", "2025-07-02T10:00:00Z", "r1", "s1", Agent), "u1"),
        10,
        0,
        "0",
    );
    let early = with_usage(
        with_user(run("e2", "2025-07-01T10:00:00Z", "r1", "s1", Agent), "u2"),
        3,
        0,
        "0",
    );
    apply(&mut conn, t, std::slice::from_ref(&late)).unwrap();
    apply(&mut conn, t, std::slice::from_ref(&early)).unwrap();
    let rows = user_snapshot(&mut conn, "agno_metrics");
    assert_eq!(rows, reference_by_user(&[late, early]));
    assert_eq!(rows["u1"], vec![day_with("2025-07-02", |d| d.users = 1)]);
    assert_eq!(rows["u2"][0].runs, [1, 0, 0]);
    assert_eq!(rows["u2"][0].tokens[0], 3);
}

#[test]
fn an_unknown_user_has_no_rows_and_the_table_stamp_still_shows() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    apply(
        &mut conn,
        t,
        &[with_user(
            run("e1", "2025-07-01T10:00:00Z", "r1", "s1", Agent),
            "u1",
        )],
    )
    .unwrap();
    let page = read_user(&mut conn, "agno_metrics", "nobody", DateRange::default()).unwrap();
    assert!(page.rows.is_empty());
    assert_eq!(
        page.updated_at,
        read(&mut conn, "agno_metrics", DateRange::default())
            .unwrap()
            .updated_at
    );
    let none = read_user(&mut conn, "agno_metrics", "", DateRange::default()).unwrap();
    assert!(none.rows.is_empty(), "every event named a user");
}

#[test]
fn a_user_id_with_a_nul_character_has_no_rows_and_is_no_error() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    apply(
        &mut conn,
        t,
        &[with_user(
            run("e1", "2025-07-01T10:00:00Z", "r1", "s1", Agent),
            "u1",
        )],
    )
    .unwrap();
    let stamp = read(&mut conn, "agno_metrics", DateRange::default())
        .unwrap()
        .updated_at;
    for user in ["\0", "u1\0", "\0u1"] {
        let page = read_user(&mut conn, "agno_metrics", user, DateRange::default()).unwrap();
        assert!(page.rows.is_empty(), "{user:?}");
        assert_eq!(page.updated_at, stamp, "{user:?}");
    }
}

#[test]
fn a_change_of_per_user_rows_alone_moves_the_tables_latest_change() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = [
        with_user(run("e1", "2025-07-01T10:00:00Z", "r1", "s1", Agent), "bob"),
        with_user(session("e2", "2025-07-01T12:00:00Z", "s1", Agent), "carol"),
    ];
    apply(&mut conn, t, &events).unwrap();
    let before = read(&mut conn, "agno_metrics", DateRange::default()).unwrap();
    // A session.created of the same day and type, earlier than the first: the all-users row
    // stays as it is, the session changes hands from carol to alice.
    let earlier = with_user(session("e3", "2025-07-01T11:00:00Z", "s1", Agent), "alice");
    let mut all_events = events.to_vec();
    all_events.push(earlier.clone());
    apply(&mut conn, t, &[earlier]).unwrap();
    let after = read(&mut conn, "agno_metrics", DateRange::default()).unwrap();
    assert_eq!(after.rows[0].users_count, 3);
    assert!(after.updated_at > before.updated_at);
    assert_eq!(
        user_snapshot(&mut conn, "agno_metrics"),
        reference_by_user(&all_events)
    );
}

#[test]
fn rebuild_repairs_per_user_rows_and_keeps_their_ids() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = [
        with_user(session("e1", "2025-07-01T09:00:00Z", "s1", Team), "u1"),
        with_model(
            with_usage(
                with_user(run("e2", "2025-07-01T10:00:00Z", "r1", "s1", Team), "u1"),
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
    let good = user_snapshot(&mut conn, "agno_metrics");
    let id = read_user(&mut conn, "agno_metrics", "u1", DateRange::default())
        .unwrap()
        .rows[0]
        .id;

    // Damage u1's row, delete the no-user row, and add a row nobody's events justify.
    diesel::update(user_daily_metrics::table.filter(user_daily_metrics::user_id.eq("u1")))
        .set(user_daily_metrics::team_runs_count.eq(42))
        .execute(&mut conn)
        .unwrap();
    diesel::delete(user_daily_metrics::table.filter(user_daily_metrics::user_id.eq("")))
        .execute(&mut conn)
        .unwrap();
    diesel::insert_into(user_daily_metrics::table)
        .values((
            user_daily_metrics::table_id.eq(t.get()),
            user_daily_metrics::user_id.eq("ghost"),
            user_daily_metrics::date.eq(day("2025-07-01")),
            user_daily_metrics::agent_runs_count.eq(1),
        ))
        .execute(&mut conn)
        .unwrap();

    let report = rebuild(&mut conn, t, DateRange::default()).unwrap();
    assert_eq!(
        report,
        RebuildReport {
            user_rows_written: 2,
            user_rows_deleted: 1,
            ..RebuildReport::default()
        }
    );
    assert_eq!(user_snapshot(&mut conn, "agno_metrics"), good);
    let rows = read_user(&mut conn, "agno_metrics", "u1", DateRange::default()).unwrap();
    assert_eq!(rows.rows[0].id, id, "the repaired row keeps its id");
    assert_eq!(
        rebuild(&mut conn, t, DateRange::default()).unwrap(),
        RebuildReport::default()
    );
}

#[test]
fn per_user_reads_honour_the_date_range() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events: Vec<_> = (1..=5)
        .map(|d| {
            with_user(
                run(
                    &format!("e{d}"),
                    &format!("2025-07-0{d}T10:00:00Z"),
                    &format!("r{d}"),
                    "s1",
                    Agent,
                ),
                "u1",
            )
        })
        .collect();
    apply(&mut conn, t, &events).unwrap();
    let page = read_user(
        &mut conn,
        "agno_metrics",
        "u1",
        DateRange {
            start: Some(day("2025-07-02")),
            end: Some(day("2025-07-04")),
        },
    )
    .unwrap();
    let dates: Vec<_> = page.rows.iter().map(|r| r.date).collect();
    assert_eq!(
        dates,
        [day("2025-07-02"), day("2025-07-03"), day("2025-07-04")]
    );
}
