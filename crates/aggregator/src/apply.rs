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
//! A batch reads the stored state of the keys it names, folds its events over that state in
//! memory (noting which changed anything), and writes back the changed records and the new day
//! rows. All of it happens under a transaction-level advisory lock per metrics table: every
//! event of a day updates that day's row, so concurrent writers would queue on that row anyway;
//! the lock makes the queue explicit, ordered and free of deadlocks, and lets each statement see
//! the previous writer's committed state without `FOR UPDATE` or retries.

use std::collections::{BTreeMap, HashMap, HashSet};

use bigdecimal::BigDecimal;
use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Date, Integer, Nullable, Numeric, Text, Timestamptz};
use diesel::upsert::excluded;
use metrics_events::{Event, EventKind, SessionType};

use crate::error::ApplyError;
use crate::models::{
    DailyMetrics, DayUser, ModelCount, RunRecord, SessionRecord, StoredSessionType,
    UserDailyMetrics,
};
use crate::schema::{daily_metrics, runs, sessions};
use crate::tables::TableId;

/// The first key of the advisory lock that serialises writers of a metrics table ("metr" as
/// ASCII); the second is the table's id.
pub(crate) const APPLY_LOCK_CLASS: i32 = 0x6d65_7472;

/// Rows per multi-row statement: far below PostgreSQL's 65,535 bind parameters even for the
/// widest table.
const CHUNK_ROWS: usize = 1000;

/// What applying did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// The event changed what is counted.
    Counted,
    /// Everything it says was already counted: a redelivery, a re-sent run, or a later event of
    /// a session already counted on an earlier day by a user already seen that day.
    Duplicate,
}

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

