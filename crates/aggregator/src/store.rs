//! The store of [`crate::apply`]: the statements that read the state a batch's plan folds over
//! and write back what it changed. The statements that carry most rows (new runs, sessions and
//! (day, user) pairs, replaced runs, day rows) take their values as one array per column
//! (`unnest`): their text is constant whatever the batch size, so PostgreSQL parses and plans
//! them alike for every batch, and a batch costs one round trip per statement, not per row.
//! Sessions that move (rare) are written with diesel's multi-row `VALUES`.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::deserialize::QueryableByName;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{
    Array, BigInt, Bool, Date, Integer, Jsonb, Nullable, Numeric, Text, Timestamptz, Uuid,
};
use diesel::upsert::excluded;
use metrics_events::Tokens;

use crate::models::{
    COUNT_COLUMNS, DailyMetrics, DayUser, RunRecord, SessionRecord, UserDailyMetrics,
};
use crate::plan::{DayKey, Scope};
use crate::render::render_day;
use crate::schema::{daily_metrics, sessions, user_daily_metrics};
use crate::tables::TableId;

/// The first key of the advisory lock that serialises writers of a metrics table ("metr" as
/// ASCII); the second is the table's id.
pub(crate) const APPLY_LOCK_CLASS: i32 = 0x6d65_7472;

/// Rows per multi-row statement: far below PostgreSQL's 65,535 bind parameters even for the
/// widest table.
const CHUNK_ROWS: usize = 1000;

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

/// Of a batch's days, those with events naming no user ($1 table id, $2 days).
const NO_USER_DAYS: &str = "SELECT table_id, date, user_id FROM day_users \
     WHERE table_id = $1 AND user_id = '' AND date = ANY($2)";

/// Deletes per-user rows by key ($1 table id, $2 users, $3 days).
const DELETE_USER_DAYS: &str = "DELETE FROM user_daily_metrics m \
     USING unnest($2::text[], $3::date[]) AS k (user_id, date) \
     WHERE m.table_id = $1 AND m.user_id = k.user_id AND m.date = k.date";

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

/// Inserts the sessions whose `session_id` is not stored yet; returns those session ids.
pub(crate) fn insert_new_sessions(
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

/// New sessions, one array per column; see [`RunStatements`].
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

/// Writes whole sessions over the stored ones.
pub(crate) fn write_sessions(
    conn: &mut PgConnection,
    records: &[&SessionRecord],
) -> QueryResult<()> {
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

/// Of `days`, those with events naming no user ($1 table id, $2 days).
pub(crate) fn no_user_days(
    conn: &mut PgConnection,
    table: TableId,
    days: &[NaiveDate],
) -> QueryResult<HashSet<NaiveDate>> {
    if days.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(diesel::sql_query(NO_USER_DAYS)
        .bind::<Integer, _>(table.0)
        .bind::<Array<Date>, _>(days)
        .load::<DayUser>(conn)?
        .into_iter()
        .map(|day| day.date)
        .collect())
}

/// Deletes per-user rows by (user, day).
pub(crate) fn delete_user_rows(
    conn: &mut PgConnection,
    table: TableId,
    keys: &[(&str, NaiveDate)],
) -> QueryResult<()> {
    for chunk in keys.chunks(CHUNK_ROWS) {
        let (users, dates): (Vec<&str>, Vec<NaiveDate>) = chunk.iter().copied().unzip();
        diesel::sql_query(DELETE_USER_DAYS)
            .bind::<Integer, _>(table.0)
            .bind::<Array<Text>, _>(&users)
            .bind::<Array<Date>, _>(&dates)
            .execute(conn)?;
    }
    Ok(())
}

/// The stored runs of `run_ids`.
pub(crate) fn load_runs(
    conn: &mut PgConnection,
    table: TableId,
    run_ids: &[&str],
) -> QueryResult<Vec<RunRecord>> {
    load_by_keys(conn, LOAD_RUNS, table, run_ids)
}

/// The stored sessions of `session_ids`.
pub(crate) fn load_sessions(
    conn: &mut PgConnection,
    table: TableId,
    session_ids: &[&str],
) -> QueryResult<Vec<SessionRecord>> {
    load_by_keys(conn, LOAD_SESSIONS, table, session_ids)
}

/// The records `sql` reads for `keys` ($1 table id, $2 keys).
fn load_by_keys<T: QueryableByName<Pg> + 'static>(
    conn: &mut PgConnection,
    sql: &str,
    table: TableId,
    keys: &[&str],
) -> QueryResult<Vec<T>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(sql)
        .bind::<Integer, _>(table.0)
        .bind::<Array<Text>, _>(keys)
        .load(conn)
}

