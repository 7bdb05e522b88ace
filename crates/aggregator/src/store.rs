//! The store of [`crate::apply`]: the statements that read the state a batch's plan folds over
//! and write back what it changed. The statements that carry most rows (stored runs and sessions
//! read back, new and changed records, (day, user) pairs, day rows) take their values as one
//! array per column (`unnest`): their text is constant whatever the batch size, and a batch costs
//! one round trip per statement, not per row. Those of [`Prepared`] are also parsed and planned
//! once per connection, not once per batch.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::deserialize::QueryableByName;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{
    Array, BigInt, Bool, Date, HasSqlType, Integer, Jsonb, Nullable, Numeric, Text, Timestamptz,
    Untyped, Uuid,
};
use metrics_events::Tokens;

use crate::models::{
    COUNT_COLUMNS, DailyMetrics, DayUser, RunRecord, SessionRecord, UserDailyMetrics,
};
use crate::plan::{DayKey, Scope};
use crate::render::render_day;
use crate::schema::{daily_metrics, user_daily_metrics};
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
///
/// It also key-share locks the table's `metrics_tables` row, the check the foreign keys of `runs`
/// and `sessions` made for every row they inserted (migration
/// `2026-12-03-000000_check_record_tables_once_per_batch`): the row exists, and stays until the
/// transaction ends. A table that is not registered is a foreign key violation, as it was.
pub(crate) fn lock_table(conn: &mut PgConnection, table: TableId) -> QueryResult<DateTime<Utc>> {
    Prepared::new(
        "SELECT clock_timestamp() AS now FROM pg_advisory_xact_lock($1, $2) AS l, \
         metrics_tables t WHERE t.id = $2 FOR KEY SHARE OF t",
    )
    .bind::<Integer, _>(APPLY_LOCK_CLASS)
    .bind::<Integer, _>(table.0)
    .get_result::<LockedAt>(conn)
    .optional()?
    .map(|locked| locked.now)
    .ok_or_else(|| {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ForeignKeyViolation,
            Box::new(format!("metrics table {} is not registered", table.0)),
        )
    })
}

/// A statement whose text is the same for every batch, with its bind values. Diesel never keeps
/// a `sql_query` statement prepared, so PostgreSQL would parse, analyse and plan it again for
/// every batch; this one goes through diesel's statement cache (keyed by its text): prepared once
/// per connection, its plan reused. Its text names every column it returns, since a prepared
/// `SELECT *` fails once a migration adds a column.
///
/// Only for statements with one sensible plan (inserts from arrays, the lock): PostgreSQL keeps a
/// prepared statement's generic plan, so a plan that depends on a table's size (a lookup, a join)
/// chosen while the table was small would stay when it grows. Those remain `sql_query`, planned
/// for each batch with the table's current size.
///
/// The text numbers its parameters `$1`, `$2`, ... as PostgreSQL does, the n-th bound value being
/// `$n`; a parameter may appear more than once.
pub(crate) struct Prepared<'a> {
    sql: &'a str,
    binds: Vec<Box<dyn PushBind + 'a>>,
}

impl<'a> Prepared<'a> {
    pub(crate) fn new(sql: &'a str) -> Self {
        Self {
            sql,
            binds: Vec::new(),
        }
    }

    /// Binds the next parameter, of SQL type `ST`.
    pub(crate) fn bind<ST, T>(mut self, value: T) -> Self
    where
        Pg: HasSqlType<ST>,
        T: ToSql<ST, Pg> + 'a,
        ST: 'a,
    {
        self.binds.push(Box::new(Bound {
            value,
            sql_type: PhantomData::<ST>,
        }));
        self
    }
}

/// A bound value that pushes itself as a parameter of its SQL type.
trait PushBind {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

struct Bound<ST, T> {
    value: T,
    sql_type: PhantomData<ST>,
}

impl<ST, T> PushBind for Bound<ST, T>
where
    Pg: HasSqlType<ST>,
    T: ToSql<ST, Pg>,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.value)
    }
}

