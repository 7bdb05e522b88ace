//! Recomputing daily rows from the stored records, in the database.
//!
//! `rebuild` groups the `runs`, `sessions` and `day_users` of a date range by day, and by user
//! and day for the per-user rows, in one statement each (the same statement, keyed by day or by
//! user and day) and writes only the rows that differ, so PostgreSQL does the work and the
//! caller's memory does not grow with the data. The rows it writes are then rendered
//! (`rendered`, see [`crate::render`]) a thousand at a time, as are the rows of the range that
//! have no rendered JSON yet (written before the column existed). A rebuild of rows that [`apply`](crate::apply) maintained
//! changes nothing: both compute the same function of the same records.

use std::sync::LazyLock;

use diesel::prelude::*;
use diesel::sql_types::{Date, Integer, Timestamptz};
use metrics_events::{MAX_DATE, MIN_DATE, Tokens};

use crate::models::COUNT_COLUMNS;
use crate::read::DateRange;
use crate::store::{self, RowTable, lock_table};
use crate::tables::TableId;

/// What a rebuild changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Day rows written because they were missing or differed from their records.
    pub rows_written: usize,
    /// Day rows deleted because no record is left for their day.
    pub rows_deleted: usize,
    /// Per-user day rows written because they were missing or differed from their records.
    pub user_rows_written: usize,
    /// Per-user day rows deleted because nothing of that user is left on their day.
    pub user_rows_deleted: usize,
}

/// Recomputes the rows of `table` within `range`, all-users and per-user, from the stored records
/// and replaces those that differ, keeping each row's `id` and `created_at`. Holds the table's writer lock, so
/// concurrent [`apply`](crate::apply) calls wait for it.
///
/// # Errors
///
/// The database error when a statement fails; nothing was changed.
pub fn rebuild(
    conn: &mut PgConnection,
    table: TableId,
    range: DateRange,
) -> QueryResult<RebuildReport> {
    let start = range.start.unwrap_or(MIN_DATE);
    let end = range.end.unwrap_or(MAX_DATE);
    conn.transaction(|conn| {
        let now = lock_table(conn, table)?;
        let rows_written = diesel::sql_query(&UPSERTS[0])
            .bind::<Integer, _>(table.0)
            .bind::<Date, _>(start)
            .bind::<Date, _>(end)
            .bind::<Timestamptz, _>(now)
            .execute(conn)?;
        let rows_deleted = diesel::sql_query(DELETE_EMPTY_DAYS)
            .bind::<Integer, _>(table.0)
            .bind::<Date, _>(start)
            .bind::<Date, _>(end)
            .execute(conn)?;
        let user_rows_written = diesel::sql_query(&UPSERTS[1])
            .bind::<Integer, _>(table.0)
            .bind::<Date, _>(start)
            .bind::<Date, _>(end)
            .bind::<Timestamptz, _>(now)
            .execute(conn)?;
        let user_rows_deleted = diesel::sql_query(DELETE_EMPTY_USER_DAYS)
            .bind::<Integer, _>(table.0)
            .bind::<Date, _>(start)
            .bind::<Date, _>(end)
            .execute(conn)?;
        store::render_missing(conn, table, RowTable::AllUsers, start, end)?;
        store::render_missing(conn, table, RowTable::PerUser, start, end)?;
        Ok(RebuildReport {
            rows_written,
            rows_deleted,
            user_rows_written,
            user_rows_deleted,
        })
    })
}

/// Renders the rows of `table` within `range` that have no rendered JSON yet (written before the
/// column existed, or by hand), under the table's writer lock, without changing anything else:
/// what [`rebuild`] does after recomputing, for a caller that only wants reads to be joins again.
///
/// # Errors
///
/// The database error when a statement fails; nothing was changed.
pub fn render_unrendered(
    conn: &mut PgConnection,
    table: TableId,
    range: DateRange,
) -> QueryResult<()> {
    let start = range.start.unwrap_or(MIN_DATE);
    let end = range.end.unwrap_or(MAX_DATE);
    conn.transaction(|conn| {
        lock_table(conn, table)?;
        store::render_missing(conn, table, RowTable::AllUsers, start, end)?;
        store::render_missing(conn, table, RowTable::PerUser, start, end)
    })
}

/// The rows a rebuild recomputes.
#[derive(Debug, Clone, Copy)]
enum Rows {
    /// `daily_metrics`: a row for every day with events; `users_count` counts the day's users.
    AllUsers,
    /// `user_daily_metrics`: a row for every (user, day) on which the user is active
    /// (`day_users`) or one of its runs or sessions counts; `users_count` is 1 for a non-empty
    /// user active that day. A session's user is the user of its earliest `session.created`,
    /// else of its earliest run (`SessionRecord::user_id`).
    PerUser,
}

/// The upserts of both [`Rows`], written once: $1 table id, $2 and $3 the inclusive date range,
/// $4 the time stamping changed rows (see `lock_table`). Each aggregate reads one table through
/// its `(table_id, date)` index; `COLLATE "C"` orders model ids by bytes, as `apply` does. Only
/// rows that differ are written.
static UPSERTS: LazyLock<[String; 2]> =
    LazyLock::new(|| [upsert(Rows::AllUsers), upsert(Rows::PerUser)]);

