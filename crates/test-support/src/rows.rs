//! Rows as the rules of `events.md` (and, per user, `agentos-compat.md`) determine them: a
//! snapshot of a metrics table without ids and timestamps, and a plain in-memory computation of
//! the same rows from a set of events, written independently of `apply`, to compare the two.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bigdecimal::BigDecimal;
use chrono::NaiveDate;
use diesel::prelude::*;
use diesel::{PgConnection, QueryResult};
use metrics_aggregator::schema::{metrics_tables, user_daily_metrics};
use metrics_aggregator::{DailyMetrics, DateRange, MetricsPage, ModelCount, read, read_user};
use metrics_events::{Event, EventKind, RunCompleted, SessionType};

/// A day row without its id and timestamps: what the rules determine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    pub date: NaiveDate,
    pub runs: [i64; 3],
    pub sessions: [i64; 3],
    pub users: i64,
    pub tokens: [i64; 9],
    pub cost: BigDecimal,
    pub models: Vec<ModelCount>,
}

impl Day {
    /// A day with nothing counted.
    pub fn empty(date: NaiveDate) -> Self {
        Self {
            date,
            runs: [0; 3],
            sessions: [0; 3],
            users: 0,
            tokens: [0; 9],
            cost: BigDecimal::from(0),
            models: Vec::new(),
        }
    }
}

/// A model count.
pub fn model(model_id: &str, model_provider: &str, count: i64) -> ModelCount {
    ModelCount {
        model_id: model_id.to_owned(),
        model_provider: model_provider.to_owned(),
        count,
    }
}

/// Every row of `table`, ascending by date.
///
/// # Panics
///
/// When the table cannot be read.
pub fn snapshot(conn: &mut PgConnection, table: &str) -> Vec<Day> {
    try_snapshot(conn, table).unwrap()
}

/// Every row of `table`, ascending by date, or the database's error.
///
/// # Errors
///
/// When the table cannot be read.
///
/// # Panics
///
/// When a row's `model_metrics` is not the aggregator's JSON.
pub fn try_snapshot(conn: &mut PgConnection, table: &str) -> QueryResult<Vec<Day>> {
    read(conn, table, DateRange::default()).map(days)
}

fn days(page: MetricsPage) -> Vec<Day> {
    page.rows.iter().map(Day::of).collect()
}

impl Day {
    /// The counted values of a stored row.
    ///
    /// # Panics
    ///
    /// When the row's `model_metrics` is not the aggregator's JSON.
    pub fn of(row: &DailyMetrics) -> Self {
        Day {
            date: row.date,
            runs: row.runs_counts(),
            sessions: row.sessions_counts(),
            users: row.users_count,
            tokens: row.tokens.counts(),
            cost: row.cost.normalized(),
            models: row.models().unwrap(),
            // Ids and timestamps are checked by dedicated tests.
        }
    }
}

/// Every per-user row of `table` by user (`""`: the events without a user), each user's rows
/// ascending by date.
///
/// # Panics
///
/// When the table cannot be read.
pub fn user_snapshot(conn: &mut PgConnection, table: &str) -> BTreeMap<String, Vec<Day>> {
    let users: Vec<String> = user_daily_metrics::table
        .inner_join(metrics_tables::table)
        .filter(metrics_tables::name.eq(table))
        .select(user_daily_metrics::user_id)
        .distinct()
        .load(conn)
        .unwrap();
    users
        .into_iter()
        .map(|user| {
            let page = read_user(conn, table, &user, DateRange::default()).unwrap();
            (user, days(page))
        })
        .collect()
}

fn type_index(session_type: SessionType) -> usize {
    SessionType::ALL
        .iter()
        .position(|t| *t == session_type)
        .unwrap()
}

/// The rows `events.md` defines for a set of events (repeats are ignored), computed the obvious
/// way.
///
/// # Panics
///
/// Never for events that passed validation.
pub fn reference(events: &[Event]) -> Vec<Day> {
    grouped(events, |_| ())
        .into_values()
        .next()
        .unwrap_or_default()
}

/// The per-user rows `agentos-compat.md` defines for a set of events, by user (`""`: the events
/// without a user): a run counts for the user of its winning event, a session for the user of
/// its earliest `session.created` (else, or when that names none, of its earliest run), and a
/// non-empty user's `users_count` is 1 on a day it has an event.
///
/// # Panics
///
/// Never for events that passed validation.
pub fn reference_by_user(events: &[Event]) -> BTreeMap<String, Vec<Day>> {
    grouped(events, str::to_owned)
}