/// Inserts the (day, user) pairs of a batch; returns those that were not stored yet.
pub(crate) fn insert_day_users(
    conn: &mut PgConnection,
    table: TableId,
    users: &[DayUser],
) -> QueryResult<HashSet<DayUser>> {
    Ok(diesel::sql_query(INSERT_DAY_USERS)
        .bind::<Integer, _>(table.0)
        .bind::<Array<Date>, _>(users.iter().map(|u| u.date).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(users.iter().map(|u| u.user_id.as_str()).collect::<Vec<_>>())
        .load::<DayUser>(conn)?
        .into_iter()
        .collect())
}

/// `INSERT INTO {table} (table_id, {columns}) SELECT $1, * FROM unnest($2::{type}[], ...)`: one
/// array per column, bound from `$2` on in the order of `columns` (name, SQL type), then
/// `ON CONFLICT ({conflict})`: `DO NOTHING RETURNING {returning} AS key` when `returning` names a
/// column, else `DO UPDATE` of every column but those in `keep`.
fn insert_from_arrays(
    table: &str,
    columns: &[(&str, &str)],
    conflict: &str,
    keep: &[&str],
    returning: Option<&str>,
) -> String {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 2))
        .collect();
    let action = match returning {
        Some(key) => format!("DO NOTHING RETURNING {key} AS key"),
        None => {
            let updates: Vec<String> = names
                .iter()
                .filter(|name| !keep.contains(name))
                .map(|name| format!("{name} = excluded.{name}"))
                .collect();
            format!("DO UPDATE SET {}", updates.join(", "))
        }
    };
    format!(
        "INSERT INTO {table} (table_id, {names}) SELECT $1, * FROM unnest({arrays}) \
         ON CONFLICT ({conflict}) {action}",
        names = names.join(", "),
        arrays = arrays.join(", "),
    )
}

/// The columns of a run after its table id, with their SQL types.
fn run_columns() -> Vec<(&'static str, &'static str)> {
    let mut columns = vec![
        ("run_id", "text"),
        ("date", "date"),
        ("time", "timestamptz"),
        ("source", "text"),
        ("event_id", "text"),
        ("session_id", "text"),
        ("session_type", "text"),
        ("model", "text"),
        ("model_provider", "text"),
    ];
    columns.extend(Tokens::NAMES.map(|name| (name, "int8")));
    columns.extend([("cost", "numeric"), ("user_id", "text")]);
    columns
}

/// The statements that write runs, one array per column: their text is constant whatever the
/// batch size, where a multi-row `VALUES` list would be parsed and planned anew for every size.
struct RunStatements {
    /// Inserts the runs whose `run_id` is not stored yet and returns those run ids.
    insert_new: String,
    /// Writes whole runs, replacing the stored ones.
    upsert: String,
}

static RUN_STATEMENTS: LazyLock<RunStatements> = LazyLock::new(|| {
    let columns = run_columns();
    let conflict = "table_id, run_id";
    RunStatements {
        insert_new: insert_from_arrays("runs", &columns, conflict, &[], Some("run_id")),
        upsert: insert_from_arrays("runs", &columns, conflict, &["run_id"], None),
    }
});

/// Binds the columns of `runs` (see [`run_columns`]) after the table id.
fn bind_runs<'a>(
    sql: &str,
    table: TableId,
    runs: &'a [&RunRecord],
) -> BoxedSqlQuery<'a, Pg, SqlQuery> {
    let mut query = diesel::sql_query(sql)
        .into_boxed::<Pg>()
        .bind::<Integer, _>(table.0)
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
        );
    for index in 0..Tokens::NAMES.len() {
        query = query.bind::<Array<BigInt>, _>(
            runs.iter()
                .map(|r| r.tokens.0.counts()[index])
                .collect::<Vec<_>>(),
        );
    }
    query
        .bind::<Array<Numeric>, _>(runs.iter().map(|r| &r.cost).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(runs.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>())
}

/// Inserts the runs whose `run_id` is not stored yet; returns those run ids.
pub(crate) fn insert_new_runs(
    conn: &mut PgConnection,
    table: TableId,
    runs: &[&RunRecord],
) -> QueryResult<HashSet<String>> {
    if runs.is_empty() {
        return Ok(HashSet::new());
    }
    bind_runs(&RUN_STATEMENTS.insert_new, table, runs)
        .load::<InsertedKey>(conn)
        .map(|keys| keys.into_iter().map(|k| k.key).collect())
}

/// Writes whole runs over the stored ones.
pub(crate) fn write_runs(
    conn: &mut PgConnection,
    table: TableId,
    runs: &[&RunRecord],
) -> QueryResult<()> {
    if runs.is_empty() {
        return Ok(());
    }
    bind_runs(&RUN_STATEMENTS.upsert, table, runs).execute(conn)?;
    Ok(())
}