fn upsert(rows: Rows) -> String {
    let range = "table_id = $1 AND date BETWEEN $2 AND $3";
    let (table, key, keys, users_count, active_join) = match rows {
        Rows::AllUsers => (
            "daily_metrics",
            "date",
            format!(
                "sessions_in AS (SELECT date, session_type FROM sessions WHERE {range}), \
                 keys AS (SELECT date, count(*) FILTER (WHERE user_id <> '') AS users_count \
                 FROM day_users WHERE {range} GROUP BY date)"
            ),
            "keys.users_count",
            "",
        ),
        Rows::PerUser => (
            "user_daily_metrics",
            "user_id, date",
            format!(
                "sessions_in AS (SELECT date, session_type, CASE WHEN created_user_id <> '' \
                 THEN created_user_id ELSE coalesce(first_run_user_id, '') END AS user_id \
                 FROM sessions WHERE {range}), \
                 keys AS (SELECT user_id, date FROM day_users WHERE {range} \
                 UNION SELECT user_id, date FROM runs WHERE {range} \
                 UNION SELECT user_id, date FROM sessions_in), \
                 active AS (SELECT user_id, date FROM day_users WHERE {range} AND user_id <> '')"
            ),
            "CASE WHEN a.user_id IS NULL THEN 0 ELSE 1 END",
            "LEFT JOIN active a USING (user_id, date)",
        ),
    };
    let key_values = key
        .split(", ")
        .map(|column| format!("keys.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    let token_sums: String = Tokens::NAMES
        .iter()
        .map(|name| format!("sum({name})::bigint AS {name}, "))
        .collect();
    let token_values: String = Tokens::NAMES
        .iter()
        .map(|name| format!("coalesce(r.{name}, 0), "))
        .collect();
    let mut columns: Vec<&str> = COUNT_COLUMNS.to_vec();
    columns.extend(Tokens::NAMES);
    columns.extend(["cost", "model_metrics"]);
    let updates: Vec<String> = columns
        .iter()
        .map(|column| format!("{column} = excluded.{column}"))
        .collect();
    let stored: Vec<String> = columns.iter().map(|column| format!("d.{column}")).collect();
    let written: Vec<String> = columns
        .iter()
        .map(|column| format!("excluded.{column}"))
        .collect();
    format!(
        r#"
WITH {keys}, run_days AS (
    SELECT {key},
        count(*) FILTER (WHERE session_type = 'agent') AS agent_runs_count,
        count(*) FILTER (WHERE session_type = 'team') AS team_runs_count,
        count(*) FILTER (WHERE session_type = 'workflow') AS workflow_runs_count,
        {token_sums}sum(cost) AS cost
    FROM runs
    WHERE {range}
    GROUP BY {key}
), model_days AS (
    SELECT {key},
        jsonb_agg(
            jsonb_build_object('model_id', model, 'model_provider', model_provider, 'count', n)
            ORDER BY n DESC, model COLLATE "C", model_provider COLLATE "C"
        ) AS model_metrics
    FROM (
        SELECT {key}, model, coalesce(model_provider, '') AS model_provider, count(*) AS n
        FROM runs
        WHERE {range} AND model IS NOT NULL
        GROUP BY {key}, model, coalesce(model_provider, '')
    ) models
    GROUP BY {key}
), session_days AS (
    SELECT {key},
        count(*) FILTER (WHERE session_type = 'agent') AS agent_sessions_count,
        count(*) FILTER (WHERE session_type = 'team') AS team_sessions_count,
        count(*) FILTER (WHERE session_type = 'workflow') AS workflow_sessions_count
    FROM sessions_in
    GROUP BY {key}
)
INSERT INTO {table} AS d (table_id, {key}, {columns}, created_at, updated_at)
SELECT $1, {key_values},
    coalesce(r.agent_runs_count, 0), coalesce(s.agent_sessions_count, 0),
    coalesce(r.team_runs_count, 0), coalesce(s.team_sessions_count, 0),
    coalesce(r.workflow_runs_count, 0), coalesce(s.workflow_sessions_count, 0),
    {users_count},
    {token_values}coalesce(r.cost, 0), coalesce(m.model_metrics, '[]'::jsonb), $4, $4
FROM keys
{active_join}
LEFT JOIN run_days r USING ({key})
LEFT JOIN session_days s USING ({key})
LEFT JOIN model_days m USING ({key})
ON CONFLICT (table_id, {key}) DO UPDATE SET {updates}, updated_at = excluded.updated_at,
    rendered = NULL
WHERE ({stored}) IS DISTINCT FROM ({written})
"#,
        columns = columns.join(", "),
        updates = updates.join(", "),
        stored = stored.join(", "),
        written = written.join(", "),
    )
}

/// $1 table id, $2 and $3 the inclusive date range.
const DELETE_EMPTY_DAYS: &str = r#"
DELETE FROM daily_metrics d
WHERE d.table_id = $1 AND d.date BETWEEN $2 AND $3
    AND NOT EXISTS (
        SELECT 1 FROM day_users u WHERE u.table_id = d.table_id AND u.date = d.date
    )
"#;

/// $1 table id, $2 and $3 the inclusive date range: the per-user rows left without a reason to
/// exist (no event of the user that day, none of its runs or sessions counting there).
const DELETE_EMPTY_USER_DAYS: &str = r#"
DELETE FROM user_daily_metrics d
WHERE d.table_id = $1 AND d.date BETWEEN $2 AND $3
    AND NOT EXISTS (
        SELECT 1 FROM day_users u
        WHERE u.table_id = d.table_id AND u.date = d.date AND u.user_id = d.user_id
    )
    AND NOT EXISTS (
        SELECT 1 FROM runs r
        WHERE r.table_id = d.table_id AND r.date = d.date AND r.user_id = d.user_id
    )
    AND NOT EXISTS (
        SELECT 1 FROM sessions s
        WHERE s.table_id = d.table_id AND s.date = d.date
            AND CASE WHEN s.created_user_id <> '' THEN s.created_user_id
                ELSE coalesce(s.first_run_user_id, '') END = d.user_id
    )
"#;
