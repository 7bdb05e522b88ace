//! Several appliers at once, on overlapping batches, keep the totals exact.

use std::thread;

use metrics_aggregator::apply;
use metrics_events::{Event, SessionType};
use metrics_test_support::TestDatabase;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::support::{
    reference, reference_by_user, run, session, snapshot, table, user_snapshot, with_usage,
    with_user,
};

fn events() -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..600 {
        let day = 1 + i % 3;
        let hour = i % 24;
        let session_id = format!("s{}", i % 50);
        let session_type = SessionType::ALL[i % 3];
        let time = format!("2025-07-0{day}T{hour:02}:00:00Z");
        let event = if i % 5 == 0 {
            session(&format!("e{i}"), &time, &session_id, session_type)
        } else {
            with_usage(
                run(
                    &format!("e{i}"),
                    &time,
                    &format!("r{}", i % 400),
                    &session_id,
                    session_type,
                ),
                i64::try_from(i).unwrap(),
                1,
                "0.001",
            )
        };
        events.push(with_user(event, &format!("u{}", i % 7)));
    }
    events
}

#[test]
fn concurrent_appliers_of_overlapping_batches_keep_totals_exact() {
    let db = TestDatabase::migrated();
    let events = events();
    let t = table(&mut db.connect(), "agno_metrics");
    let workers: Vec<_> = (0..4u64)
        .map(|seed| {
            let mut mine = events.clone();
            mine.shuffle(&mut StdRng::seed_from_u64(seed));
            let url = db.url().to_owned();
            thread::spawn(move || {
                let mut conn =
                    <diesel::PgConnection as diesel::Connection>::establish(&url).unwrap();
                for batch in mine.chunks(25 + usize::try_from(seed).unwrap() * 10) {
                    apply(&mut conn, t, batch).unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(
        snapshot(&mut db.connect(), "agno_metrics"),
        reference(&events)
    );
    assert_eq!(
        user_snapshot(&mut db.connect(), "agno_metrics"),
        reference_by_user(&events)
    );
}