/// The two tables of day rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowTable {
    /// `daily_metrics`, keyed by day.
    AllUsers,
    /// `user_daily_metrics`, keyed by user and day.
    PerUser,
}

impl RowTable {
    /// The table that holds the rows of `scope`.
    pub fn of(scope: &Scope) -> Self {
        match scope {
            Scope::AllUsers => RowTable::AllUsers,
            Scope::User(_) => RowTable::PerUser,
        }
    }

    /// Writes whole rows; a stored row keeps its `id` and `created_at`.
    fn upsert(self) -> &'static str {
        static UPSERTS: LazyLock<[String; 2]> = LazyLock::new(|| {
            let mut columns = vec![("date", "date"), ("id", "uuid")];
            columns.extend(COUNT_COLUMNS.map(|name| (name, "int8")));
            columns.extend(Tokens::NAMES.map(|name| (name, "int8")));
            columns.extend([
                ("cost", "numeric"),
                ("model_metrics", "jsonb"),
                ("created_at", "timestamptz"),
                ("updated_at", "timestamptz"),
                ("rendered", "text"),
            ]);
            let keep = ["date", "id", "created_at"];
            let all_users =
                insert_from_arrays("daily_metrics", &columns, "table_id, date", &keep, None);
            columns.insert(0, ("user_id", "text"));
            let per_user = insert_from_arrays(
                "user_daily_metrics",
                &columns,
                "table_id, user_id, date",
                &["user_id", "date", "id", "created_at"],
                None,
            );
            [all_users, per_user]
        });
        &UPSERTS[self as usize]
    }
}

/// The stored rows of `keys`, all of one [`RowTable`] (and perhaps some more of the same users and
/// days).
pub(crate) fn load_rows(
    conn: &mut PgConnection,
    table: TableId,
    rows: RowTable,
    keys: &[&DayKey],
) -> QueryResult<HashMap<DayKey, DailyMetrics>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut dates: Vec<NaiveDate> = keys.iter().map(|(_, date)| *date).collect();
    dates.sort_unstable();
    dates.dedup();
    Ok(match rows {
        RowTable::AllUsers => daily_metrics::table
            .filter(daily_metrics::table_id.eq(table.0))
            .filter(daily_metrics::date.eq_any(&dates))
            .select(DailyMetrics::as_select())
            .load(conn)?
            .into_iter()
            .map(|row| ((Scope::AllUsers, row.date), row))
            .collect(),
        RowTable::PerUser => {
            let mut users: Vec<&str> = keys.iter().map(|(scope, _)| scope.user()).collect();
            users.sort_unstable();
            users.dedup();
            user_daily_metrics::table
                .filter(user_daily_metrics::table_id.eq(table.0))
                .filter(user_daily_metrics::user_id.eq_any(&users))
                .filter(user_daily_metrics::date.eq_any(&dates))
                .select(UserDailyMetrics::as_select())
                .load(conn)?
                .into_iter()
                .map(|user_row| {
                    let (user, row) = user_row.into_parts();
                    ((Scope::User(user), row.date), row)
                })
                .collect()
        }
    })
}

