//! The store of [`crate::apply`]: the statements that read the state a batch's plan folds over
//! and write back what it changed. The statements that carry most rows (stored runs and sessions
//! read back, new and changed records, (day, user) pairs, day rows) take their values as one
//! array per column (`unnest`): their text is constant whatever the batch size, and a batch costs
//! one round trip per statement, not per row. Those of [`Prepared`] are also parsed and planned
//! once per connection, not once per batch.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{LazyLock, OnceLock};

use chrono::{DateTime, NaiveDate, Utc};
use diesel::deserialize::{self, QueryableByName};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::row::NamedRow;
use diesel::serialize::ToSql;
use diesel::sql_types::{
    Array, BigInt, Bool, Date, HasSqlType, Integer, Jsonb, Nullable, Numeric, Text, Timestamptz,
    Untyped, Uuid,
};
use metrics_events::Tokens;

use crate::models::{
    COUNT_COLUMNS, DailyMetrics, DayUser, RunRecord, SessionRecord, StoredDay, UserDailyMetrics,
};
use crate::plan::{DayKey, Scope};
use crate::render::render_day;
use crate::schema::{daily_metrics, user_daily_metrics};
use crate::tables::TableId;

/// The first key of the advisory lock that serialises writers of a metrics table ("metr" as
/// ASCII); the second is the table's id.
pub(crate) const APPLY_LOCK_CLASS: i32 = 0x6d65_7472;

/// Rows rendered per statement by [`render_missing`], which bounds its memory.
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

/// The columns of a day row after its table id (and, per user, its user), as both tables name
/// them.
fn day_columns() -> Vec<(&'static str, &'static str)> {
    let mut columns = vec![("date", "date"), ("id", "uuid")];
    columns.extend(COUNT_COLUMNS.map(|name| (name, "int8")));
    columns.extend(Tokens::NAMES.map(|name| (name, "int8")));
    columns.extend([
        ("cost", "numeric"),
        ("model_metrics", "jsonb"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
    ]);
    columns
}

/// What the fold of a batch starts from: the stored records of the keys it names, and which of
/// its (day, user) pairs were not stored yet.
#[derive(Debug, Default)]
pub(crate) struct StoredState {
    pub runs: Vec<RunRecord>,
    pub sessions: Vec<SessionRecord>,
    pub new_users: HashSet<DayUser>,
}

/// One row of [`LOAD_STATE`], told apart by its `kind` column.
enum StateRow {
    Run(RunRecord),
    Session(SessionRecord),
    NewUser(DayUser),
}

impl QueryableByName<Pg> for StateRow {
    fn build<'a>(row: &impl NamedRow<'a, Pg>) -> deserialize::Result<Self> {
        Ok(match NamedRow::get::<Text, String>(row, "kind")?.as_str() {
            "run" => Self::Run(<RunRecord as QueryableByName<Pg>>::build(row)?),
            "session" => Self::Session(<SessionRecord as QueryableByName<Pg>>::build(row)?),
            "user" => Self::NewUser(<DayUser as QueryableByName<Pg>>::build(row)?),
            other => return Err(format!("a row of unknown kind `{other}`").into()),
        })
    }
}

