//! Applying a batch of events to the daily rows, in one transaction, idempotently.
//!
//! The rows are a function of the set of distinct events (`events.md`), kept exact by storing, per
//! metrics table, the state each rule needs:
//!
//! - `runs`: the counted event of each `run_id`. When several events name one run, the earliest
//!   (then by source, then id) counts, whatever order they arrive in; a late but earlier one
//!   takes the run's place and the days move their counts accordingly.
//! - `sessions`: each session's earliest event time (its day) and the event its type comes from
//!   (the earliest `session.created`, else the earliest run; ties go to the lower type).
//! - `day_users`: each day's distinct user ids (`""` for events naming none, so that a day with
//!   events always has a row).
//!
//! The same fold keeps the per-user rows (`user_daily_metrics`, `agentos-compat.md`): a run
//! counts for the user of its winning event (`runs.user_id`), a session for its user (the user
//! of its earliest `session.created`, else of its earliest run: `sessions.created_*` and
//! `sessions.first_run_*`), and each day's user is active on that day. Every change to an
//! all-users day is also made to exactly one user's day, so the per-user rows of a day always add
//! up to the all-users row. A per-user row that ends up counting nothing for a user who is not
//! active that day is deleted.
//!
//! A batch reads the stored state of every key it names in one statement (`store.rs`: its runs,
//! its sessions, and whether its (day, user) pairs are new), folds its events over that state in
//! memory once (`plan.rs`, noting which changed anything), reads the day rows the fold changed
//! in one more, and writes back everything that changed in a third: the changed records (new
//! ones with plain inserts, changed ones over the stored rows) and day rows. Between `BEGIN` and
//! `COMMIT` a batch is four statements, with the lock, whatever its size. All of it happens under
//! a transaction-level advisory lock per metrics table: every event of a day updates that day's
//! row, so concurrent writers would queue on that row anyway; the lock makes the queue explicit,
//! ordered and free of deadlocks, and lets each statement see the previous writer's committed
//! state without `FOR UPDATE` or retries, and insert the keys it found missing without checking
//! for conflicts: no other writer of the table runs meanwhile (`rebuild` and refreshes take the
//! same lock).

use std::collections::HashSet;

use diesel::prelude::*;
use metrics_events::{Event, EventKind};

use crate::error::ApplyError;
use crate::models::{DailyMetrics, DayUser};
use crate::plan::{DayKey, EventOutcome, Plan, Scope, day_user};
use crate::store::{self, ChangedDays, ChangedRecords, RowTable};
use crate::tables::TableId;

/// The outcome of [`apply`]: one [`EventOutcome`] per event, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The outcome of each event.
    pub outcomes: Vec<EventOutcome>,
}

impl ApplyReport {
    /// How many events changed what is counted.
    pub fn counted(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|outcome| **outcome == EventOutcome::Counted)
            .count()
    }

    /// How many events changed nothing.
    pub fn duplicates(&self) -> usize {
        self.outcomes.len() - self.counted()
    }
}

/// Applies `events` to metrics table `table` in one transaction.
///
/// Applying any events again, in any order or grouping, changes nothing; several callers may
/// apply at once.
///
/// # Errors
///
/// [`ApplyError`]; nothing was written. [`ApplyError::is_transient`] says whether to retry.
pub fn apply(
    conn: &mut PgConnection,
    table: TableId,
    events: &[Event],
) -> Result<ApplyReport, ApplyError> {
    if events.is_empty() {
        return Ok(ApplyReport::default());
    }
    conn.transaction(|conn| apply_in_transaction(conn, table, events))
}

pub(crate) fn apply_in_transaction(
    conn: &mut PgConnection,
    table: TableId,
    events: &[Event],
) -> Result<ApplyReport, ApplyError> {
    let now = store::lock_table(conn, table)?;

    // The stored state of every key the batch names, read in one statement; the fold then runs
    // once, over that state, and says which records are new and which changed.
    let mut run_ids: Vec<&str> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::RunCompleted(run) => Some(run.run_id.as_str()),
            EventKind::SessionCreated(_) => None,
        })
        .collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    let mut session_ids: Vec<&str> = events.iter().map(Event::session_id).collect();
    session_ids.sort_unstable();
    session_ids.dedup();
    let mut users: Vec<DayUser> = events.iter().map(|event| day_user(table, event)).collect();
    users.sort_unstable();
    users.dedup();
    let stored = store::load_state(conn, table, &run_ids, &session_ids, &users)?;
    let stored_run_ids: HashSet<String> =
        stored.runs.iter().map(|run| run.run_id.clone()).collect();
    let stored_session_ids: HashSet<String> = stored
        .sessions
        .iter()
        .map(|session| session.session_id.clone())
        .collect();

    let mut plan = Plan::new(table, stored.runs, stored.sessions, stored.new_users);
    let outcomes = events.iter().map(|event| plan.observe(event)).collect();

    let mut records = ChangedRecords::default();
    for run in plan.changed_runs() {
        if stored_run_ids.contains(&run.run_id) {
            records.replaced_runs.push(run);
        } else {
            records.new_runs.push(run);
        }
    }
    for session in plan.changed_sessions() {
        if stored_session_ids.contains(&session.session_id) {
            records.moved_sessions.push(session);
        } else {
            records.new_sessions.push(session);
        }
    }
    let days = changed_days(conn, table, &plan, now)?;
    store::write_changes(conn, table, &records, &days)?;
    Ok(ApplyReport { outcomes })
}

/// The day rows the plan's deltas change, read and computed: rows to write (in key order, the
/// order every writer locks them in) and per-user rows to delete, those left counting nothing for
/// a user who is not active on their day (a day with events always keeps its all-users row, and
/// its no-user row while it has events naming no user).
fn changed_days<'p>(
    conn: &mut PgConnection,
    table: TableId,
    plan: &'p Plan,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ChangedDays<'p>, ApplyError> {
    let keys: Vec<&DayKey> = plan.deltas.keys().collect();
    let mut stored = store::load_day_rows(conn, table, &keys)?;
    let mut days = ChangedDays::default();
    // Per-user rows that count nothing, and whether they are stored.
    let mut empty: Vec<(&Scope, DailyMetrics, bool)> = Vec::new();
    // In key order: the all-users rows first (`Scope::AllUsers` sorts first), then each user's.
    for ((scope, date), delta) in &plan.deltas {
        let previous = stored.remove(&(scope.clone(), *date));
        let was_stored = previous.is_some();
        let Some(row) = delta.next_row(table, *date, previous, now)? else {
            continue;
        };
        match RowTable::of(scope) {
            RowTable::AllUsers => days.all_users.push((scope, row)),
            RowTable::PerUser if row.counts_nothing() => empty.push((scope, row, was_stored)),
            RowTable::PerUser => days.per_user.push((scope, row)),
        }
    }
    if empty.is_empty() {
        return Ok(days);
    }
    let no_user = Scope::User(String::new());
    let no_user_days: Vec<_> = empty
        .iter()
        .filter(|(scope, _, _)| **scope == no_user)
        .map(|(_, row, _)| row.date)
        .collect();
    let active = store::no_user_days(conn, table, &no_user_days)?;
    for (scope, row, was_stored) in empty {
        if *scope == no_user && active.contains(&row.date) {
            days.per_user.push((scope, row));
        } else if was_stored {
            days.deleted.push((scope.user(), row.date));
        }
    }
    days.per_user
        .sort_unstable_by(|a, b| (a.0, a.1.date).cmp(&(b.0, b.1.date)));
    Ok(days)
}
