//! The inbox: staged events applied later, in batches of any size, once each.

use std::thread;

use diesel::PgConnection;
use metrics_aggregator::{
    ApplyError, Staged, StagedReport, TableId, apply_staged, forget, refused_events, stage,
    staged_count,
};
use metrics_events::{Event, SessionType};
use metrics_test_support::TestDatabase;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::support::{
    reference, reference_by_user, run, session, snapshot, table, user_snapshot, with_usage,
    with_user,
};

/// Sessions of two runs each over three days and five users, every tenth event sent twice.
fn events() -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..60 {
        let day = 1 + i % 3;
        let session_id = format!("s{i}");
        let user = format!("u{}", i % 5);
        events.push(with_user(
            session(
                &format!("c{i}"),
                &format!("2025-07-0{day}T08:00:00Z"),
                &session_id,
                SessionType::Agent,
            ),
            &user,
        ));
        for r in 0..2 {
            let event = run(
                &format!("e{i}-{r}"),
                &format!("2025-07-0{day}T09:0{r}:00Z"),
                &format!("r{i}-{r}"),
                &session_id,
                SessionType::Agent,
            );
            events.push(with_user(with_usage(event, 10, 5, "0.25"), &user));
        }
    }
    let again: Vec<Event> = events.iter().step_by(10).cloned().collect();
    events.extend(again);
    events
}

/// Staged bytes in these tests name an event of the list by its index: the inbox keeps and
/// returns bytes, whatever they encode.
fn decoder(events: &[Event]) -> impl Fn(&[u8]) -> Result<Option<Event>, String> + '_ {
    |bytes| {
        let text = std::str::from_utf8(bytes).unwrap();
        match text.parse::<usize>() {
            Ok(index) => Ok(Some(events[index].clone())),
            Err(_) if text == "ignored" => Ok(None),
            Err(_) => Err(format!("unreadable: {text}")),
        }
    }
}

fn refusal(event: &Event, error: &ApplyError) -> String {
    format!("event `{}`: could not be counted: {error}", event.id)
}

fn stage_all(conn: &mut PgConnection, t: TableId, bodies: &[String], chunk: usize) {
    for bodies in bodies.chunks(chunk) {
        let staged: Vec<Staged<'_>> = bodies
            .iter()
            .map(|body| Staged {
                event: body.as_bytes(),
                element: false,
                routing_key: "agentos.run.completed",
                properties: b"{}",
            })
            .collect();
        stage(conn, t, &staged).unwrap();
    }
}

fn indexes(events: &[Event]) -> Vec<String> {
    (0..events.len()).map(|i| i.to_string()).collect()
}

/// Applies until the inbox is empty, `max_events` at a time; the reports added up.
fn drain(conn: &mut PgConnection, t: TableId, events: &[Event], max_events: usize) -> StagedReport {
    let mut total = StagedReport::default();
    loop {
        let report =
            apply_staged(conn, t, max_events, usize::MAX, decoder(events), refusal).unwrap();
        if report.taken == 0 {
            return total;
        }
        assert!(report.taken <= max_events, "{report:?}");
        total.taken += report.taken;
        total.counted += report.counted;
        total.duplicates += report.duplicates;
        total.ignored += report.ignored;
        total.refused += report.refused;
    }
}

#[test]
fn staged_events_count_as_if_applied_directly_and_leave_the_inbox() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = events();
    stage_all(&mut conn, t, &indexes(&events), 12);
    assert_eq!(
        staged_count(&mut conn, t).unwrap(),
        i64::try_from(events.len()).unwrap()
    );
    assert_eq!(snapshot(&mut conn, "agno_metrics"), Vec::new());

    let report = drain(&mut conn, t, &events, 50);
    assert_eq!(report.taken, events.len());
    assert_eq!(report.counted, 180);
    assert_eq!(report.duplicates, events.len() - 180);
    assert_eq!(report.refused, 0);
    assert_eq!(staged_count(&mut conn, t).unwrap(), 0);
    assert_eq!(snapshot(&mut conn, "agno_metrics"), reference(&events));
    assert_eq!(
        user_snapshot(&mut conn, "agno_metrics"),
        reference_by_user(&events)
    );
    // Nothing left: a second pass takes nothing and changes nothing.
    assert_eq!(drain(&mut conn, t, &events, 50), StagedReport::default());
}