/// Writes whole rows of one [`RowTable`]; a stored row keeps its `id` and `created_at`.
pub(crate) fn write_rows(
    conn: &mut PgConnection,
    table: TableId,
    rows: RowTable,
    values: &[(&Scope, &DailyMetrics)],
) -> QueryResult<()> {
    for chunk in values.chunks(CHUNK_ROWS) {
        // Each row's JSON as a read serves it, beside its values (see `crate::render`).
        let rendered = chunk
            .iter()
            .map(|(_, row)| render_day(row))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| diesel::result::Error::SerializationError(Box::new(err)))?;
        let column = |value: fn(&DailyMetrics) -> i64| {
            chunk.iter().map(|(_, row)| value(row)).collect::<Vec<_>>()
        };
        let mut query = diesel::sql_query(rows.upsert())
            .into_boxed::<Pg>()
            .bind::<Integer, _>(table.0);
        if rows == RowTable::PerUser {
            query = query.bind::<Array<Text>, _>(
                chunk
                    .iter()
                    .map(|(scope, _)| scope.user())
                    .collect::<Vec<_>>(),
            );
        }
        query = query
            .bind::<Array<Date>, _>(chunk.iter().map(|(_, row)| row.date).collect::<Vec<_>>())
            .bind::<Array<Uuid>, _>(chunk.iter().map(|(_, row)| row.id).collect::<Vec<_>>())
            .bind::<Array<BigInt>, _>(column(|r| r.agent_runs_count))
            .bind::<Array<BigInt>, _>(column(|r| r.agent_sessions_count))
            .bind::<Array<BigInt>, _>(column(|r| r.team_runs_count))
            .bind::<Array<BigInt>, _>(column(|r| r.team_sessions_count))
            .bind::<Array<BigInt>, _>(column(|r| r.workflow_runs_count))
            .bind::<Array<BigInt>, _>(column(|r| r.workflow_sessions_count))
            .bind::<Array<BigInt>, _>(column(|r| r.users_count));
        for index in 0..Tokens::NAMES.len() {
            query = query.bind::<Array<BigInt>, _>(
                chunk
                    .iter()
                    .map(|(_, row)| row.tokens.counts()[index])
                    .collect::<Vec<_>>(),
            );
        }
        query
            .bind::<Array<Numeric>, _>(chunk.iter().map(|(_, row)| &row.cost).collect::<Vec<_>>())
            .bind::<Array<Jsonb>, _>(
                chunk
                    .iter()
                    .map(|(_, row)| &row.model_metrics)
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<Timestamptz>, _>(
                chunk
                    .iter()
                    .map(|(_, row)| row.created_at)
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<Timestamptz>, _>(
                chunk
                    .iter()
                    .map(|(_, row)| row.updated_at)
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<Text>, _>(rendered)
            .execute(conn)?;
    }
    Ok(())
}

/// Renders the rows of one [`RowTable`] within `start..=end` that have no rendered JSON (see
/// [`crate::render`]), [`CHUNK_ROWS`] at a time in key order, so memory stays bounded whatever
/// the range holds.
pub(crate) fn render_missing(
    conn: &mut PgConnection,
    table: TableId,
    rows: RowTable,
    start: NaiveDate,
    end: NaiveDate,
) -> QueryResult<()> {
    // The key of the last row rendered: the next chunk starts after it.
    let mut after: Option<(String, NaiveDate)> = None;
    loop {
        let chunk: Vec<(String, DailyMetrics)> = match rows {
            RowTable::AllUsers => {
                let from = after.as_ref().and_then(|(_, date)| date.succ_opt());
                daily_metrics::table
                    .filter(daily_metrics::table_id.eq(table.0))
                    .filter(daily_metrics::date.between(from.unwrap_or(start), end))
                    .filter(daily_metrics::rendered.is_null())
                    .order(daily_metrics::date.asc())
                    .limit(CHUNK_ROWS as i64)
                    .select(DailyMetrics::as_select())
                    .load(conn)?
                    .into_iter()
                    .map(|row| (String::new(), row))
                    .collect()
            }
            RowTable::PerUser => {
                let mut query = user_daily_metrics::table
                    .filter(user_daily_metrics::table_id.eq(table.0))
                    .filter(user_daily_metrics::date.between(start, end))
                    .filter(user_daily_metrics::rendered.is_null())
                    .order((
                        user_daily_metrics::user_id.asc(),
                        user_daily_metrics::date.asc(),
                    ))
                    .limit(CHUNK_ROWS as i64)
                    .select(UserDailyMetrics::as_select())
                    .into_boxed();
                if let Some((user, date)) = &after {
                    query = query
                        .filter(user_daily_metrics::user_id.ge(user.clone()))
                        .filter(
                            user_daily_metrics::user_id
                                .gt(user.clone())
                                .or(user_daily_metrics::date.gt(*date)),
                        );
                }
                query
                    .load(conn)?
                    .into_iter()
                    .map(UserDailyMetrics::into_parts)
                    .collect()
            }
        };
        let Some((user, row)) = chunk.last() else {
            return Ok(());
        };
        after = Some((user.clone(), row.date));
        let rendered = chunk
            .iter()
            .map(|(_, row)| render_day(row))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| diesel::result::Error::SerializationError(Box::new(err)))?;
        let dates: Vec<NaiveDate> = chunk.iter().map(|(_, row)| row.date).collect();
        match rows {
            RowTable::AllUsers => diesel::sql_query(
                "UPDATE daily_metrics d SET rendered = u.rendered \
                 FROM unnest($2::date[], $3::text[]) AS u(date, rendered) \
                 WHERE d.table_id = $1 AND d.date = u.date",
            )
            .bind::<Integer, _>(table.0)
            .bind::<Array<Date>, _>(dates)
            .bind::<Array<Text>, _>(rendered)
            .execute(conn)?,
            RowTable::PerUser => diesel::sql_query(
                "UPDATE user_daily_metrics d SET rendered = u.rendered \
                 FROM unnest($2::text[], $3::date[], $4::text[]) AS u(user_id, date, rendered) \
                 WHERE d.table_id = $1 AND d.user_id = u.user_id AND d.date = u.date",
            )
            .bind::<Integer, _>(table.0)
            .bind::<Array<Text>, _>(
                chunk
                    .iter()
                    .map(|(user, _)| user.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<Date>, _>(dates)
            .bind::<Array<Text>, _>(rendered)
            .execute(conn)?,
        };
        if chunk.len() < CHUNK_ROWS {
            return Ok(());
        }
    }
}
