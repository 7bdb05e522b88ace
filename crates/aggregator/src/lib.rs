//! The AgentOS Metrics aggregator: turns decoded events into exact daily metric rows in
//! PostgreSQL, idempotently, and reads them back for `GET /metrics`.
//!
//! - [`migrate`] applies the embedded migrations under an advisory lock.
//! - [`connect`] builds a connection pool.
//! - [`register_table`] and [`TableName`] name the metrics table a deployment writes.
//! - [`apply`] rolls a batch of events into the rows in one transaction; the rows depend only on
//!   the set of distinct events, never on their order, timing or repetition.
//! - [`stage`] stores a batch of events in the inbox with one insert, and [`apply_staged`]
//!   applies and deletes the stored events later in large batches (`inbox.rs`).
//! - [`read`] returns a table's rows for a date range, with the table-wide latest change;
//!   [`read_user`] one user's rows; [`read_rendered`] the same rows as the JSON the writer
//!   rendered for each ([`render_day`]), joined in the database.
//! - [`rebuild`] recomputes a date range from the stored per-run, per-session and per-user-day
//!   records, keeping each day's row id.
//! - [`start_refresh`], [`finish_refresh`] and [`refresh_status`] run an exact recount of a
//!   whole table on demand and keep its state in the database.
//!
//! All functions take a synchronous diesel [`PgConnection`](diesel::PgConnection): services call
//! them inside `spawn_blocking`. Synchronous diesel keeps every transaction a plain scope that
//! either commits or rolls back; an async transaction cancelled at an `.await` can leave its
//! connection mid-transaction.

mod apply;
mod error;
mod inbox;
mod migrate;
mod models;
mod plan;
mod pool;
mod read;
mod rebuild;
mod refresh;
mod render;
pub mod schema;
mod store;
mod tables;

pub use apply::{ApplyReport, apply};
pub use error::{ApplyError, MigrateError, PoolError};
pub use inbox::{
    RefusedEvent, Staged, StagedReport, apply_staged, forget, inbox_holds_events, refused_events,
    stage, staged_count,
};
pub use metrics_events::Tokens;
pub use migrate::{migrate, revert_all};
pub use models::{DailyMetrics, ModelCount};
pub use plan::EventOutcome;
pub use pool::{ConnectionLimits, Pool, PooledConnection, connect, connect_one};
pub use read::{
    DateRange, MetricsPage, latest_change, read, read_rendered, read_rows, read_user, stream,
};
pub use rebuild::{RebuildReport, rebuild, render_unrendered};
pub use refresh::{
    REFRESH_LOCK_CLASS, RefreshState, RefreshStatus, WORKER_GONE, finish_refresh, refresh_status,
    start_refresh,
};
pub use render::{DayJson, decimal_number, render_day};
pub use tables::{InvalidTableName, TableId, TableName, register_table};
