//! Recomputing daily rows from the stored records, in the database.
//!
//! `rebuild` groups the `runs`, `sessions` and `day_users` of a date range by day, and by user
//! and day for the per-user rows, in one statement each and writes only the rows that differ, so PostgreSQL does the work and the caller's
//! memory does not grow with the data. A rebuild of rows that [`apply`](crate::apply) maintained
//! changes nothing: both compute the same function of the same records.

use diesel::prelude::*;
use diesel::sql_types::{Date, Integer, Timestamptz};
use metrics_events::{MAX_DATE, MIN_DATE};

use crate::apply::lock_table;
use crate::read::DateRange;
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
        let rows_written = diesel::sql_query(UPSERT_DAYS)
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
        let user_rows_written = diesel::sql_query(UPSERT_USER_DAYS)
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
        Ok(RebuildReport {
            rows_written,
            rows_deleted,
            user_rows_written,
            user_rows_deleted,
        })
    })
}

/// $1 table id, $2 and $3 the inclusive date range, $4 the time stamping changed rows (see
/// `lock_table`). Each aggregate reads one table through its
/// `(table_id, date)` index; `COLLATE "C"` orders model ids by bytes, as `apply` does.
const UPSERT_DAYS: &str = r#"
WITH days AS (
    SELECT date, count(*) FILTER (WHERE user_id <> '') AS users_count
    FROM day_users
    WHERE table_id = $1 AND date BETWEEN $2 AND $3
    GROUP BY date
), run_days AS (
    SELECT date,
        count(*) FILTER (WHERE session_type = 'agent') AS agent_runs_count,
        count(*) FILTER (WHERE session_type = 'team') AS team_runs_count,
        count(*) FILTER (WHERE session_type = 'workflow') AS workflow_runs_count,
        sum(input_tokens)::bigint AS input_tokens,
        sum(output_tokens)::bigint AS output_tokens,
        sum(total_tokens)::bigint AS total_tokens,
        sum(audio_tokens)::bigint AS audio_tokens,
        sum(input_audio_tokens)::bigint AS input_audio_tokens,
        sum(output_audio_tokens)::bigint AS output_audio_tokens,
        sum(cached_tokens)::bigint AS cached_tokens,
        sum(cache_write_tokens)::bigint AS cache_write_tokens,
        sum(reasoning_tokens)::bigint AS reasoning_tokens,
        sum(cost) AS cost
    FROM runs
    WHERE table_id = $1 AND date BETWEEN $2 AND $3
    GROUP BY date
), model_days AS (
    SELECT date,
        jsonb_agg(
            jsonb_build_object('model_id', model, 'model_provider', model_provider, 'count', n)
            ORDER BY n DESC, model COLLATE "C", model_provider COLLATE "C"
        ) AS model_metrics
    FROM (
        SELECT date, model, coalesce(model_provider, '') AS model_provider, count(*) AS n
        FROM runs
        WHERE table_id = $1 AND date BETWEEN $2 AND $3 AND model IS NOT NULL
        GROUP BY date, model, coalesce(model_provider, '')
    ) models
    GROUP BY date
), session_days AS (
    SELECT date,
        count(*) FILTER (WHERE session_type = 'agent') AS agent_sessions_count,
        count(*) FILTER (WHERE session_type = 'team') AS team_sessions_count,
        count(*) FILTER (WHERE session_type = 'workflow') AS workflow_sessions_count
    FROM sessions
    WHERE table_id = $1 AND date BETWEEN $2 AND $3
    GROUP BY date
)
INSERT INTO daily_metrics AS d (
    table_id, date,
    agent_runs_count, agent_sessions_count, team_runs_count, team_sessions_count,
    workflow_runs_count, workflow_sessions_count, users_count,
    input_tokens, output_tokens, total_tokens, audio_tokens, input_audio_tokens,
    output_audio_tokens, cached_tokens, cache_write_tokens, reasoning_tokens,
    cost, model_metrics, created_at, updated_at
)
SELECT $1, days.date,
    coalesce(r.agent_runs_count, 0), coalesce(s.agent_sessions_count, 0),
    coalesce(r.team_runs_count, 0), coalesce(s.team_sessions_count, 0),
    coalesce(r.workflow_runs_count, 0), coalesce(s.workflow_sessions_count, 0),
    days.users_count,
    coalesce(r.input_tokens, 0), coalesce(r.output_tokens, 0), coalesce(r.total_tokens, 0),
    coalesce(r.audio_tokens, 0), coalesce(r.input_audio_tokens, 0),
    coalesce(r.output_audio_tokens, 0), coalesce(r.cached_tokens, 0),
    coalesce(r.cache_write_tokens, 0), coalesce(r.reasoning_tokens, 0),
    coalesce(r.cost, 0), coalesce(m.model_metrics, '[]'::jsonb), $4, $4