impl QueryFragment<Pg> for Prepared<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Diesel writes each parameter's placeholder itself, numbered in the order pushed: the
        // text is pushed piece by piece, each `$n` replaced by the n-th value.
        let mut rest = self.sql;
        while let Some(start) = rest.find('$') {
            out.push_sql(&rest[..start]);
            let digits = rest[start + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            let index: usize = rest[start + 1..start + 1 + digits].parse().map_err(|_| {
                diesel::result::Error::QueryBuilderError("a `$` without a number".into())
            })?;
            let bind = index
                .checked_sub(1)
                .and_then(|i| self.binds.get(i))
                .ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError(
                        format!("no value for ${index}").into(),
                    )
                })?;
            bind.push(&mut out)?;
            rest = &rest[start + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl QueryId for Prepared<'_> {
    type QueryId = ();

    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

impl RunQueryDsl<PgConnection> for Prepared<'_> {}

/// Of a batch's days, those with events naming no user ($1 table id, $2 days).
const NO_USER_DAYS: &str = "SELECT table_id, date, user_id FROM day_users \
     WHERE table_id = $1 AND user_id = '' AND date = ANY($2)";

/// Deletes per-user rows by key ($1 table id, $2 users, $3 days).
const DELETE_USER_DAYS: &str = "DELETE FROM user_daily_metrics m \
     USING unnest($2::text[], $3::date[]) AS k (user_id, date) \
     WHERE m.table_id = $1 AND m.user_id = k.user_id AND m.date = k.date";

/// The stored records of a batch's keys ($1 table id, $2 keys): one probe of the primary key
/// per key. A `LATERAL` subquery with a `LIMIT` is never flattened into a join, so the planner
/// cannot turn the lookup into one scan of the metrics table's whole history, which a plain join
/// of the unnested keys becomes (hashed) while the table's statistics still describe it as small,
/// and `key = ANY($2)` too (a bitmap scan of its `(table_id, date)` index). Planned for every
/// batch (`sql_query`, see [`Prepared`]), the subquery's cost follows the table's current size:
/// a probe as soon as the table is more than a few pages.
fn load_statement(table: &str, key: &str, columns: &[(&str, &str)]) -> String {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    format!(
        "SELECT $1 AS table_id, r.{key}, {columns} FROM unnest($2::text[]) AS k ({key}) \
         CROSS JOIN LATERAL (SELECT {names} FROM {table} \
         WHERE table_id = $1 AND {key} = k.{key} LIMIT 1) r",
        columns = names
            .iter()
            .filter(|name| **name != key)
            .map(|name| format!("r.{name}"))
            .collect::<Vec<_>>()
            .join(", "),
        names = names.join(", "),
    )
}

static LOAD_RUNS: LazyLock<String> =
    LazyLock::new(|| load_statement("runs", "run_id", &run_columns()));

static LOAD_SESSIONS: LazyLock<String> =
    LazyLock::new(|| load_statement("sessions", "session_id", &SESSION_COLUMNS));

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
            .bind::<Array<Text>, _>(users)
            .bind::<Array<Date>, _>(dates)
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
    load_by_keys(conn, &LOAD_RUNS, table, run_ids)
}