#[derive(QueryableByName)]
struct LockedAt {
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

/// Takes the table's writer lock for the rest of the transaction and returns the time it was
/// granted, which stamps the rows the transaction changes.
///
/// `clock_timestamp()` is read after the lock is granted, so the stamps of one metrics table
/// increase strictly from commit to commit: the table-wide latest `updated_at` changes with every
/// write and readers may use it to tell whether anything changed. (`now()`, the transaction's
/// start, could precede the stamp of a writer that committed while this one waited.)
pub(crate) fn lock_table(conn: &mut PgConnection, table: TableId) -> QueryResult<DateTime<Utc>> {
    diesel::sql_query("SELECT clock_timestamp() AS now FROM pg_advisory_xact_lock($1, $2)")
        .bind::<Integer, _>(APPLY_LOCK_CLASS)
        .bind::<Integer, _>(table.0)
        .get_result::<LockedAt>(conn)
        .map(|locked| locked.now)
}

fn apply_in_transaction(
    conn: &mut PgConnection,
    table: TableId,
    events: &[Event],
) -> Result<ApplyReport, ApplyError> {
    let now = lock_table(conn, table)?;

    // What the batch alone makes of each run and session: its winners and merged sessions.
    // Inserting them where the key is new settles the common case in one statement each;
    // only keys already stored are read back and folded against their stored state.
    let mut alone = Plan::new(table, Vec::new(), Vec::new(), HashSet::new());
    for event in events {
        alone.observe(event);
    }
    let candidate_runs = alone.changed_runs();
    let fresh_runs = insert_new_runs(conn, &candidate_runs)?;
    let stored_run_ids: Vec<&str> = candidate_runs
        .iter()
        .map(|run| run.run_id.as_str())
        .filter(|id| !fresh_runs.contains(*id))
        .collect();
    let stored_runs: Vec<RunRecord> = if stored_run_ids.is_empty() {
        Vec::new()
    } else {
        diesel::sql_query(LOAD_RUNS)
            .bind::<Integer, _>(table.0)
            .bind::<Array<Text>, _>(&stored_run_ids)
            .load(conn)?
    };

    let candidate_sessions = alone.changed_sessions();
    let fresh_sessions = insert_new_sessions(conn, &candidate_sessions)?;
    let stored_session_ids: Vec<&str> = candidate_sessions
        .iter()
        .map(|session| session.session_id.as_str())
        .filter(|id| !fresh_sessions.contains(*id))
        .collect();
    let stored_sessions: Vec<SessionRecord> = if stored_session_ids.is_empty() {
        Vec::new()
    } else {
        diesel::sql_query(LOAD_SESSIONS)
            .bind::<Integer, _>(table.0)
            .bind::<Array<Text>, _>(&stored_session_ids)
            .load(conn)?
    };

    let mut users: Vec<DayUser> = events.iter().map(|event| day_user(table, event)).collect();
    users.sort_unstable();
    users.dedup();
    let new_users: HashSet<DayUser> = diesel::sql_query(INSERT_DAY_USERS)
        .bind::<Integer, _>(table.0)
        .bind::<Array<Date>, _>(users.iter().map(|u| u.date).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(users.iter().map(|u| u.user_id.as_str()).collect::<Vec<_>>())
        .load::<DayUser>(conn)?
        .into_iter()
        .collect();

    let mut plan = Plan::new(table, stored_runs, stored_sessions, new_users);
    let outcomes = events.iter().map(|event| plan.observe(event)).collect();

    let days: Vec<NaiveDate> = plan.days.keys().copied().collect();
    let mut stored_days: HashMap<NaiveDate, DailyMetrics> = daily_metrics::table
        .filter(daily_metrics::table_id.eq(table.0))
        .filter(daily_metrics::date.eq_any(&days))
        .select(DailyMetrics::as_select())
        .load(conn)?
        .into_iter()
        .map(|row| (row.date, row))
        .collect();
    let mut rows = Vec::with_capacity(plan.days.len());
    for (date, delta) in &plan.days {
        if let Some(row) = delta.next_row(table, *date, stored_days.remove(date), now)? {
            rows.push(row);
        }
    }

    // Fresh keys were written above with exactly the state the fold ends with.
    let replaced_runs: Vec<&RunRecord> = plan
        .changed_runs()
        .into_iter()
        .filter(|run| !fresh_runs.contains(&run.run_id))
        .collect();
    let moved_sessions: Vec<&SessionRecord> = plan
        .changed_sessions()
        .into_iter()
        .filter(|session| !fresh_sessions.contains(&session.session_id))
        .collect();
    write_runs(conn, &replaced_runs)?;
    write_sessions(conn, &moved_sessions)?;
    write_days(conn, &rows)?;
    write_user_days(conn, table, &plan.user_days, now)?;
    Ok(ApplyReport { outcomes })
}

/// The stored per-user rows of a batch's (user, day) keys ($1 table id, $2 users, $3 days); see
/// `LOAD_RUNS`.
const LOAD_USER_DAYS: &str = "SELECT m.* FROM unnest($2::text[], $3::date[]) AS k (user_id, date) \
     JOIN user_daily_metrics m ON m.table_id = $1 AND m.user_id = k.user_id AND m.date = k.date";

/// Of a batch's days, those with events naming no user ($1 table id, $2 days).
const NO_USER_DAYS: &str = "SELECT table_id, date, user_id FROM day_users \
     WHERE table_id = $1 AND user_id = '' AND date = ANY($2)";

/// Deletes per-user rows by key ($1 table id, $2 users, $3 days).
const DELETE_USER_DAYS: &str = "DELETE FROM user_daily_metrics m \
     USING unnest($2::text[], $3::date[]) AS k (user_id, date) \
     WHERE m.table_id = $1 AND m.user_id = k.user_id AND m.date = k.date";

/// Applies the per-user deltas: upserts the rows that changed and deletes those left counting
/// nothing for a user who is not active on their day.
fn write_user_days(
    conn: &mut PgConnection,
    table: TableId,
    deltas: &BTreeMap<(String, NaiveDate), DayDelta>,
    now: DateTime<Utc>,
) -> Result<(), ApplyError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let (users, dates): (Vec<&str>, Vec<NaiveDate>) = deltas
        .keys()
        .map(|(user, date)| (user.as_str(), *date))
        .unzip();
    let mut stored: HashMap<(String, NaiveDate), DailyMetrics> = diesel::sql_query(LOAD_USER_DAYS)
        .bind::<Integer, _>(table.0)
        .bind::<Array<Text>, _>(&users)
        .bind::<Array<Date>, _>(&dates)
        .load::<UserDailyMetrics>(conn)?
        .into_iter()
        .map(|row| {
            let (user, row) = row.into_parts();
            ((user, row.date), row)
        })
        .collect();
    let mut upserts = Vec::with_capacity(deltas.len());
    // Rows that count nothing: kept only for the no-user rows of days with events naming no user.
    let mut empty: Vec<(String, DailyMetrics, bool)> = Vec::new();
    for ((user, date), delta) in deltas {
        let previous = stored.remove(&(user.clone(), *date));
        let was_stored = previous.is_some();
        let Some(row) = delta.next_row(table, *date, previous, now)? else {
            continue;
        };
        if row.counts_nothing() {
            empty.push((user.clone(), row, was_stored));
        } else {
            upserts.push(UserDailyMetrics::from_parts(user.clone(), row));
        }
    }
    let mut deletes: Vec<(&str, NaiveDate)> = Vec::new();
    if !empty.is_empty() {
        let no_user_days: Vec<NaiveDate> = empty
            .iter()
            .filter(|(user, _, _)| user.is_empty())
            .map(|(_, row, _)| row.date)
            .collect();
        let active: HashSet<NaiveDate> = if no_user_days.is_empty() {
            HashSet::new()
        } else {
            diesel::sql_query(NO_USER_DAYS)
                .bind::<Integer, _>(table.0)
                .bind::<Array<Date>, _>(&no_user_days)
                .load::<DayUser>(conn)?
                .into_iter()
                .map(|day| day.date)
                .collect()
        };
        for (user, row, was_stored) in &empty {
            if user.is_empty() && active.contains(&row.date) {
                upserts.push(UserDailyMetrics::from_parts(user.clone(), row.clone()));
            } else if *was_stored {
                deletes.push((user.as_str(), row.date));
            }
        }
    }
    for chunk in deletes.chunks(CHUNK_ROWS) {
        let (users, dates): (Vec<&str>, Vec<NaiveDate>) = chunk.iter().copied().unzip();
        diesel::sql_query(DELETE_USER_DAYS)
            .bind::<Integer, _>(table.0)
            .bind::<Array<Text>, _>(&users)
            .bind::<Array<Date>, _>(&dates)
            .execute(conn)?;
    }
    upserts.sort_unstable_by(|a, b| (&a.user_id, a.date).cmp(&(&b.user_id, b.date)));
    write_user_rows(conn, &upserts)?;
    Ok(())
}

/// The stored runs of a batch's run ids ($1 table id, $2 run ids). Joining the unnested keys
/// probes the primary key once per key whatever the statistics say; `run_id = ANY($2)` lets the
/// planner pick a sequential scan that compares every row with every key.
const LOAD_RUNS: &str = "SELECT r.* FROM unnest($2::text[]) AS k (run_id) \
     JOIN runs r ON r.table_id = $1 AND r.run_id = k.run_id";

/// The stored sessions of a batch's session ids ($1 table id, $2 session ids); see `LOAD_RUNS`.
const LOAD_SESSIONS: &str = "SELECT s.* FROM unnest($2::text[]) AS k (session_id) \
     JOIN sessions s ON s.table_id = $1 AND s.session_id = k.session_id";

#[derive(QueryableByName)]
struct InsertedKey {
    #[diesel(sql_type = Text)]
    key: String,
}

/// Inserts the runs whose `run_id` is not stored yet; returns those run ids.
fn insert_new_runs(conn: &mut PgConnection, runs: &[&RunRecord]) -> QueryResult<HashSet<String>> {
    let Some(first) = runs.first() else {
        return Ok(HashSet::new());
    };
    let column = |value: fn(&RunRecord) -> i64| runs.iter().map(|r| value(r)).collect::<Vec<_>>();
    diesel::sql_query(INSERT_RUNS)
        .bind::<Integer, _>(first.table_id)
        .bind::<Array<Text>, _>(runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(runs.iter().map(|r| r.date).collect::<Vec<_>>())
        .bind::<Array<Timestamptz>, _>(runs.iter().map(|r| r.time).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(runs.iter().map(|r| r.source.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(runs.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            runs.iter()
                .map(|r| r.session_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(
            runs.iter()
                .map(|r| r.session_type.0.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            runs.iter().map(|r| r.model.as_deref()).collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            runs.iter()
                .map(|r| r.model_provider.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<BigInt>, _>(column(|r| r.input_tokens))
        .bind::<Array<BigInt>, _>(column(|r| r.output_tokens))
        .bind::<Array<BigInt>, _>(column(|r| r.total_tokens))
        .bind::<Array<BigInt>, _>(column(|r| r.audio_tokens))
        .bind::<Array<BigInt>, _>(column(|r| r.input_audio_tokens))
        .bind::<Array<BigInt>, _>(column(|r| r.output_audio_tokens))
        .bind::<Array<BigInt>, _>(column(|r| r.cached_tokens))
        .bind::<Array<BigInt>, _>(column(|r| r.cache_write_tokens))
        .bind::<Array<BigInt>, _>(column(|r| r.reasoning_tokens))
        .bind::<Array<Numeric>, _>(runs.iter().map(|r| &r.cost).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(runs.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>())
        .load::<InsertedKey>(conn)
        .map(|keys| keys.into_iter().map(|k| k.key).collect())
}

/// Inserts the sessions whose `session_id` is not stored yet; returns those session ids.
fn insert_new_sessions(
    conn: &mut PgConnection,
    sessions: &[&SessionRecord],
) -> QueryResult<HashSet<String>> {
    let Some(first) = sessions.first() else {
        return Ok(HashSet::new());
    };
    diesel::sql_query(INSERT_SESSIONS)
        .bind::<Integer, _>(first.table_id)
        .bind::<Array<Text>, _>(
            sessions
                .iter()
                .map(|s| s.session_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Date>, _>(sessions.iter().map(|s| s.date).collect::<Vec<_>>())
        .bind::<Array<Timestamptz>, _>(sessions.iter().map(|s| s.first_time).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            sessions
                .iter()
                .map(|s| s.session_type.0.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Bool>, _>(sessions.iter().map(|s| s.type_from_run).collect::<Vec<_>>())
        .bind::<Array<Timestamptz>, _>(sessions.iter().map(|s| s.type_time).collect::<Vec<_>>())
        .bind::<Array<Nullable<Timestamptz>>, _>(
            sessions.iter().map(|s| s.created_time).collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            sessions
                .iter()
                .map(|s| s.created_user_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Timestamptz>>, _>(
            sessions
                .iter()
                .map(|s| s.first_run_time)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            sessions
                .iter()
                .map(|s| s.first_run_user_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .load::<InsertedKey>(conn)
        .map(|keys| keys.into_iter().map(|k| k.key).collect())
}

/// New runs, one array per column: a statement of constant text whatever the batch size, where
/// a multi-row `VALUES` list would be parsed and planned anew for every size.
const INSERT_RUNS: &str = "INSERT INTO runs (table_id, run_id, date, time, source, event_id, \
     session_id, session_type, model, model_provider, input_tokens, output_tokens, total_tokens, \
     audio_tokens, input_audio_tokens, output_audio_tokens, cached_tokens, cache_write_tokens, \
     reasoning_tokens, cost, user_id) \
     SELECT $1, * FROM unnest($2::text[], $3::date[], $4::timestamptz[], $5::text[], $6::text[], \
     $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[], $12::int8[], $13::int8[], \
     $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::int8[], $19::int8[], \
     $20::numeric[], $21::text[]) \
     ON CONFLICT (table_id, run_id) DO NOTHING RETURNING run_id AS key";

/// New sessions, one array per column; see `INSERT_RUNS`.
const INSERT_SESSIONS: &str = "INSERT INTO sessions (table_id, session_id, date, first_time, \
     session_type, type_from_run, type_time, created_time, created_user_id, first_run_time, \
     first_run_user_id) \
     SELECT $1, * FROM unnest($2::text[], $3::date[], $4::timestamptz[], $5::text[], \
     $6::bool[], $7::timestamptz[], $8::timestamptz[], $9::text[], $10::timestamptz[], \
     $11::text[]) \
     ON CONFLICT (table_id, session_id) DO NOTHING RETURNING session_id AS key";

/// A batch's distinct (day, user) pairs; returns those not seen before.
const INSERT_DAY_USERS: &str = "INSERT INTO day_users (table_id, date, user_id) \
     SELECT $1, * FROM unnest($2::date[], $3::text[]) \
     ON CONFLICT DO NOTHING RETURNING table_id, date, user_id";

fn day_user(table: TableId, event: &Event) -> DayUser {
    DayUser {
        table_id: table.0,
        date: event.date(),
        user_id: event.user_id().unwrap_or_default().to_owned(),
    }
}

fn write_runs(conn: &mut PgConnection, records: &[&RunRecord]) -> QueryResult<()> {
    for chunk in records.chunks(CHUNK_ROWS) {
        diesel::insert_into(runs::table)
            .values(chunk.to_vec())
            .on_conflict((runs::table_id, runs::run_id))
            .do_update()
            .set((
                runs::date.eq(excluded(runs::date)),
                runs::time.eq(excluded(runs::time)),
                runs::source.eq(excluded(runs::source)),
                runs::event_id.eq(excluded(runs::event_id)),
                runs::session_id.eq(excluded(runs::session_id)),
                runs::session_type.eq(excluded(runs::session_type)),
                runs::model.eq(excluded(runs::model)),
                runs::model_provider.eq(excluded(runs::model_provider)),
                runs::input_tokens.eq(excluded(runs::input_tokens)),
                runs::output_tokens.eq(excluded(runs::output_tokens)),
                runs::total_tokens.eq(excluded(runs::total_tokens)),
                runs::audio_tokens.eq(excluded(runs::audio_tokens)),
                runs::input_audio_tokens.eq(excluded(runs::input_audio_tokens)),
                runs::output_audio_tokens.eq(excluded(runs::output_audio_tokens)),
                runs::cached_tokens.eq(excluded(runs::cached_tokens)),
                runs::cache_write_tokens.eq(excluded(runs::cache_write_tokens)),
                runs::reasoning_tokens.eq(excluded(runs::reasoning_tokens)),
                runs::cost.eq(excluded(runs::cost)),
                runs::user_id.eq(excluded(runs::user_id)),
            ))
            .execute(conn)?;
    }
    Ok(())
}

fn write_sessions(conn: &mut PgConnection, records: &[&SessionRecord]) -> QueryResult<()> {
    for chunk in records.chunks(CHUNK_ROWS) {
        diesel::insert_into(sessions::table)
            .values(chunk.to_vec())
            .on_conflict((sessions::table_id, sessions::session_id))
            .do_update()
            .set((
                sessions::date.eq(excluded(sessions::date)),
                sessions::first_time.eq(excluded(sessions::first_time)),
                sessions::session_type.eq(excluded(sessions::session_type)),
                sessions::type_from_run.eq(excluded(sessions::type_from_run)),
                sessions::type_time.eq(excluded(sessions::type_time)),
                sessions::created_time.eq(excluded(sessions::created_time)),
                sessions::created_user_id.eq(excluded(sessions::created_user_id)),
                sessions::first_run_time.eq(excluded(sessions::first_run_time)),
                sessions::first_run_user_id.eq(excluded(sessions::first_run_user_id)),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Writes whole day rows; a stored row keeps its `id` and `created_at`.
pub(crate) fn write_days(conn: &mut PgConnection, rows: &[DailyMetrics]) -> QueryResult<()> {
    use crate::schema::daily_metrics::dsl::*;
    for chunk in rows.chunks(CHUNK_ROWS) {
        diesel::insert_into(daily_metrics)
            .values(chunk)
            .on_conflict((table_id, date))
            .do_update()
            .set((
                agent_runs_count.eq(excluded(agent_runs_count)),
                agent_sessions_count.eq(excluded(agent_sessions_count)),
                team_runs_count.eq(excluded(team_runs_count)),
                team_sessions_count.eq(excluded(team_sessions_count)),
                workflow_runs_count.eq(excluded(workflow_runs_count)),
                workflow_sessions_count.eq(excluded(workflow_sessions_count)),
                users_count.eq(excluded(users_count)),
                input_tokens.eq(excluded(input_tokens)),
                output_tokens.eq(excluded(output_tokens)),
                total_tokens.eq(excluded(total_tokens)),
                audio_tokens.eq(excluded(audio_tokens)),
                input_audio_tokens.eq(excluded(input_audio_tokens)),
                output_audio_tokens.eq(excluded(output_audio_tokens)),
                cached_tokens.eq(excluded(cached_tokens)),
                cache_write_tokens.eq(excluded(cache_write_tokens)),
                reasoning_tokens.eq(excluded(reasoning_tokens)),
                cost.eq(excluded(cost)),
                model_metrics.eq(excluded(model_metrics)),
                updated_at.eq(excluded(updated_at)),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Writes whole per-user rows; a stored row keeps its `id` and `created_at`.
pub(crate) fn write_user_rows(
    conn: &mut PgConnection,
    rows: &[UserDailyMetrics],
) -> QueryResult<()> {
    use crate::schema::user_daily_metrics::dsl::*;
    for chunk in rows.chunks(CHUNK_ROWS) {
        diesel::insert_into(user_daily_metrics)
            .values(chunk)
            .on_conflict((table_id, user_id, date))
            .do_update()
            .set((
                agent_runs_count.eq(excluded(agent_runs_count)),
                agent_sessions_count.eq(excluded(agent_sessions_count)),
                team_runs_count.eq(excluded(team_runs_count)),
                team_sessions_count.eq(excluded(team_sessions_count)),
                workflow_runs_count.eq(excluded(workflow_runs_count)),
                workflow_sessions_count.eq(excluded(workflow_sessions_count)),
                users_count.eq(excluded(users_count)),
                input_tokens.eq(excluded(input_tokens)),
                output_tokens.eq(excluded(output_tokens)),
                total_tokens.eq(excluded(total_tokens)),
                audio_tokens.eq(excluded(audio_tokens)),
                input_audio_tokens.eq(excluded(input_audio_tokens)),
                output_audio_tokens.eq(excluded(output_audio_tokens)),
                cached_tokens.eq(excluded(cached_tokens)),
                cache_write_tokens.eq(excluded(cache_write_tokens)),
                reasoning_tokens.eq(excluded(reasoning_tokens)),
                cost.eq(excluded(cost)),
                model_metrics.eq(excluded(model_metrics)),
                updated_at.eq(excluded(updated_at)),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// The in-memory fold of a batch over the stored state of the keys it names.
struct Plan {
    table: TableId,
    runs: HashMap<String, (RunRecord, bool)>,
    sessions: HashMap<String, (SessionRecord, bool)>,
    new_users: HashSet<DayUser>,
    days: BTreeMap<NaiveDate, DayDelta>,
    /// The same changes by (user, day).
    user_days: BTreeMap<(String, NaiveDate), DayDelta>,
}

impl Plan {
    fn new(
        table: TableId,
        runs: Vec<RunRecord>,
        sessions: Vec<SessionRecord>,
        new_users: HashSet<DayUser>,
    ) -> Self {
        Self {
            table,
            runs: runs
                .into_iter()
                .map(|run| (run.run_id.clone(), (run, false)))
                .collect(),
            sessions: sessions
                .into_iter()
                .map(|session| (session.session_id.clone(), (session, false)))
                .collect(),
            new_users,
            days: BTreeMap::new(),
            user_days: BTreeMap::new(),
        }
    }

    /// Folds one event into the state and the day deltas.
    fn observe(&mut self, event: &Event) -> EventOutcome {
        let mut counted = false;
        if let EventKind::RunCompleted(run) = &event.kind {
            let candidate = RunRecord {
                table_id: self.table.0,
                run_id: run.run_id.clone(),
                date: event.date(),
                time: event.time,
                source: event.source.clone(),
                event_id: event.id.clone(),
                session_id: run.session_id.clone(),
                session_type: StoredSessionType(run.session_type),
                model: run.model.clone(),
                model_provider: run
                    .model
                    .as_ref()
                    .map(|_| run.model_provider.clone().unwrap_or_default()),
                input_tokens: run.usage.input_tokens,
                output_tokens: run.usage.output_tokens,
                total_tokens: run.usage.total_tokens,
                audio_tokens: run.usage.audio_tokens,
                input_audio_tokens: run.usage.input_audio_tokens,
                output_audio_tokens: run.usage.output_audio_tokens,
                cached_tokens: run.usage.cached_tokens,
                cache_write_tokens: run.usage.cache_write_tokens,
                reasoning_tokens: run.usage.reasoning_tokens,
                cost: run.usage.cost.clone(),
                user_id: event.user_id().unwrap_or_default().to_owned(),
            };
            counted |= self.observe_run(candidate);
        }
        counted |= self.observe_session(event);
        let user = day_user(self.table, event);
        if self.new_users.remove(&user) {
            let active = i64::from(!user.user_id.is_empty());
            self.days.entry(user.date).or_default().users += active;
            self.user_days
                .entry((user.user_id, user.date))
                .or_default()
                .users += active;
            counted = true;
        }
        if counted {
            EventOutcome::Counted
        } else {
            EventOutcome::Duplicate
        }
    }

    fn observe_run(&mut self, candidate: RunRecord) -> bool {
        match self.runs.get_mut(&candidate.run_id) {
            Some((stored, _)) if stored.precedence() <= candidate.precedence() => false,
            Some((stored, dirty)) => {
                let replaced = std::mem::replace(stored, candidate);
                *dirty = true;
                let current = stored.clone();
                self.add_run(&replaced, -1);
                self.add_run(&current, 1);
                true
            }
            None => {
                self.add_run(&candidate, 1);
                self.runs
                    .insert(candidate.run_id.clone(), (candidate, true));
                true
            }
        }
    }

    fn add_run(&mut self, run: &RunRecord, sign: i64) {
        self.days.entry(run.date).or_default().add_run(run, sign);
        self.user_days
            .entry((run.user_id.clone(), run.date))
            .or_default()
            .add_run(run, sign);
    }

    fn observe_session(&mut self, event: &Event) -> bool {
        let type_from_run = matches!(event.kind, EventKind::RunCompleted(_));
        let mut observed = SessionRecord {
            table_id: self.table.0,
            session_id: event.session_id().to_owned(),
            date: event.date(),
            first_time: event.time,
            session_type: StoredSessionType(event.session_type()),
            type_from_run,
            type_time: event.time,
            created_time: None,
            created_user_id: None,
            first_run_time: None,
            first_run_user_id: None,
        };
        let user = Some(event.user_id().unwrap_or_default().to_owned());
        if type_from_run {
            observed.first_run_time = Some(event.time);
            observed.first_run_user_id = user;
        } else {
            observed.created_time = Some(event.time);
            observed.created_user_id = user;
        }
        match self.sessions.get_mut(event.session_id()) {
            None => {
                self.add_session(&observed, 1);
                self.sessions
                    .insert(observed.session_id.clone(), (observed, true));
                true
            }
            Some((stored, dirty)) => {
                let merged = merge_session(stored, &observed);
                if merged == *stored {
                    return false;
                }
                let previous = std::mem::replace(stored, merged);
                *dirty = true;
                let current = stored.clone();
                let counted_as =
                    |s: &SessionRecord| (s.date, s.session_type, s.user_id().to_owned());
                if counted_as(&previous) != counted_as(&current) {
                    self.add_session(&previous, -1);
                    self.add_session(&current, 1);
                }
                true
            }
        }
    }

    fn add_session(&mut self, session: &SessionRecord, sign: i64) {
        let index = type_index(session.session_type.0);
        self.days.entry(session.date).or_default().sessions[index] += sign;
        self.user_days
            .entry((session.user_id().to_owned(), session.date))
            .or_default()
            .sessions[index] += sign;
    }

    fn changed_runs(&self) -> Vec<&RunRecord> {
        let mut changed: Vec<&RunRecord> = self
            .runs
            .values()
            .filter(|(_, dirty)| *dirty)
            .map(|(run, _)| run)
            .collect();
        changed.sort_unstable_by(|a, b| a.run_id.cmp(&b.run_id));
        changed
    }

    fn changed_sessions(&self) -> Vec<&SessionRecord> {
        let mut changed: Vec<&SessionRecord> = self
            .sessions
            .values()
            .filter(|(_, dirty)| *dirty)
            .map(|(session, _)| session)
            .collect();
        changed.sort_unstable_by(|a, b| a.session_id.cmp(&b.session_id));
        changed
    }
}

/// The state of a session after also seeing `observed`: the earliest time overall, the type of
/// the earliest `session.created` (else of the earliest run), ties to the lower type, and the
/// earliest `session.created` and run with their users, ties to the lower user id.
fn merge_session(stored: &SessionRecord, observed: &SessionRecord) -> SessionRecord {
    let first_time = stored.first_time.min(observed.first_time);
    let type_key = |s: &SessionRecord| (s.type_from_run, s.type_time, s.session_type.0);
    let typed_by = if type_key(observed) < type_key(stored) {
        observed
    } else {
        stored
    };
    SessionRecord {
        table_id: stored.table_id,
        session_id: stored.session_id.clone(),
        date: first_time.date_naive(),
        first_time,
        session_type: typed_by.session_type,
        type_from_run: typed_by.type_from_run,
        type_time: typed_by.type_time,
        created_time: None,
        created_user_id: None,
        first_run_time: None,
        first_run_user_id: None,
    }
    .with_users(
        earliest(
            (&stored.created_time, &stored.created_user_id),
            (&observed.created_time, &observed.created_user_id),
        ),
        earliest(
            (&stored.first_run_time, &stored.first_run_user_id),
            (&observed.first_run_time, &observed.first_run_user_id),
        ),
    )
}

/// A time and the user seen at it, when any.
type Sighting = (Option<DateTime<Utc>>, Option<String>);

/// The earlier of two sightings (`None` is no sighting), ties to the lower user id.
fn earliest(
    a: (&Option<DateTime<Utc>>, &Option<String>),
    b: (&Option<DateTime<Utc>>, &Option<String>),
) -> Sighting {
    let key = |(time, user): (&Option<DateTime<Utc>>, &Option<String>)| {
        time.map(|time| (time, user.clone().unwrap_or_default()))
    };
    match (key(a), key(b)) {
        (Some(a), Some(b)) => {
            let (time, user) = a.min(b);
            (Some(time), Some(user))
        }
        (Some((time, user)), None) | (None, Some((time, user))) => (Some(time), Some(user)),
        (None, None) => (None, None),
    }
}

impl SessionRecord {
    fn with_users(mut self, created: Sighting, first_run: Sighting) -> Self {
        (self.created_time, self.created_user_id) = created;
        (self.first_run_time, self.first_run_user_id) = first_run;
        self
    }
}

fn type_index(session_type: SessionType) -> usize {
    match session_type {
        SessionType::Agent => 0,
        SessionType::Team => 1,
        SessionType::Workflow => 2,
    }
}

/// What a batch changes on one day.
#[derive(Debug, Default)]
struct DayDelta {
    runs: [i64; 3],
    sessions: [i64; 3],
    users: i64,
    tokens: [i128; 9],
    cost: BigDecimal,
    models: BTreeMap<(String, String), i64>,
}

impl DayDelta {
    fn add_run(&mut self, run: &RunRecord, sign: i64) {
        self.runs[type_index(run.session_type.0)] += sign;
        for (sum, count) in self.tokens.iter_mut().zip(run.tokens()) {
            *sum += i128::from(sign) * i128::from(count);
        }
        if sign > 0 {
            self.cost += &run.cost;
        } else {
            self.cost -= &run.cost;
        }
        if let Some(model) = &run.model {
            let provider = run.model_provider.clone().unwrap_or_default();
            *self.models.entry((model.clone(), provider)).or_default() += sign;
        }
    }

    /// The day's row after this delta, or `None` when a stored row does not change.
    fn next_row(
        &self,
        table: TableId,
        date: NaiveDate,
        stored: Option<DailyMetrics>,
        now: DateTime<Utc>,
    ) -> Result<Option<DailyMetrics>, ApplyError> {
        let overflow = || ApplyError::Overflow { date };
        let is_new = stored.is_none();
        let mut row = stored.unwrap_or_else(|| DailyMetrics::empty(table.0, date, now));
        let before = row.clone();
        for (session_type, (runs, sessions)) in SessionType::ALL
            .into_iter()
            .zip(self.runs.iter().zip(&self.sessions))
        {
            *row.runs_count_mut(session_type) += runs;
            *row.sessions_count_mut(session_type) += sessions;
        }
        row.users_count += self.users;
        for (sum, delta) in row.tokens_mut().into_iter().zip(self.tokens) {
            *sum = i64::try_from(i128::from(*sum) + delta).map_err(|_| overflow())?;
        }
        row.cost += &self.cost;
        if !self.models.is_empty() {
            row.model_metrics = merge_models(&row.model_metrics, &self.models);
        }
        if !is_new && row == before {
            return Ok(None);
        }
        row.updated_at = now;
        Ok(Some(row))
    }
}

/// Adds per-(model, provider) deltas to a stored `model_metrics` list and renders it in the
/// contract's order: count descending, then model id and provider in byte order (the order the
/// rebuild's `COLLATE "C"` produces).
fn merge_models(
    stored: &serde_json::Value,
    deltas: &BTreeMap<(String, String), i64>,
) -> serde_json::Value {
    let mut counts: BTreeMap<(String, String), i64> =
        serde_json::from_value::<Vec<ModelCount>>(stored.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|model| ((model.model_id, model.model_provider), model.count))
            .collect();
    for (key, delta) in deltas {
        *counts.entry(key.clone()).or_default() += delta;
    }
    let mut models: Vec<ModelCount> = counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|((model_id, model_provider), count)| ModelCount {
            model_id,
            model_provider,
            count,
        })
        .collect();
    models.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.model_id.cmp(&b.model_id))
            .then_with(|| a.model_provider.cmp(&b.model_provider))
    });
    serde_json::to_value(models).unwrap_or_default()
}