/// Reads the stored state of a batch's keys and records its (day, user) pairs, in one round trip
/// ($1 table id, $2 run ids, $3 session ids, $4 days and $5 users pairwise): the stored runs
/// (`kind` `run`) and sessions (`session`), and the pairs that were new (`user`, inserted by the
/// statement's `WITH` part), as one result whose columns are those of all three, null where a
/// kind has none.
///
/// Each stored record is one probe of the primary key per key. A `LATERAL` subquery with a
/// `LIMIT` is never flattened into a join, so the planner cannot turn the lookup into one scan of
/// the metrics table's whole history, which a plain join of the unnested keys becomes (hashed)
/// while the table's statistics still describe it as small, and `key = ANY($2)` too (a bitmap
/// scan of its `(table_id, date)` index). Planned for every batch (`sql_query`, see
/// [`Prepared`]), the subquery's cost follows the table's current size: a probe as soon as the
/// table is more than a few pages.
static LOAD_STATE: LazyLock<String> = LazyLock::new(|| {
    let runs = run_columns();
    let mut columns = runs.clone();
    for column in SESSION_COLUMNS {
        if !columns.iter().any(|(name, _)| *name == column.0) {
            columns.push(column);
        }
    }
    // The part of one kind: its own columns from `r`, nulls of the right type for the others.
    let select = |kind: &str, own: &[&str]| {
        let list: Vec<String> = columns
            .iter()
            .map(|(name, ty)| {
                if own.contains(name) {
                    format!("r.{name}")
                } else {
                    format!("NULL::{ty} AS {name}")
                }
            })
            .collect();
        format!(
            "SELECT '{kind}' AS kind, $1 AS table_id, {}",
            list.join(", ")
        )
    };
    let lookup = |kind: &str, table: &str, key: &str, param: &str, own: &[(&str, &str)]| {
        let names: Vec<&str> = own.iter().map(|(name, _)| *name).collect();
        format!(
            "{select} FROM unnest({param}::text[]) AS k ({key}) CROSS JOIN LATERAL \
             (SELECT {list} FROM {table} WHERE table_id = $1 AND {key} = k.{key} LIMIT 1) r",
            select = select(kind, &names),
            list = names.join(", "),
        )
    };
    let runs_part = lookup("run", "runs", "run_id", "$2", &runs);
    let sessions_part = lookup("session", "sessions", "session_id", "$3", &SESSION_COLUMNS);
    format!(
        "WITH new_users AS (INSERT INTO day_users (table_id, date, user_id) \
         SELECT $1, * FROM unnest($4::date[], $5::text[]) \
         ON CONFLICT DO NOTHING RETURNING date, user_id) \
         {runs_part} UNION ALL {sessions_part} UNION ALL {users_part} FROM new_users r",
        users_part = select("user", &["date", "user_id"]),
    )
});

/// The stored state of a batch's keys ([`LOAD_STATE`]); records its (day, user) pairs.
pub(crate) fn load_state(
    conn: &mut PgConnection,
    table: TableId,
    run_ids: &[&str],
    session_ids: &[&str],
    users: &[DayUser],
) -> QueryResult<StoredState> {
    let rows = diesel::sql_query(LOAD_STATE.as_str())
        .bind::<Integer, _>(table.0)
        .bind::<Array<Text>, _>(run_ids)
        .bind::<Array<Text>, _>(session_ids)
        .bind::<Array<Date>, _>(users.iter().map(|u| u.date).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(users.iter().map(|u| u.user_id.as_str()).collect::<Vec<_>>())
        .load::<StateRow>(conn)?;
    let mut state = StoredState::default();
    for row in rows {
        match row {
            StateRow::Run(run) => state.runs.push(run),
            StateRow::Session(session) => state.sessions.push(session),
            StateRow::NewUser(user) => {
                state.new_users.insert(user);
            }
        }
    }
    Ok(state)
}

/// The stored day rows of a batch's keys, all-users and per-user, in one round trip ($1 table
/// id, $2 all-users days, $3 users and $4 days pairwise); `user_id` is null for an all-users row.
/// A per-user row is one probe of the primary key per key, for the reasons of [`LOAD_STATE`].
/// Where it read `user_id = ANY($3) AND date = ANY($4)`, PostgreSQL 15 scanned every stored day of
/// each user and filtered the days (one user's year: 365 index entries read for one row), so the
/// cost of a batch grew with the users' history: 2 ms of a 5 ms batch of 12 events on a month of
/// 500 users' rows.
static LOAD_DAY_ROWS: LazyLock<String> = LazyLock::new(|| {
    let columns = ["table_id"]
        .into_iter()
        .chain(day_columns().into_iter().map(|(name, _)| name))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT NULL::text AS user_id, {columns} FROM daily_metrics \
         WHERE table_id = $1 AND date = ANY($2::date[]) \
         UNION ALL SELECT r.* FROM unnest($3::text[], $4::date[]) AS k (user_id, date) \
         CROSS JOIN LATERAL (SELECT user_id, {columns} FROM user_daily_metrics \
         WHERE table_id = $1 AND user_id = k.user_id AND date = k.date LIMIT 1) r"
    )
});