FROM days
LEFT JOIN run_days r USING (date)
LEFT JOIN session_days s USING (date)
LEFT JOIN model_days m USING (date)
ON CONFLICT (table_id, date) DO UPDATE SET
    agent_runs_count = excluded.agent_runs_count,
    agent_sessions_count = excluded.agent_sessions_count,
    team_runs_count = excluded.team_runs_count,
    team_sessions_count = excluded.team_sessions_count,
    workflow_runs_count = excluded.workflow_runs_count,
    workflow_sessions_count = excluded.workflow_sessions_count,
    users_count = excluded.users_count,
    input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens,
    total_tokens = excluded.total_tokens,
    audio_tokens = excluded.audio_tokens,
    input_audio_tokens = excluded.input_audio_tokens,
    output_audio_tokens = excluded.output_audio_tokens,
    cached_tokens = excluded.cached_tokens,
    cache_write_tokens = excluded.cache_write_tokens,
    reasoning_tokens = excluded.reasoning_tokens,
    cost = excluded.cost,
    model_metrics = excluded.model_metrics,
    updated_at = excluded.updated_at
WHERE (
    d.agent_runs_count, d.agent_sessions_count, d.team_runs_count, d.team_sessions_count,
    d.workflow_runs_count, d.workflow_sessions_count, d.users_count,
    d.input_tokens, d.output_tokens, d.total_tokens, d.audio_tokens, d.input_audio_tokens,
    d.output_audio_tokens, d.cached_tokens, d.cache_write_tokens, d.reasoning_tokens,
    d.cost, d.model_metrics
) IS DISTINCT FROM (
    excluded.agent_runs_count, excluded.agent_sessions_count, excluded.team_runs_count,
    excluded.team_sessions_count, excluded.workflow_runs_count, excluded.workflow_sessions_count,
    excluded.users_count, excluded.input_tokens, excluded.output_tokens, excluded.total_tokens,
    excluded.audio_tokens, excluded.input_audio_tokens, excluded.output_audio_tokens,
    excluded.cached_tokens, excluded.cache_write_tokens, excluded.reasoning_tokens,
    excluded.cost, excluded.model_metrics
)
"#;

/// $1 table id, $2 and $3 the inclusive date range.
const DELETE_EMPTY_DAYS: &str = r#"
DELETE FROM daily_metrics d
WHERE d.table_id = $1 AND d.date BETWEEN $2 AND $3
    AND NOT EXISTS (
        SELECT 1 FROM day_users u WHERE u.table_id = d.table_id AND u.date = d.date
    )
"#;

