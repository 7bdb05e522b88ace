//! One test per rule of `events.md` ("How events become daily rows"), against the real
//! PostgreSQL, asserting whole rows.

use metrics_aggregator::{EventOutcome, apply};
use metrics_events::SessionType::{Agent, Team, Workflow};
use metrics_test_support::TestDatabase;

use crate::support::*;

#[test]
fn a_run_counts_once_on_its_day_with_its_tokens_and_model() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = [
        with_model(
            with_usage(
                run("e1", "2025-07-31T10:00:00Z", "r1", "s1", Team),
                100,
                40,
                "0.10",
            ),
            "gpt-4o",
            Some("OpenAI"),
        ),
        with_model(
            with_usage(
                run("e2", "2025-07-31T11:00:00Z", "r2", "s1", Team),
                1,
                2,
                "0.20",
            ),
            "gpt-4o",
            None,
        ),
        with_usage(
            run("e3", "2025-07-31T12:00:00Z", "r3", "s1", Team),
            0,
            0,
            "0",
        ),
    ];
    let report = apply(&mut conn, t, &events).unwrap();
    assert_eq!(report.outcomes, vec![EventOutcome::Counted; 3]);
    let mut expected = Day::empty(day("2025-07-31"));
    expected.runs = [0, 3, 0];
    expected.sessions = [0, 1, 0];
    expected.tokens = [101, 42, 143, 3, 6, 9, 12, 15, 18];
    expected.cost = "0.3".parse().unwrap();
    expected.models = vec![model("gpt-4o", "", 1), model("gpt-4o", "OpenAI", 1)];
    assert_eq!(snapshot(&mut conn, "agno_metrics"), vec![expected]);
}

#[test]
fn a_second_run_completed_with_the_same_run_id_changes_nothing() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let first = with_usage(
        run("e1", "2025-07-31T10:00:00Z", "r1", "s1", Agent),
        10,
        5,
        "1",
    );
    apply(&mut conn, t, std::slice::from_ref(&first)).unwrap();
    let before = metrics_aggregator::read(&mut conn, "agno_metrics", Default::default()).unwrap();

    // The same event redelivered, and the run re-sent later as a new event with other figures.
    let resent = with_usage(
        run("e2", "2025-08-02T10:00:00Z", "r1", "s1", Agent),
        99,
        99,
        "9",
    );
    let report = apply(&mut conn, t, &[first, resent]).unwrap();
    assert_eq!(
        report.outcomes,
        vec![EventOutcome::Duplicate, EventOutcome::Counted]
    );
    let after = metrics_aggregator::read(&mut conn, "agno_metrics", Default::default()).unwrap();
    // The re-sent run's day gets a row (it had an event) but counts nothing; the first day's
    // row, its id and its timestamps are untouched.
    assert_eq!(after.rows[0], before.rows[0]);
    assert_eq!(
        snapshot(&mut conn, "agno_metrics")[1],
        Day::empty(day("2025-08-02"))
    );
}

#[test]
fn an_earlier_report_of_a_run_arriving_late_takes_its_place() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let late = with_model(
        with_usage(
            run("e2", "2025-08-02T10:00:00Z", "r1", "s1", Agent),
            50,
            50,
            "5",
        ),
        "m2",
        None,
    );
    let early = with_model(
        with_usage(
            run("e1", "2025-07-31T10:00:00Z", "r1", "s1", Agent),
            10,
            5,
            "1",
        ),
        "m1",
        Some("p"),
    );
    apply(&mut conn, t, std::slice::from_ref(&late)).unwrap();
    apply(&mut conn, t, std::slice::from_ref(&early)).unwrap();
    let mut first = Day::empty(day("2025-07-31"));
    first.runs = [1, 0, 0];
    first.sessions = [1, 0, 0];
    first.tokens = [10, 5, 15, 1, 2, 3, 4, 5, 6];
    first.cost = "1".parse().unwrap();
    first.models = vec![model("m1", "p", 1)];
    assert_eq!(
        snapshot(&mut conn, "agno_metrics"),
        vec![first, Day::empty(day("2025-08-02"))]
    );
    assert_eq!(
        snapshot(&mut conn, "agno_metrics"),
        reference(&[late, early])
    );
}

#[test]
fn a_session_counts_once_on_the_day_of_its_earliest_event_and_moves_when_an_earlier_one_arrives() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    // The session.created on the 2nd comes first; its run on the 1st comes late.
    let created = session("e1", "2025-08-02T09:00:00Z", "s1", Workflow);
    let later_run = run("e2", "2025-08-02T10:00:00Z", "r1", "s1", Workflow);
    apply(&mut conn, t, &[created.clone(), later_run.clone()]).unwrap();
    let mut second = Day::empty(day("2025-08-02"));
    second.runs = [0, 0, 1];
    second.sessions = [0, 0, 1];
    assert_eq!(snapshot(&mut conn, "agno_metrics"), vec![second.clone()]);

    let early_run = run("e3", "2025-08-01T23:59:59Z", "r0", "s1", Workflow);
    let report = apply(&mut conn, t, std::slice::from_ref(&early_run)).unwrap();
    assert_eq!(report.outcomes, vec![EventOutcome::Counted]);
    let mut first = Day::empty(day("2025-08-01"));
    first.runs = [0, 0, 1];
    first.sessions = [0, 0, 1];
    second.sessions = [0, 0, 0];
    assert_eq!(snapshot(&mut conn, "agno_metrics"), vec![first, second]);
    assert_eq!(
        snapshot(&mut conn, "agno_metrics"),
        reference(&[created, later_run, early_run])
    );
}