/// The stored rows of `keys` ([`LOAD_DAY_ROWS`]).
pub(crate) fn load_day_rows(
    conn: &mut PgConnection,
    table: TableId,
    keys: &[&DayKey],
) -> QueryResult<HashMap<DayKey, DailyMetrics>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut days = Vec::new();
    let (mut users, mut user_days) = (Vec::new(), Vec::new());
    for (scope, date) in keys {
        match scope {
            Scope::AllUsers => days.push(*date),
            Scope::User(user) => {
                users.push(user.as_str());
                user_days.push(*date);
            }
        }
    }
    Ok(diesel::sql_query(LOAD_DAY_ROWS.as_str())
        .bind::<Integer, _>(table.0)
        .bind::<Array<Date>, _>(days)
        .bind::<Array<Text>, _>(users)
        .bind::<Array<Date>, _>(user_days)
        .load::<StoredDay>(conn)?
        .into_iter()
        .map(|StoredDay { user_id, row }| {
            let scope = user_id.map_or(Scope::AllUsers, Scope::User);
            ((scope, row.date), row)
        })
        .collect())
}

/// The records a batch changed: new ones (keys not stored before) and stored ones it changed.
#[derive(Debug, Default)]
pub(crate) struct ChangedRecords<'a> {
    pub new_runs: Vec<&'a RunRecord>,
    pub replaced_runs: Vec<&'a RunRecord>,
    pub new_sessions: Vec<&'a SessionRecord>,
    pub moved_sessions: Vec<&'a SessionRecord>,
}

/// The day rows a batch changed: whole rows to write, by table, in key order, and the per-user
/// rows to delete.
#[derive(Debug, Default)]
pub(crate) struct ChangedDays<'a> {
    pub all_users: Vec<(&'a Scope, DailyMetrics)>,
    pub per_user: Vec<(&'a Scope, DailyMetrics)>,
    pub deleted: Vec<(&'a str, NaiveDate)>,
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
}

/// One data-modifying part of [`write_changes`]' statement, with the rows it binds.
enum Write<'a> {
    /// Runs not stored before: plain inserts (the writer lock guarantees that no other
    /// transaction inserts them meanwhile, so there is no conflict to check).
    NewRuns(&'a [&'a RunRecord]),
    /// Stored runs the batch changed, written over the stored rows.
    ReplacedRuns(&'a [&'a RunRecord]),
    NewSessions(&'a [&'a SessionRecord]),
    MovedSessions(&'a [&'a SessionRecord]),
    /// Per-user rows by (user, day).
    DeletedDays(&'a [(&'a str, NaiveDate)]),
    /// Whole day rows of one table; a stored row keeps its `id` and `created_at`.
    Days(RowTable, &'a [(&'a Scope, DailyMetrics)]),
}

impl<'a> Write<'a> {
    fn is_empty(&self) -> bool {
        match self {
            Write::NewRuns(runs) | Write::ReplacedRuns(runs) => runs.is_empty(),
            Write::NewSessions(sessions) | Write::MovedSessions(sessions) => sessions.is_empty(),
            Write::DeletedDays(keys) => keys.is_empty(),
            Write::Days(_, rows) => rows.is_empty(),
        }
    }