#[test]
fn a_batch_takes_no_more_bytes_than_asked_but_always_one_event() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let events = events();
    // Bodies of 2 bytes each.
    let bodies: Vec<String> = (10..20).map(|i| i.to_string()).collect();
    stage_all(&mut conn, t, &bodies, 100);
    let take = |conn: &mut PgConnection, bytes| {
        apply_staged(conn, t, 100, bytes, decoder(&events), refusal)
            .unwrap()
            .taken
    };
    // The bytes before the last one taken stay under the bound.
    assert_eq!(take(&mut conn, 5), 3);
    assert_eq!(take(&mut conn, 1), 1);
    assert_eq!(take(&mut conn, 0), 1);
    assert_eq!(take(&mut conn, 1000), 5);
    assert_eq!(take(&mut conn, 1000), 0);
}

#[test]
fn a_refused_event_waits_for_its_dead_letter_and_the_others_count() {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let t = table(&mut conn, "agno_metrics");
    let mut events = events();
    let good = events.len();
    // PostgreSQL cannot store a NUL in text (22021): refused for good.
    events.push(run(
        "poison",
        "2025-07-01T09:00:00Z",
        "r\u{0}1",
        "s1",
        SessionType::Agent,
    ));
    let mut bodies = indexes(&events);
    bodies.push("ignored".to_owned());
    bodies.push("garbage".to_owned());
    stage_all(&mut conn, t, &bodies, 40);
    let poison_body = good.to_string();

    let report = drain(&mut conn, t, &events, 1000);
    assert_eq!(report.taken, events.len() + 2);
    assert_eq!(report.counted, 180);
    assert_eq!(report.ignored, 1);
    assert_eq!(report.refused, 2);
    assert_eq!(
        snapshot(&mut conn, "agno_metrics"),
        reference(&events[..good])
    );

    let refused = refused_events(&mut conn, t, 10).unwrap();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0].event, poison_body.as_bytes());
    assert_eq!(refused[0].routing_key, "agentos.run.completed");
    assert_eq!(refused[0].properties, b"{}");
    assert!(!refused[0].element);
    let reason = refused[0].refused.as_deref().unwrap();
    assert!(
        reason.starts_with("event `poison`: could not be counted"),
        "{reason}"
    );
    assert_eq!(refused[1].event, b"garbage");
    assert_eq!(refused[1].refused.as_deref(), Some("unreadable: garbage"));
    // A refused event is never taken again, and goes once its dead letter is out.
    assert_eq!(drain(&mut conn, t, &events, 1000), StagedReport::default());
    let ids: Vec<i64> = refused.iter().map(|event| event.id).collect();
    assert_eq!(forget(&mut conn, &ids).unwrap(), 2);
    assert!(refused_events(&mut conn, t, 10).unwrap().is_empty());
}

#[test]
fn concurrent_appliers_apply_each_staged_event_once() {
    let db = TestDatabase::migrated();
    let mut events = events();
    events.shuffle(&mut StdRng::seed_from_u64(7));
    let t = table(&mut db.connect(), "agno_metrics");
    let other = table(&mut db.connect(), "other_metrics");
    stage_all(&mut db.connect(), t, &indexes(&events), 7);
    // Another table's inbox is not this one's.
    stage_all(&mut db.connect(), other, &indexes(&events[..5]), 7);
    let workers: Vec<_> = (0..3)
        .map(|worker| {
            let url = db.url().to_owned();
            let events = events.clone();
            thread::spawn(move || {
                let mut conn =
                    <diesel::PgConnection as diesel::Connection>::establish(&url).unwrap();
                drain(&mut conn, t, &events, 5 + worker * 4)
            })
        })
        .collect();
    let reports: Vec<StagedReport> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(
        reports.iter().map(|report| report.taken).sum::<usize>(),
        events.len()
    );
    assert_eq!(
        reports.iter().map(|report| report.counted).sum::<usize>(),
        180
    );
    let mut conn = db.connect();
    assert_eq!(snapshot(&mut conn, "agno_metrics"), reference(&events));
    assert_eq!(staged_count(&mut conn, other).unwrap(), 5);
}