/// The per-user form of `UPSERT_DAYS`: a row for every (user, day) on which the user is active
/// (`day_users`) or one of its runs or sessions counts; `users_count` is 1 for a non-empty user
/// active that day. A session's user is the user of its earliest `session.created`, else of its
/// earliest run (`SessionRecord::user_id`).
const UPSERT_USER_DAYS: &str = r#"
WITH session_users AS (
    SELECT date, session_type, CASE WHEN created_user_id <> '' THEN created_user_id
            ELSE coalesce(first_run_user_id, '') END AS user_id
    FROM sessions
    WHERE table_id = $1 AND date BETWEEN $2 AND $3
), keys AS (
    SELECT user_id, date FROM day_users WHERE table_id = $1 AND date BETWEEN $2 AND $3
    UNION
    SELECT user_id, date FROM runs WHERE table_id = $1 AND date BETWEEN $2 AND $3
    UNION
    SELECT user_id, date FROM session_users
), active AS (
    SELECT user_id, date FROM day_users
    WHERE table_id = $1 AND date BETWEEN $2 AND $3 AND user_id <> ''
), run_days AS (
    SELECT user_id, date,
        count(*) FILTER (WHERE session_type = 'agent') AS agent_runs_count,
        count(*) FILTER (WHERE session_type = 'team') AS team_runs_count,
        count(*) FILTER (WHERE session_type = 'workflow') AS workflow_runs_count,
        sum(input_tokens)::bigint AS input_tokens,
        sum(output_tokens)::bigint AS output_tokens,
        sum(total_tokens)::bigint AS total_tokens,
        sum(audio_tokens)::bigint AS audio_tokens,
        sum(input_audio_tokens)::bigint AS input_audio_tokens,
        sum(output_audio_tokens)::bigint AS output_audio_tokens,
        sum(cached_tokens)::bigint AS cached_tokens,
        sum(cache_write_tokens)::bigint AS cache_write_tokens,
        sum(reasoning_tokens)::bigint AS reasoning_tokens,
        sum(cost) AS cost
    FROM runs
    WHERE table_id = $1 AND date BETWEEN $2 AND $3
    GROUP BY user_id, date
), model_days AS (
    SELECT user_id, date,
        jsonb_agg(
            jsonb_build_object('model_id', model, 'model_provider', model_provider, 'count', n)
            ORDER BY n DESC, model COLLATE "C", model_provider COLLATE "C"
        ) AS model_metrics
    FROM (
        SELECT user_id, date, model, coalesce(model_provider, '') AS model_provider,
            count(*) AS n
        FROM runs
        WHERE table_id = $1 AND date BETWEEN $2 AND $3 AND model IS NOT NULL
        GROUP BY user_id, date, model, coalesce(model_provider, '')
    ) models
    GROUP BY user_id, date
), session_days AS (
    SELECT user_id, date,
        count(*) FILTER (WHERE session_type = 'agent') AS agent_sessions_count,
        count(*) FILTER (WHERE session_type = 'team') AS team_sessions_count,
        count(*) FILTER (WHERE session_type = 'workflow') AS workflow_sessions_count
    FROM session_users
    GROUP BY user_id, date
)
INSERT INTO user_daily_metrics AS d (
    table_id, user_id, date,
    agent_runs_count, agent_sessions_count, team_runs_count, team_sessions_count,
    workflow_runs_count, workflow_sessions_count, users_count,
    input_tokens, output_tokens, total_tokens, audio_tokens, input_audio_tokens,
    output_audio_tokens, cached_tokens, cache_write_tokens, reasoning_tokens,
    cost, model_metrics, created_at, updated_at
)
SELECT $1, keys.user_id, keys.date,
    coalesce(r.agent_runs_count, 0), coalesce(s.agent_sessions_count, 0),
    coalesce(r.team_runs_count, 0), coalesce(s.team_sessions_count, 0),
    coalesce(r.workflow_runs_count, 0), coalesce(s.workflow_sessions_count, 0),
    CASE WHEN a.user_id IS NULL THEN 0 ELSE 1 END,
    coalesce(r.input_tokens, 0), coalesce(r.output_tokens, 0), coalesce(r.total_tokens, 0),
    coalesce(r.audio_tokens, 0), coalesce(r.input_audio_tokens, 0),
    coalesce(r.output_audio_tokens, 0), coalesce(r.cached_tokens, 0),
    coalesce(r.cache_write_tokens, 0), coalesce(r.reasoning_tokens, 0),
    coalesce(r.cost, 0), coalesce(m.model_metrics, '[]'::jsonb), $4, $4
FROM keys
LEFT JOIN active a USING (user_id, date)
LEFT JOIN run_days r USING (user_id, date)
LEFT JOIN session_days s USING (user_id, date)
LEFT JOIN model_days m USING (user_id, date)
ON CONFLICT (table_id, user_id, date) DO UPDATE SET
    agent_runs_count = excluded.agent_runs_count,
    agent_sessions_count = excluded.agent_sessions_count,
    team_runs_count = excluded.team_runs_count,
    team_sessions_count = excluded.team_sessions_count,
    workflow_runs_count = excluded.workflow_runs_count,
    workflow_sessions_count = excluded.workflow_sessions_count,
    users_count = excluded.users_count,
    input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens,
    total_tokens = excluded.total_tokens,
    audio_tokens = excluded.audio_tokens,
    input_audio_tokens = excluded.input_audio_tokens,
    output_audio_tokens = excluded.output_audio_tokens,
    cached_tokens = excluded.cached_tokens,
    cache_write_tokens = excluded.cache_write_tokens,
    reasoning_tokens = excluded.reasoning_tokens,
    cost = excluded.cost,
    model_metrics = excluded.model_metrics,
    updated_at = excluded.updated_at
WHERE (
    d.agent_runs_count, d.agent_sessions_count, d.team_runs_count, d.team_sessions_count,
    d.workflow_runs_count, d.workflow_sessions_count, d.users_count,
    d.input_tokens, d.output_tokens, d.total_tokens, d.audio_tokens, d.input_audio_tokens,
    d.output_audio_tokens, d.cached_tokens, d.cache_write_tokens, d.reasoning_tokens,
    d.cost, d.model_metrics
) IS DISTINCT FROM (
    excluded.agent_runs_count, excluded.agent_sessions_count, excluded.team_runs_count,
    excluded.team_sessions_count, excluded.workflow_runs_count, excluded.workflow_sessions_count,
    excluded.users_count, excluded.input_tokens, excluded.output_tokens, excluded.total_tokens,
    excluded.audio_tokens, excluded.input_audio_tokens, excluded.output_audio_tokens,
    excluded.cached_tokens, excluded.cache_write_tokens, excluded.reasoning_tokens,
    excluded.cost, excluded.model_metrics
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