    /// The part's statement, its arrays numbered from `*next` on (which it advances).
    fn sql(&self, next: &mut usize) -> String {
        match self {
            Write::NewRuns(_) => insert_from_arrays("runs", &run_columns(), next, None),
            Write::ReplacedRuns(_) => {
                insert_from_arrays("runs", &run_columns(), next, Some(("run_id", &["run_id"])))
            }
            Write::NewSessions(_) => insert_from_arrays("sessions", &SESSION_COLUMNS, next, None),
            Write::MovedSessions(_) => insert_from_arrays(
                "sessions",
                &SESSION_COLUMNS,
                next,
                Some(("session_id", &["session_id"])),
            ),
            Write::DeletedDays(_) => {
                let sql = format!(
                    "DELETE FROM user_daily_metrics m \
                     USING unnest(${}::text[], ${}::date[]) AS k (user_id, date) \
                     WHERE m.table_id = $1 AND m.user_id = k.user_id AND m.date = k.date",
                    *next,
                    *next + 1
                );
                *next += 2;
                sql
            }
            Write::Days(RowTable::AllUsers, _) => {
                let mut columns = day_columns();
                columns.push(("rendered", "text"));
                insert_from_arrays(
                    "daily_metrics",
                    &columns,
                    next,
                    Some(("date", &["date", "id", "created_at"])),
                )
            }
            Write::Days(RowTable::PerUser, _) => {
                let mut columns = vec![("user_id", "text")];
                columns.extend(day_columns());
                columns.push(("rendered", "text"));
                insert_from_arrays(
                    "user_daily_metrics",
                    &columns,
                    next,
                    Some(("user_id, date", &["user_id", "date", "id", "created_at"])),
                )
            }
        }
    }

