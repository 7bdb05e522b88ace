//! Refreshes: an exact recount of a whole metrics table on demand (`POST /metrics/refresh`), and
//! its state in `metrics_refreshes` (`GET /metrics/refresh/status`, `agentos-compat.md`).
//!
//! A refresh runs on a connection of its own and holds a session-level advisory lock
//! ([`REFRESH_LOCK_CLASS`], table id) from [`start_refresh`] to [`finish_refresh`]: one refresh
//! of a table at a time, across every process. The state row says `running` meanwhile, and the
//! final state is committed before the lock is released. PostgreSQL releases a session's locks
//! when its connection ends, so a row that says `running` while nobody holds the lock belongs to
//! a worker that died: [`refresh_status`] reports it `failed` (and records that).
//!
//! The recount itself is [`rebuild`] over every day, under the writer lock
//! [`apply`](crate::apply) takes: ingest waits for it and loses nothing.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer, Nullable, Text, Timestamptz};

use crate::read::DateRange;
use crate::rebuild::{RebuildReport, rebuild};
use crate::schema::{metrics_refreshes, metrics_tables};
use crate::tables::{TableId, TableName, register_table};

/// The first key of the advisory lock a running refresh holds ("mrfr" as ASCII); the second is
/// the table's id.
pub const REFRESH_LOCK_CLASS: i32 = 0x6d72_6672;

/// The error recorded for a refresh whose worker is gone.
pub const WORKER_GONE: &str = "The refresh stopped before it finished: its worker is gone.";

/// Where the latest refresh of a table stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshState {
    /// No refresh of the table has ever run.
    Idle,
    /// A refresh is running.
    Running,
    /// The latest refresh finished.
    Completed,
    /// The latest refresh failed, or its worker died.
    Failed,
}

impl RefreshState {
    /// `idle`, `running`, `completed` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshState::Idle => "idle",
            RefreshState::Running => "running",
            RefreshState::Completed => "completed",
            RefreshState::Failed => "failed",
        }
    }

    fn from_stored(status: &str) -> Self {
        match status {
            "running" => RefreshState::Running,
            "completed" => RefreshState::Completed,
            _ => RefreshState::Failed,
        }
    }
}

/// The latest refresh of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshStatus {
    /// Its state.
    pub state: RefreshState,
    /// When it started; `None` when idle.
    pub started_at: Option<DateTime<Utc>>,
    /// When it completed or failed; `None` while running or idle.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, a sentence; `None` otherwise.
    pub error: Option<String>,
}

impl RefreshStatus {
    fn idle() -> Self {
        Self {
            state: RefreshState::Idle,
            started_at: None,
            finished_at: None,
            error: None,
        }
    }
}

#[derive(Debug, Queryable, QueryableByName)]
#[diesel(table_name = metrics_refreshes, check_for_backend(diesel::pg::Pg))]
struct StoredRefresh {
    table_id: i32,
    status: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<String>,
}

impl From<StoredRefresh> for RefreshStatus {
    fn from(stored: StoredRefresh) -> Self {
        Self {
            state: RefreshState::from_stored(&stored.status),
            started_at: Some(stored.started_at),
            finished_at: stored.finished_at,
            error: stored.error,
        }
    }
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    value: bool,
}

/// Claims the refresh of table `name` for this connection: registers the table when no writer
/// has yet, takes its refresh lock and records the refresh as `running`. `None` when another
/// refresh of the table holds the lock (`already_running`).
///
/// The connection must stay open and be passed to [`finish_refresh`]; closing it instead ends
/// the refresh as failed.
///
/// # Errors
///
/// The database error when a statement fails; the lock is released again if it was taken.
pub fn start_refresh(conn: &mut PgConnection, name: &TableName) -> QueryResult<Option<TableId>> {
    let table = register_table(conn, name)?;
    let locked = diesel::sql_query("SELECT pg_try_advisory_lock($1, $2) AS value")
        .bind::<Integer, _>(REFRESH_LOCK_CLASS)
        .bind::<Integer, _>(table.0)
        .get_result::<Flag>(conn)?
        .value;
    if !locked {
        return Ok(None);
    }
    let recorded = diesel::sql_query(
        "INSERT INTO metrics_refreshes (table_id, status, started_at, finished_at, error) \
         VALUES ($1, 'running', clock_timestamp(), NULL, NULL) \
         ON CONFLICT (table_id) DO UPDATE SET status = excluded.status, \
         started_at = excluded.started_at, finished_at = NULL, error = NULL",
    )
    .bind::<Integer, _>(table.0)
    .execute(conn);
    if let Err(err) = recorded {
        unlock(conn, table);
        return Err(err);
    }
    Ok(Some(table))
}