/// The rows of `events` per group of users, `group` naming each user's (`""`: none) group: one
/// constant group gives the all-users rows, the user itself the per-user rows. A group has a row
/// on each day with an event of it or a run or session counted for it.
fn grouped<K: Ord + Clone>(events: &[Event], group: impl Fn(&str) -> K) -> BTreeMap<K, Vec<Day>> {
    let mut distinct: BTreeMap<(String, String), &Event> = BTreeMap::new();
    for event in events {
        distinct.insert((event.source.clone(), event.id.clone()), event);
    }
    let events: Vec<&Event> = distinct.into_values().collect();
    let user = |event: &Event| event.user_id().unwrap_or_default().to_owned();
    let mut days: BTreeMap<(K, NaiveDate), Day> = BTreeMap::new();
    let mut users: BTreeMap<(K, NaiveDate), BTreeSet<String>> = BTreeMap::new();
    for event in &events {
        let key = (group(&user(event)), event.date());
        days.entry(key.clone())
            .or_insert_with(|| Day::empty(event.date()));
        let user = user(event);
        if !user.is_empty() {
            users.entry(key).or_default().insert(user);
        }
    }
    for (key, users) in users {
        days.get_mut(&key).unwrap().users = i64::try_from(users.len()).unwrap();
    }

    // Runs: the earliest event of each run_id counts (then by source, then id).
    let mut runs: HashMap<&str, (&Event, &RunCompleted)> = HashMap::new();
    for event in &events {
        if let EventKind::RunCompleted(run) = &event.kind {
            let key = |e: &Event| (e.time, e.source.clone(), e.id.clone());
            match runs.get(run.run_id.as_str()) {
                Some((kept, _)) if key(kept) <= key(event) => {}
                _ => {
                    runs.insert(&run.run_id, (event, run));
                }
            }
        }
    }
    let mut models: BTreeMap<(K, NaiveDate), BTreeMap<(String, String), i64>> = BTreeMap::new();
    for (event, run) in runs.values() {
        let key = (group(&user(event)), event.date());
        let day = days.get_mut(&key).unwrap();
        day.runs[type_index(run.session_type)] += 1;
        for (sum, count) in day.tokens.iter_mut().zip(run.usage.tokens.counts()) {
            *sum += count;
        }
        day.cost += &run.usage.cost;
        if let Some(model) = &run.model {
            *models
                .entry(key)
                .or_default()
                .entry((
                    model.clone(),
                    run.model_provider.clone().unwrap_or_default(),
                ))
                .or_default() += 1;
        }
    }
    for (key, counts) in models {
        let mut list: Vec<ModelCount> = counts
            .into_iter()
            .map(|((model_id, provider), count)| model(&model_id, &provider, count))
            .collect();
        list.sort_by(|a, b| {
            (b.count, &a.model_id, &a.model_provider).cmp(&(
                a.count,
                &b.model_id,
                &b.model_provider,
            ))
        });
        days.get_mut(&key).unwrap().models = list;
    }

    // Sessions: the day of the earliest event; the type of the earliest session.created, else
    // of the earliest run (ties to the lower type); the user of the earliest session.created
    // when it names one, else of the earliest run (ties to the lower user id).
    let mut sessions: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for event in &events {
        sessions.entry(event.session_id()).or_default().push(event);
    }
    for session_events in sessions.values() {
        let first = session_events.iter().map(|e| e.time).min().unwrap();
        let is_created = |e: &&&Event| matches!(e.kind, EventKind::SessionCreated(_));
        let created = session_events
            .iter()
            .filter(is_created)
            .map(|e| (e.time, e.session_type()))
            .min();
        let from_runs = session_events
            .iter()
            .map(|e| (e.time, e.session_type()))
            .min()
            .unwrap();
        let (_, session_type) = created.unwrap_or(from_runs);
        let created_user = session_events
            .iter()
            .filter(is_created)
            .map(|e| (e.time, user(e)))
            .min()
            .map(|(_, user)| user)
            .filter(|user| !user.is_empty());
        let run_user = session_events
            .iter()
            .filter(|e| !is_created(e))
            .map(|e| (e.time, user(e)))
            .min()
            .map(|(_, user)| user);
        let owner = created_user.or(run_user).unwrap_or_default();
        let date = first.date_naive();
        days.entry((group(&owner), date))
            .or_insert_with(|| Day::empty(date))
            .sessions[type_index(session_type)] += 1;
    }
    let mut grouped: BTreeMap<K, Vec<Day>> = BTreeMap::new();
    for ((key, _), mut day) in days {
        day.cost = day.cost.normalized();
        grouped.entry(key).or_default().push(day);
    }
    grouped
}