    /// Binds the part's arrays, in the order of [`Write::sql`].
    fn bind(&self, query: Prepared<'a>) -> QueryResult<Prepared<'a>> {
        Ok(match self {
            Write::NewRuns(runs) | Write::ReplacedRuns(runs) => bind_runs(query, runs),
            Write::NewSessions(sessions) | Write::MovedSessions(sessions) => {
                bind_sessions(query, sessions)
            }
            Write::DeletedDays(keys) => {
                let (users, dates): (Vec<&str>, Vec<NaiveDate>) = keys.iter().copied().unzip();
                query
                    .bind::<Array<Text>, _>(users)
                    .bind::<Array<Date>, _>(dates)
            }
            Write::Days(table, rows) => bind_days(query, *table, rows)?,
        })
    }
}

/// `INSERT INTO {table} (table_id, {columns}) SELECT $1, * FROM unnest(...)`: one array per
/// column, in the order of `columns` (name, SQL type), numbered from `*next` on; with
/// `upsert = Some((key, keep))`, `ON CONFLICT (table_id, {key}) DO UPDATE` of every column but
/// those in `keep`.
fn insert_from_arrays(
    table: &str,
    columns: &[(&str, &str)],
    next: &mut usize,
    upsert: Option<(&str, &[&str])>,
) -> String {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let arrays: Vec<String> = columns
        .iter()
        .map(|(_, ty)| {
            *next += 1;
            format!("${}::{ty}[]", *next - 1)
        })
        .collect();
    let action = upsert.map_or_else(String::new, |(key, keep)| {
        let updates: Vec<String> = names
            .iter()
            .filter(|name| !keep.contains(name))
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
}

/// Writes what a batch changed, records and day rows, in one statement: each kind of change
/// that has rows is a data-modifying `WITH` part ([`Write`]) binding one array per column, so a
/// batch costs one round trip to write whatever it holds. The statement's text depends only on
/// which parts have rows (a few dozen texts, each built once per process), so it goes through the
/// statement cache (see [`Prepared`]); and a table no part writes fires no trigger (no change announced for a batch
/// that changed no day row).
///
/// Within one statement the parts cannot see each other's rows; none needs to: they write
/// different tables, or (the per-user rows deleted and written) different keys.
pub(crate) fn write_changes(
    conn: &mut PgConnection,
    table: TableId,
    records: &ChangedRecords<'_>,
    days: &ChangedDays<'_>,
) -> QueryResult<()> {
    let all = [
        Write::NewRuns(&records.new_runs),
        Write::ReplacedRuns(&records.replaced_runs),
        Write::NewSessions(&records.new_sessions),
        Write::MovedSessions(&records.moved_sessions),
        Write::DeletedDays(&days.deleted),
        Write::Days(RowTable::AllUsers, &days.all_users),
        Write::Days(RowTable::PerUser, &days.per_user),
    ];
    // Which parts have rows, one bit each in the order above: the text depends on nothing else,
    // so each of the texts is built once per process.
    static TEXTS: [OnceLock<String>; 1 << 7] = [const { OnceLock::new() }; 1 << 7];
    let present = all
        .iter()
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .fold(0, |mask, (i, _)| mask | 1 << i);
    if present == 0 {
        return Ok(());
    }
    let parts: Vec<Write<'_>> = all.into_iter().filter(|part| !part.is_empty()).collect();
    let sql = TEXTS[present].get_or_init(|| {
        let mut next = 2;
        let ctes: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(i, part)| format!("w{i} AS ({})", part.sql(&mut next)))
            .collect();
        format!("WITH {} SELECT 1", ctes.join(", "))
    });
    let mut query = Prepared::new(sql).bind::<Integer, _>(table.0);
    for part in &parts {
        query = part.bind(query)?;
    }
    query.execute(conn)?;
    Ok(())
}

/// Binds the columns of day rows of one table (see [`Write::sql`]), each row's JSON as a read
/// serves it among them (see `crate::render`).
fn bind_days<'a>(
    query: Prepared<'a>,
    table: RowTable,
    rows: &'a [(&'a Scope, DailyMetrics)],
) -> QueryResult<Prepared<'a>> {
    let rendered = rows
        .iter()
        .map(|(_, row)| render_day(row))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| diesel::result::Error::SerializationError(Box::new(err)))?;
    let column = |value: fn(&DailyMetrics) -> i64| {
        rows.iter().map(|(_, row)| value(row)).collect::<Vec<_>>()
    };
    let mut query = query;
    if table == RowTable::PerUser {
        query = query.bind::<Array<Text>, _>(
            rows.iter()
                .map(|(scope, _)| scope.user())
                .collect::<Vec<_>>(),
        );
    }
    query = query
        .bind::<Array<Date>, _>(rows.iter().map(|(_, row)| row.date).collect::<Vec<_>>())
        .bind::<Array<Uuid>, _>(rows.iter().map(|(_, row)| row.id).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(column(|r| r.agent_runs_count))
        .bind::<Array<BigInt>, _>(column(|r| r.agent_sessions_count))
        .bind::<Array<BigInt>, _>(column(|r| r.team_runs_count))
        .bind::<Array<BigInt>, _>(column(|r| r.team_sessions_count))
        .bind::<Array<BigInt>, _>(column(|r| r.workflow_runs_count))
        .bind::<Array<BigInt>, _>(column(|r| r.workflow_sessions_count))
        .bind::<Array<BigInt>, _>(column(|r| r.users_count));
    for index in 0..Tokens::NAMES.len() {
        query = query.bind::<Array<BigInt>, _>(
            rows.iter()
                .map(|(_, row)| row.tokens.counts()[index])
                .collect::<Vec<_>>(),
        );
    }
    Ok(query
        .bind::<Array<Numeric>, _>(rows.iter().map(|(_, row)| &row.cost).collect::<Vec<_>>())
        .bind::<Array<Jsonb>, _>(
            rows.iter()
                .map(|(_, row)| &row.model_metrics)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Timestamptz>, _>(
            rows.iter()
                .map(|(_, row)| row.created_at)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Timestamptz>, _>(
            rows.iter()
                .map(|(_, row)| row.updated_at)
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(rendered))
}

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