#[test]
fn a_sessions_type_is_its_session_created_s_else_its_earliest_runs() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    // Runs alone: the earliest run's type.
    let runs = [
        run("e1", "2025-07-31T10:00:00Z", "r1", "s1", Team),
        run("e2", "2025-07-31T09:00:00Z", "r2", "s1", Agent),
    ];
    apply(&mut conn, t, &runs).unwrap();
    assert_eq!(snapshot(&mut conn, "agno_metrics")[0].sessions, [1, 0, 0]);

    // A session.created, even a later one, names the type.
    let created = session("e3", "2025-07-31T11:00:00Z", "s1", Workflow);
    apply(&mut conn, t, std::slice::from_ref(&created)).unwrap();
    let rows = snapshot(&mut conn, "agno_metrics");
    assert_eq!((rows[0].sessions, rows[0].runs), ([0, 0, 1], [1, 1, 0]));
    assert_eq!(
        rows,
        reference(&[runs[0].clone(), runs[1].clone(), created])
    );
}

#[test]
fn users_are_the_distinct_non_empty_user_ids_of_each_days_events() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = [
        with_user(session("e1", "2025-07-31T09:00:00Z", "s1", Agent), "alice"),
        with_user(
            run("e2", "2025-07-31T10:00:00Z", "r1", "s1", Agent),
            "alice",
        ),
        with_user(run("e3", "2025-07-31T11:00:00Z", "r2", "s2", Agent), "bob"),
        with_user(run("e4", "2025-07-31T12:00:00Z", "r3", "s3", Agent), ""),
        run("e5", "2025-07-31T13:00:00Z", "r4", "s4", Agent),
        with_user(
            run("e6", "2025-08-01T10:00:00Z", "r5", "s1", Agent),
            "alice",
        ),
    ];
    let report = apply(&mut conn, t, &events).unwrap();
    assert_eq!(report.duplicates(), 0);
    let rows = snapshot(&mut conn, "agno_metrics");
    assert_eq!(
        rows.iter().map(|d| (d.date, d.users)).collect::<Vec<_>>(),
        vec![(day("2025-07-31"), 2), (day("2025-08-01"), 1)]
    );
    assert_eq!(rows, reference(&events));
}

#[test]
fn days_without_events_have_no_row() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = [
        run("e1", "2025-07-01T10:00:00Z", "r1", "s1", Agent),
        run("e2", "2025-07-05T10:00:00Z", "r2", "s2", Agent),
    ];
    apply(&mut conn, t, &events).unwrap();
    let dates: Vec<_> = snapshot(&mut conn, "agno_metrics")
        .into_iter()
        .map(|d| d.date)
        .collect();
    assert_eq!(dates, vec![day("2025-07-01"), day("2025-07-05")]);
}

#[test]
fn model_metrics_are_ordered_by_count_then_model_id() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let mut events = Vec::new();
    for (i, (name, provider)) in [
        ("b-model", "X"),
        ("a-model", "Y"),
        ("c-model", "Z"),
        ("c-model", "Z"),
        ("B-model", "X"),
    ]
    .into_iter()
    .enumerate()
    {
        events.push(with_model(
            run(
                &format!("e{i}"),
                "2025-07-31T10:00:00Z",
                &format!("r{i}"),
                "s",
                Agent,
            ),
            name,
            Some(provider),
        ));
    }
    apply(&mut conn, t, &events).unwrap();
    assert_eq!(
        snapshot(&mut conn, "agno_metrics")[0].models,
        vec![
            model("c-model", "Z", 2),
            model("B-model", "X", 1),
            model("a-model", "Y", 1),
            model("b-model", "X", 1),
        ]
    );
}

#[test]
fn redelivering_a_batch_changes_nothing_not_even_updated_at() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = [
        with_user(session("e1", "2025-07-31T09:00:00Z", "s1", Agent), "u"),
        with_usage(
            run("e2", "2025-07-31T10:00:00Z", "r1", "s1", Agent),
            3,
            4,
            "0.5",
        ),
    ];
    apply(&mut conn, t, &events).unwrap();
    let before = metrics_aggregator::read(&mut conn, "agno_metrics", Default::default()).unwrap();
    let mut reversed = events.to_vec();
    reversed.reverse();
    let report = apply(&mut conn, t, &reversed).unwrap();
    assert_eq!(report.outcomes, vec![EventOutcome::Duplicate; 2]);
    let after = metrics_aggregator::read(&mut conn, "agno_metrics", Default::default()).unwrap();
    assert_eq!(after, before);
}

#[test]
fn metrics_tables_are_independent() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let a = table(&mut conn, "first");
    let b = table(&mut conn, "second");
    let event = run("e1", "2025-07-31T10:00:00Z", "r1", "s1", Agent);
    apply(&mut conn, a, std::slice::from_ref(&event)).unwrap();
    let report = apply(&mut conn, b, std::slice::from_ref(&event)).unwrap();
    assert_eq!(report.outcomes, vec![EventOutcome::Counted]);
    assert_eq!(snapshot(&mut conn, "first"), snapshot(&mut conn, "second"));
    assert_eq!(snapshot(&mut conn, "first").len(), 1);
}
