//! Rows as the rules of `events.md` determine them: a snapshot of a metrics table without ids
//! and timestamps, and a plain in-memory computation of the same rows from a set of events,
//! written independently of `apply`, to compare the two.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bigdecimal::BigDecimal;
use chrono::NaiveDate;
use diesel::{PgConnection, QueryResult};
use metrics_aggregator::{DateRange, ModelCount, read};
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
    let page = read(conn, table, DateRange::default())?;
    Ok(page
        .rows
        .into_iter()
        .map(|row| Day {
            date: row.date,
            runs: row.runs_counts(),
            sessions: row.sessions_counts(),
            users: row.users_count,
            tokens: row.tokens(),
            cost: row.cost.normalized(),
            models: row.models().unwrap(),
            // Ids and timestamps are checked by dedicated tests.
        })
        .collect())
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
    let mut distinct: BTreeMap<(String, String), &Event> = BTreeMap::new();
    for event in events {
        distinct.insert((event.source.clone(), event.id.clone()), event);
    }
    let events: Vec<&Event> = distinct.into_values().collect();
    let mut days: BTreeMap<NaiveDate, Day> = BTreeMap::new();
    let mut users: BTreeMap<NaiveDate, BTreeSet<&str>> = BTreeMap::new();
    for event in &events {
        days.entry(event.date())
            .or_insert_with(|| Day::empty(event.date()));
        if let Some(user) = event.user_id().filter(|u| !u.is_empty()) {
            users.entry(event.date()).or_default().insert(user);
        }
    }
    for (date, users) in users {
        days.get_mut(&date).unwrap().users = i64::try_from(users.len()).unwrap();
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
    let mut models: BTreeMap<NaiveDate, BTreeMap<(String, String), i64>> = BTreeMap::new();
    for (event, run) in runs.values() {
        let day = days.get_mut(&event.date()).unwrap();
        day.runs[type_index(run.session_type)] += 1;
        for (sum, count) in day.tokens.iter_mut().zip(run.usage.tokens()) {
            *sum += count;
        }
        day.cost += &run.usage.cost;
        if let Some(model) = &run.model {
            *models
                .entry(event.date())
                .or_default()
                .entry((
                    model.clone(),
                    run.model_provider.clone().unwrap_or_default(),
                ))
                .or_default() += 1;
        }
    }
    for (date, counts) in models {
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
        days.get_mut(&date).unwrap().models = list;
    }

    // Sessions: the day of the earliest event; the type of the earliest session.created, else
    // of the earliest run (ties to the lower type).
    let mut sessions: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for event in &events {
        sessions.entry(event.session_id()).or_default().push(event);
    }
    for session_events in sessions.values() {
        let first = session_events.iter().map(|e| e.time).min().unwrap();
        let created = session_events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::SessionCreated(_)))
            .map(|e| (e.time, e.session_type()))
            .min();
        let from_runs = session_events
            .iter()
            .map(|e| (e.time, e.session_type()))
            .min()
            .unwrap();
        let (_, session_type) = created.unwrap_or(from_runs);
        days.get_mut(&first.date_naive()).unwrap().sessions[type_index(session_type)] += 1;
    }
    for day in days.values_mut() {
        day.cost = day.cost.normalized();
    }
    days.into_values().collect()
}
