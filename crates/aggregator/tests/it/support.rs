//! Event builders; the row snapshot and the in-memory reference live in `metrics-test-support`.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::PgConnection;
use metrics_aggregator::{TableId, TableName, register_table};
use metrics_events::{Event, EventKind, RunCompleted, SessionCreated, SessionType, Tokens, Usage};
pub use metrics_test_support::rows::{
    Day, model, reference, reference_by_user, snapshot, user_snapshot,
};

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

pub fn day(text: &str) -> NaiveDate {
    text.parse().unwrap()
}

pub fn session(id: &str, time: &str, session_id: &str, session_type: SessionType) -> Event {
    Event {
        source: "agno://test".to_owned(),
        id: id.to_owned(),
        time: at(time),
        kind: EventKind::SessionCreated(SessionCreated {
            session_id: session_id.to_owned(),
            session_type,
            user_id: None,
        }),
    }
}

pub fn run(
    id: &str,
    time: &str,
    run_id: &str,
    session_id: &str,
    session_type: SessionType,
) -> Event {
    Event {
        source: "agno://test".to_owned(),
        id: id.to_owned(),
        time: at(time),
        kind: EventKind::RunCompleted(RunCompleted {
            run_id: run_id.to_owned(),
            session_id: session_id.to_owned(),
            session_type,
            user_id: None,
            parent_run_id: None,
            model: None,
            model_provider: None,
            usage: Usage::default(),
        }),
    }
}

pub fn with_user(mut event: Event, user: &str) -> Event {
    let user_id = Some(user.to_owned());
    match &mut event.kind {
        EventKind::SessionCreated(session) => session.user_id = user_id,
        EventKind::RunCompleted(run) => run.user_id = user_id,
    }
    event
}

pub fn with_model(mut event: Event, model: &str, provider: Option<&str>) -> Event {
    if let EventKind::RunCompleted(run) = &mut event.kind {
        run.model = Some(model.to_owned());
        run.model_provider = provider.map(str::to_owned);
    }
    event
}

pub fn with_usage(mut event: Event, input: i64, output: i64, cost: &str) -> Event {
    if let EventKind::RunCompleted(run) = &mut event.kind {
        run.usage = Usage {
            tokens: Tokens {
                input_tokens: input,
                output_tokens: output,
                total_tokens: input + output,
                audio_tokens: 1,
                input_audio_tokens: 2,
                output_audio_tokens: 3,
                cached_tokens: 4,
                cache_write_tokens: 5,
                reasoning_tokens: 6,
            },
            cost: cost.parse().unwrap(),
        };
    }
    event
}

pub fn table(conn: &mut PgConnection, name: &str) -> TableId {
    register_table(conn, &name.parse::<TableName>().unwrap()).unwrap()
}

/// The stored JSON of every row of `table` (all-users, and each user's), joined as a read joins
/// it, next to the same rows read from their columns and rendered now: `(stored, rendered)`,
/// `stored` being `None` when some row has none.
pub fn stored_and_rendered(conn: &mut PgConnection, table: &str) -> Vec<(Option<String>, String)> {
    use diesel::prelude::*;
    use metrics_aggregator::schema::{metrics_tables, user_daily_metrics};
    let users: Vec<String> = user_daily_metrics::table
        .inner_join(metrics_tables::table)
        .filter(metrics_tables::name.eq(table))
        .select(user_daily_metrics::user_id)
        .distinct()
        .order(user_daily_metrics::user_id)
        .load(conn)
        .unwrap();
    std::iter::once(None)
        .chain(users.iter().map(|user| Some(user.as_str())))
        .map(|user| {
            let range = metrics_aggregator::DateRange::default();
            let mut stored = Vec::new();
            let stored = metrics_aggregator::read_rendered(conn, table, user, range, &mut stored)
                .unwrap()
                .then(|| String::from_utf8(stored).unwrap());
            let rendered: Vec<String> = metrics_aggregator::read_rows(conn, table, user, range)
                .unwrap()
                .iter()
                .map(|row| metrics_aggregator::render_day(row).unwrap())
                .collect();
            (stored, rendered.join(","))
        })
        .collect()
}

/// Asserts that every row of `table` keeps the JSON of its current values.
pub fn assert_rendered(conn: &mut PgConnection, table: &str) {
    for (stored, rendered) in stored_and_rendered(conn, table) {
        assert_eq!(stored.as_deref(), Some(rendered.as_str()), "table {table}");
    }
}