/// Runs the refresh claimed by [`start_refresh`] on the same connection: recounts every day of
/// the table from the stored records, records `completed` or `failed`, and releases the lock.
///
/// # Errors
///
/// The database error of the recount (recorded as the refresh's error) or of recording the
/// outcome.
pub fn finish_refresh(conn: &mut PgConnection, table: TableId) -> QueryResult<RebuildReport> {
    let outcome = rebuild(conn, table, DateRange::default());
    let (status, error) = match &outcome {
        Ok(_) => ("completed", None),
        Err(err) => (
            "failed",
            Some(format!("Recounting the metrics failed: {err}.")),
        ),
    };
    let recorded = diesel::sql_query(
        "UPDATE metrics_refreshes SET status = $2, finished_at = clock_timestamp(), error = $3 \
         WHERE table_id = $1",
    )
    .bind::<Integer, _>(table.0)
    .bind::<Text, _>(status)
    .bind::<Nullable<Text>, _>(error)
    .execute(conn);
    unlock(conn, table);
    let report = outcome?;
    recorded?;
    Ok(report)
}

/// Releases the refresh lock. When that fails the connection is broken, and PostgreSQL released
/// the lock with its session.
fn unlock(conn: &mut PgConnection, table: TableId) {
    let released = diesel::sql_query("SELECT pg_advisory_unlock($1, $2) AS value")
        .bind::<Integer, _>(REFRESH_LOCK_CLASS)
        .bind::<Integer, _>(table.0)
        .get_result::<Flag>(conn);
    if let Err(err) = released {
        tracing::warn!(
            error = %err,
            "releasing the refresh lock failed; it ends with the connection"
        );
    }
}

/// The latest refresh of table `name`: `idle` when none ever ran (or no writer registered the
/// table). A `running` refresh whose lock nobody holds is reported, and recorded, as `failed`.
///
/// # Errors
///
/// The database error when a statement fails.
pub fn refresh_status(conn: &mut PgConnection, name: &str) -> QueryResult<RefreshStatus> {
    let Some(stored) = load(conn, name)? else {
        return Ok(RefreshStatus::idle());
    };
    if stored.status != "running" || lock_held(conn, stored.table_id)? {
        return Ok(stored.into());
    }
    // The worker records its outcome before it releases the lock: a row still `running` once
    // the lock is seen free, read again now, belongs to a worker that is gone.
    let Some(stored) = load(conn, name)? else {
        return Ok(RefreshStatus::idle());
    };
    if stored.status != "running" {
        return Ok(stored.into());
    }
    let failed: Option<StoredRefresh> = diesel::sql_query(
        "UPDATE metrics_refreshes SET status = 'failed', finished_at = clock_timestamp(), \
         error = $3 WHERE table_id = $1 AND status = 'running' AND started_at = $2 \
         RETURNING table_id, status, started_at, finished_at, error",
    )
    .bind::<Integer, _>(stored.table_id)
    .bind::<Timestamptz, _>(stored.started_at)
    .bind::<Text, _>(WORKER_GONE)
    .get_result(conn)
    .optional()?;
    match failed {
        Some(failed) => Ok(failed.into()),
        // Another reader recorded it, or a new refresh started meanwhile: report what is stored.
        None => Ok(load(conn, name)?.map_or_else(RefreshStatus::idle, RefreshStatus::from)),
    }
}

fn load(conn: &mut PgConnection, name: &str) -> QueryResult<Option<StoredRefresh>> {
    metrics_refreshes::table
        .inner_join(metrics_tables::table)
        .filter(metrics_tables::name.eq(name))
        .select((
            metrics_refreshes::table_id,
            metrics_refreshes::status,
            metrics_refreshes::started_at,
            metrics_refreshes::finished_at,
            metrics_refreshes::error,
        ))
        .first(conn)
        .optional()
}

/// Whether some session of this database holds the refresh lock of `table_id`
/// (`pg_locks`: a two-key advisory lock shows its keys in `classid` and `objid`, `objsubid` 2).
fn lock_held(conn: &mut PgConnection, table_id: i32) -> QueryResult<bool> {
    diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid = $1::oid AND objid = $2::oid AND objsubid = 2) AS value",
    )
    .bind::<Integer, _>(REFRESH_LOCK_CLASS)
    .bind::<Integer, _>(table_id)
    .get_result::<Flag>(conn)
    .map(|flag| flag.value)
}