/// The stored sessions of `session_ids`.
pub(crate) fn load_sessions(
    conn: &mut PgConnection,
    table: TableId,
    session_ids: &[&str],
) -> QueryResult<Vec<SessionRecord>> {
    load_by_keys(conn, &LOAD_SESSIONS, table, session_ids)
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

/// A batch's distinct (day, user) pairs; returns those not seen before.
const INSERT_DAY_USERS: &str = "INSERT INTO day_users (table_id, date, user_id) \
     SELECT $1, * FROM unnest($2::date[], $3::text[]) \
     ON CONFLICT DO NOTHING RETURNING table_id, date, user_id";

/// Inserts the (day, user) pairs of a batch; returns those that were not stored yet.
pub(crate) fn insert_day_users(
    conn: &mut PgConnection,
    table: TableId,
    users: &[DayUser],
) -> QueryResult<HashSet<DayUser>> {
    Ok(Prepared::new(INSERT_DAY_USERS)
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

/// The columns of a session after its table id, with their SQL types.
const SESSION_COLUMNS: [(&str, &str); 10] = [
    ("session_id", "text"),
    ("date", "date"),
    ("first_time", "timestamptz"),
    ("session_type", "text"),
    ("type_from_run", "bool"),
    ("type_time", "timestamptz"),
    ("created_time", "timestamptz"),
    ("created_user_id", "text"),
    ("first_run_time", "timestamptz"),
    ("first_run_user_id", "text"),
];

/// The statement that writes a batch's changed records ($1 table id, then one array per column
/// of each part, in this order): the runs and sessions that are new, with plain inserts (the
/// writer lock guarantees that no other transaction inserts them meanwhile, so there is no
/// conflict to check), and the stored ones the batch changed, written over the stored rows.
/// The four parts are data-modifying `WITH` queries of one statement: one round trip, whichever
/// of them have rows.
static WRITE_RECORDS: LazyLock<String> = LazyLock::new(|| {
    let runs = run_columns();
    let mut next = 2;
    let mut part = |table: &str, columns: &[(&str, &str)], conflict: Option<&str>| {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let arrays: Vec<String> = columns
            .iter()
            .map(|(_, ty)| {
                next += 1;
                format!("${}::{ty}[]", next - 1)
            })
            .collect();
        let action = conflict.map_or_else(String::new, |key| {
            let updates: Vec<String> = names
                .iter()
                .filter(|name| **name != key)
                .map(|name| format!("{name} = excluded.{name}"))
                .collect();
            format!(
                " ON CONFLICT (table_id, {key}) DO UPDATE SET {}",
                updates.join(", ")
            )
        });
        format!(
            "INSERT INTO {table} (table_id, {names}) SELECT $1, * FROM unnest({arrays}){action}",
            names = names.join(", "),
            arrays = arrays.join(", "),
        )
    };
    let new_runs = part("runs", &runs, None);
    let replaced_runs = part("runs", &runs, Some("run_id"));
    let new_sessions = part("sessions", &SESSION_COLUMNS, None);
    let moved_sessions = part("sessions", &SESSION_COLUMNS, Some("session_id"));
    format!(
        "WITH new_runs AS ({new_runs}), replaced_runs AS ({replaced_runs}), \
         new_sessions AS ({new_sessions}), moved_sessions AS ({moved_sessions}) SELECT 1"
    )
});

/// Binds the columns of `runs` (see [`run_columns`]).
fn bind_runs<'a>(query: Prepared<'a>, runs: &[&'a RunRecord]) -> Prepared<'a> {
    let mut query = query
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

/// Binds the columns of `sessions` (see [`SESSION_COLUMNS`]).
fn bind_sessions<'a>(query: Prepared<'a>, sessions: &[&'a SessionRecord]) -> Prepared<'a> {
    query
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
}

/// The records a batch changed: new ones (keys not stored before) and stored ones it changed.
#[derive(Debug, Default)]
pub(crate) struct ChangedRecords<'a> {
    pub new_runs: Vec<&'a RunRecord>,
    pub replaced_runs: Vec<&'a RunRecord>,
    pub new_sessions: Vec<&'a SessionRecord>,
    pub moved_sessions: Vec<&'a SessionRecord>,
}

/// Writes a batch's changed records in one statement ([`WRITE_RECORDS`]).
pub(crate) fn write_records(
    conn: &mut PgConnection,
    table: TableId,
    records: &ChangedRecords<'_>,
) -> QueryResult<()> {
    let total = records.new_runs.len()
        + records.replaced_runs.len()
        + records.new_sessions.len()
        + records.moved_sessions.len();
    if total == 0 {
        return Ok(());
    }
    let query = Prepared::new(&WRITE_RECORDS).bind::<Integer, _>(table.0);
    let query = bind_runs(query, &records.new_runs);
    let query = bind_runs(query, &records.replaced_runs);
    let query = bind_sessions(query, &records.new_sessions);
    bind_sessions(query, &records.moved_sessions).execute(conn)?;
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

/// The stored per-user rows of a batch's keys ($1 table id, $2 users, $3 days, pairwise): one
/// probe of the primary key per key, for the reasons of [`load_statement`]. Where it read
/// `user_id = ANY($2) AND date = ANY($3)`, PostgreSQL 15 scanned every stored day of each user
/// and filtered the days (one user's year: 365 index entries read for one row), so the cost of a
/// batch grew with the users' history: 2 ms of a 5 ms batch of 12 events on a month of 500
/// users' rows.
static LOAD_USER_DAYS: LazyLock<String> = LazyLock::new(|| {
    let columns = ["user_id", "table_id", "date", "id"]
        .into_iter()
        .chain(COUNT_COLUMNS)
        .chain(Tokens::NAMES)
        .chain(["cost", "model_metrics", "created_at", "updated_at"])
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT r.* FROM unnest($2::text[], $3::date[]) AS k (user_id, date) \
         CROSS JOIN LATERAL (SELECT {columns} FROM user_daily_metrics \
         WHERE table_id = $1 AND user_id = k.user_id AND date = k.date LIMIT 1) r"
    )
});

/// The stored rows of `keys`, all of one [`RowTable`] (all-users rows: perhaps some more of the
/// same days).
pub(crate) fn load_rows(
    conn: &mut PgConnection,
    table: TableId,
    rows: RowTable,
    keys: &[&DayKey],
) -> QueryResult<HashMap<DayKey, DailyMetrics>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(match rows {
        RowTable::AllUsers => {
            let mut dates: Vec<NaiveDate> = keys.iter().map(|(_, date)| *date).collect();
            dates.sort_unstable();
            dates.dedup();
            daily_metrics::table
                .filter(daily_metrics::table_id.eq(table.0))
                .filter(daily_metrics::date.eq_any(&dates))
                .select(DailyMetrics::as_select())
                .load(conn)?
                .into_iter()
                .map(|row| ((Scope::AllUsers, row.date), row))
                .collect()
        }
        RowTable::PerUser => {
            let (users, dates): (Vec<&str>, Vec<NaiveDate>) = keys
                .iter()
                .map(|(scope, date)| (scope.user(), *date))
                .unzip();
            diesel::sql_query(LOAD_USER_DAYS.as_str())
                .bind::<Integer, _>(table.0)
                .bind::<Array<Text>, _>(users)
                .bind::<Array<Date>, _>(dates)
                .load::<UserDailyMetrics>(conn)?
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
        // An insert from arrays: one sensible plan, so prepared once per connection.
        let mut query = Prepared::new(rows.upsert()).bind::<Integer, _>(table.0);
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
